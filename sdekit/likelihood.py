"""Log-likelihoods of diffusion models through the probability-flow ODE: exact divergence, Hutchinson, bits/dim.

The probability-flow ODE ``dx/dt = f̃(x, t) = f(t) x - ½ g(t)² score(x, t)`` (Song et al. 2021, eq. 13)
moves samples of ``p_t`` to samples of ``p_{t'}`` deterministically, so the instantaneous change of
variables (Chen et al. 2018, "Neural ODEs", theorem 1; used by FFJORD, Grathwohl et al. 2019) gives
``d/dt log p_t(x_t) = -div f̃(x_t, t)`` along a trajectory, hence

    log p_{t_start}(x) = log p_T(x_T) + ∫_{t_start}^{T} div f̃(x_t, t) dt,        x_{t_start} = x,

with ``T = process.t_max`` and ``log p_T`` approximated by the prior (Song et al. 2021, appendix D.2).
`log_likelihood` integrates the augmented state ``(x, ℓ)``, ``dℓ/dt = div f̃``, ``ℓ(t_start) = 0``,
with [`sdekit.solve`][]. Because ``f(t) x`` is linear, ``div f̃ = D f(t) - ½ g(t)² tr(∂score/∂x)``: only
the score's Jacobian is differentiated.

- ``divergence="exact"``: the full trace, from ``D`` vector–Jacobian products with the basis vectors
  (``torch.func.vjp`` once, its pullback ``vmap``-ed over chunks of basis vectors), or a loop of
  ``torch.autograd.grad`` where ``torch.func`` cannot trace the model.
- ``divergence="hutchinson"``: ``εᵀ (∂f̃/∂x) ε`` with ``E[ε εᵀ] = I`` (Hutchinson 1990; Skilling 1989),
  one vector–Jacobian product per probe. The probes are drawn once and kept for the whole solve, and
  each probe carries its own integral, so the spread of the ``n_probes`` integrals gives the standard error.

`bits_per_dim` applies it to images with uniform dequantization (Theis et al. 2016; the DDPM and
score_sde convention); the offset is derived in its docstring and in ``docs/likelihood.md``.

`ddpm_bound` (also ``bits_per_dim(..., decoder="ddpm")``) is the other route, for discrete DDPM schedules: the
discrete-time variational bound ``L_T + Σ_{t=2}^{N} L_{t-1} + L_0`` of Ho et al. 2020 (eq. 5), with its
discretized Gaussian decoder `discretized_gaussian_log_likelihood` (§3.3), in bits per dimension of the
quantized data, as the DDPM paper reports it.

The model must treat the samples of a batch independently (no batch statistics): the trace uses
per-sample Jacobians computed together for the whole batch.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ._utils import bcast, check_choice
from .brownian import check_sample_offset, indexed_draw, seed_from
from .models import ScoreModel
from .processes import VP, DiffusionProcess, SubVP
from .schedules import SPACINGS, time_grid
from .sde import ODE
from .solve import PIController, solve
from .solvers import Solver
from .solvers import get as get_solver

DIVERGENCES = ("exact", "hutchinson")
PROBES = ("gaussian", "rademacher")
BACKENDS = ("auto", "func", "autograd")
DECODERS = ("dequantize", "ddpm")
DDPM_VARIANCES = ("beta", "posterior")
DECODER_VARIANCES = ("ddpm", "beta")

# The memory estimate of one vector in a vmap-ed chunk of vector–Jacobian products, in copies of the batch
# state: the basis vector or probe, its product with the Jacobian, the gathered diagonal, and the batched
# intermediates of the model's backward pass. A guess that holds for small models; for a large network
# pass chunk_size explicitly.
_COPIES_PER_VECTOR = 8


@dataclass
class LikelihoodResult:
    """Result of `log_likelihood` (per-sample tensors of shape ``(B,)`` in the compute dtype).

    Attributes:
        log_prob: ``log p_{t_start}(x)`` in nats: ``prior_log_prob + delta`` (for Hutchinson, the mean over
            probes).
        prior_log_prob: ``log p_T(x_T)`` under the prior.
        delta: ``∫_{t_start}^{T} div f̃ dt`` (for Hutchinson, the mean over probes).
        latent: ``x_T``, the end point of the probability-flow trajectory (the input's shape).
        stats: ``nfe`` (drift evaluations of the augmented ODE), ``model_evals``, ``n_steps``,
            ``n_accepted``, ``n_rejected``, ``wall_time`` (seconds), ``solver``, ``divergence``,
            ``backend``, ``vjps_per_eval``, ``chunk_size``, ``t_start``, ``t_end`` and, where a generator was
            created, its ``seed``.
        stderr: Hutchinson only: the standard error of ``log_prob`` over the probes
            (``std(ddof=1)/sqrt(n_probes)``; NaN for one probe); None for the exact divergence.
        delta_per_probe: Hutchinson only: ``(n_probes, B)``, the integral of each probe.
    """

    log_prob: torch.Tensor
    prior_log_prob: torch.Tensor
    delta: torch.Tensor
    latent: torch.Tensor
    stats: dict = field(default_factory=dict)
    stderr: torch.Tensor | None = None
    delta_per_probe: torch.Tensor | None = None


@dataclass
class BitsPerDimResult:
    """Result of `bits_per_dim`.

    Attributes:
        bpd: per-image bits per dimension, ``(B,)``, averaged over the dequantization draws.
        mean: the mean of ``bpd`` over the batch.
        stderr: its standard error over the batch (``std(ddof=1)/sqrt(B)``; NaN for one image).
        bpd_per_draw: ``(n_dequant, B)``, one value per dequantization draw.
        likelihood: the `LikelihoodResult` of the dequantized, rescaled batch of
            ``n_dequant · B`` samples (draw-major: sample ``j · B + b`` is draw ``j`` of image ``b``).
    """

    bpd: torch.Tensor
    mean: float
    stderr: float
    bpd_per_draw: torch.Tensor
    likelihood: LikelihoodResult


@dataclass
class DDPMBoundResult:
    """Result of `ddpm_bound`: the DDPM variational bound on the discrete code length, in bits per dimension.

    Every per-image tensor has shape ``(B,)`` and the compute dtype; ``bpd = prior_bpd + diffusion_bpd +
    decoder_bpd`` (each term's nats divided by ``D ln 2``).

    Attributes:
        bpd: per-image bound ``(L_T + Σ_{t=2}^{N} L_{t-1} + L_0)/(D ln 2)``; with ``timesteps=n`` an unbiased
            estimate of it.
        mean: the mean of ``bpd`` over the batch.
        stderr: its standard error over the batch (``std(ddof=1)/sqrt(B)``; NaN for one image). The images'
            noise draws (and sampled steps) are independent, so it covers the Monte-Carlo error too.
        prior_bpd: ``L_T = KL(q(x_N | x_0) || N(0, I))``, closed form.
        diffusion_bpd: ``Σ_{t=2}^{N} L_{t-1}``, ``L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_θ(x_{t-1} | x_t))``,
            each term at one draw of ``x_t ~ q(x_t | x_0)``; with ``timesteps=n``, ``(N - 1)`` times the mean of
            ``n`` terms at steps drawn uniformly from ``{2, …, N}``.
        decoder_bpd: ``L_0 = -log p_θ(x_0 | x_1)`` at one draw of ``x_1``: the discretized Gaussian decoder.
        terms_bpd: ``(n, B)``: the evaluated ``L_{t-1}`` (``n = N - 1``, steps ``2, …, N`` in order, for the full
            sum).
        timesteps: ``(n, B)`` int64: the DDPM step ``t ∈ {2, …, N}`` of each entry of ``terms_bpd`` (sdekit index
            ``t - 1``, time ``t/N``).
        diffusion_stderr: with ``timesteps=n``, the per-image Monte-Carlo standard error of ``diffusion_bpd``
            (``(N - 1) · std(terms, ddof=1)/sqrt(n)``, over the step draws and their noise; NaN for ``n = 1``);
            None for the full sum.
        stats: ``num_steps`` (N), ``n_terms``, ``model_evals`` (model calls, by its ``nfe`` counter: one for the
            decoder, then one per ``timesteps_per_call`` terms), ``variance``, ``decoder_variance`` (the decoder's
            ``σ_1²``), ``clip_x0``, ``levels``, ``scale``, ``offset``, ``wall_time`` (seconds) and, where a generator
            was created, its ``seed``.
    """

    bpd: torch.Tensor
    mean: float
    stderr: float
    prior_bpd: torch.Tensor
    diffusion_bpd: torch.Tensor
    decoder_bpd: torch.Tensor
    terms_bpd: torch.Tensor
    timesteps: torch.Tensor
    diffusion_stderr: torch.Tensor | None = None
    stats: dict = field(default_factory=dict)


# --- divergence estimators ------------------------------------------------------------------------------
class _TraceEstimator:
    """Evaluates the score and ``n`` per-sample linear functionals of its Jacobian ``J`` at one time.

    Called with the flattened score function and ``y`` (B, D); returns ``(score (B, D), forms (n, B))``: the
    trace (``n = 1``, `_ExactTrace`) or one quadratic form per probe (`_HutchinsonForms`), both
    from batches of vector–Jacobian products ``vᵀ J``. Backend ``"auto"`` tries ``torch.func`` and falls back,
    once and for the rest of the solve, to a loop of ``torch.autograd.grad``.
    """

    def __init__(self, backend: str, chunk_size: int):
        self.backend = backend
        self.chunk_size = chunk_size

    def __call__(self, score_flat: Callable, y: torch.Tensor):
        if self.backend in ("auto", "func"):
            try:
                out = self._func(score_flat, y)
            except (RuntimeError, NotImplementedError) as err:
                if self.backend == "func":
                    raise
                warnings.warn(
                    f"torch.func could not differentiate the model ({type(err).__name__}: {err}); "
                    "falling back to a loop of torch.autograd.grad (slower)",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.backend = "autograd"
            else:
                self.backend = "func"
                return out
        return self._autograd(score_flat, y)

    def _func(self, score_flat, y):
        score, pullback = torch.func.vjp(score_flat, y)
        batched_pullback = torch.func.vmap(pullback)
        return score, self._reduce(lambda v: batched_pullback(v)[0], y)

    def _autograd(self, score_flat, y):
        with torch.enable_grad():
            yg = y.detach().requires_grad_(True)
            score = score_flat(yg)

            def rows(v):  # one vector–Jacobian product at a time, keeping the graph
                return torch.stack([torch.autograd.grad(score, yg, vi, retain_graph=True)[0] for vi in v])

            forms = self._reduce(rows, y)
        return score.detach(), forms

    def _reduce(self, rows: Callable, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class _ExactTrace(_TraceEstimator):
    """``tr J`` per sample from the ``D`` basis vectors ``e_i`` (each applied to every sample at once)."""

    def _reduce(self, rows, y):
        batch, dim = y.shape
        trace = torch.zeros(batch, dtype=y.dtype, device=y.device)
        for start in range(0, dim, self.chunk_size):
            idx = torch.arange(start, min(dim, start + self.chunk_size), device=y.device)
            pos = torch.arange(idx.numel(), device=y.device)
            basis = torch.zeros(idx.numel(), batch, dim, dtype=y.dtype, device=y.device)
            basis[pos, :, idx] = 1.0
            trace = trace + rows(basis)[pos, :, idx].sum(0)  # (e_iᵀ J)_i summed over the chunk
        return trace[None]


class _HutchinsonForms(_TraceEstimator):
    """``ε_pᵀ J ε_p`` per sample for each fixed probe ``ε_p`` (``probes``: ``(n_probes, B, D)``)."""

    def __init__(self, backend: str, chunk_size: int, probes: torch.Tensor):
        super().__init__(backend, chunk_size)
        self.probes = probes

    def _reduce(self, rows, y):
        out = []
        for start in range(0, self.probes.shape[0], self.chunk_size):
            eps = self.probes[start:start + self.chunk_size]
            out.append((rows(eps) * eps).sum(-1))
        return torch.cat(out)


# --- the augmented ODE ------------------------------------------------------------------------------------
class _AugmentedFlow(ODE):
    """The PF-ODE on flattened ``x`` (B, D) followed by ``n`` integrals ``ℓ`` (B, n), stored as ``(w_x x, w_ℓ ℓ)``.

    ``solve`` controls the RMS of the error ratios over the whole state, in which ``n`` integrals would weigh
    ``n/(D + n)`` (and ``x`` only ``D/(D + n)`` when many probes are carried). The weights
    ``w_x = sqrt((D + n)/D)`` and ``w_ℓ = sqrt((D + n)/n)`` make the mean square of the ratios the sum of the two
    groups' mean squares (where ``atol`` dominates the error scale), so both the trajectory and the integrals
    are held to the requested tolerance whatever ``D`` and ``n_probes``.
    """

    def __init__(self, model, process, sample_shape, estimator, linear_forms, cond, t_start):
        super().__init__()
        self.model, self.process, self.cond = model, process, cond
        self.sample_shape = tuple(sample_shape)
        self.dim = math.prod(self.sample_shape)
        self.estimator = estimator
        self.linear_forms = linear_forms  # (n, B): what multiplies f(t) in each divergence (D, or |ε_p|²)
        n = linear_forms.shape[0]
        self.weight_x = math.sqrt((self.dim + n) / self.dim)
        self.weight_int = math.sqrt((self.dim + n) / n)
        self.t_start = t_start

    def pack(self, x_flat: torch.Tensor, integrals: torch.Tensor) -> torch.Tensor:
        """The solver's state from ``x`` (B, D) and the integrals (n, B)."""
        return torch.cat([self.weight_x * x_flat, self.weight_int * integrals.T], dim=1)

    def unpack(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return state[:, :self.dim] / self.weight_x, state[:, self.dim:].T / self.weight_int

    def drift(self, t, state):
        batch, dim = state.shape[0], self.dim
        y = state[:, :dim] / self.weight_x

        def score_flat(v):
            return self.model.score(v.reshape(batch, *self.sample_shape), t, **self.cond).reshape(batch, dim)

        score, forms = self.estimator(score_flat, y)
        f = bcast(self.process.f(t), y)
        half_g2 = 0.5 * bcast(self.process.g2(t), y)
        dx = f * y - half_g2 * score
        ddiv = f * self.linear_forms - half_g2 * forms  # (n, B)
        if float(t) == self.t_start and not (bool(torch.isfinite(dx).all()) and bool(torch.isfinite(ddiv).all())):
            sigma = float(self.process.sigma(t))
            raise FloatingPointError(
                f"the probability-flow drift or its divergence is not finite at t_start = {self.t_start:g} "
                f"(sigma = {sigma:.3g}); a model with a score that divides by sigma needs t_start > 0"
            )
        return self.pack(dx, ddiv)


# --- argument handling ------------------------------------------------------------------------------------
def _check_input(model, x, process):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype} (for 8-bit images use bits_per_dim)")
    if x.ndim < 2 or x.shape[0] < 1 or x[0].numel() < 1:
        raise ValueError(f"x must be batch-first of shape (B, *sample_shape) with B >= 1, got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"x contains {n_bad} NaN/Inf value(s)")
    sample_shape = getattr(model, "sample_shape", None)
    if sample_shape is not None and tuple(x.shape[1:]) != tuple(sample_shape):
        raise ValueError(f"x has sample shape {tuple(x.shape[1:])} but the model takes {tuple(sample_shape)}")
    if not hasattr(model, "score"):
        raise TypeError(f"model must have a score(x, t) method (e.g. a ScoreModel), got {type(model).__name__}")
    process = process if process is not None else getattr(model, "process", None)
    if not isinstance(process, DiffusionProcess):
        raise TypeError("the model has no DiffusionProcess as .process; pass process=")
    return process


def _check_int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _chunk(n_vectors, batch, dim, dtype, chunk_size, memory_budget_bytes):
    if chunk_size is not None:
        _check_int(chunk_size, "chunk_size")
        return min(chunk_size, n_vectors)
    per_vector = batch * dim * torch.finfo(dtype).bits // 8 * _COPIES_PER_VECTOR
    return max(1, min(n_vectors, memory_budget_bytes // per_vector))


def _new_generator(device) -> tuple[torch.Generator, int]:
    gen = torch.Generator(device=device)
    seed = gen.seed()  # from a non-deterministic source; the global RNG is not touched
    return gen, seed


def _probes(kind, n_probes, batch, dim, generator, dtype, device, sample_offset=None):
    shape = (n_probes, batch, dim)
    if sample_offset is not None:  # per sample: row i's probes from (seed, sample_offset + i) only
        if kind == "gaussian":
            def draw(g, s):
                return torch.randn(s, generator=g, dtype=dtype, device=device)
        else:
            def draw(g, s):
                return (2 * torch.randint(0, 2, s, generator=g, device=device) - 1).to(dtype)
        rows = indexed_draw((batch, n_probes, dim), seed_from(generator), sample_offset, draw, device=device)
        return rows.permute(1, 0, 2).contiguous()
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, dtype=dtype, device=device)
    signs = torch.randint(0, 2, shape, generator=generator, device=device)
    return (2 * signs - 1).to(dtype)


# --- public API -------------------------------------------------------------------------------------------
def log_likelihood(
    model: ScoreModel,
    x: torch.Tensor,
    divergence: str = "exact",
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    solver: str | Solver = "dopri5",
    steps: int | None = None,
    spacing: str = "log_snr",
    max_steps: int = 100_000,
    controller: PIController | None = None,
    t_start: float | None = None,
    prior: str | Callable[[torch.Tensor], torch.Tensor] = "process",
    dtype: torch.dtype | None = None,
    process: DiffusionProcess | None = None,
    n_probes: int = 1,
    probe: str = "rademacher",
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    memory_budget_bytes: int = 2**30,
    exact_max_dim: int = 4096,
    backend: str = "auto",
    cond: dict | None = None,
    progress: bool = False,
    sample_offset: int | None = None,
) -> LikelihoodResult:
    """Per-sample ``log p_{t_start}(x)`` in nats by the probability-flow ODE and the instantaneous change of
    variables (Chen et al. 2018; Grathwohl et al. 2019; Song et al. 2021, appendix D.2).

    Integrates ``d(x, ℓ)/dt = (f(t) x - ½ g(t)² score(x, t), div)`` from ``t_start`` to ``T = process.t_max``
    and returns ``log p_T(x_T) + ℓ(T)``. The result is the density of ``x`` under ``p_{t_start}``, the data
    distribution noised to ``t_start`` (``x_{t_start} = alpha x_0 + sigma eps``), not under ``p_0``: with the
    default ``t_start = process.t_min`` (1e-3 for VP, sigma ≈ 0.01) this is the usual convention of score_sde.
    ``t_start = 0`` asks for the clean-data density (sigma = 0 for VP/sub-VP), which only a model with a
    finite score at sigma = 0 provides.

    Args:
        model: a [`ScoreModel`][sdekit.models.ScoreModel] (anything with ``score(x, t, **cond)`` and ``process``).
        x: data, batch first, any sample shape; finite floating point.
        divergence: ``"exact"`` (full Jacobian trace; ``D`` vector–Jacobian products per evaluation) or
            ``"hutchinson"`` (``n_probes`` products per evaluation; unbiased, with a standard error).
        rtol: relative tolerance of the adaptive controller (a [`PIController`][sdekit.solve.PIController];
            or pass ``controller`` to set every option).
        atol: its absolute tolerance.
        max_steps: its step limit.
        solver: a registry name or [`Solver`][sdekit.solvers.Solver]: adaptive (``"dopri5"``, ``"bosh3"``)
            without ``steps``, any ODE solver with ``steps``.
        steps: solve on a fixed grid of ``steps`` steps instead of adaptively.
        spacing: the fixed grid's spacing, by
            [`sdekit.schedules.time_grid`][]: ``"log_snr"`` (uniform in the half log-SNR; the default, good
            for every process), ``"time"``, ``"quadratic"`` or ``"karras"``. ``"log_snr"`` and ``"karras"``
            need ``sigma(t_start) > 0``.
        t_start: the time whose density is returned (default ``process.t_min``).
        prior: ``"process"`` (``N(0, prior_std² I)``, the process's prior at ``T``) or a callable
            ``log_p(x_T) -> (B,)`` (e.g. an exact marginal, which removes the prior-mismatch error).
        dtype: compute dtype (default ``x.dtype``); ``torch.float64`` is recommended for tolerances below
            about 1e-6, and the model must accept it.
        process: overrides ``model.process``.
        n_probes: Hutchinson's number of probes.
        probe: their law, ``"rademacher"`` (the smaller variance
            for a given Jacobian; exact for a diagonal one) or ``"gaussian"``.
        generator: the ``torch.Generator`` the probes are drawn from (once, before the solve); by default a
            new one seeded from a non-deterministic source (its seed is in ``stats["seed"]``).
        chunk_size: vectors per ``vmap``-ed batch of vector–Jacobian products; by default the most that fit
            ``memory_budget_bytes`` under an estimate of ``8 · B · D · itemsize`` bytes per vector.
        exact_max_dim: the largest ``D`` for which the exact divergence is allowed.
        backend: ``"func"`` (``torch.func``), ``"autograd"`` (a loop of ``torch.autograd.grad``) or ``"auto"``
            (``torch.func``, falling back to the loop with a warning when the model cannot be traced).
        cond: keyword arguments for every model call (e.g. class labels).
        progress: show the solve's progress bar.
        sample_offset: the global index of ``x``'s first sample, for a batch that is one shard of a larger one
            (`sdekit.distributed`): the Hutchinson probes of row ``i`` are then drawn from (a seed drawn once from
            ``generator``, ``sample_offset + i``) only ([`indexed_draw`][sdekit.brownian.indexed_draw]), so the
            probes of rows ``[a, b)`` at offset ``a`` are those of rows ``a..b`` of the whole batch at offset 0.
            The results are then the same bit for bit on a fixed grid (``steps``); an adaptive solve chooses its
            steps from the whole batch's error, so shards agree with the whole batch to the tolerance. Requires
            ``generator`` with ``divergence="hutchinson"``. None (the default): the probes are one draw of
            ``(n_probes, B, D)`` from ``generator``, as before.

    Returns:
        a `LikelihoodResult` (detached: no gradient flows back to ``x`` or the model's parameters).

    Raises:
        ValueError: bad input (NaN/Inf, wrong sample shape, unknown names, ``n_probes < 1``, ``t_start`` out
            of range) or a dimension too large for the exact trace (use ``divergence="hutchinson"``).
        RuntimeError: the adaptive solve exceeded ``max_steps``.
    """
    start_time = time.perf_counter()
    check_choice(divergence, "divergence", DIVERGENCES)
    check_choice(probe, "probe", PROBES)
    check_choice(backend, "backend", BACKENDS)
    check_choice(spacing, "spacing", SPACINGS)
    _check_int(n_probes, "n_probes")
    _check_int(max_steps, "max_steps")
    _check_int(exact_max_dim, "exact_max_dim")
    _check_int(memory_budget_bytes, "memory_budget_bytes")
    if steps is not None:
        _check_int(steps, "steps")
    sample_offset = check_sample_offset(sample_offset)
    if sample_offset is not None and generator is None and divergence == "hutchinson":
        raise ValueError("sample_offset needs a generator, seeded the same in every process (each process would "
                         "otherwise draw its own probes)")
    process = _check_input(model, x, process)
    if prior != "process" and not callable(prior):
        raise ValueError(f"prior must be 'process' or a callable log-density, got {prior!r}")
    dtype = dtype or x.dtype
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
    t_end = float(process.t_max)
    t_start = float(process.t_min if t_start is None else t_start)
    if not (math.isfinite(t_start) and process.t_domain_min <= t_start < t_end):
        raise ValueError(f"t_start={t_start:g} must lie in [{process.t_domain_min:g}, {t_end:g}) for {process!r}")

    batch, sample_shape = x.shape[0], tuple(x.shape[1:])
    dim = math.prod(sample_shape)
    device = x.device
    y0 = x.detach().to(dtype).reshape(batch, dim)
    stats: dict = {}
    if divergence == "exact":
        n_vectors = dim
        if dim > exact_max_dim:
            raise ValueError(
                f"the exact divergence needs D = {dim} vector-Jacobian products per model evaluation, more than "
                f"exact_max_dim = {exact_max_dim}; use divergence='hutchinson' (n_probes products per evaluation, "
                "unbiased, with a standard error) or raise exact_max_dim"
            )
        one_vector = batch * dim * torch.finfo(dtype).bits // 8 * _COPIES_PER_VECTOR
        if chunk_size is None and one_vector > memory_budget_bytes:
            raise ValueError(
                f"the exact divergence of D = {dim} for a batch of {batch} needs about {one_vector} bytes per "
                f"basis vector, more than memory_budget_bytes = {memory_budget_bytes}; use "
                "divergence='hutchinson', a smaller batch, or a larger memory_budget_bytes / explicit chunk_size"
            )
        chunk = _chunk(n_vectors, batch, dim, dtype, chunk_size, memory_budget_bytes)
        estimator = _ExactTrace(backend, chunk)
        linear_forms = torch.full((1, batch), float(dim), dtype=dtype, device=device)
    else:
        n_vectors = n_probes
        if generator is None:
            generator, stats["seed"] = _new_generator(device)
        probes = _probes(probe, n_probes, batch, dim, generator, dtype, device, sample_offset)
        chunk = _chunk(n_vectors, batch, dim, dtype, chunk_size, memory_budget_bytes)
        estimator = _HutchinsonForms(backend, chunk, probes)
        linear_forms = (probes * probes).sum(-1)  # εᵀ (f I) ε = f |ε|²
    flow = _AugmentedFlow(model, process, sample_shape, estimator, linear_forms, cond or {}, t_start)
    state0 = flow.pack(y0, torch.zeros_like(linear_forms))

    solver = get_solver(solver)
    model_evals0 = getattr(model, "nfe", None)
    with torch.no_grad(), warnings.catch_warnings():
        # torch's note that vmap falls back to a loop for the CPU flash-attention backward: expected here (a
        # vmap over vector–Jacobian products through attention layers), and measured to cost < 10%.
        warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented "
                                "the batching rule", category=UserWarning)
        if steps is not None:
            ts = time_grid(process, steps, spacing, t_start=t_end, t_end=t_start).flip(0)
            sol = solve(flow, state0, solver, ts=ts, progress=progress)
        else:
            if not solver.adaptive:
                raise ValueError(f"solver {solver.name!r} has no error estimate: give steps=N for a fixed grid, or "
                                 "use an adaptive solver ('dopri5', 'bosh3')")
            controller = controller or PIController(rtol=rtol, atol=atol, max_steps=max_steps)
            try:
                sol = solve(flow, state0, solver, t0=t_start, t1=t_end, controller=controller, progress=progress)
            except RuntimeError as err:
                if "max_steps" in str(err) or "underflow" in str(err):
                    raise RuntimeError(
                        f"log_likelihood: the probability-flow solve from t = {t_start:g} to {t_end:g} failed "
                        f"(rtol={controller.rtol:g}, atol={controller.atol:g}): {err}"
                    ) from err
                raise
        latent_flat, integrals = flow.unpack(sol.x)  # (B, D), (n, B)
        latent = latent_flat.reshape(batch, *sample_shape)
        prior_log_prob = process.prior_log_prob(latent) if prior == "process" else prior(latent)
    prior_log_prob = torch.as_tensor(prior_log_prob).to(dtype=dtype, device=device)
    if prior_log_prob.shape != (batch,):
        raise ValueError(f"the prior returned shape {tuple(prior_log_prob.shape)}; expected ({batch},)")

    delta = integrals.mean(0)
    stderr = None
    delta_per_probe = None
    if divergence == "hutchinson":
        delta_per_probe = integrals
        stderr = (integrals.std(0, correction=1) / math.sqrt(n_probes) if n_probes > 1
                  else torch.full((batch,), math.nan, dtype=dtype, device=device))
    stats.update(sol.stats)
    stats.update(
        model_evals=(model.nfe - model_evals0) if model_evals0 is not None else None,
        wall_time=time.perf_counter() - start_time,
        divergence=divergence,
        backend=estimator.backend,
        vjps_per_eval=n_vectors,
        chunk_size=chunk,
        t_start=t_start,
        t_end=t_end,
    )
    return LikelihoodResult(
        log_prob=prior_log_prob + delta,
        prior_log_prob=prior_log_prob,
        delta=delta,
        latent=latent,
        stats=stats,
        stderr=stderr,
        delta_per_probe=delta_per_probe,
    )


def nats_to_bits_per_dim(log_prob_x: torch.Tensor, dim: int, scale: float = 1 / 128) -> torch.Tensor:
    """Bits per dimension of quantized data from the log-density of its model-space image ``x = scale·y + offset``.

    With ``y = levels + u``, ``log p_y(y) = log p_x(x) + D log(scale)``, so
    ``bpd = -log p_y/(D ln 2) = -log p_x(x)/(D ln 2) - log2(scale)``: ``+ 7`` for 8-bit data on [-1, 1)
    (``scale = 1/128``, the default).
    """
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    return -(log_prob_x + dim * math.log(scale)) / (dim * math.log(2.0))


# --- quantized data -------------------------------------------------------------------------------------------
def _bins(levels, scale, offset, decoder: str) -> tuple[float, float]:
    """``(scale, offset)`` of the bins ``[offset + scale·k, offset + scale·(k + 1))``, ``k = 0..levels - 1``.

    Defaults: ``dequantize`` tiles [-1, 1) (``2/levels``, ``-1``); ``ddpm`` centres the bins on DDPM's data
    ``2k/(levels - 1) - 1`` (``2/(levels - 1)``, ``-1 - 1/(levels - 1)``).
    """
    _check_int(levels, "levels", minimum=2)
    if decoder == "ddpm":
        default_scale, default_offset = 2.0 / (levels - 1), -1.0 - 1.0 / (levels - 1)
    else:
        default_scale, default_offset = 2.0 / levels, -1.0
    scale = default_scale if scale is None else scale
    offset = default_offset if offset is None else offset
    for name, value in (("scale", scale), ("offset", offset)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise TypeError(f"{name} must be a finite number, got {value!r}")
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    return float(scale), float(offset)


def _check_images(images, levels: int) -> torch.Tensor:
    """``images`` as a tensor of integer levels in ``0..levels - 1`` (uint8 or floating point), batch first."""
    images = torch.as_tensor(images)
    if images.ndim < 2 or images.shape[0] < 1 or images[0].numel() < 1:
        raise ValueError(f"images must be batch-first of shape (B, *sample_shape), got {tuple(images.shape)}")
    pixels = images.to(torch.float64)
    if not bool(torch.isfinite(pixels).all()):
        raise ValueError("images contain NaN/Inf")
    if bool((pixels < 0).any()) or bool((pixels > levels - 1).any()) or bool((pixels != pixels.round()).any()):
        raise ValueError(
            f"images must hold integer pixel levels 0..{levels - 1}, got values in [{float(pixels.min()):g}, "
            f"{float(pixels.max()):g}] (integers: {bool((pixels == pixels.round()).all())}); "
            f"convert [0, 1] or [-1, 1] data back to 0..{levels - 1} first"
        )
    return images


def _compute_dtype(images: torch.Tensor, dtype) -> torch.dtype:
    dtype = dtype or (images.dtype if images.is_floating_point() else torch.float32)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    return dtype


def bits_per_dim(
    model: ScoreModel,
    images: torch.Tensor,
    *,
    decoder: str = "dequantize",
    n_dequant: int = 1,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    levels: int = 256,
    scale: float | None = None,
    offset: float | None = None,
    sample_offset: int | None = None,
    **options: object,
) -> BitsPerDimResult | DDPMBoundResult:
    """Bits per dimension of 8-bit images under a diffusion model on [-1, 1] data, with uniform dequantization
    (Theis et al. 2016; the convention of DDPM and score_sde); other quantizations through ``levels``,
    ``scale`` and ``offset``; DDPM's discrete decoder and variational bound with ``decoder="ddpm"``.

    Derivation: the pixels ``k ∈ {0, …, 255}^D`` are dequantized to ``y = k + u``, ``u ~ U[0, 1)^D``, and
    mapped to the model's space by ``x = 2y/256 - 1 = y/128 - 1 ∈ [-1, 1)``. The map has Jacobian determinant
    ``128^{-D}``, so ``log p_y(y) = log p_x(x) - D log 128``. By Jensen's inequality
    ``log P(k) = log ∫_{[0,1)^D} p_y(k + u) du ≥ E_u[log p_y(k + u)]``, so

        bpd = -E_u[log p_y(k + u)] / (D ln 2) = -E_u[log p_x(x)] / (D ln 2) + log2(128)

    is an upper bound (in expectation) on the discrete negative log-likelihood ``-log2 P(k)/D``: the constant
    is exactly 7 bits (a density uniform on [-1, 1)^D gives 1 + 7 = 8 bits, the uniform law on 256 levels).
    ``E_u`` is estimated with ``n_dequant`` draws per image.

    In general the levels ``k ∈ {0, …, levels - 1}`` map to ``x = scale·(k + u) + offset`` (defaults
    ``scale = 2/levels``, ``offset = -1``: the 8-bit convention above for ``levels = 256``) and
    ``bpd = -E_u[log p_x(x)]/(D ln 2) - log2(scale)``. A model trained on the bin centres ``x_k = a·k + b``
    (scikit-learn's 17-level digits as ``k/8 - 1``, say) takes ``scale = a``, ``offset = b - a/2``, so that
    each bin is centred on the value the model saw.

    ``decoder="ddpm"`` returns [`ddpm_bound`][sdekit.likelihood.ddpm_bound] instead (discrete DDPM schedules
    only): the same bins ``[offset + scale·k, offset + scale·(k + 1))``, with the defaults of DDPM's data map
    ``x_k = 2k/(levels - 1) - 1`` (``scale = 2/(levels - 1)``, ``offset = -1 - 1/(levels - 1)``).

    Args:
        model: a score model on [-1, 1]-scaled data (see `log_likelihood`).
        images: integer pixel levels in [0, levels - 1], batch first (uint8 or floating point).
        decoder: ``"dequantize"`` (the probability-flow ODE with uniform dequantization, the default) or
            ``"ddpm"`` (the discrete-time variational bound with DDPM's discretized Gaussian decoder).
        n_dequant: dequantization draws per image; all ``n_dequant · B`` samples are solved in one batch
            (``decoder="dequantize"`` only).
        generator: draws the dequantization noise ``u = torch.rand((n_dequant, *images.shape))`` first, then any
            Hutchinson probes (for ``"ddpm"``: see `ddpm_bound`); by default a new one from a non-deterministic
            seed.
        dtype: compute dtype (default float32 for integer images, else the images' dtype).
        levels: the number of quantization levels (default 256).
        scale: ``scale`` of the map ``x = scale·(k + u) + offset`` (default ``2/levels``; ``2/(levels - 1)``
            for ``"ddpm"``).
        offset: ``offset`` of that map (default ``-1``; ``-1 - 1/(levels - 1)`` for ``"ddpm"``).
        sample_offset: the global index of the first image, for a batch that is one shard of a larger one
            (``decoder="dequantize"`` only; needs ``generator``): the dequantization noise of image ``i`` is then
            drawn from (a seed drawn from ``generator``, ``sample_offset + i``) only, and draw ``d`` of image ``i``
            is row ``(sample_offset + i) · n_dequant + d`` of `log_likelihood`'s ``sample_offset`` (the solve's
            batch is then image-major). None: the default draws described above.
        options: passed to `log_likelihood` (``divergence``, ``rtol``, ``atol``, ``n_probes``, ``prior``,
            ``t_start``, ...), or to `ddpm_bound` for ``"ddpm"`` (``variance``, ``timesteps``, ...).

    Returns:
        a `BitsPerDimResult` (per-image bpd, its mean and standard error over the batch); for
        ``decoder="ddpm"`` a `DDPMBoundResult` (the same three, and the bound's terms).

    Raises:
        ValueError: bad images (not integer levels in ``0..levels - 1``, NaN/Inf, not batch-first), ``levels < 2``,
            ``scale <= 0``, ``n_dequant < 1`` (or ``!= 1`` with ``"ddpm"``), an unknown decoder; and the errors of
            `log_likelihood` / `ddpm_bound`.
        TypeError: a non-finite or non-numeric ``scale``/``offset``.
    """
    check_choice(decoder, "decoder", DECODERS)
    _check_int(n_dequant, "n_dequant")
    sample_offset = check_sample_offset(sample_offset)
    if sample_offset is not None and (decoder != "dequantize" or generator is None):
        raise ValueError("sample_offset applies to decoder='dequantize' with a generator (seeded the same in every "
                         "process)")
    if decoder == "ddpm":
        if n_dequant != 1:
            raise ValueError(f"n_dequant applies to decoder='dequantize' only; decoder='ddpm' takes n_dequant=1, "
                             f"got {n_dequant} (use ddpm_bound's timesteps / more images for its Monte-Carlo error)")
        return ddpm_bound(model, images, generator=generator, dtype=dtype, levels=levels, scale=scale,
                          offset=offset, **options)
    scale, offset = _bins(levels, scale, offset, decoder)
    images = _check_images(images, levels)
    dtype = _compute_dtype(images, dtype)
    seed = None
    if generator is None:
        generator, seed = _new_generator(images.device)
    batch = images.shape[0]
    dim = images[0].numel()
    if sample_offset is not None:  # image-major rows: image i's draws are global rows (offset + i) n_dequant + d
        u = indexed_draw((batch, n_dequant, *images.shape[1:]), seed_from(generator), sample_offset,
                         lambda g, s: torch.rand(s, generator=g, dtype=dtype, device=images.device),
                         device=images.device)
        x = (images.to(dtype).unsqueeze(1) + u) * scale + offset
        result = log_likelihood(model, x.reshape(batch * n_dequant, *images.shape[1:]), generator=generator,
                                dtype=dtype, sample_offset=sample_offset * n_dequant, **options)
        per_draw = nats_to_bits_per_dim(result.log_prob, dim, scale).reshape(batch, n_dequant).T
    else:
        u = torch.rand((n_dequant, *images.shape), generator=generator, dtype=dtype, device=images.device)
        x = (images.to(dtype) + u) * scale + offset
        result = log_likelihood(model, x.reshape(n_dequant * batch, *images.shape[1:]), generator=generator,
                                dtype=dtype, **options)
        per_draw = nats_to_bits_per_dim(result.log_prob, dim, scale).reshape(n_dequant, batch)
    if seed is not None:
        result.stats["seed"] = seed
    bpd = per_draw.mean(0)
    mean = float(bpd.mean())
    stderr = float(bpd.std(correction=1)) / math.sqrt(batch) if batch > 1 else math.nan
    return BitsPerDimResult(bpd=bpd, mean=mean, stderr=stderr, bpd_per_draw=per_draw, likelihood=result)


# --- the DDPM bound -------------------------------------------------------------------------------------------
_LN2 = math.log(2.0)
_LOG_HALF = -_LN2


def _log1mexp(a: torch.Tensor) -> torch.Tensor:
    """``log(1 - e^a)`` for ``a <= 0``, accurate at both ends (Mächler 2012); each branch sees only its own range,
    so no infinite gradient leaks through ``torch.where``."""
    near = a > _LOG_HALF
    a_near = torch.where(near, a, torch.full_like(a, _LOG_HALF))
    a_far = torch.where(near, torch.full_like(a, _LOG_HALF), a)
    return torch.where(near, torch.log(-torch.expm1(a_near)), torch.log1p(-torch.exp(a_far)))


def _log_normal_mass(z_lo: torch.Tensor, z_hi: torch.Tensor, first: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """``log(Φ(z_hi) - Φ(z_lo))`` with ``z_lo`` replaced by -inf where ``first`` and ``z_hi`` by +inf where ``last``.

    Interior bins are reflected into the lower half (``Φ(b) - Φ(a) = Φ(-a) - Φ(-b)``) so that both ends are
    log-CDFs of the lower tail, then ``log Φ(v) + log(1 - Φ(u)/Φ(v))``: no cancellation, no underflow to 0 for
    bins far in either tail.
    """
    flip = (z_lo + z_hi) > 0
    u = torch.where(flip, -z_hi, z_lo)
    v = torch.where(flip, -z_lo, z_hi)
    log_v = torch.special.log_ndtr(v)
    interior = log_v + _log1mexp(torch.clamp(torch.special.log_ndtr(u) - log_v, max=0.0))
    lower_edge = torch.special.log_ndtr(z_hi)  # (-inf, hi)
    upper_edge = torch.special.log_ndtr(-z_lo)  # [lo, +inf)
    return torch.where(first, lower_edge, torch.where(last, upper_edge, interior))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor,
    mean: torch.Tensor | float,
    log_scale: torch.Tensor | float,
    levels: int = 256,
    *,
    scale: float | None = None,
    offset: float | None = None,
) -> torch.Tensor:
    """Elementwise ``log ∫_{bin(x)} N(y; mean, e^{2 log_scale}) dy``: DDPM's discretized Gaussian decoder
    (Ho et al. 2020, §3.3, eq. 13), for any number of levels.

    The bins are ``[offset + scale·k, offset + scale·(k + 1))``, ``k = 0..levels - 1``, with the first extended
    to ``-∞`` and the last to ``+∞``, so the probabilities of the ``levels`` bins sum to 1 for every mean and
    scale. The defaults (``scale = 2/(levels - 1)``, ``offset = -1 - 1/(levels - 1)``) centre the bins on DDPM's
    data ``x_k = 2k/(levels - 1) - 1``: for 8-bit data, bins of width 2/255 around ``k/127.5 - 1``. The bin
    probability uses the exact normal CDF (log-CDFs of the lower tail, so it stays accurate far in the tails);
    the DDPM code uses a tanh approximation of the CDF and clamps probabilities at 1e-12.

    Args:
        x: data on the bin centres ``offset + scale·(k + ½)`` (up to 1% of a bin).
        mean: the Gaussian's mean, broadcastable against ``x``.
        log_scale: the log of its standard deviation (``½ log σ²``), broadcastable against ``x``.
        levels: the number of bins (>= 2).
        scale: the bin width (default ``2/(levels - 1)``).
        offset: the lower edge of bin 0 before it is extended to ``-∞`` (default ``-1 - 1/(levels - 1)``).

    Returns:
        the log-probabilities in nats, of the broadcast shape and ``x``'s floating dtype (computed in float64).

    Raises:
        ValueError: ``levels < 2``, ``scale <= 0``, or ``x`` not on the bin centres.
        TypeError: ``x`` not a floating-point tensor, or a non-finite ``scale``/``offset``.
    """
    scale, offset = _bins(levels, scale, offset, "ddpm")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point torch.Tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    x64 = x.to(torch.float64)
    k = torch.round((x64 - offset) / scale - 0.5)
    off_centre = (x64 - (offset + scale * (k + 0.5))).abs() > 0.01 * scale
    if bool(((k < 0) | (k > levels - 1) | off_centre | ~torch.isfinite(x64)).any()):
        raise ValueError(
            f"x must lie on the {levels} bin centres offset + scale·(k + 1/2) = {offset + scale / 2:.6g} + "
            f"{scale:.6g}·k, k = 0..{levels - 1}, got values in [{float(x64.min()):.6g}, {float(x64.max()):.6g}]"
        )
    mean = torch.as_tensor(mean, dtype=torch.float64, device=x.device)
    log_scale = torch.as_tensor(log_scale, dtype=torch.float64, device=x.device)
    inv_std = torch.exp(-log_scale)
    lo = offset + scale * k
    z_lo = (lo - mean) * inv_std
    z_hi = (lo + scale - mean) * inv_std
    z_lo, z_hi, k = torch.broadcast_tensors(z_lo, z_hi, k)
    out = _log_normal_mass(z_lo, z_hi, k == 0, k == levels - 1)
    return out.to(x.dtype)


def _ddpm_coefficients(process: VP, variance: str, decoder_variance) -> dict[str, torch.Tensor | float]:
    """Float64 host coefficients of the DDPM chain ``t = 0..N`` (``ᾱ_0 = 1``; sdekit index ``t - 1``).

    Ho et al. 2020, eqs. 6-7: ``q(x_{t-1} | x_t, x_0) = N(c1_t x_0 + c2_t x_t, β̃_t I)`` with
    ``c1_t = sqrt(ᾱ_{t-1}) β_t/(1 - ᾱ_t)``, ``c2_t = sqrt(α_t)(1 - ᾱ_{t-1})/(1 - ᾱ_t)``,
    ``β̃_t = β_t (1 - ᾱ_{t-1})/(1 - ᾱ_t)``; ``p_θ`` has the mean with the model's ``x̂_0`` and variance ``σ_t²``.
    Per dimension, ``KL_t = ½ [β̃_t/σ_t² - 1 - log(β̃_t/σ_t²)] + ½ c1_t²/σ_t² (x_0 - x̂_0)²``: the ``x_t`` terms of the
    two means cancel.
    """
    log_abar = torch.cat([torch.zeros(1, dtype=torch.float64), torch.log(process.schedule.alphas_cumprod)])
    n = log_abar.numel() - 1
    abar = torch.exp(log_abar)
    one_minus_abar = -torch.expm1(log_abar)  # 1 - ᾱ_t, exact near t = 0
    log_alpha = log_abar[1:] - log_abar[:-1]  # log α_t, t = 1..N
    beta = torch.cat([torch.zeros(1, dtype=torch.float64), -torch.expm1(log_alpha)])  # β_0 := 0 (unused)
    coef1 = torch.zeros(n + 1, dtype=torch.float64)
    coef2 = torch.zeros(n + 1, dtype=torch.float64)
    coef1[1:] = torch.sqrt(abar[:-1]) * beta[1:] / one_minus_abar[1:]
    coef2[1:] = torch.exp(0.5 * log_alpha) * one_minus_abar[:-1] / one_minus_abar[1:]
    posterior_var = torch.zeros(n + 1, dtype=torch.float64)
    posterior_var[1:] = beta[1:] * one_minus_abar[:-1] / one_minus_abar[1:]  # β̃_1 = 0
    model_var = beta.clone() if variance == "beta" else posterior_var.clone()
    if decoder_variance == "ddpm":
        # The released DDPM code (diffusion_utils_2.py) uses β̃_2 at t = 1 for both fixed variances: β̃_1 = 0 is
        # degenerate, and for σ_t² = β_t the smaller variance gives the better decoder likelihood.
        dec_var = float(posterior_var[2])
    elif decoder_variance == "beta":
        dec_var = float(beta[1])  # the paper's σ_1² for σ_t² = β_t
    else:
        dec_var = float(decoder_variance)
    model_var[1] = dec_var
    ratio = torch.ones(n + 1, dtype=torch.float64)
    ratio[2:] = posterior_var[2:] / model_var[2:]
    kl_const = 0.5 * (ratio - 1 - torch.log(ratio))  # per dimension; 0 for σ_t² = β̃_t
    kl_weight = torch.zeros(n + 1, dtype=torch.float64)
    kl_weight[2:] = 0.5 * coef1[2:] ** 2 / model_var[2:]
    return dict(num_steps=n, abar=abar, one_minus_abar=one_minus_abar, beta=beta, coef1=coef1, coef2=coef2,
                posterior_var=posterior_var, model_var=model_var, kl_const=kl_const, kl_weight=kl_weight,
                decoder_var=dec_var)


def _repeat_cond(cond: dict, batch: int, times: int) -> dict:
    """Cond tensors with a leading batch dimension, repeated for ``times`` stacked copies of the batch."""
    if times == 1:
        return cond
    return {key: value.repeat(times, *([1] * (value.ndim - 1)))
            if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == batch else value
            for key, value in cond.items()}


def ddpm_bound(
    model: ScoreModel,
    images: torch.Tensor,
    *,
    variance: str = "beta",
    decoder_variance: str | float = "ddpm",
    clip_x0: bool = False,
    timesteps: int | None = None,
    levels: int = 256,
    scale: float | None = None,
    offset: float | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    process: DiffusionProcess | None = None,
    timesteps_per_call: int = 1,
    cond: dict | None = None,
) -> DDPMBoundResult:
    """The discrete-time variational bound of a DDPM in bits per dimension of quantized images, with DDPM's
    discretized Gaussian decoder: ``L = L_T + Σ_{t=2}^{N} L_{t-1} + L_0`` (Ho et al. 2020, eq. 5 and §3.3).

    On a discrete schedule with ``N`` steps (`VP.from_betas`; DDPM step ``t`` is sdekit index ``t - 1``, time
    ``t/N``), for the data ``x_0 = offset + scale·(k + ½)`` (the bin centres; DDPM's ``2k/255 - 1`` by default):

    - ``L_T = KL(q(x_N | x_0) || N(0, I))``, closed form.
    - ``L_{t-1} = E_{x_t ~ q(x_t | x_0)} KL(q(x_{t-1} | x_t, x_0) || p_θ(x_{t-1} | x_t))``, ``t = 2..N``: both
      Gaussian, ``p_θ``'s mean the posterior mean with the model's ``x̂_0(x_t, t)`` in place of ``x_0``, its variance
      ``σ_t² = β_t`` (``variance="beta"``, DDPM's "fixedlarge", the default: the configuration of the released
      CIFAR-10 model, whose bits/dim the paper reports) or ``β̃_t`` (``"posterior"``, "fixedsmall"; §3.2 finds
      both similar for samples). Each expectation is one draw of ``x_t``; the KL in closed form given it.
    - ``L_0 = E_{x_1} [-log p_θ(x_0 | x_1)]``, ``p_θ(x_0 | x_1) = Π_i ∫_{bin(x_0,i)} N(y; x̂_0(x_1, 1)_i, σ_1²) dy``
      with the edge bins extended to ±∞ (`discretized_gaussian_log_likelihood`).

    The sum is an upper bound, in expectation, on the model's discrete code length ``-log2 p_θ(k)/D`` (no
    dequantization: the decoder puts probability on the levels themselves). ``timesteps=n`` replaces the
    ``N - 1`` KL terms by ``(N - 1)`` times the mean of ``n`` terms at steps drawn uniformly (with replacement,
    independently per image) from ``{2, …, N}``: unbiased, with a per-image standard error; ``L_T`` and ``L_0``
    are always computed.

    Randomness, all from ``generator`` in this order and in the compute dtype: with ``timesteps=n``, the steps
    ``torch.randint(2, N + 1, (n, B))``; then the decoder's noise ``torch.randn(images.shape)``; then one
    ``torch.randn(images.shape)`` per KL term, in the order of ``timesteps`` (``t = 2, …, N`` for the full sum),
    with ``x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε``. The draws do not depend on ``timesteps_per_call``.

    Args:
        model: a [`ScoreModel`][sdekit.models.ScoreModel] (anything with ``predict(x, t, "x0", **cond)`` and a
            ``process``) on a discrete VP schedule; it is asked for ``x̂_0`` at the times ``t/N``.
        images: integer levels in ``0..levels - 1``, batch first (uint8 or floating point).
        variance: the reverse variance ``σ_t²``, ``t >= 2``: ``"beta"`` (``β_t``) or ``"posterior"`` (``β̃_t``).
        decoder_variance: the decoder's ``σ_1²``: ``"ddpm"`` (``β̃_2``: what the released DDPM code uses with either
            variance, since ``β̃_1 = 0``; the reported numbers use it), ``"beta"`` (``β_1``, the paper's text for
            ``σ_t² = β_t``) or a positive number.
        clip_x0: clip ``x̂_0`` to the range of the bin centres (``[-1, 1]`` by default) before forming the means, as
            the DDPM code's bits/dim evaluation does (``clip_denoised=True``); the default evaluates the model as
            it is. Clipping changes the model, so the result stays a valid bound (of the clipped model).
        timesteps: None for all ``N - 1`` KL terms, or the number ``n >= 1`` of sampled terms per image.
        levels: the number of quantization levels (>= 2; default 256).
        scale: the bin width (default ``2/(levels - 1)``; see `discretized_gaussian_log_likelihood`).
        offset: the lower edge of bin 0 (default ``-1 - 1/(levels - 1)``). With `bits_per_dim`'s ``scale`` and
            ``offset`` for the same data the two routes see the same bins.
        generator: the ``torch.Generator`` of every draw (on the images' device); by default a new one seeded
            from a non-deterministic source (its seed in ``stats["seed"]``).
        dtype: compute dtype (default float32 for integer images, else the images' dtype); the schedule's
            coefficients are computed in float64 and cast once.
        process: overrides ``model.process``.
        timesteps_per_call: KL terms stacked into one model call of ``timesteps_per_call · B`` samples (faster
            for small models); tensor entries of ``cond`` with leading dimension ``B`` are repeated to match.
        cond: keyword arguments for every model call (e.g. class labels).

    Returns:
        a `DDPMBoundResult` (detached): per-image bound, its mean and standard error, and the terms.

    Raises:
        ValueError: a process that is not a discrete DDPM schedule, images that are not integer levels in
            ``0..levels - 1``, ``levels < 2``, ``scale <= 0``, unknown ``variance``/``decoder_variance``, a
            non-positive ``decoder_variance``, ``timesteps``/``timesteps_per_call`` < 1, a wrong sample shape.
        TypeError: a model without ``predict``, a non-floating ``dtype``, a non-finite ``scale``/``offset``.
    """
    start_time = time.perf_counter()
    check_choice(variance, "variance", DDPM_VARIANCES)
    if isinstance(decoder_variance, str):
        check_choice(decoder_variance, "decoder_variance", DECODER_VARIANCES)
    elif (isinstance(decoder_variance, bool) or not isinstance(decoder_variance, (int, float))
          or not (math.isfinite(decoder_variance) and decoder_variance > 0)):
        raise ValueError(f"decoder_variance must be 'ddpm', 'beta' or a positive finite number, "
                         f"got {decoder_variance!r}")
    if not isinstance(clip_x0, bool):
        raise TypeError(f"clip_x0 must be a bool, got {clip_x0!r}")
    if timesteps is not None:
        _check_int(timesteps, "timesteps")
    _check_int(timesteps_per_call, "timesteps_per_call")
    scale, offset = _bins(levels, scale, offset, "ddpm")
    if not callable(getattr(model, "predict", None)):
        raise TypeError(f"model must have a predict(x, t, 'x0') method (e.g. a ScoreModel), got {type(model).__name__}")
    process = process if process is not None else getattr(model, "process", None)
    if not (isinstance(process, VP) and not isinstance(process, SubVP) and process.is_discrete):
        raise ValueError(
            f"the process (model.process or process=) must be a VP with a discrete DDPM schedule "
            f"(VP.from_betas(...) or VP.from_alphas_cumprod(...)), got {process!r}; for continuous schedules use "
            "bits_per_dim(decoder='dequantize')"
        )
    images = _check_images(images, levels)
    dtype = _compute_dtype(images, dtype)
    sample_shape = getattr(model, "sample_shape", None)
    if sample_shape is not None and tuple(images.shape[1:]) != tuple(sample_shape):
        raise ValueError(f"images have sample shape {tuple(images.shape[1:])} but the model takes "
                         f"{tuple(sample_shape)}")

    coef = _ddpm_coefficients(process, variance, decoder_variance)
    n_steps = coef["num_steps"]
    device = images.device
    batch, dim = images.shape[0], images[0].numel()
    cond = cond or {}
    stats: dict = {}
    if generator is None:
        generator, stats["seed"] = _new_generator(device)
    if timesteps is None:
        steps = torch.arange(2, n_steps + 1, device=device)[:, None].expand(n_steps - 1, batch)
    else:
        steps = torch.randint(2, n_steps + 1, (timesteps, batch), generator=generator, device=device)
    n_terms = steps.shape[0]

    def on_device(values: torch.Tensor) -> torch.Tensor:
        return values.to(dtype=dtype, device=device)

    sqrt_abar, sqrt_one_minus = on_device(coef["abar"].sqrt()), on_device(coef["one_minus_abar"].sqrt())
    kl_const, kl_weight = on_device(coef["kl_const"]), on_device(coef["kl_weight"])
    lo_centre, hi_centre = offset + 0.5 * scale, offset + scale * (levels - 0.5)
    x0 = images.to(dtype) * scale + (offset + 0.5 * scale)
    shape = (1,) * (images.ndim - 1)
    model_evals0 = getattr(model, "nfe", None)

    def predict_x0(x_t: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        t = (step.to(torch.float64) / n_steps).to(dtype)  # t_i = (i + 1)/N with i = step - 1
        rep = x_t.shape[0] // batch
        x0_hat = model.predict(x_t, t, "x0", **_repeat_cond(cond, batch, rep))
        return x0_hat.clamp(lo_centre, hi_centre) if clip_x0 else x0_hat

    with torch.no_grad():
        # L_T: KL(N(sqrt(ᾱ_N) x0, (1 - ᾱ_N) I) || N(0, I)) = ½ Σ [ᾱ_N x0² - ᾱ_N - log(1 - ᾱ_N)]
        abar_n = float(coef["abar"][-1])
        sq_x0 = (x0 * x0).reshape(batch, dim).sum(-1)
        prior_nats = 0.5 * (abar_n * sq_x0 - dim * (abar_n + math.log1p(-abar_n)))

        # L_0: the decoder at x_1 ~ q(x_1 | x_0); its mean is x̂_0 (c1_1 = 1, c2_1 = 0 since ᾱ_0 = 1)
        eps = torch.randn(images.shape, generator=generator, dtype=dtype, device=device)
        step1 = torch.ones(batch, dtype=torch.long, device=device)
        x1 = sqrt_abar[1] * x0 + sqrt_one_minus[1] * eps
        x0_hat = predict_x0(x1, step1)
        mean = float(coef["coef1"][1]) * x0_hat + float(coef["coef2"][1]) * x1
        log_std = 0.5 * math.log(coef["decoder_var"])
        decoder_nats = -discretized_gaussian_log_likelihood(x0, mean, log_std, levels, scale=scale,
                                                            offset=offset).reshape(batch, dim).sum(-1)

        # L_{t-1}, t = 2..N (or the sampled steps), timesteps_per_call terms per model call
        terms = torch.empty(n_terms, batch, dtype=dtype, device=device)
        for start in range(0, n_terms, timesteps_per_call):
            chunk = steps[start:start + timesteps_per_call]  # (k, B)
            k = chunk.shape[0]
            eps = torch.stack([torch.randn(images.shape, generator=generator, dtype=dtype, device=device)
                               for _ in range(k)])  # one draw per term, so chunking does not change them
            a, s = sqrt_abar[chunk].reshape(k, batch, *shape), sqrt_one_minus[chunk].reshape(k, batch, *shape)
            x_t = (a * x0 + s * eps).reshape(k * batch, *images.shape[1:])
            x0_hat = predict_x0(x_t, chunk.reshape(-1)).reshape(k, batch, dim)
            sq_err = ((x0.reshape(1, batch, dim) - x0_hat) ** 2).sum(-1)
            terms[start:start + k] = dim * kl_const[chunk] + kl_weight[chunk] * sq_err

    to_bpd = 1.0 / (dim * _LN2)
    terms_bpd = terms * to_bpd
    diffusion_stderr = None
    if timesteps is None:
        diffusion_bpd = terms_bpd.sum(0)
    else:
        diffusion_bpd = (n_steps - 1) * terms_bpd.mean(0)
        diffusion_stderr = ((n_steps - 1) * terms_bpd.std(0, correction=1) / math.sqrt(n_terms) if n_terms > 1
                            else torch.full((batch,), math.nan, dtype=dtype, device=device))
    prior_bpd = prior_nats * to_bpd
    decoder_bpd = decoder_nats * to_bpd
    bpd = prior_bpd + diffusion_bpd + decoder_bpd
    stats.update(
        num_steps=n_steps,
        n_terms=n_terms,
        model_evals=(model.nfe - model_evals0) if model_evals0 is not None else None,
        variance=variance,
        decoder_variance=coef["decoder_var"],
        clip_x0=clip_x0,
        levels=levels,
        scale=scale,
        offset=offset,
        wall_time=time.perf_counter() - start_time,
    )
    stderr = float(bpd.std(correction=1)) / math.sqrt(batch) if batch > 1 else math.nan
    return DDPMBoundResult(bpd=bpd, mean=float(bpd.mean()), stderr=stderr, prior_bpd=prior_bpd,
                           diffusion_bpd=diffusion_bpd, decoder_bpd=decoder_bpd, terms_bpd=terms_bpd,
                           timesteps=steps.clone(), diffusion_stderr=diffusion_stderr, stats=stats)


__all__ = ["log_likelihood", "bits_per_dim", "nats_to_bits_per_dim", "ddpm_bound",
           "discretized_gaussian_log_likelihood", "LikelihoodResult", "BitsPerDimResult", "DDPMBoundResult",
           "DIVERGENCES", "PROBES", "DECODERS", "DDPM_VARIANCES", "DECODER_VARIANCES"]
