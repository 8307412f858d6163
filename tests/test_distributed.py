"""Training on 2 CPU processes (gloo): replicas stay identical, and 2 ranks at global batch B equal 1 rank at B.

The reference is the single-process loop. With a fixed-step solver every example's solve is
independent of the rest of the batch, so splitting a batch over ranks changes nothing but the
order of floating-point sums (with an adaptive solver each rank would choose its own steps).
"""

import argparse
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from helpers.common import free_port
from nodeopt import odeint
from nodeopt.cli.build import build
from nodeopt.cli.train import add_arguments, resolve_settings
from nodeopt.gradients import GRADIENTS
from nodeopt.tasks import Budget, RunDir
from nodeopt.tasks.distributed import World, wrap

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="this torch build has no torch.distributed")

ITERATIONS = 5
CASES = [(opt, grad) for opt in ("adam", "sgd", "snopt") for grad in ("symplectic", "adjoint")]


def _settings(optimizer, gradient, run_dir):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--task", "image", "--dataset", "digits", "--width", "4", "--batch-size", "16", "--method", "rk4",
            "--optimizer", optimizer, "--gradient", gradient, "--iterations", str(ITERATIONS), "--eval-every", "100",
            "--snopt-freq", "3", "--device", "cpu", "--run-dir", str(run_dir)]
    if optimizer == "snopt":
        argv += ["--t1-optimize", "feedback", "--t1-update-freq", "2"]
    return resolve_settings(parser.parse_args(argv), parser)


def _train(optimizer, gradient, run_dir, world):
    """k iterations of the real loop; returns what must agree across ranks and with one process."""
    s = _settings(optimizer, gradient, run_dir)
    trainer = build({**s, "checkpoint_every": 100}, world)
    model, precond, t1_opt = trainer.model, trainer.precond, trainer.t1_optimizer
    trainer.fit(Budget(ITERATIONS))
    return dict(params={k: v.clone() for k, v in model.state_dict().items()},
                snopt=precond.state_dict() if precond is not None else None,
                t1_opt=t1_opt.state_dict() if t1_opt is not None else None,
                metric=trainer.progress.last_metric, loss=RunDir(run_dir).read_metrics() if world.main else None)


class Field(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(3, 5), nn.Linear(5, 3)

    def forward(self, t, y):
        return self.lin2(torch.tanh(self.lin1(y)))


class TwoSolves(nn.Module):
    """The same field in two solves per forward: each parameter reaches DDP's reducer from two Functions."""

    def __init__(self, gradient):
        super().__init__()
        self.field, self.head, self.gradient = Field(), nn.Linear(3, 2), gradient

    def forward(self, x):
        t = torch.tensor([0.0, 0.5], dtype=torch.float64)
        y = odeint(self.field, x, t, method="rk4", gradient=self.gradient)[-1]
        y = odeint(self.field, y, t, method="rk4", gradient=self.gradient)[-1]
        return self.head(y)


def _two_solves_grads(gradient, rank=None, world=None):
    torch.manual_seed(0)
    model = TwoSolves(gradient).double()
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(8, 3, dtype=torch.float64, generator=gen)
    if rank is not None:
        x = x[rank * 4:(rank + 1) * 4]
    net = wrap(model, world, torch.device("cpu")) if world is not None else model
    net(x).square().mean().backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def _worker(rank, port, tmp, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    world = World(rank=rank, size=2, local_rank=rank, local_size=2)
    try:
        torch.set_num_threads(1)
        results = {case: _train(*case, os.path.join(tmp, "-".join(case)), world) for case in CASES}
        grads = {g: _two_solves_grads(g, rank, world) for g in sorted(GRADIENTS)}
        out[rank] = (results, grads)
    finally:
        dist.destroy_process_group()




@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Every case trained on 2 ranks (one spawn), and the same on one process."""
    tmp = tmp_path_factory.mktemp("ddp")
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(free_port(), str(tmp / "two"), out), nprocs=2, join=True)
    single = {case: _train(*case, tmp / "one" / "-".join(case), World()) for case in CASES}
    return dict(out), single


def _assert_same(a, b, exact, what):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for key in a:
            _assert_same(a[key], b[key], exact, f"{what}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, exact, f"{what}[{i}]")
    elif isinstance(a, torch.Tensor):
        if exact:
            assert torch.equal(a, b), what
        else:  # float32 sums in another order: relative to the tensor's size, not element by element
            assert float((a - b).norm()) <= 1e-4 * float(b.norm()) + 1e-7, f"{what}: max diff {(a - b).abs().max():.3g}"
    elif isinstance(a, float):
        assert a == b if exact else a == pytest.approx(b, rel=1e-4, abs=1e-7), what
    else:
        assert a == b, what


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_every_rank_holds_identical_parameters_snopt_state_and_t1(two_ranks, case):
    out, _ = two_ranks
    rank0, rank1 = out[0][0][case], out[1][0][case]
    _assert_same(rank0["params"], rank1["params"], True, "parameters (incl. the ODE block's times, t1)")
    _assert_same(rank0["snopt"], rank1["snopt"], True, "SNOpt state")
    _assert_same(rank0["t1_opt"], rank1["t1_opt"], True, "integration-time optimiser state")
    assert rank0["metric"] == rank1["metric"]


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_two_ranks_at_global_batch_b_equal_one_rank_at_b(two_ranks, case):
    out, single = two_ranks
    two, one = out[0][0][case], single[case]
    _assert_same(two["params"], one["params"], False, "parameters")
    if case[0] == "snopt":  # (eigenbases of nearly equal eigenvalues may rotate with rounding: compare the rest)
        for key in ("iteration", "refreshes", "damping_factor", "_actual_change", "_predicted_change", "_judged_steps"):
            assert two["snopt"][key] == pytest.approx(one["snopt"][key], rel=1e-4), key
        assert one["snopt"]["refreshes"] == 4  # iterations 0, 1, 2 (early) and 3
        for pid, state in one["snopt"]["state"].items():
            assert two["snopt"]["state"][pid]["batch_size"] == state["batch_size"] == 16  # the global batch
        t1_two, t1_one = two["params"]["ode.times"][-1], one["params"]["ode.times"][-1]
        assert t1_two != 1.0 and t1_two == pytest.approx(float(t1_one), rel=1e-5)  # t1 moved, the same way
    # the logged loss is the mean over the global batch, the metric the whole test split's
    losses_two = [float(r["loss"]) for r in two["loss"]]
    losses_one = [float(r["loss"]) for r in one["loss"]]
    assert losses_two == pytest.approx(losses_one, rel=1e-4)
    assert two["metric"] == pytest.approx(one["metric"], abs=1.5 / 360)


@pytest.mark.parametrize("gradient", sorted(GRADIENTS))
def test_ddp_reducer_gets_each_gradient_once_under_every_gradient_method(two_ranks, gradient):
    """No find_unused_parameters, parameters used in two solves: DDP's average equals the mean of the ranks'."""
    out, _ = two_ranks
    ref = [_two_solves_grads(gradient, rank) for rank in (0, 1)]
    for rank in (0, 1):
        got = out[rank][1][gradient]
        for name in got:
            mean = (ref[0][name] + ref[1][name]) / 2
            assert torch.allclose(got[name], mean, rtol=1e-10, atol=1e-13), (gradient, name)
