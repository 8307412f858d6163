"""Layer 5: the papers' models, their tasks, and one training loop with run directories."""

from .checkpoint import rank_seed
from .loop import Budget, Progress, Trainer
from .models import FFJORD, ODERNN, ConvODENet
from .optimizers import OPTIMIZERS, make_optimizers
from .run import first_problem, load_in_turn, resume, summarize
from .rundir import CheckpointError, RunDir, RunDirBusy, Summary, first_line, read_metrics, versions
from .tasks import TASKS, DensityEstimation, ImageClassification, Task, TimeSeriesClassification, make_task

__all__ = ["Trainer", "Budget", "Progress", "ConvODENet", "ODERNN", "FFJORD", "OPTIMIZERS", "make_optimizers",
           "RunDir", "CheckpointError", "RunDirBusy", "first_line", "Summary", "read_metrics", "versions", "TASKS", "Task",
           "ImageClassification", "TimeSeriesClassification", "DensityEstimation", "make_task", "load_in_turn",
           "first_problem", "resume", "summarize", "rank_seed"]
