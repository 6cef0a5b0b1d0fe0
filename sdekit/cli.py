"""The ``sdekit`` command.

``sdekit compare``  plug a score model into a solver comparison (embedded analytic default, or
                    ``--model package.module:factory``): table, JSON records (resumable), PNG plots.
``sdekit order``    convergence-order benchmark: fitted order with confidence interval vs declared, PASS/FAIL.
``sdekit info``     version and the registry with declared orders.
``sdekit demo``     the README's main job: ``compare`` on the embedded default with a modest budget.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys

import numpy as np
import torch

from . import __version__

PROCESSES = ("vp", "vp-cosine", "vp-ddpm", "subvp", "ve", "edm")
#: Default tolerances of the float64 DOP853 reference solve in ``sdekit compare``: an analytic model is cheap
#: and smooth; a network costs ~0.5 s per evaluation of 256 images on a CPU, and its reference error at this
#: tolerance (measured by the built-in check against a 100 times looser solve) stays far below the sampler
#: errors the tables report.
REFERENCE_RTOL_ANALYTIC = 1e-10
REFERENCE_RTOL_NETWORK = 1e-8


def _registry_table() -> str:
    from .solvers import REGISTRY, DiffusionSampler

    rows = [f"{'name':<20} {'kind':<9} {'order':>5} {'strong':>7} {'weak':>5}  {'noise types':<32} evals/step"]
    for name in sorted(REGISTRY):
        s = REGISTRY[name]()
        fmt = lambda v: "-" if v is None else f"{v:g}"  # noqa: E731
        kind = "sampler" if isinstance(s, DiffusionSampler) else "generic"
        rows.append(f"{name:<20} {kind:<9} {fmt(s.order):>5} {fmt(s.strong_order):>7} {fmt(s.weak_order):>5}  "
                    f"{','.join(s.noise_types) or 'ODE only':<32} {s.evals_per_step}")
    return "\n".join(rows)


def make_process(name: str):
    from .processes import EDM, VE, VP, SubVP

    if name == "vp":
        return VP()
    if name == "vp-cosine":
        return VP("cosine")
    if name == "vp-ddpm":
        return VP.from_betas(torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    if name == "subvp":
        return SubVP()
    if name == "ve":
        return VE()
    if name == "edm":
        return EDM()
    raise ValueError(f"unknown process {name!r}; allowed: {', '.join(PROCESSES)}")


def load_model(spec: str | None, preset: str, process: str, dtype: str = "float64"):
    """The model to compare: ``package.module:factory`` (a callable returning an sdekit model), a zoo name,
    or the analytic preset under the chosen process."""
    if spec:
        if ":" in spec:
            mod_name, _, attr = spec.partition(":")
            try:
                mod = importlib.import_module(mod_name)
            except ImportError as e:
                raise ValueError(f"cannot import {mod_name!r} for --model {spec}: {e}") from None
            factory = getattr(mod, attr, None)
            if factory is None or not callable(factory):
                raise ValueError(f"--model {spec}: {mod_name} has no callable {attr!r}")
            model = factory()
            if not (hasattr(model, "process") and hasattr(model, "predict")):
                raise ValueError(f"--model {spec}: the factory returned {type(model).__name__}, not an sdekit model "
                                 "(needs .process and .predict, e.g. a ScoreModel)")
            return model, spec
        try:
            from . import zoo
        except ImportError:
            raise ValueError(f"unknown model {spec!r}: give package.module:factory") from None
        known = zoo.available()
        if spec not in known:
            raise ValueError(f"unknown model {spec!r}: give package.module:factory or a zoo name ({', '.join(known)})")
        return zoo.load(spec, dtype=getattr(torch, dtype)), spec
    from .analytic import PRESETS, GaussianMixture

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")
    return GaussianMixture.preset(preset).model(make_process(process)), f"{preset}/{process}"


#: the largest budget ``compare`` accepts (a million-step PF-ODE solve is already hours of a CPU)
MAX_NFE = 100_000


def _int_list(text: str, name: str, upper: int | None = None) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{name} must be a comma-separated list of integers, got {text!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise ValueError(f"{name} values must be positive integers, got {text!r}")
    if upper is not None and any(v > upper for v in vals):
        raise ValueError(f"{name} values must be in [1, {upper}], got {text!r}")
    return sorted(set(vals))


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 * 2**30


def check_samples(samples: int, shape, name: str = "--samples", copies: int = 8) -> None:
    """Refuse a sample count whose float64 states (``copies`` of them: x_T, reference, samples, solver
    stages) would not fit in this machine's memory, before any work starts."""
    per = 8 * math.prod(shape) * copies
    limit = max(2, _memory_bytes() // (2 * per))  # at most half the memory
    if not 1 <= samples <= limit:
        raise ValueError(f"{name} must be in [1, {limit}] for samples of shape {tuple(shape)} on this machine "
                         f"({_memory_bytes() / 2**30:.0f} GiB of memory), got {samples}")


def check_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: this torch build has no usable CUDA device (torch "
                         f"{torch.__version__}); use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {device}: only cpu and cuda are supported")
    return dev


def cmd_info(args) -> int:
    print(f"sdekit {__version__}")
    print(_registry_table())
    return 0


def cmd_compare(args) -> int:
    from .bench.compare import ComparisonConfig, expand_solvers, plot, run_comparison, samples_path, table

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
    is_points = shape is not None and math.prod(shape) == 2
    is_image = shape is not None and len(shape) == 3 and shape[0] in (1, 3)
    analytic = getattr(model, "mixture", None) is not None
    ref_rtol = args.reference_rtol
    if ref_rtol is None:
        ref_rtol = REFERENCE_RTOL_ANALYTIC if analytic else REFERENCE_RTOL_NETWORK
    if not 0 < ref_rtol < 1e-2:
        raise ValueError(f"--reference-rtol must be in (0, 1e-2), got {ref_rtol:g}")
    cfg = ComparisonConfig(solvers=solvers, nfe=nfe, spacing=args.spacing, samples=args.samples, seed=args.seed,
                           dtype=args.dtype, device=args.device, model_name=name, reference_rtol=ref_rtol,
                           reference_method=args.reference_method,
                           reference_check=not args.no_reference_check,
                           scatter_nfe=scatter_nfe if is_points or is_image else None)
    data = None
    if not analytic and args.model is not None and ":" not in args.model:
        from . import zoo

        if args.model in zoo.RECIPES:
            data = zoo.heldout(args.model)[0]
    records = run_comparison(model, cfg, args.out, resume=args.resume, progress=not args.no_progress,
                             log=lambda m: print(m, file=sys.stderr), data=data)
    with open(os.path.join(args.out, "results.json")) as f:
        summary = json.load(f)
    det = [r for r in records if r.get("rmse_vs_reference") is not None]
    print(f"sdekit {__version__} compare: {name}, {args.samples} samples, spacing {args.spacing}, seed {args.seed}; "
          "columns are NFE budgets")
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
        metric = "rmse_vs_reference" if det else "sliced_w2"
        try:
            plots = plot(records, args.out, metric=metric, scatter=found if is_points and found else None,
                         images=found if is_image and found else None)
        except ImportError:
            print("plots skipped: matplotlib is not installed (pip install matplotlib); tables and JSON are written",
                  file=sys.stderr)
    print(f"\nrecords: {os.path.join(args.out, 'results.json')}" + "".join(f"\nplot: {p}" for p in plots))
    return 0


def cmd_order(args) -> int:
    from .bench.order_cli import run_order

    return run_order(args)


def cmd_likelihood(args) -> int:
    import time

    from .bench.compare import _atomic_write
    from .likelihood import log_likelihood

    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    if args.n_dequant < 1:
        raise ValueError(f"--n-dequant must be >= 1, got {args.n_dequant}")
    analytic = args.model is None
    dtype = args.dtype or ("float64" if analytic else "float32")
    model, name = load_model(args.model, args.preset, args.process, dtype)
    mixture = getattr(model, "mixture", None)
    if mixture is None:
        return _likelihood_heldout(args, model, name, dtype)
    p = model.process
    gen = torch.Generator().manual_seed(args.seed)
    x = mixture.marginal(p, p.t_min).sample(args.samples, generator=gen, dtype=getattr(torch, dtype))
    t0 = time.perf_counter()
    extra = {"n_probes": args.n_probes} if args.divergence == "hutchinson" else {}
    res = log_likelihood(model, x, args.divergence, rtol=args.rtol, atol=args.rtol, progress=not args.no_progress,
                         generator=torch.Generator().manual_seed(args.seed + 1), **extra)
    wall = time.perf_counter() - t0
    exact = mixture.log_prob_t(x, p, p.t_min)
    err = (res.log_prob - exact).double()
    print(f"sdekit likelihood: {name}, {args.samples} samples of the data noised to t_min={p.t_min:g}, "
          f"divergence {args.divergence}, rtol = atol = {args.rtol:g}")
    print(f"{'':<24}{'estimate':>12}{'exact':>12}")
    print(f"{'mean log p (nats)':<24}{float(res.log_prob.mean()):>12.4f}{float(exact.mean()):>12.4f}")
    print(f"RMS error per sample: {float(err.pow(2).mean().sqrt()):.3e} nats (the prior at t_max is N(0, I), "
          "a small mismatch with the true marginal there)")
    print(f"NFE {res.stats['nfe']}, steps {res.stats['n_steps']}, wall {wall:.2f} s")
    rec = {"model": name, "samples": args.samples, "divergence": args.divergence, "rtol": args.rtol,
           "mean_log_prob": float(res.log_prob.mean()), "mean_exact_log_prob": float(exact.mean()),
           "rms_error": float(err.pow(2).mean().sqrt()), "nfe": int(res.stats["nfe"]), "wall_s": wall}
    path = os.path.join(args.out, "likelihood.json")
    _atomic_write(path, json.dumps(rec, indent=1))
    print(f"record: {path}")
    return 0


def _likelihood_heldout(args, model, name: str, dtype: str) -> int:
    """Likelihood of a zoo model's held-out data: bits/dim for quantized data (digits), nats for continuous."""
    import math
    import time

    from . import zoo
    from .bench.compare import _atomic_write
    from .likelihood import bits_per_dim, log_likelihood

    if args.data is not None:
        data = _load_data(args.data, getattr(model, "sample_shape", None))
    elif name in zoo.RECIPES:
        data, _ = zoo.heldout(name)
    else:
        raise ValueError(f"sdekit likelihood of {name} needs data: --data FILE (.npy or .pt, samples first), or a zoo "
                         f"model with held-out data ({', '.join(sorted(zoo.RECIPES))})")
    available = data.shape[0]
    n = min(args.samples, available)
    data = data[:n]
    quant = zoo.quantization(name) if (name in zoo.RECIPES and args.data is None) else None
    options = dict(rtol=args.rtol, atol=args.rtol, dtype=getattr(torch, dtype), progress=not args.no_progress)
    if args.divergence == "hutchinson":
        options["n_probes"] = args.n_probes
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    rec = {"model": name, "samples": n, "heldout_available": int(available),
           "divergence": args.divergence, "n_probes": args.n_probes if args.divergence == "hutchinson" else None,
           "rtol": args.rtol, "dtype": dtype, "seed": args.seed}
    source = f"samples of {args.data}" if args.data is not None else "held-out samples"
    print(f"sdekit likelihood: {name}, the first {n} {source}, divergence {args.divergence}"
          + (f" ({args.n_probes} probe{'s' * (args.n_probes > 1)})" if args.divergence == "hutchinson" else "")
          + f", rtol = atol = {args.rtol:g}, {dtype}")
    if quant is not None:
        levels = zoo.to_levels(data, quant)
        res = bits_per_dim(model, levels, divergence=args.divergence, n_dequant=args.n_dequant, generator=gen,
                           **quant, **options)
        lik = res.likelihood
        wall = time.perf_counter() - t0
        uniform = math.log2(quant["levels"])
        print(f"bits/dim: {res.mean:.4f} ± {res.stderr:.4f} (standard error over images; {args.n_dequant} "
              f"dequantization draw{'s' * (args.n_dequant > 1)} each); a uniform law on the {quant['levels']} "
              f"levels: {uniform:.4f}")
        rec.update({"bits_per_dim": res.mean, "bits_per_dim_stderr": res.stderr, "n_dequant": args.n_dequant,
                    "quantization": quant, "uniform_bits_per_dim": uniform,
                    "bpd_per_image": [float(v) for v in res.bpd]})
    else:
        lik = log_likelihood(model, data.to(getattr(torch, dtype)), args.divergence, generator=gen, **options)
        wall = time.perf_counter() - t0
        lp = lik.log_prob.double()
        se = float(lp.std()) / math.sqrt(n) if n > 1 else float("nan")
        print(f"mean log p: {float(lp.mean()):.4f} ± {se:.4f} nats (standard error over samples)")
        rec.update({"mean_log_prob": float(lp.mean()), "mean_log_prob_stderr": se})
    print(f"NFE {lik.stats['nfe']}, steps {lik.stats['n_steps']}, wall {wall:.1f} s")
    rec.update({"nfe": int(lik.stats["nfe"]), "wall_s": wall})
    path = os.path.join(args.out, "likelihood.json")
    _atomic_write(path, json.dumps(rec, indent=1))
    print(f"record: {path}")
    return 0


def _load_data(path: str, shape) -> torch.Tensor:
    """Samples for ``sdekit likelihood --data``: a .npy array or a tensor saved with torch.save, samples first."""
    if not os.path.isfile(path):
        raise ValueError(f"--data {path}: no such file")
    try:
        if path.endswith(".npy"):
            data = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file becomes one line naming it
        raise ValueError(f"--data {path} is not a readable .npy/.pt array ({type(e).__name__})") from None
    if not isinstance(data, torch.Tensor) or not data.is_floating_point() or data.ndim < 2:
        raise ValueError(f"--data {path} must hold a floating array of samples (samples first)")
    if shape is not None and tuple(data.shape[1:]) != tuple(shape):
        raise ValueError(f"--data {path} holds samples of shape {tuple(data.shape[1:])}; the model's sample_shape "
                         f"is {tuple(shape)}")
    if not bool(torch.isfinite(data).all()):
        raise ValueError(f"--data {path} contains NaN/Inf")
    return data


def cmd_demo(args) -> int:
    args.solvers = "ddim,dpm_solver_2,dpmpp_2m,dpmpp_3m,unipc,edm_heun,rk4,ddpm,dpmpp_2m_sde"
    args.nfe = "5,10,20,50"
    args.model, args.preset, args.process = None, "ring2d", "vp"
    args.spacing, args.dtype, args.device = "log_snr", "float64", "cpu"
    args.resume, args.scatter_nfe = False, 10
    args.reference_rtol, args.no_reference_check, args.reference_method = None, False, "DOP853"
    return cmd_compare(args)


class _Parser(argparse.ArgumentParser):
    """argparse with the project's one-line errors (``sdekit: error: ...``, exit 2) and defaults in ``--help``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        sub = self.prog.split()[-1] if " " in self.prog else None
        where = f" {sub}" if sub else ""
        self.exit(2, f"sdekit: error: {message} (see sdekit{where} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .analytic import REFERENCE_METHODS

    p = _Parser(prog="sdekit", description="Diffusion models as SDEs and ODEs, solved well.")
    p.add_argument("--version", action="version", version=f"sdekit {__version__}")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    sub.add_parser("info", help="version and registered solvers", description="Version and the solver registry.")

    c = sub.add_parser("compare", help="solver comparison on a score model",
                       description="Compare solvers on a score model: RMSE against a float64 reference solve of "
                                   "the PF-ODE from the same x_T, sliced W2 to data, tables, JSON records "
                                   "(resumable) and PNG plots.")
    c.add_argument("--model", default=None,
                   help="package.module:factory returning an sdekit model, or a zoo name (default: the analytic "
                        "--preset)")
    c.add_argument("--preset", default=None, help="analytic Gaussian-mixture preset (default ring2d; not with --model)")
    c.add_argument("--process", default=None,
                   help=f"process of the analytic preset: {', '.join(PROCESSES)} (default vp; not with --model)")
    c.add_argument("--solvers", default="ddim,dpmpp_2m,dpmpp_3m,unipc,edm_heun,ddpm",
                   help="comma-separated registry names or groups all-deterministic, all-stochastic")
    c.add_argument("--nfe", default="5,10,20,50",
                   help=f"comma-separated NFE budgets (model evaluations per sample), each in [1, {MAX_NFE}]")
    c.add_argument("--spacing", default="log_snr", choices=["time", "log_snr", "quadratic", "karras"],
                   help="time-grid spacing")
    c.add_argument("--samples", type=int, default=512, help="number of samples (trajectories from x_T)")
    c.add_argument("--seed", type=int, default=0, help="seed of x_T and of the stochastic samplers' noise")
    c.add_argument("--dtype", default="float64", choices=["float64", "float32"], help="dtype of the samplers")
    c.add_argument("--device", default="cpu", help="device of the samplers (cpu, cuda, cuda:1, ...)")
    c.add_argument("--scatter-nfe", type=int, default=None,
                   help="NFE whose samples are plotted (scatter for 2-D data, image grids for images); one of "
                        "--nfe (default: the middle one)")
    c.add_argument("--reference-rtol", type=float, default=None,
                   help=f"rtol = atol of the float64 reference (default {REFERENCE_RTOL_ANALYTIC:g} for "
                        f"analytic models, {REFERENCE_RTOL_NETWORK:g} for networks)")
    c.add_argument("--reference-method", default="DOP853", choices=list(REFERENCE_METHODS),
                   help="scipy method of the float64 reference solve")
    c.add_argument("--no-reference-check", action="store_true",
                   help="skip the second reference solve at a 100 times looser tolerance")
    c.add_argument("--out", default="runs/compare", help="output folder (records, results.json, plots)")
    c.add_argument("--resume", action="store_true", help="skip configurations whose records exist")
    c.add_argument("--no-plots", action="store_true", help="write tables and JSON only")
    c.add_argument("--no-progress", action="store_true", help="no progress bars")

    o = sub.add_parser("order", help="convergence-order benchmark",
                       description="Measure convergence orders on problems with exact answers: fitted order "
                                   "with a confidence interval against the declared one, PASS/FAIL.")
    o.add_argument("--problem", default="ou", choices=["ou", "gbm", "linear", "pf-ode"], help="test problem")
    o.add_argument("--solvers", default=None,
                   help="comma-separated names (default: every registered solver the problem and kind apply to)")
    o.add_argument("--kind", default=None, choices=["ode", "strong", "weak"],
                   help="default: strong for ou/gbm, ode for linear/pf-ode; ou and gbm accept strong or weak")
    o.add_argument("--steps", default=None,
                   help="comma-separated step counts, each 1..65536 (default: the test suite's ladder: ODE by "
                        "declared order, strong 8..128, weak 8..64, pf-ode 50..400)")
    o.add_argument("--samples", type=int, default=2000,
                   help="Brownian paths for strong orders; initial points for pf-ode (at most 256); unused by weak "
                        "orders (exact moments) and linear")
    o.add_argument("--seed", type=int, default=0, help="seed of the Brownian paths and initial states")
    o.add_argument("--out", default="runs/order", help="output folder (JSON, plot)")
    o.add_argument("--no-plots", action="store_true", help="JSON and table only")

    lk = sub.add_parser("likelihood", help="log-likelihood of data under a model (exact value beside it)",
                        description="Log-likelihood by the probability-flow ODE (exact or Hutchinson divergence), "
                                    "beside the exact value for analytic models, or bits/dim of held-out data.")
    lk.add_argument("--model", default=None,
                    help="package.module:factory or a zoo name (default: the analytic --preset)")
    lk.add_argument("--data", default=None,
                    help="samples to evaluate (.npy or .pt, samples first); default: the zoo model's held-out data")
    lk.add_argument("--preset", default="ring2d", help="analytic Gaussian-mixture preset")
    lk.add_argument("--process", default="vp", help=f"process of the analytic preset: {', '.join(PROCESSES)}")
    lk.add_argument("--samples", type=int, default=64, help="number of data points")
    lk.add_argument("--divergence", default="exact", choices=["exact", "hutchinson"], help="divergence estimator")
    lk.add_argument("--n-probes", type=int, default=16, help="Hutchinson probes per sample")
    lk.add_argument("--n-dequant", type=int, default=1, help="dequantization draws per image (quantized data)")
    lk.add_argument("--rtol", type=float, default=1e-5, help="rtol = atol of the adaptive ODE solve")
    lk.add_argument("--dtype", default=None, choices=["float64", "float32"],
                    help="default float64 for analytic presets, float32 for networks")
    lk.add_argument("--seed", type=int, default=0, help="seed of the data, probes and dequantization")
    lk.add_argument("--out", default="runs/likelihood", help="output folder (likelihood.json)")
    lk.add_argument("--no-progress", action="store_true", help="no progress bar")

    d = sub.add_parser("demo", help="the README main job: compare on the embedded analytic default",
                       description="The README's main job: sdekit compare on the embedded analytic ring mixture.")
    d.add_argument("--samples", type=int, default=1024, help="number of samples")
    d.add_argument("--seed", type=int, default=0, help="seed of x_T and the samplers' noise")
    d.add_argument("--out", default="runs/demo", help="output folder")
    d.add_argument("--no-plots", action="store_true", help="write tables and JSON only")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"info": cmd_info, "demo": cmd_demo, "compare": cmd_compare, "order": cmd_order,
                "likelihood": cmd_likelihood, None: cmd_info}
    try:
        return handlers[args.command](args)
    except (ValueError, TypeError, OSError, FloatingPointError, MemoryError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__  # one line, whatever the exception's text
        print(f"sdekit: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sdekit: interrupted (finished configurations are kept; rerun with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())


