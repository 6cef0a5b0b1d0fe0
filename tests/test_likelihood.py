"""Validation of sdekit.likelihood against exact densities: Gaussian mixtures under every process, closed-form
Gaussians, exact discrete probabilities for bits/dim; Hutchinson against the exact trace; bad input.

Every solve is in float64 on tiny problems (D <= 4, B <= 8) so that the ODE error, not rounding, is what the
tolerances bound. The truth at ``t_max`` is passed as ``prior=`` wherever a test measures the ODE error, so
that the prior mismatch (about 1e-2 nats here) does not hide it.
"""

from __future__ import annotations

import math
import pathlib
import re
import warnings

import pytest
import torch

from sdekit import EDM, VE, VP, ScoreModel, SubVP
from sdekit.analytic import GaussianMixture
from sdekit.likelihood import (
    BitsPerDimResult,
    LikelihoodResult,
    bits_per_dim,
    log_likelihood,
    nats_to_bits_per_dim,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
F64 = torch.float64

PROCESSES = {
    "vp_linear": VP,
    "vp_cosine": lambda: VP("cosine"),
    "subvp": SubVP,
    "ve": VE,
    "edm": EDM,
}


pytestmark = pytest.mark.usefixtures("one_thread_module")  # tiny tensors (tests/conftest.py)


def _gmm():
    return GaussianMixture.random(3, 3, seed=1)


def _data(gmm, process, n, seed=0, t=None):
    """Samples of p_t (default t_min): where the density is evaluated in practice."""
    t = process.t_min if t is None else t
    return gmm.marginal(process, t).sample(n, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _exact_prior(gmm, process):
    return lambda z: gmm.log_prob_t(z, process, process.t_max)


class IsotropicGaussian:
    """Data ``N(mean, s² I)`` of any sample shape: closed-form score and log-density of every ``p_t``.

    ``p_t = N(alpha mean, (alpha² s² + sigma²) I)``; written independently of analytic.GaussianMixture.
    """

    def __init__(self, process, sample_shape, mean=0.1, std=0.3):
        self.process, self.sample_shape, self.mean, self.std = process, tuple(sample_shape), mean, std
        self.nfe = 0

    def _moments(self, t):
        t = torch.as_tensor(t, dtype=F64)
        a, s = self.process.alpha(t), self.process.sigma(t)
        return a * self.mean, a * a * self.std**2 + s * s

    def score(self, x, t):
        self.nfe += 1
        m, c = self._moments(t)
        return -(x - m.to(x.dtype)) / c.to(x.dtype)

    def log_prob_t(self, x, t):
        m, c = self._moments(t)
        d = x[0].numel()
        sq = ((x.to(F64) - m) ** 2).reshape(x.shape[0], -1).sum(-1)
        return -0.5 * sq / c - 0.5 * d * torch.log(2 * math.pi * c)


# --- exact divergence against exact densities ------------------------------------------------------------
@pytest.mark.parametrize("name", PROCESSES)
def test_exact_divergence_matches_mixture_density(name):
    process = PROCESSES[name]()
    gmm = _gmm()
    x = _data(gmm, process, 6)
    res = log_likelihood(gmm.model(process), x, rtol=1e-6, atol=1e-6, prior=_exact_prior(gmm, process))
    truth = gmm.log_prob_t(x, process, process.t_min)
    # dopri5 at rtol = atol = 1e-6 leaves at most ~2e-5 nats here (measured on all five processes); 1e-3 nats
    # is the requirement, and any error in the divergence formula (a missing D·f term, a factor ½ on g², a
    # sign) costs 0.1 to 10 nats.
    assert isinstance(res, LikelihoodResult)
    assert res.log_prob.shape == (6,) and res.log_prob.dtype == F64
    assert (res.log_prob - truth).abs().max() < 1e-3
    assert torch.allclose(res.log_prob, res.prior_log_prob + res.delta)
    assert res.stats["divergence"] == "exact" and res.stats["backend"] == "func"
    assert res.stats["nfe"] > 0 and res.stats["n_accepted"] > 0 and res.stats["wall_time"] > 0
    assert res.stats["model_evals"] >= res.stats["nfe"]


def test_process_prior_changes_only_the_prior_term():
    process = VP()
    gmm = _gmm()
    x = _data(gmm, process, 6)
    model = gmm.model(process)
    exact = log_likelihood(model, x, rtol=1e-6, atol=1e-6, prior=_exact_prior(gmm, process))
    default = log_likelihood(model, x, rtol=1e-6, atol=1e-6)
    # The prior does not enter the ODE: same trajectory, same integral, bit for bit.
    assert torch.equal(default.latent, exact.latent) and torch.equal(default.delta, exact.delta)
    mismatch = process.prior_log_prob(exact.latent) - gmm.log_prob_t(exact.latent, process, process.t_max)
    assert torch.allclose(default.log_prob - exact.log_prob, mismatch, rtol=0, atol=1e-12)
    # With the process prior the error is the prior mismatch (about 1e-2 nats for this mixture at t_max, where
    # alpha = 6.6e-3), ten times or more the ODE error of the exact-prior run.
    truth = gmm.log_prob_t(x, process, process.t_min)
    ode_error = (exact.log_prob - truth).abs().max()
    assert (default.log_prob - truth).abs().max() > 10 * ode_error


@pytest.mark.parametrize("process", [VP(), EDM()], ids=["vp_linear", "edm"])
@pytest.mark.parametrize("shape", [(1,), (2,), (1, 2, 2)], ids=["1d", "2d", "image"])
def test_single_gaussian_closed_form(process, shape):
    model = IsotropicGaussian(process, shape)
    x = 0.5 * torch.randn(5, *shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    res = log_likelihood(model, x, rtol=1e-7, atol=1e-7, prior=lambda z: model.log_prob_t(z, process.t_max))
    truth = model.log_prob_t(x, process.t_min)
    # Same ODE-error budget as above; the linear PF-ODE of a Gaussian is easy, measured < 1e-6.
    assert (res.log_prob - truth).abs().max() < 1e-4
    # The latent too: x_T - alpha_T m = sqrt(c_T / c_start) (x - alpha_start m), c = alpha² s² + sigma².
    m0, c0 = model._moments(process.t_min)
    m1, c1 = model._moments(process.t_max)
    latent = m1 + torch.sqrt(c1 / c0) * (x - m0)
    assert res.latent.shape == x.shape
    assert torch.allclose(res.latent, latent, rtol=1e-5, atol=1e-5 * float(c1.sqrt()))


def test_full_covariance_2d_gaussian_closed_form():
    process = VE()
    cov = torch.tensor([[0.3, 0.12], [0.12, 0.08]], dtype=F64)
    mean = torch.tensor([0.5, -0.2], dtype=F64)
    gmm = GaussianMixture(mean[None], cov[None], torch.ones(1, dtype=F64))
    x = _data(gmm, process, 5)

    def closed_form(z, t):
        t = torch.tensor(t, dtype=F64)
        a, s = process.alpha(t), process.sigma(t)
        law = torch.distributions.MultivariateNormal(a * mean, a * a * cov + s * s * torch.eye(2, dtype=F64))
        return law.log_prob(z)

    res = log_likelihood(gmm.model(process), x, rtol=1e-7, atol=1e-7,
                         prior=lambda z: closed_form(z, process.t_max))
    assert (res.log_prob - closed_form(x, process.t_min)).abs().max() < 1e-4


def test_t_start_zero_is_the_clean_data_density():
    process = VP()
    gmm = _gmm()
    x = gmm.sample(5, generator=torch.Generator().manual_seed(1), dtype=F64)
    res = log_likelihood(gmm.model(process), x, t_start=0.0, rtol=1e-7, atol=1e-7,
                         prior=_exact_prior(gmm, process))
    clean = gmm.log_prob(x)
    assert (res.log_prob - clean).abs().max() < 1e-4
    # ... which differs from the density at t_min (noised with sigma = 0.01; measured up to 8.5e-3 nats here),
    # by more than ten times the tolerance on the ODE error (measured 4e-7).
    assert (gmm.log_prob_t(x, process, process.t_min) - clean).abs().max() > 1e-3
    assert res.stats["t_start"] == 0.0


def test_error_decreases_as_rtol_tightens():
    process = VE()  # the largest errors at loose tolerance among the processes (0.07 nats at 1e-3)
    gmm = _gmm()
    x = _data(gmm, process, 6)
    model = gmm.model(process)
    truth = gmm.log_prob_t(x, process, process.t_min)
    errors, nfes = [], []
    for tol in (1e-3, 1e-5, 1e-7):
        res = log_likelihood(model, x, rtol=tol, atol=tol, prior=_exact_prior(gmm, process))
        errors.append(float((res.log_prob - truth).abs().max()))
        nfes.append(res.stats["nfe"])
    # Measured 7e-2, 1.5e-4, 1.2e-7: each two decades of tolerance buy well over a decade of accuracy, so a
    # factor 10 per rung leaves room for the noise of adaptive step selection yet fails on a flat curve.
    assert errors[0] > 10 * errors[1] > 100 * errors[2]
    assert nfes[0] < nfes[1] < nfes[2]


def test_fixed_grid_solvers():
    process = VP()
    gmm = _gmm()
    x = _data(gmm, process, 4)
    model = gmm.model(process)
    truth = gmm.log_prob_t(x, process, process.t_min)
    res = log_likelihood(model, x, solver="rk4", steps=50, prior=_exact_prior(gmm, process))
    assert res.stats["nfe"] == 200 and res.stats["n_steps"] == 50
    assert (res.log_prob - truth).abs().max() < 1e-3  # measured 2e-5 on the log-SNR grid
    heun = log_likelihood(model, x, solver="heun", steps=50, prior=_exact_prior(gmm, process))
    # A second-order method on the same grid: much worse than RK4, but converging (measured 2e-2).
    assert 1e-3 < (heun.log_prob - truth).abs().max() < 0.2


# --- Hutchinson ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
def test_hutchinson_agrees_with_exact_within_standard_errors(probe):
    process = VP()
    gmm = _gmm()
    x = _data(gmm, process, 8)
    model = gmm.model(process)
    exact = log_likelihood(model, x, rtol=1e-6, atol=1e-6)
    res = log_likelihood(model, x, "hutchinson", n_probes=256, probe=probe, rtol=1e-6, atol=1e-6,
                         generator=torch.Generator().manual_seed(0))
    assert res.delta_per_probe.shape == (256, 8) and res.stderr.shape == (8,)
    assert torch.allclose(res.delta, res.delta_per_probe.mean(0))
    z = (res.log_prob - exact.log_prob) / res.stderr
    # Unbiased with 256 probes: z is close to N(0, 1) (checked over 240 blocks of 2000 Gaussian probes: std 1.05;
    # the per-probe integrals are right-skewed, skewness 2). The batch mean must lie within 3 standard errors;
    # 4 per sample keeps the family-wise false alarm rate of 8 samples below 1e-3. The seed is fixed.
    mean_se = res.stderr.pow(2).sum().sqrt() / 8
    assert abs(float((res.log_prob - exact.log_prob).mean())) < 3 * mean_se
    assert z.abs().max() < 4
    # The test has power: the standard errors are small compared with the per-sample log-densities' spread.
    assert res.stderr.max() < 0.5


def test_hutchinson_standard_error_scales_as_inverse_sqrt_probes():
    process = EDM()
    gmm = _gmm()
    x = _data(gmm, process, 8)
    model = gmm.model(process)
    few = log_likelihood(model, x, "hutchinson", n_probes=16, probe="gaussian", rtol=1e-5, atol=1e-5,
                         generator=torch.Generator().manual_seed(1))
    many = log_likelihood(model, x, "hutchinson", n_probes=256, probe="gaussian", rtol=1e-5, atol=1e-5,
                          generator=torch.Generator().manual_seed(2))
    # sqrt(256/16) = 4; the ratio of mean standard errors over 8 samples has a spread of about 10% with 16
    # probes (std-of-std ~ 1/sqrt(2·15) per sample, averaged over 8, plus skewness).
    ratio = float(few.stderr.mean() / many.stderr.mean())
    assert 2.5 < ratio < 6


def test_rademacher_is_exact_for_a_diagonal_jacobian():
    # One component with diagonal covariance: the score's Jacobian is diagonal at every t, so εᵀAε = tr A for
    # every sign vector ε: zero variance, and every probe's integral equals the exact one.
    process = VP()
    gmm = GaussianMixture(torch.tensor([[0.3, -0.5, 1.0]]), torch.tensor([[0.04, 0.25, 0.09]]), torch.ones(1))
    x = _data(gmm, process, 4)
    model = gmm.model(process)
    exact = log_likelihood(model, x, rtol=1e-7, atol=1e-7)
    res = log_likelihood(model, x, "hutchinson", n_probes=4, probe="rademacher", rtol=1e-7, atol=1e-7,
                         generator=torch.Generator().manual_seed(0))
    # Both solves are held to 1e-7; their step sequences differ, so agreement is to ~1e-6, not bitwise.
    assert (res.delta_per_probe - exact.delta).abs().max() < 1e-5
    assert res.stderr.max() < 1e-5


def test_hutchinson_is_deterministic_for_a_fixed_generator():
    process = VP()
    gmm = _gmm()
    x = _data(gmm, process, 3)
    model = gmm.model(process)

    def run(seed):
        return log_likelihood(model, x, "hutchinson", n_probes=3, probe="gaussian", rtol=1e-4, atol=1e-4,
                              generator=None if seed is None else torch.Generator().manual_seed(seed))

    a, b, c = run(5), run(5), run(6)
    assert torch.equal(a.log_prob, b.log_prob) and torch.equal(a.stderr, b.stderr)
    assert not torch.equal(a.delta_per_probe, c.delta_per_probe)
    fresh = run(None)  # a generator seeded from a non-deterministic source, its seed reported
    again = run(fresh.stats["seed"])
    assert torch.equal(fresh.log_prob, again.log_prob)


def test_single_probe_has_nan_stderr():
    process = VP()
    gmm = _gmm()
    res = log_likelihood(gmm.model(process), _data(gmm, process, 2), "hutchinson", n_probes=1, rtol=1e-3,
                         atol=1e-3, generator=torch.Generator().manual_seed(0))
    assert torch.isnan(res.stderr).all() and torch.isfinite(res.log_prob).all()


# --- divergence machinery -----------------------------------------------------------------------------------
def test_chunking_and_backends_agree():
    process = EDM()
    gmm = _gmm()
    x = _data(gmm, process, 4)
    model = gmm.model(process)
    kw = dict(rtol=1e-5, atol=1e-5)
    ref = log_likelihood(model, x, **kw)
    assert ref.stats["chunk_size"] == 3  # the whole basis fits the default 1 GiB budget
    for options in (dict(chunk_size=1), dict(chunk_size=2), dict(backend="autograd"),
                    dict(memory_budget_bytes=2 * 4 * 3 * 8 * 8)):  # room for two basis vectors
        res = log_likelihood(model, x, **kw, **options)
        # The same arithmetic up to summation order: the same steps, agreement to rounding.
        assert torch.allclose(res.log_prob, ref.log_prob, rtol=0, atol=1e-10), options
    assert log_likelihood(model, x, **kw, memory_budget_bytes=2 * 4 * 3 * 8 * 8).stats["chunk_size"] == 2
    hutch = dict(kw, n_probes=3, probe="gaussian")
    a = log_likelihood(model, x, "hutchinson", **hutch, generator=torch.Generator().manual_seed(0))
    b = log_likelihood(model, x, "hutchinson", **hutch, generator=torch.Generator().manual_seed(0),
                       backend="autograd", chunk_size=2)
    assert torch.allclose(a.delta_per_probe, b.delta_per_probe, rtol=0, atol=1e-10)


class _OldStyleSquare(torch.autograd.Function):
    """An autograd.Function without setup_context: torch.func refuses to transform it, autograd runs it."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


def test_falls_back_to_autograd_when_torch_func_cannot_trace_the_model():
    process = VP()
    traced = IsotropicGaussian(process, (2,))

    class Untraceable(IsotropicGaussian):
        def score(self, x, t):
            return super().score(_OldStyleSquare.apply(x) * 0 + x, t)  # the same score through the Function

    model = Untraceable(process, (2,))
    x = 0.5 * torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    with pytest.warns(RuntimeWarning, match="falling back"):
        res = log_likelihood(model, x, rtol=1e-6, atol=1e-6)
    assert res.stats["backend"] == "autograd"
    ref = log_likelihood(traced, x, rtol=1e-6, atol=1e-6)
    assert ref.stats["backend"] == "func"
    assert torch.allclose(res.log_prob, ref.log_prob, rtol=0, atol=1e-10)
    with pytest.raises(RuntimeError):
        log_likelihood(Untraceable(process, (2,)), x, backend="func")


def test_float32_and_score_model_wrapper():
    # A plain ScoreModel around an eps-network (the Gaussian's exact eps), in float32 at the default tolerance.
    process = VP()
    gauss = IsotropicGaussian(process, (2,))

    def eps_net(x, t):
        t0 = t[0].to(F64)
        return (-process.sigma(t0) * gauss.score(x.to(F64), t0)).to(x.dtype)

    model = ScoreModel(eps_net, process, prediction="eps", sample_shape=(2,))
    x = 0.5 * torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    res = log_likelihood(model, x, prior=lambda z: gauss.log_prob_t(z, process.t_max).to(z.dtype))
    assert res.log_prob.dtype == torch.float32
    # float32 rounding over ~100 steps at rtol = 1e-5: measured 1e-4 nats (on 4-nat values); 1e-3 allowed.
    assert (res.log_prob.to(F64) - gauss.log_prob_t(x, process.t_min)).abs().max() < 1e-3
    res64 = log_likelihood(model, x, dtype=F64, rtol=1e-7, atol=1e-7)
    assert res64.log_prob.dtype == F64


# --- bits per dimension --------------------------------------------------------------------------------------
def test_bits_per_dim_offset_of_a_uniform_density_is_eight_bits():
    # A density uniform on [-1, 1]^D is 2^-D: the dequantized 8-bit data is then uniform on 256 levels per
    # dimension, exactly 8 bits. A wrong change of variables (log 127.5, or 2/255) misses by >= 5.6e-3 bits.
    for dim in (1, 3, 3072):
        log_px = torch.tensor([-dim * math.log(2.0)], dtype=F64)
        assert abs(float(nats_to_bits_per_dim(log_px, dim)) - 8.0) < 1e-12


def test_bits_per_dim_bounds_the_exact_discrete_probability():
    # Independent of the ODE: for x ~ N(mu, c) per dimension, E_u[log N(x)] over a bin is closed form, and the
    # exact bin probability is a difference of normal CDFs. Jensen: dequantized bpd >= discrete bpd, and for a
    # Gaussian this wide (std 0.3 vs bin 1/128) the gap is measured 4e-6 to 4e-5 bits; an error in the offset
    # of 5.6e-3 bits (log 127.5 for log 128) or more fails.
    mu, c, dim, h = 0.1, 0.09, 4, 1 / 128
    levels = torch.randint(90, 160, (16, dim), generator=torch.Generator().manual_seed(0)).to(F64)
    lo = levels / 128 - 1
    second_moment = (lo + h / 2 - mu) ** 2 + h * h / 12
    expected_log_px = (-0.5 * second_moment / c - 0.5 * math.log(2 * math.pi * c)).sum(-1)
    normal = torch.distributions.Normal(mu, math.sqrt(c))
    discrete_bpd = -(normal.cdf(lo + h) - normal.cdf(lo)).log().sum(-1) / (dim * math.log(2))
    gap = nats_to_bits_per_dim(expected_log_px, dim) - discrete_bpd
    assert (gap >= 0).all() and (gap < 1e-4).all()


@pytest.mark.parametrize("as_uint8", [True, False], ids=["uint8", "float"])
def test_bits_per_dim_end_to_end(as_uint8):
    process = VP()
    model = IsotropicGaussian(process, (1, 2, 2), mean=0.1, std=0.3)
    x = model.mean + model.std * torch.randn(6, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    images = ((x + 1) * 128).floor().clamp(0, 255)
    images = images.to(torch.uint8) if as_uint8 else images
    n_dequant, dim = 3, 4
    res = bits_per_dim(model, images, n_dequant=n_dequant, generator=torch.Generator().manual_seed(7),
                       dtype=F64, rtol=1e-7, atol=1e-7, prior=lambda z: model.log_prob_t(z, process.t_max))
    assert isinstance(res, BitsPerDimResult)
    assert res.bpd.shape == (6,) and res.bpd_per_draw.shape == (n_dequant, 6)
    # The documented dequantization, reproduced from the same seed: u = rand((n_dequant, *images.shape)).
    u = torch.rand((n_dequant, *images.shape), generator=torch.Generator().manual_seed(7), dtype=F64)
    x_deq = ((images.to(F64) + u) / 128 - 1).reshape(-1, 1, 2, 2)
    log_py = model.log_prob_t(x_deq, process.t_min) - dim * math.log(128)
    expected = (-log_py / (dim * math.log(2))).reshape(n_dequant, 6)
    # ODE error < 1e-4 nats (closed-form test above) is < 1e-4 / (4 ln 2) = 3.6e-5 bits per dimension.
    assert (res.bpd_per_draw - expected).abs().max() < 1e-4
    assert torch.allclose(res.bpd, res.bpd_per_draw.mean(0))
    assert abs(res.mean - float(res.bpd.mean())) < 1e-12
    assert abs(res.stderr - float(res.bpd.std()) / math.sqrt(6)) < 1e-12
    again = bits_per_dim(model, images, n_dequant=n_dequant, generator=torch.Generator().manual_seed(7),
                         dtype=F64, rtol=1e-7, atol=1e-7, prior=lambda z: model.log_prob_t(z, process.t_max))
    assert torch.equal(again.bpd, res.bpd)


def test_bits_per_dim_default_dtype_and_hutchinson():
    process = VP()
    model = IsotropicGaussian(process, (3,))
    images = torch.tensor([[120, 130, 140], [100, 128, 150]], dtype=torch.uint8)
    res = bits_per_dim(model, images, divergence="hutchinson", n_probes=2, rtol=1e-4, atol=1e-4)
    assert res.bpd.dtype == torch.float32  # uint8 images compute in float32 unless told otherwise
    assert res.likelihood.stderr is not None and "seed" in res.likelihood.stats
    assert 0 < res.mean < 16


def test_bits_per_dim_offset_for_other_quantizations():
    # A density uniform on the dequantized range [offset, offset + scale · levels)^D is (scale · levels)^-D:
    # the data are then uniform on `levels` levels per dimension, log2(levels) bits exactly. For the digits
    # convention (17 levels, bin centres k/8 - 1): scale 1/8, offset -1 - 1/16, log2(17) = 4.087 bits.
    for levels, scale in ((17, 1 / 8), (256, 1 / 128), (2, 0.5), (1000, 1e-3)):
        for dim in (1, 64):
            log_px = torch.tensor([-dim * math.log(scale * levels)], dtype=F64)
            assert abs(float(nats_to_bits_per_dim(log_px, dim, scale)) - math.log2(levels)) < 1e-12
    with pytest.raises(ValueError, match="scale must be a positive"):
        nats_to_bits_per_dim(torch.zeros(1), 4, 0.0)


def test_bits_per_dim_with_17_levels_end_to_end():
    # The documented map x = scale · (k + u) + offset, reproduced from the same seed, and the - log2(scale)
    # offset; the model is an exact Gaussian, so the only error is the ODE's (< 1e-4 nats, as above).
    process = VP()
    model = IsotropicGaussian(process, (4,), mean=0.0, std=0.5)
    levels, scale, offset = 17, 1 / 8, -1 - 1 / 16
    images = torch.randint(0, levels, (5, 4), generator=torch.Generator().manual_seed(0))
    res = bits_per_dim(model, images, levels=levels, scale=scale, offset=offset, n_dequant=2, dtype=F64,
                       generator=torch.Generator().manual_seed(3), rtol=1e-7, atol=1e-7,
                       prior=lambda z: model.log_prob_t(z, process.t_max))
    u = torch.rand((2, 5, 4), generator=torch.Generator().manual_seed(3), dtype=F64)
    x = ((images.to(F64) + u) * scale + offset).reshape(-1, 4)
    expected = ((-model.log_prob_t(x, process.t_min) / (4 * math.log(2))) + 3).reshape(2, 5)
    assert (res.bpd_per_draw - expected).abs().max() < 1e-4
    # The default map for 17 levels is 2/17 per level from -1 (a different, also valid, convention).
    default = bits_per_dim(model, images, levels=levels, dtype=F64, generator=torch.Generator().manual_seed(3),
                           rtol=1e-7, atol=1e-7, prior=lambda z: model.log_prob_t(z, process.t_max))
    x2 = ((images.to(F64) + u[:1]) * (2 / 17) - 1).reshape(-1, 4)
    expected2 = -model.log_prob_t(x2, process.t_min) / (4 * math.log(2)) - math.log2(2 / 17)
    assert (default.bpd - expected2).abs().max() < 1e-4
    with pytest.raises(ValueError, match=r"integer pixel levels 0..16"):
        bits_per_dim(model, torch.full_like(images, levels), levels=levels)
    with pytest.raises(ValueError, match="levels must be an int >= 2"):
        bits_per_dim(model, images, levels=1)
    with pytest.raises(ValueError, match="scale must be > 0"):
        bits_per_dim(model, images, levels=levels, scale=-0.1)
    with pytest.raises(TypeError, match="offset must be a finite number"):
        bits_per_dim(model, images, levels=levels, offset=float("nan"))


@pytest.mark.parametrize(
    "images, match",
    [
        (torch.tensor([[0.5, 0.2]]), "integer pixel levels"),  # [0, 1] data by mistake
        (torch.tensor([[-1.0, 1.0]]), "integer pixel levels"),
        (torch.tensor([[0.0, 256.0]]), "integer pixel levels"),
        (torch.tensor([[float("nan"), 1.0]]), "NaN"),
        (torch.tensor([3.0, 4.0]), "batch-first"),
    ],
)
def test_bits_per_dim_rejects_bad_images(images, match):
    model = IsotropicGaussian(VP(), (2,))
    with pytest.raises(ValueError, match=match):
        bits_per_dim(model, images)
    with pytest.raises(ValueError, match="n_dequant"):
        bits_per_dim(model, torch.zeros(1, 2), n_dequant=0)


# --- bad input ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gmm_setup():
    process = VP()
    gmm = _gmm()
    return gmm.model(process), _data(gmm, process, 2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_rejects_nonfinite_input(gmm_setup, bad):
    model, x = gmm_setup
    x = x.clone()
    x[1, 0] = bad
    with pytest.raises(ValueError, match="NaN/Inf"):
        log_likelihood(model, x)


def test_rejects_wrong_sample_shape(gmm_setup):
    model, x = gmm_setup
    with pytest.raises(ValueError, match=r"sample shape \(4,\) but the model takes \(3,\)"):
        log_likelihood(model, torch.zeros(2, 4, dtype=F64))
    # Without a declared sample_shape the model's own error surfaces.
    process = VP()
    bare = _gmm().model(process)
    bare.sample_shape = None
    with pytest.raises(ValueError, match="x must have shape"):
        log_likelihood(bare, torch.zeros(2, 4, dtype=F64))
    with pytest.raises(ValueError, match="batch-first"):
        log_likelihood(model, torch.zeros(3, dtype=F64))
    with pytest.raises(TypeError, match="floating-point"):
        log_likelihood(model, torch.zeros(2, 3, dtype=torch.uint8))


def test_max_steps_exceeded_propagates(gmm_setup):
    model, x = gmm_setup
    with pytest.raises(RuntimeError, match="log_likelihood: .*exceeded max_steps=5"):
        log_likelihood(model, x, rtol=1e-8, atol=1e-8, max_steps=5)


def test_dimension_too_large_for_exact_trace_suggests_hutchinson():
    process = VP()
    model = IsotropicGaussian(process, (3, 8, 8))  # D = 192
    x = torch.zeros(2, 3, 8, 8, dtype=F64)
    with pytest.raises(ValueError, match="exact_max_dim = 100.*hutchinson"):
        log_likelihood(model, x, exact_max_dim=100)
    with pytest.raises(ValueError, match="memory_budget_bytes.*hutchinson"):
        log_likelihood(model, x, memory_budget_bytes=1000)
    res = log_likelihood(model, x, "hutchinson", n_probes=2, rtol=1e-3, atol=1e-3, exact_max_dim=100,
                         generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(res.log_prob).all()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(divergence="trace"), ValueError, "unknown divergence 'trace'"),
        (dict(divergence="hutchinson", probe="normal"), ValueError, "unknown probe 'normal'"),
        (dict(divergence="hutchinson", n_probes=0), ValueError, "n_probes must be an int >= 1"),
        (dict(backend="jax"), ValueError, "unknown backend"),
        (dict(spacing="random"), ValueError, "unknown spacing"),
        (dict(t_start=1.0), ValueError, "t_start=1 must lie in"),
        (dict(t_start=-0.1), ValueError, "t_start=-0.1 must lie in"),
        (dict(solver="rk4"), ValueError, "give steps=N"),
        (dict(solver="nope"), ValueError, "unknown solver"),
        (dict(steps=0), ValueError, "steps must be an int >= 1"),
        (dict(prior="standard"), ValueError, "prior must be 'process' or a callable"),
        (dict(prior=lambda z: z.sum()), ValueError, r"the prior returned shape \(\)"),
        (dict(chunk_size=0), ValueError, "chunk_size must be an int >= 1"),
    ],
)
def test_bad_options(gmm_setup, kwargs, error, match):
    model, x = gmm_setup
    with pytest.raises(error, match=match):
        log_likelihood(model, x, rtol=1e-3, atol=1e-3, **kwargs)


def test_infinite_score_at_t_start_is_named():
    # An eps-model's score -eps/sigma is infinite at t = 0 of a VP process (sigma = 0).
    process = VP()
    model = ScoreModel(lambda x, t: x, process, prediction="eps", sample_shape=(2,))
    with pytest.raises(FloatingPointError, match="not finite at t_start = 0.*sigma = 0"):
        log_likelihood(model, torch.ones(2, 2, dtype=F64), t_start=0.0, spacing="time", steps=4, solver="euler")


def test_rejects_model_without_score_or_process():
    x = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(TypeError, match="score"):
        log_likelihood(object(), x)

    class NoProcess:
        def score(self, x, t):
            return -x

    with pytest.raises(TypeError, match="process="):
        log_likelihood(NoProcess(), x)
    res = log_likelihood(NoProcess(), x, process=VP(), rtol=1e-3, atol=1e-3)  # process given explicitly
    assert torch.isfinite(res.log_prob).all()


# --- the documentation's code runs ------------------------------------------------------------------------------
def test_docs_examples_run():
    text = (ROOT / "docs" / "likelihood.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "docs/likelihood.md has no python example"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for block in blocks:
            exec(compile(block, "docs/likelihood.md", "exec"), {})
