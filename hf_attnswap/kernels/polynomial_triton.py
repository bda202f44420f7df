"""Polynomial attention as Triton kernels (forward, and a backward that recomputes scores), for CUDA.

On a machine without a GPU the same kernels run on CPU tensors under ``TRITON_INTERPRET=1`` (set before
this module is imported), which is how the tests check them against the reference. The math is the
blocked kernel's (``polynomial_blocked.py``): ``s = scale·q kᵀ``, ``w = s^p ⊙ M``, ``out = c ⊙ (w v)``;
the backward uses ``g = c ⊙ dout``, ``dv = wᵀ g``, ``ds = p s^(p-1) ⊙ M ⊙ (g vᵀ)``, ``dq = scale·ds k``,
``dk = scale·dsᵀ q``. Everything is accumulated in float32.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .mask import AttentionMask

BLOCK_M = 32
BLOCK_N = 32


def available_for(query: torch.Tensor) -> str | None:
    """Why the Triton path cannot run on ``query``'s device, or None."""
    if query.is_cuda:
        return None
    if os.environ.get("TRITON_INTERPRET") == "1":
        return None
    return "the Triton kernel needs a CUDA tensor (or TRITON_INTERPRET=1 to run it, slowly, on CPU)"


@triton.jit
def _scores(q, k, offs_m, offs_n, q_len, k_len, b, m_ptr, smb, smm, smn, causal_offset,
            HAS_MASK: tl.constexpr, IS_CAUSAL: tl.constexpr):
    """Scores of one (query block, key block) tile and its visibility."""
    s = tl.dot(q, tl.trans(k), input_precision="ieee")
    valid = (offs_m[:, None] < q_len) & (offs_n[None, :] < k_len)
    if IS_CAUSAL:
        valid = valid & (offs_n[None, :] <= offs_m[:, None] + causal_offset)
    if HAS_MASK:
        mv = tl.load(m_ptr + b * smb + offs_m[:, None] * smm + offs_n[None, :] * smn, mask=valid, other=0)
        valid = valid & (mv != 0)
    return s, valid


@triton.jit
def _tile(ptr, b, h, offs, offs_d, sb, sh, sn, sd, n):
    """Rows ``offs`` (masked to ``< n``) of head ``h`` of batch ``b`` of a (B, H, N, D) tensor, as float32."""
    return tl.load(ptr + b * sb + h * sh + offs[:, None] * sn + offs_d[None, :] * sd,
                   mask=offs[:, None] < n, other=0.0).to(tl.float32)


@triton.jit
def _pow(s, DEGREE: tl.constexpr):
    w = s
    for _ in tl.static_range(DEGREE - 1):
        w = w * s
    return w


@triton.jit
def _fwd_kernel(Q, K, V, C, M, O,
                sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, som, sod, scb, scm, smb, smm, smn,
                H, n_rep, q_len, k_len, causal_offset, scale,
                DEGREE: tl.constexpr, HAS_MASK: tl.constexpr, IS_CAUSAL: tl.constexpr,
                BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, DV: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // n_rep
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_d = tl.arange(0, D)
    offs_dv = tl.arange(0, DV)
    q = _tile(Q, b, h, offs_m, offs_d, sqb, sqh, sqm, sqd, q_len) * scale
    acc = tl.zeros([BM, DV], dtype=tl.float32)
    end_n = k_len
    if IS_CAUSAL:
        end_n = tl.minimum(k_len, (pid_m + 1) * BM + causal_offset)
    for start_n in range(0, end_n, BN):
        offs_n = start_n + tl.arange(0, BN)
        k = _tile(K, b, hk, offs_n, offs_d, skb, skh, skn, skd, k_len)
        v = _tile(V, b, hk, offs_n, offs_dv, svb, svh, svn, svd, k_len)
        s, valid = _scores(q, k, offs_m, offs_n, q_len, k_len, b, M, smb, smm, smn, causal_offset, HAS_MASK, IS_CAUSAL)
        w = tl.where(valid, _pow(s, DEGREE), 0.0)
        acc += tl.dot(w, v, input_precision="ieee")
    c = tl.load(C + b * scb + offs_m * scm, mask=offs_m < q_len, other=0.0)
    acc = acc * c[:, None]
    tl.store(O + b * sob + h * soh + offs_m[:, None] * som + offs_dv[None, :] * sod, acc, mask=offs_m[:, None] < q_len)


@triton.jit
def _bwd_dq_kernel(Q, K, V, G, M, DQ,
                   sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sgb, sgh, sgm, sgd, smb, smm, smn,
                   H, n_rep, q_len, k_len, causal_offset, scale,
                   DEGREE: tl.constexpr, HAS_MASK: tl.constexpr, IS_CAUSAL: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, DV: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    hk = h // n_rep
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_d = tl.arange(0, D)
    offs_dv = tl.arange(0, DV)
    q = _tile(Q, b, h, offs_m, offs_d, sqb, sqh, sqm, sqd, q_len) * scale
    g = _tile(G, b, h, offs_m, offs_dv, sgb, sgh, sgm, sgd, q_len)
    dq = tl.zeros([BM, D], dtype=tl.float32)
    end_n = k_len
    if IS_CAUSAL:
        end_n = tl.minimum(k_len, (pid_m + 1) * BM + causal_offset)
    for start_n in range(0, end_n, BN):
        offs_n = start_n + tl.arange(0, BN)
        k = _tile(K, b, hk, offs_n, offs_d, skb, skh, skn, skd, k_len)
        v = _tile(V, b, hk, offs_n, offs_dv, svb, svh, svn, svd, k_len)
        s, valid = _scores(q, k, offs_m, offs_n, q_len, k_len, b, M, smb, smm, smn, causal_offset, HAS_MASK, IS_CAUSAL)
        dw = tl.dot(g, tl.trans(v), input_precision="ieee")
        if DEGREE > 1:
            dw = dw * _pow(s, DEGREE - 1)
        ds = tl.where(valid, dw, 0.0)
        dq += tl.dot(ds, k, input_precision="ieee")
    dq = dq * (DEGREE * scale)
    tl.store(DQ + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd, dq, mask=offs_m[:, None] < q_len)


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, G, M, DK, DV_,
                     sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sgb, sgh, sgm, sgd, smb, smm, smn,
                     HKV, n_rep, q_len, k_len, causal_offset, scale,
                     DEGREE: tl.constexpr, HAS_MASK: tl.constexpr, IS_CAUSAL: tl.constexpr,
                     BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, DV: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // HKV
    hk = pid_bh % HKV
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_d = tl.arange(0, D)
    offs_dv = tl.arange(0, DV)
    k = _tile(K, b, hk, offs_n, offs_d, skb, skh, skn, skd, k_len)
    v = _tile(V, b, hk, offs_n, offs_dv, svb, svh, svn, svd, k_len)
    dk = tl.zeros([BN, D], dtype=tl.float32)
    dv = tl.zeros([BN, DV], dtype=tl.float32)
    start_m = 0
    if IS_CAUSAL:  # queries before (first key of this block - offset) see none of it
        start_m = tl.maximum(0, (pid_n * BN - causal_offset) // BM * BM)
    for r in range(0, n_rep):
        h = hk * n_rep + r
        for sm in range(start_m, q_len, BM):
            offs_m = sm + tl.arange(0, BM)
            q = _tile(Q, b, h, offs_m, offs_d, sqb, sqh, sqm, sqd, q_len) * scale
            g = _tile(G, b, h, offs_m, offs_dv, sgb, sgh, sgm, sgd, q_len)
            s, valid = _scores(q, k, offs_m, offs_n, q_len, k_len, b, M, smb, smm, smn, causal_offset, HAS_MASK, IS_CAUSAL)
            w = tl.where(valid, _pow(s, DEGREE), 0.0)
            dv += tl.dot(tl.trans(w), g, input_precision="ieee")
            dw = tl.dot(g, tl.trans(v), input_precision="ieee")
            if DEGREE > 1:
                dw = dw * _pow(s, DEGREE - 1)
            ds = tl.where(valid, dw, 0.0)
            dk += tl.dot(tl.trans(ds), q, input_precision="ieee")
    dk = dk * DEGREE
    tl.store(DK + b * skb + hk * skh + offs_n[:, None] * skn + offs_d[None, :] * skd, dk, mask=offs_n[:, None] < k_len)
    tl.store(DV_ + b * svb + hk * svh + offs_n[:, None] * svn + offs_dv[None, :] * svd, dv, mask=offs_n[:, None] < k_len)


def _mask_args(mask: AttentionMask, query: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int], bool, bool, int]:
    """(mask tensor (B|1, Q, K) int8 or a dummy, its strides (batch stride 0 when shared), has_mask, is_causal, offset)."""
    if mask.causal_offset is not None:
        return query.new_zeros(1, dtype=torch.int8), (0, 0, 0), False, True, int(mask.causal_offset)
    if mask.dense is None:
        return query.new_zeros(1, dtype=torch.int8), (0, 0, 0), False, False, 0
    m = mask.dense[:, 0].to(torch.int8).contiguous()
    strides = (m.stride(0) if m.shape[0] > 1 else 0, m.stride(1), m.stride(2))
    return m, strides, True, False, 0


def _c_args(c: torch.Tensor, q_len: int) -> tuple[torch.Tensor, tuple[int, int]]:
    c2 = c.reshape(c.shape[0], q_len).to(torch.float32).contiguous()
    return c2, (c2.stride(0) if c2.shape[0] > 1 else 0, c2.stride(1))


class PolynomialTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, c, mask: AttentionMask, scale: float, degree: int):
        b, h, q_len, d = query.shape
        hkv, k_len, dv = key.shape[1], key.shape[2], value.shape[-1]
        out = torch.empty(b, h, q_len, dv, device=query.device, dtype=torch.float32)
        m, ms, has_mask, is_causal, offset = _mask_args(mask, query)
        c2, cs = _c_args(c, q_len)
        grid = (triton.cdiv(q_len, BLOCK_M), b * h)
        _fwd_kernel[grid](query, key, value, c2, m, out, *query.stride(), *key.stride(), *value.stride(), *out.stride(),
                          *cs, *ms, h, h // hkv, q_len, k_len, offset, scale,
                          DEGREE=degree, HAS_MASK=has_mask, IS_CAUSAL=is_causal, BM=BLOCK_M, BN=BLOCK_N, D=d, DV=dv)
        ctx.save_for_backward(query, key, value, c2)
        ctx.mask, ctx.scale, ctx.degree = mask, scale, degree
        return out.to(query.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, c2 = ctx.saved_tensors
        mask, scale, degree = ctx.mask, ctx.scale, ctx.degree
        b, h, q_len, d = query.shape
        hkv, k_len, dv = key.shape[1], key.shape[2], value.shape[-1]
        g = (grad_out.to(torch.float32) * c2.view(c2.shape[0], 1, q_len, 1)).contiguous()
        m, ms, has_mask, is_causal, offset = _mask_args(mask, query)
        dq = torch.empty(b, h, q_len, d, device=query.device, dtype=torch.float32)
        dk = torch.empty(b, hkv, k_len, d, device=query.device, dtype=torch.float32)
        dvv = torch.empty(b, hkv, k_len, dv, device=query.device, dtype=torch.float32)
        consts = dict(DEGREE=degree, HAS_MASK=has_mask, IS_CAUSAL=is_causal, BM=BLOCK_M, BN=BLOCK_N, D=d, DV=dv)
        # dq is written with query's strides and dk/dv with key's/value's, so make them alike.
        query, key, value = query.contiguous(), key.contiguous(), value.contiguous()
        _bwd_dq_kernel[(triton.cdiv(q_len, BLOCK_M), b * h)](
            query, key, value, g, m, dq, *query.stride(), *key.stride(), *value.stride(), *g.stride(), *ms,
            h, h // hkv, q_len, k_len, offset, scale, **consts)
        _bwd_dkdv_kernel[(triton.cdiv(k_len, BLOCK_N), b * hkv)](
            query, key, value, g, m, dk, dvv, *query.stride(), *key.stride(), *value.stride(), *g.stride(), *ms,
            hkv, h // hkv, q_len, k_len, offset, scale, **consts)
        return dq.to(query.dtype), dk.to(key.dtype), dvv.to(value.dtype), None, None, None, None


def polynomial_attention_triton(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: AttentionMask,
                                c: torch.Tensor, scale: float, degree: int) -> torch.Tensor:
    """Polynomial attention with Triton kernels. query: (B, H, Q, d); key, value: (B, H_kv, K, d) with head sizes
    powers of two >= 16; ``c``: (B|1, 1, Q, 1). Returns (B, H, Q, d_v) in ``query``'s dtype."""
    query, key, value = query.contiguous(), key.contiguous(), value.contiguous()
    return PolynomialTriton.apply(query, key, value, c.detach(), mask, float(scale), int(degree))
