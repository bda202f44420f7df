"""polynomial: ``a_ij = c_i * s_ij**p`` on visible keys, exactly 0 elsewhere (arXiv 2410.18613; SCIENCE.md)."""

from __future__ import annotations

import math

import torch

from ..options import PolynomialOptions
from ..kernels.mask import AttentionMask
from ..kernels.polynomial_blocked import polynomial_attention_blocked
from .common import AttentionContext, attention_dropout, compute_dtype


def polynomial_weights(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor, scale: float, options: PolynomialOptions) -> torch.Tensor:
    """Unnormalised weights ``c_i * (scale * q_i·k_j)**p`` with a multiplicative mask, in float32.

    query: (B, H, Q, d); key: (B, H, K, d); mask: (B|1, 1, Q, K) bool. Returns (B, H, Q, K).
    Computed in float32 for half-precision inputs, so that they cannot overflow here.
    """
    dtype = compute_dtype(query.dtype)
    scores = torch.matmul(query.to(dtype), key.to(dtype).transpose(-1, -2)) * scale
    c = length_scale_vector(AttentionMask(mask, mask.shape[-2], mask.shape[-1]), options, mask.device)
    return scores.pow(options.degree) * mask * c.to(scores.dtype)


def polynomial_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, ctx: AttentionContext
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference polynomial attention. Rows are not normalised and weights may be negative (odd ``p``).

    query: (B, H, Q, d); key, value: (B, H, K, d); mask: (B|1, 1, Q, K) bool.
    Returns ``(output (B, H, Q, d), weights (B, H, Q, K))``. In float16/bfloat16 the product with V is
    done in float32; if the result does not fit the input dtype an ``OverflowError`` says so, rather than
    returning infinities.
    """
    weights = polynomial_weights(query, key, mask, ctx.scaling, ctx.options)
    out = torch.matmul(attention_dropout(weights, ctx.dropout), value.to(weights.dtype))
    return _checked_cast(out, value.dtype, ctx.options), weights.to(value.dtype)


def _checked_cast(out: torch.Tensor, dtype: torch.dtype, options: PolynomialOptions) -> torch.Tensor:
    """Cast a float32 result back to a half dtype, raising rather than returning infinities."""
    if dtype in (torch.float16, torch.bfloat16):
        if not bool(torch.isfinite(out).all()) or bool(out.abs().max() > torch.finfo(dtype).max):
            raise OverflowError(
                f"polynomial attention (degree {options.degree}) produced values beyond the range of "
                f"{dtype}. Run this model in float32 (or bfloat16, whose range is wider than float16), "
                "or keep length_scale='visible' so the weights stay O(1/sqrt(N))."
            )
    return out.to(dtype)


def length_scale_vector(mask: AttentionMask, options: PolynomialOptions, device: torch.device) -> torch.Tensor:
    """The per-query factor ``c_i`` as a float32 tensor (B|1, 1, Q, 1).

    ``"visible"``: ``1/sqrt(N_i)`` with ``N_i`` the number of keys query i sees (a query that sees none, a
    padding query, gets ``N_i = 1``; its weights are all 0 anyway); ``"fixed"``: ``1/sqrt(fixed_length)``;
    ``"none"``: 1.
    """
    if options.length_scale == "visible":
        return mask.visible_counts(device).rsqrt()
    value = 1.0 / math.sqrt(options.fixed_length) if options.length_scale == "fixed" else 1.0
    return torch.full((1, 1, mask.q_len, 1), value, device=device)


def polynomial_attention_fused(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: AttentionMask, ctx: AttentionContext
) -> torch.Tensor:
    """Blocked polynomial attention (O(n·block) memory, causal blocks skipped), CPU and CUDA.

    query: (B, H, Q, d); key, value: (B, H_kv, K, d). Returns (B, H, Q, d). Half-precision inputs are
    computed in float32. Attention dropout drops entries of the weights, as the reference does.
    """
    dtype = compute_dtype(query.dtype)
    c = length_scale_vector(mask, ctx.options, query.device)
    out = polynomial_attention_blocked(
        query.to(dtype), key.to(dtype), value.to(dtype), mask, c, ctx.scaling, ctx.options.degree, dropout=ctx.dropout
    )
    return _checked_cast(out, query.dtype, ctx.options)


def polynomial_triton_supports(query: torch.Tensor, ctx: AttentionContext) -> str | None:
    """Why the Triton kernel cannot run this call, or None."""
    try:
        from ..kernels.polynomial_triton import available_for
    except ImportError:
        return "Triton is not installed (pip install triton)"
    head_dim = query.shape[-1]
    if head_dim < 16 or head_dim & (head_dim - 1):
        return f"head size {head_dim} is not a power of two >= 16"
    if ctx.dropout > 0:
        return "attention dropout is not implemented in the Triton kernel"
    return available_for(query)


def polynomial_attention_triton(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: AttentionMask, ctx: AttentionContext
) -> torch.Tensor:
    """Polynomial attention with the Triton kernels (CUDA; CPU under ``TRITON_INTERPRET=1``), float32 accumulation.

    query: (B, H, Q, d); key, value: (B, H_kv, K, d). Returns (B, H, Q, d).
    """
    from ..kernels.polynomial_triton import polynomial_attention_triton as kernel

    c = length_scale_vector(mask, ctx.options, query.device)
    out = kernel(query, key, value, mask, c, ctx.scaling, ctx.options.degree)
    return _checked_cast(out.float(), query.dtype, ctx.options)
