"""A new user's ordinary mistakes with llc.estimate: each is one ConfigError that names what was wrong and
the fix, raised before anything is written, and never blamed on vmap."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import llc
from llc.config import build_config
from llc.errors import ConfigError
from llc.run.experiment import run_llc

RUN = {"chains": 2, "steps": 10, "batch_size": 8}
gen = torch.Generator().manual_seed(0)
X, Y = torch.randn(40, 3, generator=gen), torch.randn(40, 1, generator=gen)
LABELS = torch.randint(0, 2, (40,), generator=gen)


def regressor() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 1)


def classifier() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2)


class WithHidden(torch.nn.Module):
    """Returns (logits, hidden), as many research models do."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.linear(x)
        return logits, torch.tanh(logits)


class AsDict(WithHidden):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {"logits": self.linear(x), "hidden": x}


class ChecksItsInput(torch.nn.Module):
    """A model whose own code refuses the data, with its own message."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != 4:
            raise ValueError(f"MyNet wants 4 features per example, got {x.shape[-1]}")
        return self.linear(x)


class LogOfLinear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(self.linear(x))  # NaN wherever the linear part is negative


class Items(torch.utils.data.Dataset):
    """A dataset of whatever items it is given."""

    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> object:
        return self.items[i]


def token_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.Flatten(), torch.nn.Linear(8, 2))


def with_nan(t: torch.Tensor, row: int, value: float = math.nan) -> torch.Tensor:
    t = t.clone()
    t[row, 0] = value
    return t


def nan_weights() -> torch.nn.Module:
    model = regressor()
    with torch.no_grad():
        model.weight[0, 1] = math.nan
    return model


PAIRS = list(zip(X, Y, strict=True))
RAGGED = [(x[: 2 + i % 2], y) for i, (x, y) in enumerate(PAIRS)]  # inputs of 2 and 3 features
TOKENS = torch.randint(0, 5, (40, 2), generator=gen)
TOKENS[30, 1] = 7  # the vocabulary has 5

# (name, the call given a runs_dir, phrases the message must hold)
MISTAKES: list[tuple[str, Callable[[Path], object], list[str]]] = [
    (
        "loss=F.cross_entropy (a mean)",
        lambda d: llc.estimate(classifier(), (X, LABELS), loss=F.cross_entropy, runs_dir=d, **RUN),
        ["one value per example, shape [batch]", "reduction='none'", "returned shape []"],
    ),
    (
        "loss=F.mse_loss (a mean)",
        lambda d: llc.estimate(regressor(), (X, Y), loss=F.mse_loss, runs_dir=d, **RUN),
        ["one value per example, shape [batch]", "reduction='none'"],
    ),
    (
        "reduction='none' of shape [batch, k]",
        lambda d: llc.estimate(
            regressor(), (X, Y), loss=lambda o, t: F.mse_loss(o, t, reduction="none"), runs_dir=d, **RUN
        ),
        ["one value per example, shape [batch]", "returned shape [3, 1]"],
    ),
    (
        "the wrong input width",
        lambda d: llc.estimate(torch.nn.Linear(5, 1), (X, Y), runs_dir=d, **RUN),
        ["expects inputs of width 5; x has width 3"],
    ),
    (
        "the model's own error",
        lambda d: llc.estimate(ChecksItsInput(), (X, Y), runs_dir=d, **RUN),
        ["the model's forward fails", "MyNet wants 4 features per example, got 3"],
    ),
    (
        "a token id past the vocabulary",
        lambda d: llc.estimate(token_model(), (TOKENS, LABELS), loss="cross_entropy", runs_dir=d, **RUN),
        ["the model's forward fails on row 30 of x", "index out of range"],
    ),
    (
        "a model returning (logits, hidden)",
        lambda d: llc.estimate(WithHidden(), (X, LABELS), loss="cross_entropy", runs_dir=d, **RUN),
        ["the model's output must be a tensor", "tuple", "output=0", "wrap the model"],
    ),
    (
        "(logits, hidden) with gpu_mode=sequential",
        lambda d: llc.estimate(
            WithHidden(), (X, LABELS), loss="cross_entropy", gpu_mode="sequential", runs_dir=d, **RUN
        ),
        ["the model's output must be a tensor", "output=0"],
    ),
    (
        "a model returning a dict",
        lambda d: llc.estimate(AsDict(), (X, LABELS), loss="cross_entropy", runs_dir=d, **RUN),
        ["the model's output must be a tensor", "output='logits'"],
    ),
    (
        "output= on a model returning a tensor",
        lambda d: llc.estimate(regressor(), (X, Y), output=0, runs_dir=d, **RUN),
        ["output= is for a model whose forward returns a tuple or dict"],
    ),
    (
        "output= naming no element",
        lambda d: llc.estimate(WithHidden(), (X, LABELS), loss="cross_entropy", output=2, runs_dir=d, **RUN),
        ["output=2: the model's tuple has no such element (0 to 1)"],
    ),
    (
        "integer x into a float model",
        lambda d: llc.estimate(regressor(), (TOKENS[:, :1].repeat(1, 3), Y), runs_dir=d, **RUN),
        ["the model's forward fails on row 0 of x", "dtype"],
    ),
    (
        "NaN in x",
        lambda d: llc.estimate(regressor(), (with_nan(X, 7), Y), runs_dir=d, **RUN),
        ["x holds NaN or inf at row 7"],
    ),
    (
        "inf in y",
        lambda d: llc.estimate(regressor(), (X, with_nan(Y, 12, math.inf)), runs_dir=d, **RUN),
        ["y holds NaN or inf at row 12"],
    ),
    (
        "NaN in the weights",
        lambda d: llc.estimate(nan_weights(), (X, Y), runs_dir=d, **RUN),
        ["the model's weights hold NaN or inf (in 'weight')"],
    ),
    (
        "a loss that is NaN at w*",
        lambda d: llc.estimate(LogOfLinear(), (X, Y), runs_dir=d, **RUN),
        ["the loss at the model's weights is nan on row"],
    ),
    (
        "labels outside the model's classes",
        lambda d: llc.estimate(classifier(), (X, LABELS + 1), loss="cross_entropy", runs_dir=d, **RUN),
        ["class labels in [0, 2)", "y holds 2 at row"],
    ),
    (
        "loss=mse on class labels",
        lambda d: llc.estimate(classifier(), (X, LABELS), loss="mse", runs_dir=d, **RUN),
        ["the loss fails on the model's output [3, 2] and y [3]", "loss='cross_entropy'"],
    ),
    (
        "device=cuda without CUDA",
        lambda d: llc.estimate(regressor(), (X, Y), device="cuda", runs_dir=d, **RUN),
        ["CUDA is not available", "device=auto or cpu"],
    ),
    *[
        (
            f"devinterp's {name}",
            lambda d, name=name: llc.estimate(regressor(), (X, Y), runs_dir=d, **{name: 1}, **RUN),
            [f"{name}: unknown key", hint],
        )
        for name, hint in [
            ("lr", "did you mean 'step_size'?"),
            ("localization", "did you mean 'gamma'?"),
            ("num_chains", "did you mean 'chains'?"),
            ("num_draws", "did you mean 'steps'?"),
            ("num_burnin_steps", "did you mean 'warmup'?"),
            ("temperature", "did you mean 'nbeta'?"),
            ("noise_level", "no such setting"),
        ]
    ],
    (
        "an empty dataset",
        lambda d: llc.estimate(regressor(), Items([]), runs_dir=d, **RUN),
        ["the dataset is empty", "at least two (input, target) pairs"],
    ),
    (
        "items that are not (input, target) pairs",
        lambda d: llc.estimate(regressor(), Items(list(X)), runs_dir=d, **RUN),
        ["each item must be an (input, target) pair, got a Tensor", "return (x, y) from"],
    ),
    (
        "items of different shapes",
        lambda d: llc.estimate(regressor(), Items(RAGGED), runs_dir=d, **RUN),
        ["the items do not batch together", "one shape", "a DataLoader whose collate_fn pads them"],
    ),
    (
        "a batch_size of all the streamed points",
        lambda d: llc.estimate(regressor(), Items(PAIRS), runs_dir=d, chains=2, batch_size=40),
        ["batch_size=40 reads all 40 points of streamed data", "batch_size below n"],
    ),
    (
        "compile=true on streamed data",
        lambda d: llc.estimate(regressor(), Items(PAIRS), runs_dir=d, compile=True, **RUN),
        ["compile=true cannot compile a step that reads streamed data", "compile=auto"],
    ),
    (
        "a key the model decides",
        lambda d: llc.estimate(regressor(), (X, Y), widths=[4], runs_dir=d, **RUN),
        ["widths: decided by the model and data you pass"],
    ),
]


@pytest.mark.parametrize(("name", "call", "phrases"), MISTAKES, ids=[m[0] for m in MISTAKES])
def test_each_mistake_is_one_config_error_naming_the_fix_before_anything_is_written(
    name, call, phrases, tmp_path
):
    if name == "device=cuda without CUDA" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    with pytest.raises(ConfigError) as caught:
        call(runs_dir)
    message = str(caught.value)
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} not in {message!r}"
    assert "Traceback" not in message and "vmap" not in message and "gpu_mode=sequential" not in message
    assert not isinstance(caught.value, IndexError | RuntimeError | AttributeError)
    assert list(runs_dir.iterdir()) == []


def test_localization_is_not_matched_to_activation():
    with pytest.raises(ConfigError) as caught:
        llc.estimate(regressor(), (X, Y), localization=100.0)
    assert "'gamma'" in str(caught.value) and "did you mean 'activation'" not in str(caught.value)


@pytest.mark.parametrize(("model", "output"), [(WithHidden, 0), (AsDict, "logits")])
def test_output_names_the_element_that_holds_the_predictions(model, output):
    picked = llc.estimate(model(), (X, LABELS), loss="cross_entropy", output=output, **RUN)
    inner = model()  # the same model, wrapped by hand so that its forward returns the predictions

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)[output]

    by_hand = llc.estimate(Logits(), (X, LABELS), loss="cross_entropy", **RUN)
    assert math.isfinite(picked.llc_mean)
    assert picked.metrics["L0"] == pytest.approx(by_hand.metrics["L0"])
    assert picked.idata.posterior["loss"].values.tolist() == by_hand.idata.posterior["loss"].values.tolist()


def test_output_is_part_of_the_run_id(tmp_path):
    first = llc.estimate(WithHidden(), (X, LABELS), loss="cross_entropy", output=0, runs_dir=tmp_path, **RUN)
    other = llc.estimate(WithHidden(), (X, LABELS), loss="cross_entropy", output=1, runs_dir=tmp_path, **RUN)
    assert first.run_dir != other.run_dir


def test_a_module_run_from_a_config_refuses_its_model_before_the_run_directory(tmp_path, monkeypatch):
    package = tmp_path / "wrong_width"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import torch\n\n"
        "def model():\n    return torch.nn.Linear(5, 1)\n\n"
        "def data():\n    return torch.randn(20, 3), torch.randn(20, 1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    config = build_config(
        None, {"problem": "module", "model": "wrong_width:model", "data": "wrong_width:data"}
    )
    runs_dir = tmp_path / "runs"
    with pytest.raises(ConfigError, match="expects inputs of width 5; x has width 3"):
        run_llc(config, runs_dir)
    assert not runs_dir.exists() or list(runs_dir.iterdir()) == []
