"""Reward models: losses, the model with named heads, ensembles, training and evaluation."""

from rlhfkit.models.reward import RewardModel, RewardScores
from rlhfkit.models.reward_ensemble import RewardEnsemble, load_reward_model

__all__ = ["RewardEnsemble", "RewardModel", "RewardScores", "load_reward_model"]
