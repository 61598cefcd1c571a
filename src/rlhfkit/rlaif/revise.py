"""`rlhfkit cai revise`: the supervised stage of Constitutional AI, written as SFT data.

For each (red-team) prompt the model answers; then, for each round, it critiques its latest answer
against a principle drawn from the constitution and rewrites the answer in the light of the critique
(Bai et al. 2022, arXiv:2212.08073, section 3.1, whose figure 1 calls this "response, critique,
revision"). The final revisions, paired with their prompts, are the SFT data of SL-CAI; each record
keeps the initial answer, the principles, critiques and revisions in its `source` field.

In chat form the exchange is one conversation: user prompt, assistant answer, user critique request,
assistant critique, user revision request, assistant revision. A prompt whose answer, critique or
revision comes back empty (or does not fit the model's context) goes to the skipped file with the step
that failed, never into the SFT data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from rich.console import Console

from rlhfkit import assets
from rlhfkit.config import Config, ConfigError
from rlhfkit.data.records import Text, load_records
from rlhfkit.judging.constitution import Order, Principle, load_constitution, principle_schedule
from rlhfkit.judging.judges import Conversation, Judge, JudgeSettings, make_judge

console = Console(stderr=True)


class ReviseConfig(Config):
    """Constitutional AI's critique-and-revise loop on red-team prompts; the revisions become SFT data."""

    prompts: str | None = Field("red-team", description="prompt records: the red-team prompts to answer and revise")
    output: str = Field("runs/cai/revisions.jsonl", description="SFT records: chat prompt + final revision")
    skipped: str | None = Field(
        None, description="JSONL of prompts that failed a step (default: OUTPUT's name + .skipped.jsonl)"
    )
    revisions: int = Field(1, ge=1, description="critique-revision rounds per prompt (CAI used up to 4)")
    constitution: str = Field("constitution", description="YAML file of principles ('constitution': the default)")
    principles: list[str] | None = Field(None, description="names of the principles to use (default: all)")
    principle_order: Order = Field("sample", description="sample: a random principle per round (CAI); cycle: in turn")
    limit: int | None = Field(None, ge=1, description="use only the first N prompts")
    seed: int = Field(0, description="seed of the principle draws and of sampling")
    assistant: JudgeSettings = Field(
        default_factory=JudgeSettings, description="the model that answers, critiques and revises"
    )


def as_messages(prompt: Text) -> Conversation:
    """A prompt as chat messages: plain text becomes one user turn."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [m.model_dump() for m in prompt]


@dataclass
class Trace:
    """One prompt's way through the loop: the conversation so far and what each step produced."""

    prompt: Conversation
    schedule: list[Principle]  # the principle of each round
    conversation: Conversation = field(default_factory=list)
    initial: str | None = None
    critiques: list[str] = field(default_factory=list)
    revisions: list[str] = field(default_factory=list)
    failed: str | None = None  # "step: reason" of the step that failed

    def add(self, role: str, content: str) -> None:
        self.conversation = [*self.conversation, {"role": role, "content": content}]


def _ask(judge: Judge, traces: list[Trace], step: str) -> dict[int, str]:
    """The next assistant message of every live trace, by index; a trace without one fails at `step`."""
    live = [i for i, t in enumerate(traces) if t.failed is None]
    answers = {}
    for i, completion in zip(live, judge.complete([traces[i].conversation for i in live]), strict=True):
        if completion.text is None:
            traces[i].failed = f"{step}: {completion.error}"
        else:
            answers[i] = completion.text
    return answers


def critique_and_revise(judge: Judge, prompts: list[Text], schedule: list[list[Principle]]) -> list[Trace]:
    """Answer each prompt, then critique and revise once per principle of its `schedule` row (CAI §3.1)."""
    traces = [Trace(as_messages(p), row, as_messages(p)) for p, row in zip(prompts, schedule, strict=True)]
    for i, text in _ask(judge, traces, "answer").items():
        traces[i].initial = text
        traces[i].add("assistant", text)
    for r in range(max(map(len, schedule), default=0)):
        for trace in traces:
            if trace.failed is None:
                trace.add("user", trace.schedule[r].critique)
        for i, text in _ask(judge, traces, f"critique {r + 1}").items():
            traces[i].critiques.append(text)
            traces[i].add("assistant", text)
            traces[i].add("user", traces[i].schedule[r].revision)
        for i, text in _ask(judge, traces, f"revision {r + 1}").items():
            traces[i].revisions.append(text)
            traces[i].add("assistant", text)
    return traces


def sft_row(trace: Trace, model: str) -> dict[str, Any]:
    """The SFT record (chat prompt, final revision) with the whole exchange as its source."""
    return {
        "prompt": trace.prompt,
        "completion": [{"role": "assistant", "content": trace.revisions[-1]}],
        "source": {
            "labeler": "cai",
            "model": model,
            "principles": [p.name for p in trace.schedule],
            "initial": trace.initial,
            "critiques": trace.critiques,
            "revisions": trace.revisions,
        },
    }


def revise(config: ReviseConfig) -> Path:
    """Run the loop on `config.prompts`; write SFT records to `config.output`, failures beside them."""
    if config.prompts is None:
        raise ConfigError("prompts is not set: give a file of prompt records (red-team prompts) to answer and revise")
    principles = load_constitution(config.constitution).select(config.principles)
    prompts = [r.prompt for r in load_records(assets.resolve(config.prompts), "prompt")][: config.limit]
    draws = principle_schedule(principles, len(prompts) * config.revisions, config.principle_order, config.seed)
    schedule = [draws[i * config.revisions : (i + 1) * config.revisions] for i in range(len(prompts))]
    torch.manual_seed(config.seed)
    judge = make_judge(config.assistant)
    console.print(f"{len(prompts)} prompts, {config.revisions} critique-revision round(s) each")
    traces = critique_and_revise(judge, prompts, schedule)
    done = [t for t in traces if t.failed is None]
    output = Path(config.output)
    skipped = Path(config.skipped) if config.skipped else output.with_name(output.stem + ".skipped.jsonl")
    for path in (output, skipped):
        path.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("".join(json.dumps(sft_row(t, judge.name)) + "\n" for t in done))
    skipped.write_text(
        "".join(
            json.dumps({"prompt": t.prompt, "failed": t.failed, "conversation": t.conversation}) + "\n"
            for t in traces
            if t.failed is not None
        )
    )
    console.print(f"{len(done)} revisions written to {output}")
    if len(done) < len(traces):
        console.print(f"[yellow]{len(traces) - len(done)} prompts skipped (a step failed): see {skipped}")
    return output
