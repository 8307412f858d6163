"""Every input normalised once, at the boundary: a :class:`Problem` the loop can run.

``make_problem`` checks ``func``, ``y0``, ``t``, the tolerances, the method and
its options, and raises a ``ValueError``/``TypeError`` that names the argument,
the value received and the fix.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch

from .compiled import CompiledStepper, CompileLog, compile_mode
from .control import ErrorNorm, IController, PIController
from .device_loop import integrate_on_device
from .loop import LoopResult, Trajectory, integrate_adaptive, integrate_fixed, merge_grid
from .methods import RungeKutta, get_method
from .state import Dynamics, StateSpec
from .step import Stepper

ADAPTIVE_OPTIONS = ("first_step", "max_num_steps", "step_t", "jump_t", "dtype", "norm",
                    "safety", "ifactor", "dfactor", "controller", "sync_every")
FIXED_OPTIONS = ("step_size", "grid_constructor", "dtype")
DEFAULT_MAX_NUM_STEPS = 100_000


@dataclass
class Problem:
    """A checked initial value problem, in loop time (increasing) on a flat state."""

    func: Callable
    y0: torch.Tensor
    t: torch.Tensor
    times: list[float]
    spec: StateSpec
    reverse: bool
    method: RungeKutta
    dynamics: Dynamics
    error_norm: Optional[ErrorNorm]
    options: dict
    rtol: object = 1e-7
    atol: object = 1e-9
    raw_options: Optional[dict] = None
    stepper: Optional[Stepper] = None  # how steps are taken: eagerly, or as compiled graphs
    compile: Optional[str] = None  # the torch.compile mode, or None (eager)
    compile_log: CompileLog = dataclasses.field(default_factory=CompileLog)

    def __post_init__(self):
        if self.stepper is None:
            self.stepper = CompiledStepper(self.dynamics, self.error_norm, self.compile, self.compile_log) \
                if self.compile else Stepper(self.dynamics, self.error_norm)

    @property
    def sign(self) -> float:
        return -1.0 if self.reverse else 1.0

    def run(self, y0: Optional[torch.Tensor] = None, *, record: Union[bool, Trajectory] = False,
            land: bool = False, stage_store=None) -> LoopResult:
        """Integrate from ``y0`` (default: the problem's) under the current autograd mode.

        ``record``: keep the accepted steps (``True``), or record them into the given
        :class:`~nodeopt.solvers.loop.Trajectory` (which may keep only some states).
        ``stage_store`` (a ``loop.StageStore``), with ``record``: keep accepted steps' stages too.
        """
        y0 = self.y0 if y0 is None else y0
        tab = self.method.tableau
        o = self.options
        if tab.adaptive:
            common = dict(error_norm=self.error_norm, controller=o["controller"], first_step=o["first_step"],
                          max_num_steps=o["max_num_steps"], step_t=o["step_t"], land=land, record=record,
                          reverse=self.reverse, stage_store=stage_store)
            if o["sync_every"] > 1:
                return integrate_on_device(self.stepper, tab, y0, self.times, sync_every=o["sync_every"], **common)
            return integrate_adaptive(self.dynamics, tab, y0, self.times, jump_t=o["jump_t"], stepper=self.stepper,
                                      **common)
        return integrate_fixed(self.dynamics, tab, y0, self.times, o["grid"], record=record, reverse=self.reverse,
                               stage_store=stage_store, stepper=self.stepper)


def _check_y0(y0) -> StateSpec:
    if isinstance(y0, list):
        raise TypeError("y0 must be a tensor or a tuple of tensors, got a list; pass tuple(y0)")
    parts = y0 if isinstance(y0, tuple) else (y0,)
    if not parts:
        raise ValueError("y0 is an empty tuple; pass at least one tensor")
    for i, p in enumerate(parts):
        name = f"y0[{i}]" if isinstance(y0, tuple) else "y0"
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(p).__name__}")
        if p.is_complex():
            raise TypeError(f"{name} has complex dtype {p.dtype}, which nodeopt does not integrate; "
                            f"split it into real and imaginary parts (torch.view_as_real)")
        if not p.is_floating_point():
            raise TypeError(f"{name} has dtype {p.dtype}; the state must be floating point, e.g. y0.float() "
                            f"or y0.double()")
        if p.dtype != parts[0].dtype or p.device != parts[0].device:
            raise ValueError(f"all components of y0 must share one dtype and device; y0[0] is "
                             f"{parts[0].dtype} on {parts[0].device}, {name} is {p.dtype} on {p.device}")
    return StateSpec(y0)


def _check_t(t) -> tuple[torch.Tensor, list[float], bool]:
    if not isinstance(t, torch.Tensor):
        try:
            t = torch.as_tensor(t, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"t must be a 1-D tensor of times, got {type(t).__name__}") from None
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"t must be a non-empty 1-D tensor of times, got shape {tuple(t.shape)}")
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"t must hold real times, got dtype {t.dtype}")
    values = [float(x) for x in t.detach().cpu().tolist()]
    if not all(math.isfinite(x) for x in values):
        raise ValueError(f"t must be finite, got {values}")
    diffs = [b - a for a, b in zip(values, values[1:])]
    reverse = bool(diffs) and diffs[0] < 0
    if not all((d < 0) if reverse else (d > 0) for d in diffs):
        raise ValueError(f"t must be strictly increasing or strictly decreasing, got {values}; sort it and "
                         f"drop repeated times")
    times = [-x for x in values] if reverse else values
    return t, times, reverse


def _check_tol(name: str, value, spec: StateSpec):
    items = value if isinstance(value, (tuple, list)) else (value,)
    for v in items:
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a non-negative finite number (or one per component of a tuple "
                             f"state), got {value!r}")
    if isinstance(value, (tuple, list)):
        return spec.expand_tolerance([float(v) for v in value], name)
    return float(value)


def _times(name: str, value, sign: float) -> list[float]:
    if value is None:
        return []
    vals = value.detach().cpu().reshape(-1).tolist() if isinstance(value, torch.Tensor) else list(value)
    out = [sign * float(v) for v in vals]
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"options[{name!r}] must hold finite times, got {vals}")
    return out


def _positive(name: str, value, kind=float):
    whole = kind is int
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0
            or not math.isfinite(value) or (whole and not float(value).is_integer())):
        raise ValueError(f"options[{name!r}] must be a positive number{' (a whole number)' if whole else ''}, "
                         f"got {value!r}")
    return kind(value)


def _check_options(options: Optional[dict], method: RungeKutta, spec: StateSpec, func, y0, t, times,
                   reverse: bool) -> dict:
    options = dict(options or {})
    valid = ADAPTIVE_OPTIONS if method.adaptive else FIXED_OPTIONS
    unknown = sorted(set(options) - set(valid))
    if unknown:
        kind = "adaptive" if method.adaptive else "fixed-step"
        raise ValueError(f"unknown option(s) {unknown} for the {kind} method {method.name!r}; valid options are "
                         f"{list(valid)}")
    sign = -1.0 if reverse else 1.0
    out = {"dtype": options.get("dtype", spec.dtype)}
    if out["dtype"] not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(f"options['dtype'] is the dtype of the time passed to func and must be a real floating "
                         f"torch dtype, got {out['dtype']!r}")
    if method.adaptive:
        first = options.get("first_step")
        out["first_step"] = None if first is None else _positive("first_step", abs(float(first)))
        out["max_num_steps"] = _positive("max_num_steps", options.get("max_num_steps", DEFAULT_MAX_NUM_STEPS), int)
        out["step_t"] = _times("step_t", options.get("step_t"), sign)
        out["jump_t"] = _times("jump_t", options.get("jump_t"), sign)
        out["norm"] = options.get("norm")
        if out["norm"] is not None and not callable(out["norm"]):
            raise TypeError(f"options['norm'] must be callable, got {type(out['norm']).__name__}")
        controller = options.get("controller")
        factors = {k: options[k] for k in ("safety", "ifactor", "dfactor") if k in options}
        if controller is None:
            controller = PIController(**factors)
        elif isinstance(controller, str) and controller in ("pi", "i"):
            controller = (PIController if controller == "pi" else IController)(**factors)
        elif not isinstance(controller, (PIController, IController)):
            raise ValueError(f"options['controller'] must be 'pi', 'i' or a PIController/IController, got "
                             f"{controller!r}")
        elif factors:
            raise ValueError(f"give safety/ifactor/dfactor to the controller object, not also as options: {factors}")
        out["controller"] = controller
        out["sync_every"] = _sync_every(options, out)
    else:
        out["grid"] = _fixed_grid(options, func, y0, t, times, sign)
    return out


def _sync_every(options: dict, checked: dict) -> int:
    """``options['sync_every']``: the most steps a compiled adaptive solve takes between two reads of the
    device (``device_loop``); 1, the default, reads each step's error ratio on the host."""
    value = _positive("sync_every", options.get("sync_every", 1), int)
    if value > 1 and (checked["jump_t"] or checked["norm"] is not None):
        given = "options['jump_t']" if checked["jump_t"] else "options['norm']"
        raise ValueError(f"options['sync_every']={value} cannot be used with {given}, which needs the host at "
                         f"every step; drop sync_every (or set it to 1)")
    return value


def _fixed_grid(options: dict, func, y0, t, times: list[float], sign: float) -> list[float]:
    step_size, constructor = options.get("step_size"), options.get("grid_constructor")
    if step_size is not None and constructor is not None:
        raise ValueError("give options['step_size'] or options['grid_constructor'], not both")
    if step_size is not None:
        h = _positive("step_size", abs(float(step_size)))
        n = math.ceil((times[-1] - times[0]) / h - 1e-10)
        return merge_grid([times[0] + i * h for i in range(n)], times)
    if constructor is not None:
        grid = constructor(func, y0, t)
        grid = [sign * float(g) for g in torch.as_tensor(grid).detach().cpu().reshape(-1).tolist()]
        if any(b <= a for a, b in zip(grid, grid[1:])):
            raise ValueError("options['grid_constructor'] must return a grid ordered like t, without repeats")
        return merge_grid(grid, times)
    return list(times)


def make_problem(func: Callable, y0, t, rtol, atol, method: Union[str, RungeKutta, None],
                 options: Optional[dict], compile: Union[bool, str, None] = False) -> Problem:
    """Check and normalise ``odeint``'s arguments (``compile``: see :func:`~nodeopt.solvers.compiled.compile_mode`).

    Raises:
        TypeError, ValueError: naming the argument, the value and the fix.
    """
    if not callable(func):
        raise TypeError(f"func must be callable as func(t, y), got {type(func).__name__}")
    mode = compile_mode(compile)
    spec = _check_y0(y0)
    t, times, reverse = _check_t(t)
    method = get_method(method)
    raw_rtol, raw_atol = rtol, atol
    rtol = _check_tol("rtol", rtol, spec)
    atol = _check_tol("atol", atol, spec)
    opts = _check_options(options, method, spec, func, y0, t, times, reverse)
    if method.adaptive and opts["sync_every"] > 1 and mode is None:
        raise ValueError(f"options['sync_every']={opts['sync_every']} applies to compiled solves, whose step "
                         f"control runs on the device; pass compile=True too, or drop sync_every")
    if method.adaptive and _all_zero(rtol) and _all_zero(atol):
        raise ValueError("rtol and atol are both zero: no step can meet that; set atol (e.g. 1e-9) or rtol")
    dynamics = Dynamics(func, spec, reverse, opts["dtype"])
    norm = ErrorNorm(spec, rtol, atol, opts.get("norm")) if method.adaptive else None
    return Problem(func, spec.flatten(y0), t, times, spec, reverse, method, dynamics, norm, opts,
                   rtol=raw_rtol, atol=raw_atol, raw_options=dict(options or {}), compile=mode)


def _all_zero(tol) -> bool:
    return bool((tol == 0).all()) if isinstance(tol, torch.Tensor) else tol == 0.0

