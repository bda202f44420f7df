"""Integration tests on the real SmolLM2-135M (Llama architecture, GQA 9/3 heads), prepared offline by
`attnswap prepare-assets`. Skipped when the assets are absent, unless ATTNSWAP_REQUIRE_ASSETS=1 (as in CI)."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_attnswap
from hf_attnswap.data.assets import is_prepared, smollm2_path

pytestmark = pytest.mark.integration

if not is_prepared("smollm2"):
    if os.environ.get("ATTNSWAP_REQUIRE_ASSETS") == "1":
        raise RuntimeError("SmolLM2 assets are missing; run `attnswap prepare-assets` (ATTNSWAP_REQUIRE_ASSETS=1).")
    pytest.skip("SmolLM2 assets not prepared: run `attnswap prepare-assets`", allow_module_level=True)

TEXT = (
    "Wikipedia is a free online encyclopedia written and maintained by a community of volunteers. "
    "It was launched in 2001 and has since become one of the most visited websites in the world."
)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(smollm2_path())


@pytest.fixture(scope="module")
def base():
    return AutoModelForCausalLM.from_pretrained(smollm2_path(), attn_implementation="sdpa").eval()


def greedy(model, tokenizer, prompt, n=10):
    enc = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return out[0, enc.input_ids.shape[1]:]


@torch.no_grad()
def test_dagpam_lambda0_reproduces_smollm2(base, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(smollm2_path(), attn_implementation="dagpam").eval()
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    # The default (fused) path equals Transformers' sdpa; the reference path equals Transformers' eager.
    # (Transformers' own eager and sdpa differ by ~1e-4 over SmolLM2's 30 layers.)
    torch.testing.assert_close(model(ids).logits, base(ids).logits, atol=1e-5, rtol=0)
    reference = AutoModelForCausalLM.from_pretrained(smollm2_path(), attn_implementation="dagpam",
                                                     attnswap={"backend": "reference"}).eval()
    eager = AutoModelForCausalLM.from_pretrained(smollm2_path(), attn_implementation="eager").eval()
    torch.testing.assert_close(reference(ids).logits, eager(ids).logits, atol=1e-5, rtol=0)
    prompt = "The capital of France is"
    expected = greedy(base, tokenizer, prompt)
    assert torch.equal(greedy(model, tokenizer, prompt), expected)
    assert "Paris" in tokenizer.decode(expected)


@torch.no_grad()
@pytest.mark.parametrize("mech,options", [("softmax", {}), ("polynomial", {"degree": 3}), ("dagpam", {"lambda_init": 0.1})])
def test_each_mechanism_loads_and_generates(tokenizer, mech, options):
    model = AutoModelForCausalLM.from_pretrained(smollm2_path(), attn_implementation=mech, attnswap=options).eval()
    new = greedy(model, tokenizer, "Once upon a time", n=8)
    assert len(new) == 8
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    assert torch.isfinite(model(ids).logits).all()
    if mech == "dagpam":
        overhead = hf_attnswap.parameter_overhead(model)
        assert overhead["added"] == 30 * (64 * 64 + 9) and overhead["percent"] < 1.0


def test_demo_runs_on_smollm2():
    from hf_attnswap.demo import run_demo

    rows = {(r["attn"], r["options"].get("lambda_init")): r for r in run_demo(max_new_tokens=4)}
    sdpa, dagpam0 = rows[("sdpa", None)], rows[("dagpam", 0.0)]
    assert abs(dagpam0["ppl"] - sdpa["ppl"]) < 1e-3 * sdpa["ppl"] and dagpam0["generation"] == sdpa["generation"]
    assert dagpam0["added_params"] == 123_150 and sdpa["added_params"] == 0
    assert 5 < sdpa["ppl"] < 100


def test_polynomial_linear_backend_equals_fused_on_real_text(tokenizer, monkeypatch):
    """p=2 as linear attention on the real SmolLM2 (GQA 9/3, d=64) and real news text longer than one chunk
    (so the linear kernel runs, not its short-call fallback): same logits and gradients as the blocked kernel."""
    from hf_attnswap.data.assets import resolve_asset
    from hf_attnswap.data.text import load_texts
    from hf_attnswap.kernels import polynomial_linear

    calls = []
    original = polynomial_linear.polynomial_linear_attention
    monkeypatch.setattr(polynomial_linear, "polynomial_linear_attention", lambda *a, **k: calls.append(1) or original(*a, **k))

    text = " ".join(load_texts(str(resolve_asset("news-text")))[:3])
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :300]
    assert ids.shape[1] == 300
    results = {}
    for backend in ("fused", "linear"):
        model = AutoModelForCausalLM.from_pretrained(smollm2_path(), attn_implementation="polynomial",
                                                     attnswap={"degree": 2, "backend": backend})
        out = model(ids, labels=ids)
        out.loss.backward()
        q_grad = model.model.layers[3].self_attn.q_proj.weight.grad
        results[backend] = (out.logits.detach(), out.loss.detach(), q_grad)
    assert len(calls) == 30  # the linear run went through the linear kernel in each of the 30 layers
    (lf, loss_f, gf), (ll, loss_l, gl) = results["fused"], results["linear"]
    assert torch.isfinite(lf).all()
    torch.testing.assert_close(ll, lf, rtol=1e-4, atol=1e-4 * lf.abs().max().item())
    torch.testing.assert_close(loss_l, loss_f, rtol=1e-5, atol=0)
    torch.testing.assert_close(gl, gf, rtol=1e-3, atol=1e-3 * gf.abs().max().item())
