"""daGPAM on CPU with low memory: one ``autograd.Function`` over the flash-attention CPU kernels.

    Q⁻ = rope(ReLU(unrope(Q⁺)) W⁻)                          (no rope: Q⁻ = ReLU(Q⁺) W⁻)
    pos, lse⁺ = flash(Q⁺, K, V);  neg, lse⁻ = flash(Q⁻, K, V)
    out = (1+λ⁺)·pos − λ⁻·neg                                (tied: λ⁺ = λ⁻ = λ, a lerp)

The autograd path through two SDPA calls keeps, per layer, ``Q⁻``, ``ReLU(Q⁺)``, both branch outputs and
the output, and its backward holds both branches' gradients at once. This function instead:

- forward: keeps only ``neg`` and the two log-sum-exps (``out`` is the output, which the caller holds
  anyway); ``Q⁻``, ``ReLU(Q⁺)`` and ``pos`` are temporaries.
- backward: recovers ``pos = (out + λ⁻·neg) / (1+λ⁺)`` (only when that is well conditioned,
  ``|λ⁻| ≤ RECOVER_LIMIT·|1+λ⁺|`` for every head; otherwise the forward keeps ``pos`` too), recomputes
  ``ReLU(Q⁺)`` and ``Q⁻``, runs the positive then the negative flash backward, and accumulates into
  ``dq, dk, dv`` buffers laid out like the inputs. A chunk whose λ⁻ are all exactly 0 skips the negative
  branch (its contributions, W⁻'s gradient included, are exactly 0).
- chunks: large calls (``(B, H, max(Q, K), d)`` of at least ``CHUNK_ABOVE_BYTES``) run both passes on
  chunks of whole KV groups of about ``CHUNK_BYTES`` (but at least one head per thread), so each branch's
  temporaries (about five chunk-sized tensors at the peak of the backward) are small; smaller calls run as
  one chunk, since every chunk costs some 20 more kernel launches, which on a busy 2-core machine cost more
  than the attention itself at T ≤ 4096.

Gradients: ``q, k, v``; ``W⁻`` (d×d shared or (H, d, d) per head); ``λ⁺, λ⁻`` per head
(``dλ⁺_h = Σ g·pos``, ``dλ⁻_h = −Σ g·neg``; tied λ is one tensor passed twice, whose gradient
``Σ g·(pos − neg)`` is returned once). GQA: K/V keep their ``H_kv`` heads; the flash kernel maps query head
``h`` to KV head ``h // (H / H_kv)``.

Masks: plain causal (``is_causal``), none, or a dense boolean mask (converted once per pass to the additive
float mask the kernel takes). A query that sees no key gets 0, as with SDPA. No attention dropout.
Reference: ``hf_attnswap.mechanisms.dagpam.dagpam_attention``; the autograd version is
``dagpam_attention_fused``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from . import rope as rope_ops
from .mask import AttentionMask

ENABLED = True  # set False to route every call to the autograd (two-SDPA) path (the tests compare the two)
CHUNK_BYTES = 2 << 20  # target size of one chunk's (B, heads, Q, d) slice
CHUNK_ABOVE_BYTES = 16 << 20  # smaller calls are not chunked (each chunk costs ~20 more kernel launches)
RECOVER_LIMIT = 4.0  # recover pos from out only if max_h |λ⁻_h| / |1+λ⁺_h| is at most this
DTYPES = (torch.float32, torch.float64)

#: ``(forward, backward)`` of PyTorch's CPU flash attention, private ATen ops that this module takes as an argument
#: (``flash``) rather than looks up: :func:`hf_attnswap.transformers_hooks.cpu_flash_attention` is their one home,
#: where the contract relied on is written down and tested.
FlashOps = tuple[Callable[..., Any], Callable[..., Any]]


def unsupported_reason(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: AttentionMask,
                       dropout: float, rope: tuple[torch.Tensor, torch.Tensor] | None) -> str | None:
    """Why :func:`dagpam_attention_cpu` cannot run this call, or ``None`` if it can."""
    if not ENABLED:
        return "disabled"
    if torch.compiler.is_compiling():
        return "under torch.compile"
    if any(t.device.type != "cpu" for t in (query, key, value)):
        return "not on CPU"
    if query.dtype not in DTYPES or key.dtype != query.dtype or value.dtype != query.dtype:
        return f"dtype {query.dtype} (supported: float32, float64)"
    if dropout > 0:
        return "attention dropout"
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4 or query.numel() == 0 or key.numel() == 0:
        return "empty or not 4-D"
    if value.shape[-1] != query.shape[-1] or query.shape[1] % key.shape[1] != 0:
        return "value head size differs from query head size, or heads not a multiple of KV heads"
    if rope is not None and (rope[0].requires_grad or rope[1].requires_grad):
        return "rotary tables require grad"
    attn_mask, _ = mask.sdpa_args()
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        return "non-boolean mask"
    return None


def _float_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Boolean visibility (B|1, 1, Q, K) -> additive float mask (0 visible, -inf hidden), batch broadcast kept."""
    if mask is None:
        return None
    if mask.shape[0] > 1 and mask.stride(0) == 0:  # expanded over the batch: one copy is enough
        mask = mask[:1]
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def _bthd(x: torch.Tensor) -> bool:
    """Whether (B, H, Q, d) ``x`` is laid out (B, Q, H, d), as the flash kernels' outputs and Transformers' queries."""
    return x.transpose(1, 2).is_contiguous()


def _matmul(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ w`` for (B, H, Q, d) ``x`` in either layout, without the copy matmul makes of a (B, Q, H, d) one;
    written into ``out`` (a contiguous (B, Q, H, d) tensor) if given."""
    if out is not None or _bthd(x):
        return torch.matmul(x.transpose(1, 2), w, out=out).transpose(1, 2)
    return x @ w


def _slot(buf: torch.Tensor, b: int, h: int, q: int, d: int) -> torch.Tensor:
    """A contiguous (B, Q, H, d) view of the start of the flat buffer ``buf``."""
    return buf[: b * q * h * d].view(b, q, h, d)


def _scaled_grad(g: torch.Tensor, factor: torch.Tensor, buf: torch.Tensor | None) -> torch.Tensor:
    """``g · factor`` as (B, H, Q, d) laid out (B, Q, H, d) (the flash backward copies its ``grad_out`` into that
    layout otherwise), written into the flat buffer ``buf`` if given."""
    b, h, q, d = g.shape
    dst = g.new_empty((b, q, h, d)) if buf is None else _slot(buf, b, h, q, d)
    return torch.mul(g, factor, out=dst.transpose(1, 2))


def _relu_query(q: torch.Tensor, irope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """``ReLU`` of the pre-rotary query; ``irope``: the rotary tables' :func:`~.rope.inverse_tables` (a
    :class:`~.rope.Rotary`, which carries the layout)."""
    return torch.relu(q if irope is None else rope_ops.rope(q, *irope, inverse=True, layout=irope.layout))


def _neg_query(relu_q: torch.Tensor, w: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """``Q⁻`` for one chunk; ``w``: (d, d) or the chunk's (h, d, d); ``out``: where a shared ``w``'s product may go
    (a contiguous (B, Q, H, d) tensor)."""
    neg = _matmul(relu_q, w, out) if w.dim() == 2 else torch.einsum("bhqd,hde->bhqe", relu_q, w)
    return neg if rope is None else rope_ops.rope(neg, *rope, layout=rope.layout)


def _chunks(batch: int, heads: int, kv_heads: int, q_len: int, k_len: int, dim: int,
            itemsize: int) -> list[tuple[slice, slice]]:
    """(query-head slice, KV-head slice) per chunk: whole KV groups, evenly split, about ``CHUNK_BYTES`` per chunk
    slice; a call whose (B, H, max(Q, K), d) tensors are under ``CHUNK_ABOVE_BYTES`` is one chunk.

    A chunk holds at least ``torch.get_num_threads()`` (batch x query head) pairs: the CPU flash backward splits
    its work over those pairs only, so a one-head chunk runs on one thread (at T=8192 on 2 threads, one-head
    chunks took 2.85x native SDPA's fwd+bwd, two-head chunks 2.06x).
    """
    rep = heads // kv_heads
    per_kv = batch * max(rep * q_len, k_len) * dim * itemsize
    if per_kv * kv_heads < CHUNK_ABOVE_BYTES:
        n = 1
    else:
        min_kv_per_chunk = -(-torch.get_num_threads() // (batch * rep))
        n = max(1, min(kv_heads // min_kv_per_chunk, -(-per_kv * kv_heads // CHUNK_BYTES)))
    step = -(-kv_heads // n)
    return [(slice(k0 * rep, min(k0 + step, kv_heads) * rep), slice(k0, min(k0 + step, kv_heads)))
            for k0 in range(0, kv_heads, step)]


def _rope_pair(cos: torch.Tensor | None, sin: torch.Tensor | None, dtype: torch.dtype, layout: rope_ops.RotaryLayout
               ) -> tuple[rope_ops.Rotary | None, rope_ops.Rotary | None]:
    """The rotary tables per head in ``dtype`` and their :func:`~.rope.inverse_tables` (exact for scaled rotary
    too), each a :class:`~.rope.Rotary` with ``layout``, or ``(None, None)`` without rotary."""
    if cos is None:
        return None, None
    rope = rope_ops.head_tables(cos, sin, dtype)
    return rope_ops.Rotary(*rope, layout), rope_ops.Rotary(*rope_ops.inverse_tables(*rope), layout)


class _FlashBackward:
    """The CPU flash backward with one call's mask, causality and scale: ``(grad_out, q, k, v, out, lse) ->
    (dq, dk, dv)``, laid out (B, Q, H, d)."""

    def __init__(self, kernel: Callable[..., Any], is_causal: bool, float_mask: torch.Tensor | None,
                 scale: float) -> None:
        self.kernel, self.is_causal, self.float_mask, self.scale = kernel, is_causal, float_mask, scale

    def __call__(self, grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 out: torch.Tensor, lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.kernel(grad_out, q, k, v, out, lse, 0.0, self.is_causal, attn_mask=self.float_mask,
                           scale=self.scale)


def _work_buffers(query: torch.Tensor, chunks: list[tuple[slice, slice]]) -> tuple[torch.Tensor, torch.Tensor]:
    """With several chunks, two flat buffers of the largest chunk's (B, Q, H, d) size for the backward's own
    temporaries (pos then Q⁻; the scaled gradients), so that only the flash kernels' outputs come and go from one
    chunk to the next."""
    b, _, q_len, d = query.shape
    h_max = max(qs.stop - qs.start for qs, _ in chunks)
    return query.new_empty(b * q_len * h_max * d), query.new_empty(b * q_len * h_max * d)


def _recover_pos(out: torch.Tensor, neg: torch.Tensor, lam_p: torch.Tensor, lam_n: torch.Tensor, tied: bool,
                 slot: torch.Tensor | None) -> torch.Tensor:
    """One chunk's positive branch from the output: ``pos = (out + λ⁻·neg) / (1+λ⁺)``; tied λ as the lerp
    ``lerp(out, neg, λ/(1+λ))``. Written into ``slot`` (a contiguous (B, Q, H, d) view) if given."""
    pos_out = None if slot is None else slot.transpose(1, 2)
    if tied:
        return torch.lerp(out, neg, lam_n / (1 + lam_p), out=pos_out)
    return torch.addcmul(out, lam_n, neg, out=pos_out).div_(1 + lam_p)


def _lambda_grads(g: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, qs: slice, dlp: torch.Tensor | None,
                  dln: torch.Tensor | None, tied: bool) -> None:
    """One chunk's λ gradients into ``dlp[qs]`` and ``dln[qs]`` (``None``: not needed): ``dλ⁺_h = Σ g·pos``,
    ``dλ⁻_h = −Σ g·neg``; tied λ (``dln`` is ``None``): ``Σ g·(pos − neg)``, into ``dlp``."""
    if tied and dlp is not None:
        dlp[qs] = torch.sum(g * torch.sub(pos, neg), dim=(0, 2, 3))
        return
    if dlp is not None:
        dlp[qs] = torch.sum(g * pos, dim=(0, 2, 3))
    if dln is not None:
        dln[qs] = torch.sum(g * neg, dim=(0, 2, 3)).neg_()


def _store_positive_grads(grads: list[torch.Tensor | None], dqkv: list[torch.Tensor | None],
                          inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], qs: slice, ks: slice) -> None:
    """Put one chunk's positive-branch ``grads`` (dq, dk, dv, the flash kernel's outputs; the list is emptied)
    into the gradient buffers ``dqkv``, which are laid out like ``inputs`` (q, k, v) so that AccumulateGrad takes
    them as they are (the kernel's outputs are laid out (B, Q, H, d), which it would copy for inputs laid out
    (B, H, Q, d)). With several chunks the buffers exist and take the chunk's slices (``qs`` for q, ``ks`` for
    k and v). With one chunk (buffers ``None``) a kernel output laid out like its input *is* the buffer, else it
    is copied into one; one at a time, so that at most one extra copy is alive."""
    for i, (x, part) in enumerate(zip(inputs, (qs, ks, ks))):
        grad, grads[i] = grads[i], None
        if dqkv[i] is None:
            dqkv[i] = grad if grad.stride() == x.stride() else torch.empty_like(x).copy_(grad)
        else:
            dqkv[i][:, part] = grad
        del grad


def _add_negative_grads(flash: _FlashBackward, g: torch.Tensor, lam_n: torch.Tensor, buf: torch.Tensor | None,
                        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, neg: torch.Tensor, lse: torch.Tensor,
                        w: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                        irope: tuple[torch.Tensor, torch.Tensor] | None, slot: torch.Tensor | None,
                        dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, dw: torch.Tensor | None) -> None:
    """Add one chunk's negative-branch gradients into ``dq, dk, dv`` (the chunk's slices of the buffers) and
    ``dw`` (W⁻'s, or the chunk's heads of a per-head W⁻; ``None``: not needed). Recomputes ``ReLU(Q⁺)`` and ``Q⁻``
    (into ``slot`` if given), runs the negative flash backward on ``g·(−λ⁻)`` (into ``buf`` if given), then
    back through W⁻, the ReLU and the rotary; each temporary is dropped as soon as it is used."""
    qn = _neg_query(_relu_query(q, irope), w, rope, out=slot)
    dqn, dk_c, dv_c = flash(_scaled_grad(g, -lam_n, buf), qn, k, v, neg, lse)
    del qn
    dk.add_(dk_c)
    dv.add_(dv_c)
    del dk_c, dv_c
    if rope is not None:
        dqn = rope_ops.rope_adjoint(dqn, *rope, layout=rope.layout)  # gradient of the pre-rotary Q⁻
    # recomputed rather than held through the flash backward; without rope and W⁻ grad, q itself will do
    relu_q = _relu_query(q, irope) if dw is not None or rope is not None else q
    if dw is not None:
        if w.dim() == 2:
            # rows in (B, Q, H) order: no copy of dqn (kernel layout), nor of relu_q if the query is laid out so
            dw.add_(torch.tensordot(relu_q.transpose(1, 2), dqn.transpose(1, 2), dims=([0, 1, 2], [0, 1, 2])))
        else:
            dw.add_(torch.einsum("bhqd,bhqe->hde", relu_q, dqn))
    dr = _matmul(dqn, w.mT) if w.dim() == 2 else torch.einsum("bhqe,hde->bhqd", dqn, w)
    del dqn
    dr = torch.ops.aten.threshold_backward(dr, relu_q, 0)  # ReLU backward: dr where ReLU's input > 0
    del relu_q
    if rope is not None:
        dr = rope_ops.rope_adjoint(dr, *irope, inverse=True, layout=irope.layout)
    dq.add_(dr)


class DaGPAMCPU(torch.autograd.Function):
    """Autograd function; call through :func:`dagpam_attention_cpu`."""

    @staticmethod
    def forward(ctx, query, key, value, weight, lam_pos, lam_neg, cos, sin, bool_mask, is_causal: bool, scale: float,
                needs_grad: bool, flash: FlashOps, layout: rope_ops.RotaryLayout):
        _flash = flash[0]
        b, h, q_len, d = query.shape
        dtype = query.dtype
        rope, irope = _rope_pair(cos, sin, dtype, layout)
        w = weight.to(dtype)
        lp = lam_pos.detach().to(dtype)
        ln = lam_neg.detach().to(dtype)
        tied = lam_pos is lam_neg
        fmask = _float_mask(bool_mask, dtype)
        chunks = _chunks(b, h, key.shape[1], q_len, key.shape[2], d, query.element_size())
        # pos = (out + λ⁻ neg) / (1+λ⁺) loses about log2(1 + |λ⁻|/|1+λ⁺|) bits;
        # keep pos itself when that is large
        ratio = (ln.abs() / (1 + lp).abs()).max()
        recover = bool(torch.isfinite(ratio)) and float(ratio) <= RECOVER_LIMIT
        # With several chunks, everything that outlives a chunk lives in whole-tensor buffers allocated up front and
        # the chunk's temporaries are all freed before the next chunk: long-lived chunk-sized tensors mixed with
        # temporaries fragment the malloc heap (glibc's dynamic mmap threshold puts chunk-sized blocks there),
        # which showed up as up to 60 MiB of extra peak RSS at T=8192, varying from run to run. With one chunk
        # the kernel outputs are kept as they are (no copies).
        single = len(chunks) == 1
        out = torch.empty_like(query)
        saved_neg = torch.empty_like(query) if needs_grad and not single else None
        saved_pos = torch.empty_like(query) if needs_grad and not single and not recover else None
        lse_pos = lse_neg = None
        for qs, ks in chunks:
            q_c, k_c, v_c = query[:, qs], key[:, ks], value[:, ks]
            pos, lse_p = _flash(q_c, k_c, v_c, 0.0, is_causal, attn_mask=fmask, scale=scale)
            w_c = w if w.dim() == 2 else w[qs]
            qn = _neg_query(_relu_query(q_c, irope), w_c, rope)
            neg, lse_n = _flash(qn, k_c, v_c, 0.0, is_causal, attn_mask=fmask, scale=scale)
            del qn
            lam_p = lp[qs].view(1, -1, 1, 1)
            lam_n = ln[qs].view(1, -1, 1, 1)
            if tied:
                torch.lerp(pos, neg, -lam_n, out=out[:, qs])
            else:
                torch.mul(pos, 1 + lam_p, out=out[:, qs]).addcmul_(lam_n, neg, value=-1.0)
            if needs_grad and single:
                saved_neg, lse_pos, lse_neg = neg, lse_p, lse_n
                saved_pos = None if recover else pos
            elif needs_grad:
                if lse_pos is None:
                    lse_pos = lse_p.new_empty((b, h, q_len))
                    lse_neg = lse_p.new_empty((b, h, q_len))
                saved_neg[:, qs] = neg
                lse_pos[:, qs] = lse_p
                lse_neg[:, qs] = lse_n
                if saved_pos is not None:
                    saved_pos[:, qs] = pos
            del pos, neg, lse_p, lse_n
        ctx.chunks, ctx.is_causal, ctx.scale, ctx.tied, ctx.flash, ctx.layout = chunks, is_causal, scale, tied, flash, layout
        if needs_grad:
            ctx.save_for_backward(query, key, value, weight, lam_pos, lam_neg, out, cos, sin, bool_mask,
                                  saved_neg, lse_pos, lse_neg, saved_pos)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        """Per chunk: recover ``pos`` (or take the saved one), the λ gradients, the positive flash backward into
        the q, k, v buffers, then (unless the chunk's λ⁻ are all 0) the negative branch added on top."""
        query, key, value, weight, lam_pos, lam_neg, out, cos, sin, bool_mask, negs, lse_pos, lse_neg, poses = \
            ctx.saved_tensors
        dtype = query.dtype
        rope, irope = _rope_pair(cos, sin, dtype, ctx.layout)
        w, lp, ln = weight.to(dtype), lam_pos.to(dtype), lam_neg.to(dtype)
        tied = ctx.tied  # the same tensor for λ⁺ and λ⁻: its gradient is returned once
        flash = _FlashBackward(ctx.flash[1], ctx.is_causal, _float_mask(bool_mask, dtype), ctx.scale)
        need_q, need_k, need_v, need_w, need_lp, need_ln = ctx.needs_input_grad[:6]
        single = len(ctx.chunks) == 1
        dqkv = [None] * 3 if single else [torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)]
        dw = torch.zeros_like(w) if need_w else None
        dlp = torch.empty_like(lp) if need_lp else None
        dln = torch.empty_like(ln) if need_ln and not tied else None
        skip_neg = (ln == 0).tolist()
        buf_a, buf_b = (None, None) if single else _work_buffers(query, ctx.chunks)
        b, _, q_len, d = query.shape
        for qs, ks in ctx.chunks:
            g = grad_out[:, qs]
            q_c, k_c, v_c = query[:, qs], key[:, ks], value[:, ks]
            lam_p = lp[qs].view(1, -1, 1, 1)
            lam_n = ln[qs].view(1, -1, 1, 1)
            neg = negs[:, qs]
            slot = None if single else _slot(buf_a, b, qs.stop - qs.start, q_len, d)  # pos, then Q⁻
            pos = poses[:, qs] if poses is not None else _recover_pos(out[:, qs], neg, lam_p, lam_n, tied, slot)
            _lambda_grads(g, pos, neg, qs, dlp, dln, tied)
            grads = list(flash(_scaled_grad(g, 1 + lam_p, buf_b), q_c, k_c, v_c, pos, lse_pos[:, qs]))
            del pos
            _store_positive_grads(grads, dqkv, (query, key, value), qs, ks)
            if all(skip_neg[qs]):  # λ⁻ = 0: the negative branch contributes exactly 0 to q, k, v and W⁻
                continue
            w_c = w if w.dim() == 2 else w[qs]
            dw_c = None if dw is None else (dw if w.dim() == 2 else dw[qs])
            _add_negative_grads(flash, g, lam_n, buf_b, q_c, k_c, v_c, neg, lse_neg[:, qs], w_c,
                                rope, irope, slot, dqkv[0][:, qs], dqkv[1][:, ks], dqkv[2][:, ks], dw_c)
        dq, dk, dv = dqkv
        return (dq if need_q else None, dk if need_k else None, dv if need_v else None,
                None if dw is None else dw.to(weight.dtype),
                None if dlp is None else dlp.to(lam_pos.dtype), None if dln is None else dln.to(lam_neg.dtype),
                None, None, None, None, None, None, None, None)


def dagpam_attention_cpu(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, weight: torch.Tensor, lam_pos: torch.Tensor,
    lam_neg: torch.Tensor, mask: AttentionMask, scale: float, rope: tuple[torch.Tensor, torch.Tensor] | None = None, *,
    flash: FlashOps,
) -> torch.Tensor:
    """``(1+λ⁺)·softmax(Q⁺Kᵀs)V − λ⁻·softmax(Q⁻Kᵀs)V`` with ``Q⁻ = rope(ReLU(unrope(Q⁺)) W⁻)``.

    query: (B, H, Q, d) (rotated, as the model passes it); key, value: (B, H_kv, K, d), not repeated;
    weight: W⁻, (d, d) or (H, d, d); lam_pos, lam_neg: (H,), the *same* tensor for tied λ; rope: ``(cos, sin)``
    (B, Q, d) (a :class:`~.rope.Rotary` for other layouts than full ``rotate_half``) or None; ``flash``: :data:`FlashOps`, PyTorch's CPU flash-attention kernels
    (:func:`hf_attnswap.transformers_hooks.cpu_flash_attention`). Check :func:`unsupported_reason` first. Returns
    (B, H, Q, d), laid out like ``query``.
    """
    attn_mask, is_causal = mask.sdpa_args()
    cos, sin = rope if rope is not None else (None, None)
    layout = rope_ops.layout_of(rope) if rope is not None else rope_ops.LLAMA
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (query, key, value, weight, lam_pos, lam_neg))
    return DaGPAMCPU.apply(query, key, value, weight, lam_pos, lam_neg, cos, sin, attn_mask, is_causal, float(scale),
                           needs_grad, flash, layout)
