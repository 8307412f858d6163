"""Fault-injection soak: short ``nodeopt train`` runs killed at random moments, resumed until done.

Run from the repository root::

    python -m benchmarks.soak                  # 20 runs (about 10 minutes on 2 cores)
    python -m benchmarks.soak --runs 4 --seed 1

Each run is a small ConvODENet on digits (width 4, rk4, batch 16, a checkpoint every iteration,
so that kills land during checkpoint writes as well as between them). A run is started, then
killed after a random delay with SIGKILL, SIGINT or SIGTERM (drawn at random; the first kill of
some runs comes before the first checkpoint), then resumed with ``--resume``, again and again
until it exits 0 (or its summary says it finished: a kill can land after that). Afterwards every run directory is checked: ``config.json`` reads, every
iteration is in ``metrics.csv`` exactly once, the checkpoint loads, and the final parameters equal
those of one uninterrupted run of the same settings (bit for bit). Every stderr is searched for
"Traceback". Two processes started at once on one directory: exactly one may train.

The test suite runs a short version (tests/test_soak.py); the figures of a long one are in
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from nodeopt.tasks import CheckpointError, RunDir
from nodeopt.tasks.rundir import FINISHED

ARGS = ["--task", "image", "--dataset", "digits", "--width", "4", "--batch-size", "16", "--method", "rk4",
        "--optimizer", "snopt", "--snopt-freq", "3", "--eval-every", "4", "--checkpoint-every", "1", "--quiet",
        "--no-plots", "--device", "cpu"]
SIGNALS = (signal.SIGKILL, signal.SIGINT, signal.SIGTERM)


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nodeopt", "train", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def reference(run_dir: Path, iterations: int) -> dict:
    """The parameters of one uninterrupted run."""
    proc = _start([*ARGS, "--iterations", str(iterations), "--run-dir", str(run_dir)])
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"the uninterrupted run failed: {err[-2000:]}")
    return RunDir(run_dir).load_checkpoint()["model"]


def soaked_run(run_dir: Path, iterations: int, rng: random.Random, max_delay: float, max_kills: int) -> dict:
    """Start, kill at random moments, resume until done; what happened."""
    kills, tracebacks, attempts, seen = [], 0, 0, []
    while True:
        resume = (run_dir / RunDir.CONFIG).exists()
        args = [*ARGS, "--iterations", str(iterations)] + (["--resume", str(run_dir)] if resume
                                                            else ["--run-dir", str(run_dir)])
        proc = _start(args)
        attempts += 1
        if len(kills) < max_kills:
            try:
                proc.wait(timeout=rng.uniform(0.2, max_delay))
            except subprocess.TimeoutExpired:
                sig = rng.choice(SIGNALS)
                proc.send_signal(sig)
                kills.append(sig.name)
        _, err = proc.communicate()
        tracebacks += err.count("Traceback")
        if "Traceback" in err:
            seen.append(f"after {kills[-1] if kills else 'no kill'}: {err[err.index('Traceback'):][-600:]}")
        summary = RunDir(run_dir).read_summary() or {}
        if proc.returncode == 0 or (summary.get("stopped") in FINISHED and summary.get("iterations") == iterations):
            break  # finished (a kill after the summary was written still leaves a finished run)
        if attempts > max_kills + 5:
            raise RuntimeError(f"{run_dir} did not finish after {attempts} attempts: {err[-2000:]}")
    return dict(kills=kills, attempts=attempts, tracebacks=tracebacks, seen=seen)


def check(run_dir: Path, iterations: int, expected: dict) -> dict:
    """Whether the run directory is consistent and ends where the uninterrupted run does."""
    run = RunDir(run_dir)
    problems = []
    try:
        run.read_config()
        rows = [int(r["iteration"]) for r in run.read_metrics()]
        state = run.load_checkpoint()
    except CheckpointError as err:
        return dict(consistent=False, problems=[str(err)], lost=None, duplicated=None, equal=False)
    lost = len(set(range(1, iterations + 1)) - set(rows))
    duplicated = len(rows) - len(set(rows))
    if rows != list(range(1, iterations + 1)):
        problems.append(f"metrics.csv iterations {rows}")
    equal = all(torch.equal(state["model"][k], v) for k, v in expected.items())
    if not equal:
        problems.append("final parameters differ from the uninterrupted run's")
    if list(run_dir.glob(".*.part")):
        problems.append("temporary files left behind")
    return dict(consistent=not problems, problems=problems, lost=lost, duplicated=duplicated, equal=equal)


def concurrent_starts(run_dir: Path, iterations: int) -> dict:
    """Two ``nodeopt train`` aimed at one directory at the same moment: how many trained, what the other said."""
    procs = [_start([*ARGS, "--iterations", str(iterations), "--run-dir", str(run_dir)]) for _ in range(2)]
    results = [(p.wait(), p.communicate()[1]) for p in procs]
    codes = sorted(code for code, _ in results)
    refused = [err for code, err in results if code == 2]
    return dict(codes=codes, refused_message=refused[0].strip().splitlines()[-1] if refused else "",
                tracebacks=sum(err.count("Traceback") for _, err in results))


def soak(folder: Path, runs: int, iterations: int, seed: int, max_delay: float = 4.0, max_kills: int = 3) -> dict:
    rng = random.Random(seed)
    expected = reference(folder / "reference", iterations)
    out = dict(runs=runs, iterations=iterations, seed=seed, kills={s.name: 0 for s in SIGNALS}, recovered=0,
               rows_lost=0, rows_duplicated=0, tracebacks=0, problems=[])
    for i in range(runs):
        run_dir = folder / f"run{i}"
        r = soaked_run(run_dir, iterations, rng, max_delay, max_kills)
        c = check(run_dir, iterations, expected)
        for name in r["kills"]:
            out["kills"][name] += 1
        out["tracebacks"] += r["tracebacks"]
        out["recovered"] += c["consistent"]
        out["rows_lost"] += c["lost"] or 0
        out["rows_duplicated"] += c["duplicated"] or 0
        out["problems"] += [f"run{i}: {p}" for p in c["problems"]] + [f"run{i}: {t}" for t in r["seen"]]
    out["concurrent"] = concurrent_starts(folder / "concurrent", iterations)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = soak(Path(tmp), args.runs, args.iterations, args.seed)
    result["seconds"] = time.perf_counter() - t0
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    ok = (result["recovered"] == args.runs and not result["rows_lost"] and not result["rows_duplicated"]
          and not result["tracebacks"] and result["concurrent"]["codes"] == [0, 2])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
