"""nodeopt: train neural ODEs well.

``odeint`` is a drop-in for torchdiffeq's with a choice of gradient method
(``gradient="backprop" | "adjoint" | "onecheckpoint" | "checkpoint" | "symplectic" | "exact"``);
``solve`` returns a :class:`Solution` with the values and what the solve cost.

The names below are imported on first use (PEP 562), so that ``import nodeopt`` alone does
not import torch: the command line can install its signal handling before the heavy imports.
"""

import importlib

from .version import __version__

#: The public surface, by the subpackage that defines each name.
_FROM = {
    "gradients": ("odeint", "solve", "odeint_adjoint", "odeint_onecheckpoint", "odeint_checkpoint",
                  "odeint_symplectic_adjoint", "GradientMethod", "Backprop", "Adjoint", "OneCheckpoint", "Checkpoint",
                  "SymplecticAdjoint", "Exact", "CheckpointedStates"),
    "solvers": ("Solution", "Stats", "RungeKutta", "Tableau", "PIController", "IController"),
}
_WHERE = {name: package for package, names in _FROM.items() for name in names}
_SUBPACKAGES = ("solvers", "gradients", "nn", "optim", "data", "tasks", "compat", "cli")

__all__ = ["__version__", *_WHERE]


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value  # later look-ups are plain attribute reads
        return value
    if name in _SUBPACKAGES:  # ``import nodeopt; nodeopt.optim.SNOpt`` works as it did with eager imports
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'nodeopt' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_WHERE})
