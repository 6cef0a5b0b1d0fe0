"""Annealed Langevin dynamics (Song & Ermon 2019, "Generative Modeling by Estimating Gradients of the Data
Distribution", Algorithm 1).

Unadjusted Langevin (ULA) with step ``h`` and score ``s = ∇ log p``: ``x <- x + h s(x) + sqrt(2 h) z``, ``z``
standard Gaussian. Its stationary law tends to ``p`` as ``h -> 0``, with a bias of first order in ``h``: on a
Gaussian target ``N(m, v)`` the iteration ``y <- (1 - h/v) y + sqrt(2 h) z`` (``y = x - m``) has the stationary
variance ``u = (1 - h/v)² u + 2 h``, i.e. ``u = v / (1 - h/(2 v))`` (stable for ``h < 2 v``), and the mean ``m``
exactly.

Annealing runs ``n_steps_each`` ULA steps on each noise level of a decreasing sequence, each level's chain starting
where the previous one stopped. In sdekit a level is a time ``t`` of the sampler's grid and its target is the
marginal ``p_t`` of ``x_t = alpha(t) x_0 + sigma(t) eps``, whose score the model gives (``predict(x, t,
"score")``). For VE and EDM (``alpha = 1``) that is the paper's perturbed law ``q_sigma`` with ``sigma(t)`` its
noise level; for VP it is the scaled and noised law, and its noise level is ``sigma(t)`` in the state's own
units (``sigma² = 1 - alpha²``).

Step size: ``alpha_i = eps · sigma(t_i)² / sigma_L²``, with ``sigma_L`` the smallest positive ``sigma`` of the
levels, so ``eps`` is the step on the last level, in the state's units. Why ``sigma²``: for any data law,
``-∇² log p_t = (I - alpha² Cov[x_0 | x_t] / sigma²) / sigma² <= I / sigma²`` (Tweedie's second-order identity),
so ``1/sigma(t)²`` bounds the curvature of ``-log p_t`` and ``alpha_i / sigma_i² = eps / sigma_L²`` is the same
fraction of the local stiffness on every level (the paper's argument: the signal-to-noise ratio
``alpha_i s / sqrt(2 alpha_i) z`` does not depend on the level). The rule in ``sigma`` is the paper's rule in the
VE variable too: with ``xbar = x/alpha`` (noise level ``sigmabar = sigma/alpha``), a Langevin step of size
``hbar`` in ``xbar`` is the step ``h = alpha² hbar`` in ``x``, so ``hbar_i ∝ sigmabar_i²`` is ``h_i ∝ sigma_i²``;
only the constant differs (``eps = alpha_L² epsbar``), and ``alpha_L ≈ 1`` at the data end. The paper's
``eps = 2e-5`` with ``sigma_L = 0.01`` is ``eps / sigma_L² = 0.2``: the default is that ratio on every grid
(`DEFAULT_STEP_RATIO`). Any ``eps < 2 sigma_L²`` keeps ``alpha_i`` times the curvature below 2 on every level for
every data law, the bound past which a gradient step overshoots and the chain blows up (on ``N(m, v)``: ``h < 2v``).
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass

import torch

from .base import register
from .diffusion import DiffusionSampler, SamplerState, Update, lin

#: ``eps / sigma_L²`` of the paper's CIFAR-10 setting (``eps = 2e-5``, ``sigma_L = 0.01``): the default step ratio.
DEFAULT_STEP_RATIO = 2e-5 / 0.01**2


def langevin_update(x: torch.Tensor, score: torch.Tensor, step_size: float) -> Update:
    """One unadjusted Langevin step as an `Update`: ``x + h score + sqrt(2 h) z``.

    Args:
        x: the state.
        score: ``∇ log p`` at ``x``.
        step_size: ``h > 0``.

    Returns:
        The update; its noise coefficient ``sqrt(2 h)`` multiplies the step's standard Gaussian.
    """
    return Update([(1.0, x), (step_size, score)], noise=math.sqrt(2.0 * step_size))


def _check_n_steps(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= 1, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return int(value)


def _check_step(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a finite number > 0, got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def langevin_at(model, x: torch.Tensor, t: float, step_size: float, n_steps: int,
                generator: torch.Generator | None = None, *, cond: dict | None = None) -> torch.Tensor:
    """``n_steps`` unadjusted Langevin steps at ONE fixed time ``t``, targeting the marginal ``p_t``:
    ``x <- x + h score(x, t) + sqrt(2 h) z`` (the inner loop of Song & Ermon 2019, Algorithm 1, on one level).

    One model evaluation (``predict(x, t, "score")``) per step. The stationary law is ``p_t`` up to a bias of
    first order in ``h`` (see the module docstring for the Gaussian case in closed form).

    Args:
        model: a [`ScoreModel`][sdekit.models.ScoreModel] (anything with ``.process`` and ``.predict``).
        x: the starting states, batch first.
        t: the time of the level, with ``sigma(t) > 0`` (the score is not defined at ``sigma = 0``).
        step_size: ``h``, a finite number > 0, in the state's units (``h < 2 sigma(t)²`` stays below the curvature
            bound of the module docstring for every data law).
        n_steps: number of steps, an int >= 1.
        generator: the source of the Gaussians (on ``x``'s device); a fresh OS-seeded one when None (the global
            RNG is never used).
        cond: keyword arguments for every model call (e.g. class labels).

    Returns:
        The states after ``n_steps`` steps, in ``x``'s shape, dtype and device.
    """
    process = getattr(model, "process", None)
    if process is None or not hasattr(model, "predict"):
        raise TypeError(f"model must be a ScoreModel (with .process and .predict), got {type(model).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if isinstance(t, bool) or not isinstance(t, numbers.Real):
        raise TypeError(f"t must be a number, got {type(t).__name__}")
    lo, hi = float(process.t_domain_min), float(process.t_max)
    if not lo <= t <= hi:
        raise ValueError(f"t must lie in the time domain [{lo:g}, {hi:g}], got {t!r}")
    t_dev = torch.full((), float(t), dtype=torch.float64, device=x.device)
    if not float(process.sigma(t_dev.cpu())) > 0:
        raise ValueError(f"t must have sigma(t) > 0 (the score is undefined at sigma = 0), got t = {t!r}")
    h = _check_step(step_size, "step_size")
    n_steps = _check_n_steps(n_steps, "n_steps")
    if generator is None:
        generator = torch.Generator(device=x.device).manual_seed(int.from_bytes(os.urandom(7), "little"))
    cond = cond or {}
    for _ in range(n_steps):
        upd = langevin_update(x, model.predict(x, t_dev, "score", **cond), h)
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = lin(upd.terms + [(upd.noise, z)])
    return x


@dataclass
class LangevinState(SamplerState):
    """The `SamplerState` of annealed Langevin, plus ``sigma_smallest``: the smallest positive ``sigma`` of the
    grid's levels (``sigma_L``; None when no level has ``sigma > 0``)."""

    sigma_smallest: float | None = None


@register
class AnnealedLangevin(DiffusionSampler):
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1): on each level ``t_1 > ... > t_N`` of the grid
    (its times after the start ``t_0``, where ``x_T`` is drawn from the prior), ``n_steps_each`` unadjusted
    Langevin steps ``x <- x + alpha_i score(x, t_i) + sqrt(2 alpha_i) z`` targeting the marginal ``p_{t_i}``, with
    ``alpha_i = eps · sigma(t_i)² / sigma_L²`` (``sigma_L`` the smallest positive ``sigma`` of the levels). A level
    at ``sigma = 0`` (``t_end=0``) is a final denoising step instead: ``alpha · D(x, s)``, one evaluation.

    ``n_steps_each`` evaluations per step (the score, one per Langevin step); NFE = ``steps · n_steps_each``
    (one for a last step onto ``sigma = 0``). Each Langevin step draws its own Gaussian from the solve's noise
    source: the last of a level is the step's Brownian increment ``z``, the others ``StepNoise.extra``.

    No order: the sampler is not a discretisation of the reverse SDE. More levels do not make its error vanish;
    its stationary law on each level is biased by O(``alpha_i``) (first order in the step size, measured in
    ``tests/test_langevin.py``), and mixing between levels depends on ``n_steps_each``. ``order`` and
    ``weak_order`` are None, so the order checks (which measure declared orders) do not apply; the conformance
    suite checks its moments and determinism like every stochastic sampler's.

    Args:
        n_steps_each: Langevin steps per level (the paper's ``T``; default 100, as in the paper), an int >= 1.
        eps: the step size on the last level, in the state's units (the paper's ``epsilon``), a finite number > 0;
            None (default): ``DEFAULT_STEP_RATIO · sigma_L²`` (the paper's ``2e-5`` at ``sigma_L = 0.01``).
            ``eps < 2 sigma_L²`` keeps every level's step below the curvature bound of the module docstring.
    """

    name = "langevin"
    order = None
    weak_order = None
    noise_types = ("additive",)
    prediction = "score"

    def __init__(self, n_steps_each: int = 100, eps: float | None = None):
        self.n_steps_each = _check_n_steps(n_steps_each, "n_steps_each")
        self.eps = None if eps is None else _check_step(eps, "eps")
        self.evals_per_step = self.n_steps_each

    def init(self, problem, t0, x0, grid=None, f0=None):
        if grid is None:
            raise ValueError("annealed Langevin runs on a fixed grid of noise levels, not with a step-size controller")
        levels = torch.tensor([float(t) for t in grid[1:]], dtype=torch.float64)
        sigmas = problem.process.sigma(levels)
        positive = sigmas[sigmas > 0]
        sigma_smallest = float(positive.min()) if positive.numel() else None
        return LangevinState(n=len(grid) - 1, sigma_smallest=sigma_smallest)

    def step_size(self, sigma: float, sigma_smallest: float) -> float:
        """``alpha_i = eps · sigma² / sigma_L²`` (``DEFAULT_STEP_RATIO · sigma²`` when ``eps`` is None)."""
        if self.eps is None:
            return DEFAULT_STEP_RATIO * sigma * sigma
        return self.eps * (sigma / sigma_smallest) ** 2

    def _step(self, ev, x, s, t, noise, st):
        h = self.step_size(t.sigma, st.sigma_smallest)
        for _ in range(self.n_steps_each - 1):
            upd = langevin_update(x, ev.score(x, t), h)
            x = lin(upd.terms + [(upd.noise, noise.extra())])
        return langevin_update(x, ev.score(x, t), h)  # its Gaussian is the step's z (in registers when fused)


__all__ = ["DEFAULT_STEP_RATIO", "AnnealedLangevin", "LangevinState", "langevin_at", "langevin_update"]
