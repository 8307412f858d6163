"""``gradient="backprop"``: autograd straight through every stage of every step."""

from __future__ import annotations

import torch

from ..solvers.problem import Problem
from ..solvers.solution import Stats
from . import observe
from .base import GradientMethod, register
from .onecheckpoint import OneCheckpoint


@register
class Backprop(GradientMethod):
    """Differentiate the discrete solve by ordinary autograd.

    Exact for the discrete map (step sizes are constants of the solve), and the
    fastest backward pass, but it holds every network use of the forward pass
    in memory: memory grows with (steps × stages × network size).

    Args:
        land: end a step on every output time instead of using dense output, so
            that the steps are those the replaying methods take.
    """

    name = "backprop"

    def __init__(self, land: bool = False):
        self.land = land

    def solve(self, problem: Problem, params: tuple[torch.Tensor, ...], stats: Stats) -> torch.Tensor:
        if observe.is_listening():
            # Announcing stages needs each step's size before its first stage is
            # evaluated; the one-checkpoint replay knows it and differentiates the
            # same discrete map, so the gradient is unchanged.
            return OneCheckpoint().solve(problem, params, stats)

        def count(output: torch.Tensor, evaluations: int) -> None:
            def hook(grad: torch.Tensor) -> None:
                stats.nvjp_backward += evaluations
            output.register_hook(hook)

        problem.dynamics.on_graph_output = count
        try:
            result = problem.run(land=self.land)
        finally:
            problem.dynamics.on_graph_output = None
        stats.n_steps, stats.n_rejected = result.n_steps, result.n_rejected
        return torch.stack(result.outputs)
