"""generate() on the real SmolLM2-135M (Llama, GQA 9/3 heads, head size 64) swapped to polynomial attention of
degree 2, converting nothing: the linear backend decodes from its fixed-size state (PolynomialLinearCache) and gives
the tokens and logits of the blocked ``fused`` kernel with Transformers' KV cache."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from hf_attnswap.data.assets import is_prepared, smollm2_path
from hf_attnswap.mechanisms.polynomial import PolynomialLinearCache

pytestmark = pytest.mark.integration

if not is_prepared("smollm2"):
    if os.environ.get("ATTNSWAP_REQUIRE_ASSETS") == "1":
        raise RuntimeError("SmolLM2 assets are missing; run `attnswap prepare-assets` (ATTNSWAP_REQUIRE_ASSETS=1).")
    pytest.skip("SmolLM2 assets not prepared: run `attnswap prepare-assets`", allow_module_level=True)


@torch.no_grad()
def test_smollm2_linear_state_generates_as_fused_with_kv_cache():
    tokenizer = AutoTokenizer.from_pretrained(smollm2_path())
    enc = tokenizer("The capital of France is", return_tensors="pt")
    kwargs = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": tokenizer.eos_token_id,
              "return_dict_in_generate": True, "output_logits": True}
    out = {}
    for backend in ("linear", "fused"):
        model = AutoModelForCausalLM.from_pretrained(smollm2_path(), attn_implementation="polynomial",
                                                     attnswap={"degree": 2, "backend": backend}).eval()
        out[backend] = model.generate(**enc, **kwargs)
    assert isinstance(out["linear"].past_key_values, PolynomialLinearCache)
    assert isinstance(out["fused"].past_key_values, DynamicCache)
    assert torch.equal(out["linear"].sequences, out["fused"].sequences)
    got, want = torch.stack(out["linear"].logits), torch.stack(out["fused"].logits)
    # measured: 1.6e-5 of the largest at the first decode step (fp32 rounding: the state sums the D = 2080 feature
    # products in another order than the blocked kernel's (q·k)²; 3.3e-6 with the features' earlier row-major order)
    torch.testing.assert_close(got, want, atol=5e-5 * float(want.abs().max()), rtol=1e-5)
