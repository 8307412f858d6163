"""Gradients with respect to the output times ``t``.

For the flow map ``y(t_i) = Φ(t_i, t_0, y_0)`` of ``y' = f(t, y)``:

    ∂y(t_i)/∂t_i = f(t_i, y(t_i))          ∂y(t_i)/∂t_0 = -(∂y(t_i)/∂y_0) f(t_0, y_0)

so ``dL/dt_i = <dL/dy_i, f(t_i, y_i)>`` for ``i ≥ 1`` and
``dL/dt_0 = -<Σ_{i≥1} (∂y_i/∂y_0)ᵀ dL/dy_i, f(t_0, y_0)>``: the second needs the
cotangent that reached ``y_0`` through the solve, which every gradient method
computes anyway. Two identity functions attach these terms, one on the outputs
and one on ``y_0``, so the rule serves every gradient method alike. This is the
derivative of the exact solution, evaluated on the computed one (as the
continuous adjoint of Chen et al. gives it).
"""

from __future__ import annotations

import torch


class _OutputTimes(torch.autograd.Function):
    """Identity on the stacked outputs ``ys``; sends ``<dL/dy_i, f_i>`` to ``t_i`` for i ≥ 1."""

    @staticmethod
    def forward(ctx, ys, t, fs):
        ctx.save_for_backward(fs)
        ctx.t_dtype, ctx.t_device = t.dtype, t.device
        return ys.view_as(ys)

    @staticmethod
    def backward(ctx, grad_ys):
        (fs,) = ctx.saved_tensors
        grad_t = (grad_ys * fs).reshape(len(fs), -1).sum(dim=1).to(dtype=ctx.t_dtype, device=ctx.t_device)
        grad_t[0] = 0
        return grad_ys, grad_t, None


class _InitialTime(torch.autograd.Function):
    """Identity on ``y0``; sends ``-<dL/dy0, f(t0, y0)>`` to ``t_0``."""

    @staticmethod
    def forward(ctx, y0, t, f0):
        ctx.save_for_backward(f0)
        ctx.t_shape, ctx.t_dtype, ctx.t_device = t.shape, t.dtype, t.device
        return y0.view_as(y0)

    @staticmethod
    def backward(ctx, grad_y0):
        (f0,) = ctx.saved_tensors
        grad_t = torch.zeros(ctx.t_shape, dtype=ctx.t_dtype, device=ctx.t_device)
        grad_t[0] = -(grad_y0 * f0).sum().to(dtype=ctx.t_dtype, device=ctx.t_device)
        return grad_y0, grad_t, None


def attach_initial_time(y0: torch.Tensor, t: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
    """``y0`` unchanged, with ``dL/dt_0`` added in backward (``f0 = dy/dt`` at ``t_0``, user time)."""
    return _InitialTime.apply(y0, t, f0.detach())


def attach_output_times(ys: torch.Tensor, t: torch.Tensor, fs: torch.Tensor) -> torch.Tensor:
    """``ys`` unchanged, with ``dL/dt_i`` (i ≥ 1) added in backward (``fs[i] = dy/dt`` at ``t_i``)."""
    return _OutputTimes.apply(ys, t, fs.detach())
