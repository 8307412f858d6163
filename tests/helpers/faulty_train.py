"""``nodeopt train`` with a fault injected at one rank, for the torchrun tests in tests/test_torchrun.py.

Usage (under torchrun): ``faulty_train.py KIND RANK ITERATION MARKER -- TRAIN ARGS...`` where KIND is
``raise`` (the rank raises a RuntimeError), ``hang`` (it stops answering), ``kill`` (it is killed
with SIGKILL) or ``sigterm`` (it alone receives SIGTERM). Each fault happens once: MARKER records
that it did, so a restarted attempt runs cleanly.
"""

import os
import signal
import sys
import time

from nodeopt.cli import main
from nodeopt.tasks.loop import Trainer

kind, rank, iteration, marker = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
train_args = sys.argv[sys.argv.index("--") + 1:]
original = Trainer._iteration


def faulty(self):
    if self.world.rank == rank and self.progress.iteration + 1 == iteration and not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(f"{kind} at iteration {iteration}\n")
        if kind == "raise":
            raise RuntimeError("injected fault")
        if kind == "hang":
            time.sleep(600)
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
    return original(self)


Trainer._iteration = faulty
sys.exit(main(["train", *train_args]))
