"""The kernels package without Triton, the benchmark scripts without a GPU, and the code in docs/kernels.md.

Each check runs in a fresh interpreter: hiding Triton and importing the package must not disturb the rest of
the test session.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdekit.kernels import _triton, attention, combine

ROOT = Path(__file__).resolve().parents[2]

WITHOUT_TRITON = """
import sys

class HideTriton:
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ImportError("triton hidden for this test")

sys.meta_path.insert(0, HideTriton())
import torch
import sdekit.kernels as kernels

assert not kernels.triton_available()
x = torch.ones(2, 3)
torch.testing.assert_close(kernels.combine([2.0], [x]), 2 * x)
q = torch.randn(1, 1, 4, 8)
torch.testing.assert_close(kernels.attention(q, q, q), kernels.attention(q, q, q, backend="torch"))
for call in (lambda: kernels.combine([2.0], [x], backend="triton"),
             lambda: kernels.attention(q, q, q, backend="triton")):
    try:
        call()
    except RuntimeError as error:
        assert "needs the triton package" in str(error), error
    else:
        raise AssertionError("backend='triton' without triton did not raise")
print("ok")
"""


def _python(code_or_args):
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else code_or_args
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_import_and_torch_backends_without_triton():
    result = _python(WITHOUT_TRITON)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path of the scripts")
@pytest.mark.parametrize("script", ["bench_combine.py", "bench_attention.py", "bench_sampling_device.py"])
def test_benchmark_scripts_exit_cleanly_without_gpu(script):
    result = _python([str(ROOT / "benchmarks" / script)])
    assert result.returncode == 0, result.stderr
    assert "no CUDA device" in result.stdout


def test_sampling_benchmark_runs_on_cpu(tmp_path):
    """The end-to-end device benchmark's own code path, on a CPU with tiny sizes (no numbers claimed)."""
    out = tmp_path / "sampling.json"
    result = _python([str(ROOT / "benchmarks" / "bench_sampling_device.py"), "--device", "cpu", "--quick",
                      "--out", str(out)])
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())["rows"]
    assert {r["solver"] for r in rows} == {"ddim", "dpmpp_2m"} and all(r["images_per_s"] > 0 for r in rows)


def test_docs_code_runs():
    """Every ```python block of docs/kernels.md, in order, in one interpreter."""
    text = (ROOT / "docs" / "kernels.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert blocks
    result = _python("\n".join(blocks))
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(not _triton.triton_available(), reason="needs triton")
def test_triton_backend_errors_say_what_is_missing(monkeypatch):
    x = torch.ones(1, 1, 4, 16)
    monkeypatch.setattr(_triton, "interpreting", lambda: False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        combine([1.0], [x], backend="triton")
    monkeypatch.setattr(_triton.triton, "__version__", "3.1.0")
    with pytest.raises(RuntimeError, match=r"triton >= 3\.3"):
        attention(x, x, x, backend="triton")
