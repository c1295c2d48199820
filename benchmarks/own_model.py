"""Your own model: SGLD draws per second of the generic (torch.func) path beside devinterp 1.3.2, and
beside the hand-written path on the reference workload; with an LLC cross-check against devinterp.

Two workloads, the same nn.Module, data, w*, loss and SGLD settings for both libraries, 8 chains:
an MLP classifier on scikit-learn's bundled 8×8 digits, and a one-block transformer on a synthetic
recall task. The machine is shared, so everything runs in one invocation in interleaved rounds; a
round is, per workload, one devinterp chain, then this engine's 8 chains (devinterp runs its chains
one after another, so one chain's rate is its 8-chain rate). Each ratio is the median of the
per-round ratios. The rounds' devinterp chains make its LLC estimate for the cross-check.

    python benchmarks/own_model.py [--rounds 8] [--steps 300] [--devinterp-draws 300] [--threads 1]
                                   [--batch-size 64] [--device cpu|cuda] [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from throughput import REFERENCE, as_module, devinterp_missing, machine, spread

from llc.config import IN_MEMORY_MODULE, RunConfig, build_config
from llc.model.posterior import LocalizedPosterior
from llc.problems import build_problem
from llc.problems.build import STREAM_SAMPLING, stream
from llc.problems.module import module_problem
from llc.run import diagnostics
from llc.run.allocator import keep_freed_memory
from llc.run.erm import train
from llc.rundir import atomic_write
from llc.samplers.driver import sample
from llc.samplers.trace import Trace

RESULTS = Path(__file__).parent / "results" / "own_model.json"
CHAINS = 8
FLOORS = {"digits_mlp": 5.0, "transformer": 3.0}  # × devinterp's draws/s at 8 chains
# SGLD as devinterp runs it: every step a draw, no burn-in.
SGLD: dict[str, Any] = {"sampler": "sgld", "step_size": 1e-4, "gamma": 100.0, "warmup": 0, "projections": 0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", type=int, default=CHAINS, help="interleaved rounds (= devinterp's chains)"
    )
    parser.add_argument("--steps", type=int, default=300, help="timed steps per engine measurement")
    parser.add_argument("--devinterp-draws", type=int, default=300, help="draws per devinterp chain")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both libraries (default 1)")
    parser.add_argument("--batch-size", type=int, default=64, help="SGLD minibatch, both workloads")
    parser.add_argument("--device", default="cpu", help="where both libraries run: cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run: seconds")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write the results")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.devinterp_draws, args.rounds = 5, 5, 1
    return args


# ---- workloads ------------------------------------------------------------------------------------
@dataclass
class Workload:
    name: str
    module: torch.nn.Module  # at w*
    x: torch.Tensor
    y: torch.Tensor
    batch_size: int
    description: str


def digits_mlp(quick: bool, batch_size: int) -> Workload:
    """MLP 64-128-10 (ReLU) on scikit-learn's digits (1,797 images of 8×8 pixels), trained by Adam."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    fit(model, x, y, 20 if quick else 500)
    return Workload(
        "digits_mlp",
        model,
        x,
        y,
        batch_size,
        f"MLP 64-128-10 ReLU, sklearn digits (n=1797), batch {batch_size}",
    )


class Block(torch.nn.Module):
    """Pre-norm causal self-attention and MLP in plain ops, as toy-model code writes them. (torch 2.13
    has no vmap batching rule for scaled_dot_product_attention on the CPU: it would run chain by chain.)"""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = torch.nn.LayerNorm(width), torch.nn.LayerNorm(width)
        self.qkv, self.out = torch.nn.Linear(width, 3 * width), torch.nn.Linear(width, width)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(width, 4 * width), torch.nn.GELU(), torch.nn.Linear(4 * width, width)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        batch, length, width = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        future = torch.ones(length, length, dtype=torch.bool, device=h.device).triu(1)
        attended = scores.masked_fill(future, -math.inf).softmax(dim=-1) @ v
        h = h + self.out(attended.transpose(1, 2).reshape(batch, length, width))
        return h + self.mlp(self.norm2(h))


class TinyTransformer(torch.nn.Module):
    """Token and position embeddings, one block, logits of the last position."""

    def __init__(self, vocab: int = 16, length: int = 8, width: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.position = torch.nn.Parameter(0.02 * torch.randn(length, width))
        self.block = Block(width, heads)
        self.norm = torch.nn.LayerNorm(width)
        self.head = torch.nn.Linear(width, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.block(self.embed(tokens) + self.position)
        return self.head(self.norm(h[:, -1]))


def transformer(quick: bool, batch_size: int) -> Workload:
    """Recall: the label of a sequence of 8 tokens (vocabulary 16) is its first token."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 16, (2000, 8), generator=gen)
    y = x[:, 0].clone()
    torch.manual_seed(0)
    model = TinyTransformer()
    fit(model, x, y, 20 if quick else 400)
    return Workload(
        "transformer", model, x, y, batch_size,
        f"1 block, d_model 64, 4 heads, seq 8, vocab 16 (first-token recall), batch {batch_size}",
    )  # fmt: skip


def fit(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()


def cross_entropy(module: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return torch.nn.functional.cross_entropy(module(x), y)


# ---- the two libraries -----------------------------------------------------------------------------
def engine_setup(work: Workload, steps: int, device: str) -> tuple[RunConfig, LocalizedPosterior, float]:
    values = {**SGLD, "problem": "module", "loss": "cross_entropy", "chains": CHAINS, "steps": steps,
              "batch_size": work.batch_size, "compile": False, "device": device}  # fmt: skip
    config = RunConfig.model_validate(values, context={IN_MEMORY_MODULE: True})
    model, x, y, _ = module_problem(config, work.module, (work.x, work.y))
    model.to(torch.device(device))
    x, y = x.to(device), y.to(device)
    w_star = model.flat_parameters()
    loss0 = float(model.batch_loss(w_star.unsqueeze(0), x, y)[0])
    nbeta = config.nbeta_for(x.shape[0])
    return config, LocalizedPosterior(model, x, y, w_star, nbeta, config.gamma, work.batch_size), loss0


def time_engine(config: RunConfig, posterior: LocalizedPosterior, loss0: float) -> tuple[float, Trace]:
    """Chain-draws per second of the sampling loop alone."""
    gen = torch.Generator(posterior.w_star.device).manual_seed(
        stream(config.seed, STREAM_SAMPLING).initial_seed()
    )
    trace = sample(config.sampling, posterior, loss0, gen)
    return config.chains * config.steps / trace.t_sampling_s, trace


def time_devinterp(
    work: Workload, loss0: float, nbeta: float, draws: int, seed: int, device: str
) -> tuple[float, np.ndarray]:
    """One devinterp chain: draws per second and its per-draw LLC [1, draws]."""
    from devinterp.optim.sgld import SGLD as DevinterpSGLD
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(work.x, work.y), batch_size=work.batch_size, shuffle=True)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = estimate_learning_coeff_with_summary(
            work.module, loader, evaluate=cross_entropy, sampling_method=DevinterpSGLD,
            optimizer_kwargs={"lr": SGLD["step_size"], "localization": SGLD["gamma"], "nbeta": nbeta},
            num_draws=draws, num_chains=1, num_burnin_steps=0, init_loss=loss0, cores=1, seed=seed,
            verbose=False, device=device,
        )  # fmt: skip
    elapsed = time.perf_counter() - start
    return draws / elapsed, nbeta * (np.asarray(result["loss/trace"], float) - loss0)


# ---- generic against hand-written on the reference workload ----------------------------------------
def reference_pair(
    quick: bool, steps: int, device: str
) -> tuple[RunConfig, dict[str, LocalizedPosterior], float]:
    """The reference workload's posterior twice: the hand-written MLP and the same w* as nn.Linear layers."""
    size = {"n_data": 1000, "erm_steps": 20} if quick else {}
    base = build_config(None, {**REFERENCE, **size, "steps": steps, "chains": CHAINS, "compile": False,
                               "device": device})  # fmt: skip
    problem = build_problem(base)
    w_star, loss0 = train(problem, base.erm_steps, base.erm_lr, base.seed)
    hand = LocalizedPosterior(problem.model, problem.x.to(device), problem.y.to(device), w_star.to(device),
                              base.resolved_nbeta, base.gamma, base.batch_size)  # fmt: skip
    as_module_config = RunConfig.model_validate({"problem": "module"}, context={IN_MEMORY_MODULE: True})
    model, x, y, _ = module_problem(
        as_module_config, as_module(problem.model, w_star), (problem.x, problem.y)
    )
    model.to(torch.device(device))
    x, y = x.to(device), y.to(device)
    generic = LocalizedPosterior(model, x, y, model.flat_parameters(), base.resolved_nbeta, base.gamma,
                                 base.batch_size)  # fmt: skip
    return base, {"hand_written": hand, "generic": generic}, loss0


# ---- the run --------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    missing = devinterp_missing()
    workloads = [digits_mlp(args.quick, args.batch_size), transformer(args.quick, args.batch_size)]
    setups = {w.name: engine_setup(w, args.steps, args.device) for w in workloads}
    ref_config, ref_posteriors, ref_loss0 = reference_pair(args.quick, args.steps, args.device)
    for config, posterior, loss0 in [
        *setups.values(),
        *((ref_config, p, ref_loss0) for p in ref_posteriors.values()),
    ]:
        warm = torch.Generator(posterior.w_star.device).manual_seed(0)
        sample(config.model_copy(update={"steps": 2}).sampling, posterior, loss0, warm)

    rounds: list[dict[str, Any]] = []
    devinterp_chains: dict[str, list[np.ndarray]] = {w.name: [] for w in workloads}
    for r in range(args.rounds):
        record: dict[str, Any] = {}
        for work in workloads:
            config, posterior, loss0 = setups[work.name]
            if missing is None:
                rate, llc = time_devinterp(work, loss0, posterior.nbeta, args.devinterp_draws, r, args.device)
                record[f"{work.name}/devinterp"] = rate
                devinterp_chains[work.name].append(llc)
            record[f"{work.name}/engine"], _ = time_engine(config, posterior, loss0)
        for name, posterior in ref_posteriors.items():
            record[f"reference/{name}"], _ = time_engine(ref_config, posterior, ref_loss0)
        rounds.append(record)
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr)

    results: dict[str, Any] = {
        "quick": args.quick,
        "machine": {**machine(), "torch_threads": args.threads, "device": device_name(args.device)},
        "settings": {
            "batch_size": args.batch_size,
            "rounds": args.rounds,
            "steps": args.steps,
            "devinterp_draws": args.devinterp_draws,
            "chains": CHAINS,
            **SGLD,
        },
        "devinterp": {"skipped": missing} if missing else {"version": "1.3.2"},
        "workloads": {},
    }
    for work in workloads:
        config, posterior, loss0 = setups[work.name]
        entry: dict[str, Any] = {
            "description": work.description,
            "d": posterior.dim,
            "n": posterior.n,
            "L0": loss0,
            "nbeta": posterior.nbeta,
            "engine_draws_per_s": spread([x[f"{work.name}/engine"] for x in rounds]),
        }
        if missing is None:
            entry["devinterp_draws_per_s"] = spread([x[f"{work.name}/devinterp"] for x in rounds])
            ratio = spread([x[f"{work.name}/engine"] / x[f"{work.name}/devinterp"] for x in rounds])
            entry["speedup"] = ratio
            entry["floor"] = {"required": FLOORS[work.name], "met": ratio["median"] >= FLOORS[work.name]}
            entry["llc"] = cross_check(
                config, posterior, loss0, args.devinterp_draws, devinterp_chains[work.name]
            )
        results["workloads"][work.name] = entry
    hand = spread([x["reference/hand_written"] for x in rounds])
    generic = spread([x["reference/generic"] for x in rounds])
    results["reference"] = {
        "hand_written_draws_per_s": hand,
        "generic_draws_per_s": generic,
        "generic_over_hand_written": spread(
            [x["reference/generic"] / x["reference/hand_written"] for x in rounds]
        ),
    }
    return results


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "cpu"


def cross_check(
    config: RunConfig, posterior: LocalizedPosterior, loss0: float, draws: int, devinterp: list[np.ndarray]
) -> dict[str, Any]:
    """This engine's estimate (8 chains × draws, untimed) against devinterp's (its rounds' chains)."""
    _, trace = time_engine(config.model_copy(update={"steps": draws}), posterior, loss0)
    ours, theirs = diagnostics.summarize(trace.llc), diagnostics.summarize(np.concatenate(devinterp))
    z = (ours["llc_mean"] - theirs["llc_mean"]) / math.hypot(ours["llc_se"], theirs["llc_se"])
    keep = ("llc_mean", "llc_se", "ess_bulk", "r_hat", "chains_used")
    return {"engine": {k: ours[k] for k in keep}, "devinterp": {k: theirs[k] for k in keep}, "z": z}


def report(results: dict[str, Any]) -> None:
    m = results["machine"]
    print(
        f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['torch_threads']} thread(s), "
        f"{CHAINS} chains, on {m.get('device', 'cpu')}"
    )
    if "skipped" in results["devinterp"]:
        print(f"devinterp skipped: {results['devinterp']['skipped']}")
    for name, entry in results["workloads"].items():
        print(f"{name}: {entry['description']}, d = {entry['d']}")
        print(f"  engine    {show(entry['engine_draws_per_s'])} draws/s")
        if "speedup" in entry:
            print(f"  devinterp {show(entry['devinterp_draws_per_s'])} draws/s")
            floor, verdict = entry["floor"]["required"], "met" if entry["floor"]["met"] else "NOT met"
            print(f"  × devinterp {entry['speedup']['median']:.1f} (floor {floor:.0f}×: {verdict})")
            llc = entry["llc"]
            print(
                f"  LLC engine {llc['engine']['llc_mean']:.2f} ± {llc['engine']['llc_se']:.2f}, devinterp "
                f"{llc['devinterp']['llc_mean']:.2f} ± {llc['devinterp']['llc_se']:.2f}, z = {llc['z']:.2f}"
            )
    ref = results["reference"]
    print(
        f"reference workload: hand-written {show(ref['hand_written_draws_per_s'])}, generic "
        f"{show(ref['generic_draws_per_s'])} draws/s; generic / hand-written "
        f"{ref['generic_over_hand_written']['median']:.2f}"
    )


def show(spread_: dict[str, float]) -> str:
    return f"{spread_['median']:,.0f} ({spread_['min']:,.0f}–{spread_['max']:,.0f})"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results = run(args)
    report(results)
    atomic_write(args.json, (json.dumps(results, indent=2) + "\n").encode())
    print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
