"""Estimates agree with learning coefficients known in closed form, with every default (full preset).

The known-λ problems default to weak localization (gamma = 1, whose bias is about 0.1% at these
curvatures) and, for SGLD and SGHMC, to step_size=auto (docs/samplers.md#defaults-of-the-known-λ-problems).
Nothing here is tuned per case or per sampler.
"""

import pytest

from llc.config import build_config
from llc.run.experiment import run_llc

CASES = {
    "linear": {"problem": "linear", "widths": (4, 3)},
    "rrr": {"problem": "rrr", "widths": (5, 3, 5), "true_rank": 1},
    "dln": {"problem": "dln", "widths": (4, 3, 3, 4), "true_rank": 1},
}


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["sgld", "sghmc", "hmc", "mclmc"])
@pytest.mark.parametrize("case", CASES)
def test_with_defaults_only_the_estimate_is_within_10_percent_of_lambda(case, sampler, tmp_path):
    config = build_config("full", {**CASES[case], "sampler": sampler})
    metrics = run_llc(config, tmp_path).metrics
    summary = (
        f"{case}/{sampler}: {metrics['llc_mean']:.3f} ± {metrics['llc_se']:.3f} vs {metrics['llc_true']} "
        f"(step {metrics.get('step_size_auto')}, flags {metrics['flags']})"
    )
    print(summary)
    assert abs(metrics["llc_rel_error"]) < 0.1, summary
    assert metrics["chains_diverged"] == 0 and metrics["r_hat"] < 1.1, metrics
