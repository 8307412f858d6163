"""The experiments' models against facts they must satisfy, and the per-solve statistics."""

import math

import torch

from nodeopt.tasks import FFJORD, ODERNN, ConvODENet


def test_ffjord_density_integrates_to_one():
    # Change of variables done right (sign of the log-determinant, data at t1, noise at t0):
    # a randomly initialised 2-D flow's density integrates to 1 over the plane.
    torch.manual_seed(0)
    flow = FFJORD(2, hidden=(16, 16), blocks=2, rtol=1e-6, atol=1e-6, gradient="backprop").double()
    with torch.no_grad():
        for p in flow.parameters():
            p.mul_(3.0)  # a clearly non-Gaussian flow
        xs = torch.linspace(-7, 7, 141, dtype=torch.float64)
        grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
        density = flow(grid).exp()
    cell = float(xs[1] - xs[0]) ** 2
    assert abs(float(density.sum()) * cell - 1.0) < 2e-3
    assert float(density.max()) > 1.5 / (2 * math.pi)  # and it is not the base density itself


def test_ode_rnn_reads_each_series_after_its_last_real_observation():
    torch.manual_seed(0)
    model = ODERNN(3, 4, hidden=5, field_width=8, rtol=1e-6, atol=1e-6).double()
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    lengths = torch.tensor([3, 6])
    changed = x.clone()
    changed[0, 3:] = 100.0  # padding of the first series: must not matter
    with torch.no_grad():
        a, b = model(x, lengths), model(changed, lengths)
        assert torch.equal(a[0], b[0])
        assert not torch.equal(model(x, torch.tensor([6, 6]))[0], a[0])  # the length is used
    # Every gap is one solve; the block counts all of them since its last reset.
    model.ode.reset_stats()
    model(x, lengths).sum().backward()
    assert len(model.ode.solves) == 5
    total = model.ode.total_stats()
    assert total.nfe == sum(s.nfe for s in model.ode.solves) > 0
    assert total.nvjp_backward == sum(s.nvjp_backward for s in model.ode.solves) > 0


def test_conv_ode_net_pools_any_image_size_to_class_scores():
    torch.manual_seed(0)
    for channels, size, downsample, padding in ((1, 28, 2, 0), (3, 32, 2, 0), (1, 8, 1, 1)):
        net = ConvODENet(channels, 10, width=8, downsample=downsample, first_padding=padding)
        assert net(torch.randn(2, channels, size, size)).shape == (2, 10)
