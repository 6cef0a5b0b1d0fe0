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
import math
import os
import sys

import numpy as np
import torch

from . import __version__

PROCESSES = ("vp", "vp-cosine", "vp-ddpm", "subvp", "ve", "edm")


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


def _int_list(text: str, name: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{name} must be a comma-separated list of integers, got {text!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise ValueError(f"{name} values must be positive integers, got {text!r}")
    return vals


def cmd_info(args) -> int:
    print(f"sdekit {__version__}")
    print(_registry_table())
    return 0


def cmd_compare(args) -> int:
    from .bench.compare import ComparisonConfig, expand_solvers, plot, run_comparison, samples_path, table

    if args.samples < 2:
        raise ValueError(f"--samples must be >= 2, got {args.samples}")
    nfe = _int_list(args.nfe, "--nfe")
    solvers = expand_solvers(args.solvers.split(","))
    model, name = load_model(args.model, args.preset, args.process, args.dtype)
    shape = getattr(model, "sample_shape", None)
    scatter_nfe = args.scatter_nfe or sorted(nfe)[len(nfe) // 2]
    cfg = ComparisonConfig(solvers=solvers, nfe=nfe, spacing=args.spacing, samples=args.samples, seed=args.seed,
                           dtype=args.dtype, device=args.device, model_name=name,
                           scatter_nfe=scatter_nfe if shape is not None and math.prod(shape) == 2 else None)
    records = run_comparison(model, cfg, args.out, resume=args.resume, progress=not args.no_progress,
                             log=lambda m: print(m, file=sys.stderr))
    det = [r for r in records if r.get("rmse_vs_reference") is not None]
    print(f"sdekit {__version__} compare: {name}, {args.samples} samples, spacing {args.spacing}, seed {args.seed}")
    if det:
        print("\nRMSE vs a float64 DOP853 reference solve of the PF-ODE from the same x_T "
              "(sqrt of the mean over samples and coordinates of the squared difference):")
        print(table(det, "rmse_vs_reference"))
    if any(r.get("sliced_w2") is not None for r in records):
        print("\nSliced Wasserstein-2 distance to exact samples of the data noised to t_end (MC SE in JSON):")
        print(table(records, "sliced_w2"))
    plots = []
    if not args.no_plots:
        scatter = None
        if cfg.scatter_nfe is not None:
            scatter = {}
            for s in solvers:
                p = samples_path(args.out, cfg, s, cfg.scatter_nfe)
                if os.path.exists(p):
                    scatter[f"{s} @ {cfg.scatter_nfe}"] = np.load(p)
        metric = "rmse_vs_reference" if det else "sliced_w2"
        plots = plot(records, args.out, metric=metric, scatter=scatter)
    print(f"\nrecords: {os.path.join(args.out, 'results.json')}" + "".join(f"\nplot: {p}" for p in plots))
    return 0


def cmd_order(args) -> int:
    from .bench.order_cli import run_order

    return run_order(args)


def cmd_likelihood(args) -> int:
    import time

    from .likelihood import log_likelihood

    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    model, name = load_model(args.model, args.preset, args.process, "float64")
    p = model.process
    mixture = getattr(model, "mixture", None)
    gen = torch.Generator().manual_seed(args.seed)
    if mixture is not None:
        x = mixture.marginal(p, p.t_min).sample(args.samples, generator=gen, dtype=torch.float64)
    else:
        raise ValueError("sdekit likelihood needs data: use an analytic --preset (zoo models: see docs/likelihood.md)")
    t0 = time.perf_counter()
    res = log_likelihood(model, x, args.divergence, rtol=args.rtol, atol=args.rtol, n_probes=args.n_probes,
                         generator=torch.Generator().manual_seed(args.seed + 1)) if args.divergence == "hutchinson" \
        else log_likelihood(model, x, "exact", rtol=args.rtol, atol=args.rtol)
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
    os.makedirs(args.out, exist_ok=True)
    rec = {"model": name, "samples": args.samples, "divergence": args.divergence, "rtol": args.rtol,
           "mean_log_prob": float(res.log_prob.mean()), "mean_exact_log_prob": float(exact.mean()),
           "rms_error": float(err.pow(2).mean().sqrt()), "nfe": int(res.stats["nfe"]), "wall_s": wall}
    path = os.path.join(args.out, "likelihood.json")
    with open(path + ".tmp", "w") as f:
        import json

        json.dump(rec, f, indent=1)
    os.replace(path + ".tmp", path)
    print(f"record: {path}")
    return 0


def cmd_demo(args) -> int:
    args.solvers = "ddim,dpm_solver_2,dpmpp_2m,dpmpp_3m,unipc,edm_heun,rk4,ddpm,dpmpp_2m_sde"
    args.nfe = "5,10,20,50"
    args.model, args.preset, args.process = None, "ring2d", "vp"
    args.spacing, args.dtype, args.device = "log_snr", "float64", "cpu"
    args.resume, args.scatter_nfe = False, 10
    return cmd_compare(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sdekit", description="Diffusion models as SDEs and ODEs, solved well.")
    p.add_argument("--version", action="version", version=f"sdekit {__version__}")
    sub = p.add_subparsers(dest="command")
    sub.add_parser("info", help="version and registered solvers")

    c = sub.add_parser("compare", help="solver comparison on a score model")
    c.add_argument("--model", default=None, help="package.module:factory returning an sdekit model, or a zoo name")
    c.add_argument("--preset", default="ring2d", help="analytic Gaussian-mixture preset (default model)")
    c.add_argument("--process", default="vp", help=f"process of the analytic preset: {', '.join(PROCESSES)}")
    c.add_argument("--solvers", default="ddim,dpmpp_2m,dpmpp_3m,unipc,edm_heun,ddpm",
                   help="comma-separated registry names or groups all-deterministic, all-stochastic")
    c.add_argument("--nfe", default="5,10,20,50")
    c.add_argument("--spacing", default="log_snr", choices=["time", "log_snr", "quadratic", "karras"])
    c.add_argument("--samples", type=int, default=512)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    c.add_argument("--device", default="cpu")
    c.add_argument("--scatter-nfe", type=int, default=None)
    c.add_argument("--out", default="runs/compare")
    c.add_argument("--resume", action="store_true", help="skip configurations whose records exist")
    c.add_argument("--no-plots", action="store_true")
    c.add_argument("--no-progress", action="store_true")

    o = sub.add_parser("order", help="convergence-order benchmark")
    o.add_argument("--problem", default="ou", choices=["ou", "gbm", "linear", "pf-ode"])
    o.add_argument("--solvers", default=None, help="comma-separated names (default: all that apply)")
    o.add_argument("--kind", default=None, choices=["ode", "strong", "weak"], help="default: by problem")
    o.add_argument("--steps", default=None, help="comma-separated step counts (default: per problem)")
    o.add_argument("--samples", type=int, default=2000)
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--out", default="runs/order")
    o.add_argument("--no-plots", action="store_true")

    lk = sub.add_parser("likelihood", help="log-likelihood of data under a model (exact value beside it)")
    lk.add_argument("--model", default=None)
    lk.add_argument("--preset", default="ring2d")
    lk.add_argument("--process", default="vp")
    lk.add_argument("--samples", type=int, default=64)
    lk.add_argument("--divergence", default="exact", choices=["exact", "hutchinson"])
    lk.add_argument("--n-probes", type=int, default=16)
    lk.add_argument("--rtol", type=float, default=1e-5)
    lk.add_argument("--seed", type=int, default=0)
    lk.add_argument("--out", default="runs/likelihood")

    d = sub.add_parser("demo", help="the README main job: compare on the embedded analytic default")
    d.add_argument("--samples", type=int, default=1024)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--no-plots", action="store_true")
    d.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"info": cmd_info, "demo": cmd_demo, "compare": cmd_compare, "order": cmd_order,
                "likelihood": cmd_likelihood, None: cmd_info}
    try:
        return handlers[args.command](args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"sdekit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sdekit: interrupted (finished configurations are kept; rerun with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())


