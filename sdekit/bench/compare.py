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

Under ``torchrun`` (a process group from [`sdekit.distributed.init`][sdekit.distributed.init]; every rank calls
``run_comparison`` with the same arguments) each rank draws, samples and solves the reference for its own
contiguous shard of the samples, and rank 0 gathers them and computes and writes everything, in the order of a
single-process run: the records are the same for any number of processes, bit for bit on the CPU in float64.
That holds because ``x_T`` and the samplers' noise are drawn per sample from the sample's global index
(``sample_offset``, `sdekit.brownian.indexed_draw`), and the adaptive reference solve runs on fixed blocks of
`REFERENCE_BLOCK` samples (its step sizes depend on the samples solved together) that no shard splits.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import distributed
from ..analytic import reference_solve
from ..brownian import SAMPLE_BLOCK
from ..reverse import probability_flow
from ..sampling import sample
from ..solvers import REGISTRY, DiffusionSampler
from ..solvers import get as get_solver
from .metrics import per_sample_rms, rmse, sliced_wasserstein2

GROUPS = {
    "all-deterministic": lambda: [n for n in sorted(REGISTRY) if _kind(n) == "deterministic"],
    "all-stochastic": lambda: [n for n in sorted(REGISTRY) if _kind(n) == "stochastic"],
}
def _kind(name: str) -> str | None:
    """``"deterministic"``/``"stochastic"`` for the comparison groups; None for solvers that choose their own
    steps (embedded pairs, the adaptive DPM-Solver: a budget does not apply), cannot run a diffusion, or need a
    consistency model."""
    cls = REGISTRY[name]
    if cls.adaptive or cls.needs_consistency_model:  # the latter is wrong on an ordinary diffusion model
        return None
    s = cls()
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


#: samples per block of the float64 reference solve: each block is one adaptive DOP853 solve (its steps depend on
#: the samples in it), and a sharded run splits the samples between processes in whole blocks, so that the
#: reference does not depend on the number of processes. Part of what determines the results (``sharding``).
REFERENCE_BLOCK = 128


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def _atomic_write(path: str, text: str) -> None:
    d = os.path.dirname(path) or "."
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are ordinary files, like the plots
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
    reference_method: str = "DOP853"
    model_name: str = "model"
    model_fingerprint: str = ""  # hash of the model's weights (or outputs on a probe batch): see model_fingerprint
    scatter_nfe: int | None = None  # save the samples of this NFE (scatter plots, image grids)
    reference_check: bool = True
    extra: dict = field(default_factory=dict)
    #: ``"solver:steps" -> t`` (continuous, decreasing): configurations that run on this grid instead of
    #: ``spacing`` (``sdekit compare --grid FILE``)
    grids: dict = field(default_factory=dict)
    #: how the randomness and the reference are laid out over the samples (a changed layout gives other
    #: results, so it is part of the key): per-sample noise in blocks of ``SAMPLE_BLOCK`` global indices, the
    #: reference in blocks of ``REFERENCE_BLOCK`` samples
    sharding: str = f"per-sample noise in blocks of {SAMPLE_BLOCK}; reference in blocks of {REFERENCE_BLOCK}"

    def key(self) -> str:
        """A short hash of the settings that determine the reference and the samples (not solvers or budgets)."""
        skip = ("solvers", "nfe", "scatter_nfe", "reference_check") + (() if self.grids else ("grids",))
        blob = json.dumps({k: v for k, v in vars(self).items() if k not in skip}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _record_path(out_dir, cfg, solver, nfe):
    return os.path.join(out_dir, "records", f"{cfg.key()}-{solver}-{nfe}.json")


def samples_path(out_dir, cfg, solver, nfe):
    """Where `run_comparison` saves one configuration's samples (``.npy``) in ``out_dir``."""
    return os.path.join(out_dir, f"samples-{cfg.key()}-{solver}-{nfe}.npy")


def _save_npy(path: str, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-", suffix=".npy")
    os.close(fd)
    try:
        np.save(tmp, array)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


#: a reference needing more evaluations than this is flagged as costly (rough PF-ODE in t, see the README)
ROUGH_REFERENCE_NFE = 2000


def model_fingerprint(model, shape) -> str:
    """What determines a model's outputs, hashed: the weights of its network when it is an ``nn.Module``, and
    always its outputs on a fixed probe batch at three times (which also covers closures and analytic models).
    A cached reference or record from another model (or the same one retrained) never matches."""
    h = hashlib.sha256()
    h.update(repr(model.process).encode())
    net = getattr(model, "net", None)
    if isinstance(net, torch.nn.Module):
        for name, value in net.state_dict().items():
            h.update(name.encode())
            h.update(value.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    p = model.process
    probe = p.prior_sample((4, *shape), generator=torch.Generator().manual_seed(1234), dtype=torch.float64)
    with torch.no_grad():
        for t in (float(p.t_max), 0.5 * (float(p.t_max) + float(p.t_min)), float(p.t_min)):
            out = model.predict(probe, t, "eps")
            h.update(out.detach().to("cpu", torch.float64).numpy().tobytes())
    return h.hexdigest()[:16]


class _ReferenceProgress:
    """A tqdm bar over the reference solve: share of the interval reached by accepted steps, NFE, evaluation
    rate, ETA. Called once per drift evaluation (`evaluated`) and once per accepted step (``__call__``)."""

    def __init__(self, t_start: float, t_end: float, enabled: bool, desc: str = "reference"):
        self.t_start, self.span, self.nfe, self.bar = t_start, abs(t_end - t_start), 0, None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=1000, desc=desc, unit="‰", dynamic_ncols=True, leave=False,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}")
        self._done = 0
        self._start = time.perf_counter()

    def evaluated(self):
        self.nfe += 1

    def __call__(self, t: float):
        if self.bar is None:
            return
        done = min(1000, int(1000 * abs(t - self.t_start) / self.span))
        if done > self._done:
            self.bar.update(done - self._done)
            self._done = done
        rate = self.nfe / max(1e-9, time.perf_counter() - self._start)
        self.bar.set_postfix_str(f"t={t:.4f} NFE={self.nfe} ({rate:.0f} NFE/s)")  # once per accepted step

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def reference_endpoint(model, x_T: torch.Tensor, t_start: float, t_end: float, *, rtol: float, cache: str | None,
                       stats: dict | None = None, method: str = "DOP853", progress: bool = False,
                       log: Callable[[str], None] = _stderr, desc: str = "reference"):
    """Float64 solve (scipy DOP853 by default) of the PF-ODE from ``x_T``, cached as .npy under ``cache``.

    A cache that cannot be read, has another shape or holds NaN/Inf is recomputed. ``stats``, when given,
    receives ``nfe`` (drift evaluations of the solve; not set on a cache hit). ``desc`` labels the progress bar.
    """
    if cache is not None and os.path.exists(cache):
        cached = _load_reference(cache, tuple(x_T.shape), log=log)
        if cached is not None:
            return cached
    ode = probability_flow(model.process, model)
    bar = _ReferenceProgress(t_start, t_end, progress, desc)

    def drift(t, x):
        bar.evaluated()
        return ode.drift(t, x)

    try:
        ref = reference_solve(drift, x_T.double().cpu(), t_start, t_end, rtol=rtol, atol=rtol, method=method,
                              on_step=bar)
    finally:
        bar.close()
    if not bool(torch.isfinite(ref).all()):
        raise ValueError(f"the reference solve of the PF-ODE returned NaN/Inf: the model returns NaN/Inf "
                         f"between t = {t_start:g} and {t_end:g}")
    if stats is not None:
        stats["nfe"] = bar.nfe
    if cache is not None:
        _save_npy(cache, ref.numpy())
    return ref


def _digest(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def _load_reference(path: str, shape: tuple[int, ...], sha256: str | None = None,
                    log: Callable[[str], None] = _stderr) -> torch.Tensor | None:
    """The cached reference at ``path``, or None (after saying why) when it is unreadable, does not fit, or its
    content differs from the digest recorded when it was written."""
    try:
        arr = np.load(path)
    except (OSError, ValueError, EOFError) as e:
        log(f"sdekit: the cached reference {path} is unreadable ({type(e).__name__}); recomputing it")
        return None
    if arr.shape != shape or arr.dtype != np.float64 or not np.isfinite(arr).all():
        why = (f"shape {arr.shape}, expected {shape}" if arr.shape != shape else
               f"dtype {arr.dtype}" if arr.dtype != np.float64 else "NaN/Inf values")
        log(f"sdekit: the cached reference {path} does not fit this run ({why}); recomputing it")
        return None
    if sha256 is not None and _digest(arr) != sha256:
        log(f"sdekit: the cached reference {path} was modified after it was written (SHA-256 differs); "
            "recomputing it")
        return None
    return torch.from_numpy(arr)


def _blocked_reference(model, x_T: torch.Tensor, t_start: float, t_end: float, *, rtol: float, method: str,
                       progress: bool, log, first: int = 0, folder: str | None = None, key: str = "",
                       resume: bool = False) -> tuple[torch.Tensor, tuple[int, int], list[str]]:
    """The reference end points of this rank's samples (global indices ``first...``, a multiple of
    `REFERENCE_BLOCK`: a shard holds whole blocks), one adaptive solve per block, ``(total NFE, blocks read
    back)``, and the block files written or read. With a ``folder``, each solved block is written there at once
    (`sdekit.bench.blocks`), and with ``resume`` a block found there is read back instead of solved: a run
    killed in the middle of the reference (in any of its processes) loses at most one block per process."""
    from .blocks import block_path, load_block, save_block

    parts, nfe, files, reused = [], 0, [], 0
    n_blocks = -(-x_T.shape[0] // REFERENCE_BLOCK)
    name, bkey = f"reference-{key}-rtol{rtol:g}", f"{key}-{method}-{rtol!r}"
    for k in range(n_blocks):
        a, b = k * REFERENCE_BLOCK, min((k + 1) * REFERENCE_BLOCK, x_T.shape[0])
        path = block_path(folder, name, first + a, first + b) if folder is not None else None
        if path is not None:
            files.append(path)
        if resume and path is not None and os.path.exists(path):
            got = load_block(path, key=bkey, start=first + a, stop=first + b, log=log)
            if got is not None and got.arrays["x"].shape == tuple(x_T[a:b].shape):
                parts.append(torch.from_numpy(got.arrays["x"]))
                nfe += int(got.meta["nfe"])
                reused += 1
                continue
        stats: dict = {}
        desc = "reference" if n_blocks == 1 else f"reference {k + 1}/{n_blocks}"
        ref = reference_endpoint(model, x_T[a:b], t_start, t_end, rtol=rtol, cache=None, stats=stats, method=method,
                                 progress=progress, log=log, desc=desc)
        if path is not None:
            save_block(path, {"x": ref.numpy()}, {"key": bkey, "start": first + a, "stop": first + b,
                                                  "nfe": stats["nfe"]})
        parts.append(ref)
        nfe += stats["nfe"]
    if reused:
        log(f"reference: {reused} of this process's {n_blocks} block(s) of {REFERENCE_BLOCK} samples (rtol {rtol:g}) "
            f"read back from {folder} (--resume)")
    return torch.cat(parts), (nfe, reused), files


def _reference(model, cfg, x_T, t_start, t_end, out_dir, resume, log, progress,
               first: int = 0) -> tuple[torch.Tensor | None, dict]:
    """The reference end points (on rank 0; None on the other ranks) and their record (method, tolerance, NFE,
    cost, the check against a looser solve), on every rank.

    ``x_T`` holds this rank's shard of the samples (whole blocks). Cached in ``out_dir`` (by rank 0) under the
    configuration key, which covers the model's fingerprint (weights, outputs), the samples, seed, process
    times, dtype, method and tolerance: a later run of the same configuration reuses it, a changed model never
    does. A cached file is validated (readable, shape, finite) before it is used. Every block of
    `REFERENCE_BLOCK` samples is solved on its own, so the end points do not depend on the number of ranks, and
    each rank writes its solved blocks to ``out_dir/blocks`` as it goes (read back on ``resume``; removed once
    the whole reference is recorded).
    """
    key = cfg.key()
    cache = os.path.join(out_dir, f"reference-{key}.npy")
    info_path = os.path.join(out_dir, f"reference-{key}.json")
    shape = (cfg.samples, *x_T.shape[1:])
    held: dict = {}  # rank 0's arrays (never broadcast)
    blocks = os.path.join(out_dir, "blocks")
    block_files: list[str] = []  # this rank's block files, removed once the reference is recorded

    def look():
        """What rank 0 has on disk: a recorded reference (its info), end points without a record, or nothing."""
        reuse_unrecorded = resume  # a killed run may have left the end points without their record
        if os.path.exists(cache) and os.path.exists(info_path):
            info = _read_json(info_path, dict, log)
            ok = info is not None and (info.get("check_rmse") is not None or not cfg.reference_check)
            if ok:
                ref = _load_reference(cache, shape, info.get("sha256", ""), log=log)
                if ref is not None:
                    held["ref"] = ref
                    return "recorded", info
                reuse_unrecorded = False  # recorded but damaged: never reused
        if reuse_unrecorded and os.path.exists(cache):
            ref = _load_reference(cache, shape, log=log)
            if ref is not None:
                held["ref"] = ref
                return "unrecorded", None
        return None, None

    found, info = distributed.on_main(look, what="rank 0's look for a cached reference")
    if found == "recorded":
        return held.get("ref"), info
    info = {"method": f"scipy {cfg.reference_method}, float64", "rtol": cfg.reference_rtol,
            "atol": cfg.reference_rtol}
    log(f"reference: float64 {cfg.reference_method} PF-ODE solve of {cfg.samples} samples "
        f"(rtol = atol = {cfg.reference_rtol:g}) ...")
    t0 = time.perf_counter()
    nfe = None
    if found == "unrecorded":
        ref = held.get("ref")  # rank 0's; the other ranks need none
    else:
        local, local_nfe, files = _blocked_reference(model, x_T, t_start, t_end, rtol=cfg.reference_rtol,
                                                     method=cfg.reference_method, progress=progress, log=log,
                                                     first=first, folder=blocks, key=key, resume=resume)
        block_files += files
        ref = distributed.gather(local, what="the reference end points")
        counts = distributed.gather_objects(local_nfe, what="the reference's NFE")
        nfe = None if counts is None else sum(c[0] for c in counts)
        info["blocks_reused"] = None if counts is None else sum(c[1] for c in counts)

    def record_main():
        _save_npy(cache, ref.numpy())
        info["sha256"] = _digest(ref.numpy())
        info["nfe"], info["wall_s"] = nfe, time.perf_counter() - t0
        if info["nfe"] is not None:
            log(f"reference: {info['nfe']} NFE in {info['wall_s']:.1f} s")

    distributed.on_main(record_main, what="the reference's file")
    if cfg.reference_check:
        loose = 100 * cfg.reference_rtol
        log(f"reference check: the same solve at rtol = atol = {loose:g} ...")
        t1 = time.perf_counter()
        local, local_nfe, files = _blocked_reference(model, x_T, t_start, t_end, rtol=loose,
                                                     method=cfg.reference_method, progress=progress, log=log,
                                                     first=first, folder=blocks, key=key, resume=resume)
        block_files += files
        other = distributed.gather(local, what="the reference check's end points")
        counts = distributed.gather_objects(local_nfe, what="the reference check's NFE")
        if other is not None:
            info.update({"check_rtol": loose, "check_nfe": sum(c[0] for c in counts), "check_rmse": rmse(other, ref),
                         "check_wall_s": time.perf_counter() - t1,
                         "check_blocks_reused": sum(c[1] for c in counts)})

    def finish_main():
        if info["nfe"] is not None and info["nfe"] > ROUGH_REFERENCE_NFE * -(-cfg.samples // REFERENCE_BLOCK):
            blocks = -(-cfg.samples // REFERENCE_BLOCK)
            per = f" ({info['nfe'] / blocks:.0f} per block of {REFERENCE_BLOCK} samples)" if blocks > 1 else ""
            hint = (f"the reference needed {info['nfe']} NFE{per}: this PF-ODE is rough in t (a network's time "
                    f"features can do this; see the README's time-embedding finding)")
            if info.get("check_rmse") is not None:
                hint += (f". The check at {info['check_rtol']:g} cost {info['check_nfe']} NFE and differs by "
                         f"{info['check_rmse']:.1e} RMSE: if that is far below the sampler errors, "
                         f"--reference-rtol {info['check_rtol']:g} is enough")
            info["hint"] = hint
            log(f"note: {hint}")
        _atomic_write(info_path, json.dumps(info, indent=1))
        return info

    info = distributed.on_main(finish_main, what="the reference's record")
    for path in block_files:  # the whole reference is on disk (rank 0's): the blocks are redundant
        if os.path.exists(path):
            os.unlink(path)
    return (ref if distributed.current().is_main else None), info


#: keys (and types) every comparison record has; a record on disk without them is recomputed on --resume
RECORD_KEYS = {"solver": str, "kind": (str, type(None)), "nfe_budget": int, "steps": int, "nfe": int,
               "wall_s": float, "spacing": str, "samples": int, "seed": int, "t_end": float, "model": str,
               "config_key": str, "finite": bool}


def _read_json(path: str, kind: type, log) -> dict | None:
    """The JSON object at ``path``, or None (after saying why) when it is unreadable or not a ``kind``."""
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError) as e:
        log(f"sdekit: {path} is unreadable ({type(e).__name__}: {e}); recomputing it")
        return None
    if not isinstance(value, kind):
        log(f"sdekit: {path} holds a {type(value).__name__}, not a JSON object; recomputing it")
        return None
    return value


def _valid_record(rec: dict, solver: str, nfe: int, key: str) -> str | None:
    """Why a record read back on --resume cannot be used (None when it can)."""
    for name, typ in RECORD_KEYS.items():
        if name not in rec:
            return f"it has no {name!r}"
        if not isinstance(rec[name], typ) or (typ is int and isinstance(rec[name], bool)):
            return f"its {name!r} is a {type(rec[name]).__name__}"
    if (rec["solver"], rec["nfe_budget"], rec["config_key"]) != (solver, nfe, key):
        return "it belongs to another configuration"
    return None


def steps_for_budget(solver_name: str, nfe: int) -> int:
    """The whole steps of ``solver_name`` that an NFE budget buys (at least one)."""
    return max(1, nfe // get_solver(solver_name).evals_per_step)


def check_grids(grids: dict, t_start: float, t_end: float) -> None:
    """``cfg.grids`` must span the comparison's interval (a ValueError names the grid)."""
    for key, t in grids.items():
        if abs(t[0] - t_start) > 1e-9 or abs(t[-1] - t_end) > 1e-9:
            raise ValueError(f"the grid for {key} runs from t = {t[0]:g} to {t[-1]:g}; this comparison runs from "
                             f"{t_start:g} to {t_end:g}")


def min_nfe(solver_name: str) -> int:
    """The fewest model evaluations one run of ``solver_name`` takes (one step)."""
    return get_solver(solver_name).evals_per_step


def check_out_dir(out_dir: str) -> None:
    """Create ``out_dir`` if needed and make sure files can be written there; a ValueError names the folder."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out {out_dir} is a file, not a folder")
    try:
        os.makedirs(out_dir, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out_dir, prefix=".tmp-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"--out {out_dir} cannot be written to ({e.strerror or type(e).__name__})") from None


def _reference_model(model):
    """The model the float64 reference solve uses: a float64 copy when its network is a lower-precision
    ``nn.Module`` (so the reference is not limited by float32 evaluations), else the model itself."""
    to = getattr(model, "to", None)
    net = getattr(model, "net", None)
    if callable(to) and isinstance(net, torch.nn.Module):
        p = next(net.parameters(), None)
        if p is not None and p.is_floating_point() and p.dtype != torch.float64:
            return model.to(dtype=torch.float64, device="cpu")
    return model


def run_comparison(model, cfg: ComparisonConfig, out_dir: str, *, resume: bool = False, progress: bool = True,
                   log: Callable[[str], None] = print, data: torch.Tensor | None = None) -> list[dict]:
    """Run every (solver, NFE) configuration of ``cfg`` on ``model``; returns the records (also on disk).

    ``data``: held-out data for the distribution distance when the model is not analytic (the first
    ``min(cfg.samples, len(data))`` points are used, against as many samples). Runs without gradients: a
    network whose parameters require gradients (the PyTorch default) is fine. A budget smaller than a solver's
    one step is skipped (and listed in ``results.json``), never exceeded.

    In a process group ([`sdekit.distributed.init`][sdekit.distributed.init]) every rank must call it with the
    same arguments (checked at the start: a ValueError names what differs); the samples are split in shards of
    whole `REFERENCE_BLOCK` blocks, rank 0 alone reads and writes ``out_dir`` and logs, and every rank returns
    the same records, equal to those of a single-process run.
    """
    with torch.no_grad():
        return _run_comparison(model, cfg, out_dir, resume, progress, log, data)


def _quiet(message: str) -> None:
    """The log of ranks other than 0 (rank 0 speaks for the run)."""


def _run_comparison(model, cfg, out_dir, resume, progress, log, data) -> list[dict]:
    dtype = {"float64": torch.float64, "float32": torch.float32}[cfg.dtype]
    process = model.process
    shape = getattr(model, "sample_shape", None)
    if shape is None:
        raise ValueError("the model needs a sample_shape (the shape of one sample) for comparisons")
    main = distributed.current().is_main
    if not main:
        log, progress = _quiet, False
    distributed.on_main(lambda: check_out_dir(out_dir), what="rank 0's check of the output folder")
    if not cfg.model_fingerprint:
        cfg.model_fingerprint = model_fingerprint(model, tuple(shape))
    distributed.check_same_config({"config": vars(cfg), "resume": resume})  # the model, via its fingerprint
    part = distributed.shard(cfg.samples, block=REFERENCE_BLOCK)
    first = part.start
    x_T = process.prior_sample((len(part), *shape), generator=torch.Generator().manual_seed(cfg.seed),
                               dtype=torch.float64, sample_offset=first)
    t_start = float(process.t_max)
    t_end = float(process.t_min if cfg.t_end is None else cfg.t_end)
    check_grids(cfg.grids, t_start, t_end)  # before the reference solve
    rec_dir = os.path.join(out_dir, "records")

    def clean_records():
        for folder in (rec_dir, os.path.join(out_dir, "blocks")):
            if os.path.isdir(folder):  # temporary files of a killed run are never records: remove them
                for name in os.listdir(folder):
                    if name.startswith(".tmp-"):
                        os.unlink(os.path.join(folder, name))

    distributed.on_main(clean_records, what="rank 0's removal of temporary files")
    need_ref = any(_kind(s) == "deterministic" for s in cfg.solvers)
    ref, ref_info = None, None
    if need_ref:
        ref, ref_info = _reference(_reference_model(model), cfg, x_T, t_start, t_end, out_dir, resume, log, progress,
                                   first=first)
    mixture = getattr(model, "mixture", None)
    exact, floor, n_dist = None, None, cfg.samples
    if mixture is None and data is not None:
        data = torch.as_tensor(data).double().cpu()
        if tuple(data.shape[1:]) != tuple(shape):
            raise ValueError(f"data must hold samples of shape {tuple(shape)}, got {tuple(data.shape)}")
    if mixture is not None and main:  # the distances are computed by rank 0 alone
        marginal = mixture.marginal(process, t_end)
        exact = marginal.sample(cfg.samples, generator=torch.Generator().manual_seed(cfg.seed + 10_000),
                                dtype=torch.float64)
        other = marginal.sample(cfg.samples, generator=torch.Generator().manual_seed(cfg.seed + 20_000),
                                dtype=torch.float64)
        floor = sliced_wasserstein2(other, exact, generator=torch.Generator().manual_seed(cfg.seed + 2))
        distance_to = "exact samples of the data noised to t_end"
    elif mixture is None and data is not None and main:
        n_dist = min(cfg.samples, data.shape[0])
        exact = data[:n_dist]
        if data.shape[0] >= 2 * n_dist:
            floor = sliced_wasserstein2(data[n_dist:2 * n_dist], exact,
                                        generator=torch.Generator().manual_seed(cfg.seed + 2))
        distance_to = f"{n_dist} held-out data points"
    jobs, skipped = [], []
    for s_name in dict.fromkeys(cfg.solvers):
        for n in sorted(set(cfg.nfe)):
            if n < min_nfe(s_name):
                skipped.append({"solver": s_name, "nfe_budget": n,
                                "reason": f"one step of {s_name} takes {min_nfe(s_name)} NFE"})
                log(f"skipped: {s_name} at a budget of {n} NFE (one step takes {min_nfe(s_name)})")
            else:
                jobs.append((s_name, n))

    def finished():
        """The records rank 0 finds on disk for --resume (and why the others cannot be used)."""
        found = {}
        for solver_name, nfe in jobs:
            path = _record_path(out_dir, cfg, solver_name, nfe)
            if resume and os.path.exists(path):
                rec = _read_json(path, dict, log)
                why = None if rec is None else _valid_record(rec, solver_name, nfe, cfg.key())
                if rec is not None and why is None:
                    found[(solver_name, nfe)] = rec
                elif why is not None:
                    log(f"sdekit: the record {path} cannot be used ({why}); recomputing it")
        return found

    done = distributed.on_main(finished, what="rank 0's read of the finished records")
    records = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="compare", unit="config", dynamic_ncols=True)
    world = distributed.current().world_size
    for solver_name, nfe in jobs:
        path = _record_path(out_dir, cfg, solver_name, nfe)
        if bar is not None:
            bar.set_postfix_str(f"{solver_name} @ {nfe} NFE")
        if (solver_name, nfe) in done:
            records.append(done[(solver_name, nfe)])
            if bar is not None:
                bar.update(1)
            continue
        steps = steps_for_budget(solver_name, nfe)
        x = x_T.to(device=cfg.device, dtype=dtype)
        t0 = time.perf_counter()
        grid_t = cfg.grids.get(f"{solver_name}:{steps}")
        # per-sample noise from the samples' global indices: the same for every split of the samples
        gen = torch.Generator(device=cfg.device).manual_seed(cfg.seed + 1)
        if grid_t is not None:
            from .grid_opt import _model_grid

            grid = _model_grid(model, torch.tensor(grid_t, dtype=torch.float64))
            sol = sample(model, x, solver_name, grid=grid, generator=gen, sample_offset=first)
        else:
            sol = sample(model, x, solver_name, steps=steps, spacing=cfg.spacing, t_end=t_end, generator=gen,
                         sample_offset=first)
        out = distributed.gather(sol.x.double().cpu(), what=f"the samples of {solver_name} @ {nfe} NFE")
        wall = time.perf_counter() - t0
        if not main:
            continue
        rec = {"solver": solver_name, "kind": _kind(solver_name), "nfe_budget": nfe, "steps": steps,
               "nfe": int(sol.stats["nfe"]), "wall_s": wall,
               "spacing": "grid file" if grid_t is not None else cfg.spacing, "samples": cfg.samples,
               "seed": cfg.seed, "t_end": t_end, "model": cfg.model_name, "config_key": cfg.key(),
               "finite": bool(torch.isfinite(out).all()), "processes": world}
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

    def summarise():
        distance = None
        if exact is not None:
            distance = {"to": distance_to, "samples": n_dist, "floor": None if floor is None else floor[0],
                        "floor_stderr": None if floor is None else floor[1]}
        summary = {"config": vars(cfg), "reference": ref_info, "distance": distance, "records": records,
                   "skipped": skipped}
        _atomic_write(os.path.join(out_dir, "results.json"), json.dumps(summary, indent=1))
        return records

    return distributed.on_main(summarise, what="results.json")


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
