import pytest
import torch
import torchsde

import sdekit
from sdekit import ODE, SDE, from_torchsde, to_torchsde
from sdekit.analytic import GeometricBrownianMotion


class TorchsdeGBM(torch.nn.Module):
    noise_type = "diagonal"
    sde_type = "ito"

    def f(self, t, y):
        return 0.5 * y

    def g(self, t, y):
        return 0.3 * y


class TorchsdeScalar(torch.nn.Module):
    noise_type = "scalar"
    sde_type = "ito"

    def f(self, t, y):
        return -y

    def g(self, t, y):
        return (0.2 + y.abs()).unsqueeze(-1) * torch.ones(1)


def test_from_torchsde_and_back():
    obj = TorchsdeGBM()
    sde = from_torchsde(obj)
    y = torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor(0.3, dtype=torch.float64)
    torch.testing.assert_close(sde.drift(t, y), obj.f(t, y))
    torch.testing.assert_close(sde.diffusion(t, y), obj.g(t, y))
    view = to_torchsde(sde, y.shape)
    assert view.noise_type == "diagonal"
    torch.testing.assert_close(view.g(t, y), obj.g(t, y))
    sc = from_torchsde(TorchsdeScalar())
    assert sc.noise_type == "scalar" and sc.brownian_shape(y.shape) == (4,)
    torch.testing.assert_close(to_torchsde(sc, y.shape).g(t, y), TorchsdeScalar().g(t, y))


def test_sdekit_sde_runs_in_torchsde_against_exact_solution():
    """An sdekit GBM on image-shaped states solved by torchsde's Milstein (strong order 1) on a fine grid
    agrees with the exact pathwise solution from the same Brownian motion."""
    gbm = GeometricBrownianMotion(mu=0.5, sigma=0.4)
    shape = (8, 2, 3, 3)
    x0 = torch.ones(shape, dtype=torch.float64)
    view = to_torchsde(gbm, shape)
    y0 = x0.reshape(8, -1)
    bm = torchsde.BrownianInterval(0.0, 1.0, size=y0.shape, dtype=torch.float64, entropy=3)
    ys = torchsde.sdeint(view, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), bm=bm, dt=1e-3,
                         method="milstein")
    exact = gbm.exact(y0, 1.0, bm(0.0, 1.0))
    # strong error of Milstein is ~ C dt with C ~ sigma² x e^{mu}/sqrt(2) ~ 0.2: 1e-2 is 50x that bound
    assert float((ys[-1] - exact).abs().max().detach()) < 1e-2


def test_noise_geometry_on_image_states():
    x = torch.randn(2, 3, 4, 4)
    diag = SDE(lambda t, x: -x, lambda t, x: 0.1 * x, noise_type="diagonal")
    assert diag.brownian_shape(x.shape) == x.shape
    scal = SDE(lambda t, x: -x, lambda t, x: torch.tensor([1.0, 2.0]), noise_type="scalar")
    dw = torch.tensor([0.5, -1.0])
    out = scal.g_dw(scal.diffusion(0.0, x), dw, x)
    torch.testing.assert_close(out, torch.stack([torch.full((3, 4, 4), 0.5), torch.full((3, 4, 4), -2.0)]))
    gen = SDE(lambda t, x: -x, lambda t, x: torch.ones(*x.shape, 2), noise_type="general", brownian_size=2)
    assert gen.brownian_shape(x.shape) == (2, 2)
    out = gen.g_dw(gen.diffusion(0.0, x), torch.tensor([[1.0, 2.0], [3.0, 4.0]]), x)
    torch.testing.assert_close(out[:, 0, 0, 0], torch.tensor([3.0, 7.0]))


def test_diffusion_jvp_by_autograd():
    sde = SDE(lambda t, x: x, lambda t, x: torch.sin(x), noise_type="diagonal")
    x = torch.randn(5, 2, dtype=torch.float64)
    g = sde.diffusion(0.0, x)
    torch.testing.assert_close(sde.diffusion_jvp(0.0, x, g), torch.cos(x) * g)


def test_ode_and_errors():
    ode = ODE(lambda t, x: -x)
    assert ode.is_ode and ode.noise_type is None
    with pytest.raises(TypeError, match="ODE"):
        ode.diffusion(0.0, torch.zeros(1))
    with pytest.raises(ValueError, match="brownian_size"):
        SDE(lambda t, x: x, lambda t, x: x, noise_type="general")
    with pytest.raises(ValueError, match="unknown noise_type"):
        SDE(lambda t, x: x, lambda t, x: x, noise_type="multiplicative")
    with pytest.raises(TypeError, match="drift"):
        SDE(None, lambda t, x: x)
    with pytest.raises(TypeError, match="callable"):
        SDE(1.0, lambda t, x: x)

    class Strat(TorchsdeGBM):
        sde_type = "stratonovich"

    with pytest.raises(ValueError, match="Itô"):
        from_torchsde(Strat())


def test_reverse_sde_and_pf_ode_drifts():
    p = sdekit.VP()
    gmm = sdekit.analytic.GaussianMixture.preset("ring2d")
    m = gmm.model(p)
    x = torch.randn(4, 2, dtype=torch.float64)
    t = torch.tensor(0.4, dtype=torch.float64)
    s = gmm.score_t(x, p, t)
    rev = sdekit.reverse_sde(p, m)
    ode = sdekit.probability_flow(p, m)
    torch.testing.assert_close(rev.drift(t, x), p.f(t) * x - p.g2(t) * s)
    torch.testing.assert_close(ode.drift(t, x), p.f(t) * x - 0.5 * p.g2(t) * s)
    assert ode.is_ode and rev.noise_type == "additive"
    assert isinstance(sdekit.reverse_sde(p, m, lambda_=0.0), sdekit.ProbabilityFlowODE)
    half = sdekit.reverse_sde(p, m, lambda_=0.5)
    torch.testing.assert_close(half.drift(t, x), p.f(t) * x - 0.625 * p.g2(t) * s)
    torch.testing.assert_close(half.diffusion(t, x), 0.5 * p.g(t))
