"""Build a run from resolved settings, train it, and report: the body of ``nodeopt train``."""

from __future__ import annotations

import logging
import math
import sys
import time

import torch

from .. import data
from ..optim import IntegrationTimeOptimizer
from ..tasks import Budget, CheckpointError, RunDir, Trainer, make_optimizers, make_task
from ..tasks import distributed
from ..tasks.distributed import World
from ..tasks.loop import rank_seed
from ..tasks.tasks import ode_blocks

logger = logging.getLogger("nodeopt.train")


def build(s: dict, world: World = World(), device=None):
    """The task, model, optimisers, SNOpt, t1 optimiser and schedulers of settings ``s``.

    With several processes, the first on each machine reads (or downloads) the data before
    the others; every rank builds the same initial model, and ranks other than 0 then draw
    their own random stream (Hutchinson's noise).
    """
    from .train import block_options, model_options
    dataset = _load_in_turn(s, world)
    task = make_task(s["task"], dataset, device or s["device"], train_fraction=s.get("train_fraction") or 1.0)
    torch.manual_seed(s["seed"])  # the command line resolves the one seed of the run
    model = task.build_model(**model_options(s), **block_options(s))
    if world.rank > 0:
        torch.manual_seed(rank_seed(s["seed"], world.rank))
    optimizers, precond = make_optimizers(
        s["optimizer"], model, lr=s["lr"], momentum=s["momentum"] or 0.0, weight_decay=s["weight_decay"],
        lr2=s["lr2"], snopt_eps=s["snopt_eps"], snopt_freq=s["snopt_freq"], snopt_step_size=s["snopt_step_size"])
    t1_opt = None
    if s["t1_optimize"]:
        blocks = ode_blocks(model)
        if len(blocks) != 1:
            raise ValueError(f"--t1-optimize needs a model with one ODE block; this one has {len(blocks)}")
        t1_opt = IntegrationTimeOptimizer(blocks[0], method=s["t1_optimize"], t1_lr=s["t1_lr"], t1_reg=s["t1_reg"],
                                          t1_update_freq=s["t1_update_freq"])
    schedulers = [torch.optim.lr_scheduler.MultiStepLR(o, milestones=s["milestones"], gamma=s["gamma"])
                  for o in optimizers] if s["milestones"] else []
    return task, model, optimizers, precond, t1_opt, schedulers


def run_training(s: dict, resume: bool = False, progress: bool = True, plots: bool = True,
                 world: World = World(), timeout: float = distributed.DEFAULT_TIMEOUT) -> int:
    """Train with settings ``s`` (see ``nodeopt.cli.train``); returns the process exit code.

    Under torchrun (``world`` of several processes) every rank calls this; a problem found before
    training on any rank stops every rank with the same exit code, and rank 0 reports it.
    """
    device = distributed.start(world, s["device"], timeout) if world.launched() else None
    run = RunDir(s["run_dir"])
    problem = ""
    if world.main and not resume and not world.restart and run.file("metrics.csv").exists():
        problem = (f"{run.path} already holds a run; continue it with --resume {run.path}, or choose another "
                   f"--run-dir")
    problem = _first_problem(world, problem)
    if problem:
        return _report(world, problem, 2)
    try:
        task, model, optimizers, precond, t1_opt, schedulers = build(s, world, device)
        trainer = Trainer(task, model, optimizers, run, batch_size=s["batch_size"], seed=s["seed"], precond=precond,
                          t1_optimizer=t1_opt, schedulers=schedulers, eval_every=s["eval_every"],
                          checkpoint_every=s["checkpoint_every"], world=world)
    except (data.DataUnavailable, data.DataCorrupt, ImportError, ValueError) as err:
        problem = str(err)
    problem = _first_problem(world, problem)
    if problem:
        return _report(world, problem, 2)
    iterations = s["iterations"] or s["epochs"] * trainer.batches_per_epoch
    if resume:
        problem = _resume(trainer, run, world, iterations)
        if problem:
            return _report(world, problem, 2)
    config = dict(settings=s, resolved_iterations=iterations, batches_per_epoch=trainer.batches_per_epoch,
                  data=task.describe(), parameters=sum(p.numel() for p in model.parameters()),
                  processes=world.size, versions=_versions(), command=sys.argv)
    bar = None
    if world.main:
        run.write_config(config)
        bar = _progress_bar(progress, iterations, trainer.progress.iteration, task.metric)
        trainer.on_iteration = bar.update if bar is not None else _log_evaluations
    t0 = time.perf_counter()
    try:
        result = trainer.fit(Budget(iterations, s["time_budget"]))
    except RuntimeError as err:  # the solver gave up (a blown-up field, too many steps), or another rank did
        if bar is not None:
            bar.close()
        first, lost = str(err).splitlines()[0], distributed.is_lost_contact(err)
        if lost:
            first = (f"lost contact with the other processes (one of them failed, was killed, or did not answer "
                     f"within --dist-timeout {timeout:g} s): {first}")
        trainer.progress.stopped = "lost contact" if lost else "solver failure"
        if world.main:
            run.write_summary(_summary(trainer, s, config, first))
        print(f"{_who(world)}: training stopped at iteration {trainer.progress.iteration}: {first}", file=sys.stderr)
        return 1
    if bar is not None:
        bar.close()
    if world.main:
        summary = _summary(trainer, s, config)
        run.write_summary(summary)
        if plots:
            _plots(run, task, model)
        _print_summary(summary, time.perf_counter() - t0)
    world.barrier()  # leave the group together (a rank gone early would tear down the others' connections)
    return 0 if result.stopped != "diverged" else 1


def _load_in_turn(s: dict, world: World):
    """The dataset; with several processes on a machine its first reads (downloads) it before the others."""
    def load():
        return data.load(s["task"], s["dataset"], data_dir=s["data_dir"], download=s["download"])

    if world.local_size == 1 or not world.distributed:
        return load()
    first = world.local_rank == 0
    result, error = None, None
    if first:
        try:
            result = load()
        except Exception as err:  # reported after the barrier, so the other ranks do not wait for nothing
            error = err
    world.barrier()
    if error is not None:
        raise error
    return result if first else load()


def _resume(trainer: Trainer, run: RunDir, world: World, iterations: int) -> str:
    """Restore the checkpoint (rank 0 reads it, every rank restores it); returns a problem, or ''."""
    state, problem = None, ""
    if world.main:
        try:
            state = run.load_checkpoint(map_location="cpu")  # the RNG states must stay on the CPU
        except CheckpointError as err:
            problem = str(err)
    problem = world.broadcast(problem)
    if problem:
        return problem
    state = world.broadcast(state)
    try:
        trainer.restore(state)
    except CheckpointError as err:
        problem = str(err)
    problem = _first_problem(world, problem)
    if not problem and trainer.progress.iteration >= iterations:
        problem = (f"the run in {run.path} already has {trainer.progress.iteration} iterations; give a larger "
                   f"--iterations or --epochs to train further")
    return problem


def _first_problem(world: World, problem: str) -> str:
    """The first rank's problem (every rank gets the same answer, so all stop or all go on)."""
    found = [(rank, p) for rank, p in enumerate(world.gather(problem)) if p]
    if not found:
        return ""
    rank, first = found[0]
    return first if rank == 0 or not world.distributed else f"on rank {rank}: {first}"


def _report(world: World, problem: str, code: int) -> int:
    """Every rank stops here together: rank 0 prints the problem."""
    if world.main:
        print(f"nodeopt train: {problem}", file=sys.stderr)
    world.barrier()  # leave the group together (a rank gone early would tear down the others' connections)
    return code


def _who(world: World) -> str:
    return f"nodeopt train (rank {world.rank} of {world.size})" if world.distributed else "nodeopt train"


def _versions() -> dict:
    from .train import versions
    return versions()


def _summary(trainer: Trainer, s: dict, config: dict, error: str = "") -> dict:
    p = trainer.progress
    peak = torch.cuda.max_memory_allocated() if trainer.task.device.type == "cuda" else None
    return dict(peak_cuda_bytes=peak, run_dir=s["run_dir"], task=s["task"], dataset=s["dataset"], optimizer=s["optimizer"],
                gradient=s["gradient"], metric_name=trainer.task.metric, iterations=p.iteration,
                train_seconds=p.train_seconds, wall_seconds=p.wall_seconds, final_metric=p.last_metric,
                best_metric=p.best_metric, stopped=p.stopped, error=error, data=config["data"])


def _print_summary(summary: dict, seconds: float) -> None:
    metric = summary["final_metric"]
    shown = "n/a" if metric is None or not math.isfinite(metric) else f"{metric:.4f}"
    print(f"{summary['task']}/{summary['dataset']} with {summary['optimizer']} ({summary['gradient']}): "
          f"{summary['metric_name']} {shown} (best {summary['best_metric']}) after {summary['iterations']} "
          f"iterations, {summary['train_seconds']:.1f} s of training in all ({seconds:.1f} s for this command); "
          f"stopped: {summary['stopped']}; run directory {summary['run_dir']}")


def _log_evaluations(row: dict) -> None:
    if row.get("metric") is not None:
        logger.info("iteration %d: loss %.4f, metric %.4f, NFE %s/%s, %.1f s", row["iteration"], row["loss"],
                    row["metric"], row["nfe_forward"], row["nfe_backward"], row["train_seconds"])


class _Bar:
    def __init__(self, tqdm, total, initial, metric):
        self.bar = tqdm(total=total, initial=initial, unit="it", dynamic_ncols=True)
        self.metric = metric
        self.last_metric = None

    def update(self, row):
        if row.get("metric") is not None:
            self.last_metric = row["metric"]
        post = dict(loss=f"{row['loss']:.4f}", nfe=f"{row['nfe_forward']}/{row['nfe_backward']}")
        if self.last_metric is not None:
            post["metric"] = f"{self.last_metric:.4f}"
        if row.get("t1") is not None:
            post["t1"] = f"{row['t1']:.3f}"
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def close(self):
        self.bar.close()


def _progress_bar(wanted: bool, total: int, initial: int, metric: str):
    """A tqdm bar on a terminal; None (quiet, with evaluations logged) otherwise or without tqdm."""
    if not wanted or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return _Bar(tqdm, total, initial, metric)


def _plots(run: RunDir, task, model) -> None:
    try:
        from ..tasks import plots
        plots.plot_curves([run.path], run.file("curves.png"), metric_name=task.metric)
        if task.kind == "density" and task.dataset.dim == 2:
            plots.plot_density_2d(model, task.dataset.x_test, run.file("density.png"))
    except ImportError as err:
        logger.warning("no plots: %s", err)
