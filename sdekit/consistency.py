"""Consistency functions: the probability-flow ODE's flow map to the data end, as a model.

A consistency function (Song, Dhariwal, Chen & Sutskever 2023, "Consistency Models", §3) maps any point
``(x_t, t)`` of a probability-flow trajectory to the trajectory's end ``x_{t_end}``; a consistency model is a
network trained to be one. `FlowMapModel` computes it for *any* diffusion model by solving that model's
probability-flow ODE to ``t_end`` in float64 with scipy's DOP853
([`reference_solve`][sdekit.analytic.reference_solve]); for the exact model of a Gaussian mixture
([`GaussianMixture.consistency_model`][sdekit.analytic.GaussianMixture.consistency_model]) the result is the
exact consistency function to the solver's tolerance. It is the ground truth against which the multistep
consistency sampler (``"consistency"`` in the registry) is tested, and it runs that sampler on any model at
the price of one ODE solve per evaluation.
"""

from __future__ import annotations

import torch

from .analytic import reference_solve
from .models import convert
from .reverse import probability_flow

__all__ = ["FlowMapModel"]


class FlowMapModel:
    """The consistency function of ``model``: ``predict(x, t, "x0")`` is the PF-ODE solution from ``(x, t)`` at
    ``t_end``.

    Each prediction is one float64 DOP853 solve of the batch (samples sharing a time are solved together; a
    per-sample ``t`` is grouped by value); the other parameterisations follow from ``x0`` by the exact
    conversions at ``t``. The last call is cached, so asking for several parameterisations of the same
    ``(x, t)`` solves once. At ``t = t_end`` the prediction is ``x`` itself (the boundary condition).

    Args:
        model: a [`ScoreModel`][sdekit.models.ScoreModel] (or anything with ``.process`` and ``.predict``).
        t_end: the data end of the flow map (default ``process.t_domain_min``: 0 for VP, sub-VP and EDM).
        rtol: relative tolerance of the solve (``atol`` the same).
    """

    time_input = "t"

    def __init__(self, model, *, t_end: float | None = None, rtol: float = 1e-10):
        process = getattr(model, "process", None)
        if process is None or not hasattr(model, "predict"):
            raise TypeError(f"model must be a ScoreModel (with .process and .predict), got {type(model).__name__}")
        self.model, self.process = model, process
        self.t_end = float(process.t_domain_min if t_end is None else t_end)
        if not process.t_domain_min <= self.t_end < process.t_max:
            raise ValueError(f"t_end must be in [{process.t_domain_min:g}, {process.t_max:g}), got {self.t_end:g}")
        if not (isinstance(rtol, float) and 0 < rtol < 1):
            raise ValueError(f"rtol must be a float in (0, 1), got {rtol!r}")
        self.rtol = rtol
        self.sample_shape = getattr(model, "sample_shape", None)
        self.nfe = 0
        self._cache: tuple | None = None

    def _flow(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        ode = probability_flow(self.process, self.model, **cond)
        out = torch.empty_like(x)
        for value in torch.unique(t):
            rows = t == value
            start = float(value)
            if start < self.t_end:
                raise ValueError(f"t={start:g} is below the flow map's end t_end={self.t_end:g}")
            xs = x[rows]
            out[rows] = xs if start == self.t_end else reference_solve(
                ode, xs, start, self.t_end, rtol=self.rtol, atol=self.rtol).to(x.dtype)
        return out

    def predict(self, x: torch.Tensor, t, kind: str = "x0", **cond) -> torch.Tensor:
        """The consistency function's prediction of ``kind`` (``"x0"``, ``"eps"``, ``"v"``, ``"score"``) at
        ``(x, t)``; ``t`` a number, 0-d or per-sample ``(B,)`` tensor. Counts one evaluation per solve."""
        t64 = torch.as_tensor(t, dtype=torch.float64).detach().cpu()
        tb = t64.expand(x.shape[0]) if t64.ndim == 0 else t64.reshape(-1)
        c = self._cache
        if c is not None and c[0].shape == x.shape and torch.equal(c[0], x) and torch.equal(c[1], tb) and c[3] == cond:
            x0 = c[2]
        else:
            x0 = self._flow(x.detach(), tb, cond)
            self._cache = (x.detach().clone(), tb.clone(), x0, dict(cond))
            self.nfe += 1
        if kind == "x0":
            return x0
        t_model = t64.to(x.device)
        alpha, sigma = self.process.alpha(t_model), self.process.sigma(t_model)
        return convert(x0, "x0", kind, x, alpha.to(x.dtype), sigma.to(x.dtype))

    def x0(self, x: torch.Tensor, t, **cond) -> torch.Tensor:
        """The flow map to ``t_end``: ``predict(x, t, "x0")``."""
        return self.predict(x, t, "x0", **cond)

    def eps(self, x: torch.Tensor, t, **cond) -> torch.Tensor:
        """``(x - alpha x0)/sigma`` of the flow map: ``predict(x, t, "eps")``."""
        return self.predict(x, t, "eps", **cond)

    def score(self, x: torch.Tensor, t, **cond) -> torch.Tensor:
        """``-eps/sigma`` of the flow map (not the model's score): ``predict(x, t, "score")``."""
        return self.predict(x, t, "score", **cond)

    def __repr__(self) -> str:
        return f"FlowMapModel({self.model!r}, t_end={self.t_end:g}, rtol={self.rtol:g})"
