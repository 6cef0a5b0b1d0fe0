"""Scale-out on ``torch.distributed``: rank discovery, sharding of sample indices, gathers to rank 0, a check
that every process got the same arguments.

Launch any script (or ``sdekit compare``) with ``torchrun``; it sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``, and `init` joins the process group they describe (gloo for CPU tensors,
NCCL for CUDA ones). Without them, `init` does nothing and every function here is the single-process identity:
`shard` is the whole range, `gather` returns its argument, `check_same_config` passes. The collectives are
``torch.distributed``'s own (``gather``, ``gather_object``, ``broadcast_object_list``, ``all_gather_object``):
no process pool or socket of sdekit's.

Results do not depend on the number of processes when every sample's randomness comes from its *global* index
(``sample_offset`` of [`sdekit.sample`][sdekit.sampling.sample] and of ``process.prior_sample``; see
`sdekit.brownian`), each process works on a contiguous `shard` of the indices, and rank 0 computes every
statistic from the gathered samples, in the order of a single-process run. A collective is only ever called
between solves, never inside a step loop, so processes whose adaptive solves take different numbers of steps
never wait on each other mid-solve.

When a process dies or hangs, the others fail at their next collective (gloo notices a closed connection at
once, a hung process after the timeout of `init`) with a `RankFailure` that names it: before each collective
every rank leaves a marker (the collective's number and name) in the process group's store, and a rank that
sees a collective fail leaves an answer there and waits a few seconds for the others' answers, so the message
says which ranks did not answer and which collective each entered last.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["RankInfo", "DEFAULT_TIMEOUT_S", "RankFailure", "environment", "init", "current", "shutdown", "shard",
           "shard_ranges", "gather", "gather_objects", "broadcast_object", "on_main", "barrier", "config_hash",
           "config_differences", "check_same_config"]

#: how long a collective waits for the other processes before it fails (the process group's timeout): long
#: enough for one process's share of a reference solve to finish while the others wait at the gather after it
DEFAULT_TIMEOUT_S = 1800.0

_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_OWNED = False  # whether `init` created the process group (then `shutdown` destroys it)
_SEQ = 0  # how many of sdekit's collectives this process has entered (its marker in the store says so)
_MARK = "sdekit/collective/"  # the store key prefix of every rank's last collective
_ANSWER = "sdekit/answer/"  # the key prefix of the answers of the ranks that saw a collective fail


class RankFailure(RuntimeError):
    """A collective failed because another process died, stopped responding or timed out. The message names
    the ranks that did not reach the collective (from the markers every rank leaves in the process group's
    store before each of sdekit's collectives) and what they did last."""


@dataclass(frozen=True)
class RankInfo:
    """Where this process stands: its ``rank`` in ``[0, world_size)``, its ``local_rank`` on its machine (the
    CUDA device it uses) and the ``backend`` of the process group (None when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes results, plots and progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether a process group is in use (False for a plain single-process run)."""
        return self.backend is not None


def _env_int(env: Mapping[str, str], name: str) -> int:
    text = env.get(name)
    try:
        return int(text)
    except (TypeError, ValueError):
        raise ValueError(f"the environment variable {name}={text!r} is not an integer (torchrun sets it)") from None


def environment(env: Mapping[str, str] | None = None) -> RankInfo | None:
    """The rank and world size that ``torchrun`` (or ``srun`` with the same variables) put in the environment,
    or None when ``WORLD_SIZE`` is not set (a plain single-process run).

    Args:
        env: the variables to read (default ``os.environ``).

    Returns:
        a `RankInfo` whose ``backend`` is None (nothing is initialised here), or None.

    Raises:
        ValueError: ``WORLD_SIZE`` is set but ``RANK`` is not, a value is not an integer, the rank is outside
            ``[0, WORLD_SIZE)``, or ``MASTER_ADDR``/``MASTER_PORT`` are missing for more than one process.
    """
    env = os.environ if env is None else env
    if "WORLD_SIZE" not in env:
        return None
    world = _env_int(env, "WORLD_SIZE")
    if "RANK" not in env:
        raise ValueError("WORLD_SIZE is set but RANK is not: launch with torchrun (or set RANK, LOCAL_RANK, "
                         "MASTER_ADDR and MASTER_PORT as torchrun does)")
    rank = _env_int(env, "RANK")
    local_rank = _env_int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world} from the environment: need 0 <= RANK < WORLD_SIZE")
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in env]
    if world > 1 and missing:
        raise ValueError(f"WORLD_SIZE={world} but {' and '.join(missing)} are not set: launch with torchrun")
    return RankInfo(rank=rank, world_size=world, local_rank=local_rank)


def current() -> RankInfo:
    """This process's `RankInfo` from the initialised process group (whoever initialised it), or the
    single-process one (rank 0 of 1, ``backend`` None)."""
    if not (dist.is_available() and dist.is_initialized()):
        return RankInfo()
    env = environment()
    local = env.local_rank if env is not None else 0
    return RankInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local,
                    backend=str(dist.get_backend()))


def init(device: str | torch.device = "cpu", *, backend: str | None = None,
         timeout_s: float = DEFAULT_TIMEOUT_S) -> RankInfo:
    """Join the process group described by the environment (``torchrun``'s variables); a no-op that returns the
    single-process `RankInfo` when they are absent or ``WORLD_SIZE`` is 1, and the current one when a group
    is already initialised.

    Args:
        device: where the work's tensors live: ``"cpu"`` selects gloo; a CUDA device selects NCCL and makes
            ``cuda:LOCAL_RANK`` the current device (so ``"cuda"`` means one GPU per process).
        backend: a ``torch.distributed`` backend name instead of that choice.
        timeout_s: how long a collective waits for the other processes before failing (`DEFAULT_TIMEOUT_S`).

    Returns:
        this process's `RankInfo`.

    Raises:
        ValueError: a bad environment (see `environment`), a non-positive timeout, or NCCL without CUDA.
    """
    global _OWNED
    if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"timeout_s must be a finite number of seconds > 0, got {timeout_s!r}")
    if dist.is_available() and dist.is_initialized():
        return current()
    info = environment()
    if info is None or info.world_size == 1:
        return RankInfo(local_rank=info.local_rank if info is not None else 0)
    if not dist.is_available():
        raise ValueError("this torch build has no torch.distributed")
    dev = torch.device(device)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ValueError("the NCCL backend needs CUDA; use --device cpu (gloo)")
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=float(timeout_s)), rank=info.rank,
                            world_size=info.world_size)
    _OWNED = True
    return current()


def shutdown() -> None:
    """Destroy the process group if `init` created it (a group initialised by the caller is left alone)."""
    global _OWNED, _SEQ
    if _OWNED and dist.is_initialized():
        dist.destroy_process_group()
    _OWNED = False
    _SEQ = 0


def shard_ranges(n: int, world_size: int, *, block: int = 1) -> list[range]:
    """The contiguous ranges of global indices ``[0, n)`` of every rank, in rank order: whole blocks of
    ``block`` indices (the last block may be shorter), as even as possible (the first ranks get one block more).

    Args:
        n: the number of indices.
        world_size: the number of processes.
        block: the unit of the split (a rank's range starts at a multiple of it); e.g. the blocks that a
            computation must see whole to give the same result for any number of processes.

    Returns:
        ``world_size`` non-empty ranges that cover ``[0, n)`` in order.

    Raises:
        ValueError: a count that is not a positive int, or more processes than blocks (a rank would get nothing).
    """
    for name, v in (("n", n), ("world_size", world_size), ("block", block)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    n_blocks = -(-n // block)
    if world_size > n_blocks:
        unit = f"{n_blocks} block(s) of {block}" if block > 1 else f"{n} sample(s)"
        raise ValueError(f"{world_size} processes for {unit}: every process needs at least one; use at most "
                         f"{n_blocks} processes or more samples")
    base, extra = divmod(n_blocks, world_size)
    out, start = [], 0
    for r in range(world_size):
        stop = start + base + (1 if r < extra else 0)
        out.append(range(start * block, min(stop * block, n)))
        start = stop
    return out


def shard(n: int, *, block: int = 1, rank: int | None = None, world_size: int | None = None) -> range:
    """This process's contiguous range of the global indices ``[0, n)`` (see `shard_ranges`); the whole range
    when not distributed.

    Args:
        n: the number of indices.
        block: the unit of the split (see `shard_ranges`).
        rank: the rank (default: this process's).
        world_size: the number of processes (default: the process group's).

    Returns:
        a ``range``.
    """
    info = current()
    rank = info.rank if rank is None else rank
    world_size = info.world_size if world_size is None else world_size
    ranges = shard_ranges(n, world_size, block=block)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an int in [0, {world_size}), got {rank!r}")
    return ranges[rank]


def _store():
    """The default process group's key-value store (rank 0's or torchrun's TCPStore), or None."""
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - a private accessor; without it the failure message names no rank
        return None


def _enter(what: str) -> None:
    """Leave this rank's marker (the number and name of the collective it is entering) in the store."""
    global _SEQ
    _SEQ += 1
    store = _store()
    if store is not None:
        try:
            store.set(f"{_MARK}{dist.get_rank()}", f"{_SEQ}|{what}")
        except Exception:  # noqa: BLE001 - the collective itself will say what is wrong
            pass


def _laggards(answer_s: float = 5.0) -> tuple[list[str], bool]:
    """``(lines, known)`` after a failed collective: the other ranks that did not answer (each rank that sees
    the failure leaves an answer in the store and waits up to ``answer_s`` seconds for the others': a dead or
    hung rank leaves none) or that had not entered this collective, each with the last collective it entered;
    ``known`` is False when the store could not be read (its host, rank 0 or torchrun's agent, is gone)."""
    import time

    store = _store()
    if store is None:
        return [], False
    me, world = dist.get_rank(), dist.get_world_size()
    try:
        store.set_timeout(datetime.timedelta(seconds=answer_s))
        store.set(f"{_ANSWER}{me}", "alive")
        others = [r for r in range(world) if r != me]
        silent, deadline = set(others), time.monotonic() + answer_s
        while silent and time.monotonic() < deadline:
            silent -= {r for r in silent if store.check([f"{_ANSWER}{r}"])}
            if silent:
                time.sleep(0.05)
        lines = []
        for r in others:
            key = f"{_MARK}{r}"
            last = None
            if store.check([key]):
                seq, what = store.get(key).decode().split("|", 1)
                last = (int(seq), what)
            where = ("it entered none of sdekit's collectives" if last is None else
                     f"it last entered collective {last[0]} ({last[1]})")
            if r in silent:
                lines.append(f"rank {r} did not answer within {answer_s:g} s: it died or hangs ({where})")
            elif last is None or last[0] < _SEQ:
                lines.append(f"rank {r} had not entered it ({where})")
    except Exception:  # noqa: BLE001 - the store's host (rank 0, or torchrun's agent) is gone
        return [], False
    return lines, True


def _collective(what: str, fn: Callable[[], Any]) -> Any:
    """Run one collective ``fn`` named ``what``, after leaving this rank's marker; a failure of the process
    group (a dead peer, a timeout) becomes a `RankFailure` that names the ranks which did not arrive."""
    _enter(what)
    try:
        return fn()
    except RuntimeError as e:  # DistBackendError and gloo's errors are RuntimeErrors
        if isinstance(e, RankFailure):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        lines, known = _laggards()
        me = dist.get_rank()
        if lines:
            cause = "; ".join(lines) + " (its own log says more)"
        elif known:
            cause = "every other rank is alive and had entered it too: the network failed, or a collective timed out"
        else:
            cause = ("the process group's store is unreachable: rank 0 (or the torchrun agent that hosts the store) "
                     "died or hangs")
        raise RankFailure(f"rank {me}: collective {_SEQ} ({what}) failed: {cause}. Finished work is on disk: "
                          f"rerun the same command with --resume. (torch.distributed: {first})") from e


def barrier(what: str = "barrier") -> None:
    """Wait for every rank (a no-op when not distributed); a dead or hung rank gives a `RankFailure` naming it.

    Args:
        what: the name of this point in the run, for the failure message.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    _collective(what, lambda: dist.barrier())


def _comm_device() -> torch.device:
    """The device of tensors sent through the default group: CUDA for NCCL, the CPU for gloo."""
    if str(dist.get_backend()) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather(tensor: torch.Tensor, *, dst: int = 0, what: str = "gather") -> torch.Tensor | None:
    """Every rank's ``tensor`` concatenated along dim 0 in rank order, on rank ``dst`` (None on the others); the
    tensor itself when not distributed. The ranks' tensors may have different lengths (dim 0) but must agree in
    the other dimensions and the dtype. The result is on ``tensor``'s device.

    Args:
        tensor: this rank's part (batch first).
        dst: the rank that receives the whole.
        what: what is gathered, named in the message of a `RankFailure`.

    Returns:
        the concatenation on ``dst``, None elsewhere.

    Raises:
        ValueError: the ranks' tensors differ in trailing shape or dtype (on every rank).
        RankFailure: another rank died or stopped responding (named in the message).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    meta = (int(tensor.shape[0]) if tensor.ndim else -1, tuple(tensor.shape[1:]), str(tensor.dtype))
    metas: list = [None] * dist.get_world_size()
    _collective(what, lambda: dist.all_gather_object(metas, meta))
    if meta[0] < 0 or any(m[1:] != meta[1:] for m in metas):
        raise ValueError(f"gather: the ranks' tensors must be batch first with the same trailing shape and dtype, "
                         f"got (rows, shape[1:], dtype) = {metas}")
    rows = [m[0] for m in metas]
    dev = _comm_device()
    padded = torch.zeros((max(rows), *tensor.shape[1:]), dtype=tensor.dtype, device=dev)
    padded[:tensor.shape[0]] = tensor.to(dev)
    if dist.get_rank() == dst:
        parts = [torch.empty_like(padded) for _ in rows]
        _collective(what, lambda: dist.gather(padded, parts, dst=dst))
        return torch.cat([p[:r] for p, r in zip(parts, rows)]).to(tensor.device)
    _collective(what, lambda: dist.gather(padded, None, dst=dst))
    return None


def gather_objects(obj: Any, *, dst: int = 0, what: str = "gather of objects") -> list | None:
    """Every rank's picklable ``obj`` in rank order, on rank ``dst`` (None on the others); ``[obj]`` when not
    distributed.

    Args:
        obj: this rank's object (records, statistics).
        dst: the rank that receives the list.
        what: what is gathered, named in the message of a `RankFailure`.

    Returns:
        the list on ``dst``, None elsewhere.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    _collective(what, lambda: dist.gather_object(obj, out, dst=dst))
    return out


def broadcast_object(obj: Any = None, *, src: int = 0, what: str = "broadcast") -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank (the others' argument is ignored); ``obj`` itself when not
    distributed.

    Args:
        obj: the object to send (significant on ``src`` only).
        src: the sending rank.
        what: what is sent, named in the message of a `RankFailure`.

    Returns:
        ``src``'s object.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    _collective(what, lambda: dist.broadcast_object_list(box, src=src))
    return box[0]


def on_main(fn: Callable[[], Any], *, what: str | None = None) -> Any:
    """Run ``fn()`` on rank 0 only and give its (picklable) result to every rank. When it raises a ValueError,
    TypeError or OSError there, the other ranks raise a ValueError with its message (instead of waiting at the
    next collective for a rank that left), and rank 0 re-raises it.

    Args:
        fn: what only rank 0 does (reading or writing files, say).
        what: its name in the message of a `RankFailure` (default: ``fn``'s name).

    Returns:
        ``fn()``'s result, on every rank.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return fn()
    error, result = None, None
    if dist.get_rank() == 0:
        try:
            result = fn()
        except (ValueError, TypeError, OSError) as e:
            error = e
    label = what or f"rank 0's {getattr(fn, '__name__', 'work')}"
    message, result = broadcast_object((None if error is None else f"{type(error).__name__}: {error}", result),
                                       what=label)
    if error is not None:
        raise error
    if message is not None:
        raise ValueError(f"rank 0 failed: {message}")
    return result


def config_hash(config: Any) -> str:
    """A SHA-256 of ``config`` as canonical JSON (sorted keys; values JSON cannot hold are written by
    ``repr``).

    Args:
        config: the arguments that determine a run's results (a dict, a dataclass's ``vars``...).

    Returns:
        the hex digest.
    """
    blob = json.dumps(config, sort_keys=True, default=repr, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _flatten(value: Any, prefix: str = "") -> dict:
    if isinstance(value, Mapping):
        out: dict = {}
        for k in value:
            out.update(_flatten(value[k], f"{prefix}{k}."))
        return out if out else {prefix[:-1]: "{}"}
    return {prefix[:-1] if prefix else "(value)": json.dumps(value, sort_keys=True, default=repr)}


def config_differences(configs: Sequence[Any], limit: int = 5) -> str | None:
    """None when every rank's config is the same (as `config_hash` sees them), else a one-line message naming
    the ranks that differ from rank 0 and, for nested dicts, the first ``limit`` differing entries with their
    values.

    Args:
        configs: the configs of ranks ``0, 1, ...`` (as gathered by `check_same_config`).
        limit: the most differing entries named.

    Returns:
        the message, or None.
    """
    hashes = [config_hash(c) for c in configs]
    bad = [r for r, h in enumerate(hashes) if h != hashes[0]]
    if not bad:
        return None
    ref = _flatten(configs[0])
    details = []
    for r in bad:
        mine = _flatten(configs[r])
        for key in sorted(set(ref) | set(mine)):
            if ref.get(key) != mine.get(key):
                details.append(f"{key}: rank 0 has {ref.get(key, '(nothing)')}, rank {r} has "
                               f"{mine.get(key, '(nothing)')}")
    more = f" (and {len(details) - limit} more)" if len(details) > limit else ""
    ranks = ", ".join(map(str, bad))
    return (f"the processes got different arguments: rank(s) {ranks} differ from rank 0 ("
            f"{'; '.join(details[:limit])}{more}); launch every process with the same command line, model and "
            "files")


def check_same_config(config: Any) -> str:
    """Check at the start of a distributed run that every rank got the same ``config``: one all-gather of its
    `config_hash`; only when the hashes differ are the configs themselves gathered, to say what differs.
    Passes at once when not distributed.

    Args:
        config: JSON-able arguments that determine the results (unknown types are compared by ``repr``).

    Returns:
        the hash.

    Raises:
        ValueError: on every rank, naming the ranks and entries that differ (`config_differences`).
    """
    h = config_hash(config)
    if not (dist.is_available() and dist.is_initialized()):
        return h
    hashes: list = [None] * dist.get_world_size()
    _collective("the check of the arguments", lambda: dist.all_gather_object(hashes, h))
    if all(x == hashes[0] for x in hashes):
        return h
    configs: list = [None] * dist.get_world_size()
    plain = json.loads(json.dumps(config, default=repr))
    _collective("the gather of differing arguments", lambda: dist.all_gather_object(configs, plain))
    raise ValueError(config_differences(configs) or "the processes got different arguments (config hashes differ)")
