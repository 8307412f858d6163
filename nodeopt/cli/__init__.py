"""Layer 6: the command line: ``nodeopt train``, ``reproduce``, ``plot`` and ``bench``."""

from __future__ import annotations

import os
import sys

COMMANDS = ("train", "reproduce", "plot", "bench")


def main(argv=None) -> int:
    """``nodeopt COMMAND ...``: dispatch to the command's own parser."""
    try:
        return _dispatch(argv)
    except BrokenPipeError:  # e.g. `nodeopt reproduce --list | head`: the reader left, nothing went wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:  # Ctrl-C while the command was still importing torch: nothing had started
        print("nodeopt: interrupted before the command started", file=sys.stderr)
        return 130


def _dispatch(argv) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: nodeopt {train,reproduce,plot,bench} ...\n\n"
              "  train      train a neural ODE on one dataset (nodeopt train --help)\n"
              "  reproduce  run a paper's experiment by name (nodeopt reproduce --list)\n"
              "  plot       overlay the curves of run directories in one PNG (nodeopt plot --help)\n"
              "  bench      run a benchmark from a source checkout: solvers, gradients, optimizers, ...")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        from .train import main as train
        return train(rest)
    if command == "reproduce":
        from .reproduce import main as reproduce
        return reproduce(rest)
    if command == "bench":
        from .bench import main as bench
        return bench(rest)
    if command == "plot":
        from .plot import main as plot
        return plot(rest)
    print(f"nodeopt: unknown command {command!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
    return 2
