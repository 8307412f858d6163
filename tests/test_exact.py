"""Checkpointed step states and ``Exact(memory=...)``: exact gradients at any memory budget.

Truths: ``Backprop(land=True)`` (autograd through the same discrete solve, float64), the
recorded states of a full trajectory (bit for bit), and saved-tensor sizes counted by
hand from the layers' shapes.
"""

import functools

import pytest
import torch
from torch import nn

import nodeopt
from helpers import common
from helpers.common import step_options
from nodeopt.gradients.exact import MIN_STATES, PLANNED_FRACTION, StepCosts
from nodeopt.gradients.memory import saved_tensor_bytes
from nodeopt.gradients.replay import BackwardContext
from nodeopt.gradients.states import StateWalk, ThinnedTrajectory
from nodeopt.solvers import METHODS
from nodeopt.solvers.problem import make_problem
from nodeopt.solvers.solution import Stats

RTOL, ATOL = 1e-5, 1e-7
TOLS = {"adaptive_heun": (1e-3, 1e-5)}  # so that every adaptive tableau takes tens of steps, not hundreds
Field = functools.partial(common.Field, width=8)  # (small: the exactness matrix runs every tableau)


def _solve_grads(field, y0, t, method, gradient, options=None):
    rtol, atol = TOLS.get(method, (RTOL, ATOL))
    sol = nodeopt.solve(field, y0, t, rtol=rtol, atol=atol, method=method,
                        options=options if options is not None else step_options(method), gradient=gradient)
    loss = (sol.values[1:] ** 2).sum() + sol.values[-1].sin().sum()
    grads = torch.autograd.grad(loss, [y0] + list(field.parameters()))
    return sol.values.detach(), torch.cat([g.reshape(-1) for g in grads]), sol.stats


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _setup(method, reverse=False, t_end=1.0):
    field = Field()
    y0 = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    t = torch.tensor([0.0, 0.4, t_end], dtype=torch.float64)
    t = t.flip(0) if reverse else t
    ys, g, stats = _solve_grads(field, y0, t, method, nodeopt.Backprop(land=True))
    return field, y0, t, ys, g, stats


# ---- checkpointed step states ------------------------------------------------------------


@pytest.mark.parametrize("options", [None, {"jump_t": [0.45]}], ids=["plain", "jump_t"])
@pytest.mark.parametrize("method", ["dopri5", "bosh3", "rk4"])
def test_recomputed_step_states_equal_the_recorded_ones_bit_for_bit(method, options):
    field = Field()
    y0 = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    opts = options if METHODS[method].tableau.adaptive else step_options(method)
    problem = make_problem(field, y0, t, RTOL, ATOL, method, opts)
    with torch.no_grad():
        full = problem.run(record=True).trajectory
        ctx = BackwardContext(problem, (), Stats())
        for capacity in (1, 2, 3, 4, 5, 9, 40):
            thinned = problem.run(record=ThinnedTrajectory(capacity=capacity)).trajectory
            assert thinned.hs == full.hs and thinned.edges == full.edges and thinned.outputs == full.outputs
            assert thinned.kept <= max(capacity, 1) and thinned.ys[0] is not None
            walk = StateWalk(thinned, lambda n, y: ctx.advance(thinned, n, y))
            seen = []
            for n, y in walk:
                assert torch.equal(y, full.ys[n]), (capacity, n)
                assert walk.held <= max(capacity, 2), (capacity, walk.held)
                seen.append(n)
            assert seen == list(reversed(range(len(full))))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_checkpointed_states_equal_backprop_for_every_tableau(method):
    field, y0, t, ys_ref, g_ref, ref = _setup(method)
    n = ref.n_steps
    # Several segment counts: two levels (every state kept down to a few), and the recursive cases.
    for states in sorted({max(n // 2, 1), 8, 4, 3}):
        for inner in ("symplectic", "checkpoint", nodeopt.SymplecticAdjoint(store_stages=True)):
            ys, g, stats = _solve_grads(field, y0, t, method, nodeopt.CheckpointedStates(inner, states=states))
            assert torch.equal(ys, ys_ref)
            assert _rel(g, g_ref) < 1e-10, (states, inner, _rel(g, g_ref))
            if states < n:
                assert stats.nfe_backward > 0  # the dropped states were recomputed


# ---- one network use, measured ---------------------------------------------------------------


def test_one_network_use_counts_the_input_and_the_tanh_output():
    lin = nn.Linear(5, 7).double()
    x = torch.randn(11, 5, dtype=torch.float64, requires_grad=True)
    used, out = saved_tensor_bytes(lambda: torch.tanh(lin(x)), exclude=lin.parameters())
    # Linear saves its input (for the weight gradient) and its weight (excluded); tanh its output.
    assert used == 11 * 5 * 8 + 11 * 7 * 8
    assert out.shape == (11, 7)


def test_a_tensor_saved_twice_counts_once_and_parameters_not_at_all():
    l1, l2 = nn.Linear(4, 6), nn.Linear(6, 3)
    x = torch.randn(9, 4, requires_grad=True)
    params = list(l1.parameters()) + list(l2.parameters())
    used, _ = saved_tensor_bytes(lambda: torch.tanh(l2(torch.tanh(l1(x)))), exclude=params)
    # x; the inner tanh output (saved by tanh and again, as its input, by l2); the outer tanh output.
    assert used == 9 * 4 * 4 + 9 * 6 * 4 + 9 * 3 * 4
    with_params, _ = saved_tensor_bytes(lambda: l1(x))
    assert with_params == 9 * 4 * 4 + 6 * 4 * 4  # without exclude, l1's weight is counted too


def test_the_step_costs_of_a_solve_measure_the_field_once():
    class Tanh(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3).double()

        def forward(self, t, y):
            return torch.tanh(self.lin(y))

    func = Tanh()
    y0 = torch.randn(10, 3, dtype=torch.float64)
    problem = make_problem(func, y0, torch.tensor([0.0, 1.0]), 1e-6, 1e-8, "dopri5", None)
    costs = StepCosts.measure(problem, tuple(func.parameters()))
    assert costs.use == 10 * 3 * 8 + 10 * 3 * 8 and costs.state == 10 * 3 * 8
    assert costs.params == (9 + 3) * 8 and costs.needed == 6 and costs.stages == 7
    assert problem.dynamics.nfe == 1


# ---- Exact picks the fastest strategy that fits ------------------------------------------------


def _costs(field, y0, t, method):
    rtol, atol = TOLS.get(method, (RTOL, ATOL))
    problem = make_problem(field, y0.detach(), t, rtol, atol, method, step_options(method))
    return StepCosts.measure(problem, tuple(field.parameters()))


@pytest.mark.parametrize("method", ["dopri5", "rk4", "midpoint"])
def test_exact_picks_each_strategy_at_a_budget_that_forces_it(method):
    field, y0, t, ys_ref, g_ref, ref = _setup(method, t_end=10.0)  # enough steps to thin (8 states are kept)
    c = _costs(field, y0, t, method)
    states = ref.n_steps * c.state
    assert ref.n_steps > MIN_STATES
    planned = {
        "symplectic-stored": 10 ** 9,
        "symplectic-stored+checkpoint": states + c.aca + 2 * c.stage_bytes,  # stages for two steps only
        "checkpoint": states + c.aca,
        "symplectic": states + c.symplectic,
        "symplectic; step states checkpointed": MIN_STATES * c.state + c.symplectic,
    }
    budgets = {k: v / PLANNED_FRACTION for k, v in planned.items()}  # Exact plans tensors for that part of it
    assert c.symplectic + c.stage_bytes < c.aca  # so that the "symplectic" budget leaves no room for ACA
    for strategy, budget in budgets.items():
        ys, g, stats = _solve_grads(field, y0, t, method, nodeopt.Exact(memory=budget, choose="fixed"))
        assert stats.strategy.split(" (1 in")[0] == strategy, (budget, stats.strategy)
        assert torch.equal(ys, ys_ref)
        assert _rel(g, g_ref) < 1e-10, (strategy, _rel(g, g_ref))
        assert 0 < stats.estimated_peak_bytes <= budget, strategy
    stored = nodeopt.solve(field, y0, t, method=method, options=step_options(method),
                           gradient=nodeopt.Exact(choose="fixed"))
    assert stored.stats.strategy == "symplectic-stored"  # before the backward pass: the plan


@pytest.mark.parametrize("reverse", [False, True], ids=["forward-time", "backward-time"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_exact_equals_backprop_for_every_tableau_at_every_budget(method, reverse):
    field, y0, t, ys_ref, g_ref, ref = _setup(method, reverse)
    c = _costs(field, y0, t, method)
    states = ref.n_steps * c.state
    for budget in (10 ** 9, states + c.aca + c.stage_bytes, states + c.symplectic, states // 3 + c.symplectic, 0):
        ys, g, stats = _solve_grads(field, y0, t, method, nodeopt.Exact(memory=budget))
        assert torch.equal(ys, ys_ref)
        assert _rel(g, g_ref) < 1e-10, (budget, stats.strategy, _rel(g, g_ref))


# ---- Exact ranks the strategies by measured time --------------------------------------------------


def test_exact_measures_each_strategy_once_per_field_and_shape():
    field, y0, t, ys_ref, g_ref, ref = _setup("dopri5", t_end=3.0)
    ys, g, first = _solve_grads(field, y0, t, "dopri5", nodeopt.Exact())
    assert "measured on this solve" in first.strategy
    assert all(f"{name} " in first.strategy for name in ("symplectic-stored", "checkpoint", "symplectic"))
    assert _rel(g, g_ref) < 1e-10
    ys, g, later = _solve_grads(field, y0, t, "dopri5", nodeopt.Exact())
    assert "measured on an earlier solve" in later.strategy and _rel(g, g_ref) < 1e-10
    # the measurement's evaluations are not the solve's: both report the same work
    assert (first.nfe, first.nfe_backward, first.nvjp_backward) == (later.nfe, later.nfe_backward, later.nvjp_backward)
    _, _, other_shape = _solve_grads(field, y0[:2].detach().requires_grad_(True), t, "dopri5", nodeopt.Exact())
    assert "measured on this solve" in other_shape.strategy


@pytest.mark.parametrize("fastest", ["symplectic-stored", "checkpoint", "symplectic"])
def test_exact_runs_the_fastest_measured_strategy_that_fits(fastest):
    from nodeopt.gradients.exact import _MEASURED
    field, y0, t, ys_ref, g_ref, ref = _setup("dopri5", t_end=3.0)
    problem = make_problem(field, y0.detach(), t, RTOL, ATOL, "dopri5", None)
    order = [fastest] + [k for k in ("symplectic-stored", "checkpoint", "symplectic") if k != fastest]
    _MEASURED._table(field)[_MEASURED.key(problem)] = {k: 1e-3 * (i + 1) for i, k in enumerate(order)}
    ys, g, stats = _solve_grads(field, y0, t, "dopri5", nodeopt.Exact())  # every strategy fits
    assert stats.strategy.split(";")[0] == fastest
    assert _rel(g, g_ref) < 1e-10
    # with room for neither stored stages nor an ACA step, the recomputing symplectic step runs whatever the times
    c = _costs(field, y0, t, "dopri5")
    tight = (ref.n_steps * c.state + c.symplectic) / PLANNED_FRACTION
    ys, g, stats = _solve_grads(field, y0, t, "dopri5", nodeopt.Exact(memory=tight))
    assert stats.strategy.split(";")[0] == "symplectic" and _rel(g, g_ref) < 1e-10


def test_a_bad_way_to_choose_is_refused():
    with pytest.raises(ValueError, match=r"choose='fastest' is not a way to choose; use 'measured' .* or 'fixed'"):
        nodeopt.Exact(choose="fastest")


def test_exact_by_name_uses_half_the_free_memory(monkeypatch):
    import nodeopt.gradients.exact as exact
    monkeypatch.setattr(exact, "free_bytes", lambda device: 2.0e6)
    problem = make_problem(Field(), torch.zeros(3, 2, dtype=torch.float64), torch.tensor([0.0, 1.0]), RTOL, ATOL,
                           None, None)
    assert nodeopt.gradients.get_gradient("exact").budget(problem) == 1.0e6
    assert nodeopt.Exact("3MB").budget(problem) == 3e6
    assert exact.free_bytes.__module__ != "nodeopt.gradients.memory"  # (the patch took)


def test_free_memory_is_read_from_the_machine():
    from nodeopt.gradients.memory import free_bytes
    assert free_bytes(torch.device("cpu")) > 0


def test_every_method_reports_its_name_as_its_strategy():
    field = Field()
    y0 = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    for name in ("backprop", "checkpoint", "symplectic"):
        sol = nodeopt.solve(field, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), gradient=name)
        assert sol.stats.strategy == name and sol.stats.estimated_peak_bytes == 0


@pytest.mark.parametrize("value,match", [
    ("lots", "memory='lots' is not a memory size; write a number of bytes or a string such as '256MB'"),
    ("12 parsecs", "memory='12 parsecs' is not a memory size"),
    (-1, "memory=-1 is not a memory size"),
    (True, "memory=True is not a memory size"),
    (float("nan"), "memory=nan is not a memory size"),
])
def test_a_bad_memory_budget_is_named_with_the_fix(value, match):
    with pytest.raises(ValueError, match=match):
        nodeopt.Exact(memory=value)


@pytest.mark.parametrize("kwargs,match", [
    ({"states": 0}, r"states=0 must be a whole number ≥ 1 \(the most step states held at once\), e.g. states=64"),
    ({"states": 2.5}, "states=2.5 must be a whole number"),
    ({"method": "adjoint"}, "method='adjoint' does not pull the gradient back one recorded step at a time; use "
                            "'symplectic', 'checkpoint'"),
])
def test_bad_checkpointed_states_arguments_are_named_with_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nodeopt.CheckpointedStates(**kwargs)
