"""What ``nodeopt train`` shows a person: a progress bar (or logged evaluations), plots, the closing line."""

from __future__ import annotations

import logging
import math
import sys

from ..tasks import RunDir, Summary

logger = logging.getLogger("nodeopt.train")


class _Bar:
    def __init__(self, tqdm, total: int, initial: int):
        self.bar = tqdm(total=total, initial=initial, unit="it", dynamic_ncols=True)
        self.last_metric = None

    def update(self, row: dict) -> None:
        if row.get("metric") is not None:
            self.last_metric = row["metric"]
        post = dict(loss=significant(row["loss"]), nfe=f"{row['nfe_forward']}/{row['nfe_backward']}")
        if self.last_metric is not None:
            post["metric"] = significant(self.last_metric)
        if row.get("t1") is not None:
            post["t1"] = f"{row['t1']:.3f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


class _Log:
    """Without a terminal (or tqdm): the evaluations, one log line each."""

    def update(self, row: dict) -> None:
        if row.get("metric") is not None:
            logger.info("iteration %d: loss %s, metric %s, NFE %s/%s, %.1f s", row["iteration"],
                        significant(row["loss"]), significant(row["metric"]), row["nfe_forward"],
                        row["nfe_backward"], row["train_seconds"])

    def close(self) -> None:
        pass


def progress(wanted: bool, total: int, initial: int):
    """An object with ``update(row)`` and ``close()``: a tqdm bar on a terminal, else logged evaluations."""
    if wanted and sys.stderr.isatty():
        try:
            from tqdm import tqdm
        except ImportError:
            pass
        else:
            return _Bar(tqdm, total, initial)
    return _Log()


def significant(value, digits: int = 4) -> str:
    """``value`` to ``digits`` significant digits, trailing zeros kept: 0.9861, 3.012, 1.000; "n/a" if unknown.

    The metrics are measured on a few hundred test examples, so further digits are noise.
    """
    if value is None or not math.isfinite(value):
        return "n/a" if value is None or math.isnan(value) else str(value)
    shown = f"{value:#.{digits}g}"
    return shown[:-1] if shown.endswith(".") else shown  # 1235. -> 1235


def print_summary(summary: Summary, seconds: float) -> None:
    """The closing line of ``nodeopt train``: metrics to 4 significant digits, seconds to 0.1 s."""
    print(f"{summary.task}/{summary.dataset} with {summary.optimizer} ({summary.gradient}): "
          f"{summary.metric_name} {significant(summary.final_metric)} (best {significant(summary.best_metric)}) "
          f"after {summary.iterations} "
          f"iterations, {summary.train_seconds:.1f} s of training in all ({seconds:.1f} s for this command); "
          f"stopped: {summary.stopped}; run directory {summary.run_dir}")


def plots(run: RunDir, task, model) -> None:
    """``curves.png`` and, for 2-D densities, ``density.png`` (a warning when matplotlib is missing)."""
    try:
        from ..tasks import plots as draw
        draw.plot_curves([run.path], run.file("curves.png"), metric_name=task.metric,
                         higher_is_better=task.higher_is_better)
        if task.kind == "density" and task.dataset.dim == 2:
            draw.plot_density_2d(model, task.dataset.x_test, run.file("density.png"))
    except ImportError as err:
        logger.warning("no plots: %s", err)
