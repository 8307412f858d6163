"""SNOpt on models it was not tuned on: a family of small conv ODE classifiers, and does it diverge where SGD does not?

Run from the repository root::

    python -m benchmarks.snopt_stress                    # the family, seeds 0-2 (about 30 minutes, 2 processes)
    python -m benchmarks.snopt_stress --seeds 0,1,2,3,4 --workers 2
    python -m benchmarks.snopt_stress --quick            # a smoke run

The base model is the one on which SNOpt once diverged (written as the original SNOpt README
shows): a 3×3 convolution stem 1→W channels with ReLU, an ODE over t ∈ [0, 1] whose field is
two concat-time 3×3 convolutions with an activation between (``nodeopt.nn.ConvField``), ReLU,
global average pooling and ``Linear(W → 10)``; scikit-learn's digits standardised with one
global mean and std; batch 64; dopri5 at rtol = atol = 1e-3; ``SNOpt(model, eps=0.05,
update_freq=F, full_precond=P, lr=lr)`` (every other setting at the library's default) in front
of ``SGD(lr, momentum=0.9)``, against that SGD alone and against SNOpt without its momentum
guard (``bound_momentum=False``). Base: ReLU, W = 16, P = True, global standardisation,
lr = 0.02, F = 100, the symplectic adjoint. Each family member changes one of these (a full
grid would be thousands of runs): activation softplus / tanh, W = 32 / 64, P = False, per-pixel
standardisation, lr = 0.01 / 0.05 / 0.1, F = 20, the adjoint. Every run is a
``nodeopt.tasks.Trainer`` of 100 iterations (``diverge_factor=10``: diverged when the loss is
NaN or above 10× its first loss + 1, or the solver fails), the test accuracy every 5 iterations.

Reported per member and optimiser: runs diverged (seeds), iterations to 80 % test accuracy
(median seed) and the final accuracy; the goal: no SNOpt run diverges where SGD at the same
settings does not.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nodeopt import data
from nodeopt.nn import ConvField, ODEBlock
from nodeopt.optim import SNOpt
from nodeopt.tasks import make_optimizers, make_task

from .common import environment, median
from .optimizers import run

BASE = dict(activation="relu", width=16, full_precond=True, standardise="global", lr=0.02, update_freq=100,
            gradient="symplectic")
VARIATIONS = dict(activation=("softplus", "tanh"), width=(32, 64), full_precond=(False,), standardise=("pixel",),
                  lr=(0.01, 0.05, 0.1), update_freq=(20,), gradient=("adjoint",))
OPTIMISERS = ("snopt", "snopt-unguarded", "sgd")
ITERATIONS, EVAL_EVERY, TARGET, MOMENTUM, EPS, BATCH = 100, 5, 0.80, 0.9, 0.05, 64
QUICK = dict(iterations=6, seeds=[0], members=1)


class Classifier(nn.Module):
    """Stem conv3x3(1→W) + ReLU → ODE(ConvField) → ReLU → global average pool → Linear(W → 10)."""

    def __init__(self, width: int, activation: str, gradient: str):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.ode = ODEBlock(ConvField(width, activation), rtol=1e-3, atol=1e-3, method="dopri5", gradient=gradient,
                            options={"max_num_steps": 300})
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        return self.head(F.relu(self.ode(F.relu(self.stem(x)))).mean((2, 3)))


def members(quick: bool = False) -> list[dict]:
    """The base and each one-setting variation of it, named by what changed."""
    out = [dict(BASE, name="base")]
    for key, values in VARIATIONS.items():
        out += [dict(BASE, **{key: v}, name=f"{key}={v}") for v in values]
    return out[:QUICK["members"]] if quick else out


def digits(standardise: str):
    """scikit-learn's digits, standardised with one global mean and std, or per pixel (training statistics)."""
    d = data.digits()
    if standardise == "global":
        return d
    raw_train, raw_test = d.x_train * d.info["std"] + d.info["mean"], d.x_test * d.info["std"] + d.info["mean"]
    mean, std = raw_train.mean(0, keepdim=True), raw_train.std(0, keepdim=True).clamp_min(1e-3)
    return dataclasses.replace(d, x_train=(raw_train - mean) / std, x_test=(raw_test - mean) / std)


def train(cfg: dict) -> dict:
    """One run, in a worker process."""
    torch.set_num_threads(1)
    task = make_task("image", digits(cfg["standardise"]), "cpu")
    torch.manual_seed(cfg["seed"])
    model = Classifier(cfg["width"], cfg["activation"], cfg["gradient"])
    precond = None
    if cfg["opt"].startswith("snopt"):
        precond = SNOpt(model, eps=EPS, update_freq=cfg["update_freq"], full_precond=cfg["full_precond"],
                        lr=cfg["lr"], bound_momentum=cfg["opt"] == "snopt")
    (optimizer,), _ = make_optimizers("sgd", model, lr=cfg["lr"], momentum=MOMENTUM)
    r = run(task, model, optimizer, precond, batch=BATCH, seed=cfg["seed"], iterations=cfg["iterations"],
            eval_every=EVAL_EVERY)
    return dict(cfg, loss=r["loss"], evals=[(e[0], e[3]) for e in r["evals"]], diverged=r["diverged"],
                reason=r["reason"], nfe_backward=r["nfe_backward"],
                guard_acted=sum(s < 1 for s in r["momentum_scale"]))


def configs(seeds, quick: bool) -> list[dict]:
    out = []
    for m in members(quick):
        for opt in OPTIMISERS:
            for seed in seeds:
                c = dict(m, opt=opt, seed=seed, iterations=QUICK["iterations"] if quick else ITERATIONS)
                c["key"] = f"{m['name']}/{opt}/s{seed}/i{c['iterations']}"
                out.append(c)
    return out


def to_target(rec: dict):
    return next((it for it, acc in rec["evals"] if acc >= TARGET), None)


def summarise(runs: list[dict]) -> dict:
    table, bad = {}, []
    for name in dict.fromkeys(r["name"] for r in runs):
        row = {}
        for opt in OPTIMISERS:
            rs = sorted((r for r in runs if r["name"] == name and r["opt"] == opt), key=lambda r: r["seed"])
            hits = [to_target(r) for r in rs]
            row[opt] = dict(seeds=[r["seed"] for r in rs], diverged=[r["seed"] for r in rs if r["diverged"]],
                            iters_to_target=hits, median_iters=median([h for h in hits]) if None not in hits else None,
                            final_accuracy=median([r["evals"][-1][1] for r in rs]),
                            reasons=[r["reason"] for r in rs if r["diverged"]])
        sgd = set(row["sgd"]["diverged"])
        bad += [f"{name} seed {s}" for s in row["snopt"]["diverged"] if s not in sgd]
        table[name] = row
    return dict(table=table, goal_snopt_diverged_where_sgd_did_not=bad)


def markdown(summary: dict) -> str:
    lines = ["| member | SNOpt: diverged / iters to 80 % / final acc. | SNOpt without the momentum guard | "
             "SGD (momentum 0.9) |", "|---|---|---|---|"]

    def cell(c):
        div = f"{len(c['diverged'])}/{len(c['seeds'])}" + (f" {c['diverged']}" if c["diverged"] else "")
        its = " ".join("–" if h is None else str(h) for h in c["iters_to_target"])
        return f"{div} / {its} / {c['final_accuracy']:.3f}"

    for name, row in summary["table"].items():
        lines.append(f"| {name} | {cell(row['snopt'])} | {cell(row['snopt-unguarded'])} | {cell(row['sgd'])} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    seeds = QUICK["seeds"] if args.quick else [int(s) for s in args.seeds.split(",")]
    out = Path(args.out or f"benchmarks/out/snopt_stress{'-quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    done = json.loads(out.read_text()).get("runs", {}) if out.exists() else {}  # an interrupted sweep resumes
    todo = [c for c in configs(seeds, args.quick) if c["key"] not in done]
    with ProcessPoolExecutor(args.workers) as pool:
        for rec in pool.map(train, todo):
            done[rec["key"]] = rec
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(dict(runs=done)))
            os.replace(tmp, out)
            print(f"  {rec['key']:40s} {'DIVERGED ' + str(rec['reason']) if rec['diverged'] else 'ok'}; "
                  f"80 % at {to_target(rec)}; guard acted {rec['guard_acted']}x", flush=True)
    wanted = {c["key"] for c in configs(seeds, args.quick)}
    summary = summarise([r for k, r in done.items() if k in wanted])
    out.with_suffix(".summary.json").write_text(json.dumps(dict(meta=environment("snopt_stress", argv), **summary),
                                                           indent=1))
    print(markdown(summary))
    print("SNOpt diverged where SGD did not:", summary["goal_snopt_diverged_where_sgd_did_not"] or "none")
    return 0 if not summary["goal_snopt_diverged_where_sgd_did_not"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
