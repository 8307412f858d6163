"""Convergence and accuracy of nodeopt's Runge–Kutta solvers against independent truths.

Truths used (float64 throughout):

* ``y' = A y`` with ``A = [[-0.1, 2], [-2, -0.1]]``: ``exp(A t) = e^{-0.1 t} R(2t)`` with ``R`` the
  rotation ``[[cos, sin], [-sin, cos]]`` (A = -0.1 I + 2 J commute). ``torch.linalg.matrix_exp`` is
  used where it is accurate (``t >= 0.3`` and ``t = 1``; checked below against the closed form).
  It is *not* used inside a single small step: in torch 2.13 (CPU, float64) it is off by up to
  ~1e-10 for arguments of norm ~0.01–0.05 (e.g. ``matrix_exp(A * 0.02)`` errs by 8e-11), which
  would swamp an interpolation error of that size; there the closed form is used.
* A nonlinear problem with a closed-form solution: ``z = g(y) = (y1, y2 + y1²)`` applied to the
  linear flow, so ``z(t) = g(exp(A t) y0)`` and ``z' = Dg(g⁻¹(z)) A g⁻¹(z)``.
* ``scipy.integrate.solve_ivp(method="DOP853", rtol=1e-13, atol=1e-13)`` for Lotka–Volterra.
* Order of convergence from theory: global error ``O(h^p)``, interpolant local error ``O(h^(q+1))``.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import nodeopt
from nodeopt.solvers import METHODS, RungeKutta, Tableau
from nodeopt.solvers.step import rk_step

DT = torch.float64
A = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=DT)
Y0 = torch.tensor([1.0, 0.5], dtype=DT)

FIXED = ("euler", "midpoint", "heun2", "heun3", "rk4", "rk38")
ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun", "tsit5")
SLOPE_TOL = 0.25


def linear(t, y):
    return y @ A.T


def exp_a(s: float) -> torch.Tensor:
    """exp(A s) in closed form."""
    c, sn = math.cos(2.0 * s), math.sin(2.0 * s)
    return math.exp(-0.1 * s) * torch.tensor([[c, sn], [-sn, c]], dtype=DT)


def g(y):
    return torch.stack([y[..., 0], y[..., 1] + y[..., 0] ** 2], dim=-1)


def g_inv(z):
    return torch.stack([z[..., 0], z[..., 1] - z[..., 0] ** 2], dim=-1)


def conjugated(t, z):
    """The linear flow seen through the nonlinear map g: a genuinely nonlinear vector field."""
    y = g_inv(z)
    v = y @ A.T
    return torch.stack([v[..., 0], v[..., 1] + 2.0 * y[..., 0] * v[..., 0]], dim=-1)


def fitted_slope(hs, errors) -> float:
    return float(np.polyfit(np.log(hs), np.log(errors), 1)[0])


def fixed_step_version(name: str) -> RungeKutta:
    """An adaptive method's propagated solution alone: its (c, a, b, order) without b_error."""
    tab = METHODS[name].tableau
    return RungeKutta(Tableau(f"{name}_fixed", tab.c, tab.a, tab.b, tab.order))


def global_errors(method, func, y0, exact_end, steps, t_end=1.0):
    t = torch.tensor([0.0, t_end], dtype=DT)
    errors = []
    for n in steps:
        sol = nodeopt.solve(func, y0, t, method=method, options={"step_size": t_end / n})
        assert sol.stats.n_steps == n  # the grid really is the one the slope is fitted on
        errors.append((sol.values[-1] - exact_end).abs().max().item())
    return errors


def test_reference_matrix_exp_agrees_with_closed_form_at_the_output_times():
    for s in (0.3, 1.0, 2.5):
        torch.testing.assert_close(torch.linalg.matrix_exp(A * s), exp_a(s), rtol=0, atol=1e-14)


# ---- fixed-step convergence --------------------------------------------------------------

# h = 1/8 ... 1/128: asymptotic for every method here and above rounding (the smallest error,
# dopri5 at h = 1/128, is 5e-13).
STEPS = (8, 16, 32, 64, 128)


@pytest.mark.parametrize("name", FIXED)
def test_fixed_method_converges_at_its_order_on_the_linear_problem(name):
    exact = torch.linalg.matrix_exp(A) @ Y0
    errors = global_errors(name, linear, Y0, exact, STEPS)
    slope = fitted_slope([1 / n for n in STEPS], errors)
    order = METHODS[name].tableau.order
    assert abs(slope - order) <= SLOPE_TOL, f"{name}: slope {slope:.3f}, order {order}, errors {errors}"


@pytest.mark.parametrize("name", [m for m in ADAPTIVE if m != "dopri8"])
def test_adaptive_tableau_used_with_fixed_steps_converges_at_its_order(name):
    exact = torch.linalg.matrix_exp(A) @ Y0
    errors = global_errors(fixed_step_version(name), linear, Y0, exact, STEPS)
    slope = fitted_slope([1 / n for n in STEPS], errors)
    order = METHODS[name].tableau.order
    assert abs(slope - order) <= SLOPE_TOL, f"{name}: slope {slope:.3f}, order {order}, errors {errors}"


def test_dopri8_used_with_fixed_steps_converges_at_eighth_order_on_a_nonlinear_problem():
    # On y' = A y only the "tall" trees matter, and dopri8's order-9 tall condition is
    # nearly met (b·A^8·1 = (1 - 1.3e-3)/9!), so the linear problem shows ~h^9 until the
    # error reaches rounding. The nonlinear problem exercises the other order-9 trees.
    steps = (3, 4, 6, 8, 12)  # errors 2e-7 ... 3e-12
    exact = g(torch.linalg.matrix_exp(A) @ Y0)
    errors = global_errors(fixed_step_version("dopri8"), conjugated, g(Y0), exact, steps)
    slope = fitted_slope([1 / n for n in steps], errors)
    assert abs(slope - 8) <= SLOPE_TOL, f"slope {slope:.3f}, errors {errors}"


def test_dopri8_used_with_fixed_steps_converges_at_least_at_eighth_order_on_the_linear_problem():
    steps = (2, 3, 4, 5, 6, 8)  # errors 5e-8 ... 3e-13
    exact = torch.linalg.matrix_exp(A) @ Y0
    errors = global_errors(fixed_step_version("dopri8"), linear, Y0, exact, steps)
    assert fitted_slope([1 / n for n in steps], errors) >= 8 - SLOPE_TOL


# ---- order of the dense output -------------------------------------------------------------

DENSE_ORDER = {"dopri5": 4, "bosh3": 3}
THETAS = tuple(np.linspace(0.1, 0.9, 9))
DENSE_STEPS = (8, 16, 32, 64, 128)


def interpolation_error_direct(name: str, h: float) -> float:
    tab = METHODS[name].tableau
    _, ks = rk_step(linear, tab, 0.0, h, h, Y0, linear(0.0, Y0))
    worst = 0.0
    for theta in THETAS:
        y = Y0 + h * sum(w * ks[j] for j, w in tab.dense_weights(theta))
        worst = max(worst, (y - exp_a(theta * h) @ Y0).abs().max().item())
    return worst


def interpolation_error_through_the_loop(name: str, h: float) -> float:
    t = torch.tensor([0.0, *(theta * h for theta in THETAS), h], dtype=DT)
    sol = nodeopt.solve(linear, Y0, t, method=name, rtol=1e-3, atol=1e-3, options={"first_step": h})
    assert (sol.stats.n_steps, sol.stats.n_rejected) == (1, 0)  # every output lies inside one step
    exact = torch.stack([exp_a(float(s)) @ Y0 for s in t[1:-1]])
    return (sol.values[1:-1] - exact).abs().max().item()


@pytest.mark.parametrize("how", [interpolation_error_direct, interpolation_error_through_the_loop],
                         ids=["rk_step", "solve"])
@pytest.mark.parametrize("name", sorted(DENSE_ORDER))
def test_dense_output_local_error_shrinks_like_h_to_the_interpolant_order_plus_one(name, how):
    errors = [how(name, 1 / n) for n in DENSE_STEPS]
    slope = fitted_slope([1 / n for n in DENSE_STEPS], errors)
    expected = DENSE_ORDER[name] + 1
    assert abs(slope - expected) <= SLOPE_TOL, f"{name}: slope {slope:.3f}, expected {expected}, errors {errors}"


# ---- accuracy at tight tolerances (the issue's case) ----------------------------------------

ISSUE_T = torch.tensor([0.0, 0.3, 1.0, 2.5], dtype=DT)
ISSUE_Y0 = torch.tensor([[1.0, 0.5]], dtype=DT)   # shape (1, 2)
ISSUE_EXACT = torch.stack([ISSUE_Y0 @ torch.linalg.matrix_exp(A * s).T for s in ISSUE_T])


@functools.lru_cache(maxsize=None)
def issue_error(library: str, method: str) -> float:
    if library == "nodeopt":
        ys = nodeopt.odeint(linear, ISSUE_Y0, ISSUE_T, rtol=1e-10, atol=1e-12, method=method)
    else:
        import torchdiffeq
        ys = torchdiffeq.odeint(linear, ISSUE_Y0, ISSUE_T, rtol=1e-10, atol=1e-12, method=method)
    assert ys.shape == (4, 1, 2)
    return (ys - ISSUE_EXACT).abs().max().item()


@pytest.mark.parametrize("method", ["dopri5", "dopri8", "bosh3", "tsit5"])
def test_tight_tolerance_outputs_match_matrix_exponential_to_1e_8(method):
    assert issue_error("nodeopt", method) < 1e-8


@pytest.mark.parametrize("method", ["dopri8", "bosh3"])
def test_tight_tolerance_outputs_are_ten_times_more_accurate_than_torchdiffeq(method):
    # Measured: dopri8 4.1e-12 vs torchdiffeq 4.4e-7; bosh3 3.1e-10 vs 9.9e-8.
    ours, theirs = issue_error("nodeopt", method), issue_error("torchdiffeq", method)
    assert ours * 10 <= theirs, f"{method}: nodeopt {ours:.2e}, torchdiffeq {theirs:.2e}"


# ---- adaptive methods tighten with the tolerance ---------------------------------------------

LV_T = (0.0, 1.0, 2.0, 3.0)
LV_U0 = (2.0, 1.0)


def lotka_volterra(t, u):
    x, y = u[..., 0], u[..., 1]
    return torch.stack([1.5 * x - x * y, -3.0 * y + x * y], dim=-1)


@functools.lru_cache(maxsize=None)
def lotka_volterra_reference() -> np.ndarray:
    def rhs(t, u):
        return [1.5 * u[0] - u[0] * u[1], -3.0 * u[1] + u[0] * u[1]]
    ref = solve_ivp(rhs, (LV_T[0], LV_T[-1]), LV_U0, method="DOP853", rtol=1e-13, atol=1e-13, t_eval=LV_T)
    assert ref.success
    return ref.y.T


# adaptive_heun takes ~35k steps at rtol=1e-8 (8 s here), so it stops at 1e-6.
RTOLS = {name: (1e-4, 1e-5, 1e-6, 1e-7, 1e-8) for name in ADAPTIVE}
RTOLS["adaptive_heun"] = (1e-4, 1e-5, 1e-6)


@pytest.mark.parametrize("name", ADAPTIVE)
def test_adaptive_error_decreases_monotonically_as_tolerance_tightens(name):
    ref = lotka_volterra_reference()
    u0, t = torch.tensor(LV_U0, dtype=DT), torch.tensor(LV_T, dtype=DT)
    errors = []
    for rtol in RTOLS[name]:
        ys = nodeopt.odeint(lotka_volterra, u0, t, rtol=rtol, atol=rtol * 1e-2, method=name)
        errors.append(float(np.abs(ys.numpy() - ref).max()))
    assert all(b < a for a, b in zip(errors, errors[1:])), f"{name}: errors {errors}"
    # Over d decades of tolerance the error must fall by at least 10^(d/2).
    decades = math.log10(RTOLS[name][0] / RTOLS[name][-1])
    assert errors[-1] <= errors[0] * 10 ** (-decades / 2), f"{name}: errors {errors}"
