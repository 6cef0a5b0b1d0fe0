"""Explicit Runge–Kutta methods as float64 Butcher tableaux run by one generic stepper.

Each tableau is data: nodes ``c``, matrix ``a`` (strictly lower triangular), weights ``b`` and, for
embedded pairs, the error weights ``b - b̂``. First-same-as-last (FSAL) tableaux reuse their last stage as
the next step's first. Coefficients from Hairer, Nørsett & Wanner, *Solving ODEs I* (Euler, midpoint,
Heun, Ralston, RK4), Bogacki & Shampine 1989 (Bosh3), and Dormand & Prince 1980 (Dopri5) with the dense
output of Hairer's ``DOPRI5`` code (order 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._utils import time_like
from .base import Solver, Step, register


@dataclass(frozen=True)
class Tableau:
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    b_err: tuple[float, ...] | None = None  # b - b_hat (embedded error weights)
    fsal: bool = False

    def __post_init__(self):
        """Validate the tableau: shapes, row sums ``sum_j a_ij = c_i`` (every stage is consistent), weights
        summing to 1 (order >= 1), error weights summing to 0 (the embedded method is consistent too), and a
        first-same-as-last last row equal to ``b`` at ``c = 1``."""
        s = len(self.c)
        if len(self.a) != s or len(self.b) != s or any(len(row) != i for i, row in enumerate(self.a)):
            raise ValueError("inconsistent Butcher tableau shapes (a must be strictly lower triangular)")
        tol = 1e-12
        for i, (ci, row) in enumerate(zip(self.c, self.a)):
            if abs(sum(row) - ci) > tol:
                raise ValueError(f"Butcher tableau row {i} sums to {sum(row)!r}, not c[{i}] = {ci!r}")
        if abs(sum(self.b) - 1.0) > tol:
            raise ValueError(f"Butcher tableau weights b sum to {sum(self.b)!r}, not 1")
        if self.b_err is not None:
            if len(self.b_err) != s:
                raise ValueError(f"b_err has {len(self.b_err)} entries for {s} stages")
            if abs(sum(self.b_err)) > tol:
                raise ValueError(f"error weights b_err sum to {sum(self.b_err)!r}, not 0")
        if self.fsal and (self.c[-1] != 1.0 or any(abs(x - y) > tol for x, y in zip(self.a[-1], self.b))
                          or self.b[-1] != 0.0):
            raise ValueError("a first-same-as-last tableau needs c[-1] = 1, a[-1] = b[:-1] and b[-1] = 0")


def _t(rows):
    return tuple(tuple(float(v) for v in r) for r in rows)


EULER = Tableau(c=(0.0,), a=((),), b=(1.0,))
MIDPOINT = Tableau(c=(0.0, 0.5), a=_t([[], [0.5]]), b=(0.0, 1.0))
HEUN2 = Tableau(c=(0.0, 1.0), a=_t([[], [1.0]]), b=(0.5, 0.5))
RALSTON = Tableau(c=(0.0, 2 / 3), a=_t([[], [2 / 3]]), b=(0.25, 0.75))
RK4 = Tableau(c=(0.0, 0.5, 0.5, 1.0), a=_t([[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]]), b=(1 / 6, 1 / 3, 1 / 3, 1 / 6))
BOSH3 = Tableau(
    c=(0.0, 0.5, 0.75, 1.0),
    a=_t([[], [0.5], [0.0, 0.75], [2 / 9, 1 / 3, 4 / 9]]),
    b=(2 / 9, 1 / 3, 4 / 9, 0.0),
    b_err=(2 / 9 - 7 / 24, 1 / 3 - 1 / 4, 4 / 9 - 1 / 3, -1 / 8),
    fsal=True,
)
_DP_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_DP_BHAT = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)
DOPRI5 = Tableau(
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=_t([
        [],
        [1 / 5],
        [3 / 40, 9 / 40],
        [44 / 45, -56 / 15, 32 / 9],
        [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
        [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
        list(_DP_B[:6]),
    ]),
    b=_DP_B,
    b_err=tuple(b - bh for b, bh in zip(_DP_B, _DP_BHAT)),
    fsal=True,
)
# Dense output of DOPRI5 (Hairer's contd5): y(θ) = y0 + θ(r2 + (1-θ)(r3 + θ(r4 + (1-θ) r5)))
_DP_DENSE = (-12715105075 / 11282082432, 0.0, 87487479700 / 32700410799, -10690763975 / 1880347072,
             701980252875 / 199316789632, -1453857185 / 822651844, 69997945 / 29380423)

class ExplicitRK(Solver):
    """Generic explicit Runge–Kutta stepper over a float64 `Tableau`."""

    tableau: Tableau

    def __init_subclass__(cls, **kwargs):
        # the metadata follows from the tableau, on the class (readable without an instance)
        super().__init_subclass__(**kwargs)
        tab = cls.__dict__.get("tableau")
        if tab is not None:
            cls.evals_per_step = len(tab.c) - (1 if tab.fsal else 0)
            cls.adaptive = tab.b_err is not None
            cls.init_evals = 1 if tab.fsal else 0

    def init(self, problem, t0, x0, grid=None, f0=None):
        return f0  # the first-same-as-last derivative at the current point (None: the step evaluates it)

    def step(self, problem, t0, t1, x0, noise, state):
        tab, h = self.tableau, t1 - t0
        f = problem.drift
        nfe = len(tab.c) - 1
        if state is None or not tab.fsal:
            state, nfe = f(time_like(t0, x0), x0), nfe + 1
        k = [state]
        for i in range(1, len(tab.c)):
            xi = x0 + _weighted(tab.a[i], k, h)  # sum the stage increment first: one rounding onto x0
            if tab.fsal and i == len(tab.c) - 1:
                x1 = xi  # last stage evaluates at the solution
            k.append(f(time_like(t0 + tab.c[i] * h, x0), xi))
        if not tab.fsal:
            x1 = x0 + _weighted(tab.b, k, h)
        err = None
        if tab.b_err is not None:
            for ei, ki in zip(tab.b_err, k):
                if ei != 0.0:
                    err = ki * (h * ei) if err is None else err.add(ki, alpha=h * ei)
        return Step(x1, state=k[-1] if tab.fsal else None, error=err, dense=tuple(k), nfe=nfe)

    def interpolate(self, t0, t1, x0, step, t):
        """Dense output: cubic Hermite from both end points and derivatives (order 3) for first-same-as-last
        tableaux (the end derivative is the last stage); linear otherwise (no end derivative without another
        evaluation)."""
        if not self.tableau.fsal:
            return super().interpolate(t0, t1, x0, step, t)
        k, x1 = step.dense, step.x1
        h = t1 - t0
        th = (t - t0) / h
        h00, h10 = (1 + 2 * th) * (1 - th) ** 2, th * (1 - th) ** 2
        h01, h11 = th * th * (3 - 2 * th), th * th * (th - 1)
        return h00 * x0 + h10 * h * k[0] + h01 * x1 + h11 * h * k[-1]


def _weighted(coeffs, ks, h):
    """``h · sum_j c_j k_j`` over the non-zero coefficients."""
    acc = None
    for c, kj in zip(coeffs, ks):
        if c != 0.0:
            acc = kj * (h * c) if acc is None else acc.add(kj, alpha=h * c)
    return acc if acc is not None else torch.zeros_like(ks[0])


@register
class Euler(ExplicitRK):
    """Forward Euler: order 1, 1 evaluation per step."""

    name, order, tableau = "euler", 1.0, EULER


@register
class Midpoint(ExplicitRK):
    """Explicit midpoint rule: order 2, 2 evaluations per step."""

    name, order, tableau = "midpoint", 2.0, MIDPOINT


@register
class Heun(ExplicitRK):
    """Heun's method (explicit trapezoid, RK2): order 2, 2 evaluations per step."""

    name, order, tableau = "heun", 2.0, HEUN2


@register
class Ralston(ExplicitRK):
    """Ralston's RK2 (minimum error bound, Ralston 1962): order 2, 2 evaluations per step."""

    name, order, tableau = "ralston", 2.0, RALSTON


@register
class RK4Solver(ExplicitRK):
    """The classical Runge–Kutta method: order 4, 4 evaluations per step."""

    name, order, tableau = "rk4", 4.0, RK4


@register
class Bosh3(ExplicitRK):
    """Bogacki–Shampine 3(2) (Bogacki & Shampine 1989): order 3 with an embedded order-2 error estimate,
    first-same-as-last (3 evaluations per step)."""

    name, order, tableau = "bosh3", 3.0, BOSH3


@register
class Dopri5(ExplicitRK):
    """Dormand–Prince 5(4) (Dormand & Prince 1980): order 5 with an embedded order-4 error estimate, FSAL
    (6 evaluations per step), and Hairer's order-4 dense output for ``save_at``."""

    name = "dopri5"
    tableau = DOPRI5
    order = 5.0

    def interpolate(self, t0, t1, x0, step, t):
        k, x1 = step.dense, step.x1
        h = t1 - t0
        th = (t - t0) / h
        r2 = x1 - x0
        r3 = h * k[0] - r2
        r4 = r2 - h * k[6] - r3
        r5 = None
        for di, ki in zip(_DP_DENSE, k):
            if di != 0.0:
                r5 = ki * (h * di) if r5 is None else r5.add(ki, alpha=h * di)
        return x0 + th * (r2 + (1 - th) * (r3 + th * (r4 + (1 - th) * r5)))
