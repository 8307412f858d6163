"""Optimiser benchmarks: SNOpt (+ SGD with momentum) against SGD with momentum and Adam.

Run from the repository root::

    python -m benchmarks.optimizers            # full run (about 45 minutes on 2 CPU cores)
    python -m benchmarks.optimizers --quick    # smoke run (about a minute)

Options: ``--tasks digits,cnf2d,timeseries`` (default: all three), ``--parts
sweep,overhead,stability`` (default: all), ``--seeds 0,1,2``, ``--only
snopt@0.2,adam@0.01`` (run only these optimiser@lr keys of the sweep), ``--out
PATH`` (JSON, default ``benchmarks/out/optimizers.json``;
``benchmarks/out/optimizers-quick.json`` with ``--quick``; a Markdown summary is
written next to it), ``--figures DIR`` (PNG plots; default ``benchmarks/figures``
for a full run, none for ``--quick``).

Everything runs in one process with ``torch.set_num_threads(1)``, float32.
Every training run starts with ``torch.manual_seed(seed)`` (model initialisation)
and draws its mini-batches (epoch-wise permutations) from its own
``torch.Generator().manual_seed(1000 + seed)``, so for a given seed every
optimiser starts from the same weights and sees the same batches.

Optimisers (the ``lr`` grids are in ``TASKS`` below):

* ``snopt``: ``SNOpt(model, eps=0.05, update_freq=10, alpha=0.75,
  full_precond=True, max_step=50.0, lr=lr)`` wrapped around ``SGD(lr,
  momentum=0.5)``. ``update_freq=10`` rather than the library's 100 because the
  runs are 100-150 iterations long. Every ``Linear`` and ``Conv2d`` layer is
  preconditioned, inside the ODE and out; with ``lr`` given, the bound caps the
  step actually taken, ``lr² Σ⟨∇_nat, ∇⟩ <= 50 · 0.02² = 0.02`` (K-FAC's KL
  clipping). These settings were chosen in pilot runs on digits (seeds 0-2).
* ``sgd``: ``SGD(lr, momentum=0.9)``.
* ``adam``: ``Adam(lr)`` with PyTorch's defaults otherwise.

Tasks (all ODEs: dopri5, ``gradient="symplectic"``, ``t = [0, 1]``):

* ``digits``: scikit-learn's ``load_digits`` (1797 8x8 images, 10 classes),
  stratified split 1437 train / 360 test (``random_state=0``), pixels
  standardised with the training mean and std. Model: ``Conv2d(1->16, 3x3)`` ->
  ``ODEBlock`` (field: ``conv3x3(16+t -> 16)``, tanh, ``conv3x3(16+t -> 16)``; the
  time enters as an extra constant channel; ``rtol = atol = 1e-3``) ->
  ``AdaptiveAvgPool2d(2)`` -> ``Linear(64 -> 10)``. Batch 64, 100 iterations
  (4.5 epochs), test accuracy after every iteration, target 0.90. (A 1x1 pool
  into ``Linear(16 -> 10)`` learned 2-3x more slowly in a pilot, too slowly
  for the budget.)
* ``cnf2d``: two moons (``make_moons``, noise 0.05, 4096 train points with
  ``random_state=0``, 1024 test points with ``random_state=1``, standardised).
  Model: ``ODEBlock(CNF(MLP), rtol = atol = 1e-4)``, MLP ``[z, t]`` 3 -> 64 -> 64
  -> 2 (tanh), exact divergence. Loss: negative log-likelihood under a standard
  normal base. Batch 256, 100 iterations, test NLL every 2 iterations, target
  2.30 nats (the standard normal's own NLL of standardised data is about 2.84).
* ``timeseries``: generated noisy sinusoids, 24 samples on ``[0, 3]``, three
  classes by frequency (0.6, 0.9, 1.2 cycles per unit, each +-5 %), random
  phase, amplitude ``U(0.5, 1.5)``, Gaussian noise 0.2; 2048 train and 512 test
  series (fixed generator seeds). Model: ``Linear(24 -> 32)`` encoder ->
  ``ODEBlock`` (MLP ``[h, t]`` 33 -> 64 -> 32, tanh, ``rtol = atol = 1e-3``)
  returning the state at 5 times ``0, 0.25, ..., 1`` -> ``Linear(5*32 -> 3)``.
  Batch 64, 150 iterations, test accuracy after every iteration, target 0.90.

Per run: the training loss, cumulative training wall-clock (``perf_counter``)
and CPU time (``process_time``, less sensitive to other jobs on a shared
machine) of every iteration, the forward NFE, whether the iteration was an
SNOpt refresh, and for SNOpt the step's Fisher size ``sum <nat, grad>`` and
the ``max_step`` scale actually applied (read by wrapping ``SNOpt._step_scale``
of that instance; nothing in nodeopt is changed). The test metric is computed
at that interval (10x less often once the target is reached); evaluation
time is excluded from the clocks. Time to
target = the training clock at the first evaluation that meets the target
(resolution: the evaluation interval). A run has *diverged* when its loss is
NaN/inf or more than 10x its first loss, or the solver fails (max_num_steps
is capped so that a blown-up field cannot stall the benchmark); a diverged run
stops there.

Parts:

* ``sweep``: every task x optimiser x lr x seed, as above. Best lr per optimiser
  and task = most seeds reaching the target, then the smallest median time.
* ``overhead``: per-iteration time on ``digits`` of SGD and of SNOpt's refresh and
  non-refresh iterations, for ``gradient="symplectic"`` and ``"adjoint"``: one
  model (after 30 SGD warm-up iterations at lr 0.05, so that the solver's step
  count is typical), one fixed batch, optimisers with ``lr = 0`` so that the
  weights and hence the NFE stay fixed; rounds of the three kinds in rotated
  order; medians over rounds and the median of the per-round ratios to SGD.
  Then, in separate instrumented refresh iterations, the time spent gathering
  Kronecker factors (``FactorSums.add``) and refreshing the eigenbases.
* ``stability``: the issue's check: ``digits``, SGD lr 0.02, eps 0.05, SNOpt with
  ``max_step=None`` (unbounded, as the original code) against the benchmark's
  bound, over the seeds, 100 iterations; plus other ``max_step`` values at lr
  0.02 and 0.1 (one seed) to see which bound trains fastest. Identical runs are
  shared with the sweep (the bounded SNOpt and the SGD runs at lr 0.02 are the sweep's).

At the end the issue's goals are checked and printed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

import nodeopt
from nodeopt.data import digits
from nodeopt.nn import CNF, ODEBlock
from nodeopt.optim import SNOpt
from nodeopt.optim import capture as snopt_capture
from nodeopt.tasks.models import ConvField, MLPField

from .machine import cpu_name

# ---- settings -------------------------------------------------------------------

EPS, ALPHA, UPDATE_FREQ = 0.05, 0.75, 10
FULL_PRECOND = True            # precondition every Linear/Conv2d layer, not only those inside the ODE
MAX_STEP = 50.0                # SNOpt's step bound; given the lr it caps lr^2 <nat, grad> at 50 * 0.02^2 = 0.02
SNOPT_MOMENTUM = 0.5           # momentum of the SGD that SNOpt wraps
MOMENTUM = 0.9                 # momentum of plain SGD
DIVERGE_FACTOR = 10.0
DEFAULT = "default"            # max_step = MAX_STEP
OPTIMISERS = ("snopt", "sgd", "adam")

# Per task: iterations, evaluation interval, lr grids (full and --quick).
TASKS = {
    "digits": dict(iterations=100, eval_every=1,
                   lrs={"snopt": [0.02, 0.05, 0.1, 0.2], "sgd": [0.01, 0.02, 0.05, 0.1, 0.2],
                        "adam": [1e-3, 3e-3, 1e-2, 3e-2]},
                   quick=dict(iterations=12, eval_every=4, lrs={"snopt": [0.05], "sgd": [0.05], "adam": [3e-3]})),
    "cnf2d": dict(iterations=100, eval_every=2,
                  lrs={"snopt": [0.05, 0.1, 0.2], "sgd": [0.05, 0.1], "adam": [3e-3, 1e-2]},
                  quick=dict(iterations=6, eval_every=3, lrs={"snopt": [0.05], "sgd": [0.05], "adam": [1e-2]})),
    "timeseries": dict(iterations=150, eval_every=1,
                       lrs={"snopt": [0.02, 0.05, 0.1, 0.2, 0.5], "sgd": [0.02, 0.05, 0.1, 0.2, 0.5],
                            "adam": [1e-3, 3e-3, 1e-2]},
                       quick=dict(iterations=10, eval_every=5,
                                  lrs={"snopt": [0.05], "sgd": [0.05], "adam": [3e-3]})),
}

OVERHEAD = dict(rounds=30, warmup_iterations=30, warmup_lr=0.05, breakdown=5,
                quick=dict(rounds=3, warmup_iterations=2, breakdown=1))
STABILITY = dict(lr=0.02, momentum=0.9, iterations=100, max_steps=[None, DEFAULT],
                 extra=[(0.02, [1.0]), (0.1, [None, 1.0])],
                 quick=dict(iterations=10, extra=[]))


def batch_stream(n: int, batch: int, gen: torch.Generator):
    """Index batches of epoch-wise random permutations (the last incomplete batch of an epoch is dropped)."""
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch + 1, batch):
            yield perm[i:i + batch]


# ---- tasks -------------------------------------------------------------------------

class Task:
    name = ""
    metric = ""
    higher_is_better = True
    target = 0.0
    batch = 64

    def __init__(self, quick: bool):
        cfg = TASKS[self.name]
        cfg = {**cfg, **cfg["quick"]} if quick else cfg
        self.iterations, self.eval_every, self.lrs = cfg["iterations"], cfg["eval_every"], cfg["lrs"]

    def reached(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        return value >= self.target if self.higher_is_better else value <= self.target

    def make_model(self, gradient: str = "symplectic") -> nn.Module:
        raise NotImplementedError

    def block(self, model: nn.Module) -> ODEBlock:
        return next(m for m in model.modules() if isinstance(m, ODEBlock))

    def loss(self, model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, model: nn.Module) -> float:
        raise NotImplementedError

    def describe(self) -> dict:
        return dict(metric=self.metric, higher_is_better=self.higher_is_better, target=self.target,
                    batch=self.batch, iterations=self.iterations, eval_every=self.eval_every, lrs=self.lrs,
                    n_train=int(self.n_train))


class Digits(Task):
    name, metric, target, batch = "digits", "test accuracy", 0.90, 64

    def __init__(self, quick: bool):
        super().__init__(quick)
        data = digits()  # nodeopt.data: the stratified 1437/360 split, standardised with the training pixels
        self.xtr, self.xte, self.ytr, self.yte = data.x_train, data.x_test, data.y_train, data.y_test
        self.n_train = len(self.ytr)

    def make_model(self, gradient: str = "symplectic") -> nn.Module:
        return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1),
                             ODEBlock(ConvField(16, "tanh", time_last=True), rtol=1e-3, atol=1e-3, method="dopri5",
                                      gradient=gradient,
                                      options={"max_num_steps": 300}),
                             nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 10))

    def loss(self, model, idx):
        return F.cross_entropy(model(self.xtr[idx]), self.ytr[idx])

    @torch.no_grad()
    def evaluate(self, model):
        return float((model(self.xte).argmax(1) == self.yte).float().mean())


class Moons(Task):
    name, metric, target, batch = "cnf2d", "test NLL (nats)", 2.30, 256
    higher_is_better = False

    def __init__(self, quick: bool):
        super().__init__(quick)
        from sklearn.datasets import make_moons
        xtr, _ = make_moons(4096, noise=0.05, random_state=0)
        xte, _ = make_moons(1024, noise=0.05, random_state=1)
        mean, std = xtr.mean(0), xtr.std(0)
        self.xtr = torch.tensor((xtr - mean) / std, dtype=torch.float32)
        self.xte = torch.tensor((xte - mean) / std, dtype=torch.float32)
        self.n_train = len(self.xtr)

    def make_model(self, gradient: str = "symplectic") -> nn.Module:
        return ODEBlock(CNF(MLPField(2, 64, layers=3), divergence="exact"), rtol=1e-4, atol=1e-4, method="dopri5",
                        gradient=gradient, options={"max_num_steps": 300})

    @staticmethod
    def nll(model, x):
        z, delta_logp = model((x, torch.zeros(x.shape[0], 1)))
        log_pz = -0.5 * z.square().sum(1) - math.log(2 * math.pi)
        return -(log_pz - delta_logp.squeeze(1)).mean()

    def loss(self, model, idx):
        return self.nll(model, self.xtr[idx])

    def evaluate(self, model):
        with torch.no_grad():
            return float(self.nll(model, self.xte))


class SeriesModel(nn.Module):
    def __init__(self, length: int, hidden: int = 32, readouts: int = 5, classes: int = 3):
        super().__init__()
        self.encoder = nn.Linear(length, hidden)
        self.ode = ODEBlock(MLPField(hidden, 64, layers=2), rtol=1e-3, atol=1e-3, method="dopri5", gradient="symplectic",
                            return_all=True, options={"max_num_steps": 300})
        self.register_buffer("readout_times", torch.linspace(0.0, 1.0, readouts, dtype=torch.float64))
        self.head = nn.Linear(readouts * hidden, classes)

    def forward(self, x):
        hs = self.ode(self.encoder(x), self.readout_times)          # (readouts, batch, hidden)
        return self.head(hs.permute(1, 0, 2).reshape(x.shape[0], -1))


class Series(Task):
    name, metric, target, batch = "timeseries", "test accuracy", 0.90, 64
    LENGTH, FREQS = 24, (0.6, 0.9, 1.2)

    def __init__(self, quick: bool):
        super().__init__(quick)
        self.xtr, self.ytr = self.generate(2048, seed=0)
        self.xte, self.yte = self.generate(512, seed=1)
        self.n_train = len(self.ytr)

    def generate(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        t = torch.linspace(0.0, 3.0, self.LENGTH)
        y = torch.randint(0, len(self.FREQS), (n,), generator=g)
        freq = torch.tensor(self.FREQS)[y] * (1 + 0.05 * torch.randn(n, generator=g))
        phase = 2 * math.pi * torch.rand(n, 1, generator=g)
        amp = 0.5 + torch.rand(n, 1, generator=g)
        x = amp * torch.sin(2 * math.pi * freq[:, None] * t + phase) + 0.2 * torch.randn(n, self.LENGTH, generator=g)
        return x, y

    def make_model(self, gradient: str = "symplectic") -> nn.Module:
        model = SeriesModel(self.LENGTH)
        model.ode.gradient = gradient
        return model

    def loss(self, model, idx):
        return F.cross_entropy(model(self.xtr[idx]), self.ytr[idx])

    @torch.no_grad()
    def evaluate(self, model):
        return float((model(self.xte).argmax(1) == self.yte).float().mean())


TASK_CLASSES = {"digits": Digits, "cnf2d": Moons, "timeseries": Series}


# ---- one training run ----------------------------------------------------------------

def instrument_step_scale(precond: SNOpt, log: list) -> None:
    """Record ``(sum <nat, grad>, applied scale)`` of every SNOpt step (read-only wrapper of this instance)."""
    original = getattr(precond, "_step_scale", None)
    if original is None:
        return

    def wrapped(pairs):
        size = sum(float((nat * grad).sum()) for _, grad, nat in pairs) if pairs else float("nan")
        scale = original(pairs)
        log.append((size, float(scale)))
        return scale

    precond._step_scale = wrapped


def make_optimisers(model: nn.Module, opt: str, lr: float, *, max_step=DEFAULT, update_freq: int = UPDATE_FREQ,
                    momentum: Optional[float] = None):
    precond = None
    if opt == "snopt":
        precond = SNOpt(model, eps=EPS, update_freq=update_freq, alpha=ALPHA, full_precond=FULL_PRECOND,
                        max_step=MAX_STEP if max_step == DEFAULT else max_step, lr=lr)
    if opt == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=default_momentum(opt, momentum))
    return precond, optimizer


def default_momentum(opt: str, momentum: Optional[float]) -> Optional[float]:
    """The SGD momentum of a run: as given, else SNOPT_MOMENTUM under SNOpt and MOMENTUM for SGD (None: Adam)."""
    if opt == "adam":
        return None
    return momentum if momentum is not None else (SNOPT_MOMENTUM if opt == "snopt" else MOMENTUM)


def one_iteration(task: Task, model: nn.Module, idx: torch.Tensor, precond: Optional[SNOpt], optimizer) -> float:
    """One training iteration (SNOpt around the optimiser when given); returns the loss.

    A solver failure (RuntimeError) closes SNOpt's open curvature capture and propagates.
    """
    try:
        if precond is not None:
            precond.train_itr_setup()
        optimizer.zero_grad(set_to_none=True)
        loss = task.loss(model, idx)
        loss.backward()
        if precond is not None:
            precond.step()
        optimizer.step()
        return loss.detach().item()
    except RuntimeError:
        close_capture(precond)
        raise


def close_capture(precond: Optional[SNOpt]) -> None:
    """After an exception inside an iteration, close SNOpt's open curvature capture (hooks + listening)."""
    if precond is not None and getattr(precond, "_capture", None) is not None:
        precond.end_capture()


def safe_evaluate(task: Task, model: nn.Module) -> float:
    try:
        return task.evaluate(model)
    except RuntimeError:
        return float("nan")


def train(task: Task, opt: str, lr: float, seed: int, iterations: Optional[int] = None, *, max_step=DEFAULT,
          update_freq: int = UPDATE_FREQ, momentum: Optional[float] = None, log=print) -> dict:
    iterations = task.iterations if iterations is None else iterations
    torch.manual_seed(seed)
    model = task.make_model()
    block = task.block(model)
    stream = batch_stream(task.n_train, task.batch, torch.Generator().manual_seed(1000 + seed))
    precond, optimizer = make_optimisers(model, opt, lr, max_step=max_step, update_freq=update_freq,
                                         momentum=momentum)
    steps: list = []
    if precond is not None:
        instrument_step_scale(precond, steps)
    rec = dict(task=task.name, opt=opt, lr=lr, seed=seed, iterations=iterations,
               max_step=(None if opt != "snopt" else (MAX_STEP if max_step == DEFAULT else max_step)),
               update_freq=update_freq if opt == "snopt" else None, momentum=default_momentum(opt, momentum),
               loss=[], wall=[], cpu=[], nfe=[], refresh=[], evals=[], diverged=False, reason=None)
    rec["evals"].append((0, 0.0, 0.0, safe_evaluate(task, model)))
    wall = cpu = 0.0
    first_loss = None
    reached = task.reached(rec["evals"][0][3])
    for it in range(iterations):
        idx = next(stream)
        refresh = precond is not None and precond.refresh_iteration
        w0, c0 = time.perf_counter(), time.process_time()
        try:
            value = one_iteration(task, model, idx, precond, optimizer)
        except RuntimeError as exc:  # the solver gave up (non-finite field, too many steps)
            rec["diverged"], rec["reason"] = True, f"iteration {it}: solver error: {str(exc).splitlines()[0][:160]}"
            break
        wall += time.perf_counter() - w0
        cpu += time.process_time() - c0
        rec["loss"].append(value)
        rec["wall"].append(wall)
        rec["cpu"].append(cpu)
        rec["nfe"].append(int(block.stats.nfe) if block.stats is not None else None)
        rec["refresh"].append(bool(refresh))
        if first_loss is None:
            first_loss = value
        if not math.isfinite(value) or value > DIVERGE_FACTOR * abs(first_loss):
            rec["diverged"] = True
            rec["reason"] = f"iteration {it}: loss {value:.4g} (first loss {first_loss:.4g})"
            break
        # Every eval_every iterations until the target is reached, then every 10 * eval_every (cheaper).
        every = task.eval_every * (10 if reached else 1)
        if (it + 1) % every == 0 or it + 1 == iterations:
            rec["evals"].append((it + 1, wall, cpu, safe_evaluate(task, model)))
            reached = reached or task.reached(rec["evals"][-1][3])
    rec["steps"] = steps
    hit = next((e for e in rec["evals"] if task.reached(e[3])), None)
    rec["to_target"] = None if hit is None else dict(iteration=hit[0], wall=hit[1], cpu=hit[2])
    finite = [e[3] for e in rec["evals"] if math.isfinite(e[3])]
    rec["final_metric"] = rec["evals"][-1][3]
    rec["best_metric"] = (max(finite) if task.higher_is_better else min(finite)) if finite else float("nan")
    rec["median_iteration_s"] = _median(_diffs(rec["wall"]))
    rec["median_nfe"] = _median([n for n in rec["nfe"] if n is not None])
    if steps:
        sizes = [s for s, _ in steps if math.isfinite(s)]
        rec["fisher_size_median"] = _median(sizes)
        rec["bound_active_fraction"] = sum(1 for _, sc in steps if sc < 1.0) / len(steps)
        rec["scale_median"] = _median([sc for _, sc in steps])
    log(f"  {task.name:10s} {opt:5s} lr={lr:<6g} seed={seed} "
        + (f"max_step={rec['max_step']!s:8s} " if opt == "snopt" else "")
        + f"iters={len(rec['loss']):3d} loss {rec['loss'][0] if rec['loss'] else float('nan'):.3f}->"
          f"{rec['loss'][-1] if rec['loss'] else float('nan'):.3f} {task.metric} {rec['final_metric']:.3f} "
        + (f"target @ it {rec['to_target']['iteration']} / {rec['to_target']['wall']:.1f} s"
           if rec["to_target"] else "target not reached")
        + f", {wall:.1f} s, median NFE {rec['median_nfe']}"
        + (f", DIVERGED ({rec['reason']})" if rec["diverged"] else "")
        + (f", Fisher size med {rec['fisher_size_median']:.3g}, bound active {rec['bound_active_fraction']:.0%}"
           if steps else ""))
    return rec


def _diffs(xs):
    return [b - a for a, b in zip([0.0] + xs[:-1], xs)]


def _median(xs):
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.median(xs) if xs else float("nan")


class RunCache:
    """Training runs keyed by their settings, so that a part can reuse another part's identical run."""

    def __init__(self, tasks: dict[str, Task], log=print):
        self.tasks, self.runs, self.log = tasks, {}, log

    def key(self, task: str, opt: str, lr: float, seed: int, iterations: Optional[int] = None, *,
            max_step=DEFAULT, update_freq: int = UPDATE_FREQ, momentum: Optional[float] = None) -> tuple:
        iterations = self.tasks[task].iterations if iterations is None else iterations
        return (task, opt, lr, seed, iterations, max_step if opt == "snopt" else None,
                update_freq if opt == "snopt" else None, default_momentum(opt, momentum))

    def get(self, task: str, opt: str, lr: float, seed: int, iterations: Optional[int] = None, *,
            max_step=DEFAULT, update_freq: int = UPDATE_FREQ, momentum: Optional[float] = None) -> dict:
        key = self.key(task, opt, lr, seed, iterations, max_step=max_step, update_freq=update_freq, momentum=momentum)
        t = self.tasks[task]
        iterations = key[4]
        if key not in self.runs:
            self.runs[key] = train(t, opt, lr, seed, iterations, max_step=max_step, update_freq=update_freq,
                                   momentum=momentum,
                                   log=self.log)
        return self.runs[key]


# ---- part 1: the sweep -----------------------------------------------------------------

def sweep(cache: RunCache, task: Task, seeds: list[int], only: Optional[set] = None, log=print) -> dict:
    log(f"\n== sweep: {task.name} ({task.metric}, target {task.target}; {task.iterations} iterations, "
        f"batch {task.batch}) ==")
    configs = {}
    for opt in OPTIMISERS:
        for lr in task.lrs[opt]:
            if only is not None and f"{opt}@{lr:g}" not in only:
                continue
            runs = [cache.get(task.name, opt, lr, s) for s in seeds]
            configs[f"{opt}@{lr:g}"] = summarise(task, opt, lr, runs)
    best = {}
    for opt in OPTIMISERS:
        cands = [c for c in configs.values() if c["opt"] == opt]
        if not cands:
            continue
        best[opt] = min(cands, key=lambda c: (-c["n_reached"], _nan_last(c["median_wall_to_target"]),
                                              _nan_last(-c["median_final_metric"] if task.higher_is_better
                                                        else c["median_final_metric"])))["key"]
    return dict(task=task.describe(), configs=configs, best=best)


def _nan_last(x):
    return math.inf if x is None or not math.isfinite(x) else x


def summarise(task: Task, opt: str, lr: float, runs: list[dict]) -> dict:
    hits = [r["to_target"] for r in runs]
    walls = [h["wall"] if h else None for h in hits]
    return dict(key=f"{opt}@{lr:g}", opt=opt, lr=lr, seeds=[r["seed"] for r in runs],
                n_reached=sum(h is not None for h in hits), n_diverged=sum(r["diverged"] for r in runs),
                wall_to_target=walls, cpu_to_target=[h["cpu"] if h else None for h in hits],
                iters_to_target=[h["iteration"] if h else None for h in hits],
                median_wall_to_target=_median(walls) if all(w is not None for w in walls) else float("nan"),
                median_final_metric=_median([r["final_metric"] for r in runs]),
                median_best_metric=_median([r["best_metric"] for r in runs]),
                median_iteration_s=_median([r["median_iteration_s"] for r in runs]),
                median_nfe=_median([r["median_nfe"] for r in runs]),
                diverged=[r["reason"] for r in runs],
                fisher_size_median=_median([r.get("fisher_size_median") for r in runs]),
                bound_active_fraction=_median([r.get("bound_active_fraction") for r in runs]))


# ---- part 2: per-iteration overhead --------------------------------------------------------

def overhead(task: Digits, gradient: str, quick: bool, log=print) -> dict:
    cfg = {**OVERHEAD, **OVERHEAD["quick"]} if quick else OVERHEAD
    torch.manual_seed(0)
    model = task.make_model(gradient)
    block = task.block(model)
    # Warm start so that the solver's step count is typical of training.
    warm = torch.optim.SGD(model.parameters(), lr=cfg["warmup_lr"], momentum=MOMENTUM)
    stream = batch_stream(task.n_train, task.batch, torch.Generator().manual_seed(1000))
    for _ in range(cfg["warmup_iterations"]):
        warm.zero_grad()
        task.loss(model, next(stream)).backward()
        warm.step()
    idx = next(stream)
    precond = SNOpt(model, eps=EPS, update_freq=UPDATE_FREQ, alpha=ALPHA, full_precond=FULL_PRECOND, max_step=MAX_STEP,
                    lr=0.02)  # lr: only the bound's scale (the base optimiser's lr is 0 here)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=MOMENTUM)  # lr 0: weights (and NFE) fixed

    def sgd_iteration():
        optimizer.zero_grad(set_to_none=True)
        task.loss(model, idx).backward()
        optimizer.step()

    def snopt_iteration(refresh: bool):
        precond.iteration = 0 if refresh else 3   # 0 refreshes; 3 does not (not a power of two, < update_freq)
        precond.train_itr_setup()
        optimizer.zero_grad(set_to_none=True)
        task.loss(model, idx).backward()
        precond.step()
        optimizer.step()

    kinds = {"sgd": sgd_iteration, "snopt_nonrefresh": lambda: snopt_iteration(False),
             "snopt_refresh": lambda: snopt_iteration(True)}
    for fn in kinds.values():   # warm-up (also builds SNOpt's bases)
        fn()
        fn()
    wall = {k: [] for k in kinds}
    cpu = {k: [] for k in kinds}
    names = list(kinds)
    for r in range(cfg["rounds"]):
        order = names[r % 3:] + names[:r % 3]
        for k in order:
            w0, c0 = time.perf_counter(), time.process_time()
            kinds[k]()
            wall[k].append(time.perf_counter() - w0)
            cpu[k].append(time.process_time() - c0)
    stats = block.stats
    out = dict(gradient=gradient, rounds=cfg["rounds"], nfe=stats.nfe, n_steps=stats.n_steps,
               nvjp_backward=stats.nvjp_backward, nfe_backward=stats.nfe_backward,
               wall=wall, cpu=cpu, median_ms={}, median_cpu_ms={}, ratio={}, ratio_q={}, ratio_cpu={})
    for k in names:
        out["median_ms"][k] = 1e3 * statistics.median(wall[k])
        out["median_cpu_ms"][k] = 1e3 * statistics.median(cpu[k])
        ratios = [a / b for a, b in zip(wall[k], wall["sgd"])]
        out["ratio"][k] = statistics.median(ratios)
        out["ratio_q"][k] = _quartiles(ratios)
        out["ratio_cpu"][k] = statistics.median([a / b for a, b in zip(cpu[k], cpu["sgd"])])
    out["breakdown"] = refresh_breakdown(precond, snopt_iteration, cfg["breakdown"])
    b = out["breakdown"]
    log(f"  {gradient:10s} NFE {stats.nfe} fwd, {stats.nvjp_backward} VJPs bwd | SGD {out['median_ms']['sgd']:.1f} ms, "
        f"SNOpt non-refresh {out['median_ms']['snopt_nonrefresh']:.1f} ms (x{out['ratio']['snopt_nonrefresh']:.3f}, "
        f"cpu x{out['ratio_cpu']['snopt_nonrefresh']:.3f}), refresh {out['median_ms']['snopt_refresh']:.1f} ms "
        f"(x{out['ratio']['snopt_refresh']:.2f}, cpu x{out['ratio_cpu']['snopt_refresh']:.2f}); in a refresh: "
        f"factors {b['factor_ms']:.1f} ms over {b['samples']} samples, eigenbases {b['refresh_ms']:.1f} ms")
    return out


def _quartiles(xs):
    if len(xs) < 2:
        return [xs[0], xs[0]] if xs else [float("nan")] * 2
    q = statistics.quantiles(xs, n=4)
    return [q[0], q[2]]


def refresh_breakdown(precond: SNOpt, snopt_iteration: Callable[[bool], None], repeats: int) -> dict:
    """Time inside ``FactorSums.add`` and ``SNOpt._refresh`` during refresh iterations (temporary wrappers)."""
    acc = {"factor": 0.0, "refresh": 0.0}
    original_add = snopt_capture.FactorSums.add
    original_refresh = precond._refresh

    def timed_add(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original_add(self, *args, **kwargs)
        finally:
            acc["factor"] += time.perf_counter() - t0

    def timed_refresh(capture):
        t0 = time.perf_counter()
        try:
            return original_refresh(capture)
        finally:
            acc["refresh"] += time.perf_counter() - t0

    factor, refresh, total = [], [], []
    captures = []
    original_new_capture = precond.new_capture

    def recording_new_capture():
        captures.append(original_new_capture())
        return captures[-1]

    snopt_capture.FactorSums.add = timed_add
    precond._refresh = timed_refresh
    precond.new_capture = recording_new_capture
    try:
        for _ in range(repeats):
            acc["factor"] = acc["refresh"] = 0.0
            t0 = time.perf_counter()
            snopt_iteration(True)
            total.append(time.perf_counter() - t0)
            factor.append(acc["factor"])
            refresh.append(acc["refresh"])
    finally:
        snopt_capture.FactorSums.add = original_add
        del precond._refresh, precond.new_capture
    samples = sum(s.samples for s in captures[-1].sums.values()) if captures else 0
    return dict(total_ms=1e3 * statistics.median(total), factor_ms=1e3 * statistics.median(factor),
                refresh_ms=1e3 * statistics.median(refresh), samples=samples, repeats=repeats)


# ---- part 3: stability ----------------------------------------------------------------------

def stability(cache: RunCache, quick: bool, seeds: list[int], log=print) -> dict:
    cfg = {**STABILITY, **STABILITY["quick"]} if quick else STABILITY
    mom = cfg["momentum"]
    log(f"\n== stability: digits, SGD lr {cfg['lr']} momentum {mom}, eps {EPS}, update_freq {UPDATE_FREQ}, "
        f"{cfg['iterations']} iterations ==")
    out = dict(lr=cfg["lr"], momentum=mom, iterations=cfg["iterations"], eps=EPS, update_freq=UPDATE_FREQ, main={},
               extra={})
    for ms in cfg["max_steps"]:
        runs = [cache.get("digits", "snopt", cfg["lr"], s, cfg["iterations"], max_step=ms, momentum=mom)
                for s in seeds]
        out["main"][str(ms)] = _stab_summary(runs)
    sgd = [cache.get("digits", "sgd", cfg["lr"], s, cfg["iterations"]) for s in seeds]
    out["main"]["sgd"] = _stab_summary(sgd)
    for lr, values in cfg["extra"]:
        for ms in values:
            runs = [cache.get("digits", "snopt", lr, s, cfg["iterations"], max_step=ms, momentum=mom)
                    for s in seeds[:1]]
            out["extra"][f"{lr:g}/{ms}"] = dict(lr=lr, max_step=ms, **_stab_summary(runs))
    return out


def _stab_summary(runs):
    return dict(seeds=[r["seed"] for r in runs], diverged=[r["diverged"] for r in runs],
                reasons=[r["reason"] for r in runs], final_loss=[r["loss"][-1] if r["loss"] else None for r in runs],
                max_loss=[max(r["loss"]) if r["loss"] else None for r in runs],
                final_metric=[r["final_metric"] for r in runs],
                to_target=[r["to_target"] for r in runs], median_nfe=[r["median_nfe"] for r in runs],
                fisher_size_median=[r.get("fisher_size_median") for r in runs],
                bound_active_fraction=[r.get("bound_active_fraction") for r in runs],
                wall=[r["wall"][-1] if r["wall"] else None for r in runs])


# ---- goals --------------------------------------------------------------------------------------

def goals(sweeps: dict, overheads: dict, cache: RunCache) -> list[dict]:
    out = []
    if "digits" in sweeps and {"snopt", "adam"} <= set(sweeps["digits"]["best"]):
        s = sweeps["digits"]
        sn, ad = s["configs"][s["best"]["snopt"]], s["configs"][s["best"]["adam"]]
        per_seed, ok = [], True
        for seed, a, b in zip(sn["seeds"], sn["wall_to_target"], ad["wall_to_target"]):
            if a is None:
                ok = False
                per_seed.append(f"seed {seed}: SNOpt did not reach the target")
            elif b is None:
                per_seed.append(f"seed {seed}: SNOpt {a:.1f} s, Adam did not reach the target")
            else:
                ok &= a <= 0.6 * b
                per_seed.append(f"seed {seed}: {a:.1f} s vs {b:.1f} s = {a / b:.2f}x")
        out.append(dict(goal=f"SNOpt reaches the digits target in <= 0.6x Adam's wall-clock (best lr: "
                             f"{sn['key']} vs {ad['key']}) on every seed", met=ok, detail="; ".join(per_seed)))
    for grad, o in overheads.items():
        nr, rf = o["ratio"]["snopt_nonrefresh"], o["ratio"]["snopt_refresh"]
        out.append(dict(goal=f"[{grad}] non-refresh iteration <= 1.05x SGD", met=nr <= 1.05,
                        detail=f"median per-round ratio {nr:.3f} (quartiles {o['ratio_q']['snopt_nonrefresh'][0]:.3f}"
                               f"-{o['ratio_q']['snopt_nonrefresh'][1]:.3f}; CPU time {o['ratio_cpu']['snopt_nonrefresh']:.3f})"))
        out.append(dict(goal=f"[{grad}] refresh iteration <= 2x SGD", met=rf <= 2.0,
                        detail=f"median per-round ratio {rf:.2f} (quartiles {o['ratio_q']['snopt_refresh'][0]:.2f}"
                               f"-{o['ratio_q']['snopt_refresh'][1]:.2f}; CPU time {o['ratio_cpu']['snopt_refresh']:.2f})"))
    if sweeps:
        bad, checked = [], 0
        for name, s in sweeps.items():
            for seed in s["task"].get("seeds", []):
                for lr in s["task"]["lrs"]["snopt"]:
                    key_sn = cache.key(name, "snopt", lr, seed)
                    key_sg = cache.key(name, "sgd", lr, seed)
                    if key_sn in cache.runs and key_sg in cache.runs:
                        checked += 1
                        if cache.runs[key_sn]["diverged"] and not cache.runs[key_sg]["diverged"]:
                            bad.append(f"{name} lr {lr:g} seed {seed} ({cache.runs[key_sn]['reason']})")
        out.append(dict(goal="across the lr sweeps and seeds, no SNOpt run diverges where SGD at the same lr does not",
                        met=not bad, detail=f"{len(bad)} of {checked} (task, lr, seed) pairs: " + "; ".join(bad)))
    return out


# ---- figures ----------------------------------------------------------------------------------------

COLOURS = {"snopt": "C0", "sgd": "C1", "adam": "C2"}


def figures(sweeps: dict, stab: Optional[dict], cache: RunCache, tasks: dict, directory: Path, log=print) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, s in sweeps.items():
        task = tasks[name]
        fig, (ax_l, ax_m) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=80)
        for opt in s["best"]:
            c = s["configs"][s["best"][opt]]
            for i, seed in enumerate(c["seeds"]):
                r = cache.runs[cache.key(name, opt, c["lr"], seed)]
                label = f"{opt} lr={c['lr']:g}" if i == 0 else None
                ax_l.plot(r["wall"], _smooth(r["loss"], 5), color=COLOURS[opt], lw=1, alpha=0.8, label=label)
                ev = r["evals"]
                ax_m.plot([e[1] for e in ev], [e[3] for e in ev], color=COLOURS[opt], lw=1, alpha=0.8, label=label)
        ax_m.axhline(task.target, color="k", lw=0.8, ls="--", label=f"target {task.target:g}")
        ax_l.set_xlabel("training wall-clock (s)")
        ax_l.set_ylabel("training loss (5-iteration mean)")
        ax_m.set_xlabel("training wall-clock (s)")
        ax_m.set_ylabel(task.metric)
        if task.higher_is_better:
            ax_m.set_ylim(0.0, 1.0)
        else:
            ax_m.set_ylim(task.target - 0.8, 3.0)
        ax_l.set_yscale("log")
        ax_m.legend(fontsize=7)
        fig.suptitle(f"{name}: best lr per optimiser, {len(c['seeds'])} seeds (one line each)", fontsize=9)
        fig.tight_layout()
        path = directory / f"optimizers_{name}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(str(path))
    if stab is not None and stab.get("main"):
        fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=80)
        styles = {"None": ("C3", "max_step=None"), DEFAULT: ("C0", f"max_step={MAX_STEP:g}"), "sgd": ("C1", "SGD")}
        for key, summ in stab["main"].items():
            colour, label = styles.get(key, ("C4", key))
            for i, seed in enumerate(summ["seeds"]):
                k = cache.key("digits", "sgd", stab["lr"], seed, stab["iterations"]) if key == "sgd" else \
                    cache.key("digits", "snopt", stab["lr"], seed, stab["iterations"],
                              max_step=None if key == "None" else DEFAULT, momentum=stab["momentum"])
                r = cache.runs[k]
                ax.plot(range(len(r["loss"])), r["loss"], color=colour, lw=1, alpha=0.8,
                        label=label if i == 0 else None)
        ax.set_yscale("log")
        ax.set_xlabel("iteration")
        ax.set_ylabel("training loss")
        ax.set_title(f"digits, lr {stab['lr']}, eps {EPS}: SNOpt step bound", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = directory / "optimizers_stability.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(str(path))
    for p in written:
        log(f"  wrote {p} ({os.path.getsize(p) / 1024:.0f} KB)")
    return written


def _smooth(xs, k):
    out, acc = [], []
    for x in xs:
        acc.append(x)
        if len(acc) > k:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


# ---- report -------------------------------------------------------------------------------------------

def markdown(env: dict, sweeps: dict, overheads: dict, stab: Optional[dict], goal_list: list) -> str:
    lines = [f"Command: `{env['command']}`; {env['date']}; commit {env.get('commit')} (nodeopt/ modified: "
             f"{env.get('nodeopt_modified')}); {env['cpu']}, {env['cpu_count']} cores, "
             f"torch {env['torch']} ({env['threads']} thread), load average at start {env['loadavg_start']}, "
             f"at end {env.get('loadavg_end')}.", ""]
    for name, s in sweeps.items():
        t = s["task"]
        lines += [f"**{name}** ({t['metric']}, target {t['target']:g}, {t['iterations']} iterations, batch "
                  f"{t['batch']}, seeds {t.get('seeds')}): time to target per seed (training wall-clock, s; "
                  f"'-' = not reached).", "",
                  "| optimiser | lr | reached | diverged | wall to target (s) | CPU to target (s) | iterations to "
                  f"target | median final {t['metric']} | median s/iter | median NFE |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for key, c in s["configs"].items():
            best = " **(best)**" if s["best"][c["opt"]] == key else ""
            walls = ", ".join("-" if w is None else f"{w:.1f}" for w in c["wall_to_target"])
            its = ", ".join("-" if i is None else str(i) for i in c["iters_to_target"])
            cpus = ", ".join("-" if w is None else f"{w:.1f}" for w in c["cpu_to_target"])
            lines.append(f"| {c['opt']}{best} | {c['lr']:g} | {c['n_reached']}/{len(c['seeds'])} | "
                         f"{c['n_diverged']} | {walls} | {cpus} | {its} | {c['median_final_metric']:.3f} | "
                         f"{c['median_iteration_s']:.3f} | {c['median_nfe']:.0f} |")
        lines.append("")
    if overheads:
        lines += ["**Per-iteration cost** (digits model, batch 64, fixed weights; median over rounds, ratio = median "
                  "of per-round ratios to SGD, CPU-time ratio in brackets):", "",
                  "| gradient | NFE fwd / VJPs bwd | SGD (ms) | non-refresh (ms) | ratio | refresh (ms) | ratio | "
                  "factor gathering in a refresh (ms) | eigenbases (ms) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for g, o in overheads.items():
            b = o["breakdown"]
            lines.append(f"| {g} | {o['nfe']} / {o['nvjp_backward']} | {o['median_ms']['sgd']:.1f} | "
                         f"{o['median_ms']['snopt_nonrefresh']:.1f} | {o['ratio']['snopt_nonrefresh']:.3f} "
                         f"({o['ratio_cpu']['snopt_nonrefresh']:.3f}) | {o['median_ms']['snopt_refresh']:.1f} | "
                         f"{o['ratio']['snopt_refresh']:.2f} ({o['ratio_cpu']['snopt_refresh']:.2f}) | "
                         f"{b['factor_ms']:.1f} ({b['samples']} samples) | {b['refresh_ms']:.1f} |")
        lines.append("")
    if stab is not None:
        lines += [f"**Stability** (digits, SGD lr {stab['lr']} with momentum {stab['momentum']} under SNOpt too, "
                  f"eps {stab['eps']}, update_freq {stab['update_freq']}, {stab['iterations']} iterations):", "",
                  "| setting | seeds | diverged | max loss | final loss | final test acc | target reached at (s) | "
                  "median Fisher size | bound active |", "|---|---|---|---|---|---|---|---|---|"]
        rows = [("SGD" if k == "sgd" else f"SNOpt max_step={format(MAX_STEP, 'g') if k == DEFAULT else k}", v)
                for k, v in stab["main"].items()]
        rows += [(f"SNOpt lr {v['lr']:g} max_step={v['max_step']}", v) for v in stab["extra"].values()]
        for label, v in rows:
            lines.append(f"| {label} | {v['seeds']} | {sum(v['diverged'])} | "
                         f"{', '.join(_fmt(x) for x in v['max_loss'])} | {', '.join(_fmt(x) for x in v['final_loss'])} | "
                         f"{', '.join(_fmt(x) for x in v['final_metric'])} | "
                         f"{', '.join('-' if h is None else format(h['wall'], '.1f') for h in v['to_target'])} | "
                         f"{', '.join(_fmt(x) for x in v['fisher_size_median'])} | "
                         f"{', '.join('-' if x is None else format(x, '.0%') for x in v['bound_active_fraction'])} |")
        lines.append("")
    if goal_list:
        lines += ["**Goals**:", ""] + [f"- {'MET' if g['met'] else 'NOT MET'}: {g['goal']}. {g['detail']}"
                                         for g in goal_list] + [""]
    return "\n".join(lines)


def _fmt(x):
    if x is None:
        return "-"
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def environment() -> dict:
    cpu = cpu_name()
    return {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "python": platform.python_version(), "torch": torch.__version__, "nodeopt": nodeopt.__version__,
            "cpu": cpu, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "loadavg_start": _loadavg(), **_git_state(),
            "command": " ".join(["python", "-m", "benchmarks.optimizers"] + sys.argv[1:])}


def _git_state() -> dict:
    """The commit measured and whether nodeopt/ differs from it (read-only git calls; empty without git)."""
    import subprocess
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "nodeopt"], cwd=root, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit or None, "nodeopt_modified": bool(dirty)}


def _loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.optimizers", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (about a minute)")
    parser.add_argument("--tasks", default="digits,cnf2d,timeseries", help="comma-separated subset of "
                        + ",".join(TASK_CLASSES))
    parser.add_argument("--parts", default="sweep,overhead,stability", help="comma-separated subset of "
                        "sweep,overhead,stability")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; --quick: 0)")
    parser.add_argument("--only", default=None, help="comma-separated optimiser@lr keys to run in the sweep, "
                        "e.g. snopt@0.2,adam@0.01 (default: the whole lr grids)")
    parser.add_argument("--out", default=None, help="JSON output (default benchmarks/out/optimizers.json)")
    parser.add_argument("--figures", default=None, help="directory for PNG plots (default benchmarks/figures; "
                        "none with --quick unless given)")
    args = parser.parse_args(argv)
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [t for t in names if t not in TASK_CLASSES] + [p for p in parts if p not in ("sweep", "overhead", "stability")]
    if bad:
        parser.error(f"unknown task(s)/part(s) {bad}")
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    only = {k.strip() for k in args.only.split(",") if k.strip()} if args.only else None

    torch.set_num_threads(1)
    out_path = Path(args.out or ("benchmarks/out/optimizers-quick.json" if args.quick
                                 else "benchmarks/out/optimizers.json"))
    fig_dir = Path(args.figures) if args.figures else (None if args.quick else Path("benchmarks/figures"))
    env = environment()
    print(f"nodeopt {env['nodeopt']}, torch {env['torch']}, {env['cpu']}, threads={env['threads']}, "
          f"load average {env['loadavg_start']}; seeds {seeds}; SNOpt eps={EPS} alpha={ALPHA} "
          f"update_freq={UPDATE_FREQ} full_precond={FULL_PRECOND} max_step={MAX_STEP} lr=<the base lr>; "
          f"SGD momentum {MOMENTUM} (under SNOpt {SNOPT_MOMENTUM})")
    start = time.perf_counter()
    need = set(names) | ({"digits"} if ("overhead" in parts or "stability" in parts) else set())
    tasks = {n: TASK_CLASSES[n](args.quick) for n in TASK_CLASSES if n in need}
    cache = RunCache(tasks)
    sweeps, overheads, stab = {}, {}, None
    if "sweep" in parts:
        for n in names:
            sweeps[n] = sweep(cache, tasks[n], seeds, only)
            sweeps[n]["task"]["seeds"] = seeds
    if "stability" in parts:
        stab = stability(cache, args.quick, seeds)
    if "overhead" in parts:
        print("\n== per-iteration overhead: digits, batch 64 ==")
        for grad in ("symplectic", "adjoint"):
            overheads[grad] = overhead(tasks["digits"], grad, args.quick)
    goal_list = goals(sweeps, overheads, cache)
    env["loadavg_end"] = _loadavg()
    env["elapsed_s"] = time.perf_counter() - start
    written = figures(sweeps, stab, cache, tasks, fig_dir) if fig_dir is not None else []
    md = markdown(env, sweeps, overheads, stab, goal_list)
    print("\n" + md)
    print(f"total {env['elapsed_s'] / 60:.1f} min")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    result = dict(env=env, settings=dict(eps=EPS, alpha=ALPHA, update_freq=UPDATE_FREQ, full_precond=FULL_PRECOND,
                                         max_step=MAX_STEP, momentum=MOMENTUM, snopt_momentum=SNOPT_MOMENTUM,
                                         diverge_factor=DIVERGE_FACTOR, tasks=TASKS, overhead=OVERHEAD,
                                         stability=STABILITY),
                  sweeps=sweeps, overhead=overheads, stability=stab, goals=goal_list, figures=written,
                  runs=list(cache.runs.values()))
    out_path.write_text(json.dumps(_jsonable(result), indent=1))
    out_path.with_suffix(".md").write_text(md + "\n")
    print(f"wrote {out_path} and {out_path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
