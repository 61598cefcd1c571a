"""Preference data as token sequences: pairs for the DPO family, single judged responses for KTO.

Any comparative feedback becomes pairs through the data layer's conversions (a ranking gives all its
pairs, ratings of one prompt's replies give pairs by score, an edit is preferred to the original; ties say
nothing about direction and are left out); thumbs up/down replies pair up where one prompt has both. KTO
trains on single responses labelled desirable or not: thumbs up/down records (stepwise ones by their
outcome), or both halves of every pair.

Each response is tokenized as prompt + response by the SFT tokenizer (plain text or chat template), with
the loss mask on the response only, so the sequence log-probability is log π(y|x).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal, cast, get_args

from transformers import PreTrainedTokenizerBase

from rlhfkit.data.convert import prompt_key, to_preferences
from rlhfkit.data.readers import DataError
from rlhfkit.data.records import PreferenceRecord, Record, SFTRecord, StepwiseRecord, Text, UnpairedRecord
from rlhfkit.data.tokenize import sft_sequence
from rlhfkit.training.batching import TokenSequence, cut_prompts_note, fit_to_length

# record kinds DPO and KTO read; unpaired and stepwise give pairs (thumbs up vs down on one prompt) to paired losses
Kind = Literal["preference", "ranking", "rating", "edit", "scored", "unpaired", "stepwise"]
KINDS: tuple[str, ...] = get_args(Kind)
JUDGED_KINDS = ("unpaired", "stepwise")  # single replies judged good or bad, as KTO trains on


@dataclass(frozen=True)
class Response:
    """prompt + response as tokens (loss mask on the response), whether it is the preferred one, and
    log π_ref(y|x) once the reference pass has filled it in."""

    tokens: TokenSequence
    preferred: bool
    ref_logp: float = math.nan


@dataclass(frozen=True)
class Example:
    """One unit of a batch: a pair (chosen, rejected) of responses to one prompt, or (KTO) one judged response.

    `mismatched` (KTO only) is this prompt followed by another example's response: the policy's log-ratio
    on such pairs estimates KL(π_θ‖π_ref), KTO's reference point (Ethayarajh et al. 2024, section 4.1).
    """

    responses: tuple[Response, ...]
    mismatched: Response | None = None

    @property
    def length(self) -> int:
        """Positions the training forward computes for this example when its rows are padded to its longest
        response: the key of length-grouped batches (chosen and rejected share one padded batch)."""
        return len(self.responses) * max(len(r.tokens.input_ids) for r in self.responses)

    @property
    def all_responses(self) -> tuple[Response, ...]:
        """Every response whose reference log-probability training needs."""
        return self.responses if self.mismatched is None else (*self.responses, self.mismatched)


def tokenize_response(
    tokenizer: PreTrainedTokenizerBase, prompt: Text, response: Text, max_length: int
) -> TokenSequence:
    """prompt + response, fitted to `max_length` (`fit_to_length`), with the loss mask on the response only.

    Text: the response plus EOS. Chat: the response's assistant turns; assistant turns inside the prompt
    (earlier turns of the conversation) are context, so their trained runs are cleared before fitting.
    """
    seq = sft_sequence(tokenizer, SFTRecord(prompt=prompt, completion=response))
    context_turns = 0 if isinstance(prompt, str) else sum(m.role == "assistant" for m in prompt)
    return fit_to_length(TokenSequence(seq.input_ids, _clear_first_runs(seq.loss_mask, context_turns)), max_length)


def _clear_first_runs(mask: list[int], runs: int) -> list[int]:
    """The mask with its first `runs` runs of 1s set to 0 (each assistant turn is one run)."""
    out, seen = list(mask), 0
    for t, m in enumerate(mask):
        if seen == runs:
            break
        if m:
            out[t] = 0
            if t + 1 == len(mask) or not mask[t + 1]:
                seen += 1
    return out


def judged_records(records: Sequence[Record]) -> list[UnpairedRecord]:
    """Single judged replies: thumbs up/down records as they are, stepwise ones by their outcome."""
    return [r.outcome() if isinstance(r, StepwiseRecord) else cast(UnpairedRecord, r) for r in records]


def build_examples(
    records: Sequence[Record], kind: str, unpaired: bool, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> tuple[list[Example], list[str]]:
    """Examples for a paired loss (`unpaired` False) or for KTO, and notes on what was left out."""
    notes: list[str] = []
    if unpaired and kind in JUDGED_KINDS:
        judged = [(r.prompt, r.completion, r.label) for r in judged_records(records)]
        pairs: list[PreferenceRecord] = []
    else:
        pairs = to_preferences(records, kind)
        ties = sum(p.tie for p in pairs)
        if ties:
            notes.append(f"{ties} tied pairs left out (a tie says nothing about which response to prefer)")
        if kind in JUDGED_KINDS:
            notes.append(
                f"{len(pairs)} pairs of a thumbs-up and a thumbs-down reply to one prompt from {len(records)} "
                "judged replies (loss=kto trains on every one)"
            )
        pairs = [p for p in pairs if not p.tie]
        judged = [
            (p.prompt, response, good) for p in pairs for response, good in ((p.chosen, True), (p.rejected, False))
        ]

    def response(prompt: Text, text: Text, preferred: bool) -> Response:
        return Response(tokenize_response(tokenizer, prompt, text, max_length), preferred)

    if unpaired:
        others = _other_prompt(judged)
        examples = [
            Example((response(prompt, text, good),), response(prompt, judged[j][1], good))
            for (prompt, text, good), j in zip(judged, others, strict=True)
        ]
    else:
        examples = [Example((response(p.prompt, p.chosen, True), response(p.prompt, p.rejected, False))) for p in pairs]
    notes += cut_prompts_note([r.tokens for e in examples for r in e.all_responses], max_length, "responses")
    return examples, notes


def _other_prompt(judged: list[tuple[Text, Text, bool]]) -> list[int]:
    """For each judged response, the index of the next one (cyclically) that answers a different prompt."""
    keys = [prompt_key(prompt) for prompt, _, _ in judged]
    if len(set(keys)) < 2:
        raise DataError("KTO estimates its KL reference point from responses to other prompts: needs >= 2 prompts")
    out = []
    for i, key in enumerate(keys):
        j = (i + 1) % len(keys)
        while keys[j] == key:
            j = (j + 1) % len(keys)
        out.append(j)
    return out


def with_reference(examples: list[Example], logps: Sequence[float]) -> list[Example]:
    """The examples with `ref_logp` filled in, from values in `all_responses` order."""
    values = iter(logps)

    def filled(r: Response) -> Response:
        return replace(r, ref_logp=float(next(values)))

    out = [
        Example(tuple(filled(r) for r in e.responses), None if e.mismatched is None else filled(e.mismatched))
        for e in examples
    ]
    if next(values, None) is not None:
        raise ValueError("more reference log-probabilities than responses")
    return out
