"""Fuzzing the user-facing surface: the ``sdekit compare`` argument space and the ``solve``/``sample`` arguments.

Property: every input either gives a finite result or one of the documented errors -- the CLI exits 0, or 2 with
one line ``sdekit: error: ...``; the API raises TypeError, ValueError, FloatingPointError (a state that became
NaN/Inf) or, for adaptive solves, RuntimeError (max_steps exceeded, step-size underflow) -- and never returns a
non-finite result without an error. A short run is in the default suite; ``-m slow`` runs many more examples.
"""

import contextlib
import io
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sdekit
from sdekit import ODE, SDE, solve
from sdekit.cli import main
from sdekit.solvers import REGISTRY, DiffusionSampler

API_ERRORS = (TypeError, ValueError, FloatingPointError, RuntimeError)
GENERIC = sorted(n for n, c in REGISTRY.items() if not issubclass(c, DiffusionSampler))
SAMPLERS = sorted(REGISTRY)

numbers_text = st.one_of(st.integers(-5, 25).map(str), st.sampled_from(["0", "-1", "abc", "1e3", "", "nan", "inf",
                                                                       "99999999999999999999", "5,5", " 7 "]))
nfe_text = st.lists(st.one_of(st.integers(-2, 12).map(str), st.sampled_from(["x", "", "1e2", str(10**20)])),
                    min_size=1, max_size=3).map(",".join)
OPTIONS = {
    "--nfe": nfe_text,
    "--samples": st.one_of(st.integers(2, 12).map(str), numbers_text),
    "--solvers": st.lists(st.sampled_from([*SAMPLERS, "all-deterministic", "nope", ""]), min_size=1,
                          max_size=2).map(",".join),
    "--spacing": st.sampled_from(["time", "log_snr", "quadratic", "karras", "cubic"]),
    "--dtype": st.sampled_from(["float64", "float32", "float16"]),
    "--device": st.sampled_from(["cpu", "cuda", "tpu", "cuda:7", ""]),
    "--scatter-nfe": numbers_text,
    "--reference-rtol": st.sampled_from(["1e-8", "0", "-1", "nan", "inf", "1", "abc", "1e-300"]),
    "--reference-method": st.sampled_from(["DOP853", "RK45", "Radau"]),
    "--preset": st.sampled_from(["ring2d", "moons", "stress8d"]),
    "--process": st.sampled_from(["vp", "ve", "edm", "subvp", "warp"]),
    "--seed": numbers_text,
    "--model": st.sampled_from(["tests.fixtures.user_models:mlp_eps_net", "no_module:f", "digits-nope"]),
}
FLAGS = ["--resume", "--no-plots", "--no-reference-check"]


@st.composite
def compare_argv(draw):
    names = draw(st.lists(st.sampled_from(sorted(OPTIONS)), max_size=4, unique=True))
    argv = ["compare"]
    for name in names:
        argv += [name, draw(OPTIONS[name])]
    argv += draw(st.lists(st.sampled_from(FLAGS), max_size=2, unique=True))
    if "--samples" not in names:
        argv += ["--samples", "8"]  # keep the runs that do start small
    if "--nfe" not in names:
        argv += ["--nfe", "3"]
    if "--solvers" not in names:
        argv += ["--solvers", "ddim"]
    return argv


def _check_cli(argv, out_dir):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main([*argv, "--out", str(out_dir), "--no-progress", "--no-plots"])
        except SystemExit as e:  # argparse exits itself for parse errors
            rc = e.code
    text = err.getvalue()
    assert rc in (0, 2), (argv, rc, text[-2000:])
    assert "Traceback" not in text, (argv, text[-2000:])
    if rc == 2:
        lines = [ln for ln in text.strip().splitlines() if ln.startswith("sdekit: error:")]
        assert len(lines) == 1, (argv, text[-2000:])


def _fuzz_cli(max_examples):
    @settings(max_examples=max_examples, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(argv=compare_argv())
    def check(tmp_path_factory, argv):
        _check_cli(argv, tmp_path_factory.mktemp("fuzz"))

    return check


def test_cli_fuzz_short(tmp_path_factory):
    _fuzz_cli(12)(tmp_path_factory)


@pytest.mark.slow
def test_cli_fuzz_long(tmp_path_factory):
    _fuzz_cli(300)(tmp_path_factory)


# --- solve / sample --------------------------------------------------------------------------------------------
floats = st.one_of(st.floats(-2, 2), st.sampled_from([0.0, 1e-12, -1e-12, math.nan, math.inf, 1e30, 1.0]))


@st.composite
def solve_call(draw):
    solver = draw(st.sampled_from([*GENERIC, "nope"]))
    stochastic = draw(st.booleans())
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    x0 = torch.full((draw(st.integers(1, 3)), 2), draw(st.sampled_from([0.5, 1.0, math.nan])), dtype=dtype)
    rate = draw(st.sampled_from([1.0, 50.0, 1e6]))
    problem = (SDE(lambda t, x: -rate * x, lambda t, x: 0.3 * torch.ones_like(x), noise_type="diagonal")
               if stochastic else ODE(lambda t, x: -rate * x + torch.sin(t)))
    how = draw(st.sampled_from(["ts", "dt", "adaptive"]))
    kw = {}
    if how == "ts":
        n = draw(st.integers(-1, 6))
        kw["ts"] = torch.linspace(0, draw(floats), max(n, 0)) if n != 3 else [0.0, 0.5, 0.5, 1.0]
    elif how == "dt":
        kw.update(t0=0.0, t1=draw(floats), dt=draw(floats))
    else:
        kw.update(t0=0.0, t1=draw(floats), controller=sdekit.PIController(rtol=1e-3, atol=1e-3, max_steps=200))
    if draw(st.booleans()):
        kw["save_at"] = draw(st.sampled_from(["steps", [0.0], [math.nan], [5.0], "everything"]))
    return problem, x0, solver, kw


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(call=solve_call())
def test_solve_fuzz(call):
    problem, x0, solver, kw = call
    try:
        sol = solve(problem, x0, solver, **kw)
    except API_ERRORS:
        return
    assert bool(torch.isfinite(sol.x).all())
    if sol.xs is not None:
        assert bool(torch.isfinite(sol.xs).all())


@st.composite
def sample_call(draw):
    process = draw(st.sampled_from([sdekit.VP(), sdekit.VE(), sdekit.EDM()]))
    model = sdekit.analytic.GaussianMixture.preset("ring2d").model(process)
    x_T = process.prior_sample((3, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    if draw(st.booleans()):
        x_T = x_T.clone()
        x_T[0, 0] = draw(st.sampled_from([math.nan, math.inf, 1e30]))
    kw = {"steps": draw(st.one_of(st.integers(-1, 8), st.sampled_from([10**9, 2.5, "10"])))}
    if draw(st.booleans()):
        kw["spacing"] = draw(st.sampled_from(["time", "log_snr", "karras", "quadratic", "cubic"]))
    if draw(st.booleans()):
        kw["t_end"] = draw(floats)
    return model, x_T, draw(st.sampled_from([*SAMPLERS, "nope"])), kw


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(call=sample_call())
def test_sample_fuzz(call):
    model, x_T, solver, kw = call
    try:
        sol = sdekit.sample(model, x_T, solver, generator=torch.Generator().manual_seed(0), **kw)
    except API_ERRORS:
        return
    assert bool(torch.isfinite(sol.x).all()), (solver, kw)


@pytest.mark.slow
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(call=solve_call())
def test_solve_fuzz_long(call):
    test_solve_fuzz.hypothesis.inner_test(call)


@pytest.mark.slow
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(call=sample_call())
def test_sample_fuzz_long(call):
    test_sample_fuzz.hypothesis.inner_test(call)
