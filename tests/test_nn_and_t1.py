"""ODEBlock, CNF, integration-time optimisation and the original SNOpt interface."""

import math

import pytest
import torch
from torch import nn

import nodeopt
from nodeopt.nn import CNF, ODEBlock
from nodeopt.optim import IntegrationTimeOptimizer

DT = torch.float64


class Scalar(nn.Module):
    """dy/dt = a·y with one parameter a: y(t1) = y0·exp(a·t1)."""

    def __init__(self, a=0.5):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=DT))

    def forward(self, t, y):
        return self.a * y


# ---- CNF -----------------------------------------------------------------------------------------

def test_cnf_exact_log_density_change_of_a_linear_flow_is_minus_trace_times_time():
    a = torch.tensor([[0.3, 1.0], [-0.5, -0.1]], dtype=DT)

    class Lin(nn.Module):
        def forward(self, t, z):
            return z @ a.T

    z0 = torch.randn(4, 2, dtype=DT, generator=torch.Generator().manual_seed(0))
    z, logp = nodeopt.odeint(CNF(Lin()), (z0, torch.zeros(4, 1, dtype=DT)), torch.tensor([0.0, 2.0], dtype=DT),
                             rtol=1e-10, atol=1e-10)
    assert torch.allclose(logp[-1], torch.full((4, 1), -2.0 * float(torch.trace(a)), dtype=DT), atol=1e-8)
    assert torch.allclose(z[-1], z0 @ torch.linalg.matrix_exp(2.0 * a).T, atol=1e-8)


@pytest.mark.parametrize("divergence", ["rademacher", "gaussian"])
def test_hutchinson_divergence_is_unbiased(divergence):
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 3)).double()

    class Field(nn.Module):
        def forward(self, t, z):
            return net(z)

    z = torch.randn(2, 3, dtype=DT, generator=torch.Generator().manual_seed(1))
    state = (z, torch.zeros(2, 1, dtype=DT))
    exact = CNF(Field())(torch.tensor(0.0), state)[1]
    cnf = CNF(Field(), divergence, generator=torch.Generator().manual_seed(2))
    samples = []
    for _ in range(4000):
        cnf.reset_noise()
        samples.append(cnf(torch.tensor(0.0), state)[1])
    est = torch.stack(samples)
    stderr = est.std(0) / math.sqrt(len(samples))
    assert ((est.mean(0) - exact).abs() < 5 * stderr + 1e-12).all()


@pytest.mark.parametrize("gradient", ["adjoint", "onecheckpoint", "checkpoint", "symplectic"])
def test_cnf_gradients_match_backprop_for_every_method(gradient):
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2)).double()

    class Field(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, t, z):
            return self.net(z)

    cnf = CNF(Field(), "rademacher", generator=torch.Generator().manual_seed(4))
    z0 = torch.randn(5, 2, dtype=DT, generator=torch.Generator().manual_seed(5), requires_grad=True)

    def grads(g):
        cnf.reset_noise()
        cnf.generator.manual_seed(4)
        z, logp = nodeopt.odeint(cnf, (z0, torch.zeros(5, 1, dtype=DT)), torch.tensor([0.0, 1.0], dtype=DT),
                                 rtol=1e-8, atol=1e-8, gradient=g)
        loss = z[-1].square().sum() + logp[-1].sum()
        return torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss, [z0] + list(cnf.parameters()))])

    ref = grads("backprop")
    assert ((grads(gradient) - ref).norm() / ref.norm()).item() < (1e-6 if gradient == "adjoint" else 1e-10)


def test_cnf_rejects_an_unknown_divergence():
    with pytest.raises(ValueError, match="divergence='hutch'.*exact, rademacher, gaussian"):
        CNF(nn.Linear(2, 2), "hutch")


# ---- ODEBlock -------------------------------------------------------------------------------------

def test_odeblock_returns_the_final_state_and_its_time_gradient():
    block = ODEBlock(Scalar(0.5), t1=2.0, rtol=1e-10, atol=1e-10).double()
    block.track_time_gradient = True
    x = torch.tensor([[1.5], [2.0]], dtype=DT)
    y = block(x)
    assert torch.allclose(y, x * math.exp(1.0), rtol=1e-8)
    y.sum().backward()
    # dL/dt1 = Σ a·y(t1)
    assert block.last_times.grad[-1].item() == pytest.approx(0.5 * 3.5 * math.exp(1.0), rel=1e-7)


@pytest.mark.parametrize("gradient", ["backprop", "symplectic", "adjoint"])
def test_cnf_time_gradient_of_a_flow_integrated_backward_matches_finite_differences(gradient):
    """FFJORD integrates data at t1 back to noise at t0; dL/dt1 reaches the first of its times."""
    from nodeopt.tasks.models import FFJORD
    torch.manual_seed(0)
    model = FFJORD(2, hidden=(8,), rtol=1e-10, atol=1e-10, gradient=gradient).double()
    block = model.blocks[0]
    block.track_time_gradient = True
    x = torch.randn(6, 2, dtype=DT, generator=torch.Generator().manual_seed(1))
    model(x).mean().backward()
    dl_dt1 = block.last_times.grad[0].item()  # the solve runs over [t1, t0]

    def loss(t1):
        block.t1 = t1
        with torch.no_grad():
            return model(x).mean().item()

    h = 1e-5
    fd = (loss(1.0 + h) - loss(1.0 - h)) / (2 * h)
    assert dl_dt1 == pytest.approx(fd, rel=1e-5, abs=1e-8)


def test_odeblock_t1_must_stay_after_t0():
    block = ODEBlock(Scalar(), t1=1.0)
    with pytest.raises(ValueError, match="t1 must be greater than t0"):
        block.t1 = -1.0


# ---- integration time -------------------------------------------------------------------------------

def _t1_iteration(block, opt, t1opt, x):
    opt.zero_grad()
    loss = block(x).mean()
    loss.backward()
    t1opt.record()
    opt.step()
    return t1opt.step()


@pytest.mark.parametrize("method", ["baseline", "feedback"])
def test_t1_update_rules_against_hand_computed_values(method):
    a, t1, lr, reg, t1_lr = 0.5, 1.0, 0.1, 1e-2, 0.2
    block = ODEBlock(Scalar(a), t1=t1, rtol=1e-12, atol=1e-12)
    t1opt = IntegrationTimeOptimizer(block, method=method, t1_lr=t1_lr, t1_reg=reg, t1_update_freq=1, momentum=0.0)
    opt = torch.optim.SGD(block.parameters(), lr=lr)
    x = torch.tensor([[1.0], [3.0]], dtype=DT)
    new_t1 = _t1_iteration(block, opt, t1opt, x)
    # Hand-computed: L = mean(x e^{a t1}); dL/dt1 = mean(a x e^{a t1}); s = (dL/dt1) / B.
    e = math.exp(a * t1)
    s = (a * 2.0 * e) / 2
    q_t, q_tt = reg * t1 + s, reg + s * s
    if method == "baseline":
        expected = t1 - t1_lr * q_t
    else:
        grad_a = 2.0 * t1 * e  # dL/da = mean(x t1 e^{a t1})
        delta_a = -lr * grad_a
        expected = t1 - t1_lr * (q_t + s * grad_a * delta_a) / q_tt
    assert new_t1 == pytest.approx(expected, rel=1e-8)


def test_t1_running_averages_and_update_frequency():
    block = ODEBlock(Scalar(0.3), t1=1.0, rtol=1e-10, atol=1e-10)
    t1opt = IntegrationTimeOptimizer(block, method="baseline", t1_lr=0.1, t1_reg=0.0, t1_update_freq=3, momentum=0.5)
    opt = torch.optim.SGD(block.parameters(), lr=0.0)  # parameters fixed: s is the same every iteration
    x = torch.tensor([[2.0]], dtype=DT)
    ts = [_t1_iteration(block, opt, t1opt, x) for _ in range(3)]
    s = 0.3 * 2.0 * math.exp(0.3)
    assert ts[0] == ts[1] == 1.0  # no update before the third iteration
    assert ts[2] == pytest.approx(1.0 - 0.1 * s, rel=1e-8)


def test_t1_never_drops_below_its_floor():
    block = ODEBlock(Scalar(0.5), t1=0.2)
    t1opt = IntegrationTimeOptimizer(block, method="baseline", t1_lr=100.0, t1_update_freq=1, t1_min=0.15)
    opt = torch.optim.SGD(block.parameters(), lr=0.0)
    assert _t1_iteration(block, opt, t1opt, torch.ones(2, 1, dtype=DT)) == 0.15


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="greedy"), "method='greedy' is not known"),
    (dict(t1_lr=0.0), "t1_lr is out of range"),
    (dict(t1_update_freq=0), "t1_update_freq must be a whole number"),
])
def test_integration_time_optimizer_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        IntegrationTimeOptimizer(ODEBlock(Scalar()), **kwargs)


def test_recording_before_backward_says_what_to_do():
    t1opt = IntegrationTimeOptimizer(ODEBlock(Scalar()))
    with pytest.raises(RuntimeError, match="after loss.backward"):
        t1opt.record()


# ---- the original interface ----------------------------------------------------------------------

@pytest.mark.parametrize("solver", ["odeint_adjoint", "odeint_symplectic_adjoint"])
@pytest.mark.filterwarnings("ignore:SNOpt's step bound")  # the original API has no lr to pass
def test_the_original_readme_example_runs_after_changing_only_its_imports(solver):
    odesolve = getattr(nodeopt, solver)
    from nodeopt.compat import SNOpt, ODEFuncBase, ODEBlock  # noqa: N811
    from nodeopt.compat import Options as dict  # noqa: A001

    torch.manual_seed(0)
    input_dim = 3
    data = torch.randn(64, input_dim)
    targets = data @ torch.tensor([[0.5, -1.0, 0.2], [0.3, 0.1, -0.4], [-0.2, 0.6, 0.1]])
    training_loader = [(data[i:i + 16], targets[i:i + 16]) for i in range(0, 64, 16)] * 5

    def loss_function(out, y):
        return (out[-1] - y).square().mean()

    # ---- the README's code, verbatim from here on ----
    class ODEFunc(ODEFuncBase):
        def __init__(self, opt):
            super(ODEFunc, self).__init__(opt)
            self.linear = torch.nn.Linear(input_dim, input_dim)

        def F(self, t, z):
            return self.linear(z)

    class NeuralODE(torch.nn.Module):
        def __init__(self, ode):
            super(NeuralODE, self).__init__()
            self.ode = ode

        def forward(self, z):
            return self.ode(z)

        @property
        def odes(self):  # in case we have multiple odes, collect them in a list
            return [self.ode]

        @property
        def ode_mods(self):  # modules of all ode(s)
            return [mod for mod in self.ode.odefunc.modules()]

    # Create Neural ODE
    opt = dict(
        optimizer='SNOpt', tol=1e-3, ode_solver='dopri5', use_adaptive_t1=False, snopt_step_size=0.01)
    odefunc = ODEFunc(opt)
    integration_time = torch.tensor([0.0, 1.0]).float()
    ode = ODEBlock(opt, odefunc, odesolve, integration_time)
    net = NeuralODE(ode)

    # Create SNOpt optimizer
    precond = SNOpt(net, eps=0.05, update_freq=100)
    optim = torch.optim.SGD(net.parameters(), lr=0.001)

    # Training loop
    losses = []
    for (x, y) in training_loader:
        precond.train_itr_setup()  # <--- additional step for precond
        optim.zero_grad()

        loss = loss_function(net(x), y)
        loss.backward()

        # Run SNOpt optimizer
        precond.step()            # <--- additional step for precond
        optim.step()
        losses.append(loss.item())
    # ---- end of the README's code ----

    assert precond.iteration == len(training_loader)
    assert "q_a" in precond.state[odefunc.linear.weight]
    assert sum(losses[-4:]) < sum(losses[:4])
