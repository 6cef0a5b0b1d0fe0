"""``sample``: run any registered sampler or generic solver on a diffusion model; classifier-free guidance.

``sample(model, x_T, solver=..., steps=N)`` builds the time grid, the probability-flow ODE (deterministic
solvers) or the reverse SDE (stochastic ones) and runs the one solve loop. The network is evaluated at the
exact continuous times the algorithm asks for (fractional discrete indices where its time convention is an
index), never at rounded timesteps.
"""

from __future__ import annotations

import os

import torch

from .brownian import BrownianPath, IndexedNoise, check_sample_offset, seed_from
from .models import ScoreModel
from .reverse import probability_flow, reverse_sde
from .schedules import time_grid
from .solve import MAX_STEPS, PIController, Solution, solve
from .solvers import DiffusionSampler, Solver
from .solvers import get as get_solver

_CONTROLLER_KEYS = ("rtol", "atol", "max_steps", "dt0", "dt_min", "dt_max", "pcoeff", "icoeff", "safety", "norm")


def _grid_to_t(model, grid) -> torch.Tensor:
    g = torch.as_tensor(grid, dtype=torch.float64).detach().cpu().reshape(-1)
    if g.numel() < 2:
        raise ValueError(f"grid must hold at least 2 times, got {g.numel()}")
    p = model.process
    if model.time_input == "index":
        g = p.t_from_index(g)
    elif model.time_input == "log_snr":
        g = p.t_from_log_snr(g)
    elif model.time_input not in ("t",):
        raise ValueError(f"custom grids are taken in the model's time convention; {model.time_input!r} grids "
                         "are not supported: give times t (continuous) instead")
    if not bool((g[1:] < g[:-1]).all()):
        raise ValueError("grid must be strictly monotone toward the data end (decreasing t)")
    if float(g[0]) > p.t_max + 1e-12 or float(g[-1]) < p.t_domain_min - 1e-12:
        raise ValueError(f"grid runs outside the time domain [{p.t_domain_min:g}, {p.t_max:g}]")
    return g


def sample(model: ScoreModel, x_T: torch.Tensor, solver: str | Solver = "dpmpp_2m", steps: int = 10,
           spacing: str = "time", grid: torch.Tensor | None = None,
           generator: torch.Generator | None = None, *, t_start: float | None = None, t_end: float | None = None,
           denoise: bool = False, return_trajectory: bool = False, brownian=None, rho: float = 7.0,
           progress: bool = False, fused: bool | str = False, sample_offset: int | None = None,
           **options) -> Solution:
    """Sample from ``model`` starting at ``x_T`` (drawn from ``model.process.prior_sample``).

    The defaults (DPM-Solver++(2M) on the time-uniform grid with the step-ratio order rule, ending at the
    process's ``t_min``) are the one fixed configuration that `benchmarks/bench_samplers.py` measured never
    worse than diffusers' default DPM-Solver++(2M) on every problem it runs: three Gaussian mixtures and the
    shipped networks (0.99× or better in every cell of its main runs). UniPC on a quadratic grid is better on
    average (3.4× lower RMSE, geometric mean) but 1.5× worse on one problem and NFE, and every other
    configuration loses somewhere too; `docs/samplers.md` has the review. Known: at 50-60 steps on the default
    grid the last step keeps second order and the error is up to 1.9x that of a lower step-ratio bound
    (``max_step_ratio=3.2``); see `benchmarks/step_ratio_bound.py`.

    Args:
        model: a [`ScoreModel`][sdekit.models.ScoreModel] (or anything with ``.process`` and ``.predict``).
        solver: a registry name (``"ddim"``, ``"dpmpp_2m"``, ``"unipc"``, ``"rk4"``, ``"sra1"``, ...) or a
            Solver instance. Sampler options (``eta``, ``order``, ``variant``, ``S_churn``...) go in
            ``options``. For solvers with an embedded error estimate, controller options (``rtol``, ``atol``,
            ``max_steps``, ``dt0``, ``safety``, ``norm``...) select a [`PIController`][sdekit.controllers.PIController];
            a solver that declares ``default_controller`` (the adaptive DPM-Solver) always runs adaptively,
            from those defaults.
        steps: number of steps (each costs the solver's ``evals_per_step`` model evaluations).
        spacing: ``"time"``, ``"log_snr"``, ``"quadratic"`` or ``"karras"`` (``rho``); ``grid`` (a 1-D tensor
            of times in the model's time convention, ``"t"`` or ``"index"``) overrides it.
        t_start: first time of the grid (default the process's ``t_max``).
        t_end: last time of the grid (default the process's ``t_min``).
        denoise: return the model's x0 prediction at ``t_end`` (one more evaluation).
        generator: randomness for stochastic samplers (a fresh OS-seeded one when None; the global RNG is
            never used).
        fused: for diffusion samplers, compute each step's final linear combination with the fused kernel
            ``sdekit.kernels.combine`` (``True``: Triton; ``"auto"``: Triton on CUDA tensors; ``False``: PyTorch).
            With fresh noise (no ``brownian``) the fused kernel draws each step's Gaussian in registers from a
            Philox key (a different stream from the unfused path's); with a Brownian path it reads the path's
            increments, so fused and unfused results agree to rounding.
        sample_offset: the global index of ``x_T``'s first sample, for a batch that is one shard of a larger one
            (`sdekit.distributed`). The sampler's noise is then drawn per sample from (a seed drawn once from
            ``generator``, the global index): [`IndexedNoise`][sdekit.brownian.IndexedNoise], or a
            [`BrownianPath`][sdekit.brownian.BrownianPath] with ``sample_offset`` for solvers that need the Lévy
            area. Sampling rows ``[a, b)`` with ``sample_offset=a`` then gives rows ``a..b`` of one call over
            ``[0, n)`` with ``sample_offset=0``, bit for bit (same device and dtype, a generator in the same state,
            a model whose output for a sample does not depend on the rest of the batch), whatever the split. Draw
            ``x_T`` the same way: ``model.process.prior_sample((b - a, *shape), generator=g, sample_offset=a)``.
            Requires ``generator``. Fixed grids only give this guarantee: an adaptive solve picks its steps from
            the whole batch's error. None (the default): the noise is drawn for the whole batch from
            ``generator``, as before (results for a given generator are unchanged).
        options: sampler options (``eta``, ``order``...), controller options (above), and ``cond``: a dict of
            keyword arguments passed to every model call (e.g. ``cond={"y": labels}`` for class labels).

    Gradients are not disabled: a network whose parameters require gradients gives a result with a graph
    (differentiable sampling); wrap the call in ``torch.no_grad()`` when none is needed.

    Returns the [`Solution`][sdekit.solve.Solution]; ``stats["nfe"]`` counts the model evaluations exactly.
    """
    process = getattr(model, "process", None)
    if process is None or not hasattr(model, "predict"):
        raise TypeError(f"model must be a ScoreModel (with .process and .predict), got {type(model).__name__}")
    if not isinstance(x_T, torch.Tensor):
        raise TypeError(f"x_T must be a torch.Tensor, got {type(x_T).__name__}")
    if not bool(torch.isfinite(x_T).all()):
        raise ValueError("x_T contains NaN/Inf")
    if grid is None and (isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS):
        raise ValueError(f"steps must be an int in [1, {MAX_STEPS}], got {steps!r}")
    ctrl_opts = {k: options.pop(k) for k in list(options) if k in _CONTROLLER_KEYS}
    cond = options.pop("cond", {})
    if isinstance(solver, Solver):
        if options:
            raise TypeError(f"options {sorted(options)} given with a solver instance")
        s = solver
    else:
        s = get_solver(solver, **options)
    if fused is not False:
        if not isinstance(s, DiffusionSampler):
            raise ValueError(f"fused steps apply to diffusion samplers, not {s.name!r}")
        s = s.with_fused(fused)
    sample_offset = check_sample_offset(sample_offset)
    if sample_offset is not None and generator is None:
        raise ValueError("sample_offset needs a generator, seeded the same in every process (each process would "
                         "otherwise draw its own noise)")
    if sample_offset is not None and brownian is not None and getattr(brownian, "sample_offset", None) != sample_offset:
        raise ValueError(f"sample_offset={sample_offset} was given with a Brownian path whose sample_offset is "
                         f"{getattr(brownian, 'sample_offset', None)}: create the path with the same sample_offset")
    if generator is None:
        generator = torch.Generator(device=x_T.device).manual_seed(int.from_bytes(os.urandom(7), "little"))
    if grid is not None:
        ts = _grid_to_t(model, grid)
    else:
        ts = time_grid(process, steps, spacing, t_start=t_start, t_end=t_end, rho=rho)
    n0 = getattr(model, "nfe", None)
    stochastic = bool(s.noise_types)
    problem = reverse_sde(process, model, **cond) if stochastic else probability_flow(process, model, **cond)
    if s.adaptive and (ctrl_opts or s.default_controller is not None):
        controller = PIController(**{**(s.default_controller or {}), **ctrl_opts})
        sol = solve(problem, x_T, s, t0=float(ts[0]), t1=float(ts[-1]), controller=controller, progress=progress)
    else:
        if ctrl_opts:
            raise TypeError(f"options {sorted(ctrl_opts)} apply only to adaptive solvers, not {s.name!r}")
        if stochastic and brownian is None and (s.needs_levy_area or sample_offset is not None):
            seed = seed_from(generator)
            shape = problem.brownian_shape(tuple(x_T.shape))
            if s.needs_levy_area:
                brownian = BrownianPath(float(ts[-1]), float(ts[0]), shape, seed=seed, dtype=x_T.dtype,
                                        device=x_T.device, levy_area=True, grid=ts, sample_offset=sample_offset)
            else:
                brownian = IndexedNoise(shape, seed=seed, sample_offset=sample_offset, dtype=x_T.dtype,
                                        device=x_T.device)
        sol = solve(problem, x_T, s, ts=ts, save_at="steps" if return_trajectory else None,
                    brownian=brownian, generator=None if (brownian is not None or not stochastic) else generator,
                    progress=progress)
    if denoise:
        sol.x = model.predict(sol.x, ts[-1], "x0", **cond)
        sol.stats["nfe"] += 1
    if n0 is not None:
        sol.stats["nfe_counted"] = model.nfe - n0
    sol.stats["grid"] = ts
    return sol


class ClassifierFreeGuidance:
    """Classifier-free guidance (Ho & Salimans 2022) as a model wrapper usable with every sampler:
    ``eps = eps_uncond + scale (eps_cond - eps_uncond)``, with the conditional and unconditional inputs in ONE
    batched network call (1 NFE, as in the papers). Guidance is applied to the noise prediction; every other
    parameterization follows by the exact conversions.

    Args:
        model: a conditional `ScoreModel` whose network takes ``cond_key`` (e.g. ``y``).
        scale: guidance scale ``w`` (1 is the conditional model, 0 the unconditional one).
        null: the unconditional value of ``cond_key`` (e.g. the null class index).
    """

    def __init__(self, model: ScoreModel, scale: float, *, cond_key: str = "y", null: object = None):
        self.model, self.scale, self.cond_key, self.null = model, float(scale), cond_key, null
        self.process = model.process
        self.time_input = model.time_input
        self.sample_shape = getattr(model, "sample_shape", None)

    @property
    def nfe(self):
        """Network evaluations so far (one per guided prediction: both halves go in one batch)."""
        return self.model.nfe

    def predict(self, x, t, kind="x0", **cond):
        """The guided prediction of ``kind`` (``"eps"``, ``"x0"``, ``"v"``, ``"score"``) at ``(x, t)``;
        ``cond`` must hold ``cond_key``."""
        if self.cond_key not in cond:
            raise ValueError(f"guidance needs the condition {self.cond_key!r}")
        c = cond[self.cond_key]
        c = torch.as_tensor(c, device=x.device)
        c = c.expand(x.shape[0]) if c.ndim == 0 else c
        null = torch.full_like(c, self.null) if not isinstance(self.null, torch.Tensor) else self.null.expand_as(c)
        xx = torch.cat([x, x])
        tt = t if not (isinstance(t, torch.Tensor) and t.ndim == 1) else torch.cat([t, t])
        rest = {k: v for k, v in cond.items() if k != self.cond_key}
        eps = self.model.predict(xx, tt, "eps", **{self.cond_key: torch.cat([c, null])}, **rest)
        e_c, e_u = eps.chunk(2)
        guided = e_u + self.scale * (e_c - e_u)
        if kind == "eps":
            return guided
        from ._utils import as_time
        from .models import convert

        tq = as_time(t, like=x)
        return convert(guided, "eps", kind, x, self.process.alpha(tq), self.process.sigma(tq))

    def eps(self, x, t, **cond):
        """The guided noise prediction."""
        return self.predict(x, t, "eps", **cond)

    def x0(self, x, t, **cond):
        """The guided data prediction."""
        return self.predict(x, t, "x0", **cond)

    def score(self, x, t, **cond):
        """The guided score."""
        return self.predict(x, t, "score", **cond)
