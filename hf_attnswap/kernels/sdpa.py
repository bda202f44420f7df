"""Fused softmax attention through PyTorch's ``scaled_dot_product_attention`` (FlashAttention on CUDA,
the flash CPU kernel on CPU), without repeating K/V for grouped-query attention, with optional attention sinks."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .mask import AttentionMask


def sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: AttentionMask, scale: float, dropout: float = 0.0,
         sinks: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax(scale · q kᵀ) v`` over visible keys.

    query: (B, H, Q, d); key: (B, H_kv, K, d); value: (B, H_kv, K, d_v) with ``H % H_kv == 0``. Returns (B, H, Q, d_v).
    A query that sees no key gets 0.

    ``sinks``: attention-sink logits (B|1, H, Q|1, 1) in the units of ``scale · q·k``, or None. Each joins its row's
    softmax denominator and takes no value: ``a_ij = exp(s_ij) / (exp(sink_i) + Σ_j exp(s_ij))``. It runs as one more
    key, always visible, with a zero value (:func:`with_sink_key`).
    """
    head_dim = value.shape[-1]
    if sinks is not None:
        query, key, value, mask = with_sink_key(query, key, value, mask, sinks, scale)
    attn_mask, is_causal = mask.sdpa_args()
    gqa = query.shape[1] != key.shape[1]
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=attn_mask, dropout_p=dropout, is_causal=is_causal, scale=scale, enable_gqa=gqa
    )
    return out if sinks is None else out[..., :head_dim]


def with_sink_key(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: AttentionMask, sinks: torch.Tensor,
                  scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, AttentionMask]:
    """Inputs for plain SDPA that compute attention with sinks, exactly: one extra feature and one extra key.

    Features are zero-padded to ``D`` (``max(d, d_v) + 1`` rounded up to a multiple of 8, so fused kernels still take
    them). The query's feature ``d`` holds ``sink / scale`` (per query head, so grouped-query K/V need no repeat);
    key 0 is new, with feature ``d`` equal to 1 and every other 0, so its score is ``scale · sink / scale = sink``; its
    value is 0, and every query sees it (the mask gets a visible column 0, which shifts a causal offset by 1).
    query (B, H, Q, d), key (B, H_kv, K, d), value (B, H_kv, K, d_v), sinks (B|1, H, Q|1, 1). Returns query
    (B, H, Q, D), key (B, H_kv, K+1, D), value (B, H_kv, K+1, D) and the mask for Q x (K+1).
    """
    batch, heads, q_len, dim = query.shape
    kv_batch, kv_heads, k_len, _ = key.shape
    width = -(-(max(dim, value.shape[-1]) + 1) // 8) * 8
    sink_col = (sinks.to(query.dtype) / scale).expand(batch, heads, q_len, 1)
    q = torch.cat([query, sink_col, query.new_zeros(batch, heads, q_len, width - dim - 1)], dim=-1)
    sink_key = key.new_zeros(kv_batch, kv_heads, 1, width)
    sink_key[..., dim] = 1
    k = torch.cat([sink_key, F.pad(key, (0, width - dim))], dim=-2)
    v = F.pad(value, (0, width - value.shape[-1], 1, 0))
    visible = mask.block(0, q_len, 0, k_len, query.device)
    if visible is not None:
        visible = torch.cat([visible.new_ones(*visible.shape[:-1], 1), visible], dim=-1)
    return q, k, v, AttentionMask(visible, q_len, k_len + 1)
