"""The low-memory daGPAM CPU kernel (``hf_attnswap/kernels/dagpam_cpu.py``) against the reference
``dagpam_attention``: forward and every gradient (q, k, v, W⁻, λ), fp64 and fp32, GQA, several head chunks
(uneven), KV-cache offsets, padding, rotary, tied/untied λ, shared/per-head W⁻, λ = 0 and λ near −1; and the
calls that must take the autograd (two-SDPA) path instead."""

from __future__ import annotations

import pytest
import torch

from hf_attnswap.kernels import dagpam_cpu
from hf_attnswap.kernels.mask import AttentionMask
from hf_attnswap.mechanisms.common import AttentionContext, repeat_kv
from hf_attnswap.mechanisms.dagpam import DaGPAMParameters, dagpam_attention, dagpam_attention_fused
from hf_attnswap.mechanisms.dagpam import DaGPAMOptions
from hf_attnswap.transformers_hooks import cpu_flash_attention


@pytest.fixture
def calls(monkeypatch):
    """Counts the calls that reach the kernel."""
    seen = []
    original = dagpam_cpu.DaGPAMCPU.apply

    def spy(*args):
        seen.append(args[0].shape)
        return original(*args)

    monkeypatch.setattr(dagpam_cpu.DaGPAMCPU, "apply", spy)
    return seen


@pytest.fixture
def chunked(monkeypatch):
    """Force head chunking on tiny shapes: chunks of at most two KV heads."""

    def force(kv_heads_per_chunk: int = 2):
        monkeypatch.setattr(dagpam_cpu, "CHUNK_ABOVE_BYTES", 0)
        monkeypatch.setattr(dagpam_cpu, "CHUNK_BYTES", 1)  # one KV head per chunk ...
        if kv_heads_per_chunk > 1:  # ... or as many as asked
            original = dagpam_cpu._chunks

            def chunks(batch, heads, kv_heads, *rest):
                rep = heads // kv_heads
                step = kv_heads_per_chunk
                return [(slice(k * rep, min(k + step, kv_heads) * rep), slice(k, min(k + step, kv_heads)))
                        for k in range(0, kv_heads, step)]

            monkeypatch.setattr(dagpam_cpu, "_chunks", chunks)
            return original

    return force


def make_mask(case: str, b: int):
    """(q_len, k_len, dense bool mask or None, causal_offset or None), as tests/test_fast_paths.py."""
    if case == "causal":
        q, k = 13, 13
        return q, k, torch.tril(torch.ones(q, k, dtype=torch.bool)).expand(b, 1, q, k), 0
    if case == "padded":
        q, k = 11, 11
        m = torch.tril(torch.ones(q, k, dtype=torch.bool)).expand(b, 1, q, k).clone()
        m[1, :, :, :4] = False  # left padding: queries 0..3 of row 1 see nothing
        return q, k, m, None
    if case == "cache_chunk":  # 3 new queries after 7 cached keys
        q, k = 3, 10
        return q, k, torch.tril(torch.ones(q, k, dtype=torch.bool), diagonal=7).expand(b, 1, q, k), 7
    if case == "decode":
        return 1, 9, torch.ones(b, 1, 1, 9, dtype=torch.bool), 8
    if case == "bidirectional":
        return 6, 9, None, None
    raise ValueError(case)


def run(case="causal", dtype=torch.float64, heads=6, kv_heads=3, dim=8, b=2, rotary=False, set_lambda=None,
        layout_bthd=False, **options):
    """Reference and fast outputs and gradients (q, k, v, then the daGPAM parameters), on queries that see a key."""
    torch.manual_seed(0)
    q_len, k_len, dense, offset = make_mask(case, b)
    opts = DaGPAMOptions(**{"lambda_init": 0.3, "neg_query_init": "normal", **options})
    params = DaGPAMParameters(heads, dim, opts).to(dtype)
    if set_lambda is not None:
        with torch.no_grad():
            for i, p in enumerate(params._lambda_params()):
                p.copy_(torch.as_tensor(set_lambda[i] if isinstance(set_lambda, tuple) else set_lambda, dtype=dtype))
    if layout_bthd:  # laid out as Transformers' attention passes it: (B, Q, H, d) storage, viewed (B, H, Q, d)
        q = torch.randn(b, q_len, heads, dim, dtype=dtype).transpose(1, 2).requires_grad_()
    else:
        q = torch.randn(b, heads, q_len, dim, dtype=dtype, requires_grad=True)
    k = torch.randn(b, kv_heads, k_len, dim, dtype=dtype, requires_grad=True)
    v = torch.randn(b, kv_heads, k_len, dim, dtype=dtype, requires_grad=True)
    rope = None
    if rotary:
        ang = torch.randn(b, q_len, dim // 2, dtype=dtype)
        rope = (torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin())
    ctx = AttentionContext(scaling=dim**-0.5, options=opts, params=params, rope=rope)
    ref_mask = dense if dense is not None else torch.ones(1, 1, q_len, k_len, dtype=torch.bool)
    rep = heads // kv_heads
    ref, _ = dagpam_attention(q, repeat_kv(k, rep), repeat_kv(v, rep), ref_mask, ctx)
    fast = dagpam_attention_fused(q, k, v, AttentionMask(dense, q_len, k_len, offset), ctx)
    seen = ref_mask.any(-1, keepdim=True).expand(b, heads, q_len, 1).to(dtype)
    g = torch.randn_like(ref)
    inputs = [q, k, v] + [p for p in params.parameters() if p.requires_grad]
    grads = [torch.autograd.grad((out * g * seen).sum(), inputs, allow_unused=True) for out in (ref, fast)]
    return ref * seen, fast * seen, grads[0], grads[1]


def assert_match(ref, fast, g_ref, g_fast, dtype):
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-11, rtol=1e-10)
    torch.testing.assert_close(fast, ref, **tol)
    assert len(g_ref) == len(g_fast)
    for a, b in zip(g_fast, g_ref, strict=True):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", ["causal", "padded", "cache_chunk", "decode", "bidirectional"])
@pytest.mark.parametrize("kv_heads", [6, 3, 1])
@pytest.mark.parametrize("n_chunks", [1, "uneven"])
def test_kernel_matches_reference(case, dtype, kv_heads, n_chunks, calls, chunked):
    if n_chunks == "uneven":
        chunked(2)  # 3 KV heads -> chunks of 2 and 1; 6 -> 2+2+2; 1 -> one chunk
    ref, fast, g_ref, g_fast = run(case, dtype, kv_heads=kv_heads)
    assert len(calls) == 1
    assert_match(ref, fast, g_ref, g_fast, dtype)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("proj", ["shared", "per_head"])
@pytest.mark.parametrize("rotary", [False, True])
@pytest.mark.parametrize("constraint", ["none", "nonneg"])
def test_kernel_options_match_reference(tied, proj, rotary, constraint, calls, chunked):
    chunked(1)  # one KV head per chunk
    ref, fast, g_ref, g_fast = run("causal", tied_lambda=tied, neg_query_proj=proj, rotary=rotary,
                                   lambda_constraint=constraint)
    assert len(calls) == 1
    assert_match(ref, fast, g_ref, g_fast, torch.float64)


@pytest.mark.parametrize("chunks", ["one", "per_kv_head"])
@pytest.mark.parametrize("case", ["causal", "cache_chunk"])
def test_kernel_with_transformers_layout(case, chunks, calls, chunked):
    """Queries laid out (B, Q, H, d), as Transformers passes them (one chunk: the kernel's dq is used as is)."""
    if chunks == "per_kv_head":
        chunked(1)
    ref, fast, g_ref, g_fast = run(case, layout_bthd=True, rotary=True)
    assert len(calls) == 1
    assert_match(ref, fast, g_ref, g_fast, torch.float64)


@pytest.mark.parametrize("tied", [True, False])
def test_lambda_zero_gives_exactly_zero_w_gradient(tied, calls, chunked):
    chunked(1)
    ref, fast, g_ref, g_fast = run("causal", set_lambda=0.0, tied_lambda=tied)
    assert len(calls) == 1
    assert_match(ref, fast, g_ref, g_fast, torch.float64)
    w_grad = g_fast[3]  # q, k, v, then neg_query_weight
    assert w_grad.shape == (8, 8) and torch.equal(w_grad, torch.zeros_like(w_grad))
    assert all(g.abs().sum() > 0 for g in g_fast[4:]), "λ still gets a gradient at 0"


@pytest.mark.parametrize("chunks", ["one", "per_kv_head"])
@pytest.mark.parametrize("lam", [-0.9, -1.0, -1.5, 7.0, (0.5, -0.95), (-1.0, 0.2), 0.3, (0.3, 0.6)])
def test_lambdas_where_pos_cannot_be_recovered_from_out(lam, chunks, calls, chunked, monkeypatch):
    """|λ⁻| / |1+λ⁺| > RECOVER_LIMIT (or 1+λ⁺ = 0): the forward keeps pos instead of recovering it. The last
    two λ are recoverable; RECOVER_LIMIT = 0 makes the kernel keep pos for them too."""
    if chunks == "per_kv_head":
        chunked(1)
    if lam in (0.3, (0.3, 0.6)):
        monkeypatch.setattr(dagpam_cpu, "RECOVER_LIMIT", 0.0)
    tied = not isinstance(lam, tuple)
    ref, fast, g_ref, g_fast = run("padded", set_lambda=lam, tied_lambda=tied)
    assert len(calls) == 1
    assert_match(ref, fast, g_ref, g_fast, torch.float64)


def test_lambda_mixed_across_heads(calls, chunked):
    """Some heads at λ=0 (their chunks skip the negative branch), others not, and one head at λ = −1."""
    chunked(1)
    ref, fast, g_ref, g_fast = run("causal", set_lambda=torch.tensor([0.0, 0.0, 0.4, 0.0, -1.0, 0.0]).tolist())
    assert len(calls) == 1
    assert_match(ref, fast, g_ref, g_fast, torch.float64)


def test_frozen_lambda_and_weight(calls):
    torch.manual_seed(0)
    opts = DaGPAMOptions(lambda_init=0.2, trainable_lambda=False)
    params = DaGPAMParameters(4, 8, opts).double()
    params.neg_query_weight.requires_grad_(False)
    q = torch.randn(1, 4, 5, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 4, 5, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 4, 5, 8, dtype=torch.float64)  # no gradient wanted for v either
    ctx = AttentionContext(scaling=0.3, options=opts, params=params)
    mask = torch.tril(torch.ones(5, 5, dtype=torch.bool))[None, None]
    ref, _ = dagpam_attention(q, k, v, mask, ctx)
    fast = dagpam_attention_fused(q, k, v, AttentionMask(mask, 5, 5, 0), ctx)
    assert len(calls) == 1
    for a, b in zip(torch.autograd.grad(fast.sum(), (q, k)), torch.autograd.grad(ref.sum(), (q, k)), strict=True):
        torch.testing.assert_close(a, b)


def test_gradcheck_with_chunks(chunked):
    chunked(1)
    torch.manual_seed(0)
    q = torch.randn(1, 4, 5, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 7, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 7, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    lam_p = torch.tensor([0.3, -0.2, 0.0, 1.1], dtype=torch.float64, requires_grad=True)
    lam_n = torch.tensor([0.1, 0.5, 0.2, -0.4], dtype=torch.float64, requires_grad=True)
    mask = AttentionMask(torch.tril(torch.ones(5, 7, dtype=torch.bool), diagonal=2)[None, None], 5, 7, 2)

    def fn(q, k, v, w, lam_p, lam_n):
        return dagpam_cpu.dagpam_attention_cpu(q, k, v, w, lam_p, lam_n, mask, 0.7, flash=cpu_flash_attention())

    assert torch.autograd.gradcheck(fn, (q, k, v, w, lam_p, lam_n))
    assert torch.autograd.gradcheck(lambda q, k, v, w, lam: fn(q, k, v, w, lam, lam), (q, k, v, w, lam_p))


def test_no_grad_inference_matches(calls):
    torch.manual_seed(0)
    opts = DaGPAMOptions(lambda_init=0.3)
    params = DaGPAMParameters(4, 8, opts)
    q, k, v = (torch.randn(2, 4, 6, 8) for _ in range(3))
    ctx = AttentionContext(scaling=0.35, options=opts, params=params)
    with torch.no_grad():
        fast = dagpam_attention_fused(q, k, v, AttentionMask(None, 6, 6, 0), ctx)
        ref, _ = dagpam_attention(q, k, v, torch.tril(torch.ones(6, 6, dtype=torch.bool))[None, None], ctx)
    assert len(calls) == 1 and not fast.requires_grad
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-4)


def _call(dtype=torch.float32, dropout=0.0, params_fn=None, rope_grad=False):
    torch.manual_seed(0)
    opts = DaGPAMOptions(lambda_init=0.3)
    params = DaGPAMParameters(4, 8, opts).to(dtype)
    if params_fn is not None:
        params = params_fn(params)
    q, k, v = (torch.randn(1, 4, 6, 8, dtype=dtype, requires_grad=True) for _ in range(3))
    rope = None
    if rope_grad:
        ang = torch.randn(1, 6, 4, requires_grad=True)
        rope = (torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin())
    ctx = AttentionContext(scaling=0.35, dropout=dropout, options=opts, params=params, rope=rope)
    return dagpam_attention_fused(q, k, v, AttentionMask(None, 6, 6, 0), ctx)


class _Wrapper(torch.nn.Module):  # stands for PEFT's ModulesToSaveWrapper: same forward, but not the module itself
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


@pytest.mark.parametrize("why", ["dropout", "bfloat16", "float16", "wrapped", "hooked", "rope_grad", "disabled",
                                 "compiling"])
def test_fallbacks_take_the_autograd_path(why, calls, monkeypatch):
    kwargs = {}
    if why == "dropout":
        kwargs["dropout"] = 0.1
    elif why in ("bfloat16", "float16"):
        kwargs["dtype"] = getattr(torch, why)
    elif why == "wrapped":
        kwargs["params_fn"] = _Wrapper
    elif why == "hooked":
        def hook(params):
            params.register_forward_hook(lambda *a: None)
            return params
        kwargs["params_fn"] = hook
    elif why == "rope_grad":
        kwargs["rope_grad"] = True
    elif why == "disabled":
        monkeypatch.setattr(dagpam_cpu, "ENABLED", False)
    elif why == "compiling":
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    out = _call(**kwargs)
    out.float().sum().backward()
    assert calls == []


def test_plain_call_uses_the_kernel(calls):
    _call().sum().backward()
    assert len(calls) == 1


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_model_gradients_match_the_autograd_path(arch, load, monkeypatch, calls):
    """A training step through a tiny model (Llama: GQA + rotary): the kernel and the two-SDPA path agree."""
    from conftest import random_ids

    ids = random_ids(2, 9)
    grads = []
    for enabled in (True, False):
        monkeypatch.setattr(dagpam_cpu, "ENABLED", enabled)
        torch.manual_seed(0)  # the same W⁻ draw for both models
        model = load(arch, "dagpam", lambda_init=0.3, neg_query_init="normal", backend="fused").train()
        loss = torch.nn.functional.cross_entropy(model(ids).logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
        assert len(calls) == 2  # two layers, kernel only while enabled
    assert grads[0].keys() == grads[1].keys() and any(".attnswap." in n for n in grads[0])
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-5, rtol=1e-4, msg=n)


@pytest.mark.parametrize(("threads", "batch", "kv_heads", "want"), [
    (1, 1, 12, [1] * 12),  # 2 MiB per head at T=8192: one head per chunk
    (2, 1, 12, [2] * 6),  # ... but at least one head per thread, as the flash backward splits work over heads
    (4, 1, 12, [4] * 3),
    (2, 2, 12, [1] * 12),  # two batch rows already give each thread a (row, head) pair
    (32, 1, 12, [12]),  # more threads than heads: one chunk
])
def test_chunks_give_every_thread_a_head(monkeypatch, threads, batch, kv_heads, want):
    monkeypatch.setattr(dagpam_cpu, "CHUNK_ABOVE_BYTES", 16 << 20)
    monkeypatch.setattr(dagpam_cpu, "CHUNK_BYTES", 2 << 20)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    chunks = dagpam_cpu._chunks(batch, 12, kv_heads, 8192, 8192, 64, 4)
    assert [qs.stop - qs.start for qs, _ in chunks] == want
    assert chunks[0][0].start == 0 and chunks[-1][0].stop == 12
    assert all(a[0].stop == b[0].start for a, b in zip(chunks, chunks[1:]))


def test_small_calls_are_one_chunk():
    assert len(dagpam_cpu._chunks(1, 12, 12, 4096, 4096, 64, 4)) == 1  # 12 MiB < CHUNK_ABOVE_BYTES


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("into_slot", [False, True])
def test_recover_pos_inverts_the_output_combination(tied, into_slot):
    """``_recover_pos`` gives back the positive branch from ``out = (1+λ⁺)·pos − λ⁻·neg`` (tied: λ⁺ = λ⁻)."""
    torch.manual_seed(0)
    b, h, q, d = 2, 3, 5, 4
    pos, neg = torch.randn(b, h, q, d, dtype=torch.float64), torch.randn(b, h, q, d, dtype=torch.float64)
    lam_p = torch.tensor([0.3, -0.2, 0.0], dtype=torch.float64).view(1, -1, 1, 1)
    lam_n = lam_p if tied else torch.tensor([0.1, 0.5, -0.4], dtype=torch.float64).view(1, -1, 1, 1)
    out = (1 + lam_p) * pos - lam_n * neg
    slot = torch.empty(b * q * h * d, dtype=torch.float64).view(b, q, h, d) if into_slot else None
    got = dagpam_cpu._recover_pos(out, neg, lam_p, lam_n, tied, slot)
    torch.testing.assert_close(got, pos)
    if into_slot:
        assert got.data_ptr() == slot.data_ptr() and got.shape == (b, h, q, d)


def test_lambda_grads_per_head():
    torch.manual_seed(0)
    g, pos, neg = (torch.randn(2, 4, 3, 5, dtype=torch.float64) for _ in range(3))
    qs = slice(1, 3)
    dlp, dln = torch.zeros(6, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)
    dagpam_cpu._lambda_grads(g, pos, neg, slice(1, 5), dlp, dln, tied=False)
    torch.testing.assert_close(dlp[1:5], (g * pos).sum((0, 2, 3)))
    torch.testing.assert_close(dln[1:5], -(g * neg).sum((0, 2, 3)))
    assert dlp[0] == 0 and dlp[5] == 0
    tied = torch.zeros(6, dtype=torch.float64)
    dagpam_cpu._lambda_grads(g[:, :2], pos[:, :2], neg[:, :2], qs, tied, None, tied=True)
    torch.testing.assert_close(tied[qs], (g[:, :2] * (pos[:, :2] - neg[:, :2])).sum((0, 2, 3)))
    dagpam_cpu._lambda_grads(g, pos, neg, qs, None, None, tied=False)  # frozen λ: nothing to do


def test_store_positive_grads_keeps_a_kernel_output_laid_out_like_its_input():
    """One chunk: an output with its input's strides is the gradient buffer itself, another is copied into one laid
    out like the input; several chunks: the chunk's slices of existing buffers."""
    q = torch.randn(2, 4, 3, 5)  # (B, H, Q, d) contiguous
    k = torch.randn(2, 4, 2, 5).transpose(1, 2)  # (B, H_kv, K, d) view of (B, K, H_kv, d) storage
    v = torch.randn(2, 2, 4, 5)
    dq_kernel = torch.randn(2, 3, 4, 5).transpose(1, 2)  # the kernel's (B, Q, H, d) layout: unlike q
    dk_kernel = torch.randn(2, 4, 2, 5).transpose(1, 2)  # like k
    dv_kernel = torch.randn(2, 4, 2, 5).transpose(1, 2)  # unlike v
    grads, dqkv = [dq_kernel, dk_kernel, dv_kernel], [None, None, None]
    dagpam_cpu._store_positive_grads(grads, dqkv, (q, k, v), slice(0, 4), slice(0, 2))
    assert grads == [None, None, None]
    assert dqkv[1] is dk_kernel
    for buf, x, kernel in zip(dqkv, (q, k, v), (dq_kernel, dk_kernel, dv_kernel)):
        assert buf.stride() == x.stride() and torch.equal(buf, kernel)
    dqkv = [torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)]
    part = [torch.ones(2, 2, 3, 5), torch.ones(2, 1, 4, 5), torch.ones(2, 1, 4, 5)]
    dagpam_cpu._store_positive_grads(part, dqkv, (q, k, v), slice(2, 4), slice(1, 2))
    assert dqkv[0][:, 2:].eq(1).all() and dqkv[0][:, :2].eq(0).all()
    assert dqkv[1][:, 1:].eq(1).all() and dqkv[1][:, :1].eq(0).all() and dqkv[2][:, 1:].eq(1).all()
