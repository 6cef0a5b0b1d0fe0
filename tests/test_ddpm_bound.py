"""Validation of the DDPM variational bound (sdekit.likelihood.ddpm_bound) and its discretized Gaussian decoder.

(a) the decoder against quadrature of the Gaussian over every bin (scipy; mpmath far in the tails), edge bins to
±∞, summing to 1; (b) every term against an independent computation (paper formulas with numpy coefficients,
torch.distributions KLs, a Monte-Carlo KL, the SNR form) from the same documented noise draws; (c) exact ground
truth: a Gaussian mixture quantized to 16 levels, whose exact discrete log-probabilities are products of normal-CDF
differences, under exact mixture models on discrete schedules, and the probability-flow route beside it; (d) the
Monte-Carlo estimate over steps against the full sum; (e) bad input. Everything in float64 unless a test is about
float32.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from scipy import integrate, stats

from sdekit import VP, ScoreModel
from sdekit.analytic import GaussianMixture
from sdekit.likelihood import (
    BitsPerDimResult,
    DDPMBoundResult,
    bits_per_dim,
    ddpm_bound,
    discretized_gaussian_log_likelihood,
)

F64 = torch.float64
LN2 = math.log(2.0)


pytestmark = pytest.mark.usefixtures("one_thread_module")  # tiny tensors (tests/conftest.py)


def _centres(levels):
    return 2 * torch.arange(levels, dtype=F64) / (levels - 1) - 1  # DDPM's data 2k/(L - 1) - 1


def _edges(levels):
    """Bin edges of DDPM's data (width 2/(L - 1) around the centres), the outer ones at ±∞."""
    half = 1 / (levels - 1)
    lo, hi = _centres(levels) - half, _centres(levels) + half
    lo[0], hi[-1] = -math.inf, math.inf
    return lo, hi


# --- (a) the decoder ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("levels", [2, 5, 16, 256])
@pytest.mark.parametrize("mean, std", [(0.1, 0.3), (-0.97, 0.004), (1.4, 0.05), (0.0, 5.0), (-3.0, 0.5)])
def test_decoder_matches_quadrature_and_sums_to_one(levels, mean, std):
    x = _centres(levels)
    log_p = discretized_gaussian_log_likelihood(x, mean, math.log(std), levels)
    assert log_p.shape == x.shape and log_p.dtype == F64
    # The probabilities of all bins, edge bins extended to ±∞, sum to 1 (float64 rounding over <= 256 terms).
    assert abs(float(torch.logsumexp(log_p, 0))) < 1e-12
    lo, hi = _edges(levels)
    for k in range(levels):
        ref, err = integrate.quad(stats.norm.pdf, float(lo[k]), float(hi[k]), args=(mean, std), epsabs=0,
                                  epsrel=1e-12, limit=200)
        if ref < 1e-250:  # below what quad resolves: the far tail is checked against mpmath below
            continue
        # quad's relative accuracy is ~1e-12 here; 1e-9 in log-probability leaves room, and any mistake in a bin
        # edge (a half-width of 1/255 vs 1/256, an edge bin not extended) is off by > 1e-3.
        assert abs(float(log_p[k]) - math.log(ref)) < 1e-9, (k, float(log_p[k]), math.log(ref))


def test_decoder_far_tails_against_mpmath():
    # Bins 40 to 5000 standard deviations from the mean: probabilities down to e^-1e7, far below float64's range,
    # whose logs must still be right (the DDPM code clamps at 1e-12; cancellation would give -inf or NaN).
    mpmath.mp.dps = 40
    levels = 256
    x = _centres(levels)
    lo, hi = _edges(levels)
    for mean, std in ((-0.95, 0.004), (0.99, 0.0002), (-1.0, 0.01)):
        log_p = discretized_gaussian_log_likelihood(x, mean, math.log(std), levels)
        assert torch.isfinite(log_p).all()
        for k in (0, 1, 17, 128, 200, 254, 255):
            a = mpmath.mpf(-math.inf) if k == 0 else (mpmath.mpf(float(lo[k])) - mean) / std
            b = mpmath.mpf(math.inf) if k == levels - 1 else (mpmath.mpf(float(hi[k])) - mean) / std
            if a + b > 0:  # the upper tail: 1 - Φ is what has the digits (mpmath works to 40 of them)
                a, b = -b, -a
            ref = float(mpmath.log(mpmath.ncdf(b) - mpmath.ncdf(a)))
            assert abs(float(log_p[k]) - ref) <= 1e-10 * max(1.0, abs(ref)), (mean, std, k, float(log_p[k]), ref)


def test_decoder_broadcasting_dtype_gradients_and_other_bins():
    gen = torch.Generator().manual_seed(0)
    k = torch.randint(0, 16, (3, 2, 4), generator=gen)
    x = (2 * k / 15 - 1).to(torch.float32)
    mean = torch.randn(3, 2, 4, generator=gen) * 2
    log_scale = torch.tensor(math.log(0.02))
    log_p = discretized_gaussian_log_likelihood(x, mean, log_scale, 16)
    assert log_p.shape == (3, 2, 4) and log_p.dtype == torch.float32
    ref = discretized_gaussian_log_likelihood(x.to(F64), mean.to(F64), log_scale.to(F64), 16)
    assert torch.allclose(log_p.to(F64), ref, rtol=1e-6)
    # Gradients are finite for every bin, edge bins and tails included (the where-branches are kept separate).
    mean64 = mean.to(F64).requires_grad_(True)
    ls = torch.full((3, 2, 4), math.log(0.02), dtype=F64, requires_grad=True)
    discretized_gaussian_log_likelihood(x.to(F64), mean64, ls, 16).sum().backward()
    assert torch.isfinite(mean64.grad).all() and torch.isfinite(ls.grad).all()
    # Other bins: 17 levels on k/8 - 1 (the digits' convention), given as scale = 1/8, offset = -17/16.
    centres = torch.arange(17, dtype=F64) / 8 - 1
    log_p17 = discretized_gaussian_log_likelihood(centres, 0.2, math.log(0.1), 17, scale=1 / 8, offset=-17 / 16)
    assert abs(float(torch.logsumexp(log_p17, 0))) < 1e-12
    p9 = stats.norm.cdf(centres[9] + 1 / 16, 0.2, 0.1) - stats.norm.cdf(centres[9] - 1 / 16, 0.2, 0.1)
    assert abs(float(log_p17[9]) - math.log(p9)) < 1e-10
    # ... which are the defaults for 17 levels (2/(L - 1) = 1/8, -1 - 1/(L - 1) = -17/16).
    assert torch.equal(log_p17, discretized_gaussian_log_likelihood(centres, 0.2, math.log(0.1), 17))


# --- (b) every term against an independent computation ------------------------------------------------------
BETAS = torch.linspace(0.01, 0.3, 8, dtype=F64)  # N = 8: every term checked by hand below


class RecordingNet:
    """An x0-predicting "network" with a time dependence, recording the time inputs it receives."""

    def __init__(self, amplitude=0.6):
        self.amplitude = amplitude
        self.times = []

    def __call__(self, x, t_in, label=None):
        self.times.append(t_in.clone())
        shift = 0.02 * t_in.reshape(-1, *([1] * (x.ndim - 1)))
        if label is not None:
            shift = shift + 0.01 * label.reshape(-1, *([1] * (x.ndim - 1)))
        return self.amplitude * torch.tanh(1.3 * x) + shift


def _reference_terms(net, images, levels, betas, seed, variance, decoder_variance, clip):
    """The bound's terms in bits/dim from Ho et al. 2020 (eqs. 4, 6, 7, 13) with numpy coefficients from the
    betas, torch.distributions KLs and scipy normal CDFs, on the documented noise draws of ``seed``."""
    b = betas.numpy()
    n = b.size
    alphas = 1 - b
    abar = np.cumprod(alphas)
    abar_prev = np.append(1.0, abar[:-1])
    post_var = b * (1 - abar_prev) / (1 - abar)
    dim = images[0].numel()
    x0 = images.to(F64) * 2 / (levels - 1) - 1
    gen = torch.Generator().manual_seed(seed)
    eps = [torch.randn(images.shape, generator=gen, dtype=F64) for _ in range(n)]  # decoder, then t = 2..N

    def x0_hat(x_t, i):
        out = net(x_t, torch.full((x_t.shape[0],), float(i), dtype=F64))
        return out.clamp(-1, 1) if clip else out

    def normal(mean, var):
        return torch.distributions.Normal(mean, torch.as_tensor(var, dtype=F64).sqrt().expand_as(mean))

    prior = torch.distributions.kl_divergence(normal(math.sqrt(abar[-1]) * x0, 1 - abar[-1]),
                                              normal(torch.zeros_like(x0), 1.0))
    prior = prior.reshape(len(x0), -1).sum(-1)
    # decoder: t = 1 (index 0), mean x̂0 (the posterior mean with ᾱ_0 = 1), variance β̃_2 or β_1
    x1 = math.sqrt(abar[0]) * x0 + math.sqrt(1 - abar[0]) * eps[0]
    mean = x0_hat(x1, 0).numpy()
    std = math.sqrt(post_var[1] if decoder_variance == "ddpm" else b[0])
    half = 1 / (levels - 1)
    upper = np.where(images.numpy() == levels - 1, 1.0, stats.norm.cdf(x0.numpy() + half, mean, std))
    lower = np.where(images.numpy() == 0, 0.0, stats.norm.cdf(x0.numpy() - half, mean, std))
    decoder = -torch.tensor(np.log(upper - lower)).reshape(len(x0), -1).sum(-1)
    terms, snr_terms = [], []
    for t in range(2, n + 1):
        i = t - 1
        x_t = math.sqrt(abar[i]) * x0 + math.sqrt(1 - abar[i]) * eps[t - 1]
        pred = x0_hat(x_t, i)
        c1 = math.sqrt(abar_prev[i]) * b[i] / (1 - abar[i])
        c2 = math.sqrt(alphas[i]) * (1 - abar_prev[i]) / (1 - abar[i])
        model_var = b[i] if variance == "beta" else post_var[i]
        kl = torch.distributions.kl_divergence(normal(c1 * x0 + c2 * x_t, post_var[i]),
                                               normal(c1 * pred + c2 * x_t, model_var))
        terms.append(kl.reshape(len(x0), -1).sum(-1))
        # σ_t² = β̃_t: KL = ½ (SNR_{t-1} - SNR_t) |x0 - x̂0|² (Kingma et al. 2021, eq. 13)
        snr = abar / (1 - abar)
        snr_prev = math.inf if i == 0 else snr[i - 1]
        snr_terms.append(0.5 * (snr_prev - snr[i]) * ((x0 - pred) ** 2).reshape(len(x0), -1).sum(-1))
    to_bpd = 1 / (dim * LN2)
    return (prior * to_bpd, torch.stack(terms) * to_bpd, decoder * to_bpd, torch.stack(snr_terms) * to_bpd)


@pytest.mark.parametrize("variance", ["beta", "posterior"])
@pytest.mark.parametrize("decoder_variance", ["ddpm", "beta"])
@pytest.mark.parametrize("clip", [False, True], ids=["noclip", "clip"])
def test_terms_match_an_independent_computation(variance, decoder_variance, clip):
    levels = 16
    process = VP.from_betas(BETAS)
    images = torch.randint(0, levels, (4, 2, 3), generator=torch.Generator().manual_seed(0))
    images[0, 0, 0], images[1, 0, 0] = 0, levels - 1  # both edge bins appear
    net = RecordingNet(amplitude=1.4 if clip else 0.6)  # 1.4: predictions outside [-1, 1], so clipping matters
    model = ScoreModel(net, process, prediction="x0", time_input="index", sample_shape=(2, 3))
    res = ddpm_bound(model, images, variance=variance, decoder_variance=decoder_variance, clip_x0=clip,
                     levels=levels, dtype=F64, generator=torch.Generator().manual_seed(5))
    assert isinstance(res, DDPMBoundResult)
    # The network saw the DDPM indices t - 1: 0 for the decoder, then 1..7 (as floats of x's dtype).
    seen = torch.cat([t[:1] for t in net.times])
    assert torch.allclose(seen, torch.arange(8, dtype=F64), atol=1e-12)
    prior, terms, decoder, snr_terms = _reference_terms(RecordingNet(net.amplitude), images, levels, BETAS, 5,
                                                         variance, decoder_variance, clip)
    # float64 throughout; the library's coefficients come from log ᾱ with expm1, the reference's from cumprod:
    # agreement to rounding.
    assert torch.allclose(res.prior_bpd, prior, rtol=1e-10, atol=0)
    assert torch.allclose(res.terms_bpd, terms, rtol=1e-9, atol=1e-13)
    assert torch.allclose(res.decoder_bpd, decoder, rtol=1e-9, atol=1e-13)
    if variance == "posterior":
        assert torch.allclose(res.terms_bpd, snr_terms, rtol=1e-9, atol=1e-13)
    assert torch.equal(res.timesteps, torch.arange(2, 9)[:, None].expand(7, 4))
    assert torch.allclose(res.diffusion_bpd, terms.sum(0), rtol=1e-12)
    assert torch.allclose(res.bpd, prior + terms.sum(0) + decoder, rtol=1e-12)
    assert res.diffusion_stderr is None
    assert abs(res.mean - float(res.bpd.mean())) < 1e-12
    assert abs(res.stderr - float(res.bpd.std()) / 2) < 1e-12
    b = BETAS.numpy()
    expected_var = b[1] * b[0] / (1 - (1 - b[0]) * (1 - b[1])) if decoder_variance == "ddpm" else b[0]
    assert abs(res.stats["decoder_variance"] - expected_var) < 1e-15
    assert res.stats["model_evals"] == 8 and res.stats["num_steps"] == 8 and res.stats["n_terms"] == 7


def test_chunked_calls_and_cond_give_the_same_draws():
    process = VP.from_betas(BETAS)
    images = torch.randint(0, 16, (3, 5), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0.0, 1.0, 2.0], dtype=F64)
    results = []
    for per_call in (1, 3, 7, 50):
        model = ScoreModel(RecordingNet(), process, prediction="x0", time_input="index")
        results.append(ddpm_bound(model, images, levels=16, dtype=F64, timesteps_per_call=per_call,
                                  generator=torch.Generator().manual_seed(2), cond={"label": labels}))
    for res in results[1:]:
        assert torch.allclose(res.terms_bpd, results[0].terms_bpd, rtol=1e-13, atol=1e-15)
    # The label reached every call (repeated for stacked steps): without it the terms change.
    plain = ddpm_bound(ScoreModel(RecordingNet(), process, prediction="x0", time_input="index"), images, levels=16,
                       dtype=F64, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(plain.terms_bpd, results[0].terms_bpd)
    again = ddpm_bound(ScoreModel(RecordingNet(), process, prediction="x0", time_input="index"), images, levels=16,
                       dtype=F64, generator=torch.Generator().manual_seed(2))
    assert torch.equal(again.bpd, plain.bpd)
    fresh = ddpm_bound(ScoreModel(RecordingNet(), process, prediction="x0", time_input="index"), images, levels=16,
                       dtype=F64)
    assert "seed" in fresh.stats


def test_one_kl_term_by_monte_carlo():
    # KL(q || p) = E_q[log q(x_{t-1}) - log p(x_{t-1})] over x_{t-1} ~ q(x_{t-1} | x_t, x_0), without the closed
    # form: 400k draws per coordinate-sum give a standard error of ~0.3% of the term; 4 standard errors allowed.
    process = VP.from_betas(BETAS)
    images = torch.tensor([[3, 12, 7]])
    net = RecordingNet()
    model = ScoreModel(net, process, prediction="x0", time_input="index")
    res = ddpm_bound(model, images, levels=16, dtype=F64, generator=torch.Generator().manual_seed(4))
    b = BETAS.numpy()
    abar = np.cumprod(1 - b)
    gen = torch.Generator().manual_seed(4)
    eps = [torch.randn(images.shape, generator=gen, dtype=F64) for _ in range(8)]
    x0 = images.to(F64) * 2 / 15 - 1
    t, i = 5, 4
    x_t = math.sqrt(abar[i]) * x0 + math.sqrt(1 - abar[i]) * eps[t - 1]
    pred = RecordingNet()(x_t, torch.full((1,), float(i), dtype=F64))
    post_var = b[i] * (1 - abar[i - 1]) / (1 - abar[i])
    c1 = math.sqrt(abar[i - 1]) * b[i] / (1 - abar[i])
    c2 = math.sqrt(1 - b[i]) * (1 - abar[i - 1]) / (1 - abar[i])
    q = torch.distributions.Normal(c1 * x0 + c2 * x_t, math.sqrt(post_var))
    p = torch.distributions.Normal(c1 * pred + c2 * x_t, math.sqrt(b[i]))
    draws = q.sample((400_000,))
    log_ratio = (q.log_prob(draws) - p.log_prob(draws)).sum(-1)[:, 0]
    estimate = float(log_ratio.mean()) / (3 * LN2)
    se = float(log_ratio.std()) / math.sqrt(draws.shape[0]) / (3 * LN2)
    assert abs(estimate - float(res.terms_bpd[t - 2, 0])) < 4 * se
    assert se < 0.01 * float(res.terms_bpd[t - 2, 0])


# --- (c) exact ground truth: a quantized Gaussian mixture ------------------------------------------------------
LEVELS = 16
MEANS = np.array([[-0.3, 0.2], [0.35, -0.25]])
STDS = np.array([[0.2, 0.15], [0.12, 0.25]])
WEIGHTS = np.array([0.6, 0.4])


def _bin_masses(means, stds, weights, levels):
    """Exact probabilities of the L^D bins of a diagonal mixture: Σ_c w_c Π_d (Φ(hi) - Φ(lo)), edge bins to ±∞.

    Returns the probabilities (L^D,) and the levels of each bin (L^D, D), last coordinate fastest."""
    lo, hi = (e.numpy() for e in _edges(levels))
    per_dim = stats.norm.cdf((hi[None, None] - means[..., None]) / stds[..., None]) - stats.norm.cdf(
        (lo[None, None] - means[..., None]) / stds[..., None])  # (K, D, L)
    dim = means.shape[1]
    grid = np.stack(np.meshgrid(*[np.arange(levels)] * dim, indexing="ij"), -1).reshape(-1, dim)
    probs = (weights[:, None] * np.prod(per_dim[:, np.arange(dim), grid], axis=-1)).sum(0)
    return torch.tensor(probs), torch.tensor(grid)


def _quantized_data(dim, n_images, seed=0):
    means, stds = MEANS[:, :dim], STDS[:, :dim]
    probs, grid = _bin_masses(means, stds, WEIGHTS, LEVELS)
    continuous = GaussianMixture(torch.tensor(means), torch.tensor(stds) ** 2, torch.tensor(WEIGHTS))
    # The quantized law as a mixture itself: a component on every bin centre with the bin's probability and a
    # width 1e-3 of a bin (each holds its own bin's mass to 1 - 1e-200): the exact model of the quantized data.
    centres = 2 * grid.to(F64) / (LEVELS - 1) - 1
    width = 1e-3 * 2 / (LEVELS - 1)
    quantized = GaussianMixture(centres, torch.full_like(centres, width**2), probs / probs.sum())
    index = torch.multinomial(probs, n_images, replacement=True, generator=torch.Generator().manual_seed(seed))
    nll_bpd = -torch.log(probs[index]) / (dim * LN2)
    return grid[index], nll_bpd, continuous, quantized


def _log_snr_schedule(n_steps):
    # ᾱ = sigmoid(λ) with λ = log SNR uniform from 10.6 (σ_1 = 0.005, 1/27 of a bin) to -10: every step changes
    # the SNR by the same factor, so the steps where the bins separate (σ between 0.02 and 0.07) are as fine as
    # the rest. The DDPM linear schedule spends 14 of 1000 steps there (see the docs' table).
    return VP.from_alphas_cumprod(torch.sigmoid(torch.linspace(10.6, -10.0, n_steps, dtype=F64)))


def test_bound_approaches_the_exact_nll_of_quantized_data():
    images, nll, _, quantized = _quantized_data(dim=1, n_images=2000)
    fine = _log_snr_schedule(1000)
    gaps = {}
    for variance in ("posterior", "beta"):
        res = ddpm_bound(quantized.model(fine), images, variance=variance, levels=LEVELS, dtype=F64,
                         timesteps_per_call=25, generator=torch.Generator().manual_seed(1))
        gap = res.bpd - nll
        gaps[variance] = (float(gap.mean()), float(gap.std()) / math.sqrt(len(gap)))
        # E_Q[bound] >= E_Q[-log2 p_θ] >= H(Q): the mean gap over images drawn from Q is >= 0 up to its standard
        # error (one draw of x_t per term: per-image spread 0.35 bits/dim, standard error 0.008).
        assert gaps[variance][0] > -3 * gaps[variance][1], gaps
        # ... and small on this schedule: measured 0.021 ± 0.008 (posterior) and 0.028 ± 0.008 (beta); an
        # independent quadrature over x_t of the expected bound gives 0.034 and 0.042 bits/dim. The decoder is
        # sharp (σ_1 is 1/27 of a bin) and the prior term negligible.
        assert gaps[variance][0] < 0.08, gaps
        assert float(res.decoder_bpd.mean()) < 1e-3 and float(res.prior_bpd.max()) < 1e-4
    # A coarse schedule is looser: 100 steps leave 0.36 bits/dim in expectation (quadrature; measured 0.53 ± 0.06
    # on these 500 images: the per-image terms are heavy-tailed).
    coarse = ddpm_bound(quantized.model(_log_snr_schedule(100)), images[:500], variance="posterior", levels=LEVELS,
                        dtype=F64, timesteps_per_call=25, generator=torch.Generator().manual_seed(1))
    assert float((coarse.bpd - nll[:500]).mean()) > gaps["posterior"][0] + 0.15


def test_bound_and_pf_ode_for_the_continuous_mixture_model():
    # The exact model of the *continuous* mixture: its decoder turns x_1 into the bin of x_1, so p_θ(k) is close
    # to the bin mass Q(k); but q(x_1 | x_0), a Gaussian of width σ_1 around the bin centre, is far narrower than
    # the model's posterior (spread over the whole bin): a variational gap of about log(bin/σ_1) - ½ log(2πe) per
    # dimension that no number of steps removes. The bound still lies above the exact NLL; the PF-ODE route with
    # uniform dequantization (the same bins) comes close to it.
    images, nll, continuous, _ = _quantized_data(dim=2, n_images=64, seed=3)
    process = VP.from_betas(torch.linspace(1e-4, 0.02, 1000, dtype=F64))  # DDPM's schedule
    model = continuous.model(process)
    bound = ddpm_bound(model, images, levels=LEVELS, dtype=F64, timesteps_per_call=100,
                       generator=torch.Generator().manual_seed(1))
    gap = bound.bpd - nll
    # measured 1.66 ± 0.10 bits/dim above the exact NLL (2.97); every image above it (by 0.49 at least)
    assert float(gap.mean()) > 1.0 and float(gap.min()) > 0
    scale, offset = 2 / (LEVELS - 1), -1 - 1 / (LEVELS - 1)  # the ddpm bins, for the dequantization too
    pf = bits_per_dim(model, images, levels=LEVELS, scale=scale, offset=offset, n_dequant=2, dtype=F64,
                      generator=torch.Generator().manual_seed(2), rtol=1e-5, atol=1e-5)
    pf_gap = pf.bpd - nll
    # Jensen's gap of the dequantization (0.043 ± 0.006 bits/dim on these images, from the exact density averaged
    # over 4000 draws of u) plus the prior mismatch and the ODE error: measured 0.048 ± 0.026; allowed 0.12.
    assert -3 * float(pf_gap.std()) / 8 < float(pf_gap.mean()) < 0.12
    assert pf.mean < bound.mean - 1.0


# --- (d) Monte Carlo over the steps -----------------------------------------------------------------------------
def test_monte_carlo_over_steps_is_unbiased():
    images, _, _, quantized = _quantized_data(dim=1, n_images=1000, seed=5)
    model = quantized.model(_log_snr_schedule(300))
    full = ddpm_bound(model, images, variance="posterior", levels=LEVELS, dtype=F64, timesteps_per_call=30,
                      generator=torch.Generator().manual_seed(1))
    mc = ddpm_bound(model, images, variance="posterior", levels=LEVELS, dtype=F64, timesteps=30,
                    timesteps_per_call=30, generator=torch.Generator().manual_seed(2))
    assert mc.timesteps.shape == (30, 1000) and mc.terms_bpd.shape == (30, 1000)
    assert int(mc.timesteps.min()) >= 2 and int(mc.timesteps.max()) <= 300
    # model calls (the model's nfe): the decoder's, then one per 30 stacked terms
    assert mc.stats["model_evals"] == 2 and full.stats["model_evals"] == 1 + math.ceil(299 / 30)
    assert torch.allclose(mc.diffusion_bpd, 299 * mc.terms_bpd.mean(0))
    # The prior and decoder terms are computed exactly in both: the same prior, decoders of equal law.
    assert torch.equal(mc.prior_bpd, full.prior_bpd)
    # Images are independent (own steps, own noise), so the paired differences give an honest standard error:
    # measured z = -0.49. The reported per-image standard errors are heavy-tailed (30 draws of a skewed term) but
    # calibrated in the mean square: measured RMS 2.29 against a spread of the differences of 2.41, whose excess
    # is the full sum's own noise.
    diff = mc.diffusion_bpd - full.diffusion_bpd
    se = float(diff.std()) / math.sqrt(len(diff))
    assert abs(float(diff.mean())) < 3 * se
    ratio = float(mc.diffusion_stderr.pow(2).mean().sqrt()) / float(diff.std())
    assert 0.7 < ratio < 1.25, ratio
    one = ddpm_bound(model, images[:3], timesteps=1, levels=LEVELS, dtype=F64,
                     generator=torch.Generator().manual_seed(0))
    assert torch.isnan(one.diffusion_stderr).all() and torch.isfinite(one.bpd).all()


# --- bits_per_dim routes to it ---------------------------------------------------------------------------------
def test_bits_per_dim_routes_to_the_ddpm_bound():
    process = VP.from_betas(BETAS)
    images = torch.randint(0, 256, (3, 4), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    model = ScoreModel(RecordingNet(), process, prediction="x0", time_input="index")
    routed = bits_per_dim(model, images, decoder="ddpm", variance="posterior",
                          generator=torch.Generator().manual_seed(1))
    direct = ddpm_bound(model, images, variance="posterior", generator=torch.Generator().manual_seed(1))
    assert isinstance(routed, DDPMBoundResult) and torch.equal(routed.bpd, direct.bpd)
    assert routed.bpd.dtype == torch.float32  # uint8 images compute in float32, as bits_per_dim does
    # ... close to the float64 computation (float32 rounding of the x̂0 errors and the sums)
    exact = ddpm_bound(model, images, variance="posterior", dtype=F64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(routed.bpd.to(F64), exact.bpd, rtol=1e-4)
    assert routed.stats["levels"] == 256 and abs(routed.stats["scale"] - 2 / 255) < 1e-15
    assert abs(routed.stats["offset"] - (-1 - 1 / 255)) < 1e-15
    default = bits_per_dim(model, images, generator=torch.Generator().manual_seed(1), rtol=1e-3, atol=1e-3)
    assert isinstance(default, BitsPerDimResult)  # the dequantized PF-ODE route stays the default
    with pytest.raises(ValueError, match="n_dequant applies to decoder='dequantize' only"):
        bits_per_dim(model, images, decoder="ddpm", n_dequant=4)
    with pytest.raises(ValueError, match="unknown decoder 'discrete'; allowed: 'dequantize', 'ddpm'"):
        bits_per_dim(model, images, decoder="discrete")


# --- (e) bad input ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def discrete_model():
    return ScoreModel(RecordingNet(), VP.from_betas(BETAS), prediction="x0", time_input="index", sample_shape=(3,))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(variance="learned"), ValueError, "unknown variance 'learned'; allowed: 'beta', 'posterior'"),
        (dict(decoder_variance="posterior"), ValueError, "unknown decoder_variance 'posterior'; allowed: 'ddpm'"),
        (dict(decoder_variance=0.0), ValueError, "decoder_variance must be 'ddpm', 'beta' or a positive"),
        (dict(decoder_variance=float("nan")), ValueError, "decoder_variance must be"),
        (dict(timesteps=0), ValueError, "timesteps must be an int >= 1, got 0"),
        (dict(timesteps=2.5), ValueError, "timesteps must be an int >= 1"),
        (dict(timesteps_per_call=0), ValueError, "timesteps_per_call must be an int >= 1"),
        (dict(levels=1), ValueError, "levels must be an int >= 2, got 1"),
        (dict(levels=16.0), ValueError, "levels must be an int >= 2"),
        (dict(scale=-0.1), ValueError, "scale must be > 0"),
        (dict(offset=float("inf")), TypeError, "offset must be a finite number"),
        (dict(dtype=torch.int32), TypeError, "dtype must be a floating-point"),
        (dict(clip_x0="yes"), TypeError, "clip_x0 must be a bool"),
        (dict(process=VP()), ValueError, r"must be a VP with a discrete DDPM schedule \(VP.from_betas"),
    ],
)
def test_bad_options(discrete_model, kwargs, error, match):
    images = torch.zeros(2, 3, dtype=torch.uint8)
    with pytest.raises(error, match=match):
        ddpm_bound(discrete_model, images, **kwargs)


@pytest.mark.parametrize(
    "images, match",
    [
        (torch.tensor([[0.5, 0.2, 0.0]]), r"integer pixel levels 0..255"),  # [0, 1] data by mistake
        (torch.tensor([[-1.0, 1.0, 0.0]]), r"integer pixel levels 0..255"),  # [-1, 1] data by mistake
        (torch.tensor([[0, 256, 3]]), r"integer pixel levels 0..255, got values in \[0, 256\]"),
        (torch.tensor([[float("nan"), 1.0, 0.0]]), "NaN"),
        (torch.tensor([3.0, 4.0, 5.0]), "batch-first"),
        (torch.zeros(2, 4), r"sample shape \(4,\) but the model takes \(3,\)"),
    ],
)
def test_bad_images(discrete_model, images, match):
    with pytest.raises(ValueError, match=match):
        ddpm_bound(discrete_model, images)
    if "255" in match:
        with pytest.raises(ValueError, match=r"integer pixel levels 0..15"):
            ddpm_bound(discrete_model, torch.full((1, 3), 16), levels=16)


def test_non_discrete_processes_and_models_are_named():
    continuous = GaussianMixture.random(2, 2, seed=0).model(VP())
    with pytest.raises(ValueError, match=r"model.process or process=\) must be a VP with a discrete DDPM schedule"):
        ddpm_bound(continuous, torch.zeros(1, 2))
    from sdekit import SubVP
    from sdekit.schedules import DiscreteSchedule

    subvp = GaussianMixture.random(2, 2, seed=0).model(SubVP(DiscreteSchedule.from_betas(BETAS)))
    with pytest.raises(ValueError, match="discrete DDPM schedule"):
        ddpm_bound(subvp, torch.zeros(1, 2))
    with pytest.raises(TypeError, match=r"model must have a predict\(x, t, 'x0'\) method"):
        ddpm_bound(object(), torch.zeros(1, 2))


def test_decoder_rejects_data_off_the_bin_centres():
    with pytest.raises(ValueError, match=r"x must lie on the 256 bin centres"):
        discretized_gaussian_log_likelihood(torch.tensor([0.5]), 0.0, 0.0)  # 0.5 is between two centres of 2/255
    with pytest.raises(ValueError, match=r"got values in \[-1.1, 1\]"):
        discretized_gaussian_log_likelihood(torch.tensor([-1.1, 1.0]), 0.0, 0.0)
    with pytest.raises(ValueError, match="levels must be an int >= 2"):
        discretized_gaussian_log_likelihood(torch.tensor([0.0]), 0.0, 0.0, levels=1)
    with pytest.raises(TypeError, match="x must be a floating-point torch.Tensor"):
        discretized_gaussian_log_likelihood(torch.tensor([0]), 0.0, 0.0)
    centres = torch.tensor([-1.0, 1.0])
    assert torch.isfinite(discretized_gaussian_log_likelihood(centres, 0.0, 0.0, levels=2)).all()
