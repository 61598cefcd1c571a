"""`rlhfkit distill`: context distillation (Askell et al. 2021, arXiv:2112.00861, section 3).

The pipeline: read the context and the prompts, and refuse (before writing anything) a context that leaves
no room in the model's window → the teacher, the initial model frozen, answers each prompt after the
context (or the replies are given) → the student, the same initial weights without the context, is trained
to minimise KL(teacher ‖ student) on the next-token distributions over every reply token
(`losses.context_distillation_kl`), the token-level mean over the global batch → held-out prompts measure
the KL before and after, and the gold score of the student's own replies (no context) before and after,
next to the prompted teacher's, in `eval.json`.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import cast

import torch
from accelerate import Accelerator
from pydantic import Field
from torch import nn
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from rlhfkit import assets
from rlhfkit.data.convert import split_by_prompt
from rlhfkit.data.readers import DataError, read_rows
from rlhfkit.data.records import PromptRecord, Text, validate_record
from rlhfkit.distill.context import PromptRow, as_messages, check_window, load_context, prompt_ids
from rlhfkit.distill.losses import context_distillation_kl
from rlhfkit.generation.sampling import SamplingSettings, response_sequences, sample
from rlhfkit.models.loading import context_length, disable_dropout, load_model, load_tokenizer, resolve_model_path
from rlhfkit.models.logprobs import lm_parts, target_logits
from rlhfkit.scores import gold_function
from rlhfkit.training.batching import BatchOrder, PaddedBatch, TokenSequence, chunks, pad_batch, shard
from rlhfkit.training.config import TrainSettings
from rlhfkit.training.metrics import StepMetrics
from rlhfkit.training.reduction import GlobalMean
from rlhfkit.training.run_loop import TrainingRun, TrainResult, total_steps
from rlhfkit.training.runtime import finish_run, pretrained_saver, start_run


class DistillConfig(TrainSettings):
    """Distil a model prompted with a long context into the same model without it."""

    model: str = Field("smollm2-135m-instruct", description="model to distil (teacher and student start from it)")
    context: str = Field("hhh-context", description="YAML file of `messages` put before every prompt")
    prompts: str = Field("hhh-prompts", description="prompt records (text or chat) the teacher answers")
    replies: str | None = Field(
        None, description="prompt + completion records: distil on these replies instead of the teacher's samples"
    )
    eval_fraction: float = Field(0.25, ge=0, lt=1, description="share of prompts held out for the KL and gold")
    sampling: SamplingSettings = Field(
        default_factory=lambda: SamplingSettings(max_new_tokens=32), description="sampling of the replies"
    )
    gold: str = Field("vader", description="gold score of replies: vader, length, or python:module:function")
    output_dir: str = Field("runs/distill", description="where the model, replies, metrics and eval.json go")
    learning_rate: float = Field(1e-5, gt=0, description="peak AdamW learning rate")
    epochs: float = Field(2.0, gt=0, description="passes over the replies")
    batch_size: int = Field(8, ge=1, description="replies per optimizer step, all processes")
    micro_batch_size: int = Field(8, ge=1, description="replies per forward pass on one process")
    eval_every: int = Field(0, ge=0, description="held-out KL every N steps (0: before and after only)")
    log_every: int = Field(1, ge=1, description="write metrics every N steps")


@dataclass(frozen=True)
class Example:
    """One reply after the context (teacher) and without it (student); the reply's tokens are trained."""

    row: PromptRow
    teacher: TokenSequence
    student: TokenSequence

    @property
    def prompt(self) -> Text:
        return self.row.prompt

    @property
    def reply(self) -> list[int]:
        return [t for t, m in zip(self.student.input_ids, self.student.loss_mask, strict=True) if m]


class ReplyLogits(nn.Module):
    """Wraps a causal LM; forward returns the logits predicting every reply token, (N, V)."""

    def __init__(self, lm: PreTrainedModel) -> None:
        super().__init__()
        self.lm = lm
        self.parts = lm_parts(lm)  # a tuple, so the weights are registered once (through `lm`)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
        return target_logits(*self.parts, input_ids, attention_mask, loss_mask)[0]


def read_prompt_rows(config: DistillConfig) -> tuple[list[PromptRow], list[str] | None]:
    """The prompts with their locations, and the given replies (one per prompt) if `replies` is set."""
    if config.replies is None:
        rows = [
            PromptRow(cast(PromptRecord, validate_record(row.data, "prompt", row.location)).prompt, row.location)
            for row in read_rows(assets.resolve(config.prompts))
        ]
        if not rows:
            raise DataError(f"{config.prompts}: no prompts")
        return rows, None
    records = [(validate_record(row.data, "sft", row.location), row.location) for row in read_rows(config.replies)]
    for record, location in records:
        if record.prompt is None or not isinstance(record.completion, str):
            raise DataError(f"{location}: field 'completion': distillation replies need `prompt` and a text completion")
    if not records:
        raise DataError(f"{config.replies}: no replies")
    return [PromptRow(cast(Text, r.prompt), loc) for r, loc in records], [str(r.completion) for r, _ in records]


def with_reply(tokenizer: PreTrainedTokenizerBase, row: PromptRow, context: list, reply: list[int]) -> Example:
    """The reply after the context + prompt (teacher) and after the prompt alone (student)."""

    def sequence(messages: list) -> TokenSequence:
        ids = prompt_ids(tokenizer, messages)
        return TokenSequence(ids + reply, [0] * len(ids) + [1] * len(reply))

    messages = as_messages(row.prompt)
    return Example(row, sequence(context + messages), sequence(messages))


def teacher_replies(
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    context: list,
    rows: list[PromptRow],
    config: DistillConfig,
) -> list[list[int]]:
    """One reply per prompt sampled from the prompted teacher (through EOS), seeded per prompt."""
    replies = []
    for part in chunks(list(range(len(rows))), config.micro_batch_size):
        prompts = [context + as_messages(rows[i].prompt) for i in part]
        seeds = [config.seed * 1_000_003 + i for i in part]
        for seq in response_sequences(sample(teacher, tokenizer, prompts, config.sampling, seeds=seeds)):
            replies.append([t for t, m in zip(seq.input_ids, seq.loss_mask, strict=True) if m])
    return replies


def student_gold(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: list[PromptRow], config: DistillConfig
) -> tuple[float, list[str]]:
    """Mean gold score of the model's replies to the prompts without the context, and the replies."""
    gold = gold_function(config.gold)
    texts = []
    for part in chunks(list(range(len(rows))), config.micro_batch_size):
        prompts = [as_messages(rows[i].prompt) for i in part]
        seeds = [config.seed * 1_000_003 + i for i in part]
        texts += sample(model, tokenizer, prompts, config.sampling, seeds=seeds).texts
    return sum(gold(r.prompt, t) for r, t in zip(rows, texts, strict=True)) / max(1, len(rows)), texts


def _to(batch: PaddedBatch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return batch.input_ids.to(device), batch.attention_mask.to(device), batch.loss_mask.to(device)


def micro_kl(
    student: nn.Module, teacher: nn.Module, examples: list[Example], pad_id: int, device: torch.device
) -> torch.Tensor:
    """KL(teacher ‖ student) at every reply token of the micro-batch, (N,)."""
    with torch.no_grad():
        teacher_logits = teacher(*_to(pad_batch([e.teacher for e in examples], pad_id), device))
    student_logits = student(*_to(pad_batch([e.student for e in examples], pad_id), device))
    return context_distillation_kl(teacher_logits, student_logits)


def held_out_kl(
    accelerator: Accelerator, student: nn.Module, teacher: nn.Module, examples: list[Example], pad_id: int, micro: int
) -> dict[str, float]:
    """Per-token KL(teacher ‖ student) over the held-out replies (split over processes)."""
    student.eval()
    metrics = StepMetrics()
    mine = shard(list(range(len(examples))), accelerator.process_index, accelerator.num_processes)
    with torch.no_grad():
        for part in chunks(mine, micro):
            kl = micro_kl(student, teacher, [examples[i] for i in part], pad_id, accelerator.device)
            metrics.add_total("eval/kl", kl.sum(), kl.numel())
    student.train()
    return metrics.mean(accelerator)


def train_student(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    pad_id: int,
    train: list[Example],
    held_out: list[Example],
    config: DistillConfig,
    accelerator: Accelerator,
) -> TrainResult:
    """Minimise the token-mean KL(teacher ‖ student) over the replies of each global batch."""
    order = BatchOrder(
        [len(e.teacher.input_ids) for e in train], config.batch_size, config.seed, config.group_by_length
    )
    run = TrainingRun(accelerator, config, ReplyLogits(student), total_steps(config, order))
    frozen = ReplyLogits(teacher).to(accelerator.device)
    micro, device = config.micro_batch_size, accelerator.device

    def train_step(step: int) -> dict[str, float]:
        mine = shard(order.global_batch(step - 1), accelerator.process_index, accelerator.num_processes)
        parts = [[train[i] for i in part] for part in chunks(mine, micro)]
        tokens = GlobalMean.over(accelerator, sum(len(e.reply) for part in parts for e in part))  # token-level
        metrics = StepMetrics()

        def micro_loss(part: list[Example]) -> torch.Tensor:
            kl = micro_kl(run.model, frozen, part, pad_id, device)
            metrics.add_total("distill/kl", kl.detach().sum(), kl.numel())
            return tokens(kl.sum())

        grad_norm = run.optimizer_step([partial(micro_loss, part) for part in parts])
        return metrics.mean(accelerator) | {
            "train/grad_norm": grad_norm,
            "train/lr": run.lr,
            "perf/reply_tokens_per_s": run.rate(tokens.count),
        }

    return run.loop(
        "distill",
        train_step,
        losses=["distill/kl"],
        describe=lambda m: f"KL to the prompted model {m['distill/kl']:.4f}",
        evaluate=(lambda: held_out_kl(accelerator, run.model, frozen, held_out, pad_id, micro)) if held_out else None,
        report=lambda m: f"held-out KL {m['eval/kl']:.4f}",
    )


def distill(config: DistillConfig) -> Path:
    """Distil `config.context` into `config.model`; returns the directory of the saved model (see the module
    docstring)."""
    tokenizer = load_tokenizer(config.model)
    context = load_context(config.context)
    rows, given = read_prompt_rows(config)
    window = context_length(AutoConfig.from_pretrained(resolve_model_path(config.model)))
    reply_tokens = max(len(tokenizer(r)["input_ids"]) + 1 for r in given) if given else config.sampling.max_new_tokens
    check_window(tokenizer, context, config.context, rows, reply_tokens, window)
    accelerator = start_run(config, config)
    output_dir = Path(config.output_dir)
    student = load_model(config.model, tokenizer)
    disable_dropout(student)  # no dropout noise in the KL: the student scores as the frozen teacher does
    # a copy, not a second load: a pad token added to the vocabulary gets the same embedding in both
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    teacher.to(accelerator.device)
    if given is None:
        replies = teacher_replies(teacher, tokenizer, context, rows, config)
    else:
        replies = [tokenizer(r, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for r in given]
    examples = [with_reply(tokenizer, row, context, reply) for row, reply in zip(rows, replies, strict=True)]
    train, held_out = split_by_prompt(examples, config.eval_fraction, config.seed)
    if accelerator.is_main_process:
        (output_dir / "replies.jsonl").write_text(
            "".join(
                json.dumps({"location": e.row.location, "reply": tokenizer.decode(e.reply)}) + "\n" for e in examples
            )
        )
    held_rows = [e.row for e in held_out]
    before = student_gold(teacher, tokenizer, held_rows, config) if accelerator.is_main_process else None
    accelerator.print(
        f"distilling {config.context} into {config.model}: {len(train)} replies, {len(held_out)} held out"
    )
    result = train_student(student, teacher, tokenizer.pad_token_id, train, held_out, config, accelerator)
    finish_run(accelerator, output_dir, result.summary, pretrained_saver(accelerator, student, tokenizer))
    if accelerator.is_main_process and held_out and before is not None:
        write_eval(output_dir, student, tokenizer, held_out, before[0], config)
    accelerator.wait_for_everyone()
    return output_dir


def write_eval(
    output_dir: Path,
    student: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    held_out: list[Example],
    gold_before: float,
    config: DistillConfig,
) -> None:
    """eval.json: held-out KL before/after (from metrics.jsonl) and the gold scores, printed too."""
    logged = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    kls = [m["eval/kl"] for m in logged if "eval/kl" in m]
    gold = gold_function(config.gold)
    prompted = [gold(e.prompt, str(tokenizer.decode(e.reply, skip_special_tokens=True))) for e in held_out]
    student.eval()
    gold_after, _ = student_gold(student, tokenizer, [e.row for e in held_out], config)
    metrics = {
        "held_out_prompts": len(held_out),
        "kl_before": kls[0],
        "kl_after": kls[-1],
        f"{config.gold}_prompted": sum(prompted) / len(prompted),
        f"{config.gold}_before": gold_before,
        f"{config.gold}_after": gold_after,
    }
    (output_dir / "eval.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(
        f"held-out KL to the prompted model: {kls[0]:.4f} -> {kls[-1]:.4f} nats/token; {config.gold} of the "
        f"unprompted replies {gold_before:.3f} -> {gold_after:.3f} (prompted: {sum(prompted) / len(prompted):.3f})"
    )
