"""The checks of [`sdekit.testing.check_solver`][] for accounting (evaluation counts, blow-up, adaptive step control).

Each check registers itself with [`register_check`][sdekit.testing.conformance.register_check] when this module is
imported (by [`sdekit.testing.conformance`][])."""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st

from ..sde import NOISE_TYPES
from ..solve import PIController, solve
from . import problems as P
from . import strategies as S
from .conformance import (
    Case,
    CheckFailed,
    Context,
    _brownian,
    _fsal,
    _kind_label,
    _kinds,
    _max_abs,
    register_check,
)
from .counting import CountingProblem

F64 = torch.float64


# --- accounting ------------------------------------------------------------------------------------------------------
@register_check("nfe", capability=("ode",) + tuple(f"sde:{nt}" for nt in NOISE_TYPES), group="accounting")
def check_nfe(ctx: Context) -> None:
    """Drift evaluations counted by a wrapper equal ``solve``'s ``stats["nfe"]`` (the sum of the steps' ``nfe``) and
    the declared metadata: ``evals_per_step`` per step plus ``init_evals`` at the start (one for
    first-same-as-last tableaux)."""
    for kind in _kinds(ctx.caps):
        @st.composite
        def cases(draw, kind=kind):
            t0, t1 = draw(st.sampled_from([(0.0, 1.0), (1.0, 0.0)]))
            p = P.nonautonomous_sde(kind, shape=(draw(st.integers(1, 3)), 2), seed=draw(st.integers(0, 2**16)),
                                    t0=t0, t1=t1)
            return Case(p, None, seed=draw(st.integers(0, 2**16)))

        def prop(case: Case, kind=kind):
            p = case.problem
            counted, stats = [], []
            for n in (4, 8):
                cp = CountingProblem(p.sde)
                grid = torch.linspace(p.t0, p.t1, n + 1, dtype=F64)
                bm = _brownian(p, ctx.solver, p.x0, case.seed)
                sol = solve(cp, p.x0, ctx.solver, ts=grid, brownian=bm)
                counted.append(cp.n_drift)
                stats.append(sol.stats.get("nfe"))
            per_step = (counted[1] - counted[0]) / 4
            at_start = counted[0] - 4 * per_step
            s = ctx.solver
            declared = f"evals_per_step={s.evals_per_step}, init_evals={s.init_evals}"
            if _fsal(s):
                declared += " (FSAL tableau)"
            if counted != stats:
                raise CheckFailed(
                    f"solve reports nfe={stats[0]} and {stats[1]} for 4 and 8 steps of a {_kind_label(kind)}, but the "
                    f"drift was evaluated {counted[0]} and {counted[1]} times ({per_step:g} per step + {at_start:g} "
                    f"at the start): the steps' Step.nfe is wrong; the solver declares {declared}")
            if (per_step, at_start) != (s.evals_per_step, s.init_evals):
                raise CheckFailed(
                    f"on 4 and 8 steps of a {_kind_label(kind)} the drift was evaluated {counted[0]} and {counted[1]} "
                    f"times ({per_step:g} per step + {at_start:g} at the start), but the solver declares {declared}")

        ctx.property(_kind_label(kind), cases(), prop)


@register_check("blowup", capability="ode", group="accounting")
def check_blowup(ctx: Context) -> None:
    """``x' = x²`` from 10 on [0, 1] blows up at t = 0.1: ``solve`` must raise FloatingPointError (the state
    became NaN/Inf) rather than return NaN, a finite value, or raise another error. Tamed or implicit schemes
    that legitimately stay finite should skip this check."""
    p = P.blowup_ode()
    grid = torch.linspace(p.t0, p.t1, 41, dtype=F64)
    try:
        x = solve(p.sde, p.x0, ctx.solver, ts=grid).x
    except FloatingPointError:
        return
    except Exception as e:
        ctx.fail(f"a blowing-up solve raised {type(e).__name__}: {e}; expected FloatingPointError from solve "
                 "(the solver should let the state overflow to Inf/NaN so that solve can report it)", p)
        return
    ctx.fail(f"a blowing-up solve returned {'a non-finite' if not bool(torch.isfinite(x).all()) else 'a finite'} state "
             f"(max |x| = {_max_abs(x):.3g}) instead of raising FloatingPointError; the solver hides the blow-up "
             "(clamping, nan_to_num?)", p)


@register_check("adaptive", capability="adaptive", group="accounting")
def check_adaptive(ctx: Context) -> None:
    """An adaptive solve (PIController, rtol = atol = 1e-6) of a linear system stays within 100x the tolerance of
    the exact solution, and its counted evaluations equal ``stats["nfe"]``."""
    tol = 1e-6

    def prop(problem):
        cp = CountingProblem(problem.sde)
        sol = solve(cp, problem.x0, ctx.solver, t0=problem.t0, t1=problem.t1,
                    controller=PIController(rtol=tol, atol=tol))
        err = _max_abs(sol.x - problem.exact)
        if not err <= 100 * tol * max(1.0, _max_abs(problem.exact)):
            raise CheckFailed(f"adaptive solve at rtol = atol = {tol:g} is {err:.3g} from the exact solution of "
                              f"{problem!r} (allowed 100x tolerance); is the embedded error estimate right?")
        if cp.n_drift != sol.stats["nfe"]:
            raise CheckFailed(f"adaptive solve reports nfe={sol.stats['nfe']} but evaluated the drift {cp.n_drift} "
                              f"times on {problem!r}")

    ctx.property("linear", S.linear_odes(), prop)


@register_check("error_estimate", capability="adaptive", group="accounting")
def check_error_estimate(ctx: Context) -> None:
    """The embedded error estimate of one step from an exact state is a local error of the embedded solution:
    it shrinks like ``h^order`` (the embedded method is one order lower, its local error one higher), measured
    between ``h = 0.1 / rate`` and ``h / 2`` (errors well above the round-off of the matrix exponential), within
    0.5; and it is at least half the actual error of the step. Catches estimates missing the factor ``h`` (which
    a tolerance test can miss: an over-estimate only makes the solve more accurate, at more evaluations), of the
    wrong order, or too small."""

    def prop(problem):
        a = problem.extra.get("A")
        if a is None:
            return
        h = 0.1 / max(problem.rate, 1e-3) * (1 if problem.t1 > problem.t0 else -1)
        est, actual = [], []
        for hh in (h, h / 2):
            step = ctx.solver.step(problem.sde, problem.t0, problem.t0 + hh, problem.x0,
                                   None, ctx.solver.init(problem.sde, problem.t0, problem.x0))
            exact = problem.x0 @ torch.linalg.matrix_exp(a * hh).T
            est.append(_max_abs(step.error))
            actual.append(_max_abs(step.x1 - exact))
        if min(est) < 1e-12:
            return  # the estimate is at round-off here
        slope = math.log2(est[0] / est[1])
        declared = ctx.solver.order
        if declared is not None and abs(slope - declared) > 0.5:
            raise CheckFailed(f"one step of h = {h:.3g} and h/2 on {problem!r}: the error estimate shrinks like "
                              f"h^{slope:.2f} ({est[0]:.3g} -> {est[1]:.3g}), expected h^{declared:g} (the local "
                              "error of the embedded solution): is the estimate scaled by h?")
        if est[0] < 0.5 * actual[0]:
            raise CheckFailed(f"one step of h = {h:.3g} on {problem!r}: the error estimate {est[0]:.3g} is below the "
                              f"step's actual error {actual[0]:.3g}")

    ctx.property("linear", S.linear_odes(), prop)
