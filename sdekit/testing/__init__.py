"""Testing tools for solvers: hypothesis strategies for problems with exact answers, and a conformance suite.

- [`sdekit.testing.strategies`][]: random problems with exact answers (linear ODEs and SDEs, OU, GBM,
  Stuart–Landau, logistic, Riccati), diffusion processes with random parameters, Gaussian mixtures as exact
  score models, non-uniform time grids, state shapes and dtypes; all shrink to small, readable cases.
- [`sdekit.testing.problems`][]: the builders behind them (``Problem`` with ``exact``, ``pathwise``,
  ``mean``, ``covariance``).
- `check_solver`: every check that applies to a solver's declared capabilities (orders, exactness,
  invariances, accounting), returning a `Report`; `assert_solver_conforms` for pytest.
- `ImpulseNoise` / `exact_moments`: exact weak moments of a scheme on a linear SDE (no Monte-Carlo).
- `CountingProblem`: counts drift and diffusion evaluations.

Needs hypothesis (``pip install 'sdekit[testing]'``). See ``docs/testing.md``.
"""

import importlib

# Light parts (no hypothesis needed): the problems, exact weak moments and evaluation counting.
from . import problems
from .counting import CountingProblem
from .noise import CastNoise, ImpulseNoise, MirrorNoise, NotAffineError, PaddedNoise, SequenceNoise, exact_moments
from .problems import Problem

# The strategies and the conformance suite need hypothesis: they load on first use, so ``exact_moments`` and the
# problems work without it (``sdekit order --kind weak`` uses them).
_LAZY = {name: "conformance" for name in (
    "CHECKS", "PROFILES", "Case", "Check", "CheckFailed", "Context", "Failure", "Profile", "Report",
    "applicable_checks", "assert_solver_conforms", "capabilities", "check_solver", "hypothesis_settings",
    "register_check", "unregister_check")}
_LAZY["measure_ode_order"] = "checks_ode_orders"
_LAZY.update({"strategies": None, "conformance": None, "diffusion_checks": None})


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'sdekit.testing' has no attribute {name!r}")
    module = _LAZY[name] or name
    mod = importlib.import_module(f".{module}", __name__)
    if module in ("conformance", "diffusion_checks", "checks_ode_orders"):
        importlib.import_module(".diffusion_checks", __name__)  # registers the diffusion-sampler checks
    value = mod if _LAZY[name] is None else getattr(mod, name)
    globals()[name] = value
    return value


__all__ = [
    "strategies", "problems", "Problem",
    "check_solver", "assert_solver_conforms", "applicable_checks", "capabilities", "Report", "Failure",
    "CheckFailed", "Profile", "PROFILES", "hypothesis_settings", "CHECKS", "Check", "Context", "Case",
    "register_check", "unregister_check", "measure_ode_order",
    "ImpulseNoise", "SequenceNoise", "exact_moments", "NotAffineError", "MirrorNoise", "CastNoise", "PaddedNoise",
    "CountingProblem",
]
