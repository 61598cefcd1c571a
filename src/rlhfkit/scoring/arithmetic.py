"""A seeded generator of arithmetic word problems with exact integer answers: a verifiable task for RL.

Each problem is one or two operations (+, -, ×) on small whole numbers, told as a story ("Anna has 12
apples and buys 7 more..."), with the reply's required form stated at the end (`Answer: N` on the last
line, `verifiable.ANSWER_FORM`). The numbers are chosen so that the offline default `smollm2-135m-instruct`
solves some but not all of them at its default sampling settings: a signal for RL to improve on.

Train and held-out splits are disjoint by construction: a problem belongs to the held-out split when a
stable hash of its question falls in one bucket of `HELD_OUT_BUCKETS`, so no question of one split can
appear in the other, whatever the seed or the sizes asked for.
"""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlhfkit.scoring.verifiable import ANSWER_FORM

Split = Literal["train", "heldout"]

NAMES = ("Anna", "Ben", "Carla", "David", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jon", "Kemi", "Liam")
ITEMS = ("apples", "books", "pencils", "stickers", "marbles", "cookies", "cards", "shells", "stamps", "coins")
HELD_OUT_BUCKETS = 5  # one question in five is held out
MAX_OPERAND = 10  # sums and differences of numbers up to 10, products up to 5 × 5: see the module docstring


@dataclass(frozen=True)
class Problem:
    """A word problem, its reference answer, and the expression that gives it (for checking the generator)."""

    question: str
    answer: int
    expression: str

    @property
    def prompt(self) -> str:
        return f"{self.question} {ANSWER_FORM}"


def split_of(question: str) -> Split:
    """The split a question belongs to, by a stable hash of its text (crc32, the same in every process)."""
    return "heldout" if zlib.crc32(question.encode()) % HELD_OUT_BUCKETS == 0 else "train"


def first_step(rng: random.Random, name: str, item: str) -> tuple[str, int, str]:
    """(sentence, value, expression) of the first operation."""
    op = rng.choice("+-*")
    if op == "*":
        bags, each = rng.randint(2, 5), rng.randint(2, 5)
        return f"{name} has {bags} boxes with {each} {item} in each box.", bags * each, f"{bags} * {each}"
    a, b = rng.randint(2, MAX_OPERAND), rng.randint(2, MAX_OPERAND)
    if op == "+":
        return f"{name} has {a} {item} and gets {b} more.", a + b, f"{a} + {b}"
    a, b = max(a, b), min(a, b)
    return f"{name} has {a} {item} and gives {b} away.", a - b, f"{a} - {b}"


def second_step(rng: random.Random, item: str, value: int, expression: str) -> tuple[str, int, str]:
    """(sentence, value, expression) after a second + or - on the running total (never below 0)."""
    if rng.random() < 0.5 or value < 2:
        b = rng.randint(2, MAX_OPERAND)
        return f"Then a friend gives {b} more {item}.", value + b, f"({expression}) + {b}"
    b = rng.randint(1, min(value, MAX_OPERAND))
    return f"Then {b} {item} get lost.", value - b, f"({expression}) - {b}"


def make_problem(rng: random.Random, steps: int = 1) -> Problem:
    """One problem of one operation, or two (`steps` 2: harder)."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    sentences = []
    sentence, value, expression = first_step(rng, name, item)
    sentences.append(sentence)
    if steps == 2:
        sentence, value, expression = second_step(rng, item, value, expression)
        sentences.append(sentence)
    question = " ".join([*sentences, f"How many {item} does {name} have now?"])
    return Problem(question, value, expression)


def problems(seed: int, split: Split, steps: int = 1) -> Iterator[Problem]:
    """An endless seeded stream of distinct problems of one split."""
    rng, seen = random.Random(seed), set()
    while True:
        problem = make_problem(rng, steps)
        if split_of(problem.question) == split and problem.question not in seen:
            seen.add(problem.question)
            yield problem


def take(seed: int, split: Split, count: int, steps: int = 1) -> list[Problem]:
    """The first `count` problems of a split's stream."""
    stream = problems(seed, split, steps)
    return [next(stream) for _ in range(count)]


def prompt_record(problem: Problem) -> dict[str, object]:
    """A prompt record (a one-turn chat, for instruct models) with its reference `answer`."""
    return {"prompt": [{"role": "user", "content": problem.prompt}], "answer": str(problem.answer)}


def write_task(out_dir: Path, train: int, heldout: int, seed: int, steps: int = 1) -> list[Path]:
    """`train.jsonl` and `heldout.jsonl` prompt records in `out_dir`; their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, count in (("train", train), ("heldout", heldout)):
        path = out_dir / f"{split}.jsonl"
        with path.open("w") as f:
            for problem in take(seed, split, count, steps):  # type: ignore[arg-type]  # the two literals
                f.write(json.dumps(prompt_record(problem)) + "\n")
        paths.append(path)
    return paths
