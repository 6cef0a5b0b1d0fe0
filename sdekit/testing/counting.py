"""A problem wrapper that counts (and remembers) every drift and diffusion evaluation."""

from __future__ import annotations

import torch

from ..sde import SDE


class CountingProblem(SDE):
    """Wraps an [`SDE`][sdekit.sde.SDE]/ODE and counts evaluations: ``n_drift``, ``n_diffusion``, and the
    times of the drift evaluations in ``drift_times`` (floats; per-sample times are recorded by their first
    entry). Everything else (noise type, ``g_dw``, ``diffusion_jvp``, ``brownian_shape``, extra attributes
    such as ``model``/``process`` of diffusion problems) is the wrapped problem's.

    Example::

        counted = CountingProblem(problem)
        sol = sdekit.solve(counted, x0, solver, ts=grid)
        assert counted.n_drift == sol.stats["nfe"]
    """

    def __init__(self, inner: SDE):
        # not SDE.__init__: the wrapper has no callables of its own; it delegates
        self.inner = inner
        self.noise_type = inner.noise_type
        self.brownian_size = inner.brownian_size
        self._drift = self._diffusion = self._diffusion_jvp = None
        self.reset()

    def reset(self) -> None:
        """Set the counts to zero."""
        self.n_drift = 0
        self.n_diffusion = 0
        self.drift_times: list[float] = []

    def drift(self, t, x):
        self.n_drift += 1
        tt = t if isinstance(t, torch.Tensor) else torch.as_tensor(t)
        self.drift_times.append(float(tt.reshape(-1)[0]) if tt.numel() else float("nan"))
        return self.inner.drift(t, x)

    def diffusion(self, t, x=None):
        self.n_diffusion += 1
        return self.inner.diffusion(t, x)

    def _has_diffusion(self) -> bool:
        return not self.inner.is_ode

    def diffusion_jvp(self, t, x, v):
        return self.inner.diffusion_jvp(t, x, v)

    def g_dw(self, g, dw, x):
        return self.inner.g_dw(g, dw, x)

    def brownian_shape(self, state_shape):
        return self.inner.brownian_shape(state_shape)

    def __getattr__(self, name):  # only reached for attributes the wrapper lacks (model, process, ...)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self):
        return f"CountingProblem({self.inner!r}, n_drift={self.n_drift})"
