"""Optimiser benchmarks: SNOpt (+ SGD with momentum) against SGD with momentum and Adam.

Run from the repository root::

    python -m benchmarks.optimizers            # full run (30-45 minutes on 2 CPU cores)
    python -m benchmarks.optimizers --quick    # smoke run (under a minute)

Options: ``--tasks digits,cnf2d,timeseries`` (default: all three), ``--parts
sweep,overhead,stability`` (default: all), ``--seeds 0,1,2``, ``--only snopt@0.2,adam@0.01``
(only these optimiser@lr keys of the sweep), ``--out PATH`` (JSON, default
``benchmarks/out/optimizers.json``, ``-quick.json`` with ``--quick``; a Markdown summary is
written next to it), ``--figures DIR`` (PNG plots; default ``benchmarks/figures``, none with
``--quick``).

Everything trained is nodeopt's own: the tasks, models and data come from ``nodeopt.tasks``
(``make_task``, ``build_model``) and ``nodeopt.data``, and every run is one
:class:`nodeopt.tasks.Trainer` whose ``on_iteration`` callback records the metrics row and
SNOpt's ``last_stats``. One process, ``torch.set_num_threads(1)``, float32. A run starts with
``torch.manual_seed(seed)`` (the weights) and the Trainer's ``seed=seed`` (its batches), so
for a seed every optimiser starts from the same weights and sees the same batches.

Optimisers (lr grids in ``TASKS``): ``snopt`` = ``SNOpt(model, eps=0.05, update_freq=10,
alpha=0.75, full_precond=True, max_step=50.0, lr=lr)`` around ``SGD(lr, momentum=0.5)``
(every Linear/Conv2d layer preconditioned; with ``lr`` given the bound caps the step actually
taken, ``lr² Σ⟨∇_nat, ∇⟩ <= 50 · 0.02²``, K-FAC's KL clipping; settings from pilot runs on
digits, seeds 0-2, with the benchmark's earlier models); ``sgd`` = ``SGD(lr, momentum=0.9)``;
``adam`` = ``Adam(lr)``.

Tasks (dopri5, ``gradient="symplectic"``, ``max_num_steps=300`` so that a blown-up field
cannot stall the benchmark):

* ``digits``: ``image/digits`` (scikit-learn's 8x8 digits, 1437/360 stratified split), the
  library's ConvODENet at width 32 (``nodeopt train``'s digits model), ``rtol = atol = 1e-3``.
  Batch 64, 100 iterations, test accuracy after every iteration, target 0.90.
* ``cnf2d``: ``density/moons`` (FFJORD's two moons, 4096 train / 1024 test points), the
  library's FFJORD CNF with hidden sizes (64, 64), tanh, exact divergence, ``rtol = atol =
  1e-4``. Batch 256, 100 iterations, test NLL every 2 iterations, target 2.90 nats (the data
  are not standardised: a standard normal scores 3.91).
* ``timeseries``: ``timeseries/japanese-vowels`` (UEA, 9 speakers, 448 train / 96 test series
  of up to 29 steps), the library's ODE-RNN (hidden 32, field MLP 33 -> 64 -> 32),
  ``rtol = atol = 1e-3``, SNOpt with ``snopt_step_size=1`` (unit gaps between observations, as
  ``nodeopt train``). Batch 64, 150 iterations, test accuracy every iteration, target 0.90.

Before this benchmark moved onto the library it had models and data of its own (a conv ODE
with a 2x2 average pool, standardised scikit-learn moons, generated sinusoids) and its own
batch generator; RESULTS.md's optimizer tables up to that change were measured on those.

Per run and iteration: the loss, the training wall-clock (the Trainer's ``train_seconds``)
and CPU time (``process_time`` between iterations less the evaluations), the forward NFE, and
from SNOpt's ``last_stats`` whether it refreshed, the Fisher size ``Σ⟨nat, grad⟩`` and the
``max_step`` scale applied. The test metric is evaluated at the task's interval (10x less
often once the target is reached), outside the clocks. Time to target = the training clock at
the first evaluation that meets it. A run has *diverged* when the Trainer stops it as diverged
(``diverge_factor=10``: loss NaN or above 10x its first loss + 1) or the solver fails.

Parts: ``sweep``: task x optimiser x lr x seed; best lr = most seeds reaching the target, then
the smallest median time. ``overhead``: per-iteration time on digits of SGD and of SNOpt's
refresh and non-refresh iterations (symplectic and adjoint): one model after 30 SGD iterations
at lr 0.05, one fixed batch, ``lr = 0`` so that the NFE stay fixed, the three kinds in rotated
order for 30 rounds, medians and the median of per-round ratios to SGD; then SNOpt's own
statistics of refresh iterations (factor gathering, eigenbases). ``stability``: digits, lr
0.02, SGD momentum 0.9 under SNOpt too, ``max_step=None`` (the original) against the bound, and
other bounds at lr 0.02 and 0.1 (one seed); runs identical to the sweep's are shared. At the
end the issue's goals are checked.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from nodeopt import data
from nodeopt.optim import SNOpt
from nodeopt.tasks import Budget, RunDir, Task, Trainer, make_optimizers, make_task

from .common import (diffs, environment, interleaved, jsonable, loadavg, median, quartiles, ratios, running_mean,
                     timed_wall_and_cpu)

EPS, ALPHA, UPDATE_FREQ = 0.05, 0.75, 10
FULL_PRECOND = True            # precondition every Linear/Conv2d layer, not only those inside the ODE
MAX_STEP = 50.0                # SNOpt's step bound; given the lr it caps lr^2 <nat, grad> at 50 * 0.02^2 = 0.02
SNOPT_MOMENTUM = 0.5           # momentum of the SGD that SNOpt wraps
MOMENTUM = 0.9                 # momentum of plain SGD
DIVERGE_FACTOR = 10.0          # the Trainer's diverge_factor (its default, 1e3, suits long runs)
DEFAULT = "default"            # max_step = MAX_STEP
OPTIMISERS = ("snopt", "sgd", "adam")
SOLVER = dict(method="dopri5", options={"max_num_steps": 300})

# Per task: the library's task, dataset (and its options), model options, tolerance and SNOpt options;
# batch, target, iterations, evaluation interval and lr grids (full and --quick).
TASKS = {
    "digits": dict(kind="image", dataset="digits", data={}, model=dict(width=32), tol=1e-3, snopt={},
                   batch=64, target=0.90, iterations=100, eval_every=1,
                   lrs={"snopt": [0.02, 0.05, 0.1, 0.2], "sgd": [0.01, 0.02, 0.05, 0.1, 0.2],
                        "adam": [1e-3, 3e-3, 1e-2, 3e-2]},
                   quick=dict(iterations=12, eval_every=4, lrs={"snopt": [0.05], "sgd": [0.05], "adam": [3e-3]})),
    "cnf2d": dict(kind="density", dataset="moons", data=dict(n_train=4096, n_test=1024),
                  model=dict(hidden=(64, 64), activation="tanh", divergence="exact"), tol=1e-4, snopt={},
                  batch=256, target=2.90, iterations=100, eval_every=2,
                  lrs={"snopt": [0.05, 0.1, 0.2], "sgd": [0.05, 0.1], "adam": [3e-3, 1e-2]},
                  quick=dict(iterations=6, eval_every=3, lrs={"snopt": [0.05], "sgd": [0.05], "adam": [1e-2]})),
    "timeseries": dict(kind="timeseries", dataset="japanese-vowels", data={},
                       model=dict(hidden=32, field_width=64, field_layers=2), tol=1e-3,
                       snopt=dict(snopt_step_size=1.0), batch=64, target=0.90, iterations=150, eval_every=1,
                       lrs={"snopt": [0.02, 0.05, 0.1, 0.2, 0.5], "sgd": [0.02, 0.05, 0.1, 0.2, 0.5],
                            "adam": [1e-3, 3e-3, 1e-2]},
                       quick=dict(iterations=10, eval_every=5, lrs={"snopt": [0.05], "sgd": [0.05], "adam": [3e-3]})),
}
OVERHEAD = dict(rounds=30, warmup_iterations=30, warmup_lr=0.05, breakdown=5,
                quick=dict(rounds=3, warmup_iterations=2, breakdown=1))
STABILITY = dict(lr=0.02, momentum=0.9, iterations=100, max_steps=[None, DEFAULT],
                 extra=[(0.02, [1.0]), (0.1, [None, 1.0])], quick=dict(iterations=10, extra=[]))


@dataclass
class Setup:
    """A benchmark task: a ``nodeopt.tasks`` task with the benchmark's model options, budget and target."""

    name: str
    task: Task
    cfg: dict
    batch: int
    target: float
    iterations: int
    eval_every: int
    lrs: dict
    snopt: dict

    @classmethod
    def load(cls, name: str, quick: bool) -> "Setup":
        cfg = {**TASKS[name], **TASKS[name]["quick"]} if quick else TASKS[name]
        task = make_task(cfg["kind"], data.load(cfg["kind"], cfg["dataset"], **cfg["data"]), "cpu")
        return cls(name, task, cfg, **{k: cfg[k] for k in ("batch", "target", "iterations", "eval_every", "lrs",
                                                             "snopt")})

    def reached(self, value: float) -> bool:
        higher = self.task.higher_is_better
        return math.isfinite(value) and (value >= self.target if higher else value <= self.target)

    def make_model(self, gradient: str = "symplectic") -> nn.Module:
        tol = self.cfg["tol"]
        return self.task.build_model(**self.cfg["model"], rtol=tol, atol=tol, gradient=gradient, **SOLVER)

    def describe(self) -> dict:
        keep = ("dataset", "model", "tol", "snopt", "batch", "target", "iterations", "eval_every", "lrs")
        return dict({k: self.cfg[k] for k in keep}, metric=self.task.metric, n_train=self.task.n_train,
                    higher_is_better=self.task.higher_is_better)


# ---- one training run ----------------------------------------------------------------

def make_optimisers(model: nn.Module, opt: str, lr: float, *, max_step=DEFAULT, update_freq: int = UPDATE_FREQ,
                    momentum: Optional[float] = None, snopt: Optional[dict] = None):
    """``(precond, optimizer)``: the library's SGD or Adam and, for ``snopt``, SNOpt with the benchmark's settings."""
    precond = None
    if opt == "snopt":
        precond = SNOpt(model, eps=EPS, update_freq=update_freq, alpha=ALPHA, full_precond=FULL_PRECOND,
                        max_step=MAX_STEP if max_step == DEFAULT else max_step, lr=lr, **(snopt or {}))
    (optimizer,), _ = make_optimizers("adam" if opt == "adam" else "sgd", model, lr=lr,
                                      momentum=default_momentum(opt, momentum) or 0.0)
    return precond, optimizer


def default_momentum(opt: str, momentum: Optional[float]) -> Optional[float]:
    """The SGD momentum of a run: as given, else SNOPT_MOMENTUM under SNOpt and MOMENTUM for SGD (None: Adam)."""
    if opt == "adam":
        return None
    return momentum if momentum is not None else (SNOPT_MOMENTUM if opt == "snopt" else MOMENTUM)


def safe_evaluate(task: Task, model: nn.Module) -> float:
    try:
        return task.evaluate(model)
    except RuntimeError:  # the solver gave up on a blown-up field
        return float("nan")


def run(task: Task, model: nn.Module, optimizer, precond: Optional[SNOpt], *, batch: int, seed: int,
        iterations: int, eval_every: int, reached=None) -> dict:
    """Train with :class:`nodeopt.tasks.Trainer`, recording every iteration.

    Returns lists per iteration: ``loss``, ``wall`` and ``cpu`` (cumulative training seconds),
    ``nfe`` and ``nfe_backward``, and under SNOpt ``refresh``, ``steps`` (Fisher size, applied
    scale) and ``damping`` (``γ``); ``evals`` ``(iteration, wall, cpu, metric)`` from iteration 0,
    every ``eval_every`` iterations (10× less often once ``reached(metric)``) and at the end;
    ``diverged`` and its ``reason``.
    """
    rec = dict(loss=[], wall=[], cpu=[], nfe=[], nfe_backward=[], refresh=[], steps=[], damping=[], momentum_scale=[],
               evals=[(0, 0.0, 0.0, safe_evaluate(task, model))], diverged=False, reason=None)
    state = dict(cpu=0.0, reached=reached is not None and reached(rec["evals"][0][3]))

    def on_iteration(row: dict) -> None:
        cpu = time.process_time() - state["mark"]
        if "metric" in row:  # the Trainer evaluated (at the end): take that work's CPU time out again
            cpu -= timed_wall_and_cpu(lambda: safe_evaluate(task, model))[1]
        state["cpu"] += cpu
        for key, value in (("loss", row["loss"]), ("wall", row["train_seconds"]), ("cpu", state["cpu"]),
                           ("nfe", row["nfe_forward"]), ("nfe_backward", row["nfe_backward"])):
            rec[key].append(value)
        if precond is not None:
            stats = precond.last_stats
            rec["refresh"].append(stats.refresh)
            rec["steps"].append((stats.fisher_size, stats.step_scale))
            rec["damping"].append(precond.damping_factor)
            rec["momentum_scale"].append(stats.momentum_scale)
        it, metric = row["iteration"], row.get("metric")
        if metric is None and it % (eval_every * (10 if state["reached"] else 1)) == 0 and math.isfinite(row["loss"]):
            metric = safe_evaluate(task, model)
        if metric is not None:
            rec["evals"].append((it, row["train_seconds"], state["cpu"], metric))
            state["reached"] = state["reached"] or (reached is not None and reached(metric))
        state["mark"] = time.process_time()

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(task, model, optimizer, RunDir(tmp), batch_size=batch, seed=seed, precond=precond,
                          eval_every=iterations, checkpoint_every=iterations, on_iteration=on_iteration,
                          diverge_factor=DIVERGE_FACTOR)
        state["mark"] = time.process_time()
        try:
            stopped = trainer.fit(Budget(iterations)).stopped
        except RuntimeError as exc:  # the solver gave up (non-finite field, too many steps)
            stopped = f"iteration {len(rec['loss'])}: solver error: {str(exc).splitlines()[0][:160]}"
    if stopped == "diverged":  # the Trainer does not evaluate a diverged iteration; neither do we
        if rec["evals"][-1][0] == len(rec["loss"]) > 0:
            rec["evals"].pop()
        stopped = f"iteration {len(rec['loss']) - 1}: loss {rec['loss'][-1]:.4g} (first loss {rec['loss'][0]:.4g})"
    if stopped.startswith("SIG"):  # the Trainer stopped on SIGINT/SIGTERM: stop the benchmark too
        raise KeyboardInterrupt(f"training stopped by {stopped}")
    if stopped != "budget":
        rec["diverged"], rec["reason"] = True, stopped
    return rec


def train(setup: Setup, opt: str, lr: float, seed: int, iterations: Optional[int] = None, *, max_step=DEFAULT,
          update_freq: int = UPDATE_FREQ, momentum: Optional[float] = None, log=print) -> dict:
    """One run of the sweep or stability part, with its summary numbers (see :func:`run`)."""
    iterations = setup.iterations if iterations is None else iterations
    torch.manual_seed(seed)
    model = setup.make_model()
    precond, optimizer = make_optimisers(model, opt, lr, max_step=max_step, update_freq=update_freq,
                                         momentum=momentum, snopt=setup.snopt)
    r = dict(task=setup.name, opt=opt, lr=lr, seed=seed, iterations=iterations,
             max_step=(None if opt != "snopt" else (MAX_STEP if max_step == DEFAULT else max_step)),
             update_freq=update_freq if opt == "snopt" else None, momentum=default_momentum(opt, momentum),
             **run(setup.task, model, optimizer, precond, batch=setup.batch, seed=seed, iterations=iterations,
                   eval_every=setup.eval_every, reached=setup.reached))
    hit = next((e for e in r["evals"] if setup.reached(e[3])), None)
    finite = [e[3] for e in r["evals"] if math.isfinite(e[3])]
    r.update(to_target=None if hit is None else dict(iteration=hit[0], wall=hit[1], cpu=hit[2]),
             final_metric=r["evals"][-1][3], median_iteration_s=median(diffs(r["wall"])), median_nfe=median(r["nfe"]),
             best_metric=((max if setup.task.higher_is_better else min)(finite)) if finite else float("nan"))
    if r["steps"]:
        r.update(fisher_size_median=median(s for s, _ in r["steps"]), scale_median=median(c for _, c in r["steps"]),
                 bound_active_fraction=sum(c < 1.0 for _, c in r["steps"]) / len(r["steps"]))
    loss = r["loss"] or [float("nan")]
    log(f"  {setup.name:10s} {opt:5s} lr={lr:<6g} seed={seed} "
        + (f"max_step={r['max_step']!s:8s} " if opt == "snopt" else "")
        + f"iters={len(r['loss']):3d} loss {loss[0]:.3f}->{loss[-1]:.3f} {setup.task.metric} {r['final_metric']:.3f} "
        + (f"target @ it {hit[0]} / {hit[1]:.1f} s" if hit else "target not reached")
        + f", {r['wall'][-1] if r['wall'] else 0.0:.1f} s, median NFE {r['median_nfe']}"
        + (f", DIVERGED ({r['reason']})" if r["diverged"] else "")
        + (f", Fisher size med {r['fisher_size_median']:.3g}, bound active {r['bound_active_fraction']:.0%}"
           if r["steps"] else ""))
    return r


class RunCache:
    """Training runs keyed by their settings, so that a part can reuse another part's identical run."""

    def __init__(self, setups: dict[str, Setup], log=print):
        self.setups, self.runs, self.log = setups, {}, log

    def key(self, task: str, opt: str, lr: float, seed: int, iterations: Optional[int] = None, *,
            max_step=DEFAULT, update_freq: int = UPDATE_FREQ, momentum: Optional[float] = None) -> tuple:
        iterations = self.setups[task].iterations if iterations is None else iterations
        return (task, opt, lr, seed, iterations, max_step if opt == "snopt" else None,
                update_freq if opt == "snopt" else None, default_momentum(opt, momentum))

    def get(self, task: str, opt: str, lr: float, seed: int, iterations: Optional[int] = None, **kwargs) -> dict:
        key = self.key(task, opt, lr, seed, iterations, **kwargs)
        if key not in self.runs:
            self.runs[key] = train(self.setups[task], opt, lr, seed, key[4], log=self.log, **kwargs)
        return self.runs[key]


# ---- part 1: the sweep -----------------------------------------------------------------

def sweep(cache: RunCache, setup: Setup, seeds: list[int], only: Optional[set] = None, log=print) -> dict:
    log(f"\n== sweep: {setup.name} ({setup.task.metric}, target {setup.target}; {setup.iterations} iterations, "
        f"batch {setup.batch}) ==")
    configs = {f"{opt}@{lr:g}": summarise(opt, lr, [cache.get(setup.name, opt, lr, s) for s in seeds])
               for opt in OPTIMISERS for lr in setup.lrs[opt] if only is None or f"{opt}@{lr:g}" in only}
    sign = -1 if setup.task.higher_is_better else 1
    best = {opt: min((c for c in configs.values() if c["opt"] == opt),
                     key=lambda c: (-c["n_reached"], _nan_last(c["median_wall_to_target"]),
                                    _nan_last(sign * c["median_final_metric"])))["key"]
            for opt in OPTIMISERS if any(c["opt"] == opt for c in configs.values())}
    return dict(task=dict(setup.describe(), seeds=seeds), configs=configs, best=best)


def _nan_last(x):
    return math.inf if x is None or not math.isfinite(x) else x


def summarise(opt: str, lr: float, runs: list[dict]) -> dict:
    hits = [r["to_target"] for r in runs]
    walls = [h["wall"] if h else None for h in hits]
    return dict(key=f"{opt}@{lr:g}", opt=opt, lr=lr, seeds=[r["seed"] for r in runs],
                n_reached=sum(h is not None for h in hits), n_diverged=sum(r["diverged"] for r in runs),
                wall_to_target=walls, cpu_to_target=[h["cpu"] if h else None for h in hits],
                iters_to_target=[h["iteration"] if h else None for h in hits],
                median_wall_to_target=median(walls) if None not in walls else float("nan"),
                diverged=[r["reason"] for r in runs],
                median_final_metric=median(r["final_metric"] for r in runs),
                median_best_metric=median(r["best_metric"] for r in runs),
                **{k: median(r.get(k) for r in runs)
                   for k in ("median_iteration_s", "median_nfe", "fisher_size_median", "bound_active_fraction")})


# ---- part 2: per-iteration overhead --------------------------------------------------------

def overhead(setup: Setup, gradient: str, quick: bool, log=print) -> dict:
    cfg = {**OVERHEAD, **OVERHEAD["quick"]} if quick else OVERHEAD
    task = setup.task
    torch.manual_seed(0)
    model = setup.make_model(gradient)
    _, warm = make_optimisers(model, "sgd", cfg["warmup_lr"])  # a warm start: the solver's steps typical of training
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(task, model, warm, RunDir(tmp), batch_size=setup.batch, eval_every=10 ** 9,
                          checkpoint_every=10 ** 9)
        trainer.fit(Budget(cfg["warmup_iterations"]))
    idx = trainer.batch(cfg["warmup_iterations"])[1]
    precond = SNOpt(model, eps=EPS, update_freq=UPDATE_FREQ, alpha=ALPHA, full_precond=FULL_PRECOND, max_step=MAX_STEP,
                    lr=0.02)  # lr: only the bound's scale (the base optimiser's lr is 0 here)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=MOMENTUM)  # lr 0: weights (and NFE) fixed

    def iteration(refresh: Optional[bool]):  # None: SGD alone
        if refresh is not None:
            precond.iteration = 0 if refresh else 3  # 0 refreshes; 3 does not (not a power of two, < update_freq)
            precond.train_itr_setup()
        optimizer.zero_grad(set_to_none=True)
        task.loss(model, idx).backward()
        if refresh is not None:
            precond.step()
        optimizer.step()

    kinds = {"sgd": lambda: iteration(None), "snopt_nonrefresh": lambda: iteration(False),
             "snopt_refresh": lambda: iteration(True)}
    samples = interleaved(kinds, cfg["rounds"], warmup=2, order="rotate", measure=timed_wall_and_cpu)
    wall = {k: [w for w, _ in v] for k, v in samples.items()}
    cpu = {k: [c for _, c in v] for k, v in samples.items()}
    stats = model.ode.stats
    out = dict(gradient=gradient, rounds=cfg["rounds"], nfe=stats.nfe, n_steps=stats.n_steps,
               nvjp_backward=stats.nvjp_backward, nfe_backward=stats.nfe_backward, wall=wall, cpu=cpu,
               median_ms={k: 1e3 * median(wall[k]) for k in kinds}, median_cpu_ms={k: 1e3 * median(cpu[k]) for k in kinds},
               ratio={k: median(ratios(wall, k, "sgd")) for k in kinds},
               ratio_q={k: quartiles(ratios(wall, k, "sgd")) for k in kinds},
               ratio_cpu={k: median(ratios(cpu, k, "sgd")) for k in kinds})
    breakdown = []  # SNOpt's own statistics of refresh iterations
    for _ in range(cfg["breakdown"]):
        seconds = timed_wall_and_cpu(lambda: iteration(True))[0]
        breakdown.append((seconds, precond.last_stats.factor_seconds, precond.last_stats.refresh_seconds))
    out["breakdown"] = b = dict(total_ms=1e3 * median(t for t, _, _ in breakdown),
                                factor_ms=1e3 * median(f for _, f, _ in breakdown),
                                refresh_ms=1e3 * median(r for _, _, r in breakdown),
                                samples=precond.last_stats.factor_samples, repeats=cfg["breakdown"])
    ms, ratio = out["median_ms"], out["ratio"]
    log(f"  {gradient:10s} NFE {stats.nfe} fwd, {stats.nvjp_backward} VJPs bwd | SGD {ms['sgd']:.1f} ms, SNOpt "
        f"non-refresh {ms['snopt_nonrefresh']:.1f} ms (x{ratio['snopt_nonrefresh']:.3f}, cpu "
        f"x{out['ratio_cpu']['snopt_nonrefresh']:.3f}), refresh {ms['snopt_refresh']:.1f} ms "
        f"(x{ratio['snopt_refresh']:.2f}, cpu x{out['ratio_cpu']['snopt_refresh']:.2f}); in a refresh: "
        f"factors {b['factor_ms']:.1f} ms over {b['samples']} samples, eigenbases {b['refresh_ms']:.1f} ms")
    return out


# ---- part 3: stability ----------------------------------------------------------------------

def stability(cache: RunCache, quick: bool, seeds: list[int], log=print) -> dict:
    cfg = {**STABILITY, **STABILITY["quick"]} if quick else STABILITY
    lr, mom, its = cfg["lr"], cfg["momentum"], cfg["iterations"]
    log(f"\n== stability: digits, SGD lr {lr} momentum {mom}, eps {EPS}, update_freq {UPDATE_FREQ}, {its} iterations ==")
    out = dict(lr=lr, momentum=mom, iterations=its, eps=EPS, update_freq=UPDATE_FREQ, main={}, extra={})
    for ms in cfg["max_steps"]:
        out["main"][str(ms)] = _stab_summary([cache.get("digits", "snopt", lr, s, its, max_step=ms, momentum=mom)
                                              for s in seeds])
    out["main"]["sgd"] = _stab_summary([cache.get("digits", "sgd", lr, s, its) for s in seeds])
    for lr2, values in cfg["extra"]:
        for ms in values:
            runs = [cache.get("digits", "snopt", lr2, s, its, max_step=ms, momentum=mom) for s in seeds[:1]]
            out["extra"][f"{lr2:g}/{ms}"] = dict(lr=lr2, max_step=ms, **_stab_summary(runs))
    return out


def _stab_summary(runs):
    pick = dict(seeds="seed", diverged="diverged", reasons="reason", final_metric="final_metric",
                to_target="to_target", median_nfe="median_nfe", fisher_size_median="fisher_size_median",
                bound_active_fraction="bound_active_fraction")
    return dict({k: [r.get(v) for r in runs] for k, v in pick.items()},
                final_loss=[r["loss"][-1] if r["loss"] else None for r in runs],
                max_loss=[max(r["loss"]) if r["loss"] else None for r in runs],
                wall=[r["wall"][-1] if r["wall"] else None for r in runs])


# ---- goals --------------------------------------------------------------------------------------

def goals(sweeps: dict, overheads: dict, cache: RunCache) -> list[dict]:
    out = []
    if "digits" in sweeps and {"snopt", "adam"} <= set(sweeps["digits"]["best"]):
        s = sweeps["digits"]
        sn, ad = s["configs"][s["best"]["snopt"]], s["configs"][s["best"]["adam"]]
        per_seed, ok = [], True
        for seed, a, b in zip(sn["seeds"], sn["wall_to_target"], ad["wall_to_target"]):
            ok &= a is not None and (b is None or a <= 0.6 * b)
            per_seed.append(f"seed {seed}: " + ("SNOpt did not reach the target" if a is None else
                                                f"SNOpt {a:.1f} s, Adam did not reach the target" if b is None else
                                                f"{a:.1f} s vs {b:.1f} s = {a / b:.2f}x"))
        out.append(dict(goal=f"SNOpt reaches the digits target in <= 0.6x Adam's wall-clock (best lr: "
                             f"{sn['key']} vs {ad['key']}) on every seed", met=ok, detail="; ".join(per_seed)))
    for grad, o in overheads.items():
        for kind, limit, digits in (("snopt_nonrefresh", 1.05, 3), ("snopt_refresh", 2.0, 2)):
            x, (q1, q3) = o["ratio"][kind], o["ratio_q"][kind]
            out.append(dict(goal=f"[{grad}] {kind[6:].replace('nonrefresh', 'non-refresh')} iteration <= {limit:g}x SGD",
                            met=x <= limit, detail=f"median per-round ratio {x:.{digits}f} (quartiles {q1:.{digits}f}"
                                                   f"-{q3:.{digits}f}; CPU time {o['ratio_cpu'][kind]:.{digits}f})"))
    if sweeps:
        bad, checked = [], 0
        for name, s in sweeps.items():
            for seed in s["task"]["seeds"]:
                for lr in s["task"]["lrs"]["snopt"]:
                    sn, sg = (cache.runs.get(cache.key(name, o, lr, seed)) for o in ("snopt", "sgd"))
                    if sn is not None and sg is not None:
                        checked += 1
                        if sn["diverged"] and not sg["diverged"]:
                            bad.append(f"{name} lr {lr:g} seed {seed} ({sn['reason']})")
        out.append(dict(goal="across the lr sweeps and seeds, no SNOpt run diverges where SGD at the same lr does not",
                        met=not bad, detail=f"{len(bad)} of {checked} (task, lr, seed) pairs: " + "; ".join(bad)))
    return out


# ---- figures and report ------------------------------------------------------------------------

COLOURS = {"snopt": "C0", "sgd": "C1", "adam": "C2"}


def figures(sweeps: dict, stab: Optional[dict], cache: RunCache, setups: dict, directory: Path,
            log=print) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(directory / name)
        plt.close(fig)
        written.append(str(directory / name))

    for name, s in sweeps.items():
        setup = setups[name]
        fig, (ax_l, ax_m) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=80)
        for opt in s["best"]:
            c = s["configs"][s["best"][opt]]
            for i, seed in enumerate(c["seeds"]):
                r = cache.runs[cache.key(name, opt, c["lr"], seed)]
                style = dict(color=COLOURS[opt], lw=1, alpha=0.8, label=f"{opt} lr={c['lr']:g}" if i == 0 else None)
                ax_l.plot(r["wall"], running_mean(r["loss"], 5), **style)
                ax_m.plot([e[1] for e in r["evals"]], [e[3] for e in r["evals"]], **style)
        ax_m.axhline(setup.target, color="k", lw=0.8, ls="--", label=f"target {setup.target:g}")
        ax_l.set(xlabel="training wall-clock (s)", ylabel="training loss (5-iteration mean)", yscale="log")
        ax_m.set(xlabel="training wall-clock (s)", ylabel=setup.task.metric,
                 ylim=(0.0, 1.0) if setup.task.higher_is_better else (setup.target - 0.8, setup.target + 1.2))
        ax_m.legend(fontsize=7)
        fig.suptitle(f"{name}: best lr per optimiser, {len(s['task']['seeds'])} seeds (one line each)", fontsize=9)
        save(fig, f"optimizers_{name}.png")
    if stab is not None and stab.get("main"):
        fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=80)
        styles = {"None": ("C3", "max_step=None"), DEFAULT: ("C0", f"max_step={MAX_STEP:g}"), "sgd": ("C1", "SGD")}
        for key, summ in stab["main"].items():
            colour, label = styles.get(key, ("C4", key))
            for i, seed in enumerate(summ["seeds"]):
                k = cache.key("digits", "sgd", stab["lr"], seed, stab["iterations"]) if key == "sgd" else \
                    cache.key("digits", "snopt", stab["lr"], seed, stab["iterations"],
                              max_step=None if key == "None" else DEFAULT, momentum=stab["momentum"])
                ax.plot(cache.runs[k]["loss"], color=colour, lw=1, alpha=0.8, label=label if i == 0 else None)
        ax.set(yscale="log", xlabel="iteration", ylabel="training loss")
        ax.set_title(f"digits, lr {stab['lr']}, eps {EPS}: SNOpt step bound", fontsize=9)
        ax.legend(fontsize=7)
        save(fig, "optimizers_stability.png")
    for p in written:
        log(f"  wrote {p} ({os.path.getsize(p) / 1024:.0f} KB)")
    return written


def markdown(env: dict, sweeps: dict, overheads: dict, stab: Optional[dict], goal_list: list) -> str:
    lines = [f"Command: `{env['command']}`; {env['date']}; commit {env.get('commit')} (nodeopt/ modified: "
             f"{env.get('nodeopt_modified')}); {env['cpu']}, {env['cpu_count']} cores, "
             f"torch {env['torch']} ({env['threads']} thread), load average at start {env['loadavg']}, "
             f"at end {env.get('loadavg_end')}.", ""]
    for name, s in sweeps.items():
        t = s["task"]
        lines += [f"**{name}** ({t['metric']}, target {t['target']:g}, {t['iterations']} iterations, batch "
                  f"{t['batch']}, seeds {t['seeds']}): time to target per seed (training wall-clock, s; "
                  f"'-' = not reached).", "",
                  "| optimiser | lr | reached | diverged | wall to target (s) | CPU to target (s) | iterations to "
                  f"target | median final {t['metric']} | median s/iter | median NFE |", "|" + "---|" * 10]
        for key, c in s["configs"].items():
            best = " **(best)**" if s["best"][c["opt"]] == key else ""
            walls, cpus, its = (", ".join("-" if x is None else f"{x:{f}}" for x in c[k])
                                for k, f in (("wall_to_target", ".1f"), ("cpu_to_target", ".1f"),
                                             ("iters_to_target", "d")))
            lines.append(f"| {c['opt']}{best} | {c['lr']:g} | {c['n_reached']}/{len(c['seeds'])} | "
                         f"{c['n_diverged']} | {walls} | {cpus} | {its} | {c['median_final_metric']:.3f} | "
                         f"{c['median_iteration_s']:.3f} | {c['median_nfe']:.0f} |")
        lines.append("")
    if overheads:
        lines += ["**Per-iteration cost** (digits model, batch 64, fixed weights; median over rounds, ratio = median "
                  "of per-round ratios to SGD, CPU-time ratio in brackets):", "",
                  "| gradient | NFE fwd / VJPs bwd | SGD (ms) | non-refresh (ms) | ratio | refresh (ms) | ratio | "
                  "factor gathering in a refresh (ms) | eigenbases (ms) |", "|" + "---|" * 9]
        for g, o in overheads.items():
            b, ms, ratio, cpu = o["breakdown"], o["median_ms"], o["ratio"], o["ratio_cpu"]
            lines.append(f"| {g} | {o['nfe']} / {o['nvjp_backward']} | {ms['sgd']:.1f} | "
                         f"{ms['snopt_nonrefresh']:.1f} | {ratio['snopt_nonrefresh']:.3f} "
                         f"({cpu['snopt_nonrefresh']:.3f}) | {ms['snopt_refresh']:.1f} | "
                         f"{ratio['snopt_refresh']:.2f} ({cpu['snopt_refresh']:.2f}) | "
                         f"{b['factor_ms']:.1f} ({b['samples']} samples) | {b['refresh_ms']:.1f} |")
        lines.append("")
    if stab is not None:
        lines += [f"**Stability** (digits, SGD lr {stab['lr']} with momentum {stab['momentum']} under SNOpt too, "
                  f"eps {stab['eps']}, update_freq {stab['update_freq']}, {stab['iterations']} iterations):", "",
                  "| setting | seeds | diverged | max loss | final loss | final test acc | target reached at (s) | "
                  "median Fisher size | bound active |", "|" + "---|" * 9]
        rows = [("SGD" if k == "sgd" else f"SNOpt max_step={format(MAX_STEP, 'g') if k == DEFAULT else k}", v)
                for k, v in stab["main"].items()]
        rows += [(f"SNOpt lr {v['lr']:g} max_step={v['max_step']}", v) for v in stab["extra"].values()]
        for label, v in rows:
            cells = [", ".join(_fmt(x) for x in v[k]) for k in ("max_loss", "final_loss", "final_metric")]
            cells.append(", ".join("-" if h is None else format(h["wall"], ".1f") for h in v["to_target"]))
            cells.append(", ".join(_fmt(x) for x in v["fisher_size_median"]))
            cells.append(", ".join("-" if x is None else format(x, ".0%") for x in v["bound_active_fraction"]))
            lines.append(f"| {label} | {v['seeds']} | {sum(v['diverged'])} | " + " | ".join(cells) + " |")
        lines.append("")
    if goal_list:
        lines += ["**Goals**:", ""] + [f"- {'MET' if g['met'] else 'NOT MET'}: {g['goal']}. {g['detail']}"
                                         for g in goal_list] + [""]
    return "\n".join(lines)


def _fmt(x):
    return "-" if x is None else f"{x:.3g}" if isinstance(x, float) else str(x)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.optimizers", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (under a minute)")
    parser.add_argument("--tasks", default="digits,cnf2d,timeseries", help=f"comma-separated subset of {','.join(TASKS)}")
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
    bad = [t for t in names if t not in TASKS] + [p for p in parts if p not in ("sweep", "overhead", "stability")]
    if bad:
        parser.error(f"unknown task(s)/part(s) {bad}")
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    only = {k.strip() for k in args.only.split(",") if k.strip()} if args.only else None

    torch.set_num_threads(1)
    out_path = Path(args.out or f"benchmarks/out/optimizers{'-quick' if args.quick else ''}.json")
    fig_dir = Path(args.figures) if args.figures else (None if args.quick else Path("benchmarks/figures"))
    env = environment("optimizers", argv)
    print(f"nodeopt {env['nodeopt']}, torch {env['torch']}, {env['cpu']}, threads={env['threads']}, "
          f"load average {env['loadavg']}; seeds {seeds}; SNOpt eps={EPS} alpha={ALPHA} "
          f"update_freq={UPDATE_FREQ} full_precond={FULL_PRECOND} max_step={MAX_STEP} lr=<the base lr>; "
          f"SGD momentum {MOMENTUM} (under SNOpt {SNOPT_MOMENTUM})")
    start = time.perf_counter()
    need = set(names) | ({"digits"} if ("overhead" in parts or "stability" in parts) else set())
    setups = {n: Setup.load(n, args.quick) for n in TASKS if n in need}
    cache = RunCache(setups)
    sweeps = {n: sweep(cache, setups[n], seeds, only) for n in names} if "sweep" in parts else {}
    stab = stability(cache, args.quick, seeds) if "stability" in parts else None
    overheads = {}
    if "overhead" in parts:
        print("\n== per-iteration overhead: digits, batch 64 ==")
        overheads = {grad: overhead(setups["digits"], grad, args.quick) for grad in ("symplectic", "adjoint")}
    goal_list = goals(sweeps, overheads, cache)
    env.update(loadavg_end=loadavg(), elapsed_s=time.perf_counter() - start)
    written = figures(sweeps, stab, cache, setups, fig_dir) if fig_dir is not None else []
    md = markdown(env, sweeps, overheads, stab, goal_list)
    print(f"\n{md}\ntotal {env['elapsed_s'] / 60:.1f} min")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    settings = dict(eps=EPS, alpha=ALPHA, update_freq=UPDATE_FREQ, full_precond=FULL_PRECOND, max_step=MAX_STEP,
                    momentum=MOMENTUM, snopt_momentum=SNOPT_MOMENTUM, diverge_factor=DIVERGE_FACTOR, tasks=TASKS,
                    overhead=OVERHEAD, stability=STABILITY)
    out_path.write_text(json.dumps(jsonable(dict(env=env, settings=settings, sweeps=sweeps, overhead=overheads,
                                                 stability=stab, goals=goal_list, figures=written,
                                                 runs=list(cache.runs.values()))), indent=1))
    out_path.with_suffix(".md").write_text(md + "\n")
    print(f"wrote {out_path} and {out_path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
