"""PNG plots of run directories (matplotlib, an optional extra, imported lazily).

* ``curves.png`` — training loss and the evaluated metric against training time and
  against iterations; several runs overlay in one figure (``nodeopt plot``).
* ``density.png`` — for a 2-D density task, the learned density beside the data.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..data.files import atomic_write
from .rundir import read_metrics

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
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")


def plot_curves(runs: Sequence, out, labels: Optional[Sequence[str]] = None, metric_name: str = "metric") -> Path:
    """Loss and metric of each run directory against training time and iterations, in one PNG."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    for k, run in enumerate(runs):
        rows = read_metrics(run)
        label = labels[k] if labels else Path(run).name
        it = [r["iteration"] for r in rows]
        sec = [r["train_seconds"] for r in rows]
        loss = [r["loss"] for r in rows]
        ev = [(r["iteration"], r["train_seconds"], r["metric"]) for r in rows if r["metric"] is not None]
        axes[0, 0].plot(sec, loss, label=label, lw=0.8)
        axes[0, 1].plot(it, loss, label=label, lw=0.8)
        axes[1, 0].plot([e[1] for e in ev], [e[2] for e in ev], marker=".", label=label)
        axes[1, 1].plot([e[0] for e in ev], [e[2] for e in ev], marker=".", label=label)
    for ax in axes[0]:
        ax.set_ylabel("training loss")
        ax.set_yscale("symlog", linthresh=1e-2)
    for ax in axes[1]:
        ax.set_ylabel(metric_name)
    for ax in axes[:, 0]:
        ax.set_xlabel("training time (s, evaluation excluded)")
    for ax in axes[:, 1]:
        ax.set_xlabel("iteration")
    axes[0, 1].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)
    return Path(out)


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
