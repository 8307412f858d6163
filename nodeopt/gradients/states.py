"""Checkpointed step states: keep only some ``y_n`` in the forward pass, recompute the rest in reverse.

The replaying methods hold every accepted step's state ``y_n``. For very long
solves even those may not fit. Then the forward pass keeps only every
``stride``-th state, an *online* scheme because the number of steps is known
only at the end: while more than the allowed number of states are kept, the
stride doubles and every other kept state is dropped. The step times, sizes and
edges are tiny and always kept. The backward pass walks the steps in reverse,
and for each segment between two kept states re-runs the forward steps from the
kept one with the *recorded* sizes, times and first-stage times
(:meth:`Trajectory.step`), which are the very operations of the forward loop:
the recomputed states equal the dropped ones bit for bit, so the gradient is
unchanged. A segment too long for the memory left is itself cut into
sub-segments recursively (a revolve-like hierarchy, Griewank & Walther 2000),
down to recomputing each state from the segment's start when almost nothing is
left.

Cost: with ``K`` states allowed and ``N`` steps, ``N ≤ K²/4`` needs one extra
forward step per step (about one forward solve without a graph); each further
level of recursion adds another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch

from ..solvers.loop import Trajectory

Advance = Callable[[int, torch.Tensor], torch.Tensor]  # (n, y_n) -> y_{n+1}, recorded step n, no graph


@dataclass
class ThinnedTrajectory(Trajectory):
    """A trajectory that keeps at most ``capacity`` step states, every ``stride``-th one.

    While the stride is 1 up to ``capacity`` states are kept (the backward pass then
    recomputes nothing); once it has doubled, at most half of them, so that the
    backward pass has the other half for the states of the segment it recomputes.
    ``ys[n]`` is None for a dropped state; ``ys[0]`` is always kept.
    """

    capacity: int = 1 << 62
    stride: int = 1
    kept: int = 0

    def append(self, t: float, h: float, y: torch.Tensor, first: float, last: float,
               stages: Optional[list[torch.Tensor]] = None) -> None:
        self.append_step(t, h, y, first, last, stages)
        self.thin()

    def append_step(self, t: float, h: float, y: torch.Tensor, first: float, last: float,
                    stages: Optional[list[torch.Tensor]] = None) -> None:
        """Record a step, keeping its state only on the current stride (without thinning)."""
        keep = len(self.hs) % self.stride == 0
        Trajectory.append(self, t, h, y if keep else None, first, last, stages)
        self.kept += keep

    def thin(self) -> None:
        """Double the stride (dropping every other kept state) until the kept states are within the limit."""
        while self.kept > max(self.capacity if self.stride == 1 else self.capacity // 2, 1):
            self.stride *= 2
            for n in range(len(self.ys)):
                if n % self.stride and self.ys[n] is not None:
                    self.ys[n] = None
            self.kept = sum(y is not None for y in self.ys)


class StateWalk:
    """The step states ``(n, y_n)`` for ``n = N-1, ..., 0``, recomputing the dropped ones.

    Args:
        traj: the recorded trajectory (a plain one has every state: nothing is recomputed).
        advance: ``advance(n, y_n) -> y_{n+1}``, the recorded step ``n`` without a graph.
        capacity: the most states to hold at once, kept ones included (default: the
            trajectory's ``capacity``, else all).

    ``held`` is the number of states materialised at the moment a state is yielded.
    """

    def __init__(self, traj: Trajectory, advance: Advance, capacity: Optional[int] = None):
        self.traj, self.advance = traj, advance
        self.capacity = capacity if capacity is not None else getattr(traj, "capacity", len(traj))
        self.held = 0

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        ys = self.traj.ys[:len(self.traj)]
        kept = [n for n, y in enumerate(ys) if y is not None]
        self.held = len(kept)
        if len(kept) == len(ys):
            for n in reversed(range(len(ys))):
                yield n, ys[n]
            return
        # Each segment may use what the kept states leave (its own start is one of them).
        inner = max(self.capacity - len(kept) + 1, 1)
        for start, end in reversed(list(zip(kept, kept[1:] + [len(ys)]))):
            yield from self._segment(start, end, ys[start], inner)

    def _segment(self, start: int, end: int, y: torch.Tensor, capacity: int) -> Iterator[tuple[int, torch.Tensor]]:
        """States ``end-1 .. start`` from ``y = y_start``, holding at most ``capacity`` of them (y included)."""
        length = end - start
        if length <= capacity:  # the whole segment fits: one recompute
            states = [y]
            for n in range(start, end - 1):
                states.append(self.advance(n, states[-1]))
            self.held += len(states) - 1
            for n in reversed(range(start, end)):
                yield n, states[-1]
                if n > start:
                    states.pop()
                    self.held -= 1
        elif capacity < 4:  # almost no memory: each state afresh from the segment's start
            for n in reversed(range(start, end)):
                y_n = y
                for i in range(start, n):
                    y_n = self.advance(i, y_n)
                self.held += n > start
                yield n, y_n
                self.held -= n > start
        else:  # checkpoints inside the segment, then each sub-segment the same way
            stride = -(-length // (capacity // 2))
            marks = [y]
            for n in range(start, start + stride * ((length - 1) // stride)):
                y = self.advance(n, y)
                if (n + 1 - start) % stride == 0:
                    marks.append(y)
            self.held += len(marks) - 1
            for i in reversed(range(len(marks))):
                sub = start + i * stride
                yield from self._segment(sub, min(sub + stride, end), marks[i], capacity - len(marks) + 1)
                if i > 0:
                    marks.pop()
                    self.held -= 1
