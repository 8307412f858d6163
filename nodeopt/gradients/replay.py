"""Shared machinery of the gradient methods that replay the recorded forward steps.

The forward solve runs without a graph, lands on every output time, and records
each accepted step ``(t_n, h_n, y_n)``. The backward pass walks the steps in
reverse, carrying the cotangent ``λ`` of the state, adding the output
cotangents where outputs were taken, and asks the method how to pull ``λ``
back through one step. Step sizes are the recorded constants, so the result is
the exact gradient of the discrete map the forward pass computed. A method may
record into a trajectory that keeps only some step states (``states.py``); the
walk then recomputes the others from the recorded steps, bit for bit.
"""

from __future__ import annotations

import functools
from abc import abstractmethod
from typing import Callable, Optional

import torch

from ..solvers.compiled import Graph, graph_for, parameter_names, traced_field
from ..solvers.loop import Trajectory
from ..solvers.problem import Problem
from ..solvers.solution import Stats
from ..solvers.step import Stepper
from . import observe
from .base import GradientMethod
from .states import StateWalk


class BackwardContext:
    """What a step's backward needs: the vector field, tableau, parameters and counters."""

    def __init__(self, problem: Problem, params: tuple[torch.Tensor, ...], stats: Stats):
        self.problem = problem
        self.f = problem.dynamics
        self.sign = problem.sign
        # With a listener, evaluations that will be differentiated are announced.
        self.announcer = StageAnnouncer(problem.dynamics, problem.method.tableau, problem.sign) \
            if observe.is_listening() else None
        self.tableau = problem.method.tableau
        self.stepper = problem.stepper
        self.compile_log = problem.compile_log
        self.func = problem.func
        self.params = params
        self.stats = stats
        self.param_grads: list[Optional[torch.Tensor]] = [None] * len(params)
        self.trajectory: Optional[Trajectory] = None  # set by StepReplay.backward while it walks
        self.walk: Optional[StateWalk] = None

    @property
    def compiled(self) -> bool:
        """Whether steps are replayed as compiled graphs (not while stages are announced: eagerly then)."""
        return self.stepper.compiled and self.announcer is None

    @functools.cached_property
    def param_names(self) -> Optional[tuple[str, ...]]:
        """The names of ``params`` in ``func`` (see :func:`~nodeopt.solvers.compiled.parameter_names`)."""
        return parameter_names(self.func, self.params)

    def graph(self, key: tuple, build: Callable[[Callable], Callable], what: str) -> Graph:
        """The compiled graph of a step backward: ``build(field)``, with ``field`` the solve's traced field,
        compiled once per field and ``key`` (plus the state's structure and the compile mode)."""
        dyn, stepper = self.f, self.stepper
        return graph_for(self.func, key + (self.param_names,) + stepper.key,
                         lambda: build(traced_field(dyn.spec, dyn.sign, dyn.time_dtype)), stepper.mode, what)

    def stepper_for(self, h: float) -> Stepper:
        """What replays a step of size ``h``: the solve's stepper, or an eager one announcing stages when observed."""
        return self.stepper if self.announcer is None else Stepper(self.announcer.start(h))

    def advance(self, traj: Trajectory, n: int, y: torch.Tensor) -> torch.Tensor:
        """``y_{n+1}`` from ``y_n``: recorded step ``n`` again, without a graph, with the forward loop's ops.

        The first stage is evaluated afresh at the step's recorded first-stage time (what
        a first-same-as-last tableau reused was ``f`` at that time and state), so the
        result is the forward pass's ``y_{n+1}`` to the bit.
        """
        t_first, h, t_last, t, _ = traj.step(n)
        y1, _ = self.stepper.step(self.tableau.truncated, t_first, t, h, t_last, y)
        return y1

    def vjp(self, t: float, y: torch.Tensor, v: torch.Tensor, hb: float = 0.0) -> torch.Tensor:
        """``(∂f/∂y)ᵀ v`` at ``(t, y)``, accumulating ``(∂f/∂θ)ᵀ v`` into the parameter gradients.

        One network use is alive only for the duration of this call. ``hb`` is the
        stage's ``h·b_i``, announced to listeners (see ``observe``) when non-zero.
        """
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            with observe.announce(self.sign * t, abs(hb), hb):
                out = self.f(t, y)
            grads = torch.autograd.grad(out, (y,) + self.params, v, allow_unused=True)
        self.stats.nvjp_backward += 1
        self.accumulate(grads[1:])
        return grads[0] if grads[0] is not None else torch.zeros_like(y)

    def accumulate(self, grads) -> None:
        for i, g in enumerate(grads):
            if g is not None:
                if self.param_grads[i] is None:
                    self.param_grads[i] = g.clone()  # owned: later steps add into it in place
                else:
                    self.param_grads[i].add_(g)


class Replay(GradientMethod):
    """A gradient method whose forward solve records its steps and whose backward replays them."""

    def solve(self, problem: Problem, params: tuple[torch.Tensor, ...], stats: Stats) -> torch.Tensor:
        return _Replay.apply(self, problem, params, stats, problem.y0, *params)

    def stage_store(self, problem: Problem):
        """What the forward pass keeps of each step's stages (a ``loop.StageStore``), or None: nothing."""
        return None

    def trajectory(self, problem: Problem, params: tuple[torch.Tensor, ...], stats: Stats) -> Trajectory:
        """A fresh trajectory for one forward solve to record into (a subclass may keep only some states)."""
        return Trajectory()

    def recorded(self, traj: Trajectory, stats: Stats) -> None:
        """Called once the forward solve has recorded ``traj``: a method may report what it kept in ``stats``."""

    @abstractmethod
    def backward(self, ctx: BackwardContext, traj: Trajectory, grad_outputs: torch.Tensor) -> torch.Tensor:
        """Return ``dL/dy0`` given the output cotangents; add the parameter gradients to ``ctx``."""


class StageAnnouncer:
    """The loop-time field, announcing each call as stage ``i`` of a step (see ``observe``).

    ``rk_step`` evaluates the stages in order after the caller has evaluated
    the first, so the ``i``-th call of a step is stage ``i``. Stage ``i`` of a
    step of size ``h`` has quadrature weight ``h·b_i``, and the cotangent that
    reaches its output is ``h·b_i`` times the adjoint state (to first order).
    """

    def __init__(self, f, tableau, sign: float):
        self.f, self.b, self.sign = f, tableau.b, sign
        self.h, self.calls = 0.0, 0

    def start(self, h: float) -> "StageAnnouncer":
        self.h, self.calls = h, 0
        return self

    def __call__(self, t: float, y: torch.Tensor) -> torch.Tensor:
        i, self.calls = self.calls, self.calls + 1
        hb = self.h * self.b[i] if i < len(self.b) else 0.0
        with observe.announce(self.sign * t, abs(hb), hb):
            return self.f(t, y)


class StepReplay(Replay):
    """A replaying method that pulls the cotangent back one recorded step at a time."""

    def backward(self, ctx: BackwardContext, traj: Trajectory, grad_outputs: torch.Tensor) -> torch.Tensor:
        """Walk the steps in reverse; returns ``dL/dy0`` and fills ``ctx.param_grads``.

        ``traj.outputs[k]`` is the step count at which output ``k + 1`` was taken.
        """
        lam = grad_outputs[0]
        if len(traj) == 0:
            return lam
        lam = grad_outputs[-1]
        pending = len(traj.outputs) - 2  # next output (index into traj.outputs) to inject
        ctx.trajectory = traj
        ctx.walk = StateWalk(traj, lambda n, y: ctx.advance(traj, n, y))
        for n, y in ctx.walk:  # every y_n, recomputed where the forward pass dropped it
            if pending >= 0 and traj.outputs[pending] == n + 1:
                lam = lam + grad_outputs[pending + 1]
                pending -= 1
            stages, traj.stages[n] = traj.stages[n], None  # kept by the forward pass (or None); freed once used
            t_first, h, t_last, t, _ = traj.step(n)
            lam = self.step_backward(ctx, t_first, h, t_last, t, y, lam, stages=stages)
        return lam + grad_outputs[0]

    @abstractmethod
    def step_backward(self, ctx: BackwardContext, t_first: float, h: float, t_last: float, t: float,
                      y: torch.Tensor, lam: torch.Tensor, stages: Optional[list] = None) -> torch.Tensor:
        """Given ``λ_{n+1} = dL/dy_{n+1}``, return ``λ_n`` and add the parameter gradients of step ``n``.

        The step went from ``(t, y)`` with size ``h``; its first stage was evaluated at ``t_first``
        and its stages with ``c_i = 1`` at ``t_last`` (see ``Trajectory.step``). ``stages`` are the
        stage derivatives the forward pass kept for the step (see :meth:`Replay.stage_store`), or None.
        """


class _Replay(torch.autograd.Function):
    @staticmethod
    def forward(ctx, method, problem, params, stats, y0, *param_values):
        traj = method.trajectory(problem, params, stats)
        result = problem.run(y0.detach(), record=traj, stage_store=method.stage_store(problem))
        stats.n_steps, stats.n_rejected = result.n_steps, result.n_rejected
        method.recorded(result.trajectory, stats)
        ctx.method, ctx.problem, ctx.params, ctx.stats = method, problem, params, stats
        ctx.trajectory = result.trajectory
        return torch.stack(result.outputs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_ys):
        problem, stats = ctx.problem, ctx.stats
        nfe_before = problem.dynamics.nfe
        nvjp_before = stats.nvjp_backward
        bctx = BackwardContext(problem, ctx.params, stats)
        with torch.no_grad():
            grad_y0 = ctx.method.backward(bctx, ctx.trajectory, grad_ys)
        stats.nfe_backward += problem.dynamics.nfe - nfe_before - (stats.nvjp_backward - nvjp_before)
        problem.compile_log.report(stats)
        param_grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(bctx.param_grads, ctx.params)]
        return (None, None, None, None, grad_y0, *param_grads)
