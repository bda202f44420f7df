"""torch.compile (inductor, CPU) of swapped models: full graph, same logits, and a training step."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import random_ids, tiny_config

CASES = [("llama", "softmax", {}), ("llama", "polynomial", {}), ("llama", "dagpam", {"lambda_init": 0.3}),
         ("gpt2", "dagpam", {"lambda_init": 0.3}), ("gpt2", "polynomial", {"backend": "reference"})]


@pytest.mark.parametrize("arch,mech,options", CASES)
def test_compiled_model_matches_eager_model(arch, mech, options):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(arch), attn_implementation=mech, attnswap=options)
    ids = random_ids(2, 9)
    model.eval()
    expected = model(ids).logits
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(ids).logits, expected, atol=1e-5, rtol=1e-5)
    model.train()
    logits = compiled(ids).logits  # the loss outside: GPT-2's own loss path logs a warning dynamo cannot trace
    torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    grads = [p.grad for n, p in model.named_parameters() if ".attnswap." in n]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_compiled_polynomial_linear_backend(monkeypatch):
    """backend="linear" (p=2) under torch.compile(fullgraph=True): long enough (200 > one chunk of 128 queries)
    that the linear kernel runs, not its short-call fallback; forward equal to eager, backward finite."""
    from hf_attnswap.kernels import polynomial_linear

    torch._dynamo.reset()
    torch.manual_seed(0)
    cfg = tiny_config("llama")
    cfg.max_position_embeddings = 256
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="polynomial",
                                             attnswap={"degree": 2, "backend": "linear"})
    ids = random_ids(2, 200)
    calls = []
    original = polynomial_linear.polynomial_linear_attention
    monkeypatch.setattr(polynomial_linear, "polynomial_linear_attention", lambda *a, **k: calls.append(1) or original(*a, **k))
    model.eval()
    expected = model(ids).logits
    assert calls, "the eager run did not reach the linear kernel"
    compiled = torch.compile(model, fullgraph=True)
    torch.testing.assert_close(compiled(ids).logits, expected, atol=1e-5, rtol=1e-5)
    model.train()
    model(ids).logits.square().mean().backward()
    eager_grads = [p.grad.clone() for n, p in model.named_parameters() if "q_proj" in n]
    model.zero_grad(set_to_none=True)
    compiled(ids).logits.square().mean().backward()
    grads = [p.grad for n, p in model.named_parameters() if "q_proj" in n]
    assert grads and all(g.abs().sum() > 0 for g in grads)
    for got, want in zip(grads, eager_grads):
        torch.testing.assert_close(got, want, atol=1e-5 * want.abs().max().item(), rtol=1e-4)
