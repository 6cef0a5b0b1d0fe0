"""Latent diffusion: the `Autoencoder`, the shipped ``digits-latent-vp-eps`` model (a `LatentScoreModel`), its
checkpoint files, its held-out latents, ``sdekit compare`` on it, and its recipe."""

import json
import math
import shutil

import pytest
import torch

import sdekit
from sdekit import training, zoo
from sdekit.models import LatentScoreModel, ScoreModel
from sdekit.nets import Autoencoder, MLPScoreNet, build
from sdekit.training import digits

pytestmark = pytest.mark.usefixtures("one_thread")

NAME = "digits-latent-vp-eps"
LATENT_DIM = 12


@pytest.fixture(scope="module")
def model():
    return zoo.load(NAME)


def _small_autoencoder(**kwargs):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return Autoencoder(channels=4, latent_dim=3, **kwargs)


# --- the network ------------------------------------------------------------------------------------


def test_encode_decode_shapes_and_dtypes():
    ae = _small_autoencoder().eval()
    x = digits("test")[0][:5]
    z = ae.encode(x)
    assert z.shape == (5, 3) and z.dtype == torch.float32 and ae.latent_shape == (3,)
    y = ae.decode(z)
    assert y.shape == (5, 1, 8, 8) and y.dtype == torch.float32 and ae.image_shape == (1, 8, 8)
    assert torch.equal(ae(x), y) and bool((y.abs() < 1).all())  # tanh output
    ae64 = _small_autoencoder().double().eval()
    assert ae64.decode(ae64.encode(x.double())).dtype == torch.float64
    rebuilt = build("Autoencoder", **ae.config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in ae.state_dict().items()}
    assert {"latent_mean", "latent_std"} <= set(ae.state_dict())  # the scaling travels with the weights


def test_latent_scaling_standardises_and_leaves_reconstructions_alone():
    ae = _small_autoencoder().eval()
    x = digits("train")[0][:200]
    before = ae(x)
    ae.fit_latent_scaling(x)
    z = ae.encode(x).double()
    # fitted on these very images: exact up to float32 rounding of the raw latents
    torch.testing.assert_close(z.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(ae(x), before, atol=1e-5, rtol=0)  # an affine map and its inverse


def test_bad_input_is_refused_naming_the_argument():
    ae = _small_autoencoder()
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 8, 8\), got \(2, 64\)"):
        ae.encode(torch.zeros(2, 64))
    with pytest.raises(ValueError, match=r"z must have shape \(B, 3\), got \(2, 4\)"):
        ae.decode(torch.zeros(2, 4))
    with pytest.raises(TypeError, match="z must be a tensor"):
        ae.decode([0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="image_size must be a multiple of 4"):
        Autoencoder(image_size=6)
    with pytest.raises(ValueError, match="latent_dim must be a positive int"):
        Autoencoder(latent_dim=0)
    with pytest.raises(ValueError, match="images must be"):
        ae.fit_latent_scaling(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="steps must be a positive int"):
        training.train_autoencoder(ae, torch.zeros(4, 1, 8, 8), steps=0)


def test_latent_score_model_checks_its_autoencoder():
    net = MLPScoreNet(dim=3, hidden=8, num_blocks=1, embed_dim=8)
    with pytest.raises(TypeError, match="autoencoder must have encode"):
        LatentScoreModel(net, sdekit.VP(), autoencoder=object())
    with pytest.raises(ValueError, match=r"sample_shape \(4,\) differs from the autoencoder's latent shape \(3,\)"):
        LatentScoreModel(net, sdekit.VP(), autoencoder=_small_autoencoder(), sample_shape=(4,))
    m = LatentScoreModel(net, sdekit.VP(), autoencoder=_small_autoencoder())
    assert isinstance(m, ScoreModel) and m.sample_shape == (3,) and m.data_shape == (1, 8, 8)
    m64 = m.to(torch.float64)
    assert next(m64.autoencoder.parameters()).dtype == torch.float64
    assert next(m.autoencoder.parameters()).dtype == torch.float32  # the original is unchanged


# --- the shipped model ------------------------------------------------------------------------------


def test_shipped_model_is_a_latent_score_model(model):
    assert isinstance(model, LatentScoreModel) and model.sample_shape == (LATENT_DIM,)
    assert model.data_shape == (1, 8, 8) and model.prediction == "eps" and isinstance(model.process, sdekit.VP)
    ae = model.autoencoder
    assert not ae.training and not any(p.requires_grad for p in ae.parameters())
    meta = zoo.info(NAME)
    assert meta["autoencoder"]["architecture"]["name"] == "Autoencoder"
    assert meta["autoencoder"]["weights"]["file"] == f"{NAME}{zoo.AUTOENCODER_SUFFIX}"


def test_shipped_autoencoder_reconstructs_held_out_digits(model):
    """Per-pixel reconstruction MSE on the 297 test digits (never trained on) against two baselines computed
    here: the best constant guess (the training mean image) and the best *linear* code of the same size, PCA with
    12 components fitted on the training images (the optimum of a linear autoencoder on those images). The
    network must beat both; the sidecar's record must be what the shipped file gives."""
    train_images, test_images = digits("train")[0], digits("test")[0]
    with torch.no_grad():
        recon = model.decode(model.encode(test_images))
    mse = float((recon - test_images).pow(2).mean())
    mean_image = train_images.mean(0)
    mean_mse = float((mean_image - test_images).pow(2).mean())
    flat = train_images.reshape(len(train_images), -1).double()
    centre = flat.mean(0)
    basis = torch.linalg.svd(flat - centre, full_matrices=False).Vh[:LATENT_DIM]
    test_flat = test_images.reshape(len(test_images), -1).double() - centre
    pca_mse = float((test_flat @ basis.T @ basis - test_flat).pow(2).mean())
    assert mse < pca_mse < mean_mse, (mse, pca_mse, mean_mse)
    record = zoo.info(NAME)["autoencoder"]["training"]
    assert record["test_reconstruction_mse"] == pytest.approx(mse, rel=1e-3)
    assert record["test_mean_image_mse"] == pytest.approx(mean_mse, rel=1e-3)


def test_shipped_latents_are_standardised(model):
    """On the training images the scaling was fitted: mean 0 and std 1 to float32 rounding. On the 297 held-out
    images each coordinate's mean and std are estimates with standard errors about 1/sqrt(297) = 0.058 and
    1/sqrt(2·297) = 0.041 (for a unit-variance coordinate); 5 standard errors allow for them, and 0.05 more for
    the held-out digits lying a little off the training ones (the last 297 digits of the data set; the autoencoder
    also fits its own training set better). Measured on the shipped model: max |mean| 0.23, max |std - 1| 0.10,
    against bounds 0.34 and 0.26."""
    train = training._encode(model.autoencoder, digits("train")[0]).double()
    torch.testing.assert_close(train.mean(0), torch.zeros(LATENT_DIM, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(train.std(0), torch.ones(LATENT_DIM, dtype=torch.float64), atol=1e-4, rtol=0)
    held, labels = zoo.heldout(NAME)
    assert held.shape == (297, LATENT_DIM) and torch.equal(labels, digits("test")[1])
    torch.testing.assert_close(held, model.encode(digits("test")[0]))
    n = held.shape[0]
    assert float(held.double().mean(0).abs().max()) < 5 / math.sqrt(n) + 0.05
    assert float((held.double().std(0) - 1).abs().max()) < 5 / math.sqrt(2 * n) + 0.05
    assert zoo.quantization(NAME) is None  # latents are not quantized


def test_samples_decode_to_images_in_range(model):
    """DDIM samples of the latent model, decoded: images in [-1, 1]. Their mean image lies closer to the data's
    than the mean image of decoded prior draws (decoding N(0, I) noise without denoising) does."""
    gen = torch.Generator().manual_seed(0)
    z_T = model.process.prior_sample((256, LATENT_DIM), generator=gen)
    z = sdekit.sample(model, z_T, "ddim", steps=10).x
    assert z.shape == (256, LATENT_DIM) and torch.isfinite(z).all()
    with torch.no_grad():
        images, noise_images = model.decode(z), model.decode(z_T)
    assert images.shape == (256, 1, 8, 8) and images.dtype == z.dtype
    assert float(images.min()) >= -1 and float(images.max()) <= 1
    data_mean = digits("test")[0].mean(0)
    assert float((images.mean(0) - data_mean).pow(2).mean()) < float((noise_images.mean(0) - data_mean).pow(2).mean())


# --- the checkpoint files ---------------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path):
    """A zoo folder holding an intact copy of the shipped latent checkpoint (three files)."""
    out = tmp_path / "zoo"
    out.mkdir()
    for suffix in (".safetensors", ".json", zoo.AUTOENCODER_SUFFIX):
        shutil.copyfile(zoo.ZOO_DIR / f"{NAME}{suffix}", out / f"{NAME}{suffix}")
    return out


def test_corrupt_autoencoder_weights_are_a_checkpoint_error(folder):
    assert isinstance(zoo.load(NAME, root=folder), LatentScoreModel)
    path = folder / f"{NAME}{zoo.AUTOENCODER_SUFFIX}"
    intact = path.read_bytes()
    path.write_bytes(intact[:-1] + bytes([intact[-1] ^ 1]))  # valid safetensors, one element changed
    with pytest.raises(zoo.CheckpointError, match=f"weights file {path} does not match .*SHA-256 differs"):
        zoo.load(NAME, root=folder)
    path.write_bytes(intact[: len(intact) // 2])
    with pytest.raises(zoo.CheckpointError, match=f"weights file {path} is not a valid safetensors file"):
        zoo.load(NAME, root=folder)
    path.unlink()
    with pytest.raises(zoo.CheckpointError, match=f"weights file {path} named by sidecar .* does not exist"):
        zoo.load(NAME, root=folder)


def test_autoencoder_entry_without_sha256_is_rejected(folder):
    sidecar_path = folder / f"{NAME}.json"
    sidecar = json.loads(sidecar_path.read_text())
    del sidecar["autoencoder"]["weights"]["sha256"]
    sidecar_path.write_text(json.dumps(sidecar))
    with pytest.raises(zoo.CheckpointError, match="lacks autoencoder.weights.sha256"):
        zoo.load(NAME, root=folder)
    sidecar["autoencoder"]["weights"]["sha256"] = "abc"
    sidecar_path.write_text(json.dumps(sidecar))
    with pytest.raises(zoo.CheckpointError, match="malformed autoencoder.weights.sha256"):
        zoo.info(NAME, root=folder)


def test_save_round_trip_of_a_latent_model(tmp_path):
    ae = _small_autoencoder()
    ae.fit_latent_scaling(digits("train")[0][:64])
    net = MLPScoreNet(dim=3, hidden=8, num_blocks=1, embed_dim=8)
    zoo.save(tmp_path / "m", net, sdekit.VP(), autoencoder=ae, autoencoder_training={"steps": 0})
    loaded = zoo.load(tmp_path / "m")
    assert isinstance(loaded, LatentScoreModel) and loaded.sample_shape == (3,)
    z = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.decode(z), ae.eval().decode(z))
    # saving a plain model to the same path leaves no autoencoder file behind
    zoo.save(tmp_path / "m", net, sdekit.VP())
    assert not (tmp_path / f"m{zoo.AUTOENCODER_SUFFIX}").exists()
    assert type(zoo.load(tmp_path / "m")) is ScoreModel


# --- sdekit compare and the recipe ------------------------------------------------------------------


def test_compare_runs_in_latent_space_and_draws_decoded_digits(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image
    import numpy as np

    from sdekit.cli import main

    out = tmp_path / "out"
    assert main(["compare", "--model", NAME, "--samples", "4", "--nfe", "5", "--solvers", "ddim",
                 "--reference-rtol", "1e-5", "--no-progress", "--out", str(out)]) == 0
    summary = json.loads((out / "results.json").read_text())
    (record,) = summary["records"]
    assert record["finite"] and math.isfinite(record["rmse_vs_reference"])
    (reference,) = out.glob("reference-*.npy")
    assert np.load(reference).shape == (4, LATENT_DIM)  # the RMSE is over latents
    assert (out / "samples.png").exists()
    grid = matplotlib.image.imread(out / "samples-ddim-5-decoded.png")
    assert grid.shape[:2] == (8, 4 * 9 - 1)  # four decoded 8×8 digits in a row, 1-pixel gaps


def test_recipe_trains_a_few_steps(tmp_path):
    record = training.train_recipe(NAME, tmp_path, steps=3, progress=False)
    assert record["steps"] == 3 and math.isfinite(record["eval_loss"])
    meta = zoo.info(tmp_path / NAME)
    assert meta["autoencoder"]["training"]["steps"] == 3
    assert meta["data"] == zoo.RECIPES[NAME].data
    loaded = zoo.load(tmp_path / NAME)
    assert isinstance(loaded, LatentScoreModel)
    z = loaded.process.prior_sample((2, LATENT_DIM), generator=torch.Generator().manual_seed(0))
    assert loaded.decode(z).shape == (2, 1, 8, 8)
