"""SNOpt's momentum guard: the step SGD actually takes, momentum included, bounded in the current Fisher metric.

Truths: the metric as a dense Kronecker matrix on a tiny layer, PyTorch's own SGD step (from a copy of the
optimiser without the guard), and a reproduced divergence of the original method on a small conv ODE.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nodeopt import data, odeint_symplectic_adjoint
from nodeopt.compat import ODEBlock, ODEFuncBase, Options
from nodeopt.compat import SNOpt as CompatSNOpt
from nodeopt.optim import SNOpt, kfac
from nodeopt.optim.momentum import momentum_limit, sgd_direction
from nodeopt.optim.snopt import REFERENCE_LR

DT = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_fisher_size_equals_the_dense_kronecker_quadratic_form():
    q_a, _ = torch.linalg.qr(torch.randn(4, 4, dtype=DT, generator=_gen(0)))
    q_g, _ = torch.linalg.qr(torch.randn(3, 3, dtype=DT, generator=_gen(1)))
    m2 = torch.rand(3, 4, dtype=DT, generator=_gen(2))
    d = torch.randn(3, 4, dtype=DT, generator=_gen(3))
    damping = 0.07
    # vec(Q_G X Q_Aᵀ) = (Q_A ⊗ Q_G) vec(X) (column-major vec): the metric is (Q_A ⊗ Q_G) diag(m₂ + λ) (·)ᵀ
    basis = torch.kron(q_a, q_g)
    metric = basis @ torch.diag((m2 + damping).t().reshape(-1)) @ basis.t()
    vec = d.t().reshape(-1)
    assert torch.allclose(kfac.fisher_size(d, q_a, q_g, m2, damping), vec @ metric @ vec, rtol=1e-12)


@pytest.mark.parametrize("nesterov, dampening, weight_decay", [(False, 0.0, 0.0), (True, 0.0, 1e-2),
                                                               (False, 0.3, 1e-2)])
def test_sgd_direction_is_the_step_pytorch_takes(nesterov, dampening, weight_decay):
    p = nn.Parameter(torch.randn(5, dtype=DT, generator=_gen(4)))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9, dampening=0.0 if nesterov else dampening, nesterov=nesterov,
                          weight_decay=weight_decay)
    for k in range(3):
        p.grad = torch.randn(5, dtype=DT, generator=_gen(10 + k))
        buffer = opt.state.get(p, {}).get("momentum_buffer")
        group = opt.param_groups[0]
        expected = sgd_direction(p.grad, None if buffer is None else buffer.clone(), p.detach().clone(), 0.9,
                                 group["dampening"], weight_decay, nesterov)
        before = p.detach().clone()
        opt.step()
        assert torch.allclose((before - p.detach()) / 0.1, expected, rtol=1e-12, atol=1e-14)


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def _loss(model, seed):
    x = torch.randn(16, 3, dtype=DT, generator=_gen(seed))
    y = torch.randn(16, 2, dtype=DT, generator=_gen(seed + 1))
    return F.mse_loss(model(x), y)


def _train_step(model, precond, opt, seed):
    precond.train_itr_setup()
    opt.zero_grad()
    _loss(model, seed).backward()
    precond.step()
    opt.step()


def _realised_size(model, precond, step, lr):
    """lr² ⟨Δ/lr, (F + λ) Δ/lr⟩ of a parameter change Δ, summed over SNOpt's layers, from the dense metric."""
    total = 0.0
    for layer, group in zip(precond.layers, precond.param_groups):
        s = precond.state[layer.weight]
        basis = torch.kron(s["q_a"], s["q_g"])
        damping = group["eps"] * precond.damping_factor
        metric = basis @ torch.diag((s["m2"] + damping).t().reshape(-1)) @ basis.t()
        vec = step[layer].t().reshape(-1) / lr
        total += lr ** 2 * float(vec @ metric @ vec)
    return total


def _param_matrices(precond):
    return {layer: kfac.parameter_matrix(layer).detach().clone() for layer in precond.layers}


def test_a_momentum_buffer_too_long_for_the_current_curvature_is_shortened_to_the_bound():
    model = _model()
    lr = 0.05
    precond = SNOpt(model, eps=0.05, update_freq=1, full_precond=True, lr=lr, adaptive_damping=False)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for k in range(3):
        _train_step(model, precond, opt, seed=2 * k)
    for p in model.parameters():  # a buffer built where the curvature was far lower
        opt.state[p]["momentum_buffer"].mul_(1e3)
    precond.train_itr_setup()
    opt.zero_grad()
    _loss(model, 100).backward()
    precond.step()
    free_model = copy.deepcopy(model)  # what SGD would do without the guard: the same step, in a copy
    for p, q in zip(model.parameters(), free_model.parameters()):
        q.grad = p.grad.clone()
    free_opt = torch.optim.SGD(free_model.parameters(), lr=lr, momentum=0.9)
    free_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    free_layers = dict(zip(precond.layers, [m for m in free_model.modules() if isinstance(m, nn.Linear)]))
    before = _param_matrices(precond)
    free_before = {a: kfac.parameter_matrix(b).detach().clone() for a, b in free_layers.items()}
    opt.step()  # the guard judges this step (SNOpt armed it), and only this one
    free_opt.step()
    unguarded = {a: kfac.parameter_matrix(b).detach() - free_before[a] for a, b in free_layers.items()}
    taken = {layer: kfac.parameter_matrix(layer).detach() - before[layer] for layer in precond.layers}
    limit = momentum_limit(precond.max_step * REFERENCE_LR ** 2, 0.9)
    kappa = precond.last_stats.momentum_scale
    assert kappa < 1
    assert _realised_size(model, precond, unguarded, lr) > limit  # the free step would have overshot
    assert _realised_size(model, precond, taken, lr) == pytest.approx(limit, rel=1e-9)  # the bound, exactly
    for layer in precond.layers:  # the same direction, shortened by κ
        assert torch.allclose(taken[layer], kappa * unguarded[layer], rtol=1e-10, atol=1e-14)
    assert all(torch.allclose(opt.state[p]["momentum_buffer"], kappa * free_opt.state[q]["momentum_buffer"],
                              rtol=1e-10) for p, q in zip(model.parameters(), free_model.parameters()))


def test_steady_training_is_left_alone():
    guarded, free = _model(), _model()
    kwargs = dict(eps=0.05, update_freq=2, full_precond=True, lr=0.02)
    pg, pf = SNOpt(guarded, **kwargs), SNOpt(free, bound_momentum=False, **kwargs)
    og = torch.optim.SGD(guarded.parameters(), lr=0.02, momentum=0.9)
    of = torch.optim.SGD(free.parameters(), lr=0.02, momentum=0.9)
    for k in range(8):
        _train_step(guarded, pg, og, seed=k)
        _train_step(free, pf, of, seed=k)
        assert pg.last_stats.momentum_scale == 1.0
    assert all(torch.equal(a, b) for a, b in zip(guarded.parameters(), free.parameters()))


def test_adam_and_momentum_free_sgd_are_not_touched():
    for make in (lambda ps: torch.optim.Adam(ps, lr=1e-3), lambda ps: torch.optim.SGD(ps, lr=0.05)):
        guarded, free = _model(), _model()
        pg, pf = SNOpt(guarded, full_precond=True, update_freq=1), SNOpt(free, full_precond=True, update_freq=1,
                                                                        bound_momentum=False)
        og, of = make(guarded.parameters()), make(free.parameters())
        for k in range(4):
            _train_step(guarded, pg, og, seed=k)
            _train_step(free, pf, of, seed=k)
        assert all(torch.equal(a, b) for a, b in zip(guarded.parameters(), free.parameters()))


# ---- the divergence of issue-19's model: a small conv ODE on digits, written as the SNOpt README shows -----

class _Field(ODEFuncBase):
    """conv3x3(17→16) → ReLU → conv3x3(17→16), the time as an extra input plane before each convolution."""

    def __init__(self, opt, channels=16):
        super().__init__(opt)
        self.conv1 = nn.Conv2d(channels + 1, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels + 1, channels, 3, padding=1)

    def F(self, t, x):
        h = F.relu(self.conv1(torch.cat([torch.ones_like(x[:, :1]) * t, x], 1)))
        return self.conv2(torch.cat([torch.ones_like(h[:, :1]) * t, h], 1))


class _Net(nn.Module):
    def __init__(self, opt):
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.func = _Field(opt)
        self.ode = ODEBlock(opt, self.func, odeint_symplectic_adjoint, [0.0, 1.0], is_clf_problem=True)
        self.head = nn.Linear(16, 10)
        self.odes, self.ode_mods = [self.ode], list(self.func.modules())

    def forward(self, x):
        return self.head(F.relu(self.ode(F.relu(self.stem(x)))).mean((2, 3)))


def _train_digits(seed, iterations, lr=0.02, **snopt):
    """Batch 64, SGD(lr, momentum 0.9) behind the original interface's SNOpt(net, eps=0.05,
    update_freq=100, full_precond=True), dopri5 at 1e-3; the losses, stopping once diverged."""
    d = data.digits()
    torch.manual_seed(seed)
    net = _Net(Options(tol=1e-3, ode_solver="dopri5", snopt_step_size=0.01))
    precond = CompatSNOpt(net, eps=0.05, update_freq=100, full_precond=True, **snopt)
    sgd = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    gen = _gen(seed)
    perm, pos, losses = torch.randperm(len(d.x_train), generator=gen), 0, []
    for _ in range(iterations):
        if pos + 64 > len(perm):
            perm, pos = torch.randperm(len(d.x_train), generator=gen), 0
        idx = perm[pos:pos + 64]
        pos += 64
        precond.train_itr_setup()
        sgd.zero_grad()
        loss = F.cross_entropy(net(d.x_train[idx]), d.y_train[idx])
        loss.backward()
        precond.step()
        sgd.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]) or losses[-1] > 10 * losses[0]:
            break
    return losses


# Whether a run at the edge of stability diverges depends on rounding: at lr 0.02 the original method
# diverged on 2 of 5 seeds on one machine and on 0 of 4 (seed 3 included) on another of the same kind,
# where the guards before the momentum guard still diverged on seeds 2 and 3. At lr 0.05 the original
# method diverges on seed 3 within 20 iterations (loss 37 against 2.3), far from that edge.
@pytest.mark.filterwarnings("ignore:SNOpt's step bound")
@pytest.mark.parametrize("settings", [
    dict(lr=0.05, adaptive_damping=False, early_refresh=False, max_step=None),  # the original method
    dict(bound_momentum=False),  # the guards before the momentum guard
], ids=["original-method-lr0.05", "earlier-guards-lr0.02"])
def test_the_small_conv_ode_diverges_without_the_momentum_guard(settings):
    losses = _train_digits(seed=3, iterations=60, **settings)
    assert not math.isfinite(losses[-1]) or losses[-1] > 10 * losses[0], losses  # diverged (loss > 10x its first)


@pytest.mark.filterwarnings("ignore:SNOpt's step bound")
@pytest.mark.parametrize("lr", [0.02, 0.05])
def test_the_momentum_guard_keeps_the_small_conv_ode_training(lr):
    losses = _train_digits(seed=3, iterations=60, lr=lr)
    assert len(losses) == 60 and max(losses) < 3 * losses[0], losses
    assert sum(losses[-10:]) / 10 < losses[0] - 0.3  # and it learns: the loss falls well below the start
