"""dtype=bfloat16 (and float16) against float32 on the own-model workloads: the LLC and the speed.

The digits MLP and the one-block transformer of own_model.py, SGLD as there (8 chains, the same seed in
every dtype, so the chains see the same minibatches and noise and differ by the rounding alone). The
LLC of each dtype comes from one untimed run of DRAWS steps; the speed from --rounds interleaved
rounds of STEPS steps, one per dtype each round, as the median of the per-round ratios to float32.
(Half precision is slow on a CPU without bfloat16 units, so the transformer gets fewer steps.)

    python benchmarks/precision.py [--rounds 3] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from own_model import CHAINS, SGLD, Workload, digits_mlp, time_engine, transformer
from throughput import machine, spread

from llc.config import IN_MEMORY_MODULE, RunConfig
from llc.model.posterior import LocalizedPosterior
from llc.problems.module import module_problem
from llc.run import diagnostics
from llc.rundir import atomic_write

RESULTS = Path(__file__).parent / "results" / "precision.json"
DTYPES = ("float32", "bfloat16", "float16")
DRAWS = {"digits_mlp": 1000, "transformer": 40}  # steps of the LLC run, per workload
STEPS = {"digits_mlp": 100, "transformer": 4}  # timed steps per measurement
TARGET = 0.05  # the relative LLC difference to float32 aimed for


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--batch-size", type=int, default=64, help="SGLD minibatch, both workloads")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run: seconds")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write the results")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 1
    return args


def setup(work: Workload, steps: int, dtype: str) -> tuple[RunConfig, LocalizedPosterior, float]:
    """The workload's posterior with the model computing in `dtype` (L0 too, as a run computes it)."""
    values = {**SGLD, "problem": "module", "loss": "cross_entropy", "chains": CHAINS, "steps": steps,
              "batch_size": work.batch_size, "compile": False, "device": "cpu", "dtype": dtype}  # fmt: skip
    config = RunConfig.model_validate(values, context={IN_MEMORY_MODULE: True})
    model, x, y, _ = module_problem(config, work.module, (work.x, work.y))
    w_star = model.flat_parameters()
    loss0 = float(model.batch_loss(w_star.unsqueeze(0), x, y)[0])
    nbeta = config.nbeta_for(x.shape[0])
    return config, LocalizedPosterior(model, x, y, w_star, nbeta, config.gamma, work.batch_size), loss0


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Each workload's figures, written to --json as soon as they are in (a long run keeps the first)."""
    torch.set_num_threads(args.threads)
    workloads = [digits_mlp, transformer]
    results: dict[str, Any] = {
        "quick": args.quick,
        "machine": {**machine(), "torch_threads": args.threads},
        "settings": {
            "rounds": args.rounds,
            "steps": STEPS,
            "draws": DRAWS,
            "chains": CHAINS,
            **SGLD,
        },
        "workloads": {},
    }
    for build in workloads:
        work = build(args.quick, args.batch_size)
        steps, draws = (2, 4) if args.quick else (STEPS[work.name], DRAWS[work.name])
        setups = {dtype: setup(work, steps, dtype) for dtype in DTYPES}
        llc = {}
        for dtype, (config, posterior, loss0) in setups.items():
            _, trace = time_engine(config.model_copy(update={"steps": draws}), posterior, loss0)
            summary = diagnostics.summarize(trace.llc)
            llc[dtype] = {"L0": loss0, "llc_mean": summary["llc_mean"], "llc_se": summary["llc_se"]}
        rates: dict[str, list[float]] = {dtype: [] for dtype in DTYPES}
        for r in range(args.rounds):
            for dtype, (config, posterior, loss0) in setups.items():
                rates[dtype].append(time_engine(config, posterior, loss0)[0])
            print(f"{work.name}: round {r + 1}/{args.rounds}", file=sys.stderr)
        base = llc["float32"]["llc_mean"]
        results["workloads"][work.name] = {
            "description": work.description,
            "d": setups["float32"][1].dim,
            "dtypes": {
                dtype: {
                    **llc[dtype],
                    "llc_rel_diff": (llc[dtype]["llc_mean"] - base) / abs(base),
                    "draws_per_s": spread(rates[dtype]),
                    "speed_over_float32": spread(
                        [a / b for a, b in zip(rates[dtype], rates["float32"], strict=True)]
                    ),
                }
                for dtype in DTYPES
            },
        }
        atomic_write(args.json, (json.dumps(results, indent=2) + "\n").encode())
    return results


def report(results: dict[str, Any]) -> None:
    m = results["machine"]
    print(
        f"{m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['torch_threads']} thread(s), {CHAINS} chains"
    )
    for name, entry in results["workloads"].items():
        print(f"{name}: {entry['description']}, d = {entry['d']}")
        for dtype, row in entry["dtypes"].items():
            verdict = (
                ""
                if dtype == "float32"
                else f" ({'within' if abs(row['llc_rel_diff']) <= TARGET else 'OUTSIDE'} 5%)"
            )
            diff = 100 * row["llc_rel_diff"]
            print(
                f"  {dtype:9s} LLC {row['llc_mean']:8.2f} ± {row['llc_se']:.2f}  {diff:+.2f}%"
                f"{verdict}  {row['draws_per_s']['median']:,.0f} draws/s  × float32 "
                f"{row['speed_over_float32']['median']:.2f}"
            )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results = run(args)
    report(results)
    print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
