"""Test-suite setup: hypothesis profiles and the Triton interpreter on machines without a GPU.

Profiles: ``ci`` (derandomized, fixed example count, no deadline; chosen when CI=true), ``dev`` (the
default elsewhere) and ``thorough`` (nightly). Pick one with HYPOTHESIS_PROFILE=name.
"""

import os
import tempfile

# hypothesis keeps its example database and a constants cache (holding absolute paths) in ./.hypothesis of the
# working folder, even with the database off: point it at a temporary folder so a test run leaves no files behind
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", tempfile.mkdtemp(prefix="sdekit-hypothesis-"))

# Triton kernels run on CPU tensors through the interpreter when no GPU is present. This must be set
# before any kernel module imports triton.
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=25,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_default = "ci" if os.environ.get("CI", "").lower() in ("1", "true", "yes") else "dev"
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", _default))


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_thread_module():
    """`one_thread` for a whole module of tiny-tensor tests (``pytestmark = usefixtures("one_thread_module")``):
    intra-op threads only add synchronisation, which costs 100x on shared cores (a (5, 3) softmax: 1 us on one
    thread, 270 us on two busy ones)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def one_thread():
    """Small tensors: one torch thread is faster, and on a busy machine extra OpenMP threads spin idle."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
