"""Plots and printed numbers a person reads: tick labels on every axis, metric names per task, rounding, modes."""

import math
import os

import pytest

from nodeopt.cli import main
from nodeopt.cli.report import print_summary
from nodeopt.tasks import RunDir, Summary
from nodeopt.tasks import plots

pytest.importorskip("matplotlib")

ACCURACY, NLL = ("test accuracy", True), ("test NLL (nats)", False)


def _run(tmp_path, name, losses, metrics, metric=ACCURACY, task="image"):
    """A run directory with one metrics row per loss (an evaluation every 10 rows) and its summary."""
    run = RunDir(tmp_path / name)
    run.open_metrics()
    for i, loss in enumerate(losses, 1):
        run.append_metrics(dict(iteration=i, epoch=0, train_seconds=0.1 * i, wall_seconds=0.12 * i, loss=loss,
                                metric=metrics[(i - 1) // 10] if i % 10 == 0 else None,
                                nfe_forward=20, nfe_backward=40))
    run.close()
    run.write_summary(Summary(run_dir=str(run.path), task=task, dataset="d", optimizer="adam", gradient="symplectic",
                              metric_name=metric[0], higher_is_better=metric[1], iterations=len(losses),
                              train_seconds=0.1 * len(losses), wall_seconds=0.12 * len(losses),
                              final_metric=metrics[-1], best_metric=max(metrics) if metric[1] else min(metrics),
                              stopped="budget"))
    return run.path


def _geometric(first, last, n=50):
    return [first * (last / first) ** (k / (n - 1)) for k in range(n)]


def _linear(first, last, n=50):
    return [first + (last - first) * k / (n - 1) for k in range(n)]


def _labels(axis):
    """The non-empty tick labels drawn inside the axis's view, major and minor, with their text objects."""
    lo, hi = sorted(axis.get_view_interval())
    slack = 1e-9 * max(abs(lo), abs(hi), 1e-300)
    out = []
    for locs, texts in ((axis.get_majorticklocs(), axis.get_majorticklabels()),
                        (axis.get_minorticklocs(), axis.get_minorticklabels())):
        out += [t for loc, t in zip(locs, texts) if lo - slack <= loc <= hi + slack and t.get_text().strip()]
    return out


def _assert_readable(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            labels = _labels(axis)
            where = f"{name} axis of {ax.get_ylabel()!r} against {ax.get_xlabel()!r} ({axis.get_scale()})"
            assert len(labels) >= 2, f"{where}: tick labels {[t.get_text() for t in labels]}"
            spans = sorted((b.y0, b.y1) if name == "y" else (b.x0, b.x1)
                           for b in (t.get_window_extent(renderer) for t in labels))
            for (_, end), (start, _) in zip(spans, spans[1:]):
                assert end <= start + 1, f"{where}: tick labels {[t.get_text() for t in labels]} overlap"


@pytest.mark.parametrize("losses, scale", [
    (_linear(3.3, 2.9), "linear"),           # less than a decade: no power of ten in view
    (_geometric(10.0, 1e-3), "log"),         # four decades
    (_geometric(1.6, 0.15), "log"),          # a decade, one power of ten in view
    (_linear(1.5, -2.5), "linear"),          # an NLL below zero cannot be on a log axis
    (_geometric(2.3, 1e-4)[:45] + [0.0] * 5, "log"),  # a cross-entropy that underflowed to zero
])
def test_every_axis_of_the_curves_has_at_least_two_tick_labels(tmp_path, losses, scale):
    metric = NLL if min(losses) < 0 else ACCURACY
    runs = [_run(tmp_path, "a", losses, [0.5, 0.7, 0.8, 0.9, 0.95], metric),
            _run(tmp_path, "b", [x * 1.05 for x in losses], [0.4, 0.6, 0.7, 0.8, 0.9], metric)]
    fig = plots.curves_figure(runs)
    try:
        assert {ax.get_yscale() for ax in fig.axes[:2]} == {scale}
        _assert_readable(fig)
    finally:
        import matplotlib.pyplot as plt
        plt.close(fig)


def test_negative_nll_is_drawn_on_a_linear_axis_with_its_metric_named(tmp_path):
    run = _run(tmp_path, "moons", _linear(2.0, -1.0), [1.5, 0.5, 0.0, -0.5, -0.8], NLL, task="density")
    fig = plots.curves_figure([run])
    try:
        _assert_readable(fig)
        assert fig.axes[0].get_yscale() == "linear" and min(fig.axes[0].get_ylim()) < -1
        assert fig.axes[2].get_ylabel() == "test NLL (nats), lower is better"
    finally:
        import matplotlib.pyplot as plt
        plt.close(fig)


def test_runs_of_different_metrics_get_a_pair_of_rows_each(tmp_path):
    image = _run(tmp_path, "digits", _geometric(2.3, 0.1), [0.5, 0.7, 0.8, 0.9, 0.95], ACCURACY)
    density = _run(tmp_path, "moons", _linear(3.5, 2.9), [3.4, 3.2, 3.1, 3.05, 3.0], NLL, task="density")
    fig = plots.curves_figure([image, density])
    try:
        rows = [fig.axes[2 * r].get_ylabel() for r in range(4)]
        assert rows == ["training loss", "test accuracy", "training loss", "test NLL (nats), lower is better"]
        drawn = [{line.get_label() for line in fig.axes[2 * r].get_lines()} for r in range(4)]
        assert drawn == [{"digits"}, {"digits"}, {"moons"}, {"moons"}]
        assert fig.axes[0].get_title() == "runs measured by test accuracy"
        _assert_readable(fig)
    finally:
        import matplotlib.pyplot as plt
        plt.close(fig)


def test_plot_command_reads_each_runs_metric(tmp_path, capsys):
    image = _run(tmp_path, "digits", _geometric(2.3, 0.1), [0.5, 0.7, 0.8, 0.9, 0.95], ACCURACY)
    density = _run(tmp_path, "moons", _linear(3.5, 2.9), [3.4, 3.2, 3.1, 3.05, 3.0], NLL, task="density")
    out = tmp_path / "cmp.png"
    assert main(["plot", str(image), str(density), "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG" and f"wrote {out}" in capsys.readouterr().out


def test_a_run_without_a_summary_takes_its_metric_from_config_json(tmp_path):
    run = _run(tmp_path, "moons", _linear(3.5, 2.9), [3.4, 3.2, 3.1, 3.05, 3.0], NLL, task="density")
    os.remove(run / "summary.json")
    assert plots.run_metric(run) == ("metric", None)
    RunDir(run).write_config(dict(settings=dict(task="density"), data=dict(metric="test NLL (nats)")))
    assert plots.run_metric(run) == ("test NLL (nats)", False)


def test_a_diverged_loss_leaves_a_gap_not_an_infinite_axis(tmp_path):
    run = _run(tmp_path, "a", _geometric(2.0, 0.05)[:40] + [math.inf] * 10, [0.5, 0.6, 0.7, 0.7, math.nan])
    fig = plots.curves_figure([run])
    try:
        assert all(math.isfinite(v) for v in fig.axes[0].get_ylim())
        _assert_readable(fig)
    finally:
        import matplotlib.pyplot as plt
        plt.close(fig)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_plots_are_written_with_the_users_umask(tmp_path, umask, mode):
    run = _run(tmp_path, "a", _geometric(2.0, 0.1), [0.5, 0.6, 0.7, 0.8, 0.9])
    old = os.umask(umask)
    try:
        out = plots.plot_curves([run], tmp_path / "curves.png")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == mode


def _summary(**fields):
    base = dict(run_dir="runs/x", task="image", dataset="digits", optimizer="adam", gradient="symplectic",
                metric_name="test accuracy", higher_is_better=True, iterations=440, train_seconds=38.04321,
                wall_seconds=45.5, final_metric=0.9138888888888889, best_metric=0.9861111111111112,
                stopped="budget")
    return Summary(**{**base, **fields})


def test_the_closing_line_rounds_metrics_to_four_digits_and_seconds_to_tenths(capsys):
    print_summary(_summary(), 41.26789)
    line = capsys.readouterr().out
    assert "test accuracy 0.9139 (best 0.9861) after 440 iterations" in line
    assert "38.0 s of training in all (41.3 s for this command)" in line
    print_summary(_summary(task="density", dataset="moons", metric_name="test NLL (nats)", higher_is_better=False,
                           final_metric=3.011789, best_metric=3.011789), 43.0)
    assert "test NLL (nats) 3.012 (best 3.012)" in capsys.readouterr().out
    print_summary(_summary(final_metric=None, best_metric=None), 1.0)
    assert "test accuracy n/a (best n/a)" in capsys.readouterr().out
