"""Diffusion samplers: DDPM, DDIM, DPM-Solver, DPM-Solver++, UniPC, EDM Heun, predictor–corrector.

Each sampler is a :class:`~sdekit.solvers.base.Solver` stepping the probability-flow ODE (deterministic
samplers) or the reverse SDE (stochastic samplers) of ``problem = (process, model)`` on a decreasing time
grid; it calls the model through its exact parameterization conversions and works for every process.
Notation of Lu et al. (2022): ``alpha``, ``sigma``, ``lambda_ = log(alpha/sigma)``, ``h = lambda_1 - lambda_0
> 0`` toward data; ``D`` the data (x0) prediction, ``eps`` the noise prediction. A step's Gaussian ``z`` is the
Brownian increment over the step divided by ``sqrt(|t1 - t0|)``.

Multistep history lives in the solve's state (never on the sampler object), so every solve starts fresh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .base import Solver, register


def _t(t: float) -> torch.Tensor:
    return torch.tensor(t, dtype=torch.float64)


@dataclass
class SamplerState:
    """What a diffusion sampler carries from step to step during one solve (nothing is stored on the sampler).

    Attributes:
        n: number of steps of the grid (None when the grid is not known in advance).
        k: index of the current step.
        nfe: model evaluations so far.
        hist: multistep history ``[(lambda_i, D_i), ...]``, newest last.
        coef: ``t -> (alpha, sigma, lambda)`` as Python floats, computed once per grid time.
        d_next: a model output at the next point already computed by this step (UniPC's corrector), or None.
    """

    n: int | None = None
    k: int = 0
    nfe: int = 0
    hist: list = field(default_factory=list)
    coef: dict = field(default_factory=dict)
    d_next: torch.Tensor | None = None


class DiffusionSampler(Solver):
    """Base class: a sampler that needs ``problem.model`` and ``problem.process`` (a PF-ODE or reverse SDE).

    Subclasses implement ``_step(problem, t0, t1, x, z, st)`` with ``st`` the per-solve :class:`SamplerState`.
    """

    wants_grid = True
    noise_types: tuple[str, ...] = ()
    prediction = "x0"

    def check(self, problem) -> None:
        if not (hasattr(problem, "model") and hasattr(problem, "process")):
            raise ValueError(
                f"sampler {self.name!r} needs a diffusion problem (probability_flow(process, model) or "
                "reverse_sde(process, model)); use sdekit.sample(model, x_T, solver=...)"
            )
        nt = getattr(problem, "noise_type", None)
        if self.noise_types and nt is None:
            raise ValueError(f"sampler {self.name!r} is stochastic: solve the reverse SDE (sdekit.sample does)")
        if not self.noise_types and nt is not None:
            raise ValueError(f"sampler {self.name!r} is deterministic: solve the probability-flow ODE")

    def init(self, problem, t0, x0, grid=None):
        return SamplerState(n=(len(grid) - 1) if grid is not None else None)

    def count_nfe(self, state, n_steps):
        return state.nfe

    # --- shared pieces -----------------------------------------------------------------------------------
    @staticmethod
    def coef(problem, st, t: float):
        """(alpha, sigma, lambda_) at t as Python floats (cached per solve; CPU only, no GPU sync)."""
        c = st.coef.get(t)
        if c is None:
            p, tt = problem.process, _t(t)
            c = (float(p.alpha(tt)), float(p.sigma(tt)), float(p.log_snr(tt)))
            st.coef[t] = c
        return c

    def data_step(self, problem, st, x, t0: float, t1: float, keep: int):
        """Shared start of a data-prediction multistep step: the coefficients at both ends, D(x, t0) and the
        history (lambda, D) with the newest entry appended, trimmed to ``keep`` entries."""
        _, s0, l0 = self.coef(problem, st, t0)
        a1, s1, l1 = self.coef(problem, st, t1)
        d0 = self.model_out(problem, st, x, t0, "x0")
        hist = st.hist
        hist.append((l0, d0))
        del hist[:-keep]
        return s0, l0, a1, s1, l1, d0, hist

    @staticmethod
    def t_of_lambda(problem, lam: float) -> float:
        return float(problem.process.t_from_log_snr(_t(lam)))

    @staticmethod
    def model_out(problem, st, x, t: float, kind: str):
        """One model evaluation at ``t`` (errors get their step from the solve loop, which runs every step)."""
        st.nfe += 1
        # float64 on the state's device (a fill, no copy): the model's schedule coefficients keep full
        # precision; a ScoreModel hands its network t in x's dtype
        t_dev = torch.full((), t, dtype=torch.float64, device=x.device)
        return problem.model.predict(x, t_dev, kind, **getattr(problem, "cond", {}))

    #: route the step's final linear combination through sdekit.kernels.combine: False (plain PyTorch ops),
    #: True (the Triton kernel; on CPU tensors only under TRITON_INTERPRET=1) or "auto" (Triton on CUDA
    #: tensors when available). Set per call with ``sample(..., fused=...)``.
    fused: bool | str = False

    def lin(self, coeffs, tensors):
        """``sum_i c_i y_i`` in one pass (fused) or as PyTorch ops; ``coeffs`` are Python floats."""
        if self.fused is True or (self.fused == "auto" and tensors[0].is_cuda):
            from ..kernels import combine

            return combine(list(coeffs), list(tensors), backend="triton" if self.fused is True else "auto")
        out = tensors[0] * coeffs[0]
        for c, y in zip(coeffs[1:], tensors[1:]):
            out = out.add(y, alpha=c)
        return out

    def step(self, problem, t0, t1, x0, noise, state):
        a1, s1, _ = self.coef(problem, state, t1)
        if s1 == 0.0:
            # a step onto sigma = 0 (lambda = inf): every first-order update here (DDIM, DPM-Solver(++)-1, the
            # Euler step of EDM) lands exactly on alpha1 · D(x, t0); higher-order terms would divide by h = inf
            d = state.d_next
            d = d if d is not None else self.model_out(problem, state, x0, t0, "x0")
            state.k += 1
            return d * a1, state, None
        z = None
        if noise is not None:
            z = noise / math.sqrt(abs(t1 - t0))
        x1 = self._step(problem, t0, t1, x0, z, state)
        state.k += 1
        return x1, state, None

    def _step(self, problem, t0, t1, x, z, st):
        raise NotImplementedError

    def __repr__(self):
        opts = {k: v for k, v in vars(self).items() if not k.startswith("_") and k != "noise_types"}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in opts.items())})"


def _lower_order(st, order: int, lower_order_final: bool) -> int:
    """Warm-up (first steps) and, for short runs (< 10 steps, as in DPM-Solver's reference), final steps
    at lower order."""
    k, n = st.k, st.n
    order = min(order, k + 1)
    if lower_order_final and n is not None and n < 10:
        order = min(order, n - k)
    return max(order, 1)


# --- DDPM, DDIM --------------------------------------------------------------------------------------------
@register
class DDPM(DiffusionSampler):
    """Ancestral sampling of Ho et al. (2020), Algorithm 2, for any step t0 → t1: the Gaussian posterior
    ``q(x_t1 | x_t0, x0 = D)`` with mean ``alpha1 s01²/sigma0² · D + a sigma1²/sigma0² · x`` where
    ``a = alpha0/alpha1`` and ``s01² = sigma0² - a² sigma1²``; variance ``s01² sigma1²/sigma0²``
    (``variance="beta_tilde"``, the posterior's) or ``s01²`` (``"beta"``, the forward step's). Weak order 1;
    one evaluation per step.
    """

    name = "ddpm"
    order = 1.0
    weak_order = 1.0
    noise_types = ("additive",)
    evals_per_step = 1

    def __init__(self, variance: str = "beta_tilde"):
        if variance not in ("beta_tilde", "beta"):
            raise ValueError(f"unknown variance {variance!r}; allowed: 'beta_tilde', 'beta'")
        self.variance = variance

    def _step(self, problem, t0, t1, x, z, st):
        a0, s0, _ = self.coef(problem, st, t0)
        a1, s1, _ = self.coef(problem, st, t1)
        d = self.model_out(problem, st, x, t0, "x0")
        a = a0 / a1
        s01 = s0 * s0 - a * a * s1 * s1
        mean = d * (a1 * s01 / s0**2) + x * (a * s1 * s1 / s0**2)
        var = s01 * s1 * s1 / s0**2 if self.variance == "beta_tilde" else s01
        return mean + math.sqrt(max(var, 0.0)) * z


@register
class DDIM(DiffusionSampler):
    """DDIM (Song, Meng & Ermon 2021, eq. 12) on any process:
    ``x1 = alpha1 D + sqrt(sigma1² - s²) eps + s z`` with ``s = eta sigma1 sqrt(1 - e^{-2h})`` (the paper's
    sigma_t(eta) written with the log-SNR step). ``eta = 0``: deterministic, order 1, identical to
    DPM-Solver-1 and DPM-Solver++(1); ``eta = 1`` with fresh noise is DDPM's ancestral step (beta-tilde).
    """

    name = "ddim"
    order = 1.0
    weak_order = 1.0
    evals_per_step = 1

    def __init__(self, eta: float = 0.0):
        if not (isinstance(eta, (int, float)) and math.isfinite(eta) and eta >= 0):
            raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
        self.eta = float(eta)
        self.noise_types = ("additive",) if self.eta > 0 else ()

    def _step(self, problem, t0, t1, x, z, st):
        a0, s0, l0 = self.coef(problem, st, t0)
        a1, s1, l1 = self.coef(problem, st, t1)
        d = self.model_out(problem, st, x, t0, "x0")
        # x1 = alpha1 D + c eps + s z with eps = (x - alpha0 D)/sigma0, as one combination of (x, D, z)
        s = 0.0 if self.eta == 0 else min(self.eta * s1 * math.sqrt(-math.expm1(-2 * (l1 - l0))), s1)
        c = math.sqrt(s1 * s1 - s * s)
        if s == 0.0:
            return self.lin((c / s0, a1 - c * a0 / s0), (x, d))
        return self.lin((c / s0, a1 - c * a0 / s0, s), (x, d, z))


# --- DPM-Solver (noise prediction, singlestep) ---------------------------------------------------------
@register
class DPMSolver1(DiffusionSampler):
    """DPM-Solver-1 (Lu et al. 2022, eq. 3.7): ``x1 = (alpha1/alpha0) x - sigma1 (e^h - 1) eps``. Order 1."""

    name = "dpm_solver_1"
    order = 1.0
    evals_per_step = 1

    def _step(self, problem, t0, t1, x, z, st):
        a0, _, l0 = self.coef(problem, st, t0)
        a1, s1, l1 = self.coef(problem, st, t1)
        eps = self.model_out(problem, st, x, t0, "eps")
        return self.lin((a1 / a0, -s1 * math.expm1(l1 - l0)), (x, eps))


@register
class DPMSolver2(DiffusionSampler):
    """DPM-Solver-2 (Lu et al. 2022, Algorithm 1, ``r1 = 1/2``): singlestep, order 2, 2 evaluations per step."""

    name = "dpm_solver_2"
    order = 2.0
    evals_per_step = 2

    def __init__(self, r1: float = 0.5):
        if not 0 < r1 < 1:
            raise ValueError(f"r1 must lie in (0, 1), got {r1}")
        self.r1 = float(r1)

    def _step(self, problem, t0, t1, x, z, st):
        a0, _, l0 = self.coef(problem, st, t0)
        a1, s1, l1 = self.coef(problem, st, t1)
        h, r = l1 - l0, self.r1
        ts = self.t_of_lambda(problem, l0 + r * h)
        as_, ss, _ = self.coef(problem, st, ts)
        e0 = self.model_out(problem, st, x, t0, "eps")
        u = x * (as_ / a0) - e0 * (ss * math.expm1(r * h))
        e1 = self.model_out(problem, st, u, ts, "eps")
        return x * (a1 / a0) - e0 * (s1 * math.expm1(h)) - (e1 - e0) * (s1 / (2 * r) * math.expm1(h))


@register
class DPMSolver3(DiffusionSampler):
    """DPM-Solver-3 (Lu et al. 2022, Algorithm 2, ``r1 = 1/3``, ``r2 = 2/3``): singlestep, order 3,
    3 evaluations per step."""

    name = "dpm_solver_3"
    order = 3.0
    evals_per_step = 3

    def _step(self, problem, t0, t1, x, z, st):
        r1, r2 = 1 / 3, 2 / 3
        a0, _, l0 = self.coef(problem, st, t0)
        a1, s1, l1 = self.coef(problem, st, t1)
        h = l1 - l0
        t_s1, t_s2 = self.t_of_lambda(problem, l0 + r1 * h), self.t_of_lambda(problem, l0 + r2 * h)
        a_s1, s_s1, _ = self.coef(problem, st, t_s1)
        a_s2, s_s2, _ = self.coef(problem, st, t_s2)
        e0 = self.model_out(problem, st, x, t0, "eps")
        u1 = x * (a_s1 / a0) - e0 * (s_s1 * math.expm1(r1 * h))
        d1 = self.model_out(problem, st, u1, t_s1, "eps") - e0
        u2 = (x * (a_s2 / a0) - e0 * (s_s2 * math.expm1(r2 * h))
              - d1 * (s_s2 * r2 / r1 * (math.expm1(r2 * h) / (r2 * h) - 1)))
        d2 = self.model_out(problem, st, u2, t_s2, "eps") - e0
        return x * (a1 / a0) - e0 * (s1 * math.expm1(h)) - d2 * (s1 / r2 * (math.expm1(h) / h - 1))


# --- DPM-Solver++ (data prediction) -------------------------------------------------------------------
@register
class DPMSolverPP2S(DiffusionSampler):
    """DPM-Solver++(2S) (Lu et al. 2022b, Algorithm 1, ``r = 1/2``): singlestep, order 2, 2 evaluations."""

    name = "dpmpp_2s"
    order = 2.0
    evals_per_step = 2

    def _step(self, problem, t0, t1, x, z, st):
        r = 0.5
        _, s0, l0 = self.coef(problem, st, t0)
        a1, s1, l1 = self.coef(problem, st, t1)
        h = l1 - l0
        ts = self.t_of_lambda(problem, l0 + r * h)
        as_, ss, _ = self.coef(problem, st, ts)
        d0 = self.model_out(problem, st, x, t0, "x0")
        u = x * (ss / s0) - d0 * (as_ * math.expm1(-r * h))
        d1 = self.model_out(problem, st, u, ts, "x0")
        return x * (s1 / s0) - d0 * (a1 * math.expm1(-h)) - (d1 - d0) * (a1 / (2 * r) * math.expm1(-h))


class DPMSolverPPMultistep(DiffusionSampler):
    """DPM-Solver++ multistep of order 1–3 (Lu et al. 2022b, Algorithm 2; third order by the Taylor expansion
    of the data prediction in lambda), one evaluation per step.

    ``variant``: ``"taylor"`` (default) uses ``x1 = (sigma1/sigma0) x - alpha1 phi1 D0 + alpha1 phi2 D1
    - 2 alpha1 phi3 D2`` with ``D2 = (D1_0 - D1_1)/(r0 + r1) ≈ h² D''/2``, which is third order (measured: 3.1
    on the analytic GMM). ``"reference"`` reproduces the DPM-Solver reference code and diffusers'
    ``DPMSolverMultistepScheduler``, whose last term is ``- alpha1 phi3 D2``: half the Taylor coefficient, so
    its local error is O(h³) and its global order is 2 (measured: 2.08). Both are identical for 2M.
    Warm-up (``warmup``): ``"lower_order"`` (reference) starts at first order; ``"singlestep"`` takes the first
    step with DPM-Solver++(2S) (one more evaluation). With ``lower_order_final`` runs of fewer than 10 steps
    end at lower order (as in the reference code). Declared ``order`` is the measured global order.
    """

    evals_per_step = 1
    max_order = 2

    def __init__(self, lower_order_final: bool = True, order: int | None = None, warmup: str = "lower_order",
                 variant: str = "taylor"):
        self.lower_order_final = bool(lower_order_final)
        if order is not None:  # e.g. dpmpp_2m with order=1 is DPM-Solver++(1)
            if order not in (1, 2, 3):
                raise ValueError(f"DPM-Solver++ multistep order must be 1, 2 or 3, got {order!r}")
            self.max_order = order
        if warmup not in ("lower_order", "singlestep"):
            raise ValueError(f"unknown warmup {warmup!r}; allowed: 'lower_order', 'singlestep'")
        if variant not in ("taylor", "reference"):
            raise ValueError(f"unknown variant {variant!r}; allowed: 'taylor', 'reference'")
        self.warmup, self.variant = warmup, variant
        self.order = float(self.max_order if (variant == "taylor" or self.max_order <= 2) else 2)

    def _step(self, problem, t0, t1, x, z, st):
        s0, l0, a1, s1, l1, d0, hist = self.data_step(problem, st, x, t0, t1, keep=3)
        order = _lower_order(st, self.max_order, self.lower_order_final)
        h = l1 - l0
        if self.warmup == "singlestep" and st.k == 0 and self.max_order == 3 and order == 1:
            ts = self.t_of_lambda(problem, l0 + 0.5 * h)  # DPM-Solver++(2S) start, r = 1/2
            as_, ss, _ = self.coef(problem, st, ts)
            u = x * (ss / s0) - d0 * (as_ * math.expm1(-0.5 * h))
            d_mid = self.model_out(problem, st, u, ts, "x0")
            return x * (s1 / s0) - d0 * (a1 * math.expm1(-h)) - (d_mid - d0) * (a1 * math.expm1(-h))
        phi1 = math.expm1(-h)
        if order == 1:
            return self.lin((s1 / s0, -a1 * phi1), (x, d0))
        lp1, dp1 = hist[-2]
        r0 = (l0 - lp1) / h
        if order == 2:  # x1 = (s1/s0) x - a1 phi1 D0 - ½ a1 phi1 (D0 - D_-1)/r0
            k0 = -0.5 * a1 * phi1
            return self.lin((s1 / s0, -a1 * phi1 + k0 / r0, -k0 / r0), (x, d0, dp1))
        # third order: D1 = (1 + q) D1_0 - q D1_1, D2 = (D1_0 - D1_1)/(r0 + r1), q = r0/(r0 + r1), with the
        # divided differences D1_0 = (D0 - D_-1)/r0, D1_1 = (D_-1 - D_-2)/r1 expanded into (x, D0, D_-1, D_-2)
        lp2, dp2 = hist[-3]
        r1 = (lp1 - lp2) / h
        phi2 = phi1 / h + 1
        phi3 = phi2 / h - 0.5
        big_a = a1 * phi2
        big_b = (2.0 if self.variant == "taylor" else 1.0) * a1 * phi3
        q = r0 / (r0 + r1)
        k0 = big_a * (1 + q) - big_b / (r0 + r1)
        k1 = -big_a * q + big_b / (r0 + r1)
        return self.lin((s1 / s0, -a1 * phi1 + k0 / r0, -k0 / r0 + k1 / r1, -k1 / r1), (x, d0, dp1, dp2))


@register
class DPMSolverPP2M(DPMSolverPPMultistep):
    __doc__ = "DPM-Solver++(2M): multistep, order 2. " + DPMSolverPPMultistep.__doc__
    name = "dpmpp_2m"
    order = 2.0
    max_order = 2


@register
class DPMSolverPP3M(DPMSolverPPMultistep):
    __doc__ = "DPM-Solver++(3M): multistep, order 3. " + DPMSolverPPMultistep.__doc__
    name = "dpmpp_3m"
    order = 3.0
    max_order = 3


@register
class DPMSolverPP2MSDE(DiffusionSampler):
    """DPM-Solver++(2M) SDE (Lu et al. 2022b, §5; the "midpoint" form used by the reference
    implementations): exact in the linear part of the reverse SDE in data prediction,
    ``x1 = (sigma1/sigma0) e^{-h} x + alpha1 (1 - e^{-2h}) (D0 + ½ D1) + sigma1 sqrt(1 - e^{-2h}) z`` with
    ``D1 = (D0 - D_prev)/r``; the first step is first order. One evaluation per step. Declared weak order 2:
    measured exactly (no Monte-Carlo) on Gaussian data, where the linear part and its noise are integrated
    exactly and the data prediction is extrapolated to second order.
    """

    name = "dpmpp_2m_sde"
    order = 2.0
    weak_order = 2.0
    noise_types = ("additive",)
    evals_per_step = 1

    def __init__(self, lower_order_final: bool = True):
        self.lower_order_final = bool(lower_order_final)

    def _step(self, problem, t0, t1, x, z, st):
        s0, l0, a1, s1, l1, d0, hist = self.data_step(problem, st, x, t0, t1, keep=2)
        h = l1 - l0
        em2h = -math.expm1(-2 * h)  # 1 - e^{-2h}
        cx, cz = s1 / s0 * math.exp(-h), s1 * math.sqrt(em2h)
        if _lower_order(st, 2, self.lower_order_final) >= 2:
            lp, dp = hist[-2]
            k = 0.5 * a1 * em2h / ((l0 - lp) / h)
            return self.lin((cx, a1 * em2h + k, -k, cz), (x, d0, dp, z))
        return self.lin((cx, a1 * em2h, cz), (x, d0, z))


# --- UniPC ----------------------------------------------------------------------------------------------
@register
class UniPC(DiffusionSampler):
    """UniPC (Zhao et al. 2023): the unified predictor UniP-p plus the corrector UniC on data prediction,
    with ``B(h) = h`` (``variant="bh1"``) or ``B(h) = e^h - 1`` (``"bh2"``). The corrector reuses the
    model evaluation at the new point as the next step's history (one evaluation per step); the last step
    is not corrected (it would cost an extra evaluation). Declared order ``min(order + 1, 3)``: UniC raises
    UniP-p's order by one (the paper's Theorem 3.1), and the lower-order warm-up step caps the global order at 3.
    """

    name = "unipc"
    evals_per_step = 1

    def __init__(self, order: int = 2, variant: str = "bh2", lower_order_final: bool = True):
        if order not in (1, 2, 3):
            raise ValueError(f"UniPC order must be 1, 2 or 3, got {order!r}")
        if variant not in ("bh1", "bh2"):
            raise ValueError(f"unknown UniPC variant {variant!r}; allowed: 'bh1', 'bh2'")
        self.unipc_order, self.variant = order, variant
        self.lower_order_final = bool(lower_order_final)
        # UniC raises UniP-p to order p + 1; the first (warm-up) step is UniP-1 + UniC, of local error O(h³),
        # which caps the global order at 3.
        self.order = float(min(order + 1, 3))

    def init(self, problem, t0, x0, grid=None):
        st = super().init(problem, t0, x0, grid)
        st.d_next = None  # model output at the current point, from the last corrector
        return st

    def _coefficients(self, rks, hh):
        """rhos of the predictor (first p-1 entries used) and corrector, from R(h) rho = b(h)."""
        p = len(rks)
        h_phi_1 = math.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        b_h = hh if self.variant == "bh1" else math.expm1(hh)
        fact = 1
        rows, b = [], []
        for i in range(1, p + 1):
            rows.append([rk ** (i - 1) for rk in rks])
            b.append(h_phi_k * fact / b_h)
            fact *= i + 1
            h_phi_k = h_phi_k / hh - 1 / fact
        return torch.tensor(rows, dtype=torch.float64), torch.tensor(b, dtype=torch.float64), h_phi_1, b_h

    def _step(self, problem, t0, t1, x, z, st):
        _, s0, l0 = self.coef(problem, st, t0)
        a1, s1, l1 = self.coef(problem, st, t1)
        d0 = st.d_next if st.d_next is not None else self.model_out(problem, st, x, t0, "x0")
        hist = st.hist
        hist.append((l0, d0))
        del hist[:-3]
        order = _lower_order(st, self.unipc_order, self.lower_order_final)
        h = l1 - l0
        hh = -h  # data prediction
        rks, d1s = [], []
        for i in range(1, order):
            li, di = hist[-(i + 1)]
            rk = (li - l0) / h
            rks.append(rk)
            d1s.append((di - d0) / rk)
        rks.append(1.0)
        r_mat, b, h_phi_1, b_h = self._coefficients(rks, hh)
        x_lin = x * (s1 / s0) - d0 * (a1 * h_phi_1)
        pred = x_lin
        if d1s:
            rhos_p = [0.5] if order == 2 else torch.linalg.solve(r_mat[:-1, :-1], b[:-1]).tolist()
            res = sum(r * d for r, d in zip(rhos_p, d1s))
            pred = x_lin - res * (a1 * b_h)
        last = st.n is not None and st.k == st.n - 1
        if last:
            st.d_next = None
            return pred
        d_t = self.model_out(problem, st, pred, t1, "x0")
        st.d_next = d_t
        rhos_c = [0.5] if order == 1 else torch.linalg.solve(r_mat, b).tolist()
        corr = sum(r * d for r, d in zip(rhos_c[:-1], d1s)) if d1s else 0.0
        return x_lin - (corr + (d_t - d0) * rhos_c[-1]) * (a1 * b_h)


# --- EDM ------------------------------------------------------------------------------------------------
@register
class EDMHeun(DiffusionSampler):
    """Karras et al. (2022), Algorithm 2: Heun's method on ``dxbar/dsigmabar = (xbar - D)/sigmabar`` in the
    scaled variables ``xbar = x/alpha``, ``sigmabar = sigma/alpha = e^{-lambda}``, with optional churn
    (``S_churn``, ``S_min``, ``S_max``, ``S_noise``). Deterministic (``S_churn = 0``): order 2, 2 evaluations
    per step (1 on a step to sigma = 0). With churn it is stochastic.
    """

    name = "edm_heun"
    order = 2.0
    evals_per_step = 2

    def __init__(self, S_churn: float = 0.0, S_min: float = 0.0, S_max: float = math.inf, S_noise: float = 1.0):
        if S_churn < 0 or S_noise < 0 or S_min < 0 or S_max < S_min:
            raise ValueError("need S_churn >= 0, S_noise >= 0 and 0 <= S_min <= S_max")
        self.S_churn, self.S_min, self.S_max, self.S_noise = float(S_churn), float(S_min), float(S_max), float(S_noise)
        self.noise_types = ("additive",) if self.S_churn > 0 else ()

    def _step(self, problem, t0, t1, x, z, st):
        a0, s0, l0 = self.coef(problem, st, t0)
        a1, s1, l1 = self.coef(problem, st, t1)
        sb0, sb1 = s0 / a0, s1 / a1
        xb = x / a0
        t_hat, sb_hat = t0, sb0
        if self.S_churn > 0 and self.S_min <= sb0 <= self.S_max:
            gamma = min(self.S_churn / st.n, math.sqrt(2) - 1)
            lam_hat = -math.log(sb0 * (1 + gamma))
            lam_hat = max(lam_hat, float(problem.process.log_snr(_t(problem.process.t_max))))
            t_hat = self.t_of_lambda(problem, lam_hat)
            a_h, s_h, _ = self.coef(problem, st, t_hat)
            sb_hat = s_h / a_h
            xb = xb + z * (math.sqrt(max(sb_hat**2 - sb0**2, 0.0)) * self.S_noise)
        a_h = self.coef(problem, st, t_hat)[0]
        d_cur = (xb - self.model_out(problem, st, xb * a_h, t_hat, "x0")) / sb_hat
        xb_next = xb + d_cur * (sb1 - sb_hat)
        if sb1 > 0:
            d_new = (xb_next - self.model_out(problem, st, xb_next * a1, t1, "x0")) / sb1
            xb_next = xb + (d_cur + d_new) * (0.5 * (sb1 - sb_hat))
        return xb_next * a1


# --- predictor–corrector ------------------------------------------------------------------------------
@register
class PredictorCorrector(DiffusionSampler):
    """Predictor–corrector sampling (Song et al. 2021, Algorithms 2–3). Predictor: reverse diffusion
    (``x1 = a⁻¹... `` written for any process as ``x1 = x - (a - 1) x + G² score + G z`` with the forward
    step ``x_t0 = a x_t1 + G xi``, ``a = alpha0/alpha1``, ``G² = sigma0² - a² sigma1²``; for VP this is
    score_sde's ReverseDiffusionPredictor) or Euler–Maruyama on the reverse SDE. Corrector:
    ``n_corrector_steps`` Langevin steps at ``t1`` of size ``2 a_i (snr ||z|| / ||score||)²`` (norms averaged
    over the batch; ``a_i = (alpha1/alpha0)²``, i.e. 1 - beta_i for VP, and 1 when alpha is constant).
    Weak order 1; ``1 + n_corrector_steps`` evaluations per step. The corrector's noise comes from a
    generator seeded by the step's own Gaussian, so runs are reproducible from the sampling seed.
    """

    name = "pc"
    order = 1.0
    weak_order = 1.0
    noise_types = ("additive",)

    def __init__(self, predictor: str = "reverse_diffusion", snr: float = 0.16, n_corrector_steps: int = 1):
        if predictor not in ("reverse_diffusion", "euler_maruyama"):
            raise ValueError(f"unknown predictor {predictor!r}; allowed: 'reverse_diffusion', 'euler_maruyama'")
        if not snr > 0:
            raise ValueError(f"snr must be > 0, got {snr}")
        if isinstance(n_corrector_steps, bool) or not isinstance(n_corrector_steps, int) or n_corrector_steps < 0:
            raise ValueError(f"n_corrector_steps must be an int >= 0, got {n_corrector_steps!r}")
        self.predictor, self.snr, self.n_corrector_steps = predictor, float(snr), n_corrector_steps
        self.evals_per_step = 1 + n_corrector_steps

    def _step(self, problem, t0, t1, x, z, st):
        p = problem.process
        a0, s0, _ = self.coef(problem, st, t0)
        a1, s1, _ = self.coef(problem, st, t1)
        score = self.model_out(problem, st, x, t0, "score")
        if self.predictor == "euler_maruyama":
            h, f, g2 = t1 - t0, float(p.f(_t(t0))), float(p.g2(_t(t0)))
            x = x + (x * f - score * g2) * h + z * math.sqrt(abs(h) * g2)
        else:
            a = a0 / a1
            g2 = max(s0 * s0 - a * a * s1 * s1, 0.0)
            x = x - x * (a - 1) + score * g2 + z * math.sqrt(g2)
        if self.n_corrector_steps:
            seed = int(torch.randint(0, 2**62, (1,), generator=_seeded(z, st.k)).item())
            gen = torch.Generator(device=x.device).manual_seed(seed)
            alpha_i = (a1 / a0) ** 2
            for _ in range(self.n_corrector_steps):
                grad = self.model_out(problem, st, x, t1, "score")
                noise = torch.randn(x.shape, generator=gen, dtype=x.dtype, device=x.device)
                g_norm = grad.reshape(grad.shape[0], -1).norm(dim=-1).mean()
                n_norm = noise.reshape(noise.shape[0], -1).norm(dim=-1).mean()
                step = 2 * alpha_i * (self.snr * n_norm / g_norm) ** 2
                x = x + step * grad + torch.sqrt(2 * step) * noise
        return x


def _seeded(z: torch.Tensor, k: int) -> torch.Generator:
    """A CPU generator keyed on the bits of the step's first Gaussian value and the step index."""
    bits = int(z.reshape(-1)[:1].double().cpu().view(torch.int64)) & ((1 << 62) - 1)
    return torch.Generator().manual_seed(bits ^ (k * 0x9E3779B97F4A7C15 & ((1 << 62) - 1)))


@register
class DPMSolverAdaptive(DiffusionSampler):
    """Adaptive DPM-Solver-12 / -23 (Lu et al. 2022, Algorithm 4): steps in lambda, the error between the
    order-``k - 1`` and order-``k`` updates (sharing their model evaluations) measured as
    ``max over samples of RMS((x_high - x_low) / max(atol, rtol · max(|x_low|, |x_prev|)))``; accept when
    ``E <= 1``; ``h <- min(theta h E^{-1/k}, lambda_end - lambda)``. Run through :func:`sdekit.sample`
    (``steps`` is ignored; ``rtol``, ``atol``, ``order`` (2 or 3), ``h_init``, ``theta``, ``max_steps``).
    """

    name = "dpm_solver_adaptive"
    evals_per_step = 2  # per attempt (order 2); 3 for order 3
    adaptive_lambda = True

    def __init__(self, order: int = 3, rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05,
                 theta: float = 0.9, max_steps: int = 10_000):
        if order not in (2, 3):
            raise ValueError(f"adaptive DPM-Solver order must be 2 or 3, got {order!r}")
        if not (rtol >= 0 and atol >= 0 and rtol + atol > 0):
            raise ValueError(f"need rtol >= 0, atol >= 0, not both 0; got rtol={rtol}, atol={atol}")
        self.order = float(order)
        self.adaptive_order, self.rtol, self.atol = order, float(rtol), float(atol)
        self.h_init, self.theta, self.max_steps = float(h_init), float(theta), int(max_steps)
        self.evals_per_step = order

    def _step(self, problem, t0, t1, x, z, st):
        raise ValueError("dpm_solver_adaptive chooses its own steps: run it through sdekit.sample(...)")

    def run(self, problem, x: torch.Tensor, t_start: float, t_end: float):
        st = self.init(problem, t_start, x)
        l_end = self.coef(problem, st, t_end)[2]
        s, h = t_start, self.h_init
        accepted = rejected = 0
        e0 = None
        lower = DPMSolver1() if self.adaptive_order == 2 else None
        while abs(s - t_end) > 1e-5 * max(1.0, abs(t_end)):
            if accepted + rejected >= self.max_steps:
                raise RuntimeError(f"dpm_solver_adaptive exceeded max_steps={self.max_steps} at t = {s:.6g}")
            a0, _, l0 = self.coef(problem, st, s)
            h = min(h, l_end - l0)
            t = t_end if h >= l_end - l0 - 1e-12 else self.t_of_lambda(problem, l0 + h)
            if e0 is None:
                e0 = self.model_out(problem, st, x, s, "eps")
            a1, s1, l1 = self.coef(problem, st, t)
            hh = l1 - l0
            if self.adaptive_order == 2:
                ts = self.t_of_lambda(problem, l0 + 0.5 * hh)
                as_, ss, _ = self.coef(problem, st, ts)
                x_low = x * (a1 / a0) - e0 * (s1 * math.expm1(hh))
                u = x * (as_ / a0) - e0 * (ss * math.expm1(0.5 * hh))
                e1 = self.model_out(problem, st, u, ts, "eps")
                x_high = x_low - (e1 - e0) * (s1 * math.expm1(hh))
            else:
                r1, r2 = 1 / 3, 2 / 3
                t_s1, t_s2 = self.t_of_lambda(problem, l0 + r1 * hh), self.t_of_lambda(problem, l0 + r2 * hh)
                a_s1, s_s1, _ = self.coef(problem, st, t_s1)
                a_s2, s_s2, _ = self.coef(problem, st, t_s2)
                u1 = x * (a_s1 / a0) - e0 * (s_s1 * math.expm1(r1 * hh))
                d1 = self.model_out(problem, st, u1, t_s1, "eps") - e0
                base = x * (a1 / a0) - e0 * (s1 * math.expm1(hh))
                x_low = base - d1 * (s1 / (2 * r1) * math.expm1(hh))  # DPM-Solver-2 with r1 = 1/3
                u2 = (x * (a_s2 / a0) - e0 * (s_s2 * math.expm1(r2 * hh))
                      - d1 * (s_s2 * r2 / r1 * (math.expm1(r2 * hh) / (r2 * hh) - 1)))
                d2 = self.model_out(problem, st, u2, t_s2, "eps") - e0
                x_high = base - d2 * (s1 / r2 * (math.expm1(hh) / hh - 1))
            delta = torch.clamp(self.rtol * torch.maximum(x_low.abs(), x.abs()), min=self.atol)
            err = ((x_high - x_low) / delta).reshape(x.shape[0], -1).pow(2).mean(-1).sqrt().max()
            e = float(err)
            if e <= 1.0:
                x, s, e0 = x_high, t, None
                accepted += 1
            else:
                rejected += 1
            remaining = l_end - self.coef(problem, st, s)[2]
            h = min(self.theta * hh * max(e, 1e-10) ** (-1.0 / self.adaptive_order), remaining)
            if h <= 1e-12:
                h = l_end - self.coef(problem, st, s)[2]
        del lower
        return x, {"nfe": st.nfe, "n_steps": accepted + rejected, "n_accepted": accepted, "n_rejected": rejected,
                   "solver": self.name}

