"""daGPAM's generic pre-rotary path on the real SmolLM2-135M equals the hand-written Llama entry it replaced, exactly.

The old entry stashed the ``position_embeddings`` pair as the model passed it and un-rotated the query with Llama's
``rotate_half``; the generic path converts the tables through the ``llama`` :class:`~hf_attnswap.patching.Architecture`
line (per-dim tables, ``rotate_half`` pairs, full width). For Llama that conversion must hand over the model's own
tensors, untouched, so the logits are bit-identical, on the reference and on the CPU kernel alike.
"""

from __future__ import annotations

import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_attnswap
from hf_attnswap import patching
from hf_attnswap.data.assets import is_prepared, smollm2_path
from hf_attnswap.kernels.rope import LLAMA, Rotary
from hf_attnswap.registry import ROPE_ATTR

pytestmark = pytest.mark.integration

if not is_prepared("smollm2"):
    if os.environ.get("ATTNSWAP_REQUIRE_ASSETS") == "1":
        raise RuntimeError("SmolLM2 assets are missing; run `attnswap prepare-assets` (ATTNSWAP_REQUIRE_ASSETS=1).")
    pytest.skip("SmolLM2 assets not prepared: run `attnswap prepare-assets`", allow_module_level=True)

TEXT = "The history of the printing press begins in the fifteenth century, when movable type reached Europe."


def _old_llama_entry(arch, tables, head_dim):
    """What the hand-written Llama entry stashed: the pair as the model passed it."""
    return tables


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_generic_pre_rotary_path_equals_the_old_llama_entry(backend, monkeypatch):
    ids = AutoTokenizer.from_pretrained(smollm2_path())(TEXT, return_tensors="pt").input_ids
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(
        smollm2_path(), attn_implementation="dagpam",
        attnswap={"lambda_init": 0.5, "neg_query_init": "normal", "backend": backend}).eval()
    seen = []
    layer = patching.attention_modules(model)[0]
    original = patching.model_rotary

    def record(arch, tables, head_dim):
        out = original(arch, tables, head_dim)
        seen.append((tables, out))
        return out

    monkeypatch.setattr(patching, "model_rotary", record)
    with torch.no_grad():
        generic = model(ids).logits
    tables, rotary = seen[0]
    assert isinstance(rotary, Rotary) and rotary.layout == LLAMA
    assert rotary[0] is tables[0] and rotary[1] is tables[1]  # the model's own tensors, no copy
    monkeypatch.setattr(patching, "model_rotary", _old_llama_entry)
    with torch.no_grad():
        old = model(ids).logits
    assert getattr(layer, ROPE_ATTR) is None  # cleared after each forward
    assert torch.equal(generic, old)
    hf_attnswap.unswap(model)
