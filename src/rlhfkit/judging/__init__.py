"""AI judges, shared by `rlhfkit label ai` (rlaif/) and the AI win-rate of `rlhfkit eval` (evaluation/).

`judges` (one `Judge` interface: a local Hugging Face model or an OpenAI-compatible endpoint),
`constitution` (principles from YAML, sampled or cycled per judgement), `questions` (CAI's multiple-choice
comparison and every order it is asked in, so position bias averages out).
"""
