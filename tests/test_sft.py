import json
from pathlib import Path

import pytest
import torch
import transformers

from rlhfkit.cli import main
from rlhfkit.config import load_config
from rlhfkit.data.records import SFTRecord
from rlhfkit.data.tokenize import pack, tokenize_sft
from rlhfkit.models.loading import load_model, load_tokenizer, save_model, usable_length
from rlhfkit.sft.train import SFTConfig, sft
from rlhfkit.training.batching import pad_batch
from rlhfkit.training.lm_trainer import NextTokenLoss


def trained_text(tokenizer, seq) -> str:
    return tokenizer.decode([t for t, m in zip(seq.input_ids, seq.loss_mask, strict=True) if m])


def test_text_mask_covers_completion_and_eos_only(tiny_model_dir: Path):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    seq = tokenize_sft(tokenizer, SFTRecord(prompt="Emma was", completion=" very happy."), max_length=64)
    n_prompt = len(tokenizer("Emma was")["input_ids"])
    assert seq.loss_mask[:n_prompt] == [0] * n_prompt
    assert all(seq.loss_mask[n_prompt:])
    assert trained_text(tokenizer, seq) == " very happy.<|endoftext|>"


def test_a_prompt_longer_than_max_length_loses_its_start_not_the_response(tiny_model_dir: Path):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    prompt = " ".join(["It is a truth universally acknowledged."] * 40)
    seq = tokenize_sft(tokenizer, SFTRecord(prompt=prompt, completion=" Emma smiled."), max_length=64)
    assert len(seq.input_ids) == 64 and seq.prompt_tokens_cut > 0
    assert trained_text(tokenizer, seq) == " Emma smiled.<|endoftext|>"
    assert tokenizer.decode(seq.input_ids).endswith("acknowledged. Emma smiled.<|endoftext|>")


def test_max_length_is_capped_at_the_models_positions(tiny_model_dir: Path):
    assert usable_length(str(tiny_model_dir), 256) == 128  # the tiny model reads 128 tokens
    assert usable_length(str(tiny_model_dir), 64) == 64


def test_a_data_file_that_is_not_utf8_is_one_line_at_the_cli(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
):
    data = tmp_path / "latin1.jsonl"
    data.write_bytes(
        '{"prompt": "Emma", "completion": " smiled."}\n{"prompt": "Caf\u00e9", "completion": "."}\n'.encode("latin-1")
    )
    with pytest.raises(SystemExit) as exit_info:
        main(
            ["sft", "--set", f"model={tiny_model_dir}", "--set", f"data={data}", "--set", f"output_dir={tmp_path}/out"]
        )
    assert exit_info.value.code == 2
    assert (
        capsys.readouterr().err.strip()
        == f"{data}:2: not UTF-8 text (byte 60 of the file is 0xe9); re-save the file as UTF-8"
    )


def test_chat_mask_covers_assistant_turns_only(tiny_model_dir: Path):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    record = SFTRecord.model_validate(
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "Farewell"},
            ]
        }
    )
    seq = tokenize_sft(tokenizer, record, max_length=128)
    assert trained_text(tokenizer, seq) == "Hello<|endoftext|>Farewell<|endoftext|>"
    full = tokenizer.apply_chat_template([m.model_dump() for m in record.messages], tokenize=False)
    assert tokenizer.decode(seq.input_ids) == full


def test_loss_is_mean_nll_of_response_tokens_by_hand(tiny_model_dir: Path):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir), tokenizer).eval()
    seqs = [
        tokenize_sft(tokenizer, SFTRecord(prompt=p, completion=c), 64)
        for p, c in [("Emma was", " very happy."), ("It is a truth", " universally acknowledged")]
    ]
    batch = pad_batch(seqs, tokenizer.pad_token_id)
    nll, count = NextTokenLoss(model)(batch.input_ids, batch.attention_mask, batch.loss_mask)
    logprobs = torch.log_softmax(model(batch.input_ids, attention_mask=batch.attention_mask).logits, -1)
    expected, n = 0.0, 0
    for row, seq in enumerate(seqs):
        for t in range(len(seq.input_ids) - 1):
            if seq.loss_mask[t + 1]:  # the prediction of token t+1 is trained; prompt tokens never are
                expected -= logprobs[row, t, seq.input_ids[t + 1]].item()
                n += 1
    assert count.item() == n == sum(sum(s.loss_mask) for s in seqs)
    assert nll.item() == pytest.approx(expected, rel=1e-5)


def test_packing_keeps_every_token_within_max_length():
    from rlhfkit.training.batching import TokenSequence

    seqs = [TokenSequence([i] * n, [1] * n) for i, n in enumerate([5, 3, 4, 2, 6])]
    packed = pack(seqs, max_length=8)
    assert all(len(p.input_ids) <= 8 for p in packed)
    assert sorted(t for p in packed for t in p.input_ids) == sorted(t for s in seqs for t in s.input_ids)
    assert len(packed) == 3  # 20 tokens need at least 3 rows of 8


def small_sft_config(tmp_path: Path, model_dir: Path, **overrides) -> SFTConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "sft.jsonl"
    demos = [json.loads(line) for line in Path(_demo_path()).read_text().splitlines()[:96]]
    data.write_text("".join(json.dumps(d) + "\n" for d in demos))
    values = {
        "model": str(model_dir),
        "data": str(data),
        "output_dir": str(tmp_path / "out"),
        "learning_rate": 3e-3,
        "batch_size": 8,
        "micro_batch_size": 4,
        "max_steps": 12,
        "eval_every": 0,
        "log_every": 1,
        "eval_fraction": 0.2,
        **overrides,
    }
    return load_config(SFTConfig, None, [f"{k}={v}" for k, v in values.items()])


def _demo_path() -> str:
    from rlhfkit import assets

    return assets.resolve("demo-sft")


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_sft_lowers_held_out_loss_and_saves_a_pipeline_loadable_model(tmp_path: Path, tiny_model_dir: Path):
    out = sft(small_sft_config(tmp_path, tiny_model_dir))
    evals = [m["eval/loss"] for m in metrics(out) if "eval/loss" in m]
    assert evals[-1] < evals[0] - 0.5
    generator = transformers.pipeline("text-generation", model=str(out))
    text = generator("Emma was", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("Emma was") and len(text) > len("Emma was")


def test_save_load_round_trip_gives_identical_logits(tmp_path: Path, tiny_model_dir: Path):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir), tokenizer).eval()
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight.add_(0.01)  # not the checkpoint on disk any more
    save_model(model, tokenizer, tmp_path / "saved")
    reloaded = load_model(str(tmp_path / "saved")).eval()
    ids = tokenizer("It is a truth universally acknowledged", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)


def test_lora_sft_trains_adapters_and_saves_a_merged_model(tmp_path: Path, tiny_model_dir: Path):
    out = sft(small_sft_config(tmp_path, tiny_model_dir, **{"lora.enabled": True, "lora.r": 4, "max_steps": 3}))
    merged = transformers.AutoModelForCausalLM.from_pretrained(out)
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not any("lora" in name for name in merged.state_dict())
    diff = (merged.transformer.h[0].attn.c_attn.weight - base.transformer.h[0].attn.c_attn.weight).abs().max()
    assert diff > 0  # the adapters' update was merged into the weights
    assert torch.equal(merged.transformer.wte.weight, base.transformer.wte.weight)  # frozen base untouched
    assert (out / "adapter" / "adapter_config.json").is_file()  # and the adapter alone, for peft


def test_resume_reproduces_the_uninterrupted_run(tmp_path: Path, tiny_model_dir: Path):
    full = sft(small_sft_config(tmp_path / "a", tiny_model_dir, save_every=6, max_steps=10))
    resumed_dir = tmp_path / "b"
    sft(small_sft_config(resumed_dir, tiny_model_dir, save_every=6, max_steps=10))
    # Simulate a kill after the step-6 checkpoint: the final model is gone, the log ran further.
    out = resumed_dir / "out"
    for path in out.iterdir():
        if path.name not in ("checkpoints", "metrics.jsonl"):
            path.unlink()
    sft(small_sft_config(resumed_dir, tiny_model_dir, save_every=6, max_steps=10, resume=True))
    a, b = metrics(full), metrics(out)
    assert [m["step"] for m in b] == [m["step"] for m in a]
    for x, y in zip(a[1:], b[1:], strict=True):  # step 0 is the evaluation before training
        assert x["train/loss"] == pytest.approx(y["train/loss"], rel=1e-6)
    assert a[-1]["eval/loss"] == pytest.approx(b[-1]["eval/loss"], rel=1e-6)
    pa = transformers.AutoModelForCausalLM.from_pretrained(full).state_dict()
    pb = transformers.AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert all(torch.allclose(pa[k], pb[k], atol=1e-6) for k in pa)
