"""The checks of [`sdekit.testing.check_solver`][] for invariances: autonomization, time reversal,
determinism, shapes and dtypes.

Each check registers itself with [`register_check`][sdekit.testing.conformance.register_check] when this module is
imported (by [`sdekit.testing.conformance`][])."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from ..sde import NOISE_TYPES, ODE, SDE
from ..solve import solve
from . import problems as P
from . import strategies as S
from .conformance import (
    EXACT_RTOL,
    FLOAT32_RTOL,
    Case,
    CheckFailed,
    Context,
    _brownian,
    _case,
    _kind_label,
    _kinds,
    _max_abs,
    register_check,
)
from .noise import CastNoise, MirrorNoise, PaddedNoise

F64 = torch.float64


# --- invariances ---------------------------------------------------------------------------------------------------
def _same(a: torch.Tensor, b: torch.Tensor, rtol: float) -> float | None:
    """None if close, else the relative difference."""
    diff = _max_abs(a - b)
    return None if diff <= rtol * (1 + _max_abs(b)) else diff / (1 + _max_abs(b))


@register_check("autonomization", capability=("ode", "sde:additive", "sde:diagonal"), group="invariance")
def check_autonomization(ctx: Context) -> None:
    """Solving ``x' = f(t, x)`` equals solving the autonomous ``(x, τ)' = (f(τ, x), 1)`` from ``τ = t0`` (exact
    for Runge–Kutta methods whose nodes are the row sums of their matrix); for an SDE solver also with additive
    or diagonal noise that does not depend on t. A difference means the drift is evaluated at times that do not
    match its stage states, e.g. at ``t1`` where ``t0`` belongs."""

    def augmented(problem: P.Problem) -> SDE:
        inner = problem.sde

        def drift(t, y):
            tau = y[..., -1]
            return torch.cat([inner.drift(tau, y[..., :-1]), torch.ones_like(y[..., -1:])], -1)

        if inner.is_ode:
            return ODE(drift)

        def diffusion(t, y):
            g = inner.diffusion(t, y[..., :-1])
            g = torch.zeros_like(y[..., :-1]) + g
            return torch.cat([g, torch.zeros_like(y[..., -1:])], -1)

        return SDE(drift, diffusion, noise_type=inner.noise_type)

    def run(problems, label):
        def prop(case: Case):
            p = case.problem
            bm = _brownian(p, ctx.solver, p.x0, case.seed or 0)
            x = solve(p.sde, p.x0, ctx.solver, ts=list(case.grid), brownian=bm).x
            y0 = torch.cat([p.x0, torch.full_like(p.x0[..., :1], p.t0)], -1)
            aug = augmented(p)
            y = solve(aug, y0, ctx.solver, ts=list(case.grid), brownian=PaddedNoise(bm) if bm is not None else None).x
            rel = _same(x, y[..., :-1], 1e-9)
            if rel is not None:
                raise CheckFailed(
                    f"solving x' = f(t, x) differs from solving the autonomous system (x, τ)' = (f(τ, x), 1) by "
                    f"{rel:.3g} (relative) on {case!r}: the solver evaluates the drift at a time that does not "
                    "match the state it evaluates it at (e.g. t1 where t0 belongs, or nodes c_i that are not the "
                    "row sums of its Runge–Kutta matrix)")

        ctx.property(label, problems, prop)

    if "ode" in ctx.caps:
        run(_case(S.stuart_landau_odes(), max_steps=6), "ode")
    nt = next((n for n in ("additive", "diagonal") if f"sde:{n}" in ctx.caps), None)
    if nt is not None:
        @st.composite
        def sde_cases(draw):
            t0, t1 = draw(st.sampled_from([(0.0, 1.0), (1.0, 0.0), (-0.5, 0.5)]))
            p = P.nonautonomous_sde(nt, shape=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
                                    seed=draw(st.integers(0, 2**16)), time_dependent_noise=False, t0=t0, t1=t1)
            grid = draw(S.time_grids(t0, t1, min_steps=1, max_steps=6))
            return Case(p, tuple(grid.tolist()), seed=draw(st.integers(0, 2**16)))

        run(sde_cases(), nt)


def _reflected(sde: SDE) -> SDE:
    """The problem in reflected time ``s = -t``: ``y(s) = x(-s)`` has drift ``-f(-s, y)`` and the same noise."""
    drift = lambda s, y: -sde.drift(-s, y)  # noqa: E731
    if sde.is_ode:
        return ODE(drift)
    return SDE(drift, lambda s, y: sde.diffusion(-s, y), noise_type=sde.noise_type, brownian_size=sde.brownian_size)


@st.composite
def _invariance_cases(draw, kind, *, direction="given", shapes=None, dtype=False, max_steps=8):
    shape = draw(shapes if shapes is not None else S.batch_shapes())
    t0, t1 = draw(st.sampled_from([(0.0, 1.0), (-1.0, 0.5), (0.5, 2.0)]))
    if direction == "decreasing":
        t0, t1 = t1, t0
    elif direction == "either" and draw(st.booleans()):
        t0, t1 = t1, t0
    p = P.nonautonomous_sde(kind, shape=shape, seed=draw(st.integers(0, 2**16)), t0=t0, t1=t1)
    grid = draw(S.time_grids(t0, t1, min_steps=1, max_steps=max_steps))
    dt = draw(S.dtypes()) if dtype else None
    return Case(p, tuple(grid.tolist()), dt, seed=draw(st.integers(0, 2**16)))


@register_check("time_reversal", capability=("ode",) + tuple(f"sde:{nt}" for nt in NOISE_TYPES), group="invariance")
def check_time_reversal(ctx: Context) -> None:
    """A solve on a decreasing grid ``t0 > t1`` equals the solve of the reflected problem ``y(s) = x(-s)``
    (drift ``-f(-s, y)``, the same diffusion) on the increasing grid ``-t`` with the mirrored Brownian
    increments: the same equations with ``dt < 0`` and increments of variance ``|dt|``."""
    for kind in _kinds(ctx.caps):
        def prop(case: Case, kind=kind):
            p = case.problem
            bm = _brownian(p, ctx.solver, p.x0, case.seed)
            a = solve(p.sde, p.x0, ctx.solver, ts=list(case.grid), brownian=bm).x
            b = solve(_reflected(p.sde), p.x0, ctx.solver, ts=[-t for t in case.grid],
                      brownian=MirrorNoise(bm) if bm is not None else None).x
            rel = _same(a, b, EXACT_RTOL)
            if rel is not None:
                raise CheckFailed(
                    f"solving on the decreasing grid differs from solving the time-reflected {_kind_label(kind)} on "
                    f"the increasing grid by {rel:.3g} (relative) on {case!r}: use h = t1 - t0 (negative here) "
                    "in the drift term and |h| only where a variance is meant (Itô corrections)")

        ctx.property(_kind_label(kind), _invariance_cases(kind, direction="decreasing"), prop)


@register_check("determinism", capability=("ode",) + tuple(f"sde:{nt}" for nt in NOISE_TYPES), group="invariance")
def check_determinism(ctx: Context) -> None:
    """The same problem, grid and seed give bitwise the same result, also when another problem (of another
    shape) was solved in between: no state may survive from one solve to the next."""
    kinds = _kinds(ctx.caps)
    other = P.nonautonomous_sde(kinds[0], shape=(1, 3), seed=1) if kinds else None

    for kind in kinds:
        def prop(case: Case, kind=kind):
            p = case.problem

            def run():
                if p.is_ode:
                    return (solve(p.sde, p.x0, ctx.solver, ts=list(case.grid)).x,)
                gen = torch.Generator().manual_seed(case.seed)
                fresh = solve(p.sde, p.x0, ctx.solver, ts=list(case.grid), generator=gen).x
                bm = _brownian(p, ctx.solver, p.x0, case.seed)
                return fresh, solve(p.sde, p.x0, ctx.solver, ts=list(case.grid), brownian=bm).x

            first = run()
            solve(other.sde, other.x0, ctx.solver, ts=torch.linspace(0, 1, 4, dtype=F64),
                  generator=None if other.is_ode else torch.Generator().manual_seed(1))
            second = run()
            hows = ("",) if p.is_ode else (" with fresh noise from a seeded generator", " on a seeded BrownianPath")
            for how, a, b in zip(hows, first, second):
                if not torch.equal(a, b):
                    raise CheckFailed(
                        f"two solves of the same {_kind_label(kind)}{how} differ by {_max_abs(a - b):.3g} on {case!r}: "
                        "the solver keeps state between solves (keep history in the state returned by init(), "
                        "not on the solver object) or draws from the global random generator")

        ctx.property(_kind_label(kind), _invariance_cases(kind), prop)


@register_check("shape_dtype", capability=("ode",) + tuple(f"sde:{nt}" for nt in NOISE_TYPES), group="invariance")
def check_shape_dtype(ctx: Context) -> None:
    """Vector and image-shaped (B, C, H, W) states in float32 and float64: the result keeps shape, dtype and
    device, is finite, x0 is not modified, and float32 agrees with float64 on the same path."""
    for kind in _kinds(ctx.caps):
        def prop(case: Case, kind=kind):
            p = case.problem
            bm = _brownian(p, ctx.solver, p.x0, case.seed)
            x0 = p.x0.to(case.dtype)
            keep = x0.clone()
            src = CastNoise(bm, case.dtype) if bm is not None else None
            x = solve(p.sde, x0, ctx.solver, ts=list(case.grid), brownian=src).x
            if not torch.equal(x0, keep):
                raise CheckFailed(f"the solver modified x0 in place on {case!r}")
            if tuple(x.shape) != tuple(x0.shape) or x.dtype != x0.dtype or x.device != x0.device:
                raise CheckFailed(
                    f"the result has shape {tuple(x.shape)}, dtype {x.dtype}, device {x.device}; the state had "
                    f"{tuple(x0.shape)}, {x0.dtype}, {x0.device} ({_kind_label(kind)}, {case!r})")
            if case.dtype != F64:
                ref = solve(p.sde, p.x0, ctx.solver, ts=list(case.grid), brownian=bm).x
                rel = _max_abs(x.to(F64) - ref) / (1 + _max_abs(ref))
                if not rel <= FLOAT32_RTOL:
                    raise CheckFailed(
                        f"the {case.dtype} solve differs from the float64 solve on the same path by {rel:.3g} "
                        f"(relative; expected <= {FLOAT32_RTOL}) on {case!r}")

        ctx.property(_kind_label(kind), _invariance_cases(kind, direction="either", dtype=True), prop)
