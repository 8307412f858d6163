"""Layer 3: neural-ODE modules."""

from .cnf import CNF
from .odeblock import ODEBlock

__all__ = ["ODEBlock", "CNF"]
