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
