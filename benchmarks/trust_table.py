"""The trust table: every known-λ case the project has, with DEFAULTS ONLY, × the samplers that apply.

Each run reports λ, the finite-n expectation where it is known, λ̂ ± se, the error, `trusted` and its
flags, the steps the run used and its wall time; the script prints the markdown table of
docs/validation.md ("The trust checks against known λ") and the two shares the issue sets floors on:
runs trusted and within 10%, and runs trusted and more than 15% off.

- `builtin`: `linear`, `rrr`, `dln` as `llc run --set problem=... widths=... true_rank=...` runs them;
- `devinterp`: devinterp's known-λ ports (tests/devinterp_cases.py) through
  `llc.estimate(model, (x, y), loss="mse", sampler=s)` with nothing else set;
- `dln_module`: the `dln` problem's network at its ERM point as a plain torch module, through
  `llc.estimate` the same way;
- more groups register themselves in `CASES` (benchmarks/dln_scale.py's networks: `--groups dln_scale`).

    python benchmarks/trust_table.py [--groups builtin devinterp dln_module] [--samplers sgld ...]
                                     [--seeds 0 1] [--json OUT]
    python benchmarks/trust_table.py --rescore OLD.json ... [--json OUT]   # the table again, no runs
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]

from llc import estimate  # noqa: E402
from llc.config import build_config  # noqa: E402
from llc.problems import build_problem  # noqa: E402
from llc.run.erm import train  # noqa: E402
from llc.run.experiment import run_llc  # noqa: E402

SAMPLERS = ("sgld", "sghmc", "hmc", "mclmc")
WITHIN, OFF = 0.10, 0.15  # the floors: trusted and within 10%, trusted and more than 15% off


@dataclass(frozen=True)
class Run:
    """One case at one sampler and seed: `go(seed, runs_dir)` returns the run's metrics."""

    case: str
    llc_true: float
    expected: float | None  # the finite-n expectation where it is known (else the estimate targets λ)
    go: Callable[[str, int, Path], dict[str, Any]]


BUILTIN = (
    {"problem": "linear", "widths": (4, 3)},
    {"problem": "linear", "widths": (6, 5)},
    {"problem": "rrr", "widths": (5, 3, 5), "true_rank": 1},
    {"problem": "rrr", "widths": (8, 4, 6), "true_rank": 2},
    {"problem": "dln", "widths": (4, 3, 3, 4), "true_rank": 1},
    {"problem": "dln", "widths": (5, 4, 4, 4, 5), "true_rank": 1},
    {"problem": "dln", "widths": (6, 5, 5, 6), "true_rank": 2},
    {"problem": "dln", "widths": (8, 6, 6, 6, 8), "true_rank": 2},
    {"problem": "dln", "widths": (10, 20, 20, 10), "true_rank": 3},
)


def _label(keys: dict[str, Any]) -> str:
    rank = f" r={keys['true_rank']}" if "true_rank" in keys else ""
    return f"{keys['problem']} {list(keys['widths'])}{rank}"


def builtin() -> Iterator[Run]:
    from llc.problems.truth import true_learning_coefficient

    for keys in BUILTIN:

        def go(sampler: str, seed: int, runs: Path, keys: dict[str, Any] = keys) -> dict[str, Any]:
            config = build_config(None, {**keys, "sampler": sampler, "seed": seed, "threads": 1})
            return run_llc(config, runs).metrics

        truth = true_learning_coefficient(keys["problem"], keys["widths"], keys.get("true_rank"))
        yield Run(_label(keys), float(truth or 0), None, go)


def devinterp() -> Iterator[Run]:
    from devinterp_cases import (
        POLYNOMIALS,
        REDUCED_RANKS,
        RRR_FINITE_N,
        finite_n_llc,
        polynomial,
        reduced_rank,
    )

    cases = [polynomial(p) for p in POLYNOMIALS] + [reduced_rank(*shape) for shape in REDUCED_RANKS]
    for case in cases:

        def go(sampler: str, seed: int, runs: Path, case: Any = case) -> dict[str, Any]:
            x, y = case.data
            return estimate(case.model, (x, y), loss="mse", sampler=sampler, seed=seed, threads=1).metrics

        # The finite-n expectation at the γ = 1 that gamma=auto chooses on every case: the polynomials' by
        # quadrature, reduced-rank regression's by rrr_finite_n_llc (stored: it takes a minute a case).
        poly = case.name.startswith("poly")
        expected = finite_n_llc(case, gamma=1.0) if poly else RRR_FINITE_N[case.name]
        yield Run(f"devinterp {case.name}", case.llc_true, expected, go)


DLN_MODULES = BUILTIN[4], BUILTIN[6]


def dln_module() -> Iterator[Run]:
    from llc.problems.truth import dln_learning_coefficient

    for keys in DLN_MODULES:

        def go(sampler: str, seed: int, runs: Path, keys: dict[str, Any] = keys) -> dict[str, Any]:
            config = build_config(None, {**keys, "seed": seed})
            problem = build_problem(config)
            w_star, _ = train(problem, config.erm_steps, config.erm_lr, config.seed)
            module = _as_module(problem.model, w_star)
            return estimate(
                module, (problem.x, problem.y), loss="mse", sampler=sampler, seed=seed, threads=1
            ).metrics

        truth = dln_learning_coefficient(keys["widths"], keys["true_rank"])
        yield Run(f"module {_label(keys)}", truth, None, go)


def _as_module(model: Any, w: torch.Tensor) -> torch.nn.Sequential:
    """A bias-free linear network (the built-in MLP's layers) as nn.Linear layers holding w [d]."""
    layers = []
    for layer in model.layers:
        linear = torch.nn.Linear(layer.fan_in, layer.fan_out, bias=False, dtype=w.dtype)
        with torch.no_grad():
            linear.weight.copy_(w[layer.weight].view(layer.fan_in, layer.fan_out).T)
        layers.append(linear)
    return torch.nn.Sequential(*layers)


def dln_scale() -> Iterator[Run]:
    """benchmarks/dln_scale.py's measured networks (MEASURED: three of about 1K parameters, two of about
    10K), `llc run` defaults."""
    from dln_scale import MEASURED, networks

    from llc.problems.truth import dln_learning_coefficient

    for size, widths, ranks in networks(**MEASURED):
        keys = {"problem": "dln", "widths": widths, "true_rank": min(ranks)}

        def go(sampler: str, seed: int, runs: Path, keys: dict[str, Any] = keys) -> dict[str, Any]:
            config = build_config(None, {**keys, "sampler": sampler, "seed": seed, "threads": 1})
            return run_llc(config, runs).metrics

        truth = dln_learning_coefficient(widths, min(ranks))
        yield Run(f"dln_scale {size // 1000}K {_label(keys)}", truth, None, go)


# Groups of cases by name; another benchmark adds its own with CASES["name"] = generator.
CASES: dict[str, Callable[[], Iterator[Run]]] = {
    "builtin": builtin,
    "devinterp": devinterp,
    "dln_module": dln_module,
    "dln_scale": dln_scale,
}


def row(run: Run, sampler: str, seed: int, runs: Path) -> dict[str, Any]:
    start = time.perf_counter()
    m = run.go(sampler, seed, runs)
    wall = time.perf_counter() - start
    return scored({
        "case": run.case, "sampler": sampler, "seed": seed, "llc_mean": m.get("llc_mean"),
        "llc_se": m.get("llc_se"), "trusted": m["trusted"], "flags": m["flags"],
        "steps": m.get("steps_chosen", m.get("steps")), "steps_reason": m.get("steps_reason"),
        "gamma": m.get("gamma_auto"), "r_hat": m.get("r_hat"), "wall_s": round(wall, 1),
        "metrics": {k: v for k, v in m.items() if isinstance(v, (int, float))},
    }, run)  # fmt: skip


def scored(r: dict[str, Any], run: Run) -> dict[str, Any]:
    """A row's λ, finite-n expectation and errors from its case's current references."""
    reference = run.expected if run.expected is not None else run.llc_true
    llc = r["llc_mean"]
    return {
        **r, "llc_true": run.llc_true, "expected": run.expected,
        "error": None if llc is None else (llc - reference) / reference,
        "error_vs_lambda": None if llc is None else (llc - run.llc_true) / run.llc_true,
    }  # fmt: skip


def rescore(paths: list[Path]) -> list[dict[str, Any]]:
    """Rows of earlier --json files, scored against the references the cases have now (a finite-n value
    found since), without running them again; a row of a case no longer defined is dropped."""
    runs = {run.case: run for cases in CASES.values() for run in cases()}
    rows = [r for path in paths for r in json.loads(path.read_text())]
    return [scored(r, runs[r["case"]]) for r in rows if r["case"] in runs]


def shares(rows: list[dict[str, Any]]) -> tuple[str, str]:
    n = len(rows)
    good = sum(1 for r in rows if r["trusted"] and r["error"] is not None and abs(r["error"]) <= WITHIN)
    bad = sum(1 for r in rows if r["trusted"] and (r["error"] is None or abs(r["error"]) > OFF))
    return f"{good}/{n} = {good / n:.0%}", f"{bad}/{n} = {bad / n:.0%}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| case | sampler | seed | λ | finite-n | λ̂ ± se | error | trusted | flags | steps | wall s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        expected = f"{r['expected']:.3g}" if r["expected"] is not None else "—"
        est = f"{r['llc_mean']:.3g} ± {r['llc_se']:.2g}" if r["llc_mean"] is not None else "—"
        error = f"{r['error']:+.0%}" if r["error"] is not None else "—"
        lines.append(
            f"| {r['case']} | {r['sampler']} | {r['seed']} | {r['llc_true']:.4g} | {expected} | {est} | "
            f"{error} | {'yes' if r['trusted'] else 'no'} | {', '.join(r['flags'])} | {r['steps']} | "
            f"{r['wall_s']} |"
        )
    good, bad = shares(rows)
    lines += ["", f"trusted and within 10%: {good}; trusted and more than 15% off: {bad}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", nargs="+", default=["builtin", "devinterp", "dln_module"], choices=CASES)
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--only", default="", help="run only the cases whose name contains this")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--rescore", type=Path, nargs="+", help="print the table of these --json files")
    args = parser.parse_args()
    if args.rescore:
        rows = rescore(args.rescore)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1, default=_plain))
        print(table(rows))
        return
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="trust-table-") as runs:
        for group in args.groups:
            for run in CASES[group]():
                if args.only not in run.case:
                    continue
                for sampler in args.samplers:
                    for seed in args.seeds:
                        rows.append(row(run, sampler, seed, Path(runs)))
                        r = rows[-1]
                        error = "—" if r["error"] is None else f"{r['error']:+.1%}"
                        print(
                            f"{r['case']:<32} {sampler:<6} seed {seed}: {r['llc_mean']} ({error}) "
                            f"trusted={r['trusted']} {r['flags']} steps={r['steps']} {r['wall_s']} s",
                            flush=True,
                        )
                        if args.json:
                            args.json.write_text(json.dumps(rows, indent=1, default=_plain))
    print()
    print(table(rows))


def _plain(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else str(value)


if __name__ == "__main__":
    main()
