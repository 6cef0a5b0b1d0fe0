"""The noise sources on their own: BrownianPath (consistent virtual Brownian tree, optional Lévy area) and
FreshNoise, plus how ``solve`` checks a Brownian path against the problem.

Statistical tolerances: with a fixed seed every check below is deterministic; each bound is chosen so that
a correct implementation would fail it for a random seed with probability about 1e-3 (KS tests at
p > 1e-3) or far less (5 standard errors: ~6e-7), while a wrong variance, a missing factor or a correlation
that the tree construction should have removed moves the statistic by far more than that.
"""

import math

import pytest
import torch
from scipy import stats

from sdekit import BrownianPath, FreshNoise, solve
from sdekit.analytic import OrnsteinUhlenbeck

F64 = torch.float64
N_STAT = 20_000  # elements per statistical check


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


# --- determinism ------------------------------------------------------------------------------------------
def test_same_seed_bitwise_identical_in_any_query_order():
    ts = torch.linspace(0, 1, 65, dtype=F64).tolist()
    a = BrownianPath(0, 1, (3, 5), seed=7, n_cells=4)
    forward = grid_increments(a, ts)
    # a tiny cache forces ancestors to be evicted and recomputed; random order defeats any sequential reuse
    b = BrownianPath(0, 1, (3, 5), seed=7, n_cells=4, cache_size=2)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0)).tolist()
    shuffled = {i: b(ts[i], ts[i + 1]) for i in perm}
    assert torch.equal(forward, torch.stack([shuffled[i] for i in range(64)]))
    # off-grid points, queried twice in opposite orders on fresh paths
    c, d = BrownianPath(0, 1, (3, 5), seed=7, n_cells=4), BrownianPath(0, 1, (3, 5), seed=7, n_cells=4)
    first = [c(0.3, 0.71), c(0.05, 0.999)]
    second = [d(0.05, 0.999), d(0.3, 0.71)][::-1]
    assert all(torch.equal(x, y) for x, y in zip(first, second))


def test_levy_area_deterministic_in_any_query_order():
    pairs = [(0.0, 0.25), (0.6, 0.9), (0.3, 0.71), (0.0, 1.0)]
    a = BrownianPath(0, 1, (4,), seed=3, levy_area=True, dtype=F64)
    b = BrownianPath(0, 1, (4,), seed=3, levy_area=True, dtype=F64, cache_size=1)
    first = [a.levy(s, t) for s, t in pairs]
    second = [b.levy(s, t) for s, t in reversed(pairs)][::-1]
    for (w1, h1), (w2, h2) in zip(first, second):
        assert torch.equal(w1, w2) and torch.equal(h1, h2)


def test_different_seeds_differ():
    a = BrownianPath(0, 1, (100,), seed=0, n_cells=8)
    b = BrownianPath(0, 1, (100,), seed=1, n_cells=8)
    for s, t in [(0.0, 1.0), (0.125, 0.25), (0.3, 0.71)]:
        # two independent N(0, h) vectors of 100 elements are never within 1e-3·sqrt(h) everywhere
        assert not torch.allclose(a(s, t), b(s, t), atol=1e-3 * math.sqrt(t - s), rtol=0)


def test_call_and_levy_agree_and_empty_interval_is_zero():
    bm = BrownianPath(0, 1, (6,), seed=2, levy_area=True, dtype=F64, n_cells=3)
    for s, t in [(0.0, 1.0), (0.1, 0.45), (1 / 3, 2 / 3)]:
        assert torch.equal(bm(s, t), bm.levy(s, t)[0])
    assert torch.equal(bm(0.4, 0.4), torch.zeros(6, dtype=F64))


# --- additivity -------------------------------------------------------------------------------------------
# Float64 rounding: the tree's children reproduce their parent up to a few ulp per level and a sum of
# at most 2000 terms of size O(1) adds at most 2000 · 2.2e-16 ≈ 4.4e-13, so 1e-12 is a rounding bound.
ADD_TOL = 1e-12


def test_nested_dyadic_grids_add_up():
    bm = BrownianPath(0, 1, (16,), seed=11, dtype=F64)
    coarse = grid_increments(bm, [0.0, 1.0])
    for k in range(1, 11):
        fine = grid_increments(bm, torch.linspace(0, 1, 2**k + 1, dtype=F64).tolist())
        torch.testing.assert_close(fine[0::2] + fine[1::2], coarse, atol=ADD_TOL, rtol=0)
        coarse = fine
    torch.testing.assert_close(coarse.sum(0), bm(0, 1), atol=ADD_TOL, rtol=0)


@pytest.mark.parametrize("levy_area", [False, True])
def test_cells_grids_1000_and_2000_add_up(levy_area):
    bm = BrownianPath(0, 1, (16,), seed=5, dtype=F64, n_cells=1000, levy_area=levy_area)
    w1000 = grid_increments(bm, torch.linspace(0, 1, 1001, dtype=F64).tolist())
    w2000 = grid_increments(bm, torch.linspace(0, 1, 2001, dtype=F64).tolist())
    torch.testing.assert_close(w2000[0::2] + w2000[1::2], w1000, atol=ADD_TOL, rtol=0)
    torch.testing.assert_close(w1000.sum(0), bm(0, 1), atol=ADD_TOL, rtol=0)
    torch.testing.assert_close(w2000.sum(0), bm(0, 1), atol=ADD_TOL, rtol=0)
    # the grid increments are a Brownian motion with steps of variance 1/1000 and 1/2000 (pooled 5 SE)
    assert_standard_normal(w1000 * math.sqrt(1000), "1000-step grid")
    assert_standard_normal(w2000 * math.sqrt(2000), "2000-step grid")


@pytest.mark.parametrize("n_cells", [1, 1000])
@pytest.mark.parametrize("points", [(0.3, 0.5, 0.71), (0.30037, 0.5, 0.7101), (0.1, 0.2, 0.3, 0.41, 0.9)])
def test_off_grid_points_add_up(n_cells, points):
    bm = BrownianPath(0, 1, (16,), seed=9, dtype=F64, n_cells=n_cells)
    parts = grid_increments(bm, list(points))
    torch.testing.assert_close(parts.sum(0), bm(points[0], points[-1]), atol=ADD_TOL, rtol=0)
    # reverse queries are exact negatives
    assert torch.equal(bm(points[-1], points[0]), -bm(points[0], points[-1]))


# --- normality and independence ---------------------------------------------------------------------------
@pytest.mark.parametrize("n_cells", [1, 7])
@pytest.mark.parametrize("interval", [(0.0, 1.0), (0.25, 0.5), (0.3, 0.71), (0.9, 0.9 + 1 / 1024)])
def test_increments_are_normal_with_variance_dt(n_cells, interval):
    s, t = interval
    bm = BrownianPath(0, 1, (N_STAT,), seed=21, dtype=F64, n_cells=n_cells)
    assert_standard_normal(bm(s, t) / math.sqrt(t - s), f"W over [{s}, {t}]")


def test_disjoint_increments_uncorrelated():
    bm = BrownianPath(0, 1, (N_STAT,), seed=4, dtype=F64, n_cells=3)
    points = [0.0, 0.3, 1 / 3, 0.5, 0.71, 1.0]
    incs = grid_increments(bm, points)
    for i in range(len(incs)):
        for j in range(i + 1, len(incs)):
            assert_uncorrelated(incs[i], incs[j], f"intervals {i} and {j}")
    # siblings of the tree: a wrong bridge variance would correlate them
    assert_uncorrelated(bm(0.0, 0.5 / 3), bm(0.5 / 3, 1 / 3), "siblings")


# --- Lévy area --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("interval", [(0.0, 1.0), (0.0, 0.5), (0.5, 0.75), (0.3, 0.71)])
def test_levy_area_distribution_and_independence(interval):
    s, t = interval
    h = t - s
    bm = BrownianPath(0, 1, (N_STAT,), seed=8, dtype=F64, levy_area=True)
    w, area = bm.levy(s, t)
    assert_standard_normal(w / math.sqrt(h), f"W over [{s}, {t}]")
    assert_standard_normal(area / math.sqrt(h / 12), f"H over [{s}, {t}]")  # H ~ N(0, h/12)
    assert_uncorrelated(w, area, f"W and H over [{s}, {t}]")


def exact_cov_w_area(a: float, b: float, s: float, t: float) -> float:
    """Cov(W_{a,b}, H_{s,t}) for [a, b] ⊂ [s, t]: with L = b - a, h = t - s and
    Cov(W_{a,b}, W_r - W_s) = clip(r - a, 0, L), the definition of H integrates to (L²/2 + (t - b) L - L h/2)/h."""
    length, h = b - a, t - s
    return (length**2 / 2 + (t - b) * length - length * h / 2) / h


@pytest.mark.parametrize("sub, n", [((0.0, 0.5), 100_000), ((0.5, 1.0), 100_000), ((0.0, 0.25), 100_000),
                                    ((0.375, 0.8125), 100_000), ((0.75, 0.875), 100_000),
                                    ((0.3, 0.71), 20_000)])  # off-grid ends descend ~40 levels: fewer elements
def test_levy_area_covariance_with_sub_increments(sub, n):
    """The tree's midpoint split must reproduce the joint law of (W on a sub-interval, H of the whole).

    Cov(W_{0,1/2}, H_{0,1}) = 1/8 (correlation 0.87) is what the conditional mean E[D | H] = 3H encodes.
    The sample covariance of n Gaussian pairs has variance (σ_a² σ_b² + c²)/n: 5 SE. n = 100000 makes the
    bound at most 0.004 against covariances of size 0.03-0.125 (E[D | H] = 2.9 H instead of 3 H moves
    Cov(W_{0,1/2}, H) by 0.004 and fails).
    """
    bm = BrownianPath(0, 1, (n,), seed=17, dtype=F64, levy_area=True)
    _, area = bm.levy(0, 1)
    w = bm(*sub)
    exact = exact_cov_w_area(*sub, 0.0, 1.0)
    sample = float((w * area).mean())  # both have mean zero
    se = math.sqrt(((sub[1] - sub[0]) / 12 + exact**2) / n)
    assert abs(sample - exact) < 5 * se, f"Cov(W{sub}, H(0, 1)) = {sample:.5f}, exact {exact:.5f}, SE {se:.5f}"


def test_levy_areas_of_disjoint_intervals_uncorrelated():
    bm = BrownianPath(0, 1, (N_STAT,), seed=12, dtype=F64, levy_area=True)
    (w1, h1), (w2, h2) = bm.levy(0, 0.5), bm.levy(0.5, 1)
    for a, b, what in [(h1, h2, "H1, H2"), (h1, w2, "H1, W2"), (w1, h2, "W1, H2"), (w1, w2, "W1, W2")]:
        assert_uncorrelated(a, b, what)


@pytest.mark.parametrize("n_cells", [1, 1000])
def test_levy_area_matches_integral_of_fine_path(n_cells):
    """H_{0,1} = ∫_0^1 (W_r - r W_1) dr, from the same path's fine grid by the trapezoid rule.

    On a cell of length h the trapezoid rule misses exactly ∫(W_r - linear interpolant) dr = h H_cell, so
    H - trapezoid = Σ h H_cell: an exact identity of the path (checked to rounding), and a N(0, 1/(12 n²))
    error per element (the n cell areas are independent N(0, h/12), h = 1/n), checked in RMS.
    """
    n_fine, n_el = (256, 4000) if n_cells == 1 else (1000, 2000)
    bm = BrownianPath(0, 1, (n_el,), seed=31, dtype=F64, levy_area=True, n_cells=n_cells)
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


@pytest.mark.parametrize("split", [(0.0, 0.5, 1.0), (0.3, 0.5, 0.71), (0.0, 0.1, 1.0)])
def test_levy_area_combines_over_adjacent_intervals(split):
    # (h1 + h2) H = h1 H1 + h2 H2 + (h2/2) W1 - (h1/2) W2
    a, m, b = split
    bm = BrownianPath(0, 1, (64,), seed=13, dtype=F64, levy_area=True)
    (w1, area1), (w2, area2) = bm.levy(a, m), bm.levy(m, b)
    h1, h2 = m - a, b - m
    w, area = bm.levy(a, b)
    torch.testing.assert_close(w1 + w2, w, atol=ADD_TOL, rtol=0)
    combined = (h1 * area1 + h2 * area2 + 0.5 * h2 * w1 - 0.5 * h1 * w2) / (h1 + h2)
    torch.testing.assert_close(combined, area, atol=ADD_TOL, rtol=0)


def test_levy_reverse_query():
    bm = BrownianPath(0, 1, (8,), seed=1, dtype=F64, levy_area=True, n_cells=5)
    for s, t in [(0.0, 1.0), (0.2, 0.4), (0.33, 0.77)]:
        w, area = bm.levy(s, t)
        w_rev, area_rev = bm.levy(t, s)
        assert torch.equal(w_rev, -w) and torch.equal(area_rev, area)


# --- errors -----------------------------------------------------------------------------------------------
def test_query_outside_interval_names_it():
    bm = BrownianPath(0.5, 2.0, (3,), levy_area=True)
    for s, t in [(0.4, 1.0), (1.0, 2.1), (-1.0, 3.0)]:
        with pytest.raises(ValueError, match=r"\[0\.5, 2\]"):
            bm(s, t)
        with pytest.raises(ValueError, match=r"\[0\.5, 2\]"):
            bm.levy(s, t)


@pytest.mark.parametrize("t0, t1", [(1.0, 1.0), (1.0, 0.0), (0.0, math.inf), (math.nan, 1.0)])
def test_bad_interval_raises(t0, t1):
    with pytest.raises(ValueError, match="t0 < t1"):
        BrownianPath(t0, t1, (3,))


def test_levy_without_area_raises():
    with pytest.raises(ValueError, match="levy_area=True"):
        BrownianPath(0, 1, (3,)).levy(0, 1)


@pytest.mark.parametrize("n_cells", [0, -4, 2.5, "8"])
def test_bad_n_cells_raises(n_cells):
    with pytest.raises(ValueError, match="n_cells"):
        BrownianPath(0, 1, (3,), n_cells=n_cells)


@pytest.mark.parametrize("interval", [(0.3, 0.3 + 1e-9), (0.123456, 0.123456 + 1e-10)])
def test_short_intervals_are_resolved(interval):
    # away from coarse tree nodes, intervals far below the 1e-7 float32 snapping distance are proper increments
    s, t = interval
    bm = BrownianPath(0, 1, (N_STAT,), seed=14, dtype=F64)
    assert_standard_normal(bm(s, t) / math.sqrt(t - s), f"W over [{s}, {t}]")


@pytest.mark.parametrize("interval", [(0.5, 0.5 + 5e-8), (0.5 - 5e-8, 0.5 + 5e-8), (0.0, 1e-8)])
def test_intervals_inside_the_snapping_distance_of_a_coarse_node_are_zero(interval):
    # documented resolution: points within min(1e-7, 1e-4·2^-l) of a level-l node are that node (so float32
    # grid times hit their cells); an interval with both ends snapped to one node has a zero increment
    s, t = interval
    bm = BrownianPath(0, 1, (16,), seed=14, dtype=F64)
    assert torch.equal(bm(s, t), torch.zeros(16, dtype=F64))


def test_short_step_next_to_dyadic_point_adds_up():
    """Each point is snapped by itself (0.5 + 5e-8 lies within the 1e-7 snapping distance of the node 0.5),
    so the split still adds up exactly and the short step contributes a zero increment."""
    bm = BrownianPath(0, 1, (16,), seed=9, dtype=F64)
    parts = grid_increments(bm, [0.3, 0.5, 0.5 + 5e-8, 0.71])
    # the missing piece is N(0, 5e-8) per element (2e-4 std): far above the 1e-12 rounding bound
    torch.testing.assert_close(parts.sum(0), bm(0.3, 0.71), atol=ADD_TOL, rtol=0)


# --- dtypes, shapes, devices ------------------------------------------------------------------------------
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_image_shaped_paths_keep_dtype_and_device(dtype, device):
    shape = (2, 3, 8, 8)
    bm = BrownianPath(0, 2, shape, seed=0, dtype=dtype, device=device, n_cells=10, levy_area=True)
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


def test_float32_path_on_float32_grid_hits_the_cells():
    # float32 grid times are off the cell boundaries by float32 rounding (≤ 6e-8); they must still snap
    # to the cells, so the 1000 increments add to W(0, 1) and each has variance 1/1000
    bm = BrownianPath(0, 1, (64,), seed=6, n_cells=1000)
    ts = torch.linspace(0, 1, 1001, dtype=torch.float32).tolist()
    incs = grid_increments(bm, ts)
    # snapped to the same tree nodes as the exact float64 grid: bitwise the same increments
    assert torch.equal(incs, grid_increments(bm, torch.linspace(0, 1, 1001, dtype=F64).tolist()))
    torch.testing.assert_close(incs.sum(0), bm(0, 1), atol=1e-5, rtol=0)  # float32 sum of 1000, as above
    assert_standard_normal(incs * math.sqrt(1000), "float32 grid")


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
    bm = BrownianPath(0, 1, (4, 3), seed=0, dtype=F64, n_cells=50)
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
    bm = BrownianPath(0, 1, x0.shape, seed=1, n_cells=20, levy_area=True)
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
