"""Experiment trackers (`report_to`): a short run's metrics read back from MLflow's local store; a tracker
that is not installed refused before anything in the output directory is touched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlhfkit.cli import main
from rlhfkit.training import trackers


def reward_run(tmp_path: Path, model_dir: Path, out: Path, *settings: str) -> int:
    """`rlhfkit reward` for 2 steps on separable pairs; its exit code."""
    data = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"Day {i}:", "chosen": " glad.", "rejected": " sad."} for i in range(12)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    base = [f"model={model_dir}", f"heads.reward.data={data}", "max_steps=2", "batch_size=4", "micro_batch_size=4"]
    base += [f"output_dir={out}", "num_threads=1", "eval_fraction=0.25", "log_every=1"]
    threads = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit) as exit_info:
            main(["reward", *(arg for s in [*base, *settings] for arg in ("--set", s))])
    finally:
        torch.set_num_threads(threads)
    return int(exit_info.value.code or 0)


def test_a_short_run_logs_its_metrics_and_config_to_the_local_mlflow_store(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    out = tmp_path / "rm"
    assert reward_run(tmp_path, tiny_model_dir, out, "report_to=[mlflow]") == 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient((out / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("rlhfkit")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "rm" and run.data.params["heads.reward.data"] == str(tmp_path / "pairs.jsonl")
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    expected = [(row["step"], row["rm/loss"]) for row in logged if "rm/loss" in row]
    history = client.get_metric_history(run.info.run_id, "rm/loss")
    assert [m.step for m in history] == [step for step, _ in expected] == [1, 2]
    assert [m.value for m in history] == pytest.approx([value for _, value in expected], rel=1e-6)
    assert not (out / "tensorboard").exists()  # only the trackers asked for


def test_a_tracker_not_installed_is_refused_and_the_saved_run_kept(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    out = tmp_path / "rm"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    monkeypatch.setattr(trackers, "installed", lambda name: name != "wandb")
    assert reward_run(tmp_path, tiny_model_dir, out, "report_to=[wandb]", "overwrite=true") == 2
    assert "report_to: wandb not installed; pip install 'rlhfkit[trackers]'" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == '{"step": 1}\n'
