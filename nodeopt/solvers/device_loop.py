"""Adaptive compiled solves that decide on the device, the host reading back once every few steps.

The eager loop (``loop.integrate_adaptive``) reads each step's error ratio on the host to
accept or reject the step and size the next one: one device-to-host synchronisation per
step, which on a GPU drains the queue of kernels every step. With ``options['sync_every']
= K`` a compiled solve folds that decision into the step's graph. One *attempt* takes the
step from ``(t, y)`` with the planned size (cut to end on the next stop), computes the error
ratio, accepts or rejects, and computes the next step size, controller memory and stop, all
as tensors; a rejected attempt, or one queued after the solve ended or failed, leaves the
state as it was (``torch.where``). The host queues up to K attempts without waiting, then
reads what they did in one transfer and replays its own bookkeeping (``loop.Accepted``):
the trajectory the gradient methods replay, the outputs, the step counts and the errors.

The steps taken are the eager loop's: the same error ratios and the controller's own
arithmetic in float64 (``factor_on_device``). What it costs: attempts queued past the end
are wasted (batches grow 1, 2, 4, ... and never exceed the steps expected to remain at the
planned step size, so only a growing step wastes one or two); a method without
first-same-as-last re-evaluates its first stage on the first step and after a rejection;
under backprop a rejected attempt stays in the autograd graph (with zero gradient) instead of
being dropped, and outputs inside a step (dense output without ``land``) keep each queued
attempt's stages until the read-back. ``jump_t`` and a user's ``norm`` need the host at each
step: ``make_problem`` refuses them with ``sync_every`` (the continuous adjoint's seminorm
backward solve drops ``sync_every`` instead).
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Sequence, Union

import torch

from .compiled import CompiledStepper, resolved
from .control import Controller, ErrorNorm
from .loop import (Accepted, LoopResult, StageStore, Trajectory, _new_trajectory, first_evaluation,
                   nonfinite_field_error, stops_of, stuck_error, too_many_steps_error)
from .step import rk_error, rk_step
from .tableau import Tableau

#: The clock an attempt reads and writes: time, planned step, controller memory, whether the last
#: attempt was rejected, the failure (a code below), whether the last attempt's error was
#: non-finite. One float64 tensor (codes and flags are exact in it).
CLOCK = T, H, MEMORY, AFTER_REJECT, FAILED, NONFINITE = range(6)
#: What an attempt reports: its start, its step size, its end, its status (1 accepted, 0 rejected,
#: -1 idle: queued after the end or a failure) and its failure code.
RECORD = 5
#: Failure codes: the step size underflowed; it underflowed after non-finite errors; the field
#: returned NaN or inf at the start of the step.
UNDERFLOW, NONFINITE_STEPS, NONFINITE_FIELD = 1, 2, 3


def _min_step(t: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``loop._min_step`` on 0-d float64 tensors (``math.ulp(x)`` is ``nextafter(x, inf) - x`` for ``x > 0``)."""
    m = torch.maximum(torch.maximum(t.abs(), target.abs()), t.new_tensor(1e-300))
    return 8.0 * (torch.nextafter(m, t.new_tensor(math.inf)) - m)


def attempt_body(field, tableau: Tableau, error_norm: ErrorNorm, controller: Controller, keep_stages: bool):
    """The compiled attempt: ``(func, stops, clock, y, k1) -> (y, k1, clock, record, ks)``.

    ``k1`` is the first stage at ``(t, y)`` for a first-same-as-last method (None otherwise: the
    attempt evaluates it); ``ks`` is the attempt's stages when ``keep_stages``, else empty.
    """
    resolved(tableau)
    k = tableau.control_order

    def attempt(func, stops, clock, y, k1):
        f = functools.partial(field, func)
        t, h, memory = clock[T], clock[H], clock[MEMORY]
        after_reject, failed, was_nonfinite = clock[AFTER_REJECT] > 0, clock[FAILED], clock[NONFINITE] > 0
        # The next stop is the first after t: a step that reaches a stop ends on it exactly.
        waiting = (t < stops[-1]) & (failed == 0)
        target = torch.where(stops > t, stops, stops[-1]).amin()
        hits = t + h >= target
        h_try = torch.where(hits, target - t, h)
        t1 = torch.where(hits, target, t + h)
        stuck = waiting & (h_try < _min_step(t, target))
        active = waiting & ~stuck

        y1, ks = rk_step(f, tableau, t, h_try, t1, y, f(t, y) if k1 is None else k1)
        ratio = error_norm.ratio(y.detach(), y1.detach(), rk_error(tableau, h_try, [s.detach() for s in ks]))
        ratio = ratio.to(torch.float64)
        finite = torch.isfinite(ratio)
        bad_field = active & ~finite & ~torch.isfinite(ks[0].detach()).all()
        active = active & ~bad_field
        ok = ratio <= 1.0
        accepted = active & ok
        factor, new_memory = controller.factor_on_device(ratio, memory, k, ok, after_reject)
        # A step cut short to land on a stop does not shrink the step the controller had planned.
        grown = torch.where(hits, torch.maximum(h_try * factor, h), h_try * factor)
        h_next = torch.where(finite, torch.where(ok, grown, h_try * factor), h_try * controller.dfactor)
        code = torch.where(stuck, torch.where(was_nonfinite, float(NONFINITE_STEPS), float(UNDERFLOW)),
                           torch.where(bad_field, float(NONFINITE_FIELD), 0.0)).to(torch.float64)
        clock = torch.stack([
            torch.where(accepted, t1, t),
            torch.where(active, h_next, h),
            torch.where(accepted, new_memory, memory),
            torch.where(active, (~accepted).to(torch.float64), clock[AFTER_REJECT]),
            torch.where(code > 0, code, failed),
            torch.where(active, (~finite).to(torch.float64), clock[NONFINITE]),
        ])
        status = torch.where(accepted, 1.0, torch.where(active, 0.0, -1.0)).to(torch.float64)
        record = torch.stack([t, h_try, t1, status, code])
        y = torch.where(accepted, y1, y)
        k1 = torch.where(accepted, ks[-1], ks[0]) if tableau.fsal else None
        return y, k1, clock, record, ks if keep_stages else []
    return attempt


def integrate_on_device(stepper: CompiledStepper, tableau: Tableau, y0: torch.Tensor, times: Sequence[float], *,
                        error_norm: ErrorNorm, controller: Controller, first_step: Optional[float],
                        max_num_steps: int, sync_every: int, step_t: Sequence[float] = (), land: bool = False,
                        record: Union[bool, Trajectory] = False, reverse: bool = False,
                        stage_store: Optional[StageStore] = None) -> LoopResult:
    """``loop.integrate_adaptive`` (without ``jump_t``) with step control in the compiled graph: at most
    ``sync_every`` attempts between two reads of the device. Same arguments, results and errors."""
    if len(times) == 1:
        return LoopResult([y0], _new_trajectory(record), 0, 0)
    sign = -1.0 if reverse else 1.0
    traj = _new_trajectory(record)
    stops = stops_of(tableau, times, step_t, (), land or traj is not None)
    # An output time that is no stop is interpolated inside a step, from the step's stages.
    keep_stages = stage_store is not None or not set(times[1:]) <= set(stops)
    k1, h = first_evaluation(stepper.f, tableau, y0, times, error_norm, first_step, sign)
    accepted = Accepted(tableau, times, y0, traj, stage_store)
    device = y0.device
    clock = torch.tensor([times[0], h, controller.initial_memory(), 0, 0, 0], dtype=torch.float64, device=device)
    stop_times = torch.tensor(stops, dtype=torch.float64, device=device)
    k1 = k1 if tableau.fsal else None
    build = functools.partial(attempt_body, stepper.field, tableau, error_norm, controller, keep_stages)
    graph = stepper.graph(("attempt", controller, keep_stages), tableau, build, uses_norm=True)
    y, t, n_rejected, ramp = y0, times[0], 0, 1
    while not accepted.done:
        left = max_num_steps - accepted.n_steps - n_rejected
        if left <= 0:
            raise too_many_steps_error(max_num_steps, t, times[0], times[-1], sign)
        # No more attempts than the steps left at the planned size, which can only grow: and, as the
        # first steps often grow it tenfold, batches of 1, 2, 4, ... up to sync_every.
        expected = max(1, math.ceil((times[-1] - t) / h))
        queued = []
        for _ in range(min(ramp, sync_every, left, expected)):
            y_new, k1_new, clock, row, ks = graph(stepper.log, stepper.f.func, stop_times, clock, y, k1)
            stepper.count(tableau, k1, y_new)
            k1 = k1_new
            queued.append((y, y_new, row, ks))
            y = y_new
        values = torch.cat([torch.stack([q[2] for q in queued]).flatten(), clock]).tolist()  # the one read-back
        for i, (y_start, y_end, _, ks) in enumerate(queued):
            t_start, h_try, t1, status, code = values[RECORD * i:RECORD * (i + 1)]
            if code == NONFINITE_FIELD:
                raise nonfinite_field_error(t_start, sign)
            if code:
                raise stuck_error(t_start, h_try, code == NONFINITE_STEPS, sign)
            if status == 1:
                accepted.step(t_start, h_try, y_start, t_start, t1, t1, y_end, ks)
            elif status == 0:
                n_rejected += 1
        t, h = values[-len(CLOCK) + T], values[-len(CLOCK) + H]
        ramp *= 2
    return LoopResult(accepted.outputs, traj, accepted.n_steps, n_rejected)
