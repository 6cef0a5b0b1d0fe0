"""The interpolation figure of docs/inversion.md: two held-out digits, their PF-ODE latents, and the digits
sampled along the spherical path between the latents (the shipped ``digits-vp-eps`` network, float64).

    python scripts/interpolation_figure.py [--out docs/img/digits-interpolation.png] [--steps 50]

Row 1..K: one pair of held-out digits each; first and last columns are the round trips (inversion, then
sampling) of the two inputs, the columns between them the interpolation. Prints the round-trip RMSE.
"""

from __future__ import annotations

import argparse
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import sdekit  # noqa: E402
from sdekit import zoo  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs/img/digits-interpolation.png")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--solver", default="dpmpp_2m")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = zoo.load("digits-vp-eps", dtype=torch.float64)
    images, _ = zoo.heldout("digits-vp-eps")
    images = images.to(torch.float64)
    a, b = images[: args.pairs], images[args.pairs: 2 * args.pairs]
    start = time.perf_counter()
    frames = sdekit.interpolate(model, a, b, args.frames, solver=args.solver, steps=args.steps)
    seconds = time.perf_counter() - start
    rt = torch.cat([frames[0] - a, frames[-1] - b]).pow(2).mean().sqrt().item()
    print(f"{args.pairs} pairs x {args.frames} frames, {args.solver} {args.steps} steps: {seconds:.1f} s; "
          f"round-trip RMSE {rt:.2e} (pixels in [-1, 1])")
    cols = args.frames + 2
    fig, axes = plt.subplots(args.pairs, cols, figsize=(cols * 0.9, args.pairs * 0.95))
    for i in range(args.pairs):
        row = [a[i]] + [frames[k, i] for k in range(args.frames)] + [b[i]]
        for j, img in enumerate(row):
            ax = axes[i, j]
            ax.imshow(img.reshape(img.shape[-2], img.shape[-1]).clamp(-1, 1).numpy(), cmap="gray_r", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("input" if j in (0, cols - 1) else f"{(j - 1) / (args.frames - 1):.2f}", fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
