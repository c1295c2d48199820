"""`package.module:attr` references: the object they name, or one ConfigError naming the key, what was
not found and the fix."""

import json
import os.path

import pytest

from llc.errors import ConfigError
from llc.imports import import_path


def test_a_reference_gives_the_object_it_names_dotted_attributes_included():
    assert import_path("json:dumps", "loss") is json.dumps
    assert import_path("os.path:join", "model") is os.path.join
    assert import_path("json:JSONDecoder.decode", "data") is json.JSONDecoder.decode


def test_a_missing_module_names_the_key_the_module_and_the_fix():
    with pytest.raises(ConfigError) as caught:
        import_path("no_such_package.models:mlp", "model")
    message = str(caught.value)
    assert message.startswith("model 'no_such_package.models:mlp' cannot be imported")
    assert "No module named 'no_such_package'" in message and "installed, or on PYTHONPATH" in message
    assert isinstance(caught.value.__cause__, ModuleNotFoundError)


def test_a_missing_attribute_names_the_key_the_attribute_and_the_fix():
    with pytest.raises(ConfigError) as caught:
        import_path("json:no_such_factory", "data")
    message = str(caught.value)
    assert message.startswith("data 'json:no_such_factory' cannot be imported: json has no 'no_such_factory'")
    assert "check the name after the colon" in message


@pytest.mark.parametrize("reference", ["json", "json:", ":dumps"])
def test_a_reference_without_module_and_attribute_says_how_to_write_one(reference):
    with pytest.raises(ConfigError, match=r"loss .* is not a reference: write it as 'package.module:attr'"):
        import_path(reference, "loss")


def test_an_error_inside_the_users_module_is_reported_as_theirs(tmp_path, monkeypatch):
    (tmp_path / "broken_factories.py").write_text("raise RuntimeError('the user broke it')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RuntimeError, match="the user broke it"):
        import_path("broken_factories:model", "model")
