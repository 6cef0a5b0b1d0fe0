"""Cost and accuracy of probability-flow log-likelihoods: exact divergence vs Hutchinson, against exact densities.

Problem: Gaussian mixtures (``sdekit.analytic.GaussianMixture``) under the linear VP process; the truth is the
mixture's exact ``log p_{t_min}(x)``, and the exact marginal at ``t_max`` is passed as the prior so that only the
ODE and the trace estimator err. Samples are drawn from ``p_{t_min}``; float64 on the CPU.

Two sweeps:

1. **Error vs rtol** on the ``stress8d`` preset (D = 8, 6 sharp anisotropic components), batch 8: the exact
   trace at rtol = atol = 1e-3 … 1e-7 and Hutchinson (Rademacher probes) with 1 and 16 probes.
2. **Cost vs dimension**, ``GaussianMixture.random(D, 2)`` for D = 2 … 3072, batch 4, rtol = atol = 1e-4. For
   each D: the exact trace (up to ``--exact-max-dim``; beyond it its time is extrapolated from Hutchinson's
   cost per vector–Jacobian product), Hutchinson pilots with 1 and 8 probes, and Hutchinson with ``P*`` probes,
   the fewest whose per-sample standard error meets the accuracy target ``--target-bpd`` (default 0.01 bits
   per dimension, i.e. ``0.01 · D · ln 2`` nats per sample): ``P* = ceil(8 · (stderr_8 / target)²)``. The
   crossover is the smallest D from which Hutchinson at ``P*`` is faster than the exact trace.

Each configuration chooses the faster divergence backend (``torch.func`` or the ``autograd`` loop) by timing
one drift evaluation of each: for the mixture, whose score multiplies by a per-component (K, D, D) matrix,
``vmap`` over the pullback materialises that matrix once per vector, which makes ``torch.func`` slower than
the loop from D of about 100 (a property of this model; networks of linear and convolution layers batch well).

Errors: RMSE over samples of ``log_prob - truth`` in nats per sample (and max |error|). Times: wall clock of one
run after an untimed warm-up (the first call imports torch.func's machinery), ``time.perf_counter``. The
default is one intra-op thread: these tensors are small and the benchmark machine's cores are shared.

Run: ``python benchmarks/bench_likelihood.py`` (full, a few minutes) or ``--quick`` (under a minute). Writes
``benchmarks/results/bench_likelihood.json`` (``bench_likelihood_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path

import torch

F64 = torch.float64


def machine_info() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "processor": platform.processor(), "cpu_count": os.cpu_count(), "num_threads": torch.get_num_threads(),
            "git_commit": commit}


def setup(gmm, process, batch: int, seed: int = 0):
    x = gmm.marginal(process, process.t_min).sample(batch, generator=torch.Generator().manual_seed(seed), dtype=F64)
    truth = gmm.log_prob_t(x, process, process.t_min)

    def prior(z):
        return gmm.log_prob_t(z, process, process.t_max)

    return gmm.model(process), x, truth, prior


def run(model, x, truth, prior, divergence: str, tol: float, n_probes: int = 1, backend: str = "auto",
        seed: int = 0) -> dict:
    from sdekit.likelihood import log_likelihood

    start = time.perf_counter()
    res = log_likelihood(model, x, divergence, rtol=tol, atol=tol, prior=prior, n_probes=n_probes,
                         probe="rademacher", backend=backend, generator=torch.Generator().manual_seed(seed))
    wall = time.perf_counter() - start
    err = res.log_prob - truth
    rec = {"divergence": divergence, "rtol": tol, "n_probes": n_probes if divergence == "hutchinson" else None,
           "nfe": res.stats["nfe"], "n_rejected": res.stats["n_rejected"], "wall_s": wall,
           "rmse_nats": float(err.pow(2).mean().sqrt()), "max_abs_error_nats": float(err.abs().max()),
           "backend": res.stats["backend"], "vjps_per_eval": res.stats["vjps_per_eval"]}
    if res.stderr is not None and n_probes > 1:
        rec["rms_stderr_nats"] = float(res.stderr.pow(2).mean().sqrt())
    return rec


def faster_backend(model, x, divergence: str, n_probes: int) -> tuple[str, dict]:
    """Time one drift evaluation (a one-step Euler solve) with each backend; return the faster."""
    from sdekit.likelihood import log_likelihood

    times = {}
    for backend in ("func", "autograd"):
        best = math.inf
        for _ in range(2):
            start = time.perf_counter()
            log_likelihood(model, x, divergence, solver="euler", steps=1, n_probes=n_probes, backend=backend,
                           generator=torch.Generator().manual_seed(0))
            best = min(best, time.perf_counter() - start)
        times[backend] = best
    return min(times, key=times.get), times


def rtol_sweep(args) -> list[dict]:
    from sdekit import VP
    from sdekit.analytic import GaussianMixture

    process = VP()
    model, x, truth, prior = setup(GaussianMixture.preset("stress8d"), process, batch=8)
    exact_tols = (1e-3, 1e-5) if args.quick else (1e-3, 1e-4, 1e-5, 1e-6, 1e-7)
    hutch_tols = (1e-3, 1e-5) if args.quick else (1e-3, 1e-4, 1e-5, 1e-6)
    rows = []
    for tol in exact_tols:
        rows.append(run(model, x, truth, prior, "exact", tol))
        print(fmt_rtol_row(rows[-1]), flush=True)
    for n_probes in (1, 16):
        for tol in hutch_tols:
            rows.append(run(model, x, truth, prior, "hutchinson", tol, n_probes))
            print(fmt_rtol_row(rows[-1]), flush=True)
    return rows


def fmt_rtol_row(r: dict) -> str:
    method = "exact" if r["divergence"] == "exact" else f"hutchinson P={r['n_probes']}"
    se = f"{r['rms_stderr_nats']:.3g}" if "rms_stderr_nats" in r else "-"
    return (f"{method:16s} {r['rtol']:7.0e} {r['nfe']:6d} {r['wall_s']:8.2f} {r['rmse_nats']:11.3e} "
            f"{r['max_abs_error_nats']:11.3e} {se:>10s}")


def dim_sweep(args) -> list[dict]:
    from sdekit import VP
    from sdekit.analytic import GaussianMixture

    process = VP()
    tol = args.dim_rtol
    rows = []
    for dim in args.dims:
        start = time.perf_counter()
        gmm = GaussianMixture.random(dim, 2, seed=dim)
        build_s = time.perf_counter() - start
        model, x, truth, prior = setup(gmm, process, batch=args.batch)
        target = args.target_bpd * dim * math.log(2)
        row = {"dim": dim, "batch": args.batch, "rtol": tol, "target_nats": target, "mixture_build_s": build_s}
        h_backend, row["hutchinson_backend_probe_s"] = faster_backend(model, x, "hutchinson", 2)
        pilot1 = run(model, x, truth, prior, "hutchinson", tol, 1, h_backend)
        pilot8 = run(model, x, truth, prior, "hutchinson", tol, 8, h_backend)
        per_vjp = max(pilot8["wall_s"] - pilot1["wall_s"], 0.0) / 7  # seconds per extra vector per run
        sd_one = pilot8["rms_stderr_nats"] * math.sqrt(8)  # per-sample std of a one-probe estimate
        p_star = max(2, math.ceil((sd_one / target) ** 2))  # >= 2 so that the run reports its own stderr
        row.update(hutchinson_pilot_1=pilot1, hutchinson_pilot_8=pilot8, one_probe_std_nats=sd_one, p_star=p_star)
        if p_star <= args.max_probes:
            row["hutchinson_p_star"] = run(model, x, truth, prior, "hutchinson", tol, p_star, h_backend, seed=1)
            row["hutchinson_time_s"] = row["hutchinson_p_star"]["wall_s"]
            row["hutchinson_time_estimated"] = False
        else:
            row["hutchinson_time_s"] = pilot1["wall_s"] + (p_star - 1) * per_vjp
            row["hutchinson_time_estimated"] = True
        if dim <= args.exact_max_dim:
            e_backend, row["exact_backend_probe_s"] = faster_backend(model, x, "exact", 1)
            row["exact"] = run(model, x, truth, prior, "exact", tol, backend=e_backend)
            row["exact_time_s"] = row["exact"]["wall_s"]
            row["exact_time_estimated"] = False
        else:
            row["exact_time_s"] = pilot1["wall_s"] + (dim - 1) * per_vjp
            row["exact_time_estimated"] = True
        row["hutchinson_faster"] = row["hutchinson_time_s"] < row["exact_time_s"]
        rows.append(row)
        print(fmt_dim_row(row), flush=True)
    return rows


def fmt_dim_row(r: dict) -> str:
    def t(key):
        return f"{r[key]:.2f}{'*' if r[key.replace('time_s', 'time_estimated')] else ''}"

    exact_err = f"{r['exact']['rmse_nats']:.2e}" if "exact" in r else "-"
    hp = r.get("hutchinson_p_star")
    h_err = f"{hp['rmse_nats']:.2e}" if hp else "-"
    return (f"{r['dim']:5d} {r['target_nats']:9.3g} {t('exact_time_s'):>10s} {exact_err:>9s} "
            f"{r['hutchinson_pilot_1']['wall_s']:8.2f} {r['hutchinson_pilot_8']['wall_s']:8.2f} "
            f"{r['one_probe_std_nats']:9.3g} {r['p_star']:7d} {t('hutchinson_time_s'):>10s} {h_err:>9s} "
            f"{'hutchinson' if r['hutchinson_faster'] else 'exact':>10s}  "
            f"{r['hutchinson_pilot_1']['backend']}/{r['exact']['backend'] if 'exact' in r else '-'}")


def crossover(rows: list[dict]) -> int | None:
    """The smallest D from which Hutchinson at P* is faster for every larger D of the sweep."""
    best = None
    for r in reversed(rows):
        if not r["hutchinson_faster"]:
            break
        best = r["dim"]
    return best


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sweeps (D <= 128, exact to D = 32; under a minute)")
    p.add_argument("--dims", type=int, nargs="+", default=None, help="dimensions of the cost sweep")
    p.add_argument("--exact-max-dim", type=int, default=None, help="largest D run with the exact trace")
    p.add_argument("--batch", type=int, default=4, help="samples per configuration of the cost sweep")
    p.add_argument("--dim-rtol", type=float, default=1e-4, help="rtol = atol of the cost sweep")
    p.add_argument("--target-bpd", type=float, default=0.01, help="per-sample accuracy target in bits/dim")
    p.add_argument("--max-probes", type=int, default=64, help="largest P* actually run (beyond: extrapolated)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1; see the docstring)")
    p.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = p.parse_args(argv)
    if args.dims is None:
        args.dims = [2, 8, 32, 128] if args.quick else [2, 8, 32, 128, 256, 512, 1024, 3072]
    if args.exact_max_dim is None:
        args.exact_max_dim = 32 if args.quick else 256
    if min(args.dims) < 1 or args.batch < 2 or args.max_probes < 2 or args.target_bpd <= 0:
        p.error("need dims >= 1, batch >= 2, max-probes >= 2 and target-bpd > 0")
    if args.out is None:
        name = "bench_likelihood_quick.json" if args.quick else "bench_likelihood.json"
        args.out = Path(__file__).resolve().parent / "results" / name
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    info = machine_info()
    print(f"PF-ODE log-likelihood on Gaussian mixtures under VP (linear), float64, dopri5; torch {info['torch']}, "
          f"{info['num_threads']} thread(s), {info['cpu_count']} CPUs")
    start = time.perf_counter()
    from sdekit import VP
    from sdekit.analytic import GaussianMixture

    warm = GaussianMixture.random(2, 1, seed=0)
    for divergence in ("exact", "hutchinson"):  # untimed: the first torch.func call imports its machinery
        run(*setup(warm, VP(), 2), divergence, 1e-2, 2)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None

    print("\n1. Error vs rtol (rtol = atol), stress8d (D = 8), batch 8; error = log_prob - exact log p_{t_min} in "
          "nats/sample; SE = RMS over samples of Hutchinson's standard error")
    header = f"{'method':16s} {'rtol':>7s} {'NFE':>6s} {'wall s':>8s} {'RMSE':>11s} {'max |err|':>11s} {'SE':>10s}"
    print(header + "\n" + "-" * len(header))
    rtol_rows = rtol_sweep(args)

    print(f"\n2. Cost vs dimension: GaussianMixture.random(D, 2), batch {args.batch}, rtol = atol = {args.dim_rtol:g}; "
          f"target = {args.target_bpd:g} bits/dim per sample = target nats; P* = probes meeting it; "
          "* = extrapolated time; errors are RMSE (nats/sample)")
    header = (f"{'D':>5s} {'target':>9s} {'exact s':>10s} {'exact err':>9s} {'H(P=1) s':>8s} {'H(P=8) s':>8s} "
              f"{'1-probe sd':>9s} {'P*':>7s} {'H(P*) s':>10s} {'H(P*) err':>9s} {'faster':>10s}  backend H/E")
    print(header + "\n" + "-" * len(header))
    dim_rows = dim_sweep(args)
    cross = crossover(dim_rows)
    if cross is None:
        verdict = "the exact trace is faster at the target accuracy for the largest D of the sweep"
    else:
        verdict = (f"Hutchinson (at P* probes) is faster than the exact trace at equal per-sample accuracy "
                   f"({args.target_bpd:g} bits/dim) from D = {cross} on")
    print(f"\n{verdict}.")
    print("For a dataset mean over N samples the stochastic error shrinks by sqrt(N), so Hutchinson wins earlier.")
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None
    total = time.perf_counter() - start
    print(f"total {total:.0f} s; load average (1, 5, 15 min) before {load_before}, after {load_after}")

    report = {
        "benchmark": "bench_likelihood",
        "problem": {"process": "VP linear (beta 0.1..20)", "dtype": "float64", "device": "cpu", "solver": "dopri5",
                    "truth": "GaussianMixture.log_prob_t at t_min; exact marginal at t_max as the prior",
                    "probe": "rademacher", "error_metric": "RMSE over samples of log_prob - truth (nats/sample)"},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": info,
        "timing": {"statistic": "wall time of one run after a warm-up (time.perf_counter)",
                   "load_average_1_5_15min": {"before": load_before, "after": load_after}, "total_s": total},
        "rtol_sweep": rtol_rows,
        "dim_sweep": dim_rows,
        "crossover_dim": cross,
        "verdict": verdict,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
