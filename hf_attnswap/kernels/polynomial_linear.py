"""Polynomial attention of degree 2 as *linear* attention: linear time in the length, a fixed-size state.

For ``p = 2``, ``(q·k)² = <q⊗q, k⊗k> = φ(q)·φ(k)`` with the symmetric tensor-product features

    φ(x) = (x_a x_b · w_ab)_{a <= b},  w_aa = 1, w_ab = sqrt(2) (a < b),  D = d(d+1)/2 features,

so ``out_i = c_i · Σ_{j visible} (s·q_i·k_j)² v_j = c_i · φ(s·q_i)ᵀ Σ_j φ(k_j) v_jᵀ`` (``s``: the model's
``scaling``, folded into the query). The sum ``S = Σ_j φ(k_j) v_jᵀ`` (D × d_v per K/V head) is the state.

Causal attention is computed in chunks of ``C`` queries (chunk ``[q0, q1)`` sees keys ``j <= i + offset``):

    keys [0, P)      with P = q0 + offset: visible to every query of the chunk -> φ(Q_chunk) @ S_P
    keys [P, P + C)  the diagonal block: (Q Kᵀ)² ⊙ mask @ V, computed quadratically
    then S_P is advanced with the keys up to the next chunk's P.

Cost ``O(T·D·d + T·C·d)`` instead of ``O(T²·d)``; memory ``O(D·d)`` per head for the state plus one chunk's
features. The backward (a custom autograd function) does not store the per-chunk states: it recomputes them
in a forward sweep (query gradients) and accumulates ``R = Σ_{later chunks} φ(Q)ᵀ G`` in a reverse sweep
(key and value gradients), so its memory is also ``O(D·d)`` per head, not one state per chunk. The feature
gradients use ``Σ_p φ_p(x) m_p = xᵀ F x`` (``F``: ``m`` unpacked to a symmetric d × d matrix), i.e. one matmul
with ``x ⊗ h`` instead of a scatter. Features are built feature-major (D, N), one diagonal ``x_a x_{a+k}`` at a
time from contiguous row slices on CPU (~2× faster than whole-row gathers, themselves ~10× faster than gathering
along the last dimension), with one gather on GPUs (one kernel instead of d). ``DEFAULT_CHUNK = 128`` was the fastest of 64/128/256/512
for forward and forward+backward at T = 4096, d = 64 on the 2-core benchmark machine.

:func:`polynomial_linear_step` advances a state by ``n`` tokens (a prefill or a decode step, with key padding);
:class:`PolynomialLinearState` is a standalone decode-time form around it: a state of constant size instead of a KV
cache (``hf_attnswap.mechanisms.polynomial.cache`` puts the same state in Transformers' ``Cache``).

Reference: ``hf_attnswap.mechanisms.polynomial.polynomial_attention`` with ``degree=2``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator

import torch
from torch.autograd.function import once_differentiable

from .gqa import group_rows, ungroup_rows
from .mask import AttentionMask
from .polynomial_blocked import block_backward, block_forward

DEFAULT_CHUNK = 128
SLICE_MIN_ROWS = 32  # CPU feature builds: slices from 32 rows on, gathers below (measured, 12 heads, d = 64)


def feature_dim(head_dim: int) -> int:
    """Number of features ``D = d(d+1)/2`` of :func:`polynomial_features` for head size ``d``."""
    return head_dim * (head_dim + 1) // 2


@functools.lru_cache(maxsize=16)
def _feature_index(head_dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(a, b, w)``, each (D,): the pairs ``a <= b`` in diagonal order (``b - a = 0`` first, then ``1``, ...) and
    their weights (float64). Diagonal ``k`` is ``x[:d-k] * x[k:]``: contiguous slices, no gather."""
    a = torch.cat([torch.arange(0, head_dim - k, device=device) for k in range(head_dim)])
    b = torch.cat([torch.arange(k, head_dim, device=device) for k in range(head_dim)])
    w = torch.full(a.shape, math.sqrt(2.0), dtype=torch.float64, device=device).masked_fill_(a == b, 1.0)
    return a, b, w


@functools.lru_cache(maxsize=16)
def _gather_index(head_dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b_src)``: the rows of ``x`` and of ``cat([x, sqrt(2)·x])`` whose product is each feature."""
    a, b, _ = _feature_index(head_dim, device)
    return a, b + head_dim * (a != b).long()


def polynomial_features(x: torch.Tensor) -> torch.Tensor:
    """Symmetric degree-2 features: (..., d) -> (..., d(d+1)/2), with ``φ(q)·φ(k) == (q·k)²``.

    Feature ``(a, b)`` for ``a <= b`` (in diagonal order: ``b - a = 0, 1, ...``) is ``x_a · x_b``, times
    ``sqrt(2)`` off the diagonal. Differentiable. Without autograd it is the transposed view of :func:`_features_t`.
    """
    if torch.is_grad_enabled() and x.requires_grad:
        a, b, w = _feature_index(x.shape[-1], x.device)
        return x[..., a] * x[..., b] * w.to(x.dtype)
    return _features_t(x).transpose(-1, -2)


def _features_t(x: torch.Tensor, slices: bool | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """Features stored feature-major, (..., N, d) -> (..., D, N). No autograd.

    ``out`` (slice build only): a buffer to build them in when it has that shape (the previous chunk's features: the chunk loops reuse
    one buffer instead of allocating some 13 MB per chunk, which on CPU made the timings vary by a third with the
    allocator's state); otherwise a new tensor.

    ``slices`` (default: on CPU for at least :data:`SLICE_MIN_ROWS` rows) builds them one diagonal at a time,
    ``x_a x_{a+k}`` for all ``a`` in one product of two contiguous row slices (2.4× faster than the gathers for a
    128-row chunk on the 2-core CPU, slower below 32 rows: d ops instead of 2); otherwise two whole-row gathers
    (one kernel each: decode steps, GPUs). Both give the same features in the same order.
    """
    d = x.shape[-1]
    if slices is None:  # torch.compile cannot trace products into strided ``out=`` views: it gets the gathers
        slices = x.device.type == "cpu" and x.shape[-2] >= SLICE_MIN_ROWS and not torch.compiler.is_compiling()
    xt = x.transpose(-1, -2).contiguous()
    scaled = xt * math.sqrt(2.0)
    if not slices:
        a, b_src = _gather_index(d, x.device)
        return xt.index_select(-2, a).mul_(torch.cat([xt, scaled], dim=-2).index_select(-2, b_src))
    shape = (*xt.shape[:-2], feature_dim(d), xt.shape[-1])
    if out is None or out.shape != shape or out.dtype != xt.dtype or not out.is_contiguous():
        out = xt.new_empty(shape)
    torch.mul(xt, xt, out=out[..., :d, :])
    row = d
    for k in range(1, d):
        torch.mul(xt[..., : d - k, :], scaled[..., k:, :], out=out[..., row : row + d - k, :])
        row += d - k
    return out


def _symmetric_matrix(m: torch.Tensor, head_dim: int) -> torch.Tensor:
    """``m`` (..., D, d_v), indexed by feature, as the symmetric ``F`` with ``Σ_p φ_p(x) m_p = Σ_ab x_a x_b F_ab``,
    returned as (..., d, d·d_v) with ``[c, (b, e)] = F[c, b, e]`` (off-diagonal entries are ``m_p / sqrt(2)``)."""
    a, b, w = _feature_index(head_dim, m.device)
    vals = m / w.to(m.dtype)[:, None]
    f = m.new_zeros(*m.shape[:-2], head_dim * head_dim, m.shape[-1])
    f.index_copy_(-2, a * head_dim + b, vals)
    f.index_copy_(-2, b * head_dim + a, vals)
    return f.view(*m.shape[:-2], head_dim, head_dim * m.shape[-1])


def _quadratic_grad(x: torch.Tensor, h: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Gradient in ``x`` of ``Σ_n φ(x_n)ᵀ m h_n`` with ``f = _symmetric_matrix(m)``: ``2 Σ_{b,e} F[c,b,e] x_nb h_ne``.

    x: (..., N, d); h: (..., N, d_v); f: (..., d, d·d_v). Returns (..., N, d): one matmul, no scatter.
    """
    outer = (x.unsqueeze(-1) * h.unsqueeze(-2)).flatten(-2)  # (..., N, d·d_v)
    return torch.matmul(outer, f.transpose(-1, -2)).mul_(2.0)


def _chunks(q_len: int, k_len: int, offset: int, chunk: int) -> Iterator[tuple[int, int, int, int]]:
    """``(q0, q1, p, e)`` per query chunk: keys ``[0, p)`` are visible to all its queries, keys ``[p, e)`` (at
    most ``q1 - q0`` of them) to some, keys ``>= e`` to none (query i sees key j iff ``j <= i + offset``)."""
    for q0 in range(0, q_len, chunk):
        q1 = min(q0 + chunk, q_len)
        yield q0, q1, min(max(q0 + offset, 0), k_len), min(max(q1 + offset, 0), k_len)


def _diagonal_mask(q0: int, q1: int, p: int, e: int, offset: int, groups: int, dtype: torch.dtype,
                   device: torch.device) -> torch.Tensor | None:
    """Visibility of the diagonal block, (R·(q1-q0), e-p) with rows ordered (group member, query); None if all visible."""
    if e - 1 <= q0 + offset:
        return None
    qi = torch.arange(q0, q1, device=device)[:, None]
    kj = torch.arange(p, e, device=device)[None, :]
    return (kj <= qi + offset).to(dtype).repeat(groups, 1)


def _absorb(state: torch.Tensor, key: torch.Tensor, value: torch.Tensor, start: int, end: int, chunk: int,
            feats: torch.Tensor | None = None) -> torch.Tensor | None:
    """``state += Σ_{start <= j < end} φ(k_j) v_jᵀ`` in place, ``chunk`` keys at a time.

    state: (B, H_kv, D, d_v); key: (B, H_kv, K, d); value: (B, H_kv, K, d_v). ``feats``: a feature buffer from an
    earlier call, reused when its shape fits; returns the buffer for the next call.
    """
    flat = state.view(-1, *state.shape[-2:])  # (B·H_kv, D, d_v): accumulate in place, no D×d_v temporary
    for k0 in range(start, end, chunk):
        k1 = min(k0 + chunk, end)
        feats = _features_t(key[:, :, k0:k1], out=feats)
        flat.baddbmm_(feats.view(-1, *feats.shape[-2:]), value[:, :, k0:k1].reshape(-1, k1 - k0, value.shape[-1]))
    return feats


def _new_state(key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """A zero state (B, H_kv, D, d_v) for key (B, H_kv, K, d) and value (B, H_kv, K, d_v)."""
    b, hkv, _, d = key.shape
    return key.new_zeros(b, hkv, feature_dim(d), value.shape[-1])


def _causal_forward(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float, offset: int,
                    chunk: int, state: torch.Tensor, has_prefix: bool) -> tuple[torch.Tensor, int]:
    """Unscaled output (no ``c_i``) of chunked causal linear attention, and how many keys ``state`` absorbed.

    query: (B, H_kv, R, Q, d); key: (B, H_kv, K, d); value: (B, H_kv, K, d_v); ``state`` (B, H_kv, D, d_v) holds
    keys every query sees besides ``key`` (``has_prefix`` says whether it is non-zero) and is advanced in place
    with ``key[:, :, :absorbed]``. Query i sees key j of ``key`` iff ``j <= i + offset``. Returns
    (B, H_kv, R, Q, d_v).
    """
    b, hkv, r, q_len, _ = query.shape
    out = query.new_zeros(b, hkv, r, q_len, value.shape[-1])
    absorbed, feats, key_feats = 0, None, None
    for q0, q1, p, e in _chunks(q_len, key.shape[-2], offset, chunk):
        key_feats = _absorb(state, key, value, absorbed, p, chunk, key_feats)
        has_prefix, absorbed = has_prefix or p > 0, p
        rows = group_rows(query, q0, q1).mul(scale)  # (B, H_kv, R·Cq, d), never a view of query
        if has_prefix:
            feats = _features_t(rows, out=feats)
        acc = torch.matmul(feats.transpose(-1, -2), state) if has_prefix else None
        if e > p:
            m = _diagonal_mask(q0, q1, p, e, offset, r, rows.dtype, rows.device)
            part = block_forward(rows, key[:, :, p:e], value[:, :, p:e], m, 2)
            acc = part if acc is None else acc.add_(part)
        if acc is not None:
            out[:, :, :, q0:q1] = ungroup_rows(acc, r)
    return out, absorbed


def _key_grads(rev: torch.Tensor, key: torch.Tensor, value: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor,
               start: int, end: int, chunk: int) -> None:
    """Gradients of keys ``[start, end)`` through the states, given ``rev = ∂L/∂S`` (B, H_kv, D, d_v) of every
    state that contains them: ``dφ(k_j) = rev v_j``, ``dv_j = revᵀ φ(k_j)``. Adds into dk, dv in place."""
    if end <= start:
        return
    f = _symmetric_matrix(rev, key.shape[-1])
    for k0 in range(start, end, chunk):
        k1 = min(k0 + chunk, end)
        kb, vb = key[:, :, k0:k1], value[:, :, k0:k1]
        dk[:, :, k0:k1] += _quadratic_grad(kb, vb, f)
        dv[:, :, k0:k1] += torch.matmul(_features_t(kb).transpose(-1, -2), rev)


class _PolynomialLinear(torch.autograd.Function):
    """Autograd function; call through :func:`polynomial_linear_attention`. Saves only the inputs."""

    @staticmethod
    def forward(ctx, query, key, value, c, scale: float, offset: int, chunk: int):
        out, _ = _causal_forward(query, key, value, scale, offset, chunk, _new_state(key, value), False)
        out.mul_(c.to(out.dtype).unsqueeze(2))  # c: (B|1, 1, Q, 1) -> (B|1, 1, 1, Q, 1)
        ctx.save_for_backward(query, key, value, c)
        ctx.scale, ctx.offset, ctx.chunk = scale, offset, chunk
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        query, key, value, c = ctx.saved_tensors
        scale, offset, chunk = ctx.scale, ctx.offset, ctx.chunk
        r = query.shape[2]
        g = grad_out * c.to(grad_out.dtype).unsqueeze(2)
        dq, dk, dv = torch.zeros_like(query), torch.zeros_like(key), torch.zeros_like(value)
        chunks = list(_chunks(query.shape[3], key.shape[2], offset, chunk))
        # Forward sweep: recompute the prefix states; query gradients, and everything of the diagonal blocks.
        state, absorbed, key_feats = _new_state(key, value), 0, None
        for q0, q1, p, e in chunks:
            key_feats = _absorb(state, key, value, absorbed, p, chunk, key_feats)
            absorbed = p
            rows, go = group_rows(query, q0, q1).mul(scale), group_rows(g, q0, q1)
            dq_rows = _quadratic_grad(rows, go, _symmetric_matrix(state, rows.shape[-1])) if p > 0 else None
            if e > p:
                m = _diagonal_mask(q0, q1, p, e, offset, r, rows.dtype, rows.device)
                part, dk_part, dv_part = block_backward(rows, go, key[:, :, p:e], value[:, :, p:e], m, 2)
                part.mul_(2.0)  # the factor p of (q·k)^p, which block_backward leaves to its caller
                dq_rows = part if dq_rows is None else dq_rows.add_(part)
                dk[:, :, p:e] += dk_part.mul_(2.0)
                dv[:, :, p:e] += dv_part
            if dq_rows is not None:
                dq[:, :, :, q0:q1] = ungroup_rows(dq_rows, r)
        # Reverse sweep: rev = Σ over later chunks of φ(Q)ᵀ G, the gradient of every state holding a key.
        rev = torch.zeros_like(state)
        for n in range(len(chunks) - 1, -1, -1):
            q0, q1, p, _ = chunks[n]
            nxt = chunks[n + 1][2] if n + 1 < len(chunks) else p
            _key_grads(rev, key, value, dk, dv, p, nxt, chunk)  # keys in the prefixes of chunks > n only
            if p > 0:
                rows, go = group_rows(query, q0, q1).mul(scale), group_rows(g, q0, q1)
                rev.add_(torch.matmul(_features_t(rows), go))
        if chunks:
            _key_grads(rev, key, value, dk, dv, 0, chunks[0][2], chunk)
        return dq.mul_(scale), dk, dv, None, None, None, None


def _check_shapes(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4:
        raise ValueError(f"expected 4-D query, key, value (B, H, T, d); got {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}.")
    if query.shape[1] % key.shape[1] or key.shape[:3] != value.shape[:3] or query.shape[-1] != key.shape[-1]:
        raise ValueError(
            f"shapes do not fit: query {tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}; "
            "need query (B, H, Q, d), key (B, H_kv, K, d), value (B, H_kv, K, d_v) with H a multiple of H_kv."
        )


def polynomial_linear_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    c: torch.Tensor,
    scale: float,
    causal_offset: int | None,
    key_visible: torch.Tensor | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """Degree-2 polynomial attention ``out_i = c_i Σ_{j visible} (scale·q_i·k_j)² v_j`` in linear time.

    query: (B, H, Q, d); key: (B, H_kv, K, d); value: (B, H_kv, K, d_v) (GQA: query head ``h`` uses K/V head
    ``h // (H/H_kv)``, as Transformers' ``repeat_kv``; K/V are not repeated). ``c``: (B|1, 1, Q, 1), no gradient.
    ``causal_offset``: query i sees key j iff ``j <= i + causal_offset`` (``K - Q`` with a KV cache); ``None``:
    every key is visible. ``key_visible``: optional (B|1, K) bool, keys hidden from every query (padding).
    ``chunk``: queries (and keys) per chunk, default :data:`DEFAULT_CHUNK`. Computes in the inputs' dtype
    (cast half precision to float32 before). Returns (B, H, Q, d_v); differentiable in query, key, value.
    """
    _check_shapes(query, key, value)
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be a positive number of queries, got {chunk}.")
    b, h, q_len, d = query.shape
    hkv, k_len = key.shape[1], key.shape[2]
    if key_visible is not None:
        key = key * key_visible.to(key.dtype)[:, None, :, None]  # φ(0) = 0: a hidden key adds nothing
    offset = k_len if causal_offset is None else min(int(causal_offset), k_len)
    q5 = query.reshape(b, hkv, h // hkv, q_len, d)
    out = _PolynomialLinear.apply(q5, key, value, c.detach(), float(scale), offset, int(chunk or DEFAULT_CHUNK))
    return out.reshape(b, h, q_len, value.shape[-1])


@torch.no_grad()
def polynomial_linear_step(
    state: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    c: torch.Tensor,
    scale: float,
    key_visible: torch.Tensor | None = None,
    has_prefix: bool = True,
    chunk: int | None = None,
) -> torch.Tensor:
    """Append ``n`` tokens to a state and return their causal outputs: one prefill or decode step from a state.

    ``state``: ``S = Σ φ(k_j) v_jᵀ`` over the keys absorbed so far, (B, H_kv, D, d_v), advanced in place with the new
    keys (its dtype is the compute dtype). query: (B, H, n, d); key: (B, H_kv, n, d); value: (B, H_kv, n, d_v).
    New token i sees every absorbed key, and new key j iff ``j <= i`` and ``key_visible[:, j]`` (optional (B|1, n)
    bool: padding, hidden from every query and kept out of the state). ``c``: the length scale (B|1, 1, n, 1).
    ``has_prefix``: whether ``state`` holds any key (False skips a matmul with zeros). Cost ``O(n·D·d + n·C·d)``,
    whatever the number of keys absorbed. Returns (B, H, n, d_v) in the state's dtype. Inference only.
    """
    _check_shapes(query, key, value)
    b, h, n, d = query.shape
    hkv, dtype = key.shape[1], state.dtype
    k, v = key.to(dtype), value.to(dtype)
    if key_visible is not None:
        k = k * key_visible.to(dtype)[:, None, :, None]  # φ(0) = 0: a hidden key adds nothing, now or later
    q5 = query.to(dtype).reshape(b, hkv, h // hkv, n, d)
    size = int(chunk or DEFAULT_CHUNK)
    out, absorbed = _causal_forward(q5, k, v, float(scale), 0, size, state, has_prefix)
    _absorb(state, k, v, absorbed, n, size)
    return out.reshape(b, h, n, -1).mul_(c.to(dtype))


class PolynomialLinearState:
    """Constant-memory decode state of degree-2 polynomial attention: replaces the KV cache of one layer.

    Holds ``S = Σ_j φ(k_j) v_jᵀ`` (B, H_kv, D, d_v) with ``D = d(d+1)/2``, and ``seen``, the number of keys
    absorbed. Its size does not depend on ``seen``; a KV cache of ``n`` tokens takes ``2·n·d`` numbers per head,
    so the state is smaller beyond ``n = D·d_v / (2d)`` tokens (1040 for ``d = 64``). All sequences of the batch
    have the same length (no padding). Inference only (no autograd).

    ``scaling``: the model's factor on ``q·k``; ``constant_scale``: the length scale ``c_i``, None for
    ``1/sqrt(N_i)`` with ``N_i`` the keys query i sees (``length_scale="visible"``, the default), else that number for
    every query (``"fixed"``: ``1/sqrt(fixed_length)``; ``"none"``: 1). From a mechanism's
    :class:`~hf_attnswap.options.PolynomialOptions`, build it with
    :func:`hf_attnswap.mechanisms.polynomial.linear_decode_state`. Computes in float32 for half-precision ``dtype``;
    outputs have the query's dtype.
    """

    def __init__(self, batch: int, kv_heads: int, head_dim: int, value_dim: int | None = None, *, scaling: float,
                 constant_scale: float | None = None, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None, chunk: int | None = None) -> None:
        if constant_scale is not None and not (math.isfinite(constant_scale) and constant_scale > 0):
            raise ValueError(f"PolynomialLinearState: constant_scale must be a finite number > 0 (or None for "
                             f"1/sqrt(N_i)), got {constant_scale!r}.")
        if chunk is not None and chunk < 1:
            raise ValueError(f"PolynomialLinearState: chunk must be >= 1, got {chunk}.")
        self.scaling = float(scaling)
        self.constant_scale = None if constant_scale is None else float(constant_scale)
        self.chunk, self.head_dim = int(chunk or DEFAULT_CHUNK), int(head_dim)
        dtype = torch.promote_types(dtype, torch.float32)
        self.state = torch.zeros(batch, kv_heads, feature_dim(head_dim), value_dim or head_dim, dtype=dtype, device=device)
        self.seen = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the state; constant, whatever the number of tokens seen."""
        return self.state.numel() * self.state.element_size()

    def _check(self, x: torch.Tensor, name: str, heads_multiple: bool) -> None:
        b, hkv, _, dv = self.state.shape
        ok = x.dim() == 4 and x.shape[0] == b and (x.shape[1] % hkv == 0 if heads_multiple else x.shape[1] == hkv)
        expected = dv if name == "value" else self.head_dim
        if not ok or x.shape[-1] != expected:
            raise ValueError(f"PolynomialLinearState: {name} of shape {tuple(x.shape)} does not fit a state "
                             f"{tuple(self.state.shape)}; expected (B={b}, {'H' if heads_multiple else 'H_kv'}, n, {expected}).")

    def _scale(self, first: int, n: int, causal: bool) -> torch.Tensor:
        """``c_i`` for ``n`` queries, (1, 1, n, 1): query i sees ``first + i + 1`` keys if causal, else ``first``."""
        if self.constant_scale is None:  # 1/sqrt(N_i)
            if causal:  # query i sees keys 0 .. first + i
                seen = AttentionMask(None, n, first + n, causal_offset=first)
            else:  # every query sees the `first` keys absorbed
                seen = AttentionMask(None, n, first)
            return seen.inverse_sqrt_counts(self.state.device, self.state.dtype)
        return torch.full((1, 1, n, 1), self.constant_scale, dtype=self.state.dtype, device=self.state.device)

    @torch.no_grad()
    def update(self, key: torch.Tensor, value: torch.Tensor) -> None:
        """Absorb ``n`` new keys and values: key (B, H_kv, n, d), value (B, H_kv, n, d_v)."""
        self._check(key, "key", False)
        self._check(value, "value", False)
        dtype = self.state.dtype
        _absorb(self.state, key.to(dtype), value.to(dtype), 0, key.shape[-2], self.chunk)
        self.seen += key.shape[-2]

    @torch.no_grad()
    def attend(self, query: torch.Tensor) -> torch.Tensor:
        """Outputs of queries (B, H, n, d) that each see every key absorbed so far: (B, H, n, d_v), query dtype."""
        self._check(query, "query", True)
        b, h, n, d = query.shape
        hkv = self.state.shape[1]
        rows = query.to(self.state.dtype).reshape(b, hkv, (h // hkv) * n, d).mul(self.scaling)
        out = torch.matmul(_features_t(rows).transpose(-1, -2), self.state).view(b, h, n, -1)
        return out.mul_(self._scale(self.seen, n, causal=False)).to(query.dtype)

    @torch.no_grad()
    def step(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Append ``n`` tokens and return their causal outputs (token i sees every earlier key and itself).

        query: (B, H, n, d); key: (B, H_kv, n, d); value: (B, H_kv, n, d_v). Returns (B, H, n, d_v) in the query's
        dtype: the last ``n`` rows of full causal attention over every token seen so far.
        """
        self._check(query, "query", True)
        self._check(key, "key", False)
        self._check(value, "value", False)
        n = query.shape[-2]
        out = polynomial_linear_step(self.state, query, key, value, self._scale(self.seen, n, causal=True),
                                     self.scaling, has_prefix=self.seen > 0, chunk=self.chunk)
        self.seen += n
        return out.to(query.dtype)
