"""``sdekit likelihood``: log-likelihood by the probability-flow ODE, beside the exact value for analytic models,
bits/dim of held-out data, or the user's own data (``--data``)."""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from .common import load_model


def cmd_likelihood(args) -> int:
    import time

    from ..bench.compare import _atomic_write
    from ..likelihood import log_likelihood

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

    from .. import zoo
    from ..bench.compare import _atomic_write
    from ..likelihood import bits_per_dim, log_likelihood

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
