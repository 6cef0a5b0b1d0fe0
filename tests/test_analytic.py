import math

import pytest
import scipy.integrate
import scipy.linalg
import torch
from hypothesis import given
from hypothesis import strategies as st

from sdekit import VP, probability_flow
from sdekit.analytic import (
    GaussianMixture,
    GeometricBrownianMotion,
    LinearSDE,
    OrnsteinUhlenbeck,
    reference_solve,
)

from .helpers import PROCESS_NAMES, all_processes

PROCS = all_processes()
GMM = GaussianMixture.random(3, 4, seed=1)


@pytest.mark.parametrize("name", PROCESS_NAMES)
@given(u=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_exact_score_is_gradient_of_exact_log_density(name, u, seed):
    p = PROCS[name]
    t = p.t_min + u * (p.t_max - p.t_min)
    x = GMM.marginal(p, t).sample(5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(GMM.log_prob_t(x, p, t).sum(), x)
    score = GMM.score_t(x.detach(), p, t)
    torch.testing.assert_close(score, grad, rtol=1e-9, atol=1e-9 * float(grad.abs().max()))


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_posterior_mean_satisfies_tweedie(name):
    """Tweedie: E[x0 | x_t] = (x_t + sigma² score)/alpha — an independent check of the posterior mean."""
    p = PROCS[name]
    t = torch.linspace(0.1 * p.t_max, 0.9 * p.t_max, 6, dtype=torch.float64)
    x = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    a, s = p.alpha(t)[:, None], p.sigma(t)[:, None]
    tweedie = (x + s**2 * GMM.score_t(x, p, t)) / a
    torch.testing.assert_close(GMM.posterior_mean(x, p, t), tweedie, rtol=1e-9, atol=1e-9)
    m = GMM.model(p)
    torch.testing.assert_close(m.x0(x, t), tweedie, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(m.eps(x, t), (x - a * tweedie) / s, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(m.v(x, t), a * m.eps(x, t) - s * m.x0(x, t), rtol=1e-9, atol=1e-9)


def test_marginal_is_the_noised_mixture():
    p = VP()
    marg = GMM.marginal(p, 0.37)
    x = torch.randn(7, 3, dtype=torch.float64)
    # both routes are float64 throughout: round-off only (a float32 identity matrix gave 3e-8 here)
    torch.testing.assert_close(marg.log_prob(x), GMM.log_prob_t(x, p, 0.37), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(marg.score(x), GMM.score_t(x, p, 0.37), rtol=1e-12, atol=1e-12)


def test_log_prob_single_gaussian_matches_torch_distributions():
    cov = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
    g = GaussianMixture(torch.tensor([[0.5, -1.0]]), cov[None], torch.ones(1))
    x = torch.randn(9, 2, dtype=torch.float64)
    ref = torch.distributions.MultivariateNormal(torch.tensor([0.5, -1.0]).double(), cov).log_prob(x)
    torch.testing.assert_close(g.log_prob(x), ref)


@pytest.mark.parametrize("name", ["vp_linear", "ve", "edm"])
def test_monte_carlo_moments_of_noised_samples(name):
    """x_t = alpha x0 + sigma z from the mixture's samples has the marginal mixture's mean and covariance.
    Tolerance: 5 Monte-Carlo standard errors, SE of each mean coordinate sqrt(var/n), of each covariance
    entry sqrt((C_ii C_jj + C_ij²)/n) (the Gaussian approximation; the mixture's 4th moments are close)."""
    p = PROCS[name]
    t = 0.3 * p.t_max
    n = 200_000
    gen = torch.Generator().manual_seed(1)
    x0 = GMM.sample(n, generator=gen, dtype=torch.float64)
    xt = p.marginal_sample(x0, t, torch.randn(n, 3, generator=gen, dtype=torch.float64))
    marg = GMM.marginal(p, t)
    mean, cov = marg.mean(), marg.covariance()
    var = torch.diag(cov)
    assert bool(((xt.mean(0) - mean).abs() < 5 * torch.sqrt(var / n)).all())
    emp = torch.cov(xt.T)
    se = torch.sqrt((var[:, None] * var[None, :] + cov**2) / n)
    assert bool(((emp - cov).abs() < 5 * se).all())


def test_pf_ode_transports_the_exact_marginal():
    """Along a PF-ODE trajectory, d/dt log p_t(x_t) = -div f̃(x_t, t) (instantaneous change of variables).
    The exact divergence (autograd, float64) integrated by DOP853 must match the exact log-density change."""
    p = VP()
    gmm = GaussianMixture.preset("ring2d")
    ode = probability_flow(p, gmm.model(p))

    def aug(t, z):
        x = z[:, :2].detach().requires_grad_(True)
        with torch.enable_grad():
            f = ode.drift(t, x)
            div = sum(torch.autograd.grad(f[:, i].sum(), x, retain_graph=True)[0][:, i] for i in range(2))
        return torch.cat([f.detach(), -div.detach()[:, None]], 1)

    t0, t1 = 0.7, 0.05
    x0 = gmm.marginal(p, t0).sample(4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    z1 = reference_solve(aug, torch.cat([x0, torch.zeros(4, 1, dtype=torch.float64)], 1), t0, t1,
                         rtol=1e-10, atol=1e-10)
    x1, dlogp = z1[:, :2], z1[:, 2]
    exact = gmm.log_prob_t(x1, p, t1) - gmm.log_prob_t(x0, p, t0)
    torch.testing.assert_close(dlogp, exact, rtol=0, atol=1e-6)


def test_linear_sde_covariance_and_ou_agree():
    A = torch.tensor([[-1.0, 0.5], [0.0, -2.0]], dtype=torch.float64)
    B = torch.tensor([[0.3, 0.1, 0.0], [0.0, 0.4, 0.2]], dtype=torch.float64)
    lin = LinearSDE(A, B)
    t = 0.8

    def integrand(s):
        e = scipy.linalg.expm(A.numpy() * s)
        return (e @ B.numpy() @ B.numpy().T @ e.T).ravel()

    quad = scipy.integrate.quad_vec(integrand, 0.0, t, epsabs=1e-13)[0].reshape(2, 2)
    torch.testing.assert_close(lin.covariance(t), torch.from_numpy(quad), rtol=1e-9, atol=1e-12)
    x0 = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    torch.testing.assert_close(lin.mean(t, x0), x0 @ torch.from_numpy(scipy.linalg.expm(A.numpy() * t)).T)
    # 1-D: the linear SDE with A = -theta, B = sigma is the OU process (mu = 0)
    ou = OrnsteinUhlenbeck(theta=1.3, mu=0.0, sigma=0.7)
    lin1 = LinearSDE([[-1.3]], [[0.7]])
    assert math.isclose(float(lin1.covariance(t)), ou.variance(t), rel_tol=1e-12)
    assert math.isclose(float(lin1.mean(t, torch.tensor([[2.0]]))), ou.mean(t, 2.0), rel_tol=1e-12)


def test_ou_pathwise_converges_on_finer_quadrature():
    """The pathwise OU solution on a fine path grid is consistent: halving the grid spacing changes it by
    O(h^{3/2}), and its distribution over paths has the exact transition variance."""
    ou = OrnsteinUhlenbeck(theta=2.0, mu=0.5, sigma=0.8)
    n, fine = 4000, 1024
    gen = torch.Generator().manual_seed(0)
    dw = torch.randn(fine, n, 1, generator=gen, dtype=torch.float64) * math.sqrt(1.0 / fine)
    ws = torch.cat([torch.zeros(1, n, 1, dtype=torch.float64), dw.cumsum(0)])
    ts = torch.linspace(0, 1, fine + 1, dtype=torch.float64)
    x0 = torch.zeros(n, 1, dtype=torch.float64)
    xf = ou.pathwise(x0, ts, ws)
    xc = ou.pathwise(x0, ts[::2], ws[::2])
    assert float((xf - xc).pow(2).mean().sqrt()) < 5 * (1 / 512) ** 1.5
    var = ou.variance(1.0)
    assert abs(float(xf.mean()) - ou.mean(1.0, 0.0)) < 5 * math.sqrt(var / n)
    assert abs(float(xf.var()) / var - 1) < 5 * math.sqrt(2 / n)


def test_gbm_exact_and_reference_solver():
    gbm = GeometricBrownianMotion(0.3, 0.2)
    x0 = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    torch.testing.assert_close(gbm.exact(x0, 1.0, torch.zeros(2, 1, dtype=torch.float64)), x0 * math.exp(0.3 - 0.02))
    out = reference_solve(lambda t, x: -x * t, x0, 0.0, 2.0)
    torch.testing.assert_close(out, x0 * math.exp(-2.0), rtol=1e-11, atol=0)
    back = reference_solve(lambda t, x: -x * t, out, 2.0, 0.0)  # decreasing time
    torch.testing.assert_close(back, x0, rtol=1e-10, atol=0)


def test_presets_and_random_are_deterministic():
    for name in ("ring2d", "stress8d", "stress16d"):
        a, b = GaussianMixture.preset(name), GaussianMixture.preset(name)
        assert torch.equal(a.means, b.means) and torch.equal(a.covariances, b.covariances)
    s8 = GaussianMixture.preset("stress8d")
    cond = (s8.evals.max(-1).values / s8.evals.min(-1).values).max()
    assert float(cond) > 50  # anisotropic, as documented
    with pytest.raises(ValueError, match="unknown preset"):
        GaussianMixture.preset("moons")


def test_bad_input():
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture([[0.0, 0.0]], [[[1.0, 2.0], [2.0, 1.0]]], [1.0])
    with pytest.raises(ValueError, match="symmetric"):
        GaussianMixture([[0.0, 0.0]], [[[1.0, 0.5], [0.0, 1.0]]], [1.0])
    with pytest.raises(ValueError, match="sum to 1"):
        GaussianMixture([[0.0], [1.0]], [[1.0], [1.0]], [0.5, 0.6])
    with pytest.raises(ValueError, match="weights must have shape"):
        GaussianMixture([[0.0], [1.0]], [[1.0], [1.0]], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        GaussianMixture([[float("nan")]], [[1.0]], [1.0])
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3\)"):
        GMM.log_prob(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="NaN"):
        GMM.model(VP()).x0(torch.full((1, 3), float("inf")), 0.5)




@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_reference_solve_in_log_snr_is_the_exact_gaussian_flow(name):
    """For Gaussian data N(mu, diag s²) the PF-ODE flow is known in closed form for every schedule: coordinate
    i moves as x_t = alpha_t mu + sqrt(alpha_t² s² + sigma_t²) / sqrt(alpha_T² s² + sigma_T²) (x_T - alpha_T mu)
    (the linear map that carries one Gaussian marginal to the next). The solve in v = log(sigma/alpha) matches
    it at every requested time to the tolerance, on the discrete DDPM schedule too (where the drift in t jumps
    at the 1000 knots)."""
    from sdekit.analytic import reference_solve_log_snr

    process = all_processes()[name]
    mu = torch.tensor([[0.7, -1.2, 0.1]], dtype=torch.float64)
    s2 = torch.tensor([[0.05, 0.6, 2.0]], dtype=torch.float64)
    model = GaussianMixture(mu, s2, torch.ones(1)).model(process)
    x_T = process.prior_sample((16, 3), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t_hi, t_lo = float(process.t_max), float(process.t_min)
    ts = torch.linspace(t_hi, t_lo, 9, dtype=torch.float64)

    def exact(t):
        a = process.alpha(torch.tensor(t, dtype=torch.float64)).detach()
        s = process.sigma(torch.tensor(t, dtype=torch.float64)).detach()
        a_T = process.alpha(torch.tensor(t_hi, dtype=torch.float64)).detach()
        s_T = process.sigma(torch.tensor(t_hi, dtype=torch.float64)).detach()
        return a * mu + torch.sqrt(a**2 * s2 + s**2) / torch.sqrt(a_T**2 * s2 + s_T**2) * (x_T - a_T * mu)

    got = reference_solve_log_snr(model, x_T, t_hi, t_lo, t_eval=ts, rtol=1e-11, atol=1e-11)
    want = torch.stack([exact(float(t)) for t in ts])
    scale = float(want.abs().max())
    assert float((got - want).abs().max()) < 1e-8 * scale, name
    end = reference_solve_log_snr(model, x_T, t_hi, t_lo, rtol=1e-11, atol=1e-11)
    assert float((end - want[-1]).abs().max()) < 1e-8 * scale


def test_reference_solve_in_log_snr_needs_noise_at_both_ends():
    from sdekit.analytic import reference_solve_log_snr

    model = GaussianMixture.preset("ring2d").model(VP())
    with pytest.raises(ValueError, match="sigma > 0 at both ends"):
        reference_solve_log_snr(model, torch.zeros(2, 2, dtype=torch.float64), 1.0, 0.0)
