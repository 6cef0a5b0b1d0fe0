"""The one integration loop of sdekit: every solve, sample, likelihood and conformance check runs here.

``solve`` owns the step-size controller (a [`FixedGrid`][sdekit.controllers.FixedGrid] or a
[`PIController`][sdekit.controllers.PIController], stepping in time or in log-SNR), the Brownian path, ``save_at``
and the statistics; solvers only step ([`Step`][sdekit.solvers.Step]). Grids may increase or decrease: a
reverse-time diffusion is solved on a decreasing grid directly, with no time flip.

On a fixed grid nothing synchronises a GPU per step: times are Python floats taken from the grid once, and
NaN/Inf is tracked as per-step device flags checked once at the end (on CPU, where a check is cheap, one
reduction per step, every step is checked at once so that the error names the first bad step). An adaptive
step synchronises once, for its error norm.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ._utils import time_like
from .brownian import BrownianPath, FreshNoise, IndexedNoise, StepNoise, VirtualBrownianTree
from .controllers import MAX_STEPS, FixedGrid, PIController
from .sde import ODE, SDE
from .solvers import Solver, Step
from .solvers import get as get_solver

__all__ = ["MAX_STEPS", "FixedGrid", "PIController", "Solution", "solve"]


@dataclass
class Solution:
    """Result of `solve`: final state ``x``; saved states ``xs`` at times ``ts``; statistics
    ``stats`` with ``nfe`` (drift/model evaluations), ``n_steps``, ``n_accepted``, ``n_rejected``."""

    x: torch.Tensor
    xs: torch.Tensor | None = None
    ts: torch.Tensor | None = None
    stats: dict = field(default_factory=dict)


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
    elif isinstance(brownian, IndexedNoise) and brownian.shape != tuple(shape):
        raise ValueError(f"the noise shape {brownian.shape} does not match the solve's {tuple(shape)}")
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


def _step(solver, problem, i, t0, t1, x, noise, state) -> Step:
    """One step with its context: an error raised inside (a model's NaN check, a shape check) names the step."""
    try:
        step = solver.step(problem if i else _FirstCallCheck(problem), t0, t1, x, noise, state)
    except ValueError as e:
        raise ValueError(f"at step {i + 1} (t = {t0:.6g}): {e}") from None
    if not isinstance(step, Step):
        raise TypeError(f"solver {solver.name!r}: step() must return a sdekit.solvers.Step(x1, state, error, dense, "
                        f"nfe), got {type(step).__name__}")
    return step


def solve(problem: SDE | ODE, x0: torch.Tensor, solver: str | Solver = "euler", *,
          ts: torch.Tensor | Sequence[float] | None = None, t0: float | None = None, t1: float | None = None,
          dt: float | None = None, controller: PIController | FixedGrid | None = None,
          save_at: torch.Tensor | Sequence[float] | str | None = None, brownian: Callable | None = None,
          generator: torch.Generator | None = None, progress: bool = False) -> Solution:
    """Integrate an SDE/ODE of the generic layer, or a diffusion sampler's problem, from ``x0``.

    Args:
        problem: an [`SDE`][sdekit.sde.SDE] or [`ODE`][sdekit.sde.ODE] (for diffusion samplers, the
            probability-flow ODE or reverse SDE of a process and a model).
        x0: initial state, batch first, any shape.
        solver: a [`Solver`][sdekit.solvers.Solver] or a registry name.
        ts: a 1-D strictly monotone grid (increasing or decreasing); or ``t0, t1, dt``; or
            ``controller=FixedGrid(...)``; or ``t0, t1`` and ``controller`` (a `PIController`) for adaptive
            steps (ODEs, solvers with an embedded error estimate; in ``t`` or, for adaptive diffusion samplers,
            in log-SNR).
        save_at: times to save (a 1-D tensor/list; on a fixed grid they must be grid points; adaptive
            solves use the solver's dense output), or ``"steps"`` for every step of a fixed grid.
        brownian: a [`BrownianPath`][sdekit.brownian.BrownianPath] (or a ``VirtualBrownianTree``, or any ``bm(s, t)``);
            else fresh noise from ``generator``.
        progress: show a tqdm progress bar.

    Drift and diffusion receive ``t`` as a 0-d tensor in ``x0``'s dtype and on its device (as in torchdiffeq
    and torchsde); step sizes are computed from the float64 grid. On the first step every drift and diffusion
    value is checked against the state's shape.

    Raises:
        TypeError: a problem, state, solver or step of the wrong type.
        ValueError: bad arguments (grid, ``dt`` giving more than `MAX_STEPS` steps, ``save_at``, a
            Brownian path that does not fit), a drift or diffusion of the wrong shape, or a model that returned
            NaN/Inf (the message names the step and time).
        FloatingPointError: the state became NaN/Inf (the message names the step).
        RuntimeError: an adaptive solve exceeded ``max_steps`` or its step size underflowed.
    """
    if not hasattr(problem, "drift"):
        raise TypeError(f"problem must be an SDE/ODE with a drift, got {type(problem).__name__}")
    if not isinstance(x0, torch.Tensor):
        raise TypeError(f"x0 must be a torch.Tensor, got {type(x0).__name__}")
    if not bool(torch.isfinite(x0).all()):
        raise ValueError("x0 contains NaN/Inf")
    solver = get_solver(solver)
    solver.check(problem)
    if controller is None or isinstance(controller, FixedGrid):
        if controller is None:
            controller = FixedGrid(ts, t0=t0, t1=t1, dt=dt)
        elif any(v is not None for v in (ts, t0, t1, dt)):
            raise ValueError("give either a FixedGrid controller or ts / (t0, t1, dt), not both")
        t_start, t_end = controller.times[0], controller.times[-1]
    elif isinstance(controller, PIController):
        t_start, t_end = _adaptive_args(problem, solver, controller, ts, t0, t1, dt)
    else:
        raise TypeError(f"controller must be a FixedGrid or a PIController, got {type(controller).__name__}")
    source = _noise_source(problem, solver, x0, brownian, generator, t_start, t_end)
    return _loop(problem, x0, solver, controller, t_start, t_end, source, save_at, progress)


def _adaptive_args(problem, solver, ctrl, ts, t0, t1, dt):
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

        pairs = ", ".join(sorted(n for n, c in REGISTRY.items() if c.adaptive))
        raise ValueError(f"solver {solver.name!r} has no embedded error estimate; adaptive solvers: {pairs}")
    variable = ctrl.variable or solver.step_variable
    if variable != solver.step_variable:
        raise ValueError(f"solver {solver.name!r} steps in {solver.step_variable!r}, not in the controller's "
                         f"{variable!r}")
    if variable == "lambda" and not hasattr(problem, "process"):
        raise ValueError("a controller in lambda (log-SNR) needs a diffusion problem (a process with log_snr)")
    return t0, t1


#: how far past lambda(t_min) an adaptive solve in log-SNR goes before its last step onto sigma = 0
TAIL_LOG_SNR = 5.0


class _LogSNR:
    """The map between time and log-SNR of a diffusion process, in float64 on the host."""

    def __init__(self, process):
        self.process = process

    def to_var(self, t: float) -> float:
        return float(self.process.log_snr(torch.tensor(t, dtype=torch.float64)))

    def to_t(self, u: float) -> float:
        return float(self.process.t_from_log_snr(torch.tensor(u, dtype=torch.float64)))


class _Time:
    @staticmethod
    def to_var(t: float) -> float:
        return t

    @staticmethod
    def to_t(u: float) -> float:
        return u


def _loop(problem, x0, solver, ctrl, t_start, t_end, source, save_at, progress) -> Solution:
    """The integration loop: the controller proposes each step's end, the solver steps, the controller accepts
    or rejects (a fixed grid accepts every step)."""
    adaptive = ctrl.adaptive
    direction = 1.0 if t_end > t_start else -1.0
    grid = None if adaptive else ctrl.times
    n_fixed = None if adaptive else len(grid) - 1
    save_idx, save_times = _save_plan(save_at, grid, t_start, t_end, direction)
    var = _LogSNR(problem.process) if (adaptive and (ctrl.variable or solver.step_variable) == "lambda") else _Time
    nfe, f0 = 0, None
    if adaptive:
        # the end of the controlled part: where lambda is infinite (sigma = 0 at t_end) the controller stops at
        # lambda(t_min) + TAIL_LOG_SNR, sigma/alpha e^5 ~ 150 times below its value at the process's default end
        # t_min, and one last (first-order, exact in the limit) step goes to t_end: its error, of order sigma², is
        # then far below the tolerance
        t_stop = t_end
        if not math.isfinite(var.to_var(t_end)):
            t_min = float(problem.process.t_min)
            if not ((t_min - t_end) * direction < 0 and (t_min - t_start) * direction > 0):
                raise ValueError(f"log-SNR is infinite at t_end = {t_end:g}; an adaptive solve in lambda then needs "
                                 f"the process's t_min = {t_min:g} strictly between t_start and t_end")
            t_stop = var.to_t(var.to_var(t_min) + TAIL_LOG_SNR)
        u, u_stop = var.to_var(t_start), var.to_var(t_stop)
        span, dir_u = abs(u_stop - u), (1.0 if u_stop > u else -1.0)
        err_order = (solver.order or 1.0) - 1.0  # the embedded estimate is one order lower
        if ctrl.dt0 is not None:
            h = abs(float(ctrl.dt0))
        elif var is _Time:
            f0 = _FirstCallCheck(problem).drift(time_like(t_start, x0), x0)
            h = _initial_step(problem, solver, t_start, x0, direction, ctrl, f0, span)
            nfe += 2
        else:
            h = 0.05  # the DPM-Solver reference's h_init (in lambda)
        h = min(h, ctrl.dt_max, span)
        prev_ratio = 1.0
    state = solver.init(problem, t_start, x0, grid=grid, f0=f0)
    t, x = t_start, x0
    saved = []
    if save_idx is not None and 0 in save_idx:
        saved.append(x0)
    si = 0
    while save_times is not None and si < len(save_times) and save_times[si] == t_start:
        saved.append(x0)
        si += 1
    check_now = adaptive or x0.device.type == "cpu"
    flags = []
    accepted = rejected = 0
    bar = _progress_bar(progress, solver, adaptive, n_fixed, span if adaptive else 0.0)
    while True:
        # --- the controller proposes the step's end ---
        if not adaptive:
            if accepted == n_fixed:
                break
            t_new = grid[accepted + 1]
        else:
            if accepted + rejected >= ctrl.max_steps:
                raise RuntimeError(f"adaptive solve exceeded max_steps={ctrl.max_steps} at t = {t:.6g} "
                                   f"(step {h:.3g}); loosen rtol/atol or raise max_steps")
            if t == t_end:
                break
            tail = t == t_stop
            if tail:
                t_new = t_end  # the last step onto sigma = 0, after the controlled part
            elif abs(u_stop - u) <= h * (1 + 1e-12):
                step_u, u_new, t_new = abs(u_stop - u), u_stop, t_stop
            else:
                step_u, u_new = h, u + dir_u * h
                t_new = var.to_t(u_new)
        # --- the solver steps ---
        i = accepted + rejected
        noise = None
        if source is not None:
            noise = StepNoise(source, t, t_new, i) if solver.noise_sampler else _increment(source, solver, t, t_new)
        step = _step(solver, problem, i, t, t_new, x, noise, state)
        nfe += solver.evals_per_step if step.nfe is None else step.nfe
        # --- the controller accepts or rejects ---
        if adaptive and not tail:
            ratio = ctrl.error_ratio(step.error, x, step.x1)
            ok = math.isfinite(ratio) and ratio <= 1.0
            factor = ctrl.factor(ratio, prev_ratio, err_order)
            if not ok:
                rejected += 1  # x and the solver state stay as they were
                h = min(ctrl.dt_max, step_u * min(1.0, factor))
                _check_step_size(h, ctrl, t, u)
                continue
            prev_ratio = ratio
            h = min(ctrl.dt_max, step_u * factor)
            _check_step_size(h, ctrl, t_new, u_new)
        accepted += 1
        while save_times is not None and si < len(save_times) and (t_new - save_times[si]) * direction >= 0:
            st_ = save_times[si]
            saved.append(step.x1 if st_ == t_new else solver.interpolate(t, t_new, x, step, st_))
            si += 1
        t, x, state = t_new, step.x1, step.state
        if adaptive and not tail:
            u = u_new
        if check_now:
            if not math.isfinite(float(x.detach().sum())):  # one reduction; float() of a CPU scalar is cheap
                _raise_nonfinite(accepted, t)
        else:
            flags.append(_nonfinite(x))
        if save_idx is not None and accepted in save_idx:
            saved.append(x)
        if bar is not None:
            _advance(bar, adaptive, (0 if tail else step_u) if adaptive else 1, nfe, accepted, rejected)
    if bar is not None:
        bar.close()
    if flags:
        bad = torch.stack(flags)
        if bool(bad.any()):  # the one synchronisation of the fixed-grid loop
            first = int(torch.nonzero(bad)[0])
            _raise_nonfinite(first + 1, grid[first + 1])
    stats = {"nfe": nfe, "n_steps": accepted + rejected, "n_accepted": accepted, "n_rejected": rejected,
             "solver": solver.name}
    if save_idx is not None:
        ts_saved = torch.tensor([grid[j] for j in sorted(save_idx)], dtype=torch.float64)
        return Solution(x=x, xs=torch.stack(saved), ts=ts_saved, stats=stats)
    if save_times is not None:
        return Solution(x=x, xs=torch.stack(saved), ts=torch.tensor(save_times, dtype=torch.float64), stats=stats)
    return Solution(x=x, stats=stats)


def _check_step_size(h, ctrl, t, u):
    """``h`` and ``u`` are in the step variable (time, or log-SNR); ``t`` is the time, for the message."""
    if h < ctrl.dt_min or h <= 1e-14 * max(abs(u), 1.0):
        raise RuntimeError(f"adaptive step size underflowed (h = {h:.3g} < dt_min = {ctrl.dt_min:g}) "
                           f"at t = {t:.6g}; the problem may be stiff or singular there")


def _progress_bar(progress, solver, adaptive, n, span):
    if not progress:
        return None
    from tqdm.auto import tqdm

    if not adaptive:
        return tqdm(total=n, desc=f"solve[{solver.name}]", leave=False)
    return tqdm(total=span, desc=f"solve[{solver.name}]", leave=False,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.4g}/{total:.4g} [{elapsed}<{remaining}{postfix}]")


def _advance(bar, adaptive, amount, nfe, accepted, rejected):
    bar.update(amount)
    if adaptive and accepted % 10 == 1:
        bar.set_postfix_str(f"NFE {nfe}, {accepted} accepted, {rejected} rejected", refresh=False)


def _save_plan(save_at, grid, t_start, t_end, direction):
    """(indices of grid points to save, None) on a fixed grid; (None, ordered times) for an adaptive solve."""
    if save_at is None:
        return None, None
    if grid is not None:
        return _save_indices(save_at, grid), None
    if isinstance(save_at, str):
        raise ValueError("save_at='steps' is for fixed grids; give times for an adaptive solve")
    times = torch.as_tensor(save_at, dtype=torch.float64).reshape(-1).tolist()
    if not all(math.isfinite(s) for s in times):
        raise ValueError(f"save_at contains NaN/Inf: {save_at!r}")
    lo, hi = min(t_start, t_end), max(t_start, t_end)
    if any(not (lo <= s <= hi) for s in times):
        raise ValueError(f"save_at times must lie in [{lo:g}, {hi:g}]")
    if any((b - a) * direction < 0 for a, b in zip(times, times[1:])):
        raise ValueError("save_at times must be ordered in the direction of integration")
    return None, times


def _save_indices(save_at, grid):
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
