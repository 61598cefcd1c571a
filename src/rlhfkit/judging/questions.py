"""The multiple-choice comparison a judge is asked (Constitutional AI, Bai et al. 2022, arXiv:2212.08073,
section 4.1), and the orders it is asked in.

LLM judges favour a position (often the first option), so every question is asked in every order: a pair
both ways, K replies in K cyclic rotations (each reply once in each position), and the probabilities are
averaged (Lee et al. 2023, arXiv:2309.00267, section 2.1.1).
"""

from __future__ import annotations

from collections.abc import Sequence

from rlhfkit.data.records import Text
from rlhfkit.judging.constitution import Principle
from rlhfkit.judging.judges import Conversation

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def rotations(k: int) -> list[list[int]]:
    """The K cyclic orders of K replies: order r shows reply (r + j) mod K at position j.

    Every reply appears once in every position (a Latin square), so a judge's preference for a position
    adds the same amount to every reply and cancels in the average. For K = 2: [[0, 1], [1, 0]].
    """
    return [[(r + j) % k for j in range(k)] for r in range(k)]


def same_position(position_probs: Sequence[Sequence[float]]) -> bool:
    """Whether the judge's preferred position (its most likely option) is the same in every order asked.

    With the order swapped, a judge that reads the replies moves its answer with them; one that stays on
    "A" follows the position. Lee et al. (2023, arXiv:2309.00267) measure position bias as how often the
    same position is preferred when the order is swapped. One order alone cannot tell: False.
    """
    preferred = {max(range(len(p)), key=p.__getitem__) for p in position_probs}
    return len(position_probs) > 1 and len(preferred) == 1


def average_over_orders(orders: Sequence[Sequence[int]], position_probs: Sequence[Sequence[float]]) -> list[float]:
    """P(reply i is best), the mean over orders of the probability given to the position showing i.

    orders[o][j] is the reply shown at position j in order o; position_probs[o][j] the judge's
    probability for position j. For a pair judged both ways this is Lee et al.'s (2023, arXiv:2309.00267,
    section 2.1.1) average: P(y_1 ≻ y_2) = (p_AB + (1 - p_BA)) / 2, where p_AB is P(first shown is better)
    with y_1 first and p_BA the same with y_2 first.
    """
    k = len(orders[0])
    totals = [0.0] * k
    for order, probs in zip(orders, position_probs, strict=True):
        for position, reply in enumerate(order):
            totals[reply] += probs[position]
    return [total / len(orders) for total in totals]


def text_of(value: Text) -> str:
    """Plain text of a reply: itself, or its messages' contents."""
    return value if isinstance(value, str) else "\n".join(m.content for m in value)


def dialogue(prompt: Text) -> str:
    """The prompt as the "Human: ... / Assistant: ..." dialogue Constitutional AI's prompts show."""
    if isinstance(prompt, str):
        return f"Human: {prompt}"
    names = {"user": "Human", "assistant": "Assistant", "system": "System", "tool": "Tool"}
    return "\n\n".join(f"{names[m.role]}: {m.content}" for m in prompt)


def comparison_question(prompt: Text, replies: Sequence[str], principle: Principle) -> Conversation:
    """One user message: the dialogue, the principle's question, the options (A), (B), ... (CAI section 4.1)."""
    labels = LETTERS[: len(replies)]
    options = "\n".join(f"({label}) {reply}" for label, reply in zip(labels, replies, strict=True))
    which = " or ".join([", ".join(labels[:-1]), labels[-1]])
    content = (
        "Consider the following conversation between a human and an AI assistant.\n\n"
        f"{dialogue(prompt)}\n\n{principle.comparison}\n\nOptions:\n{options}\n\n"
        f"Answer with the letter of the best option only: {which}."
    )
    return [{"role": "user", "content": content}]
