"""SNOpt's public statistics (``precond.last_stats``) against independent computations of what they describe."""

import json
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from helpers.common import TanhLinear, free_port
from nodeopt.nn import ODEBlock
from nodeopt.optim import SNOpt, SNOptStats, kfac

DT = torch.float64


def _model(method="dopri5", options=None):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), ODEBlock(TanhLinear(), gradient="symplectic", method=method, options=options,
                                                   rtol=1e-6, atol=1e-6), nn.Linear(3, 2)).double()


def _data(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(16, 4, dtype=DT, generator=gen), torch.randint(0, 2, (16,), generator=gen)


def _iteration(model, pre, x, y):
    pre.train_itr_setup()
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    raw = torch.cat([kfac.gradient_matrix(m).reshape(-1) for m in pre.layers]).clone()
    pre.step()
    return raw, torch.cat([kfac.gradient_matrix(m).reshape(-1) for m in pre.layers])


def test_there_are_no_statistics_before_the_first_step():
    assert SNOpt(_model()).last_stats is None


def test_step_scale_is_the_ratio_of_the_applied_to_the_unbounded_step():
    x, y = _data()
    free_model, bounded_model = _model(), _model()
    free_pre = SNOpt(free_model, full_precond=True, max_step=None)
    bounded_pre = SNOpt(bounded_model, full_precond=True, max_step=1e-6, lr=0.02)
    raw, free = _iteration(free_model, free_pre, x, y)
    _, bounded = _iteration(bounded_model, bounded_pre, x, y)
    free_stats, stats = free_pre.last_stats, bounded_pre.last_stats

    assert free_stats.step_scale == 1.0 and free_stats.step_bound is None and not free_stats.bounded
    assert stats.bounded and stats.step_bound == pytest.approx(1e-6)
    ratio = float(bounded @ free) / float(free @ free)
    assert torch.allclose(bounded, free * ratio, rtol=1e-12)
    assert stats.step_scale == pytest.approx(ratio, rel=1e-12)
    # The Fisher size is ⟨∇_nat, ∇⟩ of the unbounded step, whether or not a bound exists,
    # and the bound's scale is sqrt(c / size).
    size = float(free @ raw)
    assert free_stats.fisher_size == pytest.approx(size, rel=1e-12)
    assert stats.fisher_size == pytest.approx(size, rel=1e-12)
    assert stats.step_scale == pytest.approx(math.sqrt(1e-6 / size), rel=1e-12)
    assert stats.layers == free_stats.layers == 3  # every Linear (full_precond)
    assert stats.layer_fisher_sizes.shape == (3,)


def test_a_step_within_the_bound_is_not_scaled():
    model = _model()
    pre = SNOpt(model, full_precond=True, max_step=1e9, lr=0.02)
    _iteration(model, pre, *_data())
    assert pre.last_stats.step_scale == 1.0 and not pre.last_stats.bounded
    assert pre.last_stats.step_bound == pytest.approx(1e9)


def test_refresh_flags_and_timings_follow_the_schedule():
    model = _model()
    pre = SNOpt(model, update_freq=3, early_refresh=False)
    x, y = _data()
    seen = []
    for it in range(4):
        refreshes_before = pre.refreshes
        _iteration(model, pre, x, y)
        s = pre.last_stats
        seen.append(s)
        assert s.iteration == it
        assert s.refresh == (pre.refreshes > refreshes_before)
    assert [s.refresh for s in seen] == [True, False, False, True]
    for s in seen:
        if s.refresh:
            assert s.factor_seconds > 0 and s.refresh_seconds > 0 and s.factor_samples > 0
        else:
            assert (s.factor_seconds, s.refresh_seconds, s.factor_samples) == (0.0, 0.0, 0)
        assert s.bytes_all_reduced == 0  # one process: nothing is sent


def test_factor_samples_count_the_differentiated_evaluations():
    # Euler with h = 0.25 on [0, 1]: the backward pass differentiates 4 evaluations of the field's
    # layer; the two layers outside the ODE (full_precond) are evaluated once each.
    x, y = _data()
    for full, expected in ((False, 4), (True, 4 + 2)):
        model = _model(method="euler", options={"step_size": 0.25})
        pre = SNOpt(model, full_precond=full)
        _iteration(model, pre, x, y)
        assert pre.last_stats.factor_samples == expected


def test_damping_is_eps_times_the_current_factor():
    model = _model()
    fixed = SNOpt(model, eps=0.07, adaptive_damping=False)
    _iteration(model, fixed, *_data())
    assert fixed.last_stats.damping == 0.07
    model = _model()
    pre = SNOpt(model, eps=0.07)
    pre.damping_factor = 4.0  # as after the Levenberg–Marquardt rule raised it
    _iteration(model, pre, *_data())
    assert pre.last_stats.damping == pytest.approx(0.07 * pre.damping_factor)


def test_statistics_are_plain_numbers_for_a_log():
    model = _model()
    pre = SNOpt(model)
    _iteration(model, pre, *_data())
    row = pre.last_stats.as_dict()
    json.dumps(row)
    assert row["fisher_size"] == pre.last_stats.fisher_size and row["refresh"] is True
    assert isinstance(pre.last_stats, SNOptStats)


# ---- bytes all-reduced across two ranks -------------------------------------------------------------

def _worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model = _model()
        pre = SNOpt(model, full_precond=True, update_freq=2, early_refresh=False)
        x, y = _data(rank)
        sent = []
        for _ in range(2):  # a refresh, then not
            _iteration(model, pre, x, y)
            sent.append(pre.last_stats.bytes_all_reduced)
        out[rank] = sent
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="this torch build has no torch.distributed")
def test_bytes_all_reduced_are_the_factors_and_batch_sizes_in_one_buffer():
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(free_port(), out), nprocs=2, join=True)
    # Linear(4→3), Linear(3→3) in the ODE, Linear(3→2), all with bias: A is (in+1)², G is out²;
    # one batch size per layer; float64.
    layers = [(4, 3), (3, 3), (3, 2)]
    elements = sum((i + 1) ** 2 + o ** 2 for i, o in layers) + len(layers)
    for rank in (0, 1):
        assert out[rank] == [elements * 8, 0]
