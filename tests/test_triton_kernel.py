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
from hf_attnswap.options import OptionError, PolynomialOptions  # noqa: E402
from hf_attnswap.registry import get_mechanism, select_backend  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
H, HKV, D = 4, 2, 16


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
        select_backend(spec, opts, q, AttentionContext(scaling=1.0, options=opts), need_weights=False)
    q16 = torch.randn(1, 2, 4, 16, device=DEVICE)
    assert select_backend(spec, opts, q16, AttentionContext(scaling=1.0, options=opts), need_weights=False) == "triton"
    auto = PolynomialOptions()
    expected = "triton" if q16.is_cuda else "fused"  # interpreted Triton is never picked by "auto"
    assert select_backend(spec, auto, q16, AttentionContext(scaling=1.0, options=auto), need_weights=False) == expected
