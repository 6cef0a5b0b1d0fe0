"""Score networks (shapes, conditioning, input errors) and training (loss identities, progress, resume)."""

import copy

import pytest
import torch
import torch.nn.functional as F

from sdekit import VP, ScoreModel, convert
from sdekit.kernels import SelfAttention2d, attention
from sdekit.nets import ARCHITECTURES, MLPScoreNet, UNet, build
from sdekit.training import (
    DIGITS_TEST_SIZE,
    TrainConfig,
    diffusion_loss,
    digits,
    sample_times,
    toy_data,
    train,
)

from .helpers import DDPM_BETAS

pytestmark = pytest.mark.usefixtures("one_thread")


def _seeded(factory, seed=0):
    with torch.random.fork_rng(devices=[]):  # parameter init reads the global RNG; leave it as it was
        torch.manual_seed(seed)
        return factory()


def _perturbed(net, seed=0):
    """Add noise to every parameter: fresh networks zero their residual branches, hiding the conditioning."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in net.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=gen))
    return net


def _mlp(**kw):
    return _seeded(lambda: MLPScoreNet(**{"hidden": 32, "num_blocks": 2, "embed_dim": 16, **kw}))


def _unet(**kw):
    return _seeded(lambda: UNet(**{"base_channels": 8, "channel_mults": (1, 2), "groups": 4, **kw}))


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- networks ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("embedding", ["sinusoidal", "fourier"])
def test_mlp_shapes_dtypes_and_time_broadcast(embedding):
    net = _mlp(dim=3, time_embedding=embedding)
    x, t = _randn(5, 3), torch.rand(5, generator=torch.Generator().manual_seed(1))
    out = net(x, t)
    assert out.shape == x.shape and out.dtype == torch.float32
    torch.testing.assert_close(net(x, torch.tensor(0.3)), net(x, torch.full((5,), 0.3)))
    assert net.double()(x.double(), t.double()).dtype == torch.float64


def test_unet_shapes_attention_and_dtypes():
    net = _perturbed(_unet(in_channels=3, attention_levels=(0, 1), num_heads=2, num_classes=4))
    x = _randn(2, 3, 8, 12)  # no image_size: any size divisible by 2^(levels - 1)
    out = net(x, torch.tensor([0.1, 0.9]), torch.tensor([0, 3]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, net(x, torch.tensor([0.1, 0.9])))
    assert net.double()(x.double(), torch.tensor([0.1, 0.9], dtype=torch.float64)).dtype == torch.float64


def test_attention_matches_sdpa():
    q, k, v = (_randn(2, 3, 10, 8, seed=s, dtype=torch.float64) for s in range(3))
    torch.testing.assert_close(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))


def test_the_unet_uses_the_one_attention_block():
    """Every attention block of the UNet is sdekit.kernels.SelfAttention2d (zero-initialised output projection),
    computing x + proj(SDPA(q, k, v)) over the H·W positions of each head."""
    net = _unet(in_channels=3, attention_levels=(0, 1), num_heads=2).double()
    blocks = [m for m in net.modules() if isinstance(m, SelfAttention2d)]
    assert len(blocks) >= 2 and all(float(b.proj.weight.detach().abs().sum()) == 0 for b in blocks)
    blk = blocks[0]
    torch.nn.init.normal_(blk.proj.weight, generator=torch.Generator().manual_seed(0))
    b, c, h, w = 2, blk.channels, 4, 6
    x = _randn(b, c, h, w, dtype=torch.float64)
    qkv = blk.qkv(blk.norm(x)).reshape(b, 3, 2, c // 2, h * w)
    q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))
    expected = x + blk.proj(F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, h, w))
    torch.testing.assert_close(blk(x), expected)


def test_registry_rebuilds_from_config():
    for net in (_mlp(num_classes=3), _unet(image_size=8, num_classes=2)):
        rebuilt = build(type(net).__name__, **net.config)
        shapes = {k: v.shape for k, v in net.state_dict().items()}
        assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    assert set(ARCHITECTURES) == {"MLPScoreNet", "UNet", "Autoencoder"}
    with pytest.raises(ValueError, match="unknown architecture 'Nope'; known: Autoencoder, MLPScoreNet, UNet"):
        build("Nope")


def test_shape_errors_name_expected_and_got():
    with pytest.raises(ValueError, match=r"expected input of shape \(B, 2\), got \(4, 3\)"):
        _mlp()(torch.zeros(4, 3), torch.zeros(4))
    unet = _unet(in_channels=1, image_size=8)
    with pytest.raises(ValueError, match=r"expected input of shape \(B, 1, 8, 8\), got \(2, 3, 8, 8\)"):
        unet(torch.zeros(2, 3, 8, 8), torch.zeros(2))
    with pytest.raises(ValueError, match=r"expected input of shape \(B, 1, 8, 8\), got \(2, 1, 16, 16\)"):
        unet(torch.zeros(2, 1, 16, 16), torch.zeros(2))
    with pytest.raises(ValueError, match="divisible by 2"):
        _unet()(torch.zeros(1, 1, 7, 8), torch.zeros(1))
    with pytest.raises(ValueError, match=r"t must be a scalar or of shape \(4,\)"):
        _mlp()(torch.zeros(4, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="groups=4 must divide"):
        UNet(base_channels=6, groups=4)


def test_labels_null_class_and_errors():
    net = _perturbed(_mlp(num_classes=3))
    x, t = _randn(4, 2), torch.full((4,), 0.5)
    torch.testing.assert_close(net(x, t), net(x, t, torch.full((4,), 3)))  # None is the null class
    assert not torch.allclose(net(x, t, torch.tensor([0, 1, 2, 0])), net(x, t))
    with pytest.raises(ValueError, match=r"label 4 is out of range: expected 0..2, or 3 for the null class"):
        net(x, t, torch.tensor([0, 1, 4, 0]))
    with pytest.raises(ValueError, match="label -1 is out of range"):
        net(x, t, torch.tensor([-1, 0, 0, 0]))
    with pytest.raises(TypeError, match="integers"):
        net(x, t, torch.zeros(4))
    with pytest.raises(ValueError, match="unconditional"):
        _mlp()(x, t, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"out of range"):
        _unet(num_classes=10)(torch.zeros(1, 1, 8, 8), torch.zeros(1), torch.tensor([11]))


def test_classifier_free_guidance_is_one_batched_call():
    """sdekit.ClassifierFreeGuidance on a class-conditional network: one batched call, diffusers' convention
    (scale 1 = conditional, 0 = unconditional; the paper's (1 + w) cond - w uncond is scale = 1 + w)."""
    from sdekit import VP, ClassifierFreeGuidance, ScoreModel

    net = _perturbed(_mlp(num_classes=3))
    calls = []
    net.register_forward_hook(lambda *args: calls.append(1))
    model = ScoreModel(net, VP(), prediction="eps")
    x, t, y = _randn(4, 2), torch.full((4,), 0.4), torch.tensor([0, 1, 2, 1])
    w = 2.5
    guided = ClassifierFreeGuidance(model, 1 + w, null=3)
    with torch.no_grad():
        out = guided.predict(x, t, "eps", y=y)
        assert len(calls) == 1
        expected = (1 + w) * net(x, t, y) - w * net(x, t)
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(ClassifierFreeGuidance(model, 1.0, null=3).predict(x, t, "eps", y=y), net(x, t, y))
        torch.testing.assert_close(ClassifierFreeGuidance(model, 0.0, null=3).predict(x, t, "eps", y=y), net(x, t))

def test_toy_data_is_reproducible_and_in_range():
    for name in ("moons", "swiss_roll", "checkerboard"):
        a, b = toy_data(name, 500, seed=3), toy_data(name, 500, seed=3)
        assert a.shape == (500, 2) and a.dtype == torch.float32
        torch.testing.assert_close(a, b)
        assert not torch.equal(a, toy_data(name, 500, seed=4))
    board = toy_data("checkerboard", 2000)
    cells = torch.floor(board + 2).long()
    assert bool((board.abs() <= 2).all()) and bool(((cells[:, 0] + cells[:, 1]) % 2 == 0).all())
    with pytest.raises(ValueError, match="unknown toy data set 'rings'"):
        toy_data("rings", 10)


def test_digits_splits():
    train_x, train_y = digits("train")
    test_x, test_y = digits("test")
    assert train_x.shape == (1500, 1, 8, 8) and test_x.shape == (DIGITS_TEST_SIZE, 1, 8, 8)
    assert train_y.shape == (1500,) and set(test_y.tolist()) == set(range(10))
    assert float(train_x.min()) == -1.0 and float(train_x.max()) == 1.0
    # v/8 - 1 for integer v in 0..16
    torch.testing.assert_close((test_x + 1) * 8, torch.round((test_x + 1) * 8))


# --- losses -----------------------------------------------------------------------------------------


def test_loss_weightings_equal_the_eps_loss():
    """With weighting="eps", an x0 or v network is charged exactly ||eps_hat - eps||² of the eps it implies
    (module docstring of sdekit.training), as long as SNR <= snr_clip."""
    p = VP()
    eps_net = _mlp().double()
    x0 = _randn(64, 2, seed=1, dtype=torch.float64)
    noise = _randn(64, 2, seed=2, dtype=torch.float64)
    t = torch.linspace(0.05, 1.0, 64, dtype=torch.float64)  # SNR(0.05) ≈ 26 < 100
    alpha, sigma = p.alpha(t), p.sigma(t)

    def as_net(kind):
        def net(x, t_in):
            return convert(eps_net(x, t_in), "eps", kind, x, alpha, sigma)

        return net

    reference = diffusion_loss(eps_net, p, x0, t, noise, prediction="eps")
    for kind in ("x0", "v"):
        torch.testing.assert_close(diffusion_loss(as_net(kind), p, x0, t, noise, prediction=kind), reference)
    # The SNR clip only caps the x0 weight where SNR > snr_clip.
    t_small = torch.full((4,), 1e-3, dtype=torch.float64)
    clipped = diffusion_loss(eps_net, p, x0[:4], t_small, noise[:4], prediction="x0", snr_clip=100.0)
    plain = diffusion_loss(eps_net, p, x0[:4], t_small, noise[:4], prediction="x0", weighting="target")
    torch.testing.assert_close(clipped, 100.0 * plain)


def test_sample_times():
    gen = torch.Generator().manual_seed(0)
    p = VP.from_betas(DDPM_BETAS)
    t = sample_times(p, 1000, generator=gen, time_input="index")
    idx = p.index_from_t(t)
    torch.testing.assert_close(idx, torch.round(idx))
    assert 0 <= float(idx.min()) and float(idx.max()) <= 999
    t = sample_times(VP(), 1000, generator=gen, t_min=1e-5)
    assert 1e-5 <= float(t.min()) and float(t.max()) <= 1.0
    with pytest.raises(ValueError, match="discrete schedule"):
        sample_times(VP(), 4, generator=gen, time_input="index")
    with pytest.raises(ValueError, match="t_min < t_max"):
        sample_times(VP(), 4, generator=gen, t_min=0.5, t_max=0.2)


def test_bad_training_settings():
    with pytest.raises(ValueError, match="unknown prediction 'score'"):
        TrainConfig(prediction="score")
    with pytest.raises(ValueError, match="unknown weighting"):
        TrainConfig(weighting="snr")
    with pytest.raises(ValueError, match="unknown prediction"):
        diffusion_loss(_mlp(), VP(), torch.zeros(2, 2), torch.full((2,), 0.5), torch.zeros(2, 2), prediction="edm")
    with pytest.raises(ValueError, match="no num_classes"):
        train(_mlp(), VP(), torch.zeros(10, 2), TrainConfig(steps=1), labels=torch.zeros(10, dtype=torch.long))


# --- training ---------------------------------------------------------------------------------------


def _fixed_batch_loss(net, process, prediction, time_input="t"):
    gen = torch.Generator().manual_seed(123)
    x0 = toy_data("moons", 512, seed=9)
    t = sample_times(process, 512, generator=gen, time_input=time_input, t_min=0.02 if time_input == "t" else None)
    noise = torch.randn(x0.shape, generator=gen)
    with torch.no_grad():
        return float(diffusion_loss(net, process, x0, t, noise, prediction=prediction, time_input=time_input).mean())


@pytest.mark.parametrize("prediction,time_input", [("eps", "t"), ("x0", "t"), ("v", "t"), ("eps", "index")])
def test_short_training_reduces_the_loss(prediction, time_input):
    process = VP.from_betas(DDPM_BETAS) if time_input == "index" else VP()
    net = _mlp(time_scale=1.0 if time_input == "index" else None)
    before = _fixed_batch_loss(net, process, prediction, time_input)
    config = TrainConfig(steps=150, batch_size=128, lr=3e-3, warmup_steps=10, prediction=prediction,
                         time_input=time_input, t_min=0.02 if time_input == "t" else None, seed=1)
    result = train(net, process, toy_data("moons", 2000, seed=0), config)
    after = _fixed_batch_loss(result.ema, process, prediction, time_input)
    # 150 steps take a fresh network well below its starting loss; 0.7 leaves room for seed-to-seed noise.
    assert after < 0.7 * before, (before, after)
    assert len(result.losses) == 150 and result.wall_time_s > 0
    assert not result.ema.training and all(not p.requires_grad for p in result.ema.parameters())
    model = ScoreModel(result.ema, process, prediction, time_input)
    assert torch.isfinite(model.eps(torch.zeros(3, 2), 0.5)).all()


def test_class_conditional_training_runs():
    x, y = digits("train")
    net = _unet(image_size=8, num_classes=10)
    result = train(net, VP(), x[:64], TrainConfig(steps=3, batch_size=8, p_uncond=0.5), labels=y[:64])
    assert len(result.losses) == 3 and all(torch.isfinite(torch.tensor(result.losses)))


def test_resume_continues_exactly(tmp_path):
    """An interrupted run resumed from its checkpoint ends with the weights of an uninterrupted run."""
    data = toy_data("moons", 1000, seed=0)
    base = _mlp()
    config = dict(batch_size=32, lr=1e-3, warmup_steps=5, checkpoint_every=4, seed=7)
    straight = train(copy.deepcopy(base), VP(), data, TrainConfig(steps=12, **config))
    path = tmp_path / "state.pt"
    train(copy.deepcopy(base), VP(), data, TrainConfig(steps=6, **config), checkpoint_path=path)
    resumed = train(copy.deepcopy(base), VP(), data, TrainConfig(steps=12, **config), checkpoint_path=path)
    assert resumed.losses == straight.losses
    for a, b in zip(straight.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="other settings"):
        train(copy.deepcopy(base), VP(), data, TrainConfig(steps=12, **{**config, "lr": 5e-3}), checkpoint_path=path)
