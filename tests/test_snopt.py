"""SNOpt: Kronecker factors and preconditioning against dense computations; collection along every method."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nodeopt
from nodeopt.nn import ODEBlock
from nodeopt.optim import SNOpt, kfac

GRADIENTS = ("backprop", "adjoint", "onecheckpoint", "checkpoint", "symplectic")
DT = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ---- factors against dense computations --------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
def test_linear_input_and_output_factors_equal_dense_sums(bias):
    layer = nn.Linear(3, 2, bias=bias).double()
    x = torch.randn(5, 3, dtype=DT, generator=_gen(0))
    g = torch.randn(5, 2, dtype=DT, generator=_gen(1))
    xt = torch.cat([x, torch.ones(5, 1, dtype=DT)], 1) if bias else x
    dense_a = sum(torch.outer(r, r) for r in xt) / 5
    dense_g = sum(torch.outer(r, r) for r in g) / 5
    assert torch.allclose(kfac.input_factor(layer, x), dense_a, atol=1e-14)
    assert torch.allclose(kfac.output_factor(layer, g), dense_g, atol=1e-14)


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1), (1, 2)])
def test_conv_factors_equal_sums_over_explicit_patches(stride, padding):
    layer = nn.Conv2d(2, 3, kernel_size=3, stride=stride, padding=padding).double()
    x = torch.randn(2, 2, 6, 5, dtype=DT, generator=_gen(2))
    out = layer(x)
    g = torch.randn(out.shape, dtype=DT, generator=_gen(3))
    xp = F.pad(x, (padding, padding, padding, padding))
    patches, grads = [], []
    for n in range(x.shape[0]):
        for i in range(out.shape[2]):
            for j in range(out.shape[3]):
                patch = xp[n, :, i * stride:i * stride + 3, j * stride:j * stride + 3].reshape(-1)
                patches.append(torch.cat([patch, torch.ones(1, dtype=DT)]))
                grads.append(g[n, :, i, j])
    dense_a = sum(torch.outer(p, p) for p in patches) / len(patches)
    dense_g = sum(torch.outer(q, q) for q in grads) / len(grads)
    assert torch.allclose(kfac.input_factor(layer, x), dense_a, atol=1e-12)
    assert torch.allclose(kfac.output_factor(layer, g), dense_g, atol=1e-12)
    assert kfac.locations(layer, g) == out.shape[2] * out.shape[3]
    # The weight-gradient layout matches the patch layout: ∇W = Σ g pᵀ.
    layer.weight.grad = torch.einsum("np,nq->pq", torch.stack(grads), torch.stack(patches))[:, :-1].reshape(
        layer.weight.shape).clone()
    layer.bias.grad = torch.stack(grads).sum(0).clone()
    out.backward(g)  # accumulates autograd's own gradient on top: twice the dense one
    assert torch.allclose(kfac.gradient_matrix(layer) / 2,
                          torch.einsum("np,nq->pq", torch.stack(grads), torch.stack(patches)), atol=1e-10)


def test_input_factor_subsets_are_evenly_spaced_samples_that_together_give_the_full_factor():
    # 8 samples × 4×4 output locations = 128 columns; at most 32 → every 4th sample, offset chosen per evaluation.
    layer = nn.Conv2d(2, 3, kernel_size=3, padding=1).double()
    x = torch.randn(8, 2, 4, 4, dtype=DT, generator=_gen(4))
    g = torch.randn(8, 3, 4, 4, dtype=DT, generator=_gen(5))
    subsets = [kfac.sample_subset(layer, x, g, 32, offset) for offset in range(4)]
    for offset, sub in enumerate(subsets):
        assert torch.equal(sub, x[[offset, offset + 4]])
    assert torch.equal(kfac.sample_subset(layer, x, g, 32, 5), subsets[1])
    # Equal-sized disjoint subsets covering the batch: their factors average to the full one.
    mean_a = sum(kfac.input_factor(layer, sub) for sub in subsets) / 4
    assert torch.allclose(mean_a, kfac.input_factor(layer, x), atol=1e-12)
    assert kfac.sample_subset(layer, x, g, 128, 3) is x
    assert kfac.sample_subset(layer, x, g, None, 3) is x
    # A limit below one sample's columns still keeps one sample per evaluation.
    assert kfac.sample_subset(layer, x, g, 1, 2).shape[0] == 1
    lin = nn.Linear(3, 2).double()
    xl = torch.randn(10, 3, dtype=DT, generator=_gen(6))
    assert torch.equal(kfac.sample_subset(lin, xl, torch.zeros(10, 2, dtype=DT), 4, 1), xl[1::3])


def _random_spd(n, seed):
    m = torch.randn(n, n, dtype=DT, generator=_gen(seed))
    return m @ m.t() / n + 0.1 * torch.eye(n, dtype=DT)


def test_preconditioned_gradient_equals_the_dense_kronecker_formula():
    a, g_fac = _random_spd(4, 4), _random_spd(3, 5)
    grad = torch.randn(3, 4, dtype=DT, generator=_gen(6))
    e_a, q_a = kfac.eigenbasis(a)
    e_g, q_g = kfac.eigenbasis(g_fac)
    m2 = torch.outer(e_g, e_a) * 2.0
    alpha, eps, batch = 0.75, 0.05, 8
    nat, m2_new = kfac.precondition(grad, q_a, q_g, m2, alpha, eps, batch)
    # Column-major vec: vec(Q_G X Q_Aᵀ) = (Q_A ⊗ Q_G) vec(X).
    vec = lambda m: m.t().reshape(-1)  # noqa: E731
    k = torch.kron(q_a, q_g)
    proj = k.t() @ vec(grad)
    second = alpha * vec(m2) + (1 - alpha) * batch * proj ** 2
    expected = k @ (proj / (second + eps))
    assert torch.allclose(vec(nat), expected, atol=1e-12)
    assert torch.allclose(vec(m2_new), second, atol=1e-12)


def test_without_running_average_ekfac_is_kfac_with_damping():
    # With m2 = λ_G λ_Aᵀ kept (alpha = 1) the step is (A ⊗ G + ε I)⁻¹ vec(∇).
    a, g_fac = _random_spd(3, 7), _random_spd(2, 8)
    grad = torch.randn(2, 3, dtype=DT, generator=_gen(9))
    e_a, q_a = kfac.eigenbasis(a)
    e_g, q_g = kfac.eigenbasis(g_fac)
    nat, _ = kfac.precondition(grad, q_a, q_g, torch.outer(e_g, e_a), 1.0, 1e-3, 1)
    dense = torch.kron(a, g_fac) + 1e-3 * torch.eye(6, dtype=DT)
    expected = torch.linalg.solve(dense, grad.t().reshape(-1))
    assert torch.allclose(nat.t().reshape(-1), expected, atol=1e-10)


# ---- collection along the trajectory --------------------------------------------------------------

class LinearField(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2).double()
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[-0.3, 0.8], [-0.7, -0.2]]))
            self.lin.bias.copy_(torch.tensor([0.1, -0.2]))

    def forward(self, t, y):
        return self.lin(y)


@pytest.mark.parametrize("gradient", ["backprop", "onecheckpoint", "checkpoint", "symplectic"])
def test_factors_of_an_euler_solve_are_the_time_averages_along_the_trajectory(gradient):
    # Euler, h = 0.25 on [0, 1]: stage n is y_n (weight h), its output cotangent is h·λ_{n+1}.
    field = LinearField()
    block = ODEBlock(field, t1=1.0, method="euler", options={"step_size": 0.25}, gradient=gradient)
    y0 = torch.randn(3, 2, dtype=DT, generator=_gen(10))
    target = torch.randn(3, 2, dtype=DT, generator=_gen(11))
    pre = SNOpt(block, snopt_step_size=0.5, max_step=None)
    pre.train_itr_setup()
    capture = pre._capture
    loss = 0.5 * (block(y0) - target).square().sum()
    loss.backward()
    sums = capture.sums[field.lin]
    pre.step()

    w = field.lin.weight.detach()
    ys = [y0]
    for _ in range(4):
        ys.append(ys[-1] + 0.25 * (ys[-1] @ w.t() + field.lin.bias.detach()))
    lam = ys[-1] - target
    lams = [lam]
    for _ in range(3):
        lams.insert(0, lams[0] + 0.25 * lams[0] @ w)
    xt = [torch.cat([y, torch.ones(3, 1, dtype=DT)], 1) for y in ys[:4]]
    dense_a = sum(0.25 * x.t() @ x / 3 for x in xt) / 1.0
    g_hat = [3 * 0.5 * lmb for lmb in lams]  # batch · Δ · λ_{n+1}
    dense_g = sum(0.25 * g.t() @ g / 3 for g in g_hat) / 1.0
    a, g = sums.factors()
    assert torch.allclose(a, dense_a, rtol=1e-12)
    assert torch.allclose(g, dense_g, rtol=1e-12)


@pytest.mark.parametrize("gradient", GRADIENTS)
def test_raw_gradient_on_a_refresh_iteration_equals_a_plain_iteration(gradient):
    model = _classifier(gradient)
    x, y = _data()
    pre = SNOpt(model, update_freq=2, full_precond=True)
    raw = []
    for _ in range(2):  # iteration 0 refreshes, iteration 1 does not; parameters do not move
        pre.train_itr_setup()
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        raw.append(torch.cat([p.grad.reshape(-1).clone() for p in model.parameters()]))
        pre.step()
    assert torch.equal(raw[0], raw[1])
    plain = _classifier(gradient)
    F.cross_entropy(plain(x), y).backward()
    assert torch.equal(raw[0], torch.cat([p.grad.reshape(-1) for p in plain.parameters()]))


def test_symplectic_and_tight_adjoint_precondition_in_the_same_direction():
    x, y = _data()
    out = {}
    for gradient, tol in (("symplectic", 1e-6), ("adjoint", 1e-8)):
        model = _classifier(gradient, tol=tol)
        pre = SNOpt(model, full_precond=True)
        pre.train_itr_setup()
        F.cross_entropy(model(x), y).backward()
        pre.step()
        out[gradient] = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    cos = F.cosine_similarity(out["symplectic"], out["adjoint"], dim=0).item()
    # Measured 0.99972 (float64): the adjoint samples its own backward stages with uniform weights,
    # the symplectic method the forward stages with weights h·b_i; both estimate the same time averages.
    assert cos > 0.999


# ---- the optimiser's bookkeeping -------------------------------------------------------------------

@pytest.mark.parametrize("early,update_freq,iterations,expected", [
    (False, 3, 7, [3, 6]),
    (True, 3, 7, [1, 2, 3, 6]),
    (True, 10, 25, [1, 2, 4, 8, 10, 20]),
])
def test_bases_refresh_on_schedule_early_and_then_every_update_freq(early, update_freq, iterations, expected):
    model = _classifier("symplectic")
    x, y = _data()
    pre = SNOpt(model, update_freq=update_freq, early_refresh=early, adaptive_damping=False)
    layer = pre.layers[0]
    seen = []
    for it in range(iterations):
        pre.train_itr_setup()
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        pre.step()
        seen.append(pre.state[layer.weight]["q_a"])
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p.grad, alpha=-0.05)
    refreshed = [it for it in range(1, iterations) if seen[it] is not seen[it - 1]]
    assert refreshed == expected
    assert pre.refreshes == len(expected) + 1


def test_hooks_live_only_during_a_refresh_iteration():
    model = _classifier("symplectic")
    x, y = _data()
    pre = SNOpt(model, update_freq=2, full_precond=True, early_refresh=False)
    assert all(not m._forward_hooks for m in model.modules())
    pre.train_itr_setup()
    assert all(m._forward_hooks for m in pre.layers)
    F.cross_entropy(model(x), y).backward()
    pre.step()
    assert all(not m._forward_hooks for m in model.modules())
    assert not nodeopt.gradients.observe.is_listening()
    pre.train_itr_setup()  # iteration 1: no refresh, no hooks
    assert all(not m._forward_hooks for m in model.modules())


def test_end_capture_cleans_up_after_a_failed_refresh_iteration():
    model = _classifier("symplectic")
    pre = SNOpt(model, full_precond=True)
    pre.train_itr_setup()
    assert nodeopt.gradients.observe.is_listening()
    pre.end_capture()  # e.g. the solver raised between train_itr_setup() and step()
    assert not nodeopt.gradients.observe.is_listening()
    assert all(not m._forward_hooks for m in model.modules())


def test_state_dict_round_trip_reproduces_the_next_step():
    x, y = _data()
    model = _classifier("symplectic")
    pre = SNOpt(model, update_freq=5, full_precond=True)
    for _ in range(2):
        pre.train_itr_setup()
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        pre.step()
    twin = copy.deepcopy(model)
    restored = SNOpt(twin, update_freq=5, full_precond=True)
    restored.load_state_dict(pre.state_dict())
    assert restored.iteration == 2 and restored.refreshes == pre.refreshes == 2  # iterations 0 and 1
    results = []
    for net, opt in ((model, pre), (twin, restored)):
        opt.train_itr_setup()
        net.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
        results.append(torch.cat([p.grad.reshape(-1) for p in net.parameters()]))
    assert torch.equal(results[0], results[1])


def test_step_bound_shrinks_the_step_to_max_step_in_the_fisher_metric():
    # K-FAC's KL clipping: the step ν·∇_nat has Fisher length ν²⟨∇_nat, ∇⟩, capped at max_step.
    x, y = _data()
    steps, raws = [], []
    for bound in (None, 1e-6):
        model = _classifier("symplectic")
        pre = SNOpt(model, full_precond=True, max_step=bound)
        pre.train_itr_setup()
        F.cross_entropy(model(x), y).backward()
        raws.append(torch.cat([kfac.gradient_matrix(m).reshape(-1) for m in pre.layers]).clone())
        if bound is None:
            pre.step()
        else:  # without lr, a shortened step says that the bound assumed lr 0.02
            with pytest.warns(UserWarning, match="assuming the base optimiser's learning rate is 0.02; pass lr="):
                pre.step()
        steps.append(torch.cat([kfac.gradient_matrix(m).reshape(-1) for m in pre.layers]))
    free, bounded = steps
    size = float(free @ raws[0])
    assert size > 1e-6  # the bound is active
    nu = float(bounded @ raws[1]) / size
    assert torch.allclose(bounded, free * nu, rtol=1e-10)
    assert nu ** 2 * size == pytest.approx(1e-6, rel=1e-9)


def test_with_the_learning_rate_the_bound_caps_the_step_actually_taken():
    # lr² · ν² ⟨∇_nat, ∇⟩ (the Fisher length of the step the optimiser takes) ≤ max_step · 0.02²
    x, y = _data()
    steps, raws = [], []
    for kwargs in (dict(max_step=None), dict(max_step=1e-4, lr=0.2)):
        model = _classifier("symplectic")
        pre = SNOpt(model, full_precond=True, **kwargs)
        pre.train_itr_setup()
        F.cross_entropy(model(x), y).backward()
        raws.append(torch.cat([kfac.gradient_matrix(m).reshape(-1) for m in pre.layers]).clone())
        pre.step()
        steps.append(torch.cat([kfac.gradient_matrix(m).reshape(-1) for m in pre.layers]))
    size = float(steps[0] @ raws[0])
    assert size > 1e-4 * (0.02 / 0.2) ** 2  # the bound is active
    nu = float(steps[1] @ raws[1]) / size
    assert 0.2 ** 2 * nu ** 2 * size == pytest.approx(1e-4 * 0.02 ** 2, rel=1e-9)


def test_the_missing_learning_rate_is_pointed_out_once_and_only_when_the_bound_acts():
    x, y = _data()
    for kwargs, expect in ((dict(max_step=1e-9), 1), (dict(max_step=1e-9, lr=0.02), 0), (dict(max_step=1e9), 0)):
        model = _classifier("symplectic")
        pre = SNOpt(model, full_precond=True, update_freq=1, **kwargs)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):
                pre.train_itr_setup()
                model.zero_grad()
                F.cross_entropy(model(x), y).backward()
                pre.step()
        assert sum("pass lr=" in str(w.message) for w in caught) == expect, kwargs
        assert all(w.filename == __file__ for w in caught)  # points at the caller's pre.step()


def test_the_learning_rate_may_be_a_function_read_at_every_step():
    # Under a scheduler the bound follows the current lr; a bad value from the function is named.
    x, y = _data()
    current = {"lr": 0.2}
    sizes = []
    for lr in (0.2, lambda: current["lr"]):
        model = _classifier("symplectic")
        pre = SNOpt(model, full_precond=True, max_step=1e-4, lr=lr)
        pre.train_itr_setup()
        F.cross_entropy(model(x), y).backward()
        pre.step()
        sizes.append(torch.cat([kfac.gradient_matrix(m).reshape(-1) for m in pre.layers]))
    assert torch.equal(sizes[0], sizes[1])
    assert pre.step_bound == pytest.approx(1e-4 * (0.02 / 0.2) ** 2)
    current["lr"] = torch.tensor(0.1)  # torch optimisers accept tensor learning rates
    assert pre.step_bound == pytest.approx(1e-4 * (0.02 / 0.1) ** 2)
    assert SNOpt(_classifier("symplectic"), max_step=1e-4, lr=torch.tensor(0.1)).step_bound == pytest.approx(
        1e-4 * (0.02 / 0.1) ** 2)
    current["lr"] = 0.1
    assert pre.step_bound == pytest.approx(1e-4 * (0.02 / 0.1) ** 2)
    current["lr"] = 0.0
    with pytest.raises(ValueError, match="lr must be a positive learning rate"):
        pre.step_bound


@pytest.mark.parametrize("kwargs,match", [
    (dict(lr=-0.1), "lr must be the base optimiser's positive learning rate"),
    (dict(max_factor_columns=0), "max_factor_columns must be a whole number ≥ 1, or None"),
    (dict(eps=0.0), "eps must be a positive number"),
    (dict(update_freq=0), "update_freq must be a whole number"),
    (dict(update_freq=2.5), "update_freq must be a whole number"),
    (dict(alpha=1.0), r"alpha must be a number in \[0, 1\)"),
    (dict(max_step=-1.0), "max_step must be a positive number"),
    (dict(snopt_step_size=0), "snopt_step_size must be a positive number"),
    (dict(damping_interval=0), "damping_interval must be a whole number ≥ 1"),
])
def test_bad_hyper_parameters_are_rejected_with_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SNOpt(_classifier("symplectic"), **kwargs)


@pytest.mark.parametrize("name", ["early_refresh", "adaptive_damping"])
def test_switches_must_be_booleans(name):
    with pytest.raises(TypeError, match=f"{name} must be True or False, got 'yes'"):
        SNOpt(_classifier("symplectic"), **{name: "yes"})


class _DirectODE(nn.Module):
    """torchdiffeq-style code: the model calls odeint itself, no ODEBlock."""

    def __init__(self, gradient):
        super().__init__()
        self.encoder, self.field, self.head = nn.Linear(6, 4), _Field(), nn.Linear(4, 3)
        self.gradient = gradient

    def forward(self, x):
        t = torch.tensor([0.0, 1.0], dtype=DT)
        return self.head(nodeopt.odeint(self.field, self.encoder(x), t, rtol=1e-6, atol=1e-6,
                                        gradient=self.gradient)[-1])


@pytest.mark.parametrize("gradient", ["backprop", "adjoint", "symplectic"])
@pytest.mark.parametrize("full_precond", [False, True])
def test_ode_layers_are_found_where_the_model_calls_odeint_itself(gradient, full_precond):
    # The layers differentiated inside a solve are the ODE layers: the step equals the one with
    # ode_layers given explicitly, and without full_precond the other layers keep their raw gradient.
    x, y = _data()
    steps = []
    for explicit in (False, True):
        torch.manual_seed(0)
        model = _DirectODE(gradient).double()
        layers = dict(ode_layers=[model.field.l1, model.field.l2]) if explicit else {}
        pre = SNOpt(model, full_precond=full_precond, **layers)
        pre.train_itr_setup()
        F.cross_entropy(model(x), y).backward()
        raw = [p.grad.clone() for p in model.parameters()]
        pre.step()
        steps.append([p.grad for p in model.parameters()])
        if not explicit:
            assert pre.ode_layers == [model.field.l1, model.field.l2]
            assert pre.other_layers == ([model.encoder, model.head] if full_precond else [])
            changed = [not torch.equal(a, b) for a, b in zip(raw, steps[-1])]
            # encoder weight, bias | field l1, l2 | head weight, bias
            assert changed == [full_precond] * 2 + [True] * 4 + [full_precond] * 2
    for a, b in zip(*steps):
        assert torch.allclose(a, b, rtol=1e-12, atol=0)


def test_a_model_without_ode_layers_or_a_parameter_list_is_rejected():
    with pytest.raises(ValueError, match="no Linear or Conv2d layer to precondition"):
        SNOpt(nn.Sequential(nn.Tanh()))
    model = nn.Sequential(nn.Linear(2, 2))
    pre = SNOpt(model)  # no ODEBlock: the ODE layers are looked for in the first iteration
    pre.train_itr_setup()
    model(torch.randn(3, 2)).sum().backward()
    with pytest.raises(ValueError, match="found no Linear or Conv2d layer evaluated inside an ODE solve"):
        pre.step()
    assert not nodeopt.gradients.observe.is_listening()
    with pytest.raises(TypeError, match="not model.parameters"):
        SNOpt(nn.Linear(2, 2).parameters())


# ---- the guard: Levenberg–Marquardt damping -------------------------------------------------------

class _NoODE(nn.Module):
    """A bare linear model that the original interface accepts (``ode_mods``: none)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 1, bias=False)

    def forward(self, x):
        return self.fc(x)

    ode_mods = ()


def _regression_run(iterations=60, momentum=0.0, make=SNOpt, **kwargs):
    """A least-squares fit whose curvature along w₂ grows 10⁵-fold after the eigenbasis was computed.

    At iteration 0 (the refresh) the inputs' second coordinate has scale 0.01;
    from then on √10, so the curvature along w₂ is h = 10. With lr 0.02 and
    eps 0.05, a preconditioner whose m₂ is still small multiplies the error
    along w₂ by 1 − lr·h/(m₂ + eps) ≈ −3 each step: it overshoots (until m₂
    has grown enough to stop it, at a loss that no longer falls).
    """
    g = _gen(7)
    before = torch.randn(64, 2, dtype=DT, generator=g) * torch.tensor([1.0, 0.01], dtype=DT)
    after = torch.randn(64, 2, dtype=DT, generator=g) * torch.tensor([1.0, 10 ** 0.5], dtype=DT)
    model = _NoODE().double()
    with torch.no_grad():
        model.fc.weight.copy_(torch.tensor([[1e-2, 1e-3]], dtype=DT))  # the optimum is w = 0
    pre = make(model, full_precond=True, update_freq=1000, **{"lr": 0.02, "max_step": None, **kwargs})
    sgd = torch.optim.SGD(model.parameters(), lr=0.02, momentum=momentum)
    losses = []
    for it in range(iterations):
        x = before if it == 0 else after
        pre.train_itr_setup()
        sgd.zero_grad()
        loss = 0.5 * model(x).square().mean()
        loss.backward()
        pre.step()
        sgd.step()
        losses.append(loss.item())
    return losses, pre


def test_damping_adapts_where_the_stale_preconditioner_overshoots():
    # Unguarded (the original: fixed eps, refresh only every update_freq) the loss stalls at its
    # overshooting level; with Levenberg–Marquardt damping (early refreshes off, to test it alone)
    # the damping grows until the steps contract, and the loss falls by orders of magnitude.
    unguarded, _ = _regression_run(early_refresh=False, adaptive_damping=False)
    guarded, pre = _regression_run(early_refresh=False)
    assert unguarded[-1] > 0.3 * unguarded[1]
    assert guarded[-1] < 1e-3 * guarded[1]
    assert pre.damping_factor > 1.5  # lr·h/(m₂ + eps·γ) had to fall below 1.5
    # With every default (early refreshes too) the same problem is solved as well.
    assert _regression_run()[0][-1] < 1e-3 * guarded[1]


@pytest.mark.filterwarnings("ignore:SNOpt's step bound")  # the original API has no lr to pass
def test_the_original_interface_gets_the_same_protection_by_default():
    # nodeopt.compat.SNOpt(net, eps, update_freq, alpha, full_precond): the original's signature and defaults.
    from nodeopt.compat import SNOpt as Original
    unguarded, _ = _regression_run(make=Original, lr=None, max_step=1.0, early_refresh=False,
                                   adaptive_damping=False)
    guarded, pre = _regression_run(make=Original, lr=None, max_step=1.0)
    assert pre.adaptive_damping and pre.early_refresh and pre.momentum_guard is not None
    assert unguarded[-1] > 0.3 * unguarded[1]
    assert guarded[-1] < 1e-3 * guarded[1]


def test_damping_stays_at_eps_while_the_quadratic_model_is_good():
    # A well-conditioned problem where the preconditioned step matches the curvature: ρ ≈ 1,
    # so λ never leaves eps and SNOpt is the original method.
    g = _gen(8)
    x = torch.randn(256, 3, dtype=DT, generator=g)
    model = nn.Linear(3, 1, bias=False).double()
    pre = SNOpt(model, full_precond=True, update_freq=1000, lr=0.02, max_step=None, early_refresh=False, eps=1.0)
    sgd = torch.optim.SGD(model.parameters(), lr=0.02)
    for _ in range(30):
        pre.train_itr_setup()
        sgd.zero_grad()
        (0.5 * (model(x) - x.sum(1, keepdim=True)).square().mean()).backward()
        pre.step()
        sgd.step()
    assert pre.damping_factor == 1.0


def test_reduction_ratio_pieces_are_exact_on_a_quadratic():
    # The trapezoidal rule along a step is exact for a quadratic loss, whatever the step.
    from nodeopt.optim import damping
    h = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=DT)
    loss = lambda w: 0.5 * w @ h @ w - w.sum()  # noqa: E731
    w0, s = torch.tensor([0.3, -0.7], dtype=DT), torch.tensor([0.25, 0.4], dtype=DT)
    grad = lambda w: h @ w - 1  # noqa: E731
    est = damping.actual_change(grad(w0), grad(w0 + s), s)
    assert float(est) == pytest.approx(float(loss(w0 + s) - loss(w0)), rel=1e-14)
    # The model's prediction with identity bases: ∇·s + ½ Σ s²(m₂ + λ).
    eye = torch.eye(1, dtype=DT)
    m2 = torch.tensor([[0.5, 2.0]], dtype=DT)
    pred = damping.predicted_change(grad(w0)[None], s[None], torch.eye(2, dtype=DT), eye, m2, 0.1)
    assert float(pred) == pytest.approx(float(grad(w0) @ s + 0.5 * (s.square() * (m2[0] + 0.1)).sum()), rel=1e-14)


def test_damping_rule_follows_martens_and_grosse():
    from nodeopt.optim import damping
    omega = (19 / 20) ** 5
    assert damping.adjust(1.0, actual=-0.1, predicted=-1.0, interval=5) == pytest.approx(1 / omega)  # ρ = 0.1
    assert damping.adjust(4.0, actual=-0.9, predicted=-1.0, interval=5) == pytest.approx(4 * omega)  # ρ = 0.9
    assert damping.adjust(1.1, actual=-0.9, predicted=-1.0, interval=5) == 1.0  # never below eps
    assert damping.adjust(2.0, actual=-0.5, predicted=-1.0, interval=5) == 2.0  # ρ in [1/4, 3/4]
    assert damping.adjust(2.0, actual=0.1, predicted=0.2, interval=5) == pytest.approx(2 / omega)  # went uphill


def test_damping_state_survives_a_state_dict_round_trip():
    losses, pre = _regression_run(iterations=23, early_refresh=False)
    assert pre.damping_factor > 1 and pre._judged_steps > 0
    twin = SNOpt(_NoODE().double(), full_precond=True, update_freq=1000, lr=0.02, max_step=None,
                 early_refresh=False)
    twin.load_state_dict(pre.state_dict())
    for name in ("damping_factor", "iteration", "refreshes", "_judged_steps", "_actual_change", "_predicted_change"):
        assert getattr(twin, name) == getattr(pre, name), name
    state, restored = pre.state[pre.layers[0].weight], twin.state[twin.layers[0].weight]
    assert torch.equal(state["last_grad"], restored["last_grad"])
    assert torch.equal(state["last_param"], restored["last_param"])


# ---- helpers -----------------------------------------------------------------------------------------

class _Field(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(5, 16)
        self.l2 = nn.Linear(16, 4)

    def forward(self, t, y):
        return self.l2(torch.tanh(self.l1(torch.cat([y, t.expand(y.shape[0], 1)], 1))))


def _classifier(gradient, tol=1e-6):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 4), ODEBlock(_Field(), gradient=gradient, rtol=tol, atol=tol),
                         nn.Linear(4, 3)).double()


def _data():
    return torch.randn(32, 6, dtype=DT, generator=_gen(20)), torch.randint(0, 3, (32,), generator=_gen(21))
