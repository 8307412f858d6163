"""`nodeopt train` under faults: claimed run directories, resumable from the first iteration, one clear line
for every file-system problem, exit codes a scheduler can read, no traceback; and a short fault-injection soak."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nodeopt.cli import main
from nodeopt.cli.train import default_run_dir
from nodeopt.tasks import RunDir
from nodeopt.tasks import rundir as rundir_module

TINY = ["--task", "image", "--dataset", "digits", "--width", "4", "--batch-size", "16", "--method", "rk4",
        "--quiet", "--no-plots"]
ROOT = Path(__file__).resolve().parents[1]


def _train(*args):
    return main(["train", *TINY, *args])


def _model(run):
    return torch.load(Path(run) / "checkpoint.pt", weights_only=True)["model"]


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def _process(*args):
    return subprocess.Popen([sys.executable, "-m", "nodeopt", "train", *TINY, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT)


def _rows(run):
    return [int(r["iteration"]) for r in RunDir(run).read_metrics()]


def _wait_for_rows(run, n, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline and len(_rows(run) if (run / "metrics.csv").exists() else []) < n:
        time.sleep(0.05)


def test_default_run_directories_started_in_the_same_second_differ():
    s = dict(task="image", dataset="digits", optimizer="snopt")
    names = {default_run_dir(s) for _ in range(20)}
    assert len(names) == 20


def test_of_two_runs_started_at_once_on_one_directory_exactly_one_trains(tmp_path):
    run = tmp_path / "r"
    procs = [_process("--iterations", "6", "--run-dir", str(run)) for _ in range(2)]
    results = [(p.wait(timeout=120), p.communicate()[1]) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert f"{run} is in use" in refused or f"{run} already holds a run" in refused
    assert "Traceback" not in refused
    assert _rows(run) == list(range(1, 7))


def test_a_run_killed_before_its_first_checkpoint_resumes_from_the_start_and_ends_as_one_run(tmp_path, capsys):
    assert _train("--iterations", "6", "--run-dir", str(tmp_path / "straight")) == 0
    run = tmp_path / "r"
    # a long run (it must not finish, and write its final checkpoint, before the kill), then resumed to 6
    proc = _process("--iterations", "100000", "--checkpoint-every", "100000", "--run-dir", str(run))
    _wait_for_rows(run, 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "checkpoint.pt").exists() and (run / "config.json").exists()
    assert _train("--resume", str(run), "--iterations", "6") == 0
    assert _rows(run) == list(range(1, 7))  # the rows of the killed attempt were dropped, none repeated
    assert _same(_model(tmp_path / "straight"), _model(run))


def test_a_directory_whose_run_never_trained_can_be_started_again_in_place(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"settings": {}}))
    assert _train("--iterations", "2", "--run-dir", str(run)) == 0
    assert _rows(run) == [1, 2]


def test_a_run_that_trained_is_never_started_over(tmp_path, capsys):
    run = tmp_path / "r"
    assert _train("--iterations", "2", "--run-dir", str(run)) == 0
    assert _train("--iterations", "2", "--run-dir", str(run)) == 2
    assert f"{run} already holds a run; continue it with --resume {run}" in capsys.readouterr().err


def test_an_empty_checkpoint_is_named(tmp_path, capsys):
    run = tmp_path / "r"
    assert _train("--iterations", "2", "--run-dir", str(run)) == 0
    (run / "checkpoint.pt").write_bytes(b"")
    assert main(["train", "--resume", str(run), "--iterations", "4", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'checkpoint.pt'} is truncated or corrupt: it is empty (0 bytes)" in err


def test_a_foreign_checkpoint_is_named(tmp_path, capsys):
    run = tmp_path / "r"
    assert _train("--iterations", "2", "--run-dir", str(run)) == 0
    torch.save({"weights": torch.zeros(3)}, run / "checkpoint.pt")
    assert main(["train", "--resume", str(run), "--iterations", "4", "--quiet"]) == 2
    assert "is not a nodeopt checkpoint" in capsys.readouterr().err


def test_a_run_directory_that_is_a_file_is_one_line(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("not a folder")
    assert _train("--iterations", "2", "--run-dir", str(target)) == 2
    err = capsys.readouterr().err
    assert f"--run-dir {target}:" in err and "is a file, not a folder" in err and "Traceback" not in err
    assert _train("--iterations", "2", "--run-dir", str(target / "inside")) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_a_read_only_run_directory_is_one_line(tmp_path, capsys, monkeypatch):
    def read_only(path, *args, **kwargs):  # tests run as root, who may write anywhere: the file system says no
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(rundir_module.os, "open", read_only)
    assert _train("--iterations", "2", "--run-dir", str(tmp_path / "r")) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "Read-only file system" in err and "choose a folder you can write" in err


def test_a_full_disk_during_a_checkpoint_keeps_the_last_one_and_says_how_to_go_on(tmp_path, capsys, monkeypatch):
    run = tmp_path / "r"
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(rundir_module.torch, "save", save)
    assert _train("--iterations", "6", "--checkpoint-every", "2", "--run-dir", str(run)) == 1
    err = capsys.readouterr().err
    assert "the disk is full" in err and f"continue with --resume {run}" in err and "Traceback" not in err
    state = torch.load(run / "checkpoint.pt", weights_only=True)  # the previous checkpoint, whole
    assert state["progress"]["iteration"] == 4
    assert not list(run.glob(".*.part"))
    assert json.loads((run / "summary.json").read_text())["stopped"] == "write failure"
    monkeypatch.setattr(rundir_module.torch, "save", real_save)
    assert main(["train", "--resume", str(run), "--quiet", "--no-plots"]) == 0
    assert _rows(run) == list(range(1, 7))


@pytest.mark.parametrize("edit, expected", [
    (lambda s: s.update(task="density"), "Unknown density dataset 'digits'"),
    (lambda s: s.update(lr="fast"), "do not make a run"),
    (lambda s: s.pop("batch_size"), "do not make a run"),
])
def test_an_edited_config_is_one_line_on_resume(tmp_path, capsys, edit, expected):
    run = tmp_path / "r"
    assert _train("--iterations", "2", "--run-dir", str(run)) == 0
    config = json.loads((run / "config.json").read_text())
    edit(config["settings"])
    (run / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--iterations", "4", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


@pytest.mark.parametrize("content, expected", [("{not json", "is corrupt"), ("[1, 2]", "no 'settings' object")])
def test_a_corrupt_config_is_named(tmp_path, capsys, content, expected):
    run = tmp_path / "r"
    assert _train("--iterations", "2", "--run-dir", str(run)) == 0
    (run / "config.json").write_text(content)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--resume", str(run), "--iterations", "4"])
    assert exc.value.code == 2 and str(run / "config.json") in capsys.readouterr().err


@pytest.mark.parametrize("content, expected", [
    ("a,b\n1,2\n", "is not a nodeopt metrics file"),
    (None, "is corrupt at line 3"),
])
def test_a_corrupt_metrics_file_is_named_before_training(tmp_path, capsys, content, expected):
    run = tmp_path / "r"
    assert _train("--iterations", "3", "--run-dir", str(run)) == 0
    path = run / "metrics.csv"
    if content is None:
        lines = path.read_text().splitlines()
        lines[2] = "x" + lines[2]
        content = "\n".join(lines) + "\n"
    path.write_text(content)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--iterations", "5", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert expected in err and str(path) in err


def test_a_last_row_cut_short_by_a_kill_is_dropped(tmp_path):
    run = tmp_path / "r"
    assert _train("--iterations", "3", "--run-dir", str(run)) == 0
    with open(run / "metrics.csv", "a") as f:
        f.write("4,0,0.1")  # the process died while writing iteration 4
    assert _rows(run) == [1, 2, 3]
    assert main(["train", "--resume", str(run), "--iterations", "5", "--quiet", "--no-plots"]) == 0
    assert _rows(run) == [1, 2, 3, 4, 5]


def test_sigterm_exits_143_and_the_summary_says_why(tmp_path):
    run = tmp_path / "r"
    proc = _process("--iterations", "100000", "--checkpoint-every", "100000", "--run-dir", str(run))
    _wait_for_rows(run, 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in err
    assert json.loads((run / "summary.json").read_text())["stopped"] == "SIGTERM"


@pytest.mark.parametrize("argv, message", [
    (["--divergence", "rademacher"], "argument --divergence: applies to the density task only"),
    (["--hidden", "8"], "argument --hidden: applies to the timeseries and density tasks only"),
    (["--task", "density", "--dataset", "moons", "--width", "8"], "argument --width: applies to the image task"),
])
def test_model_flags_of_another_task_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", *argv, "--iterations", "1"])
    assert exc.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--optimizer", "adam", "--momentum", "0.9"], "argument --momentum: applies to the sgd and snopt optimizers"),
    (["--optimizer", "sgd", "--snopt-freq", "5"], "argument --snopt-freq: applies to the snopt optimizer only"),
])
def test_optimizer_flags_of_another_optimizer_are_warned_about(tmp_path, argv, message, caplog):
    with caplog.at_level("WARNING", logger="nodeopt.train"):
        assert _train(*argv, "--iterations", "1", "--run-dir", str(tmp_path / "r")) == 0
    assert any(message in r.getMessage() and "ignored" in r.getMessage() for r in caplog.records)


def test_a_blown_up_solve_names_the_flag(tmp_path, capsys):
    code = _train("--method", "dopri5", "--optimizer", "sgd", "--lr", "1e4", "--iterations", "40", "--max-steps",
                  "3", "--run-dir", str(tmp_path / "r"))
    err = capsys.readouterr().err
    assert code == 1 and "--max-steps" in err and "max_num_steps" not in err and "Traceback" not in err


def test_an_unexpected_error_is_one_line_unless_debug_is_asked_for(tmp_path, capsys, monkeypatch):
    from nodeopt.tasks import loop

    def broken(self, *args):
        raise AttributeError("a bug")

    monkeypatch.setattr(loop.Trainer, "stop_reason", broken)
    assert _train("--iterations", "2", "--run-dir", str(tmp_path / "a")) == 1
    err = capsys.readouterr().err
    assert "unexpected error: AttributeError: a bug" in err and "--debug" in err
    with pytest.raises(AttributeError):
        _train("--iterations", "2", "--run-dir", str(tmp_path / "b"), "--debug")


def test_run_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        run = tmp_path / "r"
        assert _train("--iterations", "2", "--run-dir", str(run)) == 0
    finally:
        os.umask(old)
    for name in ("config.json", "metrics.csv", "checkpoint.pt", "summary.json"):
        assert (run / name).stat().st_mode & 0o777 == 0o644, name


def test_help_and_readme_document_the_exit_codes():
    out = subprocess.run([sys.executable, "-m", "nodeopt", "train", "--help"], capture_output=True, text=True,
                         cwd=ROOT).stdout
    for code in ("0 ", "1 ", "2 ", "130", "143"):
        assert f"\n  {code}" in out
    for flag in ("--epochs", "--batch-size", "--eval-every", "--checkpoint-every", "--width"):
        section = out[out.index(f"\n  {flag} "):]
        assert "default" in section[:400], flag


def test_importing_nodeopt_leaves_torch_for_later():
    """So that the command line's Ctrl-C handling is in place before the slow import of torch."""
    code = "import sys, nodeopt, nodeopt.cli; print('torch' in sys.modules); print(nodeopt.odeint.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "odeint"], out.stderr


def test_ctrl_c_while_a_command_starts_is_one_line(monkeypatch, capsys):
    import nodeopt.cli as cli

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_dispatch", interrupted)
    assert cli.main(["train"]) == 130
    assert capsys.readouterr().err == "nodeopt: interrupted before the command started\n"


def test_a_full_disk_when_the_summary_is_written_says_how_to_finish(tmp_path, capsys, monkeypatch):
    run = tmp_path / "r"

    def full(self, summary):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.file(RunDir.SUMMARY)))

    monkeypatch.setattr(RunDir, "write_summary", full)
    assert _train("--iterations", "2", "--run-dir", str(run)) == 1
    err = capsys.readouterr().err
    assert "the disk is full" in err and f"run --resume {run} to write its summary" in err and "Traceback" not in err
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--quiet", "--no-plots"]) == 0  # killed after its last checkpoint
    assert json.loads((run / "summary.json").read_text())["stopped"] == "budget"
