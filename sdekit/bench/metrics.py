"""Distances between sample sets, with Monte-Carlo standard errors."""

from __future__ import annotations

import math

import torch


def rmse(x: torch.Tensor, ref: torch.Tensor) -> float:
    """sqrt(mean over samples and coordinates of the squared difference)."""
    if x.shape != ref.shape:
        raise ValueError(f"shape mismatch: {tuple(x.shape)} vs {tuple(ref.shape)}")
    return float((x.double() - ref.double()).pow(2).mean().sqrt())


def per_sample_rms(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``(B,)``: each sample's sqrt(mean over its coordinates of the squared difference). The RMSE is the
    root mean square of these; their median shows whether a few samples dominate it."""
    if x.shape != ref.shape:
        raise ValueError(f"shape mismatch: {tuple(x.shape)} vs {tuple(ref.shape)}")
    d = (x.double() - ref.double()).reshape(x.shape[0], -1)
    return d.pow(2).mean(1).sqrt()


def sliced_wasserstein2(x: torch.Tensor, y: torch.Tensor, *, n_projections: int = 256,
                        generator: torch.Generator | None = None) -> tuple[float, float]:
    """Sliced Wasserstein-2 distance between two equally sized sample sets (Bonneel et al. 2015): the square
    root of the mean over random unit directions of the 1-D W2² between the projections (sorted matching).
    Returns ``(sw2, stderr)``, the standard error from the spread over directions (delta method)."""
    if x.shape != y.shape:
        raise ValueError(f"sliced_wasserstein2 needs sample sets of equal shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    xf, yf = x.reshape(x.shape[0], -1).double(), y.reshape(y.shape[0], -1).double()
    d = xf.shape[1]
    theta = torch.randn(d, n_projections, generator=generator, dtype=torch.float64)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, _ = torch.sort(xf @ theta, dim=0)
    py, _ = torch.sort(yf @ theta, dim=0)
    per_dir = (px - py).pow(2).mean(0)  # W2² per direction
    m = float(per_dir.mean())
    se_sq = float(per_dir.std()) / math.sqrt(n_projections)
    sw = math.sqrt(max(m, 0.0))
    return sw, (se_sq / (2 * sw) if sw > 0 else 0.0)
