"""The polynomial Triton kernels against the reference, forward and backward. Without a GPU they run on CPU
tensors under TRITON_INTERPRET=1 (set in conftest before the kernels are defined)."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU and TRITON_INTERPRET is not 1", allow_module_level=True)

from hf_attnswap.kernels.mask import AttentionMask  # noqa: E402
from hf_attnswap.mechanisms.common import AttentionContext, repeat_kv  # noqa: E402
from hf_attnswap.errors import OptionError  # noqa: E402
from hf_attnswap.mechanisms.polynomial import PolynomialOptions  # noqa: E402
from hf_attnswap.registry import get_mechanism, select_backend  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
H, HKV, D = 4, 2, 16


def _mask(q):
    """The causal mask of a prefill of ``q``'s length (what select_backend's predicates see)."""
    return AttentionMask(None, q.shape[-2], q.shape[-2], 0)


def case(name: str, b: int = 2):
    if name == "causal_ragged":  # 37: not a multiple of the 32-wide blocks
        q = k = 37
        return q, k, torch.tril(torch.ones(q, k, dtype=torch.bool)).expand(b, 1, q, k), 0
    if name == "padded":
        q = k = 40
        m = torch.tril(torch.ones(q, k, dtype=torch.bool)).expand(b, 1, q, k).clone()
        m[1, :, :, :5] = False
        return q, k, m, None
    if name == "cache_offset":
        return 5, 41, torch.tril(torch.ones(5, 41, dtype=torch.bool), diagonal=36).expand(b, 1, 5, 41), 36
    if name == "bidirectional":
        return 20, 33, None, None
    raise ValueError(name)


@pytest.mark.parametrize("degree", [1, 2, 3])
@pytest.mark.parametrize("name", ["causal_ragged", "padded", "cache_offset", "bidirectional"])
def test_triton_matches_reference(name, degree):
    torch.manual_seed(0)
    q_len, k_len, dense, offset = case(name)
    q = torch.randn(2, H, q_len, D, device=DEVICE, requires_grad=True)
    k = torch.randn(2, HKV, k_len, D, device=DEVICE, requires_grad=True)
    v = torch.randn(2, HKV, k_len, D, device=DEVICE, requires_grad=True)
    dense = None if dense is None else dense.to(DEVICE)
    ctx = AttentionContext(scaling=0.3, options=PolynomialOptions(degree=degree))
    spec = get_mechanism("polynomial")
    ref_mask = dense if dense is not None else torch.ones(1, 1, q_len, k_len, dtype=torch.bool, device=DEVICE)
    ref, _ = spec.forward(q, repeat_kv(k, H // HKV), repeat_kv(v, H // HKV), ref_mask, ctx)
    out = spec.fast["triton"](q, k, v, AttentionMask(dense, q_len, k_len, offset), ctx)
    seen = ref_mask.any(-1, keepdim=True).to(q.dtype)
    torch.testing.assert_close(out * seen, ref * seen, atol=1e-4, rtol=1e-4)
    g = torch.randn_like(ref)
    want = torch.autograd.grad((ref * g * seen).sum(), (q, k, v))
    got = torch.autograd.grad((out * g * seen).sum(), (q, k, v))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_backend_triton_is_chosen_explicitly_and_checked():
    spec = get_mechanism("polynomial")
    q = torch.randn(1, 2, 4, 8, device=DEVICE)
    opts = PolynomialOptions(backend="triton")
    with pytest.raises(OptionError, match="head size 8 is not a power of two"):
        select_backend(spec, opts, q, _mask(q), AttentionContext(scaling=1.0, options=opts), need_weights=False)
    q16 = torch.randn(1, 2, 4, 16, device=DEVICE)
    assert select_backend(spec, opts, q16, _mask(q16), AttentionContext(scaling=1.0, options=opts), need_weights=False) == "triton"
    auto = PolynomialOptions()
    expected = "triton" if q16.is_cuda else "fused"  # interpreted Triton is never picked by "auto"
    assert select_backend(spec, auto, q16, _mask(q16), AttentionContext(scaling=1.0, options=auto), need_weights=False) == expected


def test_triton_float64_inputs_match_reference_to_float32_accuracy():
    """The kernels accumulate in float32 whatever the input dtype; float64 inputs come back as float64."""
    torch.manual_seed(1)
    q_len, k_len, dense, offset = case("padded")
    q = torch.randn(2, H, q_len, D, device=DEVICE, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, HKV, k_len, D, device=DEVICE, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, HKV, k_len, D, device=DEVICE, dtype=torch.float64, requires_grad=True)
    ctx = AttentionContext(scaling=0.3, options=PolynomialOptions())
    spec = get_mechanism("polynomial")
    ref, _ = spec.forward(q, repeat_kv(k, 2), repeat_kv(v, 2), dense.to(DEVICE), ctx)
    out = spec.fast["triton"](q, k, v, AttentionMask(dense.to(DEVICE), q_len, k_len, offset), ctx)
    assert out.dtype == torch.float64
    seen = dense.to(DEVICE).any(-1, keepdim=True).to(q.dtype)
    torch.testing.assert_close(out * seen, ref * seen, atol=1e-4, rtol=1e-4)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad((out * g * seen).sum(), (q, k, v)),
                    torch.autograd.grad((ref * g * seen).sum(), (q, k, v)), strict=True):
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


# The core correctness matrix on models whose head size (16) the kernel takes.
ARCHS16 = ["gpt2", "llama"]


def model16(arch: str, backend: str):
    from transformers import AutoModelForCausalLM

    from conftest import tiny_config

    torch.manual_seed(0)
    overrides = {"n_embd": 64} if arch == "gpt2" else {"hidden_size": 64, "head_dim": 16}
    return AutoModelForCausalLM.from_config(
        tiny_config(arch, **overrides), attn_implementation="polynomial", attnswap={"backend": backend}
    ).eval()


@pytest.mark.parametrize("arch", ARCHS16)
def test_triton_model_matches_reference_forward_backward(arch):
    from conftest import random_ids

    ids = random_ids(2, 9)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    out = {}
    for backend in ("reference", "triton"):
        model = model16(arch, backend)
        logits = model(ids, attention_mask=mask).logits
        logits[mask.bool()].square().mean().backward()
        out[backend] = (logits[mask.bool()].detach(), {n: p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(out["triton"][0], out["reference"][0], atol=1e-4, rtol=1e-4)
    for name, grad in out["reference"][1].items():
        torch.testing.assert_close(out["triton"][1][name], grad, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("arch", ARCHS16)
def test_triton_model_cache_and_left_padded_generation(arch):
    from conftest import PAD, random_ids

    model = model16(arch, "triton")
    ids = random_ids(2, 8, seed=1)
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :5], use_cache=True)
        step = [out.logits]
        past = out.past_key_values
        for t in range(5, 8):
            out = model(ids[:, t : t + 1], past_key_values=past, use_cache=True)
            step.append(out.logits)
            past = out.past_key_values
    torch.testing.assert_close(torch.cat(step, 1), full, atol=1e-4, rtol=1e-4)
    prompts = [random_ids(1, 6, seed=3)[0], random_ids(1, 3, seed=4)[0]]
    batch = torch.full((2, 6), PAD)
    attn = torch.zeros(2, 6, dtype=torch.long)
    for i, p in enumerate(prompts):
        batch[i, 6 - len(p):] = p
        attn[i, 6 - len(p):] = 1
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=PAD)
    together = model.generate(batch, attention_mask=attn, **kw)[:, 6:]
    for i, p in enumerate(prompts):
        alone = model.generate(p[None], attention_mask=torch.ones(1, len(p), dtype=torch.long), **kw)[0, len(p):]
        assert torch.equal(together[i, : len(alone)], alone)
