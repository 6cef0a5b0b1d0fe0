"""Accuracy per NFE of the adaptive DPM-Solver (Lu et al. 2022, §3.4, DPM-Solver-12 and -23) on analytic mixtures.

Runs ``sample(model, x_T, "dpm_solver_adaptive", order=k, rtol=..., atol=...)`` with the defaults first (DPM-Solver's
``rtol = 0.05``, ``atol = 0.0078``), then tighter tolerances, and measures the RMS error against the exact
probability-flow ODE solution (scipy DOP853 at rtol = atol = 1e-12 on the exact mixture score, float64), together
with the model evaluations counted. Ends: the process's default ``t_min`` and, where ``sigma(0) = 0``, ``t = 0``.

Usage: ``python benchmarks/bench_adaptive_dpm.py [--out benchmarks/results/bench_adaptive_dpm.json] [--label L]``.
Prints a table and writes JSON (``--label`` names the implementation measured, e.g. a commit).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

import sdekit
from sdekit.analytic import GaussianMixture, reference_solve
from sdekit.reverse import probability_flow

F64 = torch.float64
TOLERANCES = [(0.05, 0.0078), (1e-2, 1e-3), (1e-3, 1e-4), (1e-4, 1e-5)]


def _cases():
    for preset in ("ring2d", "stress8d"):
        gmm = GaussianMixture.preset(preset)
        for pname, process in (("VP-linear", sdekit.VP()), ("EDM", sdekit.EDM())):
            yield preset, gmm, pname, process


def run(batch: int, label: str) -> list[dict]:
    rows = []
    for preset, gmm, pname, process in _cases():
        model = gmm.model(process)
        dim = gmm.means.shape[-1]
        x_T = process.prior_sample((batch, dim), generator=torch.Generator().manual_seed(0), dtype=F64)
        ends = [("t_min", process.t_min)]
        if float(process.sigma(torch.tensor(0.0, dtype=F64))) == 0.0 and process.t_min > 0:
            ends.append(("0", 0.0))
        for end_name, t_end in ends:
            t_ref_end = max(t_end, 1e-7)  # the exact flow is integrated to just above sigma = 0 (sigma(1e-7) ~ 1e-4)
            exact = reference_solve(probability_flow(process, model), x_T, process.t_max, t_ref_end)
            if t_end == 0.0:  # the last bit to sigma = 0 is the posterior mean at t_ref_end: error O(sigma) there
                exact = model.predict(exact, torch.tensor(t_ref_end, dtype=F64), "x0")
            for order in (2, 3):
                for rtol, atol in TOLERANCES:
                    row = {"mixture": preset, "process": pname, "t_end": end_name, "order": order, "rtol": rtol,
                           "atol": atol, "label": label}
                    t0 = time.perf_counter()
                    try:
                        sol = sdekit.sample(model, x_T, "dpm_solver_adaptive", order=order, rtol=rtol, atol=atol,
                                            t_end=t_end)
                    except Exception as e:  # recorded: the old implementation could not end at t = 0
                        row.update(error=f"{type(e).__name__}: {e}"[:200])
                        rows.append(row)
                        continue
                    rmse = float(((sol.x - exact) ** 2).sum(-1).mean().sqrt())
                    ok = bool(torch.isfinite(sol.x).all())
                    row.update(nfe=int(sol.stats["nfe"]), rmse=rmse if ok else math.inf,
                               accepted=int(sol.stats["n_accepted"]), rejected=int(sol.stats["n_rejected"]),
                               seconds=time.perf_counter() - t0)
                    rows.append(row)
    return rows


def compare(runs: dict) -> list[dict]:
    """Accuracy per NFE of the last run against the first: for each case a least-squares line of log RMSE against
    log NFE over the tolerances, both lines evaluated at the cases' geometric-mean NFE."""
    import numpy as np

    (first, a), (last, b) = list(runs.items())[0], list(runs.items())[-1]
    groups: dict = {}
    for label, run in (("first", a), ("last", b)):
        for r in run["rows"]:
            if "nfe" in r and math.isfinite(r["rmse"]):
                key = (r["mixture"], r["process"], r["t_end"], r["order"])
                groups.setdefault(key, {"first": [], "last": []})[label].append((r["nfe"], r["rmse"]))
    out = []
    for key, v in groups.items():
        if min(len(v["first"]), len(v["last"])) < 2:
            continue
        fits = {k: np.polyfit(np.log([n for n, _ in v[k]]), np.log([e for _, e in v[k]]), 1) for k in v}
        at = float(np.log([n for n, _ in v["first"] + v["last"]]).mean())
        ratio = math.exp(np.polyval(fits["last"], at) - np.polyval(fits["first"], at))
        out.append({"case": "/".join(map(str, key)), "nfe": round(math.exp(at)), "error_ratio": ratio,
                    "slope_first": float(fits["first"][0]), "slope_last": float(fits["last"][0])})
    print(f"\nerror of {last!r} / error of {first!r} at equal NFE (below 1: more accurate per NFE)")
    for r in out:
        print(f"  {r['case']:28} NFE {r['nfe']:5d}  {r['error_ratio']:.2f}")
    if out:
        print(f"  geometric mean {math.exp(sum(math.log(r['error_ratio']) for r in out) / len(out)):.2f}")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--label", default="current")
    ap.add_argument("--out", default="benchmarks/results/bench_adaptive_dpm.json")
    args = ap.parse_args(argv)
    rows = run(args.batch, args.label)
    print(f"{'mixture':9} {'process':9} {'end':5} {'k':>1} {'rtol':>7} {'atol':>7} {'NFE':>5} {'RMSE':>10}")
    for r in rows:
        tail = f"{r['nfe']:5d} {r['rmse']:10.3e}" if "nfe" in r else r["error"][:60]
        print(f"{r['mixture']:9} {r['process']:9} {r['t_end']:5} {r['order']:1d} {r['rtol']:7.0e} {r['atol']:7.0e} "
              f"{tail}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = json.loads(out.read_text()) if out.exists() else {}
    doc.setdefault("runs", {})[args.label] = {"batch": args.batch, "machine": platform.platform(),
                                              "torch": torch.__version__, "rows": rows}
    if len(doc["runs"]) > 1:
        doc["comparison"] = compare(doc["runs"])
    out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
