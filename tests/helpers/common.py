"""What several test files share: small vector fields, fixed-step options, a free port."""

import socket

import torch
from torch import nn

from nodeopt.solvers import METHODS


class Field(nn.Module):
    """A small time-dependent MLP vector field (float64), its weights drawn from ``seed``."""

    def __init__(self, dim=2, width=16, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.l1 = nn.Linear(dim + 1, width).double()
        self.l2 = nn.Linear(width, dim).double()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.5)

    def forward(self, t, y):
        return self.l2(torch.tanh(self.l1(torch.cat([y, t.expand(y.shape[0], 1)], dim=1))))


class TanhLinear(nn.Module):
    """``dy/dt = tanh(W y + b)`` on a 3-D state: one Linear layer inside an ODE, for SNOpt's tests."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, t, y):
        return torch.tanh(self.lin(y))


def step_options(method):
    """No options for an adaptive method; a step of 0.1 for a fixed-step one."""
    return None if METHODS[method].tableau.adaptive else {"step_size": 0.1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
