"""The LLC of a model's parts (restrict=, llc.heads) and on other data (loss_data=): which elements a
restriction chooses, that chains leave every other weight exactly at w*, the known λ of each layer of
linear networks with every sampler, and the metrics.json contract of a restricted run."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from torch import nn

import llc
from llc.config import build_config
from llc.errors import ConfigError
from llc.model.posterior import LocalizedPosterior
from llc.modules.model import LOSSES, ModuleModel, per_example_mse
from llc.modules.parts import resolve
from llc.run.experiment import run_llc
from llc.samplers.build import build_kernel
from llc.samplers.registry import SAMPLERS, Sampling

MODULE = {"problem": "module", "model": "own_model_factories:classifier"}
MODULE |= {"data": "own_model_factories:classification_data", "loss": "cross_entropy"}


def linear_network(widths: list[int], ranks: list[int], seed: int, n: int = 200) -> tuple[nn.Module, tuple]:
    """Bias-free linear layers whose layer i has ranks[i] unit singular values (random singular vectors),
    and noiseless data: w* is an exact minimum, and the inputs' curvature is the same along every
    direction a layer's A·W·B sees."""
    gen = torch.Generator().manual_seed(seed)
    layers = []
    for (fan_in, fan_out), rank in zip(itertools.pairwise(widths), ranks, strict=True):
        u, _ = torch.linalg.qr(torch.randn(fan_out, fan_out, generator=gen))
        v, _ = torch.linalg.qr(torch.randn(fan_in, fan_in, generator=gen))
        s = torch.zeros(fan_out, fan_in)
        s[range(rank), range(rank)] = 1.0
        layer = nn.Linear(fan_in, fan_out, bias=False)
        with torch.no_grad():
            layer.weight.copy_(u @ s @ v.T)
        layers.append(layer)
    model = nn.Sequential(*layers)
    x = torch.randn(n, widths[0], generator=gen)
    with torch.no_grad():
        return model, (x, model(x))


def layer_lambda(model: nn.Sequential, i: int) -> float:
    """λ of layer i alone: f = A·W·B·x is linear in W, so λ = rank(A)·rank(B)/2."""
    weights = [layer.weight.detach() for layer in model]
    a, b = torch.eye(weights[i].shape[0]), torch.eye(weights[0].shape[1])
    for w in weights[i + 1 :]:
        a = w @ a
    for w in weights[:i]:
        b = w @ b
    return float(torch.linalg.matrix_rank(a) * torch.linalg.matrix_rank(b)) / 2


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))


# -- which elements a restriction chooses -----------------------------------------------------------------


def test_a_glob_a_callable_and_an_element_mapping_choose_the_same_elements():
    model = small_net()
    (by_glob,), single = resolve(model, "0.*")
    (by_callable,), _ = resolve(model, lambda name, p: name.startswith("0."))
    masks = {"0.weight": torch.ones(3, 4, dtype=torch.bool), "0.bias": torch.ones(3, dtype=torch.bool)}
    (by_masks,), mapping_single = resolve(model, {"first": masks})
    assert single and not mapping_single
    assert torch.equal(by_glob.mask, by_callable.mask) and torch.equal(by_glob.mask, by_masks.mask)
    assert by_glob.mask.tolist() == [True] * 15 + [False] * 8


def test_a_callable_may_choose_single_elements():
    (part,), _ = resolve(
        small_net(), lambda name, p: torch.eye(*p.shape, dtype=torch.bool) if p.dim() == 2 else False
    )
    assert part.n_params == 3 + 2  # the diagonals of the two weight matrices


def test_a_glob_that_matches_nothing_is_one_error_naming_it_and_close_names_before_any_directory(tmp_path):
    x = torch.randn(20, 4)
    with pytest.raises(ConfigError, match=r"restrict '0\.weights' matches no parameter; .*0\.weight"):
        llc.estimate(small_net(), (x, torch.randn(20, 2)), restrict="0.weights", runs_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_a_mask_of_the_wrong_shape_is_one_error_naming_the_parameter_and_both_shapes():
    with pytest.raises(ConfigError, match=r"mask for 0\.weight has shape \(2, 4\), the parameter \(3, 4\)"):
        resolve(small_net(), {"p": {"0.weight": torch.ones(2, 4, dtype=torch.bool)}})


def test_the_restrict_key_is_for_your_own_model_and_leaves_ids_alone_unset():
    with pytest.raises(ConfigError, match="restrict applies to problem module"):
        build_config("quick", {"restrict": "0.*"})
    plain = build_config(None, MODULE)
    assert "restrict" not in plain.normalized()
    assert build_config(None, {**MODULE, "restrict": "0.*"}).run_id != plain.run_id


# -- attention heads --------------------------------------------------------------------------------------


def test_heads_of_multihead_attention_are_their_qkv_rows_and_output_columns():
    model = nn.Sequential(nn.Linear(3, 8), nn.MultiheadAttention(8, num_heads=2))
    found = llc.heads(model)
    assert list(found) == ["1.head0", "1.head1"]
    head1 = found["1.head1"]
    rows = [i for i in range(24) if head1["1.in_proj_weight"][i].all()]
    assert rows == [4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23]  # head 1's rows of q, k and v
    assert head1["1.in_proj_bias"].nonzero().squeeze(1).tolist() == rows
    assert head1["1.out_proj.weight"][:, 4:].all() and not head1["1.out_proj.weight"][:, :4].any()
    (h0, h1), _ = resolve(model, found)
    assert not (h0.mask & h1.mask).any()
    assert h0.n_params == h1.n_params == 12 * 8 + 12 + 8 * 4  # the output bias is in no head


class TinyAttention(nn.Module):
    """Token embeddings, one nn.MultiheadAttention of 2 heads with a residual, logits of the last token."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.attn, self.out = (
            nn.Embedding(5, 8),
            nn.MultiheadAttention(8, 2, batch_first=True),
            nn.Linear(8, 5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.out((h + a)[:, -1])


def test_multihead_attention_runs_all_chains_at_once_and_its_heads_in_one_batched_run():
    """In eval mode nn.MultiheadAttention takes a fused kernel that vmap cannot differentiate; the model
    evaluates it through its plain decomposition instead: the batched loss and gradient equal the
    one-chain-at-a-time autograd reference, restrict=llc.heads(model) runs as one run, and PyTorch's
    attention switches are as they were afterwards."""
    torch.manual_seed(0)
    model = TinyAttention().eval()
    x = torch.randint(0, 5, (64, 6))
    data = (x, x[:, 0])
    module = ModuleModel(model, LOSSES["cross_entropy"], 1)
    w = module.flat_parameters() + 0.01 * torch.randn(3, module.n_params)
    loss, grad = module.loss_and_grad(w, *data)
    ref_loss, ref_grad = module.autograd_loss_and_grad(w, *data)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)
    settings = {"loss": "cross_entropy", "chains": 2, "steps": 20, "warmup": 20, "gamma": 100.0}
    heads = llc.estimate(model, data, restrict=llc.heads(model), **settings)
    assert list(heads) == ["attn.head0", "attn.head1"]
    assert all(np.isfinite(e.llc_mean) and e.metrics["chains_used"] == 2 for e in heads.values())
    assert torch.backends.mha.get_fastpath_enabled()


class SeparateAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.n_heads = 3
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 6)
        self.o_proj = nn.Linear(6, 6)


def test_heads_finds_attention_written_as_separate_projections_and_its_head_count():
    found = llc.heads(nn.ModuleDict({"attn": SeparateAttention()}))
    assert list(found) == ["attn.head0", "attn.head1", "attn.head2"]
    head2 = found["attn.head2"]
    assert head2["attn.k_proj.weight"][4:].all() and not head2["attn.k_proj.weight"][:4].any()
    assert head2["attn.v_proj.bias"].tolist() == [False] * 4 + [True] * 2
    assert head2["attn.o_proj.weight"][:, 4:].all() and "attn.o_proj.bias" not in head2


def test_restrict_heads_on_a_model_without_attention_is_one_error_before_any_directory(tmp_path):
    config = build_config(None, {**MODULE, "restrict": "heads", "chains": 2, "steps": 10})
    with pytest.raises(ConfigError, match="heads found no attention"):
        run_llc(config, tmp_path)
    assert not any(p for p in tmp_path.iterdir() if p.name != "families")


# -- the chains move inside their part only ---------------------------------------------------------------


class Positions:
    """A recorder that keeps nothing: only the kernel's final state is looked at."""

    def position(self, j: int, rows: slice, w: torch.Tensor) -> None: ...

    def loss(self, j: int, rows: slice, loss: torch.Tensor) -> None: ...

    def stats(self, j: int, stats: dict[str, torch.Tensor]) -> None: ...


@pytest.mark.parametrize(
    ("sampler", "options"),
    [
        ("sgld", {"precond": "none"}),
        ("sgld", {"precond": "rmsprop"}),
        ("sghmc", {"friction": 0.1}),
        ("hmc", {"n_leapfrog": 3, "target_accept": 0.8}),
        ("mclmc", {}),
    ],
)
def test_each_kernel_leaves_the_weights_outside_each_chains_part_exactly_at_w_star(sampler, options):
    model, (x, y) = linear_network([3, 4, 2], [3, 2], seed=0, n=40)
    module = ModuleModel(model, per_example_mse, 1)
    w_star = module.flat_parameters()
    parts, _ = resolve(model, {"first": "0.*", "second": "1.*"})
    chains = 8  # 4 per part
    mask = torch.stack([p.mask for p in parts]).float().repeat_interleave(4, dim=0)
    gamma = torch.tensor([1.0, 100.0]).repeat_interleave(4).unsqueeze(1)
    batch = 10 if SAMPLERS[sampler].minibatch else None
    posterior = LocalizedPosterior(module, x, y, w_star, 20.0, gamma, batch, mask=mask)
    sampling = Sampling(sampler, chains, 30, 10, 1, 0, 0, 0, 0, False, "vectorized", 1e-3, options=options)
    kernel = build_kernel(sampling, posterior)
    state = kernel.prepare(
        kernel.init(w_star.expand(chains, -1).clone(), torch.Generator().manual_seed(0)), False
    )
    w = kernel.position(kernel.advance(state, 30, True, Positions()))
    outside = mask == 0
    assert torch.equal(w[outside], w_star.expand(chains, -1)[outside])
    assert (w[~outside] != w_star.expand(chains, -1)[~outside]).float().mean() > 0.9


def test_restricting_to_every_parameter_draws_what_the_plain_run_draws():
    model, data = linear_network([3, 4, 2], [3, 2], seed=0, n=60)
    # SGLD; its step searched (step_size=auto); MCLMC, whose step uses the part's dimension
    for settings in ({"step_size": 1e-3}, {"step_size": "auto", "warmup": 40}, {"sampler": "mclmc"}):
        common = {"chains": 4, "steps": 20, "warmup": 20, "gamma": 1.0, "batch_size": 20, **settings}
        plain = llc.estimate(model, data, **common)
        every = llc.estimate(model, data, restrict="*", **common)
        assert np.array_equal(plain.idata.posterior["llc"].values, every.idata.posterior["llc"].values)
        assert every.llc_mean == plain.llc_mean and every.metrics["parts"]["*"]["n_params"] == 20


def test_step_size_auto_searches_each_parts_step_in_one_batched_run_as_a_run_of_that_part_alone(monkeypatch):
    """Layer 0 scaled up 4x and layer 1 down 4x (the same function, the same w*): the curvature along
    layer 0's weights is 256 times smaller than along layer 1's, so each part needs its own step. The
    parts run as one run (one call of the sampler, with every part's chains) and each part's step is the
    one a run of that part alone searches, within the power iteration's spread."""
    import llc.run.parts as run_parts

    runs: list[int] = []
    sample = run_parts.sample
    monkeypatch.setattr(
        run_parts,
        "sample",
        lambda sampling, *a, **k: runs.append(sampling.chains) or sample(sampling, *a, **k),
    )
    model, data = linear_network([3, 4, 2], [3, 2], seed=0, n=60)
    with torch.no_grad():
        model[0].weight.mul_(4.0)
        model[1].weight.div_(4.0)
    common = {"chains": 4, "steps": 40, "warmup": 60, "gamma": 1.0, "batch_size": 20, "step_size": "auto"}
    both = llc.estimate(model, data, restrict={"first": "0.*", "second": "1.*"}, **common)
    assert both["first"].metrics["chains_used"] == 4 and both["second"].metrics["chains_used"] == 4
    assert runs == [8]
    steps = {name: est.metrics["step_size_auto"] for name, est in both.items()}
    assert steps["first"] > 50 * steps["second"], steps
    for name, glob in (("first", "0.*"), ("second", "1.*")):
        alone = llc.estimate(model, data, restrict=glob, **common).metrics["step_size_auto"]
        assert steps[name] == pytest.approx(alone, rel=0.25), (name, steps[name], alone)
        assert both[name].metrics["step_size_curvatures"] and np.isfinite(both[name].llc_mean)
    for sampler in ("sghmc",):  # friction=auto too, per part
        sghmc = llc.estimate(
            model, data, sampler=sampler, restrict={"first": "0.*", "second": "1.*"}, **common
        )
        assert sghmc["first"].metrics["step_size_auto"] > 50 * sghmc["second"].metrics["step_size_auto"]
        assert {"friction_auto", "minibatch_heating"} <= set(sghmc["first"].metrics)


# -- known answers ------------------------------------------------------------------------------------------


KNOWN = {
    "sgld": {"step_size": 6e-4, "batch_size": 200, "steps": 900, "warmup": 100},
    "sghmc": {"step_size": 3e-4, "friction": 0.2, "batch_size": 200, "steps": 600, "warmup": 100},
    # Short trajectories: along a layer's directions (all of one curvature) longer ones come back near where
    # they started, and the loss barely changes between draws (8 leapfrog steps: ESS 25-250 of 2400).
    "hmc": {"n_leapfrog": 2, "steps": 300, "warmup": 100},
    "mclmc": {"steps": 400, "warmup": 150},
}


@pytest.mark.slow
@pytest.mark.parametrize("sampler", list(KNOWN))
@pytest.mark.parametrize(
    ("widths", "ranks"),
    [([4, 3, 3, 4], [3, 2, 3]), ([4, 3, 4], [3, 2])],
    ids=["dln", "rrr"],
)
def test_each_layer_of_a_linear_network_meets_rank_a_times_rank_b_over_2_in_one_batched_run(
    sampler, widths, ranks
):
    model, data = linear_network(widths, ranks, seed=0)
    layers = {str(i): f"{i}.*" for i in range(len(model))}
    estimates = llc.estimate(
        model, data, sampler=sampler, restrict=layers, chains=8, gamma=1.0, **KNOWN[sampler]
    )
    assert estimates["0"].metrics["chains_used"] == 8  # one run: every part's chains, each its own slice
    for name, est in estimates.items():
        truth = layer_lambda(model, int(name))
        assert abs(est.llc_mean - truth) <= 0.1 * truth, (name, est.llc_mean, truth)
        assert est.metrics["n_params"] == model[int(name)].weight.numel()


@pytest.mark.slow
@pytest.mark.parametrize("form", ["data set", "mask"])
def test_loss_data_gives_n_over_2_times_the_trace_of_its_second_moments_over_the_trainings(form):
    """Linear regression y = W·x (N outputs): λ_eval = (N/2)·tr(Σ_eval·Σ⁻¹) (concepts.md)."""
    model, (x, y) = linear_network([4, 3], [3], seed=1, n=300)
    if form == "mask":
        chosen = x[:, 0] > 0.5  # inputs leaning one way: the loss sees W's first column most
        loss_data, x_eval = chosen, x[chosen]
    else:
        x_eval = torch.zeros(100, 4)
        x_eval[:, 0] = torch.randn(100, generator=torch.Generator().manual_seed(2))  # one direction only
        with torch.no_grad():
            loss_data = (x_eval, model(x_eval))
    sigma, sigma_eval = x.T @ x / len(x), x_eval.T @ x_eval / len(x_eval)
    truth = 3 / 2 * float(torch.trace(sigma_eval @ torch.linalg.inv(sigma)))
    est = llc.estimate(
        model,
        (x, y),
        sampler="hmc",
        loss_data=loss_data,
        chains=8,
        steps=300,
        warmup=100,
        n_leapfrog=2,
        gamma=1.0,
    )
    assert abs(est.llc_mean - truth) <= 0.1 * truth, (est.llc_mean, truth)
    assert est.metrics["L0_loss_data"] == pytest.approx(0.0, abs=1e-10)


# -- a restricted run's directory -------------------------------------------------------------------------


def test_a_restricted_run_writes_one_directory_with_every_parts_metrics(tmp_path):
    overrides = {"restrict": {"hidden": "0.*", "out": "2.*"}, "chains": 2, "steps": 40, "step_size": 1e-3}
    config = build_config(None, {**MODULE, **overrides})
    result = run_llc(config, tmp_path)
    metrics = json.loads((result.path / "metrics.json").read_text())
    assert metrics == result.metrics
    parts = metrics["parts"]
    assert list(parts) == ["hidden", "out"]
    assert [parts[p]["n_params"] for p in parts] == [40, 27] and parts["out"]["restrict"] == "2.*"
    for part in parts.values():
        assert {"llc_mean", "llc_se", "trusted", "flags", "ess_bulk", "r_hat", "gamma", "step_size"} <= set(
            part
        )
        assert part["step_size"] == 1e-3 and part["gamma_reason"]
    assert metrics["llc_mean"] is None and metrics["llc_se"] is None
    assert metrics["trusted"] == all(p["trusted"] for p in parts.values())
    assert metrics["run_id"] == config.run_id and metrics["d"] == 67
