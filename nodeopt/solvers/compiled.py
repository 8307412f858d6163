"""Compiled solves: each Runge–Kutta step one ``torch.compile`` graph, the same graph for every step.

A small vector field costs little arithmetic per step but dozens of operator calls: the
stage evaluations, the linear combinations, the error estimate and its norm, each a
separate kernel launched from Python. ``compile=True`` traces the whole step, stages
to error ratio, into one graph (TorchDynamo with ``fullgraph=True``, Inductor's fused
kernels). Time and step size enter as 0-d float64 tensors, so the graph does not
depend on their values and one compilation serves every step of every solve; the
graph is cached per vector field and configuration (``graph_for``) and recompiled
only when what it was specialised on changes (another dtype, device or tableau; a
new batch size once, after which the size is symbolic).

Compiled and eager steps do the same arithmetic in the same order: stage weights are
rounded to the state's dtype as the eager ``alpha=`` does, times are computed in
float64 and cast as :class:`~nodeopt.solvers.state.Dynamics` casts them. They differ
only where the compiler fuses or reorders floating-point operations (float32 rounding).
"""

from __future__ import annotations

import functools
import itertools
import time
import types
import weakref
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch

from .step import Stepper, rk_error, rk_step
from .tableau import Tableau

#: ``compile=`` accepts True (``"default"``) or one of torch.compile's modes.
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: The torch.compile backend. The test suite checks tracing, caching and the arithmetic of most
#: configurations under "aot_eager" (the same graphs, run by ATen, without code generation) and the
#: generated code itself on the main paths under "inductor".
BACKEND = "inductor"


def compile_mode(compile: Union[bool, str, None]) -> Optional[str]:
    """``compile=`` as a torch.compile mode, or None for an eager solve.

    Raises:
        ValueError: for anything but a bool, None or one of :data:`MODES`.
    """
    if compile is None or compile is False:
        return None
    if compile is True:
        return "default"
    if isinstance(compile, str) and compile in MODES:
        return compile
    raise ValueError(f"compile={compile!r} is not a compile setting; use False (eager), True, or a torch.compile "
                     f"mode: {', '.join(repr(m) for m in MODES)} ('reduce-overhead' adds CUDA graphs on a GPU)")


class CompileError(RuntimeError):
    """The vector field could not be traced into one graph; the message names the eager fallback."""


@dataclass
class CompileLog:
    """What compiling cost one solve: seconds spent in calls that compiled, and graphs compiled."""

    seconds: float = 0.0
    graphs: int = 0

    def add(self, other: "CompileLog") -> None:
        """Count another solve's compiling in this one's (the continuous adjoint's backward solves)."""
        self.seconds += other.seconds
        self.graphs += other.graphs

    def report(self, stats) -> None:
        """Write the totals so far into a :class:`~nodeopt.solvers.solution.Stats`."""
        stats.compile_seconds, stats.compiled_graphs = self.seconds, self.graphs


def _graphs_compiled() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


_SERIAL = itertools.count()


def _fresh_code(fn: Callable) -> Callable:
    """``fn`` with a code object of its own, under a name of its own.

    TorchDynamo keeps its compiled graphs on the code object, at most
    ``recompile_limit`` (8) per object, and falls back to eager beyond that; and it
    remembers which input sizes changed between calls (automatic dynamic shapes) per
    file, line and name. The step bodies are closures of a few functions shared by every
    field, tableau and configuration: a code object and a name per configuration give
    each its own cache and its own record of sizes.
    """
    name = f"{fn.__code__.co_name}_{next(_SERIAL)}"
    code = fn.__code__.replace(co_name=name, co_qualname=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


class Graph:
    """``body`` compiled as one graph; a failure to trace names the eager fallback.

    Calls that compile (the first, and a recompilation on a new shape) are timed into the
    :class:`CompileLog` given to :meth:`__call__`. On the first call in each grad mode the
    backward graph of a differentiable body is compiled together with the forward one
    (``force_non_lazy_backward_lowering``), so that its compilation falls in that timed call
    rather than in a later backward pass (a recompilation for a new shape compiles its
    backward lazily, when the backward pass first runs; that time is not counted).
    """

    def __init__(self, body: Callable, mode: str, what: str):
        self.what = what
        self.warm = set()  # the grad modes called in so far (a first call in a mode compiles)
        options = dict(mode=None if mode == "default" else mode) if BACKEND == "inductor" else {}
        self.fn = torch.compile(_fresh_code(body), fullgraph=True, backend=BACKEND, **options)

    def __call__(self, log: CompileLog, *args):
        before, start = _graphs_compiled(), time.perf_counter()
        mode = torch.is_grad_enabled()
        try:
            if mode in self.warm:
                out = self.fn(*args)
            else:
                with torch._functorch.config.patch(force_non_lazy_backward_lowering=True):
                    out = self.fn(*args)
                self.warm.add(mode)
        except torch._dynamo.exc.TorchDynamoException as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CompileError(f"compile=True could not trace {self.what} into one graph: {reason}. Pass "
                               f"compile=False to solve eagerly (same results, one operation at a time), or make "
                               f"func traceable (no .item(), NumPy or Python branching on tensor values)") from exc
        compiled = _graphs_compiled() - before
        if compiled:
            log.graphs += compiled
            log.seconds += time.perf_counter() - start
        return out


_GRAPHS: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()


def graph_for(func: Callable, key: tuple, build: Callable[[], Callable], mode: str, what: str) -> Graph:
    """The compiled graph of ``build()`` for ``func`` and ``key``, compiled once and kept while ``func`` lives.

    ``key`` must hold everything ``build``'s body closes over (tableau, tolerances, state
    structure, ...); the body takes ``func`` as its first argument rather than closing over
    it, so that the cache does not keep ``func`` alive. A bound method is kept under its instance.
    """
    owner, key = (func.__self__, (func.__func__,) + key) if isinstance(func, types.MethodType) else (func, key)
    key = key + (mode, BACKEND)
    try:
        graphs = _GRAPHS.setdefault(owner, {})
    except TypeError:  # not weakly referenceable: compiled for this solve only
        graphs = {}
    if key not in graphs:
        graphs[key] = Graph(build(), mode, what)
    return graphs[key]


def traced_field(spec, sign: float, time_dtype: torch.dtype) -> Callable:
    """The loop-time field ``f(func, s, y_flat)`` of a solve, with ``s`` a 0-d tensor.

    What :class:`~nodeopt.solvers.state.Dynamics` computes, minus its Python bookkeeping
    (counting, the first call's checks), so that it can be traced. ``func`` is an argument
    rather than captured, so that the cached graphs do not keep the field alive.
    """
    def field(func: Callable, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = spec.flatten(func((s * sign).to(time_dtype), spec.unflatten(y)))
        return -out if sign < 0 else out

    return field


def resolved(tableau: Tableau) -> Tableau:
    """``tableau`` with its derived numbers computed: TorchDynamo cannot trace the first access of a
    ``functools.cached_property`` (it takes a lock), only the plain attribute read after it."""
    for name in ("fsal", "a_pairs", "b_pairs", "needed_stages", "truncated", "symplectic_partner"):
        getattr(tableau, name)
    if tableau.adaptive:
        getattr(tableau, "error_pairs")
    return tableau


def unpack(times: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(t_first, t, h, t1)`` from the one tensor :meth:`CompiledStepper.times` makes of them."""
    return times[0], times[1], times[2], times[3]


def parameter_names(func, params) -> Optional[tuple[str, ...]]:
    """The names of ``params`` in ``func`` (an ``nn.Module``), for :func:`substituted`; None when ``func``
    is no module or some of ``params`` are not its parameters (a compiled backward then runs eagerly)."""
    if not isinstance(func, torch.nn.Module):
        return None
    names = {id(p): name for name, p in func.named_parameters()}
    if not all(id(p) in names for p in params):
        return None
    return tuple(names[id(p)] for p in params)


def substituted(func: torch.nn.Module, names: tuple[str, ...], params) -> Callable:
    """``func`` with the parameters ``names`` replaced by ``params`` (``torch.func.functional_call``),
    so that ``torch.func.vjp`` can differentiate with respect to them inside a graph."""
    return lambda *args: torch.func.functional_call(func, dict(zip(names, params)), args)


def _step_body(field: Callable, tableau: Tableau) -> Callable:
    resolved(tableau)

    def step(func, times, y, k1):
        t_first, t, h, t1 = unpack(times)
        f = functools.partial(field, func)
        return rk_step(f, tableau, t, h, t1, y, f(t_first, y) if k1 is None else k1)
    return step


def _adaptive_body(field: Callable, tableau: Tableau, error_norm) -> Callable:
    resolved(tableau)

    def adaptive(func, times, y, k1):
        t_first, t, h, t1 = unpack(times)
        f = functools.partial(field, func)
        y1, ks = rk_step(f, tableau, t, h, t1, y, f(t_first, y) if k1 is None else k1)
        y0, y1_, err = y.detach(), y1.detach(), rk_error(tableau, h, [k.detach() for k in ks])
        if error_norm.norm is None:
            return y1, ks, error_norm.ratio(y0, y1_, err)
        return y1, ks, error_norm.scaled(y0, y1_, err)  # a user's norm runs eagerly on this
    return adaptive


def _tolerance_key(tol) -> tuple:
    return tuple(tol.tolist()) if isinstance(tol, torch.Tensor) else float(tol)


class CompiledStepper(Stepper):
    """A :class:`~nodeopt.solvers.step.Stepper` whose steps are compiled graphs.

    Args:
        dynamics: the solve's :class:`~nodeopt.solvers.state.Dynamics` (its evaluation count
            is kept up to date: each step adds the stages its graph evaluated).
        error_norm: the accept/reject norm (adaptive solves).
        mode: a torch.compile mode (see :func:`compile_mode`).
        log: where compile time and graph counts are added.
    """

    compiled = True

    def __init__(self, dynamics, error_norm, mode: str, log: CompileLog):
        super().__init__(dynamics, error_norm)
        self.mode, self.log = mode, log
        spec = dynamics.spec
        self.field = traced_field(spec, dynamics.sign, dynamics.time_dtype)
        self.device = spec.device
        self.key = (spec.is_tuple, spec.shapes if spec.is_tuple else None, dynamics.sign, dynamics.time_dtype)
        self._graphs: dict = {}

    def times(self, t_first: float, t: float, h: float, t1: float) -> torch.Tensor:
        """A step's first-stage time, start, size and end as the one float64 tensor the graphs take
        (one host-to-device copy a step; see :func:`unpack`)."""
        return torch.tensor((t_first, t, h, t1), dtype=torch.float64, device=self.device)

    def graph(self, kind: tuple, tableau: Tableau, build: Callable[[], Callable], uses_norm: bool) -> Graph:
        """The graph of ``build()``: looked up in the per-field cache (:func:`graph_for`) once per solve, then
        kept here. ``kind`` names it and holds what its body closes over besides the tableau, the state's
        structure and, when ``uses_norm``, the error norm's tolerances."""
        graph = self._graphs.get((kind, tableau))
        if graph is None:
            norm = self.error_norm
            tolerances = (_tolerance_key(norm.rtol), _tolerance_key(norm.atol), norm.norm is None) if uses_norm else ()
            graph = self._graphs[kind, tableau] = graph_for(self.f.func, (kind, tableau) + tolerances + self.key, build,
                                                            self.mode, f"one {tableau.name} step of func")
        return graph

    def count(self, tableau: Tableau, k1, y1: torch.Tensor) -> None:
        """Add the stages a step's graph evaluated (all but a given ``k1``) to the evaluation count."""
        evaluations = tableau.stages - (k1 is not None)
        self.f.nfe += evaluations
        if self.f.on_graph_output is not None and y1.requires_grad:
            self.f.on_graph_output(y1, evaluations)

    def step(self, tableau, t_first, t, h, t1, y, k1=None):
        graph = self.graph(("step",), tableau, functools.partial(_step_body, self.field, tableau), uses_norm=False)
        y1, ks = graph(self.log, self.f.func, self.times(t_first, t, h, t1), y, k1)
        self.count(tableau, k1, y1)
        return y1, list(ks)

    def adaptive(self, tableau, t_first, t, h, t1, y, k1=None):
        build = functools.partial(_adaptive_body, self.field, tableau, self.error_norm)
        graph = self.graph(("adaptive",), tableau, build, uses_norm=True)
        y1, ks, ratio = graph(self.log, self.f.func, self.times(t_first, t, h, t1), y, k1)
        self.count(tableau, k1, y1)
        ratio = float(ratio) if self.error_norm.norm is None else self.error_norm.reduce(ratio)
        return y1, list(ks), ratio
