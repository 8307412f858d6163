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
import logging
import math
import os
import sys
import time
from pathlib import Path

import torch

from .. import data
from ..gradients import GRADIENTS
from ..solvers.methods import METHODS
from ..tasks import Budget, CheckpointError, RunDir, distributed, first_problem, summarize, versions
from ..tasks import resume as resume_from_checkpoint
from ..tasks.distributed import World
from . import defaults, report
from .build import as_flags, build

logger = logging.getLogger("nodeopt.train")

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
    g.add_argument("--width", type=COUNT, default=None, help="image: feature channels of the ConvODENet")
    g.add_argument("--hidden", type=COUNT, nargs="+", default=None,
                   help="time series: hidden size of the ODE-RNN; density: hidden sizes of each CNF field")
    g.add_argument("--blocks", type=COUNT, default=None, help="density: number of CNF blocks")
    g.add_argument("--activation", choices=("softplus", "tanh", "relu", "elu"), default=None,
                   help="density: the activation of the CNF fields (default softplus)")
    g.add_argument("--divergence", choices=("exact", "rademacher", "gaussian"), default=None,
                   help="density: exact trace or Hutchinson's estimate")
    g.add_argument("--t1", type=POSITIVE, default=None, help="the ODE's integration time (default 1)")
    g = p.add_argument_group("solver and gradient")
    g.add_argument("--gradient", choices=sorted(GRADIENTS), default=None,
                   help="how gradients are computed (default: symplectic, exact at minimal memory)")
    g.add_argument("--method", choices=sorted(METHODS), default=None, help="Runge-Kutta method (default dopri5)")
    g.add_argument("--seminorm", action="store_true", default=None,
                   help="with --gradient adjoint: leave the parameters out of the backward error norm")
    g.add_argument("--max-steps", type=COUNT, default=None,
                   help="most solver steps per solve (default 1000): a blown-up field fails fast instead of "
                        "crawling")
    g.add_argument("--rtol", type=POSITIVE, default=None, help="relative tolerance (default 1e-3)")
    g.add_argument("--atol", type=POSITIVE, default=None, help="absolute tolerance (default 1e-3)")
    g = p.add_argument_group("optimiser")
    g.add_argument("--optimizer", choices=("adam", "sgd", "snopt"), default=None,
                   help="adam, sgd, or snopt (SNOpt in front of SGD; the default)")
    g.add_argument("--lr", type=POSITIVE, default=None, help="learning rate (default per task and optimiser)")
    g.add_argument("--momentum", type=FRACTION, default=None, help="SGD momentum (sgd and snopt)")
    g.add_argument("--weight-decay", type=NONNEGATIVE, default=None, help="weight decay")
    g.add_argument("--lr2", type=POSITIVE, default=None,
                   help="if given, parameters outside the ODEs use Adam at this lr (the time-series recipes)")
    g.add_argument("--milestones", type=COUNT, nargs="+", default=None,
                   help="iterations at which the learning rates are multiplied by --gamma")
    g.add_argument("--gamma", type=POSITIVE, default=None, help="learning-rate decay factor at the milestones")
    g.add_argument("--snopt-eps", type=POSITIVE, default=None, help="SNOpt's damping eps (default 0.05)")
    g.add_argument("--snopt-freq", type=COUNT, default=None, help="SNOpt's update_freq (default 100)")
    g.add_argument("--snopt-step-size", type=POSITIVE, default=None, help="SNOpt's snopt_step_size")
    g = p.add_argument_group("integration-time optimisation")
    g.add_argument("--t1-optimize", choices=("baseline", "feedback"), default=None,
                   help="co-optimise the ODE's t1 (image and density tasks)")
    g.add_argument("--t1-lr", type=POSITIVE, default=None, help="t1's learning rate (default 0.1)")
    g.add_argument("--t1-reg", type=NONNEGATIVE, default=None, help="quadratic penalty on t1 (default 1e-3)")
    g.add_argument("--t1-update-freq", type=COUNT, default=None, help="move t1 every this many iterations")
    g = p.add_argument_group("budget and bookkeeping")
    g.add_argument("--epochs", type=COUNT, default=None, help="passes over the training set")
    g.add_argument("--iterations", type=COUNT, default=None, help="total iterations (overrides --epochs)")
    g.add_argument("--time-budget", type=POSITIVE, default=None, help="stop after this many training seconds")
    g.add_argument("--batch-size", type=COUNT, default=None, help="examples per iteration")
    g.add_argument("--eval-every", type=COUNT, default=None, help="evaluate the test metric every N iterations")
    g.add_argument("--checkpoint-every", type=COUNT, default=None, help=f"write {RunDir.CHECKPOINT} every N iterations")
    g.add_argument("--seed", type=int, default=None, help="seed of the initialisation and the batch order")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                   help="where to train (default: cuda when available)")
    g.add_argument("--run-dir", default=None,
                   help="the run directory (default runs/<task>-<dataset>-<optimizer>-<timestamp>)")
    g.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue the run in RUN_DIR from its last checkpoint (give a larger --iterations or "
                        "--epochs to train further)")
    g.add_argument("--quiet", action="store_true", default=None, help="no progress bar")
    g.add_argument("--nproc", type=COUNT, default=None,
                   help="train on this many processes on this machine (starts torchrun --standalone "
                        "--nproc-per-node N; --batch-size stays the global batch)")
    g.add_argument("--dist-timeout", type=POSITIVE, default=None,
                   help=f"with several processes: seconds a rank waits for the others before the run fails "
                        f"(default {distributed.DEFAULT_TIMEOUT:g})")
    g.add_argument("--no-plots", action="store_true", default=None, help="do not write PNG plots")


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
                 "checkpoint_every", "seed", "device", "run_dir", "train_fraction", "seminorm", "max_steps"):
        s[name] = defaults.resolve(name, task, dataset, optimizer, given.get(name))
    if optimizer == "adam":
        s["momentum"] = None
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


def _device(name, parser) -> str:
    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: cuda was asked for, but torch sees no CUDA device; use --device cpu")
    return name


def default_run_dir(s: dict, world: World = World()) -> str:
    """``runs/<task>-<dataset>-<optimizer>-<stamp>``: a timestamp, or under torchrun its run id.

    torchrun's run id is the same on every rank and in a restarted attempt, so restarted
    processes find the run directory (and its checkpoint) of the attempt that failed.
    """
    if world.run_id != "none":
        stamp = world.run_id[:8]
    else:
        stamp = world.broadcast(datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    return str(Path("runs") / f"{s['task']}-{s['dataset']}-{s['optimizer']}-{stamp}")


def main(argv=None, prog: str = "nodeopt train") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=f"Train a neural ODE on one dataset and write its run "
                                     f"directory ({RunDir.CONFIG}, {RunDir.METRICS}, {RunDir.CHECKPOINT}, plots).")
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
    if world.launched():
        from torch.distributed.elastic.multiprocessing.errors import record
        return record(_main)(args, parser, world)
    return _main(args, parser, world)


def _start_torchrun(nproc: int, argv: list) -> int:
    """Replace this process by ``torchrun --standalone --nproc-per-node N -m nodeopt train ARGS``."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "nodeopt", "train", *rest]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)
    return 1  # not reached


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
    """Train with resolved settings ``s``; returns the process exit code.

    Under torchrun (``world`` of several processes, its group started) every rank calls this; a
    problem found before training on any rank stops every rank with the same exit code, and rank 0
    reports it.
    """
    run = RunDir(s["run_dir"])
    problem = ""
    if world.main and not resume and not world.restart and run.file(RunDir.METRICS).exists():
        problem = (f"{run.path} already holds a run; continue it with --resume {run.path}, or choose another "
                   f"--run-dir")
    problem = first_problem(world, problem)
    if problem:
        return _report(world, problem, 2)
    trainer = None
    try:
        trainer = build(s, world, device)
    except (data.DataUnavailable, data.DataCorrupt, ImportError, ValueError) as err:
        problem = as_flags(str(err), s)
    problem = first_problem(world, problem)
    if problem:
        return _report(world, problem, 2)
    iterations = s["iterations"] or s["epochs"] * trainer.batches_per_epoch
    if resume:
        problem = resume_from_checkpoint(trainer)
        if not problem and trainer.progress.iteration >= iterations:
            problem = (f"the run in {run.path} already has {trainer.progress.iteration} iterations; give a larger "
                       f"--iterations or --epochs to train further")
        if problem:
            return _report(world, problem, 2)
    task, model = trainer.task, trainer.model
    config = dict(settings=s, resolved_iterations=iterations, batches_per_epoch=trainer.batches_per_epoch,
                  data=task.describe(), parameters=sum(p.numel() for p in model.parameters()),
                  processes=world.size, versions=versions(), command=sys.argv)
    shown = None
    if world.main:
        run.write_config(config)
        shown = report.progress(progress, iterations, trainer.progress.iteration)
        trainer.on_iteration = shown.update
    t0 = time.perf_counter()
    try:
        result = trainer.fit(Budget(iterations, s["time_budget"]))
    except RuntimeError as err:  # the solver gave up (a blown-up field, too many steps), or another rank did
        if shown is not None:
            shown.close()
        first, lost = as_flags(str(err).splitlines()[0], s), distributed.is_lost_contact(err)
        if lost:
            first = (f"lost contact with the other processes (one of them failed, was killed, or did not answer "
                     f"within --dist-timeout {timeout:g} s): {first}")
        trainer.progress.stopped = "lost contact" if lost else "solver failure"
        if world.main:
            run.write_summary(summarize(trainer, optimizer=s["optimizer"], gradient=s["gradient"], error=first))
        print(f"{_who(world)}: training stopped at iteration {trainer.progress.iteration}: {first}", file=sys.stderr)
        return 1
    if shown is not None:
        shown.close()
    if world.main:
        summary = summarize(trainer, optimizer=s["optimizer"], gradient=s["gradient"])
        run.write_summary(summary)
        if plots:
            report.plots(run, task, model)
        report.print_summary(summary, time.perf_counter() - t0)
    world.barrier()  # leave the group together (a rank gone early would tear down the others' connections)
    return 0 if result.stopped != "diverged" else 1


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
