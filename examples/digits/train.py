"""Train the digits MLP with SGD and save its state_dict at log-spaced steps: checkpoints/step_<N>.pt.

python examples/digits/train.py [--steps 6000] [--first 1000] [--checkpoints 8] [--out DIR]

The checkpoints start at step `--first`, once the network is near a minimum: earlier checkpoints are far
from any, where the LLC is not defined and its estimate reads negative (README.md). `--first 0` saves the
whole training, step 0 on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from digits_mlp import make_data, make_model
from torch import nn

HERE = Path(__file__).resolve().parent


def checkpoint_steps(steps: int, count: int, first: int = 0) -> list[int]:
    """`count` steps spaced evenly in log from `first` to `steps` (from step 1, with step 0 added, when
    `first` is 0): stages early in training are short, so the curve needs its points there."""
    if first > 0:
        return np.unique(np.geomspace(first, steps, count).round().astype(int)).tolist()
    return sorted({0, *np.unique(np.geomspace(1, steps, count - 1).round().astype(int)).tolist()})


def train(
    steps: int, count: int, out: Path, first: int = 0, lr: float = 0.1, batch_size: int = 64
) -> list[Path]:
    """Minibatch SGD on cross-entropy; returns the checkpoint files written."""
    torch.manual_seed(0)
    torch.set_num_threads(1)  # a 64-example batch: more threads only wait on each other
    model, (x, y) = make_model(), make_data()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    out.mkdir(parents=True, exist_ok=True)
    save_at, written = set(checkpoint_steps(steps, count, first)), []
    for step in range(steps + 1):
        if step in save_at:
            with torch.no_grad():
                loss = nn.functional.cross_entropy(model(x), y).item()
                accuracy = (model(x).argmax(1) == y).float().mean().item()
            written.append(out / f"step_{step}.pt")
            torch.save(model.state_dict(), written[-1])
            print(f"step {step:6d}  loss {loss:.4f}  accuracy {accuracy:.3f}  -> {written[-1]}")
        if step == steps:
            break
        batch = torch.randint(0, len(x), (batch_size,))
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        optimizer.step()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6000, help="SGD steps")
    parser.add_argument(
        "--first", type=int, default=1000, help="the first checkpoint's step (0: from the start)"
    )
    parser.add_argument("--checkpoints", type=int, default=8, help="checkpoints saved, log-spaced")
    parser.add_argument("--out", type=Path, default=HERE / "checkpoints")
    args = parser.parse_args()
    if not 0 <= args.first <= args.steps:
        parser.error(f"--first ({args.first}) must lie between 0 and --steps ({args.steps})")
    train(args.steps, args.checkpoints, args.out, args.first)


if __name__ == "__main__":
    main()
