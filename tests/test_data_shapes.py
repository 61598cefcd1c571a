"""Every accepted preference-data shape (README, "Data shapes") through `rlhfkit dpo` and `rlhfkit reward`:
their data loaders for each shape, and one end-to-end run per stage with the kind left to inference."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from rlhfkit.cli import main
from rlhfkit.data.readers import DataError
from rlhfkit.dpo.train import DPOConfig, load_examples
from rlhfkit.models.loading import load_tokenizer
from rlhfkit.reward.train import HeadData, RewardConfig, load_heads

GOOD, BAD = " She was very happy.", " She was very sad."
PROMPTS = 8


def hh(prompt: str, reply: str) -> str:
    return f"\n\nHuman: {prompt}\n\nAssistant: Indeed.\n\nHuman: And then?\n\nAssistant:{reply}"


def chat(prompt: str, reply: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply.strip()}]


# Each shape's rows for one prompt: the cheerful reply is the better one. (rows, pairs they give)
SHAPES: dict[str, Callable[[str], list[dict[str, Any]]]] = {
    "preference": lambda p: [{"prompt": p, "chosen": GOOD, "rejected": BAD}],
    "implicit-text": lambda p: [{"chosen": p + GOOD, "rejected": p + BAD}],
    "implicit-chat": lambda p: [{"chosen": chat(p, GOOD), "rejected": chat(p, BAD)}],
    "hh-rlhf": lambda p: [{"chosen": hh(p, GOOD), "rejected": hh(p, BAD)}],
    "unpaired": lambda p: [
        {"prompt": p, "completion": GOOD, "label": True},
        {"prompt": p, "completion": BAD, "label": 0},
    ],
    "ranking": lambda p: [{"prompt": p, "responses": [BAD, GOOD], "ranks": [2, 1]}],
    "rating": lambda p: [{"prompt": p, "response": GOOD, "score": 6}, {"prompt": p, "response": BAD, "score": 2}],
    "edit": lambda p: [{"prompt": p, "original": BAD, "edited": GOOD}],
    "ultrafeedback": lambda p: [
        {
            "instruction": p,
            "completions": [{"response": BAD, "overall_score": 3.5}, {"response": GOOD, "overall_score": 8}],
        }
    ],
    "stepwise": lambda p: [
        {"prompt": p, "completions": ["Step one.", GOOD], "labels": [True, True]},
        {"prompt": p, "completions": ["Step one.", BAD], "labels": [True, False]},
    ],
}


def write_shape(path: Path, shape: str) -> Path:
    rows = [row for i in range(PROMPTS) for row in SHAPES[shape](f"Day {i} came.")]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def run_cli(stage: str, settings: list[str]) -> None:
    """`rlhfkit STAGE --set ...`, which exits 0 when it succeeds (torch's thread count restored after)."""
    threads = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit) as exit_info:
            main([stage, *(arg for setting in settings for arg in ("--set", setting))])
    finally:
        torch.set_num_threads(threads)
    assert exit_info.value.code == 0


def text_of(value: Any) -> str:
    return value if isinstance(value, str) else "".join(m.content for m in value)


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_gives_dpo_one_pair_per_prompt_the_cheerful_reply_preferred(
    tmp_path: Path, tiny_model_dir: Path, shape: str
):
    data = write_shape(tmp_path / "data.jsonl", shape)
    config = DPOConfig(model=str(tiny_model_dir), data=str(data), eval_fraction=0.25)
    train, held, _ = load_examples(config, load_tokenizer(str(tiny_model_dir)))
    assert len(train) + len(held) == PROMPTS and len(held) == 2
    assert all([r.preferred for r in e.responses] == [True, False] for e in train + held)


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_gives_the_reward_model_comparisons_ranking_the_cheerful_reply_first(tmp_path: Path, shape: str):
    data = write_shape(tmp_path / "data.jsonl", shape)
    config = RewardConfig(heads={"reward": HeadData(data=str(data))}, eval_fraction=0.25)
    train, held, _ = load_heads(config)
    assert len(train) + len(held) == PROMPTS
    for comparison in train + held:
        best = comparison.responses[comparison.ranks.index(1)]
        assert "happy" in text_of(best) and comparison.informative_pairs() == 1


def test_a_kto_file_given_to_rlhfkit_dpo_without_data_kind_trains(tmp_path: Path, tiny_model_dir: Path):
    data = write_shape(tmp_path / "thumbs.jsonl", "unpaired")
    out = tmp_path / "out"
    sets = [f"model={tiny_model_dir}", f"data={data}", "loss=kto", "max_steps=1", "batch_size=4", "micro_batch_size=4"]
    sets += [f"output_dir={out}", f"ref_cache_dir={tmp_path / 'cache'}", "num_threads=1", "eval_fraction=0.25"]
    run_cli("dpo", sets)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 1 and "dpo/kl" in rows[-1]  # KTO's reference point: the unpaired loss ran


def test_hh_rlhf_transcripts_through_rlhfkit_reward(tmp_path: Path, tiny_model_dir: Path):
    data = write_shape(tmp_path / "hh.jsonl", "hh-rlhf")
    out = tmp_path / "rm"
    sets = [f"model={tiny_model_dir}", f"heads.reward.data={data}", "max_steps=1", "batch_size=4"]
    sets += ["micro_batch_size=4", f"output_dir={out}", "num_threads=1", "eval_fraction=0.25"]
    run_cli("reward", sets)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 1 and "eval/reward/accuracy" in rows[-1]


def test_a_thumbs_file_with_no_prompt_judged_both_ways_is_refused_for_paired_losses(tmp_path: Path, tiny_model_dir):
    data = tmp_path / "thumbs.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"Day {i}.", "completion": GOOD, "label": True}) + "\n" for i in range(8))
    )
    config = DPOConfig(model=str(tiny_model_dir), data=str(data), eval_fraction=0.25)
    with pytest.raises(DataError, match=r"no usable training examples \(0 pairs of a thumbs-up and a thumbs-down"):
        load_examples(config, load_tokenizer(str(tiny_model_dir)))
