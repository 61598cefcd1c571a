"""Models and data that travel to and from transformers, TRL and peft: reward models both ways, LoRA adapters,
tokenizer limits, and ties and margins in exported preferences."""

import json
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoModelForSequenceClassification, AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

from rlhfkit.cli import app as cli_app
from rlhfkit.config import ConfigError
from rlhfkit.data.readers import Row
from rlhfkit.data.records import load_records
from rlhfkit.feedback.store import Store
from rlhfkit.models.loading import ADAPTER_DIR, load_model, load_tokenizer, resolve_model_path, save_model
from rlhfkit.models.reward import CONFIG_FILE, HFRewardModel
from rlhfkit.ppo.model import build_actor_critic
from rlhfkit.ppo.train import PPOConfig, ppo
from rlhfkit.reward import RewardEnsemble, RewardModel, load_reward_model
from rlhfkit.rlaif.preferences import AILabelConfig, label_ai
from rlhfkit.scoring.sources import CombinedReward, RewardSource

PROMPTS = ["Emma was", "It is a truth universally", "She"]
REPLIES = [" very happy.", " acknowledged, that a single man", " smiled"]


def hf_scores(path: Path, texts: list[str]) -> torch.Tensor:
    """What a transformers user gets: the directory's classifier on right-padded texts, logit 0."""
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    with torch.no_grad():
        return model(**tokenizer(texts, return_tensors="pt", padding=True)).logits[:, 0]


def normalised_two_head_model(name: str) -> RewardModel:
    torch.manual_seed(0)
    model = RewardModel.from_pretrained(name, ["helpful", "harmless"], weights={"helpful": 1.0, "harmless": 0.5})
    model.gain.copy_(torch.tensor([2.0, 0.5]))
    model.bias.copy_(torch.tensor([-1.0, 3.0]))  # a constant of 0.5 in the score: HF's `score` has no bias
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([0.3, -0.2]))
    return model.eval()


def test_a_saved_reward_model_scores_the_same_in_transformers(tmp_path: Path):
    model = normalised_two_head_model("tiny-austen")
    expected = model.score(PROMPTS, REPLIES).reward
    heads = model.rewards(PROMPTS, REPLIES)
    model.save(tmp_path / "rm")
    config = json.loads((tmp_path / "rm" / "config.json").read_text())
    assert config["architectures"] == ["GPT2ForSequenceClassification"] and config["id2label"] == {"0": "reward"}
    assert config["pad_token_id"] == model.tokenizer.pad_token_id != model.tokenizer.eos_token_id
    assert json.loads((tmp_path / "rm" / CONFIG_FILE).read_text())["hf_offset"] == pytest.approx(0, abs=1e-5)
    eos = model.tokenizer.eos_token
    texts = [p + r + eos for p, r in zip(PROMPTS, REPLIES, strict=True)]  # as TRL's RewardTrainer reads them
    torch.testing.assert_close(hf_scores(tmp_path / "rm", texts), expected, rtol=1e-5, atol=1e-5)
    # Saving moved the constant into the final norm: every head's reward, in memory and reloaded, is unchanged.
    torch.testing.assert_close(model.rewards(PROMPTS, REPLIES), heads, rtol=1e-5, atol=1e-5)
    reloaded = load_reward_model(tmp_path / "rm")
    assert type(reloaded) is RewardModel
    torch.testing.assert_close(reloaded.rewards(PROMPTS, REPLIES), heads, rtol=1e-5, atol=1e-5)
    reloaded.save(tmp_path / "again")  # a second save moves what is left (nothing) and still agrees
    torch.testing.assert_close(hf_scores(tmp_path / "again", texts), expected, rtol=1e-5, atol=1e-5)


def test_a_backbone_without_a_final_norm_bias_records_the_offset(tmp_path: Path, tiny_model_dir: Path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    llama = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(llama).save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    model = normalised_two_head_model(str(tmp_path / "llama"))
    expected = model.score(PROMPTS, REPLIES).reward
    model.save(tmp_path / "rm")
    offset = json.loads((tmp_path / "rm" / CONFIG_FILE).read_text())["hf_offset"]
    assert abs(offset) > 0.1  # RMSNorm has no bias to hold the constant
    texts = [p + r + tokenizer.eos_token for p, r in zip(PROMPTS, REPLIES, strict=True)]
    torch.testing.assert_close(hf_scores(tmp_path / "rm", texts) + offset, expected, rtol=1e-5, atol=1e-5)
    assert AutoTokenizer.from_pretrained(tmp_path / "rm").model_max_length == 64


def test_each_ensemble_member_loads_in_transformers(tmp_path: Path):
    model = normalised_two_head_model("tiny-austen")
    RewardEnsemble([model]).save(tmp_path / "ens")
    texts = [p + r + model.tokenizer.eos_token for p, r in zip(PROMPTS, REPLIES, strict=True)]
    member = hf_scores(tmp_path / "ens" / "member-0", texts)
    torch.testing.assert_close(member, load_reward_model(tmp_path / "ens").score(PROMPTS, REPLIES).reward)


@pytest.fixture(scope="module")
def trl_reward_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What TRL's RewardTrainer saves: a GPT2ForSequenceClassification with one label, and its tokenizer."""
    out = tmp_path_factory.mktemp("trl") / "rm"
    path = resolve_model_path("tiny-austen")
    torch.manual_seed(3)
    model = GPT2ForSequenceClassification(GPT2Config.from_pretrained(path, num_labels=1))
    with torch.no_grad():
        model.score.weight.mul_(50)  # a spread of rewards worth climbing
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(path).save_pretrained(out)
    return out


def test_a_trl_reward_model_scores_prompt_and_reply_with_eos(trl_reward_dir: Path):
    model = load_reward_model(trl_reward_dir)
    assert isinstance(model, HFRewardModel) and model.head_names == ["reward"]
    eos = model.tokenizer.eos_token
    with_eos = hf_scores(trl_reward_dir, [p + r + eos for p, r in zip(PROMPTS, REPLIES, strict=True)])
    without = hf_scores(trl_reward_dir, [p + r for p, r in zip(PROMPTS, REPLIES, strict=True)])
    assert (with_eos - without).abs().min() > 1e-3  # the EOS matters
    torch.testing.assert_close(model.score(PROMPTS, REPLIES).reward, with_eos, rtol=1e-5, atol=1e-5)
    plain = load_reward_model(trl_reward_dir, append_eos=False)
    torch.testing.assert_close(plain.score(PROMPTS, REPLIES).reward, without, rtol=1e-5, atol=1e-5)
    # A text that ends with EOS already gets no second one, as in TRL.
    torch.testing.assert_close(model.score(PROMPTS, [r + eos for r in REPLIES]).reward, with_eos)


def test_a_trl_reward_model_is_a_ppo_reward_and_its_critic(tmp_path: Path, trl_reward_dir: Path):
    reward = CombinedReward([RewardSource(source=str(trl_reward_dir))], torch.device("cpu"))
    total, _ = reward(PROMPTS, REPLIES)
    torch.testing.assert_close(total, load_reward_model(trl_reward_dir).score(PROMPTS, REPLIES).reward)
    tokenizer = load_tokenizer("tiny-austen")
    policy = load_model("tiny-austen", tokenizer)
    model = build_actor_critic(policy, "tiny-austen", tokenizer, "reward", str(trl_reward_dir), 1.0).eval()
    ids = tokenizer(PROMPTS[0] + REPLIES[0] + tokenizer.eos_token + "x", return_tensors="pt")["input_ids"]
    scored = torch.ones(1, ids.shape[1] - 1, dtype=torch.bool)
    _, values, _ = model(ids, torch.ones_like(ids), scored)
    # V before the last token is the reward model's score of everything up to it: prompt + reply + EOS.
    torch.testing.assert_close(values[-1], hf_scores(trl_reward_dir, [PROMPTS[0] + REPLIES[0] + "<|endoftext|>"])[0])
    config = PPOConfig.model_validate(
        {
            "model": "tiny-austen", "prompts": "demo-prompts", "rewards": [{"source": str(trl_reward_dir)}],
            "output_dir": str(tmp_path / "ppo"), "batch_size": 4, "mini_batch_size": 4, "micro_batch_size": 4,
            "ppo_epochs": 1, "max_steps": 2, "critic": "reward", "sampling": {"max_new_tokens": 6},
            "eval_every": 0, "num_threads": 2,
        }
    )  # fmt: skip
    out = ppo(config)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged if "reward/rm" in m] == [1, 2]
    assert all(torch.isfinite(torch.tensor(m["reward/rm"])) for m in logged if "reward/rm" in m)


def test_a_directory_that_is_no_reward_model_is_named_as_such(tmp_path: Path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ConfigError, match=r"not a reward model directory; .* holds .*config\.json"):
        CombinedReward([RewardSource(source=str(tmp_path))], torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"no such directory or function.*vader, length"):
        CombinedReward([RewardSource(source="runs4/trl_rm")], torch.device("cpu"))


def test_lora_runs_save_an_adapter_that_peft_loads(tmp_path: Path, tiny_model_dir: Path):
    from peft import AutoPeftModelForCausalLM, PeftModel

    from rlhfkit.models.loading import LoraSettings

    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir), tokenizer, LoraSettings(enabled=True, r=4, target_modules=["c_attn"]))
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.normal_(std=0.5)  # a trained-looking adapter, not the no-op it starts as
    ids = tokenizer("It is a truth universally acknowledged", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = model.eval()(ids).logits
    save_model(model, tokenizer, tmp_path / "out")
    adapter = tmp_path / "out" / ADAPTER_DIR
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    loaded = AutoPeftModelForCausalLM.from_pretrained(adapter).eval()
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(PeftModel.from_pretrained(base, adapter)(ids).logits, expected, rtol=1e-4, atol=1e-4)
        merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")(ids).logits
    torch.testing.assert_close(merged, expected, rtol=1e-4, atol=1e-4)


def test_saved_tokenizers_know_the_context_so_pipelines_truncate(tmp_path: Path, tiny_model_dir: Path):
    assert AutoTokenizer.from_pretrained(tiny_model_dir).model_max_length > 1e20  # what a trained tokenizer says
    tokenizer = load_tokenizer(str(tiny_model_dir))
    save_model(load_model(str(tiny_model_dir), tokenizer), tokenizer, tmp_path / "lm")
    assert AutoTokenizer.from_pretrained(tmp_path / "lm").model_max_length == 128  # n_positions
    RewardModel.from_pretrained(str(tiny_model_dir), ["reward"]).save(tmp_path / "rm")
    classify = transformers.pipeline("text-classification", model=str(tmp_path / "rm"))
    long_text = "It is a truth universally acknowledged. " * 100  # ~800 tokens, past 128 positions
    assert len(classify.tokenizer(long_text)["input_ids"]) > 128
    [result] = classify(long_text, truncation=True)
    assert result["label"] == "reward" and isinstance(result["score"], float)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_feedback_export_leaves_ties_out_unless_asked_and_gives_trl_margins(tmp_path: Path):
    from typer.testing import CliRunner

    db = f"sqlite:///{tmp_path}/feedback.db"
    store = Store(db)
    ann = store.add_user("ann", "ann-password")
    store.create_project("p", "pairwise")
    store.add_items("p", [Row(f"items.jsonl:{i}", {"prompt": f"q{i}", "responses": ["x", "y"]}) for i in range(3)])
    store.assign("p", ["ann"])
    ann = store.authenticate("ann", "ann-password")
    for choice in ("tie", "A:3", "B:1"):
        store.submit(store.next_item(store.project("p").id, ann).id, ann, {"choice": choice})
    out = tmp_path / "prefs.jsonl"
    for policy in ("drop", "separate", "keep"):
        result = CliRunner().invoke(cli_app, ["export", "p", "--output", str(out), "--db", db, "--ties", policy])
        assert result.exit_code == 0, result.output
        assert ("1 tied pairs left out" in result.output) == (policy == "drop")
        rows = jsonl(out)
        assert sum(bool(row.get("tie")) for row in rows) == (policy == "keep")
        strict = sorted((row["strength"], row["margin"]) for row in rows if not row.get("tie"))
        assert strict == [(1, pytest.approx(1 / 3)), (3, 1.0)]  # Llama 2's small margins, TRL's column
        assert len(load_records(out, "preference")) == len(rows)
    assert [row["tie"] for row in jsonl(tmp_path / "prefs.ties.jsonl")] == [True]  # from --ties separate


def test_ai_labels_leave_ties_out_unless_asked(tmp_path: Path):
    candidates = tmp_path / "samples.jsonl"
    candidates.write_text(
        "".join(json.dumps({"prompt": f"Emma {i}", "responses": [" yes", " no"]}) + "\n" for i in range(2))
    )
    labels = tmp_path / "labels.jsonl"
    config = AILabelConfig(
        candidates=str(candidates), output=str(labels), tie_threshold=0.5,  # every pair is a tie
        judge={"model": "tiny-austen", "min_choice_mass": 0},
    )  # fmt: skip
    label_ai(config)
    assert labels.read_text() == "" and not (tmp_path / "labels.ties.jsonl").exists()
    label_ai(config.model_copy(update={"ties": "separate"}))
    assert labels.read_text() == "" and [r["tie"] for r in jsonl(tmp_path / "labels.ties.jsonl")] == [True, True]
    label_ai(config.model_copy(update={"ties": "keep"}))
    assert all(record.tie for record in load_records(labels, "preference")) and len(jsonl(labels)) == 2
