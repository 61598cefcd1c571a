"""rlhfkit: Reinforcement Learning from Human Feedback, the whole system."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["load_reward_model"]

if TYPE_CHECKING:
    from rlhfkit.models.reward_ensemble import load_reward_model


def __getattr__(name: str) -> Any:
    # Imported on first use, so `import rlhfkit` (and `rlhfkit --help`) does not import torch.
    if name == "load_reward_model":
        from rlhfkit.models.reward_ensemble import load_reward_model

        return load_reward_model
    raise AttributeError(f"module 'rlhfkit' has no attribute {name!r}")
