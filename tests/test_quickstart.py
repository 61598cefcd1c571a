from pathlib import Path

import pytest

from rlhfkit.cli import main


@pytest.mark.slow
def test_quickstart_runs_offline_and_prints_samples(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "quickstart",
                "--set",
                f"output_dir={tmp_path}",
                "--set",
                "sft.max_steps=4",
                "--set",
                "show=2",
                "--set",
                "sampling.max_new_tokens=8",
                "--set",
                "reward_prompts=16",
                "--set",
                "candidates.max_new_tokens=8",
                "--set",
                "reward.max_steps=2",
            ]
        )
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "after SFT" in out and "held-out SFT loss" in out
    assert (tmp_path / "sft" / "model.safetensors").exists()
    assert "held-out reward-model accuracy" in out
    assert len((tmp_path / "labels.jsonl").read_text().splitlines()) == 16  # one ranking of 4 per prompt
    assert (tmp_path / "reward" / "reward_model.json").exists() and (tmp_path / "reward" / "eval.json").exists()
