"""Score networks: a time-conditioned residual MLP for low-dimensional data and a compact UNet for images.

Both are called as ``net(x, t, y=None)`` -- the convention of [`ScoreModel`][sdekit.models.ScoreModel] -- with
``t`` a per-sample ``(B,)`` tensor (or a scalar) in the network's time convention, and return a tensor of
``x``'s shape: whatever the network was trained to predict (``eps``, ``x0`` or ``v``).

- `MLPScoreNet`: ``(B, dim)`` data; sinusoidal or random-Fourier time embedding; pre-norm residual
  blocks, each conditioned on the time embedding (Ho et al. 2020; Tancik et al. 2020 for Fourier features).
- `UNet`: ``(B, C, H, W)`` images; residual blocks with GroupNorm and a scale-shift time
  conditioning, self-attention at the chosen resolutions and in the middle, skip connections between the
  down and up paths (the DDPM UNet of Ho et al. 2020 with the scale-shift norm of Nichol & Dhariwal 2021).
- `Autoencoder`: not a score network but the deterministic image autoencoder of latent diffusion (Rombach et
  al. 2022): ``encode(x)`` to standardised ``(B, latent_dim)`` latents a score network is trained on,
  ``decode(z)`` back to images after sampling.

Class conditioning (``num_classes=K``): labels ``0..K-1``; label ``K`` is the *null* class of
classifier-free guidance (Ho & Salimans 2021), and ``y=None`` means the null class for the whole batch.
[`sdekit.ClassifierFreeGuidance`][] (``ClassifierFreeGuidance(ScoreModel(net, ...), scale, null=K)``) evaluates
conditional and unconditional predictions in one batched call.

Every network keeps its constructor arguments in `config`, so ``build(type(net).__name__,
**net.config)`` rebuilds it (this is what [`sdekit.zoo`][] stores next to the weights).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ARCHITECTURES",
    "Autoencoder",
    "FourierEmbedding",
    "MLPScoreNet",
    "SinusoidalEmbedding",
    "UNet",
    "build",
]


# ----------------------------------------------------------------------------------------------------
# Time embeddings
# ----------------------------------------------------------------------------------------------------


class SinusoidalEmbedding(nn.Module):
    """``[cos(w_k u), sin(w_k u)]`` with ``w_k = max_period^(-k/half)``, ``u = time_scale · t`` (Vaswani et al.
    2017, as used for time in Ho et al. 2020). ``time_scale = 1000`` maps ``t ∈ [0, 1]`` onto the range of
    DDPM indices, where these frequencies are meant to work."""

    def __init__(self, dim: int, time_scale: float = 1000.0, max_period: float = 10000.0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"embedding dim must be an even number >= 2, got {dim}")
        self.dim, self.time_scale, self.max_period = dim, float(time_scale), float(max_period)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        k = torch.arange(half, device=t.device, dtype=t.dtype)
        freqs = torch.exp(-math.log(self.max_period) * k / half)
        u = (self.time_scale * t)[:, None] * freqs[None]
        return torch.cat([torch.cos(u), torch.sin(u)], dim=-1)


class FourierEmbedding(nn.Module):
    """Random Fourier features ``[sin(2π W u), cos(2π W u)]``, ``W ~ N(0, scale²)`` fixed at construction
    from ``seed``, ``u = time_scale · t`` (Tancik et al. 2020; the Gaussian Fourier projection of Song et al.
    2021). ``W`` is a buffer, so it travels with the state dict."""

    def __init__(self, dim: int, scale: float = 16.0, time_scale: float = 1.0, seed: int = 0):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"embedding dim must be an even number >= 2, got {dim}")
        self.dim, self.scale, self.time_scale = dim, float(scale), float(time_scale)
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("weight", torch.randn(dim // 2, generator=gen) * scale)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        u = 2 * math.pi * (self.time_scale * t)[:, None] * self.weight.to(t.dtype)[None]
        return torch.cat([torch.sin(u), torch.cos(u)], dim=-1)


# ----------------------------------------------------------------------------------------------------
# Shared input checks
# ----------------------------------------------------------------------------------------------------


def _conditioning(net, x: torch.Tensor, t, y) -> torch.Tensor:
    """The shared conditioning vector of both networks: SiLU(time MLP(embedding of t) + label embedding)."""
    emb = net.time_mlp(net.time_embed(_check_time(t, x)).to(x.dtype))
    labels = _check_labels(y, x.shape[0], net.num_classes, x.device)
    if labels is not None:
        emb = emb + net.label_embed(labels)
    return F.silu(emb)


def _check_time(t, x: torch.Tensor) -> torch.Tensor:
    """``t`` as a ``(B,)`` tensor in ``x``'s dtype (a scalar is broadcast over the batch)."""
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or of shape ({x.shape[0]},), got shape {tuple(t.shape)}")
    return t.to(dtype=x.dtype, device=x.device)


def _check_labels(y, batch: int, num_classes: int | None, device) -> torch.Tensor | None:
    """Labels as a ``(B,)`` long tensor; ``None`` is the null class ``num_classes``."""
    if num_classes is None:
        if y is not None:
            raise ValueError("this network is unconditional (num_classes=None) but labels y were given")
        return None
    if y is None:
        return torch.full((batch,), num_classes, dtype=torch.long, device=device)
    y = torch.as_tensor(y, device=device)
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
        raise TypeError(f"labels y must be integers, got dtype {y.dtype}")
    if y.ndim == 0:
        y = y.expand(batch)
    if y.shape != (batch,):
        raise ValueError(f"labels y must be a scalar or of shape ({batch},), got shape {tuple(y.shape)}")
    if y.device.type == "cpu":
        if y.numel() and bool(((y < 0) | (y > num_classes)).any()):
            bad = int(y[(y < 0) | (y > num_classes)][0])
            raise ValueError(
                f"label {bad} is out of range: expected 0..{num_classes - 1}, or {num_classes} for the null "
                "class (unconditional)"
            )
    elif hasattr(torch, "_assert_async"):  # no host synchronisation on accelerators
        torch._assert_async(((y >= 0) & (y <= num_classes)).all(), f"labels must lie in 0..{num_classes}")
    return y.long()


def _time_embedding(kind: str, dim: int, time_scale: float | None, fourier_scale: float) -> nn.Module:
    if kind == "sinusoidal":
        return SinusoidalEmbedding(dim, 1000.0 if time_scale is None else time_scale)
    if kind == "fourier":
        return FourierEmbedding(dim, fourier_scale, 1.0 if time_scale is None else time_scale)
    raise ValueError(f"unknown time_embedding {kind!r}; allowed: 'sinusoidal', 'fourier'")


# ----------------------------------------------------------------------------------------------------
# MLP
# ----------------------------------------------------------------------------------------------------


class _MLPBlock(nn.Module):
    """Pre-norm residual block: ``h + W2 silu(W1 silu(LN h) + E temb)``; W2 starts at zero (identity block)."""

    def __init__(self, hidden: int, emb_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb = nn.Linear(emb_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        z = self.fc1(F.silu(self.norm(h))) + self.emb(emb)
        return h + self.fc2(F.silu(z))


class MLPScoreNet(nn.Module):
    """Time-conditioned residual MLP for ``(B, dim)`` data: ``net(x, t, y=None) -> (B, dim)``.

    Args:
        dim: data dimension.
        hidden: width of the residual stream.
        num_blocks: residual blocks.
        time_embedding: ``"sinusoidal"`` or ``"fourier"`` (random Fourier features).
        embed_dim: size of the raw time embedding (even).
        time_scale: the embedding sees ``time_scale · t``; default 1000 for sinusoidal (``t ∈ [0, 1]``; use 1
            for DDPM indices), 1 for Fourier (use ``1/N`` for indices).
        fourier_scale: standard deviation of the Fourier frequencies.
        num_classes: number of classes for conditioning (label ``num_classes`` is the null class), or None.
    """

    def __init__(
        self,
        dim: int = 2,
        hidden: int = 128,
        num_blocks: int = 3,
        time_embedding: str = "sinusoidal",
        embed_dim: int = 64,
        time_scale: float | None = None,
        fourier_scale: float = 16.0,
        num_classes: int | None = None,
    ):
        super().__init__()
        if dim < 1 or hidden < 1 or num_blocks < 0:
            raise ValueError(f"need dim >= 1, hidden >= 1, num_blocks >= 0; got {dim}, {hidden}, {num_blocks}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be a positive int or None, got {num_classes}")
        self.time_embed = _time_embedding(time_embedding, embed_dim, time_scale, fourier_scale)
        self.config = {
            "dim": dim, "hidden": hidden, "num_blocks": num_blocks, "time_embedding": time_embedding,
            "embed_dim": embed_dim, "time_scale": self.time_embed.time_scale, "fourier_scale": fourier_scale,
            "num_classes": num_classes,
        }
        self.dim, self.num_classes = dim, num_classes
        self.time_mlp = nn.Sequential(nn.Linear(embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.label_embed = nn.Embedding(num_classes + 1, hidden) if num_classes is not None else None
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(_MLPBlock(hidden, hidden) for _ in range(num_blocks))
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected input of shape (B, {self.dim}), got {tuple(x.shape)}")
        emb = _conditioning(self, x, t, y)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(F.silu(self.out_norm(h)))


# ----------------------------------------------------------------------------------------------------
# UNet
# ----------------------------------------------------------------------------------------------------

class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, scale-shift by the embedding, GroupNorm-SiLU-conv (zero-initialised), plus skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


def _attention_block(channels: int, heads: int, groups: int) -> nn.Module:
    """The UNet's self-attention over the H·W positions: [`sdekit.kernels.SelfAttention2d`][] (the one
    attention block: Triton on CUDA tensors, SDPA elsewhere), with its output projection zero-initialised."""
    from .kernels import SelfAttention2d

    block = SelfAttention2d(channels, num_heads=heads, num_groups=groups)
    nn.init.zeros_(block.proj.weight)
    nn.init.zeros_(block.proj.bias)
    return block


class UNet(nn.Module):
    """Compact UNet for ``(B, C, H, W)`` images: ``net(x, t, y=None) -> (B, C, H, W)``.

    Levels ``i = 0..L-1`` run at resolution ``H / 2^i`` with ``base_channels · channel_mults[i]`` channels;
    each has ``num_res_blocks`` residual blocks (followed by self-attention where ``i`` is in
    ``attention_levels``); the middle is res-attention-res at the lowest resolution. Downsampling is a
    stride-2 convolution, upsampling nearest-neighbour plus a convolution; every down-path activation is
    concatenated into the up path (Ho et al. 2020).

    Args:
        in_channels: C.
        base_channels: channels of level 0.
        channel_mults: channel multiplier per level; its length is the number of levels.
        num_res_blocks: residual blocks per level on the down path (one more on the up path).
        attention_levels: indices of levels with self-attention.
        num_heads: attention heads.
        groups: GroupNorm groups (must divide every channel count).
        image_size: if given, inputs must be ``image_size × image_size``; else any H, W divisible by
            ``2^(L-1)``.
        time_scale: the sinusoidal embedding sees ``time_scale · t`` (1000 for ``t ∈ [0, 1]``, 1 for indices).
        num_classes: number of classes for conditioning (label ``num_classes`` is the null class), or None.
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 2),
        num_res_blocks: int = 1,
        attention_levels: tuple[int, ...] = (1,),
        num_heads: int = 1,
        groups: int = 8,
        image_size: int | None = None,
        time_scale: float = 1000.0,
        num_classes: int | None = None,
    ):
        super().__init__()
        channel_mults, attention_levels = tuple(channel_mults), tuple(attention_levels)
        if in_channels < 1 or base_channels < 1 or not channel_mults or num_res_blocks < 1:
            raise ValueError("need in_channels >= 1, base_channels >= 1, a non-empty channel_mults and "
                             "num_res_blocks >= 1")
        if any(not 0 <= i < len(channel_mults) for i in attention_levels):
            raise ValueError(f"attention_levels {attention_levels} must index channel_mults {channel_mults}")
        if any((base_channels * m) % groups for m in channel_mults):
            widths = [base_channels * m for m in channel_mults]
            raise ValueError(f"groups={groups} must divide every level's channel count {widths}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be a positive int or None, got {num_classes}")
        self.config = {
            "in_channels": in_channels, "base_channels": base_channels, "channel_mults": list(channel_mults),
            "num_res_blocks": num_res_blocks, "attention_levels": list(attention_levels), "num_heads": num_heads,
            "groups": groups, "image_size": image_size, "time_scale": float(time_scale), "num_classes": num_classes,
        }
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        self.num_levels = len(channel_mults)
        emb_dim = 4 * base_channels
        self.time_embed = SinusoidalEmbedding(base_channels, time_scale)
        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes is not None else None
        self.inp = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        self.down = nn.ModuleList()
        skip_channels = [base_channels]
        ch = base_channels
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                out = base_channels * mult
                self.down.append(self._stage(ch, out, emb_dim, groups, level in attention_levels, num_heads))
                ch = out
                skip_channels.append(ch)
            if level < self.num_levels - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skip_channels.append(ch)
        self.mid1 = _ResBlock(ch, ch, emb_dim, groups)
        self.mid_attn = _attention_block(ch, num_heads, groups)
        self.mid2 = _ResBlock(ch, ch, emb_dim, groups)
        self.up = nn.ModuleList()
        for level in reversed(range(self.num_levels)):
            out = base_channels * channel_mults[level]
            for _ in range(num_res_blocks + 1):
                self.up.append(self._stage(ch + skip_channels.pop(), out, emb_dim, groups,
                                           level in attention_levels, num_heads))
                ch = out
            if level > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(ch, ch, 3, padding=1)))
        self.out_norm = nn.GroupNorm(groups, ch)
        self.out = nn.Conv2d(ch, in_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @staticmethod
    def _stage(in_ch, out_ch, emb_dim, groups, attend, heads) -> nn.ModuleDict:
        stage = nn.ModuleDict({"res": _ResBlock(in_ch, out_ch, emb_dim, groups)})
        if attend:
            stage["attn"] = _attention_block(out_ch, heads, groups)
        return stage

    @staticmethod
    def _run(stage: nn.ModuleDict, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = stage["res"](h, emb)
        return stage["attn"](h) if "attn" in stage else h

    def _check_input(self, x: torch.Tensor) -> None:
        size = "H, W" if self.image_size is None else f"{self.image_size}, {self.image_size}"
        expected = f"(B, {self.in_channels}, {size})"
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input of shape {expected}, got {tuple(x.shape)}")
        if self.image_size is not None and tuple(x.shape[2:]) != (self.image_size, self.image_size):
            raise ValueError(f"expected input of shape {expected}, got {tuple(x.shape)}")
        factor = 2 ** (self.num_levels - 1)
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"image height and width must be divisible by {factor} ({self.num_levels} levels), "
                             f"got {tuple(x.shape[2:])}")

    def forward(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        self._check_input(x)
        emb = _conditioning(self, x, t, y)
        h = self.inp(x)
        skips = [h]
        for stage in self.down:
            h = self._run(stage, h, emb) if isinstance(stage, nn.ModuleDict) else stage(h)
            skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for stage in self.up:
            if isinstance(stage, nn.ModuleDict):
                h = self._run(stage, torch.cat([h, skips.pop()], dim=1), emb)
            else:
                h = stage(h)
        return self.out(F.silu(self.out_norm(h)))



# ----------------------------------------------------------------------------------------------------
# Autoencoder (latent diffusion)
# ----------------------------------------------------------------------------------------------------


class Autoencoder(nn.Module):
    """Deterministic convolutional autoencoder for small images, the first stage of latent diffusion (Rombach
    et al. 2022): a score network is trained on ``encode(x)`` and its samples are mapped back by ``decode(z)``.

    Encoder: 3×3 convolution, two stride-2 3×3 convolutions (``H → H/4``), a linear map to ``latent_dim``.
    Decoder: the mirror image (linear, two stride-2 transposed 4×4 convolutions, 3×3 convolution) ending in
    ``tanh``, so decoded images lie in (-1, 1) like the data. Activations are SiLU.

    **Latent scaling.** The VP prior is ``N(0, I)``, so the latents should have unit variance. Like the latent
    scale factor of Rombach et al. (one number, from the standard deviation of training latents), but per
    coordinate and with a mean: the buffers
    ``latent_mean`` and ``latent_std`` (set from the training images by `fit_latent_scaling` after training)
    standardise the encoder's raw output, ``encode(x) = (E(x) - latent_mean)/latent_std``, and ``decode``
    undoes it, so ``decode(encode(x))`` does not depend on them. They travel with the state dict.

    Args:
        in_channels: image channels C.
        image_size: image height and width (a multiple of 4).
        channels: width of the first level (the second has twice as many).
        latent_dim: size of the flat latent vector.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 8, channels: int = 32, latent_dim: int = 8):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("image_size", image_size), ("channels", channels),
                            ("latent_dim", latent_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4 (two stride-2 levels), got {image_size}")
        self.config = {"in_channels": in_channels, "image_size": image_size, "channels": channels,
                       "latent_dim": latent_dim}
        self.in_channels, self.image_size, self.latent_dim = in_channels, image_size, latent_dim
        c, inner = channels, image_size // 4
        self._inner = (2 * c, inner, inner)
        flat = 2 * c * inner * inner
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, c, 3, padding=1), nn.SiLU(),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(2 * c, 2 * c, 3, stride=2, padding=1), nn.SiLU(),
            nn.Flatten(), nn.Linear(flat, latent_dim),
        )
        self.decoder_in = nn.Sequential(nn.Linear(latent_dim, flat), nn.SiLU())
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * c, 2 * c, 4, stride=2, padding=1), nn.SiLU(),
            nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(c, in_channels, 3, padding=1), nn.Tanh(),
        )
        self.register_buffer("latent_mean", torch.zeros(latent_dim))
        self.register_buffer("latent_std", torch.ones(latent_dim))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The shape of one image, ``(C, H, W)``."""
        return (self.in_channels, self.image_size, self.image_size)

    @property
    def latent_shape(self) -> tuple[int]:
        """The shape of one latent, ``(latent_dim,)``."""
        return (self.latent_dim,)

    def _check(self, value: torch.Tensor, shape: tuple[int, ...], name: str) -> None:
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
        if value.ndim != len(shape) + 1 or tuple(value.shape[1:]) != shape:
            expected = "(B, " + ", ".join(map(str, shape)) + ")"
            raise ValueError(f"{name} must have shape {expected}, got {tuple(value.shape)}")

    def encode_raw(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's output before standardisation, ``(B, latent_dim)``."""
        self._check(x, self.image_shape, "x")
        return self.encoder(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` in [-1, 1] to standardised latents ``(B, latent_dim)``."""
        return (self.encode_raw(x) - self.latent_mean) / self.latent_std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised latents ``(B, latent_dim)`` to images ``(B, C, H, W)`` in (-1, 1)."""
        self._check(z, self.latent_shape, "z")
        h = self.decoder_in(z * self.latent_std + self.latent_mean)
        return self.decoder(h.reshape(z.shape[0], *self._inner))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction ``decode(encode(x))``."""
        return self.decode(self.encode(x))

    @torch.no_grad()
    def fit_latent_scaling(self, images: torch.Tensor, batch_size: int = 1024) -> None:
        """Set ``latent_mean``/``latent_std`` to the per-coordinate mean and standard deviation of the raw
        latents of ``images`` (the training set), so that their encodings have mean 0 and variance 1."""
        if images.ndim != 4 or images.shape[0] < 2:
            raise ValueError(f"images must be (N, C, H, W) with N >= 2, got shape {tuple(images.shape)}")
        raw = torch.cat([self.encode_raw(chunk) for chunk in images.split(batch_size)]).double()
        std = raw.std(dim=0)
        if not bool((std > 0).all()):
            raise ValueError("a latent coordinate is constant on these images; cannot standardise it")
        self.latent_mean.copy_(raw.mean(dim=0))
        self.latent_std.copy_(std)


# ----------------------------------------------------------------------------------------------------
# Registry (classifier-free guidance is sdekit.ClassifierFreeGuidance, a model wrapper)
# ----------------------------------------------------------------------------------------------------


ARCHITECTURES: dict[str, type[nn.Module]] = {"MLPScoreNet": MLPScoreNet, "UNet": UNet, "Autoencoder": Autoencoder}
"""The architectures a checkpoint may name: name -> network class (see `build`); the score networks and the
latent-diffusion `Autoencoder`."""


def build(name: str, **kwargs) -> nn.Module:
    """Build a registered architecture by name with its keyword arguments (e.g. a zoo sidecar's)."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[name](**kwargs)
