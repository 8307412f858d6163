"""The papers' experiments as data: one recipe per experiment, one run per optimiser or method.

A recipe's ``common`` flags and each run's ``flags`` are ``nodeopt train`` settings (the
argparse destinations, e.g. ``batch_size``); ``nodeopt reproduce NAME`` runs
``nodeopt train`` once per run (and seed) with exactly these settings. The SNOpt code's
settings (Liu, Chen & Theodorou 2021, ``scripts/run_*.sh``): dopri5 at rtol = atol = 1e-3
unless stated, seed 0, the test metric every 10 iterations, the continuous adjoint (the
original solves with ``odeint_adjoint``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..gradients import GRADIENTS
from .defaults import DATASET


@dataclass(frozen=True)
class Run:
    """One ``nodeopt train`` invocation of a recipe: a name and its own flags."""

    name: str
    flags: dict


@dataclass(frozen=True)
class Recipe:
    """An experiment: the task and dataset, the settings every run shares, and its runs.

    ``target``: the metric whose first attainment the results table times (accuracy, or NLL
    for density tasks); ``departures``: where the recipe differs from the original scripts.
    """

    name: str
    task: str
    dataset: str
    description: str
    common: dict
    runs: tuple
    target: Optional[float] = None
    departures: tuple = ()
    offline: bool = False


def _runs(**runs) -> tuple:
    return tuple(Run(name, flags) for name, flags in runs.items())


def _model(dataset: str) -> dict:
    """The FFJORD model and batch of a tabular dataset, as ``nodeopt train`` defaults them."""
    return {k: DATASET[dataset][k] for k in ("hidden", "blocks", "activation", "batch_size")}


# The five fixed gradient methods (``exact`` chooses among them, so the comparisons leave it out).
GRADIENT_METHODS = tuple(name for name in GRADIENTS if name != "exact")


PAPER = dict(method="dopri5", rtol=1e-3, atol=1e-3, seed=0, eval_every=10, gradient="adjoint")
COMMON_DEPARTURES = (
    "training time excludes evaluation, as the SNOpt code reports it",
    "SNOpt runs with nodeopt's guards on (Levenberg-Marquardt damping, early refreshes, the step bound); "
    "the original had none",
)
IMAGE = ("the ConvODENet pools globally (AdaptiveAvgPool) where the original used a fixed 6x6 AvgPool",)
SERIES = ("the series are padded with their last value and read at their true length (the original used "
          "natural cubic splines and a final index); no time or intensity channel is appended",
          "the learning-rate milestones are iterations and take effect: the original built MultiStepLR but "
          "never stepped it")
CNF = ("the density metric is the test NLL in nats, evaluated on the test split",)

RECIPES = {r.name: r for r in (
    Recipe("mnist", "image", "mnist", "ConvODENet on MNIST (SNOpt paper, Table 3)",
           dict(PAPER, width=64, batch_size=128, epochs=5),
           _runs(adam=dict(optimizer="adam", lr=1e-3),
                 sgd=dict(optimizer="sgd", lr=0.02, momentum=0.9),
                 snopt=dict(optimizer="snopt", lr=0.02, momentum=0.0, snopt_eps=0.05, snopt_freq=100)),
           target=0.98, departures=COMMON_DEPARTURES + IMAGE),
    Recipe("svhn", "image", "svhn", "ConvODENet on SVHN",
           dict(PAPER, width=64, batch_size=128, epochs=10),
           _runs(adam=dict(optimizer="adam", lr=5e-4, weight_decay=1e-3),
                 sgd=dict(optimizer="sgd", lr=0.02, momentum=0.9),
                 snopt=dict(optimizer="snopt", lr=0.01, momentum=0.0, weight_decay=1e-4, snopt_eps=0.05,
                            snopt_freq=100)),
           target=0.90, departures=COMMON_DEPARTURES + IMAGE + (
               "evaluated on SVHN's real test split (the original evaluated on its training split)",)),
    Recipe("cifar10", "image", "cifar10", "ConvODENet on CIFAR-10",
           dict(PAPER, width=64, batch_size=128, epochs=20),
           _runs(adam=dict(optimizer="adam", lr=1e-3, weight_decay=1e-3),
                 sgd=dict(optimizer="sgd", lr=0.01, momentum=0.9),
                 snopt=dict(optimizer="snopt", lr=0.01, momentum=0.0, snopt_eps=0.03, snopt_freq=100)),
           target=0.60, departures=COMMON_DEPARTURES + IMAGE),
    Recipe("cifar10-t1-optimize", "image", "cifar10", "CIFAR-10 with the integration time t1 co-optimised",
           dict(PAPER, width=64, batch_size=128, epochs=20, optimizer="adam", lr=1e-3, t1_optimize="feedback",
                t1_update_freq=50, t1_lr=0.1),
           _runs(**{"t1-1.0": dict(t1=1.0, t1_reg=6e-4), "t1-0.05": dict(t1=0.05, t1_reg=4e-4)}),
           target=0.60, departures=COMMON_DEPARTURES + IMAGE),
    Recipe("char-traj", "timeseries", "char-traj", "ODE-RNN on UEA CharacterTrajectories",
           dict(PAPER, hidden=32, batch_size=512, epochs=400, seminorm=True),
           _runs(adam=dict(optimizer="adam", lr=1e-3, lr2=1e-3, gamma=0.5, milestones=[300, 600, 900]),
                 sgd=dict(optimizer="sgd", lr=1e-3, lr2=1e-3, gamma=0.7, milestones=[300, 600, 900]),
                 snopt=dict(optimizer="snopt", lr=3e-3, lr2=3e-3, gamma=0.7, milestones=[450, 750, 900],
                            snopt_eps=0.05, snopt_freq=100, weight_decay=1e-4, snopt_step_size=1.0)),
           target=0.95, departures=COMMON_DEPARTURES + SERIES),
    Recipe("art-wr", "timeseries", "art-wr", "ODE-RNN on UEA ArticularyWordRecognition",
           dict(PAPER, hidden=64, batch_size=256, epochs=600, seminorm=True),
           _runs(adam=dict(optimizer="adam", lr=1e-3, lr2=1e-3, gamma=0.5, milestones=[200, 375, 550]),
                 sgd=dict(optimizer="sgd", lr=3e-3, lr2=1e-3),
                 snopt=dict(optimizer="snopt", lr=3e-3, lr2=3e-3, snopt_eps=0.1, snopt_freq=100,
                            snopt_step_size=1.0)),
           target=0.95, departures=COMMON_DEPARTURES + SERIES),
    Recipe("spo-ad", "timeseries", "spo-ad", "ODE-RNN on UEA SpokenArabicDigits",
           dict(PAPER, hidden=32, batch_size=128, epochs=10, seminorm=True),
           _runs(adam=dict(optimizer="adam", lr=3e-3, lr2=3e-3),
                 sgd=dict(optimizer="sgd", lr=0.01, lr2=3e-3),
                 snopt=dict(optimizer="snopt", lr=5e-3, lr2=3e-3, snopt_eps=0.05, snopt_freq=100,
                            snopt_step_size=1.0)),
           target=0.95, departures=COMMON_DEPARTURES + SERIES),
    Recipe("miniboone", "density", "miniboone", "FFJORD on MINIBOONE",
           dict(PAPER, **_model("miniboone"), rtol=1e-6, atol=1e-8, eval_every=200, divergence="rademacher"),
           _runs(adam=dict(optimizer="adam", lr=3e-3, epochs=20),
                 sgd=dict(optimizer="sgd", lr=0.01, momentum=0.9, epochs=25),
                 snopt=dict(optimizer="snopt", lr=5e-3, momentum=0.9, snopt_eps=0.1, snopt_freq=250, epochs=10)),
           target=12.0, departures=COMMON_DEPARTURES + CNF),
    Recipe("gas", "density", "gas", "FFJORD on GAS (10 % of the data)",
           dict(PAPER, **_model("gas"), seminorm=True, train_fraction=0.1, eval_every=500, divergence="rademacher"),
           _runs(adam=dict(optimizer="adam", lr=2e-3, epochs=30),
                 sgd=dict(optimizer="sgd", lr=0.01, momentum=0.9, epochs=30),
                 snopt=dict(optimizer="snopt", lr=0.01, momentum=0.9, snopt_eps=0.05, snopt_freq=250, epochs=20)),
           target=-5.0, departures=COMMON_DEPARTURES + CNF + (
               "only the training set is subsampled (the original also subsampled validation and test)",)),
)}

for _name in ("miniboone", "gas", "power", "hepmass", "bsds300"):
    RECIPES[f"cnf-gradients-{_name}"] = Recipe(
        f"cnf-gradients-{_name}", "density", _name,
        f"the five gradient methods on FFJORD/{_name} (symplectic-adjoint paper): NLL, peak memory, time, NFE",
        dict(_model(_name), method="dopri5", rtol=1e-8, atol=1e-8, optimizer="adam", lr=1e-3, iterations=1000,
             eval_every=1000, divergence="rademacher", seed=0),
        _runs(**{g: dict(gradient=g) for g in GRADIENT_METHODS}),
        departures=("a fixed number of iterations on the FFJORD model of the SNOpt recipes; the "
                    "symplectic-adjoint paper's own tolerances were rtol = atol = 1e-8 as here",))

# Offline recipes: data that ships with scikit-learn or aeon, or is generated; minutes on a CPU.
OFFLINE = dict(method="dopri5", rtol=1e-3, atol=1e-3, gradient="symplectic", seed=0)
# The offline density recipes: the three optimisers (symplectic adjoint), then Adam under the other methods.
DENSITY_RUNS = _runs(adam=dict(optimizer="adam", lr=3e-3), sgd=dict(optimizer="sgd", lr=0.01, momentum=0.9),
                     snopt=dict(optimizer="snopt", lr=5e-3, momentum=0.9),
                     **{f"adam-{g}": dict(optimizer="adam", lr=3e-3, gradient=g) for g in GRADIENT_METHODS
                        if g != "symplectic"})
for _recipe in (
    Recipe("digits", "image", "digits", "ConvODENet (width 32) on scikit-learn's digits",
           dict(OFFLINE, width=32, batch_size=64, epochs=20, eval_every=10),
           _runs(adam=dict(optimizer="adam", lr=1e-3), sgd=dict(optimizer="sgd", lr=0.02, momentum=0.9),
                 snopt=dict(optimizer="snopt", lr=0.02, momentum=0.9)),
           target=0.95, offline=True, departures=COMMON_DEPARTURES),
    Recipe("japanese-vowels", "timeseries", "japanese-vowels", "ODE-RNN on UEA JapaneseVowels (ships with aeon)",
           dict(OFFLINE, hidden=32, batch_size=64, epochs=30, eval_every=10),
           _runs(adam=dict(optimizer="adam", lr=3e-3), sgd=dict(optimizer="sgd", lr=0.01, momentum=0.9),
                 snopt=dict(optimizer="snopt", lr=5e-3, momentum=0.9, snopt_step_size=1.0)),
           target=0.95, offline=True, departures=COMMON_DEPARTURES + SERIES[:1]),
    Recipe("moons", "density", "moons", "FFJORD on the 2-D two-moons toy: optimisers and gradient methods",
           dict(OFFLINE, hidden=[64, 64], blocks=1, batch_size=256, iterations=500, eval_every=50, rtol=1e-5,
                atol=1e-5, divergence="exact"),
           DENSITY_RUNS,
           offline=True, departures=COMMON_DEPARTURES),
    Recipe("breast-cancer", "density", "breast-cancer",
           "FFJORD on scikit-learn's breast-cancer features (30-D): optimisers and gradient methods",
           dict(OFFLINE, hidden=[64, 64], blocks=1, batch_size=128, epochs=100, eval_every=30, rtol=1e-5,
                atol=1e-5, divergence="rademacher"),
           DENSITY_RUNS,
           offline=True, departures=COMMON_DEPARTURES),
    Recipe("digits-t1-optimize", "image", "digits", "digits with t1 co-optimised: baseline and feedback rules",
           dict(OFFLINE, width=32, batch_size=64, epochs=20, eval_every=10, optimizer="adam", lr=1e-3,
                t1_update_freq=50, t1_lr=0.1),
           _runs(**{f"{rule}-t1-{t1}": dict(t1_optimize=rule, t1=t1, t1_reg=reg)
                    for rule in ("baseline", "feedback") for t1, reg in ((1.0, 6e-4), (0.05, 4e-4))}),
           target=0.95, offline=True, departures=COMMON_DEPARTURES),
):
    RECIPES[_recipe.name] = _recipe


def settings_of(recipe: Recipe, run: Run) -> dict:
    """The flags of one run: the recipe's, then the run's own (which win)."""
    return {"task": recipe.task, "dataset": recipe.dataset, **recipe.common, **run.flags}
