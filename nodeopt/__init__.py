"""nodeopt: train neural ODEs well.

``odeint`` is a drop-in for torchdiffeq's with a choice of gradient method
(``gradient="backprop" | "adjoint" | "onecheckpoint" | "checkpoint" | "symplectic" | "exact"``);
``solve`` returns a :class:`Solution` with the values and what the solve cost.
"""

from .gradients import (Adjoint, Backprop, Checkpoint, CheckpointedStates, Exact, GradientMethod, OneCheckpoint,
                        SymplecticAdjoint, odeint, odeint_adjoint, odeint_checkpoint, odeint_onecheckpoint,
                        odeint_symplectic_adjoint, solve)
from .solvers import IController, PIController, RungeKutta, Solution, Stats, Tableau
from .version import __version__

__all__ = ["__version__", "odeint", "solve", "odeint_adjoint", "odeint_onecheckpoint", "odeint_checkpoint",
           "odeint_symplectic_adjoint", "Solution", "Stats", "GradientMethod", "Backprop", "Adjoint",
           "OneCheckpoint", "Checkpoint", "SymplecticAdjoint", "Exact", "CheckpointedStates", "RungeKutta", "Tableau",
           "PIController", "IController"]
