"""The integration loop: adaptive or fixed steps, recording what it accepted.

The loop works on one flat tensor in increasing loop time (see ``state.py``),
keeps time in Python floats (float64), and hands back the values at the
requested times. When asked it records every accepted step ``(t_n, h_n, y_n)``:
that trajectory is what the exact gradient methods replay.

Here the host decides each adaptive step (it reads the step's error ratio); a compiled solve
with ``options['sync_every']`` decides on the device instead (``device_loop.py``), sharing this
module's bookkeeping of accepted steps (:class:`Accepted`), its start and its errors.

Output times are reached in one of two ways. Methods with a dense output of
their own order (dopri5, bosh3) interpolate inside a step; every other method,
and every solve with ``land=True``, shortens the step that would cross an
output time so that it ends on it exactly.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import torch

from .control import Controller, ErrorNorm, initial_step
from .step import Stepper, lincomb
from .tableau import Tableau


@dataclass
class Trajectory:
    """The accepted steps of a solve: step ``n`` went from ``(ts[n], ys[n])`` with size ``hs[n]``.

    ``outputs[i]`` is the number of steps taken when output time ``i`` was
    reached (the solve lands on every output time when a trajectory is
    recorded, so output ``i`` is the state after step ``outputs[i] - 1``).
    A subclass may drop states to save memory (``ys[n]`` is then None); the
    times, step sizes and edges are always kept, so dropped states can be
    recomputed bit for bit from a kept one.
    """

    ts: list[float] = field(default_factory=list)
    hs: list[float] = field(default_factory=list)
    ys: list[Optional[torch.Tensor]] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    edges: list[tuple[float, float]] = field(default_factory=list)
    stages: list[Optional[list[torch.Tensor]]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.hs)

    def step(self, n: int) -> tuple[float, float, float, float, torch.Tensor]:
        """``(t_first, h, t_last, t_n, y_n)`` of step ``n``: ``f`` was evaluated at ``t_first`` for the
        first stage and at ``t_last`` for stages with ``c_i = 1`` (they differ from ``t_n`` and
        ``t_n + h`` by one ulp at a ``jump_t`` discontinuity)."""
        first, last = self.edges[n]
        return first, self.hs[n], last, self.ts[n], self.ys[n]

    def append(self, t: float, h: float, y: torch.Tensor, first: float, last: float,
               stages: Optional[list[torch.Tensor]] = None) -> None:
        self.ts.append(t)
        self.hs.append(h)
        self.ys.append(y)
        self.edges.append((first, last))
        self.stages.append(stages)


class StageStore:
    """Keeps the first ``count`` stage derivatives ``k_i`` of accepted steps while they fit in ``budget`` bytes.

    Steps are kept first come, first served (the number of steps is known only at the end);
    the tensors are the loop's own (no copy), so a kept step costs ``count`` state-sized
    tensors that would otherwise have been freed.
    """

    def __init__(self, count: int, budget: float):
        self.count, self.budget, self.used, self.kept = count, budget, 0, 0

    def keep(self, ks: list[torch.Tensor]) -> Optional[list[torch.Tensor]]:
        if self.count == 0:
            return None
        chosen = ks[:self.count]
        need = sum(k.numel() * k.element_size() for k in chosen)
        if self.used + need > self.budget:
            return None
        self.used += need
        self.kept += 1
        return chosen


def _new_trajectory(record: Union[bool, Trajectory]) -> Optional[Trajectory]:
    """Where the loop records: the given trajectory (a subclass may keep only some states), a new one, or none."""
    if isinstance(record, Trajectory):
        return record
    return Trajectory() if record else None


@dataclass
class LoopResult:
    outputs: list[torch.Tensor]
    trajectory: Optional[Trajectory]
    n_steps: int
    n_rejected: int


def _min_step(t: float, target: float) -> float:
    """Below this the step no longer changes ``t`` meaningfully: the solve is stuck."""
    return 8.0 * math.ulp(max(abs(t), abs(target), 1e-300))


def _nonfinite_error(where: str) -> RuntimeError:
    return RuntimeError(f"the dynamics func returned NaN or inf {where}; check func for overflow or "
                        f"division by zero, or lower the tolerances or step size if the state blows up")


def stuck_error(t: float, h_try: float, nonfinite: bool, sign: float) -> RuntimeError:
    """The step shrank below :func:`_min_step` at ``t`` (after non-finite steps, or for accuracy)."""
    if nonfinite:
        return _nonfinite_error(f"for every step tried from t={sign * t:.17g} on (the step shrank to {h_try:.3g})")
    return RuntimeError(f"step size underflow at t={sign * t:.17g} (step {h_try:.3g}): the solver cannot "
                        f"meet rtol/atol here; the dynamics may be stiff or blow up. Loosen rtol/atol, "
                        f"or use a fixed-step method")


def too_many_steps_error(max_num_steps: int, t: float, t0: float, t_end: float, sign: float) -> RuntimeError:
    return RuntimeError(f"max_num_steps={max_num_steps} exceeded at t={sign * t:.6g} of "
                        f"[{sign * t0:g}, {sign * t_end:g}]; raise options['max_num_steps'] or loosen rtol/atol")


def nonfinite_field_error(t: float, sign: float) -> RuntimeError:
    return _nonfinite_error(f"at t={sign * t:.6g}")


def stops_of(tableau: Tableau, times: Sequence[float], step_t: Sequence[float], jump_t: Sequence[float],
             land: bool) -> list[float]:
    """The times an adaptive solve must end a step on: ``step_t`` and ``jump_t`` inside the span, and the
    output times when ``land`` (or the method has no dense output), else the last one only."""
    t0, t_end = times[0], times[-1]
    land = land or not tableau.has_dense_output
    inside = [s for s in set(step_t) | set(jump_t) if t0 < s < t_end]
    return sorted(set(inside) | ({*times[1:]} if land else {t_end}))


def first_evaluation(f: Callable, tableau: Tableau, y0: torch.Tensor, times: Sequence[float], error_norm: ErrorNorm,
                     first_step: Optional[float], sign: float) -> tuple[torch.Tensor, float]:
    """``(k1, h)``: ``f`` at the initial state, checked, and the first step size (given, or Hairer's estimate)."""
    t0, t_end = times[0], times[-1]
    k1 = f(t0, y0)
    if not bool(torch.isfinite(k1).all()):
        raise _nonfinite_error(f"at the initial state (t={sign * t0:g})")
    if first_step is not None:
        return k1, min(first_step, t_end - t0)
    scale = error_norm.initial_scale(y0)
    return k1, initial_step(f, t0, y0, k1, tableau.control_order - 1, lambda x: error_norm.reduce(x / scale),
                            t_end - t0)


class Accepted:
    """What an adaptive loop does with each step it accepts: record it, and hand out the outputs it reaches.

    Outputs strictly inside a step are interpolated with the method's dense output; an output the
    step ends on is its end state.
    """

    def __init__(self, tableau: Tableau, times: Sequence[float], y0: torch.Tensor, traj: Optional[Trajectory],
                 stage_store: Optional[StageStore]):
        self.tableau, self.times, self.traj, self.stage_store = tableau, times, traj, stage_store
        self.outputs = [y0]
        self.n_steps = 0

    @property
    def done(self) -> bool:
        return len(self.outputs) == len(self.times)

    def step(self, t: float, h: float, y: torch.Tensor, t_first: float, t1_eval: float, t1: float,
             y1: torch.Tensor, ks: Optional[list[torch.Tensor]]) -> None:
        """Step ``n_steps`` went from ``(t, y)`` to ``(t1, y1)`` with stages ``ks`` (needed for outputs inside it)."""
        self.n_steps += 1
        times, outputs, traj = self.times, self.outputs, self.traj
        if traj is not None:
            traj.append(t, h, y, t_first, t1_eval, self.stage_store.keep(ks) if self.stage_store is not None else None)
        while len(outputs) < len(times) and times[len(outputs)] < t1:
            theta = (times[len(outputs)] - t) / h
            outputs.append(lincomb(y, h, self.tableau.dense_weights(theta), ks))
        if len(outputs) < len(times) and times[len(outputs)] == t1:
            outputs.append(y1)
            if traj is not None:
                traj.outputs.append(self.n_steps)


def integrate_adaptive(f: Callable, tableau: Tableau, y0: torch.Tensor, times: Sequence[float], *,
                       error_norm: ErrorNorm, controller: Controller, first_step: Optional[float],
                       max_num_steps: int, step_t: Sequence[float] = (), jump_t: Sequence[float] = (),
                       land: bool = False, record: Union[bool, Trajectory] = False, reverse: bool = False,
                       stage_store: Optional[StageStore] = None, stepper: Optional[Stepper] = None) -> LoopResult:
    """Adaptive integration of ``y' = f(t, y)`` from ``times[0]`` through increasing ``times``.

    Args:
        f: loop-time vector field on the flat state.
        tableau: an embedded pair (``tableau.adaptive``).
        y0: flat initial state.
        times: increasing output times, ``times[0]`` the start.
        error_norm: the accept/reject norm.
        controller: proposes the next step size.
        first_step: the first step size, or None for Hairer's estimate.
        max_num_steps: the most steps (accepted and rejected) allowed.
        step_t: times the solver must step to exactly.
        jump_t: discontinuities of ``f``: stepped to exactly, and ``f`` is
            evaluated afresh after them (no first-same-as-last reuse).
        land: end a step on every output time instead of interpolating.
        record: keep the trajectory of accepted steps: ``True`` in a new :class:`Trajectory`, or
            into the one given (whose ``append`` may keep only some of the states).
        reverse: the caller reversed time (only for the wording of errors).
        stage_store: with ``record``, keep accepted steps' stage derivatives too (as it allows).
        stepper: takes the steps (default: eagerly, ``Stepper(f, error_norm)``; a compiled one fuses each).

    Raises:
        RuntimeError: step size underflow, too many steps, non-finite dynamics.
    """
    if len(times) == 1:
        return LoopResult([y0], _new_trajectory(record), 0, 0)
    stepper = stepper or Stepper(f, error_norm)
    t0, t_end = times[0], times[-1]
    traj = _new_trajectory(record)
    stops = stops_of(tableau, times, step_t, jump_t, land or traj is not None)
    jumps = set(jump_t)
    k = tableau.control_order
    sign = -1.0 if reverse else 1.0

    accepted_steps = Accepted(tableau, times, y0, traj, stage_store)
    t, y = t0, y0
    t_k1 = t
    k1, h = first_evaluation(f, tableau, y0, times, error_norm, first_step, sign)
    memory = controller.initial_memory()
    after_reject = nonfinite = False
    n_rejected = 0
    stop_idx = 0

    while not accepted_steps.done:
        target = stops[stop_idx]
        hits = t + h >= target
        h_try, t1 = (target - t, target) if hits else (h, t + h)
        if h_try < _min_step(t, target):
            raise stuck_error(t, h_try, nonfinite, sign)
        if accepted_steps.n_steps + n_rejected >= max_num_steps:
            raise too_many_steps_error(max_num_steps, t, t0, t_end, sign)
        # A step ending on a discontinuity evaluates its last stages just before it.
        t1_eval = math.nextafter(t1, -math.inf) if hits and target in jumps else t1
        y1, ks, ratio = stepper.adaptive(tableau, t_k1, t, h_try, t1_eval, y, k1)
        k1 = ks[0]  # a rejected step is retried from the same (t, y)
        nonfinite = not math.isfinite(ratio)
        if nonfinite:
            if not bool(torch.isfinite(k1).all()):
                raise nonfinite_field_error(t, sign)
            n_rejected += 1
            h = h_try * controller.dfactor
            after_reject = True
            continue
        accepted = ratio <= 1.0
        factor, memory = controller.factor(ratio, memory, k, accepted, after_reject)
        if not accepted:
            n_rejected += 1
            h = h_try * factor
            after_reject = True
            continue

        accepted_steps.step(t, h_try, y, t_k1, t1_eval, t1, y1, ks)
        if hits:
            stop_idx += 1
        fresh = hits and target in jumps
        # Without first-same-as-last the next step evaluates its own first stage (inside a
        # compiled step, as part of its graph); after a discontinuity, just after it.
        k1 = ks[-1] if tableau.fsal and not fresh else None
        t, y = t1, y1
        t_k1 = math.nextafter(t, math.inf) if fresh else t
        # A step cut short to land on a time tells little about the scale the
        # error allows: do not let it shrink the step the controller had planned.
        h = max(h_try * factor, h) if hits else h_try * factor
        after_reject = False
    return LoopResult(accepted_steps.outputs, traj, accepted_steps.n_steps, n_rejected)


def integrate_fixed(f: Callable, tableau: Tableau, y0: torch.Tensor, times: Sequence[float],
                    grid: Sequence[float], *, record: Union[bool, Trajectory] = False, reverse: bool = False,
                    stage_store: Optional[StageStore] = None, stepper: Optional[Stepper] = None) -> LoopResult:
    """Fixed-step integration on ``grid`` (which contains every output time).

    Raises:
        RuntimeError: if the state becomes NaN or inf (checked at output times).
    """
    outputs = [y0]
    traj = _new_trajectory(record)
    stepper = stepper or Stepper(f)
    n_out = 1
    y = y0
    sign = -1.0 if reverse else 1.0
    for n in range(len(grid) - 1):
        t, t1 = grid[n], grid[n + 1]
        h = t1 - t
        # The first evaluation runs eagerly, as in the adaptive loop: it checks func's output, and a
        # field with per-solve state (a CNF's Hutchinson noise) sets it there, outside any graph.
        y1, ks = stepper.step(tableau, t, t, h, t1, y, f(t, y) if n == 0 else None)
        if traj is not None:
            traj.append(t, h, y, t, t1, stage_store.keep(ks) if stage_store is not None else None)
        y = y1
        if t1 == times[n_out]:
            if not bool(torch.isfinite(y).all()):
                raise _nonfinite_error(f"between t={sign * times[n_out - 1]:g} and t={sign * t1:g} "
                                       f"(the state became non-finite)")
            outputs.append(y)
            if traj is not None:
                traj.outputs.append(n + 1)
            n_out += 1
    return LoopResult(outputs, traj, len(grid) - 1, 0)


def merge_grid(grid: Sequence[float], times: Sequence[float]) -> list[float]:
    """The union of a step grid and the output times, clipped to ``[times[0], times[-1]]``.

    Grid points closer than a relative 1e-10 of the span to an output time are
    replaced by it, so no sliver step is taken.
    """
    t0, t_end = times[0], times[-1]
    tol = 1e-10 * (t_end - t0)
    merged = list(times)
    for g in grid:
        if t0 < g < t_end:
            i = bisect.bisect_left(times, g)
            near = min(abs(g - times[j]) for j in (i - 1, i) if 0 <= j < len(times))
            if near > tol:
                merged.append(g)
    return sorted(merged)
