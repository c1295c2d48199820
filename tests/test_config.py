"""Configs fail early with messages that name the key; ids are stable and mean what they say."""

import subprocess
import sys

import pytest

from llc.config import build_config
from llc.errors import ConfigError


def test_unknown_key_names_the_key_and_suggests_the_closest():
    with pytest.raises(ConfigError) as exc:
        build_config("quick", {"chainz": 4})
    assert "chainz: unknown key" in str(exc.value) and "did you mean 'chains'" in str(exc.value)


def test_bad_choice_lists_the_allowed_values():
    with pytest.raises(ConfigError) as exc:
        build_config("quick", {"sampler": "nuts"})
    assert "sampler" in str(exc.value) and "'hmc'" in str(exc.value) and "nuts" in str(exc.value)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"problem": "rrr", "widths": [3, 2, 3]}, "true_rank"),
        ({"problem": "rrr", "widths": [3, 2], "true_rank": 1}, "exactly 3 widths"),
        ({"problem": "dln", "widths": [3, 2, 2, 3], "true_rank": 5}, "true_rank must be <= min(widths)"),
        ({"chains": 0}, "chains"),
        ({"batch_size": 10_000}, "batch_size"),
        ({"sampler": "hmc", "precond": "adam"}, "precond applies to sgld only"),
        ({"device": "tpu"}, "device must be"),
        ({"widths": None}, "widths"),
    ],
)
def test_invalid_values_fail_with_the_key(overrides, needle):
    with pytest.raises(ConfigError, match="invalid configuration") as exc:
        build_config("quick", overrides)
    assert needle in str(exc.value)


def test_unknown_preset_names_the_choices():
    with pytest.raises(ConfigError, match="quick"):
        build_config("huge")


def test_run_id_changes_with_any_setting_and_family_id_only_with_data_and_erm():
    base = build_config("quick", {"sampler": "sgld"})
    other_sampler = build_config("quick", {"sampler": "hmc"})
    other_seed = build_config("quick", {"sampler": "sgld", "seed": 1})
    assert base.run_id != other_sampler.run_id
    assert base.family_id == other_sampler.family_id
    assert base.family_id != other_seed.family_id
    assert build_config("quick", {"sampler": "sgld", "gamma": 10}).run_id != base.run_id


def test_defaults_made_explicit_give_the_same_run_id():
    implicit = build_config("quick", {"sampler": "sgld"})
    explicit = build_config("quick", {"sampler": "sgld", "nbeta": implicit.resolved_nbeta, "step_size": 1e-4})
    assert implicit.run_id == explicit.run_id


def test_run_id_is_stable_across_processes():
    code = "from llc.config import build_config; print(build_config('quick', {'sampler': 'sgld'}).run_id)"
    ids = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    }
    assert ids == {build_config("quick", {"sampler": "sgld"}).run_id + "\n"}


def test_a_key_that_takes_a_number_or_auto_fails_in_one_line_naming_both():
    with pytest.raises(ConfigError) as caught:
        build_config("quick", {"problem": "rrr", "widths": (5, 3, 5), "true_rank": 1, "friction": "fast"})
    lines = str(caught.value).splitlines()[1:]
    assert len(lines) == 1 and lines[0].startswith("  friction: ")
    assert (
        "valid number" in lines[0] and "or input should be 'auto'" in lines[0] and "(got 'fast')" in lines[0]
    )
