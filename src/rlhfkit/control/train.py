"""`rlhfkit control`: deep RL from human preferences for Gymnasium tasks (Christiano et al. 2017, arXiv:1706.03741).

The loop of section 2.2, run in turns rather than asynchronously:

    random actions ─▶ segments ─▶ the first labels (a quarter of the budget) ─▶ reward model
    repeat: PPO on r̂ for `iteration_steps` ─▶ segments of the episodes just finished ─▶ the pairs the
            ensemble disagrees on most, as many as the label schedule makes due ─▶ labels ─▶ refit, renormalise

The agent, stable-baselines3's PPO, never sees the task's reward with `reward: learned`; gymnasium's Monitor
logs the true returns. `reward: true` trains the same agent on the task's reward: the baseline.
stable-baselines3 and gymnasium (the control extra) are imported only when the command runs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import torch
from pydantic import Field
from rich.console import Console

from rlhfkit.config import Config, ConfigError, dump_config
from rlhfkit.control.labelers import make_labeler
from rlhfkit.control.learner import PreferenceLearner, RewardModelSettings
from rlhfkit.control.render import headless_gl
from rlhfkit.control.reward_model import RewardEnsemble
from rlhfkit.control.segments import Episode, Segments, cut_segments, labels_due
from rlhfkit.feedback.queue import HumanLabelSettings
from rlhfkit.training.progress import MetricsLog, progress_bar

if TYPE_CHECKING:
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecEnv


class AgentSettings(Config):
    """stable-baselines3 PPO; the defaults are PPO's MuJoCo settings (Schulman et al. 2017, arXiv:1707.06347)."""

    n_envs: int = Field(1, ge=1, description="environments stepped in parallel (in one process)")
    n_steps: int = Field(2048, ge=1, description="steps per environment per PPO rollout")
    batch_size: int = Field(64, ge=1, description="PPO minibatch size")
    n_epochs: int = Field(10, ge=1, description="PPO epochs over each rollout")
    learning_rate: float = Field(3e-4, gt=0, description="Adam learning rate of the policy and value networks")
    gamma: float = Field(0.99, gt=0, le=1, description="discount γ")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="GAE λ")
    clip_range: float = Field(0.2, gt=0, description="PPO's clipping ε")
    ent_coef: float = Field(0.0, ge=0, description="entropy bonus coefficient")
    hidden: int = Field(64, ge=1, description="units in each of the two hidden layers of the policy and value nets")
    normalize_observations: bool = Field(True, description="running mean/std of the observations (VecNormalize)")


class ControlConfig(Config):
    """An agent trained on a reward model of preferences between clips of its behaviour."""

    env: str = Field("CartPole-v1", description="Gymnasium id: CartPole-v1, Pendulum-v1, Hopper-v5, Walker2d-v5, ...")
    output_dir: str = Field("runs/control", description="checkpoint/, metrics.jsonl, summary.json")
    reward: Literal["learned", "true"] = Field(
        "learned", description="learned: the reward model of the labels; true: the task's reward (the baseline)"
    )
    total_timesteps: int = Field(100_000, ge=1, description="environment steps of RL")
    iteration_steps: int = Field(4096, ge=1, description="RL steps between reward-model updates")
    labels: int = Field(700, ge=2, description="pairs asked over the whole run")
    initial_label_fraction: float = Field(0.25, ge=0, le=1, description="share asked before RL starts (paper: 25%)")
    schedule_timescale: float = Field(
        2e6, gt=0, description="τ: after T steps labels come at a rate ∝ τ/(T + τ) (paper: 2e6)"
    )
    segment_seconds: float = Field(1.5, gt=0, description="segment length in seconds of environment time (1-2 s)")
    labeler: Literal["synthetic", "human"] = Field("synthetic", description="synthetic (the true reward) or human")
    labeler_temperature: float = Field(0.0, ge=0, description="synthetic: T in sigma((R¹ - R²)/T) (0: exact)")
    labeler_random_prob: float = Field(0.0, ge=0, le=1, description="synthetic: chance of a random answer")
    human: HumanLabelSettings = Field(
        default_factory=HumanLabelSettings,
        description="human: the feedback store; a pairwise project PROJECT-control-batch-N-HASH per batch",
    )
    reward_model: RewardModelSettings = Field(default_factory=RewardModelSettings, description="reward model")
    agent: AgentSettings = Field(default_factory=AgentSettings, description="PPO agent")
    eval_episodes: int = Field(10, ge=0, description="deterministic episodes on the true reward after training")
    seed: int = Field(0, description="seed of the environments, agent, reward model and queries")
    num_threads: int = Field(1, ge=1, description="torch threads")
    resume: bool = Field(False, description="continue from output_dir/checkpoint")


def _segments(episodes: list[Episode], length: int, rng: np.random.Generator) -> Segments | None:
    parts = [s for e in episodes if (s := cut_segments(e, length, rng)) is not None]
    return Segments.concat(parts) if parts else None


def _new_agent(config: ControlConfig, venv: VecEnv) -> PPO:
    from stable_baselines3 import PPO

    a = config.agent
    return PPO(
        "MlpPolicy",
        venv,
        n_steps=a.n_steps,
        batch_size=a.batch_size,
        n_epochs=a.n_epochs,
        learning_rate=a.learning_rate,
        gamma=a.gamma,
        gae_lambda=a.gae_lambda,
        clip_range=a.clip_range,
        ent_coef=a.ent_coef,
        policy_kwargs={"net_arch": [a.hidden, a.hidden]},
        seed=config.seed,
        device="cpu",
        verbose=0,
    )


def _save_checkpoint(out: Path, agent: PPO, venv: VecEnv, learner: PreferenceLearner, timesteps: int) -> None:
    """Agent, observation statistics, reward model and labels, written beside the last checkpoint, then swapped."""
    from stable_baselines3.common.vec_env import VecNormalize

    partial = out / "checkpoint.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    agent.save(partial / "agent.zip")
    if isinstance(venv, VecNormalize):
        venv.save(str(partial / "vecnormalize.pkl"))
    learner.save(partial)
    (partial / "state.json").write_text(json.dumps({"timesteps": timesteps}))
    shutil.rmtree(out / "checkpoint", ignore_errors=True)
    partial.rename(out / "checkpoint")


def _load_checkpoint(out: Path, venv: VecEnv, learner: PreferenceLearner) -> tuple[PPO, VecEnv, int]:
    """(agent, its VecEnv with the saved observation statistics, timesteps done); fills the learner."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecNormalize

    path = out / "checkpoint"
    if not (path / "state.json").exists():
        raise ConfigError(f"resume: no checkpoint in {path}")
    if isinstance(venv, VecNormalize):
        venv = VecNormalize.load(str(path / "vecnormalize.pkl"), venv.venv)
    learner.load(path)
    agent = PPO.load(path / "agent.zip", env=venv, device="cpu")
    return agent, venv, json.loads((path / "state.json").read_text())["timesteps"]


def _evaluate(config: ControlConfig, venv: VecEnv, agent: PPO) -> dict[str, float]:
    """Mean and std of the true return of the deterministic policy over fresh episodes."""
    from stable_baselines3.common.evaluation import evaluate_policy

    from rlhfkit.control.envs import evaluation_env

    env = evaluation_env(config.env, config.seed + 10_000, venv)
    mean, std = evaluate_policy(agent, env, n_eval_episodes=config.eval_episodes, deterministic=True)
    return {"eval/true_return": float(cast(float, mean)), "eval/true_return_std": float(cast(float, std))}


def control(config: ControlConfig) -> Path:
    """Run (or resume) `rlhfkit control` in config.output_dir; returns its summary.json."""
    rollout = config.agent.n_steps * config.agent.n_envs
    if config.iteration_steps % rollout:
        raise ConfigError(
            f"iteration_steps {config.iteration_steps} must be a multiple of agent.n_steps × agent.n_envs "
            f"({rollout}): PPO updates after whole rollouts"
        )
    headless_gl()  # before mujoco is imported
    try:
        from rlhfkit.control.envs import describe, make_envs
    except ImportError as error:
        message = f"rlhfkit control needs the control extra: pip install 'rlhfkit[control]' ({error})"
        raise ConfigError(message) from None
    torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    console = Console()
    out = Path(config.output_dir)
    dump_config(config, out / "config.yaml")

    obs_dim, act_dim, encode, dt = describe(config.env)
    labeler = make_labeler(config, dt)
    length = max(1, round(config.segment_seconds / dt))
    human = config.labeler == "human" and config.reward == "learned"
    recorder, venv = make_envs(
        config.env, config.agent.n_envs, config.seed, encode, config.agent.normalize_observations, human
    )
    rm = config.reward_model
    learner = PreferenceLearner(RewardEnsemble(obs_dim, act_dim, rm.members, rm.hidden), labeler, rm)
    learned = config.reward == "learned"
    if learned:
        recorder.reward_fn = learner.reward
    if config.resume:
        agent, venv, timesteps = _load_checkpoint(out, venv, learner)
    else:
        agent, timesteps = _new_agent(config, venv), 0
    log = MetricsLog(out / "metrics.jsonl", enabled=True, resume_after=timesteps)
    console.print(f"{config.env}: {config.reward} reward; segments of {length} steps ({length * dt:.2f} s)")

    def learn_reward(timesteps: int) -> dict[str, float]:
        """Segments of the episodes just finished → due labels → refit (learned reward only)."""
        episodes, returns = recorder.pop()
        metrics = {"true_return": float(np.mean(returns))} if returns else {}
        rng = np.random.default_rng([config.seed, timesteps])
        pool = _segments(episodes, length, rng) if learned else None
        if pool is not None:
            due = labels_due(
                timesteps,
                config.total_timesteps,
                config.labels,
                config.initial_label_fraction,
                config.schedule_timescale,
            )
            metrics |= learner.update(pool, due, rng)
        return metrics

    if learned and not config.resume:  # the first labels, before any RL (appendix A.1)
        recorder.random_steps(-(-config.iteration_steps // recorder.num_envs))
        log.write(0, learn_reward(0))
    with progress_bar() as bar:
        task = bar.add_task(config.env, total=config.total_timesteps, completed=timesteps)
        while timesteps < config.total_timesteps:
            agent.learn(config.iteration_steps, reset_num_timesteps=False)  # rollouts and PPO updates on r̂
            timesteps = agent.num_timesteps
            metrics = learn_reward(timesteps)
            log.write(timesteps, metrics)
            _save_checkpoint(out, agent, venv, learner, timesteps)
            description = f"{config.env} true return {metrics.get('true_return', float('nan')):.0f}"
            bar.update(task, completed=timesteps, description=description)
    log.close()
    summary: dict[str, Any] = {
        "env": config.env,
        "reward": config.reward,
        "timesteps": timesteps,
        "labels": len(learner.comparisons or ()),
        **(_evaluate(config, venv, agent) if config.eval_episodes else {}),
    }
    path = out / "summary.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    console.print(summary)
    return path
