"""Layer 3: neural-ODE modules."""

from .odeblock import ODEBlock

__all__ = ["ODEBlock"]
