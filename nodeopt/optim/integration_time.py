"""Co-optimising the integration time ``t1`` of an ODE block (SNOpt, Liu, Chen & Theodorou 2021, §4).

Treat ``t1`` as a control of the penalised loss ``L̃ = L + (r/2) t1²``. Per
iteration, with ``s = (dL/dt1) / B`` (``B`` the batch size; ``dL/dt1 =
<dL/dy(t1), f(t1, y(t1))>`` comes from the gradient method's time gradient):

    Q_t  = r·t1 + s          (first derivative of L̃ in t1)
    Q_tt = r + s²            (Gauss–Newton second derivative)

both averaged over iterations with momentum ``β``. Under ``torch.distributed``, ``dL/dt1`` is
averaged over the ranks and ``B`` is the global batch, so every rank moves ``t1`` alike. Every ``t1_update_freq``
iterations ``t1`` moves by

    baseline:  δt1 = -η · Q̄_t
    feedback:  δt1 = -η · (Q̄_t + s · <∇_θ L, δθ>) / Q̄_tt

where ``δθ`` is this iteration's change of the block's parameters (the
feedback term is the Gauss–Newton cross derivative ``Q_tθ = s ∇_θ L`` acting on
it), and ``t1`` is kept at or above ``t1_min``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..nn import ODEBlock
from .ranks import world_size

METHODS = ("baseline", "feedback")


class IntegrationTimeOptimizer:
    """Updates ``block.t1`` with the baseline or feedback rule.

    Per iteration: ``loss.backward()``, then :meth:`record` (reads ``dL/dt1`` and,
    on update iterations, the raw gradients and parameters of the block), then
    the optimisers' ``step()``, then :meth:`step`.

    Args:
        block: the :class:`~nodeopt.nn.ODEBlock` whose ``t1`` is optimised.
        method: ``"baseline"`` or ``"feedback"``.
        t1_lr: ``η``. t1_reg: ``r``. t1_update_freq: update every this many iterations.
        momentum: ``β`` of the running averages of ``Q_t`` and ``Q_tt``.
        t1_min: the floor of ``t1``.

    Raises:
        ValueError: for an unknown method or out-of-range hyper-parameters.
    """

    def __init__(self, block: ODEBlock, method: str = "feedback", t1_lr: float = 0.1, t1_reg: float = 1e-3,
                 t1_update_freq: int = 50, momentum: float = 0.99, t1_min: float = 0.1):
        if not isinstance(block, ODEBlock):
            raise TypeError(f"IntegrationTimeOptimizer needs a nodeopt.nn.ODEBlock, got {type(block).__name__}")
        if method not in METHODS:
            raise ValueError(f"method={method!r} is not known; use 'baseline' or 'feedback'")
        for name, value, ok in (("t1_lr", t1_lr, t1_lr > 0), ("t1_reg", t1_reg, t1_reg >= 0),
                                ("momentum", momentum, 0 <= momentum < 1), ("t1_min", t1_min, t1_min > 0)):
            if not (math.isfinite(value) and ok):
                raise ValueError(f"{name} is out of range: got {value!r}")
        if not (t1_update_freq >= 1 and float(t1_update_freq).is_integer()):
            raise ValueError(f"t1_update_freq must be a whole number ≥ 1, got {t1_update_freq!r}")
        block.track_time_gradient = True
        self.block, self.method = block, method
        self.t1_lr, self.t1_reg, self.momentum, self.t1_min = t1_lr, t1_reg, momentum, t1_min
        self.t1_update_freq = int(t1_update_freq)
        self.iteration = 0
        self.q_t: Optional[float] = None
        self.q_tt: Optional[float] = None
        self._scale = 0.0
        self._grad: Optional[torch.Tensor] = None
        self._params: Optional[torch.Tensor] = None

    @property
    def update_iteration(self) -> bool:
        return (self.iteration + 1) % self.t1_update_freq == 0

    @property
    def needs_parameters(self) -> bool:
        """Whether this iteration's :meth:`record` keeps the block's gradient and parameters (feedback updates)."""
        return self.update_iteration and self.method == "feedback"

    def flat_parameters(self) -> torch.Tensor:
        """The block's trainable parameters as one detached vector (for ``record(params_before=...)``)."""
        return self._flat("params")

    def _flat(self, what: str) -> torch.Tensor:
        params = [p for p in self.block.func.parameters() if p.requires_grad]
        if what == "grad":
            return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        return torch.cat([p.detach().reshape(-1) for p in params]).clone()

    def record(self, params_before: Optional[torch.Tensor] = None) -> None:
        """After ``backward()``: fold this iteration's ``Q_t``, ``Q_tt`` into the averages.

        On feedback update iterations it also keeps the block's gradient and its
        parameters (``params_before``, flattened, when the caller kept them from
        before the optimiser's step; by default the current ones, so call this
        before ``optimizer.step()``).
        """
        times = self.block.last_times
        if times is None or times.grad is None:
            raise RuntimeError("no dL/dt1 recorded: call record() after loss.backward() of a training-mode forward "
                               "pass through the block")
        scale = _mean_over_ranks(float(times.grad[-1]), self.block.last_batch_size, times.device)
        t1 = self.block.t1
        q_t, q_tt = self.t1_reg * t1 + scale, self.t1_reg + scale ** 2
        beta = self.momentum
        self.q_t = q_t if self.q_t is None else beta * self.q_t + (1 - beta) * q_t
        self.q_tt = q_tt if self.q_tt is None else beta * self.q_tt + (1 - beta) * q_tt
        self._scale = scale
        if self.needs_parameters:
            self._grad = self._flat("grad")
            self._params = params_before if params_before is not None else self._flat("params")

    def delta(self) -> float:
        """The change of ``t1`` the rule asks for now (after the parameters moved)."""
        if self.q_t is None:
            raise RuntimeError("call record() after backward() before step()")
        if self.method == "baseline":
            return -self.t1_lr * self.q_t
        feedback = 0.0
        if self._params is not None:
            moved = self._flat("params") - self._params
            feedback = self._scale * float(self._grad @ moved)
        return -self.t1_lr * (self.q_t + feedback) / self.q_tt

    def state_dict(self) -> dict:
        """The running averages and the iteration count (``t1`` itself is a buffer of the block)."""
        return dict(iteration=self.iteration, q_t=self.q_t, q_tt=self.q_tt, scale=self._scale)

    def load_state_dict(self, state: dict) -> None:
        self.iteration, self.q_t, self.q_tt, self._scale = (int(state["iteration"]), state["q_t"], state["q_tt"],
                                                            float(state["scale"]))

    def step(self) -> float:
        """After the optimisers' step: on update iterations move ``t1``. Returns ``t1``."""
        if self.update_iteration:
            self.block.t1 = max(self.t1_min, self.block.t1 + self.delta())
            self._grad = self._params = None
        self.iteration += 1
        return self.block.t1


def _mean_over_ranks(grad_t1: float, batch: int, device) -> float:
    """``s = (dL/dt1) / B``: with several ranks, their mean ``dL/dt1`` over the global batch (one message).

    Each rank's loss is the mean over its share, so the mean of the ranks' ``dL/dt1`` is that
    of the whole batch's loss, and the shares add up to the global batch.
    """
    ranks = world_size()
    if ranks == 1:
        return grad_t1 / batch
    both = torch.tensor([grad_t1, float(batch)], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(both)
    return float(both[0]) / ranks / float(both[1])
