"""``nodeopt reproduce``: run a paper's experiment by name and end with a results table.

Each run of the recipe (``nodeopt.cli.recipes``) is one ``nodeopt train`` process, with every
setting written out on its command line (``--dry-run`` prints them), into
``<run-dir>/<run>-seed<k>``. The table has, per run (mean ± std over seeds): the final and
best metric, training time, the time and iterations to the recipe's target, the time to the
same seed's Adam run's final metric, the median NFE per iteration, and the peak memory of
the process (resident set on the CPU, device memory on CUDA).
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Optional

from .. import data
from ..tasks import RunDir, read_metrics
from ..tasks.rundir import write_csv
from .defaults import DEFAULT_EPOCHS
from .recipes import RECIPES, Recipe, settings_of

FLAG_ONLY = ("seminorm",)  # store_true flags


def command(settings: dict, run_dir: str, extra=()) -> list[str]:
    """The ``nodeopt train`` command line of one run."""
    argv = ["nodeopt", "train"]
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if key in FLAG_ONLY:
            argv += [flag] if value else []
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv + ["--run-dir", run_dir, *extra]


def scaled(settings: dict, scale: float, n_train: Optional[int]) -> dict:
    """The run's settings with its length multiplied by ``scale`` (at least one iteration)."""
    if scale == 1.0:
        return settings
    s = dict(settings)
    if "iterations" in s:
        s["iterations"] = max(1, math.ceil(scale * s["iterations"]))
    else:
        rows = int((n_train or 0) * s.get("train_fraction", 1.0))
        per_epoch = max(1, rows // s["batch_size"])
        s["iterations"] = max(1, math.ceil(scale * s.pop("epochs", DEFAULT_EPOCHS) * per_epoch))
    s["eval_every"] = min(s.get("eval_every", 10), s["iterations"])
    return s


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="nodeopt reproduce", description=__doc__.splitlines()[0])
    p.add_argument("name", nargs="?", help="the recipe (see --list)")
    p.add_argument("--list", action="store_true", help="list the recipes and whether their data is on disk")
    p.add_argument("--only", default=None, help="comma-separated run names, e.g. adam,snopt")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the recipe's, 0)")
    p.add_argument("--scale", type=float, default=1.0, help="a fraction of the epochs (e.g. 0.1 on a laptop)")
    p.add_argument("--dry-run", action="store_true", help="print each run's nodeopt train command and stop")
    p.add_argument("--run-dir", default=None, help="the parent directory (default runs/reproduce-<name>)")
    p.add_argument("--data-dir", default=None, help="where dataset files are (as nodeopt train)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None, help="as nodeopt train")
    args = p.parse_args(argv)
    if args.list:
        return _list(args.data_dir)
    if args.name is None:
        p.error("the following arguments are required: name (or --list)")
    if args.name not in RECIPES:
        p.error(f"argument name: unknown recipe {args.name!r}; choose one of {', '.join(RECIPES)}")
    if not (args.scale > 0 and math.isfinite(args.scale)):
        p.error(f"argument --scale: must be a positive number, got {args.scale}")
    recipe = RECIPES[args.name]
    runs = list(recipe.runs)
    if args.only:
        wanted = args.only.split(",")
        unknown = [w for w in wanted if w not in {r.name for r in runs}]
        if unknown:
            p.error(f"argument --only: {recipe.name} has no run {', '.join(unknown)}; its runs are "
                    f"{', '.join(r.name for r in runs)}")
        runs = [r for r in runs if r.name in wanted]
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [recipe.common.get("seed", 0)]
    except ValueError:
        p.error(f"argument --seeds: expected comma-separated whole numbers, got {args.seeds!r}")
    parent = Path(args.run_dir or f"runs/reproduce-{recipe.name}")
    n_train = None
    if not args.dry_run or args.scale != 1.0:
        n_train = _preflight(recipe, args.data_dir)
        if n_train is None:
            return 2
    extra = [*(["--data-dir", args.data_dir] if args.data_dir else []),
             *(["--device", args.device] if args.device else [])]
    plan = []
    for run in runs:
        for seed in seeds:
            s = scaled({**settings_of(recipe, run), "seed": seed}, args.scale, n_train)
            plan.append((run.name, seed, parent / f"{run.name}-seed{seed}", s))
    if args.dry_run:
        for _, _, folder, s in plan:
            print(shlex.join(command(s, str(folder), extra)))
        return 0
    results = []
    for name, seed, folder, s in plan:
        argv_run = command(s, str(folder), [*extra, "--quiet"])
        print(f"== {recipe.name}: {name}, seed {seed}: {shlex.join(argv_run)}", flush=True)
        code, peak = _run([sys.executable, "-m", "nodeopt", *argv_run[1:]])
        results.append(dict(run=name, seed=seed, folder=str(folder), exit_code=code, peak_rss_mb=peak))
    table = results_table(recipe, results)
    _write_table(parent, table, results)
    print(markdown(recipe, table))
    for departure in recipe.departures:
        print(f"- departs from the original: {departure}")
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


def _list(data_dir) -> int:
    print(f"{'recipe':28s} {'task':11s} {'dataset':16s} {'data':12s} runs")
    for r in RECIPES.values():
        where = "offline" if r.offline else ("on disk" if data.is_available(r.task, r.dataset, data_dir)
                                             else "not on disk")
        print(f"{r.name:28s} {r.task:11s} {r.dataset:16s} {where:12s} {', '.join(x.name for x in r.runs)}")
    return 0


def _preflight(recipe: Recipe, data_dir) -> Optional[int]:
    """Load (or download) the recipe's data before any training; None after printing why it cannot."""
    try:
        return len(data.load(recipe.task, recipe.dataset, data_dir=data_dir).x_train)
    except (data.DataUnavailable, data.DataCorrupt, ImportError) as err:
        print(f"nodeopt reproduce: recipe {recipe.name!r} cannot run, its data is missing: {err}", file=sys.stderr)
        return None


def _run(argv: list[str]) -> tuple[int, float]:
    """Run a child process; its exit code and peak resident memory (MB, from wait4)."""
    proc = subprocess.Popen(argv)
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except KeyboardInterrupt:
        proc.wait()
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024.0


def _per_seed(recipe: Recipe, r: dict, adam_final: Optional[float]) -> dict:
    folder = Path(r["folder"])
    summary = RunDir(folder).read_summary() or {}
    rows = read_metrics(folder)
    higher = summary.get("higher_is_better", True)

    def first(target):
        if target is None:
            return None
        for row in rows:
            m = row["metric"]
            if m is not None and (m >= target if higher else m <= target):
                return row
        return None

    hit, ref = first(recipe.target), first(adam_final)
    nfe_f = [row["nfe_forward"] for row in rows]
    nfe_b = [row["nfe_backward"] for row in rows]
    cuda = summary.get("peak_cuda_bytes")
    return dict(final=summary.get("final_metric"), best=summary.get("best_metric"),
                train_s=summary.get("train_seconds"), iterations=summary.get("iterations"),
                target_s=hit["train_seconds"] if hit else None, target_it=hit["iteration"] if hit else None,
                adam_final_s=ref["train_seconds"] if ref else None,
                nfe_forward=statistics.median(nfe_f) if nfe_f else None,
                nfe_backward=statistics.median(nfe_b) if nfe_b else None,
                peak_mb=cuda / 2 ** 20 if cuda else r["peak_rss_mb"], stopped=summary.get("stopped", "failed"))


def results_table(recipe: Recipe, results: list[dict]) -> list[dict]:
    """One row per run name: every column's mean and std over seeds (None where no seed has it)."""
    adam_final = {r["seed"]: _per_seed(recipe, r, None)["final"] for r in results if r["run"] == "adam"}
    for r in results:
        r.update(_per_seed(recipe, r, adam_final.get(r["seed"]) if r["run"] != "adam" else None))
    table = []
    for name in dict.fromkeys(r["run"] for r in results):
        rs = [r for r in results if r["run"] == name]
        row = dict(run=name, seeds=len(rs), stopped=",".join(sorted({r["stopped"] for r in rs})))
        for col in ("final", "best", "train_s", "target_s", "target_it", "adam_final_s", "nfe_forward",
                    "nfe_backward", "peak_mb"):
            values = [r[col] for r in rs if r[col] is not None]
            row[col] = statistics.mean(values) if values else None
            row[col + "_std"] = statistics.stdev(values) if len(values) > 1 else None
            row[col + "_n"] = len(values)
        table.append(row)
    return table


def _cell(row, col, digits=3):
    v = row[col]
    if v is None:
        return "–"
    text = f"{v:.{digits}g}" if abs(v) < 1000 else f"{v:.0f}"
    if row.get(col + "_std") is not None:
        text += f" ± {row[col + '_std']:.2g}"
    if row[col + "_n"] < row["seeds"]:
        text += f" ({row[col + '_n']}/{row['seeds']})"
    return text


def markdown(recipe: Recipe, table: list[dict]) -> str:
    target = "–" if recipe.target is None else f"{recipe.target:g}"
    lines = [f"| run | final | best | train s | s to {target} | it. to {target} | s to Adam's final | "
             f"NFE fwd/bwd | peak MB |", "|" + "---|" * 9]
    for row in table:
        lines.append(f"| {row['run']} | {_cell(row, 'final', 4)} | {_cell(row, 'best', 4)} | {_cell(row, 'train_s')} | "
                     f"{_cell(row, 'target_s')} | {_cell(row, 'target_it')} | {_cell(row, 'adam_final_s')} | "
                     f"{_cell(row, 'nfe_forward')} / {_cell(row, 'nfe_backward')} | {_cell(row, 'peak_mb')} |")
    return "\n".join(lines)


def _write_table(parent: Path, table: list[dict], results: list[dict]) -> None:
    for name, rows in (("results.csv", table), ("results_per_seed.csv", results)):
        write_csv(parent / name, rows[0], rows)
