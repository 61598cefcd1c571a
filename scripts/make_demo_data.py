"""Builds the packaged demo datasets from the Austen corpus (run once; its outputs are committed).

    python scripts/make_demo_data.py        # needs vaderSentiment (pip install vaderSentiment)

- demo/sft.jsonl: 1,000 demonstrations of a cheerful continuation: an Austen sentence opening (prompt)
  and the novel's own continuation (completion), kept when VADER's compound score of the continuation
  is at least 0.6. Drawn from the pretraining split.
- demo/prompts.jsonl: 256 sentence openings from the held-out split of pretraining (never trained on),
  the evaluation prompts of the quickstart task.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from rlhfkit import assets
from rlhfkit.data.corpus import read_paragraphs, split_held_out
from rlhfkit.pretrain.train import PretrainConfig

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'_])")
OUT = Path(__file__).resolve().parents[1] / "src" / "rlhfkit" / "assets" / "demo"


def sentences(paragraphs: list[str]) -> list[str]:
    found = (s.strip() for p in paragraphs for s in SENTENCE_END.split(p))
    return [s for s in found if 12 <= len(s.split()) <= 40 and not s.isupper()]


def opening(sentence: str, rng: random.Random) -> tuple[str, str]:
    words = sentence.split()
    k = rng.randint(4, 7)
    return " ".join(words[:k]), " " + " ".join(words[k:])


def main() -> None:
    rng = random.Random(0)
    train, held_out = split_held_out(read_paragraphs(Path(assets.resolve("austen"))), PretrainConfig().held_out_every)
    vader = SentimentIntensityAnalyzer()
    demos = []
    candidates = sentences(train)
    rng.shuffle(candidates)
    for s in candidates:
        prompt, completion = opening(s, rng)
        if vader.polarity_scores(completion)["compound"] >= 0.6:
            demos.append({"prompt": prompt, "completion": completion})
        if len(demos) == 1000:
            break
    prompts = sentences(held_out)
    rng.shuffle(prompts)
    OUT.mkdir(parents=True, exist_ok=True)
    with (OUT / "sft.jsonl").open("w") as f:
        f.writelines(json.dumps(d) + "\n" for d in demos)
    with (OUT / "prompts.jsonl").open("w") as f:
        f.writelines(json.dumps({"prompt": opening(s, rng)[0]}) + "\n" for s in prompts[:256])
    print(f"{len(demos)} demonstrations, {min(256, len(prompts))} prompts -> {OUT}")


if __name__ == "__main__":
    main()
