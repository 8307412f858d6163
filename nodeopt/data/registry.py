"""One registry of every dataset, by task, so that a command line can list and load them.

``load("image", "mnist", data_dir=..., download=False)`` calls :func:`nodeopt.data.mnist`;
offline datasets (generated, or shipped with scikit-learn or aeon) ignore ``data_dir`` and
``download``. Extra keyword arguments go to the dataset function (``seed=``, ``normalize=``,
``n_train=``, ...), which rejects unknown ones.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from . import images, tabular, timeseries, toys
from .dataset import Dataset
from .files import PathLike
from .files import data_dir as resolve_dir


@dataclass(frozen=True)
class Spec:
    """A registered dataset: its loader and, for file-based ones, how to tell it is on disk."""

    task: str
    name: str
    loader: Callable[..., Dataset]
    on_disk: Optional[Callable[[Path], bool]] = None

    @property
    def offline(self) -> bool:
        """True for datasets that need no file of the data directory."""
        return self.on_disk is None


def _all_files(*paths: str) -> Callable[[Path], bool]:
    return lambda root: all((root / p).is_file() for p in paths)


def _mnist_on_disk(root: Path) -> bool:
    raw = root / "MNIST" / "raw"
    return all((raw / s).is_file() or (raw / f"{s}.gz").is_file() for s in images.MNIST_FILES)


def _cifar_on_disk(root: Path) -> bool:
    batches = _all_files(*(f"cifar-10-batches-py/{b}" for b in images.CIFAR10_BATCHES))
    return batches(root) or (root / "cifar-10-python.tar.gz").is_file()


def _uea_on_disk(archive: str) -> Callable[[Path], bool]:
    return lambda root: all(p.is_file() for p in timeseries.uea_paths(root, archive))


def _maf_on_disk(name: str) -> Callable[[Path], bool]:
    files = _all_files(*tabular.MAF_FILES[name])
    return lambda root: files(root) or (root / tabular.MAF_ARCHIVE).is_file()


def _specs() -> dict[str, dict[str, Spec]]:
    image = [Spec("image", "digits", images.digits), Spec("image", "mnist", images.mnist, _mnist_on_disk),
             Spec("image", "cifar10", images.cifar10, _cifar_on_disk),
             Spec("image", "svhn", images.svhn, _all_files(*images.SVHN_FILES))]
    series = [Spec("timeseries", "japanese-vowels", timeseries.japanese_vowels)]
    series += [Spec("timeseries", name, fn, _uea_on_disk(timeseries.UEA[name][0]))
               for name, fn in (("char-traj", timeseries.char_traj), ("art-wr", timeseries.art_wr),
                                ("spo-ad", timeseries.spo_ad))]
    density = [Spec("density", name, functools.partial(toys.toy, name)) for name in toys.TOYS]
    density.append(Spec("density", "breast-cancer", tabular.breast_cancer))
    density += [Spec("density", name, getattr(tabular, name), _maf_on_disk(name)) for name in tabular.MAF_FILES]
    return {task: {s.name: s for s in specs}
            for task, specs in (("image", image), ("timeseries", series), ("density", density))}


#: task -> name -> :class:`Spec`, in listing order (offline defaults first).
DATASETS: dict[str, dict[str, Spec]] = _specs()


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
    """Whether ``load(task, name, data_dir, download=False)`` can find its files (always True
    for offline datasets; it does not check that optional packages are installed)."""
    s = spec(task, name)
    return s.offline or s.on_disk(resolve_dir(data_dir))


def load(task: str, name: str, data_dir: Optional[PathLike] = None, download: bool = True, **kwargs) -> Dataset:
    """Load dataset ``name`` of ``task`` (``"image"``, ``"timeseries"`` or ``"density"``).

    Raises:
        ValueError: unknown task or name (the message lists the valid ones).
        DataUnavailable: a file is missing and cannot be downloaded.
        DataCorrupt: a file is truncated or malformed.
    """
    s = spec(task, name)
    if s.offline:
        return s.loader(**kwargs)
    return s.loader(data_dir, download=download, **kwargs)
