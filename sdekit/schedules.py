"""Noise schedules of variance-preserving processes, as ``log alpha(t)`` with its derivative and inverse.

A VP process is fixed by ``log alpha(t)``: ``sigma² = 1 - alpha²``, ``f(t) = d log alpha / dt`` and
``beta(t) = -2 f(t)``. Each schedule here gives ``log_alpha``, ``dlog_alpha`` and ``t_from_log_alpha`` in
closed form, in the dtype of ``t`` (pass float64 times for full precision).

- `LinearSchedule`: ``beta(t) = beta_min + t (beta_max - beta_min)`` (Song et al. 2021, score_sde).
- `CosineSchedule`: ``alpha(t) = f(t)/f(0)``, ``f(t) = cos(pi/2 (t + s)/(1 + s))`` (Nichol &
  Dhariwal 2021), clipped at ``t_max`` < 1 so the log-SNR stays finite.
- `DiscreteSchedule`: a DDPM schedule of ``N`` steps made continuous as in DPM-Solver (Lu et al.
  2022): ``t_i = (i + 1)/N`` and ``log alpha`` piecewise linear in ``t`` through the knots
  ``(0, 0), (1/N, ½ log ᾱ_0), …, (1, ½ log ᾱ_{N-1})``; ``index = N t - 1`` (fractional allowed).
"""

from __future__ import annotations

import math
import numbers

import torch

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


def get_schedule(schedule, **kwargs) -> BetaSchedule:
    """A `BetaSchedule` from a name (``"linear"``, ``"cosine"``) and its options, or a schedule object itself.

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
    raise ValueError(
        f"unknown schedule {schedule!r}; allowed: 'linear', 'cosine', a BetaSchedule, or VP.from_betas(...)"
    )


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
    lam_hi = float(process.log_snr(torch.tensor(t_hi, dtype=torch.float64)))
    lam_lo = float(process.log_snr(torch.tensor(t_lo, dtype=torch.float64)))
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
    t = process.t_from_log_snr(lam)
    t[0], t[-1] = t_hi, t_lo  # exact end points (the inverse map rounds)
    return t
