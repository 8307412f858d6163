"""Multivariate time-series classification from the UEA archive, read through aeon.

Files (aeon's layout): ``<data_dir>/<Name>/<Name>_TRAIN.ts`` and ``<Name>_TEST.ts``, read with
``aeon.datasets.load_classification(Name, split=..., extract_path=<data_dir>)``. Each dataset's
two files are one tuple of :class:`~nodeopt.data.resources.Resource` in ``UEA_RESOURCES`` (read by
the registry too). Missing files are downloaded from the archive's Zenodo record (the same record
aeon uses), checked against the md5 Zenodo publishes in the record's metadata, read at download
time: no citable source pins these files' sums (see ``UEA``), so none is pinned here and files
already on disk are not hashed. JapaneseVowels ships inside aeon's wheel and needs no download.

Preprocessing, as in the SNOpt experiments (after Kidger et al.'s neural CDE code):

1. the archive's train and test files are concatenated (their split sizes are uneven);
2. every series is padded to the longest length with its own last value;
3. labels become ``0..C-1`` in order of first appearance (``info["classes"]`` maps back);
4. a stratified 70/15/15 split: ``train_test_split(train_size=0.7, random_state=seed)``, then
   the rest halved with ``random_state=seed + 1`` (``seed=0`` reproduces SNOpt's split);
5. each channel is standardised with the mean and std (ddof=1) of the *training* values,
   padding included, as ``(x - mean) / (std + 1e-5)``.

x is (N, length, channels); ``info["times"]`` holds the observation times ``0..length-1`` and
``info["lengths"]`` each split's original lengths (int64). Unlike SNOpt, no time or intensity
channel is appended: a model that wants them adds them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .dataset import Dataset, features, labels
from .files import PathLike, corrupt, optional, unavailable
from .files import data_dir as resolve_dir
from .resources import Resource, ensure

logger = logging.getLogger(__name__)

#: registry name -> (archive name, Zenodo record of the tsml community, as in aeon's tsc_zenodo).
#: No md5 is pinned for these files: aeon's loaders (1.6) check none, and no repository or page
#: searched publishes the sums of these records' ``_TRAIN.ts``/``_TEST.ts``. The md5 is read from
#: Zenodo's metadata at download time instead (``Resource.zenodo_record``).
UEA = {
    "char-traj": ("CharacterTrajectories", 18723007),
    "art-wr": ("ArticularyWordRecognition", 11204924),
    "spo-ad": ("SpokenArabicDigits", 18734026),
}
_STD_EPS = 1e-5


def uea_paths(root: Path, archive: str) -> list[Path]:
    """``[<root>/<Name>/<Name>_TRAIN.ts, <root>/<Name>/<Name>_TEST.ts]``."""
    return [root / archive / f"{archive}_{split}.ts" for split in ("TRAIN", "TEST")]


def _uea_resources(archive: str, record: int) -> tuple[Resource, ...]:
    """The two ``.ts`` files of ``archive``, from Zenodo record ``record`` (md5 from its metadata)."""
    return tuple(Resource(f"{archive}/{archive}_{split}.ts", None,
                          (f"https://zenodo.org/records/{record}/files/{archive}_{split}.ts?download=1",),
                          zenodo_record=record)
                 for split in ("TRAIN", "TEST"))


#: registry name -> its train and test files.
UEA_RESOURCES = {name: _uea_resources(*UEA[name]) for name in UEA}


def _read_split(root: Path, archive: str, split: str, path: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """One ``.ts`` file through aeon: a list of (channels, length_i) arrays and the label strings."""
    aeon_datasets = optional("aeon.datasets", "aeon")
    try:
        x, y = aeon_datasets.load_classification(archive, split=split, extract_path=str(root),
                                                 load_equal_length=False, load_no_missing=False)
    except Exception as err:  # aeon raises IOError/ValueError/IndexError on malformed files
        raise corrupt(path, f"aeon could not parse it ({type(err).__name__}: {err})") from None
    if len(x) == 0 or len(x) != len(y):
        raise corrupt(path, f"aeon read {len(x)} series and {len(y)} labels from it")
    return [np.asarray(xi, dtype=np.float64) for xi in x], np.asarray(y)


def pad_last(series: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack (channels, length_i) series into (N, max_length, channels), padding with the last value.

    Returns the padded array and the original lengths.
    """
    lengths = np.array([s.shape[-1] for s in series], dtype=np.int64)
    out = np.empty((len(series), int(lengths.max()), series[0].shape[0]), dtype=np.float64)
    for i, s in enumerate(series):
        out[i, : s.shape[-1]] = s.T
        out[i, s.shape[-1]:] = s[:, -1]
    return out, lengths


def first_appearance_ids(y: np.ndarray) -> tuple[np.ndarray, list]:
    """Map labels to ``0..C-1`` in order of first appearance; also return the original labels."""
    classes = list(dict.fromkeys(y.tolist()))
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[v] for v in y.tolist()], dtype=np.int64), classes


def stratified_70_15_15(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of a stratified 70/15/15 split (``random_state=seed`` then ``seed + 1``)."""
    model_selection = optional("sklearn.model_selection", "scikit-learn")
    index = np.arange(len(y))
    try:
        train, rest = model_selection.train_test_split(index, train_size=0.7, random_state=seed, shuffle=True,
                                                       stratify=y)
        val, test = model_selection.train_test_split(rest, train_size=0.5, random_state=seed + 1, shuffle=True,
                                                     stratify=y[rest])
    except ValueError as err:
        raise ValueError(f"{len(y)} series with class counts {np.bincount(y).tolist()} are too few for a "
                         f"stratified 70/15/15 split ({err})") from None
    return train, val, test


def standardise_channels(x: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x - mean) / (std + 1e-5)`` per channel, statistics (ddof=1, NaN-aware) of ``x[train]``."""
    reference = x[train].reshape(-1, x.shape[-1])
    mean = np.nanmean(reference, axis=0)
    std = np.nanstd(reference, axis=0, ddof=1)
    return (x - mean) / (std + _STD_EPS), mean, std


def from_ts_files(name: str, root: Path, archive: str, paths: Sequence[Path], seed: int) -> Dataset:
    """Read ``<root>/<archive>/<archive>_{TRAIN,TEST}.ts`` and apply the module's preprocessing."""
    (x_tr, y_tr), (x_te, y_te) = (_read_split(root, archive, s, p) for s, p in zip(("train", "test"), paths))
    x, lengths = pad_last(x_tr + x_te)
    y, classes = first_appearance_ids(np.concatenate([y_tr, y_te]))
    train, val, test = stratified_70_15_15(y, seed)
    x, mean, std = standardise_channels(x, train)
    logger.info("%s: %d series of length <= %d, %d channels, %d classes", name, len(x), x.shape[1],
                x.shape[2], len(classes))
    info = {"times": torch.arange(x.shape[1], dtype=torch.float32), "classes": classes,
            "lengths": {k: labels(lengths[i]) for k, i in (("train", train), ("val", val), ("test", test))},
            "mean": mean, "std": std, "seed": seed, "archive": archive}
    return Dataset(name, "timeseries", features(x[train]), labels(y[train]), features(x[test]), labels(y[test]),
                   x_val=features(x[val]), y_val=labels(y[val]), num_classes=len(classes), dim=x.shape[2],
                   source=tuple(str(p) for p in paths), info=info)


def _uea(name: str, data_dir: Optional[PathLike], download: bool, seed: int, verify: bool) -> Dataset:
    root = resolve_dir(data_dir)
    paths = ensure(UEA_RESOURCES[name], root, dataset=name, download=download, verify=verify)
    return from_ts_files(name, root, UEA[name][0], paths, seed)


def char_traj(data_dir: Optional[PathLike] = None, *, download: bool = True, seed: int = 0,
              verify: bool = True) -> Dataset:
    """UEA CharacterTrajectories: 2858 pen trajectories, 3 channels, lengths 60–182, 20 classes.

    Files: ``<data_dir>/CharacterTrajectories/CharacterTrajectories_{TRAIN,TEST}.ts``.
    """
    return _uea("char-traj", data_dir, download, seed, verify)


def art_wr(data_dir: Optional[PathLike] = None, *, download: bool = True, seed: int = 0,
           verify: bool = True) -> Dataset:
    """UEA ArticularyWordRecognition: 575 series, 9 channels, length 144, 25 classes.

    Files: ``<data_dir>/ArticularyWordRecognition/ArticularyWordRecognition_{TRAIN,TEST}.ts``.
    """
    return _uea("art-wr", data_dir, download, seed, verify)


def spo_ad(data_dir: Optional[PathLike] = None, *, download: bool = True, seed: int = 0,
           verify: bool = True) -> Dataset:
    """UEA SpokenArabicDigits: 8798 series, 13 MFCC channels, lengths 4–93, 10 classes.

    Files: ``<data_dir>/SpokenArabicDigits/SpokenArabicDigits_{TRAIN,TEST}.ts``.
    """
    return _uea("spo-ad", data_dir, download, seed, verify)


def aeon_bundled_dir() -> Path:
    """The folder of datasets shipped inside aeon's wheel (``aeon/datasets/data``)."""
    aeon_datasets = optional("aeon.datasets", "aeon")
    return Path(aeon_datasets.__file__).parent / "data"


def japanese_vowels(*, seed: int = 0) -> Dataset:
    """UEA JapaneseVowels (offline, shipped with aeon): 640 utterances, 12 channels, lengths 7–29,
    9 speakers as classes.

    Files: ``aeon/datasets/data/JapaneseVowels/JapaneseVowels_{TRAIN,TEST}.ts`` inside aeon.
    """
    root = aeon_bundled_dir()
    paths = uea_paths(root, "JapaneseVowels")
    for path in paths:
        if not path.is_file():
            raise unavailable("japanese-vowels", path, [], "this aeon installation does not ship it")
    return from_ts_files("japanese-vowels", root, "JapaneseVowels", paths, seed)
