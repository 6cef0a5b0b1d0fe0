"""Training score networks by denoising score matching, and the data sets that need no download.

**Loss.** With ``x_t = alpha(t) x0 + sigma(t) eps`` the DDPM simple loss (Ho et al. 2020) is
``L = E_{t, x0, eps} ||eps_theta(x_t, t) - eps||²`` with ``t`` uniform on ``[t_min, t_max]`` (continuous time)
or a uniform integer index (``time_input="index"``, a discrete schedule). Networks predicting ``x0`` or
``v`` are trained on the same loss expressed in their own output (``weighting="eps"``, the default), since
the errors are proportional at fixed ``(x_t, t)``:

- x0: ``eps_hat - eps = -(alpha/sigma)(x0_hat - x0)``, so ``||eps_hat - eps||² = SNR · ||x0_hat - x0||²`` with
  ``SNR = alpha²/sigma²``. SNR grows without bound as ``t -> 0`` (1e4 at ``t = 1e-3`` on the linear VP), so
  the weight is clipped at ``snr_clip`` (default 100): the loss equals ``L`` wherever ``SNR <= snr_clip``.
- v: ``eps = (sigma x + alpha v)/(alpha² + sigma²)``, so ``eps_hat - eps = alpha/(alpha² + sigma²) (v_hat - v)``
  and ``||eps_hat - eps||² = alpha²/(alpha² + sigma²)² · ||v_hat - v||²`` (``= alpha² ||v_hat - v||²`` for VP;
  bounded, no clipping). Conversely the plain v-MSE is ``(1 + SNR) ·`` the x0-MSE and ``(1 + 1/SNR) ·`` the
  eps-MSE on VP.

``weighting="target"`` is the plain MSE on the network's own target instead (for v on VP, the "SNR + 1"
weighting of Salimans & Ho 2022 in x0 units). The reported loss is always the weighted per-coordinate mean.

**Class conditioning.** Given labels, each label is replaced by the null class with probability
``p_uncond`` so that the network also learns the unconditional score (classifier-free guidance).

**Reproducibility.** One ``torch.Generator`` seeded from ``seed`` draws every minibatch, time, noise and
label drop; the global RNG is never touched. A checkpoint (``.pt``: weights, EMA, optimiser, generator state,
step, losses) resumes a run exactly where it stopped: an interrupted run continued from its checkpoint ends
with the same weights as an uninterrupted one.

**Latent diffusion** (Rombach et al. 2022). `train_autoencoder` fits an [`Autoencoder`][sdekit.nets.Autoencoder]
by reconstruction MSE and standardises its latents; a recipe with an ``autoencoder`` entry trains one first,
encodes the training images and trains the score network on the latents (``digits-latent-vp-eps``).

**Recipes.** `RECIPES` holds how each shipped checkpoint is made (data, architecture, process, training
settings) and `train_recipe` trains one and saves it to the zoo. The data sets live in [`sdekit.data`][]
(`toy_data`, `digits` are re-exported here).
"""

from __future__ import annotations

import copy
import math
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ._utils import check_choice
from .data import DIGITS_TEST_SIZE, TOY_DATASETS, digits, toy_data  # noqa: F401  (re-exported)
from .models import ScoreModel
from .nets import build
from .processes import DiffusionProcess, process_from_spec

__all__ = [
    "DIGITS_TEST_SIZE",
    "RECIPES",
    "AutoencoderResult",
    "Recipe",
    "TOY_DATASETS",
    "TrainConfig",
    "TrainResult",
    "diffusion_loss",
    "digits",
    "sample_times",
    "toy_data",
    "train",
    "train_autoencoder",
    "train_recipe",
]

# ----------------------------------------------------------------------------------------------------
# Loss
# ----------------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Settings of `train` (all recorded in a zoo checkpoint's sidecar).

    ``t_min``/``t_max`` default to the process's sampling range; ``time_input="index"`` draws integer
    indices instead. ``warmup_steps`` ramps the learning rate linearly, then ``lr_schedule`` keeps it
    (``"constant"``) or decays it to 0 along a half cosine (``"cosine"``); ``ema_decay`` is the EMA rate
    (ramped up as ``min(ema_decay, (1 + k)/(10 + k))`` at step ``k`` so early averages forget the init).
    """

    steps: int = 2000
    batch_size: int = 256
    lr: float = 2e-3
    warmup_steps: int = 100
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    prediction: str = "eps"
    time_input: str = "t"
    weighting: str = "eps"
    snr_clip: float | None = 100.0
    t_min: float | None = None
    t_max: float | None = None
    p_uncond: float = 0.1
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 50

    def __post_init__(self):
        check_choice(self.prediction, "prediction", ("eps", "x0", "v"))
        check_choice(self.time_input, "time_input", ("t", "index"))
        check_choice(self.weighting, "weighting", ("eps", "target"))
        check_choice(self.lr_schedule, "lr_schedule", ("constant", "cosine"))
        for name in ("steps", "batch_size"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if not 0 <= self.p_uncond < 1:
            raise ValueError(f"p_uncond must lie in [0, 1), got {self.p_uncond}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def sample_times(process: DiffusionProcess, batch: int, *, generator: torch.Generator, time_input: str = "t",
                 t_min: float | None = None, t_max: float | None = None) -> torch.Tensor:
    """Training times, float64 ``(batch,)``: uniform on ``[t_min, t_max]``, or ``t_from_index`` of a uniform
    integer index ``0..N-1`` for ``time_input="index"`` (a discrete schedule)."""
    if time_input == "index":
        if not getattr(process, "is_discrete", False):
            raise ValueError("time_input='index' needs a discrete schedule (VP.from_betas / from_alphas_cumprod)")
        idx = torch.randint(0, process.schedule.num_steps, (batch,), generator=generator)
        return process.t_from_index(idx).to(torch.float64)
    lo = process.t_min if t_min is None else float(t_min)
    hi = process.t_max if t_max is None else float(t_max)
    if not process.t_domain_min <= lo < hi <= process.t_max:
        raise ValueError(f"need {process.t_domain_min:g} <= t_min < t_max <= {process.t_max:g}, got {lo:g}, {hi:g}")
    return lo + (hi - lo) * torch.rand(batch, generator=generator, dtype=torch.float64)


def diffusion_loss(net, process: DiffusionProcess, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, *,
                   prediction: str = "eps", time_input: str = "t", weighting: str = "eps",
                   snr_clip: float | None = 100.0, **cond) -> torch.Tensor:
    """Per-sample denoising loss ``(B,)``: weighted mean over coordinates; see the module docstring.

    ``t`` is continuous time (float64 preferred); ``noise`` is standard normal of ``x0``'s shape.
    """
    check_choice(prediction, "prediction", ("eps", "x0", "v"))
    check_choice(weighting, "weighting", ("eps", "target"))
    if noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} must equal x0 shape {tuple(x0.shape)}")
    t = t.to(device=x0.device)
    alpha64, sigma64 = process.alpha(t).to(torch.float64), process.sigma(t).to(torch.float64)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    alpha, sigma = alpha64.to(x0.dtype).reshape(shape), sigma64.to(x0.dtype).reshape(shape)
    x_t = alpha * x0 + sigma * noise
    t_in = ScoreModel(net, process, prediction, time_input).net_time(t).to(x0.dtype)
    out = net(x_t, t_in, **cond)
    out = getattr(out, "sample", out)
    if prediction == "eps":
        target, weight = noise, torch.ones_like(alpha64)
    elif prediction == "x0":
        target = x0
        weight = (alpha64 / sigma64) ** 2
        if snr_clip is not None:
            weight = weight.clamp(max=snr_clip)
    else:
        target = alpha * noise - sigma * x0
        weight = (alpha64 / (alpha64**2 + sigma64**2)) ** 2
    if weighting == "target":
        weight = torch.ones_like(weight)
    per_sample = (out - target).pow(2).reshape(x0.shape[0], -1).mean(dim=1)
    return weight.to(per_sample.dtype) * per_sample


# ----------------------------------------------------------------------------------------------------
# Training loop
# ----------------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What `train` returns: the EMA network (eval mode), the raw network, the per-step losses,
    the final loss (mean of the last 10% of steps), the wall-clock and process CPU time (each summed over
    resumed runs; on a shared machine CPU time is the steadier measure) and the config."""

    ema: nn.Module
    net: nn.Module
    losses: list[float]
    final_loss: float
    wall_time_s: float
    cpu_time_s: float
    config: TrainConfig


@torch.no_grad()
def _ema_update(ema: nn.Module, net: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), net.parameters()):
        e.lerp_(p, 1 - decay)
    for e, b in zip(ema.buffers(), net.buffers()):
        e.copy_(b)


def _lr_at(step: int, config: TrainConfig) -> float:
    if config.warmup_steps > 0 and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "cosine":
        done = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
    return config.lr


def _save_state(path, net, ema, opt, gen, step, losses, times, config) -> None:
    state = {
        "net": net.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
        "generator": gen.get_state(), "step": step, "losses": losses, "wall_time_s": times[0],
        "cpu_time_s": times[1], "config": asdict(config),
    }
    tmp = f"{path}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)  # never leave a half-written checkpoint behind


def train(net: nn.Module, process: DiffusionProcess, data: torch.Tensor, config: TrainConfig | None = None, *,
          labels: torch.Tensor | None = None, checkpoint_path: str | os.PathLike | None = None,
          resume: bool = True, progress: bool = False) -> TrainResult:
    """Train ``net`` on ``data`` (``(N, *sample_shape)``) by the denoising loss, with Adam and an EMA.

    Args:
        net: a module called as ``net(x, t_in, **cond)`` (e.g. [`MLPScoreNet`][sdekit.nets.MLPScoreNet]); trained
            in place.
        process: the diffusion process.
        data: training set; minibatches are drawn with replacement.
        config: `TrainConfig` (defaults if None).
        labels: optional ``(N,)`` integer labels, passed as ``y`` (dropped to the null class
            ``net.num_classes`` with probability ``config.p_uncond``).
        checkpoint_path: a ``.pt`` file written every ``config.checkpoint_every`` steps and at the end; with
            ``resume`` and an existing file, training continues from it (the config must match).
        progress: show a tqdm progress bar with the running loss.

    Returns:
        a `TrainResult`; ``result.ema`` is the network to sample with.
    """
    config = config or TrainConfig()
    if not isinstance(data, torch.Tensor) or data.ndim < 2:
        raise ValueError("data must be a tensor of shape (N, *sample_shape)")
    device = next(net.parameters()).device
    data = data.to(device)
    num_classes = None
    if labels is not None:
        num_classes = getattr(net, "num_classes", None)
        if num_classes is None:
            raise ValueError("labels were given but the network has no num_classes")
        labels = torch.as_tensor(labels, device=device).long()
        if labels.shape != (data.shape[0],):
            raise ValueError(f"labels must have shape ({data.shape[0]},), got {tuple(labels.shape)}")
    gen = torch.Generator().manual_seed(config.seed)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    step, losses, wall_before, cpu_before = 0, [], 0.0, 0.0
    if checkpoint_path is not None and resume and os.path.exists(checkpoint_path):
        state = torch.load(checkpoint_path, map_location=device, weights_only=True)
        if state["config"] != asdict(config):
            diff = {k: (state["config"].get(k), v) for k, v in asdict(config).items() if state["config"].get(k) != v}
            allowed = {"steps", "checkpoint_every", "log_every"}  # extending a run is fine
            if set(diff) - allowed:
                raise ValueError(f"checkpoint {checkpoint_path} was made with other settings (saved, now): {diff}")
        net.load_state_dict(state["net"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        step, losses = state["step"], list(state["losses"])
        wall_before, cpu_before = state["wall_time_s"], state["cpu_time_s"]

    net.train()
    start, cpu_start = time.perf_counter(), time.process_time()

    def times() -> tuple[float, float]:
        return wall_before + time.perf_counter() - start, cpu_before + time.process_time() - cpu_start

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=step, desc="train", dynamic_ncols=True)
    while step < config.steps:
        idx = torch.randint(0, data.shape[0], (config.batch_size,), generator=gen)
        x0 = data[idx.to(device)]
        t = sample_times(process, config.batch_size, generator=gen, time_input=config.time_input,
                         t_min=config.t_min, t_max=config.t_max)
        noise = torch.randn(x0.shape, generator=gen, dtype=x0.dtype).to(device)
        cond = {}
        if labels is not None:
            y = labels[idx.to(device)]
            drop = (torch.rand(config.batch_size, generator=gen) < config.p_uncond).to(device)
            cond["y"] = torch.where(drop, torch.full_like(y, num_classes), y)
        loss = diffusion_loss(net, process, x0, t, noise, prediction=config.prediction,
                              time_input=config.time_input, weighting=config.weighting,
                              snr_clip=config.snr_clip, **cond).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the training loss became {loss.item()} at step {step}; lower lr")
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, config)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            nn.utils.clip_grad_norm_(net.parameters(), config.grad_clip)
        opt.step()
        _ema_update(ema, net, min(config.ema_decay, (1 + step) / (10 + step)))
        losses.append(loss.item())
        step += 1
        if bar is not None:
            bar.update(1)
            if step % config.log_every == 0 or step == config.steps:
                window = losses[-config.log_every:]
                bar.set_postfix(loss=f"{sum(window) / len(window):.4f}")
        if checkpoint_path is not None and config.checkpoint_every and step % config.checkpoint_every == 0:
            _save_state(checkpoint_path, net, ema, opt, gen, step, losses, times(), config)
    if bar is not None:
        bar.close()
    wall, cpu = times()
    if checkpoint_path is not None:
        _save_state(checkpoint_path, net, ema, opt, gen, step, losses, (wall, cpu), config)
    tail = losses[-max(1, math.ceil(0.1 * len(losses))):] if losses else [float("nan")]
    net.eval()
    return TrainResult(ema=ema, net=net, losses=losses, final_loss=sum(tail) / len(tail), wall_time_s=wall,
                       cpu_time_s=cpu, config=config)


# ----------------------------------------------------------------------------------------------------
# Autoencoder (the first stage of latent diffusion)
# ----------------------------------------------------------------------------------------------------


@dataclass
class AutoencoderResult:
    """What `train_autoencoder` returns: the autoencoder (eval mode, latent scaling fitted), the per-step
    reconstruction losses, the final loss (mean of the last 10% of steps), wall-clock and CPU time."""

    autoencoder: nn.Module
    losses: list[float]
    final_loss: float
    wall_time_s: float
    cpu_time_s: float


def train_autoencoder(autoencoder: nn.Module, images: torch.Tensor, *, steps: int = 2000, batch_size: int = 128,
                      lr: float = 2e-3, weight_decay: float = 0.0, seed: int = 0,
                      progress: bool = False) -> AutoencoderResult:
    """Fit ``autoencoder`` (an [`Autoencoder`][sdekit.nets.Autoencoder]) to ``images`` ``(N, C, H, W)`` by the
    mean squared reconstruction error, with AdamW and a half-cosine learning-rate decay; then set its latent
    scaling from ``images`` (``fit_latent_scaling``), so their latents are standardised.

    Minibatches are drawn with replacement from a ``torch.Generator`` seeded by ``seed``; trained in place.
    """
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError("images must be a tensor of shape (N, C, H, W)")
    device = next(autoencoder.parameters()).device
    images = images.to(device)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(autoencoder.parameters(), lr=lr, weight_decay=weight_decay)
    losses: list[float] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="autoencoder", dynamic_ncols=True)
    autoencoder.train()
    start, cpu_start = time.perf_counter(), time.process_time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=gen).to(device)
        batch = images[idx]
        loss = (autoencoder(batch) - batch).pow(2).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the reconstruction loss became {loss.item()} at step {step}; lower lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if bar is not None:
            bar.update(1)
            if (step + 1) % 50 == 0:
                bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
    if bar is not None:
        bar.close()
    autoencoder.eval()
    autoencoder.fit_latent_scaling(images)
    tail = losses[-max(1, math.ceil(0.1 * len(losses))):]
    return AutoencoderResult(autoencoder=autoencoder, losses=losses, final_loss=sum(tail) / len(tail),
                             wall_time_s=time.perf_counter() - start, cpu_time_s=time.process_time() - cpu_start)


@torch.no_grad()
def _encode(autoencoder, images: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Latents of ``images`` (no gradients), in the autoencoder's dtype."""
    dtype = next(autoencoder.parameters()).dtype
    return torch.cat([autoencoder.encode(chunk.to(dtype)) for chunk in images.split(batch_size)])


# ----------------------------------------------------------------------------------------------------
# Recipes: how the shipped checkpoints are made
# ----------------------------------------------------------------------------------------------------


@dataclass
class Recipe:
    """Everything that makes one shipped checkpoint: data, architecture, process, training settings (and, for
    latent diffusion, the autoencoder)."""

    data: dict
    architecture: str
    kwargs: dict
    process: dict
    train: dict
    eval_size: int = 4096
    notes: str = ""
    sample_shape: tuple[int, ...] = ()
    autoencoder: dict | None = None
    """For latent diffusion: ``{"architecture", "kwargs", "train"}`` of the autoencoder trained first (the
    ``train`` settings are `train_autoencoder`'s keywords); the score network then trains on its latents."""


RECIPES: dict[str, Recipe] = {
    "moons-vp-eps": Recipe(
        data={"name": "moons", "n": 20000, "seed": 0, "noise": 0.05},
        architecture="MLPScoreNet",
        kwargs={"dim": 2, "hidden": 128, "num_blocks": 3, "time_embedding": "sinusoidal", "embed_dim": 64},
        process={"type": "VP", "schedule": "linear", "beta_min": 0.1, "beta_max": 20.0, "t_min": 1e-3},
        train={"steps": 12000, "batch_size": 1024, "lr": 2e-3, "warmup_steps": 100, "lr_schedule": "cosine",
               "ema_decay": 0.999, "prediction": "eps", "time_input": "t", "t_min": 1e-5, "seed": 0},
        sample_shape=(2,),
        notes="two moons (scikit-learn make_moons, noise 0.05, unscaled); eval: 4096 fresh points (seed 1)",
    ),
    "digits-vp-eps": Recipe(
        data={"name": "digits", "split": "train", "scaling": "v/8 - 1", "labels": True},
        architecture="UNet",
        kwargs={"in_channels": 1, "base_channels": 32, "channel_mults": [1, 2], "num_res_blocks": 1,
                "attention_levels": [1], "num_heads": 2, "groups": 8, "image_size": 8, "num_classes": 10},
        process={"type": "VP", "schedule": "linear", "beta_min": 0.1, "beta_max": 20.0, "t_min": 1e-3},
        train={"steps": 3000, "batch_size": 128, "lr": 2e-3, "warmup_steps": 200, "lr_schedule": "cosine",
               "ema_decay": 0.999, "prediction": "eps", "time_input": "t", "t_min": 1e-5, "p_uncond": 0.2,
               "seed": 0},
        sample_shape=(1, 8, 8),
        notes="scikit-learn 8x8 digits, first 1500 images, class-conditional with a null class; eval: the "
              "297 test images, unconditional",
    ),
    "digits-latent-vp-eps": Recipe(
        data={"name": "digits", "split": "train", "scaling": "v/8 - 1", "labels": False, "space": "latent"},
        architecture="MLPScoreNet",
        kwargs={"dim": 12, "hidden": 128, "num_blocks": 3, "time_embedding": "sinusoidal", "embed_dim": 64},
        process={"type": "VP", "schedule": "linear", "beta_min": 0.1, "beta_max": 20.0, "t_min": 1e-3},
        train={"steps": 6000, "batch_size": 256, "lr": 2e-3, "warmup_steps": 100, "lr_schedule": "cosine",
               "ema_decay": 0.999, "prediction": "eps", "time_input": "t", "t_min": 1e-5, "seed": 0},
        sample_shape=(12,),
        autoencoder={"architecture": "Autoencoder",
                     "kwargs": {"in_channels": 1, "image_size": 8, "channels": 16, "latent_dim": 12},
                     "train": {"steps": 2000, "batch_size": 128, "lr": 2e-3, "seed": 0}},
        notes="latent diffusion: an Autoencoder (12 standardised latents) on the first 1500 scikit-learn 8x8 "
              "digits, then an unconditional eps MLP on their latents; eval: the 297 test images, encoded",
    ),
}
"""How each shipped model of the zoo was trained: name -> `Recipe` (data, architecture, process, training settings)."""


def recipe_data(recipe: Recipe, *, eval_split: bool = False,
                autoencoder: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The training data of ``recipe`` (or its held-out split): ``(data, labels or None)`` in model space.

    A latent recipe (``recipe.autoencoder`` set) needs the trained ``autoencoder`` (e.g.
    ``zoo.load(name).autoencoder``): its model space is the latents of the images.
    """
    spec = recipe.data
    if spec["name"] == "digits":
        images, labels = digits("test" if eval_split else spec["split"])
        if recipe.autoencoder is not None:
            if autoencoder is None:
                raise ValueError("this recipe trains in an autoencoder's latent space: pass autoencoder= (e.g. "
                                 "zoo.load(name).autoencoder)")
            images = _encode(autoencoder, images)
        return images, (labels if spec.get("labels") else None)
    seed = spec["seed"] + 1 if eval_split else spec["seed"]
    n = recipe.eval_size if eval_split else spec["n"]
    return toy_data(spec["name"], n, seed=seed, noise=spec.get("noise")), None


@torch.no_grad()
def _eval_loss(net, process, data, config, seed: int = 2) -> float:
    """EMA loss on held-out data with fixed times and noise (unconditional), in the training weighting."""
    gen = torch.Generator().manual_seed(seed)
    t = sample_times(process, data.shape[0], generator=gen, time_input=config.time_input, t_min=config.t_min,
                     t_max=config.t_max)
    noise = torch.randn(data.shape, generator=gen, dtype=data.dtype)
    loss = diffusion_loss(net, process, data, t, noise, prediction=config.prediction, time_input=config.time_input,
                          weighting=config.weighting, snr_clip=config.snr_clip)
    return float(loss.mean())


def train_recipe(name: str, out_dir: str | os.PathLike | None = None, *, steps: int | None = None,
                 checkpoint_path: str | os.PathLike | None = None, resume: bool = True,
                 progress: bool = True) -> dict:
    """Train the shipped model ``name`` from its recipe and save it to ``out_dir/NAME.{safetensors,json}``.

    ``out_dir`` defaults to the package's zoo folder; ``steps`` overrides the recipe (for smoke tests).
    Returns the sidecar's ``training`` record.
    """
    from .zoo import ZOO_DIR, save

    if name not in RECIPES:
        raise ValueError(f"unknown zoo recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
    recipe = RECIPES[name]
    settings = dict(recipe.train)
    if steps is not None:
        settings["steps"] = steps
    config = TrainConfig(**settings)
    with torch.random.fork_rng(devices=[]):  # parameter init reads the global RNG: fix it, then restore it
        torch.manual_seed(config.seed)
        net = build(recipe.architecture, **recipe.kwargs)
    process = process_from_spec(recipe.process)
    started = time.time()
    autoencoder, ae_record = None, None
    if recipe.autoencoder is not None:
        autoencoder, ae_record = _train_recipe_autoencoder(recipe, steps, progress)
    data, labels = recipe_data(recipe, autoencoder=autoencoder)
    result = train(net, process, data, config, labels=labels, checkpoint_path=checkpoint_path, resume=resume,
                   progress=progress)
    eval_data, _ = recipe_data(recipe, eval_split=True, autoencoder=autoencoder)
    record = {
        **asdict(config),
        "final_loss": round(result.final_loss, 6),
        "eval_loss": round(_eval_loss(result.ema, process, eval_data, config), 6),
        "wall_time_s": round(result.wall_time_s, 1),
        "cpu_time_s": round(result.cpu_time_s, 1),
        "finished": time.strftime("%Y-%m-%d", time.gmtime(started)),
        "device": "cpu" if next(net.parameters()).device.type == "cpu" else torch.cuda.get_device_name(),
        "num_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "notes": recipe.notes,
    }
    if ae_record is not None:
        # the recorded times are the whole pipeline's; the autoencoder's own are in its record
        record["wall_time_s"] = round(result.wall_time_s + ae_record["wall_time_s"], 1)
        record["cpu_time_s"] = round(result.cpu_time_s + ae_record["cpu_time_s"], 1)
        record["score_net_wall_time_s"] = round(result.wall_time_s, 1)
    if not math.isfinite(record["final_loss"]):
        raise FloatingPointError(f"training {name} ended with a non-finite loss")
    out = Path(out_dir) if out_dir is not None else ZOO_DIR
    save(out / name, result.ema, process, prediction=config.prediction, time_input=config.time_input,
         sample_shape=recipe.sample_shape, name=name, data=recipe.data, training=record,
         autoencoder=autoencoder, autoencoder_training=ae_record)
    return record


def _train_recipe_autoencoder(recipe: Recipe, steps: int | None, progress: bool) -> tuple[nn.Module, dict]:
    """Train the autoencoder of a latent recipe; return it and its record (settings, losses, times).

    ``steps`` (a smoke-test override of the score network's steps) caps the autoencoder's steps too."""
    spec = recipe.autoencoder
    settings = dict(spec["train"])
    if steps is not None:
        settings["steps"] = min(steps, settings["steps"])
    with torch.random.fork_rng(devices=[]):  # as for the score network: a fixed, restored global RNG
        torch.manual_seed(settings.get("seed", 0))
        autoencoder = build(spec["architecture"], **spec["kwargs"])
    images, _ = digits(recipe.data["split"])
    result = train_autoencoder(autoencoder, images, progress=progress, **settings)
    test_images, _ = digits("test")
    mean_image = images.mean(dim=0)
    with torch.no_grad():
        recon = autoencoder(test_images)
        latents = _encode(autoencoder, images)
    record = {
        **settings,
        "final_loss": round(result.final_loss, 6),
        # per-pixel MSE on the held-out test images, and that of the best constant guess (the training mean)
        "test_reconstruction_mse": round(float((recon - test_images).pow(2).mean()), 6),
        "test_mean_image_mse": round(float((mean_image - test_images).pow(2).mean()), 6),
        "train_latent_mean_abs_max": round(float(latents.mean(dim=0).abs().max()), 6),
        "train_latent_std": [round(float(v), 4) for v in latents.std(dim=0)],
        "wall_time_s": round(result.wall_time_s, 1),
        "cpu_time_s": round(result.cpu_time_s, 1),
    }
    return autoencoder, record
