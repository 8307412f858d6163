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
* ``summary.json`` — the final (or latest) result of the run.
* ``*.png`` — plots (see :mod:`nodeopt.tasks.plots`).

On resume the rows of ``metrics.csv`` after the checkpoint's iteration (work that
the checkpoint does not hold, and that will be redone) are dropped, so that no row
is lost or duplicated.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Optional

import torch

COLUMNS = ("iteration", "epoch", "train_seconds", "wall_seconds", "loss", "metric", "nfe_forward", "nfe_backward",
           "t1", "lr")
CONFIG, METRICS, CHECKPOINT, SUMMARY = "config.json", "metrics.csv", "checkpoint.pt", "summary.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, truncated, corrupt, or from another run."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_json(path: Path, value) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2, default=str) + "\n").encode())


class RunDir:
    """Reads and writes one run directory (see the module docstring)."""

    def __init__(self, path):
        self.path = Path(path)
        self._metrics = None
        self._writer = None

    def file(self, name: str) -> Path:
        return self.path / name

    # -- config and summary ---------------------------------------------------------------------
    def write_config(self, config: dict) -> None:
        atomic_write_json(self.file(CONFIG), config)

    def read_config(self) -> dict:
        path = self.file(CONFIG)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{self.path} is not a run directory: it has no {CONFIG}") from None
        except ValueError as err:
            raise CheckpointError(f"{path} is corrupt ({err}); the run cannot be resumed") from None

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.file(SUMMARY), summary)

    # -- metrics --------------------------------------------------------------------------------
    def open_metrics(self, keep_until: Optional[int] = None) -> None:
        """Open ``metrics.csv`` for appending; with ``keep_until``, first drop rows past that iteration."""
        path = self.file(METRICS)
        self.path.mkdir(parents=True, exist_ok=True)
        rows = self.read_metrics() if keep_until is not None else []
        if rows and int(rows[-1]["iteration"]) > keep_until:  # rows the checkpoint does not hold
            rows = [r for r in rows if int(r["iteration"]) <= keep_until]
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            atomic_write_bytes(path, buffer.getvalue().encode())
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
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(self.file(CHECKPOINT), buffer.getvalue())

    def load_checkpoint(self, map_location=None) -> dict:
        path = self.file(CHECKPOINT)
        if not path.exists():
            raise CheckpointError(f"{path} does not exist: the run wrote no checkpoint yet, so there is nothing to "
                                  f"resume (start it again without --resume)")
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as err:  # truncated zip, bad pickle, or a forbidden global: all mean "unusable"
            raise CheckpointError(f"{path} is truncated or corrupt and cannot be loaded "
                                  f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                                  f"delete it to start over") from None
        if not isinstance(state, dict) or "model" not in state or "progress" not in state:
            raise CheckpointError(f"{path} is not a nodeopt checkpoint (no 'model' and 'progress' entries)")
        return state


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
