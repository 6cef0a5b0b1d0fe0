"""Trained score models shipped with sdekit, loadable by name, and the format they are stored in.

``sdekit.zoo.load("moons-vp-eps")`` returns a [`ScoreModel`][sdekit.models.ScoreModel] (EMA weights, network in
eval mode with gradients off for its parameters, ``.process`` and ``.sample_shape`` set). `available`
lists the names; `info` returns a checkpoint's sidecar. Names are looked up in the package's folder
(`ZOO_DIR`), or in the folder named by the environment variable ``SDEKIT_ZOO_DIR`` when it is set (so
the ``sdekit`` command can use your own checkpoints), or in the ``root`` passed to these functions.

**Format.** A checkpoint is two files: ``NAME.safetensors`` (the state dict; safetensors holds raw tensors
only, so loading never unpickles anything) and ``NAME.json``, a sidecar with the architecture name and
keyword arguments, the process spec (`process_spec`), prediction, time input, sample shape, the name,
shape and dtype of every tensor, the SHA-256 of the weights file, the data, the training settings, final
loss, wall time and the sdekit version. `load` checks the weights against the sidecar (keys, shapes,
hash) and against the architecture it builds, and raises `CheckpointError` naming the file and the
difference, also for a weights file that is not valid safetensors (truncated, empty, a corrupt header) and for
a sidecar without a well-formed ``sha256``.

**Latent diffusion.** A latent model (``digits-latent-vp-eps``) adds a third file,
``NAME.autoencoder.safetensors``, the weights of its [`Autoencoder`][sdekit.nets.Autoencoder], described in the
sidecar's ``autoencoder`` entry (architecture, weights with their own SHA-256, the autoencoder's training record)
and checked exactly as the score network's. `load` then returns a
[`LatentScoreModel`][sdekit.models.LatentScoreModel]: a ``ScoreModel`` over the latents with ``encode`` and
``decode``; `heldout` gives its held-out data as latents.

**Reproduction.** [`sdekit.training.RECIPES`][] says how each shipped model was trained; ``python
scripts/train_zoo.py NAME`` (or [`sdekit.training.train_recipe`][]) retrains it and writes both files. This
module keeps the zoo itself (names, checkpoint I/O); recipes live beside training, data sets, held-out data and
quantisation in [`sdekit.data`][], process specs in [`sdekit.processes`][] (all re-exported here by name).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import torch
from torch import nn

from ..data import QUANTIZATION, heldout, quantization, to_levels  # noqa: F401  (re-exported)
from ..models import ScoreModel
from ..nets import build
from ..processes import DiffusionProcess, process_from_spec, process_spec  # noqa: F401  (re-exported)

__all__ = [
    "AUTOENCODER_SUFFIX",
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
#: Environment variable naming a folder to look names up in instead of `ZOO_DIR`.
ZOO_DIR_ENV = "SDEKIT_ZOO_DIR"
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
#: The file name ending of a latent model's autoencoder weights: ``NAME.autoencoder.safetensors``.
AUTOENCODER_SUFFIX = ".autoencoder.safetensors"


class CheckpointError(ValueError):
    """A checkpoint whose files are unreadable, or whose sidecar does not describe its weights (or is malformed).

    A `ValueError`, so the ``sdekit`` command reports it as one line.
    """


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


def _save_module(module: nn.Module, weights_path: Path) -> dict:
    """Write ``module``'s state dict to ``weights_path``; return the sidecar's architecture and weights entries."""
    from safetensors.torch import save_file

    arch = type(module).__name__
    config = getattr(module, "config", None)
    if config is None:
        raise ValueError(f"{arch} has no .config; only sdekit.nets architectures can be saved to the zoo")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    save_file(tensors, str(weights_path), metadata={"format": FORMAT, "architecture": arch})
    return {
        "architecture": {"name": arch, "kwargs": config},
        "weights": {
            "file": weights_path.name,
            "sha256": _sha256(weights_path),
            "num_parameters": sum(p.numel() for p in module.parameters()),
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
                        for k, v in tensors.items()},
        },
    }


def save(path: str | os.PathLike, net: nn.Module, process: DiffusionProcess, *, prediction: str = "eps",
         time_input: str = "t", sample_shape: tuple[int, ...] | None = None, name: str | None = None,
         data: dict | None = None, training: dict | None = None, autoencoder: nn.Module | None = None,
         autoencoder_training: dict | None = None) -> tuple[Path, Path]:
    """Write ``PATH.safetensors`` (``net``'s state dict) and its sidecar ``PATH.json``; return both paths.

    ``net`` must be a registered architecture ([`sdekit.nets.ARCHITECTURES`][]) with a ``config``.
    ``data`` and ``training`` are free-form JSON-able records stored in the sidecar. With an ``autoencoder``
    (an [`Autoencoder`][sdekit.nets.Autoencoder]; ``net`` then works on its latents, ``sample_shape`` defaults
    to its ``latent_shape``) its weights go to ``PATH.autoencoder.safetensors``, described by the sidecar's
    ``autoencoder`` entry with the record ``autoencoder_training``.
    """
    if getattr(net, "config", None) is None:
        raise ValueError(f"{type(net).__name__} has no .config; only sdekit.nets architectures can be saved to the zoo")
    if autoencoder is not None:
        from ..models import LatentScoreModel

        if sample_shape is None:
            sample_shape = getattr(autoencoder, "latent_shape", None)
        # validates the combination, and that the latents have the sample shape
        LatentScoreModel(net, process, prediction, time_input, autoencoder=autoencoder, sample_shape=sample_shape)
    else:
        ScoreModel(net, process, prediction, time_input)  # validates the combination
    weights_path, sidecar_path = _paths(path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    entries = _save_module(net, weights_path)
    sidecar = {
        "format": FORMAT,
        "name": name or weights_path.stem,
        "architecture": entries["architecture"],
        "process": process_spec(process),
        "prediction": prediction,
        "time_input": time_input,
        "sample_shape": list(sample_shape) if sample_shape is not None else None,
        "weights": entries["weights"],
        "data": data,
        "training": training,
        "sdekit_version": _sdekit_version(),
    }
    if autoencoder is not None:
        ae_path = weights_path.with_name(weights_path.stem + AUTOENCODER_SUFFIX)
        sidecar["autoencoder"] = {**_save_module(autoencoder, ae_path), "training": autoencoder_training}
    else:  # an autoencoder file left by an earlier save to this path belongs to no checkpoint now
        weights_path.with_name(weights_path.stem + AUTOENCODER_SUFFIX).unlink(missing_ok=True)
    sidecar_path.write_text(json.dumps(sidecar, indent=1) + "\n")
    return weights_path, sidecar_path


def _zoo_dir(root: str | os.PathLike | None) -> Path:
    """The folder names are looked up in: ``root``, else ``$SDEKIT_ZOO_DIR`` when set and non-empty, else
    `ZOO_DIR`."""
    if root is not None:
        return Path(root)
    from_env = os.environ.get(ZOO_DIR_ENV)
    return Path(from_env) if from_env else ZOO_DIR


def available(root: str | os.PathLike | None = None) -> list[str]:
    """Names of the checkpoints in the zoo folder (each ``NAME.json`` beside ``NAME.safetensors``).

    The folder is ``root`` if given, else ``$SDEKIT_ZOO_DIR`` if set, else the package's (`ZOO_DIR`).
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
    """The sidecar of a zoo checkpoint (by name, looked up as in `available`) or of ``PATH.json``.

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
    _check_weights_entry(sidecar["weights"], sidecar_path, "weights")
    autoencoder = sidecar.get("autoencoder")
    if autoencoder is not None:
        if not isinstance(autoencoder, dict) or not isinstance(autoencoder.get("architecture"), dict):
            raise CheckpointError(f"sidecar {sidecar_path}: 'autoencoder' must be a JSON object with an "
                                  "'architecture' object")
        if "weights" not in autoencoder:
            raise CheckpointError(f"sidecar {sidecar_path} lacks autoencoder.weights")
        _check_weights_entry(autoencoder["weights"], sidecar_path, "autoencoder.weights")
    return sidecar


def _check_weights_entry(weights, sidecar_path: Path, where: str) -> None:
    """A sidecar's ``weights`` (or ``autoencoder.weights``) entry is an object with a well-formed SHA-256."""
    if not isinstance(weights, dict):
        raise CheckpointError(f"sidecar {sidecar_path}: '{where}' must be a JSON object, got {type(weights).__name__}")
    # The hash is what ties the sidecar to its weights; a sidecar without one must not load unchecked.
    digest = weights.get("sha256")
    if digest is None:
        raise CheckpointError(f"sidecar {sidecar_path} lacks {where}.sha256 (the SHA-256 of the weights file, "
                              "required to check them)")
    if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
        shown = repr(digest) if len(repr(digest)) <= 80 else repr(digest)[:77] + "..."
        raise CheckpointError(f"sidecar {sidecar_path} has a malformed {where}.sha256 {shown}: expected 64 "
                              "hexadecimal digits")
    if not isinstance(weights.get("file", ""), str):
        raise CheckpointError(f"sidecar {sidecar_path}: {where}.file must be a file name")


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
    """Load a zoo checkpoint by name (see `available`, also for ``root``) or ``PATH`` (``.safetensors`` or
    ``.json``).

    The weights are read with ``safetensors.torch.load_file`` (no pickle), checked against the sidecar's
    tensor names, shapes and SHA-256 and against the architecture built from the sidecar, and loaded into
    it. Returns a [`ScoreModel`][sdekit.models.ScoreModel] whose ``net`` is in eval mode with parameter gradients
    off (call ``model.net.requires_grad_(True)`` to fine-tune); ``dtype`` converts the network (e.g.
    float64 for likelihoods). A latent model (a sidecar with an ``autoencoder`` entry) gives a
    [`LatentScoreModel`][sdekit.models.LatentScoreModel], its autoencoder checked and loaded the same way.

    Raises:
        ValueError: unknown name (the message lists the known ones).
        FileNotFoundError: ``PATH`` has no sidecar.
        CheckpointError: the weights file is not valid safetensors (truncated, empty, corrupt header), the
            sidecar is malformed or lacks ``weights.sha256``, or the sidecar does not match the weights (names,
            shapes, SHA-256) or the architecture. The message names the file.
    """
    weights_path, sidecar_path = _resolve(name_or_path, root)
    sidecar = info(sidecar_path)
    net = _load_module(sidecar["weights"], sidecar["architecture"], sidecar_path,
                       sidecar_path.with_name(sidecar["weights"].get("file", weights_path.name)), device, dtype)
    process = process_from_spec(sidecar["process"])
    shape = sidecar.get("sample_shape")
    shape = tuple(shape) if shape is not None else None
    entry = sidecar.get("autoencoder")
    if entry is None:
        return ScoreModel(net, process, sidecar["prediction"], sidecar["time_input"], sample_shape=shape)
    from ..models import LatentScoreModel

    default = weights_path.with_name(weights_path.stem + AUTOENCODER_SUFFIX).name
    autoencoder = _load_module(entry["weights"], entry["architecture"], sidecar_path,
                               sidecar_path.with_name(entry["weights"].get("file", default)), device, dtype)
    try:
        return LatentScoreModel(net, process, sidecar["prediction"], sidecar["time_input"], autoencoder=autoencoder,
                                sample_shape=shape)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"sidecar {sidecar_path.name}: the autoencoder does not fit the score network: "
                              f"{exc}") from None


def _load_module(weights: dict, arch: dict, sidecar_path: Path, weights_path: Path, device,
                 dtype) -> nn.Module:
    """Read ``weights_path``, check it against the sidecar entry ``weights`` (names, shapes, SHA-256) and the
    architecture ``arch`` built from it, and return the loaded module (eval mode, gradients off)."""
    if not weights_path.is_file():
        raise CheckpointError(f"weights file {weights_path} named by sidecar {sidecar_path} does not exist")
    digest = weights["sha256"].lower()
    tensors = _read_weights(weights_path, sidecar_path, digest)
    entries = weights.get("tensors", {})
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
    try:
        module = build(arch["name"], **arch.get("kwargs", {}))
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"sidecar {sidecar_path.name} names an architecture that cannot be built: {exc}") from exc
    expected = {k: list(v.shape) for k, v in module.state_dict().items()}
    diff = _shape_diff(expected, found)
    if diff:
        raise CheckpointError(f"{weights_path.name} does not fit the architecture {arch['name']} described by "
                              f"{sidecar_path.name}: {diff}")
    module.load_state_dict(tensors, strict=True)
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False)


def __getattr__(name):
    # training recipes live beside training (sdekit.training); importing it here eagerly would be circular
    if name in ("RECIPES", "Recipe", "train_recipe", "recipe_data"):
        from .. import training

        return getattr(training, name)
    raise AttributeError(f"module 'sdekit.zoo' has no attribute {name!r}")
