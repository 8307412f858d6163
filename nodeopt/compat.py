"""The names and signatures of the original SNOpt code, on nodeopt.

Code written against the original library runs after changing only its
imports::

    from nodeopt import odeint_adjoint as odesolve          # was: torchdiffeq
    from nodeopt.compat import SNOpt, ODEFuncBase, ODEBlock  # was: snopt
    from nodeopt.compat import Options as dict               # was: easydict

The options object ``opt`` carries what the original read from it: ``tol``,
``ode_solver``, ``snopt_step_size``, ``use_adaptive_t1`` (with ``adaptive_t1``,
``t1_lr``, ``t1_reg``, ``t1_update_freq``) and, for CNFs, ``divergence_type``.
Collection needs no patched solver: every nodeopt gradient method reports its
differentiated evaluations (``nodeopt.gradients.observe``).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .nn import CNF
from .nn.odeblock import ODEBlock as _Block
from .optim import CurvatureCapture
from .optim import IntegrationTimeOptimizer as _TimeOptimizer
from .optim.snopt import LAYER_TYPES
from .optim.snopt import SNOpt as _SNOpt


class Options(dict):
    """A dict whose keys are also attributes (what the original took from ``easydict``)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value


class ODEFuncBase(nn.Module):
    """A vector field: subclass it and implement ``F(t, x)``.

    Args:
        opt: the options object.
    """

    def __init__(self, opt):
        super().__init__()
        self.opt = opt
        self.nfe = 0

    def F(self, t, x):
        raise NotImplementedError("implement F(t, x) in your ODEFuncBase subclass")

    def forward(self, t, x):
        self.nfe += 1
        return self.F(t, x)


class CNFFuncBase(ODEFuncBase):
    """A CNF vector field: implement ``F(t, z)``; the state is ``(z, logp)``.

    The divergence is ``opt.divergence_type`` (``"exact"``, ``"rademacher"`` or
    ``"gaussian"``); call :meth:`reset_sample_e` between batches for a fresh
    Hutchinson sample.
    """

    def __init__(self, opt):
        super().__init__(opt)
        self._cnf = CNF(_Forward(self), divergence=opt.get("divergence_type", "exact"))

    def reset_sample_e(self, divergence_type=None):
        if divergence_type:
            self._cnf.divergence = divergence_type
        self._cnf.reset_noise()

    def forward(self, t, states):
        self.nfe += 1
        return self._cnf(t, states)


class _Forward(nn.Module):
    """``F`` of a :class:`CNFFuncBase` as a module-free callable (no parameter registered twice)."""

    def __init__(self, owner: CNFFuncBase):
        super().__init__()
        object.__setattr__(self, "owner", owner)

    def forward(self, t, z):
        return self.owner.F(t, z)


class ODEBlock(nn.Module):
    """The original's block: ``ODEBlock(opt, odefunc, odesolve, integration_time)``.

    Args:
        opt: options (``tol``, ``ode_solver``; ``use_adaptive_t1`` and its settings).
        odefunc: the vector field.
        odesolve: an ``odeint``-shaped function, e.g. ``nodeopt.odeint_adjoint`` or
            ``nodeopt.odeint_symplectic_adjoint``.
        integration_time: ``[t0, t1]``.
        is_clf_problem: return only the final state.
    """

    def __init__(self, opt, odefunc: nn.Module, odesolve: Callable, integration_time, is_clf_problem=False,
                 **kwargs):
        super().__init__()
        self.opt = opt
        self.odefunc = odefunc
        self.odesolve = odesolve
        self.is_clf_problem = is_clf_problem
        self._params_before = None
        ts = torch.as_tensor(integration_time, dtype=torch.float64)
        self.block = _Block(odefunc, t1=float(ts[-1]), t0=float(ts[0]), rtol=kwargs.get("rtol", opt.tol),
                            atol=kwargs.get("atol", opt.tol), method=kwargs.get("method", opt.ode_solver),
                            return_all=True)
        if opt.get("use_adaptive_t1", False):
            self.t1_optim = _TimeOptimizer(self.block, method=opt.adaptive_t1, t1_lr=opt.t1_lr, t1_reg=opt.t1_reg,
                                           t1_update_freq=opt.t1_update_freq)

    @property
    def ts(self) -> torch.Tensor:
        return self.block.times

    @property
    def t1(self) -> torch.Tensor:
        return self.block.times[-1]

    @property
    def nfe(self) -> int:
        return self.odefunc.nfe

    @nfe.setter
    def nfe(self, value: int) -> None:
        self.odefunc.nfe = value

    def forward(self, x, ts=None):
        b = self.block  # holds the times and tolerances; the solve itself goes through odesolve
        t = b.solve_times(ts)
        out = self.odesolve(self.odefunc, x, t, rtol=b.rtol, atol=b.atol, method=b.method)
        b.remember(x, t)
        if self.training and hasattr(self, "t1_optim"):
            # Only the feedback rule's update iterations read them (a copy of every parameter).
            self._params_before = self.t1_optim.flat_parameters() if self.t1_optim.needs_parameters else None
        if self.is_clf_problem:
            out = tuple(o[-1] for o in out) if isinstance(out, tuple) else out[-1]
        return out

    def t1_train_itr_setup(self, train_it: int) -> None:
        self.t1_optim.iteration = train_it

    def update_t1(self) -> float:
        """Record this iteration's ``dL/dt1`` and move ``t1`` on update iterations (call after ``optim.step()``).

        The feedback rule uses the gradient the optimiser stepped with (after
        SNOpt's preconditioning, where the original took the raw one) and the
        parameters as they were at the forward pass.
        """
        self.t1_optim.record(params_before=self._params_before)
        return self.t1_optim.step()


class SNOpt(_SNOpt):
    """``SNOpt(net, eps, update_freq, alpha, full_precond)`` for a net with ``odes`` and ``ode_mods``."""

    def __init__(self, net: nn.Module, eps: float = 0.05, update_freq: int = 100, alpha: float = 0.75,
                 full_precond: bool = False, **kwargs):
        if not hasattr(net, "ode_mods"):
            raise ValueError("the original SNOpt interface needs net.ode_mods (the modules of the net's ODEs)")
        ode_layers = [m for m in net.ode_mods if isinstance(m, LAYER_TYPES)]
        step_size = kwargs.pop("snopt_step_size", None)
        if step_size is None:
            odes = getattr(net, "odes", [])
            step_size = odes[0].opt.get("snopt_step_size", 0.01) if odes else 0.01
        super().__init__(net, eps=eps, update_freq=update_freq, alpha=alpha, full_precond=full_precond,
                         snopt_step_size=step_size, ode_layers=ode_layers, **kwargs)


class SNOptAdjointCollector(CurvatureCapture):
    """Gathers Kronecker factors of an ODE function's layers (a context manager).

    The original needed it inside a patched torchdiffeq; here it is an ordinary
    :class:`~nodeopt.optim.CurvatureCapture` of ``odefunc``'s layers that works
    with every gradient method.
    """

    def __init__(self, odefunc: nn.Module):
        opt = getattr(odefunc, "opt", {}) or {}
        super().__init__([m for m in odefunc.modules() if isinstance(m, LAYER_TYPES)],
                         step_size=opt.get("snopt_step_size", 0.01))


IntegrationTimeOptimizer = _TimeOptimizer

__all__ = ["Options", "ODEFuncBase", "CNFFuncBase", "ODEBlock", "SNOpt", "SNOptAdjointCollector",
           "IntegrationTimeOptimizer"]
