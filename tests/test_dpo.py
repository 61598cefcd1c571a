import json
import math
from pathlib import Path

import pytest
import torch
import transformers
from accelerate import Accelerator

from rlhfkit import assets
from rlhfkit.config import ConfigError, load_config
from rlhfkit.data.records import Message, PreferenceRecord, RankingRecord, RatingRecord
from rlhfkit.dpo import reference
from rlhfkit.dpo.data import build_examples, tokenize_response
from rlhfkit.dpo.losses import LOSSES, chosen_nll
from rlhfkit.dpo.reference import SequenceLogprobs, reference_logps
from rlhfkit.dpo.train import DPOConfig, dpo
from rlhfkit.models.loading import LoraSettings, load_model, load_tokenizer
from rlhfkit.training.batching import pad_batch


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """The runs below use one thread (`num_threads=1`: faster for a 64-wide model on a busy machine)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


def run_loss(name: str, chosen: list[float], rejected: list[float], beta: float, **scalars: float):
    scalars = {"label_smoothing": 0.0, "reference_point": 0.0, **scalars}
    return LOSSES[name](
        torch.tensor(chosen),
        torch.tensor(rejected),
        beta=beta,
        label_smoothing=scalars["label_smoothing"],
        reference_point=torch.tensor(scalars["reference_point"]),
    )


@pytest.mark.parametrize("name", ["sigmoid", "cdpo"])
def test_policy_equal_to_reference_gives_log_2(name: str):
    losses, metrics = run_loss(name, [0.0, 0.0], [0.0, 0.0], beta=0.1, label_smoothing=0.2)
    assert torch.allclose(losses, torch.full((2,), math.log(2)))
    assert metrics["dpo/rewards/margin"].tolist() == [0.0, 0.0]


def test_each_loss_on_hand_computed_log_probabilities():
    # Policy and reference log-probs of two pairs; log-ratios chosen = (1, 0.5), rejected = (-1, 0.5).
    policy_c, ref_c = torch.tensor([-3.0, -7.0]), torch.tensor([-4.0, -7.5])
    policy_r, ref_r = torch.tensor([-6.0, -9.0]), torch.tensor([-5.0, -9.5])
    chosen, rejected = (policy_c - ref_c).tolist(), (policy_r - ref_r).tolist()
    beta, eps = 0.25, 0.1
    h = [2.0, 0.0]  # chosen - rejected
    expected = {
        "sigmoid": [softplus(-beta * x) for x in h],
        "cdpo": [(1 - eps) * softplus(-beta * x) + eps * softplus(beta * x) for x in h],
        "ipo": [(x - 1 / (2 * beta)) ** 2 for x in h],  # target gap 1/(2τ) = 2
        "hinge": [max(0.0, 1 - beta * x) for x in h],
    }
    for name, values in expected.items():
        losses, metrics = run_loss(name, chosen, rejected, beta, label_smoothing=eps)
        assert losses.tolist() == pytest.approx(values, abs=1e-6), name
        assert metrics["dpo/rewards/chosen"].tolist() == pytest.approx([0.25, 0.125])
        assert metrics["dpo/rewards/margin"].tolist() == pytest.approx([0.5, 0.0])
        assert metrics["dpo/accuracy"].tolist() == [1.0, 0.0]  # a tie is not a win
    # KTO: desirable log-ratios (1, 0.5), undesirable (-1,), reference point z0 = 0.5.
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    losses, metrics = run_loss("kto", [1.0, 0.5], [-1.0], beta, reference_point=0.5)
    assert losses.tolist() == pytest.approx([1 - sig(beta * 0.5), 1 - sig(0.0), 1 - sig(beta * 1.5)], abs=1e-6)
    assert metrics["dpo/accuracy"].tolist() == [1.0, 0.0, 1.0]
    # RPO's term: per-token NLL of the chosen responses.
    assert chosen_nll(policy_c, torch.tensor([3, 7])).tolist() == pytest.approx([1.0, 1.0])


def test_losses_give_gradient_that_widens_the_margin():
    for name in ["sigmoid", "cdpo", "ipo", "hinge"]:
        chosen = torch.zeros(3, requires_grad=True)
        losses, _ = LOSSES[name](
            chosen, torch.zeros(3), beta=0.1, label_smoothing=0.1, reference_point=torch.tensor(0.0)
        )
        losses.sum().backward()
        assert (chosen.grad < 0).all(), name  # descending the loss raises the chosen log-ratio


def test_rankings_and_ratings_become_all_pairs(tiny_model_dir: Path):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    ranking = RankingRecord(prompt="Emma was", responses=[" glad.", " sad.", " tired."], ranks=[1, 3, 2])
    examples, _ = build_examples([ranking], "ranking", False, tokenizer, 64)
    assert len(examples) == 3  # C(3, 2)
    ratings = [RatingRecord(prompt="Emma was", response=r, score=s) for r, s in [(" glad.", 6), (" sad.", 2)]]
    (pair,), _ = build_examples(ratings, "rating", False, tokenizer, 64)
    chosen, rejected = pair.responses
    assert chosen.preferred and not rejected.preferred
    assert tokenizer.decode(chosen.tokens.input_ids).endswith("glad.<|endoftext|>")
    # KTO splits each pair into a desirable and an undesirable response, each with a mismatched prompt.
    ratings.append(RatingRecord(prompt="Anne was", response=" calm.", score=4))
    ratings.append(RatingRecord(prompt="Anne was", response=" cross.", score=1))
    judged, _ = build_examples(ratings, "rating", True, tokenizer, 64)
    assert [e.responses[0].preferred for e in judged] == [True, False, True, False]
    assert tokenizer.decode(judged[0].mismatched.tokens.input_ids).startswith("Emma was calm.")


def test_a_prompt_longer_than_max_length_keeps_the_pair_with_its_start_cut(tiny_model_dir: Path):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    pair = PreferenceRecord(prompt=" ".join(["Emma was at Hartfield."] * 40), chosen=" glad.", rejected=" sad.")
    (example,), notes = build_examples([pair], "preference", False, tokenizer, 32)
    chosen, rejected = (tokenizer.decode([t for t, m in zip(r.tokens.input_ids, r.tokens.loss_mask, strict=True) if m])
                        for r in example.responses)  # fmt: skip
    assert (chosen, rejected) == (" glad.<|endoftext|>", " sad.<|endoftext|>")
    assert all(len(r.tokens.input_ids) == 32 for r in example.responses)
    assert notes == ["2 responses longer than max_length=32: their prompts lost their start"]


def test_chat_prompt_turns_are_context_only_the_reply_is_scored(tiny_model_dir: Path):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    prompt = [
        Message(role="user", content="Hi"),
        Message(role="assistant", content="Hello"),
        Message(role="user", content="Bye"),
    ]
    seq = tokenize_response(tokenizer, prompt, [Message(role="assistant", content="Farewell")], 128)
    trained = tokenizer.decode([t for t, m in zip(seq.input_ids, seq.loss_mask, strict=True) if m])
    assert trained == "Farewell<|endoftext|>"


def test_lora_reference_is_the_base_model_with_adapters_off(tmp_path: Path, tiny_model_dir: Path):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    base = load_model(str(tiny_model_dir), tokenizer).eval()
    policy = load_model(str(tiny_model_dir), tokenizer, LoraSettings(enabled=True, r=4))
    for name, p in policy.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)  # adapters that change the outputs
    seqs = [tokenize_response(tokenizer, "Emma was", text, 64) for text in [" very happy.", " not at all pleased."]]
    values, _, hit = reference_logps(policy, seqs, tokenizer.pad_token_id, 4, Accelerator(cpu=True), tmp_path)
    batch = pad_batch(seqs, tokenizer.pad_token_id)
    with torch.no_grad():
        expected, _ = SequenceLogprobs(base)(batch.input_ids, batch.attention_mask, batch.loss_mask)
        with_adapters, _ = SequenceLogprobs(policy)(batch.input_ids, batch.attention_mask, batch.loss_mask)
    assert not hit
    assert torch.allclose(values, expected, atol=1e-5)
    assert not torch.allclose(with_adapters, expected, atol=1e-3)


def write_pairs(path: Path, n: int, good: str = " She was very happy.", bad: str = " She was very sad.") -> Path:
    """A separable task: for every prompt, the same cheerful reply beats the same gloomy one."""
    prompts = [json.loads(line)["prompt"] for line in Path(assets.resolve("demo-prompts")).read_text().splitlines()]
    path.write_text("".join(json.dumps({"prompt": p, "chosen": good, "rejected": bad}) + "\n" for p in prompts[:n]))
    return path


def small_config(tmp_path: Path, model_dir: Path, data: Path, **overrides) -> DPOConfig:
    values = {
        "model": str(model_dir),
        "data": str(data),
        "output_dir": str(tmp_path / "out"),
        "ref_cache_dir": str(tmp_path / "ref-cache"),
        "learning_rate": 3e-3,
        "batch_size": 8,
        "micro_batch_size": 4,
        "max_steps": 12,
        "eval_every": 6,
        "eval_fraction": 0.25,
        "lr_schedule": "constant",
        "num_threads": 1,
        **overrides,
    }
    return load_config(DPOConfig, None, [f"{k}={v}" for k, v in values.items()])


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_dpo_starts_at_log_2_and_accuracy_rises_on_a_separable_task(tmp_path: Path, tiny_model_dir: Path):
    out = dpo(small_config(tmp_path, tiny_model_dir, write_pairs(tmp_path / "pairs.jsonl", 64)))
    rows = metrics(out)
    assert rows[0]["step"] == 0 and rows[0]["eval/dpo/loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert rows[1]["step"] == 1 and rows[1]["dpo/loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert rows[-1]["eval/dpo/accuracy"] == 1.0 > rows[0]["eval/dpo/accuracy"]
    assert rows[-1]["eval/dpo/rewards/margin"] > 0.5
    steps = [r for r in rows if "dpo/loss" in r]
    assert sum(r["dpo/accuracy"] for r in steps[-4:]) / 4 > sum(r["dpo/accuracy"] for r in steps[:4]) / 4
    tuned = transformers.AutoModelForCausalLM.from_pretrained(out)  # an ordinary checkpoint
    assert tuned.config.vocab_size == transformers.AutoConfig.from_pretrained(tiny_model_dir).vocab_size


def test_reference_cache_is_reused_and_invalidated_when_data_changes(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    calls: list[int] = []
    original = reference.sequence_logps

    def counting(model, sequences, *args, **kwargs):
        calls.append(len(sequences))
        return original(model, sequences, *args, **kwargs)

    monkeypatch.setattr(reference, "sequence_logps", counting)
    data = write_pairs(tmp_path / "pairs.jsonl", 16)
    for run in range(2):
        dpo(small_config(tmp_path / f"run{run}", tiny_model_dir, data, max_steps=1, ref_cache_dir=tmp_path / "cache"))
    assert calls == [32]  # 16 pairs, two responses each; the second run read the cache
    write_pairs(data, 16, bad=" She was very cross.")
    dpo(small_config(tmp_path / "run2", tiny_model_dir, data, max_steps=1, ref_cache_dir=tmp_path / "cache"))
    assert calls == [32, 32]
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2


def test_kto_on_thumbs_up_and_down(tmp_path: Path, tiny_model_dir: Path):
    prompts = [json.loads(line)["prompt"] for line in Path(assets.resolve("demo-prompts")).read_text().splitlines()]
    rows = [
        {"prompt": p, "completion": " She was very happy." if i % 2 else " She was very sad.", "label": i % 2}
        for i, p in enumerate(prompts[:32])
    ]
    data = tmp_path / "thumbs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = dpo(small_config(tmp_path, tiny_model_dir, data, loss="kto", data_kind="unpaired", max_steps=8, eval_every=0))
    logged = metrics(out)
    assert logged[1]["dpo/loss"] == pytest.approx(0.5, abs=1e-5)  # 1 - sigmoid(0): policy = reference, z0 = 0
    assert logged[1]["dpo/kl"] == pytest.approx(0.0, abs=1e-5)
    assert logged[-1]["eval/dpo/accuracy"] > logged[0]["eval/dpo/accuracy"]
    assert all(r["dpo/kl"] >= 0 for r in logged if "dpo/kl" in r)


def test_resume_reproduces_the_uninterrupted_run(tmp_path: Path, tiny_model_dir: Path):
    data = write_pairs(tmp_path / "pairs.jsonl", 40)
    settings = {"max_steps": 6, "save_every": 3, "eval_every": 0, "rpo_alpha": 0.5, "loss": "ipo"}
    full = dpo(small_config(tmp_path / "a", tiny_model_dir, data, **settings))
    out = dpo(small_config(tmp_path / "b", tiny_model_dir, data, **settings))
    for path in out.iterdir():  # as if killed after the step-3 checkpoint: no final model yet
        if path.is_file() and path.name != "metrics.jsonl":
            path.unlink()
    dpo(small_config(tmp_path / "b", tiny_model_dir, data, **settings, resume=True))
    a, b = metrics(full), metrics(out)
    assert [m["step"] for m in a] == [m["step"] for m in b]
    for x, y in zip(a[1:], b[1:], strict=True):
        assert x["dpo/loss"] == pytest.approx(y["dpo/loss"], rel=1e-5)
    pa = transformers.AutoModelForCausalLM.from_pretrained(full).state_dict()
    pb = transformers.AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert all(torch.allclose(pa[k], pb[k], atol=1e-6) for k in pa)


def test_unknown_loss_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="sigmoid, cdpo, ipo, hinge, kto"):
        load_config(DPOConfig, None, ["loss=dpo"])
