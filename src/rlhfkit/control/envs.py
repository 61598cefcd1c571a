"""The agent's environment: Gymnasium tasks in stable-baselines3 VecEnvs, with the reward swapped for r̂.

Stack, bottom up: the task, gymnasium's `Monitor` (true episode returns, for logging), `LearnedRewardEnv`
(r̂(o_t, a_t) in place of the task's reward; records each step with its true reward), and `VecNormalize`
for the observations. Imported only by `rlhfkit control`, with the control extra installed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper, VecNormalize

from rlhfkit.config import ConfigError
from rlhfkit.control.render import get_state
from rlhfkit.control.segments import Episode

RewardFunction = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (obs (n, d_obs), actions (n, d_act)) -> (n,)


class LearnedRewardEnv(VecEnvWrapper):
    """Gives the agent `reward_fn(o_t, a_t)` in place of the task's reward (the task's when None), and keeps
    every step with its true reward, as `Episode`s for the segments and the true returns for the log. With
    `record_states` each step also keeps the simulator's state (`render.get_state`), to draw clips from later;
    that needs the tasks in this process (make_vec_env's DummyVecEnv)."""

    def __init__(self, venv: VecEnv, encode: Callable[[np.ndarray], np.ndarray], record_states: bool = False) -> None:
        super().__init__(venv)
        self.encode = encode
        self.reward_fn: RewardFunction | None = None
        self.episodes: list[Episode] = []
        self.true_returns: list[float] = []
        self._sims = venv.get_attr("unwrapped") if record_states else None
        self._states: list[np.ndarray | None] = [None] * venv.num_envs  # those of the current observations
        self._steps: list[list[tuple[np.ndarray, np.ndarray, float, np.ndarray | None]]] = [
            [] for _ in range(venv.num_envs)
        ]

    def _sim_states(self) -> list[np.ndarray | None]:
        return [get_state(sim) for sim in self._sims] if self._sims else [None] * self.num_envs

    def reset(self) -> np.ndarray:
        self._obs = cast(np.ndarray, self.venv.reset())  # Box observations: one array
        self._states = self._sim_states()
        self._steps = [[] for _ in range(self.num_envs)]  # an interrupted episode is not recorded
        return self._obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = self.encode(actions)
        self.venv.step_async(actions)

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        next_obs, true_rewards, dones, infos = self.venv.step_wait()  # the next episode's first after a done
        obs = cast(np.ndarray, next_obs)  # Box observations: one array
        for i, steps in enumerate(self._steps):
            steps.append((self._obs[i], self._actions[i], float(true_rewards[i]), self._states[i]))
            if dones[i]:
                # a time limit does not end the task: such an episode's segments get no absorbing padding
                self._finish(i, terminated=not infos[i].get("TimeLimit.truncated", False))
                self.true_returns.append(float(infos[i]["episode"]["r"]))
        rewards = true_rewards if self.reward_fn is None else self.reward_fn(self._obs, self._actions)
        self._obs, self._states = obs, self._sim_states()  # after a done: the next episode's first
        return obs, np.asarray(rewards, dtype=np.float32), dones, infos

    def _finish(self, i: int, terminated: bool) -> None:
        obs, actions, rewards, states = zip(*self._steps[i], strict=True)
        recorded = None if states[0] is None else np.stack(states)
        self.episodes.append(
            Episode(np.stack(obs), np.stack(actions), np.asarray(rewards, np.float32), terminated, recorded)
        )
        self._steps[i] = []

    def pop(self) -> tuple[list[Episode], list[float]]:
        """The episodes, and their true returns, finished since the last call."""
        episodes, returns = self.episodes, self.true_returns
        self.episodes, self.true_returns = [], []
        return episodes, returns

    def random_steps(self, steps: int) -> None:
        """Step every environment `steps` times with uniformly random actions (an untrained policy)."""
        self.reset()
        for _ in range(steps):
            self.step(np.stack([self.action_space.sample() for _ in range(self.num_envs)]))


def action_encoder(space: gym.Space) -> tuple[int, Callable[[np.ndarray], np.ndarray]]:
    """(width, encode): the reward model's view of a batch of actions: one-hot for Discrete, flat floats for Box."""
    if isinstance(space, spaces.Discrete):
        eye = np.eye(int(space.n), dtype=np.float32)
        return int(space.n), lambda actions: eye[np.asarray(actions, dtype=np.int64) - int(space.start)]
    if isinstance(space, spaces.Box):
        width = int(np.prod(space.shape))
        return width, lambda actions: np.asarray(actions, dtype=np.float32).reshape(len(actions), width)
    raise ConfigError(f"action space {space} is not supported: expected Discrete or Box")


def seconds_per_step(env: gym.Env) -> float:
    """Environment time per step: `dt` in MuJoCo tasks and Pendulum, `tau` in CartPole, else 1 / render_fps."""
    for name in ("dt", "tau"):
        value = getattr(env.unwrapped, name, None)
        if isinstance(value, float):
            return value
    return 1 / env.metadata["render_fps"]


def describe(env_id: str) -> tuple[int, int, Callable[[np.ndarray], np.ndarray], float]:
    """(obs width, action width, action encoder, seconds per step) of a Gymnasium task; ConfigError if unusable."""
    try:
        env = gym.make(env_id)
    except gym.error.Error as error:
        raise ConfigError(f"env {env_id!r}: {error}") from None
    if not isinstance(env.observation_space, spaces.Box):
        raise ConfigError(f"env {env_id!r}: observations must be a Box, got {env.observation_space}")
    act_dim, encode = action_encoder(env.action_space)
    described = int(np.prod(env.observation_space.shape)), act_dim, encode, seconds_per_step(env)
    env.close()
    return described


def make_envs(
    env_id: str,
    n_envs: int,
    seed: int,
    encode: Callable[[np.ndarray], np.ndarray],
    normalize: bool,
    record_states: bool = False,
) -> tuple[LearnedRewardEnv, VecEnv]:
    """(the recorder, the VecEnv the agent steps: the recorder itself or VecNormalize over it); `record_states`
    for clips (a human labeler)."""
    recorder = LearnedRewardEnv(make_vec_env(env_id, n_envs=n_envs, seed=seed), encode, record_states)
    return recorder, VecNormalize(recorder, norm_reward=False) if normalize else recorder


def evaluation_env(env_id: str, seed: int, trained: VecEnv) -> VecEnv:
    """A fresh Monitor-wrapped env (true reward) with the training run's observation statistics, frozen."""
    env = make_vec_env(env_id, n_envs=1, seed=seed)
    if not isinstance(trained, VecNormalize):
        return env
    env = VecNormalize(env, training=False, norm_reward=False)
    env.obs_rms = trained.obs_rms
    return env
