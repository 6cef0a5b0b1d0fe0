"""The solver interface: declared orders, supported noise types, evaluations per step; the `Step`.

A solver is stateless: `Solver.init` makes the state a solve carries between steps, and
`Solver.step` advances ``x`` from ``t0`` to ``t1`` (either direction), returning a `Step`. The one
loop ([`sdekit.solve`][]) owns the time grid or step-size controller, the Brownian path, save-at and the
statistics, and reads nothing from a solver but its declared metadata and the steps it returns (the design
of diffrax's ``AbstractSolver.step``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Step:
    """What one step of a solver returns.

    Attributes:
        x1: the state at ``t1``.
        state: the solver state for the next step (e.g. a first-same-as-last derivative, a multistep history).
            A solver never changes what the state it was given means: after a rejected step the loop retries from
            it. (It may memoise there a value that depends only on the step's start, as the adaptive DPM-Solver
            keeps the model output at ``(t0, x0)``.)
        error: an embedded local error estimate in ``x1``'s shape (adaptive solvers), else None.
        dense: whatever `Solver.interpolate` needs to evaluate the solution inside the step (e.g. the
            Runge–Kutta stages), else None (linear interpolation).
        nfe: drift (model) evaluations this step made; None means the declared ``evals_per_step``.
    """

    x1: torch.Tensor
    state: Any = None
    error: torch.Tensor | None = None
    dense: Any = None
    nfe: int | None = None


class Solver:
    """Base class of every solver.

    Class attributes (the metadata the registry, the tests and the CLI read):
        name: registry name.
        order: order of the deterministic method (ODE order; for SDE schemes the order on an ODE).
        strong_order / weak_order: for general (multiplicative) noise; see `strong_order_for`.
        noise_types: SDE noise types the solver handles; empty for ODE-only solvers.
        evals_per_step: drift (model) evaluations per step (FSAL reuse already subtracted).
        adaptive: whether `step` returns an embedded error estimate (usable with a controller).
        needs_levy_area: the step needs the space-time Lévy area of the Brownian increment.
        step_variable: the variable an adaptive controller steps in: ``"t"`` (time) or ``"lambda"`` (the
            log-SNR of a diffusion process: adaptive diffusion samplers).
        default_controller: the [`PIController`][sdekit.solve.PIController] settings [`sdekit.sample`][] uses when the
            caller gives no grid options (None: the solver runs on a fixed grid unless asked otherwise).
        init_evals: evaluations a fixed-grid solve makes once, at its start (a first-same-as-last method's
            first derivative); reported in the first step's ``nfe``.
        noise_sampler: the step takes its noise as a [`StepNoise`][sdekit.brownian.StepNoise] (drawn on demand,
            possibly more than once a step or inside a fused kernel) instead of the Brownian increment.
        needs_consistency_model: the sampler is correct only with a consistency model (``predict(x, t, "x0")``
            the flow map to the data end), not with an ordinary diffusion model; comparisons and the generic
            diffusion checks leave it out.
    """

    name: str = ""
    order: float | None = None
    strong_order: float | None = None
    weak_order: float | None = None
    noise_types: tuple[str, ...] = ()
    evals_per_step: int = 1
    adaptive: bool = False
    needs_levy_area: bool = False
    step_variable: str = "t"
    default_controller: dict | None = None
    init_evals: int = 0
    noise_sampler: bool = False
    needs_consistency_model: bool = False
    #: orders that differ on additive noise (e.g. Euler–Maruyama is strong order 1.0 there)
    additive_strong_order: float | None = None
    additive_weak_order: float | None = None

    def strong_order_for(self, noise_type: str | None) -> float | None:
        """The declared strong order on ``noise_type`` (the ODE order for None)."""
        if noise_type is None:
            return self.order
        if noise_type == "additive" and self.additive_strong_order is not None:
            return self.additive_strong_order
        return self.strong_order

    def weak_order_for(self, noise_type: str | None) -> float | None:
        """The declared weak order on ``noise_type`` (the ODE order for None)."""
        if noise_type is None:
            return self.order
        if noise_type == "additive" and self.additive_weak_order is not None:
            return self.additive_weak_order
        return self.weak_order

    @property
    def stochastic(self) -> bool:
        """Whether the solver solves SDEs (declares a noise type)."""
        return bool(self.noise_types)

    def check(self, problem) -> None:
        """Raise a clear error if this solver cannot handle ``problem`` (checked when a solve starts)."""
        nt = getattr(problem, "noise_type", None)
        if nt is not None and nt not in self.noise_types:
            allowed = ", ".join(self.noise_types) if self.noise_types else "none (ODE solver)"
            raise ValueError(
                f"solver {self.name!r} cannot handle noise_type={nt!r}; it supports: {allowed}"
            )

    def init(self, problem, t0: float, x0: torch.Tensor, grid: list[float] | None = None,
             f0: torch.Tensor | None = None) -> Any:
        """The state a solve carries between steps, made fresh for every solve.

        ``grid`` is the whole fixed grid (Python floats; None for an adaptive solve): multistep samplers use
        its length. ``f0`` is the drift at ``(t0, x0)`` when the loop has already evaluated it (an adaptive
        solve does, for its first step size): a first-same-as-last method takes it as its first stage.
        """
        return None

    def step(self, problem, t0: float, t1: float, x0: torch.Tensor, noise, state) -> Step:
        """One step from ``t0`` to ``t1``; returns a `Step`.

        ``noise`` is ``W(t1) - W(t0)`` (or ``(W, H)`` when `needs_levy_area`; a
        [`StepNoise`][sdekit.brownian.StepNoise] when `noise_sampler`), None for ODEs.
        """
        raise NotImplementedError

    def interpolate(self, t0: float, t1: float, x0: torch.Tensor, step: Step, t: float) -> torch.Tensor:
        """The solution at ``t`` inside the step ``t0 -> t1`` from ``x0`` (dense output for ``save_at`` in an
        adaptive solve). The default interpolates linearly (first order); methods with dense output override it
        using ``step.dense``."""
        theta = (t - t0) / (t1 - t0)
        return x0 + theta * (step.x1 - x0)

    def __repr__(self):
        return f"{type(self).__name__}()"


#: The one registry of solvers: name -> solver class. Built-in solvers register where they are defined; tests,
#: benchmarks and the CLI derive every list of names from it and from the classes' declared metadata.
REGISTRY: dict[str, type[Solver]] = {}


def register(cls: type[Solver]) -> type[Solver]:
    """Class decorator: add a solver class to `REGISTRY` under ``cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, Solver)):
        raise TypeError(f"register takes a Solver subclass, got {cls!r}")
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"a solver named {cls.name!r} is already registered")
    REGISTRY[cls.name] = cls
    return cls
