"""Run a study as the Prefect flow `sweep` (entrypoint flows/sweep.py:sweep).

    python flows/sweep.py [--study FILE] [--backend local|slurm|modal] [--backend-option KEY=VALUE ...]
                          [--runs-dir DIR] [--no-skip] [--max-parallel N] [--timeout-s S] [--retries N]

Without PREFECT_API_URL the flow starts Prefect's temporary local server; with it, runs are recorded
on that server. Prints the path of results.csv; exits 1 if the sweep could not run.
"""

from __future__ import annotations

import argparse
import sys

from llc.backends import parse_backend_options
from llc.sweeps.flow import sweep

__all__ = ["sweep"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", help="study YAML file [env LLC_STUDY, default studies/quick.yaml]")
    parser.add_argument("--backend", help="where cells run: local | slurm | modal [env LLC_BACKEND]")
    parser.add_argument(
        "--backend-option", action="append", metavar="KEY=VALUE", help="a backend option (repeatable)"
    )
    parser.add_argument("--runs-dir", help="where results go [env LLC_RUNS_DIR, default runs]")
    parser.add_argument("--no-skip", action="store_true", help="recompute cells that have a complete result")
    parser.add_argument("--max-parallel", type=int, help="cells at once [env LLC_MAX_PARALLEL]")
    parser.add_argument("--timeout-s", type=float, help="seconds before a cell is killed [env LLC_TIMEOUT_S]")
    parser.add_argument("--retries", type=int, help="retries of retryable failures [env LLC_RETRIES]")
    args = parser.parse_args(argv)
    try:
        backend_options = parse_backend_options(args.backend_option)
    except ValueError as exc:
        parser.error(str(exc))
    state = sweep(
        study=args.study,
        backend=args.backend,
        runs_dir=args.runs_dir,
        skip=not args.no_skip,
        max_parallel=args.max_parallel,
        timeout_s=args.timeout_s,
        retries=args.retries,
        backend_options=backend_options or None,
        return_state=True,
    )
    if not state.is_completed():
        print(f"sweep did not run: {state.message}", file=sys.stderr)
        return 1
    result = state.result()
    print(
        f"{result['total']} cells: {result['ok']} ok, {result['failed']} failed, {result['cached']} cached\n"
        f"results: {result['results']} (failures: {result['errors']})\n"
        f"summary: llc sweep status {result['sweep_id']}; figures: llc plot-sweep {result['sweep_id']}",
        file=sys.stderr,
    )
    print(result["results"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
