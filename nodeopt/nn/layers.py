"""Vector fields and the layers they are made of: concat-time convolutions, MLPs, concat-squash layers.

Each field is an ``nn.Module`` with ``forward(t, y)``, ready for :class:`~nodeopt.nn.ODEBlock` or
:class:`~nodeopt.nn.CNF`. The time enters as data: a constant extra channel (``ConcatConv2d``),
an extra input column (``MLPField``), or a gate and shift (``ConcatSquashLinear``, FFJORD's layer,
Grathwohl et al. 2019). Every weight lives in an ``nn.Linear`` or ``nn.Conv2d``, so SNOpt
preconditions all of them.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "softplus": nn.Softplus, "elu": nn.ELU}


def get_activation(name: str) -> nn.Module:
    """A new activation module by name (one of ``ACTIVATIONS``)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation={name!r} is not known; use one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def time_like(t, x: torch.Tensor, shape) -> torch.Tensor:
    """The time ``t`` as a tensor of ``x``'s dtype and device, expanded to ``shape``."""
    return torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(*shape)


class ConcatConv2d(nn.Module):
    """A convolution of ``[t, x]`` (or ``[x, t]`` with ``time_last``): the time is a constant extra channel."""

    def __init__(self, channels_in: int, channels_out: int, kernel_size: int = 3, padding: int = 1,
                 time_last: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(channels_in + 1, channels_out, kernel_size, padding=padding)
        self.time_last = time_last

    def forward(self, t, x: torch.Tensor) -> torch.Tensor:
        tt = time_like(t, x, (x.shape[0], 1, *x.shape[2:]))
        return self.conv(torch.cat([x, tt] if self.time_last else [tt, x], 1))


class ConvField(nn.Module):
    """``dh/dt = conv₂(t, σ(conv₁(t, h)))``: two concat-time 3×3 convolutions."""

    def __init__(self, channels: int, activation: str = "relu", time_last: bool = False):
        super().__init__()
        self.conv1 = ConcatConv2d(channels, channels, time_last=time_last)
        self.act = get_activation(activation)
        self.conv2 = ConcatConv2d(channels, channels, time_last=time_last)

    def forward(self, t, h: torch.Tensor) -> torch.Tensor:
        return self.conv2(t, self.act(self.conv1(t, h)))


class MLPField(nn.Module):
    """``dh/dt = MLP([h, t])``: ``layers`` Linear layers with tanh between (4 in the SNOpt code)."""

    def __init__(self, dim: int, width: int, layers: int = 4):
        super().__init__()
        sizes = [dim + 1] + [width] * (layers - 1) + [dim]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, t, h: torch.Tensor) -> torch.Tensor:
        h = torch.cat([h, time_like(t, h, (h.shape[0], 1))], 1)
        for i, linear in enumerate(self.linears):
            h = linear(h)
            if i + 1 < len(self.linears):
                h = torch.tanh(h)
        return h


class ConcatSquashLinear(nn.Module):
    """FFJORD's layer: ``(W x + b) · σ(a t + c) + d t``."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.gate = nn.Linear(1, dim_out)
        self.shift = nn.Linear(1, dim_out, bias=False)

    def forward(self, t, x: torch.Tensor) -> torch.Tensor:
        tt = time_like(t, x, (1, 1))
        return self.linear(x) * torch.sigmoid(self.gate(tt)) + self.shift(tt)


class SquashField(nn.Module):
    """``dz/dt``: concat-squash layers of the given hidden sizes with an activation between."""

    def __init__(self, dim: int, hidden: Sequence[int], activation: str = "softplus"):
        super().__init__()
        sizes = [dim, *hidden, dim]
        self.layers = nn.ModuleList(ConcatSquashLinear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.act = get_activation(activation)

    def forward(self, t, z: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            z = layer(t, z)
            if i + 1 < len(self.layers):
                z = self.act(z)
        return z
