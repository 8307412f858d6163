"""One registry of every dataset, by task, so that a command line can list and load them.

``load("image", "mnist", data_dir=..., download=False)`` calls :func:`nodeopt.data.mnist`;
offline datasets (generated, or shipped with scikit-learn or aeon) ignore ``data_dir``,
``download`` and ``verify``. Extra keyword arguments go to the dataset function (``seed=``,
``normalize=``, ``n_train=``, ...), which rejects unknown ones.

A file-based :class:`Spec` holds the dataset's :class:`~nodeopt.data.resources.Resource` tuple,
the same object its dataset function passes to :func:`~nodeopt.data.resources.ensure`; so
:func:`is_available` checks exactly the files that loading reads or fetches.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Optional

from . import images, tabular, timeseries, toys
from .dataset import Dataset
from . import files
from .files import PathLike
from .files import data_dir as resolve_dir
from .resources import Resource, on_disk


@dataclass(frozen=True)
class Spec:
    """A registered dataset: its loader and, for file-based ones, the files it needs."""

    task: str
    name: str
    loader: Callable[..., Dataset]
    resources: tuple[Resource, ...] = ()

    @property
    def offline(self) -> bool:
        """True for datasets that need no file of the data directory."""
        return not self.resources


def _specs() -> dict[str, dict[str, Spec]]:
    image = [Spec("image", "digits", images.digits), Spec("image", "mnist", images.mnist, images.MNIST),
             Spec("image", "cifar10", images.cifar10, images.CIFAR10),
             Spec("image", "svhn", images.svhn, images.SVHN)]
    series = [Spec("timeseries", "japanese-vowels", timeseries.japanese_vowels)]
    series += [Spec("timeseries", name, fn, timeseries.UEA_RESOURCES[name])
               for name, fn in (("char-traj", timeseries.char_traj), ("art-wr", timeseries.art_wr),
                                ("spo-ad", timeseries.spo_ad))]
    density = [Spec("density", name, functools.partial(toys.toy, name)) for name in toys.TOYS]
    density.append(Spec("density", "breast-cancer", tabular.breast_cancer))
    density += [Spec("density", name, getattr(tabular, name), resources) for name, resources in tabular.MAF.items()]
    return {task: {s.name: s for s in specs}
            for task, specs in (("image", image), ("timeseries", series), ("density", density))}


#: task -> name -> :class:`Spec`, in listing order (offline defaults first).
DATASETS: dict[str, dict[str, Spec]] = _specs()


def offline_hint() -> str:
    """One sentence listing, by task, the registered datasets that work without a network."""
    parts = [f"{task}: {', '.join(n for n, s in specs.items() if s.offline)}" for task, specs in DATASETS.items()]
    return "Offline datasets that need no download: " + "; ".join(parts) + "."


files.OFFLINE_HINT = offline_hint()  # what every DataUnavailable message ends with


def spec(task: str, name: str) -> Spec:
    """The registered :class:`Spec`; unknown task or name raises ValueError listing valid ones."""
    if task not in DATASETS:
        raise ValueError(f"Unknown task {task!r}; valid tasks: {', '.join(DATASETS)}.")
    if name not in DATASETS[task]:
        raise ValueError(f"Unknown {task} dataset {name!r}; valid names: {', '.join(DATASETS[task])}.")
    return DATASETS[task][name]


def names(task: Optional[str] = None) -> tuple[str, ...]:
    """Dataset names of ``task``, or ``"task/name"`` for every dataset when ``task`` is None."""
    if task is None:
        return tuple(f"{t}/{n}" for t, d in DATASETS.items() for n in d)
    if task not in DATASETS:
        raise ValueError(f"Unknown task {task!r}; valid tasks: {', '.join(DATASETS)}.")
    return tuple(DATASETS[task])


def is_available(task: str, name: str, data_dir: Optional[PathLike] = None) -> bool:
    """Whether ``load(task, name, data_dir, download=False)`` finds its files (always True for
    offline datasets). Only looks at which files exist, from the dataset's ``Spec.resources``:
    it neither hashes them nor checks that optional packages are installed."""
    s = spec(task, name)
    return s.offline or on_disk(s.resources, resolve_dir(data_dir))


def load(task: str, name: str, data_dir: Optional[PathLike] = None, download: bool = True, verify: bool = True,
         **kwargs) -> Dataset:
    """Load dataset ``name`` of ``task`` (``"image"``, ``"timeseries"`` or ``"density"``).

    ``download`` fetches missing files; ``verify`` checks files on disk against their published
    md5 on first use (``verify=False`` for files made by hand). Both, and ``data_dir``, are
    ignored by offline datasets.

    Raises:
        ValueError: unknown task or name (the message lists the valid ones).
        DataUnavailable: a file is missing and cannot be downloaded.
        DataCorrupt: a file is truncated, malformed or fails its md5.
    """
    s = spec(task, name)
    if s.offline:
        return s.loader(**kwargs)
    return s.loader(data_dir, download=download, verify=verify, **kwargs)
