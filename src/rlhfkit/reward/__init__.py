"""Reward models: losses, the model with named heads, ensembles, training and evaluation."""

from rlhfkit.reward.ensemble import RewardEnsemble, load_reward_model
from rlhfkit.reward.model import RewardModel, RewardScores

__all__ = ["RewardEnsemble", "RewardModel", "RewardScores", "load_reward_model"]
