"""``nodeopt reproduce``: run a paper's experiment by name and end with a results table.

Each run of the recipe (``nodeopt.cli.recipes``) is one ``nodeopt train`` process, with every
setting written out on its command line (``--dry-run`` prints them), into
``<run-dir>/<run>-seed<k>``. The same command run again continues: a run whose folder holds
a finished run is skipped, an unfinished one (interrupted, killed, or trained for fewer
iterations) is resumed with ``nodeopt train --resume``, a folder without ``config.json`` is
started afresh. A run is finished when its ``summary.json`` says it stopped on its budget
after exactly the planned iterations (and its ``config.json`` planned as many).

Ctrl-C (SIGINT, which reaches the running ``nodeopt train`` too: it shares the process group)
stops the current run after its iteration, with a checkpoint; no further run starts, and the
table of what exists is still printed. Exit codes: 0 when every run asked for finished, 130
(SIGINT) or 143 (SIGTERM) when stopped by a signal, 1 when a run failed or is unfinished,
2 for bad arguments or missing data.

The table has, per run (mean ± std over the seeds that finished): the final and best metric,
training time, the time and iterations to the recipe's target, the time to the same seed's
finished Adam run's final metric, the median NFE per iteration, and the peak memory of the
process (resident set on the CPU, device memory on CUDA); its ``status`` column says which
runs are unfinished or failed, and those never enter the columns. ``results.csv`` and
``results_per_seed.csv`` are rebuilt from every run folder of the recipe under the parent
directory, so ``--only`` keeps the other runs' rows.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .. import data
from ..tasks import CheckpointError, RunDir, read_metrics
from ..tasks.rundir import FINISHED, write_csv
from .defaults import DEFAULT_EPOCHS
from .recipes import RECIPES, Recipe, settings_of
from .train import EXIT_CODES

FLAG_ONLY = ("seminorm",)  # store_true flags
BUDGET = ("iterations", "epochs", "time_budget")  # may differ between the plan and a run it resumes
# Outcomes that a resumed run would only repeat (it continues from the same checkpoint and seed): they are
# reported, not retried. Other failures (a full disk, lost contact) and stop signals are resumed.
FAILED = ("diverged", "solver failure")
EXIT = {signal.SIGINT: EXIT_CODES["SIGINT"], signal.SIGTERM: EXIT_CODES["SIGTERM"]}  # as nodeopt train
SEED_FOLDER = re.compile(r"^(?P<run>.+)-seed(?P<seed>-?\d+)$")


@dataclass
class Planned:
    """One ``nodeopt train`` run of the recipe: its name, seed, folder and (scaled) settings."""

    run: str
    seed: int
    folder: Path
    settings: dict


@dataclass
class Found:
    """What a run's folder holds: ``state`` is new (no config.json), finished, unfinished, failed or blocked.

    ``blocked`` folders hold something that is not this run (other settings, more iterations than
    planned, unreadable files): ``problem`` says what and what to do; nothing is trained there.
    """

    state: str
    done: int = 0
    total: Optional[int] = None
    stopped: str = ""
    problem: str = ""
    reason: str = ""


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


def resume_command(settings: dict, run_dir: str, extra=()) -> list[str]:
    """The ``nodeopt train --resume`` command line that continues one run to its planned length."""
    budget = {k: settings[k] for k in BUDGET if k in settings}
    return ["nodeopt", "train", "--resume", run_dir, *command(budget, run_dir)[2:-2], *extra]


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
    names = [r.name for r in recipe.runs]
    wanted = args.only.split(",") if args.only else names
    unknown = [w for w in wanted if w not in names]
    if unknown:
        p.error(f"argument --only: {recipe.name} has no run {', '.join(unknown)}; its runs are {', '.join(names)}")
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

    def plan_of(name: str, seed: int) -> Planned:
        s = scaled({**settings_of(recipe, next(r for r in recipe.runs if r.name == name)), "seed": seed},
                   args.scale, n_train)
        return Planned(name, seed, parent / f"{name}-seed{seed}", s)

    plan = [plan_of(name, seed) for name in names if name in wanted for seed in seeds]
    extra = [*(["--data-dir", args.data_dir] if args.data_dir else []),
             *(["--device", args.device] if args.device else [])]
    if args.dry_run:
        for run in plan:
            print(shlex.join(command(run.settings, str(run.folder), extra)))
        return 0
    with _Launcher() as launcher:
        records = _run_plan(recipe, plan, [*extra, "--quiet"], launcher)
        on_disk = [plan_of(name, seed) for name, seed in _folders(recipe, parent)]
        records = _every_record(recipe, plan, on_disk, records, parent)
        table = results_table(recipe, records)
        _write_table(parent, table, records)
        print(markdown(recipe, table))
        for departure in recipe.departures:
            print(f"- departs from the original: {departure}")
        return _exit_code(plan, records, launcher.signal)


def _run_plan(recipe: Recipe, plan: list[Planned], extra: list, launcher: "_Launcher") -> dict:
    """Train, resume or skip each planned run in turn until a stop signal; {(run, seed): record} of each visited."""
    records = {}
    for i, run in enumerate(plan):
        if launcher.signal is not None:  # it came between runs
            _stopped(launcher.signal, f"before {run.run}, seed {run.seed} started", len(plan) - i)
            break
        head = f"== {recipe.name}: {run.run}, seed {run.seed}"
        found = inspect(run)
        if found.state == "finished":
            print(f"{head}: finished earlier (summary.json: stopped {found.stopped}, {found.done} of {found.total} "
                  f"iterations), skipped", flush=True)
            records[run.run, run.seed] = _record(run, found)
            continue
        if found.state in ("failed", "blocked"):
            print(f"{head}: {found.problem}", flush=True)
            records[run.run, run.seed] = _record(run, found)
            continue
        if found.state == "unfinished":
            argv = resume_command(run.settings, str(run.folder), extra)
            where = f"stopped at iteration {found.done} of {found.total}" + (
                f" ({found.stopped})" if found.stopped else "")
            start = ("resuming from its last checkpoint" if RunDir(run.folder).file(RunDir.CHECKPOINT).exists()
                     else "no checkpoint yet: training it again from iteration 0")
            print(f"{head}: {where}; {start}: {shlex.join(argv)}", flush=True)
        else:
            argv = command(run.settings, str(run.folder), extra)
            print(f"{head}: {shlex.join(argv)}", flush=True)
        code, peak = launcher.run([sys.executable, "-m", "nodeopt", *argv[1:]])
        records[run.run, run.seed] = _record(run, inspect(run), code, peak, resumed=found.state == "unfinished")
        if launcher.signal is None and code in EXIT.values():  # the child alone was stopped by a signal
            launcher.signal = next(s for s, c in EXIT.items() if c == code)
        if launcher.signal is not None:
            _stopped(launcher.signal, f"{run.run}, seed {run.seed} ended after its current iteration",
                     len(plan) - i - 1)
            break
    return records


def _stopped(signum: int, what: str, left: int) -> None:
    rest = f"; {left} run{'s' * (left > 1)} not started" if left else ""
    print(f"nodeopt reproduce: stopped by {signal.Signals(signum).name}: {what}{rest}; run the same command "
          f"again to continue", file=sys.stderr, flush=True)


class _Launcher:
    """Runs one ``nodeopt train`` child at a time; while open, SIGINT and SIGTERM are remembered, not raised.

    The child shares this process's group, so Ctrl-C reaches it directly (and it stops after its
    iteration); SIGTERM is also passed on, since it is often sent to one process alone (``kill PID``,
    a container's stop). SIGINT is not passed on: it would reach the child twice.
    """

    def __init__(self):
        self.signal: Optional[int] = None
        self.child: Optional[int] = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in EXIT}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame):
        self.signal = self.signal or signum
        if signum == signal.SIGTERM and self.child is not None:
            try:
                os.kill(self.child, signum)
            except ProcessLookupError:
                pass

    def run(self, argv: list[str]) -> tuple[int, float]:
        """Run a child process to its end; its exit code and peak resident memory (MB, from wait4)."""
        proc = subprocess.Popen(argv)
        self.child = proc.pid
        try:
            _, status, usage = os.wait4(proc.pid, 0)  # a signal's handler returns, and wait4 goes on (PEP 475)
        finally:
            self.child = None
        proc.returncode = os.waitstatus_to_exitcode(status)
        return proc.returncode, usage.ru_maxrss / 1024.0


def inspect(run: Planned) -> Found:
    """What ``run.folder`` holds, measured against the plan (see :class:`Found`)."""
    folder = RunDir(run.folder)
    if not folder.file(RunDir.CONFIG).exists():
        return Found("new")
    again = f"move {run.folder} away (or choose another --run-dir) to train the run again"
    try:
        config = folder.read_config()
        rows = folder.read_metrics()
    except CheckpointError as err:
        return Found("blocked", problem=f"{err}; {again}", reason="unreadable files")
    total = _planned_total(run.settings, config)
    changed = _differences(run.settings, config["settings"])
    if changed:
        return Found("blocked", total=total, reason="other settings", problem=(
            f"{run.folder} holds a run with other settings than the recipe's ({'; '.join(changed)}); {again}"))
    summary = folder.read_summary() or {}
    done = max(int(rows[-1]["iteration"]) if rows else 0, _int(summary.get("iterations")))
    stopped = str(summary.get("stopped") or "")
    if stopped in FINISHED and summary.get("iterations") == total == config.get("resolved_iterations"):
        return Found("finished", done, total, stopped)
    if done > total:
        return Found("blocked", done, total, stopped, reason="longer than planned", problem=(
            f"{run.folder} holds {done} iterations, more than the {total} planned (a run of another --scale?); "
            f"{again}"))
    if stopped in FAILED and summary.get("iterations") == done:
        return Found("failed", done, total, stopped, problem=(
            f"failed earlier (summary.json: stopped {stopped} at iteration {done}), not retried: resuming would "
            f"repeat it; {again}"))
    return Found("unfinished", done, total, stopped)


def _planned_total(settings: dict, config: dict) -> int:
    """The iterations the plan asks of a run: its --iterations, or its --epochs in the run's batches."""
    if settings.get("iterations"):
        return settings["iterations"]
    if settings.get("epochs") and config.get("batches_per_epoch"):
        return settings["epochs"] * config["batches_per_epoch"]
    return _int(config.get("resolved_iterations"))


def _differences(settings: dict, saved: dict) -> list[str]:
    """The plan's settings (but its budget) that the run in a folder does not share, in flags' words."""
    out = []
    for key, value in settings.items():
        if key in BUDGET or key not in saved:
            continue
        if key == "hidden" and settings.get("task") == "timeseries" and isinstance(value, (list, tuple)):
            value = value[0]  # as nodeopt train stores it
        if isinstance(value, tuple):
            value = list(value)
        if value != saved[key]:
            out.append(f"--{key.replace('_', '-')} {saved[key]!r} there, {value!r} in the recipe")
    return out


def _int(value) -> int:
    return value if isinstance(value, int) else 0


def _status(found: Found, code: Optional[int]) -> str:
    """The table's word for a run: finished, unfinished (k of n iterations), failed (why), blocked (why)."""
    if found.state == "finished":
        return "finished"
    if found.state == "failed":
        return f"failed ({found.stopped})"
    if found.state == "blocked":
        return f"blocked ({found.reason})"
    if code is not None and code not in (0, *EXIT.values()):
        return f"failed ({'killed by ' + signal.Signals(-code).name if code < 0 else f'exit code {code}'})"
    if found.state == "new":
        return "not started"
    return f"unfinished ({found.done} of {found.total} iterations)"


def _record(run: Planned, found: Found, code: Optional[int] = None, peak: Optional[float] = None,
            resumed: bool = False) -> dict:
    return dict(run=run.run, seed=run.seed, folder=str(run.folder), status=_status(found, code),
                finished=found.state == "finished", iterations=found.done, planned_iterations=found.total,
                stopped=found.stopped, exit_code=code, peak_rss_mb=peak, resumed=resumed)


def _folders(recipe: Recipe, parent: Path) -> list[tuple[str, int]]:
    """(run, seed) of every run folder of the recipe under ``parent`` that holds a config.json."""
    names = {r.name for r in recipe.runs}
    found = []
    for path in sorted(parent.iterdir()) if parent.is_dir() else ():
        m = SEED_FOLDER.match(path.name)
        if m and m["run"] in names and (path / RunDir.CONFIG).exists():
            found.append((m["run"], int(m["seed"])))
    return found


def _every_record(recipe: Recipe, plan: list[Planned], on_disk: list[Planned], visited: dict,
                  parent: Path) -> list[dict]:
    """A record of every planned run and of every run folder on disk, in the recipe's order, then by seed.

    The peak resident memory is not in a run's folder: it comes from this command's run, else
    from the previous ``results_per_seed.csv`` (the larger of the two for a resumed run).
    """
    before = {}
    try:
        with open(parent / "results_per_seed.csv", newline="") as f:
            before = {(r.get("run"), r.get("seed")): r for r in csv.DictReader(f)}
    except (OSError, csv.Error, UnicodeDecodeError):
        pass
    out = {}
    for run in [*plan, *on_disk]:
        key = (run.run, run.seed)
        if key in out:
            continue
        r = visited.get(key) or _record(run, inspect(run))
        old = _float((before.get((run.run, str(run.seed))) or {}).get("peak_rss_mb"))
        if r["exit_code"] is None:  # not run by this command
            r["peak_rss_mb"] = old
        elif r["resumed"] and old is not None:
            r["peak_rss_mb"] = max(old, r["peak_rss_mb"])
        out[key] = r
    order = [r.name for r in recipe.runs]
    return sorted(out.values(), key=lambda r: (order.index(r["run"]), r["seed"]))


def _float(text) -> Optional[float]:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _exit_code(plan: list[Planned], records: list[dict], stop: Optional[int]) -> int:
    if stop is not None:
        return EXIT[stop]
    asked = {(run.run, run.seed) for run in plan}
    left = [r for r in records if (r["run"], r["seed"]) in asked and not r["finished"]]
    if left:
        which = ", ".join(f"{r['run']} seed {r['seed']} ({r['status']})" for r in left)
        print(f"nodeopt reproduce: {len(left)} of {len(plan)} runs did not finish: {which}; see above "
              f"(the same command again continues the unfinished ones)", file=sys.stderr)
        return 1
    return 0


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


def _per_seed(recipe: Recipe, r: dict, adam_final: Optional[float]) -> dict:
    """One run's numbers; the comparisons (time to the target, to Adam's final) for a finished run only."""
    folder = Path(r["folder"])
    summary = RunDir(folder).read_summary() or {}
    try:
        rows = read_metrics(folder)
    except CheckpointError:
        rows = []
    higher = summary.get("higher_is_better", True)

    def first(target):
        if target is None or not r["finished"]:
            return None
        for row in rows:
            m = row["metric"]
            if m is not None and (m >= target if higher else m <= target):
                return row
        return None

    hit, ref = first(recipe.target), first(adam_final)
    nfe_f = [row["nfe_forward"] for row in rows if row["nfe_forward"] is not None]
    nfe_b = [row["nfe_backward"] for row in rows if row["nfe_backward"] is not None]
    cuda = summary.get("peak_cuda_bytes")
    return dict(final=summary.get("final_metric"), best=summary.get("best_metric"),
                train_s=summary.get("train_seconds"), higher_is_better=higher,
                target_s=hit["train_seconds"] if hit else None, target_it=hit["iteration"] if hit else None,
                adam_final_s=ref["train_seconds"] if ref else None,
                nfe_forward=statistics.median(nfe_f) if nfe_f else None,
                nfe_backward=statistics.median(nfe_b) if nfe_b else None,
                peak_mb=cuda / 2 ** 20 if cuda else r["peak_rss_mb"])


COLUMNS = ("final", "best", "train_s", "target_s", "target_it", "adam_final_s", "nfe_forward", "nfe_backward",
           "peak_mb")


def results_table(recipe: Recipe, records: list[dict]) -> list[dict]:
    """One row per run name: every column's mean and std over the seeds that finished (None where none has it).

    Adam's final metric, which the other runs are timed to, comes from a finished Adam run of the same seed.
    """
    for r in records:
        if r["run"] == "adam":
            r.update(_per_seed(recipe, r, None))
    adam_final = {r["seed"]: r["final"] for r in records if r["run"] == "adam" and r["finished"]}
    for r in records:
        if r["run"] != "adam":
            r.update(_per_seed(recipe, r, adam_final.get(r["seed"])))
    table = []
    for name in dict.fromkeys(r["run"] for r in records):
        rs = [r for r in records if r["run"] == name]
        done = [r for r in rs if r["finished"]]
        row = dict(run=name, seeds=len(rs), finished=len(done), status=_row_status(rs),
                   higher_is_better=all(r["higher_is_better"] for r in rs))
        for col in COLUMNS:
            values = [r[col] for r in done if r[col] is not None]
            row[col] = statistics.mean(values) if values else None
            row[col + "_std"] = statistics.stdev(values) if len(values) > 1 else None
            row[col + "_n"] = len(values)
        table.append(row)
    return table


def _row_status(rs: list[dict]) -> str:
    if all(r["finished"] for r in rs):
        return "finished"
    if len(rs) == 1:
        return rs[0]["status"]
    rest = "; ".join(f"seed {r['seed']} {r['status']}" for r in rs if not r["finished"])
    return f"{sum(r['finished'] for r in rs)} of {len(rs)} seeds finished; {rest}"


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
    lines = [f"| run | status | final | best | train s | s to {target} | it. to {target} | s to Adam's final | "
             f"NFE fwd/bwd | peak MB |", "|" + "---|" * 10]
    for row in table:
        lines.append(f"| {row['run']} | {row['status']} | {_cell(row, 'final', 4)} | {_cell(row, 'best', 4)} | "
                     f"{_cell(row, 'train_s')} | {_cell(row, 'target_s')} | {_cell(row, 'target_it')} | "
                     f"{_cell(row, 'adam_final_s')} | {_cell(row, 'nfe_forward')} / {_cell(row, 'nfe_backward')} | "
                     f"{_cell(row, 'peak_mb')} |")
    return "\n".join(lines)


def _write_table(parent: Path, table: list[dict], records: list[dict]) -> None:
    for name, rows in (("results.csv", table), ("results_per_seed.csv", records)):
        write_csv(parent / name, rows[0], rows)
