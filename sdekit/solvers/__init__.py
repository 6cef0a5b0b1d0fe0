"""The one registry of solvers: name -> solver class. Tests, benchmarks and the CLI read it."""

from __future__ import annotations

from . import consistency, diffusion, langevin, ode, sde  # noqa: F401  (their classes register themselves)
from .base import REGISTRY, Solver, Step, register
from .diffusion import DiffusionSampler
from .ode import ExplicitRK, Tableau


def get(name: str | Solver, **options) -> Solver:
    """A solver instance from its registry name (or pass an instance through)."""
    if isinstance(name, Solver):
        if options:
            raise TypeError("options given together with a solver instance")
        return name
    if not isinstance(name, str):
        raise TypeError(f"solver must be a registry name or a Solver instance, got {type(name).__name__}")
    try:
        cls = REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}; registered: {', '.join(sorted(REGISTRY))}") from None
    return cls(**options)


__all__ = ["REGISTRY", "Solver", "Step", "DiffusionSampler", "ExplicitRK", "Tableau", "get", "register"]
