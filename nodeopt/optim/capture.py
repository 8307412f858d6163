"""Curvature capture: Kronecker factors gathered along whatever backward pass runs.

While a :class:`CurvatureCapture` is open it listens to the gradient methods'
stage announcements (``nodeopt.gradients.observe``) and hooks the given
layers. Every time a hooked layer's output receives its gradient in the
backward pass, the layer's input ``x`` and output gradient ``g`` of that
evaluation are folded into running, weighted factors:

    A = Σ_k w_k A(x_k) / Σ_k w_k        G = Σ_k w_k G(ĝ_k) / Σ_k w_k

For a layer used inside an ODE, ``k`` runs over the differentiated
evaluations of the vector field with their quadrature weights ``w_k`` (so the
sums approximate time averages along the trajectory), and the gradient is
brought to the adjoint's scale, ``ĝ = B · Δ · g / scale_k`` (``B`` the batch
size, ``Δ`` SNOpt's ``snopt_step_size``, as the original scales its samples).
Other layers get ordinary K-FAC samples, ``w = 1``, ``ĝ = B · g``. Layers
whose place is not known beforehand (``undecided_layers``) are both: an
evaluation inside an announced stage makes the layer an ODE layer, and its
samples from outside stages are then dropped. The hooks
hold references only to tensors autograd already saved for the layer's own
backward, so collection costs no memory, and they never change a gradient.
The capture counts the evaluations it folded in (``samples``) and the time its
hooks spent doing so (``seconds``).
"""

from __future__ import annotations

import time
from typing import Iterable, Optional

import torch
from torch import nn

from ..gradients import observe
from . import kfac


class FactorSums:
    """Weighted running sums of one layer's factors."""

    def __init__(self):
        self.a_sum: Optional[torch.Tensor] = None
        self.g_sum: Optional[torch.Tensor] = None
        self.weight = 0.0
        self.samples = 0
        self.locations = 1
        self.batch_size = 1

    def add(self, layer: nn.Module, x: torch.Tensor, g: torch.Tensor, weight: float,
            max_columns: Optional[int] = None) -> None:
        """Fold in one evaluation; ``A`` from at most ``max_columns`` input vectors (``kfac.sample_subset``)."""
        a = kfac.input_factor(layer, kfac.sample_subset(layer, x, g, max_columns, self.samples)).mul_(weight)
        gg = kfac.output_factor(layer, g).mul_(weight)
        self.a_sum = a if self.a_sum is None else self.a_sum.add_(a)
        self.g_sum = gg if self.g_sum is None else self.g_sum.add_(gg)
        self.weight += weight
        self.samples += 1
        self.locations = kfac.locations(layer, g)
        self.batch_size = x.shape[0]

    def factors(self) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """``(A, G)``, or None if nothing was collected."""
        if self.a_sum is None or self.weight <= 0:
            return None
        return self.a_sum / self.weight, self.g_sum / self.weight


class CurvatureCapture:
    """A context manager that records Kronecker factors of layers during forward and backward.

    Args:
        ode_layers: layers used inside an ODE's vector field: sampled at the
            evaluations the gradient method announces, with their weights.
        other_layers: layers outside any ODE: ordinary K-FAC samples.
        step_size: ``Δ``, the scale of ODE layers' gradient samples
            (SNOpt's ``snopt_step_size``).
        max_columns: the most input vectors (batch × spatial locations) per
            evaluation that enter ``A``; larger batches are subsampled evenly,
            a different subset at each evaluation. None: every sample.
        undecided_layers: layers that are ODE layers if the backward pass
            differentiates them inside an announced stage, other layers if not
            (see :meth:`inside_ode` after the backward pass).

    Attributes:
        seconds: time spent folding evaluations into factors so far (``time.perf_counter``
            around each fold; on a GPU, the time to issue the work).
    """

    def __init__(self, ode_layers: Iterable[nn.Module], other_layers: Iterable[nn.Module] = (),
                 step_size: float = 0.01, max_columns: Optional[int] = None,
                 undecided_layers: Iterable[nn.Module] = ()):
        self.ode_layers = set(ode_layers)
        self.layers = list(self.ode_layers) + [m for m in other_layers if m not in self.ode_layers]
        self.undecided = [m for m in undecided_layers if m not in self.layers]
        self.layers += self.undecided
        self.step_size = step_size
        self.max_columns = max_columns
        self.sums = {layer: FactorSums() for layer in self.layers}
        self._plain_sums = {layer: FactorSums() for layer in self.undecided}
        self._staged = set()
        self._handles: list = []
        self._listening = None
        self.seconds = 0.0

    @property
    def samples(self) -> int:
        """Evaluations folded into factors so far, summed over the layers."""
        return sum(s.samples for s in self.sums.values()) + sum(s.samples for s in self._plain_sums.values())

    def __enter__(self) -> "CurvatureCapture":
        self._handles = [layer.register_forward_hook(self._forward_hook) for layer in self.layers]
        self._listening = observe.listening()
        self._listening.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._listening is not None:
            self._listening.__exit__(None, None, None)
            self._listening = None

    def inside_ode(self, layer: nn.Module) -> bool:
        """Whether the layer is an ODE layer: given as one, or (undecided) evaluated inside an announced stage."""
        return layer in self.ode_layers or layer in self._staged

    def factor_sums(self, layer: nn.Module) -> FactorSums:
        """The layer's sums: along the trajectory for an ODE layer, plain K-FAC samples otherwise."""
        if layer in self._plain_sums and layer not in self._staged:
            return self._plain_sums[layer]
        return self.sums[layer]

    def _forward_hook(self, layer: nn.Module, inputs, output) -> None:
        if not (layer.training and torch.is_grad_enabled() and isinstance(output, torch.Tensor)
                and output.requires_grad):
            return
        stage = observe.current_stage()
        sums = self.sums[layer]
        if layer in self.ode_layers or (stage is not None and layer in self._plain_sums):
            if stage is None:
                return  # an evaluation the backward pass will not differentiate
            if layer in self._plain_sums:
                self._staged.add(layer)
            weight, g_scale = stage.weight, self.step_size / stage.scale
        else:
            weight, g_scale = 1.0, 1.0
            sums = self._plain_sums.get(layer, sums)
        x = inputs[0].detach()
        max_columns = self.max_columns

        def on_gradient(g: torch.Tensor) -> None:
            if not observe.is_muted():
                start = time.perf_counter()
                sums.add(layer, x, g.detach() * (x.shape[0] * g_scale), weight, max_columns)
                self.seconds += time.perf_counter() - start

        output.register_hook(on_gradient)
