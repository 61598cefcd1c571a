"""Files shipped inside the package, usable by name wherever a config takes a path."""

from __future__ import annotations

from importlib import resources

# name -> path under src/rlhfkit/assets/
BUILTIN = {
    "austen": "austen.txt.gz",  # Jane Austen's six novels (public domain), the pretraining corpus
    "tiny-austen": "tiny-austen",  # the model `rlhfkit pretrain configs/pretrain-tiny-austen.yaml` made
    "demo-sft": "demo/sft.jsonl",  # cheerful continuations of Austen sentence openings (prompt/completion)
    "demo-prompts": "demo/prompts.jsonl",  # held-out Austen sentence openings (prompt)
    "red-team": "demo/red-team.jsonl",  # 20 hand-written harmful requests for `rlhfkit cai revise` (prompt)
    "cloze-probe": "demo/cloze.jsonl",  # which-word-comes-next items from held-out Austen (calibration)
    "constitution": "constitution.yaml",  # the principles of the AI labeler (rlhfkit label ai, cai revise)
    "hhh-context": "hhh-context.yaml",  # a helpful, honest, harmless preamble and dialogues (rlhfkit distill)
    "hhh-prompts": "demo/hhh-prompts.jsonl",  # 48 everyday requests, a few harmful (chat prompt records)
}


def resolve(name_or_path: str) -> str:
    """The packaged file for a builtin name; any other string is returned unchanged (a path or hub id)."""
    if name_or_path in BUILTIN:
        return str(resources.files("rlhfkit") / "assets" / BUILTIN[name_or_path])
    return name_or_path
