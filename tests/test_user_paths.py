"""`sdekit compare` and the API on users' own networks and bad input, as a new user meets them.

CLI checks run the installed command in a subprocess and look at the exit code, the number of lines on stderr
and the absence of a traceback. Each test stands for one reported defect of the command line or the API.
"""

import json
import math
import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch

import sdekit
from sdekit import ODE, SDE, solve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER = "tests.fixtures.user_models"
F64 = torch.float64


def sdekit_cmd():
    exe = shutil.which("sdekit", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "sdekit"]


def run(*args, env=None, timeout=600):
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = ROOT + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run([*sdekit_cmd(), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=full_env)


def assert_one_line_error(r, *must_contain):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sdekit: error:"), r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    for text in must_contain:
        assert text in lines[0], (text, lines[0])


def compare(out, *extra, env=None):
    return run("compare", "--model", f"{USER}:mlp_eps_net", "--solvers", "ddim,dpmpp_2m", "--nfe", "5,10",
               "--samples", "16", "--out", str(out), "--no-progress", *extra, env=env)


def results(out):
    return json.loads((out / "results.json").read_text())


def rmse_of(out):
    return {(r["solver"], r["nfe_budget"]): r["rmse_vs_reference"] for r in results(out)["records"]}


# --- high: stale references; ordinary nn.Modules ----------------------------------------------------------------
def test_a_changed_network_never_reuses_the_cached_reference(tmp_path):
    out = tmp_path / "run"
    r0 = compare(out, "--no-plots", env={"SDEKIT_TEST_NET_SEED": "0"})
    assert r0.returncode == 0, r0.stderr
    rmse0, fp0 = rmse_of(out), results(out)["config"]["model_fingerprint"]
    r1 = compare(out, "--no-plots", env={"SDEKIT_TEST_NET_SEED": "1"})  # retrained network, same --out
    assert r1.returncode == 0, r1.stderr
    assert results(out)["config"]["model_fingerprint"] != fp0
    fresh = tmp_path / "fresh"
    r2 = compare(fresh, "--no-plots", env={"SDEKIT_TEST_NET_SEED": "1"})
    assert r2.returncode == 0, r2.stderr
    assert rmse_of(out) == rmse_of(fresh) and rmse_of(out) != rmse0
    # --resume after switching back finds the first network's own records and reference again
    r3 = compare(out, "--no-plots", "--resume", env={"SDEKIT_TEST_NET_SEED": "0"})
    assert r3.returncode == 0, r3.stderr
    assert rmse_of(out) == rmse0


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """One finished comparison (three solvers at two budgets), copied by each test that damages it."""
    out = tmp_path_factory.mktemp("baseline") / "run"
    r = run("compare", "--model", f"{USER}:mlp_eps_net", "--solvers", "ddim,dpmpp_2m,unipc", "--nfe", "5,10",
            "--samples", "16", "--out", str(out), "--no-progress", "--no-plots")
    assert r.returncode == 0, r.stderr
    return out


def resume(out):
    return run("compare", "--model", f"{USER}:mlp_eps_net", "--solvers", "ddim,dpmpp_2m,unipc", "--nfe", "5,10",
               "--samples", "16", "--out", str(out), "--no-progress", "--no-plots", "--resume")


@pytest.mark.parametrize("damage", ["edit", "nan", "truncate", "garbage"])
def test_a_damaged_cached_reference_is_recomputed(baseline, tmp_path, damage):
    out = tmp_path / "run"
    shutil.copytree(baseline, out)
    ref = next(out.glob("reference-*.npy"))
    if damage in ("edit", "nan"):
        arr = np.load(ref)
        arr[0, 0] = 2 * arr[0, 0] + 1 if damage == "edit" else np.nan
        np.save(ref, arr)
    elif damage == "truncate":
        ref.write_bytes(ref.read_bytes()[:100])
    else:
        ref.write_bytes(b"not a numpy file at all")
    r = resume(out)
    assert r.returncode == 0, r.stderr
    assert str(ref) in r.stderr and "recomput" in r.stderr
    assert rmse_of(out) == rmse_of(baseline)


def test_resume_recomputes_damaged_records_and_names_them(baseline, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(baseline, out)
    damages = [b"", b'{"solver": "ddim", "nfe_bud', b"\x00\xff garbage", b"[1, 2, 3]", b'{"solver": "ddim"}',
               b'"just a string"']
    victims = sorted((out / "records").glob("*.json"))
    assert len(victims) == len(damages)
    for victim, damage in zip(victims, damages):
        victim.write_bytes(damage)
    r = resume(out)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    for victim in victims:
        assert str(victim) in r.stderr
        json.loads(victim.read_text())  # rewritten
    assert rmse_of(out) == rmse_of(baseline)


def test_float32_module_with_gradients_runs_compare_and_writes_everything(tmp_path):
    r = compare(tmp_path)
    assert r.returncode == 0, r.stderr
    assert "RMSE" in r.stdout and (tmp_path / "results.json").exists()
    assert (tmp_path / "rmse_vs_reference_vs_nfe.png").exists() and (tmp_path / "samples.png").exists()
    assert all(math.isfinite(v) for v in rmse_of(tmp_path).values())


def test_sample_casts_to_the_networks_dtype():
    from tests.fixtures.user_models import mlp_eps_net

    model = mlp_eps_net()  # float32 network
    x_T = torch.randn(8, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    sol = sdekit.sample(model, x_T, "dpmpp_2m", steps=5)
    assert sol.x.dtype == F64 and bool(torch.isfinite(sol.x).all())
    zoo_model = sdekit.zoo.load("moons-vp-eps")
    assert bool(torch.isfinite(sdekit.sample(zoo_model, x_T, "ddim", steps=4).x).all())


def test_compare_without_matplotlib_writes_tables_and_says_how_to_get_plots(tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None; from sdekit.cli import main; "
            "sys.exit(main(['compare', '--samples', '16', '--nfe', '5', '--solvers', 'ddim', "
            f"'--out', {str(tmp_path)!r}, '--no-progress']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "matplotlib" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "results.json").exists() and "RMSE" in r.stdout


# --- medium: where the time goes; files; sizes ------------------------------------------------------------------
def test_reference_reports_its_cost_and_flags_a_rough_pf_ode(tmp_path, monkeypatch):
    from sdekit.bench import compare as cmp

    monkeypatch.setattr(cmp, "ROUGH_REFERENCE_NFE", 10)
    model = sdekit.analytic.GaussianMixture.preset("ring2d").model(sdekit.VP())
    cfg = cmp.ComparisonConfig(solvers=["ddim"], nfe=[5], samples=8, reference_rtol=1e-8)
    cmp.run_comparison(model, cfg, str(tmp_path), progress=False, log=lambda m: None)
    info = results(tmp_path)["reference"]
    assert info["nfe"] > 10 and info["wall_s"] > 0 and "rough" in info["hint"]
    assert "--reference-rtol" in info["hint"]


def test_reference_method_is_a_choice_and_is_recorded(tmp_path):
    r = run("compare", "--solvers", "ddim", "--nfe", "5", "--samples", "8", "--reference-method", "RK45",
            "--reference-rtol", "1e-8", "--out", str(tmp_path), "--no-progress", "--no-plots")
    assert r.returncode == 0, r.stderr
    assert "RK45" in results(tmp_path)["reference"]["method"]
    assert_one_line_error(run("compare", "--reference-method", "Euler", "--out", str(tmp_path)), "reference-method")


def test_out_that_is_a_file_or_under_a_file_or_unwritable(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    assert_one_line_error(compare(f), str(f))
    assert_one_line_error(compare(f / "sub"), str(f / "sub"))
    assert_one_line_error(compare("/proc/sdekit-cannot-write-here"), "/proc/sdekit-cannot-write-here")


@pytest.mark.parametrize("args, name", [(["--samples", str(10**12)], "--samples"),
                                        (["--nfe", "99999999999999999999"], "--nfe"),
                                        (["--nfe", "200000"], "--nfe")])
def test_sizes_are_checked_up_front(tmp_path, args, name):
    assert_one_line_error(run("compare", *args, "--out", str(tmp_path), "--no-progress"), name)


def test_api_sizes_are_checked_up_front():
    model = sdekit.analytic.GaussianMixture.preset("ring2d").model(sdekit.VP())
    with pytest.raises(ValueError, match="steps"):
        sdekit.sample(model, torch.zeros(2, 2, dtype=F64), "ddim", steps=10**9)
    with pytest.raises(ValueError, match="dt"):
        solve(ODE(lambda t, x: -x), torch.zeros(2, 2), "euler", t0=0.0, t1=1.0, dt=1e-12)


# --- model NaN, shapes -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["ddim", "dpmpp_2m", "rk4", "euler_maruyama", "ddpm"])
def test_a_model_returning_nan_is_named_with_its_time_and_step(solver):
    from tests.fixtures.user_models import nan_eps_net

    model = nan_eps_net()
    x_T = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"the model returned NaN/Inf at t = .*step \d+|step \d+.*the model returned "
                                         r"NaN/Inf at t = "):
        sdekit.sample(model, x_T, solver, steps=10)


def test_compare_on_a_nan_model_is_one_line(tmp_path):
    r = run("compare", "--model", f"{USER}:nan_eps_net", "--solvers", "ddim,ddpm", "--nfe", "10", "--samples", "8",
            "--out", str(tmp_path), "--no-progress", "--no-plots")
    assert_one_line_error(r, "NaN")


@pytest.mark.parametrize("solver", ["euler", "rk4", "euler_maruyama", "dopri5"])
def test_drift_of_the_wrong_shape_is_refused(solver):
    x0 = torch.ones(8, 2)
    bad = SDE(lambda t, x: -x[:, :1], lambda t, x: 0.1 * torch.ones_like(x), noise_type="diagonal")
    problem = bad if solver == "euler_maruyama" else ODE(lambda t, x: -x[:, :1])
    kw = {"t0": 0.0, "t1": 1.0, "controller": sdekit.PIController()} if solver == "dopri5" else {
        "ts": torch.linspace(0, 1, 5)}
    with pytest.raises(ValueError, match=r"drift returned shape \(8, 1\)"):
        solve(problem, x0, solver, **kw)


@pytest.mark.parametrize("noise_type, g_shape", [("diagonal", (16, 2)), ("diagonal", (8, 2, 2)),
                                                 ("general", (8, 3, 2)), ("scalar", (8, 3))])
def test_diffusion_of_the_wrong_shape_is_refused(noise_type, g_shape):
    x0 = torch.ones(8, 2)
    kw = {"brownian_size": 2} if noise_type == "general" else {}
    sde = SDE(lambda t, x: -x, lambda t, x: torch.ones(g_shape), noise_type=noise_type, **kw)
    with pytest.raises(ValueError, match="diffusion"):
        solve(sde, x0, "euler_maruyama", ts=torch.linspace(0, 1, 5))


def test_save_at_nan_is_refused():
    ode = ODE(lambda t, x: -x)
    with pytest.raises(ValueError, match="save_at"):
        solve(ode, torch.ones(2, 2), "rk4", ts=torch.linspace(0, 1, 5), save_at=[float("nan")])
    with pytest.raises(ValueError, match="save_at"):
        solve(ode, torch.ones(2, 2), "dopri5", t0=0.0, t1=1.0, controller=sdekit.PIController(),
              save_at=[float("nan")])


# --- low -------------------------------------------------------------------------------------------------------
def test_budgets_are_never_exceeded_and_duplicates_run_once(tmp_path):
    r = run("compare", "--solvers", "rk4,ddim", "--nfe", "1,5,5,10", "--samples", "8", "--out", str(tmp_path),
            "--no-progress", "--no-plots")
    assert r.returncode == 0, r.stderr
    recs = results(tmp_path)["records"]
    assert all(rec["nfe"] <= rec["nfe_budget"] for rec in recs)
    assert sorted((rec["solver"], rec["nfe_budget"]) for rec in recs) == [
        ("ddim", 1), ("ddim", 5), ("ddim", 10), ("rk4", 5), ("rk4", 10)]
    assert "skipped rk4 @ 1" in r.stdout and "NFE budget" in r.stdout
    assert "rk4 @ 10: 8" in r.stdout  # actual NFE shown where it differs


@pytest.mark.parametrize("args, text", [
    (["--scatter-nfe", "7", "--nfe", "5,10"], "--scatter-nfe"),
    (["--model", f"{USER}:mlp_eps_net", "--preset", "ring2d"], "--preset"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
    (["--nfe", "abc"], "--nfe"),
    (["--samples", "many"], "--samples"),
    (["--spacing", "weird"], "--spacing"),
    (["--no-such-option"], "unrecognized"),
])
def test_bad_compare_arguments_are_one_line(tmp_path, args, text):
    assert_one_line_error(run("compare", *args, "--out", str(tmp_path), "--no-progress"), text)


def test_result_files_follow_the_umask(tmp_path):
    out = tmp_path / "run"
    old = os.umask(0o022)
    try:
        r = run("compare", "--solvers", "ddim", "--nfe", "5", "--samples", "8", "--out", str(out), "--no-progress")
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr
    for p in [out / "results.json", *out.glob("reference-*"), *(out / "records").glob("*.json")]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, (p, oct(p.stat().st_mode))


def test_help_describes_and_shows_defaults():
    r = run("compare", "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    for piece in ("--out OUT output folder", "(default: runs/compare)", "--nfe NFE", "(default: 5,10,20,50)",
                  "--samples SAMPLES number of samples", "(default: 512)", "--seed SEED seed", "(default: 0)"):
        assert piece in text, piece


def test_likelihood_of_a_users_float32_module_on_their_data(tmp_path):
    data = tmp_path / "data.npy"
    np.save(data, np.random.default_rng(0).standard_normal((6, 2)).astype(np.float32))
    r = run("likelihood", "--model", f"{USER}:mlp_eps_net", "--data", str(data), "--samples", "6",
            "--out", str(tmp_path), "--no-progress")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "likelihood.json").read_text())
    assert rec["samples"] == 6 and math.isfinite(rec["mean_log_prob"])
    assert_one_line_error(run("likelihood", "--model", f"{USER}:mlp_eps_net", "--out", str(tmp_path)), "--data")
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"garbage")
    assert_one_line_error(run("likelihood", "--model", f"{USER}:mlp_eps_net", "--data", str(bad), "--out",
                              str(tmp_path)), str(bad))


def test_the_reference_solve_shows_progress(tmp_path):
    r = run("compare", "--model", f"{USER}:mlp_eps_net", "--solvers", "ddim", "--nfe", "5", "--samples", "8",
            "--out", str(tmp_path), "--no-plots")
    assert r.returncode == 0, r.stderr
    frames = r.stderr.replace("\r", "\n")
    assert "reference:" in frames and "NFE=" in frames and "NFE/s" in frames
    assert "reference: " in r.stderr and " NFE in " in r.stderr  # the cost, once it is done
