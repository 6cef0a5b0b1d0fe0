"""End-to-end sampling on a device: the shipped digits UNet, 20 NFE, fused vs unfused, and host syncs per run.

For each batch size and each sampler, times ``sdekit.sample(model, x_T, solver, steps=20)`` with
``fused=False`` and ``fused=True`` (the Triton combine kernel for the sampler's final linear combination) and
reports images per second; the reference is the unfused run of the same sampler in the same process. It also
counts the host-device synchronisations of one sampling call under ``torch.cuda.set_sync_debug_mode("warn")``:
a loop that synchronises per step shows about one per step; sdekit aims for a constant few per call (checking
``x_T`` once, the NaN flags once at the end).

Usage::

    python benchmarks/bench_sampling_device.py [--device cuda] [--batches 256,1024] [--quick] [--out PATH]

On a machine without CUDA, ``--device cpu --quick`` runs the same code on small batches (no fused rows, no
sync counts) so the script itself is tested; the numbers are then not a GPU claim. Prints a table and writes
JSON with the device name.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

SAMPLERS = ("ddim", "dpmpp_2m", "unipc", "dpmpp_2m_sde")
NFE = 20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_sampling(model, x_T, solver, fused, repeats, device) -> list[float]:
    import sdekit

    times = []
    for r in range(repeats + 1):  # one warm-up (Triton compiles there)
        gen = torch.Generator(device=device).manual_seed(r)
        _sync(device)
        start = time.perf_counter()
        sdekit.sample(model, x_T, solver, steps=NFE, spacing="log_snr", generator=gen, fused=fused)
        _sync(device)
        if r:
            times.append(time.perf_counter() - start)
    return times


def count_syncs(model, x_T, solver, device) -> int | None:
    """Host-device synchronisations of one sampling call (CUDA only)."""
    import sdekit

    if device.type != "cuda":
        return None
    gen = torch.Generator(device=device).manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            sdekit.sample(model, x_T, solver, steps=NFE, spacing="log_snr", generator=gen)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def main(argv=None) -> dict:
    import sdekit

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--batches", default="256,1024")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="batch 8, one repeat, two samplers")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to measure (use --device cpu --quick to test the script)")
        return {}
    batches = [8] if args.quick else [int(b) for b in args.batches.split(",")]
    samplers = SAMPLERS[:2] if args.quick else SAMPLERS
    repeats = 1 if args.quick else args.repeats
    fused_modes = (False, True) if device.type == "cuda" else (False,)
    model = sdekit.zoo.load("digits-vp-eps", device=device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows = []
    for batch in batches:
        x_T = model.process.prior_sample((batch, 1, 8, 8), generator=torch.Generator().manual_seed(0)).to(device)
        for solver in samplers:
            med = {}
            for fused in fused_modes:
                t = time_sampling(model, x_T, solver, fused, repeats, device)
                med[fused] = statistics.median(t)
                rows.append({"batch": batch, "solver": solver, "fused": fused, "median_s": med[fused],
                             "images_per_s": batch / med[fused], "times_s": t})
            if True in med:
                rows[-1]["speedup_vs_unfused"] = med[False] / med[True]
            rows[-1]["syncs_per_call"] = count_syncs(model, x_T, solver, device)
    print(f"digits-vp-eps, {NFE} NFE, log-SNR grid, device {name}")
    print(f"{'batch':>6} {'solver':14} {'fused':>6} {'median s':>9} {'img/s':>9} {'vs unfused':>10} {'syncs':>6}")
    for r in rows:
        vs = f"{r['speedup_vs_unfused']:.2f}x" if "speedup_vs_unfused" in r else "-"
        syncs = "-" if r.get("syncs_per_call") is None else str(r["syncs_per_call"])
        print(f"{r['batch']:6d} {r['solver']:14} {str(r['fused']):>6} {r['median_s']:9.4f} {r['images_per_s']:9.1f} "
              f"{vs:>10} {syncs:>6}")
    report = {"benchmark": "bench_sampling_device", "device": name, "nfe": NFE, "torch": torch.__version__,
              "date": datetime.date.today().isoformat(), "rows": rows}
    slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    out = args.out or Path(__file__).resolve().parent / "results" / f"sampling-{slug}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
