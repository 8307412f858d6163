"""``nodeopt bench NAME [ARGS...]``: run one of the benchmarks of a source checkout (``benchmarks/``)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

BENCHMARKS = ("solvers", "gradients", "optimizers", "snopt_stability", "snopt_stress", "train_loop", "distributed",
              "soak", "peers")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHMARKS:
        known = ", ".join(BENCHMARKS)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"nodeopt bench: unknown benchmark {argv[0]!r}; choose one of {known}", file=sys.stderr)
            return 2
        print(f"usage: nodeopt bench {{{','.join(BENCHMARKS)}}} [ARGS...]  (ARGS go to the benchmark; --help)")
        return 0 if argv else 2
    root = Path(__file__).resolve().parents[2]
    if not (root / "benchmarks" / f"{argv[0]}.py").is_file():
        print(f"nodeopt bench: the benchmarks live in nodeopt's source checkout (benchmarks/{argv[0]}.py was not "
              f"found next to this installation, {root}); clone the repository and run it there", file=sys.stderr)
        return 2
    sys.path.insert(0, str(root))
    module = importlib.import_module(f"benchmarks.{argv[0]}")
    sys.argv = [f"nodeopt bench {argv[0]}", *argv[1:]]
    return module.main(argv[1:]) or 0
