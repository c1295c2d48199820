"""Train the modular-addition transformer (AdamW, weight decay 1, full batch) and save checkpoints at
log-spaced steps into checkpoints/step_<N>.pt; prints train and test accuracy at each.

    python examples/modular_addition/train.py [--steps 10000] [--checkpoints 20] [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from modular_addition import TRAIN_FRACTION, all_pairs, make_model
from torch import nn

HERE = Path(__file__).resolve().parent


def checkpoint_steps(steps: int, count: int) -> list[int]:
    """Step 0, then `count - 1` steps spaced evenly in log up to `steps`."""
    return sorted({0, *np.unique(np.geomspace(1, steps, count - 1).round().astype(int)).tolist()})


def train(steps: int, count: int, out: Path, lr: float = 1e-2, weight_decay: float = 1.0) -> list[Path]:
    torch.manual_seed(0)
    torch.set_num_threads(1)  # a few hundred sequences a step: more threads only wait on each other
    model = make_model()
    tokens, labels = all_pairs()
    n = int(TRAIN_FRACTION * len(tokens))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    out.mkdir(parents=True, exist_ok=True)
    save_at, written = set(checkpoint_steps(steps, count)), []
    for step in range(steps + 1):
        if step in save_at:
            with torch.no_grad():
                logits = model(tokens)
                loss = nn.functional.cross_entropy(logits[:n], labels[:n]).item()
                right = (logits.argmax(1) == labels).float()
            written.append(out / f"step_{step}.pt")
            torch.save(model.state_dict(), written[-1])
            print(f"step {step:6d}  train loss {loss:.4f}  train acc {right[:n].mean():.3f}  "
                  f"test acc {right[n:].mean():.3f}  -> {written[-1]}", flush=True)  # fmt: skip
        if step == steps:
            break
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(tokens[:n]), labels[:n]).backward()
        optimizer.step()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10000, help="full-batch AdamW steps")
    parser.add_argument("--checkpoints", type=int, default=20, help="checkpoints saved, log-spaced")
    parser.add_argument("--out", type=Path, default=HERE / "checkpoints")
    args = parser.parse_args()
    train(args.steps, args.checkpoints, args.out)


if __name__ == "__main__":
    main()
