"""The run directory: the one interface between a training run and whatever reads it.

Files (all written by :class:`RunDir`):

* ``config.json`` — every resolved setting of the run (task, dataset and its sizes as
  read, model, optimiser, gradient method, solver, number of processes, versions, git commit).

Under torchrun rank 0 alone writes these files (see :mod:`nodeopt.tasks.distributed`).
* ``metrics.csv`` — one row per training iteration, flushed as it is written, columns
  ``COLUMNS``. ``metric`` is filled on evaluation iterations only (test accuracy as
  a fraction, or test NLL in nats); ``train_seconds`` excludes evaluation.
* ``checkpoint.pt`` — everything needed to continue (model state under ``"model"``,
  the optimisers', SNOpt's and the integration-time optimiser's state, progress, and the
  RNG state of every process: ``rng_cpu_ranks``, ``world_size``). Written to a temporary file and renamed, so it is always whole; read
  with ``torch.load(weights_only=True)``, so loading never runs code from the file.
* ``summary.json`` — the final (or latest) result of the run: the fields of :class:`Summary`
  (among them ``stopped``, why the run ended, and ``higher_is_better``, how to compare its metric).
* ``*.png`` — plots (see :mod:`nodeopt.tasks.plots`).

On resume the rows of ``metrics.csv`` after the checkpoint's iteration (work that
the checkpoint does not hold, and that will be redone) are dropped, so that no row
is lost or duplicated.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import platform
import subprocess
from pathlib import Path
from typing import Optional

import numpy
import torch

from ..data.files import atomic_write
from ..version import __version__

COLUMNS = ("iteration", "epoch", "train_seconds", "wall_seconds", "loss", "metric", "nfe_forward", "nfe_backward",
           "t1", "lr")
CONFIG, METRICS, CHECKPOINT, SUMMARY = "config.json", "metrics.csv", "checkpoint.pt", "summary.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, truncated, corrupt, or from another run."""


def write_json(path: Path, value) -> None:
    """``value`` as indented JSON at ``path``, written atomically."""
    with atomic_write(path, "w") as f:
        f.write(json.dumps(value, indent=2, default=str) + "\n")


def write_csv(path: Path, columns, rows) -> None:
    """``rows`` (dicts) under a header of ``columns`` at ``path``, written atomically."""
    with atomic_write(path, "w", newline="") as f:
        writer = csv.DictWriter(f, list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


class RunDir:
    """Reads and writes one run directory (see the module docstring)."""

    CONFIG, METRICS, CHECKPOINT, SUMMARY = CONFIG, METRICS, CHECKPOINT, SUMMARY

    def __init__(self, path):
        self.path = Path(path)
        self._metrics = None
        self._writer = None

    def file(self, name: str) -> Path:
        return self.path / name

    # -- config and summary ---------------------------------------------------------------------
    def write_config(self, config: dict) -> None:
        write_json(self.file(CONFIG), config)

    def read_config(self) -> dict:
        path = self.file(CONFIG)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{self.path} is not a run directory: it has no {CONFIG}") from None
        except ValueError as err:
            raise CheckpointError(f"{path} is corrupt ({err}); the run cannot be resumed") from None

    def write_summary(self, summary: "Summary") -> None:
        write_json(self.file(SUMMARY), dataclasses.asdict(summary))

    def read_summary(self) -> Optional[dict]:
        """``summary.json`` as a dict, or None when the run has not written one (or it is unreadable)."""
        try:
            return json.loads(self.file(SUMMARY).read_text())
        except (OSError, ValueError):
            return None

    # -- metrics --------------------------------------------------------------------------------
    def open_metrics(self, keep_until: Optional[int] = None) -> None:
        """Open ``metrics.csv`` for appending; with ``keep_until``, first drop rows past that iteration."""
        path = self.file(METRICS)
        self.path.mkdir(parents=True, exist_ok=True)
        rows = self.read_metrics() if keep_until is not None else []
        if rows and int(rows[-1]["iteration"]) > keep_until:  # rows the checkpoint does not hold
            write_csv(path, COLUMNS, [r for r in rows if int(r["iteration"]) <= keep_until])
        fresh = not path.exists()
        self._metrics = open(path, "a", newline="")
        self._writer = csv.DictWriter(self._metrics, COLUMNS, lineterminator="\n")
        if fresh:
            self._writer.writeheader()
            self._metrics.flush()

    def append_metrics(self, row: dict) -> None:
        self._writer.writerow({k: _cell(row.get(k)) for k in COLUMNS})
        self._metrics.flush()

    def close(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = self._writer = None

    def read_metrics(self) -> list[dict]:
        path = self.file(METRICS)
        if not path.exists():
            return []
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

    # -- checkpoint -----------------------------------------------------------------------------
    def save_checkpoint(self, state: dict) -> None:
        with atomic_write(self.file(CHECKPOINT)) as f:
            torch.save(state, f)

    def load_checkpoint(self, map_location=None) -> dict:
        path = self.file(CHECKPOINT)
        if not path.exists():
            raise CheckpointError(f"{path} does not exist: the run wrote no checkpoint yet, so there is nothing to "
                                  f"resume; start the run again")
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as err:  # truncated zip, bad pickle, or a forbidden global: all mean "unusable"
            raise CheckpointError(f"{path} is truncated or corrupt and cannot be loaded "
                                  f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                                  f"delete it to start over") from None
        if not isinstance(state, dict) or "model" not in state or "progress" not in state:
            raise CheckpointError(f"{path} is not a nodeopt checkpoint (no 'model' and 'progress' entries)")
        return state


@dataclasses.dataclass
class Summary:
    """The fields of ``summary.json``: what a run reached and why it stopped.

    ``stopped`` is ``"budget"``, ``"time budget"``, ``"diverged"``, a signal's name (``"SIGINT"``,
    ``"SIGTERM"``, ``"a stop signal on another rank"``), ``"solver failure"`` or ``"lost contact"``;
    ``error`` the first line of the failure, if any. ``final_metric`` is the last evaluation,
    ``best_metric`` the best by ``higher_is_better``.
    """

    run_dir: str
    task: str
    dataset: str
    optimizer: str
    gradient: str
    metric_name: str
    higher_is_better: bool
    iterations: int
    train_seconds: float
    wall_seconds: float
    final_metric: Optional[float]
    best_metric: Optional[float]
    stopped: str
    error: str = ""
    peak_cuda_bytes: Optional[int] = None
    data: dict = dataclasses.field(default_factory=dict)


def versions() -> dict:
    """What ran: nodeopt, torch, numpy, Python, the platform and, in a git checkout, the commit."""
    out = dict(nodeopt=__version__, torch=torch.__version__, numpy=numpy.__version__,
               python=platform.python_version(), platform=platform.platform())
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                                capture_output=True, text=True, timeout=5)
        if commit.returncode == 0:
            out["git_commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def read_metrics(run_dir) -> list[dict]:
    """``metrics.csv`` of a run directory as dictionaries of numbers (empty cells: None)."""
    out = []
    for row in RunDir(run_dir).read_metrics():
        out.append({k: (float(v) if v not in ("", None) else None) for k, v in row.items()})
    return out
