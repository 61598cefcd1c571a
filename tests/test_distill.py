"""Context distillation: the KL loss on hand-computed numbers, a short run, and a context too long for the window."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rlhfkit.data.readers import DataError
from rlhfkit.distill.losses import context_distillation_kl
from rlhfkit.distill.train import DistillConfig, distill

SHORT_CONTEXT = """messages:
  - role: system
    content: The assistant is kind, honest and always cheerful.
  - role: user
    content: How are you?
  - role: assistant
    content: Very well, thank you! How lovely of you to ask.
"""


def test_kl_matches_hand_computed_values():
    # teacher p = (1/4, 3/4), student q = (1/2, 1/2): KL = 1/4 ln(1/2) + 3/4 ln(3/2) = 0.130812...
    # teacher = student = (1/3, 1/3, 1/3) (logits shifted by a constant): KL = 0
    teacher = torch.tensor([[0.0, math.log(3.0), -1e9], [1.0, 1.0, 1.0]])
    student = torch.tensor([[2.0, 2.0, -1e9], [-5.0, -5.0, -5.0]], requires_grad=True)
    kl = context_distillation_kl(teacher, student)
    torch.testing.assert_close(kl, torch.tensor([0.25 * math.log(0.5) + 0.75 * math.log(1.5), 0.0]))
    kl.sum().backward()
    # d KL / d student logits = q - p: the gradient pulls the student towards the teacher
    torch.testing.assert_close(student.grad, torch.tensor([[0.25, -0.25, 0.0], [0.0, 0.0, 0.0]]), atol=1e-6, rtol=0)


def test_kl_is_not_symmetric():
    p, q = torch.tensor([[0.0, 2.0]]), torch.tensor([[0.0, 0.0]])
    assert not torch.allclose(context_distillation_kl(p, q), context_distillation_kl(q, p))


def test_distillation_brings_the_unprompted_model_towards_the_prompted_one(tmp_path: Path):
    context = tmp_path / "context.yaml"
    context.write_text(SHORT_CONTEXT)
    prompts = tmp_path / "prompts.jsonl"
    questions = ["What is a good book?", "How do I bake bread?", "Where should I walk today?", "Who was Emma?"] * 2
    prompts.write_text("".join(json.dumps({"prompt": f"{q} ({i})"}) + "\n" for i, q in enumerate(questions)))
    out = distill(
        DistillConfig(
            model="tiny-austen",
            context=str(context),
            prompts=str(prompts),
            eval_fraction=0.25,
            sampling={"max_new_tokens": 6},
            learning_rate=3e-4,
            max_steps=4,
            batch_size=3,
            micro_batch_size=3,
            output_dir=str(tmp_path / "distill"),
        )
    )
    metrics = json.loads((out / "eval.json").read_text())
    assert metrics["held_out_prompts"] == 2
    assert metrics["kl_before"] > 0.01
    assert metrics["kl_after"] < 0.8 * metrics["kl_before"]
    assert (out / "model.safetensors").exists() and len((out / "replies.jsonl").read_text().splitlines()) == 8


def test_a_context_longer_than_the_window_is_refused_before_anything_is_written(tmp_path: Path):
    output_dir = tmp_path / "distill"
    with pytest.raises(DataError, match=r"hhh-context.yaml: field 'messages'.*hhh-prompts.jsonl:1 \(field 'prompt'\)"):
        distill(DistillConfig(model="tiny-austen", output_dir=str(output_dir)))
    assert not output_dir.exists()
