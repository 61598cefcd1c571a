"""Reward-hacking detector over a run's logged metrics (`metrics.jsonl`): steps where the policy is learning
to please the reward model rather than the labeler it stands for.

Gao et al. 2023 ("Scaling laws for reward model overoptimization", arXiv:2210.10760) show the pattern: as
the policy moves away from the reference (KL grows), the proxy (reward-model) score keeps rising while the
gold score rises, peaks and falls. Two signs are flagged, each on trailing windows of `window` logged steps:

- `reward-up-gold-down`: the least-squares slope of the reward-model score is significantly positive and
  that of the gold (or judge) score significantly negative, t = slope / s.e.(slope) beyond ±z for both.
  A t-statistic makes the test free of each score's scale and noise.
- `kl-above`: KL to the reference above `kl_max` nats (per response), when a limit is given;
  `kl-accelerating`: KL's slope over the last window is more than `kl_growth` times its slope over the
  window before it (by z standard errors), and it rose at least `kl_min_rise` nats: KL running away instead
  of levelling off, as it does under a working KL penalty.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from pydantic import Field

from rlhfkit.config import Config


class HackingSettings(Config):
    """What the reward-hacking detector reads and how sure it must be."""

    reward_key: str = Field("reward/score", description="metric of the reward-model (proxy) score")
    gold_key: str = Field("gold/score", description="metric of the gold or judge score (e.g. eval/gold/score)")
    kl_key: str = Field("kl/k1", description="metric of the KL to the reference, nats per response")
    window: int = Field(10, ge=3, description="logged steps per trailing window")
    z: float = Field(2.0, gt=0, description="standard errors a trend must clear to be flagged")
    kl_max: float | None = Field(None, gt=0, description="flag KL above this (nats per response; None: off)")
    kl_growth: float = Field(3.0, gt=1, description="flag KL rising this many times faster than the window before")
    kl_min_rise: float = Field(1.0, ge=0, description="least rise over a window (nats) for kl-accelerating")


@dataclass(frozen=True)
class Flag:
    """One flagged logged step: `kind` is reward-up-gold-down, kl-above or kl-accelerating."""

    step: int
    kind: str
    reason: str

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Trend:
    """The least-squares line through (0, v_0), ..., (n-1, v_{n-1}), n >= 3:

    slope = Σ (x - x̄)(v - v̄) / Σ (x - x̄)²,   s.e. = sqrt(Σ residual² / (n - 2) / Σ (x - x̄)²),   t = slope / s.e.
    """

    slope: float
    se: float

    @property
    def t(self) -> float:
        """slope / s.e.; a perfect line has t = ±inf (0 when flat)."""
        if self.se == 0:
            return 0.0 if self.slope == 0 else math.copysign(math.inf, self.slope)
        return self.slope / self.se


def trend(values: Sequence[float]) -> Trend:
    """The `Trend` of a window of values."""
    n = len(values)
    x_mean, v_mean = (n - 1) / 2, sum(values) / n
    sxx = sum((x - x_mean) ** 2 for x in range(n))
    slope = sum((x - x_mean) * (v - v_mean) for x, v in enumerate(values)) / sxx
    residual = sum((v - v_mean - slope * (x - x_mean)) ** 2 for x, v in enumerate(values))
    return Trend(slope, math.sqrt(residual / (n - 2) / sxx))


def series(rows: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the rows that logged `key`, in step order."""
    pairs = sorted((row["step"], float(row[key])) for row in rows if row.get(key) is not None)
    return [s for s, _ in pairs], [v for _, v in pairs]


def divergence_flags(
    steps: Sequence[int], reward: Sequence[float], gold: Sequence[float], window: int, z: float
) -> list[Flag]:
    """reward-up-gold-down at each step ending a window where reward's t > z and gold's t < -z."""
    flags = []
    for end in range(window, len(steps) + 1):
        rise, fall = trend(reward[end - window : end]), trend(gold[end - window : end])
        if rise.t > z and fall.t < -z:
            span = f"steps {steps[end - window]}-{steps[end - 1]}"
            reason = (
                f"{span}: reward-model score {rise.slope * (window - 1):+.3g} (t={rise.t:.1f}) while the gold "
                f"score {fall.slope * (window - 1):+.3g} (t={fall.t:.1f})"
            )
            flags.append(Flag(steps[end - 1], "reward-up-gold-down", reason))
    return flags


def kl_flags(
    steps: Sequence[int],
    kl: Sequence[float],
    window: int,
    z: float,
    kl_max: float | None,
    kl_growth: float,
    kl_min_rise: float,
) -> list[Flag]:
    """kl-above at each step over `kl_max`; kl-accelerating where the last window's slope s is more than
    `kl_growth` times the previous window's s' (a falling s' counts as 0) by z standard errors,

        s - g·max(s', 0) > z·sqrt(se(s)² + g²·se(s')²)   (the second term only when s' > 0),

    and the rise s·window is at least `kl_min_rise` nats."""
    flags = []
    for i, (step, value) in enumerate(zip(steps, kl, strict=True)):
        if kl_max is not None and value > kl_max:
            flags.append(Flag(step, "kl-above", f"step {step}: KL {value:.3g} nats above the limit {kl_max:g}"))
        if i + 1 < 2 * window:
            continue
        now, before = trend(kl[i + 1 - window : i + 1]), trend(kl[i + 1 - 2 * window : i + 1 - window])
        growth = kl_growth if before.slope > 0 else 0.0
        excess = now.slope - growth * before.slope
        if now.slope * window >= kl_min_rise and excess > z * math.hypot(now.se, growth * before.se):
            reason = (
                f"steps {steps[i + 1 - window]}-{step}: KL rose {now.slope * window:.3g} nats, more than "
                f"{kl_growth:g} times its rise of {before.slope * window:+.3g} over the {window} steps before"
            )
            flags.append(Flag(step, "kl-accelerating", reason))
    return flags


def detect_hacking(
    rows: Sequence[dict],
    reward_key: str = "reward/score",
    gold_key: str = "gold/score",
    kl_key: str = "kl/k1",
    window: int = 10,
    z: float = 2.0,
    kl_max: float | None = None,
    kl_growth: float = 3.0,
    kl_min_rise: float = 1.0,
) -> list[Flag]:
    """Every flag of the module docstring over a run's metric rows (dicts with `step`), in step order.

    The divergence test uses the steps that logged both scores; a run without a gold score gets KL flags only.
    """
    steps, reward = series(rows, reward_key)
    gold_by_step = dict(zip(*series(rows, gold_key), strict=True))
    both = [(s, r) for s, r in zip(steps, reward, strict=True) if s in gold_by_step]
    flags = divergence_flags([s for s, _ in both], [r for _, r in both], [gold_by_step[s] for s, _ in both], window, z)
    flags += kl_flags(*series(rows, kl_key), window, z, kl_max, kl_growth, kl_min_rise)
    return sorted(flags, key=lambda f: (f.step, f.kind))


def spans(flags: Sequence[Flag], logged: Sequence[int]) -> list[tuple[str, int, int, int]]:
    """(kind, first step, last step, number of flags) for each stretch of one kind's flags at consecutive
    logged steps (`logged`: every step the run logged), ordered by first step."""
    index = {step: i for i, step in enumerate(sorted(set(logged)))}
    out: list[tuple[str, int, int, int]] = []
    for kind in sorted({f.kind for f in flags}):
        steps = sorted(f.step for f in flags if f.kind == kind)
        start = previous = steps[0]
        for step in steps[1:]:
            if index[step] != index[previous] + 1:
                out.append((kind, start, previous, index[previous] - index[start] + 1))
                start = step
            previous = step
        out.append((kind, start, previous, index[previous] - index[start] + 1))
    return sorted(out, key=lambda span: (span[1], span[0]))
