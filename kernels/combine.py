"""Fused solver update: x' = sum_i c_i y_i + noise * z in one pass over memory.

Most diffusion-sampler steps end with a short linear combination of the state, one or more model outputs
and, for SDE samplers, fresh Gaussian noise (DDIM with eta > 0, ancestral Euler, DPM-Solver++(2M) SDE).
Written as separate PyTorch operations this reads and writes the state several times and materialises z.
The fused kernel reads each input once, writes the output once and draws z in registers from a
counter-based generator (Philox4x32-10, Salmon et al. 2011), so a fused step is still reproducible.

Noise stream of the kernel: for the flat element offset e of the (contiguous) tensor, z[e] is output
``e % 4`` of ``tl.randn4x(seed, e // 4)`` (Philox keyed on ``seed`` with counter ``e // 4``, then
Box-Muller). It depends on (seed, e) only: not on the block size, the launch grid, the shape or the dtype.
The ``"torch"`` backend draws z with ``torch.randn`` from a ``torch.Generator`` seeded with ``seed``: a
different stream. The two backends agree on the deterministic part within rounding, not on the noise.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

from ._triton import interpreting, lazy_jit, require_triton, tl, triton, triton_available

__all__ = ["MAX_INPUTS", "combine", "combine_reference"]

MAX_INPUTS = 5
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_DTYPE_NAMES = "float16, bfloat16, float32, float64"
_BACKENDS = ("auto", "torch", "triton")
_SEED_LIMIT = 2**63
# Fixed launch configuration for the interpreter, where autotuning would only measure Python.
_INTERPRETER_BLOCK = 1024

Coefficient = float | torch.Tensor


# ----------------------------------------------------------------------------------------------------
# Kernel
# ----------------------------------------------------------------------------------------------------


@lazy_jit(do_not_specialize=["seed"])
def _combine_kernel(
    out_ptr,  # *T: n_elements contiguous values written; may be one of the inputs (in-place update)
    ys,  # tuple of NUM_INPUTS pointers *T, each to n_elements contiguous values
    cs,  # tuple of NUM_INPUTS + HAS_NOISE float32 scalars: the coefficients when COEF_MODE == 0
    coef_ptr,  # *ACC_DTYPE: (NUM_INPUTS + HAS_NOISE, coef_width) coefficient table when COEF_MODE > 0
    coef_width,  # columns of coef_ptr: 1 (COEF_MODE 1) or the batch size (COEF_MODE 2)
    n_elements,  # number of elements in each tensor
    inner,  # elements per sample, n_elements // batch: flat offset e belongs to sample e // inner
    seed,  # Philox key of the noise; z at offset e depends on (seed, e) only
    NUM_INPUTS: tl.constexpr,  # 1..5 input tensors
    HAS_NOISE: tl.constexpr,  # whether the noise term is present
    COEF_MODE: tl.constexpr,  # 0 scalars in cs, 1 one value per row of coef_ptr, 2 one value per sample
    ACC_DTYPE: tl.constexpr,  # tl.float32, or tl.float64 for float64 tensors
    USE_INT64: tl.constexpr,  # 64-bit offsets, for tensors with 2**31 elements or more
    BLOCK: tl.constexpr,  # elements per program; a multiple of 4 so noise groups never straddle programs
):
    pid = tl.program_id(0)
    if USE_INT64:
        start = pid.to(tl.int64) * BLOCK
    else:
        start = pid * BLOCK
    offsets = start + tl.arange(0, BLOCK)
    mask = offsets < n_elements
    if COEF_MODE == 2:
        sample = offsets // inner

    for i in tl.static_range(NUM_INPUTS + HAS_NOISE):
        if COEF_MODE == 0:
            coefficient = cs[i]
        elif COEF_MODE == 1:
            coefficient = tl.load(coef_ptr + i)
        else:
            coefficient = tl.load(coef_ptr + i * coef_width + sample, mask=mask, other=0.0)
        if i < NUM_INPUTS:
            # Each input is read exactly once: tell the cache not to keep it.
            value = tl.load(ys[i] + offsets, mask=mask, other=0.0, eviction_policy="evict_first")
            value = value.to(ACC_DTYPE)
        else:
            # One Philox call gives four normals; they go to four consecutive elements, so the counter is
            # offset // 4 and the stream does not depend on BLOCK.
            group = start // 4 + tl.arange(0, BLOCK // 4)
            z0, z1, z2, z3 = tl.randn4x(seed, group)
            value = tl.reshape(tl.join(tl.join(z0, z2), tl.join(z1, z3)), (BLOCK,)).to(ACC_DTYPE)
        if i == 0:
            acc = coefficient * value
        else:
            acc += coefficient * value

    tl.store(out_ptr + offsets, acc.to(out_ptr.dtype.element_ty), mask=mask)


def _autotune_configs() -> list:
    return [
        triton.Config({"BLOCK": block}, num_warps=warps)
        for block in (1024, 2048, 4096)
        for warps in (4, 8)
    ]


_tuned_kernel = None


def _gpu_kernel():
    """The autotuned kernel for GPUs, built on first use."""
    global _tuned_kernel
    if _tuned_kernel is None:
        _tuned_kernel = triton.autotune(
            configs=_autotune_configs(),
            key=["n_elements", "NUM_INPUTS", "HAS_NOISE", "COEF_MODE"],
            # Benchmarking runs the kernel several times; when out aliases an input (in-place update) the
            # input must be put back after each run.
            restore_value=["out_ptr"],
        )(_combine_kernel.jitted())
    return _tuned_kernel


# ----------------------------------------------------------------------------------------------------
# Argument checks, shared by all backends
# ----------------------------------------------------------------------------------------------------


class _Problem:
    """Checked arguments of one combine call."""

    def __init__(
        self,
        coeffs: list[float | torch.Tensor],
        tensors: list[torch.Tensor],
        noise: float | torch.Tensor | None,
        seed: int | None,
        out: torch.Tensor | None,
    ) -> None:
        self.coeffs = coeffs
        self.tensors = tensors
        self.noise = noise
        self.seed = seed
        self.out = out
        first = tensors[0]
        self.shape = first.shape
        self.dtype = first.dtype
        self.device = first.device
        self.acc_dtype = torch.float64 if first.dtype == torch.float64 else torch.float32

    @property
    def terms(self) -> list[float | torch.Tensor]:
        """Coefficients of all terms: the inputs', then the noise's if present."""
        return self.coeffs + ([] if self.noise is None else [self.noise])

    @property
    def per_sample(self) -> bool:
        return any(isinstance(c, torch.Tensor) and c.dim() == 1 for c in self.terms)

    @property
    def needs_grad(self) -> bool:
        if not torch.is_grad_enabled():
            return False
        values = self.tensors + [c for c in self.terms if isinstance(c, torch.Tensor)]
        return any(v.requires_grad for v in values)


def _check_coefficient(value: object, name: str, shape: torch.Size) -> float | torch.Tensor:
    if isinstance(value, torch.Tensor):
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{name} must be a real-valued tensor, got dtype {value.dtype}")
        if value.dim() == 0:
            return value
        if value.dim() == 1:
            if len(shape) == 0:
                raise ValueError(f"{name} is per-sample (1-D) but the tensors are 0-d and have no batch dim")
            if value.shape[0] != shape[0]:
                raise ValueError(
                    f"{name} has length {value.shape[0]}; a per-sample coefficient needs one value per "
                    f"sample: batch size {shape[0]} (dim 0 of the tensors)"
                )
            return value
        raise ValueError(
            f"{name} must be a float, a 0-d tensor or a 1-D per-sample tensor, got shape {tuple(value.shape)}"
        )
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"{name} must be a float or a tensor, got {type(value).__name__}")


def _check(
    coeffs: Sequence[Coefficient],
    tensors: Sequence[torch.Tensor],
    noise: Coefficient | None,
    seed: int | None,
    out: torch.Tensor | None,
    generator: torch.Generator | None,
) -> _Problem:
    if isinstance(tensors, torch.Tensor) or not isinstance(tensors, Sequence):
        raise TypeError(f"tensors must be a list or tuple of tensors, got {type(tensors).__name__}")
    if isinstance(coeffs, (numbers.Number, str)) or not hasattr(coeffs, "__len__"):
        raise TypeError(f"coeffs must be a list or tuple of coefficients, got {type(coeffs).__name__}")
    tensors = list(tensors)
    coeffs = list(coeffs)
    if not 1 <= len(tensors) <= MAX_INPUTS:
        raise ValueError(f"tensors must hold 1 to {MAX_INPUTS} tensors, got {len(tensors)}")
    if len(coeffs) != len(tensors):
        raise ValueError(f"len(coeffs) = {len(coeffs)} but len(tensors) = {len(tensors)}: one per tensor")

    for i, tensor in enumerate(tensors):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"tensors[{i}] must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dtype not in _DTYPES:
            raise TypeError(f"tensors[{i}] has dtype {tensor.dtype}; supported: {_DTYPE_NAMES}")
    first = tensors[0]
    for i, tensor in enumerate(tensors[1:], start=1):
        if tensor.shape != first.shape:
            raise ValueError(
                f"tensors[{i}] has shape {tuple(tensor.shape)} but tensors[0] has {tuple(first.shape)}"
            )
        if tensor.dtype != first.dtype:
            raise TypeError(f"tensors[{i}] has dtype {tensor.dtype} but tensors[0] has {first.dtype}")
        if tensor.device != first.device:
            raise ValueError(f"tensors[{i}] is on {tensor.device} but tensors[0] is on {first.device}")

    checked = [_check_coefficient(c, f"coeffs[{i}]", first.shape) for i, c in enumerate(coeffs)]
    if noise is not None:
        noise = _check_coefficient(noise, "noise", first.shape)
        seed = _check_seed(seed, generator)

    if out is not None:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
        if out.shape != first.shape:
            raise ValueError(f"out has shape {tuple(out.shape)} but the tensors have {tuple(first.shape)}")
        if out.dtype != first.dtype:
            raise TypeError(f"out has dtype {out.dtype} but the tensors have {first.dtype}")
        if out.device != first.device:
            raise ValueError(f"out is on {out.device} but the tensors are on {first.device}")
        if not out.is_contiguous():
            raise ValueError("out must be contiguous (the result is written as one flat array)")
    return _Problem(checked, tensors, noise, seed, out)


def _check_seed(seed: int | None, generator: torch.Generator | None) -> int:
    if seed is None and generator is None:
        raise ValueError(
            "noise is given but seed is None: pass seed=<int> (or generator=<torch.Generator> to draw one)"
        )
    if seed is not None and generator is not None:
        raise ValueError("pass seed or generator, not both")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        draw = torch.randint(0, _SEED_LIMIT - 1, (1,), generator=generator, device=generator.device)
        return int(draw.item())
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed < _SEED_LIMIT:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    return seed


# ----------------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------------


def _as_factor(coefficient: float | torch.Tensor, problem: _Problem) -> float | torch.Tensor:
    """A coefficient ready to multiply a tensor of the problem's shape in the accumulation dtype."""
    if not isinstance(coefficient, torch.Tensor):
        return coefficient
    factor = coefficient.to(device=problem.device, dtype=problem.acc_dtype)
    if factor.dim() == 1:
        factor = factor.reshape((-1,) + (1,) * (len(problem.shape) - 1))
    return factor


def _combine_torch(problem: _Problem) -> torch.Tensor:
    acc_dtype = problem.acc_dtype
    result = None
    for coefficient, tensor in zip(problem.coeffs, problem.tensors):
        term = tensor.to(acc_dtype) * _as_factor(coefficient, problem)
        result = term if result is None else result + term
    if problem.noise is not None:
        generator = torch.Generator(device=problem.device).manual_seed(problem.seed)
        z = torch.randn(problem.shape, generator=generator, dtype=acc_dtype, device=problem.device)
        result = result + _as_factor(problem.noise, problem) * z
    result = result.to(problem.dtype)
    if problem.out is None:
        return result
    return problem.out.copy_(result)


def _coefficient_table(problem: _Problem) -> tuple[int, torch.Tensor, int]:
    """(COEF_MODE, table, width): the coefficients as the kernel reads them, without a host sync."""
    terms = problem.terms
    if problem.acc_dtype == torch.float32 and not any(isinstance(c, torch.Tensor) for c in terms):
        # Plain floats go in as kernel arguments; the table pointer is then never read.
        return 0, problem.tensors[0], 1
    width = problem.shape[0] if problem.per_sample else 1
    table = torch.empty((len(terms), width), dtype=problem.acc_dtype, device=problem.device)
    for row, coefficient in zip(table, terms):
        if isinstance(coefficient, torch.Tensor):
            row.copy_(coefficient.to(problem.acc_dtype).expand(width))
        else:
            row.fill_(coefficient)
    return (2 if problem.per_sample else 1), table, width


def _combine_triton(problem: _Problem) -> torch.Tensor:
    require_triton(problem.device, "combine")
    if problem.needs_grad:
        raise RuntimeError(
            "combine: the Triton kernel does not track gradients; use backend='torch' or torch.no_grad()"
        )
    # The kernel reads flat arrays: strided inputs are copied to contiguous ones first.
    tensors = [t.contiguous() for t in problem.tensors]
    out = problem.out if problem.out is not None else torch.empty_like(tensors[0])
    n_elements = out.numel()
    if n_elements == 0:
        return out
    batch = problem.shape[0] if len(problem.shape) > 0 else 1
    inner = n_elements // batch
    mode, table, width = _coefficient_table(problem)
    scalars = tuple(float(c) for c in problem.terms) if mode == 0 else (0.0,) * len(problem.terms)
    args = (out, tuple(tensors), scalars, table, width, n_elements, inner, problem.seed or 0)
    constants = dict(
        NUM_INPUTS=len(tensors),
        HAS_NOISE=int(problem.noise is not None),
        COEF_MODE=mode,
        ACC_DTYPE=tl.float64 if problem.acc_dtype == torch.float64 else tl.float32,
        USE_INT64=n_elements + 8192 >= 2**31,
    )
    if interpreting():
        grid = (triton.cdiv(n_elements, _INTERPRETER_BLOCK),)
        _combine_kernel.jitted()[grid](*args, **constants, BLOCK=_INTERPRETER_BLOCK)
    else:
        with torch.cuda.device(problem.device):

            def grid(meta):
                return (triton.cdiv(n_elements, meta["BLOCK"]),)

            _gpu_kernel()[grid](*args, **constants)
    return out


# ----------------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------------


def combine(
    coeffs: Sequence[Coefficient],
    tensors: Sequence[torch.Tensor],
    noise: Coefficient | None = None,
    seed: int | None = None,
    out: torch.Tensor | None = None,
    backend: str = "auto",
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fused update ``x' = sum_i coeffs[i] * tensors[i] + noise * z``, z ~ N(0, I), in one pass.

    Sums are accumulated in float32 (float64 for float64 tensors) and rounded once to the tensors' dtype.

    Args:
        coeffs: one coefficient per tensor: a Python float, a 0-d tensor, or a 1-D tensor of length B
            (dim 0 of the tensors, batch first) applied per sample and broadcast over the other dims.
        tensors: 1 to 5 tensors of the same shape, dtype (float16, bfloat16, float32 or float64) and
            device. The Triton backend copies non-contiguous ones to contiguous memory first.
        noise: coefficient of the noise term, in the same forms as ``coeffs``; None for no noise.
        seed: int in [0, 2**63) keying the noise; required when ``noise`` is given unless ``generator`` is.
        out: optional contiguous tensor for the result, of the tensors' shape, dtype and device. It may be one
            of ``tensors`` (an in-place update); it must not overlap them otherwise.
        backend: ``"triton"`` runs the fused kernel (CUDA tensors, or CPU tensors under
            ``TRITON_INTERPRET=1``); ``"torch"`` runs `combine_reference`; ``"auto"`` picks Triton for
            CUDA tensors when Triton is installed and no gradient is needed, else torch.
        generator: instead of ``seed``: a ``torch.Generator`` from which one seed is drawn (this advances it).

    The fused kernel and the torch backend use different noise streams (see the module docstring): with the
    same seed they agree on the deterministic part within rounding but draw different z. Each is
    reproducible: the same seed gives the same result on the same device.

    Returns:
        The result: ``out`` if given, else a new tensor.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    problem = _check(coeffs, tensors, noise, seed, out, generator)
    if backend == "auto":
        use_triton = problem.device.type == "cuda" and triton_available() and not problem.needs_grad
        backend = "triton" if use_triton else "torch"
    if backend == "triton":
        return _combine_triton(problem)
    return _combine_torch(problem)


def combine_reference(
    coeffs: Sequence[Coefficient],
    tensors: Sequence[torch.Tensor],
    noise: Coefficient | None = None,
    seed: int | None = None,
    out: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pure-PyTorch oracle of `combine`: the same formula as separate operations.

    Each term is computed as ``tensor.to(acc) * coefficient`` and summed left to right in the accumulation
    dtype (float32, or float64 for float64 tensors); z comes from ``torch.randn`` with a
    ``torch.Generator`` on the tensors' device seeded with ``seed``. Differentiable.
    """
    return _combine_torch(_check(coeffs, tensors, noise, seed, out, generator))
