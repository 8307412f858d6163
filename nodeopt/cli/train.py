"""``nodeopt train``: train one model on one dataset and write its run directory.

The command in one trip down: the flags (:func:`add_arguments`) → every setting resolved
(:func:`resolve_settings`, defaults from :mod:`nodeopt.cli.defaults`) → the library's objects
(:func:`nodeopt.cli.build.build`) → the steps of a run in :mod:`nodeopt.tasks` (resume, fit,
summary). Library errors name the library's arguments; :func:`~nodeopt.cli.build.as_flags` puts
them in the flags' words.
"""

from __future__ import annotations

import argparse
import datetime
import errno
import logging
import math
import os
import secrets
import sys
import time
from pathlib import Path

import torch

from .. import data
from ..gradients import GRADIENTS
from ..solvers.methods import METHODS
from ..tasks import (Budget, CheckpointError, RunDir, RunDirBusy, Trainer, distributed, first_line, first_problem,
                     summarize, versions)
from ..tasks import resume as resume_from_checkpoint
from ..tasks import rundir
from ..tasks.distributed import World
from . import defaults, report
from .build import as_flags, build

logger = logging.getLogger("nodeopt.train")

#: The exit code of each way a run can end (any other failure: 1; bad flags, input or run directory: 2).
EXIT_CODES = {"budget": 0, "time budget": 0, "diverged": 1, "SIGINT": 130, "SIGTERM": 143}
EPILOG = """exit codes:
  0    the run finished (its iterations, epochs or time budget)
  1    it failed while training (diverged, solver failure, disk full, lost contact, an unexpected error)
  2    bad flags or input: a flag, the data, the run directory or its files (nothing was trained)
  130  stopped by Ctrl-C (SIGINT) after an iteration, with a checkpoint: continue with --resume RUN_DIR
  143  stopped by SIGTERM, likewise
summary.json in the run directory says why the run stopped ("stopped")."""

# Settings a resumed run takes from its config.json; only these may change on --resume.
BUDGET_FLAGS = ("iterations", "epochs", "time_budget", "device")


def _number(kind, test, what):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not (math.isfinite(value) and test(value)):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value
    return parse


POSITIVE = _number(float, lambda v: v > 0, "a positive number")
NONNEGATIVE = _number(float, lambda v: v >= 0, "a number ≥ 0")
COUNT = _number(int, lambda v: v >= 1, "a whole number ≥ 1")
FRACTION = _number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``nodeopt train`` (every default is resolved later, per task and dataset)."""
    g = p.add_argument_group("what to train")
    g.add_argument("--task", choices=sorted(defaults.TASK), default=None,
                   help="image classification, time-series classification or density estimation (default: image)")
    g.add_argument("--dataset", default=None,
                   help="a dataset of the task (default: the task's offline one: digits, japanese-vowels, moons); "
                        "see `nodeopt train --list-datasets`")
    g.add_argument("--data-dir", default=None, help="where dataset files are (default: $NODEOPT_DATA, else "
                                                    "~/.cache/nodeopt); missing files are downloaded there")
    g.add_argument("--train-fraction", type=_number(float, lambda v: 0 < v <= 1, "a number in (0, 1]"),
                   default=None, help="train on this fraction of the training set (a fixed random subset; "
                                      "the SNOpt code's --dataset-ratio)")
    g.add_argument("--no-download", action="store_true", default=None,
                   help="never download: fail at once when a file is missing")
    g.add_argument("--list-datasets", action="store_true", help="list every dataset and whether it is on disk")
    g = p.add_argument_group("model")
    g.add_argument("--width", type=COUNT, default=None, help=f"image: feature channels of the ConvODENet ({defaults.describe('width')})")
    g.add_argument("--hidden", type=COUNT, nargs="+", default=None,
                   help=f"time series: hidden size of the ODE-RNN; density: hidden sizes of each CNF field "
                        f"({defaults.describe('hidden')})")
    g.add_argument("--blocks", type=COUNT, default=None, help=f"density: number of CNF blocks ({defaults.describe('blocks')})")
    g.add_argument("--activation", choices=("softplus", "tanh", "relu", "elu"), default=None,
                   help="density: the activation of the CNF fields (default softplus)")
    g.add_argument("--divergence", choices=("exact", "rademacher", "gaussian"), default=None,
                   help=f"density: exact trace or Hutchinson's estimate ({defaults.describe('divergence')})")
    g.add_argument("--t1", type=POSITIVE, default=None, help="the ODE's integration time (default 1)")
    g = p.add_argument_group("solver and gradient")
    g.add_argument("--gradient", choices=sorted(GRADIENTS), default=None,
                   help="how gradients are computed (default: symplectic, exact at minimal memory)")
    g.add_argument("--method", choices=sorted(METHODS), default=None, help="Runge-Kutta method (default dopri5)")
    g.add_argument("--seminorm", action="store_true", default=None,
                   help="with --gradient adjoint: leave the parameters out of the backward error norm")
    g.add_argument("--compile", action="store_true", default=None,
                   help="compile each solver step (and each backward replay) into one graph with torch.compile: "
                        "faster iterations on small fields after a one-off compilation (seconds to a minute)")
    g.add_argument("--max-steps", type=COUNT, default=None,
                   help="most solver steps per solve (default 1000): a blown-up field fails fast instead of "
                        "crawling")
    g.add_argument("--rtol", type=POSITIVE, default=None, help="relative tolerance (default 1e-3)")
    g.add_argument("--atol", type=POSITIVE, default=None, help="absolute tolerance (default 1e-3)")
    g = p.add_argument_group("optimiser")
    g.add_argument("--optimizer", choices=("adam", "sgd", "snopt"), default=None,
                   help="adam, sgd, or snopt (SNOpt in front of SGD; the default)")
    g.add_argument("--lr", type=POSITIVE, default=None, help=f"learning rate ({defaults.describe('lr')})")
    g.add_argument("--momentum", type=FRACTION, default=None, help="SGD momentum, sgd and snopt only")
    g.add_argument("--weight-decay", type=NONNEGATIVE, default=None, help="weight decay (default 0)")
    g.add_argument("--lr2", type=POSITIVE, default=None,
                   help="if given, parameters outside the ODEs use Adam at this lr (the time-series recipes)")
    g.add_argument("--milestones", type=COUNT, nargs="+", default=None,
                   help="iterations at which the learning rates are multiplied by --gamma")
    g.add_argument("--gamma", type=POSITIVE, default=None, help="learning-rate decay factor at the milestones (default 0.1)")
    g.add_argument("--snopt-eps", type=POSITIVE, default=None, help="SNOpt's damping eps (default 0.05)")
    g.add_argument("--snopt-freq", type=COUNT, default=None, help="SNOpt's update_freq (default 100)")
    g.add_argument("--snopt-step-size", type=POSITIVE, default=None, help=f"SNOpt's snopt_step_size ({defaults.describe('snopt_step_size')})")
    g = p.add_argument_group("integration-time optimisation")
    g.add_argument("--t1-optimize", choices=("baseline", "feedback"), default=None,
                   help="co-optimise the ODE's t1 (image and density tasks)")
    g.add_argument("--t1-lr", type=POSITIVE, default=None, help="t1's learning rate (default 0.1)")
    g.add_argument("--t1-reg", type=NONNEGATIVE, default=None, help="quadratic penalty on t1 (default 1e-3)")
    g.add_argument("--t1-update-freq", type=COUNT, default=None, help="move t1 every this many iterations (default 50)")
    g = p.add_argument_group("budget and bookkeeping")
    g.add_argument("--epochs", type=COUNT, default=None, help=f"passes over the training set ({defaults.describe('epochs')})")
    g.add_argument("--iterations", type=COUNT, default=None, help=f"total iterations; overrides --epochs ({defaults.describe('iterations')})")
    g.add_argument("--time-budget", type=POSITIVE, default=None, help="stop after this many training seconds")
    g.add_argument("--batch-size", type=COUNT, default=None, help=f"examples per iteration, over all processes ({defaults.describe('batch_size')})")
    g.add_argument("--eval-every", type=COUNT, default=None, help=f"evaluate the test metric every N iterations and at the end "
                        f"({defaults.describe('eval_every')})")
    g.add_argument("--checkpoint-every", type=COUNT, default=None, help=f"write {RunDir.CHECKPOINT} every N iterations and at the end "
                        f"({defaults.describe('checkpoint_every')})")
    g.add_argument("--seed", type=int, default=None, help="seed of the initialisation and the batch order (default 0)")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                   help="where to train (default: cuda when available)")
    g.add_argument("--run-dir", default=None,
                   help="the run directory, claimed for this run alone (default "
                        "runs/<task>-<dataset>-<optimizer>-<timestamp>-<4 random hex digits>)")
    g.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue the run in RUN_DIR from its last checkpoint (from its start, with its saved "
                        "settings, if it stopped before its first); give a larger --iterations or --epochs to "
                        "train further")
    g.add_argument("--quiet", action="store_true", default=None, help="no progress bar")
    g.add_argument("--nproc", type=COUNT, default=None,
                   help="train on this many processes on this machine (starts torchrun --standalone "
                        "--nproc-per-node N; --batch-size stays the global batch)")
    g.add_argument("--dist-timeout", type=POSITIVE, default=None,
                   help=f"with several processes: seconds a rank waits for the others before the run fails "
                        f"(default {distributed.DEFAULT_TIMEOUT:g})")
    g.add_argument("--no-plots", action="store_true", default=None, help="do not write PNG plots")
    g.add_argument("--debug", action="store_true", help="show the Python traceback of an unexpected error "
                                                        "(also NODEOPT_DEBUG=1)")


def resolve_settings(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict:
    """Every setting of the run, from the flags and the defaults; bad values stop with the flag named."""
    given = vars(args)
    task = given["task"] or "image"
    dataset = given["dataset"] or defaults.TASK[task]["dataset"]
    if dataset not in data.DATASETS[task]:
        parser.error(f"argument --dataset: {dataset!r} is not a {task} dataset; choose one of "
                     f"{', '.join(data.DATASETS[task])}")
    optimizer = given["optimizer"] or "snopt"
    s = dict(task=task, dataset=dataset, optimizer=optimizer)
    for name in ("data_dir", "width", "hidden", "blocks", "divergence", "activation", "field_width", "field_layers",
                 "t1", "gradient", "method", "rtol", "atol", "lr", "momentum", "weight_decay", "lr2", "milestones",
                 "gamma", "snopt_eps", "snopt_freq", "snopt_step_size", "t1_optimize", "t1_lr", "t1_reg",
                 "t1_update_freq", "epochs", "iterations", "time_budget", "batch_size", "eval_every",
                 "checkpoint_every", "seed", "device", "run_dir", "train_fraction", "seminorm", "max_steps", "compile"):
        s[name] = defaults.resolve(name, task, dataset, optimizer, given.get(name))
    if optimizer == "adam":
        s["momentum"] = None
    _refuse_inapplicable(given, task, optimizer, parser)
    if task == "timeseries" and isinstance(s["hidden"], list):
        s["hidden"] = s["hidden"][0]
    if task == "timeseries" and s["t1_optimize"]:
        parser.error("argument --t1-optimize: the time-series model solves one ODE per observation gap; "
                     "integration-time optimisation is for the image and density tasks")
    if s["seminorm"] and s["gradient"] != "adjoint":
        parser.error(f"argument --seminorm: applies to --gradient adjoint only (this run uses {s['gradient']})")
    s["download"] = not given.get("no_download")
    s["device"] = _device(s["device"], parser)
    if s["iterations"] is None and s["epochs"] is None:
        s["epochs"] = defaults.DEFAULT_EPOCHS
    return s


# Flags that mean something for some tasks or optimisers only (given elsewhere they would be ignored).
FOR_TASKS = {"width": ("image",), "hidden": ("timeseries", "density"), "blocks": ("density",),
             "activation": ("density",), "divergence": ("density",)}
FOR_OPTIMIZERS = {"momentum": ("sgd", "snopt"), "snopt_eps": ("snopt",), "snopt_freq": ("snopt",),
                  "snopt_step_size": ("snopt",)}


def _refuse_inapplicable(given: dict, task: str, optimizer: str, parser) -> None:
    """A model flag of another task stops the command; an optimiser's flag for another optimiser is a warning
    (one command line can then serve every optimiser of a comparison)."""
    for table, chosen, what in ((FOR_TASKS, task, "task"), (FOR_OPTIMIZERS, optimizer, "optimizer")):
        for name, valid in table.items():
            if given.get(name) is not None and chosen not in valid:
                text = (f"argument --{name.replace('_', '-')}: applies to the {' and '.join(valid)} "
                        f"{what}{'s' if len(valid) > 1 else ''} only, and this run's {what} is {chosen}")
                if what == "task":
                    parser.error(f"{text}; leave it out or choose --{what} {valid[0]}")
                logger.warning("%s: it is ignored", text)


def _device(name, parser) -> str:
    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: cuda was asked for, but torch sees no CUDA device; use --device cpu")
    return name


def default_run_dir(s: dict, world: World = World()) -> str:
    """``runs/<task>-<dataset>-<optimizer>-<stamp>``: a timestamp and 4 random hex digits, or torchrun's run id.

    torchrun's run id is the same on every rank and in a restarted attempt, so restarted
    processes find the run directory (and its checkpoint) of the attempt that failed.
    """
    if world.run_id != "none":
        stamp = world.run_id[:8]
    else:
        # the second and a random suffix: two runs started in the same second get different folders
        stamp = world.broadcast(f"{datetime.datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}")
    return str(Path("runs") / f"{s['task']}-{s['dataset']}-{s['optimizer']}-{stamp}")


def main(argv=None, prog: str = "nodeopt train") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=f"Train a neural ODE on one dataset and write its run "
                                     f"directory ({RunDir.CONFIG}, {RunDir.METRICS}, {RunDir.CHECKPOINT}, plots).",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    world = World.from_environment()
    if args.nproc is not None:
        if world.launched():
            parser.error(f"argument --nproc: this process was already started by torchrun ({world.size} processes); "
                         f"leave --nproc out under torchrun")
        return _start_torchrun(args.nproc, argv)
    try:
        return _main(args, parser, world)
    except KeyboardInterrupt:  # Ctrl-C before the training loop (which stops cleanly by itself)
        print("nodeopt train: interrupted before training started; nothing was trained", file=sys.stderr)
        return EXIT_CODES["SIGINT"]
    except Exception as err:
        if args.debug or os.environ.get("NODEOPT_DEBUG"):
            raise
        print(f"nodeopt train: unexpected error: {type(err).__name__}: {first_line(err)} (rerun with --debug, or "
              f"NODEOPT_DEBUG=1, to see the traceback)", file=sys.stderr)
        return 1


def _start_torchrun(nproc: int, argv: list) -> int:
    """Run ``torchrun --standalone --nproc-per-node N -m nodeopt train ARGS`` in this process; its exit code.

    torchrun's own launcher runs here, so that a failed process is reported once, by the process
    itself (nodeopt train's one line), and not again as torchrun's ``ChildFailedError`` traceback:
    this process exits with the code the training processes agreed on (the first failure's).
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    launch = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "nodeopt", "train",
                                           *rest])
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # the processes report for themselves
    try:
        run(launch)
    except ChildFailedError as err:
        _, first = err.get_first_failure()
        return first.exitcode if first.exitcode > 0 else 128 - first.exitcode  # killed by a signal: 128 + signal
    except SignalException as err:  # the launcher itself was signalled; its processes were stopped
        return 128 + err.sigval
    return 0


def _main(args, parser, world: World) -> int:
    if args.list_datasets:
        for task, specs in data.DATASETS.items():
            for name in specs:
                where = "offline" if specs[name].offline else (
                    "on disk" if data.is_available(task, name, args.data_dir) else "not on disk")
                print(f"{task:11s} {name:16s} {where}")
        return 0
    timeout = args.dist_timeout or distributed.DEFAULT_TIMEOUT
    settings = _resumed_settings(args, parser) if args.resume else resolve_settings(args, parser)
    try:
        device = distributed.start(world, settings["device"], timeout) if world.launched() else None
    except ValueError as err:  # more processes than devices
        parser.error(as_flags(str(err), settings))
    if not args.resume:
        if settings["run_dir"] is None and world.max_restarts and world.run_id == "none":
            parser.error("argument --run-dir: torchrun may restart this run (--max-restarts), and without --run-dir "
                         "or --rdzv-id the restarted processes could not find its checkpoint; give --run-dir")
        settings["run_dir"] = settings["run_dir"] or default_run_dir(settings, world)
        if world.restart and world.broadcast(RunDir(settings["run_dir"]).file(RunDir.CHECKPOINT).exists()):
            logger.info("restart %d of this run: resuming from %s", world.restart, settings["run_dir"])
            args.resume = settings["run_dir"]
            settings = _resumed_settings(args, parser)
    try:
        code = run_training(settings, resume=bool(args.resume), progress=not args.quiet, plots=not args.no_plots,
                            world=world, device=device, timeout=timeout)
    finally:
        distributed.stop()
    if world.distributed:
        # Leave at once, without interpreter shutdown: there, process-group threads (DDP's, gloo's) are
        # sometimes torn down in the wrong order and abort ("terminate called without an active
        # exception"), and torchrun then reports a run that succeeded, or the real error, as that abort.
        # Everything this process wrote is closed by now (run directory files are written atomically).
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def run_training(s: dict, resume: bool = False, progress: bool = True, plots: bool = True, world: World = World(),
                 device=None, timeout: float = distributed.DEFAULT_TIMEOUT) -> int:
    """Train with resolved settings ``s``; returns the process exit code (see ``EXIT_CODES``).

    Under torchrun (``world`` of several processes, its group started) every rank calls this; a
    problem found before training on any rank stops every rank with the same exit code, and rank 0
    reports it. Rank 0 claims the run directory (:meth:`RunDir.claim`, or its lock on ``--resume``)
    for as long as it trains.
    """
    run = RunDir(s["run_dir"])
    try:
        problem = first_problem(world, _claim(run, resume or world.restart > 0) if world.main else "")
        if problem:
            return _report(world, problem, 2)
        return _train(run, s, resume, progress, plots, world, device, timeout)
    finally:
        run.release()


def _claim(run: RunDir, resume: bool) -> str:
    """Take the run directory for this process; a problem, or ``""``."""
    try:
        run.lock() if resume else run.claim()
    except RunDirBusy as err:
        if err.in_use:
            return f"{err}; wait for it to end, or choose another --run-dir"
        return f"{err}; continue it with --resume {run.path}, or choose another --run-dir"
    except OSError as err:
        return _path_problem(err, run, "--run-dir")
    return ""


def _train(run: RunDir, s: dict, resume: bool, progress: bool, plots: bool, world: World, device, timeout) -> int:
    trainer, problem = None, ""
    try:
        trainer = build(s, world, device)
    except (data.DataUnavailable, data.DataCorrupt, ImportError, ValueError) as err:
        problem = as_flags(str(err), s)
    except (TypeError, KeyError) as err:  # only a hand-edited config.json gets here: the flags are checked
        problem = f"the settings in {run.file(RunDir.CONFIG)} do not make a run ({first_line(err)}); restore the file"
    problem = first_problem(world, problem)
    if problem:
        return _report(world, problem, 2)
    iterations = s["iterations"] or s["epochs"] * trainer.batches_per_epoch
    if resume:
        problem = _resume(trainer, run, world, iterations)
        if problem:
            return _report(world, problem, 2)
    task, model = trainer.task, trainer.model
    config = dict(settings=s, resolved_iterations=iterations, batches_per_epoch=trainer.batches_per_epoch,
                  data=task.describe(), parameters=sum(p.numel() for p in model.parameters()),
                  processes=world.size, versions=versions(), command=sys.argv)
    shown = None
    if world.main:
        try:
            run.write_config(config)
        except OSError as err:
            return _report(world, _path_problem(err, run, "--run-dir"), 2)
        shown = report.progress(progress, iterations, trainer.progress.iteration)
        trainer.on_iteration = shown.update
    t0 = time.perf_counter()
    try:
        result = trainer.fit(Budget(iterations, s["time_budget"]))
    except (RuntimeError, OSError, CheckpointError) as err:  # the solver gave up, another rank did, or the disk
        if shown is not None:
            shown.close()
        return _failed(trainer, run, s, world, err, timeout)
    if shown is not None:
        shown.close()
    code = EXIT_CODES.get(result.stopped, 0)
    if world.main:
        summary = summarize(trainer, optimizer=s["optimizer"], gradient=s["gradient"])
        try:
            run.write_summary(summary)
        except OSError as err:  # trained and checkpointed, but the summary did not fit on the disk
            print(f"nodeopt train: {_path_problem(err, run, '--run-dir')}; the run's checkpoint is whole: free the "
                  f"space and run --resume {run.path} to write its summary", file=sys.stderr)
            code = 1
        else:
            if plots:
                report.plots(run, task, model)
            report.print_summary(summary, time.perf_counter() - t0)
    world.barrier()  # leave the group together (a rank gone early would tear down the others' connections)
    return code


def _resume(trainer: Trainer, run: RunDir, world: World, iterations: int) -> str:
    """Continue from the checkpoint; a run stopped before its first one starts again from iteration 0."""
    if not world.broadcast(run.file(RunDir.CHECKPOINT).exists()):
        if world.main:
            logger.info("%s has no checkpoint yet: training it again from iteration 0 with its saved settings",
                        run.path)
        return ""
    problem = ""
    if world.main:
        try:
            run.read_metrics()  # a broken metrics.csv is found now, not after the first iteration
        except CheckpointError as err:
            problem = str(err)
    problem = first_problem(world, problem) or resume_from_checkpoint(trainer)
    finished = (run.read_summary() or {}).get("stopped") in rundir.FINISHED if world.main else False
    # A run killed after its last checkpoint but before its summary finishes now, training nothing.
    if not problem and trainer.progress.iteration >= iterations and world.broadcast(finished):
        problem = (f"the run in {run.path} already has {trainer.progress.iteration} iterations; give a larger "
                   f"--iterations or --epochs to train further")
    return problem


def _failed(trainer: Trainer, run: RunDir, s: dict, world: World, err: BaseException, timeout: float) -> int:
    """Report a run that failed while training: one line, the summary, exit code 1."""
    first, lost = as_flags(first_line(err), s), distributed.is_lost_contact(err)
    if isinstance(err, OSError):
        first = (f"{_path_problem(err, run, '--run-dir')}; the last checkpoint is intact: free the space (or fix "
                 f"the folder) and continue with --resume {run.path}")
        trainer.progress.stopped = "write failure"
    elif lost:
        first = (f"lost contact with the other processes (one of them failed, was killed, or did not answer "
                 f"within --dist-timeout {timeout:g} s): {first}")
        trainer.progress.stopped = "lost contact"
    else:
        trainer.progress.stopped = "solver failure"
    if world.main:
        try:
            run.write_summary(summarize(trainer, optimizer=s["optimizer"], gradient=s["gradient"], error=first))
        except OSError:
            pass  # the disk that failed the checkpoint fails the summary too: the message below says so
    print(f"{_who(world)}: training stopped at iteration {trainer.progress.iteration}: {first}", file=sys.stderr)
    return 1


def _path_problem(err: OSError, run: RunDir, flag: str) -> str:
    """One line for a file-system error: the path, what went wrong, and what to do."""
    path = err.filename or run.path
    if isinstance(err, (NotADirectoryError, FileExistsError)):
        return f"{flag} {run.path}: {path} is a file, not a folder; choose another {flag}"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{flag} {run.path}: cannot write {path} ({err.strerror}); choose a folder you can write"
    if err.errno == errno.ENOSPC:
        return f"cannot write {path}: the disk is full"
    return f"cannot write {path} ({err.strerror or first_line(err)})"


def _report(world: World, problem: str, code: int) -> int:
    """Every rank stops here together: rank 0 prints the problem."""
    if world.main:
        print(f"nodeopt train: {problem}", file=sys.stderr)
    world.barrier()  # leave the group together (a rank gone early would tear down the others' connections)
    return code


def _who(world: World) -> str:
    return f"nodeopt train (rank {world.rank} of {world.size})" if world.distributed else "nodeopt train"


def _resumed_settings(args, parser) -> dict:
    try:
        config = RunDir(args.resume).read_config()
    except CheckpointError as err:
        parser.error(f"argument --resume: {err}")
    s = dict(config["settings"])
    for name, value in vars(args).items():
        if value is None or name in BUDGET_FLAGS or name not in s:
            continue  # not given, allowed to change, or not a setting (--resume, --list-datasets)
        if name == "hidden" and s["task"] == "timeseries":
            value = value[0]
        if value != s[name]:
            parser.error(f"argument --{name.replace('_', '-')}: cannot be changed when resuming (the run used "
                         f"{s[name]!r}); only --iterations, --epochs, --time-budget and --device may")
    for name in ("iterations", "epochs", "time_budget"):
        if getattr(args, name) is not None:
            s[name] = getattr(args, name)
            if name == "epochs":
                s["iterations"] = None
    s["device"] = _device(args.device or s["device"], parser)
    s["run_dir"] = str(Path(args.resume))
    return s


if __name__ == "__main__":
    sys.exit(main())
