"""PNG plots of run directories (matplotlib, an optional extra, imported lazily).

* ``curves.png`` — training loss and the evaluated metric against training time and
  against iterations; several runs overlay in one figure (``nodeopt plot``), one pair of
  rows per metric when the runs measure different ones.
* ``density.png`` — for a 2-D density task, the learned density beside the data.

Every axis carries numbers, a logarithmic one included. The files are written with
:func:`~nodeopt.data.files.atomic_write`, so they get the user's umask like any other file.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..data.files import atomic_write
from .rundir import CheckpointError, RunDir, read_metrics
from .tasks import TASKS

logger = logging.getLogger(__name__)


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need the optional package 'matplotlib': pip install matplotlib "
                          "(or pip install 'nodeopt[cli]')") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> None:
    with atomic_write(path) as f:  # a new file: mode 0o666 less the user's umask, like any other
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")


#: How each task's metric is compared, for metric names that a run directory does not qualify.
_HIGHER_IS_BETTER = {task.metric: task.higher_is_better for task in TASKS.values()}


def run_metric(run) -> tuple[str, Optional[bool]]:
    """The name of a run directory's metric and whether higher is better (None: unknown).

    Read from ``summary.json`` (``metric_name``, ``higher_is_better``), else from ``config.json``
    (``data.metric``); ``("metric", None)`` for a run directory that has neither yet.
    """
    summary = RunDir(run).read_summary() or {}
    if summary.get("metric_name"):
        return summary["metric_name"], summary.get("higher_is_better")
    try:
        name = RunDir(run).read_config().get("data", {}).get("metric")
    except (CheckpointError, AttributeError):
        name = None
    return (name, _HIGHER_IS_BETTER.get(name)) if name else ("metric", None)


def plot_curves(runs: Sequence, out, labels: Optional[Sequence[str]] = None, metric_name: Optional[str] = None,
                higher_is_better: Optional[bool] = None) -> Path:
    """Loss and metric of each run directory against training time and iterations, in one PNG.

    See :func:`curves_figure` for the layout and the arguments.
    """
    plt = _pyplot()
    fig = curves_figure(runs, labels=labels, metric_name=metric_name, higher_is_better=higher_is_better)
    try:
        _save(fig, out)
    finally:
        plt.close(fig)
    return Path(out)


def curves_figure(runs: Sequence, labels: Optional[Sequence[str]] = None, metric_name: Optional[str] = None,
                  higher_is_better: Optional[bool] = None):
    """The matplotlib figure of :func:`plot_curves` (the caller closes it).

    Two rows of two panels, training loss above the metric, against training time (evaluation
    excluded) on the left and iterations on the right. Runs whose metrics differ (test accuracy
    of a classifier, test NLL of a density) are not drawn on one axis: each metric gets its own
    two rows, holding the runs it measures. The loss axis is logarithmic when no loss is negative
    and the positive ones span a decade or more, else linear (an NLL can be negative).

    Args:
        runs: run directories (see :mod:`nodeopt.tasks.rundir`).
        labels: one legend label per run (default: the folder names).
        metric_name, higher_is_better: the metric of every run; by default each run's own
            (:func:`run_metric`).
    """
    plt = _pyplot()
    names = [labels[k] if labels else Path(run).name for k, run in enumerate(runs)]
    if metric_name is None:
        metrics = [run_metric(run) for run in runs]
    else:
        if higher_is_better is None:
            higher_is_better = _HIGHER_IS_BETTER.get(metric_name)
        metrics = [(metric_name, higher_is_better)] * len(runs)
    groups: dict = {}  # metric name -> indices of its runs, in order of first appearance
    for k, (name, _) in enumerate(metrics):
        groups.setdefault(name, []).append(k)
    fig, axes = plt.subplots(2 * len(groups), 2, figsize=(10, 7 * len(groups)), squeeze=False)
    for g, (name, members) in enumerate(groups.items()):
        loss_axes, metric_axes = axes[2 * g], axes[2 * g + 1]
        losses = []
        for k in members:
            rows = read_metrics(runs[k])
            style = dict(label=names[k], color=f"C{k % 10}")
            it, sec = [r["iteration"] for r in rows], [r["train_seconds"] for r in rows]
            loss = [_finite_or_nan(r["loss"]) for r in rows]
            losses += loss
            ev = [(r["iteration"], r["train_seconds"], _finite_or_nan(r["metric"])) for r in rows
                  if r["metric"] is not None]
            loss_axes[0].plot(sec, loss, lw=0.8, **style)
            loss_axes[1].plot(it, loss, lw=0.8, **style)
            metric_axes[0].plot([e[1] for e in ev], [e[2] for e in ev], marker=".", **style)
            metric_axes[1].plot([e[0] for e in ev], [e[2] for e in ev], marker=".", **style)
        better = {metrics[k][1] for k in members} - {None}
        for ax in loss_axes:
            ax.set_ylabel("training loss")
            if len(groups) > 1:
                ax.set_title(f"runs measured by {name}", fontsize=10)
        for ax in metric_axes:
            ax.set_ylabel(name + (", lower is better" if better == {False} else ""))
        for ax in (loss_axes[0], metric_axes[0]):
            ax.set_xlabel("training time (s, evaluation excluded)")
        for ax in (loss_axes[1], metric_axes[1]):
            ax.set_xlabel("iteration")
        _loss_scale(loss_axes, losses)
        loss_axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def _finite_or_nan(value: Optional[float]) -> float:
    """A number to draw: a diverged run's inf (or a missing cell) becomes a gap, not an axis to infinity."""
    return value if value is not None and math.isfinite(value) else math.nan


def _loss_scale(axes, values) -> None:
    """A log loss axis when no loss is negative and the positive ones span a decade or more, else linear.

    A loss of exactly zero (a cross-entropy that underflowed) drops to the bottom edge of a log
    axis. A log axis that shows fewer than two powers of ten also labels some of its minor
    ticks (2, 3, 4 and 6 times a power of ten), so that it always carries numbers to read.
    """
    finite = [v for v in values if math.isfinite(v)]
    positive = [v for v in finite if v > 0]
    if not positive or min(finite) < 0 or max(positive) < 10 * min(positive):
        return  # linear, matplotlib's default
    from matplotlib.ticker import LogFormatterSciNotation

    for ax in axes:
        ax.set_yscale("log")
        lo, hi = sorted(ax.get_ylim())  # autoscaled to the data, with margins
        powers = math.floor(math.log10(hi)) - math.ceil(math.log10(lo)) + 1
        if powers < 2:
            ax.yaxis.set_minor_formatter(LogFormatterSciNotation(labelOnlyBase=False, minor_thresholds=(3, 0.4)))


@torch.no_grad()
def plot_density_2d(model, data: torch.Tensor, out, resolution: int = 100) -> Path:
    """The model's density on a grid covering the data, beside a scatter of the data."""
    plt = _pyplot()
    lo, hi = data.min(0).values - 0.5, data.max(0).values + 0.5
    xs = torch.linspace(float(lo[0]), float(hi[0]), resolution)
    ys = torch.linspace(float(lo[1]), float(hi[1]), resolution)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        logp = torch.cat([model(chunk.to(device)).cpu() for chunk in grid.split(2000)])
    finally:
        model.train(was_training)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.3))
    axes[0].scatter(data[:, 0].cpu(), data[:, 1].cpu(), s=1, alpha=0.4)
    axes[0].set_title("data")
    axes[1].imshow(logp.exp().reshape(resolution, resolution).numpy(), origin="lower",
                   extent=(float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])), aspect="auto")
    axes[1].set_title("learned density")
    for ax in axes:
        ax.set_xlim(float(lo[0]), float(hi[0]))
        ax.set_ylim(float(lo[1]), float(hi[1]))
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)
    return Path(out)
