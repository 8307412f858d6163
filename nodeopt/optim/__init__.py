"""Layer 4: second-order training of neural ODEs."""

from .capture import CurvatureCapture
from .snopt import SNOpt

__all__ = ["SNOpt", "CurvatureCapture"]
