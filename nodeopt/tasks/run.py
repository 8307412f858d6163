"""The steps of a training run around :meth:`Trainer.fit`, for one process or many alike.

``nodeopt train`` is these steps in order, and a script or a benchmark can call the same ones::

    dataset = load_in_turn(world, lambda: data.load("image", "digits"))
    ...  # build the task, model and optimisers, then the Trainer
    problem = resume(trainer) if resuming else ""
    progress = trainer.fit(Budget(iterations))
    trainer.run.write_summary(summarize(trainer, optimizer="snopt", gradient="symplectic"))

Under torchrun every rank calls every step; a step that finds a problem on any rank returns
it on every rank (:func:`first_problem`), so the ranks stop or go on together.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch

from .distributed import World
from .loop import Trainer
from .rundir import CheckpointError, Summary

T = TypeVar("T")


def load_in_turn(world: World, load: Callable[[], T]) -> T:
    """``load()``; with several processes on a machine, its first process loads (downloads) before the others.

    A failure of the first process is raised on it after the barrier, so the others never wait for nothing
    (they then load from what is on disk and fail in their own way, or succeed).
    """
    if world.local_size == 1 or not world.distributed:
        return load()
    first = world.local_rank == 0
    result, error = None, None
    if first:
        try:
            result = load()
        except Exception as err:  # re-raised after the barrier
            error = err
    world.barrier()
    if error is not None:
        raise error
    return result if first else load()


def first_problem(world: World, problem: str) -> str:
    """The problem of the lowest rank that has one, on every rank (``""`` when none has); a collective."""
    found = [(rank, p) for rank, p in enumerate(world.gather(problem)) if p]
    if not found:
        return ""
    rank, first = found[0]
    return first if rank == 0 or not world.distributed else f"on rank {rank}: {first}"


def resume(trainer: Trainer) -> str:
    """Restore ``trainer`` from its run directory's checkpoint; returns a problem, or ``""``; a collective.

    Rank 0 reads the checkpoint and broadcasts it; every rank restores it.
    """
    world, run = trainer.world, trainer.run
    state, problem = None, ""
    if world.main:
        try:
            state = run.load_checkpoint(map_location="cpu")  # the RNG states must stay on the CPU
        except CheckpointError as err:
            problem = str(err)
    problem = world.broadcast(problem)
    if problem:
        return problem
    try:
        trainer.restore(world.broadcast(state))
    except CheckpointError as err:
        problem = str(err)
    return first_problem(world, problem)


def summarize(trainer: Trainer, *, optimizer: str, gradient: str, error: str = "") -> Summary:
    """The :class:`~nodeopt.tasks.rundir.Summary` of ``trainer``'s run as it stands."""
    p, task = trainer.progress, trainer.task
    peak = torch.cuda.max_memory_allocated(task.device) if task.device.type == "cuda" else None
    return Summary(run_dir=str(trainer.run.path), task=task.kind, dataset=task.dataset.name, optimizer=optimizer,
                   gradient=gradient, metric_name=task.metric, higher_is_better=task.higher_is_better,
                   iterations=p.iteration, train_seconds=p.train_seconds, wall_seconds=p.wall_seconds,
                   final_metric=p.last_metric, best_metric=p.best_metric, stopped=p.stopped, error=error,
                   peak_cuda_bytes=peak, data=task.describe())
