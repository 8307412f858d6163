"""Layer 4: second-order training of neural ODEs."""

from .capture import CurvatureCapture
from .integration_time import IntegrationTimeOptimizer
from .snopt import SNOpt

__all__ = ["SNOpt", "CurvatureCapture", "IntegrationTimeOptimizer"]
