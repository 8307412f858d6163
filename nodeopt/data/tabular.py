"""Density-estimation data: the MAF bundle (Papamakarios et al., 2017) in FFJORD's layout, and
scikit-learn's breast-cancer table offline.

Files (FFJORD's ``data/`` folder is ``<data_dir>``)::

    <data_dir>/miniboone/data.npy
    <data_dir>/gas/ethylene_CO.pickle          (a pandas DataFrame pickle; needs pandas)
    <data_dir>/power/data.npy
    <data_dir>/hepmass/1000_train.csv, 1000_test.csv
    <data_dir>/BSDS300/BSDS300.hdf5            (h5py datasets train / validation / test)

A missing file is extracted from ``<data_dir>/data.tar.gz``, MAF's bundle on Zenodo (record
1161203), which is downloaded when needed and checked against its pinned md5 (``MAF_ARCHIVE``);
each dataset's files are one tuple of :class:`~nodeopt.data.resources.Resource` in ``MAF``, which
the registry reads too. ``verify=False`` skips the md5 check of an archive already on disk.

The preprocessing is MAF's, as FFJORD's ``datasets/*.py`` apply it: where the files are not
already split, the test set is the last 10 % of the rows and the validation set the last 10 % of
the rest (file order; POWER is shuffled first); features are z-scored as stated per dataset.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .dataset import Dataset, features, tail_split, zscore
from .files import PathLike, corrupt, optional
from .files import data_dir as resolve_dir
from .resources import Resource, ensure

logger = logging.getLogger(__name__)

MAF_RECORD = 1161203
MAF_URL = f"https://zenodo.org/record/{MAF_RECORD}/files/data.tar.gz"
#: MAF's bundle. Its md5 is the one Zenodo publishes for record 1161203's data.tar.gz, as pinned
#: (and checked after download) by MArpogaus/hybrid-flows, src/mctm/data/benchmark.py.
MAF_ARCHIVE = Resource("data.tar.gz", "9b9c9b0375315ad270eba4ce80c093ab",
                       (f"https://zenodo.org/records/{MAF_RECORD}/files/data.tar.gz?download=1", MAF_URL))


def _members(*paths: str) -> tuple[Resource, ...]:
    """Files of the bundle, at ``<data_dir>/<path>`` and ``data/<path>`` in the archive. No source
    publishes their own sums: they are trusted as members of the verified archive."""
    return tuple(Resource(p, archive=MAF_ARCHIVE, member=f"data/{p}") for p in paths)


#: Dataset name -> its files in the bundle.
MAF = {
    "miniboone": _members("miniboone/data.npy"),
    "gas": _members("gas/ethylene_CO.pickle"),
    "power": _members("power/data.npy"),
    "hepmass": _members("hepmass/1000_train.csv", "hepmass/1000_test.csv"),
    "bsds300": _members("BSDS300/BSDS300.hdf5"),
}
GAS_DROPPED = ("Meth", "Eth", "Time")
GAS_CORRELATION = 0.98
REPEAT_LIMIT = 5


# ----------------------------------------------------------------------------------- files

def maf_files(name: str, data_dir: Optional[PathLike], download: bool, verify: bool = True) -> list[Path]:
    """The bundle files of dataset ``name``, extracting them from ``data.tar.gz`` if missing."""
    return ensure(MAF[name], resolve_dir(data_dir), dataset=name, download=download, verify=verify)


def _load_npy(path: Path, columns: Optional[int] = None) -> np.ndarray:
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise corrupt(path, f"not a .npy array ({type(err).__name__}: {err})") from None
    if data.ndim != 2 or (columns is not None and data.shape[1] != columns):
        want = f"(N, {columns})" if columns else "(N, D)"
        raise corrupt(path, f"array of shape {data.shape}, expected {want}")
    return data.astype(np.float64)


def repeated_features(data: np.ndarray, limit: int = REPEAT_LIMIT) -> np.ndarray:
    """Boolean mask of the columns MAF removes for "too many re-occurring values".

    MAF's criterion counts how often each column's *smallest* value occurs (its code sorts a
    ``Counter`` by value and takes the first count) and removes the column when that count
    exceeds ``limit``: continuous features are kept, discretised or constant ones removed.
    """
    return (data == data.min(axis=0)).sum(axis=0) > limit


def _density(name: str, train, val, test, source: Sequence[Path], info: dict) -> Dataset:
    logger.info("%s: %d train / %d val / %d test rows, dim %d", name, len(train), len(val), len(test),
                train.shape[1])
    return Dataset(name, "density", features(train), None, features(test), None, x_val=features(val),
                   y_val=None, dim=int(train.shape[1]), source=tuple(str(p) for p in source), info=info)


def _split_and_zscore(data: np.ndarray, ddof: int = 0):
    """MAF's tail splits, then z-scores with the train+validation statistics."""
    rest, test = tail_split(data)
    train, val = tail_split(rest)
    mean, std, train, val, test = zscore(rest, train, val, test, ddof=ddof)
    return train, val, test, {"mean": mean, "std": std}


# ------------------------------------------------------------------------------- datasets

def miniboone(data_dir: Optional[PathLike] = None, *, download: bool = True, verify: bool = True) -> Dataset:
    """MiniBooNE particle identification, 29556 / 3284 / 3648 rows, 43 features.

    Preprocessing: MAF's bundle already removed the outliers (first feature below -100) and the
    features with too many repeated values; the same repeat filter (:func:`repeated_features`)
    is applied again here (it keeps every column of the official file), then the tail splits
    and a z-score with the train+validation mean and std (ddof=0).
    """
    (path,) = maf_files("miniboone", data_dir, download, verify)
    data = _load_npy(path)
    keep = ~repeated_features(data)
    train, val, test, info = _split_and_zscore(data[:, keep])
    return _density("miniboone", train, val, test, [path], {**info, "kept_columns": np.flatnonzero(keep)})


def _gas_frame(path: Path):
    pd = optional("pandas", "pandas")
    try:
        frame = pd.read_pickle(path)
    except Exception as err:  # pickle/pandas raise many types on a bad file
        raise corrupt(path, f"not a pandas pickle ({type(err).__name__}: {err})") from None
    missing = [c for c in GAS_DROPPED if c not in getattr(frame, "columns", ())]
    if missing:
        raise corrupt(path, f"the GAS DataFrame lacks the columns {missing}")
    return frame.drop(columns=list(GAS_DROPPED))


def drop_correlated(data: np.ndarray, threshold: float = GAS_CORRELATION) -> np.ndarray:
    """Indices of the columns kept by MAF's GAS rule.

    While some column has a Pearson correlation above ``threshold`` with another column, the
    first such column (in the current order) is removed and the correlations are recomputed.
    """
    kept = list(range(data.shape[1]))
    while True:
        counts = (np.corrcoef(data[:, kept], rowvar=False) > threshold).sum(axis=1)
        if not np.any(counts > 1):
            return np.array(kept)
        del kept[int(np.flatnonzero(counts > 1)[0])]


def gas(data_dir: Optional[PathLike] = None, *, download: bool = True, verify: bool = True) -> Dataset:
    """UCI gas sensors (ethylene and CO), 852174 / 94685 / 105206 rows, 8 features.

    Preprocessing (MAF): drop the columns ``Meth``, ``Eth`` and ``Time``; remove correlated
    columns with :func:`drop_correlated` (> 0.98); z-score with the mean and std (ddof=1, as
    pandas) of *all* rows, as MAF and FFJORD do for GAS; then the tail splits. Needs pandas.
    """
    (path,) = maf_files("gas", data_dir, download, verify)
    frame = _gas_frame(path)
    data = frame.to_numpy(dtype=np.float64)
    keep = drop_correlated(data)
    mean, std, data = zscore(data[:, keep], data[:, keep], ddof=1)
    rest, test = tail_split(data)
    train, val = tail_split(rest)
    info = {"mean": mean, "std": std, "columns": [str(frame.columns[i]) for i in keep]}
    return _density("gas", train, val, test, [path], info)


def power(data_dir: Optional[PathLike] = None, *, download: bool = True, seed: int = 42,
          verify: bool = True) -> Dataset:
    """UCI household electric power, 1615917 / 179546 / 204928 rows, 6 features.

    The file holds 8 columns: global active power, global reactive power, voltage, global
    intensity, sub-metering 1–3 and the time of day. Preprocessing (FFJORD's ``power.py``):
    with ``RandomState(seed)`` (42 as FFJORD) shuffle the rows, delete columns 3 (global
    intensity) and 1 (global reactive power), then add uniform noise to break ties in the
    quantised readings: U(0, 0.001) to active power, U(0, 0.01) to voltage, U(0, 1) to each
    sub-metering and none to time (drawn in the order voltage, active power, sub-metering);
    then the tail splits and a z-score with train+validation statistics (ddof=0).
    """
    (path,) = maf_files("power", data_dir, download, verify)
    data = _load_npy(path, columns=8)
    rng = np.random.RandomState(seed)
    rng.shuffle(data)
    data = np.delete(np.delete(data, 3, axis=1), 1, axis=1)
    n = data.shape[0]
    voltage = 0.01 * rng.rand(n, 1)
    active = 0.001 * rng.rand(n, 1)
    metering = rng.rand(n, 3)
    data = data + np.hstack((active, voltage, metering, np.zeros((n, 1))))
    train, val, test, info = _split_and_zscore(data)
    return _density("power", train, val, test, [path], {**info, "seed": seed})


def _read_csv(path: Path) -> np.ndarray:
    try:
        return np.loadtxt(path, delimiter=",", skiprows=1, comments=None, ndmin=2, dtype=np.float64)
    except (ValueError, OSError) as err:
        raise corrupt(path, f"not a numeric CSV with one header line ({type(err).__name__}: {err})") from None


def hepmass(data_dir: Optional[PathLike] = None, *, download: bool = True, verify: bool = True) -> Dataset:
    """UCI HEPMASS (mass 1000), 315123 / 35013 / 174987 rows, 21 features.

    Files: ``1000_train.csv`` and ``1000_test.csv`` with the header ``# label,f0,...,f26,mass``.
    Preprocessing (MAF's ``hepmass.py``): keep the signal rows (label 1) and drop the label; the
    test set keeps the columns that line up with the training columns (MAF drops the test file's
    last column, "because the data set is messed up"); remove the features that
    :func:`repeated_features` flags on the training rows (the discrete ones and the constant
    mass); z-score with the training file's mean and std (ddof=1, as pandas); the validation set
    is the last 10 % of the training file.
    """
    train_path, test_path = maf_files("hepmass", data_dir, download, verify)
    train, test = _read_csv(train_path), _read_csv(test_path)
    train, test = train[train[:, 0] == 1, 1:], test[test[:, 0] == 1, 1:]
    if test.shape[1] < train.shape[1]:
        raise corrupt(test_path, f"{test.shape[1] + 1} columns, but the training file has {train.shape[1] + 1}")
    keep = ~repeated_features(train)
    mean, std, train, test = zscore(train[:, keep], train[:, keep], test[:, : len(keep)][:, keep], ddof=1)
    train, val = tail_split(train)
    info = {"mean": mean, "std": std, "kept_columns": np.flatnonzero(keep)}
    return _density("hepmass", train, val, test, [train_path, test_path], info)


def bsds300(data_dir: Optional[PathLike] = None, *, download: bool = True, verify: bool = True) -> Dataset:
    """BSDS300 8×8 natural-image patches, 1000000 / 50000 / 250000 rows, 63 features.

    File: ``BSDS300/BSDS300.hdf5`` with datasets ``train``, ``validation`` and ``test``, already
    preprocessed by MAF (grey patches, dequantised, one pixel dropped); read as they are, with
    no further normalisation, as FFJORD does.
    """
    (path,) = maf_files("bsds300", data_dir, download, verify)
    h5py = optional("h5py", "h5py")
    try:
        with h5py.File(path, "r") as f:
            train, val, test = (np.asarray(f[k][()], dtype=np.float64) for k in ("train", "validation", "test"))
    except (OSError, KeyError, ValueError) as err:
        raise corrupt(path, f"not the BSDS300 HDF5 file ({type(err).__name__}: {err})") from None
    if not (train.ndim == val.ndim == test.ndim == 2 and train.shape[1] == val.shape[1] == test.shape[1]):
        raise corrupt(path, f"splits of shapes {train.shape}, {val.shape}, {test.shape}")
    return _density("bsds300", train, val, test, [path], {})


def breast_cancer(*, seed: int = 0) -> Dataset:
    """scikit-learn's Wisconsin breast-cancer table (offline), 30 continuous features.

    Rows are permuted with ``numpy.random.default_rng(seed)``; the last ``int(0.1·N)`` rows test,
    the ``int(0.1·N)`` before them validate and the rest (about 80 %) train: 457 / 56 / 56. Features are
    z-scored with the training mean and std (ddof=0). Labels are not used (density task).
    """
    sk_datasets = optional("sklearn.datasets", "scikit-learn")
    data = sk_datasets.load_breast_cancer().data.astype(np.float64)
    data = data[np.random.default_rng(seed).permutation(len(data))]
    rest, test = tail_split(data)
    train, val = rest[: len(data) - 2 * len(test)], rest[len(data) - 2 * len(test):]
    mean, std, train, val, test = zscore(train, train, val, test)
    return _density("breast-cancer", train, val, test, [], {"mean": mean, "std": std, "seed": seed})
