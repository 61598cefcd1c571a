import json
import math
import random
import re
from pathlib import Path

import pytest

from rlhfkit.cli import main
from rlhfkit.evaluation.report import ReportConfig, find_runs, frontier_points, report

SECTIONS = ("summary", "reward-kl", "frontier", "leaderboard", "calibration", "samples", "hacking")
EVIL = "<script>alert('x')</script>"


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def ppo_run(path: Path, hacked: bool, seed: int) -> None:
    """metrics.jsonl like `rlhfkit ppo` writes (training keys each step, eval keys every 25) and samples.jsonl."""
    rng = random.Random(seed)
    rows = []
    for step in range(1, 101):
        gold = (0.01 * step if not hacked or step <= 50 else 0.5 - 0.015 * (step - 50)) + rng.gauss(0, 0.05)
        kl = 0.8 * math.sqrt(step) + rng.gauss(0, 0.2) + (0.02 * (step - 70) ** 2 if hacked and step > 70 else 0)
        row = {"step": step, "reward/score": 0.03 * step + rng.gauss(0, 0.1), "gold/score": gold, "kl/k1": kl}
        if step % 25 == 0:
            row |= {"eval/gold/score": gold, "eval/kl/k1": kl, "eval/reward/score": row["reward/score"]}
        rows.append(row)
    write_jsonl(path / "metrics.jsonl", rows)
    samples = [
        {"step": step, "prompt": prompt, "response": f"reply {step} to {prompt}", "score": 0.1 * step}
        for step in (1, 100)
        for prompt in ("Emma was", "Mr. Darcy")
    ]
    samples[-1]["response"] = EVIL if hacked else samples[-1]["response"]
    write_jsonl(path / "samples.jsonl", samples)


def eval_dir(path: Path) -> None:
    """eval.json and samples.jsonl in the form `rlhfkit eval` writes (checked against it in test_eval_stage)."""
    bins = [
        {"lower": b / 10, "upper": (b + 1) / 10, "count": 5, "confidence": b / 10 + 0.05, "accuracy": b / 12}
        for b in range(10)
    ]
    policies = {}
    for k, name in enumerate(["runs/sft", "runs/ppo", "<b>dpo</b>"]):
        policies[name] = {
            "metrics": {
                "eval/gold": 0.3 + 0.2 * k,
                "eval/kl": 0.1 * k,
                "eval/kl_per_response": 3.0 * k,
                "eval/distinct2": 0.9,
                "eval/length": 20.0,
                "eval/positive": 0.6,
            },
            "reward_models": {"runs/reward": 0.5 * k},
            "calibration": {"ece": 0.05 * (k + 1), "accuracy": 0.7, "confidence": 0.75, "items": 50, "bins": bins},
        }
        if k:
            policies[name]["win_rate"] = {
                "win_rate": 0.6,
                "lower": 0.5,
                "upper": 0.7,
                "wins": 6,
                "ties": 0,
                "losses": 4,
                "unjudged": 0,
                "confidence": 0.95,
            }
    standings = [
        {
            "name": name,
            "strength": s,
            "lower": s - 0.2,
            "upper": s + 0.2,
            "games": 20,
            "points": 10.0,
            "elo": 1000 + 173.7 * s,
            "elo_lower": 1000 + 173.7 * (s - 0.2),
            "elo_upper": 1000 + 173.7 * (s + 0.2),
        }
        for name, s in zip(policies, [0.4, 0.1, -0.5], strict=True)
    ]
    data = {
        "reference": "runs/sft",
        "prompts": 2,
        "labeler": "simulated",
        "gold": "vader",
        "policies": policies,
        "leaderboard": {"standings": standings, "judgements": 6, "bootstrap": 100, "confidence": 0.95},
    }
    path.mkdir(parents=True)
    (path / "eval.json").write_text(json.dumps(data))
    names = list(policies)
    write_jsonl(path / "samples.jsonl", [{"prompt": "Emma was", "responses": ["a", EVIL, "c"], "policies": names}])


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    ppo_run(tmp_path / "sweep" / "beta-0.01", hacked=True, seed=0)
    ppo_run(tmp_path / "sweep" / "beta-0.1", hacked=False, seed=1)
    (tmp_path / "sweep" / "beta-0.1" / "checkpoints" / "step-10").mkdir(parents=True)
    write_jsonl(tmp_path / "sweep" / "beta-0.1" / "checkpoints" / "step-10" / "metrics.jsonl", [{"step": 1}])
    eval_dir(tmp_path / "eval")
    reward = tmp_path / "sweep" / "reward"  # a reward model's eval.json is not an rlhfkit eval
    write_jsonl(reward / "metrics.jsonl", [{"step": 1, "rm/loss": 0.6}])
    (reward / "eval.json").write_text(json.dumps({"eval/reward/accuracy": 0.7}))
    return tmp_path


def test_runs_are_found_below_the_given_directories(runs: Path):
    found = find_runs([str(runs / "sweep"), str(runs / "eval")])
    names = [r.name.removeprefix(str(runs) + "/") for r in found]
    assert names == ["sweep/beta-0.01", "sweep/beta-0.1", "sweep/reward", "eval"]
    assert found[2].evaluation is None and found[3].evaluation is not None
    frontier = frontier_points(found)
    assert frontier.y_label == "gold score"
    assert len(frontier.lines[found[0].name]) == 4  # its four held-out evaluations
    assert len(frontier.stars) == 3


def test_report_has_every_plot_and_escapes_model_output(runs: Path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(runs / "sweep"), str(runs / "eval"), "--set", "title=β sweep <1>"])
    assert exit_info.value.code == 0
    page = (runs / "sweep" / "report.html").read_text()
    assert str(runs / "sweep" / "report.html") in capsys.readouterr().out
    for section in SECTIONS:
        assert f'<section id="{section}">' in page
    # reward/KL per step for 3 runs (two PPO, the reward model's has no such metric: none), frontier,
    # leaderboard, calibration, and the losses of the one run that logs a stage's loss (the reward model's)
    images = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', page)
    assert len(images) == 2 + 1 + 1 + 1 + 1 == page.count("<img")
    assert all(len(data) > 1000 for _, data in images)
    # self-contained: no script, no external reference; model output and names escaped
    assert "<script" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<b>dpo</b>" not in page and "&lt;b&gt;dpo&lt;/b&gt;" in page
    assert "β sweep &lt;1&gt;" in page
    assert not re.search(r'(src|href)="(?!data:)', page)
    hacking = page[page.index('<section id="hacking">') :]
    assert "beta-0.01" in hacking and "reward-up-gold-down" in hacking and "kl-accelerating" in hacking
    assert "beta-0.1<" not in hacking


def test_report_of_a_run_without_evaluation_says_what_is_missing(runs: Path):
    path = report(ReportConfig(runs=[str(runs / "sweep" / "beta-0.1")], output=str(runs / "one.html")))
    page = path.read_text()
    assert page.count("<img") == 2  # its steps and the frontier
    assert "no eval.json" in page and "no calibration" in page and "no step flagged" in page


def test_report_errors(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tmp_path)])
    assert exit_info.value.code == 2 and "no run found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tmp_path / "missing")])
    assert exit_info.value.code == 2 and "not a directory" in capsys.readouterr().err
