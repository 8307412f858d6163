"""``gradient="checkpoint"`` (ACA, Zhuang et al. 2020): per step, re-run it with autograd and backprop it."""

from __future__ import annotations

import functools

import torch

from ..solvers.compiled import resolved, substituted, unpack
from ..solvers.step import rk_step
from ..solvers.tableau import Tableau
from .base import register
from .replay import BackwardContext, StepReplay


@register
class Checkpoint(StepReplay):
    """Adaptive checkpoint adjoint: exact, holding the step states and one step's graph.

    Backward over step ``n``: rebuild the step from ``y_n`` with autograd (all of
    its stages and network uses), then one ``autograd.grad`` pulls ``λ_{n+1}``
    back to ``λ_n`` and the parameters. With ``compile=True`` the re-run and its
    backward are one compiled graph (``torch.func.vjp`` of the step).
    """

    name = "checkpoint"

    def step_backward(self, ctx: BackwardContext, t_first: float, h: float, t_last: float, t: float,
                      y: torch.Tensor, lam: torch.Tensor, stages=None) -> torch.Tensor:
        tab = ctx.tableau  # ACA keeps no stages: it re-runs the step with autograd
        ctx.stats.nvjp_backward += tab.needed_stages
        if ctx.compiled and ctx.param_names is not None:
            return _compiled_step_backward(ctx, t_first, h, t_last, t, y, lam)
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            y1, _ = ctx.stepper_for(h).step(tab.truncated, t_first, t, h, t_last, y)
            grads = torch.autograd.grad(y1, (y,) + ctx.params, lam, allow_unused=True)
        ctx.accumulate(grads[1:])
        return grads[0]


def _rerun_body(field, tableau: Tableau, names: tuple[str, ...]):
    """The vector–Jacobian product of one step, ``(λ_{n+1}) -> (λ_n, dL/dθ)``, as one traceable function."""
    resolved(tableau)

    def backward_step(func, times, y, lam, params):
        t_first, t, h, t_last = unpack(times)

        def step(x, p):
            f = functools.partial(field, substituted(func, names, p))
            return rk_step(f, tableau, t, h, t_last, x, f(t_first, x))[0]

        _, pull = torch.func.vjp(step, y, params)
        return pull(lam)

    return backward_step


def _compiled_step_backward(ctx: BackwardContext, t_first: float, h: float, t_last: float, t: float,
                            y: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    tab = ctx.tableau.truncated
    graph = ctx.graph(("checkpoint", tab), lambda field: _rerun_body(field, tab, ctx.param_names),
                      f"the re-run and backward of one {tab.name} step of func")
    grad_y, grads = graph(ctx.compile_log, ctx.func, ctx.stepper.times(t_first, t, h, t_last), y, lam, ctx.params)
    ctx.f.nfe += tab.stages  # each evaluation is differentiated: counted as a VJP, not as a backward evaluation
    ctx.accumulate(grads)
    return grad_y
