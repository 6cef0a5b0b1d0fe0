"""sdekit.kernels: Triton kernels beside their pure-PyTorch references (Triton optional at import time).

- `combine`: fused solver update ``x' = sum_i c_i y_i + noise * z`` with in-kernel Gaussian noise.
- `attention`: FlashAttention-2 forward (Dao 2023) returning the output and, optionally, the row
  log-sum-exp; `SelfAttention2d` is the UNet attention block built on it.

Each public function takes ``backend="auto" | "torch" | "triton"``. ``"auto"`` runs Triton on CUDA tensors
when Triton is installed and falls back to PyTorch elsewhere. The references (`combine_reference`,
`attention_reference`) are the test oracles. Importing this package never needs Triton; the kernels
are compiled on their first launch (see ``docs/kernels.md``).
"""

from ._triton import triton_available
from .attention import SelfAttention2d, TritonAttentionFunction, attention, attention_reference
from .combine import combine, combine_reference

__all__ = [
    "SelfAttention2d",
    "TritonAttentionFunction",
    "attention",
    "attention_reference",
    "combine",
    "combine_reference",
    "triton_available",
]
