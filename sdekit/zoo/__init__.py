"""Trained score models shipped with sdekit, loadable by name, and the format they are stored in.

``sdekit.zoo.load("moons-vp-eps")`` returns a :class:`~sdekit.models.ScoreModel` (EMA weights, network in
eval mode with gradients off for its parameters, ``.process`` and ``.sample_shape`` set). :func:`available`
lists the names; :func:`info` returns a checkpoint's sidecar. Names are looked up in the package's folder
(:data:`ZOO_DIR`), or in the folder named by the environment variable ``SDEKIT_ZOO_DIR`` when it is set (so
the ``sdekit`` command can use your own checkpoints), or in the ``root`` passed to these functions.

**Format.** A checkpoint is two files: ``NAME.safetensors`` (the state dict; safetensors holds raw tensors
only, so loading never unpickles anything) and ``NAME.json``, a sidecar with the architecture name and
keyword arguments, the process spec (:func:`process_spec`), prediction, time input, sample shape, the name,
shape and dtype of every tensor, the SHA-256 of the weights file, the data, the training settings, final
loss, wall time and the sdekit version. :func:`load` checks the weights against the sidecar (keys, shapes,
hash) and against the architecture it builds, and raises :class:`CheckpointError` naming the file and the
difference, also for a weights file that is not valid safetensors (truncated, empty, a corrupt header) and for
a sidecar without a well-formed ``sha256``.

**Reproduction.** :data:`RECIPES` says how each shipped model was trained; ``python scripts/train_zoo.py
NAME`` (or :func:`train_recipe`) retrains it and writes both files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..models import ScoreModel
from ..nets import build
from ..processes import EDM, VE, VP, DiffusionProcess, SubVP
from ..schedules import CosineSchedule, DiscreteSchedule, LinearSchedule

__all__ = [
    "FORMAT",
    "ZOO_DIR",
    "ZOO_DIR_ENV",
    "RECIPES",
    "CheckpointError",
    "Recipe",
    "available",
    "heldout",
    "info",
    "load",
    "process_from_spec",
    "process_spec",
    "quantization",
    "save",
    "to_levels",
    "train_recipe",
]

FORMAT = "sdekit-zoo/1"
#: The folder of the checkpoints shipped in the package.
ZOO_DIR = Path(__file__).resolve().parent
#: Environment variable naming a folder to look names up in instead of :data:`ZOO_DIR`.
ZOO_DIR_ENV = "SDEKIT_ZOO_DIR"
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


class CheckpointError(ValueError):
    """A checkpoint whose files are unreadable, or whose sidecar does not describe its weights (or is malformed).

    A :class:`ValueError`, so the ``sdekit`` command reports it as one line.
    """


# ----------------------------------------------------------------------------------------------------
# Process specs
# ----------------------------------------------------------------------------------------------------


def process_spec(process: DiffusionProcess) -> dict:
    """A JSON-able description of ``process`` that :func:`process_from_spec` turns back into an equal one.

    VP/SubVP: ``{"type": "VP", "schedule": "linear", "beta_min", "beta_max", "t_min"}``, ``"cosine"`` with
    ``s``, ``t_max``, ``t_min``, or ``"discrete"`` with the ``alphas_cumprod`` list; VE: ``sigma_min``,
    ``sigma_max``, ``t_min``; EDM: ``sigma_min``, ``sigma_max``, ``sigma_data``.
    """
    if isinstance(process, VP):  # SubVP too
        kind = "SubVP" if isinstance(process, SubVP) else "VP"
        s = process.schedule
        if isinstance(s, LinearSchedule):
            return {"type": kind, "schedule": "linear", "beta_min": s.beta_min, "beta_max": s.beta_max,
                    "t_min": s.t_min}
        if isinstance(s, CosineSchedule):
            return {"type": kind, "schedule": "cosine", "s": s.s, "t_max": s.t_max, "t_min": s.t_min}
        if isinstance(s, DiscreteSchedule):
            return {"type": kind, "schedule": "discrete", "alphas_cumprod": s.alphas_cumprod.tolist()}
        raise ValueError(f"cannot describe the schedule {s!r} as JSON")
    if isinstance(process, VE):
        return {"type": "VE", "sigma_min": process.sigma_min, "sigma_max": process.sigma_max, "t_min": process.t_min}
    if isinstance(process, EDM):
        return {"type": "EDM", "sigma_min": process.sigma_min, "sigma_max": process.sigma_max,
                "sigma_data": process.sigma_data}
    raise ValueError(f"cannot describe the process {process!r} as JSON")


def process_from_spec(spec: dict) -> DiffusionProcess:
    """Inverse of :func:`process_spec`. A discrete VP also accepts ``"betas"`` (a list) or
    ``"ddpm_linear": {"num_steps", "beta_start", "beta_end"}`` instead of ``alphas_cumprod``."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"a process spec is a dict with a 'type', got {spec!r}")
    kind = spec["type"]
    rest = {k: v for k, v in spec.items() if k not in ("type", "schedule")}
    if kind in ("VP", "SubVP"):
        cls = SubVP if kind == "SubVP" else VP
        schedule = spec.get("schedule", "linear")
        if schedule == "discrete":
            if "alphas_cumprod" in rest:
                return cls(DiscreteSchedule(rest["alphas_cumprod"]))
            if "betas" in rest:
                return cls(DiscreteSchedule.from_betas(rest["betas"]))
            if "ddpm_linear" in rest:
                return cls(DiscreteSchedule.linear_ddpm(**rest["ddpm_linear"]))
            raise ValueError("a discrete VP spec needs 'alphas_cumprod', 'betas' or 'ddpm_linear'")
        if schedule not in ("linear", "cosine"):
            raise ValueError(f"unknown VP schedule {schedule!r} in process spec; allowed: linear, cosine, discrete")
        return cls(schedule, **rest)
    if kind == "VE":
        return VE(**rest)
    if kind == "EDM":
        return EDM(**rest)
    raise ValueError(f"unknown process type {kind!r} in process spec; allowed: VP, SubVP, VE, EDM")


# ----------------------------------------------------------------------------------------------------
# Saving and loading
# ----------------------------------------------------------------------------------------------------


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sdekit_version() -> str:
    from .. import __version__

    return __version__


def save(path: str | os.PathLike, net: nn.Module, process: DiffusionProcess, *, prediction: str = "eps",
         time_input: str = "t", sample_shape: tuple[int, ...] | None = None, name: str | None = None,
         data: dict | None = None, training: dict | None = None) -> tuple[Path, Path]:
    """Write ``PATH.safetensors`` (``net``'s state dict) and its sidecar ``PATH.json``; return both paths.

    ``net`` must be a registered architecture (:data:`sdekit.nets.ARCHITECTURES`) with a ``config``.
    ``data`` and ``training`` are free-form JSON-able records stored in the sidecar.
    """
    from safetensors.torch import save_file

    arch = type(net).__name__
    config = getattr(net, "config", None)
    if config is None:
        raise ValueError(f"{arch} has no .config; only sdekit.nets architectures can be saved to the zoo")
    ScoreModel(net, process, prediction, time_input)  # validates the combination
    weights_path, sidecar_path = _paths(path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    save_file(tensors, str(weights_path), metadata={"format": FORMAT, "architecture": arch})
    sidecar = {
        "format": FORMAT,
        "name": name or weights_path.stem,
        "architecture": {"name": arch, "kwargs": config},
        "process": process_spec(process),
        "prediction": prediction,
        "time_input": time_input,
        "sample_shape": list(sample_shape) if sample_shape is not None else None,
        "weights": {
            "file": weights_path.name,
            "sha256": _sha256(weights_path),
            "num_parameters": sum(p.numel() for p in net.parameters()),
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
                        for k, v in tensors.items()},
        },
        "data": data,
        "training": training,
        "sdekit_version": _sdekit_version(),
    }
    sidecar_path.write_text(json.dumps(sidecar, indent=1) + "\n")
    return weights_path, sidecar_path


def _zoo_dir(root: str | os.PathLike | None) -> Path:
    """The folder names are looked up in: ``root``, else ``$SDEKIT_ZOO_DIR`` when set and non-empty, else
    :data:`ZOO_DIR`."""
    if root is not None:
        return Path(root)
    from_env = os.environ.get(ZOO_DIR_ENV)
    return Path(from_env) if from_env else ZOO_DIR


def available(root: str | os.PathLike | None = None) -> list[str]:
    """Names of the checkpoints in the zoo folder (each ``NAME.json`` beside ``NAME.safetensors``).

    The folder is ``root`` if given, else ``$SDEKIT_ZOO_DIR`` if set, else the package's (:data:`ZOO_DIR`).
    """
    folder = _zoo_dir(root)
    return sorted(p.stem for p in folder.glob("*.json") if (folder / f"{p.stem}.safetensors").exists())


def _resolve(name_or_path: str | os.PathLike, root: str | os.PathLike | None = None) -> tuple[Path, Path]:
    folder = _zoo_dir(root)
    known = available(folder)
    if isinstance(name_or_path, str) and name_or_path in known:
        return _paths(folder / name_or_path)
    weights_path, sidecar_path = _paths(name_or_path)
    looks_like_path = isinstance(name_or_path, os.PathLike) or any(s in str(name_or_path) for s in ("/", os.sep))
    if sidecar_path.exists() or looks_like_path or str(name_or_path).endswith((".json", ".safetensors")):
        if not sidecar_path.exists():
            raise FileNotFoundError(f"no sidecar {sidecar_path} for checkpoint {name_or_path!r}")
        return weights_path, sidecar_path
    where = "" if folder == ZOO_DIR else f" (zoo folder {folder})"
    raise ValueError(f"unknown zoo model {name_or_path!r}; known: {', '.join(known) or '(none)'}{where}")


def info(name_or_path: str | os.PathLike, *, root: str | os.PathLike | None = None) -> dict:
    """The sidecar of a zoo checkpoint (by name, looked up as in :func:`available`) or of ``PATH.json``.

    Raises:
        CheckpointError: the sidecar is not valid JSON, not an ``sdekit-zoo/1`` sidecar, lacks a required
            entry, or lacks a well-formed ``weights.sha256`` (64 hexadecimal digits).
    """
    _, sidecar_path = _resolve(name_or_path, root)
    try:
        sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"sidecar {sidecar_path} is not valid JSON: {exc}") from exc
    if not isinstance(sidecar, dict) or sidecar.get("format") != FORMAT:
        raise CheckpointError(f"sidecar {sidecar_path} is not an {FORMAT} sidecar")
    missing = [k for k in ("architecture", "process", "prediction", "time_input", "weights") if k not in sidecar]
    if missing:
        raise CheckpointError(f"sidecar {sidecar_path} lacks {', '.join(missing)}")
    weights = sidecar["weights"]
    if not isinstance(weights, dict):
        raise CheckpointError(f"sidecar {sidecar_path}: 'weights' must be a JSON object, got {type(weights).__name__}")
    # The hash is what ties the sidecar to its weights; a sidecar without one must not load unchecked.
    digest = weights.get("sha256")
    if digest is None:
        raise CheckpointError(f"sidecar {sidecar_path} lacks weights.sha256 (the SHA-256 of the weights file, "
                              "required to check them)")
    if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
        shown = repr(digest) if len(repr(digest)) <= 80 else repr(digest)[:77] + "..."
        raise CheckpointError(f"sidecar {sidecar_path} has a malformed weights.sha256 {shown}: expected 64 "
                              "hexadecimal digits")
    if not isinstance(weights.get("file", ""), str):
        raise CheckpointError(f"sidecar {sidecar_path}: weights.file must be a file name")
    return sidecar


def _shape_diff(expected: dict[str, list[int]], got: dict[str, list[int]]) -> str:
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    shapes = [f"{k}: expected {expected[k]}, got {got[k]}" for k in sorted(set(expected) & set(got))
              if list(expected[k]) != list(got[k])]
    parts = []
    if missing:
        parts.append(f"missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if extra:
        parts.append(f"unexpected tensors {extra[:5]}{' ...' if len(extra) > 5 else ''}")
    if shapes:
        parts.append("shape mismatch " + "; ".join(shapes[:5]) + (" ..." if len(shapes) > 5 else ""))
    return ", ".join(parts)


def _read_weights(weights_path: Path, sidecar_path: Path, digest: str) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` with a file that is not valid safetensors reported as a CheckpointError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__  # one line, whatever the library wrote
        if _sha256(weights_path) != digest:
            reason += f"; its SHA-256 differs from sidecar {sidecar_path.name} (changed or cut short since written)"
        # from None: the reason is in the message, and the library's traceback would only hide it
        raise CheckpointError(f"weights file {weights_path} is not a valid safetensors file: {reason}") from None


def load(name_or_path: str | os.PathLike, *, device: str | torch.device | None = None,
         dtype: torch.dtype | None = None, root: str | os.PathLike | None = None) -> ScoreModel:
    """Load a zoo checkpoint by name (see :func:`available`, also for ``root``) or ``PATH`` (``.safetensors`` or
    ``.json``).

    The weights are read with ``safetensors.torch.load_file`` (no pickle), checked against the sidecar's
    tensor names, shapes and SHA-256 and against the architecture built from the sidecar, and loaded into
    it. Returns a :class:`~sdekit.models.ScoreModel` whose ``net`` is in eval mode with parameter gradients
    off (call ``model.net.requires_grad_(True)`` to fine-tune); ``dtype`` converts the network (e.g.
    float64 for likelihoods).

    Raises:
        ValueError: unknown name (the message lists the known ones).
        FileNotFoundError: ``PATH`` has no sidecar.
        CheckpointError: the weights file is not valid safetensors (truncated, empty, corrupt header), the
            sidecar is malformed or lacks ``weights.sha256``, or the sidecar does not match the weights (names,
            shapes, SHA-256) or the architecture. The message names the file.
    """
    weights_path, sidecar_path = _resolve(name_or_path, root)
    sidecar = info(sidecar_path)
    weights_path = sidecar_path.with_name(sidecar["weights"].get("file", weights_path.name))
    if not weights_path.is_file():
        raise CheckpointError(f"weights file {weights_path} named by sidecar {sidecar_path} does not exist")
    digest = sidecar["weights"]["sha256"].lower()
    tensors = _read_weights(weights_path, sidecar_path, digest)
    entries = sidecar["weights"].get("tensors", {})
    if not isinstance(entries, dict) or not all(isinstance(v, dict) and isinstance(v.get("shape"), list)
                                                for v in entries.values()):
        raise CheckpointError(f"sidecar {sidecar_path}: weights.tensors must map each tensor name to an object "
                              "with a 'shape' list")
    declared = {k: v["shape"] for k, v in entries.items()}
    found = {k: list(v.shape) for k, v in tensors.items()}
    diff = _shape_diff(declared, found)
    if diff:
        raise CheckpointError(f"{weights_path.name} does not match its sidecar {sidecar_path.name}: {diff}")
    if digest != _sha256(weights_path):
        raise CheckpointError(f"weights file {weights_path} does not match its sidecar {sidecar_path.name}: SHA-256 "
                              "differs (the weights were changed after the sidecar was written)")
    arch = sidecar["architecture"]
    try:
        net = build(arch["name"], **arch.get("kwargs", {}))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"sidecar {sidecar_path.name} names an architecture that cannot be built: {exc}") from exc
    expected = {k: list(v.shape) for k, v in net.state_dict().items()}
    diff = _shape_diff(expected, found)
    if diff:
        raise CheckpointError(f"{weights_path.name} does not fit the architecture {arch['name']} described by "
                              f"{sidecar_path.name}: {diff}")
    net.load_state_dict(tensors, strict=True)
    net.to(device=device, dtype=dtype).eval().requires_grad_(False)
    process = process_from_spec(sidecar["process"])
    shape = sidecar.get("sample_shape")
    return ScoreModel(net, process, sidecar["prediction"], sidecar["time_input"],
                      sample_shape=tuple(shape) if shape is not None else None)


# ----------------------------------------------------------------------------------------------------
# Recipes: how the shipped checkpoints are made
# ----------------------------------------------------------------------------------------------------


@dataclass
class Recipe:
    """Everything that makes one shipped checkpoint: data, architecture, process, training settings."""

    data: dict
    architecture: str
    kwargs: dict
    process: dict
    train: dict
    eval_size: int = 4096
    notes: str = ""
    sample_shape: tuple[int, ...] = ()


RECIPES: dict[str, Recipe] = {
    "moons-vp-eps": Recipe(
        data={"name": "moons", "n": 20000, "seed": 0, "noise": 0.05},
        architecture="MLPScoreNet",
        kwargs={"dim": 2, "hidden": 128, "num_blocks": 3, "time_embedding": "sinusoidal", "embed_dim": 64},
        process={"type": "VP", "schedule": "linear", "beta_min": 0.1, "beta_max": 20.0, "t_min": 1e-3},
        train={"steps": 12000, "batch_size": 1024, "lr": 2e-3, "warmup_steps": 100, "lr_schedule": "cosine",
               "ema_decay": 0.999, "prediction": "eps", "time_input": "t", "t_min": 1e-5, "seed": 0},
        sample_shape=(2,),
        notes="two moons (scikit-learn make_moons, noise 0.05, unscaled); eval: 4096 fresh points (seed 1)",
    ),
    "digits-vp-eps": Recipe(
        data={"name": "digits", "split": "train", "scaling": "v/8 - 1", "labels": True},
        architecture="UNet",
        kwargs={"in_channels": 1, "base_channels": 32, "channel_mults": [1, 2], "num_res_blocks": 1,
                "attention_levels": [1], "num_heads": 2, "groups": 8, "image_size": 8, "num_classes": 10},
        process={"type": "VP", "schedule": "linear", "beta_min": 0.1, "beta_max": 20.0, "t_min": 1e-3},
        train={"steps": 3000, "batch_size": 128, "lr": 2e-3, "warmup_steps": 200, "lr_schedule": "cosine",
               "ema_decay": 0.999, "prediction": "eps", "time_input": "t", "t_min": 1e-5, "p_uncond": 0.2,
               "seed": 0},
        sample_shape=(1, 8, 8),
        notes="scikit-learn 8x8 digits, first 1500 images, class-conditional with a null class; eval: the "
              "297 test images, unconditional",
    ),
}


def _recipe_data(recipe: Recipe, *, eval_split: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    from .. import training

    spec = recipe.data
    if spec["name"] == "digits":
        images, labels = training.digits("test" if eval_split else spec["split"])
        return images, (labels if spec.get("labels") else None)
    seed = spec["seed"] + 1 if eval_split else spec["seed"]
    n = recipe.eval_size if eval_split else spec["n"]
    return training.toy_data(spec["name"], n, seed=seed, noise=spec.get("noise")), None


#: How the quantized data sets that shipped models train on map to model space, for bits/dim
#: (:func:`sdekit.bits_per_dim`'s ``levels``, ``scale``, ``offset``): scikit-learn's digits hold levels
#: ``k ∈ {0, …, 16}`` trained on as the bin centres ``k/8 - 1``, so bin ``k`` is ``[k/8 - 1 - 1/16, k/8 - 1 + 1/16)``.
QUANTIZATION = {"digits": {"levels": 17, "scale": 1 / 8, "offset": -1 - 1 / 16}}


def heldout(name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Held-out data of a shipped model, in model space: ``(data, labels or None)``.

    ``digits-vp-eps``: the 297 test digits (never trained on) with their labels; ``moons-vp-eps``: 4,096
    fresh points of the training distribution (seed 1; the training set is seed 0).
    """
    if name not in RECIPES:
        raise ValueError(f"no held-out data for {name!r}: known zoo recipes {', '.join(sorted(RECIPES))}")
    recipe = RECIPES[name]
    data, _ = _recipe_data(recipe, eval_split=True)
    labels = None
    if recipe.data["name"] == "digits":
        from ..training import digits

        data, labels = digits("test")
    return data, labels


def quantization(name: str) -> dict | None:
    """``{"levels", "scale", "offset"}`` of a shipped model's quantized data (see :data:`QUANTIZATION`), or
    ``None`` for continuous data such as two moons."""
    if name not in RECIPES:
        raise ValueError(f"unknown zoo recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
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


@torch.no_grad()
def _eval_loss(net, process, data, config, seed: int = 2) -> float:
    """EMA loss on held-out data with fixed times and noise (unconditional), in the training weighting."""
    from ..training import diffusion_loss, sample_times

    gen = torch.Generator().manual_seed(seed)
    t = sample_times(process, data.shape[0], generator=gen, time_input=config.time_input, t_min=config.t_min,
                     t_max=config.t_max)
    noise = torch.randn(data.shape, generator=gen, dtype=data.dtype)
    loss = diffusion_loss(net, process, data, t, noise, prediction=config.prediction, time_input=config.time_input,
                          weighting=config.weighting, snr_clip=config.snr_clip)
    return float(loss.mean())


def train_recipe(name: str, out_dir: str | os.PathLike | None = None, *, steps: int | None = None,
                 checkpoint_path: str | os.PathLike | None = None, resume: bool = True,
                 progress: bool = True) -> dict:
    """Train the shipped model ``name`` from its recipe and save it to ``out_dir/NAME.{safetensors,json}``.

    ``out_dir`` defaults to the package's zoo folder; ``steps`` overrides the recipe (for smoke tests).
    Returns the sidecar's ``training`` record.
    """
    from ..training import TrainConfig, train

    if name not in RECIPES:
        raise ValueError(f"unknown zoo recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
    recipe = RECIPES[name]
    settings = dict(recipe.train)
    if steps is not None:
        settings["steps"] = steps
    config = TrainConfig(**settings)
    with torch.random.fork_rng(devices=[]):  # parameter init reads the global RNG: fix it, then restore it
        torch.manual_seed(config.seed)
        net = build(recipe.architecture, **recipe.kwargs)
    process = process_from_spec(recipe.process)
    data, labels = _recipe_data(recipe)
    started = time.time()
    result = train(net, process, data, config, labels=labels, checkpoint_path=checkpoint_path, resume=resume,
                   progress=progress)
    eval_data, _ = _recipe_data(recipe, eval_split=True)
    record = {
        **asdict(config),
        "final_loss": round(result.final_loss, 6),
        "eval_loss": round(_eval_loss(result.ema, process, eval_data, config), 6),
        "wall_time_s": round(result.wall_time_s, 1),
        "cpu_time_s": round(result.cpu_time_s, 1),
        "finished": time.strftime("%Y-%m-%d", time.gmtime(started)),
        "device": "cpu" if next(net.parameters()).device.type == "cpu" else torch.cuda.get_device_name(),
        "num_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "notes": recipe.notes,
    }
    if not math.isfinite(record["final_loss"]):
        raise FloatingPointError(f"training {name} ended with a non-finite loss")
    out = Path(out_dir) if out_dir is not None else ZOO_DIR
    save(out / name, result.ema, process, prediction=config.prediction, time_input=config.time_input,
         sample_shape=recipe.sample_shape, name=name, data=recipe.data, training=record)
    return record
