"""Behaviour of ``nodeopt.odeint`` / ``nodeopt.solve`` checked against outside truths.

Every expected value here comes from something this project did not write:
analytic solutions, ``torch.linalg.matrix_exp``, ``scipy.integrate.solve_ivp``
(DOP853 at rtol=atol=1e-12), torchdiffeq 0.2.5, central finite differences,
``torch.autograd.gradcheck``, or the textbook stability polynomial of a
Runge–Kutta method.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchdiffeq
from scipy.integrate import solve_ivp

import nodeopt

DT = torch.float64

ADAPTIVE = ["dopri5", "dopri8", "tsit5", "bosh3", "fehlberg2", "adaptive_heun"]
FIXED = ["euler", "midpoint", "heun2", "heun3", "rk4", "rk38"]


# ---------------------------------------------------------------------------
# Problems
# ---------------------------------------------------------------------------

def lotka_volterra(t, y):
    x, p = y[..., 0], y[..., 1]
    return torch.stack([1.5 * x - x * p, -3.0 * p + x * p], dim=-1)


def damped_pendulum(t, y):
    theta, omega = y[..., 0], y[..., 1]
    return torch.stack([omega, -torch.sin(theta) - 0.2 * omega], dim=-1)


PROBLEMS = {
    # name: (vector field, batch of initial conditions, final time)
    "lotka_volterra": (lotka_volterra, [[1.0, 1.0], [2.0, 0.5], [0.5, 2.0]], 5.0),
    "damped_pendulum": (damped_pendulum, [[1.0, 0.0], [2.5, 0.5], [-0.5, 1.5]], 10.0),
}

# A fixed, non-normal, non-symmetric matrix with eigenvalues of both signs of real part.
A3 = torch.tensor([[-0.5, 1.0, 0.0],
                   [-1.0, -0.5, 0.2],
                   [0.0, 0.3, 0.1]], dtype=DT)
Y3 = torch.tensor([1.0, -0.5, 0.25], dtype=DT)


def linear(t, y):
    return y @ A3.T


def expm_solution(y0, t, t0):
    """y(t) = exp(A (t - t0)) y0 for each t (rows)."""
    return torch.stack([torch.linalg.matrix_exp(A3 * (float(s) - t0)) @ y0 for s in t])


def scipy_reference(func, y0s, t_eval):
    """DOP853 at rtol=atol=1e-12, one initial condition at a time; shape (len(t), batch, dim)."""
    t_eval = np.asarray(t_eval, dtype=np.float64)

    def rhs(s, y):
        with torch.no_grad():
            return func(torch.tensor(s, dtype=DT), torch.from_numpy(y)).numpy()

    out = []
    for y0 in y0s:
        sol = solve_ivp(rhs, (t_eval[0], t_eval[-1]), np.asarray(y0, dtype=np.float64), method="DOP853",
                        rtol=1e-12, atol=1e-12, t_eval=t_eval)
        assert sol.success
        out.append(sol.y.T)
    return np.stack(out, axis=1)


@pytest.fixture(scope="module")
def references():
    refs = {}
    for name, (func, y0s, T) in PROBLEMS.items():
        t = np.linspace(0.0, T, 6)
        refs[name] = (t, scipy_reference(func, y0s, t))
    return refs


class MLPField(torch.nn.Module):
    def __init__(self, dim=2, hidden=16):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.Tanh(),
                                       torch.nn.Linear(hidden, dim))

    def forward(self, t, y):
        return self.net(y)


def make_mlp():
    torch.manual_seed(0)
    return MLPField().double()


# ---------------------------------------------------------------------------
# Accuracy against scipy's DOP853
# ---------------------------------------------------------------------------

# (loose tolerance, tight tolerance, C): the solve at rtol=atol=tol must satisfy
#     max |y - y_ref| <= C * tol
# at both tolerances. C is the global-error amplification measured on these two
# problems (given in brackets: largest err/tol seen at any tolerance 1e-4..1e-8),
# with headroom. fehlberg2's embedded estimate h(k3 - k1)/512 is tiny, so its
# global error is ~1e3 tol for a structural reason (torchdiffeq's fehlberg2 behaves
# the same; checked below); every method's error still shrinks with the tolerance.
SCIPY_CASES = {
    "dopri5": (1e-6, 1e-8, 300.0),          # [106]
    "dopri8": (1e-6, 1e-8, 10.0),           # [1.7]
    "tsit5": (1e-6, 1e-8, 150.0),           # [38]
    "bosh3": (1e-5, 1e-7, 150.0),           # [35]
    "fehlberg2": (1e-4, 1e-6, 10000.0),     # [3100]
    "adaptive_heun": (1e-3, 1e-5, 50.0),    # [9]
}


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("method", ADAPTIVE)
def test_adaptive_methods_match_scipy_dop853_within_a_multiple_of_the_tolerance(references, problem, method):
    func, y0s, _ = PROBLEMS[problem]
    t_np, ref = references[problem]
    loose, tight, C = SCIPY_CASES[method]
    errors = {}
    for tol in (loose, tight):
        ys = nodeopt.odeint(func, torch.tensor(y0s, dtype=DT), torch.tensor(t_np, dtype=DT),
                            rtol=tol, atol=tol, method=method)
        assert ys.shape == (len(t_np), len(y0s), 2)
        errors[tol] = np.abs(ys.numpy() - ref).max()
        assert errors[tol] <= C * tol, f"{method} on {problem} at tol={tol}: error {errors[tol]:.3g} > {C} * tol"
    # A 100x tighter tolerance must buy at least a 10x smaller error.
    assert errors[tight] <= errors[loose] / 10.0, errors


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("method", ["dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun"])
def test_adaptive_methods_are_no_less_accurate_than_torchdiffeq_at_the_same_tolerance(references, problem,
                                                                                    method):
    func, y0s, _ = PROBLEMS[problem]
    t_np, ref = references[problem]
    tol = SCIPY_CASES[method][0]
    y0, t = torch.tensor(y0s, dtype=DT), torch.tensor(t_np, dtype=DT)
    ours = nodeopt.odeint(func, y0, t, rtol=tol, atol=tol, method=method)
    theirs = torchdiffeq.odeint(func, y0, t, rtol=tol, atol=tol, method=method)
    err_ours = np.abs(ours.numpy() - ref).max()
    err_theirs = np.abs(theirs.numpy() - ref).max()
    assert err_ours <= 2.0 * err_theirs + tol, (err_ours, err_theirs)


# ---------------------------------------------------------------------------
# Agreement with torchdiffeq, and torchdiffeq-shaped calls
# ---------------------------------------------------------------------------

# The difference nodeopt - torchdiffeq (rtol=1e-6, atol=1e-8) is bounded by
# K * rtol * max|y|. K is set by how much each problem amplifies local errors:
# on Lotka–Volterra over [0, 5] both solvers are ~10-30 rtol*max|y| from DOP853
# (torchdiffeq's dopri5 is the worse of the two), so their difference is too;
# the pendulum and the small MLP field are well conditioned.
AGREEMENT_K = {"lotka_volterra": 50.0, "damped_pendulum": 5.0, "mlp": 5.0}


def _agreement_problem(name):
    if name == "mlp":
        return make_mlp(), torch.tensor([[1.0, 0.0], [-0.5, 0.5], [0.3, -1.2]], dtype=DT), 3.0
    func, y0s, T = PROBLEMS[name]
    return func, torch.tensor(y0s, dtype=DT), T


@pytest.mark.parametrize("problem", ["lotka_volterra", "damped_pendulum", "mlp"])
@pytest.mark.parametrize("method", ["dopri5", "bosh3"])
def test_agrees_with_torchdiffeq_within_a_few_times_the_tolerance(problem, method):
    func, y0, T = _agreement_problem(problem)
    t = torch.linspace(0.0, T, 6, dtype=DT)
    rtol, atol = 1e-6, 1e-8
    # Both are asked to step onto the output times: torchdiffeq's bosh3 otherwise
    # reads its outputs off a second-order interpolant, hundreds of rtol away from
    # the truth (its own error, not nodeopt's).
    options = {"step_t": t}
    with torch.no_grad():
        ours = nodeopt.odeint(func, y0, t, rtol=rtol, atol=atol, method=method, options=options)
        theirs = torchdiffeq.odeint(func, y0, t, rtol=rtol, atol=atol, method=method, options=options)
    assert ours.shape == theirs.shape == (6, 3, 2)
    scale = theirs.abs().max().item()
    diff = (ours - theirs).abs().max().item()
    assert diff <= AGREEMENT_K[problem] * rtol * scale, diff / (rtol * scale)


def test_torchdiffeq_shaped_call_runs_unchanged_after_swapping_the_import():
    func = make_mlp()
    y0 = torch.tensor([[0.2, -0.1], [1.0, 0.4]], dtype=DT)
    t = torch.linspace(0.0, 1.0, 5, dtype=DT)
    results = {}
    for lib in (torchdiffeq, nodeopt):
        # Exactly the shape of a torchdiffeq user's code: positional func, y0, t;
        # keyword tolerances, method and an options dict.
        results[lib.__name__] = lib.odeint(func, y0, t, rtol=1e-8, atol=1e-10, method="dopri5",
                                           options=dict(first_step=0.05, max_num_steps=1000))
        results[lib.__name__ + "_default"] = lib.odeint(func, y0, t)
    for key in ("", "_default"):
        a, b = results["nodeopt" + key], results["torchdiffeq" + key]
        assert isinstance(a, torch.Tensor) and a.shape == b.shape == (5, 2, 2) and a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_fixed_step_methods_agree_with_torchdiffeq_with_step_size_option():
    func = make_mlp()
    y0 = torch.tensor([[0.2, -0.1], [1.0, 0.4]], dtype=DT)
    t = torch.linspace(0.0, 1.0, 5, dtype=DT)
    # torchdiffeq's "rk4" is the 3/8 rule, which nodeopt names "rk38".
    for ours_name, theirs_name in [("euler", "euler"), ("midpoint", "midpoint"), ("rk38", "rk4")]:
        with torch.no_grad():
            ours = nodeopt.odeint(func, y0, t, method=ours_name, options={"step_size": 0.05})
            theirs = torchdiffeq.odeint(func, y0, t, method=theirs_name, options={"step_size": 0.05})
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------
# Backward in time
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method, kwargs, tol", [
    ("dopri5", dict(rtol=1e-10, atol=1e-12), 1e-8),
    ("rk4", dict(options={"step_size": 0.01}), 1e-7),
])
def test_decreasing_t_integrates_backward_in_time(method, kwargs, tol):
    t = torch.tensor([1.5, 1.0, 0.2, -0.5], dtype=DT)
    ys = nodeopt.odeint(linear, Y3, t, method=method, **kwargs)
    expected = expm_solution(Y3, t, 1.5)
    assert ys.shape == (4, 3)
    torch.testing.assert_close(ys, expected, rtol=0, atol=tol)


@pytest.mark.parametrize("method, kwargs, tol", [
    ("dopri5", dict(rtol=1e-10, atol=1e-12), 1e-8),
    ("tsit5", dict(rtol=1e-10, atol=1e-12), 1e-8),
    ("midpoint", dict(options={"step_size": 1e-3}), 1e-5),
])
def test_decreasing_t_passes_the_true_decreasing_time_to_a_nonautonomous_func(method, kwargs, tol):
    # y' = cos(t) y  =>  y(t) = y(t0) exp(sin t - sin t0)
    def func(t, y):
        return torch.cos(t) * y

    t = torch.tensor([2.0, 1.3, 0.0, -1.0], dtype=DT)
    y0 = torch.tensor([1.0, -2.0], dtype=DT)
    ys = nodeopt.odeint(func, y0, t, method=method, **kwargs)
    expected = y0 * torch.exp(torch.sin(t) - math.sin(2.0))[:, None]
    torch.testing.assert_close(ys, expected, rtol=0, atol=tol)


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "tsit5"])
def test_round_trip_forward_then_backward_returns_y0(method):
    func, y0s, _ = PROBLEMS["damped_pendulum"]
    y0 = torch.tensor(y0s, dtype=DT)
    rtol = 1e-8
    forward = nodeopt.odeint(func, y0, torch.tensor([0.0, 3.0], dtype=DT), rtol=rtol, atol=rtol, method=method)
    back = nodeopt.odeint(func, forward[-1], torch.tensor([3.0, 0.0], dtype=DT), rtol=rtol, atol=rtol,
                          method=method)
    torch.testing.assert_close(back[-1], y0, rtol=0, atol=200 * rtol)


# ---------------------------------------------------------------------------
# Tuple state
# ---------------------------------------------------------------------------

def test_tuple_state_z_logp_matches_analytic_solution_and_returns_a_tuple():
    A = A3
    trace = A.diagonal().sum()

    def func(t, state):
        z, logp = state
        return z @ A.T, -trace * torch.ones_like(logp)

    z0 = torch.tensor([[1.0, 0.0, 0.5], [-0.3, 0.8, 0.1], [0.0, 0.0, 1.0], [2.0, -1.0, 0.0]], dtype=DT)
    logp0 = torch.tensor([[0.1], [0.2], [-0.3], [0.0]], dtype=DT)
    t = torch.tensor([0.0, 0.4, 1.1, 2.0], dtype=DT)
    out = nodeopt.odeint(func, (z0, logp0), t, rtol=1e-10, atol=1e-12)
    assert isinstance(out, tuple) and len(out) == 2
    z, logp = out
    assert z.shape == (4, 4, 3) and logp.shape == (4, 4, 1)
    z_exact = torch.stack([z0 @ torch.linalg.matrix_exp(A * float(s)).T for s in t])
    logp_exact = logp0[None] - trace * t[:, None, None]
    torch.testing.assert_close(z, z_exact, rtol=0, atol=1e-8)
    torch.testing.assert_close(logp, logp_exact, rtol=0, atol=1e-8)


def test_tuple_state_solve_returns_tuple_values_with_fixed_method():
    def func(t, state):
        z, logp = state
        return -z, torch.ones_like(logp)

    z0 = torch.ones(2, 3, dtype=DT)
    logp0 = torch.zeros(2, dtype=DT)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=DT)
    sol = nodeopt.solve(func, (z0, logp0), t, method="rk4", options={"step_size": 0.01})
    z, logp = sol.values
    assert z.shape == (3, 2, 3) and logp.shape == (3, 2)
    torch.testing.assert_close(z, torch.exp(-t)[:, None, None].expand(3, 2, 3), rtol=0, atol=1e-9)
    torch.testing.assert_close(logp, t[:, None].expand(3, 2), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------
# float32 states and the time passed to func
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3"])
def test_float32_state_gives_float32_result_with_float32_sized_error(method):
    y0 = torch.tensor([1.0, -2.0], dtype=torch.float32)
    t = torch.linspace(0.0, 2.0, 5, dtype=torch.float32)
    ys = nodeopt.odeint(lambda t, y: -y, y0, t, rtol=1e-6, atol=1e-7, method=method)
    assert ys.dtype == torch.float32
    exact = y0.double() * torch.exp(-t.double())[:, None]
    err = (ys.double() - exact).abs().max().item()
    # A few float32 ulps of |y| <= 2 plus the tolerance, nowhere near a float64 error
    # claim and nowhere near a broken solve.
    assert err < 2e-5


@pytest.mark.parametrize("method, options", [
    ("dopri5", {}), ("bosh3", {}), ("rk4", {"step_size": 0.25}), ("euler", {}),
])
def test_func_receives_time_as_a_scalar_tensor_of_the_state_dtype(method, options):
    seen = []

    def func(t, y):
        seen.append((type(t), t.dtype, t.dim()))
        return -y

    y0 = torch.ones(3, dtype=torch.float32)
    nodeopt.odeint(func, y0, torch.tensor([0.0, 1.0]), method=method, options=options)
    assert seen and set(seen) == {(torch.Tensor, torch.float32, 0)}


@pytest.mark.parametrize("method, options", [
    ("dopri5", {"dtype": torch.float64}), ("rk4", {"step_size": 0.25, "dtype": torch.float64}),
])
def test_func_receives_time_in_options_dtype_when_given(method, options):
    seen = []

    def func(t, y):
        seen.append((t.dtype, t.dim()))
        return -y

    ys = nodeopt.odeint(func, torch.ones(3, dtype=torch.float32), torch.tensor([0.0, 1.0]), method=method,
                        options=options)
    assert ys.dtype == torch.float32
    assert seen and set(seen) == {(torch.float64, 0)}


def test_float32_time_values_seen_by_func_are_the_rounded_float64_times():
    # Time is float64 inside: the float32 tensors func receives are roundings of
    # increasing float64 times, so (within float32 rounding) they never decrease.
    seen = []

    def func(t, y):
        seen.append(float(t))
        return -y

    nodeopt.odeint(func, torch.ones(1, dtype=torch.float32), torch.tensor([0.0, 1.0]),
                   method="rk4", options={"step_size": 0.1})
    assert min(seen) == 0.0 and max(seen) == pytest.approx(1.0, abs=1e-7)
    assert all(b >= a - 1e-7 for a, b in zip(seen, seen[1:]))


# ---------------------------------------------------------------------------
# Fixed grids: exact Runge–Kutta results for y' = lam * y
# ---------------------------------------------------------------------------

LAM = -0.7


def stability_polynomial(method, z):
    """R(z) with y_{n+1} = R(h lam) y_n for explicit RK with s = p <= 4 stages: sum_{k<=p} z^k/k!."""
    order = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4, "rk38": 4}[method]
    return sum(z ** k / math.factorial(k) for k in range(order + 1))


def test_euler_with_step_size_gives_y0_times_one_plus_h_lambda_to_the_n():
    y0 = torch.tensor([1.0, 3.0], dtype=DT)
    ys = nodeopt.odeint(lambda t, y: LAM * y, y0, torch.tensor([0.0, 1.0], dtype=DT), method="euler",
                        options={"step_size": 0.1})
    torch.testing.assert_close(ys[-1], y0 * (1 + 0.1 * LAM) ** 10, rtol=1e-13, atol=0)


@pytest.mark.parametrize("method", FIXED)
def test_fixed_step_size_gives_the_analytic_runge_kutta_result(method):
    y0 = torch.tensor([1.0, -0.5], dtype=DT)
    h, n = 0.125, 16                           # exact in binary: every step has size h
    t = torch.tensor([0.0, 1.0, 2.0], dtype=DT)
    ys = nodeopt.odeint(lambda t, y: LAM * y, y0, t, method=method, options={"step_size": h})
    R = stability_polynomial(method, h * LAM)
    torch.testing.assert_close(ys[1], y0 * R ** (n // 2), rtol=1e-13, atol=0)
    torch.testing.assert_close(ys[2], y0 * R ** n, rtol=1e-13, atol=0)


@pytest.mark.parametrize("method", FIXED)
def test_grid_constructor_gives_the_analytic_runge_kutta_result_on_a_nonuniform_grid(method):
    grid = [0.0, 0.1, 0.35, 0.5, 0.8, 1.0]
    calls = []

    def constructor(func, y0, t):
        calls.append(t)
        return torch.tensor(grid, dtype=DT)

    y0 = torch.tensor([2.0], dtype=DT)
    t = torch.tensor([0.0, 1.0], dtype=DT)
    ys = nodeopt.odeint(lambda t, y: LAM * y, y0, t, method=method, options={"grid_constructor": constructor})
    assert len(calls) == 1 and torch.equal(calls[0], t)
    expected = y0 * math.prod(stability_polynomial(method, (b - a) * LAM) for a, b in zip(grid, grid[1:]))
    torch.testing.assert_close(ys[-1], expected, rtol=1e-13, atol=0)


@pytest.mark.parametrize("method", ["euler", "heun3", "rk4"])
def test_output_times_off_the_step_grid_are_added_to_the_grid(method):
    # step_size 0.25 on [0, 1] with outputs at 0.3 and 0.6: merged grid
    # 0, 0.25, 0.3, 0.5, 0.6, 0.75, 1.0.
    y0 = torch.tensor([1.0], dtype=DT)
    t = torch.tensor([0.0, 0.3, 0.6, 1.0], dtype=DT)
    ys = nodeopt.odeint(lambda t, y: LAM * y, y0, t, method=method, options={"step_size": 0.25})
    merged = [0.0, 0.25, 0.3, 0.5, 0.6, 0.75, 1.0]
    R = [stability_polynomial(method, (b - a) * LAM) for a, b in zip(merged, merged[1:])]
    torch.testing.assert_close(ys[1, 0], torch.tensor(R[0] * R[1], dtype=DT), rtol=1e-13, atol=0)
    torch.testing.assert_close(ys[2, 0], torch.tensor(math.prod(R[:4]), dtype=DT), rtol=1e-13, atol=0)
    torch.testing.assert_close(ys[3, 0], torch.tensor(math.prod(R), dtype=DT), rtol=1e-13, atol=0)


def test_grid_constructor_grid_is_merged_with_output_times():
    y0 = torch.tensor([1.0], dtype=DT)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=DT)
    ys = nodeopt.odeint(lambda t, y: LAM * y, y0, t, method="euler",
                        options={"grid_constructor": lambda f, y, tt: torch.tensor([0.0, 0.5, 1.0], dtype=DT)})
    torch.testing.assert_close(ys[1, 0], torch.tensor(1 + 0.3 * LAM, dtype=DT), rtol=1e-14, atol=0)
    expected = (1 + 0.3 * LAM) * (1 + 0.2 * LAM) * (1 + 0.5 * LAM)
    torch.testing.assert_close(ys[2, 0], torch.tensor(expected, dtype=DT), rtol=1e-14, atol=0)


def test_fixed_method_without_options_steps_from_output_time_to_output_time():
    t = torch.tensor([0.0, 0.5, 0.75, 2.0], dtype=DT)
    ys = nodeopt.odeint(lambda t, y: LAM * y, torch.tensor([1.0], dtype=DT), t, method="euler")
    expected = torch.tensor([1.0, 1 + 0.5 * LAM, (1 + 0.5 * LAM) * (1 + 0.25 * LAM),
                             (1 + 0.5 * LAM) * (1 + 0.25 * LAM) * (1 + 1.25 * LAM)], dtype=DT)
    torch.testing.assert_close(ys[:, 0], expected, rtol=1e-14, atol=0)


# ---------------------------------------------------------------------------
# step_t and jump_t
# ---------------------------------------------------------------------------

STEP_TIMES = [0.3, 1.234567, 1.7]


def _record_times(func):
    times = []

    def wrapped(t, y):
        times.append(float(t))
        return func(t, y)

    return wrapped, times


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "tsit5"])
def test_step_t_makes_the_solver_step_exactly_onto_those_times(method):
    y0 = torch.tensor([1.0, 0.0], dtype=DT)
    t = torch.tensor([0.0, 2.0], dtype=DT)
    f_plain, plain_times = _record_times(damped_pendulum)
    nodeopt.odeint(f_plain, y0, t, rtol=1e-6, atol=1e-8, method=method)
    assert not set(STEP_TIMES) & set(plain_times)   # the times are not hit by chance
    f_step, step_times = _record_times(damped_pendulum)
    ys = nodeopt.odeint(f_step, y0, t, rtol=1e-6, atol=1e-8, method=method,
                        options={"step_t": torch.tensor(STEP_TIMES, dtype=DT)})
    # A step ending at s evaluates func at s itself (the last stage / FSAL evaluation).
    assert set(STEP_TIMES) <= set(step_times)
    ref = scipy_reference(damped_pendulum, [[1.0, 0.0]], [0.0, 2.0])[:, 0]
    np.testing.assert_allclose(ys.numpy(), ref, atol=1e-4)


def test_step_t_with_decreasing_t_steps_onto_those_times():
    y0 = torch.tensor([1.0, 0.0], dtype=DT)
    f, times = _record_times(damped_pendulum)
    nodeopt.odeint(f, y0, torch.tensor([2.0, 0.0], dtype=DT), rtol=1e-6, atol=1e-8,
                   options={"step_t": STEP_TIMES})
    assert set(STEP_TIMES) <= set(times)


def _jump_rhs(t, y):
    return -y if t < 1.0 else y


def _jump_exact(s):
    return math.exp(-s) if s < 1.0 else math.exp(-1.0) * math.exp(s - 1.0)


JUMP_T = torch.tensor([0.0, 0.5, 1.5, 2.0], dtype=DT)


@pytest.mark.parametrize("rtol", [1e-4, 1e-6, 1e-8])
def test_jump_t_solves_a_discontinuous_rhs_accurately(rtol):
    sol = nodeopt.solve(_jump_rhs, torch.tensor([1.0], dtype=DT), JUMP_T, rtol=rtol, atol=rtol * 1e-2,
                        options={"jump_t": [1.0]})
    exact = torch.tensor([_jump_exact(s) for s in JUMP_T.tolist()], dtype=DT)
    rel = ((sol.values[:, 0] - exact).abs() / exact).max().item()
    assert rel < 10 * rtol


@pytest.mark.parametrize("rtol", [1e-4, 1e-6, 1e-8])
def test_jump_t_needs_fewer_rejected_steps_than_without_it(rtol):
    stats = {}
    for key, options in (("without", {}), ("with", {"jump_t": [1.0]})):
        stats[key] = nodeopt.solve(_jump_rhs, torch.tensor([1.0], dtype=DT), JUMP_T, rtol=rtol,
                                   atol=rtol * 1e-2, options=options).stats
    assert stats["with"].n_rejected < stats["without"].n_rejected, stats


@pytest.mark.parametrize("rtol", [1e-4, 1e-6, 1e-8])
def test_jump_t_step_ending_on_the_jump_sees_only_the_left_side(rtol):
    # With the jump declared, the problem is two smooth exponential pieces; a
    # solver that steps onto t=1 using f's left limit there (torchdiffeq
    # evaluates the last stage at nextafter(t1, -inf)) has no reason to reject
    # more than a couple of steps. Each piece on its own, y' = -y on [0, 1] and
    # y' = y on [1, 2], is solved with no rejection at all at these tolerances.
    sol = nodeopt.solve(_jump_rhs, torch.tensor([1.0], dtype=DT), JUMP_T, rtol=rtol, atol=rtol * 1e-2,
                        options={"jump_t": [1.0]})
    assert sol.stats.n_rejected <= 3, sol.stats


def test_jump_t_costs_no_more_than_twice_torchdiffeq():
    rtol, atol = 1e-8, 1e-10
    sol = nodeopt.solve(_jump_rhs, torch.tensor([1.0], dtype=DT), JUMP_T, rtol=rtol, atol=atol,
                        options={"jump_t": [1.0]})
    f, times = _record_times(_jump_rhs)
    torchdiffeq.odeint(f, torch.tensor([1.0], dtype=DT), JUMP_T, rtol=rtol, atol=atol,
                       options={"jump_t": torch.tensor([1.0], dtype=DT)})
    assert sol.stats.nfe <= 2 * len(times), (sol.stats.nfe, len(times))


# ---------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method, options", [
    ("dopri5", {}), ("bosh3", {}), ("tsit5", {}), ("dopri8", {}), ("fehlberg2", {}),
    ("dopri5", {"first_step": 0.01}), ("dopri5", {"jump_t": [0.77]}), ("dopri5", {"controller": "i"}),
    ("rk4", {"step_size": 0.1}), ("euler", {}),
])
def test_stats_nfe_equals_the_number_of_calls_to_func(method, options):
    f, times = _record_times(lotka_volterra)
    y0 = torch.tensor([[1.0, 1.0], [2.0, 0.5]], dtype=DT)
    sol = nodeopt.solve(f, y0, torch.linspace(0, 2, 4, dtype=DT), rtol=1e-6, atol=1e-8, method=method,
                        options=options)
    assert sol.stats.nfe == len(times) > 0


def test_stats_nfe_counts_calls_when_t_requires_grad():
    f, times = _record_times(lotka_volterra)
    t = torch.linspace(0, 2, 4, dtype=DT).requires_grad_()
    sol = nodeopt.solve(f, torch.tensor([1.0, 1.0], dtype=DT), t, rtol=1e-6, atol=1e-8)
    assert sol.stats.nfe == len(times) > 0


def test_stats_count_steps_of_a_fixed_grid():
    sol = nodeopt.solve(lambda t, y: -y, torch.ones(1, dtype=DT), torch.tensor([0.0, 0.3, 1.0], dtype=DT),
                        method="rk4", options={"step_size": 0.25})
    # merged grid 0, .25, .3, .5, .75, 1: five steps of four stages each
    assert sol.stats.n_steps == 5 and sol.stats.n_rejected == 0 and sol.stats.nfe == 20


def test_stats_accepted_plus_rejected_steps_account_for_the_calls_of_dopri5():
    # dopri5 is first-same-as-last: one call for f(t0), one for the Euler probe of
    # Hairer's starting-step estimate, then six new stages per attempted step.
    f, times = _record_times(damped_pendulum)
    sol = nodeopt.solve(f, torch.tensor([2.5, 0.5], dtype=DT), torch.tensor([0.0, 10.0], dtype=DT),
                        rtol=1e-7, atol=1e-9)
    assert len(times) == 2 + 6 * (sol.stats.n_steps + sol.stats.n_rejected)
    assert sol.stats.n_steps > 10


# ---------------------------------------------------------------------------
# The integral controller against torchdiffeq's step sequence
# ---------------------------------------------------------------------------

# With the integral controller, nodeopt's dopri5 uses torchdiffeq 0.2.5's rule, its
# starting step and its embedded error estimate, so it takes the same steps: the
# counts match exactly on these problems (measured at every tolerance below).
@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("tol", [1e-5, 1e-6, 1e-7])
def test_integral_controller_takes_torchdiffeq_dopri5_steps(problem, tol):
    func, y0s, T = PROBLEMS[problem]
    y0, t = torch.tensor(y0s, dtype=DT), torch.linspace(0.0, T, 6, dtype=DT)
    sol = nodeopt.solve(func, y0, t, rtol=tol, atol=tol, method="dopri5", options={"controller": "i"})
    f, times = _record_times(func)
    torchdiffeq.odeint(f, y0, t, rtol=tol, atol=tol, method="dopri5")
    assert sol.stats.nfe == len(times)


def test_integral_controller_object_is_accepted_like_the_name():
    func, y0s, T = PROBLEMS["damped_pendulum"]
    y0, t = torch.tensor(y0s, dtype=DT), torch.tensor([0.0, T], dtype=DT)
    by_name = nodeopt.solve(func, y0, t, rtol=1e-6, atol=1e-6, options={"controller": "i"})
    by_object = nodeopt.solve(func, y0, t, rtol=1e-6, atol=1e-6, options={"controller": nodeopt.IController()})
    assert by_name.stats.nfe == by_object.stats.nfe
    ref = scipy_reference(func, y0s, [0.0, T])
    np.testing.assert_allclose(by_object.values.numpy(), ref, atol=1e-4)


# ---------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------

class TinyField(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = torch.nn.Linear(2, 3)
        self.l2 = torch.nn.Linear(3, 2)

    def forward(self, t, y):
        return self.l2(torch.tanh(self.l1(y))) + 0.1 * torch.sin(t) * y


GRAD_METHODS = [("dopri5", dict(rtol=1e-10, atol=1e-10)), ("rk4", dict(options={"step_size": 0.1}))]


@pytest.mark.parametrize("method, kwargs", GRAD_METHODS)
def test_gradcheck_through_odeint_with_respect_to_y0(method, kwargs):
    torch.manual_seed(1)
    func = TinyField().double()
    t = torch.tensor([0.0, 0.5, 1.0], dtype=DT)
    y0 = torch.tensor([[0.3, -0.4], [1.0, 0.2]], dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(lambda y: nodeopt.odeint(func, y, t, method=method, **kwargs), (y0,))


@pytest.mark.parametrize("method, kwargs", GRAD_METHODS)
def test_gradcheck_through_odeint_with_respect_to_module_parameters(method, kwargs):
    torch.manual_seed(2)
    func = TinyField().double()
    names = [n for n, _ in func.named_parameters()]
    t = torch.tensor([0.0, 0.5, 1.0], dtype=DT)
    y0 = torch.tensor([0.3, -0.4], dtype=DT)

    def run(*params):
        p = dict(zip(names, params))
        return nodeopt.odeint(lambda s, y: torch.func.functional_call(func, p, (s, y)), y0, t, method=method,
                              **kwargs)

    params = tuple(p.detach().clone().requires_grad_() for p in func.parameters())
    assert torch.autograd.gradcheck(run, params)


def test_backward_reaches_parameters_of_an_nn_module_func():
    torch.manual_seed(3)
    func = TinyField().double()
    y0 = torch.tensor([0.3, -0.4], dtype=DT)
    t = torch.tensor([0.0, 1.0], dtype=DT)
    nodeopt.odeint(func, y0, t, rtol=1e-10, atol=1e-10)[-1].sum().backward()
    weight = func.l2.weight
    grad = weight.grad.clone()
    eps = 1e-6
    fd = torch.zeros_like(weight)
    with torch.no_grad():
        for idx in np.ndindex(*weight.shape):
            orig = weight[idx].item()
            weight[idx] = orig + eps
            up = nodeopt.odeint(func, y0, t, rtol=1e-10, atol=1e-10)[-1].sum()
            weight[idx] = orig - eps
            down = nodeopt.odeint(func, y0, t, rtol=1e-10, atol=1e-10)[-1].sum()
            weight[idx] = orig
            fd[idx] = (up - down) / (2 * eps)
    torch.testing.assert_close(grad, fd, rtol=1e-5, atol=1e-8)


def test_gradient_wrt_y0_for_linear_system_is_matrix_exponential_transpose_times_g():
    t = torch.tensor([0.0, 0.7, 1.6], dtype=DT)
    y0 = Y3.clone().requires_grad_()
    g1 = torch.tensor([0.5, -1.0, 2.0], dtype=DT)
    g2 = torch.tensor([1.0, 0.25, -0.5], dtype=DT)
    ys = nodeopt.odeint(linear, y0, t, rtol=1e-11, atol=1e-12)
    ((ys[1] * g1).sum() + (ys[2] * g2).sum()).backward()
    expected = torch.linalg.matrix_exp(A3 * 0.7).T @ g1 + torch.linalg.matrix_exp(A3 * 1.6).T @ g2
    torch.testing.assert_close(y0.grad, expected, rtol=1e-8, atol=1e-10)


# Loss on the solution of the damped pendulum with a time-dependent forcing.
def _forced_pendulum(t, y):
    theta, omega = y[..., 0], y[..., 1]
    return torch.stack([omega, -torch.sin(theta) - 0.2 * omega + 0.3 * torch.cos(t)], dim=-1)


@pytest.mark.parametrize("shape", ["vector", "batch"])
@pytest.mark.parametrize("direction", ["increasing", "decreasing"])
def test_gradient_wrt_first_and_last_time_matches_central_finite_difference(shape, direction):
    y0 = torch.tensor([1.0, 0.5], dtype=DT) if shape == "vector" else \
        torch.tensor([[1.0, 0.5], [-0.3, 1.2]], dtype=DT)
    w = torch.linspace(-1.0, 1.5, y0.numel(), dtype=DT).reshape(y0.shape)
    times = [0.2, 0.9, 1.7] if direction == "increasing" else [1.7, 0.9, 0.2]

    def loss(t):
        ys = nodeopt.odeint(_forced_pendulum, y0, t, rtol=1e-10, atol=1e-10)
        return (ys[1:] * w).sum() + (ys[-1] ** 2).sum()

    t = torch.tensor(times, dtype=DT, requires_grad=True)
    loss(t).backward()
    eps = 1e-5
    for i in (0, len(times) - 1):
        tp, tm = torch.tensor(times, dtype=DT), torch.tensor(times, dtype=DT)
        tp[i] += eps
        tm[i] -= eps
        with torch.no_grad():
            fd = ((loss(tp) - loss(tm)) / (2 * eps)).item()
        rel = abs(t.grad[i].item() - fd) / abs(fd)
        assert rel < 1e-5, (i, t.grad[i].item(), fd)


def test_gradient_wrt_intermediate_time_is_inner_product_with_f():
    # dL/dt_i = <dL/dy_i, f(t_i, y_i)>; for y' = A y, L = <g, y(t_1)> this is <g, A y(t_1)>.
    t = torch.tensor([0.0, 0.8, 1.5], dtype=DT, requires_grad=True)
    g = torch.tensor([0.5, -1.0, 2.0], dtype=DT)
    ys = nodeopt.odeint(linear, Y3, t, rtol=1e-11, atol=1e-12)
    (ys[1] * g).sum().backward()
    y1 = torch.linalg.matrix_exp(A3 * 0.8) @ Y3
    expected = torch.stack([-(torch.linalg.matrix_exp(A3 * 0.8).T @ g) @ (A3 @ Y3),
                            g @ (A3 @ y1), torch.tensor(0.0, dtype=DT)])
    torch.testing.assert_close(t.grad, expected, rtol=1e-8, atol=1e-10)
