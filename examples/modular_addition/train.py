"""Train the modular-addition transformer (AdamW, weight decay 1, full batch) and save checkpoints at
log-spaced steps into checkpoints/step_<N>.pt; prints train and test accuracy at each.

    python examples/modular_addition/train.py [--steps 10000] [--first 300] [--checkpoints 8] [--out DIR]

The checkpoints start at step `--first`, once the training set is memorized and the network sits near a
minimum: before that the LLC is not defined there (README.md). `--first 0` saves the whole training.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from modular_addition import TRAIN_FRACTION, all_pairs, make_model
from torch import nn

HERE = Path(__file__).resolve().parent
SETTLED = 0.01  # the training loss under which a checkpoint counts as at a minimum (memorized: ~0.01)


def checkpoint_steps(steps: int, count: int, first: int = 0) -> list[int]:
    """`count` steps spaced evenly in log from `first` to `steps` (from step 1, with step 0 added, when
    `first` is 0)."""
    if first > 0:
        return np.unique(np.geomspace(first, steps, count).round().astype(int)).tolist()
    return sorted({0, *np.unique(np.geomspace(1, steps, count - 1).round().astype(int)).tolist()})


def train(
    steps: int, count: int, out: Path, first: int = 0, lr: float = 1e-2, weight_decay: float = 1.0
) -> list[Path]:
    """Full-batch AdamW; returns the checkpoint files written. From `first` > 0 on, a checkpoint due while
    the training loss is above SETTLED waits for it to come back down: AdamW at this learning rate leaves
    its minimum for ~150 steps every ~1400 (the loss spikes to ~0.4), and the LLC is defined at a minimum."""
    torch.manual_seed(0)
    torch.set_num_threads(1)  # a few hundred sequences a step: more threads only wait on each other
    model = make_model()
    tokens, labels = all_pairs()
    n = int(TRAIN_FRACTION * len(tokens))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    out.mkdir(parents=True, exist_ok=True)
    due, written = checkpoint_steps(steps, count, first), []
    for step in range(steps + 1):
        loss = nn.functional.cross_entropy(model(tokens[:n]), labels[:n])
        settled = first == 0 or loss.item() < SETTLED or step == steps
        if due and step >= due[0] and settled:
            due = [later for later in due if later > step]
            with torch.no_grad():
                right = (model(tokens).argmax(1) == labels).float()
            written.append(out / f"step_{step}.pt")
            torch.save(model.state_dict(), written[-1])
            print(f"step {step:6d}  train loss {loss.item():.4f}  train acc {right[:n].mean():.3f}  "
                  f"test acc {right[n:].mean():.3f}  -> {written[-1]}", flush=True)  # fmt: skip
        if step == steps:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10000, help="full-batch AdamW steps")
    parser.add_argument(
        "--first", type=int, default=300, help="the first checkpoint's step (0: from the start)"
    )
    parser.add_argument("--checkpoints", type=int, default=8, help="checkpoints saved, log-spaced")
    parser.add_argument("--out", type=Path, default=HERE / "checkpoints")
    args = parser.parse_args()
    if not 0 <= args.first <= args.steps:
        parser.error(f"--first ({args.first}) must lie between 0 and --steps ({args.steps})")
    train(args.steps, args.checkpoints, args.out, args.first)


if __name__ == "__main__":
    main()
