"""Bias of the inverse-problem samplers of ``sdekit.inverse`` against the exact posterior of a Gaussian mixture.

For a linear measurement ``y = A x_0 + noise_std · n`` of a Gaussian-mixture prior, the posterior is again a
Gaussian mixture, computed in closed form by ``GaussianMixture.condition``. Neither DPS nor replacement samples
it exactly (DPS replaces ``p(y | x_t)`` by ``p(y | x̂0(x_t))``; replacement conditions through the noised
measurement only), so this measures how far each lands, with the exact model of the mixture (so only the
method errs, not a network):

- ``sliced_w2``: sliced Wasserstein-2 (256 directions) between the method's samples and as many exact posterior
  samples; ``floor`` is the same distance between two independent exact sets (the noise level of the metric),
  ``prior_w2`` the distance from prior samples to the posterior (what no conditioning at all gives);
- ``mean_err``: ``||mean(samples) - E[x_0 | y]||`` (exact posterior mean); ``mean_se``: its sampling standard
  error, ``sqrt(tr Cov[x_0 | y] / n)``;
- ``cov_err``: ``||Cov(samples) - Cov[x_0 | y]||_F / ||Cov[x_0 | y]||_F`` (a few samples in a wrong mode make it
  large);
- ``mode_tv``: the total-variation distance between the histograms of the prior component each sample is closest
  to (largest unweighted component density) for the method's and the exact samples: how well the method weighs
  the modes (DPS's known failure is to leave samples in modes the measurement rules out); ``mode_tv_floor`` the
  same between two exact sets.

Problems: ``ring2d`` (observe the first coordinate) and ``GaussianMixture.random(4, 4)`` (two random
projections), each with ``noise_std = 0.1`` and ``0`` (exact measurement), each for ``--seeds`` measurements
``y = A x + noise`` of fresh data draws. Methods: DPS (ancestral steps, ``zeta' = 20 / steps``) at 50, 200 and
1000 steps; for the coordinate measurement with ``noise_std = 0``, replacement (RePaint with ``n_resample = 1``)
and RePaint with resampling, 100 steps.

Run: ``python benchmarks/bench_inverse.py`` (about two minutes on one thread) or ``--quick``. Writes
``benchmarks/results/bench_inverse.json`` (``bench_inverse_quick.json`` with ``--quick``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from sdekit import VP, inverse
from sdekit.analytic import GaussianMixture
from sdekit.bench.metrics import sliced_wasserstein2

F64 = torch.float64


def problems():
    ring = GaussianMixture.preset("ring2d")
    rand = GaussianMixture.random(4, 4, seed=11)
    a_rand = torch.randn(2, 4, generator=torch.Generator().manual_seed(12), dtype=F64)
    return [("ring2d", ring, torch.tensor([[1.0, 0.0]], dtype=F64), True),
            ("random4d", rand, a_rand / a_rand.norm(dim=1, keepdim=True), False)]


def modes(x: torch.Tensor, prior: GaussianMixture) -> torch.Tensor:
    """The histogram (fractions) of the prior component of largest unweighted density at each sample."""
    comp = torch.distributions.MultivariateNormal(prior.means, prior.covariances)
    best = comp.log_prob(x[:, None, :]).argmax(1)
    return torch.bincount(best, minlength=prior.n_components).to(F64) / x.shape[0]


def stats(x: torch.Tensor, post: GaussianMixture, prior: GaussianMixture, n: int, seed: int) -> dict:
    exact = post.sample(n, generator=torch.Generator().manual_seed(10_000 + seed), dtype=F64)
    exact2 = post.sample(n, generator=torch.Generator().manual_seed(20_000 + seed), dtype=F64)
    proj = torch.Generator().manual_seed(30_000 + seed)
    w2, se = sliced_wasserstein2(x, exact, generator=proj)
    mean, cov = post.mean(), post.covariance()
    return {"sliced_w2": w2, "sliced_w2_se": se,
            "floor": sliced_wasserstein2(exact2, exact, generator=torch.Generator().manual_seed(30_000 + seed))[0],
            "mean_err": float((x.mean(0) - mean).norm()), "mean_se": float((torch.trace(cov) / n).sqrt()),
            "cov_err": float((torch.cov(x.T) - cov).norm() / cov.norm()),
            "mode_tv": float(0.5 * (modes(x, prior) - modes(exact, prior)).abs().sum()),
            "mode_tv_floor": float(0.5 * (modes(exact2, prior) - modes(exact, prior)).abs().sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 512 samples, no 1000-step DPS")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds, n = (1, 512) if args.quick else (args.seeds, args.samples)
    dps_steps = (50, 200) if args.quick else (50, 200, 1000)
    process = VP()
    records = []
    for name, gmm, a, coordinate in problems():
        model = gmm.model(process)
        prior = gmm.sample(n, generator=torch.Generator().manual_seed(99), dtype=F64)
        for noise_std in (0.1, 0.0):
            for seed in range(seeds):
                x_true = gmm.sample(1, generator=torch.Generator().manual_seed(seed), dtype=F64)[0]
                y = a @ x_true + noise_std * torch.randn(a.shape[0], generator=torch.Generator().manual_seed(
                    500 + seed), dtype=F64)
                post = gmm.condition(a, y, noise_std)
                base = {"problem": name, "dim": gmm.dim, "m": a.shape[0], "noise_std": noise_std, "seed": seed,
                        "prior_w2": sliced_wasserstein2(prior, post.sample(n, generator=torch.Generator().manual_seed(
                            10_000 + seed), dtype=F64), generator=torch.Generator().manual_seed(30_000 + seed))[0]}
                runs = [("dps", {"steps": s}) for s in dps_steps]
                if coordinate and noise_std == 0:
                    runs += [("inpaint", {"steps": 100}), ("inpaint", {"steps": 100, "n_resample": 5}),
                             ("inpaint", {"steps": 100, "n_resample": 5, "jump_length": 10})]
                for method, opts in runs:
                    gen = torch.Generator().manual_seed(40_000 + seed)
                    start = time.perf_counter()
                    if method == "dps":
                        sol = inverse.sample(model, y, a, noise_std, method="dps", n_samples=n, generator=gen, **opts)
                    else:
                        mask = torch.zeros(gmm.dim, dtype=F64)
                        mask[0] = 1.0
                        sol = inverse.sample(model, torch.cat([y, torch.zeros(gmm.dim - 1, dtype=F64)]), mask,
                                             method="inpaint", n_samples=n, generator=gen, **opts)
                    sec = time.perf_counter() - start
                    shown = {"jump_length": 1, "n_resample": 1, **opts} if method == "inpaint" else opts
                    rec = {**base, "method": method, **shown,
                           "nfe": sol.stats["nfe"], "seconds": round(sec, 3), **stats(sol.x, post, gmm, n, seed)}
                    records.append(rec)
                    print(f"{name:9s} noise {noise_std:<4g} seed {seed} {method:8s} {json.dumps(opts):42s} "
                          f"W2 {rec['sliced_w2']:.4f} (floor {rec['floor']:.4f}, prior {rec['prior_w2']:.3f})  "
                          f"mean err {rec['mean_err']:.4f} (se {rec['mean_se']:.4f})  cov err {rec['cov_err']:.3f}  "
                          f"mode TV {rec['mode_tv']:.3f} (floor {rec['mode_tv_floor']:.3f})",
                          flush=True)
    out = Path(args.out) if args.out else (Path(__file__).resolve().parent / "results" /
                                           ("bench_inverse_quick.json" if args.quick else "bench_inverse.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "num_threads": torch.get_num_threads(), "samples": n, "seeds": seeds,
            "note": "exact mixture model (no network error); sliced W2 to exact posterior samples of "
                    "GaussianMixture.condition; floor = W2 between two exact sets"}
    out.write_text(json.dumps({"benchmark": "bench_inverse", "meta": meta, "records": records}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
