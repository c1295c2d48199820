"""Deep linear networks at scale: relative error of each sampler's LLC against Aoyagi's λ.

After Furman & Lau (2024): random DLNs of a given parameter count (random depth and widths, the
teacher's rank reduced at random), each estimated with every default of `llc run --preset full`
(γ = 1 and, for SGLD and SGHMC, step_size=auto: docs/samplers.md#defaults-of-the-known-λ-problems).

    python benchmarks/dln_scale.py [--sizes 1000 10000 100000] [--networks 2] [--samplers sgld sghmc mclmc]
                                   [--json OUT]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from llc.config import build_config
from llc.experiment import run_llc
from llc.problems.truth import dln_learning_coefficient


def random_dln(size: int, rng: random.Random) -> tuple[tuple[int, ...], int]:
    """Widths (input first) of a random DLN with about `size` parameters, and a random true rank."""
    while True:
        layers = rng.randint(2, 5)
        base = (size / layers) ** 0.5
        widths = tuple(max(2, round(base * rng.uniform(0.5, 1.5))) for _ in range(layers + 1))
        params = sum(a * b for a, b in itertools.pairwise(widths))
        if abs(params - size) <= 0.25 * size:
            return widths, rng.randint(1, min(widths) - 1)


def run(size: int, widths: tuple[int, ...], rank: int, sampler: str, runs: Path) -> dict[str, Any]:
    config = build_config("full", {"problem": "dln", "widths": widths, "true_rank": rank, "sampler": sampler})
    start = time.perf_counter()
    m = run_llc(config, runs).metrics
    return {
        "size": size, "d": m["d"], "widths": list(widths), "rank": rank, "sampler": sampler,
        "llc_true": dln_learning_coefficient(widths, rank), "llc_mean": m["llc_mean"], "llc_se": m["llc_se"],
        "rel_error": m.get("llc_rel_error"), "r_hat": m["r_hat"], "flags": m["flags"],
        "step_size_auto": m.get("step_size_auto"), "wall_s": round(time.perf_counter() - start, 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--networks", type=int, default=2, help="random networks per size")
    parser.add_argument("--samplers", nargs="+", default=["sgld", "sghmc", "hmc", "mclmc"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as runs:
        for size in args.sizes:
            for _ in range(args.networks):
                widths, rank = random_dln(size, rng)
                for sampler in args.samplers:
                    rows.append(run(size, widths, rank, sampler, Path(runs)))
                    print(json.dumps(rows[-1]), flush=True)
                    if args.json:
                        args.json.write_text(json.dumps(rows, indent=1))
    print("\n| size | widths | r | λ | sampler | λ̂ ± se | relative error | R-hat | flags |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        rel = f"{r['rel_error']:+.1%}" if r["rel_error"] is not None else "—"
        print(
            f"| {r['d']} | {r['widths']} | {r['rank']} | {r['llc_true']:g} | {r['sampler']} | "
            f"{r['llc_mean']:.4g} ± {r['llc_se']:.2g} | {rel} | {r['r_hat']:.3f} | {', '.join(r['flags'])} |"
        )


if __name__ == "__main__":
    main()
