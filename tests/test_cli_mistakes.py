"""Ordinary mistakes on the command line and in studies: each gets one message from llc that names the
fix, exit code 2, no traceback, and nothing written into the runs directory."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from llc.cli import app

MODULE = ["--set", "problem=module", "--set", "data=own_model_factories:classification_data"]
CLASSIFIER = "model=own_model_factories:classifier"

# (what the user typed, a phrase the one message must hold)
MISTAKES = {
    "a sampler misspelt": (["run", "--sampler", "sgdl"], "sampler"),
    "an unknown key": (["run", "--sampler", "sgld", "--set", "widht=3"], "did you mean 'widths'"),
    "devinterp's lr": (["run", "--sampler", "sgld", "--set", "lr=0.01"], "did you mean 'step_size'"),
    "devinterp's localization": (["run", "--sampler", "sgld", "--set", "localization=100"], "'gamma'"),
    "a negative number of steps": (["run", "--sampler", "sgld", "--set", "steps=-1"], "steps"),
    "a preset misspelt": (["run", "--sampler", "sgld", "--preset", "fulll"], "unknown preset"),
    "a --set value that is no YAML": (["run", "--sampler", "sgld", "--set", "widths=[4,"], "not valid YAML"),
    "a --set without =": (["run", "--sampler", "sgld", "--set", "steps"], "expected KEY=VALUE"),
    "no sampler anywhere": (["run"], "no sampler"),
    "a factory misspelt": (
        ["run", "--sampler", "sgld", *MODULE, "--set", "model=own_model_factories:classifer"],
        "did you mean own_model_factories:classifier",
    ),
    "a module that is not there": (
        ["run", "--sampler", "sgld", *MODULE, "--set", "model=no_such_package.models:make"],
        "cannot find module",
    ),
    "a weights file that is not there": (
        ["run", "--sampler", "sgld", *MODULE, "--set", CLASSIFIER, "--set", "weights=/no/such.pt"],
        "no such file",
    ),
    "a config file that is not there": (["run", "--config", "/no/such.yaml"], "cannot read config file"),
    "a study file that is not there": (["sweep", "--study", "/no/such.yaml"], "cannot read study file"),
    "a backend misspelt": (["sweep", "--study", "STUDY", "--backend", "slurmm"], "backend"),
    "a calibration of a self-tuning sampler": (["calibrate", "--sampler", "hmc"], "hmc and mclmc tune"),
    "a calibration key misspelt": (["calibrate", "--set", "widht=3"], "did you mean 'widths'"),
    "config show with a key misspelt": (["config", "show", "--set", "gama=3"], "did you mean 'gamma'"),
}

STUDIES = {
    "a study key misspelt": ("samplr: [{name: sgld}]\n", "did you mean 'samplers'"),
    "a study's factory misspelt": (
        "base: {problem: module, model: 'own_model_factories:classifer', "
        "data: 'own_model_factories:classification_data'}\n",
        "did you mean own_model_factories:classifier",
    ),
    "a study's cell key misspelt": ("base: {stesp: 10}\n", "did you mean 'steps'"),
    "a study's restrict: heads misspelt": (
        "base: {problem: module, model: 'own_model_factories:classifier', "
        "data: 'own_model_factories:classification_data', restrict: hedas}\n",
        "did you mean 'heads'",
    ),
}


def _check(args: list[str], phrase: str, runs: Path) -> None:
    where = [] if args[0] == "config" else ["--runs-dir", str(runs)]
    result = CliRunner().invoke(app, [*args, *where])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), result.exception
    assert result.output.count("error:") == 1 and phrase in result.output, result.output
    assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())


@pytest.mark.parametrize("mistake", MISTAKES)
def test_a_command_line_mistake_is_one_line_and_exit_2(mistake: str, tmp_path: Path) -> None:
    args, phrase = MISTAKES[mistake]
    study = tmp_path / "study.yaml"
    study.write_text("preset: quick\nbase: {steps: 10}\n")
    _check([str(study) if a == "STUDY" else a for a in args], phrase, tmp_path / "runs")


@pytest.mark.parametrize("mistake", STUDIES)
def test_a_study_mistake_is_caught_before_any_cell_runs(mistake: str, tmp_path: Path) -> None:
    text, phrase = STUDIES[mistake]
    study = tmp_path / "study.yaml"
    study.write_text(text)
    _check(["sweep", "--study", str(study)], phrase, tmp_path / "runs")
