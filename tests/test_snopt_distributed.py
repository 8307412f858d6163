"""SNOpt under torch.distributed: factors are averaged across ranks before the eigendecomposition."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from helpers.common import TanhLinear, free_port
from nodeopt.nn import ODEBlock
from nodeopt.optim import SNOpt

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="this torch build has no torch.distributed")


def _model():
    torch.manual_seed(0)
    return nn.Sequential(ODEBlock(TanhLinear(), gradient="symplectic"), nn.Linear(3, 2)).double()


def _data(rank):
    gen = torch.Generator().manual_seed(100 + rank)
    return torch.randn(8, 3, dtype=torch.float64, generator=gen), torch.randint(0, 2, (8,), generator=gen)


def _factors(model, x, y):
    pre = SNOpt(model)
    pre.train_itr_setup()
    capture = pre._capture
    F.cross_entropy(model(x), y).backward()
    pre.step()
    layer = pre.layers[0]
    return capture.sums[layer].factors(), pre.state[layer.weight]


def _worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model = _model()
        (a, g), state = _factors(model, *_data(rank))
        out[rank] = (a, g, state["q_a"], state["q_g"])
    finally:
        dist.destroy_process_group()




def test_two_ranks_precondition_with_the_mean_of_their_factors():
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(free_port(), out), nprocs=2, join=True)
    (a0, g0), _ = _factors(_model(), *_data(0))
    (a1, g1), _ = _factors(_model(), *_data(1))
    mean_a, mean_g = (a0 + a1) / 2, (g0 + g1) / 2
    e_a, _ = torch.linalg.eigh(mean_a)
    e_g, _ = torch.linalg.eigh(mean_g)
    for rank in (0, 1):
        a, g, q_a, q_g = out[rank]
        assert torch.allclose(a, (a0, a1)[rank])  # each rank gathered its own samples
        # ... and both refreshed from the mean: same bases, eigenvalues of the mean factors
        assert torch.allclose(q_a @ torch.diag(e_a.clamp_min(0)) @ q_a.t(), mean_a, atol=1e-12)
        assert torch.allclose(q_g @ torch.diag(e_g.clamp_min(0)) @ q_g.t(), mean_g, atol=1e-12)
