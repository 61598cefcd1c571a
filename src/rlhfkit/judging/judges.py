"""Judges: language models that answer multiple-choice questions about replies, and write text.

One interface, `Judge`, with two back ends: a local Hugging Face causal LM (`LocalJudge`, by default the
offline `smollm2-135m-instruct`) and any OpenAI-compatible chat endpoint (`OpenAIJudge`: vLLM, llama.cpp
server, Ollama, a hosted API). `make_judge` picks one from `JudgeSettings.backend`.

A choice among labels "A", "B", ... becomes a probability distribution the way RLAIF does it (Lee et al.
2023, arXiv:2309.00267, section 2.1): the log-probabilities of the choice tokens at the answer position,
softmaxed over the choices. Where a back end gives no log-probabilities, the answer text is parsed and
the chosen label gets probability 1. An answer that names no single label, or that puts too little
probability on the choice tokens to be an answer at all, is *unparsed*: it carries an error, never a
distribution, so it can never be counted as a label.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import httpx
import torch
from pydantic import Field
from rich.console import Console

from rlhfkit.config import Config, ConfigError
from rlhfkit.generation.sampling import SamplingSettings, render_prompt, sample

console = Console(stderr=True)

Conversation = list[dict[str, str]]  # chat messages: [{"role": "user", "content": "..."}, ...]
Method = Literal["logprobs", "parsed", "unparsed"]
T = TypeVar("T")
R = TypeVar("R")


class JudgeUnavailable(ConfigError):
    """The judge could not be asked at all (an endpoint unreachable after every retry, a request refused)."""


class JudgeSettings(Config):
    """Which model judges, and how it is reached."""

    backend: Literal["local", "openai"] = Field(
        "local", description="local: a Hugging Face causal LM here; openai: an OpenAI-compatible chat endpoint"
    )
    model: str = Field(
        "smollm2-135m-instruct", description="local: default name, path or hub id; openai: the model name to send"
    )
    url: str | None = Field(None, description="openai: base URL of the API, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str | None = Field(None, description="openai: environment variable holding the API key (none sent)")
    timeout: float = Field(60.0, gt=0, description="openai: seconds to wait for one answer")
    retries: int = Field(3, ge=0, description="openai: retries after a timeout, a connection error, 429 or 5xx")
    backoff: float = Field(1.0, ge=0, description="openai: seconds before the first retry, doubled for each next one")
    concurrency: int = Field(8, ge=1, description="openai: requests in flight at once")
    top_logprobs: int = Field(20, ge=0, le=20, description="openai: log-probs asked per token (0: parse the text)")
    answer_tokens: int = Field(8, ge=1, description="openai: most tokens of an answer to a choice question")
    answer_prefix: str = Field(
        "The answer is: (", description="local: text the answer starts with; the next token is the choice (CAI §4.1)"
    )
    min_choice_mass: float = Field(
        0.5, ge=0, le=1, description="least next-token probability on the choice tokens; less is unparsed"
    )
    batch_size: int = Field(8, ge=1, description="local: conversations per forward pass")
    sampling: SamplingSettings = Field(
        default_factory=lambda: SamplingSettings(max_new_tokens=96, temperature=0.7),
        description="how text is sampled (critiques, revisions)",
    )


@dataclass(frozen=True)
class Choice:
    """A judge's answer to one multiple-choice question."""

    probabilities: tuple[float, ...] | None  # P(label i) for each label; None when unparsed
    method: Method
    answer: str  # what the judge said (a local judge: its most likely label)
    mass: float | None = None  # next-token probability on all choice tokens (log-prob answers)
    error: str | None = None  # why the answer is unparsed


@dataclass(frozen=True)
class Completion:
    """A judge's free-text answer, or the reason there is none."""

    text: str | None
    error: str | None = None


class Judge(Protocol):
    """What every back end offers: choices with probabilities, and text."""

    name: str

    def choose(self, conversations: Sequence[Conversation], labels: Sequence[str]) -> list[Choice]:
        """For each conversation (ending in a question), the judge's distribution over `labels`."""
        ...

    def complete(self, conversations: Sequence[Conversation]) -> list[Completion]:
        """For each conversation, the judge's next assistant message."""
        ...


# ---------------------------------------------------------------------------------------------------------
# From log-probabilities or answer text to a distribution over the choices: pure functions.


def choice_distribution(label_logprobs: Sequence[float]) -> tuple[tuple[float, ...], float]:
    """(softmax over the choices, total probability on them) from each choice token's log-probability.

    P(label i) = exp(l_i) / Σ_j exp(l_j) (Lee et al. 2023, arXiv:2309.00267, section 2.1); the mass
    Σ_j exp(l_j) says how much of the judge's next-token probability went to answering at all.
    A choice that is absent (log-prob -inf) gets probability 0; all absent gives mass 0 and uniform.
    """
    top = max(label_logprobs)
    if top == -math.inf:
        return tuple(1 / len(label_logprobs) for _ in label_logprobs), 0.0
    weights = [math.exp(lp - top) for lp in label_logprobs]
    total = sum(weights)
    return tuple(w / total for w in weights), math.exp(top) * total


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values, default=-math.inf)
    return top if top == -math.inf else top + math.log(sum(math.exp(v - top) for v in values))


def clean_token(token: str) -> str:
    """A choice token with spacing and markup around the label removed: ' A', '(A', '**A' -> 'A'."""
    return token.strip().strip("()[]*.:\"'")


def label_logprobs(top_logprobs: Sequence[tuple[str, float]], labels: Sequence[str]) -> list[float]:
    """Each label's log-prob among a position's top tokens, spellings merged ('A' and ' A': log-sum-exp).

    A label not among the top tokens is taken as -inf: its probability is below the smallest one listed.
    """
    return [_logsumexp([lp for token, lp in top_logprobs if clean_token(token) == label]) for label in labels]


def parse_choice(text: str, labels: Sequence[str]) -> int | None:
    """Index of the label a free-text answer names, or None when it names none or several.

    In order: the whole answer is a label ("B", "(B)", "**B**."); exactly one label stands alone anywhere
    ("Response B"); exactly one label follows "answer", "option", "response" or "choice" ("The answer is
    (B), not A"). Labels are case-sensitive ("a" is an article, not option A).
    """
    alternatives = "|".join(re.escape(label) for label in labels)
    stripped = text.strip().strip("()[]*.:\"' \n")
    if stripped in labels:
        return list(labels).index(stripped)
    alone = set(re.findall(rf"(?<![A-Za-z0-9])({alternatives})(?![A-Za-z0-9])", text))
    if len(alone) == 1:
        return list(labels).index(alone.pop())
    stated = set(
        re.findall(
            rf"(?i:answer|option|response|choice)\s*(?i:is)?\s*:?\s*[(\[*\"']*\s*({alternatives})(?![A-Za-z0-9])", text
        )
    )
    if len(stated) == 1:
        return list(labels).index(stated.pop())
    return None


def choice_from_logprobs(
    label_lps: Sequence[float], labels: Sequence[str], min_mass: float, answer: str | None = None
) -> Choice:
    """A log-prob answer, unparsed when the choice tokens hold less than `min_mass` of the probability."""
    probabilities, mass = choice_distribution(label_lps)
    said = answer if answer is not None else labels[max(range(len(labels)), key=probabilities.__getitem__)]
    if mass < min_mass:
        return Choice(
            None,
            "unparsed",
            said,
            mass,
            f"the choice tokens {'/'.join(labels)} hold {mass:.2%} of the next-token probability, "
            f"below min_choice_mass {min_mass:.0%}: the judge is not answering the question",
        )
    return Choice(probabilities, "logprobs", said, mass)


def read_chat_choice(response: Any, labels: Sequence[str], min_mass: float) -> Choice:
    """A Choice from an OpenAI chat-completion response (as parsed JSON).

    The answer text must name one label (`parse_choice`). Where the response carries log-probs, the
    distribution comes from the position of the first token that spells that label, over its
    `top_logprobs`; otherwise the named label gets probability 1.
    """
    try:
        choice = response["choices"][0]
        text = choice["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        preview = repr(response)[:300]
        return Choice(None, "unparsed", preview, error="not a chat completion (no choices[0].message.content)")
    index = parse_choice(text, labels)
    if index is None:
        return Choice(None, "unparsed", text, error=f"the answer names none, or more than one, of {', '.join(labels)}")
    positions = (choice.get("logprobs") or {}).get("content") or []
    for position in positions:
        if clean_token(position.get("token", "")) == labels[index]:
            top = [(t["token"], t["logprob"]) for t in position.get("top_logprobs") or []]
            top = top or [(position["token"], position["logprob"])]
            return choice_from_logprobs(label_logprobs(top, labels), labels, min_mass, answer=text)
    return Choice(tuple(float(i == index) for i in range(len(labels))), "parsed", text)


# ---------------------------------------------------------------------------------------------------------
# A local Hugging Face causal LM.


class LocalJudge:
    """A causal LM on this machine: choices from its next-token log-probs after `answer_prefix`.

    The question goes through the model's chat template, the assistant turn starts with `answer_prefix`
    ("The answer is: (", the answer format of CAI section 4.1), and the next token's log-probs of the
    labels (spelled "A" or " A") give the distribution. Conversations longer than the model's context
    are unparsed (or get no completion), never truncated into a different question.
    """

    def __init__(self, settings: JudgeSettings) -> None:
        from rlhfkit.models.loading import context_length, load_model, load_tokenizer

        self.name = settings.model
        self.settings = settings
        self.tokenizer = load_tokenizer(settings.model, padding_side="left")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = load_model(settings.model, self.tokenizer).to(device).eval()  # type: ignore[arg-type]  # transformers types `.to` as unbound
        self.context = context_length(self.model.config)

    def _render(self, conversation: Conversation) -> str:
        try:
            return render_prompt(self.tokenizer, conversation)
        except ValueError as error:  # transformers: no chat template
            raise ConfigError(f"judge model {self.name}: cannot render a chat conversation: {error}") from None

    def label_tokens(self, labels: Sequence[str]) -> list[list[int]]:
        """Token ids spelling each label alone after the prefix: 'A' and ' A' where each is one token."""
        ids = []
        for label in labels:
            spellings = [self.tokenizer.encode(s, add_special_tokens=False) for s in (label, " " + label)]
            single = sorted({s[0] for s in spellings if len(s) == 1})
            if not single:
                raise ConfigError(f"judge model {self.name}: the label {label!r} is not a single token")
            ids.append(single)
        return ids

    def _too_long(self, length: int) -> str | None:
        if self.context is not None and length > self.context:
            return f"{length} tokens, more than the judge's context of {self.context}"
        return None

    @torch.no_grad()
    def choose(self, conversations: Sequence[Conversation], labels: Sequence[str]) -> list[Choice]:
        tokens = self.label_tokens(labels)
        texts = [self._render(c) + self.settings.answer_prefix for c in conversations]
        encoded = [self.tokenizer.encode(t, add_special_tokens=False) for t in texts]
        choices: list[Choice | None] = [None] * len(texts)
        fits = []
        for i, ids in enumerate(encoded):
            problem = self._too_long(len(ids))
            if problem:
                choices[i] = Choice(None, "unparsed", "", error=f"the question has {problem}")
            else:
                fits.append(i)
        for start in range(0, len(fits), self.settings.batch_size):
            batch = fits[start : start + self.settings.batch_size]
            logprobs = self._next_token_logprobs([encoded[i] for i in batch])  # (B, V)
            for row, i in enumerate(batch):
                label_lps = [torch.logsumexp(logprobs[row, ids], 0).item() for ids in tokens]
                choices[i] = choice_from_logprobs(label_lps, labels, self.settings.min_choice_mass)
        return [c for c in choices if c is not None]

    def _next_token_logprobs(self, rows: list[list[int]]) -> torch.Tensor:
        """log p(next token) after each row: (B, V). Rows are left-padded; positions count real tokens only."""
        width = max(map(len, rows))
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding must not shift absolute positions
        device = self.model.device
        logits = self.model(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            use_cache=False,
            logits_to_keep=1,
        ).logits[:, -1]  # (B, V)
        return logits.float().log_softmax(-1).cpu()

    def complete(self, conversations: Sequence[Conversation]) -> list[Completion]:
        new = self.settings.sampling.max_new_tokens
        done: list[Completion | None] = [None] * len(conversations)
        fits = []
        for i, conversation in enumerate(conversations):
            length = len(self.tokenizer.encode(self._render(conversation), add_special_tokens=False))
            problem = self._too_long(length + new)
            if problem:
                done[i] = Completion(None, f"the conversation and {new} new tokens need {problem}")
            else:
                fits.append(i)
        for start in range(0, len(fits), self.settings.batch_size):
            batch = fits[start : start + self.settings.batch_size]
            texts = sample(self.model, self.tokenizer, [conversations[i] for i in batch], self.settings.sampling).texts
            for i, text in zip(batch, texts, strict=True):
                done[i] = Completion(text.strip()) if text.strip() else Completion(None, "the judge wrote nothing")
        return [c for c in done if c is not None]


# ---------------------------------------------------------------------------------------------------------
# An OpenAI-compatible chat endpoint.

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}  # worth asking again: overload, timeouts, restarts


def backoff_delay(attempt: int, base: float, retry_after: str | None = None, cap: float = 60.0) -> float:
    """Seconds before retry number `attempt` + 1: base·2^attempt (exponential backoff), at most `cap`;
    a server's Retry-After (in seconds) wins when it is given."""
    if retry_after is not None:
        try:
            return min(cap, max(0.0, float(retry_after)))
        except ValueError:
            pass  # an HTTP date: fall back to our own schedule
    return min(cap, base * 2**attempt)


class OpenAIJudge:
    """A model behind an OpenAI-compatible `/chat/completions` endpoint.

    Each request has a timeout; timeouts, connection errors, 429 and 5xx are retried with exponential
    backoff; at most `concurrency` requests are in flight. When every attempt fails, `JudgeUnavailable`
    names the URL and the last error, and the remaining requests are cancelled. Other HTTP errors (400:
    the server refuses the request, 401: a key is missing) are not retried.
    """

    def __init__(self, settings: JudgeSettings, transport: httpx.BaseTransport | None = None) -> None:
        if not settings.url:
            raise ConfigError("judge.url is not set: give the base URL of an OpenAI-compatible API (…/v1)")
        self.name = settings.model
        self.settings = settings
        self.url = settings.url.rstrip("/") + "/chat/completions"
        headers = {}
        if settings.api_key_env:
            key = os.environ.get(settings.api_key_env)
            if not key:
                raise ConfigError(f"judge.api_key_env: the environment variable {settings.api_key_env} is not set")
            headers["Authorization"] = f"Bearer {key}"
        self.client = httpx.Client(timeout=settings.timeout, headers=headers, transport=transport)
        self._stop = threading.Event()  # set when one request gave up: the others stop retrying

    def post(self, body: dict[str, Any]) -> Any:
        """One chat completion (the parsed JSON), retried as the class docstring says."""
        last = ""
        attempts = self.settings.retries + 1
        for attempt in range(attempts):
            retry_after = None
            try:
                response = self.client.post(self.url, json=body)
            except httpx.TransportError as error:  # timeouts, refused or reset connections, DNS
                last = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            else:
                if response.status_code == 200:
                    try:
                        return response.json()
                    except ValueError:
                        return {"error": f"not JSON: {response.text[:200]}"}  # read as unparsed
                last = f"HTTP {response.status_code}: {response.text[:300]}"
                if response.status_code not in RETRY_STATUS:
                    raise JudgeUnavailable(f"judge endpoint {self.url} refused the request: {last}")
                retry_after = response.headers.get("retry-after")
            if attempt + 1 < attempts and self._stop.wait(backoff_delay(attempt, self.settings.backoff, retry_after)):
                break  # another request gave up already
        raise JudgeUnavailable(f"judge endpoint {self.url} did not answer after {attempts} attempt(s): {last}")

    def _map(self, function: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """function over items with at most `concurrency` in flight; the first error cancels the rest."""
        self._stop.clear()
        with ThreadPoolExecutor(max_workers=self.settings.concurrency) as pool:
            futures: list[Future[R]] = [pool.submit(function, item) for item in items]
            wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in futures if f.done() and not f.cancelled() and f.exception()), None)
            if failed is not None:
                self._stop.set()  # requests waiting to retry give up; queued ones never start
                pool.shutdown(wait=True, cancel_futures=True)
                raise failed.exception()  # type: ignore[misc]
            return [future.result() for future in futures]

    def choose(self, conversations: Sequence[Conversation], labels: Sequence[str]) -> list[Choice]:
        extra: dict[str, Any] = {}
        if self.settings.top_logprobs:
            extra = {"logprobs": True, "top_logprobs": self.settings.top_logprobs}

        def ask(conversation: Conversation) -> Choice:
            body = {
                "model": self.settings.model,
                "messages": conversation,
                "max_tokens": self.settings.answer_tokens,
                "temperature": 0.0,
                **extra,
            }
            return read_chat_choice(self.post(body), labels, self.settings.min_choice_mass)

        return self._map(ask, conversations)

    def complete(self, conversations: Sequence[Conversation]) -> list[Completion]:
        sampling = self.settings.sampling

        def ask(conversation: Conversation) -> Completion:
            body = {
                "model": self.settings.model,
                "messages": conversation,
                "max_tokens": sampling.max_new_tokens,
                "temperature": sampling.temperature if sampling.do_sample else 0.0,
                "top_p": sampling.top_p,
            }
            response = self.post(body)
            try:
                text = (response["choices"][0]["message"]["content"] or "").strip()
            except (KeyError, IndexError, TypeError):
                return Completion(None, f"not a chat completion: {repr(response)[:200]}")
            return Completion(text) if text else Completion(None, "the judge wrote nothing")

        return self._map(ask, conversations)


BACKENDS: dict[str, Callable[[JudgeSettings], Judge]] = {"local": LocalJudge, "openai": OpenAIJudge}


def make_judge(settings: JudgeSettings) -> Judge:
    """The judge `settings.backend` names."""
    started = time.perf_counter()
    judge = BACKENDS[settings.backend](settings)
    where = settings.url if settings.backend == "openai" else "this machine"
    seconds = time.perf_counter() - started
    console.print(f"judge: {settings.model} ({settings.backend}, {where}; ready in {seconds:.1f}s)")
    return judge
