"""The papers' models, with explicit arguments: ConvODENet, ODE-RNN and an FFJORD CNF.

Architectures follow the SNOpt code (Liu, Chen & Theodorou 2021) and FFJORD
(Grathwohl et al. 2019); every ODE runs in a :class:`nodeopt.nn.ODEBlock`, so
any gradient method, solver, tolerance and SNOpt work on each of them.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import CNF, ConvField, MLPField, ODEBlock, SquashField


class ConvODENet(nn.Module):
    """Image classifier: conv downsampling → ODEBlock(ConvField) → ReLU → average pool → linear head.

    As the SNOpt code: a 3×3 convolution then ``downsample`` 4×4 stride-2
    convolutions (no biases, ReLU between), the ODE on the feature map, global
    average pooling and ``Linear(width, classes)``.

    Args:
        in_channels, num_classes: of the data.
        width: feature channels (64 in the paper).
        downsample: stride-2 convolutions before the ODE (2 for 28×28 and 32×32 images).
        first_padding: padding of the first 3×3 convolution (0 in the paper).
        activation: of the vector field.
        block: keyword arguments of the :class:`~nodeopt.nn.ODEBlock` (``rtol``, ``atol``,
            ``method``, ``gradient``, ``options``, ``t1``).
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 64, downsample: int = 2,
                 first_padding: int = 0, activation: str = "relu", **block):
        super().__init__()
        layers = [nn.Conv2d(in_channels, width, 3, padding=first_padding, bias=False)]
        for _ in range(downsample):
            layers += [nn.ReLU(), nn.Conv2d(width, width, 4, stride=2, padding=1, bias=False)]
        self.features = nn.Sequential(*layers)
        self.ode = ODEBlock(ConvField(width, activation), **block)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.ode(self.features(x)))
        return self.head(h.mean(dim=(2, 3)))


class ODERNN(nn.Module):
    """Time-series classifier (ODE-RNN, Rubanova et al. 2019, as in the SNOpt code).

    The hidden state jumps by a GRU cell at each observation and evolves by an
    ODE between consecutive observation times; the classifier reads the hidden
    state after each series' last real observation.

    Args:
        channels: input channels per observation; num_classes: classes.
        hidden: the hidden size; field_width, field_layers: the vector field's MLP.
        block: keyword arguments of the :class:`~nodeopt.nn.ODEBlock`.

    ``forward(x, lengths)``: ``x`` (batch, length, channels) observed at times
    ``0, 1, …`` (equal gaps), ``lengths`` (batch,) the real lengths (None: all).
    """

    def __init__(self, channels: int, num_classes: int, hidden: int = 32, field_width: int = 64,
                 field_layers: int = 4, **block):
        super().__init__()
        self.hidden = hidden
        self.gru = nn.GRUCell(channels, hidden)
        self.ode = ODEBlock(MLPField(hidden, field_width, field_layers), **block)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor = None) -> torch.Tensor:
        batch, length, _ = x.shape
        h = x.new_zeros(batch, self.hidden)
        last = lengths.to(x.device) - 1 if lengths is not None else torch.full((batch,), length - 1, device=x.device)
        out = h
        for i in range(length):
            if i > 0:
                h = self.ode(h)
            h = self.gru(x[:, i], h)
            out = torch.where((last == i)[:, None], h, out)
        return self.head(out)


class FFJORD(nn.Module):
    """A continuous normalising flow of ``blocks`` CNF blocks (Grathwohl et al. 2019).

    Each block integrates ``(z, Δlog p)`` from the data at ``t = t1`` back to
    ``t = 0`` (the SNOpt code's convention); the base density is a standard
    normal. ``forward(x)`` returns the log-likelihood of each row of ``x``.

    Args:
        dim: data dimension; hidden: hidden sizes of each block's field;
        blocks: number of CNF blocks; activation: of the fields;
        divergence: ``"exact"`` or Hutchinson's ``"rademacher"`` / ``"gaussian"``;
        block: keyword arguments of each :class:`~nodeopt.nn.ODEBlock`.
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (64, 64), blocks: int = 1, activation: str = "softplus",
                 divergence: str = "exact", **block):
        super().__init__()
        self.dim = dim
        self.blocks = nn.ModuleList(
            ODEBlock(CNF(SquashField(dim, hidden, activation), divergence=divergence), **block) for _ in range(blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, delta = x, x.new_zeros(x.shape[0], 1)
        for block in self.blocks:
            block.func.reset_noise()
            backward = torch.stack([block.times[-1], block.times[0]])  # data at t1, noise at t0
            z, delta = block((z, delta), backward)
        log_base = -0.5 * z.square().sum(1) - 0.5 * self.dim * math.log(2 * math.pi)
        return log_base - delta.squeeze(1)
