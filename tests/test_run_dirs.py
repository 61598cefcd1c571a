"""Output directories of the trainers: one run per directory, --overwrite, --resume checks, a kill's leftovers,
and a run that diverges. Shown on SFT; every trainer shares these rules (training/runtime.py, checkpoint.py)."""

import json
import shutil
from pathlib import Path

import pytest
from test_sft import small_sft_config

from rlhfkit.cli import main
from rlhfkit.config import ConfigError
from rlhfkit.sft.train import sft
from rlhfkit.training.batching import TokenSequence, context_window, fit_to_length
from rlhfkit.training.checkpoint import TrainingDiverged, list_checkpoints
from rlhfkit.training.progress import trim_rows
from rlhfkit.training.runtime import config_changes


def steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def cli_sft(tmp_path: Path, model_dir: Path, *flags: str) -> None:
    config = small_sft_config(tmp_path, model_dir)  # writes the data file
    main(["sft", "--set", f"model={model_dir}", "--set", f"data={config.data}", "--set", f"output_dir={tmp_path}/out",
          "--set", "max_steps=2", "--set", "batch_size=8", *flags])  # fmt: skip


def test_a_fresh_run_into_an_old_runs_directory_is_refused_and_keeps_its_config(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
):
    out = sft(small_sft_config(tmp_path, tiny_model_dir, max_steps=2))
    saved = (out / "config.yaml").read_text()
    with pytest.raises(SystemExit) as exit_info:
        cli_sft(tmp_path, tiny_model_dir, "--set", "learning_rate=0.5")
    assert exit_info.value.code == 2
    assert "holds a run (metrics.jsonl): continue it with --resume, or start afresh with --overwrite" in (
        capsys.readouterr().err
    )
    assert (out / "config.yaml").read_text() == saved


def test_overwrite_clears_the_old_run_first(tmp_path: Path, tiny_model_dir: Path):
    out = sft(small_sft_config(tmp_path, tiny_model_dir, max_steps=4, save_every=2))
    assert list_checkpoints(out)
    (out / "notes.txt").write_text("from the old run")
    with pytest.raises(SystemExit) as exit_info:
        cli_sft(tmp_path, tiny_model_dir, "--overwrite")
    assert exit_info.value.code == 0
    assert not (out / "notes.txt").exists() and not (out / "checkpoints").exists()
    assert steps(out) == [0, 2]  # only the new run logged (log_every 10: step 0 and the last)


def test_resume_refuses_a_config_that_changes_the_run_and_lists_allowed_changes(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
):
    out = sft(small_sft_config(tmp_path, tiny_model_dir, max_steps=4, save_every=2))
    saved = (out / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"changes the run \(learning_rate: 0.003 \(saved\) -> 0.01\)"):
        sft(small_sft_config(tmp_path, tiny_model_dir, max_steps=4, save_every=2, learning_rate=0.01, resume=True))
    assert (out / "config.yaml").read_text() == saved
    sft(small_sft_config(tmp_path, tiny_model_dir, max_steps=6, save_every=2, resume=True))
    assert "[resume] changed: max_steps: 4 (saved) -> 6" in capsys.readouterr().out
    assert "max_steps: 6" in (out / "config.yaml").read_text()
    assert steps(out) == [0, 1, 2, 3, 4, 5, 6]  # continued from the step-2 checkpoint (4 was the final step)


def test_resume_after_a_kill_ignores_a_partial_checkpoint_and_a_torn_metrics_line(tmp_path: Path, tiny_model_dir: Path):
    out = sft(small_sft_config(tmp_path, tiny_model_dir, max_steps=6, save_every=2))
    checkpoints = out / "checkpoints"
    # As if killed while saving step 6 (after its state file was written) and while logging step 6.
    shutil.copytree(checkpoints / "step-4", checkpoints / "step-6.partial")
    (checkpoints / "step-6.partial" / "trainer_state.json").write_text('{"step": 6}')
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "train/lo')
    sft(small_sft_config(tmp_path, tiny_model_dir, max_steps=6, save_every=2, resume=True))
    assert steps(out) == [0, 1, 2, 3, 4, 5, 6]
    assert not (checkpoints / "step-6.partial").exists()


def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(tmp_path: Path, tiny_model_dir: Path):
    # Warm-up from 0: step 1 changes nothing, step 2's huge (finite) rate blows the weights up, step 3 is nan.
    config = small_sft_config(
        tmp_path, tiny_model_dir, max_steps=6, save_every=1, learning_rate=1e30, warmup_steps=1000
    )
    with pytest.raises(TrainingDiverged, match=r"step 3: train/loss = nan: the run diverged") as info:
        sft(config)
    out = Path(config.output_dir)
    assert list_checkpoints(out) == [out / "checkpoints" / "step-1"]  # step 2's weights gave the nan: deleted
    assert f"the last good checkpoint is {out / 'checkpoints' / 'step-1'}" in str(info.value)
    assert not (out / "model.safetensors").exists()  # no final model from diverged weights


def test_context_window_cuts_the_prompt_first_down_to_half():
    assert context_window(30, 20, 100) == (30, 20)  # fits
    assert context_window(30, 90, 100) == (30, 70)  # a short prompt stays whole: the response loses its end
    assert context_window(150, 20, 100) == (80, 20)  # a long prompt loses its start; the response stays whole
    assert context_window(150, 90, 100) == (50, 50)  # both long: the prompt keeps half


def test_fit_to_length_keeps_the_end_of_the_prompt_and_the_start_of_the_response():
    seq = TokenSequence(list(range(10)), [0] * 7 + [1] * 3)
    fitted = fit_to_length(seq, 6)
    assert fitted.input_ids == [4, 5, 6, 7, 8, 9] and fitted.loss_mask == [0, 0, 0, 1, 1, 1]
    assert fitted.prompt_tokens_cut == 4


def test_config_changes_name_nested_fields():
    saved = {"learning_rate": 1e-4, "lora": {"r": 16, "alpha": 32}, "max_steps": 4}
    current = {"learning_rate": 1e-4, "lora": {"r": 8, "alpha": 32}, "max_steps": 6}
    assert config_changes(saved, current) == {"lora.r": (16, 8), "max_steps": (4, 6)}


def test_trim_rows_drops_later_steps_and_a_torn_line(tmp_path: Path):
    path = tmp_path / "samples.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "resp')
    trim_rows(path, before=3)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
