"""RLAIF and Constitutional AI: feedback from a model that follows written principles.

`judges` (one `Judge` interface: a local Hugging Face model or an OpenAI-compatible endpoint),
`constitution` (principles from YAML, sampled or cycled per judgement), `preferences` (`rlhfkit label ai`:
pairwise and K-way AI labels, position bias averaged out), `revise` (`rlhfkit cai revise`: answer,
critique, revise; the revisions are SFT data), `agreement` (`rlhfkit label agreement`: AI labels against
human or simulated ones, overall and per principle).
"""

from rlhfkit.rlaif.agreement import AgreementConfig, agreement
from rlhfkit.rlaif.constitution import Constitution, Principle, load_constitution
from rlhfkit.rlaif.judges import Judge, JudgeSettings, JudgeUnavailable, make_judge
from rlhfkit.rlaif.preferences import AILabelConfig, label_ai
from rlhfkit.rlaif.revise import ReviseConfig, revise

__all__ = [
    "AILabelConfig",
    "AgreementConfig",
    "Constitution",
    "Judge",
    "JudgeSettings",
    "JudgeUnavailable",
    "Principle",
    "ReviseConfig",
    "agreement",
    "label_ai",
    "load_constitution",
    "make_judge",
    "revise",
]
