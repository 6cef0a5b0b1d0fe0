"""Optional Triton: the one place that imports it, and the lazy ``@triton.jit`` the kernel modules use.

Importing [`sdekit.kernels`][] never needs Triton. The kernel functions are written at module level like
any Triton kernel, but they are handed to ``triton.jit`` only the first time they are launched. Two things
follow: a machine without Triton can import the package, and ``TRITON_INTERPRET=1`` (which ``triton.jit``
reads when it wraps a function) takes effect as long as it is set before the first Triton launch, not
before the first import.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

try:
    import triton
    import triton.language as tl
except Exception as exc:  # ImportError, or a broken install that fails while importing
    triton = None
    tl = None
    _IMPORT_ERROR: Exception | None = exc
else:
    _IMPORT_ERROR = None

__all__ = [
    "MIN_TRITON_VERSION",
    "LazyKernel",
    "interpreting",
    "lazy_jit",
    "require_triton",
    "tl",
    "triton",
    "triton_available",
]


# Tuple kernel arguments: compiled since Triton 3.2, in the interpreter since 3.3.
MIN_TRITON_VERSION = (3, 3)


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def triton_available() -> bool:
    """Whether the ``triton`` package imported; the ``"triton"`` backends need it."""
    return triton is not None


def interpreting() -> bool:
    """Whether Triton kernels run through the interpreter (``TRITON_INTERPRET=1``) instead of a GPU."""
    if triton is None:
        return False
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def require_triton(device: torch.device, what: str) -> None:
    """Raise a RuntimeError that says why ``what`` cannot run its Triton kernel on ``device``."""
    if triton is None:
        raise RuntimeError(
            f"{what}: backend='triton' needs the triton package, which failed to import "
            f"({type(_IMPORT_ERROR).__name__}: {_IMPORT_ERROR}). Install triton or use backend='torch'."
        )
    if _version_tuple(triton.__version__) < MIN_TRITON_VERSION:
        minimum = ".".join(map(str, MIN_TRITON_VERSION))
        raise RuntimeError(
            f"{what}: backend='triton' needs triton >= {minimum} (the kernels take tuple arguments), "
            f"found {triton.__version__}"
        )
    if device.type != "cuda" and not interpreting():
        raise RuntimeError(
            f"{what}: backend='triton' got {device.type} tensors; Triton kernels run on CUDA tensors, or on "
            "CPU tensors through the interpreter when TRITON_INTERPRET=1 is set before the first launch."
        )


class LazyKernel:
    """A kernel function that is passed to ``triton.jit`` on first use (see the module docstring)."""

    def __init__(self, fn: Callable[..., None], jit_options: dict[str, Any]) -> None:
        self.fn = fn
        self.jit_options = jit_options
        self._jitted: dict[bool, Any] = {}

    def jitted(self) -> Any:
        """The ``triton.jit`` kernel for the current mode (interpreted or compiled)."""
        mode = interpreting()
        if mode not in self._jitted:
            self._jitted[mode] = triton.jit(self.fn, **self.jit_options)
        return self._jitted[mode]


def lazy_jit(**jit_options: Any) -> Callable[[Callable[..., None]], LazyKernel]:
    """Decorator: like ``@triton.jit(**jit_options)``, applied at the first launch."""

    def wrap(fn: Callable[..., None]) -> LazyKernel:
        return LazyKernel(fn, jit_options)

    return wrap
