import pytest
import torch

import sdekit
from sdekit.analytic import GaussianMixture


def test_optimized_grid_beats_standard_spacings_on_fresh_trajectories():
    p = sdekit.VP()
    m = GaussianMixture.preset("ring2d").model(p)
    r = sdekit.optimize_grid(m, "dpmpp_2m", 6, n_pilot=48, n_fresh=96, max_evals=80, seed=1)
    assert r.rmse_pilot <= r.rmse_pilot_baseline
    # tuned on the pilots only; it must also hold on x_T it never saw (measured ~2-3x better at 10 steps)
    assert r.rmse_fresh < r.rmse_fresh_baseline
    t = r.t
    assert bool((t[1:] < t[:-1]).all()) and float(t[0]) == p.t_max and float(t[-1]) == p.t_min
    x = p.prior_sample((4, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sol = sdekit.sample(m, x, "dpmpp_2m", grid=r.grid)
    assert sol.stats["nfe"] == 6
    assert set(r.to_dict()) >= {"t", "grid", "rmse_fresh", "baseline"}


def test_index_models_get_index_grids_and_bad_input():
    p = sdekit.VP.from_betas(torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    gmm = GaussianMixture.preset("ring2d")
    exact = gmm.model(p)
    m = sdekit.ScoreModel(lambda x, i: exact.eps(x, p.t_from_index(i)), p, prediction="eps", time_input="index",
                          sample_shape=(2,))
    # the discrete schedule's log alpha has 1000 kinks, where the PF-ODE's drift in t jumps: the reference
    # ("auto") integrates in log(sigma/alpha) instead, where this model's drift is smooth, at the default 1e-10
    r = sdekit.optimize_grid(m, "ddim", 4, n_pilot=8, n_fresh=8, candidates=30, refine=10)
    torch.testing.assert_close(r.grid, p.index_from_t(r.t))
    with pytest.raises(ValueError, match="unknown reference 'x'"):
        sdekit.optimize_grid(m, "ddim", 4, reference="x")
    with pytest.raises(ValueError, match="deterministic"):
        sdekit.optimize_grid(m, "ddpm", 4)
    with pytest.raises(ValueError, match="steps"):
        sdekit.optimize_grid(m, "ddim", 0)


def test_shortest_path_is_the_exact_minimum_over_all_grids():
    """The DP's path against brute force over every K-step path through 8 candidates (random costs)."""
    import itertools

    import numpy as np

    from sdekit.bench.grid_opt import _shortest_path

    rng = np.random.default_rng(0)
    n = 8
    cost = np.triu(rng.uniform(0.1, 1.0, (n, n)), 1)
    cost[np.tril_indices(n)] = np.inf
    for k in (1, 3, 5, 7):
        best = min(itertools.combinations(range(1, n - 1), k - 1),
                   key=lambda mid: sum(cost[a, b] for a, b in zip((0, *mid), (*mid, n - 1))))
        path = _shortest_path(cost, k)
        assert path == [0, *best, n - 1]


def test_dp_grid_without_polish_and_nelder_mead_and_bad_input():
    p = sdekit.VP()
    m = GaussianMixture.preset("ring2d").model(p)
    # DDIM's one-step costs are exact for DDIM: the DP grid alone beats the standard spacings (0.057 vs 0.076 at
    # 10 steps on 128 pilots; here 32 pilots, 6 steps)
    r = sdekit.optimize_grid(m, "ddim", 6, n_pilot=32, n_fresh=64, refine=0, candidates=40, seed=2)
    assert r.method == "dp" and r.chosen == "optimised" and r.evaluations == 0
    assert r.rmse_pilot < r.rmse_pilot_baseline and r.rmse_fresh < r.rmse_fresh_baseline
    assert len(r.t) == 7 and bool((r.t[1:] < r.t[:-1]).all())
    nm = sdekit.optimize_grid(m, "ddim", 4, method="nelder_mead", n_pilot=16, n_fresh=16, max_evals=20)
    assert nm.method == "nelder_mead" and nm.evaluations <= 25 and nm.rmse_pilot <= nm.rmse_pilot_baseline
    with pytest.raises(ValueError, match="method"):
        sdekit.optimize_grid(m, "ddim", 4, method="gits")
    with pytest.raises(ValueError, match="candidates must be an int >= steps"):
        sdekit.optimize_grid(m, "ddim", 10, candidates=5)
    with pytest.raises(ValueError, match="n_pilot"):
        sdekit.optimize_grid(m, "ddim", 4, n_pilot=0)


def test_grid_files_round_trip_through_the_commands(tmp_path, capsys):
    """sdekit grid writes a grid file; sdekit compare --grid runs the configurations it holds on those grids
    (the record's RMSE equals a direct sample on the file's grid) and the rest on --spacing."""
    import json

    from sdekit.bench.grid_opt import load_grids
    from sdekit.cli import main

    gfile = tmp_path / "g.json"
    assert main(["grid", "--solvers", "unipc", "--steps", "4", "--pilots", "16", "--fresh", "16",
                 "--candidates", "20", "--refine", "10", "--out", str(gfile), "--no-progress"]) == 0
    (entry,) = load_grids(gfile)
    assert entry["solver"] == "unipc" and entry["steps"] == 4 and entry["model"] == "ring2d/vp"
    out = tmp_path / "cmp"
    assert main(["compare", "--solvers", "unipc", "--nfe", "4,8", "--samples", "16", "--grid", str(gfile),
                 "--out", str(out), "--no-plots", "--no-progress"]) == 0
    assert "grid file" in capsys.readouterr().out
    recs = {r["nfe_budget"]: r for r in json.loads((out / "results.json").read_text())["records"]}
    assert recs[4]["spacing"] == "grid file" and recs[8]["spacing"] == "log_snr"
    p = sdekit.VP()
    m = GaussianMixture.preset("ring2d").model(p)
    # compare draws x_T per global sample index (the sharded draw, sdekit.distributed)
    x_T = p.prior_sample((16, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64, sample_offset=0)
    ref = sdekit.analytic.reference_solve(sdekit.probability_flow(p, m), x_T, p.t_max, p.t_min, rtol=1e-10,
                                          atol=1e-10)
    direct = sdekit.sample(m, x_T, "unipc", grid=torch.tensor(entry["t"], dtype=torch.float64)).x
    assert recs[4]["rmse_vs_reference"] == pytest.approx(float((direct - ref).pow(2).mean().sqrt()), rel=1e-6)
    # bad files name what is wrong
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "sdekit-grids/1", "grids": [{"solver": "unipc", "steps": 2,
                                                                       "t": [1.0, 0.5, 0.7]}]}))
    with pytest.raises(ValueError, match="strictly decreasing"):
        load_grids(bad)
    bad.write_text("[]")
    with pytest.raises(ValueError, match="not an sdekit grid file"):
        load_grids(bad)
    assert main(["compare", "--solvers", "ddim", "--nfe", "4", "--samples", "16", "--grid", str(gfile),
                 "--out", str(out), "--no-plots", "--no-progress"]) == 2
    assert "matches a solver and step count" in capsys.readouterr().err
    short = tmp_path / "short.json"  # a grid that stops before the comparison's t_min
    short.write_text(json.dumps({"format": "sdekit-grids/1", "grids": [
        {"solver": "unipc", "steps": 4, "t": [1.0, 0.5, 0.2, 0.1, 0.05]}]}))
    assert main(["compare", "--solvers", "unipc", "--nfe", "4", "--samples", "16", "--grid", str(short),
                 "--out", str(out), "--no-plots", "--no-progress"]) == 2
    assert "runs from t = 1 to 0.05" in capsys.readouterr().err


def test_stratified_pilots_keep_every_hard_trajectory_and_weight_the_rest():
    """pool=: the n_pilot // 4 trajectories with the largest error of the best standard spacing are all kept
    (weight 1), the rest is a uniform subsample weighted by the inverse sampling fraction, so the weights sum
    to the pool size and a weighted mean over the pilots estimates the pool's mean without bias; with
    pool == n_pilot it is the pool's mean exactly."""
    from sdekit.analytic import reference_solve_log_snr
    from sdekit.bench.grid_opt import _rms, _stratified_pilots
    from sdekit.schedules import time_grid
    from sdekit.solvers import get

    p = sdekit.VP()
    m = GaussianMixture.preset("ring2d").model(p)
    x = p.prior_sample((400, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref = reference_solve_log_snr(m, x, p.t_max, p.t_min, rtol=1e-8, atol=1e-8)
    s = get("dpmpp_2m")
    pilots, w = _stratified_pilots(m, s, x, ref, 100, 4, p.t_max, p.t_min, torch.Generator().manual_seed(0))
    assert pilots.shape == (100, 2) and float(w.sum()) == 400.0
    assert torch.equal(w[:25], torch.ones(25, dtype=torch.float64))
    assert torch.allclose(w[25:], torch.full((75,), 5.0, dtype=torch.float64))
    # the kept hard ones are the 25 largest errors of the best standard spacing
    outs = [sdekit.sample(m, x, s, grid=time_grid(p, 4, sp)).x for sp in ("time", "log_snr", "quadratic", "karras")]
    best = min(outs, key=lambda out: float((out - ref).pow(2).mean()))
    errs = (best - ref).pow(2).mean(1)
    top = set(torch.argsort(errs, descending=True)[:25].tolist())
    rows = {tuple(r) for r in x[sorted(top)].tolist()}
    assert {tuple(r) for r in pilots[:25].tolist()} == rows
    # pool == n_pilot: every trajectory kept once, the weighted RMS is the plain one
    all_p, all_w = _stratified_pilots(m, s, x, ref, 400, 4, p.t_max, p.t_min, torch.Generator().manual_seed(0))
    assert float(all_w.sum()) == 400.0 and torch.equal(all_w, torch.ones(400, dtype=torch.float64))
    idx = [next(i for i in range(400) if torch.equal(x[i], r)) for r in all_p[:5]]
    assert len(set(idx)) == 5
    assert abs(_rms(best - ref, None) - _rms(best - ref, torch.ones(400, dtype=torch.float64))) < 1e-15
    r = sdekit.optimize_grid(m, "dpmpp_2m", 4, n_pilot=32, n_fresh=32, pool=128, candidates=20, refine=10)
    assert r.t.shape == (5,) and r.rmse_pilot <= r.rmse_pilot_baseline
    with pytest.raises(ValueError, match=r"pool must be an int >= n_pilot \(32\)"):
        sdekit.optimize_grid(m, "dpmpp_2m", 4, n_pilot=32, pool=16)
