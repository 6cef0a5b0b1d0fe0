"""Hypothesis strategies for problems with exact answers, diffusion processes, mixtures, grids, shapes, dtypes.

Every strategy draws a few small integers or values from short lists and builds its object from them, so
hypothesis shrinks a failure to a small, readable case: problems print as the builder call that recreates
them (``linear_ode(dim=2, seed=0, damping=0.5, ...)``, see [`sdekit.testing.problems`][]), processes and
mixtures by their constructor arguments. The first value of each list is the "simplest" case hypothesis
shrinks toward. Each strategy's docstring says what it guarantees.

Use them in your own property tests::

    from hypothesis import given
    from sdekit.testing import strategies as sst

    @given(sst.linear_odes(), sst.time_grids(max_steps=32))
    def test_my_solver_is_accurate(problem, grid): ...
"""

from __future__ import annotations

import math

import torch

try:
    from hypothesis import strategies as st
except ImportError as e:  # pragma: no cover - hypothesis is a test dependency
    raise ImportError("sdekit.testing needs hypothesis: pip install 'sdekit[testing]' "
                      "(or pip install hypothesis)") from e

from ..analytic import GaussianMixture
from ..processes import EDM, VE, VP, SubVP
from . import problems as P

F64 = torch.float64


def _strategy(v):
    return v if isinstance(v, st.SearchStrategy) else st.just(v)


def _interval(draw, t0s, spans, direction):
    t0 = draw(st.sampled_from(t0s))
    span = draw(st.sampled_from(spans))
    backward = draw(st.booleans()) if direction == "either" else direction == "decreasing"
    return t0, (t0 - span if backward else t0 + span)


# --- grids, shapes, dtypes -----------------------------------------------------------------------------------
@st.composite
def time_grids(draw, t0=0.0, t1=1.0, *, min_steps: int = 2, max_steps: int = 16, max_ratio: float = 4.0,
               direction: str = "given") -> torch.Tensor:
    """A strictly monotone float64 grid from ``t0`` to ``t1`` (numbers or strategies).

    Guarantees: ``grid[0] == t0`` and ``grid[-1] == t1`` exactly; ``min_steps <= len(grid) - 1 <= max_steps``;
    the largest step is at most ``max_ratio`` times the smallest (non-uniform, bounded). ``direction="either"``
    also draws whether to run from ``t1`` back to ``t0``. Shrinks toward a uniform grid of ``min_steps`` steps.
    """
    if not (1 <= min_steps <= max_steps) or max_ratio < 1:
        raise ValueError("need 1 <= min_steps <= max_steps and max_ratio >= 1")
    a, b = float(draw(_strategy(t0))), float(draw(_strategy(t1)))
    if a == b:
        raise ValueError("time_grids needs t0 != t1")
    if direction == "either" and draw(st.booleans()):
        a, b = b, a
    n = draw(st.integers(min_steps, max_steps))
    ks = draw(st.lists(st.integers(0, 8), min_size=n, max_size=n))
    w = torch.tensor([1 + (max_ratio - 1) * k / 8 for k in ks], dtype=F64)
    frac = torch.cat([torch.zeros(1, dtype=F64), torch.cumsum(w, 0) / w.sum()])
    grid = a + (b - a) * frac
    grid[0], grid[-1] = a, b
    return grid


def batch_shapes(*, max_batch: int = 3, kinds: tuple[str, ...] = ("vector", "image")) -> st.SearchStrategy:
    """State shapes, batch first: ``"vector"`` ``(B, d)``, ``"image"`` ``(B, C, H, W)`` (small, non-square),
    ``"flat"`` ``(B,)``. Guarantees ``1 <= B <= max_batch`` and every dimension >= 1."""
    b = st.integers(1, max_batch)
    options = {
        "vector": st.tuples(b, st.integers(1, 4)),
        "image": st.tuples(b, st.integers(1, 3), st.integers(1, 4), st.integers(1, 5)),
        "flat": st.tuples(b),
    }
    unknown = set(kinds) - set(options)
    if unknown:
        raise ValueError(f"unknown shape kinds {sorted(unknown)}; allowed: {sorted(options)}")
    return st.one_of(*[options[k] for k in kinds])


def dtypes(*, include_float32: bool = True) -> st.SearchStrategy:
    """``torch.float64`` (shrink target) or ``torch.float32``."""
    return st.sampled_from([torch.float64, torch.float32] if include_float32 else [torch.float64])


# --- ODEs with closed-form solutions -----------------------------------------------------------------------------
@st.composite
def linear_odes(draw, *, dims=(2, 1, 3, 4), direction: str = "either", batch=None) -> P.Problem:
    """[`linear_ode`][sdekit.testing.problems.linear_ode]: ``x' = A x`` with every eigenvalue of ``A`` having real part
    ``-damping``, ``damping ∈ {0.2, …, 1}`` (stable forward, growing at most ``e^{2}`` backward), imaginary parts
    up to about ``2 · scale · sqrt(dim)``; span 0.5–2, start in ``{0, 0.5, -1}``; exact by the matrix
    exponential."""
    dim = draw(st.sampled_from(dims))
    t0, t1 = _interval(draw, (0.0, 0.5, -1.0), (1.0, 2.0, 0.5), direction)
    return P.linear_ode(dim=dim, seed=draw(st.integers(0, 2**16)), damping=draw(st.sampled_from([0.5, 0.2, 0.8, 1.0])),
                        scale=draw(st.sampled_from([1.0, 0.5, 2.0])), t0=t0, t1=t1,
                        batch=draw(_strategy(batch) if batch is not None else st.sampled_from([2, 1, 3])))


@st.composite
def stuart_landau_odes(draw, *, direction: str = "either", batch=None) -> P.Problem:
    """[`stuart_landau`][sdekit.testing.problems.stuart_landau]: a coupled, nonlinear, non-autonomous 2-D system with a
    closed form; growth ``a ∈ [0.5, 1.5]``, frequency 1–3 with chirp ``|κ| <= 1`` and amplitude twist
    ``τ ∈ [0, 1]``, initial radius in ``(0, 0.8]`` (bounded solutions in both directions), span 0.5–2."""
    t0, t1 = _interval(draw, (0.0, 0.5, -0.5), (1.0, 0.5, 2.0), direction)
    return P.stuart_landau(a=draw(st.sampled_from([1.0, 0.5, 1.5])), omega=draw(st.sampled_from([2.0, 1.0, 3.0])),
                           chirp=draw(st.sampled_from([0.5, 0.0, 1.0, -0.5, -1.0])),
                           twist=draw(st.sampled_from([0.5, 0.0, 1.0])),
                           radius=draw(st.sampled_from([0.5, 0.3, 0.8])), t0=t0, t1=t1,
                           batch=draw(_strategy(batch) if batch is not None else st.sampled_from([2, 1, 3])))


@st.composite
def logistic_odes(draw, *, direction: str = "either") -> P.Problem:
    """[`logistic_ode`][sdekit.testing.problems.logistic_ode] with rate 0.5–3, 1–3 initial values in
    ``[0.05, 0.95]``."""
    t0, t1 = _interval(draw, (0.0, 1.0), (1.0, 0.5, 2.0), direction)
    x0 = tuple(k / 20 for k in draw(st.lists(st.integers(1, 19), min_size=1, max_size=3)))
    return P.logistic_ode(rate=draw(st.sampled_from([1.0, 0.5, 2.0, 3.0])), x0=x0, t0=t0, t1=t1)


@st.composite
def riccati_odes(draw, *, direction: str = "either") -> P.Problem:
    """[`riccati_ode`][sdekit.testing.problems.riccati_ode] ``x' = 1 + x²``: ``|x0| <= 0.6``, span 0.2–0.6, so the
    solution ``tan`` stays at least 0.37 from its pole (``|x| <= 2.6``)."""
    t0, t1 = _interval(draw, (0.0, 0.5), (0.6, 0.2, 0.4), direction)
    x0 = tuple(k / 10 for k in draw(st.lists(st.integers(-6, 6), min_size=1, max_size=3)))
    return P.riccati_ode(x0=x0, t0=t0, t1=t1)


@st.composite
def polynomial_odes(draw, *, max_degree: int = 4, direction: str = "either") -> P.Problem:
    """[`polynomial_ode`][sdekit.testing.problems.polynomial_ode]: state-independent polynomial drift of degree
    ``<= max_degree`` (exactly integrated by any method of order > degree)."""
    t0, t1 = _interval(draw, (0.0, 0.5, -1.0), (1.0, 2.0, 0.5), direction)
    return P.polynomial_ode(degree=draw(st.integers(0, max_degree)), seed=draw(st.integers(0, 2**16)), t0=t0, t1=t1,
                            dim=draw(st.integers(1, 3)), batch=draw(st.integers(1, 2)))


def closed_form_odes(*, direction: str = "either") -> st.SearchStrategy:
    """Any of the closed-form ODEs above (linear first: the shrink target)."""
    return st.one_of(linear_odes(direction=direction), stuart_landau_odes(direction=direction),
                     logistic_odes(direction=direction), riccati_odes(direction=direction))


# --- SDEs with exact answers -------------------------------------------------------------------------------
@st.composite
def ou_problems(draw, *, batch=1) -> P.Problem:
    """[`ornstein_uhlenbeck`][sdekit.testing.problems.ornstein_uhlenbeck]: ``theta ∈ [0.5, 3]``, ``sigma ∈ [0.4, 1.2]``,
    ``x0 != mu``, ``t1 ∈ [0.5, 2]``; exact mean, variance and pathwise solution."""
    mu = draw(st.sampled_from([0.5, 0.0, -1.0, 1.0]))
    return P.ornstein_uhlenbeck(theta=draw(st.sampled_from([1.0, 2.0, 0.5, 3.0])), mu=mu,
                                sigma=draw(st.sampled_from([0.8, 0.4, 1.2])),
                                x0=mu + draw(st.sampled_from([1.0, -1.0, 2.0, 0.5])),
                                t1=draw(st.sampled_from([1.0, 0.5, 2.0])), batch=draw(_strategy(batch)))


@st.composite
def linear_sdes(draw, *, batch=1, max_dim: int = 3) -> P.Problem:
    """[`linear_sde`][sdekit.testing.problems.linear_sde]: ``dx = A x dt + B dW``, ``A`` with every eigenvalue's real
    part ``-damping <= -0.25`` (stable), ``B`` of ``dim × noise_dim`` (1–3 each); exact mean, covariance and
    pathwise solution."""
    dims = [d for d in (2, 1, 3) if d <= max_dim]
    return P.linear_sde(dim=draw(st.sampled_from(dims)), noise_dim=draw(st.sampled_from(dims)),
                        seed=draw(st.integers(0, 2**16)), damping=draw(st.sampled_from([0.5, 1.0, 0.25])),
                        scale=draw(st.sampled_from([1.0, 0.5, 2.0])),
                        noise_scale=draw(st.sampled_from([0.5, 1.0, 0.25])),
                        t1=draw(st.sampled_from([1.0, 0.5])), batch=draw(_strategy(batch)))


def additive_linear_sdes(*, batch=1) -> st.SearchStrategy:
    """OU (shrink target) or a multi-dimensional linear SDE: additive noise, exact moments and paths."""
    return st.one_of(ou_problems(batch=batch), linear_sdes(batch=batch))


@st.composite
def gbm_problems(draw, *, batch=1, dim=1) -> P.Problem:
    """[`geometric_brownian_motion`][sdekit.testing.problems.geometric_brownian_motion] (diagonal noise):
    ``mu ∈ [-0.5, 0.5]``,
    ``sigma ∈ [0.6, 1]`` (noise-dominated: Euler–Maruyama shows its strong order 0.5 from 8 steps on)."""
    return P.geometric_brownian_motion(mu=draw(st.sampled_from([0.5, 0.0, -0.5, 0.25])),
                                       sigma=draw(st.sampled_from([0.8, 0.6, 1.0])),
                                       x0=draw(st.sampled_from([1.0, 0.5, 2.0])), t1=1.0,
                                       dim=draw(_strategy(dim)), batch=draw(_strategy(batch)))


@st.composite
def scalar_noise_gbms(draw, *, batch=1) -> P.Problem:
    """[`scalar_noise_gbm`][sdekit.testing.problems.scalar_noise_gbm]: one Brownian motion drives 1–3 coordinates."""
    return P.scalar_noise_gbm(mu=draw(st.sampled_from([0.5, 0.0, -0.5])), sigma=draw(st.sampled_from([0.8, 0.6, 1.0])),
                              spread=draw(st.sampled_from([0.5, 0.0])), dim=draw(st.sampled_from([2, 1, 3])),
                              batch=draw(_strategy(batch)))


@st.composite
def general_noise_gbms(draw, *, batch=1) -> P.Problem:
    """[`general_noise_gbm`][sdekit.testing.problems.general_noise_gbm]: 1–3 Brownian motions drive every coordinate."""
    return P.general_noise_gbm(mu=draw(st.sampled_from([0.5, 0.0, -0.5])), sigma=draw(st.sampled_from([0.6, 0.5, 0.8])),
                               noise_dim=draw(st.sampled_from([2, 1, 3])), dim=draw(st.sampled_from([2, 1])),
                               batch=draw(_strategy(batch)))


@st.composite
def commuting_linear_sdes(draw, *, noise_type: str = "scalar", batch=1) -> P.Problem:
    """[`commuting_linear_sde`][sdekit.testing.problems.commuting_linear_sde]: linear SDEs with non-symmetric,
    commuting drift and
    diffusion matrices (scalar or general noise) whose exact pathwise solution is a matrix exponential; they tell a
    Milstein term ``(∂g/∂x) g`` from the transposed ``(∂g/∂x)ᵀ g``, which agree on the symmetric Jacobians of the
    GBM families."""
    return P.commuting_linear_sde(noise_type, dim=draw(st.sampled_from([2, 3])),
                                  noise_dim=draw(st.sampled_from([2, 3])), seed=draw(st.integers(0, 2**16)),
                                  a=(draw(st.sampled_from([-0.3, 0.0, 0.2])), draw(st.sampled_from([0.4, -0.4]))),
                                  b=(draw(st.sampled_from([0.3, 0.0])), draw(st.sampled_from([0.7, 0.5, -0.6]))),
                                  batch=draw(_strategy(batch)))


@st.composite
def heisenberg_sdes(draw, *, batch=1) -> P.Problem:
    """[`heisenberg_sde`][sdekit.testing.problems.heisenberg_sde]: non-commutative general noise (two Brownian
    motions whose
    diffusion fields do not commute) with an exact pathwise answer up to a fine-grid Lévy-area remainder; no scheme
    without Lévy areas exceeds strong order 0.5 on it. Scales ``s_k ∈ [0.5, 1.2]``, ``kappa ∈ {1, 0.6, 1.5, -1}``."""
    return P.heisenberg_sde(s=(draw(st.sampled_from([1.0, 0.7, 1.2])), draw(st.sampled_from([0.8, 0.5, 1.1]))),
                            kappa=draw(st.sampled_from([1.0, 0.6, 1.5, -1.0])),
                            x0=(draw(st.sampled_from([0.5, 0.0, -1.0])), draw(st.sampled_from([-0.3, 0.0, 0.8])), 0.2),
                            batch=draw(_strategy(batch)))


@st.composite
def sheared_gbms(draw, *, noise_type: str = "scalar", time_dependent: bool = False, batch=1) -> P.Problem:
    """[`sheared_gbm`][sdekit.testing.problems.sheared_gbm]: nonlinear SDEs with a state-dependent, non-symmetric (lower
    bidiagonal) diffusion Jacobian and an exact pathwise solution, on states of shape ``(2,)``, ``(3,)`` or
    ``(1, 2)``; ``time_dependent=True`` makes drift and diffusion depend on t through ``1 + wobble sin(omega t)``
    (a scheme that evaluates a stage at the wrong time loses its order there)."""
    wobble, omega = (draw(st.sampled_from([0.5, -0.4])), draw(st.sampled_from([3.0, 2.0]))) if time_dependent \
        else (0.0, 3.0)
    return P.sheared_gbm(noise_type, state=draw(st.sampled_from([(2,), (3,), (1, 2)])),
                         noise_dim=draw(st.sampled_from([2, 3])), mu=draw(st.sampled_from([0.3, -0.2, 0.0])),
                         sigma=draw(st.sampled_from([0.5, 0.4])), shear=draw(st.sampled_from([1.0, -0.8, 1.5])),
                         wobble=wobble, omega=omega, batch=draw(_strategy(batch)))


# --- diffusion processes -------------------------------------------------------------------------------------
def _rounded(lo: float, hi: float, digits: int = 4) -> st.SearchStrategy:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False).map(lambda v: round(v, digits))


def vp_linear_processes() -> st.SearchStrategy:
    """``VP("linear", beta_min, beta_max)`` with ``0.05 <= beta_min <= 0.5`` and ``5 <= beta_max <= 30``
    (so ``beta_min < beta_max``; score_sde uses 0.1 and 20)."""
    return st.builds(VP, st.just("linear"), beta_min=_rounded(0.05, 0.5), beta_max=_rounded(5.0, 30.0))


def subvp_processes() -> st.SearchStrategy:
    """``SubVP("linear", beta_min, beta_max)`` in the ranges of `vp_linear_processes`."""
    return st.builds(SubVP, st.just("linear"), beta_min=_rounded(0.05, 0.5), beta_max=_rounded(5.0, 30.0))


def vp_cosine_processes() -> st.SearchStrategy:
    """``VP("cosine", s, t_max)`` with offset ``s ∈ [0.004, 0.02]`` and ``t_max ∈ [0.98, 0.9946]`` (finite
    log-SNR at ``t_max``)."""
    return st.builds(VP, st.just("cosine"), s=_rounded(0.004, 0.02, 5), t_max=_rounded(0.98, 0.9946))


def ddpm_process(num_steps: int = 10, beta_start: float = 1e-4, beta_end: float = 0.02, seed: int = 0) -> VP:
    """``VP.from_betas(betas)`` with ``num_steps`` strictly increasing betas from ``beta_start`` to
    ``beta_end``: random positive increments from ``seed`` (seed 0: the linear DDPM schedule)."""
    if not 0 < beta_start < beta_end < 1:
        raise ValueError(f"need 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}")
    if seed == 0:
        w = torch.ones(num_steps - 1, dtype=F64)
    else:
        w = 0.1 + torch.rand(num_steps - 1, generator=torch.Generator().manual_seed(seed), dtype=F64)
    frac = torch.cat([torch.zeros(1, dtype=F64), torch.cumsum(w, 0) / w.sum()])
    return VP.from_betas(beta_start + (beta_end - beta_start) * frac)


def vp_discrete_processes() -> st.SearchStrategy:
    """`ddpm_process`: discrete DDPM schedules of 10–1000 steps, ``beta_start ∈ [1e-4, 1e-3]``,
    ``beta_end ∈ [0.01, 0.05]``, random increasing betas."""
    return st.builds(ddpm_process, num_steps=st.integers(10, 1000), beta_start=_rounded(1e-4, 1e-3, 6),
                     beta_end=_rounded(0.01, 0.05, 5), seed=st.integers(0, 2**16))


def ve_processes() -> st.SearchStrategy:
    """``VE(sigma_min, sigma_max)`` with ``sigma_min ∈ [0.002, 0.05]``, ``sigma_max ∈ [10, 100]``."""
    return st.builds(VE, sigma_min=_rounded(0.002, 0.05, 5), sigma_max=_rounded(10.0, 100.0, 2))


def edm_processes() -> st.SearchStrategy:
    """``EDM(sigma_min, sigma_max, sigma_data)`` with ``sigma_min ∈ [0.002, 0.02]``, ``sigma_max ∈ [10, 160]``,
    ``sigma_data ∈ [0.25, 1]``."""
    return st.builds(EDM, sigma_min=_rounded(0.002, 0.02, 5), sigma_max=_rounded(10.0, 160.0, 2),
                     sigma_data=_rounded(0.25, 1.0, 3))


_PROCESS_KINDS = {
    "vp_linear": vp_linear_processes, "vp_cosine": vp_cosine_processes, "vp_discrete": vp_discrete_processes,
    "subvp": subvp_processes, "ve": ve_processes, "edm": edm_processes,
}


def diffusion_processes(kinds: tuple[str, ...] = tuple(_PROCESS_KINDS)) -> st.SearchStrategy:
    """Any of the process strategies above (``kinds`` selects: ``"vp_linear"``, ``"vp_cosine"``,
    ``"vp_discrete"``, ``"subvp"``, ``"ve"``, ``"edm"``). Guarantees: finite ``alpha``, ``sigma > 0`` and a
    strictly decreasing log-SNR on ``[t_min, t_max]``."""
    unknown = set(kinds) - set(_PROCESS_KINDS)
    if unknown:
        raise ValueError(f"unknown process kinds {sorted(unknown)}; allowed: {sorted(_PROCESS_KINDS)}")
    return st.one_of(*[_PROCESS_KINDS[k]() for k in kinds])


# --- Gaussian mixtures as exact score models -------------------------------------------------------------------
@st.composite
def gaussian_mixtures(draw, *, dims=(1, 4), components=(1, 4), max_condition: float = 100.0) -> GaussianMixture:
    """`GaussianMixture.random <sdekit.analytic.GaussianMixture.random>` with ``dim`` and the number of
    components in the given inclusive ranges; component standard deviations log-uniform in ``[lo, hi]`` with
    ``lo ∈ [0.05, 0.3]`` and ``(hi/lo)² <= max_condition``, so every covariance's condition number is at most
    ``max_condition``."""
    dim = draw(st.integers(*dims))
    k = draw(st.integers(*components))
    lo = draw(st.sampled_from([0.1, 0.05, 0.2, 0.3]))
    cond = draw(st.floats(1.0, float(max_condition)).map(lambda v: round(v, 2)))
    hi = lo * math.sqrt(cond)
    return GaussianMixture.random(dim, k, seed=draw(st.integers(0, 2**16)), std_range=(lo, hi))


@st.composite
def exact_score_models(draw, *, mixtures=None, processes=None):
    """The exact score model ``mixture.model(process)`` of a drawn mixture under a drawn process (its
    ``.mixture`` and ``.process`` give both back)."""
    m = draw(mixtures if mixtures is not None else gaussian_mixtures(dims=(1, 3), components=(1, 3)))
    p = draw(processes if processes is not None else diffusion_processes())
    return m.model(p)


__all__ = [
    "time_grids", "batch_shapes", "dtypes",
    "linear_odes", "stuart_landau_odes", "logistic_odes", "riccati_odes", "polynomial_odes", "closed_form_odes",
    "ou_problems", "linear_sdes", "additive_linear_sdes", "gbm_problems", "scalar_noise_gbms", "general_noise_gbms",
    "commuting_linear_sdes", "heisenberg_sdes", "sheared_gbms",
    "vp_linear_processes", "subvp_processes", "vp_cosine_processes", "vp_discrete_processes", "ddpm_process",
    "ve_processes", "edm_processes", "diffusion_processes", "gaussian_mixtures", "exact_score_models",
]
