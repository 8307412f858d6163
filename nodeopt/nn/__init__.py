"""Layer 3: neural-ODE modules and the vector fields they integrate."""

from .cnf import CNF
from .layers import ACTIVATIONS, ConcatConv2d, ConcatSquashLinear, ConvField, MLPField, SquashField
from .odeblock import ODEBlock

__all__ = ["ODEBlock", "CNF", "ConcatConv2d", "ConvField", "MLPField", "ConcatSquashLinear", "SquashField",
           "ACTIVATIONS"]
