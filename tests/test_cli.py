"""The llc command line: runs, reuse, clear errors, analyze, config show."""

import json
from pathlib import Path

from typer.testing import CliRunner

from llc.cli import app
from llc.rundir import RunDir

runner = CliRunner()
TINY = [
    "--set",
    "steps=60",
    "--set",
    "warmup=10",
    "--set",
    "erm_steps=50",
    "--set",
    "chains=2",
    "--set",
    "n_data=300",
]


def test_run_prints_the_run_directory_and_reuses_it(tmp_path):
    first = runner.invoke(app, ["run", "--sampler", "sgld", "--runs-dir", str(tmp_path), *TINY])
    assert first.exit_code == 0, first.output
    run_dir = Path(first.stdout.strip().splitlines()[-1])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (
        metrics["sampler"] == "sgld" and (run_dir / "config.json").exists() and (run_dir / "sgld.nc").exists()
    )
    assert (run_dir / "llc_running.png").exists()
    second = runner.invoke(app, ["run", "--sampler", "sgld", "--runs-dir", str(tmp_path), *TINY])
    assert second.exit_code == 0 and "(cached)" in second.output
    third = runner.invoke(app, ["run", "--sampler", "sgld", "--runs-dir", str(tmp_path), "--no-skip", *TINY])
    assert third.exit_code == 0 and "(cached)" not in third.output


def test_set_takes_yaml_values(tmp_path):
    result = runner.invoke(app, ["config", "show", "--set", "widths=[4,3]", "--set", "activation=relu"])
    assert result.exit_code == 0
    assert "- 4\n- 3" in result.stdout and "activation: relu" in result.stdout and "run_id:" in result.stdout


def test_bad_config_exits_2_naming_the_key_before_any_work(tmp_path):
    result = runner.invoke(app, ["run", "--sampler", "sgld", "--runs-dir", str(tmp_path), "--set", "gama=3"])
    assert result.exit_code == 2 and "gama: unknown key" in result.output and "gamma" in result.output
    assert not any(tmp_path.iterdir())
    malformed = runner.invoke(app, ["run", "--sampler", "sgld", "--set", "chains"])
    assert malformed.exit_code == 2 and "KEY=VALUE" in malformed.output


def test_analyze_redraws_plots(tmp_path):
    run = runner.invoke(app, ["run", "--sampler", "hmc", "--runs-dir", str(tmp_path), *TINY])
    run_dir = Path(run.stdout.strip().splitlines()[-1])
    for png in run_dir.glob("*.png"):
        png.unlink()
    result = runner.invoke(app, ["analyze", str(run_dir)])
    assert (
        result.exit_code == 0 and (run_dir / "energy.png").exists() and (run_dir / "llc_trace.png").exists()
    )
    missing = runner.invoke(app, ["analyze", str(tmp_path)])
    assert missing.exit_code == 2


def test_runs_ls_lists_the_local_runs_directory_with_state_estimate_and_trust(tmp_path):
    sealed = RunDir(tmp_path, "a" * 16)
    sealed.prepare()
    sealed.write_json("config.json", {"sampler": "hmc"})
    sealed.write_json("metrics.json", {"llc_mean": 7.91234, "trusted": False})
    sealed.seal()
    partial = RunDir(tmp_path, "b" * 16)
    partial.prepare()
    partial.write_json("config.json", {"sampler": "sgld"})
    (tmp_path / "sweeps").mkdir()  # the sweeps' tables are no run
    result = CliRunner().invoke(app, ["runs", "ls", "--runs-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1:5] for line in result.stdout.splitlines()[1:]}
    assert rows == {"a" * 16: ["sealed", "hmc", "7.912", "no"], "b" * 16: ["partial", "sgld", "-", "-"]}
    empty = CliRunner().invoke(app, ["runs", "ls", "--runs-dir", str(tmp_path / "none")])
    assert empty.exit_code == 0 and "no run directories" in empty.output and "--modal" in empty.output


def test_run_of_several_parts_prints_each_parts_estimate_and_why_it_is_untrusted(tmp_path):
    """`llc run --set restrict={...}`: a line per part, each part's flags under it (the run's top-level
    flags merge the parts', so they are not printed as pairs of flag and reason)."""
    module = ["--set", "problem=module", "--set", "model=own_model_factories:classifier"]
    module += ["--set", "data=own_model_factories:classification_data", "--set", "loss=cross_entropy"]
    restrict = ["--set", 'restrict={"first": "0.*", "last": "2.*"}']
    short = ["--set", "chains=4", "--set", "steps=60", "--set", "warmup=0", "--set", "step_size=1e-4"]
    result = runner.invoke(
        app, ["run", "--sampler", "sgld", "--runs-dir", str(tmp_path), *module, *restrict, *short]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((Path(result.stdout.strip()) / "metrics.json").read_text())
    assert set(metrics["parts"]) == {"first", "last"}
    for name, part in metrics["parts"].items():
        assert f"{name}: llc = " in result.output
        for reason in part["flag_reasons"]:
            assert reason.split(":")[0] in result.output
    assert "llc of 2 parts, " in result.output
    assert "Traceback" not in result.output


def test_parts_sharing_a_flag_each_say_it_under_their_own_line(capsys):
    """A run of several parts lists each flag once at its top level but each part's reason: the report
    pairs flags with reasons part by part, never across the merged lists."""
    from llc.cli.main import _report_flags, _report_parts

    reason = "R-hat 1.2: the chains have not mixed"
    part = {
        "llc_mean": 1.0,
        "llc_se": 0.1,
        "trusted": False,
        "flags": ["chains_disagree"],
        "flag_reasons": [reason],
    }
    metrics = {
        "flags": ["chains_disagree"],
        "flag_reasons": [f"a: {reason}", f"b: {reason}"],
        "parts": {"a": part, "b": part},
    }
    _report_flags(metrics)
    assert _report_parts(metrics)
    printed = capsys.readouterr().err
    assert printed.count(f"untrusted (chains_disagree): {reason}") == 2
    assert "a: llc = " in printed and "b: llc = " in printed
