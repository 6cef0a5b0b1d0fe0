"""Benchmark: the fused update ``sdekit.kernels.combine`` against eager PyTorch, torch.compile and a copy.

Times ``x' = sum_i c_i y_i (+ noise * z)`` on float32 states of 1 MB to 1 GB with 2 to 5 inputs, with and
without noise, and reports effective bandwidth: the bytes of the inputs read plus the output written,
divided by the median time (``triton.testing.do_bench``, quantiles 0.5 / 0.2 / 0.8). The noise adds no
traffic to the fused kernel, which draws it in registers. Rows:

- ``sdekit``: the Triton kernel (``backend="triton"``, output into a preallocated tensor);
- ``eager``: the same formula as separate PyTorch operations, noise from ``torch.randn_like``;
- ``compile``: that formula through ``torch.compile`` (Inductor fuses it and draws its own noise);
- ``copy``: a device-to-device ``copy_`` moving the same number of bytes, the bandwidth ceiling.

Targets on an H100: the fused update reaches at least 85% of copy bandwidth, and at least 2.5x eager
PyTorch with 4 inputs + noise, for states of 64 MB and more. No GPU results are recorded in the repository
yet; run this script on a GPU to produce them.

Usage::

    python benchmarks/bench_combine.py [--quick] [--out PATH]

Prints a table and writes JSON (GPU name, versions, every timing) to ``--out``, by default
``benchmarks/results/combine-<gpu>.json``. Without a CUDA device it says so and exits 0.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from functools import partial
from pathlib import Path

import torch
from gpu_info import default_out, gpu_name, nvidia_smi

DEVICE = "cuda"
QUANTILES = [0.5, 0.2, 0.8]
SIZES_MB = [1, 4, 16, 64, 256, 1024]
INPUT_COUNTS = [2, 3, 4, 5]
NOISE = 0.1
TARGET_OF_COPY = 0.85
TARGET_OVER_EAGER = 2.5


def formula(coeffs: list[float], tensors: list[torch.Tensor], noise: float | None) -> torch.Tensor:
    """The update as separate operations: the eager baseline, and what torch.compile fuses."""
    result = coeffs[0] * tensors[0]
    for coefficient, tensor in zip(coeffs[1:], tensors[1:]):
        result = result + coefficient * tensor
    if noise is not None:
        # The global generator, not a torch.Generator: Inductor cannot fuse a generator-driven draw, and this
        # baseline should be the best torch.compile can do.
        result = result + noise * torch.randn_like(result)
    return result


def measure(fn) -> tuple[float, float, float]:
    """(median, 20th, 80th percentile) milliseconds."""
    from triton.testing import do_bench

    return tuple(do_bench(fn, quantiles=QUANTILES))


def run(sizes_mb: list[int], counts: list[int]) -> list[dict]:
    from sdekit.kernels import combine

    compiled = torch.compile(formula)
    rows = []
    for size_mb in sizes_mb:
        n = size_mb * 2**20 // 4
        for count in counts:
            tensors = [torch.randn(n, device=DEVICE) for _ in range(count)]
            coeffs = [1.0 - 0.3 * i for i in range(count)]
            out = torch.empty_like(tensors[0])
            moved = (count + 1) * n * 4
            source = torch.empty(moved // 8, device=DEVICE, dtype=torch.float32)  # read half, write half
            target = torch.empty_like(source)
            for noise in (None, NOISE):
                providers = {
                    "sdekit": partial(combine, coeffs, tensors, noise, 0, out, backend="triton"),
                    "eager": partial(formula, coeffs, tensors, noise),
                    "compile": partial(compiled, coeffs, tensors, noise),
                    "copy": partial(target.copy_, source),
                }
                row = {"state_mb": size_mb, "inputs": count, "noise": noise is not None, "bytes": moved}
                for provider, fn in providers.items():
                    try:
                        median, low, high = measure(fn)
                    except Exception as exc:  # a baseline failing (compile error, OOM) must not end the run
                        row[provider] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                        continue
                    gb_per_s = moved / (median * 1e-3) / 1e9
                    row[provider] = {"ms": median, "ms_p20": low, "ms_p80": high, "gb_per_s": gb_per_s}
                rows.append(row)
                print_row(row)
            del tensors, out, source, target
            torch.cuda.empty_cache()
    return rows


def gbps(row: dict, provider: str) -> float | None:
    return row.get(provider, {}).get("gb_per_s")


def print_header() -> None:
    print(f"{'state':>8} {'inputs':>6} {'noise':>5} | {'sdekit':>8} {'eager':>8} {'compile':>8} {'copy':>8} "
          f"| {'of copy':>7} {'x eager':>7}   (GB/s, median)")


def print_row(row: dict) -> None:
    def cell(value: float | None, fmt: str = "8.1f") -> str:
        return "n/a".rjust(int(fmt.split(".")[0])) if value is None else format(value, fmt)

    ours, eager, copy = gbps(row, "sdekit"), gbps(row, "eager"), gbps(row, "copy")
    of_copy = ours / copy if ours and copy else None
    over_eager = ours / eager if ours and eager else None
    print(f"{row['state_mb']:>6}MB {row['inputs']:>6} {'yes' if row['noise'] else 'no':>5} | "
          f"{cell(ours)} {cell(eager)} {cell(gbps(row, 'compile'))} {cell(copy)} | "
          f"{cell(of_copy, '7.2f')} {cell(over_eager, '7.2f')}", flush=True)


def check_targets(rows: list[dict]) -> list[str]:
    """Lines comparing the large-state rows with the H100 targets of the module docstring."""
    lines = []
    for row in rows:
        if row["state_mb"] < 64:
            continue
        ours, eager, copy = gbps(row, "sdekit"), gbps(row, "eager"), gbps(row, "copy")
        if not (ours and eager and copy):
            continue
        label = f"{row['state_mb']} MB, {row['inputs']} inputs{' + noise' if row['noise'] else ''}"
        verdict = "ok" if ours / copy >= TARGET_OF_COPY else "MISSED"
        lines.append(f"{label}: {ours / copy:.0%} of copy (target {TARGET_OF_COPY:.0%}) {verdict}")
        if row["inputs"] == 4 and row["noise"]:
            verdict = "ok" if ours / eager >= TARGET_OVER_EAGER else "MISSED"
            lines.append(f"{label}: {ours / eager:.2f}x eager (target {TARGET_OVER_EAGER}x) {verdict}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="JSON path (default: results/combine-<gpu>.json)")
    parser.add_argument("--quick", action="store_true", help="1 MB and 64 MB states, 2 and 4 inputs")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_combine: no CUDA device, nothing to measure (the kernels' tests run on CPU instead).")
        return 0
    try:
        import triton
    except ImportError:
        print("bench_combine: triton is not installed, nothing to measure.")
        return 0

    sizes, counts = ([1, 64], [2, 4]) if args.quick else (SIZES_MB, INPUT_COUNTS)
    print(f"combine on {gpu_name()}: float32 states; GB/s = (inputs + output) bytes / median time")
    print_header()
    rows = run(sizes, counts)
    targets = check_targets(rows)
    print("\n".join(["", "Targets (H100):"] + targets) if targets else "")

    result = {
        "benchmark": "combine",
        "gpu": gpu_name(),
        "nvidia_smi": nvidia_smi(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dtype": "float32",
        "quantiles": QUANTILES,
        "gb_per_s": "(inputs + 1) * state bytes / median seconds / 1e9",
        "rows": rows,
        "targets": targets,
    }
    out = args.out or default_out("combine")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
