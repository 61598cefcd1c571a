"""rlhfkit: Reinforcement Learning from Human Feedback, the whole system."""

__version__ = "0.1.0"
