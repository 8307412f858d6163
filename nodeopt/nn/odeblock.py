"""``ODEBlock``: a neural ODE as a layer, ``x ↦ y(t1)`` with ``dy/dt = func(t, y)``, ``y(t0) = x``."""

from __future__ import annotations

import collections
from typing import Optional, Union

import torch
from torch import nn

from ..gradients import GradientMethod, solve
from ..solvers import RungeKutta, Stats


class ODEBlock(nn.Module):
    """Integrate ``func`` from ``t0`` to ``t1`` (or over given times) as one layer.

    Args:
        func: the vector field ``func(t, y)`` (an ``nn.Module``: its parameters get gradients).
        t1, t0: the integration interval; ``t1`` may be changed during training
            (see :class:`nodeopt.optim.IntegrationTimeOptimizer`).
        rtol, atol, method, options, gradient, compile: passed to :func:`nodeopt.solve`
            (``compile=True``: every step a compiled graph; see :func:`nodeopt.solve`).
        return_all: return the states at all times ``(len(t), ...)`` rather than only the last.

    Attributes:
        stats: the :class:`~nodeopt.Stats` of the last solve.
        solves: the :class:`~nodeopt.Stats` of every solve since :meth:`reset_stats`
            (a model may call the block many times per forward pass; the
            backward counts fill in when the backward pass runs).
        last_times: the times tensor of the last solve; when ``t1`` is being
            optimised it requires grad, so ``last_times.grad`` holds ``dL/dt``
            after ``backward()``.
    """

    def __init__(self, func: nn.Module, t1: float = 1.0, t0: float = 0.0, *, rtol: float = 1e-3,
                 atol: float = 1e-3, method: Union[str, RungeKutta, None] = "dopri5",
                 options: Optional[dict] = None, gradient: Union[str, GradientMethod] = "symplectic",
                 return_all: bool = False, compile: Union[bool, str] = False):
        super().__init__()
        self.func = func
        self.register_buffer("times", torch.tensor([float(t0), float(t1)], dtype=torch.float64))
        self.rtol, self.atol, self.method, self.options = rtol, atol, method, options
        self.gradient = gradient
        self.compile = compile
        self.return_all = return_all
        self.track_time_gradient = False
        self.stats: Optional[Stats] = None
        self.solves: collections.deque = collections.deque(maxlen=100_000)
        self.last_times: Optional[torch.Tensor] = None
        self.last_batch_size = 1

    @property
    def t1(self) -> float:
        return float(self.times[-1])

    @t1.setter
    def t1(self, value: float) -> None:
        if not float(value) > float(self.times[0]):
            raise ValueError(f"t1 must be greater than t0={float(self.times[0])}, got {value}")
        self.times[-1] = float(value)

    def solve_times(self, times: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The times of the next solve: a fresh leaf that requires grad while ``t1`` is being optimised."""
        t = self.times if times is None else torch.as_tensor(times, dtype=torch.float64)
        return t.detach().clone().requires_grad_(self.track_time_gradient and self.training)

    def remember(self, x, t: torch.Tensor) -> None:
        """Keep what the integration-time optimiser reads after backward: the times and the batch size."""
        self.last_times = t
        self.last_batch_size = (x[0] if isinstance(x, tuple) else x).shape[0]

    def forward(self, x, times: Optional[torch.Tensor] = None):
        t = self.solve_times(times)
        sol = solve(self.func, x, t, rtol=self.rtol, atol=self.atol, method=self.method, options=self.options,
                    gradient=self.gradient, compile=self.compile)
        self.stats = sol.stats
        self.solves.append(sol.stats)
        self.remember(x, t)
        values = sol.values
        if self.return_all:
            return values
        return tuple(v[-1] for v in values) if isinstance(values, tuple) else values[-1]

    def reset_stats(self) -> None:
        """Forget the statistics of earlier solves (:attr:`solves`)."""
        self.solves.clear()

    def total_stats(self) -> Stats:
        """The sums of :attr:`solves`: evaluations and steps, forward and backward."""
        total = Stats()
        for s in self.solves:
            for name in ("nfe", "n_steps", "n_rejected", "nfe_backward", "nvjp_backward"):
                setattr(total, name, getattr(total, name) + getattr(s, name))
        return total

    def extra_repr(self) -> str:
        return (f"t=[{float(self.times[0]):g}, {self.t1:g}], method={self.method!r}, gradient={self.gradient!r}, "
                f"rtol={self.rtol}, atol={self.atol}" + (f", compile={self.compile!r}" if self.compile else ""))
