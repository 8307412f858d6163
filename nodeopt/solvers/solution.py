"""What a solve returns: the values, the times, and what it cost."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import torch


@dataclass
class Stats:
    """Counts of one solve, forward and backward.

    Attributes:
        nfe: function evaluations of the forward solve (including the
            starting-step estimate).
        n_steps: accepted steps.
        n_rejected: rejected steps.
        nfe_backward: function evaluations the backward pass made without a
            graph (re-solves, recomputed stages); filled in when it runs.
        nvjp_backward: vector–Jacobian products through ``func`` in the
            backward pass; filled in when it runs.
        strategy: how the gradient is computed: the gradient method's name
            (``"symplectic"``, ...); :class:`~nodeopt.Exact` reports what it chose,
            e.g. ``"symplectic-stored+checkpoint"`` (the per-step strategies it used)
            and, when it kept only some step states,
            ``"symplectic; step states checkpointed (1 in 4 kept)"``. Set by the
            forward solve (the plan), and by the backward pass once it ran.
        estimated_peak_bytes: the peak of the tensors the gradient computation
            was estimated to hold, in bytes (:class:`~nodeopt.Exact` only; 0 otherwise).
        compile_seconds: with ``compile=True``, the seconds spent in calls that compiled a
            graph (tracing, code generation and the graph's first run), forward and, once
            it ran, backward; 0 when every graph was already compiled.
        compiled_graphs: the graphs compiled for this solve (0 when all were reused).
    """

    nfe: int = 0
    n_steps: int = 0
    n_rejected: int = 0
    nfe_backward: int = 0
    nvjp_backward: int = 0
    strategy: str = ""
    estimated_peak_bytes: int = 0
    compile_seconds: float = 0.0
    compiled_graphs: int = 0


@dataclass
class Solution:
    """The result of :func:`nodeopt.solve`.

    Attributes:
        values: the state at each time, shaped ``(len(t), *y0.shape)`` (a tuple
            of such for a tuple state), exactly what ``odeint`` returns.
        times: the output times ``t``.
        stats: function evaluations and steps, forward and backward.
    """

    values: Union[torch.Tensor, tuple[torch.Tensor, ...]]
    times: torch.Tensor
    stats: Stats = field(default_factory=Stats)
