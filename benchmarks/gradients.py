"""Gradient-method benchmarks: nodeopt's five gradient methods against torchdiffeq.

Run from the repository root::

    python -m benchmarks.gradients                 # full run (about 12 minutes on 2 CPU cores)
    python -m benchmarks.gradients --quick         # smoke run (a few seconds per method)

Options: ``--workloads cnf,cnf-mild,conv,long`` (default: these four; ``cnf-compiled`` is
the fifth, run on request), ``--repeats N``
(timing rounds; default per workload), ``--out PATH`` (JSON; default
``benchmarks/out/gradients.json``, ``benchmarks/out/gradients-quick.json`` with
``--quick``), ``--no-memory`` (skip the memory subprocesses), ``--memory-only``
(re-measure only the peak memory of the results in the JSON file), ``--append`` (keep
the results of the workloads not run now that are already in the JSON file, and
check the targets over all of them).

For every workload and every method (nodeopt ``backprop``, ``adjoint``,
``onecheckpoint``, ``checkpoint`` (ACA), ``symplectic``; torchdiffeq ``odeint``
(backprop) and ``odeint_adjoint``, both at their defaults), with the loss
``L = sum(v * y(T))`` for a fixed random ``v``:

* **time**: wall time of one forward + backward. All methods run in one
  process with ``torch.set_num_threads(1)``; one untimed warm-up run each, then
  ``repeats`` rounds, each round running every method once, the order rotated
  from round to round, the garbage collector off while the clock runs.
  Reported: the median over the rounds, and the median over the rounds of
  (method time / backprop time in the same round), which is less sensitive
  to the drift of a shared machine.
* **peak memory** above baseline, in a fresh subprocess per method
  (``python -m benchmarks.gradients --child ...``, ``MALLOC_MMAP_THRESHOLD_=65536``
  so that freed tensors go back to the OS): one warm-up forward + backward,
  everything freed, ``gc.collect()`` and glibc's ``malloc_trim(0)`` (the smaller
  tensors live on the heap, whose freed memory would otherwise stay resident
  and be reused unseen by the measured run), ``5`` written to
  ``/proc/self/clear_refs`` (resets VmHWM), VmRSS read as the baseline, one more
  forward + backward, then ``VmHWM - baseline``. ``--memory-only`` re-measures
  the memory of the results already in the JSON file.
* **counts**: function evaluations of the forward solve, evaluations of the
  backward pass made without a graph, and vector-Jacobian products through the
  field in the backward pass. nodeopt's come from ``Solution.stats``;
  torchdiffeq's from a wrapper around the field that counts calls in the
  forward and in the backward phase and hooks every output that joins a graph
  (a hook that fires is one VJP). The wrapper's counts for nodeopt are kept in
  the JSON as a cross-check.
* **gradient error**: ``|g - g_ref| / |g_ref|`` over ``y0`` and all parameters
  concatenated, with ``g_ref`` nodeopt backprop's gradient in the same process
  (the exact gradient of nodeopt's discrete solve). torchdiffeq's dopri5 uses
  the I step-size controller, nodeopt's the PI one, so torchdiffeq takes other
  steps and its "error" includes the difference of two discretisations (its
  own adjoint-vs-backprop error is printed under the table). On ``cnf`` and
  ``cnf-mild`` also the error against a float64 reference (ACA at
  ``rtol = atol = 1e-10``, checked against ``1e-9``): the gradient of the ODE
  itself, against which the discrete-exact methods and the continuous adjoint
  can be compared on equal terms.

Workloads (float32, seeded, dopri5):

* ``cnf``: a CNF-like field ``200 * MLP([y, t]) - 20 y``: 43-dim state with time
  concatenated, three hidden layers of 256 (tanh), PyTorch's default init,
  batch 256, ``rtol = atol = 1e-5``, ``t = [0, 1]``: ~30 steps.
* ``cnf-mild``: ``20 * MLP([y, t])``, the same MLP without decay: a few steps, a
  field on which the continuous adjoint converges (on ``cnf`` it does not, see
  RESULTS.md).
* ``conv``: state ``(32, 16, 28, 28)``, ``20 * conv3x3(tanh(conv3x3([y, t]))) - 5 y``
  (16+1 -> 32 -> 16 channels, time as an extra channel), ``rtol = atol = 1e-4``.
* ``long``: the ``cnf`` field over ``t = [0, 20]`` (a few hundred steps), batch 128
  (to keep the run within its time budget; backprop then holds about 1 GB).
* ``cnf-compiled``: the ``cnf`` field under ``torch.compile``, one compiled module
  shared by nodeopt and torchdiffeq; times only (every memory subprocess would
  compile again).

Extra rows (per workload, ``Workload.extra``): ``SymplecticAdjoint(store_stages=True)``,
``Exact()`` (``memory=None``: half the free memory), and checkpointed step states
(``CheckpointedStates("symplectic", states=10 or 32)``: at most that many step states
held at once). On ``cnf`` and ``long`` a **memory-budget sweep** first measures
backprop's peak, then runs ``Exact(memory=B)`` for ``B`` = that peak / 2, / 10, / 30
with the other methods (same rounds, same memory procedure), and reports which fixed
exact methods fit in ``B`` (measured peak ≤ B) and Exact's time against the fastest
of them. Goals: Exact's peak ≤ B plus one network use (measured as Exact measures it),
and its time ≤ ``EXACT_TIME_GOAL`` × the fastest fixed method that fits.

The continuous adjoints' backward solves are capped at ``ADJOINT_MAX_STEPS``
steps (nodeopt ``options``, torchdiffeq ``adjoint_options``); a method that hits
the cap is reported as failed, with the time it took, and left out of the
timing and memory runs. The cap binds only on ``long``.

On ``cnf`` and ``cnf-mild`` the continuous adjoint also runs at tighter backward
tolerances (and with the seminorm), for the comparison with the symplectic
adjoint at equal gradient accuracy. At the end the issue's targets are checked.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

import nodeopt
from nodeopt.nn import MLPField

from .common import (ROOT, Counted, describe, environment, gc_paused, interleaved, median, ratios, source_hash,
                     workload_names)

try:
    import torchdiffeq
except ImportError:  # nodeopt's side still runs without it
    torchdiffeq = None

# ---- settings -------------------------------------------------------------------------

# The CNF-like field is f(t, y) = MLP_SCALE * MLP([y, t]) - MLP_DECAY * y, the MLP with PyTorch's default
# init. The scale makes the field fast enough for ~30 dopri5 steps on [0, 1] at rtol = atol = 1e-5 (a bare
# random MLP takes ~3); the decay keeps the state bounded, so that on [0, 20] the solve stays busy (a few
# hundred steps) and the gradient stays well conditioned. (Scaling every weight instead, e.g. x7, also
# gives ~30 steps but a chaotic field whose dopri5 gradients at 1e-5 and 1e-7 differ by 25%.)
MLP_SCALE = 200.0
MLP_DECAY = 20.0
CONV_SCALE = 20.0
CONV_DECAY = 5.0


@dataclass
class Workload:
    name: str
    kind: str  # "mlp" or "conv"
    batch: int
    t_end: float
    tol: float
    repeats: int
    dim: int = 43
    width: int = 256
    channels: int = 16
    hidden: int = 32
    size: int = 28
    scale: float = MLP_SCALE
    decay: float = MLP_DECAY
    extra: tuple = ()  # keys of EXTRA_METHODS also run on this workload
    reference: bool = False  # also compute a float64 reference gradient at REF_TOLS
    note: str = ""
    sweep: bool = False  # also Exact(memory=B) at B = backprop's peak / SWEEP_FRACTIONS
    compiled: bool = False  # the field is torch.compile'd (nodeopt and torchdiffeq share the compiled field)
    only: tuple = ()  # run just these method keys (default: every standard method plus `extra`)


WORKLOADS = {
    "cnf": Workload("cnf", "mlp", batch=256, t_end=1.0, tol=1e-5, repeats=5,
                    extra=("adjoint-1e-7", "symplectic-stored", "exact", "checkpointed-10"), reference=True,
                    sweep=True,
                    note=f"{MLP_SCALE:g} * MLP 44-256-256-256-43 (tanh) - {MLP_DECAY:g} y, batch 256, t=[0,1], "
                         f"rtol=atol=1e-5"),
    "cnf-mild": Workload("cnf-mild", "mlp", batch=256, t_end=1.0, tol=1e-5, repeats=3, scale=20.0, decay=0.0,
                         extra=("adjoint-1e-7", "adjoint-1e-8", "adjoint-1e-8-seminorm"), reference=True,
                         note="20 * MLP 44-256-256-256-43 (tanh), no decay, batch 256, t=[0,1], rtol=atol=1e-5: "
                              "a mild field on which the continuous adjoint converges"),
    "conv": Workload("conv", "conv", batch=32, t_end=1.0, tol=1e-4, repeats=2, scale=CONV_SCALE, decay=CONV_DECAY,
                     note=f"state (32,16,28,28), {CONV_SCALE:g} * conv3x3(33->16)(tanh(conv3x3(17->32))) - "
                          f"{CONV_DECAY:g} y, time as a channel, t=[0,1], rtol=atol=1e-4"),
    "long": Workload("long", "mlp", batch=128, t_end=20.0, tol=1e-5, repeats=3,
                     extra=("symplectic-stored", "exact", "checkpointed-32"), sweep=True,
                     note="the cnf field, batch 128, t=[0,20], rtol=atol=1e-5"),
    "cnf-compiled": Workload("cnf-compiled", "mlp", batch=256, t_end=1.0, tol=1e-5, repeats=5, compiled=True,
                             only=("backprop", "checkpoint", "symplectic", "td-backprop"),
                             extra=("symplectic-stored", "exact"),
                             note="the cnf field under torch.compile (one compiled module shared by nodeopt and "
                                  "torchdiffeq), batch 256, t=[0,1], rtol=atol=1e-5; no memory runs (each "
                                  "subprocess would compile again)"),
}
DEFAULT_WORKLOADS = "cnf,cnf-mild,conv,long"
REF_TOLS = (1e-9, 1e-10)  # float64 reference gradient (exact gradient of a dopri5 solve this tight)

# --quick: the same structure, small enough for a few seconds per method.
QUICK = {
    "cnf": dict(batch=32, width=64, repeats=1, extra=()),
    "cnf-mild": dict(batch=32, width=64, repeats=1, extra=("adjoint-1e-7",)),
    "conv": dict(batch=2, size=14, hidden=16, repeats=1),
    "long": dict(batch=16, width=64, t_end=4.0, repeats=1, extra=("symplectic-stored", "exact", "checkpointed-32")),
    "cnf-compiled": dict(batch=32, width=64, repeats=1, extra=("exact",)),
}
SWEEP_FRACTIONS = (2, 10, 30)  # Exact(memory=B) with B = backprop's measured peak / each
EXACT_TIME_GOAL = 1.1  # Exact's time / the fastest fixed exact method that fits in B
FIXED_EXACT = ("backprop", "onecheckpoint", "checkpoint", "symplectic", "symplectic-stored", "checkpointed-10",
               "checkpointed-32")
QUICK_REF_TOLS = (1e-7, 1e-8)


@dataclass
class Method:
    key: str
    label: str
    lib: str  # "nodeopt", "td", "td-adjoint"
    gradient: Optional[Callable[[], object]] = None


# The continuous adjoint's backward solve gets at most this many steps (accepted + rejected); on `long` it
# needs far more (it re-solves y backward in time through a strongly contracting field, which is unstable)
# and would run for hours. Where it is reached the method is reported as failed, with the time it took.
ADJOINT_MAX_STEPS = 1000
_CAP = {"max_num_steps": ADJOINT_MAX_STEPS}

METHODS = [
    Method("backprop", "nodeopt backprop", "nodeopt", lambda: "backprop"),
    Method("adjoint", "nodeopt adjoint", "nodeopt", lambda: nodeopt.Adjoint(options=dict(_CAP))),
    Method("onecheckpoint", "nodeopt onecheckpoint", "nodeopt", lambda: "onecheckpoint"),
    Method("checkpoint", "nodeopt checkpoint (ACA)", "nodeopt", lambda: "checkpoint"),
    Method("symplectic", "nodeopt symplectic", "nodeopt", lambda: "symplectic"),
    Method("td-backprop", "torchdiffeq odeint", "td"),
    Method("td-adjoint", "torchdiffeq odeint_adjoint", "td-adjoint"),
]
EXTRA_METHODS = [
    Method("adjoint-1e-7", "nodeopt adjoint, bwd tol 1e-7", "nodeopt",
           lambda: nodeopt.Adjoint(rtol=1e-7, atol=1e-7, options=dict(_CAP))),
    Method("adjoint-1e-8", "nodeopt adjoint, bwd tol 1e-8", "nodeopt",
           lambda: nodeopt.Adjoint(rtol=1e-8, atol=1e-8, options=dict(_CAP))),
    Method("adjoint-1e-8-seminorm", "nodeopt adjoint, bwd tol 1e-8, seminorm", "nodeopt",
           lambda: nodeopt.Adjoint(rtol=1e-8, atol=1e-8, options={"norm": "seminorm", **_CAP})),
    Method("symplectic-stored", "nodeopt symplectic, stored stages", "nodeopt",
           lambda: nodeopt.SymplecticAdjoint(store_stages=True)),
    Method("exact", "nodeopt exact (memory=None: half the free memory)", "nodeopt", lambda: "exact"),
    Method("checkpointed-10", "nodeopt symplectic, 10 step states held", "nodeopt",
           lambda: nodeopt.CheckpointedStates("symplectic", states=10)),
    Method("checkpointed-32", "nodeopt symplectic, 32 step states held", "nodeopt",
           lambda: nodeopt.CheckpointedStates("symplectic", states=32)),
]
ALL_METHODS = {m.key: m for m in METHODS + EXTRA_METHODS}


def budget_method(budget: int, label: str = "") -> Method:
    """``Exact(memory=budget)`` as a method of the sweep; its key carries the budget (for the subprocesses)."""
    return Method(f"exact-budget-{budget}", label or f"nodeopt exact, memory={budget / 1e6:.3g} MB", "nodeopt",
                  lambda: nodeopt.Exact(memory=budget))


def method_by_key(key: str) -> Method:
    if key.startswith("exact-budget-"):
        return budget_method(int(key[len("exact-budget-"):]))
    return ALL_METHODS[key]

# The issue's targets.
TARGET_TIME = 1.5       # symplectic time / backprop on cnf and long (aim AIM_TIME)
AIM_TIME = 1.35
TARGET_MEM = {"cnf": 0.10, "long": 0.01}  # symplectic peak memory / backprop
COMPARABLE = 2.0        # "equal accuracy": error against the float64 reference within this factor


def workload(name: str, quick: bool) -> Workload:
    wl = WORKLOADS[name]
    if quick:
        wl = Workload(**{**wl.__dict__, **QUICK[name]})
    return wl


# ---- the vector fields ---------------------------------------------------------------


class Scaled(nn.Module):
    """``field(t, y) - decay * y``, the field's last layer multiplied by ``scale`` at initialisation."""

    def __init__(self, field: nn.Module, scale: float, decay: float):
        super().__init__()
        self.field, self.decay = field, decay
        with torch.no_grad():
            for p in [m for m in field.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1].parameters():
                p.mul_(scale)

    def forward(self, t, y):
        h = self.field(t, y)
        return h - self.decay * y if self.decay else h


class ConvField(nn.Module):
    """Conv field on images: ``conv3x3([y, t]) -> tanh -> conv3x3([h, t])``.

    (Not the library's ``ConcatConv2d`` pair: that expands ``t`` once per convolution, which
    reorders torchdiffeq's adjoint sums for ``dL/dt`` and so changes its backward steps.)
    """

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels + 1, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden + 1, channels, 3, padding=1)

    def forward(self, t, y):
        tt = t.to(y.dtype).expand(y.shape[0], 1, y.shape[2], y.shape[3])
        return self.conv2(torch.cat([torch.tanh(self.conv1(torch.cat([y, tt], dim=1))), tt], dim=1))


@dataclass
class Case:
    wl: Workload
    func: Counted
    y0: torch.Tensor
    t: torch.Tensor
    v: torch.Tensor
    params: list = field(default_factory=list)


def make_case(wl: Workload) -> Case:
    torch.manual_seed(0)
    if wl.kind == "mlp":
        inner = Scaled(MLPField(wl.dim, wl.width, layers=4), wl.scale, wl.decay)  # MLP([y, t]), 3 hidden layers
        y0 = torch.randn(wl.batch, wl.dim)
    else:
        inner = Scaled(ConvField(wl.channels, wl.hidden), wl.scale, wl.decay)
        y0 = torch.randn(wl.batch, wl.channels, wl.size, wl.size)
    v = torch.randn_like(y0)
    if wl.compiled:
        inner = torch.compile(inner)
    func = Counted(inner, counting=False)
    y0.requires_grad_(True)
    t = torch.tensor([0.0, wl.t_end])
    return Case(wl, func, y0, t, v, [p for p in func.parameters()])


# ---- one forward + backward ------------------------------------------------------------


def forward_backward(case: Case, method: Method, count: bool = False) -> dict:
    """One forward + backward; returns the wall time, the nodeopt stats and the wrapper's counts.

    The garbage collector is off while the clock runs (it is run just before).
    """
    f, wl = case.func, case.wl
    case.y0.grad = None
    for p in case.params:
        p.grad = None
    f.counting = count
    f.phase = "fwd"
    f.reset()
    stats = None
    with gc_paused():
        start = time.perf_counter()
        if method.lib == "nodeopt":
            sol = nodeopt.solve(f, case.y0, case.t, rtol=wl.tol, atol=wl.tol, method="dopri5",
                                gradient=method.gradient())
            ys, stats = sol.values, sol.stats
        elif method.lib == "td":
            ys = torchdiffeq.odeint(f, case.y0, case.t, rtol=wl.tol, atol=wl.tol, method="dopri5")
        else:
            ys = torchdiffeq.odeint_adjoint(f, case.y0, case.t, rtol=wl.tol, atol=wl.tol, method="dopri5",
                                            adjoint_options=dict(_CAP))
        loss = (ys[-1] * case.v).sum()
        f.phase = "bwd"
        loss.backward()
        elapsed = time.perf_counter() - start
    f.counting = False
    counted = {"nfe_fwd": f.calls["fwd"], "nfe_bwd": f.calls["bwd"] - f.graph_calls["bwd"], "nvjp_bwd": f.vjps,
               "graph_calls_fwd": f.graph_calls["fwd"], "graph_calls_bwd": f.graph_calls["bwd"]}
    out = {"time": elapsed, "counted": counted}
    if stats is not None:
        out["stats"] = {k: getattr(stats, k) for k in ("nfe", "n_steps", "n_rejected", "nfe_backward",
                                                       "nvjp_backward", "strategy", "estimated_peak_bytes")}
    return out


def gradient_vector(case: Case) -> torch.Tensor:
    parts = [case.y0.grad] + [p.grad for p in case.params]
    return torch.cat([torch.zeros(0) if g is None else g.detach().reshape(-1).double() for g in parts])


def rel_err(g: torch.Tensor, ref: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(g - ref) / torch.linalg.vector_norm(ref))


def reference_gradient(case: Case, tols) -> dict:
    """The gradient of the same problem in float64, by ACA (exact for its solve) at tight tolerances.

    Returns the gradient at the tightest tolerance and, per tolerance, steps,
    time and its difference from the tightest one (how well converged it is).
    """
    inner = getattr(case.func.inner, "_orig_mod", case.func.inner)  # (a compiled field: its module)
    func = copy.deepcopy(inner).double()
    y0 = case.y0.detach().double().requires_grad_(True)
    v = case.v.double()
    t = case.t.double()
    grads, info = {}, {}
    for tol in tols:
        y0.grad = None
        func.zero_grad(set_to_none=True)
        start = time.perf_counter()
        sol = nodeopt.solve(func, y0, t, rtol=tol, atol=tol, method="dopri5", gradient="checkpoint")
        (sol.values[-1] * v).sum().backward()
        info[f"{tol:g}"] = {"n_steps": sol.stats.n_steps, "time": time.perf_counter() - start}
        grads[tol] = torch.cat([y0.grad.reshape(-1)] + [p.grad.reshape(-1) for p in func.parameters()])
    tight = min(tols)
    for tol in tols:
        info[f"{tol:g}"]["rel_diff_to_tightest"] = rel_err(grads[tol], grads[tight])
    return {"grad": grads[tight], "tols": list(tols), "runs": info}


# ---- memory: a fresh subprocess per method --------------------------------------------


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def _malloc_trim() -> None:
    """Hand the heap's free memory back to the OS (glibc), so that the baseline holds no freed memory.

    Tensors below MALLOC_MMAP_THRESHOLD_ (stage values of a small batch, say)
    live on the heap; after the warm-up the freed ones stay resident, the
    measured run reuses them, and its peak would be undercounted (on ``long``,
    backprop's by about a fifth).
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def child(workload_name: str, method_key: str, quick: bool) -> int:
    """Measure one method's peak memory above baseline; prints one ``RESULT {json}`` line."""
    torch.set_num_threads(1)
    case = make_case(workload(workload_name, quick))
    method = method_by_key(method_key)
    forward_backward(case, method)  # warm-up: every allocation path and lazy init once
    case.y0.grad = None
    for p in case.params:
        p.grad = None
    gc.collect()
    rss_before_trim = _status_kb("VmRSS")
    _malloc_trim()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    baseline = _status_kb("VmRSS")
    hwm_reset = _status_kb("VmHWM")
    run = forward_backward(case, method)
    hwm = _status_kb("VmHWM")
    print("RESULT " + json.dumps({"rss_before_trim_kb": rss_before_trim, "baseline_kb": baseline,
                                  "hwm_after_reset_kb": hwm_reset, "hwm_kb": hwm,
                                  "peak_mb": (hwm - baseline) / 1024.0, "time": run["time"],
                                  "nodeopt_sha256": source_hash()}), flush=True)
    return 0


def measure_memory(workload_name: str, method_key: str, quick: bool) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "benchmarks.gradients", "--child", "--workloads", workload_name,
           "--method", method_key] + (["--quick"] if quick else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"memory child for {workload_name}/{method_key} failed (rc {proc.returncode}):\n"
                       f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


# ---- one workload -----------------------------------------------------------------------


def methods_for(wl: Workload) -> list[Method]:
    methods = [m for m in METHODS
               if (m.lib == "nodeopt" or torchdiffeq is not None) and (not wl.only or m.key in wl.only)]
    return methods + [ALL_METHODS[k] for k in wl.extra]


def one_use_bytes(case: Case) -> int:
    """One network use of the workload's field, counted as Exact counts it: the bytes autograd saves
    in one evaluation at ``y0``, each storage once, parameters and buffers left out."""
    def key(x: torch.Tensor):
        return str(x.untyped_storage().device), x.untyped_storage().data_ptr()

    skip = {key(p) for p in [*case.params, *case.func.parameters(), *case.func.buffers()]}
    saved: dict = {}

    def pack(x: torch.Tensor) -> torch.Tensor:
        if key(x) not in skip:
            saved[key(x)] = x.untyped_storage().nbytes()
        return x

    y = case.y0.detach().requires_grad_(True)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        case.func(case.t[0].double(), y)
    return sum(saved.values())


def run_workload(name: str, quick: bool, repeats: Optional[int], memory: bool, log, sources: str) -> dict:
    wl = workload(name, quick)
    repeats = wl.repeats if repeats is None else repeats
    case = make_case(wl)
    methods = methods_for(wl)
    n_params = sum(p.numel() for p in case.params)
    started = time.perf_counter()
    memory = memory and not wl.compiled
    log(f"\n### {name}: {'(quick: smaller sizes than this note says) ' if quick else ''}{wl.note}")
    log(f"parameters: {n_params}, state: {tuple(case.y0.shape)}")

    # The memory-budget sweep needs backprop's peak first: Exact(memory=peak / k) then runs with the others.
    sweep: list[tuple[int, Method]] = []
    backprop_memory = None
    if wl.sweep and memory:
        backprop_memory = measure_memory(name, "backprop", quick)
        peak = backprop_memory["peak_mb"] * 2 ** 20
        for frac in SWEEP_FRACTIONS:
            m = budget_method(int(peak / frac), f"nodeopt exact, memory = backprop's peak / {frac} "
                                                f"({peak / frac / 2 ** 20:.3g} MB)")
            sweep.append((frac, m))
            methods.append(m)
        log(f"  memory budgets: backprop's peak {backprop_memory['peak_mb']:.1f} MB / {SWEEP_FRACTIONS}")

    # Warm-up run of every method, with counting on: counts and gradients.
    res: dict[str, dict] = {}
    grads: dict[str, torch.Tensor] = {}
    for m in list(methods):
        start = time.perf_counter()
        try:
            r = forward_backward(case, m, count=True)
        except (RuntimeError, AssertionError) as exc:  # a backward solve over ADJOINT_MAX_STEPS
            elapsed = time.perf_counter() - start
            log(f"  {m.label}: FAILED after {elapsed:.0f} s ({exc}); left out")
            res[m.key] = {"label": m.label, "failed": str(exc), "failed_after_s": elapsed}
            methods.remove(m)
            continue
        grads[m.key] = gradient_vector(case)
        res[m.key] = {"label": m.label, "warmup_time": r["time"], "counted": r["counted"]}
        if "stats" in r:
            res[m.key]["stats"] = r["stats"]
        log(f"  warm-up {m.label}: {r['time']:.2f} s")
    ref = grads["backprop"]
    for m in methods:
        res[m.key]["grad_rel_err"] = rel_err(grads[m.key], ref)
    extra: dict = {}
    if "td-backprop" in grads and "td-adjoint" in grads:
        extra["td_adjoint_vs_td_backprop"] = rel_err(grads["td-adjoint"], grads["td-backprop"])
    if wl.reference:
        refg = reference_gradient(case, QUICK_REF_TOLS if quick else REF_TOLS)
        for m in methods:
            res[m.key]["grad_err_ref"] = rel_err(grads[m.key], refg["grad"])
        extra["reference"] = {"tols": refg["tols"], "runs": refg["runs"]}
        log("  float64 reference: " + ", ".join(f"tol {k}: {r['n_steps']} steps, {r['time']:.1f} s, "
                                                 f"{r['rel_diff_to_tightest']:.1e} from the tightest"
                                                 for k, r in refg["runs"].items()))
    del grads
    case.y0.grad = None
    for p in case.params:
        p.grad = None

    # Timing: rounds, every method once per round, order rotated.
    samples = interleaved({m.key: (lambda m=m: forward_backward(case, m)["time"]) for m in methods}, repeats,
                          order="rotate", measure=lambda fn: fn(),  # forward_backward times itself
                          after_round=lambda r, s: log(f"  round {r + 1}/{repeats}: "
                                                       + ", ".join(f"{k} {v[-1]:.2f}" for k, v in s.items())))
    for m in methods:
        res[m.key]["times"] = samples[m.key]
        res[m.key]["time"] = median(samples[m.key])
        res[m.key]["time_ratio"] = median(ratios(samples, m.key, "backprop"))
    case.y0.grad = None
    for p in case.params:
        p.grad = None

    # Memory: a fresh subprocess per method.
    if memory:
        for m in methods:
            mem = backprop_memory if m.key == "backprop" and backprop_memory else measure_memory(name, m.key, quick)
            if mem.get("nodeopt_sha256") != sources:
                log(f"  WARNING: the memory child for {m.key} saw other nodeopt sources "
                    f"({mem.get('nodeopt_sha256')} != {sources}): nodeopt changed during the run")
            res[m.key]["memory"] = mem
            log(f"  memory {m.label}: {mem['peak_mb']:.1f} MB above a baseline of {mem['baseline_kb'] / 1024:.0f} MB")
        ref_mb = res["backprop"]["memory"]["peak_mb"]
        for m in methods:
            res[m.key]["mem_ratio"] = res[m.key]["memory"]["peak_mb"] / ref_mb

    if sweep and memory:
        extra["sweep"] = sweep_summary(case, res, sweep)
    st = res["backprop"]["stats"]
    out = {"workload": {**wl.__dict__, "extra": list(wl.extra), "only": list(wl.only)}, "repeats": repeats,
           "n_params": n_params, "state_shape": list(case.y0.shape), "n_steps": st["n_steps"],
           "n_rejected": st["n_rejected"], "methods": res, "elapsed_s": time.perf_counter() - started, **extra}
    log("")
    log(table(out))
    return out


def sweep_summary(case: Case, res: dict, sweep: list) -> dict:
    """Per budget B: Exact's strategy, time and peak; the fixed exact methods that fit in B and the fastest of them."""
    use = one_use_bytes(case)
    rows = []
    for frac, m in sweep:
        budget = int(m.key[len("exact-budget-"):])
        e = res[m.key]
        peak = e["memory"]["peak_mb"] * 2 ** 20
        fits = [k for k in FIXED_EXACT if k in res and "memory" in res[k] and "failed" not in res[k]
                and res[k]["memory"]["peak_mb"] * 2 ** 20 <= budget]
        fastest = min(fits, key=lambda k: res[k]["time"]) if fits else None
        # Exact against it in the same rounds: the median of the per-round ratios (robust to a shared machine).
        paired = median(a / b for a, b in zip(e["times"], res[fastest]["times"])) if fastest else None
        rows.append({"fraction": frac, "budget_bytes": budget, "key": m.key, "strategy": e["stats"]["strategy"],
                     "estimated_peak_bytes": e["stats"]["estimated_peak_bytes"], "peak_bytes": peak,
                     "time": e["time"], "time_ratio": e["time_ratio"], "fits": fits, "fastest_fit": fastest,
                     "vs_fastest_fit": paired,
                     "within_budget_plus_one_use": peak <= budget + use})
    return {"one_use_bytes": use, "rows": rows}


def remeasure_memory(name: str, result: dict, quick: bool, log, env: dict) -> None:
    """``--memory-only``: the memory subprocesses again, for the methods of a stored result."""
    log(f"\n### {name}: peak memory only")
    for key, e in result["methods"].items():
        if "failed" in e:
            continue
        mem = measure_memory(name, key, quick)
        if mem.get("nodeopt_sha256") != env["nodeopt_sha256"]:
            log(f"  WARNING: the memory child for {key} saw other nodeopt sources")
        e["memory"] = mem
        log(f"  memory {e['label']}: {mem['peak_mb']:.1f} MB above a baseline of {mem['baseline_kb'] / 1024:.0f} MB")
    ref_mb = result["methods"]["backprop"]["memory"]["peak_mb"]
    for e in result["methods"].values():
        if "memory" in e:
            e["mem_ratio"] = e["memory"]["peak_mb"] / ref_mb
    result["memory_environment"] = env
    log("")
    log(table(result))


# ---- reporting ----------------------------------------------------------------------------


def _counts(entry: dict) -> tuple[int, int, int]:
    if "stats" in entry:
        s = entry["stats"]
        return s["nfe"], s["nfe_backward"], s["nvjp_backward"]
    c = entry["counted"]
    return c["nfe_fwd"], c["nfe_bwd"], c["nvjp_bwd"]


def _sig(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:.0f}"


def table(result: dict) -> str:
    """The markdown table of one workload."""
    has_ref = "reference" in result
    lines = [f"`{result['workload']['name']}`: {result['workload']['note']}; state {tuple(result['state_shape'])}, "
             f"{result['n_params']} parameters; nodeopt dopri5 takes {result['n_steps']} steps "
             f"(+{result['n_rejected']} rejected); {result['repeats']} timing rounds.", "",
             "| method | time (s) | time / backprop | peak MB | mem / backprop | nfe fwd | nfe bwd | nvjp bwd "
             "| grad rel err |" + (" err vs f64 ref |" if has_ref else ""),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if has_ref else "")]
    for key, e in result["methods"].items():
        if "failed" in e:
            why = e["failed"].split(";")[0].splitlines()[0]
            why = why if len(why) <= 90 else why[:90] + " ..."
            lines.append(f"| {e['label']} | failed after {e['failed_after_s']:.0f} s: {why} |")
            continue
        nf, nb, nv = _counts(e)
        mem = e.get("memory")
        peak = _sig(mem["peak_mb"]) if mem else "-"
        mratio = _sig(e["mem_ratio"], 2) if mem else "-"
        err = "0 (reference)" if key == "backprop" else f"{e['grad_rel_err']:.1e}"
        row = (f"| {e['label']} | {_sig(e['time'])} | {e['time_ratio']:.2f} | {peak} | {mratio} | {nf} | "
               f"{nb} | {nv} | {err} |")
        if has_ref:
            row += f" {e['grad_err_ref']:.1e} |"
        lines.append(row)
    notes = []
    if "td_adjoint_vs_td_backprop" in result:
        notes.append(f"torchdiffeq odeint_adjoint vs torchdiffeq odeint (same forward steps): grad rel err "
                     f"{result['td_adjoint_vs_td_backprop']:.1e}.")
    if has_ref:
        runs = result["reference"]["runs"]
        notes.append("f64 ref: the same problem in float64, ACA at rtol=atol=" + " and ".join(runs) + " ("
                     + ", ".join(f"{r['n_steps']} steps" for r in runs.values()) + "; they differ by "
                     + ", ".join(f"{r['rel_diff_to_tightest']:.0e}" for r in list(runs.values())[:-1]) + ").")
    for key, e in result["methods"].items():
        if key == "exact" and "stats" in e:
            notes.append(f"nodeopt exact (memory=None) ran as: {e['stats']['strategy']} (estimated peak "
                         f"{e['stats']['estimated_peak_bytes'] / 2 ** 20:.3g} MB).")
    if notes:
        lines += [""] + notes
    if "sweep" in result:
        sw = result["sweep"]
        lines += ["", f"Memory-budget sweep (one network use = {sw['one_use_bytes'] / 2 ** 20:.3g} MB; the fastest fit "
                      f"has the least median time; 'Exact / fastest fit' is the median of their per-round ratios):", "",
                  "| budget B | Exact ran as | Exact peak MB (est.) | Exact time / backprop | fixed exact methods "
                  "that fit in B | fastest of them | Exact / fastest fit | peak ≤ B + one use |",
                  "|---|---|---:|---:|---|---|---:|---|"]
        for r in sw["rows"]:
            labels = ", ".join(r["fits"]) or "none"
            fastest = (f"{r['fastest_fit']} ({result['methods'][r['fastest_fit']]['time']:.3g} s)"
                       if r["fastest_fit"] else "-")
            vs = f"{r['vs_fastest_fit']:.2f}" if r["vs_fastest_fit"] is not None else "-"
            lines.append(f"| peak/{r['fraction']} = {r['budget_bytes'] / 2 ** 20:.3g} MB | {r['strategy']} | "
                         f"{r['peak_bytes'] / 2 ** 20:.3g} ({r['estimated_peak_bytes'] / 2 ** 20:.3g}) | "
                         f"{r['time_ratio']:.2f} | {labels} | {fastest} | {vs} | "
                         f"{'yes' if r['within_budget_plus_one_use'] else 'NO'} |")
    return "\n".join(lines)


def check_targets(results: dict) -> list[str]:
    """The issue's targets, evaluated on what ran; one line each, starting with MET / NOT MET."""
    out = []

    def verdict(ok: bool) -> str:
        return "MET" if ok else "NOT MET"

    def ok(res, key):
        return key in res["methods"] and "failed" not in res["methods"][key]

    for name in ("cnf", "long"):
        if name in results and ok(results[name], "symplectic"):
            r = results[name]["methods"]["symplectic"]["time_ratio"]
            out.append(f"{verdict(r <= TARGET_TIME)}: {name}: symplectic time / backprop = {r:.2f} "
                       f"(target <= {TARGET_TIME}; aim {AIM_TIME} {'reached' if r <= AIM_TIME else 'not reached'})")
    for name, limit in TARGET_MEM.items():
        if name in results and "mem_ratio" in results[name]["methods"].get("symplectic", {}):
            r = results[name]["methods"]["symplectic"]["mem_ratio"]
            out.append(f"{verdict(r <= limit)}: {name}: symplectic peak memory / backprop = {r:.3g} "
                       f"(target <= {limit})")
    for name, res in results.items():
        m = res["methods"]
        if "memory" in m.get("symplectic", {}) and "memory" in m.get("checkpoint", {}):
            s, a = m["symplectic"]["memory"]["peak_mb"], m["checkpoint"]["memory"]["peak_mb"]
            out.append(f"{verdict(s <= a)}: {name}: symplectic peak {s:.1f} MB vs ACA {a:.1f} MB "
                       f"(target: never above ACA's)")
    for name, res in results.items():
        m = res["methods"]
        if not ok(res, "symplectic") or "grad_err_ref" not in m["symplectic"]:
            continue
        s = m["symplectic"]
        adj = [e for k, e in m.items() if k.startswith("adjoint") and "failed" not in e]
        close = [e for e in adj if e["grad_err_ref"] <= COMPARABLE * s["grad_err_ref"]]
        if close:
            e = min(close, key=lambda x: x["time"])
            out.append(f"{verdict(s['time'] < e['time'])}: {name}: symplectic {s['time']:.2f} s (err vs f64 ref "
                       f"{s['grad_err_ref']:.1e}) vs the fastest adjoint setting within {COMPARABLE:g}x of that "
                       f"error, {e['label']}: {e['time']:.2f} s (err {e['grad_err_ref']:.1e})")
        elif adj:
            best = min(adj, key=lambda x: x["grad_err_ref"])
            out.append(f"MET (no adjoint setting tried gets within {COMPARABLE:g}x of symplectic's error): {name}: "
                       f"symplectic err vs f64 ref {s['grad_err_ref']:.1e} in {s['time']:.2f} s; most accurate "
                       f"adjoint, {best['label']}: {best['grad_err_ref']:.1e} in {best['time']:.2f} s")
    for name, res in results.items():
        for r in res.get("sweep", {}).get("rows", []):
            b = r["budget_bytes"] / 2 ** 20
            out.append(f"{verdict(r['within_budget_plus_one_use'])}: {name}: Exact(memory=peak/{r['fraction']} = "
                       f"{b:.3g} MB) peak {r['peak_bytes'] / 2 ** 20:.3g} MB (target <= B + one use = "
                       f"{b + res['sweep']['one_use_bytes'] / 2 ** 20:.3g} MB)")
            if r["fastest_fit"] is None:
                out.append(f"NO FIXED METHOD FITS: {name}: B = {b:.3g} MB; Exact ran as {r['strategy']} in "
                           f"{r['time_ratio']:.2f}x backprop's time")
            else:
                out.append(f"{verdict(r['vs_fastest_fit'] <= EXACT_TIME_GOAL)}: {name}: B = {b:.3g} MB: Exact "
                           f"({r['strategy']}) takes {r['vs_fastest_fit']:.2f}x the time of the fastest fixed method "
                           f"that fits, {r['fastest_fit']} (target <= {EXACT_TIME_GOAL})")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gradients", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small workloads, one timing round")
    parser.add_argument("--workloads", default=DEFAULT_WORKLOADS,
                        help=f"comma-separated subset of {','.join(WORKLOADS)} (default: all)")
    parser.add_argument("--repeats", type=int, default=None, help="timing rounds (default: per workload)")
    parser.add_argument("--out", default=None, help="JSON output (default benchmarks/out/gradients.json)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--append", action="store_true",
                        help="keep the other workloads' results already in the JSON file (re-run some workloads)")
    parser.add_argument("--memory-only", action="store_true",
                        help="re-measure only the peak memory of the workloads' methods in an existing JSON file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = workload_names(parser, args.workloads, WORKLOADS)
    if args.child:
        return child(names[0], args.method, args.quick)

    torch.set_num_threads(1)
    out_path = Path(args.out or ("benchmarks/out/gradients-quick.json" if args.quick
                                 else "benchmarks/out/gradients.json"))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    env = environment("gradients", argv)
    print(f"# Gradient methods ({describe(env)})", flush=True)
    t0 = time.perf_counter()
    results: dict[str, dict] = {}
    if args.append and out_path.exists():
        old = json.loads(out_path.read_text())
        for name, res in old.get("results", {}).items():
            if name not in names:
                res.setdefault("environment", old.get("environment"))
                results[name] = res
    doc = {"environment": env, "results": results}

    def log(msg: str) -> None:
        print(msg, flush=True)

    if args.memory_only:
        old = json.loads(out_path.read_text())
        doc = {**old, "memory_environment": env}
        results = doc["results"]
        for name in names:
            remeasure_memory(name, results[name], args.quick, log, env)
            out_path.write_text(json.dumps(doc, indent=1))
    for name in [] if args.memory_only else names:
        results[name] = run_workload(name, args.quick, args.repeats, not args.no_memory, log, env["nodeopt_sha256"])
        results[name]["environment"] = env
        out_path.write_text(json.dumps(doc, indent=1))
    targets = check_targets(results)
    doc["targets"] = targets
    doc["elapsed_s"] = time.perf_counter() - t0
    print("\n### Targets\n")
    for line in targets:
        print(f"- {line}")
    print(f"\ntotal {doc['elapsed_s']:.0f} s; JSON written to {out_path}")
    out_path.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
