"""Each mechanism's attention function on hand-made tensors: formulas, gradcheck, precision."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

from hf_attnswap.kernels.rope import apply_rope, unapply_rope
from hf_attnswap.mechanisms.common import AttentionContext, visible_mask
from hf_attnswap.mechanisms.dagpam import DaGPAMParameters, dagpam_attention
from hf_attnswap.mechanisms.polynomial import polynomial_attention
from hf_attnswap.mechanisms.softmax import softmax_attention
from hf_attnswap.mechanisms.dagpam import DaGPAMOptions
from hf_attnswap.mechanisms.polynomial import PolynomialOptions
from hf_attnswap.mechanisms.softmax import SoftmaxOptions
from hf_attnswap.errors import OptionError

B, H, Q, D = 2, 2, 5, 4


def causal_padded_mask() -> torch.Tensor:
    """(B, 1, Q, Q): causal, and the second sequence has 2 left-padding keys."""
    causal = torch.tril(torch.ones(Q, Q, dtype=torch.bool))
    mask = causal.expand(B, 1, Q, Q).clone()
    mask[1, :, :, :2] = False
    return mask


def rope(dtype=torch.float64):
    pos = torch.arange(Q, dtype=dtype)
    inv = 1.0 / (10000 ** (torch.arange(0, D, 2, dtype=dtype) / D))
    freqs = torch.outer(pos, inv)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().expand(B, Q, D), emb.sin().expand(B, Q, D)


def qkv(dtype=torch.float64, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(B, H, Q, D, generator=g, dtype=dtype) * scale).requires_grad_() for _ in range(3)]


def test_softmax_formula_and_temperature():
    q, k, v = qkv()
    mask = causal_padded_mask()
    out, w = softmax_attention(q, k, v, mask, AttentionContext(scaling=0.5, options=SoftmaxOptions(temperature=2.0)))
    s = (q @ k.transpose(-1, -2)) * 0.5 / 2.0
    ref = torch.softmax(s.masked_fill(~mask, -math.inf), -1)
    seen = mask.any(-1).expand(B, H, Q)  # rows with no visible key (a padding query) are NaN in this reference
    torch.testing.assert_close(w[seen], ref[seen])
    torch.testing.assert_close(out[seen], (ref @ v)[seen])


@pytest.mark.parametrize("scale_mode,expected", [("visible", None), ("fixed", 1 / math.sqrt(7)), ("none", 1.0)])
def test_polynomial_formula(scale_mode, expected):
    q, k, v = qkv()
    mask = causal_padded_mask()
    opts = PolynomialOptions(degree=3, length_scale=scale_mode, fixed_length=7 if scale_mode == "fixed" else None)
    out, w = polynomial_attention(q, k, v, mask, AttentionContext(scaling=0.5, options=opts))
    s = (q @ k.transpose(-1, -2)) * 0.5
    c = mask.sum(-1, keepdim=True).clamp_min(1).rsqrt() if expected is None else expected
    ref = c * s**3 * mask
    torch.testing.assert_close(w, ref.to(w.dtype))
    assert (w[~mask.expand_as(w)] == 0).all(), "masked weights are exactly 0 (multiplicative mask)"
    torch.testing.assert_close(out, (ref @ v).to(out.dtype))


@pytest.mark.parametrize("degree", [2, 3])
def test_polynomial_offset_formula(degree):
    """``offset`` adds a constant to every scaled score before the power: ``c_i (s_ij + offset)^p``, masked weights
    exactly 0; ``offset=0`` is the paper's ``s^p``; a bad value is an error that names the option."""
    q, k, v = qkv()
    mask = causal_padded_mask()
    opts = PolynomialOptions(degree=degree, offset=0.75)
    out, w = polynomial_attention(q, k, v, mask, AttentionContext(scaling=0.5, options=opts))
    s = (q @ k.transpose(-1, -2)) * 0.5
    ref = mask.sum(-1, keepdim=True).clamp_min(1).rsqrt() * (s + 0.75) ** degree * mask
    torch.testing.assert_close(w, ref.to(w.dtype))
    assert (w[~mask.expand_as(w)] == 0).all()
    torch.testing.assert_close(out, (ref @ v).to(out.dtype))
    plain, _ = polynomial_attention(q, k, v, mask, AttentionContext(scaling=0.5, options=PolynomialOptions(degree=degree)))
    zero, _ = polynomial_attention(q, k, v, mask, AttentionContext(scaling=0.5, options=PolynomialOptions(degree=degree,
                                                                                                          offset=0.0)))
    assert torch.equal(plain, zero)
    for bad in (float("nan"), float("inf"), "1", True):
        with pytest.raises(OptionError, match="option 'offset'"):
            PolynomialOptions(degree=2, offset=bad)


def test_polynomial_offset_with_softcap_is_added_after_the_cap_by_the_reference_only():
    """The reference computes ``(cap(s) + offset)^p``; the blocked kernel, which adds the offset as a query/key column
    (inside the cap), refuses the pair by name, so ``auto`` runs the reference; the standalone decode state refuses
    an offset (it takes raw queries and keys)."""
    from hf_attnswap.kernels.mask import AttentionMask
    from hf_attnswap.mechanisms.polynomial import (linear_decode_state, polynomial_attention_fused,
                                                   polynomial_fused_supports)

    q, k, v = qkv()
    mask = causal_padded_mask()
    opts = PolynomialOptions(degree=2, offset=0.3, backend="fused")
    ctx = AttentionContext(scaling=0.5, options=opts, extra={"softcap": 2.0})
    _, w = polynomial_attention(q, k, v, mask, ctx)
    s = 2.0 * torch.tanh((q @ k.transpose(-1, -2)) * 0.5 / 2.0)
    torch.testing.assert_close(w, (mask.sum(-1, keepdim=True).clamp_min(1).rsqrt() * (s + 0.3) ** 2 * mask).to(w.dtype))
    amask = AttentionMask(mask, Q, Q)
    assert "softcap" in polynomial_fused_supports(q, amask, ctx)
    with pytest.raises(OptionError, match="backend='fused' cannot run this call: an offset together with"):
        polynomial_attention_fused(q, k, v, amask, ctx)
    assert polynomial_fused_supports(q, amask, AttentionContext(scaling=0.5, options=opts)) is None
    with pytest.raises(OptionError, match="without an offset"):
        linear_decode_state(PolynomialOptions(degree=2, offset=0.3), 1, H, D, scaling=0.5)


def test_rope_inverse_is_exact():
    x = torch.randn(B, H, Q, D, dtype=torch.float64)
    cos, sin = rope()
    torch.testing.assert_close(unapply_rope(apply_rope(x, cos, sin), cos, sin), x)


def test_dagpam_negative_query_is_computed_before_rotation():
    """``Q⁻ = rotate(ReLU(q_pre) W⁻)`` and P = (1+λ)S⁺ - λS⁻, from first principles."""
    q_pre, k, v = qkv()
    cos, sin = rope()
    params = DaGPAMParameters(H, D, DaGPAMOptions(lambda_init=0.25, neg_query_init="normal")).double()
    mask = causal_padded_mask()
    ctx = AttentionContext(scaling=0.5, options=params.options, params=params, rope=(cos, sin))
    out, w = dagpam_attention(apply_rope(q_pre, cos, sin), k, v, mask, ctx)
    q_neg = apply_rope(torch.relu(q_pre) @ params.neg_query_weight, cos, sin)
    soft = lambda qq: torch.softmax((qq @ k.transpose(-1, -2) * 0.5).masked_fill(~mask, -math.inf), -1)  # noqa: E731
    ref = 1.25 * soft(apply_rope(q_pre, cos, sin)) - 0.25 * soft(q_neg)
    seen = mask.any(-1).expand(B, H, Q)
    torch.testing.assert_close(w[seen], ref[seen])
    torch.testing.assert_close(out[seen], (ref @ v)[seen])
    torch.testing.assert_close(w.sum(-1)[:, :, 2:], torch.ones(B, H, Q - 2, dtype=w.dtype))


def _dagpam_params(**opts) -> DaGPAMParameters:
    torch.manual_seed(0)
    return DaGPAMParameters(H, D, DaGPAMOptions(**opts)).double()


@pytest.mark.parametrize(
    "opts",
    [
        {"lambda_init": 0.3},
        {"lambda_init": 0.0},
        {"lambda_init": 0.2, "neg_query_proj": "per_head", "neg_query_init": "normal"},
        {"lambda_init": 0.2, "tied_lambda": False},
        {"lambda_init": 0.2, "lambda_constraint": "nonneg", "neg_query_init": "identity"},
    ],
)
@pytest.mark.parametrize("rotary", [False, True])
def test_dagpam_gradcheck(opts, rotary):
    params = _dagpam_params(**opts)
    names = [n for n, _ in params.named_parameters()]
    mask = causal_padded_mask()
    q, k, v = qkv(seed=1)
    ptensors = [p.detach().clone().requires_grad_() for p in params.parameters()]

    def fn(q, k, v, *pt):
        call = lambda x: functional_call(params, dict(zip(names, pt)), (x,))  # noqa: E731
        ctx = AttentionContext(scaling=0.5, options=params.options, params=call, rope=rope() if rotary else None)
        return dagpam_attention(q, k, v, mask, ctx)[0]

    assert torch.autograd.gradcheck(fn, (q, k, v, *ptensors))


@pytest.mark.parametrize("degree", [1, 2, 3])
@pytest.mark.parametrize("scale_mode", ["visible", "none"])
def test_polynomial_gradcheck(degree, scale_mode):
    mask = causal_padded_mask()
    ctx = AttentionContext(scaling=0.5, options=PolynomialOptions(degree=degree, length_scale=scale_mode))
    assert torch.autograd.gradcheck(lambda q, k, v: polynomial_attention(q, k, v, mask, ctx)[0], tuple(qkv(seed=2)))


@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_softmax_gradcheck(temperature):
    mask = causal_padded_mask()
    ctx = AttentionContext(scaling=0.5, options=SoftmaxOptions(temperature=temperature))
    assert torch.autograd.gradcheck(lambda q, k, v: softmax_attention(q, k, v, mask, ctx)[0], tuple(qkv(seed=3)))


def test_polynomial_half_precision_overflow_raises_clearly():
    q, k, v = (t.detach().half() for t in qkv(dtype=torch.float32, scale=30.0))
    ctx = AttentionContext(scaling=1.0, options=PolynomialOptions(degree=3, length_scale="none"))
    with pytest.raises(OverflowError, match="float16"):
        polynomial_attention(q, k, v, causal_padded_mask(), ctx)


def test_polynomial_half_precision_in_range_is_computed_in_fp32():
    q, k, v = (t.detach() for t in qkv(dtype=torch.float32))
    ctx = AttentionContext(scaling=0.5, options=PolynomialOptions())
    ref, _ = polynomial_attention(q, k, v, causal_padded_mask(), ctx)
    out, _ = polynomial_attention(q.half(), k.half(), v.half(), causal_padded_mask(), ctx)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), ref, atol=1e-2, rtol=1e-2)


def test_visible_mask_accepts_additive_float_masks():
    add = torch.zeros(1, 1, 3, 3).masked_fill(~torch.tril(torch.ones(3, 3, dtype=torch.bool)), torch.finfo(torch.float32).min)
    assert torch.equal(visible_mask(add, 1, 3, 3, torch.device("cpu")), torch.tril(torch.ones(3, 3, dtype=torch.bool))[None, None])
    assert visible_mask(None, 1, 2, 3, torch.device("cpu")).all()


@pytest.mark.parametrize(
    "opts,check",
    [
        ({}, lambda p: torch.equal(p.neg_query_weight, -torch.eye(D)) and (p.lambda_param == 0).all()),
        ({"neg_query_init": "identity", "lambda_init": 0.5}, lambda p: torch.equal(p.neg_query_weight, torch.eye(D)) and (p.lambda_param == 0.5).all()),
        ({"neg_query_proj": "per_head"}, lambda p: p.neg_query_weight.shape == (H, D, D) and torch.equal(p.neg_query_weight[1], -torch.eye(D))),
        ({"lambda_init": 0.5, "lambda_constraint": "nonneg"}, lambda p: torch.allclose(p.lambdas()[0], torch.full((H,), 0.5))),
        ({"tied_lambda": False, "lambda_init": 0.1}, lambda p: torch.allclose(p.lambdas()[1], torch.full((H,), 0.1))),
        ({"trainable_lambda": False}, lambda p: not p.lambda_param.requires_grad and p.neg_query_weight.requires_grad),
    ],
)
def test_dagpam_parameter_init(opts, check):
    assert check(DaGPAMParameters(H, D, DaGPAMOptions(**opts)))
