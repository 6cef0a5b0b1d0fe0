"""The checks of [`sdekit.testing.check_solver`][] for exactness (the 'exact' group).

Each check registers itself with [`register_check`][sdekit.testing.conformance.register_check] when this module is
imported (by [`sdekit.testing.conformance`][])."""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st

from ..sde import NOISE_TYPES
from ..solve import solve
from . import problems as P
from . import strategies as S
from .conformance import (
    EXACT_RTOL,
    Case,
    CheckFailed,
    Context,
    _brownian,
    _case,
    _max_abs,
    _noise_caps,
    register_check,
)

F64 = torch.float64


# --- exactness -------------------------------------------------------------------------------------------------------
@register_check("exactness", capability="ode", group="exact")
def check_exactness(ctx: Context) -> None:
    """A state-independent drift polynomial in t of degree < order (0 for order <= 1) is integrated exactly, on
    non-uniform grids in both directions (quadrature conditions Σ b_i c_i^(k-1) = 1/k, k <= order)."""
    order = getattr(ctx.solver, "order", None) or 1.0
    max_degree = max(0, min(4, math.floor(order + 1e-9) - 1))

    def prop(case: Case):
        p = case.problem
        x = solve(p.sde, p.x0, ctx.solver, ts=list(case.grid)).x
        err = _max_abs(x - p.exact)
        if not err <= EXACT_RTOL * (1 + _max_abs(p.exact)):
            degree = p.params["degree"]
            raise CheckFailed(
                f"a drift polynomial in t of degree {degree} must be integrated exactly by a method of order "
                f"{order:g}, but the error is {err:.3g} on {case!r}"
                + (" (constant drift: the step is not consistent)" if degree == 0 else ""))

    ctx.property("polynomial", _case(S.polynomial_odes(max_degree=max_degree)), prop)


@register_check("sde_exactness", capability=tuple(f"sde:{nt}" for nt in NOISE_TYPES), group="exact")
def check_sde_exactness(ctx: Context) -> None:
    """``dx = c dt + G dW`` with constant coefficients is reproduced exactly, ``x0 + c (t1 - t0) + G ΔW``, for
    every supported noise type, on non-uniform grids in both directions."""
    for nt in _noise_caps(ctx.caps):
        @st.composite
        def cases(draw, nt=nt):
            shape = draw(S.batch_shapes())
            t0, t1 = draw(st.sampled_from([(0.0, 1.0), (1.0, 0.0), (0.5, 2.0)]))
            p = P.drifted_brownian_motion(nt, shape, drift=draw(st.sampled_from([0.5, -1.0, 2.0])),
                                          sigma=draw(st.sampled_from([0.7, 0.3, 1.5])), t0=t0, t1=t1)
            grid = draw(S.time_grids(t0, t1, min_steps=1, max_steps=8))
            return Case(p, tuple(grid.tolist()), seed=draw(st.integers(0, 2**16)))

        def prop(case: Case):
            p = case.problem
            bm = _brownian(p, ctx.solver, p.x0, case.seed)
            x = solve(p.sde, p.x0, ctx.solver, ts=list(case.grid), brownian=bm).x
            want = p.pathwise(p.x0, bm)
            err = _max_abs(x - want)
            if not err <= EXACT_RTOL * (1 + _max_abs(want)):
                moved = _max_abs(want - p.x0)
                raise CheckFailed(
                    f"dx = c dt + G dW (constant coefficients) must be reproduced exactly, x0 + c Δt + G ΔW, but the "
                    f"result is {err:.3g} off (the exact solution moved {moved:.3g}) on {case!r}; check the scaling "
                    "of the noise term (the increment ΔW already has variance |h|)")

        ctx.property(nt, cases(), prop)
