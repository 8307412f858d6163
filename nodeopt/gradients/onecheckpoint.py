"""``gradient="onecheckpoint"``: keep only ``y0``, re-run the whole solve with autograd, backprop it."""

from __future__ import annotations

import torch

from ..solvers.loop import Trajectory
from .base import register
from .replay import BackwardContext, Replay


@register
class OneCheckpoint(Replay):
    """One checkpoint at the initial state: exact, with backprop's memory but only during backward.

    The forward solve keeps no graph; the backward pass replays the recorded
    steps (same step sizes) with autograd and differentiates the replay.
    """

    name = "onecheckpoint"

    def backward(self, ctx: BackwardContext, traj: Trajectory, grad_outputs: torch.Tensor) -> torch.Tensor:
        tab = ctx.tableau.truncated
        with torch.enable_grad():
            y0 = traj.ys[0].detach().requires_grad_(True) if len(traj) else None
            if y0 is None:
                return grad_outputs[0]
            outputs, y = [y0], y0
            ends = set(traj.outputs)
            for n in range(len(traj)):
                t_first, h, t_last, t, _ = traj.step(n)
                y, _ = ctx.stepper_for(h).step(tab, t_first, t, h, t_last, y)
                if n + 1 in ends:
                    outputs.append(y)
            ctx.stats.nvjp_backward += len(traj) * tab.stages
            grads = torch.autograd.grad(torch.stack(outputs), (y0,) + ctx.params, grad_outputs, allow_unused=True)
        ctx.accumulate(grads[1:])
        return grads[0]
