"""Levenberg–Marquardt adaptive damping, as small pure functions (Martens & Grosse 2015, §6.5).

SNOpt's step is ``∇_nat = Q_G (∇̃ / (m₂ + λ)) Q_Aᵀ``: the minimiser of the local
quadratic model ``M(s) = ∇·s + ½ sᵀ (F + λ) s`` with ``F`` the Kronecker-factored
curvature in its eigenbasis. When ``F`` underestimates the curvature along the
step (a stale eigenbasis, a second moment ``m₂`` that has decayed below the true
curvature, momentum carrying the step further than the model assumed) the step
overshoots. The Levenberg–Marquardt rule watches the reduction ratio

    ρ = (actual change of the loss) / (change predicted by M)

over every ``interval`` steps and raises ``λ`` by ``1/ω`` when ``ρ < 1/4``,
lowers it by ``ω`` when ``ρ > 3/4`` (``ω = (19/20)^interval``, never below the
user's ``eps``).

Martens & Grosse evaluate the loss a second time, at the new parameters, on the
same batch. To keep an iteration at the cost of an SGD iteration we estimate the
actual change from the gradient the next iteration computes anyway, by the
trapezoidal rule along the step ``s`` that the base optimiser really applied
(momentum and weight decay included)::

    actual ≈ ½ (∇_k + ∇_{k+1})·s        (exact for a quadratic loss)

The next batch's gradient noise is independent of ``s``, so the estimate is
unbiased; summing over ``interval`` steps before deciding averages it down.
"""

from __future__ import annotations

import torch

LOW, HIGH = 0.25, 0.75  # Martens & Grosse's thresholds on ρ
STEPS_PER_DECAY = 19.0 / 20.0  # ω per step: one decision every T steps moves λ by (19/20)^T


def actual_change(grad_before: torch.Tensor, grad_after: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """``½ (∇_k + ∇_{k+1})·s``: the change of the loss along the step, by the trapezoidal rule."""
    return 0.5 * ((grad_before + grad_after) * step).sum()


def predicted_change(grad_before: torch.Tensor, step: torch.Tensor, q_a: torch.Tensor, q_g: torch.Tensor,
                     m2: torch.Tensor, damping: float) -> torch.Tensor:
    """``M(s) = ∇_k·s + ½ s̃ᵀ (m₂ + λ) s̃`` with ``s̃ = Q_Gᵀ s Q_A`` (the step in the eigenbasis)."""
    rotated = q_g.t() @ step @ q_a
    return (grad_before * step).sum() + 0.5 * (rotated.square() * (m2 + damping)).sum()


def adjust(factor: float, actual: float, predicted: float, interval: int) -> float:
    """The Levenberg–Marquardt update of the damping multiplier (``λ = eps · factor``, ``factor ≥ 1``).

    ``predicted < 0`` for a step that descends in the model; a step the model
    predicts to ascend (momentum pointing uphill) is judged by its sign alone.
    """
    omega = STEPS_PER_DECAY ** interval
    if predicted < 0:
        rho = actual / predicted
        if rho < LOW:
            return factor / omega
        if rho > HIGH:
            return max(1.0, factor * omega)
        return factor
    return factor / omega if actual > 0 else factor
