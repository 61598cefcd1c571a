"""`rlhfkit reward` end to end on small synthetic tasks, with the tiny GPT-2 of conftest."""

import json
import random
import shutil
from pathlib import Path

import pytest
import torch

from rlhfkit.cli import main
from rlhfkit.data.convert import split_by_prompt
from rlhfkit.reward import RewardEnsemble, RewardModel, load_reward_model
from rlhfkit.reward.batching import BucketedRewards, TokenizedComparison, batch_loss, collate, length_buckets
from rlhfkit.reward.data import Comparison, load_comparisons
from rlhfkit.reward.losses import ranking_loss
from rlhfkit.reward.train import HeadData, RewardConfig, reward

GOOD = ["happy", "glad", "joy", "kind", "warm", "bright", "lovely", "good"]
BAD = ["sad", "grim", "cold", "dull", "bleak", "awful", "bad", "cruel"]


def words(rng: random.Random, pool: list[str], n: int = 3) -> str:
    return " " + " ".join(rng.choice(pool) for _ in range(n))


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def cheerful_pairs(n: int, seed: int = 0) -> list[dict]:
    """Separable preferences: a reply of cheerful words beats one of gloomy words."""
    rng = random.Random(seed)
    return [{"prompt": f"Day {i}:", "chosen": words(rng, GOOD), "rejected": words(rng, BAD)} for i in range(n)]


def config(tmp_path: Path, model_dir: Path, heads: dict[str, HeadData], **overrides) -> RewardConfig:
    settings = {
        "model": str(model_dir),
        "heads": heads,
        "output_dir": str(tmp_path / "rm"),
        "learning_rate": 2e-3,
        "epochs": 4,
        "batch_size": 16,
        "micro_batch_size": 8,
        "eval_fraction": 0.2,
        "eval_every": 0,
        "num_threads": 1,
    }
    return RewardConfig(**settings | overrides)


def test_accuracy_exceeds_0_9_on_a_separable_task(tmp_path: Path, tiny_model_dir: Path):
    rows = cheerful_pairs(160)
    rows[:8] = [{"prompt": f"Tie {i}:", "chosen": " happy", "rejected": " glad", "tie": True} for i in range(8)]
    data = write_jsonl(tmp_path / "prefs.jsonl", rows)
    out = reward(config(tmp_path, tiny_model_dir, {"reward": HeadData(data=data)}))
    metrics = json.loads((out / "eval.json").read_text())
    assert metrics["eval/reward/accuracy"] > 0.9
    assert metrics["eval/reward/pairs"] >= 25  # 20% of the prompts, held out
    model = load_reward_model(out)
    scores = model.score(["Day 999:", "Day 999:"], [" lovely warm joy", " bleak cruel cold"])
    assert scores.reward[0] > scores.reward[1]
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 4 * 8  # 4 epochs of 128 training pairs (32 of 160 prompts held out) in 16s
    assert {"rm/loss", "rm/accuracy", "rm/margin", "train/lr", "perf/pairs_per_s"} <= set(log[-1])


def test_heads_learn_their_own_labels_from_rankings_and_ratings(tmp_path: Path, tiny_model_dir: Path):
    rng = random.Random(1)
    rankings, ratings = [], []
    for i in range(120):
        replies = [words(rng, GOOD), words(rng, BAD), words(rng, GOOD, 1) + words(rng, BAD, 2)]
        rankings.append({"prompt": f"Day {i}:", "responses": replies, "ranks": [1, 3, 2]})
        ratings += [
            {"prompt": f"Night {i}:", "response": replies[0], "score": 1},
            {"prompt": f"Night {i}:", "response": replies[1], "score": 7},
        ]
    heads = {
        "cheer": HeadData(data=write_jsonl(tmp_path / "rank.jsonl", rankings), kind="ranking"),
        "gloom": HeadData(data=write_jsonl(tmp_path / "rate.jsonl", ratings), kind="rating", weight=0.0),
    }
    out = reward(config(tmp_path, tiny_model_dir, heads, epochs=3))
    metrics = json.loads((out / "eval.json").read_text())
    assert metrics["eval/cheer/accuracy"] > 0.9 and metrics["eval/gloom/accuracy"] > 0.9
    model = load_reward_model(out)
    prompts, replies = ["Day 999:"] * 2, [" lovely warm joy", " bleak cruel cold"]
    cheer = model.score(prompts, replies)  # saved weights: cheer 1, gloom 0
    gloom = model.score(prompts, replies, weights={"gloom": 1.0})
    assert cheer.reward[0] > cheer.reward[1] and gloom.reward[0] < gloom.reward[1]


def test_ensemble_members_train_on_bootstrap_resamples(tmp_path: Path, tiny_model_dir: Path):
    data = write_jsonl(tmp_path / "prefs.jsonl", cheerful_pairs(48))
    cfg = config(tmp_path, tiny_model_dir, {"reward": HeadData(data=data)}, ensemble=2, epochs=1)
    out = reward(cfg)
    assert json.loads((out / "ensemble.json").read_text()) == {"members": ["member-0", "member-1"]}
    ensemble = load_reward_model(out)
    assert isinstance(ensemble, RewardEnsemble) and len(ensemble.members) == 2
    scores = ensemble.score(["Day 1:"] * 3, [" happy", " sad", " dull day"])
    assert (scores.std > 0).all()  # different resamples and seeds: the members disagree
    member = RewardModel.load(out / "member-0")  # each member is a whole reward model, normalised on its own
    assert member.gain.item() != 1.0 and member.bias.item() != 0.0
    assert (out / "eval.json").exists() and (out / "member-1" / "metrics.jsonl").exists()


def test_normalization_on_a_reference_file_and_lora(tmp_path: Path, tiny_model_dir: Path):
    data = write_jsonl(tmp_path / "prefs.jsonl", cheerful_pairs(32))
    rng = random.Random(5)
    reference = [{"prompt": f"Eve {i}:", "responses": [words(rng, GOOD + BAD) for _ in range(3)]} for i in range(8)]
    reference.append({"prompt": "Noon:", "completion": " lovely day"})
    ref_file = write_jsonl(tmp_path / "reference.jsonl", reference)
    lora = {"enabled": True, "r": 4, "alpha": 8}
    cfg = config(
        tmp_path, tiny_model_dir, {"reward": HeadData(data=data)}, max_steps=2, normalize_data=ref_file, lora=lora
    )
    model = load_reward_model(reward(cfg))
    prompts = [row["prompt"] for row in reference for _ in row.get("responses", [row.get("completion")])]
    replies = [reply for row in reference for reply in row.get("responses", [row.get("completion")])]
    normalized = model.rewards(prompts, replies)[:, 0]
    assert normalized.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert normalized.std().item() == pytest.approx(1.0, abs=1e-4)
    assert not (Path(cfg.output_dir) / "adapter_config.json").exists()  # LoRA merged into a plain checkpoint


def test_resume_continues_to_the_same_weights(tmp_path: Path, tiny_model_dir: Path):
    data = write_jsonl(tmp_path / "prefs.jsonl", cheerful_pairs(64))
    heads = {"reward": HeadData(data=data)}
    full = reward(config(tmp_path / "a", tiny_model_dir, heads, max_steps=4, save_every=2))
    assert (full / "checkpoints" / "step-2").exists()
    interrupted = tmp_path / "b" / "rm"
    shutil.copytree(full / "checkpoints", interrupted / "checkpoints")  # as if killed after step 2
    resumed = reward(config(tmp_path / "b", tiny_model_dir, heads, max_steps=4, save_every=2, resume=True))
    a, b = RewardModel.load(full), RewardModel.load(resumed)
    torch.testing.assert_close(a.head.weight, b.head.weight)
    for (name, p), q in zip(a.backbone.named_parameters(), b.backbone.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name)


def test_each_reply_is_forwarded_once_and_read_on_its_head(tiny_model_dir: Path):
    torch.manual_seed(0)
    model = RewardModel.from_pretrained(str(tiny_model_dir), ["a", "b"]).eval()
    comparisons = [
        Comparison("Q1", [" x", " y y", " z"], [2, 1, 3], head=0),
        Comparison("Q2", [" u", " v"], [1, 2], margin=0.5, head=1),
    ]
    tokenized = [
        TokenizedComparison([model.encode(c.prompt, r) for r in c.responses], list(c.ranks), c.margin, c.head)
        for c in comparisons
    ]
    batch = collate(tokenized, model.tokenizer.pad_token_id)
    assert sum(ids.shape[0] for _, ids, _ in batch.forwards) == 5 and batch.pairs == 4  # 3 + 2 replies; 3 + 1 pairs
    loss, _ = batch_loss(BucketedRewards(model), batch, torch.device("cpu"))
    heads = model.rewards(["Q1"] * 3 + ["Q2"] * 2, [" x", " y y", " z", " u", " v"], normalized=False)
    rewards = torch.tensor([[heads[0, 0], heads[1, 0], heads[2, 0]], [heads[3, 1], heads[4, 1], 0.0]])
    expected, _ = ranking_loss(
        rewards,
        torch.tensor([[2, 1, 3], [1, 2, 0]]),
        torch.tensor([[True, True, True], [True, True, False]]),
        torch.tensor([0.0, 0.5]),
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_length_buckets_trade_padding_for_forward_calls():
    assert length_buckets([5, 50, 5, 50, 5, 50], overhead=64) == [[0, 2, 4], [1, 3, 5]]  # saves 135 > 64
    assert length_buckets([5, 50, 5, 50, 5, 50], overhead=200) == [[0, 2, 4, 1, 3, 5]]  # one padded batch
    assert length_buckets([7, 7, 7]) == [[0, 1, 2]]
    lengths = [3, 41, 17, 17, 60, 2, 33, 33, 9, 58]
    buckets = length_buckets(lengths, overhead=20)
    assert sorted(i for b in buckets for i in b) == list(range(10))
    cost = sum(len(b) * max(lengths[i] for i in b) + 20 for b in buckets)
    brute = min(  # every way to cut the sorted lengths into consecutive runs
        sum((b - a) * s[b - 1] + 20 for a, b in zip((0, *cuts), (*cuts, 10), strict=True))
        for s in [sorted(lengths)]
        for mask in range(2**9)
        for cuts in [tuple(i + 1 for i in range(9) if mask >> i & 1)]
    )
    assert cost == brute


def test_comparisons_from_every_kind(tmp_path: Path):
    prefs = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "q", "chosen": "a", "rejected": "b", "margin": 2.0},
            {"prompt": "q", "chosen": "c", "rejected": "d", "tie": True},
        ],
    )
    assert load_comparisons(prefs, "preference", head=1, use_margin=True) == [
        Comparison("q", ["a", "b"], [1, 2], 2.0, 1),
        Comparison("q", ["c", "d"], [1, 1], 0.0, 1),
    ]
    ratings = write_jsonl(
        tmp_path / "r.jsonl",
        [{"prompt": "q", "response": r, "score": s} for r, s in [("a", 2), ("b", 6), ("c", 6)]],
    )
    assert load_comparisons(ratings, "rating", use_margin=True) == [
        Comparison("q", ["b", "a"], [1, 2], 4.0),
        Comparison("q", ["c", "a"], [1, 2], 4.0),
        Comparison("q", ["b", "c"], [1, 1], 0.0),  # equal scores: a tie, kept
    ]
    ranking = Comparison("q", ["a", "b", "c", "d"], [2, 1, 2, 3])
    assert ranking.pairs() == [(1, 0, False), (0, 2, True), (0, 3, False), (1, 2, False), (1, 3, False), (2, 3, False)]


def test_split_holds_out_whole_prompts():
    comparisons = [Comparison(f"q{i % 10}", ["a", "b"], [1, 2]) for i in range(40)]
    train, held = split_by_prompt(comparisons, 0.2, seed=0)
    assert len(held) == 8 and len(train) == 32
    assert not {c.prompt for c in train} & {c.prompt for c in held}


@pytest.mark.parametrize(
    ("kind", "row", "message"),
    [
        ("ranking", {"prompt": "q", "responses": ["only"], "ranks": [1]}, "bad.jsonl:2: field 'responses': "),
        ("ranking", {"prompt": "q", "responses": ["a", "b"], "ranks": [1]}, "bad.jsonl:2: field 'ranks': 1 ranks"),
        ("rating", {"prompt": "q", "response": "a", "score": 8}, "bad.jsonl:2: field 'score': Input should be"),
    ],
)
def test_bad_rows_are_errors_naming_the_row(tmp_path, capsys, kind: str, row: dict, message: str):
    good = {
        "ranking": {"prompt": "q", "responses": ["a", "b"], "ranks": [1, 2]},
        "rating": {"prompt": "q", "response": "a", "score": 3},
    }[kind]
    path = write_jsonl(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "reward",
                "--set",
                f"heads.reward.data={path}",
                "--set",
                f"heads.reward.kind={kind}",
                "--set",
                f"output_dir={tmp_path / 'out'}",
            ]
        )
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.replace(str(tmp_path) + "/", "")


@pytest.mark.parametrize("pair", [{"tie": True}, {"rejected": " glad."}])
def test_data_without_a_pair_that_says_which_is_better_is_refused(tmp_path, capsys, pair: dict):
    rows = [{"prompt": f"Day {i}:", "chosen": " glad.", "rejected": " sad.", **pair} for i in range(20)]
    path = write_jsonl(tmp_path / "ties.jsonl", rows)
    with pytest.raises(SystemExit) as exit_info:
        main(["reward", "--set", f"heads.reward.data={path}", "--set", f"output_dir={tmp_path / 'out'}"])
    assert exit_info.value.code == 2
    assert "no usable training pairs: all 18 comparisons are ties or compare a reply with itself" in (
        capsys.readouterr().err
    )


def test_missing_data_is_a_config_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["reward", "--set", f"output_dir={tmp_path}"])
    assert exit_info.value.code == 2
    assert "heads.reward.data is not set" in capsys.readouterr().err
