"""The public entry points: ``solve`` (returns a Solution) and ``odeint`` (returns the values)."""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from ..solvers.methods import RungeKutta
from ..solvers.compiled import compile_mode
from ..solvers.problem import Problem, make_problem
from ..solvers.solution import Solution, Stats
from . import observe
from .base import GradientMethod, get_gradient
from .timegrad import attach_initial_time, attach_output_times


def solve(func: Callable, y0, t, *, rtol=1e-7, atol=1e-9, method: Union[str, RungeKutta, None] = None,
          options: Optional[dict] = None, gradient: Union[str, GradientMethod, None] = "backprop",
          adjoint_params=None, compile: Union[bool, str] = False) -> Solution:
    """Solve ``dy/dt = func(t, y)``, ``y(t[0]) = y0``, at the times ``t``; returns a :class:`Solution`.

    Args:
        func: the vector field, ``func(t, y) -> dy/dt`` with ``y`` shaped like ``y0``;
            ``t`` is a scalar tensor. Usually an ``nn.Module``.
        y0: initial state, a floating tensor or a tuple of them (e.g. ``(z, logp)``).
        t: 1-D strictly increasing or strictly decreasing output times; ``t[0]`` is
            the start. Gradients reach ``t`` when ``t.requires_grad``.
        rtol, atol: relative and absolute tolerances of adaptive methods (a float, or
            one per component of a tuple state).
        method: a solver name (``"dopri5"`` by default, ``"rk4"``, ...) or a
            :class:`~nodeopt.solvers.RungeKutta` object.
        options: torchdiffeq's solver options (adaptive: ``first_step``,
            ``max_num_steps``, ``step_t``, ``jump_t``, ``dtype``, ``norm``, ``safety``,
            ``ifactor``, ``dfactor``, ``controller``; fixed: ``step_size``,
            ``grid_constructor``, ``dtype``). Unknown keys raise. With ``compile=``, an
            adaptive solve also takes ``sync_every=K``: accept/reject and the next step
            size are decided inside the compiled step, and the host reads the device once
            every K steps at most (same steps and results; see ``nodeopt.solvers.device_loop``).
        gradient: how the backward pass is computed: a name or a
            :class:`~nodeopt.gradients.GradientMethod`.
        adjoint_params: the parameters gradients must reach (default: those of
            ``func`` when it is an ``nn.Module``).
        compile: ``True`` (or a torch.compile mode such as ``"reduce-overhead"``, which adds
            CUDA graphs on a GPU): each step, all its stages, combinations and error
            norm, runs as one compiled graph, and so does each gradient method's per-step
            backward replay (see ``nodeopt.solvers.compiled``). The first solve compiles
            (``Solution.stats.compile_seconds``); later solves of the same field reuse the
            graphs. Results equal the eager solve's to rounding. ``func`` must be
            traceable by TorchDynamo in one graph, else a ``RuntimeError`` names the
            eager fallback (``compile=False``). While someone listens to the backward
            pass (SNOpt's curvature capture, ``observe.listening()``), the solve runs
            eagerly: the listener's hooks read Python state no graph can hold.

    Returns:
        A :class:`Solution` whose ``values`` have shape ``(len(t), *y0.shape)``.

    Raises:
        TypeError, ValueError: for bad input, naming the argument and the fix.
        RuntimeError: when the solve fails (step size underflow, too many steps,
            NaN or inf from ``func``), or ``func`` cannot be compiled with ``compile=True``.
    """
    if observe.is_listening() and compile_mode(compile):  # eager while listening: one step at a time
        compile, options = False, {k: v for k, v in (options or {}).items() if k != "sync_every"}
    problem = make_problem(func, y0, t, rtol, atol, method, options, compile=compile)
    grad = get_gradient(gradient)
    params = _params(func, adjoint_params)
    stats = Stats(strategy=grad.name)
    if problem.t.requires_grad and torch.is_grad_enabled():
        ys = _solve_with_time_gradient(problem, grad, params, stats)
    else:
        ys = grad.solve(problem, params, stats)
    stats.nfe = problem.dynamics.nfe
    problem.compile_log.report(stats)
    return Solution(problem.spec.unflatten_stack(ys), problem.t, stats)


def odeint(func: Callable, y0, t, *, rtol=1e-7, atol=1e-9, method: Union[str, RungeKutta, None] = None,
           options: Optional[dict] = None, gradient: Union[str, GradientMethod, None] = "backprop",
           adjoint_params=None, compile: Union[bool, str] = False):
    """torchdiffeq's ``odeint``, plus ``gradient=``: returns the values ``(len(t), *y0.shape)``.

    Code written for torchdiffeq runs unchanged after swapping the import. See
    :func:`solve` for the arguments.
    """
    return solve(func, y0, t, rtol=rtol, atol=atol, method=method, options=options, gradient=gradient,
                 adjoint_params=adjoint_params, compile=compile).values


def _params(func, adjoint_params) -> tuple[torch.Tensor, ...]:
    if adjoint_params is None:
        params = func.parameters() if isinstance(func, torch.nn.Module) else ()
    else:
        params = adjoint_params
    return tuple(p for p in params if isinstance(p, torch.Tensor) and p.requires_grad)


def _solve_with_time_gradient(problem: Problem, grad: GradientMethod, params, stats: Stats) -> torch.Tensor:
    """Solve, then attach ``dL/dt`` (see ``timegrad``); costs one evaluation per output time."""
    dyn, sign = problem.dynamics, problem.sign
    y0 = problem.y0
    with torch.no_grad():
        f0 = sign * dyn(problem.times[0], y0)
    problem.y0 = attach_initial_time(y0, problem.t, f0)
    ys = grad.solve(problem, params, stats)
    problem.y0 = y0
    with torch.no_grad():
        fs = torch.stack([f0] + [sign * dyn(s, y) for s, y in zip(problem.times[1:], ys[1:])])
    ys = torch.cat([y0.unsqueeze(0), ys[1:]])
    return attach_output_times(ys, problem.t, fs)
