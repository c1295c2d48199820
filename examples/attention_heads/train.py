"""Train the attention-only transformer on repeated random sequences (Adam, fresh sequences each step)
and save checkpoints into checkpoints/step_<N>.pt, placed evenly along the training curve so that they
crowd where the loss drops (the induction bump); prints the loss on the LLC's data at each.

    python examples/attention_heads/train.py [--steps 1500] [--checkpoints 6] [--first 350] [--out DIR]

The checkpoints start at step `--first`, once the loss is dropping fast: before, the network is far from
a minimum and the LLC is not defined there (README.md). `--first 0` saves from the start.
"""

from __future__ import annotations

import argparse
import copy
import math
from pathlib import Path

import numpy as np
import torch
from induction import make_data, make_model, sequences
from torch import nn

HERE = Path(__file__).resolve().parent
EVERY = 10  # steps between the snapshots that checkpoints are chosen from
BATCH = 64


def along_the_curve(steps: list[int], losses: list[float], count: int) -> list[int]:
    """`count` of `steps` spaced evenly in arc length along (step, loss), both scaled to [0, 1]: the
    stretch where the loss falls fast gets as many checkpoints as a long plateau."""
    x = np.asarray(steps, float) / max(steps[-1] - steps[0], 1)
    y = np.asarray(losses) / max(max(losses) - min(losses), 1e-12)
    length = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))])
    picked = {int(np.abs(length - target).argmin()) for target in np.linspace(0, length[-1], count)}
    return [steps[i] for i in sorted(picked)]


def train(steps: int, count: int, out: Path, first: int = 0, lr: float = 1e-3) -> list[Path]:
    """Adam on BATCH fresh sequences a step; returns the checkpoint files written."""
    torch.manual_seed(0)
    torch.set_num_threads(1)  # a small model: more threads only wait on each other
    model = make_model()
    tokens, targets = make_data()
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    snapshots: dict[int, tuple[float, dict[str, torch.Tensor]]] = {}
    for step in range(steps + 1):
        if step >= first and (step % EVERY == 0 or step == steps):
            with torch.no_grad():
                loss = nn.functional.cross_entropy(model(tokens).flatten(0, 1), targets.flatten()).item()
            snapshots[step] = (loss, copy.deepcopy(model.state_dict()))
        if step == steps:
            break
        batch, labels = sequences(BATCH, generator)
        loss_t = nn.functional.cross_entropy(model(batch).flatten(0, 1), labels.flatten())
        optimizer.zero_grad()
        loss_t.backward()
        optimizer.step()
    kept = along_the_curve(list(snapshots), [loss for loss, _ in snapshots.values()], count)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for step in kept:
        loss, state = snapshots[step]
        written.append(out / f"step_{step}.pt")
        torch.save(state, written[-1])
        accuracy = math.exp(-loss)
        print(f"step {step:5d}  loss {loss:.4f}  (per-token likelihood {accuracy:.3f})  -> {written[-1]}")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500, help="Adam steps, 64 fresh sequences each")
    parser.add_argument("--checkpoints", type=int, default=6, help="checkpoints saved along the curve")
    parser.add_argument(
        "--first", type=int, default=350, help="no checkpoint before this step (0: from the start)"
    )
    parser.add_argument("--out", type=Path, default=HERE / "checkpoints")
    args = parser.parse_args()
    if not 0 <= args.first <= args.steps:
        parser.error(f"--first ({args.first}) must lie between 0 and --steps ({args.steps})")
    if args.checkpoints < 2:
        parser.error(f"--checkpoints ({args.checkpoints}) must be at least 2: the first and the last")
    train(args.steps, args.checkpoints, args.out, args.first)


if __name__ == "__main__":
    main()
