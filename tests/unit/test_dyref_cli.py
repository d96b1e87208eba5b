"""The `dyref` entry point: help, config show, and a bad profile naming the field."""
import json

from typer.testing import CliRunner

from dyref.cli import app

runner = CliRunner()


def test_help_lists_the_commands():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("demo", "train", "bench", "generator", "learner", "rewards", "audit", "config", "generate"):
        assert cmd in res.output


def test_config_show_section_as_json():
    res = runner.invoke(app, ["config", "show", "--section", "rl.dar", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["gamma"] == 2.0


def test_bad_profile_value_exits_2_naming_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("gateway:\n  max_n: -3\n")
    res = runner.invoke(app, ["config", "show", "--config", str(bad)])
    assert res.exit_code == 2
    assert "gateway.max_n" in res.output


def test_train_sft_runs_a_few_steps_and_reports_its_loss(tmp_path):
    """The progress line and the summary read the history record by its names (common/rl/history.py):
    a renamed key shows up here as a KeyError, not only in a user's terminal."""
    out = tmp_path / "sft"
    res = runner.invoke(app, ["train", "sft", "--steps", "2", "--output-dir", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{"):])
    assert summary["final_loss"] > 0 and (out / "trainable.safetensors").is_file()
