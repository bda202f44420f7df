"""softmax: the reference attention, with a temperature (SCIENCE.md, "softmax").

Model arguments (``ctx.extra``): ``softcap`` caps the scaled scores before the temperature,
``a = softmax(softcap·tanh(s/softcap) / T)``; attention sinks (``s_aux``/``sinks``) join each row's softmax as one
more logit, divided by ``T`` like the others, and take no value (docs/softcap_and_sinks.md).
"""

from __future__ import annotations

import torch

from ...kernels.mask import AttentionMask
from ...kernels.sdpa import sdpa
from ..common import AttentionContext, apply_softcap, attention_dropout, attention_sinks, masked_softmax, score_softcap


def softmax_weights(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor, scale: float, *,
                    softcap: float | None = None, sinks: torch.Tensor | None = None,
                    temperature: float = 1.0) -> torch.Tensor:
    """``softmax_j(cap(scale · q_i·k_j) / temperature)`` over visible keys, in float32, with optional sinks.

    query: (B, H, Q, d); key: (B, H, K, d); mask: (B|1, 1, Q, K) bool; ``softcap``: ``cap(s) = softcap·tanh(s/softcap)``
    (None: ``cap(s) = s``); ``sinks``: (B|1, H, Q|1, 1) sink logits, divided by ``temperature`` too, that join each
    row's denominator and are dropped (None: none). Returns (B, H, Q, K).
    """
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    if softcap is not None:
        scores = apply_softcap(scores.to(torch.promote_types(scores.dtype, torch.float32)), softcap)
    if temperature != 1.0:
        scores = scores / temperature
        sinks = None if sinks is None else sinks / temperature
    return masked_softmax(scores, mask, sinks)


def softmax_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, ctx: AttentionContext
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference softmax attention with temperature ``T``: ``a = softmax(cap(s) / T)``, with the model's sinks if any.

    query: (B, H, Q, d); key, value: (B, H, K, d) (K/V heads already repeated); mask: (B|1, 1, Q, K) bool.
    Returns ``(output (B, H, Q, d), weights (B, H, Q, K))`` (with sinks, rows sum to less than 1).
    """
    weights = softmax_weights(query, key, mask, ctx.scaling, softcap=score_softcap(ctx), sinks=attention_sinks(ctx, query),
                              temperature=ctx.options.temperature).to(value.dtype)
    out = torch.matmul(attention_dropout(weights, ctx.dropout), value)
    return out, weights


def softmax_fused_supports(query: torch.Tensor, mask: AttentionMask, ctx: AttentionContext) -> str | None:
    """Why :func:`softmax_attention_fused` cannot run this call (None: it can): SDPA cannot apply a ``softcap``."""
    if score_softcap(ctx) is not None:
        return "scaled_dot_product_attention cannot apply the model's softcap (tanh) to its scores"
    return None


def softmax_attention_fused(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: AttentionMask, ctx: AttentionContext
) -> torch.Tensor:
    """Fused softmax with temperature: SDPA with scale ``scaling / T``; no n×n matrix, no K/V repeat. Sinks run as
    one extra key (see :func:`~hf_attnswap.kernels.sdpa.sdpa`); a ``softcap`` is refused by its predicate.

    query: (B, H, Q, d); key, value: (B, H_kv, K, d). Returns (B, H, Q, d).
    """
    temperature = ctx.options.temperature
    sinks = attention_sinks(ctx, query)
    if sinks is not None and temperature != 1.0:
        sinks = sinks / temperature
    return sdpa(query, key, value, mask, ctx.scaling / temperature, ctx.dropout, sinks=sinks)
