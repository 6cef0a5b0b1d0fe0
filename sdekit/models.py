"""Score-model parameterizations and exact conversions between them.

A network ``net(x, t_in, **cond)`` predicts one of (``shared/CONVENTIONS.md``; alpha, sigma at t):

- ``"eps"``: the noise; ``x0 = (x - sigma eps)/alpha``, ``score = -eps/sigma`` (Ho et al. 2020);
- ``"x0"``: the data (DPM-Solver++'s D); ``eps = (x - alpha x0)/sigma``;
- ``"v"``: ``v = alpha eps - sigma x0`` (Salimans & Ho 2022); inverted exactly for any process by
  ``x0 = (alpha x - sigma v)/(alpha² + sigma²)``, ``eps = (sigma x + alpha v)/(alpha² + sigma²)``
  (the usual formulas when alpha² + sigma² = 1);
- ``"score"``: ``∇ log p_t(x)``; ``eps = -sigma score``;
- ``"edm"``: an EDM denoiser ``D(xbar; sigmabar) = x0`` with ``xbar = x/alpha``, ``sigmabar = sigma/alpha``
  (Karras et al. 2022); the network is called as ``net(x/alpha, sigma/alpha)``.

The network's time input follows ``time_input``: ``"t"`` (continuous time), ``"index"`` (a discrete DDPM
index ``N t - 1``, fractional where the sampler asks for a time between grid points), ``"sigma"``,
``"log_sigma"`` or ``"log_snr"``. It always receives a per-sample ``(B,)`` tensor in ``x``'s dtype.

`LatentScoreModel` is a ``ScoreModel`` over an autoencoder's latent space (latent diffusion, Rombach et al.
2022): it samples latents like any model and adds ``encode``/``decode``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch

from ._utils import as_time, bcast, check_choice
from .processes import DiffusionProcess

PREDICTIONS = ("eps", "x0", "v", "score", "edm")
TIME_INPUTS = ("t", "index", "sigma", "log_sigma", "log_snr")


class ScoreModel:
    """A network and its process, returning every parameterization through exact conversions.

    Args:
        net: callable ``net(x, t_in, **cond)`` returning a tensor of ``x``'s shape.
        process: the [`DiffusionProcess`][sdekit.processes.DiffusionProcess] the network was trained on.
        prediction: what ``net`` predicts: one of ``"eps"``, ``"x0"``, ``"v"``, ``"score"``, ``"edm"``.
        time_input: the time convention of ``net``'s second argument (ignored for ``"edm"``, which takes
            ``sigma/alpha``).
        sample_shape: optional shape of one sample (without the batch dimension), for samplers and zoo.

    ``t`` in every method may be a number, a 0-d tensor or a per-sample ``(B,)`` tensor. Each call of a
    prediction method evaluates the network once and increments `nfe`.
    """

    def __init__(
        self,
        net: Callable,
        process: DiffusionProcess,
        prediction: str = "eps",
        time_input: str = "t",
        *,
        sample_shape: tuple[int, ...] | None = None,
    ):
        if not callable(net):
            raise TypeError(f"net must be callable net(x, t, **cond), got {type(net).__name__}")
        if not isinstance(process, DiffusionProcess):
            raise TypeError(f"process must be a DiffusionProcess (VP, SubVP, VE, EDM), got {type(process).__name__}")
        check_choice(prediction, "prediction", PREDICTIONS)
        check_choice(time_input, "time_input", TIME_INPUTS)
        if time_input == "index" and not getattr(process, "is_discrete", False):
            raise ValueError("time_input='index' needs a discrete schedule (VP.from_betas / VP.from_alphas_cumprod)")
        self.net = net
        self.process = process
        self.prediction = prediction
        self.time_input = time_input
        self.sample_shape = _check_sample_shape(sample_shape)
        self.nfe = 0

    # --- network call --------------------------------------------------------------------------------
    def net_time(self, t: torch.Tensor) -> torch.Tensor:
        """Map continuous ``t`` to the network's time convention."""
        p = self.process
        if self.time_input == "t":
            return t
        if self.time_input == "index":
            return p.index_from_t(t)
        if self.time_input == "sigma":
            return p.sigma(t)
        if self.time_input == "log_sigma":
            return p.log_sigma(t)
        return p.log_snr(t)

    def _coeffs(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t = as_time(t, like=x)
        if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != x.shape[0]):
            raise ValueError(f"t must be a scalar or of shape ({x.shape[0]},), got shape {tuple(t.shape)}")
        return t, self.process.alpha(t), self.process.sigma(t)

    def _call_net(self, x: torch.Tensor, t: torch.Tensor, alpha, sigma, cond) -> torch.Tensor:
        if x.ndim < 1:
            raise ValueError("x must be batch-first with at least one dimension")
        if x.device.type == "cpu" and not bool(torch.isfinite(x).all()):
            raise ValueError("x contains NaN/Inf")
        batch = x.shape[0]
        # the network runs in its own dtype (a float32 module fed a float64 state, as in diffusers' pipelines);
        # the result comes back in the state's dtype
        net_dtype = self.net_dtype()
        in_dtype = x.dtype if net_dtype is None else net_dtype
        if self.prediction == "edm":
            xb = x / bcast(alpha, x)
            t_in = (sigma / alpha).expand(batch) if (sigma / alpha).ndim == 0 else sigma / alpha
            out = self.net(xb.to(in_dtype), t_in.to(device=x.device, dtype=in_dtype), **cond)
        else:
            t_in = self.net_time(t)
            t_in = t_in.expand(batch) if t_in.ndim == 0 else t_in
            out = self.net(x.to(in_dtype), t_in.to(device=x.device, dtype=in_dtype), **cond)
        self.nfe += 1
        if not isinstance(out, torch.Tensor):
            out = getattr(out, "sample", out)  # diffusers-style outputs
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"the network returned shape {got}; expected the input's shape {tuple(x.shape)}")
        if out.device.type == "cpu" and not bool(torch.isfinite(out).all()):  # (no check on a GPU: no sync)
            when = float(t) if t.ndim == 0 else float(t.reshape(-1)[0])
            raise ValueError(f"the model returned NaN/Inf at t = {when:.6g}")
        return out.to(x.dtype)

    def net_dtype(self) -> torch.dtype | None:
        """The floating dtype of the network's parameters when it is an ``nn.Module`` (else None)."""
        if isinstance(self.net, torch.nn.Module):
            p = next(self.net.parameters(), None)
            if p is not None and p.is_floating_point():
                return p.dtype
        return None

    def to(self, dtype: torch.dtype | None = None, device=None) -> ScoreModel:
        """A copy whose network (when it is an ``nn.Module``) is a copy moved to ``dtype``/``device``; the
        original is unchanged. Other networks are shared as they are."""
        import copy

        other = copy.copy(self)
        if isinstance(self.net, torch.nn.Module):
            other.net = copy.deepcopy(self.net).to(dtype=dtype, device=device)
        other.nfe = 0
        return other

    # --- parameterizations -----------------------------------------------------------------------------
    def predict(self, x: torch.Tensor, t, kind: str = "x0", **cond) -> torch.Tensor:
        """The prediction ``kind`` (``"eps"``, ``"x0"``, ``"v"``, ``"score"``) at ``(x, t)``: one network call."""
        check_choice(kind, "kind", ("eps", "x0", "v", "score"))
        t, alpha, sigma = self._coeffs(x, t)
        raw = self._call_net(x, t, alpha, sigma, cond)
        return convert(raw, self.prediction if self.prediction != "edm" else "x0", kind, x, alpha, sigma)

    def eps(self, x: torch.Tensor, t, **cond) -> torch.Tensor:
        """The noise prediction at ``(x, t)``: ``predict(x, t, "eps")``."""
        return self.predict(x, t, "eps", **cond)

    def x0(self, x: torch.Tensor, t, **cond) -> torch.Tensor:
        """The data prediction at ``(x, t)``: ``predict(x, t, "x0")``."""
        return self.predict(x, t, "x0", **cond)

    def v(self, x: torch.Tensor, t, **cond) -> torch.Tensor:
        """The velocity prediction at ``(x, t)``: ``predict(x, t, "v")`` (VP only)."""
        return self.predict(x, t, "v", **cond)

    def score(self, x: torch.Tensor, t, **cond) -> torch.Tensor:
        """The score at ``(x, t)``: ``predict(x, t, "score")``."""
        return self.predict(x, t, "score", **cond)

    def __call__(self, x: torch.Tensor, t, **cond) -> torch.Tensor:
        return self.predict(x, t, self.prediction if self.prediction != "edm" else "x0", **cond)

    def __repr__(self):
        return f"ScoreModel(prediction={self.prediction!r}, time_input={self.time_input!r}, process={self.process!r})"


class LatentScoreModel(ScoreModel):
    """A `ScoreModel` over the latent space of an autoencoder: latent diffusion (Rombach et al. 2022).

    Every solver and sampler sees an ordinary model on latents of shape ``sample_shape`` (distances such as
    the RMSE of ``sdekit compare`` are in latent space); ``decode(z)`` maps sampled latents to data and
    ``encode(x)`` data to latents (e.g. for held-out data or inversion).

    Args:
        net, process, prediction, time_input: as for `ScoreModel`, with ``net`` trained on latents.
        autoencoder: an object with ``encode(x)`` and ``decode(z)`` (e.g. [`sdekit.nets.Autoencoder`][]); an
            ``nn.Module`` runs in its own dtype and returns the caller's.
        sample_shape: the shape of one latent; defaults to ``autoencoder.latent_shape`` when it has one
            (and must equal it).
    """

    def __init__(self, net: Callable, process: DiffusionProcess, prediction: str = "eps", time_input: str = "t", *,
                 autoencoder, sample_shape: tuple[int, ...] | None = None):
        for method in ("encode", "decode"):
            if not callable(getattr(autoencoder, method, None)):
                raise TypeError(f"autoencoder must have encode(x) and decode(z) methods; {type(autoencoder).__name__} "
                                f"has no {method}")
        latent_shape = getattr(autoencoder, "latent_shape", None)
        if sample_shape is None:
            sample_shape = latent_shape
        super().__init__(net, process, prediction, time_input, sample_shape=sample_shape)
        if latent_shape is not None and self.sample_shape != tuple(latent_shape):
            raise ValueError(f"sample_shape {self.sample_shape} differs from the autoencoder's latent shape "
                             f"{tuple(latent_shape)}")
        self.autoencoder = autoencoder

    @property
    def data_shape(self) -> tuple[int, ...] | None:
        """The shape of one decoded sample (the autoencoder's ``image_shape``), or None if it does not say."""
        shape = getattr(self.autoencoder, "image_shape", None)
        return None if shape is None else tuple(shape)

    def _run(self, method: str, value: torch.Tensor) -> torch.Tensor:
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{method} expects a tensor, got {type(value).__name__}")
        module = self.autoencoder
        if isinstance(module, torch.nn.Module):
            p = next(module.parameters(), None)
            if p is not None and p.is_floating_point():
                return getattr(module, method)(value.to(device=p.device, dtype=p.dtype)).to(value)
        return getattr(module, method)(value)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Data ``(B, *data_shape)`` to latents ``(B, *sample_shape)``, in ``x``'s dtype and device."""
        return self._run("encode", x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, *sample_shape)`` (e.g. samples) to data ``(B, *data_shape)``, in ``z``'s dtype and
        device."""
        return self._run("decode", z)

    def to(self, dtype: torch.dtype | None = None, device=None) -> LatentScoreModel:
        """A copy whose network and autoencoder (when they are ``nn.Module``s) are copies moved to
        ``dtype``/``device``; the original is unchanged."""
        import copy

        other = super().to(dtype=dtype, device=device)
        if isinstance(self.autoencoder, torch.nn.Module):
            other.autoencoder = copy.deepcopy(self.autoencoder).to(dtype=dtype, device=device)
        return other

    def __repr__(self):
        return (f"LatentScoreModel(prediction={self.prediction!r}, time_input={self.time_input!r}, "
                f"process={self.process!r}, sample_shape={self.sample_shape})")


def _check_sample_shape(sample_shape) -> tuple[int, ...] | None:
    """``sample_shape`` as a tuple of positive ints (or None); a one-line TypeError/ValueError otherwise."""
    if sample_shape is None:
        return None
    if isinstance(sample_shape, (str, bytes)) or not hasattr(sample_shape, "__iter__"):
        raise TypeError(f"sample_shape must be None or a sequence of positive ints, got {sample_shape!r}")
    dims = tuple(sample_shape)
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, numbers.Integral):
            raise TypeError(f"sample_shape must be a sequence of positive ints, got {dims!r}")
        if d <= 0:
            raise ValueError(f"sample_shape entries must be positive ints, got {dims!r}")
    return tuple(int(d) for d in dims)


def convert(value: torch.Tensor, src: str, dst: str, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """Convert a prediction between parameterizations exactly, given ``x`` and ``alpha``, ``sigma`` at t.

    ``alpha`` and ``sigma`` may be numbers, 0-d or per-sample tensors.
    """
    check_choice(src, "src", ("eps", "x0", "v", "score"))
    check_choice(dst, "dst", ("eps", "x0", "v", "score"))
    if src == dst:
        return value
    a, s = bcast(alpha, x), bcast(sigma, x)
    # First to (eps, x0) ...
    if src == "eps":
        eps = value
        x0 = (x - s * eps) / a
    elif src == "x0":
        x0 = value
        eps = (x - a * x0) / s
    elif src == "v":
        norm = a * a + s * s
        x0 = (a * x - s * value) / norm
        eps = (s * x + a * value) / norm
    else:  # score
        eps = -s * value
        x0 = (x - s * eps) / a
    # ... then to the target.
    if dst == "eps":
        return eps
    if dst == "x0":
        return x0
    if dst == "v":
        return a * eps - s * x0
    return -eps / s
