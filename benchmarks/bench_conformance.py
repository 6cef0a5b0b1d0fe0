"""Power of the conformance suite (``sdekit.testing.check_solver``): what it costs and what it catches.

1. **Mutant kill rate per profile.** Every broken solver of the test suite (``tests/test_testing.py``: the
   project's own defects; ``tests/test_mutants.py``: defects re-created from public bug reports) is run through
   the full suite (``kinds="auto"``, every check that applies) in each profile. A mutant is *killed* when the
   report fails, and *killed for the right reason* when the check the mutant was written against fails with the
   message the test expects. The profile's time is the wall time of those runs (one thread each, two worker
   processes), and beside it the time of the suite on registered solvers (which must pass).
2. **Separating power per strong-order family.** For each problem family a solver meets in the ``strong_order``
   check, ``--draws`` random problems (hypothesis, the ``ci`` profile's 1000 Brownian paths and its 8..128-step
   ladder), each measured with a right scheme and with wrong formulas. A draw *separates* a pair when the
   right scheme meets its declared strong order (within ``STRONG_ORDER_TOL``) and the wrong one does not, i.e.
   when one example of the check would tell them apart:

   ==========================  ===============================  =================================================
   family                      right                            wrong
   ==========================  ===============================  =================================================
   scalar/non-symmetric        milstein                         Milstein with ``(∂g/∂x)ᵀ g`` (torchsde 0.2.6)
   scalar/nonlinear            milstein                         the same
   scalar/non-autonomous       milstein                         the same
   general/non-symmetric       commutative general Milstein     no cross terms (SDETools #2); transposed Jacobian
   general/nonlinear           commutative general Milstein     the same
   general/non-autonomous      commutative general Milstein     the same
   general/non-commutative     euler_maruyama (declares 0.5)    Milstein with fresh Lévy areas declaring 1
                                                                (OrdinaryDiffEq.jl #3214); commutative Milstein
                                                                declaring 1
   ==========================  ===============================  =================================================

   The commutative general Milstein (``½ Σ_jk (∂g_k/∂x) g_j (ΔW_j ΔW_k - h δ_jk)``,
   ``tests/test_mutants.py::GeneralMilstein``, of which the two general-noise mutants change only the iterated
   integrals) is the right order-1 scheme on commutative noise (every family but the last); on the Heisenberg SDE
   it must fail.

Run: ``python benchmarks/bench_conformance.py`` (both parts, profiles quick and ci, 24 draws: about 15 minutes on
two cores) or ``--quick`` (profile quick, 6 draws). Writes ``benchmarks/results/bench_conformance.json``
(``bench_conformance_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the mutant zoo lives with the tests that prove each is rejected

REFERENCE_SOLVERS = ("euler_maruyama", "milstein", "sra1", "stochastic_heun", "rk4", "dopri5", "dpmpp_2m", "ddim")


def machine_info() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=ROOT, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "git_commit": commit}


# --- part 1: mutants ---------------------------------------------------------------------------------------------
def mutant_table() -> list[tuple[str, type, str, str]]:
    """``[(source, class, check, pattern)]`` from the two test modules (one row per mutant and expected check)."""
    import test_mutants
    import test_testing

    rows = [("sdekit", cls, check, pat) for cls, check, pat in test_testing.MUTANTS]
    rows += [("public report", cls, check, pat) for cls, check, pat in test_mutants.MUTANTS]
    rows += [("sdekit", cls, check, pat) for cls, check, pat in getattr(test_testing, "DIFFUSION_MUTANTS", [])]
    return rows


def _run_mutant(job):
    source, module, qualname, checks, profile = job
    torch.set_num_threads(1)
    import importlib

    from sdekit.testing import check_solver

    cls = getattr(importlib.import_module(module), qualname)
    t = time.perf_counter()
    report = check_solver(cls(), profile=profile)
    seconds = time.perf_counter() - t
    failures = [(f.check, f.message) for f in report.failures]
    right = {check: any(c == check and re.search(pat, m) for c, m in failures) for check, pat in checks}
    return {"mutant": cls.name, "class": qualname, "source": source, "profile": profile, "seconds": seconds,
            "killed": not report.passed, "expected_checks": sorted(right), "right_reason": all(right.values()),
            "failed_checks": sorted(report.failed_checks)}


def _run_reference(job):
    name, profile = job
    torch.set_num_threads(1)
    from sdekit.testing import check_solver

    t = time.perf_counter()
    report = check_solver(name, profile=profile)
    return {"solver": name, "profile": profile, "seconds": time.perf_counter() - t, "passed": report.passed,
            "failed_checks": sorted(report.failed_checks)}


def mutant_part(profiles, workers: int) -> dict:
    grouped: dict[tuple, list] = {}
    for source, cls, check, pat in mutant_table():
        grouped.setdefault((source, cls.__module__, cls.__qualname__), []).append((check, pat))
    out = {}
    for profile in profiles:
        jobs = [(s, mod, q, checks, profile) for (s, mod, q), checks in grouped.items()]
        t = time.perf_counter()
        with ProcessPoolExecutor(workers) as pool:
            rows = list(pool.map(_run_mutant, jobs))
            wall = time.perf_counter() - t
            refs = list(pool.map(_run_reference, [(n, profile) for n in REFERENCE_SOLVERS]))
        killed = sum(r["killed"] for r in rows)
        right = sum(r["right_reason"] for r in rows)
        out[profile] = {"mutants": len(rows), "killed": killed, "killed_for_the_right_reason": right,
                        "kill_fraction": killed / len(rows), "wall_s": wall,
                        "cpu_s": sum(r["seconds"] for r in rows), "rows": rows, "reference_solvers": refs}
        print(f"\nprofile {profile}: {killed}/{len(rows)} mutants killed ({right} for the expected reason), "
              f"{wall:.0f} s wall on {workers} workers ({out[profile]['cpu_s']:.0f} s of single-thread runs)")
        header = f"{'mutant':48s} {'source':14s} {'killed':>6s} {'reason':>6s} {'s':>6s}  failed checks"
        print(header + "\n" + "-" * len(header))
        for r in rows:
            print(f"{r['mutant']:48s} {r['source']:14s} {'yes' if r['killed'] else 'NO':>6s} "
                  f"{'yes' if r['right_reason'] else 'no':>6s} {r['seconds']:6.1f}  {', '.join(r['failed_checks'])}")
        print(f"\n{'registered solver':48s} {'passed':>6s} {'s':>6s}")
        for r in refs:
            print(f"{r['solver']:48s} {'yes' if r['passed'] else 'NO':>6s} {r['seconds']:6.1f}  "
                  f"{', '.join(r['failed_checks'])}")
    return out


# --- part 2: separating power --------------------------------------------------------------------------------------
def _transposed_general_milstein():
    from test_mutants import GeneralMilstein

    class TransposedGeneralMilstein(GeneralMilstein):
        """The general Milstein with ``(∂g_k/∂x)ᵀ g_j`` (a vector-Jacobian product) for ``(∂g_k/∂x) g_j``."""

        name = "general_milstein_transposed"

        def jacobian_term(self, problem, t, x0, g, j):
            vjp = torch.func.vjp(lambda y: problem.diffusion(t, y), x0)[1]
            eye = torch.eye(g.shape[-1], dtype=g.dtype)
            return torch.stack([vjp(eye[k] * g[..., j:j + 1])[0] for k in range(g.shape[-1])], -1)

    return TransposedGeneralMilstein


def families(batch: int):
    from test_mutants import DiagonalTermsOnlyGeneralMilstein, FreshLevyAreaGeneralMilstein, GeneralMilstein
    from test_testing import TransposedJacobianMilstein

    from sdekit.solvers import REGISTRY
    from sdekit.testing import strategies as S

    mil = ("milstein", REGISTRY["milstein"])
    scalar_wrong = [("transposed Jacobian (torchsde 0.2.6)", TransposedJacobianMilstein)]
    general_right = ("commutative general Milstein", GeneralMilstein)
    general_wrong = [("no cross terms (SDETools #2)", DiagonalTermsOnlyGeneralMilstein),
                     ("transposed Jacobian", _transposed_general_milstein())]
    return [
        ("scalar/non-symmetric", S.commuting_linear_sdes(noise_type="scalar", batch=batch), mil, scalar_wrong),
        ("scalar/nonlinear", S.sheared_gbms(noise_type="scalar", batch=batch), mil, scalar_wrong),
        ("scalar/non-autonomous", S.sheared_gbms(noise_type="scalar", time_dependent=True, batch=batch), mil,
         scalar_wrong),
        ("general/non-symmetric", S.commuting_linear_sdes(noise_type="general", batch=batch), general_right,
         general_wrong),
        ("general/nonlinear", S.sheared_gbms(noise_type="general", batch=batch), general_right, general_wrong),
        ("general/non-autonomous", S.sheared_gbms(noise_type="general", time_dependent=True, batch=batch),
         general_right, general_wrong),
        ("general/non-commutative", S.heisenberg_sdes(batch=batch), ("euler_maruyama", REGISTRY["euler_maruyama"]),
         [("fresh Lévy areas (OrdinaryDiffEq.jl #3214)", FreshLevyAreaGeneralMilstein),
          ("commutative Milstein declaring 1", GeneralMilstein)]),
    ]


def _draws(strategy, n: int, seed: int):
    """``n`` reproducible draws (problem, path seed) from a hypothesis strategy."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    out = []

    @settings(max_examples=n, database=None, derandomize=False, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy, st.integers(0, 2**20))
    def collect(problem, path_seed):
        out.append((problem, path_seed))

    from hypothesis import seed as hseed

    from sdekit.testing.conformance import _hypothesis_storage

    with _hypothesis_storage():  # hypothesis's constants cache goes to a temporary folder, not ./.hypothesis
        hseed(seed)(collect)()
    return out[:n]


def _family_job(job):
    index, draws, batch, seed = job
    torch.set_num_threads(1)
    from sdekit.bench import convergence_order
    from sdekit.testing.conformance import STRONG_ORDER_TOL, STRONG_STEPS

    label, strategy, (right_name, right_cls), wrongs = families(batch)[index]
    rows = []
    for problem, path_seed in _draws(strategy, draws, seed + index):
        def order(solver, problem=problem, path_seed=path_seed):
            solver = solver()
            rec = convergence_order(problem.sde, solver, problem.x0, t0=problem.t0, t1=problem.t1,
                                    steps=STRONG_STEPS, kind="strong", exact=problem.pathwise, seed=path_seed,
                                    n_bootstrap=0)
            declared = solver.strong_order_for(problem.sde.noise_type)
            return rec.order, declared, rec.order >= declared - STRONG_ORDER_TOL

        r_order, r_decl, r_pass = order(right_cls)
        row = {"problem": repr(problem), "path_seed": path_seed, "right": right_name, "right_order": r_order,
               "right_declared": r_decl, "right_passes": r_pass, "wrong": {}}
        for wname, wcls in wrongs:
            w_order, w_decl, w_pass = order(wcls)
            row["wrong"][wname] = {"order": w_order, "declared": w_decl, "passes": w_pass,
                                   "separated": r_pass and not w_pass}
        rows.append(row)
    return label, rows


def family_part(draws: int, batch: int, workers: int, seed: int) -> dict:
    n = len(families(batch))
    with ProcessPoolExecutor(workers) as pool:
        results = list(pool.map(_family_job, [(i, draws, batch, seed) for i in range(n)]))
    out = {}
    print(f"\nSeparating power: draws of {draws} random problems per family, {batch} Brownian paths, strong "
          f"order over 8..128 steps; 'sep' = draws on which the right scheme meets its order and the wrong one fails")
    header = f"{'family':24s} {'right (passes, min order)':46s} {'wrong formula':42s} {'orders':>10s} {'sep':>7s}"
    print(header + "\n" + "-" * len(header))
    for label, rows in results:
        right_min = min(r["right_order"] for r in rows)
        right_pass = sum(r["right_passes"] for r in rows)
        fam = {"draws": len(rows), "right": rows[0]["right"], "right_passes": right_pass,
               "right_min_order": right_min, "wrong": {}, "rows": rows}
        for wname in rows[0]["wrong"]:
            orders = [r["wrong"][wname]["order"] for r in rows]
            sep = sum(r["wrong"][wname]["separated"] for r in rows)
            fam["wrong"][wname] = {"separated": sep, "min_order": min(orders), "max_order": max(orders)}
            right = f"{rows[0]['right']} ({right_pass}/{len(rows)} pass, {right_min:.2f})"
            print(f"{label:24s} {right:46s} {wname:42s} {min(orders):5.2f}-{max(orders):4.2f} "
                  f"{sep:3d}/{len(rows):<3d}")
        out[label] = fam
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="profile quick only and 6 draws per family")
    p.add_argument("--profiles", nargs="+", default=None, choices=["quick", "ci", "thorough"])
    p.add_argument("--draws", type=int, default=None, help="random problems per family (default 24)")
    p.add_argument("--batch", type=int, default=1000, help="Brownian paths per strong-order measurement")
    p.add_argument("--part", choices=["all", "mutants", "families"], default="all")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="worker processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="JSON output path")
    args = p.parse_args(argv)
    if args.profiles is None:
        args.profiles = ["quick"] if args.quick else ["quick", "ci"]
    if args.draws is None:
        args.draws = 6 if args.quick else 24
    if args.draws < 1 or args.batch < 100 or args.workers < 1:
        p.error("need draws >= 1, batch >= 100 and workers >= 1")
    if args.out is None:
        name = "bench_conformance_quick.json" if args.quick else "bench_conformance.json"
        args.out = ROOT / "benchmarks" / "results" / name
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    info = machine_info()
    print(f"sdekit.testing conformance power; torch {info['torch']}, {info['cpu_count']} CPUs, {args.workers} "
          f"worker process(es), one torch thread each")
    start = time.perf_counter()
    report = {"benchmark": "bench_conformance", "machine": info,
              "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    if args.part in ("all", "mutants"):
        report["profiles"] = mutant_part(args.profiles, args.workers)
    if args.part in ("all", "families"):
        report["families"] = family_part(args.draws, args.batch, args.workers, args.seed)
    report["total_s"] = time.perf_counter() - start
    print(f"\ntotal {report['total_s']:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
