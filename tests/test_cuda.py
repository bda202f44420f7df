"""Every fast path on a CUDA device against the float64 reference on the CPU, forward and backward, in float32 and
bfloat16; and generate() from the polynomial state on CUDA against fused + KV cache. Skipped without CUDA
(``scripts/gpu_check.sh`` runs this file, and the Triton tests, on a GPU without the interpreter)."""

from __future__ import annotations

import pytest
import torch
from conftest import PAD, random_ids, tiny_config
from transformers import AutoModelForCausalLM

from hf_attnswap.kernels.mask import AttentionMask
from hf_attnswap.mechanisms import BUILTINS
from hf_attnswap.mechanisms.common import AttentionContext, repeat_kv
from hf_attnswap.mechanisms.polynomial import PolynomialLinearCache
from hf_attnswap.registry import exercised_options, get_mechanism

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
TOL = {torch.float32: 2e-3, torch.bfloat16: 5e-2}  # relative to the output's largest entry
CELLS = [(m, b) for m in BUILTINS for b in get_mechanism(m).fast]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("mech,backend", CELLS, ids=[f"{m}-{b}" for m, b in CELLS])
def test_fast_path_on_cuda_matches_reference(mech, backend, dtype):
    spec = get_mechanism(mech)
    found = exercised_options(spec, backend)
    if not found:
        pytest.skip(f"{mech}/{backend} takes none of its exercise option sets")
    opts = found[0]
    torch.manual_seed(0)
    b, h, hkv, t, d = 2, 4, 2, 200, 64  # GQA, several blocks, a ragged last one
    base = [torch.randn(b, n, t, d, dtype=torch.float64) * 0.5 for n in (h, hkv, hkv)]
    params = spec.make_params(h, d, opts) if spec.make_params else None
    dense = torch.tril(torch.ones(t, t, dtype=torch.bool))[None, None]
    ref_ctx = AttentionContext(scaling=d**-0.5, options=opts, params=None if params is None else params.double())
    leaves = [x.clone().requires_grad_() for x in base]
    ref, _ = spec.forward(leaves[0], repeat_kv(leaves[1], h // hkv), repeat_kv(leaves[2], h // hkv), dense, ref_ctx)
    ref.square().sum().backward()
    cuda_params = None if params is None else params.to("cuda", dtype)
    ctx = AttentionContext(scaling=d**-0.5, options=opts, params=cuda_params)
    mask = AttentionMask(None, t, t, 0)
    reason = spec.fast_supports[backend](base[0].to("cuda", dtype), mask, ctx) if backend in spec.fast_supports else None
    if reason is not None:
        pytest.skip(f"{mech}/{backend}: {reason}")
    qkv = [x.to("cuda", dtype).requires_grad_() for x in base]
    out = spec.fast[backend](*qkv, mask, ctx)
    out.float().square().sum().backward()
    scale = float(ref.detach().abs().max())
    torch.testing.assert_close(out.double().cpu(), ref.detach(), atol=TOL[dtype] * scale, rtol=TOL[dtype])
    for got, want in zip(qkv, leaves):
        g = float(want.grad.abs().max())
        torch.testing.assert_close(got.grad.double().cpu(), want.grad, atol=TOL[dtype] * 4 * g, rtol=TOL[dtype] * 4)


def test_generate_from_the_polynomial_state_on_cuda():
    models = {}
    for backend in ("linear", "fused"):
        torch.manual_seed(0)
        models[backend] = AutoModelForCausalLM.from_config(tiny_config("llama"), attn_implementation="polynomial",
                                                           attnswap={"degree": 2, "backend": backend}).cuda().eval()
    ids = random_ids(2, 7).cuda()
    kwargs = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": PAD, "return_dict_in_generate": True,
              "output_logits": True}
    got, want = models["linear"].generate(ids, **kwargs), models["fused"].generate(ids, **kwargs)
    assert isinstance(got.past_key_values, PolynomialLinearCache)
    assert torch.equal(got.sequences, want.sequences)
    torch.testing.assert_close(torch.stack(got.logits), torch.stack(want.logits), atol=1e-4, rtol=1e-4)
