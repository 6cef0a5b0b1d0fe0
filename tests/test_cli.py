import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "sdekit", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def test_info_lists_the_registry():
    from sdekit.solvers import REGISTRY

    r = run("info")
    assert r.returncode == 0
    for name in REGISTRY:
        assert name in r.stdout


SCHEMA = {"solver": str, "kind": str, "nfe_budget": int, "steps": int, "nfe": int, "wall_s": float,
          "spacing": str, "samples": int, "seed": int, "t_end": float, "model": str, "config_key": str,
          "finite": bool}


def _check_schema(rec):
    for key, typ in SCHEMA.items():
        assert isinstance(rec[key], typ), (key, rec[key])
    if rec["kind"] == "deterministic":
        assert isinstance(rec["rmse_vs_reference"], float)


def test_compare_end_to_end_and_schema(tmp_path):
    r = run("compare", "--solvers", "ddim,dpmpp_2m,ddpm", "--nfe", "5,20", "--samples", "64", "--out", str(tmp_path),
            "--no-progress")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "results.json").read_text())
    recs = res["records"]
    assert len(recs) == 6
    for rec in recs:
        _check_schema(rec)
    by = {(r["solver"], r["nfe_budget"]): r for r in recs}
    # more NFE, smaller error against the reference
    assert by[("dpmpp_2m", 20)]["rmse_vs_reference"] < by[("dpmpp_2m", 5)]["rmse_vs_reference"]
    assert "sliced_w2" in by[("ddpm", 20)] and by[("ddpm", 20)]["sliced_w2_stderr"] > 0
    assert (tmp_path / "rmse_vs_reference_vs_nfe.png").exists() and (tmp_path / "samples.png").exists()
    assert "RMSE" in r.stdout and "ddim" in r.stdout


def test_user_model_factory_is_loaded(tmp_path):
    r = run("compare", "--model", "tests.fixtures.user_models:gaussian_eps_net", "--solvers", "dpmpp_2m",
            "--nfe", "10", "--samples", "16", "--out", str(tmp_path), "--no-progress", "--no-plots")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "results.json").read_text())["records"][0]
    assert rec["model"] == "tests.fixtures.user_models:gaussian_eps_net" and rec["nfe"] == 10


def test_kill_and_resume(tmp_path):
    args = [sys.executable, "-m", "sdekit", "compare", "--solvers", "ddim,dpm_solver_2,dpmpp_2m,unipc,ddpm",
            "--nfe", "10,20,40,80", "--samples", "256", "--out", str(tmp_path), "--no-progress", "--no-plots"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rec_dir = tmp_path / "records"
    deadline = time.time() + 300
    def finished():  # a record being written is a .tmp-*.json file until its rename: not finished
        return [p for p in rec_dir.glob("*.json") if not p.name.startswith(".")] if rec_dir.exists() else []

    while time.time() < deadline and len(finished()) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in rec_dir.glob("*.json") if not p.name.startswith(".")}
    assert 3 <= len(done) < 20
    for name in done:
        json.loads((rec_dir / name).read_text())  # every record that exists is complete
    r = subprocess.run(args + ["--resume"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    after = {p.name: p.stat().st_mtime_ns for p in rec_dir.glob("*.json") if not p.name.startswith(".")}
    assert not [p for p in rec_dir.iterdir() if p.name.startswith(".tmp-")]  # a killed run's temp file is gone
    assert len(after) == 20
    assert all(after[k] == v for k, v in done.items())  # nothing that finished was recomputed


def test_order_command(tmp_path):
    r = run("order", "--problem", "gbm", "--samples", "500", "--out", str(tmp_path), "--no-plots")
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((tmp_path / "order-gbm-strong.json").read_text())
    assert {x["solver"] for x in res["records"]} == {"euler_maruyama", "milstein"}
    assert all(x["passed"] for x in res["records"]) and "PASS" in r.stdout


def test_bad_arguments_give_one_line_and_nonzero_exit(tmp_path):
    cases = [
        ["compare", "--nfe", "0"],
        ["compare", "--solvers", "dpmpp_9m"],
        ["compare", "--preset", "moons"],
        ["compare", "--samples", "0"],
        ["compare", "--reference-rtol", "0"],  # not silently the default
        ["compare", "--model", "tests.fixtures.user_models:not_a_model"],
        ["compare", "--model", "no_such_module_xyz:factory"],
        ["order", "--steps", "8"],
    ]
    for args in cases:
        r = run(*args, "--out", str(tmp_path), "--no-plots")
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.strip().startswith("sdekit: error:"), (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, (args, r.stderr)


def test_likelihood_command(tmp_path):
    r = run("likelihood", "--samples", "8", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "likelihood.json").read_text())
    # exact divergence at rtol 1e-5: the estimate is within 1e-3 nats of the exact density (measured 2e-5)
    assert rec["rms_error"] < 1e-3 and abs(rec["mean_log_prob"] - rec["mean_exact_log_prob"]) < 1e-3


def test_compare_on_an_image_model_writes_grids_and_a_checked_reference(tmp_path):
    r = run("compare", "--model", "tests.fixtures.user_models:gaussian_image_net", "--solvers", "ddim,dpmpp_2m",
            "--nfe", "5,10", "--samples", "16", "--out", str(tmp_path), "--no-progress", "--reference-rtol", "1e-9")
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "results.json").read_text())
    ref = res["reference"]
    assert ref["rtol"] == 1e-9 and abs(ref["check_rtol"] - 1e-7) < 1e-20 and ref["nfe"] > 0 and ref["check_nfe"] > 0
    # The check is a real comparison: two DOP853 solves 100x apart in tolerance differ, but by far less than
    # any 5-step sampler's error.
    assert 0 < ref["check_rmse"] < 1e-5
    assert all(rec["rmse_vs_reference"] > 100 * ref["check_rmse"] for rec in res["records"])
    # One grid per solver at the middle NFE (10 of [5, 10]), the reference's, and the combined picture.
    for name in ("samples-reference-DOP853.png", "samples-ddim-10.png", "samples-dpmpp_2m-10.png", "samples.png"):
        assert (tmp_path / name).exists(), name
    assert "reference: DOP853 rtol = atol = 1e-09" in r.stdout


def test_tile_lays_out_images_row_major():
    import numpy as np

    from sdekit.bench.compare import tile

    images = np.stack([np.full((1, 2, 2), v) for v in (-1.0, 0.0, 1.0, 3.0, -5.0)])
    grid = tile(images, cols=2, pad=1)
    assert grid.shape == (3 * 3 - 1, 2 * 3 - 1, 1)
    assert (grid[0:2, 0:2] == 0).all() and (grid[0:2, 3:5] == 0.5).all()  # -1 -> 0 (black), 0 -> 0.5
    assert (grid[3:5, 0:2] == 1).all() and (grid[3:5, 3:5] == 1).all()    # 1 -> 1, 3 clipped to 1
    assert (grid[6:8, 0:2] == 0).all() and (grid[6:8, 3:5] == 1).all()    # -5 clipped; empty cell is padding
    assert (grid[2, :] == 1).all() and (grid[:, 2] == 1).all()            # padding is white


def test_likelihood_on_zoo_heldout_data(tmp_path):
    # bits/dim of two held-out digits (Hutchinson, one probe): finite, and below the 4.09 bits of a uniform law
    # on the 17 levels (the trained model measures about 2.0); and nats on fresh two-moons points.
    r = run("likelihood", "--model", "digits-vp-eps", "--samples", "2", "--divergence", "hutchinson",
            "--n-probes", "1", "--rtol", "1e-4", "--out", str(tmp_path / "d"), "--no-progress")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "d" / "likelihood.json").read_text())
    assert rec["samples"] == 2 and rec["heldout_available"] == 297 and rec["quantization"]["levels"] == 17
    assert 0 < rec["bits_per_dim"] < rec["uniform_bits_per_dim"] and len(rec["bpd_per_image"]) == 2
    assert "bits/dim" in r.stdout and "Warning" not in r.stderr
    r = run("likelihood", "--model", "moons-vp-eps", "--samples", "32", "--rtol", "1e-4", "--out",
            str(tmp_path / "m"), "--no-progress")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "m" / "likelihood.json").read_text())
    # two moons of noise 0.05 have a mean log-density near 0 nats (measured -0.28 on 512 points)
    assert -2 < rec["mean_log_prob"] < 2 and rec["mean_log_prob_stderr"] > 0
    r = run("likelihood", "--model", "tests.fixtures.user_models:gaussian_eps_net", "--out", str(tmp_path))
    assert r.returncode == 2 and "needs data" in r.stderr


def test_compare_distance_to_heldout_data(tmp_path):
    """For a non-analytic model, the distribution distance is to the given held-out data, with the
    finite-sample floor beside it; data from another distribution is measurably farther."""
    import torch

    from sdekit.bench.compare import ComparisonConfig, run_comparison
    from tests.fixtures.user_models import gaussian_eps_net

    model = gaussian_eps_net()  # data N((0.5, -0.5), diag(0.2, 0.1)) (variances)
    gen = torch.Generator().manual_seed(5)
    data = torch.tensor([0.5, -0.5], dtype=torch.float64) + torch.tensor([0.2, 0.1]).sqrt() * torch.randn(
        512, 2, generator=gen, dtype=torch.float64)
    cfg = ComparisonConfig(solvers=["ddpm", "dpmpp_2m"], nfe=[50], samples=256, reference_check=False)
    right = run_comparison(model, cfg, str(tmp_path / "a"), progress=False, log=lambda m: None, data=data)
    wrong = run_comparison(model, cfg, str(tmp_path / "b"), progress=False, log=lambda m: None, data=data + 0.3)
    summary = json.loads((tmp_path / "a" / "results.json").read_text())
    assert summary["distance"]["to"] == "256 held-out data points" and summary["distance"]["floor"] > 0
    for r, w in zip(right, wrong):
        # shifting by (0.3, 0.3) moves a projection on the unit direction (cos a, sin a) by 0.3 (cos a + sin a),
        # whose mean square over directions is 0.09: SW2 >= 0.3 for the shifted data, up to sampling noise
        assert r["sliced_w2"] < 0.1 < 0.2 < w["sliced_w2"], (r["sliced_w2"], w["sliced_w2"])
        assert "mean_log_p_data" not in r
    import pytest

    with pytest.raises(ValueError, match=r"data must hold samples of shape \(2,\)"):
        run_comparison(model, cfg, str(tmp_path / "c"), progress=False, log=lambda m: None, data=data[:, :1])


def test_per_sample_rms_and_median_error():
    import torch

    from sdekit.bench.metrics import per_sample_rms, rmse

    ref = torch.zeros(4, 2, 3)
    x = ref.clone()
    x[0] = 2.0  # one bad sample: per-sample RMS 2, the others 0
    per = per_sample_rms(x, ref)
    assert per.tolist() == [2.0, 0.0, 0.0, 0.0]
    assert abs(rmse(x, ref) - float(per.pow(2).mean().sqrt())) < 1e-12 and abs(rmse(x, ref) - 1.0) < 1e-12
    assert float(per.median()) == 0.0


def test_demo_runs(tmp_path):
    # the README's main command (`make demo` runs `sdekit demo`), on fewer samples
    r = run("demo", "--samples", "128", "--out", str(tmp_path), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "RMSE" in r.stdout and "Sliced Wasserstein-2" in r.stdout and "reference: DOP853" in r.stdout
    recs = json.loads((tmp_path / "results.json").read_text())["records"]
    assert len(recs) == 9 * 4 and all(rec["finite"] for rec in recs)
    assert (tmp_path / "samples.png").exists()


def test_console_script_finds_a_package_in_the_working_folder(tmp_path):
    """`sdekit compare --model mypkg.models:load` from the folder holding mypkg: the console script (not
    `python -m`, which puts the folder on sys.path itself) must look there too."""
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text("import sdekit\nfrom sdekit.analytic import GaussianMixture\n\n\ndef load():\n"
                                   "    return GaussianMixture.preset('ring2d').model(sdekit.VP())\n")
    script = os.path.join(os.path.dirname(sys.executable), "sdekit")
    r = subprocess.run([script, "compare", "--model", "mypkg.models:load", "--solvers", "ddim", "--nfe", "5",
                        "--samples", "16", "--out", str(tmp_path / "out"), "--no-progress", "--no-plots"],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.returncode == 0, r.stderr


def test_help_states_each_default_once():
    r = run("compare", "--help")
    assert r.returncode == 0 and "(default: None)" not in r.stdout
    assert all(line.count("default") <= 1 for line in r.stdout.splitlines())
