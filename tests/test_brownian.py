"""The noise sources on their own: BrownianPath (the Brownian interval tree, the default), VirtualBrownianTree
(query-order independent), FreshNoise, plus how ``solve`` checks a Brownian path against the problem.

Statistical tolerances: with a fixed seed every check below is deterministic; each bound is chosen so that
a correct implementation would fail it for a random seed with probability about 1e-3 (KS tests at
p > 1e-3) or far less (5 standard errors: ~6e-7), while a wrong variance, a missing factor or a correlation
that the tree construction should have removed moves the statistic by far more than that.
"""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from sdekit import VP, BrownianPath, FreshNoise, VirtualBrownianTree, solve, time_grid
from sdekit.analytic import OrnsteinUhlenbeck
from sdekit.brownian import CELL_STEPS

F64 = torch.float64
N_STAT = 20_000  # elements per statistical check
PATHS = [BrownianPath, VirtualBrownianTree]


def grid_increments(bm, ts):
    return torch.stack([bm(a, b) for a, b in zip(ts[:-1], ts[1:])])


def assert_standard_normal(z: torch.Tensor, what: str):
    """``z`` (n i.i.d. elements) looks N(0, 1): KS test, mean and variance within 5 standard errors."""
    z = z.reshape(-1).to(F64)
    n = z.numel()
    p = stats.kstest(z.numpy(), "norm").pvalue
    assert p > 1e-3, f"{what}: KS p-value {p:.2e}"
    # mean of n standard normals has SE 1/sqrt(n)
    assert abs(float(z.mean())) < 5 / math.sqrt(n), f"{what}: mean {float(z.mean()):.4f}"
    # sample variance of n normals with variance 1 has variance 2/n (Var s² ≈ 2σ⁴/n)
    var = float(z.var())
    assert abs(var - 1) < 5 * math.sqrt(2 / n), f"{what}: variance {var:.4f}"


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.reshape(-1).to(F64), b.reshape(-1).to(F64)
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def assert_uncorrelated(a: torch.Tensor, b: torch.Tensor, what: str):
    # the sample correlation of n independent pairs is ≈ N(0, 1/n): 5 SE is 5/sqrt(n)
    c, n = corr(a, b), a.numel()
    assert abs(c) < 5 / math.sqrt(n), f"{what}: correlation {c:.4f} (bound {5 / math.sqrt(n):.4f})"


def mixed_queries(bm):
    """Grid steps, off-grid intervals, a reverse query and a long one, in one fixed sequence."""
    out = [bm(a, b) for a, b in zip(*(lambda g: (g[:-1], g[1:]))(torch.linspace(0, 1, 65).tolist()))]
    out += [bm(0.3, 0.71), bm(0.05, 0.999), bm(0.71, 0.3), bm(0.5, 0.5 + 1e-9), bm(0.0, 1.0)]
    return torch.stack(out)


# --- determinism ------------------------------------------------------------------------------------------
def test_brownian_path_same_query_sequence_is_bitwise_reproducible():
    a = mixed_queries(BrownianPath(0, 1, (3, 5), seed=7))
    # a tiny cache evicts nearly everything: recomputation from ancestors must give the same bits
    b = mixed_queries(BrownianPath(0, 1, (3, 5), seed=7, cache_size=4))
    assert torch.equal(a, b)
    pairs = [(0.0, 0.25), (0.6, 0.9), (0.3, 0.71), (0.0, 1.0), (0.61, 0.62)]
    for cache_size in (64, 4):
        c = BrownianPath(0, 1, (4,), seed=3, levy_area=True, dtype=F64)
        d = BrownianPath(0, 1, (4,), seed=3, levy_area=True, dtype=F64, cache_size=cache_size)
        for (w1, h1), (w2, h2) in zip([c.levy(s, t) for s, t in pairs], [d.levy(s, t) for s, t in pairs]):
            assert torch.equal(w1, w2) and torch.equal(h1, h2)


def test_brownian_path_grid_hint_points_do_not_depend_on_query_order():
    """With a grid hint the grid points are the skeleton: their increments are the same in any order."""
    ts = torch.linspace(0, 1, 65, dtype=F64).tolist()
    forward = grid_increments(BrownianPath(0, 1, (3, 5), seed=7, grid=ts), ts)
    b = BrownianPath(0, 1, (3, 5), seed=7, grid=ts, cache_size=4)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0)).tolist()
    b(0.3, 0.71)  # an off-grid query first changes nothing on the grid
    shuffled = {i: b(ts[i], ts[i + 1]) for i in perm}
    assert torch.equal(forward, torch.stack([shuffled[i] for i in range(64)]))


def test_brownian_path_other_query_order_is_another_valid_path():
    """The documented trade-off: off-skeleton values depend on the order of first queries, additivity holds."""
    a, b = BrownianPath(0, 1, (6,), seed=7, dtype=F64), BrownianPath(0, 1, (6,), seed=7, dtype=F64)
    first = [a(0.3, 0.71), a(0.05, 0.999)]
    second = [b(0.05, 0.999), b(0.3, 0.71)][::-1]
    assert not torch.equal(first[0], second[0])
    for bm in (a, b):
        parts = grid_increments(bm, [0.05, 0.3, 0.71, 0.999])
        torch.testing.assert_close(parts.sum(0), bm(0.05, 0.999), atol=ADD_TOL, rtol=0)


def test_virtual_tree_is_bitwise_identical_in_any_query_order():
    ts = torch.linspace(0, 1, 65, dtype=F64).tolist()
    a = VirtualBrownianTree(0, 1, (3, 5), seed=7, n_cells=4)
    forward = grid_increments(a, ts)
    b = VirtualBrownianTree(0, 1, (3, 5), seed=7, n_cells=4, cache_size=4)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0)).tolist()
    shuffled = {i: b(ts[i], ts[i + 1]) for i in perm}
    assert torch.equal(forward, torch.stack([shuffled[i] for i in range(64)]))
    c, d = VirtualBrownianTree(0, 1, (3, 5), seed=7), VirtualBrownianTree(0, 1, (3, 5), seed=7)
    first = [c(0.3, 0.71), c(0.05, 0.999)]
    second = [d(0.05, 0.999), d(0.3, 0.71)][::-1]
    assert all(torch.equal(x, y) for x, y in zip(first, second))
    pairs = [(0.0, 0.25), (0.6, 0.9), (0.3, 0.71), (0.0, 1.0)]
    e = VirtualBrownianTree(0, 1, (4,), seed=3, levy_area=True, dtype=F64)
    f = VirtualBrownianTree(0, 1, (4,), seed=3, levy_area=True, dtype=F64, cache_size=4)
    for (w1, h1), (w2, h2) in zip([e.levy(s, t) for s, t in pairs], [f.levy(s, t) for s, t in reversed(pairs)][::-1]):
        assert torch.equal(w1, w2) and torch.equal(h1, h2)


@pytest.mark.parametrize("cls", PATHS)
def test_different_seeds_differ(cls):
    a, b = cls(0, 1, (100,), seed=0), cls(0, 1, (100,), seed=1)
    for s, t in [(0.0, 1.0), (0.125, 0.25), (0.3, 0.71)]:
        # two independent N(0, h) vectors of 100 elements are never within 1e-3·sqrt(h) everywhere
        assert not torch.allclose(a(s, t), b(s, t), atol=1e-3 * math.sqrt(t - s), rtol=0)


@pytest.mark.parametrize("cls", PATHS)
def test_call_and_levy_agree_and_empty_interval_is_zero(cls):
    bm = cls(0, 1, (6,), seed=2, levy_area=True, dtype=F64)
    for s, t in [(0.0, 1.0), (0.1, 0.45), (1 / 3, 2 / 3)]:
        assert torch.equal(bm(s, t), bm.levy(s, t)[0])
    assert torch.equal(bm(0.4, 0.4), torch.zeros(6, dtype=F64))


def test_increments_modified_in_place_do_not_corrupt_the_path():
    bm = BrownianPath(0, 1, (8,), seed=4, dtype=F64, levy_area=True)
    w = bm(0.1, 0.2)
    keep = w.clone()
    w.add_(100.0)  # a caller scribbling on the returned tensor
    torch.testing.assert_close(bm(0.1, 0.2), keep, atol=0, rtol=0)
    whole = bm(0.0, 1.0)
    whole.mul_(0.0)
    assert float(bm(0.0, 1.0).abs().min()) > 0
    w2, area = bm.levy(0.1, 0.2)
    area.zero_()
    assert float(bm.levy(0.1, 0.2)[1].abs().min()) > 0


# --- additivity -------------------------------------------------------------------------------------------
# Float64 rounding: the tree's children reproduce their parent up to a few ulp per level and a sum of
# at most 2000 terms of size O(1) adds at most 2000 · 2.2e-16 ≈ 4.4e-13, so 1e-12 is a rounding bound.
ADD_TOL = 1e-12


@pytest.mark.parametrize("cls", PATHS)
def test_nested_dyadic_grids_add_up(cls):
    bm = cls(0, 1, (16,), seed=11, dtype=F64)
    coarse = grid_increments(bm, [0.0, 1.0])
    for k in range(1, 11):
        fine = grid_increments(bm, torch.linspace(0, 1, 2**k + 1, dtype=F64).tolist())
        torch.testing.assert_close(fine[0::2] + fine[1::2], coarse, atol=ADD_TOL, rtol=0)
        coarse = fine
    torch.testing.assert_close(coarse.sum(0), bm(0, 1), atol=ADD_TOL, rtol=0)


@pytest.mark.parametrize("make", [lambda la: BrownianPath(0, 1, (16,), seed=5, dtype=F64, levy_area=la),
                                  lambda la: BrownianPath(0, 1, (16,), seed=5, dtype=F64, levy_area=la, dt=1e-3),
                                  lambda la: VirtualBrownianTree(0, 1, (16,), seed=5, dtype=F64, n_cells=1000,
                                                                 levy_area=la)],
                         ids=["path", "path-dt", "virtual-cells"])
@pytest.mark.parametrize("levy_area", [False, True])
def test_grids_1000_and_2000_add_up(make, levy_area):
    bm = make(levy_area)
    w1000 = grid_increments(bm, torch.linspace(0, 1, 1001, dtype=F64).tolist())
    w2000 = grid_increments(bm, torch.linspace(0, 1, 2001, dtype=F64).tolist())
    torch.testing.assert_close(w2000[0::2] + w2000[1::2], w1000, atol=ADD_TOL, rtol=0)
    torch.testing.assert_close(w1000.sum(0), bm(0, 1), atol=ADD_TOL, rtol=0)
    torch.testing.assert_close(w2000.sum(0), bm(0, 1), atol=ADD_TOL, rtol=0)
    # the grid increments are a Brownian motion with steps of variance 1/1000 and 1/2000 (pooled 5 SE)
    assert_standard_normal(w1000 * math.sqrt(1000), "1000-step grid")
    assert_standard_normal(w2000 * math.sqrt(2000), "2000-step grid")


@pytest.mark.parametrize("cls", PATHS)
@pytest.mark.parametrize("points", [(0.3, 0.5, 0.71), (0.30037, 0.5, 0.7101), (0.1, 0.2, 0.3, 0.41, 0.9),
                                    (0.3, 0.5, 0.5 + 5e-8, 0.71), (0.0, 1e-8, 0.25, 0.25 + 1e-9, 1.0)])
def test_off_grid_points_add_up(cls, points):
    bm = cls(0, 1, (16,), seed=9, dtype=F64)
    parts = grid_increments(bm, list(points))
    torch.testing.assert_close(parts.sum(0), bm(points[0], points[-1]), atol=ADD_TOL, rtol=0)
    assert bool((parts != 0).all()), "a step between distinct points got an exactly zero increment"
    # reverse queries are exact negatives
    assert torch.equal(bm(points[-1], points[0]), -bm(points[0], points[-1]))


@given(points=st.lists(st.floats(0.0, 1.0), min_size=3, max_size=12, unique=True),
       order_seed=st.integers(0, 2**16), float32=st.booleans())
def test_any_points_in_any_order_add_up(points, order_seed, float32):
    """Additivity over any split for any query points and order (property test)."""
    points = sorted(points)
    dtype = torch.float32 if float32 else F64
    bm = BrownianPath(0, 1, (8,), seed=order_seed, dtype=dtype)
    pairs = list(zip(points[:-1], points[1:]))
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(order_seed)).tolist()
    got = {i: bm(*pairs[i]) for i in order}
    total = bm(points[0], points[-1])
    # float32: a sum of at most 11 terms of size <= ~4 rounds at 2^-24 relative each: 1e-5 bounds it
    atol = 1e-5 if float32 else ADD_TOL
    torch.testing.assert_close(sum(got[i] for i in range(len(pairs))), total, atol=atol, rtol=0)
    # a zero increment only where its standard deviation underflows the dtype (gaps like 1e-313 do occur here)
    assert all(bool((got[i] != 0).all()) for i in got if pairs[i][1] - pairs[i][0] > 1e-30)


# --- normality and independence at every scale ---------------------------------------------------------------
SCALES = [1e-1, 1e-3, 1e-5, 1e-7, 1e-9]


def _starts(d):
    """Intervals that start at or straddle the coarse dyadic points 0, 1/2 and 1/4, and one off them."""
    return [0.0, 0.5, 0.25, 0.5 - d / 2, 0.25 - d / 3, 0.3]


@pytest.mark.parametrize("cls", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("d", SCALES)
def test_increments_are_normal_at_every_scale(cls, dtype, d):
    """KS test of W(s, s + d)/sqrt(d) for d from 1e-1 to 1e-9 of the span, on a fresh path and on one already
    queried along a 1000-step grid (the path a solver leaves behind); never an exactly zero increment."""
    for fresh in (True, False):
        bm = cls(0, 1, (N_STAT,), seed=21 + int(fresh), dtype=dtype)
        if not fresh:  # (the virtual tree pays ~40 draws per off-dyadic point: a shorter grid keeps this quick)
            steps = 1000 if cls is BrownianPath else 100
            grid_increments(bm, torch.linspace(0, 1, steps + 1, dtype=torch.float32).tolist())
        for s in _starts(d):
            w = bm(s, s + d)
            assert bool((w != 0).all()), f"zero increment over [{s}, {s} + {d}]"
            # the effective length is the float64 difference of the two query points
            assert_standard_normal(w.to(F64) / math.sqrt((s + d) - s), f"W over [{s}, {s} + {d}] ({dtype})")


@pytest.mark.parametrize("cls", PATHS)
def test_disjoint_increments_uncorrelated(cls):
    bm = cls(0, 1, (N_STAT,), seed=4, dtype=F64)
    points = [0.0, 0.3, 1 / 3, 0.5 - 1e-8, 0.5, 0.5 + 1e-8, 0.71, 1.0]
    incs = grid_increments(bm, points)
    for i in range(len(incs)):
        for j in range(i + 1, len(incs)):
            assert_uncorrelated(incs[i], incs[j], f"intervals {i} and {j}")
    assert_uncorrelated(bm(0.0, 0.5 / 3), bm(0.5 / 3, 1 / 3), "siblings")


@pytest.mark.parametrize("cls", PATHS)
@pytest.mark.parametrize("u", [0.5, 0.3, 1e-6])
def test_bridge_law(cls, u):
    """Given W(0, 1), W(0, u) is N(u W(0, 1), u (1 - u)): the residual is independent of W(0, 1) with that
    variance (queried after the whole increment, so the path must split the root at u)."""
    bm = cls(0, 1, (N_STAT,), seed=3, dtype=F64)
    whole = bm(0, 1)
    part = bm(0, u)
    residual = part - u * whole
    assert_uncorrelated(residual, whole, f"bridge residual at u={u}")
    assert_standard_normal(residual / math.sqrt(u * (1 - u)), f"bridge residual at u={u}")


def test_em_on_a_tiny_window_next_to_a_dyadic_point_has_the_right_variance():
    """The regression of the old snapping tree: an EM solve on [0.5, 0.5 + 1e-7] had zero variance."""
    ou = OrnsteinUhlenbeck(theta=1.0, mu=0.0, sigma=1.0)
    x0 = torch.zeros(N_STAT, 1, dtype=F64)
    ts = torch.linspace(0.5, 0.5 + 1e-7, 9, dtype=F64)
    for bm in (BrownianPath(0, 1, x0.shape, seed=2, dtype=F64), VirtualBrownianTree(0, 1, x0.shape, seed=2, dtype=F64)):
        x = solve(ou, x0, "euler_maruyama", ts=ts, brownian=bm).x
        # x = W(0.5, 0.5 + 1e-7) up to a drift of relative size 1e-7
        assert_standard_normal(x / math.sqrt(1e-7), f"EM endpoint on {type(bm).__name__}")


# --- Lévy area --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", PATHS)
@pytest.mark.parametrize("interval", [(0.0, 1.0), (0.0, 0.5), (0.5, 0.75), (0.3, 0.71), (0.5, 0.5 + 1e-9),
                                      (0.25 - 1e-7, 0.25 + 2e-7)])
def test_levy_area_distribution_and_independence(cls, interval):
    s, t = interval
    h = t - s
    bm = cls(0, 1, (N_STAT,), seed=8, dtype=F64, levy_area=True)
    w, area = bm.levy(s, t)
    assert_standard_normal(w / math.sqrt(h), f"W over [{s}, {t}]")
    assert_standard_normal(area / math.sqrt(h / 12), f"H over [{s}, {t}]")  # H ~ N(0, h/12)
    assert_uncorrelated(w, area, f"W and H over [{s}, {t}]")


def exact_cov_w_area(a: float, b: float, s: float, t: float) -> float:
    """Cov(W_{a,b}, H_{s,t}) for [a, b] ⊂ [s, t]: with L = b - a, h = t - s and
    Cov(W_{a,b}, W_r - W_s) = clip(r - a, 0, L), the definition of H integrates to (L²/2 + (t - b) L - L h/2)/h."""
    length, h = b - a, t - s
    return (length**2 / 2 + (t - b) * length - length * h / 2) / h


@pytest.mark.parametrize("cls", PATHS)
@pytest.mark.parametrize("sub, n", [((0.0, 0.5), 100_000), ((0.5, 1.0), 100_000), ((0.0, 0.25), 100_000),
                                    ((0.375, 0.8125), 100_000), ((0.75, 0.875), 100_000),
                                    ((0.0, 0.1), 100_000), ((0.9, 1.0), 100_000), ((0.3, 0.71), 20_000)])
def test_levy_area_covariance_with_sub_increments(cls, sub, n):
    """A split must reproduce the joint law of (W on a sub-interval, H of the whole), at the midpoint and at
    asymmetric points (the query splits of BrownianPath use the general conditional law).

    Cov(W_{0,1/2}, H_{0,1}) = 1/8 (correlation 0.87) is what the conditional mean E[W1 | H] encodes.
    The sample covariance of n Gaussian pairs has variance (σ_a² σ_b² + c²)/n: 5 SE. n = 100000 makes the
    bound at most 0.004 against covariances of size 0.03-0.125.
    """
    bm = cls(0, 1, (n,), seed=17, dtype=F64, levy_area=True)
    _, area = bm.levy(0, 1)
    w = bm(*sub)
    exact = exact_cov_w_area(*sub, 0.0, 1.0)
    sample = float((w * area).mean())  # both have mean zero
    se = math.sqrt(((sub[1] - sub[0]) / 12 + exact**2) / n)
    assert abs(sample - exact) < 5 * se, f"Cov(W{sub}, H(0, 1)) = {sample:.5f}, exact {exact:.5f}, SE {se:.5f}"


@pytest.mark.parametrize("cls", PATHS)
def test_levy_areas_of_disjoint_intervals_uncorrelated(cls):
    bm = cls(0, 1, (N_STAT,), seed=12, dtype=F64, levy_area=True)
    for m in (0.5, 0.1, 0.77):
        (w1, h1), (w2, h2) = bm.levy(0, m), bm.levy(m, 1)
        for a, b, what in [(h1, h2, "H1, H2"), (h1, w2, "H1, W2"), (w1, h2, "W1, H2"), (w1, w2, "W1, W2")]:
            assert_uncorrelated(a, b, f"{what} split at {m}")


@pytest.mark.parametrize("make", [lambda: BrownianPath(0, 1, (4000,), seed=31, dtype=F64, levy_area=True),
                                  lambda: VirtualBrownianTree(0, 1, (2000,), seed=31, dtype=F64, levy_area=True,
                                                              n_cells=1000)],
                         ids=["path", "virtual-cells"])
def test_levy_area_matches_integral_of_fine_path(make):
    """H_{0,1} = ∫_0^1 (W_r - r W_1) dr, from the same path's fine grid by the trapezoid rule.

    On a cell of length h the trapezoid rule misses exactly ∫(W_r - linear interpolant) dr = h H_cell, so
    H - trapezoid = Σ h H_cell: an exact identity of the path (checked to rounding), and a N(0, 1/(12 n²))
    error per element (the n cell areas are independent N(0, h/12), h = 1/n), checked in RMS.
    """
    bm = make()
    n_fine, n_el = 1000, bm.shape[0]
    ts = torch.linspace(0, 1, n_fine + 1, dtype=F64).tolist()
    cells = [bm.levy(a, b) for a, b in zip(ts[:-1], ts[1:])]
    dw = torch.stack([c[0] for c in cells])
    cell_areas = torch.stack([c[1] for c in cells])
    w_path = torch.cat([torch.zeros(1, n_el, dtype=F64), dw.cumsum(0)])
    h = 1 / n_fine
    trapezoid = (0.5 * h * (w_path[1:] + w_path[:-1])).sum(0)
    w1, area = bm.levy(0, 1)
    torch.testing.assert_close(w_path[-1], w1, atol=ADD_TOL, rtol=0)
    estimate = trapezoid - 0.5 * w1  # ∫_0^1 r W_1 dr = W_1 / 2
    torch.testing.assert_close(area, estimate + h * cell_areas.sum(0), atol=ADD_TOL, rtol=0)
    # mean square of n_el N(0, v) errors over v is chi²/n_el: SE sqrt(2/n_el), 5 SE bound
    ms_ratio = float(((area - estimate) ** 2).mean()) * 12 * n_fine**2
    assert abs(ms_ratio - 1) < 5 * math.sqrt(2 / n_el), f"trapezoid error / its predicted RMS: {ms_ratio:.3f}"


@pytest.mark.parametrize("cls", PATHS)
@pytest.mark.parametrize("split", [(0.0, 0.5, 1.0), (0.3, 0.5, 0.71), (0.0, 0.1, 1.0), (0.5, 0.5 + 1e-6, 0.6)])
def test_levy_area_combines_over_adjacent_intervals(cls, split):
    # (h1 + h2) H = h1 H1 + h2 H2 + (h2/2) W1 - (h1/2) W2
    a, m, b = split
    bm = cls(0, 1, (64,), seed=13, dtype=F64, levy_area=True)
    (w1, area1), (w2, area2) = bm.levy(a, m), bm.levy(m, b)
    h1, h2 = m - a, b - m
    w, area = bm.levy(a, b)
    torch.testing.assert_close(w1 + w2, w, atol=ADD_TOL, rtol=0)
    combined = (h1 * area1 + h2 * area2 + 0.5 * h2 * w1 - 0.5 * h1 * w2) / (h1 + h2)
    torch.testing.assert_close(combined, area, atol=ADD_TOL, rtol=0)


@pytest.mark.parametrize("cls", PATHS)
def test_levy_reverse_query(cls):
    bm = cls(0, 1, (8,), seed=1, dtype=F64, levy_area=True)
    for s, t in [(0.0, 1.0), (0.2, 0.4), (0.33, 0.77)]:
        w, area = bm.levy(s, t)
        w_rev, area_rev = bm.levy(t, s)
        assert torch.equal(w_rev, -w) and torch.equal(area_rev, area)


# --- cost and memory of the default path ----------------------------------------------------------------------
def _draws_along(bm, ts, levy=False):
    q = bm.levy if levy else bm
    for a, b in zip(ts[:-1], ts[1:]):
        q(a, b)
    return bm.n_draws


@pytest.mark.parametrize("grid_dtype", [torch.float32, F64])
@pytest.mark.parametrize("levy_area", [False, True])
def test_one_split_per_step_on_a_uniform_grid_without_hint(grid_dtype, levy_area):
    """The algorithmic cost behind the speed target (timed in benchmarks/bench_solvers.py): a 1000-step grid
    costs the 1000 query splits plus the skeleton, about 1000/CELL_STEPS cells, with no tuning."""
    ts = torch.linspace(0, 1, 1001, dtype=grid_dtype).tolist()
    bm = BrownianPath(0, 1, (2,), seed=0, levy_area=levy_area)
    assert _draws_along(bm, ts, levy_area) <= 1000 * (1 + 2 / CELL_STEPS)


@pytest.mark.parametrize("steps", [10, 50, 1000])
def test_one_split_per_step_on_log_snr_grids(steps):
    """A VP log-SNR grid from t = 1 to 1e-3 (decreasing: reverse-time queries), with and without the hint."""
    ts = time_grid(VP(), steps, "log_snr", t_start=1.0, t_end=1e-3).tolist()
    for hint in (None, ts):
        bm = BrownianPath(1e-3, 1.0, (2,), seed=0, grid=hint)
        assert _draws_along(bm, ts) <= steps * (1 + 2 / CELL_STEPS) + 2


def test_adaptive_query_pattern_costs_one_split_per_attempt():
    """An adaptive solver's pattern: try a step, reject it, retry half of it, grow the next one."""
    bm = BrownianPath(0, 1, (2,), seed=0, levy_area=True)
    t, h, attempts = 0.0, 1e-3, 0
    g = torch.Generator().manual_seed(0)
    while t < 1.0:
        t_new = min(1.0, t + h)
        bm.levy(t, t_new)
        attempts += 1
        if float(torch.rand((), generator=g)) < 0.3:  # rejected: retry half the step
            h *= 0.5
            continue
        t, h = t_new, h * float(1.0 + torch.rand((), generator=g))
    assert bm.n_draws <= attempts * (1 + 2 / CELL_STEPS) + 2


def test_memory_is_bounded_by_the_cache_and_repeated_queries_add_nothing():
    bm = BrownianPath(0, 1, (16,), seed=0, cache_size=32)
    ts = torch.linspace(0, 1, 5001).tolist()
    _draws_along(bm, ts)
    bm(0.1, 0.9)
    nodes = bm.n_nodes
    assert len(bm._cache) + len(bm._pending) <= 32
    for _ in range(3):  # the same queries again: no new intervals, the cache stays bounded
        _draws_along(bm, ts)
        bm(0.1, 0.9)
    assert bm.n_nodes == nodes and len(bm._cache) + len(bm._pending) <= 32


# --- errors -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", PATHS)
def test_query_outside_interval_names_it(cls):
    bm = cls(0.5, 2.0, (3,), levy_area=True)
    for s, t in [(0.4, 1.0), (1.0, 2.1), (-1.0, 3.0), (math.nan, 1.0)]:
        with pytest.raises(ValueError, match=r"\[0\.5, 2\]"):
            bm(s, t)
        with pytest.raises(ValueError, match=r"\[0\.5, 2\]"):
            bm.levy(s, t)


@pytest.mark.parametrize("cls", PATHS)
@pytest.mark.parametrize("t0, t1", [(1.0, 1.0), (1.0, 0.0), (0.0, math.inf), (math.nan, 1.0)])
def test_bad_interval_raises(cls, t0, t1):
    with pytest.raises(ValueError, match="t0 < t1"):
        cls(t0, t1, (3,))


@pytest.mark.parametrize("cls", PATHS)
def test_levy_without_area_raises(cls):
    with pytest.raises(ValueError, match="levy_area=True"):
        cls(0, 1, (3,)).levy(0, 1)


@pytest.mark.parametrize("kwargs, match", [({"n_cells": 0}, "n_cells"), ({"n_cells": 2.5}, "n_cells"),
                                           ({"dt": 0.0}, "dt"), ({"dt": -1e-3}, "dt"), ({"dt": math.nan}, "dt"),
                                           ({"grid": [0.0, math.nan, 1.0]}, "grid"),
                                           ({"cache_size": 2}, "cache_size"), ({"seed": 1.5}, "seed"),
                                           ({"dtype": torch.int64}, "dtype"), ({"dt": 1e-3, "n_cells": 10}, "dt")])
def test_bad_brownian_path_arguments_raise(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        BrownianPath(0, 1, (3,), **kwargs)


@pytest.mark.parametrize("kwargs", [{"n_cells": 0}, {"n_cells": -4}, {"n_cells": 2.5}, {"n_cells": "8"},
                                    {"max_depth": 0}, {"max_depth": 51}])
def test_bad_virtual_tree_arguments_raise(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        VirtualBrownianTree(0, 1, (3,), **kwargs)


# --- dtypes, shapes, devices ------------------------------------------------------------------------------
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("cls", PATHS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_image_shaped_paths_keep_dtype_and_device(cls, dtype, device):
    shape = (2, 3, 8, 8)
    bm = cls(0, 2, shape, seed=0, dtype=dtype, device=device, levy_area=True)
    ts = torch.linspace(0, 2, 41, dtype=F64).tolist()
    incs = grid_increments(bm, ts)
    assert incs.shape == (40, *shape) and incs.dtype == dtype and incs.device.type == device
    w, area = bm.levy(0.3, 1.7)
    assert w.shape == area.shape == shape and w.dtype == area.dtype == dtype and area.device.type == device
    # float32: every tree level and every addition rounds at 2^-24 ≈ 6e-8 relative on values of size
    # O(sqrt(2)·4); 40 additions plus ~10 levels stay below 1e-5
    atol = 1e-5 if dtype == torch.float32 else ADD_TOL
    torch.testing.assert_close(incs.sum(0), bm(0, 2), atol=atol, rtol=0)
    # 40 steps of variance 0.05 over 384 elements: 15360 standardized values
    assert_standard_normal((incs / math.sqrt(0.05)).cpu(), f"{dtype} image increments")


def test_float32_grid_on_float32_path():
    """Any grid works without a knob: a float32 linspace (times off the float64 values by rounding) gives 1000
    increments that add to W(0, 1), each of variance 1/1000, at one split per step."""
    bm = BrownianPath(0, 1, (64,), seed=6)
    ts = torch.linspace(0, 1, 1001, dtype=torch.float32).tolist()
    incs = grid_increments(bm, ts)
    torch.testing.assert_close(incs.sum(0), bm(0, 1), atol=1e-5, rtol=0)  # float32 sum of 1000, as above
    assert_standard_normal(incs * math.sqrt(1000), "float32 grid")


def test_virtual_tree_hits_its_cells_on_a_float64_grid():
    """The order-independent tree costs one draw per step when the grid matches its cells (float64 times)."""
    bm = VirtualBrownianTree(0, 1, (4,), seed=6, n_cells=1000)
    _draws_along(bm, torch.linspace(0, 1, 1001, dtype=F64).tolist())
    assert bm.n_draws <= 1100


# --- FreshNoise -------------------------------------------------------------------------------------------
def test_fresh_noise_variance_and_reproducibility():
    fn = FreshNoise((N_STAT,), generator=torch.Generator().manual_seed(0), dtype=F64)
    assert_standard_normal(fn(0.2, 0.7) / math.sqrt(0.5), "FreshNoise forward")
    assert_standard_normal(fn(0.7, 0.2) / math.sqrt(0.5), "FreshNoise reverse")  # variance |t - s|
    w, area = fn.levy(0.1, 0.4)
    assert_standard_normal(w / math.sqrt(0.3), "FreshNoise W")
    assert_standard_normal(area / math.sqrt(0.3 / 12), "FreshNoise H")
    assert_uncorrelated(w, area, "FreshNoise W, H")

    def draws(seed):
        g = torch.Generator().manual_seed(seed)
        noise = FreshNoise((5, 4), generator=g)
        return torch.stack([noise(0.0, 0.1), noise(0.1, 0.3)])

    a, b, c = draws(3), draws(3), draws(4)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c) and not torch.allclose(a[0] / 0.1**0.5, a[1] / 0.2**0.5)
    assert a.dtype == torch.float32


# --- solve() with a Brownian path -------------------------------------------------------------------------
def test_solve_uses_the_path_increments():
    ou = OrnsteinUhlenbeck(theta=1.5, sigma=0.7)
    x0 = torch.linspace(-1, 1, 12, dtype=F64).reshape(4, 3)
    ts = torch.linspace(0, 1, 51, dtype=F64)
    bm = BrownianPath(0, 1, (4, 3), seed=0, dtype=F64)
    sol = solve(ou, x0, "euler_maruyama", ts=ts, brownian=bm)
    x, grid = x0, ts.tolist()
    for a, b in zip(grid[:-1], grid[1:]):
        x = x - 1.5 * x * (b - a) + 0.7 * bm(a, b)
    # the same float64 operations in the same order: only a few ulp of difference over 50 steps
    torch.testing.assert_close(sol.x, x, atol=1e-13, rtol=0)
    # a decreasing grid uses bm(s, t) = -bm(t, s) on the same path
    back = solve(ou, x0, "euler_maruyama", ts=ts.flip(0), brownian=bm)
    assert torch.isfinite(back.x).all()


def test_solve_image_state_with_float32_path():
    ou = OrnsteinUhlenbeck(theta=1.0, sigma=0.5)
    x0 = torch.ones(2, 3, 8, 8)
    bm = BrownianPath(0, 1, x0.shape, seed=1, levy_area=True)
    for solver in ("euler_maruyama", "sra1"):
        sol = solve(ou, x0, solver, ts=torch.linspace(0, 1, 21), brownian=bm)
        assert sol.x.shape == x0.shape and sol.x.dtype == torch.float32


def test_solve_rejects_mismatched_shape():
    ou = OrnsteinUhlenbeck()
    x0 = torch.zeros(8, 3, dtype=F64)
    with pytest.raises(ValueError, match="shape"):
        solve(ou, x0, "euler_maruyama", ts=torch.linspace(0, 1, 11), brownian=BrownianPath(0, 1, (8, 4), dtype=F64))


@pytest.mark.parametrize("ts", [torch.linspace(0, 1, 11), torch.linspace(-0.1, 0.5, 7), torch.linspace(1, 0, 11)])
def test_solve_rejects_interval_outside_path(ts):
    ou = OrnsteinUhlenbeck()
    x0 = torch.zeros(8, 3, dtype=F64)
    with pytest.raises(ValueError, match="outside"):
        solve(ou, x0, "euler_maruyama", ts=ts, brownian=BrownianPath(0, 0.5, (8, 3), dtype=F64))


def test_sra1_needs_levy_area():
    ou = OrnsteinUhlenbeck()
    x0 = torch.zeros(8, 3, dtype=F64)
    with pytest.raises(ValueError, match="levy_area=True"):
        solve(ou, x0, "sra1", ts=torch.linspace(0, 1, 11), brownian=BrownianPath(0, 1, (8, 3), dtype=F64))
