"""Solver benchmarks: nodeopt against torchdiffeq.

Run from the repository root::

    python -m benchmarks.solvers            # full run (a few minutes on 2 CPU cores)
    python -m benchmarks.solvers --quick    # smoke mode (about a minute)

Options: ``--out PATH`` (JSON, default ``benchmarks/out/solvers.json``),
``--threads N`` (torch intra-op threads, default 1, applied to both libraries),
``--part methods|overhead|all``.

Two parts:

1. **Methods.** ``y' = A y`` with ``A = [[-0.1, 2], [-2, -0.1]]`` (a damped
   rotation), a batch of initial states, float64, ``t = [0, 10]``; the truth is
   ``y0 @ expm(10 A)^T``. Every nodeopt method (adaptive ones at several
   tolerances with the default PI controller, fixed ones at several step
   sizes) and torchdiffeq's counterpart at the same settings: function
   evaluations, accepted and rejected steps, wall time (median of interleaved
   repeats) and the largest absolute error at ``t = 10``.

2. **Overhead** (the headline). A 2-D neural ODE: MLP 2→64→64→2 (tanh), batch
   1024, float32, dopri5, ``rtol = atol = 1e-6``. nodeopt runs with
   ``controller="i"`` (torchdiffeq's step-size rule) so that both libraries
   make (nearly) the same number of evaluations. Three modes: forward under
   ``torch.no_grad``, forward with autograd on, and forward + backward. Each
   round times nodeopt, torchdiffeq and the bare function evaluations (the MLP
   called ``nfe`` times) back to back; the order alternates between rounds.
   Medians over the rounds, and the median (and quartiles) of the per-round
   ratios, are reported; ``loop overhead = total - nfe x (time of one
   evaluation)``. As cross-checks of the overhead: the time outside ``func``
   inside the same solves (a timing wrapper around the MLP), and the same
   solve with a trivial linear field on the same state, where the loop is
   nearly all there is.

Everything printed is also written to the JSON file, with the raw samples.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

import nodeopt

from .common import Counted, describe, environment, interleaved, median, quartiles, ratios, timed

try:
    import torchdiffeq
except ImportError:  # the benchmark still runs nodeopt's side without it
    torchdiffeq = None

# ---- settings -------------------------------------------------------------------

ADAPTIVE = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun", "tsit5")
FIXED = ("euler", "midpoint", "heun2", "heun3", "rk4", "rk38")
# nodeopt name -> torchdiffeq name (torchdiffeq's "rk4" is Kutta's 3/8 rule; it has no
# classical RK4 and no tsit5).
TORCHDIFFEQ_NAME = {"dopri5": "dopri5", "dopri8": "dopri8", "bosh3": "bosh3", "fehlberg2": "fehlberg2",
                    "adaptive_heun": "adaptive_heun", "euler": "euler", "midpoint": "midpoint",
                    "heun2": "heun2", "heun3": "heun3", "rk38": "rk4"}

LINEAR_A = ((-0.1, 2.0), (-2.0, -0.1))
LINEAR_T_END = 10.0
LINEAR_BATCH = 16
MAX_STEPS = 100_000
SKIP_STEPS = 50_000     # skip a setting predicted to need more steps than this (the order of 1e5)

MLP_WIDTH = 64
MLP_BATCH = 1024
MLP_GAIN = 2.0          # every parameter of PyTorch's default init times this
MLP_T_END = 10.0        # with the gain: a few tens of dopri5 steps at rtol = atol = 1e-6
MLP_TOL = 1e-6
GOAL_RATIO = 0.7


# ---- counting wrappers -----------------------------------------------------------------


class TimedCalls:
    """``func`` that adds up the wall time spent inside it (to split a solve into function and loop)."""

    def __init__(self, func: Callable):
        self.func = func
        self.inside = 0.0

    def __call__(self, t, y):
        start = time.perf_counter()
        out = self.func(t, y)
        self.inside += time.perf_counter() - start
        return out


FIXED_TD_METHODS = ("euler", "midpoint", "heun2", "heun3", "rk4")


def _torchdiffeq_counts(func, y0, t, **kwargs) -> tuple[torch.Tensor, dict]:
    fixed = kwargs.get("method") in FIXED_TD_METHODS
    counted = Counted(func)
    ys = torchdiffeq.odeint(counted, y0, t, **kwargs)
    if fixed:
        # Fixed-grid solvers take no step callbacks: the grid gives the step count.
        return ys, {"nfe": counted.nfe, "n_steps": _fixed_grid_steps(t, kwargs["options"]["step_size"]),
                    "n_rejected": 0}
    return ys, {"nfe": counted.nfe, "n_steps": counted.accepted, "n_rejected": counted.rejected}


def _fixed_grid_steps(t: torch.Tensor, h: float) -> int:
    """The steps of torchdiffeq's grid from ``step_size`` (``ceil(span / h + 1)`` points)."""
    span = float(t[-1] - t[0])
    return int(math.ceil(span / h + 1)) - 1


# ---- part 1: methods on a linear problem with a known solution ---------------------------------


class LinearField:
    """``y' = y A^T`` on a batch of row vectors."""

    def __init__(self, a: torch.Tensor):
        self.at = a.T.contiguous()

    def __call__(self, t, y):
        return y @ self.at


def _predicted_steps(prev_steps: int, prev_tol: float, tol: float, error_order: int) -> float:
    """Steps an adaptive method should need at ``tol`` given what it took at ``prev_tol``."""
    return prev_steps * (prev_tol / tol) ** (1.0 / (error_order + 1))


def _repeats_for(seconds: float, budget: float, lo: int, hi: int) -> int:
    return max(lo, min(hi, int(budget / max(seconds, 1e-9))))


def bench_methods(quick: bool) -> list[dict]:
    dtype = torch.float64
    gen = torch.Generator().manual_seed(1)
    a = torch.tensor(LINEAR_A, dtype=dtype)
    y0 = torch.randn(LINEAR_BATCH, 2, generator=gen, dtype=dtype)
    t = torch.tensor([0.0, LINEAR_T_END], dtype=dtype)
    truth = y0 @ torch.linalg.matrix_exp(a * LINEAR_T_END).T
    field = LinearField(a)

    tols = (1e-4, 1e-6) if quick else (1e-4, 1e-6, 1e-8)
    steps = (0.1, 0.01) if quick else (0.1, 0.01, 0.001)
    budget, lo, hi = (0.2, 1, 3) if quick else (1.0, 3, 9)
    skip_steps = SKIP_STEPS // 10 if quick else SKIP_STEPS

    settings = [(m, "tol", tol) for m in ADAPTIVE for tol in tols] + [(m, "h", h) for m in FIXED for h in steps]
    rows = []
    last_steps: dict[str, tuple[float, int]] = {}
    for method, kind, value in settings:
        row = {"method": method, "kind": kind, "value": value, "torchdiffeq_method": TORCHDIFFEQ_NAME.get(method)}
        if kind == "tol":
            kwargs = dict(rtol=value, atol=value, method=method)
            no_opts = {"max_num_steps": MAX_STEPS}
            td_opts = {"max_num_steps": MAX_STEPS}
            prev = last_steps.get(method)
            if prev is not None:
                order = nodeopt.solvers.get_method(method).tableau.error_order
                guess = _predicted_steps(prev[1], prev[0], value, order)
                if guess > skip_steps:
                    row["skipped"] = f"~{guess:.1e} steps predicted"
                    rows.append(row)
                    _print_method_row(row)
                    continue
        else:
            kwargs = dict(method=method)
            no_opts = {"step_size": value}
            td_opts = {"step_size": value}

        # Counts and errors (one untimed solve each).
        try:
            sol = nodeopt.solve(field, y0, t, options=no_opts, **kwargs)
        except RuntimeError as exc:
            row["nodeopt"] = {"failed": str(exc)}
        else:
            s = sol.stats
            row["nodeopt"] = {"nfe": s.nfe, "n_steps": s.n_steps, "n_rejected": s.n_rejected,
                              "max_error": float((sol.values[-1] - truth).abs().max())}
            if kind == "tol":
                last_steps[method] = (value, s.n_steps + s.n_rejected)
        td_name = TORCHDIFFEQ_NAME.get(method)
        if td_name is not None and torchdiffeq is not None:
            td_kwargs = dict(kwargs, method=td_name)
            try:
                ys, counts = _torchdiffeq_counts(field, y0, t, options=td_opts, **td_kwargs)
            except (AssertionError, RuntimeError) as exc:
                row["torchdiffeq"] = {"failed": str(exc)}
            else:
                row["torchdiffeq"] = dict(counts, max_error=float((ys[-1] - truth).abs().max()))

        # Wall time: the two libraries interleaved.
        fns = {}
        if "failed" not in row["nodeopt"]:
            fns["nodeopt"] = lambda: nodeopt.solve(field, y0, t, options=no_opts, **kwargs)
        if "torchdiffeq" in row and "failed" not in row["torchdiffeq"]:
            fns["torchdiffeq"] = lambda: torchdiffeq.odeint(field, y0, t, options=td_opts, **td_kwargs)
        if fns:
            first = max(timed(fn) for fn in fns.values())
            reps = _repeats_for(first, budget, lo, hi)
            samples = interleaved(fns, repeats=reps, warmup=0)
            for lib, xs in samples.items():
                row[lib]["time_s"] = median(xs)
                row[lib]["time_samples_s"] = xs
        rows.append(row)
        _print_method_row(row)
    return rows


def _fmt_err(x: Optional[float]) -> str:
    return "—" if x is None else f"{x:.1e}"


def _print_method_row(row: dict) -> None:
    print("  " + _method_row_cells(row).replace("|", " ").strip(), flush=True)


def _setting(row: dict) -> str:
    return f"tol {row['value']:.0e}" if row["kind"] == "tol" else f"h {row['value']:g}"


def _lib_cells(d: Optional[dict]) -> list[str]:
    if d is None:
        return ["—"] * 5
    if "failed" in d:
        return ["failed"] + ["—"] * 4
    t = d.get("time_s")
    return [str(d["nfe"]), f"{d['n_steps']}/{d['n_rejected']}", "—" if t is None else f"{t * 1e3:.1f}",
            _fmt_err(d["max_error"]), ""]


def _method_row_cells(row: dict) -> str:
    name = row["method"] + ("" if row.get("torchdiffeq_method") in (None, row["method"])
                            else f" (td: {row['torchdiffeq_method']})")
    if "skipped" in row:
        return f"| {name} | {_setting(row)} | skipped: {row['skipped']} |" + " |" * 8
    a = _lib_cells(row.get("nodeopt"))[:4]
    b = _lib_cells(row.get("torchdiffeq"))[:4]
    ratio = "—"
    na, nb = row.get("nodeopt", {}), row.get("torchdiffeq", {}) or {}
    if "time_s" in na and "time_s" in nb:
        ratio = f"{na['time_s'] / nb['time_s']:.2f}"
    return f"| {name} | {_setting(row)} | " + " | ".join(a) + " | " + " | ".join(b) + f" | {ratio} |"


def methods_markdown(rows: list[dict]) -> str:
    head = ("| method | setting | nodeopt nfe | steps/rej | time ms | max err | torchdiffeq nfe | steps/rej "
            "| time ms | max err | time ratio |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    return head + "\n" + "\n".join(_method_row_cells(r) for r in rows)


# ---- part 2: loop overhead on a neural ODE ---------------------------------------------------------


class MLPField(nn.Module):
    """``dz/dt = MLP(z)``: 2 → 64 → 64 → 2 with tanh; ``t`` is not used (the same for both libraries)."""

    def __init__(self, width: int = MLP_WIDTH, gain: float = MLP_GAIN):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                                 nn.Linear(width, 2))
        with torch.no_grad():
            for p in self.parameters():
                p.mul_(gain)

    def forward(self, t, z):
        return self.net(z)


def _solvers(field, y0, t, tol):
    """The two timed solves: nodeopt with torchdiffeq's step-size rule, and torchdiffeq."""

    def run_nodeopt(f=field):
        return nodeopt.odeint(f, y0, t, rtol=tol, atol=tol, method="dopri5", options={"controller": "i"})

    def run_torchdiffeq(f=field):
        return torchdiffeq.odeint(f, y0, t, rtol=tol, atol=tol, method="dopri5")

    return {"nodeopt": run_nodeopt, "torchdiffeq": run_torchdiffeq}


def _counts(field, y0, t, tol) -> tuple[dict, float]:
    """nfe and steps of both solves (and of nodeopt's default controller), and how far apart they end."""
    with torch.no_grad():
        sol = nodeopt.solve(field, y0, t, rtol=tol, atol=tol, method="dopri5", options={"controller": "i"})
        sol_pi = nodeopt.solve(field, y0, t, rtol=tol, atol=tol, method="dopri5")
        ys_td, td_counts = _torchdiffeq_counts(field, y0, t, rtol=tol, atol=tol, method="dopri5")
    counts = {"nodeopt": {"nfe": sol.stats.nfe, "n_steps": sol.stats.n_steps, "n_rejected": sol.stats.n_rejected},
              "torchdiffeq": td_counts,
              "nodeopt_pi": {"nfe": sol_pi.stats.nfe, "n_steps": sol_pi.stats.n_steps,
                             "n_rejected": sol_pi.stats.n_rejected}}
    return counts, float((sol.values[-1] - ys_td[-1]).abs().max())


def _attempts(c: dict) -> int:
    return c["n_steps"] + c["n_rejected"]


def _in_solve_overhead(field, y0, t, tol, counts, repeats: int, grad: bool) -> dict:
    """Loop overhead measured inside each solve: total time minus the time spent in ``func``."""
    wrapped = TimedCalls(field)
    runs = _solvers(wrapped, y0, t, tol)
    ctx = torch.enable_grad if grad else torch.no_grad

    def outside(fn) -> float:  # the solve's time less the time inside func
        wrapped.inside = 0.0
        with ctx():
            return timed(lambda: fn(wrapped)) - wrapped.inside

    out = interleaved(runs, repeats, measure=outside)
    return {lib: {"overhead_s": median(xs), "overhead_per_step_s": median(xs) / _attempts(counts[lib]),
                  "samples_s": xs} for lib, xs in out.items()}


def bench_overhead(quick: bool) -> dict:
    torch.manual_seed(0)
    field = MLPField()
    gen = torch.Generator().manual_seed(0)
    y0 = torch.randn(MLP_BATCH, 2, generator=gen)
    t = torch.tensor([0.0, MLP_T_END])
    tol = MLP_TOL
    repeats, warmup = (5, 1) if quick else (25, 3)
    runs = _solvers(field, y0, t, tol)
    counts, max_diff = _counts(field, y0, t, tol)
    n_eval = counts["nodeopt"]["nfe"]

    # The bare function evaluations, per mode. Under autograd the input requires
    # grad so that, as inside a solve, the first layer's backward also computes
    # the gradient with respect to its input.
    y_leaf = y0.clone().requires_grad_(True)
    ones = torch.ones_like(y0)

    def fn_nograd():
        with torch.no_grad():
            for _ in range(n_eval):
                field(t[0], y0)

    def fn_forward():
        return [field(t[0], y_leaf) for _ in range(n_eval)]  # graphs held until the end, as in a solve

    def fn_backward():
        outs = [field(t[0], y_leaf) for _ in range(n_eval)]
        torch.autograd.backward(outs, [ones] * n_eval)
        field.zero_grad(set_to_none=True)
        y_leaf.grad = None

    def nograd(fn):
        def g():
            with torch.no_grad():
                fn()
        return g

    def backward(fn):
        def g():
            fn()[-1].square().mean().backward()
            field.zero_grad(set_to_none=True)
        return g

    modes = {
        "forward (no_grad)": (nograd(runs["nodeopt"]), nograd(runs["torchdiffeq"]), fn_nograd),
        "forward (autograd on)": (runs["nodeopt"], runs["torchdiffeq"], fn_forward),
        "forward + backward": (backward(runs["nodeopt"]), backward(runs["torchdiffeq"]), fn_backward),
    }
    results = {}
    for mode, (fa, fb, ff) in modes.items():
        samples = interleaved({"nodeopt": fa, "torchdiffeq": fb, "function": ff}, repeats=repeats, warmup=warmup)
        pairs = ratios(samples, "nodeopt", "torchdiffeq")
        per_eval = median(samples["function"]) / n_eval
        entry = {"ratio_median_of_pairs": median(pairs), "ratio_quartiles": quartiles(pairs),
                 "ratio_of_medians": median(samples["nodeopt"]) / median(samples["torchdiffeq"]),
                 "function_time_per_eval_s": per_eval, "samples_s": samples}
        for lib in ("nodeopt", "torchdiffeq"):
            c = counts[lib]
            total = median(samples[lib])
            fn_time = per_eval * c["nfe"]
            entry[lib] = {"time_s": total, "time_per_eval_s": total / c["nfe"], "function_time_s": fn_time,
                          "overhead_s": total - fn_time, "overhead_per_step_s": (total - fn_time) / _attempts(c),
                          "overhead_fraction": (total - fn_time) / total}
        if mode != "forward + backward":
            entry["in_solve"] = _in_solve_overhead(field, y0, t, tol, counts, repeats,
                                                   grad=mode == "forward (autograd on)")
        results[mode] = entry
        print(f"  {mode:22s} nodeopt {entry['nodeopt']['time_s'] * 1e3:8.2f} ms   torchdiffeq "
              f"{entry['torchdiffeq']['time_s'] * 1e3:8.2f} ms   ratio {entry['ratio_median_of_pairs']:.3f}   "
              f"function alone {per_eval * n_eval * 1e3:8.2f} ms", flush=True)

    # The loop alone: the same solve with a vector field that costs almost nothing.
    cheap = LinearField(torch.tensor(LINEAR_A, dtype=y0.dtype))
    cheap_counts, _ = _counts(cheap, y0, t, tol)
    cheap_runs = {lib: nograd(lambda fn=fn: fn(cheap)) for lib, fn in _solvers(cheap, y0, t, tol).items()}
    cheap_samples = interleaved(cheap_runs, repeats=repeats, warmup=warmup)
    cheap_res = {lib: {"time_s": median(xs), "per_step_s": median(xs) / _attempts(cheap_counts[lib]),
                       "samples_s": xs, **cheap_counts[lib]} for lib, xs in cheap_samples.items()}
    print(f"  {'trivial field, no_grad':22s} nodeopt {cheap_res['nodeopt']['per_step_s'] * 1e6:8.0f} µs/step "
          f"torchdiffeq {cheap_res['torchdiffeq']['per_step_s'] * 1e6:8.0f} µs/step", flush=True)

    headline = results["forward (no_grad)"]["ratio_median_of_pairs"]
    return {"setup": {"field": f"MLP 2→{MLP_WIDTH}→{MLP_WIDTH}→2 tanh, default init × {MLP_GAIN}",
                      "batch": MLP_BATCH, "dtype": "float32", "t": [0.0, MLP_T_END], "method": "dopri5",
                      "rtol": tol, "atol": tol, "nodeopt_options": {"controller": "i"},
                      "repeats": repeats, "warmup": warmup},
            "counts": counts, "max_abs_diff_final_state": max_diff, "modes": results,
            "trivial_field": {"field": "y @ A^T, A as in part 1, same 1024×2 float32 state", "counts": cheap_counts,
                              "results": cheap_res},
            "headline_ratio": headline, "goal_ratio": GOAL_RATIO, "goal_met": headline <= GOAL_RATIO}


def overhead_markdown(res: dict) -> str:
    c = res["counts"]
    lines = [
        "| mode | nodeopt ms | torchdiffeq ms | ratio nodeopt/td (quartiles) | per eval µs (nodeopt / td) "
        "| MLP alone µs/eval | loop overhead nodeopt ms (µs/step) | loop overhead td ms (µs/step) "
        "| in-solve overhead µs/step (nodeopt / td) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for mode, e in res["modes"].items():
        a, b = e["nodeopt"], e["torchdiffeq"]
        ins = e.get("in_solve")
        ins_cell = "—" if ins is None else (f"{ins['nodeopt']['overhead_per_step_s'] * 1e6:.0f} / "
                                            f"{ins['torchdiffeq']['overhead_per_step_s'] * 1e6:.0f}")
        lines.append(
            f"| {mode} | {a['time_s'] * 1e3:.1f} | {b['time_s'] * 1e3:.1f} | **{e['ratio_median_of_pairs']:.3f}** "
            f"({e['ratio_quartiles'][0]:.2f}–{e['ratio_quartiles'][1]:.2f}) | "
            f"{a['time_per_eval_s'] * 1e6:.0f} / {b['time_per_eval_s'] * 1e6:.0f} | "
            f"{e['function_time_per_eval_s'] * 1e6:.0f} | "
            f"{a['overhead_s'] * 1e3:.1f} ({a['overhead_per_step_s'] * 1e6:.0f}) | "
            f"{b['overhead_s'] * 1e3:.1f} ({b['overhead_per_step_s'] * 1e6:.0f}) | {ins_cell} |")
    tr = res["trivial_field"]["results"]
    lines += ["",
              f"nfe: nodeopt (controller \"i\") **{c['nodeopt']['nfe']}** ({c['nodeopt']['n_steps']} steps, "
              f"{c['nodeopt']['n_rejected']} rejected), torchdiffeq **{c['torchdiffeq']['nfe']}** "
              f"({c['torchdiffeq']['n_steps']} steps, {c['torchdiffeq']['n_rejected']} rejected); nodeopt with "
              f"its default PI controller: {c['nodeopt_pi']['nfe']} ({c['nodeopt_pi']['n_steps']} steps). "
              f"Largest difference of the two final states: {res['max_abs_diff_final_state']:.1e}.",
              "",
              "Loop overhead = median total − nfe × (median time of the MLP alone per evaluation), per attempted "
              "step; in-solve overhead = median of (total − time spent inside func) measured in the same solves "
              "with a timing wrapper (forward modes only). Trivial field (y @ Aᵀ on the same 1024×2 float32 "
              f"state, no_grad): nodeopt {tr['nodeopt']['per_step_s'] * 1e6:.0f} µs per step "
              f"({tr['nodeopt']['nfe']} nfe, {tr['nodeopt']['time_s'] * 1e3:.1f} ms), torchdiffeq "
              f"{tr['torchdiffeq']['per_step_s'] * 1e6:.0f} µs per step ({tr['torchdiffeq']['nfe']} nfe, "
              f"{tr['torchdiffeq']['time_s'] * 1e3:.1f} ms)."]
    return "\n".join(lines)


# ---- driver -------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.solvers", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode: fewer settings and repeats")
    parser.add_argument("--out", default="benchmarks/out/solvers.json", help="where to write the JSON results")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for both libraries")
    parser.add_argument("--part", choices=("methods", "overhead", "all"), default="all")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    env = environment("solvers", argv)
    print(describe(env) + (", quick mode" if args.quick else ""), flush=True)
    if torchdiffeq is None:
        print("  torchdiffeq is not installed: its columns stay empty and the overhead part is skipped")
    out = {"environment": env, "quick": args.quick}
    started = time.perf_counter()

    if args.part in ("methods", "all"):
        print(f"\n[1] methods: y' = A y, A = {LINEAR_A}, batch {LINEAR_BATCH}, float64, t = [0, {LINEAR_T_END:g}]",
              flush=True)
        out["methods"] = bench_methods(args.quick)
    if args.part in ("overhead", "all") and torchdiffeq is not None:
        print(f"\n[2] overhead: MLP 2→{MLP_WIDTH}→{MLP_WIDTH}→2, batch {MLP_BATCH}, float32, dopri5, "
              f"rtol = atol = {MLP_TOL:g}, t = [0, {MLP_T_END:g}]", flush=True)
        out["overhead"] = bench_overhead(args.quick)
    out["elapsed_s"] = time.perf_counter() - started

    print("\n" + "=" * 100)
    if "methods" in out:
        print("\nMethods (nodeopt's default PI controller; steps/rej = accepted/rejected steps; time = median wall "
              "time; max err = largest |y - y_true| at t = 10; time ratio = nodeopt / torchdiffeq)\n")
        print(methods_markdown(out["methods"]))
    if "overhead" in out:
        res = out["overhead"]
        print(f"\nOverhead (torch threads {args.threads}; medians of {res['setup']['repeats']} interleaved rounds)\n")
        print(overhead_markdown(res))
        print(f"\nHeadline: nodeopt / torchdiffeq forward (no_grad) time = {res['headline_ratio']:.3f}; "
              f"goal ≤ {GOAL_RATIO}: {'met' if res['goal_met'] else 'NOT met'}")
    print(f"\n(total {out['elapsed_s']:.0f} s)")

    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
