import json
from pathlib import Path

import pytest

from rlhfkit.cli import main
from rlhfkit.data.convert import best_vs_worst


@pytest.mark.slow
def test_quickstart_runs_offline_and_prints_samples(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "quickstart",
                "--set",
                f"output_dir={tmp_path}",
                "--set",
                "sft.max_steps=4",
                "--set",
                "show=2",
                "--set",
                "sampling.max_new_tokens=8",
                "--set",
                "reward_prompts=16",
                "--set",
                "candidates.max_new_tokens=8",
                "--set",
                "reward.max_steps=2",
                "--set",
                "dpo.max_steps=2",
                "--set",
                "ppo.max_steps=2",
                "--set",
                "ppo.batch_size=8",
                "--set",
                "ppo.mini_batch_size=4",
                "--set",
                "ppo.sampling.max_new_tokens=6",
                "--set",
                "rloo.max_steps=2",
                "--set",
                "rloo.batch_size=8",
                "--set",
                "rloo.mini_batch_size=4",
                "--set",
                "rloo.sampling.max_new_tokens=6",
                "--set",
                f"dpo.ref_cache_dir={tmp_path / 'ref-cache'}",
                "--set",
                "evaluation.limit=6",
                "--set",
                "evaluation.sampling.max_new_tokens=6",
                "--set",
                "evaluation.bootstrap=20",
                "--set",
                "evaluation.probe=null",
            ]
        )
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "after SFT" in out and "held-out SFT loss" in out
    assert (tmp_path / "sft" / "model.safetensors").exists()
    assert "held-out reward-model accuracy" in out
    assert len((tmp_path / "labels.jsonl").read_text().splitlines()) == 16  # one ranking of 4 per prompt
    assert (tmp_path / "reward" / "reward_model.json").exists() and (tmp_path / "reward" / "eval.json").exists()
    assert (tmp_path / "dpo" / "model.safetensors").exists()
    ppo_log = [json.loads(line) for line in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in ppo_log] == [1, 2] and "gold/score" in ppo_log[0]  # VADER logged, not trained on
    assert (tmp_path / "ppo" / "model.safetensors").exists()
    rloo_log = [json.loads(line) for line in (tmp_path / "rloo" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in rloo_log] == [1, 2] and "value/loss" not in rloo_log[0]  # critic-free
    evaluation = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert len(evaluation["policies"]) == 4 and len(evaluation["leaderboard"]["standings"]) == 4
    assert evaluation["policies"][str(tmp_path / "sft")]["metrics"]["eval/kl"] == 0  # the reference itself
    best_of = evaluation["best_of_n"]  # best-of-n of the SFT model by the reward model, on the frontier
    assert best_of["policy"] == str(tmp_path / "sft") and [p["n"] for p in best_of["points"]] == [1, 2, 4]
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert {"PPO", "RLOO", "DPO", "reward model", "evaluation"} <= set(timings)
    stages = [v for k, v in timings.items() if k != "total"]
    assert timings["total"]["wall"] == pytest.approx(sum(v["wall"] for v in stages))
    assert "time per stage" in out and timings["PPO"]["wall"] > 0 and timings["PPO"]["cpu"] > 0
    page = (tmp_path / "report.html").read_text()
    assert "<img" in page and f"report: {tmp_path / 'report.html'}" in out.replace("\n", "")


def test_best_vs_worst_takes_one_pair_per_ranking_and_skips_all_ties(tmp_path: Path):
    rankings = tmp_path / "labels.jsonl"
    rows = [
        {"prompt": "p1", "responses": ["a", "b", "c"], "ranks": [2, 1, 3]},
        {"prompt": "p2", "responses": ["x", "y"], "ranks": [1, 1]},
    ]
    rankings.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = [json.loads(line) for line in best_vs_worst(rankings, tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert pairs == [{"prompt": "p1", "chosen": "b", "rejected": "c"}]
