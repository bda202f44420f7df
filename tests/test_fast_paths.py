"""Every fast path against its reference, forward and backward, fp32 and fp64, on awkward shapes:
GQA, lengths that are not multiples of the block, padding (including queries that see nothing), a KV-cache
offset, one decode step, and no mask at all."""

from __future__ import annotations

import pytest
import torch

from hf_attnswap.kernels import polynomial_blocked
from hf_attnswap.kernels.mask import AttentionMask
from hf_attnswap.mechanisms.common import AttentionContext, repeat_kv
from hf_attnswap.mechanisms.polynomial import PolynomialOptions
from hf_attnswap.registry import exercised_options, get_mechanism

from conftest import MECHANISMS

H, HKV, D = 4, 2, 8


def make_case(case: str, b: int = 2):
    """(q_len, k_len, dense mask or None, causal_offset or None)."""
    if case == "causal":
        q, k = 13, 13
        return q, k, torch.tril(torch.ones(q, k, dtype=torch.bool)).expand(b, 1, q, k), 0
    if case == "padded":
        q, k = 11, 11
        m = torch.tril(torch.ones(q, k, dtype=torch.bool)).expand(b, 1, q, k).clone()
        m[1, :, :, :4] = False  # left padding: queries 0..3 of row 1 see nothing
        return q, k, m, None
    if case == "cache_chunk":
        q, k = 3, 10
        return q, k, torch.tril(torch.ones(q, k, dtype=torch.bool), diagonal=7).expand(b, 1, q, k), 7
    if case == "decode":
        return 1, 9, torch.ones(b, 1, 1, 9, dtype=torch.bool), 8
    if case == "bidirectional":
        return 6, 9, None, None
    raise ValueError(case)


CASES = ["causal", "padded", "cache_chunk", "decode", "bidirectional"]


def _conformance_cells() -> list:
    """(mechanism, backend, options) for every fast path of every built-in mechanism, with each of the mechanism's
    registered ``exercise`` option sets that the backend takes. A new mechanism or backend is covered with no edit."""
    cells = []
    for mech in MECHANISMS:
        spec = get_mechanism(mech)
        for backend in spec.fast:
            for opts in exercised_options(spec, backend):
                shown = ",".join(f"{k}={v}" for k, v in opts.to_dict().items() if k != "backend")
                cells.append(pytest.param(mech, backend, opts, id=f"{mech}-{backend}-{shown}"))
    return cells


def options(mech: str):
    """The options of the rotary / gradcheck tests below: the mechanism's first ``exercise`` set."""
    return exercised_options(mech)[0]


def run_both(mech: str, case: str, dtype: torch.dtype, rotary: bool = False, backend: str = "fused", opts=None,
             head_dim: int = D):
    """Reference and ``backend`` on one case: (reference out, fast out, (reference grads, fast grads)), outputs and
    gradients over the queries that see at least one key."""
    torch.manual_seed(0)
    q_len, k_len, dense, offset = make_case(case)
    b = 2
    q = torch.randn(b, H, q_len, head_dim, dtype=dtype, requires_grad=True)
    k = torch.randn(b, HKV, k_len, head_dim, dtype=dtype, requires_grad=True)
    v = torch.randn(b, HKV, k_len, head_dim, dtype=dtype, requires_grad=True)
    opts = options(mech) if opts is None else opts
    spec = get_mechanism(mech)
    params = spec.make_params(H, head_dim, opts).to(dtype) if spec.make_params is not None else None
    if params is not None:  # random parameters (e.g. daGPAM's W⁻ away from -I), so that every one is exercised
        with torch.no_grad():
            for p in params.parameters():
                p.add_(torch.randn_like(p) * 0.3)
    rope = None
    if rotary:
        ang = torch.randn(b, q_len, head_dim // 2, dtype=dtype)
        rope = (torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin())
    ctx = AttentionContext(scaling=head_dim**-0.5, options=opts, params=params, rope=rope)
    amask = AttentionMask(dense, q_len, k_len, offset)
    if backend in spec.fast_supports:
        reason = spec.fast_supports[backend](q, amask, ctx)
        if reason is not None:
            assert isinstance(reason, str) and reason, "a refusal names its reason"
            pytest.skip(f"{mech}/{backend} refuses this call: {reason}")
    ref_mask = dense if dense is not None else torch.ones(1, 1, q_len, k_len, dtype=torch.bool)
    ref, _ = spec.forward(q, repeat_kv(k, H // HKV), repeat_kv(v, H // HKV), ref_mask, ctx)
    fast = spec.fast[backend](q, k, v, amask, ctx)
    seen = ref_mask.any(-1, keepdim=True).expand(b, H, q_len, 1).to(dtype)  # queries that see something
    g = torch.randn_like(ref)
    grads = []
    for out in (ref, fast):
        inputs = [q, k, v] + (list(params.parameters()) if params is not None else [])
        grads.append(torch.autograd.grad((out.to(dtype) * g * seen).sum(), inputs))
    return ref * seen, fast.to(dtype) * seen, grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("mech,backend,opts", _conformance_cells())
def test_fast_path_matches_reference(mech, backend, opts, case, dtype, monkeypatch):
    """The conformance suite's attention level: every registered fast path equals its reference, forward and
    backward, on every mask case (head size 16, so that the Triton kernel runs too, interpreted on CPU)."""
    monkeypatch.setattr(polynomial_blocked, "DEFAULT_BLOCK", 4)  # many blocks, ragged last block
    if backend == "triton" and dtype == torch.float64:
        pytest.skip("the Triton kernel computes in float32 (its own tests cover float32/float16)")
    ref, fast, (g_ref, g_fast) = run_both(mech, case, dtype, backend=backend, opts=opts, head_dim=16)
    tol = dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-9)
    if backend == "triton":
        tol = dict(atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(fast, ref, **tol)
    for a, b in zip(g_fast, g_ref, strict=True):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("case", ["causal", "padded"])
def test_fused_dagpam_rotary_matches_reference(case):
    ref, fast, (g_ref, g_fast) = run_both("dagpam", case, torch.float64, rotary=True)
    torch.testing.assert_close(fast, ref)
    for a, b in zip(g_fast, g_ref, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("block", [3, 4, 512])
def test_polynomial_blocked_gradcheck(block, monkeypatch):
    monkeypatch.setattr(polynomial_blocked, "DEFAULT_BLOCK", block)
    torch.manual_seed(0)
    q_len, k_len, dense, offset = make_case("padded")
    q = torch.randn(2, H, q_len, D, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, HKV, k_len, D, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, HKV, k_len, D, dtype=torch.float64, requires_grad=True)
    ctx = AttentionContext(scaling=0.3, options=PolynomialOptions(degree=3))
    fused = get_mechanism("polynomial").fast["fused"]
    assert torch.autograd.gradcheck(lambda q, k, v: fused(q, k, v, AttentionMask(dense, q_len, k_len, offset), ctx), (q, k, v))


def test_polynomial_blocked_dropout_is_consistent_between_forward_and_backward(monkeypatch):
    """With dropout the blocked backward regenerates each block's mask: check it against autograd of a dense
    computation that uses the same masks (recovered by running with v = identity columns)."""
    monkeypatch.setattr(polynomial_blocked, "DEFAULT_BLOCK", 4)
    torch.manual_seed(0)
    n = 9
    q = torch.randn(1, 1, n, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 1, n, 4, dtype=torch.float64, requires_grad=True)
    eye = torch.eye(n, dtype=torch.float64).view(1, 1, n, n).requires_grad_()
    mask = AttentionMask(None, n, n, 0)
    c = torch.ones(1, 1, n, 1, dtype=torch.float64)
    torch.manual_seed(123)
    w = polynomial_blocked.polynomial_attention_blocked(q, k, eye, mask, c, 0.5, 3, dropout=0.5)  # = dropped weights
    assert ((w == 0) & torch.tril(torch.ones(n, n, dtype=torch.bool))).any(), "some weights were dropped"
    v = torch.randn(1, 1, n, 4, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(123)
    out = polynomial_blocked.polynomial_attention_blocked(q, k, v, mask, c, 0.5, 3, dropout=0.5)
    torch.testing.assert_close(out, w @ v)
    g = torch.randn_like(out)
    got = torch.autograd.grad((out * g).sum(), (q, k, v))
    keep = (w != 0).to(torch.float64) * 2.0
    s = (q @ k.transpose(-1, -2)) * 0.5
    dense = (s**3) * torch.tril(torch.ones(n, n, dtype=torch.float64)) * keep
    want = torch.autograd.grad(((dense @ v) * g).sum(), (q, k, v))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_plain_causal_masks_are_tagged_and_reach_the_fast_path(load, monkeypatch):
    from conftest import random_ids

    seen = []
    spec = get_mechanism("softmax")
    original = spec.fast["fused"]

    def spy(q, k, v, mask, ctx):
        seen.append(mask.causal_offset)
        return original(q, k, v, mask, ctx)

    monkeypatch.setitem(spec.fast, "fused", spy)
    for arch in ("gpt2", "llama"):
        seen.clear()
        model = load(arch, "softmax")
        ids = random_ids(2, 6)
        out = model(ids, use_cache=True)
        model(ids[:, :1], past_key_values=out.past_key_values)
        assert seen == [0, 0, 6, 6], (arch, seen)  # 2 layers prefill (offset 0), 2 layers decode (offset 6)
        seen.clear()
        model(ids, attention_mask=torch.tensor([[0, 1, 1, 1, 1, 1], [1] * 6]))
        assert seen == [None, None], "a padded mask is not plain causal"


def test_output_attentions_uses_the_reference_even_with_a_fast_backend(load):
    from conftest import random_ids

    model = load("llama", "polynomial", backend="fused")
    out = model(random_ids(1, 5), output_attentions=True)
    assert all(a is not None and a.shape == (1, 4, 5, 5) for a in out.attentions)


def test_backend_errors_are_clear(load):
    from hf_attnswap import OptionError

    with pytest.raises(OptionError, match=r"'backend' must be one of 'auto', 'reference', 'fused'"):
        load("llama", "dagpam", backend="triton")
