"""Adaptive step-size control: the error norm, the controllers, the initial step.

A step of size ``h`` with error estimate ``err`` is accepted when

    r = ‖ err / (atol + rtol · max(|y_n|, |y_{n+1}|)) ‖_RMS  ≤ 1

(for a tuple state, the largest RMS over its components, as torchdiffeq does).
The next step is ``h · factor(r)``. Step sizes are constants of the solve:
they are computed from detached values and never carry gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch

from .state import StateSpec, rms, rms_norm


class ErrorNorm:
    """``r = norm(err / (atol + rtol · max(|y0|, |y1|)))`` as a Python float.

    Args:
        spec: the state structure (tuple states take the max over components).
        rtol, atol: tolerances, floats or flat tensors (one value per element).
        norm: optional user norm, called on the scaled error in the user's
            structure (a tensor or a tuple of tensors) and returning a scalar.
    """

    def __init__(self, spec: StateSpec, rtol, atol, norm: Optional[Callable] = None):
        self.spec = spec
        self.rtol = rtol
        self.atol = atol
        self.norm = norm

    def scaled(self, y0: torch.Tensor, y1: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
        """``err / (atol + rtol · max(|y0|, |y1|))``, in place on ``err``'s own buffer."""
        tol = torch.maximum(y0.abs(), y1.abs()).mul_(self.rtol).add_(self.atol)
        return err.div_(tol)

    def __call__(self, y0: torch.Tensor, y1: torch.Tensor, err: torch.Tensor) -> float:
        """The error ratio of a step; consumes ``err`` (a fresh tensor made without a graph)."""
        with torch.no_grad():
            return self.reduce(self.scaled(y0, y1, err))

    def ratio(self, y0: torch.Tensor, y1: torch.Tensor, err: torch.Tensor) -> torch.Tensor:
        """The error ratio as a 0-d tensor, computed where the state lives (the built-in norm only).

        What a compiled step returns, so that the step's graph ends with the number the
        controller needs; :meth:`__call__` is the same number as a Python float.
        """
        x = self.scaled(y0, y1, err)
        if not self.spec.is_tuple:
            return rms(x)
        return torch.stack([rms(p) for p in self.spec.segments(x)]).amax()

    def reduce(self, x: torch.Tensor) -> float:
        """The norm of an already scaled flat tensor."""
        if self.norm is not None:
            return float(self.norm(self.spec.unflatten(x)))
        if not self.spec.is_tuple:
            return rms_norm(x)
        return max(rms_norm(p) for p in self.spec.segments(x))

    def initial_scale(self, y0: torch.Tensor) -> torch.Tensor:
        """``atol + rtol |y0|``, the scale of Hairer's starting-step estimate."""
        return y0.abs().mul_(self.rtol).add_(self.atol)


@dataclass(frozen=True)
class PIController:
    """Proportional–integral step-size control (Gustafsson; Hairer & Wanner's DOPRI5 variant).

    On an accepted step with error ratio ``r`` (previous accepted ``r_prev``),
    with ``k`` the controller order (``min(p, p̂) + 1``):

        factor = safety · r^(-(1/k - 0.75 β)) · r_prev^(β),   β = beta / k

    clipped to ``[dfactor, ifactor]``, and never above one right after a
    rejection. A rejected step shrinks by ``max(dfactor, safety · r^(-1/k))``.
    ``beta=0`` gives the classical integral controller.

    Args:
        safety: safety factor below one.
        ifactor: largest growth of the step per step.
        dfactor: largest shrink of the step per step.
        beta: the proportional coefficient (times ``1/k``); Hairer's 0.04 for
            dopri5 is ``beta=0.2``.
    """

    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2
    beta: float = 0.2

    def __post_init__(self):
        for name in ("safety", "ifactor", "dfactor"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if self.safety >= 1 or self.dfactor >= 1 or self.ifactor <= 1:
            raise ValueError(f"need safety < 1, dfactor < 1 < ifactor; got safety={self.safety}, "
                             f"dfactor={self.dfactor}, ifactor={self.ifactor}")
        if not 0 <= self.beta < 1:
            raise ValueError(f"beta must lie in [0, 1), got {self.beta!r}")

    def initial_memory(self) -> float:
        return 1.0

    def factor(self, ratio: float, memory: float, k: int, accepted: bool, after_reject: bool) -> tuple[float, float]:
        """``(factor, new_memory)`` for the next step size."""
        if not accepted:
            return max(self.dfactor, self.safety * ratio ** (-1.0 / k)), memory
        if ratio == 0.0:
            return (1.0 if after_reject else self.ifactor), memory
        beta = self.beta / k
        fac = self.safety * ratio ** (beta * 0.75 - 1.0 / k) * memory ** beta
        fac = min(self.ifactor, max(self.dfactor, fac))
        if after_reject:
            fac = min(fac, 1.0)
        return fac, max(ratio, 1e-4)

    def factor_on_device(self, ratio: torch.Tensor, memory: torch.Tensor, k: int, accepted: torch.Tensor,
                         after_reject: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`factor` on 0-d float64 (``ratio``, ``memory``) and bool tensors: the same operations in the
        same order, selected by ``torch.where`` instead of branches, so that it runs inside a compiled step."""
        rejected = torch.clamp(self.safety * ratio ** (-1.0 / k), min=self.dfactor)
        beta = self.beta / k
        fac = (self.safety * ratio ** (beta * 0.75 - 1.0 / k) * memory ** beta).clamp(self.dfactor, self.ifactor)
        fac = torch.where(after_reject, fac.clamp(max=1.0), fac)
        zero = ratio == 0.0
        fac = torch.where(zero, torch.where(after_reject, 1.0, fac.new_tensor(self.ifactor)), fac)
        kept = torch.where(zero, memory, torch.clamp(ratio, min=1e-4))
        return torch.where(accepted, fac, rejected), torch.where(accepted, kept, memory)


@dataclass(frozen=True)
class IController:
    """torchdiffeq's rule: ``factor = clip(safety · r^(-1/k), lo, ifactor)``.

    ``lo`` is one on accepted steps (they never shrink) and ``dfactor`` on
    rejected ones. This is the rule of torchdiffeq 0.2's adaptive solvers:
    with it, dopri5 takes the same steps as torchdiffeq's (same starting step,
    same embedded error estimate), except that nodeopt ends its last step on
    ``t[-1]`` where torchdiffeq steps past it and interpolates.
    """

    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2

    __post_init__ = PIController.__post_init__
    beta = 0.0

    def initial_memory(self) -> float:
        return 1.0

    def factor(self, ratio: float, memory: float, k: int, accepted: bool, after_reject: bool) -> tuple[float, float]:
        if ratio == 0.0:
            return self.ifactor, memory
        lo = 1.0 if ratio < 1.0 else self.dfactor
        return min(self.ifactor, max(self.safety * ratio ** (-1.0 / k), lo)), memory

    def factor_on_device(self, ratio: torch.Tensor, memory: torch.Tensor, k: int, accepted: torch.Tensor,
                         after_reject: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`factor` as tensors (see :meth:`PIController.factor_on_device`)."""
        lo = torch.where(ratio < 1.0, 1.0, ratio.new_tensor(self.dfactor))
        fac = torch.clamp(torch.maximum(self.safety * ratio ** (-1.0 / k), lo), max=self.ifactor)
        return torch.where(ratio == 0.0, fac.new_tensor(self.ifactor), fac), memory


Controller = Union[PIController, IController]


def initial_step(f: Callable, t0: float, y0: torch.Tensor, f0: torch.Tensor, order: int,
                 norm: Callable[[torch.Tensor], float], span: float) -> float:
    """Hairer, Nørsett & Wanner's starting step (Solving ODEs I, II.4).

    ``d0 = ‖y0/sc‖``, ``d1 = ‖f0/sc‖``; ``h0 = 0.01 d0/d1``; one explicit Euler
    step gives ``d2 = ‖(f(t0+h0, y0+h0 f0) - f0)/sc‖ / h0``; then
    ``h1 = (0.01 / max(d1, d2))^(1/(q+1))`` and ``h = min(100 h0, h1, span)``,
    where ``sc = atol + rtol |y0|`` is inside ``norm`` and ``q = order`` is the
    order of the local error estimate's leading term minus one (``q = 4`` for
    dopri5, as in Hairer's DOPRI5 code and SciPy).
    """
    with torch.no_grad():
        d0 = norm(y0)
        d1 = norm(f0)
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        h0 = min(h0, span)
        f1 = f(t0 + h0, y0 + h0 * f0)
        d2 = norm(f1 - f0) / h0
        if max(d1, d2) <= 1e-15:
            h1 = max(1e-6, h0 * 1e-3)
        else:
            h1 = (0.01 / max(d1, d2)) ** (1.0 / (order + 1))
    return min(100 * h0, h1, span)
