"""``gradient="exact"``: the exact gradient by the fastest replaying strategy that fits a memory budget.

Every exact replaying method differentiates the same discrete map, so they give
the same gradient (to rounding) and differ only in time and memory. Measured on
one CPU thread (``benchmarks/RESULTS.md``), relative to backprop's time:

=============================  ======  =============================================
per-step backward              time    memory it holds
=============================  ======  =============================================
symplectic, stored stages      ~1.37×  step states + ``m-1`` stages per step + 1 use
ACA (``checkpoint``)           ~1.42×  step states + one step's graph (``m`` uses)
symplectic, stages recomputed  ~1.75×  step states + one step's stages + 1 use
=============================  ======  =============================================

(``m``: the stages a step's result depends on; a *use* is one differentiable
evaluation of the network.) Keeping fewer step states than steps (``states.py``)
adds about one forward solve on top. :class:`Exact` therefore decides per step:

1. the forward pass keeps every step state while they fit, and the stages of a
   step while they fit *beside* the reserve the backward pass needs (one ACA
   step's graph when that fits beside the states, else one symplectic step);
2. when a new state does not fit beside the stored stages and that reserve,
   stored stages are dropped first (most recent first) and only then the states
   are thinned (checkpointed step states);
3. backward, per step: stored stages → the symplectic step from them; else, if
   the memory held now plus one ACA step's graph fits the budget → ACA; else →
   the symplectic step that recomputes its stages.

That order is what the table above says on one machine; on another field, device or with
``compile=True`` it can differ (stored stages ran 1.06–1.10× ACA's time on a 43-D MLP).
So by default (``choose="measured"``) Exact times one backward step of each strategy on
the first solve of a field and state shape (:func:`measure_step_costs`, on that solve's
last step, after an untimed warm-up that also compiles), keeps the times per field, shape,
dtype, device, tableau and compile setting, and from then on takes, per step, the fastest
strategy that fits; the forward pass stores stages only where the measured times say they
pay off. ``stats.strategy`` lists the strategies run and the times they were chosen by.

The memory model, in bytes: ``S`` one state, ``U`` one network use, ``P`` the
parameters (one gradient buffer and the running sum), ``m`` needed stages:
a symplectic step holds ``2U + 3mS + 2P`` (a use and its backward's buffers; the
stage states, derivatives and adjoints), an ACA step ``(m+1)U + (2m+2)S + 2P``,
and the forward loop ``(stages+3)S`` beside what is kept. ``U`` is measured, not
guessed: one evaluation of the field with a graph under
``torch.autograd.graph.saved_tensors_hooks``, counting the bytes of the tensors
autograd saves (see :func:`~nodeopt.gradients.memory.saved_tensor_bytes`); this
costs one evaluation per solve, counted in ``stats.nfe``.
"""

from __future__ import annotations

import copy
import logging
import math
import time
import weakref
from dataclasses import dataclass, field
from typing import Optional, Union

import torch

from ..solvers.loop import StageStore
from ..solvers.problem import Problem
from ..solvers.solution import Stats
from ..solvers import compiled
from .base import register
from .checkpoint import Checkpoint
from .memory import free_bytes, saved_tensor_bytes
from .replay import BackwardContext, StepReplay
from .states import ThinnedTrajectory
from .symplectic import SymplecticAdjoint, parse_bytes

log = logging.getLogger(__name__)

DEFAULT_FRACTION = 0.5  # of the memory free on the state's device, for memory=None
PLANNED_FRACTION = 0.65  # of the budget planned for tensors; the rest is the allocator's slack (see Exact)
MIN_STATES = 8  # fewer kept states would make the recomputation of the dropped ones grow quadratically
ORDER = ("symplectic-stored", "checkpoint", "symplectic")
CHOICES = ("measured", "fixed")
TIMED_REPEATS = 3  # timed runs of each strategy's step (the least is kept), after one untimed warm-up


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


@dataclass(frozen=True)
class StepCosts:
    """What one solve's replaying backward holds, in bytes (see the module docstring)."""

    state: int
    use: int
    params: int
    needed: int
    stages: int

    @classmethod
    def measure(cls, problem: Problem, params: tuple[torch.Tensor, ...]) -> "StepCosts":
        """Measure one network use at the initial state (one evaluation of the field, with a graph)."""
        y = problem.y0.detach().requires_grad_(True)
        exclude = list(params)
        if isinstance(problem.func, torch.nn.Module):
            exclude += list(problem.func.parameters()) + list(problem.func.buffers())
        with torch.enable_grad():
            use, _ = saved_tensor_bytes(lambda: problem.dynamics(problem.times[0], y), exclude)
        tab = problem.method.tableau
        return cls(state=_nbytes(problem.y0), use=use, params=sum(_nbytes(p) for p in params),
                   needed=tab.needed_stages, stages=tab.stages)

    @property
    def stage_bytes(self) -> int:
        """The stage derivatives of one step that the symplectic step can reuse."""
        return (self.needed - 1) * self.state

    @property
    def symplectic(self) -> int:
        return 2 * self.use + 3 * self.needed * self.state + 2 * self.params

    @property
    def aca(self) -> int:
        return (self.needed + 1) * self.use + (2 * self.needed + 2) * self.state + 2 * self.params

    @property
    def forward(self) -> int:
        return (self.stages + 3) * self.state


@dataclass
class BudgetTrajectory(ThinnedTrajectory):
    """The forward half of :class:`Exact`: keeps states, then stages, within ``budget`` bytes.

    ``stored`` lists the steps whose stages are kept (increasing); ``peak`` is the
    estimated peak so far; ``used`` counts the steps each backward strategy took.
    """

    budget: float = math.inf
    costs: Optional[StepCosts] = None
    stored: list[int] = field(default_factory=list)
    peak: float = 0.0
    used: dict = field(default_factory=dict)
    seconds: Optional[dict] = None  # measured seconds of one backward step per strategy, if known
    measured_now: bool = False  # whether this solve's backward measured them

    def rank(self, strategy: str) -> float:
        """Lower is faster: the measured seconds of one step, or else the place in the fixed order."""
        return self.seconds[strategy] if self.seconds is not None else ORDER.index(strategy)

    def faster(self, a: str, b: str) -> bool:
        return self.rank(a) < self.rank(b)

    def persistent(self) -> int:
        return self.kept * self.costs.state + len(self.stored) * self.costs.stage_bytes

    def append(self, t: float, h: float, y: torch.Tensor, first: float, last: float,
               stages: Optional[list[torch.Tensor]] = None) -> None:
        c = self.costs
        self.append_step(t, h, y, first, last, None)
        # States first, then the reserve for ACA steps while it fits beside them (ACA beats recomputed
        # stages by far; stored stages beat ACA by little), then stored stages: make room by dropping
        # stored stages (the latest first), and only then by thinning the states.
        reserve = c.aca if self.kept * c.state + c.aca <= self.budget else c.symplectic
        while self.stored and self.persistent() + reserve > self.budget:
            self.stages[self.stored.pop()] = None
        self.thin()
        # Stored stages pay only where they beat what the step would run without them.
        if stages is not None and self.stride == 1 and self.faster(
                "symplectic-stored", "checkpoint" if reserve == c.aca else "symplectic"):
            if self.persistent() + c.stage_bytes + reserve <= self.budget:
                self.stages[-1] = stages
                self.stored.append(len(self.hs) - 1)
        self.peak = max(self.peak, self.persistent() + c.forward)

    def planned(self) -> str:
        """What the backward pass will do, as ``Stats.strategy`` reports it (before it runs)."""
        n, c = len(self), self.costs
        fits = self.persistent() + c.aca <= self.budget
        rest = "checkpoint" if fits and self.faster("checkpoint", "symplectic") else "symplectic"
        self.used = {"symplectic-stored": len(self.stored), rest: n - len(self.stored)}
        return self.describe()

    def describe(self) -> str:
        names = "+".join(k for k in ORDER if self.used.get(k))
        if self.stride > 1:
            names += f"; step states checkpointed (1 in {self.stride} kept)"
        if self.seconds is not None:
            when = "this solve" if self.measured_now else "an earlier solve"
            times = ", ".join(f"{k} {v * 1e3:.3g} ms" for k, v in sorted(self.seconds.items(), key=lambda kv: kv[1]))
            names += f"; fastest that fits by one step's time measured on {when}: {times}"
        return names


@register
class Exact(StepReplay):
    """The exact gradient, computed by the fastest replaying strategy that fits ``memory``.

    Chooses per step among the symplectic adjoint with stored stages, ACA and the
    symplectic adjoint with recomputed stages, and checkpoints the step states
    themselves when even they do not fit (see the module docstring for the rules and
    the memory model). Every choice gives the same exact gradient: that of
    ``Backprop(land=True)``, to rounding error. ``stats.strategy`` says what ran and
    ``stats.estimated_peak_bytes`` the peak the model expected.

    Args:
        choose: ``"measured"`` (default): rank the strategies by one backward step of each, timed
            on the first solve of each field and state shape (see the module docstring);
            ``"fixed"``: rank them in the order of the table above, without measuring.
        memory: the bytes the gradient computation may hold (an int, or a string such as
            ``"256MB"`` or ``"1.5GiB"``): step states, stored stages, and the backward
            pass's working memory, parameter-gradient buffers included. ``None``
            (default): half the memory free when the solve starts on the state's device
            (``torch.cuda.mem_get_info`` on CUDA, ``MemAvailable`` on Linux CPUs, else
            4 GiB). Half, because the rest of a training step (the layers around the
            ODE, the optimiser, the allocator's slack, other processes) needs the rest;
            measured free memory is the one number that fits both a laptop and a GPU.
            Of the budget, ``PLANNED_FRACTION`` is planned for tensors by the
            model above: the process holds more than the tensors' bytes (on CPU, the
            fragmentation of many state-sized blocks on the heap; on CUDA, the caching
            allocator's rounding); ``benchmarks/`` measured peak RSS at up to 1.5× the
            model's bytes on one CPU, hence the 0.65 (≈ 1/1.5). At least
            ``MIN_STATES`` (8) step states are kept, since with fewer the recomputation
            of the dropped ones grows quadratically with the steps; a budget below that
            and one symplectic step runs at that least, and says so in the log.

    Raises:
        ValueError: ``memory`` is not a size (negative, not finite, a bool, or a string
            without a known unit), or ``choose`` is not one of ``"measured"``, ``"fixed"``.
    """

    name = "exact"

    def __init__(self, memory: Union[int, float, str, None] = None, *, choose: str = "measured"):
        self.memory = None if memory is None else parse_bytes(memory, name="memory")
        if choose not in CHOICES:
            raise ValueError(f"choose={choose!r} is not a way to choose; use 'measured' (time each strategy once "
                             f"per field and shape) or 'fixed' (the documented order)")
        self.choose = choose
        self._symplectic, self._aca = SymplecticAdjoint(), Checkpoint()
        self._methods = {"symplectic-stored": self._symplectic, "checkpoint": self._aca,
                         "symplectic": self._symplectic}

    def budget(self, problem: Problem) -> float:
        """The budget of one solve, in bytes."""
        return self.memory if self.memory is not None else DEFAULT_FRACTION * free_bytes(problem.y0.device)

    def stage_store(self, problem: Problem) -> Optional[StageStore]:
        needed = problem.method.tableau.needed_stages
        return StageStore(needed - 1, math.inf) if needed > 1 else None  # offered; the trajectory decides

    def trajectory(self, problem: Problem, params: tuple[torch.Tensor, ...], stats: Stats) -> BudgetTrajectory:
        costs = StepCosts.measure(problem, params)
        budget = PLANNED_FRACTION * self.budget(problem)
        capacity = int((budget - costs.symplectic) // costs.state) if costs.state else 1 << 62
        if capacity < MIN_STATES:
            least = MIN_STATES * costs.state + costs.symplectic
            log.warning("Exact(memory=%.0f bytes) leaves %.0f bytes for tensors, below the %d bytes of the least "
                        "memory this solve runs at (%d step states and one symplectic step); running at that least",
                        budget / PLANNED_FRACTION, budget, least, MIN_STATES)
        seconds = _MEASURED.get(problem) if self.choose == "measured" else None
        return BudgetTrajectory(capacity=max(capacity, MIN_STATES), budget=budget, costs=costs, seconds=seconds)

    def recorded(self, traj: BudgetTrajectory, stats: Stats) -> None:
        stats.strategy = traj.planned()
        stats.estimated_peak_bytes = int(traj.peak)

    def backward(self, ctx: BackwardContext, traj: BudgetTrajectory, grad_outputs: torch.Tensor) -> torch.Tensor:
        traj.used = {}
        if self.choose == "measured" and traj.seconds is None and len(traj):
            traj.seconds = _MEASURED.measure(ctx, traj, self._methods)
            traj.measured_now = True
        grad = super().backward(ctx, traj, grad_outputs)
        ctx.stats.strategy = traj.describe() or ctx.stats.strategy
        ctx.stats.estimated_peak_bytes = int(traj.peak)
        return grad

    def step_backward(self, ctx: BackwardContext, t_first: float, h: float, t_last: float, t: float,
                      y: torch.Tensor, lam: torch.Tensor, stages: Optional[list] = None) -> torch.Tensor:
        traj = ctx.trajectory
        c = traj.costs
        held = ctx.walk.held * c.state + len(traj.stored) * c.stage_bytes
        if stages is not None:
            traj.stored.pop()  # this step's (steps are walked in reverse, stored in order)
        fitting = ["symplectic"] + (["checkpoint"] if held + c.aca <= traj.budget else []) + \
            (["symplectic-stored"] if stages is not None else [])
        choice = min(fitting, key=traj.rank)
        traj.used[choice] = traj.used.get(choice, 0) + 1
        traj.peak = max(traj.peak, held + (c.aca if choice == "checkpoint" else c.symplectic))
        return self._methods[choice].step_backward(ctx, t_first, h, t_last, t, y, lam,
                                                   stages=stages if choice == "symplectic-stored" else None)

    def __repr__(self) -> str:
        args = ([] if self.memory is None else [f"memory={self.memory:.0f}"]) + \
            ([] if self.choose == "measured" else [f"choose={self.choose!r}"])
        return f"Exact({', '.join(args)})"


class StepTimes:
    """Measured seconds of one backward step per strategy, kept per field and configuration.

    The key is the state's shape, dtype and device, the tableau and the compile setting: what a
    step's cost depends on besides the field, which is kept weakly.
    """

    def __init__(self):
        self._times: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()

    @staticmethod
    def key(problem: Problem) -> tuple:
        y = problem.y0
        return (tuple(y.shape), y.dtype, str(y.device), problem.method.tableau, problem.compile, compiled.BACKEND)

    def _table(self, func) -> dict:
        try:
            return self._times.setdefault(func, {})
        except TypeError:  # a field that cannot be weakly referenced: measured on every solve
            return {}

    def get(self, problem: Problem) -> Optional[dict]:
        return self._table(problem.func).get(self.key(problem))

    def measure(self, ctx: BackwardContext, traj: "BudgetTrajectory", methods: dict) -> dict:
        """Time each strategy's backward of the last recorded step; keep and return the seconds."""
        seconds = measure_step_costs(ctx, traj, methods)
        self._table(ctx.func)[self.key(ctx.problem)] = seconds
        return seconds


_MEASURED = StepTimes()


def measure_step_costs(ctx: BackwardContext, traj: "BudgetTrajectory", methods: dict) -> dict:
    """Seconds of one backward step of each strategy, on the trajectory's last step.

    Each runs once untimed (a warm-up, and with ``compile=True`` its compilation), then
    ``TIMED_REPEATS`` times interleaved with the others; the least time is kept. The runs
    use a scratch copy of the context: the gradients and counters of the solve are untouched
    (the evaluations they cost are not counted in its statistics).
    """
    n = len(traj) - 1
    t_first, h, t_last, t, y = traj.step(n)
    if y is None:  # a dropped state: recompute it from the last kept one
        k = max(i for i in range(n + 1) if traj.ys[i] is not None)
        y = traj.ys[k]
        for i in range(k, n):
            y = ctx.advance(traj, i, y)
    stages = traj.stages[n]
    if stages is None:
        _, ks = ctx.stepper.step(ctx.tableau.truncated, t_first, t, h, t_last, y)
        stages = ks[:ctx.tableau.needed_stages - 1]
    lam = torch.ones_like(y)
    nfe = ctx.f.nfe
    scratch = copy.copy(ctx)
    sync = torch.cuda.synchronize if y.is_cuda else (lambda: None)
    best = {k: math.inf for k in methods}
    for repeat in range(TIMED_REPEATS + 1):
        for name, method in methods.items():
            scratch.stats, scratch.param_grads = Stats(), [None] * len(ctx.params)
            sync()
            start = time.perf_counter()
            method.step_backward(scratch, t_first, h, t_last, t, y, lam,
                                 stages=stages if name == "symplectic-stored" else None)
            sync()
            if repeat:
                best[name] = min(best[name], time.perf_counter() - start)
    ctx.f.nfe = nfe
    return best
