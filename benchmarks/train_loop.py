"""The training loop's own overhead: a ``nodeopt train`` iteration against a bare one.

Run from the repository root::

    python -m benchmarks.train_loop            # about two minutes
    python -m benchmarks.train_loop --quick

On the ``nodeopt train`` default (digits, ConvODENet width 32, batch 64, SNOpt in
front of SGD, symplectic adjoint, dopri5 at 1e-3), two identical models see the
same batches: one through :class:`nodeopt.tasks.Trainer` (batch selection, NFE
counting, the metrics row written and flushed to ``metrics.csv``, the SIGINT
handler; evaluation and checkpoints switched off by intervals larger than the
run), the other through the bare loop a user would write (``train_itr_setup``,
``zero_grad``, forward, ``backward``, ``precond.step``, ``optimizer.step``,
``loss.item()``). The learning rate is 1e-9 so that the weights, and hence the
solver's step counts, stay put. Blocks of ``--block`` iterations alternate between
the two (inside one ``fit()``); the overhead is the median over rounds of the
per-round ratio of mean iteration times, minus one. One thread.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time

import torch

from nodeopt import data
from nodeopt.tasks import Budget, RunDir, Trainer, make_optimizers, make_task

from .common import median, quartiles


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--block", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    rounds = 3 if args.quick else args.rounds
    torch.set_num_threads(1)
    task = make_task("image", data.digits(), "cpu")
    torch.manual_seed(0)
    model_a = task.build_model(width=32, rtol=1e-3, atol=1e-3, gradient="symplectic")
    model_b = copy.deepcopy(model_a)
    opts_a, pre_a = make_optimizers("snopt", model_a, lr=1e-9, momentum=0.9)
    opts_b, pre_b = make_optimizers("snopt", model_b, lr=1e-9, momentum=0.9)
    total = (rounds + 1) * args.block
    trainer = Trainer(task, model_a, opts_a, RunDir(tempfile.mkdtemp()), batch_size=64, precond=pre_a,
                      eval_every=10 * total, checkpoint_every=10 * total)
    bare_iteration = 0

    def bare_block():
        nonlocal bare_iteration
        t0 = time.perf_counter()
        for _ in range(args.block):
            _, idx = trainer.batch(bare_iteration)
            pre_b.train_itr_setup()
            opts_b[0].zero_grad(set_to_none=True)
            loss = task.loss(model_b, idx)
            loss.backward()
            pre_b.step()
            opts_b[0].step()
            loss.item()
            bare_iteration += 1
        return (time.perf_counter() - t0) / args.block

    # One fit() over every loop iteration; after each block of them, the callback times that
    # block and runs a bare block (so fit()'s start-up is not counted, and the two interleave).
    loop_s, bare_s = [], []
    mark = [None]

    def after_iteration(row):
        if row["iteration"] % args.block:
            return
        now = time.perf_counter()
        if mark[0] is not None:  # the first block is a warm-up (SNOpt's first refreshes)
            loop_s.append((now - mark[0]) / args.block)
        bare = bare_block()
        if mark[0] is not None:
            bare_s.append(bare)
        mark[0] = time.perf_counter()

    trainer.on_iteration = after_iteration
    trainer.fit(Budget(total))
    ratios = [a / b for a, b in zip(loop_s, bare_s)]
    print(f"iterations per round: {args.block}, rounds: {rounds}")
    print(f"nodeopt train loop: median {1e3 * median(loop_s):.1f} ms/iteration")
    print(f"bare loop:          median {1e3 * median(bare_s):.1f} ms/iteration")
    q1, q3 = quartiles(ratios)
    print(f"overhead: {100 * (median(ratios) - 1):+.2f} % (median of per-round ratios; "
          f"quartiles {100 * (q1 - 1):+.2f} %, {100 * (q3 - 1):+.2f} %)")


if __name__ == "__main__":
    main()
