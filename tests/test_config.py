from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlhfkit.cli import app, main
from rlhfkit.config import ConfigError, config_help, load_config
from rlhfkit.quickstart import QuickstartConfig
from rlhfkit.sft.train import SFTConfig


def test_yaml_and_overrides(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 3.0e-4\nlora:\n  enabled: true\n")
    config = load_config(SFTConfig, path, ["lora.r=4", "max_steps=7", "adam_betas=[0.8, 0.9]"])
    assert config.learning_rate == 3e-4
    assert config.lora.enabled and config.lora.r == 4
    assert config.max_steps == 7 and config.adam_betas == (0.8, 0.9)


def test_unknown_field_is_an_error_with_a_suggestion(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("learnig_rate: 3.0e-4\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown field 'learnig_rate' \(did you mean 'learning_rate'\?\)"):
        load_config(SFTConfig, path)
    with pytest.raises(ConfigError, match=r"unknown field 'lora.rank'"):
        load_config(SFTConfig, None, ["lora.rank=4"])


def test_mistyped_value_names_the_field():
    with pytest.raises(ConfigError, match=r"field 'batch_size': .*integer.*'many'"):
        load_config(SFTConfig, None, ["batch_size=many"])
    with pytest.raises(ConfigError, match=r"field 'lr_schedule'"):
        load_config(SFTConfig, None, ["lr_schedule=exponential"])


def test_cli_rejects_unknown_field_before_running(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exit_info:
        main(["sft", "--set", "bogus=1"])
    assert exit_info.value.code == 2
    assert "unknown field 'bogus'" in capsys.readouterr().err


def test_cli_help_lists_every_field_with_default():
    result = CliRunner().invoke(app, ["sft", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name in SFTConfig.model_fields:
        assert name in result.output
    assert "lora.target_modules" in result.output and "default 0.0001" in result.output


def test_a_section_set_in_part_keeps_the_rest_of_its_default(tmp_path: Path):
    # The quickstart's own SFT, PPO and sampling defaults differ from the classes' defaults.
    config = load_config(QuickstartConfig, None, ["sft.max_steps=4", "ppo.sampling.max_new_tokens=6"])
    assert config.sft.max_steps == 4 and config.sft.learning_rate == 3e-4 and config.sft.warmup_steps == 10
    assert config.ppo.sampling.max_new_tokens == 6 and config.ppo.sampling.temperature == 1.0
    assert config.ppo.prompts == "demo-sft" and config.ppo.max_steps == 20
    path = tmp_path / "quick.yaml"
    path.write_text("candidates:\n  temperature: 0.5\n")
    from_file = load_config(QuickstartConfig, path)
    assert from_file.candidates.temperature == 0.5 and from_file.candidates.max_new_tokens == 16


def test_help_shows_a_section_default_from_its_enclosing_config():
    rows = {name: default for name, _, default, _ in config_help(QuickstartConfig)}
    assert rows["sft.learning_rate"] == "0.0003" and rows["ppo.max_steps"] == "20"


@pytest.mark.parametrize(
    "override", ["learning_rate=inf", "learning_rate=.nan", "max_grad_norm=-.inf", "adam_betas=[0.9, .nan]"]
)
def test_non_finite_numbers_are_rejected(override: str):
    field = override.partition("=")[0]
    with pytest.raises(ConfigError, match=rf"field '{field}(\.1)?': Input should be a finite number"):
        load_config(SFTConfig, None, [override])


def test_non_finite_numbers_are_rejected_in_sections_too():
    with pytest.raises(ConfigError, match=r"field 'ppo.sampling.temperature': Input should be a finite number"):
        load_config(QuickstartConfig, None, ["ppo.sampling.temperature=inf"])


def test_resume_and_overwrite_exclude_each_other(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exit_info:
        main(["sft", "--resume", "--overwrite"])
    assert exit_info.value.code == 2
    assert "set one of them" in capsys.readouterr().err


def test_overwrite_is_offered_by_the_stages_that_have_it():
    runner = CliRunner()
    assert "--overwrite" in runner.invoke(app, ["sft", "--help"], env={"COLUMNS": "200"}).output
    assert "--overwrite" in runner.invoke(app, ["quickstart", "--help"], env={"COLUMNS": "200"}).output
    assert "--overwrite" not in runner.invoke(app, ["generate", "--help"], env={"COLUMNS": "200"}).output
