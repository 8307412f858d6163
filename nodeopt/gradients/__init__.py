"""Layer 2: how the backward pass of a solve is computed, and the public ``odeint``."""

from .adjoint import Adjoint
from .aliases import odeint_adjoint, odeint_checkpoint, odeint_onecheckpoint, odeint_symplectic_adjoint
from .api import odeint, solve
from .backprop import Backprop
from .base import GRADIENTS, GradientMethod, get_gradient
from .checkpoint import Checkpoint
from .checkpointed import CheckpointedStates
from .exact import Exact
from .onecheckpoint import OneCheckpoint
from .symplectic import SymplecticAdjoint

__all__ = ["odeint", "solve", "odeint_adjoint", "odeint_onecheckpoint", "odeint_checkpoint",
           "odeint_symplectic_adjoint", "GradientMethod", "Backprop", "Adjoint", "OneCheckpoint", "Checkpoint",
           "SymplecticAdjoint", "Exact", "CheckpointedStates", "GRADIENTS", "get_gradient"]
