"""Resolved settings → the library's objects: the task, its model, the optimisers and a Trainer.

The one place where the command line's flat settings (``nodeopt.cli.train.resolve_settings``)
become the explicit arguments of ``nodeopt.tasks``: nothing below this module sees a settings dict.
"""

from __future__ import annotations

import re

import torch

from .. import data
from ..gradients import Adjoint
from ..optim import IntegrationTimeOptimizer
from ..solvers.methods import get_method
from ..tasks import RunDir, Trainer, load_in_turn, make_optimizers, make_task, rank_seed
from ..tasks.distributed import World
from ..tasks.tasks import ode_blocks

# Library argument names that are not a flag's destination.
_ARGUMENT_FLAGS = {"max_num_steps": "--max-steps"}


def block_options(s: dict) -> dict:
    """The keyword arguments of every ODEBlock of the model."""
    gradient = Adjoint(options={"norm": "seminorm"}) if s.get("seminorm") else s["gradient"]
    adaptive = get_method(s["method"]).adaptive  # fixed-step methods take no step limit
    return dict(rtol=s["rtol"], atol=s["atol"], method=s["method"], gradient=gradient, t1=s["t1"],
                options={"max_num_steps": s["max_steps"]} if adaptive else None, compile=bool(s.get("compile")))


def model_options(s: dict) -> dict:
    """The keyword arguments of the task's ``build_model`` (besides the blocks')."""
    if s["task"] == "image":
        return dict(width=s["width"])
    if s["task"] == "timeseries":
        return dict(hidden=s["hidden"], field_width=s["field_width"], field_layers=s["field_layers"])
    return dict(hidden=list(s["hidden"]), blocks=s["blocks"], activation=s["activation"],
                divergence=s["divergence"])


def build(s: dict, world: World = World(), device=None) -> Trainer:
    """The Trainer of settings ``s``, with its task, model, optimisers, SNOpt, t1 optimiser and schedulers.

    With several processes, the first on each machine reads (or downloads) the data before the
    others; every rank builds the same initial model, and ranks other than 0 then draw their own
    random stream (Hutchinson's noise).

    Raises:
        DataUnavailable, DataCorrupt, ImportError: the data cannot be read.
        ValueError: settings the library refuses (the message names the library's argument; see
            :func:`as_flags`).
    """
    dataset = load_in_turn(world, lambda: data.load(s["task"], s["dataset"], data_dir=s["data_dir"],
                                                    download=s["download"]))
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
    return Trainer(task, model, optimizers, RunDir(s["run_dir"]), batch_size=s["batch_size"], seed=s["seed"],
                   precond=precond, t1_optimizer=t1_opt, schedulers=schedulers, eval_every=s["eval_every"],
                   checkpoint_every=s["checkpoint_every"], world=world)


def as_flags(message: str, settings: dict) -> str:
    """A library message in the command line's words: ``batch_size=10`` becomes ``--batch-size 10``."""
    names = {name: "--" + name.replace("_", "-") for name in settings}
    names.update(_ARGUMENT_FLAGS)
    pattern = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    message = re.sub(rf"(?<![\w'-])({pattern})=", lambda m: names[m.group(1)] + " ", message)
    return message.replace("options['max_num_steps']", _ARGUMENT_FLAGS["max_num_steps"])
