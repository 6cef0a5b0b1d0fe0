"""Noise sources for testing solvers: exact weak moments by impulses, and wrappers of a Brownian path.

**Exact weak moments.** On a linear SDE with additive noise every usual scheme is *affine* in the noise it is
fed: after ``n`` steps ``X_n = m + Σ_i L_i ξ_i``, where the ``ξ_i`` are the Brownian increments (and Lévy
areas) of all steps and coordinates, independent Gaussians with known variances. Feeding one unit impulse per
sample (`ImpulseNoise`) reads off ``m`` (the sample with no impulse) and every response ``L_i``, so the
scheme's mean ``m`` and covariance ``Σ_i L_i L_iᵀ Var ξ_i`` come out exactly: no Monte-Carlo error, and weak
errors as small as 1e-10 are measurable. `exact_moments` does this and first verifies that the scheme
really is affine in its noise (random noise must give ``m + Σ L_i ξ_i``); `NotAffineError` otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..solve import solve

F64 = torch.float64


class NotAffineError(ValueError):
    """The solver's result is not an affine function of its noise inputs on this problem."""


class _GridNoise:
    """Shared: locate the step of a query ``(s, t)`` on a known grid."""

    levy_area = True

    def __init__(self, grid):
        self.grid = torch.as_tensor(grid, dtype=F64).reshape(-1).tolist()
        if len(self.grid) < 2:
            raise ValueError("the grid needs at least two times")
        self.n_steps = len(self.grid) - 1
        self._step_of = {t: k for k, t in enumerate(self.grid[:-1])}

    def step_index(self, s, t) -> int:
        s = float(s)
        k = self._step_of.get(s)
        if k is None:  # not bit-identical: nearest grid point, if close
            k = min(range(self.n_steps), key=lambda j: abs(self.grid[j] - s))
            if abs(self.grid[k] - s) > 1e-9 * (abs(self.grid[-1] - self.grid[0]) + 1e-300):
                raise ValueError(f"noise queried at s={s:g}, which is not a time of the grid it was built for")
        if abs(float(t) - self.grid[k + 1]) > 1e-9 * (abs(self.grid[-1] - self.grid[0]) + 1e-300):
            raise ValueError(f"noise queried on ({s:g}, {float(t):g}), which is not step {k} of its grid")
        return k


class ImpulseNoise(_GridNoise):
    """A noise source for [`sdekit.solve`][] that gives sample ``0`` no noise and every other sample one unit
    impulse: ``ΔW`` or the Lévy area ``H`` of one Brownian coordinate at one step.

    Sample ``1 + (2 k + j) m + c`` receives ``scale`` in component ``j`` (0: ``ΔW``, 1: ``H``) of Brownian
    coordinate ``c`` at step ``k`` (``m`` coordinates per sample). Solve with `expand` ``(x0)`` as the
    initial state (``batch`` copies of one sample), then `moments` turns the result into the scheme's
    exact mean and covariance, provided the scheme is affine in its noise (see `exact_moments`).

    Args:
        grid: the time grid of the solve (increasing or decreasing).
        noise_shape: shape of one sample's Brownian increment: ``problem.brownian_shape(x.shape)[1:]``
            (``()`` for scalar noise).
        scale: the impulse size.
    """

    def __init__(self, grid: torch.Tensor | Sequence[float], noise_shape: tuple[int, ...] = (1,), *, scale: float = 1.0,
                 dtype: torch.dtype = F64, device: torch.device | str | None = None):
        super().__init__(grid)
        self.noise_shape = tuple(noise_shape)
        self.m = math.prod(self.noise_shape)
        self.batch = 1 + 2 * self.n_steps * self.m
        self.scale, self.dtype, self.device = float(scale), dtype, device

    def _unit(self, k: int, j: int) -> torch.Tensor:
        out = torch.zeros(self.batch, self.m, dtype=self.dtype, device=self.device)
        first = 1 + (2 * k + j) * self.m
        idx = torch.arange(self.m)
        out[first + idx, idx] = self.scale
        return out.reshape(self.batch, *self.noise_shape)

    def __call__(self, s, t) -> torch.Tensor:
        return self._unit(self.step_index(s, t), 0)

    def levy(self, s, t) -> tuple[torch.Tensor, torch.Tensor]:
        """The impulses of the step ``(s, t)``: ``(ΔW, H)``."""
        k = self.step_index(s, t)
        return self._unit(k, 0), self._unit(k, 1)

    def expand(self, x0: torch.Tensor) -> torch.Tensor:
        """``batch`` copies of one initial sample (``x0`` of shape ``(1, *S)`` or ``S``)."""
        x0 = x0 if x0.shape[:1] == (1,) else x0.unsqueeze(0)
        return x0.expand(self.batch, *x0.shape[1:]).clone()

    def variances(self) -> torch.Tensor:
        """``Var ξ`` of every impulse, in sample order: ``|h_k|`` for ``ΔW``, ``|h_k|/12`` for ``H``."""
        h = torch.tensor(self.grid, dtype=F64).diff().abs()
        per = torch.stack([h, h / 12], 1)  # (n, 2)
        return per[:, :, None].expand(self.n_steps, 2, self.m).reshape(-1)

    def responses(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(m, L)``: the no-noise result ``(D,)`` and the responses ``(n_impulses, D)`` (per unit impulse)."""
        flat = x.to(F64).reshape(self.batch, -1)
        return flat[0], (flat[1:] - flat[0]) / self.scale

    def moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``(*S)`` and covariance ``(D, D)`` of the scheme's result, from the solve's output ``x``."""
        mean, resp = self.responses(x)
        cov = resp.T @ (self.variances()[:, None] * resp)
        return mean.reshape(x.shape[1:]), cov


class SequenceNoise(_GridNoise):
    """Replays given increments (and Lévy areas) step by step: ``dw[k]``, ``area[k]`` for step ``k``."""

    def __init__(self, grid, dw: torch.Tensor, area: torch.Tensor | None = None):
        super().__init__(grid)
        self.dw, self.area = dw, area if area is not None else torch.zeros_like(dw)

    def __call__(self, s, t):
        return self.dw[self.step_index(s, t)]

    def levy(self, s, t):
        """The given ``(ΔW, H)`` of the step ``(s, t)``."""
        k = self.step_index(s, t)
        return self.dw[k], self.area[k]


def exact_moments(problem, solver, x0: torch.Tensor, grid, *, verify: bool = True, seed: int = 0,
                  rtol: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact mean ``(*S)`` and covariance ``(D, D)`` of ``solver``'s result on ``grid`` from one initial
    sample ``x0`` (shape ``(1, *S)``), for a problem on which the solver is affine in its noise (a linear SDE
    with additive noise, for the usual schemes). The drift must act on each sample independently.

    With ``verify`` (default) three random noise sequences are solved too and must equal ``m + Σ L_i ξ_i`` to
    ``rtol`` (relative to the size of the responses); `NotAffineError` otherwise.
    """
    if problem.is_ode:
        raise ValueError("exact_moments needs an SDE")
    x0 = x0 if x0.shape[:1] == (1,) else x0.unsqueeze(0)
    noise_shape = tuple(problem.brownian_shape(tuple(x0.shape))[1:])
    imp = ImpulseNoise(grid, noise_shape, dtype=x0.dtype, device=x0.device)
    x = solve(problem, imp.expand(x0), solver, ts=imp.grid, brownian=imp).x
    mean, resp = imp.responses(x)
    if verify:
        n_check = 3
        g = torch.Generator().manual_seed(int(seed))
        xi = torch.randn(n_check, resp.shape[0], generator=g, dtype=F64) * imp.variances().sqrt()
        # xi in impulse order (step, component, coordinate) -> per-step (dw, area) tensors of (n_check, *noise)
        per = xi.reshape(n_check, imp.n_steps, 2, imp.m).permute(1, 2, 0, 3)
        dw = per[:, 0].reshape(imp.n_steps, n_check, *noise_shape).to(x0.dtype)
        area = per[:, 1].reshape(imp.n_steps, n_check, *noise_shape).to(x0.dtype)
        got = solve(problem, x0.expand(n_check, *x0.shape[1:]).clone(), solver, ts=imp.grid,
                    brownian=SequenceNoise(imp.grid, dw, area)).x.to(F64).reshape(n_check, -1)
        want = mean + xi @ resp
        scale = float((xi.abs() @ resp.abs()).max()) + float(mean.abs().max()) + 1e-300
        err = float((got - want).abs().max())
        if not err <= rtol * scale:
            raise NotAffineError(
                f"solver {getattr(solver, 'name', solver)!r} is not affine in its noise on this problem: random "
                f"noise gives a result {err:.3g} away from the impulse prediction (scale {scale:.3g})")
    return mean.reshape(x0.shape[1:]), resp.T @ (imp.variances()[:, None] * resp)


class MirrorNoise:
    """The increments of ``source`` seen from reflected time ``s -> -s`` (for time-reversal checks): the
    query ``(s, t)`` returns ``source(-s, -t)``; Lévy areas likewise."""

    def __init__(self, source):
        self.source = source
        self.levy_area = bool(getattr(source, "levy_area", False))

    def __call__(self, s, t):
        return self.source(-float(s), -float(t))

    def levy(self, s, t):
        """The source's ``(ΔW, H)`` on the reflected step ``(-s, -t)``."""
        return self.source.levy(-float(s), -float(t))


class CastNoise:
    """The increments of ``source`` cast to ``dtype`` (one float64 path shared by float32 and float64 solves)."""

    def __init__(self, source, dtype):
        self.source, self.dtype = source, dtype
        self.levy_area = bool(getattr(source, "levy_area", False))

    def __call__(self, s, t):
        return self.source(s, t).to(self.dtype)

    def levy(self, s, t):
        """The source's ``(ΔW, H)`` cast to this noise's dtype."""
        w, h = self.source.levy(s, t)
        return w.to(self.dtype), h.to(self.dtype)


class PaddedNoise:
    """The increments of ``source`` with ``pad`` zero coordinates appended on the last dimension (the noise of
    an augmented state whose extra coordinates carry no noise)."""

    def __init__(self, source, pad: int = 1):
        self.source, self.pad = source, int(pad)
        self.levy_area = bool(getattr(source, "levy_area", False))

    def _pad(self, w):
        return torch.cat([w, torch.zeros(*w.shape[:-1], self.pad, dtype=w.dtype, device=w.device)], -1)

    def __call__(self, s, t):
        return self._pad(self.source(s, t))

    def levy(self, s, t):
        """The source's ``(ΔW, H)``, padded to the larger Brownian shape."""
        w, h = self.source.levy(s, t)
        return self._pad(w), self._pad(h)


class RecordingNoise:
    """Passes ``source``'s increments through and remembers them (``.calls``: list of ``(s, t)``)."""

    def __init__(self, source):
        self.source = source
        self.levy_area = bool(getattr(source, "levy_area", False))
        self.calls: list[tuple[float, float]] = []

    def __call__(self, s, t):
        self.calls.append((float(s), float(t)))
        return self.source(s, t)

    def levy(self, s, t):
        """The source's ``(ΔW, H)``; the query is recorded in ``calls``."""
        self.calls.append((float(s), float(t)))
        return self.source.levy(s, t)
