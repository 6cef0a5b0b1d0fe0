"""The ``sdekit`` command.

``sdekit info``   version and the registered solvers with their declared orders.
``sdekit demo``   the embedded default job: sample the exact model of an analytic Gaussian mixture with the
                  generic solvers on the probability-flow ODE and the reverse SDE, and print a table of NFE,
                  RMSE against a float64 DOP853 reference from the same x_T, and the exact mean log-density
                  of the samples under the data distribution; writes ``results.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

from . import __version__


def _registry_table() -> str:
    from .solvers import REGISTRY

    rows = [f"{'name':<16} {'ode':>5} {'strong':>7} {'weak':>5}  {'noise types':<32} evals/step"]
    for name in sorted(REGISTRY):
        s = REGISTRY[name]()
        fmt = lambda v: "-" if v is None else f"{v:g}"  # noqa: E731
        rows.append(f"{name:<16} {fmt(s.order):>5} {fmt(s.strong_order):>7} {fmt(s.weak_order):>5}  "
                    f"{','.join(s.noise_types) or 'ODE only':<32} {s.evals_per_step}")
    return "\n".join(rows)


def _atomic_write_json(path: str, obj) -> None:
    d = os.path.dirname(path) or "."
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def cmd_info(args) -> int:
    print(f"sdekit {__version__}")
    print(_registry_table())
    return 0


def cmd_demo(args) -> int:
    from .analytic import PRESETS, GaussianMixture, reference_solve
    from .processes import VP
    from .reverse import probability_flow, reverse_sde
    from .solve import solve

    if args.preset not in PRESETS:
        raise ValueError(f"unknown preset {args.preset!r}; allowed: {', '.join(PRESETS)}")
    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    nfes = [int(v) for v in args.nfe.split(",")]
    if any(n <= 0 for n in nfes):
        raise ValueError(f"--nfe values must be positive, got {args.nfe}")
    torch.manual_seed(0)  # nothing below uses the global RNG; this only pins torch's own defaults
    gmm = GaussianMixture.preset(args.preset)
    process = VP()
    model = gmm.model(process)
    gen = torch.Generator().manual_seed(args.seed)
    x_t = process.prior_sample((args.samples, gmm.dim), generator=gen, dtype=torch.float64)
    t_hi, t_lo = process.t_max, process.t_min
    ode = probability_flow(process, model)
    t0 = time.perf_counter()
    ref = reference_solve(ode, x_t, t_hi, t_lo, rtol=1e-10, atol=1e-10)
    ref_time = time.perf_counter() - t0
    data_logp = float(gmm.log_prob(gmm.sample(20000, generator=gen, dtype=torch.float64)).mean())
    rows = []
    plan = [("euler", "ode"), ("heun", "ode"), ("rk4", "ode"), ("euler_maruyama", "sde"), ("sra1", "sde")]
    for name, kind in plan:
        from .solvers import get

        evals = get(name).evals_per_step
        for nfe in nfes:
            steps = max(1, nfe // evals)
            grid = torch.linspace(t_hi, t_lo, steps + 1, dtype=torch.float64)
            problem = ode if kind == "ode" else reverse_sde(process, model)
            kw = {} if kind == "ode" else {"generator": torch.Generator().manual_seed(args.seed + 1)}
            if name == "sra1":
                from .brownian import BrownianPath

                kw = {"brownian": BrownianPath(t_lo, t_hi, x_t.shape, seed=args.seed + 1, dtype=x_t.dtype,
                                               levy_area=True)}
            t0 = time.perf_counter()
            sol = solve(problem, x_t, name, ts=grid, **kw)
            wall = time.perf_counter() - t0
            rmse = float(((sol.x - ref) ** 2).mean().sqrt()) if kind == "ode" else None
            logp = float(gmm.log_prob(sol.x).mean())
            rows.append({"solver": name, "problem": "pf-ode" if kind == "ode" else "reverse-sde",
                         "nfe": sol.stats["nfe"], "rmse_vs_reference": rmse, "mean_log_p_data": logp,
                         "wall_s": wall})
    dopri = solve(ode, x_t, "dopri5", t0=t_hi, t1=t_lo,
                  controller=__import__("sdekit").PIController(rtol=1e-5, atol=1e-5))
    rows.append({"solver": "dopri5 (rtol 1e-5)", "problem": "pf-ode", "nfe": dopri.stats["nfe"],
                 "rmse_vs_reference": float(((dopri.x - ref) ** 2).mean().sqrt()),
                 "mean_log_p_data": float(gmm.log_prob(dopri.x).mean()), "wall_s": None})
    print(f"sdekit {__version__} demo: exact model of the {args.preset!r} Gaussian mixture under VP (linear beta), "
          f"{args.samples} samples from t={t_hi:g} to t={t_lo:g}")
    print("RMSE = sqrt(mean over samples and coordinates of the squared difference) to a float64 DOP853 "
          f"reference solve of the PF-ODE from the same x_T (rtol 1e-10, {ref_time:.1f} s).")
    print(f"mean log p_data of exact data samples: {data_logp:.3f} (the ideal for the last column)\n")
    print(f"{'solver':<20} {'problem':<12} {'NFE':>5} {'RMSE':>11} {'mean log p':>11}")
    for r in rows:
        rm = "-" if r["rmse_vs_reference"] is None else f"{r['rmse_vs_reference']:.3e}"
        print(f"{r['solver']:<20} {r['problem']:<12} {r['nfe']:>5} {rm:>11} {r['mean_log_p_data']:>11.3f}")
    out = os.path.join(args.out, "results.json")
    _atomic_write_json(out, {"version": __version__, "preset": args.preset, "process": repr(process),
                             "samples": args.samples, "seed": args.seed, "data_mean_log_p": data_logp,
                             "rows": rows})
    print(f"\nresults written to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sdekit", description="Diffusion models as SDEs and ODEs, solved well.")
    p.add_argument("--version", action="version", version=f"sdekit {__version__}")
    sub = p.add_subparsers(dest="command")
    sub.add_parser("info", help="version and registered solvers")
    d = sub.add_parser("demo", help="the embedded default job (analytic Gaussian mixture, no downloads)")
    d.add_argument("--preset", default="ring2d")
    d.add_argument("--samples", type=int, default=512)
    d.add_argument("--nfe", default="10,20,50,100")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", default="runs/demo")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"info": cmd_info, "demo": cmd_demo, None: cmd_info}
    try:
        return handlers[args.command](args)
    except (ValueError, TypeError) as e:
        print(f"sdekit: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
