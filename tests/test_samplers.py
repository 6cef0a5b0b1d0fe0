"""Diffusion samplers: identities, measured orders against exact solutions, stochastic moments, NFE, errors."""

import math

import pytest
import torch

import sdekit
from sdekit import VP, ClassifierFreeGuidance, ScoreModel, sample, time_grid
from sdekit.analytic import GaussianMixture, reference_solve
from sdekit.solvers import REGISTRY, DiffusionSampler

from .helpers import DDPM_BETAS

F64 = torch.float64
SAMPLERS = sorted(n for n in REGISTRY if issubclass(REGISTRY[n], DiffusionSampler))
DETERMINISTIC = [n for n in SAMPLERS if not REGISTRY[n]().noise_types and REGISTRY[n].default_controller is None]
STOCHASTIC = [n for n in SAMPLERS if REGISTRY[n]().noise_types]
# On Gaussian data the h³ error term of DPM-Solver++(3M) cancels (measured slopes 3.6-4.8 over 40-640 steps),
# so its third order is measured on the Gaussian mixture instead (test_dpmpp_multistep_order_on_gmm...).
GAUSSIAN_ORDER = [n for n in DETERMINISTIC if n != "dpmpp_3m"]

MU, S2 = torch.tensor([0.7, -0.7], dtype=F64), 0.3**2
GAUSS = GaussianMixture(MU[None], torch.full((1, 2), S2, dtype=F64), [1.0])


def exact_flow(process, x_T, t_hi, t_lo):
    """PF-ODE flow of N(mu, s² I) data, affine: x_t = alpha mu + sqrt(v_t / v_T) (x_T - alpha_T mu),
    v = alpha² s² + sigma²."""
    a_T, s_T = float(process.alpha(t_hi)), float(process.sigma(t_hi))
    a, s = float(process.alpha(t_lo)), float(process.sigma(t_lo))
    return a * MU + math.sqrt((a * a * S2 + s * s) / (a_T * a_T * S2 + s_T * s_T)) * (x_T - a_T * MU)


def x_T_for(process, n=64, seed=0):
    return process.prior_sample((n, 2), generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_ddim_equals_dpm_solver_1_and_dpmpp_1_step_for_step():
    p = VP.from_betas(DDPM_BETAS)
    m = GaussianMixture.preset("ring2d").model(p)
    x = x_T_for(p)
    runs = [sample(m, x, s, steps=12, spacing="log_snr", return_trajectory=True, **kw)
            for s, kw in (("ddim", {}), ("dpm_solver_1", {}), ("dpmpp_2m", {"order": 1}))]
    for other in runs[1:]:
        torch.testing.assert_close(other.xs, runs[0].xs, rtol=1e-11, atol=1e-11)


def test_ddpm_beta_tilde_equals_ddim_eta_one_on_the_same_noise():
    p = VP()
    m = GaussianMixture.preset("ring2d").model(p)
    x = x_T_for(p)
    bm = sdekit.BrownianPath(p.t_min, p.t_max, x.shape, seed=3, dtype=F64)
    a = sample(m, x, "ddpm", steps=20, brownian=bm).x
    b = sample(m, x, "ddim", steps=20, brownian=bm, eta=1.0).x
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _ladder(order):
    """Finer ladders for higher orders: an order-4 multistep rule with lower-order warm-up measures 3.6 over
    40-160 steps and 3.8, 3.9 over 80-320, 160-640 (it is still approaching its order)."""
    return (20, 40, 80) if order < 2.5 else (40, 80, 160) if order < 3.5 else (80, 160, 320)


@pytest.mark.parametrize("process", [VP(), sdekit.EDM(), VP.from_betas(DDPM_BETAS)], ids=["vp", "edm", "ddpm"])
@pytest.mark.parametrize("name", GAUSSIAN_ORDER)
def test_deterministic_sampler_order_on_single_gaussian(name, process):
    """Error vs the closed-form PF-ODE flow over log-SNR-uniform grids; slope within ±0.3 of the declared
    order. Ladders: the finest error stays > 1e-9 (far above float64 round-off) and successive ratios were
    checked to be within 10% of 2^order on these problems."""
    solver = REGISTRY[name]()
    m = GAUSS.model(process)
    x = x_T_for(process)
    exact = exact_flow(process, x, process.t_max, process.t_min)
    rec = sdekit.bench.sampler_order(m, name, x, exact, steps=_ladder(solver.order))  # checks the NFE count
    assert abs(rec.order - solver.order) <= 0.3, (name, rec.order, rec.errors)


@pytest.mark.parametrize("name,kw,order", [("dpmpp_2m", {}, 2.0), ("dpmpp_3m", {}, 3.0),
                                           ("dpmpp_3m", {"variant": "reference"}, 2.0)])
def test_dpmpp_multistep_order_on_gmm_against_float64_reference(name, kw, order):
    """On the ring mixture (not affine: a real test of the multistep history) against DOP853 at 1e-12.
    The reference-code variant of 3M measures second order (its D2 coefficient is half the Taylor one)."""
    p = VP()
    m = GaussianMixture.preset("ring2d").model(p)
    x = x_T_for(p, n=128)
    ref = reference_solve(sdekit.probability_flow(p, m), x, p.t_max, p.t_min, rtol=1e-12, atol=1e-12)
    rec = sdekit.bench.sampler_order(m, name, x, ref, steps=(100, 200, 400), **kw)
    assert abs(rec.order - order) <= 0.3, (rec.order, rec.errors)
    assert REGISTRY[name](**kw).order == order


class ImpulseNoise:
    """Exact moments of an affine sampler (single-Gaussian data: the model is affine in x). Sample 0 starts at
    the mean of p_T with no noise, sample 1 at the mean plus a unit perturbation, sample 2 + k gets a unit
    Brownian increment at step k. Then mean = out[0] and Var = J² Var(x_T) + Σ_k L_k² |dt_k| per coordinate
    (coordinates are independent: isotropic data). sdekit.testing.ImpulseNoise is the fixed-start version."""

    levy_area = False

    def __init__(self, grid):
        self.grid = [float(t) for t in grid]
        self.step_of = {round(t, 12): k for k, t in enumerate(self.grid[:-1])}
        self.batch = len(self.grid) + 1

    def __call__(self, s, t):
        out = torch.zeros(self.batch, 2, dtype=F64)
        out[2 + self.step_of[round(float(s), 12)]] = 1.0
        return out


@pytest.mark.parametrize("name,kw", [("ddpm", {}), ("ddpm", {"variance": "beta"}), ("ddim", {"eta": 1.0}),
                                     ("ddim", {"eta": 0.5}), ("ddim", {"eta": 0.2}), ("dpmpp_2m_sde", {})])
def test_stochastic_sampler_weak_order_exact(name, kw):
    """Mean and variance of the samples computed exactly (no Monte-Carlo), started from the exact p_T, vs the
    data N(mu, s² I) noised to t_min; the weak error of E|x|² converges at the declared weak order (±0.3)."""
    p = VP()
    m = GAUSS.model(p)
    a, s = float(p.alpha(p.t_min)), float(p.sigma(p.t_min))
    a_T, s_T = float(p.alpha(p.t_max)), float(p.sigma(p.t_max))
    var_T = a_T * a_T * S2 + s_T * s_T
    exact_m2 = float((a * MU).pow(2).sum()) + 2 * (a * a * S2 + s * s)
    def error(n):
        grid = time_grid(p, n, "log_snr")
        noise = ImpulseNoise(grid.tolist())
        x = (a_T * MU).expand(noise.batch, 2).clone()
        x[1] += 1.0
        out = sample(m, x, name, grid=grid, brownian=noise, **kw).x
        mean, jac, resp = out[0], out[1] - out[0], out[2:] - out[0]
        dts = (grid[:-1] - grid[1:]).abs()
        var = jac.pow(2) * var_T + (resp.pow(2) * dts[:, None]).sum(0)
        return abs(float(mean.pow(2).sum() + var.sum()) - exact_m2)

    rec = sdekit.bench.ladder_order(name, "weak", (50, 100, 200), error)
    declared = REGISTRY[name](**kw).weak_order
    assert abs(rec.order - declared) <= 0.3, (name, kw, rec.order, rec.errors)


@pytest.mark.parametrize("name,kw", [("ddpm", {}), ("dpmpp_2m_sde", {}), ("pc", {}), ("euler_maruyama", {}),
                                     ("edm_heun", {"S_churn": 10.0})])
def test_stochastic_samplers_match_gmm_moments_and_weights(name, kw):
    """With enough steps the samples of the ring mixture have its exact mean, covariance and component
    weights within 5 Monte-Carlo standard errors plus a small discretisation allowance (0.03 absolute on
    moments of size ~1.5, measured bias < 0.01 at these step counts)."""
    p = VP()
    gmm = GaussianMixture.preset("ring2d")
    m = gmm.model(p)
    n = 3000
    x = p.prior_sample((n, 2), generator=torch.Generator().manual_seed(1), dtype=F64)
    out = sample(m, x, name, steps=150, generator=torch.Generator().manual_seed(2), **kw).x
    mean, cov = gmm.mean(), gmm.covariance()
    sd = cov.diag().sqrt()
    assert bool(((out.mean(0) - mean).abs() < 5 * sd / math.sqrt(n) + 0.03).all()), out.mean(0)
    emp = torch.cov(out.T)
    assert bool(((emp - cov).abs() < 5 * cov.diag().max() * math.sqrt(2 / n) + 0.03).all()), emp
    # component assignment by the clean posterior responsibilities
    y, c, logn, _ = gmm._parts(out, 1.0, 0.0)
    labels = (logn + gmm.log_weights).argmax(-1)
    frac = torch.bincount(labels, minlength=gmm.n_components).double() / n
    se = (gmm.weights * (1 - gmm.weights) / n).sqrt()
    assert bool(((frac - gmm.weights).abs() < 5 * se + 0.01).all()), frac


def test_adaptive_dpm_solver_meets_tolerance_and_counts():
    p = VP()
    m = GAUSS.model(p)
    x = x_T_for(p)
    exact = exact_flow(p, x, p.t_max, p.t_min)
    loose = sample(m, x, "dpm_solver_adaptive", rtol=0.05, atol=0.0078)
    tight = sample(m, x, "dpm_solver_adaptive", rtol=1e-4, atol=1e-4)
    e_loose = float((loose.x - exact).abs().max())
    e_tight = float((tight.x - exact).abs().max())
    assert e_tight < e_loose and e_tight < 1e-3
    assert tight.stats["nfe"] == tight.stats["nfe_counted"] > loose.stats["nfe"]
    assert loose.stats["n_accepted"] >= 1


def test_generic_solvers_run_through_sample():
    p = VP()
    m = GAUSS.model(p)
    x = x_T_for(p)
    exact = exact_flow(p, x, p.t_max, p.t_min)
    rk4 = sample(m, x, "rk4", steps=50)
    assert float((rk4.x - exact).abs().max()) < 1e-3 and rk4.stats["nfe"] == 200
    d5 = sample(m, x, "dopri5", rtol=1e-7, atol=1e-7)
    assert float((d5.x - exact).abs().max()) < 1e-5
    sra = sample(m, x, "sra1", steps=20, generator=torch.Generator().manual_seed(0))
    assert sra.x.shape == x.shape and sra.stats["nfe"] == 40


def test_guidance_scale_one_is_conditional_and_batches_one_call():
    p = VP()
    means = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=F64)
    comps = [GaussianMixture(mu[None], torch.full((1, 2), 0.1, dtype=F64), [1.0]) for mu in means]
    both = GaussianMixture(means, torch.full((2, 2), 0.1, dtype=F64), [0.5, 0.5])
    calls = []

    def net(x, t, y):
        calls.append(x.shape[0])
        out = torch.empty_like(x)
        for lab in (0, 1, 2):
            sel = y == lab
            g = both if lab == 2 else comps[lab]
            if bool(sel.any()):
                out[sel] = -p.sigma(t[sel])[:, None] * g.score_at(x[sel], p.alpha(t[sel]), p.sigma(t[sel]))
        return out

    cond_model = ScoreModel(net, p, prediction="eps")
    guided = ClassifierFreeGuidance(cond_model, 1.0, null=2)
    x = x_T_for(p, n=8)
    y = torch.zeros(8, dtype=torch.long)
    a = sample(guided, x, "dpmpp_2m", steps=10, cond={"y": y}).x
    b = sample(cond_model, x, "dpmpp_2m", steps=10, cond={"y": y}).x
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    calls.clear()
    sample(ClassifierFreeGuidance(cond_model, 3.0, null=2), x, "ddim", steps=5, cond={"y": y})
    assert calls == [16] * 5  # conditional and unconditional in one batched call per evaluation


def test_same_seed_same_samples():
    p = VP()
    m = GaussianMixture.preset("ring2d").model(p)
    x = x_T_for(p)
    for name in STOCHASTIC:
        kw = {"eta": 1.0} if name == "ddim" else {"S_churn": 5.0} if name == "edm_heun" else {}
        a = sample(m, x, name, steps=8, generator=torch.Generator().manual_seed(7), **kw).x
        b = sample(m, x, name, steps=8, generator=torch.Generator().manual_seed(7), **kw).x
        c = sample(m, x, name, steps=8, generator=torch.Generator().manual_seed(8), **kw).x
        assert torch.equal(a, b) and not torch.equal(a, c), name


def test_multistep_history_does_not_leak_between_calls():
    p = VP()
    m = GaussianMixture.preset("ring2d").model(p)
    x = x_T_for(p)
    s = REGISTRY["dpmpp_3m"]()
    first = sample(m, x, s, steps=10).x
    sample(m, x * 0.5, s, steps=7)
    torch.testing.assert_close(sample(m, x, s, steps=10).x, first, rtol=0, atol=0)


def test_bad_input():
    p = VP()
    m = GAUSS.model(p)
    x = x_T_for(p, n=4)
    with pytest.raises(ValueError, match="steps"):
        sample(m, x, "ddim", steps=0)
    with pytest.raises(ValueError, match="eta"):
        sample(m, x, "ddim", eta=-1.0)
    with pytest.raises(ValueError, match="monotone toward the data end"):
        sample(m, x, "ddim", grid=torch.tensor([0.5, 0.7, 0.1]))
    with pytest.raises(ValueError, match="t_end"):
        sample(m, x, "ddim", t_end=-0.5)
    with pytest.raises(ValueError, match="unknown spacing"):
        sample(m, x, "ddim", spacing="cubic")
    with pytest.raises(ValueError, match="unknown solver"):
        sample(m, x, "dpmpp_9m")
    bad_shape = ScoreModel(lambda x, t: x[:, :1], p)
    with pytest.raises(ValueError, match=r"at step 1 \(t = 1\).*shape"):
        sample(bad_shape, x, "dpmpp_2m")
    nan_model = ScoreModel(lambda x, t: torch.where(t[:, None] < 0.5, torch.nan, 0.0) * x, p)
    # the model, not the step size, is named as the cause (with the step and time)
    with pytest.raises(ValueError, match=r"step \d+ \(t = .*the model returned NaN/Inf at t = "):
        sample(nan_model, x, "dpmpp_2m", steps=10)
    with pytest.raises(ValueError, match="UniPC order"):
        sample(m, x, "unipc", order=5)
    # an order the step count cannot support falls back to lower order (documented warm-up)
    one = sample(m, x, "dpmpp_3m", steps=1).x
    torch.testing.assert_close(one, sample(m, x, "ddim", steps=1).x)


# every registered sampler, plus the options that change its final combination (noise, order, corrector)
FUSED_CASES = [(n, {}) for n in SAMPLERS] + [("ddim", {"eta": 0.7}), ("edm_heun", {"S_churn": 2.0}),
                                             ("unipc", {"order": 3}), ("pc", {"n_corrector_steps": 0}),
                                             ("dpm_solver_adaptive", {"order": 2})]


FUSED_IDS = [f"{n}-{'-'.join(map(str, kw.values()))}" for n, kw in FUSED_CASES]


@pytest.mark.parametrize("name,kw", FUSED_CASES, ids=FUSED_IDS)
def test_fused_kernel_steps_match_pytorch_steps(name, kw):
    """Every sampler ends its step in the same combine: the fused Triton kernel (run by the interpreter on CPU)
    gives the PyTorch result to float32 rounding, on the same Brownian path for stochastic samplers."""
    pytest.importorskip("triton")
    p = VP()
    m = GaussianMixture.preset("ring2d").model(p)
    # an adaptive sampler's large steps (h ~ 2 in lambda) amplify float32 rounding on this sharp mixture (its own
    # float32 result is 2.5e-3 from its float64 one): it is compared in float64, where the kernel accumulates in
    # float64 and both paths agree to 1e-15
    adaptive = REGISTRY[name].default_controller is not None
    x = x_T_for(p, n=6) if adaptive else x_T_for(p, n=6).float()
    stochastic = bool(REGISTRY[name](**kw).noise_types)

    def run(fused):
        bm = sdekit.BrownianPath(p.t_min, p.t_max, x.shape, seed=5, dtype=x.dtype) if stochastic else None
        return sample(m, x, name, steps=5, brownian=bm, fused=fused, **kw).x

    ref, fused = run(False), run(True)
    assert not torch.equal(ref, x)
    tol = 1e-12 if adaptive else 1e-5  # reassociation of the sum in the kernel
    torch.testing.assert_close(fused, ref, rtol=tol, atol=tol)


def test_fused_in_kernel_noise_has_the_right_law():
    """With fresh noise the fused step draws z in registers (Philox keyed per step): the samples of DDIM with
    eta = 1 (ancestral) have the mean and variance of the unfused sampler's within their statistical error,
    and the noise of the kernel is independent across steps and elements (sampled directly: one step of
    ``combine`` per step seed)."""
    pytest.importorskip("triton")
    from sdekit.brownian import FreshNoise, StepNoise
    from sdekit.solvers.diffusion import Update

    p = VP()
    m = GAUSS.model(p)
    n = 4000
    x = x_T_for(p, n=n).float()
    gen = torch.Generator().manual_seed
    fused = sample(m, x, "ddim", eta=1.0, steps=8, fused=True, generator=gen(1)).x.double()
    plain = sample(m, x, "ddim", eta=1.0, steps=8, generator=gen(2)).x.double()
    assert not torch.equal(fused, plain)
    for a, b in ((fused.mean(0), plain.mean(0)), (fused.var(0), plain.var(0))):
        se = math.sqrt(2 / n) * plain.var(0).max().sqrt() * 2  # the difference of two estimates, each ~ var/sqrt(n)
        assert float((a - b).abs().max()) < 5 * se, (a, b)
    # the kernel's z on its own: 16 steps of 4096 elements
    sampler = REGISTRY["ddim"](eta=1.0).with_fused(True)
    source = FreshNoise((4096,), generator=gen(3))
    zero = torch.zeros(4096)
    zs = torch.stack([sampler.combine(Update([(0.0, zero)], noise=1.0), StepNoise(source, 1.0, 0.5, k))
                      for k in range(16)]).double()
    z = zs.reshape(-1)
    assert abs(float(z.mean())) < 5 / math.sqrt(z.numel())
    assert abs(float(z.var()) - 1) < 5 * math.sqrt(2 / z.numel())
    corr_steps = torch.corrcoef(zs)  # 16 x 16: off-diagonal ~ N(0, 1/4096)
    off = corr_steps[~torch.eye(16, dtype=torch.bool)]
    assert float(off.abs().max()) < 5 / math.sqrt(4096), float(off.abs().max())
    lag1 = float((zs[:, 1:] * zs[:, :-1]).mean())  # neighbouring elements
    assert abs(lag1) < 5 / math.sqrt(zs[:, 1:].numel())




# --- iPNDM and DEIS: Adams–Bashforth in the scaled variables -------------------------------------------------
def test_variable_step_weights_reduce_to_adams_bashforth_on_equal_steps():
    """On equal steps the quadrature weights of the Lagrange basis are the classical Adams–Bashforth
    coefficients (exact rationals, Hairer–Nørsett–Wanner §III.1), for every order and either direction."""
    from sdekit.solvers.diffusion import AB_FIXED, lagrange_weights

    for order, coeffs in AB_FIXED.items():
        for h in (0.3, -0.7):
            nodes = [2.0 - j * h for j in range(order)]  # newest first, spaced h apart
            w = lagrange_weights(nodes, 2.0, 2.0 + h)
            assert w == pytest.approx([c * h for c in coeffs], rel=1e-13, abs=1e-15)


def test_lagrange_weights_integrate_polynomials_exactly_on_uneven_nodes():
    from sdekit.solvers.diffusion import lagrange_weights

    nodes, lo, hi = [1.0, 0.6, 0.45, 0.1], 1.0, 1.5
    w = lagrange_weights(nodes, lo, hi)
    for k in range(4):  # sum_j w_j p(u_j) = ∫ p for every polynomial of degree < 4
        assert sum(wj * u**k for wj, u in zip(w, nodes)) == pytest.approx((hi ** (k + 1) - lo ** (k + 1)) / (k + 1))
    # through a map: the basis in u = r², integrated in r (8-point Gauss–Legendre)
    w2 = lagrange_weights([u * u for u in nodes[:2]], lo, hi, at=lambda rs: [r * r for r in rs])
    assert sum(w2) == pytest.approx(hi - lo, rel=1e-14)  # ℓ_0 + ℓ_1 = 1


@pytest.mark.parametrize("name,kw,order", [("ipndm", {}, 4.0), ("ipndm", {"order": 3}, 3.0),
                                           ("deis", {"order": 3}, 3.0), ("deis", {"order": 3, "basis": "time"}, 3.0),
                                           ("deis", {}, 2.0)])
def test_ipndm_and_deis_orders_on_gmm_against_float64_reference(name, kw, order):
    """On the ring mixture (linear VP schedule, log-SNR grids), against DOP853 at 1e-12: measured 3.77, 2.83,
    2.93, 2.86, 1.91 (the same to 0.01 on the discrete DDPM schedule, whose reference solve takes minutes)."""
    p = VP()
    m = GaussianMixture.preset("ring2d").model(p)
    x = x_T_for(p, n=128)
    ref = reference_solve(sdekit.probability_flow(p, m), x, p.t_max, p.t_min, rtol=1e-12, atol=1e-12)
    solver = REGISTRY[name](**kw)
    assert solver.order == order
    rec = sdekit.bench.sampler_order(m, solver, x, ref, steps=(100, 200, 400), spacing="log_snr")
    assert abs(rec.order - order) <= 0.3, (rec.order, rec.errors)


def test_fixed_step_ipndm_loses_its_order_where_step_ratios_stay_away_from_one():
    """The original iPNDM (equal-step coefficients on any grid): second order on log-SNR-uniform grids (step
    ratios 1 + O(h) in rho), first order on the irregular grid (log-SNR steps alternately 1.5 h and 0.5 h), so it
    declares 1; the variable-step form keeps order 4 on both."""
    from sdekit.testing.diffusion_checks import _irregular_grid

    p = VP()
    m = GAUSS.model(p)
    x = x_T_for(p, n=32)
    exact = exact_flow(p, x, p.t_max, p.t_min)
    fixed = REGISTRY["ipndm"](variant="fixed")
    assert fixed.order == 1.0
    smooth = sdekit.bench.sampler_order(m, fixed, x, exact, steps=(40, 80, 160), spacing="log_snr")
    rough = sdekit.bench.sampler_order(m, fixed, x, exact, steps=(40, 80, 160), spacing=_irregular_grid(p))
    assert abs(smooth.order - 2.0) <= 0.2 and abs(rough.order - 1.0) <= 0.2, (smooth.errors, rough.errors)
    variable = sdekit.bench.sampler_order(m, "ipndm", x, exact, steps=(80, 160, 320), spacing=_irregular_grid(p))
    assert variable.order >= 3.7, variable.errors


def test_ipndm_and_deis_reject_bad_options():
    with pytest.raises(ValueError, match="order must be an integer in 1..4"):
        REGISTRY["ipndm"](order=5)
    with pytest.raises(ValueError, match="variant"):
        REGISTRY["ipndm"](variant="adaptive")
    with pytest.raises(ValueError, match="basis"):
        REGISTRY["deis"](basis="rho")
    with pytest.raises(ValueError, match="order must be an integer"):
        REGISTRY["deis"](order=True)


def test_first_order_ipndm_and_deis_are_ddim():
    p = VP.from_betas(DDPM_BETAS)
    m = GaussianMixture.preset("ring2d").model(p)
    x = x_T_for(p)
    ddim = sample(m, x, "ddim", steps=12).x
    for name in ("ipndm", "deis"):
        torch.testing.assert_close(sample(m, x, name, steps=12, order=1).x, ddim, rtol=1e-11, atol=1e-11)


# --- the step-ratio order rule ---------------------------------------------------------------------------------
def test_ratio_order_lowers_only_where_a_stencil_step_ratio_exceeds_the_bound():
    from sdekit.solvers.diffusion import _ratio_order

    lam = [0.0, 1.0, 2.0]  # equal steps of 1
    assert _ratio_order(3, lam, 1.0, 3.5) == 3
    assert _ratio_order(3, lam, 3.4, 3.5) == 3
    assert _ratio_order(3, lam, 3.6, 3.5) == 1  # the newest ratio is in every stencil
    assert _ratio_order(3, [0.0, 0.2, 2.0], 1.0, 3.5) == 2  # an old ratio of 9: order 3 only
    assert _ratio_order(3, lam, 100.0, None) == 3


def test_ratio_rule_rescues_time_uniform_grids_and_changes_nothing_elsewhere():
    """Time-uniform grids to t_min end with log-SNR step ratios of about 4.7 (10 steps): DPM-Solver++(3M) and
    UniPC there are far more accurate with the rule (measured on ring2d: 3M 1.9 -> 0.09, UniPC 0.27 -> 0.15 on
    stress8d). On log-SNR-uniform grids (ratio 1) the rule never acts: bitwise the same."""
    p = VP()
    m = GaussianMixture.preset("ring2d").model(p)
    x = x_T_for(p, n=128)
    ref = reference_solve(sdekit.probability_flow(p, m), x, p.t_max, p.t_min, rtol=1e-10, atol=1e-10)

    def err(name, spacing, ratio):
        out = sample(m, x, name, steps=10, spacing=spacing, max_step_ratio=ratio).x
        return float((out - ref).pow(2).mean().sqrt())

    assert err("dpmpp_3m", "time", None) > 5 * err("dpmpp_3m", "time", 3.5)
    assert err("dpmpp_2m", "time", None) > 2 * err("dpmpp_2m", "time", 3.5)
    for name in ("dpmpp_3m", "unipc", "ipndm", "deis"):
        assert err(name, "log_snr", None) == err(name, "log_snr", 3.5)
    with pytest.raises(ValueError, match="max_step_ratio must be a number >= 1"):
        REGISTRY["dpmpp_2m"](max_step_ratio=0.5)
