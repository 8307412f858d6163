"""Kronecker-factored curvature of Linear and Conv2d layers, as small pure functions.

For a layer ``out = W x̃`` (``x̃ = [x; 1]`` with a bias) over ``n`` samples
(batch × spatial locations for a convolution, whose ``x`` are input patches):

    A = (1/n) Σ x̃ x̃ᵀ          G = (1/n) Σ g gᵀ,   g = (batch size) · dL/d out

and the Fisher block of ``W`` is approximated by ``A ⊗ G``. In the eigenbasis
``A = Q_A Λ_A Q_Aᵀ``, ``G = Q_G Λ_G Q_Gᵀ`` the preconditioned gradient of the
weight matrix ``∇`` (``out × in``, bias as the last column) is (George et al.
2018, EKFAC; Liu, Chen & Theodorou 2021, SNOpt):

    ∇̃ = Q_Gᵀ ∇ Q_A,    m₂ ← α m₂ + (1 - α)·B·∇̃²,    ∇_nat = Q_G (∇̃ / (m₂ + ε)) Q_Aᵀ

with ``m₂`` initialised to ``λ_G λ_Aᵀ · (locations)`` when the bases are
refreshed and ``B`` the batch size.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

Layer = nn.Module  # nn.Linear or nn.Conv2d


def input_columns(layer: Layer, x: torch.Tensor) -> torch.Tensor:
    """The layer's inputs as columns ``(in [+1], n)``: patches for a convolution, a ones row for a bias."""
    if isinstance(layer, nn.Conv2d):
        cols = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=layer.padding, stride=layer.stride)
        cols = cols.transpose(0, 1).reshape(cols.shape[1], -1)
    else:
        cols = x.reshape(-1, x.shape[-1]).t()
    if layer.bias is not None:
        cols = torch.cat([cols, torch.ones_like(cols[:1])], dim=0)
    return cols


def output_columns(layer: Layer, g: torch.Tensor) -> torch.Tensor:
    """Gradients at the layer's output as columns ``(out, n)``."""
    if isinstance(layer, nn.Conv2d):
        return g.transpose(0, 1).reshape(g.shape[1], -1)
    return g.reshape(-1, g.shape[-1]).t()


def input_factor(layer: Layer, x: torch.Tensor) -> torch.Tensor:
    """``A = (1/n) Σ x̃ x̃ᵀ``."""
    cols = input_columns(layer, x)
    return cols @ cols.t() / cols.shape[1]


def output_factor(layer: Layer, g: torch.Tensor) -> torch.Tensor:
    """``G = (1/n) Σ g gᵀ`` for gradients ``g`` already scaled by the batch size."""
    cols = output_columns(layer, g)
    return cols @ cols.t() / cols.shape[1]


def sample_subset(layer: Layer, x: torch.Tensor, g: torch.Tensor, max_columns: Optional[int],
                  offset: int = 0) -> torch.Tensor:
    """An evenly spaced subset of the batch ``x`` whose input columns number at most ``max_columns``.

    ``A`` costs (columns) × (patch length)² with batch × spatial locations
    columns, so for convolutions it can exceed the layer's own forward and
    backward many times over; a strided subset of whole samples keeps it an
    unbiased estimate at a fraction of the cost. ``offset`` picks
    which of the ``stride`` interleaved subsets is used (so that successive
    evaluations cover the whole batch). ``None`` keeps every sample.
    """
    batch = x.shape[0]
    per_sample = g[0].numel() // g.shape[1 if isinstance(layer, nn.Conv2d) else -1]
    if max_columns is None or batch * per_sample <= max_columns:
        return x
    stride = math.ceil(batch * per_sample / max(max_columns, per_sample))
    return x[offset % stride::stride]


def locations(layer: Layer, g: torch.Tensor) -> int:
    """Spatial locations per sample: ``H'·W'`` for a convolution, one for a linear layer."""
    return g.shape[2] * g.shape[3] if isinstance(layer, nn.Conv2d) else 1


def gradient_matrix(layer: Layer) -> torch.Tensor:
    """The layer's gradient as one matrix ``(out, in [+1])``, bias as the last column."""
    return as_matrix(layer.weight.grad, None if layer.bias is None else layer.bias.grad)


def parameter_matrix(layer: Layer) -> torch.Tensor:
    """The layer's weight (and bias) as one matrix, in :func:`gradient_matrix`'s layout."""
    return as_matrix(layer.weight, layer.bias)


def as_matrix(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """A weight-shaped tensor (and a bias-shaped one) as one matrix, bias as the last column."""
    w = weight.reshape(weight.shape[0], -1)
    return w if bias is None else torch.cat([w, bias.reshape(-1, 1)], dim=1)


def write_matrix(matrix: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
    """Copy a matrix in :func:`as_matrix`'s layout into a weight-shaped tensor (and a bias-shaped one)."""
    if bias is not None:
        bias.copy_(matrix[:, -1].reshape(bias.shape))
        matrix = matrix[:, :-1]
    weight.copy_(matrix.reshape(weight.shape))


def set_gradient_matrix(layer: Layer, g: torch.Tensor) -> None:
    """Write a matrix from :func:`gradient_matrix`'s layout back into ``.grad``."""
    write_matrix(g, layer.weight.grad, None if layer.bias is None else layer.bias.grad)


def fisher_size(d: torch.Tensor, q_a: torch.Tensor, q_g: torch.Tensor, m2: torch.Tensor,
                damping: float) -> torch.Tensor:
    """``⟨d, (F + λ) d⟩`` in the EKFAC metric: ``Σ (Q_Gᵀ d Q_A)² (m₂ + λ)``.

    For the preconditioned gradient ``d = ∇_nat`` this is ``⟨∇_nat, ∇⟩``, the size the step bound acts on.
    """
    return ((q_g.t() @ d @ q_a).square() * (m2 + damping)).sum()


def eigenbasis(factor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (clamped at zero) and eigenvectors of a symmetric factor."""
    sym = (factor + factor.t()) / 2
    values, vectors = torch.linalg.eigh(sym.double() if sym.dtype in (torch.float16, torch.bfloat16) else sym)
    return values.clamp_min(0).to(factor.dtype), vectors.to(factor.dtype)


def precondition(grad: torch.Tensor, q_a: torch.Tensor, q_g: torch.Tensor, m2: torch.Tensor, alpha: float,
                 eps: float, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One EKFAC step: returns ``(∇_nat, new m₂)`` (see the module docstring)."""
    g_kfe = q_g.t() @ grad @ q_a
    m2 = m2 * alpha + (1.0 - alpha) * batch_size * g_kfe.square()
    return q_g @ (g_kfe / (m2 + eps)) @ q_a.t(), m2
