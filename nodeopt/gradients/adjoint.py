"""``gradient="adjoint"``: the continuous adjoint method (Chen, Rubanova, Bettencourt & Duvenaud, 2018).

The forward solve keeps nothing but its outputs. The backward pass solves the
augmented system backward in time, from each output time to the previous one,

    dy/dt = f(t, y),    dλ/dt = -(∂f/∂y)ᵀ λ,    dg/dt = -(∂f/∂θ)ᵀ λ,

with ``λ(t_N) = dL/dy_N`` (plus ``dL/dy_i`` added at each output time) and
``g(t_N) = 0``; then ``λ(t_0) = dL/dy_0`` and ``g(t_0) = dL/dθ``. Memory holds
one network use, but the gradient is only as accurate as the backward solve
(and the re-solved ``y`` drifts from the forward one), and it is slower.
"""

from __future__ import annotations

import weakref
from typing import Optional, Union

import torch

from ..solvers.compiled import parameter_names, substituted, traced_field
from ..solvers.methods import RungeKutta
from ..solvers.problem import Problem, make_problem
from ..solvers.solution import Stats
from ..solvers.state import rms_norm
from . import observe
from .base import GradientMethod, register


@register
class Adjoint(GradientMethod):
    """The continuous adjoint, with its own tolerances and solver for the backward solve.

    Args:
        rtol, atol: tolerances of the backward solve (default: the forward's).
        method: solver of the backward solve (default: the forward's).
        options: its options (default: the forward's when the method is the
            same). ``options["norm"] = "seminorm"`` leaves the parameter
            gradients out of the error norm (Kidger, Chen & Lyons 2021), which
            usually saves many backward steps.
    """

    name = "adjoint"
    exact = False

    def __init__(self, rtol: Optional[float] = None, atol: Optional[float] = None,
                 method: Union[str, RungeKutta, None] = None, options: Optional[dict] = None):
        self.rtol, self.atol, self.method, self.options = rtol, atol, method, options

    def solve(self, problem: Problem, params: tuple[torch.Tensor, ...], stats: Stats) -> torch.Tensor:
        return _AdjointFunction.apply(self, problem, params, stats, problem.y0, *params)

    def backward_problem_args(self, problem: Problem) -> dict:
        method = self.method if self.method is not None else problem.method
        options = self.options
        if options is None:
            same = method == problem.method or method == problem.method.name
            options = dict(problem.raw_options) if same else {}
        options = dict(options)
        if options.get("norm") == "seminorm":
            options["norm"] = _seminorm
        return dict(rtol=problem.rtol if self.rtol is None else self.rtol,
                    atol=problem.atol if self.atol is None else self.atol, method=method, options=options)


def _seminorm(scaled: tuple[torch.Tensor, ...]) -> float:
    """The error norm over the state and its adjoint only, ignoring the parameter gradients."""
    return max(rms_norm(scaled[0]), rms_norm(scaled[1]))


class _AugmentedDynamics:
    """``(y, λ, g...) -> (f, -Jᵀλ, -(∂f/∂θ)ᵀλ...)`` in the forward problem's loop time."""

    def __init__(self, problem: Problem, params: tuple[torch.Tensor, ...]):
        self.f = problem.dynamics
        self.sign = problem.sign
        self.params = params

    def __call__(self, s: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        y, lam = state[0], state[1]
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            # Each evaluation of the backward solve is one sample of the trajectory,
            # its cotangent is the adjoint state itself.
            with observe.announce(self.sign * float(s), 1.0, 1.0):
                fy = self.f(float(s), y)
            grads = torch.autograd.grad(fy, (y,) + self.params, -lam, allow_unused=True)
        vjps = tuple(torch.zeros_like(p) if g is None else g for g, p in zip(grads[1:], self.params))
        dy = fy.detach()
        return (dy, grads[0] if grads[0] is not None else torch.zeros_like(lam)) + vjps


class _TracedAugmented:
    """The augmented field of a compiled backward solve: ``torch.func.vjp`` where the eager one has
    ``autograd.grad``, so that TorchDynamo can trace it into the backward solve's step graph.

    One per forward field and configuration (:func:`_traced_augmented`), so that the backward
    solves of every iteration reuse its graphs; it holds the field weakly, so that those cached
    graphs do not keep the field alive.
    """

    def __init__(self, problem: Problem, names: tuple[str, ...]):
        self.func = weakref.ref(problem.func)
        self.field = traced_field(problem.spec, problem.sign, problem.dynamics.time_dtype)
        self.names = names

    def __call__(self, s: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        func, names = self.func(), self.names
        y, lam = state[0], state[1]
        params = tuple(func.get_parameter(name) for name in names)

        fy, pull = torch.func.vjp(lambda x, p: self.field(substituted(func, names, p), s, x), y, params)
        g_y, g_p = pull(-lam)
        return (fy, g_y) + tuple(g_p)


_AUGMENTED: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()


def _traced_augmented(problem: Problem, params: tuple[torch.Tensor, ...]) -> Optional[_TracedAugmented]:
    """The cached traced augmented field of ``problem``'s field, or None where it cannot serve
    (the field is no ``nn.Module``, or ``params`` are not all its parameters)."""
    func, names = problem.func, parameter_names(problem.func, params)
    if names is None:
        return None
    key = (names, problem.spec.is_tuple, problem.spec.shapes if problem.spec.is_tuple else None, problem.sign,
           problem.dynamics.time_dtype)
    table = _AUGMENTED.setdefault(func, {})
    if key not in table:
        table[key] = _TracedAugmented(problem, names)
    return table[key]


class _AdjointFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, method, problem, params, stats, y0, *param_values):
        result = problem.run(y0.detach())
        stats.n_steps, stats.n_rejected = result.n_steps, result.n_rejected
        ctx.method, ctx.problem, ctx.params, ctx.stats = method, problem, params, stats
        ys = torch.stack(result.outputs)
        ctx.save_for_backward(ys)
        return ys

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_ys):
        (ys,) = ctx.saved_tensors
        problem, params, stats = ctx.problem, ctx.params, ctx.stats
        traced = _traced_augmented(problem, params) if problem.compile and not observe.is_listening() else None
        aug, compile = (traced, problem.compile) if traced is not None else (_AugmentedDynamics(problem, params), None)
        args = ctx.method.backward_problem_args(problem)
        if compile is None or args["options"].get("norm") is not None:
            args["options"].pop("sync_every", None)  # eager, or a norm of the user's: the host decides each step
        times = problem.times
        lam = grad_ys[-1]
        grads = tuple(torch.zeros_like(p) for p in params)
        for i in range(len(times) - 1, 0, -1):
            state = (ys[i], lam) + grads
            span = torch.tensor([times[i], times[i - 1]], dtype=torch.float64)
            back = make_problem(aug, state, span, args["rtol"], args["atol"], args["method"], args["options"],
                                compile=compile)
            result = back.run()
            stats.nvjp_backward += back.dynamics.nfe
            problem.compile_log.add(back.compile_log)
            end = back.spec.unflatten(result.outputs[-1])
            lam = end[1] + grad_ys[i - 1]
            grads = tuple(end[2:])
        problem.compile_log.report(stats)
        return (None, None, None, None, lam, *grads)
