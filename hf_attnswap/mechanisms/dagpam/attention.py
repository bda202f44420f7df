"""daGPAM: dual-attention generalized probabilistic attention (arXiv 2410.15578; SCIENCE.md, "daGPAM").

``P = (1+λ⁺) softmax(Q⁺Kᵀ·s) - λ⁻ softmax(Q⁻Kᵀ·s)`` with ``Q⁻ = ReLU(Q⁺) W⁻`` and, tied (default),
``λ⁺ = λ⁻ = λ`` so every row sums to 1. On rotary models ``Q⁻`` is computed from the query *before*
rotation, then rotated with the same position embedding (in the model's layout: rotate_half or interleaved pairs,
partial rotary; ``kernels/rope.py``). Keys and values are shared by both branches.

Model arguments (``ctx.extra``): ``softcap`` caps each branch's scaled scores before its softmax; attention sinks
(``s_aux``/``sinks``) join the denominator of each branch's softmax (the same logit in both) and take no value, so a
row of ``P`` then sums to ``(1+λ⁺)(1-σ⁺) - λ⁻(1-σ⁻)`` with ``σ^±`` the sink's share of each branch; at λ = 0 that is the
model's own attention (docs/softcap_and_sinks.md).
"""

from __future__ import annotations

import torch

from ...kernels import dagpam_cpu
from ...kernels.mask import AttentionMask
from ...kernels.rope import apply_rope, layout_of, unapply_rope
from ...kernels.sdpa import sdpa
from ...transformers_hooks import cpu_flash_attention, has_forward_hooks
from ..common import AttentionContext, attention_dropout, attention_sinks, score_softcap
from ..softmax.attention import softmax_weights
from .parameters import DaGPAMParameters


def negative_query(query: torch.Tensor, ctx: AttentionContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``Q⁻`` in the same (rotated) frame as ``query``, and ``(λ⁺, λ⁻)``. query: (B, H, Q, d)."""
    if ctx.params is None:
        raise RuntimeError("dagpam attention called without its parameters")  # guarded earlier by the registry
    if ctx.rope is None:
        return ctx.params(query)
    (cos, sin), layout = ctx.rope, layout_of(ctx.rope)
    neg, lam_pos, lam_neg = ctx.params(unapply_rope(query, cos, sin, layout))
    return apply_rope(neg, cos, sin, layout), lam_pos, lam_neg


def dagpam_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor, ctx: AttentionContext
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference daGPAM: materialises the signed combined matrix ``P``.

    query: (B, H, Q, d) (rotated, as the model passes it); key, value: (B, H, K, d); mask: (B|1, 1, Q, K).
    Returns ``(output (B, H, Q, d), P (B, H, Q, K))``.
    """
    neg_query, lam_pos, lam_neg = negative_query(query, ctx)
    softcap, sinks = score_softcap(ctx), attention_sinks(ctx, query)
    pos = softmax_weights(query, key, mask, ctx.scaling, softcap=softcap, sinks=sinks)
    neg = softmax_weights(neg_query, key, mask, ctx.scaling, softcap=softcap, sinks=sinks)
    lam_pos = lam_pos.to(pos.dtype).view(1, -1, 1, 1)
    lam_neg = lam_neg.to(pos.dtype).view(1, -1, 1, 1)
    weights = ((1 + lam_pos) * pos - lam_neg * neg).to(value.dtype)
    out = torch.matmul(attention_dropout(weights, ctx.dropout), value)
    return out, weights


def dagpam_attention_fused(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: AttentionMask, ctx: AttentionContext
) -> torch.Tensor:
    """Fused daGPAM: ``(1+λ⁺)·sdpa(Q⁺,K,V) − λ⁻·sdpa(Q⁻,K,V)``, two fused softmax calls, no n×n matrix.

    query: (B, H, Q, d); key, value: (B, H_kv, K, d) (not repeated). Returns (B, H, Q, d). With dropout,
    each branch gets its own dropout mask (the reference drops entries of the combined ``P``); both keep
    the expected output. Attention sinks run as one extra key in each SDPA call; a ``softcap`` is refused by
    :func:`dagpam_fused_supports` (SDPA cannot cap its scores), so ``backend="auto"`` takes the reference.

    On CPU (fp32/fp64, no attention dropout, not under ``torch.compile``, plain ``DaGPAMParameters``) the same
    computation runs as one autograd function over the flash CPU kernels (``kernels/dagpam_cpu.py``), which
    recomputes ``Q⁻`` and works head-chunk by head-chunk: about half the peak memory of this autograd path.
    """
    if cpu_kernel_reason(query, key, value, mask, ctx) is None:
        lam_pos, lam_neg = ctx.params.lambdas()
        return dagpam_cpu.dagpam_attention_cpu(query, key, value, ctx.params.neg_query_weight, lam_pos, lam_neg, mask,
                                               ctx.scaling, ctx.rope, flash=cpu_flash_attention())
    neg_query, lam_pos, lam_neg = negative_query(query, ctx)
    sinks = attention_sinks(ctx, query)
    pos = sdpa(query, key, value, mask, ctx.scaling, ctx.dropout, sinks=sinks)
    neg = sdpa(neg_query, key, value, mask, ctx.scaling, ctx.dropout, sinks=sinks)
    if lam_pos is lam_neg:  # tied: (1+λ)·pos − λ·neg = lerp(pos, neg, −λ), one pass
        return torch.lerp(pos, neg, -lam_neg.to(pos.dtype).view(1, -1, 1, 1))
    lam_pos = lam_pos.to(pos.dtype).view(1, -1, 1, 1)
    lam_neg = lam_neg.to(pos.dtype).view(1, -1, 1, 1)
    return torch.addcmul(pos + lam_pos * pos, lam_neg, neg, value=-1.0)


def cpu_kernel_reason(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: AttentionMask,
                      ctx: AttentionContext) -> str | None:
    """Why :func:`dagpam_attention_fused` cannot use the low-memory CPU kernel for this call (``None``: it can).

    The kernel reads ``W⁻`` and λ directly, so it needs the plain parameter module: a wrapped one (PEFT's
    ``modules_to_save``), a subclass with its own ``forward``/``lambdas``, or forward hooks on it take the
    autograd path, which goes through the module's ``forward``.
    """
    if torch.compiler.is_compiling():  # checked first: nothing below needs tracing
        return "under torch.compile"
    if attention_sinks(ctx, query) is not None:
        return "attention sinks (the CPU kernel has no sink column)"
    params = ctx.params
    if not isinstance(params, DaGPAMParameters):
        return "parameters are not a plain DaGPAMParameters (e.g. wrapped by PEFT)"
    if type(params).forward is not DaGPAMParameters.forward or type(params).lambdas is not DaGPAMParameters.lambdas:
        return "DaGPAMParameters subclass with its own forward/lambdas"
    if has_forward_hooks(params):
        return "forward hooks on the parameter module"
    return dagpam_cpu.unsupported_reason(query, key, value, mask, ctx.dropout, ctx.rope)


def dagpam_fused_supports(query: torch.Tensor, mask: AttentionMask, ctx: AttentionContext) -> str | None:
    """Why :func:`dagpam_attention_fused` cannot run this call (None: it can): SDPA cannot apply a ``softcap``."""
    if score_softcap(ctx) is not None:
        return "scaled_dot_product_attention cannot apply the model's softcap (tanh) to its scores"
    return None
