"""The solver conformance suite: ``check_solver(solver)`` runs every check that applies to a solver's declared
capabilities and returns a :class:`Report`.

A solver is anything following :class:`sdekit.solvers.Solver` (registered or not). Its capabilities are
probed, not assumed: ``"ode"`` if ``solver.check`` accepts a plain ODE, ``"sde:<noise type>"`` for each
declared noise type that ``solver.check`` accepts on a generic SDE, ``"adaptive"``, ``"levy_area"``, and
``"diffusion:ode"`` / ``"diffusion:sde"`` if it accepts a probability-flow ODE / reverse SDE of a diffusion
model. Each check in :data:`CHECKS` states what it needs; checks that do not apply are listed in
``report.skipped`` with the reason.

Checks (tolerances are module constants; the reason for each is next to it):

==================  ============================================================================================
``ode_order``       measured ODE order on random linear systems and Stuart–Landau oscillators (nonlinear,
                    non-autonomous) >= declared - tolerance; fails too if every measurement exceeds it
``consistency``     the ODE error shrinks at least 8x over a 16x smaller step
``exactness``       state-independent polynomial drift of degree < order is integrated exactly (quadrature
                    conditions of an order-p method), on non-uniform grids in both directions
``autonomization``  solving ``x' = f(t, x)`` equals solving the autonomous system ``(x, τ)' = (f(τ, x), 1)``
                    (catches drift evaluated at the wrong time: ``t1`` where ``t0`` belongs)
``time_reversal``   a solve on a decreasing grid equals the solve of the reflected problem on the increasing grid
``sde_exactness``   ``dx = c dt + G dW`` (constant coefficients) is reproduced exactly on a Brownian path
``strong_order``    strong order on GBM (diagonal; scalar/general: commuting GBMs) and OU (additive), nested
                    grids over one Brownian path per sample, >= declared - tolerance
``weak_order``      weak order of mean and covariance on OU / linear SDEs, computed exactly by impulses
``determinism``     same seed, same result (bitwise), also after solving another problem in between
``shape_dtype``     shape, dtype and device kept for float32/float64 and (B, C, H, W) states; x0 not modified;
                    float32 agrees with float64
``nfe``             counted drift evaluations equal ``solve``'s ``stats["nfe"]``
``blowup``          a blowing-up state surfaces as ``FloatingPointError`` from ``solve``
``adaptive``        an adaptive solve meets its tolerance and counts its evaluations correctly
==================  ============================================================================================

Properties run through hypothesis (``given``, executed directly), so a failure is shrunk to a small
:class:`~sdekit.testing.problems.Problem` and reported with it. Profiles: ``"quick"``, ``"ci"`` (default) and
``"thorough"`` set the numbers of examples; runs are reproducible from ``seed`` (no example database).

**Extending.** :func:`register_check` adds a check keyed by capability, e.g. the diffusion-sampler checks
(single-Gaussian exact recovery, probability-flow agreement, rounded-time detection) will register with
``capability="diffusion:ode"``; :func:`capabilities` is the place to add new capability probes.
"""

from __future__ import annotations

import contextlib
import math
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

try:
    import hypothesis
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings
    from hypothesis import strategies as st
    from hypothesis.errors import Flaky
except ImportError as e:  # pragma: no cover - hypothesis is a test dependency
    raise ImportError("sdekit.testing needs hypothesis: pip install 'sdekit[testing]' "
                      "(or pip install hypothesis)") from e

from ..bench import convergence_order, fit_order
from ..brownian import BrownianPath
from ..sde import NOISE_TYPES, ODE, SDE
from ..solve import PIController, solve
from ..solvers import Solver
from ..solvers import get as get_solver
from . import problems as P
from . import strategies as S
from .counting import CountingProblem
from .noise import CastNoise, MirrorNoise, NotAffineError, PaddedNoise, exact_moments

F64 = torch.float64

# --- tolerances ------------------------------------------------------------------------------------------------
#: Measured ODE order may fall short of the declared order by this much (declared <= 4). The ladder below
#: measures the registered solvers of order <= 4 within 0.03 of their orders on both problem families
#: (hundreds of random problems; 0.17 on the scalar Riccati family of the thorough profile).
ODE_ORDER_TOL = 0.2
#: ... and by this much for declared orders > 4: in float64 only a few step sizes lie between the pre-asymptotic
#: range and round-off; Dopri5 (all order-5 conditions hold to 1e-16) measures 4.8–5.2 on linear systems and
#: 4.9–6.2 on the Stuart–Landau family.
HIGH_ORDER_TOL = 0.5
#: Strong orders (GBM/OU, 1000 paths in "ci"): the registered solvers measure at least 0.9x their orders (worst:
#: Milstein 0.91 on one GBM in 30 random problems and path seeds; typically within ±0.05).
STRONG_ORDER_TOL = 0.2
#: Weak orders are computed exactly (no Monte-Carlo error); what remains is pre-asymptotic bias: the registered
#: solvers measure -0.03 to +0.2 from their orders over 8..64 steps.
WEAK_ORDER_TOL = 0.25
#: Exactness checks in float64: a few hundred roundings of O(1) numbers.
EXACT_RTOL = 1e-10
#: float32 vs float64 solves of the same problem on the same path, relative to the solution's size.
FLOAT32_RTOL = 1e-4
#: Relative error below which an ODE error counts as round-off (excluded from order fits).
ROUNDOFF_FLOOR = 1e-12
#: ODE order ladder: steps n0 · 2^k, k < ODE_LEVELS, n0 the smallest power of two >= 4 with rate · h <= 1.
ODE_LEVELS = 8
#: Nested grids for strong orders, and for exact weak orders.
STRONG_STEPS = (8, 16, 32, 64, 128)
WEAK_STEPS = (8, 16, 32, 64)


class CheckFailed(AssertionError):
    """A conformance property failed (the message says what was measured and what was expected)."""


# --- profiles --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Profile:
    """How hard :func:`check_solver` tries.

    Attributes:
        examples: hypothesis examples per cheap property (invariances, exactness, NFE, ...).
        order_examples: examples per order property (each runs a ladder of solves).
        strong_samples: Brownian paths (batch size) per strong-order measurement.
        extra_problems: also measure ODE orders on logistic and Riccati equations, and strong orders on
            multi-dimensional linear SDEs.
    """

    name: str
    examples: int
    order_examples: int
    strong_samples: int
    extra_problems: bool = False


PROFILES: dict[str, Profile] = {
    "quick": Profile("quick", examples=3, order_examples=1, strong_samples=500),
    "ci": Profile("ci", examples=10, order_examples=3, strong_samples=1000),
    "thorough": Profile("thorough", examples=40, order_examples=8, strong_samples=2000, extra_problems=True),
}


def hypothesis_settings(max_examples: int) -> settings:
    """The hypothesis settings every property of the suite runs under: no deadline, no example database (runs
    are reproducible from the seed alone), quiet, one failure per property, no health checks on slow draws.
    Built explicitly, never loaded as a profile, so a user's hypothesis profile stays untouched."""
    return settings(
        max_examples=max_examples, deadline=None, database=None, derandomize=False, verbosity=Verbosity.quiet,
        report_multiple_bugs=False, print_blob=False, phases=(Phase.explicit, Phase.generate, Phase.shrink),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                               HealthCheck.large_base_example],
    )


# --- results ---------------------------------------------------------------------------------------------------
@dataclass
class Failure:
    """One failed check: its name, what went wrong, and the (shrunk) example it failed on."""

    check: str
    message: str
    counterexample: Any = None

    def __str__(self) -> str:
        out = f"[{self.check}] {self.message}"
        if self.counterexample is not None:
            out += f"\n    counterexample: {self.counterexample!r}"
        return out


@dataclass
class Report:
    """Result of :func:`check_solver`.

    Attributes:
        solver: the solver's name (or class name).
        profile: the profile used.
        checks: names of the checks that ran.
        failures: :class:`Failure` list (empty when everything passed).
        orders: measured orders by key (``"ode/linear"``, ``"ode/nonlinear"``, ``"strong/diagonal"``,
            ``"weak/additive"``, ...): the lowest measurement over the examples.
        declared: the declared order for each key of ``orders``.
        skipped: checks that did not apply, with the reason.
        notes: remarks that are not failures (e.g. an order measured well above the declared one).
        seconds: wall time per check.
        capabilities: what the solver was found to accept.
    """

    solver: str
    profile: str
    checks: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    orders: dict[str, float] = field(default_factory=dict)
    declared: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    capabilities: frozenset = frozenset()

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def failed_checks(self) -> list[str]:
        return sorted({f.check for f in self.failures})

    def raise_for_failures(self) -> None:
        """Raise an AssertionError listing every failure with its shrunk counterexample (no-op if passed)."""
        if self.failures:
            lines = [f"solver {self.solver!r} failed {len(self.failures)} conformance check(s) "
                     f"(profile {self.profile!r}):"]
            lines += [str(f) for f in self.failures]
            raise AssertionError("\n".join(lines))

    def summary(self) -> str:
        total = sum(self.seconds.values())
        status = "passed" if self.passed else f"FAILED {', '.join(self.failed_checks)}"
        lines = [f"{self.solver}: {status} ({len(self.checks)} checks, profile {self.profile!r}, {total:.1f} s)"]
        for key, val in self.orders.items():
            lines.append(f"  {key:<18} measured {val:6.3f}   declared {self.declared.get(key)}")
        lines += [f"  {f}" for f in self.failures]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    __str__ = summary


# --- readable examples -------------------------------------------------------------------------------------------
@dataclass(eq=False, repr=False)
class Case:
    """A drawn example: a problem plus the grid, dtype, seed... it was solved with (printed compactly)."""

    problem: P.Problem
    grid: tuple[float, ...] | None = None
    dtype: torch.dtype | None = None
    seed: int | None = None

    def __repr__(self) -> str:
        parts = [repr(self.problem)]
        if self.grid is not None:
            parts.append("grid=[" + ", ".join(f"{t:.4g}" for t in self.grid) + "]")
        if self.dtype is not None:
            parts.append(f"dtype={self.dtype}")
        if self.seed is not None:
            parts.append(f"seed={self.seed}")
        return "Case(" + ", ".join(parts) + ")"

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(repr(self))


@st.composite
def _case(draw, problems, *, min_steps=2, max_steps=8, dtype=None, seed=False):
    problem = draw(problems)
    # rate · h <= 1 even for the largest step of a non-uniform grid (at most 4x the smallest): no blow-up
    lo = max(min_steps, math.ceil(4 * problem.rate * problem.span))
    grid = draw(S.time_grids(problem.t0, problem.t1, min_steps=lo, max_steps=max(lo, max_steps)))
    return Case(problem, tuple(grid.tolist()), draw(dtype) if dtype is not None else None,
                draw(st.integers(0, 2**16)) if seed else None)


# --- capabilities ------------------------------------------------------------------------------------------------
def _accepts(solver, problem) -> bool:
    try:
        solver.check(problem)
    except Exception:  # any refusal counts: the solver says it cannot take this problem
        return False
    return True


def _probe_sde(noise_type: str) -> SDE:
    return P.nonautonomous_sde(noise_type, shape=(1, 2)).sde


def _diffusion_probes():
    from ..analytic import GaussianMixture
    from ..processes import VP
    from ..reverse import probability_flow, reverse_sde

    process = VP()
    model = GaussianMixture([[0.0]], [[[1.0]]], [1.0]).model(process)
    return probability_flow(process, model), reverse_sde(process, model)


def capabilities(solver) -> frozenset[str]:
    """What ``solver`` accepts (see the module docstring); probed through ``solver.check``."""
    caps = set()
    if _accepts(solver, ODE(lambda t, x: -x)):
        caps.add("ode")
    for nt in NOISE_TYPES:
        if nt in tuple(getattr(solver, "noise_types", ()) or ()) and _accepts(solver, _probe_sde(nt)):
            caps.add(f"sde:{nt}")
    if getattr(solver, "adaptive", False) and "ode" in caps:
        caps.add("adaptive")
    if getattr(solver, "needs_levy_area", False):
        caps.add("levy_area")
    try:
        pf, rev = _diffusion_probes()
    except Exception:  # pragma: no cover - the diffusion layer is optional for this probe
        pf = rev = None
    if pf is not None and _accepts(solver, pf):
        caps.add("diffusion:ode")
    if rev is not None and _accepts(solver, rev):
        caps.add("diffusion:sde")
    return frozenset(caps)


def _noise_caps(caps) -> list[str]:
    return [nt for nt in NOISE_TYPES if f"sde:{nt}" in caps]


def _kinds(caps) -> list[str | None]:
    """Problem kinds to exercise: None for the ODE, then each supported noise type."""
    return ([None] if "ode" in caps else []) + _noise_caps(caps)


# --- the registry of checks ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """A registered check: ``run(ctx)`` raises nothing; it records failures through ``ctx``. ``applies(solver,
    caps)`` returns None when the check applies, else the reason it does not."""

    name: str
    group: str
    applies: Callable[[Any, frozenset], str | None]
    run: Callable[[Context], None]
    doc: str = ""


CHECKS: dict[str, Check] = {}
GROUPS = ("orders", "exact", "invariance", "accounting", "custom")


def register_check(name: str, *, capability: str | Iterable[str] | None = None,
                   applies: Callable[[Any, frozenset], str | None] | None = None, group: str = "custom"):
    """Decorator: register ``run(ctx)`` as the check ``name``.

    Args:
        capability: a capability (or several, any of which suffices) the solver must have, e.g.
            ``"diffusion:ode"`` for diffusion samplers; see :func:`capabilities`.
        applies: a further condition ``applies(solver, caps) -> None | reason``.
        group: a group name that ``check_solver(kinds=...)`` can select.
    """
    needed = (capability,) if isinstance(capability, str) else tuple(capability or ())

    def condition(solver, caps):
        if needed and not any(c in caps for c in needed):
            return f"needs capability {' or '.join(needed)}; the solver has {', '.join(sorted(caps)) or 'none'}"
        return applies(solver, caps) if applies is not None else None

    def deco(run):
        if name in CHECKS:
            raise ValueError(f"a check named {name!r} is already registered")
        CHECKS[name] = Check(name, group, condition, run, (run.__doc__ or "").strip())
        return run

    return deco


def unregister_check(name: str) -> None:
    CHECKS.pop(name)


# --- the context a check runs in --------------------------------------------------------------------------------------
class Context:
    """What a check sees: the solver, its capabilities, the profile and seed; and how it reports."""

    def __init__(self, solver, caps, profile: Profile, seed: int, report: Report):
        self.solver, self.caps, self.profile, self.seed, self.report = solver, caps, profile, seed, report
        self.check = ""

    @property
    def name(self) -> str:
        return self.report.solver

    def property(self, label: str, strategy, fn: Callable[[Any], None], *, examples: int | None = None) -> bool:
        """Run ``fn(example)`` on hypothesis examples of ``strategy``; a failure (any exception) is shrunk and
        recorded as a :class:`Failure` of the current check. Returns whether it passed."""
        last: dict = {}

        def test(example):
            try:
                fn(example)
            except Exception as e:
                last["example"], last["error"] = example, e
                raise

        n = examples if examples is not None else self.profile.examples
        key = zlib.crc32(f"{self.seed}/{self.check}/{label}".encode())
        wrapped = hypothesis.seed(key)(hypothesis_settings(n)(given(strategy)(test)))
        try:
            wrapped()
        except Exception as e:
            err = last.get("error", e)
            msg = str(err) if isinstance(err, CheckFailed) else f"{label}: raised {type(err).__name__}: {err}"
            if isinstance(e, Flaky):
                msg += (" (the failure did not reproduce when replayed: the solver's results depend on earlier "
                        "calls)")
            self.report.failures.append(Failure(self.check, msg, last.get("example")))
            return False
        return True

    def fail(self, message: str, counterexample=None) -> None:
        self.report.failures.append(Failure(self.check, message, counterexample))

    def note(self, message: str) -> None:
        if message not in self.report.notes:
            self.report.notes.append(message)

    def record_order(self, key: str, measured: float, declared: float | None) -> None:
        old = self.report.orders.get(key)
        if old is None or measured < old:
            self.report.orders[key] = measured
        self.report.declared[key] = declared


# --- small helpers -------------------------------------------------------------------------------------------------
def _rms(x: torch.Tensor) -> float:
    return float(x.detach().to(F64).pow(2).mean().sqrt())


def _max_abs(x: torch.Tensor) -> float:
    return float(x.detach().to(F64).abs().max()) if x.numel() else 0.0


def _brownian(problem, solver, x0, seed: int, dtype=F64) -> BrownianPath | None:
    if problem.is_ode:
        return None
    lo, hi = min(problem.t0, problem.t1), max(problem.t0, problem.t1)
    return BrownianPath(lo, hi, problem.sde.brownian_shape(tuple(x0.shape)), seed=int(seed), dtype=dtype,
                        levy_area=bool(getattr(solver, "needs_levy_area", False)))


def _order_tol(declared: float) -> float:
    return ODE_ORDER_TOL if declared <= 4 else HIGH_ORDER_TOL


def _kind_label(kind: str | None) -> str:
    return "ODE" if kind is None else f"{kind}-noise SDE"


def _fsal(solver) -> bool:
    return bool(getattr(getattr(solver, "tableau", None), "fsal", False))


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
    :func:`~sdekit.bench.fit_order`) of the error over the finest (at most 4) step sizes whose error is finite
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


# --- accounting ------------------------------------------------------------------------------------------------------
@register_check("nfe", capability=("ode",) + tuple(f"sde:{nt}" for nt in NOISE_TYPES), group="accounting")
def check_nfe(ctx: Context) -> None:
    """Drift evaluations counted by a wrapper equal ``solve``'s ``stats["nfe"]`` (``evals_per_step`` per step,
    plus one at the start for first-same-as-last tableaux, or the solver's own ``count_nfe``)."""
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
            if counted != stats:
                declared = f"evals_per_step={getattr(ctx.solver, 'evals_per_step', None)}"
                if _fsal(ctx.solver):
                    declared += " + 1 at the start (FSAL tableau)"
                raise CheckFailed(
                    f"solve reports nfe={stats[0]} and {stats[1]} for 4 and 8 steps of a {_kind_label(kind)}, but the "
                    f"drift was evaluated {counted[0]} and {counted[1]} times ({per_step:g} per step + {at_start:g} "
                    f"at the start); the solver declares {declared}")

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


# --- SDE orders -------------------------------------------------------------------------------------------------------
def _strong_family(ctx: Context, nt: str):
    n = ctx.profile.strong_samples
    if nt == "additive":
        return S.additive_linear_sdes(batch=n) if ctx.profile.extra_problems else S.ou_problems(batch=n)
    return {"diagonal": S.gbm_problems(batch=n), "scalar": S.scalar_noise_gbms(batch=n),
            "general": S.general_noise_gbms(batch=n)}[nt]


def _strong_applies(solver, caps):
    if any(solver.strong_order_for(nt) is not None for nt in _noise_caps(caps)):
        return None
    return "the solver declares no strong order"


@register_check("strong_order", capability=tuple(f"sde:{nt}" for nt in NOISE_TYPES), applies=_strong_applies,
                group="orders")
def check_strong_order(ctx: Context) -> None:
    """Strong order (``E|X_N - X(T)|`` over nested grids of 8..128 steps on one Brownian path per sample, library
    :func:`~sdekit.bench.convergence_order`) >= declared - tolerance, per supported noise type: GBM (diagonal),
    commuting GBMs (scalar, general), Ornstein–Uhlenbeck (additive; exact pathwise solution by
    :func:`~sdekit.testing.problems.linear_pathwise`)."""
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

        @st.composite
        def cases(draw, nt=nt):
            return Case(draw(_strong_family(ctx, nt)), seed=draw(st.integers(0, 2**20)))

        ctx.property(nt, cases(), prop, examples=ctx.profile.order_examples)


def _weak_applies(solver, caps):
    return None if solver.weak_order_for("additive") is not None else "the solver declares no weak order"


@register_check("weak_order", capability="sde:additive", applies=_weak_applies, group="orders")
def check_weak_order(ctx: Context) -> None:
    """Weak order on OU and linear additive-noise SDEs, with the scheme's mean and covariance computed exactly by
    impulses (:func:`~sdekit.testing.noise.exact_moments`; no Monte-Carlo error): the error
    ``max|Δmean| + max|Δcov|`` over 8..64 steps must fall at least at the declared weak order - tolerance.
    Skipped (with a note) for a solver that is not affine in its noise on these problems."""
    declared = ctx.solver.weak_order_for("additive")

    def prop(problem: P.Problem):
        errs = []
        for n in WEAK_STEPS:
            grid = torch.linspace(problem.t0, problem.t1, n + 1, dtype=F64)
            try:
                mean, cov = exact_moments(problem.sde, ctx.solver, problem.x0[:1], grid)
            except NotAffineError as e:
                ctx.note(f"weak_order not checked: {e}")
                return
            errs.append(_max_abs(mean - problem.mean[0]) + _max_abs(cov - problem.covariance))
        if min(errs) < 1e-13:
            ctx.note(f"weak_order: moments exact to round-off on {problem!r}")
            return
        order, _ = fit_order([problem.span / n for n in WEAK_STEPS], errs)
        ctx.record_order("weak/additive", order, declared)
        if not order >= declared - WEAK_ORDER_TOL:
            raise CheckFailed(
                f"measured weak order {order:.2f} (exact moments) on {problem!r}, declared {declared:g} (tolerance "
                f"{WEAK_ORDER_TOL}); errors of mean + covariance "
                + ", ".join(f"n={n}: {e:.2e}" for n, e in zip(WEAK_STEPS, errs)))

    ctx.property("additive", S.additive_linear_sdes(), prop, examples=ctx.profile.order_examples)


# --- the entry points -------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _torch_threads(n: int | None):
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _as_solver(solver) -> Solver:
    if isinstance(solver, type) and issubclass(solver, Solver):
        solver = solver()
    if isinstance(solver, str):
        solver = get_solver(solver)
    if not isinstance(solver, Solver):
        raise TypeError(f"check_solver needs a sdekit.solvers.Solver (instance, subclass or registry name), got "
                        f"{type(solver).__name__}: subclass Solver so that sdekit.solve accepts it")
    return solver


def _select(kinds, skip) -> list[str]:
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    groups = list(dict.fromkeys([*GROUPS, *(c.group for c in CHECKS.values())]))
    chosen: list[str] = []
    for k in kinds:
        if k == "auto":
            names = list(CHECKS)
        elif k in CHECKS:
            names = [k]
        elif k in groups:
            names = [n for n, c in CHECKS.items() if c.group == k]
        else:
            raise ValueError(f"unknown check or group {k!r}; checks: {', '.join(CHECKS)}; groups: {', '.join(groups)}; "
                             "or 'auto'")
        chosen += [n for n in names if n not in chosen]
    for k in (skip,) if isinstance(skip, str) else skip:
        if k not in CHECKS:
            raise ValueError(f"unknown check {k!r} in skip; checks: {', '.join(CHECKS)}")
    return [n for n in chosen if n not in set((skip,) if isinstance(skip, str) else skip)]


def applicable_checks(solver, *, kinds=("auto",), skip=()) -> list[str]:
    """Names of the checks :func:`check_solver` would run on ``solver`` (for ``pytest.mark.parametrize``)."""
    solver = _as_solver(solver)
    caps = capabilities(solver)
    return [n for n in _select(kinds, skip) if CHECKS[n].applies(solver, caps) is None]


def check_solver(solver, *, kinds=("auto",), skip=(), seed: int = 0, profile: str | Profile = "ci",
                 torch_threads: int | None = 1) -> Report:
    """Run the conformance suite on ``solver`` and return a :class:`Report` (never raises on a failed check:
    call ``report.raise_for_failures()`` or use :func:`assert_solver_conforms`).

    Args:
        solver: a :class:`~sdekit.solvers.Solver` instance, a Solver subclass (built without arguments) or a
            registry name.
        kinds: ``"auto"`` (every check that applies), check names and/or groups (``"orders"``,
            ``"exact"``, ``"invariance"``, ``"accounting"``, ``"custom"``).
        skip: check names not to run.
        seed: seeds every hypothesis run (the same seed draws the same examples).
        profile: ``"quick"``, ``"ci"``, ``"thorough"`` or a :class:`Profile`.
        torch_threads: torch's intra-op threads while the suite runs (restored afterwards); the problems are
            tiny, so 1 avoids threading overhead. None leaves the setting alone.
    """
    solver = _as_solver(solver)
    prof = PROFILES[profile] if isinstance(profile, str) else profile
    if not isinstance(prof, Profile):
        raise TypeError(f"profile must be one of {', '.join(PROFILES)} or a Profile, got {profile!r}")
    names = _select(kinds, skip)
    caps = capabilities(solver)
    report = Report(solver=getattr(solver, "name", "") or type(solver).__name__, profile=prof.name, capabilities=caps)
    ctx = Context(solver, caps, prof, int(seed), report)
    with _torch_threads(torch_threads):
        for name in names:
            check = CHECKS[name]
            why = check.applies(solver, caps)
            if why is not None:
                report.skipped[name] = why
                continue
            ctx.check = name
            report.checks.append(name)
            start = time.perf_counter()
            try:
                check.run(ctx)
            except Exception as e:  # a check that crashes outside its properties still reports, never aborts
                ctx.fail(f"the check crashed: {type(e).__name__}: {e}")
            report.seconds[name] = time.perf_counter() - start
    if not report.checks:
        covered = ", ".join(sorted(caps)) or "none"
        report.notes.append(f"no registered check applies to this solver (capabilities: {covered}); "
                            "diffusion-sampler checks are an extension point (register_check)")
    return report


def assert_solver_conforms(solver, **kwargs) -> Report:
    """:func:`check_solver`, then raise an AssertionError with every failure and its shrunk counterexample.
    For pytest: ``def test_my_solver(): assert_solver_conforms(MySolver())``. Returns the report."""
    report = check_solver(solver, **kwargs)
    report.raise_for_failures()
    return report
