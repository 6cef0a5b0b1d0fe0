"""The step-ratio bound of the multistep samplers at 30-100 steps on time-uniform grids (a finding, not a default).

On a time-uniform grid ending at t_min, the last step is long in log-SNR: its ratio to the step before falls
from 4.3 at 20 steps to 3.5 at 50 and 2.9 at 100. The step-ratio rule (``max_step_ratio``, default 3.5) lowers
the order of that step while the ratio is above the bound, so at 50 steps ``sdekit.sample``'s default keeps
second order on it for the first time. This script measures what that costs: ``sample(model, x_T, steps=n)``
(DPM-Solver++(2M), time grid) with the default bound and with 3.2 and 3.0, on the mixtures (2048 trajectories)
and moons (256), seed 0, against each problem's float64 reference. Writes ``results/step_ratio_bound.json``.

Run: ``python benchmarks/step_ratio_bound.py`` (about 3 minutes on one thread).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_samplers as bs  # noqa: E402

STEPS = (30, 48, 50, 60, 80, 100)
BOUNDS = (3.2, 3.0)
PROBLEMS = (("stress8d", 2048), ("ring2d", 2048), ("stress16d", 2048), ("moons", 256))


def main() -> dict:
    from sdekit import sample, time_grid
    from sdekit.solvers.diffusion import MAX_STEP_RATIO

    torch.set_num_threads(1)
    rows = []
    for name, batch in PROBLEMS:
        prob = bs.make_problem(name, bs.PROBLEMS[name]["ref_tol"])
        x = prob.x_T(batch, 0)
        ref = prob.reference(x)["t_min"]
        for n in STEPS:
            lam = prob.process.log_snr(time_grid(prob.process, n, "time", t_end=prob.t_end).double())
            h = (lam[1:] - lam[:-1]).abs()
            default = bs.errors(sample(prob.model, x, steps=n).x, ref)["rmse"]
            row = {"problem": name, "trajectories": batch, "steps": n, "last_step_ratio": float(h[-1] / h[-2]),
                   "last_step_h": float(h[-1]), f"rmse_bound_{MAX_STEP_RATIO:g}": default}
            for b in BOUNDS:
                rmse = bs.errors(sample(prob.model, x, steps=n, max_step_ratio=b).x, ref)["rmse"]
                row[f"rmse_bound_{b:g}"] = rmse
                row[f"ratio_bound_{b:g}_to_default"] = rmse / default
            rows.append(row)
            print(f"{name:9s} {n:3d} steps: last ratio {row['last_step_ratio']:.2f}, RMSE {default:.3e} (default)"
                  + "".join(f", bound {b:g}: x{row[f'ratio_bound_{b:g}_to_default']:.2f}" for b in BOUNDS),
                  flush=True)
    report = {"benchmark": "step_ratio_bound", "sampler": "sdekit.sample defaults (dpmpp_2m, time grid, t_min)",
              "default_bound": MAX_STEP_RATIO, "seed": 0, "rows": rows, "machine": bs.machine_info()}
    out = Path(__file__).resolve().parent / "results" / "step_ratio_bound.json"
    out.write_text(json.dumps(bs.finite_or_none(report), indent=2, allow_nan=False))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
