"""``sdekit grid``: optimise time grids for deterministic samplers and write them to a grid file."""

from __future__ import annotations

import sys

from .. import __version__
from .common import MAX_NFE, _int_list, load_model


def cmd_grid(args) -> int:
    from ..bench.grid_opt import METHODS, optimize_grid, save_grids
    from ..solvers import REGISTRY

    if args.model is not None and (args.preset is not None or args.process is not None):
        raise ValueError("--preset/--process choose the analytic model; they cannot be combined with --model")
    solvers = [s.strip() for s in args.solvers.split(",") if s.strip()]
    if not solvers:
        raise ValueError(f"--solvers names no solver, got {args.solvers!r}")
    for s in solvers:
        if s not in REGISTRY:
            raise ValueError(f"--solvers: unknown solver {s!r}; registered: {', '.join(sorted(REGISTRY))}")
    steps = _int_list(args.steps, "--steps", MAX_NFE)
    if args.method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {args.method!r}")
    model, name = load_model(args.model, args.preset or "ring2d", args.process or "vp", "float64")
    print(f"sdekit {__version__} grid: {name}, method {args.method}, {args.pilots} pilot and {args.fresh} fresh "
          f"trajectories, seed {args.seed}")
    header = (f"{'solver':14s} {'steps':>5s} {'pilot RMSE':>11s} {'(baseline)':>11s} {'fresh RMSE':>11s} "
              f"{'(baseline)':>11s}  {'baseline spacing':16s} {'chosen':18s} {'s':>6s}")
    print(header + "\n" + "-" * len(header))
    results = []
    for s in solvers:
        for n in steps:
            r = optimize_grid(model, s, n, method=args.method, n_pilot=args.pilots, n_fresh=args.fresh,
                              seed=args.seed, candidates=args.candidates, refine=args.refine,
                              progress=not args.no_progress)
            results.append(r)
            print(f"{s:14s} {n:5d} {r.rmse_pilot:11.3e} {r.rmse_pilot_baseline:11.3e} {r.rmse_fresh:11.3e} "
                  f"{r.rmse_fresh_baseline:11.3e}  {r.baseline:16s} {r.chosen:18s} {r.seconds:6.1f}", flush=True)
    save_grids(args.out, results, model=name)
    print(f"\ngrid file: {args.out} (use it with: sdekit compare --grid {args.out} ...)", file=sys.stderr)
    return 0
