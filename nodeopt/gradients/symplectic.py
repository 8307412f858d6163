"""``gradient="symplectic"``: the symplectic adjoint method (Matsubara, Miyatake & Yaguchi, NeurIPS 2021).

The exact gradient of the Runge–Kutta solve, holding only the step states, one
step's stage states and a single network use. The adjoint of an RK step is the
symplectic partner scheme (see ``Tableau.symplectic_partner``); the pair
conserves ``λᵀδ``, which is what makes the backward pass the exact derivative
of the forward map. Backward over step ``n``:

1. recompute the stage states ``Y_i`` of the step without a graph;
2. for ``i = m..1`` (``m`` the stages ``y_{n+1}`` depends on):
   ``Λ_i = [b_i != 0] λ_{n+1} + h Σ_{j>i} C_ij ℓ_j`` and ``ℓ_i = -J_iᵀ Λ_i``,
   one vector–Jacobian product (one network graph) at a time, which also adds
   ``h B_i (∂f/∂θ)ᵀ Λ_i`` to the parameter gradient;
3. ``λ_n = λ_{n+1} - h Σ_i B_i ℓ_i``.
"""

from __future__ import annotations

import torch

from ..solvers.step import lincomb
from .base import register
from .replay import BackwardContext, StepReplay


@register
class SymplecticAdjoint(StepReplay):
    """The symplectic adjoint method: exact gradients at minimal memory."""

    name = "symplectic"

    def step_backward(self, ctx: BackwardContext, t_first: float, h: float, t_last: float, t: float,
                      y: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        tab = ctx.tableau
        partner = tab.symplectic_partner
        m = tab.needed_stages
        times = [t_first] + [t_last if c == 1.0 else t + c * h for c in tab.c[1:m]]
        # 1. Stage states Y_1..Y_m; the last needed stage's derivative is never used.
        states = [y]
        ks: list[torch.Tensor] = []
        for i in range(1, m):
            ks.append(ctx.f(times[i - 1], states[i - 1]))
            states.append(lincomb(y, h, tab.a_pairs[i], ks))
        # 2. The partner scheme over the stages in reverse.
        ells: list = [None] * m
        for i in reversed(range(m)):
            pairs = tuple((j, c) for j, c in partner.sweep_pairs(i) if j < m and ells[j] is not None)
            base = None if partner.zero_weight[i] else lam
            if base is None and not pairs:
                continue  # this stage's adjoint is zero
            big_lam = lincomb(base, h, pairs, ells)
            weight = h * partner.B[i]
            # ℓ_i = -J_iᵀ Λ_i; the VJP takes h B_i Λ_i so the parameter gradient comes out scaled.
            ells[i] = ctx.vjp(times[i], states[i], big_lam * weight, hb=h * tab.b[i]).mul_(-1.0 / weight)
        # 3. λ_n = λ_{n+1} - h Σ B_i ℓ_i.
        weights = tuple((i, -partner.B[i]) for i in range(m) if ells[i] is not None)
        return lincomb(lam, h, weights, ells)
