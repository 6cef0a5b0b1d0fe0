"""benchmarks/bench_samplers.py on a shipped network: diffusers and sdekit must integrate the same ODE.

The benchmark gives diffusers' schedulers the network's continuous process at their 1000 knots
(``trained_betas``) and calls the network at ``t = (k + 1) / N`` for diffusers' integer timestep ``k``. If
either half were off (a shifted knot, a betas/alphas_cumprod mix-up), the two libraries would solve different
ODEs and the benchmark's ratios would measure that instead of the samplers. Checked here on the moons network:
the schedule knot by knot, and DDIM (the same first-order rule in both) on the same grid to float32 rounding.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import sdekit

diffusers = pytest.importorskip("diffusers")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_samplers", ROOT / "benchmarks" / "bench_samplers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_samplers"] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench_samplers", None)


@pytest.fixture(scope="module")
def moons(bench):
    return bench.NetworkProblem("moons", ref_tol=1e-4)


def test_diffusers_gets_the_networks_process_at_its_knots(bench, moons):
    sched = diffusers.DDIMScheduler(**moons.diffusers_kwargs)
    knots = torch.arange(1, bench.N_TRAIN + 1, dtype=torch.float64) / bench.N_TRAIN
    want = moons.process.alpha(knots).detach() ** 2
    # diffusers keeps its betas in float32 and multiplies 1000 of them: about 1000 float32 roundings
    assert torch.allclose(sched.alphas_cumprod.double(), want, rtol=2e-5, atol=0)
    # and it is not the default DDPM schedule (which would make this test pass vacuously for the mixtures)
    assert not torch.allclose(diffusers.DDIMScheduler().alphas_cumprod.double(), want, rtol=1e-3, atol=0)


def test_ddim_is_the_same_in_both_libraries_on_the_network(bench, moons):
    x_T = moons.x_T(64, seed=0)
    factory, end = bench.diffusers_configs(moons.diffusers_kwargs)["DDIM trailing"]
    y, nfe, timesteps = bench.run_diffusers(factory(10), 10, x_T, moons.eps_net)
    assert end == "t_min" and nfe == 10 and timesteps[-1] < 100
    # DDIM trailing steps from timestep k to the previous one, the last to alphas_cumprod[0]: t = 1/N
    grid = torch.tensor([(k + 1) / bench.N_TRAIN for k in timesteps] + [moons.t_end], dtype=torch.float64)
    sol = sdekit.sample(moons.model, x_T, "ddim", grid=grid)
    assert sol.stats["nfe"] == 10
    # float32 in both; the error of the sampler itself is ~0.2 (bench_samplers_moons.json), 1e4 times more
    # (measured: 3e-6; the grid one knot off, t = k/N, differs by 1e-2, diffusers' default betas by 6e-3)
    assert float((sol.x - y).abs().max()) < 2e-5
