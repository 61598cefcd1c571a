"""The context-distillation loss: KL from the prompted model's next-token distribution to the unprompted one's."""

from __future__ import annotations

import torch


def context_distillation_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_prompted ‖ p_unprompted) at every reply token: (N, V), (N, V) -> (N,), in nats.

    Askell et al. 2021 (arXiv:2112.00861), section 3.2: the teacher is the model with the HHH context C
    before the prompt x, the student the same model without it, and context distillation minimises

        L = E_t [ Σ_v p(v | C, x, y_<t) · (log p(v | C, x, y_<t) - log p_θ(v | x, y_<t)) ]

    over the reply tokens y_t: the whole next-token distribution is matched, not only the sampled token as
    SFT on the teacher's samples would. The teacher's logits carry no gradient.
    """
    teacher = torch.log_softmax(teacher_logits.detach().float(), dim=-1)
    student = torch.log_softmax(student_logits.float(), dim=-1)
    return (teacher.exp() * (teacher - student)).sum(-1)
