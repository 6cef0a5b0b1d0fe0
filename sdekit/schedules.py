"""Noise schedules of variance-preserving processes, as ``log alpha(t)`` with its derivative and inverse.

A VP process is fixed by ``log alpha(t)``: ``sigma² = 1 - alpha²``, ``f(t) = d log alpha / dt`` and
``beta(t) = -2 f(t)``. Each schedule here gives ``log_alpha``, ``dlog_alpha`` and ``t_from_log_alpha`` (closed
form, or an exact per-segment solve for the learned spline), in the dtype of ``t`` (pass float64 times for full
precision). The page ``docs/schedules.md`` shows them side by side.

- `LinearSchedule`: ``beta(t) = beta_min + t (beta_max - beta_min)`` (Song et al. 2021, score_sde).
- `CosineSchedule`: ``alpha(t) = f(t)/f(0)``, ``f(t) = cos(pi/2 (t + s)/(1 + s))`` (Nichol &
  Dhariwal 2021), clipped at ``t_max`` < 1 so the log-SNR stays finite.
- `DiscreteSchedule`: a DDPM schedule of ``N`` steps made continuous as in DPM-Solver (Lu et al.
  2022): ``t_i = (i + 1)/N`` and ``log alpha`` piecewise linear in ``t`` through the knots
  ``(0, 0), (1/N, ½ log ᾱ_0), …, (1, ½ log ᾱ_{N-1})``; ``index = N t - 1`` (fractional allowed).
- `QuadraticSchedule`: ``sqrt(beta(t))`` linear in ``t`` (DDPM's ``"quad"``, diffusers' ``"scaled_linear"``).
- `LearnedSchedule`: the half log-SNR as a monotone spline with trainable knot values (an ``nn.Module``;
  Kingma et al. 2021, Variational Diffusion Models).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ._utils import check_positive


def _rounding_slack(dtype: torch.dtype) -> float:
    """Relative slack for range checks: rounding of a bound computed in ``dtype`` (at least 1e-9)."""
    return max(1e-9, 16 * torch.finfo(dtype).eps) if dtype.is_floating_point else 0.0


def _check_range(x, name: str, lo: float, hi: float, where: str) -> None:
    """Raise a ValueError naming ``name`` if ``x`` holds NaN or a value outside ``[lo, hi]`` (either bound may be
    infinite), allowing a rounding slack of the input's dtype relative to ``|bound|`` (none at a bound of 0: t = 0
    is exact in every dtype, and t < 0 would give NaN coefficients).

    Numbers and CPU tensors only: a CUDA tensor is not checked, so that sampling never synchronises.
    """
    if isinstance(x, torch.Tensor):
        if x.device.type != "cpu":
            return
    else:
        x = torch.as_tensor(x, dtype=torch.float64)
    if x.is_floating_point() and bool(torch.isnan(x).any()):
        raise ValueError(f"{name} contains NaN; allowed: {where}")
    slack = _rounding_slack(x.dtype)
    lo_s, hi_s = lo - slack * abs(lo), hi + slack * abs(hi)
    bad = (x < lo_s) | (x > hi_s)
    if bool(bad.any()):
        raise ValueError(f"{name}={x[bad].flatten()[0].item():g} is outside {where}")


def _check_t_min(t_min, t_max: float) -> None:
    if isinstance(t_min, bool) or not isinstance(t_min, numbers.Real) or not 0 < t_min < t_max:
        raise ValueError(f"t_min must be a number in (0, t_max) = (0, {t_max:g}), got {t_min!r}")


class BetaSchedule:
    """Interface of a VP schedule: ``log_alpha``, its time derivative and its inverse."""

    t_max: float = 1.0  # largest valid time
    t_min: float = 1e-3  # default end of sampling

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """``log alpha(t)`` of the schedule."""
        raise NotImplementedError

    def dlog_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """``d log alpha / dt`` (the forward drift coefficient ``f(t)``)."""
        raise NotImplementedError

    def t_from_log_alpha(self, log_alpha: torch.Tensor) -> torch.Tensor:
        """The inverse of `log_alpha`: the time with the given ``log alpha``."""
        raise NotImplementedError


class LinearSchedule(BetaSchedule):
    """Linear ``beta(t)`` on ``[0, 1]``: ``log alpha(t) = -(beta_max - beta_min) t²/4 - beta_min t/2``."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3):
        check_positive(beta_min, "beta_min", strict=False)
        check_positive(beta_max, "beta_max")
        if not beta_min < beta_max:
            raise ValueError(f"beta_min must be < beta_max, got beta_min={beta_min}, beta_max={beta_max}")
        _check_t_min(t_min, 1.0)
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.t_min, self.t_max = float(t_min), 1.0

    def log_alpha(self, t):
        return -(self.beta_max - self.beta_min) * t**2 / 4 - self.beta_min * t / 2

    def dlog_alpha(self, t):
        return -(self.beta_min + t * (self.beta_max - self.beta_min)) / 2

    def t_from_log_alpha(self, log_alpha):
        # Root of a t² + b t - c = 0 with a = (b1-b0)/4, b = b0/2, c = -log alpha >= 0, in the form
        # 2c / (b + sqrt(b² + 4ac)) that does not cancel for small c.
        a, b = (self.beta_max - self.beta_min) / 4, self.beta_min / 2
        c = -log_alpha
        t = 2 * c / (b + torch.sqrt(b * b + 4 * a * c))
        # log alpha = 0 is t = 0 (0/0 above when beta_min = 0)
        return torch.where(c == 0, torch.zeros_like(t), t)

    def __repr__(self):
        return f"LinearSchedule(beta_min={self.beta_min}, beta_max={self.beta_max})"


class QuadraticSchedule(BetaSchedule):
    """Quadratic ``beta(t)`` on ``[0, 1]``: ``sqrt(beta)`` linear in ``t``, from ``beta_min`` to ``beta_max``.

    The continuous form of the DDPM code's ``"quad"`` schedule (Ho et al. 2020) and diffusers' ``"scaled_linear"``
    (latent diffusion, Rombach et al. 2022): betas ``linspace(sqrt(beta_start), sqrt(beta_end), N)²``. As for
    [`LinearSchedule`][sdekit.schedules.LinearSchedule], the continuous rate is ``N`` times the discrete betas, so
    the defaults 0.1 and 20 are DDPM's ``1e-4`` and ``0.02`` at ``N = 1000``; Stable Diffusion's
    ``0.00085``/``0.012`` are ``beta_min=0.85, beta_max=12``.

    With ``a = sqrt(beta_min)``, ``d = sqrt(beta_max) - a`` and ``s(t) = a + d t``:
    ``beta(t) = s(t)²``, ``log alpha(t) = -½ ∫_0^t beta = -(a² t + a d t² + d² t³/3)/2`` and
    ``d log alpha/dt = -s(t)²/2``. The inverse is closed-form: ``c = -2 log alpha`` gives
    ``s³ = a³ + 3 d c`` and ``t = (s - a)/d = 3c/(s² + s a + a²)`` (the second form does not cancel for small
    ``c``); the cube root is polished by one Newton step, so in float64 ``t_from_log_alpha(log_alpha(t))``
    returns ``t`` to a few ulps (measured ≤ 6e-16 on ``[0, 1]``).

    Args:
        beta_min: ``beta(0) > 0``.
        beta_max: ``beta(1) > beta_min``.
        t_min: the default end of sampling, in ``(0, 1)``.

    Raises:
        ValueError: ``beta_min <= 0``, ``beta_max <= beta_min``, or ``t_min`` outside ``(0, 1)``.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3):
        check_positive(beta_min, "beta_min")
        check_positive(beta_max, "beta_max")
        if not beta_min < beta_max:
            raise ValueError(f"beta_min must be < beta_max, got beta_min={beta_min}, beta_max={beta_max}")
        _check_t_min(t_min, 1.0)
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.t_min, self.t_max = float(t_min), 1.0
        self._a = math.sqrt(self.beta_min)
        self._d = math.sqrt(self.beta_max) - self._a

    def log_alpha(self, t):
        a, d = self._a, self._d
        return -t * (a * a + t * (a * d + t * (d * d / 3))) / 2

    def dlog_alpha(self, t):
        return -((self._a + self._d * t) ** 2) / 2

    def t_from_log_alpha(self, log_alpha):
        a, d = self._a, self._d
        c = -2 * log_alpha
        q = a**3 + 3 * d * c  # = s³ > 0
        s = q.clamp_min(0) ** (1 / 3)
        s = s - (s**3 - q) / (3 * s * s)  # one Newton step: the power rounds to a few ulps
        return 3 * c / (s * s + s * a + a * a)

    def __repr__(self):
        return f"QuadraticSchedule(beta_min={self.beta_min}, beta_max={self.beta_max})"


class CosineSchedule(BetaSchedule):
    """Cosine schedule of Nichol & Dhariwal (2021) with offset ``s``; ``t_max`` < 1 (DPM-Solver: 0.9946)."""

    def __init__(self, s: float = 0.008, t_max: float = 0.9946, t_min: float = 1e-3):
        check_positive(s, "s")
        if isinstance(t_max, bool) or not isinstance(t_max, numbers.Real) or not 0 < t_max < 1:
            raise ValueError(f"t_max of the cosine schedule must lie in (0, 1), got {t_max!r}")
        _check_t_min(t_min, t_max)
        self.s, self.t_min, self.t_max = float(s), float(t_min), float(t_max)
        self._angle0 = math.pi / 2 * self.s / (1 + self.s)
        self._log_f0 = math.log(math.cos(self._angle0))

    def _angle(self, t):
        return math.pi / 2 * (t + self.s) / (1 + self.s)

    def log_alpha(self, t):
        # f(t)/f(0) = cos(a0 + d)/cos(a0) = 1 - 2 sin²(d/2) - tan(a0) sin(d), d = pi/2 t/(1 + s): exactly 0 at
        # t = 0 (log f(t) - log f(0) rounds to > 0 there, which made sigma(0) NaN) and accurate near it.
        d = math.pi / 2 * t / (1 + self.s)
        return torch.log1p(-2 * torch.sin(d / 2) ** 2 - math.tan(self._angle0) * torch.sin(d))

    def dlog_alpha(self, t):
        return -math.pi / (2 * (1 + self.s)) * torch.tan(self._angle(t))

    def t_from_log_alpha(self, log_alpha):
        return 2 * (1 + self.s) / math.pi * torch.arccos(torch.exp(log_alpha + self._log_f0)) - self.s

    def __repr__(self):
        return f"CosineSchedule(s={self.s}, t_max={self.t_max})"


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation through increasing knots ``xp`` (linear extrapolation at the ends)."""
    xp = xp.to(dtype=x.dtype, device=x.device)
    fp = fp.to(dtype=x.dtype, device=x.device)
    idx = torch.searchsorted(xp, x.detach().contiguous(), right=True).clamp(1, xp.numel() - 1)
    x0, x1 = xp[idx - 1], xp[idx]
    f0, f1 = fp[idx - 1], fp[idx]
    return f0 + (f1 - f0) * (x - x0) / (x1 - x0)


def _slope(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    xp = xp.to(dtype=x.dtype, device=x.device)
    fp = fp.to(dtype=x.dtype, device=x.device)
    idx = torch.searchsorted(xp, x.detach().contiguous(), right=True).clamp(1, xp.numel() - 1)
    return (fp[idx] - fp[idx - 1]) / (xp[idx] - xp[idx - 1])


class DiscreteSchedule(BetaSchedule):
    """A discrete DDPM schedule (``alphas_cumprod`` of length N) made continuous in ``t ∈ [0, 1]``.

    ``t_from_index(i) = (i + 1)/N``; the knot ``t = 0`` (index -1) has ``alpha = 1``, ``sigma = 0``: the
    target of a final denoising step. Between knots ``log alpha`` is linear in ``t``, so ``beta(t)`` is
    piecewise constant.
    """

    def __init__(self, alphas_cumprod):
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().cpu()
        if ac.ndim != 1 or ac.numel() < 2:
            raise ValueError(f"alphas_cumprod must be a 1-D sequence of length >= 2, got shape {tuple(ac.shape)}")
        if not bool(torch.isfinite(ac).all()) or not bool(((ac > 0) & (ac < 1)).all()):
            raise ValueError("alphas_cumprod must lie in the open interval (0, 1)")
        if not bool((ac[1:] < ac[:-1]).all()):
            raise ValueError("alphas_cumprod must be strictly decreasing")
        self.alphas_cumprod = ac
        self.num_steps = n = ac.numel()
        self.knots_t = torch.arange(0, n + 1, dtype=torch.float64) / n
        self.knots_log_alpha = torch.cat([torch.zeros(1, dtype=torch.float64), 0.5 * torch.log(ac)])
        self.t_min, self.t_max = 1.0 / n, 1.0

    @classmethod
    def from_betas(cls, betas) -> DiscreteSchedule:
        b = torch.as_tensor(betas, dtype=torch.float64)
        if b.ndim != 1 or b.numel() < 2:
            raise ValueError(f"betas must be a 1-D sequence of length >= 2, got shape {tuple(b.shape)}")
        if not bool(((b > 0) & (b < 1)).all()):
            raise ValueError("betas must lie in the open interval (0, 1)")
        return cls(torch.cumprod(1 - b, 0))

    @classmethod
    def linear_ddpm(cls, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        """The DDPM paper's schedule: betas linear from ``beta_start`` to ``beta_end`` over ``num_steps``."""
        if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or num_steps < 2:
            raise ValueError(f"num_steps must be an int >= 2, got {num_steps!r}")
        if not 0 < beta_start < beta_end < 1:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}")
        return cls.from_betas(torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64))

    def log_alpha(self, t):
        return _interp(t, self.knots_t, self.knots_log_alpha)

    def dlog_alpha(self, t):
        return _slope(t, self.knots_t, self.knots_log_alpha)

    def t_from_log_alpha(self, log_alpha):
        # log alpha is decreasing in t: interpolate t against the flipped (increasing) knots.
        return _interp(log_alpha, self.knots_log_alpha.flip(0), self.knots_t.flip(0))

    def t_from_index(self, i):
        """``t = (i + 1)/N`` (float64) for an index ``i`` in ``[-1, N-1]``; fractional indices are allowed."""
        if isinstance(i, (bool, str, bytes)) or (isinstance(i, torch.Tensor) and i.dtype == torch.bool):
            raise TypeError(f"index i must be a number or a torch.Tensor, got {type(i).__name__}")
        n = self.num_steps
        _check_range(i, "index i", -1, n - 1, f"the index range [-1, {n - 1}] of {self!r} (-1 is t = 0, sigma = 0)")
        i = i.to(torch.float64) if isinstance(i, torch.Tensor) else torch.as_tensor(i, dtype=torch.float64)
        return ((i + 1) / n).clamp(0.0, 1.0)  # the clamp only removes the rounding slack of the check

    def index_from_t(self, t):
        """``i = N t - 1`` for ``t`` in ``[0, 1]`` (fractional between grid times); ``t = 0`` is index -1."""
        _check_range(t, "t", 0.0, 1.0, f"the time domain [0, 1] of {self!r}")
        return t * self.num_steps - 1

    def __repr__(self):
        return f"DiscreteSchedule(N={self.num_steps})"


def _inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    """``x`` with ``softplus(x) = y`` for ``y > 0``, as ``y + log(-expm1(-y))`` (no overflow for large ``y``)."""
    return y + torch.log(-torch.expm1(-y))


def _learned_knots(knots) -> torch.Tensor:
    """The knot times of a `LearnedSchedule`: ``knots`` uniform times on ``[0, 1]``, or the given times, checked."""
    if isinstance(knots, bool):
        raise ValueError(f"knots must be an int >= 2 or a 1-D sequence of >= 2 increasing times, got {knots!r}")
    if isinstance(knots, numbers.Integral):
        if knots < 2:
            raise ValueError(f"knots must be an int >= 2 (the number of knot times on [0, 1]), got {knots}")
        return torch.linspace(0.0, 1.0, int(knots), dtype=torch.float64)
    tau = torch.as_tensor(knots, dtype=torch.float64).detach().cpu()
    if tau.ndim != 1 or tau.numel() < 2:
        raise ValueError(f"knots must be a 1-D sequence of >= 2 times, got shape {tuple(tau.shape)}")
    if not bool(torch.isfinite(tau).all()):
        raise ValueError("knots must be finite")
    if float(tau[0]) != 0.0:
        raise ValueError(f"knots must start at t = 0 (the data end of a VP process), got knots[0]={float(tau[0]):g}")
    if not bool((tau[1:] > tau[:-1]).all()):
        raise ValueError(f"knots must be strictly increasing, got {tau.tolist()}")
    return tau.clone()


class LearnedSchedule(torch.nn.Module, BetaSchedule):
    """A learnable VP schedule: the half log-SNR ``lambda(t)`` as a monotone spline with trainable knot values.

    Variational Diffusion Models (Kingma et al. 2021) learn the noise schedule as a monotone function of ``t``
    between two end values; here it is a spline through fixed knot times ``0 = tau_0 < … < tau_K = t_max`` with
    values ``lambda_0 = log_snr_max > lambda_1 > … > lambda_K = log_snr_min``. The interior values are

        ``lambda_k = log_snr_max - (log_snr_max - log_snr_min) · (w_1 + … + w_k)/(w_1 + … + w_K)``,
        ``w_j = softplus(raw_increments[j])``,

    so every value of the unconstrained parameter ``raw_increments`` gives a strictly decreasing schedule with
    the chosen end values (zeros, the initial value, give ``lambda`` linear in ``t``: VDM's fixed linear
    schedule when the knots are uniform). ``lambda`` here is the project's half log-SNR
    (``log alpha - log sigma``); VDM's ``gamma`` is ``-2 lambda``, so its defaults ``gamma_0 = -13.3``,
    ``gamma_1 = 5`` are ``log_snr_max = 6.65``, ``log_snr_min = -2.5`` (``sigma(0) ≈ 1.3e-3``,
    ``alpha(1) ≈ 0.082``; the data end ``t = 0`` has ``sigma > 0``, so the default ``t_min`` is 0).

    Interpolation: ``"cubic"`` (default) is the monotone piecewise-cubic Hermite interpolant of Fritsch & Carlson
    (1980) with the harmonic-mean slopes of Fritsch & Butland (1984), as in PCHIP, and one-sided slopes at the
    ends: ``lambda`` is C¹, so the drift ``f`` and ``g²`` are continuous. Its slope ratios lie in ``(0, 3)``,
    where the Hermite cubic is strictly monotone. ``"linear"`` is piecewise linear (``f`` jumps at the knots).

    VP coefficients: ``alpha² = sigmoid(2 lambda)``, ``log alpha = -½ softplus(-2 lambda)``,
    ``d log alpha/dt = sigmoid(-2 lambda) · d lambda/dt``. The inverse ``t_from_log_snr`` is exact per segment
    for ``"linear"``; for ``"cubic"`` the segment is found exactly and the cubic is solved by Newton's method
    safeguarded by bisection, to round-off of the input's dtype (at most 10 iterations measured; a fixed 24 off
    the CPU, so a GPU never synchronises), then one Newton correction with autograd on,
    so the inverse is differentiable in its argument and in the parameters (implicit-function gradient). The
    error of ``t_from_log_snr(log_snr(t))`` is the round-off of ``lambda`` over its slope: in float64
    ``|error| · |d lambda/dt| <= 16 eps max(|log_snr_max|, |log_snr_min|, 1)`` (property-tested), i.e. at most
    2e-14 in ``t`` for the default ends and moderate parameters (measured).

    The module holds one parameter, ``raw_increments`` (float64, one per segment); the end values and knot
    times are fixed. Gradients flow from any loss through ``VP(schedule).alpha(t)``, ``sigma(t)``, ``f(t)``...
    Sample under ``torch.no_grad()`` so the solvers' coefficients do not build graphs.

    Args:
        knots: the number of knot times, uniform on ``[0, 1]`` (an int >= 2), or the knot times themselves (a
            strictly increasing 1-D sequence from 0; its last entry is ``t_max``).
        log_snr_max: ``lambda(0)``, the half log-SNR at the data end.
        log_snr_min: ``lambda(t_max)`` < ``log_snr_max``, the half log-SNR at the noise end.
        interpolation: ``"cubic"`` (monotone C¹ Hermite) or ``"linear"``.
        t_min: the default end of sampling, in ``[0, t_max)``.

    Raises:
        ValueError: fewer than 2 knots, knots not strictly increasing or not starting at 0, non-finite end
            values or ``log_snr_max <= log_snr_min``, an unknown ``interpolation``, ``t_min`` outside
            ``[0, t_max)``.
    """

    INTERPOLATIONS = ("cubic", "linear")

    def __init__(self, knots: int | Sequence[float] | torch.Tensor = 11, log_snr_max: float = 6.65,
                 log_snr_min: float = -2.5, *, interpolation: str = "cubic", t_min: float = 0.0):
        super().__init__()
        tau = _learned_knots(knots)
        for name, v in (("log_snr_max", log_snr_max), ("log_snr_min", log_snr_min)):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if not log_snr_max > log_snr_min:
            raise ValueError(f"log_snr_max must be > log_snr_min, got log_snr_max={log_snr_max}, "
                             f"log_snr_min={log_snr_min}")
        if interpolation not in self.INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {interpolation!r}; allowed: 'cubic', 'linear'")
        t_max = float(tau[-1])
        if isinstance(t_min, bool) or not isinstance(t_min, numbers.Real) or not 0 <= t_min < t_max:
            raise ValueError(f"t_min must be a number in [0, t_max) = [0, {t_max:g}) (sigma > 0 at t = 0), "
                             f"got {t_min!r}")
        self.register_buffer("knots", tau)
        self.raw_increments = torch.nn.Parameter(torch.zeros(tau.numel() - 1, dtype=torch.float64))
        self.log_snr_max, self.log_snr_min = float(log_snr_max), float(log_snr_min)
        self.interpolation = interpolation
        self.t_min, self.t_max = float(t_min), t_max

    @classmethod
    def from_log_snr(cls, knots: int | Sequence[float] | torch.Tensor, log_snr: Sequence[float] | torch.Tensor,
                     **kwargs: Any) -> LearnedSchedule:
        """The schedule through given half log-SNR values at the knots (e.g. to start from a known schedule).

        Args:
            knots: knot times, as for the constructor (an int or a sequence).
            log_snr: the strictly decreasing values ``lambda(tau_k)``, one per knot; the first and last are the
                end values ``log_snr_max``, ``log_snr_min``.
            **kwargs: ``interpolation``, ``t_min``.

        Returns:
            A `LearnedSchedule` whose ``log_snr_knots`` equal ``log_snr`` (to rounding).

        Raises:
            ValueError: ``log_snr`` not finite, not strictly decreasing, or not one value per knot.
        """
        tau = _learned_knots(knots)
        lam = torch.as_tensor(log_snr, dtype=torch.float64).detach().cpu()
        if lam.shape != tau.shape:
            raise ValueError(f"log_snr must hold one value per knot ({tau.numel()}), got shape {tuple(lam.shape)}")
        if not bool(torch.isfinite(lam).all()) or not bool((lam[1:] < lam[:-1]).all()):
            raise ValueError("log_snr must be finite and strictly decreasing")
        schedule = cls(tau, float(lam[0]), float(lam[-1]), **kwargs)
        with torch.no_grad():
            schedule.raw_increments.copy_(_inverse_softplus(lam[:-1] - lam[1:]))
        return schedule

    @property
    def log_snr_knots(self) -> torch.Tensor:
        """The half log-SNR values ``lambda_0 > … > lambda_K`` at the knots (differentiable in the parameters)."""
        w = F.softplus(self.raw_increments)
        frac = torch.cumsum(w, 0)[:-1] / w.sum()
        inner = self.log_snr_max - (self.log_snr_max - self.log_snr_min) * frac
        return torch.cat([inner.new_full((1,), self.log_snr_max), inner, inner.new_full((1,), self.log_snr_min)])

    def _spline(self, like: torch.Tensor):
        """Knot times, values, widths and (cubic) Hermite slopes in ``like``'s dtype and device.

        Without a graph to build (no grad mode, or a frozen parameter) they are cached per parameter version,
        dtype and device: a solver evaluates the schedule several times per step.
        """
        param = self.raw_increments
        if torch.is_grad_enabled() and param.requires_grad:
            return self._spline_coefficients(like)
        key = (param._version, param.data_ptr(), like.dtype, like.device)
        cached = self.__dict__.get("_spline_cache")
        if cached is None or cached[0] != key:
            cached = (key, tuple(None if c is None else c.detach() for c in self._spline_coefficients(like)))
            self.__dict__["_spline_cache"] = cached
        return cached[1]

    def _spline_coefficients(self, like: torch.Tensor):
        tau = self.knots.to(dtype=like.dtype, device=like.device)
        lam = self.log_snr_knots.to(dtype=like.dtype, device=like.device)
        h = tau[1:] - tau[:-1]
        delta = (lam[1:] - lam[:-1]) / h  # all < 0
        if self.interpolation == "linear":
            return tau, lam, h, None
        # Fritsch-Butland weighted harmonic mean of the neighbouring secants (PCHIP's interior slopes)
        w1, w2 = 2 * h[1:] + h[:-1], h[1:] + 2 * h[:-1]
        inner = (w1 + w2) / (w1 / delta[:-1] + w2 / delta[1:])
        return tau, lam, h, torch.cat([delta[:1], inner, delta[-1:]])

    def _segment(self, t: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        return torch.searchsorted(tau, t.detach().contiguous(), right=True).clamp(1, tau.numel() - 1) - 1

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """The half log-SNR ``lambda(t)`` of the spline, in ``t``'s dtype.

        Args:
            t: times in ``[0, t_max]`` (a tensor).

        Returns:
            ``lambda(t)``, differentiable in ``t`` and in the parameters.
        """
        tau, lam, h, m = self._spline(t)
        k = self._segment(t, tau)
        s = (t - tau[k]) / h[k]
        y0, y1 = lam[k], lam[k + 1]
        if m is None:
            return y0 + (y1 - y0) * s
        return y0 + (y1 - y0) * s * s * (3 - 2 * s) + h[k] * s * (1 - s) * ((1 - s) * m[k] - s * m[k + 1])

    def dlog_snr(self, t: torch.Tensor) -> torch.Tensor:
        """``d lambda/dt`` of the spline (< 0); at a knot, the slope of the segment to its right.

        Args:
            t: times in ``[0, t_max]`` (a tensor).

        Returns:
            The derivative, in ``t``'s dtype.
        """
        tau, lam, h, m = self._spline(t)
        k = self._segment(t, tau)
        secant = (lam[k + 1] - lam[k]) / h[k]
        if m is None:
            return secant
        s = (t - tau[k]) / h[k]
        return secant * 6 * s * (1 - s) + m[k] * (1 - s) * (1 - 3 * s) + m[k + 1] * s * (3 * s - 2)

    def log_alpha(self, t):
        return -0.5 * F.softplus(-2 * self.log_snr(t))

    def dlog_alpha(self, t):
        return torch.sigmoid(-2 * self.log_snr(t)) * self.dlog_snr(t)

    def t_from_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor:
        """The inverse of `log_snr`: the time with ``lambda(t) = log_snr``.

        Values outside ``[log_snr_min, log_snr_max]`` are clamped to the range (times 0 and ``t_max``).

        Args:
            log_snr: half log-SNR values (a tensor).

        Returns:
            Times in ``[0, t_max]``, in ``log_snr``'s dtype, differentiable in ``log_snr`` and the parameters.
        """
        target = log_snr.clamp(self.log_snr_min, self.log_snr_max)
        tau, lam, h, m = self._spline(target)
        n = lam.numel()
        # the segment k with lam[k] >= target >= lam[k + 1], found in the increasing (flipped) knot values
        j = torch.searchsorted(lam.detach().flip(0), target.detach().contiguous(), right=True).clamp(1, n - 1)
        k = n - 1 - j
        y0, y1, hk = lam[k], lam[k + 1], h[k]
        if m is None:
            return tau[k] + hk * (y0 - target) / (y0 - y1)
        with torch.no_grad():
            y0, y1, hk, m0, m1, x = y0.detach(), y1.detach(), hk.detach(), m[k].detach(), m[k + 1].detach(), target
            eps = torch.finfo(target.dtype).eps
            tol = 4 * eps * torch.maximum(y0.abs(), y1.abs()).clamp_min(1.0)  # round-off of the spline's value
            lo, hi = torch.zeros_like(x), torch.ones_like(x)
            s = ((y0 - x) / (y0 - y1)).clamp(0, 1)  # the chord's root: the start of Newton's method
            # On the CPU iterate to convergence (at most 10 iterations measured over 300 random schedules with
            # parameters in [-6, 6] and uneven knots); elsewhere run a fixed 24 so that a GPU never synchronises.
            on_cpu = x.device.type == "cpu"
            for _ in range(100 if on_cpu else 24):
                p = y0 + (y1 - y0) * s * s * (3 - 2 * s) + hk * s * (1 - s) * ((1 - s) * m0 - s * m1) - x
                dp = (y1 - y0) * 6 * s * (1 - s) + hk * (m0 * (1 - s) * (1 - 3 * s) + m1 * s * (3 * s - 2))
                right = p > 0  # the spline decreases: the root lies right of s
                lo, hi = torch.where(right, s, lo), torch.where(right, hi, s)
                s_new = s - p / dp
                s_new = torch.where((s_new > lo) & (s_new < hi), s_new, (lo + hi) / 2)  # also catches NaN
                # converged: the residual is at round-off (Newton then only jitters), or the step is
                done = (p.abs() <= tol) | ((s_new - s).abs() <= 4 * eps)
                s = torch.where(p.abs() <= tol, s, s_new)
                if on_cpu and bool(done.all()):
                    break
            t_root = tau[k] + hk * s
        # one Newton correction with autograd on: the value moves by round-off, the gradient is the implicit one
        return t_root + (target - self.log_snr(t_root)) / self.dlog_snr(t_root)

    def t_from_log_alpha(self, log_alpha):
        # lambda = log alpha - ½ log(1 - alpha²)
        return self.t_from_log_snr(log_alpha - 0.5 * torch.log(-torch.expm1(2 * log_alpha)))

    def __repr__(self):
        return (f"LearnedSchedule(knots={self.knots.numel()}, log_snr_max={self.log_snr_max}, "
                f"log_snr_min={self.log_snr_min}, interpolation={self.interpolation!r})")


def get_schedule(schedule, **kwargs) -> BetaSchedule:
    """A `BetaSchedule` from a name (``"linear"``, ``"cosine"``, ``"quadratic"``, ``"learned"``) and its options,
    or a schedule object itself (a [`LearnedSchedule`][sdekit.schedules.LearnedSchedule] is passed as it is, so
    the process shares its parameters).

    Raises:
        ValueError: an unknown name.
        TypeError: options given together with a schedule object.
    """
    if isinstance(schedule, BetaSchedule):
        if kwargs:
            raise TypeError(f"schedule options {sorted(kwargs)} given together with a schedule object")
        return schedule
    if schedule == "linear":
        return LinearSchedule(**kwargs)
    if schedule == "cosine":
        return CosineSchedule(**kwargs)
    if schedule == "quadratic":
        return QuadraticSchedule(**kwargs)
    if schedule == "learned":
        return LearnedSchedule(**kwargs)
    raise ValueError(f"unknown schedule {schedule!r}; allowed: 'linear', 'cosine', 'quadratic', 'learned', "
                     "a BetaSchedule, or VP.from_betas(...)")


# --- time grids (shared by the generic solvers and the diffusion samplers) --------------------------------
SPACINGS = ("time", "log_snr", "quadratic", "karras")


def time_grid(process, steps: int, spacing: str = "time", *, t_start: float | None = None,
              t_end: float | None = None, rho: float = 7.0) -> torch.Tensor:
    """A decreasing float64 grid of ``steps + 1`` times from ``t_start`` (default ``t_max``) to ``t_end``
    (default ``t_min``).

    Spacings: ``"time"`` uniform in t; ``"log_snr"`` uniform in lambda (DPM-Solver's ``logSNR``);
    ``"quadratic"`` uniform in sqrt(t) (DPM-Solver's ``time_quadratic``); ``"karras"`` the EDM rule
    ``sigmabar_i = (sigmabar_max^(1/rho) + i/N (sigmabar_min^(1/rho) - sigmabar_max^(1/rho)))^rho`` on the
    scaled noise level ``sigmabar = sigma/alpha = e^(-lambda)`` (Karras et al. 2022, eq. 5), mapped back to t.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; allowed: {', '.join(repr(s) for s in SPACINGS)}")
    t_hi = float(process.t_max if t_start is None else t_start)
    t_lo = float(process.t_min if t_end is None else t_end)
    for name, v in (("t_start", t_hi), ("t_end", t_lo)):
        if not (process.t_domain_min <= v <= process.t_max):
            raise ValueError(f"{name}={v:g} is outside the time domain [{process.t_domain_min:g}, {process.t_max:g}]")
    if not t_hi > t_lo:
        raise ValueError(f"need t_start > t_end, got t_start={t_hi:g}, t_end={t_lo:g}")
    i = torch.arange(steps + 1, dtype=torch.float64) / steps
    if spacing == "time":
        return t_hi + i * (t_lo - t_hi)
    if spacing == "quadratic":
        return (math.sqrt(t_hi) + i * (math.sqrt(t_lo) - math.sqrt(t_hi))) ** 2
    lam_hi = float(process.log_snr(torch.tensor(t_hi, dtype=torch.float64)).detach())  # detach: a learned
    lam_lo = float(process.log_snr(torch.tensor(t_lo, dtype=torch.float64)).detach())  # schedule carries a graph
    if not math.isfinite(lam_lo):
        raise ValueError(f"spacing {spacing!r} needs a finite log-SNR at t_end={t_lo:g} (sigma > 0 there)")
    if spacing == "log_snr":
        lam = lam_hi + i * (lam_lo - lam_hi)
    else:
        if rho <= 0:
            raise ValueError(f"rho must be > 0, got {rho}")
        s_hi, s_lo = math.exp(-lam_hi), math.exp(-lam_lo)
        sig = (s_hi ** (1 / rho) + i * (s_lo ** (1 / rho) - s_hi ** (1 / rho))) ** rho
        lam = -torch.log(sig)
    t = process.t_from_log_snr(lam).detach()  # a grid is data, not a function of a learned schedule
    t[0], t[-1] = t_hi, t_lo  # exact end points (the inverse map rounds)
    return t
