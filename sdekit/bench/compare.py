"""Solver comparisons on a score model: error vs NFE, distribution distances, resumable records.

``run_comparison`` evaluates every (solver, NFE) configuration from the same ``x_T``:

- deterministic samplers: RMSE of the end point against a float64, tight-tolerance DOP853 solve of the
  probability-flow ODE from the same ``x_T`` (computed once and cached in the output folder). The reference
  is checked against a second DOP853 solve at a 100 times looser tolerance: their RMSE difference (an upper
  estimate of the looser solve's error; the tight solve's is about 100 times smaller) is reported as
  ``reference_check_rmse``, the floor below which the table's errors mean nothing;
- every sampler: sliced Wasserstein-2 distance (with its Monte-Carlo standard error) to exact samples of the
  data noised to ``t_end``, and the exact mean log-density of the samples under the data, when the model is
  analytic; or, for a trained model given its held-out ``data``, the distance to as many held-out points. The
  distance between two independent sets of reference points of the same size (the finite-sample floor) is
  reported beside it; wall time and NFE.

Each finished configuration is written as its own JSON record (write to a temporary file, then rename), so a
killed run resumes with ``resume=True`` and recomputes nothing that finished.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..analytic import reference_solve
from ..reverse import probability_flow
from ..sampling import sample
from ..solvers import REGISTRY, DiffusionSampler
from ..solvers import get as get_solver
from .metrics import per_sample_rms, rmse, sliced_wasserstein2

GROUPS = {
    "all-deterministic": lambda: [n for n in sorted(REGISTRY) if _kind(n) == "deterministic"],
    "all-stochastic": lambda: [n for n in sorted(REGISTRY) if _kind(n) == "stochastic"],
}
SKIP_IN_GROUPS = {"dpm_solver_adaptive", "dopri5", "bosh3"}  # adaptive: they choose their own NFE


def _kind(name: str) -> str | None:
    if name in SKIP_IN_GROUPS:
        return None
    s = REGISTRY[name]()
    if isinstance(s, DiffusionSampler):
        return "stochastic" if s.noise_types else "deterministic"
    if not s.noise_types:
        return "deterministic"
    return "stochastic" if "additive" in s.noise_types else None


def expand_solvers(spec: Sequence[str]) -> list[str]:
    """Solver names with the groups ``all-deterministic`` / ``all-stochastic`` expanded; unknown names raise."""
    out: list[str] = []
    for name in spec:
        name = name.strip()
        if not name:
            continue
        if name in GROUPS:
            out += [n for n in GROUPS[name]() if n not in out]
        elif name in REGISTRY:
            if name not in out:
                out.append(name)
        else:
            raise ValueError(f"unknown solver {name!r}; registered: {', '.join(sorted(REGISTRY))}; groups: "
                             f"{', '.join(GROUPS)}")
    if not out:
        raise ValueError("no solvers selected")
    return out


def _atomic_write(path: str, text: str) -> None:
    d = os.path.dirname(path) or "."
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@dataclass
class ComparisonConfig:
    solvers: list[str]
    nfe: list[int]
    spacing: str = "log_snr"
    samples: int = 512
    seed: int = 0
    t_end: float | None = None
    dtype: str = "float64"
    device: str = "cpu"
    reference_rtol: float = 1e-10
    model_name: str = "model"
    scatter_nfe: int | None = None  # save the samples of this NFE (scatter plots, image grids)
    reference_check: bool = True
    extra: dict = field(default_factory=dict)

    def key(self) -> str:
        skip = ("solvers", "nfe", "scatter_nfe", "reference_check")
        blob = json.dumps({k: v for k, v in vars(self).items() if k not in skip}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _record_path(out_dir, cfg, solver, nfe):
    return os.path.join(out_dir, "records", f"{cfg.key()}-{solver}-{nfe}.json")


def samples_path(out_dir, cfg, solver, nfe):
    return os.path.join(out_dir, f"samples-{cfg.key()}-{solver}-{nfe}.npy")


def _save_npy(path: str, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".npy")
    os.close(fd)
    np.save(tmp, array)
    os.replace(tmp, path)


def reference_endpoint(model, x_T: torch.Tensor, t_start: float, t_end: float, *, rtol: float, cache: str | None,
                       stats: dict | None = None):
    """Float64 DOP853 solve of the PF-ODE from ``x_T`` (cached as .npy under ``cache`` when given).

    ``stats``, when given, receives ``nfe`` (drift evaluations of the solve; not set on a cache hit).
    """
    if cache is not None and os.path.exists(cache):
        return torch.from_numpy(np.load(cache))
    ode = probability_flow(model.process, model)
    count = [0]

    def drift(t, x):
        count[0] += 1
        return ode.drift(t, x)

    ref = reference_solve(drift, x_T.double().cpu(), t_start, t_end, rtol=rtol, atol=rtol)
    if stats is not None:
        stats["nfe"] = count[0]
    if cache is not None:
        _save_npy(cache, ref.numpy())
    return ref


def _reference(model, cfg, x_T, t_start, t_end, out_dir, resume, log) -> tuple[torch.Tensor, dict]:
    """The reference end points and their record (tolerance, NFE, the check against a looser solve).

    Cached in ``out_dir`` under the configuration key (which covers the model name, samples, seed, process
    times, dtype and tolerance), so a later run of the same configuration reuses it.
    """
    key = cfg.key()
    cache = os.path.join(out_dir, f"reference-{key}.npy")
    info_path = os.path.join(out_dir, f"reference-{key}.json")
    if os.path.exists(cache) and os.path.exists(info_path):
        with open(info_path) as f:
            info = json.load(f)
        if info.get("check_rmse") is not None or not cfg.reference_check:
            return torch.from_numpy(np.load(cache)), info
    info = {"method": "scipy DOP853, float64", "rtol": cfg.reference_rtol, "atol": cfg.reference_rtol}
    log(f"reference: float64 DOP853 PF-ODE solve of {cfg.samples} samples (rtol = atol = {cfg.reference_rtol:g}) ...")
    stats: dict = {}
    t0 = time.perf_counter()
    ref = reference_endpoint(model, x_T, t_start, t_end, rtol=cfg.reference_rtol, cache=cache if resume else None,
                             stats=stats)  # a killed run may have left the end points without their record
    _save_npy(cache, ref.numpy())
    info["nfe"], info["wall_s"] = stats.get("nfe"), time.perf_counter() - t0
    if cfg.reference_check:
        loose = 100 * cfg.reference_rtol
        log(f"reference check: the same solve at rtol = atol = {loose:g} ...")
        stats = {}
        other = reference_endpoint(model, x_T, t_start, t_end, rtol=loose, cache=None, stats=stats)
        info.update({"check_rtol": loose, "check_nfe": stats.get("nfe"), "check_rmse": rmse(other, ref)})
    _atomic_write(info_path, json.dumps(info, indent=1))
    return ref, info


def run_comparison(model, cfg: ComparisonConfig, out_dir: str, *, resume: bool = False, progress: bool = True,
                   log: Callable[[str], None] = print, data: torch.Tensor | None = None) -> list[dict]:
    """Run every (solver, NFE) configuration of ``cfg`` on ``model``; returns the records (also on disk).

    ``data``: held-out data for the distribution distance when the model is not analytic (the first
    ``min(cfg.samples, len(data))`` points are used, against as many samples).
    """
    dtype = {"float64": torch.float64, "float32": torch.float32}[cfg.dtype]
    process = model.process
    shape = getattr(model, "sample_shape", None)
    if shape is None:
        raise ValueError("the model needs a sample_shape (the shape of one sample) for comparisons")
    gen = torch.Generator().manual_seed(cfg.seed)
    x_T = process.prior_sample((cfg.samples, *shape), generator=gen, dtype=torch.float64)
    t_start = float(process.t_max)
    t_end = float(process.t_min if cfg.t_end is None else cfg.t_end)
    os.makedirs(out_dir, exist_ok=True)
    rec_dir = os.path.join(out_dir, "records")
    if os.path.isdir(rec_dir):  # temporary files of a killed run are never records: remove them
        for name in os.listdir(rec_dir):
            if name.startswith(".tmp-"):
                os.unlink(os.path.join(rec_dir, name))
    need_ref = any(_kind(s) == "deterministic" for s in cfg.solvers)
    ref, ref_info = None, None
    if need_ref:
        ref, ref_info = _reference(model, cfg, x_T, t_start, t_end, out_dir, resume, log)
    mixture = getattr(model, "mixture", None)
    exact, floor, n_dist = None, None, cfg.samples
    if mixture is not None:
        marginal = mixture.marginal(process, t_end)
        exact = marginal.sample(cfg.samples, generator=torch.Generator().manual_seed(cfg.seed + 10_000),
                                dtype=torch.float64)
        other = marginal.sample(cfg.samples, generator=torch.Generator().manual_seed(cfg.seed + 20_000),
                                dtype=torch.float64)
        floor = sliced_wasserstein2(other, exact, generator=torch.Generator().manual_seed(cfg.seed + 2))
        distance_to = "exact samples of the data noised to t_end"
    elif data is not None:
        data = torch.as_tensor(data).double().cpu()
        if tuple(data.shape[1:]) != tuple(shape):
            raise ValueError(f"data must hold samples of shape {tuple(shape)}, got {tuple(data.shape)}")
        n_dist = min(cfg.samples, data.shape[0])
        exact = data[:n_dist]
        if data.shape[0] >= 2 * n_dist:
            floor = sliced_wasserstein2(data[n_dist:2 * n_dist], exact,
                                        generator=torch.Generator().manual_seed(cfg.seed + 2))
        distance_to = f"{n_dist} held-out data points"
    jobs = [(s, n) for s in cfg.solvers for n in cfg.nfe]
    records = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="compare", unit="config", dynamic_ncols=True)
    for solver_name, nfe in jobs:
        path = _record_path(out_dir, cfg, solver_name, nfe)
        if bar is not None:
            bar.set_postfix_str(f"{solver_name} @ {nfe} NFE")
        if resume and os.path.exists(path):
            with open(path) as f:
                records.append(json.load(f))
            if bar is not None:
                bar.update(1)
            continue
        solver = get_solver(solver_name)
        steps = max(1, nfe // solver.evals_per_step)
        x = x_T.to(device=cfg.device, dtype=dtype)
        t0 = time.perf_counter()
        sol = sample(model, x, solver_name, steps=steps, spacing=cfg.spacing, t_end=t_end,
                     generator=torch.Generator(device=cfg.device).manual_seed(cfg.seed + 1))
        wall = time.perf_counter() - t0
        out = sol.x.double().cpu()
        rec = {"solver": solver_name, "kind": _kind(solver_name), "nfe_budget": nfe, "steps": steps,
               "nfe": int(sol.stats["nfe"]), "wall_s": wall, "spacing": cfg.spacing, "samples": cfg.samples,
               "seed": cfg.seed, "t_end": t_end, "model": cfg.model_name, "config_key": cfg.key(),
               "finite": bool(torch.isfinite(out).all())}
        if ref is not None and rec["kind"] == "deterministic":
            rec["rmse_vs_reference"] = rmse(out, ref)
            per = per_sample_rms(out, ref)
            rec["median_error_vs_reference"] = float(per.median())
            rec["max_error_vs_reference"] = float(per.max())
        if exact is not None:
            sw, se = sliced_wasserstein2(out[:n_dist], exact, generator=torch.Generator().manual_seed(cfg.seed + 2))
            rec["sliced_w2"], rec["sliced_w2_stderr"] = sw, se
            if mixture is not None:
                rec["mean_log_p_data"] = float(mixture.log_prob(out.reshape(out.shape[0], -1)).mean())
        if cfg.scatter_nfe == nfe:
            _save_npy(samples_path(out_dir, cfg, solver_name, nfe), out.numpy())
        _atomic_write(path, json.dumps(rec, indent=1))
        records.append(rec)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    distance = None
    if exact is not None:
        distance = {"to": distance_to, "samples": n_dist, "floor": None if floor is None else floor[0],
                    "floor_stderr": None if floor is None else floor[1]}
    summary = {"config": vars(cfg), "reference": ref_info, "distance": distance, "records": records}
    _atomic_write(os.path.join(out_dir, "results.json"), json.dumps(summary, indent=1))
    return records


def table(records: list[dict], metric: str) -> str:
    """A solver × NFE table of ``metric`` (missing entries as '-')."""
    solvers = list(dict.fromkeys(r["solver"] for r in records))
    nfes = sorted({r["nfe_budget"] for r in records})
    head = f"{'solver':<22}" + "".join(f"{n:>11}" for n in nfes)
    lines = [head, "-" * len(head)]
    for s in solvers:
        row = f"{s:<22}"
        for n in nfes:
            r = next((r for r in records if r["solver"] == s and r["nfe_budget"] == n), None)
            v = None if r is None else r.get(metric)
            row += f"{'-':>11}" if v is None else f"{v:>11.3e}"
        lines.append(row)
    return "\n".join(lines)


def tile(images: np.ndarray, cols: int = 8, pad: int = 1) -> np.ndarray:
    """``(N, C, H, W)`` model-space images in [-1, 1] as one ``(rows·(H+pad)-pad, cols·(W+pad)-pad, C)`` array
    in [0, 1] (values outside [-1, 1] clipped; padding white)."""
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {images.shape}")
    n, c, h, w = images.shape
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    out = np.ones((rows * (h + pad) - pad, cols * (w + pad) - pad, c))
    for i in range(n):
        r, q = divmod(i, cols)
        out[r * (h + pad):r * (h + pad) + h, q * (w + pad):q * (w + pad) + w] = \
            (np.clip(images[i], -1, 1).transpose(1, 2, 0) + 1) / 2
    return out


def plot(records: list[dict], out_dir: str, *, metric: str, scatter: dict | None = None,
         images: dict | None = None, max_images: int = 64) -> list[str]:
    """PNG plots: ``metric`` vs NFE (log-log, one line per solver); optional 2-D scatter grid; optional image
    samples (``{title: (N, C, H, W) array}``): one tiled grid per entry (``samples-<title>.png``, the first
    ``max_images``) and all of them side by side in ``samples.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for s in dict.fromkeys(r["solver"] for r in records):
        pts = sorted((r["nfe"], r[metric]) for r in records if r["solver"] == s and r.get(metric) is not None)
        if pts:
            ax.loglog([p[0] for p in pts], [p[1] for p in pts], marker="o", label=s)
    ax.set_xlabel("NFE")
    ax.set_ylabel(metric.replace("_", " "))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    p = os.path.join(out_dir, f"{metric}_vs_nfe.png")
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(p)
    if scatter:
        def draw_points(ax, pts):
            ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5)
            ax.set_xlim(-3, 3)
            ax.set_ylim(-3, 3)
            ax.set_aspect("equal")

        paths.append(_panels(plt, scatter, draw_points, (3.0, 3.0), os.path.join(out_dir, "samples.png")))
    if images:
        grids = {name: tile(arr[:max_images]) for name, arr in images.items()}
        for name, grid in grids.items():
            p = os.path.join(out_dir, f"samples-{_slug(name)}.png")
            plt.imsave(p, np.repeat(grid, 3, axis=2) if grid.shape[2] == 1 else grid)
            paths.append(p)

        def draw_grid(ax, grid):
            ax.imshow(grid[:, :, 0] if grid.shape[2] == 1 else grid, cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.axis("off")

        paths.append(_panels(plt, grids, draw_grid, (2.6, 2.8), os.path.join(out_dir, "samples.png")))
    return paths


def _panels(plt, items: dict, draw: Callable, size: tuple[float, float], path: str) -> str:
    """One titled panel per item, four to a row, saved to ``path``."""
    names = list(items)
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        draw(ax, items[name])
        ax.set_title(name, fontsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _slug(name: str) -> str:
    return re.sub(r"-+", "-", "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in name)).strip("-")
