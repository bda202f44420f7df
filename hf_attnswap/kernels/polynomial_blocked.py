"""Blocked polynomial attention, ``out_i = c_i · Σ_j (scale · q_i·k_j)^p · M_ij · v_j``, in plain torch.

Query and key blocks; blocks above the causal diagonal are skipped and blocks below it need no mask. The
backward recomputes each block's scores instead of storing the n×n matrix, so memory is O(n · block).
There is no row normalisation, hence no row statistics to carry between blocks, and the per-row factor
``c_i`` and the constants ``scale`` and ``p`` are applied once per row, outside the block loops:

    s = (scale·q) kᵀ,  w = s^p ⊙ M,  out = c ⊙ (w v)
    g = c ⊙ dout:  dv = wᵀ g,  ds = p · s^(p-1) ⊙ M ⊙ (g vᵀ),  dq = scale · ds k,  dk = dsᵀ (scale·q)

With a logit soft-cap ``t`` (Gemma2's ``softcap``), ``s`` is replaced by ``u = t·tanh(s/t)`` and ``ds`` gains the
factor ``du/ds = 1 - (u/t)²``.

Reference: ``hf_attnswap.mechanisms.polynomial.polynomial_attention``.
"""

from __future__ import annotations

import torch

from .gqa import group_rows, ungroup_rows
from .mask import AttentionMask

DEFAULT_BLOCK = 256


def _block_mask(mask: AttentionMask, q0: int, q1: int, k0: int, k1: int, r: int, dtype: torch.dtype,
                device: torch.device, keep: torch.Tensor | None) -> torch.Tensor | None:
    """Multiplier for one block of (B, H_kv, R·Qb, Kb) scores: the visibility mask (repeated over the R group
    members, rows ordered (r, q)) times the dropout multiplier; ``None`` if the block is fully visible."""
    m = mask.block(q0, q1, k0, k1, device)
    if m is not None:
        m = m.to(dtype).unsqueeze(2).expand(m.shape[0], 1, r, q1 - q0, k1 - k0).reshape(m.shape[0], 1, r * (q1 - q0), k1 - k0)
    if keep is None:
        return m
    return keep if m is None else keep * m


def _keep(shape: tuple[int, ...], dropout: float, seed: int, q0: int, k0: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The dropout multiplier of one block (0 or ``1/(1-p)``), regenerated identically in the backward."""
    gen = torch.Generator(device=device).manual_seed((seed + 1_000_003 * q0 + k0) % (2**63))
    keep = torch.rand(shape, generator=gen, device=device) >= dropout
    return keep.to(dtype).div_(1.0 - dropout)


def _capped(s: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """``softcap·tanh(s/softcap)`` in place on ``s`` (None: ``s``)."""
    return s if softcap is None else s.div_(softcap).tanh_().mul_(softcap)


def block_forward(rows: torch.Tensor, kb: torch.Tensor, vb: torch.Tensor, m: torch.Tensor | None, p: int,
                  softcap: float | None = None) -> torch.Tensor:
    """One block's ``((cap(rows·kbᵀ))^p ⊙ m) vb``: rows (B, H_kv, n, d) (already scaled), kb (B, H_kv, k, d), vb
    (B, H_kv, k, d_v), m (n, k)-broadcastable or None, ``cap`` the soft-cap (None: none). Returns (B, H_kv, n, d_v)."""
    s = _capped(torch.matmul(rows, kb.transpose(-1, -2)), softcap)
    w = s.pow_(p) if p > 1 else s
    if m is not None:
        w.mul_(m)
    return torch.matmul(w, vb)


def block_backward(rows: torch.Tensor, go: torch.Tensor, kb: torch.Tensor, vb: torch.Tensor, m: torch.Tensor | None,
                   p: int, softcap: float | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One block's gradients ``(dq_rows, dk, dv)`` for :func:`block_forward` with upstream ``go`` (B, H_kv, n, d_v),
    the scores recomputed: ``dv = wᵀ go``, ``ds = s^(p-1) ⊙ m ⊙ (go vbᵀ)``, ``dq_rows = ds kb``, ``dk = dsᵀ rows``
    (with a soft-cap, ``s`` is the capped score and ``ds`` gains ``1 - (s/softcap)²``).
    ``dq_rows`` and ``dk`` leave out the constant factor ``p`` (callers apply it once)."""
    s = _capped(torch.matmul(rows, kb.transpose(-1, -2)), softcap)
    dcap = None if softcap is None else 1 - (s / softcap).square()
    if p == 1:
        dpow, w = None, s
    else:
        dpow = s if p == 2 else s.pow(p - 1)  # s^(p-1)
        w = dpow * s
    if m is not None:
        w.mul_(m)  # w is s itself only when p == 1, and s is not needed after this
    dv = torch.matmul(w.transpose(-1, -2), go)
    ds = torch.matmul(go, vb.transpose(-1, -2))
    if dpow is not None:
        ds.mul_(dpow)
    if dcap is not None:
        ds.mul_(dcap)
    if m is not None:
        ds.mul_(m)
    return torch.matmul(ds, kb), torch.matmul(ds.transpose(-1, -2), rows), dv


class PolynomialAttention(torch.autograd.Function):
    """Autograd function; call through :func:`polynomial_attention_blocked`."""

    @staticmethod
    def forward(ctx, query, key, value, c, mask: AttentionMask, scale: float, degree: int, block: int, dropout: float,
                softcap: float | None):
        b, hkv, r, q_len, d = query.shape
        seed = int(torch.randint(0, 2**62, (1,)).item()) if dropout > 0 else 0
        out = query.new_zeros(*query.shape[:-1], value.shape[-1])
        for q0 in range(0, q_len, block):
            q1 = min(q0 + block, q_len)
            rows = group_rows(query, q0, q1).mul(scale)
            acc = None
            for k0 in range(0, mask.key_limit(q1), block):
                k1 = min(k0 + block, mask.k_len)
                shape = (*rows.shape[:-1], k1 - k0)
                keep = _keep(shape, dropout, seed, q0, k0, rows.device, rows.dtype) if dropout > 0 else None
                m = _block_mask(mask, q0, q1, k0, k1, r, rows.dtype, rows.device, keep)
                part = block_forward(rows, key[:, :, k0:k1], value[:, :, k0:k1], m, degree, softcap)
                acc = part if acc is None else acc.add_(part)
            if acc is not None:
                out[:, :, :, q0:q1] = ungroup_rows(acc, r)
        out.mul_(c.to(out.dtype).unsqueeze(2))  # c: (B|1, 1, Q, 1) -> (B|1, 1, 1, Q, 1)
        ctx.save_for_backward(query, key, value, c)  # inputs only: nothing of size n×d is added for the backward
        ctx.mask, ctx.scale, ctx.degree, ctx.block, ctx.dropout, ctx.seed = mask, scale, degree, block, dropout, seed
        ctx.softcap = softcap
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, c = ctx.saved_tensors
        mask, scale, p, block, dropout, seed = ctx.mask, ctx.scale, ctx.degree, ctx.block, ctx.dropout, ctx.seed
        b, hkv, r, q_len, d = query.shape
        c5 = c.to(grad_out.dtype).unsqueeze(2)  # (B|1, 1, 1, Q, 1)
        dq = torch.zeros_like(query)
        dk = torch.zeros_like(key)
        dv = torch.zeros_like(value)
        for q0 in range(0, q_len, block):
            q1 = min(q0 + block, q_len)
            rows = group_rows(query, q0, q1).mul(scale)
            go = group_rows(grad_out[:, :, :, q0:q1] * c5[:, :, :, q0:q1], 0, q1 - q0)  # g = c ⊙ dout, per block
            dq_rows = None
            for k0 in range(0, mask.key_limit(q1), block):
                k1 = min(k0 + block, mask.k_len)
                shape = (*rows.shape[:-1], k1 - k0)
                keep = _keep(shape, dropout, seed, q0, k0, rows.device, rows.dtype) if dropout > 0 else None
                m = _block_mask(mask, q0, q1, k0, k1, r, rows.dtype, rows.device, keep)
                part, dk_part, dv_part = block_backward(rows, go, key[:, :, k0:k1], value[:, :, k0:k1], m, p, ctx.softcap)
                dq_rows = part if dq_rows is None else dq_rows.add_(part)
                dk[:, :, k0:k1] += dk_part
                dv[:, :, k0:k1] += dv_part
            if dq_rows is not None:
                dq[:, :, :, q0:q1] = ungroup_rows(dq_rows, r)
        return dq.mul_(p * scale), dk.mul_(p), dv, None, None, None, None, None, None, None


def polynomial_attention_blocked(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: AttentionMask,
    c: torch.Tensor,
    scale: float,
    degree: int,
    block: int | None = None,
    dropout: float = 0.0,
    softcap: float | None = None,
) -> torch.Tensor:
    """Polynomial attention without an n×n matrix, forward and backward.

    query: (B, H, Q, d); key, value: (B, H_kv, K, d) (GQA: ``H = R·H_kv``, query head ``h`` uses K/V head
    ``h // R``, as Transformers' ``repeat_kv``); ``c``: the length scale ``c_i``, (B|1, 1, Q, 1), no gradient.
    ``dropout``: attention dropout on the weights; each block's mask comes from a seeded generator, so the
    backward regenerates it instead of storing it. ``softcap``: scores ``s`` become ``softcap·tanh(s/softcap)`` before
    the power (None: none). Returns (B, H, Q, d_v) in the dtype of ``query``.
    """
    b, h, q_len, d = query.shape
    hkv = key.shape[1]
    block = block or DEFAULT_BLOCK
    q5 = query.view(b, hkv, h // hkv, q_len, d)
    out = PolynomialAttention.apply(q5, key, value, c.detach(), mask, float(scale), int(degree), int(block), float(dropout),
                                    None if softcap is None else float(softcap))
    return out.view(b, h, q_len, value.shape[-1])
