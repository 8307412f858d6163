"""nodeopt: train neural ODEs well.

``odeint`` is a drop-in for torchdiffeq's with a choice of gradient method;
``solve`` returns a :class:`Solution` with the values and what the solve cost.
"""

from .gradients import GradientMethod, odeint, solve
from .solvers import PIController, IController, RungeKutta, Solution, Stats, Tableau

__version__ = "0.1.0"

__all__ = ["odeint", "solve", "Solution", "Stats", "GradientMethod", "RungeKutta", "Tableau",
           "PIController", "IController"]
