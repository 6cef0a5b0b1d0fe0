"""Brownian paths: a fast consistent Brownian interval tree, an order-independent virtual tree, fresh noise.

Every path here answers ``bm(s, t) = W(t) - W(s)`` (and, with ``levy_area=True``, the space-time Lévy area
``H_{s,t} = (1/h) ∫_s^t (W_r - W_s - (r - s)/h · W_{s,t}) dr``, ``h = t - s``, ``H ~ N(0, h/12)`` independent
of ``W_{s,t}``) such that the increments of a coarse grid are the sums of those of any finer grid of the same
path, which is what strong-order measurements need.

`BrownianPath` (the default) is a binary tree of intervals split at the query points themselves, in the
spirit of torchsde's Brownian Interval (Kidger, Foster, Li & Lyons 2021, "Efficient and accurate gradients for
neural SDEs", §4): a query at a new point splits the one leaf interval that contains it with a single
Brownian-bridge draw, so a solve along any grid -- uniform, log-SNR, adaptive with rejected steps -- costs about
one normal draw per step. Above the query splits sits a balanced skeleton (dyadic midpoints, or the points of a
``grid`` hint) refined lazily to about `CELL_STEPS` query steps per cell, so the dependency chains stay
short and a revisit after a cache eviction costs a few draws, not a walk along the whole path.

`VirtualBrownianTree` is the query-order independent alternative (Gaines & Lyons 1997; diffrax's
``VirtualBrownianTree``): a dyadic tree resolved to ``max_depth`` levels with a final bridge draw at the query
point. It costs about ``max_depth`` draws per off-grid point and is kept for users who need the same path
whatever the order of their queries.

`FreshNoise` draws independent increments (no consistency, no memory): the cheapest source, used by
``solve`` and ``sample`` when no path is given.

**Per-sample noise** (``sample_offset``): `IndexedNoise`, and `BrownianPath` / `VirtualBrownianTree` created
with ``sample_offset=a``, draw row ``i`` of every tensor as a function of the seed and of the *global* sample
index ``a + i`` only, so that a batch of samples ``[a, b)`` gets exactly (bit for bit) rows ``a..b`` of the noise
of one batch over ``[0, n)``: the way to shard a batch over processes (`sdekit.distributed`) with results that
do not depend on the number of processes. The rows are drawn in blocks of `SAMPLE_BLOCK` global indices, one
generator seeded by a hash of (seed, draw, block) per block (`indexed_normal`), so a shard costs the normal
draws of the blocks it touches (at most two blocks more than its own rows).

The bridge split of an interval ``[a, b]`` (length ``h``) at ``m`` (``h1 = m - a``, ``h2 = b - m``), given its
increment ``W`` and area ``H``, is the Gaussian conditional law of the four independent variables
``W1, W2 ~ N(0, h_i)``, ``H1, H2 ~ N(0, h_i/12)`` under ``W = W1 + W2`` and
``h H = h1 H1 + h2 H2 + (h2/2) W1 - (h1/2) W2``:

- ``E[W1] = (h1/h) W + 6 h1 h2/h² H``, ``E[H1] = (h1/h)² H``;
- ``Var W1 = h1 h2 q / h³`` with ``q = h1² - h1 h2 + h2²``, ``Cov(W1, H1) = -h1³ h2 / (2 h³)``;
- ``Var(H1 | W1) = h1 h2³ / (12 h q)`` (the Schur complement simplifies to this product: no cancellation);
- the right child by symmetry (``6 h1 h2/h² H`` and the covariance change sign, ``h1 <-> h2``).

Without Lévy area this reduces to the Brownian bridge ``W1 = (h1/h) W + sqrt(h1 h2/h) X``. The shorter child is
always the one drawn and the longer one is the remainder, so a short increment is never the small difference of
two large numbers (an interval of 1e-9 of the span keeps full relative precision in float32).
"""

from __future__ import annotations

import math
import numbers
import struct
from collections import OrderedDict
from collections.abc import Sequence

import torch

_MASK64 = (1 << 64) - 1

#: the skeleton is refined until a cell is at most this many query steps long (the local chains of query
#: splits inside a cell are then at most about this deep)
CELL_STEPS = 32

#: global sample indices per block of per-sample noise (`indexed_normal`): every block ``k`` (indices
#: ``[k B, (k + 1) B)``) is one draw of ``(B, *event_shape)`` from a generator seeded by a hash of (seed, key, k).
#: Part of the definition of the noise: changing it changes every sharded result.
SAMPLE_BLOCK = 64


def _mix(*keys: int) -> int:
    """splitmix64-style hash of integer keys into a 63-bit seed."""
    z = 0x9E3779B97F4A7C15
    for k in keys:
        z = (z ^ (k & _MASK64)) & _MASK64
        z = (z + 0x9E3779B97F4A7C15) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        z = z ^ (z >> 31)
    return z & ((1 << 63) - 1)


def _bits(v: float) -> int:
    """The IEEE-754 bits of a float64, as an int (a hash key that tells every float apart)."""
    return struct.unpack("<q", struct.pack("<d", v))[0]


def check_sample_offset(sample_offset, name: str = "sample_offset") -> int | None:
    """``sample_offset`` as an int (None stays None); a ValueError unless it is an int >= 0."""
    if sample_offset is None:
        return None
    if isinstance(sample_offset, bool) or not isinstance(sample_offset, numbers.Integral) or sample_offset < 0:
        raise ValueError(f"{name} must be an int >= 0 (the global index of the batch's first sample), "
                         f"got {sample_offset!r}")
    return int(sample_offset)


def seed_from(generator: torch.Generator) -> int:
    """A 62-bit seed drawn from ``generator`` (one draw; a generator in the same state gives the same seed)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())


def indexed_draw(shape, seed: int, sample_offset: int, draw, *, key: int = 0, device=None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """A random tensor of ``shape`` (batch first) whose row ``i`` depends only on ``(seed, key,
    sample_offset + i)``: rows ``a..b`` of the draw of ``b`` rows at offset 0 are, bit for bit, the draw of
    ``b - a`` rows at offset ``a`` (same device and dtype).

    Global indices are grouped in blocks of `SAMPLE_BLOCK`; block ``k`` is one call ``draw(gen, block_shape)``
    (``block_shape = (SAMPLE_BLOCK, *shape[1:])``) on a generator seeded with a splitmix64 hash of
    ``(seed, key, k)``, and the rows of the batch are cut from the blocks it overlaps.

    Args:
        shape: the shape of the draw, batch first (``shape[0]`` rows, any event shape; 0 rows is allowed).
        seed: integer seed (e.g. `seed_from` of a generator seeded the same in every process).
        sample_offset: the global index of the first row.
        draw: ``draw(generator, block_shape) -> tensor``, e.g. ``lambda g, s: torch.rand(s, generator=g)``; it
            must use only ``generator`` for its randomness.
        key: tells independent draws of the same rows apart (a draw counter, say).
        device: device of the generator (the draw's device).
        generator: a ``torch.Generator`` on ``device`` to reseed (saves creating one per call).

    Returns:
        a tensor of ``shape``.
    """
    shape = tuple(int(v) for v in shape)
    if not shape:
        raise ValueError("a per-sample draw needs a batch-first shape (at least one dimension)")
    sample_offset = check_sample_offset(sample_offset)
    n, event = shape[0], shape[1:]
    device = torch.device(device) if device is not None else torch.device("cpu")
    gen = generator if generator is not None else torch.Generator(device=device)
    b = SAMPLE_BLOCK
    if n == 0:
        return draw(gen, (b, *event))[:0]
    first, last = sample_offset // b, (sample_offset + n - 1) // b
    parts = []
    for k in range(first, last + 1):
        gen.manual_seed(_mix(seed, 0x1DE7, key, k))
        block = draw(gen, (b, *event))
        lo, hi = max(sample_offset, k * b) - k * b, min(sample_offset + n, (k + 1) * b) - k * b
        parts.append(block[lo:hi])
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def indexed_normal(shape, seed: int, sample_offset: int, *, key: int = 0, std: float = 1.0,
                   dtype: torch.dtype = torch.float32, device=None, generator: torch.Generator | None = None
                   ) -> torch.Tensor:
    """Normal draws ``N(0, std²)`` of ``shape`` (batch first) whose row ``i`` depends only on
    ``(seed, key, sample_offset + i)`` (`indexed_draw` of ``torch.normal``): rows ``a..b`` of the draw of ``b``
    rows at offset 0 are, bit for bit, the draw of ``b - a`` rows at offset ``a``.

    Args:
        shape: the shape of the draw, batch first.
        seed: integer seed.
        sample_offset: the global index of the first row.
        key: tells independent draws of the same rows apart.
        std: standard deviation.
        dtype: floating dtype of the draw.
        device: device of the draw.
        generator: a ``torch.Generator`` on ``device`` to reseed.

    Returns:
        a tensor of ``shape``.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    return indexed_draw(shape, seed, sample_offset,
                        lambda g, s: torch.normal(0.0, std, s, generator=g, dtype=dtype, device=dev),
                        key=key, device=dev, generator=generator)


def _check_args(t0, t1, shape, seed, cache_size):
    t0, t1 = float(t0), float(t1)
    if not (math.isfinite(t0) and math.isfinite(t1) and t0 < t1):
        raise ValueError(f"a Brownian path needs finite t0 < t1, got t0={t0}, t1={t1}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if isinstance(cache_size, bool) or not isinstance(cache_size, numbers.Integral) or cache_size < 4:
        raise ValueError(f"cache_size must be an int >= 4, got {cache_size!r}")
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise TypeError(f"shape must be a tuple of ints, got {shape!r}") from None
    if any(s < 0 for s in shape):
        raise ValueError(f"shape must have non-negative sizes, got {shape}")
    return t0, t1, shape


def split_values(w, area, h1: float, h2: float, normal):
    """The children ``((W1, H1), (W2, H2))`` of an interval with increment ``w`` (and area ``area``, or None)
    split into lengths ``h1`` (left) and ``h2`` (right). ``normal(which, std)`` returns a fresh normal tensor
    (``which`` 1 for the increment, 2 for the area). See the module docstring for the law."""
    h = h1 + h2
    left_short = h1 <= h2
    hs = h1 if left_short else h2
    if area is None:
        short = normal(1, math.sqrt(h1 * h2 / h)).add_(w, alpha=hs / h)  # one pass besides the draw
        long = w - short
        return ((short, None), (long, None)) if left_short else ((long, None), (short, None))
    q = h1 * h1 - h1 * h2 + h2 * h2
    sd_w = math.sqrt(h1 * h2 * q / h**3)
    sign = 1.0 if left_short else -1.0
    # the short child's (W, H): mean, then the Cholesky factor of its conditional covariance
    cov = -sign * hs**3 * (h - hs) / (2 * h**3)
    sd_h = math.sqrt(hs * (h - hs) ** 3 / (12 * h * q))
    x1, x2 = normal(1, 1.0), normal(2, sd_h)
    w_s = (x1 * sd_w).add_(w, alpha=hs / h).add_(area, alpha=sign * 6 * h1 * h2 / h**2)
    a_s = x2.add_(x1, alpha=cov / sd_w).add_(area, alpha=(hs / h) ** 2)
    # the long child is the rest of the interval (the area divides by its length, >= h/2)
    if left_short:
        return (w_s, a_s), right_part(w, area, h, w_s, a_s, h1)
    w_l = w - w_s
    # h H = h1 H1 + h2 H2 + (h2/2) W1 - (h1/2) W2, solved for the left part's area
    a_l = (area * h - a_s * h2 - w_l * (h2 / 2) + w_s * (h1 / 2)) / h1
    return (w_l, a_l), (w_s, a_s)


def right_part(w, area, h: float, w_left, a_left, h_left: float):
    """``(W, H)`` of the right part ``[u, b]`` of an interval ``[a, b]`` of length ``h`` with increment ``w`` and
    area ``area`` (or None), given its left part ``[a, u]`` (length ``h_left``): the combination rule
    ``h H = h1 H1 + h2 H2 + (h2/2) W1 - (h1/2) W2`` solved for the right part."""
    h_right = h - h_left
    w_right = w - w_left
    if area is None:
        return w_right, None
    return w_right, (area * h - a_left * h_left - w_left * (h_right / 2) + w_right * (h_left / 2)) / h_right


def combine_areas(parts):
    """``(W, H)`` of adjacent intervals ``[(w, area, length), ...]`` (left to right):
    ``(h1 + h2) H = h1 H1 + h2 H2 + (h2/2) W1 - (h1/2) W2``."""
    w, area, h = parts[0]
    for w2, a2, h2 in parts[1:]:
        area = (area * h + a2 * h2 + w * (0.5 * h2) - w2 * (0.5 * h)) / (h + h2)
        w, h = w + w2, h + h2
    return w, area


class _Node:
    """An interval ``[a, b]`` of the tree. ``mid`` is set once it is split into ``left``/``right``."""

    __slots__ = ("a", "b", "parent", "left", "right", "mid", "seed", "skeleton", "lo", "hi", "depth")

    def __init__(self, a, b, parent, seed, skeleton, lo=-1, hi=-1, depth=0):
        self.a, self.b, self.parent, self.seed = a, b, parent, seed
        self.left = self.right = self.mid = None
        self.skeleton, self.lo, self.hi, self.depth = skeleton, lo, hi, depth


class _PathBase:
    """What both consistent paths share: argument checks, dtype/device/shape, the query entry points."""

    levy_area: bool

    def _init_common(self, t0, t1, shape, seed, dtype, device, levy_area, cache_size, sample_offset=None):
        self.t0, self.t1, self.shape = _check_args(t0, t1, shape, seed, cache_size)
        self.sample_offset = check_sample_offset(sample_offset)
        if self.sample_offset is not None and not self.shape:
            raise ValueError("sample_offset needs a batch-first shape (at least one dimension)")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.seed, self.dtype = int(seed), dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.levy_area = bool(levy_area)
        self.cache_size = int(cache_size)
        self._gen = torch.Generator(device=self.device)

    def _randn(self, seed: int, std: float = 1.0) -> torch.Tensor:
        if self.sample_offset is not None:  # per-sample rows: the path of each sample is its own
            return indexed_normal(self.shape, seed, self.sample_offset, std=std, dtype=self.dtype, device=self.device,
                                  generator=self._gen)
        self._gen.manual_seed(seed)
        return torch.normal(0.0, std, self.shape, generator=self._gen, dtype=self.dtype, device=self.device)

    def _zeros(self):
        return torch.zeros(self.shape, dtype=self.dtype, device=self.device)

    def extra(self, s, t, index: int) -> torch.Tensor:
        """A standard Gaussian in the path's shape, a function of ``(seed, s, t, index)`` only and independent
        of the path's increments: the additional noise a sampler draws inside the step ``s -> t`` (the
        Langevin corrector of predictor–corrector sampling), reproducible from the path's seed."""
        return self._randn(_mix(self.seed, 0xE47A, _bits(float(s)), _bits(float(t)), int(index)), 1.0)

    def _times(self, s, t):
        s, t = float(s), float(t)
        span = self.t1 - self.t0
        lo, hi = self.t0 - 1e-12 * span, self.t1 + 1e-12 * span
        for name, v in (("s", s), ("t", t)):
            if not (lo <= v <= hi):  # also catches NaN
                raise ValueError(f"Brownian path queried at {name}={v:g}, outside its interval "
                                 f"[{self.t0:g}, {self.t1:g}]")
        return min(max(s, self.t0), self.t1), min(max(t, self.t0), self.t1)

    def __call__(self, s, t) -> torch.Tensor:
        """``W(t) - W(s)`` (the negative of ``bm(t, s)`` when ``s > t``)."""
        s, t = self._times(s, t)
        if s == t:
            return self._zeros()
        if s > t:
            return -self._increment(t, s)
        return self._increment(s, t)

    def levy(self, s, t) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W_{s,t}, H_{s,t})``: increment and space-time Lévy area. For ``s > t`` (a step of a reverse-time
        solve) returns ``(-W_{t,s}, H_{t,s})``, the increment and area of the time-reversed motion."""
        if not self.levy_area:
            raise ValueError(f"this {type(self).__name__} has no Lévy area: create it with levy_area=True")
        s, t = self._times(s, t)
        if s == t:
            return self._zeros(), self._zeros()
        if s > t:
            w, area = self._increment_and_area(t, s)
            return -w, area
        return self._increment_and_area(s, t)


class BrownianPath(_PathBase):
    """A consistent Brownian path on ``[t0, t1]``, fast on any grid: ``bm(s, t) = W(t) - W(s)``.

    A binary tree of intervals split at the query points (see the module docstring): a query at a new point
    costs one bridge draw of ``shape`` (two with Lévy area), so a solve along a uniform, log-SNR or adaptive
    grid costs about one normal per step, with no tuning.

    Guarantees:
        - **Exact additivity**: every answer is a sum of the tree's leaf increments, so
          ``bm(s, u) == bm(s, t) + bm(t, u)`` up to floating-point rounding for any points and any order.
        - **Exact law at every scale**: increments over disjoint intervals are independent ``N(0, length)``;
          there is no resolution limit: two distinct query points (as floats) never give a zero increment.
        - **Reproducibility**: the value of every interval depends only on ``seed`` and on the points at which
          its ancestors were split, i.e. on the query points in the order they first appeared. The same
          sequence of queries gives bit-identical answers (also after cache evictions, on the same device and
          dtype). A different sequence gives a different, equally exact Brownian path; points of the skeleton
          (the ``grid`` hint, or dyadic points of ``[t0, t1]``) take the same value in any order. Use
          `VirtualBrownianTree` when the whole path must not depend on the order of queries.
        - **Memory**: at most ``cache_size`` increments (tensors of ``shape``) are held; evicted ones are
          recomputed exactly from their ancestors. The bookkeeping (two small nodes per split: end points and a
          seed, no tensors) grows with the number of *distinct* query points, about 350 bytes each (measured),
          never with repeated queries.

    Args:
        t0: start of the interval (``t0 < t1``); queries may come in either order (``bm(t, s) = -bm(s, t)``).
        t1: end of the interval.
        shape: shape of one increment (the state's shape, batch first, or the SDE's Brownian shape).
        seed: integer seed.
        dtype: dtype of the increments.
        device: device of the increments.
        levy_area: also provide space-time Lévy areas (`levy`); two draws per split.
        grid: optional time grid that will be queried (e.g. the solver's ``ts``): its points become the
            balanced skeleton, so the tree is shallow and their values do not depend on the query order.
        dt: optional typical step; cells of the dyadic skeleton are refined to at most ``CELL_STEPS · dt``
            around queried points. Without ``dt`` the length of each query plays this role, which is as fast.
        n_cells: alias of ``dt = (t1 - t0) / n_cells`` (the virtual tree's cell count), for old code.
        cache_size: number of increments kept (each a tensor of ``shape``; two with Lévy area).
        sample_offset: the global index of the first sample (``shape[0]`` is the batch): every draw is then made
            per sample (`indexed_normal`), so the path of the batch ``[a, b)`` created with ``sample_offset=a``
            is rows ``a..b`` of the path of ``[0, n)``, bit for bit, for the same queries. None (the default):
            one draw of ``shape`` per split, as before.
    """

    def __init__(self, t0: float, t1: float, shape: tuple[int, ...], *, seed: int = 0,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None, levy_area: bool = False,
                 grid: torch.Tensor | Sequence[float] | None = None, dt: float | None = None,
                 n_cells: int | None = None, cache_size: int = 64, sample_offset: int | None = None):
        self._init_common(t0, t1, shape, seed, dtype, device, levy_area, cache_size, sample_offset)
        if n_cells is not None:
            if isinstance(n_cells, bool) or not isinstance(n_cells, numbers.Integral) or n_cells < 1:
                raise ValueError(f"n_cells must be a positive int, got {n_cells!r}")
            if dt is not None:
                raise ValueError("give dt or n_cells, not both")
            dt = (self.t1 - self.t0) / int(n_cells)
        if dt is not None:
            dt = float(dt)
            if not (math.isfinite(dt) and dt > 0):
                raise ValueError(f"dt must be a finite number > 0, got {dt!r}")
        self.dt = dt
        self._grid = self._skeleton_points(grid)
        self._cache: OrderedDict = OrderedDict()  # recently used increments (LRU)
        self._pending: OrderedDict = OrderedDict()  # computed siblings not used yet (oldest dropped first)
        lo, hi = (0, len(self._grid) - 1) if self._grid is not None else (-1, -1)
        self._root = _Node(self.t0, self.t1, None, _mix(self.seed, 0x5EED), True, lo, hi)
        self._root_values = None
        self._cursor = self._root  # search for the next query point starts near the last one
        self.n_draws = 0  # bridge splits computed (each one normal draw of ``shape``; two with Lévy area)
        self.n_nodes = 1  # intervals in the tree (bookkeeping only: no tensors)

    def _skeleton_points(self, grid):
        if grid is None:
            return None
        # a tensor keeps its own values (a float32 grid stays the float32 times); anything else is float64
        g = grid if isinstance(grid, torch.Tensor) else torch.as_tensor(grid, dtype=torch.float64)
        g = g.detach().to("cpu", torch.float64).reshape(-1)
        if not bool(torch.isfinite(g).all()):
            raise ValueError("grid contains NaN/Inf")
        inside = sorted({v for v in g.tolist() if self.t0 < v < self.t1})
        return [self.t0, *inside, self.t1]

    # --- values -----------------------------------------------------------------------------------------
    def _root_pair(self):
        rv = self._root_values
        if rv is None or rv[2] != rv[0]._version or (rv[1] is not None and rv[3] != rv[1]._version):
            length = self.t1 - self.t0
            w = self._randn(_mix(self.seed, 0x7007, 1), math.sqrt(length))
            area = self._randn(_mix(self.seed, 0x7007, 2), math.sqrt(length / 12)) if self.levy_area else None
            rv = self._root_values = (w, area, w._version, area._version if area is not None else 0)
        return rv[0], rv[1]

    def _cached(self, node):
        hit = self._cache.get(node)
        if hit is not None:
            self._cache.move_to_end(node)
        else:
            hit = self._pending.pop(node, None)
            if hit is None:
                return None
            self._store(node, hit)  # first use of a pending sibling: now an ordinary cache entry
        w, area, wv, av = hit
        if w._version != wv or (area is not None and area._version != av):  # modified in place by a caller
            del self._cache[node]
            return None
        return w, area

    def _store(self, node, entry):
        cache = self._cache
        cache[node] = entry
        if len(cache) > self.cache_size - self.cache_size // 2:
            cache.popitem(last=False)

    def _store_pending(self, node, entry):
        # the sibling not on the way down: a sequential sweep (forward or backward, through the skeleton or a
        # chain of query splits) needs it later, after many other entries, so it waits in its own half of the
        # cache until its first use instead of being evicted by them
        pending = self._pending
        pending[node] = entry
        if len(pending) > self.cache_size // 2:
            pending.popitem(last=False)

    @staticmethod
    def _entry(values):
        w, area = values
        return w, area, w._version, area._version if area is not None else 0

    def _values(self, node):
        """``(W, H)`` of ``node``, from the cache or recomputed from its nearest cached ancestor."""
        if node is self._root:
            return self._root_pair()
        hit = self._cached(node)
        if hit is not None:
            return hit
        chain = []
        n = node
        while True:
            chain.append(n)
            n = n.parent
            if n is self._root:
                values = self._root_pair()
                break
            values = self._cached(n)
            if values is not None:
                break
        for child in reversed(chain):
            parent = child.parent
            left, right = self._split_values(parent, values)
            values, other, other_node = (left, right, parent.right) if child is parent.left else (
                right, left, parent.left)
            self._store(child, self._entry(values))
            self._store_pending(other_node, self._entry(other))
        return values

    def _split_values(self, node, values):
        self.n_draws += 1
        seed = node.seed
        return split_values(*values, node.mid - node.a, node.b - node.mid,
                            lambda which, std: self._randn(_mix(seed, which), std))

    # --- structure ----------------------------------------------------------------------------------------
    def _split(self, node, m: float, skeleton: bool):
        node.mid = m
        self.n_nodes += 2
        d = node.depth + 1
        # children's keys: one LCG step of the parent's (distinct for the two sides); every draw hashes its key
        # with _mix, so these need no mixing of their own
        base = (node.seed * 6364136223846793005) & _MASK64
        if node.lo >= 0 and node.hi - node.lo >= 2:  # a grid range: children keep their halves of it
            k = (node.lo + node.hi) // 2
            node.left = _Node(node.a, m, node, base + 1, True, node.lo, k, d)
            node.right = _Node(m, node.b, node, base + 3, True, k, node.hi, d)
        else:
            node.left = _Node(node.a, m, node, base + 1, skeleton, -1, -1, d)
            node.right = _Node(m, node.b, node, base + 3, skeleton, -1, -1, d)

    def _insert(self, p: float, h_ref: float) -> None:
        """Make ``p`` a node boundary: descend to the leaf containing it, refining the skeleton while its cell
        is longer than ``CELL_STEPS · h_ref``, then split that leaf at ``p`` itself."""
        node = self._cursor
        while not (node.a <= p <= node.b):
            node = node.parent
        while True:
            if p == node.a or p == node.b:
                break
            if node.mid is not None:
                if p == node.mid:
                    break
                node = node.left if p < node.mid else node.right
                continue
            if node.skeleton:
                if node.lo >= 0 and node.hi - node.lo >= 2:
                    self._split(node, self._grid[(node.lo + node.hi) // 2], True)
                    continue
                m = 0.5 * (node.a + node.b)
                if node.b - node.a > CELL_STEPS * h_ref and node.a < m < node.b and node.depth < 200:
                    self._split(node, m, True)
                    continue
            self._split(node, p, False)
            break
        self._cursor = node

    def _cover(self, s: float, t: float):
        """The tree's nodes that tile ``[s, t]`` (both already node boundaries), left to right."""
        node = self._cursor
        while not (node.a <= s and t <= node.b):
            node = node.parent
        while node.mid is not None and (t <= node.mid or s >= node.mid):  # lowest node containing [s, t]
            node = node.left if t <= node.mid else node.right
        out, stack = [], [node]
        while stack:
            n = stack.pop()
            if s <= n.a and n.b <= t:
                out.append(n)
            elif n.b > s and n.a < t:
                stack.append(n.right)
                stack.append(n.left)
        return out

    def _nodes(self, s: float, t: float):
        h_ref = t - s if self.dt is None else min(t - s, self.dt)
        self._insert(s, h_ref)
        self._insert(t, h_ref)
        return self._cover(s, t)

    def _increment(self, s, t):
        nodes = self._nodes(s, t)
        w = self._values(nodes[0])[0]
        for n in nodes[1:]:
            w = w + self._values(n)[0]
        return w

    def _increment_and_area(self, s, t):
        nodes = self._nodes(s, t)
        if len(nodes) == 1:
            return self._values(nodes[0])
        return combine_areas([(*self._values(n), n.b - n.a) for n in nodes])

    def __repr__(self):
        hint = f", grid of {len(self._grid) - 1} steps" if self._grid is not None else (
            f", dt={self.dt:g}" if self.dt is not None else "")
        return (f"BrownianPath([{self.t0:g}, {self.t1:g}], shape={self.shape}, seed={self.seed}, "
                f"levy_area={self.levy_area}{hint})")


class VirtualBrownianTree(_PathBase):
    """A Brownian path whose values do not depend on the order of queries (a virtual Brownian tree).

    A dyadic tree over ``[t0, t0 + L]`` whose level-``K`` nodes are the ``n_cells`` equal cells of
    ``[t0, t1]`` (``K = ceil(log2 n_cells)``); every node's split draws come from a generator seeded by a hash
    of (seed, level, index), so any query order gives the same path. A query point is located to the dyadic
    cell of level ``K + max_depth`` containing it (a point within 8 float64 ulps of the span of a cell-level
    node, e.g. a grid time computed in float64, is that node), and its value inside that cell is one more
    bridge draw seeded by the point's bits. The path is therefore exact down to cells of
    ``2^-max_depth`` of one of the ``n_cells`` cells (about 1e-12 of the span for the default 40 and one
    cell); below that two points in one cell are
    conditionally independent given the cell, so their increment has the right variance to within the cell's
    length but is never exactly zero.

    Costs: grids of ``n_cells · 2^k`` uniform steps computed in float64 cost one draw per step; any other point
    costs up to ``max_depth`` draws the first time (this is the price of order independence: use
    `BrownianPath` for speed). Memory is bounded by ``cache_size``. With ``sample_offset`` (the global index of
    the batch's first sample) every draw is made per sample, as in `BrownianPath`.
    """

    def __init__(self, t0: float, t1: float, shape, *, seed: int = 0, dtype=torch.float32, device=None,
                 levy_area: bool = False, n_cells: int = 1, max_depth: int = 40, cache_size: int = 96,
                 sample_offset: int | None = None):
        self._init_common(t0, t1, shape, seed, dtype, device, levy_area, cache_size, sample_offset)
        if isinstance(n_cells, bool) or not isinstance(n_cells, numbers.Integral) or n_cells < 1:
            raise ValueError(f"n_cells must be a positive int, got {n_cells!r}")
        if isinstance(max_depth, bool) or not isinstance(max_depth, numbers.Integral) or not 1 <= max_depth <= 50:
            raise ValueError(f"max_depth must be an int in [1, 50], got {max_depth!r}")
        self.n_cells = int(n_cells)
        self._k0 = max(0, math.ceil(math.log2(self.n_cells)))
        self.length = (self.t1 - self.t0) / self.n_cells * 2**self._k0
        self.max_depth = self._k0 + int(max_depth)
        self._cache: OrderedDict = OrderedDict()
        self._root = None
        self.n_draws = 0

    def _node_seed(self, level, index, which):
        return _mix(self.seed, level, index, which)

    def _root_pair(self):
        if self._root is None:
            w = self._randn(self._node_seed(0, 0, 0), math.sqrt(self.length))
            area = self._randn(self._node_seed(0, 0, 1), math.sqrt(self.length / 12)) if self.levy_area else None
            self._root = (w, area)
        return self._root

    def _node(self, level: int, index: int):
        """(W, H) of dyadic node ``(level, index)`` of length ``length / 2^level``."""
        if level == 0:
            return self._root_pair()
        key = (level, index)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        pw, ph = self._node(level - 1, index >> 1)
        self.n_draws += 1
        u = self.length / 2**level
        left, right = split_values(pw, ph, u, u, lambda which, std: self._randn(
            self._node_seed(level - 1, index >> 1, 1 + which), std))
        for k, v in (((level, index & ~1), left), ((level, index | 1), right)):
            self._cache[k] = v
            self._cache.move_to_end(k)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return left if index % 2 == 0 else right

    def _locate(self, u: float):
        """``(level, k, frac)``: the point as the dyadic boundary ``k/2^level`` of the root (``frac = 0``), or
        as the fraction ``frac`` of the way through cell ``k`` of the finest level."""
        u_rel = (u - self.t0) / self.length
        tol = 8 * 2.0**-52 * (self.t1 - self.t0) / self.length
        for level in range(self._k0 + 1):  # cell-level nodes absorb float64 rounding of grid times
            n = 2**level
            k = round(u_rel * n)
            if abs(u_rel - k / n) <= tol:
                return level, k, 0.0
        n = 2**self.max_depth
        k = math.floor(u_rel * n)
        frac = u_rel * n - k
        if frac == 0.0:
            return self.max_depth, k, 0.0
        if k >= n:
            return self.max_depth, n, 0.0
        return self.max_depth, k, frac

    def _cell_bridge(self, k: int, frac: float, u: float):
        """``(W, H)`` of ``[cell start, u]`` inside the finest cell ``k``: one bridge draw given the cell."""
        w, area = self._node(self.max_depth, k)
        h = self.length / 2**self.max_depth
        bits = struct.unpack("<q", struct.pack("<d", u))[0]
        self.n_draws += 1
        left, _ = split_values(w, area, frac * h, (1 - frac) * h,
                               lambda which, std: self._randn(_mix(self.seed, 0xB81D, k, bits, which), std))
        return left

    def _parts(self, s: float, t: float):
        """``[(W, H, length), ...]`` tiling ``[s, t]`` left to right."""
        ls, ks, fs = self._locate(s)
        lt, kt, ft = self._locate(t)
        n = 2**self.max_depth
        a_idx = ks * 2 ** (self.max_depth - ls)  # first finest cell at or after the dyadic part of s
        b_idx = kt * 2 ** (self.max_depth - lt)
        parts = []
        h_cell = self.length / n
        if fs != 0.0 and ft != 0.0 and a_idx == b_idx:  # both inside one finest cell
            # [s, t] is the right part of [c, t] whose left part is [c, s] (c the cell's start)
            w_s, a_s = self._cell_bridge(ks, fs, s)
            w_t, a_t = self._cell_bridge(kt, ft, t)
            return [(*right_part(w_t, a_t, ft * h_cell, w_s, a_s, fs * h_cell), t - s)]
        if fs != 0.0:  # the rest of s's finest cell: the right part of the cell whose left part is [c, s]
            w_s, a_s = self._cell_bridge(ks, fs, s)
            parts.append((*right_part(*self._node(self.max_depth, ks), h_cell, w_s, a_s, fs * h_cell),
                          h_cell - fs * h_cell))
            a_idx += 1
        parts.extend(self._cover(a_idx, b_idx))
        if ft != 0.0:
            w1, h1 = self._cell_bridge(kt, ft, t)
            parts.append((w1, h1, ft * h_cell))
        return parts

    def _cover(self, a_idx: int, b_idx: int):
        """Dyadic nodes tiling finest cells ``[a_idx, b_idx)``, left to right."""
        out = []
        if a_idx >= b_idx:
            return out
        stack = [(0, 0)]
        dmax = self.max_depth
        while stack:
            level, idx = stack.pop()
            span = 2 ** (dmax - level)
            lo, hi = idx * span, (idx + 1) * span
            if hi <= a_idx or lo >= b_idx:
                continue
            if lo >= a_idx and hi <= b_idx:
                w, area = self._node(level, idx)
                out.append((w, area, self.length / 2**level))
                continue
            stack.append((level + 1, 2 * idx + 1))
            stack.append((level + 1, 2 * idx))
        return out

    def _increment(self, s, t):
        parts = self._parts(s, t)
        w = parts[0][0]
        for p in parts[1:]:
            w = w + p[0]
        return w

    def _increment_and_area(self, s, t):
        parts = self._parts(s, t)
        if len(parts) == 1:
            return parts[0][0], parts[0][1]
        return combine_areas(parts)

    def __repr__(self):
        return (f"VirtualBrownianTree([{self.t0:g}, {self.t1:g}], shape={self.shape}, seed={self.seed}, "
                f"n_cells={self.n_cells}, levy_area={self.levy_area})")


class FreshNoise:
    """Independent ``N(0, |t - s|)`` increments from a ``torch.Generator``, for samplers that never need a
    consistent path (no caching, no tree: the cheapest noise source)."""

    levy_area = False

    def __init__(self, shape, *, generator: torch.Generator | None = None, dtype=torch.float32, device=None):
        self.shape, self.generator, self.dtype, self.device = tuple(shape), generator, dtype, device
        self._base_seed = None

    def __call__(self, s, t) -> torch.Tensor:
        std = math.sqrt(abs(float(t) - float(s)))
        return torch.normal(0.0, std, self.shape, generator=self.generator, dtype=self.dtype, device=self.device)

    def levy(self, s, t):
        """Fresh ``(W(t) - W(s), H)``: the increment and an independent Lévy area ``H ~ N(0, |t - s|/12)``."""
        h = abs(float(t) - float(s))
        w = self(s, t)
        area = torch.normal(0.0, math.sqrt(h / 12), self.shape, generator=self.generator, dtype=self.dtype,
                            device=self.device)
        return w, area

    def extra(self, s, t, index: int) -> torch.Tensor:
        """Another independent standard Gaussian from the generator."""
        return torch.randn(self.shape, generator=self.generator, dtype=self.dtype, device=self.device)

    def kernel_seed(self, step: int) -> int:
        """A 63-bit key for noise drawn inside a kernel (Philox keyed on it) at step ``step``: distinct steps get
        distinct keys, hashed from one base seed drawn from the generator on first use (one host read per solve,
        none per step)."""
        if self._base_seed is None:
            gen = self.generator
            dev = gen.device if gen is not None else None
            self._base_seed = int(torch.randint(0, 2**62, (1,), generator=gen, device=dev).item())
        return _mix(self._base_seed, 0xF05E, int(step))


class IndexedNoise(FreshNoise):
    """Fresh independent noise, like `FreshNoise`, whose row ``i`` depends only on the seed, the draw's number
    and the global sample index ``sample_offset + i`` (`indexed_normal`): the noise of a batch ``[a, b)`` created
    with ``sample_offset=a`` is rows ``a..b`` of the noise of the batch ``[0, n)``, bit for bit, when both make
    the same sequence of draws (the same solver on the same fixed grid). ``sdekit.sample(..., sample_offset=a)``
    uses it for samplers that need no Lévy area.

    Draw ``j`` (counted from 0 over every `__call__`, `levy` and `extra` of this object) uses the key ``j``.
    Fused kernels read its draws as tensors (`kernel_seed` is None): a key per element in registers would
    not be per sample.

    Args:
        shape: the noise shape, batch first.
        seed: integer seed (the same in every process).
        sample_offset: the global index of the batch's first sample.
        dtype: dtype of the draws.
        device: device of the draws.
    """

    levy_area = True  # fresh areas, independent of the increments (a fixed-grid solve's needs)

    def __init__(self, shape, *, seed: int, sample_offset: int = 0, dtype=torch.float32, device=None):
        shape = tuple(int(v) for v in shape)
        if not shape:
            raise ValueError("IndexedNoise needs a batch-first shape (at least one dimension)")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        device = torch.device(device) if device is not None else torch.device("cpu")
        super().__init__(shape, generator=None, dtype=dtype, device=device)
        self.seed, self.sample_offset = int(seed), check_sample_offset(sample_offset)
        self.n_draws = 0
        self._gen = torch.Generator(device=device)

    def _draw(self, std: float) -> torch.Tensor:
        key, self.n_draws = self.n_draws, self.n_draws + 1
        return indexed_normal(self.shape, self.seed, self.sample_offset, key=key, std=std, dtype=self.dtype,
                              device=self.device, generator=self._gen)

    def __call__(self, s, t) -> torch.Tensor:
        """A fresh ``N(0, |t - s|)`` increment (the next draw)."""
        return self._draw(math.sqrt(abs(float(t) - float(s))))

    def levy(self, s, t):
        """Fresh ``(W(t) - W(s), H)``, ``H ~ N(0, |t - s|/12)`` independent of ``W`` (two draws)."""
        h = abs(float(t) - float(s))
        return self._draw(math.sqrt(h)), self._draw(math.sqrt(h / 12))

    def extra(self, s, t, index: int) -> torch.Tensor:
        """The next draw, a standard Gaussian."""
        return self._draw(1.0)

    def kernel_seed(self, step: int) -> None:
        """None: a fused kernel reads this source's draws as tensors (see the class docstring)."""
        return None


class StepNoise:
    """The noise of one step, for samplers that declare ``noise_sampler = True``: drawn only when asked.

    - `z`: the step's standard Gaussian, ``(W(t) - W(s)) / sqrt|t - s|`` of the solve's Brownian path, or a
      standard normal drawn directly from fresh noise (computed once, then cached).
    - `extra`: another standard Gaussian, independent of ``z`` and of earlier ``extra`` draws (a
      ``noise_sampler`` that may be called more than once a step, as in k-diffusion).
    - `kernel_seed`: for fresh noise, a key from which a fused kernel draws ``z`` in registers instead
      of reading a tensor (None for a consistent Brownian path, whose increments must be materialised);
      a step that uses it never calls `z`.
    """

    def __init__(self, source, s: float, t: float, step: int):
        self.source, self.s, self.t, self.step = source, s, t, step
        self._z = None
        self._extra = 0

    def kernel_seed(self) -> int | None:
        """For fresh noise, the key from which a fused kernel draws the step's Gaussian; None otherwise."""
        if isinstance(self.source, FreshNoise) and self._z is None:
            return self.source.kernel_seed(self.step)
        return None

    def z(self) -> torch.Tensor:
        """The step's standard Gaussian (the scaled Brownian increment), computed once per step."""
        if self._z is None:
            if isinstance(self.source, FreshNoise):  # independent draws: a standard normal directly, no rescaling
                self._z = self.source.extra(self.s, self.t, 0)
            else:
                self._z = self.source(self.s, self.t) / math.sqrt(abs(self.t - self.s))
        return self._z

    def extra(self) -> torch.Tensor:
        """Another standard Gaussian, independent of `z` and of earlier draws this step.

        Raises:
            ValueError: the noise source cannot draw more than one Gaussian a step.
        """
        extra = getattr(self.source, "extra", None)
        if extra is None:
            raise ValueError(f"this step draws more than one Gaussian; its noise source ({type(self.source).__name__})"
                             " has no extra(s, t, index): use fresh noise, a BrownianPath or a VirtualBrownianTree")
        self._extra += 1
        return extra(self.s, self.t, self._extra)
