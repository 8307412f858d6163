"""What one ``SNOpt.step()`` did: :class:`SNOptStats`, read as ``precond.last_stats`` after each step.

The statistics come back as data, as a solver's do in its ``Solution``, so that benchmarks and
logs read them instead of wrapping SNOpt's internals. Gathering them costs no extra evaluation
and, on iterations that do not refresh the eigenbases, no synchronisation with the device: the
Fisher sizes stay a tensor until :attr:`SNOptStats.fisher_size` is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch


@dataclass(frozen=True)
class SNOptStats:
    """The statistics of one ``SNOpt.step()``.

    Attributes:
        iteration: the iteration the step belonged to (0 for the first ``step()``).
        refresh: whether this step refreshed the eigenbases (from the curvature gathered
            since ``train_itr_setup()``).
        layers: how many layers were preconditioned in this step (0 before the first refresh
            has given a layer its bases).
        step_scale: ``ν``, the factor the ``max_step`` bound applied to every preconditioned
            gradient: ``min(1, sqrt(c / Σ ⟨∇_nat, ∇⟩))``; 1.0 when the bound did not act or
            there is none. The applied step is ``ν ∇_nat``.
        step_bound: ``c``, the bound on ``Σ ⟨∇_nat, ∇⟩`` at this step's learning rate (None:
            unbounded).
        damping: ``λ = eps · γ``, the Tikhonov damping this step preconditioned with.
        factor_seconds: on a refresh, the time spent folding the backward pass's evaluations
            into Kronecker factors (the capture's hooks; ``time.perf_counter``, so on a GPU the
            time to issue that work); 0.0 otherwise.
        factor_samples: on a refresh, the evaluations folded into factors, summed over the
            layers; 0 otherwise.
        refresh_seconds: on a refresh, the time spent refreshing: averaging the factors across
            ranks and eigendecomposing them; 0.0 otherwise.
        bytes_all_reduced: on a refresh under ``torch.distributed``, the bytes of the one
            flattened buffer this rank all-reduced (the factors and batch sizes of every
            layer); 0 otherwise.
        momentum_scale: ``κ``, the factor the momentum guard applied to the base optimiser's
            momentum buffer and gradient before its step (1.0: not shortened, or no guard; see
            :mod:`nodeopt.optim.momentum`). Filled in when the base optimiser steps.
        layer_fisher_sizes: ``⟨∇_nat, ∇⟩`` of each preconditioned layer before the bound
            (a 1-D tensor on the parameters' device; None when no layer was preconditioned).
    """

    iteration: int
    refresh: bool
    layers: int
    step_scale: float
    step_bound: Optional[float]
    damping: float
    factor_seconds: float = 0.0
    factor_samples: int = 0
    refresh_seconds: float = 0.0
    bytes_all_reduced: int = 0
    momentum_scale: float = 1.0
    layer_fisher_sizes: Optional[torch.Tensor] = field(default=None, repr=False)

    @property
    def fisher_size(self) -> float:
        """``Σ ⟨∇_nat, ∇⟩`` over the preconditioned layers, before the bound (the squared length
        of the unbounded step in the Fisher metric, per unit learning rate); NaN when no layer
        was preconditioned. Reading it synchronises with the device."""
        if self.layer_fisher_sizes is None:
            return math.nan
        return sum(self.layer_fisher_sizes.tolist())

    @property
    def bounded(self) -> bool:
        """Whether the ``max_step`` bound shortened this step (``step_scale < 1``)."""
        return self.step_scale < 1.0

    def as_dict(self) -> dict:
        """The statistics as plain Python numbers (for JSON or a metrics row); synchronises."""
        return dict(iteration=self.iteration, refresh=self.refresh, layers=self.layers,
                    step_scale=self.step_scale, step_bound=self.step_bound, damping=self.damping,
                    fisher_size=self.fisher_size, factor_seconds=self.factor_seconds,
                    factor_samples=self.factor_samples, refresh_seconds=self.refresh_seconds,
                    bytes_all_reduced=self.bytes_all_reduced, momentum_scale=self.momentum_scale)
