"""polynomial: ``a_ij = c_i * s_ij**p`` on visible keys, exactly 0 elsewhere (arXiv 2410.18613; SCIENCE.md).

Model arguments (``ctx.extra``): ``softcap`` caps the scaled scores before the power, ``a_ij = c_i·(t·tanh(s_ij/t))^p``
(reference and ``fused``; ``triton`` and ``linear`` refuse it, so ``backend="auto"`` falls back). Attention sinks
(``s_aux``/``sinks``) are refused at registration: a sink is a logit in a softmax denominator, and polynomial
attention has no denominator to put it in (docs/softcap_and_sinks.md).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ...errors import OptionError
from ...kernels import polynomial_linear
from ...kernels.mask import AttentionMask
from ...kernels.polynomial_blocked import polynomial_attention_blocked
from ...kernels.polynomial_linear import PolynomialLinearState, polynomial_linear_step
from .options import PolynomialOptions, linear_degree_problem
from ..common import AttentionContext, apply_softcap, attention_dropout, compute_dtype, score_softcap


def polynomial_weights(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor, scale: float, options: PolynomialOptions,
                       softcap: float | None = None) -> torch.Tensor:
    """Unnormalised weights ``c_i * (cap(scale * q_i·k_j) + offset)**p`` with a multiplicative mask, in float32.

    query: (B, H, Q, d); key: (B, H, K, d); mask: (B|1, 1, Q, K) bool; ``cap(s) = softcap·tanh(s/softcap)`` (None:
    ``cap(s) = s``). Returns (B, H, Q, K). Computed in float32 for half-precision inputs, so that they cannot overflow
    here.
    """
    dtype = compute_dtype(query.dtype)
    scores = apply_softcap(torch.matmul(query.to(dtype), key.to(dtype).transpose(-1, -2)) * scale, softcap)
    if options.offset:
        scores = scores + options.offset
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
    weights = polynomial_weights(query, key, mask, ctx.scaling, ctx.options, score_softcap(ctx))
    out = torch.matmul(attention_dropout(weights, ctx.dropout), value.to(weights.dtype))
    return _checked_cast(out, value.dtype, ctx.options), weights.to(value.dtype)


def _checked_cast(out: torch.Tensor, dtype: torch.dtype, options: PolynomialOptions) -> torch.Tensor:
    """Cast a float32 result back to a half dtype, raising rather than returning infinities."""
    if dtype in (torch.float16, torch.bfloat16) and (
        not bool(torch.isfinite(out).all()) or bool(out.abs().max() > torch.finfo(dtype).max)
    ):
        raise OverflowError(
            f"polynomial attention (degree {options.degree}) produced values beyond the range of "
            f"{dtype}. Run this model in float32 (or bfloat16, whose range is wider than float16), "
            "or keep length_scale='visible' so the weights stay O(1/sqrt(N))."
        )
    return out.to(dtype)


def with_offset(query: torch.Tensor, key: torch.Tensor, scale: float, offset: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q̃, k̃)`` with ``scale·q̃_i·k̃_j = scale·q_i·k_j + offset``: ``q̃ = [q, offset/scale]``, ``k̃ = [k, 1]``, so that a
    kernel of ``s^p`` computes ``(s + offset)^p`` (head size d + 1; gradients reach ``q`` and ``k`` through the
    concatenation). query: (B, H, Q, d); key: (B, H_kv, K, d). ``offset == 0``: the inputs, unchanged."""
    if not offset:
        return query, key
    return (torch.cat([query, query.new_full((*query.shape[:-1], 1), offset / scale)], -1),
            torch.cat([key, key.new_ones((*key.shape[:-1], 1))], -1))


def length_scale_constant(options: PolynomialOptions) -> float | None:
    """The length scale ``c_i`` when it is the same for every query, else None: ``"fixed"``:
    ``1/sqrt(fixed_length)``; ``"none"``: 1; ``"visible"``: None (``1/sqrt(N_i)``, per query). The one home of the
    mapping from the option to the numbers the kernels take."""
    if options.length_scale == "visible":
        return None
    return 1.0 / math.sqrt(options.fixed_length) if options.length_scale == "fixed" else 1.0


def length_scale_vector(mask: AttentionMask, options: PolynomialOptions, device: torch.device) -> torch.Tensor:
    """The per-query factor ``c_i`` as a float32 tensor (B|1, 1, Q, 1).

    ``"visible"``: ``1/sqrt(N_i)`` with ``N_i`` the number of keys query i sees (a query that sees none, a
    padding query, gets ``N_i = 1``; its weights are all 0 anyway); ``"fixed"``: ``1/sqrt(fixed_length)``;
    ``"none"``: 1.
    """
    value = length_scale_constant(options)
    if value is None:
        return mask.inverse_sqrt_counts(device)
    return torch.full((1, 1, mask.q_len, 1), value, device=device)


def linear_decode_state(options: PolynomialOptions, batch: int, kv_heads: int, head_dim: int,
                        **kwargs: Any) -> PolynomialLinearState:
    """The constant-memory decode state (:class:`~hf_attnswap.kernels.polynomial_linear.PolynomialLinearState`) of
    polynomial attention with ``options``, whose ``degree`` must be 2 (else :class:`OptionError`); its length scale
    comes from ``options``; ``kwargs`` (``scaling``, ``dtype``, ``device``, ``chunk``, ``value_dim``) as the state's."""
    problem = linear_degree_problem(options.degree)
    if problem is not None:
        raise OptionError(f"PolynomialLinearState {problem}.")
    if options.offset:
        raise OptionError(f"PolynomialLinearState computes (q·k)² without an offset; for offset={options.offset:g}, "
                          "build it with head_dim + 1 and pass with_offset(query, key, scaling, offset) to it.")
    return PolynomialLinearState(batch, kv_heads, head_dim, constant_scale=length_scale_constant(options), **kwargs)


def polynomial_attention_fused(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: AttentionMask, ctx: AttentionContext
) -> torch.Tensor:
    """Blocked polynomial attention (O(n·block) memory, causal blocks skipped), CPU and CUDA.

    query: (B, H, Q, d); key, value: (B, H_kv, K, d). Returns (B, H, Q, d). Half-precision inputs are
    computed in float32. Attention dropout drops entries of the weights, as the reference does.
    """
    problem = polynomial_fused_supports(query, mask, ctx)
    if problem is not None:
        raise OptionError(f"polynomial: backend='fused' cannot run this call: {problem}.")
    dtype = compute_dtype(query.dtype)
    c = length_scale_vector(mask, ctx.options, query.device)
    q, k = with_offset(query.to(dtype), key.to(dtype), ctx.scaling, ctx.options.offset)
    out = polynomial_attention_blocked(
        q, k, value.to(dtype), mask, c, ctx.scaling, ctx.options.degree, dropout=ctx.dropout,
        softcap=score_softcap(ctx),
    )
    return _checked_cast(out, query.dtype, ctx.options)


def polynomial_fused_supports(query: torch.Tensor, mask: AttentionMask, ctx: AttentionContext) -> str | None:
    """Why the blocked kernel cannot run this call, or None: it computes an ``offset`` as an extra query/key column,
    which would put the offset inside the model's softcap instead of after it. query: (B, H, Q, d)."""
    if ctx.options.offset and score_softcap(ctx) is not None:
        return ("an offset together with the model's softcap is computed by backend='reference' only (the offset is "
                "added after the cap)")
    return None


def polynomial_triton_supports(query: torch.Tensor, mask: AttentionMask, ctx: AttentionContext) -> str | None:
    """Why the Triton kernel cannot run this call, or None. query: (B, H, Q, d); it takes any mask."""
    try:
        from ...kernels.polynomial_triton import available_for
    except ImportError:
        return "Triton is not installed (pip install triton)"
    head_dim = query.shape[-1]
    if head_dim < 16 or head_dim & (head_dim - 1):
        return f"head size {head_dim} is not a power of two >= 16"
    if ctx.dropout > 0:
        return "attention dropout is not implemented in the Triton kernel"
    if score_softcap(ctx) is not None:
        return "the model's softcap (tanh on the scores) is not implemented in the Triton kernel; backend='fused' has it"
    if ctx.options.offset:
        return "the score offset is not implemented in the Triton kernel; backend='fused' has it"
    return available_for(query)


def polynomial_attention_triton(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: AttentionMask, ctx: AttentionContext
) -> torch.Tensor:
    """Polynomial attention with the Triton kernels (CUDA; CPU under ``TRITON_INTERPRET=1``), float32 accumulation.

    query: (B, H, Q, d); key, value: (B, H_kv, K, d). Returns (B, H, Q, d).
    """
    from ...kernels.polynomial_triton import polynomial_attention_triton as kernel

    c = length_scale_vector(mask, ctx.options, query.device)
    out = kernel(query, key, value, mask, c, ctx.scaling, ctx.options.degree)
    return _checked_cast(out.float(), query.dtype, ctx.options)


def _linear_option_problem(ctx: AttentionContext) -> str | None:
    """Why the linear form cannot run with ``ctx``'s options and dropout (None: it can); the mask aside."""
    problem = linear_degree_problem(ctx.options.degree)
    if problem is not None:
        return f"it {problem}. Set 'degree': 2, or use backend='fused'"
    if ctx.dropout > 0:
        return (f"attention dropout ({ctx.dropout:g}) is not supported: the linear form never builds the weights "
                "it would drop. Set the model's attention dropout to 0 (or call model.eval()), or use backend='fused'")
    if score_softcap(ctx) is not None:
        return ("the model's softcap is not supported: tanh(s/softcap) has no finite feature map φ(q)·φ(k). Use "
                "backend='fused', which takes it")
    return None


def polynomial_linear_supports(query: torch.Tensor, mask: AttentionMask, ctx: AttentionContext) -> str | None:
    """Why the linear-attention form (backend ``"linear"``) cannot run this call, or None: a degree other than 2,
    attention dropout, or a mask that is not causal / key padding / none (see :func:`linear_mask_layout`).
    query: (B, H, Q, d)."""
    problem = _linear_option_problem(ctx)
    if problem is not None:
        return problem
    try:
        linear_mask_layout(mask)
    except OptionError as err:
        return str(err).removeprefix("polynomial: ").removesuffix(".")
    return None


#: ``backend="auto"`` picks the linear form from this many keys on, without gradients (a prefill or an evaluation):
#: where ``python benchmarks/linear_attention.py --lengths 4096,5120,6144,7168,8192,10240,12288,16384 --repeats 5``
#: on the quiet 2-core CPU measured its forward faster than SDPA and ``fused`` at every length from here on: 0.87x
#: SDPA at T = 7168 (fused 0.98x), 0.78x at 8192, after a tie at 6144 (1.00x, fused 1.00x) and 1.17x at 5120
#: (README, "Linear-time polynomial attention"; benchmarks/results/linear_attention_crossover_cpu.json). Under a
#: PolynomialLinearCache, auto runs the linear form at every length (the registration's ``state_backend``).
LINEAR_AUTO_MIN_KEYS = 7168


def polynomial_linear_pays_off(query: torch.Tensor, mask: AttentionMask, ctx: AttentionContext) -> str | None:
    """Why ``backend="auto"`` should not pick the linear form for a call it can take (None: pick it): with
    gradients (its forward+backward is slower than ``fused`` below 8192 tokens, a tie at 8192), below
    :data:`LINEAR_AUTO_MIN_KEYS` keys, or for at most one chunk of queries (a decode step, which runs the blocked
    kernel anyway). Not consulted under a :class:`~hf_attnswap.mechanisms.polynomial.cache.PolynomialLinearCache`,
    whose calls only the linear form can run. query: (B, H, Q, d)."""
    if torch.is_grad_enabled() and query.requires_grad:
        return ("training: the linear form's forward+backward is slower than 'fused' below 8192 tokens and only ties "
                "it at 8192, the longest measured")
    if mask.k_len < LINEAR_AUTO_MIN_KEYS:
        return f"{mask.k_len} keys: below {LINEAR_AUTO_MIN_KEYS} the blocked kernel is faster (benchmarks/linear_attention.py)"
    if query.shape[-2] <= polynomial_linear.DEFAULT_CHUNK:
        return "a decode step: the linear backend runs the blocked kernel for it anyway"
    return None


def linear_mask_layout(mask: AttentionMask, rows: int = 1024) -> tuple[int | None, torch.Tensor | None]:
    """The mask as the linear kernel takes it: ``(causal_offset, key_visible)``.

    ``causal_offset``: query i sees key j iff ``j <= i + causal_offset``, or None (every key visible);
    ``key_visible``: (B|1, K) bool, or None if no key is hidden. A dense mask is accepted only if it equals
    ``causal(offset) ∧ key_visible`` (offset ``K - Q``, or the last key the last query sees minus ``Q - 1``: a static
    cache, whose unfilled slots are hidden keys) or ``key_visible`` alone (padding, e.g. left padding); it is checked ``rows``
    query rows at a time. Anything else (a sliding window, a custom mask) raises an :class:`OptionError`.
    """
    if mask.causal_offset is not None:
        return mask.causal_offset, None
    if mask.dense is None:
        return None, None
    dense = mask.dense
    if dense.dim() == 4 and dense.shape[1] == 1 and dense.shape[-2:] == (mask.q_len, mask.k_len) and mask.q_len > 0:
        keys = dense[:, 0, -1, :]  # the last query sees every key that is not padding, causal or not
        # causal offsets to try: bottom-right aligned (dynamic cache), then from the last key the last query sees
        # (a static cache: its unfilled slots after the sequence are hidden keys), then none
        seen = keys.any(0).nonzero()
        last = int(seen[-1]) - (mask.q_len - 1) if seen.numel() else None
        for offset in dict.fromkeys((mask.k_len - mask.q_len, last, None)):
            if _is_causal_with_keys(dense, keys, offset, rows):
                return offset, None if bool(keys.all()) else keys
    raise OptionError(
        "polynomial: backend='linear' supports a plain causal mask (with a KV-cache offset), key padding (e.g. "
        f"left padding), a static cache and no mask; this attention mask (shape {tuple(dense.shape)}) is none of "
        "them (a sliding window, packed sequences or a custom mask). Use backend='fused', which takes any mask."
    )


def _is_causal_with_keys(dense: torch.Tensor, keys: torch.Tensor, offset: int | None, rows: int) -> bool:
    """Whether dense (B|1, 1, Q, K) equals ``keys`` (B|1, K) and, unless ``offset`` is None, ``j <= i + offset``."""
    q_len, k_len = dense.shape[-2:]
    kj = torch.arange(k_len, device=dense.device)
    for q0 in range(0, q_len, rows):
        block = dense[:, :, q0:q0 + rows]
        want = keys[:, None, None, :]
        if offset is not None:
            qi = torch.arange(q0, q0 + block.shape[-2], device=dense.device)[:, None]
            want = want & (kj <= qi + offset)
        if not torch.equal(block, want.expand_as(block)):
            return False
    return True


def polynomial_attention_linear(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: AttentionMask, ctx: AttentionContext
) -> torch.Tensor:
    """Degree-2 polynomial attention as linear attention (``(q·k)² = φ(q)·φ(k)``, D = d(d+1)/2 features).

    query: (B, H, Q, d); key, value: (B, H_kv, K, d). Returns (B, H, Q, d). Linear time in the length; the
    backward recomputes the chunk states (O(D·d) memory per head). Half-precision inputs are computed in
    float32. Under a :class:`~hf_attnswap.mechanisms.polynomial.cache.PolynomialLinearCache` (``ctx.state``: key and
    value hold only this call's tokens) the outputs come from the layer's state, which then absorbs the call's keys:
    O(D·d) per head and token. Under Transformers' KV cache, a call with at most one chunk of queries (a decode step)
    runs the blocked kernel of backend ``"fused"`` instead: rebuilding the state from the whole cache at every step
    would cost O(K·D·d), the direct form O(Q·K·d); both are exact. Raises :class:`OptionError` for a degree
    other than 2, attention dropout, or a mask that is not causal / key padding / none.
    """
    reason = _linear_option_problem(ctx)  # the mask is checked once, by linear_mask_layout below
    if reason is not None:
        raise OptionError(f"polynomial: backend='linear' cannot run this call: {reason}.")
    if ctx.state is not None:
        return _linear_from_state(query, key, value, mask, ctx)
    offset, key_visible = linear_mask_layout(mask)
    dtype = compute_dtype(query.dtype)
    c = length_scale_vector(mask, ctx.options, query.device)
    q, k = with_offset(query.to(dtype), key.to(dtype), ctx.scaling, ctx.options.offset)
    v = value.to(dtype)
    if query.shape[-2] <= polynomial_linear.DEFAULT_CHUNK:
        out = polynomial_attention_blocked(q, k, v, mask, c, ctx.scaling, ctx.options.degree)
    else:
        out = polynomial_linear.polynomial_linear_attention(q, k, v, c, ctx.scaling, offset, key_visible)
    return _checked_cast(out, query.dtype, ctx.options)


def _linear_from_state(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: AttentionMask,
                       ctx: AttentionContext) -> torch.Tensor:
    """One call (prefill, prefill chunk or decode step) from a :class:`PolynomialLinearCache` layer ``ctx.state``.

    query: (B, H, n, d); key, value: (B, H_kv, n, d), this call's tokens only; ``mask`` covers every position
    (K = the layer's ``seen`` + n) and must be causal with key padding: the state already holds the earlier keys, so
    the mask may only hide what the state left out (its count of visible keys is checked). Returns (B, H, n, d).
    """
    layer = ctx.state
    layer.take(key)
    query, key = with_offset(query, key, ctx.scaling, ctx.options.offset)
    layer.take_head_size(key.shape[-1])
    n, seen = query.shape[-2], layer.seen
    if mask.k_len != seen + n:
        raise OptionError(f"polynomial: the attention mask covers {mask.k_len} keys, but the PolynomialLinearCache holds "
                          f"{seen} positions and this call adds {n}; pass the cache that went with the earlier tokens "
                          "(or none for a new prompt), and a mask over all of them.")
    offset, key_visible = linear_mask_layout(mask)
    if offset != seen and not (offset is None and n == 1):
        raise OptionError(f"polynomial: a PolynomialLinearCache needs a causal mask (query i sees the {seen} cached "
                          "positions and the call's own up to i); this mask is "
                          f"{'bidirectional' if offset is None else f'causal with offset {offset}'}. Use a DynamicCache.")
    before = layer.visible if key_visible is None else key_visible[:, :seen].sum(-1)
    if not bool((before == layer.visible).all()):
        raise OptionError("polynomial: the attention mask hides cached keys that the PolynomialLinearCache's state "
                          "already holds (a state cannot forget keys); pass the same padding mask that the earlier "
                          "tokens ran with, extended by the new tokens.")
    new_visible = None if key_visible is None else key_visible[:, seen:]
    constant = length_scale_constant(ctx.options)
    if constant is None:  # 1/sqrt(N_i): N_i = the cached visible keys + this call's visible keys up to i
        own = (torch.arange(1, n + 1, device=query.device) if new_visible is None
               else new_visible.to(torch.long).cumsum(-1))
        counts = layer.visible.view(-1, 1) + own
        c = counts.clamp_min(1).to(torch.float32).rsqrt().view(-1, 1, n, 1)  # float32, as length_scale_vector
    else:
        c = torch.full((1, 1, n, 1), constant, device=query.device)
    out = polynomial_linear_step(layer.state, query, key, value, c, ctx.scaling, new_visible, has_prefix=seen > 0)
    layer.advance(new_visible, n)
    return _checked_cast(out, query.dtype, ctx.options)
