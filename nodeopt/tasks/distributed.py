"""Training on several processes: torch.distributed with DistributedDataParallel, launched by torchrun.

A process learns its place from the variables torchrun sets (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``): ``World.from_environment()``. Without them it is
the only process, ``World()``, and every collective below is a no-op, so the single-process
code path is the distributed one with ``size == 1``.

What stays identical on every rank, and how:

* parameters: DDP averages the gradients during ``backward()``; every optimiser, SNOpt
  (its factors are averaged in one buffer per refresh) and the integration-time optimiser
  (``dL/dt1`` averaged) then apply the same arithmetic to the same numbers;
* the batch: ``--batch-size`` is the global batch, each rank takes its share from a
  ``DistributedSampler`` over the same per-epoch permutation as a single process, so the
  union of the ranks' shares is exactly the single-process batch (see ``Trainer.batch``);
* decisions: the loss, the stop requests (signals) and the training clock are summed over
  the ranks once per iteration (:meth:`World.all_sum`), so all ranks stop at the same
  iteration for the same reason.

Rank 0 alone reads and writes the run directory; the checkpoint holds every rank's RNG state.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 600.0  # seconds a collective may wait for the slowest rank before the group fails


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (``rank`` of ``size``)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    restart: int = 0  # torchrun's restart count: > 0 after a failed attempt was restarted
    max_restarts: int = 0  # how many restarts torchrun allows (--max-restarts)
    run_id: str = "none"  # torchrun's run id: the same on every rank and in every attempt ("none": not given)

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes the run directory, the progress bar and the plots."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @staticmethod
    def launched() -> bool:
        """Whether torchrun (or another launcher setting ``RANK`` and ``WORLD_SIZE``) started this process."""
        return "RANK" in os.environ and "WORLD_SIZE" in os.environ

    @classmethod
    def from_environment(cls) -> "World":
        """The world torchrun describes in the environment; ``World()`` when not launched by it."""
        if not cls.launched():
            return cls()
        env = os.environ
        size = int(env["WORLD_SIZE"])
        return cls(rank=int(env["RANK"]), size=size, local_rank=int(env.get("LOCAL_RANK", 0)),
                   local_size=int(env.get("LOCAL_WORLD_SIZE", size)),
                   restart=int(env.get("TORCHELASTIC_RESTART_COUNT", 0)),
                   max_restarts=int(env.get("TORCHELASTIC_MAX_RESTARTS", 0)),
                   run_id=env.get("TORCHELASTIC_RUN_ID", "none"))

    # -- collectives (no-ops for a single process) ----------------------------------------------
    def all_sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        """The sums over the ranks of ``values`` (float64, one message)."""
        if not self.distributed:
            return [float(v) for v in values]
        buffer = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(buffer)
        return buffer.tolist()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (any picklable object)."""
        if not self.distributed:
            return obj
        box = [obj if self.main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: list = [None] * self.size
        torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


def start(world: World, device: str, timeout: float = DEFAULT_TIMEOUT) -> torch.device:
    """Join the process group (gloo on CPU, nccl on CUDA) and return this rank's device.

    On CUDA each rank takes ``cuda:LOCAL_RANK``. A collective that waits longer than
    ``timeout`` seconds (a rank died or hangs) raises instead of hanging.

    Raises:
        ValueError: CUDA with fewer devices than processes on this machine.
    """
    if device.startswith("cuda"):
        count = torch.cuda.device_count()
        if world.local_size > count:
            raise ValueError(f"{world.local_size} processes on this machine but only {count} CUDA devices; start at "
                             f"most {count} processes per machine, or train with device=cpu")
        here = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(here)
    else:
        here = torch.device("cpu")
    if world.launched() and not torch.distributed.is_initialized():
        wait = datetime.timedelta(seconds=timeout)
        torch.distributed.init_process_group("nccl" if here.type == "cuda" else "gloo", timeout=wait,
                                             **_rendezvous(world, wait),
                                             **({"device_id": here} if here.type == "cuda" else {}))
    return here


def _rendezvous(world: World, timeout: datetime.timedelta) -> dict:
    """How the ranks find each other: torchrun's store, under a prefix of its own for each restart.

    A restarted attempt reuses the agent's store; without a prefix per attempt the new ranks can
    read the addresses the failed attempt left there and fail to connect (seen with gloo after
    ``torchrun --max-restarts``). Outside torchrun: the usual ``env://`` (MASTER_ADDR, MASTER_PORT).
    """
    env = os.environ
    if "TORCHELASTIC_RESTART_COUNT" not in env:
        return {}
    agent = env.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # the agent hosts the store; else rank 0 does
    store = torch.distributed.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), world.size,
                                       is_master=not agent and world.rank == 0, timeout=timeout)
    return dict(store=torch.distributed.PrefixStore(f"nodeopt/attempt_{world.restart}", store), rank=world.rank,
                world_size=world.size)


def stop() -> None:
    """Leave the process group (if this process joined one)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def wrap(model: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """The module the training loss runs through: ``model`` itself, or a DDP wrapper of it.

    Every parameter of nodeopt's models gets a gradient in every iteration under every
    gradient method (the replaying methods return a gradient for each parameter from their
    autograd Function, zero where the backward pass did not reach it), so DDP runs without
    ``find_unused_parameters`` and its extra graph traversal. Buffers are not broadcast:
    the only one, ``ODEBlock.times``, is updated identically on every rank.
    """
    if not world.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   forward_sync_buffers=False, find_unused_parameters=False)


_LOST = ("gloo", "nccl", "timed out", "connection closed", "connection reset", "broken pipe")


def is_lost_contact(err: BaseException) -> bool:
    """Whether an exception came from the process group (another rank failed, or a collective timed out).

    torch raises ``DistError`` for most of these, but a collective that times out inside
    DDP's backward surfaces as a plain ``RuntimeError`` naming gloo's (or NCCL's) transport.
    """
    if isinstance(err, torch.distributed.DistError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(word in text for word in _LOST)
