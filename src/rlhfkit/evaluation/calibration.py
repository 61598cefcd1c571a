"""Calibration of a policy on a multiple-choice probe: expected calibration error and a reliability diagram.

The policy gives each of an item's K options a probability p_k; its answer is argmax_k p_k, its confidence
max_k p_k. Items are put in B equal-width bins of confidence; bin b holds n_b items with mean confidence
conf_b and accuracy acc_b (the share answered correctly), and

    ECE = Σ_b (n_b / N)·|acc_b - conf_b|

(Naeini et al. 2015; Guo et al. 2017, "On calibration of modern neural networks", arXiv:1706.04599, eq. 3;
the same estimator as the reward model's, `reward.evaluate.expected_calibration_error`). The reliability
diagram plots acc_b against conf_b: a calibrated model lies on the diagonal. The GPT-4 report (OpenAI 2023,
arXiv:2303.08774, figure 8) shows the pretrained model calibrated on such a probe and the RLHF model not.

Two ways to get the option probabilities, one `SCORERS` table:
- `continuation`: p_k ∝ P(option_k | question), the probability the policy gives the option's text after
  the question, normalised over the K options (how lm-evaluation-harness scores multiple choice); suits
  base models and cloze probes.
- `letter`: the options are listed as A., B., ... after the question and p_k is the policy's next-token
  probability of letter k after "Answer:", normalised over the letters; suits instruction-tuned models.

A probe is JSONL: {"question": str, "options": [str, ...], "answer": index of the right option}. The packaged
`cloze-probe` (`cloze_items`) asks which word comes next in passages of Austen held out of `tiny-austen`'s
pretraining: the true word and three distractors from the same frequency band of the corpus.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhfkit import assets
from rlhfkit.data.readers import DataError, read_rows
from rlhfkit.judging.judges import choice_distribution
from rlhfkit.models.loading import context_length
from rlhfkit.scores import expected_calibration_error

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class ProbeItem(BaseModel):
    """One multiple-choice question."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    question: str = Field(min_length=1)
    options: list[str] = Field(min_length=2, max_length=len(LETTERS))
    answer: int = Field(ge=0)

    @model_validator(mode="after")
    def _answer_is_an_option(self) -> ProbeItem:
        if self.answer >= len(self.options):
            raise ValueError(f"answer {self.answer} is not an option index (0..{len(self.options) - 1})")
        return self


def load_probe(path: str) -> list[ProbeItem]:
    """Probe items from JSONL/JSON/Parquet (a builtin name such as `cloze-probe` works); errors name the row."""
    items = []
    for row in read_rows(assets.resolve(path)):
        try:
            items.append(ProbeItem.model_validate(row.data))
        except ValidationError as error:
            problem = error.errors()[0]
            field = ".".join(str(p) for p in problem["loc"]) or "item"
            raise DataError(f"{row.location}: field {field!r}: {problem['msg']}") from None
    if not items:
        raise DataError(f"{path}: no probe items")
    return items


# ---------------------------------------------------------------------------------------------------------
# Calibration: pure functions of (confidence, correct).


@dataclass(frozen=True)
class Bin:
    """One bin of the reliability diagram: confidences in [lower, upper)."""

    lower: float
    upper: float
    count: int
    confidence: float  # mean confidence of the bin's items (the bin centre when empty)
    accuracy: float | None  # share answered correctly; None when empty


def reliability_bins(confidence: torch.Tensor, correct: torch.Tensor, bins: int = 10) -> list[Bin]:
    """The B equal-width bins of the module docstring; confidence, correct: (N,). The last bin includes 1."""
    which = (confidence * bins).long().clamp(0, bins - 1)  # (N,) bin of each item, as the ECE bins them
    out = []
    for b in range(bins):
        in_bin = which == b
        n = int(in_bin.sum())
        mean_confidence = confidence[in_bin].float().mean().item() if n else (b + 0.5) / bins
        accuracy = correct[in_bin].float().mean().item() if n else None
        out.append(Bin(b / bins, (b + 1) / bins, n, mean_confidence, accuracy))
    return out


@dataclass(frozen=True)
class Calibration:
    """ECE, accuracy and mean confidence of one policy on a probe, with its reliability bins."""

    ece: float
    accuracy: float
    confidence: float
    items: int
    bins: list[Bin]

    def to_json(self) -> dict:
        return asdict(self)


def calibration(probabilities: torch.Tensor, answers: torch.Tensor, bins: int = 10) -> Calibration:
    """From option probabilities (N, K) and the right options (N,): confidence = max_k p_k, correct = argmax."""
    confidence, chosen = probabilities.max(-1)
    correct = (chosen == answers).float()
    return Calibration(
        ece=expected_calibration_error(confidence, correct, bins).item(),
        accuracy=correct.mean().item(),
        confidence=confidence.mean().item(),
        items=len(answers),
        bins=reliability_bins(confidence, correct, bins),
    )


# ---------------------------------------------------------------------------------------------------------
# Option probabilities from a policy.


def continuation(question: str, option: str) -> str:
    """The text scored after the question: the option, after a space unless one is already there."""
    return option if question[-1:].isspace() or option[:1].isspace() else " " + option


@torch.no_grad()
def continuation_probabilities(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, items: list[ProbeItem], batch_size: int = 32
) -> torch.Tensor:
    """(N, K): softmax over each item's options of log P(option | question) = Σ_t log p(option token t | ...).

    The question and option are tokenized apart (so every option follows the same question tokens); a
    question too long for the context loses its oldest tokens. `batch_size` items at a time.
    """
    limit = context_length(model.config)
    out = []
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        options = [
            [tokenizer.encode(continuation(item.question, o), add_special_tokens=False) for o in item.options]
            for item in batch
        ]
        questions = []
        for item, ids in zip(batch, options, strict=True):
            question = tokenizer.encode(item.question, add_special_tokens=False)
            keep = len(question) if limit is None else limit - max(map(len, ids))
            questions.append(question[max(0, len(question) - keep) :])
        sums = option_logprob_sums(model, questions, options, tokenizer.pad_token_id)
        out += [scores.float().softmax(-1) for scores in sums]
    return _stack(out)


def option_logprob_sums(
    model: PreTrainedModel, questions: list[list[int]], options: list[list[list[int]]], pad_id: int
) -> list[torch.Tensor]:
    """Σ_t log p(option token t | question, earlier option tokens) for each option of each question.

    Each question goes through the model once; its key/value cache is then copied to each of its options,
    which are scored together in a second pass (a probe's options are a token or two, its questions dozens,
    so this does about 1/K of the work of scoring K full sequences).
    """
    device = model.device
    width = max(map(len, questions))
    q_ids = torch.tensor([[pad_id] * (width - len(q)) + q for q in questions], device=device)
    q_mask = torch.tensor([[0] * (width - len(q)) + [1] * len(q) for q in questions], device=device)
    first = model(
        input_ids=q_ids, attention_mask=q_mask, position_ids=(q_mask.cumsum(-1) - 1).clamp(min=0), use_cache=True
    )
    next_token = first.logits[:, -1].float().log_softmax(-1)  # (B, V): predicts each option's first token
    owner = torch.tensor([i for i, opts in enumerate(options) for _ in opts], device=device)
    flat = [o for opts in options for o in opts]
    cache = first.past_key_values
    cache.batch_select_indices(owner)  # one copy of its question's cache per option
    o_width = max(map(len, flat))
    o_ids = torch.tensor([o + [pad_id] * (o_width - len(o)) for o in flat], device=device)
    o_mask = torch.tensor([[1] * len(o) + [0] * (o_width - len(o)) for o in flat], device=device)
    positions = q_mask[owner].sum(-1, keepdim=True) + torch.arange(o_width, device=device)
    second = model(
        input_ids=o_ids,
        attention_mask=torch.cat([q_mask[owner], o_mask], 1),
        position_ids=positions,
        past_key_values=cache,
    )
    later = second.logits[:, :-1].float().log_softmax(-1).gather(-1, o_ids[:, 1:, None]).squeeze(-1)
    totals = next_token[owner, o_ids[:, 0]] + (later * o_mask[:, 1:]).sum(-1)
    return list(totals.cpu().split([len(opts) for opts in options]))


def letter_prompt(item: ProbeItem) -> str:
    """The question, its options as "A. ...", one per line, and "Answer:"."""
    options = "\n".join(f"{LETTERS[k]}. {option}" for k, option in enumerate(item.options))
    return f"{item.question}\n{options}\nAnswer:"


@torch.no_grad()
def letter_probabilities(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, items: list[ProbeItem], batch_size: int = 32
) -> torch.Tensor:
    """(N, K): the next-token probabilities of the letters after `letter_prompt`, "A" and " A" merged,
    normalised over the item's letters (`judging.judges.choice_distribution`)."""
    out = []
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        encoded = [tokenizer.encode(letter_prompt(item), add_special_tokens=False) for item in batch]
        width = max(map(len, encoded))
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in encoded])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in encoded])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding must not shift positions
        device = model.device
        logits = model(
            input_ids=input_ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device)
        ).logits[:, -1]
        logprobs = logits.float().log_softmax(-1).cpu()  # (B, V)
        for row, item in enumerate(batch):
            letters = [_letter_tokens(tokenizer, LETTERS[k]) for k in range(len(item.options))]
            merged = [torch.logsumexp(logprobs[row, ids], 0).item() for ids in letters]
            out.append(torch.tensor(choice_distribution(merged)[0]))
    return _stack(out)


def _letter_tokens(tokenizer: PreTrainedTokenizerBase, letter: str) -> list[int]:
    spellings = [tokenizer.encode(s, add_special_tokens=False) for s in (letter, " " + letter)]
    single = sorted({s[0] for s in spellings if len(s) == 1})
    if not single:
        raise DataError(f"the option letter {letter!r} is not a single token of this tokenizer: use continuation")
    return single


def _stack(rows: list[torch.Tensor]) -> torch.Tensor:
    """Rows of different K padded with probability 0 (an item with fewer options)."""
    width = max(len(r) for r in rows)
    return torch.stack([torch.nn.functional.pad(r, (0, width - len(r))) for r in rows])


Scorer = Callable[[PreTrainedModel, PreTrainedTokenizerBase, list[ProbeItem], int], torch.Tensor]
SCORERS: dict[str, Scorer] = {"continuation": continuation_probabilities, "letter": letter_probabilities}


def probe_calibration(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: list[ProbeItem],
    scoring: str = "continuation",
    bins: int = 10,
    batch_size: int = 32,
) -> Calibration:
    """The policy's calibration on the probe, its option probabilities from `SCORERS[scoring]`."""
    if scoring not in SCORERS:
        raise ValueError(f"unknown scoring {scoring!r}; expected one of: {', '.join(SCORERS)}")
    probabilities = SCORERS[scoring](model, tokenizer, items, batch_size)
    return calibration(probabilities, torch.tensor([item.answer for item in items]), bins)


# ---------------------------------------------------------------------------------------------------------
# The packaged cloze probe.


def cloze_items(
    paragraphs: list[str],
    count: int,
    seed: int = 0,
    options: int = 4,
    context_words: tuple[int, int] = (8, 40),
    band: tuple[int, int] = (50, 3000),
) -> list[dict]:
    """ "Which word comes next" items: up to `context_words[1]` words of a passage, then the true next word
    and `options - 1` distractors, all lowercase words of the frequency ranks `band` of these paragraphs
    (so frequency alone does not give the answer away); at least `context_words[0]` words of context."""
    counts = Counter(w for p in paragraphs for w in p.split() if w.isalpha() and w.islower())
    pool = [w for w, _ in counts.most_common()[band[0] : band[1]]]
    in_pool = set(pool)
    rng = random.Random(seed)
    places = [
        (i, k)
        for i, p in enumerate(paragraphs)
        for k, w in enumerate(p.split())
        if k >= context_words[0] and w in in_pool
    ]
    items = []
    for i, k in sorted(rng.sample(places, min(count, len(places)))):
        words = paragraphs[i].split()
        answer = words[k]
        choices = [answer, *rng.sample([w for w in pool if w != answer], options - 1)]
        rng.shuffle(choices)
        question = " ".join(words[max(0, k - context_words[1]) : k])
        items.append({"question": question, "options": choices, "answer": choices.index(answer)})
    return items


def write_cloze_probe(path: str | Path, count: int = 300, seed: int = 0) -> Path:
    """The `cloze-probe` asset: items from the paragraphs `rlhfkit pretrain` holds out of the Austen corpus
    (with its default `held_out_every`, as `tiny-austen` was trained), so no passage was trained on."""
    import json

    from rlhfkit.data.corpus import HELD_OUT_EVERY, read_paragraphs, split_held_out

    _, held_out = split_held_out(read_paragraphs(Path(assets.resolve("austen"))), HELD_OUT_EVERY)
    path = Path(path)
    path.write_text("".join(json.dumps(item) + "\n" for item in cloze_items(held_out, count, seed)))
    return path
