"""The solver conformance suite: ``check_solver(solver)`` runs every check that applies to a solver's declared
capabilities and returns a `Report`.

A solver is anything following [`sdekit.solvers.Solver`][] (registered or not). Its capabilities are
probed, not assumed: ``"ode"`` if ``solver.check`` accepts a plain ODE, ``"sde:<noise type>"`` for each
declared noise type that ``solver.check`` accepts on a generic SDE, ``"adaptive"``, ``"levy_area"``, and
``"diffusion:ode"`` / ``"diffusion:sde"`` if it accepts a probability-flow ODE / reverse SDE of a diffusion
model. Each check in `CHECKS` states what it needs; checks that do not apply are listed in
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
``strong_order``    strong order on GBM (diagonal; scalar/general: commuting GBMs), non-symmetric linear SDEs,
                    nonlinear and non-autonomous sheared GBMs (non-symmetric state-dependent Jacobians), the
                    Heisenberg SDE (general: non-commutative) and OU (additive), each family its own property;
                    nested grids over one Brownian path per sample, >= declared - tolerance
``weak_order``      weak order of mean and covariance on OU / linear SDEs, computed exactly by impulses
``determinism``     same seed, same result (bitwise), also after solving another problem in between
``shape_dtype``     shape, dtype and device kept for float32/float64 and (B, C, H, W) states; x0 not modified;
                    float32 agrees with float64
``nfe``             counted drift evaluations equal ``solve``'s ``stats["nfe"]``
``blowup``          a blowing-up state surfaces as ``FloatingPointError`` from ``solve``
``adaptive``        an adaptive solve meets its tolerance and counts its evaluations correctly
==================  ============================================================================================

Properties run through hypothesis (``given``, executed directly), so a failure is shrunk to a small
[`Problem`][sdekit.testing.problems.Problem] and reported with it. Profiles: ``"quick"``, ``"ci"`` (default) and
``"thorough"`` set the numbers of examples; runs are reproducible from ``seed`` (no example database).

**Extending.** `register_check` adds a check keyed by capability, e.g. the diffusion-sampler checks
(single-Gaussian exact recovery, probability-flow agreement, rounded-time detection) will register with
``capability="diffusion:ode"``; `capabilities` is the place to add new capability probes.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
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

from ..brownian import BrownianPath
from ..sde import NOISE_TYPES, ODE, SDE
from ..solvers import Solver
from ..solvers import get as get_solver
from . import problems as P
from . import strategies as S

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
    """How hard `check_solver` tries.

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
    """Result of `check_solver`.

    Attributes:
        solver: the solver's name (or class name).
        profile: the profile used.
        checks: names of the checks that ran.
        failures: `Failure` list (empty when everything passed).
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
        """Whether no check failed."""
        return not self.failures

    @property
    def failed_checks(self) -> list[str]:
        """The names of the checks that failed, sorted."""
        return sorted({f.check for f in self.failures})

    def raise_for_failures(self) -> None:
        """Raise an AssertionError listing every failure with its shrunk counterexample (no-op if passed)."""
        if self.failures:
            lines = [f"solver {self.solver!r} failed {len(self.failures)} conformance check(s) "
                     f"(profile {self.profile!r}):"]
            lines += [str(f) for f in self.failures]
            raise AssertionError("\n".join(lines))

    def summary(self) -> str:
        """A readable summary: status, measured vs declared orders, failures, skips and notes."""
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
            ``"diffusion:ode"`` for diffusion samplers; see `capabilities`.
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
    """Remove the check registered as ``name`` (see `register_check`)."""
    CHECKS.pop(name)


# --- the context a check runs in --------------------------------------------------------------------------------------
class Context:
    """What a check sees: the solver, its capabilities, the profile and seed; and how it reports."""

    def __init__(self, solver, caps, profile: Profile, seed: int, report: Report):
        self.solver, self.caps, self.profile, self.seed, self.report = solver, caps, profile, seed, report
        self.check = ""

    @property
    def name(self) -> str:
        """The name of the solver under test."""
        return self.report.solver

    def property(self, label: str, strategy, fn: Callable[[Any], None], *, examples: int | None = None) -> bool:
        """Run ``fn(example)`` on hypothesis examples of ``strategy``; a failure (any exception) is shrunk and
        recorded as a `Failure` of the current check. Returns whether it passed."""
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
        """Record a failure of the running check, with the problem that shows it."""
        self.report.failures.append(Failure(self.check, message, counterexample))

    def note(self, message: str) -> None:
        """Add a note to the report (once)."""
        if message not in self.report.notes:
            self.report.notes.append(message)

    def record_order(self, key: str, measured: float, declared: float | None) -> None:
        """Record a measured order under ``key`` (the smallest over the check's draws is kept)."""
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


_STORAGE: dict[str, str] = {}


@contextlib.contextmanager
def _hypothesis_storage():
    """Keep hypothesis's files (its constants cache of the scanned source files, which it writes even with the
    example database off) out of the caller's working folder: unless the user chose a place
    (``HYPOTHESIS_STORAGE_DIRECTORY`` or ``hypothesis.configuration.set_hypothesis_home_dir``), they go to one
    temporary folder per process, removed at exit; the previous setting is restored afterwards."""
    from hypothesis import configuration

    key = "__hypothesis_home_directory"
    current = getattr(configuration, key, None)
    default = getattr(configuration, "__hypothesis_home_directory_default", None)
    if os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY") or (current is not None and current != default):
        yield
        return
    if "dir" not in _STORAGE:
        _STORAGE["dir"] = tempfile.mkdtemp(prefix="sdekit-hypothesis-")
        atexit.register(shutil.rmtree, _STORAGE["dir"], True)
    configuration.set_hypothesis_home_dir(_STORAGE["dir"])
    try:
        yield
    finally:
        setattr(configuration, key, current)


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
    """Names of the checks `check_solver` would run on ``solver`` (for ``pytest.mark.parametrize``)."""
    solver = _as_solver(solver)
    caps = capabilities(solver)
    return [n for n in _select(kinds, skip) if CHECKS[n].applies(solver, caps) is None]


def check_solver(solver: str | Solver | type[Solver], *, kinds: Sequence[str] = ("auto",), skip: Sequence[str] = (),
                 seed: int = 0, profile: str | Profile = "ci",
                 torch_threads: int | None = 1) -> Report:
    """Run the conformance suite on ``solver`` and return a `Report` (never raises on a failed check:
    call ``report.raise_for_failures()`` or use `assert_solver_conforms`).

    Args:
        solver: a [`Solver`][sdekit.solvers.Solver] instance, a Solver subclass (built without arguments) or a
            registry name.
        kinds: ``"auto"`` (every check that applies), check names and/or groups (``"orders"``,
            ``"exact"``, ``"invariance"``, ``"accounting"``, ``"custom"``).
        skip: check names not to run.
        seed: seeds every hypothesis run (the same seed draws the same examples).
        profile: ``"quick"``, ``"ci"``, ``"thorough"`` or a `Profile`.
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
    with _torch_threads(torch_threads), _hypothesis_storage():
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
    """`check_solver`, then raise an AssertionError with every failure and its shrunk counterexample.
    For pytest: ``def test_my_solver(): assert_solver_conforms(MySolver())``. Returns the report."""
    report = check_solver(solver, **kwargs)
    report.raise_for_failures()
    return report


# The checks live one module per group; importing them registers them, in this order (the report's).
from . import checks_ode_orders  # noqa: E402,F401,I001
from . import checks_exact  # noqa: E402,F401,I001
from . import checks_invariance  # noqa: E402,F401,I001
from . import checks_accounting  # noqa: E402,F401,I001
from . import checks_sde_orders  # noqa: E402,F401,I001
