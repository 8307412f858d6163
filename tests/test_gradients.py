"""The five gradient methods: exactness against backprop, gradcheck, time gradients, statistics."""

import math

import pytest
import torch
from torch import nn

import nodeopt
from helpers.common import Field, step_options
from nodeopt.solvers import METHODS

EXACT = ("onecheckpoint", "checkpoint", "symplectic")
ALL = ("backprop", "adjoint") + EXACT




def _flat_grads(field, y0, t, method, gradient, rtol=1e-6, atol=1e-8, loss_fn=None):
    sol = nodeopt.solve(field, y0, t, rtol=rtol, atol=atol, method=method, options=step_options(method),
                        gradient=gradient)
    ys = sol.values
    loss = (ys[1:] ** 2).sum() + ys[-1].sin().sum() if loss_fn is None else loss_fn(ys)
    grads = torch.autograd.grad(loss, [y0] + list(field.parameters()))
    return ys.detach(), torch.cat([g.reshape(-1) for g in grads]), sol.stats


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _against_backprop(method, reverse):
    """A field, ``y0`` and ``t`` (forward or backward in time), and Backprop(land=True)'s values and gradient."""
    field = Field()
    y0 = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    t = torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64)
    t = t.flip(0) if reverse else t
    ys_ref, g_ref, _ = _flat_grads(field, y0, t, method, nodeopt.Backprop(land=True))
    return field, y0, t, ys_ref, g_ref


@pytest.mark.parametrize("reverse", [False, True], ids=["forward-time", "backward-time"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_exact_methods_equal_backprop_to_rounding_error(method, reverse):
    field, y0, t, ys_ref, g_ref = _against_backprop(method, reverse)
    for gradient in EXACT:
        ys, g, _ = _flat_grads(field, y0, t, method, gradient)
        assert torch.equal(ys, ys_ref), gradient
        assert _rel(g, g_ref) < 1e-10, (gradient, _rel(g, g_ref))


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_continuous_adjoint_approaches_backprop_as_tolerances_tighten(method):
    field = Field()
    y0 = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    errors = []
    for tol in (1e-4, 1e-8):
        opts = {"step_size": 0.1 * tol ** 0.25} if method == "rk4" else None
        sol = nodeopt.solve(field, y0, t, rtol=tol, atol=tol, method=method, options=opts,
                            gradient=nodeopt.Backprop(land=True))
        (ref,) = torch.autograd.grad(sol.values.square().sum(), y0)
        sol = nodeopt.solve(field, y0, t, rtol=tol, atol=tol, method=method, options=opts,
                            gradient=nodeopt.Adjoint(rtol=tol, atol=tol))
        (adj,) = torch.autograd.grad(sol.values.square().sum(), y0)
        errors.append(_rel(adj, ref))
    assert errors[1] < 1e-5
    assert errors[1] < errors[0] / 10


def test_gradients_of_linear_system_match_matrix_exponential_for_every_method():
    a = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=torch.float64)

    class Linear(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(a.clone())

        def forward(self, t, y):
            return y @ self.a.T

    y0 = torch.tensor([[1.0, 0.5]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 1.5], dtype=torch.float64)
    g = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    expected = g @ torch.linalg.matrix_exp(a * 1.5)  # dL/dy0 for L = <g, y(1.5)>
    for gradient in ALL:
        ys = nodeopt.odeint(Linear(), y0, t, rtol=1e-10, atol=1e-12, gradient=gradient)
        (grad,) = torch.autograd.grad((ys[-1] * g).sum(), y0)
        assert torch.allclose(grad, expected, rtol=1e-7, atol=1e-9), gradient


@pytest.mark.parametrize("gradient", ("backprop",) + EXACT)
@pytest.mark.parametrize("method", ["midpoint", "rk4", "dopri5"])
def test_gradcheck_through_the_solve(method, gradient):
    # gradcheck's perturbations would move an adaptive solver's step sizes, so each
    # tableau runs on a fixed grid (midpoint has a zero weight, dopri5 an unused last stage).
    tab = METHODS[method].tableau
    fixed = nodeopt.RungeKutta(nodeopt.Tableau(name=tab.name, c=tab.c, a=tab.a, b=tab.b, order=tab.order))
    field = Field(width=4)
    t = torch.tensor([0.0, 0.3, 0.6], dtype=torch.float64)
    opts = {"step_size": 0.1}
    y0 = torch.randn(2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda y: nodeopt.odeint(field, y, t, method=fixed, options=opts, gradient=gradient), (y0,), eps=1e-6,
        atol=1e-7)

    def through_params(w):
        return nodeopt.odeint(lambda t_, y: torch.tanh(y @ w), y0.detach(), t, method=fixed, options=opts,
                              gradient=gradient, adjoint_params=(w,))

    w = torch.randn(2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4), requires_grad=True)
    assert torch.autograd.gradcheck(through_params, (w,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("gradient", ALL)
def test_time_gradient_matches_central_finite_differences(gradient):
    field = Field()
    y0 = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))

    def loss(t):
        ys = nodeopt.odeint(field, y0, t, rtol=1e-11, atol=1e-12, gradient=gradient)
        return (ys[1:] ** 2).sum()

    t = torch.tensor([0.1, 0.7, 1.3], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(loss(t), t)
    eps = 1e-5
    for i in range(3):
        tp, tm = t.detach().clone(), t.detach().clone()
        tp[i] += eps
        tm[i] -= eps
        with torch.no_grad():
            fd = (loss(tp) - loss(tm)) / (2 * eps)
        assert math.isclose(grad[i].item(), fd.item(), rel_tol=1e-5, abs_tol=1e-8), (i, grad[i].item(), fd.item())


class CNFLike(nn.Module):
    """A tuple state ``(z, logp)``: ``z`` follows the field, ``logp`` integrates ``-(dz·z)``."""

    def __init__(self):
        super().__init__()
        self.field = Field()

    def forward(self, t, state):
        z, logp = state
        dz = self.field(t, z)
        return dz, -(dz * z).sum(dim=1, keepdim=True)


@pytest.mark.parametrize("gradient", EXACT + ("adjoint",))
def test_tuple_state_gradients_match_backprop(gradient):
    func = CNFLike()
    z0 = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(6), requires_grad=True)
    logp0 = torch.zeros(5, 1, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)

    def grads(g):
        z, logp = nodeopt.odeint(func, (z0, logp0), t, rtol=1e-8, atol=1e-10, gradient=g)
        loss = (z[-1] ** 2).sum() + logp[-1].sum()
        return torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss, [z0] + list(func.parameters()))])

    ref = grads("backprop")
    tol = 1e-6 if gradient == "adjoint" else 1e-10
    assert _rel(grads(gradient), ref) < tol


def test_seminorm_needs_fewer_backward_steps_for_the_same_gradient():
    field = Field(width=32)
    y0 = torch.randn(8, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(7), requires_grad=True)
    t = torch.tensor([0.0, 2.0], dtype=torch.float64)
    out = {}
    for norm in (None, "seminorm"):
        opts = {"norm": norm} if norm else {}
        sol = nodeopt.solve(field, y0, t, rtol=1e-6, atol=1e-6, gradient=nodeopt.Adjoint(options=opts))
        (g,) = torch.autograd.grad(sol.values[-1].square().sum(), y0)
        out[norm] = (g, sol.stats.nvjp_backward)
    assert out["seminorm"][1] < out[None][1]
    assert _rel(out["seminorm"][0], out[None][0]) < 1e-4


@pytest.mark.parametrize("gradient", ALL)
def test_backward_statistics_count_the_evaluations_the_backward_pass_made(gradient):
    calls = {"graph": 0, "nograd": 0, "differentiated": 0}

    class Counting(Field):
        def forward(self, t, y):
            out = super().forward(t, y)
            if torch.is_grad_enabled():
                calls["graph"] += 1
                out.register_hook(lambda g: calls.__setitem__("differentiated", calls["differentiated"] + 1))
            else:
                calls["nograd"] += 1
            return out

    field = Counting()
    y0 = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(8), requires_grad=True)
    sol = nodeopt.solve(field, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), gradient=gradient)
    forward_calls = dict(calls)
    assert sol.stats.nfe == forward_calls["graph"] + forward_calls["nograd"]
    sol.values[-1].sum().backward()
    assert sol.stats.nvjp_backward == calls["differentiated"] > 0
    assert sol.stats.nfe_backward == calls["nograd"] - forward_calls["nograd"]
    if gradient != "backprop":
        assert sol.stats.nvjp_backward == calls["graph"] - forward_calls["graph"]


def test_adjoint_params_limit_which_parameters_get_gradients():
    field = Field()
    y0 = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    for gradient in EXACT + ("adjoint",):
        field.zero_grad(set_to_none=True)
        ys = nodeopt.odeint(field, y0, t, gradient=gradient, adjoint_params=(field.l2.weight,))
        ys[-1].sum().backward()
        assert field.l2.weight.grad is not None and field.l2.weight.grad.abs().sum() > 0
        assert field.l1.weight.grad is None


def test_aliases_select_their_gradient_method_and_take_torchdiffeq_arguments():
    field = Field()
    y0 = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(10), requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    ys = nodeopt.odeint(field, y0, t, gradient=nodeopt.Backprop(land=True))
    (ref,) = torch.autograd.grad(ys[-1].sum(), y0)
    for alias in (nodeopt.odeint_onecheckpoint, nodeopt.odeint_checkpoint, nodeopt.odeint_symplectic_adjoint):
        (g,) = torch.autograd.grad(alias(field, y0, t, adjoint_params=tuple(field.parameters()))[-1].sum(), y0)
        assert _rel(g, ref) < 1e-10
    ys = nodeopt.odeint_adjoint(field, y0, t, adjoint_rtol=1e-10, adjoint_atol=1e-10,
                                adjoint_options={"norm": "seminorm"})
    (g,) = torch.autograd.grad(ys[-1].sum(), y0)
    assert _rel(g, ref) < 1e-5
    with pytest.warns(UserWarning, match="adjoint_rtol"):
        nodeopt.odeint_symplectic_adjoint(field, y0, t, adjoint_rtol=1e-3)


@pytest.mark.parametrize("gradient", EXACT)
def test_exact_methods_replay_the_steps_around_a_jump_discontinuity(gradient):
    field = Field()

    def switched(t, y):  # the field changes sign at t = 0.5
        return field(t, y) * (1.0 if t < 0.5 else -1.0)

    y0 = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(11), requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    params = tuple(field.parameters())
    opts = {"jump_t": [0.5]}

    def grads(g):
        ys = nodeopt.odeint(switched, y0, t, options=opts, gradient=g, adjoint_params=params)
        return torch.cat([x.reshape(-1) for x in torch.autograd.grad(ys[-1].square().sum(), (y0,) + params)])

    assert _rel(grads(gradient), grads("backprop")) < 1e-10


def test_unknown_gradient_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="gradient='symplectik'.*symplectic"):
        nodeopt.odeint(Field(), torch.zeros(1, 2, dtype=torch.float64), torch.tensor([0.0, 1.0]),
                       gradient="symplectik")


@pytest.mark.parametrize("reverse", [False, True], ids=["forward-time", "backward-time"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_symplectic_with_stored_stages_equals_backprop_in_every_mode(method, reverse):
    # Full, partial and no stage storage: the same exact gradient; stored steps make no evaluation
    # without a graph in the backward pass, the others recompute needed_stages - 1 each.
    field, y0, t, ys_ref, g_ref = _against_backprop(method, reverse)
    _, _, plain = _flat_grads(field, y0, t, method, "symplectic")
    m = METHODS[method].tableau.needed_stages
    per_step = (m - 1) * y0.numel() * 8
    steps = plain.n_steps
    for budget, kept in ((True, steps), (3 * per_step, min(3, steps)), (max(per_step - 1, 0), 0), (False, 0)):
        ys, g, stats = _flat_grads(field, y0, t, method, nodeopt.SymplecticAdjoint(store_stages=budget))
        assert torch.equal(ys, ys_ref)
        assert _rel(g, g_ref) < 1e-10, (budget, _rel(g, g_ref))
        assert stats.nfe_backward == (steps - kept) * (m - 1), budget
        assert stats.nvjp_backward == plain.nvjp_backward


TUPLE_CASES = {"stored stages": lambda: nodeopt.SymplecticAdjoint(store_stages="1MB"),
               "3 states held": lambda: nodeopt.CheckpointedStates(states=3),
               "ACA, 5 states held": lambda: nodeopt.CheckpointedStates("checkpoint", states=5),
               "exact, memory 0": lambda: nodeopt.Exact(memory=0),
               "exact, 2kB": lambda: nodeopt.Exact(memory="2kB"), "exact": lambda: nodeopt.Exact()}


@pytest.mark.parametrize("case", sorted(TUPLE_CASES))
def test_memory_saving_modes_work_for_tuple_states_and_time_gradients(case):
    func = CNFLike()
    z0 = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    a0 = torch.zeros(3, 1, dtype=torch.float64, requires_grad=True)
    grads = []
    for gradient in (nodeopt.Backprop(land=True), TUPLE_CASES[case]()):
        t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64, requires_grad=True)
        z, a = nodeopt.odeint(func, (z0, a0), t, rtol=1e-7, atol=1e-9, gradient=gradient)
        loss = (z ** 2).sum() + a.sum()
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, [z0, a0, t, *func.parameters()])]))
    assert _rel(grads[1], grads[0]) < 1e-10


@pytest.mark.parametrize("value,match", [
    ("lots", "store_stages='lots' is not a memory size; write a number of bytes or a string such as '256MB'"),
    ("12 parsecs", "store_stages='12 parsecs' is not a memory size"),
    (-5, "store_stages=-5 is not a memory size"),
])
def test_a_bad_stage_budget_is_named_with_the_fix(value, match):
    with pytest.raises(ValueError, match=match):
        nodeopt.SymplecticAdjoint(store_stages=value)


def test_stage_budgets_read_decimal_and_binary_units():
    from nodeopt.gradients.symplectic import parse_bytes
    assert parse_bytes("256MB") == 256e6 and parse_bytes("1.5 GiB") == 1.5 * 2 ** 30 and parse_bytes(4096) == 4096


def test_a_compiled_vector_field_works_under_every_gradient_method():
    # torch.compile'd fields go through the same solver and backward passes (and Exact's memory probe,
    # which runs the field under saved-tensor hooks); the compiled kernels round differently, so the
    # comparison is at float32 precision.
    field = Field().float()
    compiled = torch.compile(field)
    y0 = torch.randn(4, 2, generator=torch.Generator().manual_seed(3), requires_grad=True)
    t = torch.tensor([0.0, 1.0])
    for gradient in ALL + (nodeopt.Exact(), nodeopt.Exact(memory=0), nodeopt.CheckpointedStates(states=3)):
        grads = []
        for func in (field, compiled):
            ys = nodeopt.odeint(func, y0, t, rtol=1e-6, atol=1e-8, gradient=gradient)
            grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(
                ys[-1].square().sum(), [y0, *field.parameters()])]))
        assert _rel(grads[1], grads[0]) < 1e-5, (gradient, _rel(grads[1], grads[0]))
