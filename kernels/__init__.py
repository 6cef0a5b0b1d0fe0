"""sdekit.kernels: Triton kernels beside their pure-PyTorch references (Triton optional at import time)."""
