"""Peer benchmark: one training iteration of a neural ODE in nodeopt and in the other libraries.

Run from the repository root::

    python -m benchmarks.peers                  # full run (about half an hour on 2 CPU cores; compiling is much of it)
    python -m benchmarks.peers --quick          # smoke run (small sizes, one round, compiled rows' memory skipped)

Options: ``--workloads mlp2,mlp2-long,mlp43,conv`` (default: all four), ``--rounds N``
(timing rounds; default per workload), ``--out PATH`` (JSON; default
``benchmarks/out/peers.json``, ``benchmarks/out/peers-quick.json`` with ``--quick``),
``--no-memory`` (skip the memory subprocesses; ``--quick`` skips those of the compiled rows),
``--decompose-tanh`` (Inductor's exp-based tanh kernel, PyTorch's own switch, off by default: what
the tanh kernel costs the compiled rows). After the timing rounds, one evaluation and one VJP of the
field are timed alone in each library (:func:`field_costs`). The peers install with
``pip install -e '.[bench]' torch==2.13.0``; a peer that is missing is reported as "not installed".

One iteration is: solve ``dy/dt = f(t, y)`` with dopri5 from ``y0`` over ``[0, T]``, the loss
``L = sum(v * y(T))`` for a fixed random ``v``, and its gradient with respect to ``y0`` and
every parameter of ``f``. Rows (float32, ``rtol = atol = TOL`` in every library):

* torchdiffeq 0.2.5 ``odeint`` (backprop; **the reference** of every ratio) and ``odeint_adjoint``;
* torchode (``AutoDiffAdjoint``, i.e. backprop; ``IntegralController``), eager and with
  ``torch.compile(solver.solve)``. torchode controls the step size of every sample of the batch
  separately (the others treat the batch as one system); its counts are the batch's maximum;
* diffrax (equinox underneath) under ``jax.jit`` on the CPU, ``PIDController`` with its default
  (integral) coefficients and ``dt0=None``: ``RecursiveCheckpointAdjoint`` (exact; its default
  ``checkpoints=None``, i.e. about log2(max_steps) step states and an O(n log n) recompute) and
  ``BacksolveAdjoint`` (the continuous adjoint);
* nodeopt ``solve(..., gradient=G)`` (``odeint`` returns its values) for ``G`` = backprop, symplectic,
  ``SymplecticAdjoint(store_stages=True)``, checkpoint (ACA), ``Exact()``, adjoint; and, when
  ``nodeopt.odeint`` takes ``compile=``, the first five again with ``compile=True``, and backprop
  and ACA compiled with ``options={"sync_every": 8}`` (step control on the device);
* the symplectic adjoint paper's own library (Matsubara et al., "symplectic-adjoint-method") is
  not on PyPI; it is listed as not measured (its code is not vendored here).

The continuous adjoints' backward solves are capped at ``ADJOINT_MAX_STEPS`` steps; a row that
fails (or hits the cap) is reported as failed with the time it took, and left out of the rest.

Every library gets the same problem: the PyTorch field is built once from a seeded generator, and
the JAX field is the same function with the same weights (``nn.Linear``'s ``(out, in)`` weights
used as ``h @ W.T + b``; convolutions as ``lax.conv_general_dilated`` in NCHW with the OIHW
kernels copied as they are), the same ``y0`` and ``v``. Checked: each row's ``y(T)`` against
torchdiffeq's, ``max|y - y_td| / max|y_td|`` ("y(T) rel diff"; flagged when above
``AGREE_FACTOR * TOL``), and its gradient ``|g - g_td| / |g_td|`` (two discretisations of the same
ODE: they differ at about the tolerance, the continuous adjoints by their own error).

* **time**: one process, one thread: ``torch.set_num_threads(1)``; for JAX, before jax is
  imported, ``XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"``
  and ``JAX_PLATFORMS=cpu``. Each row runs twice untimed (the first call compiles where there is
  something to compile, which is so excluded from the timing); then ``rounds`` rounds, every row once per round, the order rotated from round to
  round (:func:`benchmarks.common.interleaved`), JAX results blocked on
  (``jax.block_until_ready``), the garbage collector off while the clock runs. Reported: the median
  time, and the median over rounds of (row time / torchdiffeq backprop's time in the same round).
  The CPU time / wall time of each row is kept in the JSON (about 1 means it used one thread).
* **peak memory**: a fresh subprocess per (workload, row), with the probe of
  :mod:`benchmarks.gradients` (``MALLOC_MMAP_THRESHOLD_=65536``): one warm-up iteration (which also
  compiles), everything freed, ``gc.collect()``, glibc's ``malloc_trim(0)``, VmHWM reset through
  ``/proc/self/clear_refs``, VmRSS as the baseline, one more iteration, ``VmHWM - baseline``: the
  resident memory the iteration added at its peak. For JAX rows this is what XLA's CPU runtime
  allocated for the executable's run (its buffers come from the C heap / mmap, so they are
  resident and counted; the compiled executable itself is part of the baseline).
* **compile time** (jit and ``torch.compile`` rows): the first call's time minus the second's in
  the main process, whose torch.compile cache starts empty (a new temporary
  ``TORCHINDUCTOR_CACHE_DIR``): cold. Rows that share compiled graphs compile them once, so the
  first of them carries the time (nodeopt's ``Exact`` reuses the graphs of the rows before it). The
  memory subprocesses share that cache (warm: only dynamo's tracing is repeated there), which keeps
  the full run within about half an hour.
* **counts**: accepted (+ rejected) steps and forward function evaluations as each library
  exposes them: nodeopt's ``Solution.stats``, torchode's ``sol.stats``, diffrax's ``sol.stats``
  (no NFE), torchdiffeq through :class:`benchmarks.common.Counted`.

Workloads (float32, dopri5, seeded; ``TOL = 1e-5`` everywhere, as in the ``cnf`` workload of
:mod:`benchmarks.gradients`):

* ``mlp2``: 2-D state, ``MLP([y, t])`` 3 -> 64 -> 64 -> 2 (tanh), PyTorch's default init, batch 1024,
  ``t = [0, 1]``: a smooth field, a handful of steps, so per-step overhead dominates;
* ``mlp2-long``: the same on ``t = [0, 20]`` (about ten steps);
* ``mlp43``: the ``cnf`` field of :mod:`benchmarks.gradients`, ``200 * MLP([y, t]) - 20 y``,
  44 -> 256 -> 256 -> 256 -> 43 (tanh), batch 256, ``t = [0, 1]`` (a few dozen steps);
* ``conv``: state ``(32, 16, 28, 28)``, ``20 * conv3x3([tanh(conv3x3([y, t])), t]) - 5 y``
  (16+1 -> 32, 32+1 -> 16 channels, time as an extra channel), ``t = [0, 1]``.

At the end the issue's goals are checked against the numbers (rows not measured say so):
(a) nodeopt's fastest exact low-memory row (peak <= ``LOW_MEMORY`` x nodeopt backprop's) is at most
diffrax ``RecursiveCheckpointAdjoint``'s time on ``mlp2`` and ``mlp2-long`` and faster than every
PyTorch peer row on every workload; (b) nodeopt compiled backprop takes <= ``COMPILED_GOAL`` x
torchdiffeq backprop's time on ``mlp2`` and ``mlp2-long``. Comparisons are medians of per-round ratios.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import importlib.util
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

import nodeopt

from .common import ROOT, Counted, describe, environment, interleaved, jsonable, median, ratios, timed
from .common import timed_wall_and_cpu, workload_names
from .gradients import CONV_DECAY, CONV_SCALE, MLP_DECAY, MLP_SCALE, Scaled, _malloc_trim, _status_kb

# One thread for XLA and the CPU platform: read when jax is first imported, which happens later (lazily).
if "xla_cpu_multi_thread_eigen" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def fresh_inductor_cache() -> None:
    """A new, empty on-disk cache for torch.compile in this process (removed at exit): compile times are cold."""
    path = tempfile.mkdtemp(prefix="peers-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path
    atexit.register(shutil.rmtree, path, True)


# ---- settings -------------------------------------------------------------------------------------

TOL = 1e-5
AGREE_FACTOR = 100.0  # y(T) rel diff to torchdiffeq above AGREE_FACTOR * TOL is flagged
ADJOINT_MAX_STEPS = 1000  # the continuous adjoints' backward solves (as in benchmarks.gradients)
LOW_MEMORY = 0.15  # goal (a): "low memory" = peak <= this x nodeopt backprop's peak
COMPILED_GOAL = 0.5  # goal (b): nodeopt compiled backprop time / torchdiffeq backprop's
SEED = 0
REFERENCE = "td-backprop"
SAM_NOTE = ("symplectic-adjoint-method (Matsubara et al., the paper's library): not on PyPI, so not "
            "installed and not measured")


@dataclass(frozen=True)
class Workload:
    name: str
    kind: str  # "mlp" or "conv"
    batch: int
    t_end: float
    rounds: int
    dim: int = 2
    width: int = 64
    layers: int = 3  # Linear layers of the MLP
    channels: int = 16
    hidden: int = 32
    size: int = 28
    scale: float = 1.0  # the last layer's parameters multiplied by this at initialisation
    decay: float = 0.0  # f = net(t, y) - decay * y
    note: str = ""


WORKLOADS = {
    "mlp2": Workload("mlp2", "mlp", batch=1024, t_end=1.0, rounds=7,
                     note="MLP([y, t]) 3-64-64-2 (tanh), batch 1024, t=[0,1]"),
    "mlp2-long": Workload("mlp2-long", "mlp", batch=1024, t_end=20.0, rounds=5,
                          note="MLP([y, t]) 3-64-64-2 (tanh), batch 1024, t=[0,20]"),
    "mlp43": Workload("mlp43", "mlp", batch=256, t_end=1.0, rounds=5, dim=43, width=256, layers=4,
                      scale=MLP_SCALE, decay=MLP_DECAY,
                      note=f"{MLP_SCALE:g} * MLP([y, t]) 44-256-256-256-43 (tanh) - {MLP_DECAY:g} y, batch 256, t=[0,1]"),
    "conv": Workload("conv", "conv", batch=32, t_end=1.0, rounds=3, scale=CONV_SCALE, decay=CONV_DECAY,
                     note=f"state (32,16,28,28), {CONV_SCALE:g} * conv3x3([tanh(conv3x3([y, t])), t]) - "
                          f"{CONV_DECAY:g} y, t=[0,1]"),
}
QUICK = {"mlp2": dict(batch=64, rounds=1), "mlp2-long": dict(batch=64, rounds=1),
         "mlp43": dict(batch=32, width=64, rounds=1), "conv": dict(batch=2, size=14, hidden=16, rounds=1)}


def workload(name: str, quick: bool) -> Workload:
    return replace(WORKLOADS[name], **QUICK[name]) if quick else WORKLOADS[name]


# ---- the problem, in PyTorch ------------------------------------------------------------------------

def _time_column(t: torch.Tensor, y: torch.Tensor, shape: tuple) -> torch.Tensor:
    """``t`` (a scalar, or one time per sample as torchode passes it) broadcast to ``shape``."""
    return t.to(y.dtype).reshape(-1, *[1] * (len(shape) - 1)).expand(shape)


class MLPField(nn.Module):
    """``MLP([y, t])``: Linear layers with tanh between; ``t`` a scalar or one per sample."""

    def __init__(self, sizes: list[int]):
        super().__init__()
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, t, y):
        h = torch.cat([y, _time_column(t, y, (y.shape[0], 1))], 1)
        for i, linear in enumerate(self.linears):
            h = linear(h) if i + 1 == len(self.linears) else torch.tanh(linear(h))
        return h


class ConvField(nn.Module):
    """``conv3x3([tanh(conv3x3([y, t])), t])``, time as an extra channel; ``t`` a scalar or one per sample."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels + 1, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden + 1, channels, 3, padding=1)

    def forward(self, t, y):
        tt = _time_column(t, y, (y.shape[0], 1, *y.shape[2:]))
        return self.conv2(torch.cat([torch.tanh(self.conv1(torch.cat([y, tt], 1))), tt], 1))


@dataclass
class Case:
    wl: Workload
    field: nn.Module  # Scaled(MLPField | ConvField)
    y0: torch.Tensor
    v: torch.Tensor
    t: torch.Tensor  # [0, T]


def make_case(wl: Workload) -> Case:
    torch.manual_seed(SEED)  # the modules' default init draws from the global generator
    if wl.kind == "mlp":
        inner = MLPField([wl.dim + 1] + [wl.width] * (wl.layers - 1) + [wl.dim])
        shape = (wl.batch, wl.dim)
    else:
        inner = ConvField(wl.channels, wl.hidden)
        shape = (wl.batch, wl.channels, wl.size, wl.size)
    gen = torch.Generator().manual_seed(SEED + 1)
    y0, v = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    return Case(wl, Scaled(inner, wl.scale, wl.decay), y0, v, torch.tensor([0.0, wl.t_end]))


# ---- runners: one training iteration of one row -----------------------------------------------------

class TorchRunner:
    """A PyTorch row: ``solve(func, y0) -> (y(T), stats or None)``, then ``L.backward()``."""

    def __init__(self, case: Case, solve: Callable, count: bool = False):
        self.case, self.solve, self.count = case, solve, count
        self.func = case.field
        self.y0 = case.y0.clone().requires_grad_(True)
        self.params = list(case.field.parameters())
        self.last = None

    def release(self) -> None:
        self.y0.grad, self.last = None, None
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        self.release()
        y_end, stats = self.solve(self.func, self.y0)
        if isinstance(self.func, Counted):
            self.func.phase = "bwd"
        (y_end * self.case.v).sum().backward()
        self.last = (y_end.detach(), stats)

    def collect(self) -> tuple[np.ndarray, np.ndarray, dict]:
        """``y(T)``, the gradient (``y0``, then the parameters in module order) and the counts of one more step."""
        if self.count:  # torchdiffeq: count through a wrapper, in a step of its own (kept out of the timing)
            self.func = Counted(self.case.field)
            self.step()
            c, self.func = self.func, self.case.field
            self.last = (self.last[0], {"steps": c.accepted, "rejected": c.rejected, "nfe": c.calls["fwd"]})
        grad = torch.cat([self.y0.grad.reshape(-1)] + [p.grad.reshape(-1) for p in self.params])
        return self.last[0].double().numpy(), grad.double().numpy(), self.last[1] or {}


def torchdiffeq_solve(case: Case, adjoint: bool) -> Callable:
    import torchdiffeq

    def solve(func, y0):
        if adjoint:
            ys = torchdiffeq.odeint_adjoint(func, y0, case.t, rtol=TOL, atol=TOL, method="dopri5",
                                            adjoint_options={"max_num_steps": ADJOINT_MAX_STEPS})
        else:
            ys = torchdiffeq.odeint(func, y0, case.t, rtol=TOL, atol=TOL, method="dopri5")
        return ys[-1], None
    return solve


def torchode_solve(case: Case, compiled: bool) -> Callable:
    import torchode as to

    shape, batch = tuple(case.y0.shape), case.y0.shape[0]
    term = to.ODETerm(lambda t, y: case.field(t, y.view(shape)).reshape(batch, -1))
    solver = to.AutoDiffAdjoint(to.Dopri5(term=term), to.IntegralController(atol=TOL, rtol=TOL, term=term))
    run = torch.compile(solver.solve) if compiled else solver.solve
    t_eval = case.t.repeat(batch, 1)

    def solve(func, y0):
        sol = run(to.InitialValueProblem(y0=y0.reshape(batch, -1), t_eval=t_eval))
        s = sol.stats
        stats = {"steps": int(s["n_accepted"].max()), "rejected": int((s["n_steps"] - s["n_accepted"]).max()),
                 "nfe": int(s["n_f_evals"].max())}
        return sol.ys[:, -1].reshape(shape), stats
    return solve


NODEOPT_GRADIENTS = {
    "backprop": lambda: "backprop",
    "symplectic": lambda: "symplectic",
    "symplectic-stored": lambda: nodeopt.SymplecticAdjoint(store_stages=True),
    "checkpoint": lambda: "checkpoint",
    "exact": lambda: nodeopt.Exact(),
    "adjoint": lambda: nodeopt.Adjoint(options={"max_num_steps": ADJOINT_MAX_STEPS}),
}


def nodeopt_compiles() -> bool:
    return "compile" in inspect.signature(nodeopt.odeint).parameters


def nodeopt_solve(case: Case, gradient: str, compiled: bool, sync_every: int = 1) -> Callable:
    kw = {"compile": True} if compiled else {}
    if sync_every > 1:
        kw["options"] = {"sync_every": sync_every}
    with_stats = not compiled or "compile" in inspect.signature(nodeopt.solve).parameters

    def solve(func, y0):
        args = dict(rtol=TOL, atol=TOL, method="dopri5", gradient=NODEOPT_GRADIENTS[gradient](), **kw)
        if not with_stats:
            return nodeopt.odeint(func, y0, case.t, **args)[-1], None
        sol = nodeopt.solve(func, y0, case.t, **args)
        st = sol.stats
        return sol.values[-1], {"steps": st.n_steps, "rejected": st.n_rejected, "nfe": st.nfe,
                                "nfe_backward": st.nfe_backward, "strategy": st.strategy}
    return solve


def jax_field(wl: Workload) -> Callable:
    """The workload's field in JAX: ``f(params, t, y)`` with ``params`` the PyTorch parameters in module order."""
    import jax.numpy as jnp
    from jax import lax

    def mlp(params, t, y):
        h = jnp.concatenate([y, jnp.broadcast_to(jnp.asarray(t, y.dtype), (y.shape[0], 1))], 1)
        n = len(params) // 2
        for i in range(n):
            h = h @ params[2 * i].T + params[2 * i + 1]  # nn.Linear: weight (out, in)
            h = jnp.tanh(h) if i + 1 < n else h
        return h

    def conv3x3(x, w, b):  # nn.Conv2d(padding=1): cross-correlation, NCHW input, OIHW kernel
        out = lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return out + b[None, :, None, None]

    def conv(params, t, y):
        w1, b1, w2, b2 = params
        tt = jnp.broadcast_to(jnp.asarray(t, y.dtype), (y.shape[0], 1, *y.shape[2:]))
        return conv3x3(jnp.concatenate([jnp.tanh(conv3x3(jnp.concatenate([y, tt], 1), w1, b1)), tt], 1), w2, b2)

    net = mlp if wl.kind == "mlp" else conv
    return lambda params, t, y: net(params, t, y) - wl.decay * y if wl.decay else net(params, t, y)


class JaxRunner:
    """A diffrax row: ``jax.jit(jax.value_and_grad(L))`` with respect to ``y0`` and the parameters."""

    def __init__(self, case: Case, adjoint: str):
        import diffrax
        import jax
        import jax.numpy as jnp

        f = jax_field(case.wl)
        term = diffrax.ODETerm(lambda t, y, params: f(params, t, y))
        adj = (diffrax.RecursiveCheckpointAdjoint() if adjoint == "recursive"
               else diffrax.BacksolveAdjoint(max_steps=ADJOINT_MAX_STEPS))

        def loss(y0, params, v):
            sol = diffrax.diffeqsolve(term, diffrax.Dopri5(), 0.0, case.wl.t_end, None, y0, args=params,
                                      saveat=diffrax.SaveAt(t1=True), adjoint=adj,
                                      stepsize_controller=diffrax.PIDController(rtol=TOL, atol=TOL))
            y_end = sol.ys[-1]
            return jnp.sum(y_end * v), (y_end, sol.stats["num_accepted_steps"], sol.stats["num_rejected_steps"])

        self.block = jax.block_until_ready
        self.fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
        self.args = (jnp.asarray(case.y0.numpy()), [jnp.asarray(p.detach().numpy()) for p in case.field.parameters()],
                     jnp.asarray(case.v.numpy()))
        self.last = None

    def release(self) -> None:
        self.last = None

    def step(self) -> None:
        self.last = None
        self.last = self.block(self.fn(*self.args))

    def collect(self) -> tuple[np.ndarray, np.ndarray, dict]:
        (_, (y_end, accepted, rejected)), (g_y0, g_params) = self.last
        grad = np.concatenate([np.asarray(g, np.float64).ravel() for g in [g_y0, *g_params]])
        return np.asarray(y_end, np.float64), grad, {"steps": int(accepted), "rejected": int(rejected), "nfe": None}


def field_costs(case: Case, repeats: int = 7) -> dict:
    """Microseconds of one evaluation of the workload's field and of one VJP through it (w.r.t. the state and
    the parameters), eager PyTorch, ``torch.compile`` (Inductor) and ``jax.jit``, each the median of
    ``repeats`` interleaved rounds of many calls: the per-evaluation cost that every solve multiplies."""
    import jax

    field, y, v = case.field, case.y0, case.v
    t = torch.tensor(0.5)
    params = dict(field.named_parameters())

    def vjp(t, y, v):
        _, pullback = torch.func.vjp(lambda y, p: torch.func.functional_call(field, p, (t, y)), y, params)
        return pullback(v)

    f = jax_field(case.wl)
    jf = jax.jit(f)
    jvjp = jax.jit(lambda w, t, y, v: jax.vjp(lambda y, w: f(w, t, y), y, w)[1](v))
    w = [jax.numpy.asarray(q.detach().numpy()) for q in field.parameters()]
    yj, vj = jax.numpy.asarray(y.numpy()), jax.numpy.asarray(v.numpy())
    compiled_field, compiled_vjp = torch.compile(field), torch.compile(vjp)

    def evaluate(fn):
        with torch.no_grad():
            return fn(t, y)

    calls = max(1, int(0.05 / max(timed(lambda: evaluate(field)), 1e-6)))  # about 50 ms of calls per sample

    def many(fn):
        return lambda: [fn() for _ in range(calls)]

    fns = {"torch eager f": many(lambda: evaluate(field)), "torch.compile f": many(lambda: evaluate(compiled_field)),
           "jax.jit f": many(lambda: jf(w, 0.5, yj).block_until_ready()),
           "torch eager vjp": many(lambda: vjp(t, y, v)), "torch.compile vjp": many(lambda: compiled_vjp(t, y, v)),
           "jax.jit vjp": many(lambda: jax.block_until_ready(jvjp(w, 0.5, yj, vj)))}
    samples = interleaved(fns, repeats, warmup=1, order="rotate")
    return {name: median(ts) / calls * 1e6 for name, ts in samples.items()}


# ---- the rows -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    key: str
    label: str
    needs: tuple  # modules that must be importable
    make: Callable[[Case], object]  # -> a runner
    exact: bool = False  # the gradient of the discrete solve (not the continuous adjoint)
    compiled: bool = False  # jit / torch.compile: the first call compiles
    pytorch_peer: bool = False
    nodeopt_compile: bool = False  # needs nodeopt.odeint(compile=)


def _nodeopt_row(gradient: str, label: str, compiled: bool = False, sync_every: int = 1) -> Row:
    sync = f", sync_every={sync_every}" if sync_every > 1 else ""
    return Row(f"nodeopt-{gradient}" + ("-compiled" if compiled else "") + (f"-sync{sync_every}" if sync else ""),
               f"nodeopt {label}" + (", compile=True" if compiled else "") + sync, (),
               lambda case: TorchRunner(case, nodeopt_solve(case, gradient, compiled, sync_every)),
               exact=gradient != "adjoint", compiled=compiled, nodeopt_compile=compiled)


ROWS = [
    Row("td-backprop", "torchdiffeq odeint (backprop)", ("torchdiffeq",),
        lambda case: TorchRunner(case, torchdiffeq_solve(case, False), count=True), exact=True, pytorch_peer=True),
    Row("td-adjoint", "torchdiffeq odeint_adjoint", ("torchdiffeq",),
        lambda case: TorchRunner(case, torchdiffeq_solve(case, True), count=True), pytorch_peer=True),
    Row("torchode", "torchode (backprop)", ("torchode",),
        lambda case: TorchRunner(case, torchode_solve(case, False)), exact=True, pytorch_peer=True),
    Row("torchode-compiled", "torchode (backprop), torch.compile(solve)", ("torchode",),
        lambda case: TorchRunner(case, torchode_solve(case, True)), exact=True, compiled=True, pytorch_peer=True),
    Row("diffrax-recursive", "diffrax RecursiveCheckpointAdjoint (jit)", ("jax", "diffrax", "equinox"),
        lambda case: JaxRunner(case, "recursive"), exact=True, compiled=True),
    Row("diffrax-backsolve", "diffrax BacksolveAdjoint (jit)", ("jax", "diffrax", "equinox"),
        lambda case: JaxRunner(case, "backsolve"), compiled=True),
    _nodeopt_row("backprop", "backprop"),
    _nodeopt_row("symplectic", "symplectic"),
    _nodeopt_row("symplectic-stored", "symplectic, stored stages"),
    _nodeopt_row("checkpoint", "checkpoint (ACA)"),
    _nodeopt_row("exact", "Exact()"),
    _nodeopt_row("adjoint", "adjoint"),
    *[_nodeopt_row(g, label, compiled=True) for g, label in
      [("backprop", "backprop"), ("symplectic", "symplectic"), ("symplectic-stored", "symplectic, stored stages"),
       ("checkpoint", "checkpoint (ACA)"), ("exact", "Exact()")]],
    # step control on the device (options["sync_every"]): the host reads back once per 8 steps
    _nodeopt_row("backprop", "backprop", compiled=True, sync_every=8),
    _nodeopt_row("checkpoint", "checkpoint (ACA)", compiled=True, sync_every=8),
]
ROW_BY_KEY = {r.key: r for r in ROWS}


def unavailable(row: Row) -> Optional[str]:
    """Why the row cannot run here (None when it can)."""
    missing = [m for m in row.needs if importlib.util.find_spec(m) is None]
    if missing:
        return f"not installed ({', '.join(missing)})"
    if row.nodeopt_compile and not nodeopt_compiles():
        return "not measured (nodeopt.odeint has no compile= keyword)"
    return None


def peer_versions() -> dict:
    out = {}
    for name in ("torchdiffeq", "torchode", "jax", "jaxlib", "diffrax", "equinox"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


# ---- memory: a fresh subprocess per (workload, row) ----------------------------------------------------

def child(workload_name: str, row_key: str, quick: bool) -> int:
    """Peak memory of one row's iteration above baseline (the probe of benchmarks.gradients); one RESULT line."""
    torch.set_num_threads(1)
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:  # run by hand; under the benchmark it shares the parent's
        fresh_inductor_cache()
    runner = ROW_BY_KEY[row_key].make(make_case(workload(workload_name, quick)))
    first = timed(runner.step)  # warm-up: compiles (in a fresh process: every graph this row needs), allocates
    runner.release()
    gc.collect()
    _malloc_trim()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    baseline = _status_kb("VmRSS")
    second = timed(runner.step)
    hwm = _status_kb("VmHWM")
    print("RESULT " + json.dumps({"baseline_kb": baseline, "hwm_kb": hwm, "peak_mb": (hwm - baseline) / 1024,
                                  "first_call_s": first, "call_s": second}), flush=True)
    return 0


def measure_memory(workload_name: str, row_key: str, quick: bool) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "benchmarks.peers", "--child", "--workloads", workload_name, "--row", row_key]
    proc = subprocess.run(cmd + (["--quick"] if quick else []), env=env, capture_output=True, text=True,
                          timeout=3600, cwd=ROOT)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"failed": f"rc {proc.returncode}: {proc.stderr.strip().splitlines()[-1:] or ''}"}


# ---- one workload -------------------------------------------------------------------------------------

def warm_up(case: Case, row: Row, log) -> tuple[Optional[object], dict]:
    """Build the row's runner and run it twice untimed; returns the runner (None if it failed) and its entry."""
    entry: dict = {"label": row.label, "exact": row.exact, "compiled": row.compiled, "pytorch_peer": row.pytorch_peer}
    start = time.perf_counter()
    try:
        runner = row.make(case)
        first = timed(runner.step)
        second = timed(runner.step)
        y_end, grad, stats = runner.collect()
    except Exception as exc:  # noqa: BLE001 (a peer's failure is a result: e.g. an adjoint over its step cap)
        msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        log(f"  {row.label}: FAILED after {time.perf_counter() - start:.1f} s ({type(exc).__name__}: {msg})")
        return None, {**entry, "failed": f"{type(exc).__name__}: {msg}",
                      "failed_after_s": time.perf_counter() - start}
    entry.update(first_call_s=first, warm_call_s=second, stats=stats, y_end=y_end, grad=grad)
    if row.compiled:
        entry["compile_s"] = first - second
    log(f"  warm-up {row.label}: {first:.2f} s, then {second:.3f} s")
    return runner, entry


def agreement(res: dict) -> None:
    """Each row's y(T) and gradient against torchdiffeq backprop's (the arrays are dropped afterwards)."""
    ref = res.get(REFERENCE, {})
    for e in res.values():
        if "y_end" in e and "y_end" in ref:
            e["y_rel_diff"] = float(np.max(np.abs(e["y_end"] - ref["y_end"])) / np.max(np.abs(ref["y_end"])))
            e["y_agrees"] = e["y_rel_diff"] <= AGREE_FACTOR * TOL
            e["grad_rel_diff"] = float(np.linalg.norm(e["grad"] - ref["grad"]) / np.linalg.norm(ref["grad"]))
    for e in res.values():
        e.pop("y_end", None)
        e.pop("grad", None)


def time_rows(runners: dict, res: dict, rounds: int, log) -> dict:
    """The rounds; fills each row's median time, ratio and CPU/wall; returns key -> wall times per round."""
    samples = interleaved({k: r.step for k, r in runners.items()}, rounds, order="rotate",
                          measure=timed_wall_and_cpu,
                          after_round=lambda i, s: log(f"  round {i + 1}/{rounds} done"))
    walls = {k: [w for w, _ in v] for k, v in samples.items()}
    for key, s in samples.items():
        res[key].update(times=walls[key], time=median(walls[key]), cpu_per_wall=median(c / w for w, c in s))
        if REFERENCE in walls:
            res[key]["time_ratio"] = median(ratios(walls, key, REFERENCE))
    return walls


def memory_rows(name: str, keys: list, res: dict, quick: bool, log) -> None:
    """Peak memory of each row in its own subprocess, the ratio to torchdiffeq backprop's, and cold compile times."""
    for key in keys:
        res[key]["memory"] = mem = measure_memory(name, key, quick)
        log(f"  memory {res[key]['label']}: " + (f"{mem['peak_mb']:.1f} MiB" if "peak_mb" in mem else mem["failed"]))
    ref = res.get(REFERENCE, {}).get("memory", {}).get("peak_mb")
    for key in keys:
        mem = res[key]["memory"]
        if ref and "peak_mb" in mem:
            res[key]["mem_ratio"] = mem["peak_mb"] / ref
        if res[key]["compiled"] and "call_s" in mem:  # warm cache: kept in the JSON, not the table's cold time
            res[key]["compile_subprocess_s"] = mem["first_call_s"] - mem["call_s"]


def run_workload(name: str, quick: bool, rounds: Optional[int], memory: bool, log) -> dict:
    wl = workload(name, quick)
    rounds = wl.rounds if rounds is None else rounds
    case = make_case(wl)
    started = time.perf_counter()
    log(f"\n### {name}: {'(quick: smaller than this note says) ' if quick else ''}{wl.note}, rtol=atol={TOL:g}")
    res: dict = {}
    runners: dict = {}
    for row in ROWS:
        why = unavailable(row)
        if why:
            res[row.key] = {"label": row.label, "unavailable": why}
            continue
        runner, res[row.key] = warm_up(case, row, log)
        if runner is not None:
            runners[row.key] = runner
    agreement(res)
    walls = time_rows(runners, res, rounds, log)
    costs = field_costs(case) if unavailable(ROW_BY_KEY["diffrax-recursive"]) is None else {}
    if costs:
        log("one evaluation / VJP of the field (us): " + ", ".join(f"{k} {v:.0f}" for k, v in costs.items()))
    for runner in runners.values():
        runner.release()
    if memory:  # --quick leaves out the compiled rows (each would compile again)
        memory_rows(name, [k for k in runners if not (quick and res[k]["compiled"])], res, quick, log)
    out = {"workload": wl.__dict__, "tol": TOL, "rounds": rounds, "state_shape": list(case.y0.shape),
           "n_params": sum(p.numel() for p in case.field.parameters()), "rows": res, "walls": walls,
           "field_us": costs,
           "not_measured": SAM_NOTE, "elapsed_s": time.perf_counter() - started}
    log("")
    log(table(out))
    return out


# ---- reporting ----------------------------------------------------------------------------------------

def _counts(stats: dict) -> str:
    if not stats:
        return "-"
    s = f"{stats['steps']}" + (f" (+{stats['rejected']})" if stats.get("rejected") else "")
    return s + (f" / {stats['nfe']}" if stats.get("nfe") is not None else "")


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(result: dict) -> str:
    """The markdown table of one workload."""
    wl = result["workload"]
    lines = [f"`{wl['name']}`: {wl['note']}; rtol=atol={result['tol']:g}; state {tuple(result['state_shape'])}, "
             f"{result['n_params']} parameters; {result['rounds']} timing round(s).", "",
             "| row | time (ms) | × td backprop | peak MiB | × td backprop mem | steps (+rej) / nfe fwd "
             "| y(T) rel diff | grad rel diff | compile (s) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for e in result["rows"].values():
        if "unavailable" in e or "failed" in e:
            why = e.get("unavailable") or f"failed after {e['failed_after_s']:.1f} s: {e['failed']}"
            lines.append(f"| {e['label']} | {why} |")
            continue
        mem = e.get("memory", {})
        peak = _fmt(mem.get("peak_mb"), ".1f") if "failed" not in mem else "failed"
        flag = "" if e.get("y_agrees", True) else " (CHECK)"
        lines.append(f"| {e['label']} | {e['time'] * 1e3:.1f} | {_fmt(e.get('time_ratio'), '.2f')} | {peak} | "
                     f"{_fmt(e.get('mem_ratio'), '.2f')} | {_counts(e.get('stats'))} | "
                     f"{_fmt(e.get('y_rel_diff'), '.1e')}{flag} | {_fmt(e.get('grad_rel_diff'), '.1e')} | "
                     f"{_fmt(e.get('compile_s'), '.1f')} |")
    lines += [f"| {SAM_NOTE} | | | | | | | | |", "",
              "compile (s): first call minus second in this process, whose torch.compile cache started empty (cold); "
              "rows sharing compiled graphs compile them once, the first of them carrying the time."]
    return "\n".join(lines)


def _paired(result: dict, a: str, b: str) -> Optional[float]:
    """Median over rounds of time(a) / time(b), or None if either was not timed."""
    walls = result.get("walls", {})
    return median(ratios(walls, a, b)) if a in walls and b in walls else None


def fastest_low_memory(result: dict) -> tuple[Optional[str], str]:
    """nodeopt's fastest exact row whose peak is <= LOW_MEMORY x nodeopt backprop's: (key, "") or (None, verdict)."""
    rows = result["rows"]
    base = rows.get("nodeopt-backprop", {}).get("memory", {}).get("peak_mb")
    if base is None:
        return None, "NOT MEASURED: no memory run of nodeopt backprop"
    fits = [k for k, e in rows.items() if k.startswith("nodeopt-") and e.get("exact") and "time" in e
            and e.get("memory", {}).get("peak_mb") is not None and e["memory"]["peak_mb"] <= LOW_MEMORY * base]
    if not fits:
        return None, f"NOT MET: no nodeopt exact row has a peak <= {LOW_MEMORY} x nodeopt backprop's ({base:.1f} MiB)"
    return min(fits, key=lambda k: rows[k]["time"]), ""


def check_goals(results: dict) -> list[str]:
    """The issue's goals, one line each, starting with MET / NOT MET / NOT MEASURED."""
    out = []
    for name in WORKLOADS:
        if name not in results:
            out.append(f"NOT MEASURED: (a) {name}: workload not run")
            continue
        res = results[name]
        best, why = fastest_low_memory(res)
        if best is None:
            verdict, why = why.split(": ", 1)
            out.append(f"{verdict}: (a) {name}: {why}")
            continue
        peak = res["rows"][best]["memory"]["peak_mb"]
        head = f"(a) {name}: fastest exact low-memory nodeopt row = {best} ({peak:.1f} MiB)"
        rivals = (["diffrax-recursive"] if name in ("mlp2", "mlp2-long") else []) + \
                 [r.key for r in ROWS if r.pytorch_peer]
        for rival in rivals:
            ratio, e = _paired(res, best, rival), res["rows"].get(rival, {})
            strict = rival != "diffrax-recursive"  # "ahead of" the PyTorch peers; "<=" diffrax
            if ratio is None:
                why = e.get("unavailable") or (f"failed: {e['failed']}" if "failed" in e else "not timed")
                out.append(f"NOT MEASURED: {head} vs {rival}: {why}")
            else:
                ok = ratio < 1 if strict else ratio <= 1
                out.append(f"{'MET' if ok else 'NOT MET'}: {head}: time / {rival} = {ratio:.3f} "
                           f"(goal {'<' if strict else '<='} 1)")
    for name in ("mlp2", "mlp2-long"):
        ratio = _paired(results[name], "nodeopt-backprop-compiled", REFERENCE) if name in results else None
        if ratio is None:
            out.append(f"NOT MEASURED: (b) {name}: nodeopt compiled backprop / torchdiffeq backprop "
                       f"({'no compile= keyword' if not nodeopt_compiles() else 'not timed'})")
        else:
            out.append(f"{'MET' if ratio <= COMPILED_GOAL else 'NOT MET'}: (b) {name}: nodeopt compiled backprop / "
                       f"torchdiffeq backprop = {ratio:.3f} (goal <= {COMPILED_GOAL})")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small workloads, one timing round")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated subset of {','.join(WORKLOADS)}")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default: per workload)")
    parser.add_argument("--out", default=None, help="JSON output (default benchmarks/out/peers.json)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--decompose-tanh", action="store_true",
                        help="Inductor's exp-based tanh on the CPU (torch._inductor.config.cpp.use_decompose_tanh, "
                             "off by default in PyTorch for its accuracy near 0): what the tanh kernel costs")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--row", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = workload_names(parser, args.workloads, WORKLOADS)
    if args.child:
        return child(names[0], args.row, args.quick)

    torch.set_num_threads(1)
    fresh_inductor_cache()
    if args.decompose_tanh:  # here and in the memory subprocesses, which read it from the environment
        from torch._inductor import config as inductor_config
        os.environ["TORCHINDUCTOR_CPP_USE_DECOMPOSE_TANH"] = "1"
        inductor_config.cpp.use_decompose_tanh = True
    out_path = Path(args.out or f"benchmarks/out/peers{'-quick' if args.quick else ''}.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**environment("peers", argv), "peers": peer_versions(), "xla_flags": os.environ["XLA_FLAGS"],
           "decompose_tanh": args.decompose_tanh,
           "symplectic_adjoint_method": SAM_NOTE}
    print(f"# Peers ({describe(env)})\n# {env['peers']}; XLA_FLAGS={env['xla_flags']!r}\n# {SAM_NOTE}", flush=True)
    t0 = time.perf_counter()
    results: dict = {}
    doc = {"environment": env, "results": results}
    for name in names:
        results[name] = run_workload(name, args.quick, args.rounds, not args.no_memory,
                                     lambda msg: print(msg, flush=True))
        out_path.write_text(json.dumps(jsonable(doc), indent=1))
    doc["goals"] = check_goals(results)
    doc["elapsed_s"] = time.perf_counter() - t0
    print("\n### Goals\n")
    for line in doc["goals"]:
        print(f"- {line}")
    print(f"\ntotal {doc['elapsed_s']:.0f} s; JSON written to {out_path}")
    out_path.write_text(json.dumps(jsonable(doc), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
