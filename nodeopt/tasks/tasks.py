"""A task is a model, its data and its metric: image classification, time series, density estimation.

Every task holds its :class:`~nodeopt.data.Dataset` on one device, builds its
model from explicit arguments, computes the training loss of a batch of
training indices, and evaluates its metric on a split:

* ``image`` and ``timeseries``: cross-entropy; metric test accuracy (a fraction).
* ``density``: negative log-likelihood in nats; metric test NLL (nats).
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from ..data import Dataset
from ..nn import ODEBlock
from .models import FFJORD, ODERNN, ConvODENet

EVAL_BATCH = 1000


class Task:
    """Base class: see the module docstring. ``block_options`` go to every ODEBlock of the model."""

    kind = ""
    metric = ""
    higher_is_better = True

    def __init__(self, dataset: Dataset, device: torch.device, train_fraction: float = 1.0):
        self.dataset = dataset
        self.device = torch.device(device)
        self.train_rows = _subset(len(dataset.x_train), train_fraction)
        self.x_train = dataset.x_train[self.train_rows].to(self.device)
        self.y_train = None if dataset.y_train is None else dataset.y_train[self.train_rows].to(self.device)

    @property
    def n_train(self) -> int:
        return len(self.x_train)

    def build_model(self, **options) -> nn.Module:
        raise NotImplementedError

    def loss(self, model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def split(self, name: str):
        """``(x, y)`` of ``"train"``, ``"val"`` or ``"test"`` on the task's device."""
        x, y = getattr(self.dataset, f"x_{name}"), getattr(self.dataset, f"y_{name}")
        if x is None:
            raise ValueError(f"dataset {self.dataset.name!r} has no {name!r} split")
        return x.to(self.device), None if y is None else y.to(self.device)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str = "test", seed: int = 0, world=None) -> float:
        """The metric on a split, in evaluation mode, in chunks of ``EVAL_BATCH``.

        Randomness inside the model (Hutchinson's noise) is drawn from ``seed`` under a
        forked RNG, so an evaluation is repeatable and leaves training's random stream as it was.
        With a ``world`` of several processes (:class:`~nodeopt.tasks.distributed.World`), each
        rank evaluates a contiguous ``1/size`` of the split and the sums are added over the ranks
        (a collective: every rank must call it).
        """
        was_training = model.training
        model.eval()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed + (world.rank if world is not None else 0))
            return self._evaluate(model, split, was_training, world)

    def _evaluate(self, model, split, was_training, world) -> float:
        try:
            x, y = self.split(split)
            n = len(x)
            rank, size = (world.rank, world.size) if world is not None else (0, 1)
            start, stop = n * rank // size, n * (rank + 1) // size
            total = 0.0
            for i in range(start, stop, EVAL_BATCH):
                idx = torch.arange(i, min(i + EVAL_BATCH, stop), device=self.device)
                total += float(self.metric_sum(model, x, y, idx, split))
            if world is not None:
                total = world.all_sum([total], self.device)[0]
            return total / n
        finally:
            model.train(was_training)

    def metric_sum(self, model, x, y, idx, split) -> torch.Tensor:
        raise NotImplementedError

    def better(self, a: float, b: float) -> bool:
        """Whether metric ``a`` is better than ``b``."""
        return a > b if self.higher_is_better else a < b

    def describe(self) -> dict:
        d = self.dataset
        return dict(task=self.kind, dataset=d.name, sizes=d.sizes, train_rows_used=self.n_train, shape=list(d.shape), num_classes=d.num_classes,
                    metric=self.metric, source=list(d.source))


class ImageClassification(Task):
    """Images ``(N, C, H, W)``: a :class:`ConvODENet`."""

    kind, metric = "image", "test accuracy"

    def build_model(self, width: int = 64, **block) -> nn.Module:
        channels, height = self.dataset.shape[0], self.dataset.shape[1]
        small = height < 16  # 8×8 digits: keep the resolution, one downsampling
        return ConvODENet(channels, self.dataset.num_classes, width=width, downsample=1 if small else 2,
                          first_padding=1 if small else 0, **block).to(self.device)

    def loss(self, model, idx):
        return F.cross_entropy(model(self.x_train[idx]), self.y_train[idx])

    def metric_sum(self, model, x, y, idx, split):
        return (model(x[idx]).argmax(1) == y[idx]).sum()


class TimeSeriesClassification(Task):
    """Series ``(N, length, channels)`` observed at times 0, 1, …: an :class:`ODERNN`."""

    kind, metric = "timeseries", "test accuracy"

    def __init__(self, dataset: Dataset, device: torch.device, train_fraction: float = 1.0):
        super().__init__(dataset, device, train_fraction)
        lengths = dataset.info.get("lengths", {})
        full = {s: torch.full((len(getattr(dataset, f"x_{s}")),), dataset.shape[0], dtype=torch.int64)
                for s in ("train", "val", "test") if getattr(dataset, f"x_{s}") is not None}
        self.lengths = {s: lengths.get(s, full[s]).to(self.device) for s in full}
        self.lengths["train"] = self.lengths["train"][self.train_rows.to(self.device)]

    def build_model(self, hidden: int = 32, field_width: int = 64, field_layers: int = 4, **block) -> nn.Module:
        return ODERNN(self.dataset.dim, self.dataset.num_classes, hidden=hidden, field_width=field_width,
                      field_layers=field_layers, **block).to(self.device)

    def loss(self, model, idx):
        return F.cross_entropy(model(self.x_train[idx], self.lengths["train"][idx]), self.y_train[idx])

    def metric_sum(self, model, x, y, idx, split):
        return (model(x[idx], self.lengths[split][idx]).argmax(1) == y[idx]).sum()


class DensityEstimation(Task):
    """Tabular data ``(N, dim)``: an :class:`FFJORD` flow; metric test NLL in nats."""

    kind, metric, higher_is_better = "density", "test NLL (nats)", False

    def build_model(self, hidden=(64, 64), blocks: int = 1, activation: str = "softplus",
                    divergence: str = "exact", **block) -> nn.Module:
        return FFJORD(self.dataset.dim, hidden=tuple(hidden), blocks=blocks, activation=activation,
                      divergence=divergence, **block).to(self.device)

    def loss(self, model, idx):
        return -model(self.x_train[idx]).mean()

    def metric_sum(self, model, x, y, idx, split):
        return -model(x[idx]).sum()  # the CNF field differentiates inside itself, even under no_grad


TASKS = {"image": ImageClassification, "timeseries": TimeSeriesClassification, "density": DensityEstimation}


def _subset(n: int, fraction: float) -> torch.Tensor:
    """Row indices of the training set: all of them, or a fixed random ``fraction`` (seed 0)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"train_fraction must be in (0, 1], got {fraction!r}")
    if fraction == 1:
        return torch.arange(n)
    keep = max(1, int(fraction * n))
    return torch.randperm(n, generator=torch.Generator().manual_seed(0))[:keep].sort().values


def make_task(kind: str, dataset: Dataset, device, train_fraction: float = 1.0) -> Task:
    """The task of ``kind`` on ``dataset`` (training on ``train_fraction`` of its training set)."""
    if kind not in TASKS:
        raise ValueError(f"unknown task {kind!r}; choose one of {', '.join(TASKS)}")
    if dataset.kind != kind:
        raise ValueError(f"dataset {dataset.name!r} is a {dataset.kind} dataset, not {kind}")
    return TASKS[kind](dataset, device, train_fraction)


def ode_blocks(model: nn.Module) -> list[ODEBlock]:
    return [m for m in model.modules() if isinstance(m, ODEBlock)]


def solve_counts(model: nn.Module) -> tuple[int, int]:
    """Forward and backward evaluations of every ODE solve since the blocks' last ``reset_stats()``."""
    fwd = bwd = 0
    for block in ode_blocks(model):
        s = block.total_stats()
        fwd += s.nfe
        bwd += s.nfe_backward + s.nvjp_backward
    return fwd, bwd
