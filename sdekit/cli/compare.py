"""``sdekit compare``: a solver comparison on a score model (tables, JSON records, plots).

Under ``torchrun`` (``torchrun --nproc_per_node=N -m sdekit compare ...``) every process takes a shard of the
samples and rank 0 prints, plots and writes the records, which are the same as a single-process run's
(`sdekit.bench.compare.run_comparison`; docs/distributed.md).
"""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np

from .. import __version__, distributed
from .common import (
    MAX_NFE,
    REFERENCE_RTOL_ANALYTIC,
    REFERENCE_RTOL_NETWORK,
    _int_list,
    check_device,
    check_samples,
    load_model,
)


def cmd_compare(args) -> int:
    from ..bench.compare import ComparisonConfig, expand_solvers, plot, run_comparison, samples_path, table

    if args.samples < 2:
        raise ValueError(f"--samples must be >= 2, got {args.samples}")
    nfe = _int_list(args.nfe, "--nfe", MAX_NFE)
    solvers = expand_solvers(args.solvers.split(","))
    check_device(args.device)
    if args.model is not None and (args.preset is not None or args.process is not None):
        raise ValueError("--preset/--process choose the analytic model; they cannot be combined with --model")
    if args.scatter_nfe is not None and args.scatter_nfe not in nfe:
        raise ValueError(f"--scatter-nfe {args.scatter_nfe} is not one of --nfe {','.join(map(str, nfe))}")
    model, name = load_model(args.model, args.preset or "ring2d", args.process or "vp", args.dtype)
    shape = getattr(model, "sample_shape", None)
    if shape is not None:
        check_samples(args.samples, shape)
    scatter_nfe = args.scatter_nfe or sorted(nfe)[len(nfe) // 2]
    # a latent model (sdekit.models.LatentScoreModel) is compared on its latents; its pictures show them decoded
    decode = getattr(model, "decode", None) if callable(getattr(model, "decode", None)) else None
    picture_shape = getattr(model, "data_shape", None) if decode is not None else shape
    is_points = decode is None and shape is not None and math.prod(shape) == 2
    is_image = picture_shape is not None and len(picture_shape) == 3 and picture_shape[0] in (1, 3)
    analytic = getattr(model, "mixture", None) is not None
    ref_rtol = args.reference_rtol
    if ref_rtol is None:
        ref_rtol = REFERENCE_RTOL_ANALYTIC if analytic else REFERENCE_RTOL_NETWORK
    if not 0 < ref_rtol < 1e-2:
        raise ValueError(f"--reference-rtol must be in (0, 1e-2), got {ref_rtol:g}")
    grid_file = getattr(args, "grid", None)  # sdekit demo builds its own arguments, without one
    grids = _grids_for(grid_file, model, solvers, nfe, name) if grid_file else {}
    cfg = ComparisonConfig(solvers=solvers, nfe=nfe, spacing=args.spacing, samples=args.samples, seed=args.seed,
                           dtype=args.dtype, device=args.device, model_name=name, reference_rtol=ref_rtol,
                           reference_method=args.reference_method,
                           reference_check=not args.no_reference_check,
                           scatter_nfe=scatter_nfe if is_points or is_image else None, grids=grids)
    data = None
    if not analytic and args.model is not None and ":" not in args.model:
        from .. import zoo

        if args.model in zoo.RECIPES:
            data = zoo.heldout(args.model)[0]
    info = distributed.init(args.device, timeout_s=getattr(args, "timeout", distributed.DEFAULT_TIMEOUT_S))
    try:
        records = run_comparison(model, cfg, args.out, resume=args.resume, progress=not args.no_progress,
                                 log=lambda m: print(m, file=sys.stderr), data=data)
    finally:
        distributed.shutdown()
    if not info.is_main:
        return 0  # rank 0 reports
    with open(os.path.join(args.out, "results.json")) as f:
        summary = json.load(f)
    det = [r for r in records if r.get("rmse_vs_reference") is not None]
    on_file = f" (grid file {grid_file} for {', '.join(sorted(grids))})" if grids else ""
    procs = f" ({info.world_size} processes)" if info.world_size > 1 else ""
    print(f"sdekit {__version__} compare: {name}, {args.samples} samples{procs}, spacing {args.spacing}{on_file}, "
          f"seed {args.seed}; columns are NFE budgets")
    if det:
        print("\nRMSE vs a float64 DOP853 reference solve of the PF-ODE from the same x_T "
              "(sqrt of the mean over samples and coordinates of the squared difference):")
        print(table(det, "rmse_vs_reference"))
        if any(r.get("median_error_vs_reference") is not None for r in det):
            print("\nMedian over samples of the per-sample RMS error (a few hard samples can dominate the RMSE):")
            print(table(det, "median_error_vs_reference"))
        ref_info = summary.get("reference")
        if ref_info is not None:
            line = f"reference: DOP853 rtol = atol = {ref_info['rtol']:g}"
            if ref_info.get("nfe") is not None:
                line += f", {ref_info['nfe']} NFE"
            if ref_info.get("check_rmse") is not None:
                line += (f"; RMSE to a solve at {ref_info['check_rtol']:g}: {ref_info['check_rmse']:.1e} (the "
                         "reference's own error is about 100 times smaller)")
            print(line)
            if ref_info.get("hint"):
                print(f"note: {ref_info['hint']}")
    differs = [f"{r['solver']} @ {r['nfe_budget']}: {r['nfe']}" for r in records if r["nfe"] != r["nfe_budget"]]
    if differs:
        print("actual NFE where it differs from the budget (whole steps only): " + ", ".join(differs))
    for sk in summary.get("skipped", []):
        print(f"skipped {sk['solver']} @ {sk['nfe_budget']} NFE: {sk['reason']}")
    if any(r.get("sliced_w2") is not None for r in records):
        distance = summary.get("distance") or {}
        print(f"\nSliced Wasserstein-2 distance to {distance.get('to', 'reference samples')} (MC SE in JSON):")
        print(table(records, "sliced_w2"))
        if distance.get("floor") is not None:
            print(f"floor: {distance['floor']:.3e} between two independent reference sets of "
                  f"{distance['samples']} (finite-sample noise)")
    plots = []
    if not args.no_plots:
        found = {}
        if cfg.scatter_nfe is not None:
            ref_path = os.path.join(args.out, f"reference-{cfg.key()}.npy")
            if data is not None:
                found["held-out data"] = data[:args.samples].double().numpy()
            if is_image and os.path.exists(ref_path):
                found["reference (DOP853)"] = np.load(ref_path)
            for s in solvers:
                p = samples_path(args.out, cfg, s, cfg.scatter_nfe)
                if os.path.exists(p):
                    found[f"{s} @ {cfg.scatter_nfe}"] = np.load(p)
            if decode is not None:
                found = {f"{title} (decoded)": _decoded(decode, arr) for title, arr in found.items()}
        metric = "rmse_vs_reference" if det else "sliced_w2"
        try:
            plots = plot(records, args.out, metric=metric, scatter=found if is_points and found else None,
                         images=found if is_image and found else None)
        except ImportError:
            print("plots skipped: matplotlib is not installed (pip install matplotlib); tables and JSON are written",
                  file=sys.stderr)
    print(f"\nrecords: {os.path.join(args.out, 'results.json')}" + "".join(f"\nplot: {p}" for p in plots))
    return 0


def _decoded(decode, latents: np.ndarray) -> np.ndarray:
    """Latent samples (an array as saved by the comparison) decoded to data, in float64."""
    import torch

    with torch.no_grad():
        return decode(torch.as_tensor(latents, dtype=torch.float64)).double().cpu().numpy()


def _grids_for(path: str, model, solvers: list[str], nfe: list[int], name: str) -> dict:
    """``"solver:steps" -> t`` from a grid file, for the configurations of this comparison (run_comparison checks
    that they span its interval); a grid for another model is used but noted."""
    from ..bench.compare import steps_for_budget
    from ..bench.grid_opt import load_grids

    entries = load_grids(path)
    wanted = {f"{s}:{steps_for_budget(s, n)}" for s in solvers for n in nfe}
    grids = {f"{e['solver']}:{e['steps']}": e["t"] for e in entries if f"{e['solver']}:{e['steps']}" in wanted}
    if not grids:
        held = ", ".join(f"{e['solver']}:{e['steps']}" for e in entries)
        raise ValueError(f"--grid {path}: none of its grids ({held}) matches a solver and step count of this "
                         "comparison")
    model_of = entries[0].get("model")
    if model_of is not None and model_of != name:
        print(f"sdekit: note: the grids of {path} were optimised for {model_of}, not {name}", file=sys.stderr)
    return grids
