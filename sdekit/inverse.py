"""Inverse problems: sample ``x_0`` given a measurement ``y = A x_0 + noise_std · n`` with an unconditional model.

The model knows the prior ``p(x_0)``; the measurement adds the likelihood ``N(y; A x_0, noise_std² I)``. Two
approximate posterior samplers are here, both built on the ancestral (DDPM) step of
[`ddpm_update`][sdekit.solvers.diffusion.ddpm_update] (or DDIM's, `ddim_update`) on the process's own ``alpha``
and ``sigma``:

- ``method="dps"``: Diffusion Posterior Sampling (Chung, Kim, McCann, Klasky & Ye 2023, "Diffusion Posterior
  Sampling for General Noisy Inverse Problems", Algorithm 1). Each step takes the model's data prediction
  ``x̂0 = D(x_t, t)``, the ancestral step from it, and then a gradient step on the residual through the model:
  ``x_s = x'_s - zeta_t ∇_{x_t} ||y - A(x̂0)||²`` with ``zeta_t = zeta / ||y - A(x̂0)||`` (their step-size rule,
  per sample). ``A`` is a matrix or any differentiable callable.
- ``method="inpaint"``: replacement with resampling (Lugmayr et al. 2022, "RePaint: Inpainting using Denoising
  Diffusion Probabilistic Models", Algorithm 1 and its jump schedule). ``A`` is a mask (1 = observed) and
  the measurement is exact (``noise_std = 0``): after every reverse step the observed entries are replaced by
  the measurement noised to the current time, ``alpha_t y + sigma_t eps``, and every block of
  ``jump_length`` steps is undone by the forward process and redone ``n_resample - 1`` times, so that the
  unobserved entries can adapt to the observed ones.

Neither samples the posterior exactly: DPS replaces ``p(y | x_t)`` by ``p(y | x̂0(x_t))`` and its step size is a
heuristic, and replacement conditions only through the noised measurement. For a Gaussian-mixture prior the
exact posterior is [`GaussianMixture.condition`][sdekit.analytic.GaussianMixture.condition]; ``docs/inverse.md``
gives the measured bias of both methods against it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import torch

from .processes import DiffusionProcess
from .schedules import time_grid
from .solve import MAX_STEPS, Solution
from .solvers.diffusion import Point, ddim_update, ddpm_update, lin

__all__ = ["sample", "repaint_schedule", "METHODS", "SOLVERS"]

#: the guided samplers of `sample`
METHODS = ("dps", "inpaint")
#: the reverse steps they can be built on
SOLVERS = ("ddpm", "ddim")

#: DPS's default ``zeta' = DPS_ZETA_TIMES_STEPS / steps`` (Chung et al.'s ``zeta'``): the pull adds up over the
#: steps, and on the 2-D and 4-D mixtures of docs/inverse.md the best ``zeta' · steps`` was 10–100 at 50, 200 and
#: 1000 steps alike (a measured heuristic, not a derived value)
DPS_ZETA_TIMES_STEPS = 20.0


def _points(process: DiffusionProcess, ts: torch.Tensor) -> list[Point]:
    """Each grid time with its ``alpha``, ``sigma`` and ``lambda`` as Python floats (float64, computed once)."""
    alpha, sigma = process.alpha(ts), process.sigma(ts)
    lam = process.log_snr(ts)
    return [Point(float(t), float(a), float(s), float(h)) for t, a, s, h in zip(ts, alpha, sigma, lam)]


def repaint_schedule(steps: int, jump_length: int = 1, n_resample: int = 1) -> list[int]:
    """The grid indices RePaint visits (Lugmayr et al. 2022): 0 is ``t_max``, ``steps`` the data end.

    The grid is cut into blocks of ``jump_length`` steps (the last may be shorter). Each block is walked down
    ``n_resample`` times; between two walks the forward process jumps from the block's end back to its start.
    ``jump_length = 1`` is Algorithm 1 of the paper with ``U = n_resample`` (resampling after every step);
    a longer jump lets a resampled block move further before it is re-noised. The walk costs
    ``steps · n_resample`` reverse steps (minus the shortfall of a short last block).

    Args:
        steps: number of grid steps, ``>= 1``.
        jump_length: steps per block, ``>= 1``.
        n_resample: walks down each block, ``>= 1`` (1: plain replacement, no resampling).

    Returns:
        the visited indices, starting at 0 and ending at ``steps``; consecutive entries differ by ``+1`` (a
        reverse step) or by ``-jump_length`` or less (a forward jump).

    Raises:
        ValueError: an argument that is not a positive int.
    """
    for name, v in (("steps", steps), ("jump_length", jump_length), ("n_resample", n_resample)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    path = [0]
    start = 0
    while start < steps:
        end = min(start + jump_length, steps)
        for walk in range(n_resample):
            path.extend(range(start + 1, end + 1))
            if walk < n_resample - 1:
                path.append(start)
        start = end
    return path


# --- argument checks -------------------------------------------------------------------------------------------
def _check_int(value, name: str, lo: int = 1, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be an int {bound}, got {value!r}")
    return value


def _check_number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def _sample_shape(model, x_T, operator, method) -> tuple[int, ...]:
    if x_T is not None:
        return tuple(x_T.shape[1:])
    shape = getattr(model, "sample_shape", None)
    if shape is not None:
        return tuple(shape)
    if method == "dps" and isinstance(operator, torch.Tensor) and operator.ndim == 2:
        return (int(operator.shape[1]),)
    raise ValueError("the sample shape is unknown: give x_T, or a model with sample_shape")


def _matrix_operator(matrix: torch.Tensor, sample_shape) -> Callable[[torch.Tensor], torch.Tensor]:
    size = math.prod(sample_shape)
    if matrix.ndim != 2 or matrix.shape[1] != size:
        raise ValueError(f"operator (a matrix) must have shape (m, {size}) for samples of shape {tuple(sample_shape)}"
                         f", got {tuple(matrix.shape)}")
    if not matrix.is_floating_point():
        raise TypeError(f"operator (a matrix) must be a floating tensor, got {matrix.dtype}")
    if not bool(torch.isfinite(matrix).all()):
        raise ValueError("operator contains NaN/Inf")
    cache = {}

    def apply(x: torch.Tensor) -> torch.Tensor:
        key = (x.dtype, x.device)
        if key not in cache:
            cache[key] = matrix.detach().to(dtype=x.dtype, device=x.device)
        return x.reshape(x.shape[0], -1) @ cache[key].T

    return apply


def _check_mask(mask, sample_shape) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"operator must be a mask tensor (1 = observed) for method='inpaint', got "
                        f"{type(mask).__name__}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("operator (the inpainting mask) must hold only 0 and 1 (1 = observed)")
    if mask.ndim > len(sample_shape) + 1 or tuple(mask.shape[-len(sample_shape):]) != tuple(sample_shape):
        raise ValueError(f"operator (the inpainting mask) must have the sample shape {tuple(sample_shape)} or a batch "
                         f"of it, got {tuple(mask.shape)}")
    return mask


def _measurement(y, m_shape, batch) -> tuple[torch.Tensor, int | None]:
    """``y`` as ``(B, *m_shape)`` (a single measurement is shared by every sample) and its own batch size."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    if tuple(y.shape) == tuple(m_shape):
        return y, None
    if y.ndim == len(m_shape) + 1 and tuple(y.shape[1:]) == tuple(m_shape):
        if batch is not None and y.shape[0] != batch:
            raise ValueError(f"y holds {y.shape[0]} measurements but there are {batch} samples (x_T / n_samples)")
        return y, int(y.shape[0])
    raise ValueError(f"y must have the measurement shape {tuple(m_shape)} (one measurement for every sample) or "
                     f"(B, {', '.join(map(str, m_shape))}) (one per sample), got {tuple(y.shape)}")


# --- the sampler ------------------------------------------------------------------------------------------------
def sample(model, y: torch.Tensor, operator: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
           noise_std: float = 0.0, *, method: str = "dps", solver: str = "ddpm", steps: int = 200,
           generator: torch.Generator | None = None, x_T: torch.Tensor | None = None, n_samples: int | None = None,
           spacing: str = "time", t_start: float | None = None, t_end: float | None = None, denoise: bool = True,
           eta: float = 1.0, zeta: float | None = None, jump_length: int | None = None,
           n_resample: int | None = None, cond: dict | None = None, progress: bool = False) -> Solution:
    """Sample ``x_0`` given the measurement ``y = A x_0 + noise_std · n`` (approximately: see the module docstring).

    ``method="dps"`` (Chung et al. 2023, Algorithm 1): at each step from ``s`` to ``t < s`` (the notation of
    `sdekit.solvers.diffusion`), with ``x̂0 = D(x_s, s)`` the model's data prediction and ``r = y - A(x̂0)`` (per
    sample),

        x'_t = ancestral step from (x_s, x̂0);   x_t = x'_t - zeta / ||r|| · ∇_{x_s} ||r||²,

    the gradient taken through the model by autograd (one forward and one backward pass per step). The paper's
    rule ``zeta_t = zeta' / ||r||`` makes each step move ``x`` by about ``2 zeta'`` times the norm of the model's
    Jacobian, whatever the measurement's scale; the reference code's ``scale`` multiplies ``∇ ||r||`` and is
    ``2 zeta'``. It is a heuristic tuned per task in the paper; the pull adds up over the steps, so the default here
    is ``zeta' = DPS_ZETA_TIMES_STEPS / steps`` (20 / steps), measured on the Gaussian mixtures of
    ``docs/inverse.md``. The rule does not use ``noise_std``: DPS's bias is
    largest where the measurement is exact or nearly so. ``zeta = 0`` is the unconditional ancestral sampler,
    draw for draw the ``"ddpm"`` sampler of [`sdekit.sample`][sdekit.sampling.sample] (or ``"ddim"`` with
    ``eta``).

    ``method="inpaint"`` (Lugmayr et al. 2022): ``operator`` is a mask (1 = observed) of the sample shape (or a
    batch of them), ``noise_std = 0``, and ``y`` holds the observed values (its unobserved entries are ignored).
    The walk of [`repaint_schedule`][sdekit.inverse.repaint_schedule] runs: each reverse step from ``t`` to ``s``
    is followed by ``x_t = m ⊙ (alpha_t y + sigma_t eps) + (1 - m) ⊙ x_t`` with fresh ``eps``; each forward jump from
    ``t`` back up to ``s`` draws ``x_s = (alpha_s/alpha_t) x_t + sqrt(sigma_s² - (alpha_s/alpha_t)² sigma_t²) z``,
    the process's exact transition. ``n_resample = 1`` is plain replacement (no resampling).

    With ``denoise=True`` (default) the result is the model's data prediction at the last grid time, as DPS's
    Algorithm 1 returns ``x̂0`` (inpainting: with the observed entries set to ``y``); one more evaluation.

    Args:
        model: a [`ScoreModel`][sdekit.models.ScoreModel] (or anything with ``.process`` and ``.predict``).
        y: the measurement, of the measurement shape (one for every sample) or batch first (one per sample).
            DPS with a matrix ``A`` ``(m, D)``: ``(m,)`` or ``(B, m)``; with a callable: ``A(x)``'s shape.
            Inpainting: the sample shape, or a batch.
        operator: DPS: a matrix ``(m, D)`` acting on the flattened sample (``D`` its size) or a callable
            ``A(x)`` (batch first, differentiable; linear for the measurement model above). Inpainting: the mask.
        noise_std: the measurement noise's standard deviation, ``>= 0`` (inpainting: 0).
        method: ``"dps"`` or ``"inpaint"``.
        solver: the reverse step: ``"ddpm"`` (ancestral, Ho et al. 2020, the posterior variance ``beta_tilde``)
            or ``"ddim"`` (Song et al. 2021, with ``eta``; ``eta = 1`` is the ancestral step).
        steps: number of grid steps (each one model evaluation; inpainting walks them ``n_resample`` times).
        generator: all randomness (``x_T`` when not given, the steps' noise); a fresh OS-seeded one when None.
        x_T: the start at ``t_start``, batch first (default: drawn from the process's prior).
        n_samples: the number of samples when neither ``x_T`` nor a batch of measurements sets it.
        spacing: the grid's spacing (`sdekit.time_grid`): ``"time"``, ``"log_snr"``, ``"quadratic"``, ``"karras"``.
        t_start: first grid time (default ``t_max``).
        t_end: last grid time (default ``t_min``; 0 steps onto ``sigma = 0``).
        denoise: return the data prediction at ``t_end`` (see above).
        eta: DDIM's ``eta`` (``solver="ddim"`` only).
        zeta: DPS's ``zeta'`` (default ``DPS_ZETA_TIMES_STEPS / steps``), ``>= 0``.
        jump_length: inpainting: steps per resampled block (default 1).
        n_resample: inpainting: walks down each block (default 1: plain replacement).
        cond: keyword arguments for the model (e.g. ``{"y": labels}`` of a class-conditional network).
        progress: show a progress bar of the model evaluations.

    Returns:
        the [`Solution`][sdekit.solve.Solution]: ``x`` the samples; ``stats``: ``nfe`` (model evaluations),
        ``grid`` (the times), ``residual`` (each sample's ``||y - A(x)||``, flattened over the measurement).

    Raises:
        TypeError: a model, ``y``, ``x_T`` or operator of the wrong type, or an option of the other method.
        ValueError: an unknown ``method`` or ``solver``; shapes that do not fit; NaN/Inf; ``noise_std < 0``;
            inpainting with ``noise_std != 0`` or a mask that is not 0/1; bad ``steps``, ``zeta``,
            ``jump_length``, ``n_resample``.
    """
    process = getattr(model, "process", None)
    if not isinstance(process, DiffusionProcess) or not hasattr(model, "predict"):
        raise TypeError(f"model must be a ScoreModel (with .process and .predict), got {type(model).__name__}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; allowed: {', '.join(repr(m) for m in METHODS)}")
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; allowed: {', '.join(repr(s) for s in SOLVERS)}")
    noise_std = _check_number(noise_std, "noise_std")
    eta = _check_number(eta, "eta")
    steps = _check_int(steps, "steps", 1, MAX_STEPS)
    if method == "dps":
        for name, v in (("jump_length", jump_length), ("n_resample", n_resample)):
            if v is not None:
                raise TypeError(f"{name} applies to method='inpaint', not 'dps'")
        zeta = _check_number(DPS_ZETA_TIMES_STEPS / steps if zeta is None else zeta, "zeta")
    else:
        if zeta is not None:
            raise TypeError("zeta applies to method='dps', not 'inpaint'")
        if noise_std != 0:
            raise ValueError(f"method='inpaint' replaces the observed entries by y: it needs noise_std = 0, got "
                             f"{noise_std!r} (use method='dps' for a noisy measurement)")
        jump_length = _check_int(1 if jump_length is None else jump_length, "jump_length")
        n_resample = _check_int(1 if n_resample is None else n_resample, "n_resample")
    if x_T is not None:
        if not isinstance(x_T, torch.Tensor):
            raise TypeError(f"x_T must be a torch.Tensor, got {type(x_T).__name__}")
        if x_T.ndim < 2 or not x_T.is_floating_point():
            raise ValueError(f"x_T must be a floating tensor, batch first (B, ...), got shape {tuple(x_T.shape)} "
                             f"and dtype {x_T.dtype}")
        if not bool(torch.isfinite(x_T).all()):
            raise ValueError("x_T contains NaN/Inf")
    if n_samples is not None:
        n_samples = _check_int(n_samples, "n_samples")
        if x_T is not None and n_samples != x_T.shape[0]:
            raise ValueError(f"n_samples = {n_samples} but x_T holds {x_T.shape[0]} samples")
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    if not y.is_floating_point():
        raise TypeError(f"y must be a floating tensor, got {y.dtype}")
    cond = {} if cond is None else dict(cond)
    sample_shape = _sample_shape(model, x_T, operator, method)
    batch = x_T.shape[0] if x_T is not None else n_samples

    # the operator and the measurement's shape
    mask = None
    if method == "inpaint":
        mask = _check_mask(operator, sample_shape)
        if mask.ndim == len(sample_shape) + 1:
            batch = _batch_of(mask.shape[0], batch, "operator (the inpainting mask)")
        apply_a = None
        m_shape = sample_shape
    elif isinstance(operator, torch.Tensor):
        apply_a = _matrix_operator(operator, sample_shape)
        m_shape = (int(operator.shape[0]),)
    elif callable(operator):
        apply_a = operator
        probe = torch.zeros((1, *sample_shape), dtype=y.dtype, device=y.device)
        out = apply_a(probe)
        if not isinstance(out, torch.Tensor) or out.ndim < 1 or out.shape[0] != 1:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"operator(x) must return a tensor batch first (B, ...); for x of shape (1, "
                             f"{', '.join(map(str, sample_shape))}) it returned {got}")
        m_shape = tuple(out.shape[1:])
    else:
        raise TypeError(f"operator must be a matrix (torch.Tensor) or a callable A(x), got {type(operator).__name__}")
    y, y_batch = _measurement(y, m_shape, batch)
    batch = y_batch if batch is None else batch
    if batch is None:
        raise ValueError("one measurement y and no x_T: give n_samples (how many posterior samples to draw)")
    if mask is not None:
        mask = mask.to(dtype=y.dtype, device=y.device)
        y = torch.where(mask.bool(), y, torch.zeros((), dtype=y.dtype, device=y.device))  # unobserved: ignored
    if not bool(torch.isfinite(y).all()):
        raise ValueError("y contains NaN/Inf" + (" in its observed entries" if mask is not None else ""))

    if generator is None:
        generator = torch.Generator(device=y.device).manual_seed(int.from_bytes(os.urandom(7), "little"))
    if x_T is None:
        x_T = process.prior_sample((batch, *sample_shape), generator=generator, dtype=y.dtype, device=y.device)
    y = y.to(dtype=x_T.dtype, device=x_T.device)
    if mask is not None:
        mask = mask.to(dtype=x_T.dtype, device=x_T.device)
    ts = time_grid(process, steps, spacing, t_start=t_start, t_end=t_end)
    points = _points(process, ts)
    n0 = getattr(model, "nfe", None)
    walk = [(i, i + 1) for i in range(steps)] if method == "dps" else _pairs(repaint_schedule(steps, jump_length,
                                                                                              n_resample))
    n_evals = sum(1 for a, b in walk if b > a) + int(denoise)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_evals, desc=f"inverse[{method}]", leave=False)

    def randn() -> torch.Tensor:
        return torch.randn(x_T.shape, generator=generator, dtype=x_T.dtype, device=x_T.device)

    def reverse(x, s: Point, t: Point, denoised) -> torch.Tensor:
        upd = ddpm_update(x, s, t, denoised, "beta_tilde") if solver == "ddpm" else ddim_update(x, s, t, denoised, eta)
        out = lin(upd.terms)
        return out if upd.noise == 0.0 else out + upd.noise * randn()

    def predict(x, p: Point) -> torch.Tensor:
        t_dev = torch.full((), p.t, dtype=torch.float64, device=x.device)
        out = model.predict(x, t_dev, "x0", **cond)
        if bar is not None:
            bar.update(1)
        return out

    nfe = 0
    x = x_T
    try:
        for a, b in walk:
            s, t = points[a], points[b]
            if b < a:  # RePaint's forward jump from s = points[a] back up to the noisier t = points[b]
                ratio = t.alpha / s.alpha
                x = ratio * x + math.sqrt(max(t.sigma**2 - ratio**2 * s.sigma**2, 0.0)) * randn()
                continue
            nfe += 1
            if method == "dps":
                x = _dps_step(x, s, t, y, apply_a, zeta, predict, reverse)
            else:
                with torch.no_grad():
                    x = reverse(x, s, t, predict(x, s))
                    known = t.alpha * y + t.sigma * randn() if t.sigma > 0 else t.alpha * y
                    x = mask * known + (1 - mask) * x
        if denoise:
            nfe += 1
            with torch.no_grad():
                x = predict(x, points[-1])
                if mask is not None:
                    x = mask * y + (1 - mask) * x
    finally:
        if bar is not None:
            bar.close()
    x = x.detach()
    with torch.no_grad():
        resid = (y - x) * mask if mask is not None else y - apply_a(x)
    stats = {"nfe": nfe, "grid": ts, "residual": resid.reshape(resid.shape[0], -1).norm(dim=1)}
    if n0 is not None:
        stats["nfe_counted"] = model.nfe - n0
    return Solution(x=x, stats=stats)


def _batch_of(n: int, batch: int | None, name: str) -> int:
    if batch is not None and n != batch:
        raise ValueError(f"{name} holds a batch of {n} but there are {batch} samples")
    return n


def _pairs(path: list[int]) -> list[tuple[int, int]]:
    return list(zip(path[:-1], path[1:]))


def _dps_step(x, s: Point, t: Point, y, apply_a, zeta: float, predict, reverse) -> torch.Tensor:
    """One step of Chung et al. (2023), Algorithm 1: the ancestral step from ``x̂0``, then ``- zeta/||r|| ∇||r||²``."""
    x_in = x.detach().requires_grad_(True)
    with torch.enable_grad():
        denoised = predict(x_in, s)
        resid = (y - apply_a(denoised)).reshape(x.shape[0], -1)
        sq = resid.pow(2).sum(1)  # ||r||² per sample
        (grad,) = torch.autograd.grad(sq.sum(), x_in)  # samples are independent: row b is ∇_{x_b} ||r_b||²
    with torch.no_grad():
        norm = sq.detach().sqrt()
        step = torch.where(norm > 0, zeta / norm.clamp_min(torch.finfo(norm.dtype).tiny), torch.zeros_like(norm))
        out = reverse(x.detach(), s, t, denoised.detach())
        return out - step.reshape(-1, *([1] * (x.ndim - 1))) * grad
