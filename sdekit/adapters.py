"""Adapters that turn networks trained elsewhere into [`ScoreModel`][sdekit.models.ScoreModel] objects.

`from_diffusers` wraps a diffusers ``UNet2DModel`` (or any module called as
``unet(sample, timestep, **cond)`` returning ``.sample``, a tuple or a tensor) trained on a discrete DDPM
schedule. The process is ``VP.from_alphas_cumprod`` of that schedule, made continuous as in DPM-Solver
(``t_i = (i + 1)/N``), and the network receives the DDPM index ``i = N t - 1`` (``time_input="index"``):
an integer index gives exactly the UNet's own output at that timestep; a time between grid points passes a
fractional float index through, which diffusers' sinusoidal timestep embedding accepts.

diffusers is not imported here: a scheduler is read through its ``config`` (and its ``alphas_cumprod``
tensor, when it has one), so the adapter works with any object or dict that follows that convention.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from .models import ScoreModel
from .processes import VP
from .schedules import DiscreteSchedule

__all__ = ["DiffusersNet", "PREDICTION_TYPES", "from_diffusers", "scheduler_alphas_cumprod", "scheduler_process"]

#: diffusers' ``prediction_type`` -> sdekit's ``prediction``.
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


class DiffusersNet(nn.Module):
    """``net(x, t_in, **cond) = unet(x, t_in, **cond).sample``: diffusers' call convention as sdekit's.

    ``t_in`` is the (B,) tensor of DDPM indices that [`ScoreModel`][sdekit.models.ScoreModel] passes (float;
    fractional between grid points). ``cond`` goes to the UNet unchanged (e.g. ``class_labels=...``).
    """

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t_in: torch.Tensor, **cond) -> torch.Tensor:
        out = self.unet(x, t_in, **cond)
        if isinstance(out, torch.Tensor):
            return out
        if hasattr(out, "sample"):
            return out.sample
        if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
            return out[0]
        raise TypeError(f"the UNet returned {type(out).__name__}; expected a tensor, a tuple or an object with .sample")


def _config(scheduler) -> Mapping:
    if scheduler is None:
        return {}
    if isinstance(scheduler, Mapping):
        return scheduler
    config = getattr(scheduler, "config", None)
    if isinstance(config, Mapping):
        return config
    raise TypeError(f"scheduler must be a diffusers scheduler (with .config) or a config dict, "
                    f"got {type(scheduler).__name__}")


def _betas_from_config(config: Mapping) -> torch.Tensor:
    """Betas of a diffusers-style scheduler config, computed from its documented schedule formulas in float64."""
    if config.get("trained_betas") is not None:
        return torch.as_tensor(config["trained_betas"], dtype=torch.float64)
    n = int(config.get("num_train_timesteps", 1000))
    start, end = float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02))
    kind = config.get("beta_schedule", "linear")
    if kind == "linear":
        return torch.linspace(start, end, n, dtype=torch.float64)
    if kind == "scaled_linear":  # linear in sqrt(beta) (latent diffusion)
        return torch.linspace(math.sqrt(start), math.sqrt(end), n, dtype=torch.float64) ** 2
    if kind == "squaredcos_cap_v2":  # Nichol & Dhariwal (2021): betas from alpha_bar(t) = cos²(...), capped at 0.999
        def alpha_bar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)]
        return torch.tensor(betas, dtype=torch.float64)
    raise ValueError(f"unsupported beta_schedule {kind!r}; supported: linear, scaled_linear, squaredcos_cap_v2, "
                     "or pass betas/alphas_cumprod explicitly")


def scheduler_alphas_cumprod(scheduler) -> torch.Tensor:
    """The ``alphas_cumprod`` (float64) of a diffusers scheduler object or config dict.

    A scheduler object's own ``alphas_cumprod`` tensor is used as it is (so sdekit's process has exactly
    the scheduler's float32 values, which a step-for-step comparison needs); a config is turned into betas
    by its ``beta_schedule`` and multiplied out in float64.
    """
    own = getattr(scheduler, "alphas_cumprod", None)
    if isinstance(own, torch.Tensor):
        return own.detach().to("cpu", torch.float64)
    return torch.cumprod(1 - _betas_from_config(_config(scheduler)), 0)


def scheduler_process(scheduler) -> VP:
    """``VP.from_alphas_cumprod`` of a diffusers scheduler (see `scheduler_alphas_cumprod`)."""
    return _process(scheduler_alphas_cumprod(scheduler))


def _process(alphas_cumprod: torch.Tensor) -> VP:
    ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    if ac.ndim == 1 and ac.numel() and float(ac[-1]) <= 0:
        raise ValueError("the schedule ends at alphas_cumprod = 0 (zero terminal SNR); the VP process needs "
                         "sigma < 1 at every step: clip the last value below 1 - 1e-6 or drop the last step")
    return VP(DiscreteSchedule(ac))


def from_diffusers(unet: nn.Module, betas: torch.Tensor | None = None, alphas_cumprod: torch.Tensor | None = None,
                   prediction_type: str | None = None, scheduler: object | None = None, *,
                   sample_shape: tuple[int, ...] | None = None) -> ScoreModel:
    """Wrap a diffusers-style UNet and its noise schedule into a [`ScoreModel`][sdekit.models.ScoreModel].

    Args:
        unet: ``unet(sample, timestep, **cond)`` returning ``.sample`` (``UNet2DModel``), a tuple or a tensor.
        betas: the training betas ``beta_0..beta_{N-1}``; or
        alphas_cumprod: their cumulative products (give at most one of the two); else read from ``scheduler``.
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"`` (diffusers' names; sdekit's
            ``"eps"``, ``"v"``, ``"x0"`` are accepted too); default the scheduler's, else ``"epsilon"``.
        scheduler: a diffusers scheduler or its config dict, to read the schedule and prediction type from.
        sample_shape: one sample's shape; default ``(in_channels, sample_size, sample_size)`` from
            ``unet.config`` where it has them.

    Returns:
        a ScoreModel on ``VP.from_alphas_cumprod(...)`` with ``time_input="index"``.
    """
    if not callable(unet):
        raise TypeError(f"unet must be a callable module, got {type(unet).__name__}")
    if betas is not None and alphas_cumprod is not None:
        raise ValueError("give betas or alphas_cumprod, not both")
    if betas is not None:
        b = torch.as_tensor(betas, dtype=torch.float64)
        process = _process(DiscreteSchedule.from_betas(b).alphas_cumprod)
    elif alphas_cumprod is not None:
        process = _process(torch.as_tensor(alphas_cumprod, dtype=torch.float64))
    elif scheduler is not None:
        process = scheduler_process(scheduler)
    else:
        raise ValueError("from_diffusers needs the training schedule: pass betas, alphas_cumprod or scheduler")
    if prediction_type is None:
        prediction_type = _config(scheduler).get("prediction_type", "epsilon")
    if prediction_type in PREDICTION_TYPES:
        prediction = PREDICTION_TYPES[prediction_type]
    elif prediction_type in PREDICTION_TYPES.values():
        prediction = prediction_type
    else:
        raise ValueError(f"unsupported prediction_type {prediction_type!r}; supported: "
                         f"{', '.join(repr(k) for k in PREDICTION_TYPES)}")
    if sample_shape is None:
        config = getattr(unet, "config", None)
        channels = getattr(config, "in_channels", None) if config is not None else None
        size = getattr(config, "sample_size", None) if config is not None else None
        if isinstance(channels, int) and size is not None:
            hw = (size, size) if isinstance(size, int) else tuple(size)
            sample_shape = (channels, *hw)
    net = unet if isinstance(unet, DiffusersNet) else DiffusersNet(unet)
    return ScoreModel(net, process, prediction, "index", sample_shape=sample_shape)
