"""steps=auto: the run decides how long its chains are, continuing the same chains until they fill.

The driver samples the initial steps, then asks `ChainLength.more` after each part; while the draws so
far fail a check that more steps of the same chains can pass (the estimate still moving, R-hat, too few
effective draws per chain, a standard error over 5% of the estimate, chains still spreading from w*), the
chains continue for as many steps again, up to the budget (config.py's AUTO_STEP_BUDGET times the
initial steps). What it decided, and why, goes to metrics.json as `steps_chosen` and `steps_reason`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llc.run import diagnostics, health
from llc.samplers.trace import Trace

# The loop's own trend and spread tests are looser than the flags' (health.py): extending costs steps, not
# trust. A trend either way over the draws (falling too: SGLD on devinterp's normal crossings fell 45-86%
# from the second quarter to the last, at 1.9-2.0 se, and read 22-24% under the finite-n expectation) at
# 2 se; and chains still spreading from w* at any reach below the localization's (the flag asks < 0.01).
TREND_Z = 2.0
SPREAD_REACH_CEILING = 1.0
# Effective draws per chain below which the chains continue: the standard error of fewer is itself
# uncertain by more than 10% (ArviZ's bulk ESS), and the quarters of a trend check hold a handful each.
ESS_PER_CHAIN_FLOOR = 50
# The standard error, as a fraction of the estimate, above which the chains continue: the issue's "within
# 10%" cannot be told apart at more (devinterp's poly12 read by SGLD at 2,000 steps: 0.182 ± 0.021, 10%).
PRECISION = 0.05


@dataclass
class ChainLength:
    """The steps=auto rule of one run: `more` is the driver's MoreSteps; `reason` what it decided last."""

    budget: int  # the most steps after warm-up
    gamma: float
    reason: str = ""

    def more(self, trace: Trace) -> int:
        """The steps to add (doubling the chains' length); 0 once they have filled or the budget is spent."""
        unfilled = self.unfilled(trace.llc, trace.w_proj)
        steps = trace.steps
        if not unfilled:
            self.reason = f"filled after {steps} steps"
            return 0
        if 2 * steps > self.budget:
            self.reason = f"budget of {self.budget} steps spent, still: {'; '.join(unfilled)}"
            return 0
        self.reason = f"extended from {steps} steps: {'; '.join(unfilled)}"
        return steps

    def unfilled(self, llc: np.ndarray, w_proj: np.ndarray) -> list[str]:
        """What more steps of the same chains could fix, in a few words each (empty: nothing)."""
        metrics = {
            **diagnostics.summarize(llc),
            **diagnostics.trend(llc),
            **diagnostics.spread(llc, w_proj, self.gamma),
        }
        reasons = []
        rise, rise_z = metrics.get("llc_rise"), metrics.get("llc_rise_z")
        if (
            rise is not None
            and rise_z is not None
            and abs(rise) > health.RISE_FRACTION
            and abs(rise_z) > TREND_Z
        ):
            reasons.append(f"the estimate moved {rise:+.0%} ({rise_z:+.1f} se)")
        r_hat = metrics.get("r_hat")
        if r_hat is not None and r_hat > health.R_HAT_CEILING:
            reasons.append(f"R-hat {r_hat:.2f}")
        used = metrics.get("chains_used") or 0
        ess = metrics.get("ess_bulk")
        if used and ess is not None and ess / used < ESS_PER_CHAIN_FLOOR:
            reasons.append(f"ESS {ess / used:.0f} per chain")
        llc, se = metrics.get("llc_mean"), metrics.get("llc_se")
        if llc is not None and se is not None and llc > 0 and se > PRECISION * llc:
            reasons.append(f"standard error {se / llc:.0%} of the estimate")
        reach, growth = metrics.get("spread_gamma"), metrics.get("spread_growth")
        if (
            reach is not None
            and growth is not None
            and reach < SPREAD_REACH_CEILING
            and growth > health.SPREAD_GROWTH
        ):
            reasons.append(f"still spreading ({growth:.1f}-fold, at {reach:.2g} of 1/γ)")
        return reasons
