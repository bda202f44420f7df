"""softmax: the reference attention, with a temperature (SCIENCE.md, "softmax")."""

from __future__ import annotations

import torch

from ...kernels.mask import AttentionMask
from ...kernels.sdpa import sdpa
from ..common import AttentionContext, attention_dropout, masked_softmax


def softmax_weights(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """``softmax_j(scale * q_i·k_j)`` over visible keys, in float32.

    query: (B, H, Q, d); key: (B, H, K, d); mask: (B|1, 1, Q, K) bool. Returns (B, H, Q, K).
    """
    return masked_softmax(torch.matmul(query, key.transpose(-1, -2)) * scale, mask)


def softmax_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, ctx: AttentionContext
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference softmax attention with temperature ``T``: ``a = softmax(s / T)``.

    query: (B, H, Q, d); key, value: (B, H, K, d) (K/V heads already repeated); mask: (B|1, 1, Q, K) bool.
    Returns ``(output (B, H, Q, d), weights (B, H, Q, K))``.
    """
    weights = softmax_weights(query, key, mask, ctx.scaling / ctx.options.temperature).to(value.dtype)
    out = torch.matmul(attention_dropout(weights, ctx.dropout), value)
    return out, weights


def softmax_attention_fused(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: AttentionMask, ctx: AttentionContext
) -> torch.Tensor:
    """Fused softmax with temperature: SDPA with scale ``scaling / T``; no n×n matrix, no K/V repeat.

    query: (B, H, Q, d); key, value: (B, H_kv, K, d). Returns (B, H, Q, d).
    """
    return sdpa(query, key, value, mask, ctx.scaling / ctx.options.temperature, ctx.dropout)
