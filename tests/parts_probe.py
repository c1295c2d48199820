"""A probe experiment that reports a restricted run's metrics as the LLC experiment does: one estimate per
part under `parts`, the run's shared numbers (L0) beside them. Sweep tests of parts use it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from sweep_probe import load_checkpoint

PARTS_PROBE = "parts_probe:PartsProbe"


class PartsProbeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    weights: str = ""  # a probe checkpoint (sweep_probe.load_checkpoint): its llc is the first part's
    parts: list[str] = ["layers.0.head0"]
    untrusted: str = ""  # the part whose estimate fails a check


class PartsProbe:
    config_model = PartsProbeConfig

    def run(self, config: PartsProbeConfig, run_dir: Path) -> dict[str, Any]:
        loaded = load_checkpoint(config.weights)
        parts = {
            name: {
                "llc_mean": (i + 1) * loaded["llc_mean"],
                "llc_se": 0.1,
                "trusted": name != config.untrusted,
                "flags": ["chains_disagree"] if name == config.untrusted else [],
                "n_params": 96,
                "restrict": f"{name}.*",
            }
            for i, name in enumerate(config.parts)
        }
        several = len(parts) > 1
        return {
            "L0": loaded["L0"], "llc_mean": None if several else loaded["llc_mean"],
            "trusted": all(p["trusted"] for p in parts.values()), "parts": parts,
        }  # fmt: skip
