"""Evaluation of policies: gold and reward-model scores, KL to a reference and diversity on fresh samples
(`policy`), win-rates (`winrate`), a Bradley-Terry leaderboard (`leaderboard`), calibration on a
multiple-choice probe (`calibration`), the reward-hacking detector (`hacking`), the `rlhfkit eval` stage
(`evaluate`) and the HTML report (`report`)."""
