"""The checks of [`sdekit.testing.check_solver`][] for strong and weak SDE orders (the 'orders' group).

Each check registers itself with [`register_check`][sdekit.testing.conformance.register_check] when this module is
imported (by [`sdekit.testing.conformance`][])."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from ..bench import convergence_order, ladder_order
from ..sde import NOISE_TYPES
from . import problems as P
from . import strategies as S
from .conformance import (
    STRONG_ORDER_TOL,
    STRONG_STEPS,
    WEAK_ORDER_TOL,
    WEAK_STEPS,
    Case,
    CheckFailed,
    Context,
    _max_abs,
    _noise_caps,
    register_check,
)
from .noise import NotAffineError, exact_moments

F64 = torch.float64


# --- SDE orders -------------------------------------------------------------------------------------------------------
def _strong_families(ctx: Context, nt: str) -> list[tuple[str, object]]:
    """``[(label, strategy), ...]`` for noise type ``nt``: each family is its own property, so every profile
    draws it (the non-symmetric and nonlinear families tell a transposed diffusion Jacobian or missing cross
    terms apart; the non-commutative one, a missing or path-independent Lévy area)."""
    n = ctx.profile.strong_samples
    if nt == "additive":
        return [("additive", S.additive_linear_sdes(batch=n) if ctx.profile.extra_problems else S.ou_problems(batch=n))]
    if nt == "diagonal":
        return [("diagonal", S.gbm_problems(batch=n))]
    gbm = S.scalar_noise_gbms(batch=n) if nt == "scalar" else S.general_noise_gbms(batch=n)
    families = [(nt, gbm), (f"{nt}/non-symmetric", S.commuting_linear_sdes(noise_type=nt, batch=n)),
                (f"{nt}/nonlinear", S.sheared_gbms(noise_type=nt, batch=n)),
                (f"{nt}/non-autonomous", S.sheared_gbms(noise_type=nt, time_dependent=True, batch=n))]
    if nt == "general":  # a scheme without Lévy areas is of strong order 0.5 here, whatever it declares
        families.append(("general/non-commutative", S.heisenberg_sdes(batch=n)))
    return families


def _strong_applies(solver, caps):
    if any(solver.strong_order_for(nt) is not None for nt in _noise_caps(caps)):
        return None
    return "the solver declares no strong order"


@register_check("strong_order", capability=tuple(f"sde:{nt}" for nt in NOISE_TYPES), applies=_strong_applies,
                group="orders")
def check_strong_order(ctx: Context) -> None:
    """Strong order (``E|X_N - X(T)|`` over nested grids of 8..128 steps on one Brownian path per sample, library
    [`convergence_order`][sdekit.bench.convergence_order]) >= declared - tolerance, per supported noise type: GBM
    (diagonal); for scalar and general noise commuting GBMs, non-symmetric commuting linear SDEs, sheared GBMs
    (nonlinear, non-symmetric state-dependent Jacobian; autonomous and non-autonomous) and, for general noise, the
    Heisenberg SDE (non-commutative: order 0.5 without Lévy areas); Ornstein–Uhlenbeck (additive; exact pathwise
    solution by [`linear_pathwise`][sdekit.testing.problems.linear_pathwise])."""
    for nt in _noise_caps(ctx.caps):
        declared = ctx.solver.strong_order_for(nt)
        if declared is None:
            continue

        def prop(case: Case, nt=nt, declared=declared):
            p = case.problem
            rec = convergence_order(p.sde, ctx.solver, p.x0, t0=p.t0, t1=p.t1, steps=STRONG_STEPS, kind="strong",
                                    exact=p.pathwise, seed=case.seed, n_bootstrap=0)
            ctx.record_order(f"strong/{nt}", rec.order, declared)
            if not rec.order >= declared - STRONG_ORDER_TOL:
                raise CheckFailed(
                    f"measured strong order {rec.order:.2f} with {nt} noise on {case!r}, declared {declared:g} "
                    f"(tolerance {STRONG_ORDER_TOL}); mean errors "
                    + ", ".join(f"n={s}: {e:.2e}" for s, e in zip(STRONG_STEPS, rec.errors)))
            if rec.order > declared + 0.5:
                ctx.note(f"strong_order: measured {rec.order:.2f} > declared {declared:g} with {nt} noise on {p!r}")

        for label, family in _strong_families(ctx, nt):
            @st.composite
            def cases(draw, family=family):
                return Case(draw(family), seed=draw(st.integers(0, 2**20)))

            ctx.property(label, cases(), prop, examples=ctx.profile.order_examples)


def _weak_applies(solver, caps):
    return None if solver.weak_order_for("additive") is not None else "the solver declares no weak order"


@register_check("weak_order", capability="sde:additive", applies=_weak_applies, group="orders")
def check_weak_order(ctx: Context) -> None:
    """Weak order on OU and linear additive-noise SDEs, with the scheme's mean and covariance computed exactly by
    impulses ([`exact_moments`][sdekit.testing.noise.exact_moments]; no Monte-Carlo error): the error
    ``max|Δmean| + max|Δcov|`` over 8..64 steps must fall at least at the declared weak order - tolerance.
    Skipped (with a note) for a solver that is not affine in its noise on these problems."""
    declared = ctx.solver.weak_order_for("additive")

    def prop(problem: P.Problem):
        def error(n):
            grid = torch.linspace(problem.t0, problem.t1, n + 1, dtype=F64)
            mean, cov = exact_moments(problem.sde, ctx.solver, problem.x0[:1], grid)
            return _max_abs(mean - problem.mean[0]) + _max_abs(cov - problem.covariance)

        try:
            rec = ladder_order(ctx.solver.name, "weak", WEAK_STEPS, error, span=problem.span, declared=declared)
        except NotAffineError as e:
            ctx.note(f"weak_order not checked: {e}")
            return
        except ValueError:  # an error of exactly 0 (or not finite) cannot be fitted on a log scale
            rec = None
        errs = rec.errors if rec is not None else [error(n) for n in WEAK_STEPS]
        if min(errs) < 1e-13:
            ctx.note(f"weak_order: moments exact to round-off on {problem!r}")
            return
        if rec is None:
            raise CheckFailed(f"weak errors (exact moments) on {problem!r} are not finite: {errs}")
        order = rec.order
        ctx.record_order("weak/additive", order, declared)
        if not order >= declared - WEAK_ORDER_TOL:
            raise CheckFailed(
                f"measured weak order {order:.2f} (exact moments) on {problem!r}, declared {declared:g} (tolerance "
                f"{WEAK_ORDER_TOL}); errors of mean + covariance "
                + ", ".join(f"n={n}: {e:.2e}" for n, e in zip(WEAK_STEPS, errs)))

    ctx.property("additive", S.additive_linear_sdes(), prop, examples=ctx.profile.order_examples)
