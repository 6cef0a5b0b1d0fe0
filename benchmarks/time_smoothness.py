"""How smooth in t is the probability-flow drift of a trained network, compared with an exact model?

A high-order solver's error constant is set by high time derivatives of the drift along the solution. For the
exact model of an analytic mixture they are modest; a network conditioned on ``t`` through sinusoidal features
of ``1000 t`` (sdekit's MLP and UNet, like DDPM's) can carry components that oscillate with periods down to
``2π/1000`` in t, and then the high derivatives are large even where the drift itself is tame. This script
measures it: for a few fixed states ``x`` it evaluates the PF-ODE drift ``f(x, t)`` on a fine uniform t grid
and reports the largest finite-difference estimates of ``|∂_t^k f|`` for k = 1, 3, 5 (float64; a step
``h`` small enough to resolve the oscillations and large enough that rounding, about ``2^k · 1e-16 / h^k``,
stays far below what is measured — the rounding floor is printed beside each value).

Models: the shipped ``moons-vp-eps`` (MLP) and ``digits-vp-eps`` (UNet), and the exact model of the analytic
``ring2d`` mixture under the same VP process. The states are PF-ODE samples at t = 0.25 (drawn by solving
the model's own PF-ODE from the prior with 200 RK4 steps), so they lie where trajectories go.

Run: ``python benchmarks/time_smoothness.py`` (about a minute on a CPU). Writes
``benchmarks/results/time_smoothness.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import torch

import sdekit
from sdekit import zoo
from sdekit.analytic import GaussianMixture

RESULTS = Path(__file__).resolve().parent / "results"


def states(model, n: int, t: float, seed: int) -> torch.Tensor:
    p = model.process
    x_T = p.prior_sample((n, *model.sample_shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ode = sdekit.probability_flow(p, model)
    ts = torch.linspace(p.t_max, t, 201, dtype=torch.float64)
    with torch.no_grad():
        return sdekit.solve(ode, x_T, "rk4", ts=ts).x


def derivatives(model, x: torch.Tensor, t0: float, t1: float, h: float) -> dict:
    ode = sdekit.probability_flow(model.process, model)
    ts = np.arange(t0, t1 + h / 2, h)
    with torch.no_grad():
        f = np.stack([ode.drift(torch.tensor(float(t), dtype=torch.float64), x).reshape(x.shape[0], -1).numpy()
                      for t in ts])  # (T, B, D)
    out = {"max_abs_drift": float(np.abs(f).max())}
    for k in (1, 3, 5):
        dk = np.diff(f, k, axis=0) / h**k
        out[f"max_abs_d{k}"] = float(np.abs(dk).max())
        out[f"rounding_floor_d{k}"] = float(2**k * np.finfo(np.float64).eps * np.abs(f).max() / h**k)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--t0", type=float, default=0.2)
    ap.add_argument("--t1", type=float, default=0.3)
    ap.add_argument("--h", type=float, default=5e-5)
    ap.add_argument("--states", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "time_smoothness.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = {
        "ring2d exact (VP)": GaussianMixture.preset("ring2d").model(sdekit.VP()),
        "moons-vp-eps (MLP)": zoo.load("moons-vp-eps", dtype=torch.float64),
        "digits-vp-eps (UNet)": zoo.load("digits-vp-eps", dtype=torch.float64),
    }
    rows = []
    for name, model in models.items():
        x = states(model, args.states, 0.25, seed=0)
        r = {"model": name, **derivatives(model, x, args.t0, args.t1, args.h)}
        rows.append(r)
    head = f"{'model':<24}{'max|f|':>10}" + "".join(f"{f'max|d{k}f/dt{k}|':>16}{'(floor)':>10}" for k in (1, 3, 5))
    print(f"PF-ODE drift along t in [{args.t0}, {args.t1}], h = {args.h:g}, {args.states} states each")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['model']:<24}{r['max_abs_drift']:>10.3g}"
              + "".join(f"{r[f'max_abs_d{k}']:>16.3g}{r[f'rounding_floor_d{k}']:>10.1g}" for k in (1, 3, 5)))
    base = rows[0]
    for r in rows[1:]:
        ratios = ", ".join(f"d{k}: {r[f'max_abs_d{k}'] / base[f'max_abs_d{k}']:.3g}x" for k in (1, 3, 5))
        print(f"{r['model']} / {base['model']}: {ratios}")
    record = {"benchmark": "time_smoothness", "t0": args.t0, "t1": args.t1, "h": args.h, "states": args.states,
              "rows": rows, "torch": torch.__version__, "python": platform.python_version(),
              "machine": platform.machine(), "threads": args.threads}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
