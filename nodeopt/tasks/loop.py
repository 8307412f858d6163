"""One training loop for every task, optimiser, gradient method and solver.

Read top to bottom, an iteration is::

    precond.train_itr_setup()            # SNOpt: gather curvature on refresh iterations
    loss = task.loss(model, batch); loss.backward()
    t1_optimizer.record()                # dL/dt1 for the integration-time optimiser
    precond.step(); optimizer.step()     # precondition, then the base optimiser's step
    t1_optimizer.step(); scheduler.step()

Training time (``train_seconds``) counts only these iterations, never evaluation.
Batches come from a per-epoch permutation drawn from ``torch.Generator().manual_seed
(seed · 1_000_003 + epoch)``, so a resumed run sees exactly the batches of an
uninterrupted one; the global RNG state (Hutchinson noise) is saved in the checkpoint.
SIGINT and SIGTERM stop the loop at the end of the current iteration, after a checkpoint.

Across processes (``world``, see :mod:`nodeopt.tasks.distributed`) the loop is the same:
``batch_size`` is the global batch and each rank trains on its share of it through a DDP
wrapper of the model; the loss, the stop requests and the clock are summed over the ranks
once per iteration so that every rank takes the same decisions; evaluation is sharded and
summed; rank 0 alone writes the run directory.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn
from torch.utils.data import DistributedSampler

from . import checkpoint, distributed
from .distributed import World
from .rundir import RunDir
from .tasks import Task, ode_blocks, solve_counts

logger = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint."""

    iteration: int = 0
    train_seconds: float = 0.0
    wall_seconds: float = 0.0
    best_metric: Optional[float] = None
    last_metric: Optional[float] = None
    first_loss: Optional[float] = None
    stopped: str = ""


@dataclass
class Budget:
    """When to stop: after ``iterations`` (total, counted from the start of the run), or when the
    training clock passes ``seconds``."""

    iterations: int
    seconds: Optional[float] = None


@dataclass
class Trainer:
    """Trains ``model`` on ``task``; writes the run directory ``run`` (see :mod:`nodeopt.tasks.rundir`).

    Args:
        task, model, optimizer: what to train and with which ``torch.optim`` optimiser
            (or a list of them, e.g. the time-series recipes' second optimiser).
        batch_size: examples per iteration; seed: of the batch order.
        precond: a :class:`~nodeopt.optim.SNOpt` in front of the optimiser, or None.
        t1_optimizer: an :class:`~nodeopt.optim.IntegrationTimeOptimizer`, or None.
        schedulers: ``torch.optim.lr_scheduler`` objects stepped every iteration.
        eval_every: evaluate the test metric every this many iterations (and at the end).
        checkpoint_every: write ``checkpoint.pt`` every this many iterations (and at the end).
        on_iteration: called with each metrics row (a progress bar, say).
        diverge_factor: stop when the loss is NaN/inf or exceeds this multiple of the first loss.
        world: this process's place among the training processes (default: the only one).
    """

    task: Task
    model: nn.Module
    optimizer: object
    run: RunDir
    batch_size: int
    seed: int = 0
    precond: Optional[object] = None
    t1_optimizer: Optional[object] = None
    schedulers: list = field(default_factory=list)
    eval_every: int = 10
    checkpoint_every: int = 100
    on_iteration: Optional[Callable[[dict], None]] = None
    diverge_factor: float = 1e3
    progress: Progress = field(default_factory=Progress)
    world: World = field(default_factory=World)

    def __post_init__(self):
        self.optimizers = self.optimizer if isinstance(self.optimizer, (list, tuple)) else [self.optimizer]
        self.blocks = ode_blocks(self.model)
        self._stop_requested = ""  # set by the signal handler at any moment
        self._stop_agreed = ""  # the stop request as of the last iteration's end, the same on every rank
        self._shard = (None, None)  # (epoch, this rank's share of its permutation)
        n, size = self.task.n_train, self.world.size
        if self.batch_size > n:
            raise ValueError(f"batch_size={self.batch_size} is larger than the training set "
                             f"({n} examples); use at most {n}")
        if self.batch_size % size:
            raise ValueError(f"batch_size={self.batch_size} is the global batch and must split evenly over the "
                             f"{size} processes; use a multiple of {size} (e.g. {self.batch_size // size * size or size})")
        # torch's sampler draws randperm(n) from seed + epoch: the same permutation a single process uses.
        self.sampler = DistributedSampler(range(n), num_replicas=size, rank=self.world.rank, shuffle=True,
                                          seed=self.seed * 1_000_003, drop_last=True)
        self.train_model = distributed.wrap(self.model, self.world, self.task.device)

    @property
    def batches_per_epoch(self) -> int:
        return max(1, self.task.n_train // self.batch_size)

    def batch(self, iteration: int) -> tuple[int, torch.Tensor]:
        """The epoch and this rank's training indices of an iteration (the last incomplete batch is dropped).

        Batch ``i`` of an epoch is positions ``i·B … (i+1)·B - 1`` of the epoch's permutation: rank
        ``r`` of ``R`` holds positions ``r, r + R, …`` (``DistributedSampler``), and its ``i``-th
        share of ``B / R`` of them interleaves with the other ranks' to give exactly those ``B``.
        """
        epoch, i = divmod(iteration, self.batches_per_epoch)
        if self._shard[0] != epoch:
            self.sampler.set_epoch(epoch)
            self._shard = (epoch, torch.tensor(list(self.sampler), dtype=torch.int64, device=self.task.device))
        share = self.batch_size // self.world.size
        return epoch, self._shard[1][i * share:(i + 1) * share]

    # -- the loop -------------------------------------------------------------------------------
    def fit(self, budget: Budget) -> Progress:
        """Train until :meth:`stop_reason` gives a reason: the budget, a stop signal, or divergence."""
        p = self.progress
        with self._metrics_file(), self._stop_on_signals():
            self.model.train()
            wall0 = time.perf_counter() - p.wall_seconds
            stop = self.stop_reason(budget)
            while not stop:
                row = self._iteration()
                stop = self.stop_reason(budget, row["loss"])
                if stop != "diverged" and (p.iteration % self.eval_every == 0 or stop):
                    row["metric"] = self._evaluate()
                p.wall_seconds = row["wall_seconds"] = time.perf_counter() - wall0
                self._log(row)
                if not stop and p.iteration % self.checkpoint_every == 0:
                    self.save()
            p.stopped = stop
            if stop != "diverged":  # a diverged run keeps its last checkpoint that was still finite
                self.save()
        return p

    def stop_reason(self, budget: Budget, loss: Optional[float] = None) -> str:
        """Why training stops now, or ``""`` to go on; asked once before the first iteration and after each.

        In order: ``"diverged"`` (``loss`` NaN/inf or past ``diverge_factor`` times the first loss),
        the name of a stop signal that reached this rank or another (``"SIGINT"``, ``"SIGTERM"``),
        ``"budget"`` (the iterations are done), ``"time budget"`` (the training clock passed it).
        """
        p = self.progress
        if loss is not None and self._diverged(loss):
            return "diverged"
        if self._stop_agreed:
            return self._stop_agreed
        if p.iteration >= budget.iterations:
            return "budget"
        if budget.seconds is not None and p.train_seconds >= budget.seconds:
            return "time budget"
        return ""

    @contextmanager
    def _metrics_file(self):
        """``metrics.csv`` open for appending while the loop runs (rank 0), rows past the progress dropped."""
        if self.world.main:
            self.run.open_metrics(keep_until=self.progress.iteration)
        try:
            yield
        finally:
            if self.world.main:
                self.run.close()

    def _log(self, row: dict) -> None:
        if self.world.main:
            self.run.append_metrics(row)
            if self.on_iteration is not None:
                self.on_iteration(row)

    def _iteration(self) -> dict:
        p = self.progress
        epoch, idx = self.batch(p.iteration)
        for block in self.blocks:
            block.reset_stats()
        _sync(self.task.device)
        t0 = time.perf_counter()
        try:
            if self.precond is not None:
                self.precond.train_itr_setup()
            for opt in self.optimizers:
                opt.zero_grad(set_to_none=True)
            loss = self.task.loss(self.train_model, idx)
            loss.backward()
            if self.t1_optimizer is not None:
                self.t1_optimizer.record()
            if self.precond is not None:
                self.precond.step()
            for opt in self.optimizers:
                opt.step()
        except Exception:
            if self.precond is not None:
                self.precond.end_capture()
            raise
        t1 = self.t1_optimizer.step() if self.t1_optimizer is not None else (
            self.blocks[0].t1 if len(self.blocks) == 1 else None)
        for sched in self.schedulers:
            sched.step()
        value = loss.item()  # synchronises the device
        seconds = time.perf_counter() - t0
        stop = self._stop_requested  # read once: a signal may arrive at any moment
        if self.world.distributed:  # one message: every rank sees the same loss, clock and stop requests
            total_loss, total_seconds, sigint, sigterm = self.world.all_sum(
                [value, seconds, stop == "SIGINT", stop == "SIGTERM"], self.task.device)
            value, seconds = total_loss / self.world.size, total_seconds / self.world.size
            stop = "SIGINT" if sigint else "SIGTERM" if sigterm else ""  # every rank names the same signal
        self._stop_agreed = stop
        p.train_seconds += seconds
        p.iteration += 1
        nfe_forward, nfe_backward = solve_counts(self.model)  # of this rank's share of the batch
        return dict(iteration=p.iteration, epoch=epoch, train_seconds=p.train_seconds, loss=value,
                    nfe_forward=nfe_forward, nfe_backward=nfe_backward, t1=t1,
                    lr=self.optimizers[0].param_groups[0]["lr"])

    def _evaluate(self) -> float:
        value = self.task.evaluate(self.model, world=self.world)
        p = self.progress
        p.last_metric = value
        if math.isfinite(value) and (p.best_metric is None or self.task.better(value, p.best_metric)):
            p.best_metric = value
        return value

    def _diverged(self, loss: float) -> bool:
        p = self.progress
        p.first_loss = loss if p.first_loss is None else p.first_loss
        if math.isfinite(loss) and loss <= abs(p.first_loss) * self.diverge_factor + 1.0:
            return False
        logger.error("training diverged at iteration %d: loss %.4g (first loss %.4g)", p.iteration, loss,
                     p.first_loss)
        return True

    @contextmanager
    def _stop_on_signals(self):
        """SIGINT/SIGTERM ask the loop to stop after the current iteration (main thread only)."""
        def handler(signum, frame):
            self._stop_requested = signal.Signals(signum).name
            logger.warning("%s received: stopping after this iteration and writing a checkpoint",
                           self._stop_requested)

        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    # -- checkpoints (see nodeopt.tasks.checkpoint) ---------------------------------------------
    def state(self) -> dict:
        """Everything needed to continue; a collective under torch.distributed (every rank calls it)."""
        return checkpoint.state_of(self)

    def save(self) -> None:
        state = self.state()
        if self.world.main:
            self.run.save_checkpoint(state)

    def restore(self, state: dict) -> None:
        """Continue from a checkpoint written by :meth:`save` (see :func:`nodeopt.tasks.checkpoint.restore`)."""
        self.progress = Progress(**checkpoint.restore(self, state))
        self.progress.stopped = ""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
