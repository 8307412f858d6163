"""Measuring memory instead of guessing it: one network use, and the memory free on a device."""

from __future__ import annotations

import logging
from typing import Callable, Iterable

import torch

log = logging.getLogger(__name__)

FALLBACK_FREE_BYTES = 4 * 2 ** 30  # when a device cannot say how much memory is free


def _storage_key(t: torch.Tensor):
    storage = t.untyped_storage()
    return (str(storage.device), storage.data_ptr())


def saved_tensor_bytes(fn: Callable[[], object], exclude: Iterable[torch.Tensor] = ()) -> tuple[int, object]:
    """The bytes autograd saves for the backward pass while ``fn()`` runs, and ``fn()``'s result.

    Every tensor an operation saves for its backward passes through
    ``torch.autograd.graph.saved_tensors_hooks``; this counts the memory behind them
    once per storage (a view, or a tensor saved by two operations, such as a ``tanh``
    output that the next ``Linear`` saves as its input, is counted once, in full), and
    skips the storages of ``exclude`` (parameters and buffers, which exist anyway).

    For ``f(t, y) = tanh(y Wᵀ + b)`` this is ``y`` (saved by the linear layer for the
    weight gradient) plus the ``tanh`` output (saved for its own derivative): the
    memory one differentiable use of the network holds until its backward pass.
    """
    skip = {_storage_key(t) for t in exclude}
    seen: dict = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            key = _storage_key(t)
            if key not in skip:
                seen[key] = t.untyped_storage().nbytes()
        except (RuntimeError, NotImplementedError):  # a tensor without storage (sparse, a wrapper subclass)
            seen[("size", id(t))] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


def free_bytes(device: torch.device) -> float:
    """Memory free now: ``torch.cuda.mem_get_info`` on CUDA, ``MemAvailable`` (/proc/meminfo) on CPU.

    Elsewhere (or when neither can be read) ``FALLBACK_FREE_BYTES``, with a log message.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return float(free)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        return float(line.split()[1]) * 1024
        except OSError:
            pass
    log.info("cannot read the free memory of %s; assuming %d bytes", device, FALLBACK_FREE_BYTES)
    return float(FALLBACK_FREE_BYTES)
