"""RLAIF and Constitutional AI: feedback from a model that follows written principles.

`preferences` (`rlhfkit label ai`: pairwise and K-way AI labels, position bias averaged out), `revise`
(`rlhfkit cai revise`: answer, critique, revise; the revisions are SFT data), `agreement` (`rlhfkit label
agreement`: AI labels against human or simulated ones, overall and per principle). The judges, the
constitution and the comparison question they share with the AI win-rate live in `rlhfkit.judging`.
"""

from rlhfkit.rlaif.agreement import AgreementConfig, agreement
from rlhfkit.rlaif.preferences import AILabelConfig, label_ai
from rlhfkit.rlaif.revise import ReviseConfig, revise

__all__ = ["AILabelConfig", "AgreementConfig", "ReviseConfig", "agreement", "label_ai", "revise"]
