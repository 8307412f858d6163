"""Layer 1: Runge–Kutta tableaux as data, one generic step, step control and the loop."""

from .control import IController, PIController
from .loop import Trajectory
from .methods import (METHODS, AdaptiveHeun, Bosh3, Dopri5, Dopri8, Euler, Fehlberg2, Heun2, Heun3, Midpoint,
                      RK4, RK38, RungeKutta, Tsit5, get_method)
from .solution import Solution, Stats
from .tableau import Tableau

__all__ = ["Tableau", "RungeKutta", "METHODS", "get_method", "PIController", "IController", "Trajectory",
           "Solution", "Stats", "Dopri5", "Dopri8", "Tsit5", "Bosh3", "Fehlberg2", "AdaptiveHeun", "Euler",
           "Midpoint", "Heun2", "Heun3", "RK4", "RK38"]
