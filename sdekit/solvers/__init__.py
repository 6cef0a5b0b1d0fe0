"""The one registry of solvers: name -> solver class. Tests, benchmarks and the CLI read it."""

from __future__ import annotations

from .base import Solver
from .diffusion import DIFFUSION_SAMPLERS, DiffusionSampler
from .ode import ODE_SOLVERS, ExplicitRK, Tableau
from .sde import SDE_SOLVERS

REGISTRY: dict[str, type[Solver]] = {cls.name: cls for cls in (*SDE_SOLVERS, *ODE_SOLVERS, *DIFFUSION_SAMPLERS)}


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


def register(cls: type[Solver]) -> type[Solver]:
    """Class decorator: add a solver class to :data:`REGISTRY` under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"a solver named {cls.name!r} is already registered")
    REGISTRY[cls.name] = cls
    return cls


__all__ = ["REGISTRY", "Solver", "DiffusionSampler", "ExplicitRK", "Tableau", "get", "register"]
