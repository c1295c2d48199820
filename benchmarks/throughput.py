"""SGLD draws per second on the reference workload, beside devinterp 1.3.2 and the machine's matmul rate.

The machine is shared, so only figures taken close together in time can be compared. Everything runs
in one invocation, in interleaved rounds; each round is

    matmul rate -> one devinterp chain -> this engine at each chain count, eager and compiled -> matmul rate

devinterp runs its chains one after another, so timing one chain per round costs what its 8-chain call
costs, and the rounds' chains together make its LLC estimate. Each figure is the median over rounds;
each ratio is the median of the per-round ratios (engine at 8 chains over that round's devinterp chain;
engine × draw cost over that round's matmul rate).

    python benchmarks/throughput.py [--chains 8 32 64] [--steps N] [--devinterp-draws 500] [--quick]
                                    [--rounds R] [--threads T] [--json OUT]

Compute ceiling: one chain-draw of an MLP on a batch of B points costs a forward pass of
2·B·Σ fan_in·fan_out FLOPs and a backward pass of about twice that, so 6·B·Σ fan_in·fan_out in all;
the ceiling is the measured fp32 matmul rate divided by that cost.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from llc.config import RunConfig, build_config
from llc.model.network import MLP
from llc.model.posterior import LocalizedPosterior
from llc.problems import Problem, build_problem
from llc.problems.build import STREAM_SAMPLING, stream
from llc.run import diagnostics
from llc.run.allocator import keep_freed_memory
from llc.run.erm import train
from llc.rundir import atomic_write
from llc.samplers.driver import sample
from llc.samplers.trace import Trace

RESULTS = Path(__file__).parent / "results" / "throughput.json"
DEVINTERP_VERSION = "1.3.2"
DEVINTERP_CHAINS = 8
SPEEDUP_FLOOR = 15.0  # × devinterp's draws/s at 8 chains
CEILING_FLOOR = 0.40  # fraction of the compute ceiling at 64 chains

# llc-validation.md, "The reference workload for throughput": every step is a draw, no burn-in.
REFERENCE: dict[str, Any] = {
    "problem": "mlp", "in_dim": 16, "out_dim": 1, "widths": (64, 64), "teacher_widths": (8,),
    "activation": "tanh", "n_data": 5000, "noise_scale": 0.1, "sampler": "sgld", "step_size": 1e-4,
    "gamma": 100.0, "batch_size": 256, "warmup": 0, "projections": 0, "eval_every": 0,
}  # fmt: skip
# A smoke run: the same network and sampler on a small data set, a few steps, no compilation.
QUICK: dict[str, Any] = {"n_data": 1000, "batch_size": 128, "erm_steps": 20}

# Rich falls back to 80 columns when not on a terminal, too narrow for the table in a log.
console = Console(width=None if sys.stdout.isatty() else 120)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--steps", type=int, default=200, help="timed steps per engine measurement")
    parser.add_argument("--devinterp-draws", type=int, default=500, help="draws per devinterp chain")
    parser.add_argument(
        "--rounds", type=int, default=DEVINTERP_CHAINS, help="interleaved rounds (= devinterp's chains)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run: seconds, no torch.compile")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write the results")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.devinterp_draws, args.rounds = 5, 5, 1
    return args


# ---- the machine ---------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line
        ]
        model = names[0] if names else model
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def matmul_gflops(sizes: tuple[int, ...], repeats: int) -> dict[int, float]:
    """fp32 torch.mm rate of square matrices, GFLOP/s: the median over `repeats` timed products per size."""
    gen = torch.Generator().manual_seed(0)
    rates = {}
    for n in sizes:
        a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
        torch.mm(a, b)  # first call pays for allocation and thread start-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - start)
        rates[n] = 2 * n**3 / statistics.median(times) / 1e9
    return rates


def draw_flops(model: MLP, batch: int) -> float:
    """FLOPs of one chain-draw: forward 2·B·Σ fan_in·fan_out, backward about twice the forward."""
    forward = 2 * batch * sum(layer.fan_in * layer.fan_out for layer in model.layers)
    return 3.0 * forward


# ---- this engine ---------------------------------------------------------------------------------
def time_engine(config: RunConfig, posterior: LocalizedPosterior, loss0: float) -> tuple[float, Trace]:
    """Draws per second of the sampling loop alone; call `warm_up` first so that compilation is not timed."""
    gen = torch.Generator().manual_seed(stream(config.seed, STREAM_SAMPLING).initial_seed())
    trace = sample(config.sampling, posterior, loss0, gen)
    return config.chains * config.steps / trace.t_sampling_s, trace


def warm_up(config: RunConfig, posterior: LocalizedPosterior, loss0: float) -> float:
    """Seconds of a few-step call: with compile=True, that is torch.compile's first-call cost."""
    start = time.perf_counter()
    short = config.model_copy(update={"steps": 2}).sampling
    sample(short, posterior, loss0, torch.Generator().manual_seed(0))
    return time.perf_counter() - start


# ---- devinterp ------------------------------------------------------------------------------------
def devinterp_missing() -> str | None:
    """Why devinterp cannot run here, or None when the pinned version is importable."""
    if importlib.util.find_spec("devinterp") is None:
        return "devinterp is not installed in this environment (`make bench` sets up one that has it)"
    version = importlib.metadata.version("devinterp")
    if version != DEVINTERP_VERSION:
        return f"devinterp {version} is installed; this benchmark compares against {DEVINTERP_VERSION}"
    return None


def as_module(model: MLP, w: torch.Tensor) -> torch.nn.Sequential:
    """The same network as torch.nn layers holding the flat parameters w [d] (weights stored [in, out])."""
    layers: list[torch.nn.Module] = []
    for i, layer in enumerate(model.layers):
        linear = torch.nn.Linear(layer.fan_in, layer.fan_out, bias=layer.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(w[layer.weight].view(layer.fan_in, layer.fan_out).T)
            if layer.bias is not None:
                linear.bias.copy_(w[layer.bias])
        layers.append(linear)
        if i < len(model.layers) - 1:
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers)


def mse(module: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return torch.nn.functional.mse_loss(module(x), y)


def time_devinterp(
    config: RunConfig, problem: Problem, w_star: torch.Tensor, loss0: float, draws: int, seed: int
) -> tuple[float, np.ndarray]:
    """One chain through devinterp's classic API: draws per second and its per-draw LLC [1, draws]."""
    from devinterp.optim.sgld import SGLD
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary
    from torch.utils.data import DataLoader, TensorDataset

    module = as_module(problem.model, w_star)
    with torch.no_grad():
        module_loss = float(mse(module, (problem.x, problem.y)))
    if not math.isclose(module_loss, loss0, rel_tol=1e-4):
        raise RuntimeError(f"the nn.Module copy of w* has loss {module_loss}, the engine's L0 is {loss0}")
    loader = DataLoader(TensorDataset(problem.x, problem.y), batch_size=config.batch_size, shuffle=True)
    nbeta = config.resolved_nbeta
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and "more draws than burn-in" notices
        result = estimate_learning_coeff_with_summary(
            module,
            loader,
            evaluate=mse,
            sampling_method=SGLD,
            optimizer_kwargs={"lr": config.resolved_step_size, "localization": config.gamma, "nbeta": nbeta},
            num_draws=draws,
            num_chains=1,
            num_burnin_steps=0,
            init_loss=loss0,
            cores=1,
            seed=seed,
            verbose=False,
        )
    elapsed = time.perf_counter() - start
    return draws / elapsed, nbeta * (np.asarray(result["loss/trace"], float) - loss0)


# ---- the run --------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = build_config(None, {**REFERENCE, **(QUICK if args.quick else {}), "steps": args.steps})
    problem = build_problem(base)
    start = time.perf_counter()
    w_star, loss0 = train(problem, base.erm_steps, base.erm_lr, base.seed)
    t_erm = time.perf_counter() - start
    posterior = LocalizedPosterior(
        problem.model, problem.x, problem.y, w_star, base.resolved_nbeta, base.gamma, base.batch_size
    )
    variants = {"eager": False} if args.quick else {"eager": False, "compiled": True}
    configs = {
        f"{c}/{v}": base.model_copy(update={"chains": c, "compile": compiled})
        for c in args.chains
        for v, compiled in variants.items()
    }
    first_call_s = {key: warm_up(cfg, posterior, loss0) for key, cfg in configs.items()}
    missing = devinterp_missing()
    sizes = (256,) if args.quick else (1024, 2048)

    rounds: list[dict[str, Any]] = []
    devinterp_chains: list[np.ndarray] = []
    for r in range(args.rounds):
        record: dict[str, Any] = {"load_average_1min": os.getloadavg()[0]}
        before = matmul_gflops(sizes, repeats=3)
        if missing is None:
            record["devinterp"], llc = time_devinterp(
                base, problem, w_star, loss0, args.devinterp_draws, base.seed + r
            )
            devinterp_chains.append(llc)
        for key, cfg in configs.items():
            record[key], _ = time_engine(cfg, posterior, loss0)
        after = matmul_gflops(sizes, repeats=3)
        record["matmul_gflops"] = {str(n): (before[n] + after[n]) / 2 for n in sizes}
        record["matmul_rate_gflops"] = max(record["matmul_gflops"].values())
        rounds.append(record)
        console.print(
            f"round {r + 1}/{args.rounds}: load average {record['load_average_1min']:.1f}", style="dim"
        )

    # The LLC cross-check: as many chains and draws as devinterp's estimate, untimed.
    check = base.model_copy(update={"chains": DEVINTERP_CHAINS, "steps": args.devinterp_draws})
    _, trace = time_engine(check, posterior, loss0)
    estimates = {"engine": {"chains": check.chains, **diagnostics.summarize(trace.llc)}}
    devinterp: dict[str, Any] = {"skipped": missing}
    if missing is None:
        llc = np.concatenate(devinterp_chains)
        estimates["devinterp"] = {"chains": llc.shape[0], **diagnostics.summarize(llc)}
        a, b = estimates["engine"], estimates["devinterp"]
        estimates["z"] = (a["llc_mean"] - b["llc_mean"]) / math.hypot(a["llc_se"], b["llc_se"])
        devinterp = {
            "version": DEVINTERP_VERSION,
            "chains": llc.shape[0],
            "draws": args.devinterp_draws,
            **spread([x["devinterp"] for x in rounds]),
        }

    flops = draw_flops(problem.model, base.batch_size)
    rate = statistics.median(x["matmul_rate_gflops"] for x in rounds)
    rows = [table_row(c, list(variants), rounds, flops, first_call_s) for c in args.chains]
    return {
        "quick": args.quick,
        "machine": machine(),
        "workload": {**base.normalized(), "d": problem.model.n_params, "L0": loss0, "t_erm_s": t_erm},
        "settings": {"rounds": args.rounds, "steps": args.steps, "devinterp_draws": args.devinterp_draws},
        "draw_flops": flops,
        "matmul_rate_gflops": rate,
        "ceiling_draws_per_s": rate * 1e9 / flops,
        "devinterp": devinterp,
        "rows": rows,
        "floors": floors(rows),
        "llc": estimates,
        "rounds": rounds,
    }


def spread(values: list[float]) -> dict[str, float]:
    """The median, with the smallest and largest value beside it so that the noise shows."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def table_row(
    chains: int,
    variants: list[str],
    rounds: list[dict[str, Any]],
    flops: float,
    first_call_s: dict[str, float],
) -> dict[str, Any]:
    """Over rounds: draws/s, % of the same round's ceiling, ratio to the same round's devinterp chain."""
    row: dict[str, Any] = {"chains": chains}
    for v in ("eager", "compiled"):
        key = f"{chains}/{v}"
        if v not in variants:
            row.update({f"{v}_draws_per_s": None, f"{v}_pct_ceiling": None, f"{v}_vs_devinterp": None})
            continue
        row[f"{v}_draws_per_s"] = spread([x[key] for x in rounds])
        row[f"{v}_pct_ceiling"] = spread(
            [100 * x[key] * flops / (x["matmul_rate_gflops"] * 1e9) for x in rounds]
        )
        compared = chains == DEVINTERP_CHAINS and "devinterp" in rounds[0]
        row[f"{v}_vs_devinterp"] = spread([x[key] / x["devinterp"] for x in rounds]) if compared else None
        row[f"{v}_first_call_s"] = first_call_s[key]
    return row


def floors(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's two floors on the median per-round ratio, per variant; met when some variant meets it."""
    by_chains = {row["chains"]: row for row in rows}
    checks = {
        "speedup_vs_devinterp_at_8": (8, "vs_devinterp", SPEEDUP_FLOOR),
        "pct_ceiling_at_64": (64, "pct_ceiling", 100 * CEILING_FLOOR),
    }
    out: dict[str, Any] = {}
    for name, (chains, field, required) in checks.items():
        row = by_chains.get(chains, {})
        values = {v: row[f"{v}_{field}"]["median"] for v in ("eager", "compiled") if row.get(f"{v}_{field}")}
        met_by = [v for v, value in values.items() if value >= required]
        out[name] = {
            "required": required,
            "measured": bool(values),
            **values,
            "met": bool(met_by),
            "met_by": met_by,
        }
    return out


# ---- output ---------------------------------------------------------------------------------------
def report(results: dict[str, Any]) -> None:
    m = results["machine"]
    console.print(
        f"[bold]{m['cpu']}[/bold], {m['cores']} cores, torch {m['torch']} with {m['torch_threads']} threads"
    )
    rates = ", ".join(f"{n}: {g:.0f}" for n, g in results["rounds"][0]["matmul_gflops"].items())
    console.print(
        f"fp32 matmul {results['matmul_rate_gflops']:.0f} GFLOP/s (round 1 by size: {rates}); "
        f"draw cost {results['draw_flops'] / 1e6:.2f} MFLOP; "
        f"ceiling {results['ceiling_draws_per_s']:,.0f} draws/s"
    )
    if results["quick"]:
        console.print("quick smoke run: sizes too small for these figures to mean anything", style="yellow")
    devinterp = results["devinterp"]
    table = Table(title="SGLD on the reference workload: median over rounds (min–max)")
    columns = ("chains", "eager draws/s", "compiled draws/s", "devinterp draws/s")
    for column in (*columns, "eager ×", "compiled ×", "eager % ceil", "compiled % ceil"):
        table.add_column(column, justify="right")
    for row in results["rows"]:
        table.add_row(
            str(row["chains"]),
            _fmt(row["eager_draws_per_s"], "{:,.0f}"),
            _fmt(row["compiled_draws_per_s"], "{:,.0f}"),
            _fmt(
                devinterp if row["chains"] == DEVINTERP_CHAINS and "median" in devinterp else None, "{:,.0f}"
            ),
            _fmt(row["eager_vs_devinterp"], "{:.1f}"),
            _fmt(row["compiled_vs_devinterp"], "{:.1f}"),
            _fmt(row["eager_pct_ceiling"], "{:.1f}"),
            _fmt(row["compiled_pct_ceiling"], "{:.1f}"),
        )
    console.print(table)
    if "skipped" in devinterp:
        console.print(f"devinterp skipped: {devinterp['skipped']}", style="yellow")
    for name, floor in results["floors"].items():
        if not floor["measured"]:
            console.print(f"floor {name}: not measured in this run", style="yellow")
            continue
        verdict = "[green]met[/green]" if floor["met"] else "[red]not met[/red]"
        values = ", ".join(f"{v} {floor[v]:.1f}" for v in ("eager", "compiled") if v in floor)
        console.print(f"floor {name} >= {floor['required']:.0f}: {verdict} ({values})")
    for who, est in results["llc"].items():
        if who != "z":
            console.print(f"LLC {who} ({est['chains']} chains): {est['llc_mean']:.2f} ± {est['llc_se']:.2f}")
    if "z" in results["llc"]:
        console.print(f"difference / combined se: z = {results['llc']['z']:.2f}")


def _fmt(value: dict[str, float] | None, spec: str) -> str:
    if value is None:
        return "—"
    low, high = spec.format(value["min"]), spec.format(value["max"])
    return f"{spec.format(value['median'])} ({low}–{high})"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    console.print(f"torch threads: {args.threads or torch.get_num_threads()}")
    results = run(args)
    report(results)
    atomic_write(args.json, (json.dumps(results, indent=2) + "\n").encode())
    console.print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
