"""2-D toy densities of FFJORD (Grathwohl et al., 2019, ``lib/toy_data.py``), generated offline.

Each sampler draws from a ``numpy.random.Generator`` seeded explicitly, so a seed fixes the
sample. The definitions follow FFJORD's: the same shapes, scales and noise levels, vectorised,
and with exactly ``n`` points for every ``n`` (FFJORD drops a remainder for some shapes).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .dataset import Dataset, features

TRAIN_SIZE = 10_000
TEST_SIZE = 2_000


def _eight_gaussians(rng: np.random.Generator, n: int) -> np.ndarray:
    """Eight unit-direction centres at radius 4, std 0.5, everything divided by 1.414."""
    s = 1.0 / np.sqrt(2.0)
    centers = 4.0 * np.array([(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)])
    points = rng.standard_normal((n, 2)) * 0.5 + centers[rng.integers(0, 8, size=n)]
    return points / 1.414


def _moons(rng: np.random.Generator, n: int) -> np.ndarray:
    """scikit-learn's two moons with noise 0.1, mapped by ``2 x + (-1, -0.2)``."""
    n_out = n // 2
    outer = np.linspace(0, np.pi, n_out)
    inner = np.linspace(0, np.pi, n - n_out)
    x = np.concatenate([np.cos(outer), 1 - np.cos(inner)])
    y = np.concatenate([np.sin(outer), 1 - np.sin(inner) - 0.5])
    points = np.stack([x, y], axis=1)[rng.permutation(n)] + rng.normal(scale=0.1, size=(n, 2))
    return points * 2 + np.array([-1.0, -0.2])


def _checkerboard(rng: np.random.Generator, n: int) -> np.ndarray:
    """Uniform on the black squares of a 4×4 board on [-4, 4]²."""
    x1 = rng.random(n) * 4 - 2
    x2 = rng.random(n) - rng.integers(0, 2, size=n) * 2 + np.floor(x1) % 2
    return np.stack([x1, x2], axis=1) * 2


def _pinwheel(rng: np.random.Generator, n: int) -> np.ndarray:
    """Five arms: radial std 0.3, tangential std 0.1, twist rate 0.25, scaled by 2."""
    num_arms, rate = 5, 0.25
    feats = rng.standard_normal((n, 2)) * np.array([0.3, 0.1])
    feats[:, 0] += 1.0
    arm = np.arange(n) % num_arms
    angles = np.linspace(0, 2 * np.pi, num_arms, endpoint=False)[arm] + rate * np.exp(feats[:, 0])
    cos, sin = np.cos(angles), np.sin(angles)
    rotated = np.stack([feats[:, 0] * cos + feats[:, 1] * sin, -feats[:, 0] * sin + feats[:, 1] * cos], axis=1)
    return 2 * rotated[rng.permutation(n)]


def _two_spirals(rng: np.random.Generator, n: int) -> np.ndarray:
    """Two interleaved spirals up to 540°, uniform jitter 0.5, divided by 3, Gaussian noise 0.1."""
    t = np.sqrt(rng.random((n, 1))) * 540 * (2 * np.pi) / 360
    d = np.concatenate([-np.cos(t) * t, np.sin(t) * t], axis=1) + rng.random((n, 2)) * 0.5
    sign = np.where(np.arange(n) < n // 2, 1.0, -1.0)[:, None]
    return sign * d / 3 + rng.standard_normal((n, 2)) * 0.1


def _rings(rng: np.random.Generator, n: int) -> np.ndarray:
    """Four concentric circles of radii 3, 2.25, 1.5, 0.75 with Gaussian noise 0.08."""
    quarter = n // 4
    counts = [quarter, quarter, quarter, n - 3 * quarter]
    parts = []
    for radius, count in zip((1.0, 0.75, 0.5, 0.25), counts):
        angle = np.linspace(0, 2 * np.pi, count, endpoint=False)
        parts.append(np.stack([np.cos(angle), np.sin(angle)], axis=1) * radius)
    points = np.concatenate(parts) * 3.0
    return points[rng.permutation(n)] + rng.normal(scale=0.08, size=(n, 2))


TOYS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "8gaussians": _eight_gaussians,
    "moons": _moons,
    "checkerboard": _checkerboard,
    "pinwheel": _pinwheel,
    "2spirals": _two_spirals,
    "rings": _rings,
}


def sample_toy(name: str, n: int, seed: int = 0) -> np.ndarray:
    """``n`` points (float32, shape (n, 2)) of the toy density ``name``, reproducible from ``seed``.

    Raises:
        ValueError: unknown ``name`` (the message lists the valid ones) or ``n < 1``.
    """
    if name not in TOYS:
        raise ValueError(f"Unknown toy density {name!r}; valid names: {', '.join(TOYS)}.")
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}.")
    return TOYS[name](np.random.default_rng(seed), int(n)).astype(np.float32)


def toy(name: str, *, n_train: int = TRAIN_SIZE, n_test: int = TEST_SIZE, seed: int = 0) -> Dataset:
    """A toy density as a :class:`Dataset`: ``n_train`` training and ``n_test`` test points.

    The two splits are independent draws from the seeds ``(seed, 0)`` and ``(seed, 1)``.
    """
    if name not in TOYS:
        raise ValueError(f"Unknown toy density {name!r}; valid names: {', '.join(TOYS)}.")
    x_train = sample_toy(name, n_train, seed=[seed, 0])
    x_test = sample_toy(name, n_test, seed=[seed, 1])
    return Dataset(name, "density", features(x_train), None, features(x_test), None, dim=2,
                   info={"seed": seed})
