"""The fused update kernel against its PyTorch reference, and its in-kernel noise on its own."""

import math

import pytest
import scipy.stats
import torch
from hypothesis import given
from hypothesis import strategies as st

from sdekit.kernels import combine, combine_reference

from .helpers import CAN_RUN_TRITON, ON_GPU

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# (atol, rtol). Kernel and reference both sum in the accumulation dtype and round once; they may still
# differ in the last bit of that sum (the compiler may fuse a multiply-add), which rounding to the output
# dtype can turn into one ulp of the output.
TOLERANCES = {
    torch.float64: (1e-13, 1e-13),  # a few float64 ulps of O(1) sums of at most 5 terms
    torch.float32: (2e-6, 2e-6),  # a few float32 ulps
    torch.float16: (2e-3, 2e-3),  # one float16 ulp, 2**-10 relative
    # One bfloat16 ulp, 2**-7 relative: on top of the above, the interpreter truncates float32 to bfloat16
    # where a GPU rounds to nearest.
    torch.bfloat16: (1.6e-2, 1.6e-2),
}
# Odd element counts and shapes: a single element, less than one block, a partial last block, several blocks.
SHAPES = [(1,), (7,), (127,), (1001,), (3, 5, 7), (5, 1001)]


def _inputs(shape, dtype, count, device, seed=0):
    generator = torch.Generator().manual_seed(seed)
    draws = [torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(count)]
    return [t.to(dtype).to(device) for t in draws]


def _assert_close(actual, expected):
    atol, rtol = TOLERANCES[expected.dtype]
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


def _noise(n, seed, device, dtype=torch.float32):
    """z itself: 0 * 0 + 1 * z."""
    zeros = torch.zeros(n, dtype=dtype, device=device)
    return combine([0.0], [zeros], noise=1.0, seed=seed, backend="triton")


# ----------------------------------------------------------------------------------------------------
# Deterministic part
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference(shape, dtype, device):
    tensors = _inputs(shape, dtype, 3, device)
    coeffs = [0.7, -1.3, 1e-3]
    _assert_close(combine(coeffs, tensors, backend="triton"), combine_reference(coeffs, tensors))


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_any_number_of_inputs(count, dtype, device):
    tensors = _inputs((3, 5, 7), dtype, count, device, seed=count)
    coeffs = [0.5 - 0.37 * i for i in range(count)]
    _assert_close(combine(coeffs, tensors, backend="triton"), combine_reference(coeffs, tensors))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_tensor_and_per_sample_coefficients(dtype, device):
    """Floats, 0-d tensors and per-sample (B,) tensors mixed; the per-sample ones broadcast over dims 1.."""
    shape = (4, 3, 5, 7)
    tensors = _inputs(shape, dtype, 3, device)
    coeffs = [0.25, torch.tensor(-1.5, device=device), torch.tensor([1.0, -2.0, 0.5, 3.0], device=device)]
    result = combine(coeffs, tensors, backend="triton")
    _assert_close(result, combine_reference(coeffs, tensors))
    for b in range(shape[0]):  # sample b sees the scalar coefficient coeffs[2][b]
        scalars = [0.25, -1.5, float(coeffs[2][b])]
        expected = combine_reference(scalars, [t[b] for t in tensors])
        _assert_close(result[b], expected)


def test_0d_tensors_and_empty_tensors(device):
    tensors = _inputs((), torch.float32, 2, device)
    _assert_close(combine([2.0, 3.0], tensors, backend="triton"), combine_reference([2.0, 3.0], tensors))
    empty = torch.zeros((0, 3), device=device)
    assert combine([1.0], [empty], noise=1.0, seed=0, backend="triton").shape == (0, 3)


def test_non_contiguous_inputs(device):
    base = _inputs((7, 9), torch.float32, 2, device)
    strided = [base[0].t(), base[1][:, ::1].t()]
    assert not strided[0].is_contiguous()
    _assert_close(combine([1.5, -0.5], strided, backend="triton"), combine_reference([1.5, -0.5], strided))


@pytest.mark.parametrize("with_noise", [False, True])
def test_in_place_update(with_noise, device):
    """out may be one of the inputs: x <- a x + b eps (+ noise z) without a temporary."""
    x, eps = _inputs((5, 1001), torch.float32, 2, device)
    noise = 0.3 if with_noise else None
    expected = combine([0.9, -0.2], [x.clone(), eps], noise=noise, seed=11, backend="triton")
    result = combine([0.9, -0.2], [x, eps], noise=noise, seed=11, out=x, backend="triton")
    assert result is x
    torch.testing.assert_close(x, expected, atol=0, rtol=0)


def test_out_tensor(device):
    tensors = _inputs((3, 5, 7), torch.float16, 2, device)
    out = torch.empty_like(tensors[0])
    assert combine([1.0, 2.0], tensors, out=out, backend="triton") is out
    _assert_close(out, combine_reference([1.0, 2.0], tensors))


@st.composite
def _problems(draw):
    """A shape, 1..5 inputs, and for every term a float, a 0-d tensor or a per-sample tensor."""
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=1, max_size=3)))
    count = draw(st.integers(1, 5))
    values = st.floats(-3, 3, allow_nan=False)

    def coefficient():
        kind = draw(st.sampled_from(["float", "0-d", "per-sample"]))
        if kind == "float":
            return draw(values)
        if kind == "0-d":
            return torch.tensor(draw(values), dtype=torch.float64)
        return torch.tensor(draw(st.lists(values, min_size=shape[0], max_size=shape[0])), dtype=torch.float64)

    coeffs = [coefficient() for _ in range(count)]
    noise = coefficient() if draw(st.booleans()) else None
    return shape, coeffs, noise, draw(st.integers(0, 2**40))


@given(problem=_problems(), dtype=st.sampled_from([torch.float64, torch.float32]))
def test_any_coefficient_forms(problem, dtype):
    """Deterministic part against the reference; the noise part is noise * z for the z of the same seed."""
    if not CAN_RUN_TRITON:
        pytest.skip("no Triton kernel can run here")
    device = torch.device("cuda" if ON_GPU else "cpu")
    shape, coeffs, noise, seed = problem
    coeffs = [c.to(device) if isinstance(c, torch.Tensor) else c for c in coeffs]
    tensors = _inputs(shape, dtype, len(coeffs), device, seed=seed % 1000)
    result = combine(coeffs, tensors, noise=noise, seed=seed, backend="triton")
    expected = combine_reference(coeffs, tensors)
    if noise is not None:
        z = combine([0.0], [torch.zeros_like(tensors[0])], noise=1.0, seed=seed, backend="triton")
        scale = noise.to(device, dtype) if isinstance(noise, torch.Tensor) else noise
        if isinstance(scale, torch.Tensor) and scale.dim() == 1:
            scale = scale.reshape((-1,) + (1,) * (len(shape) - 1))
        expected = expected + scale * z
    _assert_close(result, expected)


# ----------------------------------------------------------------------------------------------------
# Fused noise
# ----------------------------------------------------------------------------------------------------


def test_noise_reproducible_and_seeded(device):
    a = _noise(5000, seed=1234, device=device)
    torch.testing.assert_close(a, _noise(5000, seed=1234, device=device), atol=0, rtol=0)
    b = _noise(5000, seed=1235, device=device)
    assert (a != b).float().mean() > 0.99


def test_noise_keyed_on_offset_only(device):
    """z at a flat offset does not depend on the tensor's length, shape or dtype."""
    long = _noise(5000, seed=7, device=device)
    torch.testing.assert_close(_noise(1001, seed=7, device=device), long[:1001], atol=0, rtol=0)
    shaped = combine([0.0], [torch.zeros(5, 1000, device=device)], noise=1.0, seed=7, backend="triton")
    torch.testing.assert_close(shaped.flatten(), long, atol=0, rtol=0)
    double = _noise(5000, seed=7, device=device, dtype=torch.float64)
    torch.testing.assert_close(double, long.double(), atol=0, rtol=0)  # z is float32, widened exactly


def test_noise_scaled_per_sample(device):
    x = _inputs((4, 3, 7), torch.float64, 1, device)[0]
    sigma = torch.tensor([0.0, 0.5, 1.0, 2.0], dtype=torch.float64, device=device)
    z = combine([0.0], [torch.zeros_like(x)], noise=1.0, seed=3, backend="triton")
    result = combine([1.0], [x], noise=sigma, seed=3, backend="triton")
    _assert_close(result, x + sigma[:, None, None] * z)


N_STATS = 2**16


@pytest.fixture(scope="module")
def z_sample():
    if not CAN_RUN_TRITON:
        pytest.skip("no Triton kernel can run here")
    device = torch.device("cuda" if ON_GPU else "cpu")
    return _noise(N_STATS, seed=20240601, device=device).double().cpu()


def test_noise_is_standard_normal(z_sample):
    """Kolmogorov-Smirnov against N(0, 1), and mean and variance within 5 standard errors."""
    n = z_sample.numel()
    # Fixed seed: the p-value is a fixed number; 1e-3 only guards against a grossly wrong distribution.
    assert scipy.stats.kstest(z_sample.numpy(), "norm").pvalue > 1e-3
    assert abs(z_sample.mean().item()) < 5 / math.sqrt(n)  # standard error of the mean: 1/sqrt(n)
    # Standard error of the sample variance of N(0, 1) data: sqrt(2/n).
    assert abs(z_sample.var().item() - 1) < 5 * math.sqrt(2 / n)


def test_noise_independent_across_offsets(z_sample, device):
    """Sample correlations of independent standard normals over m pairs are about N(0, 1/m): a bound of
    5/sqrt(m) fails by chance with probability below 1e-6."""

    def correlation(a, b):
        return torch.corrcoef(torch.stack([a, b]))[0, 1].item()

    half = N_STATS // 2
    bound = 5 / math.sqrt(half)
    assert abs(correlation(z_sample[:half], z_sample[half:])) < bound
    for lag in (1, 2, 3, 4):  # within and across the groups of four normals that share one Philox call
        m = N_STATS - lag
        assert abs(correlation(z_sample[:-lag], z_sample[lag:])) < 5 / math.sqrt(m)
    other_seed = _noise(N_STATS, seed=20240602, device=device).double().cpu()
    assert abs(correlation(z_sample, other_seed)) < 5 / math.sqrt(N_STATS)


def test_torch_backend_noise(device):
    """The reference draws z with torch.randn from a Generator seeded with seed (a different stream)."""
    x = _inputs((3, 5, 7), torch.float32, 1, device)[0]
    result = combine([1.0], [x], noise=0.5, seed=99, backend="torch")
    generator = torch.Generator(device=device).manual_seed(99)
    z = torch.randn(x.shape, generator=generator, device=device)
    torch.testing.assert_close(result, x + 0.5 * z)
    fused = combine([1.0], [x], noise=0.5, seed=99, backend="triton")
    assert not torch.allclose(fused, result)


def test_generator_draws_the_seed(device):
    x = _inputs((1001,), torch.float32, 1, device)[0]

    def run(generator):
        return combine([1.0], [x], noise=1.0, generator=generator, backend="triton")

    first = run(torch.Generator().manual_seed(5))
    torch.testing.assert_close(first, run(torch.Generator().manual_seed(5)), atol=0, rtol=0)
    generator = torch.Generator().manual_seed(5)
    run(generator)
    assert not torch.equal(run(generator), first)  # the generator advanced


# ----------------------------------------------------------------------------------------------------
# Dispatch and gradients
# ----------------------------------------------------------------------------------------------------


def test_auto_backend():
    x, eps = _inputs((3, 5, 7), torch.float32, 2, "cpu")
    auto = combine([1.0, 0.5], [x, eps], noise=0.1, seed=4)
    expected = combine([1.0, 0.5], [x, eps], noise=0.1, seed=4, backend="torch")
    torch.testing.assert_close(auto, expected, atol=0, rtol=0)  # CPU tensors: the torch backend


def test_gradients(device):
    x, eps = (t.requires_grad_() for t in _inputs((3, 4), torch.float64, 2, device))
    c = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64, device=device, requires_grad=True)
    combine([c, 0.5], [x, eps]).sum().backward()  # auto falls back to the differentiable reference
    torch.testing.assert_close(x.grad, c.detach()[:, None].expand(3, 4))
    torch.testing.assert_close(c.grad, x.detach().sum(1))
    with pytest.raises(RuntimeError, match="gradients"):
        combine([1.0, 0.5], [x, eps], backend="triton")
    with torch.no_grad():
        combine([1.0, 0.5], [x, eps], backend="triton")


# ----------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------


def _bad_calls():
    x = torch.zeros(4, 3)
    y = torch.zeros(4, 3)
    return {
        "no tensors": (lambda: combine([], []), ValueError, "1 to 5"),
        "six tensors": (lambda: combine([1.0] * 6, [x] * 6), ValueError, "1 to 5"),
        "coeff count": (lambda: combine([1.0], [x, y]), ValueError, r"len\(coeffs\)"),
        "tensor not a list": (lambda: combine([1.0], x), TypeError, "tensors"),
        "coeffs not a list": (lambda: combine(1.0, [x]), TypeError, "coeffs"),
        "not a tensor": (lambda: combine([1.0, 1.0], [x, 3.0]), TypeError, r"tensors\[1\]"),
        "shape": (lambda: combine([1.0, 1.0], [x, torch.zeros(3, 4)]), ValueError, r"tensors\[1\].*shape"),
        "dtype": (lambda: combine([1.0, 1.0], [x, y.double()]), TypeError, r"tensors\[1\].*dtype"),
        "integer tensor": (lambda: combine([1.0], [x.long()]), TypeError, r"tensors\[0\].*dtype"),
        "device": (lambda: combine([1.0, 1.0], [x, y.to("meta")]), ValueError, r"tensors\[1\].*meta"),
        "per-sample length": (lambda: combine([torch.ones(3)], [x]), ValueError, r"coeffs\[0\].*length 3.*4"),
        "coefficient rank": (lambda: combine([torch.ones(4, 3)], [x]), ValueError, r"coeffs\[0\]"),
        "coefficient type": (lambda: combine(["a"], [x]), TypeError, r"coeffs\[0\]"),
        "complex coefficient": (lambda: combine([torch.tensor(1j)], [x]), TypeError, r"coeffs\[0\]"),
        "noise length": (lambda: combine([1.0], [x], noise=torch.ones(2), seed=0), ValueError, "noise"),
        "noise without seed": (lambda: combine([1.0], [x], noise=1.0), ValueError, "seed"),
        "seed and generator": (
            lambda: combine([1.0], [x], noise=1.0, seed=1, generator=torch.Generator()),
            ValueError,
            "not both",
        ),
        "seed type": (lambda: combine([1.0], [x], noise=1.0, seed=1.5), TypeError, "seed"),
        "seed range": (lambda: combine([1.0], [x], noise=1.0, seed=-1), ValueError, "seed"),
        "out shape": (lambda: combine([1.0], [x], out=torch.zeros(12)), ValueError, "out"),
        "out dtype": (lambda: combine([1.0], [x], out=y.half()), TypeError, "out"),
        "out strided": (lambda: combine([1.0], [x], out=torch.zeros(3, 4).t()), ValueError, "contiguous"),
        "backend": (lambda: combine([1.0], [x], backend="cuda"), ValueError, "backend"),
    }


@pytest.mark.parametrize("case", list(_bad_calls()))
def test_bad_input(case):
    call, error, message = _bad_calls()[case]
    with pytest.raises(error, match=message):
        call()


# ----------------------------------------------------------------------------------------------------
# GPU only
# ----------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gpu_large_in_place_with_autotuning(dtype, cuda):
    """Several blocks of every autotuned configuration; in-place output survives the autotuner's reruns."""
    shape = (8, 4, 257, 263)
    tensors = _inputs(shape, dtype, 5, cuda)
    sigma = torch.linspace(0.1, 1.0, shape[0], device=cuda)
    coeffs = [0.3, -0.7, torch.tensor(0.2, device=cuda), 1.1, -0.4]
    expected = combine(coeffs, [t.clone() for t in tensors], noise=sigma, seed=8, backend="triton")
    deterministic = combine_reference(coeffs, tensors)
    combine(coeffs, tensors, noise=sigma, seed=8, out=tensors[0], backend="triton")
    torch.testing.assert_close(tensors[0], expected, atol=0, rtol=0)
    if dtype in (torch.float32, torch.float64):  # 16-bit rounding would swamp z at small sigma
        z = (expected.double() - deterministic.double()) / sigma.double()[:, None, None, None]
        assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1) < 0.01


@pytest.mark.gpu
def test_gpu_auto_uses_the_kernel(cuda):
    x = torch.randn(1000, device=cuda)
    auto = combine([1.0], [x], noise=1.0, seed=3)
    torch.testing.assert_close(auto, combine([1.0], [x], noise=1.0, seed=3, backend="triton"), atol=0, rtol=0)
