"""Bounding the step the base optimiser actually takes, momentum included.

SNOpt bounds each preconditioned gradient, ``lr² ⟨∇_nat, ∇⟩ ≤ c₀`` (``c₀ = max_step · 0.02²``).
But SGD with momentum ``m`` does not take that step: it takes (PyTorch's SGD, dampening ``d``,
weight decay ``w``)

    b ← m·b + (1 − d)(∇_nat + w·θ),      Δθ = −lr·b     (Nesterov: −lr·(∇_nat + w·θ + m·b))

and the buffer ``b`` holds the steps of earlier iterations, measured in the curvature of the
time they were taken. When the curvature grows (the EKFAC second moment ``m₂`` follows it every
iteration), an old buffer can be far too long for where the parameters are now, and no bound on
the newest gradient shortens it: the loss rises for several iterations before the damping's
reduction-ratio test (every few steps) reacts.

The guard measures the step SGD is about to take in the *current* metric ``F + λ`` (the one
the preconditioner just used) and, when

    lr² ⟨Δ/lr, (F + λ) Δ/lr⟩ > c₀ / (1 − m)²,

scales the momentum buffer and the gradient by one factor ``κ`` so that the step meets the
bound exactly: KL clipping (Ba, Grosse & Martens 2017) applied to the final update rather than
to its newest term. ``c₀ / (1 − m)²`` is what momentum makes of a constant gradient held at the
bound (``b → ∇_nat / (1 − m)``), so steady training is left alone and only a buffer longer than
any run of bounded gradients could build in today's metric is shortened; shortening the buffer
(rather than only this step) is what keeps the overshoot from coming back at the next iteration.

It runs as a PyTorch optimiser step pre-hook (``torch.optim.optimizer.register_optimizer_step_pre_hook``)
on the SGD that steps SNOpt's layers, right after ``SNOpt.step()``: nothing changes in the
training loop, and an optimiser without momentum (or Adam) is left alone.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from typing import Optional

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from . import kfac


def sgd_direction(grad: torch.Tensor, buffer: Optional[torch.Tensor], param: torch.Tensor, momentum: float,
                  dampening: float, weight_decay: float, nesterov: bool) -> torch.Tensor:
    """``Δθ / (−lr)`` of PyTorch's SGD for one tensor (``buffer`` None: its first step)."""
    g = grad + weight_decay * param if weight_decay else grad
    b = g if buffer is None else momentum * buffer + (1 - dampening) * g
    return g + momentum * b if nesterov else b


def momentum_limit(bound: float, momentum: float) -> float:
    """``c₀ / (1 − m)²``: the Fisher size momentum gives a constant gradient held at the bound ``c₀``."""
    return bound / (1.0 - momentum) ** 2


class MomentumGuard:
    """The pre-step hook: shortens the momentum buffer and gradient of SNOpt's layers (module docstring).

    Holds its SNOpt weakly and is removed when the SNOpt is garbage-collected. ``last_scale`` is the
    factor ``κ`` of the last step it judged (1.0: not shortened).
    """

    def __init__(self, precond, reference_lr: float):
        self._precond = weakref.ref(precond)
        self.reference_lr = reference_lr
        self.armed = False  # set by SNOpt.step(): the next step of the base optimiser is judged
        self.last_scale = 1.0
        self.handle = register_optimizer_step_pre_hook(self)
        weakref.finalize(precond, self.handle.remove)  # the hook goes with its SNOpt

    def __call__(self, optimizer, args, kwargs) -> None:
        precond = self._precond()
        if precond is None or optimizer is precond or not self.armed or precond.max_step is None:
            return
        layers = _layers_of(precond, optimizer)
        if layers:
            self.armed = False
            self.last_scale = self.clip(precond, optimizer, layers)
            if precond.last_stats is not None:
                precond.last_stats = dataclasses.replace(precond.last_stats, momentum_scale=self.last_scale)

    @torch.no_grad()
    def clip(self, precond, optimizer, layers) -> float:
        """Scale buffer and gradient of ``layers`` so that the SGD step meets the bound; the factor used."""
        size, momentum, parts = 0.0, 0.0, []
        for layer, group, own in layers:
            state = precond.state[layer.weight]
            tensors = [layer.weight] + ([layer.bias] if layer.bias is not None else [])
            buffers = [optimizer.state.get(p, {}).get("momentum_buffer") for p in tensors]
            m, lr = group["momentum"], group["lr"]
            directions = [sgd_direction(p.grad, b, p, m, group.get("dampening", 0.0), group.get("weight_decay", 0.0),
                                        group.get("nesterov", False)) for p, b in zip(tensors, buffers)]
            d = kfac.as_matrix(directions[0], directions[1] if len(directions) > 1 else None)
            damping = own["eps"] * precond.damping_factor
            size = size + lr ** 2 * kfac.fisher_size(d, state["q_a"], state["q_g"], state["m2"], damping)
            momentum = max(momentum, m)
            parts.append((tensors, buffers, group.get("weight_decay", 0.0)))
        limit = momentum_limit(precond.max_step * self.reference_lr ** 2, momentum)
        size = float(size)
        if not math.isfinite(size) or size <= limit:
            return 1.0
        kappa = math.sqrt(limit / size)
        for tensors, buffers, weight_decay in parts:
            for p, b in zip(tensors, buffers):
                if b is not None:
                    b.mul_(kappa)
                # grad + w·θ becomes κ (grad + w·θ): the whole direction scales by κ
                p.grad.mul_(kappa).add_(p, alpha=(kappa - 1.0) * weight_decay)
        return kappa


def _layers_of(precond, optimizer) -> list:
    """SNOpt's preconditioned layers that ``optimizer`` steps with momentum: ``[(layer, its group, SNOpt's group)]``."""
    groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    out = []
    for layer, own in zip(precond.layers, precond.param_groups):
        group = groups.get(id(layer.weight))
        tensors = [layer.weight] + ([layer.bias] if layer.bias is not None else [])
        if (group is not None and group.get("momentum", 0.0) > 0 and not group.get("maximize", False)
                and "q_a" in precond.state[layer.weight] and all(p.grad is not None for p in tensors)):
            out.append((layer, group, own))
    return out
