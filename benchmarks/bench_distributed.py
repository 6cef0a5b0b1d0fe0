"""Strong scaling of ``sdekit compare`` and ``sdekit likelihood`` under ``torchrun`` on this machine.

The same command, on the shipped digits network (``digits-vp-eps``, a small UNet), runs as one plain process
and as ``torchrun --standalone --nproc_per_node=2`` (gloo), every process with one intra-op thread
(``OMP_NUM_THREADS=1``), one after the other, ``--repeats`` times each, alternating. Reported per workload:

- ``wall_1``, ``wall_2``: the median end-to-end wall time of the command (process start, imports, model
  load, the process group's rendezvous and the final gather included: what a user waits for);
- ``speedup = wall_1 / wall_2`` and ``efficiency = speedup / 2`` (1 is perfect strong scaling);
- the largest difference between the two runs' results (the network's float32 convolutions may round
  differently for different batch sizes, so the records agree to rounding rather than bit for bit; for the
  analytic models they are identical, which the test suite checks).

Workloads (each splits into whole blocks, evenly between two processes), float32 samplers: ``compare`` with
``--samples 256`` (two reference blocks of 128, DOP853 at rtol 5e-3: the float64 UNet costs about 0.46 s per
evaluation of 128 images on one thread, and the default 1e-8 takes about 4,000 evaluations per block) and DDIM
and DPM-Solver++(2M) at 10 NFE; ``compare`` with the stochastic samplers DDPM and DPM-Solver++(2M) SDE only
(no reference) on 1024 samples at 20 and 50 NFE; ``likelihood`` of 128 held-out digits (two blocks of 64) in
bits/dim with one Hutchinson probe at rtol 1e-3.

Run: ``python benchmarks/bench_distributed.py`` (a few minutes; ``--quick`` for smaller workloads). Writes
``benchmarks/results/bench_distributed.json`` (``bench_distributed_quick.json`` with ``--quick``). On a shared
machine the two processes compete with whatever else runs: the JSON records the CPU count and the load average
before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
                "TORCHELASTIC_RUN_ID")


def workloads(quick: bool) -> dict[str, list[str]]:
    """The commands measured (each splits into whole blocks evenly between two processes)."""
    k = 2 if quick else 1  # --quick: half the samples
    common = ["--model", "digits-vp-eps", "--dtype", "float32", "--no-plots", "--no-progress"]
    return {
        # the reference solve: two blocks of 128 (float64 UNet, ~0.46 s an evaluation of 128 images on one
        # thread, so a loose tolerance keeps it short; the scaling, not the reference's accuracy, is measured)
        "compare: reference + samplers": ["compare", *common, "--samples", "256", "--nfe", "10", "--solvers",
                                          "ddim,dpmpp_2m", "--no-reference-check", "--reference-rtol", "5e-3"],
        # stochastic samplers only (no reference): the samplers' own sharding
        "compare: stochastic samplers": ["compare", *common, "--samples", str(1024 // k), "--nfe", "20,50",
                                         "--solvers", "ddpm,dpmpp_2m_sde"],
        "likelihood: bits/dim": ["likelihood", "--model", "digits-vp-eps", "--samples", str(128 // k),
                                 "--divergence", "hutchinson", "--n-probes", "1", "--rtol", "1e-3", "--no-progress"],
    }


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")}


def run(args: list[str], processes: int, out: str) -> float:
    launcher = [sys.executable, "-m", "sdekit"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", "-m",
        "sdekit"]
    t0 = time.perf_counter()
    r = subprocess.run([*launcher, *args, "--out", out], cwd=ROOT, env=_env(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} on {processes} process(es) failed:\n{r.stdout}\n{r.stderr}")
    return wall


def results_of(kind: str, out: str) -> dict[str, float]:
    """The numbers a run produced, by name: every record's RMSE or sliced W2 (compare), or every image's
    bits/dim (likelihood)."""
    if kind.startswith("compare"):
        res = json.loads(Path(out, "results.json").read_text())
        return {f"{r['solver']}@{r['nfe_budget']}": r.get("rmse_vs_reference", r.get("sliced_w2"))
                for r in res["records"]}
    rec = json.loads(Path(out, "likelihood.json").read_text())
    return {f"image {i}": v for i, v in enumerate(rec["bpd_per_image"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller workloads (looser tolerances, 5 NFE)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each command on 1 and on 2 processes")
    ap.add_argument("--only", default=None, help="the workloads whose name starts with this (compare, likelihood)")
    a = ap.parse_args()
    if a.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    rows = []
    load_before = os.getloadavg()
    for kind, args in workloads(a.quick).items():
        if a.only and not kind.startswith(a.only):
            continue
        walls: dict[int, list[float]] = {1: [], 2: []}
        found: dict[int, dict] = {}
        for rep in range(a.repeats):
            for procs in (1, 2):
                with tempfile.TemporaryDirectory() as out:
                    walls[procs].append(run(args, procs, out))
                    found[procs] = results_of(kind, out)
                print(f"{kind}: {procs} process(es), run {rep + 1}: {walls[procs][-1]:.1f} s", flush=True)
        w1, w2 = statistics.median(walls[1]), statistics.median(walls[2])
        diff = max(abs(found[1][k] - found[2][k]) / max(abs(found[1][k]), 1e-300) for k in found[1])
        rows.append({"workload": kind, "command": "sdekit " + " ".join(args), "wall_1": w1, "wall_2": w2,
                     "walls_1": walls[1], "walls_2": walls[2], "speedup": w1 / w2, "efficiency": w1 / w2 / 2,
                     "max_relative_difference": diff, "results_compared": len(found[1])})
    load_after = os.getloadavg()
    print(f"\n{'workload':<32}{'1 process (s)':>15}{'2 processes (s)':>17}{'speedup':>9}{'efficiency':>12}"
          f"{'max rel diff':>14}")
    for r in rows:
        print(f"{r['workload']:<32}{r['wall_1']:>15.1f}{r['wall_2']:>17.1f}{r['speedup']:>9.2f}"
              f"{r['efficiency']:>12.2f}{r['max_relative_difference']:>14.1e}")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    result = {
        "benchmark": "bench_distributed",
        "what": "strong scaling of sdekit compare / likelihood on digits-vp-eps: 1 process vs torchrun with 2 "
                "gloo processes, one thread each; median end-to-end wall time of the command",
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
                    "cpu_count": os.cpu_count(), "load_average_before": list(load_before),
                    "load_average_after": list(load_after), "git_commit": commit},
        "timing": {"repeats": a.repeats, "statistic": "median", "clock": "time.perf_counter around the command"},
        "rows": rows,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / ("bench_distributed_quick.json" if a.quick else "bench_distributed.json")
    path.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
