"""Brownian paths: a consistent virtual Brownian tree, and a plain fresh-noise source.

:class:`BrownianPath` returns ``W(t) - W(s)`` for any interval, such that the increments of a coarse grid
are exactly the sums of the increments of any finer grid of the same path (what strong-order measurements
need), reproducibly from a seed, for any state shape, dtype and device, with memory independent of the
number of queries. Optionally it carries the space-time Lévy area
``H_{s,t} = (1/h) ∫_s^t (W_r - W_s - (r - s)/h · W_{s,t}) dr`` (``h = t - s``; ``H ~ N(0, h/12)``
independent of ``W_{s,t}``) that SRA-type solvers need.

Construction: a dyadic tree over ``[t0, t0 + L]`` whose level-``K`` nodes are the ``n_cells`` equal cells
of ``[t0, t1]`` (``K = ceil(log2 n_cells)``). The root increment is ``N(0, L)``; a node of length ``h``
with increment ``W`` (and area ``H``) splits at its midpoint (``u = h/2``) into
``W_left = (W + D)/2``, ``W_right = (W - D)/2`` with

- without Lévy area: ``D = sqrt(2u) X1`` (the Brownian bridge);
- with Lévy area: ``D = 3H + sqrt(u/2) X1``, ``H_left = (S + E)/2``, ``H_right = (S - E)/2``,
  ``S = 2H - D/2``, ``E = sqrt(u/6) X2``

(conditioning the four independent Gaussians ``W_l, W_r ~ N(0, u)``, ``H_l, H_r ~ N(0, u/12)`` on
``W = W_l + W_r`` and ``H = (H_l + H_r)/2 + (W_l - W_r)/4``; cf. Foster 2020, "Numerical approximations
for stochastic differential equations", and the virtual Brownian tree of Gaines & Lyons 1997).
The normals ``X1, X2`` of a node come from a generator seeded by a hash of (seed, level, index), so a node's
value does not depend on the order of queries. A small LRU cache keeps the ancestors of recent queries, so
sequential queries along a grid cost one (two with Lévy area) normal draw per step.

Every query point is first snapped, by itself, to an exact dyadic fraction of the root: the shallowest node
boundary at level l within ``min(1e-7, 1e-4 · 2^-l)`` of the root's length (so float32 grid times hit their
cells), else the nearest point of level ``max_depth`` (resolution ``2^-max_depth``). Increments therefore add
up exactly over any split, and two points snapped to the same boundary give a zero increment.
"""

from __future__ import annotations

import math
import numbers
from collections import OrderedDict

import torch

_MASK64 = (1 << 64) - 1


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


class BrownianPath:
    """A consistent Brownian path on ``[t0, t1]``: call ``bm(s, t)`` for ``W(t) - W(s)``.

    Args:
        t0, t1: the interval (``t0 < t1``); queries may come in either order (``bm(t, s) = -bm(s, t)``).
        shape: shape of one increment (e.g. the state's shape, batch first).
        seed: integer seed; the same seed gives the same path on the same device and dtype.
        dtype, device: of the increments.
        n_cells: number of equal base cells; grids of ``n_cells · 2^k`` uniform steps are hit exactly
            with one normal draw per step.
        levy_area: also provide space-time Lévy areas (:meth:`levy`); doubles the draws.
        max_depth: depth at which off-grid points stop being refined.
        cache_size: number of tree nodes kept (each a tensor of ``shape``; two with Lévy area). Sequential
            queries along a grid of depth d need about 2d.
    """

    def __init__(self, t0: float, t1: float, shape, *, seed: int = 0, dtype=torch.float32, device=None,
                 n_cells: int = 1, levy_area: bool = False, max_depth: int = 40, cache_size: int = 96):
        t0, t1 = float(t0), float(t1)
        if not (math.isfinite(t0) and math.isfinite(t1) and t0 < t1):
            raise ValueError(f"BrownianPath needs finite t0 < t1, got t0={t0}, t1={t1}")
        if isinstance(n_cells, bool) or not isinstance(n_cells, numbers.Integral) or n_cells < 1:
            raise ValueError(f"n_cells must be a positive int, got {n_cells!r}")
        if not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        self.t0, self.t1 = t0, t1
        self.shape = tuple(shape)
        self.seed, self.dtype = seed, dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.levy_area = bool(levy_area)
        self.n_cells = n_cells = int(n_cells)
        self._k0 = max(0, math.ceil(math.log2(n_cells)))  # level of the cells
        self.length = (t1 - t0) / n_cells * 2**self._k0  # root covers [t0, t0 + length] ⊇ [t0, t1]
        self.max_depth = self._k0 + int(max_depth)
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = int(cache_size)
        self._gen = torch.Generator(device=self.device)
        self._tol = 1e-7  # relative to the root's length: dyadic-point detection
        root_h = self.length
        w = math.sqrt(root_h) * self._randn(0, 0, 0)
        h = math.sqrt(root_h / 12) * self._randn(0, 0, 1) if self.levy_area else None
        self._root = (w, h)

    # --- noise ------------------------------------------------------------------------------------------
    def _randn(self, level: int, index: int, which: int) -> torch.Tensor:
        self._gen.manual_seed(_mix(self.seed, level, index, which))
        return torch.randn(self.shape, generator=self._gen, dtype=self.dtype, device=self.device)

    def _node(self, level: int, index: int):
        """(W, H) of dyadic node ``(level, index)`` of length ``length / 2^level``."""
        if level == 0:
            return self._root
        key = (level, index)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        pw, ph = self._node(level - 1, index >> 1)
        u = self.length / 2**level
        x1 = self._randn(level - 1, index >> 1, 2)
        if self.levy_area:
            d = 3 * ph + math.sqrt(u / 2) * x1
            s = 2 * ph - d / 2
            e = math.sqrt(u / 6) * self._randn(level - 1, index >> 1, 3)
            left, right = ((pw + d) / 2, (s + e) / 2), ((pw - d) / 2, (s - e) / 2)
        else:
            d = math.sqrt(2 * u) * x1
            left, right = ((pw + d) / 2, None), ((pw - d) / 2, None)
        self._store((level, index & ~1), left)
        self._store((level, index | 1), right)
        return left if index % 2 == 0 else right

    def _store(self, key, value):
        self._cache[key] = value
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    # --- queries ------------------------------------------------------------------------------------------
    def _check(self, s: float, t: float):
        span = self.t1 - self.t0
        lo, hi = self.t0 - 1e-12 * span, self.t1 + 1e-12 * span
        for name, v in (("s", s), ("t", t)):
            if not (lo <= v <= hi):
                raise ValueError(f"Brownian path queried at {name}={v:g}, outside its interval "
                                 f"[{self.t0:g}, {self.t1:g}]")

    def _snap(self, u: float) -> float:
        """The query point as an exact dyadic fraction of the root: the shallowest node boundary at level l
        within ``min(1e-7, 1e-4 · 2^-l)`` of the root's length (absorbs float32 rounding of grid times at the
        cell levels, never moves a point by more than 1e-4 of the local node), else the nearest point of the
        finest level. Depends on the point alone, so increments add up exactly across any split."""
        u_rel = (u - self.t0) / self.length
        for level in range(self.max_depth + 1):
            n = 2**level
            k = round(u_rel * n)
            if abs(u_rel - k / n) <= min(self._tol, 1e-4 / n):
                return k / n
        n = 2**self.max_depth
        return round(u_rel * n) / n

    def _cover(self, a_rel: float, b_rel: float):
        """Nodes covering the dyadic interval [a_rel, b_rel] (root units, a_rel < b_rel), left to right."""
        out = []
        stack = [(0, 0)]
        while stack:
            level, idx = stack.pop()
            n = 2**level
            lo, hi = idx / n, (idx + 1) / n  # exact: dyadic fractions
            if hi <= a_rel or lo >= b_rel:
                continue
            if lo >= a_rel and hi <= b_rel:
                w, hh = self._node(level, idx)
                out.append((w, hh, self.length / n))
                continue
            stack.append((level + 1, 2 * idx + 1))
            stack.append((level + 1, 2 * idx))
        return out

    def __call__(self, s, t) -> torch.Tensor:
        """``W(t) - W(s)`` (negative of ``bm(t, s)`` when ``s > t``)."""
        s, t = float(s), float(t)
        self._check(s, t)
        if s == t:
            return torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        if s > t:
            return -self(t, s)
        a, b = self._snap(s), self._snap(t)
        if a == b:
            return torch.zeros(self.shape, dtype=self.dtype, device=self.device)
        parts = self._cover(a, b)
        w = parts[0][0]
        for p in parts[1:]:
            w = w + p[0]
        return w

    def levy(self, s, t) -> tuple[torch.Tensor, torch.Tensor]:
        """``(W_{s,t}, H_{s,t})``: increment and space-time Lévy area. For ``s > t`` (a step of a reverse-time
        solve) returns ``(-W_{t,s}, H_{t,s})``, the increment and area of the time-reversed motion."""
        if not self.levy_area:
            raise ValueError("this BrownianPath has no Lévy area: create it with levy_area=True")
        s, t = float(s), float(t)
        self._check(s, t)
        if s > t:
            w, h = self.levy(t, s)
            return -w, h
        a, b = self._snap(s), self._snap(t)
        if a == b:
            z = torch.zeros(self.shape, dtype=self.dtype, device=self.device)
            return z, z.clone()
        parts = self._cover(a, b)
        w, hh, h = parts[0]
        for w2, h2, len2 in parts[1:]:
            # adjacent intervals: (h1 + h2) H = h1 H1 + h2 H2 + (h2/2) W1 - (h1/2) W2
            hh = (h * hh + len2 * h2 + 0.5 * len2 * w - 0.5 * h * w2) / (h + len2)
            w, h = w + w2, h + len2
        return w, hh

    def __repr__(self):
        return (f"BrownianPath([{self.t0:g}, {self.t1:g}], shape={self.shape}, seed={self.seed}, "
                f"levy_area={self.levy_area})")


class FreshNoise:
    """Independent ``N(0, |t - s|)`` increments from a ``torch.Generator``, for samplers that never need a
    consistent path (no caching, no tree: the cheapest noise source)."""

    levy_area = False

    def __init__(self, shape, *, generator: torch.Generator | None = None, dtype=torch.float32, device=None):
        self.shape, self.generator, self.dtype, self.device = tuple(shape), generator, dtype, device

    def __call__(self, s, t) -> torch.Tensor:
        z = torch.randn(self.shape, generator=self.generator, dtype=self.dtype, device=self.device)
        return z * math.sqrt(abs(float(t) - float(s)))

    def levy(self, s, t):
        h = abs(float(t) - float(s))
        w = self(s, t)
        hh = torch.randn(self.shape, generator=self.generator, dtype=self.dtype, device=self.device)
        return w, hh * math.sqrt(h / 12)
