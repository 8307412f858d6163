"""The state at the solver's boundary: tuples flattened once, time reversed once.

Inside the loop the state is a single tensor. A tuple state such as a CNF's
``(z, logp)`` is concatenated into one flat vector when the solve starts and
split back into views only when the user's function is called. Integration
backward in time is turned into forward integration of ``-f(-s, y)`` in
``s = -t``, so the loop only ever steps forward.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch

State = Union[torch.Tensor, tuple[torch.Tensor, ...]]


class StateSpec:
    """How a user's state (tensor or tuple of tensors) maps to the loop's single tensor."""

    def __init__(self, y0: State):
        self.is_tuple = isinstance(y0, tuple)
        parts = y0 if self.is_tuple else (y0,)
        self.shapes = tuple(p.shape for p in parts)
        self.numels = tuple(p.numel() for p in parts)
        self.dtype = parts[0].dtype
        self.device = parts[0].device

    def flatten(self, y: State) -> torch.Tensor:
        if not self.is_tuple:
            return y
        return torch.cat([p.reshape(-1) for p in y])

    def unflatten(self, y: torch.Tensor) -> State:
        """Split the loop's tensor back into the user's structure (views, no copies)."""
        if not self.is_tuple:
            return y
        return tuple(p.view(shape) for p, shape in zip(torch.split(y, self.numels), self.shapes))

    def unflatten_stack(self, ys: torch.Tensor) -> State:
        """Same for a stack of states with a leading time dimension."""
        if not self.is_tuple:
            return ys
        n = ys.shape[0]
        return tuple(p.reshape(n, *shape) for p, shape in zip(torch.split(ys, self.numels, dim=1), self.shapes))

    def segments(self, y: torch.Tensor) -> Sequence[torch.Tensor]:
        """The components of a flat state, for norms taken per component."""
        return torch.split(y, self.numels) if self.is_tuple else (y,)

    def expand_tolerance(self, tol: Union[float, Sequence[float]], name: str) -> Union[float, torch.Tensor]:
        """A tolerance per component of a tuple state, spread over the flat vector."""
        if not isinstance(tol, (tuple, list)):
            return tol
        if len(tol) != len(self.numels):
            raise ValueError(f"{name} has {len(tol)} entries but the state has {len(self.numels)} "
                             f"components; give one float or one per component")
        return torch.cat([torch.full((n,), float(v), dtype=self.dtype, device=self.device)
                          for v, n in zip(tol, self.numels)])


class Dynamics:
    """The user's ``func(t, y)`` as the loop calls it: ``f(s, y_flat) -> dy_flat``.

    Counts its evaluations, reverses time when asked, and checks the first
    output's shape and dtype against the state.

    Args:
        func: the user's vector field.
        spec: the state structure.
        reverse: integrate backward: call ``-func(-s, y)``.
        time_dtype: dtype of the time tensor handed to ``func``.
    """

    def __init__(self, func: Callable, spec: StateSpec, reverse: bool, time_dtype: torch.dtype):
        self.func = func
        self.spec = spec
        self.sign = -1.0 if reverse else 1.0
        self.time_dtype = time_dtype
        self.nfe = 0
        self._checked = False
        # Called with each output that joined an autograd graph and the number of evaluations
        # behind it (one here; a compiled step's whole set of stages), so that gradient methods
        # can see the backward pass, e.g. count its vector–Jacobian products.
        self.on_graph_output: Optional[Callable[[torch.Tensor, int], None]] = None

    def time(self, s: float) -> torch.Tensor:
        """The user's time for the loop's time ``s``, as a scalar tensor."""
        return torch.scalar_tensor(self.sign * s, dtype=self.time_dtype, device=self.spec.device)

    def __call__(self, s: float, y: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        out = self.func(self.time(s), self.spec.unflatten(y))
        if not self._checked:
            self._check(out)
        out = self.spec.flatten(out)
        out = -out if self.sign < 0 else out
        if self.on_graph_output is not None and out.requires_grad:
            self.on_graph_output(out, 1)
        return out

    def _check(self, out) -> None:
        spec = self.spec
        parts = out if isinstance(out, tuple) else (out,)
        if spec.is_tuple != isinstance(out, tuple) or len(parts) != len(spec.shapes):
            raise ValueError(f"func must return the same structure as y0 (a {'tuple' if spec.is_tuple else 'tensor'}"
                             f" of {len(spec.shapes)}), but returned {type(out).__name__}"
                             + (f" of {len(parts)}" if isinstance(out, tuple) else ""))
        for i, (p, shape) in enumerate(zip(parts, spec.shapes)):
            where = f"component {i} of " if spec.is_tuple else ""
            if not isinstance(p, torch.Tensor):
                raise ValueError(f"func must return tensors; {where}its output is {type(p).__name__}")
            if p.shape != shape:
                raise ValueError(f"func returned {where}shape {tuple(p.shape)} but the state has shape "
                                 f"{tuple(shape)}; dy/dt must have the shape of y")
            if p.dtype != spec.dtype:
                raise ValueError(f"func returned {where}dtype {p.dtype} but the state is {spec.dtype}; "
                                 f"cast the output (or y0) so that they match")
        self._checked = True


def rms(x: torch.Tensor) -> torch.Tensor:
    """Root mean square of a tensor, as a 0-d tensor (no host synchronisation)."""
    return torch.linalg.vector_norm(x) / math.sqrt(max(x.numel(), 1))


def rms_norm(x: torch.Tensor) -> float:
    """Root mean square of a tensor, as a Python float."""
    return rms(x).item()
