"""SGLD draws per second on the digits MLP of own_model.py: this engine against canonical-interp 0.2.7
(its torch.compile on, as it defaults, and off) and devinterp 1.3.2, at 8 and 64 chains.

The same nn.Module, data, w*, loss, minibatch size and SGLD step for all; every other setting is each
library's own default. Each library runs in a worker process of its own interpreter (canonical-interp
needs Python >= 3.12: `make bench-peers` builds .venv-canonical for it, and .venv-bench for devinterp),
with one torch thread, started once and fed by this script. A worker times only its sampling loop:
from the end of the first update to the end of the last (import, set-up, compiling and the first step
left out). The machine is shared, so the workers take turns in interleaved rounds, and each ratio is
the median of the per-round ratios, with its smallest and largest beside it.

    python benchmarks/peers.py [--rounds 5] [--draws 200] [--chains 8 64] [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "peers.json"
CANONICAL = ROOT / ".venv-canonical" / "bin" / "python"
DEVINTERP = ROOT / ".venv-bench" / "bin" / "python"
VERSIONS = {"canonical_interp": "0.2.7", "devinterp": "1.3.2"}
BATCH = 64
STEP, GAMMA = 1e-4, 100.0  # as own_model.py's SGLD
FLOORS = {"canonical": 3.0, "canonical_eager": 3.0, "devinterp": 10.0}  # × each peer's draws/s (issue 23)
# worker name -> (interpreter, what it runs)
WORKERS = {
    "engine": (Path(sys.executable), "llc, its defaults (compile=auto)"),
    "canonical": (CANONICAL, "canonical-interp 0.2.7, compile='reduce-overhead' (its default)"),
    "canonical_eager": (CANONICAL, "canonical-interp 0.2.7, compile=False"),
    "devinterp": (DEVINTERP, "devinterp 1.3.2, its defaults (chains one after another)"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--draws", type=int, default=200, help="timed SGLD steps per measurement")
    parser.add_argument("--devinterp-draws", type=int, default=60, help="timed steps of devinterp's chain")
    parser.add_argument("--chains", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--only", nargs="+", choices=list(WORKERS), help="run these workers only")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run: seconds")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write the results")
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.draws, args.devinterp_draws = 1, 5, 5
    return args


# ---- the worker: one library in its own interpreter ----------------------------------------------
def network() -> Any:
    import torch

    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))


class Clock:
    """Times of the ends of a sampler's updates: the loop's time is last - first over count - 1 steps."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def tick(self) -> None:
        self.ends.append(time.perf_counter())

    def rate(self, chains: int) -> float:
        return chains * (len(self.ends) - 1) / (self.ends[-1] - self.ends[0])


def engine_sampler(work: dict[str, Any]) -> Any:
    import torch

    from llc.config import IN_MEMORY_MODULE, RunConfig
    from llc.model.posterior import LocalizedPosterior
    from llc.problems.module import module_problem
    from llc.run.allocator import keep_freed_memory
    from llc.samplers.driver import sample

    keep_freed_memory()  # as every run of llc.estimate does first

    def run(chains: int, draws: int) -> float:
        values = {
            "problem": "module",
            "loss": "cross_entropy",
            "sampler": "sgld",
            "chains": chains,
            "steps": draws,
            "warmup": 0,
            "batch_size": BATCH,
            "step_size": STEP,
            "gamma": GAMMA,
        }
        config = RunConfig.model_validate(values, context={IN_MEMORY_MODULE: True})
        model, x, y, _ = module_problem(config, work["module"], (work["x"], work["y"]))
        posterior = LocalizedPosterior(model, x, y, model.flat_parameters(), work["nbeta"], GAMMA, BATCH)
        trace = sample(config.sampling, posterior, work["loss0"], torch.Generator().manual_seed(0))
        return chains * draws / trace.t_sampling_s

    return run


def canonical_sampler(work: dict[str, Any], compile: bool) -> Any:
    import logging

    import canonical_interp.slt as slt
    from torch.utils.data import DataLoader, TensorDataset

    clock = Clock()
    step = slt.sgld_step

    def timed_step(*args: Any, **kwargs: Any) -> Any:
        out = step(*args, **kwargs)
        clock.tick()
        return out

    logging.getLogger(slt.__name__).setLevel(logging.ERROR)  # its advice on settings, at every call
    slt.sgld_step = timed_step  # canonical-interp's loop calls it once per update, after the gradient
    loader = DataLoader(TensorDataset(work["x"], work["y"]), batch_size=BATCH, shuffle=True)
    options = {} if compile else {"compile": False}

    def run(chains: int, draws: int) -> float:
        clock.ends.clear()
        estimator = slt.LLCEstimator(
            draws=draws + 1,
            chains=chains,
            burnin_steps=0,
            learning_rate=STEP,
            localization=GAMMA,
            nbeta=work["nbeta"],
        )
        estimator.estimate_llc(
            work["module"], loader, current_loss=work["loss0"], show_progress=False, seed=0, **options
        )
        return clock.rate(chains)

    return run


def devinterp_sampler(work: dict[str, Any]) -> Any:
    import warnings

    import torch
    from devinterp.optim.sgld import SGLD
    from devinterp.slt.sampler import estimate_learning_coeff_with_summary
    from torch.utils.data import DataLoader, TensorDataset

    clock = Clock()

    class TimedSGLD(SGLD):
        def step(self, *args: Any, **kwargs: Any) -> Any:
            out = super().step(*args, **kwargs)
            clock.tick()
            return out

    def evaluate(module: torch.nn.Module, batch: Any) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(module(batch[0]), batch[1])

    loader = DataLoader(TensorDataset(work["x"], work["y"]), batch_size=BATCH, shuffle=True)

    def run(chains: int, draws: int) -> float:
        """devinterp runs chains one after another (cores=1): one chain's rate is its rate at any count."""
        clock.ends.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            estimate_learning_coeff_with_summary(
                work["module"],
                loader,
                evaluate=evaluate,
                sampling_method=TimedSGLD,
                optimizer_kwargs={"lr": STEP, "localization": GAMMA, "nbeta": work["nbeta"]},
                num_draws=draws + 1,
                num_chains=1,
                init_loss=work["loss0"],
                seed=0,
                verbose=False,
            )
        return clock.rate(1)

    return run


def serve(name: str, data: Path) -> None:
    """Answer {"chains", "draws"} lines on stdin with {"draws_per_s"} lines, warming up each new shape."""
    import torch

    torch.set_num_threads(1)
    saved = torch.load(data)
    module = network()
    module.load_state_dict(saved["state"])
    module.eval()
    work = {**saved, "module": module}
    if name == "engine":
        run = engine_sampler(work)
    elif name.startswith("canonical"):
        run = canonical_sampler(work, compile=name == "canonical")
    else:
        run = devinterp_sampler(work)
    seen: set[int] = set()
    for line in sys.stdin:
        request = json.loads(line)
        if request["chains"] not in seen:
            run(request["chains"], 3)
            seen.add(request["chains"])
        rate = run(request["chains"], request["draws"])
        print(json.dumps({"draws_per_s": rate}), flush=True)


# ---- the driver ----------------------------------------------------------------------------------
class Worker:
    def __init__(self, name: str, data: Path) -> None:
        python = WORKERS[name][0]
        self.process = subprocess.Popen(
            [str(python), __file__, "--worker", name, "--data", str(data)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=worker_env(name),
        )

    def measure(self, chains: int, draws: int) -> float:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"chains": chains, "draws": draws}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.process.args} ended (exit {self.process.wait()})")
        return float(json.loads(line)["draws_per_s"])

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait()


def worker_env(name: str) -> dict[str, str]:
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if name != "engine":
        env.pop("PYTHONPATH", None)  # the peers' interpreters import nothing of this project
    return env


def missing(name: str) -> str | None:
    python = WORKERS[name][0]
    if not python.exists():
        return f"{python.relative_to(ROOT)} is missing (`make bench-peers` builds it)"
    module = {"canonical": "canonical_interp", "canonical_eager": "canonical_interp"}.get(name, name)
    if module not in VERSIONS:
        return None
    script = f"import importlib.metadata as m; print(m.version('{module.replace('_', '-')}'))"
    found = subprocess.run([str(python), "-c", script], capture_output=True, text=True)
    if found.returncode or found.stdout.strip() != VERSIONS[module]:
        return f"{module} {VERSIONS[module]} is not installed in {python.relative_to(ROOT)}"
    return None


def workload(quick: bool, path: Path) -> dict[str, Any]:
    """own_model.py's digits MLP at w*, saved for the workers: weights, data, L0 and nβ = n/log n."""
    import torch
    from own_model import digits_mlp

    work = digits_mlp(quick, BATCH)
    with torch.no_grad():
        loss0 = float(torch.nn.functional.cross_entropy(work.module(work.x), work.y))
    n = work.x.shape[0]
    saved = {
        "state": work.module.state_dict(),
        "x": work.x,
        "y": work.y,
        "loss0": loss0,
        "nbeta": n / math.log(n),
    }
    torch.save(saved, path)
    return {"description": work.description, "n": n, "L0": loss0, "nbeta": n / math.log(n)}


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from throughput import machine

    names = [n for n in (args.only or list(WORKERS)) if n == "engine" or missing(n) is None]
    skipped = {n: missing(n) for n in (args.only or list(WORKERS)) if n != "engine" and missing(n)}
    rounds: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "digits.pt"
        facts = workload(args.quick, data)
        workers = {name: Worker(name, data) for name in names}
        try:
            # Every worker imports, compiles and takes its first steps at every chain count before the
            # first timed round, so no round times one library while another starts up beside it.
            for chains in args.chains:
                for worker in workers.values():
                    worker.measure(chains, 3)
            for r in range(args.rounds):
                record: dict[str, float] = {}
                for chains in args.chains:
                    for name, worker in workers.items():
                        draws = args.devinterp_draws if name == "devinterp" else args.draws
                        record[f"{name}/{chains}"] = worker.measure(chains, draws)
                rounds.append(record)
                print(
                    f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v:,.0f}" for k, v in record.items()),
                    file=sys.stderr,
                )
        finally:
            for worker in workers.values():
                worker.close()
    results: dict[str, Any] = {
        "quick": args.quick,
        "machine": {**machine(), "torch_threads": 1},
        "workload": facts,
        "settings": {
            "batch_size": BATCH,
            "step_size": STEP,
            "gamma": GAMMA,
            "rounds": args.rounds,
            "draws": args.draws,
            "devinterp_draws": args.devinterp_draws,
        },
        "workers": {name: WORKERS[name][1] for name in names},
        "skipped": skipped,
        "chains": {},
    }
    for chains in args.chains:
        entry: dict[str, Any] = {
            name: {"draws_per_s": spread([x[f"{name}/{chains}"] for x in rounds])} for name in names
        }
        for name in names[1:] if names[0] == "engine" else []:
            ratio = spread([x[f"engine/{chains}"] / x[f"{name}/{chains}"] for x in rounds])
            entry[name]["engine_speedup"] = ratio
            entry[name]["floor"] = {"required": FLOORS[name], "met": ratio["median"] >= FLOORS[name]}
        results["chains"][str(chains)] = entry
    return results


def report(results: dict[str, Any]) -> None:
    m = results["machine"]
    print(f"{m['cpu']}, {m['cores']} cores, 1 torch thread; {results['workload']['description']}")
    for name, why in results["skipped"].items():
        print(f"{name} skipped: {why}")
    for chains, entry in results["chains"].items():
        print(f"{chains} chains:")
        for name, value in entry.items():
            rate = value["draws_per_s"]
            line = f"  {name:16s} {rate['median']:9,.0f} draws/s ({rate['min']:,.0f}–{rate['max']:,.0f})"
            if "engine_speedup" in value:
                s = value["engine_speedup"]
                verdict = "met" if value["floor"]["met"] else "NOT met"
                line += f"   engine × {s['median']:.2f} ({s['min']:.2f}–{s['max']:.2f}), floor "
                line += f"{value['floor']['required']:.0f}× {verdict}"
            print(line)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        serve(args.worker, args.data)
        return
    results = run(args)
    report(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {args.json}")


if __name__ == "__main__":
    main()
