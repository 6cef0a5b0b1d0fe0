"""The one integration loop for every SDE/ODE of the generic layer.

``solve`` owns the time grid (a tensor, ``t0, t1, dt``, or an adaptive controller), the Brownian path,
``save_at`` and the statistics; solvers only step. Grids may increase or decrease: a reverse-time
diffusion is solved on a decreasing grid directly, with no time flip.

On the fixed-grid path nothing synchronises a GPU per step: times are Python floats taken from the grid
once, and NaN/Inf is tracked as per-step device flags checked once at the end (on CPU, where a check is
cheap, one reduction per step, every step is checked at once so that the error names the first bad step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ._utils import time_like
from .brownian import BrownianPath, FreshNoise, VirtualBrownianTree
from .solvers import Solver
from .solvers import get as get_solver


@dataclass
class Solution:
    """Result of :func:`solve`: final state ``x``; saved states ``xs`` at times ``ts``; statistics
    ``stats`` with ``nfe`` (drift/model evaluations), ``n_steps``, ``n_accepted``, ``n_rejected``."""

    x: torch.Tensor
    xs: torch.Tensor | None = None
    ts: torch.Tensor | None = None
    stats: dict = field(default_factory=dict)


@dataclass
class PIController:
    """Adaptive step-size controller on the RMS error norm ``‖err / (atol + rtol · max(|x0|, |x1|))‖``.

    ``h_new = h · clip(safety · r^(-(icoeff + pcoeff)/k) · r_prev^(pcoeff/k), factor_min, factor_max)``
    with ``k`` = (order of the embedded estimate) + 1 (Hairer & Wanner, *Solving ODEs II*, §IV.2;
    ``pcoeff = 0`` is the classic I-controller). ``dt0 = None`` picks the first step by Hairer's rule.
    """

    rtol: float = 1e-5
    atol: float = 1e-5
    pcoeff: float = 0.0
    icoeff: float = 1.0
    safety: float = 0.9
    factor_min: float = 0.2
    factor_max: float = 10.0
    dt0: float | None = None
    dt_min: float = 0.0
    dt_max: float = math.inf
    max_steps: int = 100_000

    def __post_init__(self):
        for name in ("rtol", "atol"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.rtol == 0 and self.atol == 0:
            raise ValueError("rtol and atol cannot both be 0")
        if not 0 < self.factor_min < 1 < self.factor_max:
            raise ValueError("need 0 < factor_min < 1 < factor_max")
        if not (isinstance(self.max_steps, int) and self.max_steps > 0):
            raise ValueError(f"max_steps must be a positive int, got {self.max_steps!r}")

    def factor(self, ratio: float, prev_ratio: float, order: float) -> float:
        if not math.isfinite(ratio):
            return self.factor_min
        k = order + 1
        ratio = max(ratio, 1e-10)
        f = self.safety * ratio ** (-(self.icoeff + self.pcoeff) / k) * max(prev_ratio, 1e-10) ** (self.pcoeff / k)
        return min(self.factor_max, max(self.factor_min, f))


#: the most steps a fixed grid may have (a 10-million-step Python loop is already hours): a tiny ``dt`` is refused
#: before any memory is allocated
MAX_STEPS = 10_000_000


def _grid(ts, t0, t1, dt) -> list[float]:
    if ts is not None:
        if any(v is not None for v in (t0, t1, dt)):
            raise ValueError("give either ts or (t0, t1, dt), not both")
        grid = torch.as_tensor(ts, dtype=torch.float64).detach().cpu()
        if grid.ndim != 1 or grid.numel() < 2:
            raise ValueError(f"ts must be a 1-D grid of at least 2 times, got shape {tuple(grid.shape)}")
        if not bool(torch.isfinite(grid).all()):
            raise ValueError("ts contains NaN/Inf")
        d = grid[1:] - grid[:-1]
        if not (bool((d > 0).all()) or bool((d < 0).all())):
            i = int(torch.nonzero((d <= 0) if d[0] > 0 else (d >= 0))[0])
            raise ValueError(f"ts must be strictly monotone; it is not between index {i} and {i + 1}")
        return grid.tolist()
    if t0 is None or t1 is None or dt is None:
        raise ValueError("give ts, or t0, t1 and dt, or t0, t1 and an adaptive controller")
    t0, t1, dt = float(t0), float(t1), float(dt)
    if not all(math.isfinite(v) for v in (t0, t1, dt)):
        raise ValueError(f"t0, t1 and dt must be finite, got {t0}, {t1}, {dt}")
    if t0 == t1:
        raise ValueError("t0 and t1 must differ")
    if dt == 0 or (t1 - t0) * dt < 0:
        raise ValueError(f"dt={dt} must be non-zero with the sign of t1 - t0 = {t1 - t0:g}")
    n_float = abs(t1 - t0) / abs(dt)
    if not n_float <= MAX_STEPS:
        raise ValueError(f"dt={dt:g} gives {n_float:.3g} steps over [{min(t0, t1):g}, {max(t0, t1):g}]; at most "
                         f"{MAX_STEPS} steps: dt must be at least {abs(t1 - t0) / MAX_STEPS:.3g} in size")
    n = max(1, math.ceil(n_float - 1e-9))
    return torch.linspace(t0, t1, n + 1, dtype=torch.float64).tolist()


def _noise_source(problem, solver: Solver, x0, brownian, generator, t_first, t_last):
    if problem.is_ode:
        if brownian is not None:
            raise ValueError("a Brownian path was given for an ODE")
        return None
    shape = problem.brownian_shape(tuple(x0.shape))
    if brownian is None:
        return FreshNoise(shape, generator=generator, dtype=x0.dtype, device=x0.device)
    if generator is not None:
        raise ValueError("give either brownian or generator, not both")
    if solver.needs_levy_area and not getattr(brownian, "levy_area", False):
        raise ValueError(f"solver {solver.name!r} needs the space-time Lévy area: "
                         "use BrownianPath(..., levy_area=True)")
    if isinstance(brownian, (BrownianPath, VirtualBrownianTree)):
        if brownian.dtype != x0.dtype or brownian.device.type != x0.device.type:
            raise ValueError(f"Brownian path dtype/device ({brownian.dtype}, {brownian.device}) must match x0's "
                             f"({x0.dtype}, {x0.device})")
        if brownian.shape != tuple(shape):
            raise ValueError(f"Brownian path shape {brownian.shape} does not match the noise shape {tuple(shape)}")
        lo, hi = min(t_first, t_last), max(t_first, t_last)
        if lo < brownian.t0 - 1e-12 * abs(hi - lo) or hi > brownian.t1 + 1e-12 * abs(hi - lo):
            raise ValueError(f"the solve interval [{lo:g}, {hi:g}] is outside the Brownian path's "
                             f"[{brownian.t0:g}, {brownian.t1:g}]")
    return brownian


def _increment(source, solver, s, t):
    if source is None:
        return None
    return source.levy(s, t) if solver.needs_levy_area else source(s, t)


def _nonfinite(x: torch.Tensor) -> torch.Tensor:
    return ~torch.isfinite(x.sum())


def _raise_nonfinite(step: int, t: float):
    raise FloatingPointError(f"the state became NaN/Inf at step {step} (t = {t:.6g}): the drift or diffusion "
                             "returned NaN/Inf there, or the step is too large for this problem (try a smaller "
                             "step or a more stable solver)")


class _FirstCallCheck:
    """The problem seen by the first step of a solve: every drift and diffusion value is checked against the
    state's shape once (a drift returning ``x[:, :1]`` would otherwise broadcast to a finite wrong answer), then
    the solve runs on the problem itself."""

    def __init__(self, problem):
        self._problem = problem

    def __getattr__(self, name):
        return getattr(self._problem, name)

    def drift(self, t, x):
        f = self._problem.drift(t, x)
        if not isinstance(f, torch.Tensor) or f.shape != x.shape:
            got = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
            raise ValueError(f"the drift returned shape {got} for a state of shape {tuple(x.shape)}; it must "
                             "return the state's shape")
        return f

    def diffusion(self, t, x):
        g = self._problem.diffusion(t, x)
        if not isinstance(g, (torch.Tensor, float, int)):
            raise ValueError(f"the diffusion returned a {type(g).__name__}, not a tensor")
        if isinstance(g, torch.Tensor):
            shape = self._problem.brownian_shape(tuple(x.shape))
            try:
                out = self._problem.g_dw(g, torch.zeros(shape, dtype=x.dtype, device=x.device), x)
            except RuntimeError as e:
                raise ValueError(f"the diffusion's shape {tuple(g.shape)} does not fit noise_type="
                                 f"{self._problem.noise_type!r} and a state of shape {tuple(x.shape)}: {e}") from None
            if out.shape != x.shape:
                raise ValueError(f"the diffusion's shape {tuple(g.shape)} gives a noise term of shape "
                                 f"{tuple(out.shape)} for a state of shape {tuple(x.shape)} "
                                 f"(noise_type={self._problem.noise_type!r})")
        return g


def _step(solver, problem, i, t0, t1, x, noise, state):
    """One step with its context: an error raised inside (a model's NaN check, a shape check) names the step."""
    try:
        return solver.step(problem if i else _FirstCallCheck(problem), t0, t1, x, noise, state)
    except ValueError as e:
        raise ValueError(f"at step {i + 1} (t = {t0:.6g}): {e}") from None


def solve(problem, x0: torch.Tensor, solver="euler", *, ts=None, t0=None, t1=None, dt=None,
          controller: PIController | None = None, save_at=None, brownian=None,
          generator: torch.Generator | None = None, progress: bool = False) -> Solution:
    """Integrate an SDE/ODE of the generic layer from ``x0``.

    Args:
        problem: an :class:`~sdekit.sde.SDE` or :class:`~sdekit.sde.ODE`.
        x0: initial state, batch first, any shape.
        solver: a :class:`~sdekit.solvers.Solver` or a registry name.
        ts: a 1-D strictly monotone grid (increasing or decreasing); or ``t0, t1, dt``; or ``t0, t1``
            and ``controller`` (a :class:`PIController`) for adaptive steps (ODEs with an embedded pair).
        save_at: times to save (a 1-D tensor/list; on a fixed grid they must be grid points; adaptive
            solves use the solver's dense output), or ``"steps"`` for every step of a fixed grid.
        brownian: a :class:`~sdekit.brownian.BrownianPath` (or a ``VirtualBrownianTree``, or any ``bm(s, t)``);
            else fresh noise from ``generator``.

    Drift and diffusion receive ``t`` as a 0-d tensor in ``x0``'s dtype and on its device (as in torchdiffeq
    and torchsde); step sizes are computed from the float64 grid. On the first step every drift and diffusion
    value is checked against the state's shape.

    Raises:
        TypeError: a problem, state or solver of the wrong type.
        ValueError: bad arguments (grid, ``dt`` giving more than :data:`MAX_STEPS` steps, ``save_at``, a
            Brownian path that does not fit), a drift or diffusion of the wrong shape, or a model that returned
            NaN/Inf (the message names the step and time).
        FloatingPointError: the state became NaN/Inf (the message names the step).
        RuntimeError: an adaptive solve exceeded ``max_steps`` or its step size underflowed.
        progress: show a tqdm progress bar.
    """
    if not hasattr(problem, "drift"):
        raise TypeError(f"problem must be an SDE/ODE with a drift, got {type(problem).__name__}")
    if not isinstance(x0, torch.Tensor):
        raise TypeError(f"x0 must be a torch.Tensor, got {type(x0).__name__}")
    if not bool(torch.isfinite(x0).all()):
        raise ValueError("x0 contains NaN/Inf")
    solver = get_solver(solver)
    solver.check(problem)
    if controller is not None:
        return _solve_adaptive(problem, x0, solver, t0, t1, ts, dt, controller, save_at, progress)
    grid = _grid(ts, t0, t1, dt)
    source = _noise_source(problem, solver, x0, brownian, generator, grid[0], grid[-1])
    save_idx = _save_indices(save_at, grid)
    n = len(grid) - 1
    init_kw = {"grid": grid} if solver.wants_grid else {}
    x, state = x0, solver.init(problem, grid[0], x0, **init_kw)
    saved = [x0] if (save_idx is not None and 0 in save_idx) else []
    check_now = x0.device.type == "cpu"
    flags = []
    it = range(n)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"solve[{solver.name}]", leave=False)
    for i in it:
        x, state, _ = _step(solver, problem, i, grid[i], grid[i + 1], x,
                            _increment(source, solver, grid[i], grid[i + 1]), state)
        if check_now:
            if not math.isfinite(float(x.detach().sum())):  # one reduction; float() of a CPU scalar is cheap
                _raise_nonfinite(i + 1, grid[i + 1])
        else:
            flags.append(_nonfinite(x))
        if save_idx is not None and (i + 1) in save_idx:
            saved.append(x)
    if flags:
        bad = torch.stack(flags)
        if bool(bad.any()):  # the one synchronisation of the fixed-grid loop
            first = int(torch.nonzero(bad)[0])
            _raise_nonfinite(first + 1, grid[first + 1])
    nfe = solver.count_nfe(state, n)
    stats = {"nfe": nfe, "n_steps": n, "n_accepted": n, "n_rejected": 0, "solver": solver.name}
    if save_idx is None:
        return Solution(x=x, stats=stats)
    ts_saved = torch.tensor([grid[j] for j in sorted(save_idx)], dtype=torch.float64)
    return Solution(x=x, xs=torch.stack(saved), ts=ts_saved, stats=stats)


def _save_indices(save_at, grid):
    if save_at is None:
        return None
    if isinstance(save_at, str):
        if save_at != "steps":
            raise ValueError(f"save_at must be times or 'steps', got {save_at!r}")
        return set(range(len(grid)))
    times = torch.as_tensor(save_at, dtype=torch.float64).reshape(-1).tolist()
    if not all(math.isfinite(s) for s in times):
        raise ValueError(f"save_at contains NaN/Inf: {save_at!r}")
    g = torch.tensor(grid, dtype=torch.float64)
    tol = 1e-9 * float((g[-1] - g[0]).abs())
    out = set()
    for s in times:
        j = int(torch.argmin((g - s).abs()))
        if abs(grid[j] - s) > tol:
            raise ValueError(f"save_at time {s:g} is not a point of the fixed grid; add it to ts")
        out.add(j)
    return out


def _rms(x: torch.Tensor) -> float:
    return float(torch.sqrt(torch.mean(x.detach().to(torch.float64) ** 2)))


def _initial_step(problem, solver, t0, x0, direction, ctrl, f0, span):
    """Hairer, Nørsett & Wanner, *Solving ODEs I*, §II.4: starting step size (never beyond the interval)."""
    scale = ctrl.atol + ctrl.rtol * x0.abs()
    d0, d1 = _rms(x0 / scale), _rms(f0 / scale)
    h0 = 1e-6 if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
    h0 = min(h0, span)
    f1 = problem.drift(time_like(t0 + direction * h0, x0), x0 + direction * h0 * f0)
    d2 = _rms((f1 - f0) / scale) / h0
    k = (solver.order or 1.0)
    h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** (1.0 / k)
    return min(100 * h0, h1, span)


def _solve_adaptive(problem, x0, solver, t0, t1, ts, dt, ctrl: PIController, save_at, progress):
    if ts is not None or dt is not None:
        raise ValueError("an adaptive solve takes t0, t1 and controller (not ts or dt)")
    if t0 is None or t1 is None:
        raise ValueError("an adaptive solve needs t0 and t1")
    t0, t1 = float(t0), float(t1)
    if not (math.isfinite(t0) and math.isfinite(t1)) or t0 == t1:
        raise ValueError(f"t0 and t1 must be finite and differ, got {t0}, {t1}")
    if not problem.is_ode:
        raise ValueError("adaptive step-size control is implemented for ODEs; use a fixed grid for SDEs")
    if not solver.adaptive:
        from .solvers import REGISTRY

        pairs = ", ".join(sorted(n for n, c in REGISTRY.items() if c.adaptive and not c.adaptive_lambda))
        raise ValueError(f"solver {solver.name!r} has no embedded error estimate; adaptive solvers: {pairs}")
    direction = 1.0 if t1 > t0 else -1.0
    save_times = None
    if save_at is not None:
        if isinstance(save_at, str):
            raise ValueError("save_at='steps' is for fixed grids; give times for an adaptive solve")
        save_times = torch.as_tensor(save_at, dtype=torch.float64).reshape(-1).tolist()
        if not all(math.isfinite(s) for s in save_times):
            raise ValueError(f"save_at contains NaN/Inf: {save_at!r}")
        lo, hi = min(t0, t1), max(t0, t1)
        if any(not (lo <= s <= hi) for s in save_times):
            raise ValueError(f"save_at times must lie in [{lo:g}, {hi:g}]")
        if any((b - a) * direction < 0 for a, b in zip(save_times, save_times[1:])):
            raise ValueError("save_at times must be ordered in the direction of integration")
    err_order = (solver.order or 1.0) - 1.0  # embedded estimate is one order lower
    t, x = t0, x0
    f0 = _FirstCallCheck(problem).drift(time_like(t0, x0), x0)
    nfe = 1
    state = f0
    if ctrl.dt0 is not None:
        h = abs(float(ctrl.dt0))
    else:
        h = _initial_step(problem, solver, t0, x0, direction, ctrl, f0, abs(t1 - t0))
        nfe += 1
    h = min(h, ctrl.dt_max)
    saved, si = [], 0
    while save_times is not None and si < len(save_times) and save_times[si] == t0:
        saved.append(x0)
        si += 1
    accepted = rejected = 0
    prev_ratio = 1.0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=abs(t1 - t0), desc=f"solve[{solver.name}]", leave=False,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| t {n:.4g}/{total:.4g} [{elapsed}<{remaining}"
                              "{postfix}]")
    while (t1 - t) * direction > 0:
        if accepted + rejected >= ctrl.max_steps:
            raise RuntimeError(f"adaptive solve exceeded max_steps={ctrl.max_steps} at t = {t:.6g} "
                               f"(step {h:.3g}); loosen rtol/atol or raise max_steps")
        last = abs(t1 - t) <= h * (1 + 1e-12)
        step = abs(t1 - t) if last else h
        t_new = t1 if last else t + direction * step
        x_new, new_state, err = solver.step(problem, t, t_new, x, None, state)
        nfe += solver.evals_per_step
        scale = ctrl.atol + ctrl.rtol * torch.maximum(x.abs(), x_new.abs())
        ratio = _rms(err / scale)
        if math.isfinite(ratio) and ratio <= 1.0:
            while save_times is not None and si < len(save_times) and (t_new - save_times[si]) * direction >= 0:
                s = save_times[si]
                saved.append(x_new if s == t_new else solver.interpolate(s))
                si += 1
            if bar is not None:
                bar.update(step)
                if accepted % 10 == 0:
                    bar.set_postfix_str(f"NFE {nfe}, {accepted + 1} accepted, {rejected} rejected", refresh=False)
            t, x, state = t_new, x_new, new_state
            accepted += 1
            if not bool(torch.isfinite(x).all()):
                _raise_nonfinite(accepted, t)
            factor = ctrl.factor(ratio, prev_ratio, err_order)
            prev_ratio = ratio
        else:
            rejected += 1  # x and its derivative (the state) stay as they were
            factor = min(1.0, ctrl.factor(ratio, prev_ratio, err_order))
        h = min(ctrl.dt_max, step * factor)
        if h < ctrl.dt_min or h <= 1e-14 * max(abs(t), 1.0):
            raise RuntimeError(f"adaptive step size underflowed (h = {h:.3g} < dt_min = {ctrl.dt_min:g}) "
                               f"at t = {t:.6g}; the problem may be stiff or singular there")
    if bar is not None:
        bar.close()
    stats = {"nfe": nfe, "n_steps": accepted + rejected, "n_accepted": accepted, "n_rejected": rejected,
             "solver": solver.name}
    if save_times is None:
        return Solution(x=x, stats=stats)
    return Solution(x=x, xs=torch.stack(saved), ts=torch.tensor(save_times, dtype=torch.float64), stats=stats)
