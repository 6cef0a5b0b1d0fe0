"""Shared by the kernel tests. Without a GPU, kernels run on CPU tensors through the Triton interpreter:
tests/conftest.py sets TRITON_INTERPRET=1 before anything imports triton."""

import pytest
import torch

from sdekit.kernels import triton_available
from sdekit.kernels._triton import interpreting

ON_GPU = torch.cuda.is_available()
CAN_RUN_TRITON = triton_available() and (ON_GPU or interpreting())


def skip_bfloat16_in_interpreter(dtype: torch.dtype) -> None:
    if dtype == torch.bfloat16 and not ON_GPU:
        pytest.skip("the Triton interpreter gets bfloat16 tl.dot wrong; bfloat16 attention runs on GPUs")
