"""The value every dataset function returns, and the small array helpers they share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

KINDS = ("image", "timeseries", "density")


@dataclass(frozen=True, eq=False)
class Dataset:
    """Tensors of one dataset's splits and what they are.

    Attributes:
        name: the registry name (``"mnist"``, ``"gas"``, ...).
        kind: ``"image"`` (x: (N, C, H, W)), ``"timeseries"`` (x: (N, length, channels)) or
            ``"density"`` (x: (N, dim)).
        x_train, x_val, x_test: float32 features; ``x_val`` is None where the dataset has no
            validation split.
        y_train, y_val, y_test: int64 labels in ``0..num_classes-1``; None for density data.
        num_classes: number of classes (None for density data).
        dim: size of one observation: C·H·W for images, channels for time series, features for
            density data.
        source: the files read (empty for generated or shipped data).
        info: preprocessing facts (normalisation statistics, kept columns, observation times,
            lengths, class names), documented by each dataset function.
    """

    name: str
    kind: str
    x_train: torch.Tensor
    y_train: Optional[torch.Tensor]
    x_test: torch.Tensor
    y_test: Optional[torch.Tensor]
    x_val: Optional[torch.Tensor] = None
    y_val: Optional[torch.Tensor] = None
    num_classes: Optional[int] = None
    dim: Optional[int] = None
    source: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Dataset kind must be one of {KINDS}, got {self.kind!r}.")
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x is not None and x.dtype != torch.float32:
                raise ValueError(f"x_{split} must be float32, got {x.dtype}.")
            if y is not None and (y.dtype != torch.int64 or x is None or len(y) != len(x)):
                raise ValueError(f"y_{split} must be int64 with one label per row of x_{split}.")

    @property
    def sizes(self) -> dict[str, int]:
        """Number of examples per split present: ``{"train": ..., ["val": ...,] "test": ...}``."""
        out = {"train": len(self.x_train)}
        if self.x_val is not None:
            out["val"] = len(self.x_val)
        out["test"] = len(self.x_test)
        return out

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one example (without the batch dimension)."""
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        classes = f", num_classes={self.num_classes}" if self.num_classes is not None else ""
        return (f"Dataset(name={self.name!r}, kind={self.kind!r}, shape={self.shape}, "
                f"sizes={self.sizes}{classes})")


def features(array: np.ndarray) -> torch.Tensor:
    """A contiguous float32 tensor of ``array``."""
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def labels(array: np.ndarray) -> torch.Tensor:
    """A contiguous int64 tensor of ``array``."""
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))


def tail_split(data: np.ndarray, fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Split rows as MAF does: the last ``int(fraction·N)`` rows are held out, in file order."""
    n_out = int(fraction * data.shape[0])
    return data[: data.shape[0] - n_out], data[data.shape[0] - n_out:]


def zscore(reference: np.ndarray, *arrays: np.ndarray, ddof: int = 0):
    """Standardise ``arrays`` column-wise with the mean and std of ``reference``.

    Returns ``(mean, std, *standardised)``; ``std`` is computed with ``ddof`` (0 as numpy, 1 as
    pandas), and a zero std is replaced by 1 so that a constant column maps to zero.
    """
    mean = reference.mean(axis=0)
    std = reference.std(axis=0, ddof=ddof)
    std = np.where(std > 0, std, 1.0)
    return (mean, std, *[(a - mean) / std for a in arrays])
