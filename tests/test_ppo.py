"""`rlhfkit ppo` (and grpo, rloo) on a tiny model: the first step, the critics, LoRA, a rising reward, exact
resume, and configurations refused before anything is written."""

import json
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM

from rlhfkit import assets
from rlhfkit.cli import main
from rlhfkit.config import ConfigError, load_config
from rlhfkit.data.records import read_prompts
from rlhfkit.models.loading import load_model, load_tokenizer
from rlhfkit.models.reward import RewardModel
from rlhfkit.ops import last_index
from rlhfkit.ppo import rollout as rollout_module
from rlhfkit.ppo.controllers import KLController, RunningMoments
from rlhfkit.ppo.model import build_actor_critic, folded_reward_head
from rlhfkit.ppo.rollout import collect_rollout, forward_rows, row_seeds
from rlhfkit.ppo.train import GRPOConfig, PPOConfig, PPOState, RLOOConfig, ppo, ppo_losses, value_learning_rates
from rlhfkit.scores import vader
from rlhfkit.scoring.sources import CombinedReward, RewardSource
from rlhfkit.training.run_loop import build_optimizer


@pytest.fixture(scope="module")
def reward_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """An untrained reward model on the tiny backbone: a fixed random linear read-out of the last hidden state."""
    torch.manual_seed(1)
    model = RewardModel.from_pretrained(str(tiny_model_dir), heads=["reward"])
    with torch.no_grad():
        model.head.weight.mul_(20)  # a spread of rewards worth climbing
    return model.save(tmp_path_factory.mktemp("reward") / "rm")


@pytest.fixture(scope="module")
def sentiment_reward_dir(tmp_path_factory: pytest.TempPathFactory, austen_paragraphs: list[str]) -> Path:
    """A reward model on tiny-austen whose head is a linear probe: the direction from the mean last hidden
    state of Austen's most negative sentences (VADER) to that of her most positive ones, normalised."""
    candidates = {s.strip() + "." for p in austen_paragraphs for s in p.split(".") if 20 < len(s) < 120}
    sentences = sorted(candidates, key=lambda s: (vader("", s), s))
    negative, positive = sentences[:150], sentences[-150:]
    model = RewardModel.from_pretrained("tiny-austen", heads=["sentiment"])
    with torch.no_grad():
        hidden = {}
        for name, texts in (("negative", negative), ("positive", positive)):
            ids, mask = model.collate([model.encode("", t) for t in texts])
            states = model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
            hidden[name] = states[torch.arange(len(texts)), last_index(mask)].mean(0)
        model.head.weight.copy_((hidden["positive"] - hidden["negative"])[None])
        model.head.bias.zero_()
    model.fit_normalization([""] * 300, negative + positive)
    return model.save(tmp_path_factory.mktemp("sentiment") / "rm")


def small_config(out: Path, model_dir: Path, rewards: list[dict], **extra) -> PPOConfig:
    settings = {
        "model": str(model_dir),
        "prompts": "demo-prompts",
        "rewards": rewards,
        "output_dir": str(out),
        "batch_size": 8,
        "mini_batch_size": 4,
        "micro_batch_size": 2,  # two micro-batches per optimizer step: gradient accumulation
        "ppo_epochs": 2,
        "max_steps": 3,
        "learning_rate": 1e-3,
        "sampling": {"max_new_tokens": 8},
        "eval_every": 0,
        "num_threads": 2,
        "log_samples": 2,
    }
    return PPOConfig.model_validate(settings | extra)


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def first_rollout(config: PPOConfig):
    """A state before any update and the first rollout of `config`."""
    accelerator = Accelerator(cpu=True)
    tokenizer = load_tokenizer(config.model)
    policy = load_model(config.model, tokenizer, config.lora)
    model = build_actor_critic(
        policy, config.model, tokenizer, config.value_model, config.rewards[0].source, config.sampling.temperature
    )
    reference = None if config.lora.enabled else load_model(config.model, tokenizer).eval()
    reward = CombinedReward(config.rewards, accelerator.device)
    rows = list(range(config.batch_size))
    prompts = [read_prompts(config.prompts)[r // config.group_size] for r in rows]  # G consecutive rows a prompt
    kl = KLController(config.kl_coef)
    rollout, stats = collect_rollout(
        accelerator, model, reference, tokenizer, prompts, rows, row_seeds(0, 1, rows), reward, kl,
        RunningMoments(), config.shaping, config.sampling, config.micro_batch_size,
    )  # fmt: skip
    optimizer, scheduler = build_optimizer(model, config, 1)
    state = PPOState(config, accelerator, model, optimizer, scheduler, tokenizer.pad_token_id, [])
    return state, rollout, stats


@pytest.mark.parametrize("critic", ["shared", "policy", "reward"])
def test_first_step_has_zero_kl_and_ratio_one(tmp_path: Path, tiny_model_dir: Path, reward_dir: Path, critic: str):
    rewards = [{"source": str(reward_dir)}, {"source": "length", "weight": 0.1}]
    config = small_config(tmp_path, tiny_model_dir, rewards, critic=critic, missing_eos_penalty=1.0)
    state, rollout, stats = first_rollout(config)
    assert stats["kl/k1"] == 0 and stats["kl/k3"] == 0
    # the score is the weighted sum of the terms; with KL 0 the return is the score minus the EOS penalty
    assert stats["reward/score"] == pytest.approx(stats["reward/rm"] + 0.1 * stats["reward/length"], abs=1e-5)
    missing = 1 - stats["response/ended"]
    assert stats["reward/total"] == pytest.approx(stats["reward/score"] - missing, abs=1e-5)
    _, per_token = ppo_losses(state, rollout, [0, 1, 2])
    assert per_token["ppo/ratio"].numel() == int(rollout.mask[:3].sum())
    # Same weights and temperature: ratio 1. The rollout and the update batch rows differently, and BLAS rounds
    # float32 sums by batch shape, so "1" means within float32 rounding (a wrong temperature is off by far more).
    torch.testing.assert_close(per_token["ppo/ratio"], torch.ones_like(per_token["ppo/ratio"]), rtol=0, atol=1e-5)
    first = rollout.sequences[0]
    ids, scored = torch.tensor([first.input_ids]), torch.tensor([first.loss_mask[1:]]).bool()
    logprobs, values, _ = state.model(ids, torch.ones_like(ids), scored)
    real = rollout.mask[0].bool()
    assert torch.allclose(rollout.values[0][real], values, atol=1e-5)  # the critic's V(s_t), kept for clipping
    assert torch.allclose(rollout.logprobs[0][real], logprobs, atol=1e-5)
    assert not per_token["ppo/clipped"].any()


def test_critic_from_the_reward_model_starts_at_its_score(tiny_model_dir: Path):
    model = RewardModel.from_pretrained(str(tiny_model_dir), heads=["helpful", "harmless"], weights={"helpful": 1.0})
    model.weights = {"helpful": 1.0, "harmless": 2.0}
    model.gain.copy_(torch.tensor([2.0, 0.5]))
    model.bias.copy_(torch.tensor([0.1, -0.3]))
    head = folded_reward_head(model)
    hidden = torch.randn(5, model.head.in_features)
    heads = model.head(hidden) * model.gain + model.bias
    assert torch.allclose(head(hidden).squeeze(-1), heads[:, 0] + 2 * heads[:, 1], atol=1e-5)


def test_lora_reference_is_the_policy_with_adapters_off(tmp_path: Path, tiny_model_dir: Path):
    lora = {"enabled": True, "r": 4, "alpha": 8, "target_modules": ["c_attn"]}
    config = small_config(tmp_path, tiny_model_dir, [{"source": "length"}], critic="shared", lora=lora)
    state, rollout, stats = first_rollout(config)
    assert stats["kl/k1"] == 0
    policy = state.model.policy
    with torch.no_grad():
        for p in policy.parameters():  # move the adapters: the policy changes, the reference must not
            if p.requires_grad:
                p.add_(0.05)
    base = load_model(str(tiny_model_dir), load_tokenizer(str(tiny_model_dir)))
    ids = torch.tensor([rollout.sequences[0].input_ids])
    scored = torch.tensor([rollout.sequences[0].loss_mask[1:]]).bool()
    ones = torch.ones_like(ids)
    ref = state.model.reference_logprobs(None, ids, ones, scored)
    logp, _, _ = state.model(ids, ones, scored)
    expected = torch.log_softmax(base(ids).logits[:, :-1][scored], -1).gather(-1, ids[:, 1:][scored][:, None])
    assert torch.allclose(ref, expected.squeeze(-1), atol=1e-5)
    assert not torch.allclose(logp, ref, atol=1e-3)


def test_ppo_raises_the_reward_model_score(tmp_path: Path, sentiment_reward_dir: Path):
    config = small_config(
        tmp_path, Path(assets.resolve("tiny-austen")), [{"source": str(sentiment_reward_dir)}], max_steps=8,
        batch_size=32, mini_batch_size=16, micro_batch_size=16, learning_rate=1e-4, critic="shared",
        eval_prompts="demo-prompts", eval_size=64, sampling={"max_new_tokens": 12},
    )  # fmt: skip
    out = ppo(config)
    logged = metrics(out)
    start, end = logged[0]["eval/reward/score"], logged[-1]["eval/reward/score"]  # the same 64 held-out prompts
    assert end > start + 0.3, (start, end)
    scores = [m["reward/score"] for m in logged[1:]]
    assert sum(scores[-3:]) > sum(scores[:3]), scores
    assert logged[-1]["kl/k1"] > 0  # it moved away from the reference to get there
    assert AutoModelForCausalLM.from_pretrained(out) is not None
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 * 8 and {"prompt", "response", "score"} <= set(samples[0])


def test_a2c_and_ptx_and_adaptive_beta(tmp_path: Path, tiny_model_dir: Path):
    config = small_config(
        tmp_path, tiny_model_dir, [{"source": "length"}], algo="a2c", ptx_coef=0.5, ptx_data="austen",
        ptx_batch_size=4, ptx_max_length=16, kl_target=0.01, kl_horizon=16, critic="shared",
    )  # fmt: skip
    logged = metrics(ppo(config))
    assert all("ppo/clipped" not in m for m in logged)  # a2c: no ratio clipping
    assert all(0 < m["ptx/loss"] < 20 for m in logged)
    betas = [m["kl/beta"] for m in logged]
    assert betas[0] == 0.05 and betas[-1] != betas[0]  # adaptive: β moved


RESUMED = {
    "ppo": ({"reward_norm": True, "kl_target": 1.0, "kl_horizon": 16}, ("kl/beta", "ppo/policy_loss", "value/loss")),
    # G = 2 samples per prompt spread over the rows; KL as a loss term, sequence means, GSPO and clip-higher
    "grpo": (
        {"algo": "grpo", "group_size": 2, "kl_placement": "loss", "kl_target": 1.0, "kl_horizon": 16,
         "loss_aggregation": "sequence_mean", "importance_ratio": "sequence", "cliprange_high": 0.28},
        ("kl/beta", "ppo/policy_loss", "ppo/kl_loss"),
    ),
}  # fmt: skip


@pytest.mark.parametrize("algo", RESUMED)
def test_resume_reproduces_the_uninterrupted_run(tmp_path: Path, tiny_model_dir: Path, reward_dir: Path, algo: str):
    extra, keys = RESUMED[algo]
    settings = {"max_steps": 4, "save_every": 2, **extra}
    rewards = [{"source": str(reward_dir)}]
    full = ppo(small_config(tmp_path / "a", tiny_model_dir, rewards, **settings))
    out = ppo(small_config(tmp_path / "b", tiny_model_dir, rewards, **settings))
    for path in out.iterdir():  # as if killed after the step-2 checkpoint
        if path.is_file() and path.name not in ("metrics.jsonl", "samples.jsonl"):
            path.unlink()
    ppo(small_config(tmp_path / "b", tiny_model_dir, rewards, **settings, resume=True))
    a, b = metrics(full), metrics(out)
    assert [m["step"] for m in a] == [m["step"] for m in b] == [1, 2, 3, 4]
    for x, y in zip(a, b, strict=True):
        for key in ("reward/score", "kl/k1", *keys):
            assert x[key] == pytest.approx(y[key], rel=1e-6, abs=1e-7), (x["step"], key)
    pa = AutoModelForCausalLM.from_pretrained(full).state_dict()
    pb = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert all(torch.allclose(pa[k], pb[k], atol=1e-6) for k in pa)
    samples = [
        [json.loads(line)["step"] for line in (run / "samples.jsonl").read_text().splitlines()] for run in (full, out)
    ]
    assert samples[0] == samples[1] == [1, 1, 2, 2, 3, 3, 4, 4]  # the resumed steps' samples once each


def test_grpo_raises_the_reward_model_score_without_a_critic(tmp_path: Path, sentiment_reward_dir: Path):
    config = GRPOConfig.model_validate(
        {
            "model": "tiny-austen", "prompts": "demo-prompts", "rewards": [{"source": str(sentiment_reward_dir)}],
            "output_dir": str(tmp_path), "batch_size": 32, "group_size": 4, "mini_batch_size": 16,
            "micro_batch_size": 16, "max_steps": 6, "learning_rate": 2e-4, "ppo_epochs": 2, "kl_coef": 0.0, "sampling":
            {"max_new_tokens": 12}, "eval_prompts": "demo-prompts", "eval_size": 32, "eval_every": 0,
            "num_threads": 2, "log_samples": 0, "dynamic_sampling": True,
        }
    )  # fmt: skip
    assert not config.uses_reference  # β = 0: no reference model is loaded
    logged = metrics(ppo(config))
    start, end = logged[0]["eval/reward/score"], logged[-1]["eval/reward/score"]  # the same 32 held-out prompts
    assert end > start + 0.3, (start, end)
    assert all("value/loss" not in m and "kl/k1" not in m for m in logged)  # no critic, no reference
    assert all(m["groups/dropped"] == 0 for m in logged[1:])  # a continuous reward: no group is all equal


def test_on_policy_update_reads_old_logprobs_in_the_update(
    tmp_path: Path, tiny_model_dir: Path, reward_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    """One optimizer step per rollout, no critic, no reference: the rollout skips its policy forward and the
    update trains exactly as if log π_old had been read at rollout time."""
    settings = {"algo": "grpo", "group_size": 2, "ppo_epochs": 1, "mini_batch_size": 8, "kl_coef": 0.0}
    rewards = [{"source": str(reward_dir)}]
    config = small_config(tmp_path / "skip", tiny_model_dir, rewards, max_steps=2, **settings)
    assert config.on_policy_update
    assert not small_config(tmp_path, tiny_model_dir, rewards, **settings | {"ppo_epochs": 2}).on_policy_update
    assert not small_config(tmp_path, tiny_model_dir, rewards, **settings | {"mini_batch_size": 4}).on_policy_update
    forwards = []
    monkeypatch.setattr(rollout_module, "forward_rows", lambda *a, **k: forwards.append(1) or forward_rows(*a, **k))
    skipped = ppo(config)
    assert forwards == []  # no policy forward at rollout time
    monkeypatch.setattr(PPOConfig, "on_policy_update", property(lambda self: False))
    read = ppo(small_config(tmp_path / "read", tiny_model_dir, rewards, max_steps=2, **settings))
    assert len(forwards) == 2
    for x, y in zip(metrics(skipped), metrics(read), strict=True):
        for key in ("reward/score", "policy/entropy", "ppo/policy_loss", "train/grad_norm"):
            assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-6), (x["step"], key)
    pa = AutoModelForCausalLM.from_pretrained(skipped).state_dict()
    pb = AutoModelForCausalLM.from_pretrained(read).state_dict()
    assert all(torch.allclose(pa[k], pb[k], atol=1e-5) for k in pa)


def test_critic_free_rollout_has_group_advantages_and_no_value_head(tmp_path: Path, tiny_model_dir: Path):
    config = small_config(tmp_path, tiny_model_dir, [{"source": "length"}], algo="rloo", group_size=4)
    state, rollout, stats = first_rollout(config)
    assert state.model.value_head is None and state.model.critic is None
    assert {id(p) for p in state.model.parameters()} == {id(p) for p in state.model.policy.parameters()}
    lengths = rollout.scores.view(2, 4)  # the length reward: words per response
    sequence = rollout.advantages.sum(1) / rollout.mask.sum(1)  # the same advantage on every token of a row
    expected = lengths - (lengths.sum(1, keepdim=True) - lengths) / 3  # leave-one-out, hand-written
    assert torch.allclose(sequence.view(2, 4), expected, atol=1e-5)
    assert "ppo/explained_variance" not in stats and 0 <= stats["groups/all_equal"] <= 1
    _, per_token = ppo_losses(state, rollout, [0, 1, 2])
    assert "value/loss" not in per_token


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["algo=grpo", "group_size=1"], "group_size"),
        (["algo=rloo", "group_size=4", "batch_size=6", "mini_batch_size=2"], "group_size 4"),
        (["algo=grpo", "group_size=4", "critic=shared"], "critic"),
        (["algo=reinforce_pp", "vf_coef=0.5"], "vf_coef"),
        (["dynamic_sampling=true"], "dynamic_sampling"),
        (["load_reference=false"], "load_reference"),
    ],
)
def test_bad_combinations_are_config_errors(overrides: list[str], field: str):
    with pytest.raises(ConfigError, match=field):
        load_config(PPOConfig, None, overrides)


def test_cli_refuses_a_bad_grpo_config_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["grpo", "--set", "group_size=1", "--set", f"output_dir={out}"])
    assert exit_info.value.code == 2
    assert "group_size 1: algo grpo compares G ≥ 2 samples" in capsys.readouterr().err
    assert not out.exists()


def test_grpo_and_rloo_commands_are_presets_of_the_ppo_stage():
    grpo, rloo = load_config(GRPOConfig), load_config(RLOOConfig)
    assert (grpo.algo, grpo.group_size, grpo.kl_placement, grpo.loss_aggregation) == (
        "grpo",
        4,
        "loss",
        "sequence_mean",
    )
    assert (rloo.algo, rloo.group_size, rloo.kl_placement) == ("rloo", 4, "reward")
    plain = load_config(PPOConfig)  # unchanged: one sample per prompt, GAE, a critic, KL in the reward
    assert (plain.algo, plain.group_size, plain.kl_placement, plain.uses_reference) == ("ppo", 1, "reward", True)


def test_a_prompt_longer_than_the_context_loses_its_start(
    tmp_path: Path, tiny_model_dir: Path, reward_dir: Path, capsys: pytest.CaptureFixture[str]
):
    prompts = [{"prompt": "Emma was"}] * 7 + [{"prompt": " ".join(["Emma walked to Hartfield."] * 60)}]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    config = small_config(tmp_path / "out", tiny_model_dir, [{"source": str(reward_dir)}], prompts=str(path))
    ppo(config.model_copy(update={"max_steps": 1, "ppo_epochs": 1}))  # the 128-token context: IndexError before
    assert (
        "[data] 1 prompts longer than 120 tokens (context - max_new_tokens) lose their start" in capsys.readouterr().out
    )
    assert [m["step"] for m in metrics(tmp_path / "out")] == [1]


def test_reward_sources_combine_with_weights():
    reward = CombinedReward(
        [RewardSource(source="length", weight=2.0), RewardSource(source="length", weight=-0.5)], torch.device("cpu")
    )
    total, terms = reward(["p", "q"], ["one two three", "one"])
    assert reward.names == ["length-0", "length-1"]
    assert torch.allclose(total, torch.tensor([4.5, 1.5]))
    assert torch.equal(terms["length-0"], torch.tensor([3.0, 1.0]))


def test_the_critic_can_have_its_own_learning_rate(tmp_path: Path, tiny_model_dir: Path):
    config = small_config(tmp_path, tiny_model_dir, [{"source": "length"}], value_learning_rate=1e-2)
    tokenizer = load_tokenizer(config.model)
    model = build_actor_critic(load_model(config.model, tokenizer), config.model, tokenizer, "policy", None, 1.0)
    optimizer, _ = build_optimizer(model, config, 10, value_learning_rates(model, config))
    policy_group, critic_group = optimizer.param_groups
    assert policy_group["lr"] == 1e-3 and critic_group["lr"] == 1e-2
    critic_params = {id(p) for p in [*model.critic.parameters(), *model.value_head.parameters()]}
    assert {id(p) for p in critic_group["params"]} == critic_params
    assert not critic_params & {id(p) for p in policy_group["params"]}
