"""Fixtures of the kernel tests: the device the ``backend="triton"`` tests run on."""

import pytest
import torch

from .helpers import CAN_RUN_TRITON, ON_GPU


@pytest.fixture
def device() -> torch.device:
    """The GPU when there is one, else the CPU through the Triton interpreter; skips where neither works."""
    if not CAN_RUN_TRITON:
        pytest.skip("no Triton kernel can run here: triton missing, or no GPU and TRITON_INTERPRET unset")
    return torch.device("cuda" if ON_GPU else "cpu")


@pytest.fixture
def cuda() -> torch.device:
    """The GPU of the ``@pytest.mark.gpu`` tests."""
    if not ON_GPU:
        pytest.skip("needs a CUDA device")
    if not CAN_RUN_TRITON:
        pytest.skip("needs triton")
    return torch.device("cuda")
