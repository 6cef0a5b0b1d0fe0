"""The generic SDE layer: drift, diffusion and a declared noise type; an ODE is an SDE without diffusion.

An Itô SDE ``dx = f(t, x) dt + g(t, x) dW`` on a batch-first state of any shape ``(B, *S)``.

Noise types (what ``g`` returns and how it meets the Brownian increment ``dW``):

``"scalar"``
    One Brownian motion per sample: ``dW`` has shape ``(B,)``; ``g`` is a scalar, a per-sample ``(B,)``
    tensor or a tensor of the state's shape (each coordinate's coefficient of that one motion).
``"diagonal"``
    One Brownian motion per coordinate: ``dW`` and ``g`` have the state's shape; ``g_i`` may depend on
    ``x_i`` only (the usual assumption of Milstein-type schemes, as in torchsde).
``"additive"``
    ``g`` does not depend on ``x`` (but may on ``t``). Without ``brownian_size``, ``g`` is a scalar, a
    per-sample tensor or of the state's shape and ``dW`` has the state's shape. With ``brownian_size=m``,
    ``g`` has shape ``(B, *S, m)`` (or ``(*S, m)``) and ``dW`` has shape ``(B, m)``.
    Additive noise lets solvers such as SRA1 reach strong order 1.5.
``"general"``
    ``g`` maps an ``m``-dimensional Brownian motion onto the state: shape ``(B, *S, m)``, ``dW`` ``(B, m)``.

Time is never flipped: a solve on a decreasing grid integrates the same equations with ``dt < 0`` and
Brownian increments of variance ``|dt|`` (for a reverse-time diffusion this is Anderson's reverse SDE).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._utils import bcast, check_choice

NOISE_TYPES = ("scalar", "diagonal", "additive", "general")

Drift = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class SDE:
    """An Itô SDE ``dx = drift(t, x) dt + diffusion(t, x) dW``.

    Build it from two callables, or subclass it and override `drift` and `diffusion`.

    Args:
        drift: ``f(t, x)`` returning a tensor of ``x``'s shape. ``t`` is a 0-d tensor or a per-sample
            ``(B,)`` tensor.
        diffusion: ``g(t, x)``; its shape depends on ``noise_type`` (see the module docstring). ``None``
            makes an ODE.
        noise_type: one of ``"scalar"``, ``"diagonal"``, ``"additive"``, ``"general"``.
        brownian_size: ``m``, the number of Brownian motions per sample, for ``"general"`` noise (required)
            and matrix-valued ``"additive"`` noise (optional).
        diffusion_jvp: optional ``(t, x, v) -> (dg/dx) v`` used by Milstein-type solvers; autograd
            (``torch.func.jvp``) computes it when not given.
    """

    noise_type: str | None = "diagonal"
    brownian_size: int | None = None

    def __init__(
        self,
        drift: Drift | None = None,
        diffusion: Drift | None = None,
        *,
        noise_type: str | None = "diagonal",
        brownian_size: int | None = None,
        diffusion_jvp: Callable | None = None,
    ):
        if drift is not None and not callable(drift):
            raise TypeError(f"drift must be callable f(t, x), got {type(drift).__name__}")
        if drift is None and type(self).drift is SDE.drift:
            raise TypeError("SDE needs a drift: pass drift=f(t, x) or override SDE.drift in a subclass")
        if diffusion is not None and not callable(diffusion):
            raise TypeError(f"diffusion must be callable g(t, x) or None, got {type(diffusion).__name__}")
        self._drift = drift
        self._diffusion = diffusion
        if self._has_diffusion():
            check_choice(noise_type, "noise_type", NOISE_TYPES)
            if noise_type == "general" and brownian_size is None:
                raise ValueError("noise_type='general' needs brownian_size (the number m of Brownian motions)")
            if brownian_size is not None and (not isinstance(brownian_size, int) or brownian_size < 1):
                raise ValueError(f"brownian_size must be a positive int, got {brownian_size!r}")
            if brownian_size is not None and noise_type in ("scalar", "diagonal"):
                raise ValueError(f"brownian_size is only meaningful for 'general'/'additive' noise, not {noise_type!r}")
            self.noise_type = noise_type
            self.brownian_size = brownian_size
        else:
            self.noise_type = None
            self.brownian_size = None
        self._diffusion_jvp = diffusion_jvp

    # --- the two coefficient functions -------------------------------------------------------------
    def drift(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The drift ``f(t, x)``, shaped like ``x``."""
        return self._drift(t, x)

    def diffusion(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The diffusion ``g(t, x)``, shaped by the noise type (see the class docstring).

        Raises:
            TypeError: the problem is an ODE.
        """
        if self._diffusion is None:
            raise TypeError(f"{type(self).__name__} is an ODE: it has no diffusion")
        return self._diffusion(t, x)

    def _has_diffusion(self) -> bool:
        return type(self).diffusion is not SDE.diffusion or self._diffusion is not None

    @property
    def is_ode(self) -> bool:
        """Whether the problem has no diffusion (an `ODE`)."""
        return self.noise_type is None

    # --- noise geometry ----------------------------------------------------------------------------
    def brownian_shape(self, state_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the Brownian increment ``dW`` for a state of shape ``state_shape`` (batch first)."""
        if self.noise_type == "scalar":
            return (state_shape[0],)
        if self.brownian_size is not None:
            return (state_shape[0], self.brownian_size)
        return tuple(state_shape)

    def g_dw(self, g: torch.Tensor, dw: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The noise term ``g · dW`` (of ``x``'s shape) for an already evaluated ``g``."""
        if self.brownian_size is not None:
            # g: (B, *S, m) or (*S, m); dw: (B, m).
            if g.ndim == x.ndim:  # no batch dimension on g
                g = g.unsqueeze(0)
            dw_b = dw.reshape(dw.shape[0], *([1] * (x.ndim - 1)), dw.shape[1])
            return (g * dw_b).sum(-1)
        if self.noise_type == "scalar":
            return (bcast(g, x) * bcast(dw, x)).expand_as(x)
        return (bcast(g, x) if isinstance(g, torch.Tensor) and g.ndim == 1 and x.ndim > 1 else g) * dw

    def diffusion_jvp(self, t: torch.Tensor, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Directional derivative ``(∂g/∂x) v`` (for Milstein's correction, with ``v = g``)."""
        if self._diffusion_jvp is not None:
            return self._diffusion_jvp(t, x, v)
        _, out = torch.func.jvp(lambda y: self.diffusion(t, y), (x,), (v,))
        return out

    def __repr__(self) -> str:
        kind = "ODE" if self.is_ode else f"SDE(noise_type={self.noise_type!r})"
        return f"<{type(self).__name__} {kind}>"


class ODE(SDE):
    """An ODE ``dx/dt = drift(t, x)``: an `SDE` with no diffusion."""

    def __init__(self, drift: Drift | None = None):
        super().__init__(drift, None, noise_type=None)


# --- torchsde adapters -----------------------------------------------------------------------------
_TORCHSDE_NOISE = {"scalar": "scalar", "diagonal": "diagonal", "additive": "additive", "general": "general"}


def from_torchsde(obj) -> SDE:
    """Wrap a torchsde-style object (``f``, ``g``, ``noise_type``, ``sde_type``) as an sdekit `SDE`.

    torchsde states are ``(B, d)``. torchsde's ``scalar`` noise returns ``g`` of shape ``(B, d, 1)`` with a
    ``(B, 1)`` Brownian motion; ``additive``/``general`` return ``(B, d, m)``. Only Itô SDEs are accepted:
    sdekit's solvers are Itô schemes.
    """
    for attr in ("f", "g", "noise_type"):
        if not hasattr(obj, attr):
            raise TypeError(f"a torchsde-style SDE needs attribute {attr!r}; {type(obj).__name__} has none")
    sde_type = getattr(obj, "sde_type", "ito")
    if sde_type != "ito":
        raise ValueError(f"only Itô SDEs can be adapted (sde_type='ito'), got sde_type={sde_type!r}")
    nt = obj.noise_type
    check_choice(nt, "noise_type", tuple(_TORCHSDE_NOISE))
    if nt == "scalar":
        return SDE(obj.f, lambda t, x: obj.g(t, x).squeeze(-1), noise_type="scalar")
    if nt == "diagonal":
        return SDE(obj.f, obj.g, noise_type="diagonal")
    m = getattr(obj, "brownian_size", None)
    if m is None:
        raise ValueError(
            f"torchsde noise_type={nt!r} needs the number of Brownian motions: set obj.brownian_size = m"
        )
    return SDE(obj.f, obj.g, noise_type=nt, brownian_size=int(m))


class _TorchsdeView(torch.nn.Module):
    """An sdekit SDE seen through torchsde's interface on flattened ``(B, d)`` states."""

    sde_type = "ito"

    def __init__(self, sde: SDE, state_shape: tuple[int, ...]):
        super().__init__()
        self.sde = sde
        self.state_shape = tuple(state_shape)
        if sde.is_ode:
            raise TypeError("to_torchsde needs an SDE with a diffusion; an ODE has none")
        if sde.noise_type == "scalar":
            self.noise_type = "scalar"
        elif sde.brownian_size is not None:
            self.noise_type = "general" if sde.noise_type == "general" else "additive"
        else:
            self.noise_type = "diagonal"  # additive of the state's shape is a special case of diagonal

    def _unflat(self, y):
        return y.reshape(y.shape[0], *self.state_shape[1:])

    def f(self, t, y):
        return self.sde.drift(t, self._unflat(y)).reshape(y.shape[0], -1)

    def g(self, t, y):
        x = self._unflat(y)
        g = self.sde.diffusion(t, x)
        if self.noise_type in ("general", "additive"):
            g = g if g.ndim == x.ndim + 1 else g.unsqueeze(0).expand(x.shape[0], *g.shape)
            return g.reshape(y.shape[0], -1, g.shape[-1])
        g = torch.broadcast_to(bcast(g, x) if isinstance(g, torch.Tensor) else torch.as_tensor(g), x.shape)
        g = g.reshape(y.shape[0], -1)
        return g.unsqueeze(-1) if self.noise_type == "scalar" else g


def to_torchsde(sde: SDE, state_shape: tuple[int, ...]) -> torch.nn.Module:
    """View an sdekit `SDE` as a torchsde SDE over flattened states (``sde.f``, ``sde.g``).

    Use it with ``torchsde.sdeint(view, y0.reshape(B, -1), ts, ...)`` and reshape the result back to
    ``state_shape``.
    """
    return _TorchsdeView(sde, state_shape)
