"""The gradient-method interface and the one registry that turns names into objects."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Union

import torch

from ..solvers.problem import Problem
from ..solvers.solution import Stats


class GradientMethod(ABC):
    """How the backward pass of a solve is computed.

    A method runs the forward solve of ``problem`` and returns the stacked flat
    outputs ``(len(t), N)``, wired into autograd so that ``backward()`` reaches
    ``problem.y0`` and ``params``. It records its costs in ``stats``.
    """

    name: str = ""
    exact: bool = True

    @abstractmethod
    def solve(self, problem: Problem, params: tuple[torch.Tensor, ...], stats: Stats) -> torch.Tensor:
        """Forward solve; returns outputs of shape ``(len(t), N)`` with a graph to y0 and params."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


GRADIENTS: dict[str, type[GradientMethod]] = {}


def register(cls: type[GradientMethod]) -> type[GradientMethod]:
    """Class decorator: make ``gradient=cls.name`` resolve to ``cls()``."""
    GRADIENTS[cls.name] = cls
    return cls


def get_gradient(gradient: Union[str, GradientMethod, None]) -> GradientMethod:
    """Resolve ``gradient=`` to an object.

    Raises:
        ValueError: for an unknown name, listing the valid ones.
        TypeError: for anything that is neither a name nor a GradientMethod.
    """
    if gradient is None:
        gradient = "backprop"
    if isinstance(gradient, GradientMethod):
        return gradient
    if isinstance(gradient, str):
        try:
            return GRADIENTS[gradient]()
        except KeyError:
            raise ValueError(f"gradient={gradient!r} is not a known gradient method; use one of "
                             f"{', '.join(sorted(GRADIENTS))}, or pass a GradientMethod object") from None
    raise TypeError(f"gradient must be a name or a GradientMethod, got {type(gradient).__name__}")
