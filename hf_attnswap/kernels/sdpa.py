"""Fused softmax attention through PyTorch's ``scaled_dot_product_attention`` (FlashAttention on CUDA,
the flash CPU kernel on CPU), without repeating K/V for grouped-query attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .mask import AttentionMask


def sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: AttentionMask, scale: float, dropout: float = 0.0) -> torch.Tensor:
    """``softmax(scale · q kᵀ) v`` over visible keys.

    query: (B, H, Q, d); key, value: (B, H_kv, K, d) with ``H % H_kv == 0``. Returns (B, H, Q, d).
    A query that sees no key (a padding query) gets 0.
    """
    attn_mask, is_causal = mask.sdpa_args()
    gqa = query.shape[1] != key.shape[1]
    return F.scaled_dot_product_attention(
        query, key, value, attn_mask=attn_mask, dropout_p=dropout, is_causal=is_causal, scale=scale, enable_gqa=gqa
    )
