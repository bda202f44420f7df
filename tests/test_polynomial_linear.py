"""Polynomial attention of degree 2 as linear attention (backend "linear", kernels/polynomial_linear.py) against
the reference: features, kernel forward and backward (causal, KV-cache offset, no mask, key padding, GQA,
ragged chunks, each length scale), the constant-memory decode state, the backend's errors, and whole models."""

from __future__ import annotations

import pytest
import torch
from conftest import PAD, random_ids, tiny_config
from transformers import AutoModelForCausalLM, DynamicCache

from hf_attnswap import OptionError
from hf_attnswap.kernels import polynomial_linear
from hf_attnswap.kernels.mask import AttentionMask
from hf_attnswap.kernels.polynomial_linear import (
    PolynomialLinearState,
    _features_t,
    _quadratic_grad,
    _symmetric_matrix,
    feature_dim,
    polynomial_features,
    polynomial_linear_attention,
)
from hf_attnswap.mechanisms.common import AttentionContext, repeat_kv
from hf_attnswap.mechanisms.polynomial import (
    length_scale_vector,
    linear_decode_state,
    linear_mask_layout,
    polynomial_attention,
)
from hf_attnswap.mechanisms.polynomial import PolynomialLinearCache, PolynomialOptions
from hf_attnswap.registry import get_mechanism, select_backend, use_backend

H, HKV, D = 4, 2, 8
SCALES = {"visible": {}, "fixed": {"fixed_length": 7}, "none": {}}


def _mask(q):
    """The causal mask of a prefill of ``q``'s length (what select_backend's predicates see)."""
    return AttentionMask(None, q.shape[-2], q.shape[-2], 0)


def make_case(case: str, b: int = 2):
    """(q_len, k_len, dense mask for the reference, causal_offset, key_visible (B, K) or None)."""
    if case == "causal":  # 13: not a multiple of the chunk (4)
        q = k = 13
        return q, k, torch.tril(torch.ones(q, k, dtype=torch.bool)).expand(b, 1, q, k), 0, None
    if case == "cache_offset":
        q, k = 9, 16
        return q, k, torch.tril(torch.ones(q, k, dtype=torch.bool), diagonal=7).expand(b, 1, q, k), 7, None
    if case == "decode":
        return 1, 10, torch.ones(b, 1, 1, 10, dtype=torch.bool), 9, None
    if case == "bidirectional":
        return 6, 11, torch.ones(1, 1, 6, 11, dtype=torch.bool), None, None
    if case == "padded":  # left padding: row 1 hides keys 0..3, so its queries 0..3 see nothing
        q = k = 11
        keys = torch.ones(b, k, dtype=torch.bool)
        keys[1, :4] = False
        return q, k, torch.tril(torch.ones(q, k, dtype=torch.bool)) & keys[:, None, None, :], 0, keys
    raise ValueError(case)


CASES = ["causal", "cache_offset", "decode", "bidirectional", "padded"]


def inputs(q_len: int, k_len: int, dtype: torch.dtype, b: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, H, q_len, D, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    k = torch.randn(b, HKV, k_len, D, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    v = torch.randn(b, HKV, k_len, D, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    return q, k, v


def reference(q, k, v, dense, ctx):
    out, _ = polynomial_attention(q, repeat_kv(k, H // HKV), repeat_kv(v, H // HKV), dense, ctx)
    return out


def assert_same_with_grads(out, ref, q, k, v, tol):
    torch.testing.assert_close(out, ref, **tol)
    g = torch.randn_like(ref)
    want = torch.autograd.grad((ref * g).sum(), (q, k, v))
    got = torch.autograd.grad((out * g).sum(), (q, k, v))
    for name, a, b in zip("qkv", got, want, strict=True):
        torch.testing.assert_close(a, b, **tol, msg=lambda m, name=name: f"d{name}: {m}")


def tolerance(dtype):
    return {"atol": 1e-5, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 1e-11, "rtol": 1e-10}


# --- features ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 2, 5, 16])
def test_features_give_the_squared_dot_product(d):
    g = torch.Generator().manual_seed(d)
    q, k = torch.randn(3, 7, d, generator=g, dtype=torch.float64), torch.randn(3, 7, d, generator=g, dtype=torch.float64)
    fq, fk = polynomial_features(q), polynomial_features(k)
    assert fq.shape == (3, 7, feature_dim(d)) == (3, 7, d * (d + 1) // 2)
    torch.testing.assert_close((fq * fk).sum(-1), (q * k).sum(-1) ** 2)
    torch.testing.assert_close(fq @ fk.transpose(-1, -2), (q @ k.transpose(-1, -2)) ** 2)  # all pairs


def test_feature_gradient_matches_autograd():
    """The backward's closed form for the gradient of ``Σ_n φ(x_n)ᵀ M h_n`` in ``x`` (one matmul, no scatter)."""
    x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    m, h = torch.randn(2, feature_dim(6), 3, dtype=torch.float64), torch.randn(2, 5, 3, dtype=torch.float64)
    (want,) = torch.autograd.grad(((polynomial_features(x) @ m) * h).sum(), x)
    torch.testing.assert_close(_quadratic_grad(x.detach(), h, _symmetric_matrix(m, 6)), want)
    with torch.no_grad():  # the fast, feature-major path (used without autograd) gives the same features
        fast = polynomial_features(x)
    torch.testing.assert_close(fast, polynomial_features(x).detach())


@pytest.mark.parametrize("d", [1, 2, 7, 64])
def test_feature_builds_agree(d):
    """The CPU build (one diagonal at a time from row slices) and the GPU build (two gathers) are the same
    features in the same order, equal to the autograd definition."""
    x = torch.randn(2, 3, 9, d, dtype=torch.float64)
    slices, gathers = _features_t(x, slices=True), _features_t(x, slices=False)
    assert slices.shape == (2, 3, feature_dim(d), 9)
    assert torch.equal(slices, gathers)
    torch.testing.assert_close(slices.transpose(-1, -2), polynomial_features(x.requires_grad_()).detach())


# --- kernel --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("length_scale", list(SCALES))
@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_reference(case, length_scale, dtype):
    q_len, k_len, dense, offset, keys = make_case(case)
    q, k, v = inputs(q_len, k_len, dtype)
    ctx = AttentionContext(scaling=0.4, options=PolynomialOptions(degree=2, length_scale=length_scale, **SCALES[length_scale]))
    c = length_scale_vector(AttentionMask(dense, q_len, k_len), ctx.options, q.device).to(dtype)
    out = polynomial_linear_attention(q, k, v, c, ctx.scaling, offset, keys, chunk=4)
    assert_same_with_grads(out, reference(q, k, v, dense, ctx), q, k, v, tolerance(dtype))


@pytest.mark.parametrize("chunk", [1, 3, 5, 64])
def test_kernel_any_chunk_size(chunk):
    q_len, k_len, dense, offset, _ = make_case("cache_offset")
    q, k, v = inputs(q_len, k_len, torch.float64, seed=1)
    ctx = AttentionContext(scaling=0.4, options=PolynomialOptions(degree=2))
    c = length_scale_vector(AttentionMask(dense, q_len, k_len), ctx.options, q.device).double()
    out = polynomial_linear_attention(q, k, v, c, ctx.scaling, offset, chunk=chunk)
    assert_same_with_grads(out, reference(q, k, v, dense, ctx), q, k, v, tolerance(torch.float64))


def test_kernel_gradcheck():
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 2, 5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 1, 7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 1, 7, 2, generator=g, dtype=torch.float64, requires_grad=True)  # d_v != d
    c = torch.rand(1, 1, 5, 1, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda q, k, v: polynomial_linear_attention(q, k, v, c, 0.7, 2, chunk=2), (q, k, v))


def test_backward_saves_only_the_inputs():
    """No per-chunk state and nothing of size T² is kept for the backward: the saved tensors are the inputs."""
    q, k, v = inputs(40, 40, torch.float32, b=1)
    c = torch.ones(1, 1, 40, 1)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = polynomial_linear_attention(q, k, v, c, 0.3, 0, chunk=4)
    assert sum(saved) <= q.numel() + k.numel() + v.numel() + c.numel() + 16, saved
    out.sum().backward()


def test_mechanism_linear_matches_fused_and_reference(monkeypatch):
    """Through the registered backend, with a dense padding mask (no causal tag) and in bfloat16."""
    monkeypatch.setattr(polynomial_linear, "DEFAULT_CHUNK", 4)
    q_len, k_len, dense, _, _ = make_case("padded")
    spec = get_mechanism("polynomial")
    ctx = AttentionContext(scaling=0.4, options=PolynomialOptions(degree=2, backend="linear"))
    q, k, v = inputs(q_len, k_len, torch.float64)
    out = spec.fast["linear"](q, k, v, AttentionMask(dense, q_len, k_len), ctx)
    assert_same_with_grads(out, reference(q, k, v, dense, ctx), q, k, v, tolerance(torch.float64))
    qb, kb, vb = (x.detach().to(torch.bfloat16) for x in (q, k, v))
    out16 = spec.fast["linear"](qb, kb, vb, AttentionMask(dense, q_len, k_len), ctx)
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16, reference(qb, kb, vb, dense, ctx), atol=2e-2, rtol=2e-2)


# --- decode state --------------------------------------------------------------------------------------


@pytest.mark.parametrize("length_scale", list(SCALES))
def test_decode_state_equals_full_attention_and_does_not_grow(length_scale):
    n = 13
    q, k, v = (x.detach() for x in inputs(n, n, torch.float64, seed=3))
    opts = PolynomialOptions(degree=2, length_scale=length_scale, **SCALES[length_scale])
    ctx = AttentionContext(scaling=0.4, options=opts)
    dense = torch.tril(torch.ones(n, n, dtype=torch.bool))[None, None]
    full = reference(q, k, v, dense, ctx)
    state = linear_decode_state(opts, 2, HKV, D, scaling=0.4, dtype=torch.float64, chunk=2)
    nbytes, shape = state.nbytes, state.state.shape
    assert nbytes == 2 * HKV * feature_dim(D) * D * 8
    outs, t = [], 0
    for size in (1, 1, 3, 1, 5, 2):  # single tokens and several at once (causal among themselves)
        outs.append(state.step(q[:, :, t:t + size], k[:, :, t:t + size], v[:, :, t:t + size]))
        t += size
        assert state.seen == t and state.nbytes == nbytes and state.state.shape == shape
    torch.testing.assert_close(torch.cat(outs, dim=2), full)


def test_decode_state_update_then_attend():
    """``update`` absorbs keys without queries; ``attend`` lets new queries see every key absorbed."""
    q, k, v = (x.detach() for x in inputs(3, 9, torch.float64, seed=4))
    opts = PolynomialOptions(degree=2)
    ctx = AttentionContext(scaling=0.4, options=opts)
    state = PolynomialLinearState(2, HKV, D, scaling=0.4, dtype=torch.float64)
    state.update(k[:, :, :4], v[:, :, :4])
    state.update(k[:, :, 4:], v[:, :, 4:])
    torch.testing.assert_close(state.attend(q), reference(q, k, v, torch.ones(1, 1, 3, 9, dtype=torch.bool), ctx))


def test_decode_state_errors():
    with pytest.raises(OptionError, match="degree=2, got degree=3"):
        linear_decode_state(PolynomialOptions(degree=3), 1, 1, 4, scaling=1.0)
    state = PolynomialLinearState(1, 2, 4, scaling=1.0)
    with pytest.raises(ValueError, match=r"key of shape \(1, 3, 1, 4\)"):
        state.update(torch.zeros(1, 3, 1, 4), torch.zeros(1, 3, 1, 4))


# --- backend selection and errors ----------------------------------------------------------------------


def test_linear_needs_degree_2():
    with pytest.raises(OptionError, match=r"backend='linear' needs degree=2, got degree=3"):
        PolynomialOptions(backend="linear")  # the default degree is 3
    with pytest.raises(OptionError, match="degree=3"):
        AutoModelForCausalLM.from_config(tiny_config("llama"), attn_implementation="polynomial",
                                         attnswap={"degree": 3, "backend": "linear"})
    spec, q = get_mechanism("polynomial"), torch.randn(1, 2, 3, 4)
    opts = PolynomialOptions(degree=3)
    with use_backend("linear"), pytest.raises(OptionError, match="needs degree=2, got degree=3"):
        select_backend(spec, opts, q, _mask(q), AttentionContext(scaling=1.0, options=opts), need_weights=False)
    with pytest.raises(OptionError, match="degree=3"):
        spec.fast["linear"](q, q[:, :1], q[:, :1], AttentionMask(None, 3, 3, 0), AttentionContext(scaling=1.0, options=opts))


def test_auto_picks_linear_only_for_long_calls_without_gradients():
    """From LINEAR_AUTO_MIN_KEYS keys, without gradients and past one chunk of queries, auto takes the linear form
    (measured faster there); shorter calls, training and decode steps keep the blocked kernel; degree 3 never."""
    from hf_attnswap.mechanisms.polynomial import LINEAR_AUTO_MIN_KEYS

    spec, auto = get_mechanism("polynomial"), PolynomialOptions(degree=2)
    ctx = AttentionContext(scaling=1.0, options=auto)
    n = LINEAR_AUTO_MIN_KEYS
    long_q = torch.randn(1, 1, 256, 4)

    def pick(q, k_len, opts=auto):
        return select_backend(spec, opts, q, AttentionMask(None, q.shape[-2], k_len, k_len - q.shape[-2]),
                              AttentionContext(scaling=1.0, options=opts), need_weights=False)

    assert pick(long_q, n) == "linear"
    assert pick(long_q, n - 1) == "fused"
    assert pick(long_q.requires_grad_(), n) == "fused"  # training
    assert pick(torch.randn(1, 1, 1, 4), n) == "fused"  # a decode step
    assert pick(torch.randn(1, 1, 256, 4), n, PolynomialOptions(degree=3)) == "fused"
    padded = AttentionMask(torch.ones(1, 1, 256, n, dtype=torch.bool).tril(n - 256), 256, n, None)
    assert select_backend(spec, auto, torch.randn(1, 1, 256, 4), padded, ctx, need_weights=False) == "linear"
    window = padded.dense.clone()
    window[..., :10] = False
    window[..., -1, :10] = True  # not causal-with-padding: a custom mask the linear form cannot take
    assert select_backend(spec, auto, torch.randn(1, 1, 256, 4), AttentionMask(window, 256, n, None), ctx,
                          need_weights=False) == "fused"


def _auto_mask(kind: str, q_len: int, k_len: int) -> AttentionMask:
    """A mask of each kind the model can hand the attention (q_len queries, k_len keys)."""
    causal = torch.ones(q_len, k_len, dtype=torch.bool).tril(k_len - q_len)
    if kind == "causal":  # tagged by hf_attnswap's mask function
        return AttentionMask(None, q_len, k_len, k_len - q_len)
    if kind == "causal_dense":  # the same, untagged
        return AttentionMask(causal[None, None], q_len, k_len)
    if kind == "left_padding":
        dense = causal[None, None].repeat(2, 1, 1, 1)
        dense[1, ..., :7] = False
        return AttentionMask(dense, q_len, k_len)
    if kind == "static_cache":  # unfilled slots after the sequence: hidden keys
        dense = torch.ones(q_len, k_len, dtype=torch.bool).tril(k_len - q_len - 5)
        dense[:, -5:] = False
        return AttentionMask(dense[None, None], q_len, k_len)
    if kind == "none":  # bidirectional, no padding
        return AttentionMask(None, q_len, k_len)
    if kind == "sliding_window":
        return AttentionMask((causal & ~causal.tril(k_len - q_len - 64))[None, None], q_len, k_len)
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["causal", "causal_dense", "left_padding", "static_cache", "none", "sliding_window"])
def test_auto_picks_linear_above_the_crossover_and_fused_below_on_every_mask(kind):
    """``auto`` takes the linear form from LINEAR_AUTO_MIN_KEYS keys on (the crossover measured by
    benchmarks/linear_attention.py) on every mask it can take, the blocked kernel below it and for a mask it cannot."""
    from hf_attnswap.mechanisms.polynomial import LINEAR_AUTO_MIN_KEYS

    spec, opts = get_mechanism("polynomial"), PolynomialOptions(degree=2)
    ctx = AttentionContext(scaling=1.0, options=opts)
    q_len = polynomial_linear.DEFAULT_CHUNK + 1
    for k_len, above in ((LINEAR_AUTO_MIN_KEYS, True), (LINEAR_AUTO_MIN_KEYS - 1, False)):
        query = torch.zeros(1, 2, q_len, 4)
        got = select_backend(spec, opts, query, _auto_mask(kind, q_len, k_len), ctx, need_weights=False)
        assert got == ("linear" if above and kind != "sliding_window" else "fused"), (kind, k_len, got)


def test_linear_is_opt_in_and_refuses_dropout():
    spec, q = get_mechanism("polynomial"), torch.randn(1, 2, 3, 4)
    auto = PolynomialOptions(degree=2)
    assert select_backend(spec, auto, q, _mask(q), AttentionContext(scaling=1.0, options=auto), need_weights=False) == "fused"
    opts = PolynomialOptions(degree=2, backend="linear")
    assert select_backend(spec, opts, q, _mask(q), AttentionContext(scaling=1.0, options=opts), need_weights=False) == "linear"
    with pytest.raises(OptionError, match="attention dropout"):
        select_backend(spec, opts, q, _mask(q), AttentionContext(scaling=1.0, dropout=0.1, options=opts), need_weights=False)


def test_mask_layouts():
    keys = torch.tensor([[True] * 6, [False, False] + [True] * 4])
    causal = torch.tril(torch.ones(4, 6, dtype=torch.bool), diagonal=2)
    assert linear_mask_layout(AttentionMask(None, 4, 6, 2)) == (2, None)
    assert linear_mask_layout(AttentionMask(None, 4, 6)) == (None, None)
    offset, got = linear_mask_layout(AttentionMask(causal & keys[:, None, None, :], 4, 6))
    assert offset == 2 and torch.equal(got, keys)
    offset, got = linear_mask_layout(AttentionMask(keys[:, None, None, :].expand(2, 1, 4, 6), 4, 6))
    assert offset is None and torch.equal(got, keys)  # bidirectional with padding
    assert linear_mask_layout(AttentionMask(causal.expand(2, 1, 4, 6), 4, 6)) == (2, None)  # untagged plain causal
    with pytest.raises(OptionError, match="none of them"):
        linear_mask_layout(AttentionMask(torch.ones(2, 3, 4, 6, dtype=torch.bool), 4, 6))  # per-head masks


def test_unsupported_mask_is_refused():
    q_len = k_len = 9
    window = torch.tril(torch.ones(q_len, k_len, dtype=torch.bool)) & ~torch.tril(torch.ones(q_len, k_len, dtype=torch.bool), -3)
    q, k, v = inputs(q_len, k_len, torch.float32)
    ctx = AttentionContext(scaling=1.0, options=PolynomialOptions(degree=2, backend="linear"))
    with pytest.raises(OptionError, match="sliding"):
        get_mechanism("polynomial").fast["linear"](q, k, v, AttentionMask(window[None, None], q_len, k_len), ctx)


# --- whole models --------------------------------------------------------------------------------------


def spy_on_kernel(monkeypatch) -> list[tuple[str | None, int]]:
    """Record ``(key padding?, causal_offset)`` of every call that reaches the linear kernel."""
    calls, kernel = [], polynomial_linear.polynomial_linear_attention

    def spy(q, k, v, c, scale, offset, key_visible=None, chunk=None):
        calls.append(("keys" if key_visible is not None else None, offset))
        return kernel(q, k, v, c, scale, offset, key_visible, chunk)

    monkeypatch.setattr(polynomial_linear, "polynomial_linear_attention", spy)
    return calls


def model(arch: str, backend: str, dtype: torch.dtype = torch.float32):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_config(arch), attn_implementation="polynomial",
                                            attnswap={"degree": 2, "backend": backend}).to(dtype).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_model_logits_and_gradients_match_reference(arch, dtype, monkeypatch):
    monkeypatch.setattr(polynomial_linear, "DEFAULT_CHUNK", 4)  # 13 tokens: several chunks, a ragged last one
    ids = random_ids(2, 13)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding in row 1: a dense mask
    tol = {"atol": 1e-4, "rtol": 1e-3} if dtype == torch.float32 else {"atol": 1e-10, "rtol": 1e-9}
    calls = spy_on_kernel(monkeypatch)
    results = {}
    for backend in ("reference", "linear"):
        m = model(arch, backend, dtype)
        for name, kwargs in (("plain", {}), ("padded", {"attention_mask": mask})):
            m.zero_grad()
            logits = m(ids, **kwargs).logits
            (logits.square() * (mask[..., None] if kwargs else 1)).sum().backward()
            grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
            results[backend, name] = (logits.detach(), grads)
    assert calls == [(None, 0)] * 2 + [("keys", 0)] * 2, calls  # 2 layers: plain causal, then left padding
    for name in ("plain", "padded"):
        (ref, ref_grads), (out, grads) = results["reference", name], results["linear", name]
        keep = mask.bool() if name == "padded" else torch.ones_like(ids, dtype=torch.bool)
        torch.testing.assert_close(out[keep], ref[keep], **tol)
        assert ref_grads.keys() == grads.keys() and len(grads) > 0
        for n, g in ref_grads.items():  # fp32: relative to the gradient's scale (sums of many rounded terms)
            torch.testing.assert_close(grads[n], g, atol=tol["atol"] * max(1.0, float(g.abs().max())), rtol=tol["rtol"],
                                       msg=lambda m, n=n: f"{n}: {m}")


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_model_kv_cache_and_generate(arch, monkeypatch):
    monkeypatch.setattr(polynomial_linear, "DEFAULT_CHUNK", 4)
    calls = spy_on_kernel(monkeypatch)
    ref, lin = model(arch, "reference"), model(arch, "linear")
    ids = random_ids(2, 12, seed=1)
    full = ref(ids).logits
    out = lin(ids[:, :6], use_cache=True)
    more = lin(ids[:, 6:], past_key_values=out.past_key_values, use_cache=True)  # 6 queries after 6 cached keys
    assert calls == [(None, 0)] * 2 + [(None, 6)] * 2, calls
    torch.testing.assert_close(torch.cat([out.logits, more.logits], dim=1), full, atol=1e-5, rtol=1e-4)
    kwargs = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": PAD, "output_scores": True,
              "return_dict_in_generate": True}
    prompt = ids[:, :7]
    want, got = ref.generate(prompt, **kwargs), lin.generate(prompt, cache=DynamicCache(), **kwargs)
    assert torch.equal(got.sequences, want.sequences)
    assert len(calls) == 6, calls  # the prompt (7 > 4 queries) ran the linear kernel; single-token steps run blocked
    torch.testing.assert_close(torch.stack(got.scores), torch.stack(want.scores), atol=1e-5, rtol=1e-4)
    state = lin.generate(prompt, **kwargs)  # by itself, generate() decodes from the fixed-size state
    assert isinstance(state.past_key_values, PolynomialLinearCache) and len(calls) == 6, calls
    assert torch.equal(state.sequences, want.sequences)
    torch.testing.assert_close(torch.stack(state.scores), torch.stack(want.scores), atol=1e-5, rtol=1e-4)
