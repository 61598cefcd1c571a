"""`rlhfkit report RUN_DIR [RUN_DIR ...]`: one self-contained HTML page about one or more runs.

A run is any directory holding a `metrics.jsonl` (PPO, DPO, SFT, reward: what the trainers log) or an
`eval.json` from `rlhfkit eval`; each directory given is read with the runs up to two levels below it (a
quickstart or loop directory). The page shows, each in a section with a fixed id:

- `summary`: each run's last logged reward-model score, gold score and KL;
- `stages`: what each training stage measured on held-out data, at its first and last evaluation: SFT's
  loss, the reward model's accuracy, margin and calibration, DPO's implicit-reward accuracy and margin;
- `losses`: every training run's losses (training and held-out) per step;
- `reward-kl`: reward (and gold) and KL per step, one figure per run that logs them, flagged steps shaded;
- `frontier`: gold (else reward-model) score against KL per response, every run and evaluated policy on one
  plot: the reward-vs-KL frontier of the DPO paper's sentiment figure (Rafailov et al. 2023, figure 2), with
  `rlhfkit eval`'s best-of-n drawn at its analytic KL bound log n - (n - 1)/n;
- `leaderboard`: the Bradley-Terry standings with their intervals and the win-rates, from `eval.json`;
- `calibration`: reliability diagrams, from `eval.json`;
- `samples`: replies side by side: each evaluated policy's reply to the same prompt, and each training
  run's replies at its last logged step;
- `hacking`: the reward-hacking detector's flags (`evaluation.hacking`).

Plots are PNGs drawn with matplotlib's Agg renderer and inlined as base64 `data:` URIs; there is no script,
stylesheet or image outside the file. Every text that comes from a run (replies, prompts, names) is escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from rlhfkit.config import Config
from rlhfkit.data.readers import DataError
from rlhfkit.evaluation.evaluate import EVAL_FILE
from rlhfkit.evaluation.hacking import Flag, HackingSettings, detect_hacking, spans

METRICS_FILE, SAMPLES_FILE = "metrics.jsonl", "samples.jsonl"
SKIPPED_DIRS = {"checkpoints", "tensorboard"}
SCORE_KEYS = ("reward/score", "gold/score", "eval/reward/score", "eval/gold/score", "dpo/rewards/margin")
KL_KEYS = ("kl/k1", "eval/kl/k1")
FLAG_COLOURS = {"reward-up-gold-down": "tab:red", "kl-above": "tab:purple", "kl-accelerating": "tab:orange"}


class ReportConfig(Config):
    """The HTML report over run directories."""

    runs: list[str] = Field(default_factory=list, description="run directories (given as arguments)")
    output: str | None = Field(None, description="HTML file to write (default: report.html in the first run dir)")
    title: str = Field("rlhfkit report", description="title of the page")
    samples: int = Field(6, ge=0, description="prompts shown side by side per table")
    hacking: HackingSettings = Field(default_factory=HackingSettings, description="the reward-hacking detector")


@dataclass
class Run:
    """What one run directory logged."""

    name: str
    path: Path
    metrics: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)
    evaluation: dict | None = None  # eval.json of `rlhfkit eval`
    flags: list[Flag] = field(default_factory=list)

    def has(self, key: str) -> bool:
        return any(key in row for row in self.metrics)

    def last(self, key: str) -> float | None:
        return next((row[key] for row in reversed(self.metrics) if key in row), None)


def read_jsonl(path: Path) -> list[dict]:
    """The objects of a JSONL file; a last line cut short (a run still writing) is left out."""
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise DataError(f"{path}:{number}: not a JSON object") from None
    return rows


def read_run(path: Path, name: str) -> Run | None:
    """The run in `path`, or None when it holds neither metrics.jsonl nor an eval.json of `rlhfkit eval`."""
    evaluation = None
    if (path / EVAL_FILE).exists():
        data = json.loads((path / EVAL_FILE).read_text())
        evaluation = data if isinstance(data, dict) and "policies" in data else None  # not a reward model's
    if not (path / METRICS_FILE).exists() and evaluation is None:
        return None
    return Run(name, path, read_jsonl(path / METRICS_FILE), read_jsonl(path / SAMPLES_FILE), evaluation)


def find_runs(paths: list[str], depth: int = 2) -> list[Run]:
    """Each given directory's run and those up to `depth` levels below it, in path order."""
    runs = []
    for given in paths:
        root = Path(given)
        if not root.is_dir():
            raise DataError(f"{given}: not a directory")
        queue = [(root, given, 0)]
        while queue:
            path, name, level = queue.pop(0)
            run = read_run(path, name)
            if run is not None:
                runs.append(run)
            if level < depth:
                children = sorted(p for p in path.iterdir() if p.is_dir() and p.name not in SKIPPED_DIRS)
                queue += [(child, f"{name}/{child.name}", level + 1) for child in children]
    if not runs:
        raise DataError(f"no run found in {', '.join(paths)} (no metrics.jsonl or eval.json)")
    return runs


# ---------------------------------------------------------------------------------------------------------
# Figures: each returns a PNG as a base64 string.


def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(width: float, height: float, columns: int = 1) -> tuple[Any, Any]:
    from matplotlib.figure import Figure  # the object API: no pyplot state, the Agg renderer for PNG

    figure = Figure(figsize=(width, height))
    return figure, figure.subplots(1, columns, squeeze=False)[0]


def _plot_series(ax: Any, rows: list[dict], key: str, **style: Any) -> None:
    points = [(row["step"], row[key]) for row in rows if row.get(key) is not None]
    if points:
        ax.plot(*zip(*points, strict=True), label=key, **style)


def steps_figure(run: Run) -> str:
    """Scores (left) and, when logged, KL (right) against the step; flagged stretches shaded by kind."""
    has_kl = any(run.has(key) for key in KL_KEYS)
    figure, axes = _figure(10 if has_kl else 5.5, 3.2, 2 if has_kl else 1)
    for key in SCORE_KEYS:
        _plot_series(axes[0], run.metrics, key, marker="o" if key.startswith("eval/") else None, markersize=3)
    axes[0].set(xlabel="step", ylabel="score", title="scores per step")
    if has_kl:
        for key in KL_KEYS:
            _plot_series(axes[1], run.metrics, key, marker="o" if key.startswith("eval/") else None, markersize=3)
        axes[1].set(xlabel="step", ylabel="KL (nats per response)", title="KL to the reference")
    logged = [row["step"] for row in run.metrics]
    for kind, first, last, _ in spans(run.flags, logged):
        for ax in axes:
            ax.axvspan(first - 0.5, last + 0.5, color=FLAG_COLOURS.get(kind, "grey"), alpha=0.15, lw=0)
    for ax in axes:
        if ax.has_data():
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return _png(figure)


@dataclass
class Frontier:
    """Points (KL per response, score): a line per training run, a star per evaluated policy, and a dashed
    line per best-of-n evaluation at its KL bound, each point (n, bound, score)."""

    y_label: str
    lines: dict[str, list[tuple[float, float]]]
    stars: dict[str, tuple[float, float]]
    bounds: dict[str, list[tuple[int, float, float]]] = field(default_factory=dict)


def frontier_points(runs: list[Run]) -> Frontier:
    """Gold score against KL per response if any run has a gold score, else the reward-model score.

    A training run gives its held-out evaluations (eval/kl/k1, eval/gold/score) in step order when it has
    two or more, else its training rollouts averaged over (at most) ten stretches of steps; `rlhfkit eval`
    gives one point per policy (KL per response, mean gold or first reward model's score).
    """
    has_gold = any(r.has("gold/score") or r.has("eval/gold/score") for r in runs) or any(
        "eval/gold" in p["metrics"] for r in runs if r.evaluation for p in r.evaluation["policies"].values()
    )
    score = "gold" if has_gold else "reward"
    frontier = Frontier("gold score" if has_gold else "reward-model score", {}, {})
    for run in runs:
        for prefix in ("eval/", ""):
            rows = [row for row in run.metrics if f"{prefix}kl/k1" in row and f"{prefix}{score}/score" in row]
            if len(rows) >= (2 if prefix else 1):
                points = [(row[f"{prefix}kl/k1"], row[f"{prefix}{score}/score"]) for row in rows]
                if not prefix:
                    size = max(1, len(points) // 10)
                    points = [_mean(points[i : i + size]) for i in range(0, len(points), size)]
                frontier.lines[run.name] = points
                break
        for name, policy in (run.evaluation or {}).get("policies", {}).items():
            metrics = policy["metrics"]
            rewards = list(policy.get("reward_models", {}).values())
            value = metrics.get("eval/gold") if has_gold else (rewards[0] if rewards else None)
            if value is not None and "eval/kl_per_response" in metrics:
                frontier.stars[f"{run.name}: {name}"] = (metrics["eval/kl_per_response"], value)
        best = (run.evaluation or {}).get("best_of_n")
        if best is not None:
            label = f"{run.name}: best-of-n of {best['policy']} (KL bound)"
            at_bound = [(p["n"], p["kl_bound"], p[score]) for p in best["points"] if score in p]
            frontier.bounds |= {label: at_bound} if at_bound else {}
    return frontier


def _mean(points: list[tuple[float, float]]) -> tuple[float, float]:
    return sum(p[0] for p in points) / len(points), sum(p[1] for p in points) / len(points)


def frontier_figure(frontier: Frontier) -> str:
    figure, (ax,) = _figure(7, 4.5)
    for name, points in frontier.lines.items():
        xs, ys = zip(*points, strict=True)
        line = ax.plot(xs, ys, marker="o", markersize=3, alpha=0.8, label=name)[0]
        ax.scatter(xs[-1:], ys[-1:], color=line.get_color(), s=40, edgecolor="black", zorder=3)
    for name, (x, y) in frontier.stars.items():
        ax.scatter([x], [y], marker="*", s=110, label=name, zorder=4)
    for name, at_bound in frontier.bounds.items():
        ax.plot([p[1] for p in at_bound], [p[2] for p in at_bound], linestyle="--", marker="D", ms=4, label=name)
        for n, x, y in at_bound:
            ax.annotate(f"n={n}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set(xlabel="KL(π ‖ π_ref), nats per response", ylabel=frontier.y_label)
    ax.set_title(f"{frontier.y_label} against KL", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(figure)


def leaderboard_figure(standings: list[dict], confidence: float) -> str:
    """Elo-scale ratings with their bootstrap intervals, best at the top."""
    figure, (ax,) = _figure(7, 0.5 + 0.45 * len(standings))
    ordered = list(reversed(standings))
    ys = range(len(ordered))
    ratings = [s["elo"] for s in ordered]
    errors = [[s["elo"] - s["elo_lower"] for s in ordered], [s["elo_upper"] - s["elo"] for s in ordered]]
    ax.errorbar(ratings, list(ys), xerr=errors, fmt="o", capsize=4)
    ax.set_yticks(list(ys), [s["name"] for s in ordered], fontsize=8)
    ax.set(xlabel=f"Bradley-Terry rating, Elo scale ({confidence:.0%} bootstrap interval)")
    ax.grid(alpha=0.3, axis="x")
    return _png(figure)


def reliability_figure(calibrations: dict[str, dict]) -> str:
    """Accuracy against confidence per bin, one line per policy, and the diagonal of perfect calibration."""
    figure, (ax,) = _figure(5.5, 5)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="calibrated")
    for name, fit in calibrations.items():
        full = [b for b in fit["bins"] if b["count"]]
        ax.plot(
            [b["confidence"] for b in full],
            [b["accuracy"] for b in full],
            marker="o",
            label=f"{name} (ECE {fit['ece']:.3f}, acc {fit['accuracy']:.2f})",
        )
    ax.set(xlabel="confidence (max option probability)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    ax.set_title("reliability diagram", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(figure)


# ---------------------------------------------------------------------------------------------------------
# HTML.

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; vertical-align: top; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.text { white-space: pre-wrap; max-width: 28em; }
.note { color: #666; }
img { max-width: 100%; }
"""


def esc(value: Any) -> str:
    """Any value as escaped HTML text (quotes too: also safe inside attributes)."""
    if isinstance(value, list):  # chat messages
        value = "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" for m in value if isinstance(m, dict))
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else esc(value)


def img(png: str, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{png}">'


def table(header: list[str], rows: list[list[str]], numeric: Collection[int] = (), text: bool = False) -> str:
    """A table of already escaped cells; `numeric` columns right-aligned, `text` cells keep line breaks."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"num" if i in numeric else "text" if text else ""}">{cell}</td>' for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def section(section_id: str, title: str, body: str) -> str:
    return f'<section id="{section_id}"><h2>{esc(title)}</h2>{body}</section>'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def summary_section(runs: list[Run]) -> str:
    rows = []
    for run in runs:
        steps = [row["step"] for row in run.metrics]
        kind = "eval" if run.evaluation else stage_of(run) or "metrics"
        rows.append(
            [
                esc(run.name),
                kind,
                fmt(max(steps) if steps else None),
                fmt(run.last("reward/score")),
                fmt(run.last("gold/score")),
                fmt(run.last("kl/k1")),
                fmt(len(run.flags)),
            ]
        )
    header = ["run", "stage", "last step", "reward-model score", "gold score", "KL (nats/response)", "flags"]
    return section("summary", "Runs", table(header, rows, numeric={2, 3, 4, 5, 6}))


def reward_kl_section(runs: list[Run]) -> str:
    shown = [r for r in runs if any(r.has(k) for k in (*SCORE_KEYS, *KL_KEYS))]
    body = "".join(f"<h3>{esc(r.name)}</h3>{img(steps_figure(r), f'reward and KL per step: {r.name}')}" for r in shown)
    return section("reward-kl", "Reward and KL per step", body or note("no run logs a reward or KL per step"))


def frontier_section(runs: list[Run]) -> str:
    frontier = frontier_points(runs)
    if not frontier.lines and not frontier.stars and not frontier.bounds:
        return section("frontier", "Reward against KL", note("no run logs both a KL and a score"))
    text = note(
        "Lines: a training run's held-out evaluations (or its rollouts, averaged in stretches), the last point "
        "ringed; stars: policies evaluated by rlhfkit eval; dashed: best-of-n at its analytic KL bound "
        "log n - (n - 1)/n, an upper bound on its KL. Up and to the left is better."
    )
    return section("frontier", "Reward against KL", text + img(frontier_figure(frontier), "reward against KL"))


def leaderboard_section(runs: list[Run]) -> str:
    body = ""
    for run in runs:
        evaluation = run.evaluation or {}
        board = evaluation.get("leaderboard")
        if board is None and not evaluation:
            continue
        policies = evaluation["policies"]
        rows = []
        standings = board["standings"] if board else [{"name": n} for n in policies]
        for s in standings:
            result = policies.get(s["name"], {})
            m = result.get("metrics", {})
            wr = result.get("win_rate")
            rows.append(
                [
                    esc(s["name"]),
                    f"{s['elo']:.0f} [{s['elo_lower']:.0f}, {s['elo_upper']:.0f}]" if "elo" in s else "-",
                    f"{wr['win_rate']:.3f} [{wr['lower']:.3f}, {wr['upper']:.3f}]" if wr else "reference",
                    fmt(m.get("eval/gold")),
                    *(fmt(v) for v in result.get("reward_models", {}).values()),
                    fmt(m.get("eval/kl")),
                    fmt(m.get("eval/length"), 1),
                    fmt(m.get("eval/distinct2"), 2),
                ]
            )
        first: dict[str, Any] = next(iter(policies.values()), {})
        reward_names = list(first.get("reward_models", {}))
        header = ["policy", "rating (Elo scale)", "win-rate vs reference", "gold", *map(esc, reward_names)]
        header += ["KL (nats/token)", "length (tokens)", "distinct-2"]
        confidence = board["confidence"] if board else 0.95
        body += f"<h3>{esc(run.name)}</h3>" + note(
            f"{evaluation['prompts']} prompts, reference {evaluation['reference']}, labeler {evaluation['labeler']}; "
            + (
                f"{board['judgements']} pairwise judgements, {board['bootstrap']} bootstrap resamples, "
                if board
                else ""
            )
            + f"{confidence:.0%} intervals."
        )
        body += table(header, rows, numeric=set(range(3, len(header))))
        if board:
            body += img(leaderboard_figure(board["standings"], confidence), f"leaderboard: {run.name}")
    return section("leaderboard", "Leaderboard", body or note("no eval.json: run rlhfkit eval on the checkpoints"))


def calibration_section(runs: list[Run]) -> str:
    body = ""
    for run in runs:
        fits = {
            n: p["calibration"] for n, p in (run.evaluation or {}).get("policies", {}).items() if "calibration" in p
        }
        if fits:
            body += f"<h3>{esc(run.name)}</h3>{img(reliability_figure(fits), f'reliability diagram: {run.name}')}"
    return section("calibration", "Calibration", body or note("no calibration: rlhfkit eval with probe=cloze-probe"))


def samples_section(runs: list[Run], count: int) -> str:
    body = ""
    for run in runs:
        if run.evaluation and run.samples and "responses" in run.samples[0]:
            names = run.samples[0].get("policies", [])
            rows = [[esc(s["prompt"]), *(esc(r) for r in s["responses"])] for s in run.samples[:count]]
            body += f"<h3>{esc(run.name)}: the same prompts</h3>" + table(["prompt", *map(esc, names)], rows, text=True)
    trained = [r for r in runs if r.samples and "step" in r.samples[0]]
    if trained:
        by_prompt: dict[str, dict[str, str]] = {}
        for run in trained:
            last = max(s["step"] for s in run.samples)
            for s in [s for s in run.samples if s["step"] == last][:count]:
                cell = esc(s["response"]) + (f"<br><small>score {s['score']:.3f}</small>" if "score" in s else "")
                by_prompt.setdefault(json.dumps(s["prompt"]), {})[run.name] = cell
        header = ["prompt", *(f"{esc(r.name)} (step {max(s['step'] for s in r.samples)})" for r in trained)]
        rows = [[esc(json.loads(p)), *(cells.get(r.name, "") for r in trained)] for p, cells in by_prompt.items()]
        body += "<h3>Training runs: replies at the last logged step</h3>" + table(header, rows, text=True)
    return section("samples", "Samples side by side", body or note("no samples.jsonl"))


def hacking_section(runs: list[Run], settings: HackingSettings) -> str:
    rows = []
    for run in runs:
        logged = [row["step"] for row in run.metrics]
        for kind, first, last, count in spans(run.flags, logged):
            reasons = [f.reason for f in run.flags if f.kind == kind and first <= f.step <= last]
            rows.append([esc(run.name), esc(kind), f"{first}-{last}", str(count), esc(reasons[-1])])
    text = note(
        f"Reward-model score ({settings.reward_key}) rising while the gold score ({settings.gold_key}) falls: "
        f"both trends beyond |t| = {settings.z:g} over {settings.window} logged steps; KL ({settings.kl_key}) "
        f"rising {settings.kl_growth:g}x faster than the window before (and by at least {settings.kl_min_rise:g} "
        "nats)" + (f", or above {settings.kl_max:g} nats" if settings.kl_max is not None else "") + "."
    )
    header = ["run", "flag", "steps", "flagged steps", "last reason"]
    return section(
        "hacking", "Reward hacking", text + (table(header, rows, numeric={3}) if rows else note("no step flagged"))
    )


# ---------------------------------------------------------------------------------------------------------
# Each stage's own results and training losses (sections `stages` and `losses`).

STAGE_LOSSES = {"ppo": "ppo/policy_loss", "dpo": "dpo/loss", "reward": "rm/loss", "sft": "train/loss"}
"""The loss each trainer logs, which tells which stage wrote a run (an LM run with a corpus: pretraining)."""


def stage_of(run: Run) -> str | None:
    """sft, pretrain, reward, dpo or ppo: the stage whose loss the run logs; None for an evaluation."""
    stage = next((name for name, key in STAGE_LOSSES.items() if run.has(key)), None)
    return "pretrain" if stage == "sft" and "corpus" in saved_config(run.path) else stage


def saved_config(path: Path) -> dict[str, Any]:
    """The run's config.yaml; {} when it has none or it is unreadable (it only names the stage here)."""
    try:
        config = yaml.safe_load((path / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}


def measures(run: Run, stage: str | None) -> dict[str, str]:
    """{what the stage learned: held-out metric key}: SFT's loss, the reward model's accuracy, margin and
    calibration (ECE) per head, DPO's implicit-reward accuracy and margin, PPO's held-out score and KL."""
    if stage in ("sft", "pretrain"):
        return {"held-out loss": "eval/loss", "held-out perplexity": "eval/ppl"}
    if stage == "reward":
        heads = sorted(
            {k.split("/")[1] for row in run.metrics for k in row if k.startswith("eval/") and k.endswith("/ece")}
        )
        wanted = {"accuracy": "held-out accuracy", "margin": "held-out margin", "ece": "calibration error (ECE)"}
        return {f"{what} ({head})": f"eval/{head}/{key}" for head in heads for key, what in wanted.items()}
    if stage == "dpo":
        return {
            "implicit-reward accuracy": "eval/dpo/accuracy",
            "implicit-reward margin": "eval/dpo/rewards/margin",
            "held-out loss": "eval/dpo/loss",
        }
    if stage == "ppo":
        return {"held-out reward-model score": "eval/reward/score", "held-out KL": "eval/kl/k1"}
    return {}


def first_and_last(run: Run, key: str) -> tuple[dict | None, dict | None]:
    """The first and the last row logging `key` (one row: (None, row): nothing to compare it with)."""
    rows = [row for row in run.metrics if row.get(key) is not None]
    if not rows:
        return None, None
    return (rows[0] if len(rows) > 1 else None), rows[-1]


def stage_rows(run: Run) -> list[list[str]]:
    """Table rows (run, stage, measure, start, end) of what `run`'s stage measured on held-out data."""
    stage = stage_of(run)
    rows = []
    for what, key in measures(run, stage).items():
        first, last = first_and_last(run, key)
        if last is not None:
            start = f"{first[key]:.3f} (step {first['step']})" if first else "-"
            rows.append([esc(run.name), esc(stage), esc(what), start, f"{last[key]:.3f} (step {last['step']})"])
    return rows


def stages_section(runs: list[Run]) -> str:
    rows = [row for run in runs for row in stage_rows(run)]
    if not rows:
        return section("stages", "What each stage learned", note("no training run logged a held-out evaluation"))
    text = note(
        "Each stage's own held-out results, at the first evaluation (step 0: before training) and the last: "
        "SFT's loss, the reward model's accuracy, margin and calibration, DPO's implicit-reward accuracy and "
        "margin (β log π/π_ref of chosen minus rejected), PPO's score and KL."
    )
    return section(
        "stages",
        "What each stage learned",
        text + table(["run", "stage", "measure", "start", "end"], rows, numeric={3, 4}),
    )


def loss_keys(run: Run) -> list[str]:
    """Every loss the run logs (training and held-out), in first-logged order."""
    keys = dict.fromkeys(key for row in run.metrics for key in row if key.endswith("loss"))
    return list(keys)


def losses_figure(run: Run) -> str:
    """The run's losses against the step: training losses as lines, held-out ones as dots."""
    figure, (ax,) = _figure(5.5, 3.2)
    for key in loss_keys(run):
        held_out = key.startswith("eval/")
        _plot_series(
            ax, run.metrics, key, marker="o" if held_out else None, markersize=3, linestyle=":" if held_out else "-"
        )
    ax.set(xlabel="step", ylabel="loss", title=f"{stage_of(run) or 'run'}: losses per step")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _png(figure)


def losses_section(runs: list[Run]) -> str:
    shown = [run for run in runs if stage_of(run) and loss_keys(run)]
    body = "".join(f"<h3>{esc(r.name)}</h3>{img(losses_figure(r), f'losses per step: {r.name}')}" for r in shown)
    return section("losses", "Training losses per step", body or note("no training run logged a loss"))


def render(runs: list[Run], config: ReportConfig) -> str:
    """The whole page."""
    sections = [
        summary_section(runs),
        stages_section(runs),
        losses_section(runs),
        reward_kl_section(runs),
        frontier_section(runs),
        leaderboard_section(runs),
        calibration_section(runs),
        samples_section(runs, config.samples),
        hacking_section(runs, config.hacking),
    ]
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(config.title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{esc(config.title)}</h1>"
        f"{note('Runs: ' + ', '.join(r.name for r in runs))}{''.join(sections)}</body></html>\n"
    )


def report(config: ReportConfig) -> Path:
    """Read the runs, flag each one's steps, write the page; returns its path."""
    if not config.runs:
        raise DataError("no run directory given: rlhfkit report RUN_DIR [RUN_DIR ...]")
    runs = find_runs(config.runs)
    for run in runs:
        run.flags = detect_hacking(run.metrics, **config.hacking.model_dump())
    output = Path(config.output) if config.output else Path(config.runs[0]) / "report.html"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render(runs, config))
    return output
