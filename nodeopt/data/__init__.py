"""Layer 5: datasets from their official files, and offline defaults.

Every dataset function returns a :class:`Dataset` (float32 features, int64 labels, metadata).
Files are read under :func:`data_dir` in the layout of their own ecosystem (torchvision's for
MNIST, CIFAR-10 and SVHN; aeon's for the UEA archive; FFJORD's for the MAF bundle), each
dataset's files described once (:mod:`nodeopt.data.resources`). Missing files are downloaded
with a checksum when ``download=True``; otherwise, or without a network,
:class:`DataUnavailable` names the file and the offline datasets. Files on disk are checked
against their published md5 on first use (``verify=False`` skips it). Optional packages
(scikit-learn, scipy, aeon, h5py, pandas, tqdm) are imported only by the datasets that need them.
"""

from .dataset import Dataset
from .files import DataCorrupt, DataUnavailable, data_dir
from .images import cifar10, digits, mnist, svhn
from .registry import DATASETS, is_available, load, names
from .tabular import breast_cancer, bsds300, gas, hepmass, miniboone, power
from .timeseries import art_wr, char_traj, japanese_vowels, spo_ad
from .toys import sample_toy, toy

__all__ = ["Dataset", "DataUnavailable", "DataCorrupt", "data_dir", "load", "names", "is_available", "DATASETS",
           "mnist", "cifar10", "svhn", "digits", "char_traj", "art_wr", "spo_ad", "japanese_vowels",
           "miniboone", "gas", "power", "hepmass", "bsds300", "breast_cancer", "toy", "sample_toy"]
