"""`rlhfkit loop` on a tiny model: two PPO rounds, resume after a kill, DPO, rejection sampling, and human labels
from the app."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch

from rlhfkit import loop as loop_module
from rlhfkit.feedback.store import Store, StoreError
from rlhfkit.generation.best_of import sample_groups
from rlhfkit.loop import LoopConfig, draw_prompts, loop
from rlhfkit.models.loading import load_model, load_tokenizer
from rlhfkit.scoring.sources import CombinedReward, RewardSource


def tiny_config(out: Path, model_dir: Path, **extra) -> LoopConfig:
    settings = {
        "output_dir": str(out),
        "model": str(model_dir),
        "rounds": 2,
        "prompts_per_round": 6,
        "samples_per_prompt": 2,
        "candidates": {"max_new_tokens": 4},
        "simulated": {"temperature": 1.0},  # noisy utilities: no all-tie rankings of 4-token replies
        "reward": {"max_steps": 2, "batch_size": 4, "micro_batch_size": 4, "num_threads": 2, "normalize_samples": 8},
        "ppo": {
            "max_steps": 1,
            "batch_size": 4,
            "mini_batch_size": 2,
            "micro_batch_size": 2,
            "ppo_epochs": 1,
            "sampling": {"max_new_tokens": 4},
            "log_samples": 1,
            "num_threads": 2,
        },
        "dpo": {"max_steps": 1, "batch_size": 2, "micro_batch_size": 2, "num_threads": 2},
        "eval_size": 4,
        "evaluation": {"max_new_tokens": 4},
    }
    return LoopConfig.model_validate(settings | extra)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_two_ppo_rounds_write_one_row_each_and_the_final_policy(tmp_path: Path, tiny_model_dir: Path):
    final = loop(tiny_config(tmp_path, tiny_model_dir))
    metrics = rows(tmp_path / "loop.jsonl")
    assert [m["round"] for m in metrics] == [0, 1]
    assert [m["labels_total"] for m in metrics] == [6, 12]
    assert all("eval/gold" in m and "eval/kl" in m for m in metrics)
    assert final.resolve() == (tmp_path / "round-1" / "policy").resolve()
    assert (final / "config.json").exists()
    # round 1 samples from round 0's policy, and both rounds keep the start model as the reference
    generate_config = json.loads((tmp_path / "round-1" / "generate" / "candidates.jsonl").read_text().splitlines()[0])
    assert len(generate_config["responses"]) == 2
    ppo_config = (tmp_path / "round-1" / "policy" / "config.yaml").read_text()
    assert f"model: {tmp_path / 'round-0' / 'policy'}" in ppo_config
    assert f"ref_model: {tiny_model_dir}" in ppo_config
    state = json.loads((tmp_path / "state.json").read_text())
    assert set(state["rounds"]["1"]) == set(loop_module.PHASES)


def test_a_killed_loop_resumes_without_redoing_phases_or_duplicating_labels(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    config = tiny_config(tmp_path, tiny_model_dir)

    def killed(_config):
        raise KeyboardInterrupt  # the loop is killed during round 0's policy phase, after its reward model

    monkeypatch.setattr(loop_module, "ppo", killed)
    with pytest.raises(KeyboardInterrupt):
        loop(config)
    assert (tmp_path / "round-0" / "reward").is_dir() and not (tmp_path / "round-0" / "policy").exists()
    labels_file = tmp_path / "round-0" / "label" / "labels.jsonl"
    mtime = labels_file.stat().st_mtime_ns
    monkeypatch.undo()

    calls: dict[str, int] = {}
    for name in ("generate", "simulate", "reward", "ppo"):
        real = getattr(loop_module, name)

        def counted(*args, _real=real, _name=name):
            calls[_name] = calls.get(_name, 0) + 1
            return _real(*args)

        monkeypatch.setattr(loop_module, name, counted)
    loop(config)
    assert calls == {"generate": 1, "simulate": 1, "reward": 1, "ppo": 2}  # round 0 resumed at its policy phase
    assert labels_file.stat().st_mtime_ns == mtime
    assert not list(tmp_path.glob("round-*/*.partial"))
    everything = rows(tmp_path / "round-1" / "reward" / "labels.jsonl")
    assert len(everything) == config.rounds * config.prompts_per_round
    assert len({json.dumps(row["prompt"]) for row in everything}) == len(everything)  # no prompt labelled twice
    assert [m["round"] for m in rows(tmp_path / "loop.jsonl")] == [0, 1]


def test_dpo_as_the_optimiser(tmp_path: Path, tiny_model_dir: Path):
    final = loop(tiny_config(tmp_path, tiny_model_dir, rounds=1, optimizer="dpo"))
    assert (final / "config.json").exists()
    assert rows(tmp_path / "round-0" / "policy" / "pairs.jsonl")  # best-vs-worst pairs of the rankings
    assert len(rows(tmp_path / "loop.jsonl")) == 1


def run_catching(function, argument, errors: list[BaseException]) -> None:
    try:
        function(argument)
    except BaseException as exc:
        errors.append(exc)


def test_human_labels_come_from_the_feedback_app(tmp_path: Path, tiny_model_dir: Path):
    db = f"sqlite:///{tmp_path}/feedback.db"
    Store(db).add_user("ann", "ann-password")
    human = {"db": db, "annotators": ["ann"], "poll_seconds": 0.1, "timeout_minutes": 5}
    config = tiny_config(tmp_path / "run", tiny_model_dir, labeler="human", human=human, rounds=1, optimizer="dpo")
    errors: list[BaseException] = []
    running = threading.Thread(target=lambda: run_catching(loop, config, errors))
    running.start()
    store = Store(db)
    deadline = time.monotonic() + 300
    while True:  # the annotator: waits for the round's project, then ranks the replies as shown
        assert not errors and time.monotonic() < deadline, errors
        try:
            project = store.project("rlhfkit-loop-round-1")
            break
        except StoreError:
            time.sleep(0.1)
    ann = store.authenticate("ann", "ann-password")
    while (item := store.next_item(project.id, ann)) is not None:
        store.submit(item.id, ann, {"rank_0": "1", "rank_1": "2"})  # the reply shown first is better
    running.join(timeout=300)
    assert not errors, errors
    labels = rows(tmp_path / "run" / "round-0" / "label" / "labels.jsonl")
    assert len(labels) == 6 and len(store.items("rlhfkit-loop-round-1")) == 6
    for label, item in zip(labels, store.items("rlhfkit-loop-round-1"), strict=True):
        first_shown = store.display_order(item, ann.id)[0]
        assert label["responses"] == item.responses and label["ranks"][first_shown] == 1
    assert (tmp_path / "run" / "round-0" / "policy" / "config.json").exists()


def test_prompt_draws_avoid_earlier_rounds_until_the_pool_runs_out():
    first = draw_prompts(10, 4, set(), seed=0, round_index=0)
    second = draw_prompts(10, 4, set(first), seed=0, round_index=1)
    assert not set(first) & set(second)
    third = draw_prompts(10, 4, set(first) | set(second), seed=0, round_index=2)
    assert len(set(third)) == 4 and set(range(10)) - set(first) - set(second) <= set(third)
    assert draw_prompts(10, 4, set(), seed=0, round_index=0) == first  # seeded


def test_rejection_sampling_as_the_optimiser_raises_the_reward_model_score_of_the_samples(
    tmp_path: Path, tiny_model_dir: Path
):
    sft = {"max_steps": 20, "batch_size": 6, "micro_batch_size": 6, "learning_rate": 1e-2, "lr_schedule": "constant"}
    config = tiny_config(
        tmp_path, tiny_model_dir, rounds=1, samples_per_prompt=4, optimizer="rejection_sampling", rejection_sampling=sft
    )
    final = loop(config)
    assert (final / "config.json").exists() and len(rows(tmp_path / "loop.jsonl")) == 1
    assert set(json.loads((tmp_path / "state.json").read_text())["rounds"]["0"]) == set(loop_module.PHASES)
    policy_dir = tmp_path / "round-0" / "policy"
    best = rows(policy_dir / "best.jsonl")
    candidates = rows(tmp_path / "round-0" / "generate" / "candidates.jsonl")
    assert [b["prompt"] for b in best] == [c["prompt"] for c in candidates]
    assert all(b["completion"] in c["responses"] for b, c in zip(best, candidates, strict=True))
    selection = json.loads((policy_dir / "selection.json").read_text())
    assert selection["chosen/score"] > selection["candidates/score"]
    assert f"model: {tiny_model_dir}" in (policy_dir / "config.yaml").read_text()  # SFT from the current policy

    # fresh samples on the round's prompts, the same seeds for both: the tuned policy's score higher
    reward = CombinedReward([RewardSource(source=str(tmp_path / "round-0" / "reward"))], torch.device("cpu"))
    prompts = [c["prompt"] for c in candidates]
    means = []
    for model_dir in (tiny_model_dir, policy_dir):
        tokenizer = load_tokenizer(str(model_dir))
        model = load_model(str(model_dir), tokenizer).eval()
        groups = sample_groups(model, tokenizer, prompts, 8, reward, config.candidates, 6, seed=1)
        means.append(groups.scores.mean().item())
    assert means[1] > means[0] + 0.1, means  # 0.28 measured (10 SFT steps: 0.19; chosen - all: 0.47)
