"""The quadratic and learned VP schedules (issue 18, item 5): closed forms, derivatives, inverses, monotonicity,
gradients, and samplers converging on them against a float64 PF-ODE reference. float64 throughout."""

import functools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sdekit
from sdekit import VP, SubVP
from sdekit.analytic import GaussianMixture, reference_solve
from sdekit.processes import process_from_spec, process_spec
from sdekit.schedules import LearnedSchedule, QuadraticSchedule, get_schedule

F64 = torch.float64
EPS = torch.finfo(F64).eps


def learned(knots=11, seed=0, scale=1.0, **kwargs) -> LearnedSchedule:
    """A learned schedule with random (seeded) parameters: not the linear initial shape."""
    s = LearnedSchedule(knots, **kwargs)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed)
        s.raw_increments.copy_(scale * torch.randn(s.raw_increments.shape, generator=generator, dtype=F64))
    return s


def processes():
    return {
        "quadratic": VP("quadratic"),
        "quadratic_sd": VP("quadratic", beta_min=0.85, beta_max=12.0),
        "subvp_quadratic": SubVP("quadratic"),
        "learned_init": VP(LearnedSchedule()),
        "learned_cubic": VP(learned()),
        "learned_linear": VP(learned(interpolation="linear")),
        "learned_uneven": VP(learned([0.0, 0.02, 0.1, 0.35, 0.7, 1.0], seed=3, scale=2.0)),
    }


PROCS = processes()
NAMES = list(PROCS)


def grid(p, n=2001):
    return torch.linspace(p.t_domain_min, p.t_max, n, dtype=F64)


# ---- closed forms -----------------------------------------------------------------------------------------------

def test_quadratic_closed_form():
    """beta(t) = (sqrt(b0) + t (sqrt(b1) - sqrt(b0)))², log alpha = -½ ∫ beta, against a 2001-point Simpson rule
    (error ~ h⁴ |beta''''| = 0: the integrand is a quadratic, Simpson is exact up to round-off)."""
    b0, b1 = 0.1, 20.0
    p = VP("quadratic")
    t = torch.linspace(0, 1, 2001, dtype=F64)
    beta = (math.sqrt(b0) + t * (math.sqrt(b1) - math.sqrt(b0))) ** 2
    torch.testing.assert_close(p.g2(t), beta, rtol=1e-14, atol=0)
    h = t[1] - t[0]
    w = torch.ones_like(t)
    w[1:-1:2], w[2:-1:2] = 4, 2
    integral = float((w * beta).sum() * h / 3)
    assert abs(float(p.log_alpha(1.0)) + integral / 2) < 1e-13
    assert float(p.log_alpha(0.0)) == 0.0 and float(p.sigma(0.0)) == 0.0


def test_quadratic_matches_the_discrete_scaled_linear_schedule():
    """The continuous form of diffusers' "scaled_linear" (Stable Diffusion: 0.00085 to 0.012 over 1000 steps) is
    beta_min = 0.85, beta_max = 12: its alpha² at t_i = (i+1)/N is within 5e-4 of alphas_cumprod (the discrete
    schedule's sqrt(beta) spans N-1 intervals and log(1 - beta) ≠ -beta: both O(1/N))."""
    n = 1000
    betas = torch.linspace(math.sqrt(0.00085), math.sqrt(0.012), n, dtype=F64) ** 2
    ac = torch.cumprod(1 - betas, 0)
    t = torch.arange(1, n + 1, dtype=F64) / n
    a2 = VP("quadratic", beta_min=0.85, beta_max=12.0).alpha(t) ** 2
    assert float((a2 - ac).abs().max()) < 5e-4


def test_learned_initial_shape_is_linear_in_log_snr_and_from_log_snr_round_trips():
    s = LearnedSchedule(knots=6, log_snr_max=5.0, log_snr_min=-3.0)
    t = torch.linspace(0, 1, 101, dtype=F64)
    torch.testing.assert_close(s.log_snr(t), 5.0 - 8.0 * t, rtol=0, atol=1e-14)
    values = torch.tensor([6.0, 3.0, 2.5, 0.0, -1.0, -4.0], dtype=F64)
    r = LearnedSchedule.from_log_snr(6, values, interpolation="linear")
    torch.testing.assert_close(r.log_snr_knots, values, rtol=0, atol=1e-14)
    torch.testing.assert_close(r.log_snr(torch.tensor([0.1, 0.5], dtype=F64)), torch.tensor([4.5, 1.25], dtype=F64))


# ---- the VP interface ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_vp_identity_and_log_snr_inverse(name):
    """alpha² + sigma² = 1 (VP) and t_from_log_snr(log_snr(t)) = t over the whole domain. The inverse error is
    the round-off of lambda over its slope, eps |lambda| / |lambda'|; the tolerance 1e-12 is ≥ 100 times that for
    these schedules (|lambda'| >= 0.07 where it is smallest)."""
    p = PROCS[name]
    t = grid(p)
    with torch.no_grad():
        a, s = p.alpha(t), p.sigma(t)
        if not isinstance(p, SubVP):
            assert float((a * a + s * s - 1).abs().max()) < 4 * EPS
        lam = p.log_snr(t)
        assert bool((lam[1:] < lam[:-1]).all())
        lo = 1 if math.isinf(float(lam[0])) else 0  # sigma(0) = 0 for the quadratic schedule: lambda(0) = inf
        back = p.t_from_log_snr(lam[lo:])
    assert float((back - t[lo:]).abs().max()) < 1e-12


@pytest.mark.parametrize("name", NAMES)
def test_f_and_g2_match_autograd_and_finite_differences(name):
    """f = d log alpha/dt by autograd (to round-off) and g² = d sigma²/dt - 2 f sigma² by central differences
    (h = 1e-6: truncation ~1e-12, round-off ~eps/h ~ 1e-10; tolerance 1e-6 relative). Points stay off the
    knots, where the piecewise-linear schedule's f jumps."""
    p = PROCS[name]
    t = torch.linspace(0.013, 0.987, 29, dtype=F64) * p.t_max
    knots = getattr(p.schedule, "knots", None)
    if knots is not None:  # off the knots by more than the difference step
        t = t[(t[:, None] - knots[None, :]).abs().min(1).values > 1e-4]
    t_req = t.clone().requires_grad_()
    (d_log_alpha,) = torch.autograd.grad(p.log_alpha(t_req).sum(), t_req)
    with torch.no_grad():
        torch.testing.assert_close(p.f(t), d_log_alpha, rtol=1e-12, atol=1e-13)
        h = 1e-6
        s2 = lambda u: p.sigma(u) ** 2  # noqa: E731
        g2_num = (s2(t + h) - s2(t - h)) / (2 * h) - 2 * p.f(t) * s2(t)
        torch.testing.assert_close(p.g2(t), g2_num, rtol=1e-6, atol=1e-9)


def test_cubic_learned_schedule_is_c1_at_the_knots():
    """The Hermite spline's slope is continuous at every knot (the piecewise-linear one jumps)."""
    for interpolation, continuous in (("cubic", True), ("linear", False)):
        s = learned(interpolation=interpolation)
        tau = s.knots[1:-1]
        with torch.no_grad():
            jump = (s.dlog_snr(tau + 1e-12) - s.dlog_snr(tau - 1e-12)).abs().max()
        assert (float(jump) < 1e-9) == continuous, (interpolation, float(jump))


@settings(max_examples=40, deadline=None)
@given(raw=st.lists(st.floats(-6.0, 6.0), min_size=1, max_size=12),
       widths=st.lists(st.floats(0.05, 1.0), min_size=12, max_size=12),
       interpolation=st.sampled_from(LearnedSchedule.INTERPOLATIONS),
       ends=st.tuples(st.floats(0.5, 10.0), st.floats(-10.0, 0.0)))
def test_learned_schedule_is_strictly_decreasing_for_any_parameters(raw, widths, interpolation, ends):
    """Any parameter values and (uneven) knot times give lambda strictly decreasing from log_snr_max to
    log_snr_min, d lambda/dt < 0, and an inverse at round-off: |t_back - t| |lambda'| <= 16 eps max(|ends|, 1)."""
    knots = torch.cat([torch.zeros(1, dtype=F64), torch.cumsum(torch.tensor(widths[:len(raw)], dtype=F64), 0)])
    s = LearnedSchedule(knots, ends[0], ends[1], interpolation=interpolation)
    with torch.no_grad():
        s.raw_increments.copy_(torch.tensor(raw, dtype=F64))
        t = torch.linspace(0, s.t_max, 1001, dtype=F64)
        lam = s.log_snr(t)
        slope = s.dlog_snr(t)
        assert bool((lam[1:] < lam[:-1]).all()) and bool((slope < 0).all())
        assert abs(float(lam[0]) - ends[0]) < 1e-13 and abs(float(lam[-1]) - ends[1]) < 1e-13
        back = s.t_from_log_snr(lam)
        scale = max(abs(ends[0]), abs(ends[1]), 1.0)  # the size of the terms whose rounding lambda(t) carries
        assert bool(((back - t).abs() * slope.abs() <= 16 * EPS * scale).all())


# ---- gradients and training ------------------------------------------------------------------------------------

class _Substituted(LearnedSchedule):
    """``schedule`` with its parameter replaced by the tensor ``raw``: a function of ``raw`` for gradcheck."""

    def __init__(self, schedule, raw):
        super().__init__(schedule.knots, schedule.log_snr_max, schedule.log_snr_min,
                         interpolation=schedule.interpolation, t_min=schedule.t_min)
        del self.raw_increments
        self.raw_increments = raw


@pytest.mark.parametrize("interpolation", LearnedSchedule.INTERPOLATIONS)
def test_gradients_match_finite_differences(interpolation):
    """d/d(raw_increments) of alpha(t), sigma(t), f(t), and of the inverse t(lambda) in both arguments
    (implicit-function gradient for the cubic), by gradcheck (central differences, float64)."""
    s = learned(knots=5, interpolation=interpolation)
    t = torch.tensor([0.0, 0.1, 0.3, 0.55, 0.8, 1.0], dtype=F64)
    lam = torch.tensor([6.0, 2.0, 0.1, -2.0], dtype=F64, requires_grad=True)
    raw = s.raw_increments.detach().clone().requires_grad_()
    for coefficient in ("alpha", "sigma", "f"):
        assert torch.autograd.gradcheck(lambda r, c=coefficient: getattr(VP(_Substituted(s, r)), c)(t), (raw,))
    assert torch.autograd.gradcheck(lambda r, x: _Substituted(s, r).t_from_log_snr(x), (raw, lam))


def test_fitting_the_learned_schedule_to_a_target_reduces_the_loss():
    """Adam on the squared error of (alpha, sigma) against the cosine schedule, with the loss going through
    VP.alpha / VP.sigma: 60 steps cut the loss by 30x or more (measured 100x); grads reach the parameter."""
    target = VP("cosine")
    s = LearnedSchedule(knots=9, log_snr_max=6.0, log_snr_min=float(target.log_snr(target.t_max)))
    process = VP(s)
    t = torch.linspace(0.01, target.t_max, 200, dtype=F64)
    with torch.no_grad():
        a_ref, s_ref = target.alpha(t), target.sigma(t)

    def loss():
        return ((process.alpha(t) - a_ref) ** 2 + (process.sigma(t) - s_ref) ** 2).mean()

    opt = torch.optim.Adam(s.parameters(), lr=0.3)
    first = float(loss().detach())
    for _ in range(60):
        opt.zero_grad()
        value = loss()
        value.backward()
        assert s.raw_increments.grad is not None and bool(torch.isfinite(s.raw_increments.grad).all())
        opt.step()
    last = float(loss().detach())
    assert last < first / 30, (first, last)
    lam = process.log_snr(t).detach()
    assert bool((lam[1:] < lam[:-1]).all())


# ---- samplers on the new schedules ---------------------------------------------------------------------------

SAMPLER_PROCESSES = {"quadratic": VP("quadratic"), "learned": VP(learned(knots=5, seed=1))}


@functools.cache
def _ring_problem(name):
    """Model, x_T (8 samples) and the PF-ODE end state by DOP853 at rtol = atol = 1e-10 on the ring mixture
    (exact posterior-mean model), once per process."""
    process = SAMPLER_PROCESSES[name]
    with torch.no_grad():
        m = GaussianMixture.preset("ring2d").model(process)
        x = process.prior_sample((8, 2), generator=torch.Generator().manual_seed(0), dtype=F64)
        ref = reference_solve(sdekit.probability_flow(process, m), x, process.t_max, process.t_min,
                              rtol=1e-10, atol=1e-10)
    return m, x, ref


@pytest.mark.parametrize("name,solver,spacing", [
    ("quadratic", "dpmpp_2m", "quadratic"),
    ("learned", "dpmpp_2m", "time"),
    ("learned", "rk4", "time"),
])
def test_sampler_converges_at_its_order(name, solver, spacing):
    """The observed order between 40 and 80 steps is within 0.35 of the declared one (measured: quadratic 2M 2.00,
    learned 2M 1.9-2.3, learned RK4 4.0-4.3 in t: the C¹ spline keeps a generic solver's order; its knots lie
    on these uniform grids). The finest error (> 1e-8) is far above the reference's 1e-10. (On the quadratic
    schedule, as on the linear one, 2M on grids uniform in t is still pre-asymptotic at 80 steps: hence the
    sqrt(t) grid there.)"""
    m, x, ref = _ring_problem(name)
    declared = sdekit.solvers.get(solver).order
    with torch.no_grad():
        errors = [float((sdekit.sample(m, x, solver, steps=k, spacing=spacing).x - ref).pow(2).mean().sqrt())
                  for k in (40, 80)]
    order = math.log2(errors[0] / errors[1])
    assert abs(order - declared) <= 0.35, (order, errors)
    assert errors[1] > 1e-8


# ---- registry, specs, errors -------------------------------------------------------------------------------

def test_names_specs_and_repr():
    assert isinstance(VP("quadratic").schedule, QuadraticSchedule)
    assert isinstance(VP("learned", knots=4).schedule, LearnedSchedule)
    s = learned()
    assert get_schedule(s) is s and VP(s).schedule is s  # the process shares the module's parameters
    for p in (VP("quadratic", beta_min=0.5, beta_max=10.0), SubVP("quadratic"), VP(learned(knots=4))):
        q = process_from_spec(process_spec(p))
        t = torch.linspace(0.01, 1.0, 7, dtype=F64)
        torch.testing.assert_close(q.log_snr(t).detach(), p.log_snr(t).detach(), rtol=1e-14, atol=1e-14)
        assert type(q) is type(p) and repr(q) == repr(p)
    assert repr(VP("quadratic")) == "VP(QuadraticSchedule(beta_min=0.1, beta_max=20.0))"


@pytest.mark.parametrize("make,match", [
    (lambda: VP("quadratic", beta_min=0.0), "beta_min must be a finite number > 0"),
    (lambda: VP("quadratic", beta_min=-1.0), "beta_min"),
    (lambda: VP("quadratic", beta_min=5.0, beta_max=5.0), "beta_min must be < beta_max"),
    (lambda: VP("quadratic", t_min=1.0), r"t_min must be a number in \(0, t_max\)"),
    (lambda: VP("cubic"), "unknown schedule 'cubic'; allowed: 'linear', 'cosine', 'quadratic', 'learned'"),
    (lambda: LearnedSchedule(1), "knots must be an int >= 2"),
    (lambda: LearnedSchedule([0.0]), "knots must be a 1-D sequence of >= 2 times"),
    (lambda: LearnedSchedule([0.0, 0.5, 0.5, 1.0]), "knots must be strictly increasing"),
    (lambda: LearnedSchedule([0.1, 0.5, 1.0]), "knots must start at t = 0"),
    (lambda: LearnedSchedule(True), "knots must be an int >= 2"),
    (lambda: LearnedSchedule(log_snr_max=-3.0, log_snr_min=-2.5), "log_snr_max must be > log_snr_min"),
    (lambda: LearnedSchedule(log_snr_max=math.inf), "log_snr_max must be a finite number"),
    (lambda: LearnedSchedule(interpolation="spline"), "unknown interpolation 'spline'; allowed: 'cubic', 'linear'"),
    (lambda: LearnedSchedule(t_min=1.0), r"t_min must be a number in \[0, t_max\)"),
    (lambda: LearnedSchedule.from_log_snr(3, [1.0, 2.0, 0.0]), "strictly decreasing"),
    (lambda: LearnedSchedule.from_log_snr(3, [1.0, 0.0]), "one value per knot"),
])
def test_bad_input(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_out_of_range_arguments_are_rejected_by_the_process():
    p = VP(LearnedSchedule(log_snr_max=5.0, log_snr_min=-2.0))
    with pytest.raises(ValueError, match="outside the time domain"):
        p.alpha(1.5)
    with pytest.raises(ValueError, match="outside the log-SNR range"):
        p.t_from_log_snr(6.0)


@pytest.mark.parametrize("interpolation", LearnedSchedule.INTERPOLATIONS)
def test_inverse_off_the_cpu_does_not_synchronise(interpolation):
    """On the meta device any synchronisation (a convergence check) would fail: the cubic's Newton loop runs a
    fixed count there."""
    p = VP(learned(interpolation=interpolation))
    lam = torch.tensor([-2.0, 0.0, 3.0], dtype=F64, device="meta")
    assert p.t_from_log_snr(lam).device.type == "meta"
