"""Registers each pipeline stage as an `rlhfkit` command (imported by the CLI on start-up)."""

from __future__ import annotations

from rlhfkit.cli import cai_app, label_app, stage_command
from rlhfkit.dpo.train import DPOConfig, dpo
from rlhfkit.generation.generate import GenerateConfig, generate
from rlhfkit.labeling.simulated import LabelConfig, simulate
from rlhfkit.ppo.train import PPOConfig, ppo
from rlhfkit.pretrain.train import PretrainConfig, pretrain
from rlhfkit.quickstart import QuickstartConfig, quickstart
from rlhfkit.reward.train import RewardConfig, reward
from rlhfkit.rlaif import AgreementConfig, AILabelConfig, ReviseConfig, agreement, label_ai, revise
from rlhfkit.sft.train import SFTConfig, sft


@stage_command("pretrain", PretrainConfig, "Train a BPE tokenizer and a small GPT-2-style model from scratch.")
def _pretrain(config: PretrainConfig) -> None:
    pretrain(config)


@stage_command("sft", SFTConfig, "Supervised fine-tuning on demonstrations (loss on the response only).")
def _sft(config: SFTConfig) -> None:
    sft(config)


@stage_command("generate", GenerateConfig, "Sample responses to a file of prompts (batched, KV cache).")
def _generate(config: GenerateConfig) -> None:
    print(generate(config))


@stage_command("simulate", LabelConfig, "Judge sampled replies with a gold score and a noisy labeler.", label_app)
def _label_simulate(config: LabelConfig) -> None:
    print(simulate(config))


@stage_command("ai", AILabelConfig, "AI labels of sampled replies: a judge following a constitution.", label_app)
def _label_ai(config: AILabelConfig) -> None:
    print(label_ai(config))


@stage_command("agreement", AgreementConfig, "Agreement of AI labels with human/simulated ones.", label_app)
def _label_agreement(config: AgreementConfig) -> None:
    print(agreement(config))


@stage_command("revise", ReviseConfig, "Answer red-team prompts, critique, revise: SFT data.", cai_app)
def _cai_revise(config: ReviseConfig) -> None:
    print(revise(config))


@stage_command("reward", RewardConfig, "Train a reward model (or ensemble) on preferences, rankings or ratings.")
def _reward(config: RewardConfig) -> None:
    reward(config)


@stage_command("ppo", PPOConfig, "RL against reward models: PPO (or A2C) with a KL penalty to the reference, PPO-ptx.")
def _ppo(config: PPOConfig) -> None:
    print(ppo(config))


@stage_command("quickstart", QuickstartConfig, "Run the pipeline offline on the embedded model and data.")
def _quickstart(config: QuickstartConfig) -> None:
    quickstart(config)


@stage_command("dpo", DPOConfig, "Learn straight from preferences: DPO, cDPO, IPO, SLiC hinge, KTO (no reward model).")
def _dpo(config: DPOConfig) -> None:
    dpo(config)
