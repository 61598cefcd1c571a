"""Clips of an agent's behaviour, as a human labeler would watch them: MP4 files, one segment or a pair.

Rendering is headless: MuJoCo through EGL (or OSMesa where libEGL is missing), chosen by `MUJOCO_GL` before
mujoco is first imported; CartPole and the other classic-control tasks draw with pygame into an array. A segment
is drawn after the fact from the simulator state recorded at each of its steps (`get_state`), restored into a
separate render env (`set_state`, `render_segment`).
"""

from __future__ import annotations

import ctypes.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rlhfkit.config import ConfigError


def headless_gl() -> str:
    """Set MUJOCO_GL (unless the user did) to egl, or osmesa without libEGL; returns the value in force."""
    if "MUJOCO_GL" not in os.environ:
        os.environ["MUJOCO_GL"] = "egl" if ctypes.util.find_library("EGL") else "osmesa"
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    return os.environ["MUJOCO_GL"]


def get_state(env: Any) -> np.ndarray:
    """The state a picture is drawn from, as one float64 vector: MuJoCo's (qpos, qvel) joined, or classic
    control's `state` (CartPole, Pendulum, ...)."""
    sim = env.unwrapped
    if hasattr(sim, "set_state") and hasattr(sim, "data"):  # a MujocoEnv
        return np.concatenate([sim.data.qpos, sim.data.qvel])
    if getattr(sim, "state", None) is not None:
        return np.array(sim.state, dtype=np.float64)
    raise ConfigError(f"{sim}: cannot record its state for clips: not a MuJoCo or classic-control environment")


def set_state(env: Any, state: np.ndarray) -> None:
    """Put a state from `get_state` back into an env of the same task."""
    sim = env.unwrapped
    if hasattr(sim, "set_state") and hasattr(sim, "data"):
        sim.set_state(state[: sim.model.nq], state[sim.model.nq :])
    else:
        sim.state = np.array(state)


def render_env(env_id: str) -> Any:
    """An `rgb_array` env of the task to draw recorded states with (headless), reset once."""
    import gymnasium as gym

    headless_gl()
    env = gym.make(env_id, render_mode="rgb_array")
    env.reset(seed=0)
    return env


def render_segment(env: Any, states: np.ndarray) -> list[np.ndarray]:
    """The (H, W, 3) frames of a segment's steps, drawn from its recorded states (L, d_state); `env` is a
    `render_env` (reuse it across segments: a MuJoCo one holds a GL context) or a task id to make one for this."""
    own = isinstance(env, str)
    if own:
        env = render_env(env)
    try:
        frames = []
        for state in states:
            set_state(env, state)
            frames.append(env.render())
        return frames
    finally:
        if own:
            env.close()


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad an (H, W, 3) frame to even H and W with black: H.264 in yuv420p needs both even."""
    height, width = frame.shape[:2]
    return np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)))


def render_clip(frames: Sequence[np.ndarray] | np.ndarray, path: str | Path, fps: float) -> Path:
    """Write (H, W, 3) uint8 frames as an H.264 MP4 (yuv420p: plays in browsers) at `fps`; returns the path.

    The encoder is the ffmpeg binary that the imageio-ffmpeg wheel ships, so nothing is fetched at run time.
    """
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with imageio.get_writer(path, fps=fps, codec="libx264", pixelformat="yuv420p", macro_block_size=1) as writer:
        for frame in frames:
            writer.append_data(_even(np.asarray(frame, dtype=np.uint8)))  # type: ignore[attr-defined]  # v2 Writer's
    return path


def side_by_side(
    frames_left: Sequence[np.ndarray], frames_right: Sequence[np.ndarray], gap: int = 8
) -> list[np.ndarray]:
    """The two clips next to each other with a white gap; the shorter one (a segment that ended by termination)
    holds its last frame, so both play for the same time."""
    steps = max(len(frames_left), len(frames_right))
    pair = []
    for t in range(steps):
        left = np.asarray(frames_left[min(t, len(frames_left) - 1)], dtype=np.uint8)
        right = np.asarray(frames_right[min(t, len(frames_right) - 1)], dtype=np.uint8)
        height = max(left.shape[0], right.shape[0])
        left, right = (np.pad(f, ((0, height - f.shape[0]), (0, 0), (0, 0))) for f in (left, right))
        pair.append(np.concatenate([left, np.full((height, gap, 3), 255, np.uint8), right], axis=1))
    return pair


def render_pair(
    frames_left: Sequence[np.ndarray], frames_right: Sequence[np.ndarray], path: str | Path, fps: float
) -> Path:
    """One MP4 of two segments side by side (left: the pair's first segment), for a pairwise comparison."""
    return render_clip(side_by_side(frames_left, frames_right), path, fps)
