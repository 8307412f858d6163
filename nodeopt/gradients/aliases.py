"""The seed libraries' entry points, as aliases of ``odeint`` with a fixed gradient method.

They keep torchdiffeq's ``odeint_adjoint`` signature, so code written for
torchdiffeq or for the symplectic-adjoint reference code switches by import.
"""

from __future__ import annotations

import warnings

from .adjoint import Adjoint
from .api import odeint
from .checkpoint import Checkpoint
from .onecheckpoint import OneCheckpoint
from .symplectic import SymplecticAdjoint


def odeint_adjoint(func, y0, t, *, rtol=1e-7, atol=1e-9, method=None, options=None, adjoint_rtol=None,
                   adjoint_atol=None, adjoint_method=None, adjoint_options=None, adjoint_params=None):
    """``odeint`` with the continuous adjoint (``gradient=Adjoint(...)``), as torchdiffeq's.

    ``adjoint_rtol``, ``adjoint_atol``, ``adjoint_method`` and ``adjoint_options``
    (e.g. ``{"norm": "seminorm"}``) configure the backward solve.
    """
    gradient = Adjoint(rtol=adjoint_rtol, atol=adjoint_atol, method=adjoint_method, options=adjoint_options)
    return odeint(func, y0, t, rtol=rtol, atol=atol, method=method, options=options, gradient=gradient,
                  adjoint_params=adjoint_params)


def _exact_alias(gradient_cls, doc: str):
    def alias(func, y0, t, *, rtol=1e-7, atol=1e-9, method=None, options=None, adjoint_rtol=None,
              adjoint_atol=None, adjoint_method=None, adjoint_options=None, adjoint_params=None):
        unused = {k: v for k, v in dict(adjoint_rtol=adjoint_rtol, adjoint_atol=adjoint_atol,
                                         adjoint_method=adjoint_method, adjoint_options=adjoint_options).items()
                  if v is not None}
        if unused:
            warnings.warn(f"{gradient_cls.name!r} replays the forward steps exactly and has no backward solve; "
                          f"{sorted(unused)} have no effect", stacklevel=2)
        return odeint(func, y0, t, rtol=rtol, atol=atol, method=method, options=options,
                      gradient=gradient_cls(), adjoint_params=adjoint_params)

    alias.__doc__ = doc
    return alias


odeint_onecheckpoint = _exact_alias(OneCheckpoint, "``odeint`` with ``gradient=\"onecheckpoint\"``.")
odeint_checkpoint = _exact_alias(Checkpoint, "``odeint`` with ``gradient=\"checkpoint\"`` (ACA).")
odeint_symplectic_adjoint = _exact_alias(SymplecticAdjoint, "``odeint`` with ``gradient=\"symplectic\"``.")
for _f, _name in ((odeint_onecheckpoint, "odeint_onecheckpoint"), (odeint_checkpoint, "odeint_checkpoint"),
                  (odeint_symplectic_adjoint, "odeint_symplectic_adjoint")):
    _f.__name__ = _f.__qualname__ = _name
