"""Retrain the checkpoints shipped in ``sdekit/zoo`` from their recipes (``sdekit.zoo.RECIPES``).

    python scripts/train_zoo.py moons-vp-eps            # writes sdekit/zoo/moons-vp-eps.{safetensors,json}
    python scripts/train_zoo.py --all --out /tmp/zoo     # every recipe, elsewhere
    python scripts/train_zoo.py digits-vp-eps --steps 50 --out /tmp/zoo   # a smoke run
    python scripts/train_zoo.py digits-latent-vp-eps   # autoencoder, then a score network on its latents

Training state (weights, EMA, optimiser, RNG, step) is saved every ``checkpoint_every`` steps to
``runs/zoo/NAME.pt``; running the same command again resumes from it (``--fresh`` starts over). The shipped
files are safetensors plus a JSON sidecar with the settings, final loss and wall time (a latent model adds
``NAME.autoencoder.safetensors``; its autoencoder is retrained, in about half a minute, on every run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from sdekit import zoo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"recipes to train: {', '.join(sorted(zoo.RECIPES))}")
    parser.add_argument("--all", action="store_true", help="train every recipe")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: the package's zoo)")
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's number of steps")
    parser.add_argument("--state-dir", type=Path, default=Path("runs/zoo"), help="resume-state folder")
    parser.add_argument("--fresh", action="store_true", help="ignore an existing resume state")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: on a shared machine more threads oversubscribe)")
    args = parser.parse_args(argv)
    names = sorted(zoo.RECIPES) if args.all else args.names
    if not names:
        parser.error("give recipe names or --all")
    unknown = [n for n in names if n not in zoo.RECIPES]
    if unknown:
        parser.error(f"unknown recipe(s) {unknown}; known: {', '.join(sorted(zoo.RECIPES))}")
    torch.set_num_threads(args.threads)
    args.state_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        suffix = "" if args.steps is None else f"-{args.steps}"
        state = args.state_dir / f"{name}{suffix}.pt"
        record = zoo.train_recipe(name, args.out, steps=args.steps, checkpoint_path=state, resume=not args.fresh,
                                  progress=not args.quiet)
        print(f"{name}: {record['steps']} steps, final loss {record['final_loss']:.4f}, "
              f"eval loss {record['eval_loss']:.4f}, {record['wall_time_s']:.0f} s wall, "
              f"{record['cpu_time_s']:.0f} s CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
