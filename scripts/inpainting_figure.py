"""The inpainting figure of docs/inverse.md: held-out digits with their lower half hidden, completed by RePaint and
by DPS with the shipped ``digits-vp-eps`` network (float64).

    python scripts/inpainting_figure.py [--out docs/img/digits-inpainting.png] [--digits 5] [--samples 3]

Row per digit: the held-out digit, what is observed (the upper half; the hidden half drawn in mid grey), then
``--samples`` completions by RePaint (replacement with resampling) and as many by DPS. Prints the time of each
method and the RMSE of the observed half (pixels in [-1, 1]): exactly 0 for RePaint, which copies it, and
DPS's residual, which it only reduces.
"""

from __future__ import annotations

import argparse
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from sdekit import inverse, zoo  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs/img/digits-inpainting.png")
    parser.add_argument("--digits", type=int, default=5)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100, help="grid steps of both methods")
    parser.add_argument("--jump-length", type=int, default=5)
    parser.add_argument("--n-resample", type=int, default=5)
    parser.add_argument("--zeta", type=float, default=None,
                        help="DPS's zeta' (default: sdekit.inverse's, 20/steps)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = zoo.load("digits-vp-eps", dtype=torch.float64)
    images, labels = zoo.heldout("digits-vp-eps")
    # the first held-out image of each of the first --digits classes: different digits, none seen in training
    picks = [int((labels == c).nonzero()[0]) for c in range(args.digits)]
    x0 = images[picks].to(torch.float64)  # (n, 1, 8, 8) in [-1, 1]
    mask = torch.zeros(1, 8, 8, dtype=torch.float64)
    mask[..., :4, :] = 1.0  # observe the upper half
    n, k = len(picks), args.samples
    y = (x0 * mask).repeat_interleave(k, 0)  # one measurement per sample: k samples per digit

    start = time.perf_counter()
    repaint = inverse.sample(model, y, mask, method="inpaint", steps=args.steps, jump_length=args.jump_length,
                             n_resample=args.n_resample, generator=torch.Generator().manual_seed(args.seed))
    t_repaint = time.perf_counter() - start
    # DPS with the same observation as a matrix: the rows of the identity at the observed pixels
    rows = torch.eye(64, dtype=torch.float64)[mask.reshape(-1).bool()]
    start = time.perf_counter()
    dps = inverse.sample(model, y.reshape(n * k, -1) @ rows.T, rows, 0.0, method="dps", steps=args.steps,
                         zeta=args.zeta, generator=torch.Generator().manual_seed(args.seed + 1))
    t_dps = time.perf_counter() - start
    observed = mask.bool().expand_as(y)
    for name, sol, sec in (("RePaint", repaint, t_repaint), ("DPS", dps, t_dps)):
        rmse = (sol.x - y)[observed].pow(2).mean().sqrt().item()
        print(f"{name}: {sol.stats['nfe']} evaluations, {sec:.1f} s; RMSE on the observed half {rmse:.3g}")

    cols = 2 + 2 * k
    fig, axes = plt.subplots(n, cols, figsize=(cols * 0.8 + 0.3, n * 0.85 + 0.3))
    shown = x0 * mask  # the hidden half at 0: mid grey on the [-1, 1] scale
    for i in range(n):
        row = [x0[i], shown[i]] + [repaint.x[i * k + j] for j in range(k)] + [dps.x[i * k + j] for j in range(k)]
        for j, img in enumerate(row):
            ax = axes[i, j]
            ax.imshow(img.reshape(8, 8).clamp(-1, 1).numpy(), cmap="gray_r", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
    titles = ["held out", "observed"] + ["RePaint"] * k + ["DPS"] * k
    for j, title in enumerate(titles):
        axes[0, j].set_title(title, fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
