"""The one formatter of pydantic validation errors: a line per problem, naming the key, the value
given, and for an unknown key the one meant."""

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llc.errors import describe, problems


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    widths: list[int] = Field(min_length=1)


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    chains: int = Field(4, ge=1)
    inner: Inner = Inner(widths=[1])


def errors(**values):
    with pytest.raises(ValidationError) as caught:
        Outer(**values)
    return caught.value.errors()


def keys_at(loc):
    return list(Inner.model_fields if loc == ("inner",) else Outer.model_fields)


def test_each_problem_is_one_line_naming_its_key_and_the_scalar_given():
    text = describe(errors(chains=0, inner={"widths": []}), keys_at, "invalid configuration")
    assert text.splitlines() == [
        "invalid configuration:",
        "  chains: Input should be greater than or equal to 1 (got 0)",
        "  inner.widths: List should have at least 1 item after validation, not 0",
    ]


def test_an_unknown_key_names_the_closest_known_key_at_its_own_level():
    ((loc, message),) = problems(errors(inner={"widths": [1], "widht": 2}), keys_at)
    assert loc == ("inner", "widht")
    assert message == "unknown key (did you mean 'widths'?); known keys: widths"


def test_a_hint_names_the_key_meant_where_spelling_alone_would_not():
    ((_, message),) = problems(
        errors(walkers=8), keys_at, hints={"walkers": "did you mean 'chains'? walkers are chains"}
    )
    assert message.startswith("unknown key (did you mean 'chains'? walkers are chains); known keys")
    ((_, unhinted),) = problems(errors(walkers=8), keys_at)
    assert unhinted.startswith("unknown key; known keys: chains, inner")
