"""`nodeopt reproduce`: the recipes hold the papers' settings, every command parses, runs end to end."""

import argparse
import contextlib
import csv
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
from dataclasses import replace
from pathlib import Path

import pytest

from nodeopt.cli import main
from nodeopt.cli import train as train_cli
from nodeopt.cli.recipes import RECIPES, settings_of

# The SNOpt code's scripts (scripts/run_img_clf.sh, run_time_series.sh, run_cnf.sh), transcribed
# by hand: per recipe, the settings shared by its runs, then each run's own.
PAPER = {
    "mnist": (dict(width=64, batch_size=128, epochs=5),
              dict(adam=dict(optimizer="adam", lr=1e-3), sgd=dict(optimizer="sgd", lr=0.02, momentum=0.9),
                   snopt=dict(optimizer="snopt", lr=0.02, momentum=0.0, snopt_eps=0.05, snopt_freq=100))),
    "svhn": (dict(width=64, batch_size=128, epochs=10),
             dict(adam=dict(optimizer="adam", lr=5e-4, weight_decay=1e-3),
                  sgd=dict(optimizer="sgd", lr=0.02, momentum=0.9),
                  snopt=dict(optimizer="snopt", lr=0.01, weight_decay=1e-4, snopt_eps=0.05, snopt_freq=100))),
    "cifar10": (dict(width=64, batch_size=128, epochs=20),
                dict(adam=dict(optimizer="adam", lr=1e-3, weight_decay=1e-3),
                     sgd=dict(optimizer="sgd", lr=0.01, momentum=0.9),
                     snopt=dict(optimizer="snopt", lr=0.01, snopt_eps=0.03, snopt_freq=100))),
    "cifar10-t1-optimize": (dict(epochs=20, optimizer="adam", lr=1e-3, t1_optimize="feedback", t1_update_freq=50,
                                 t1_lr=0.1),
                            {"t1-1.0": dict(t1=1.0, t1_reg=6e-4), "t1-0.05": dict(t1=0.05, t1_reg=4e-4)}),
    "char-traj": (dict(hidden=32, batch_size=512, epochs=400, seminorm=True),
                  dict(adam=dict(optimizer="adam", lr=1e-3, lr2=1e-3, gamma=0.5, milestones=[300, 600, 900]),
                       sgd=dict(optimizer="sgd", lr=1e-3, lr2=1e-3, gamma=0.7, milestones=[300, 600, 900]),
                       snopt=dict(optimizer="snopt", lr=3e-3, lr2=3e-3, gamma=0.7, milestones=[450, 750, 900],
                                  snopt_eps=0.05, snopt_freq=100, weight_decay=1e-4, snopt_step_size=1.0))),
    "art-wr": (dict(hidden=64, batch_size=256, epochs=600, seminorm=True),
               dict(adam=dict(optimizer="adam", lr=1e-3, lr2=1e-3, gamma=0.5, milestones=[200, 375, 550]),
                    sgd=dict(optimizer="sgd", lr=3e-3, lr2=1e-3),
                    snopt=dict(optimizer="snopt", lr=3e-3, lr2=3e-3, snopt_eps=0.1, snopt_freq=100,
                               snopt_step_size=1.0))),
    "spo-ad": (dict(hidden=32, batch_size=128, epochs=10, seminorm=True),
               dict(adam=dict(optimizer="adam", lr=3e-3, lr2=3e-3), sgd=dict(optimizer="sgd", lr=0.01, lr2=3e-3),
                    snopt=dict(optimizer="snopt", lr=5e-3, lr2=3e-3, snopt_eps=0.05, snopt_freq=100,
                               snopt_step_size=1.0))),
    "miniboone": (dict(blocks=1, hidden=[860, 860], activation="softplus", batch_size=128, rtol=1e-6, atol=1e-8,
                       eval_every=200),
                  dict(adam=dict(optimizer="adam", lr=3e-3, epochs=20),
                       sgd=dict(optimizer="sgd", lr=0.01, momentum=0.9, epochs=25),
                       snopt=dict(optimizer="snopt", lr=5e-3, momentum=0.9, snopt_eps=0.1, snopt_freq=250,
                                  epochs=10))),
    "gas": (dict(blocks=5, hidden=[160, 160, 160], activation="tanh", batch_size=1000, seminorm=True,
                 train_fraction=0.1, eval_every=500),
            dict(adam=dict(optimizer="adam", lr=2e-3, epochs=30),
                 sgd=dict(optimizer="sgd", lr=0.01, momentum=0.9, epochs=30),
                 snopt=dict(optimizer="snopt", lr=0.01, momentum=0.9, snopt_eps=0.05, snopt_freq=250, epochs=20))),
}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_recipes_hold_the_original_settings(name):
    common, runs = PAPER[name]
    recipe = RECIPES[name]
    assert [r.name for r in recipe.runs] == list(runs)
    for run in recipe.runs:
        s = settings_of(recipe, run)
        expected = {"method": "dopri5", "seed": 0, **({} if "rtol" in common else dict(rtol=1e-3, atol=1e-3)),
                    **({} if "eval_every" in common else dict(eval_every=10)), **common, **runs[run.name]}
        for key, value in expected.items():
            assert s.get(key) == value, (name, run.name, key)


def test_every_gradient_method_has_a_cnf_comparison_on_every_tabular_set():
    for name in ("miniboone", "gas", "power", "hepmass", "bsds300"):
        recipe = RECIPES[f"cnf-gradients-{name}"]
        assert {settings_of(recipe, r)["gradient"] for r in recipe.runs} == {
            "backprop", "adjoint", "onecheckpoint", "checkpoint", "symplectic"}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_dry_run_command_parses_with_nodeopt_trains_own_parser(name, capsys):
    assert main(["reproduce", name, "--dry-run", "--seeds", "0,1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 * len(RECIPES[name].runs)
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    for line in lines:
        argv = shlex.split(line)
        assert argv[:2] == ["nodeopt", "train"]
        settings = train_cli.resolve_settings(parser.parse_args(argv[2:]), parser)
        run = next(r for r in RECIPES[name].runs if f"/{r.name}-seed" in line)
        for key, value in settings_of(RECIPES[name], run).items():
            if key != "seed":
                assert settings[key] == value, (line, key)


@pytest.fixture(scope="module")
def finished_digits(tmp_path_factory):
    """The digits recipe at --scale 0.01 (5 iterations a run), run once: its parent directory and its output."""
    parent = tmp_path_factory.mktemp("finished") / "digits"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["reproduce", "digits", "--scale", "0.01", "--run-dir", str(parent)])
    return parent, out.getvalue(), code


def test_the_smallest_offline_recipe_runs_end_to_end_and_writes_its_table(finished_digits):
    parent, out, code = finished_digits
    assert code == 0
    assert "| run | status | final | best |" in out and "| snopt | finished |" in out
    rows = _csv(parent / "results.csv")
    assert [r["run"] for r in rows] == ["adam", "sgd", "snopt"]
    assert all(r["status"] == "finished" and r["finished"] == "1" for r in rows)
    assert all(0 <= float(r["final"]) <= 1 and float(r["peak_mb"]) > 0 for r in rows)
    for run in ("adam", "sgd", "snopt"):
        assert _iterations(parent / f"{run}-seed0") == [1, 2, 3, 4, 5]


def test_a_recipe_whose_data_is_missing_stops_before_any_training(tmp_path, capsys, monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no route to host")
    monkeypatch.setattr("urllib.request.urlopen", no_network)
    t0 = time.perf_counter()
    assert main(["reproduce", "mnist", "--data-dir", str(tmp_path / "data"), "--run-dir", str(tmp_path / "r")]) == 2
    assert time.perf_counter() - t0 < 10
    err = capsys.readouterr().err
    assert "recipe 'mnist' cannot run, its data is missing" in err and "Offline datasets" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv,match", [
    (["imagenet"], "argument name: unknown recipe 'imagenet'"),
    (["digits", "--only", "lbfgs"], "argument --only: digits has no run lbfgs"),
    (["digits", "--scale", "0"], "argument --scale: must be a positive number"),
    (["digits", "--seeds", "a,b"], "argument --seeds: expected comma-separated whole numbers"),
])
def test_bad_reproduce_arguments_are_named(argv, match, capsys):
    with pytest.raises(SystemExit):
        main(["reproduce", *argv])
    assert match in capsys.readouterr().err


def test_list_names_every_recipe_and_whether_its_data_is_on_disk(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in RECIPES)
    assert "offline" in out and "not on disk" in out


def test_bench_runs_a_benchmark_of_the_source_checkout_and_names_unknown_ones(capsys):
    assert main(["bench", "solvers-and-more"]) == 2
    assert "unknown benchmark 'solvers-and-more'; choose one of solvers" in capsys.readouterr().err
    assert main(["bench", "train_loop", "--quick", "--block", "2"]) == 0
    assert "overhead:" in capsys.readouterr().out


# -- continuing: skip what finished, resume what did not, never report a partial run ---------------------------
DIGITS = ["reproduce", "digits", "--scale", "0.01"]  # 5 iterations a run


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _iterations(folder: Path) -> list[int]:
    return [int(r["iteration"]) for r in _csv(folder / "metrics.csv")]


def _copy(finished_digits, tmp_path) -> Path:
    parent = tmp_path / "digits"
    shutil.copytree(finished_digits[0], parent)
    return parent


def _train_adam_for(parent: Path, iterations: int, capsys) -> None:
    """A run directory of the recipe's Adam run made by ``nodeopt train`` for fewer iterations than planned."""
    shutil.rmtree(parent / "adam-seed0", ignore_errors=True)
    assert main([*DIGITS, "--only", "adam", "--dry-run", "--run-dir", str(parent)]) == 0
    argv = shlex.split(capsys.readouterr().out.strip())
    argv[argv.index("--iterations") + 1] = str(iterations)
    assert main([*argv[1:], "--quiet", "--no-plots"]) == 0
    capsys.readouterr()
    assert _iterations(parent / "adam-seed0") == list(range(1, iterations + 1))


def _edit_json(path: Path, **changes) -> None:
    value = json.loads(path.read_text())
    for key, v in changes.items():
        if key == "settings":
            value["settings"].update(v)
        else:
            value[key] = v
    path.write_text(json.dumps(value))


def test_a_rerun_skips_the_finished_runs_says_so_and_trains_nothing(finished_digits, tmp_path, capsys):
    parent = _copy(finished_digits, tmp_path)
    before = {run: ((parent / f"{run}-seed0" / "metrics.csv").read_bytes(),
                    (parent / f"{run}-seed0" / "metrics.csv").stat().st_mtime_ns) for run in ("adam", "sgd", "snopt")}
    assert main([*DIGITS, "--run-dir", str(parent)]) == 0
    out = capsys.readouterr().out
    for run in ("adam", "sgd", "snopt"):
        assert (f"== digits: {run}, seed 0: finished earlier (summary.json: stopped budget, 5 of 5 iterations), "
                f"skipped") in out
        metrics = parent / f"{run}-seed0" / "metrics.csv"
        assert (metrics.read_bytes(), metrics.stat().st_mtime_ns) == before[run]
    assert "nodeopt train" not in out
    assert "| adam | finished |" in out
    assert all(r["exit_code"] == "" for r in _csv(parent / "results_per_seed.csv"))  # no child ran


def test_only_keeps_the_other_runs_rows_of_both_tables(finished_digits, tmp_path, capsys):
    parent = _copy(finished_digits, tmp_path)
    seeds_before = {r["run"]: r for r in _csv(parent / "results_per_seed.csv")}
    assert main([*DIGITS, "--only", "adam", "--run-dir", str(parent)]) == 0
    assert [r["run"] for r in _csv(parent / "results.csv")] == ["adam", "sgd", "snopt"]
    seeds = {r["run"]: r for r in _csv(parent / "results_per_seed.csv")}
    assert list(seeds) == ["adam", "sgd", "snopt"]
    for run in ("sgd", "snopt"):  # the peak memory of a run not run now is kept from the previous table
        assert seeds[run]["peak_rss_mb"] == seeds_before[run]["peak_rss_mb"] != ""
        assert seeds[run]["final"] == seeds_before[run]["final"]
    out = capsys.readouterr().out
    assert "| sgd | finished |" in out and "| snopt | finished |" in out


def test_a_run_trained_for_fewer_iterations_is_resumed_to_every_iteration_once(tmp_path, capsys):
    parent = tmp_path / "digits"
    _train_adam_for(parent, 2, capsys)
    assert main([*DIGITS, "--only", "adam", "--run-dir", str(parent)]) == 0
    out = capsys.readouterr().out
    assert ("== digits: adam, seed 0: stopped at iteration 2 of 5 (budget); resuming from its last checkpoint: "
            f"nodeopt train --resume {parent / 'adam-seed0'} --iterations 5 --quiet") in out
    assert _iterations(parent / "adam-seed0") == [1, 2, 3, 4, 5]
    assert "| adam | finished |" in out
    assert _csv(parent / "results_per_seed.csv")[0]["resumed"] == "True"


def test_a_run_killed_before_its_first_checkpoint_is_trained_again_from_its_config(finished_digits, tmp_path,
                                                                                   capsys):
    # needs `nodeopt train --resume` to restart a run that has a config.json but no checkpoint yet
    parent = _copy(finished_digits, tmp_path)
    folder = parent / "adam-seed0"
    (folder / "checkpoint.pt").unlink()
    (folder / "summary.json").unlink()
    lines = (folder / "metrics.csv").read_text().splitlines(keepends=True)
    (folder / "metrics.csv").write_text("".join(lines[:4]))  # the header and 3 rows, as a SIGKILL leaves them
    assert main([*DIGITS, "--only", "adam", "--run-dir", str(parent)]) == 0
    out = capsys.readouterr().out
    assert "adam, seed 0: stopped at iteration 3 of 5; no checkpoint yet: training it again from iteration 0" in out
    assert _iterations(folder) == [1, 2, 3, 4, 5]


def _reproduce_until_adam_trains(parent: Path, send) -> tuple[str, int]:
    """``nodeopt reproduce`` in its own session, and ``send(process)`` once Adam has logged two iterations."""
    proc = subprocess.Popen([sys.executable, "-m", "nodeopt", "reproduce", "digits", "--scale", "0.05", "--only",
                             "adam,sgd", "--run-dir", str(parent)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    metrics = parent / "adam-seed0" / "metrics.csv"
    deadline = time.monotonic() + 120
    try:
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
            assert proc.poll() is None and time.monotonic() < deadline, "adam never started training"
            time.sleep(0.05)
        send(proc)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return out, proc.returncode


def test_ctrl_c_stops_the_current_run_starts_no_other_prints_the_table_and_exits_130(tmp_path, capsys):
    parent = tmp_path / "digits"
    out, code = _reproduce_until_adam_trains(parent, lambda proc: os.killpg(proc.pid, signal.SIGINT))
    assert code == 130, out
    assert "Traceback" not in out
    assert ("nodeopt reproduce: stopped by SIGINT: adam, seed 0 ended after its current iteration; 1 run not "
            "started; run the same command again to continue") in out
    assert "| adam | unfinished (" in out and " of 22 iterations) | – | – |" in out
    assert "| sgd | not started |" in out
    assert not (parent / "sgd-seed0").exists()
    assert _csv(parent / "results_per_seed.csv")[0]["status"].startswith("unfinished (")
    # the same command again continues the interrupted run, which ends with every iteration once
    assert main(["reproduce", "digits", "--scale", "0.05", "--only", "adam", "--run-dir", str(parent)]) == 0
    assert "(SIGINT); resuming from its last checkpoint" in capsys.readouterr().out
    assert _iterations(parent / "adam-seed0") == list(range(1, 23))


def test_sigterm_to_reproduce_alone_reaches_the_run_and_exits_143(tmp_path):
    parent = tmp_path / "digits"
    out, code = _reproduce_until_adam_trains(parent, lambda proc: proc.send_signal(signal.SIGTERM))
    assert code == 143, out
    assert "Traceback" not in out and "stopped by SIGTERM: adam, seed 0" in out
    assert json.loads((parent / "adam-seed0" / "summary.json").read_text())["stopped"] == "SIGTERM"
    assert "| adam | unfinished (" in out


def test_an_unfinished_run_is_marked_and_left_out_of_every_comparison(finished_digits, tmp_path, capsys,
                                                                      monkeypatch):
    parent = _copy(finished_digits, tmp_path)
    # a target every run reaches at once, so that the time to it is measured wherever it may be
    monkeypatch.setitem(RECIPES, "digits", replace(RECIPES["digits"], target=0.01))
    _train_adam_for(parent, 2, capsys)
    _edit_json(parent / "adam-seed0" / "summary.json", final_metric=0.0)  # one the other runs would reach at once
    assert main([*DIGITS, "--only", "sgd,snopt", "--run-dir", str(parent)]) == 0  # the runs asked for finished
    out = capsys.readouterr().out
    assert "| adam | unfinished (2 of 5 iterations) | – | – | – | – | – | – | – / – | – |" in out
    table = {r["run"]: r for r in _csv(parent / "results.csv")}
    assert table["adam"]["finished"] == "0" and table["adam"]["final"] == ""
    assert table["sgd"]["target_s"] != "" and table["snopt"]["target_s"] != ""
    assert table["snopt"]["adam_final_s"] == ""  # Adam's final comes from a finished Adam run only
    seeds = {r["run"]: r for r in _csv(parent / "results_per_seed.csv")}
    assert seeds["adam"]["status"] == "unfinished (2 of 5 iterations)"
    assert seeds["adam"]["target_s"] == "" and seeds["adam"]["final"] != ""  # measured, but not a result
    assert seeds["snopt"]["adam_final_s"] == ""


def test_the_other_runs_are_timed_to_the_final_metric_of_the_same_seeds_finished_adam_run(finished_digits, tmp_path):
    parent = _copy(finished_digits, tmp_path)
    _edit_json(parent / "adam-seed0" / "summary.json", final_metric=0.0)  # reached at every run's first evaluation
    assert main([*DIGITS, "--only", "adam", "--run-dir", str(parent)]) == 0
    rows = {r["run"]: r for r in _csv(parent / "results.csv")}
    first_eval = {run: next(r for r in _csv(parent / f"{run}-seed0" / "metrics.csv") if r["metric"])
                  for run in ("sgd", "snopt")}
    for run in ("sgd", "snopt"):
        assert float(rows[run]["adam_final_s"]) == pytest.approx(float(first_eval[run]["train_seconds"]))
    assert rows["adam"]["adam_final_s"] == ""


def _corrupt_config(folder: Path) -> None:
    (folder / "config.json").write_text("{")


@pytest.mark.parametrize("spoil,match,status", [
    (lambda f: _edit_json(f / "config.json", settings=dict(lr=0.5)),
     "adam-seed0 holds a run with other settings than the recipe's (--lr 0.5 there, 0.001 in the recipe); move ",
     "blocked (other settings)"),
    (lambda f: _edit_json(f / "summary.json", iterations=9),
     "adam-seed0 holds 9 iterations, more than the 5 planned (a run of another --scale?); move ",
     "blocked (longer than planned)"),
    (_corrupt_config, "config.json is corrupt (", "blocked (unreadable files)"),
    (lambda f: _edit_json(f / "summary.json", stopped="diverged"),
     "adam, seed 0: failed earlier (summary.json: stopped diverged at iteration 5), not retried: resuming would "
     "repeat it; move ", "failed (diverged)"),
], ids=["other-settings", "longer-than-planned", "corrupt-config", "diverged"])
def test_a_folder_that_does_not_hold_the_planned_run_is_named_left_alone_and_exits_1(
        spoil, match, status, finished_digits, tmp_path, capsys):
    parent = _copy(finished_digits, tmp_path)
    folder = parent / "adam-seed0"
    spoil(folder)
    before = (folder / "metrics.csv").read_bytes()
    assert main([*DIGITS, "--only", "adam", "--run-dir", str(parent)]) == 1
    captured = capsys.readouterr()
    assert match in captured.out and "away (or choose another --run-dir) to train the run again" in captured.out
    assert f"| adam | {status} | – |" in captured.out
    assert (f"nodeopt reproduce: 1 of 1 runs did not finish: adam seed 0 ({status}); see above (the same "
            f"command again continues the unfinished ones)") in captured.err
    assert (folder / "metrics.csv").read_bytes() == before


def test_a_run_whose_nodeopt_train_fails_is_marked_failed_and_exits_1(tmp_path, capsys):
    folder = tmp_path / "digits" / "adam-seed0"
    folder.mkdir(parents=True)
    (folder / "metrics.csv").write_text("not,a,run\n1,2,3\n")  # no config.json: started afresh, and refused
    assert main([*DIGITS, "--only", "adam", "--run-dir", str(tmp_path / "digits")]) == 1
    captured = capsys.readouterr()
    assert "| adam | failed (exit code 2) |" in captured.out
    assert "adam seed 0 (failed (exit code 2))" in captured.err


def test_ctrl_c_between_runs_starts_no_further_run_and_exits_130(finished_digits, tmp_path, capsys, monkeypatch):
    from nodeopt.cli import reproduce
    parent = _copy(finished_digits, tmp_path)
    inspect = reproduce.inspect

    def ctrl_c_on_the_first_look(run):
        monkeypatch.setattr(reproduce, "inspect", inspect)
        os.kill(os.getpid(), signal.SIGINT)  # while adam, finished earlier, is looked at
        return inspect(run)

    monkeypatch.setattr(reproduce, "inspect", ctrl_c_on_the_first_look)
    assert main([*DIGITS, "--run-dir", str(parent)]) == 130
    captured = capsys.readouterr()
    assert "adam, seed 0: finished earlier" in captured.out and "sgd, seed 0:" not in captured.out
    assert ("nodeopt reproduce: stopped by SIGINT: before sgd, seed 0 started; 2 runs not started; run the same "
            "command again to continue") in captured.err
    assert "| sgd | finished |" in captured.out  # the table of what exists
