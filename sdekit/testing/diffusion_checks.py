"""Conformance checks for diffusion samplers (capabilities ``diffusion:ode`` / ``diffusion:sde``).

Ground truth: data ``N(mu, s² I)``, whose probability-flow ODE is affine in closed form,
``x_t = alpha mu + sqrt(v_t / v_T) (x_T - alpha_T mu)`` with ``v = alpha² s² + sigma²``, and whose noised
marginals are known exactly. Each check runs the sampler through [`sdekit.sample`][] as a user would.

- ``diffusion_order``: error against the exact flow on log-SNR grids, on a continuous VP process and on a
  discrete DDPM schedule (a sampler that evaluates the model at rounded times stops converging there);
  measured order >= declared - 0.3 (one-sided: on Gaussian data some error terms cancel, e.g. 3M's h³ term);
  and the NFE the sampler reports equals the model evaluations counted.
- ``diffusion_determinism``: the same generator gives the same samples, also after an unrelated call in
  between (history kept on the sampler object would leak into the next solve).
- ``diffusion_moments``: stochastic samplers reproduce the exact mean and variance of the data noised to
  ``t_min`` within Monte-Carlo error plus a small discretisation allowance.
- ``consistency_exact``: samplers that declare ``needs_consistency_model`` run on the exact consistency
  function of the Gaussian data: one step to sigma = 0 lands on the closed-form flow map, and a few steps
  give the exact data mean and variance within Monte-Carlo error.
"""

from __future__ import annotations

import math

import torch

from ..analytic import GaussianMixture
from ..bench import sampler_order
from ..models import ScoreModel
from ..processes import VP
from ..sampling import sample
from ..solvers import DiffusionSampler
from .conformance import register_check

F64 = torch.float64
_MU = torch.tensor([0.7, -0.7], dtype=F64)
_S2 = 0.09


def _data():
    return GaussianMixture(_MU[None], torch.full((1, 2), _S2, dtype=F64), [1.0])


def _exact_flow(p, x_T):
    a_T, s_T = float(p.alpha(p.t_max)), float(p.sigma(p.t_max))
    a, s = float(p.alpha(p.t_min)), float(p.sigma(p.t_min))
    return a * _MU + math.sqrt((a * a * _S2 + s * s) / (a_T * a_T * _S2 + s_T * s_T)) * (x_T - a_T * _MU)


def _sampler(solver, caps):
    if not isinstance(solver, DiffusionSampler):
        # generic solvers accept a PF-ODE too, but are measured by the ODE/SDE checks (and RK stages lose order
        # across the kinks of a discrete schedule's log alpha, which exponential integrators step over exactly)
        return "not a diffusion sampler: the generic ODE/SDE checks apply"
    return None


def _irregular_grid(p):
    """``n -> grid`` of times whose log-SNR steps alternate 1.5 h and 0.5 h (h the uniform step; the last step h
    when n is odd)."""

    def grid(n):
        lo, hi = float(p.log_snr(torch.tensor(p.t_max, dtype=F64))), float(p.log_snr(torch.tensor(p.t_min, dtype=F64)))
        lam = torch.linspace(lo, hi, n + 1, dtype=F64)
        lam[1:n:2] += 0.5 * (hi - lo) / n
        return p.t_from_log_snr(lam)

    return grid


def _recording_net(seen: list, model, process):
    """An index-input network that records the indices it is called at and returns the exact eps."""

    def net(x, index):
        seen.append(index.detach().double().reshape(-1))
        return model.eps(x, process.t_from_index(index.double()))

    return net


def _fixed_steps(solver, caps):
    if getattr(solver, "needs_consistency_model", False):
        return "needs a consistency model: consistency_exact runs it on the exact consistency function"
    if solver.default_controller is not None:
        return "chooses its own steps (runs adaptively by default): orders on fixed grids do not apply"
    return _sampler(solver, caps)


@register_check("diffusion_order", capability="diffusion:ode", applies=_fixed_steps, group="orders")
def diffusion_order(ctx):
    """Order against the exact PF-ODE flow of Gaussian data (VP on log-SNR-uniform grids, discrete DDPM on grids
    uniform in sqrt(t)), and NFE accounting."""
    s = ctx.solver
    declared = s.order
    # order-4 rules are still approaching their order over 40-160 steps (iPNDM: 3.6; 3.8 over 80-320)
    d = declared or 1
    steps = (20, 40, 80) if d < 2.5 else (40, 80, 160) if d < 3.5 else (80, 160, 320)
    vp = VP()
    processes = {"vp": vp, "ddpm": VP.from_betas(torch.linspace(1e-4, 0.02, 1000, dtype=F64)), "vp/irregular": vp}
    # log-SNR-uniform steps; steps uniform in sqrt(t) (h in lambda varying smoothly); and log-SNR steps alternately
    # 1.5 h and 0.5 h (step ratios that do not tend to 1, as on optimised grids): a multistep rule with
    # constant-step coefficients is right on the first only and loses an order on the last. (Time-uniform grids
    # vary h so much near t_min that 20-160 steps are not yet in the asymptotic regime.)
    spacing = {"vp": "log_snr", "ddpm": "quadratic", "vp/irregular": _irregular_grid(vp)}
    for label, p in processes.items():
        model = _data().model(p)
        x_T = p.prior_sample((32, 2), generator=torch.Generator().manual_seed(ctx.seed), dtype=F64)
        exact = _exact_flow(p, x_T)
        try:
            rec = sampler_order(model, s, x_T, exact, steps=steps, spacing=spacing[label])
        except ValueError as e:  # the reported NFE is not the model's count
            ctx.fail(f"{e} on {label}")
            return
        errs, nfes = rec.errors, rec.nfe
        if not all(math.isfinite(e) and e > 0 for e in errs):
            ctx.fail(f"non-finite or zero errors on {label}: {errs}")
            return
        if label == "ddpm":
            # the log-SNR grid's times are not integer DDPM indices: a network with an index time input must see
            # them unrounded (diffusers-style rounding makes the error stop falling at large NFE)
            seen: list = []
            probe = ScoreModel(_recording_net(seen, model, p), p, prediction="eps", time_input="index",
                               sample_shape=(2,))
            sample(probe, x_T[:4], s, steps=steps[0], spacing="log_snr")
            idx = torch.cat(seen)
            if bool(((idx - idx.round()).abs() < 1e-6).all()):
                ctx.fail(f"on the discrete DDPM schedule ({label}) the model was evaluated only at integer indices "
                         "although the grid's times are fractional: rounded times")
                return
        measured = rec.order
        ctx.record_order(f"diffusion/{label}", measured, declared)
        if declared is not None and measured < declared - 0.3:
            ctx.fail(f"measured order {measured:.2f} on Gaussian data under {label} (errors {errs} at NFE {nfes}), "
                     f"declared {declared:g}" + (" — the error stops falling: is the model evaluated at rounded "
                                                 "times?" if label == "ddpm" and measured < 0.5 else ""))


@register_check("diffusion_determinism", capability=("diffusion:ode", "diffusion:sde"), applies=_sampler,
                group="invariance")
def diffusion_determinism(ctx):
    """Same generator, same samples; an unrelated call in between changes nothing."""
    s = ctx.solver
    p = VP()
    model = GaussianMixture.preset("ring2d").model(p)
    x_T = p.prior_sample((8, 2), generator=torch.Generator().manual_seed(ctx.seed), dtype=F64)

    def run(x, n=6):
        return sample(model, x, s, steps=n, generator=torch.Generator().manual_seed(ctx.seed + 1)).x

    first = run(x_T)
    run(0.5 * x_T, n=4)
    again = run(x_T)
    if not torch.equal(first, again):
        ctx.fail(f"results change after an unrelated solve (max diff {float((first - again).abs().max()):.3g}): "
                 "the sampler keeps state between solves")


@register_check("diffusion_moments", capability="diffusion:sde", applies=_fixed_steps, group="orders")
def diffusion_moments(ctx):
    """Stochastic sampling of Gaussian data: exact mean and variance within 5 SE + 0.02 (discretisation)."""
    s = ctx.solver
    p = VP()
    model = _data().model(p)
    n = 4000
    x_T = p.prior_sample((n, 2), generator=torch.Generator().manual_seed(ctx.seed), dtype=F64)
    out = sample(model, x_T, s, steps=100, generator=torch.Generator().manual_seed(ctx.seed + 1)).x
    a, sg = float(p.alpha(p.t_min)), float(p.sigma(p.t_min))
    var = a * a * _S2 + sg * sg
    mean_err = float((out.mean(0) - a * _MU).abs().max())
    var_err = float((out.var(0) - var).abs().max())
    if mean_err > 5 * math.sqrt(var / n) + 0.02 or var_err > 5 * var * math.sqrt(2 / n) + 0.02:
        ctx.fail(f"moments of Gaussian data off: mean error {mean_err:.3g}, variance error {var_err:.3g} "
                 f"(n={n}, 100 steps)")


@register_check("diffusion_final_step", capability="diffusion:ode", applies=_fixed_steps, group="accounting")
def diffusion_final_step(ctx):
    """Sampling to ``t = 0`` (sigma = 0, log-SNR infinite) on time-uniform grids returns finite samples that converge
    to the exact end of the flow of Gaussian data, and the last step moves the state: catches higher-order updates
    that divide by ``h = inf`` on the last step (NaN) and last steps that are skipped or mishandled."""
    s = ctx.solver
    p = VP()
    x_T = p.prior_sample((32, 2), generator=torch.Generator().manual_seed(ctx.seed), dtype=F64)
    a_T, s_T = float(p.alpha(p.t_max)), float(p.sigma(p.t_max))
    exact = _MU + math.sqrt(_S2 / (a_T * a_T * _S2 + s_T * s_T)) * (x_T - a_T * _MU)  # alpha(0) = 1, sigma(0) = 0
    errs = []
    for n in (8, 32):
        try:
            sol = sample(_data().model(p), x_T, s, steps=n, spacing="time", t_end=0.0, return_trajectory=True)
        except (ValueError, FloatingPointError) as e:
            ctx.fail(f"sampling {n} steps to t = 0 (sigma = 0) fails: {e}")
            return
        out = sol.x
        if torch.equal(sol.xs[-1], sol.xs[-2]):
            ctx.fail(f"the last of {n} steps, onto sigma = 0, left the state unchanged: the sample keeps the noise of "
                     "the last positive time")
            return
        if not bool(torch.isfinite(out).all()):
            ctx.fail(f"non-finite samples after {n} steps ending at t = 0 (sigma = 0): the last step divides by "
                     "h = inf or by sigma = 0")
            return
        errs.append(float((out - exact).pow(2).mean().sqrt()))
    if not errs[1] < errs[0] / 2:
        ctx.fail(f"the error at t = 0 does not fall with the steps (RMS {errs[0]:.3g} at 8 steps, {errs[1]:.3g} at "
                 "32): the last step onto sigma = 0 is mishandled")


def _consistency(solver, caps):
    if not getattr(solver, "needs_consistency_model", False):
        return "not a consistency sampler"
    return None


@register_check("consistency_exact", capability="diffusion:sde", applies=_consistency, group="exact")
def consistency_exact(ctx):
    """With the exact consistency function of Gaussian data: one step is the exact flow map, and four steps
    sample the data law (mean and variance within 5 standard errors)."""
    s = ctx.solver
    p = VP()
    model = _data().consistency_model(p, t_end=0.0)
    x_T = p.prior_sample((512, 2), generator=torch.Generator().manual_seed(ctx.seed), dtype=F64)
    one = sample(model, x_T, s, steps=1, t_end=0.0, generator=torch.Generator().manual_seed(ctx.seed + 1)).x
    a_T, s_T = float(p.alpha(p.t_max)), float(p.sigma(p.t_max))
    exact = _MU + math.sqrt(_S2 / (a_T * a_T * _S2 + s_T * s_T)) * (x_T - a_T * _MU)  # the flow map to t = 0
    err = float((one - exact).abs().max())
    if err > 1e-6:  # the flow map is solved to rtol 1e-10; 1e-6 leaves room for nothing but a wrong update
        ctx.fail(f"one step with the exact consistency function misses the exact flow map by {err:.3g}")
    n = 2000
    x_T = p.prior_sample((n, 2), generator=torch.Generator().manual_seed(ctx.seed + 2), dtype=F64)
    out = sample(model, x_T, s, steps=4, t_end=0.0, generator=torch.Generator().manual_seed(ctx.seed + 3)).x
    mean_err = float((out.mean(0) - _MU).abs().max())
    var_err = float((out.var(0) - _S2).abs().max())
    if mean_err > 5 * math.sqrt(_S2 / n) or var_err > 5 * _S2 * math.sqrt(2 / n):
        ctx.fail(f"four steps with the exact consistency function: mean error {mean_err:.3g}, variance error "
                 f"{var_err:.3g} (n={n}; exact in law, so only Monte-Carlo error is allowed)")
