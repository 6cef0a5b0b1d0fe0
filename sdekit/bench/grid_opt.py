"""Time-grid optimisation: choose the grid that minimises a deterministic sampler's error on a given model.

Two methods, one entry point (`optimize_grid`):

``"dp"`` (default): dynamic programming over a fine candidate grid, after GITS (Chen et al., ICML 2024, "On the
Trajectory Regularity of ODE-based Diffusion Sampling"). Teacher trajectories (a float64 DOP853 solve of the
PF-ODE from the pilot ``x_T``, read at every candidate time) give the cost of each candidate step ``i -> j``: the
RMS over the teachers of the sampler's one step from the teacher state at ``c_i`` minus the teacher state at
``c_j``. A multistep sampler's one step from a fresh state is its first-order warm-up, so its costs are those
of DDIM. The ``steps``-step grid minimising the summed costs is a shortest path in the DAG of candidates,
found exactly in ``O(steps · N²)``. The summed local errors stand in for the global error, and a multistep
sampler's history is not in them, so a short Nelder–Mead polish (``refine`` runs of the real sampler on the
pilots, as below) starts from the better of the DP grid and the best standard spacing.

``"nelder_mead"``: the grid is parameterised by its log-SNR increments, ``lambda_i = lambda_start +
(lambda_end - lambda_start) · cumsum(softmax(theta))_i`` (every parameter vector gives a strictly monotone grid
with fixed ends); starting from the best standard spacing, Nelder–Mead minimises the RMSE of the sampler's end
points on the pilot trajectories against the reference.

Both select on pilot trajectories and fall back to the best standard spacing if that is better there; the
result is validated on fresh ``x_T`` the optimiser never saw and returned with both errors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..analytic import reference_solve, reference_solve_log_snr
from ..reverse import probability_flow
from ..sampling import sample
from ..schedules import SPACINGS, time_grid
from ..solvers import get as get_solver


@dataclass
class GridResult:
    """``t``: the optimised grid in continuous time; ``grid``: the same in the model's time convention (pass it
    to ``sample(..., grid=result.grid)``); RMSEs on the pilot and the fresh validation trajectories for the
    optimised grid and the best standard spacing (``baseline``)."""

    t: torch.Tensor
    grid: torch.Tensor
    solver: str
    steps: int
    baseline: str
    rmse_pilot: float
    rmse_pilot_baseline: float
    rmse_fresh: float
    rmse_fresh_baseline: float
    evaluations: int
    history: list = field(default_factory=list)
    method: str = "nelder_mead"
    chosen: str = "optimised"
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """A JSON-able dict of the result (tensors as lists)."""
        d = {k: v for k, v in vars(self).items() if k not in ("t", "grid")}
        d["t"], d["grid"] = self.t.tolist(), self.grid.tolist()
        return d

    def save(self, path, model: str | None = None) -> None:
        """Write this grid as a grid file (`save_grids`)."""
        save_grids(path, [self], model=model)


GRID_FORMAT = "sdekit-grids/1"


def save_grids(path, results, model: str | None = None) -> None:
    """Write grids to a JSON grid file: ``{"format": "sdekit-grids/1", "model": ..., "grids": [entry, ...]}``,
    each entry `GridResult.to_dict` (``t`` in continuous time, ``grid`` in the model's convention, the
    solver, the step count and the pilot and fresh errors). ``sdekit compare --grid FILE`` reads it."""
    import json
    import os

    entries = [r.to_dict() if isinstance(r, GridResult) else dict(r) for r in results]
    blob = json.dumps({"format": GRID_FORMAT, "model": model, "grids": entries}, indent=1)
    os.makedirs(os.path.dirname(os.path.abspath(str(path))), exist_ok=True)
    with open(path, "w") as f:
        f.write(blob)


def load_grids(path) -> list[dict]:
    """Read a grid file written by `save_grids`; every entry is checked (a registered deterministic
    solver, ``steps`` whole steps, a finite strictly decreasing ``t`` of ``steps + 1`` times)."""
    import json

    from ..solvers import REGISTRY

    try:
        with open(path) as f:
            blob = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"grid file {path}: not JSON ({e})") from None
    if not isinstance(blob, dict) or blob.get("format") != GRID_FORMAT or not isinstance(blob.get("grids"), list):
        raise ValueError(f"grid file {path}: not an sdekit grid file (format {GRID_FORMAT!r} with a list 'grids')")
    out = []
    for i, e in enumerate(blob["grids"]):
        where = f"grid file {path}, entry {i}"
        if not isinstance(e, dict) or not {"solver", "steps", "t"} <= set(e):
            raise ValueError(f"{where}: needs 'solver', 'steps' and 't'")
        if e["solver"] not in REGISTRY:
            raise ValueError(f"{where}: unknown solver {e['solver']!r}")
        t = torch.as_tensor(e["t"], dtype=torch.float64)
        steps = e["steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or t.ndim != 1 or t.numel() != steps + 1:
            raise ValueError(f"{where}: 'steps' must be an int with len(t) = steps + 1, got {steps!r}, {t.numel()}")
        if not bool(torch.isfinite(t).all()) or not bool((t[1:] < t[:-1]).all()):
            raise ValueError(f"{where}: 't' must be finite and strictly decreasing")
        out.append({**e, "t": t.tolist(), "model": blob.get("model")})
    return out


def _model_grid(model, t: torch.Tensor) -> torch.Tensor:
    p = model.process
    if getattr(model, "time_input", "t") == "index":
        return p.index_from_t(t)
    if getattr(model, "time_input", "t") == "log_snr":
        return p.log_snr(t)
    return t


METHODS = ("dp", "nelder_mead")
REFERENCES = ("auto", "t", "log_snr")


def _discrete(process) -> bool:
    """Whether ``process`` has a discrete DDPM schedule (``VP.from_betas``/``from_alphas_cumprod``)."""
    try:
        process.t_from_index(0)
    except (TypeError, AttributeError, NotImplementedError):
        return False
    return True


def optimize_grid(model, solver="dpmpp_2m", steps: int = 10, *, method: str = "dp", n_pilot: int = 128,
                  n_fresh: int = 256, seed: int = 0, t_start: float | None = None, t_end: float | None = None,
                  candidates: int = 100, refine: int = 100, max_evals: int = 400, reference_rtol: float = 1e-10,
                  reference: str = "auto", pool: int | None = None, progress: bool = False,
                  **options: object) -> GridResult:
    """Optimise the time grid of a deterministic ``solver`` with ``steps`` steps on ``model``.

    Args:
        method: ``"dp"`` (GITS-style dynamic programming over ``candidates + 1`` log-SNR-uniform candidate
            times; costs ``candidates · (candidates + 1) / 2`` one-step sampler calls on the ``n_pilot``
            teachers), then ``refine`` Nelder–Mead evaluations of the sampler on the pilots from the better of
            that grid and the best standard spacing (0: the DP grid as it is); or ``"nelder_mead"``
            (``max_evals`` sampler runs on the pilots from the best standard spacing). See the module docstring.
        n_pilot: pilot trajectories (the teachers of ``"dp"``); ``n_fresh``: fresh trajectories for validation.
        reference_rtol: rtol = atol of the float64 DOP853 reference (teachers and validation).
        reference: the variable the reference integrates the PF-ODE in: ``"t"``, ``"log_snr"``
            ([`reference_solve_log_snr`][sdekit.analytic.reference_solve_log_snr]: the same solution, smooth where
            the schedule is not, e.g. a discrete DDPM schedule) or ``"auto"`` (``"log_snr"`` for a discrete
            schedule, ``"t"`` otherwise).
        pool: stratified pilots (None: ``n_pilot`` plain draws). Draw ``pool`` x_T, solve them (at 100 times
            the reference tolerance), rank them by the squared error of the best standard spacing, and keep the
            ``n_pilot // 4`` hardest (weight 1) and a uniform subsample of the rest, weighted by the inverse of
            its sampling fraction. Every weighted mean over the pilots is then an unbiased estimate of the mean
            over the pool, with the rare hard trajectories (those that switch modes, which set the RMSE on
            multimodal data) all in it instead of a few of them.
        progress: show a progress bar over the cost matrix (``"dp"``) or the evaluations (``"nelder_mead"``).
        options: go to the sampler (e.g. ``order=3`` for UniPC).

    Costs two float64 reference solves (pilots at every candidate time, fresh draws at the end).
    """
    s = get_solver(solver, **options)
    if s.noise_types:
        raise ValueError(f"optimize_grid needs a deterministic sampler; {s.name!r} is stochastic")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(METHODS)}")
    if reference not in REFERENCES:
        raise ValueError(f"unknown reference {reference!r}; allowed: {', '.join(REFERENCES)}")
    if method == "dp" and (isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < steps):
        raise ValueError(f"candidates must be an int >= steps ({steps}), got {candidates!r}")
    for name, v in (("n_pilot", n_pilot), ("n_fresh", n_fresh)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    started = time.perf_counter()
    p = model.process
    shape = getattr(model, "sample_shape", None)
    if shape is None:
        raise ValueError("the model needs a sample_shape to draw pilot trajectories")
    t_hi = float(p.t_max if t_start is None else t_start)
    t_lo = float(p.t_min if t_end is None else t_end)
    if pool is not None and (isinstance(pool, bool) or not isinstance(pool, int) or pool < n_pilot):
        raise ValueError(f"pool must be an int >= n_pilot ({n_pilot}), got {pool!r}")
    gen = torch.Generator().manual_seed(seed)
    pilots = p.prior_sample((n_pilot if pool is None else pool, *shape), generator=gen, dtype=torch.float64)
    fresh = p.prior_sample((n_fresh, *shape), generator=gen, dtype=torch.float64)
    ode = probability_flow(p, model)
    lam_hi = float(p.log_snr(torch.tensor(t_hi, dtype=torch.float64)))
    lam_lo = float(p.log_snr(torch.tensor(t_lo, dtype=torch.float64)))
    if reference == "auto":
        reference = "log_snr" if _discrete(p) else "t"

    def solve(x, t_eval=None, rtol=reference_rtol):
        if reference == "log_snr":
            return reference_solve_log_snr(model, x, t_hi, t_lo, t_eval=t_eval, rtol=rtol, atol=rtol)
        return reference_solve(ode, x, t_hi, t_lo, t_eval=t_eval, rtol=rtol, atol=rtol)

    weights = None
    if pool is not None:
        pilots, weights = _stratified_pilots(model, s, pilots, solve(pilots, rtol=100 * reference_rtol), n_pilot,
                                             steps, t_hi, t_lo, gen)

    if method == "dp":
        cand = p.t_from_log_snr(torch.linspace(lam_hi, lam_lo, candidates + 1, dtype=torch.float64))
        cand[0], cand[-1] = t_hi, t_lo
        teacher = solve(pilots, cand)
        ref_p = teacher[-1]
    else:
        ref_p = solve(pilots)
    ref_f = solve(fresh)

    def err(t_grid, x, ref):
        out = sample(model, x, s, grid=_model_grid(model, t_grid)).x
        v = _rms(out - ref, weights if x is pilots else None)
        return v if np.isfinite(v) else 1e30

    base = {sp: err(time_grid(p, steps, sp, t_start=t_hi, t_end=t_lo), pilots, ref_p) for sp in SPACINGS}
    best = min(base, key=base.get)
    t0 = time_grid(p, steps, best, t_start=t_hi, t_end=t_lo)
    history = []
    if method == "dp":
        cost = _step_costs(s, ode, cand, teacher, progress, weights)
        t_opt = cand[_shortest_path(cost, steps)]
        if refine and steps > 1:  # polish with the sampler's own error (multistep history included)
            start = t_opt if err(t_opt, pilots, ref_p) < base[best] else t0
            t_opt = _nelder_mead(err, pilots, ref_p, p, start, t_hi, t_lo, lam_hi, lam_lo, refine, history, progress)
    elif steps > 1:
        t_opt = _nelder_mead(err, pilots, ref_p, p, t0, t_hi, t_lo, lam_hi, lam_lo, max_evals, history, progress)
    else:
        t_opt = t0
    rmse_opt = err(t_opt, pilots, ref_p)
    chosen = "optimised"
    if not rmse_opt < base[best]:  # selected on the pilots: keep the best standard spacing if it is better there
        t_opt, rmse_opt, chosen = t0, base[best], f"baseline ({best})"
    return GridResult(t=t_opt, grid=_model_grid(model, t_opt), solver=s.name, steps=steps, baseline=best,
                      rmse_pilot=rmse_opt, rmse_pilot_baseline=base[best],
                      rmse_fresh=err(t_opt, fresh, ref_f), rmse_fresh_baseline=err(t0, fresh, ref_f),
                      evaluations=len(history), history=history, method=method, chosen=chosen,
                      seconds=time.perf_counter() - started)


def _rms(diff: torch.Tensor, weights: torch.Tensor | None) -> float:
    """The root mean square of ``diff`` over samples and coordinates, the samples weighted by ``weights``."""
    per = diff.pow(2).reshape(diff.shape[0], -1).mean(1)
    if weights is None:
        return float(per.mean().sqrt())
    return float(((weights * per).sum() / weights.sum()).sqrt())


def _stratified_pilots(model, solver, pool_x, pool_ref, n_pilot, steps, t_hi, t_lo, gen):
    """``n_pilot`` pilots from the pool and their weights: the ``n_pilot // 4`` with the largest error of the best
    standard spacing (weight 1), and a uniform draw of the others (weight: the inverse sampling fraction)."""
    p = model.process
    errs = None
    for sp in SPACINGS:
        out = sample(model, pool_x, solver, grid=_model_grid(model, time_grid(p, steps, sp, t_start=t_hi,
                                                                                t_end=t_lo))).x
        e = (out - pool_ref).pow(2).reshape(len(pool_x), -1).mean(1)
        if bool(torch.isfinite(e).all()) and (errs is None or float(e.mean()) < float(errs.mean())):
            errs = e
    if errs is None:
        raise ValueError("stratified pilots: no standard spacing gives finite errors on the pool")
    n_hard = max(n_pilot // 4, 1)
    order = torch.argsort(errs, descending=True)
    hard, rest = order[:n_hard], order[n_hard:]
    n_easy = n_pilot - n_hard
    pick = rest[torch.randperm(len(rest), generator=gen)[:n_easy]]
    weights = torch.cat([torch.ones(n_hard, dtype=torch.float64),
                         torch.full((len(pick),), len(rest) / max(len(pick), 1), dtype=torch.float64)])
    return pool_x[torch.cat([hard, pick])], weights


def _step_costs(solver, ode, cand: torch.Tensor, teacher: torch.Tensor, progress: bool,
                weights: torch.Tensor | None = None) -> np.ndarray:
    """``cost[i, j]`` (``i < j``): RMS over the teachers of one step of ``solver`` from ``teacher[i]`` at
    ``cand[i]`` to ``cand[j]``, minus ``teacher[j]``; ``inf`` elsewhere."""
    n = len(cand)
    cost = np.full((n, n), np.inf)
    times = cand.tolist()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n * (n - 1) // 2, desc=f"optimize_grid[dp, {solver.name}]", leave=False)
    for i in range(n - 1):
        x = teacher[i]
        for j in range(i + 1, n):
            state = solver.init(ode, times[i], x)
            x1 = solver.step(ode, times[i], times[j], x, None, state).x1
            v = _rms(x1 - teacher[j], weights)
            cost[i, j] = v if np.isfinite(v) else np.inf
        if bar is not None:
            bar.update(n - 1 - i)
    if bar is not None:
        bar.close()
    return cost


def _shortest_path(cost: np.ndarray, steps: int) -> list[int]:
    """Indices ``0 = i_0 < ... < i_steps = N - 1`` minimising ``sum cost[i_k, i_k+1]`` (dynamic programming)."""
    n = cost.shape[0]
    best = np.full((steps + 1, n), np.inf)
    arg = np.zeros((steps + 1, n), dtype=int)
    best[0, 0] = 0.0
    for k in range(1, steps + 1):
        total = best[k - 1][:, None] + cost  # (from, to)
        arg[k] = np.argmin(total, axis=0)
        best[k] = total[arg[k], np.arange(n)]
    if not np.isfinite(best[steps, n - 1]):
        raise ValueError(f"no finite {steps}-step path through the candidate grid (non-finite sampler steps)")
    path = [n - 1]
    for k in range(steps, 0, -1):
        path.append(int(arg[k, path[-1]]))
    return path[::-1]


def _nelder_mead(err, pilots, ref_p, p, t0, t_hi, t_lo, lam_hi, lam_lo, max_evals, history, progress):
    lam0 = p.log_snr(t0)
    theta0 = torch.log((lam0[1:] - lam0[:-1]).clamp_min(1e-12) / (lam_lo - lam_hi)).numpy()

    def grid_of(theta):
        w = torch.softmax(torch.as_tensor(theta, dtype=torch.float64), 0)
        lam = lam_hi + (lam_lo - lam_hi) * torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(w, 0)])
        t = p.t_from_log_snr(lam)
        t[0], t[-1] = t_hi, t_lo
        return t

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_evals, desc="optimize_grid[nelder_mead]", leave=False)

    def objective(theta):
        v = err(grid_of(theta), pilots, ref_p)
        history.append(v)
        if bar is not None:
            bar.update(1)
        return np.log(v)

    import scipy.optimize  # loaded on first use

    res = scipy.optimize.minimize(objective, theta0, method="Nelder-Mead",
                                  options={"maxfev": max_evals, "xatol": 1e-4, "fatol": 1e-6, "adaptive": True})
    if bar is not None:
        bar.close()
    return grid_of(res.x)
