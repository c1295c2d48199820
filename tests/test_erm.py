"""ERM: w* must be the empirical minimum, or the LLC estimate is biased downwards."""

import torch

from llc.config import build_config
from llc.problems import build_problem
from llc.run.erm import train


def test_the_linear_problem_reaches_the_least_squares_minimum_where_adam_alone_falls_short():
    config = build_config("quick", {"problem": "linear", "widths": [4, 3], "sampler": "sgld"})
    problem = build_problem(config)
    w_star, loss0 = train(problem, config.erm_steps, config.erm_lr, config.seed)
    exact = torch.linalg.lstsq(problem.x, problem.y).solution
    best = float((problem.x @ exact - problem.y).square().sum(dim=1).mean())
    assert abs(loss0 - best) < 1e-4 * best
    # Its gradient at w* vanishes: a true stationary point.
    _, grad = problem.model.loss_and_grad(w_star.unsqueeze(0), problem.x, problem.y)
    assert grad.abs().max() < 1e-4
