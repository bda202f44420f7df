"""Tensor helpers shared by the mechanisms. Nothing here knows about Transformers models.

Shapes: ``B`` batch, ``H`` query heads, ``Q`` query length, ``K`` key length, ``d`` head size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import UnsupportedModelError


@dataclass
class AttentionContext:
    """What a mechanism needs besides ``query, key, value, mask``.

    - ``scaling``: the factor the model puts on ``q·k`` (GPT-2: ``1/sqrt(d)``, maybe ``/(layer+1)``; Llama: ``1/sqrt(d)``).
    - ``dropout``: attention-dropout probability (0 in eval).
    - ``options``: the mechanism's validated options dataclass.
    - ``params``: the mechanism's parameter module on this layer (or ``None`` if it has none).
    - ``rope``: ``(cos, sin)`` of shape ``(B, Q, d)`` for rotary models, else ``None``: a
      :class:`~hf_attnswap.kernels.rope.Rotary` pair, full head width, whose ``.layout`` says how the dims pair up
      (``rotate_half`` or interleaved, partial rotary); a plain tuple means full ``rotate_half``. Use
      :func:`~hf_attnswap.kernels.rope.unapply_rope`/``apply_rope`` with that layout.
    - ``module``: the attention module that called us (for user mechanisms that need more).
    - ``extra``: every other keyword the model passed to the attention function (``softcap``, ``s_aux``,
      ``sliding_window`` ...); :func:`score_softcap` and :func:`attention_sinks` read the ones that change the scores.
    - ``state``: the layer of a fixed-size *state cache* the keys came from (:func:`cache_state`), or ``None``. Then
      ``key``/``value`` hold only this call's tokens, earlier ones are in the state, and only the mechanism's
      ``state_backend`` can run the call (the registry routes it there).
    """

    scaling: float
    dropout: float = 0.0
    options: Any = None
    params: nn.Module | None = None
    rope: tuple[torch.Tensor, torch.Tensor] | None = None
    module: nn.Module | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    state: Any = None


_STATE_TAG = "_attnswap_cache_state"


def tag_cache_state(key: torch.Tensor, layer: Any) -> torch.Tensor:
    """Mark ``key`` (B, H_kv, n, d), returned by a state cache layer's ``update``, as coming from ``layer``: the
    attention function then reads ``layer`` back with :func:`cache_state` (the model hands the tensor ``update``
    returned to the attention function as the same Python object, and a tensor takes Python attributes). Returns ``key``."""
    setattr(key, _STATE_TAG, layer)
    return key


def cache_state(key: torch.Tensor) -> Any:
    """The state cache layer :func:`tag_cache_state` marked ``key`` with, or None (keys of an ordinary KV cache, or
    no cache)."""
    return getattr(key, _STATE_TAG, None)


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


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, sinks: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax_j`` over visible keys, in at least float32. ``scores``: (B, H, Q, K); ``mask``: (B|1, 1, Q, K).

    Hidden keys get exactly 0. A row with no visible key (a padding query) gets uniform weights, as in
    Transformers' eager attention, so that it stays finite; its output is never used.

    ``sinks``: attention-sink logits (B|1, H, Q|1, 1) (from :func:`attention_sinks`), or None. Each row's sink joins
    its denominator and is dropped from the result: ``a_ij = exp(s_ij) / (exp(sink) + Σ_visible exp(s_ij'))``, so the
    row sums to less than 1 (GPT-OSS's ``eager_attention_forward``). A row with no visible key then gets 0.
    """
    dtype = compute_dtype(scores.dtype)
    scores = scores.to(dtype).masked_fill(~mask, torch.finfo(dtype).min)
    if sinks is None:
        return torch.softmax(scores, dim=-1)  # exp(min - max) underflows to exactly 0 on hidden keys
    sinks = sinks.to(dtype).expand(*scores.shape[:-1], 1)
    return torch.softmax(torch.cat([scores, sinks], dim=-1), dim=-1)[..., :-1]


def apply_softcap(scores: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """``softcap · tanh(scores / softcap)`` (Gemma2's logit soft-capping), or ``scores`` unchanged if ``softcap`` is None.
    Any shape; applied to the scaled scores ``s = scaling · q·k``, before any mask."""
    if softcap is None:
        return scores
    return torch.tanh(scores / softcap) * softcap


def score_softcap(ctx: AttentionContext) -> float | None:
    """The ``softcap`` keyword the model passed (Gemma2's ``attn_logit_softcapping``), as a float, or None."""
    softcap = ctx.extra.get("softcap")
    if softcap is None:
        return None
    softcap = float(softcap)
    if not softcap > 0:
        raise UnsupportedModelError(f"the model passed softcap={softcap!r}; a logit soft-cap must be > 0 (or None for none).")
    return softcap


#: The keywords under which models pass attention-sink logits: GPT-OSS and others ``s_aux`` (per head, (H,)),
#: Inkling2 ``sinks`` (per head and query, (B, H, Q, 1)).
SINK_KEYWORDS = ("s_aux", "sinks")


def attention_sinks(ctx: AttentionContext, query: torch.Tensor) -> torch.Tensor | None:
    """The sink logits the model passed (``s_aux`` or ``sinks``) as a tensor (B|1, H, Q|1, 1), or None.

    query: (B, H, Q, d). Accepted shapes: (H,) (one learned logit per head, GPT-OSS), (B|1, H, Q|1) or
    (B|1, H, Q|1, 1) (per query). Raises :class:`UnsupportedModelError` for both keywords at once or another shape.
    """
    given = [(k, ctx.extra[k]) for k in SINK_KEYWORDS if ctx.extra.get(k) is not None]
    if not given:
        return None
    if len(given) > 1:
        raise UnsupportedModelError("the model passed both 's_aux' and 'sinks' to the attention function; hf_attnswap "
                                    "takes one set of attention-sink logits per call.")
    name, sinks = given[0]
    batch, heads, q_len, _ = query.shape
    sinks = torch.as_tensor(sinks, device=query.device)
    if sinks.dim() == 1:
        sinks = sinks.view(1, -1, 1, 1)
    elif sinks.dim() == 3:
        sinks = sinks.unsqueeze(-1)
    ok = sinks.dim() == 4 and sinks.shape[1] == heads and sinks.shape[0] in (1, batch) and sinks.shape[2] in (1, q_len) \
        and sinks.shape[3] == 1
    if not ok:
        raise UnsupportedModelError(
            f"the model passed {name!r} of shape {tuple(given[0][1].shape)} for a query of shape {tuple(query.shape)}; "
            f"hf_attnswap takes attention-sink logits of shape (H,) = ({heads},), (B, H, Q) or (B, H, Q, 1)."
        )
    return sinks


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Repeat key/value heads for grouped-query attention: (B, H_kv, K, d) -> (B, H_kv * n_rep, K, d)."""
    if n_rep == 1:
        return x
    b, h, k, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, k, d).reshape(b, h * n_rep, k, d)


def attention_dropout(weights: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout on attention weights; ``p=0`` is a no-op (the caller passes 0 in eval mode)."""
    return nn.functional.dropout(weights, p=p, training=True) if p > 0 else weights
