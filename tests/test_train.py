"""`nodeopt train` / `nodeopt plot` end to end, the training loop's run directory, resume and faults."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest
import torch

from nodeopt.cli import main
from nodeopt.tasks import RunDir

TINY = {  # a few cheap iterations of each task
    "image": ["--task", "image", "--dataset", "digits", "--width", "4", "--batch-size", "16"],
    "timeseries": ["--task", "timeseries", "--dataset", "japanese-vowels", "--hidden", "4", "--batch-size", "8"],
    "density": ["--task", "density", "--dataset", "moons", "--hidden", "8", "--batch-size", "32"],
}
QUIET = ["--quiet", "--no-plots"]


def _train(tmp_path, name, *extra, task="image"):
    run = tmp_path / name
    code = main(["train", *TINY[task], "--run-dir", str(run), *QUIET, *extra])
    return code, run


def _rows(run):
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("task", sorted(TINY))
@pytest.mark.parametrize("optimizer", ["adam", "sgd", "snopt"])
@pytest.mark.parametrize("gradient", ["symplectic", "adjoint"])
def test_every_task_trains_with_every_optimiser(tmp_path, task, optimizer, gradient):
    code, run = _train(tmp_path, "r", "--optimizer", optimizer, "--gradient", gradient, "--iterations", "2",
                       "--eval-every", "2", task=task)
    assert code == 0
    rows = _rows(run)
    assert [int(r["iteration"]) for r in rows] == [1, 2]
    assert all(float(r["loss"]) == float(r["loss"]) for r in rows)  # finite, not NaN
    assert rows[0]["metric"] == "" and rows[1]["metric"] != ""
    assert int(rows[0]["nfe_forward"]) > 0 and int(rows[0]["nfe_backward"]) > 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations"] == 2 and summary["stopped"] == "budget"


def test_run_directory_holds_config_metrics_checkpoint_and_plots(tmp_path):
    run = tmp_path / "run"
    code = main(["train", *TINY["image"], "--iterations", "4", "--eval-every", "2", "--run-dir", str(run), "--quiet"])
    assert code == 0
    config = json.loads((run / "config.json").read_text())
    s = config["settings"]
    assert (s["task"], s["dataset"], s["optimizer"], s["gradient"], s["method"]) == (
        "image", "digits", "snopt", "symplectic", "dopri5")
    assert config["data"]["sizes"] == {"train": 1437, "test": 360}
    assert config["versions"]["torch"] == torch.__version__
    rows = _rows(run)
    assert list(rows[0]) == ["iteration", "epoch", "train_seconds", "wall_seconds", "loss", "metric", "nfe_forward",
                             "nfe_backward", "t1", "lr"]
    metric = [float(r["metric"]) for r in rows if r["metric"]]
    assert len(metric) == 2 and all(0 <= m <= 1 for m in metric)
    train_s = [float(r["train_seconds"]) for r in rows]
    wall_s = [float(r["wall_seconds"]) for r in rows]
    assert train_s == sorted(train_s) and all(t <= w for t, w in zip(train_s, wall_s))
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert {"model", "optimizers", "precond", "progress", "rng_cpu_ranks"} <= set(state)
    assert state["progress"]["iteration"] == 4
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_two_dimensional_density_writes_the_learned_density_plot(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *TINY["density"], "--optimizer", "adam", "--iterations", "2", "--run-dir", str(run),
                 "--quiet"]) == 0
    assert (run / "density.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("task,extra", [
    ("image", ["--optimizer", "snopt", "--t1-optimize", "feedback", "--t1-update-freq", "2"]),
    ("density", ["--optimizer", "snopt", "--divergence", "rademacher"]),
    ("timeseries", ["--optimizer", "sgd", "--lr2", "0.01", "--milestones", "2", "--gamma", "0.5"]),
])
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, task, extra):
    # Stopped after 3 iterations and resumed to 6, a run ends with the same parameters, SNOpt and
    # t1 state as one run straight through, and metrics.csv has every iteration exactly once.
    assert _train(tmp_path, "straight", "--iterations", "6", "--eval-every", "2", *extra, task=task)[0] == 0
    assert _train(tmp_path, "split", "--iterations", "3", "--eval-every", "2", *extra, task=task)[0] == 0
    assert main(["train", "--resume", str(tmp_path / "split"), "--iterations", "6", *QUIET]) == 0
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["progress"]["iteration"] == b["progress"]["iteration"] == 6
    straight, split = _rows(tmp_path / "straight"), _rows(tmp_path / "split")
    assert [r["iteration"] for r in split] == [str(i) for i in range(1, 7)]
    for x, y in zip(straight, split):
        assert (x["loss"], x["t1"], x["lr"]) == (y["loss"], y["t1"], y["lr"])
        assert x["metric"] in ("", y["metric"])  # the split run also evaluated its last iteration, 3


def test_resume_drops_rows_the_checkpoint_does_not_hold(tmp_path):
    code, run = _train(tmp_path, "r", "--iterations", "4", "--checkpoint-every", "2")
    assert code == 0
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    # Pretend the run died after iteration 3 with the checkpoint of iteration 2 on disk.
    rows = _rows(run)[:3]
    RunDir(run).save_checkpoint({**state, "progress": {**state["progress"], "iteration": 2}})
    with open(run / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert main(["train", "--resume", str(run), "--iterations", "5", *QUIET]) == 0
    assert [r["iteration"] for r in _rows(run)] == ["1", "2", "3", "4", "5"]


def test_sigint_stops_after_the_iteration_with_a_checkpoint_and_no_traceback(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "nodeopt", "train", *TINY["image"], "--iterations", "100000", "--run-dir", str(run),
           "--checkpoint-every", "100000", *QUIET]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and len(_rows(run) if (run / "metrics.csv").exists() else []) < 2:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err  # a scheduler can tell "interrupted" from "finished"
    assert "Traceback" not in err and "SIGINT received" in err
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    rows = _rows(run)
    assert state["progress"]["iteration"] == len(rows) == int(rows[-1]["iteration"]) >= 2
    assert state["progress"]["stopped"] == "SIGINT"
    assert rows[-1]["metric"] != ""  # the last iteration was evaluated
    assert "stopped: SIGINT" in out


def test_a_truncated_checkpoint_is_named_and_never_unpickled(tmp_path, capsys):
    code, run = _train(tmp_path, "r", "--iterations", "2")
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    assert main(["train", "--resume", str(run), "--iterations", "4", *QUIET]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'checkpoint.pt'} is truncated or corrupt" in err and "Traceback" not in err


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    code, run = _train(tmp_path, "r", "--iterations", "2")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    torch.save({"model": Evil(), "progress": {}}, run / "checkpoint.pt")
    assert main(["train", "--resume", str(run), "--iterations", "4", *QUIET]) == 2
    assert "is truncated or corrupt" in capsys.readouterr().err


def test_a_checkpoint_of_another_model_is_refused_with_the_file_named(tmp_path, capsys):
    code, run = _train(tmp_path, "r", "--iterations", "2")
    config = json.loads((run / "config.json").read_text())
    config["settings"]["width"] = 6
    (run / "config.json").write_text(json.dumps(config))
    assert main(["train", "--resume", str(run), "--iterations", "4", *QUIET]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'checkpoint.pt'} does not match this run's model" in err


@pytest.mark.parametrize("argv,match", [
    (["--task", "vision"], "argument --task: invalid choice: 'vision'"),
    (["--dataset", "imagenet"], "argument --dataset: 'imagenet' is not a image dataset; choose one of digits"),
    (["--optimizer", "lbfgs"], "argument --optimizer: invalid choice: 'lbfgs'"),
    (["--gradient", "magic"], "argument --gradient: invalid choice: 'magic'"),
    (["--lr", "-0.1"], "argument --lr: must be a positive number, got -0.1"),
    (["--lr", "fast"], "argument --lr: 'fast' is not a float"),
    (["--batch-size", "0"], "argument --batch-size: must be a whole number ≥ 1, got 0"),
    (["--task", "timeseries", "--t1-optimize", "feedback"], "argument --t1-optimize: the time-series model"),
    (["--seminorm"], "argument --seminorm: applies to --gradient adjoint only (this run uses symplectic)"),
    (["--train-fraction", "0"], "argument --train-fraction: must be a number in (0, 1], got 0"),
])
def test_bad_flags_are_rejected_naming_the_flag(argv, match, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", *argv])
    assert exc.value.code == 2
    assert match in capsys.readouterr().err


def test_a_new_run_never_writes_over_an_existing_one(tmp_path, capsys):
    code, run = _train(tmp_path, "r", "--iterations", "2")
    before = (run / "metrics.csv").read_text()
    assert _train(tmp_path, "r", "--iterations", "2")[0] == 2
    assert f"{run} already holds a run; continue it with --resume" in capsys.readouterr().err
    assert (run / "metrics.csv").read_text() == before


def test_resume_refuses_to_change_the_run_settings(tmp_path, capsys):
    code, run = _train(tmp_path, "r", "--iterations", "2")
    with pytest.raises(SystemExit):
        main(["train", "--resume", str(run), "--lr", "0.5"])
    assert "argument --lr: cannot be changed when resuming" in capsys.readouterr().err


def test_a_missing_dataset_offline_fails_fast_naming_the_file_and_the_offline_datasets(tmp_path, capsys,
                                                                                       monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no route to host")
    monkeypatch.setattr("urllib.request.urlopen", no_network)
    t0 = time.perf_counter()
    code = main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--run-dir", str(tmp_path / "r"),
                 *QUIET])
    assert time.perf_counter() - t0 < 10
    assert code == 2
    err = capsys.readouterr().err
    assert "MNIST/raw/train-images-idx3-ubyte" in err and "Offline datasets that need no download" in err
    assert "digits" in err and "Traceback" not in err


def test_plot_overlays_runs_in_one_png(tmp_path, capsys):
    runs = [str(_train(tmp_path, name, "--optimizer", opt, "--iterations", "2")[1])
            for name, opt in (("a", "adam"), ("b", "snopt"))]
    out = tmp_path / "cmp.png"
    assert main(["plot", *runs, "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):
        main(["plot", str(tmp_path / "nothing")])
    assert "has no metrics.csv" in capsys.readouterr().err


def test_python_dash_m_and_the_console_script_reach_the_same_command():
    out = subprocess.run([sys.executable, "-m", "nodeopt", "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--t1-optimize" in out.stdout and "--resume RUN_DIR" in out.stdout
    script = Path(sys.executable).parent / "nodeopt"
    assert script.exists(), "the nodeopt console script is installed with the package"


def test_epochs_and_the_time_budget_set_the_length_of_a_run(tmp_path):
    code, run = _train(tmp_path, "epochs", "--epochs", "1", "--batch-size", "400", "--eval-every", "1000")
    assert code == 0
    assert len(_rows(run)) == 1437 // 400  # the last incomplete batch of an epoch is dropped
    code, run = _train(tmp_path, "budget", "--iterations", "100000", "--time-budget", "0.3")
    summary = json.loads((run / "summary.json").read_text())
    assert code == 0 and summary["stopped"] == "time budget"
    assert 0.3 <= summary["train_seconds"] < 30 and summary["iterations"] == len(_rows(run)) >= 1


def test_a_fixed_step_method_trains_too(tmp_path):
    assert _train(tmp_path, "r", "--method", "rk4", "--iterations", "2")[0] == 0


def test_a_fraction_of_the_training_set_and_the_seminorm_adjoint(tmp_path):
    code, run = _train(tmp_path, "r", "--train-fraction", "0.1", "--gradient", "adjoint", "--seminorm",
                       "--iterations", "2")
    assert code == 0
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["train_rows_used"] == 143 and config["data"]["sizes"]["train"] == 1437


def test_a_run_that_blows_up_stops_with_a_clear_line_and_keeps_its_last_finite_checkpoint(tmp_path, capsys):
    code, run = _train(tmp_path, "r", "--optimizer", "sgd", "--lr", "1000", "--iterations", "50",
                       "--checkpoint-every", "1", "--max-steps", "100")
    assert code == 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped"] in ("diverged", "solver failure")
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert state["progress"]["iteration"] < summary["iterations"] or summary["stopped"] == "solver failure"
    err = capsys.readouterr().err
    assert "Traceback" not in err and ("training stopped at iteration" in err or "diverged" in err)
