"""Butcher tableaux as validated data.

An explicit Runge–Kutta method with ``s`` stages advances ``y' = f(t, y)`` by

    k_i     = f(t + c_i h, y + h * sum_{j<i} a_ij k_j)      i = 1..s
    y_{n+1} = y_n + h * sum_i b_i k_i
    err     = h * sum_i e_i k_i          (e = b - b_hat, the embedded estimate)

A :class:`Tableau` holds ``c``, ``a``, ``b`` and ``b_error`` and checks them on
construction; everything else (first-same-as-last, the sparse rows the step
uses, dense-output weights) is derived from those numbers.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

Row = tuple[float, ...]
Pairs = tuple[tuple[int, float], ...]

_TOL = 1e-12


def _close(x: float, y: float, scale: float = 1.0) -> bool:
    return abs(x - y) <= _TOL * max(1.0, scale)


def _nonzero(weights) -> Pairs:
    return tuple((j, float(w)) for j, w in enumerate(weights) if w != 0.0)


@dataclass(frozen=True)
class SymplecticPartner:
    """Coefficients of the adjoint scheme paired with a tableau (see ``Tableau.symplectic_partner``).

    Attributes:
        A: ``s × s`` matrix (full; for explicit methods ``A_ij = B_j`` whenever ``j <= i``
            on rows with ``b_i != 0``, so the backward sweep is explicit in reverse).
        B: weights; ``b_i`` where non-zero, one on zero-weight stages.
        zero_weight: which stages have ``b_i = 0``.
    """

    A: tuple[Row, ...]
    B: Row
    zero_weight: tuple[bool, ...]

    def sweep_pairs(self, i: int) -> Pairs:
        """Non-zero ``(j, C_ij)`` for ``j > i`` with ``Λ_i = [b_i != 0] λ_{n+1} + h Σ_j C_ij ℓ_j``.

        Written from ``λ_{n+1}`` rather than ``λ_n`` (substituting
        ``λ_n = λ_{n+1} - h Σ_j B_j ℓ_j``): ``C_ij = A_ij - B_j`` on weighted rows,
        ``A_ij`` on zero-weight rows. Entries with ``j <= i`` vanish for explicit methods.
        """
        row = self.A[i]
        shift = 0.0 if self.zero_weight[i] else 1.0
        return tuple((j, row[j] - shift * self.B[j]) for j in range(i + 1, len(row))
                     if row[j] - shift * self.B[j] != 0.0)


@dataclass(frozen=True)
class Tableau:
    """The coefficients of an explicit Runge–Kutta method.

    Args:
        name: the method's name (as torchdiffeq names it).
        c: nodes, ``c[0] == 0``.
        a: strictly lower-triangular stage matrix, given as rows; row ``i`` holds
            ``a[i][0..i-1]`` (row 0 is empty).
        b: weights of the propagated solution; they sum to one.
        order: order of the propagated solution.
        b_error: ``b - b_hat``, the weights of the local error estimate of an
            embedded pair; they sum to zero. ``None`` for fixed-step methods.
        error_order: order of the embedded solution ``b_hat``.
        b_mid: weights giving ``y(t + h/2)`` to the method's interpolation
            order; with a first-same-as-last tableau it yields a quartic dense
            output (Shampine's for dopri5).
        hermite: use the cubic Hermite interpolant through ``(y0, f0, y1, f1)``
            as dense output (needs first-same-as-last; order 3).

    Raises:
        ValueError: if the numbers are inconsistent (row sums differ from ``c``,
            weights do not sum to one, error weights do not sum to zero, ...).
    """

    name: str
    c: Row
    a: tuple[Row, ...]
    b: Row
    order: int
    b_error: Optional[Row] = None
    error_order: Optional[int] = None
    b_mid: Optional[Row] = None
    hermite: bool = False

    def __post_init__(self):
        s = len(self.c)
        if s == 0 or len(self.a) != s or len(self.b) != s:
            raise ValueError(f"tableau {self.name!r}: c, a and b must all have one entry per stage "
                             f"(got {len(self.c)}, {len(self.a)}, {len(self.b)})")
        if self.c[0] != 0.0:
            raise ValueError(f"tableau {self.name!r}: an explicit method needs c[0] == 0, got {self.c[0]}")
        for i, row in enumerate(self.a):
            if len(row) != i:
                raise ValueError(f"tableau {self.name!r}: row {i} of a must hold {i} entries "
                                 f"(strictly lower triangular), got {len(row)}")
            if not _close(math.fsum(row), self.c[i], sum(abs(x) for x in row)):
                raise ValueError(f"tableau {self.name!r}: row {i} of a sums to {math.fsum(row)!r}, "
                                 f"but c[{i}] = {self.c[i]!r}; the row sums must equal c")
        if not _close(math.fsum(self.b), 1.0, sum(abs(x) for x in self.b)):
            raise ValueError(f"tableau {self.name!r}: weights b sum to {math.fsum(self.b)!r}, must sum to 1")
        if (self.b_error is None) != (self.error_order is None):
            raise ValueError(f"tableau {self.name!r}: give b_error and error_order together")
        if self.b_error is not None:
            if len(self.b_error) != s:
                raise ValueError(f"tableau {self.name!r}: b_error needs {s} entries, got {len(self.b_error)}")
            if not _close(math.fsum(self.b_error), 0.0, sum(abs(x) for x in self.b_error)):
                raise ValueError(f"tableau {self.name!r}: error weights b_error sum to "
                                 f"{math.fsum(self.b_error)!r}, must sum to 0 (they are b - b_hat)")
        if (self.b_mid is not None or self.hermite) and not self.fsal:
            raise ValueError(f"tableau {self.name!r}: dense output needs a first-same-as-last tableau")
        if self.b_mid is not None and len(self.b_mid) != s:
            raise ValueError(f"tableau {self.name!r}: b_mid needs {s} entries, got {len(self.b_mid)}")

    # ---- derived structure -------------------------------------------------

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        """Whether the tableau carries an embedded error estimate."""
        return self.b_error is not None

    @functools.cached_property
    def fsal(self) -> bool:
        """First same as last: the last stage is evaluated at ``(t + h, y_{n+1})``.

        Then ``f(t_{n+1}, y_{n+1})`` comes for free and is the next step's first stage.
        """
        s = self.stages
        return (s > 1 and self.c[-1] == 1.0 and self.b[-1] == 0.0
                and all(x == y for x, y in zip(self.a[-1], self.b[:-1])))

    @functools.cached_property
    def a_pairs(self) -> tuple[Pairs, ...]:
        """Non-zero entries ``(j, a_ij)`` of each row, as the step consumes them."""
        return tuple(_nonzero(row) for row in self.a)

    @functools.cached_property
    def b_pairs(self) -> Pairs:
        return _nonzero(self.b)

    @functools.cached_property
    def error_pairs(self) -> Pairs:
        return _nonzero(self.b_error) if self.b_error is not None else ()

    @property
    def control_order(self) -> int:
        """``q + 1`` with ``q = min(order, error_order)``: the exponent base of step control."""
        return min(self.order, self.error_order or self.order) + 1

    @property
    def has_dense_output(self) -> bool:
        return self.b_mid is not None or self.hermite

    @functools.cached_property
    def _dense_matrix(self) -> np.ndarray:
        """Coefficients ``W`` with ``y(t + θh) = y + h Σ_i k_i Σ_p W[p, i] θ^(p+1)``.

        The polynomial interpolates ``y`` and ``f`` at both ends of the step (and
        ``y(t + h/2)`` from ``b_mid`` when given): each condition is linear in the
        stages, so solving for the monomial coefficients once gives weights.
        """
        s = self.stages
        first = np.eye(s)[0]
        last = np.eye(s)[-1]
        rows = [[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]]
        rhs = [np.array(self.b), first, last]
        if self.b_mid is not None:
            rows.append([0.5, 0.25, 0.125, 0.0625])
            rhs.append(np.array(self.b_mid))
        else:
            rows = [r[:3] for r in rows]
        return np.linalg.solve(np.array(rows), np.stack(rhs))

    @functools.cached_property
    def needed_stages(self) -> int:
        """How many leading stages ``y_{n+1}`` depends on.

        Trailing stages with ``b_i = 0`` that no needed stage uses (dopri5's
        first-same-as-last stage, which only feeds the error estimate) are not
        part of the step's map, so replaying a step skips them.
        """
        needed = [b != 0.0 for b in self.b]
        for i in reversed(range(self.stages)):
            if needed[i]:
                for j, _ in self.a_pairs[i]:
                    needed[j] = True
        return max(i for i, n in enumerate(needed) if n) + 1

    @functools.cached_property
    def truncated(self) -> "Tableau":
        """This tableau without the stages ``y_{n+1}`` does not depend on (for replaying steps)."""
        m = self.needed_stages
        if m == self.stages:
            return self
        return Tableau(name=self.name, c=self.c[:m], a=self.a[:m], b=self.b[:m], order=self.order)

    @functools.cached_property
    def symplectic_partner(self) -> "SymplecticPartner":
        """The adjoint scheme that makes (this method, partner) a symplectic pair.

        Sanz-Serna (2016); Matsubara, Miyatake & Yaguchi (2021). Backward over one
        step, with ``λ_{n+1}`` given and ``J_i = ∂f/∂y`` at the stage states:

            Λ_i = λ_n + h Σ_j A_ij ℓ_j,    ℓ_i = -J_iᵀ Λ_i,    λ_n = λ_{n+1} - h Σ_i B_i ℓ_i

        with ``B_i = b_i`` and ``b_i A_ij + B_j a_ji - b_i B_j = 0``, i.e.
        ``A_ij = B_j (1 - a_ji / b_i)``. Then ``λ_nᵀ δ_n`` is conserved exactly and
        ``λ_n`` is the exact gradient of the discrete step. A stage with
        ``b_i = 0`` would divide by zero; following the paper it gets weight
        ``B_i = 1`` and a row ``A_ij = -B_j a_ji`` that carries no ``λ_n`` term
        (its adjoint stage is ``Λ_i = h Σ_j A_ij ℓ_j``), which is what
        differentiating the step gives for such a stage.
        """
        s = self.stages
        zero = tuple(b == 0.0 for b in self.b)
        B = tuple(1.0 if z else b for z, b in zip(zero, self.b))
        A = tuple(tuple((-B[j] * self._a(j, i)) if zero[i] else B[j] * (1.0 - self._a(j, i) / self.b[i])
                        for j in range(s)) for i in range(s))
        return SymplecticPartner(A=A, B=B, zero_weight=zero)

    def _a(self, i: int, j: int) -> float:
        """``a_ij`` of the full (square) stage matrix."""
        return self.a[i][j] if j < i else 0.0

    def dense_weights(self, theta: float) -> Pairs:
        """Weights ``w`` with ``y(t + θh) ≈ y + h Σ w_i k_i``, for ``0 ≤ θ ≤ 1``."""
        powers = theta ** np.arange(1, self._dense_matrix.shape[0] + 1)
        return _nonzero(powers @ self._dense_matrix)
