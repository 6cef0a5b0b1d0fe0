import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sdekit import EDM, VE, VP, SubVP
from sdekit.schedules import DiscreteSchedule

from .helpers import DDPM_BETAS, PROCESS_NAMES, all_processes

PROCS = all_processes()


def grid(p, n=2001):
    return torch.linspace(max(p.t_min, 1e-4), p.t_max, n, dtype=torch.float64)


@pytest.mark.parametrize("name", ["vp_linear", "vp_cosine", "vp_discrete"])
@given(u=st.floats(0.0, 1.0))
def test_vp_preserves_variance(name, u):
    p = PROCS[name]
    t = torch.tensor(p.t_min + u * (p.t_max - p.t_min), dtype=torch.float64)
    assert abs(float(p.alpha(t) ** 2 + p.sigma(t) ** 2) - 1.0) < 1e-14


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_log_snr_strictly_decreasing_and_inverse(name):
    p = PROCS[name]
    t = grid(p)
    lam = p.log_snr(t)
    assert bool((lam[1:] < lam[:-1]).all())
    back = p.t_from_log_snr(lam)
    # The inverse is closed-form (or exact piecewise-linear): it must agree to a few ulps of t_max.
    assert float((back - t).abs().max()) < 1e-12 * max(1.0, p.t_max)


def _num_deriv(fn, t, h=1e-6):
    return (fn(t + h) - fn(t - h)) / (2 * h)


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_drift_and_diffusion_match_their_definitions(name):
    """f = d log alpha/dt and g² = d sigma²/dt - 2 f sigma², checked by central differences (float64;
    truncation O(h²) ~ 1e-12 relative, round-off ~ eps/h ~ 1e-10: tolerance 1e-6 relative)."""
    p = PROCS[name]
    t = torch.linspace(0.1 * p.t_max, 0.9 * p.t_max, 37, dtype=torch.float64)
    if name == "vp_discrete":  # beta is piecewise constant there: stay off the knots
        t = (torch.floor(t * 1000) + 0.5) / 1000
    h = 1e-6 * p.t_max
    f_num = _num_deriv(p.log_alpha, t, h)
    s2 = lambda s: p.sigma(s) ** 2  # noqa: E731
    g2_num = _num_deriv(s2, t, h) - 2 * f_num * s2(t)
    torch.testing.assert_close(p.f(t), f_num, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(p.g2(t), g2_num, rtol=1e-6, atol=1e-9)


def test_closed_forms_against_papers():
    t = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
    b0, b1 = 0.1, 20.0
    vp, svp = VP(), SubVP()
    # score_sde VPSDE: beta(t) = b0 + t (b1 - b0); sub-VP diffusion beta (1 - exp(-2 b0 t - (b1-b0) t²))
    torch.testing.assert_close(vp.g2(t), b0 + t * (b1 - b0), rtol=1e-14, atol=0)
    svp_g2 = (b0 + t * (b1 - b0)) * (1 - torch.exp(-2 * b0 * t - (b1 - b0) * t**2))
    torch.testing.assert_close(svp.g2(t), svp_g2, rtol=1e-12, atol=1e-15)
    # cosine: alpha = f(t)/f(0)
    cos = VP("cosine")
    tc = torch.linspace(0, 0.99, 11, dtype=torch.float64)
    f = lambda s: torch.cos(math.pi / 2 * (s + 0.008) / 1.008)  # noqa: E731
    torch.testing.assert_close(cos.alpha(tc), f(tc) / f(torch.zeros(()).double()), rtol=1e-14, atol=0)
    # VE and EDM
    ve = VE(0.01, 50.0)
    torch.testing.assert_close(ve.sigma(t), 0.01 * (5000.0**t), rtol=1e-13, atol=0)
    torch.testing.assert_close(EDM().sigma(torch.tensor([0.5, 3.0]).double()), torch.tensor([0.5, 3.0]).double())


def test_discrete_schedule_reproduces_alphas_cumprod_and_index_map():
    p = VP.from_betas(DDPM_BETAS)
    ac = torch.cumprod(1 - DDPM_BETAS, 0)
    i = torch.arange(1000)
    t = p.t_from_index(i)
    torch.testing.assert_close(t, (i + 1).double() / 1000)
    torch.testing.assert_close(p.alpha(t) ** 2, ac, rtol=1e-13, atol=0)
    torch.testing.assert_close(p.index_from_t(t), i.double())
    # t = 0 is the clean end (index -1): alpha = 1, sigma = 0.
    assert float(p.alpha(0.0)) == 1.0 and float(p.sigma(0.0)) == 0.0
    q = VP.from_alphas_cumprod(ac)
    torch.testing.assert_close(q.log_snr(t), p.log_snr(t))


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_marginal_sample_per_sample_time(name):
    p = PROCS[name]
    x0 = torch.randn(5, 3, dtype=torch.float64)
    z = torch.randn(5, 3, dtype=torch.float64)
    t = torch.linspace(p.t_min + 1e-3, p.t_max, 5, dtype=torch.float64)
    xt = p.marginal_sample(x0, t, z)
    expect = p.alpha(t)[:, None] * x0 + p.sigma(t)[:, None] * z
    torch.testing.assert_close(xt, expect)
    # the drift is f(t) x, the diffusion g(t), broadcast per sample
    torch.testing.assert_close(p.drift(t, x0), p.f(t)[:, None] * x0)


@pytest.mark.parametrize("name", PROCESS_NAMES)
def test_prior(name):
    p = PROCS[name]
    x = p.prior_sample((4000, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # std of the sample std over 8000 normal draws is ~ s/sqrt(2n): allow 5 of those.
    assert abs(float(x.std()) / p.prior_std - 1) < 5 / math.sqrt(2 * 8000)
    lp = p.prior_log_prob(x[:3])
    ref = torch.distributions.Normal(0.0, p.prior_std).log_prob(x[:3]).sum(-1)
    torch.testing.assert_close(lp, ref)


def test_bad_input():
    with pytest.raises(ValueError, match="beta_min must be < beta_max"):
        VP(beta_min=20.0, beta_max=0.1)
    with pytest.raises(ValueError, match="beta_min"):
        VP(beta_min=-1.0)
    with pytest.raises(ValueError, match="t_max"):
        VP("cosine", t_max=1.0)
    with pytest.raises(ValueError, match="unknown schedule"):
        VP("quartic")
    with pytest.raises(ValueError, match="outside the time domain"):
        VP().alpha(1.5)
    with pytest.raises(ValueError, match="outside the time domain"):
        EDM().sigma(torch.tensor([1.0, -0.1]))
    with pytest.raises(ValueError, match="NaN"):
        VE().sigma(float("nan"))
    with pytest.raises(ValueError, match="betas"):
        VP.from_betas(torch.tensor([0.1, 1.5]))
    with pytest.raises(ValueError, match="strictly decreasing"):
        VP.from_alphas_cumprod(torch.tensor([0.9, 0.95]))
    with pytest.raises(ValueError, match="sigma_min must be < sigma_max"):
        VE(sigma_min=5.0, sigma_max=1.0)
    with pytest.raises(TypeError, match="discrete schedule"):
        VP().t_from_index(3)
    with pytest.raises(ValueError, match="noise shape"):
        VP().marginal_sample(torch.zeros(2, 3), 0.5, torch.zeros(2, 4))
    with pytest.raises(ValueError):
        DiscreteSchedule.linear_ddpm(10, 0.5, 0.1)
