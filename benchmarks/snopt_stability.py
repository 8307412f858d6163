"""SNOpt at its documented settings: divergence, iterations and time to target, NFE.

Run from the repository root::

    python -m benchmarks.snopt_stability                 # the full sweep (about 40 minutes, 2 processes)
    python -m benchmarks.snopt_stability --quick         # a smoke run (a minute)

Options: ``--seeds 0,1,2,3,4``, ``--workers 2`` (processes, one thread each),
``--out PATH`` (JSON, default ``benchmarks/out/snopt_stability.json``; finished
runs are kept there, with the task they ran on, and skipped when the command is run
again on the same task, so an interrupted sweep resumes), ``--report`` (only
summarise the JSON).

The task is the optimizer benchmark's ``digits`` (``benchmarks/optimizers.py``:
``nodeopt.tasks``' image task on scikit-learn's digits, 1437/360 stratified split,
batch 64, the library's ConvODENet at width 32 through dopri5 at rtol = atol = 1e-3;
before the benchmarks moved onto the library, a conv ODE of their own), trained by
:class:`nodeopt.tasks.Trainer` for a fixed number of iterations with the test
accuracy evaluated after every iteration (evaluation excluded from the training
clock). Runs, each on ``gradient="symplectic"`` and ``"adjoint"``, seeds 0-4:

* ``snopt``: ``SNOpt(model, eps=0.05, update_freq=F, full_precond=True, lr=lr)``
  with every other setting at the library default (Levenberg-Marquardt damping,
  early refreshes, ``max_step=1``), in front of ``SGD(lr, momentum=0.9)``;
  ``lr`` in {0.01, 0.02, 0.05, 0.1}, ``F`` in {20, 100}.
* ``snopt-fixed``: the same with ``adaptive_damping=False, early_refresh=False``
  (fixed damping, refresh every ``update_freq``: SNOpt before this change), at
  ``F = 100``.
* ``sgd``: ``SGD(lr, momentum=0.9)`` at the same learning rates.
* ``adam``: ``Adam(lr)``, lr in {1e-3, 3e-3, 1e-2}.

A run has diverged when the Trainer stops it as diverged (``diverge_factor=10``: its
loss is NaN or more than 10x its first loss + 1), or the solver fails. Backward NFE is
every evaluation the backward pass makes (the Trainer's ``nfe_backward``:
``nfe_backward + nvjp_backward`` of the ODE block's statistics); the damping ``γ`` of
every step is recorded too.
"""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from nodeopt.optim import SNOpt
from nodeopt.tasks import make_optimizers

from .common import diffs, environment, median
from .optimizers import Setup, run

LRS = (0.01, 0.02, 0.05, 0.1)
FREQS = (20, 100)
ADAM_LRS = (1e-3, 3e-3, 1e-2)
GRADIENTS = ("symplectic", "adjoint")
MOMENTUM, EPS = 0.9, 0.05
TARGETS = (0.85, 0.90)
ITERATIONS = {"adam": 300, "default": 200}
QUICK = dict(lrs=(0.02,), freqs=(100,), adam_lrs=(1e-3,), gradients=("symplectic",), iterations=12, seeds=[0])


def configs(seeds, quick: bool) -> list[dict]:
    """Every run of the sweep, as plain dictionaries (its key is its identity in the JSON file)."""
    lrs, freqs, adam_lrs, gradients = ((QUICK["lrs"], QUICK["freqs"], QUICK["adam_lrs"], QUICK["gradients"])
                                       if quick else (LRS, FREQS, ADAM_LRS, GRADIENTS))
    out = []
    for gradient in gradients:
        for seed in seeds:
            for lr in lrs:
                out += [dict(opt="snopt", lr=lr, update_freq=f, gradient=gradient, seed=seed) for f in freqs]
                out.append(dict(opt="snopt-fixed", lr=lr, update_freq=100, gradient=gradient, seed=seed))
                out.append(dict(opt="sgd", lr=lr, update_freq=None, gradient=gradient, seed=seed))
            out += [dict(opt="adam", lr=lr, update_freq=None, gradient=gradient, seed=seed) for lr in adam_lrs]
    for c in out:
        c["iterations"] = QUICK["iterations"] if quick else ITERATIONS.get(c["opt"], ITERATIONS["default"])
        c["key"] = f"{c['opt']}@{c['lr']:g}/f{c['update_freq']}/{c['gradient']}/s{c['seed']}/i{c['iterations']}"
    return out


def train(cfg: dict) -> dict:
    """One run (in a worker process): losses, clocks, NFE, damping and the test accuracy after every iteration."""
    torch.set_num_threads(1)
    setup = Setup.load("digits", quick=False)
    torch.manual_seed(cfg["seed"])
    model = setup.make_model(cfg["gradient"])
    lr, opt = cfg["lr"], cfg["opt"]
    precond = None
    if opt.startswith("snopt"):
        guard = {} if opt == "snopt" else dict(adaptive_damping=False, early_refresh=False)
        precond = SNOpt(model, eps=EPS, update_freq=cfg["update_freq"], full_precond=True, lr=lr, **guard)
    (optimizer,), _ = make_optimizers("adam" if opt == "adam" else "sgd", model, lr=lr, momentum=MOMENTUM)
    r = run(setup.task, model, optimizer, precond, batch=setup.batch, seed=cfg["seed"],
            iterations=cfg["iterations"], eval_every=1)
    return dict(cfg, loss=r["loss"], train_s=r["wall"], nfe_forward=r["nfe"], nfe_backward=r["nfe_backward"],
                accuracy=[e[3] for e in r["evals"][1:]], damping=r["damping"] or [None] * len(r["loss"]),
                diverged=r["diverged"], reason=r["reason"], **({"refreshes": precond.refreshes} if precond else {}))


def first_reaching(rec: dict, target: float):
    """(iterations, training seconds) at the first evaluation with accuracy ≥ target, or None."""
    for i, acc in enumerate(rec["accuracy"]):
        if acc >= target:
            return i + 1, rec["train_s"][i]
    return None


def summarise(runs: list[dict], seeds) -> dict:
    """Per configuration: divergences, iterations/time to each target, median NFE; then the goals."""
    groups: dict[tuple, list] = {}
    for r in runs:
        groups.setdefault((r["opt"], r["lr"], r["update_freq"], r["gradient"]), []).append(r)
    table = {}
    for (opt, lr, freq, gradient), rs in sorted(groups.items(), key=lambda kv: tuple(str(k) for k in kv[0])):
        rs = sorted(rs, key=lambda r: r["seed"])
        row = dict(opt=opt, lr=lr, update_freq=freq, gradient=gradient, seeds=[r["seed"] for r in rs],
                   diverged=[r["seed"] for r in rs if r["diverged"]], reasons=[r["reason"] for r in rs if r["diverged"]],
                   final_accuracy=[r["accuracy"][-1] if r["accuracy"] else float("nan") for r in rs],
                   median_nfe_forward=median([x for r in rs for x in r["nfe_forward"]]),
                   median_nfe_backward=median([x for r in rs for x in r["nfe_backward"]]),
                   median_iteration_s=median([d for r in rs for d in diffs(r["train_s"])]),
                   final_damping=[r["damping"][-1] if r["damping"] and r["damping"][-1] is not None else None
                                  for r in rs])
        for target in TARGETS:
            hits = [first_reaching(r, target) for r in rs]
            row[f"iters_{target:g}"] = [h[0] if h else None for h in hits]
            row[f"seconds_{target:g}"] = [round(h[1], 2) if h else None for h in hits]
        table[f"{opt}@{lr:g}/f{freq}/{gradient}"] = row
    return dict(table=table, goals=goals(table, seeds))


def goals(table: dict, seeds) -> dict:
    """The issue's three goals, per gradient method."""
    out = {}
    for gradient in GRADIENTS:
        rows = {k: v for k, v in table.items() if v["gradient"] == gradient}
        if not rows:
            continue
        # 1. no SNOpt run diverges where SGD at the same lr (and seed) does not
        bad = []
        for key, row in rows.items():
            if row["opt"] != "snopt":
                continue
            sgd = rows.get(f"sgd@{row['lr']:g}/fNone/{gradient}")
            sgd_div = set(sgd["diverged"]) if sgd else set()
            bad += [f"{key} seed {s}" for s in row["diverged"] if s not in sgd_div]
        # 2. SNOpt to 90 % in <= 0.5x the iterations of the best Adam, on every seed
        adams = [r for r in rows.values() if r["opt"] == "adam"]
        best_adam = min(adams, key=lambda r: (sum(i is None for i in r["iters_0.9"]),
                                              median([i for i in r["iters_0.9"] if i is not None]))) if adams else None
        snopts = [r for r in rows.values() if r["opt"] == "snopt"]
        per_config = {}
        if best_adam:
            for r in snopts:
                ratios = [(a / b if a is not None and b is not None else None)
                          for a, b in zip(r["iters_0.9"], best_adam["iters_0.9"])]
                per_config[f"snopt@{r['lr']:g}/f{r['update_freq']}"] = ratios
        # 3. backward NFE under SNOpt <= 1.2x Adam's (median per iteration; the best Adam lr)
        nfe = {f"snopt@{r['lr']:g}/f{r['update_freq']}": (r["median_nfe_backward"] / best_adam["median_nfe_backward"]
                                                         if best_adam else None) for r in snopts}
        out[gradient] = dict(snopt_diverged_where_sgd_did_not=bad,
                             best_adam=None if best_adam is None else f"adam@{best_adam['lr']:g}",
                             best_adam_iters_0_9=None if best_adam is None else best_adam["iters_0.9"],
                             iteration_ratio_to_best_adam_0_9=per_config, backward_nfe_ratio_to_best_adam=nfe)
    return out


def markdown(summary: dict) -> str:
    lines = ["| run | gradient | diverged (seeds) | final acc. (median) | iters to 85 % | iters to 90 % | "
             "s to 90 % | NFE fwd / bwd (median) | ms / iter |", "|" + "---|" * 9]
    for key, r in summary["table"].items():
        name = f"{r['opt']} lr {r['lr']:g}" + (f" f {r['update_freq']}" if r["update_freq"] else "")
        lines.append(
            f"| {name} | {r['gradient']} | {len(r['diverged'])}/{len(r['seeds'])} {r['diverged'] or ''} | "
            f"{median(r['final_accuracy']):.3f} | {_fmt(r['iters_0.85'])} | {_fmt(r['iters_0.9'])} | "
            f"{_fmt(r['seconds_0.9'])} | {r['median_nfe_forward']:g} / {r['median_nfe_backward']:g} | "
            f"{1e3 * r['median_iteration_s']:.0f} |")
    return "\n".join(lines)


def _fmt(xs):
    return " ".join("–" if x is None else f"{x:g}" for x in xs)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=None)
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args(argv)
    seeds = QUICK["seeds"] if args.quick else [int(s) for s in args.seeds.split(",")]
    out = Path(args.out or f"benchmarks/out/snopt_stability{'-quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    task = json.loads(json.dumps(Setup.load("digits", quick=False).describe()))
    stored = json.loads(out.read_text()) if out.exists() else {}
    done = stored["runs"] if stored.get("task") == task else {}  # runs of another task or model do not count
    todo = [c for c in configs(seeds, args.quick) if c["key"] not in done]
    if not args.report and todo:
        print(f"{len(todo)} runs to do ({len(done)} done) with {args.workers} workers", flush=True)
        with ProcessPoolExecutor(args.workers) as pool:
            for rec in pool.map(train, todo):
                done[rec["key"]] = rec
                _write(out, dict(task=task, runs=done))
                hit = first_reaching(rec, 0.9)
                print(f"  {rec['key']:45s} {'DIVERGED ' + rec['reason'] if rec['diverged'] else 'ok'}; "
                      f"90 % at {hit[0] if hit else '–'}; final acc {rec['accuracy'][-1] if rec['accuracy'] else 0:.3f}",
                      flush=True)
    wanted = {c["key"] for c in configs(seeds, args.quick)}
    summary = summarise([r for k, r in done.items() if k in wanted], seeds)
    meta = dict(environment("snopt_stability", argv), workers=args.workers)
    (out.with_suffix(".summary.json")).write_text(json.dumps(dict(meta=meta, **summary), indent=1))
    print(markdown(summary))
    print(json.dumps(summary["goals"], indent=1))


def _write(path: Path, value: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
