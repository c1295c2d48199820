"""The code fingerprint changes with the code that computes, and only with it."""

import shutil
from pathlib import Path

import pytest

from llc.fingerprint import COMPUTES, PACKAGE, code_fingerprint, fingerprint_of


@pytest.fixture
def package(tmp_path: Path) -> Path:
    copy = tmp_path / "llc"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _edited(package: Path, relative: str) -> str:
    path = package / relative
    path.write_text(path.read_text() + "\n# an edit that computes nothing else\n")
    return fingerprint_of(package)


@pytest.mark.parametrize(
    "relative",
    ["cli/main.py", "launch/local_server.py", "launch/sweep.py", "backends/slurm/backend.py",
     "backends/slurm/submitit_adapter.py", "backends/modal/app.py", "sweeps/flow.py", "cells/execute.py",
     "storage/s3.py", "settings.py"],
)  # fmt: skip
def test_editing_a_file_that_only_moves_or_presents_results_keeps_the_fingerprint(package, relative):
    before = fingerprint_of(package)
    assert _edited(package, relative) == before


@pytest.mark.parametrize(
    "relative",
    ["samplers/sgld.py", "samplers/driver.py", "model/posterior.py", "modules/model.py", "problems/truth.py",
     "run/experiment.py", "config.py"],
)  # fmt: skip
def test_editing_a_file_that_computes_changes_the_fingerprint(package, relative):
    before = fingerprint_of(package)
    assert _edited(package, relative) != before


def test_every_name_on_the_allow_list_exists():
    assert all((PACKAGE / name).exists() for name in COMPUTES)


def test_a_new_module_in_a_computing_package_changes_the_fingerprint(package):
    before = fingerprint_of(package)
    (package / "samplers" / "new_kernel.py").write_text("STEP = 1\n")
    assert fingerprint_of(package) != before


def test_the_installed_package_has_the_fingerprint_of_its_sources():
    assert code_fingerprint() == fingerprint_of(PACKAGE)
