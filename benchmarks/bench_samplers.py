"""Accuracy of sdekit's diffusion samplers and of diffusers' schedulers at equal NFE on an exact model.

Problem: the ``stress8d`` Gaussian mixture (8-D, 6 sharp anisotropic components, standard deviations down to
0.02) under the discrete DDPM schedule (N = 1000 steps, linear betas 1e-4..0.02, float64). Its exact noise
prediction is exposed once as a network ``eps_net(x, index)`` of the DDPM index, called by both libraries:
by diffusers with its integer timesteps, by sdekit through ``ScoreModel(time_input="index")`` (fractional
indices where an algorithm asks for a time between knots).

Error: RMSE = sqrt(mean over trajectories and coordinates of the squared difference) between a sampler's
final state and the exact probability-flow ODE solution from the same x_T. The common end is the last DDPM
grid point, t_end = t_from_index(0) = 1/N (sigma = 0.01); diffusers configurations that end at sigma = 0
(``final_sigmas_type="zero"``, DDIM ``set_alpha_to_one=True``) are compared with the exact flow at t = 0
instead, and are marked "(end sigma=0)". Each seed draws its own x_T (``--batch`` trajectories); tables give
mean ± std over seeds of the RMSE, and the JSON also holds the median per-trajectory error
(sqrt(mean over coordinates)), averaged over seeds.

Reference: scipy's DOP853 (``sdekit.analytic.reference_solve``, rtol = atol = 1e-10, float64) on the PF-ODE
``dx/dt = f x - 1/2 g^2 score`` written in xbar = x/alpha against u = log(sigma/alpha) = -lambda:
``d xbar/du = (sigma/alpha) eps(x, t)``, an exact change of variables for every VP schedule. On the discrete
schedule the drift in t jumps at each of the 1000 knots (log alpha is piecewise linear), which makes an
adaptive solve in t crawl (DOP853 split at the knots: 12 minutes for 256 trajectories); the mixture's eps
depends on t only through (alpha, sigma), smooth functions of u, so the ODE in u is smooth (~1 s).
``--check-reference K`` re-solves K trajectories with ``probability_flow(process, model)`` in t, knot to
knot, and reports the largest difference.

Samplers: every deterministic sampler of the registry that applies (ddim, dpm_solver_2/3, dpmpp_2s,
dpmpp_2m, dpmpp_3m with variant "taylor" (default) and "reference", unipc bh1/bh2 of order 2/3, edm_heun)
ipndm, deis, plus the generic rk4 and heun on the PF-ODE, each with the spacings time/log_snr/karras/quadratic
ending at t_end = 1/N and five grids ending at t = 0 (``END0``: the time-uniform grid to 0, and each spacing to
1/N with one more step to 0, compared with the exact flow at t = 0); the best spacing per sampler and NFE
(lowest mean RMSE) is reported, and ``sdekit.sample``'s defaults on their own row. Optimised grids
("optimised", ``--opt-nfe``): ``sdekit.optimize_grid(method="dp")`` for DPM-Solver++(2M)/(3M) and UniPC
bh2 (orders 2, 3), selected on ``--pilots`` x_T of seed ``PILOT_SEED`` (never an evaluation seed) and
reported on the evaluation seeds' draws, with the optimiser's wall time; UniPC bh2 o3 also on stratified
pilots ("optimised+pool", ``--pool``: the hardest quarter of a pool of 16384 draws and a weighted subsample of
the rest, ``optimize_grid(pool=)``).
An NFE budget B gives B // evals_per_step
steps; the NFE reported is ``sample(...).stats["nfe"]``. diffusers: DDIMScheduler (trailing),
DPMSolverMultistepScheduler (2M and 3M, dpmsolver++; linspace timesteps, Karras sigmas, Lu lambdas) and
UniPCMultistepScheduler (bh2, order 2; linspace, Karras), stock (float32 schedule), driven by hand.

Targets (from the samplers issue):
(a) identical algorithm and grid -> the same RMSE as diffusers within 1% (sdekit run on each scheduler's own
    grid with the matching options, every NFE and seed);
(b) the best sdekit sampler beats the best diffusers scheduler at 10 and 20 NFE by more than the run-to-run
    spread (std over seeds), aiming at 2x lower RMSE (every seed's ratio >= 2);
(c) what a user gets by default is never worse than diffusers' default, each end compared with its own end
    (`default_targets`).
Also: the measured global order of DPM-Solver++(3M) in both variants (log_snr grids, 50..1600 steps), and
diffusers' Karras sigmas with the model called at rounded integer timesteps against sdekit on the same
sigmas with the model at the exact times (NFE 10..800).

Other problems (``--problem``, each its own JSON ``bench_samplers_<problem>.json``): the mixtures ``ring2d``
(2-D, 8 components on a circle) and ``stress16d`` (a random 16-D mixture, ``GaussianMixture.random(16, 8,
seed=16)``) under the same schedule, every sampler and spacing; the shipped networks ``moons`` and ``digits``
(``NetworkProblem``: the zoo network under its own continuous VP process, diffusers given that process at its
1000 knots; a float64 reference of the network's own PF-ODE, checked by the same solve 100x tighter) with the
samplers of ``NET_SAMPLERS``; the digits UNet on 3 x 32 images, the spacings of its ``PROBLEMS`` entry and no
optimised grids (its float64 ODE needs about 1600 evaluations per solve at rtol 1e-5). On the networks target
(b) asks for 1.5x. ``--defaults-sweep``: target (c) alone at every NFE from 5 to 50 (``*_defaults.json``).
``--summary``: every problem's targets in one table, and a review of the default (every fixed sampler x
spacing against diffusers' default on every problem), in ``bench_samplers_summary.json``.

Run: ``python benchmarks/bench_samplers.py`` (full: 3 seeds x 2048 trajectories) or ``--quick``;
``--problem NAME``; ``--summary`` after the problems' runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

N_TRAIN = 1000
SPACINGS = ("time", "log_snr", "karras", "quadratic")
# Grids that end at t = 0 (sigma = 0), compared with the exact flow at t = 0 like diffusers' "(end sigma=0)"
# configurations: "time>0" is the time-uniform grid to t = 0; "X+0" is the X grid to t_end = 1/N with one more
# step from there to t = 0 (diffusers' final_sigmas_type="zero"), the same NFE.
END0 = ("time>0", "time+0", "log_snr+0", "karras+0", "quadratic+0")
ALL_SPACINGS = SPACINGS + END0
# Optimised grids: sdekit.optimize_grid (GITS-style DP over 101 log-SNR-uniform candidates, then a Nelder-Mead
# polish) on pilot x_T drawn from this seed (never one of the evaluation seeds 0, 1, ...), ending at t = 1/N
PILOT_SEED = 1000
POOL_SAMPLER = "unipc[bh2,o3]"  # also optimised on stratified pilots drawn from --pool x_T
OPT_SAMPLERS = [
    ("dpmpp_2m", "dpmpp_2m", {}),
    ("dpmpp_3m", "dpmpp_3m", {}),
    ("unipc[bh2,o2]", "unipc", {"variant": "bh2", "order": 2}),
    ("unipc[bh2,o3]", "unipc", {"variant": "bh2", "order": 3}),
]
REF_TOL = 1e-10

# (label, registry name, options)
SDEKIT_SAMPLERS = [
    ("ddim", "ddim", {}),
    ("dpm_solver_2", "dpm_solver_2", {}),
    ("dpm_solver_3", "dpm_solver_3", {}),
    ("dpmpp_2s", "dpmpp_2s", {}),
    ("dpmpp_2m", "dpmpp_2m", {}),
    ("dpmpp_3m", "dpmpp_3m", {}),
    ("dpmpp_3m[reference]", "dpmpp_3m", {"variant": "reference"}),
    ("unipc[bh1,o2]", "unipc", {"variant": "bh1", "order": 2}),
    ("unipc[bh1,o3]", "unipc", {"variant": "bh1", "order": 3}),
    ("unipc[bh2,o2]", "unipc", {"variant": "bh2", "order": 2}),
    ("unipc[bh2,o3]", "unipc", {"variant": "bh2", "order": 3}),
    ("ipndm", "ipndm", {}),
    ("deis", "deis", {}),
    ("edm_heun", "edm_heun", {}),
    ("rk4", "rk4", {}),
    ("heun", "heun", {}),
]
ORDER_SAMPLERS = [("dpmpp_3m", "dpmpp_3m", {}), ("dpmpp_3m[reference]", "dpmpp_3m", {"variant": "reference"}),
                  ("dpmpp_2m", "dpmpp_2m", {}), ("unipc[bh2,o3]", "unipc", {"variant": "bh2", "order": 3})]
LABEL_W = 46
# diffusers' default algorithm at each end (target (c)): DPMSolverMultistepScheduler ending at t_min, and the
# stock DPMSolverMultistepScheduler(), which ends at sigma = 0
DIFFUSERS_DEFAULT = {"t_min": "DPM++2M", "zero": "DPM++2M stock default (end sigma=0)"}
NEVER_WORSE = 0.99  # target (c): no seed's ratio (diffusers / sdekit) below this (the 1% parity tolerance of (a))

# The problems (--problem). The mixtures run every sampler and spacing, the parity, rounding and order sections
# (stress8d only for the last three, its JSON keeps the name bench_samplers.json); the shipped networks a subset:
# their evaluations cost 10-1000x a mixture's.
NET_SAMPLERS = ["ddim", "dpm_solver_2", "dpmpp_2m", "dpmpp_3m", "unipc[bh2,o2]", "unipc[bh2,o3]", "ipndm", "deis"]
NET_OPT_SAMPLERS = ["dpmpp_2m", "unipc[bh2,o3]"]
PROBLEMS = {
    # name: defaults of --batch, the samplers and spacings (None: all), the optimised grids (samplers, NFE, pilots,
    # pool), the parity/rounding/order sections (extras), the reference rtol, target (b)'s ratio, --check-reference
    "stress8d": dict(batch=2048, samplers=None, spacings=None, opt_samplers=None, opt_nfe=[10, 20], pilots=2048,
                     pool=16384, extras=True, ref_tol=1e-10, target_ratio=2.0, check_reference=4),
    "ring2d": dict(batch=2048, samplers=None, spacings=None, opt_samplers=None, opt_nfe=[10, 20], pilots=2048,
                   pool=16384, extras=False, ref_tol=1e-10, target_ratio=2.0, check_reference=0),
    "stress16d": dict(batch=2048, samplers=None, spacings=None, opt_samplers=None, opt_nfe=[10, 20], pilots=2048,
                      pool=16384, extras=False, ref_tol=1e-10, target_ratio=2.0, check_reference=0),
    "moons": dict(batch=1024, samplers=NET_SAMPLERS, spacings=None, opt_samplers=NET_OPT_SAMPLERS,
                  opt_nfe=[10, 20], pilots=256, pool=0, extras=False, ref_tol=1e-8, target_ratio=1.5,
                  check_reference=16),
    "digits": dict(batch=32, samplers=NET_SAMPLERS,
                   spacings=["time", "log_snr", "karras", "quadratic", "time>0", "quadratic+0"],
                   opt_samplers=[], opt_nfe=[], pilots=64, pool=0, extras=False, ref_tol=1e-5,
                   target_ratio=1.5, check_reference=4),
}


def make_problem(name: str, ref_tol: float):
    if name in ("moons", "digits"):
        return NetworkProblem(name, ref_tol)
    return MixtureProblem(name, ref_tol)


class MixtureProblem:
    """The discrete DDPM schedule, an analytic mixture, the shared eps network and the models built on it."""

    dtype = torch.float64
    diffusers_kwargs: dict = {}  # diffusers' default betas are linspace(1e-4, 0.02, 1000): this schedule

    def __init__(self, preset: str = "stress8d", ref_tol: float = REF_TOL):
        self.ref_tol = ref_tol
        from sdekit import VP, ScoreModel
        from sdekit.analytic import GaussianMixture

        self.betas = torch.linspace(1e-4, 0.02, N_TRAIN, dtype=torch.float64)
        self.process = VP.from_betas(self.betas)
        self.preset = preset
        self.mixture = GaussianMixture.preset(preset)
        self.dim = self.mixture.dim
        self.exact = self.mixture.model(self.process)
        self.model = ScoreModel(self.eps_net, self.process, prediction="eps", time_input="index",
                                sample_shape=(self.mixture.dim,))
        self.model64 = self.model  # the float64 model (the grid optimiser's teachers): already float64 here
        self.t_end = float(self.process.t_from_index(0))  # 1/N: the last DDPM grid point

    def eps_net(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.exact.eps(x, self.process.t_from_index(index))

    def describe(self) -> dict:
        return {"mixture": f"GaussianMixture.preset({self.preset!r})", "dim": self.dim,
                "schedule": "VP.from_betas(linspace(1e-4, 0.02, 1000)), float64",
                "model": "exact eps of the mixture as a network of the DDPM index, shared by both libraries"}

    def grid_from_t(self, ts: torch.Tensor) -> torch.Tensor:
        """A grid of times as the model's time input: DDPM indices, t = (i + 1) / N (t = 0 is index -1)."""
        return ts * N_TRAIN - 1

    def x_T(self, batch: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return self.process.prior_sample((batch, self.mixture.dim), generator=g, dtype=torch.float64)

    def sigmabar(self, t: float) -> float:
        tt = torch.tensor(t, dtype=torch.float64)
        return float(self.process.sigma(tt) / self.process.alpha(tt))

    # --- reference ---------------------------------------------------------------------------------------
    def _eps_ab(self, sb: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        """eps at x = alpha xbar for sigmabar = sb (VP: alpha = 1/sqrt(1 + sb^2), sigma = sb alpha)."""
        a = 1 / torch.sqrt(1 + sb * sb)
        s = sb * a
        return -s * self.mixture.score_at(a * xb, a, s)

    def reference(self, x_T: torch.Tensor) -> dict[str, torch.Tensor]:
        """The exact PF-ODE flow of x_T (from t = 1) at t_end = 1/N and at t = 0 (sigma = 0)."""
        from sdekit.analytic import reference_solve

        a_T = float(self.process.alpha(torch.tensor(1.0, dtype=torch.float64)))
        a_E = float(self.process.alpha(torch.tensor(self.t_end, dtype=torch.float64)))
        sb_T, sb_E = self.sigmabar(1.0), self.sigmabar(self.t_end)
        xb_E = reference_solve(lambda u, xb: torch.exp(u) * self._eps_ab(torch.exp(u), xb), x_T / a_T,
                               math.log(sb_T), math.log(sb_E), rtol=self.ref_tol, atol=self.ref_tol)
        xb_0 = reference_solve(self._eps_ab, xb_E, sb_E, 0.0, rtol=self.ref_tol, atol=self.ref_tol)
        return {"t_min": xb_E * a_E, "zero": xb_0}

    reference_check_method = "probability_flow(process, exact model) in t, DOP853 per knot interval"

    def reference_check(self, x_T: torch.Tensor) -> torch.Tensor:
        """The literal solve: ``probability_flow(process, exact model)`` in t, DOP853 knot to knot."""
        from sdekit import probability_flow
        from sdekit.analytic import reference_solve

        ode = probability_flow(self.process, self.exact)
        y = x_T
        for i in range(N_TRAIN, 1, -1):
            y = reference_solve(ode, y, i / N_TRAIN, (i - 1) / N_TRAIN, rtol=self.ref_tol, atol=self.ref_tol)
        return y


class NetworkProblem:
    """A shipped network (``sdekit.zoo``) under the continuous process it was trained on, both libraries on it.

    sdekit samples the zoo model as it loads (float32, time input t). diffusers' schedulers are given that
    process at their 1000 knots, ``trained_betas`` with ``prod(1 - beta_j, j <= k) = alpha((k + 1) / N)^2``, and
    the network is called at ``t = (k + 1) / N`` for diffusers' integer timestep k: both libraries integrate the
    same probability-flow ODE, the network's own. The reference is that ODE solved in float64 (the network in
    float64) by DOP853 in v = log(sigma/alpha) (``reference_solve_log_snr``), then in sigma/alpha down to 0.
    """

    dtype = torch.float32

    def __init__(self, name: str, ref_tol: float):
        from sdekit import zoo

        self.zoo_name = f"{name}-vp-eps"
        self.model = zoo.load(self.zoo_name)
        self.model64 = zoo.load(self.zoo_name, dtype=torch.float64)
        self.process = self.model.process
        self.shape = tuple(self.model.sample_shape)
        self.dim = math.prod(self.shape)
        self.ref_tol = ref_tol
        self.t_end = 1.0 / N_TRAIN  # diffusers' last timestep (index 0); the zoo networks' t_min
        knots = torch.arange(1, N_TRAIN + 1, dtype=torch.float64) / N_TRAIN
        ac = self.process.alpha(knots).detach() ** 2
        betas = 1 - ac / torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
        self.diffusers_kwargs = {"trained_betas": betas.tolist()}

    def describe(self) -> dict:
        return {"network": f"sdekit.zoo.load({self.zoo_name!r}) (float32 for the samplers, float64 for the "
                           "reference)", "dim": self.dim, "sample_shape": list(self.shape),
                "schedule": f"{self.process!r} (the network's own); diffusers: trained_betas from alpha at the "
                            "1000 knots t = (k + 1)/1000",
                "model": "the network's eps prediction, called at t = (k + 1)/1000 by diffusers"}

    def grid_from_t(self, ts: torch.Tensor) -> torch.Tensor:
        return ts

    def eps_net(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model.net(x, ((index + 1) / N_TRAIN).to(x.dtype))

    def x_T(self, batch: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return self.process.prior_sample((batch, *self.shape), generator=g, dtype=torch.float64).float()

    def reference(self, x_T: torch.Tensor) -> dict[str, torch.Tensor]:
        """The network's PF-ODE flow of x_T (float64) at t_end = 1/N and at t = 0."""
        from sdekit.analytic import reference_solve

        m, p, f64 = self.model64, self.process, torch.float64
        x_E = self._to_t_end(x_T, self.ref_tol)

        def drift(sb, xb):  # d xbar / d(sigma/alpha) = eps(alpha xbar, t), t from lambda = -log(sigma/alpha)
            t = p.t_from_log_snr(-torch.log(torch.as_tensor(sb, dtype=f64))).clamp(min=0.0)
            with torch.no_grad():
                return m.predict(p.alpha(t) * xb, t, "eps").to(f64)

        tE = torch.tensor(self.t_end, dtype=f64)
        a_E, sb_E = float(p.alpha(tE)), float(p.sigma(tE) / p.alpha(tE))
        x_0 = reference_solve(drift, x_E / a_E, sb_E, 0.0, rtol=self.ref_tol, atol=self.ref_tol)
        return {"t_min": x_E, "zero": x_0}

    @property
    def reference_check_method(self) -> str:
        return f"the same solve at rtol = atol = {self.ref_tol / 100:g}"

    def reference_check(self, x_T: torch.Tensor) -> torch.Tensor:
        """The reference at t_end with 100x tighter tolerances (its own error, measured)."""
        return self._to_t_end(x_T, self.ref_tol / 100)

    def _to_t_end(self, x_T: torch.Tensor, tol: float) -> torch.Tensor:
        """The network's PF-ODE from t = 1 to t_end, float64 DOP853 in log(sigma/alpha)."""
        from sdekit.analytic import reference_solve_log_snr

        return reference_solve_log_snr(self.model64, x_T.double(), 1.0, self.t_end, rtol=tol, atol=tol)


def grid_kwargs(prob, spacing: str, steps: int) -> dict:
    """``sample`` keyword arguments of a spacing of ALL_SPACINGS with ``steps`` steps."""
    from sdekit import time_grid

    if spacing in SPACINGS:
        return {"steps": steps, "spacing": spacing, "t_end": prob.t_end}
    if spacing == "time>0":
        return {"steps": steps, "spacing": "time", "t_end": 0.0}
    if steps < 2:
        raise ValueError(f"{spacing} needs at least 2 steps")
    ts = time_grid(prob.process, steps - 1, spacing[:-2], t_end=prob.t_end)
    return {"grid": prob.grid_from_t(torch.cat([ts, torch.zeros(1, dtype=ts.dtype)]))}


def errors(x: torch.Tensor, ref: torch.Tensor) -> dict:
    d2 = (x.double() - ref.double()).flatten(1) ** 2
    if not bool(torch.isfinite(d2).all()):
        return {"rmse": float("nan"), "median_traj": float("nan")}
    return {"rmse": float(d2.mean().sqrt()), "median_traj": float(d2.mean(1).sqrt().median())}


# --- diffusers ----------------------------------------------------------------------------------------------
def diffusers_configs(common: dict | None = None) -> dict[str, tuple]:
    """label -> (factory, end) with end "t_min" (index 0) or "zero" (sigma = 0); ``common``: keyword arguments
    of every scheduler (the problem's ``trained_betas``)."""
    common = common or {}
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    def dpm(order, final, **kw):
        return lambda n: DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=order,
                                                     final_sigmas_type=final, **kw, **common)

    def unipc(final, **kw):
        return lambda n: UniPCMultistepScheduler(solver_order=2, solver_type="bh2", final_sigmas_type=final, **kw,
                                                 **common)

    cfg = {
        "DDIM trailing": (lambda n: DDIMScheduler(clip_sample=False, set_alpha_to_one=False,
                                                  timestep_spacing="trailing", **common), "t_min"),
        "DDIM trailing (end sigma=0)": (lambda n: DDIMScheduler(clip_sample=False, set_alpha_to_one=True,
                                                                timestep_spacing="trailing", **common), "zero"),
    }
    for order in (2, 3):
        m = f"DPM++{order}M"
        cfg[m] = (dpm(order, "sigma_min"), "t_min")
        cfg[f"{m} (end sigma=0)"] = (dpm(order, "zero"), "zero")
        cfg[f"{m} karras"] = (dpm(order, "sigma_min", use_karras_sigmas=True), "t_min")
        cfg[f"{m} karras (end sigma=0)"] = (dpm(order, "zero", use_karras_sigmas=True), "zero")
        cfg[f"{m} lu_lambdas (end sigma=0)"] = (dpm(order, "zero", use_lu_lambdas=True), "zero")
    cfg[DIFFUSERS_DEFAULT["zero"]] = (lambda n: DPMSolverMultistepScheduler(**common), "zero")
    cfg["UniPC bh2 o2"] = (unipc("sigma_min"), "t_min")
    cfg["UniPC bh2 o2 (end sigma=0)"] = (unipc("zero"), "zero")
    cfg["UniPC bh2 o2 karras (end sigma=0)"] = (unipc("zero", use_karras_sigmas=True), "zero")
    return cfg


def run_diffusers(sched, n: int, x_T: torch.Tensor, net) -> tuple[torch.Tensor, int, list[int]]:
    sched.set_timesteps(n)
    y, nfe = x_T.clone(), 0
    for t in sched.timesteps:
        out = net(y, torch.full((y.shape[0],), float(t), dtype=y.dtype))
        nfe += 1
        y = sched.step(out, t, y).prev_sample
    return y, nfe, [int(t) for t in sched.timesteps]


def parity_pairs(n: int):
    """(label, diffusers factory, sdekit solver, sdekit options, end index): identical algorithm and grid.

    diffusers' DPM++ lowers the order of the last steps for n < 15, sdekit (as the DPM-Solver reference) for
    n < 10; UniPC in diffusers lowers the last steps for every n. The rules agree with these settings."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    lof_dpm = not (10 <= n < 15)
    lof_unipc = n < 10
    return [
        ("ddim = DDIM trailing", lambda: DDIMScheduler(clip_sample=False, set_alpha_to_one=False,
                                                        timestep_spacing="trailing"), "ddim", {}),
        ("dpmpp_2m = DPM++2M", lambda: DPMSolverMultistepScheduler(
            algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="sigma_min", lower_order_final=lof_dpm),
         "dpmpp_2m", {"lower_order_final": lof_dpm, "max_step_ratio": None}),
        ("dpmpp_3m[reference] = DPM++3M", lambda: DPMSolverMultistepScheduler(
            algorithm_type="dpmsolver++", solver_order=3, final_sigmas_type="sigma_min", lower_order_final=lof_dpm),
         "dpmpp_3m", {"variant": "reference", "lower_order_final": lof_dpm, "max_step_ratio": None}),
        ("unipc[bh2,o2] = UniPC bh2 o2", lambda: UniPCMultistepScheduler(
            solver_order=2, solver_type="bh2", final_sigmas_type="sigma_min", lower_order_final=lof_unipc),
         "unipc", {"variant": "bh2", "order": 2, "lower_order_final": lof_unipc, "max_step_ratio": None}),
    ]


# --- statistics and formatting -----------------------------------------------------------------------------
def ratio(theirs, ours) -> float:
    """diffusers' RMSE over sdekit's, with a diverged run (NaN, or null in a JSON) judged, never compared:
    0 where sdekit diverged (the worst possible), inf where only diffusers did. NaN would slip through every
    ``min`` and ``>=`` of the targets."""
    bad = lambda v: v is None or not math.isfinite(v)  # noqa: E731
    if bad(ours):
        return 0.0
    return math.inf if bad(theirs) else theirs / ours


def default_targets(defaults: dict, sdk: dict, dif: dict, nfe: list[int]) -> dict:
    """Target (c): what a user gets by default from each library, compared at the same end.

    - ``c1``: ``sdekit.sample(model, x_T, steps=B)`` (its defaults: dpmpp_2m, time spacing, the step-ratio order
      rule, t_end = t_min = 1/N) against diffusers' default algorithm ending at the same t_min
      (``DPMSolverMultistepScheduler(final_sigmas_type="sigma_min")``, row "DPM++2M");
    - ``c2``: the same sdekit defaults with ``t_end=0`` (row "time>0" of dpmpp_2m) against diffusers' stock
      ``DPMSolverMultistepScheduler()`` (which ends at sigma = 0), both against the exact flow at t = 0.

    Errors at t_min and at 0 are not comparable (the last step to sigma = 0 contracts the error), so neither
    compares across ends. PASS: no seed's ratio (diffusers / sdekit) below 0.99 at any NFE (1%: the parity
    tolerance of target (a), since in c1 both run the same algorithm on nearly the same grid).
    """
    out = {}
    pairs = {"c1_default_vs_diffusers_2m_same_end_t_min": (defaults, dif[DIFFUSERS_DEFAULT["t_min"]]),
             "c2_default_t_end0_vs_diffusers_stock_default": (sdk["dpmpp_2m"]["time>0"],
                                                              dif[DIFFUSERS_DEFAULT["zero"]])}
    for key, (ours, theirs) in pairs.items():
        ratios = {str(b): [ratio(d, s) for d, s in zip(theirs[str(b)]["rmse_per_seed"], ours[str(b)]["rmse_per_seed"])]
                  for b in nfe}
        out[key] = {"status": "PASS" if all(min(r) >= NEVER_WORSE for r in ratios.values()) else "MISS",
                    "ratio_per_seed_by_nfe": ratios,
                    "sdekit_rmse": {str(b): ours[str(b)]["rmse_mean"] for b in nfe},
                    "diffusers_rmse": {str(b): theirs[str(b)]["rmse_mean"] for b in nfe}}
    return out


def summarize(per_seed: list[dict]) -> dict:
    r = [e["rmse"] for e in per_seed]
    m = [e["median_traj"] for e in per_seed]
    finite = all(math.isfinite(v) for v in r)
    return {
        "rmse_mean": statistics.fmean(r) if finite else float("nan"),
        "rmse_std": statistics.stdev(r) if finite and len(r) > 1 else (0.0 if finite else float("nan")),
        "rmse_per_seed": r,
        "median_traj_mean": statistics.fmean(m) if finite else float("nan"),
        "median_traj_per_seed": m,
        "nfe": per_seed[0].get("nfe"),
    }


def fmt(s: dict | None, extra: str = "") -> str:
    if s is None or not math.isfinite(s["rmse_mean"]):
        return "nan"
    return f"{s['rmse_mean']:.2e}±{s['rmse_std']:.0e}{extra}"


def finite_or_none(obj):
    """Strict JSON: NaN/inf (a sampler or scheduler that diverged) become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def machine_info() -> dict:
    import sdekit

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, check=False).stdout.strip() or None
    except OSError:
        commit = None
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "sdekit": getattr(sdekit, "__version__", None), "git_commit": commit,
            "num_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        info["diffusers"] = None
    return info


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--problem", choices=sorted(PROBLEMS), default="stress8d",
                   help="the problem (default stress8d); each writes its own JSON")
    p.add_argument("--defaults-sweep", action="store_true",
                   help="only target (c), at every NFE from 5 to 50 (writes *_defaults.json)")
    p.add_argument("--summary", action="store_true",
                   help="only the targets of every problem's JSON in one table (bench_samplers_summary.json)")
    p.add_argument("--quick", action="store_true", help="256 trajectories, 2 seeds, NFE 5/10/20, short order ladder")
    p.add_argument("--batch", type=int, default=None,
                   help="trajectories per seed (default 2048, moons 1024, digits 32; quick at most 256)")
    p.add_argument("--seeds", type=int, default=None, help="number of x_T seeds (default 3; quick 2)")
    p.add_argument("--nfe", type=int, nargs="+", default=None, help="NFE budgets (default 5 10 20 50)")
    p.add_argument("--order-steps", type=int, nargs="+", default=None,
                   help="step ladder for the measured orders (default 50 100 200 400 800 1600; quick 25 50 100)")
    p.add_argument("--rounding-nfe", type=int, nargs="+", default=None,
                   help="NFE ladder of the Karras rounding experiment (default 10 20 50 100 200 400 800; "
                   "quick 10 20 50)")
    p.add_argument("--check-reference", type=int, default=None, metavar="K",
                   help="re-solve K trajectories in t with probability_flow, knot to knot (default 4; quick 0)")
    p.add_argument("--opt-nfe", type=int, nargs="+", default=None,
                   help="NFE budgets with optimised grids (default 10 20; quick 10; none: --opt-nfe 0)")
    p.add_argument("--pilots", type=int, default=None,
                   help="pilot trajectories (the teachers) of the grid optimiser (default 2048; quick 64)")
    p.add_argument("--pool", type=int, default=None,
                   help="pool of x_T for stratified pilots (UniPC bh2 o3 only; default 16384; quick 0 = none)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON output (default benchmarks/results/bench_samplers.json, *_quick.json with --quick)")
    args = p.parse_args(argv)
    q = args.quick
    d = PROBLEMS[args.problem]
    args.extras = d["extras"]
    args.ref_tol = d["ref_tol"]
    args.target_ratio = d["target_ratio"]
    args.samplers = [c for c in SDEKIT_SAMPLERS if d["samplers"] is None or c[0] in d["samplers"]]
    args.spacings = tuple(d["spacings"] or ALL_SPACINGS)
    args.opt_samplers = [c for c in OPT_SAMPLERS if d["opt_samplers"] is None or c[0] in d["opt_samplers"]]
    args.batch = args.batch or (min(256, d["batch"] // 4) if q else d["batch"])
    args.seeds = args.seeds or (2 if q else 3)
    args.nfe = args.nfe or ([5, 10, 20] if q else [5, 10, 20, 50])
    args.order_steps = args.order_steps or ([25, 50, 100] if q else [50, 100, 200, 400, 800, 1600])
    args.rounding_nfe = args.rounding_nfe or ([10, 20, 50] if q else [10, 20, 50, 100, 200, 400, 800])
    args.opt_nfe = [n for n in (args.opt_nfe or ([10] if q else d["opt_nfe"])) if n > 0]
    # as many pilots as evaluation draws: the RMSE of 2048 draws is dominated by the few trajectories that
    # switch modes, which 256 pilots hardly contain (measured: grids fitted to 256 pilots lose on fresh draws)
    args.pilots = args.pilots or (min(64, d["pilots"]) if q else d["pilots"])
    if args.pool is None:
        args.pool = 0 if q else d["pool"]
    if args.check_reference is None:
        args.check_reference = 0 if q else d["check_reference"]
    if args.out is None:
        name = "bench_samplers" + ("" if args.problem == "stress8d" else f"_{args.problem}")
        name += "_quick.json" if q else ".json"
        args.out = Path(__file__).resolve().parent / "results" / name
    if args.seeds < 2:
        p.error("--seeds must be >= 2 (the spread over seeds is reported)")
    return args


SWEEP_NFE = list(range(5, 51))


def default_review(datas: dict[str, dict]) -> dict:
    """Every fixed configuration (sampler x spacing; optimised grids excluded: a default cannot have been fitted
    to the user's model) against diffusers' default DPM-Solver++(2M), each end against its own: the worst seed's
    ratio (diffusers / sdekit) over every problem and NFE measured, and the geometric mean of all ratios."""
    per: dict[tuple, list] = {}
    for name, data in datas.items():
        base = {end: data["diffusers"][label] for end, label in DIFFUSERS_DEFAULT.items()}
        for label, spacings in data["sdekit"].items():
            for sp, cells in spacings.items():
                if sp.startswith("optimised"):
                    continue
                ref = base["zero" if sp in END0 else "t_min"]
                for b, cell in cells.items():
                    ours = cell.get("rmse_per_seed")
                    if b not in ref or not ours:
                        per.setdefault((label, sp), []).append((name, int(b), [0.0]))  # not run: worst possible
                        continue
                    per.setdefault((label, sp), []).append(
                        (name, int(b), [ratio(d, o) for d, o in zip(ref[b]["rmse_per_seed"], ours)]))
    ranked = []
    for (label, sp), cells in per.items():
        worst = min(((min(r), f"{n} NFE {b}") for n, b, r in cells), key=lambda c: c[0])
        ratios = [v for _, _, r in cells for v in r]
        gmean = math.exp(statistics.fmean(math.log(min(max(v, 1e-12), 1e12)) for v in ratios))
        ranked.append({"sampler": label, "spacing": sp, "worst_ratio": worst[0], "worst_at": worst[1],
                       "gmean_ratio": gmean, "problems": sorted({n for n, _, _ in cells})})
    ranked.sort(key=lambda c: -c["gmean_ratio"])
    # gmeans compare only over the same cells: rank the configurations measured on every problem
    everywhere = [c for c in ranked if len(c["problems"]) == len(datas)]
    return {"ranked": everywhere, "partial": [c for c in ranked if len(c["problems"]) < len(datas)],
            "never_worse": [c for c in everywhere if c["worst_ratio"] >= NEVER_WORSE]}


def defaults_sweep(args, prob, xs: dict, refs: dict, timings: dict, t_start: float) -> dict:
    """Target (c) at every NFE from 5 to 50: ``sdekit.sample``'s defaults against diffusers' default
    DPM-Solver++(2M), each end against its own (c1: both end at t_min; c2: ``t_end=0`` against the stock
    ``DPMSolverMultistepScheduler()``, which ends at sigma = 0). Written to ``*_defaults.json``."""
    from sdekit import sample

    cfg = diffusers_configs(prob.diffusers_kwargs)
    rows = []
    t0 = time.perf_counter()
    for budget in SWEEP_NFE:
        row = {"nfe": budget}
        for key, kw, end in (("c1", {}, "t_min"), ("c2", {"t_end": 0.0}, "zero")):
            factory, _ = cfg[DIFFUSERS_DEFAULT[end]]
            ours, theirs = [], []
            for s in xs:
                sol = sample(prob.model, xs[s], steps=budget, **kw)
                ours.append(errors(sol.x, refs[s][end])["rmse"])
                y = run_diffusers(factory(budget), budget, xs[s], prob.eps_net)[0]
                theirs.append(errors(y, refs[s][end])["rmse"])
            row[key] = {"sdekit_rmse_per_seed": ours, "diffusers_rmse_per_seed": theirs,
                        "ratio_per_seed": [ratio(d, o) for d, o in zip(theirs, ours)]}
        rows.append(row)
    timings["sweep_s"] = time.perf_counter() - t0
    status = {}
    for key in ("c1", "c2"):
        worst = min((min(r[key]["ratio_per_seed"]), r["nfe"]) for r in rows)
        status[key] = {"status": "PASS" if worst[0] >= NEVER_WORSE else "MISS", "worst_ratio": worst[0],
                       "worst_nfe": worst[1]}
        print(f"{args.problem}: target (c) {key} at every NFE 5..50 ({len(xs)} seeds x {args.batch}): "
              f"{status[key]['status']}, worst seed ratio (diffusers / sdekit) {worst[0]:.3f} at NFE {worst[1]}")
    timings["total_s"] = time.perf_counter() - t_start
    report = {"benchmark": "bench_samplers", "problem": {"name": args.problem, **prob.describe(),
                                                         "batch": args.batch, "seeds": list(xs)},
              "defaults_sweep": {"nfe": SWEEP_NFE, "targets": status, "rows": rows}, "timings": timings,
              "machine": machine_info()}
    out = args.out.with_name(args.out.stem + "_defaults.json")
    out.write_text(json.dumps(finite_or_none(report), indent=2, allow_nan=False))
    print(f"wrote {out} (total {timings['total_s']:.0f} s)")
    return report


def summary(results: Path | None = None, out: Path | None = None) -> dict:
    """The targets of every problem's JSON (``bench_samplers*.json`` but quick runs) in one table and one JSON.

    (b): the best sdekit configuration (grids optimised on other draws included) against the best diffusers
    configuration at 10 and 20 NFE, every seed's ratio at least the problem's target (2 on the mixtures, 1.5 on
    the networks); (c): ``sdekit.sample``'s defaults against diffusers' default DPM-Solver++(2M), each end
    against its own end, no seed below 0.99 at any measured NFE."""
    results = results or Path(__file__).resolve().parent / "results"
    rows, datas = [], {}
    for path in sorted(results.glob("bench_samplers*.json")):
        if path.stem.endswith(("_quick", "_summary", "_defaults")):
            continue
        data = json.loads(path.read_text())
        name = data["problem"].get("name", "stress8d")
        want = PROBLEMS[name]["target_ratio"]
        tg = data["targets"]
        row = {"problem": name, "file": path.name, "batch": data["problem"]["batch"],
               "seeds": len(data["problem"]["seeds"]), "target_ratio": want}
        for b in (10, 20):
            t = tg.get(f"b_nfe{b}")
            if t is None:
                continue
            worst = min(t["ratio_per_seed"])
            row[f"b{b}"] = {"sdekit": t["best_sdekit"], "sdekit_rmse": t["best_sdekit_rmse"],
                            "diffusers": t["best_diffusers"], "diffusers_rmse": t["best_diffusers_rmse"],
                            "ratio_per_seed": t["ratio_per_seed"], "worst_seed_ratio": worst,
                            "status": "PASS" if worst >= want else "MISS", "shortfall": worst / want}
        for key, short in (("c1_default_vs_diffusers_2m_same_end_t_min", "c1"),
                           ("c2_default_t_end0_vs_diffusers_stock_default", "c2")):
            c = tg.get(key)
            if c is not None:
                row[short] = {"status": c["status"], "worst_seed_ratio": min(
                    min(r) for r in c["ratio_per_seed_by_nfe"].values()), "nfe": list(c["ratio_per_seed_by_nfe"])}
        g = tg.get("grid_optimiser_at_most_60s_for_10_steps")
        if g:
            row["optimiser_10_steps_s"] = g["seconds"]
        sweep = path.with_name(path.stem + "_defaults.json")
        if sweep.exists():
            sw = json.loads(sweep.read_text())
            row["c_every_nfe_5_50"] = {"file": sweep.name, "batch": sw["problem"]["batch"],
                                       **sw["defaults_sweep"]["targets"]}
        rows.append(row)
        datas[name] = data
    print(f"{'problem':10s} {'target':>6s} {'b @10 NFE: worst seed ratio':>28s} {'b @20 NFE':>16s} "
          f"{'c1 (worst)':>13s} {'c2 (worst)':>13s}")
    for r in rows:
        cells = [f"{r[k]['worst_seed_ratio']:.2f} {r[k]['status']}" if k in r else "-" for k in ("b10", "b20")]
        cs = [f"{r[k]['worst_seed_ratio']:.2f} {r[k]['status']}" if k in r else "-" for k in ("c1", "c2")]
        sw = r.get("c_every_nfe_5_50")
        sweep = (f"   NFE 5..50: c1 {sw['c1']['worst_ratio']:.2f} {sw['c1']['status']}, "
                 f"c2 {sw['c2']['worst_ratio']:.2f} {sw['c2']['status']}") if sw else ""
        print(f"{r['problem']:10s} {r['target_ratio']:>5g}x {cells[0]:>28s} {cells[1]:>16s} {cs[0]:>13s} {cs[1]:>13s}"
              + sweep)
    review = default_review(datas)
    print(f"\ndefault review: fixed configurations (no optimised grid) measured on every problem, against diffusers' "
          f"default DPM-Solver++(2M), each end against its own, on {', '.join(datas)} at every NFE measured (worst "
          "seed ratio; gmean over problems, NFE and seeds):")
    for c in review["ranked"][:8]:
        print(f"  {c['sampler']:22s} {c['spacing']:12s} worst {c['worst_ratio']:.2f} ({c['worst_at']}) "
              f"gmean {c['gmean_ratio']:.2f}")
    print(f"  never worse than diffusers' default anywhere (worst >= {NEVER_WORSE}): "
          + (", ".join(f"{c['sampler']} {c['spacing']} (gmean {c['gmean_ratio']:.2f})" for c in review["never_worse"])
             or "none"))
    report = {"benchmark": "bench_samplers", "summary_of": [r["file"] for r in rows], "problems": rows,
              "default_review": review}
    out = out or results / "bench_samplers_summary.json"
    out.write_text(json.dumps(finite_or_none(report), indent=2, allow_nan=False))
    print(f"wrote {out}")
    return report


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.summary:
        return summary()
    torch.set_num_threads(args.threads)
    from sdekit import sample
    from sdekit.bench.order import fit_order
    from sdekit.solvers import get as get_solver

    try:
        import diffusers  # noqa: F401

        have_diffusers = True
    except ImportError:
        have_diffusers = False
        print("diffusers is not installed: only sdekit's samplers are measured (targets (a), (b) not evaluated)")

    t_start = time.perf_counter()
    prob = make_problem(args.problem, args.ref_tol)
    seeds = list(range(args.seeds))
    xs = {s: prob.x_T(args.batch, s) for s in seeds}
    timings = {}

    # --- references (once per seed) -------------------------------------------------------------------------
    t0 = time.perf_counter()
    refs = {s: prob.reference(xs[s]) for s in seeds}
    timings["reference_s"] = time.perf_counter() - t0
    if args.defaults_sweep:
        return defaults_sweep(args, prob, xs, refs, timings, t_start)
    print(f"{args.problem}: reference: DOP853 rtol=atol={args.ref_tol:g} in u = log(sigma/alpha), {args.seeds} seeds "
          f"x {args.batch} trajectories: {timings['reference_s']:.1f} s")
    ref_check = None
    if args.check_reference:
        t0 = time.perf_counter()
        k = args.check_reference
        lit = prob.reference_check(xs[0][:k])
        diff = float((lit - refs[0]["t_min"][:k]).abs().max())
        ref_check = {"trajectories": k, "max_abs_diff": diff, "seconds": time.perf_counter() - t0,
                     "method": prob.reference_check_method}
        print(f"reference check ({prob.reference_check_method}) on {k} trajectories: differs by {diff:.2e} "
              "(max abs)")

    # --- sdekit ---------------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    sdk: dict[str, dict] = {}
    for label, name, opts in args.samplers:
        eps = get_solver(name, **opts).evals_per_step
        sdk[label] = {}
        for spacing in args.spacings:
            sdk[label][spacing] = {}
            end = "zero" if spacing in END0 else "t_min"
            for budget in args.nfe:
                steps = max(budget // eps, 1)
                per_seed = []
                for s in seeds:
                    try:
                        sol = sample(prob.model, xs[s], name, **grid_kwargs(prob, spacing, steps), **opts)
                        e = errors(sol.x, refs[s][end])
                        e["nfe"] = int(sol.stats["nfe"])
                    except (FloatingPointError, ValueError, ZeroDivisionError) as exc:
                        e = {"rmse": float("nan"), "median_traj": float("nan"), "nfe": None, "error": repr(exc)}
                    per_seed.append(e)
                summ = summarize(per_seed)
                summ["steps"] = steps
                sdk[label][spacing][str(budget)] = summ
        print(f"  sdekit {label}: done ({time.perf_counter() - t0:.0f} s)", flush=True)
    # what a user gets: sdekit.sample's defaults (solver, spacing, order rule, t_end = t_min)
    defaults = {}
    for budget in args.nfe:
        per_seed = []
        for s in seeds:
            sol = sample(prob.model, xs[s], steps=budget)
            e = errors(sol.x, refs[s]["t_min"])
            e["nfe"] = int(sol.stats["nfe"])
            per_seed.append(e)
        defaults[str(budget)] = summarize(per_seed)
    timings["sdekit_s"] = time.perf_counter() - t0

    # optimised grids: selected on PILOT_SEED's draws, reported on the evaluation seeds' (fresh) draws
    t0 = time.perf_counter()
    optimised = {}
    from sdekit import optimize_grid

    def optimise(name, steps, opts, pool=None):
        """One optimised grid (selected on the pilots) and its errors on the evaluation seeds."""
        t1 = time.perf_counter()
        res = optimize_grid(prob.model64, name, steps, method="dp", n_pilot=args.pilots,
                            n_fresh=64, seed=PILOT_SEED, reference_rtol=args.ref_tol,
                            t_end=prob.t_end, reference="log_snr", pool=pool, **opts)
        seconds = time.perf_counter() - t1
        per_seed = []
        for s in seeds:
            sol = sample(prob.model, xs[s], name, grid=res.grid.to(prob.dtype), **opts)
            e = errors(sol.x, refs[s]["t_min"])
            e["nfe"] = int(sol.stats["nfe"])
            per_seed.append(e)
        summ = summarize(per_seed)
        summ.update({"steps": steps, "optimiser_s": seconds, "chosen": res.chosen, "rmse_pilot": res.rmse_pilot,
                     "rmse_pilot_baseline": res.rmse_pilot_baseline, "baseline": res.baseline, "t": res.t.tolist()})
        if pool is not None:
            summ["pool"] = pool
        return summ

    for label, name, opts in args.opt_samplers:
        eps = get_solver(name, **opts).evals_per_step
        for budget in args.opt_nfe:
            steps = max(budget // eps, 1)
            summ = optimise(name, steps, opts)
            sdk[label].setdefault("optimised", {})[str(budget)] = summ
            optimised.setdefault(label, {})[str(budget)] = {"optimiser_s": summ["optimiser_s"], "steps": steps,
                                                           "chosen": summ["chosen"]}
            if label == POOL_SAMPLER and args.pool:  # stratified pilots from a larger pool (optimize_grid(pool=))
                summ = optimise(name, steps, opts, pool=args.pool)
                sdk[label].setdefault("optimised+pool", {})[str(budget)] = summ
                optimised[label][f"{budget} pool"] = {"optimiser_s": summ["optimiser_s"], "steps": steps,
                                                     "pool": args.pool, "chosen": summ["chosen"]}
        print(f"  sdekit {label}, optimised grids: done ({time.perf_counter() - t0:.0f} s)", flush=True)
    timings["optimise_s"] = time.perf_counter() - t0

    best_sdk = {}
    for label in sdk:
        best_sdk[label] = {}
        for budget in args.nfe:
            cands = [(sdk[label][sp][str(budget)], sp) for sp in sdk[label] if str(budget) in sdk[label][sp]]
            cands = [c for c in cands if math.isfinite(c[0]["rmse_mean"])]
            if cands:
                summ, sp = min(cands, key=lambda c: c[0]["rmse_mean"])
                best_sdk[label][str(budget)] = {**summ, "spacing": sp}

    # --- diffusers ------------------------------------------------------------------------------------------
    dif: dict[str, dict] = {}
    parity: list[dict] = []
    if have_diffusers:
        t0 = time.perf_counter()
        for label, (factory, end) in diffusers_configs(prob.diffusers_kwargs).items():
            dif[label] = {"end": end}
            for budget in args.nfe:
                per_seed = []
                for s in seeds:
                    y, nfe, ts = run_diffusers(factory(budget), budget, xs[s], prob.eps_net)
                    e = errors(y, refs[s][end])
                    e["nfe"] = nfe
                    per_seed.append(e)
                summ = summarize(per_seed)
                summ["timesteps"] = ts
                summ["distinct_timesteps"] = len(set(ts))
                dif[label][str(budget)] = summ
        timings["diffusers_s"] = time.perf_counter() - t0

    if have_diffusers and args.extras:
        # (a) identical algorithm and grid
        t0 = time.perf_counter()
        for budget in args.nfe:
            for label, factory, name, opts in parity_pairs(budget):
                rows = []
                for s in seeds:
                    y, nfe, ts = run_diffusers(factory(), budget, xs[s], prob.eps_net)
                    sol = sample(prob.model, xs[s], name, grid=ts + [0], **opts)
                    ed, es = errors(y, refs[s]["t_min"]), errors(sol.x, refs[s]["t_min"])
                    rows.append({"seed": s, "rmse_diffusers": ed["rmse"], "rmse_sdekit": es["rmse"],
                                 "ratio": es["rmse"] / ed["rmse"], "nfe_diffusers": nfe,
                                 "nfe_sdekit": int(sol.stats["nfe"]),
                                 "max_abs_state_diff": float((y - sol.x).abs().max())})
                parity.append({"pair": label, "nfe": budget, "seeds": rows,
                               "max_rel_rmse_diff": max(abs(r["ratio"] - 1) for r in rows)})
        timings["parity_s"] = time.perf_counter() - t0

    # --- diffusers' Karras timesteps rounding ------------------------------------------------------------------
    rounding = []
    if have_diffusers and args.extras:
        from diffusers import DPMSolverMultistepScheduler

        t0 = time.perf_counter()
        for n in args.rounding_nfe:
            sched = DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True,
                                                final_sigmas_type="sigma_min", lower_order_final=False)
            y, nfe, ts = run_diffusers(sched, n, xs[0], prob.eps_net)
            # The same n Karras sigmas (sigma_max = sigma(999) ... sigma_min = sigma(0)), then diffusers' last,
            # zero-length step (the final sigma repeats sigma_min): sdekit's karras spacing with n - 1 steps.
            sol = sample(prob.model, xs[0], "dpmpp_2m", steps=n - 1, spacing="karras", t_end=prob.t_end,
                         lower_order_final=False, max_step_ratio=None)
            g = sol.stats["grid"]
            sb = prob.process.sigma(g) / prob.process.alpha(g)
            rel = float(((sched.sigmas[:-1].double() - sb) / sb).abs().max())
            rounding.append({"nfe_diffusers": nfe, "nfe_sdekit": int(sol.stats["nfe"]),
                             "distinct_timesteps": len(set(ts)), "max_rel_sigma_diff": rel,
                             "rmse_diffusers": errors(y, refs[0]["t_min"])["rmse"],
                             "rmse_sdekit": errors(sol.x, refs[0]["t_min"])["rmse"]})
        timings["rounding_s"] = time.perf_counter() - t0

    # --- measured orders (log_snr grids, seed 0) --------------------------------------------------------------
    t0 = time.perf_counter()
    orders = {}
    for label, name, opts in (ORDER_SAMPLERS if args.extras else []):
        errs = []
        for steps in args.order_steps:
            errs.append(errors(sample(prob.model, xs[0], name, steps=steps, spacing="log_snr", t_end=prob.t_end,
                                      **opts).x, refs[0]["t_min"])["rmse"])
        dts = [1 / n for n in args.order_steps]
        slope, ci = fit_order(dts[-3:], errs[-3:]) if len(dts) >= 3 else fit_order(dts, errs)
        local = [math.log(errs[i] / errs[i + 1]) / math.log(args.order_steps[i + 1] / args.order_steps[i])
                 for i in range(len(errs) - 1)]
        orders[label] = {"steps": args.order_steps, "rmse_mean": errs, "order_fit_last3": slope, "ci95": ci,
                         "local_slopes": local, "declared": get_solver(name, **opts).order}
    timings["orders_s"] = time.perf_counter() - t0

    # --- targets ----------------------------------------------------------------------------------------------
    targets = {}
    if parity:
        worst = max(p["max_rel_rmse_diff"] for p in parity)
        targets["a_same_rmse_within_1pct"] = {"status": "PASS" if worst <= 0.01 else "MISS",
                                              "worst_relative_rmse_difference": worst}
    if have_diffusers:
        for budget in args.nfe:
            b = str(budget)
            sk = min(((lab, best_sdk[lab][b]) for lab in best_sdk if b in best_sdk[lab]),
                     key=lambda c: c[1]["rmse_mean"])
            dv = [(lab, dif[lab][b]) for lab in dif if math.isfinite(dif[lab][b]["rmse_mean"])]
            dk = min(dv, key=lambda c: c[1]["rmse_mean"])
            ratios = [d / s for d, s in zip(dk[1]["rmse_per_seed"], sk[1]["rmse_per_seed"])]
            margin = dk[1]["rmse_mean"] - sk[1]["rmse_mean"]
            spread = dk[1]["rmse_std"] + sk[1]["rmse_std"]
            beats = margin > spread and min(ratios) > 1
            # informational: the same comparison on the median per-trajectory error (each side's best)
            sk_med = min(((f"{lab} ({sp})", sdk[lab][sp][b]) for lab in sdk for sp in sdk[lab]
                          if b in sdk[lab][sp] and math.isfinite(sdk[lab][sp][b]["median_traj_mean"])),
                         key=lambda c: c[1]["median_traj_mean"])
            dk_med = min(((lab, dif[lab][b]) for lab in dif if math.isfinite(dif[lab][b]["median_traj_mean"])),
                         key=lambda c: c[1]["median_traj_mean"])
            targets[f"b_nfe{budget}"] = {
                "is_target": budget in (10, 20),
                "best_sdekit": f"{sk[0]} ({sk[1]['spacing']})", "best_sdekit_rmse": sk[1]["rmse_mean"],
                "best_sdekit_std": sk[1]["rmse_std"], "best_diffusers": dk[0],
                "best_diffusers_rmse": dk[1]["rmse_mean"], "best_diffusers_std": dk[1]["rmse_std"],
                "ratio_per_seed": ratios,
                "ratio_mean": statistics.fmean(ratios), "ratio_std": statistics.stdev(ratios),
                "beats_by_more_than_spread": "PASS" if beats else "MISS",
                "two_x_lower_every_seed": "PASS" if min(ratios) >= 2 else "MISS",
                "target_ratio": args.target_ratio,
                "target_ratio_every_seed": "PASS" if min(ratios) >= args.target_ratio else "MISS",
                "shortfall_worst_seed": min(ratios) / args.target_ratio,
                "median_traj": {"best_sdekit": sk_med[0], "sdekit": sk_med[1]["median_traj_mean"],
                                "best_diffusers": dk_med[0], "diffusers": dk_med[1]["median_traj_mean"],
                                "ratio": dk_med[1]["median_traj_mean"] / sk_med[1]["median_traj_mean"]},
            }

        targets.update(default_targets(defaults, sdk, dif, args.nfe))
    if optimised:  # the optimiser's budget: at most 60 s on one CPU thread for a 10-step grid on this 8-D mixture
        ten = [(lab, v["10"]["optimiser_s"]) for lab, v in optimised.items() if "10" in v and v["10"]["steps"] == 10]
        if ten:
            worst = max(ten, key=lambda c: c[1])
            # the 60 s is for the 8-D mixture (stress8d); elsewhere the time is reported, not judged
            status = ("PASS" if worst[1] <= 60 else "MISS") if args.problem == "stress8d" else "not a target here"
            targets["grid_optimiser_at_most_60s_for_10_steps"] = {
                "status": status, "slowest": worst[0], "seconds": worst[1], "threads": args.threads,
                "pilots": args.pilots}

    # --- print --------------------------------------------------------------------------------------------------
    print(f"\nRMSE vs the exact PF-ODE flow (sqrt of the mean over trajectories and coordinates), mean±std over "
          f"{args.seeds} seeds x {args.batch} trajectories; sdekit: best spacing per NFE "
          "[t=time l=log_snr k=karras q=quadratic; t>0 time-uniform to t = 0, X+0 the X grid to 1/N then a step to 0];"
          " end t = 1/N unless marked")
    abbrev = {"time": "t", "log_snr": "l", "karras": "k", "quadratic": "q", "time>0": "t>0", "time+0": "t+0",
              "log_snr+0": "l+0", "karras+0": "k+0", "quadratic+0": "q+0", "optimised": "opt",
              "optimised+pool": "opt+pool"}
    head = f"{'sampler':{LABEL_W}s}" + "".join(f"{'NFE ' + str(b):>22s}" for b in args.nfe)
    print(head)
    for label in best_sdk:
        row = f"{'sdekit ' + label:{LABEL_W}s}"
        for b in args.nfe:
            s = best_sdk[label].get(str(b))
            cell = fmt(s, f" {abbrev[s['spacing']]}{s['nfe']}") if s else "nan"
            row += f"{cell:>22s}"
        print(row)
    for label in dif:
        row = f"{'diffusers ' + label:{LABEL_W}s}"
        for b in args.nfe:
            s = dif[label][str(b)]
            row += f"{fmt(s, ' ' + str(s['distinct_timesteps'])):>22s}"
        print(row)
    print("(sdekit cells end with spacing and actual NFE; diffusers cells with the number of distinct timesteps)")
    if parity:
        print("\n(a) identical algorithm and grid (sdekit on the scheduler's grid):")
        for p in parity:
            print(f"  NFE {p['nfe']:3d} {p['pair']:34s} max |rmse_sdekit/rmse_diffusers - 1| = "
                  f"{p['max_rel_rmse_diff']:.1e}")
    if rounding:
        print("\ndiffusers DPM++2M use_karras_sigmas (model at rounded timesteps) vs sdekit dpmpp_2m on the same "
              "Karras sigmas (seed 0; lower_order_final off in both):")
        for r in rounding:
            print(f"  NFE {r['nfe_diffusers']:4d}: diffusers {r['rmse_diffusers']:.2e} "
                  f"({r['distinct_timesteps']} distinct timesteps)   sdekit {r['rmse_sdekit']:.2e} "
                  f"(NFE {r['nfe_sdekit']})   sigmas agree to {r['max_rel_sigma_diff']:.0e}")
    if orders:
        print("\nmeasured global order (log_snr grids, seed 0; fit of log RMSE vs log(1/steps)):")
    for label, o in orders.items():
        rm = " ".join(f"{e:.2e}" for e in o["rmse_mean"])
        sl = " ".join(f"{v:.2f}" for v in o["local_slopes"])
        print(f"  {label:22s} steps {o['steps']} rmse [{rm}] local slopes [{sl}] fit(last 3) "
              f"{o['order_fit_last3']:.2f} (declared {o['declared']})")
    if targets:
        a = targets.get("a_same_rmse_within_1pct")
        if a:
            print(f"\ntarget (a) same RMSE as diffusers within 1%: {a['status']} "
                  f"(worst relative difference {a['worst_relative_rmse_difference']:.1e})")
        for key in ("c1_default_vs_diffusers_2m_same_end_t_min", "c2_default_t_end0_vs_diffusers_stock_default"):
            c = targets[key]
            print(f"target (c) {key}: {c['status']}; ratio per seed (diffusers / sdekit) by NFE: " + ", ".join(
                f"{b}: [{' '.join(f'{r:.2f}' for r in rs)}]" for b, rs in c["ratio_per_seed_by_nfe"].items()))
        g = targets.get("grid_optimiser_at_most_60s_for_10_steps")
        if g:
            print(f"grid optimiser, 10 steps, {g['pilots']} pilots, {g['threads']} thread(s): slowest {g['slowest']} "
                  f"{g['seconds']:.1f} s (at most 60 s on stress8d: {g['status']})")
        for k, v in targets.items():
            if not k.startswith("b_"):
                continue
            tag = "target (b)" if v["is_target"] else "(b) info  "
            rs = " ".join(f"{r:.2f}" for r in v["ratio_per_seed"])
            med = v["median_traj"]
            print(f"{tag} NFE {k[5:]:>3s}: best sdekit {v['best_sdekit']} {v['best_sdekit_rmse']:.2e}±"
                  f"{v['best_sdekit_std']:.0e} vs best diffusers {v['best_diffusers']} {v['best_diffusers_rmse']:.2e}±"
                  f"{v['best_diffusers_std']:.0e}: ratio per seed [{rs}]; beats by more than the spread: "
                  f"{v['beats_by_more_than_spread']}; {v['target_ratio']:g}x lower: {v['target_ratio_every_seed']}; "
                  f"median per-trajectory error {med['sdekit']:.1e} ({med['best_sdekit']}) vs {med['diffusers']:.1e} "
                  f"({med['best_diffusers']}), ratio {med['ratio']:.1f}")

    timings["total_s"] = time.perf_counter() - t_start
    report = {
        "benchmark": "bench_samplers",
        "problem": {
            "name": args.problem, **prob.describe(), "dtype": str(prob.dtype).removeprefix("torch."),
            "t_start": 1.0, "t_end": prob.t_end, "batch": args.batch, "seeds": seeds,
            "error_metric": "RMSE = sqrt(mean over trajectories and coordinates of squared difference) vs the exact "
                            "PF-ODE flow from the same x_T; median_traj = median over trajectories of "
                            "sqrt(mean over coordinates)",
            "reference": f"reference_solve (DOP853, rtol=atol={args.ref_tol:g}) of d xbar/du = (sigma/alpha) eps, "
                         "u = log(sigma/alpha), then d xbar/d sigmabar = eps down to sigma = 0",
            "reference_check": ref_check,
        },
        "machine": machine_info(),
        "timings": timings,
        "sdekit": sdk,
        "sdekit_best_spacing": best_sdk,
        "sdekit_default": defaults,
        "optimised_grids": {"pilot_seed": PILOT_SEED, "pilots": args.pilots, "method": "dp (101 candidates) + "
                            "Nelder-Mead polish (100 evaluations), reference in log(sigma/alpha)",
                            "per_sampler": optimised},
        "diffusers": dif,
        "parity": parity,
        "karras_rounding": rounding,
        "orders": orders,
        "targets": targets,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(finite_or_none(report), indent=2, allow_nan=False))
    print(f"\nwrote {args.out} (total {timings['total_s']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
