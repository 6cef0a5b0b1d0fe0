"""Does the time embedding's frequency decide how fast samplers converge on a trained network?

The README's comparison on ``moons-vp-eps`` finds multistep samplers converging far below their orders, and
``benchmarks/time_smoothness.py`` finds the network's PF-ODE drift rough in t (sinusoidal features of
``1000 t``). This experiment changes only that: the ``moons-vp-eps`` recipe (data, architecture, process,
every training setting and seed) is retrained with the embedding's ``time_scale`` lowered from 1000 to
``--scale`` (default 10, highest frequency 10 rad per unit t), and the two networks are compared on

- the eval loss of the recipe (held-out points, fixed times and noise);
- the largest t-derivatives of the drift (``time_smoothness.derivatives``, states at t = 0.25);
- the cost of a float64 DOP853 reference (NFE at rtol = atol = ``--ref-rtol``) and its self-check;
- RMSE against that reference for DDIM, DPM-Solver++(2M)/(3M), UniPC and RK4 at 10/20/50/100 NFE (log-SNR
  spacing, float64, the same ``x_T``) and the fitted slopes of log RMSE against log NFE.

Run: ``python benchmarks/time_embedding.py`` (training takes about 4 CPU minutes; the retrained network is
cached under ``runs/time_embedding/``). Writes ``benchmarks/results/time_embedding.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import sdekit
from sdekit import training, zoo
from sdekit.bench.compare import reference_endpoint
from sdekit.bench.metrics import rmse
from sdekit.nets import build
from sdekit.training import TrainConfig, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from time_smoothness import derivatives, states  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SOLVERS = ("ddim", "dpmpp_2m", "dpmpp_3m", "unipc", "rk4")
NFES = (10, 20, 50, 100)


def retrained(scale: float, cache: Path) -> tuple[sdekit.ScoreModel, dict]:
    """The moons recipe with ``time_scale = scale``, trained once and cached in the zoo format."""
    name = f"moons-ts{scale:g}"
    if (cache / f"{name}.json").exists():
        return zoo.load(cache / name, dtype=torch.float64), zoo.info(cache / name)["training"]
    recipe = zoo.RECIPES["moons-vp-eps"]
    config = TrainConfig(**recipe.train)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = build(recipe.architecture, **recipe.kwargs, time_scale=scale)
    process = zoo.process_from_spec(recipe.process)
    data, _ = training.recipe_data(recipe)
    result = train(net, process, data, config, progress=True)
    eval_data, _ = training.recipe_data(recipe, eval_split=True)
    record = {"final_loss": result.final_loss, "eval_loss": training._eval_loss(result.ema, process, eval_data, config),
              "cpu_time_s": result.cpu_time_s, "wall_time_s": result.wall_time_s, "time_scale": scale}
    zoo.save(cache / name, result.ema, process, prediction=config.prediction, time_input=config.time_input,
             sample_shape=recipe.sample_shape, name=name, data=recipe.data, training=record)
    return zoo.load(cache / name, dtype=torch.float64), record


def study(model, samples: int, ref_rtol: float, seed: int) -> dict:
    p = model.process
    x_T = p.prior_sample((samples, *model.sample_shape), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.float64)
    out = {}
    refs = {}
    for rtol in (ref_rtol, 100 * ref_rtol):
        stats: dict = {}
        t0 = time.perf_counter()
        refs[rtol] = reference_endpoint(model, x_T, p.t_max, p.t_min, rtol=rtol, cache=None, stats=stats)
        out[f"reference_nfe@{rtol:g}"] = stats["nfe"]
        out[f"reference_wall_s@{rtol:g}"] = time.perf_counter() - t0
    ref = refs[ref_rtol]
    out["reference_check_rmse"] = rmse(refs[100 * ref_rtol], ref)
    table = {}
    with torch.no_grad():
        for s in SOLVERS:
            per = sdekit.solvers.get(s).evals_per_step
            table[s] = {n: rmse(sdekit.sample(model, x_T, s, steps=max(1, n // per), spacing="log_snr").x, ref)
                        for n in NFES}
    out["rmse"] = table
    out["slopes"] = {s: {f"{a}->{b}": math.log(table[s][a] / table[s][b]) / math.log(b / a)
                         for a, b in zip(NFES, NFES[1:])} for s in SOLVERS}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=10.0)
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--ref-rtol", type=float, default=1e-9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default="runs/time_embedding")
    ap.add_argument("--out", default=str(RESULTS / "time_embedding.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    shipped = zoo.load("moons-vp-eps", dtype=torch.float64)
    models = {"time_scale 1000 (shipped)": (shipped, zoo.info("moons-vp-eps")["training"])}
    models[f"time_scale {args.scale:g} (retrained)"] = retrained(args.scale, Path(args.cache))
    rows = {}
    for name, (model, train_record) in models.items():
        print(f"{name}: ...", file=sys.stderr)
        x = states(model, 4, 0.25, seed=0)
        rows[name] = {"eval_loss": train_record["eval_loss"], "final_loss": train_record["final_loss"],
                      **derivatives(model, x, 0.2, 0.3, 5e-5), **study(model, args.samples, args.ref_rtol, args.seed)}
    print(f"moons recipe, two time embeddings; {args.samples} samples, log-SNR spacing, float64, "
          f"reference DOP853 rtol {args.ref_rtol:g}")
    for name, r in rows.items():
        print(f"\n{name}: eval loss {r['eval_loss']:.4f}, max|d3f/dt3| {r['max_abs_d3']:.3g}, "
              f"max|d5f/dt5| {r['max_abs_d5']:.3g}, reference {r[f'reference_nfe@{args.ref_rtol:g}']} NFE "
              f"(check {r['reference_check_rmse']:.1e})")
        print(f"{'solver':<10}" + "".join(f"{n:>10}" for n in NFES) + "".join(
            f"{f'{a}->{b}':>10}" for a, b in zip(NFES, NFES[1:])))
        for s in SOLVERS:
            print(f"{s:<10}" + "".join(f"{r['rmse'][s][n]:>10.2e}" for n in NFES)
                  + "".join(f"{v:>10.2f}" for v in r["slopes"][s].values()))
    record = {"benchmark": "time_embedding", "args": vars(args), "rows": rows, "torch": torch.__version__,
              "python": platform.python_version(), "numpy": np.__version__}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
