"""`nodeopt train` under torchrun on 2 CPU processes: --nproc, resume (same and other process counts), faults.

Each test starts real processes through torchrun (torch.distributed.run), as a user would.
"""

import csv
import json
import os
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="this torch build has no torch.distributed")

ARGS = ["--task", "image", "--dataset", "digits", "--width", "4", "--batch-size", "16", "--method", "rk4",
        "--eval-every", "2", "--checkpoint-every", "2", "--snopt-freq", "3", "--t1-optimize", "feedback",
        "--t1-update-freq", "2", "--quiet", "--no-plots"]
HELPER = str(Path(__file__).parent / "helpers" / "faulty_train.py")


def _run(command, timeout, env=None):
    """Run ``command`` in a session of its own, so that a timeout kills torchrun's workers too."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def _nodeopt(*args, timeout=120, env=None):
    return _run([sys.executable, "-m", "nodeopt", "train", *ARGS, *args], timeout, env)


def _torchrun(*args, restarts=0, timeout=120):
    return _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                 "--max-restarts", str(restarts), *args], timeout)


def _iterations(run):
    with open(run / "metrics.csv", newline="") as f:
        return [int(r["iteration"]) for r in csv.DictReader(f)]


def _model(run):
    return torch.load(run / "checkpoint.pt", weights_only=True)["model"]


def _ok(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-process run stopped at iteration 4, and one trained straight to 8."""
    tmp = tmp_path_factory.mktemp("torchrun")
    _ok(_nodeopt("--nproc", "2", "--iterations", "4", "--run-dir", str(tmp / "four")))
    _ok(_nodeopt("--nproc", "2", "--iterations", "8", "--run-dir", str(tmp / "eight")))
    return tmp


def test_nproc_trains_on_two_processes_and_rank_0_writes_the_run_directory(runs):
    run = runs / "eight"
    assert _iterations(run) == list(range(1, 9))
    config = json.loads((run / "config.json").read_text())
    assert config["processes"] == 2 and config["settings"]["batch_size"] == 16
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng_cpu_ranks"]) == 2
    assert not torch.equal(state["rng_cpu_ranks"][0], state["rng_cpu_ranks"][1])  # each rank its own stream
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iterations"] == 8 and 0 <= summary["final_metric"] <= 1


def test_resume_with_the_same_processes_equals_one_run_straight_through(runs, tmp_path):
    run = tmp_path / "resumed"
    shutil.copytree(runs / "four", run)
    _ok(_nodeopt("--nproc", "2", "--resume", str(run), "--iterations", "8"))
    assert _iterations(run) == list(range(1, 9))
    straight, resumed = _model(runs / "eight"), _model(run)
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_resume_on_one_process_reshards_the_same_global_batches(tmp_path):
    """2 processes to iteration 4, then 1 process to 8, equals 1 process straight to 8.

    (SGD with momentum: SNOpt's EKFAC eigenbases of nearly equal eigenvalues rotate with the rounding
    of a different summation order, which changes its steps by more than rounding.)
    """
    sgd = ("--optimizer", "sgd", "--momentum", "0.9", "--iterations")
    _ok(_nodeopt("--nproc", "2", *sgd, "4", "--run-dir", str(tmp_path / "resharded")))
    proc = _nodeopt("--resume", str(tmp_path / "resharded"), "--iterations", "8")
    _ok(proc)
    assert "re-sharded" in proc.stderr
    _ok(_nodeopt(*sgd, "8", "--run-dir", str(tmp_path / "straight")))
    assert _iterations(tmp_path / "resharded") == list(range(1, 9))
    straight, resumed = _model(tmp_path / "straight"), _model(tmp_path / "resharded")
    for key in straight:  # the same batches, summed in another order
        assert float((straight[key] - resumed[key]).norm()) <= 1e-4 * float(straight[key].norm()) + 1e-7, key


def test_a_global_batch_that_does_not_split_over_the_processes_is_refused(tmp_path):
    proc = _nodeopt("--nproc", "3", "--iterations", "2", "--run-dir", str(tmp_path / "r"), "--batch-size", "10")
    assert proc.returncode == 2, proc.stderr  # every rank stopped cleanly with the usage code, and --nproc says so
    line = ("nodeopt train: --batch-size 10 is the global batch and must split evenly over the 3 processes; use a "
            "multiple of 3 (e.g. 9)")
    assert proc.stderr.count(line) == 1  # rank 0 reports it, once
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr


def test_nproc_under_torchrun_is_refused(tmp_path):
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "2"}  # what torchrun sets for its workers
    proc = _nodeopt("--nproc", "2", timeout=60, env=env)
    assert proc.returncode == 2
    assert "argument --nproc: this process was already started by torchrun (2 processes); leave --nproc out" \
        in proc.stderr


def test_a_rank_that_raises_brings_the_group_down_naming_the_rank(tmp_path):
    start = time.monotonic()
    proc = _torchrun(HELPER, "raise", "1", "3", str(tmp_path / "marker"), "--", *ARGS, "--iterations", "8",
                     "--run-dir", str(tmp_path / "r"), timeout=90)
    assert proc.returncode != 0
    assert time.monotonic() - start < 60
    assert "nodeopt train (rank 1 of 2): training stopped at iteration 2: injected fault" in proc.stderr
    assert _iterations(tmp_path / "r") == [1, 2]  # rank 0 wrote what was done, and its checkpoint
    assert torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)["progress"]["iteration"] == 2


def test_a_rank_that_stops_answering_fails_the_group_after_the_timeout(tmp_path):
    start = time.monotonic()
    proc = _torchrun(HELPER, "hang", "1", "3", str(tmp_path / "marker"), "--", *ARGS, "--iterations", "8",
                     "--run-dir", str(tmp_path / "r"), "--dist-timeout", "5", timeout=120)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert elapsed < 60, elapsed
    assert "nodeopt train (rank 0 of 2): training stopped at iteration 2: lost contact with the other processes" \
        in proc.stderr


def test_a_killed_rank_is_restarted_and_the_run_resumes_with_no_row_lost_or_repeated(runs, tmp_path):
    run = tmp_path / "r"
    proc = _torchrun(HELPER, "kill", "1", "6", str(tmp_path / "marker"), "--", *ARGS, "--iterations", "8",
                     "--run-dir", str(run), restarts=1, timeout=180)
    _ok(proc)
    assert (tmp_path / "marker").exists()  # the fault did happen
    assert "resuming from" in proc.stderr
    assert _iterations(run) == list(range(1, 9))
    straight, resumed = _model(runs / "eight"), _model(run)
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_a_signal_to_one_rank_stops_every_rank_after_the_same_iteration(tmp_path):
    run = tmp_path / "r"
    proc = _torchrun(HELPER, "sigterm", "1", "3", str(tmp_path / "marker"), "--", *ARGS, "--iterations", "50",
                     "--run-dir", str(run))
    assert proc.returncode != 0, proc.stderr[-3000:]  # stopped by a signal, not finished: 143 from each rank
    assert _iterations(run) == [1, 2, 3]  # rank 1 was signalled during iteration 3; both finished it and stopped
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["progress"]["iteration"] == 3
    assert json.loads((run / "summary.json").read_text())["stopped"] == "SIGTERM"


def test_every_rank_stops_on_the_same_clock_under_a_time_budget(tmp_path):
    run = tmp_path / "r"
    _ok(_nodeopt("--nproc", "2", "--iterations", "100000", "--time-budget", "1", "--run-dir", str(run)))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped"] == "time budget" and 1 <= summary["train_seconds"] < 5
    assert _iterations(run) == list(range(1, summary["iterations"] + 1))
