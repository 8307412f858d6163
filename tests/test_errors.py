"""Bad input and failing solves: each gives a clear error, promptly, and none hangs."""

from __future__ import annotations

import threading
import time

import pytest
import torch

import nodeopt

DT = torch.float64
Y0 = torch.tensor([1.0, 2.0], dtype=DT)
T = torch.tensor([0.0, 1.0], dtype=DT)


def decay(t, y):
    return -y


def raises_within(seconds, fn):
    """Run ``fn`` in a daemon thread; return the exception it raised, failing if it takes too long."""
    box = {}

    def target():
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["exc"] = exc

    thread = threading.Thread(target=target, daemon=True)
    start = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"the solve did not finish within {seconds} s"
    assert "exc" in box, f"no error raised (took {time.monotonic() - start:.2f} s)"
    return box["exc"]


# ---------------------------------------------------------------------------
# Output times
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("times", [[0.0, 1.0, 1.0, 2.0], [2.0, 1.0, 1.0], [0.0, 0.0]])
def test_t_with_a_repeated_value_is_rejected(times):
    with pytest.raises(ValueError, match=r"strictly increasing or strictly decreasing.*repeated"):
        nodeopt.odeint(decay, Y0, torch.tensor(times, dtype=DT))


@pytest.mark.parametrize("times", [[0.0, 2.0, 1.0], [2.0, 0.0, 1.0], [0.0, 1.0, 3.0, 2.0]])
def test_unsorted_t_is_rejected(times):
    with pytest.raises(ValueError, match=r"t must be strictly increasing or strictly decreasing"):
        nodeopt.odeint(decay, Y0, torch.tensor(times, dtype=DT))


@pytest.mark.parametrize("t", [torch.tensor([[0.0, 1.0]]), torch.tensor(1.0), torch.zeros(2, 2)])
def test_t_that_is_not_one_dimensional_is_rejected(t):
    with pytest.raises(ValueError, match=r"t must be a non-empty 1-D tensor.*shape"):
        nodeopt.odeint(decay, Y0, t)


def test_empty_t_is_rejected():
    with pytest.raises(ValueError, match=r"non-empty 1-D"):
        nodeopt.odeint(decay, Y0, torch.tensor([], dtype=DT))


def test_non_finite_t_is_rejected():
    with pytest.raises(ValueError, match=r"t must be finite"):
        nodeopt.odeint(decay, Y0, torch.tensor([0.0, float("nan")], dtype=DT))


# ---------------------------------------------------------------------------
# Method, options, tolerances, gradient
# ---------------------------------------------------------------------------

def test_unknown_method_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"dopri7") as info:
        nodeopt.odeint(decay, Y0, T, method="dopri7")
    message = str(info.value)
    for name in ("dopri5", "dopri8", "bosh3", "tsit5", "rk4", "euler"):
        assert name in message


def test_method_of_the_wrong_type_is_rejected():
    with pytest.raises(TypeError, match=r"method must be a solver name"):
        nodeopt.odeint(decay, Y0, T, method=5)


def test_unknown_option_for_an_adaptive_method_names_the_key_and_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['step_size'\].*adaptive.*first_step"):
        nodeopt.odeint(decay, Y0, T, method="dopri5", options={"step_size": 0.1})


def test_misspelled_option_for_an_adaptive_method_is_rejected():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['max_steps'\]"):
        nodeopt.odeint(decay, Y0, T, options={"max_steps": 10})


def test_unknown_option_for_a_fixed_method_names_the_key_and_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['first_step'\].*fixed-step.*step_size"):
        nodeopt.odeint(decay, Y0, T, method="rk4", options={"first_step": 0.1})


def test_negative_rtol_is_rejected():
    with pytest.raises(ValueError, match=r"rtol must be a non-negative finite number"):
        nodeopt.odeint(decay, Y0, T, rtol=-1e-3)


def test_negative_atol_is_rejected():
    with pytest.raises(ValueError, match=r"atol must be a non-negative finite number"):
        nodeopt.odeint(decay, Y0, T, atol=-1e-9)


def test_rtol_and_atol_both_zero_is_rejected_for_adaptive_methods():
    with pytest.raises(ValueError, match=r"rtol and atol are both zero"):
        nodeopt.odeint(decay, Y0, T, rtol=0.0, atol=0.0)


def test_per_component_tolerance_of_the_wrong_length_is_rejected():
    with pytest.raises(ValueError, match=r"rtol has 3 entries but the state has 2 components"):
        nodeopt.odeint(lambda t, s: s, (Y0, Y0), T, rtol=(1e-6, 1e-6, 1e-6))


def test_unknown_gradient_name_lists_backprop():
    with pytest.raises(ValueError, match=r"gradient='nonsense' is not a known gradient method.*backprop"):
        nodeopt.odeint(decay, Y0, T, gradient="nonsense")


def test_gradient_of_the_wrong_type_is_rejected():
    with pytest.raises(TypeError, match=r"gradient must be a name or a GradientMethod"):
        nodeopt.odeint(decay, Y0, T, gradient=3)


def test_unknown_controller_name_is_rejected():
    with pytest.raises(ValueError, match=r"options\['controller'\] must be 'pi', 'i' or a PIController"):
        nodeopt.odeint(decay, Y0, T, options={"controller": "pid"})


@pytest.mark.parametrize("option", [{"safety": 1.5}, {"dfactor": 2.0}, {"ifactor": 0.5}, {"safety": -0.1}])
def test_controller_factors_out_of_range_are_rejected(option):
    with pytest.raises(ValueError, match=r"safety|dfactor|ifactor"):
        nodeopt.odeint(decay, Y0, T, options=option)


def test_controller_object_together_with_factor_options_is_rejected():
    with pytest.raises(ValueError, match=r"give safety/ifactor/dfactor to the controller object"):
        nodeopt.odeint(decay, Y0, T, options={"controller": nodeopt.PIController(), "safety": 0.8})


def test_step_size_and_grid_constructor_together_are_rejected():
    with pytest.raises(ValueError, match=r"step_size.*grid_constructor.*not both"):
        nodeopt.odeint(decay, Y0, T, method="rk4",
                       options={"step_size": 0.1, "grid_constructor": lambda f, y, t: t})


@pytest.mark.parametrize("step", [0.0, -0.0, float("inf"), float("nan")])
def test_non_positive_or_non_finite_step_size_is_rejected(step):
    with pytest.raises(ValueError, match=r"options\['step_size'\] must be a positive number"):
        nodeopt.odeint(decay, Y0, T, method="euler", options={"step_size": step})


def test_grid_constructor_returning_an_unordered_grid_is_rejected():
    with pytest.raises(ValueError, match=r"grid_constructor'\] must return a grid ordered like t"):
        nodeopt.odeint(decay, Y0, T, method="rk4",
                       options={"grid_constructor": lambda f, y, t: torch.tensor([0.0, 0.5, 0.3, 1.0])})


def test_non_floating_time_dtype_option_is_rejected():
    with pytest.raises(ValueError, match=r"options\['dtype'\].*real floating"):
        nodeopt.odeint(decay, Y0, T, options={"dtype": torch.int32})


# ---------------------------------------------------------------------------
# The state y0
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_y0_is_rejected(dtype):
    with pytest.raises(TypeError, match=r"floating point"):
        nodeopt.odeint(decay, torch.ones(2, dtype=dtype), T)


def test_complex_y0_is_rejected_with_a_hint():
    with pytest.raises(TypeError, match=r"complex.*view_as_real"):
        nodeopt.odeint(decay, torch.ones(2, dtype=torch.complex128), T)


def test_list_y0_is_rejected_with_a_hint_to_use_a_tuple():
    with pytest.raises(TypeError, match=r"got a list; pass tuple\(y0\)"):
        nodeopt.odeint(lambda t, y: y, [Y0, Y0], T)


def test_tuple_y0_with_mixed_dtypes_is_rejected():
    with pytest.raises(ValueError, match=r"share one dtype"):
        nodeopt.odeint(lambda t, y: y, (Y0, Y0.float()), T)


def test_non_callable_func_is_rejected():
    with pytest.raises(TypeError, match=r"func must be callable"):
        nodeopt.odeint(3, Y0, T)


# ---------------------------------------------------------------------------
# What func returns
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_func_returning_a_different_shape_is_rejected(method):
    with pytest.raises(ValueError, match=r"func returned shape \(3,\) but the state has shape \(2,\)"):
        nodeopt.odeint(lambda t, y: torch.ones(3, dtype=DT), Y0, T, method=method)


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_func_returning_a_different_dtype_is_rejected(method):
    with pytest.raises(ValueError, match=r"func returned dtype torch.float32 but the state is torch.float64"):
        nodeopt.odeint(lambda t, y: (-y).float(), Y0, T, method=method)


def test_func_returning_a_tuple_for_a_tensor_state_is_rejected():
    with pytest.raises(ValueError, match=r"same structure as y0 \(a tensor"):
        nodeopt.odeint(lambda t, y: (-y,), Y0, T)


def test_func_returning_a_tensor_for_a_tuple_state_is_rejected():
    with pytest.raises(ValueError, match=r"same structure as y0 \(a tuple of 2\)"):
        nodeopt.odeint(lambda t, s: -s[0], (Y0, Y0), T)


def test_func_returning_a_tuple_of_the_wrong_length_is_rejected():
    with pytest.raises(ValueError, match=r"same structure as y0 \(a tuple of 2\).*tuple of 3"):
        nodeopt.odeint(lambda t, s: (s[0], s[1], s[1]), (Y0, Y0), T)


# ---------------------------------------------------------------------------
# Failing solves: NaN, blow-up, underflow, too many steps -- none hangs
# ---------------------------------------------------------------------------

def nan_after_one(t, y):
    """A well-behaved field until t = 1, NaN from then on."""
    if t > 1.0:
        return torch.full_like(y, float("nan"))
    return -y


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "tsit5", "dopri8", "adaptive_heun"])
def test_nan_from_the_dynamics_raises_runtime_error_mentioning_nan_for_adaptive_methods(method):
    exc = raises_within(10, lambda: nodeopt.odeint(nan_after_one, Y0, torch.tensor([0.0, 2.0], dtype=DT),
                                                  method=method))
    assert isinstance(exc, RuntimeError), repr(exc)
    assert "NaN" in str(exc), str(exc)


@pytest.mark.parametrize("method, options", [
    ("euler", {"step_size": 0.1}), ("rk4", {"step_size": 0.1}), ("midpoint", {}), ("rk38", {"step_size": 0.3}),
])
def test_nan_from_the_dynamics_raises_runtime_error_mentioning_nan_for_fixed_methods(method, options):
    exc = raises_within(10, lambda: nodeopt.odeint(nan_after_one, Y0, torch.tensor([0.0, 1.5, 2.0], dtype=DT),
                                                  method=method, options=options))
    assert isinstance(exc, RuntimeError), repr(exc)
    assert "NaN" in str(exc), str(exc)


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_nan_at_the_initial_state_raises_runtime_error_mentioning_nan(method):
    exc = raises_within(10, lambda: nodeopt.odeint(lambda t, y: y * float("nan"), Y0, T, method=method))
    assert isinstance(exc, RuntimeError) and "NaN" in str(exc), repr(exc)


def blow_up(t, y):
    return y ** 2        # y(0) = 1  =>  y = 1 / (1 - t), infinite at t = 1


@pytest.mark.parametrize("options", [{}, {"max_num_steps": 200}])
def test_finite_time_blow_up_raises_instead_of_hanging_adaptive(options):
    exc = raises_within(20, lambda: nodeopt.odeint(blow_up, torch.ones(1, dtype=DT),
                                                  torch.tensor([0.0, 2.0], dtype=DT), options=options))
    assert isinstance(exc, RuntimeError), repr(exc)
    assert "underflow" in str(exc) or "max_num_steps" in str(exc), str(exc)


@pytest.mark.parametrize("method", ["rk4", "euler"])
def test_finite_time_blow_up_raises_instead_of_hanging_fixed(method):
    exc = raises_within(20, lambda: nodeopt.odeint(blow_up, torch.ones(1, dtype=DT),
                                                  torch.tensor([0.0, 2.0], dtype=DT), method=method,
                                                  options={"step_size": 0.01}))
    assert isinstance(exc, RuntimeError), repr(exc)
    assert "NaN or inf" in str(exc), str(exc)


def test_step_size_underflow_raises_runtime_error():
    # y' = (1 - t)^-3 has no solution through t = 1: the solver must give up there.
    def func(t, y):
        return torch.ones_like(y) / (1.0 - t) ** 3

    exc = raises_within(20, lambda: nodeopt.odeint(func, Y0, torch.tensor([0.0, 2.0], dtype=DT)))
    assert isinstance(exc, RuntimeError), repr(exc)
    assert "step size underflow" in str(exc), str(exc)
    assert "t=0.99" in str(exc) or "t=1" in str(exc), str(exc)


def test_max_num_steps_exceeded_raises_runtime_error_naming_the_option():
    with pytest.raises(RuntimeError, match=r"max_num_steps=10 exceeded"):
        nodeopt.odeint(lambda t, y: torch.stack([y[1], -y[0]]), Y0, torch.tensor([0.0, 100.0], dtype=DT),
                       rtol=1e-10, atol=1e-12, options={"max_num_steps": 10})


@pytest.mark.parametrize("value", [0, -5])
def test_invalid_max_num_steps_is_rejected(value):
    with pytest.raises(ValueError, match=r"options\['max_num_steps'\] must be a positive number"):
        nodeopt.odeint(decay, Y0, T, options={"max_num_steps": value})
