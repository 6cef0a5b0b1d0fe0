"""Fused attention forward in Triton (FlashAttention-2), its PyTorch reference, and a UNet attention block.

The kernel follows FlashAttention-2 (Dao 2023, "FlashAttention-2: Faster Attention with Better Parallelism
and Work Partitioning"): each program owns a block of query rows and streams the keys and values through
on-chip memory, keeping a running row maximum and row sum (online softmax), so the N x N score matrix is
never written to memory. Scores are kept in base 2 (the scale is multiplied by log2(e)) so the kernel can use
``exp2``. Besides the output it writes the natural-log log-sum-exp of every row of scaled scores, which a
backward pass needs.

The backward pass is not fused yet: `TritonAttentionFunction` recomputes the attention with the
PyTorch reference and differentiates that, which materialises the N x N scores.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from ._triton import interpreting, lazy_jit, require_triton, tl, triton, triton_available

__all__ = ["HEAD_DIM_MAX", "SelfAttention2d", "TritonAttentionFunction", "attention", "attention_reference"]

HEAD_DIM_MAX = 256
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_DTYPE_NAMES = "float16, bfloat16, float32, float64"
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_BACKENDS = ("auto", "torch", "triton")
# Fixed launch configuration for the interpreter: fast there, and N = 127 or 129 already spans two or three
# key blocks, which exercises the online softmax and the masking of a partial block.
_INTERPRETER_BLOCK_M = 64
_INTERPRETER_BLOCK_N = 64
_LN2 = math.log(2.0)
_LOG2E = 1.0 / _LN2


# ----------------------------------------------------------------------------------------------------
# Kernel
# ----------------------------------------------------------------------------------------------------


@lazy_jit()
def _attention_fwd_kernel(
    q_ptr,  # *T: queries (B, H, n_q, HEAD_DIM), any strides
    k_ptr,  # *T: keys (B, H, n_k, HEAD_DIM), any strides
    v_ptr,  # *T: values (B, H, n_k, HEAD_DIM), any strides
    out_ptr,  # *T: output (B, H, n_q, HEAD_DIM), contiguous
    lse_ptr,  # *fp32: (B, H, n_q) natural-log log-sum-exp of each row of scaled scores, contiguous
    qk_scale,  # softmax scale times log2(e): scores are kept in base 2 and exponentiated with exp2
    stride_qb, stride_qh, stride_qn, stride_qd,  # strides of q, in elements
    stride_kb, stride_kh, stride_kn, stride_kd,  # strides of k, in elements
    stride_vb, stride_vh, stride_vn, stride_vd,  # strides of v, in elements
    num_heads,  # H: program axis 1 runs over the B * H (batch, head) pairs
    n_q,  # number of query positions
    n_k,  # number of key/value positions, at least 1
    HEAD_DIM: tl.constexpr,  # D, the head dimension
    HEAD_DIM_PAD: tl.constexpr,  # D rounded up to a power of two >= 16; the padding columns load as zeros
    EVEN_N: tl.constexpr,  # n_k % BLOCK_N == 0, so no score needs masking
    INPUT_PRECISION: tl.constexpr,  # "ieee" keeps float32 products exact (no TF32); 16-bit inputs ignore it
    BLOCK_M: tl.constexpr,  # query rows per program
    BLOCK_N: tl.constexpr,  # keys per iteration of the inner loop
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    batch = (pid_bh // num_heads).to(tl.int64)
    head = (pid_bh % num_heads).to(tl.int64)
    q_base = q_ptr + batch * stride_qb + head * stride_qh
    k_base = k_ptr + batch * stride_kb + head * stride_kh
    v_base = v_ptr + batch * stride_vb + head * stride_vh

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, HEAD_DIM_PAD)
    keys = tl.arange(0, BLOCK_N)
    row_ok = rows < n_q
    dim_ok = dims < HEAD_DIM

    q = tl.load(
        q_base + rows[:, None] * stride_qn + dims[None, :] * stride_qd,
        mask=row_ok[:, None] & dim_ok[None, :],
        other=0.0,
    )
    # Running row maximum (base-2 units), row sum of exponentials, and unnormalised output.
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, HEAD_DIM_PAD), tl.float32)

    for start_n in range(0, n_k, BLOCK_N):
        key_rows = start_n + keys
        key_ok = key_rows < n_k
        # K is loaded transposed, (HEAD_DIM_PAD, BLOCK_N), so the product below is Q K^T.
        k_t = tl.load(
            k_base + key_rows[None, :] * stride_kn + dims[:, None] * stride_kd,
            mask=key_ok[None, :] & dim_ok[:, None],
            other=0.0,
        )
        scores = tl.dot(q, k_t, input_precision=INPUT_PRECISION) * qk_scale
        if not EVEN_N:
            scores = tl.where(key_ok[None, :], scores, float("-inf"))
        # Every block holds at least one real key, so m_new is finite and exp2(-inf - m_new) = 0.
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        p = tl.math.exp2(scores - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(
            v_base + key_rows[:, None] * stride_vn + dims[None, :] * stride_vd,
            mask=key_ok[:, None] & dim_ok[None, :],
            other=0.0,
        )
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=INPUT_PRECISION)
        m_i = m_new

    acc = acc / l_i[:, None]
    lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453  # back to natural log
    out_base = out_ptr + pid_bh.to(tl.int64) * n_q * HEAD_DIM
    tl.store(
        out_base + rows[:, None] * HEAD_DIM + dims[None, :],
        acc.to(out_ptr.dtype.element_ty),
        mask=row_ok[:, None] & dim_ok[None, :],
    )
    tl.store(lse_ptr + pid_bh.to(tl.int64) * n_q + rows, lse, mask=row_ok)


def _autotune_configs() -> list:
    shapes = [  # (BLOCK_M, BLOCK_N, num_warps, num_stages)
        (128, 128, 8, 3),
        (128, 64, 8, 3),
        (128, 64, 4, 3),
        (128, 32, 4, 4),
        (64, 64, 4, 3),
        (64, 64, 4, 4),
        (64, 128, 4, 2),
        (64, 32, 4, 1),  # small enough for D = 256 in float32; never pruned
    ]
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=warps, num_stages=stages)
        for m, n, warps, stages in shapes
    ]


def _prune_configs(configs: list, named_args: dict, **kwargs) -> list:
    """Drop configurations whose tiles cannot fit in shared memory (about 200 KB on an H100)."""
    head_dim = kwargs["HEAD_DIM_PAD"]
    itemsize = named_args["q_ptr"].element_size()
    budget = 200 * 1024

    def shared_bytes(config) -> int:
        block_m, block_n = config.kwargs["BLOCK_M"], config.kwargs["BLOCK_N"]
        stages = max(config.num_stages, 1)
        return (block_m + 2 * stages * block_n) * head_dim * itemsize

    kept = [c for c in configs if shared_bytes(c) <= budget]
    return kept or [min(configs, key=shared_bytes)]


_tuned_kernel = None


def _gpu_kernel():
    """The autotuned kernel for GPUs, built on first use."""
    global _tuned_kernel
    if _tuned_kernel is None:
        with_even_n = triton.heuristics({"EVEN_N": lambda args: args["n_k"] % args["BLOCK_N"] == 0})(
            _attention_fwd_kernel.jitted()
        )
        _tuned_kernel = triton.autotune(
            configs=_autotune_configs(),
            key=["n_q", "n_k", "HEAD_DIM_PAD"],
            prune_configs_by={"early_config_prune": _prune_configs},
        )(with_even_n)
    return _tuned_kernel


def _padded_head_dim(head_dim: int) -> int:
    # tl.dot needs every dimension to be a power of two of at least 16.
    return max(16, triton.next_power_of_2(head_dim))


def _attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
    """Launch the kernel: (out, lse) with out like q (contiguous) and lse float32 (B, H, n_q)."""
    require_triton(q.device, "attention")
    if q.dtype not in _KERNEL_DTYPES:
        raise TypeError(f"attention: the Triton kernel takes float16, bfloat16 or float32 q, got {q.dtype}")
    batch, heads, n_q, head_dim = q.shape
    n_k = k.shape[2]
    out = torch.empty((batch, heads, n_q, head_dim), dtype=q.dtype, device=q.device)
    lse = torch.empty((batch, heads, n_q), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    args = (
        q, k, v, out, lse, scale * _LOG2E,
        *q.stride(), *k.stride(), *v.stride(),
        heads, n_q, n_k,
    )
    constants = dict(
        HEAD_DIM=head_dim,
        HEAD_DIM_PAD=_padded_head_dim(head_dim),
        INPUT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )
    if interpreting():
        grid = (triton.cdiv(n_q, _INTERPRETER_BLOCK_M), batch * heads)
        _attention_fwd_kernel.jitted()[grid](
            *args,
            **constants,
            EVEN_N=n_k % _INTERPRETER_BLOCK_N == 0,
            BLOCK_M=_INTERPRETER_BLOCK_M,
            BLOCK_N=_INTERPRETER_BLOCK_N,
        )
    else:

        def grid(meta):
            return (triton.cdiv(n_q, meta["BLOCK_M"]), batch * heads)

        with torch.cuda.device(q.device):
            _gpu_kernel()[grid](*args, **constants)
    return out, lse


# ----------------------------------------------------------------------------------------------------
# Reference, autograd wrapper, public function
# ----------------------------------------------------------------------------------------------------


def attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure-PyTorch oracle: ``softmax(q k^T * scale) v`` written out, and the row log-sum-exp.

    Computed in float32 (float64 for float64 inputs) from the inputs as given. Differentiable.

    Returns:
        ``(out, lse)``: out of shape (B, H, n_q, D) in q's dtype; lse of shape (B, H, n_q) in the compute
        dtype, ``lse = logsumexp(q k^T * scale, dim=-1)``.
    """
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q.to(compute), k.to(compute).transpose(-1, -2)) * scale
    probabilities = torch.softmax(scores, dim=-1)
    out = torch.matmul(probabilities, v.to(compute))
    return out.to(q.dtype), torch.logsumexp(scores, dim=-1)


class TritonAttentionFunction(torch.autograd.Function):
    """Attention with the Triton forward and a backward that recomputes the PyTorch reference.

    The backward is not fused: it rebuilds the N x N scores with `attention_reference` in float32 and
    differentiates them (memory O(N^2) per head). ``apply(q, k, v, scale)`` returns ``(out, lse)``; lse is
    not differentiable.
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
        out, lse = _attention_triton(q, k, v, scale)
        ctx.save_for_backward(q, k, v)
        ctx.scale = scale
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor, grad_lse: torch.Tensor | None):
        q, k, v = ctx.saved_tensors
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_(need) for t, need in zip((q, k, v), ctx.needs_input_grad[:3])]
            out, _ = attention_reference(*inputs, scale=ctx.scale)
            wanted = [t for t in inputs if t.requires_grad]
            grads = iter(torch.autograd.grad(out, wanted, grad_out))
        return (*(next(grads) if t.requires_grad else None for t in inputs), None)


def _check(q: object, k: object, v: object, scale: object) -> float:
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() != 4:
            raise ValueError(f"{name} must be 4-D (B, H, N, D), got shape {tuple(tensor.shape)}")
        if tensor.dtype not in _DTYPES:
            raise TypeError(f"{name} has dtype {tensor.dtype}; supported: {_DTYPE_NAMES}")
    for name, tensor in (("k", k), ("v", v)):
        if tensor.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {tensor.dtype} but q has {q.dtype}")
        if tensor.device != q.device:
            raise ValueError(f"{name} is on {tensor.device} but q is on {q.device}")
        if tensor.shape[:2] != q.shape[:2]:
            raise ValueError(
                f"{name} has (B, H) = {tuple(tensor.shape[:2])} but q has {tuple(q.shape[:2])}"
            )
        if tensor.shape[3] != q.shape[3]:
            raise ValueError(f"{name} has head dim {tensor.shape[3]} but q has {q.shape[3]}")
    if v.shape[2] != k.shape[2]:
        raise ValueError(f"v has {v.shape[2]} positions but k has {k.shape[2]}")
    head_dim = q.shape[3]
    if not 1 <= head_dim <= HEAD_DIM_MAX:
        raise ValueError(f"head dim D = {head_dim} is not supported: need 1 <= D <= {HEAD_DIM_MAX}")
    if k.shape[2] == 0 and q.shape[2] > 0:
        raise ValueError("k and v need at least one position (softmax over no keys is undefined)")
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return float(scale)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float | None = None,
    backend: str = "auto",
    *,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Non-causal multi-head attention ``softmax(q k^T * scale) v`` over (B, H, N, D) tensors.

    FlashAttention-2 forward (Dao 2023) in Triton, with fp32 accumulation; see the module docstring.

    Args:
        q: queries (B, H, n_q, D); float16, bfloat16 or float32 for the Triton kernel (float64 for the
            torch backends); any strides. 1 <= D <= 256; D that is not a power of two is padded (masked).
        k: keys (B, H, n_k, D), same dtype and device; n_k may differ from n_q.
        v: values (B, H, n_k, D).
        scale: multiplies the scores; default 1/sqrt(D).
        backend: ``"triton"``: the kernel (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``),
            differentiable through `TritonAttentionFunction` (reference-recompute backward).
            ``"torch"``: `attention_reference`. ``"auto"``: the kernel for CUDA tensors when Triton is
            installed, the dtype is one it takes and no gradient is needed (sampling); otherwise
            ``torch.nn.functional.scaled_dot_product_attention``, whose backward is fused.
        return_lse: also return the log-sum-exp of each row of scaled scores, (B, H, n_q), float32 (float64
            for the torch backend on float64 inputs). Where "auto" would pick SDPA, which does not expose
            it, the reference runs instead.

    Returns:
        out (B, H, n_q, D) in q's dtype, or ``(out, lse)`` when ``return_lse``.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    scale = _check(q, k, v, scale)
    if backend == "auto":
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        use_triton = (
            q.device.type == "cuda" and triton_available() and q.dtype in _KERNEL_DTYPES and not needs_grad
        )
        if use_triton:
            backend = "triton"
        elif return_lse:
            backend = "torch"
        else:
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
    if backend == "triton":
        out, lse = TritonAttentionFunction.apply(q, k, v, scale)
    else:
        out, lse = attention_reference(q, k, v, scale)
    return (out, lse) if return_lse else out


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the pixels of a UNet feature map (B, C, H, W), with a residual.

    GroupNorm, a 1x1 convolution to queries, keys and values, `attention` over the H*W positions of
    each head, a 1x1 output projection, and ``x + projection``: the attention block of the DDPM and
    improved-DDPM UNets (Ho et al. 2020; Nichol & Dhariwal 2021).

    Args:
        channels: C; divisible by ``num_heads`` and ``num_groups``.
        num_heads: attention heads; head dim C / num_heads must be at most 256.
        num_groups: GroupNorm groups.
        eps: GroupNorm epsilon.
        backend: passed to `attention`.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_groups: int = 32,
        eps: float = 1e-5,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}")
        if num_heads < 1 or channels % num_heads:
            raise ValueError(f"num_heads = {num_heads} must be positive and divide channels = {channels}")
        if not 1 <= channels // num_heads <= HEAD_DIM_MAX:
            head_dim = channels // num_heads
            raise ValueError(f"head dim channels / num_heads = {head_dim} exceeds {HEAD_DIM_MAX}")
        if num_groups < 1 or channels % num_groups:
            raise ValueError(f"num_groups = {num_groups} must be positive and divide channels = {channels}")
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        self.channels = channels
        self.num_heads = num_heads
        self.backend = backend
        self.norm = nn.GroupNorm(num_groups, channels, eps=eps)
        self.qkv = nn.Conv2d(channels, 3 * channels, kernel_size=1)
        self.proj = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"x must be (B, {self.channels}, H, W), got shape {tuple(x.shape)}")
        batch, channels, height, width = x.shape
        head_dim = channels // self.num_heads
        qkv = self.qkv(self.norm(x)).reshape(batch, 3, self.num_heads, head_dim, height * width)
        # (B, heads, H*W, head_dim) views; the kernel reads the strides, so no copy is made.
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))
        out = attention(q, k, v, backend=self.backend)
        out = out.transpose(-1, -2).reshape(batch, channels, height, width)
        return x + self.proj(out)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_heads={self.num_heads}, backend={self.backend!r}"
