"""Image classification data: MNIST, CIFAR-10 and SVHN from torchvision's folder layouts, and
scikit-learn's handwritten digits offline.

The files are parsed directly (no torchvision). Pixels are scaled to [0, 1] and, with
``normalize=True`` (the default), standardised per channel with the mean and std of the
*training* pixels; the statistics are returned in ``info["mean"]``/``info["std"]``. For the
official MNIST training set these are the familiar 0.1307 and 0.3081.

Each dataset's files are one tuple of :class:`~nodeopt.data.resources.Resource` below
(``MNIST``, ``CIFAR10``, ``SVHN``) with torchvision's md5 sums; the registry reads the same
tuples. ``download=True`` fetches what is missing; ``verify=True`` checks each file's md5 on
first use and ``verify=False`` skips that check (for files made by hand).
"""

from __future__ import annotations

import gzip
import logging
import pickle
import struct
from pathlib import Path
from typing import Optional

import numpy as np

from .dataset import Dataset, features, labels
from .files import PathLike, corrupt, optional
from .files import data_dir as resolve_dir
from .resources import Resource, ensure

logger = logging.getLogger(__name__)

MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")


def _mnist(stem: str, md5: str) -> Resource:
    """The gzipped IDX file, or torchvision's decompressed copy of it next to it."""
    return Resource(f"MNIST/raw/{stem}.gz", md5, tuple(f"{m}{stem}.gz" for m in MNIST_MIRRORS),
                    alternatives=(f"MNIST/raw/{stem}",))


#: MNIST's files: train images, train labels, test images, test labels. md5 of the gzipped
#: IDX files as torchvision pins them (pytorch/vision, torchvision/datasets/mnist.py).
MNIST = (_mnist("train-images-idx3-ubyte", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
         _mnist("train-labels-idx1-ubyte", "d53e105ee54ea40749a09fcbcd1e9432"),
         _mnist("t10k-images-idx3-ubyte", "9fb629c4189551a2d022fa330f9573f3"),
         _mnist("t10k-labels-idx1-ubyte", "ec29112dd5afa0611ce80d1b7f02629c"))
#: The CIFAR-10 archive and its six batches (five train, one test). md5 of the archive and of
#: each batch as torchvision pins them (pytorch/vision, torchvision/datasets/cifar.py).
CIFAR10_ARCHIVE = Resource("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                           ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",))
CIFAR10 = tuple(Resource(f"cifar-10-batches-py/{name}", md5, archive=CIFAR10_ARCHIVE,
                         member=f"cifar-10-batches-py/{name}")
                for name, md5 in (("data_batch_1", "c99cafc152244af753f735de768cd75f"),
                                  ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
                                  ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
                                  ("data_batch_4", "634d18415352ddfa80567beed471001a"),
                                  ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"),
                                  ("test_batch", "40351d587109b95175f43aff81a1287e")))
SVHN_URL = "http://ufldl.stanford.edu/housenumbers/"
#: SVHN's train and test files; md5 as torchvision pins them (torchvision/datasets/svhn.py).
SVHN = (Resource("train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373", (SVHN_URL + "train_32x32.mat",)),
        Resource("test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3", (SVHN_URL + "test_32x32.mat",)))
_IDX_DTYPES = {0x08: np.uint8}


# ----------------------------------------------------------------------------------- MNIST

def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file (``.gz`` or uncompressed): magic ``0x0000 <dtype> <ndim>``, then ``ndim``
    big-endian uint32 sizes, then the uint8 data in C order.

    Raises:
        DataCorrupt: bad magic number, or the payload length differs from the header's sizes.
    """
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise corrupt(path, f"{type(err).__name__}: {err}") from None
    if len(raw) < 4:
        raise corrupt(path, "shorter than the 4-byte IDX magic number")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype not in _IDX_DTYPES or ndim == 0:
        raise corrupt(path, f"magic number {raw[:4].hex()} is not an IDX uint8 header")
    if len(raw) < 4 + 4 * ndim:
        raise corrupt(path, "header ends before its dimensions")
    dims = struct.unpack(f">{ndim}I", raw[4: 4 + 4 * ndim])
    payload = np.frombuffer(raw, dtype=_IDX_DTYPES[dtype], offset=4 + 4 * ndim)
    if payload.size != int(np.prod(dims)):
        raise corrupt(path, f"header promises {int(np.prod(dims))} values of shape {dims}, "
                            f"found {payload.size}")
    return payload.reshape(dims)


def mnist(data_dir: Optional[PathLike] = None, *, download: bool = True, normalize: bool = True,
          verify: bool = True) -> Dataset:
    """MNIST handwritten digits, 60000 train / 10000 test, x: (N, 1, 28, 28).

    Files (torchvision's layout): ``<data_dir>/MNIST/raw/{train,t10k}-images-idx3-ubyte[.gz]`` and
    ``{train,t10k}-labels-idx1-ubyte[.gz]`` (IDX, magic 2051 for images and 2049 for labels).
    Preprocessing: pixels / 255, then per-channel standardisation with the training pixels'
    mean and std when ``normalize``.
    """
    paths = ensure(MNIST, resolve_dir(data_dir), dataset="mnist", download=download, verify=verify)
    x_train, y_train, x_test, y_test = (read_idx(p) for p in paths)
    for x, y, path in ((x_train, y_train, paths[0]), (x_test, y_test, paths[2])):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise corrupt(path, f"images of shape {x.shape} do not match labels of shape {y.shape}")
    return _image_dataset("mnist", x_train[:, None], y_train, x_test[:, None], y_test,
                          sorted(map(str, paths)), normalize)


# -------------------------------------------------------------------------------- CIFAR-10

def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python pickle: ``b"data"`` (N, 3072) uint8 (R, G, B planes), ``b"labels"``."""
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        target = np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise corrupt(path, f"not a CIFAR batch pickle ({type(err).__name__}: {err})") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(target) != len(data):
        raise corrupt(path, f"data of shape {data.shape} with {len(target)} labels, expected (N, 3072)")
    return data.reshape(-1, 3, 32, 32), target


def cifar10(data_dir: Optional[PathLike] = None, *, download: bool = True, normalize: bool = True,
            verify: bool = True) -> Dataset:
    """CIFAR-10, 50000 train / 10000 test, x: (N, 3, 32, 32), 10 classes.

    Files (torchvision's layout): ``<data_dir>/cifar-10-batches-py/data_batch_1..5`` and
    ``test_batch``; missing ones are extracted from ``<data_dir>/cifar-10-python.tar.gz``
    (downloaded and md5-checked if needed). Preprocessing: pixels / 255, then per-channel
    standardisation with the training pixels' mean and std when ``normalize``.
    """
    paths = ensure(CIFAR10, resolve_dir(data_dir), dataset="cifar10", download=download, verify=verify)
    batches = [_read_cifar_batch(p) for p in paths]
    x_train = np.concatenate([b[0] for b in batches[:-1]])
    y_train = np.concatenate([b[1] for b in batches[:-1]])
    return _image_dataset("cifar10", x_train, y_train, *batches[-1], [str(p) for p in paths], normalize)


# ------------------------------------------------------------------------------------ SVHN

def _read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One SVHN ``.mat``: ``X`` (32, 32, 3, N) uint8, ``y`` (N, 1) with 10 meaning digit 0."""
    io = optional("scipy.io", "scipy")
    try:
        mat = io.loadmat(str(path))
        x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1).astype(np.int64)
    except Exception as err:  # scipy raises ValueError, OSError, MatReadError, ... on bad files
        raise corrupt(path, f"not an SVHN .mat file ({type(err).__name__}: {err})") from None
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
        raise corrupt(path, f"X of shape {x.shape} with {len(y)} labels, expected (32, 32, 3, N)")
    y = np.where(y == 10, 0, y)
    return np.transpose(x, (3, 2, 0, 1)), y


def svhn(data_dir: Optional[PathLike] = None, *, download: bool = True, normalize: bool = True,
         verify: bool = True) -> Dataset:
    """SVHN cropped digits, 73257 train / 26032 test (the real test split), x: (N, 3, 32, 32).

    Files (torchvision's layout): ``<data_dir>/train_32x32.mat`` and ``test_32x32.mat``, read
    with ``scipy.io.loadmat``; label 10 means the digit 0 and becomes 0. Preprocessing: pixels /
    255, then per-channel standardisation with the training pixels' mean and std when
    ``normalize``.
    """
    paths = ensure(SVHN, resolve_dir(data_dir), dataset="svhn", download=download, verify=verify)
    (x_train, y_train), (x_test, y_test) = (_read_svhn(p) for p in paths)
    return _image_dataset("svhn", x_train, y_train, x_test, y_test, [str(p) for p in paths], normalize)


# ---------------------------------------------------------------------------------- digits

def digits(*, seed: int = 0) -> Dataset:
    """scikit-learn's handwritten digits (offline), 1437 train / 360 test, x: (N, 1, 8, 8).

    The split is ``train_test_split(test_size=360, stratify=y, random_state=seed)``; pixels
    (0..16) are standardised with one scalar mean and std of the training pixels.
    """
    sk_datasets = optional("sklearn.datasets", "scikit-learn")
    model_selection = optional("sklearn.model_selection", "scikit-learn")
    bunch = sk_datasets.load_digits()
    x_train, x_test, y_train, y_test = model_selection.train_test_split(
        bunch.data, bunch.target, test_size=360, stratify=bunch.target, random_state=seed)
    mean, std = float(x_train.mean()), float(x_train.std())
    shape = (-1, 1, 8, 8)
    return Dataset("digits", "image", features(((x_train - mean) / std).reshape(shape)), labels(y_train),
                   features(((x_test - mean) / std).reshape(shape)), labels(y_test), num_classes=10, dim=64,
                   info={"mean": mean, "std": std, "seed": seed})


# --------------------------------------------------------------------------------- helpers

def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean and std of uint8 images (N, C, H, W), via a 256-bin histogram."""
    values = np.arange(256, dtype=np.float64)
    mean, std = [], []
    for c in range(x.shape[1]):
        counts = np.bincount(x[:, c].reshape(-1), minlength=256).astype(np.float64)
        m = (counts * values).sum() / counts.sum()
        mean.append(m)
        std.append(np.sqrt((counts * (values - m) ** 2).sum() / counts.sum()))
    return np.array(mean), np.array(std)


def _scale(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(x / 255 - mean) / std per channel, in float32."""
    out = x.astype(np.float32) / np.float32(255.0)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (out - mean.astype(np.float32).reshape(shape)) / std.astype(np.float32).reshape(shape)


def _image_dataset(name, x_train, y_train, x_test, y_test, source, normalize) -> Dataset:
    """Scale to [0, 1], optionally standardise with training statistics, and wrap."""
    channels = x_train.shape[1]
    if normalize:
        mean, std = channel_stats(x_train)
        mean, std = mean / 255.0, np.where(std > 0, std, 1.0) / 255.0
    else:
        mean, std = np.zeros(channels), np.ones(channels)
    logger.info("%s: %d train / %d test images, channel mean %s std %s", name, len(x_train), len(x_test),
                np.round(mean, 4), np.round(std, 4))
    return Dataset(name, "image", features(_scale(x_train, mean, std)), labels(y_train),
                   features(_scale(x_test, mean, std)), labels(y_test), num_classes=10,
                   dim=int(np.prod(x_train.shape[1:])), source=tuple(source),
                   info={"mean": tuple(mean.tolist()), "std": tuple(std.tolist()), "normalize": normalize})
