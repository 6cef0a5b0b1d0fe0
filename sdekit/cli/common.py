"""What the ``sdekit`` commands share: models and processes by name, argument checks."""

from __future__ import annotations

import importlib
import math
import os
import sys

import torch

PROCESSES = ("vp", "vp-cosine", "vp-ddpm", "subvp", "ve", "edm")
#: Default tolerances of the float64 DOP853 reference solve in ``sdekit compare``: an analytic model is cheap
#: and smooth; a network costs ~0.5 s per evaluation of 256 images on a CPU, and its reference error at this
#: tolerance (measured by the built-in check against a 100 times looser solve) stays far below the sampler
#: errors the tables report.
REFERENCE_RTOL_ANALYTIC = 1e-10
REFERENCE_RTOL_NETWORK = 1e-8


def make_process(name: str):
    from ..processes import EDM, VE, VP, SubVP

    if name == "vp":
        return VP()
    if name == "vp-cosine":
        return VP("cosine")
    if name == "vp-ddpm":
        return VP.from_betas(torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    if name == "subvp":
        return SubVP()
    if name == "ve":
        return VE()
    if name == "edm":
        return EDM()
    raise ValueError(f"unknown process {name!r}; allowed: {', '.join(PROCESSES)}")


def load_model(spec: str | None, preset: str, process: str, dtype: str = "float64"):
    """The model to compare: ``package.module:factory`` (a callable returning an sdekit model), a zoo name,
    or the analytic preset under the chosen process."""
    if spec:
        if ":" in spec:
            mod_name, _, attr = spec.partition(":")
            cwd = os.getcwd()
            if cwd not in sys.path and "" not in sys.path:  # as `python -m` does: the user's own package
                sys.path.insert(0, cwd)
            try:
                mod = importlib.import_module(mod_name)
            except ImportError as e:
                raise ValueError(f"cannot import {mod_name!r} for --model {spec}: {e}") from None
            factory = getattr(mod, attr, None)
            if factory is None or not callable(factory):
                raise ValueError(f"--model {spec}: {mod_name} has no callable {attr!r}")
            model = factory()
            if not (hasattr(model, "process") and hasattr(model, "predict")):
                raise ValueError(f"--model {spec}: the factory returned {type(model).__name__}, not an sdekit model "
                                 "(needs .process and .predict, e.g. a ScoreModel)")
            return model, spec
        try:
            from .. import zoo
        except ImportError:
            raise ValueError(f"unknown model {spec!r}: give package.module:factory") from None
        known = zoo.available()
        if spec not in known:
            raise ValueError(f"unknown model {spec!r}: give package.module:factory or a zoo name ({', '.join(known)})")
        return zoo.load(spec, dtype=getattr(torch, dtype)), spec
    from ..analytic import PRESETS, GaussianMixture

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")
    return GaussianMixture.preset(preset).model(make_process(process)), f"{preset}/{process}"


#: the largest budget ``compare`` accepts (a million-step PF-ODE solve is already hours of a CPU)
MAX_NFE = 100_000


def _int_list(text: str, name: str, upper: int | None = None) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{name} must be a comma-separated list of integers, got {text!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise ValueError(f"{name} values must be positive integers, got {text!r}")
    if upper is not None and any(v > upper for v in vals):
        raise ValueError(f"{name} values must be in [1, {upper}], got {text!r}")
    return sorted(set(vals))


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 16 * 2**30


def check_samples(samples: int, shape, name: str = "--samples", copies: int = 8) -> None:
    """Refuse a sample count whose float64 states (``copies`` of them: x_T, reference, samples, solver
    stages) would not fit in this machine's memory, before any work starts."""
    per = 8 * math.prod(shape) * copies
    limit = max(2, _memory_bytes() // (2 * per))  # at most half the memory
    if not 1 <= samples <= limit:
        raise ValueError(f"{name} must be in [1, {limit}] for samples of shape {tuple(shape)} on this machine "
                         f"({_memory_bytes() / 2**30:.0f} GiB of memory), got {samples}")


def check_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: this torch build has no usable CUDA device (torch "
                         f"{torch.__version__}); use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {device}: only cpu and cuda are supported")
    return dev
