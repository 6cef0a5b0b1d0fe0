"""Data sets that need no download, the shipped models' held-out data, and quantisation for bits/dim.

- `toy_data` (two moons, swiss roll, checkerboard) and `digits` (scikit-learn's 8×8 digits, 1,797
  images, values 0..16 mapped to ``v/8 - 1`` in [-1, 1]; the last 297 are the test split).
- `heldout`: a shipped model's held-out data in model space; `quantization` / `to_levels`: how
  quantized data map to model space ([`sdekit.bits_per_dim`][]'s ``levels``, ``scale``, ``offset``).
"""

from __future__ import annotations

import torch

from ._utils import check_choice

__all__ = ["DIGITS_TEST_SIZE", "QUANTIZATION", "TOY_DATASETS", "digits", "heldout", "quantization", "to_levels",
           "toy_data"]

TOY_DATASETS = ("moons", "swiss_roll", "checkerboard")
DIGITS_TEST_SIZE = 297


def toy_data(name: str, n: int, *, seed: int = 0, noise: float | None = None) -> torch.Tensor:
    """``n`` points of a 2-D toy distribution as a float32 ``(n, 2)`` tensor, reproducible from ``seed``.

    - ``"moons"``: scikit-learn's two moons (``noise`` default 0.05), as generated (x in [-1, 2], y in
      [-0.5, 1]).
    - ``"swiss_roll"``: scikit-learn's swiss roll (``noise`` default 0.5), coordinates (x, z) divided by 5.
    - ``"checkerboard"``: uniform on the 8 dark squares of a 4×4 board on [-2, 2]² (``noise`` unused).
    """
    check_choice(name, "toy data set", TOY_DATASETS)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if name == "moons":
        from sklearn.datasets import make_moons

        x, _ = make_moons(n, noise=0.05 if noise is None else noise, random_state=seed)
        return torch.as_tensor(x, dtype=torch.float32)
    if name == "swiss_roll":
        from sklearn.datasets import make_swiss_roll

        x, _ = make_swiss_roll(n, noise=0.5 if noise is None else noise, random_state=seed)
        return torch.as_tensor(x[:, [0, 2]] / 5.0, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    # Pick a column 0..3 and a row of the same parity class, then a uniform point inside that square.
    col = torch.randint(0, 4, (n,), generator=gen)
    row = 2 * torch.randint(0, 2, (n,), generator=gen) + (col % 2)
    u = torch.rand(n, 2, generator=gen)
    return torch.stack([col + u[:, 0], row + u[:, 1]], dim=1).float() - 2.0


def digits(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8×8 handwritten digits: ``(images (N, 1, 8, 8) float32 in [-1, 1], labels (N,) long)``.

    Pixel values ``v ∈ {0, …, 16}`` map to ``v/8 - 1``. ``split``: ``"train"`` (the first 1,500 images),
    ``"test"`` (the last 297, held out for likelihoods) or ``"all"``.
    """
    check_choice(split, "split", ("train", "test", "all"))
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    cut = images.shape[0] - DIGITS_TEST_SIZE
    if split == "train":
        return images[:cut], labels[:cut]
    if split == "test":
        return images[cut:], labels[cut:]
    return images, labels


#: How the quantized data sets that shipped models train on map to model space, for bits/dim
#: ([`sdekit.bits_per_dim`][]'s ``levels``, ``scale``, ``offset``): scikit-learn's digits hold levels
#: ``k ∈ {0, …, 16}`` trained on as the bin centres ``k/8 - 1``, so bin ``k`` is ``[k/8 - 1 - 1/16, k/8 - 1 + 1/16)``.
QUANTIZATION = {"digits": {"levels": 17, "scale": 1 / 8, "offset": -1 - 1 / 16}}


def heldout(name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Held-out data of a shipped model, in model space: ``(data, labels or None)``.

    ``digits-vp-eps``: the 297 test digits (never trained on) with their labels; ``moons-vp-eps``: 4,096
    fresh points of the training distribution (seed 1; the training set is seed 0);
    ``digits-latent-vp-eps``: the 297 test digits encoded by the model's autoencoder, ``(297, 12)`` latents (its
    model space; ``zoo.load(name).decode(data)`` shows them as images), with their labels.
    """
    from .training import RECIPES, recipe_data

    if name not in RECIPES:
        raise ValueError(f"no held-out data for {name!r}: known zoo recipes {', '.join(sorted(RECIPES))}")
    recipe = RECIPES[name]
    autoencoder = None
    if recipe.autoencoder is not None:
        from .zoo import load

        autoencoder = load(name).autoencoder
    data, _ = recipe_data(recipe, eval_split=True, autoencoder=autoencoder)
    labels = None
    if recipe.data["name"] == "digits":
        labels = digits("test")[1]
    return data, labels


def quantization(name: str) -> dict | None:
    """``{"levels", "scale", "offset"}`` of a shipped model's quantized data (see `QUANTIZATION`), or
    ``None`` for continuous data such as two moons, and for a latent model (its latents are not quantized)."""
    from .training import RECIPES

    if name not in RECIPES:
        raise ValueError(f"unknown zoo recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
    if RECIPES[name].autoencoder is not None:
        return None
    q = QUANTIZATION.get(RECIPES[name].data["name"])
    return None if q is None else dict(q)


def to_levels(x: torch.Tensor, quant: dict) -> torch.Tensor:
    """Model-space bin centres back to integer levels ``k`` (inverse of ``x = scale·(k + ½) + offset``)."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN/Inf")
    k = torch.round((x.double() - quant["offset"]) / quant["scale"] - 0.5)
    if bool((k < 0).any()) or bool((k > quant["levels"] - 1).any()):
        raise ValueError(f"data outside the {quant['levels']} quantization levels")
    return k.to(torch.long)
