"""Step-size controllers of the one loop ([`sdekit.solve`][]): a fixed grid, and a PI controller.

A controller decides where each step ends and whether a step is accepted; the loop asks it and nothing else.
Each controller has a step variable: time ``"t"``, or the log-SNR ``"lambda"`` of a diffusion process (the
variable the adaptive DPM-Solver steps in, Lu et al. 2022, §3.4). The step variable of a
`PIController` left at None is the solver's declared ``step_variable``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: the most steps a fixed grid may have (a 10-million-step Python loop is already hours): a tiny ``dt`` is refused
#: before any memory is allocated
MAX_STEPS = 10_000_000

STEP_VARIABLES = ("t", "lambda")
NORMS = ("rms", "max_rms")


class FixedGrid:
    """Every step accepted, from one grid time to the next (the grid is taken as float64 Python floats, once).

    Build it from a 1-D strictly monotone ``ts`` (increasing or decreasing), or from ``t0, t1, dt`` (the
    number of steps rounded up; the grid is uniform).
    """

    adaptive = False
    variable = "t"

    def __init__(self, ts=None, *, t0=None, t1=None, dt=None):
        self.times = _grid(ts, t0, t1, dt)

    def __len__(self):
        return len(self.times) - 1

    def __repr__(self):
        return f"FixedGrid({len(self)} steps, {self.times[0]:g} -> {self.times[-1]:g})"


@dataclass
class PIController:
    """Adaptive step-size controller on the error norm of ``err / (atol + rtol · max(|x0|, |x1|))``.

    ``h_new = h · clip(safety · r^(-(icoeff + pcoeff)/k) · r_prev^(pcoeff/k), factor_min, factor_max)``
    with ``k`` = (order of the embedded estimate) + 1 (Hairer & Wanner, *Solving ODEs II*, §IV.2;
    ``pcoeff = 0`` is the classic I-controller). A step is accepted when ``r <= 1``.

    Args:
        norm: ``"rms"`` (over the whole tensor, as torchdiffeq and diffrax) or ``"max_rms"`` (the RMS of each
            sample, then the largest over the batch: every sample meets the tolerance, DPM-Solver's choice).
        variable: the step variable, ``"t"`` or ``"lambda"`` (log-SNR); None takes the solver's.
        dt0: the first step in the step variable; None picks it by Hairer's rule (``"t"``) or takes 0.05
            (``"lambda"``, the DPM-Solver reference's ``h_init``).
        dt_min: the smallest step size.
        dt_max: the largest step size.
        max_steps: the most attempted steps.
    """

    rtol: float = 1e-5
    atol: float = 1e-5
    pcoeff: float = 0.0
    icoeff: float = 1.0
    safety: float = 0.9
    factor_min: float = 0.2
    factor_max: float = 10.0
    dt0: float | None = None
    dt_min: float = 0.0
    dt_max: float = math.inf
    max_steps: int = 100_000
    norm: str = "rms"
    variable: str | None = None

    adaptive = True

    def __post_init__(self):
        for name in ("rtol", "atol"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.rtol == 0 and self.atol == 0:
            raise ValueError("rtol and atol cannot both be 0")
        if not 0 < self.factor_min < 1 < self.factor_max:
            raise ValueError("need 0 < factor_min < 1 < factor_max")
        if not (isinstance(self.max_steps, int) and self.max_steps > 0):
            raise ValueError(f"max_steps must be a positive int, got {self.max_steps!r}")
        if self.dt0 is not None and not (math.isfinite(self.dt0) and self.dt0 != 0):
            raise ValueError(f"dt0 must be a finite non-zero step size (its sign is ignored: the direction comes "
                             f"from t0 and t1), got {self.dt0!r}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; allowed: {', '.join(NORMS)}")
        if self.variable is not None and self.variable not in STEP_VARIABLES:
            raise ValueError(f"unknown step variable {self.variable!r}; allowed: {', '.join(STEP_VARIABLES)}")

    def error_ratio(self, err: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor) -> float:
        """The scaled error norm ``r`` of a step (one host synchronisation)."""
        scaled = (err / (self.atol + self.rtol * torch.maximum(x0.abs(), x1.abs()))).detach().to(torch.float64)
        if self.norm == "rms" or scaled.ndim == 0:
            return float(torch.sqrt(torch.mean(scaled**2)))
        return float(scaled.reshape(scaled.shape[0], -1).pow(2).mean(-1).sqrt().max())

    def factor(self, ratio: float, prev_ratio: float, order: float) -> float:
        """Step-size factor from this step's error ratio and the previous one (PI rule, clipped to bounds)."""
        if not math.isfinite(ratio):
            return self.factor_min
        k = order + 1
        ratio = max(ratio, 1e-10)
        f = self.safety * ratio ** (-(self.icoeff + self.pcoeff) / k) * max(prev_ratio, 1e-10) ** (self.pcoeff / k)
        return min(self.factor_max, max(self.factor_min, f))


def _grid(ts, t0, t1, dt) -> list[float]:
    if ts is not None:
        if any(v is not None for v in (t0, t1, dt)):
            raise ValueError("give either ts or (t0, t1, dt), not both")
        grid = torch.as_tensor(ts, dtype=torch.float64).detach().cpu()
        if grid.ndim != 1 or grid.numel() < 2:
            raise ValueError(f"ts must be a 1-D grid of at least 2 times, got shape {tuple(grid.shape)}")
        if not bool(torch.isfinite(grid).all()):
            raise ValueError("ts contains NaN/Inf")
        d = grid[1:] - grid[:-1]
        if not (bool((d > 0).all()) or bool((d < 0).all())):
            i = int(torch.nonzero((d <= 0) if d[0] > 0 else (d >= 0))[0])
            raise ValueError(f"ts must be strictly monotone; it is not between index {i} and {i + 1}")
        return grid.tolist()
    if t0 is None or t1 is None or dt is None:
        raise ValueError("give ts, or t0, t1 and dt, or t0, t1 and an adaptive controller")
    t0, t1, dt = float(t0), float(t1), float(dt)
    if not all(math.isfinite(v) for v in (t0, t1, dt)):
        raise ValueError(f"t0, t1 and dt must be finite, got {t0}, {t1}, {dt}")
    if t0 == t1:
        raise ValueError("t0 and t1 must differ")
    if dt == 0 or (t1 - t0) * dt < 0:
        raise ValueError(f"dt={dt} must be non-zero with the sign of t1 - t0 = {t1 - t0:g}")
    n_float = abs(t1 - t0) / abs(dt)
    if not n_float <= MAX_STEPS:
        raise ValueError(f"dt={dt:g} gives {n_float:.3g} steps over [{min(t0, t1):g}, {max(t0, t1):g}]; at most "
                         f"{MAX_STEPS} steps: dt must be at least {abs(t1 - t0) / MAX_STEPS:.3g} in size")
    n = max(1, math.ceil(n_float - 1e-9))
    return torch.linspace(t0, t1, n + 1, dtype=torch.float64).tolist()
