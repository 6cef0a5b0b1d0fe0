"""Time reaches user functions as torchdiffeq and torchsde hand it over: a 0-d tensor in the state's dtype and
on the state's device, so the common ``torch.cat([t.expand(B, 1), x], 1)`` pattern works with an ordinary
``nn.Module`` of either precision.

The torchsde-style problems below follow the shape of torchsde's own test problems Ex1-Ex4 (tiny networks on
the state with time concatenated; diagonal, scalar, additive and general noise), written here. EM, Milstein
and SRA1 are also checked step for step against torchsde's Euler, Milstein and SRK on the same Brownian
increments: an independent implementation agreeing to rounding.
"""

import pytest
import torch
import torchsde
from torch import nn

import sdekit
from sdekit import ODE, BrownianPath, PIController, from_torchsde, solve
from sdekit.solvers import REGISTRY, DiffusionSampler

F64 = torch.float64
DTYPES = [torch.float32, F64]
D, M, B = 3, 2, 5
GENERIC = sorted(n for n, c in REGISTRY.items() if not issubclass(c, DiffusionSampler))
SDE_SOLVERS = [n for n in GENERIC if REGISTRY[n].noise_types]
ADAPTIVE = [n for n in GENERIC if REGISTRY[n]().adaptive]


class TimeCheck:
    """Records that every call got ``t`` as a 0-d tensor in ``x``'s dtype and on its device."""

    def __init__(self):
        self.calls, self.bad = 0, []

    def __call__(self, t, x):
        self.calls += 1
        ok = isinstance(t, torch.Tensor) and t.ndim == 0 and t.dtype == x.dtype and t.device == x.device
        if not ok:
            self.bad.append((type(t).__name__, getattr(t, "dtype", None), getattr(t, "shape", None), x.dtype))


def _net(d_in, d_out, dtype, seed, last=None):
    torch.manual_seed(seed)  # only to build the test's fixed weights
    layers = [nn.Linear(d_in, 3), nn.Softplus(), nn.Linear(3, d_out)] + ([last] if last is not None else [])
    return nn.Sequential(*layers).to(dtype)


class TorchsdeStyle(nn.Module):
    """A torchsde-style SDE (``f``, ``g``, ``noise_type``, ``sde_type``) with networks on ``[t, y]``."""

    sde_type = "ito"

    def __init__(self, noise_type, dtype, seed=0, elementwise=False):
        super().__init__()
        self.noise_type, self.check = noise_type, TimeCheck()
        self.brownian_size = {"additive": M, "general": M}.get(noise_type)
        g_out = {"diagonal": D, "scalar": D, "additive": D * M, "general": D * M}[noise_type]
        g_in = 1 if noise_type == "additive" else D + 1  # additive noise: g depends on t only
        self.f_net = _net(D + 1, D, dtype, seed)
        self.g_net = _net(g_in, g_out, dtype, seed + 1, nn.Sigmoid())
        # a diagonal diffusion whose i-th entry depends on y_i alone (Milstein's assumption for diagonal noise)
        self.elementwise = elementwise
        self.g_coef = torch.linspace(-0.8, 0.9, 3 * D, dtype=dtype).reshape(3, D)

    def f(self, t, y):
        self.check(t, y)
        return self.f_net(torch.cat([t.expand(y.size(0), 1), y], dim=1))

    def g(self, t, y):
        self.check(t, y)
        tt = t.expand(y.size(0), 1)
        if self.elementwise:
            a, b, c = self.g_coef
            return torch.sigmoid(a * y + b * tt + c)
        if self.noise_type == "additive":
            return self.g_net(tt).view(y.size(0), D, M)
        out = self.g_net(torch.cat([tt, y], dim=1))
        if self.noise_type == "scalar":
            return out.unsqueeze(-1)
        return out if self.noise_type == "diagonal" else out.view(y.size(0), D, M)


def _x0(dtype):
    return torch.linspace(-1, 1, B * D, dtype=dtype).reshape(B, D)


# --- ODE solvers ------------------------------------------------------------------------------------------
def _ode(dtype):
    net = _net(D + 1, D, dtype, 3)
    check = TimeCheck()

    def f(t, x):
        check(t, x)
        return net(torch.cat([t.expand(x.shape[0], 1), x], 1))

    return ODE(f), check


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("solver", GENERIC)
def test_fixed_grid_solvers_hand_time_in_the_state_dtype(solver, dtype):
    ode, check = _ode(dtype)
    sol = solve(ode, _x0(dtype), solver, ts=torch.linspace(0, 1, 6), save_at="steps")
    assert sol.x.dtype == dtype and bool(torch.isfinite(sol.x).all())
    assert check.calls > 0 and not check.bad, check.bad[:3]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("solver", ADAPTIVE)
def test_adaptive_solvers_and_dense_output_hand_time_in_the_state_dtype(solver, dtype):
    ode, check = _ode(dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-8
    sol = solve(ode, _x0(dtype), solver, t0=0.0, t1=1.0, controller=PIController(rtol=tol, atol=tol),
                save_at=torch.linspace(0, 1, 7))
    assert sol.xs.shape == (7, B, D) and sol.xs.dtype == dtype and bool(torch.isfinite(sol.xs).all())
    assert check.calls > 0 and not check.bad, check.bad[:3]
    # the float32 solve follows the float64 one to its tolerance (same functions, same weights)
    if dtype == torch.float32:
        ode64, _ = _ode(F64)
        ref = solve(ode64, _x0(F64), solver, t0=0.0, t1=1.0, controller=PIController(rtol=1e-10, atol=1e-10),
                    save_at=torch.linspace(0, 1, 7))
        assert float((sol.xs.detach().double() - ref.xs.detach()).abs().max()) < 1e-3


def test_the_torchdiffeq_pattern_from_the_issue():
    net = torch.nn.Linear(3, 2)
    f = lambda t, x: net(torch.cat([t.expand(x.shape[0], 1), x], 1))  # noqa: E731
    sol = solve(ODE(f), torch.randn(4, 2, generator=torch.Generator().manual_seed(0)), "rk4",
                ts=torch.linspace(0, 1, 5))
    assert sol.x.dtype == torch.float32 and sol.x.shape == (4, 2)


# --- SDE solvers on torchsde-style problems -----------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("solver, noise_type", [(s, nt) for s in SDE_SOLVERS for nt in REGISTRY[s].noise_types])
def test_sde_solvers_on_torchsde_style_problems(solver, noise_type, dtype):
    cls = REGISTRY[solver]
    obj = TorchsdeStyle(noise_type, dtype)
    sde = from_torchsde(obj)
    x0 = _x0(dtype)
    shape = sde.brownian_shape(tuple(x0.shape))
    for brownian in (None, BrownianPath(0, 1, shape, seed=1, dtype=dtype, levy_area=cls.needs_levy_area)):
        if brownian is None and cls.needs_levy_area:
            continue
        gen = torch.Generator().manual_seed(0) if brownian is None else None
        sol = solve(sde, x0, solver, ts=torch.linspace(0, 1, 11), brownian=brownian, generator=gen)
        assert sol.x.dtype == dtype and bool(torch.isfinite(sol.x).all())
    assert obj.check.calls > 0 and not obj.check.bad, obj.check.bad[:3]


class _TorchsdeBM:
    """torchsde's Brownian-motion interface over an sdekit path (torchsde's scalar noise has a trailing 1)."""

    def __init__(self, bm, shape, scalar=False):
        self.bm, self.shape, self.scalar = bm, shape, scalar
        self.dtype, self.device = bm.dtype, bm.device
        self.levy_area_approximation = "space-time" if bm.levy_area else "none"

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        ta, tb = float(ta), float(tb)
        if return_U:
            w, area = self.bm.levy(ta, tb)
            return w, (tb - ta) * (0.5 * w + area)  # torchsde's U = h (W/2 + H)
        w = self.bm(ta, tb)
        return w.unsqueeze(-1) if self.scalar else w


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ours, theirs, noise_type", [
    ("euler_maruyama", "euler", "diagonal"), ("euler_maruyama", "euler", "scalar"),
    ("euler_maruyama", "euler", "additive"), ("euler_maruyama", "euler", "general"),
    ("milstein", "milstein", "diagonal"), ("sra1", "srk", "additive"),
])
def test_agrees_with_torchsde_on_the_same_increments(ours, theirs, noise_type, dtype):
    # Milstein's correction assumes g_i depends on y_i alone for diagonal noise (torchsde's and ours): the
    # two differ by design on a diffusion network that mixes coordinates, so that case uses an elementwise g
    obj = TorchsdeStyle(noise_type, dtype, seed=4, elementwise=ours == "milstein")
    sde = from_torchsde(obj)
    x0 = _x0(dtype)
    n = 16
    grid = torch.linspace(0, 1, n + 1, dtype=dtype)
    shape = sde.brownian_shape(tuple(x0.shape))
    bm = BrownianPath(0, 1, shape, seed=3, dtype=dtype, levy_area=REGISTRY[ours].needs_levy_area)
    mine = solve(sde, x0, ours, ts=grid, brownian=bm).x
    with torch.no_grad():
        ts_shape = (B, 1) if noise_type == "scalar" else shape
        ts_bm = _TorchsdeBM(bm, ts_shape, noise_type == "scalar")
        ys = torchsde.sdeint(obj, x0, grid, method=theirs, dt=1 / n, bm=ts_bm)
    # the same scheme on the same increments: float rounding of the same operations in another order
    tol = 2e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(mine.detach(), ys[-1], atol=tol, rtol=tol)


# --- diffusion samplers pass t on the state's device; the network gets t in x's dtype ---------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_samplers_and_reverse_sde_give_the_network_time_in_its_dtype(dtype):
    seen = []

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(D + 1, D).to(dtype)

        def forward(self, x, t):
            seen.append((t.dtype, t.device, tuple(t.shape), x.dtype))
            return self.lin(torch.cat([t[:, None], x], 1))

    model = sdekit.ScoreModel(Net(), sdekit.VP(), prediction="eps")
    x_T = _x0(dtype)
    for solver in ("ddim", "dpmpp_2m", "euler_maruyama", "rk4", "sra1"):
        sol = sdekit.sample(model, x_T, solver=solver, steps=5, generator=torch.Generator().manual_seed(0))
        assert sol.x.dtype == dtype and bool(torch.isfinite(sol.x).all())
    assert seen and all(s == (dtype, x_T.device, (B,), dtype) for s in seen), set(seen)
