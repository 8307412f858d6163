"""One generic explicit Runge–Kutta step, for every tableau, and the eager stepper the loop calls.

The stage combinations ``y + h Σ a_ij k_j`` are built from the tableau's
non-zero entries with fused ``add(..., alpha=)`` calls: under autograd this
saves no tensors for backward (only scalars), so backprop through a step holds
the stages and the network's own activations, nothing more. The same functions
run inside a compiled step (``compiled.py``), where ``t`` and ``h`` are 0-d
float64 tensors so that one graph serves every step.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch

from .tableau import Pairs, Tableau

Time = Union[float, torch.Tensor]  # a Python float eagerly, a 0-d float64 tensor inside a compiled step


def lincomb(base: Optional[torch.Tensor], h: Time, pairs: Pairs, ks) -> torch.Tensor:
    """``base + h Σ_j w_j ks[j]`` over the non-zero ``(j, w_j)`` in ``pairs``.

    ``base=None`` means zero. With no pairs the result is ``base`` itself. With a tensor
    ``h`` (a compiled step) each product ``h·w_j`` is rounded to the state's dtype, as the
    eager ``alpha=`` does.
    """
    if not pairs:
        return base if base is not None else torch.zeros_like(ks[0])
    if isinstance(h, torch.Tensor):
        out = base
        for j, w in pairs:
            term = ks[j] * (h * w).to(ks[j].dtype)
            out = term if out is None else out + term
        return out
    j, w = pairs[0]
    out = torch.mul(ks[j], h * w) if base is None else torch.add(base, ks[j], alpha=h * w)
    for j, w in pairs[1:]:
        out = out.add_(ks[j], alpha=h * w)
    return out


def rk_step(f: Callable, tableau: Tableau, t: Time, h: Time, t1: Time, y: torch.Tensor,
            k1: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One step from ``(t, y)`` of size ``h``: returns ``(y1, [k_1..k_s])``; ``k1 = f(t, y)`` is given.

    The stage at ``c_i = 1`` is evaluated at ``t1`` exactly (not ``t + h``), so
    that a step landing on an output or jump time sees that time to the bit.
    For a first-same-as-last tableau the last stage's input is ``y1`` itself,
    so it is not recombined, and ``k_s = f(t1, y1)``.
    """
    ks = [k1]
    yi = y
    for i in range(1, tableau.stages):
        ci = tableau.c[i]
        yi = lincomb(y, h, tableau.a_pairs[i], ks)
        ks.append(f(t1 if ci == 1.0 else t + ci * h, yi))
    y1 = yi if tableau.fsal else lincomb(y, h, tableau.b_pairs, ks)
    return y1, ks


def rk_error(tableau: Tableau, h: Time, ks: list[torch.Tensor]) -> torch.Tensor:
    """The local error estimate ``h Σ e_i k_i`` of an embedded pair."""
    return lincomb(None, h, tableau.error_pairs, ks)


class Stepper:
    """How the loop takes a step: eagerly, one operation at a time (``CompiledStepper`` fuses it).

    Args:
        f: the loop-time vector field (a :class:`~nodeopt.solvers.state.Dynamics`, or any
            ``f(t, y)``, e.g. one that announces stages).
        error_norm: the accept/reject norm of adaptive solves (None for fixed steps).
    """

    compiled = False

    def __init__(self, f: Callable, error_norm=None):
        self.f, self.error_norm = f, error_norm

    def step(self, tableau: Tableau, t_first: float, t: float, h: float, t1: float, y: torch.Tensor,
             k1: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(y1, ks)`` of one step; ``k1 = f(t_first, y)`` is evaluated here when not given."""
        return rk_step(self.f, tableau, t, h, t1, y, self.f(t_first, y) if k1 is None else k1)

    def adaptive(self, tableau: Tableau, t_first: float, t: float, h: float, t1: float, y: torch.Tensor,
                 k1: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, list[torch.Tensor], float]:
        """``(y1, ks, r)``: one step and its error ratio (accepted when ``r <= 1``)."""
        y1, ks = self.step(tableau, t_first, t, h, t1, y, k1)
        with torch.no_grad():  # step sizes are constants of the solve: no graph for the estimate
            return y1, ks, self.error_norm(y, y1, rk_error(tableau, h, ks))

    def with_field(self, f: Callable) -> "Stepper":
        """The eager stepper over another field (e.g. one announcing its evaluations)."""
        return Stepper(f, self.error_norm)
