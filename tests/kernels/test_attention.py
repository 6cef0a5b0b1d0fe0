"""The FlashAttention-2 forward kernel against the explicit-softmax reference, its autograd wrapper, and the
UNet attention block."""

import math

import pytest
import torch
import torch.nn.functional as F

from sdekit.kernels import SelfAttention2d, attention, attention_reference

from .helpers import skip_bfloat16_in_interpreter

# (atol, rtol) of the output against the float64 reference of the same (rounded) inputs.
OUT_TOLERANCES = {
    torch.float32: (2e-5, 2e-5),  # float32 sums of N products and exp2: a few float32 ulps times log N
    # The kernel rounds the probabilities to the input dtype before P V (as FlashAttention does) and rounds
    # the output: two roundings of 2**-11 (float16) or 2**-8 (bfloat16) relative, on outputs of size ~1.
    torch.float16: (3e-3, 3e-3),
    torch.bfloat16: (2.5e-2, 2.5e-2),
}
# The log-sum-exp is computed from float32 scores of the same inputs in every dtype.
LSE_TOLERANCE = (2e-5, 2e-5)


def _qkv(batch, heads, n_q, head_dim, dtype, device, n_k=None, seed=0):
    generator = torch.Generator().manual_seed(seed)
    shapes = [(batch, heads, n_q, head_dim)] + [(batch, heads, n_q if n_k is None else n_k, head_dim)] * 2
    return [torch.randn(s, generator=generator).to(dtype).to(device) for s in shapes]


def _check_against_reference(q, k, v, scale=None, tolerance=None):
    out, lse = attention(q, k, v, scale=scale, backend="triton", return_lse=True)
    expected_out, expected_lse = attention_reference(q.double(), k.double(), v.double(), scale=scale)
    assert out.dtype == q.dtype and out.shape == q.shape and lse.shape == q.shape[:3]
    atol, rtol = tolerance or OUT_TOLERANCES[q.dtype]
    torch.testing.assert_close(out.double(), expected_out, atol=atol, rtol=rtol)
    atol, rtol = LSE_TOLERANCE
    torch.testing.assert_close(lse.double(), expected_lse, atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("head_dim", [32, 64, 72])
@pytest.mark.parametrize("n", [1, 7, 127, 129])
def test_matches_reference(n, head_dim, dtype, device):
    """Sequence lengths below, just under and just over the block size; D = 72 is padded to 128."""
    skip_bfloat16_in_interpreter(dtype)
    _check_against_reference(*_qkv(1, 2, n, head_dim, dtype, device))


@pytest.mark.parametrize("head_dim", [1, 16, 130, 256])
def test_extreme_head_dims(head_dim, device):
    _check_against_reference(*_qkv(2, 1, 9, head_dim, torch.float32, device))


@pytest.mark.parametrize("n_q, n_k", [(5, 130), (70, 3), (100, 128)])
def test_different_query_and_key_lengths(n_q, n_k, device):
    _check_against_reference(*_qkv(1, 2, n_q, 32, torch.float32, device, n_k=n_k))


@pytest.mark.parametrize("scale", [0.05, 1.0, -0.3])
def test_scale(scale, device):
    _check_against_reference(*_qkv(2, 2, 33, 64, torch.float32, device), scale=scale)


def test_default_scale_is_inverse_sqrt_head_dim(device):
    q, k, v = _qkv(1, 1, 20, 72, torch.float32, device)
    torch.testing.assert_close(
        attention(q, k, v, backend="triton"), attention(q, k, v, scale=1 / math.sqrt(72), backend="triton")
    )


def test_large_scores_are_stable(device):
    """Scores of size ~1e3: the running maximum keeps every exponential finite."""
    q, k, v = _qkv(1, 2, 100, 32, torch.float32, device)
    # A float32 score of size 1e3 is off by up to 1e3 * 2**-24 = 6e-5, and exp carries that absolute error
    # into a relative error of the weights: the tolerance grows with the scores.
    _check_against_reference(q * 40, k, v, tolerance=(2e-4, 2e-4))


def test_strided_inputs(device):
    """The kernel reads strides: transposed and sliced views give the contiguous result."""
    q, k, v = _qkv(2, 3, 45, 32, torch.float32, device)
    views = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)]
    views[2] = torch.cat([v, v], dim=-1)[..., :32]
    assert not any(t.is_contiguous() for t in views)
    torch.testing.assert_close(attention(*views, backend="triton"), attention(q, k, v, backend="triton"))


@pytest.mark.parametrize("n, head_dim", [(7, 32), (65, 72)])
def test_gradient_equals_reference_gradient(n, head_dim, device):
    q, k, v = (t.requires_grad_() for t in _qkv(2, 2, n, head_dim, torch.float32, device))
    weight = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(device)
    (attention(q, k, v, scale=0.2, backend="triton") * weight).sum().backward()
    grads = [t.grad for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    (attention_reference(q, k, v, scale=0.2)[0] * weight).sum().backward()
    for grad, expected in zip(grads, (q.grad, k.grad, v.grad)):
        torch.testing.assert_close(grad, expected)


def test_gradient_of_some_inputs_only(device):
    q, k, v = _qkv(1, 1, 9, 16, torch.float32, device)
    v.requires_grad_()
    attention(q, k, v, backend="triton").sum().backward()
    assert q.grad is None and v.grad is not None


# ----------------------------------------------------------------------------------------------------
# Other backends and dispatch
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
def test_torch_and_auto_backends_on_cpu(dtype):
    q, k, v = _qkv(2, 2, 17, 40, dtype, "cpu")
    reference, lse = attention(q, k, v, backend="torch", return_lse=True)
    assert reference.dtype == dtype
    auto = attention(q, k, v)  # CPU: scaled_dot_product_attention
    torch.testing.assert_close(auto, F.scaled_dot_product_attention(q, k, v), atol=0, rtol=0)
    atol, rtol = OUT_TOLERANCES.get(dtype, (1e-12, 1e-12))
    torch.testing.assert_close(auto.double(), reference.double(), atol=atol, rtol=rtol)
    auto_out, auto_lse = attention(q, k, v, return_lse=True)  # SDPA has no lse: the reference runs
    torch.testing.assert_close(auto_lse, lse, atol=0, rtol=0)


# ----------------------------------------------------------------------------------------------------
# UNet block
# ----------------------------------------------------------------------------------------------------


def test_self_attention_block_backends_agree(device):
    torch.manual_seed(0)
    block = SelfAttention2d(64, num_heads=2, num_groups=8).to(device)
    x = torch.randn(2, 64, 5, 7, device=device)
    with torch.no_grad():
        outputs = {}
        for backend in ("torch", "triton", "auto"):
            block.backend = backend
            outputs[backend] = block(x)
    assert outputs["torch"].shape == x.shape
    torch.testing.assert_close(outputs["triton"], outputs["torch"], atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(outputs["auto"], outputs["torch"], atol=2e-5, rtol=2e-5)


def test_self_attention_block_is_residual_and_trains():
    block = SelfAttention2d(16, num_heads=4, num_groups=4)
    x = torch.randn(3, 16, 4, 4)
    torch.nn.init.zeros_(block.proj.weight)
    torch.nn.init.zeros_(block.proj.bias)
    torch.testing.assert_close(block(x), x, atol=0, rtol=0)
    torch.nn.init.normal_(block.proj.weight)
    block(x).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(channels=10, num_heads=3), "num_heads"),
        (dict(channels=12, num_groups=5), "num_groups"),
        (dict(channels=514, num_heads=1, num_groups=2), "head dim"),
        (dict(channels=8, num_groups=4, backend="jax"), "backend"),
    ],
)
def test_self_attention_block_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SelfAttention2d(**kwargs)
    with pytest.raises(ValueError, match="x must be"):
        SelfAttention2d(8, num_groups=4)(torch.zeros(1, 4, 3, 3))


# ----------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------


def _bad_calls():
    q = torch.zeros(1, 2, 5, 8)
    return {
        "not a tensor": (lambda: attention(q, 1.0, q), TypeError, "k must be a torch.Tensor"),
        "rank": (lambda: attention(q[0], q, q), ValueError, "q must be 4-D"),
        "dtype mismatch": (lambda: attention(q, q.half(), q), TypeError, "k has dtype"),
        "integer dtype": (lambda: attention(q.long(), q.long(), q.long()), TypeError, "q has dtype"),
        "device": (lambda: attention(q, q, q.to("meta")), ValueError, "v is on meta"),
        "heads": (lambda: attention(q, torch.zeros(1, 3, 5, 8), q), ValueError, r"k has \(B, H\)"),
        "head dim": (lambda: attention(q, torch.zeros(1, 2, 5, 4), q), ValueError, "k has head dim"),
        "k v lengths": (lambda: attention(q, q, torch.zeros(1, 2, 6, 8)), ValueError, "v has 6 positions"),
        "no keys": (lambda: attention(q, q[:, :, :0], q[:, :, :0]), ValueError, "at least one position"),
        "D = 0": (lambda: attention(*[torch.zeros(1, 1, 3, 0)] * 3), ValueError, "head dim D = 0"),
        "D > 256": (lambda: attention(*[torch.zeros(1, 1, 3, 257)] * 3), ValueError, "head dim D = 257"),
        "scale type": (lambda: attention(q, q, q, scale="1"), TypeError, "scale"),
        "scale nan": (lambda: attention(q, q, q, scale=math.nan), ValueError, "scale"),
        "backend": (lambda: attention(q, q, q, backend="flash"), ValueError, "backend"),
        "float64 kernel": (lambda: attention(*[q.double()] * 3, backend="triton"), TypeError, "Triton"),
    }


@pytest.mark.parametrize("case", list(_bad_calls()))
def test_bad_input(case):
    call, error, message = _bad_calls()[case]
    with pytest.raises(error, match=message):
        call()


# ----------------------------------------------------------------------------------------------------
# GPU only
# ----------------------------------------------------------------------------------------------------


def _rmse(a, b):
    return (a.double() - b.double()).square().mean().sqrt().item()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n, head_dim", [(1024, 64), (1000, 128), (4096, 64), (777, 72)])
def test_gpu_error_at_most_twice_sdpa(n, head_dim, dtype, cuda):
    """Against the float32 reference, our 16-bit error (RMSE over all outputs) is at most twice that of
    PyTorch's own SDPA in the same dtype."""
    q, k, v = _qkv(2, 8, n, head_dim, dtype, cuda)
    reference, reference_lse = attention_reference(q.float(), k.float(), v.float())
    out, lse = attention(q, k, v, backend="triton", return_lse=True)
    sdpa = F.scaled_dot_product_attention(q, k, v)
    assert _rmse(out, reference) <= 2 * _rmse(sdpa, reference)
    torch.testing.assert_close(lse, reference_lse, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("head_dim", [16, 64, 128, 200, 256])
def test_gpu_autotuned_head_dims(head_dim, dtype, cuda):
    """Every head dim runs under autotuning, including the ones that prune the large tiles."""
    _check_against_reference(*_qkv(2, 4, 300, head_dim, dtype, cuda))


@pytest.mark.gpu
def test_gpu_auto_dispatch(cuda):
    q, k, v = _qkv(2, 4, 256, 64, torch.float16, cuda)
    torch.testing.assert_close(attention(q, k, v), attention(q, k, v, backend="triton"), atol=0, rtol=0)
    q.requires_grad_()
    torch.testing.assert_close(attention(q, k, v), F.scaled_dot_product_attention(q, k, v), atol=0, rtol=0)
