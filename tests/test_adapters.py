"""The diffusers adapter: a diffusers-style UNet and its schedule as a ScoreModel on VP.from_betas."""

import pytest
import torch

from sdekit import VP, ScoreModel, sample
from sdekit.adapters import DiffusersNet, from_diffusers, scheduler_alphas_cumprod, scheduler_process

from .helpers import DDPM_BETAS

# --- without diffusers: any module with diffusers' call convention ----------------------------------


class _Output:
    def __init__(self, sample):
        self.sample = sample


class _FakeUNet(torch.nn.Module):
    """out = x · (1 + timestep/1000): enough to see which timestep it was given."""

    def __init__(self, wrap="object"):
        super().__init__()
        self.wrap = wrap
        self.seen = []

    def forward(self, sample, timestep, **cond):
        self.seen.append(timestep)
        out = sample * (1 + timestep.reshape(-1, *([1] * (sample.ndim - 1))) / 1000)
        return {"object": _Output, "tuple": lambda s: (s,), "tensor": lambda s: s}[self.wrap](out)


@pytest.mark.parametrize("wrap", ["object", "tuple", "tensor"])
def test_call_convention_and_index_time(wrap):
    unet = _FakeUNet(wrap)
    model = from_diffusers(unet, betas=DDPM_BETAS)
    assert isinstance(model, ScoreModel) and model.time_input == "index" and model.prediction == "eps"
    assert isinstance(model.net, DiffusersNet)
    p = model.process
    x = torch.ones(3, 2)
    idx = torch.tensor([0.0, 499.0, 999.0])
    eps = model.eps(x, p.t_from_index(idx))
    torch.testing.assert_close(unet.seen[-1], idx.float())
    torch.testing.assert_close(eps, x * (1 + idx[:, None] / 1000))
    model.eps(x, p.t_from_index(torch.tensor([2.25, 2.5, 2.75])))  # fractional indices pass through
    torch.testing.assert_close(unet.seen[-1], torch.tensor([2.25, 2.5, 2.75]))


def test_schedule_arguments():
    ac = torch.cumprod(1 - DDPM_BETAS, 0)
    a = from_diffusers(_FakeUNet(), betas=DDPM_BETAS).process
    b = from_diffusers(_FakeUNet(), alphas_cumprod=ac).process
    torch.testing.assert_close(a.schedule.alphas_cumprod, b.schedule.alphas_cumprod)
    config = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
              "prediction_type": "v_prediction"}
    model = from_diffusers(_FakeUNet(), scheduler=config)
    assert model.prediction == "v"
    torch.testing.assert_close(model.process.schedule.alphas_cumprod, ac)
    assert from_diffusers(_FakeUNet(), scheduler=config, prediction_type="sample").prediction == "x0"


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"unsupported prediction_type 'score'; supported: 'epsilon', 'v_prediction'"):
        from_diffusers(_FakeUNet(), betas=DDPM_BETAS, prediction_type="score")
    with pytest.raises(ValueError, match="not both"):
        from_diffusers(_FakeUNet(), betas=DDPM_BETAS, alphas_cumprod=torch.cumprod(1 - DDPM_BETAS, 0))
    with pytest.raises(ValueError, match="needs the training schedule"):
        from_diffusers(_FakeUNet())
    with pytest.raises(ValueError, match="unsupported beta_schedule 'sigmoid'"):
        from_diffusers(_FakeUNet(), scheduler={"beta_schedule": "sigmoid"})
    with pytest.raises(ValueError, match="zero terminal SNR"):
        from_diffusers(_FakeUNet(), alphas_cumprod=torch.tensor([0.9, 0.5, 0.0]))
    with pytest.raises(TypeError, match="scheduler must be"):
        from_diffusers(_FakeUNet(), scheduler=42)


# --- with diffusers ---------------------------------------------------------------------------------


def _diffusers():
    try:
        import diffusers
    except ImportError:
        pytest.skip("diffusers is not installed (optional extra: pip install diffusers)")
    except Exception as exc:  # installed but broken, e.g. by a mismatched dependency
        pytest.skip(f"diffusers does not import: {type(exc).__name__}: {exc}")
    return diffusers


def _tiny_unet():
    diffusers = _diffusers()
    with torch.random.fork_rng(devices=[]):  # the UNet initialises from the global RNG
        torch.manual_seed(0)
        unet = diffusers.UNet2DModel(
            sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
            norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        )
    return unet.eval()


pytestmark = pytest.mark.usefixtures("one_thread")


@torch.no_grad()
def test_unet2d_eps_equals_the_unet_at_integer_indices():
    diffusers = _diffusers()
    unet = _tiny_unet()
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000)
    model = from_diffusers(unet, scheduler=scheduler)
    assert model.sample_shape == (1, 8, 8) and model.prediction == "eps"
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    idx = torch.tensor([0, 10, 500, 999])
    torch.testing.assert_close(model.eps(x, model.process.t_from_index(idx)), unet(x, idx).sample)
    # A scalar time for the whole batch.
    torch.testing.assert_close(model.eps(x, float(model.process.t_from_index(250))), unet(x, 250).sample)


@torch.no_grad()
def test_unet2d_fractional_index_passes_through():
    unet = _tiny_unet()
    model = from_diffusers(unet, betas=DDPM_BETAS)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    frac = torch.tensor([100.5, 100.5])
    out = model.eps(x, model.process.t_from_index(frac))
    torch.testing.assert_close(out, unet(x, frac).sample)
    assert not torch.allclose(out, unet(x, torch.tensor([100, 100])).sample)
    assert not torch.allclose(out, unet(x, torch.tensor([101, 101])).sample)


@torch.no_grad()
def test_unet2d_v_prediction_converts_exactly():
    diffusers = _diffusers()
    unet = _tiny_unet()
    model = from_diffusers(unet, scheduler=diffusers.DDPMScheduler(prediction_type="v_prediction"))
    assert model.prediction == "v"
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    idx = torch.tensor([300, 700])
    t = model.process.t_from_index(idx)
    v = unet(x, idx).sample
    alpha, sigma = (c.float()[:, None, None, None] for c in (model.process.alpha(t), model.process.sigma(t)))
    torch.testing.assert_close(model.v(x, t), v)
    torch.testing.assert_close(model.eps(x, t), sigma * x + alpha * v)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_scheduler_schedules(schedule):
    diffusers = _diffusers()
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule)
    # The scheduler object: its own float32 alphas_cumprod, exactly.
    process = scheduler_process(scheduler)
    assert isinstance(process, VP) and process.is_discrete
    torch.testing.assert_close(process.schedule.alphas_cumprod, scheduler.alphas_cumprod.double(), rtol=0, atol=0)
    # Its config: the same schedule recomputed in float64 (float32 rounding apart).
    from_config = scheduler_alphas_cumprod(dict(scheduler.config))
    torch.testing.assert_close(from_config, scheduler.alphas_cumprod.double(), rtol=2e-5, atol=1e-7)


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_unet2d_ddim_equals_ddimscheduler_loop(dtype):
    """sdekit's DDIM on the adapter-wrapped UNet2DModel equals diffusers' own DDIMScheduler loop.

    The process takes the scheduler's ``alphas_cumprod`` exactly, and the grid is the scheduler's timesteps
    followed by index -1 (t = 0: ``set_alpha_to_one``). diffusers computes its step coefficients
    (``1 - alpha_prod_t``, the square roots) in the dtype of ``alphas_cumprod``; sdekit in float64.

    float64: the UNet cast to double and the scheduler's own float32 ``alphas_cumprod`` widened to float64
    (the same numbers, so the same schedule): both loops do float64 arithmetic and differ only in the order
    of operations (measured 1e-15 of the largest value), so rtol 1e-10.
    float32, the scheduler untouched: diffusers' float32 coefficients differ from sdekit's rounded float64
    ones by ~1 ulp, and the state's float32 rounding is amplified through 10 UNet calls: measured 3e-7
    of the largest value, hence rtol 1e-5. The random UNet's outputs are not unit-scale (the final states reach a few
    hundred: x0 = (x - sigma eps)/alpha with alpha ~ 0.006 at t = 999), so the tolerance is relative.
    A one-index-shifted grid differs by 1.3e-2 of the largest value (checked: > 1e-3).
    """
    diffusers = _diffusers()
    unet = _tiny_unet().to(dtype)
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=True,
                                    timestep_spacing="trailing")
    if dtype == torch.float64:
        sched.alphas_cumprod = sched.alphas_cumprod.to(torch.float64)
        sched.final_alpha_cumprod = torch.ones((), dtype=torch.float64)
    model = from_diffusers(unet, scheduler=sched)
    n = 10
    sched.set_timesteps(n)
    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=dtype)
    y = x_T.clone()
    for t in sched.timesteps:
        y = sched.step(unet(y, t).sample, t, y).prev_sample
    assert y.dtype == dtype
    grid = [int(t) for t in sched.timesteps] + [-1]
    sol = sample(model, x_T, "ddim", grid=grid)
    assert sol.stats["nfe"] == n and sol.x.dtype == dtype
    scale = float(y.abs().max())
    rtol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(sol.x, y, rtol=rtol, atol=rtol * scale)
    shifted = sample(model, x_T, "ddim", grid=[g - 1 for g in grid[:-1]] + [-1]).x
    assert float((shifted - y).abs().max()) > 1e-3 * scale
