"""`rlhfkit offline`: RL from a fixed dataset of scored replies, without querying a reward model (ILQL, AWR)."""
