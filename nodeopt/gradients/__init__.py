"""Layer 2: how the backward pass of a solve is computed, and the public ``odeint``."""

from . import backprop  # noqa: F401  (registers "backprop")
from .api import odeint, solve
from .backprop import Backprop
from .base import GRADIENTS, GradientMethod, get_gradient

__all__ = ["odeint", "solve", "GradientMethod", "Backprop", "GRADIENTS", "get_gradient"]
