"""Exact ground truth: Gaussian mixtures under any diffusion process, closed-form SDEs, a float64 oracle.

**Gaussian mixtures.** If ``x_0 ~ Σ_k w_k N(mu_k, S_k)`` and ``x_t = alpha x_0 + sigma eps``, then
``x_t ~ Σ_k w_k N(alpha mu_k, alpha² S_k + sigma² I)`` exactly, so the noised density, its score and the
posterior mean ``E[x_0 | x_t]`` are closed-form. Each component is handled in the eigenbasis of its
covariance (``S_k = U diag(s) Uᵀ``; the noised covariance shares ``U``), in float64.

**Closed-form SDEs** for convergence tests: `OrnsteinUhlenbeck`, `GeometricBrownianMotion`
(exact pathwise solution) and `LinearSDE` (exact mean and covariance by Van Loan's method).

**Reference solver**: `reference_solve` runs scipy's DOP853 in float64 at tight tolerance.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._utils import as_time, bcast, check_finite, check_positive
from .models import ScoreModel
from .processes import DiffusionProcess
from .sde import SDE

_LOG_2PI = math.log(2 * math.pi)


class GaussianMixture:
    """A mixture ``Σ_k w_k N(mu_k, S_k)`` in ``d`` dimensions with full covariances.

    Args:
        means: ``(K, d)``.
        covariances: ``(K, d, d)`` symmetric positive definite (or ``(K, d)`` diagonals).
        weights: ``(K,)`` non-negative, summing to 1.

    All computations are in float64; results are returned in the input's dtype. Inputs ``x`` are
    batch-first ``(B, d)``.
    """

    def __init__(self, means: torch.Tensor, covariances: torch.Tensor, weights: torch.Tensor):
        mu = torch.as_tensor(means, dtype=torch.float64).detach().cpu()
        cov = torch.as_tensor(covariances, dtype=torch.float64).detach().cpu()
        w = torch.as_tensor(weights, dtype=torch.float64).detach().cpu()
        if mu.ndim != 2:
            raise ValueError(f"means must have shape (K, d), got {tuple(mu.shape)}")
        k, d = mu.shape
        if cov.shape == (k, d):
            cov = torch.diag_embed(cov)
        if cov.shape != (k, d, d):
            raise ValueError(f"covariances must have shape (K, d, d) = {(k, d, d)} or (K, d), got {tuple(cov.shape)}")
        if w.shape != (k,):
            raise ValueError(f"weights must have shape (K,) = ({k},), got {tuple(w.shape)}")
        for name, val in (("means", mu), ("covariances", cov), ("weights", w)):
            check_finite(val, name)
        if bool((w < 0).any()) or abs(float(w.sum()) - 1.0) > 1e-6:
            raise ValueError(f"weights must be non-negative and sum to 1, got sum {float(w.sum()):.8g}")
        scale = cov.abs().amax(dim=(-1, -2), keepdim=True).clamp_min(1e-300)
        if bool(((cov - cov.transpose(-1, -2)).abs() > 1e-10 * scale).any()):
            raise ValueError("covariances must be symmetric")
        cov = 0.5 * (cov + cov.transpose(-1, -2))
        evals, evecs = torch.linalg.eigh(cov)
        if bool((evals <= 0).any()):
            raise ValueError(
                f"covariances must be positive definite; smallest eigenvalue {float(evals.min()):.3g}"
            )
        self.means, self.covariances, self.weights = mu, cov, w
        self.evals, self.evecs = evals, evecs  # S_k = U diag(s) Uᵀ
        self.log_weights = torch.log(w)
        self.n_components, self.dim = k, d

    # --- construction --------------------------------------------------------------------------------
    @classmethod
    def random(
        cls, dim: int, n_components: int, *, seed: int = 0, mean_scale: float = 1.5,
        std_range: tuple[float, float] = (0.05, 0.5), weight_concentration: float = 2.0,
    ) -> GaussianMixture:
        """A random mixture from ``seed``: means ~ N(0, mean_scale²), random rotations, component standard
        deviations log-uniform in ``std_range`` (so the condition number is at most (hi/lo)²), Dirichlet
        weights. Deterministic on every platform (numpy PCG64)."""
        if dim < 1 or n_components < 1:
            raise ValueError(f"dim and n_components must be >= 1, got {dim}, {n_components}")
        lo, hi = std_range
        if not 0 < lo <= hi:
            raise ValueError(f"std_range must satisfy 0 < lo <= hi, got {std_range}")
        rng = np.random.default_rng(seed)
        means = rng.normal(0.0, mean_scale, size=(n_components, dim))
        covs = []
        for _ in range(n_components):
            q, r = np.linalg.qr(rng.normal(size=(dim, dim)))
            q = q * np.sign(np.diag(r))
            std = np.exp(rng.uniform(np.log(lo), np.log(hi), size=dim))
            covs.append((q * std**2) @ q.T)
        weights = rng.dirichlet(np.full(n_components, weight_concentration))
        return cls(means, np.stack(covs), weights)

    @classmethod
    def preset(cls, name: str) -> GaussianMixture:
        """Named mixtures: ``"ring2d"`` (8 components on a circle, for pictures), ``"stress8d"`` and
        ``"stress16d"`` (sharp, anisotropic components: standard deviations 0.02…0.6, condition number
        up to 900, uneven weights; for solver stress tests)."""
        if name == "ring2d":
            ang = np.arange(8) * 2 * np.pi / 8
            means = 1.5 * np.stack([np.cos(ang), np.sin(ang)], -1)
            covs = np.stack([np.diag([0.02, 0.08]) if i % 2 else np.diag([0.06, 0.03]) for i in range(8)])
            w = np.array([3, 1, 2, 1, 3, 1, 2, 1], dtype=float)
            return cls(means, covs, w / w.sum())
        if name == "stress8d":
            return cls.random(8, 6, seed=8, std_range=(0.02, 0.6), weight_concentration=1.0)
        if name == "stress16d":
            return cls.random(16, 8, seed=16, std_range=(0.02, 0.6), weight_concentration=1.0)
        raise ValueError(f"unknown preset {name!r}; allowed: {', '.join(repr(p) for p in PRESETS)}")

    # --- basic statistics --------------------------------------------------------------------------------
    def mean(self) -> torch.Tensor:
        """The mixture's mean ``Σ_k w_k mu_k``, ``(d,)``."""
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """The mixture's covariance ``Σ_k w_k (S_k + (mu_k - m)(mu_k - m)ᵀ)``, ``(d, d)``."""
        m = self.mean()
        dm = self.means - m
        return (self.weights[:, None, None] * (self.covariances + dm[:, :, None] * dm[:, None, :])).sum(0)

    def sample(self, n: int, *, generator: torch.Generator | None = None, dtype=torch.float32,
               return_labels: bool = False):
        """Draw ``n`` samples (float64 arithmetic, returned in ``dtype``)."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        std = self.evals[comp].sqrt()
        x = self.means[comp] + torch.einsum("nij,nj->ni", self.evecs[comp], std * z)
        return (x.to(dtype), comp) if return_labels else x.to(dtype)

    # --- the noised mixture at (alpha, sigma) ------------------------------------------------------------
    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        return x.to(torch.float64).cpu() if x.device.type != "cpu" else x.to(torch.float64)

    def _parts(self, x, alpha, sigma):
        """Per component: eigen-coordinates y, noised eigenvalues c, log N; all (B, K, ...)."""
        xf = self._flat(x)
        a = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1, 1, 1)  # (B or 1, 1, 1)
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1, 1)
        diff = xf[:, None, :] - a * self.means[None]  # (B, K, d)
        y = torch.einsum("kji,bkj->bki", self.evecs, diff)  # Uᵀ (x - alpha mu)
        c = a * a * self.evals[None] + s * s  # (B or 1, K, d)
        logn = -0.5 * ((y * y / c).sum(-1) + torch.log(c).sum(-1) + self.dim * _LOG_2PI)  # (B, K)
        return y, c, logn, a

    def _resp(self, logn):
        lj = logn + self.log_weights[None]
        return lj, torch.softmax(lj, dim=-1)

    def log_prob_at(self, x, alpha, sigma) -> torch.Tensor:
        """``log p(x)`` of the mixture noised to (alpha, sigma): per sample."""
        _, _, logn, _ = self._parts(x, alpha, sigma)
        lj, _ = self._resp(logn)
        return torch.logsumexp(lj, -1).to(x.dtype)

    def score_at(self, x, alpha, sigma) -> torch.Tensor:
        """Score ``∇ log p`` of the mixture noised as ``alpha x_0 + sigma eps``, at ``x`` ``(B, d)``."""
        y, c, logn, _ = self._parts(x, alpha, sigma)
        _, r = self._resp(logn)
        comp = -torch.einsum("kij,bkj->bki", self.evecs, y / c)  # -C_k⁻¹ (x - alpha mu_k)
        return (r[..., None] * comp).sum(1).to(dtype=x.dtype, device=x.device)

    def posterior_mean_at(self, x, alpha, sigma) -> torch.Tensor:
        """``E[x0 | x_t = x]`` = Σ_k r_k [mu_k + alpha S_k C_k⁻¹ (x - alpha mu_k)]."""
        y, c, logn, a = self._parts(x, alpha, sigma)
        _, r = self._resp(logn)
        comp = self.means[None] + torch.einsum("kij,bkj->bki", self.evecs, a * self.evals[None] * y / c)
        return (r[..., None] * comp).sum(1).to(dtype=x.dtype, device=x.device)

    # clean data (alpha = 1, sigma = 0)
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density of the clean mixture at ``x`` ``(B, d)``, ``(B,)``."""
        return self.log_prob_at(x, 1.0, 0.0)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Score ``∇ log p`` of the clean mixture at ``x`` ``(B, d)``."""
        return self.score_at(x, 1.0, 0.0)

    # --- under a process -----------------------------------------------------------------------------
    def _alpha_sigma(self, process: DiffusionProcess, t):
        t = as_time(t)
        return process.alpha(t).to(torch.float64).cpu(), process.sigma(t).to(torch.float64).cpu()

    def marginal(self, process: DiffusionProcess, t) -> GaussianMixture:
        """The noised marginal ``p_t`` (itself a Gaussian mixture) at a scalar time ``t``."""
        a, s = self._alpha_sigma(process, t)
        if a.ndim != 0:
            raise ValueError("marginal(process, t) needs a scalar t")
        a, s = float(a.detach()), float(s.detach())  # a constant mixture: not differentiable in t
        eye = torch.eye(self.dim, dtype=torch.float64)  # float64 like everything here (not the default dtype)
        return GaussianMixture(a * self.means, a * a * self.covariances + s * s * eye, self.weights)

    def log_prob_t(self, x, process: DiffusionProcess, t) -> torch.Tensor:
        """Exact log-density of the marginal ``p_t`` of ``process`` at time ``t``, ``(B,)``."""
        return self.log_prob_at(x, *self._alpha_sigma(process, t))

    def score_t(self, x, process: DiffusionProcess, t) -> torch.Tensor:
        """Exact score ``∇ log p_t`` of the marginal of ``process`` at time ``t``."""
        return self.score_at(x, *self._alpha_sigma(process, t))

    def posterior_mean(self, x, process: DiffusionProcess, t) -> torch.Tensor:
        """Exact ``E[x_0 | x_t = x]`` under ``process`` at time ``t`` (the ideal denoiser)."""
        return self.posterior_mean_at(x, *self._alpha_sigma(process, t))

    # --- conditioning on a linear measurement ------------------------------------------------------------
    def condition(self, A, y, noise_std: float) -> GaussianMixture:
        """The exact posterior of ``x_0`` given one linear measurement ``y = A x_0 + noise_std · n``, ``n ~ N(0, I)``.

        Per component, ``(x_0, y)`` is jointly Gaussian, so the posterior is again a mixture of ``K`` Gaussians
        (Bishop 2006, *Pattern Recognition and Machine Learning*, §2.3.3): with ``C_k = A S_k Aᵀ + noise_std² I``,

        - mean ``m_k = mu_k + S_k Aᵀ C_k⁻¹ (y - A mu_k)``, covariance ``P_k = S_k - S_k Aᵀ C_k⁻¹ A S_k``;
        - weight ``w_k N(y; A mu_k, C_k) / p(y)``: each component reweighted by its evidence.

        Computed in float64 through the Cholesky factor ``C_k = L_k L_kᵀ`` (``W_k = L_k⁻¹ A S_k``,
        ``P_k = S_k - W_kᵀ W_k``, ``m_k = mu_k + W_kᵀ L_k⁻¹ (y - A mu_k)``), with the log-evidences normalised by
        log-sum-exp, so neither an inverse nor an underflowing density is formed.

        With ``noise_std = 0`` (``A`` of full row rank ``m``) the posterior lies on the affine subspace
        ``{x : A x = y}``: each ``P_k`` has rank ``d - m`` (its ``m`` zero eigenvalues are set to exactly 0).
        `sample`, `mean`, `covariance` and every noised quantity at ``sigma > 0`` (``score_at``,
        ``posterior_mean_at``, `model` at ``t > 0``) are exact; the clean density (``log_prob``, ``score`` at
        ``sigma = 0``) does not exist there.

        Args:
            A: the measurement matrix, ``(m, d)``.
            y: one measurement, ``(m,)`` (or ``(1, m)``).
            noise_std: the standard deviation of the measurement noise, ``>= 0``.

        Returns:
            the posterior [`GaussianMixture`][sdekit.analytic.GaussianMixture] (``K`` components; a weight may
            underflow to 0).

        Raises:
            TypeError: ``noise_std`` is not a real number.
            ValueError: shapes that do not fit (``A`` not ``(m, d)``, ``y`` not ``(m,)``), NaN/Inf, ``noise_std < 0``,
                or ``noise_std = 0`` with ``A`` not of full row rank.
        """
        a = torch.as_tensor(A, dtype=torch.float64).detach().cpu()
        yy = torch.as_tensor(y, dtype=torch.float64).detach().cpu()
        if a.ndim != 2 or a.shape[1] != self.dim or a.shape[0] < 1:
            raise ValueError(f"A must have shape (m, d) = (m, {self.dim}), got {tuple(a.shape)}")
        m = a.shape[0]
        if yy.shape == (1, m):
            yy = yy[0]
        if yy.shape != (m,):
            raise ValueError(f"y must be one measurement of shape ({m},) (or (1, {m})), got {tuple(yy.shape)}")
        if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float)):
            raise TypeError(f"noise_std must be a real number, got {type(noise_std).__name__}")
        noise_std = float(noise_std)
        if not (math.isfinite(noise_std) and noise_std >= 0):
            raise ValueError(f"noise_std must be a finite number >= 0, got {noise_std!r}")
        check_finite(a, "A")
        check_finite(yy, "y")
        if noise_std == 0 and int(torch.linalg.matrix_rank(a)) < m:
            raise ValueError(f"noise_std = 0 needs A of full row rank {m}, got rank {int(torch.linalg.matrix_rank(a))}"
                             " (drop redundant rows or give noise_std > 0)")
        a_s = a @ self.covariances  # (K, m, d): A S_k
        c = a_s @ a.T + noise_std**2 * torch.eye(m, dtype=torch.float64)  # C_k
        c = 0.5 * (c + c.transpose(-1, -2))
        chol, info = torch.linalg.cholesky_ex(c)
        if bool((info > 0).any()):
            raise ValueError("A S_k Aᵀ + noise_std² I is not positive definite for some component; "
                             "A is too close to rank deficient for noise_std = 0")
        w_mat = torch.linalg.solve_triangular(chol, a_s, upper=False)  # L_k⁻¹ A S_k, (K, m, d)
        resid = (yy - self.means @ a.T).unsqueeze(-1)  # y - A mu_k, (K, m, 1)
        white = torch.linalg.solve_triangular(chol, resid, upper=False)  # L_k⁻¹ (y - A mu_k)
        means = self.means + (w_mat.transpose(-1, -2) @ white).squeeze(-1)
        covs = self.covariances - w_mat.transpose(-1, -2) @ w_mat
        covs = 0.5 * (covs + covs.transpose(-1, -2))
        log_det_half = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)  # log |C_k|^(1/2)
        log_evidence = -0.5 * white.squeeze(-1).pow(2).sum(-1) - log_det_half - 0.5 * m * _LOG_2PI
        weights = torch.softmax(self.log_weights + log_evidence, dim=0)
        evals, evecs = torch.linalg.eigh(covs)
        if noise_std == 0:
            evals[:, :m] = 0.0  # rank d - m exactly: the m smallest are zero up to rounding
        if bool((evals > 0).all()):
            return GaussianMixture(means, covs, weights)
        return self._degenerate(means, evals.clamp_min(0.0), evecs, weights)

    @classmethod
    def _degenerate(cls, means, evals, evecs, weights) -> GaussianMixture:
        """A mixture with positive semi-definite covariances ``U diag(s) Uᵀ`` (``s >= 0``), which the constructor
        rejects: the posterior of an exact measurement. Sets the attributes ``__init__`` sets."""
        obj = cls.__new__(cls)
        obj.means, obj.weights = means, weights
        obj.covariances = (evecs * evals[:, None, :]) @ evecs.transpose(-1, -2)
        obj.evals, obj.evecs = evals, evecs
        obj.log_weights = torch.log(weights)
        obj.n_components, obj.dim = means.shape
        return obj

    def model(self, process: DiffusionProcess) -> ExactScoreModel:
        """The exact model of this mixture under ``process``: usable wherever a trained model is."""
        return ExactScoreModel(self, process)

    def consistency_model(self, process: DiffusionProcess, *, t_end: float | None = None,
                          rtol: float = 1e-10):
        """The exact consistency function of this mixture under ``process``: a model whose
        ``predict(x, t, "x0")`` is the probability-flow ODE's flow map from ``(x, t)`` to ``t_end`` (default
        ``process.t_domain_min``), solved in float64 to ``rtol`` (a [`FlowMapModel`][sdekit.consistency.FlowMapModel]
        of the exact model). Ground truth for consistency-model sampling (Song et al. 2023)."""
        from .consistency import FlowMapModel

        return FlowMapModel(self.model(process), t_end=t_end, rtol=rtol)

    def __repr__(self):
        return f"GaussianMixture(dim={self.dim}, n_components={self.n_components})"


PRESETS = ("ring2d", "stress8d", "stress16d")


class ExactScoreModel(ScoreModel):
    """The exact score model of a `GaussianMixture` under a process.

    Each parameterization is computed directly in float64 (the score from the noised mixture, ``x0`` as
    the posterior mean, ``eps = -sigma · score``), so no conversion divides by a small alpha or sigma.
    Counts one evaluation per call, like a network.
    """

    def __init__(self, mixture: GaussianMixture, process: DiffusionProcess):
        self.mixture = mixture
        super().__init__(self._net, process, prediction="x0", time_input="t", sample_shape=(mixture.dim,))

    def _net(self, x, t, **cond):  # used only through ScoreModel.__call__ paths
        return self.mixture.posterior_mean(x, self.process, t)

    def predict(self, x: torch.Tensor, t, kind: str = "x0", **cond) -> torch.Tensor:
        if kind not in ("eps", "x0", "v", "score"):
            raise ValueError(f"unknown kind {kind!r}; allowed: 'eps', 'x0', 'v', 'score'")
        if x.device.type == "cpu" and not bool(torch.isfinite(x).all()):
            raise ValueError("x contains NaN/Inf")
        t, alpha, sigma = self._coeffs(x, t)
        a64, s64 = alpha.to(torch.float64).cpu(), sigma.to(torch.float64).cpu()
        self.nfe += 1
        m = self.mixture
        if kind == "score":
            return m.score_at(x, a64, s64)
        if kind == "x0":
            return m.posterior_mean_at(x, a64, s64)
        score = m.score_at(x.to(torch.float64), a64, s64)
        eps = -bcast(s64, score) * score
        if kind == "eps":
            return eps.to(dtype=x.dtype, device=x.device)
        x0 = m.posterior_mean_at(x.to(torch.float64), a64, s64)
        return (bcast(a64, eps) * eps - bcast(s64, x0) * x0).to(dtype=x.dtype, device=x.device)


# --- closed-form SDEs ----------------------------------------------------------------------------------
class OrnsteinUhlenbeck(SDE):
    """``dx = theta (mu - x) dt + sigma dW`` (additive noise), started at time 0.

    Transition: ``x_t | x_0 ~ N(mu + (x_0 - mu) e^{-theta t}, sigma² (1 - e^{-2 theta t}) / (2 theta))``.
    Given a Brownian path, `pathwise` integrates by parts,
    ``∫_0^t e^{-theta(t-s)} dW_s = W_t - theta ∫_0^t e^{-theta(t-s)} W_s ds``, leaving only a Riemann
    integral of the path (evaluated by the trapezoid rule on the caller's fine grid).
    """

    def __init__(self, theta: float = 1.0, mu: float = 0.0, sigma: float = 0.5):
        check_positive(theta, "theta")
        check_positive(sigma, "sigma")
        self.theta, self.mu, self.sigma_ = float(theta), float(mu), float(sigma)
        super().__init__(noise_type="additive")

    def drift(self, t, x):
        return x * -self.theta if self.mu == 0.0 else (self.mu - x) * self.theta

    def diffusion(self, t, x=None):
        return torch.full((), self.sigma_, dtype=x.dtype if x is not None else torch.float64)

    def mean(self, t: float, x0):
        """``E X(t) = mu + (x0 - mu) exp(-theta t)``."""
        return self.mu + (x0 - self.mu) * math.exp(-self.theta * t)

    def variance(self, t: float) -> float:
        """``Var X(t)`` (independent of ``x0``): ``sigma² (1 - exp(-2 theta t)) / (2 theta)``."""
        return self.sigma_**2 * -math.expm1(-2 * self.theta * t) / (2 * self.theta)

    def pathwise(self, x0: torch.Tensor, ts: torch.Tensor, ws: torch.Tensor) -> torch.Tensor:
        """Solution at ``ts[-1]`` from ``x0`` at ``ts[0]`` given ``ws[i] = W(ts[i]) - W(ts[0])`` on a fine
        grid (``ws`` of shape ``(len(ts), *x0.shape)``); quadrature error O(h_fine^{3/2}) in mean square."""
        t = ts - ts[0]
        big_t = t[-1]
        kern = torch.exp(-self.theta * (big_t - t)).reshape(-1, *([1] * x0.ndim)).to(ws.dtype)
        dt = (t[1:] - t[:-1]).reshape(-1, *([1] * x0.ndim)).to(ws.dtype)
        f = kern * ws
        integral = (0.5 * (f[1:] + f[:-1]) * dt).sum(0)
        decay = math.exp(-self.theta * float(big_t))
        return self.mu + (x0 - self.mu) * decay + self.sigma_ * (ws[-1] - self.theta * integral)


class GeometricBrownianMotion(SDE):
    """``dx = mu x dt + sigma x dW`` (diagonal noise); exact ``x_t = x_0 exp((mu - sigma²/2) t + sigma W_t)``."""

    def __init__(self, mu: float = 0.5, sigma: float = 0.5):
        check_positive(sigma, "sigma")
        self.mu, self.sigma_ = float(mu), float(sigma)
        super().__init__(noise_type="diagonal", diffusion_jvp=lambda t, x, v: self.sigma_ * v)

    def drift(self, t, x):
        return self.mu * x

    def diffusion(self, t, x):
        return self.sigma_ * x

    def exact(self, x0: torch.Tensor, t: float, w_t: torch.Tensor) -> torch.Tensor:
        """The pathwise solution ``x0 exp((mu - sigma²/2) t + sigma W(t))`` given ``W(t) = w_t``."""
        return x0 * torch.exp((self.mu - 0.5 * self.sigma_**2) * t + self.sigma_ * w_t)

    def mean(self, t: float, x0):
        """``E X(t) = x0 exp(mu t)``."""
        return x0 * math.exp(self.mu * t)

    def second_moment(self, t: float, x0):
        """``E X(t)² = x0² exp((2 mu + sigma²) t)``."""
        return x0**2 * math.exp((2 * self.mu + self.sigma_**2) * t)


class LinearSDE(SDE):
    """``dx = A x dt + B dW`` with ``A`` (d, d), ``B`` (d, m): additive matrix noise (``brownian_size = m``).

    Exact mean ``e^{At} x_0`` and covariance ``P(t) = ∫_0^t e^{As} B Bᵀ e^{Aᵀs} ds`` by Van Loan's
    block-exponential method (Van Loan 1978).
    """

    def __init__(self, A, B):
        A = torch.as_tensor(A, dtype=torch.float64)
        B = torch.as_tensor(B, dtype=torch.float64)
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"A must be square (d, d), got {tuple(A.shape)}")
        if B.ndim != 2 or B.shape[0] != A.shape[0]:
            raise ValueError(f"B must have shape (d, m) with d = {A.shape[0]}, got {tuple(B.shape)}")
        self.A, self.B = A, B
        super().__init__(noise_type="additive", brownian_size=B.shape[1])

    def drift(self, t, x):
        return x @ self.A.to(x.dtype).T

    def diffusion(self, t, x=None):
        return self.B.to(x.dtype if x is not None else torch.float64)

    def mean(self, t: float, x0: torch.Tensor) -> torch.Tensor:
        """``E X(t) = exp(A t) x0``, batch first."""
        return x0.to(torch.float64) @ torch.linalg.matrix_exp(self.A * t).T

    def covariance(self, t: float) -> torch.Tensor:
        """``Cov X(t) = ∫_0^t exp(A s) B Bᵀ exp(Aᵀ s) ds`` (Van Loan's block-exponential formula), float64."""
        d = self.A.shape[0]
        m = torch.zeros(2 * d, 2 * d, dtype=torch.float64)
        m[:d, :d] = -self.A
        m[:d, d:] = self.B @ self.B.T
        m[d:, d:] = self.A.T
        e = torch.linalg.matrix_exp(m * t)
        return e[d:, d:].T @ e[:d, d:]


# --- float64 reference solver ----------------------------------------------------------------------------
#: explicit scipy methods a reference may use (implicit ones would need a Jacobian of the drift)
REFERENCE_METHODS = ("DOP853", "RK45", "RK23")


def reference_solve(drift, x0: torch.Tensor, t0: float, t1: float, *, t_eval=None, rtol: float = 1e-12,
                    atol: float = 1e-12, method: str = "DOP853", on_step=None) -> torch.Tensor:
    """Solve ``dx/dt = drift(t, x)`` from ``t0`` to ``t1`` (either direction) with scipy's DOP853 (or another
    explicit method of `REFERENCE_METHODS`) in float64.

    ``drift`` may be a callable or an object with ``.drift`` (an sdekit ODE/SDE; its diffusion is ignored); it
    receives ``t`` as a 0-d float64 tensor and the state in float64. Returns the state at ``t1`` (or at each of
    ``t_eval``, stacked first) in ``x0``'s dtype. ``on_step(t)``, when given (without ``t_eval``), is called
    after every accepted step with the time reached (for progress bars: trial evaluations of rejected steps
    and of the initial step-size guess can lie anywhere in the interval).
    """
    fn = drift.drift if hasattr(drift, "drift") else drift
    check_finite(x0, "x0")
    if method not in REFERENCE_METHODS:
        raise ValueError(f"unknown reference method {method!r}; allowed: {', '.join(REFERENCE_METHODS)}")
    shape, dtype = x0.shape, x0.dtype

    def rhs(t, y):
        x = torch.from_numpy(y).reshape(shape)
        with torch.no_grad():
            out = fn(torch.tensor(t, dtype=torch.float64), x)
        return out.detach().reshape(-1).to(torch.float64).cpu().numpy()

    y0 = x0.detach().to(torch.float64).cpu().reshape(-1).numpy()
    import scipy.integrate  # loaded on first use: `import sdekit` stays light

    if on_step is not None and t_eval is None:
        # the same integrator solve_ivp runs, stepped here so that every accepted step is reported
        integrator = getattr(scipy.integrate, method)(rhs, float(t0), y0, float(t1), rtol=rtol, atol=atol)
        while integrator.status == "running":
            message = integrator.step()
            if integrator.status == "failed":
                raise RuntimeError(f"reference {method} solve failed: {message}")
            on_step(float(integrator.t))
        return torch.from_numpy(integrator.y.copy()).reshape(shape).to(dtype)
    res = scipy.integrate.solve_ivp(rhs, (float(t0), float(t1)), y0, method=method, rtol=rtol, atol=atol,
                                    t_eval=None if t_eval is None else np.asarray(t_eval, dtype=float))
    if not res.success:
        raise RuntimeError(f"reference {method} solve failed: {res.message}")
    if t_eval is None:
        return torch.from_numpy(res.y[:, -1]).reshape(shape).to(dtype)
    return torch.from_numpy(res.y.T.copy()).reshape(len(res.t), *shape).to(dtype)


def reference_solve_log_snr(model, x0: torch.Tensor, t0: float, t1: float, *, t_eval=None, rtol: float = 1e-12,
                            atol: float = 1e-12, method: str = "DOP853") -> torch.Tensor:
    """The probability-flow ODE of a diffusion ``model`` from ``t0`` to ``t1``, solved in the noise level
    ``v = log(sigma/alpha) = -lambda`` instead of ``t`` (float64, scipy's DOP853 by default).

    For every process with Gaussian marginals ``x_t = alpha x_0 + sigma eps`` the PF-ODE is, exactly, in
    ``xbar = x / alpha`` (Song et al. 2021, DDIM §4.3; Lu et al. 2022, DPM-Solver eq. 3.4 and Prop. 3.1)

        d xbar / dv = e^v · eps(alpha(t) xbar, t),   t = t(v),

    the ODE whose first-order discretisation is DDIM. It has the same solution as the ODE in ``t``, but where
    the schedule is only piecewise smooth in ``t`` (a discrete DDPM schedule: log alpha is piecewise linear
    between the N knots, so the drift in ``t`` jumps at each of them and an adaptive solve crawls) a model
    whose prediction depends on ``t`` only through ``(alpha, sigma)`` (the analytic mixtures) has a smooth right
    side in ``v``. Measured on ``stress8d`` under the 1000-step DDPM schedule: about a second for 2048
    trajectories, where the solve in ``t`` took minutes.

    Args:
        model: an sdekit diffusion model (``.process``, ``.predict(x, t, "eps")``).
        x0: the state at ``t0``.
        t0, t1: the interval (either direction); ``sigma > 0`` at both ends (``v`` is ``-inf`` at ``sigma = 0``).
        t_eval: times in ``[t1, t0]``, ordered from ``t0`` to ``t1``, at which to return the state.
        rtol, atol: the tolerances (on ``xbar``).
        method: a method of `REFERENCE_METHODS`.

    Returns:
        the state at ``t1`` (or at every time of ``t_eval``, stacked first), in ``x0``'s dtype.

    Raises:
        ValueError: an end with ``sigma = 0``, or times outside the process's range.
    """
    p = model.process
    f64 = torch.float64

    def v_of(t) -> torch.Tensor:
        return -p.log_snr(torch.as_tensor(t, dtype=f64)).detach()

    v0, v1 = float(v_of(t0)), float(v_of(t1))
    if not (math.isfinite(v0) and math.isfinite(v1)):
        raise ValueError(f"reference_solve_log_snr needs sigma > 0 at both ends; t0={t0!r}, t1={t1!r} give "
                         f"log(sigma/alpha) = {v0}, {v1}")
    alpha_0 = p.alpha(torch.as_tensor(t0, dtype=f64)).detach()

    def drift(v, xb):
        t = p.t_from_log_snr(-v)
        a = p.alpha(t)
        with torch.no_grad():
            eps = model.predict(a * xb, t, "eps")
        return torch.exp(v) * eps.to(f64)

    if t_eval is None:
        xb = reference_solve(drift, x0.double() / alpha_0, v0, v1, rtol=rtol, atol=atol, method=method)
        return (p.alpha(torch.as_tensor(t1, dtype=f64)).detach() * xb).to(x0.dtype)
    ts = torch.as_tensor(t_eval, dtype=f64)
    vs = v_of(ts)
    # the ends of t_eval are the interval's ends: the same numbers as v0, v1 (solve_ivp checks the span exactly)
    vs = vs.clamp(min(v0, v1), max(v0, v1))
    xb = reference_solve(drift, x0.double() / alpha_0, v0, v1, t_eval=vs, rtol=rtol, atol=atol, method=method)
    a = p.alpha(ts).detach().reshape(-1, *([1] * x0.ndim))
    return (a * xb).to(x0.dtype)
