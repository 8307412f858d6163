"""SNOpt on models it was not tuned on: three families of small neural ODEs, against SGD and a best-tuned Adam.

Run from the repository root::

    python -m benchmarks.snopt_stress --workers 2        # the three families, seeds 0-4 (about 95 minutes, 2 processes)
    python -m benchmarks.snopt_stress --tasks image --seeds 0,1,2
    python -m benchmarks.snopt_stress --optimisers snopt,snopt-unguarded,sgd,adam
    python -m benchmarks.snopt_stress --quick            # a smoke run (each family's base, one seed, a few iterations)
    python -m benchmarks.snopt_stress --report           # train nothing: the tables of the runs recorded so far

A family is a base setting of one task and variations of it that each change one setting (a
full grid would be thousands of runs). Every member trains with

* ``snopt``: ``SNOpt(model, eps=0.05, update_freq=F, full_precond=P, lr=lr)`` (every other
  setting at the library's default; ``snopt_step_size=1`` on the time series, as
  ``nodeopt train``) in front of ``SGD(lr, momentum=0.9)``;
* ``sgd``: that SGD alone, to tell a setting that diverges anyway from one SNOpt breaks;
* ``adam``: ``Adam(a)`` for each ``a`` of the family's grid; the best-tuned Adam of a member
  is the ``a`` with the most seeds reaching the target, then the lowest median iterations;
* ``snopt-unguarded`` (only when asked for with ``--optimisers``): SNOpt without its momentum
  guard, ``bound_momentum=False`` (measured on the image family at seeds 0-2 before; RESULTS.md
  keeps that table).

Runs that a setting cannot change are shared: SGD does not see ``update_freq`` or
``full_precond``, Adam sees neither those nor the SGD lr, so a variation of those trains no new
SGD or Adam run. Every run is a :class:`nodeopt.tasks.Trainer` (``diverge_factor=10``:
diverged when the loss is NaN or above 10x its first loss + 1, or the solver fails), trained
in chunks of ``eval_every`` iterations with the test metric after each chunk; SNOpt and SGD
always train their whole budget (a divergence can come late) and are evaluated only at the end
once they reached the target, Adam stops at the target (it only gives iterations to the target
and NFE) and may train ``iterations / goal_ratio`` iterations, so that an Adam that does not
reach the target still decides the goal.

Families (dopri5 with ``max_num_steps=300`` everywhere):

* ``image``: scikit-learn's digits, the small conv ODE classifier on which SNOpt once diverged
  (written as the original SNOpt README shows): a 3x3 convolution stem 1→W with ReLU, an ODE
  over [0, 1] whose field is two concat-time 3x3 convolutions with an activation between
  (``nodeopt.nn.ConvField``), ReLU, global average pooling, ``Linear(W → 10)``; rtol = atol =
  1e-3, batch 64, 100 iterations, test accuracy every 5, target 80 %. Base: ReLU, W = 16,
  P = True, digits standardised with one global mean and std, lr 0.02, F = 100, the symplectic
  adjoint. Variations: softplus / tanh, W = 32 / 64, P = False, per-pixel standardisation,
  lr 0.01 / 0.05 / 0.1, F = 20, the adjoint.
* ``timeseries``: japanese-vowels and the library's ODE-RNN as ``benchmarks.optimizers`` builds
  them (hidden 32, field MLP 33 → W → 32 with tanh, rtol = atol = 1e-3, SNOpt's
  ``snopt_step_size=1``); batch 64, 60 iterations, test accuracy every 2, target 90 %. Base:
  W = 64, P = True, lr 0.02 (the optimizer benchmark's best SNOpt lr), F = 100, the symplectic
  adjoint. Variations: W = 32, lr 0.01 / 0.1, F = 20, P = False, the adjoint (the ODE-RNN's
  field has no activation argument: ``nodeopt.nn.MLPField`` is tanh only).
* ``density``: two moons and the library's FFJORD CNF as ``benchmarks.optimizers`` builds them
  (hidden (W, W), exact divergence, rtol = atol = 1e-4); batch 256, 100 iterations, test NLL
  every 2, target 2.90 nats (lower is better: reached when NLL <= 2.90). Base: tanh, W = 64,
  P = True, lr 0.1, F = 100, the symplectic adjoint. Variations: softplus, lr 0.03, F = 20,
  P = False, the adjoint.

Adam's grids, chosen on each base at seed 10 (not reported), bracket the best: image 1e-3 (did
not reach 80 % in 200 iterations), **3e-3** (180), 1e-2 (not reached), 3e-2 (200, twice the
NFE), of which the sweep runs 3e-3 and 1e-2 (the cost below); time series 1e-3 (56), 3e-3 (40),
1e-2 (30), **3e-2** (16), 1e-1 (diverged); density 3e-3 (not reached in 143), 1e-2 (84),
**3e-2** (42), 1e-1 (66).

Reported per member: the seeds on which SNOpt and SGD diverged, iterations to the target per
seed and on the median seed for SNOpt and the best-tuned Adam, their ratio, and the backward
NFE per iteration (median over the iterations of a run, then over seeds; ``nfe_backward +
nvjp_backward`` of every solve) of SNOpt and of that Adam. Goals (the issue's): no SNOpt run
diverges where SGD at the same settings does not; SNOpt's median seed reaches the target in at
most ``goal_ratio`` x the best-tuned Adam's median (0.5 on digits, 0.7 elsewhere; a SNOpt that
does not reach it on its median seed fails the goal); backward NFE at most 1.2x Adam's. The
exit code is 0 only when every goal is met. Results are written after every run
(``benchmarks/out/snopt_stress.json``), so an interrupted sweep resumes where it stopped; the
summary goes to ``snopt_stress.summary.json`` and the Markdown table to stdout.

Cost, measured on the bases at seed 10 with two workers on this 2-core machine (runs slow down
by up to 2x when other jobs share it): image width 16: SNOpt 33 s, SGD 22 s, Adam 45-75 s
(200 iterations unless it reaches the target); widths 32 and 64 cost 2.3x and 6.7x per
iteration. Time series: 20-40 s per 60-iteration SNOpt or SGD run, 5-10 s per Adam run. Density:
14 s, 11 s, 12-20 s. The 380 runs took 94 minutes (2 workers, the cores shared with other jobs):
75 for everything but the image family's Adam runs at widths 32 and 64, which the queue
(:func:`queue_position`) runs last, and 20 for those (wide Adam reaches 80 % early).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import statistics
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from nodeopt import data
from nodeopt.nn import ConvField, ODEBlock
from nodeopt.optim import SNOpt
from nodeopt.tasks import Budget, RunDir, Task, Trainer, make_optimizers, make_task

from . import optimizers as bench_optimizers
from .common import environment, jsonable, median

EPS, MOMENTUM, DIVERGE_FACTOR, NFE_GOAL = 0.05, 0.9, 10.0, 1.2
SOLVER = dict(method="dopri5", options={"max_num_steps": 300})
OPTIMISERS = ("snopt", "snopt-unguarded", "sgd", "adam")
DEFAULT_OPTIMISERS = ("snopt", "sgd", "adam")
SNOPT_ONLY = ("full_precond", "update_freq")  # settings that change neither an SGD nor an Adam run


@dataclasses.dataclass(frozen=True)
class Family:
    """One task's family: the base settings, the one-setting variations, and how a run is judged.

    ``target`` is the test metric to reach (accuracy: at least; NLL: at most, ``higher_is_better``
    False); ``goal_ratio`` bounds SNOpt's iterations to it against the best-tuned Adam's.
    """

    base: dict
    variations: dict
    target: float
    higher_is_better: bool
    iterations: int
    eval_every: int
    batch: int
    adam_lrs: tuple
    goal_ratio: float

    def reached(self, metric: float) -> bool:
        return math.isfinite(metric) and (metric >= self.target if self.higher_is_better else metric <= self.target)

    @property
    def adam_iterations(self) -> int:
        """Adam's budget: long enough that an Adam that does not reach the target still decides the goal."""
        return math.ceil(self.iterations / self.goal_ratio)


_TIMESERIES, _DENSITY = bench_optimizers.TASKS["timeseries"], bench_optimizers.TASKS["cnf2d"]
FAMILIES = {
    "image": Family(
        base=dict(activation="relu", width=16, full_precond=True, standardise="global", lr=0.02, update_freq=100,
                  gradient="symplectic"),
        variations=dict(activation=("softplus", "tanh"), width=(32, 64), full_precond=(False,),
                        standardise=("pixel",), lr=(0.01, 0.05, 0.1), update_freq=(20,), gradient=("adjoint",)),
        target=0.80, higher_is_better=True, iterations=100, eval_every=5, batch=64, adam_lrs=(3e-3, 1e-2),
        goal_ratio=0.5),
    "timeseries": Family(
        base=dict(width=_TIMESERIES["model"]["field_width"], full_precond=True, lr=0.02, update_freq=100,
                  gradient="symplectic"),
        variations=dict(width=(32,), lr=(0.01, 0.1), update_freq=(20,), full_precond=(False,), gradient=("adjoint",)),
        target=_TIMESERIES["target"], higher_is_better=True, iterations=60, eval_every=2, batch=_TIMESERIES["batch"],
        adam_lrs=(1e-2, 3e-2, 1e-1), goal_ratio=0.7),
    "density": Family(
        base=dict(activation=_DENSITY["model"]["activation"], width=_DENSITY["model"]["hidden"][0], full_precond=True,
                  lr=0.1, update_freq=100, gradient="symplectic"),
        variations=dict(activation=("softplus",), lr=(0.03,), update_freq=(20,), full_precond=(False,),
                        gradient=("adjoint",)),
        target=_DENSITY["target"], higher_is_better=False, iterations=100, eval_every=2, batch=_DENSITY["batch"],
        adam_lrs=(1e-2, 3e-2, 1e-1), goal_ratio=0.7),
}
QUICK = dict(iterations=6, eval_every=3, seeds=[0], members=1, adam_lrs=1)


# ---- the models -----------------------------------------------------------------------------------

class Classifier(nn.Module):
    """Stem conv3x3(1→W) + ReLU → ODE(ConvField) → ReLU → global average pool → Linear(W → 10)."""

    def __init__(self, width: int, activation: str, gradient: str):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.ode = ODEBlock(ConvField(width, activation), rtol=1e-3, atol=1e-3, gradient=gradient, **SOLVER)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        return self.head(F.relu(self.ode(F.relu(self.stem(x)))).mean((2, 3)))


def digits(standardise: str):
    """scikit-learn's digits, standardised with one global mean and std, or per pixel (training statistics)."""
    d = data.digits()
    if standardise == "global":
        return d
    raw_train, raw_test = d.x_train * d.info["std"] + d.info["mean"], d.x_test * d.info["std"] + d.info["mean"]
    mean, std = raw_train.mean(0, keepdim=True), raw_train.std(0, keepdim=True).clamp_min(1e-3)
    return dataclasses.replace(d, x_train=(raw_train - mean) / std, x_test=(raw_test - mean) / std)


@functools.lru_cache(maxsize=None)
def load_task(family: str, standardise: Optional[str] = None) -> Task:
    """The family's ``nodeopt.tasks`` task, loaded once per worker process."""
    if family == "image":
        return make_task("image", digits(standardise), "cpu")
    spec = _TIMESERIES if family == "timeseries" else _DENSITY
    return make_task(spec["kind"], data.load(spec["kind"], spec["dataset"], **spec["data"]), "cpu")


def build_model(cfg: dict, task: Task) -> nn.Module:
    """The member's model: the image family's classifier, or the library's ODE-RNN / CNF with its width."""
    if cfg["family"] == "image":
        return Classifier(cfg["width"], cfg["activation"], cfg["gradient"])
    spec = _TIMESERIES if cfg["family"] == "timeseries" else _DENSITY
    model = dict(spec["model"], field_width=cfg["width"]) if cfg["family"] == "timeseries" else \
        dict(spec["model"], hidden=(cfg["width"],) * len(spec["model"]["hidden"]), activation=cfg["activation"])
    return task.build_model(**model, rtol=spec["tol"], atol=spec["tol"], gradient=cfg["gradient"], **SOLVER)


# ---- one run --------------------------------------------------------------------------------------

def train(cfg: dict) -> dict:
    """One run, in a worker process: the loss and backward NFE of every iteration, the metric after every chunk.

    Trains in chunks of the family's ``eval_every`` iterations (one ``Trainer.fit`` each; the
    Trainer evaluates the test metric at the end of a fit). Adam stops at the target; SNOpt, once
    there, trains the rest of its budget in one chunk (divergence is still checked every
    iteration). SGD only tells whether a setting diverges anyway, so it trains in one chunk.
    """
    torch.set_num_threads(1)
    family = FAMILIES[cfg["family"]]
    task = load_task(cfg["family"], cfg.get("standardise"))
    torch.manual_seed(cfg["seed"])
    model = build_model(cfg, task)
    precond = None
    if cfg["opt"].startswith("snopt"):
        step_size = dict(snopt_step_size=_TIMESERIES["snopt"]["snopt_step_size"]) if cfg["family"] == "timeseries" \
            else {}
        precond = SNOpt(model, eps=EPS, update_freq=cfg["update_freq"], full_precond=cfg["full_precond"],
                        lr=cfg["lr"], bound_momentum=cfg["opt"] == "snopt", **step_size)
    (optimizer,), _ = make_optimizers("adam" if cfg["opt"] == "adam" else "sgd", model, lr=cfg["lr"],
                                      momentum=0.0 if cfg["opt"] == "adam" else MOMENTUM)
    rec = dict(loss=[], nfe_backward=[], momentum_scale=[], evals=[])

    def on_iteration(row: dict) -> None:
        rec["loss"].append(row["loss"])
        rec["nfe_backward"].append(row["nfe_backward"])
        if precond is not None:
            rec["momentum_scale"].append(precond.last_stats.momentum_scale)
        if "metric" in row:
            rec["evals"].append((row["iteration"], row["metric"]))

    reached, stopped = False, "budget"
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(task, model, optimizer, RunDir(tmp), batch_size=family.batch, seed=cfg["seed"],
                          precond=precond, eval_every=cfg["iterations"], checkpoint_every=cfg["iterations"],
                          on_iteration=on_iteration, diverge_factor=DIVERGE_FACTOR)
        try:
            while stopped == "budget" and trainer.progress.iteration < cfg["iterations"]:
                chunk_end = cfg["iterations"] if reached or cfg["opt"] == "sgd" else \
                    trainer.progress.iteration + cfg["eval_every"]
                stopped = trainer.fit(Budget(min(chunk_end, cfg["iterations"]))).stopped
                reached = reached or any(family.reached(metric) for _, metric in rec["evals"])
                if reached and cfg["opt"] == "adam":
                    break
        except RuntimeError as exc:  # the solver gave up (non-finite field, too many steps), training or evaluating
            stopped = f"after iteration {len(rec['loss'])}: solver error: {str(exc).splitlines()[0][:160]}"
    if stopped.startswith("SIG"):  # the Trainer stopped on SIGINT/SIGTERM: stop the sweep too
        raise KeyboardInterrupt(f"training stopped by {stopped}")
    if stopped == "diverged":
        stopped = f"iteration {len(rec['loss'])}: loss {rec['loss'][-1]:.4g} (first loss {rec['loss'][0]:.4g})"
    diverged = stopped != "budget"
    return dict(cfg, **rec, diverged=diverged, reason=stopped if diverged else None,
                to_target=iterations_to_target(rec["evals"], family),
                guard_acted=sum(scale < 1 for scale in rec["momentum_scale"]))


def iterations_to_target(evals: list, family: Family) -> Optional[int]:
    """The first evaluated iteration whose metric reaches the family's target (None: never)."""
    return next((it for it, metric in evals if family.reached(metric)), None)


# ---- the sweep ------------------------------------------------------------------------------------

def members(family: str, quick: bool = False) -> list[dict]:
    """The family's base and each one-setting variation of it, named by what changed."""
    base = FAMILIES[family].base
    out = [dict(base, name="base")]
    for key, values in FAMILIES[family].variations.items():
        out += [dict(base, **{key: v}, name=f"{key}={v}") for v in values]
    return out[:QUICK["members"]] if quick else out


def run_settings(member: dict, opt: str) -> dict:
    """The settings that can change a run of ``opt`` on ``member`` (the key that lets members share runs)."""
    settings = {k: v for k, v in member.items() if k != "name"}
    if not opt.startswith("snopt"):
        settings = {k: v for k, v in settings.items() if k not in SNOPT_ONLY}
    return settings


def configs(families: list[str], optimisers: list[str], seeds: list[int], quick: bool) -> list[dict]:
    """Every run of the sweep, a shared run once, in queue order (:func:`queue_position`), each with its ``key``."""
    out = {}
    for name in families:
        family = FAMILIES[name]
        adam_lrs = family.adam_lrs[:QUICK["adam_lrs"]] if quick else family.adam_lrs
        for member in members(name, quick):
            for opt in optimisers:
                for lr in (adam_lrs if opt == "adam" else [member["lr"]]):
                    settings = dict(run_settings(member, opt), lr=lr)
                    iterations = QUICK["iterations"] if quick else \
                        family.adam_iterations if opt == "adam" else family.iterations
                    for seed in seeds:
                        key = f"{name}/{opt}/" + ",".join(f"{k}={v}" for k, v in sorted(settings.items())) + \
                              f"/s{seed}/i{iterations}"
                        out.setdefault(key, dict(settings, family=name, opt=opt, seed=seed, iterations=iterations,
                                                 eval_every=QUICK["eval_every"] if quick else family.eval_every,
                                                 key=key))
    return sorted(out.values(), key=queue_position)


def queue_position(cfg: dict) -> tuple:
    """Where a run waits in the queue: what the goals need most per minute first.

    The image family's SNOpt and SGD runs and its Adam runs at the base width, then the time
    series, then density; last the image family's Adam runs at the wider fields (a width-64
    iteration costs about 7x a width-16 one, 2.3x at width 32, and Adam may need
    ``adam_iterations`` = 200 of them: about 45 of the sweep's minutes), so that a sweep cut
    short loses the fewest goals. Within a tier, family and member order.
    """
    base_width = FAMILIES["image"].base["width"]
    wide_image_adam = cfg["family"] == "image" and cfg["opt"] == "adam" and cfg["width"] > base_width
    return wide_image_adam, list(FAMILIES).index(cfg["family"])


def find_runs(runs: dict, member: dict, family: str, opt: str, lr: float) -> list[dict]:
    """The runs of ``opt`` at ``lr`` whose settings are the member's, by seed."""
    settings = dict(run_settings(member, opt), lr=lr)
    found = [r for r in runs.values() if r["family"] == family and r["opt"] == opt
             and all(r.get(k) == v for k, v in settings.items())]
    return sorted(found, key=lambda r: r["seed"])


def median_iterations(hits: list) -> float:
    """The median seed's iterations to the target, a seed that did not reach it counting as infinitely many."""
    return statistics.median(math.inf if h is None else h for h in hits) if hits else math.inf


def nfe_to_target(run: dict) -> float:
    """The median backward NFE per iteration of a run up to the iteration that reached the target (all of it if none).

    Adam's runs stop at the target and SNOpt's go on, while a field usually stiffens as it trains:
    over the same stretch of training the two are compared like for like.
    """
    return median(run["nfe_backward"][:run["to_target"]])


def optimiser_summary(rs: list[dict]) -> dict:
    """Diverged seeds, iterations to the target per seed and on the median seed, backward NFE per iteration."""
    hits = [r["to_target"] for r in rs]
    return dict(seeds=[r["seed"] for r in rs], diverged=[r["seed"] for r in rs if r["diverged"]],
                reasons={r["seed"]: r["reason"] for r in rs if r["diverged"]}, iters_to_target=hits,
                median_iters=median_iterations(hits), nfe_backward=median(nfe_to_target(r) for r in rs),
                guard_acted=[r["guard_acted"] for r in rs] if rs and rs[0]["opt"].startswith("snopt") else None)


def summarise(runs: dict, families: list[str], optimisers: list[str], seeds: list[int], quick: bool) -> dict:
    """Per family and member: each optimiser's summary, the best-tuned Adam, and the three goals.

    A member some of whose optimisers have no finished run yet (an interrupted sweep) is listed
    under ``not_run``: its goals are unverified, so they do not count as met.
    """
    out = dict(families={}, goals=dict(diverged_where_sgd_did_not=[], speed_not_met=[], nfe_not_met=[], not_run=[]))
    goals = out["goals"]
    for name in families:
        family = FAMILIES[name]
        adam_lrs = family.adam_lrs[:QUICK["adam_lrs"]] if quick else family.adam_lrs
        table = {}
        for member in members(name, quick):
            def summary(opt: str, lr: float) -> dict:
                return optimiser_summary([r for r in find_runs(runs, member, name, opt, lr) if r["seed"] in seeds])

            row = {opt: summary(opt, member["lr"]) for opt in optimisers if opt != "adam"}
            if "adam" in optimisers:
                grid = {lr: summary("adam", lr) for lr in adam_lrs}
                best = min(grid, key=lambda lr: (-sum(h is not None for h in grid[lr]["iters_to_target"]),
                                                 grid[lr]["median_iters"]))
                row["adam"] = dict(grid[best], lr=best, grid={str(lr): g for lr, g in grid.items()})
                row["adam"]["seeds"] = sorted(set.intersection(*(set(g["seeds"]) for g in grid.values())))
            where = f"{name} {member['name']}"
            if any(len(row[opt]["seeds"]) < len(seeds) for opt in row):
                goals["not_run"].append(where)
                table[member["name"]] = dict(row, not_run=True)
                continue
            table[member["name"]] = row = dict(row, **member_goals(row, family, quick))
            if "snopt" in row and "sgd" in row:
                goals["diverged_where_sgd_did_not"] += [f"{where} seed {s}" for s in row["snopt"]["diverged"]
                                                        if s not in row["sgd"]["diverged"]]
            if row.get("speed_met") is False:
                goals["speed_not_met"].append(f"{where}: {row['speed_detail']}")
            if row.get("nfe_met") is False:
                goals["nfe_not_met"].append(f"{where}: {row['nfe_ratio']:.2f}x")
        out["families"][name] = dict(target=family.target, higher_is_better=family.higher_is_better,
                                     goal_ratio=family.goal_ratio, table=table)
    out["all_goals_met"] = not any(goals.values())
    return out


def member_goals(row: dict, family: Family, quick: bool) -> dict:
    """SNOpt against the best-tuned Adam: the ratio of median-seed iterations and of backward NFE, and whether each
    meets its goal (None when one of the two optimisers was not run)."""
    if "snopt" not in row or "adam" not in row:
        return {}
    sn, ad = row["snopt"]["median_iters"], row["adam"]["median_iters"]
    adam_budget = QUICK["iterations"] if quick else family.adam_iterations
    if not math.isfinite(sn):
        budget = QUICK["iterations"] if quick else family.iterations
        speed = dict(speed_ratio=None, speed_met=False,
                     speed_detail=f"not reached (SNOpt's median seed did not reach the target in {budget} iterations)")
    elif not math.isfinite(ad):  # Adam did not get there within its longer budget: the ratio is below sn / budget
        speed = dict(speed_ratio=sn / adam_budget, speed_met=sn <= family.goal_ratio * adam_budget,
                     speed_detail=f"< {sn / adam_budget:.2f} (Adam's median seed did not reach the target in "
                                  f"{adam_budget} iterations)")
    else:
        speed = dict(speed_ratio=sn / ad, speed_met=sn <= family.goal_ratio * ad, speed_detail=f"{sn / ad:.2f}")
    nfe = row["snopt"]["nfe_backward"] / row["adam"]["nfe_backward"]
    return dict(speed, nfe_ratio=nfe, nfe_met=nfe <= NFE_GOAL)


# ---- the report -----------------------------------------------------------------------------------

def markdown(summary: dict) -> str:
    """One Markdown table per family."""
    lines = []
    for name, fam in summary["families"].items():
        sense = ">=" if fam["higher_is_better"] else "<="
        unguarded = any("snopt-unguarded" in row for row in fam["table"].values())
        lines += [f"**{name}** (target: test metric {sense} {fam['target']:g}; goal: SNOpt <= {fam['goal_ratio']:g}x "
                  f"the best-tuned Adam's iterations on the median seed, backward NFE <= {NFE_GOAL:g}x)", "",
                  "| member | SNOpt diverged | SGD diverged | " + ("unguarded SNOpt diverged | " if unguarded else "")
                  + "SNOpt iters to target (median) | best Adam lr: iters to target (median) | ratio | "
                    "bwd NFE/iter SNOpt / Adam (ratio) |",
                  "|---|---|---|" + ("---|" if unguarded else "") + "---|---|---|---|"]
        for member, row in fam["table"].items():
            if row.get("not_run"):
                lines.append(f"| {member} | not run (the sweep stopped before its runs) |" + " |" * (5 + unguarded))
                continue
            cells = [member] + [_diverged(row.get(opt)) for opt in ("snopt", "sgd")]
            cells += [_diverged(row.get("snopt-unguarded"))] if unguarded else []
            cells.append(_iters(row.get("snopt")))
            adam = row.get("adam")
            cells.append("–" if adam is None else f"{adam['lr']:g}: {_iters(adam)}")
            if "speed_met" in row:
                mark = "" if row["speed_met"] else " **NOT MET**"
                cells.append(f"{row['speed_detail'].split(' (')[0]}{mark}")
                mark = "" if row["nfe_met"] else " **NOT MET**"
                cells.append(f"{row['snopt']['nfe_backward']:.0f} / {adam['nfe_backward']:.0f} "
                             f"({row['nfe_ratio']:.2f}){mark}")
            else:
                cells += ["–", "–"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    goals = summary["goals"]
    lines += [f"- SNOpt diverged where SGD did not: {', '.join(goals['diverged_where_sgd_did_not']) or 'none'}",
              f"- speed goal not met: {'; '.join(goals['speed_not_met']) or 'none'}",
              f"- backward NFE goal not met: {'; '.join(goals['nfe_not_met']) or 'none'}"]
    if goals["not_run"]:
        lines.append(f"- not run (goals unverified): {', '.join(goals['not_run'])}")
    return "\n".join(lines)


def _diverged(s: Optional[dict]) -> str:
    if s is None:
        return "–"
    return f"{len(s['diverged'])}/{len(s['seeds'])}" + (f" {s['diverged']}" if s["diverged"] else "")


def _iters(s: Optional[dict]) -> str:
    if s is None:
        return "–"
    per_seed = " ".join("–" if h is None else str(h) for h in s["iters_to_target"])
    middle = s["median_iters"]
    return f"{per_seed} ({format(middle, 'g') if math.isfinite(middle) else '–'})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.snopt_stress", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: each family's base, seed 0, 6 iterations")
    parser.add_argument("--tasks", default=",".join(FAMILIES), help=f"comma-separated subset of {','.join(FAMILIES)}")
    parser.add_argument("--optimisers", default=",".join(DEFAULT_OPTIMISERS),
                        help=f"comma-separated subset of {','.join(OPTIMISERS)}")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=None, help="results JSON (default benchmarks/out/snopt_stress.json)")
    parser.add_argument("--report", action="store_true", help="train nothing: summarise the runs already in --out")
    args = parser.parse_args(argv)
    families = [t.strip() for t in args.tasks.split(",") if t.strip()]
    optimisers = [o.strip() for o in args.optimisers.split(",") if o.strip()]
    unknown = [t for t in families if t not in FAMILIES] + [o for o in optimisers if o not in OPTIMISERS]
    if unknown:
        parser.error(f"unknown task(s) or optimiser(s) {unknown}; tasks: {', '.join(FAMILIES)}; "
                     f"optimisers: {', '.join(OPTIMISERS)}")
    seeds = QUICK["seeds"] if args.quick else [int(s) for s in args.seeds.split(",")]
    out = Path(args.out or f"benchmarks/out/snopt_stress{'-quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(out.read_text()).get("runs", {}) if out.exists() else {}  # an interrupted sweep resumes
    wanted = configs(families, optimisers, seeds, args.quick)
    todo = [] if args.report else [c for c in wanted if c["key"] not in runs]
    print(f"{len(wanted)} runs, {sum(c['key'] in runs for c in wanted)} of them already in {out}", flush=True)
    with ProcessPoolExecutor(args.workers) as pool:
        for future in as_completed([pool.submit(train, c) for c in todo]):
            rec = future.result()
            runs[rec["key"]] = rec
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(dict(runs=runs)))
            os.replace(tmp, out)
            print(f"  {rec['key']:80s} {'DIVERGED ' + str(rec['reason']) if rec['diverged'] else 'ok'}; "
                  f"target at {rec['to_target']}; guard acted {rec['guard_acted']}x", flush=True)
    wanted_keys = {c["key"] for c in wanted}
    summary = summarise({k: r for k, r in runs.items() if k in wanted_keys}, families, optimisers, seeds, args.quick)
    out.with_suffix(".summary.json").write_text(
        json.dumps(jsonable(dict(meta=environment("snopt_stress", argv), **summary)), indent=1))
    print(markdown(summary))
    return 0 if summary["all_goals_met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
