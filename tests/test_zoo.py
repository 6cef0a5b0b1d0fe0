"""The checkpoint format (round trip, sidecar checks, no pickle) and the shipped models."""

import importlib.util
import json
import pickle
import re
from pathlib import Path

import pytest
import torch

import sdekit
from sdekit import training, zoo
from sdekit.nets import MLPScoreNet, UNet
from sdekit.training import digits, toy_data

from .helpers import all_processes

pytestmark = pytest.mark.usefixtures("one_thread")


def _seeded(factory, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = factory()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # fresh networks zero some layers; make every tensor matter for the round trip
        for param in net.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=gen))
    return net


def _small_mlp():
    return _seeded(lambda: MLPScoreNet(hidden=32, num_blocks=2, embed_dim=16, num_classes=3))


def _small_unet():
    return _seeded(lambda: UNet(base_channels=8, channel_mults=(1, 2), groups=4, image_size=8, num_classes=10))


# --- format -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("make,shape,prediction", [(_small_mlp, (2,), "v"), (_small_unet, (1, 8, 8), "eps")])
def test_round_trip_gives_identical_outputs(tmp_path, make, shape, prediction):
    net = make()
    process = sdekit.VP("cosine")
    weights, sidecar = zoo.save(tmp_path / "m", net, process, prediction=prediction, sample_shape=shape,
                                data={"name": "test"}, training={"steps": 0})
    assert weights.name == "m.safetensors" and sidecar.name == "m.json"
    for path in (tmp_path / "m", weights, sidecar, str(weights)):
        model = zoo.load(path)
        assert model.prediction == prediction and model.time_input == "t" and model.sample_shape == shape
        assert isinstance(model.process, sdekit.VP) and not model.net.training
        x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(0))
        t = torch.tensor([0.05, 0.3, 0.6, 0.9])
        y = torch.tensor([0, 1, 2, 1])
        with torch.no_grad():
            assert torch.equal(model.net(x, t, y), net(x, t, y))
    meta = zoo.info(tmp_path / "m")
    assert meta["sdekit_version"] == sdekit.__version__ and meta["architecture"]["name"] == type(net).__name__
    assert zoo.load(tmp_path / "m", dtype=torch.float64).net.inp.weight.dtype == torch.float64


@pytest.mark.parametrize("name", list(all_processes()))
def test_process_spec_round_trip(name):
    process = all_processes()[name]
    spec = json.loads(json.dumps(zoo.process_spec(process)))
    rebuilt = zoo.process_from_spec(spec)
    assert type(rebuilt) is type(process) and rebuilt.t_min == process.t_min and rebuilt.t_max == process.t_max
    t = torch.linspace(max(process.t_min, 0.01 * process.t_max), process.t_max, 7, dtype=torch.float64)
    torch.testing.assert_close(rebuilt.alpha(t), process.alpha(t), rtol=0, atol=0)
    torch.testing.assert_close(rebuilt.sigma(t), process.sigma(t), rtol=0, atol=0)


def test_discrete_spec_alternatives():
    a = zoo.process_from_spec({"type": "VP", "schedule": "discrete",
                               "ddpm_linear": {"num_steps": 1000, "beta_start": 1e-4, "beta_end": 0.02}})
    b = zoo.process_from_spec({"type": "VP", "schedule": "discrete",
                               "betas": torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64).tolist()})
    torch.testing.assert_close(a.schedule.alphas_cumprod, b.schedule.alphas_cumprod)
    with pytest.raises(ValueError, match="unknown process type 'XP'"):
        zoo.process_from_spec({"type": "XP"})


def _saved(tmp_path, name="m"):
    zoo.save(tmp_path / name, _small_mlp(), sdekit.VP())
    return tmp_path / f"{name}.json", tmp_path / f"{name}.safetensors"


def test_sidecar_shape_mismatch_is_rejected(tmp_path):
    sidecar_path, _ = _saved(tmp_path)
    sidecar = json.loads(sidecar_path.read_text())
    sidecar["weights"]["tensors"]["inp.weight"]["shape"] = [64, 2]
    sidecar_path.write_text(json.dumps(sidecar))
    with pytest.raises(zoo.CheckpointError, match=r"inp.weight: expected \[64, 2\], got \[32, 2\]"):
        zoo.load(sidecar_path)


def test_weights_of_another_model_are_rejected(tmp_path):
    sidecar_path, weights_path = _saved(tmp_path, "a")
    zoo.save(tmp_path / "b", _small_unet(), sdekit.VP())
    weights_path.write_bytes((tmp_path / "b.safetensors").read_bytes())
    with pytest.raises(zoo.CheckpointError, match="does not match its sidecar a.json: missing tensors"):
        zoo.load(sidecar_path)


def test_changed_weights_are_rejected(tmp_path):
    sidecar_path, weights_path = _saved(tmp_path)
    other = tmp_path / "other"
    zoo.save(other, _seeded(lambda: MLPScoreNet(hidden=32, num_blocks=2, embed_dim=16, num_classes=3), 5),
             sdekit.VP())
    weights_path.write_bytes(other.with_suffix(".safetensors").read_bytes())  # same keys and shapes
    with pytest.raises(zoo.CheckpointError, match="SHA-256 differs"):
        zoo.load(sidecar_path)


def test_architecture_mismatch_is_rejected(tmp_path):
    sidecar_path, _ = _saved(tmp_path)
    sidecar = json.loads(sidecar_path.read_text())
    sidecar["architecture"]["kwargs"]["hidden"] = 64
    sidecar_path.write_text(json.dumps(sidecar))
    with pytest.raises(zoo.CheckpointError, match="does not fit the architecture MLPScoreNet"):
        zoo.load(sidecar_path)
    sidecar["format"] = "something-else"
    sidecar_path.write_text(json.dumps(sidecar))
    with pytest.raises(zoo.CheckpointError, match="not an sdekit-zoo/1 sidecar"):
        zoo.load(sidecar_path)


def test_loading_never_unpickles(tmp_path, monkeypatch):
    sidecar_path, _ = _saved(tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("the zoo must not unpickle")

    class RefusingUnpickler:
        def __init__(self, *args, **kwargs):
            refuse()

    for module, attr in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(module, attr, refuse)
    monkeypatch.setattr(pickle, "Unpickler", RefusingUnpickler)
    assert isinstance(zoo.load(sidecar_path), sdekit.ScoreModel)
    for name in zoo.available():
        assert isinstance(zoo.load(name), sdekit.ScoreModel)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown zoo model 'cifar-vp-eps'; known: .*moons-vp-eps"):
        zoo.load("cifar-vp-eps")
    with pytest.raises(FileNotFoundError, match="no sidecar"):
        zoo.load("/nonexistent/folder/model")


# --- the shipped models -----------------------------------------------------------------------------


def test_every_recipe_is_shipped_and_small():
    assert zoo.available() == sorted(zoo.RECIPES)
    files = [zoo.ZOO_DIR / f"{name}.safetensors" for name in zoo.available()]
    files += [zoo.ZOO_DIR / f"{name}{zoo.AUTOENCODER_SUFFIX}" for name in zoo.available()
              if zoo.RECIPES[name].autoencoder is not None]
    total = sum(f.stat().st_size for f in files)
    assert total < 8 * 2**20
    for name in zoo.available():
        meta = zoo.info(name)
        assert meta["name"] == name
        assert meta["training"]["steps"] == zoo.RECIPES[name].train["steps"]
        assert meta["architecture"]["name"] == zoo.RECIPES[name].architecture


@pytest.mark.parametrize("name", ["moons-vp-eps", "digits-vp-eps", "digits-latent-vp-eps"])
def test_shipped_models_load_with_finite_outputs(name):
    model = zoo.load(name)
    assert isinstance(model.process, sdekit.VP) and model.prediction == "eps" and model.time_input == "t"
    assert not model.net.training and not any(p.requires_grad for p in model.net.parameters())
    x = torch.randn(3, *model.sample_shape, generator=torch.Generator().manual_seed(0))
    for t in (model.process.t_min, 0.5, model.process.t_max):
        out = model.eps(x, t)
        assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["moons-vp-eps", "digits-vp-eps", "digits-latent-vp-eps"])
def test_recorded_eval_loss_is_reproduced(name):
    """The sidecar's eval loss is recomputed from the shipped weights: it ties the record to the file.
    The evaluation is deterministic (fixed data, times and noise); 1e-3 relative allows for BLAS differences."""
    meta = zoo.info(name)
    model = zoo.load(name)
    from sdekit.training import TrainConfig

    config = TrainConfig(**{k: v for k, v in meta["training"].items() if k in TrainConfig.__dataclass_fields__})
    # a latent model's held-out data are the test digits encoded by its shipped autoencoder
    data, _ = training.recipe_data(zoo.RECIPES[name], eval_split=True, autoencoder=getattr(model, "autoencoder", None))
    loss = training._eval_loss(model.net, model.process, data, config)
    assert loss == pytest.approx(meta["training"]["eval_loss"], rel=1e-3)


def test_moons_pf_ode_samples_match_the_data():
    """PF-ODE samples (RK4, 50 uniform steps from t = 1 to 1e-3) against the moons distribution.

    With n = 2000 samples the Monte-Carlo standard error of a mean is std/sqrt(n) <= 0.02 and of a std about
    std/sqrt(2n) <= 0.014; the tolerances (0.1 on means, 15% on stds) add a budget for the model's error
    (the EMA network at its final loss 0.175, not the exact score). The shape check asks that 90% of the
    samples lie within 0.15 of the noise-free moons (the data's own noise is 0.05; 99.8% of data points pass).
    """
    model = zoo.load("moons-vp-eps")
    p = model.process
    x_T = p.prior_sample((2000, 2), generator=torch.Generator().manual_seed(0))
    ode = sdekit.probability_flow(p, model)
    x = sdekit.solve(ode, x_T, "rk4", ts=torch.linspace(p.t_max, p.t_min, 51, dtype=torch.float64)).x
    data = toy_data("moons", 20000, seed=5)
    assert torch.isfinite(x).all()
    torch.testing.assert_close(x.mean(0), data.mean(0), atol=0.1, rtol=0)
    torch.testing.assert_close(x.std(0), data.std(0), rtol=0.15, atol=0)
    clean = toy_data("moons", 20000, seed=7, noise=0.0)
    near = torch.cdist(x, clean).min(dim=1).values < 0.15
    assert float(near.float().mean()) > 0.9


def test_digits_model_denoises_test_images():
    """At t = 0.3 (sigma ≈ 0.88) the unconditional x0 prediction on held-out digits beats the best constant
    guess (the training mean) by a wide margin, and the correct label helps."""
    model = zoo.load("digits-vp-eps")
    x0, labels = digits("test")
    x0, labels = x0[:128], labels[:128]
    t = 0.3
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    x_t = model.process.marginal_sample(x0, t, noise).float()
    mean_image = digits("train")[0].mean(0)
    baseline = float((mean_image - x0).pow(2).mean())
    uncond = float((model.x0(x_t, t) - x0).pow(2).mean())
    cond = float((model.x0(x_t, t, y=labels) - x0).pow(2).mean())
    assert uncond < 0.6 * baseline, (uncond, baseline)
    assert cond < uncond, (cond, uncond)


def test_heldout_data_and_quantization():
    x, labels = zoo.heldout("digits-vp-eps")
    test_images, test_labels = digits("test")
    assert torch.equal(x, test_images) and torch.equal(labels, test_labels) and x.shape == (297, 1, 8, 8)
    q = zoo.quantization("digits-vp-eps")
    assert q == {"levels": 17, "scale": 1 / 8, "offset": -1 - 1 / 16}
    k = zoo.to_levels(x, q)
    # levels back to the bin centres the model trained on: k/8 - 1 = scale·(k + ½) + offset
    assert k.dtype == torch.long and int(k.min()) == 0 and int(k.max()) == 16
    torch.testing.assert_close(q["scale"] * (k.double() + 0.5) + q["offset"], x.double(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="outside the 17 quantization levels"):
        zoo.to_levels(x + 1, q)
    with pytest.raises(ValueError, match="NaN"):
        zoo.to_levels(torch.full((1, 1, 8, 8), float("nan")), q)
    moons, none = zoo.heldout("moons-vp-eps")
    assert none is None and moons.shape == (4096, 2) and zoo.quantization("moons-vp-eps") is None
    # fresh points, not the training set
    assert not torch.equal(moons[:100], toy_data("moons", 20000, seed=0, noise=0.05)[:100])
    with pytest.raises(ValueError, match="known zoo recipes digits-latent-vp-eps, digits-vp-eps, moons-vp-eps"):
        zoo.heldout("cifar")


def test_training_script_reproduces_the_pipeline(tmp_path):
    """A few steps of the shipped recipe through the script's entry point give a loadable checkpoint."""
    spec = importlib.util.spec_from_file_location("train_zoo", Path(__file__).parents[1] / "scripts" / "train_zoo.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    threads = torch.get_num_threads()
    try:
        script.main(["moons-vp-eps", "--steps", "3", "--out", str(tmp_path), "--state-dir", str(tmp_path),
                     "--quiet"])
    finally:
        torch.set_num_threads(threads)
    meta = zoo.info(tmp_path / "moons-vp-eps")
    assert meta["training"]["steps"] == 3 and meta["data"] == zoo.RECIPES["moons-vp-eps"].data
    assert (tmp_path / "moons-vp-eps-3.pt").exists()  # the resume state
    model = zoo.load(tmp_path / "moons-vp-eps")
    assert model.eps(torch.zeros(2, 2), 0.5).shape == (2, 2)
    with pytest.raises(SystemExit):
        script.main(["no-such-model"])


def test_docs_examples_run():
    """Every python block of docs/networks.md runs (the diffusers one where diffusers imports)."""
    text = (Path(__file__).parents[1] / "docs" / "networks.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 4
    for block in blocks:
        if "diffusers" in block:
            try:
                import diffusers  # noqa: F401
            except Exception:
                continue
        exec(compile(block, "docs/networks.md", "exec"), {})
