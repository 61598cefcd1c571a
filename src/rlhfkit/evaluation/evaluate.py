"""`rlhfkit eval`: evaluate any set of checkpoints side by side on held-out prompts; writes `eval.json`.

Each policy (and the reference) answers every prompt once, each prompt with its own sampling seed, the same
for every policy (common random numbers: policies that agree sample the same reply, so their comparisons
are less noisy). For each policy:

- gold score, response length (tokens), distinct-2 and KL to the reference (k1 on its own samples, nats per
  token and per response): `evaluation.policy`;
- the mean score of each reward model given (`reward_models`);
- the win-rate against the reference with a Wilson interval (`evaluation.winrate`), judged by the labeler;
- a Bradley-Terry leaderboard over all of them from the labeler's judgements of every pair of policies on
  every prompt, with bootstrap intervals (`evaluation.leaderboard`);
- with a `probe`, expected calibration error and reliability bins on it (`evaluation.calibration`).

With `best_of: [1, 2, 4, 8]` and `best_of_rewards`, best-of-n of one policy (default: the reference) for
each n: max(n) replies per prompt, the best of the first n by the rewards (`generation.best_of`), with its
gold and reward scores, the analytic KL bound log n - (n - 1)/n (Stiennon et al. 2020) and a plug-in
estimate of the KL from the samples; `rlhfkit report` puts it on the reward-vs-KL frontier at the bound.

Writes `eval.json` and `samples.jsonl` (one row per prompt: the prompt and each policy's reply, a candidates
record that `rlhfkit label ai` reads) into `output_dir`; `rlhfkit report` draws them.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, ValidationInfo, field_validator
from rich import box
from rich.console import Console
from rich.table import Table

from rlhfkit import assets
from rlhfkit.config import Config, ConfigError, dump_config
from rlhfkit.data.records import Text, load_records
from rlhfkit.evaluation.calibration import ProbeItem, load_probe, probe_calibration
from rlhfkit.evaluation.leaderboard import leaderboard
from rlhfkit.evaluation.policy import sample_metrics, sample_with_kl
from rlhfkit.evaluation.winrate import Compare, LabelerSettings, make_labeler, win_rate
from rlhfkit.generation.best_of import best_of_n_kl_bound, sample_groups
from rlhfkit.generation.engine import ENGINE_HELP, EngineKind, rollout_engine
from rlhfkit.generation.sampling import SamplingSettings
from rlhfkit.models.loading import load_model, load_tokenizer
from rlhfkit.models.reward_ensemble import load_reward_model
from rlhfkit.scores import GoldFunction, Judgements, gold_function
from rlhfkit.scoring.sources import CombinedReward, RewardSource

console = Console()

EVAL_FILE = "eval.json"
SAMPLES_FILE = "samples.jsonl"


class EvalConfig(Config):
    """Evaluate checkpoints side by side: gold, reward models, KL, length, diversity, win-rate, leaderboard,
    calibration."""

    policies: list[str] = Field(default_factory=list, description="checkpoints to evaluate: dirs or model names")
    reference: str | None = Field(
        None, description="reference policy for KL and win-rate (default: the first policy); evaluated too"
    )
    prompts: str = Field("demo-prompts", description="held-out prompt records")
    limit: int = Field(64, ge=1, description="prompts used (the first N)")
    sampling: SamplingSettings = Field(
        default_factory=lambda: SamplingSettings(max_new_tokens=32, temperature=1.0),
        description="sampling of the replies (temperature 1: the KL estimate is unbiased)",
    )
    seed: int = Field(0, description="sampling seed of each prompt, the same for every policy")
    engine: EngineKind = Field("hf", description=ENGINE_HELP)
    batch_size: int = Field(32, ge=1, description="prompts (or probe options) per forward pass")
    gold: str | None = Field("vader", description="gold score: vader, length, python:module:function (None: none)")
    reward_models: list[str] = Field(default_factory=list, description="reward-model dirs to score the replies with")
    labeler: LabelerSettings = Field(default_factory=LabelerSettings, description="who judges pairs of replies")
    leaderboard: bool = Field(True, description="judge every pair of policies and fit a Bradley-Terry leaderboard")
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples of the judgements (0: no intervals)")
    confidence: float = Field(0.95, gt=0, lt=1, description="level of the win-rate and leaderboard intervals")
    prior: float = Field(1.0, ge=0, description="fictitious tied games per player against a θ = 0 player")
    probe: str | None = Field(None, description="multiple-choice probe for calibration (e.g. cloze-probe)")
    probe_scoring: Literal["continuation", "letter"] = Field(
        "continuation", description="option probabilities: of the option's text, or of its letter"
    )
    bins: int = Field(10, ge=1, description="calibration bins")
    output_dir: str = Field("runs/eval", description="where eval.json and samples.jsonl go")
    best_of: list[Annotated[int, Field(ge=1)]] = Field(
        default_factory=list, description="best-of-n of best_of_policy for each n, e.g. [1, 2, 4, 8] ([]: none)"
    )
    best_of_policy: str | None = Field(None, description="the policy best-of-n samples from (default: the reference)")
    best_of_limit: int | None = Field(None, ge=1, description="best-of-n on the first N prompts only (None: all)")
    best_of_rewards: list[RewardSource] = Field(
        default_factory=list,
        validate_default=True,
        description="what best-of-n picks by: [{source: DIR or function, weight, heads}], as PPO's rewards",
    )

    @field_validator("best_of_rewards")
    @classmethod
    def _rewards_with_best_of(cls, rewards: list[RewardSource], info: ValidationInfo) -> list[RewardSource]:
        best_of = info.data.get("best_of")
        if best_of and not rewards:
            raise ValueError(
                f"best_of={best_of} needs a reward to choose by; e.g. best_of_rewards=[{{source: runs/reward}}]"
            )
        return rewards


def player_names(config: EvalConfig) -> list[str]:
    """The reference first, then the other policies, each once."""
    if not config.policies and config.reference is None:
        raise ConfigError("policies: no checkpoint given; e.g. --set 'policies=[runs/sft, runs/ppo]'")
    reference = config.reference or config.policies[0]
    return list(dict.fromkeys([reference, *config.policies]))


def pairwise_judgements(
    compare: Compare, prompts: list[Text], texts: dict[str, list[str]], pairs: list[tuple[str, str]]
) -> dict[tuple[str, str], list[float | None]]:
    """The labeler's score of a's reply against b's, prompt by prompt, for each pair (a, b) of policies."""
    return {(a, b): compare(prompts, texts[a], texts[b]) for a, b in pairs}


def judgements_of(names: list[str], judged: dict[tuple[str, str], list[float | None]]) -> Judgements:
    """The judged pairs as (first, second, score) games; unjudged ones left out."""
    index = {name: i for i, name in enumerate(names)}
    return Judgements.of(
        [(index[a], index[b], s) for (a, b), scores in judged.items() for s in scores if s is not None]
    )


def sample_policies(
    config: EvalConfig, names: list[str], prompts: list[Text], gold: GoldFunction | None, probe: list[ProbeItem] | None
) -> tuple[dict[str, list[str]], dict[str, dict[str, Any]]]:
    """Each policy's replies, and its metrics (and calibration on the probe), one policy in memory at a time."""
    seeds = [hash((config.seed, row)) % (2**63) for row in range(len(prompts))]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_tokenizer(names[0])
    reference = load_model(names[0], tokenizer).to(device).eval()  # type: ignore[arg-type]  # transformers types `.to` as unbound
    texts, results = {}, {}
    for name in names:
        policy = reference if name == names[0] else load_model(name, tokenizer).to(device).eval()  # type: ignore[arg-type]  # transformers types `.to` as unbound
        console.print(f"sampling {len(prompts)} replies from {name}")
        engine = rollout_engine(config.engine, policy, name, tokenizer)
        samples = sample_with_kl(
            policy, reference, tokenizer, prompts, config.sampling, config.batch_size, seeds, engine
        )
        texts[name] = samples.texts
        results[name] = {"metrics": sample_metrics(prompts, samples, gold)}
        if probe is not None:
            fit = probe_calibration(policy, tokenizer, probe, config.probe_scoring, config.bins, config.batch_size)
            results[name]["calibration"] = fit.to_json()
    return texts, results


@torch.no_grad()
def reward_model_scores(paths: list[str], prompts: list[Text], texts: dict[str, list[str]]) -> dict[str, dict]:
    """{policy: {reward-model dir: mean score of its replies}}."""
    scores: dict[str, dict] = {name: {} for name in texts}
    for path in paths:
        model = load_reward_model(path).to("cuda" if torch.cuda.is_available() else "cpu")
        for name, replies in texts.items():
            scores[name][path] = model.score(prompts, replies).reward.mean().item()
    return scores


def best_of_n_points(config: EvalConfig, policy_name: str, prompts: list[Text], gold: GoldFunction | None) -> dict:
    """Best-of-n of `policy_name` for each n of `config.best_of`, from max(n) seeded replies per prompt."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_tokenizer(policy_name)
    policy = load_model(policy_name, tokenizer).to(device).eval()  # type: ignore[arg-type]  # transformers types `.to` as unbound
    reward = CombinedReward(config.best_of_rewards, torch.device(device))
    samples = max(config.best_of)
    prompts = prompts[: config.best_of_limit]
    console.print(f"best-of-n: {samples} replies to each of {len(prompts)} prompts from {policy_name}")
    groups = sample_groups(policy, tokenizer, prompts, samples, reward, config.sampling, config.batch_size, config.seed)
    points = []
    for n in sorted(set(config.best_of)):
        texts, scores = groups.best(n)
        point = {"n": n, "kl_bound": best_of_n_kl_bound(n), "kl_estimate": groups.kl_estimate(n)}
        if gold is not None:
            point["gold"] = sum(gold(p, t) for p, t in zip(prompts, texts, strict=True)) / len(texts)
        points.append(point | {"reward": scores.mean().item()})
    return {
        "policy": policy_name,
        "rewards": reward.names,
        "prompts": len(prompts),
        "samples_per_prompt": samples,
        "points": points,
    }


def evaluate(config: EvalConfig) -> Path:
    """Evaluate every policy (module docstring); returns the path of `eval.json`."""
    names = player_names(config)
    prompts: list[Text] = [r.prompt for r in load_records(assets.resolve(config.prompts), "prompt")][: config.limit]
    gold = gold_function(config.gold) if config.gold else None
    probe = load_probe(config.probe) if config.probe else None
    compare = make_labeler(config.labeler, gold)  # fails early on a bad labeler, before any sampling

    texts, results = sample_policies(config, names, prompts, gold, probe)
    if config.reward_models:
        for name, scores in reward_model_scores(config.reward_models, prompts, texts).items():
            results[name]["reward_models"] = scores
    pairs = list(itertools.combinations(names, 2)) if config.leaderboard else [(names[0], n) for n in names[1:]]
    judged = pairwise_judgements(compare, prompts, texts, pairs)
    for name in names[1:]:
        against = [None if s is None else 1 - s for s in judged[(names[0], name)]]  # judged as (reference, policy)
        results[name]["win_rate"] = win_rate(against, config.confidence).to_json()
    out: dict[str, Any] = {
        "reference": names[0],
        "prompts": len(prompts),
        "labeler": config.labeler.kind,
        "gold": config.gold,
        "policies": results,
    }
    if config.best_of:
        out["best_of_n"] = best_of_n_points(config, config.best_of_policy or names[0], prompts, gold)
    if config.leaderboard and len(names) > 1:
        games = judgements_of(names, judged)
        standings = leaderboard(names, games, config.bootstrap, config.confidence, config.prior, config.seed)
        out["leaderboard"] = {
            "standings": [s.to_json() for s in standings],
            "judgements": len(games),
            "bootstrap": config.bootstrap,
            "confidence": config.confidence,
        }
    return write_outputs(config, out, prompts, texts)


def write_outputs(config: EvalConfig, out: dict[str, Any], prompts: list[Text], texts: dict[str, list[str]]) -> Path:
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    dump_config(config, output_dir / "config.yaml")
    path = output_dir / EVAL_FILE
    path.write_text(json.dumps(out, indent=2) + "\n")
    names = list(texts)
    with (output_dir / SAMPLES_FILE).open("w") as f:
        for row, prompt in enumerate(prompts):
            responses = [texts[name][row] for name in names]
            prompt_json = prompt if isinstance(prompt, str) else [m.model_dump() for m in prompt]
            f.write(json.dumps({"prompt": prompt_json, "responses": responses, "policies": names}) + "\n")
    print_summary(out)
    console.print(f"wrote {path} and {output_dir / SAMPLES_FILE}")
    return path


def short_names(names: list[str]) -> dict[str, str]:
    """Each path by its shortest suffix of path parts that no other name ends with (runs/qs/ppo -> ppo)."""
    parts = {name: Path(name).parts or (name,) for name in names}
    short = {}
    for name, own in parts.items():
        others = [p for n, p in parts.items() if n != name]
        k = next((k for k in range(1, len(own)) if all(other[-k:] != own[-k:] for other in others)), len(own))
        short[name] = str(Path(*own[-k:]))
    return short


def print_summary(out: dict[str, Any]) -> None:
    """One row per policy: gold, KL, length, distinct-2, win-rate vs the reference, Elo, ECE; fits 80 columns
    (rows named by their short names, intervals on a second line of their cell)."""
    standings = {s["name"]: s for s in out.get("leaderboard", {}).get("standings", [])}
    short = short_names(list(out["policies"]))
    table = Table(
        title=f"{out['prompts']} prompts; reference {short[out['reference']]}; labeler {out['labeler']}",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("policy", overflow="fold", min_width=6)
    for column in ("gold", "KL/tok", "len", "dist-2", "win-rate", "Elo", "ECE"):
        table.add_column(column, justify="right", no_wrap=True)
    for name, result in out["policies"].items():
        m = result["metrics"]
        wr = result.get("win_rate")
        s = standings.get(name)
        table.add_row(
            short[name],
            f"{m['eval/gold']:.3f}" if "eval/gold" in m else "-",
            f"{m['eval/kl']:.3f}",
            f"{m['eval/length']:.1f}",
            f"{m['eval/distinct2']:.2f}",
            f"{wr['win_rate']:.2f}\n[{wr['lower']:.2f}, {wr['upper']:.2f}]" if wr else "-",
            f"{s['elo']:.0f}\n[{s['elo_lower']:.0f}, {s['elo_upper']:.0f}]" if s else "-",
            f"{result['calibration']['ece']:.3f}" if "calibration" in result else "-",
        )
    console.print(table)
    console.print("policies: " + ", ".join(f"{short[name]} = {name}" for name in out["policies"]))
    if "best_of_n" in out:
        print_best_of_n(out["best_of_n"])


def print_best_of_n(best: dict[str, Any]) -> None:
    """One row per n: gold, reward, the KL bound and the plug-in estimate (nats per response)."""
    table = Table(title=f"best-of-n of {best['policy']} by {' + '.join(best['rewards'])}", box=box.SIMPLE_HEAD)
    for column in ("n", "gold", "reward", "KL bound", "KL est."):
        table.add_column(column, justify="right")
    for p in best["points"]:
        gold = f"{p['gold']:.3f}" if "gold" in p else "-"
        table.add_row(str(p["n"]), gold, f"{p['reward']:.3f}", f"{p['kl_bound']:.3f}", f"{p['kl_estimate']:.3f}")
    console.print(table)
