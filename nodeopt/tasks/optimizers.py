"""The three optimisers of the experiments: ``adam``, ``sgd`` and ``snopt`` (SNOpt in front of SGD)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..nn import ODEBlock
from ..optim import SNOpt

OPTIMIZERS = ("adam", "sgd", "snopt")


def make_optimizers(name: str, model: nn.Module, *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                    lr2: Optional[float] = None, snopt_eps: float = 0.05, snopt_freq: int = 100,
                    snopt_step_size: float = 0.01, full_precond: bool = True):
    """The optimisers of one run and SNOpt's preconditioner (None unless ``name == "snopt"``).

    Args:
        name: ``"adam"``, ``"sgd"`` or ``"snopt"``.
        lr, momentum, weight_decay: of the named optimiser (momentum: SGD and SNOpt's SGD only).
        lr2: when given, only the ODE blocks' parameters use the named optimiser, and every
            other parameter uses ``Adam(lr2, weight_decay)`` (as the SNOpt code's time-series
            experiments; SNOpt then preconditions the ODE layers only).
        snopt_eps, snopt_freq, snopt_step_size, full_precond: SNOpt's ``eps``,
            ``update_freq``, ``snopt_step_size`` and ``full_precond``.

    Returns:
        ``(optimizers, precond)``: a list of ``torch.optim`` optimisers and an SNOpt or None.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimiser {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    params = [p for p in model.parameters() if p.requires_grad]
    second = []
    if lr2 is not None:
        ode = {id(p) for m in model.modules() if isinstance(m, ODEBlock) for p in m.parameters()}
        second = [p for p in params if id(p) not in ode]
        params = [p for p in params if id(p) in ode]
    if name == "adam":
        main = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    else:
        main = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    optimizers = [main] + ([torch.optim.Adam(second, lr=lr2, weight_decay=weight_decay)] if second else [])
    precond = None
    if name == "snopt":
        precond = SNOpt(model, eps=snopt_eps, update_freq=snopt_freq, full_precond=full_precond and lr2 is None,
                        snopt_step_size=snopt_step_size, lr=lambda: main.param_groups[0]["lr"])
    return optimizers, precond
