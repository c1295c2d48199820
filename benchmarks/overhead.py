"""What `llc.estimate` costs besides its sampling, by phase, and what a notebook loop over checkpoints
costs against its sampling time; on the digits MLP of benchmarks/own_model.py, one torch thread.

Sampling is the chains' steps, warm-up included (metrics t_warmup_s + t_sampling_s; step_size=auto's
search rounds are warm-up). Each phase is timed exclusively (a phase inside another is subtracted
from it) by wrapping the function that does it. In one invocation: a first call (pays the process's
one-time costs), then rounds of a call without runs_dir and a call with a fresh runs_dir, interleaved,
then the checkpoint loop: the MLP's Adam training saved every `--every` steps, one estimate per
checkpoint in a Python loop, without runs_dir. Ratios are of times measured in the same invocation.

    python benchmarks/overhead.py [--rounds 5] [--checkpoints 50] [--steps 500] [--defaults]
                                  [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from own_model import SGLD, digits_mlp
from throughput import machine, spread

import llc
import llc.modules.model
import llc.run.estimate
import llc.run.experiment
import llc.samplers.driver
from llc.run import diagnostics, localization, plots
from llc.rundir import atomic_write

RESULTS = Path(__file__).parent / "results" / "overhead.json"
CHAINS = 8
BATCH = 64

# (owner, attribute, phase): the function that does each phase, where the code looks it up.
PHASES: list[tuple[Any, str, str]] = [
    (llc.run.estimate, "estimate_config", "config validation"),
    (llc.run.estimate, "_config", "config validation"),  # its name before 2026-12-06
    (llc.run.estimate, "as_tensors", "data as tensors"),
    (llc.run.estimate, "object_fingerprint", "object fingerprint"),
    (llc.run.estimate, "module_as_problem", "model copy and wrap"),
    (llc.modules.model.ModuleModel, "check_on_data", "model check on data"),
    (llc.modules.model, "graphs_for", "export and graph check"),
    (llc.modules.model, "export_forward", "export and graph check"),  # before graph_cache.py
    (llc.run.experiment, "_trained_point", "L0 (ERM check)"),
    (localization, "decide", "gamma=auto (localization)"),
    (llc.run.experiment, "sample", "sampler"),
    (llc.samplers.driver, "search_round", "step-size search"),
    (llc.run.experiment, "build_metrics", "metrics and trust"),
    (diagnostics, "to_inference_data", "ArviZ data"),
    (diagnostics, "write_netcdf", "netcdf"),
    (llc.run.estimate.az, "from_netcdf", "netcdf"),
    (plots, "draw_plots", "plots"),
]


class PhaseClock:
    """Exclusive time per phase of the calls made while it is installed."""

    def __init__(self) -> None:
        self.times: dict[str, float] = defaultdict(float)
        self._children: list[float] = []

    def install(self) -> None:
        for owner, attribute, phase in PHASES:
            if hasattr(owner, attribute):  # an older checkout (a baseline) may lack some
                setattr(owner, attribute, self._timed(getattr(owner, attribute), phase))

    def _timed(self, fn: Callable[..., Any], phase: str) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._children.append(0.0)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                inner = self._children.pop()
                self.times[phase] += elapsed - inner
                if self._children:
                    self._children[-1] += elapsed

        return timed

    def call(self, fn: Callable[[], llc.run.estimate.Estimate]) -> dict[str, float]:
        """One estimate: its total, sampling and outside time, and the phases outside sampling."""
        self.times.clear()
        start = time.perf_counter()
        result = fn()
        total = time.perf_counter() - start
        m = result.metrics
        sampling = m["t_warmup_s"] + m["t_sampling_s"]
        phases = dict(self.times)
        search = phases.pop("step-size search", 0.0)  # step_size=auto's rounds: part of warm-up
        # The sampler's own time outside its steps: building the kernel, the end-of-run diagnostics.
        phases["sampler"] = phases.get("sampler", 0.0) + search - sampling
        phases["other"] = total - sampling - sum(phases.values())
        times = {"total_s": total, "sampling_s": sampling, "outside_s": total - sampling}
        return {**times, "step_search_s": search, **phases}


def checkpoints(count: int, every: int) -> tuple[list[torch.nn.Module], torch.Tensor, torch.Tensor]:
    """The digits MLP's Adam training saved every `every` steps (after a first stretch of training)."""
    work = digits_mlp(True, BATCH)  # 20 steps: the training continues below
    model, x, y = work.module, work.x, work.y
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    saved = []
    for step in range(count * every):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if (step + 1) % every == 0:
            saved.append(copy.deepcopy(model).eval())
    return saved, x, y


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    settings: dict[str, Any] = {"loss": "cross_entropy", "chains": CHAINS, "steps": args.steps}
    settings |= {"batch_size": BATCH} if args.defaults else {**SGLD, "batch_size": BATCH}
    settings.pop("sampler", None)
    models, x, y = checkpoints(args.checkpoints, args.every)
    clock = PhaseClock()
    clock.install()
    last = models[-1]
    first = clock.call(lambda: llc.estimate(last, (x, y), **settings))
    rounds: list[dict[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="llc-overhead-") as scratch:
        for r in range(args.rounds):
            runs_dir = Path(scratch) / str(r)
            memory = clock.call(lambda: llc.estimate(last, (x, y), **settings))
            written = clock.call(lambda d=runs_dir: llc.estimate(last, (x, y), runs_dir=d, **settings))
            rounds.append({"memory": memory, "runs_dir": written})
            print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
    loop = [clock.call(lambda m=m: llc.estimate(m, (x, y), **settings)) for m in models]
    total, sampling = sum(c["total_s"] for c in loop), sum(c["sampling_s"] for c in loop)
    return {
        "quick": args.quick,
        "machine": machine(),
        "settings": {**settings, "checkpoints": args.checkpoints, "every": args.every, "rounds": args.rounds},
        "first_call": first,
        "later_calls": {kind: medians([r[kind] for r in rounds]) for kind in ("memory", "runs_dir")},
        "checkpoint_loop": {
            "checkpoints": len(loop),
            "total_s": total,
            "sampling_s": sampling,
            "total_over_sampling": total / sampling,
            "outside_s_per_call": spread([c["outside_s"] for c in loop]),
            "target": {"total_over_sampling": 1.2, "met": total / sampling <= 1.2},
        },
    }


def medians(calls: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(c.get(key, 0.0) for c in calls) for key in calls[0]}


def report(results: dict[str, Any]) -> None:
    def line(name: str, call: dict[str, float]) -> None:
        phases = sorted(
            ((k, v) for k, v in call.items() if not k.endswith("_s") and v >= 0.005), key=lambda kv: -kv[1]
        )
        detail = ", ".join(f"{k} {v:.3f}" for k, v in phases)
        print(f"{name}: total {call['total_s']:.2f} s, sampling {call['sampling_s']:.2f} s, "
              f"outside {call['outside_s']:.3f} s ({detail})")  # fmt: skip

    line("first call", results["first_call"])
    line("later call, no runs_dir (median)", results["later_calls"]["memory"])
    line("later call, runs_dir (median)", results["later_calls"]["runs_dir"])
    loop = results["checkpoint_loop"]
    print(f"{loop['checkpoints']} checkpoints: {loop['total_s']:.1f} s for {loop['sampling_s']:.1f} s of "
          f"sampling = {loop['total_over_sampling']:.3f}x (target <= 1.2x), "
          f"outside per call {loop['outside_s_per_call']['median']:.3f} s")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of single calls")
    parser.add_argument("--checkpoints", type=int, default=50, help="checkpoints in the loop")
    parser.add_argument("--every", type=int, default=10, help="Adam steps between checkpoints")
    parser.add_argument("--steps", type=int, default=500, help="sampling steps per estimate")
    parser.add_argument("--defaults", action="store_true", help="llc.estimate's defaults, not pinned SGLD")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run: seconds")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write the results")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.checkpoints, args.steps = 1, 3, 20
    results = run(args)
    atomic_write(args.json, json.dumps(results, indent=2).encode())
    report(results)


if __name__ == "__main__":
    main()
