"""One generic explicit Runge–Kutta step, for every tableau.

The stage combinations ``y + h Σ a_ij k_j`` are built from the tableau's
non-zero entries with fused ``add(..., alpha=)`` calls: under autograd this
saves no tensors for backward (only scalars), so backprop through a step holds
the stages and the network's own activations, nothing more.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .tableau import Pairs, Tableau


def lincomb(base: Optional[torch.Tensor], h: float, pairs: Pairs, ks) -> torch.Tensor:
    """``base + h Σ_j w_j ks[j]`` over the non-zero ``(j, w_j)`` in ``pairs``.

    ``base=None`` means zero. With no pairs the result is ``base`` itself.
    """
    if not pairs:
        return base if base is not None else torch.zeros_like(ks[0])
    j, w = pairs[0]
    out = torch.mul(ks[j], h * w) if base is None else torch.add(base, ks[j], alpha=h * w)
    for j, w in pairs[1:]:
        out = out.add_(ks[j], alpha=h * w)
    return out


def rk_step(f: Callable, tableau: Tableau, t: float, h: float, t1: float, y: torch.Tensor,
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


def rk_error(tableau: Tableau, h: float, ks: list[torch.Tensor]) -> torch.Tensor:
    """The local error estimate ``h Σ e_i k_i`` of an embedded pair."""
    return lincomb(None, h, tableau.error_pairs, ks)
