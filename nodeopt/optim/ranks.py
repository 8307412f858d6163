"""How many processes train together: what the optimisers need to know of torch.distributed."""

from __future__ import annotations

import torch


def world_size() -> int:
    """The number of ranks of the default process group; 1 when torch.distributed is not in use."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
