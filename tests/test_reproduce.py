"""`nodeopt reproduce`: the recipes hold the papers' settings, every command parses, runs end to end."""

import argparse
import csv
import shlex
import time
import urllib.error

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


def test_the_smallest_offline_recipe_runs_end_to_end_and_writes_its_table(tmp_path, capsys):
    parent = tmp_path / "digits"
    code = main(["reproduce", "digits", "--scale", "0.01", "--run-dir", str(parent)])
    assert code == 0
    out = capsys.readouterr().out
    assert "| run | final | best |" in out and "| snopt |" in out
    with open(parent / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == ["adam", "sgd", "snopt"]
    assert all(float(r["iterations"] if "iterations" in r else 1) > 0 for r in rows)
    assert all(0 <= float(r["final"]) <= 1 and float(r["peak_mb"]) > 0 for r in rows)
    for run in ("adam", "sgd", "snopt"):
        assert (parent / f"{run}-seed0" / "metrics.csv").exists()


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
