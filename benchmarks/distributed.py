"""Training on 1 and 2 processes, and what the processes send each other.

Run from the repository root::

    python -m benchmarks.distributed              # a few minutes
    python -m benchmarks.distributed --quick

Two parts, both on the ``nodeopt train`` default (digits, ConvODENet width 32, global batch
64, SNOpt in front of SGD, symplectic adjoint, dopri5 at 1e-3):

* ``speed``: iterations per second of training (``train_seconds`` from ``summary.json``,
  which excludes start-up and evaluation) for one process on one thread, one process on two
  threads, and ``nodeopt train --nproc 2`` (torchrun, gloo, one thread per process). The
  settings alternate within each round; the table holds the median over rounds.
* ``bytes``: what one rank contributes per iteration to DDP's gradient all-reduce (counted
  by a DDP communication hook, bucket by bucket) against what SNOpt sends per refresh
  (its own statistic, ``SNOpt.last_stats.bytes_all_reduced``: its factors go in one buffer),
  and the loop's own per-iteration message (loss, clock, stop requests: every other byte
  through ``torch.distributed.all_reduce``), in a 2-process gloo run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from collections import defaultdict

import torch

from nodeopt import data
from nodeopt.tasks import Budget, RunDir, Trainer, make_optimizers, make_task
from nodeopt.tasks.distributed import World

from .common import median

SETTINGS = {
    "1 process, 1 thread": dict(nproc=None, threads=1),
    "1 process, 2 threads": dict(nproc=None, threads=2),
    "2 processes (torchrun), 1 thread each": dict(nproc=2, threads=1),
}


def _train(iterations: int, nproc, threads: int, run_dir: str) -> dict:
    command = [sys.executable, "-m", "nodeopt", "train", "--iterations", str(iterations), "--eval-every",
               str(10 * iterations), "--checkpoint-every", str(10 * iterations), "--quiet", "--no-plots",
               "--run-dir", run_dir]
    if nproc:
        command += ["--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stderr[-2000:]}")
    return RunDir(run_dir).read_summary()


def speed(iterations: int, rounds: int) -> dict:
    rates = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for name, s in SETTINGS.items():
                summary = _train(iterations, s["nproc"], s["threads"], os.path.join(tmp, f"{r}-{len(rates[name])}"
                                                                                   f"-{s['threads']}-{s['nproc']}"))
                rates[name].append(summary["iterations"] / summary["train_seconds"])
                print(f"round {r + 1}: {name}: {rates[name][-1]:.2f} it/s", flush=True)
    return {name: dict(median=median(v), all=v) for name, v in rates.items()}


# ---- bytes: a 2-process gloo run in this machine ------------------------------------------------
def _bytes_worker(rank: int, port: int, iterations: int, run_dir: str, out) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    world = World(rank=rank, size=2, local_rank=rank, local_size=2)
    # The nodeopt train default: digits, ConvODENet width 32, SNOpt (lr 0.02) in front of SGD (momentum 0.9).
    task = make_task("image", data.digits(), "cpu")
    torch.manual_seed(0)
    model = task.build_model(width=32, rtol=1e-3, atol=1e-3, method="dopri5", gradient="symplectic")
    optimizers, precond = make_optimizers("snopt", model, lr=0.02, momentum=0.9)
    trainer = Trainer(task, model, optimizers, RunDir(run_dir), batch_size=64, precond=precond,
                      eval_every=10 * iterations, checkpoint_every=10 * iterations, world=world)
    sent = defaultdict(int)  # what this rank contributes: DDP's buckets, SNOpt's factors, everything all-reduced
    python_all_reduce = dist.all_reduce

    def ddp_hook(state, bucket):  # DDP's default: the bucket's mean over the ranks
        sent["ddp"] += bucket.buffer().numel() * bucket.buffer().element_size()
        fut = python_all_reduce(bucket.buffer().div_(2), async_op=True).get_future()
        return fut.then(lambda f: f.value()[0])

    trainer.train_model.register_comm_hook(None, ddp_hook)

    def counting_all_reduce(tensor, *args, **kwargs):  # every all-reduce outside DDP's buckets
        sent["all_reduce"] += tensor.numel() * tensor.element_size()
        return python_all_reduce(tensor, *args, **kwargs)

    def after_iteration(row):
        sent["snopt"] += precond.last_stats.bytes_all_reduced

    trainer.on_iteration = after_iteration if rank == 0 else None
    dist.all_reduce = counting_all_reduce
    try:
        trainer.fit(Budget(iterations))
    finally:
        dist.all_reduce = python_all_reduce
    if rank == 0:
        out.update(ddp=sent["ddp"], snopt=sent["snopt"], loop=sent["all_reduce"] - sent["snopt"],
                   iterations=iterations, refreshes=precond.refreshes,
                   parameter_bytes=sum(p.numel() * p.element_size() for p in model.parameters()))
    dist.destroy_process_group()


def bytes_sent(iterations: int) -> dict:
    import torch.multiprocessing as mp
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = mp.Manager().dict()
        mp.spawn(_bytes_worker, args=(port, iterations, os.path.join(tmp, "run"), out), nprocs=2, join=True)
        return dict(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="speed,bytes")
    parser.add_argument("--iterations", type=int, default=100, help="iterations per timed run")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (settings alternate within one)")
    parser.add_argument("--quick", action="store_true", help="smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.iterations, args.rounds = 10, 1
    parts = args.parts.split(",")
    result = {}
    if "bytes" in parts:
        b = bytes_sent(max(args.iterations // 2, 12))
        result["bytes"] = b
        print(f"\nper iteration: DDP gradients {b['ddp'] / b['iterations']:,.0f} B (parameters: "
              f"{b['parameter_bytes']:,} B), loop bookkeeping {b['loop'] / b['iterations']:,.0f} B; "
              f"SNOpt {b['snopt'] / b['refreshes']:,.0f} B per refresh ({b['refreshes']} refreshes in "
              f"{b['iterations']} iterations)")
    if "speed" in parts:
        result["speed"] = speed(args.iterations, args.rounds)
        print("\n| setting | iterations / s (median) | all rounds |\n|---|---|---|")
        base = result["speed"]["1 process, 1 thread"]["median"]
        for name, v in result["speed"].items():
            print(f"| {name} | {v['median']:.2f} ({v['median'] / base:.2f}×) | "
                  f"{', '.join(f'{x:.2f}' for x in v['all'])} |")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
