"""The solver interface: declared orders, supported noise types, evaluations per step.

A solver advances ``x`` from ``t0`` to ``t1`` (either direction) in :meth:`Solver.step`; the one loop
(:func:`sdekit.solve`) owns the time grid, the Brownian path, step-size control and statistics.
"""

from __future__ import annotations

from typing import Any

import torch


class Solver:
    """Base class of every solver.

    Class attributes (the metadata the registry, the tests and the CLI read):
        name: registry name.
        order: order of the deterministic method (ODE order; for SDE schemes the order on an ODE).
        strong_order / weak_order: for general (multiplicative) noise; see :meth:`strong_order_for`.
        noise_types: SDE noise types the solver handles; empty for ODE-only solvers.
        evals_per_step: drift (model) evaluations per step (FSAL reuse already subtracted).
        adaptive: whether :meth:`step` returns an embedded error estimate (usable with a controller).
        needs_levy_area: the step needs the space-time Lévy area of the Brownian increment.
    """

    name: str = ""
    order: float | None = None
    strong_order: float | None = None
    weak_order: float | None = None
    noise_types: tuple[str, ...] = ()
    evals_per_step: int = 1
    adaptive: bool = False
    needs_levy_area: bool = False
    #: the solver's init takes the whole time grid (``init(problem, t0, x0, grid=...)``): multistep samplers
    wants_grid: bool = False
    #: the solver chooses its own steps in log-SNR (``sample`` runs it; a fixed grid does not apply)
    adaptive_lambda: bool = False
    #: evaluations made once before the first step (a first-same-as-last method's first derivative)
    init_evals: int = 0
    #: orders that differ on additive noise (e.g. Euler–Maruyama is strong order 1.0 there)
    additive_strong_order: float | None = None
    additive_weak_order: float | None = None

    def strong_order_for(self, noise_type: str | None) -> float | None:
        if noise_type is None:
            return self.order
        if noise_type == "additive" and self.additive_strong_order is not None:
            return self.additive_strong_order
        return self.strong_order

    def weak_order_for(self, noise_type: str | None) -> float | None:
        if noise_type is None:
            return self.order
        if noise_type == "additive" and self.additive_weak_order is not None:
            return self.additive_weak_order
        return self.weak_order

    @property
    def stochastic(self) -> bool:
        return bool(self.noise_types)

    def check(self, problem) -> None:
        """Raise a clear error if this solver cannot handle ``problem`` (checked when a solve starts)."""
        nt = getattr(problem, "noise_type", None)
        if nt is not None and nt not in self.noise_types:
            allowed = ", ".join(self.noise_types) if self.noise_types else "none (ODE solver)"
            raise ValueError(
                f"solver {self.name!r} cannot handle noise_type={nt!r}; it supports: {allowed}"
            )

    def init(self, problem, t0: float, x0: torch.Tensor) -> Any:
        """Solver state carried between steps (e.g. a first-same-as-last derivative)."""
        return None

    def count_nfe(self, state, n_steps: int) -> int:
        """Model (drift) evaluations of a fixed-grid solve of ``n_steps`` that ended in ``state``."""
        return n_steps * self.evals_per_step + self.init_evals

    def step(self, problem, t0: float, t1: float, x0: torch.Tensor, noise, state):
        """One step. Returns ``(x1, state, error)``; ``error`` is an embedded error estimate or None.

        ``noise`` is ``W(t1) - W(t0)`` (or ``(W, H)`` when :attr:`needs_levy_area`), None for ODEs.
        """
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}()"


#: The one registry of solvers: name -> solver class. Built-in solvers register where they are defined; tests,
#: benchmarks and the CLI derive every list of names from it and from the classes' declared metadata.
REGISTRY: dict[str, type[Solver]] = {}


def register(cls: type[Solver]) -> type[Solver]:
    """Class decorator: add a solver class to :data:`REGISTRY` under ``cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, Solver)):
        raise TypeError(f"register takes a Solver subclass, got {cls!r}")
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"a solver named {cls.name!r} is already registered")
    REGISTRY[cls.name] = cls
    return cls
