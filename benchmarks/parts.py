"""The LLC of every attention head of examples/attention_heads × 8 chains as ONE restricted run, against
one run per head (the same settings and steps): whole `llc.estimate` calls, wall-clock, one torch thread.

The machine is shared, so both ways run in one invocation in interleaved rounds (a round: the batched
run, then the runs per head, the order alternating between rounds); each ratio is the median of the
per-round ratios. Two ratios: of the whole calls (what a user waits for), and of the sampling alone
(metrics.json `t_sampling_s`, without set-up, diagnostics and a single-part run's figures). SGLD with a
fixed step, γ and nβ and no warm-up; with --defaults, the own-model defaults instead (step_size=auto with
its warm-up search, per part; gamma=auto per part), which a user leaves unset.

    python benchmarks/parts.py [--rounds 3] [--steps 200] [--batch-size 32] [--defaults] [--quick]
                               [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from throughput import machine, spread

import llc
from llc.rundir import atomic_write

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "attention_heads"
RESULTS = Path(__file__).parent / "results" / "parts.json"
CHAINS = 8
QUICK_POINTS = 64  # --quick: the first 64 sequences, 2 chains per head
FLOOR = 3.0  # × faster, the batched run against the runs per head (whole calls, CPU)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=200, help="SGLD steps of every run")
    parser.add_argument("--batch-size", type=int, default=32, help="SGLD minibatch (sequences)")
    parser.add_argument(
        "--defaults", action="store_true", help="step size, warm-up and γ left to the defaults"
    )
    parser.add_argument("--quick", action="store_true", help="tiny smoke run: seconds")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write the results")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps = 1, 5
    return args


def example_model() -> tuple[torch.nn.Module, tuple[torch.Tensor, torch.Tensor], str]:
    """The example's model at its last checkpoint (train.py writes them), else at initialization: the
    cost of a step does not depend on the weights."""
    sys.path.insert(0, str(EXAMPLE))
    from induction import make_data, make_model

    model = make_model()
    checkpoints = sorted(
        EXAMPLE.glob("checkpoints/step_*.pt"), key=lambda p: int(p.stem.removeprefix("step_"))
    )
    if checkpoints:
        model.load_state_dict(torch.load(checkpoints[-1], weights_only=True))
    return model, make_data(), checkpoints[-1].name if checkpoints else "initialization"


def timed(model: torch.nn.Module, data: Any, restrict: Any, settings: dict[str, Any]) -> tuple[float, float]:
    """Wall-clock seconds of one llc.estimate call, and the sampling seconds of its parts' run(s)."""
    start = time.perf_counter()
    estimates = llc.estimate(model, data, restrict=restrict, **settings)
    wall = time.perf_counter() - start
    first = next(iter(estimates.values()))
    return wall, float(first.metrics["t_sampling_s"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    model, data, weights = example_model()
    chains = CHAINS
    if args.quick:  # a smoke run: the defaults' warm-up search takes full-data gradients, so less data
        data, chains = tuple(t[:QUICK_POINTS] for t in data), 2
    heads = llc.heads(model)
    settings = {
        "loss": "cross_entropy", "sampler": "sgld", "chains": chains, "steps": args.steps, "warmup": 0,
        "step_size": 1e-4, "gamma": 1000.0, "nbeta": 80.0, "batch_size": args.batch_size, "threads": 1,
        "seed": 0, "compile": False,
    }  # fmt: skip
    if args.defaults:  # step_size=auto and its warm-up (a fifth of the steps, at least 200), gamma=auto
        settings = {k: v for k, v in settings.items() if k not in ("warmup", "step_size", "gamma", "nbeta")}
    one = {name: {name: masks} for name, masks in heads.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = {**settings, "steps": 2, "warmup": 2}  # first calls: imports, graph export
        timed(model, data, heads, first)
        timed(model, data, next(iter(one.values())), first)
        rounds = []
        for r in range(args.rounds):
            result: dict[str, tuple[float, float]] = {}
            order = ["batched", "per_head"] if r % 2 == 0 else ["per_head", "batched"]
            for way in order:
                if way == "batched":
                    result[way] = timed(model, data, heads, settings)
                else:
                    runs = [timed(model, data, part, settings) for part in one.values()]
                    result[way] = (sum(w for w, _ in runs), sum(s for _, s in runs))
            rounds.append({
                "batched_s": result["batched"][0], "per_head_s": result["per_head"][0],
                "batched_sampling_s": result["batched"][1], "per_head_sampling_s": result["per_head"][1],
                "load_average_1min": os.getloadavg()[0],
            })  # fmt: skip
            (batched, batched_sampling), (per_head, per_head_sampling) = result["batched"], result["per_head"]
            print(f"round {r}: batched {batched:.1f} s, per head {per_head:.1f} s "
                  f"(sampling {batched_sampling:.1f} s / {per_head_sampling:.1f} s)", flush=True)  # fmt: skip
    whole = [x["per_head_s"] / x["batched_s"] for x in rounds]
    sampling = [x["per_head_sampling_s"] / x["batched_sampling_s"] for x in rounds]
    out = {
        "benchmark": "parts", "machine": machine(), "device": "cpu", "weights": weights,
        "heads": len(heads), "chains_per_head": chains, "settings": settings, "rounds": rounds,
        "speedup_whole_call": spread(whole), "speedup_sampling": spread(sampling), "floor": FLOOR,
        "meets_floor": statistics.median(whole) >= FLOOR, "quick": args.quick, "defaults": args.defaults,
    }  # fmt: skip
    atomic_write(args.json, (json.dumps(out, indent=2) + "\n").encode())
    print(f"{len(heads)} heads x {chains} chains, one run vs one run per head: "
          f"{statistics.median(whole):.2f}x (whole calls), {statistics.median(sampling):.2f}x (sampling); "
          f"floor {FLOOR}x -> {args.json}")  # fmt: skip
    return out


if __name__ == "__main__":
    main()
