"""A mutant zoo from public bug reports: each class below re-creates (in sdekit's terms, written here, not copied)
a numerical defect that a real library shipped, and the conformance suite must reject it for the right reason.

Every mutant cites its public report. The checks run with the ``ci`` profile, restricted to the check that must
catch the defect (the full suite on each would add minutes to the default run).
"""

import re
from dataclasses import replace

import pytest
import torch

from sdekit._utils import time_like
from sdekit.solvers import Solver, Step
from sdekit.solvers.diffusion import (
    DDIM,
    DDPM,
    DPMSolver1,
    DPMSolver2,
    DPMSolverPP2M,
    DPMSolverPP3M,
    EDMHeun,
    Evaluations,
    Update,
    _lower_order,
    _push,
    ddim_update,
    ddpm_update,
    dpm_solver_1_update,
    dpmpp_multistep_update,
)
from sdekit.solvers.ode import Bosh3
from sdekit.solvers.sde import SRA1, Milstein
from sdekit.testing import check_solver


class HeunCorrectorAtSigmaHat(EDMHeun):
    """diffusers PR #1512 "fix heun scheduler": the Heun corrector evaluated the denoiser and divided by the
    first stage's sigma_hat where sigma_next belongs. Its second stage then estimates the slope at the wrong point;
    the method is first order."""

    name = "mutant_heun_sigma_hat"

    def _step(self, ev, x, s, t, noise, st):
        sb_hat, sb1 = s.sigma / s.alpha, t.sigma / t.alpha
        xb = x / s.alpha
        d_cur = (xb - ev.denoised(x, s)) / sb_hat
        xb_next = xb + d_cur * (sb1 - sb_hat)
        d_new = (xb_next - ev.denoised(xb_next * s.alpha, s)) / sb_hat  # the defect: s (sigma_hat), not t
        k = 0.5 * t.alpha * (sb1 - sb_hat)
        return Update([(t.alpha, xb), (k, d_cur), (k, d_new)])


class DDPMPreviousIndex(DDPM):
    """diffusers PR #2076 "[Bug]: fix DDPM scheduler arbitrary infer steps count.": with fewer inference steps
    than training steps, the posterior step still used alpha-bar of ``t - 1`` (one training index, here 1/1000 of
    the time axis) instead of the next grid time ``t - k``."""

    name = "mutant_ddpm_previous_index"

    def _step(self, ev, x, s, t, noise, st):
        prev = ev.point(max(s.t - 1e-3, t.t))  # the defect: one training index back, whatever the stride
        return ddpm_update(x, s, prev, ev.denoised(x, s), self.variance)


class DDIMUniformStride(DDIM):
    """diffusers issue #9261 ""previous_timestep()" in DDPM scheduling not compatible with "trailing" option":
    the previous timestep computed as ``t - T // N`` (a uniform stride in training indices) instead of the next
    entry of the actual grid; on any non-uniform grid the step targets the wrong noise level."""

    name = "mutant_ddim_uniform_stride"

    def _step(self, ev, x, s, t, noise, st):
        stride = (1000 // st.n) / 1000  # T // N training indices of 1/1000 each
        prev = ev.point(max(s.t - stride, t.t))  # the defect: not the grid's next time t
        return ddim_update(x, s, prev, ev.denoised(x, s), self.eta)


class DummyLastStep(DPMSolverPP2M):
    """diffusers PR #6477 "fix DPM Scheduler with `use_karras_sigmas` option": the sigma list was closed by
    repeating its last value instead of the terminal sigma 0, so the last step went from sigma_min to sigma_min
    (h = 0) and did nothing: the output kept the noise of sigma_min."""

    name = "mutant_dpmpp_2m_dummy_last_step"

    def step(self, problem, t0, t1, x0, noise, state):
        out = super().step(problem, t0, t1, x0, noise, state)
        if float(problem.process.sigma(torch.tensor(t1, dtype=torch.float64))) == 0.0:
            return replace(out, x1=x0)  # the defect: the step onto sigma = 0 is a no-op
        return out


class SecondOrderOntoSigmaZero(DPMSolver2):
    """diffusers issue #9007 "Black output in DPMSolverSinglestepScheduler with 3 order" (fixed by PR #9104
    "DPM++ third order fixes"): a second-order update executed on the final step to sigma = 0, where lambda is
    infinite; sdekit's samplers take the exact first-order limit there, this mutant does not."""

    name = "mutant_dpm_solver_2_no_final_guard"

    def step(self, problem, t0, t1, x0, noise, state):
        st = replace(state, hist=list(state.hist))
        ev = Evaluations(self, problem, st)
        upd = self._step(ev, x0, ev.point(t0), ev.point(t1), noise, st)  # the defect: no sigma = 0 branch
        st.k += 1
        return Step(self.combine(upd, noise), state=st, nfe=ev.nfe)


class SignedLevyAreaSRA1(SRA1):
    """diffrax issue #598 "Solving backwards-in-time fails for AbstractSRK's" (fixed by PR #746): backwards in
    time the space-time Lévy area H was negated together with W; H of the time-reversed motion keeps its sign."""

    name = "mutant_sra1_signed_area"

    def step(self, problem, t0, t1, x0, noise, state):
        if noise is not None and t1 < t0:
            noise = (noise[0], -noise[1])  # the defect
        return super().step(problem, t0, t1, x0, noise, state)


class ErrorWithoutStepBosh3(Bosh3):
    """torchdyn issue #164 "dopri5 and tsit5 overestimate error": the embedded error estimate summed
    ``(b_i - b̂_i) k_i`` without the factor ``dt``; the estimate is 1/dt times too large."""

    name = "mutant_bosh3_error_without_h"

    def step(self, problem, t0, t1, x0, noise, state):
        out = super().step(problem, t0, t1, x0, noise, state)
        return replace(out, error=out.error / abs(t1 - t0))  # the defect


class RepeatedHistoryDPMpp3M(DPMSolverPP3M):
    """stable-diffusion.cpp issue #1848 "My mistake in lms sampler": the multistep history was indexed
    [2, 2, 1] instead of [2, 1, 0], so one past derivative was paired with another's coefficient; here the
    third-order term reads D_-1 where D_-2 belongs (at D_-2's lambda)."""

    name = "mutant_dpmpp_3m_repeated_history"

    def _step(self, ev, x, s, t, noise, st):
        hist = _push(st, s.lambda_, ev.denoised(x, s), keep=3)
        order = _lower_order(st, 3, self.lower_order_final)
        if len(hist) == 3:
            hist = [(hist[0][0], hist[1][1]), hist[1], hist[2]]  # the defect
        return dpmpp_multistep_update(x, s, t, hist, order, taylor=True)


class ConstantStepDPMpp2M(DPMSolverPP2M):
    """OrdinaryDiffEq.jl issue #4329 "SBDF solvers do not achieve expected convergence order" (fixed by PR
    #4366): fixed-step multistep coefficients applied after the step size changed. Here DPM-Solver++(2M) takes
    the previous step to have had the current step's h (r = 1 always): right on log-SNR-uniform grids only."""

    name = "mutant_dpmpp_2m_constant_step"

    def _step(self, ev, x, s, t, noise, st):
        hist = _push(st, s.lambda_, ev.denoised(x, s), keep=2)
        order = _lower_order(st, 2, self.lower_order_final)
        if len(hist) == 2:
            h = t.lambda_ - s.lambda_
            hist = [(s.lambda_ - h, hist[0][1]), hist[1]]  # the defect: the previous point placed at lambda_s - h
        return dpmpp_multistep_update(x, s, t, hist, order, taylor=True)


class ReflectedTimeEuler(Solver):
    """SiT PR #36 "Fix backward ODE integration": a decreasing grid was handed to the integrator AND the drift's
    time argument was reflected, reversing time twice."""

    name = "mutant_euler_reflected_time"
    order = 1.0

    def step(self, problem, t0, t1, x0, noise, state):
        tt = -t0 if t1 < t0 else t0  # the defect
        return Step(x0 + (t1 - t0) * problem.drift(time_like(tt, x0), x0))


class ReferenceDPMpp3MClaimingThree(DPMSolverPP3M):
    """The DPM-Solver reference code's (and diffusers') DPM-Solver++(3M) weights its second divided difference
    by phi_3 where the Taylor expansion needs 2 phi_3 (sdekit's finding, README "A finding: DPM-Solver++(3M)"):
    globally second order, here declared third."""

    name = "mutant_dpmpp_3m_reference_claims_3"

    def __init__(self):
        super().__init__(variant="reference")
        self.order = 3.0


class GeneralMilstein(Solver):
    """The general-noise Milstein step ``x0 + f h + Σ g_k ΔW_k + Σ_jk (∂g_k/∂x) g_j I_jk`` (Kloeden & Platen 1992,
    §10.3), with the iterated integrals ``I_jk`` from :meth:`iterated` (``(B, m, m)``). Here:
    ``½ (ΔW_j ΔW_k - h δ_jk)``, which is right for commutative noise, where the Lévy areas cancel. The mutants
    below change only :meth:`iterated`; ``benchmarks/bench_conformance.py`` uses this class as the right scheme."""

    name = "general_milstein_commutative"
    order, strong_order, weak_order = 1.0, 1.0, 1.0
    noise_types = ("general",)

    def iterated(self, noise, h: float, t0: float) -> torch.Tensor:
        m = noise.shape[-1]
        return 0.5 * (noise[:, :, None] * noise[:, None, :] - abs(h) * torch.eye(m, dtype=noise.dtype))

    def step(self, problem, t0, t1, x0, noise, state):
        t, h = time_like(t0, x0), t1 - t0
        x1 = x0 + problem.drift(t, x0) * h
        if noise is None:
            return Step(x1)
        g = problem.diffusion(t, x0)
        g = g.expand(*x0.shape, g.shape[-1]) if g.ndim == x0.ndim else g  # (B, *S, m), also from an unbatched g
        x1 = x1 + problem.g_dw(g, noise, x0)
        iterated = self.iterated(noise, h, t0)
        for j in range(g.shape[-1]):
            x1 = x1 + problem.g_dw(self.jacobian_term(problem, t, x0, g, j), iterated[:, j, :], x0)
        return Step(x1)

    def jacobian_term(self, problem, t, x0, g, j: int) -> torch.Tensor:
        """``(∂g_k/∂x) g_j`` for every k: ``(B, *S, m)``."""
        return problem.diffusion_jvp(t, x0, g[..., j])


class DiagonalTermsOnlyGeneralMilstein(GeneralMilstein):
    """SDETools issue #2 "Wrong implementation for general Milstein scheme": the Milstein correction
    ``½ Σ_j (∂g_j/∂x) g_j (ΔW_j² - h)`` "only works for diagonal noise"; with several Brownian motions the cross
    terms ``Σ_{j≠k} (∂g_k/∂x) g_j I_(j,k)`` are needed (Kloeden & Platen 1992, §10.3), and without them the scheme
    is strong order 0.5, here declared 1."""

    name = "mutant_general_milstein_diagonal_terms"

    def iterated(self, noise, h, t0):
        full = super().iterated(noise, h, t0)
        return torch.diag_embed(torch.diagonal(full, dim1=1, dim2=2))  # the defect: no cross terms j != k


class StratonovichCorrectionMilstein(Milstein):
    """The Itô/Stratonovich mix-up of StochasticDiffEq.jl issue #19 "RKMil Stratonovich Interpretation" (a
    Milstein scheme built for one interpretation used for the other measured strong order 1/2), mirrored: an Itô
    Milstein step whose correction is the Stratonovich ``½ (∂g/∂x) g ΔW²`` instead of ``½ (∂g/∂x) g (ΔW² - h)``.
    It converges to the Stratonovich solution: the strong error does not fall."""

    name = "mutant_milstein_stratonovich_correction"

    def step(self, problem, t0, t1, x0, noise, state):
        out = super().step(problem, t0, t1, x0, noise, state)
        if noise is None or problem.noise_type == "additive":
            return out
        t, h = time_like(t0, x0), t1 - t0
        g = problem.diffusion(t, x0)
        g_full = problem.g_dw(g, torch.ones_like(noise), x0)
        lg = problem.diffusion_jvp(t, x0, g_full)
        return replace(out, x1=out.x1 + 0.5 * problem.g_dw(lg, torch.full_like(noise, abs(h)), x0))  # the defect


class OneStepForOrderOne(DPMSolver1):
    """LuChengTHU/dpm-solver issue #44 "Is this error at single step 1st-order code?" (the author: "Thanks for finding
    this bug"): for order 1 the singlestep driver's step count was set to 1 instead of the number of steps, so the
    whole interval was one first-order step. Here the first step goes to the process's t_min (the grid's end) and
    the others do nothing: the error does not fall with the steps."""

    name = "mutant_dpm_solver_1_one_step"

    def _step(self, ev, x, s, t, noise, st):
        if st.k > 0:
            return Update([(1.0, x)])
        end = ev.point(float(ev.problem.process.t_min))  # the defect: K = 1 step over the whole interval
        return dpm_solver_1_update(x, s, end, ev.eps(x, s))


class FreshLevyAreaGeneralMilstein(GeneralMilstein):
    """OrdinaryDiffEq.jl PR #3214 "Fix RKMilGeneral strong convergence for noncommutative noise": the general-noise
    Milstein drew its Lévy areas as fresh random numbers, independent of the Brownian path the step is driven by, so
    on non-commutative noise its strong order was 0.5, not 1. Here: ``I_jk = ½ ΔW_j ΔW_k - ½ h δ_jk + A_jk`` with
    ``A_jk ~ N(0, h²/12)`` from the step's own generator. On commutative noise the area term multiplies the zero
    Lie bracket and the scheme is a correct order-1 Milstein: only the non-commutative family can reject it."""

    name = "mutant_general_milstein_fresh_levy_area"

    def iterated(self, noise, h, t0):
        m = noise.shape[-1]
        gen = torch.Generator().manual_seed(int(abs(t0) * 2**30) + 7)  # the defect: not the path's area
        area = torch.randn(noise.shape[0], m, m, generator=gen, dtype=torch.float64).to(noise) * (abs(h) / 12**0.5)
        area = torch.triu(area, 1) - torch.triu(area, 1).transpose(1, 2)
        return super().iterated(noise, h, t0) + area


MUTANTS = [
    (HeunCorrectorAtSigmaHat, "diffusion_order", r"measured order [01]\.\d+ .*declared 2"),
    (DDPMPreviousIndex, "diffusion_moments", r"moments of Gaussian data off"),
    (DDIMUniformStride, "diffusion_order", r"measured order -?0\.\d+ .*declared 1|non-finite"),
    (DummyLastStep, "diffusion_final_step", r"left the state unchanged"),
    (SecondOrderOntoSigmaZero, "diffusion_final_step", r"to t = 0 \(sigma = 0\)"),
    (SignedLevyAreaSRA1, "time_reversal", r"decreasing grid differs"),
    (ErrorWithoutStepBosh3, "error_estimate", r"the error estimate shrinks like h\^2\.\d+ .*expected h\^3"),
    (RepeatedHistoryDPMpp3M, "diffusion_order", r"measured order [12]\.\d+ .*declared 3"),
    (ConstantStepDPMpp2M, "diffusion_order", r"measured order [01]\.\d+ .*under vp/irregular.*declared 2"),
    (ReflectedTimeEuler, "time_reversal", r"decreasing grid differs"),
    (ReferenceDPMpp3MClaimingThree, "diffusion_order", r"measured order 2\.\d+ .*declared 3"),
    (DiagonalTermsOnlyGeneralMilstein, "strong_order", r"measured strong order 0\.\d\d with general noise"),
    (OneStepForOrderOne, "diffusion_order", r"do not grow with the steps"),
    (StratonovichCorrectionMilstein, "strong_order", r"measured strong order -?0\.\d\d with (scalar|diagonal) noise"),
    (FreshLevyAreaGeneralMilstein, "strong_order", r"measured strong order 0\.\d\d with general noise on "
                                                   r"Case\(heisenberg_sde"),
]


@pytest.mark.parametrize("cls, check, pattern", MUTANTS, ids=[m[0].name for m in MUTANTS])
def test_real_bug_mutant_is_rejected(cls, check, pattern):
    report = check_solver(cls(), kinds=(check,))
    assert not report.passed, report.summary()
    messages = [f.message for f in report.failures if f.check == check]
    assert any(re.search(pattern, m) for m in messages), report.summary()


def test_the_originals_pass_the_same_checks():
    """The correct solvers the mutants were made from pass exactly the checks that reject their mutants."""
    originals = {"edm_heun": ["diffusion_order", "diffusion_final_step"], "ddpm": ["diffusion_moments"],
                 "ddim": ["diffusion_order", "diffusion_final_step"], "dpm_solver_2": ["diffusion_final_step"],
                 "dpmpp_2m": ["diffusion_order", "diffusion_final_step"], "sra1": ["time_reversal"],
                 "bosh3": ["error_estimate"], "dopri5": ["error_estimate"], "dpmpp_3m": ["diffusion_order"],
                 "euler": ["time_reversal"], "milstein": ["strong_order"]}
    for name, checks in originals.items():
        report = check_solver(name, kinds=checks)
        assert report.passed and sorted(report.checks) == sorted(checks), report.summary()
