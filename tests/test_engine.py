"""The engine: one loop driven by controllers, stateless solvers returning Steps, self-checking tableaux, and a new
solver or sampler as one class (a throw-away one of each kind is registered, checked and removed here)."""

import math
import re
from pathlib import Path

import pytest
import torch

import sdekit
from sdekit import ODE, VP, sample, solve
from sdekit.analytic import GaussianMixture, reference_solve
from sdekit.controllers import FixedGrid, PIController
from sdekit.solvers import REGISTRY, ExplicitRK, Solver, Tableau, register
from sdekit.solvers.diffusion import DiffusionSampler, Update, dpmpp_multistep_update
from sdekit.testing import check_solver

F64 = torch.float64
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def registry():
    """Registers throw-away solvers for one test and removes them afterwards."""
    before = dict(REGISTRY)
    yield register
    REGISTRY.clear()
    REGISTRY.update(before)


def test_a_new_rk_method_is_one_class_and_its_tableau(registry):
    @registry
    class Kutta3(ExplicitRK):
        """Kutta's third-order method: order 3, 3 evaluations per step."""

        name, order = "throwaway_kutta3", 3.0
        tableau = Tableau(c=(0.0, 0.5, 1.0), a=((), (0.5,), (-1.0, 2.0)), b=(1 / 6, 2 / 3, 1 / 6))

    assert REGISTRY["throwaway_kutta3"] is Kutta3 and Kutta3.evals_per_step == 3 and not Kutta3.adaptive
    report = check_solver("throwaway_kutta3", kinds=["ode_order", "nfe", "determinism"])
    assert report.passed, report.summary()
    assert abs(report.orders["ode/linear"] - 3) < 0.3


def test_a_new_sampler_is_one_class(registry):
    """A data-prediction multistep sampler in a few lines, from the module-level update rule: it equals the
    registered DPM-Solver++(2M) step for step and passes the diffusion conformance checks."""

    @registry
    class TwoStep(DiffusionSampler):
        """DPM-Solver++(2M) without lower-order final steps or the step-ratio rule: order 2, 1 evaluation per
        step."""

        name, order, evals_per_step = "throwaway_2m", 2.0, 1

        def _step(self, ev, x, s, t, noise, st):
            st.hist = (st.hist + [(s.lambda_, ev.denoised(x, s))])[-2:]
            return dpmpp_multistep_update(x, s, t, st.hist, order=min(2, st.k + 1), taylor=True)

    p = VP()
    m = GaussianMixture.preset("ring2d").model(p)
    x = p.prior_sample((64, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    mine = sample(m, x, "throwaway_2m", steps=12)
    ref = sample(m, x, "dpmpp_2m", steps=12, lower_order_final=False, max_step_ratio=None)  # no order rule either
    torch.testing.assert_close(mine.x, ref.x, rtol=1e-12, atol=1e-12)
    assert mine.stats["nfe"] == 12
    report = check_solver("throwaway_2m", kinds=["diffusion_order", "diffusion_determinism"])
    assert report.passed, report.summary()


@pytest.mark.parametrize("bad,match", [
    (dict(c=(0.0, 0.5), a=((), (0.4,)), b=(0.0, 1.0)), "row 1 sums"),
    (dict(c=(0.0, 0.5), a=((), (0.5,)), b=(0.1, 1.0)), "weights b sum"),
    (dict(c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5), b_err=(0.1, 0.0)), "error weights"),
    (dict(c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5), fsal=True), "first-same-as-last"),
    (dict(c=(0.0, 0.5), a=((), (0.25, 0.25)), b=(0.0, 1.0)), "lower triangular"),
])
def test_a_tableau_checks_itself(bad, match):
    with pytest.raises(ValueError, match=match):
        Tableau(**bad)


def test_every_registered_tableau_is_consistent():
    for cls in REGISTRY.values():
        if issubclass(cls, ExplicitRK):
            Tableau(**{k: getattr(cls.tableau, k) for k in ("c", "a", "b", "b_err", "fsal")})


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_solvers_keep_no_state_between_solves(name):
    """Nothing is stored on a solver object during a solve (its instance dict is unchanged)."""
    solver = REGISTRY[name]()
    before = dict(vars(solver))
    p = VP()
    m = GaussianMixture.preset("ring2d").model(p)
    x = p.prior_sample((4, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    sample(m, x, solver, steps=4, generator=torch.Generator().manual_seed(1))
    assert vars(solver) == before


def test_a_step_that_is_not_a_step_is_refused():
    class Tuple(Solver):
        name, order = "returns_tuple", 1.0

        def step(self, problem, t0, t1, x0, noise, state):
            return x0, None, None

    with pytest.raises(TypeError, match="must return a sdekit.solvers.Step"):
        solve(ODE(lambda t, x: -x), torch.ones(2), Tuple(), t0=0.0, t1=1.0, dt=0.5)


def test_dense_output_comes_from_the_step():
    """save_at in an adaptive solve interpolates from each step's own stages (Dopri5's order-4 dense output)."""
    ode = ODE(lambda t, x: -x * torch.cos(t))
    x0 = torch.ones(3, dtype=F64)
    ts = torch.linspace(0, 3, 7, dtype=F64)
    sol = solve(ode, x0, "dopri5", t0=0.0, t1=3.0, controller=PIController(rtol=1e-8, atol=1e-8), save_at=ts)
    exact = torch.exp(-torch.sin(ts))[:, None] * x0
    torch.testing.assert_close(sol.xs, exact, rtol=1e-6, atol=1e-6)


def test_fixed_grid_controller_equals_ts():
    ode = ODE(lambda t, x: -x)
    x0 = torch.ones(2, dtype=F64)
    ts = torch.linspace(0, 1, 11, dtype=F64)
    a = solve(ode, x0, "rk4", ts=ts).x
    b = solve(ode, x0, "rk4", controller=FixedGrid(ts)).x
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="not both"):
        solve(ode, x0, "rk4", ts=ts, controller=FixedGrid(ts))


def test_a_controller_in_lambda_needs_a_diffusion_problem():
    with pytest.raises(ValueError, match="steps in 't', not in the controller's 'lambda'"):
        solve(ODE(lambda t, x: -x), torch.ones(2), "dopri5", t0=0.0, t1=1.0,
              controller=PIController(variable="lambda"))


@pytest.mark.parametrize("order", [2, 3])
def test_adaptive_dpm_solver_reaches_t_end_zero(order):
    """The adaptive pair runs in the one loop with a PIController in lambda and ends exactly at t = 0 (sigma = 0),
    where the sample is the posterior mean of the flow's end; tightening the tolerance converges to it."""
    p = VP()
    gmm = GaussianMixture.preset("ring2d")
    m = gmm.model(p)
    x = p.prior_sample((128, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    flow_end = reference_solve(sdekit.probability_flow(p, m), x, p.t_max, 1e-7)
    exact = m.predict(flow_end, torch.tensor(1e-7, dtype=F64), "x0")
    errs = []
    for rtol in (1e-2, 1e-4):
        sol = sample(m, x, "dpm_solver_adaptive", order=order, rtol=rtol, atol=rtol / 10, t_end=0.0)
        assert sol.stats["nfe"] == sol.stats["nfe_counted"] and sol.stats["n_rejected"] >= 1
        errs.append(float((sol.x - exact).pow(2).sum(-1).mean().sqrt()))
    assert errs[1] < errs[0] / 10 and errs[1] < 1e-4, errs


def test_pc_corrector_noise_comes_from_the_noise_source():
    """The Langevin corrector's noise is drawn from the solve's noise source: reproducible from a Brownian path's
    seed, independent of the predictor's increments, and different for another seed."""
    p = VP()
    m = GaussianMixture.preset("ring2d").model(p)
    x = p.prior_sample((256, 2), generator=torch.Generator().manual_seed(0), dtype=F64)

    def run(seed):
        bm = sdekit.BrownianPath(p.t_min, p.t_max, x.shape, seed=seed, dtype=F64)
        return sample(m, x, "pc", steps=6, brownian=bm).x

    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))
    bm = sdekit.BrownianPath(0.0, 1.0, (4096,), seed=3, dtype=F64)
    w = bm(0.25, 0.5) / 0.5
    e1, e2 = bm.extra(0.25, 0.5, 1), bm.extra(0.25, 0.5, 2)
    assert torch.equal(e1, bm.extra(0.25, 0.5, 1))
    for a, b in ((w, e1), (e1, e2)):
        assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 5 / math.sqrt(4096)
    assert abs(float(e1.var()) - 1) < 5 * math.sqrt(2 / 4096)


def test_the_loop_reads_declared_metadata_only():
    """No probing of solvers in the loop or sample, no solver state, no second loop in the solvers."""
    solve_src = (ROOT / "sdekit" / "solve.py").read_text() + (ROOT / "sdekit" / "sampling.py").read_text()
    assert not re.search(r"hasattr\((s|solver)\b|getattr\((s|solver)\b", solve_src)
    assert "dpm_solver_adaptive" not in (ROOT / "sdekit" / "sampling.py").read_text()
    for f in (ROOT / "sdekit" / "solvers").glob("*.py"):
        text = f.read_text()
        assert "_last" not in text and "def run(" not in text, f


def test_update_terms_are_what_combine_sums():
    x, d = torch.randn(3, 2, dtype=F64), torch.randn(3, 2, dtype=F64)
    upd = Update([(0.5, x), (torch.tensor(2.0, dtype=F64), d)])
    sampler = REGISTRY["ddim"]()
    torch.testing.assert_close(sampler.combine(upd, None), 0.5 * x + 2 * d)
    with pytest.raises(ValueError, match="needs noise"):
        sampler.combine(Update([(1.0, x)], noise=1.0), None)


@pytest.mark.parametrize("order", [2, 3])
def test_adaptive_dpm_solver_pair_measures_its_declared_order_on_fixed_grids(order):
    """The pair's high-order update, run on fixed log-SNR grids by the one loop, has the declared order (against the
    closed-form flow of Gaussian data); its embedded error estimate is one order lower (local error h^order)."""
    from sdekit.bench import ladder_order
    from sdekit.testing.diffusion_checks import _data, _exact_flow

    p = VP()
    model = _data().model(p)
    x = p.prior_sample((32, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
    exact = _exact_flow(p, x)
    solver = REGISTRY["dpm_solver_adaptive"](order=order)
    problem = sdekit.probability_flow(p, model)

    def error(n):
        sol = solve(problem, x, solver, ts=sdekit.time_grid(p, n, "log_snr"))
        return float((sol.x - exact).pow(2).mean().sqrt()), sol.stats["nfe"]

    rec = ladder_order("dpm_solver_adaptive", "ode", (20, 40, 80), error, declared=solver.order, per="nfe")
    assert rec.nfe == [order * n for n in (20, 40, 80)]
    assert abs(rec.order - order) <= 0.3, (rec.order, rec.errors)
