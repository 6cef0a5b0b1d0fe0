import math

import pytest
import torch
import torchdiffeq
import torchsde
from hypothesis import given
from hypothesis import strategies as st

from sdekit import ODE, SDE, BrownianPath, PIController, solve, to_torchsde
from sdekit.analytic import GeometricBrownianMotion, LinearSDE, reference_solve

F64 = torch.float64


def test_em_and_milstein_agree_with_torchsde_on_the_same_brownian_path():
    """Same scheme, same increments: torchsde's Itô Euler/Milstein and ours agree to float64 rounding."""
    gbm = GeometricBrownianMotion(0.3, 0.6)
    x0 = torch.linspace(0.5, 2.0, 12, dtype=F64).reshape(4, 3)
    n = 64
    grid = torch.linspace(0, 1, n + 1, dtype=F64)
    bm = BrownianPath(0.0, 1.0, x0.shape, seed=5, dtype=F64)

    class Wrapped:  # torchsde-style Brownian motion reading our path
        shape, dtype, device, levy_area_approximation = x0.shape, F64, x0.device, "none"

        def __call__(self, ta, tb=None, return_U=False, return_A=False):
            return bm(float(ta), float(tb))

    for ours, theirs in (("euler_maruyama", "euler"), ("milstein", "milstein")):
        ys = torchsde.sdeint(to_torchsde(gbm, x0.shape), x0, grid, method=theirs, dt=1 / n, bm=Wrapped())
        sol = solve(gbm, x0, ours, ts=grid, brownian=bm)
        torch.testing.assert_close(sol.x, ys[-1].detach(), rtol=1e-12, atol=1e-12)


def test_rk4_and_dopri5_agree_with_torchdiffeq():
    a = torch.tensor([[-0.5, 1.0], [-1.0, -0.2]], dtype=F64)
    ode = ODE(lambda t, x: torch.tanh(x @ a.T) + 0.1 * t)
    x0 = torch.tensor([[1.0, -1.0], [0.2, 0.3]], dtype=F64)
    grid = torch.linspace(0, 2, 41, dtype=F64)
    ref = torchdiffeq.odeint(lambda t, x: ode.drift(t, x), x0, grid, method="rk4",
                             options={"perturb": False, "step_size": 0.05})
    ours = solve(ode, x0, "rk4", ts=grid, save_at="steps")
    # torchdiffeq's rk4 uses the 3/8 rule variant ("rk4" = rk4_alt_step_func): both are order 4, so compare
    # against a tight reference instead of step for step.
    exact = reference_solve(ode, x0, 0.0, 2.0)
    assert float((ours.x - exact).abs().max()) < 1e-6 and float((ref[-1] - exact).abs().max()) < 1e-6
    ctrl = PIController(rtol=1e-8, atol=1e-8)
    sol = solve(ode, x0, "dopri5", t0=0.0, t1=2.0, controller=ctrl)
    td = torchdiffeq.odeint(lambda t, x: ode.drift(t, x), x0, torch.tensor([0.0, 2.0], dtype=F64), method="dopri5",
                            rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(sol.x, td[-1], rtol=0, atol=1e-7)
    torch.testing.assert_close(sol.x, exact, rtol=0, atol=1e-7)


@given(seed=st.integers(0, 10_000), tol=st.sampled_from([1e-4, 1e-6, 1e-8]))
def test_adaptive_meets_tolerance_on_random_linear_systems(seed, tol):
    """Global error of Dopri5 with rtol = atol = tol stays within C·tol (C = 100: local control does not bound
    the global error exactly; on these stable systems it is typically ~1-10x tol)."""
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(3, 3, generator=g, dtype=F64)
    a = m - m.T - torch.eye(3, dtype=F64) * 0.5  # rotation + damping: stable
    x0 = torch.randn(2, 3, generator=g, dtype=F64)
    sol = solve(ODE(lambda t, x: x @ a.T), x0, "dopri5", t0=0.0, t1=2.0, controller=PIController(rtol=tol, atol=tol))
    exact = x0 @ torch.linalg.matrix_exp(2 * a).T
    assert float((sol.x - exact).abs().max()) <= 100 * tol * max(1.0, float(exact.abs().max()))
    assert sol.stats["n_accepted"] > 0 and sol.stats["nfe"] >= 6 * sol.stats["n_accepted"]


def test_dense_output_save_at():
    ode = ODE(lambda t, x: torch.stack([x[:, 1], -x[:, 0]], 1))
    x0 = torch.tensor([[1.0, 0.0]], dtype=F64)
    ts = torch.linspace(0, 5, 23, dtype=F64)
    sol = solve(ode, x0, "dopri5", t0=0.0, t1=5.0, controller=PIController(rtol=1e-9, atol=1e-9), save_at=ts)
    assert sol.xs.shape == (23, 1, 2)
    # dense output is order 4: between steps it is accurate to ~1e-8 here (steps ~0.1-0.3)
    torch.testing.assert_close(sol.xs[:, 0, 0], torch.cos(ts), rtol=0, atol=1e-7)
    # fixed grid: save_at must be grid points
    sol = solve(ode, x0, "rk4", ts=torch.linspace(0, 1, 11), save_at=[0.0, 0.5, 1.0])
    assert sol.xs.shape == (3, 1, 2) and torch.equal(sol.xs[0], x0)
    with pytest.raises(ValueError, match="not a point of the fixed grid"):
        solve(ode, x0, "rk4", ts=torch.linspace(0, 1, 11), save_at=[0.55])


@given(a=st.floats(-2, 2), b=st.floats(0.1, 1.5), seed=st.integers(0, 1000))
def test_em_with_zero_diffusion_is_euler(a, b, seed):
    x0 = torch.randn(5, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)
    drift = lambda t, x: a * x + torch.sin(x) * b  # noqa: E731
    sde = SDE(drift, lambda t, x: torch.zeros_like(x), noise_type="diagonal")
    grid = torch.linspace(0, 1, 17, dtype=F64)
    em = solve(sde, x0, "euler_maruyama", ts=grid, generator=torch.Generator().manual_seed(seed))
    eu = solve(ODE(drift), x0, "euler", ts=grid)
    assert torch.equal(em.x, eu.x)


@given(seed=st.integers(0, 1000), name=st.sampled_from(["euler_maruyama", "stochastic_heun", "sra1", "milstein"]))
def test_decreasing_grid_equals_time_reversed_problem(seed, name):
    """Solving on a decreasing grid [1 → 0] equals solving the reflected problem y(s) = x(-s) on [-1 → 0]
    with drift -f(-s, y), the same noise coefficient and the same Brownian increments."""
    f = lambda t, x: -x * (1 + t) + torch.cos(x)  # noqa: E731
    g = lambda t, x: torch.full_like(x, 0.3) * (1 + t)  # noqa: E731
    fwd = SDE(f, g, noise_type="additive")
    rev = SDE(lambda s, y: -f(-s, y), lambda s, y: g(-s, y), noise_type="additive")
    x0 = torch.randn(3, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)
    bm = BrownianPath(0, 1, x0.shape, seed=seed, dtype=F64, levy_area=True)
    bm_r = BrownianPath(-1, 0, x0.shape, seed=seed, dtype=F64, levy_area=True)
    grid = torch.linspace(1, 0, 9, dtype=F64)
    a = solve(fwd, x0, name, ts=grid, brownian=bm)
    # feed the reflected problem the same increments: on [-1, 0] step k uses bm over the mirrored step
    class Mirror:
        levy_area = True

        def __call__(self, s, t):
            return bm(-s, -t)

        def levy(self, s, t):
            return bm.levy(-s, -t)

    b = solve(rev, x0, name, ts=-grid, brownian=Mirror())
    torch.testing.assert_close(a.x, b.x, rtol=1e-12, atol=1e-12)
    del bm_r


@given(seed=st.integers(0, 100))
def test_em_converges_to_linear_sde_moments(seed):
    """Random stable 2-D linear SDE with general (matrix) noise: EM with 64 steps and 4000 paths matches the
    exact mean and covariance within the EM bias (O(dt) ≈ 0.05 relative) plus 5 Monte-Carlo SE."""
    g = torch.Generator().manual_seed(seed)
    a = -torch.eye(2, dtype=F64) + 0.3 * torch.randn(2, 2, generator=g, dtype=F64)
    b = 0.5 * torch.randn(2, 3, generator=g, dtype=F64)
    lin = LinearSDE(a, b)
    n = 4000
    x0 = torch.ones(n, 2, dtype=F64)
    x = solve(lin, x0, "euler_maruyama", ts=torch.linspace(0, 1, 65, dtype=F64), generator=g).x
    cov = lin.covariance(1.0)
    mean = lin.mean(1.0, x0[:1])[0]
    sd = torch.sqrt(torch.diag(cov))
    assert bool(((x.mean(0) - mean).abs() <= 0.05 * mean.abs() + 5 * sd / math.sqrt(n) + 1e-3).all())
    emp = torch.cov(x.T)
    assert bool(((emp - cov).abs() <= 0.05 * cov.abs().max() + 5 * sd[:, None] * sd[None] * math.sqrt(2 / n)).all())


def test_determinism_and_stats():
    sde = SDE(lambda t, x: -x, lambda t, x: 0.5 * torch.ones_like(x), noise_type="diagonal")
    x0 = torch.ones(8, 4)
    s1 = solve(sde, x0, "euler_maruyama", t0=0.0, t1=1.0, dt=0.1, generator=torch.Generator().manual_seed(1))
    s2 = solve(sde, x0, "euler_maruyama", t0=0.0, t1=1.0, dt=0.1, generator=torch.Generator().manual_seed(1))
    assert torch.equal(s1.x, s2.x) and s1.x.dtype == torch.float32
    assert s1.stats["nfe"] == 10 and s1.stats["n_steps"] == 10
    back = solve(ODE(lambda t, x: -x), x0.double(), "heun", t0=1.0, t1=0.0, dt=-0.25)
    assert back.stats["nfe"] == 8 and back.x.dtype == torch.float64


def test_bad_input():
    ode = ODE(lambda t, x: -x)
    x0 = torch.ones(2, 2)
    with pytest.raises(ValueError, match="strictly monotone"):
        solve(ode, x0, "euler", ts=[0.0, 0.5, 0.5, 1.0])
    with pytest.raises(ValueError, match="dt=0"):
        solve(ode, x0, "euler", t0=0.0, t1=1.0, dt=0.0)
    with pytest.raises(ValueError, match="sign"):
        solve(ode, x0, "euler", t0=0.0, t1=1.0, dt=-0.1)
    with pytest.raises(ValueError, match="unknown solver"):
        solve(ode, x0, "rk5", ts=[0.0, 1.0])
    with pytest.raises(ValueError, match="NaN"):
        solve(ode, torch.tensor([[float("nan")]]), "euler", ts=[0.0, 1.0])
    diag = SDE(lambda t, x: -x, lambda t, x: x, noise_type="diagonal")
    with pytest.raises(ValueError, match="cannot handle noise_type='diagonal'"):
        solve(diag, x0, "sra1", ts=[0.0, 1.0])
    with pytest.raises(ValueError, match="cannot handle noise_type='diagonal'"):
        solve(diag, x0, "rk4", ts=[0.0, 1.0])
    blow = ODE(lambda t, x: x**2)
    with pytest.raises(FloatingPointError, match=r"step \d+ \(t = "):
        solve(blow, torch.full((1, 1), 10.0), "euler", ts=torch.linspace(0, 1, 11))
    with pytest.raises(RuntimeError, match="max_steps"):
        solve(ODE(lambda t, x: torch.cos(50 * t) * x), x0, "dopri5", t0=0.0, t1=10.0,
              controller=PIController(rtol=1e-10, atol=1e-10, max_steps=20))
    with pytest.raises(RuntimeError, match="underflow"):
        solve(ODE(lambda t, x: 1 / (1 - t) ** 3 * torch.ones_like(x)), x0, "dopri5", t0=0.0, t1=1.0,
              controller=PIController(rtol=1e-8, atol=1e-8, dt_min=1e-6))
    with pytest.raises(ValueError, match="no embedded error estimate"):
        solve(ode, x0, "rk4", t0=0.0, t1=1.0, controller=PIController())
    with pytest.raises(ValueError, match="rtol"):
        PIController(rtol=-1.0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        solve(ode, [1.0], "euler", ts=[0.0, 1.0])
