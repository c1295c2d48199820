"""Problems: data, the student network and, where it is known, the true learning coefficient."""

from llc.problems.build import Problem, build_problem

__all__ = ["Problem", "build_problem"]
