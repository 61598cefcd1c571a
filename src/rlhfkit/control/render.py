"""Clips of an agent's behaviour, as a human labeler would watch them: MP4 files, one segment or a pair.

Rendering is headless: MuJoCo through EGL (or OSMesa where libEGL is missing), chosen by `MUJOCO_GL` before
mujoco is first imported; CartPole and the other classic-control tasks draw with pygame into an array.
"""

from __future__ import annotations

import ctypes.util
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def headless_gl() -> str:
    """Set MUJOCO_GL (unless the user did) to egl, or osmesa without libEGL; returns the value in force."""
    if "MUJOCO_GL" not in os.environ:
        os.environ["MUJOCO_GL"] = "egl" if ctypes.util.find_library("EGL") else "osmesa"
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    return os.environ["MUJOCO_GL"]


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
            writer.append_data(_even(np.asarray(frame, dtype=np.uint8)))
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
