"""RLHF for control (Christiano et al. 2017): the segment-pair loss, query selection, the label schedule, the
reward model learned from synthetic CartPole labels, clip rendering, and `rlhfkit control` end to end."""

from __future__ import annotations

import itertools
import json
import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rlhfkit.config import ConfigError, load_config
from rlhfkit.control.labelers import HumanLabeler, SyntheticLabeler, make_labeler
from rlhfkit.control.learner import PreferenceLearner, RewardModelSettings, reward_correlation
from rlhfkit.control.render import get_state, headless_gl, render_clip, render_pair, render_segment
from rlhfkit.control.reward_model import RewardEnsemble, adapt_l2, fit, preference_probabilities, segment_pair_loss
from rlhfkit.control.segments import (
    SELECTORS,
    Comparisons,
    Episode,
    SegmentPairs,
    Segments,
    candidate_pairs,
    cut_segments,
    labels_due,
)
from rlhfkit.feedback.queue import HumanLabelSettings
from rlhfkit.feedback.store import Store
from rlhfkit.reward.losses import pairwise_logistic

headless_gl()  # before anything imports mujoco
gym = pytest.importorskip("gymnasium")
imageio = pytest.importorskip("imageio.v2")


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: on a busy 2-core machine a second torch thread only adds contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_segment_pair_loss_on_hand_values():
    # Δ = ln 3: sigma(Δ) = 0.75, so P̂[1 ≻ 2] = 0.9·0.75 + 0.05 = 0.725 and P̂[2 ≻ 1] = 0.275.
    delta = torch.tensor([math.log(3.0)] * 3 + [0.0])
    target = torch.tensor([1.0, 0.0, 0.5, 1.0])
    loss, metrics = segment_pair_loss(delta, torch.zeros(4), target, random_prob=0.1)
    expected = torch.tensor(
        [-math.log(0.725), -math.log(0.275), -(math.log(0.725) + math.log(0.275)) / 2, math.log(2.0)]
    )
    assert loss.item() == pytest.approx(expected.mean().item(), rel=1e-6)
    assert metrics["rm/accuracy"].item() == pytest.approx(1 / 3)  # strict pairs: right, wrong, Δ = 0 is wrong
    # The random-answer term bounds the loss of a confident mistake by -log(ε/2).
    wrong, _ = segment_pair_loss(torch.tensor([100.0]), torch.tensor([0.0]), torch.tensor([0.0]), 0.1)
    assert wrong.item() == pytest.approx(-math.log(0.05), rel=1e-4)
    # Without it, this is the Bradley-Terry loss of rlhfkit.reward.losses.
    plain, _ = segment_pair_loss(delta, torch.zeros(4), target, random_prob=0.0)
    assert plain.item() == pytest.approx(pairwise_logistic(delta, target).mean().item(), rel=1e-6)
    # A leading member axis: each member's mean loss, summed.
    stacked, _ = segment_pair_loss(torch.stack([delta, -delta]), torch.zeros(2, 4), target, 0.1)
    flipped, _ = segment_pair_loss(-delta, torch.zeros(4), target, 0.1)
    assert stacked.item() == pytest.approx(loss.item() + flipped.item(), rel=1e-6)


def test_adapt_l2_keeps_validation_loss_within_1_1_to_1_5_of_training():
    assert adapt_l2(1e-3, train_loss=0.2, validation_loss=0.4) == pytest.approx(1.5e-3)  # overfitting: more L2
    assert adapt_l2(1e-3, train_loss=0.2, validation_loss=0.21) == pytest.approx(1e-3 / 1.5)
    assert adapt_l2(1e-3, train_loss=0.2, validation_loss=0.26) == 1e-3


def _segments(features: np.ndarray, length: int = 4) -> Segments:
    """Segments whose every step has these obs features (N, d) and a zero action."""
    n = len(features)
    obs = np.repeat(features[:, None, :], length, 1).astype(np.float32)
    return Segments(
        obs, np.zeros((n, length, 1), np.float32), np.zeros((n, length), np.float32), np.ones((n, length), bool)
    )


def test_disagreement_ranks_a_planted_ambiguous_pair_first():
    # Labels say only "more of feature 0 is better", on segments whose feature 1 is always 0. The members agree
    # on pairs that differ in feature 0; a pair that differs only in feature 1 is extrapolation, where they
    # disagree: it must be chosen first among candidates it is planted in.
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    x = np.stack([rng.uniform(-1, 1, 200), np.zeros(200)], 1)
    first, second = _segments(x[:100]), _segments(x[100:])
    labels = (x[:100, 0] > x[100:, 0]).astype(np.float32)
    comparisons = Comparisons(SegmentPairs(first, second), labels, np.zeros(100, bool))
    model = RewardEnsemble(obs_dim=2, act_dim=1, members=5)
    fit(model, comparisons, l2=0.0, epochs=30, batch_size=32, learning_rate=3e-3, random_prob=0.1, rng=rng)

    candidates_x = np.stack([rng.uniform(-1, 1, 41), np.zeros(41)], 1)
    planted = np.array([[0.0, 3.0], [0.0, -3.0]])  # same feature 0, opposite unseen feature 1
    pool = _segments(np.concatenate([candidates_x, planted]))
    a = np.concatenate([np.arange(0, 40, 2), [41]])
    b = np.concatenate([np.arange(1, 41, 2), [42]])
    probabilities = preference_probabilities(model, pool[a], pool[b])  # (K, 21)
    assert SELECTORS["disagreement"](probabilities, 1, rng)[0] == 20
    # random picks ignore the ensemble: over many draws the planted pair is first only by chance
    firsts = [SELECTORS["random"](probabilities, 1, np.random.default_rng(s))[0] for s in range(200)]
    assert firsts.count(20) < 40


def test_candidate_pairs_are_distinct_and_unordered_unique():
    first, second = candidate_pairs(6, 200, np.random.default_rng(0))
    assert (first != second).all()
    keys = {(min(i, j), max(i, j)) for i, j in zip(first, second, strict=True)}
    assert len(keys) == len(first) == 15  # every one of C(6, 2) pairs, once


def test_label_schedule_front_loads():
    due = [labels_due(t, 1_000_000, 700, 0.25, 2e6) for t in range(0, 1_000_001, 100_000)]
    assert due[0] == 175 and due[-1] == 700
    assert all(a <= b for a, b in itertools.pairwise(due))
    assert due[5] - due[0] > due[-1] - due[5]  # more in the first half than in the second
    assert labels_due(10_000, 10_000, 100, 0.25, 10.0) == 100


def test_cut_segments_pads_after_termination_only():
    episode = Episode(np.arange(10.0)[:, None], np.zeros((10, 1)), np.ones(10, np.float32), terminated=True)
    segments = cut_segments(episode, 4, np.random.default_rng(0))
    assert (np.diff(segments.obs[:, 0, 0]) == 4).all()  # non-overlapping
    assert segments.obs[-1, segments.mask[-1].sum() - 1, 0] == 9.0  # the last one holds the termination step
    assert (segments.true_rewards[~segments.mask] == 0).all()
    assert segments.true_returns().sum() <= 10
    unfinished = Episode(np.zeros((3, 1)), np.zeros((3, 1)), np.ones(3, np.float32), terminated=False)
    assert cut_segments(unfinished, 4, np.random.default_rng(0)) is None


def test_synthetic_labeler_prefers_the_higher_true_return_and_ties_equal_ones():
    rewards = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]], np.float32)
    segments = Segments(np.zeros((3, 4, 1)), np.zeros((3, 4, 1)), rewards, np.ones((3, 4), bool))
    pairs = SegmentPairs(segments[np.array([0, 1, 2])], segments[np.array([1, 0, 1])])
    assert SyntheticLabeler().label(pairs) == [1.0, 0.0, 0.5]
    noisy = SyntheticLabeler(random_prob=1.0, seed=0)
    many = SegmentPairs(segments[np.zeros(400, int)], segments[np.ones(400, int)])
    assert 0.4 < np.mean(noisy.label(many)) < 0.6  # all answers random
    from rlhfkit.control.train import ControlConfig

    assert isinstance(make_labeler(ControlConfig(), 0.02), SyntheticLabeler)
    human = make_labeler(ControlConfig(labeler="human", output_dir="out"), 0.02)
    assert isinstance(human, HumanLabeler) and human.clips_dir == Path("out/clips") and human.batches == 0


def _cartpole_pool(seed: int, steps: int, length: int, record_states: bool = False) -> Segments:
    from rlhfkit.control.envs import action_encoder, make_envs

    _, encode = action_encoder(gym.make("CartPole-v1").action_space)
    recorder, _ = make_envs("CartPole-v1", 1, seed, encode, normalize=False, record_states=record_states)
    recorder.random_steps(steps)
    episodes, _ = recorder.pop()
    return Segments.concat([s for e in episodes if (s := cut_segments(e, length, np.random.default_rng(seed)))])


def test_cartpole_learned_reward_ranks_segments_like_the_true_reward():
    torch.manual_seed(0)
    train, test = _cartpole_pool(0, 3000, 25), _cartpole_pool(1, 3000, 25)
    model = RewardEnsemble(obs_dim=4, act_dim=2)
    assert reward_correlation(model, test) < 0  # untrained (with this seed), it ranks the segments backwards
    learner = PreferenceLearner(model, SyntheticLabeler(), RewardModelSettings(epochs=20))
    metrics = learner.update(train, due=150, rng=np.random.default_rng(0))
    assert metrics["queries"] == 150
    assert reward_correlation(model, test) > 0.8  # Spearman's ρ on segments it never saw
    # the agent's reward: unit scale, and the ended state worth 0 (so surviving pays)
    obs, actions = (torch.from_numpy(a[test.mask]).float() for a in (test.obs, test.actions))
    assert model.reward(obs, actions).mean() > 0


def test_render_clip_and_pair_write_playable_mp4(tmp_path):
    cartpole = gym.make("CartPole-v1", render_mode="rgb_array")
    cartpole.reset(seed=0)
    frames = []
    for _ in range(12):
        frames.append(cartpole.render())
        cartpole.step(cartpole.action_space.sample())
    hopper = gym.make("Hopper-v5", render_mode="rgb_array")  # MuJoCo, headless (EGL or OSMesa)
    hopper.reset(seed=0)
    hopper_frames = [hopper.render() for _ in range(7)]

    clip = imageio.mimread(render_clip(frames, tmp_path / "clip.mp4", fps=50), memtest=False)
    assert len(clip) == 12 and clip[0].shape == (400, 600, 3)
    assert np.abs(clip[5].astype(float) - frames[5]).mean() < 8  # the same picture, up to H.264 loss

    path = render_pair(frames, hopper_frames, tmp_path / "pair.mp4", fps=50)
    assert imageio.get_reader(path).get_meta_data()["fps"] == 50
    pair = imageio.mimread(path, memtest=False)
    assert len(pair) == 12  # the shorter clip holds its last frame
    assert pair[0].shape == (480, 600 + 8 + 480, 3)
    assert np.abs(pair[11][:400, :600].astype(float) - frames[11]).mean() < 8


def test_control_runs_end_to_end_and_resumes(tmp_path):
    overrides = [
        f"output_dir={tmp_path}",
        "iteration_steps=1024",
        "agent.n_steps=512",
        "total_timesteps=2048",
        "labels=40",
        "eval_episodes=2",
        "reward_model.epochs=2",
    ]
    from rlhfkit.control.train import ControlConfig, control

    control(load_config(ControlConfig, None, overrides))
    summary = json.loads(
        control(
            load_config(ControlConfig, None, [*overrides[:3], "total_timesteps=3072", *overrides[4:], "resume=true"])
        ).read_text()
    )
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1024, 2048, 3072]
    assert all("true_return" in row for row in rows)
    assert rows[0]["labels"] == 10 and rows[-1]["queries"] == 40  # a quarter up front, all by the end
    assert summary["timesteps"] == 3072 and summary["labels"] <= 40 and summary["eval/true_return"] > 0
    with pytest.raises(ConfigError, match="multiple of"):
        control(load_config(ControlConfig, None, [f"output_dir={tmp_path}", "iteration_steps=1000"]))


def test_render_segment_redraws_the_states_recorded_in_a_rollout(tmp_path):
    cartpole = gym.make("CartPole-v1", render_mode="rgb_array")
    cartpole.reset(seed=0)
    cartpole.action_space.seed(0)
    states, frames = [], []
    for _ in range(8):
        states.append(get_state(cartpole))
        frames.append(cartpole.render())
        cartpole.step(cartpole.action_space.sample())
    redrawn = render_segment("CartPole-v1", np.stack(states))
    assert len(redrawn) == 8 and not np.array_equal(redrawn[0], redrawn[-1])
    assert all(np.array_equal(a, b) for a, b in zip(redrawn, frames, strict=True))  # pixel for pixel

    hopper = gym.make("Hopper-v5", render_mode="rgb_array")  # MuJoCo: (qpos, qvel) into a separate render env
    hopper.reset(seed=0)
    hopper.action_space.seed(0)
    states, frames = [], []
    for _ in range(4):
        hopper.step(hopper.action_space.sample())
        states.append(get_state(hopper))
        frames.append(hopper.render())
    redrawn = [frame.astype(float) for frame in render_segment("Hopper-v5", np.stack(states))]
    # near-exact (rounding in the re-derived kinematics) against 0.2 from three steps of motion
    assert max(np.abs(a - b).mean() for a, b in zip(redrawn, frames, strict=True)) < 0.01
    assert np.abs(redrawn[-1] - redrawn[0]).mean() > 0.1

    # The recorder keeps each step's state beside its observation, across the reset after a fall too (CartPole's
    # observation is its state), only when asked; segments and saved comparisons carry them along.
    pool = _cartpole_pool(0, 300, 10, record_states=True)
    assert pool.states.shape == (*pool.mask.shape, 4)
    np.testing.assert_allclose(pool.states[pool.mask], pool.obs[pool.mask], atol=1e-6)
    assert _cartpole_pool(0, 300, 10).states is None
    Comparisons(SegmentPairs(pool[:2], pool[2:4]), np.ones(2), np.zeros(2, bool)).save(str(tmp_path / "c.npz"))
    loaded = Comparisons.load(str(tmp_path / "c.npz"))
    np.testing.assert_array_equal(loaded.pairs.second.states, pool.states[2:4])


def test_human_labeler_shows_clip_pairs_in_the_feedback_app_and_waits_for_the_answers(tmp_path):
    db = f"sqlite:///{tmp_path / 'feedback.db'}"
    store = Store(db)
    annotator = store.add_user("ann", "ann-password")  # "password1" is a listed common password
    pool = _cartpole_pool(0, 300, 10, record_states=True)
    pairs = SegmentPairs(pool[np.arange(5)], pool[np.arange(5, 10)])
    settings = HumanLabelSettings(db=db, annotators=["ann"], poll_seconds=0.1, timeout_minutes=2)
    labeler = HumanLabeler(settings, "CartPole-v1", 0.02, tmp_path / "clips")
    answers: list = []
    errors: list[BaseException] = []

    def label() -> None:
        try:
            answers.extend(labeler.label(pairs))
        except BaseException as error:  # re-raised in the test's thread
            errors.append(error)

    thread = threading.Thread(target=label, daemon=True)
    thread.start()
    # The annotator's choice per pair, by stored reply (0: the pair's first segment): the page shuffles them.
    wanted = [0, 1, "tie", "unsure", "both_bad"]
    deadline, judged, items = time.monotonic() + 60, 0, None
    while judged < len(wanted):
        if errors:
            raise errors[0]
        assert time.monotonic() < deadline, f"{judged} of {len(wanted)} items judged"
        projects = store.projects(annotator)
        item = store.next_item(projects[0].id, annotator) if projects else None
        if item is None:
            time.sleep(0.05)
            continue
        items = items or [i.id for i in store.items(projects[0].id)]
        want = wanted[items.index(item.id)]
        if isinstance(want, int):
            slot = "AB"[Store.display_order(item, annotator.id).index(want)]
            store.submit(item.id, annotator, {"choice": f"{slot}:2"})
        else:
            store.submit(item.id, annotator, {"choice": want})
        judged += 1
    thread.join(timeout=30)
    if errors:
        raise errors[0]
    assert not thread.is_alive() and answers == [1.0, 0.0, 0.5, None, None]

    (project,) = store.projects(annotator)
    assert project.task == "pairwise" and project.name.startswith("rlhfkit-control-batch-1-")
    for item in store.items(project.id):
        assert "CartPole-v1" in item.prompt and "10 steps" in item.prompt and all(item.responses)
        assert [Path(m).name[-6:] for m in item.media] == ["-a.mp4", "-b.mp4"]
        assert all(Path(m).is_absolute() and Path(m).is_file() for m in item.media)
    clip = imageio.mimread(item.media[1], memtest=False)
    assert len(clip) == 10 and clip[0].shape == (400, 600, 3)
    # a resumed run numbers its batches on from the clips already there
    assert HumanLabeler(settings, "CartPole-v1", 0.02, tmp_path / "clips").batches == 1
