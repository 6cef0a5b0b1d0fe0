"""``sdekit likelihood``: log-likelihood by the probability-flow ODE, beside the exact value for analytic models,
bits/dim of held-out data, or the user's own data (``--data``)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

import numpy as np
import torch

from .common import load_model

#: samples per block of ``sdekit likelihood``: the adaptive solve of the likelihood ODE chooses its steps from
#: the samples solved together, so every block is solved on its own, in one process or many, and is the unit of
#: the split between processes and of the resumable records (`sdekit.bench.blocks`)
LIKELIHOOD_BLOCK = 64


def cmd_likelihood(args) -> int:
    """Run ``sdekit likelihood``; under ``torchrun`` every rank solves its blocks of samples, writes their
    records, and rank 0 gathers them, prints and writes ``likelihood.json`` (the same numbers for any number
    of processes)."""
    from .. import distributed

    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    if args.n_dequant < 1:
        raise ValueError(f"--n-dequant must be >= 1, got {args.n_dequant}")
    analytic = args.model is None
    dtype = args.dtype or ("float64" if analytic else "float32")
    model, name = load_model(args.model, args.preset, args.process, dtype)
    info = distributed.init("cpu", timeout_s=getattr(args, "timeout", distributed.DEFAULT_TIMEOUT_S))
    try:
        if getattr(model, "mixture", None) is None:
            return _likelihood_heldout(args, model, name, dtype, info)
        return _likelihood_analytic(args, model, name, info)
    finally:
        distributed.shutdown()


def _settings(args, model, name: str, dtype: str, n: int, extra: dict) -> tuple[dict, str]:
    """The settings that determine the numbers (checked equal on every rank), and their key (block files)."""
    from .. import distributed
    from ..bench.compare import model_fingerprint

    shape = getattr(model, "sample_shape", None)
    settings = {"model": name, "fingerprint": model_fingerprint(model, tuple(shape)) if shape is not None else None,
                "samples": n, "divergence": args.divergence, "rtol": args.rtol, "dtype": dtype, "seed": args.seed,
                "block": LIKELIHOOD_BLOCK, **extra}
    if args.divergence == "hutchinson":
        settings["n_probes"] = args.n_probes
    distributed.check_same_config({"settings": settings, "resume": bool(getattr(args, "resume", False))})
    return settings, distributed.config_hash(settings)[:12]


def _run(args, n: int, compute, key: str, name: str, info):
    """The blocks of every rank, gathered in sample order on rank 0 (None elsewhere), and how many were read
    back from their records."""
    from ..bench.blocks import run_blocks

    log = (lambda m: print(m, file=sys.stderr)) if info.is_main else (lambda m: None)
    folder = os.path.join(args.out, "blocks")
    if info.is_main:
        os.makedirs(args.out, exist_ok=True)
    blocks = run_blocks(n, LIKELIHOOD_BLOCK, compute, folder=folder, name=f"likelihood-{key}", key=key,
                        resume=bool(getattr(args, "resume", False)), log=log,
                        what=f"the likelihood blocks of {name}")
    return blocks


def _totals(blocks) -> dict:
    return {"nfe": sum(int(b.meta["nfe"]) for b in blocks), "n_steps": sum(int(b.meta["n_steps"]) for b in blocks),
            "blocks": len(blocks), "blocks_reused": sum(b.reused for b in blocks),
            "compute_s": sum(float(b.meta["wall_s"]) for b in blocks)}


def _likelihood_analytic(args, model, name: str, info) -> int:
    from ..bench.compare import _atomic_write
    from ..likelihood import log_likelihood

    mixture = model.mixture
    p = model.process
    gen = torch.Generator().manual_seed(args.seed)
    x = mixture.marginal(p, p.t_min).sample(args.samples, generator=gen, dtype=getattr(torch, args.dtype or "float64"))
    extra = {"n_probes": args.n_probes} if args.divergence == "hutchinson" else {}
    _, key = _settings(args, model, name, str(x.dtype).removeprefix("torch."), args.samples, {"preset": True})
    show = info.is_main and not args.no_progress

    def compute(a, b):
        t0 = time.perf_counter()
        res = log_likelihood(model, x[a:b], args.divergence, rtol=args.rtol, atol=args.rtol, progress=show,
                             generator=torch.Generator().manual_seed(args.seed + 1), sample_offset=a, **extra)
        return ({"log_prob": res.log_prob.double().numpy()},
                {"nfe": int(res.stats["nfe"]), "n_steps": int(res.stats["n_steps"]),
                 "wall_s": time.perf_counter() - t0})

    t0 = time.perf_counter()
    blocks = _run(args, args.samples, compute, key, name, info)
    if not info.is_main:
        return 0
    wall = time.perf_counter() - t0
    log_prob = torch.from_numpy(np.concatenate([b.arrays["log_prob"] for b in blocks]))
    exact = mixture.log_prob_t(x, p, p.t_min).double()
    err = log_prob - exact
    tot = _totals(blocks)
    print(f"sdekit likelihood: {name}, {args.samples} samples of the data noised to t_min={p.t_min:g}, "
          f"divergence {args.divergence}, rtol = atol = {args.rtol:g}{_procs(info)}")
    print(f"{'':<24}{'estimate':>12}{'exact':>12}")
    print(f"{'mean log p (nats)':<24}{float(log_prob.mean()):>12.4f}{float(exact.mean()):>12.4f}")
    print(f"RMS error per sample: {float(err.pow(2).mean().sqrt()):.3e} nats (the prior at t_max is N(0, I), "
          "a small mismatch with the true marginal there)")
    print(_cost_line(tot, wall))
    rec = {"model": name, "samples": args.samples, "divergence": args.divergence, "rtol": args.rtol,
           "mean_log_prob": float(log_prob.mean()), "mean_exact_log_prob": float(exact.mean()),
           "rms_error": float(err.pow(2).mean().sqrt()), "log_prob": [float(v) for v in log_prob],
           "nfe": tot["nfe"], "wall_s": wall, **_run_info(tot, info)}
    path = os.path.join(args.out, "likelihood.json")
    _atomic_write(path, json.dumps(rec, indent=1))
    print(f"record: {path}")
    return 0


def _procs(info) -> str:
    return f", {info.world_size} processes" if info.world_size > 1 else ""


def _cost_line(tot: dict, wall: float) -> str:
    reused = f", {tot['blocks_reused']} read back from their records (--resume)" if tot["blocks_reused"] else ""
    return (f"NFE {tot['nfe']}, steps {tot['n_steps']} (summed over {tot['blocks']} block"
            f"{'s' * (tot['blocks'] > 1)} of up to {LIKELIHOOD_BLOCK} samples{reused}), wall {wall:.2f} s")


def _run_info(tot: dict, info) -> dict:
    return {"n_steps": tot["n_steps"], "block": LIKELIHOOD_BLOCK, "blocks": tot["blocks"],
            "blocks_reused": tot["blocks_reused"], "processes": info.world_size}


def _likelihood_heldout(args, model, name: str, dtype: str, info) -> int:
    """Likelihood of a zoo model's held-out data: bits/dim for quantized data (digits), nats for continuous."""
    import math

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
    show = info.is_main and not args.no_progress
    options = dict(rtol=args.rtol, atol=args.rtol, dtype=getattr(torch, dtype), progress=show)
    if args.divergence == "hutchinson":
        options["n_probes"] = args.n_probes
    digest = hashlib.sha256(data.contiguous().numpy().tobytes()).hexdigest()[:16]
    _, key = _settings(args, model, name, dtype, n, {"data": digest, "n_dequant": args.n_dequant})
    rec = {"model": name, "samples": n, "heldout_available": int(available),
           "divergence": args.divergence, "n_probes": args.n_probes if args.divergence == "hutchinson" else None,
           "rtol": args.rtol, "dtype": dtype, "seed": args.seed}
    source = f"samples of {args.data}" if args.data is not None else "held-out samples"
    if info.is_main:
        print(f"sdekit likelihood: {name}, the first {n} {source}, divergence {args.divergence}"
              + (f" ({args.n_probes} probe{'s' * (args.n_probes > 1)})" if args.divergence == "hutchinson" else "")
              + f", rtol = atol = {args.rtol:g}, {dtype}{_procs(info)}")
    levels = zoo.to_levels(data, quant) if quant is not None else None

    def compute(a, b):
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(args.seed)
        if quant is not None:
            res = bits_per_dim(model, levels[a:b], divergence=args.divergence, n_dequant=args.n_dequant,
                               generator=gen, sample_offset=a, **quant, **options)
            arrays, stats = {"bpd": res.bpd.double().numpy()}, res.likelihood.stats
        else:
            lik = log_likelihood(model, data[a:b].to(getattr(torch, dtype)), args.divergence, generator=gen,
                                 sample_offset=a, **options)
            arrays, stats = {"log_prob": lik.log_prob.double().numpy()}, lik.stats
        return arrays, {"nfe": int(stats["nfe"]), "n_steps": int(stats["n_steps"]),
                        "wall_s": time.perf_counter() - t0}

    t0 = time.perf_counter()
    blocks = _run(args, n, compute, key, name, info)
    if not info.is_main:
        return 0
    wall = time.perf_counter() - t0
    tot = _totals(blocks)
    if quant is not None:
        bpd = np.concatenate([b.arrays["bpd"] for b in blocks])
        mean = float(bpd.mean())
        stderr = float(bpd.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
        uniform = math.log2(quant["levels"])
        print(f"bits/dim: {mean:.4f} ± {stderr:.4f} (standard error over images; {args.n_dequant} "
              f"dequantization draw{'s' * (args.n_dequant > 1)} each); a uniform law on the {quant['levels']} "
              f"levels: {uniform:.4f}")
        rec.update({"bits_per_dim": mean, "bits_per_dim_stderr": stderr, "n_dequant": args.n_dequant,
                    "quantization": quant, "uniform_bits_per_dim": uniform,
                    "bpd_per_image": [float(v) for v in bpd]})
    else:
        lp = np.concatenate([b.arrays["log_prob"] for b in blocks])
        se = float(lp.std(ddof=1)) / math.sqrt(n) if n > 1 else float("nan")
        print(f"mean log p: {float(lp.mean()):.4f} ± {se:.4f} nats (standard error over samples)")
        rec.update({"mean_log_prob": float(lp.mean()), "mean_log_prob_stderr": se,
                    "log_prob": [float(v) for v in lp]})
    print(_cost_line(tot, wall))
    rec.update({"nfe": tot["nfe"], "wall_s": wall, **_run_info(tot, info)})
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
