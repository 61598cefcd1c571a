"""PPO-RLHF: rollouts with a KL penalty to the reference, GAE, the clipped PPO update (or A2C), PPO-ptx."""
