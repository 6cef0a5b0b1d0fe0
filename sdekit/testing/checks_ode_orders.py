"""The checks of [`sdekit.testing.check_solver`][] for the ODE order and consistency (the orders group).

Each check registers itself with [`register_check`][sdekit.testing.conformance.register_check] when this module is
imported (by [`sdekit.testing.conformance`][])."""

from __future__ import annotations

import math

import torch

from ..bench import fit_order
from ..solve import solve
from . import problems as P
from . import strategies as S
from .conformance import (
    ODE_LEVELS,
    ROUNDOFF_FLOOR,
    CheckFailed,
    Context,
    _order_tol,
    _rms,
    register_check,
)

F64 = torch.float64


# --- ODE order ----------------------------------------------------------------------------------------------------
def _ode_errors(problem: P.Problem, solver) -> tuple[list[int], list[float]]:
    """Relative errors on uniform grids of n0 · 2^k steps until round-off (inf where the solve blew up). The
    error is the RMS over the states at 1/4, 1/2, 3/4 and all of the interval: the error at a single time can
    change sign as the step shrinks (and dip through zero), the errors at four times rarely do so together."""
    n0 = 2 ** max(2, math.ceil(math.log2(max(1.0, max(problem.rate, 1e-3) * problem.span))))
    times = [problem.t0 + (problem.t1 - problem.t0) * j / 4 for j in (1, 2, 3, 4)]
    if problem.solution is not None:
        exact = torch.stack([problem.solution(t) for t in times[:-1]] + [problem.exact])
    else:
        exact, times = problem.exact[None], times[-1:]
    scale = max(_rms(exact), 1e-300)
    steps, errs = [], []
    for k in range(ODE_LEVELS):
        n = n0 * 2**k
        grid = torch.linspace(problem.t0, problem.t1, n + 1, dtype=F64)
        try:
            sol = solve(problem.sde, problem.x0, solver, ts=grid, save_at=times)
            e = _rms(sol.xs - exact) / scale
        except FloatingPointError:
            e = math.inf
        steps.append(n)
        errs.append(e if math.isfinite(e) else math.inf)
        if e < ROUNDOFF_FLOOR:
            break
    return steps, errs


def measure_ode_order(problem: P.Problem, solver) -> tuple[float | None, list[int], list[float]]:
    """Measured order of ``solver`` on a closed-form ODE ``problem``: the least-squares slope (library
    [`fit_order`][sdekit.bench.fit_order]) of the error over the finest (at most 4) step sizes whose error is finite
    and above round-off, after the last blow-up. None when fewer than two such step sizes exist (errors at
    round-off from the start). Returns ``(order, steps, errors)``."""
    steps, errs = _ode_errors(problem, solver)
    last_bad = max((i for i, e in enumerate(errs) if not math.isfinite(e)), default=-1)
    good = [(n, e) for i, (n, e) in enumerate(zip(steps, errs)) if i > last_bad and e >= ROUNDOFF_FLOOR]
    window = good[-4:]
    if len(window) < 2:
        return None, steps, errs
    order, _ = fit_order([problem.span / n for n, _ in window], [e for _, e in window])
    return order, steps, errs


def _ladder_text(steps, errs) -> str:
    return ", ".join(f"n={n}: {e:.2e}" for n, e in zip(steps, errs))


def _ode_order_applies(solver, caps):
    return None if getattr(solver, "order", None) is not None else "the solver declares no ODE order"


@register_check("ode_order", capability="ode", applies=_ode_order_applies, group="orders")
def check_ode_order(ctx: Context) -> None:
    """Measured ODE order >= declared - tolerance on linear systems and Stuart–Landau oscillators (and, in the
    thorough profile, logistic and Riccati equations); fails also if every measurement exceeds the declared
    order by more than the tolerance (the declared order is too low)."""
    declared = float(ctx.solver.order)
    tol = _order_tol(declared)
    measured: list[tuple[float, P.Problem]] = []
    families = [("linear", S.linear_odes()), ("nonlinear", S.stuart_landau_odes())]
    # Scalar autonomous problems only up to order 4: above it float64 leaves no asymptotic range on them
    # (Dopri5, whose order-5 conditions hold to 1e-16, measures 3.3-4.2 on logistic equations).
    if ctx.profile.extra_problems and declared <= 4:
        families += [("logistic", S.logistic_odes()), ("riccati", S.riccati_odes())]

    for label, strategy in families:
        def prop(problem, label=label):
            order, steps, errs = measure_ode_order(problem, ctx.solver)
            if order is None:
                if all(e < ROUNDOFF_FLOOR * 100 for e in errs):
                    ctx.note(f"ode_order: errors at round-off on {problem!r}; order not measurable there")
                    return
                raise CheckFailed(
                    f"ODE order not measurable on {problem!r}: relative errors {_ladder_text(steps, errs)}")
            ctx.record_order(f"ode/{label}", order, declared)
            measured.append((order, problem))
            if order < declared - tol:
                raise CheckFailed(
                    f"measured ODE order {order:.2f} on {problem!r}, declared {declared:g} (tolerance {tol}); "
                    f"relative RMS errors {_ladder_text(steps, errs)}")

        ok = ctx.property(label, strategy, prop, examples=ctx.profile.order_examples)
        if not ok:
            return
    if measured and all(o > declared + tol for o, _ in measured):
        low, problem = min(measured, key=lambda m: m[0])
        ctx.fail(f"every measured ODE order exceeds the declared {declared:g} by more than {tol} (lowest "
                 f"{low:.2f}): the declared order is too low", problem)
    elif measured and max(o for o, _ in measured) > declared + 0.5:
        high, problem = max(measured, key=lambda m: m[0])
        ctx.note(f"ode_order: measured {high:.2f} > declared {declared:g} on {problem!r} (superconvergence on "
                 "this problem)")


@register_check("consistency", capability="ode", group="orders")
def check_consistency(ctx: Context) -> None:
    """The ODE error shrinks at least 8x when the step shrinks 16x (any consistent method, order >= 0.75)."""

    def prop(problem):
        n0 = 2 ** max(1, math.ceil(math.log2(max(1.0, problem.rate * problem.span))))
        scale = max(_rms(problem.exact), 1e-300)
        errs = []
        for n in (2 * n0, 32 * n0):
            grid = torch.linspace(problem.t0, problem.t1, n + 1, dtype=F64)
            x = solve(problem.sde, problem.x0, ctx.solver, ts=grid).x
            errs.append(_rms(x - problem.exact) / scale)
        if not errs[1] < ROUNDOFF_FLOOR * 100 and not errs[0] >= 8 * errs[1]:
            raise CheckFailed(
                f"the error does not shrink with the step on {problem!r}: relative error {errs[0]:.3g} with "
                f"{2 * n0} steps, {errs[1]:.3g} with {32 * n0} (a consistent method gains >= 8x); check that the "
                "weights sum to 1 and that the drift is evaluated at the stage states")

    ctx.property("linear", S.linear_odes(), prop)
