"""What a checkpoint holds and how a run continues from it (``checkpoint.pt`` of the run directory).

A checkpoint is a plain dict of tensors and numbers (``torch.load(weights_only=True)`` reads it):

* ``model``, ``optimizers`` (one state dict per optimiser), ``schedulers``, and ``precond`` (SNOpt)
  and ``t1_optimizer`` when the run has them;
* ``progress``: the :class:`~nodeopt.tasks.loop.Progress` fields (iteration, clocks, metrics);
* ``rng_cpu_ranks``: every rank's CPU random state in rank order, ``world_size``, and on CUDA
  ``rng_cuda_ranks``.

The batch order needs no state: it is a function of the seed and the epoch (see
:meth:`Trainer.batch <nodeopt.tasks.loop.Trainer.batch>`). So a run restored from a checkpoint
by as many processes as wrote it continues exactly as one run straight through.
"""

from __future__ import annotations

import logging

import torch

from .rundir import CHECKPOINT, CheckpointError

logger = logging.getLogger(__name__)


def rank_seed(seed: int, rank: int, iteration: int = 0) -> int:
    """The seed of rank ``rank``'s random stream (rank 0 continues the run's own stream from ``seed``)."""
    return (seed * 1_000_003 + rank * 7_919 + iteration) % (2 ** 63)


def state_of(trainer) -> dict:
    """Everything needed to continue ``trainer``; a collective under torch.distributed (it gathers every
    rank's RNG state), so every rank must call it."""
    world = trainer.world
    out = dict(model=trainer.model.state_dict(), optimizers=[o.state_dict() for o in trainer.optimizers],
               schedulers=[s.state_dict() for s in trainer.schedulers], progress=dict(vars(trainer.progress)),
               rng_cpu_ranks=world.gather(torch.get_rng_state()), world_size=world.size)
    if trainer.task.device.type == "cuda":
        out["rng_cuda_ranks"] = world.gather(torch.cuda.get_rng_state(trainer.task.device))
    if trainer.precond is not None:
        out["precond"] = trainer.precond.state_dict()
    if trainer.t1_optimizer is not None:
        out["t1_optimizer"] = trainer.t1_optimizer.state_dict()
    return out


def restore(trainer, state: dict):
    """Load ``state`` (from :func:`state_of`, read by :meth:`RunDir.load_checkpoint`) into ``trainer``.

    Returns the restored :class:`~nodeopt.tasks.loop.Progress` fields as a dict. Under
    torch.distributed every rank restores the same state (rank 0 reads it and broadcasts it).
    With as many ranks as wrote it, each rank takes back its own random stream, so the resumed
    run equals one run straight through; with another number of ranks the batches are re-sharded
    exactly and the random streams of ranks other than 0 (Hutchinson's noise) restart from the seed.

    Raises:
        CheckpointError: the state does not fit the trainer's model, optimisers, SNOpt or t1 optimiser.
    """
    path = trainer.run.file(CHECKPOINT)
    try:
        trainer.model.load_state_dict(state["model"])
        for opt, s in zip(trainer.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(s)
        for sched, s in zip(trainer.schedulers, state.get("schedulers", []), strict=True):
            sched.load_state_dict(s)
        _load_optional(trainer.precond, state, "precond", "a different optimiser (SNOpt or not)")
        _load_optional(trainer.t1_optimizer, state, "t1_optimizer", "different integration-time (t1) settings")
        progress = dict(state["progress"])
        ranks = list(state["rng_cpu_ranks"])
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path} does not match this run's model or optimisers "
                              f"({str(err).splitlines()[0][:300]}); resume with the run's own settings "
                              f"(they are in config.json)") from None
    _restore_rng(trainer, ranks, state.get("rng_cuda_ranks"), progress["iteration"])
    return progress


def _load_optional(part, state: dict, key: str, what: str) -> None:
    if (part is None) != (key not in state):
        raise ValueError(f"the checkpoint was written with {what}")
    if part is not None:
        part.load_state_dict(state[key])


def _restore_rng(trainer, ranks: list, cuda, iteration: int) -> None:
    world = trainer.world
    if len(ranks) == world.size:
        torch.set_rng_state(ranks[world.rank])
    elif world.main:
        logger.warning("the checkpoint was written by %d processes and this run has %d: the batches are "
                       "re-sharded exactly, but the random streams of ranks other than 0 restart from the seed",
                       len(ranks), world.size)
        torch.set_rng_state(ranks[0])
    else:
        torch.manual_seed(rank_seed(trainer.seed, world.rank, iteration))
    if cuda and trainer.task.device.type == "cuda" and len(cuda) == world.size:
        torch.cuda.set_rng_state(cuda[world.rank], trainer.task.device)
