"""`rlhfkit loop`: online RLHF, a few rounds of sample → generate → label → reward → policy → eval.

Each round draws `prompts_per_round` prompts from the pool (seeded by (seed, round), none an earlier round
used while unused ones remain), samples K replies per prompt from the current policy (round 0: the start
model), labels them (simulated labeler or AI judge), trains a reward model on every label so far, tunes the
policy (PPO against that reward model, or DPO on the labels) from the current policy with the start model as
the reference, and evaluates it (gold score, KL to the start model, distinct-2 on held-out prompts), one row
per round in `loop.jsonl`.

`optimizer: rejection_sampling` is rejection-sampling fine-tuning (Touvron et al. 2023, Llama 2, §3.2.3;
RAFT, arXiv:2304.06767; ReST, arXiv:2308.08998): of the K replies the round sampled from the current policy
for each prompt, the one the round's reward model scores highest (`generation.best_of`) becomes an SFT
example, and the SFT stage tunes the current policy on them (`policy/best.jsonl`, `policy/selection.json`).

The reward model is retrained each round from the start model on all labels so far, not fine-tuned from the
previous round's: the same recipe every round, so a round's reward model depends only on the labels.

Resume: every phase writes into `round-N/PHASE.partial/` and renames it to `round-N/PHASE/` when complete;
a finished phase's directory is never rewritten, so rerunning the same command after a kill continues at the
first unfinished phase (a left-over `.partial` is discarded). `state.json` lists the finished phases and
their seconds. Labels are written once per round; the file the reward model trains on and `loop.jsonl`
are rebuilt from the rounds' files, so nothing is ever counted twice. `policy` links to the last policy.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, cast

import torch
from pydantic import Field
from rich.console import Console

from rlhfkit import assets
from rlhfkit.config import Config, ConfigError
from rlhfkit.data.convert import best_vs_worst
from rlhfkit.data.readers import Row
from rlhfkit.data.records import CandidatesRecord, load_records, read_prompts
from rlhfkit.dpo.train import DPOConfig, dpo
from rlhfkit.evaluation.policy import evaluate_policy
from rlhfkit.feedback.queue import HumanLabelSettings, request_judgments
from rlhfkit.feedback.tasks import TASKS
from rlhfkit.generation.best_of import Groups, score_groups
from rlhfkit.generation.engine import ENGINE_HELP, EngineKind, rollout_engine
from rlhfkit.generation.generate import GenerateConfig, generate
from rlhfkit.generation.sampling import SamplingSettings
from rlhfkit.labeling.simulated import LabelConfig, simulate
from rlhfkit.models.loading import load_model, load_tokenizer
from rlhfkit.ppo.train import PPOConfig, ppo
from rlhfkit.reward.train import HeadData, RewardConfig, reward
from rlhfkit.rlaif.preferences import AILabelConfig, label_ai
from rlhfkit.scores import gold_function
from rlhfkit.scoring.sources import CombinedReward, RewardSource
from rlhfkit.sft.train import SFTConfig, sft

console = Console()

PHASES = ("sample", "generate", "label", "reward", "policy", "eval")


class LoopConfig(Config):
    """Online RLHF: rounds of sampling from the current policy, labelling, reward model and policy update."""

    output_dir: str = Field("runs/loop", description="round-N/PHASE/ dirs, state.json, loop.jsonl, policy link")
    model: str = Field("tiny-austen", description="start model: the first policy and the reference of every round")
    prompts: str = Field("demo-sft", description="pool of prompt records the rounds draw from")
    rounds: int = Field(3, ge=1, description="rounds of sample → generate → label → reward → policy → eval")
    prompts_per_round: int = Field(64, ge=1, description="prompts drawn per round (no repeats while possible)")
    samples_per_prompt: int = Field(4, ge=2, description="K: candidate replies per prompt, labelled together")
    seed: int = Field(0, description="seed of the prompt draws, sampling and labelling (offset by the round)")
    engine: EngineKind = Field("hf", description=f"{ENGINE_HELP}, for candidates, PPO and evaluation alike")
    candidates: SamplingSettings = Field(
        default_factory=lambda: SamplingSettings(max_new_tokens=16, temperature=1.0),
        description="sampling of the candidates",
    )
    labeler: Literal["simulated", "ai", "human"] = Field(
        "simulated", description="simulated (noisy gold labeler), ai (a judge) or human (the feedback app)"
    )
    simulated: LabelConfig = Field(
        default_factory=lambda: LabelConfig(kind="ranking", gold="vader", random_prob=0.1),
        description="the simulated labeler (candidates and output are set by the loop)",
    )
    ai: AILabelConfig = Field(
        default_factory=lambda: AILabelConfig(judgement="kway"),
        description="the AI labeler (candidates and output are set by the loop)",
    )
    human: HumanLabelSettings = Field(
        default_factory=HumanLabelSettings,
        description="human labels: each round's candidates become the ranking project PROJECT-loop-round-N",
    )
    reward: RewardConfig = Field(
        default_factory=lambda: RewardConfig(epochs=1, learning_rate=1e-3, warmup_steps=5, eval_every=0),
        description="the reward model, retrained from `model` each round on all labels so far",
    )
    optimizer: Literal["ppo", "dpo", "rejection_sampling"] = Field(
        "ppo",
        description="ppo (against the round's reward model), dpo, or rejection_sampling (SFT on the best of K "
        "by the round's reward model)",
    )
    ppo: PPOConfig = Field(
        default_factory=lambda: PPOConfig(max_steps=10, batch_size=16, learning_rate=3e-5, eval_every=0),
        description="PPO each round on the round's prompts (model, ref_model, rewards set by the loop)",
    )
    dpo: DPOConfig = Field(
        default_factory=lambda: DPOConfig(epochs=1, learning_rate=1e-4, eval_every=0, log_every=10),
        description="DPO each round on all labels so far, best-vs-worst pair of each ranking",
    )
    rejection_sampling: SFTConfig = Field(
        default_factory=lambda: SFTConfig(epochs=2, learning_rate=1e-4, eval_fraction=0, eval_every=0, log_every=10),
        description="SFT each round on the best of each prompt's K replies (model, data, output_dir set by the loop)",
    )
    eval_prompts: str = Field("demo-prompts", description="held-out prompts for each round's evaluation")
    eval_size: int = Field(32, ge=1, description="held-out prompts evaluated (the first N)")
    gold: str = Field("vader", description="gold score of the evaluation: vader, length, python:mod:fn")
    evaluation: SamplingSettings = Field(
        default_factory=lambda: SamplingSettings(max_new_tokens=32, temperature=1.0),
        description="sampling for the evaluation (temperature 1: unbiased KL)",
    )


def _write_atomically(path: Path, text: str) -> None:
    """Write, then rename: a kill never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_json(path: Path, data: object) -> None:
    _write_atomically(path, json.dumps(data, indent=2) + "\n")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _plain(prompt: object) -> object:
    return prompt if isinstance(prompt, str) else [m.model_dump() for m in prompt]  # type: ignore[attr-defined]


def draw_prompts(pool_size: int, count: int, used: set[int], seed: int, round_index: int) -> list[int]:
    """Indices of `count` prompts, seeded by (seed, round): unused ones first, then (pool exhausted) used ones."""
    rng = random.Random(f"{seed}:{round_index}")
    fresh = [i for i in range(pool_size) if i not in used]
    if len(fresh) >= count:
        return rng.sample(fresh, count)
    stale = [i for i in range(pool_size) if i in used]
    return fresh + rng.sample(stale, min(count - len(fresh), len(stale)))


class Loop:
    """The rounds of one output directory; every phase is a method writing into its (temporary) directory."""

    def __init__(self, config: LoopConfig) -> None:
        self.config = config
        self.root = Path(config.output_dir)
        self.state_file = self.root / "state.json"

    # -- layout and state ---------------------------------------------------------------------------------
    def dir(self, round_index: int, phase: str) -> Path:
        return self.root / f"round-{round_index}" / phase

    def done(self, round_index: int, phase: str) -> bool:
        return self.dir(round_index, phase).is_dir()

    def state(self) -> dict:
        return json.loads(self.state_file.read_text()) if self.state_file.exists() else {"rounds": {}}

    def policy(self, round_index: int) -> str:
        """The policy that samples in this round: the start model, then the previous round's policy."""
        return self.config.model if round_index == 0 else str(self.dir(round_index - 1, "policy"))

    def labels_kind(self) -> str:
        if self.config.labeler == "human":
            return "ranking"
        if self.config.labeler == "ai":
            return "ranking" if self.config.ai.judgement == "kway" else "preference"
        return self.config.simulated.kind

    def run_phase(self, round_index: int, phase: str, work: Callable[[int, Path], None]) -> None:
        final = self.dir(round_index, phase)
        if final.is_dir():
            return
        partial = final.with_name(phase + ".partial")
        shutil.rmtree(partial, ignore_errors=True)  # a phase killed half-way starts again
        partial.mkdir(parents=True)
        console.rule(f"round {round_index + 1}/{self.config.rounds}: {phase}")
        started = time.perf_counter()
        work(round_index, partial)
        partial.rename(final)
        state = self.state()
        state["rounds"].setdefault(str(round_index), {})[phase] = {"seconds": round(time.perf_counter() - started, 2)}
        _write_json(self.state_file, state)

    # -- phases -------------------------------------------------------------------------------------------
    def sample(self, round_index: int, out: Path) -> None:
        pool = [r.prompt for r in load_records(assets.resolve(self.config.prompts), "prompt")]
        used = {i for r in range(round_index) for i in json.loads((self.dir(r, "sample") / "indices.json").read_text())}
        chosen = draw_prompts(len(pool), self.config.prompts_per_round, used, self.config.seed, round_index)
        (out / "indices.json").write_text(json.dumps(chosen))
        (out / "prompts.jsonl").write_text("".join(json.dumps({"prompt": _plain(pool[i])}) + "\n" for i in chosen))

    def generate(self, round_index: int, out: Path) -> None:
        generate(
            GenerateConfig(
                model=self.policy(round_index),
                prompts=str(self.dir(round_index, "sample") / "prompts.jsonl"),
                output=str(out / "candidates.jsonl"),
                num_samples=self.config.samples_per_prompt,
                seed=self.config.seed + round_index,
                sampling=self.config.candidates,
                engine=self.config.engine,
            )
        )

    def label(self, round_index: int, out: Path) -> None:
        update = {"candidates": str(self.dir(round_index, "generate") / "candidates.jsonl")}
        update["output"] = str(out / "labels.jsonl")
        if self.config.labeler == "human":
            self.human_labels(round_index, Path(update["candidates"]), out / "labels.jsonl")
        elif self.config.labeler == "ai":
            ties = {"ties": "keep"}  # the labels train only the loop's own reward model, which reads ties
            label_ai(self.config.ai.model_copy(update=update | ties | {"seed": self.config.ai.seed + round_index}))
        else:
            simulate(
                self.config.simulated.model_copy(update=update | {"seed": self.config.simulated.seed + round_index})
            )

    def human_labels(self, round_index: int, candidates: Path, output: Path) -> None:
        """Rank each prompt's candidates in the feedback app (waits until every item is judged)."""
        rows = [Row(f"{candidates}:{i + 1}", row) for i, row in enumerate(_jsonl(candidates))]
        judged = request_judgments(self.config.human, f"loop-round-{round_index + 1}", "rank", rows)
        records = [record for item, payload in judged for record in TASKS["rank"].to_records(item, payload)]
        output.write_text("".join(json.dumps(record) + "\n" for record in records))

    def all_labels(self, round_index: int, output: Path) -> int:
        """Rebuild `output` from rounds 0..round_index's label files; returns the number of records."""
        rows = [row for r in range(round_index + 1) for row in _jsonl(self.dir(r, "label") / "labels.jsonl")]
        output.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return len(rows)

    def reward(self, round_index: int, out: Path) -> None:
        labels = out / "labels.jsonl"
        count = self.all_labels(round_index, labels)
        console.print(f"reward model on {count} label records from {round_index + 1} round(s)")
        heads = {"reward": HeadData(data=str(labels), kind=self.labels_kind())}
        reward(
            self.config.reward.model_copy(update={"model": self.config.model, "heads": heads, "output_dir": str(out)})
        )

    def optimise(self, round_index: int, out: Path) -> None:
        if self.config.optimizer == "rejection_sampling":
            data = str(self.best_candidates(round_index, out))
            sft(
                self.config.rejection_sampling.model_copy(
                    update={"model": self.policy(round_index), "data": data, "output_dir": str(out)}
                )
            )
            return
        update: dict[str, Any] = {
            "model": self.policy(round_index),
            "ref_model": self.config.model,
            "output_dir": str(out),
        }
        if self.config.optimizer == "ppo":
            reward_dir = str(self.dir(round_index, "reward"))
            prompts = str(self.dir(round_index, "sample") / "prompts.jsonl")
            update |= {"prompts": prompts, "rewards": [RewardSource(source=reward_dir)], "gold": self.config.gold}
            update["engine"] = self.config.engine
            ppo(self.config.ppo.model_copy(update=update))
            return
        labels, kind = self.dir(round_index, "reward") / "labels.jsonl", self.labels_kind()
        if kind == "ranking":
            labels, kind = best_vs_worst(labels, out / "pairs.jsonl"), "preference"
        cache = self.config.dpo.ref_cache_dir or str(self.root / "ref-logps")
        dpo(
            self.config.dpo.model_copy(update=update | {"data": str(labels), "data_kind": kind, "ref_cache_dir": cache})
        )

    def best_candidates(self, round_index: int, out: Path) -> Path:
        """`out/best.jsonl`: each prompt's best candidate by the round's reward model, as SFT records; the mean
        score of all candidates and of the chosen ones in `out/selection.json`."""
        records = cast(
            list[CandidatesRecord],
            load_records(self.dir(round_index, "generate") / "candidates.jsonl", "candidates"),
        )
        prompts = [r.prompt for r in records]
        texts = [cast(list[str], r.responses) for r in records]  # `rlhfkit generate` writes text replies
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        reward = CombinedReward([RewardSource(source=str(self.dir(round_index, "reward")))], device)
        groups = Groups(texts, score_groups(reward, prompts, texts))
        best, scores = groups.best(self.config.samples_per_prompt)
        output = out / "best.jsonl"
        output.write_text(
            "".join(
                json.dumps({"prompt": _plain(p), "completion": t, "score": s}) + "\n"
                for p, t, s in zip(prompts, best, scores.tolist(), strict=True)
            )
        )
        selection = {"candidates/score": groups.scores.mean().item(), "chosen/score": scores.mean().item()}
        _write_json(out / "selection.json", selection)
        console.print(
            f"rejection sampling: best of {self.config.samples_per_prompt} by the reward model, "
            f"score {selection['candidates/score']:.3f} (all) -> {selection['chosen/score']:.3f} (chosen)"
        )
        return output

    def evaluate(self, round_index: int, out: Path) -> None:
        config = self.config
        prompts = read_prompts(config.eval_prompts, config.eval_size)
        policy_dir = str(self.dir(round_index, "policy"))
        tokenizer = load_tokenizer(policy_dir)
        reference = load_model(config.model, tokenizer).eval()
        policy = load_model(policy_dir, tokenizer).eval()
        seeds = [config.seed + i for i in range(len(prompts))]  # the same draws every round
        engine = rollout_engine(config.engine, policy, policy_dir, tokenizer)
        metrics = evaluate_policy(
            policy, reference, tokenizer, prompts, gold_function(config.gold), config.evaluation, seeds=seeds,
            engine=engine,
        )  # fmt: skip
        labels = len(_jsonl(self.dir(round_index, "label") / "labels.jsonl"))
        row = {"round": round_index, "policy": policy_dir, "labels": labels}
        row["labels_total"] = len(_jsonl(self.dir(round_index, "reward") / "labels.jsonl"))
        reward_eval = self.dir(round_index, "reward") / "eval.json"
        if reward_eval.exists():
            accuracy = json.loads(reward_eval.read_text()).get("eval/reward/accuracy")
            row |= {"reward/accuracy": accuracy} if accuracy is not None else {}
        _write_json(out / "metrics.json", row | metrics)

    # -- the loop -----------------------------------------------------------------------------------------
    def run(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        work = {
            "sample": self.sample,
            "generate": self.generate,
            "label": self.label,
            "reward": self.reward,
            "policy": self.optimise,
            "eval": self.evaluate,
        }
        for round_index in range(self.config.rounds):
            for phase in PHASES:  # with DPO the reward model is still trained: its held-out accuracy is logged
                self.run_phase(round_index, phase, work[phase])
            self.write_rows()
        return self.link_policy()

    def write_rows(self) -> None:
        """loop.jsonl from the finished rounds' eval files (rebuilt, so a resumed run has each round once)."""
        rows = []
        for round_index in range(self.config.rounds):
            if not self.done(round_index, "eval"):
                break
            rows.append(json.loads((self.dir(round_index, "eval") / "metrics.json").read_text()))
        _write_atomically(self.root / "loop.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
        last = rows[-1]
        console.print(
            f"round {last['round'] + 1}: gold {last['eval/gold']:.3f}, KL to start {last['eval/kl']:.3f}, "
            f"{last['labels_total']} labels so far"
        )

    def link_policy(self) -> Path:
        """`policy` → the last round's policy (a relative link, replaced atomically)."""
        link = self.root / "policy"
        tmp = self.root / "policy.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(Path(f"round-{self.config.rounds - 1}") / "policy", target_is_directory=True)
        os.replace(tmp, link)
        console.print(f"{self.config.rounds} rounds done; final policy: {link}")
        return link


def loop(config: LoopConfig) -> Path:
    """Run (or resume) the online loop in `config.output_dir`; returns the final policy's directory."""
    if config.optimizer == "ppo" and config.ppo.batch_size > config.prompts_per_round:
        raise ConfigError(
            f"ppo.batch_size {config.ppo.batch_size} is larger than prompts_per_round {config.prompts_per_round}: "
            "PPO trains on the round's prompts"
        )
    return Loop(config).run()
