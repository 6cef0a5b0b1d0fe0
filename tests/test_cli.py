import json
import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "sdekit", *args], capture_output=True, text=True, timeout=300)


def test_info_lists_the_registry():
    from sdekit.solvers import REGISTRY

    r = run("info")
    assert r.returncode == 0
    for name in REGISTRY:
        assert name in r.stdout


def test_demo_end_to_end(tmp_path):
    r = run("demo", "--samples", "32", "--nfe", "10,20", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "results.json").read_text())
    rows = rec["rows"]
    assert {row["solver"] for row in rows} >= {"euler", "rk4", "sra1"}
    rk4 = [row for row in rows if row["solver"] == "rk4"]
    # more NFE, smaller error against the reference (RK4 on the exact PF-ODE)
    assert rk4[1]["rmse_vs_reference"] < rk4[0]["rmse_vs_reference"]
    assert "RMSE" in r.stdout


def test_bad_arguments_give_one_line_and_nonzero_exit(tmp_path):
    for args in (["demo", "--nfe", "0"], ["demo", "--preset", "moons"], ["demo", "--samples", "0"]):
        r = run(*args, "--out", str(tmp_path))
        assert r.returncode == 2
        assert r.stderr.strip().startswith("sdekit: error:") and len(r.stderr.strip().splitlines()) == 1
        assert "Traceback" not in r.stderr
