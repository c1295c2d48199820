"""Deep linear networks at scale: relative error of each sampler's LLC against Aoyagi's λ.

After Furman & Lau (2024): random DLNs of a given parameter count (random depth and widths, each
layer's rank reduced at random), each estimated with every default of `llc run --preset full`
(γ = 1 and, for SGLD and SGHMC, step_size=auto: docs/samplers.md#defaults-of-the-known-λ-problems).
The true map's rank r is the smallest of the layers' ranks (a product of generic matrices has the
rank of its lowest-rank factor), and Aoyagi's λ depends on the widths and r only; the `dln` problem
draws a teacher of rank r.

    python benchmarks/dln_scale.py [--sizes 1000 10000 100000] [--networks 2 | --networks 3 2]
                                   [--samplers sgld sghmc mclmc] [--set steps=2000 ...] [--json OUT]
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
from llc.problems.truth import dln_learning_coefficient
from llc.run.experiment import run_llc


def random_dln(size: int, rng: random.Random) -> tuple[tuple[int, ...], list[int]]:
    """Widths (input first) of a random DLN with about `size` parameters, and each layer's rank: with
    probability 1/2 reduced to a uniform draw below its full rank."""
    while True:
        layers = rng.randint(2, 5)
        base = (size / layers) ** 0.5
        widths = tuple(max(2, round(base * rng.uniform(0.5, 1.5))) for _ in range(layers + 1))
        params = sum(a * b for a, b in itertools.pairwise(widths))
        if abs(params - size) <= 0.25 * size:
            full = [min(a, b) for a, b in itertools.pairwise(widths)]
            return widths, [rng.randint(1, f - 1) if rng.random() < 0.5 else f for f in full]


def networks(
    sizes: list[int], counts: list[int], seed: int = 0
) -> list[tuple[int, tuple[int, ...], list[int]]]:
    """The random networks measured, in order, as (size, widths, layer ranks): `counts[i]` of about
    `sizes[i]` parameters each, from one stream seeded with `seed`. MEASURED is the set in
    docs/validation.md; benchmarks/trust_table.py can take its cases from here."""
    rng = random.Random(seed)
    return [
        (size, *random_dln(size, rng))
        for size, count in zip(sizes, counts, strict=True)
        for _ in range(count)
    ]


# The set measured with defaults (docs/validation.md, "Deep linear networks at scale"): three networks of
# about 1K parameters and two of about 10K, seed 0.
MEASURED = {"sizes": [1000, 10000], "counts": [3, 2], "seed": 0}


def run(
    size: int, widths: tuple[int, ...], ranks: list[int], sampler: str, runs: Path, overrides: dict[str, Any]
) -> dict[str, Any]:
    rank = min(ranks)
    config = build_config(
        "full", {"problem": "dln", "widths": widths, "true_rank": rank, "sampler": sampler, **overrides}
    )
    start = time.perf_counter()
    m = run_llc(config, runs).metrics
    return {
        "size": size, "d": m["d"], "widths": list(widths), "layer_ranks": ranks, "rank": rank,
        "sampler": sampler, "chains": config.chains, "steps": config.steps, "warmup": config.warmup,
        "llc_true": dln_learning_coefficient(widths, rank), "llc_mean": m["llc_mean"], "llc_se": m["llc_se"],
        "rel_error": m.get("llc_rel_error"), "r_hat": m["r_hat"], "flags": m["flags"],
        "step_size_auto": m.get("step_size_auto"), "friction_auto": m.get("friction_auto"),
        "minibatch_heating": m.get("minibatch_heating"), "mala_acceptance": m.get("mala_acceptance_mean"),
        "spread_gamma": m.get("spread_gamma"), "spread_growth": m.get("spread_growth"),
        "llc_rise": m.get("llc_rise"), "llc_rise_z": m.get("llc_rise_z"), "overrides": overrides,
        "wall_s": round(time.perf_counter() - start, 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument(
        "--networks", type=int, nargs="+", default=[2], help="random networks per size (one, or one per size)"
    )
    parser.add_argument("--samplers", nargs="+", default=["sgld", "sghmc", "hmc", "mclmc"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", type=int, default=0, help="skip the first networks of the stream (resume)")
    parser.add_argument("--set", nargs="*", default=[], help="overrides key=value (JSON), e.g. steps=2000")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    counts = args.networks * len(args.sizes) if len(args.networks) == 1 else args.networks
    rows = []
    with tempfile.TemporaryDirectory() as runs:
        for size, widths, ranks in networks(args.sizes, counts, args.seed)[args.skip :]:
            for sampler in args.samplers:
                rows.append(run(size, widths, ranks, sampler, Path(runs), overrides))
                print(json.dumps(rows[-1]), flush=True)
                if args.json:
                    args.json.write_text(json.dumps(rows, indent=1))
    print("\n| size | widths | r | λ | sampler | chains × steps | λ̂ ± se | relative error | R-hat | flags |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        rel = f"{r['rel_error']:+.1%}" if r["rel_error"] is not None else "—"
        print(
            f"| {r['d']} | {r['widths']} | {r['rank']} | {r['llc_true']:g} | {r['sampler']} | "
            f"{r['chains']} × {r['steps']} | "
            f"{r['llc_mean']:.4g} ± {r['llc_se']:.2g} | {rel} | {r['r_hat']:.3f} | {', '.join(r['flags'])} |"
        )


if __name__ == "__main__":
    main()
