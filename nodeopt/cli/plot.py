"""``nodeopt plot RUN_DIR...``: overlay runs (loss and metric against training time and iterations).

Each run's metric is read from its run directory; runs that measure different metrics (test
accuracy, test NLL) are drawn in separate rows of panels, one pair of rows per metric.
"""

from __future__ import annotations

import argparse
import sys

from ..tasks import RunDir, plots


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="nodeopt plot", description=__doc__.split(": ", 1)[1].split("\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories written by nodeopt train")
    parser.add_argument("--out", default="comparison.png", help="the PNG to write (default comparison.png)")
    parser.add_argument("--labels", nargs="+", default=None, help="one label per run (default: folder names)")
    args = parser.parse_args(argv)
    for run in args.runs:
        if not RunDir(run).file(RunDir.METRICS).is_file():
            parser.error(f"argument RUN_DIR: {run} has no {RunDir.METRICS} (is it a nodeopt run directory?)")
    if args.labels is not None and len(args.labels) != len(args.runs):
        parser.error(f"argument --labels: {len(args.labels)} labels for {len(args.runs)} runs")
    try:
        out = plots.plot_curves(args.runs, args.out, labels=args.labels)
    except ImportError as err:
        print(f"nodeopt plot: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
