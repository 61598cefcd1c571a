"""RLHF for control: deep RL from human preferences between clips (Christiano et al. 2017, arXiv:1706.03741).

`segments` (segments, comparisons, query selection, label schedule), `reward_model` (the ensemble and its loss),
`learner` (query, label, fit), `labelers`, `render` (clips as MP4), `envs` (the reward-swapping VecEnv; needs
the control extra), `train` (`rlhfkit control`).
"""
