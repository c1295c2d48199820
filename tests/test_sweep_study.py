"""Study files expand into validated cells; every mistake is reported with its key and YAML line."""

from __future__ import annotations

from pathlib import Path

import pytest
from sweep_probe import PROBE

from llc.config import RunConfig, build_config
from llc.errors import ConfigError
from llc.settings import ModalOptions, Settings, SlurmOptions
from llc.sweeps.options import prepare, sweep_options
from llc.sweeps.plan import plan_sweep
from llc.sweeps.study import StudyError

ROOT = Path(__file__).resolve().parent.parent

LLC_STUDY = {
    "name": "grid",
    "preset": "quick",
    "problems": [
        {"name": "mlp"},
        {"name": "rrr", "overrides": {"widths": [5, 3, 5], "true_rank": 0}},
    ],
    "samplers": [{"name": "sgld"}, {"name": "mclmc"}],
    "seeds": [0, 1],
    "grid": {"gamma": [10, 100.0]},
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


def test_cells_are_problems_by_samplers_by_grid_by_seeds_with_engine_ids() -> None:
    plan = plan_sweep(LLC_STUDY)
    names = [c.name for c in plan.cells]
    assert len(names) == len(set(names)) == 2 * 2 * 2 * 2
    assert "rrr-sgld-s0-gamma=10" in names and "mlp-mclmc-s1-gamma=100" in names
    # Neighbouring cells differ in problem, hence in family: their ERM trainings can run side by side.
    assert plan.cells[0].family_id != plan.cells[1].family_id
    cell = next(c for c in plan.cells if c.name == "rrr-mclmc-s1-gamma=10")
    assert (cell.problem, cell.sampler, cell.seed, cell.grid) == ("rrr", "mclmc", 1, {"gamma": 10})
    expected = build_config(
        "quick",
        {"problem": "rrr", "widths": [5, 3, 5], "true_rank": 0, "sampler": "mclmc", "seed": 1, "gamma": 10},
    )
    assert RunConfig.model_validate(cell.config) == expected
    assert (cell.run_id, cell.family_id) == (expected.run_id, expected.family_id)
    assert plan.sweep_id.startswith("grid-") and plan_sweep(LLC_STUDY).sweep_id == plan.sweep_id


def test_unknown_config_key_is_reported_with_its_line_and_a_suggestion(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "preset: quick\n"
        "problems:\n"
        "  - name: mlp\n"
        "  - name: rrr\n"
        "    overrides:\n"
        "      widht: [5, 3, 5]\n"
        "samplers: [{name: sgld}]\n",
    )
    with pytest.raises(StudyError) as info:
        plan_sweep(path)
    message = str(info.value)
    assert f"{path}:6: widht: unknown key (did you mean 'widths'?)" in message
    assert "rrr-sgld-s0" in message and "mlp-sgld-s0" not in message.split("widht")[1].split("\n")[0]


def test_a_bad_value_points_at_the_entry_that_set_it(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "preset: quick\n"
        "problems:\n"
        "  - name: rrr\n"
        "    overrides: {widths: [5, 3, 5], true_rank: 1}\n"
        "samplers: [{name: sgld}, {name: nuts}]\n"
        "grid:\n"
        "  gamma: [-1]\n",
    )
    with pytest.raises(StudyError) as info:
        plan_sweep(path)
    message = str(info.value)
    assert f"{path}:5: sampler: Input should be 'sgld', 'sghmc', 'hmc' or 'mclmc' (got 'nuts')" in message
    assert (
        f"{path}:7: gamma: Input should be greater than or equal to 0, or input should be 'auto' (got -1)"
        in message
    )


def test_an_inconsistent_config_points_at_its_problem_entry(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "preset: quick\nsamplers: [{name: sgld}]\nproblems:\n  - name: rrr\n"
        "    overrides: {widths: [5, 3, 5]}\n",
    )
    with pytest.raises(StudyError) as info:
        plan_sweep(path)
    assert f"{path}:4: config: problem rrr needs true_rank" in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sampler: [{name: sgld}]\n", ":1: sampler: unknown key (did you mean 'samplers'?)"),
        ("problems:\n  - name: a\n  - name: a\n", ":1: problems: names must be unique, repeated: ['a']"),
        ("grid:\n  gamma: []\n", ":2: grid.gamma: List should have at least 1 item after validation"),
        ("seeds: [0, 0]\n", ":1: seeds: seeds must be unique"),
        ("base: {chains: 2\n", ":2: not valid YAML"),
        ("preset: huge\n", ":1: preset: unknown preset 'huge'"),
        (
            "experiment: nowhere.module:Thing\n",
            ":1: experiment: experiment 'nowhere.module:Thing' cannot be imported",
        ),
        ("- just\n- a list\n", ":1: a study is a mapping"),
    ],
)
def test_malformed_studies_fail_with_the_line(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(StudyError) as info:
        plan_sweep(path)
    assert f"{path}{expected}" in str(info.value)


def test_custom_experiment_ids_are_stable_and_follow_the_config(tmp_path: Path) -> None:
    study = {
        "experiment": PROBE,
        "base": {"markers": str(tmp_path)},
        "grid": {"x": [1.0, 2.0]},
        "seeds": [0, 1],
    }
    first, again = plan_sweep(study), plan_sweep(study)
    ids = [c.run_id for c in first.cells]
    assert ids == [c.run_id for c in again.cells] and len(set(ids)) == 4
    assert [c.name for c in first.cells] == ["s0-x=1", "s0-x=2", "s1-x=1", "s1-x=2"]
    assert all(c.family_id is None for c in first.cells)
    moved = plan_sweep({**study, "base": {"markers": str(tmp_path / "elsewhere")}})
    assert not set(ids) & {c.run_id for c in moved.cells}


def test_every_setting_and_config_key_is_documented() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    missing = [f"LLC_{name.upper()}" for name in Settings.model_fields if f"LLC_{name.upper()}" not in text]
    missing += [f"`{name}`" for name in RunConfig.model_fields if f"`{name}`" not in text]
    assert not missing, f"docs/configuration.md does not document: {missing}"


def test_the_shipped_studies_are_valid() -> None:
    quick, full = plan_sweep(ROOT / "studies" / "quick.yaml"), plan_sweep(ROOT / "studies" / "full.yaml")
    assert {c.sampler for c in quick.cells} == {"sgld", "sghmc", "hmc", "mclmc"}
    assert len({c.problem for c in quick.cells}) >= 3
    assert len(full.cells) > len(quick.cells)


def test_every_backend_option_is_documented() -> None:
    text = (ROOT / "docs" / "backends.md").read_text()
    missing = [f"`{name}`" for name in SlurmOptions.model_fields if f"`{name}`" not in text]
    missing += [
        f"LLC_MODAL_{name.upper()}"
        for name in ModalOptions.model_fields
        if f"LLC_MODAL_{name.upper()}" not in text and f"`{name}`" not in text
    ]
    assert not missing, f"docs/backends.md does not document: {missing}"


def test_a_sweep_option_has_its_settings_checks_in_a_study_and_as_a_flag(tmp_path: Path) -> None:
    path = write(tmp_path, "execution:\n  retries: 0\n  timeout_s: -1\n")
    with pytest.raises(StudyError) as info:
        plan_sweep(path)
    assert f"{path}:3: execution.timeout_s: Input should be greater than 0" in str(info.value)
    study = {
        "experiment": PROBE,
        "base": {"markers": str(tmp_path)},
        "execution": {"retries": 0, "timeout_s": 60},
    }
    options = prepare(sweep_options(study=study, timeout_s=None, max_parallel=3), Settings()).settings
    assert (options.timeout_s, options.retries, options.max_parallel) == (60.0, 0, 3)
    with pytest.raises(ConfigError, match="max_parallel: Input should be greater than or equal to 1"):
        sweep_options(study=study, max_parallel=0)


def test_a_backend_name_from_a_flag_a_study_or_the_environment_is_checked_in_one_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = {"experiment": PROBE, "base": {"markers": str(tmp_path)}}
    unknown = "unknown backend 'lokal'; choose one of local, modal, slurm"
    with pytest.raises(ConfigError, match=unknown):
        prepare(sweep_options(study=study, backend="lokal"))
    with pytest.raises(ConfigError, match=unknown):
        prepare(sweep_options(study={**study, "execution": {"backend": "lokal"}}))
    monkeypatch.setenv("LLC_BACKEND", "lokal")
    with pytest.raises(ConfigError, match=unknown):
        prepare(sweep_options(study=study))
    assert prepare(sweep_options(study=study, backend="local")).settings.backend == "local"  # the flag wins


def test_flags_win_over_the_study_and_backend_options_merge_over_the_studys(tmp_path: Path) -> None:
    study = {
        "experiment": PROBE,
        "base": {"markers": str(tmp_path)},
        "execution": {"retries": 0, "backend_options": {"poll_s": 1, "job_name": "from-study"}},
    }
    flags = sweep_options(
        study=study, retries=4, runs_dir=tmp_path / "r", backend_options={"job_name": "flag"}
    )
    sweep = prepare(flags, Settings(threads_per_cell=2))
    assert (sweep.settings.retries, sweep.settings.runs_dir) == (4, (tmp_path / "r").resolve())
    assert sweep.backend_options == {"threads_per_cell": 2, "poll_s": 1, "job_name": "flag"}
    assert sweep.options is flags and [c.name for c in sweep.plan.cells] == ["s0"]
