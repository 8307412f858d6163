"""``CNF``: the vector field of a continuous normalising flow (Chen et al. 2018; Grathwohl et al. 2019).

For a state ``(z, log p)``:

    dz/dt = net(t, z),        d log p / dt = -tr(∂ net / ∂ z)

The trace is exact (one vector–Jacobian product per dimension) or Hutchinson's
estimate ``εᵀ (∂net/∂z) ε`` with Rademacher or Gaussian ``ε``, drawn once per
solve (call :meth:`CNF.reset_noise` between solves).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..gradients import observe

DIVERGENCES = ("exact", "rademacher", "gaussian")


class CNF(nn.Module):
    """The ``(z, log p)`` vector field of a continuous normalising flow.

    Args:
        net: ``net(t, z) -> dz/dt``.
        divergence: ``"exact"``, ``"rademacher"`` or ``"gaussian"``.
        generator: the random generator for Hutchinson's noise (default: torch's global one).

    Raises:
        ValueError: for an unknown divergence.
    """

    def __init__(self, net: nn.Module, divergence: str = "exact", generator: Optional[torch.Generator] = None):
        super().__init__()
        if divergence not in DIVERGENCES:
            raise ValueError(f"divergence={divergence!r} is not known; use one of {', '.join(DIVERGENCES)}")
        self.net = net
        self.divergence = divergence
        self.generator = generator
        self._noise: Optional[torch.Tensor] = None

    def reset_noise(self) -> None:
        """Draw new Hutchinson noise at the next evaluation."""
        self._noise = None

    def noise_like(self, z: torch.Tensor) -> torch.Tensor:
        if self._noise is None or self._noise.shape != z.shape:
            if self.divergence == "rademacher":
                e = torch.randint(0, 2, z.shape, generator=self.generator, device="cpu").to(z) * 2 - 1
            else:
                e = torch.randn(z.shape, generator=self.generator, dtype=z.dtype, device="cpu").to(z.device)
            self._noise = e
        return self._noise

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        z = state[0]
        if torch.compiler.is_compiling():
            return self._traced(t, state)
        outer = torch.is_grad_enabled()
        with torch.enable_grad():
            # Without an outer graph, differentiate a fresh leaf: a view taken under no_grad of a tensor that
            # requires grad says requires_grad=True yet is not connected to what is computed from it.
            if not (outer and z.requires_grad):
                z = z.detach().requires_grad_(True)
            dz = self.net(t, z)
            with observe.muted():  # the divergence's own gradients are not the training backward pass
                div = self._divergence(dz, z, create_graph=outer)
        if not outer:
            dz, div = dz.detach(), div.detach()
        return dz, -div.reshape(z.shape[0], 1).to(state[1].dtype)

    def _traced(self, t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        """The same field inside a compiled solve (``compile=True``): the divergence by ``torch.func.vjp``.

        TorchDynamo cannot trace ``torch.autograd.grad``; a function transform it can, and the
        graph it becomes is differentiable like any other. No listener is announced to inside a
        compiled solve, so nothing needs muting. The Hutchinson noise is drawn by the solve's first
        evaluation, which runs eagerly.
        """
        z = state[0]
        dz, pull = torch.func.vjp(lambda x: self.net(t, x), z)
        if self.divergence == "exact":
            flat = z.reshape(z.shape[0], -1)
            eye = torch.eye(flat.shape[1], dtype=z.dtype, device=z.device)
            div = sum(pull(eye[i].expand_as(flat).reshape(z.shape))[0].reshape(flat.shape)[:, i]
                      for i in range(flat.shape[1]))
        else:
            e = self._noise
            div = (pull(e)[0] * e).reshape(z.shape[0], -1).sum(dim=1)
        return dz, -div.reshape(z.shape[0], 1).to(state[1].dtype)

    def _divergence(self, dz: torch.Tensor, z: torch.Tensor, create_graph: bool) -> torch.Tensor:
        if self.divergence == "exact":
            flat = dz.reshape(dz.shape[0], -1)
            total = torch.zeros(dz.shape[0], dtype=dz.dtype, device=dz.device)
            for i in range(flat.shape[1]):
                (g,) = torch.autograd.grad(flat[:, i].sum(), z, create_graph=create_graph, retain_graph=True)
                total = total + g.reshape(g.shape[0], -1)[:, i]
            return total
        e = self.noise_like(z)
        (e_jac,) = torch.autograd.grad(dz, z, e, create_graph=create_graph, retain_graph=True)
        return (e_jac * e).reshape(z.shape[0], -1).sum(dim=1)
