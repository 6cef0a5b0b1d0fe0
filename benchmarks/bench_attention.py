"""Benchmark: the Triton attention forward ``sdekit.kernels.attention`` against PyTorch's SDPA backends.

Times the forward pass of non-causal attention with B * H = 256 (B = 16, H = 16), N = 256, 1024, 4096 and
D = 64, 128 in bfloat16 and float16, and reports TFLOP/s = 4 * B * H * N^2 * D / median time
(``triton.testing.do_bench``, quantiles 0.5 / 0.2 / 0.8). Rows:

- ``sdekit``: the FlashAttention-2 kernel (``backend="triton"``, autotuned on the first call);
- ``flash``, ``efficient``, ``cudnn``, ``math``: ``torch.nn.functional.scaled_dot_product_attention``
  restricted to one backend with ``torch.nn.attention.sdpa_kernel``. A backend that does not take a shape,
  or runs out of memory, is reported as such.

Target on an H100: at least 0.9x SDPA-flash at D = 64. No GPU results are recorded in the repository yet;
run this script on a GPU to produce them.

Usage::

    python benchmarks/bench_attention.py [--quick] [--out PATH]

Prints a table and writes JSON (GPU name, versions, every timing) to ``--out``, by default
``benchmarks/results/attention-<gpu>.json``. Without a CUDA device it says so and exits 0.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from gpu_info import default_out, gpu_name, nvidia_smi

DEVICE = "cuda"
QUANTILES = [0.5, 0.2, 0.8]
BATCH, HEADS = 16, 16
SEQUENCE_LENGTHS = [256, 1024, 4096]
HEAD_DIMS = [64, 128]
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION",
                 "math": "MATH"}
TARGET_OF_FLASH = 0.9


def sdpa(backend_name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(getattr(SDPBackend, backend_name)):
        return F.scaled_dot_product_attention(q, k, v)


def providers(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> dict:
    from torch.nn.attention import SDPBackend

    from sdekit.kernels import attention

    found = {"sdekit": partial(attention, q, k, v, backend="triton")}
    for label, backend_name in SDPA_BACKENDS.items():
        if hasattr(SDPBackend, backend_name):
            found[label] = partial(sdpa, backend_name, q, k, v)
    return found


def run(lengths: list[int], head_dims: list[int], dtypes: list[str]) -> list[dict]:
    from triton.testing import do_bench

    rows = []
    for dtype_name in dtypes:
        for head_dim in head_dims:
            for n in lengths:
                shape = (BATCH, HEADS, n, head_dim)
                q, k, v = (torch.randn(shape, device=DEVICE, dtype=DTYPES[dtype_name]) for _ in range(3))
                flops = 4 * BATCH * HEADS * n * n * head_dim
                row = {"dtype": dtype_name, "batch": BATCH, "heads": HEADS, "n": n, "head_dim": head_dim,
                       "flops": flops}
                reference = None
                for label, fn in providers(q, k, v).items():
                    try:
                        out = fn()
                        if reference is None and label != "sdekit":
                            reference = out
                        median, low, high = do_bench(fn, quantiles=QUANTILES)
                    except torch.cuda.OutOfMemoryError:
                        row[label] = {"error": "out of memory"}
                        torch.cuda.empty_cache()
                        continue
                    except RuntimeError as exc:  # an SDPA backend that does not take this shape or device
                        row[label] = {"error": str(exc).splitlines()[0][:200]}
                        continue
                    row[label] = {"ms": median, "ms_p20": low, "ms_p80": high,
                                  "tflops": flops / (median * 1e-3) / 1e12}
                    if label == "sdekit":
                        ours = out
                if reference is not None and "ms" in row.get("sdekit", {}):
                    difference = (ours.float() - reference.float()).abs().max().item()
                    row["sdekit"]["max_abs_diff_vs_sdpa"] = difference
                rows.append(row)
                print_row(row)
                del q, k, v
                torch.cuda.empty_cache()
    return rows


def tflops(row: dict, provider: str) -> float | None:
    return row.get(provider, {}).get("tflops")


def print_header() -> None:
    labels = ["sdekit", *SDPA_BACKENDS]
    print(f"{'dtype':>8} {'N':>5} {'D':>4} | " + " ".join(f"{label:>9}" for label in labels)
          + f" | {'/ flash':>7}   (TFLOP/s, median)")


def print_row(row: dict) -> None:
    cells = []
    for label in ["sdekit", *SDPA_BACKENDS]:
        value = tflops(row, label)
        error = row.get(label, {}).get("error", "n/a")
        cells.append(f"{value:9.1f}" if value is not None else error[:9].rjust(9))
    ours, flash = tflops(row, "sdekit"), tflops(row, "flash")
    ratio = f"{ours / flash:7.2f}" if ours and flash else "n/a".rjust(7)
    label = f"{row['dtype']:>8} {row['n']:>5} {row['head_dim']:>4}"
    print(f"{label} | {' '.join(cells)} | {ratio}", flush=True)


def check_targets(rows: list[dict]) -> list[str]:
    lines = []
    for row in rows:
        ours, flash = tflops(row, "sdekit"), tflops(row, "flash")
        if row["head_dim"] != 64 or not (ours and flash):
            continue
        ok = ours / flash >= TARGET_OF_FLASH
        lines.append(f"{row['dtype']} N={row['n']} D=64: {ours / flash:.2f}x SDPA-flash "
                     f"(target {TARGET_OF_FLASH}x) {'ok' if ok else 'MISSED'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="JSON path (default: results/attention-<gpu>.json)")
    parser.add_argument("--quick", action="store_true", help="N = 1024 only, both head dims, bfloat16")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_attention: no CUDA device, nothing to measure (the kernels' tests run on CPU instead).")
        return 0
    try:
        import triton
    except ImportError:
        print("bench_attention: triton is not installed, nothing to measure.")
        return 0

    lengths, dtypes = ([1024], ["bfloat16"]) if args.quick else (SEQUENCE_LENGTHS, list(DTYPES))
    print(f"attention forward on {gpu_name()}: B={BATCH}, H={HEADS}; TFLOP/s = 4 B H N^2 D / median time")
    print_header()
    rows = run(lengths, HEAD_DIMS, dtypes)
    targets = check_targets(rows)
    print("\n".join(["", "Targets (H100):"] + targets) if targets else "")

    result = {
        "benchmark": "attention",
        "gpu": gpu_name(),
        "nvidia_smi": nvidia_smi(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quantiles": QUANTILES,
        "tflops": "4 * B * H * N^2 * D / median seconds / 1e12 (forward only, non-causal)",
        "rows": rows,
        "targets": targets,
    }
    out = args.out or default_out("attention")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
