"""Diffusion processes with closed-form marginals ``q(x_t | x_0) = N(alpha(t) x_0, sigma(t)² I)``.

Every process is an additive-noise [`SDE`][sdekit.sde.SDE] ``dx = f(t) x dt + g(t) dW`` with
``f = d log alpha/dt`` and ``g² = d sigma²/dt - 2 f sigma²`` (Song et al. 2021, "Score-Based Generative
Modeling through SDEs", eqs. 11 and 29). Conventions (``shared/CONVENTIONS.md``): ``t`` runs from data
(0) to noise (``t_max``); the half log-SNR ``lambda(t) = log alpha - log sigma`` is strictly decreasing.

- `VP`: ``alpha² + sigma² = 1``; linear, cosine, quadratic, discrete (DDPM) or learned schedule.
- `SubVP`: ``alpha`` as VP, ``sigma = 1 - alpha²``.
- `VE`: ``alpha = 1``, ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``.
- `EDM`: ``alpha = 1``, ``sigma(t) = t`` (Karras et al. 2022).

Time arguments may be Python numbers (computed in float64), 0-d tensors or per-sample ``(B,)`` tensors;
results keep the tensor's dtype. Times outside ``[t_domain_min, t_max]`` and log-SNR values outside
``[lambda(t_max), lambda(t_domain_min)]`` raise a ValueError (checked for CPU tensors and numbers, with a
rounding slack of the input's dtype; CUDA inputs are not checked so that sampling never synchronises).
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from ._utils import as_time, bcast, check_positive
from .brownian import indexed_normal, seed_from
from .schedules import (
    BetaSchedule,
    CosineSchedule,
    DiscreteSchedule,
    LearnedSchedule,
    LinearSchedule,
    QuadraticSchedule,
    _check_range,
    get_schedule,
)
from .sde import SDE


class DiffusionProcess(SDE):
    """Base class: subclasses define ``log_alpha``, ``log_sigma``, ``f``, ``g2`` and ``t_from_log_snr``."""

    noise_type = "additive"
    brownian_size = None
    t_min: float  # default end of sampling (sigma > 0 there)
    t_max: float  # noise end; the prior lives here
    t_domain_min: float = 0.0  # smallest valid time

    def __init__(self):  # noqa: D401 - the process is its own drift/diffusion
        self._drift = None
        self._diffusion = None
        self._diffusion_jvp = None

    # --- argument checks ----------------------------------------------------------------------------
    def _t(self, t, name: str = "t") -> torch.Tensor:
        t = as_time(t)
        if t.device.type == "cpu":
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{name} contains NaN/Inf")
            lo, hi = self.t_domain_min, self.t_max
            _check_range(t, name, lo, hi, f"the time domain [{lo:g}, {hi:g}] of {self!r}")
        return t

    def _log_snr_arg(self, log_snr) -> torch.Tensor:
        """``log_snr`` as a tensor, checked (CPU tensors and numbers) against ``[lambda(t_max), lambda(t_domain_min)]``;
        the upper end is +inf where ``sigma(t_domain_min) = 0``."""
        if isinstance(log_snr, bool) or not isinstance(log_snr, (numbers.Real, torch.Tensor)):
            raise TypeError(f"log_snr must be a float or a torch.Tensor, got {type(log_snr).__name__}")
        lam = as_time(log_snr)
        if lam.device.type == "cpu":
            ends = (self.t_max, self.t_domain_min)
            cached = self.__dict__.get("_log_snr_range")
            if cached is None or cached[0] != ends:  # samplers invert once per step: compute the range once
                # detach: a learned schedule's values carry a graph
                cached = (ends, *(float(self.log_snr(torch.tensor(t, dtype=torch.float64)).detach()) for t in ends))
                self._log_snr_range = cached
            _, lo, hi = cached
            where = f"the log-SNR range [lambda(t_max), lambda(t_domain_min)] = [{lo:.6g}, {hi:.6g}] of {self!r}"
            _check_range(lam, "log_snr", lo, hi, where)
        return lam

    def _clamp_t(self, t: torch.Tensor) -> torch.Tensor:
        """Clamp an inverse-map result into the time domain (removes the rounding slack of the checks)."""
        return t.clamp(self.t_domain_min, self.t_max)

    # --- schedule ----------------------------------------------------------------------------------
    def log_alpha(self, t) -> torch.Tensor:
        """``log alpha(t)``, the log of the signal scale of the marginal."""
        raise NotImplementedError

    def log_sigma(self, t) -> torch.Tensor:
        """``log sigma(t)``, the log of the noise scale of the marginal."""
        raise NotImplementedError

    def alpha(self, t) -> torch.Tensor:
        """Signal scale ``alpha(t)`` of ``x_t = alpha x_0 + sigma eps``."""
        return torch.exp(self.log_alpha(t))

    def sigma(self, t) -> torch.Tensor:
        """Noise scale ``sigma(t)`` of ``x_t = alpha x_0 + sigma eps``."""
        return torch.exp(self.log_sigma(t))

    def log_snr(self, t) -> torch.Tensor:
        """Half log signal-to-noise ratio ``lambda(t) = log alpha(t) - log sigma(t)`` (DPM-Solver's lambda)."""
        return self.log_alpha(t) - self.log_sigma(t)

    def t_from_log_snr(self, log_snr) -> torch.Tensor:
        """Inverse of `log_snr`: the time in ``[t_domain_min, t_max]`` with ``lambda(t) = log_snr``."""
        raise NotImplementedError

    def f(self, t) -> torch.Tensor:
        """Drift coefficient ``f(t) = d log alpha/dt`` (the drift is ``f(t) x``)."""
        raise NotImplementedError

    def g2(self, t) -> torch.Tensor:
        """Squared diffusion ``g(t)² = d sigma²/dt - 2 f(t) sigma(t)²``."""
        raise NotImplementedError

    def g(self, t) -> torch.Tensor:
        """Diffusion coefficient ``g(t) = sqrt(g2(t))`` of the forward SDE."""
        return torch.sqrt(self.g2(t))

    # --- the SDE interface ---------------------------------------------------------------------------
    def drift(self, t, x: torch.Tensor) -> torch.Tensor:
        return bcast(self.f(t), x) * x

    def diffusion(self, t, x: torch.Tensor | None = None) -> torch.Tensor:
        g = self.g(t)
        return bcast(g, x) if x is not None else g

    # --- marginals and prior -------------------------------------------------------------------------
    def marginal_sample(self, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        """``x_t = alpha(t) x0 + sigma(t) noise`` (``noise`` standard normal of ``x0``'s shape)."""
        if noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} must equal x0 shape {tuple(x0.shape)}")
        t = self._t(t)
        return bcast(self.alpha(t), x0) * x0 + bcast(self.sigma(t), x0) * noise

    @property
    def prior_std(self) -> float:
        """Standard deviation of the prior ``N(0, prior_std² I)`` used at ``t_max``."""
        raise NotImplementedError

    def prior_sample(self, shape, *, generator: torch.Generator | None = None, dtype=torch.float32, device=None,
                     sample_offset: int | None = None):
        """A draw ``x_T ~ N(0, prior_std² I)`` of ``shape`` from ``generator``.

        With ``sample_offset=a`` (the global index of the first sample; ``shape[0]`` is the batch) each row is
        drawn from its own global index (one seed is drawn from ``generator``, then
        [`indexed_normal`][sdekit.brownian.indexed_normal]): the draw of ``b - a`` rows at offset ``a`` is rows
        ``a..b`` of the draw of ``n`` rows at offset 0, bit for bit, for a generator in the same state. This
        is how each process of a sharded run draws its part of ``x_T`` (`sdekit.distributed`). Without it (the
        default) the draw is one ``torch.randn`` of ``shape``, which is a different draw.
        """
        if sample_offset is not None:
            if generator is None:
                raise ValueError("prior_sample(sample_offset=...) needs a generator, seeded the same in every process")
            z = indexed_normal(tuple(shape), seed_from(generator), sample_offset, dtype=dtype,
                               device=device if device is not None else generator.device)
            return self.prior_std * z
        z = torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)
        return self.prior_std * z

    def prior_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample log-density of ``x`` under the prior ``N(0, prior_std² I)`` (sum over non-batch dims)."""
        d = x[0].numel()
        s = self.prior_std
        sq = (x.reshape(x.shape[0], -1) ** 2).sum(-1)
        return -0.5 * sq / s**2 - d * (math.log(s) + 0.5 * math.log(2 * math.pi))

    def t_from_index(self, i):
        """Time of a (fractional) DDPM index, ``t = (i + 1)/N``; only discrete schedules have it."""
        raise TypeError(f"{self!r} has no discrete schedule: index maps exist only for "
                        "VP.from_betas / VP.from_alphas_cumprod")

    def index_from_t(self, t):
        """DDPM index of a time, ``i = N t - 1`` (fractional); only discrete schedules have it."""
        raise TypeError(f"{self!r} has no discrete schedule: index maps exist only for "
                        "VP.from_betas / VP.from_alphas_cumprod")


class VP(DiffusionProcess):
    """Variance-preserving process (DDPM; Song et al. 2021): ``alpha² + sigma² = 1``.

    Args:
        schedule: ``"linear"`` (``beta_min``, ``beta_max``; score_sde defaults 0.1 and 20), ``"cosine"``
            (``s``, ``t_max``), ``"quadratic"`` (``sqrt(beta)`` linear in ``t``; ``beta_min``, ``beta_max``,
            defaults 0.1 and 20: [`QuadraticSchedule`][sdekit.schedules.QuadraticSchedule]), ``"learned"``
            (``knots``, ``log_snr_max``, ``log_snr_min``, ``interpolation``:
            [`LearnedSchedule`][sdekit.schedules.LearnedSchedule]), or a
            [`BetaSchedule`][sdekit.schedules.BetaSchedule] object, e.g. ``VP(LearnedSchedule(...))``: the process
            then uses that module's parameters, so a loss through ``alpha(t)``, ``sigma(t)``... trains it. Use
            `from_betas` / `from_alphas_cumprod` for a discrete DDPM schedule.
        schedule_kwargs: the schedule's parameters; ``t_min``, the default end of sampling (1e-3 as in
            DPM-Solver for continuous schedules; 0 for the learned one, whose ``sigma(0) > 0``), is one of them.
    """

    def __init__(self, schedule: str | BetaSchedule = "linear", **schedule_kwargs: float):
        super().__init__()
        self.schedule: BetaSchedule = get_schedule(schedule, **schedule_kwargs)
        self.t_min, self.t_max = self.schedule.t_min, self.schedule.t_max

    @classmethod
    def from_betas(cls, betas) -> VP:
        """VP process of a discrete DDPM schedule ``beta_0..beta_{N-1}`` (continuous via DPM-Solver's map)."""
        return cls(DiscreteSchedule.from_betas(betas))

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod) -> VP:
        return cls(DiscreteSchedule(alphas_cumprod))

    @property
    def is_discrete(self) -> bool:
        """Whether the schedule is a discrete DDPM one (`VP.from_betas` / `VP.from_alphas_cumprod`)."""
        return isinstance(self.schedule, DiscreteSchedule)

    def t_from_index(self, i):
        if not self.is_discrete:
            return super().t_from_index(i)
        return self.schedule.t_from_index(i)

    def index_from_t(self, t):
        if not self.is_discrete:
            return super().index_from_t(t)
        return self.schedule.index_from_t(self._t(t))

    def log_alpha(self, t):
        return self.schedule.log_alpha(self._t(t))

    def log_sigma(self, t):
        return 0.5 * torch.log(-torch.expm1(2 * self.log_alpha(t)))

    def sigma(self, t):
        return torch.sqrt(-torch.expm1(2 * self.log_alpha(t)))

    def log_snr(self, t):
        la = self.log_alpha(t)
        return la - 0.5 * torch.log(-torch.expm1(2 * la))

    def t_from_log_snr(self, log_snr):
        lam = self._log_snr_arg(log_snr)
        # alpha² = sigmoid(2 lambda)  =>  log alpha = -½ softplus(-2 lambda)
        return self._clamp_t(self.schedule.t_from_log_alpha(-0.5 * F.softplus(-2 * lam)))

    def f(self, t):
        return self.schedule.dlog_alpha(self._t(t))

    def g2(self, t):
        return -2 * self.f(t)

    @property
    def prior_std(self) -> float:
        return 1.0

    def __repr__(self):
        return f"VP({self.schedule!r})"


class SubVP(VP):
    """Sub-VP process (Song et al. 2021): ``alpha`` as VP, ``sigma(t) = 1 - alpha(t)²``.

    ``g² = beta (1 - alpha⁴)``: the diffusion of score_sde's sub-VP SDE.
    """

    def log_sigma(self, t):
        return torch.log(-torch.expm1(2 * self.log_alpha(t)))

    def sigma(self, t):
        return -torch.expm1(2 * self.log_alpha(t))

    def log_snr(self, t):
        return self.log_alpha(t) - self.log_sigma(t)

    def t_from_log_snr(self, log_snr):
        # alpha / (1 - alpha²) = e^lambda  =>  alpha² + w alpha - 1 = 0 with w = e^-lambda
        #   alpha = 2 / (w + sqrt(w² + 4))   (the positive root, cancellation-free; alpha = 1 at lambda = +inf)
        lam = self._log_snr_arg(log_snr)
        w = torch.exp(-lam)
        alpha = 2 / (w + torch.sqrt(w * w + 4))
        return self._clamp_t(self.schedule.t_from_log_alpha(torch.log(alpha)))

    def g2(self, t):
        f = self.f(t)
        return -2 * f * (-torch.expm1(4 * self.log_alpha(t)))

    def __repr__(self):
        return f"SubVP({self.schedule!r})"


class VE(DiffusionProcess):
    """Variance-exploding process (Song & Ermon 2019; Song et al. 2021): ``alpha = 1``,
    ``sigma(t) = sigma_min (sigma_max/sigma_min)^t`` on ``[0, 1]``, ``g² = 2 sigma² log(sigma_max/sigma_min)``.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, t_min: float = 0.0):
        super().__init__()
        check_positive(sigma_min, "sigma_min")
        check_positive(sigma_max, "sigma_max")
        if not sigma_min < sigma_max:
            raise ValueError(f"sigma_min must be < sigma_max, got {sigma_min} and {sigma_max}")
        if isinstance(t_min, bool) or not isinstance(t_min, numbers.Real) or not 0 <= t_min < 1:
            raise ValueError(f"t_min must be a number in [0, t_max) = [0, 1) (sigma > 0 at t = 0), got {t_min!r}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)
        self.t_min, self.t_max = float(t_min), 1.0

    def log_alpha(self, t):
        return torch.zeros_like(self._t(t))

    def log_sigma(self, t):
        return math.log(self.sigma_min) + self._t(t) * self._log_ratio

    def t_from_log_snr(self, log_snr):
        return self._clamp_t((-self._log_snr_arg(log_snr) - math.log(self.sigma_min)) / self._log_ratio)

    def f(self, t):
        return torch.zeros_like(self._t(t))

    def g2(self, t):
        return 2 * self._log_ratio * torch.exp(2 * self.log_sigma(t))

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def __repr__(self):
        return f"VE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"


class EDM(DiffusionProcess):
    """The EDM process of Karras et al. (2022): ``alpha = 1``, ``sigma(t) = t``, ``g² = 2t``.

    ``t`` (= sigma) lives in ``[0, sigma_max]``; sampling ends at ``sigma_min`` (default 0.002).
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5):
        super().__init__()
        check_positive(sigma_min, "sigma_min")
        check_positive(sigma_max, "sigma_max")
        check_positive(sigma_data, "sigma_data")
        if not sigma_min < sigma_max:
            raise ValueError(f"sigma_min must be < sigma_max, got {sigma_min} and {sigma_max}")
        self.sigma_min, self.sigma_max, self.sigma_data = float(sigma_min), float(sigma_max), float(sigma_data)
        self.t_min, self.t_max = self.sigma_min, self.sigma_max

    def log_alpha(self, t):
        return torch.zeros_like(self._t(t))

    def log_sigma(self, t):
        return torch.log(self._t(t))

    def sigma(self, t):
        return self._t(t).clone()

    def t_from_log_snr(self, log_snr):
        return self._clamp_t(torch.exp(-self._log_snr_arg(log_snr)))

    def f(self, t):
        return torch.zeros_like(self._t(t))

    def g2(self, t):
        return 2 * self._t(t)

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def __repr__(self):
        return f"EDM(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"


# --- (de)serialisation: a JSON-able description of a process --------------------------------------------
def process_spec(process: DiffusionProcess) -> dict:
    """A JSON-able description of ``process`` that `process_from_spec` turns back into an equal one.

    VP/SubVP: ``{"type": "VP", "schedule": "linear", "beta_min", "beta_max", "t_min"}``, ``"quadratic"`` with
    the same keys, ``"cosine"`` with ``s``, ``t_max``, ``t_min``, ``"discrete"`` with the ``alphas_cumprod`` list,
    or ``"learned"`` with ``knots``, ``log_snr`` (the current knot values), ``interpolation``, ``t_min``; VE:
    ``sigma_min``, ``sigma_max``, ``t_min``; EDM: ``sigma_min``, ``sigma_max``, ``sigma_data``.
    """
    if isinstance(process, VP):  # SubVP too
        kind = "SubVP" if isinstance(process, SubVP) else "VP"
        s = process.schedule
        if isinstance(s, LinearSchedule):
            return {"type": kind, "schedule": "linear", "beta_min": s.beta_min, "beta_max": s.beta_max,
                    "t_min": s.t_min}
        if isinstance(s, QuadraticSchedule):
            return {"type": kind, "schedule": "quadratic", "beta_min": s.beta_min, "beta_max": s.beta_max,
                    "t_min": s.t_min}
        if isinstance(s, LearnedSchedule):
            return {"type": kind, "schedule": "learned", "knots": s.knots.tolist(),
                    "log_snr": s.log_snr_knots.detach().tolist(), "interpolation": s.interpolation, "t_min": s.t_min}
        if isinstance(s, CosineSchedule):
            return {"type": kind, "schedule": "cosine", "s": s.s, "t_max": s.t_max, "t_min": s.t_min}
        if isinstance(s, DiscreteSchedule):
            return {"type": kind, "schedule": "discrete", "alphas_cumprod": s.alphas_cumprod.tolist()}
        raise ValueError(f"cannot describe the schedule {s!r} as JSON")
    if isinstance(process, VE):
        return {"type": "VE", "sigma_min": process.sigma_min, "sigma_max": process.sigma_max, "t_min": process.t_min}
    if isinstance(process, EDM):
        return {"type": "EDM", "sigma_min": process.sigma_min, "sigma_max": process.sigma_max,
                "sigma_data": process.sigma_data}
    raise ValueError(f"cannot describe the process {process!r} as JSON")


def process_from_spec(spec: dict) -> DiffusionProcess:
    """Inverse of `process_spec`. A discrete VP also accepts ``"betas"`` (a list) or
    ``"ddpm_linear": {"num_steps", "beta_start", "beta_end"}`` instead of ``alphas_cumprod``."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"a process spec is a dict with a 'type', got {spec!r}")
    kind = spec["type"]
    rest = {k: v for k, v in spec.items() if k not in ("type", "schedule")}
    if kind in ("VP", "SubVP"):
        cls = SubVP if kind == "SubVP" else VP
        schedule = spec.get("schedule", "linear")
        if schedule == "discrete":
            if "alphas_cumprod" in rest:
                return cls(DiscreteSchedule(rest["alphas_cumprod"]))
            if "betas" in rest:
                return cls(DiscreteSchedule.from_betas(rest["betas"]))
            if "ddpm_linear" in rest:
                return cls(DiscreteSchedule.linear_ddpm(**rest["ddpm_linear"]))
            raise ValueError("a discrete VP spec needs 'alphas_cumprod', 'betas' or 'ddpm_linear'")
        if schedule == "learned":
            return cls(LearnedSchedule.from_log_snr(**rest))
        if schedule not in ("linear", "cosine", "quadratic"):
            raise ValueError(f"unknown VP schedule {schedule!r} in process spec; allowed: linear, cosine, quadratic, "
                             "discrete, learned")
        return cls(schedule, **rest)
    if kind == "VE":
        return VE(**rest)
    if kind == "EDM":
        return EDM(**rest)
    raise ValueError(f"unknown process type {kind!r} in process spec; allowed: VP, SubVP, VE, EDM")
