"""Verifiable rewards: a checker scores a reply by its final answer against a reference, not by its style.

Sources (names for `rewards: [{source: ...}]`, beside `vader`, `length` and reward models):

- `correct`: 1 if the reply's final answer equals the prompt's reference `answer`, else 0;
- `format`: 1 if the reply's last line states the answer in the asked-for form `Answer: N`, else 0;
- `contains`: 1 if the reply uses the reference answer as a whole word (any case), else 0: a keyword task;
- any `python:module:function` taking (prompt, completion, answer) -> float is a checker too
  (a function of (prompt, completion) is a plain reward function, `scores.gold_function`).

The final answer is read by our own exact parser rather than `math-verify` (PyPI): the tasks here have
whole-number answers, which an exact parser compares exactly and fast, with no dependency on SymPy and
ANTLR and no signal-based timeouts (which math-verify uses and which fail outside the main thread).
math-verify earns its weight on LaTeX expressions, fractions and sets, which these tasks do not have;
a `python:` checker can call it for tasks that do.

A reply scores 0, never raises, when it is empty, states no number, or states one over `MAX_DIGITS`
digits (an overlong answer: Python refuses to parse integers past 4300 digits).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

from rlhfkit.data.records import Text

ANSWER_FORM = "Give the final answer as a whole number on the last line, in the form 'Answer: N'."
MAX_DIGITS = 30

_NUMBER = r"-?\d[\d,]*(?:\.\d+)?"
_STATED = re.compile(rf"answer\W{{0,4}}[:=]\W{{0,4}}?\s*\$?\s*({_NUMBER})", re.IGNORECASE)
_BOXED = re.compile(rf"\\boxed\{{\s*({_NUMBER})\s*\}}")
_ANY_NUMBER = re.compile(_NUMBER)
_ANSWER_LINE = re.compile(rf"^[\s*_#>]*answer[\s*_]*[:=][\s*_$]*({_NUMBER})[\s*_.]*$", re.IGNORECASE)


def whole_number(text: str) -> int | None:
    """`1,234`, `-7`, `12.0` as an int; None for fractions and for more than MAX_DIGITS digits."""
    digits = text.replace(",", "")
    if sum(c.isdigit() for c in digits) > MAX_DIGITS:
        return None
    try:
        value = Decimal(digits)
    except InvalidOperation:
        return None
    return int(value) if value == value.to_integral_value() else None


def final_answer(completion: str) -> int | None:
    """The reply's final answer: the last `Answer: N` it states, else the last `\\boxed{N}`, else its last
    number (small models often state the result without the form; `format` rewards the form itself)."""
    for pattern in (_STATED, _BOXED, _ANY_NUMBER):
        found = pattern.findall(completion)
        if found:
            return whole_number(found[-1])
    return None


def reference_answer(answer: str) -> int:
    """The reference as an int: a number, or GSM8K's worked solution ending in `#### N`."""
    value = whole_number(answer.rpartition("####")[2].strip())
    if value is None:
        raise ValueError(f"reference answer {answer!r} is not a whole number")
    return value


def correct(prompt: Text, completion: str, answer: str) -> float:
    """1.0 if the reply's final answer equals the reference answer, else 0.0."""
    stated = final_answer(completion)
    return float(stated is not None and stated == reference_answer(answer))


def answer_format(prompt: Text, completion: str) -> float:
    """1.0 if the reply's last non-empty line is `Answer: N` (markdown emphasis allowed), else 0.0."""
    lines = [line for line in completion.splitlines() if line.strip()]
    return float(bool(lines) and _ANSWER_LINE.match(lines[-1]) is not None and final_answer(lines[-1]) is not None)


def contains(prompt: Text, completion: str, answer: str) -> float:
    """1.0 if the reply has the reference answer as a whole word or phrase (case ignored), else 0.0."""
    return float(re.search(rf"\b{re.escape(answer.strip())}\b", completion, re.IGNORECASE) is not None)


CHECKS: dict[str, Callable[..., float]] = {"correct": correct, "format": answer_format, "contains": contains}
