"""SNOpt: second-order preconditioning of neural ODEs (Liu, Chen & Theodorou, NeurIPS 2021).

Used around any ``torch.optim`` optimiser, as in the paper's code::

    precond = SNOpt(model, eps=0.05, update_freq=100, alpha=0.75)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    for x, y in loader:
        precond.train_itr_setup(); optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        precond.step(); optimizer.step()

On refresh iterations the forward and backward pass run inside a :class:`~nodeopt.optim.capture.CurvatureCapture`, which
gathers Kronecker factors of each ``Linear``/``Conv2d`` layer along the
backward pass of whatever gradient method the ODE uses; ``step()`` then
refreshes the eigenbases. Under ``torch.distributed`` (e.g. DDP) the factors of
every layer are first averaged over the ranks in one all-reduce, so every rank
preconditions with the same bases; everything else SNOpt computes (the step bound,
the damping's reduction ratio) reads the gradients, which DDP has already averaged,
so the ranks stay identical.
Refresh iterations are every ``update_freq``-th from the first and, while the
model moves fastest, also iterations 1, 2, 4, 8, … below ``update_freq``
(``early_refresh``): the basis computed at initialisation goes stale first.
On every iteration ``step()`` replaces each layer's
gradient by its EKFAC-preconditioned version (see ``kfac.py``) and bounds the
whole step: if ``Σ ⟨∇_nat, ∇⟩`` (the squared length of the step in the Fisher
metric, per unit learning rate) exceeds the bound ``c``, all preconditioned
gradients are scaled by ``sqrt(c / Σ ⟨∇_nat, ∇⟩)``, as K-FAC's KL clipping does
(Ba, Grosse & Martens 2017). ``c = max_step``, or, when the base optimiser's
learning rate ``lr`` is given, ``c = max_step · (0.02 / lr)²``: then the bound
caps the step actually taken, ``lr² Σ ⟨∇_nat, ∇⟩ ≤ max_step · 0.02²``, with the
default calibrated at the paper's learning rate 0.02.

The damping adapts (``adaptive_damping``, on by default): ``λ = eps · γ`` with
``γ ≥ 1`` set by the Levenberg–Marquardt rule of K-FAC (Martens & Grosse 2015,
§6.5) from the reduction ratio of the local quadratic model, measured every
five steps without an extra evaluation (see ``damping.py``). When the model
underestimates the curvature along the steps the optimiser actually takes
(momentum included), ``γ`` grows and the steps shorten; when the model is
good, ``γ`` returns to 1 and SNOpt is the original method. ``eps`` is the
smallest damping ever used.

The bound above acts on the newest preconditioned gradient, but SGD with momentum takes
the momentum buffer, built from earlier steps in the curvature of their time. With
``bound_momentum`` (on by default) SNOpt also judges the step the base optimiser is about to
take, momentum included, in the current metric, and shortens buffer and gradient together
when it exceeds what momentum makes of gradients held at the bound, ``c₀ / (1 − m)²``
(:mod:`nodeopt.optim.momentum`): KL clipping on the final update. It runs as a step
pre-hook of that optimiser, so the training loop stays as above.

After every ``step()``, ``precond.last_stats`` (a :class:`~nodeopt.optim.stats.SNOptStats`)
says what the step did: the bound's scale and the Fisher size it acted on, the damping,
whether it refreshed, the time the refresh spent gathering factors and eigendecomposing,
and the bytes it all-reduced across ranks.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from typing import Callable, Iterable, Optional, Union

import torch
from torch import nn

from . import damping, kfac
from .capture import CurvatureCapture
from .momentum import MomentumGuard
from .ranks import world_size
from .stats import SNOptStats

LAYER_TYPES = (nn.Linear, nn.Conv2d)
REFERENCE_LR = 0.02  # the learning rate at which max_step is calibrated (the paper's)


def ode_layers_of(model: nn.Module) -> list[nn.Module]:
    """The ``Linear``/``Conv2d`` layers inside the model's ODE blocks (``nodeopt.nn.ODEBlock``)."""
    from ..nn import ODEBlock

    found: list[nn.Module] = []
    for block in model.modules():
        if isinstance(block, ODEBlock):
            found.extend(m for m in block.modules() if isinstance(m, LAYER_TYPES) and m not in found)
    return found


class SNOpt(torch.optim.Optimizer):
    """Kronecker-factored second-order preconditioner for neural ODEs.

    Args:
        model: the whole network. Its ``Linear``/``Conv2d`` layers inside a
            ``nodeopt.nn.ODEBlock`` are the ODE layers; a model without one that
            calls ``nodeopt.odeint``/``solve`` itself gets its ODE layers found
            at the first refresh: those the backward pass differentiates inside
            a solve.
        eps: Tikhonov damping ``ε`` added to the running second moment.
        update_freq: refresh the factors and eigenbases every this many iterations.
        alpha: running-average coefficient of the second moment ``m₂``.
        full_precond: also precondition layers outside the ODEs (ordinary K-FAC).
        snopt_step_size: ``Δ``, the scale of the ODE layers' gradient samples
            (the original's sampling step; 0.01 suits ``t ∈ [0, 1]``).
        max_step: bound on ``Σ ⟨∇_nat, ∇⟩`` per step at the learning rate 0.02
            (None: unbounded, as the original).
        lr: the base optimiser's learning rate, a number or a function
            returning the current one (e.g. ``lambda: opt.param_groups[0]["lr"]``
            under a scheduler). Pass it: the bound then scales as
            ``(0.02 / lr)²`` so that it limits the step the optimiser takes
            (without it, large learning rates can still diverge, and SNOpt
            warns once when its bound first shortens a step).
        max_factor_columns: the most input vectors (batch × spatial locations)
            per evaluation that enter a layer's input factor ``A``; larger
            batches are subsampled evenly, a different subset at each
            evaluation. This keeps a refresh cheap for convolutions, whose
            ``A`` would otherwise cost several times the layer itself. None:
            every sample.
        early_refresh: also refresh at iterations 1, 2, 4, 8, … below ``update_freq``.
        adaptive_damping: adapt the damping above ``eps`` by the
            Levenberg–Marquardt rule (module docstring); False: fixed ``eps``,
            as the original.
        damping_interval: steps per Levenberg–Marquardt decision (K-FAC's ``T₁``).
        bound_momentum: also bound the step the base optimiser takes, momentum included: an SGD
            whose momentum buffer has grown too long for the current curvature has buffer and
            gradient shortened before its step (:mod:`nodeopt.optim.momentum`); needs ``max_step``.
        ode_layers: the layers inside ODEs; by default those inside any
            ``nodeopt.nn.ODEBlock`` of ``model``, else those found at the first refresh.

    Attributes:
        damping_factor: ``γ``, the current damping is ``eps · γ``.
        refreshes: how many times the eigenbases were refreshed.
        last_stats: what the last ``step()`` did (:class:`~nodeopt.optim.stats.SNOptStats`),
            None before the first.

    Raises:
        ValueError: for hyper-parameters out of range, or a model with no layer to precondition.
    """

    def __init__(self, model: nn.Module, eps: float = 0.05, update_freq: int = 100, alpha: float = 0.75,
                 full_precond: bool = False, *, snopt_step_size: float = 0.01, max_step: Optional[float] = 1.0,
                 lr: Union[float, Callable[[], float], None] = None, max_factor_columns: Optional[int] = 1024,
                 early_refresh: bool = True, adaptive_damping: bool = True, damping_interval: int = 5,
                 bound_momentum: bool = True, ode_layers: Optional[Iterable[nn.Module]] = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"SNOpt needs the model (an nn.Module), got {type(model).__name__}; pass the network "
                            f"itself, not model.parameters()")
        _check("eps", eps, lambda v: v > 0, "a positive number (0.05 to 0.1 works well)")
        _check("update_freq", update_freq, lambda v: v >= 1 and float(v).is_integer(), "a whole number ≥ 1")
        _check("alpha", alpha, lambda v: 0 <= v < 1, "a number in [0, 1) (0.75 is the paper's)")
        _check("snopt_step_size", snopt_step_size, lambda v: v > 0, "a positive number")
        if max_step is not None:
            _check("max_step", max_step, lambda v: v > 0, "a positive number, or None for no bound")
        lr = _scalar(lr)
        if lr is not None and not callable(lr):
            _check("lr", lr, lambda v: v > 0, "the base optimiser's positive learning rate (or a function "
                                              "returning it)")
        if max_factor_columns is not None:
            _check("max_factor_columns", max_factor_columns, lambda v: v >= 1 and float(v).is_integer(),
                   "a whole number ≥ 1, or None to use every sample")
        for name, value in (("early_refresh", early_refresh), ("adaptive_damping", adaptive_damping),
                            ("bound_momentum", bound_momentum)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False, got {value!r}")
        _check("damping_interval", damping_interval, lambda v: v >= 1 and float(v).is_integer(), "a whole number ≥ 1")
        ode = list(ode_layers) if ode_layers is not None else ode_layers_of(model)
        trainable = [m for m in model.modules() if isinstance(m, LAYER_TYPES) and m.weight.requires_grad]
        # No ODEBlock and no ode_layers: the layers evaluated inside a solve are found at the first refresh.
        self._undecided = trainable if ode_layers is None and not ode else []
        others = [m for m in model.modules() if isinstance(m, LAYER_TYPES) and m not in ode]
        layers = self._undecided or [m for m in ode + (others if full_precond else []) if m.weight.requires_grad]
        if not layers:
            raise ValueError("SNOpt found no Linear or Conv2d layer to precondition: put the ODE's vector field in "
                             "a nodeopt.nn.ODEBlock, pass ode_layers=..., or set full_precond=True")
        self.model = model
        self.ode_layers, self.other_layers = ode, others if full_precond and not self._undecided else []
        self.layers = layers
        self.update_freq = int(update_freq)
        self.snopt_step_size = float(snopt_step_size)
        self.max_step = max_step
        self.lr = lr
        self.max_factor_columns = None if max_factor_columns is None else int(max_factor_columns)
        self.full_precond = full_precond
        self.early_refresh = early_refresh
        self.adaptive_damping = adaptive_damping
        self.damping_interval = int(damping_interval)
        self.momentum_guard = MomentumGuard(self, REFERENCE_LR) if bound_momentum else None
        for name, value in self._PROGRESS.items():
            setattr(self, name, value)
        self._capture: Optional[CurvatureCapture] = None
        self.last_stats: Optional[SNOptStats] = None
        self._warned_lr = False
        groups = [{"params": [m.weight] + ([m.bias] if m.bias is not None else []),
                   "layer_type": type(m).__name__} for m in layers]
        super().__init__(groups, dict(eps=float(eps), alpha=float(alpha)))

    @property
    def refresh_iteration(self) -> bool:
        """Whether this iteration gathers curvature and refreshes the eigenbases (see the module docstring)."""
        return scheduled_refresh(self.iteration, self.update_freq, self.early_refresh)

    def new_capture(self) -> CurvatureCapture:
        """A capture of this optimiser's layers (open it around a forward and backward pass)."""
        return CurvatureCapture(self.ode_layers, self.other_layers, self.snopt_step_size, self.max_factor_columns,
                                undecided_layers=self._undecided)

    def train_itr_setup(self) -> None:
        """Call before the forward pass: on refresh iterations, start gathering curvature."""
        self.end_capture()
        if self.refresh_iteration:
            self._capture = self.new_capture().__enter__()

    @torch.no_grad()
    def step(self, closure=None):
        """Refresh the bases if curvature was gathered, then precondition every layer's gradient.

        Afterwards ``last_stats`` holds this step's :class:`~nodeopt.optim.stats.SNOptStats`.
        """
        loss = closure() if closure is not None else None
        capture = self._capture
        self.end_capture()
        if self.adaptive_damping:
            self._judge_last_step()  # with the bases and m₂ that step used: before any refresh
        refresh_seconds, sent = 0.0, 0
        if capture is not None:
            start = time.perf_counter()
            sent = self._refresh(capture)
            refresh_seconds = time.perf_counter() - start
        pairs = []
        for layer, group in zip(self.layers, self.param_groups):
            state = self.state[layer.weight]
            if "q_a" not in state or not _has_gradient(layer):
                continue
            grad = kfac.gradient_matrix(layer)
            nat, state["m2"] = kfac.precondition(grad, state["q_a"], state["q_g"], state["m2"], group["alpha"],
                                                 group["eps"] * self.damping_factor, state["batch_size"])
            if self.adaptive_damping:  # what the next step() needs to judge this one
                state["last_grad"], state["last_param"] = grad.clone(), kfac.parameter_matrix(layer).clone()
            pairs.append((layer, grad, nat))
        sizes = [(nat * grad).sum() for _, grad, nat in pairs]  # ⟨∇_nat, ∇⟩ per layer, not yet synchronised
        bound = self.step_bound
        scale = self._step_scale(sizes, bound)
        for layer, _, nat in pairs:
            kfac.set_gradient_matrix(layer, nat * scale)
        self.last_stats = SNOptStats(
            iteration=self.iteration, refresh=capture is not None, layers=len(pairs), step_scale=float(scale),
            step_bound=bound, damping=self.param_groups[0]["eps"] * self.damping_factor,
            factor_seconds=capture.seconds if capture is not None else 0.0,
            factor_samples=capture.samples if capture is not None else 0, refresh_seconds=refresh_seconds,
            bytes_all_reduced=sent, layer_fisher_sizes=torch.stack(sizes) if sizes else None)
        if self.momentum_guard is not None:
            self.momentum_guard.armed = True  # the base optimiser's next step is judged, momentum included
        self.iteration += 1
        return loss

    def _judge_last_step(self) -> None:
        """Add the last step's actual and predicted loss changes; every ``damping_interval`` steps, adjust ``γ``."""
        changes = []
        for layer, group in zip(self.layers, self.param_groups):
            state = self.state[layer.weight]
            if "last_grad" not in state or not _has_gradient(layer):
                continue
            before, step = state["last_grad"], kfac.parameter_matrix(layer) - state["last_param"]
            changes.append(torch.stack([
                damping.actual_change(before, kfac.gradient_matrix(layer), step),
                damping.predicted_change(before, step, state["q_a"], state["q_g"], state["m2"],
                                         group["eps"] * self.damping_factor)]))
        if not changes:
            return
        actual, predicted = torch.stack(changes).sum(0).tolist()
        if not (math.isfinite(actual) and math.isfinite(predicted)):
            return
        self._actual_change += actual
        self._predicted_change += predicted
        self._judged_steps += 1
        if self._judged_steps == self.damping_interval:
            self.damping_factor = damping.adjust(self.damping_factor, self._actual_change, self._predicted_change,
                                                 self.damping_interval)
            self._actual_change = self._predicted_change = 0.0
            self._judged_steps = 0

    @property
    def step_bound(self) -> Optional[float]:
        """The bound ``c`` on ``Σ ⟨∇_nat, ∇⟩`` (see the module docstring); None when unbounded."""
        if self.max_step is None:
            return None
        if self.lr is None:
            return self.max_step
        lr = _scalar(self.lr() if callable(self.lr) else self.lr)
        _check("lr", lr, lambda v: v > 0, "a positive learning rate (the value returned by SNOpt's lr function)")
        return self.max_step * (REFERENCE_LR / lr) ** 2

    def _step_scale(self, sizes: list[torch.Tensor], bound: Optional[float]) -> float:
        """``min(1, sqrt(bound / Σ sizes))``; synchronises with the device only when there is a bound."""
        if bound is None or not sizes:
            return 1.0
        size = sum(float(s) for s in sizes)
        if size <= bound:
            return 1.0
        if self.lr is None and not self._warned_lr:
            self._warned_lr = True
            warnings.warn("SNOpt's step bound shortened a step assuming the base optimiser's learning rate is 0.02; "
                          "pass lr=... (the optimiser's lr, or a function returning it) so that the bound caps the "
                          "step actually taken at every learning rate", stacklevel=_user_stacklevel())
        return math.sqrt(bound / size)

    def _refresh(self, capture: CurvatureCapture) -> int:
        """New eigenbases from the captured factors; returns the bytes all-reduced across ranks."""
        self.refreshes += 1
        if self._undecided:
            self._decide_ode_layers(capture)
        gathered = []  # (layer, its sums, its factors (A, G)) of every layer the backward pass reached
        for layer in self.ode_layers + self.other_layers:
            sums = capture.factor_sums(layer)
            factors = sums.factors()
            if factors is not None:
                gathered.append((layer, sums, factors))
        factors, batches, sent = _average_across_ranks([f for _, _, pair in gathered for f in pair],
                                                       [sums.batch_size for _, sums, _ in gathered])
        for (layer, sums, _), a, g, batch in zip(gathered, factors[::2], factors[1::2], batches):
            e_a, q_a = kfac.eigenbasis(a)
            e_g, q_g = kfac.eigenbasis(g)
            state = self.state[layer.weight]
            state.update(q_a=q_a, q_g=q_g, m2=torch.outer(e_g, e_a) * sums.locations, batch_size=batch)
        return sent

    def _decide_ode_layers(self, capture: CurvatureCapture) -> None:
        """The layers the backward pass differentiated inside a solve are the ODE layers; the rest are not."""
        self.ode_layers = [m for m in self._undecided if capture.inside_ode(m)]
        others = [m for m in self._undecided if not capture.inside_ode(m)]
        self.other_layers = others if self.full_precond else []
        self._undecided = []
        if not self.ode_layers and not self.full_precond:
            raise ValueError("SNOpt found no Linear or Conv2d layer evaluated inside an ODE solve in the first "
                             "iteration (and full_precond=False leaves the others alone): solve the ODE with nodeopt "
                             "(odeint, solve or nodeopt.nn.ODEBlock) inside the model's forward, pass "
                             "ode_layers=..., or set full_precond=True")

    def end_capture(self) -> None:
        """Stop gathering curvature now: remove the hooks and stop listening.

        ``step()`` does this itself; call it when an iteration fails between
        ``train_itr_setup()`` and ``step()`` (e.g. the solver raised).
        """
        if self._capture is not None:
            self._capture.__exit__(None, None, None)
            self._capture = None

    # Progress beside torch's per-parameter state, with the values of a fresh optimiser.
    _PROGRESS = dict(iteration=0, refreshes=0, damping_factor=1.0, _actual_change=0.0, _predicted_change=0.0,
                     _judged_steps=0)

    def state_dict(self) -> dict:
        out = super().state_dict()
        out.update({name: getattr(self, name) for name in self._PROGRESS})
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        for name, default in self._PROGRESS.items():
            setattr(self, name, type(default)(state_dict.pop(name, default)))
        super().load_state_dict(state_dict)


def _has_gradient(layer: nn.Module) -> bool:
    """Whether the backward pass reached the layer's weight (and bias)."""
    return layer.weight.grad is not None and (layer.bias is None or layer.bias.grad is not None)


def scheduled_refresh(iteration: int, update_freq: int, early: bool) -> bool:
    """Iteration 0 and every ``update_freq``-th; with ``early``, also 1, 2, 4, 8, … below ``update_freq``."""
    if iteration % update_freq == 0:
        return True
    return early and iteration < update_freq and iteration & (iteration - 1) == 0


def _average_across_ranks(factors: list[torch.Tensor], batch_sizes: list[int]) -> tuple[list, list, int]:
    """Under ``torch.distributed``: the factors' means and the batch sizes' sums over the ranks, in one message.

    Each rank's ``A`` and ``G`` are means over its own share of the batch, so their mean over
    equal shares is the factor of the whole batch; the batch sizes add up to the global batch,
    the ``B`` of the second-moment update that matches the DDP-averaged gradient. Every rank
    then eigendecomposes the same matrices: the same bases everywhere. The third value is the
    bytes of that one all-reduced buffer (0 on a single process).
    """
    ranks = world_size()
    if not factors or ranks == 1:
        return factors, batch_sizes, 0
    flat = torch.cat([f.reshape(-1) / ranks for f in factors]
                     + [torch.tensor(batch_sizes, dtype=factors[0].dtype, device=factors[0].device)])
    torch.distributed.all_reduce(flat)
    out, at = [], 0
    for f in factors:
        out.append(flat[at:at + f.numel()].reshape(f.shape))
        at += f.numel()
    return out, [int(round(b)) for b in flat[at:].tolist()], flat.numel() * flat.element_size()


def _scalar(value):
    """A one-element tensor as a Python number (torch optimisers accept a tensor lr); anything else unchanged."""
    return value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value


def _user_stacklevel() -> int:
    """The ``stacklevel`` of the first caller outside nodeopt and torch (optimisers wrap ``step`` in decorators)."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_globals.get("__name__", "").split(".")[0] in ("nodeopt", "torch"):
        frame, level = frame.f_back, level + 1
    return level


def _check(name: str, value, ok, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"{name} must be {what}, got {value!r}")
