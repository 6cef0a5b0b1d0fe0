"""How a sampler's error on a shipped network falls with NFE, far beyond the budgets of bench_samplers.

bench_samplers finds that on the digits UNet every sampler's RMSE falls at about order 2 from 10 to 20 NFE and
much more slowly from 20 to 50, in both libraries. This script follows DPM-Solver++(2M) on the log-SNR and
quadratic grids from 10 to 400 steps against the network's float64 PF-ODE (DOP853 in log(sigma/alpha),
rtol 1e-7), with the network in float32 (as the benchmark runs it) and in float64: if the two agree, the slow
stretch is the ODE's, not round-off; if the error then resumes its order, the reference is not what stops it.
Writes ``results/network_convergence.json``.

Run: ``python benchmarks/network_convergence.py`` (digits, 8 images: about 2 minutes on one thread).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_samplers as bs  # noqa: E402


def main(argv=None) -> dict:
    from sdekit import sample
    from sdekit.analytic import reference_solve_log_snr

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--problem", choices=("moons", "digits"), default="digits")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 100, 200, 400])
    p.add_argument("--rtol", type=float, default=1e-7)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "network_convergence.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    prob = bs.make_problem(args.problem, args.rtol)
    x = prob.x_T(args.batch, 0)
    t0 = time.perf_counter()
    ref = reference_solve_log_snr(prob.model64, x.double(), 1.0, prob.t_end, rtol=args.rtol, atol=args.rtol)
    ref_s = time.perf_counter() - t0
    rows = []
    for spacing in ("log_snr", "quadratic"):
        prev = None
        for n in args.steps:
            e32 = bs.errors(sample(prob.model, x, "dpmpp_2m", steps=n, spacing=spacing).x, ref)["rmse"]
            e64 = bs.errors(sample(prob.model64, x.double(), "dpmpp_2m", steps=n, spacing=spacing).x, ref)["rmse"]
            slope = math.log(prev[1] / e64) / math.log(n / prev[0]) if prev else None
            rows.append({"spacing": spacing, "steps": n, "rmse_float32": e32, "rmse_float64": e64,
                         "local_order": slope})
            print(f"{spacing:9s} {n:4d} steps: RMSE float32 {e32:.3e}, float64 {e64:.3e}"
                  + (f", local order {slope:.2f}" if slope is not None else ""), flush=True)
            prev = (n, e64)
    report = {"benchmark": "network_convergence", "problem": {**prob.describe(), "batch": args.batch, "seed": 0},
              "sampler": "dpmpp_2m", "reference": f"reference_solve_log_snr, DOP853, rtol = atol = {args.rtol:g}",
              "reference_s": ref_s, "rows": rows, "machine": bs.machine_info()}
    args.out.write_text(json.dumps(bs.finite_or_none(report), indent=2, allow_nan=False))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
