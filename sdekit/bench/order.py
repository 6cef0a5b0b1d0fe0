"""Convergence-order estimation as a library function.

Errors on a ladder of step sizes, then the least-squares slope of ``log error`` against ``log dt``:

- ``kind="ode"``: RMS error of the end state against an exact solution (or the float64 reference);
  confidence interval from the regression's standard error (Student t, n - 2 dof).
- ``kind="strong"``: ``E|X_N - X(T)|`` over samples, all step sizes on ONE Brownian path per sample (a
  [`BrownianPath`][sdekit.brownian.BrownianPath], so coarse increments are sums of fine ones); ``exact`` gives the
  pathwise solution on that path. CI by bootstrap over samples.
- ``kind="weak"``: ``|E φ(X_N) - E φ(X(T))|``. With a pathwise ``exact`` the difference is estimated on
  coupled paths, ``mean(φ(X_N) - φ(X(T)))`` (a control variate whose Monte-Carlo error scales with the
  strong error, so small weak errors stay measurable); with ``exact_mean`` the plain estimator is used.
  The Monte-Carlo standard error of each error is reported; CI by bootstrap over samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..brownian import BrownianPath
from ..sde import SDE
from ..solve import solve
from ..solvers import Solver
from ..solvers import get as get_solver


@dataclass
class OrderRecord:
    """Result of `convergence_order`: fitted ``order`` with a 95% ``ci``, the error table and the
    declared order of the solver for this problem."""

    solver: str
    kind: str
    dts: list[float]
    errors: list[float]
    stderrs: list[float] | None
    order: float
    ci: tuple[float, float]
    declared: float | None
    nfe: list[int] = field(default_factory=list)

    def passed(self, tol: float) -> bool:
        """Whether the measured order is within ``tol`` of the declared one (False when none is declared)."""
        return self.declared is not None and abs(self.order - self.declared) <= tol

    def to_dict(self) -> dict:
        """A JSON-able dict of every field."""
        return asdict(self)

    def table(self) -> str:
        """A plain-text table: the fitted order with its confidence interval, then step size, error, stderr."""
        lines = [f"{self.solver} ({self.kind}): order {self.order:.3f} [{self.ci[0]:.3f}, {self.ci[1]:.3f}]"
                 f" declared {self.declared}", f"{'dt':>12} {'error':>12} {'stderr':>12}"]
        for i, (h, e) in enumerate(zip(self.dts, self.errors)):
            se = f"{self.stderrs[i]:12.3e}" if self.stderrs else f"{'':>12}"
            lines.append(f"{h:12.4e} {e:12.4e} {se}")
        return "\n".join(lines)


def fit_order(dts: Sequence[float], errors: Sequence[float]) -> tuple[float, tuple[float, float]]:
    """Least-squares slope of log(error) vs log(dt), with a 95% confidence interval from its standard error."""
    x, y = np.log(np.asarray(dts, float)), np.log(np.asarray(errors, float))
    if len(x) < 2:
        raise ValueError("need at least two step sizes to fit an order")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"errors must be positive and finite to fit an order, got {list(errors)}")
    slope, intercept = np.polyfit(x, y, 1)
    if len(x) < 3:
        return float(slope), (float(slope), float(slope))
    resid = y - (slope * x + intercept)
    se = math.sqrt(float(resid @ resid) / (len(x) - 2) / float(((x - x.mean()) ** 2).sum()))
    import scipy.stats  # loaded on first use: `import sdekit` stays light

    q = float(scipy.stats.t.ppf(0.975, len(x) - 2))
    return float(slope), (float(slope - q * se), float(slope + q * se))


def ladder_order(solver: str, kind: str, steps: Sequence[int], error: Callable, *, span: float = 1.0,
                 declared: float | None = None, per: str = "step") -> OrderRecord:
    """The one order-measuring loop: ``error(n)`` for each step count ``n`` of ``steps``, then the least-squares
    slope of log error against log step (`fit_order`).

    ``error(n)`` returns the error, or ``(error, nfe)``. ``per="step"``: the step is ``span / n``; ``per="nfe"``:
    the step is ``1 / nfe`` (samplers whose evaluations per step differ). `convergence_order`,
    `sampler_order`, the order CLI and the conformance checks all measure through it.
    """
    if per not in ("step", "nfe"):
        raise ValueError(f"per must be 'step' or 'nfe', got {per!r}")
    steps = [int(n) for n in steps]
    if len(steps) < 2 or any(n < 1 for n in steps):
        raise ValueError(f"steps must hold at least two positive step counts, got {steps}")
    errors, nfes = [], []
    for n in steps:
        out = error(n)
        e, nfe = out if isinstance(out, tuple) else (out, None)
        errors.append(float(e))
        if nfe is not None:
            nfes.append(int(nfe))
    if per == "nfe" and len(nfes) != len(steps):
        raise ValueError("per='nfe' needs error(n) to return (error, nfe)")
    if per == "nfe" and len(set(nfes)) < len(nfes):
        raise ValueError(f"the evaluations {nfes} do not grow with the steps {steps}: the solver does not take the "
                         "steps it is given")
    dts = [1 / k for k in nfes] if per == "nfe" else [abs(span) / n for n in steps]
    order, ci = fit_order(dts, errors)
    return OrderRecord(solver, kind, dts, errors, None, order, ci, declared, nfes)


def sampler_order(model, solver, x_T: torch.Tensor, reference: torch.Tensor, *, steps: Sequence[int],
                  spacing: str = "log_snr", **options) -> OrderRecord:
    """Order of a diffusion sampler (or any solver run by [`sdekit.sample`][]) per model evaluation: the RMS
    error of ``sample(model, x_T, solver, steps=n, spacing=spacing, **options).x`` against ``reference`` (the exact
    end state at the grid's end), fitted against ``1/NFE``. ``spacing`` may also be a function ``n -> grid`` (times
    in the model's convention). Raises ValueError when a run's reported NFE differs
    from the model's own count."""
    from ..sampling import sample

    name = solver if isinstance(solver, str) else solver.name

    def error(n):
        if callable(spacing):
            sol = sample(model, x_T, solver, grid=spacing(n), **options)
        else:
            sol = sample(model, x_T, solver, steps=n, spacing=spacing, **options)
        counted = sol.stats.get("nfe_counted", sol.stats["nfe"])
        if counted != sol.stats["nfe"]:
            raise ValueError(f"{name}: reports nfe={sol.stats['nfe']} but evaluated the model {counted} times "
                             f"({n} steps)")
        return float((sol.x - reference).double().pow(2).mean().sqrt()), sol.stats["nfe"]

    declared = get_solver(solver, **options).order if isinstance(solver, str) else solver.order
    return ladder_order(name, "ode", steps, error, declared=declared, per="nfe")


def _bootstrap_ci(dts, per_sample: torch.Tensor, stat: Callable, n_boot: int, seed: int):
    """per_sample: (levels, n). stat maps a (levels, n') tensor to per-level errors."""
    rng = torch.Generator().manual_seed(seed)
    n = per_sample.shape[1]
    slopes = []
    for _ in range(n_boot):
        idx = torch.randint(0, n, (n,), generator=rng)
        errs = stat(per_sample[:, idx]).tolist()
        if all(e > 0 for e in errs):
            slopes.append(fit_order(dts, errs)[0])
    if not slopes:
        return (float("nan"), float("nan"))
    lo, hi = np.percentile(slopes, [2.5, 97.5])
    return float(lo), float(hi)


def convergence_order(problem: SDE, solver: str | Solver, x0: torch.Tensor, *, t0: float, t1: float,
                      steps: Sequence[int], kind: str = "ode", exact: torch.Tensor | Callable | None = None,
                      phi: Callable | None = None, exact_mean: float | torch.Tensor | None = None,
                      seed: int = 0, n_bootstrap: int = 200) -> OrderRecord:
    """Measure the convergence order of ``solver`` on ``problem`` over uniform grids of ``steps`` steps.

    Args:
        problem: an SDE/ODE; ``x0`` its initial state (for SDEs the batch holds the independent samples).
        kind: ``"ode"``, ``"strong"`` or ``"weak"``.
        exact: ODE: the exact final state (tensor) or ``exact(x0)``; SDE: ``exact(x0, bm)`` giving the
            pathwise solution at ``t1`` on the `BrownianPath` ``bm``.
        phi: weak test function, per-sample: ``phi(x) -> (B,)``; default the squared norm.
        exact_mean: ``E φ(X(T))`` (weak only, when no pathwise ``exact`` is given).
        steps: numbers of steps, e.g. ``(8, 16, 32, 64)``; for SDEs use powers of two so the grids are
            dyadic refinements of one another on the Brownian tree.
    """
    if kind not in ("ode", "strong", "weak"):
        raise ValueError(f"unknown kind {kind!r}; allowed: 'ode', 'strong', 'weak'")
    steps = [int(n) for n in steps]
    if len(steps) < 2 or any(n < 1 for n in steps):
        raise ValueError(f"steps must hold at least two positive step counts, got {steps}")
    solver = get_solver(solver)
    dts = [abs(t1 - t0) / n for n in steps]
    noise = None if problem.is_ode else problem.noise_type
    declared = solver.order if kind == "ode" else (
        solver.strong_order_for(noise) if kind == "strong" else solver.weak_order_for(noise))
    nfe = []
    if kind == "ode":
        ref = exact(x0) if callable(exact) else exact
        if ref is None:
            from ..analytic import reference_solve

            ref = reference_solve(problem, x0, t0, t1, rtol=1e-13, atol=1e-13)

        def ode_error(n):
            sol = solve(problem, x0, solver, ts=torch.linspace(t0, t1, n + 1, dtype=torch.float64))
            return float(((sol.x - ref).double() ** 2).mean().sqrt()), sol.stats["nfe"]

        return ladder_order(solver.name, kind, steps, ode_error, span=t1 - t0, declared=declared)

    if problem.is_ode:
        raise ValueError(f"kind={kind!r} needs an SDE")
    if exact is None and exact_mean is None:
        raise ValueError("strong/weak orders need exact(x0, bm) (pathwise) or, for weak, exact_mean")
    if kind == "strong" and exact is None:
        raise ValueError("strong order needs the pathwise exact(x0, bm)")
    lo, hi = min(t0, t1), max(t0, t1)
    # the finest grid is the path's skeleton (the coarser uniform grids of power-of-two steps are subsets)
    bm = BrownianPath(lo, hi, problem.brownian_shape(tuple(x0.shape)), seed=seed, dtype=x0.dtype,
                      device=x0.device, levy_area=solver.needs_levy_area,
                      grid=torch.linspace(t0, t1, max(steps) + 1, dtype=torch.float64))
    phi = phi or (lambda x: (x.reshape(x.shape[0], -1) ** 2).sum(-1))
    ref = exact(x0, bm) if exact is not None else None
    per_sample = []
    for n in steps:
        sol = solve(problem, x0, solver, ts=torch.linspace(t0, t1, n + 1, dtype=torch.float64), brownian=bm)
        nfe.append(sol.stats["nfe"])
        if kind == "strong":
            per_sample.append((sol.x - ref).reshape(x0.shape[0], -1).double().norm(dim=-1))
        elif ref is not None:
            per_sample.append((phi(sol.x) - phi(ref)).double())
        else:
            per_sample.append(phi(sol.x).double() - float(exact_mean))
    mat = torch.stack(per_sample)  # (levels, samples)
    nsamp = mat.shape[1]
    if kind == "strong":
        stat = lambda m: m.mean(1)  # noqa: E731
    else:
        stat = lambda m: m.mean(1).abs()  # noqa: E731
    errors = stat(mat).tolist()
    stderrs = (mat.std(1) / math.sqrt(nsamp)).tolist()
    order, _ = fit_order(dts, errors)
    ci = _bootstrap_ci(dts, mat, stat, n_bootstrap, seed + 1)
    return OrderRecord(solver.name, kind, dts, errors, stderrs, order, ci, declared, nfe)
