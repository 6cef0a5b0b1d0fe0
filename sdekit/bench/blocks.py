"""Work on fixed blocks of samples, each block's result a file of its own: what makes a long run resumable after
any process of it is killed, and its results independent of the number of processes.

A run over ``n`` samples is cut into blocks of ``block`` consecutive global indices (the last may be shorter).
The blocks do not depend on the number of processes: under ``torchrun`` each process takes a contiguous run of
whole blocks ([`sdekit.distributed.shard`][sdekit.distributed.shard]), computes each one on its own and writes
it, atomically, as ``NAME-START-STOP.npz`` in the run's folder as soon as it is done. A rerun with ``resume``
reads the blocks it finds (whoever wrote them, on however many processes) and computes only the others, so a
process killed mid-run loses at most the block it was computing, and nothing is computed twice. Adaptive solves
(the likelihood's ODE, the comparison's reference) choose their steps from the samples solved together, which
is why the block, not the process, is the unit: a block gives the same numbers wherever it is computed.

A block file holds numpy arrays and a JSON object (``meta``: NFE, wall time, the key of the settings it was
computed for); it is read back with ``allow_pickle=False`` and checked (readable, the expected key and sample
range, the arrays' lengths, finite values) before it is used; a file that fails a check is recomputed, and the
reason is logged.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import distributed

__all__ = ["Block", "block_ranges", "block_path", "save_block", "load_block", "run_blocks"]


@dataclass
class Block:
    """One block's result: its global sample range ``[start, stop)``, its arrays (samples first) and ``meta``."""

    start: int
    stop: int
    arrays: dict
    meta: dict
    reused: bool = False  # read back from its file (``resume``) rather than computed by this run


def block_ranges(indices: range, block: int) -> list[range]:
    """The blocks of ``block`` global indices that make up ``indices`` (whose start is a multiple of ``block``;
    the last block may be shorter)."""
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive int, got {block!r}")
    if indices.start % block:
        raise ValueError(f"the range {indices} does not start on a block boundary (a multiple of {block})")
    return [range(a, min(a + block, indices.stop)) for a in range(indices.start, indices.stop, block)]


def block_path(folder: str, name: str, start: int, stop: int) -> str:
    """The file of block ``[start, stop)`` of the work ``name`` (which should include the settings' key)."""
    return os.path.join(folder, f"{name}-{start:08d}-{stop:08d}.npz")


def save_block(path: str, arrays: dict, meta: dict) -> None:
    """Write one block atomically (a temporary file in the same folder, then a rename): a killed process
    leaves either the whole block or no block, never half of one."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{f"a_{k}": np.asarray(v) for k, v in arrays.items()}, meta=np.array(json.dumps(meta)))
            f.flush()
            os.fsync(f.fileno())
        old = os.umask(0)
        os.umask(old)
        os.chmod(tmp, 0o666 & ~old)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_block(path: str, *, key: str, start: int, stop: int, log: Callable[[str], None]) -> Block | None:
    """The block at ``path``, or None (after logging why) when it is unreadable, was computed for other settings
    (``meta["key"]`` differs from ``key``) or another range, or holds arrays of another length or NaN/Inf."""
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            arrays = {k[2:]: f[k] for k in f.files if k.startswith("a_")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        log(f"sdekit: the block {path} is unreadable ({type(e).__name__}); recomputing it")
        return None
    why = None
    if not isinstance(meta, dict) or meta.get("key") != key:
        why = "it was computed for other settings"
    elif (meta.get("start"), meta.get("stop")) != (start, stop):
        why = f"it holds samples {meta.get('start')}..{meta.get('stop')}, not {start}..{stop}"
    else:
        for k, a in arrays.items():
            if why is not None:
                break
            if a.shape[:1] != (stop - start,):
                why = f"its array {k!r} has {a.shape[0] if a.ndim else 'no'} rows, not {stop - start}"
            elif a.dtype.kind == "f" and not np.isfinite(a).all():
                why = f"its array {k!r} holds NaN/Inf"
    if why is not None:
        log(f"sdekit: the block {path} cannot be used ({why}); recomputing it")
        return None
    return Block(start, stop, arrays, meta, reused=True)


def run_blocks(n: int, block: int, compute: Callable[[int, int], tuple[dict, dict]], *, folder: str | None,
               name: str, key: str, resume: bool, log: Callable[[str], None],
               on_block: Callable[[Block], None] | None = None, what: str = "the blocks") -> list[Block] | None:
    """Compute (or, with ``resume``, read back) every block of this process's shard of ``[0, n)`` and gather
    all of them, in the order of the samples, on rank 0.

    Args:
        n: the number of samples.
        block: the block size (the unit of the split between processes, of the files and of the computation).
        compute: ``compute(start, stop) -> (arrays, meta)`` for the samples ``start..stop`` (global indices);
            ``arrays`` hold one row per sample; ``meta`` is JSON-able.
        folder: where the block files go (None: nothing is written or read).
        name: the files' prefix (``block_path``).
        key: the settings the blocks are computed for; a file for other settings is never reused.
        resume: read blocks back from their files instead of computing them.
        log: where the reasons for recomputing a file go.
        on_block: called after each block of this process (a progress bar, say).
        what: the name of the gather, for the message of a dead process.

    Returns:
        every `Block` in sample order on rank 0 (in a single process: this process's), None on the others.

    Temporary files that a killed process left in ``folder`` are removed first (by rank 0, before any process
    computes). On several machines without a shared folder, each machine's processes write and reuse the blocks
    in their own ``folder``.
    """
    part = distributed.shard(n, block=block)

    def clean():  # a killed process may have left a temporary file; no process writes before this returns
        if folder is not None and os.path.isdir(folder):
            for entry in os.listdir(folder):
                if entry.startswith(".tmp-"):
                    os.unlink(os.path.join(folder, entry))

    distributed.on_main(clean, what=f"rank 0's removal of temporary files before {what}")
    mine = []
    for r in block_ranges(part, block):
        path = block_path(folder, name, r.start, r.stop) if folder is not None else None
        got = None
        if resume and path is not None and os.path.exists(path):
            got = load_block(path, key=key, start=r.start, stop=r.stop, log=log)
        if got is None:
            arrays, meta = compute(r.start, r.stop)
            meta = {**meta, "key": key, "start": r.start, "stop": r.stop}
            arrays = {k: np.asarray(v) for k, v in arrays.items()}
            if path is not None:
                save_block(path, arrays, meta)
            got = Block(r.start, r.stop, arrays, meta)
        mine.append(got)
        if on_block is not None:
            on_block(got)
    parts = distributed.gather_objects(mine, what=what)
    return None if parts is None else [b for p in parts for b in p]
