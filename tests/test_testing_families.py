"""The strong-order families that separate right from wrong formulas (issue 20): their exact answers are exact,
their diffusion Jacobians are what they claim (non-symmetric, non-commuting), and the suite leaves no files behind.
"""

import os
import pathlib
import subprocess
import sys

import hypothesis
import pytest
import torch
from hypothesis import given

from sdekit import BrownianPath, solve
from sdekit.testing import problems as P
from sdekit.testing import strategies as sst

F64 = torch.float64
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _path(problem, seed, levy_area=False):
    shape = problem.sde.brownian_shape(tuple(problem.x0.shape))
    return BrownianPath(problem.t0, problem.t1, shape, seed=seed, dtype=F64, levy_area=levy_area)


def _sub_increments(bm, t1, n, batch, m):
    grid = torch.linspace(0.0, t1, n + 1, dtype=F64).tolist()
    return torch.stack([bm(grid[i], grid[i + 1]).reshape(batch, m) for i in range(n)])


# --- heisenberg_sde ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("s, kappa", [((1.0, 1.0), 1.0), ((1.2, 0.5), -1.5)])
def test_heisenberg_pathwise_is_euler_maruyama_on_its_own_sub_grid_plus_the_ito_stratonovich_gap(s, kappa):
    """On the sub-grid of ``pathwise`` (n steps), Euler–Maruyama forms ``Σ X1_j ΔW2 - X2_j ΔW1`` with left-point
    values; ``pathwise`` uses the midpoint sums ``Σ (W_j + ½ ΔW_j) ΔW_k``. The two differ by exactly
    ``½ kappa (s1 - s2) Σ ΔW1 ΔW2`` (algebra, no approximation), which this test checks to round-off."""
    n, batch = 256, 64
    p = P.heisenberg_sde(s=s, kappa=kappa, x0=(0.4, -0.7, 0.1), batch=batch, n_fine=n)
    bm = _path(p, seed=5)
    em = solve(p.sde, p.x0, "euler_maruyama", ts=torch.linspace(0.0, p.t1, n + 1, dtype=F64), brownian=bm).x
    dw = _sub_increments(bm, p.t1, n, batch, 2)
    gap = 0.5 * kappa * (s[0] - s[1]) * (dw[..., 0] * dw[..., 1]).sum(0)
    exact = p.pathwise(p.x0, bm)
    torch.testing.assert_close(exact[:, :2], em[:, :2], rtol=0, atol=1e-12)
    torch.testing.assert_close(exact[:, 2] - em[:, 2], gap, rtol=0, atol=1e-12)


def test_heisenberg_noise_does_not_commute():
    """The Lie bracket ``(∂g2/∂x) g1 - (∂g1/∂x) g2`` is ``(0, 0, kappa (s1 + s2))`` everywhere."""
    p = P.heisenberg_sde(s=(0.7, 1.1), kappa=1.5, x0=(0.3, -0.2, 0.9))
    x, t = p.x0[0], torch.tensor(0.3, dtype=F64)
    g = p.sde.diffusion(t, x[None])[0]
    jac = torch.autograd.functional.jacobian(lambda y: p.sde.diffusion(t, y[None])[0], x)  # (3, 2, 3)
    bracket = jac[:, 1] @ g[:, 0] - jac[:, 0] @ g[:, 1]
    torch.testing.assert_close(bracket, torch.tensor([0.0, 0.0, 1.5 * (0.7 + 1.1)], dtype=F64))


def test_heisenberg_rejects_bad_arguments():
    with pytest.raises(ValueError, match="s of length 2"):
        P.heisenberg_sde(s=(1.0,))
    with pytest.raises(ValueError, match="t1 must be > 0"):
        P.heisenberg_sde(t1=0.0)


# --- sheared_gbm ------------------------------------------------------------------------------------------------
@given(sst.sheared_gbms(noise_type="scalar", time_dependent=True))
@hypothesis.settings(max_examples=4)
def test_sheared_gbm_scalar_jacobian_is_not_symmetric(p):
    x = p.x0[0].reshape(-1)
    t = torch.tensor(0.4, dtype=F64)
    jac = torch.autograd.functional.jacobian(lambda y: p.sde.diffusion(t, y.reshape(1, *p.x0.shape[1:]))[0].reshape(-1),
                                             x)
    assert float((jac - jac.T).abs().max()) > 0.1 * float(jac.abs().max())


@pytest.mark.parametrize("noise_type, solver, wobble, order", [
    ("scalar", "milstein", 0.0, 1.0), ("scalar", "milstein", 0.5, 1.0), ("general", "euler_maruyama", -0.4, 0.5)])
def test_sheared_gbm_pathwise_is_the_limit_of_fine_solves(noise_type, solver, wobble, order):
    """A validated scheme converges to ``pathwise`` on the same Brownian path at its order: from 64 to 1024 steps
    the mean error falls by 16^order (within a factor 2), and it is small in absolute terms."""
    p = P.sheared_gbm(noise_type, state=(3,), noise_dim=2, wobble=wobble, batch=100, n_fine=4096)
    bm = _path(p, seed=11)
    exact = p.pathwise(p.x0, bm)
    errs = []
    for n in (64, 1024):
        x = solve(p.sde, p.x0, solver, ts=torch.linspace(0.0, p.t1, n + 1, dtype=F64), brownian=bm).x
        errs.append(float((x - exact).norm(dim=-1).mean()))
    ratio = errs[0] / errs[1]
    assert 16**order / 2 < ratio < 16**order * 2, errs
    assert errs[1] < (5e-3 if order == 1 else 3e-2), errs


def test_sheared_gbm_state_shapes_and_dtype():
    p = P.sheared_gbm("general", state=(1, 2), noise_dim=3, batch=4)
    assert tuple(p.x0.shape) == (4, 1, 2) and p.x0.dtype == F64
    g = p.sde.diffusion(torch.tensor(0.0, dtype=F64), p.x0)
    assert tuple(g.shape) == (4, 1, 2, 3)
    x32 = solve(p.sde, p.x0.float(), "euler_maruyama", ts=torch.linspace(0, 1, 9),
               generator=torch.Generator().manual_seed(0)).x
    assert x32.dtype == torch.float32 and bool(torch.isfinite(x32).all())
    with pytest.raises(ValueError, match="noise_type"):
        P.sheared_gbm("diagonal")


# --- no files outside the temporary folder ------------------------------------------------------------------------
def test_check_solver_leaves_no_hypothesis_folder_in_the_working_directory(tmp_path):
    """Outside pytest's conftest (which sets HYPOTHESIS_STORAGE_DIRECTORY), hypothesis would write
    ``.hypothesis/constants`` into the working folder; check_solver keeps it in a temporary folder it removes."""
    env = {k: v for k, v in os.environ.items() if k != "HYPOTHESIS_STORAGE_DIRECTORY"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    code = ("from hypothesis import configuration as c\n"
            "from sdekit.testing import check_solver\n"
            "before = c.storage_directory().path\n"
            "r = check_solver('rk4', kinds=('exactness', 'nfe'), profile='quick')\n"
            "assert r.passed, r.summary()\n"
            "assert c.storage_directory().path == before, (before, c.storage_directory().path)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / ".hypothesis").exists(), sorted(p.name for p in tmp_path.rglob("*"))
