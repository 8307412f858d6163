"""compile=True: every step one compiled graph, equal to the eager solve to rounding, compiled once.

The compiled graphs are cached per vector field, so the tests share a few fields (module-level).
Tests of tracing, caching and of every configuration (gradient method, tableau, tuple state, time
gradient, listeners) compile with the ``aot_eager`` backend: the same TorchDynamo graphs and
AOTAutograd backward graphs, run by ATen, without the minutes of C++ code generation that a graph per
tableau would cost. The generated code itself (TorchInductor, the default) is tested on the main
paths, in float32 and float64; its on-disk cache serves later runs.
"""

import pytest
import torch
from torch import nn

import nodeopt
from nodeopt import Exact, SymplecticAdjoint, solve
from nodeopt.gradients import observe
from nodeopt.nn import ODEBlock
from nodeopt.solvers import METHODS, compiled

from helpers.common import Field, step_options

FIELD64 = Field(dim=2, width=16, seed=3)
FIELD32 = Field(dim=2, width=16, seed=4).float()
GRADIENTS = {"backprop": "backprop", "backprop-land": nodeopt.Backprop(land=True), "checkpoint": "checkpoint",
             "onecheckpoint": "onecheckpoint", "symplectic": "symplectic",
             "symplectic-stored": SymplecticAdjoint(store_stages=True), "exact": Exact(), "adjoint": "adjoint"}


def _loss_and_grads(func, y0, t, compile, **kwargs):
    """Values and the gradients of ``Σ v·y(t_i)`` w.r.t. y0, the parameters and (when it requires grad) t."""
    y0 = y0.detach().clone().requires_grad_(True)
    t = t.detach().clone().requires_grad_(t.requires_grad)
    sol = solve(func, y0, t, compile=compile, **kwargs)
    v = torch.linspace(-1.0, 1.0, sol.values[0].numel(), dtype=y0.dtype).reshape(sol.values[0].shape)
    loss = sum((v * sol.values[i]).sum() for i in range(len(t)))
    inputs = (y0, *func.parameters()) + ((t,) if t.requires_grad else ())
    grads = torch.autograd.grad(loss, inputs)
    return sol, torch.cat([g.reshape(-1) for g in grads])


@pytest.fixture
def traced_only(monkeypatch):
    """Compile with the aot_eager backend (see the module docstring)."""
    monkeypatch.setattr(compiled, "BACKEND", "aot_eager")


def _relative(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("name", list(GRADIENTS))
def test_every_gradient_method_compiled_equals_eager_in_float64(name, traced_only):
    y0 = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)
    opts = dict(rtol=1e-8, atol=1e-8, gradient=GRADIENTS[name])
    eager, g_eager = _loss_and_grads(FIELD64, y0, t, False, **opts)
    compiled, g_compiled = _loss_and_grads(FIELD64, y0, t, True, **opts)
    assert compiled.stats.n_steps == eager.stats.n_steps > 3
    assert _relative(compiled.values, eager.values) < 1e-12
    assert _relative(g_compiled, g_eager) < 1e-10
    if name == "exact":
        return  # it times its strategies, compiled and eager apart, and may choose differently
    # the same work, counted the same way (backprop through a compiled step differentiates the whole step;
    # eagerly, the last step's first-same-as-last stage, which nothing uses, is not differentiated)
    assert (compiled.stats.nfe, compiled.stats.nfe_backward) == (eager.stats.nfe, eager.stats.nfe_backward)
    slack = 1 if name.startswith("backprop") else 0
    assert 0 <= compiled.stats.nvjp_backward - eager.stats.nvjp_backward <= slack


@pytest.mark.parametrize("name", ["backprop", "checkpoint", "symplectic"])
def test_inductor_float32_equals_eager_to_float32_rounding(name):
    y0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.0, 2.0])
    eager, g_eager = _loss_and_grads(FIELD32, y0, t, False, rtol=1e-5, atol=1e-5, gradient=name)
    compiled, g_compiled = _loss_and_grads(FIELD32, y0, t, True, rtol=1e-5, atol=1e-5, gradient=name)
    assert compiled.stats.n_steps == eager.stats.n_steps
    assert _relative(compiled.values, eager.values) < 1e-5
    assert _relative(g_compiled, g_eager) < 1e-4


@pytest.mark.parametrize("name", ["backprop", "symplectic"])
def test_inductor_float64_equals_eager_to_1e_10(name):
    y0 = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)
    eager, g_eager = _loss_and_grads(FIELD64, y0, t, False, rtol=1e-8, atol=1e-8, gradient=name)
    compiled_, g_compiled = _loss_and_grads(FIELD64, y0, t, True, rtol=1e-8, atol=1e-8, gradient=name)
    assert compiled_.stats.n_steps == eager.stats.n_steps
    assert _relative(g_compiled, g_eager) < 1e-10


def test_one_graph_serves_every_step_and_later_solves_compile_nothing(traced_only):
    field = Field(dim=2, width=16, seed=5)  # fresh: nothing cached for it yet
    y0 = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    first = solve(field, y0, torch.tensor([0.0, 6.0], dtype=torch.float64), rtol=1e-9, atol=1e-9,
                  gradient="symplectic", compile=True)
    assert first.stats.n_steps >= 30  # steps of many sizes at many times...
    assert first.stats.compiled_graphs == 1  # ...all from one graph (the forward step without a graph)
    assert first.stats.compile_seconds > 0
    first.values[-1].sum().backward()
    assert first.stats.compiled_graphs == 2  # and one for the symplectic step backward
    later = solve(field, y0 * 0.5, torch.tensor([0.5, 2.0, 9.0], dtype=torch.float64), rtol=1e-9, atol=1e-9,
                  gradient="symplectic", compile=True)
    later.values[-1].sum().backward()
    assert later.stats.n_steps >= 30
    assert later.stats.compiled_graphs == 0 and later.stats.compile_seconds == 0.0


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_tableau_compiled_forward_and_symplectic_backward_equal_eager(method, traced_only):
    y0 = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([0.0, 0.7], dtype=torch.float64)
    opts = dict(rtol=1e-6, atol=1e-6, method=method, options=step_options(method), gradient="symplectic")
    eager, g_eager = _loss_and_grads(FIELD64, y0, t, False, **opts)
    compiled, g_compiled = _loss_and_grads(FIELD64, y0, t, True, **opts)
    assert _relative(compiled.values, eager.values) < 1e-12
    assert _relative(g_compiled, g_eager) < 1e-10


class TupleField(nn.Module):
    """A CNF-shaped field on ``(z, s)``: ``dz = MLP(t, z)``, ``ds = -|dz|²`` (float64)."""

    def __init__(self):
        super().__init__()
        self.net = Field(dim=3, width=8, seed=6)

    def forward(self, t, state):
        dz = self.net(t, state[0])
        return dz, -(dz * dz).sum(dim=1, keepdim=True)


TUPLE_FIELD = TupleField()


@pytest.mark.parametrize("name", ["backprop", "checkpoint", "symplectic"])
def test_tuple_states_and_time_gradients_compile(name, traced_only):
    gen = torch.Generator().manual_seed(4)
    z0 = torch.randn(5, 3, dtype=torch.float64, generator=gen).requires_grad_(True)
    s0 = torch.zeros(5, 1, dtype=torch.float64, requires_grad=True)
    results = []
    for compile in (False, True):
        t = torch.tensor([0.0, 0.8], dtype=torch.float64, requires_grad=True)
        sol = solve(TUPLE_FIELD, (z0, s0), t, rtol=1e-8, atol=1e-8, gradient=name, compile=compile)
        loss = sol.values[0][-1].square().sum() + sol.values[1][-1].sum()
        grads = torch.autograd.grad(loss, (z0, s0, t, *TUPLE_FIELD.parameters()))
        results.append(torch.cat([g.reshape(-1) for g in grads]))
    assert results[1][-1] != 0  # the time gradient reached t[1] ...
    assert _relative(results[1], results[0]) < 1e-10  # ... and every gradient equals the eager one


@pytest.mark.parametrize("divergence", ["exact", "rademacher"])
def test_a_cnf_compiles_its_divergence_with_function_transforms(divergence, traced_only):
    from nodeopt.nn import CNF
    from nodeopt.nn.layers import SquashField
    torch.manual_seed(0)
    cnf = CNF(SquashField(2, [8], "softplus"), divergence=divergence).double()
    z = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    results = []
    for compile in (False, True):
        cnf.zero_grad()
        cnf.reset_noise()
        torch.manual_seed(1)  # the same Hutchinson noise
        sol = solve(cnf, (z, torch.zeros(6, 1, dtype=torch.float64)), torch.tensor([0.0, 1.0], dtype=torch.float64),
                    rtol=1e-6, atol=1e-6, gradient="symplectic", compile=compile)
        (sol.values[0][-1].square().sum() + sol.values[1][-1].sum()).backward()
        results.append((sol.values[1][-1].detach(), torch.cat([p.grad.reshape(-1) for p in cnf.parameters()])))
    assert _relative(results[1][0], results[0][0]) < 1e-12  # the log-density change...
    assert _relative(results[1][1], results[0][1]) < 1e-10  # ...and its gradient


def test_stage_announcements_are_the_same_compiled(traced_only):
    # SNOpt listens to the backward pass: with a listener, compiled solves run eagerly (the listener's
    # hooks read Python state) and announce the same evaluations, with the same times and weights.
    heard = []

    def hook(module, inputs, output):
        stage = observe.current_stage()
        if stage is not None:
            heard[-1].append((round(stage.t, 12), round(stage.weight, 12), round(stage.scale, 12)))

    handle = FIELD64.l1.register_forward_hook(hook)
    y0 = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    try:
        for gradient in ("backprop", "symplectic", "checkpoint"):
            for compile in (False, True):
                heard.append([])
                with observe.listening():
                    sol = solve(FIELD64, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), rtol=1e-7, atol=1e-7,
                                gradient=gradient, compile=compile)
                    sol.values[-1].sum().backward()
            assert heard[-1] == heard[-2] and len(heard[-1]) > 10, gradient
    finally:
        handle.remove()


def test_reduce_overhead_mode_runs_on_cpu():
    y0 = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    eager, g_eager = _loss_and_grads(FIELD64, y0, t, False, gradient="checkpoint")
    compiled, g_compiled = _loss_and_grads(FIELD64, y0, t, "reduce-overhead", gradient="checkpoint")
    assert _relative(g_compiled, g_eager) < 1e-10


def test_odeblock_passes_compile_on(traced_only):
    field = Field(dim=2, width=16, seed=9)  # fresh, so that its solve must compile
    block = ODEBlock(field, rtol=1e-6, atol=1e-6, gradient="symplectic", compile=True)
    x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    out = block(x)
    expected = solve(field, x, torch.tensor([0.0, 1.0], dtype=torch.float64), rtol=1e-6, atol=1e-6).values[-1]
    assert block.stats.compiled_graphs == 1 and "compile=True" in repr(block)
    assert torch.allclose(out, expected, rtol=1e-12, atol=1e-12)


class Untraceable(nn.Module):
    """A field that branches on a tensor's value in Python: TorchDynamo cannot make it one graph."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2).double()

    def forward(self, t, y):
        scale = 2.0 if float(y.abs().max()) > 10 else 1.0
        return self.lin(y) * scale


def test_a_field_that_cannot_be_compiled_names_the_eager_fallback(traced_only):
    y0 = torch.ones(2, 2, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"compile=True could not trace one dopri5 step of func .*compile=False"):
        solve(Untraceable(), y0, torch.tensor([0.0, 1.0], dtype=torch.float64), compile=True)
    # the fallback it names works
    solve(Untraceable(), y0, torch.tensor([0.0, 1.0], dtype=torch.float64), compile=False)


@pytest.mark.parametrize("bad", ["fast", 1, "max_autotune"])
def test_a_bad_compile_setting_is_refused(bad):
    with pytest.raises(ValueError, match=r"compile=.* is not a compile setting; use False .*'reduce-overhead'"):
        solve(FIELD64, torch.ones(1, 2, dtype=torch.float64), torch.tensor([0.0, 1.0]), compile=bad)


@pytest.mark.parametrize("task", ["image", "density"])
def test_nodeopt_train_compile_trains_as_the_eager_run_does(tmp_path, task, traced_only):
    import csv
    from nodeopt.cli import main
    tiny = {"image": ["--task", "image", "--dataset", "digits", "--width", "4", "--batch-size", "16"],
            "density": ["--task", "density", "--dataset", "moons", "--hidden", "8", "--batch-size", "32"]}[task]
    losses = []
    for flags in ([], ["--compile"]):  # SNOpt: its refresh iteration (the first) runs eagerly, the others compiled
        run = tmp_path / ("compiled" if flags else "eager")
        assert main(["train", *tiny, "--iterations", "3", "--eval-every", "3", "--run-dir", str(run), "--quiet",
                     "--no-plots", *flags]) == 0
        with open(run / "metrics.csv", newline="") as f:
            losses.append([float(r["loss"]) for r in csv.DictReader(f)])
    assert len(losses[1]) == 3
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
