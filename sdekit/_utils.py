"""Small shared helpers: broadcasting per-sample coefficients, argument checks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

Number = float | int


def as_time(t, *, like: torch.Tensor | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Return ``t`` as a tensor (a 0-d scalar or a per-sample 1-D tensor).

    Python numbers become float64 tensors (on ``like``'s device) so that schedule arithmetic keeps full
    precision; tensors keep their dtype unless ``dtype`` is given.
    """
    if isinstance(t, torch.Tensor):
        out = t
        if like is not None and out.device != like.device:
            out = out.to(like.device)
        if dtype is not None:
            out = out.to(dtype)
        elif not out.is_floating_point():
            out = out.to(torch.float64)
        return out
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise TypeError(f"t must be a float or a torch.Tensor, got {type(t).__name__}")
    device = like.device if like is not None else None
    return torch.tensor(float(t), dtype=dtype or torch.float64, device=device)


def time_like(t: float, x: torch.Tensor) -> torch.Tensor:
    """The time ``t`` as a 0-d tensor in ``x``'s dtype and on ``x``'s device, as torchdiffeq and torchsde hand
    it to user functions. ``torch.full`` launches a fill with ``t`` as a kernel argument: no host-to-device
    copy and no synchronisation on a GPU."""
    return torch.full((), t, dtype=x.dtype, device=x.device)


def bcast(c: torch.Tensor | Number, x: torch.Tensor) -> torch.Tensor | Number:
    """Broadcast a scalar or per-sample coefficient against a batch-first state ``x`` in ``x``'s dtype.

    A 0-d coefficient stays 0-d; a 1-D coefficient of length B becomes (B, 1, ..., 1).
    """
    if not isinstance(c, torch.Tensor):
        return c
    c = c.to(dtype=x.dtype, device=x.device)
    if c.ndim == 0:
        return c
    if c.ndim == 1:
        if x.ndim == 0 or c.shape[0] != x.shape[0]:
            raise ValueError(
                f"per-sample time/coefficient of length {c.shape[0]} does not match the batch size "
                f"{x.shape[0] if x.ndim else '()'} of the state"
            )
        return c.reshape(c.shape[0], *([1] * (x.ndim - 1)))
    return c


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise a ValueError naming ``name`` if ``x`` holds NaN or Inf (this synchronises a GPU)."""
    if not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {n_bad} NaN/Inf value(s)")


def check_positive(value: Number, name: str, *, strict: bool = True) -> None:
    ok = value > 0 if strict else value >= 0
    if not (isinstance(value, (int, float)) and math.isfinite(value) and ok):
        rel = "> 0" if strict else ">= 0"
        raise ValueError(f"{name} must be a finite number {rel}, got {value!r}")


def check_choice(value: str, name: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(repr(a) for a in allowed)}")
