"""Tensor helpers shared by the mechanisms. Nothing here knows about Transformers models.

Shapes: ``B`` batch, ``H`` query heads, ``Q`` query length, ``K`` key length, ``d`` head size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class AttentionContext:
    """What a mechanism needs besides ``query, key, value, mask``.

    - ``scaling``: the factor the model puts on ``q·k`` (GPT-2: ``1/sqrt(d)``, maybe ``/(layer+1)``; Llama: ``1/sqrt(d)``).
    - ``dropout``: attention-dropout probability (0 in eval).
    - ``options``: the mechanism's validated options dataclass.
    - ``params``: the mechanism's parameter module on this layer (or ``None`` if it has none).
    - ``rope``: ``(cos, sin)`` of shape ``(B, Q, d)`` for rotary models, else ``None``.
    - ``module``: the attention module that called us (for user mechanisms that need more).
    """

    scaling: float
    dropout: float = 0.0
    options: Any = None
    params: nn.Module | None = None
    rope: tuple[torch.Tensor, torch.Tensor] | None = None
    module: nn.Module | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def visible_mask(
    attention_mask: torch.Tensor | None, batch: int, q_len: int, k_len: int, device: torch.device
) -> torch.Tensor:
    """Boolean visibility mask ``M`` of shape ``(B or 1, 1, Q, K)``: True where query i may see key j.

    ``attention_mask`` is what Transformers passes to an attention function: a boolean 4D mask (from
    hf_attnswap's mask function), an additive float 4D mask (0 = visible, very negative = hidden; e.g. one
    built by the user), or ``None`` (everything visible, i.e. bidirectional without padding).
    """
    if attention_mask is None:
        return torch.ones(1, 1, q_len, k_len, dtype=torch.bool, device=device)
    mask = attention_mask[:, :, :, :k_len]
    if mask.dtype != torch.bool:
        mask = mask > torch.finfo(mask.dtype).min / 2
    return mask


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision inputs, the input dtype otherwise (float64 stays float64 for gradcheck)."""
    return torch.promote_types(dtype, torch.float32)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``softmax_j`` over visible keys, in at least float32. ``scores``: (B, H, Q, K); ``mask``: (B|1, 1, Q, K).

    Hidden keys get exactly 0. A row with no visible key (a padding query) gets uniform weights, as in
    Transformers' eager attention, so that it stays finite; its output is never used.
    """
    dtype = compute_dtype(scores.dtype)
    scores = scores.to(dtype).masked_fill(~mask, torch.finfo(dtype).min)
    return torch.softmax(scores, dim=-1)  # exp(min - max) underflows to exactly 0 on hidden keys


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Repeat key/value heads for grouped-query attention: (B, H_kv, K, d) -> (B, H_kv * n_rep, K, d)."""
    if n_rep == 1:
        return x
    b, h, k, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, k, d).reshape(b, h * n_rep, k, d)


def attention_dropout(weights: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout on attention weights; ``p=0`` is a no-op (the caller passes 0 in eval mode)."""
    return nn.functional.dropout(weights, p=p, training=True) if p > 0 else weights
