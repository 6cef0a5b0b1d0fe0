"""Problems with exact answers, built from a few small numbers so that a failing case reads well.

Every builder returns a `Problem`: the equation (an [`SDE`][sdekit.sde.SDE] or
[`ODE`][sdekit.sde.ODE]), an initial state, an interval and what is known exactly about the solution:

- ``exact``: the ODE solution at ``t1`` (closed form, float64), and ``solution(t)`` at any time between;
- ``pathwise(x0, bm)``: the SDE solution at ``t1`` on a given Brownian path ``bm`` over ``[t0, t1]``;
- ``mean`` / ``covariance``: the exact first two moments of the SDE solution at ``t1`` (per sample).

``repr(problem)`` is the builder call that recreates it, e.g.
``linear_ode(dim=2, seed=0, damping=0.5, t0=0.0, t1=1.0, batch=2)``. The strategies of
[`sdekit.testing.strategies`][] draw these arguments, so hypothesis shrinks toward small, readable cases.

Closed forms (all checked against [`sdekit.analytic.reference_solve`][] in the tests):

- `linear_ode`: ``x' = A x``, ``A = s (S - Sᵀ)/2 - c I``: every eigenvalue has real part ``-c``;
  ``x(t) = e^{A (t - t0)} x0``.
- `stuart_landau`: the non-autonomous Stuart–Landau oscillator in polar form ``r' = a r (1 - r²)``,
  ``θ' = ω + κ t + τ r²``; ``r²`` is logistic and ``θ`` integrates in closed form.
- `logistic_ode`: ``x' = r x (1 - x)``; `riccati_ode`: ``x' = 1 + x²``, ``x = tan(t - t0 + arctan x0)``
  (kept at least 0.37 away from the pole).
- `polynomial_ode`: ``x' = Σ_k c_k t^k`` (state-independent): an order-p method integrates degree < p
  exactly.
- `ornstein_uhlenbeck`, `linear_sde`: linear additive-noise SDEs; mean and covariance exact,
  ``pathwise`` by `linear_pathwise`.
- `geometric_brownian_motion` (diagonal noise), `scalar_noise_gbm`, `general_noise_gbm`:
  exact pathwise ``x0 exp((mu - ½ Σσ²) t + Σ σ W)`` (commuting noise).
- `drifted_brownian_motion`: ``dx = c dt + G dW`` with constant coefficients, for every noise type: every
  consistent scheme reproduces ``x0 + c (t1 - t0) + G (W(t1) - W(t0))`` exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .._utils import bcast
from ..analytic import GeometricBrownianMotion, LinearSDE, OrnsteinUhlenbeck
from ..sde import ODE, SDE

F64 = torch.float64


@dataclass(eq=False, repr=False)
class Problem:
    """An ODE/SDE with an initial state, an interval and its exact answers (see the module docstring).

    Attributes:
        name: the builder's name; ``params`` its arguments (together they are the repr).
        sde: the equation (``sde.is_ode`` for ODEs).
        x0: initial state, batch first (float64).
        t0, t1: the interval; ``t1 < t0`` integrates backwards.
        exact: ODE solution at ``t1`` (or None).
        solution: ODE solution at any time of the interval, ``solution(t)`` (or None).
        pathwise: SDE solution at ``t1`` on a Brownian path: ``pathwise(x0, bm)`` (or None).
        mean, covariance: exact ``E x(t1)`` (``x0``'s shape) and the covariance of one sample's flattened
            state (``(D, D)``), for SDEs whose every sample has the same law (or None).
        rate: a rough bound on how fast the solution changes (spectral radius, Lipschitz constant); step
            ladders start where ``rate · |h| <= 1``.
    """

    name: str
    params: dict
    sde: SDE
    x0: torch.Tensor
    t0: float
    t1: float
    exact: torch.Tensor | None = None
    pathwise: Callable | None = None
    mean: torch.Tensor | None = None
    covariance: torch.Tensor | None = None
    rate: float = 1.0
    extra: dict = field(default_factory=dict)
    solution: Callable | None = None

    @property
    def noise_type(self) -> str | None:
        """The SDE's noise type (None for an ODE)."""
        return self.sde.noise_type

    @property
    def is_ode(self) -> bool:
        """Whether the problem is an ODE."""
        return self.sde.is_ode

    @property
    def span(self) -> float:
        """The length ``|t1 - t0|`` of the interval."""
        return abs(self.t1 - self.t0)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={_short(v)}" for k, v in self.params.items())
        return f"{self.name}({args})"

    def _repr_pretty_(self, printer, cycle) -> None:  # hypothesis/IPython pretty printers: the short repr
        printer.text(repr(self))


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}" if v != int(v) or abs(v) >= 1e6 else f"{v:.1f}"
    if isinstance(v, tuple):
        inner = ", ".join(_short(u) for u in v)
        return f"({inner},)" if len(v) == 1 else f"({inner})"
    if isinstance(v, torch.dtype):
        return str(v)
    return repr(v)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _check_interval(t0: float, t1: float) -> tuple[float, float]:
    t0, t1 = float(t0), float(t1)
    if not (math.isfinite(t0) and math.isfinite(t1)) or t0 == t1:
        raise ValueError(f"need finite t0 != t1, got t0={t0}, t1={t1}")
    return t0, t1


def _per_sample(t, x: torch.Tensor):
    """A time that may be a 0-d or per-sample ``(B,)`` tensor, shaped to broadcast against ``x``."""
    if isinstance(t, torch.Tensor):
        return bcast(t, x)
    return t


# --- ODEs --------------------------------------------------------------------------------------------------
def drift_matrix(dim: int, seed: int, damping: float, scale: float = 1.0) -> torch.Tensor:
    """``A = scale (S - Sᵀ)/2 - damping I`` with ``S`` standard normal from ``seed``: a rotation part
    (purely imaginary eigenvalues) plus damping, so every eigenvalue of ``A`` has real part ``-damping``."""
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    s = torch.randn(dim, dim, generator=_gen(seed), dtype=F64)
    return scale * (s - s.T) / 2 - damping * torch.eye(dim, dtype=F64)


def linear_ode(dim: int = 2, seed: int = 0, damping: float = 0.5, scale: float = 1.0, t0: float = 0.0,
               t1: float = 1.0, batch: int = 2) -> Problem:
    """``x' = A x`` with `drift_matrix` ``A``; exact ``x(t1) = e^{A (t1 - t0)} x0``."""
    t0, t1 = _check_interval(t0, t1)
    a = drift_matrix(dim, seed, damping, scale)
    x0 = torch.randn(batch, dim, generator=_gen(seed + 1), dtype=F64)
    def solution(t):
        return x0 @ torch.linalg.matrix_exp(a * (float(t) - t0)).T

    rate = float(torch.linalg.eigvals(a).abs().max())
    ode = ODE(lambda t, x: x @ a.to(x.dtype).T)
    params = dict(dim=dim, seed=seed, damping=damping, scale=scale, t0=t0, t1=t1, batch=batch)
    return Problem("linear_ode", params, ode, x0, t0, t1, exact=solution(t1), rate=rate, extra={"A": a},
                   solution=solution)


def stuart_landau(a: float = 1.0, omega: float = 2.0, chirp: float = 0.5, twist: float = 0.5,
                  radius: float = 0.5, t0: float = 0.0, t1: float = 1.0, batch: int = 2) -> Problem:
    """The non-autonomous Stuart–Landau oscillator: in polar form ``r' = a r (1 - r²)``,
    ``θ' = omega + chirp · t + twist · r²``; in Cartesian form a coupled nonlinear 2-D system.

    Exact: ``r² = 1/(1 + k e^{-2aΔ})`` with ``k = 1/r0² - 1`` and ``Δ = t - t0``;
    ``θ = θ0 + omega Δ + chirp (t² - t0²)/2 + twist [Δ + log((1 + k e^{-2aΔ})/(1 + k))/(2a)]``.
    Initial radii ``radius · (1 - i/(2 batch))`` (in ``(0, radius]``) and angles ``0.3 + 2π i / batch``;
    ``0 < radius < 1`` keeps ``k > 0`` so the solution exists for all times in both directions. The drift
    accepts per-sample times (for the autonomization check).
    """
    t0, t1 = _check_interval(t0, t1)
    if not 0 < radius < 1:
        raise ValueError(f"radius must lie in (0, 1), got {radius}")
    if a <= 0:
        raise ValueError(f"a must be > 0, got {a}")
    i = torch.arange(batch, dtype=F64)
    r0 = radius * (1 - i / (2 * batch))
    th0 = 0.3 + 2 * math.pi * i / batch
    x0 = torch.stack([r0 * torch.cos(th0), r0 * torch.sin(th0)], 1)

    def drift(t, x):
        r2 = (x * x).sum(-1, keepdim=True)
        w = omega + chirp * _per_sample(t, x) + twist * r2
        grow = a * (1 - r2)
        u, v = x[..., :1], x[..., 1:]
        return torch.cat([grow * u - w * v, grow * v + w * u], -1)

    def solution(t):
        t = float(t)
        d = t - t0
        k = 1 / r0**2 - 1
        e = torch.exp(torch.tensor(-2 * a * d, dtype=F64))
        r = torch.sqrt(1 / (1 + k * e))
        th = th0 + omega * d + chirp * (t * t - t0 * t0) / 2 + twist * (d + torch.log((1 + k * e) / (1 + k)) / (2 * a))
        return torch.stack([r * torch.cos(th), r * torch.sin(th)], 1)

    rate = max(2 * a, abs(omega) + abs(chirp) * max(abs(t0), abs(t1)) + abs(twist))
    params = dict(a=a, omega=omega, chirp=chirp, twist=twist, radius=radius, t0=t0, t1=t1, batch=batch)
    return Problem("stuart_landau", params, ODE(drift), x0, t0, t1, exact=solution(t1), rate=rate, solution=solution)


def logistic_ode(rate: float = 1.0, x0: tuple[float, ...] = (0.2, 0.6), t0: float = 0.0, t1: float = 1.0) -> Problem:
    """``x' = rate · x (1 - x)``, exact ``x = 1/(1 + (1/x0 - 1) e^{-rate (t - t0)})``; ``0 < x0 < 1`` (the
    solution then exists for all times, in both directions)."""
    t0, t1 = _check_interval(t0, t1)
    if not all(0 < v < 1 for v in x0):
        raise ValueError(f"logistic initial values must lie in (0, 1), got {x0}")
    xs = torch.tensor(x0, dtype=F64).reshape(-1, 1)

    def solution(t):
        return 1 / (1 + (1 / xs - 1) * math.exp(-rate * (float(t) - t0)))

    params = dict(rate=rate, x0=tuple(x0), t0=t0, t1=t1)
    return Problem("logistic_ode", params, ODE(lambda t, x: rate * x * (1 - x)), xs, t0, t1, exact=solution(t1),
                   rate=abs(rate), solution=solution)


RICCATI_MARGIN = 0.37  # distance kept from the pole of tan at pi/2


def riccati_ode(x0: tuple[float, ...] = (0.0, 0.5), t0: float = 0.0, t1: float = 0.6) -> Problem:
    """The Riccati equation ``x' = 1 + x²``, exact ``x = tan(t - t0 + arctan x0)``, on an interval where
    ``|t - t0 + arctan x0| <= pi/2 - 0.37`` for every initial value (so ``|x| <= 2.7``: far from blow-up)."""
    t0, t1 = _check_interval(t0, t1)
    xs = torch.tensor(x0, dtype=F64).reshape(-1, 1)
    phase = torch.arctan(xs)
    lim = math.pi / 2 - RICCATI_MARGIN
    if bool((phase.abs() > lim).any()) or bool(((phase + (t1 - t0)).abs() > lim).any()):
        raise ValueError(f"riccati_ode{(x0, t0, t1)} comes within {RICCATI_MARGIN} of the pole of tan")
    def solution(t):
        return torch.tan(phase + (float(t) - t0))

    exact = solution(t1)
    xmax = float(max(xs.abs().max(), exact.abs().max()))
    params = dict(x0=tuple(x0), t0=t0, t1=t1)
    return Problem("riccati_ode", params, ODE(lambda t, x: 1 + x * x), xs, t0, t1, exact=exact, rate=2 * xmax + 1,
                   solution=solution)


def polynomial_ode(degree: int = 1, seed: int = 0, t0: float = 0.0, t1: float = 1.0, dim: int = 2,
                   batch: int = 2) -> Problem:
    """``x' = Σ_{k<=degree} c_k t^k`` (``c_k`` per coordinate, standard normal from ``seed``): the drift does
    not depend on ``x``, so the exact solution is the integral of a polynomial. A Runge–Kutta method of order
    ``p`` integrates degree ``< p`` exactly (its quadrature conditions ``Σ b_i c_i^{k-1} = 1/k``, ``k <= p``)."""
    t0, t1 = _check_interval(t0, t1)
    c = torch.randn(degree + 1, dim, generator=_gen(seed), dtype=F64)
    x0 = torch.randn(batch, dim, generator=_gen(seed + 1), dtype=F64)

    def drift(t, x):
        tt = _per_sample(t, x)
        out = torch.zeros_like(x)
        for k in range(degree, -1, -1):  # Horner
            out = out * tt + c[k].to(x.dtype)
        return out

    def solution(t):
        t = float(t)
        return x0 + sum(c[k] * (t ** (k + 1) - t0 ** (k + 1)) / (k + 1) for k in range(degree + 1))

    params = dict(degree=degree, seed=seed, t0=t0, t1=t1, dim=dim, batch=batch)
    return Problem("polynomial_ode", params, ODE(drift), x0, t0, t1, exact=solution(t1), rate=1.0, solution=solution)


def blowup_ode(x0: float = 10.0, t0: float = 0.0, t1: float = 1.0) -> Problem:
    """``x' = x²`` from ``x0 > 0``: the solution ``x0/(1 - x0 (t - t0))`` blows up at ``t0 + 1/x0``."""
    t0, t1 = _check_interval(t0, t1)
    params = dict(x0=x0, t0=t0, t1=t1)
    return Problem("blowup_ode", params, ODE(lambda t, x: x * x), torch.full((1, 1), float(x0), dtype=F64), t0, t1,
                   rate=abs(x0))


# --- linear additive-noise SDEs ------------------------------------------------------------------------------
def _gauss_legendre(n: int = 12):
    u, w = np.polynomial.legendre.leggauss(n)
    return torch.tensor((u + 1) / 2, dtype=F64), torch.tensor(w / 2, dtype=F64)  # on [0, 1]


def linear_pathwise(a_mat: torch.Tensor, a_vec: torch.Tensor | None, b_mat: torch.Tensor, x0: torch.Tensor, bm,
                    t0: float, t1: float, *, n_fine: int = 4096) -> torch.Tensor:
    """Solution at ``t1 > t0`` of ``dx = (A x + a) dt + B dW`` on the Brownian path ``bm`` (shape ``(B, m)``).

    On each of ``n_fine`` equal sub-steps of length ``h`` the stochastic integral ``∫ e^{A(s_end - s)} B dW``
    is replaced by its conditional expectation given what the path reveals: ``(∫φ/h) ΔW`` and, when ``bm``
    has Lévy area, ``+ (12/h)∫φ(u)(½ - u/h) du · H`` (``H = ∫(½ - u/h) dW`` is orthogonal to ``ΔW``). The
    error is ``O(‖A‖ ‖B‖ h)`` in root mean square without Lévy area and ``O(‖A‖² ‖B‖ h²)`` with it: below
    the error of any scheme whose strong order on additive noise is 1 (resp. 1.5) at the step sizes of a
    convergence test (a scheme cannot exceed strong order 1 on additive noise without the Lévy area).
    """
    if not t1 > t0:
        raise ValueError(f"linear_pathwise needs t1 > t0, got {t0}, {t1}")
    d = a_mat.shape[0]
    h = (t1 - t0) / n_fine
    u, w = _gauss_legendre()
    # e^{A (h - u h)} at the quadrature nodes: (n_q, d, d)
    kern = torch.linalg.matrix_exp(a_mat[None] * (h * (1 - u))[:, None, None])
    m0 = (w[:, None, None] * kern).sum(0)  # (1/h) ∫ e^{A(h-s)} ds
    m1 = 12 * (w[:, None, None] * (0.5 - u)[:, None, None] * kern).sum(0)  # (12/h) ∫ e^{A(h-s)} (½ - s/h) ds
    prop = torch.linalg.matrix_exp(a_mat * h)
    c = (h * m0 @ a_vec) if a_vec is not None else torch.zeros(d, dtype=F64)
    kw, kh = (m0 @ b_mat).T, (m1 @ b_mat).T  # applied to row vectors
    x = x0.to(F64).reshape(x0.shape[0], d)
    levy = bool(getattr(bm, "levy_area", False))
    grid = torch.linspace(t0, t1, n_fine + 1, dtype=F64).tolist()
    for i in range(n_fine):
        if levy:
            dw, area = bm.levy(grid[i], grid[i + 1])
            x = x @ prop.T + c + dw.to(F64).reshape(x.shape[0], -1) @ kw + area.to(F64).reshape(x.shape[0], -1) @ kh
        else:
            dw = bm(grid[i], grid[i + 1])
            x = x @ prop.T + c + dw.to(F64).reshape(x.shape[0], -1) @ kw
    return x.reshape(x0.shape).to(x0.dtype)


def ornstein_uhlenbeck(theta: float = 1.0, mu: float = 0.5, sigma: float = 0.8, x0: float = 1.5, t1: float = 1.0,
                       batch: int = 1) -> Problem:
    """[`OrnsteinUhlenbeck`][sdekit.analytic.OrnsteinUhlenbeck] ``dx = theta (mu - x) dt + sigma dW`` on ``[0, t1]``
    from ``x0`` (state ``(batch, 1)``): exact mean and variance; ``pathwise`` by `linear_pathwise`."""
    ou = OrnsteinUhlenbeck(theta, mu, sigma)
    x0t = torch.full((batch, 1), float(x0), dtype=F64)
    a_mat = torch.tensor([[-float(theta)]], dtype=F64)
    a_vec = torch.tensor([float(theta) * float(mu)], dtype=F64)
    b_mat = torch.tensor([[float(sigma)]], dtype=F64)

    def pathwise(xs, bm, n_fine=4096):
        return linear_pathwise(a_mat, a_vec, b_mat, xs, bm, 0.0, float(t1), n_fine=n_fine)

    mean = torch.full_like(x0t, ou.mean(t1, float(x0)))
    cov = torch.tensor([[ou.variance(t1)]], dtype=F64)
    params = dict(theta=theta, mu=mu, sigma=sigma, x0=x0, t1=t1, batch=batch)
    return Problem("ornstein_uhlenbeck", params, ou, x0t, 0.0, float(t1), pathwise=pathwise, mean=mean, covariance=cov,
                   rate=abs(theta))


def linear_sde(dim: int = 2, noise_dim: int = 2, seed: int = 0, damping: float = 0.5, scale: float = 1.0,
               noise_scale: float = 0.5, t1: float = 1.0, batch: int = 1) -> Problem:
    """[`LinearSDE`][sdekit.analytic.LinearSDE] ``dx = A x dt + B dW`` with `drift_matrix` ``A`` (every
    eigenvalue has real part ``-damping``) and ``B = noise_scale · N(0, 1)^{dim × noise_dim}`` from ``seed``;
    exact mean and covariance (Van Loan); ``pathwise`` by `linear_pathwise`."""
    a_mat = drift_matrix(dim, seed, damping, scale)
    b_mat = noise_scale * torch.randn(dim, noise_dim, generator=_gen(seed + 2), dtype=F64)
    sde = LinearSDE(a_mat, b_mat)
    x0 = torch.randn(1, dim, generator=_gen(seed + 1), dtype=F64).expand(batch, dim).clone()

    def pathwise(xs, bm, n_fine=4096):
        return linear_pathwise(a_mat, None, b_mat, xs, bm, 0.0, float(t1), n_fine=n_fine)

    mean = sde.mean(t1, x0)
    cov = sde.covariance(t1)
    rate = float(torch.linalg.eigvals(a_mat).abs().max())
    params = dict(dim=dim, noise_dim=noise_dim, seed=seed, damping=damping, scale=scale, noise_scale=noise_scale,
                  t1=t1, batch=batch)
    return Problem("linear_sde", params, sde, x0, 0.0, float(t1), pathwise=pathwise, mean=mean, covariance=cov,
                   rate=rate, extra={"A": a_mat, "B": b_mat})


# --- multiplicative noise with exact pathwise solutions ---------------------------------------------------------
def geometric_brownian_motion(mu: float = 0.5, sigma: float = 0.8, x0: float = 1.0, t1: float = 1.0, dim: int = 1,
                              batch: int = 1) -> Problem:
    """[`GeometricBrownianMotion`][sdekit.analytic.GeometricBrownianMotion] (diagonal noise, each coordinate its own
    motion) on ``[0, t1]``: exact ``x0 exp((mu - sigma²/2) t + sigma W_t)``."""
    gbm = GeometricBrownianMotion(mu, sigma)
    x0t = torch.full((batch, dim), float(x0), dtype=F64)

    def pathwise(xs, bm):
        return gbm.exact(xs, float(t1), bm(0.0, float(t1)).to(xs.dtype))

    params = dict(mu=mu, sigma=sigma, x0=x0, t1=t1, dim=dim, batch=batch)
    return Problem("geometric_brownian_motion", params, gbm, x0t, 0.0, float(t1), pathwise=pathwise,
                   mean=gbm.mean(t1, x0t), rate=abs(mu) + sigma * sigma)


def scalar_noise_gbm(mu: float = 0.5, sigma: float = 0.8, spread: float = 0.5, t1: float = 1.0, dim: int = 2,
                     batch: int = 1) -> Problem:
    """``dx_i = mu x_i dt + s_i x_i dW`` with ONE Brownian motion per sample (noise type ``"scalar"``) and
    ``s_i = sigma (1 - spread · i/dim)``: commuting noise, exact ``x0_i exp((mu - s_i²/2) t + s_i W_t)``."""
    s = sigma * (1 - spread * torch.arange(dim, dtype=F64) / dim)
    sde = SDE(lambda t, x: mu * x, lambda t, x: s.to(x.dtype) * x, noise_type="scalar",
              diffusion_jvp=lambda t, x, v: s.to(x.dtype) * v)
    x0t = torch.ones(batch, dim, dtype=F64)

    def pathwise(xs, bm):
        w = bm(0.0, float(t1)).to(xs.dtype).reshape(-1, 1)
        return xs * torch.exp((mu - 0.5 * s * s) * t1 + s * w)

    params = dict(mu=mu, sigma=sigma, spread=spread, t1=t1, dim=dim, batch=batch)
    return Problem("scalar_noise_gbm", params, sde, x0t, 0.0, float(t1), pathwise=pathwise,
                   rate=abs(mu) + sigma * sigma)


def general_noise_gbm(mu: float = 0.5, sigma: float = 0.6, noise_dim: int = 2, t1: float = 1.0, dim: int = 2,
                      batch: int = 1) -> Problem:
    """``dx = mu x dt + Σ_j s_j x dW_j`` (noise type ``"general"``, ``brownian_size = noise_dim``,
    ``s_j = sigma (1 - j/(2 noise_dim))``): commuting noise, exact ``x0 exp((mu - Σ s_j²/2) t + Σ s_j W_j)``."""
    s = sigma * (1 - torch.arange(noise_dim, dtype=F64) / (2 * noise_dim))
    sde = SDE(lambda t, x: mu * x, lambda t, x: x[..., None] * s.to(x.dtype), noise_type="general",
              brownian_size=noise_dim)
    x0t = torch.ones(batch, dim, dtype=F64)

    def pathwise(xs, bm):
        w = bm(0.0, float(t1)).to(xs.dtype)  # (B, m)
        return xs * torch.exp((mu - 0.5 * float((s * s).sum())) * t1 + (w @ s)[:, None])

    params = dict(mu=mu, sigma=sigma, noise_dim=noise_dim, t1=t1, dim=dim, batch=batch)
    return Problem("general_noise_gbm", params, sde, x0t, 0.0, float(t1), pathwise=pathwise,
                   rate=abs(mu) + float((s * s).sum()))


def nonnormal_matrix(dim: int, seed: int) -> torch.Tensor:
    """A fixed ``dim x dim`` matrix that is neither symmetric nor skew nor normal (``N Nᵀ != Nᵀ N``): a unit upper
    shift plus a seeded lower-triangular perturbation, scaled to spectral norm 1 (``dim = 1``: ``[[1]]``)."""
    if dim == 1:
        return torch.ones(1, 1, dtype=F64)
    g = torch.randn(dim, dim, generator=_gen(seed), dtype=F64)
    n = torch.diag(torch.ones(dim - 1, dtype=F64), 1) + 0.3 * torch.tril(g)
    return n / torch.linalg.matrix_norm(n, ord=2)


def commuting_linear_sde(noise_type: str = "scalar", dim: int = 2, noise_dim: int = 2, seed: int = 0,
                         a: tuple[float, float] = (-0.3, 0.4), b: tuple[float, float] = (0.3, 0.6), t1: float = 1.0,
                         batch: int = 1) -> Problem:
    """``dX = A X dt + Σ_k B_k X dW_k`` with ``A = a0 I + a1 N`` and ``B_k = b0_k I + b1_k N`` for one non-normal
    ``N`` (`nonnormal_matrix`): all the matrices commute, so ``X_T = expm((A - ½ Σ B_k²) T + Σ B_k W_k(T)) X_0``
    exactly, while the diffusion Jacobians ``B_k`` are not symmetric. A Milstein term formed with ``(∂g/∂x)ᵀ g =
    B_kᵀ B_k x`` instead of ``(∂g/∂x) g = B_k² x`` is then a different scheme of strong order 0.5.

    ``noise_type="scalar"``: one Brownian motion (``B = b0 I + b1 N``); ``"general"``: ``noise_dim`` of them
    (``b`` scaled by ``1 - k/(2 noise_dim)`` for the ``k``-th; the noise commutes, so no Lévy area is needed).
    """
    if noise_type not in ("scalar", "general"):
        raise ValueError(f"noise_type must be 'scalar' or 'general', got {noise_type!r}")
    n = nonnormal_matrix(dim, seed)
    eye = torch.eye(dim, dtype=F64)
    a_mat = a[0] * eye + a[1] * n
    m = 1 if noise_type == "scalar" else noise_dim
    scale = [1 - k / (2 * m) for k in range(m)] if noise_type == "general" else [1.0]
    bs = torch.stack([f * (b[0] * eye + b[1] * n) for f in scale])  # (m, d, d)
    drift_mat = a_mat - 0.5 * (bs @ bs).sum(0)

    if noise_type == "scalar":
        sde = SDE(lambda t, x: x @ a_mat.to(x.dtype).T, lambda t, x: x @ bs[0].to(x.dtype).T, noise_type="scalar",
                  diffusion_jvp=lambda t, x, v: v @ bs[0].to(x.dtype).T)
    else:
        sde = SDE(lambda t, x: x @ a_mat.to(x.dtype).T,
                  lambda t, x: torch.einsum("kij,bj->bik", bs.to(x.dtype), x), noise_type="general",
                  brownian_size=m)
    x0t = torch.ones(batch, dim, dtype=F64) + 0.5 * torch.arange(dim, dtype=F64) / dim

    def pathwise(xs, bm):
        w = bm(0.0, float(t1)).to(F64).reshape(xs.shape[0], -1)  # (B, m)
        gen = drift_mat * t1 + torch.einsum("bk,kij->bij", w, bs)
        return (torch.linalg.matrix_exp(gen) @ xs.to(F64)[..., None])[..., 0].to(xs.dtype)

    params = dict(noise_type=noise_type, dim=dim, noise_dim=m, seed=seed, a=a, b=b, t1=t1, batch=batch)
    rate = float(torch.linalg.matrix_norm(a_mat, ord=2)) + float((torch.linalg.matrix_norm(bs, ord=2) ** 2).sum())
    return Problem(f"commuting_linear_sde_{noise_type}", params, sde, x0t, 0.0, float(t1), pathwise=pathwise,
                   rate=rate)


def drifted_brownian_motion(noise_type: str = "additive", shape: tuple[int, ...] = (2, 3), drift: float = 0.5,
                            sigma: float = 0.7, t0: float = 0.0, t1: float = 1.0, noise_dim: int = 2) -> Problem:
    """``dx = c dt + G dW`` with constant coefficients (``c = drift · (1, 2, ...)/D``, ``G`` built from
    ``sigma``) in the given noise type and state ``shape``: every consistent scheme is exact, so its
    ``pathwise`` answer ``x0 + c (t1 - t0) + G (W(t1) - W(t0))`` must be matched to rounding error."""
    t0, t1 = _check_interval(t0, t1)
    shape = tuple(shape)
    numel = math.prod(shape[1:]) if len(shape) > 1 else 1
    c = (drift * torch.arange(1, numel + 1, dtype=F64) / numel).reshape(shape[1:])
    coef = sigma * (1 + torch.arange(numel, dtype=F64) / numel).reshape(shape[1:])
    if noise_type in ("additive", "diagonal"):
        g = lambda t, x: torch.zeros_like(x) + coef.to(x.dtype)  # noqa: E731  (constant, state-shaped)
        sde = SDE(lambda t, x: torch.zeros_like(x) + c.to(x.dtype), g, noise_type=noise_type)
    elif noise_type == "scalar":
        sde = SDE(lambda t, x: torch.zeros_like(x) + c.to(x.dtype), lambda t, x: torch.zeros_like(x) + coef.to(x.dtype),
                  noise_type="scalar")
    elif noise_type == "general":
        mix = (1 + torch.arange(noise_dim, dtype=F64)) / noise_dim
        gm = coef[..., None] * mix  # (*S, m)
        sde = SDE(lambda t, x: torch.zeros_like(x) + c.to(x.dtype), lambda t, x: gm.to(x.dtype), noise_type="general",
                  brownian_size=noise_dim)
    else:
        raise ValueError(f"unknown noise_type {noise_type!r}")
    x0 = torch.randn(shape, generator=_gen(7), dtype=F64)

    def pathwise(xs, bm):
        w = bm(t0, t1).to(xs.dtype)  # W(t1) - W(t0) in either direction: the sum of the increments solve feeds
        return xs + c.to(xs.dtype) * (t1 - t0) + sde.g_dw(sde.diffusion(torch.tensor(t0), xs), w, xs)

    params = dict(noise_type=noise_type, shape=shape, drift=drift, sigma=sigma, t0=t0, t1=t1)
    if noise_type == "general":
        params["noise_dim"] = noise_dim
    return Problem("drifted_brownian_motion", params, sde, x0, t0, t1, pathwise=pathwise, rate=1.0)


def nonautonomous_sde(noise_type: str | None = "additive", shape: tuple[int, ...] = (2, 3), seed: int = 0,
                      sigma: float = 0.5, time_dependent_noise: bool = True, noise_dim: int = 2, t0: float = 0.0,
                      t1: float = 1.0) -> Problem:
    """A smooth non-autonomous problem of any state ``shape`` and noise type (``None``: an ODE), without a
    closed form: for invariance checks (time reversal, autonomization, determinism, shapes, dtypes, NFE).

    Drift ``f(t, x) = -(1 + t²/2) x + sin(t) + 0.3 cos(x)``; diffusion, scaled by ``s(t) = sigma (1 + t/2)``
    (or ``sigma`` when not ``time_dependent_noise``): additive ``s(t)``; diagonal ``s(t)(1 + ½ sin x)``;
    scalar ``s(t) x``; general ``s(t) x ⊗ (1, 2, ...)/m``. Both accept per-sample ``(B,)`` times.
    """
    t0, t1 = _check_interval(t0, t1)
    shape = tuple(shape)

    def s_of(t, x):
        if not time_dependent_noise:
            return sigma
        return sigma * (1 + 0.5 * _per_sample(t, x))

    def drift(t, x):
        tt = _per_sample(t, x)
        return -(1 + 0.5 * tt * tt) * x + torch.sin(torch.as_tensor(tt, dtype=x.dtype)) + 0.3 * torch.cos(x)

    if noise_type is None:
        sde = ODE(drift)
    elif noise_type == "additive":
        sde = SDE(drift, lambda t, x: torch.zeros_like(x) + s_of(t, x), noise_type="additive")
    elif noise_type == "diagonal":
        sde = SDE(drift, lambda t, x: s_of(t, x) * (1 + 0.5 * torch.sin(x)), noise_type="diagonal")
    elif noise_type == "scalar":
        sde = SDE(drift, lambda t, x: s_of(t, x) * x, noise_type="scalar")
    elif noise_type == "general":
        mix = (1 + torch.arange(noise_dim, dtype=F64)) / noise_dim
        sde = SDE(drift, lambda t, x: (s_of(t, x) * x)[..., None] * mix.to(x.dtype), noise_type="general",
                  brownian_size=noise_dim)
    else:
        raise ValueError(f"unknown noise_type {noise_type!r}")
    x0 = torch.randn(shape, generator=_gen(seed), dtype=F64)
    params = dict(noise_type=noise_type, shape=shape, seed=seed, sigma=sigma)
    if not time_dependent_noise:
        params["time_dependent_noise"] = False
    params.update(t0=t0, t1=t1)
    return Problem("nonautonomous_sde", params, sde, x0, t0, t1, rate=2.0)


def heisenberg_sde(s: tuple[float, float] = (1.0, 0.8), kappa: float = 1.0,
                   x0: tuple[float, float, float] = (0.5, -0.3, 0.2),
                   t1: float = 1.0, batch: int = 1, n_fine: int = 8192) -> Problem:
    """Non-commutative general noise (``m = 2``): ``dX1 = s1 dW1``, ``dX2 = s2 dW2``,
    ``dX3 = kappa (X1 dW2 - X2 dW1)`` (Brownian motion on the Heisenberg group, scaled).

    The Lie bracket of the two diffusion fields is ``(0, 0, kappa (s1 + s2)) != 0``, so a scheme without the Lévy area
    ``A = ½ ∫ (W1 dW2 - W2 dW1)`` has strong order 0.5 at best (Clark & Cameron 1980): a solver that declares strong
    order 1 for general noise must fail here. Itô and Stratonovich forms coincide (each field's derivative along
    itself vanishes), and ``X3(T) = x3 + kappa (x1 W2 - x2 W1 + s1 ∫W1 dW2 - s2 ∫W2 dW1)``.

    ``pathwise`` evaluates the iterated integrals by their conditional expectation given the path's increments on
    ``n_fine`` equal sub-steps, ``Σ (W_j + ½ ΔW_j) ΔW_k``; what it leaves out is ``kappa (s1 + s2)`` times the
    sub-steps' Lévy areas, independent of every increment a coarser scheme sees, of root mean square
    ``kappa (s1 + s2) sqrt(t1 / (12 n_fine))`` (4.6e-3 for the defaults): a tenth of the error of an order-0.5 scheme
    at 128 steps, and it adds to that error in quadrature (0.6% at 128 steps).
    """
    if len(s) != 2 or len(x0) != 3:
        raise ValueError(f"heisenberg_sde needs s of length 2 and x0 of length 3, got {s}, {x0}")
    if not t1 > 0:
        raise ValueError(f"t1 must be > 0, got {t1}")
    s1, s2, kap = float(s[0]), float(s[1]), float(kappa)

    def diffusion(t, x):
        g = torch.zeros(*x.shape, 2, dtype=x.dtype, device=x.device)
        g[..., 0, 0] = s1
        g[..., 1, 1] = s2
        g[..., 2, 0] = -kap * x[..., 1]
        g[..., 2, 1] = kap * x[..., 0]
        return g

    sde = SDE(lambda t, x: torch.zeros_like(x), diffusion, noise_type="general", brownian_size=2)
    x0t = torch.tensor(x0, dtype=F64).expand(batch, 3).clone()

    def pathwise(xs, bm):
        grid = torch.linspace(0.0, float(t1), n_fine + 1, dtype=F64).tolist()
        dw = torch.stack([bm(grid[i], grid[i + 1]).to(F64).reshape(xs.shape[0], 2) for i in range(n_fine)])
        w_left = torch.cumsum(dw, 0) - dw  # W at each sub-step's start, (n, B, 2)
        mid = w_left + 0.5 * dw
        i12 = (mid[..., 0] * dw[..., 1]).sum(0)  # E[∫ W1 dW2 | increments]
        i21 = (mid[..., 1] * dw[..., 0]).sum(0)
        w = dw.sum(0)
        x = xs.to(F64)
        out = torch.stack([x[:, 0] + s1 * w[:, 0], x[:, 1] + s2 * w[:, 1],
                           x[:, 2] + kap * (x[:, 0] * w[:, 1] - x[:, 1] * w[:, 0] + s1 * i12 - s2 * i21)], 1)
        return out.to(xs.dtype)

    params = dict(s=tuple(s), kappa=kappa, x0=tuple(x0), t1=t1, batch=batch)
    if n_fine != 8192:
        params["n_fine"] = n_fine
    return Problem("heisenberg_sde", params, sde, x0t, 0.0, float(t1), pathwise=pathwise,
                   rate=abs(kap) * (abs(s1) + abs(s2)))


def sheared_gbm(noise_type: str = "scalar", state: tuple[int, ...] = (2,), noise_dim: int = 2, mu: float = 0.3,
                sigma: float = 0.6, shear: float = 0.8, wobble: float = 0.0, omega: float = 3.0, t1: float = 1.0,
                batch: int = 1, n_fine: int = 2048) -> Problem:
    """A nonlinear SDE with a non-symmetric, state-dependent diffusion Jacobian and an exact pathwise solution: a
    geometric Brownian motion ``Y`` seen through the nonlinear shear ``X = φ(Y)``, ``X_0 = Y_0``,
    ``X_i = Y_i + shear · tanh(Y_{i-1})`` (coordinates of the flattened ``state``, batch first; tanh, whose
    derivatives vanish for large ``Y``, keeps the log-normal tails of ``Y`` from dominating the strong error).

    ``dY_i = mu_i Y_i dt + σ(t) Σ_k s_ki Y_i dW_k`` with ``σ(t) = 1 + wobble · sin(omega t)`` (``wobble = 0``:
    autonomous; else drift and diffusion depend nonlinearly on t), ``mu_i = mu (1 - i/(2D))``,
    ``s_ki = sigma (1 - k/(2m)) (1 + i/(2D))``. By Itô's formula ``X`` solves ``dX = f dt + Σ_k g_k dW_k`` with
    ``b_k = σ(t) s_k ⊙ y``, ``y = φ⁻¹(x)``, and for ``i >= 1``
    ``g_ki = b_ki + shear sech²(y_{i-1}) b_k,i-1``,
    ``f_i = mu_i y_i + shear sech²(y_{i-1}) mu_{i-1} y_{i-1} - shear tanh(y_{i-1}) sech²(y_{i-1}) Σ_k b_k,i-1²``
    (``g_k0 = b_k0``, ``f_0 = mu_0 y_0``). Its Jacobian ``∂g/∂x`` is lower bidiagonal, so a Milstein term formed
    with ``(∂g/∂x)ᵀ g`` differs from ``(∂g/∂x) g``. The noise commutes (every ``Y_i`` is driven by ``Y_i`` alone), so
    no Lévy area is needed: ``log Y_i(T) = log y0_i + mu_i T - ½ Σ_k s_ki² ∫σ² dt + Σ_k s_ki ∫σ dW_k``.

    ``pathwise``: ``∫σ dW_k = W_k(T)`` when autonomous; otherwise its conditional expectation given the increments
    on ``n_fine`` sub-steps, ``Σ_j σ̄_j ΔW_kj`` with ``σ̄_j`` the exact mean of ``σ`` over sub-step ``j`` (left out:
    an error of root mean square ``<= |wobble| omega sqrt(t1/12)/n_fine``, 3e-4 for the defaults' span with
    ``wobble = 0.5``, below a tenth of an order-1 scheme's error at 128 steps).
    """
    if noise_type not in ("scalar", "general"):
        raise ValueError(f"noise_type must be 'scalar' or 'general', got {noise_type!r}")
    if not t1 > 0:
        raise ValueError(f"t1 must be > 0, got {t1}")
    state = tuple(int(v) for v in state)
    dim = math.prod(state)
    m = 1 if noise_type == "scalar" else int(noise_dim)
    i = torch.arange(dim, dtype=F64)
    mus = mu * (1 - i / (2 * dim))
    s = torch.stack([sigma * (1 - k / (2 * m)) * (1 + i / (2 * dim)) for k in range(m)])  # (m, D)
    c = float(shear)

    def tfac(t):
        if wobble == 0:
            return 1.0
        return 1 + wobble * torch.sin(omega * torch.as_tensor(t, dtype=F64))

    def inverse(xf):  # y = φ⁻¹(x), sequentially along the flattened coordinates
        ys = [xf[:, 0]]
        for j in range(1, dim):
            ys.append(xf[:, j] - c * torch.tanh(ys[-1]))
        return torch.stack(ys, 1)

    def forward(yf):
        lead = yf[:, :1]
        return torch.cat([lead, yf[:, 1:] + c * torch.tanh(yf[:, :-1])], 1)

    def _b(t, x):  # (B, D, m): b_k = σ(t) s_k ⊙ y
        y = inverse(x.reshape(x.shape[0], dim))
        fac = tfac(t)
        fac = fac.to(x.dtype).reshape(-1, 1, 1) if isinstance(fac, torch.Tensor) else fac
        return y, fac * y[..., None] * s.T.to(x.dtype)

    def drift(t, x):
        y, b = _b(t, x)
        mu_y = mus.to(x.dtype) * y
        f = mu_y.clone()
        th = torch.tanh(y[:, :-1])
        sech2 = 1 - th * th
        f[:, 1:] = mu_y[:, 1:] + c * sech2 * mu_y[:, :-1] - c * th * sech2 * (b[:, :-1] ** 2).sum(-1)
        return f.reshape(x.shape)

    def g_full(t, x):
        y, b = _b(t, x)
        sech2 = 1 - torch.tanh(y[:, :-1]) ** 2
        g = torch.cat([b[:, :1], b[:, 1:] + c * sech2[..., None] * b[:, :-1]], 1)
        return g.reshape(*x.shape, m)

    if noise_type == "scalar":
        sde = SDE(drift, lambda t, x: g_full(t, x)[..., 0], noise_type="scalar")
    else:
        sde = SDE(drift, g_full, noise_type="general", brownian_size=m)
    y0 = 0.5 + 0.5 * i / dim
    x0t = forward(y0[None]).expand(batch, dim).reshape(batch, *state).clone()
    if wobble == 0:
        sig2 = float(t1)
    else:  # ∫_0^T (1 + a sin ωt)² dt
        a, w, T = float(wobble), float(omega), float(t1)
        sig2 = T + 2 * a * (1 - math.cos(w * T)) / w + a * a * (T / 2 - math.sin(2 * w * T) / (4 * w))

    def pathwise(xs, bm):
        b = xs.shape[0]
        if wobble == 0:
            iw = bm(0.0, float(t1)).to(F64).reshape(b, m)
        else:
            grid = torch.linspace(0.0, float(t1), n_fine + 1, dtype=F64)
            hs = grid[1:] - grid[:-1]
            mean_fac = 1 + wobble * (torch.cos(omega * grid[:-1]) - torch.cos(omega * grid[1:])) / (omega * hs)
            pts = grid.tolist()
            iw = sum(float(mean_fac[j]) * bm(pts[j], pts[j + 1]).to(F64).reshape(b, m) for j in range(n_fine))
        y_start = inverse(xs.to(F64).reshape(b, dim))
        log_y = torch.log(y_start) + mus * t1 - 0.5 * (s * s).sum(0) * sig2 + iw @ s
        return forward(torch.exp(log_y)).reshape(xs.shape).to(xs.dtype)

    params = dict(noise_type=noise_type, state=state, noise_dim=m, mu=mu, sigma=sigma, shear=shear)
    if wobble != 0:
        params.update(wobble=wobble, omega=omega)
    params.update(t1=t1, batch=batch)
    rate = abs(mu) + float((s * s).sum(0).max()) * (1 + abs(wobble)) ** 2 * (1 + abs(c))
    return Problem("sheared_gbm", params, sde, x0t, 0.0, float(t1), pathwise=pathwise, rate=rate)
