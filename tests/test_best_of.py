"""Best-of-n: the selection, the KL bound and its exact discrete form (golden values), `rlhfkit generate
best_of`, `rlhfkit eval best_of` and the report's frontier."""

import json
import math
from pathlib import Path

import pytest
import torch

from rlhfkit.cli import main
from rlhfkit.evaluation.evaluate import EvalConfig, evaluate
from rlhfkit.evaluation.report import find_runs, frontier_figure, frontier_points
from rlhfkit.generation.best_of import (
    Groups,
    best_of_n_kl_bound,
    best_of_n_kl_exact,
    best_per_group,
    group_seeds,
    reward_levels,
)
from rlhfkit.generation.generate import GenerateConfig, generate

PROMPTS = ["Emma was", "Mr. Darcy said", "It is a truth", "She could not", "The house was", "Her sister"]


def test_kl_bound_golden_values():
    assert best_of_n_kl_bound(1) == 0.0
    assert best_of_n_kl_bound(2) == pytest.approx(0.19314718056, rel=1e-9)  # log 2 - 1/2
    assert best_of_n_kl_bound(4) == pytest.approx(0.63629436112, rel=1e-9)  # log 4 - 3/4
    assert best_of_n_kl_bound(8) == pytest.approx(1.20444154168, rel=1e-9)  # log 8 - 7/8
    with pytest.raises(ValueError, match="best_of n=0"):
        best_of_n_kl_bound(0)


def test_exact_kl_of_discrete_best_of_n_golden_values_and_the_bound_as_its_limit():
    assert best_of_n_kl_exact([1.0], 8) == 0.0  # one possible reply: best-of-n is the policy
    assert best_of_n_kl_exact([0.2, 0.3, 0.5], 1) == pytest.approx(0.0, abs=1e-12)
    # two equally likely levels, n = 2: best-of-2 is (1/4, 3/4)
    assert best_of_n_kl_exact([0.5, 0.5], 2) == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), rel=1e-9)
    for n in (2, 4, 8):
        fine = best_of_n_kl_exact([1e-4] * 10_000, n)
        assert fine <= best_of_n_kl_bound(n) and fine == pytest.approx(best_of_n_kl_bound(n), abs=2e-3)
        assert best_of_n_kl_exact([0.25] * 4, n) < fine  # coarser distributions (ties, repeats) move less


def test_reward_levels_merge_equal_rewards_within_tolerance():
    assert reward_levels([0.3, 0.1, 0.3 + 1e-9, 0.2]) == [0.25, 0.25, 0.5]
    assert reward_levels([1.0, 1.0, 1.0]) == [1.0]


def test_best_per_group_takes_the_best_of_the_first_n_and_the_first_of_ties():
    scores = torch.tensor([[1.0, 3.0, 2.0, 5.0], [2.0, 2.0, 0.0, 9.0]])
    assert best_per_group(scores, 3).tolist() == [1, 0]
    assert best_per_group(scores, 4).tolist() == [3, 3]
    assert best_per_group(scores, 1).tolist() == [0, 0]
    with pytest.raises(ValueError, match="best_of n=5"):
        best_per_group(scores, 5)
    groups = Groups([["a", "b", "c", "d"], ["e", "f", "g", "h"]], scores)
    texts, best = groups.best(2)
    assert texts == ["b", "e"] and best.tolist() == [3.0, 2.0]
    assert groups.kl_estimate(1) == 0.0
    per_prompt = [best_of_n_kl_exact([0.25] * 4, 4), best_of_n_kl_exact([0.25, 0.5, 0.25], 4)]  # [2, 2] tie
    assert groups.kl_estimate(4) == pytest.approx(sum(per_prompt) / 2)


def test_group_seeds_depend_on_the_prompt_row_and_sample_only():
    assert group_seeds(7, range(2, 3), 4) == group_seeds(7, range(3), 4)[8:12]
    assert len(set(group_seeds(7, range(3), 4))) == 12


def write_prompts(path: Path) -> Path:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return path


def test_generate_best_of_keeps_the_best_reply_per_prompt_batch_independent_and_nested(
    tmp_path: Path, tiny_model_dir: Path
):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    base = {
        "model": str(tiny_model_dir),
        "prompts": str(prompts),
        "rewards": [{"source": "length"}],
        "keep_all": True,
        "sampling": {"max_new_tokens": 8},
    }
    runs = {}
    for name, extra in {"4": {"best_of": 4}, "4-batch4": {"best_of": 4, "batch_size": 4}, "2": {"best_of": 2}}.items():
        config = GenerateConfig.model_validate(base | extra | {"output": str(tmp_path / f"{name}.jsonl")})
        runs[name] = [json.loads(line) for line in generate(config).read_text().splitlines()]
    for row in runs["4"]:
        assert len(row["responses"]) == 4 and row["best_of"] == 4
        assert row["score"] == max(row["scores"]) == len(row["completion"].split())
        assert row["completion"] == row["responses"][row["scores"].index(row["score"])]
    assert [r["responses"] for r in runs["4-batch4"]] == [r["responses"] for r in runs["4"]]  # each row its seed
    assert [r["responses"] for r in runs["2"]] == [r["responses"][:2] for r in runs["4"]]  # best-of-2 within 4
    assert sum(r["score"] for r in runs["4"]) > sum(r["scores"][0] for r in runs["4"])  # better than one sample


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["best_of=0"], "field 'best_of': Input should be greater than or equal to 1"),
        (["best_of=4"], "field 'rewards': Value error, best_of=4 needs a reward"),
        (["rewards=[{source: vader}]"], "field 'rewards': Value error, rewards are only read with best_of"),
        (["best_of=2", "num_samples=3", "rewards=[{source: vader}]"], "field 'best_of': Value error, best_of keeps"),
    ],
)
def test_generate_best_of_bad_input_names_the_field(overrides: list[str], message: str, capsys):
    args = ["generate"] + [a for o in overrides for a in ("--set", o)]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["best_of=[1, 0]"], "field 'best_of.1': Input should be greater than or equal to 1"),
        (["best_of=[1, 4]"], "field 'best_of_rewards': Value error, best_of=[1, 4] needs a reward"),
    ],
)
def test_eval_best_of_bad_input_names_the_field(overrides: list[str], message: str, capsys):
    args = ["eval", "--set", "policies=[tiny-austen]"] + [a for o in overrides for a in ("--set", o)]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_eval_reports_best_of_n_at_its_bound_and_the_report_draws_it(tmp_path: Path, tiny_model_dir: Path):
    config = EvalConfig(
        policies=[str(tiny_model_dir)],
        prompts=str(write_prompts(tmp_path / "prompts.jsonl")),
        gold="length",
        best_of=[4, 1, 2],
        best_of_rewards=[{"source": "length"}],
        bootstrap=0,
        output_dir=str(tmp_path / "eval"),
    )
    config.sampling.max_new_tokens = 8
    data = json.loads(evaluate(config).read_text())
    best = data["best_of_n"]
    assert best["policy"] == str(tiny_model_dir) and best["samples_per_prompt"] == 4
    assert [p["n"] for p in best["points"]] == [1, 2, 4]
    assert [p["kl_bound"] for p in best["points"]] == pytest.approx([0.0, 0.19314718, 0.63629436])
    golds = [p["gold"] for p in best["points"]]
    assert golds[0] <= golds[1] <= golds[2] and golds[0] < golds[2]  # nested: the best of more is no worse
    assert [p["reward"] for p in best["points"]] == pytest.approx(golds)  # picked by the gold itself here
    assert best["points"][0]["kl_estimate"] == 0.0
    assert all(0 <= p["kl_estimate"] <= p["kl_bound"] + 1e-9 for p in best["points"])
    frontier = frontier_points(find_runs([str(tmp_path / "eval")]))
    (label, points), *_ = frontier.bounds.items()
    assert "best-of-n" in label and "KL bound" in label
    assert points == [(p["n"], p["kl_bound"], p["gold"]) for p in best["points"]]
    assert frontier_figure(frontier).startswith("iVBORw0KGgo")  # a PNG, base64
