"""devinterp's own figures on its known-λ cases (tests/devinterp_cases.py): devinterp 1.3.2's
`estimate_learning_coeff_with_summary` with its SGLD, on the same models, data and w*, with the settings
the port translates (`Case.devinterp`), for the table in docs/validation.md beside this project's runs.

Needs devinterp 1.3.2 (the `bench` extra):

    python benchmarks/devinterp_cases.py [--seed 0] [--only rrr535 poly12 ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from devinterp.optim.sgld import SGLD
from devinterp.slt.sampler import estimate_learning_coeff_with_summary
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from devinterp_cases import POLYNOMIALS, REDUCED_RANKS, Case, polynomial, reduced_rank


def devinterp_llc(case: Case, seed: int) -> dict[str, Any]:
    """devinterp's mean LLC and the sd of its chain means (its `llc/std`, which its tests' rule reads)."""
    x, y = case.data
    settings = case.devinterp
    nbeta = x.shape[0] / math.log(x.shape[0])  # llc.estimate's default; devinterp's for a full batch
    loader = DataLoader(TensorDataset(x, y), batch_size=settings["batch_size"], shuffle=True)
    start = time.perf_counter()
    stats = estimate_learning_coeff_with_summary(
        copy.deepcopy(case.model),
        loader,
        evaluate=lambda model, batch: F.mse_loss(model(batch[0]), batch[1]),
        sampling_method=SGLD,
        optimizer_kwargs={"lr": settings["step_size"], "localization": settings["gamma"], "nbeta": nbeta},
        num_chains=settings["chains"],
        num_draws=settings["steps"],
        seed=seed,
        verbose=False,
    )
    return {
        "case": case.name, "llc_true": case.llc_true, "llc_mean": float(stats["llc/mean"]),
        "chain_means_sd": float(stats["llc/std"]),
        "chains": settings["chains"], "draws": settings["steps"], "step_size": settings["step_size"],
        "gamma": settings["gamma"], "seed": seed, "wall_s": round(time.perf_counter() - start, 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", help="case names (poly11, rrr535, ...); all when left out")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = [polynomial(p) for p in POLYNOMIALS] + [reduced_rank(*shape) for shape in REDUCED_RANKS]
    if args.only:  # in the order given
        cases = [case for name in args.only for case in cases if case.name == name]
    rows = []
    for case in cases:
        rows.append(devinterp_llc(case, args.seed))
        r = rows[-1]
        print(
            f"{r['case']}: {r['llc_mean']:.3f} (sd of chain means {r['chain_means_sd']:.3f}) against "
            f"λ = {r['llc_true']:.3f}, {r['wall_s']} s",
            flush=True,
        )
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
