"""What every benchmark shares: the machine and code measured, robust statistics, interleaved timing.

* :func:`environment` is the record written next to every result: date, command, versions
  (Python, torch, nodeopt, torchdiffeq), the CPU, threads, load average, the git commit and
  whether ``nodeopt/`` differs from it, and a hash of the nodeopt sources this process sees.
* :func:`median`, :func:`quartiles`, :func:`ratios` ignore missing and non-finite values, so
  that a diverged run's NaN does not poison a summary.
* :func:`interleaved` times several functions round by round, the order changing between rounds,
  so that the slow drift of a shared machine falls on every function alike; :func:`timed` is one
  call with the garbage collector out of the way.
* :class:`Counted` wraps a vector field to count what a solver does with it (nodeopt's own counts
  are in ``Solution.stats``; torchdiffeq's are not).
"""

from __future__ import annotations

import datetime
import gc
import hashlib
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent


# ---- the machine and the code -----------------------------------------------------------------------

def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            name = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), None)
    except OSError:
        name = None
    return name or platform.processor()


def loadavg() -> Optional[list[float]]:
    """The 1, 5 and 15-minute load averages (None where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def git_state(path: str = "nodeopt") -> dict:
    """``{"commit": short hash or None, "nodeopt_modified": bool or None}``: whether ``path`` differs
    from the commit (changed or untracked files). Read-only git calls; None values outside a checkout."""
    def git(*args: str) -> Optional[str]:
        try:
            out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "--short", "HEAD")
    status = git("status", "--porcelain", "--", path) if commit else None
    return {"commit": commit, "nodeopt_modified": None if status is None else bool(status)}


def source_hash() -> str:
    """The first 16 hex digits of a SHA-256 over the nodeopt sources (paths and contents) on disk."""
    h = hashlib.sha256()
    for path in sorted((ROOT / "nodeopt").rglob("*.py")):
        h.update(str(path.relative_to(ROOT)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def environment(benchmark: str, argv: Optional[list[str]] = None) -> dict:
    """Where, when and on which code ``python -m benchmarks.<benchmark> ARGV`` runs."""
    import nodeopt

    try:
        torchdiffeq = metadata.version("torchdiffeq")
    except metadata.PackageNotFoundError:
        torchdiffeq = None
    args = sys.argv[1:] if argv is None else argv
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(["python", "-m", f"benchmarks.{benchmark}", *args]),
            "python": platform.python_version(), "torch": torch.__version__, "nodeopt": nodeopt.__version__,
            "torchdiffeq": torchdiffeq, "platform": platform.platform(), "cpu": cpu_name(),
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "loadavg": loadavg(),
            **git_state(), "nodeopt_sha256": source_hash()}


def describe(env: dict) -> str:
    """One line of :func:`environment` for a log or a report."""
    modified = {True: ", nodeopt/ modified", False: "", None: ""}[env.get("nodeopt_modified")]
    return (f"nodeopt {env['nodeopt']} (commit {env.get('commit')}{modified}, sources {env['nodeopt_sha256']}), "
            f"torch {env['torch']}, torchdiffeq {env['torchdiffeq']}; {env['cpu']}, {env['cpu_count']} CPUs, "
            f"{env['threads']} torch thread(s), load average {env['loadavg']}; {env['date']}")


# ---- statistics -------------------------------------------------------------------------------------

def finite(xs: Iterable) -> list[float]:
    """The finite numbers of ``xs`` (None, NaN, ±inf and non-numbers left out)."""
    return [x for x in xs if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)]


def median(xs: Iterable) -> float:
    """The median of the finite values; NaN when there are none."""
    xs = finite(xs)
    return float(statistics.median(xs)) if xs else math.nan


def quartiles(xs: Iterable) -> list[float]:
    """``[q1, q3]`` of the finite values (``statistics.quantiles``, n=4); one value: itself twice."""
    xs = finite(xs)
    if len(xs) < 2:
        return [xs[0], xs[0]] if xs else [math.nan, math.nan]
    q = statistics.quantiles(xs, n=4)
    return [q[0], q[2]]


def ratios(samples: dict[str, list[float]], name: str, base: str) -> list[float]:
    """Round-by-round ratios ``samples[name][r] / samples[base][r]`` (the robust comparison on a shared machine)."""
    return [a / b for a, b in zip(samples[name], samples[base])]


def diffs(cumulative: list[float]) -> list[float]:
    """Increments of a cumulative series (per-iteration times from a running clock)."""
    return [b - a for a, b in zip([0.0] + cumulative[:-1], cumulative)]


def running_mean(xs: list[float], k: int) -> list[float]:
    """The mean of the last (up to) ``k`` values at every position."""
    return [sum(xs[max(0, i - k + 1):i + 1]) / len(xs[max(0, i - k + 1):i + 1]) for i in range(len(xs))]


def jsonable(x):
    """``x`` with non-finite floats as JSON can hold them (NaN → None, ±inf → "inf"/"-inf")."""
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    return x


# ---- timing -----------------------------------------------------------------------------------------

@contextmanager
def gc_paused():
    """Collect garbage, then keep the collector off inside the block."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def timed(fn: Callable[[], object]) -> float:
    """Wall time (``perf_counter``) of one call, the garbage collector off."""
    with gc_paused():
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start


def timed_wall_and_cpu(fn: Callable[[], object]) -> tuple[float, float]:
    """``(wall, CPU)`` seconds of one call (``perf_counter``, ``process_time``), the garbage collector off."""
    with gc_paused():
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - wall, time.process_time() - cpu


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 0, *, order: str = "alternate",
                measure: Callable[[Callable[[], object]], object] = timed,
                after_round: Optional[Callable[[int, dict], None]] = None) -> dict[str, list]:
    """Every function measured once per round, for ``repeats`` rounds after ``warmup`` unmeasured ones.

    Args:
        fns: name -> function of no arguments.
        order: ``"alternate"`` (A B C, C B A, ...) or ``"rotate"`` (A B C, B C A, C A B, ...).
        measure: what one call gives: :func:`timed` (default), :func:`timed_wall_and_cpu`, or e.g.
            ``lambda fn: fn()`` for functions that time themselves.
        after_round: called with the round's index and the samples so far (a progress line).

    Returns:
        name -> the list of ``measure`` results, one per round.
    """
    if order not in ("alternate", "rotate"):
        raise ValueError(f"order must be 'alternate' or 'rotate', got {order!r}")
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    samples: dict[str, list] = {name: [] for name in names}
    for r in range(repeats):
        if order == "alternate":
            now = names if r % 2 == 0 else names[::-1]
        else:
            now = names[r % len(names):] + names[:r % len(names)]
        for name in now:
            samples[name].append(measure(fns[name]))
        if after_round is not None:
            after_round(r, samples)
    return samples


# ---- counting a vector field ------------------------------------------------------------------------

class Counted(nn.Module):
    """``inner(t, y)``, counting (while ``counting``) its calls per ``phase`` (``"fwd"``/``"bwd"``), the
    calls that join a graph, the vector–Jacobian products taken through it (a hook on each output
    that joins a graph fires once per VJP), and torchdiffeq's accepted and rejected steps (the step
    callbacks its adaptive solvers call)."""

    def __init__(self, inner, counting: bool = True):
        super().__init__()
        self.inner, self.counting, self.phase = inner, counting, "fwd"
        self.reset()

    def reset(self) -> None:
        self.calls, self.graph_calls = {"fwd": 0, "bwd": 0}, {"fwd": 0, "bwd": 0}
        self.vjps = self.accepted = self.rejected = 0

    @property
    def nfe(self) -> int:
        return sum(self.calls.values())

    def _hook(self, grad):
        self.vjps += 1

    def forward(self, t, y):
        out = self.inner(t, y)
        if self.counting:
            self.calls[self.phase] += 1
            if out.requires_grad:
                self.graph_calls[self.phase] += 1
                out.register_hook(self._hook)
        return out

    def callback_accept_step(self, t0, y0, dt):
        self.accepted += 1

    def callback_reject_step(self, t0, y0, dt):
        self.rejected += 1


def workload_names(parser, text: str, known) -> list[str]:
    """The comma-separated workload names of ``--workloads``; an unknown one stops the parser naming the known."""
    names = [w.strip() for w in text.split(",") if w.strip()]
    unknown = [w for w in names if w not in known]
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; choose from {list(known)}")
    return names
