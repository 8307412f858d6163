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
* ``run.lock`` — held (``flock``) by the process that trains in the directory, so that two
  processes never train in one directory at once; the lock goes with the process, even one
  killed with SIGKILL, and the empty file stays.

A run is claimed with :meth:`RunDir.claim`: the lock, then ``config.json``. Of two runs aimed
at one directory exactly one gets it; the other is told which run holds it. A directory that
holds a config but never finished an iteration can be claimed again by a fresh start.

On resume the rows of ``metrics.csv`` after the checkpoint's iteration (work that
the checkpoint does not hold, and that will be redone) are dropped, so that no row
is lost or duplicated.
"""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import json
import os
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
#: The ``stopped`` values of a run that finished (its iterations, epochs or time budget); any other stopped early.
FINISHED = ("budget", "time budget")
CONFIG, METRICS, CHECKPOINT, SUMMARY, LOCK = "config.json", "metrics.csv", "checkpoint.pt", "summary.json", "run.lock"


class CheckpointError(RuntimeError):
    """A run directory's file that cannot be used: missing, truncated, corrupt, or from another run."""


class RunDirBusy(RuntimeError):
    """The run directory is claimed: another process trains in it (``in_use``), or it holds a run already."""

    def __init__(self, message: str, in_use: bool):
        super().__init__(message)
        self.in_use = in_use


def first_line(err: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type's name when the message is empty)."""
    lines = str(err).strip().splitlines()
    return (lines[0] if lines else type(err).__name__)[:limit]


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

    CONFIG, METRICS, CHECKPOINT, SUMMARY, LOCK = CONFIG, METRICS, CHECKPOINT, SUMMARY, LOCK

    def __init__(self, path):
        self.path = Path(path)
        self._metrics = None
        self._writer = None
        self._lock = None

    def file(self, name: str) -> Path:
        return self.path / name

    # -- claiming -------------------------------------------------------------------------------
    def lock(self) -> None:
        """Hold ``run.lock`` until :meth:`release` (or this process ends), creating the directory.

        Raises:
            RunDirBusy: another process holds it.
            OSError: the directory cannot be created or written (read-only, not a directory, ...).
        """
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.file(LOCK), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirBusy(f"{self.path} is in use: another nodeopt process is training in it right now",
                             in_use=True) from None
        self._lock = fd
        for stale in self.path.glob(".*.part"):  # left by a process killed while writing; no one else writes now
            stale.unlink(missing_ok=True)

    def release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def trained(self) -> bool:
        """Whether the directory holds a run that finished at least one iteration (a row of metrics.csv)."""
        try:
            return any(True for _ in self.read_metrics())
        except CheckpointError:
            return True  # unreadable rows are still someone's results

    def claim(self) -> None:
        """Lock the directory for a new run (its ``config.json`` follows with :meth:`write_config`).

        A directory whose run never trained (no row in metrics.csv) is taken over.

        Raises:
            RunDirBusy: another process trains there, or it holds a run that trained.
            OSError: the directory cannot be created or written.
        """
        self.lock()
        if self.trained():
            self.release()
            raise RunDirBusy(f"{self.path} already holds a run", in_use=False)

    # -- config and summary ---------------------------------------------------------------------
    def write_config(self, config: dict) -> None:
        write_json(self.file(CONFIG), config)

    def read_config(self) -> dict:
        path = self.file(CONFIG)
        try:
            config = json.loads(path.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{self.path} is not a run directory: it has no {CONFIG}") from None
        except (ValueError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{path} is corrupt ({first_line(err)}); the run cannot be resumed") from None
        except OSError as err:
            raise CheckpointError(f"{path} cannot be read ({first_line(err)})") from None
        if not isinstance(config, dict) or not isinstance(config.get("settings"), dict):
            raise CheckpointError(f"{path} is not a nodeopt run configuration (no 'settings' object); restore it "
                                  f"or start a new run")
        return config

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
        torn = keep_until is not None and path.exists() and not path.read_bytes().endswith(b"\n")  # cut by a kill
        if torn or (rows and int(rows[-1]["iteration"]) > keep_until):  # rows the checkpoint does not hold
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
        """The rows of ``metrics.csv`` (strings); a last row cut short by a kill is left out.

        Raises:
            CheckpointError: the file is not a metrics file of nodeopt, or a row before the last is broken.
        """
        path = self.file(METRICS)
        if not path.exists():
            return []
        try:
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                rows = list(reader)
                header = reader.fieldnames
        except (OSError, csv.Error, UnicodeDecodeError) as err:
            raise CheckpointError(f"{path} cannot be read ({first_line(err)}); restore it or start a new run") from None
        if rows and None in rows[-1].values():  # the process died while writing its last row
            rows.pop()
        if header is not None and tuple(header) != COLUMNS:
            raise CheckpointError(f"{path} is not a nodeopt metrics file (its header is {','.join(header)}); "
                                  f"restore it or start a new run")
        for number, row in enumerate(rows, start=2):
            if not row["iteration"].isdigit() or None in row.values() or None in row:
                raise CheckpointError(f"{path} is corrupt at line {number}; restore it or start a new run")
        return rows

    # -- checkpoint -----------------------------------------------------------------------------
    def save_checkpoint(self, state: dict) -> None:
        with atomic_write(self.file(CHECKPOINT)) as f:
            torch.save(state, f)

    def load_checkpoint(self, map_location=None) -> dict:
        path = self.file(CHECKPOINT)
        if not path.exists():
            raise CheckpointError(f"{path} does not exist: the run wrote no checkpoint yet")
        if path.stat().st_size == 0:
            raise CheckpointError(f"{path} is truncated or corrupt: it is empty (0 bytes); delete it to start the "
                                  f"run over")
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as err:  # truncated zip, bad pickle, a forbidden global: all mean "unusable"
            raise CheckpointError(f"{path} is truncated or corrupt and cannot be loaded "
                                  f"({type(err).__name__}: {first_line(err, 200)}); delete it to start the run "
                                  f"over") from None
        if not isinstance(state, dict) or "model" not in state or "progress" not in state:
            raise CheckpointError(f"{path} is not a nodeopt checkpoint (no 'model' and 'progress' entries)")
        return state


@dataclasses.dataclass
class Summary:
    """The fields of ``summary.json``: what a run reached and why it stopped.

    ``stopped`` is ``"budget"`` or ``"time budget"`` (finished), ``"diverged"``, a signal's name
    (``"SIGINT"``, ``"SIGTERM"``: stopped early, resumable), ``"solver failure"``, ``"write failure"``
    or ``"lost contact"``;
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
