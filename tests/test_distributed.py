"""sdekit.distributed and sharded runs: the split of the sample indices, the single-process no-op, the argument
check, per-sample randomness (a shard equals the slice of the whole batch, bit for bit), and ``sdekit compare``
under ``torchrun`` on two gloo processes giving the records of the single-process run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import sdekit
from sdekit import distributed
from sdekit.analytic import GaussianMixture
from sdekit.brownian import SAMPLE_BLOCK, BrownianPath, IndexedNoise, VirtualBrownianTree, indexed_draw, indexed_normal
from sdekit.processes import VE, VP

pytestmark = pytest.mark.usefixtures("one_thread_module")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F64 = torch.float64
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
                "TORCHELASTIC_RUN_ID")
# splits of 200 samples: block edges (SAMPLE_BLOCK = 64), inside one block, one sample, the last sample
SPLITS = [(0, 64), (64, 200), (3, 130), (70, 71), (199, 200), (10, 190)]


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def no_torchrun(monkeypatch):
    for key in TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)


# ---- sharding --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n,world,block", [(256, 2, 128), (10, 3, 1), (10, 10, 1), (1000, 7, 64), (129, 2, 128),
                                           (5, 1, 128)])
def test_shards_cover_the_range_in_order_in_whole_blocks(n, world, block):
    ranges = distributed.shard_ranges(n, world, block=block)
    assert len(ranges) == world and all(len(r) > 0 for r in ranges)
    assert [i for r in ranges for i in r] == list(range(n))  # contiguous, in rank order, no overlap
    assert all(r.start % block == 0 for r in ranges)
    blocks = [math.ceil(len(r) / block) for r in ranges]
    assert max(blocks) - min(blocks) <= 1  # as even as whole blocks allow
    assert [distributed.shard(n, block=block, rank=r, world_size=world) for r in range(world)] == ranges


def test_more_processes_than_samples_or_blocks_is_a_clear_error():
    with pytest.raises(ValueError, match="3 processes for 2 sample"):
        distributed.shard_ranges(2, 3)
    with pytest.raises(ValueError, match=r"3 processes for 2 block\(s\) of 128.*at most 2 processes"):
        distributed.shard_ranges(256, 3, block=128)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError):
            distributed.shard_ranges(bad, 1)
    with pytest.raises(ValueError, match="rank must be"):
        distributed.shard(10, rank=2, world_size=2)


# ---- not launched: everything is the single-process identity ---------------------------------------------------

def test_without_torchrun_everything_is_a_no_op(no_torchrun):
    assert distributed.environment() is None
    info = distributed.init("cpu")
    assert info == distributed.RankInfo() and info.is_main and not info.distributed and info.world_size == 1
    assert not torch.distributed.is_initialized()
    assert distributed.shard(37, block=128) == range(37)
    x = torch.arange(6.0).reshape(3, 2)
    assert distributed.gather(x) is x
    assert distributed.gather_objects({"a": 1}) == [{"a": 1}]
    assert distributed.broadcast_object("msg") == "msg"
    assert distributed.on_main(lambda: 42) == 42
    assert distributed.check_same_config({"samples": 3}) == distributed.config_hash({"samples": 3})
    distributed.shutdown()  # nothing to destroy


def test_environment_is_read_as_torchrun_sets_it():
    env = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "29500"}
    assert distributed.environment(env) == distributed.RankInfo(rank=1, world_size=4, local_rank=1)
    assert distributed.environment({"RANK": "0", "WORLD_SIZE": "1"}) == distributed.RankInfo()
    for bad, match in [({"WORLD_SIZE": "2"}, "RANK is not"), ({**env, "RANK": "x"}, "not an integer"),
                       ({**env, "RANK": "4"}, "0 <= RANK < WORLD_SIZE"),
                       ({"RANK": "0", "WORLD_SIZE": "2"}, "MASTER_ADDR and MASTER_PORT are not set")]:
        with pytest.raises(ValueError, match=match):
            distributed.environment(bad)


def test_a_single_process_torchrun_environment_initialises_nothing(monkeypatch, no_torchrun):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.init("cpu") == distributed.RankInfo() and not torch.distributed.is_initialized()
    with pytest.raises(ValueError, match="timeout_s"):
        distributed.init("cpu", timeout_s=0)


def test_config_differences_name_the_ranks_and_the_entries():
    same = [{"samples": 256, "solvers": ["ddim"]}] * 3
    assert distributed.config_differences(same) is None
    msg = distributed.config_differences([{"samples": 256, "seed": 0}, {"samples": 256, "seed": 0},
                                          {"samples": 128, "seed": 0, "extra": 1}])
    assert msg.startswith("the processes got different arguments: rank(s) 2 differ from rank 0")
    assert "samples: rank 0 has 256, rank 2 has 128" in msg and "extra: rank 0 has (nothing), rank 2 has 1" in msg
    # the hash sees every value, nested ones and key order-independent
    assert distributed.config_hash({"a": {"b": 1, "c": 2}}) == distributed.config_hash({"a": {"c": 2, "b": 1}})
    assert distributed.config_hash({"a": {"b": 1}}) != distributed.config_hash({"a": {"b": 1.5}})


# ---- per-sample randomness: a shard is the slice of the whole batch, bit for bit ----------------------------

def test_indexed_draws_are_functions_of_the_global_index():
    full = indexed_normal((200, 3), 11, 0, dtype=F64)
    for a, b in SPLITS:
        assert torch.equal(indexed_normal((b - a, 3), 11, a, dtype=F64), full[a:b])
    assert not torch.equal(indexed_normal((200, 3), 11, 0, key=1, dtype=F64), full)  # another key, another draw
    assert not torch.equal(indexed_normal((200, 3), 12, 0, dtype=F64), full)
    # rows of one block are not copies of another's (each block has its own seed)
    assert not torch.equal(full[:SAMPLE_BLOCK], full[SAMPLE_BLOCK:2 * SAMPLE_BLOCK])
    assert indexed_normal((0, 3), 11, 5, dtype=F64).shape == (0, 3)
    ints = indexed_draw((100, 2), 3, 0, lambda g, s: torch.randint(0, 1000, s, generator=g))
    assert torch.equal(indexed_draw((30, 2), 3, 50, lambda g, s: torch.randint(0, 1000, s, generator=g)), ints[50:80])
    with pytest.raises(ValueError, match="sample_offset must be an int >= 0"):
        indexed_normal((2, 2), 0, -1)


def test_indexed_noise_is_standard_normal():
    from scipy import stats

    z = indexed_normal((4096, 4), 5, 0, dtype=F64).reshape(-1).numpy()
    # Kolmogorov–Smirnov at 16384 draws: p < 1e-3 for a correct law happens once in a thousand seeds
    assert stats.kstest(z, "norm").pvalue > 1e-3


def test_prior_sample_with_an_offset_is_the_slice_of_the_whole_draw():
    for process in (VP(), VE()):
        full = process.prior_sample((200, 2), generator=gen(0), dtype=F64, sample_offset=0)
        assert abs(float(full.std()) / process.prior_std - 1) < 0.1  # 400 draws: std error of the std ~3.5%
        for a, b in SPLITS:
            part = process.prior_sample((b - a, 2), generator=gen(0), dtype=F64, sample_offset=a)
            assert torch.equal(part, full[a:b])
    with pytest.raises(ValueError, match="needs a generator"):
        VP().prior_sample((4, 2), sample_offset=0)


@pytest.mark.parametrize("cls", [BrownianPath, VirtualBrownianTree])
def test_brownian_paths_with_an_offset_are_per_sample(cls):
    times = [0.0, 0.13, 0.5, 0.77, 1.0]

    def path(n, a):
        bm = cls(0.0, 1.0, (n, 2), seed=9, dtype=F64, levy_area=True, sample_offset=a)
        return [bm(s, t) for s, t in zip(times[:-1], times[1:])] + list(bm.levy(0.13, 0.77)) + [bm.extra(0, 1, 2)]

    full = path(200, 0)
    for a, b in SPLITS:
        assert all(torch.equal(p, f[a:b]) for p, f in zip(path(b - a, a), full))


SOLVERS = ["ddim", "dpmpp_2m", "unipc", "ddpm", "dpmpp_2m_sde", "euler_maruyama", "sra1", "stochastic_heun"]


@pytest.mark.parametrize("solver", SOLVERS)
def test_sampling_a_shard_equals_the_slice_of_the_whole_run(solver):
    """x_T from the prior and the sampler's noise (fresh noise, StepNoise, a Brownian path with Lévy area for
    sra1) are drawn per sample: every split gives the rows of one call, bit for bit in float64 on the CPU.
    (``pc`` is left out: its Langevin step size averages norms over the batch, as in score_sde.)"""
    model = GaussianMixture.preset("ring2d").model(VP())
    x_T = model.process.prior_sample((200, 2), generator=gen(0), dtype=F64, sample_offset=0)
    full = sdekit.sample(model, x_T, solver, steps=6, generator=gen(1), sample_offset=0).x
    for a, b in SPLITS:
        part = sdekit.sample(model, x_T[a:b], solver, steps=6, generator=gen(1), sample_offset=a).x
        assert torch.equal(part, full[a:b]), (solver, a, b)
    if solver in ("ddpm", "euler_maruyama"):  # the noise is really per sample: another offset, other noise
        shifted = sdekit.sample(model, x_T[:64], solver, steps=6, generator=gen(1), sample_offset=64).x
        assert not torch.equal(shifted, full[:64])


def test_sample_offset_arguments_are_checked():
    model = GaussianMixture.preset("ring2d").model(VP())
    x = torch.zeros(4, 2, dtype=F64)
    with pytest.raises(ValueError, match="sample_offset needs a generator"):
        sdekit.sample(model, x, "ddpm", steps=2, sample_offset=0)
    with pytest.raises(ValueError, match="sample_offset must be an int >= 0"):
        sdekit.sample(model, x, "ddpm", steps=2, generator=gen(0), sample_offset=-3)
    bm = BrownianPath(0.0, 1.0, (4, 2), dtype=F64)
    with pytest.raises(ValueError, match="create the path with the same sample_offset"):
        sdekit.sample(model, x, "euler_maruyama", steps=2, generator=gen(0), brownian=bm, sample_offset=4)
    with pytest.raises(ValueError, match="does not match"):
        sdekit.solve(sdekit.reverse_sde(model.process, model), x, "euler_maruyama", ts=[1.0, 0.5],
                     brownian=IndexedNoise((5, 2), seed=0, dtype=F64))


def test_log_likelihood_probes_and_dequantisation_are_per_sample():
    """Hutchinson probes and dequantisation noise come from the global index. The likelihoods of a shard agree
    with the whole batch's to rounding, not bit for bit: the batched vector–Jacobian products round differently
    for different batch sizes (measured 4e-16 with the exact trace, which draws nothing)."""
    from sdekit.likelihood import _probes

    mixture = GaussianMixture.preset("ring2d")
    model = mixture.model(VP())
    x = mixture.sample(100, generator=gen(3), dtype=F64)
    for kind in ("rademacher", "gaussian"):
        full = _probes(kind, 3, 100, 2, gen(5), F64, torch.device("cpu"), 0)
        assert torch.equal(_probes(kind, 3, 70, 2, gen(5), F64, torch.device("cpu"), 30), full[:, 30:])
    opts = dict(divergence="hutchinson", n_probes=3, steps=8, solver="rk4")
    whole = sdekit.log_likelihood(model, x, generator=gen(5), sample_offset=0, **opts)
    for a, b in [(0, 30), (30, 100), (7, 99)]:
        part = sdekit.log_likelihood(model, x[a:b], generator=gen(5), sample_offset=a, **opts)
        assert torch.allclose(part.log_prob, whole.log_prob[a:b], rtol=0, atol=1e-12)
    images = torch.randint(0, 16, (40, 2), generator=gen(0))
    bpd = dict(levels=16, n_dequant=2, **opts)
    whole = sdekit.bits_per_dim(model, images, generator=gen(4), sample_offset=0, **bpd)
    part = sdekit.bits_per_dim(model, images[5:33], generator=gen(4), sample_offset=5, **bpd)
    # float32 (the compute dtype of integer images): agreement to its rounding
    assert torch.allclose(part.bpd_per_draw, whole.bpd_per_draw[:, 5:33], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="needs a generator"):
        sdekit.log_likelihood(model, x, sample_offset=0, **opts)


# ---- torchrun: two gloo processes ------------------------------------------------------------------------------

def _env():
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT + os.pathsep + env.get("PYTHONPATH", "")}


def _torchrun(*args, timeout=120):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


WORKER = textwrap.dedent("""
    import torch
    from sdekit import distributed

    info = distributed.init("cpu")
    r = info.rank
    assert info.distributed and info.backend == "gloo" and info.world_size == 2
    part = distributed.shard(10, block=3)  # blocks [0, 3) [3, 6) | [6, 9) [9, 10): uneven parts
    assert part == (range(0, 6) if r == 0 else range(6, 10))
    whole = distributed.gather(torch.arange(part.start, part.stop, dtype=torch.float64)[:, None].repeat(1, 2))
    assert (whole is None) == (r != 0)
    if r == 0:
        assert torch.equal(whole, torch.arange(10, dtype=torch.float64)[:, None].repeat(1, 2))
    objs = distributed.gather_objects({"rank": r})
    assert objs == ([{"rank": 0}, {"rank": 1}] if r == 0 else None)
    assert distributed.broadcast_object("from 0" if r == 0 else None) == "from 0"
    assert distributed.on_main(lambda: r) == 0
    try:
        distributed.on_main(lambda: int("x"))
    except ValueError as e:
        print(f"rank {r} on_main: {e}", flush=True)
    try:
        distributed.shard(100, block=128)
    except ValueError as e:
        print(f"rank {r} shard: {e}", flush=True)
    distributed.check_same_config({"samples": 256, "seed": 0})
    try:
        distributed.check_same_config({"samples": 256 + r, "seed": 0})
    except ValueError as e:
        print(f"rank {r} config: {e}", flush=True)
    distributed.shutdown()
    print(f"rank {r} done", flush=True)
""")


def test_collectives_and_the_argument_check_on_two_processes(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    r = _torchrun(str(script))
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "rank 0 done" in out and "rank 1 done" in out
    assert "rank 0 on_main: invalid literal" in out
    assert "rank 1 on_main: rank 0 failed: ValueError: invalid literal" in out
    assert "rank 1 shard: 2 processes for 1 block(s) of 128" in out
    for rank in (0, 1):  # every rank fails, with the same message (no rank is left waiting)
        assert (f"rank {rank} config: the processes got different arguments: rank(s) 1 differ from rank 0 "
                "(samples: rank 0 has 256, rank 1 has 257)") in out


COMPARE = ["compare", "--samples", "256", "--nfe", "5,10", "--solvers", "ddim,dpmpp_2m,unipc,ddpm,euler_maruyama,sra1",
           "--no-progress"]


def _records(out_dir):
    res = json.loads((out_dir / "results.json").read_text())
    return res, {(r["solver"], r["nfe_budget"]): r for r in res["records"]}


def test_compare_under_torchrun_gives_the_single_process_records(tmp_path):
    """`sdekit compare` on 2 gloo processes (each a shard of the samples and of the reference solve; rank 0
    gathers and writes) gives the records of the single-process run: every RMSE and sliced W2 to 1e-12
    (measured: identical), the reference end points and saved samples bit for bit. Then a 2-process --resume
    in the single-process folder reuses every record and the reference, and adds a new budget."""
    single, multi = tmp_path / "single", tmp_path / "multi"
    r1 = subprocess.run([sys.executable, "-m", "sdekit", *COMPARE, "--out", str(single), "--no-plots"], cwd=ROOT,
                        env=_env(), capture_output=True, text=True, timeout=300)
    assert r1.returncode == 0, r1.stderr
    r2 = _torchrun("-m", "sdekit", *COMPARE, "--out", str(multi))
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert "256 samples (2 processes)" in r2.stdout and r2.stdout.count("Sliced Wasserstein-2") == 1  # rank 0 only
    res1, recs1 = _records(single)
    res2, recs2 = _records(multi)
    assert set(recs1) == set(recs2) and len(recs1) == 12
    for key, a in recs1.items():
        b = recs2[key]
        assert a["processes"] == 1 and b["processes"] == 2  # really sharded
        for metric in ("rmse_vs_reference", "median_error_vs_reference", "sliced_w2", "sliced_w2_stderr",
                       "mean_log_p_data"):
            if metric in a:
                assert math.isclose(a[metric], b[metric], rel_tol=1e-12, abs_tol=0), (key, metric)
        assert a["nfe"] == b["nfe"] and a["config_key"] == b["config_key"]
    assert sum("rmse_vs_reference" in a for a in recs1.values()) == 6
    assert res1["reference"]["sha256"] == res2["reference"]["sha256"]  # the sharded reference, bit for bit
    assert res1["reference"]["nfe"] == res2["reference"]["nfe"] and res1["reference"]["check_rmse"] == \
        res2["reference"]["check_rmse"]
    assert res1["distance"] == res2["distance"]
    key = recs1[("ddpm", 10)]["config_key"]
    for solver in ("ddim", "ddpm", "euler_maruyama", "sra1"):
        name = f"samples-{key}-{solver}-10.npy"
        assert (single / name).read_bytes() == (multi / name).read_bytes(), name
    assert (multi / "samples.png").exists() and (multi / "rmse_vs_reference_vs_nfe.png").exists()

    # --resume on 2 processes in the single-process folder: nothing recomputed, the new budget is computed
    before = {p.name: p.stat().st_mtime_ns for p in (single / "records").glob("*.json")}
    ref_before = (single / f"reference-{key}.npy").stat().st_mtime_ns
    resume = [a if a != "5,10" else "5,10,20" for a in COMPARE]
    r3 = _torchrun("-m", "sdekit", *resume, "--out", str(single), "--no-plots", "--resume")
    assert r3.returncode == 0, r3.stdout + r3.stderr
    after = {p.name: p.stat().st_mtime_ns for p in (single / "records").glob("*.json")}
    assert all(after[k] == v for k, v in before.items()) and len(after) == 18
    assert (single / f"reference-{key}.npy").stat().st_mtime_ns == ref_before
    _, recs3 = _records(single)
    assert recs3[("ddim", 20)]["processes"] == 2 and recs3[("ddim", 5)]["processes"] == 1
    assert recs3[("ddim", 20)]["rmse_vs_reference"] < recs3[("ddim", 10)]["rmse_vs_reference"]


# ---- blocks: the unit of resumable work -------------------------------------------------------------------------

def test_blocks_are_written_as_they_finish_and_read_back_on_resume(tmp_path):
    from sdekit.bench.blocks import block_path, block_ranges, load_block, run_blocks, save_block

    assert block_ranges(range(128, 300), 64) == [range(128, 192), range(192, 256), range(256, 300)]
    with pytest.raises(ValueError, match="block boundary"):
        block_ranges(range(3, 10), 4)
    calls = []

    def compute(a, b):
        calls.append((a, b))
        return {"v": torch.arange(a, b, dtype=F64).numpy() ** 0.5}, {"nfe": b - a}

    logs = []
    opts = dict(folder=str(tmp_path), name="w-k1", key="k1", log=logs.append)
    first = run_blocks(150, 64, compute, resume=False, **opts)
    assert calls == [(0, 64), (64, 128), (128, 150)] and not any(b.reused for b in first)
    whole = torch.cat([torch.from_numpy(b.arrays["v"]) for b in first])
    assert torch.equal(whole, torch.from_numpy(torch.arange(150, dtype=F64).numpy() ** 0.5))
    # resume: nothing recomputed, the same numbers; a damaged, a foreign and a wrong-length block are recomputed
    calls.clear()
    again = run_blocks(150, 64, compute, resume=True, **opts)
    assert calls == [] and all(b.reused for b in again)
    assert all(torch.equal(torch.from_numpy(a.arrays["v"]), torch.from_numpy(b.arrays["v"])) for a, b in
               zip(first, again))
    p0, p1, p2 = (block_path(str(tmp_path), "w-k1", a, b) for a, b in [(0, 64), (64, 128), (128, 150)])
    with open(p0, "r+b") as f:
        f.truncate(40)
    save_block(p1, {"v": torch.zeros(64).numpy()}, {"key": "other", "start": 64, "stop": 128, "nfe": 1})
    save_block(p2, {"v": torch.full((21,), float("nan")).numpy()}, {"key": "k1", "start": 128, "stop": 150})
    calls.clear()
    logs.clear()
    fixed = run_blocks(150, 64, compute, resume=True, **opts)
    assert calls == [(0, 64), (64, 128), (128, 150)]
    assert "unreadable" in logs[0] and "other settings" in logs[1] and "21 rows" in logs[2]
    assert torch.equal(torch.cat([torch.from_numpy(b.arrays["v"]) for b in fixed]), whole)
    save_block(p2, {"v": torch.full((22,), float("nan")).numpy()}, {"key": "k1", "start": 128, "stop": 150})
    assert load_block(p2, key="k1", start=128, stop=150, log=logs.append) is None and "NaN/Inf" in logs[-1]
    save_block(p2, {"v": torch.ones(22).numpy()}, {"key": "k1", "start": 0, "stop": 22})
    assert load_block(p2, key="k1", start=128, stop=150, log=logs.append) is None and "0..22" in logs[-1]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


def test_likelihood_command_resumes_from_its_blocks(tmp_path):
    """`sdekit likelihood` writes one record per block of 64 samples; --resume reads them back (nothing is
    solved again) and gives the same numbers."""
    from sdekit.cli import main

    args = ["likelihood", "--samples", "130", "--rtol", "1e-4", "--out", str(tmp_path), "--no-progress"]
    assert main(args) == 0
    rec = json.loads((tmp_path / "likelihood.json").read_text())
    assert rec["blocks"] == 3 and rec["blocks_reused"] == 0 and len(rec["log_prob"]) == 130
    assert len(os.listdir(tmp_path / "blocks")) == 3
    assert main(args + ["--resume"]) == 0
    again = json.loads((tmp_path / "likelihood.json").read_text())
    assert again["blocks_reused"] == 3 and again["log_prob"] == rec["log_prob"] and again["nfe"] == rec["nfe"]
    assert main(args[:2] + ["131"] + args[3:] + ["--resume"]) == 0  # other settings: other blocks, all solved
    assert json.loads((tmp_path / "likelihood.json").read_text())["blocks_reused"] == 0


def test_likelihood_under_torchrun_gives_the_single_process_record(tmp_path):
    """`sdekit likelihood` on ring2d with Hutchinson probes (drawn per sample) on 2 gloo processes: the
    per-sample log-likelihoods of the single-process run, bit for bit (each block of 64 samples is solved on
    its own wherever it runs)."""
    args = ["likelihood", "--samples", "150", "--divergence", "hutchinson", "--n-probes", "2", "--rtol", "1e-4",
            "--no-progress"]
    r1 = subprocess.run([sys.executable, "-m", "sdekit", *args, "--out", str(tmp_path / "one")], cwd=ROOT,
                        env=_env(), capture_output=True, text=True, timeout=300)
    assert r1.returncode == 0, r1.stderr
    r2 = _torchrun("-m", "sdekit", *args, "--out", str(tmp_path / "two"))
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert r2.stdout.count("mean log p") == 1 and "2 processes" in r2.stdout  # rank 0 alone reports
    one = json.loads((tmp_path / "one" / "likelihood.json").read_text())
    two = json.loads((tmp_path / "two" / "likelihood.json").read_text())
    assert one["processes"] == 1 and two["processes"] == 2 and one["blocks"] == two["blocks"] == 3
    assert one["log_prob"] == two["log_prob"]
    for key in ("mean_log_prob", "mean_exact_log_prob", "rms_error", "nfe", "n_steps"):
        assert one[key] == two[key], key
    # the estimate is a real one: probes make it differ from the exact density, by less than a nat per sample
    assert 0 < one["rms_error"] < 1


# ---- a rank killed mid-run: --resume, and the message of a dead rank ------------------------------------------

def _descendant_with_rank(pid: int, rank: int) -> int | None:
    """The pid of the process below ``pid`` whose environment has ``RANK=rank`` (a torchrun worker)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            seen.append(c)
            todo.append(c)
    for c in seen:
        try:
            with open(f"/proc/{c}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
        except OSError:
            continue
        if env.get(b"RANK") == str(rank).encode():
            return c
    return None


def _kill_rank_when(proc, rank: int, ready, timeout: float = 240.0) -> None:
    """Wait until ``ready()``, then stop the worker of ``rank`` at once (SIGSTOP: it can do nothing more, and
    the others block at the next collective) and kill it (SIGKILL)."""
    import signal
    import time

    t0 = time.time()
    while not ready():
        assert proc.poll() is None, "the run ended before the point where a rank was to be killed"
        assert time.time() - t0 < timeout, "the run never reached the point where a rank was to be killed"
        time.sleep(0.01)
    pid = _descendant_with_rank(proc.pid, rank)
    assert pid is not None, f"no worker with RANK={rank} below pid {proc.pid}"
    os.kill(pid, signal.SIGSTOP)
    assert proc.poll() is None, "the run ended before the rank could be killed"
    os.kill(pid, signal.SIGKILL)


KILLED = ["compare", "--samples", "512", "--nfe", "5,10,20,50", "--solvers", "ddim,dpmpp_2m,unipc,ddpm,euler_maruyama",
          "--no-progress", "--no-plots"]


def test_a_rank_killed_mid_run_resumes_with_nothing_lost_and_no_duplicates(tmp_path):
    """torchrun, 2 processes: rank 1 is killed during the reference solve (torchrun then stops rank 0 and
    fails); a 2-process --resume reads back the reference blocks already written, and rank 1 is killed again
    during the samplers; a 1-process --resume finishes. The records equal those of an uninterrupted run, each
    configuration once, and no finished record was rewritten."""
    base = subprocess.run([sys.executable, "-m", "sdekit", *KILLED, "--out", str(tmp_path / "base")], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert base.returncode == 0, base.stderr
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "sdekit",
           *KILLED, "--out", str(out)]

    def launch(extra=()):
        return subprocess.Popen([*cmd, *extra], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def reference_blocks():
        folder = out / "blocks"
        return folder.is_dir() and any(n.startswith("reference-") and n.endswith(".npz") for n in os.listdir(folder))

    first = launch()
    _kill_rank_when(first, 1, reference_blocks)
    _, err = first.communicate(timeout=120)
    assert first.returncode != 0 and not (out / "results.json").exists()
    assert "exitcode" in err and "-9" in err  # torchrun names the failed rank and its signal
    written = sorted(n for n in os.listdir(out / "blocks") if not n.startswith(".tmp-"))
    assert written

    def records():
        folder = out / "records"
        return folder.is_dir() and len([n for n in os.listdir(folder) if n.endswith(".json")]) >= 3

    second = launch(["--resume"])
    _kill_rank_when(second, 1, records)
    _, err = second.communicate(timeout=120)
    assert second.returncode != 0
    before = {p.name: p.stat().st_mtime_ns for p in (out / "records").glob("*.json")}
    key = next(iter(_records(tmp_path / "base")[1].values()))["config_key"]
    info = json.loads((out / f"reference-{key}.json").read_text())
    assert len(before) >= 3
    # every block the killed run had finished (whichever rank wrote it) was read back, not solved again
    assert info["blocks_reused"] == len([n for n in written if "-rtol1e-10-" in n])
    assert info["check_blocks_reused"] == len([n for n in written if "-rtol1e-08-" in n])

    third = subprocess.run([sys.executable, "-m", "sdekit", *KILLED, "--out", str(out), "--resume"], cwd=ROOT,
                           env=_env(), capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr
    assert "reference: float64" not in third.stderr  # the recorded reference is reused, not solved again
    after = {p.name: p.stat().st_mtime_ns for p in (out / "records").glob("*.json")}
    assert all(after[k] == v for k, v in before.items())  # no finished record recomputed
    res_b, recs_b = _records(tmp_path / "base")
    res_k, recs_k = _records(out)
    assert len(res_k["records"]) == len(recs_k) == len(after) == 20  # every configuration once
    assert set(recs_k) == set(recs_b)
    for key, a in recs_b.items():
        b = recs_k[key]
        for metric in ("rmse_vs_reference", "sliced_w2", "mean_log_p_data"):
            if metric in a:
                assert math.isclose(a[metric], b[metric], rel_tol=1e-12, abs_tol=0), (key, metric)
    assert res_b["reference"]["sha256"] == res_k["reference"]["sha256"]
    assert not [n for n in os.listdir(out / "blocks") if n.startswith("reference-")]  # removed once recorded
    assert not [n for d in ("records", "blocks") for n in os.listdir(out / d) if n.startswith(".tmp-")]


def test_a_dead_rank_is_named_by_the_others(tmp_path):
    """Launched as srun would (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT; no torchrun agent to stop the
    others): rank 1 is killed during the samplers; rank 0 fails at once at its next collective with one line
    that names rank 1, what it did last, and --resume; not after the timeout."""
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "srun"
    procs = []
    for rank in (0, 1):
        env = {**_env(), "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-m", "sdekit", *KILLED, "--out", str(out), "--timeout", "60"],
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    import signal

    t0 = time.time()
    while not ((out / "records").is_dir() and any((out / "records").glob("*.json"))):
        assert procs[0].poll() is None and time.time() - t0 < 240, "the run ended before rank 1 could be killed"
        time.sleep(0.01)
    procs[1].send_signal(signal.SIGKILL)
    procs[1].wait(timeout=30)
    _, err = procs[0].communicate(timeout=50)  # well under the 60 s timeout: the closed connection is seen at once
    assert procs[0].returncode == 1, err
    line = [m for m in err.splitlines() if m.startswith("sdekit: error:")]
    assert len(line) == 1, err
    assert "rank 0: collective" in line[0] and "failed: rank 1 did not answer within 5 s: it died or hangs" in line[0]
    assert "it last entered collective" in line[0] and "--resume" in line[0] and "Traceback" not in err
