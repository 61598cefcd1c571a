"""GRPO against TRL 1.16's `GRPOTrainer` on this machine's CPU, in one run: speed, and accuracy after equal time.

Both trainers tune the same policy checkpoint (loaded by rlhfkit's loader: the same weights and tokenizer)
in fp32 with the same thread count, on the same prompts with the same checker as reward, sampling G
completions per prompt at the same temperature and length, with the same batch (completions per optimizer
step: one generation per step, one update per generation), learning rate and KL coefficient.

- `--task word` (throughput; default `tiny-austen`): `demo-prompts`, each with a reference word ("her" or
  "was"), rewarded by the `contains` checker (1 if the reply says the word). The timed window spans the
  steps after `--warmup`, from per-step wall-clock stamps (rlhfkit's `metrics.jsonl` with log_every=1, a TRL
  `TrainerCallback.on_step_end`): completions (episodes) per second.
- `--task math` (quality; default `smollm2-135m-instruct`): the arithmetic task (`rlhfkit task arithmetic`),
  rewarded by `correct` + 0.1·`format`. Each side trains for `--seconds` of wall time from its first step,
  then the same evaluator (rlhfkit's sampler, per-row seeds, the training temperature and length) scores the
  tuned policy on the held-out split: accuracy after equal wall time.

TRL runs with its defaults (loss type, clipping, reward scaling) minus bf16, gradient checkpointing, vLLM,
logging, saving and eval; `num_iterations` stays 1 (one update per generation, as the rlhfkit side).
Each trainer runs in a fresh process, TRL first.

    python bench/grpo.py --task word --warmup 1 --steps 3
    python bench/grpo.py --task math --seconds 600 --eval-size 200
    python bench/grpo.py --task math --only TRL       # one side (e.g. before rlhfkit's GRPO lands)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    Memory,
    RunSettings,
    add_run_args,
    check_run_args,
    environment,
    in_subprocess,
    print_table,
    print_verdict,
    rlhfkit_step_times,
    step_clock,
    timed_window,
    trl_args,
    versions,
    warn_if_busy,
    write_record,
)

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results"
TARGET_RATIO = 2.0
WORDS = ("her", "was")  # tiny-austen says one of them in about one 12-token reply in five
REWARDS = {"word": [("contains", 1.0)], "math": [("correct", 1.0), ("format", 0.1)]}


def rlhfkit_group_fields(settings: Settings) -> dict[str, Any]:
    """The PPO stage's fields that make it GRPO with G completions per prompt: the one place to adjust
    when the estimator's field names change. `batch_size` counts completions, as TRL's batch does."""
    return {"algo": "grpo", "group_size": settings.group_size}


@dataclass(frozen=True)
class Settings(RunSettings):
    """What both trainers share (`data`: training prompt records with `answer`; `batch_size`: completions
    per optimizer step) and GRPO's own."""

    task: str
    group_size: int  # G completions per prompt
    response_length: int
    temperature: float
    kl_coef: float
    seconds: float  # math: wall time each side trains
    eval_data: str  # math: held-out prompt records
    eval_size: int


@dataclass(frozen=True)
class SideResult:
    trainer: str
    episodes_per_s: float  # completions trained on per second in the timed window (word) or overall (math)
    steps: int
    seconds: float
    accuracy: float | None  # math: held-out accuracy of the tuned policy
    peak_rss_mib: float
    trainer_config: dict[str, Any] = field(default_factory=dict)  # what the trainer ran with (TRL's defaults)
    versions: dict[str, str] = field(default_factory=dict)


# --- the shared task and evaluator ---------------------------------------------------------------------------


def write_word_task(out: Path) -> Path:
    """`demo-prompts` with a reference word per row, alternating over WORDS."""
    from rlhfkit import assets

    rows = [json.loads(line) for line in Path(assets.resolve("demo-prompts")).read_text().splitlines()]
    out.write_text("".join(json.dumps(r | {"answer": WORDS[i % 2]}) + "\n" for i, r in enumerate(rows)))
    return out


def heldout_accuracy(policy: Any, tokenizer: Any, settings: Settings) -> float:
    """Mean `correct` of one sample per held-out prompt (row seeds: the same noise for both sides)."""
    from rlhfkit.data.records import read_prompt_set
    from rlhfkit.generation.sampling import SamplingSettings, sample
    from rlhfkit.scoring.verifiable import correct

    prompt_set = read_prompt_set(settings.eval_data, settings.eval_size)
    sampling = SamplingSettings(max_new_tokens=settings.response_length, temperature=settings.temperature)
    policy.eval()
    scores = []
    for start in range(0, len(prompt_set.prompts), 32):
        prompts = prompt_set.prompts[start : start + 32]
        texts = sample(policy, tokenizer, prompts, sampling, seeds=list(range(start, start + len(prompts)))).texts
        scores += [correct(p, t, a) for p, t, a in zip(prompts, texts, prompt_set.answers[start:], strict=False)]
    return sum(scores) / len(scores)


def rate(settings: Settings, times: list[float], started: float) -> tuple[float, int, float]:
    """(episodes/s, steps, seconds): over the timed window (word) or over all steps since `started` (math)."""
    if settings.task == "word":
        seconds, _ = timed_window("run", times, settings.total_steps, settings)
        return settings.batch_size * settings.steps / seconds, settings.steps, seconds
    seconds = times[-1] - started
    return settings.batch_size * len(times) / seconds, len(times), seconds


# --- rlhfkit ---------------------------------------------------------------------------------------------------


class WallTimeUp(Exception):
    """Raised after the step that used up the wall-time budget (math): the policy is then evaluated as it is."""


def run_rlhfkit(settings: Settings) -> SideResult:
    """`rlhfkit ppo` made GRPO by `rlhfkit_group_fields`, stopped after `settings.seconds` on the math task."""
    from rlhfkit.config import load_config
    from rlhfkit.models.loading import load_tokenizer
    from rlhfkit.ppo import train
    from rlhfkit.ppo.train import PPOConfig, ppo
    from rlhfkit.training import run_loop

    torch.set_num_threads(settings.threads)
    memory = Memory()
    models: list[Any] = []
    started: list[float] = []

    class BudgetLog(run_loop.MetricsLog):
        """rlhfkit's metrics log, noting memory after each step and stopping when the wall time is up."""

        def write(self, step: int, metrics: dict[str, float]) -> None:
            super().write(step, metrics)
            memory.step_done()
            if settings.task == "math" and step >= 1 and time.time() - started[0] >= settings.seconds:
                raise WallTimeUp

    def first_rollout(*args: Any, **kwargs: Any) -> Any:
        started[:] = started or [time.time()]
        return collect_rollout(*args, **kwargs)

    def kept(*args: Any, **kwargs: Any) -> Any:
        models.append(build_actor_critic(*args, **kwargs))
        return models[-1]

    collect_rollout, build_actor_critic = train.collect_rollout, train.build_actor_critic
    with tempfile.TemporaryDirectory() as out:
        fields = {
            "model": settings.model_path,
            "prompts": settings.data,
            "rewards": [{"source": name, "weight": weight} for name, weight in REWARDS[settings.task]],
            "sampling": {"max_new_tokens": settings.response_length, "temperature": settings.temperature},
            "batch_size": settings.batch_size,
            "mini_batch_size": settings.batch_size,  # one optimizer step per generation, as TRL here
            "micro_batch_size": settings.batch_size,
            "ppo_epochs": 1,
            "kl_coef": settings.kl_coef,
            "max_steps": settings.total_steps if settings.task == "word" else 100_000,
            "lr_schedule": "constant" if settings.task == "math" else "cosine",
            "learning_rate": settings.learning_rate,
            "eval_every": 0,
            "log_every": 1,
            "output_dir": out,
            "seed": settings.seed,
            "num_threads": settings.threads,
        } | rlhfkit_group_fields(settings)
        config_file = Path(out) / "bench.yaml"
        config_file.write_text(json.dumps(fields))  # JSON is YAML
        config = load_config(PPOConfig, config_file, list(settings.rlhfkit_set))
        with (
            mock.patch.object(run_loop, "MetricsLog", BudgetLog),
            mock.patch.object(train, "collect_rollout", first_rollout),
            mock.patch.object(train, "build_actor_critic", kept),
            contextlib.suppress(WallTimeUp),
        ):  # the math task's budget is up: evaluate the policy as it is
            ppo(config)
        times = rlhfkit_step_times(out)
    tokenizer = load_tokenizer(settings.model_path)
    accuracy = heldout_accuracy(models[0].policy, tokenizer, settings) if settings.task == "math" else None
    episodes_per_s, steps, seconds = rate(settings, times, started[0])
    used = config.model_dump(mode="json")
    return SideResult("rlhfkit", episodes_per_s, steps, seconds, accuracy, memory.peak_mib, used, versions())


# --- TRL -------------------------------------------------------------------------------------------------------


def trl_reward(name: str) -> Callable[..., list[float]]:
    """An rlhfkit check as a TRL reward function: (prompts, completions, answer=[...]) -> scores."""
    from rlhfkit.scoring.verifiable import CHECKS

    check = CHECKS[name]

    def reward(prompts: list[Any], completions: list[Any], answer: list[str], **_: Any) -> list[float]:
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]  # chat: the reply message
        return [
            check(p, t, a) if name != "format" else check(p, t) for p, t, a in zip(prompts, texts, answer, strict=True)
        ]

    reward.__name__ = name  # TRL logs rewards/<name>
    return reward


def run_trl(settings: Settings) -> SideResult:
    """TRL's `GRPOTrainer` with its defaults minus bf16, gradient checkpointing, vLLM, logging, saving, eval."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlhfkit.data.records import read_prompt_set
    from rlhfkit.models.loading import load_model, load_tokenizer

    memory = Memory()
    torch.set_num_threads(settings.threads)
    tokenizer = load_tokenizer(settings.model_path, padding_side="left")
    policy = load_model(settings.model_path, tokenizer)
    prompt_set = read_prompt_set(settings.data)
    prompts = [p if isinstance(p, str) else [m.model_dump() for m in p] for p in prompt_set.prompts]
    dataset = Dataset.from_dict({"prompt": prompts, "answer": prompt_set.answers})
    clock = step_clock(memory.step_done)
    started: list[float] = []

    class Budget(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            started[:] = started or [time.time()]

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if settings.task == "math" and time.time() - started[0] >= settings.seconds:
                control.should_training_stop = True

    with tempfile.TemporaryDirectory() as out:
        fields = {
            "num_generations": settings.group_size,
            "max_completion_length": settings.response_length,
            "temperature": settings.temperature,
            "beta": settings.kl_coef,
            "use_vllm": False,
            "max_steps": settings.total_steps if settings.task == "word" else 100_000,
            "lr_scheduler_type": "constant" if settings.task == "math" else "cosine",
        }
        base = trl_args(out, settings, settings.batch_size, {})
        del base["max_length"]  # not a GRPOConfig field: prompts are not cut, completions are max_completion_length
        args = GRPOConfig(**base | fields)
        rewards = REWARDS[settings.task]
        args.reward_weights = [weight for _, weight in rewards]
        trainer = GRPOTrainer(
            model=policy,
            reward_funcs=[trl_reward(name) for name, _ in rewards],
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[clock, Budget()],
        )
        trainer.train()
    tokenizer = load_tokenizer(settings.model_path)
    accuracy = heldout_accuracy(policy, tokenizer, settings) if settings.task == "math" else None
    episodes_per_s, steps, seconds = rate(settings, clock.times, started[0])
    keys = ("loss_type", "scale_rewards", "epsilon", "epsilon_high", "beta", "num_iterations", "steps_per_generation")
    used = {key: getattr(args, key, None) for key in keys}
    return SideResult("TRL", episodes_per_s, steps, seconds, accuracy, memory.peak_mib, used, versions())


RUNNERS: dict[str, Callable[[Settings], SideResult]] = {"TRL": run_trl, "rlhfkit": run_rlhfkit}


# --- command line and reporting -------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=["word", "math"], default="word")
    parser.add_argument("--model", help="default: tiny-austen (word), smollm2-135m-instruct (math)")
    parser.add_argument("--batch-size", type=int, default=32, help="completions per optimizer step")
    parser.add_argument("--group-size", type=int, default=8, help="G: completions per prompt")
    parser.add_argument("--response-length", type=int, help="default: 12 (word), 64 (math)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--kl-coef", type=float, default=0.0, help="β (TRL's default 0)")
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--seconds", type=float, default=600, help="math: wall time per side")
    parser.add_argument("--train-size", type=int, default=2000, help="math: training problems")
    parser.add_argument("--eval-size", type=int, default=200, help="math: held-out problems")
    parser.add_argument("--only", choices=list(RUNNERS), help="run one side only")
    add_run_args(parser, "PPOConfig", "kl_estimator=k3", "loss_type=grpo", rounds=False)
    parser.set_defaults(warmup=1, steps=3, threads=1)
    parser.add_argument("--output", type=Path, help="JSON result file (default: bench/results/grpo-TASK.json)")
    args = parser.parse_args()
    check_run_args(parser, args)
    if args.batch_size % args.group_size or args.group_size < 2:
        parser.error("--batch-size must be a multiple of --group-size, which must be at least 2")
    return args


def task_data(task: str, folder: Path, args: argparse.Namespace) -> tuple[str, str]:
    """(training prompts, held-out prompts) written into `folder`."""
    if task == "word":
        return str(write_word_task(folder / "word.jsonl")), ""
    from rlhfkit.scoring.arithmetic import write_task

    train, heldout = write_task(folder, args.train_size, args.eval_size, args.seed)
    return str(train), str(heldout)


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything benchmarked is local; inherited by the runs
    from common import run_fields

    args = parse_args()
    args.model = args.model or ("tiny-austen" if args.task == "word" else "smollm2-135m-instruct")
    args.response_length = args.response_length or (12 if args.task == "word" else 64)
    args.max_length = 0  # unused: prompts are not cut on either side
    console = Console(width=max(Console().width, 120))
    with tempfile.TemporaryDirectory() as tmp:
        data, eval_data = task_data(args.task, Path(tmp), args)
        settings = Settings(
            **run_fields(args), data=data, task=args.task, group_size=args.group_size,
            response_length=args.response_length, temperature=args.temperature, kl_coef=args.kl_coef,
            seconds=args.seconds, eval_data=eval_data, eval_size=args.eval_size,
        )  # fmt: skip
        load_before = os.getloadavg()
        warn_if_busy(console, load_before[0], settings.threads)
        results = {}
        for name in [args.only] if args.only else list(RUNNERS):
            console.rule(name)
            results[name] = in_subprocess(RUNNERS[name], settings)
    columns = ["trainer", "episodes/s", "steps", "seconds", "held-out accuracy", "peak RSS MiB"]
    rows = [
        [r.trainer, f"{r.episodes_per_s:.2f}", str(r.steps), f"{r.seconds:.0f}",
         "-" if r.accuracy is None else f"{r.accuracy:.3f}", f"{r.peak_rss_mib:.0f}"]
        for r in results.values()
    ]  # fmt: skip
    print_table(console, f"GRPO, {args.task} task on {args.model}", columns, rows)
    record: dict[str, Any] = {"benchmark": f"grpo-{args.task}", "settings": asdict(replace(settings, data=args.task))}
    if len(results) == 2:
        ratio = results["rlhfkit"].episodes_per_s / results["TRL"].episodes_per_s
        print_verdict(console, "episodes/s", ratio, TARGET_RATIO)
        record["ratio_episodes_per_s"] = ratio
    record |= {"results": {name: asdict(r) for name, r in results.items()}, **environment(load_before)}
    write_record(console, args.output or DEFAULT_OUTPUT / f"grpo-{args.task}.json", record)


if __name__ == "__main__":
    main()
