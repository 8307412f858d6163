"""Layer 4: second-order training of neural ODEs."""

from .capture import CurvatureCapture
from .integration_time import IntegrationTimeOptimizer
from .snopt import SNOpt
from .stats import SNOptStats

__all__ = ["SNOpt", "SNOptStats", "CurvatureCapture", "IntegrationTimeOptimizer"]
