"""Layer 5: the papers' models, their tasks, and one training loop with run directories."""

from .loop import Budget, Progress, Trainer
from .models import FFJORD, ODERNN, ConvODENet
from .optimizers import OPTIMIZERS, make_optimizers
from .rundir import CheckpointError, RunDir, read_metrics
from .tasks import TASKS, DensityEstimation, ImageClassification, Task, TimeSeriesClassification, make_task

__all__ = ["Trainer", "Budget", "Progress", "ConvODENet", "ODERNN", "FFJORD", "OPTIMIZERS", "make_optimizers",
           "RunDir", "CheckpointError", "read_metrics", "TASKS", "Task", "ImageClassification",
           "TimeSeriesClassification", "DensityEstimation", "make_task"]
