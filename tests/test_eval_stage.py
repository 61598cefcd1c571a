import json
from pathlib import Path

import pytest
import torch

from rlhfkit.cli import main
from rlhfkit.data.records import load_records
from rlhfkit.evaluation.evaluate import EvalConfig, evaluate
from rlhfkit.models.loading import load_model, load_tokenizer

PROMPTS = ["Emma was", "Mr. Darcy said", "It is a truth", "She could not", "The house was", "Her sister"] * 2


@pytest.fixture(scope="module")
def checkpoints(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """The tiny model and a copy with perturbed embeddings (a different policy, same tokenizer)."""
    other = tmp_path_factory.mktemp("other-policy")
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir), tokenizer)
    torch.manual_seed(0)
    with torch.no_grad():
        model.transformer.wte.weight.add_(0.5 * torch.randn_like(model.transformer.wte.weight))
    model.save_pretrained(other)
    tokenizer.save_pretrained(other)
    return str(tiny_model_dir), str(other)


def test_eval_writes_every_measure_and_the_report_draws_them(checkpoints, tmp_path: Path, capsys):
    reference, other = checkpoints
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    probe = tmp_path / "probe.jsonl"
    items = [{"question": "It is a truth universally", "options": ["acknowledged", "house", "sister"], "answer": 0}]
    items += [{"question": "Emma was", "options": ["very", "the", "of", "a"], "answer": 0}] * 3
    probe.write_text("".join(json.dumps(item) + "\n" for item in items))
    output = tmp_path / "eval"
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "eval",
                "--set", f"policies=[{reference}, {other}]",
                "--set", f"prompts={prompts}",
                "--set", "gold=length",
                "--set", "sampling.max_new_tokens=12",
                "--set", "bootstrap=100",
                "--set", f"probe={probe}",
                "--set", "bins=5",
                "--set", f"output_dir={output}",
            ]
        )  # fmt: skip
    assert exit_info.value.code == 0
    data = json.loads((output / "eval.json").read_text())
    assert data["reference"] == reference and data["prompts"] == len(PROMPTS)
    ref, pol = data["policies"][reference], data["policies"][other]
    assert ref["metrics"]["eval/kl"] == 0.0 and pol["metrics"]["eval/kl"] > 0
    assert pol["metrics"]["eval/kl_per_response"] == pytest.approx(
        pol["metrics"]["eval/kl"] * pol["metrics"]["eval/length"]
    )
    assert (
        "win_rate" not in ref
        and 0 <= pol["win_rate"]["lower"] <= pol["win_rate"]["win_rate"] <= pol["win_rate"]["upper"]
    )
    wr = pol["win_rate"]
    assert wr["wins"] + wr["ties"] + wr["losses"] == len(PROMPTS)
    board = data["leaderboard"]
    assert board["judgements"] == len(PROMPTS) and {s["name"] for s in board["standings"]} == {reference, other}
    for result in (ref, pol):
        assert result["calibration"]["items"] == 4 and len(result["calibration"]["bins"]) == 5
    # the win-rate and the leaderboard come from the same judgements
    points = next(s["points"] for s in board["standings"] if s["name"] == other)
    assert points == pytest.approx(wr["wins"] + wr["ties"] / 2)
    samples = load_records(str(output / "samples.jsonl"), "candidates")
    assert len(samples) == len(PROMPTS) and all(len(s.responses) == 2 for s in samples)
    assert "win-rate" in capsys.readouterr().out

    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(output)])
    assert exit_info.value.code == 0
    page = (output / "report.html").read_text()
    assert page.count("<img") == 3  # frontier (two stars), leaderboard, calibration


def test_one_policy_has_no_leaderboard_and_the_same_seeds_sample_the_same_replies(checkpoints, tmp_path: Path):
    reference, _ = checkpoints
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS[:4]))
    config = EvalConfig(
        policies=[reference],
        prompts=str(prompts),
        gold="length",
        bootstrap=0,
        output_dir=str(tmp_path / "a"),
    )
    config.sampling.max_new_tokens = 8
    first = json.loads(evaluate(config).read_text())
    assert "leaderboard" not in first and list(first["policies"]) == [reference]
    again = config.model_copy(update={"output_dir": str(tmp_path / "b")})
    evaluate(again)
    assert (tmp_path / "a" / "samples.jsonl").read_text() == (tmp_path / "b" / "samples.jsonl").read_text()


def test_eval_needs_policies(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval"])
    assert exit_info.value.code == 2 and "policies" in capsys.readouterr().err


def test_summary_names_rows_by_short_run_names_and_fits_80_columns(monkeypatch: pytest.MonkeyPatch):
    from rich.console import Console

    from rlhfkit.evaluation import evaluate as stage

    names = ["runs/quickstart/sft", "runs/quickstart/ppo", "runs/quickstart/dpo"]
    assert stage.short_names([*names, "other/ppo", "gpt2"]) == {
        "runs/quickstart/sft": "sft",
        "runs/quickstart/ppo": "quickstart/ppo",  # "ppo" alone would not tell it from other/ppo
        "runs/quickstart/dpo": "dpo",
        "other/ppo": "other/ppo",
        "gpt2": "gpt2",
    }
    metrics = {"eval/gold": 0.5, "eval/kl": 0.25, "eval/length": 31.5, "eval/distinct2": 0.8}
    interval = {"win_rate": 0.95, "lower": 0.91, "upper": 0.97}
    policies = {n: {"metrics": metrics, "win_rate": interval, "calibration": {"ece": 0.1}} for n in names}
    standings = [{"name": n, "elo": 1217.0, "elo_lower": 1189.0, "elo_upper": 1249.0} for n in names]
    out = {"prompts": 256, "reference": names[0], "labeler": "vader", "policies": policies}
    out["leaderboard"] = {"standings": standings}
    console = Console(width=80, record=True, force_terminal=False)
    monkeypatch.setattr(stage, "console", console)
    stage.print_summary(out)
    text = console.export_text()
    rows = [line.split()[0] for line in text.splitlines() if line.strip().split()[:1] in (["sft"], ["ppo"], ["dpo"])]
    assert rows == ["sft", "ppo", "dpo"]
    assert "…" not in text and all(len(line) <= 80 for line in text.splitlines())
    assert "0.95" in text and "[0.91, 0.97]" in text and "[1189, 1249]" in text
