"""options['sync_every']: compiled adaptive solves that accept, reject and size steps on the device.

The truth is the eager loop (``sync_every=1``, the host deciding each step, itself tested against
SciPy and torchdiffeq elsewhere): the device loop must take the same steps, so values, step counts
and gradients agree to the bit, and it must read the device at most once per batch of attempts.
Compiled with the ``aot_eager`` backend (the same TorchDynamo graphs, run by ATen).
"""

import contextlib
import math
from unittest import mock

import pytest
import torch

import nodeopt
from nodeopt import SymplecticAdjoint, solve
from nodeopt.gradients import observe
from nodeopt.solvers import compiled
from nodeopt.solvers.control import IController, PIController

from helpers.common import Field

FIELD = Field(dim=2, width=16, seed=7)
GRADIENTS = {"backprop": "backprop", "symplectic": "symplectic", "stored": SymplecticAdjoint(store_stages=True),
             "checkpoint": "checkpoint", "adjoint": "adjoint"}


@pytest.fixture(autouse=True)
def traced_only(monkeypatch):
    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")


def _solve(y0, t, sync_every, func=FIELD, **kwargs):
    """The solution and the gradient of ``Σ v·y(t_i)`` w.r.t. y0 and the parameters."""
    y0 = y0.detach().clone().requires_grad_(True)
    sol = solve(func, y0, t, compile=True, options=dict(kwargs.pop("options", {}), sync_every=sync_every), **kwargs)
    v = torch.linspace(-1.0, 1.0, sol.values[0].numel(), dtype=y0.dtype).reshape(sol.values[0].shape)
    loss = sum((v * sol.values[i]).sum() for i in range(len(t)))
    grads = torch.autograd.grad(loss, (y0, *func.parameters()))
    return sol, torch.cat([g.reshape(-1) for g in grads])


def _y0(seed=0, n=8):
    return torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(GRADIENTS))
@pytest.mark.parametrize("method", ["dopri5", "bosh3", "fehlberg2"])
def test_the_device_loop_takes_the_eager_loops_steps(name, method):
    # several output times (dense output for backprop, landing for the others), rejections included
    t = torch.tensor([0.0, 0.3, 0.7, 1.5], dtype=torch.float64)
    kwargs = dict(method=method, rtol=1e-7, atol=1e-7, gradient=GRADIENTS[name], options={"first_step": 0.5})
    host, g_host = _solve(_y0(), t, 1, **kwargs)
    device, g_device = _solve(_y0(), t, 4, **kwargs)
    assert host.stats.n_rejected > 0 and host.stats.n_steps > 8
    assert (device.stats.n_steps, device.stats.n_rejected) == (host.stats.n_steps, host.stats.n_rejected)
    assert torch.equal(device.values, host.values)
    # backprop through a method without first-same-as-last sums the same terms in another order: the
    # device loop evaluates each attempt's first stage in its graph, the eager loop reuses one
    assert torch.allclose(g_device, g_host, rtol=1e-13, atol=0)


@pytest.mark.parametrize("controller", ["pi", "i"])
def test_reversed_time_step_t_and_both_controllers(controller):
    t = torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64)
    kwargs = dict(rtol=1e-6, atol=1e-6, gradient="symplectic", options={"controller": controller, "step_t": [1.4]})
    host, g_host = _solve(_y0(1), t, 1, **kwargs)
    device, g_device = _solve(_y0(1), t, 8, **kwargs)
    assert torch.equal(device.values, host.values) and torch.equal(g_device, g_host)
    assert device.stats.n_steps == host.stats.n_steps


def test_outputs_between_stops_are_interpolated():
    # a stop of step_t inside the span, and output times that are no stops (dense output)
    t = torch.tensor([0.0, 0.7, 1.5], dtype=torch.float64)
    kwargs = dict(rtol=1e-6, atol=1e-6, gradient="backprop", options={"step_t": [0.3]})
    host, g_host = _solve(_y0(6), t, 1, **kwargs)
    device, g_device = _solve(_y0(6), t, 4, **kwargs)
    assert torch.equal(device.values, host.values) and torch.equal(g_device, g_host)


def test_a_tuple_state():
    def func(t, state):
        x, v = state
        return v, -x * torch.cos(t)

    y0 = (torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    t = torch.tensor([0.0, 4.0], dtype=torch.float64)
    host = solve(func, y0, t, rtol=1e-8, atol=1e-8, compile=True)
    device = solve(func, y0, t, rtol=1e-8, atol=1e-8, compile=True, options={"sync_every": 8})
    assert all(torch.equal(a, b) for a, b in zip(device.values, host.values))


@contextlib.contextmanager
def _host_reads():
    """Counts the ways a tensor's value reaches Python (a device-to-host synchronisation on a GPU)."""
    calls = {"n": 0}
    with contextlib.ExitStack() as stack:
        for name in ("tolist", "item", "__bool__", "__float__", "__int__"):
            def counted(self, *args, _original=getattr(torch.Tensor, name), **kwargs):
                calls["n"] += 1
                return _original(self, *args, **kwargs)
            stack.enter_context(mock.patch.object(torch.Tensor, name, counted))
        yield calls


@pytest.mark.parametrize("sync_every", [1, 8])
def test_the_host_reads_the_device_once_per_batch_of_attempts(sync_every):
    t = torch.tensor([0.0, 6.0], dtype=torch.float64)
    with torch.no_grad():
        warm = solve(FIELD, _y0(2), t, rtol=1e-9, atol=1e-9, compile=True, options={"sync_every": sync_every})
        with _host_reads() as calls:
            sol = solve(FIELD, _y0(2), t, rtol=1e-9, atol=1e-9, compile=True, options={"sync_every": sync_every})
    attempts = sol.stats.n_steps + sol.stats.n_rejected
    assert attempts == warm.stats.n_steps + warm.stats.n_rejected > 40
    setup = 10  # checking y0, t and func's first output, and the starting step's norms
    if sync_every == 1:
        assert calls["n"] >= attempts  # the eager loop reads every step's error ratio
    else:
        batches = 3 + math.ceil((attempts - 7) / sync_every)  # batches of 1, 2, 4, then sync_every
        assert calls["n"] <= setup + batches + 1


def _message(func, sync_every, **kwargs):
    y0, t = torch.ones(2, dtype=torch.float64), torch.tensor([0.0, 2.0], dtype=torch.float64)
    options = dict(kwargs.pop("options", {}), sync_every=sync_every)
    with pytest.raises(RuntimeError) as info:
        solve(func, y0, t, compile=True, options=options, **kwargs)
    return str(info.value)


def test_the_device_loop_raises_the_eager_loops_errors():
    def blow_up(t, y):  # y' = y², y(0) = 1: infinite at t = 1
        return y * y

    def poisoned(t, y):  # NaN from t = 0.5 on
        return torch.where(t < 0.5, -y, torch.full_like(y, math.nan))

    def cliff(t, y):  # NaN above 1.5; Heun's step ends above it from stages below it, at t = 0.43
        return torch.where(y > 1.5, torch.full_like(y, math.nan), y)

    heun = dict(method="adaptive_heun", rtol=0.1, atol=0.1)
    for func, kwargs, expected in [(blow_up, {}, "step size underflow at t=1.0000000"),
                                   (blow_up, {"options": {"max_num_steps": 12}}, "max_num_steps=12 exceeded at t=0."),
                                   (poisoned, {}, "returned NaN or inf for every step tried from t=0.49999"),
                                   (cliff, heun, "returned NaN or inf at t=0.43097")]:
        message = _message(func, 1, **kwargs)
        assert expected in message
        assert _message(func, 8, **kwargs) == message


def test_a_run_stepping_past_its_end_counts_only_the_steps_taken():
    # a fast-growing step: the host queues attempts past the end, and they change nothing
    t = torch.tensor([0.0, 3.0], dtype=torch.float64)
    opts = {"first_step": 1e-4}
    host = solve(FIELD, _y0(3), t, rtol=1e-5, atol=1e-5, compile=True, options=opts)
    device = solve(FIELD, _y0(3), t, rtol=1e-5, atol=1e-5, compile=True, options=dict(opts, sync_every=64))
    assert device.stats.nfe > host.stats.nfe  # idle attempts ran (and their evaluations are counted)
    assert torch.equal(device.values, host.values)
    assert (device.stats.n_steps, device.stats.n_rejected) == (host.stats.n_steps, host.stats.n_rejected)


@pytest.mark.parametrize("cls", [PIController, IController])
def test_the_controller_on_the_device_is_its_python_arithmetic(cls):
    controller = cls(safety=0.85, ifactor=7.3, dfactor=0.17)
    ratios = [0.0, 1e-9, 0.03, 0.5, 0.999, 1.0, 1.0001, 3.7, 1e6]
    for ratio in ratios:
        for memory in (1.0, 1e-4, 0.3):
            for after_reject in (False, True):
                accepted = ratio <= 1.0
                expected = controller.factor(ratio, memory, 5, accepted, after_reject)
                got = controller.factor_on_device(torch.tensor(ratio, dtype=torch.float64),
                                                  torch.tensor(memory, dtype=torch.float64), 5,
                                                  torch.tensor(accepted), torch.tensor(after_reject))
                assert [float(g) for g in got] == list(expected), (ratio, memory, after_reject)


def test_listening_solves_eagerly_and_the_seminorm_adjoint_decides_on_the_host():
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with observe.listening():
        sol = solve(FIELD, _y0(4), t, compile=True, options={"sync_every": 8}, gradient="symplectic")
    assert sol.stats.compiled_graphs == 0
    # the backward solve's own norm (the seminorm) needs the host each step: there sync_every is dropped
    kwargs = dict(rtol=1e-7, atol=1e-7, gradient=nodeopt.Adjoint(options={"norm": "seminorm", "sync_every": 8}))
    host, g_host = _solve(_y0(4), t, 1, **kwargs)
    device, g_device = _solve(_y0(4), t, 8, **kwargs)
    assert torch.equal(g_device, g_host) and torch.equal(device.values, host.values)


@pytest.mark.parametrize("options, compile, message", [
    ({"sync_every": 0}, True, r"options\['sync_every'\] must be a positive number \(a whole number\), got 0"),
    ({"sync_every": 2.5}, True, r"options\['sync_every'\] must be a positive number \(a whole number\), got 2.5"),
    ({"sync_every": 8}, False, r"options\['sync_every'\]=8 applies to compiled solves.*pass compile=True"),
    ({"sync_every": 8, "jump_t": [0.5]}, True, r"cannot be used with options\['jump_t'\].*drop sync_every"),
    ({"sync_every": 8, "norm": lambda x: x.abs().max()}, True, r"cannot be used with options\['norm'\]"),
])
def test_bad_sync_every_is_refused_with_the_fix(options, compile, message):
    with pytest.raises(ValueError, match=message):
        solve(FIELD, _y0(), torch.tensor([0.0, 1.0], dtype=torch.float64), compile=compile, options=options)


def test_time_gradients_agree():
    def grads(sync_every):
        t = torch.tensor([0.0, 0.5, 1.2], dtype=torch.float64, requires_grad=True)
        y0 = _y0(5).requires_grad_(True)
        sol = solve(FIELD, y0, t, rtol=1e-7, atol=1e-7, gradient="symplectic", compile=True,
                    options={"sync_every": sync_every})
        return torch.autograd.grad(sol.values.sum(), (t, y0))

    (t_host, y_host), (t_device, y_device) = grads(1), grads(4)
    assert torch.equal(t_device, t_host) and torch.equal(y_device, y_host)
