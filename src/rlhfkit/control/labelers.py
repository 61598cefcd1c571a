"""Who compares two segments: a `Labeler` answers a batch of pairs.

An answer is 1.0 (the first segment is better), 0.0 (the second), 0.5 (equally good) or None (can't tell:
the pair is dropped), the four answers of Christiano et al. 2017 (arXiv:1706.03741, section 2.2.2).
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

import numpy as np

from rlhfkit.control.render import render_clip, render_env, render_segment
from rlhfkit.control.segments import SegmentPairs
from rlhfkit.data.readers import Row
from rlhfkit.feedback.queue import HumanLabelSettings, Payload, request_judgments
from rlhfkit.scores import preference_probability

if TYPE_CHECKING:
    from rlhfkit.control.train import ControlConfig


class Labeler(Protocol):
    def label(self, pairs: SegmentPairs) -> list[float | None]:
        """One answer per pair, in order: 1.0, 0.0, 0.5 or None."""
        ...


class SyntheticLabeler:
    """The environment's true reward through the noisy Bradley-Terry labeler of `rlhfkit label simulate`:

        P(σ¹ ≻ σ²) = (1 - ε)·sigma((R¹ - R²) / T) + ε/2,   R = Σ_t r(s_t, a_t), the segment's true return,

    T = 0 always choosing the higher return, as the paper's synthetic oracle (section 3.1); equal returns are a
    tie (0.5), never a coin flip.
    """

    def __init__(self, temperature: float = 0.0, random_prob: float = 0.0, seed: int = 0) -> None:
        self.temperature = temperature
        self.random_prob = random_prob
        self.rng = random.Random(seed)

    def label(self, pairs: SegmentPairs) -> list[float | None]:
        answers: list[float | None] = []
        for first, second in zip(pairs.first.true_returns(), pairs.second.true_returns(), strict=True):
            if first == second:
                answers.append(0.5)
                continue
            p = preference_probability(float(first), float(second), self.temperature, self.random_prob)
            answers.append(1.0 if self.rng.random() < p else 0.0)
        return answers


class HumanLabeler:
    """People comparing two clips in the feedback app (`rlhfkit serve`), as in the paper's human experiments.

    Each batch of pairs becomes the pairwise project PREFIX-control-batch-N-HASH: an item per pair, its two
    segments as MP4 clips drawn headless from their recorded simulator states (output_dir/clips/batch-N/), shown
    side by side. Training waits until every item is judged (`request_judgments`, as the online loop does).
    Better → 1.0 or 0.0, tie → 0.5, both bad or can't tell → None. N counts on from the batch folders already
    in the output directory, so a resumed run numbers its batches on; HASH is of the pairs' states, so a project
    is reused only for the very same pairs, and never hands one run's labels to other pairs.
    """

    def __init__(self, settings: HumanLabelSettings, env_id: str, seconds_per_step: float, clips_dir: Path) -> None:
        self.settings = settings
        self.env_id = env_id
        self.seconds_per_step = seconds_per_step
        self.clips_dir = Path(clips_dir)
        self.batches = len(list(self.clips_dir.glob("batch-*")))

    def label(self, pairs: SegmentPairs) -> list[float | None]:
        if pairs.first.states is None or pairs.second.states is None:
            raise ValueError("human labels need segments with simulator states: make_envs(record_states=True)")
        self.batches += 1
        directory = (self.clips_dir / f"batch-{self.batches}").resolve()
        length = pairs.first.mask.shape[1]
        prompt = (
            f"{self.env_id}: which clip shows the better behaviour? Each is {length} steps "
            f"({length * self.seconds_per_step:.2f} s of simulated time)."
        )
        fps = 1 / self.seconds_per_step
        rows = []
        env = render_env(self.env_id)
        try:
            for k in range(len(pairs)):
                sides = (pairs.first[k : k + 1], pairs.second[k : k + 1])
                media = [
                    str(
                        render_clip(
                            render_segment(env, cast(np.ndarray, side.states)[0]),
                            directory / f"pair-{k + 1}-{name}.mp4",
                            fps,
                        )
                    )
                    for side, name in zip(sides, "ab", strict=True)
                ]
                row = {"prompt": prompt, "responses": [self._describe(side.mask[0]) for side in sides], "media": media}
                rows.append(Row(f"{directory}/pair-{k + 1}", row))
        finally:
            env.close()
        suffix = f"control-batch-{self.batches}-{_digest(pairs)}"
        return [_answer(payload) for _, payload in request_judgments(self.settings, suffix, "pairwise", rows)]

    def _describe(self, mask: np.ndarray) -> str:
        steps = int(mask.sum())
        if steps == len(mask):
            return f"{steps} steps ({steps * self.seconds_per_step:.2f} s)"
        return f"the episode ends after {steps} of {len(mask)} steps; the clip then holds its last picture"


def _digest(pairs: SegmentPairs) -> str:
    """8 hex digits of SHA-256 over the pairs' states and masks: what the clips show."""
    digest = hashlib.sha256()
    for side in (pairs.first, pairs.second):
        for array in (side.states, side.mask):
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:8]


def _answer(payload: Payload) -> float | None:
    """A pairwise consensus as a label: the first (stored) clip better 1.0, the second 0.0, a tie 0.5, else None."""
    if payload["outcome"] == "tie":
        return 0.5
    if payload["outcome"] == "preferred":
        return 1.0 if payload["preferred"] == 0 else 0.0
    return None  # both bad, or can't tell: no preference to learn from


def make_labeler(config: ControlConfig, seconds_per_step: float) -> Labeler:
    """The config's labeler: `synthetic`, or `human` (clips in the feedback app; output_dir/clips holds them)."""
    if config.labeler == "human":
        return HumanLabeler(config.human, config.env, seconds_per_step, Path(config.output_dir) / "clips")
    return SyntheticLabeler(config.labeler_temperature, config.labeler_random_prob, config.seed)
