"""Any step-replaying gradient method, holding only some of the step states (for very long solves)."""

from __future__ import annotations

from typing import Optional, Union

import torch

from ..solvers.problem import Problem
from ..solvers.solution import Stats
from .base import get_gradient
from .replay import BackwardContext, StepReplay
from .states import ThinnedTrajectory


class CheckpointedStates(StepReplay):
    """``method`` with at most ``states`` step states held at once, the others recomputed.

    The forward pass keeps every ``stride``-th state ``y_n``, doubling the stride whenever
    more than allowed are kept (the number of steps is known only at the end); the backward
    pass re-runs each segment from its kept state with the recorded step sizes, which gives
    the dropped states bit for bit, and then pulls the cotangent back through the segment's
    steps with ``method`` as usual (see ``states.py``). The gradient is therefore exactly
    that of ``method``; the price is about one more forward solve without a graph (more
    when ``states`` is below about ``2·sqrt(steps)``).

    Args:
        method: the step-replaying method that does each step's backward: ``"symplectic"``
            (default), ``"checkpoint"``, or such an object (e.g.
            ``SymplecticAdjoint(store_stages=True)``).
        states: the most step states (each the size of ``y0``) to hold at once, ≥ 1.

    Raises:
        ValueError: for a ``method`` that does not replay steps, or ``states`` below 1.
    """

    name = "checkpointed-states"

    def __init__(self, method: Union[str, StepReplay] = "symplectic", states: int = 64):
        inner = get_gradient(method)
        if not isinstance(inner, StepReplay) or isinstance(inner, CheckpointedStates):
            raise ValueError(f"method={method!r} does not pull the gradient back one recorded step at a time; "
                             f"use 'symplectic', 'checkpoint' or such an object")
        if isinstance(states, bool) or not isinstance(states, int) or states < 1:
            raise ValueError(f"states={states!r} must be a whole number ≥ 1 (the most step states held at once), "
                             f"e.g. states=64")
        self.method, self.states = inner, states

    def stage_store(self, problem: Problem):
        return self.method.stage_store(problem)

    def trajectory(self, problem: Problem, params: tuple[torch.Tensor, ...], stats: Stats) -> ThinnedTrajectory:
        return ThinnedTrajectory(capacity=self.states)

    def step_backward(self, ctx: BackwardContext, t_first: float, h: float, t_last: float, t: float,
                      y: torch.Tensor, lam: torch.Tensor, stages: Optional[list] = None) -> torch.Tensor:
        return self.method.step_backward(ctx, t_first, h, t_last, t, y, lam, stages=stages)

    def __repr__(self) -> str:
        return f"CheckpointedStates({self.method!r}, states={self.states})"
