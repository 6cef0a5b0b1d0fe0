"""Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) and unadjusted Langevin at one noise level, against
exact answers on Gaussian mixtures: the stationary law at a level, its first-order step-size bias in closed form on
Gaussian data, the annealed sampler through ``sdekit.sample``, the NFE count, the noise source, the arguments."""

import math

import pytest
import torch

import sdekit
from sdekit.analytic import GaussianMixture
from sdekit.bench.compare import GROUPS
from sdekit.bench.metrics import sliced_wasserstein2
from sdekit.solvers import REGISTRY
from sdekit.solvers.langevin import DEFAULT_STEP_RATIO, AnnealedLangevin, langevin_at

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread_module")  # tiny tensors: threads only add synchronisation


def gen(seed):
    return torch.Generator().manual_seed(seed)


def _coeffs(process, t):
    tt = torch.tensor(t, dtype=F64)
    return float(process.alpha(tt)), float(process.sigma(tt))


def _gaussian(d=4, s0=0.3):
    """Data N(mu, s0² I) in d dimensions: a one-component mixture, whose marginal at t is N(alpha mu, v I) with
    v = alpha² s0² + sigma²."""
    mu = torch.linspace(-1.0, 1.0, d, dtype=F64)
    return GaussianMixture(mu[None], torch.full((1, d), s0**2, dtype=F64), [1.0])


def ula_variance(v, h):
    """The stationary variance of ULA with step h on N(m, v): y = x - m follows y' = (1 - h/v) y + sqrt(2h) z, so
    u = (1 - h/v)² u + 2h, i.e. u = 2h / (2h/v - h²/v²) = v / (1 - h/(2v)) (stable for h < 2v)."""
    return v / (1 - h / (2 * v))


def test_stationary_law_at_one_level_is_the_noised_mixture():
    """2000 chains from the prior, 1000 steps of h = 0.1 sigma² at t = 0.1 of VP (sigma = 0.32; the ring's modes are
    still connected there): sliced W2 to exact samples of p_t at the floor, mean and covariance within 4 standard
    errors.

    Standard errors: of the mean, sqrt(Var x_i / n); of a covariance entry, sqrt(Var[(x_i - m_i)(x_j - m_j)] / n),
    both from 100k exact samples of p_t (0.017-0.027 for the covariance). The ULA bias (about h/2 = 0.005 on a
    Gaussian direction) is a fifth of that, so it needs no allowance. Measured over seeds 0, 10, 20: W2 0.64-1.16
    times the floor (1.33 after 250 steps: still mixing), mean and covariance errors within 2.0 standard errors
    (at most 0.034 and 0.053). The prior starts 4.7-5.9 times the floor away."""
    process = sdekit.VP()
    data = GaussianMixture.preset("ring2d")
    model = data.model(process)
    t, n = 0.1, 2000
    target = data.marginal(process, t)
    _, sigma = _coeffs(process, t)
    x = process.prior_sample((n, 2), generator=gen(0), dtype=F64)
    out = langevin_at(model, x, t, 0.1 * sigma**2, 1000, generator=gen(1))
    assert model.nfe == 1000

    exact = target.sample(n, generator=gen(2), dtype=F64)
    other = target.sample(n, generator=gen(3), dtype=F64)
    floor, _ = sliced_wasserstein2(other, exact, generator=gen(4))
    w2, _ = sliced_wasserstein2(out, exact, generator=gen(4))
    w2_prior, _ = sliced_wasserstein2(x, exact, generator=gen(4))
    assert w2 < 1.5 * floor, (w2, floor)
    assert w2_prior > 3 * floor, (w2_prior, floor)  # the chains had somewhere to go

    mean, cov = target.mean(), target.covariance()
    big = target.sample(100_000, generator=gen(5), dtype=F64) - mean
    se_mean = big.std(0) / math.sqrt(n)
    products = torch.stack([big[:, i] * big[:, j] for i in range(2) for j in range(2)], 1)
    se_cov = (products.std(0) / math.sqrt(n)).reshape(2, 2)
    mean_z = (out.mean(0) - mean) / se_mean
    cov_z = (torch.cov(out.T) - cov) / se_cov
    assert float(mean_z.abs().max()) < 4, mean_z
    assert float(cov_z.abs().max()) < 4, cov_z


def test_ula_bias_is_first_order_in_the_step_size_on_gaussian_data():
    """On N(m, v I) (data N(mu, 0.3² I) in 4-D at t = 0.3 of VP) the stationary variance of ULA is v/(1 - h/(2v))
    (`ula_variance`): the bias h/2 + O(h²), first order. At h = 0.2 v and 0.1 v the measured variance matches the
    formula within 4 standard errors, the mean is exact, and the ratio of the biases matches the formula's
    2 (1 - h/(4v)) / (1 - h/(2v)) = 2.11 (it tends to 2 as h -> 0).

    4000 chains start from the exact marginal, so only the variance moves, from v to the ULA law: that transient
    decays as (1 - h/v)^(2k), to 2e-4 of the bias after the 40 burn-in steps. Then each chain's time average of
    |x - m|²/d over 400 steps is one independent draw, and the standard error is their spread over sqrt(4000).
    Measured over three seeds: relative standard error of the variance 0.13% and 0.18%, formula errors within 1.9
    standard errors, biases 85-87 and 30-32 standard errors, bias ratios 2.03-2.18 (± 0.07)."""
    process = sdekit.VP()
    data = _gaussian()
    model = data.model(process)
    t, n, burn, steps = 0.3, 4000, 40, 400
    alpha, sigma = _coeffs(process, t)
    v = alpha**2 * 0.3**2 + sigma**2
    m = alpha * data.means[0]
    biases = {}
    for r in (0.2, 0.1):
        h = r * v
        g = gen(10)
        x = langevin_at(model, data.marginal(process, t).sample(n, generator=gen(1), dtype=F64), t, h, burn,
                        generator=g)
        sq = torch.zeros(n, dtype=F64)
        first = torch.zeros(n, data.dim, dtype=F64)
        for _ in range(steps):  # one step at a time on the same generator: the chain of one call of `steps`
            x = langevin_at(model, x, t, h, 1, generator=g)
            sq += (x - m).pow(2).mean(1)
            first += x - m
        per_chain = sq / steps
        u, se = float(per_chain.mean()), float(per_chain.std()) / math.sqrt(n)
        assert abs(u - ula_variance(v, h)) < 4 * se, (r, u, ula_variance(v, h), se)
        assert abs(u - v) > 10 * se  # the bias is resolved
        mean_chain = first / steps
        mean_z = mean_chain.mean(0) / (mean_chain.std(0) / math.sqrt(n))
        assert float(mean_z.abs().max()) < 4, mean_z  # ULA on a Gaussian keeps the mean exactly
        biases[r] = (u - v, se)
    (b1, s1), (b2, s2) = biases[0.2], biases[0.1]
    ratio = b1 / b2
    se_ratio = ratio * math.hypot(s1 / b1, s2 / b2)
    h = 0.2 * v
    expected = (ula_variance(v, h) - v) / (ula_variance(v, h / 2) - v)
    assert abs(expected - 2 * (1 - h / (4 * v)) / (1 - h / (2 * v))) < 1e-12
    assert abs(ratio - expected) < 4 * se_ratio, (ratio, expected, se_ratio)


def test_the_sampler_takes_the_step_size_rule_level_by_level():
    """Through ``sample`` on Gaussian data, grid [1, 0.5, 0.1]: level 1 (t = 0.5) takes alpha_1 = eps sigma_1² /
    sigma_L², level 2 (t = 0.1, the last) alpha_2 = eps. 100 steps per level relax a chain to the ULA law
    (factor (1 - alpha/v)^100 < 1e-9), so each level's variance is ula_variance(v_i, alpha_i), within 5 standard
    errors (v sqrt(2/(n d)), n d = 16000). Measured over seeds 0, 10, 20: within 1.4 standard errors, biases 18-21
    and 10-11 standard errors; level 1 with the unscaled step alpha_1 = eps would be 16-19 standard errors off."""
    process = sdekit.VP()
    data = _gaussian()
    model = data.model(process)
    n = 4000
    levels = (0.5, 0.1)
    vs, sigmas = [], []
    for t in levels:
        alpha, sigma = _coeffs(process, t)
        vs.append(alpha**2 * 0.3**2 + sigma**2)
        sigmas.append(sigma)
    eps = 0.2 * vs[1]
    x = process.prior_sample((n, data.dim), generator=gen(0), dtype=F64)
    sol = sdekit.sample(model, x, "langevin", grid=torch.tensor([1.0, *levels], dtype=F64), n_steps_each=100,
                        eps=eps, return_trajectory=True, generator=gen(1))
    assert sol.stats["nfe"] == sol.stats["nfe_counted"] == 200
    for k, (t, v, sigma) in enumerate(zip(levels, vs, sigmas), start=1):
        h = eps * sigma**2 / sigmas[-1] ** 2
        m = float(process.alpha(torch.tensor(t, dtype=F64))) * data.means[0]
        u = float((sol.xs[k] - m).pow(2).mean())
        se = v * math.sqrt(2 / (n * data.dim))
        assert abs(u - ula_variance(v, h)) < 5 * se, (t, u, ula_variance(v, h), se)
        assert abs(u - v) > 5 * se, (t, u, v, se)


def test_annealed_sampling_reaches_the_data():
    """The paper's setting: 10 geometric noise levels (``spacing="log_snr"``), 100 steps each, eps/sigma_L² = 0.2
    (the defaults), on the ring mixture under VP: sliced W2 to exact data samples near the floor, far below the
    prior's. Measured over seeds 0, 10, 20 with 1000 samples: 0.56-1.11 times the floor; the prior is 3.3-5.8 times
    the floor away. The same budget with no annealing (one level at t_min, 1000 steps) ends 2.6-3.7 times farther
    than the annealed run: at sigma = 0.01 the chains cannot cross between the modes' basins."""
    process = sdekit.VP()
    data = GaussianMixture.preset("ring2d")
    model = data.model(process)
    n = 1000
    x_T = process.prior_sample((n, 2), generator=gen(0), dtype=F64)
    sol = sdekit.sample(model, x_T, "langevin", steps=10, spacing="log_snr", generator=gen(3))
    assert sol.stats["nfe"] == sol.stats["nfe_counted"] == 10 * 100
    exact = data.sample(n, generator=gen(1), dtype=F64)
    other = data.sample(n, generator=gen(2), dtype=F64)
    floor, _ = sliced_wasserstein2(other, exact, generator=gen(5))
    w2, _ = sliced_wasserstein2(sol.x, exact, generator=gen(5))
    w2_prior, _ = sliced_wasserstein2(x_T, exact, generator=gen(5))
    assert w2 < 1.5 * floor < 0.5 * w2_prior, (w2, floor, w2_prior)
    one_level = sdekit.sample(model, x_T, "langevin", steps=1, n_steps_each=1000, generator=gen(3))
    w2_one, _ = sliced_wasserstein2(one_level.x, exact, generator=gen(5))
    assert w2_one > 2 * w2, (w2_one, w2)


def test_nfe_and_the_step_onto_sigma_zero():
    """NFE = steps x n_steps_each; a last step onto sigma = 0 (t_end = 0) is one denoising evaluation instead, and
    the levels' sigma_L is then the smallest positive sigma (the step before)."""
    process = sdekit.VP()
    model = GaussianMixture.preset("ring2d").model(process)
    x = process.prior_sample((16, 2), generator=gen(0), dtype=F64)
    sol = sdekit.sample(model, x, "langevin", steps=4, n_steps_each=5, generator=gen(1))
    assert sol.stats["nfe"] == sol.stats["nfe_counted"] == 20
    end = sdekit.sample(model, x, "langevin", steps=4, n_steps_each=5, t_end=0.0, generator=gen(1),
                        return_trajectory=True)
    assert end.stats["nfe"] == end.stats["nfe_counted"] == 3 * 5 + 1
    assert bool(torch.isfinite(end.x).all())
    torch.testing.assert_close(end.x, model.predict(end.xs[-2], end.stats["grid"][-2], "x0"))
    s = AnnealedLangevin(eps=1e-3)
    state = s.init(sdekit.reverse_sde(process, model), 1.0, x, grid=[1.0, 0.5, 0.2, 0.0])
    assert state.sigma_smallest == pytest.approx(_coeffs(process, 0.2)[1], rel=1e-12)
    assert s.step_size(0.5, 0.25) == pytest.approx(4e-3, rel=1e-12)
    assert AnnealedLangevin().step_size(0.5, 0.25) == pytest.approx(DEFAULT_STEP_RATIO * 0.25, rel=1e-12)
    assert DEFAULT_STEP_RATIO == pytest.approx(0.2)  # the paper's eps = 2e-5 at sigma_L = 0.01


def test_noise_comes_from_the_solve_and_is_per_sample():
    """Each Langevin step's Gaussian is drawn from the solve's noise source: reproducible from a Brownian path's
    seed, another seed gives other samples, and with ``sample_offset`` a shard is the slice of the whole run, bit
    for bit (the step size depends on no batch statistic). ``langevin_at`` draws from its generator: one call of k
    steps is k calls of one step."""
    process = sdekit.VP()
    model = GaussianMixture.preset("ring2d").model(process)
    x = process.prior_sample((64, 2), generator=gen(0), dtype=F64, sample_offset=0)

    def run(seed):
        bm = sdekit.BrownianPath(process.t_min, process.t_max, x.shape, seed=seed, dtype=F64)
        return sdekit.sample(model, x, "langevin", steps=3, n_steps_each=4, brownian=bm).x

    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))
    full = sdekit.sample(model, x, "langevin", steps=3, n_steps_each=4, generator=gen(1), sample_offset=0).x
    part = sdekit.sample(model, x[16:40], "langevin", steps=3, n_steps_each=4, generator=gen(1), sample_offset=16).x
    assert torch.equal(part, full[16:40])
    once = langevin_at(model, x, 0.4, 0.01, 3, generator=gen(7))
    g = gen(7)
    steps = x
    for _ in range(3):
        steps = langevin_at(model, steps, 0.4, 0.01, 1, generator=g)
    assert torch.equal(once, steps)


def test_registry_metadata():
    cls = REGISTRY["langevin"]
    assert cls is AnnealedLangevin
    assert cls.order is None and cls.weak_order is None  # no discretisation of the reverse SDE: no order
    s = cls(n_steps_each=7)
    assert s.stochastic and s.noise_types == ("additive",) and s.evals_per_step == 7
    assert cls().evals_per_step == 100 and not cls.adaptive and not cls.needs_consistency_model
    assert "langevin" in GROUPS["all-stochastic"]()  # samples the same law as the other stochastic samplers


@pytest.mark.parametrize("kw, exc, match", [
    ({"n_steps_each": 0}, ValueError, r"n_steps_each must be an int >= 1, got 0"),
    ({"n_steps_each": -3}, ValueError, r"n_steps_each must be an int >= 1"),
    ({"n_steps_each": 2.5}, TypeError, r"n_steps_each must be an int >= 1"),
    ({"n_steps_each": True}, TypeError, r"n_steps_each must be an int >= 1"),
    ({"eps": 0.0}, ValueError, r"eps must be a finite number > 0, got 0.0"),
    ({"eps": -1e-3}, ValueError, r"eps must be a finite number > 0"),
    ({"eps": math.nan}, ValueError, r"eps must be a finite number > 0"),
    ({"eps": math.inf}, ValueError, r"eps must be a finite number > 0"),
    ({"eps": "1e-3"}, TypeError, r"eps must be a finite number > 0"),
])
def test_bad_sampler_options(kw, exc, match):
    process = sdekit.VP()
    model = GaussianMixture.preset("ring2d").model(process)
    x = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(exc, match=match):
        AnnealedLangevin(**kw)
    with pytest.raises(exc, match=match):
        sdekit.sample(model, x, "langevin", steps=2, **kw)


def test_bad_langevin_at_arguments():
    process = sdekit.VP()
    model = GaussianMixture.preset("ring2d").model(process)
    x = torch.zeros(2, 2, dtype=F64)
    with pytest.raises(ValueError, match=r"step_size must be a finite number > 0"):
        langevin_at(model, x, 0.5, 0.0, 3)
    with pytest.raises(ValueError, match=r"step_size must be a finite number > 0"):
        langevin_at(model, x, 0.5, math.inf, 3)
    with pytest.raises(ValueError, match=r"n_steps must be an int >= 1"):
        langevin_at(model, x, 0.5, 0.01, 0)
    with pytest.raises(TypeError, match=r"n_steps must be an int >= 1"):
        langevin_at(model, x, 0.5, 0.01, 3.0)
    with pytest.raises(ValueError, match=r"sigma\(t\) > 0"):
        langevin_at(model, x, 0.0, 0.01, 3)  # VP: sigma(0) = 0, no score
    with pytest.raises(ValueError, match=r"t must lie in the time domain \[0, 1\]"):
        langevin_at(model, x, 1.5, 0.01, 3)
    with pytest.raises(TypeError, match="model"):
        langevin_at(object(), x, 0.5, 0.01, 3)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        langevin_at(model, [[0.0, 0.0]], 0.5, 0.01, 3)
