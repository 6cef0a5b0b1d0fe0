"""The reverse-time SDE and the probability-flow ODE of a diffusion process and a score model.

For the forward SDE ``dx = f(t) x dt + g(t) dW`` with score ``s(x, t) = ∇ log p_t(x)``, the family

    dx = [f(t) x - (1 + λ²)/2 · g(t)² s(x, t)] dt + λ g(t) dW̄        (integrated from t_max down to t_min)

has the marginals ``p_t`` for every ``λ ≥ 0``: ``λ = 1`` is the reverse-time SDE (Anderson 1982) and
``λ = 0`` the probability-flow ODE (Song et al. 2021, eq. 13). Both are ordinary objects of the generic
SDE layer, so every solver of [`sdekit.solve`][] runs them on a decreasing time grid.
"""

from __future__ import annotations

import torch

from ._utils import bcast, check_positive
from .processes import DiffusionProcess
from .sde import ODE, SDE


def _check(process, model):
    if not isinstance(process, DiffusionProcess):
        raise TypeError(f"process must be a DiffusionProcess, got {type(process).__name__}")
    if not hasattr(model, "score"):
        raise TypeError(f"model must have a score(x, t) method (e.g. a ScoreModel), got {type(model).__name__}")


class ReverseSDE(SDE):
    """``dx = [f x - (1 + λ²)/2 g² score] dt + λ g dW̄`` (additive noise); see the module docstring."""

    def __init__(self, process: DiffusionProcess, model, lambda_: float = 1.0, **cond):
        _check(process, model)
        check_positive(lambda_, "lambda_")
        self.process, self.model, self.lambda_, self.cond = process, model, float(lambda_), cond
        super().__init__(noise_type="additive")

    def drift(self, t, x):
        p = self.process
        coef = (1 + self.lambda_**2) / 2
        return bcast(p.f(t), x) * x - coef * bcast(p.g2(t), x) * self.model.score(x, t, **self.cond)

    def diffusion(self, t, x=None):
        g = self.lambda_ * self.process.g(t)
        return bcast(g, x) if x is not None else g


class ProbabilityFlowODE(ODE):
    """``dx/dt = f(t) x - ½ g(t)² score(x, t)`` (Song et al. 2021, eq. 13)."""

    def __init__(self, process: DiffusionProcess, model, **cond):
        _check(process, model)
        self.process, self.model, self.cond = process, model, cond
        super().__init__()

    def drift(self, t, x: torch.Tensor) -> torch.Tensor:
        p = self.process
        return bcast(p.f(t), x) * x - 0.5 * bcast(p.g2(t), x) * self.model.score(x, t, **self.cond)


def reverse_sde(process: DiffusionProcess, model, lambda_: float = 1.0, **cond) -> SDE:
    """The reverse-time SDE (``lambda_ = 1``), or the λ-family member between it and the PF-ODE.

    ``lambda_ = 0`` returns the probability-flow ODE. ``cond`` is passed to every model call.
    """
    if lambda_ == 0:
        return ProbabilityFlowODE(process, model, **cond)
    return ReverseSDE(process, model, lambda_, **cond)


def probability_flow(process: DiffusionProcess, model, **cond) -> ODE:
    """The probability-flow ODE ``dx/dt = f x - ½ g² score`` of ``process`` under ``model``."""
    return ProbabilityFlowODE(process, model, **cond)
