"""Your own model: any nn.Module through torch.func gives the built-in path's gradients and estimates,
meets known learning coefficients, runs every sampler, and refuses what vmap cannot batch clearly."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import llc
from llc.config import build_config
from llc.errors import ConfigError
from llc.model.network import MLP
from llc.modules.model import ModuleModel, per_example_cross_entropy, per_example_mse
from llc.problems import build_problem
from llc.problems.module import minibatch_size
from llc.run.experiment import run_llc
from llc.samplers.registry import SAMPLERS as REGISTRY

SAMPLERS = list(REGISTRY)


def as_sequential(model: MLP, w: torch.Tensor) -> torch.nn.Sequential:
    """The MLP (tanh or identity) as nn.Linear layers holding the flat parameters w [d]."""
    layers: list[torch.nn.Module] = []
    for i, layer in enumerate(model.layers):
        linear = torch.nn.Linear(layer.fan_in, layer.fan_out, bias=layer.bias is not None, dtype=w.dtype)
        with torch.no_grad():
            linear.weight.copy_(w[layer.weight].view(layer.fan_in, layer.fan_out).T)
            if layer.bias is not None:
                linear.bias.copy_(w[layer.bias])
        layers.append(linear)
        if i < len(model.layers) - 1 and model.activation == "tanh":
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers)


def to_module_order(model: MLP, w: torch.Tensor) -> torch.Tensor:
    """Flat MLP parameters [chains, d] in the order (and layout) of the nn.Linear copy's parameters."""
    pieces = []
    for layer in model.layers:
        weight = w[:, layer.weight].view(-1, layer.fan_in, layer.fan_out).transpose(1, 2)
        pieces.append(weight.reshape(w.shape[0], -1))
        if layer.bias is not None:
            pieces.append(w[:, layer.bias])
    return torch.cat(pieces, dim=1)


# -- the generic path computes what the hand-written one does ---------------------------------------


@pytest.mark.parametrize("per_chain", [True, False])
def test_generic_loss_and_gradient_equal_the_hand_written_mlps(per_chain, monkeypatch):
    monkeypatch.setattr("llc.modules.model.CHUNK", 7)  # the shared full batch goes in uneven chunks
    mlp = MLP((5, 6, 4, 2), "tanh", bias=True)
    gen = torch.Generator().manual_seed(0)
    w = mlp.init(3, gen, torch.float64) + 0.1 * torch.randn(
        3, mlp.n_params, generator=gen, dtype=torch.float64
    )
    x = (
        torch.randn(3, 9, 5, generator=gen, dtype=torch.float64)
        if per_chain
        else torch.randn(30, 5, dtype=torch.float64)
    )
    y = torch.randn(*x.shape[:-1], 2, generator=gen, dtype=torch.float64)
    generic = ModuleModel(as_sequential(mlp, w[0]), per_example_mse, example_dims=1)

    loss, grad = mlp.loss_and_grad(w, x, y)
    g_loss, g_grad = generic.loss_and_grad(to_module_order(mlp, w), x, y)

    torch.testing.assert_close(g_loss, loss)
    torch.testing.assert_close(g_grad, to_module_order(mlp, grad))
    torch.testing.assert_close(generic.batch_loss(to_module_order(mlp, w), x, y), loss)
    s_loss, s_grad = generic.autograd_loss_and_grad(to_module_order(mlp, w), x, y)
    torch.testing.assert_close((s_loss, s_grad), (g_loss, g_grad))


def token_layers() -> list[torch.nn.Module]:
    nn = torch.nn
    return [nn.Embedding(7, 4), nn.Flatten(), nn.LayerNorm(12), nn.Linear(12, 5), nn.GELU(), nn.Dropout(0.2),
            nn.Linear(5, 2, bias=False), nn.Tanh()]  # fmt: skip


def activation_layers() -> list[torch.nn.Module]:
    nn = torch.nn
    return [nn.Flatten(), nn.Linear(6, 8), nn.GELU(), nn.Dropout(0.2), nn.Linear(8, 7, bias=False), nn.Tanh(),
            nn.Sequential(nn.Linear(7, 6), nn.SiLU(), nn.Linear(6, 5)), nn.LeakyReLU(0.1), nn.Linear(5, 4),
            nn.Sigmoid(), nn.Linear(4, 2)]  # fmt: skip


COMMON_LAYERS = {
    "mlp": (
        lambda: torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)),
        lambda gen, lead: torch.randn(*lead, 6, generator=gen, dtype=torch.float64),
        lambda gen, lead: torch.randint(0, 3, lead, generator=gen),
        per_example_cross_entropy,
    ),
    "tokens": (
        lambda: torch.nn.Sequential(*token_layers()),
        lambda gen, lead: torch.randint(0, 7, (*lead, 3), generator=gen),
        lambda gen, lead: torch.randn(*lead, 2, generator=gen, dtype=torch.float64),
        per_example_mse,
    ),
    "activations": (
        lambda: torch.nn.Sequential(*activation_layers()),
        lambda gen, lead: torch.randn(*lead, 6, generator=gen, dtype=torch.float64),
        lambda gen, lead: torch.randn(*lead, 2, generator=gen, dtype=torch.float64),
        per_example_mse,
    ),
}
BY_HAND = ("mlp", "activations")  # stacks whose gradient stacked_backward.py writes without autograd


@pytest.mark.parametrize("per_chain", [True, False])
@pytest.mark.parametrize("case", COMMON_LAYERS)
def test_common_layers_skip_torch_func_and_give_its_losses_and_gradients(case, per_chain, monkeypatch):
    monkeypatch.setattr("llc.modules.model.CHUNK", 7)
    build, inputs, targets, loss = COMMON_LAYERS[case]
    torch.manual_seed(0)
    module = build().double()
    stacked = ModuleModel(module, loss, example_dims=1)
    through_vmap = ModuleModel(module, loss, example_dims=1)
    through_vmap.stacked, through_vmap.by_hand = None, None
    assert stacked.stacked is not None
    assert (stacked.by_hand is not None) == (case in BY_HAND)
    w, x, y = near_w_star(stacked, inputs, targets, per_chain)

    loss_value, grad = stacked.loss_and_grad(w, x, y)
    torch.testing.assert_close((loss_value, grad), through_vmap.loss_and_grad(w, x, y))
    torch.testing.assert_close(stacked.batch_loss(w, x, y), through_vmap.batch_loss(w, x, y))
    assert grad.abs().min(dim=0).values.count_nonzero() > 0.9 * grad.shape[1]  # every layer's gradient


def near_w_star(model: ModuleModel, inputs, targets, per_chain: bool):
    """Three chains' parameters near the module's own weights, and a batch per chain or a shared one."""
    gen = torch.Generator().manual_seed(1)
    w = model.flat_parameters() + 0.1 * torch.randn(3, model.n_params, generator=gen, dtype=torch.float64)
    lead = (3, 9) if per_chain else (20,)
    return w, inputs(gen, lead), targets(gen, lead)


@pytest.mark.parametrize("per_chain", [True, False])
@pytest.mark.parametrize("case", BY_HAND)
def test_a_gradient_written_by_hand_equals_autograds_through_the_same_layers(case, per_chain):
    build, inputs, targets, loss = COMMON_LAYERS[case]
    torch.manual_seed(0)
    by_hand = ModuleModel(build().double(), loss, example_dims=1)
    by_autograd = ModuleModel(by_hand.module, loss, example_dims=1)
    assert by_hand.by_hand is not None
    by_autograd.by_hand = None
    w, x, y = near_w_star(by_hand, inputs, targets, per_chain)

    loss_value, grad = by_hand.loss_and_grad(w, x, y)
    torch.testing.assert_close((loss_value, grad), by_autograd.loss_and_grad(w, x, y))
    torch.testing.assert_close((loss_value, grad), by_hand.autograd_loss_and_grad(w, x, y))
    assert grad.abs().min(dim=0).values.count_nonzero() > 0.9 * grad.shape[1]


@pytest.mark.parametrize(
    "module",
    [
        torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LeakyReLU(inplace=True)),  # reads its input
        torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ELU()),  # no derivative written for it
        torch.nn.Sequential(torch.nn.LayerNorm(3), torch.nn.Linear(3, 3)),
    ],
)
def test_other_common_layers_keep_autograd(module):
    model = ModuleModel(module, per_example_mse, example_dims=1)
    assert model.stacked is not None and model.by_hand is None


def test_a_loss_given_as_a_callable_keeps_autograd():
    module = torch.nn.Sequential(torch.nn.Linear(3, 3))
    model = ModuleModel(module, lambda out, y: (out - y).abs().sum(-1), example_dims=1)
    assert model.stacked is not None and model.by_hand is None


class Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh())
        self.layers.append(self.layers[0])  # the same Linear twice: one parameter, read twice


@pytest.mark.parametrize(
    "module",
    [
        torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3)),  # a layer not in the list
        torch.nn.Sequential(torch.nn.Embedding(5, 3, padding_idx=0)),  # an option it does not handle
        Tied().layers,
    ],
)
def test_other_modules_run_through_torch_func(module):
    assert ModuleModel(module, per_example_mse, example_dims=1).stacked is None


class LastPosition(torch.nn.Module):
    """Embeddings, causal attention in plain ops and an MLP on every position; logits of the last."""

    def __init__(self, vocab: int = 5, length: int = 4, width: int = 6, split: bool = False) -> None:
        super().__init__()
        self.split = (
            split  # q, k, v by split of the projection (nanoGPT), or unbind of it viewed and permuted
        )
        self.embed = torch.nn.Embedding(vocab, width)
        self.position = torch.nn.Parameter(0.1 * torch.randn(length, width))
        self.norm = torch.nn.LayerNorm(width)
        self.qkv, self.out = torch.nn.Linear(width, 3 * width), torch.nn.Linear(width, width)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(width, 8), torch.nn.GELU(), torch.nn.Linear(8, width))
        self.head = torch.nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.position
        batch, length, width = h.shape
        if self.split:
            q, k, v = (
                t.view(batch, length, 2, -1).transpose(1, 2) for t in self.qkv(self.norm(h)).split(width, 2)
            )
        else:
            q, k, v = self.qkv(self.norm(h)).view(batch, length, 3, 2, -1).permute(2, 0, 3, 1, 4)
        future = torch.ones(length, length, dtype=torch.bool).triu(1)
        scores = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(future, -math.inf)
        h = h + self.out((scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, length, width))
        h = h + self.mlp(self.norm(h))
        return self.head(h[:, -1])


@pytest.mark.parametrize(("per_chain", "split"), [(True, False), (False, False), (True, True)])
def test_the_exported_forward_computes_only_what_the_output_reads_and_gives_the_same_gradients(
    per_chain, split
):
    from llc.modules.graph import export_forward

    torch.manual_seed(0)
    module = LastPosition(split=split).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 5, (3, 9, 4) if per_chain else (20, 4), generator=gen)
    y = torch.randint(0, 5, x.shape[:-1], generator=gen)
    exported = export_forward(module, x[0] if per_chain else x)
    assert exported is not None and exported.pushed >= 14  # the MLP, attention, out-projection, queries
    nodes = list(exported.program.graph_module.graph.nodes)
    aten = torch.ops.aten
    narrowed = [n.args[0] for n in nodes if n.target is aten.narrow.default]
    # the query's and the residual's last position from narrowed copies: only inputs are narrowed while
    # read whole elsewhere too (their narrow's backward would zero-fill a whole activation)
    assert narrowed and all(len(n.users) == 1 or n.op == "placeholder" for n in narrowed)
    softmax = (aten.softmax.int, aten._softmax.default, aten.logsumexp.default)
    assert [n.target for n in nodes if n.target in softmax] == [aten.logsumexp.default]  # over 4 keys

    graph = ModuleModel(module, per_example_cross_entropy, example_dims=1)
    functional = ModuleModel(module, per_example_cross_entropy, example_dims=1, exported=False)
    assert graph.stacked is None
    w = graph.flat_parameters() + 0.1 * torch.randn(3, graph.n_params, generator=gen, dtype=torch.float64)
    loss, grad = graph.loss_and_grad(w, x, y)
    torch.testing.assert_close((loss, grad), functional.loss_and_grad(w, x, y))
    torch.testing.assert_close(graph.batch_loss(w, x, y), functional.batch_loss(w, x, y))
    assert grad.count_nonzero() > 0.9 * grad.numel()
    assert any(g.exported is not None for g in graph._graphs.values())
    assert any(f is not None for g in graph._graphs.values() for f in g.chained.values())  # without vmap


class Cumulative(torch.nn.Module):
    """An operation chain_graph.py has no rule for (cumsum): the exported graph runs under vmap."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).cumsum(dim=-1)


def test_an_operation_without_a_chain_rule_runs_the_exported_graph_under_vmap():
    torch.manual_seed(0)
    module = Cumulative().double()
    x, y = torch.randn(3, 5, 3, dtype=torch.float64), torch.randn(3, 5, 2, dtype=torch.float64)
    graph = ModuleModel(module, per_example_mse, example_dims=1)
    w = graph.flat_parameters() + 0.1 * torch.randn(3, graph.n_params, dtype=torch.float64)
    result = graph.loss_and_grad(w, x, y)
    assert [f for g in graph._graphs.values() for f in g.chained.values()] == [None]
    assert all(g.exported is not None for g in graph._graphs.values())
    functional = ModuleModel(module, per_example_mse, example_dims=1, exported=False)
    torch.testing.assert_close(result, functional.loss_and_grad(w, x, y))


class DataDependent(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) if x.sum() > 0 else -self.linear(x)


def test_a_forward_torch_export_cannot_trace_keeps_functional_call():
    from llc.modules.graph import export_forward

    assert export_forward(DataDependent(), torch.ones(4, 3)) is None


def test_cross_entropy_is_torchs_and_sums_over_positions():
    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(6, 4, 5, generator=gen), torch.randint(0, 5, (6, 4), generator=gen)
    reference = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none").sum(1)
    torch.testing.assert_close(per_example_cross_entropy(logits, labels), reference)


# -- estimates ---------------------------------------------------------------------------------------

ANALYTIC = {
    "linear": {"problem": "linear", "widths": (4, 3)},
    "rrr": {"problem": "rrr", "widths": (5, 3, 5), "true_rank": 1},
    "dln": {"problem": "dln", "widths": (4, 3, 3, 4), "true_rank": 1},
}
SAMPLING_KEYS = ("chains", "steps", "warmup", "batch_size", "step_size", "gamma", "seed", "eval_every")


@pytest.mark.slow
@pytest.mark.parametrize("case", ANALYTIC)
def test_analytic_targets_as_plain_modules_agree_with_the_built_in_path_and_the_truth(case, tmp_path):
    """test_validation.py's SGLD settings (gamma = 1, eps = 3e-5); the same data, w* and seeds."""
    config = build_config(
        "full", {"noise_scale": 0.1, "gamma": 1.0, "step_size": 3e-5, "sampler": "sgld", **ANALYTIC[case]}
    )
    built_in = run_llc(config, tmp_path).metrics
    w_star = torch.load(tmp_path / "families" / config.family_id / "erm.pt", weights_only=True)["w_star"]
    problem = build_problem(config)
    module = as_sequential(problem.model, w_star)
    sampling = {k: v for k, v in config.normalized().items() if k in SAMPLING_KEYS}
    generic = llc.estimate(module, (problem.x, problem.y), loss="mse", sampler="sgld", **sampling)

    truth = built_in["llc_true"]
    combined_se = math.hypot(built_in["llc_se"], generic.llc_se)
    print(
        f"{case}: generic {generic.llc_mean:.3f} ± {generic.llc_se:.3f}, built-in "
        f"{built_in['llc_mean']:.3f} ± {built_in['llc_se']:.3f}, true {truth}"
    )
    assert generic.metrics["L0"] == pytest.approx(built_in["L0"], rel=1e-5)
    assert abs(generic.llc_mean - built_in["llc_mean"]) < 3 * combined_se
    assert abs(generic.llc_mean - truth) / truth < (0.05 if case == "linear" else 0.15)
    assert generic.metrics["chains_diverged"] == 0 and generic.metrics["r_hat"] < 1.1


class NormalCrossing(torch.nn.Module):
    """f(x) = x · Π w_i^p_i, at w* = 0: lambda = 1 / (2 max p)."""

    def __init__(self, powers: list[int]) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(len(powers)))
        self.register_buffer("powers", torch.tensor(powers, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.prod(self.w**self.powers)


def normal_crossing_data(n: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """devinterp's data set (sampler_accuracy_test.py): x ~ N(0, 2²), y = 0.25·N(0, 1), seed 42."""
    gen = torch.Generator().manual_seed(42)
    x = 2 * torch.randn(n, generator=gen)
    return x, 0.25 * torch.randn(n, generator=gen)


def normal_crossing_expectation(x: torch.Tensor, y: torch.Tensor, nbeta: float, gamma: float) -> float:
    """nβ·(E_π[L_n] - L_n(0)) for powers (1, 2) in float64: w1 | w2 is Gaussian (exact), w2 on a fine grid."""
    x, y = x.double().numpy(), y.double().numpy()
    sxy, sxx = np.mean(x * y), np.mean(x * x)
    w2 = np.linspace(-40.0, 40.0, 800_001)  # the prior's sd is 1 / sqrt(gamma)
    c = w2 * w2  # L_n(w) - L_n(0) = -2·c·w1·mean(xy) + (c·w1)²·mean(x²), quadratic in w1
    a = 2 * nbeta * c * c * sxx + gamma  # precision of w1 | w2
    mean = 2 * nbeta * c * sxy / a
    excess = -2 * c * sxy * mean + c * c * sxx * (mean * mean + 1 / a)  # E[L_n - L_n(0) | w2]
    log_density = 0.5 * (a * mean * mean - np.log(a) - gamma * c)  # of w2, with w1 integrated out
    density = np.exp(log_density - log_density.max())
    return float(nbeta * np.sum(density * excess) / np.sum(density))


NORMAL_CROSSING_RUNS = {
    "hmc": {"chains": 8, "steps": 1000, "warmup": 200},
    "sgld": {"chains": 8, "steps": 6000, "batch_size": 1000, "step_size": 1e-3},
}


@pytest.mark.slow
@pytest.mark.parametrize("sampler", NORMAL_CROSSING_RUNS)
def test_normal_crossing_meets_its_learning_coefficient_within_devinterps_acceptance(sampler):
    """Powers (1, 2): lambda = 0.25. The estimate is held to what it estimates at this n, the localized
    posterior's nβ·(E[L_n] - L_n(0)) by quadrature: 0.2428 at n = 1000, nβ = n / log n, gamma = 0.1,
    0.0072 below lambda. Within 4.5 standard errors, not devinterp's 3.5: in this funnel (w1 pinned
    to ~0 where |w2| > 1, 3.5% of the mass) HMC's step of ~0.06 rarely enters the neck, so it reads
    low (0.232 ± 0.005 over 16 seeds) and its standard error understates its spread over seeds
    1.7-fold (0.018 against a stated 0.011; seed 8 reads 0.206, 4.0 standard errors low). SGLD's
    standard errors (0.02 to 0.11 over 10 seeds) are too wide to catch a 15% bias at this length.

    gamma = 0.1: at gamma = 1 the localization alone pulls the expectation to 0.219 (HMC's estimate
    and the issue's prototype read 0.21), at gamma = 10 to 0.109; at 0.1 the prior is nearly flat
    where the posterior lives.
    """
    x, y = normal_crossing_data()
    estimate = llc.estimate(
        NormalCrossing([1, 2]), (x, y), sampler=sampler, gamma=0.1, threads=1,
        **NORMAL_CROSSING_RUNS[sampler],
    )  # fmt: skip
    expected = normal_crossing_expectation(x, y, estimate.metrics["nbeta"], gamma=0.1)
    rel = (estimate.llc_mean - expected) / expected
    print(f"{sampler}: {estimate.llc_mean:.3f} ± {estimate.llc_se:.3f}, expected {expected:.4f} ({rel:+.1%})")
    assert abs(expected - 0.25) < 0.01  # the finite-n expectation is lambda's, less 0.0072
    assert abs(estimate.llc_mean - expected) < max(4.5 * estimate.llc_se, 0.05 * expected)
    assert estimate.metrics["r_hat"] < 1.1


def trained_classifier() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    from own_model_factories import classification_data, classifier

    model = classifier()
    x, y = classification_data().tensors
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, x, y


@pytest.mark.parametrize(
    ("sampler", "extra"),
    [("sgld", {}), ("sgld", {"precond": "rmsprop"}), ("sgld", {"precond": "adam"}), ("sghmc", {}),
     ("hmc", {}), ("mclmc", {})],
)  # fmt: skip
def test_a_cross_entropy_classifier_runs_with_every_sampler(sampler, extra):
    model, x, y = trained_classifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    step = {"sgld": 1e-4, "sghmc": 1e-5}.get(sampler)
    estimate = llc.estimate(
        model, (x, y), loss="cross_entropy", sampler=sampler, chains=4, steps=150, warmup=50,
        batch_size=64, step_size=step, eval_every=50, **extra,
    )  # fmt: skip
    metrics = estimate.metrics
    assert metrics["chains_diverged"] == 0
    assert math.isfinite(estimate.llc_mean) and estimate.llc_se > 0
    assert metrics["d"] == sum(p.numel() for p in model.parameters()) and metrics["n"] == 200
    with torch.no_grad():
        assert metrics["L0"] == pytest.approx(float(torch.nn.functional.cross_entropy(model(x), y)), rel=1e-5)
    assert estimate.idata.posterior["llc"].shape == (4, 150)
    assert estimate.run_dir is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model


def test_a_loss_given_as_a_callable_equals_the_named_one():
    from own_model_factories import summed_cross_entropy

    model, x, y = trained_classifier()
    run = {"sampler": "sgld", "chains": 2, "steps": 30, "batch_size": 32, "dtype": "float64"}
    named = llc.estimate(model, (x, y), loss="cross_entropy", **run)
    given = llc.estimate(model, (x, y), loss=summed_cross_entropy, **run)
    assert given.metrics["L0"] == pytest.approx(named.metrics["L0"], rel=1e-12)
    assert given.llc_mean == pytest.approx(named.llc_mean, rel=1e-8)


def test_a_full_data_pass_over_many_chains_in_blocks_gives_what_one_pass_over_all_gives(monkeypatch):
    """On the CPU large full-data passes take FULL_DATA_CHAINS chains at a time (a smaller working set): each
    chain's loss and gradient are those of one pass over all the chains (to float rounding), in both the
    hand-written path (an MLP) and the vmap one (a loss given as a callable)."""
    from own_model_factories import summed_cross_entropy

    import llc.modules.model as module_model

    model, x, y = trained_classifier()
    for loss in (module_model.LOSSES["cross_entropy"], summed_cross_entropy):
        evaluated = module_model.ModuleModel(model, loss, 1)
        w = evaluated.flat_parameters() + 1e-2 * torch.randn(19, evaluated.n_params)
        monkeypatch.setattr(module_model, "FULL_DATA_WORK", 0)  # however few the points
        monkeypatch.setattr(module_model, "FULL_DATA_CHAINS", 8)  # blocks of 8, 8 and 3
        blocked = (*evaluated.loss_and_grad(w, x, y), evaluated.batch_loss(w, x, y))
        monkeypatch.setattr(module_model, "FULL_DATA_CHAINS", 64)  # one pass
        whole = (*evaluated.loss_and_grad(w, x, y), evaluated.batch_loss(w, x, y))
        for a, b in zip(blocked, whole, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


class ItemInForward(torch.nn.Module):
    """A forward pass that reads a parameter's value into Python: vmap cannot batch that."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = 2.0 if self.linear.weight.sum().item() > 0 else 1.0
        return scale * self.linear(x)


def test_a_model_vmap_cannot_batch_gets_one_clear_error_and_runs_sequentially():
    torch.manual_seed(0)
    x, y = torch.randn(40, 3), torch.randn(40, 1)
    run = {"chains": 2, "steps": 20, "batch_size": 8}
    with pytest.raises(ConfigError) as caught:
        llc.estimate(ItemInForward(), (x, y), **run)
    message = str(caught.value)
    assert ".item()" in message and "gpu_mode=sequential" in message and "vmap" in message

    estimate = llc.estimate(ItemInForward(), (x, y), gpu_mode="sequential", **run)
    assert math.isfinite(estimate.llc_mean)
    assert estimate.metrics["gpu_mode"] == "sequential"


def test_estimate_rejects_keys_the_model_and_data_decide():
    with pytest.raises(ConfigError, match="widths"):
        llc.estimate(torch.nn.Linear(2, 1), (torch.randn(8, 2), torch.randn(8, 1)), widths=[4])


def test_with_runs_dir_the_run_directory_is_written_and_a_second_call_reuses_it(tmp_path):
    model, x, y = trained_classifier()
    run = {"loss": "cross_entropy", "chains": 2, "steps": 40, "batch_size": 32}
    first = llc.estimate(model, torch.utils.data.TensorDataset(x, y), runs_dir=tmp_path, **run)
    assert first.run_dir is not None and (first.run_dir / "complete.json").exists()
    assert {"config.json", "metrics.json", "sgld.nc"} <= {p.name for p in first.run_dir.iterdir()}
    assert json.loads((first.run_dir / "metrics.json").read_text()) == first.metrics
    config = json.loads((first.run_dir / "config.json").read_text())
    assert config["problem"] == "module" and config["loss"] == "cross_entropy"
    sealed = (first.run_dir / "metrics.json").stat().st_mtime_ns

    again = llc.estimate(model, (x, y), runs_dir=tmp_path, **run)
    assert again.run_dir == first.run_dir and again.metrics == first.metrics
    assert (first.run_dir / "metrics.json").stat().st_mtime_ns == sealed  # reused, not recomputed

    with torch.no_grad():
        model[0].weight[0, 0] += 0.01
    moved = llc.estimate(model, (x, y), runs_dir=tmp_path, **run)
    other_data = llc.estimate(model, (x, (y + 1) % 3), runs_dir=tmp_path, **run)
    assert len({first.run_dir, moved.run_dir, other_data.run_dir}) == 3


# -- configs ------------------------------------------------------------------------------------------


def write_package(root: Path, scale: float) -> None:
    package = root / "my_models"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(
        "import torch\n\n"
        "class Scaled(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        torch.manual_seed(0)\n"
        "        self.linear = torch.nn.Linear(2, 1)\n\n"
        f"    def forward(self, x):\n        return {scale} * self.linear(x)\n"
    )
    (package / "factories.py").write_text(
        "import torch\nfrom my_models.nets import Scaled\n\n"
        "def model():\n    return Scaled()\n\n"
        "def data():\n    g = torch.Generator().manual_seed(0)\n"
        "    return torch.randn(50, 2, generator=g), torch.randn(50, 1, generator=g)\n"
    )


def module_config(weights: Path | None = None, **extra: object):
    values = {"problem": "module", "model": "my_models.factories:model", "data": "my_models.factories:data"}
    if weights is not None:
        values["weights"] = str(weights)
    return build_config(None, {**values, "chains": 2, "steps": 20, "batch_size": 16, **extra})


def test_module_ids_cover_the_weights_content_and_the_source_of_the_factories_package(tmp_path, monkeypatch):
    write_package(tmp_path, 1.0)
    monkeypatch.syspath_prepend(str(tmp_path))
    weights = tmp_path / "w.pt"
    torch.save(torch.nn.Linear(2, 1).state_dict(), weights)
    ids = (module_config(weights).run_id, module_config(weights).family_id)  # computed from the files now
    assert module_config(weights).run_id == ids[0]

    moved = tmp_path / "elsewhere.pt"
    shutil.copy(weights, moved)
    assert (module_config(moved).run_id, module_config(moved).family_id) == ids

    torch.save(torch.nn.Linear(2, 1).state_dict(), tmp_path / "new.pt")
    (tmp_path / "new.pt").replace(weights)  # other weights, saved as tools do (write, then rename)
    assert module_config(weights).run_id != ids[0] and module_config(weights).family_id != ids[1]
    assert module_config(None).family_id not in (ids[1], module_config(weights).family_id)

    unchanged = module_config(None).family_id
    write_package(tmp_path, 3.0)  # the model's class, in a module beside the factories', changes
    nets = tmp_path / "my_models" / "nets.py"
    later = nets.stat().st_mtime_ns + 10**9  # an edit a second later (within one clock tick, 3.0 could
    os.utime(nets, ns=(later, later))  # keep 1.0's time stamp, and a process its cached hash)
    assert module_config(None).family_id != unchanged
    assert module_config(None, gamma=5.0).family_id == module_config(None).family_id
    assert module_config(None, gamma=5.0).run_id != module_config(None).run_id


def test_a_module_run_loads_the_weights_file_and_reports_n_from_its_data(tmp_path, monkeypatch):
    write_package(tmp_path, 1.0)
    monkeypatch.syspath_prepend(str(tmp_path))
    trained = torch.nn.Linear(2, 1)
    with torch.no_grad():
        trained.weight.fill_(0.5)
        trained.bias.fill_(-0.25)
    weights = tmp_path / "w.pt"
    torch.save({f"linear.{k}": v for k, v in trained.state_dict().items()}, weights)  # Scaled's keys
    from my_models.factories import data

    x, y = data()
    metrics = run_llc(module_config(weights), tmp_path / "runs").metrics
    assert metrics["L0"] == pytest.approx(float((trained(x) - y).square().mean()), rel=1e-5)
    assert metrics["n"] == 50 and metrics["d"] == 3
    assert metrics["nbeta"] == pytest.approx(50 / math.log(50))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"problem": "module", "data": "a.b:c"}, "problem module needs model"),
        ({"problem": "module", "model": "not a reference", "data": "a:b"}, "package.module:factory"),
        ({"problem": "module", "model": "a:b", "data": "a:b", "loss": "hinge"}, "loss for problem module"),
        ({"problem": "mlp", "widths": [4], "loss": "cross_entropy"}, "for problem module"),
        ({"problem": "mlp", "widths": [4], "weights": "w.pt"}, "weights applies to problem module only"),
    ],
)
def test_module_keys_are_checked_at_the_edge(values, message):
    with pytest.raises(ConfigError, match=message):
        build_config(None, values)


def test_a_factory_that_cannot_be_imported_is_a_config_error_naming_the_key():
    config = build_config(None, {"problem": "module", "model": "no_such_package.x:model", "data": "a:b"})
    with pytest.raises(
        ConfigError, match=r"model 'no_such_package\.x:model': cannot find module 'no_such_package\.x'"
    ):
        _ = config.run_id


def test_chains_spread_over_two_cores_give_the_draws_of_one_core():
    """34 chains make blocks that two threads step at once; each thread must evaluate its own copy of
    the module (functional_call swaps the module's parameters while it runs)."""
    model, x, y = trained_classifier()
    run = {"loss": "cross_entropy", "chains": 34, "steps": 20, "batch_size": 16, "dtype": "float64"}
    one = llc.estimate(model, (x, y), threads=1, **run)
    two = llc.estimate(model, (x, y), threads=2, **run)
    loss_one, loss_two = (e.idata.posterior["loss"].values for e in (one, two))
    assert loss_one.shape == (34, 20)
    np.testing.assert_array_equal(loss_one, loss_two)


@pytest.mark.parametrize(
    ("n", "given", "expected"),
    [(1000, {}, 1000), (1024, {}, 1024), (1025, {}, 256), (1000, {"batch_size": 100}, 100)],
)
def test_sgld_on_your_own_small_data_steps_on_all_of_it_unless_you_give_a_batch_size(n, given, expected):
    """Up to FULL_BATCH_N points held in memory, a 256-point minibatch's noise heated devinterp's
    reduced-rank cases 5-15% high for a step at most 4 times cheaper: the default there is all n."""
    torch.manual_seed(0)
    x = torch.randn(n, 2)
    y = x @ torch.tensor([[1.0], [-1.0]])
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -1.0]]))
    metrics = llc.estimate(
        model, (x, y), chains=2, steps=20, warmup=0, step_size=1e-4, threads=1, **given
    ).metrics
    assert metrics["batch_size_used"] == expected
    assert (metrics.get("minibatch_heating") == 0.0) == (expected == n)


def test_the_all_points_default_and_an_explicit_batch_size_of_256_are_different_runs():
    from llc.run.estimate import estimate_config

    default, explicit = (
        estimate_config("mse", "sgld", {}),
        estimate_config("mse", "sgld", {"batch_size": 256}),
    )
    assert default.batch_size == explicit.batch_size == 256
    assert (
        default.normalized()["full_batch_up_to"] == 1024 and "full_batch_up_to" not in explicit.normalized()
    )
    assert (
        default.normalized() != explicit.normalized()
    )  # so their run_ids differ: neither reuses the other's run
    assert "full_batch_up_to" not in estimate_config("mse", "hmc", {}).normalized()


def test_a_built_in_problems_batch_size_is_its_presets_whatever_n():
    config = build_config(None, {"problem": "linear", "widths": (4, 3), "n_data": 500, "sampler": "sgld"})
    assert minibatch_size(config, 500, streamed=False) == config.batch_size < 500
