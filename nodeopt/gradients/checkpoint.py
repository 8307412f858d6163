"""``gradient="checkpoint"`` (ACA, Zhuang et al. 2020): per step, re-run it with autograd and backprop it."""

from __future__ import annotations

import torch

from .base import register
from .replay import BackwardContext, StepReplay


@register
class Checkpoint(StepReplay):
    """Adaptive checkpoint adjoint: exact, holding the step states and one step's graph.

    Backward over step ``n``: rebuild the step from ``y_n`` with autograd (all of
    its stages and network uses), then one ``autograd.grad`` pulls ``λ_{n+1}``
    back to ``λ_n`` and the parameters.
    """

    name = "checkpoint"

    def step_backward(self, ctx: BackwardContext, t_first: float, h: float, t_last: float, t: float,
                      y: torch.Tensor, lam: torch.Tensor, stages=None) -> torch.Tensor:
        tab = ctx.tableau  # ACA keeps no stages: it re-runs the step with autograd
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            y1, _ = ctx.stepper_for(h).step(tab.truncated, t_first, t, h, t_last, y)
            grads = torch.autograd.grad(y1, (y,) + ctx.params, lam, allow_unused=True)
        ctx.stats.nvjp_backward += tab.needed_stages
        ctx.accumulate(grads[1:])
        return grads[0]
