"""``gradient="symplectic"``: the symplectic adjoint method (Matsubara, Miyatake & Yaguchi, NeurIPS 2021).

The exact gradient of the Runge–Kutta solve, holding only the step states, one
step's stage states and a single network use. The adjoint of an RK step is the
symplectic partner scheme (see ``Tableau.symplectic_partner``); the pair
conserves ``λᵀδ``, which is what makes the backward pass the exact derivative
of the forward map. Backward over step ``n``:

1. recompute the stage states ``Y_i`` of the step without a graph (or rebuild them
   from the stage derivatives the forward pass kept, ``store_stages``: no evaluation);
2. for ``i = m..1`` (``m`` the stages ``y_{n+1}`` depends on):
   ``Λ_i = [b_i != 0] λ_{n+1} + h Σ_{j>i} C_ij ℓ_j`` and ``ℓ_i = -J_iᵀ Λ_i``,
   one vector–Jacobian product (one network graph) at a time, which also adds
   ``h B_i (∂f/∂θ)ᵀ Λ_i`` to the parameter gradient;
3. ``λ_n = λ_{n+1} - h Σ_i B_i ℓ_i``.
"""

from __future__ import annotations

import math
import re
from typing import Optional, Union

import torch

from ..solvers.compiled import resolved, substituted, unpack
from ..solvers.loop import StageStore
from ..solvers.step import lincomb
from ..solvers.tableau import Tableau
from .base import register
from .replay import BackwardContext, StepReplay

_UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12,
          "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}


def parse_bytes(value: Union[bool, int, float, str, None], name: str = "store_stages") -> float:
    """A memory budget in bytes: a number, or a string such as ``"256MB"`` or ``"1.5 GiB"``."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", value)
        if match is None or match.group(2).lower() not in _UNITS:
            raise ValueError(f"{name}={value!r} is not a memory size; write a number of bytes or a string such "
                             f"as '256MB', '1.5GB' or '512MiB'")
        return float(match.group(1)) * _UNITS[match.group(2).lower()]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0:
        return float(value)
    raise ValueError(f"{name}={value!r} is not a memory size; write a number of bytes ≥ 0 or a string such "
                     f"as '256MB'")


@register
class SymplecticAdjoint(StepReplay):
    """The symplectic adjoint method: exact gradients at minimal memory.

    Args:
        store_stages: ``False`` (default): hold only the step states and recompute each step's
            stages in the backward pass (the least memory); ``True``: keep every accepted step's
            stage derivatives from the forward pass, so the backward pass makes no evaluation
            without a graph (``needed_stages - 1`` state-sized tensors per step); a budget in bytes
            (an int, or a string such as ``"256MB"``): keep them for as many steps as fit, first
            come first served, and recompute the others. Every mode gives the same exact gradient.
    """

    name = "symplectic"

    def __init__(self, store_stages: Union[bool, int, float, str] = False):
        if store_stages is True:
            self.stage_budget: Optional[float] = math.inf
        elif store_stages is False or store_stages is None:
            self.stage_budget = None
        else:
            self.stage_budget = parse_bytes(store_stages)

    def stage_store(self, problem) -> Optional[StageStore]:
        if not self.stage_budget:
            return None
        return StageStore(problem.method.tableau.needed_stages - 1, self.stage_budget)

    def step_backward(self, ctx: BackwardContext, t_first: float, h: float, t_last: float, t: float,
                      y: torch.Tensor, lam: torch.Tensor, stages: Optional[list] = None) -> torch.Tensor:
        if ctx.compiled and ctx.param_names is not None:
            return _compiled_step_backward(ctx, t_first, h, t_last, t, y, lam, stages)
        tab = ctx.tableau
        partner = tab.symplectic_partner
        m = tab.needed_stages
        times = [t_first] + [t_last if c == 1.0 else t + c * h for c in tab.c[1:m]]
        # 1. Stage states Y_1..Y_m; the last needed stage's derivative is never used.
        states = [y]
        ks: list[torch.Tensor] = []
        for i in range(1, m):
            ks.append(stages[i - 1] if stages is not None else ctx.f(times[i - 1], states[i - 1]))
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

    def __repr__(self) -> str:
        budget = self.stage_budget
        return "SymplecticAdjoint()" if budget is None else (
            "SymplecticAdjoint(store_stages=True)" if budget == math.inf else
            f"SymplecticAdjoint(store_stages={budget:.0f})")


def _partner_body(field, tableau: Tableau, names: tuple[str, ...], stored: bool):
    """The symplectic step backward of ``SymplecticAdjoint.step_backward`` as one traceable function.

    The same recurrences, with each vector–Jacobian product taken by ``torch.func.vjp`` of the
    field with the parameters substituted (``functional_call``), so that the whole step,
    stage recompute included, compiles into one graph.
    """
    resolved(tableau)
    partner, m = tableau.symplectic_partner, tableau.needed_stages

    def backward_step(func, times_, y, lam, stages, params):
        t_first, t, h, t_last = unpack(times_)

        times = [t_first] + [t_last if c == 1.0 else t + c * h for c in tableau.c[1:m]]
        states, ks = [y], []
        for i in range(1, m):
            ks.append(stages[i - 1] if stored else field(func, times[i - 1], states[i - 1]))
            states.append(lincomb(y, h, tableau.a_pairs[i], ks))
        ells: list = [None] * m
        grads = None
        for i in reversed(range(m)):
            pairs = tuple((j, c) for j, c in partner.sweep_pairs(i) if j < m and ells[j] is not None)
            base = None if partner.zero_weight[i] else lam
            if base is None and not pairs:
                continue
            weight = h * partner.B[i]
            _, pull = torch.func.vjp(lambda x, p, s=times[i]: field(substituted(func, names, p), s, x), states[i],
                                     params)
            g_y, g_p = pull(lincomb(base, h, pairs, ells) * weight.to(y.dtype))
            ells[i] = g_y * (-1.0 / weight).to(y.dtype)
            grads = g_p if grads is None else tuple(a + b for a, b in zip(grads, g_p))
        weights = tuple((i, -partner.B[i]) for i in range(m) if ells[i] is not None)
        return lincomb(lam, h, weights, ells), grads

    return backward_step


def _compiled_step_backward(ctx: BackwardContext, t_first: float, h: float, t_last: float, t: float,
                            y: torch.Tensor, lam: torch.Tensor, stages: Optional[list]) -> torch.Tensor:
    """One symplectic step backward as a compiled graph (``compile=True``, nobody listening for stages)."""
    tab, dyn = ctx.tableau, ctx.f
    stored = stages is not None
    graph = ctx.graph(("symplectic", tab, stored), lambda field: _partner_body(field, tab, ctx.param_names, stored),
                      f"the symplectic adjoint of one {tab.name} step of func")
    lam_n, grads = graph(ctx.compile_log, ctx.func, ctx.stepper.times(t_first, t, h, t_last), y, lam,
                         stages, ctx.params)
    m = tab.needed_stages
    vjps = sum(_active_stages(tab))
    dyn.nfe += vjps + (0 if stored else m - 1)
    ctx.stats.nvjp_backward += vjps
    ctx.accumulate(grads)
    return lam_n


def _active_stages(tableau: Tableau) -> list[bool]:
    """Which stages' adjoints the partner sweep computes (the others are zero): one VJP each."""
    partner, m = tableau.symplectic_partner, tableau.needed_stages
    active = [False] * m
    for i in reversed(range(m)):
        active[i] = not partner.zero_weight[i] or any(j < m and active[j] for j, _ in partner.sweep_pairs(i))
    return active
