"""The extension point through which the backward pass can be watched.

A second-order optimiser such as SNOpt needs, for every network use the
backward pass differentiates, *where* along the trajectory it happened and
*with what weight*. Each gradient method announces that around the evaluation
whose graph it is about to differentiate:

    with stage(t, weight, scale):
        out = f(t, y)        # module hooks read current_stage() here

``weight`` is the quadrature weight of the evaluation in an integral over the
trajectory (``h·b_i`` for a Runge–Kutta stage) and ``scale`` relates the
cotangent that will reach the evaluation's output to the adjoint state
``a(t) = dL/dy(t)`` (``h·b_i`` when the method differentiates the discrete
step, 1 for the continuous adjoint). Announcements cost nothing unless someone
listens: a listener opens ``listening()`` around the forward and backward pass.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator, Optional


@dataclass(frozen=True)
class Stage:
    """One differentiated evaluation of the vector field.

    Attributes:
        t: the time of the evaluation (the user's time).
        weight: its quadrature weight along the trajectory (time units, ≥ 0).
        scale: the factor between the cotangent reaching its output and ``a(t)``.
    """

    t: float
    weight: float
    scale: float


_listeners: ContextVar[int] = ContextVar("nodeopt_stage_listeners", default=0)
_current: ContextVar[Optional[Stage]] = ContextVar("nodeopt_current_stage", default=None)
_muted: ContextVar[bool] = ContextVar("nodeopt_muted", default=False)


@contextlib.contextmanager
def listening() -> Iterator[None]:
    """Ask the gradient methods to announce their differentiated evaluations while open."""
    token = _listeners.set(_listeners.get() + 1)
    try:
        yield
    finally:
        _listeners.reset(token)


def is_listening() -> bool:
    return _listeners.get() > 0


def current_stage() -> Optional[Stage]:
    """The evaluation being announced now, or None outside any announcement."""
    return _current.get()


@contextlib.contextmanager
def stage(t: float, weight: float, scale: float) -> Iterator[None]:
    """Announce the evaluation made inside the block."""
    token = _current.set(Stage(t, weight, scale))
    try:
        yield
    finally:
        _current.reset(token)


def announce(t: float, weight: float, scale: float) -> contextlib.AbstractContextManager:
    """``stage(t, weight, scale)`` when someone listens and the weight is non-zero, else a no-op."""
    if weight == 0.0 or not is_listening():
        return contextlib.nullcontext()
    return stage(t, weight, scale)


@contextlib.contextmanager
def muted() -> Iterator[None]:
    """Gradients computed inside the block are not part of the training backward pass.

    A vector field that differentiates inside its forward pass (a CNF's
    divergence) opens this around that inner ``autograd.grad`` so that
    listeners ignore the gradients it produces.
    """
    token = _muted.set(True)
    try:
        yield
    finally:
        _muted.reset(token)


def is_muted() -> bool:
    return _muted.get()
