import math
import random

import pytest

from rlhfkit.evaluation.hacking import Flag, HackingSettings, detect_hacking, kl_flags, spans, trend


def run_rows(hacked: bool, steps: int = 100, seed: int = 0) -> list[dict]:
    """A PPO-like log: the reward-model score rises throughout; the gold score rises with it, or (hacked)
    peaks at step 50 and falls; KL grows like sqrt (a working penalty), or (hacked) runs away after 70."""
    rng = random.Random(seed)
    rows = []
    for step in range(1, steps + 1):
        reward = 0.03 * step + rng.gauss(0, 0.1)
        gold = (0.01 * step if not hacked or step <= 50 else 0.5 - 0.015 * (step - 50)) + rng.gauss(0, 0.05)
        kl = 0.8 * math.sqrt(step) + rng.gauss(0, 0.2)
        if hacked and step > 70:
            kl += 0.02 * (step - 70) ** 2
        rows.append({"step": step, "reward/score": reward, "gold/score": gold, "kl/k1": kl})
    return rows


def test_trend_by_hand():
    line = trend([1.0, 2.0, 3.0])
    assert (line.slope, line.se, line.t) == (1.0, 0.0, math.inf)
    assert trend([2.0, 2.0, 2.0]).t == 0.0
    # x̄ = 1.5, v̄ = 0.5, Sxx = 5, Sxv = 1: slope 0.2; residuals -0.2, 0.6, -0.6, 0.2: s.e. = sqrt(0.8 / 2 / 5)
    wiggle = trend([0.0, 1.0, 0.0, 1.0])
    assert wiggle.slope == pytest.approx(0.2) and wiggle.t == pytest.approx(0.2 / math.sqrt(0.08))


def test_flags_a_planted_run_and_not_a_clean_one():
    assert detect_hacking(run_rows(hacked=False)) == []
    for seed in range(10):
        assert detect_hacking(run_rows(hacked=False, seed=seed)) == []
    flags = detect_hacking(run_rows(hacked=True))
    diverging = [f.step for f in flags if f.kind == "reward-up-gold-down"]
    accelerating = [f.step for f in flags if f.kind == "kl-accelerating"]
    assert diverging and min(diverging) > 50 and len(diverging) > 20
    assert accelerating and min(accelerating) > 70
    assert "reward-model score +" in flags[0].reason and "gold score -" in flags[0].reason


def test_kl_above_a_limit_and_defaults_from_the_settings():
    rows = run_rows(hacked=False)
    settings = HackingSettings(kl_max=7.5)
    flags = detect_hacking(rows, **settings.model_dump())
    assert flags and {f.kind for f in flags} == {"kl-above"}
    assert all(row["kl/k1"] > 7.5 for row in rows if row["step"] in {f.step for f in flags})


def test_a_run_without_gold_gets_kl_flags_only():
    rows = [{k: v for k, v in row.items() if k != "gold/score"} for row in run_rows(hacked=True)]
    assert {f.kind for f in detect_hacking(rows)} == {"kl-accelerating"}
    assert detect_hacking([{"step": 1, "loss": 2.0}]) == []


def test_kl_accelerating_needs_a_real_rise():
    flat = [0.1 * (i % 2) for i in range(40)]  # wiggles of 0.1 nats: far below kl_min_rise
    assert kl_flags(list(range(40)), flat, 10, 2.0, None, 3.0, 1.0) == []


def test_spans_group_consecutive_logged_steps():
    flags = [Flag(s, "kl-above", "") for s in (10, 20, 30, 50)] + [Flag(20, "reward-up-gold-down", "")]
    logged = list(range(0, 60, 10))
    assert spans(flags, logged) == [
        ("kl-above", 10, 30, 3),
        ("reward-up-gold-down", 20, 20, 1),
        ("kl-above", 50, 50, 1),
    ]
