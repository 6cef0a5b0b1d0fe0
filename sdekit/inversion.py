"""Inversion and interpolation in noise space: the probability-flow ODE run from data to noise, and back.

The probability-flow ODE is a bijection between the data end ``t_min`` and the noise end ``t_max``. Running
it forward in time maps a data point to its latent ``x_T`` (`invert`; with ``solver="ddim"`` this is DDIM
inversion, Song, Meng & Ermon 2021, §4.3/§5.4, the first-order exponential integrator run toward noise); running
any deterministic sampler back from the latent returns the data point up to both solves' errors, so the
round trip converges at the solvers' order. `interpolate` inverts two data points, interpolates their
latents spherically (the latents of a VP process are close to a sphere of radius ``sqrt(D)``; Song et al.
2021, DDIM §5.3, Ho et al. 2020 §4.3) and samples every point of the path, as in the interpolation
experiments of those papers.

Any deterministic solver of the registry runs in either direction. Multistep methods extrapolate their
history; on an inversion grid uniform in log-SNR their steps in the sampler's own variable can grow from one
step to the next (iPNDM's steps in ``sigma/alpha`` grow by ``e^|h|`` per step), which the extrapolation
amplifies: prefer ``ddim``, ``dpmpp_2m``, ``unipc``, ``dpm_solver_2``/``3``, ``heun`` or ``rk4``, or use
more steps.
"""

from __future__ import annotations

import torch

from .models import ScoreModel
from .reverse import probability_flow
from .sampling import sample
from .schedules import time_grid
from .solve import MAX_STEPS, PIController, Solution, solve
from .solvers import Solver
from .solvers import get as get_solver

__all__ = ["invert", "interpolate", "slerp"]

_CONTROLLER_KEYS = ("rtol", "atol", "max_steps", "dt0", "dt_min", "dt_max", "safety", "norm")


def _check_model(model) -> None:
    if getattr(model, "process", None) is None or not hasattr(model, "predict"):
        raise TypeError(f"model must be a ScoreModel (with .process and .predict), got {type(model).__name__}")


def _ends(process, t_data: float | None, t_noise: float | None) -> tuple[float, float]:
    lo = float(process.t_min if t_data is None else t_data)
    hi = float(process.t_max if t_noise is None else t_noise)
    if not process.t_domain_min <= lo < hi <= process.t_max:
        raise ValueError(f"need t_domain_min <= t_data < t_noise <= t_max = [{process.t_domain_min:g}, "
                         f"{process.t_max:g}], got t_data={lo:g}, t_noise={hi:g}")
    return lo, hi


def invert(model: ScoreModel, x0: torch.Tensor, solver: str | Solver = "ddim", steps: int = 50, *,
           spacing: str = "log_snr", t_data: float | None = None, t_noise: float | None = None,
           return_solution: bool = False, progress: bool = False, **options: object) -> torch.Tensor | Solution:
    """The latent of ``x0``: the probability-flow ODE of ``model`` integrated from ``t_data`` to ``t_noise``.

    With ``solver="ddim"`` this is DDIM inversion (first order in the step; Song, Meng & Ermon 2021); any
    deterministic solver of the registry works, with its declared order (the tests measure DDIM 1,
    DPM-Solver++(2M) 2 and RK4 4 against a float64 reference). The grid is ``time_grid(process, steps,
    spacing)`` between the two ends, run in increasing time.

    Args:
        model: a [`ScoreModel`][sdekit.models.ScoreModel] (or anything with ``.process`` and ``.predict``).
        x0: data at ``t_data``, batch first.
        solver: a deterministic registry name or Solver instance; sampler options go in ``options``. For
            solvers with an error estimate (``"dopri5"``), controller options (``rtol``, ``atol``, ...) select
            an adaptive solve instead of the grid.
        steps: number of steps (each costs the solver's ``evals_per_step`` evaluations).
        spacing: ``"log_snr"`` (default), ``"time"``, ``"quadratic"`` or ``"karras"``.
        t_data: the data end (default ``process.t_min``; 0 only where the model is finite at sigma = 0).
        t_noise: the noise end (default ``process.t_max``).
        return_solution: return the [`Solution`][sdekit.solve.Solution] (stats, grid) instead of the latent.
        progress: show a progress bar.
        options: sampler options (``order=3``...) or controller options.

    Returns:
        the latent ``x_T`` (``x0``'s shape and dtype), or the Solution.

    Raises:
        TypeError: a model or ``x0`` of the wrong type, or options the solver does not take.
        ValueError: a stochastic solver, NaN/Inf in ``x0``, bad ``steps`` or ends.
    """
    _check_model(model)
    if not isinstance(x0, torch.Tensor):
        raise TypeError(f"x0 must be a torch.Tensor, got {type(x0).__name__}")
    if not bool(torch.isfinite(x0).all()):
        raise ValueError("x0 contains NaN/Inf")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be an int in [1, {MAX_STEPS}], got {steps!r}")
    ctrl = {k: options.pop(k) for k in list(options) if k in _CONTROLLER_KEYS}
    cond = options.pop("cond", {})
    s = get_solver(solver, **options)
    if s.noise_types:
        raise ValueError(f"inversion needs a deterministic solver; {s.name!r} is stochastic")
    process = model.process
    lo, hi = _ends(process, t_data, t_noise)
    problem = probability_flow(process, model, **cond)
    if ctrl:
        if not s.adaptive:
            raise TypeError(f"options {sorted(ctrl)} apply only to adaptive solvers, not {s.name!r}")
        sol = solve(problem, x0, s, t0=lo, t1=hi, controller=PIController(**ctrl), progress=progress)
        sol.stats["grid"] = None
    else:
        ts = time_grid(process, steps, spacing, t_start=hi, t_end=lo).flip(0)
        sol = solve(problem, x0, s, ts=ts, progress=progress)
        sol.stats["grid"] = ts
    return sol if return_solution else sol.x


def slerp(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of each pair of samples ``a[i]``, ``b[i]`` (batch first) at ``weights`` in [0, 1].

    ``slerp(a, b, w) = sin((1 - w) θ)/sin θ · a + sin(w θ)/sin θ · b`` with ``θ`` the angle between the two
    flattened samples (Shoemake 1985); linear interpolation where ``θ`` is below 1e-6. Returns
    ``(len(weights), *a.shape)``.
    """
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    w = torch.as_tensor(weights, dtype=a.dtype, device=a.device).reshape(-1)
    fa, fb = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    cos = (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1)).clamp_min(torch.finfo(a.dtype).tiny)
    theta = torch.arccos(cos.clamp(-1.0, 1.0))[None, :]  # (1, B)
    small = theta < 1e-6
    sin = torch.sin(theta).where(~small, torch.ones_like(theta))
    wa = torch.where(small, 1 - w[:, None], torch.sin((1 - w[:, None]) * theta) / sin)
    wb = torch.where(small, w[:, None], torch.sin(w[:, None] * theta) / sin)
    shape = (w.numel(), a.shape[0]) + (1,) * (a.ndim - 1)
    return wa.reshape(shape) * a[None] + wb.reshape(shape) * b[None]


def interpolate(model: ScoreModel, x0_a: torch.Tensor, x0_b: torch.Tensor, n: int = 8, *,
                solver: str | Solver = "ddim", steps: int = 50, spacing: str = "log_snr", method: str = "slerp",
                t_data: float | None = None, t_noise: float | None = None, **options: object) -> torch.Tensor:
    """Samples along the path between the latents of ``x0_a`` and ``x0_b`` (noise-space interpolation).

    Both are inverted with `invert` (``solver``, ``steps``), their latents interpolated at ``n`` equally spaced
    weights from 0 to 1 (``"slerp"``: spherical, as in the DDIM paper; ``"linear"``), and every latent is
    sampled back with the same solver and grid. The first and last frames reproduce ``x0_a`` and ``x0_b``
    up to the round-trip error of the solver.

    Args:
        model: a [`ScoreModel`][sdekit.models.ScoreModel].
        x0_a: data, batch first: ``B`` start points.
        x0_b: data of the same shape: ``B`` end points.
        n: frames per path, at least 2.
        solver: a deterministic solver (see `invert`).
        steps: steps of each inversion and each sampling solve.
        spacing: the grid's spacing.
        method: ``"slerp"`` or ``"linear"``.
        t_data: the data end (default ``process.t_min``).
        t_noise: the noise end (default ``process.t_max``).
        options: sampler options.

    Returns:
        ``(n, B, *sample_shape)``: frame ``k`` of path ``i`` is ``result[k, i]``.
    """
    _check_model(model)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2, got {n!r}")
    if method not in ("slerp", "linear"):
        raise ValueError(f"unknown method {method!r}; allowed: 'slerp', 'linear'")
    for name, x in (("x0_a", x0_a), ("x0_b", x0_b)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x0_a.shape != x0_b.shape:
        raise ValueError(f"x0_a and x0_b must have the same shape, got {tuple(x0_a.shape)} and {tuple(x0_b.shape)}")
    lo, hi = _ends(model.process, t_data, t_noise)
    z = invert(model, torch.cat([x0_a, x0_b]), solver, steps, spacing=spacing, t_data=lo, t_noise=hi, **options)
    za, zb = z[: x0_a.shape[0]], z[x0_a.shape[0]:]
    w = torch.linspace(0, 1, n, dtype=torch.float64)
    if method == "slerp":
        path = slerp(za, zb, w)
    else:
        w = w.to(za.dtype).reshape((n,) + (1,) * za.ndim)
        path = (1 - w) * za[None] + w * zb[None]
    flat = path.reshape(n * za.shape[0], *za.shape[1:])
    out = sample(model, flat, solver, steps=steps, spacing=spacing, t_start=hi, t_end=lo,
                 generator=torch.Generator(device=flat.device).manual_seed(0), **options).x
    return out.reshape(path.shape)
