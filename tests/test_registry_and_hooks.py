"""Registration with Transformers, user-defined mechanisms, and the internals adapter (fails loudly if
Transformers changes what hf_attnswap relies on)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import pytest
import torch
from transformers import AttentionInterface, AutoModelForCausalLM, PreTrainedModel
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, create_causal_mask

import hf_attnswap
from hf_attnswap.options import check_float
from hf_attnswap.registry import PERSIST_SUFFIX
from hf_attnswap.transformers_hooks import hooks_installed
from conftest import random_ids, tiny_config


def test_list_mechanisms():
    mechs = hf_attnswap.list_mechanisms()
    assert {"softmax", "polynomial", "dagpam"} <= set(mechs)
    assert mechs["dagpam"]["options"]["lambda_init"] == 0.0 and mechs["dagpam"]["adds_parameters"]
    assert mechs["polynomial"]["backends"] == ["auto", "reference", "fused", "triton", "linear"]
    assert mechs["softmax"]["backends"] == ["auto", "reference", "fused"]
    assert mechs["polynomial"]["options"] == {"degree": 3, "length_scale": "visible", "fixed_length": None, "backend": "auto"}
    assert mechs["softmax"]["options"] == {"temperature": 1.0, "backend": "auto"}


@pytest.mark.parametrize("name", ["softmax", "polynomial", "dagpam"])
def test_registered_with_both_interfaces(name):
    for key in (name, name + PERSIST_SUFFIX):
        assert key in AttentionInterface._global_mapping and key in AttentionMaskInterface._global_mapping


@pytest.mark.parametrize("name", ["softmax", "polynomial", "dagpam"])
def test_mask_function_materialises_causal_padding_and_offset(name):
    """Transformers' create_causal_mask would skip the causal mask for sdpa; ours must always be materialised."""
    cfg = tiny_config("llama")
    cfg._attn_implementation = name
    embeds = torch.zeros(2, 3, 32)
    plain = create_causal_mask(cfg, embeds, attention_mask=None, past_key_values=None, position_ids=torch.arange(3)[None])
    assert plain.dtype == torch.bool and torch.equal(plain[0, 0], torch.tril(torch.ones(3, 3, dtype=torch.bool)))
    from transformers import DynamicCache

    cache = DynamicCache(config=cfg)
    cache.update(torch.zeros(2, 2, 4, 8), torch.zeros(2, 2, 4, 8), 0)  # 4 tokens already cached
    pad = torch.tensor([[0, 1, 1, 1, 1, 1, 1], [1] * 7])
    mask = create_causal_mask(cfg, embeds, attention_mask=pad, past_key_values=cache, position_ids=torch.arange(4, 7)[None])
    assert mask.shape == (2, 1, 3, 7)
    assert not mask[0, 0, :, 0].any() and mask[1, 0, :, 0].all()  # padding
    assert torch.equal(mask[1, 0], torch.tril(torch.ones(3, 7, dtype=torch.bool), diagonal=4))  # cache offset


def test_transformers_internals_hf_attnswap_relies_on():
    """If this fails, Transformers changed something hf_attnswap.transformers_hooks/patching depend on."""
    assert hooks_installed()
    for name in ("from_pretrained", "_from_config"):
        assert isinstance(inspect.getattr_static(PreTrainedModel, name), classmethod), name
    # _initialize_weights must call self._init_weights (our per-instance override initialises daGPAM).
    assert "self._init_weights(module)" in inspect.getsource(PreTrainedModel._initialize_weights)
    # config.json's public key `attn_implementation` is read back into `_attn_implementation`.
    cfg = type(tiny_config("llama")).from_dict({**tiny_config("llama").to_dict(), "attn_implementation": "polynomial"})
    assert cfg._attn_implementation == "polynomial"
    # A custom mask function is found through this global mapping.
    assert "dagpam" in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping
    # Attention classes are declared for output recording (used to find attention layers).
    from transformers import GPT2LMHeadModel, LlamaForCausalLM

    assert GPT2LMHeadModel._can_record_outputs["attentions"] is not None
    assert LlamaForCausalLM._can_record_outputs["attentions"] is not None
    # Requests for attention weights are visible to the attention function (fast paths step aside).
    from hf_attnswap.transformers_hooks import attention_weights_requested
    from transformers.utils.output_capturing import _active_collector

    assert not attention_weights_requested()
    token = _active_collector.set({"attentions": []})
    try:
        assert attention_weights_requested()
    finally:
        _active_collector.reset(token)
    # Llama's attention gets position_embeddings as a keyword (the rotary pre-hook reads it).
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaDecoderLayer

    assert "position_embeddings" in inspect.signature(LlamaAttention.forward).parameters
    assert "position_embeddings=position_embeddings" in inspect.getsource(LlamaDecoderLayer.forward)



def test_hooks_reach_registry_and_patching_only_through_registered_callbacks(monkeypatch):
    """transformers_hooks imports neither registry nor patching (tests/test_import_graph.py): those register what the
    hooks call at their import. Every callback is registered; a hook with none says what to import."""
    from hf_attnswap import transformers_hooks

    assert set(transformers_hooks._CALLBACKS) == set(transformers_hooks._CALLBACK_OWNERS)
    with pytest.raises(TypeError, match="unknown callback"):
        transformers_hooks.register_callbacks(no_such_hook=print)
    monkeypatch.setattr(transformers_hooks, "_CALLBACKS", {})
    with pytest.raises(RuntimeError, match=r"apply_from_config, which hf_attnswap\.patching registers .*import hf_attnswap"):
        AutoModelForCausalLM.from_config(tiny_config("llama"))
    with pytest.raises(RuntimeError, match=r"is_mechanism, which hf_attnswap\.registry registers"):
        AutoModelForCausalLM.from_config(tiny_config("llama"), attn_implementation="polynomial")


@dataclass
class ShiftedSigmoidOptions(hf_attnswap.MechanismOptions):
    bias: float = -2.0

    def __post_init__(self):
        self.bias = check_float("shifted_sigmoid", "bias", self.bias)


@hf_attnswap.register_mechanism("shifted_sigmoid", ShiftedSigmoidOptions)
def shifted_sigmoid_attention(query, key, value, mask, ctx):
    """Sigmoid attention with a bias (a user-defined mechanism, as in the README)."""
    w = torch.sigmoid(query @ key.transpose(-1, -2) * ctx.scaling + ctx.options.bias) * mask
    return w.to(value.dtype) @ value, w


def test_user_defined_mechanism(tmp_path):
    assert "shifted_sigmoid" in hf_attnswap.list_mechanisms()
    model = AutoModelForCausalLM.from_config(tiny_config("llama"), attn_implementation="shifted_sigmoid", attnswap={"bias": -1.0})
    ids = random_ids(1, 6)
    out = model(ids, output_attentions=True)
    assert torch.isfinite(out.logits).all() and (out.attentions[0][0, 0].triu(1) == 0).all()
    assert model.config.attnswap == {"mechanism": "shifted_sigmoid", "bias": -1.0}
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, atol=0, rtol=0)
    with pytest.raises(hf_attnswap.OptionError, match="'bias' must be a number"):
        AutoModelForCausalLM.from_config(tiny_config("llama"), attn_implementation="shifted_sigmoid", attnswap={"bias": "low"})
    with pytest.raises(hf_attnswap.OptionError, match="unknown option 'scale'"):
        hf_attnswap.swap(model, "shifted_sigmoid", scale=2)


def test_full_precision_undoes_accelerates_autocast_wrapper():
    """Accelerate's ``prepare`` with bf16 wraps ``model.forward`` in autocast and keeps the original in the private
    ``_original_forward``; evaluations (perplexity, translation) run inside ``full_precision`` and so in fp32."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from hf_attnswap.evaluation.perplexity import perplexity
    from hf_attnswap.transformers_hooks import full_precision

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama"), attn_implementation="polynomial")
    seen: list[bool] = []
    model.model.layers[0].register_forward_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
    ids = random_ids(2, 12)
    with torch.no_grad():
        reference = model(input_ids=ids).logits
    AcceleratorState._reset_state(True)
    try:
        prepared = Accelerator(cpu=True, mixed_precision="bf16").prepare(model)
        assert "_original_forward" in prepared.__dict__, "Accelerate no longer keeps _original_forward: fix full_precision"
        with torch.no_grad():
            prepared(input_ids=ids)
            with full_precision(prepared):
                inside = prepared(input_ids=ids).logits
            prepared(input_ids=ids)
    finally:
        AcceleratorState._reset_state(True)
    assert seen[1:] == [True, False, True]
    torch.testing.assert_close(inside, reference, rtol=0, atol=0)

    class Tok:  # a whitespace tokenizer over the tiny vocabulary
        bos_token_id, add_bos_token = None, False

        def __call__(self, texts, **_):
            return {"input_ids": [[int(w) % model.config.vocab_size for w in t.split()] for t in texts]}

    texts = [" ".join(str(i * 7 % 97) for i in range(40))]
    with torch.no_grad():
        wrapped_ppl = perplexity(prepared, Tok(), texts, max_length=16, progress=False).ppl
        prepared.forward = prepared._original_forward
        plain_ppl = perplexity(prepared, Tok(), texts, max_length=16, progress=False).ppl
    assert wrapped_ppl == plain_ppl


def test_a_user_fast_path_runs_and_registration_defines_the_backends():
    """The README's example: ``fast={"fused": fn}`` on options without a ``backend`` field. Registration adds the
    option (default ``"auto"``), so the fast path runs; ``reference`` and ``fused`` can be asked for by name."""
    calls: list[str] = []

    @dataclass
    class DoubledOptions(hf_attnswap.MechanismOptions):
        gain: float = 1.0

        def __post_init__(self):
            self.gain = check_float("doubled_softmax", "gain", self.gain)

    def fused(query, key, value, mask, ctx):
        calls.append("fused")
        attn_mask, is_causal = mask.sdpa_args()
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask,
                                                               is_causal=is_causal, scale=ctx.scaling, enable_gqa=True)
        return out * ctx.options.gain

    @hf_attnswap.register_mechanism("doubled_softmax", DoubledOptions, fast={"fused": fused}, overwrite=True)
    def reference(query, key, value, mask, ctx):
        calls.append("reference")
        s = (query @ key.transpose(-1, -2) * ctx.scaling).masked_fill(~mask, float("-inf"))
        w = s.softmax(-1)
        return (w.to(value.dtype) @ value) * ctx.options.gain, w

    info = hf_attnswap.list_mechanisms()["doubled_softmax"]
    assert info["backends"] == ["auto", "reference", "fused"] and info["options"] == {"gain": 1.0, "backend": "auto"}
    cfg = tiny_config("llama")
    ids = random_ids(1, 8)
    outs = {}
    for backend in ("auto", "reference", "fused"):
        calls.clear()
        torch.manual_seed(0)
        m = AutoModelForCausalLM.from_config(cfg, attn_implementation="doubled_softmax", attnswap={"backend": backend})
        with torch.no_grad():
            outs[backend] = m(input_ids=ids).logits
        assert set(calls) == {"reference" if backend == "reference" else "fused"}, backend
    torch.testing.assert_close(outs["fused"], outs["reference"], atol=1e-5, rtol=1e-5)
    with pytest.raises(hf_attnswap.OptionError, match="backend.*'nope'|'nope'.*backend"):
        AutoModelForCausalLM.from_config(cfg, attn_implementation="doubled_softmax", attnswap={"backend": "nope"})
    with pytest.raises(hf_attnswap.OptionError, match="not fast paths"):
        hf_attnswap.register_mechanism("doubled_softmax2", DoubledOptions, fast={"fused": fused}, auto=("triton",))(reference)
