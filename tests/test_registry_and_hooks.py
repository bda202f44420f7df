"""Registration with Transformers, user-defined mechanisms, and the internals adapter (fails loudly if
Transformers changes what hf_attnswap relies on)."""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import AttentionInterface, AutoModelForCausalLM, PreTrainedModel
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, create_causal_mask

import hf_attnswap
from hf_attnswap.options import check_float
from hf_attnswap.registry import PERSIST_SUFFIX
from hf_attnswap import transformers_hooks
from hf_attnswap.transformers_hooks import (
    TRANSFORMERS_ATTENTIONS,
    attention_class,
    attention_weights_requested,
    attn_implementation_of,
    child_module,
    class_init_weights,
    cpu_flash_attention,
    cpu_has_native_bf16,
    drop_config_attribute,
    has_forward_hooks,
    hooks_installed,
    is_transformers_attention_name,
    mask_causal_offset,
    override_init_weights,
    remove_child_module,
    remove_init_weights_override,
    set_attn_implementation_name,
    set_last_lr,
    supports_attention_interface,
)
from conftest import MECHANISMS, random_ids, tiny_config


def test_list_mechanisms():
    mechs = hf_attnswap.list_mechanisms()
    assert {"softmax", "polynomial", "dagpam"} <= set(mechs)
    assert mechs["dagpam"]["options"]["lambda_init"] == 0.0 and mechs["dagpam"]["adds_parameters"]
    assert mechs["polynomial"]["backends"] == ["auto", "reference", "fused", "triton", "linear"]
    assert mechs["softmax"]["backends"] == ["auto", "reference", "fused"]
    assert mechs["polynomial"]["options"] == {"degree": 3, "length_scale": "visible", "fixed_length": None, "backend": "auto",
                                                  "offset": 0.0}
    assert mechs["softmax"]["options"] == {"temperature": 1.0, "backend": "auto"}


@pytest.mark.parametrize("name", MECHANISMS)
def test_registered_with_both_interfaces(name):
    for key in (name, name + PERSIST_SUFFIX):
        assert key in AttentionInterface._global_mapping and key in AttentionMaskInterface._global_mapping


@pytest.mark.parametrize("name", MECHANISMS)
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
    """If this fails, Transformers changed something the hooks of hf_attnswap.transformers_hooks depend on."""
    assert hooks_installed()
    for name in ("from_pretrained", "_from_config"):
        assert isinstance(inspect.getattr_static(PreTrainedModel, name), classmethod), name
    # config.json's public key `attn_implementation` is read back into `_attn_implementation`.
    cfg = type(tiny_config("llama")).from_dict({**tiny_config("llama").to_dict(), "attn_implementation": "polynomial"})
    assert cfg._attn_implementation == "polynomial" and attn_implementation_of(cfg) == "polynomial"
    set_attn_implementation_name(cfg, "softmax")
    assert cfg._attn_implementation == "softmax" and attn_implementation_of(object(), "?") == "?"
    # A custom mask function is found through this global mapping.
    assert "dagpam" in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping
    # Llama's attention gets position_embeddings as a keyword (the rotary pre-hook reads it).
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaDecoderLayer

    assert "position_embeddings" in inspect.signature(LlamaAttention.forward).parameters
    assert "position_embeddings=position_embeddings" in inspect.getsource(LlamaDecoderLayer.forward)


# --- every private internal behind a function of hf_attnswap.transformers_hooks, each named and tested -------------

#: The private names of Transformers, PyTorch and Accelerate that hf_attnswap touches (as identifiers, attribute
#: names, imported names or the string of a getattr/pop): only hf_attnswap/transformers_hooks.py may use them.
PRIVATE_NAMES = {
    "_from_config",  # PreTrainedModel._from_config: wrapped (attnswap= keyword of AutoModel*.from_config)
    "_check_and_adjust_attn_implementation",  # wrapped: a mechanism on a model outside AttentionInterface is refused
    "_attn_implementation",  # PretrainedConfig._attn_implementation: attn_implementation_of, set_attn_implementation_name
    "_supports_attention_backend",  # supports_attention_interface
    "_can_record_outputs",  # attention_class
    "_init_weights",  # override_init_weights, class_init_weights, remove_init_weights_override
    "_active_collector",  # attention_weights_requested
    "sdpa_mask", "causal_mask_function", "allow_is_causal_skip",  # boolean_mask, mask_causal_offset
    "_modules",  # nn.Module._modules: child_module, remove_child_module
    "_forward_hooks", "_forward_pre_hooks", "_global_forward_hooks", "_global_forward_pre_hooks",  # has_forward_hooks
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention_for_cpu_backward",  # cpu_flash_attention
    "_last_lr",  # set_last_lr
    "_is_mkldnn_bf16_supported",  # cpu_has_native_bf16
    "_original_forward",  # full_precision (Accelerate)
    "_custom_objects",  # forget_prepared (Accelerate)
    "_prepare_cache_for_generation",  # wrapped: generate() builds a mechanism's state cache (_wrap_prepare_cache)
}


def _names_used(path):
    """(name, line) of every identifier, attribute, imported name and string constant in ``path``; a bare name the
    module defines itself (a function of its own that happens to share a private name) does not count."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    own = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            yield node.attr, node.lineno
        elif isinstance(node, ast.Name) and node.id not in own:
            yield node.id, node.lineno
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                yield alias.name.rsplit(".", 1)[-1], node.lineno
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value, node.lineno


def test_private_names_appear_only_in_the_compatibility_module():
    package = Path(transformers_hooks.__file__).parent
    compat = Path(transformers_hooks.__file__)
    used_there = {name for name, _ in _names_used(compat)}
    assert PRIVATE_NAMES <= used_there, f"not in transformers_hooks.py any more: {sorted(PRIVATE_NAMES - used_there)}"
    elsewhere = sorted(f"{path.relative_to(package.parent)}:{line}: {name}" for path in package.rglob("*.py")
                       if path != compat for name, line in _names_used(path) if name in PRIVATE_NAMES)
    assert not elsewhere, ("private internals touched outside hf_attnswap/transformers_hooks.py (add a named function "
                           "there, and a test here):\n" + "\n".join(elsewhere))


def test_internal_transformers_attention_names():
    """TRANSFORMERS_ATTENTIONS (one list, for the registry's name clash check and the unknown-name error) are names
    Transformers runs, as is_transformers_attention_name says; an unknown name's error lists them."""
    for name in TRANSFORMERS_ATTENTIONS:
        assert is_transformers_attention_name(name), name
        assert name == "eager" or name in AttentionInterface().valid_keys(), name
    assert is_transformers_attention_name("paged|sdpa") and not is_transformers_attention_name("no_such_attention")
    with pytest.raises(hf_attnswap.UnknownMechanismError, match="Transformers' own: " + ", ".join(TRANSFORMERS_ATTENTIONS)):
        AutoModelForCausalLM.from_config(tiny_config("llama"), attn_implementation="no_such_attention")
    with pytest.raises(hf_attnswap.OptionError, match="clashes with a Transformers attention"):
        hf_attnswap.register_mechanism("flex_attention")


def test_internal_prepare_cache_for_generation():
    """``generate()`` prepares its cache in ``GenerationMixin._prepare_cache_for_generation(generation_config,
    model_kwargs, generation_mode, batch_size, max_cache_length)``, writing it to ``model_kwargs["cache"]``, and hands
    that object to every forward: the wrapper puts a mechanism's state cache there, and checks a cache the user passes."""
    from transformers import DynamicCache, GenerationConfig
    from transformers.generation.utils import GenerationMixin

    from hf_attnswap.mechanisms.polynomial import PolynomialLinearCache

    prepare = GenerationMixin._prepare_cache_for_generation
    assert hasattr(prepare, "__hf_attnswap_wrapped__")
    params = list(inspect.signature(prepare.__hf_attnswap_wrapped__).parameters)
    assert params[:6] == ["self", "generation_config", "model_kwargs", "generation_mode", "batch_size", "max_cache_length"]
    assert "self._prepare_cache_for_generation(" in inspect.getsource(GenerationMixin.generate)
    torch.manual_seed(0)
    linear = AutoModelForCausalLM.from_config(tiny_config("llama"), attn_implementation="polynomial",
                                              attnswap={"degree": 2, "backend": "linear"}).eval()
    kwargs: dict = {}
    linear._prepare_cache_for_generation(GenerationConfig(), kwargs, None, 1, 10)
    assert isinstance(kwargs["cache"], PolynomialLinearCache)
    kwargs = {}
    linear._prepare_cache_for_generation(GenerationConfig(cache_implementation="dynamic"), kwargs, None, 1, 10)
    assert type(kwargs["cache"]) is DynamicCache  # the user asked for a particular cache
    seen = []
    original = linear.forward
    linear.forward = lambda *a, **k: seen.append(k.get("cache")) or original(*a, **k)
    out = linear.generate(random_ids(1, 3), max_new_tokens=2, pad_token_id=0, return_dict_in_generate=True)
    assert seen and all(c is out.past_key_values for c in seen) and isinstance(seen[0], PolynomialLinearCache)
    plain = AutoModelForCausalLM.from_config(tiny_config("llama"), attn_implementation="sdpa").eval()
    with pytest.raises(hf_attnswap.OptionError, match="cannot serve this model"):
        plain._prepare_cache_for_generation(GenerationConfig(), {"cache": PolynomialLinearCache.__new__(PolynomialLinearCache)},
                                            None, 1, 10)


def test_internal_check_and_adjust_attn_implementation():
    """``PreTrainedModel.__init__`` checks the requested attention with ``_check_and_adjust_attn_implementation``
    before the model builds its layers (Falcon then looks the name up in its own table): the wrapper refuses a
    mechanism there, on models outside AttentionInterface, and leaves every other call to Transformers."""
    from transformers import FalconConfig, FalconForCausalLM

    assert "self._check_and_adjust_attn_implementation(" in inspect.getsource(PreTrainedModel.__init__)
    assert hasattr(PreTrainedModel._check_and_adjust_attn_implementation, "__hf_attnswap_wrapped__")
    cfg = FalconConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64)
    set_attn_implementation_name(cfg, "softmax")
    with pytest.raises(hf_attnswap.UnsupportedModelError, match="model_type 'falcon'"):
        FalconForCausalLM(cfg)
    set_attn_implementation_name(cfg, "eager")
    assert attn_implementation_of(FalconForCausalLM(cfg).config) == "eager"


def test_internal_supports_attention_backend():
    """``_supports_attention_backend``: a class attribute, False by default, True for the supported architectures."""
    from transformers import GPT2LMHeadModel, LlamaForCausalLM

    assert inspect.getattr_static(PreTrainedModel, "_supports_attention_backend") is False
    for cls in (GPT2LMHeadModel, LlamaForCausalLM):
        assert supports_attention_interface(cls) and cls.is_backend_compatible(), cls.__name__
    assert not supports_attention_interface(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("model_type", ["gpt2", "llama", "mistral", "qwen2"])
def test_internal_can_record_outputs_names_the_attention_class(model_type):
    """``_can_record_outputs["attentions"]`` (a class or an OutputRecorder's ``target_class``) names the attention
    class of every architecture of patching.ARCHITECTURES: how hf_attnswap finds attention layers."""
    import importlib

    from hf_attnswap.patching import ARCHITECTURES

    assert model_type in ARCHITECTURES
    prefix = {"gpt2": "GPT2", "llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}[model_type]
    modeling = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    head = getattr(modeling, f"{prefix}LMHeadModel" if model_type == "gpt2" else f"{prefix}ForCausalLM")
    assert attention_class(head) is getattr(modeling, f"{prefix}Attention")
    assert attention_class(torch.nn.Linear(2, 2)) is None
    if model_type in ("gpt2", "llama"):
        model = AutoModelForCausalLM.from_config(tiny_config(model_type))
        assert attention_class(model) is getattr(modeling, f"{prefix}Attention")


def test_internal_init_weights_is_what_initialisation_calls():
    """``_initialize_weights`` calls ``self._init_weights(module)``, so an instance override (daGPAM's parameters) is
    reached; class_init_weights goes past it; remove_init_weights_override puts the class's back."""
    assert "self._init_weights(module)" in inspect.getsource(PreTrainedModel._initialize_weights)
    model = AutoModelForCausalLM.from_config(tiny_config("llama"))
    seen = []
    layer = torch.nn.Linear(4, 4)
    override_init_weights(model, _recording_init)
    model._attnswap_test_seen = seen
    model._initialize_weights(layer)
    assert seen == [layer]
    with torch.no_grad():
        layer.weight.fill_(7.0)
    class_init_weights(model, layer)  # Llama's own init: normal(0, initializer_range)
    assert not bool((layer.weight == 7.0).any())
    remove_init_weights_override(model)
    remove_init_weights_override(model)  # nothing to remove: no error
    assert "_init_weights" not in model.__dict__
    model._initialize_weights(torch.nn.Linear(4, 4))
    assert seen == [layer]


def _recording_init(model, module):
    model._attnswap_test_seen.append(module)


def test_internal_config_attributes_live_in_the_instance_dict():
    """drop_config_attribute removes an extra config attribute so that ``to_dict`` (config.json) no longer has it."""
    cfg = tiny_config("llama")
    cfg.attnswap = {"mechanism": "polynomial"}
    assert cfg.to_dict()["attnswap"] == {"mechanism": "polynomial"}
    drop_config_attribute(cfg, "attnswap")
    drop_config_attribute(cfg, "attnswap")  # absent: no error
    assert "attnswap" not in cfg.to_dict() and not hasattr(cfg, "attnswap")


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_internal_sdpa_mask_keywords_and_the_causal_tag(arch, monkeypatch):
    """boolean_mask relies on ``sdpa_mask``'s keywords, on ``create_causal_mask`` passing them by name with
    ``mask_function=causal_mask_function`` for a plain causal mask, and on the tagged tensor reaching the attention
    function itself (mask_causal_offset reads the tag there)."""
    from transformers import DynamicCache
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    params = inspect.signature(sdpa_mask).parameters
    for name in ("q_length", "kv_length", "q_offset", "kv_offset", "mask_function", "attention_mask", "local_size",
                 "allow_is_causal_skip"):
        assert name in params, name
    assert params["mask_function"].default is causal_mask_function
    cfg = tiny_config("llama")
    cfg._attn_implementation = "polynomial"
    embeds = torch.zeros(2, 3, 32)
    plain = create_causal_mask(cfg, embeds, attention_mask=None, past_key_values=None, position_ids=torch.arange(3)[None])
    assert plain.dtype == torch.bool and mask_causal_offset(plain) == 0
    cache = DynamicCache(config=cfg)
    cache.update(torch.zeros(2, 2, 4, 8), torch.zeros(2, 2, 4, 8), 0)
    cached = create_causal_mask(cfg, embeds, attention_mask=None, past_key_values=cache, position_ids=torch.arange(4, 7)[None])
    assert mask_causal_offset(cached) == 4
    pad = torch.tensor([[0, 1, 1, 1, 1, 1, 1], [1] * 7])
    padded = create_causal_mask(cfg, embeds, attention_mask=pad, past_key_values=cache, position_ids=torch.arange(4, 7)[None])
    assert mask_causal_offset(padded) is None and mask_causal_offset(torch.ones(1)) is None

    from hf_attnswap import registry

    seen = []
    monkeypatch.setattr(registry, "mask_causal_offset", lambda m: seen.append(mask_causal_offset(m)) or seen[-1])
    model = AutoModelForCausalLM.from_config(tiny_config(arch), attn_implementation="polynomial",
                                             attnswap={"backend": "fused"})
    with torch.no_grad():
        model(random_ids(1, 6))
    assert seen == [0, 0]


def test_internal_output_capturing_collector():
    """Requests for attention weights are visible to the attention function (fast paths step aside) through
    ``transformers.utils.output_capturing._active_collector``."""
    from transformers.utils.output_capturing import _active_collector

    assert not attention_weights_requested()
    token = _active_collector.set({"attentions": []})
    try:
        assert attention_weights_requested()
    finally:
        _active_collector.reset(token)
    for arch in ("gpt2", "llama"):  # GPT-2 does not pass output_attentions down to the attention function
        model = AutoModelForCausalLM.from_config(tiny_config(arch), attn_implementation="polynomial",
                                                 attnswap={"backend": "fused"})
        with torch.no_grad():
            out = model(random_ids(1, 5), output_attentions=True)
        assert len(out.attentions) == 2 and all(w is not None for w in out.attentions), arch  # the reference ran


def test_internal_module_children():
    """``nn.Module._modules`` holds what ``add_module`` registers; child_module never finds a plain attribute."""
    module = torch.nn.Module()
    child = torch.nn.Linear(2, 2)
    module.add_module("attnswap", child)
    assert child_module(module, "attnswap") is child and module._modules["attnswap"] is child
    object.__setattr__(module, "plain", torch.nn.Linear(2, 2))
    assert child_module(module, "plain") is None and child_module(module, "absent") is None
    remove_child_module(module, "attnswap")
    remove_child_module(module, "attnswap")  # absent: no error
    assert not hasattr(module, "attnswap") and list(module.children()) == []


def test_internal_forward_hooks_are_seen():
    """has_forward_hooks sees every kind of forward hook that would observe a call of the module (the CPU kernel,
    which bypasses the parameter module's forward, must then step aside)."""
    from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

    module = torch.nn.Linear(2, 2)
    assert not has_forward_hooks(module)
    for register in (lambda: module.register_forward_hook(lambda *a: None),
                     lambda: module.register_forward_hook(lambda *a, **k: None, with_kwargs=True),
                     lambda: module.register_forward_pre_hook(lambda *a: None),
                     lambda: module.register_forward_pre_hook(lambda *a, **k: None, with_kwargs=True),
                     lambda: register_module_forward_hook(lambda *a: None),
                     lambda: register_module_forward_pre_hook(lambda *a: None)):
        handle = register()
        try:
            assert has_forward_hooks(module)
        finally:
            handle.remove()
        assert not has_forward_hooks(module)


def test_internal_cpu_flash_attention_ops():
    """``torch.ops.aten._scaled_dot_product_flash_attention_for_cpu`` and its backward, as kernels/dagpam_cpu.py calls
    them: GQA K/V, an additive float mask broadcast over the batch, ``is_causal``, (out, logsumexp) with out laid out
    (B, Q, H, d), and a backward that matches SDPA's gradients."""
    forward, backward = cpu_flash_attention()
    torch.manual_seed(0)
    b, h, hkv, q_len, k_len, d, scale = 2, 4, 2, 5, 7, 8, 0.3
    q = torch.randn(b, q_len, h, d, dtype=torch.float64).transpose(1, 2)  # laid out as Transformers' queries
    k = torch.randn(b, hkv, k_len, d, dtype=torch.float64)
    v = torch.randn(b, hkv, k_len, d, dtype=torch.float64)
    visible = torch.tril(torch.ones(q_len, k_len, dtype=torch.bool), diagonal=k_len - q_len)[None, None]
    fmask = torch.zeros(visible.shape, dtype=torch.float64).masked_fill_(~visible, float("-inf"))
    out, lse = forward(q, k, v, 0.0, False, attn_mask=fmask, scale=scale)
    kr, vr = k.repeat_interleave(h // hkv, 1), v.repeat_interleave(h // hkv, 1)  # query head i uses KV head i // 2
    ref = torch.nn.functional.scaled_dot_product_attention(q, kr, vr, attn_mask=visible, scale=scale)
    assert out.shape == (b, h, q_len, d) and out.transpose(1, 2).is_contiguous()
    torch.testing.assert_close(out, ref)
    assert lse.shape == (b, h, q_len)
    torch.testing.assert_close(lse, (q @ kr.mT * scale).masked_fill(~visible, float("-inf")).logsumexp(-1))
    qc = torch.randn(b, h, k_len, d, dtype=torch.float64)
    out_c, _ = forward(qc, k, v, 0.0, True, attn_mask=None, scale=scale)  # is_causal: top-left aligned, Q == K
    torch.testing.assert_close(out_c, torch.nn.functional.scaled_dot_product_attention(qc, kr, vr, is_causal=True,
                                                                                       scale=scale))
    grad = torch.randn(b, q_len, h, d, dtype=torch.float64).transpose(1, 2)
    dq, dk, dv = backward(grad, q, k, v, out, lse, 0.0, False, attn_mask=fmask, scale=scale)
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    ref = torch.nn.functional.scaled_dot_product_attention(*leaves, attn_mask=visible, scale=scale, enable_gqa=True)
    for got, want in zip((dq, dk, dv), torch.autograd.grad(ref, leaves, grad), strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want)


def test_internal_cpu_bf16_support():
    """``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` answers a bool, and it agrees with the public CPU capability
    for the CPUs it is sure of: an AVX2-only CPU has no bf16 kernels, a CPU with AVX512-BF16 or AMX has them."""
    native = cpu_has_native_bf16()
    assert isinstance(native, bool)
    capability = torch.backends.cpu.get_cpu_capability()
    if capability in ("DEFAULT", "AVX2"):
        assert not native, capability
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text().split()) if cpuinfo.exists() else set()
    if flags & {"avx512_bf16", "amx_bf16"}:
        assert native


def test_internal_scheduler_last_lr():
    """``LRScheduler.get_last_lr()`` returns the private list ``_last_lr``, which set_last_lr rewrites."""
    from torch.optim.lr_scheduler import LambdaLR

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = LambdaLR(optimizer, lambda step: 1.0)
    set_last_lr(scheduler, 0, 0.025)
    assert scheduler.get_last_lr() == [0.025]
    set_last_lr(object(), 0, 0.025)  # no _last_lr: left alone


def test_hooks_reach_registry_and_patching_only_through_registered_callbacks(monkeypatch):
    """transformers_hooks imports neither registry nor patching (tests/test_import_graph.py): those register what the
    hooks call at their import. Every callback is registered; a hook with none says what to import."""
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


def test_internal_forget_prepared_resets_what_save_state_writes(tmp_path):
    """A second training in one process (the conversion's stage 2) must checkpoint only its own objects: after
    ``forget_prepared`` Accelerate's ``save_state`` writes one model, one optimiser and one registered object, named
    as a fresh process would name them (so a resume that skips the first training loads the right files)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from hf_attnswap.transformers_hooks import forget_prepared

    AcceleratorState._reset_state(True)
    try:
        acc = Accelerator(cpu=True)
        assert isinstance(acc._custom_objects, list), "Accelerate no longer keeps _custom_objects: fix forget_prepared"
        for _ in range(2):
            forget_prepared(acc)
            model = torch.nn.Linear(2, 2)
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
            model, opt = acc.prepare(model, opt)
            acc.register_for_checkpointing(sched)
        acc.save_state(str(tmp_path / "state"))
    finally:
        AcceleratorState._reset_state(True)
    names = sorted(p.name for p in (tmp_path / "state").iterdir())
    assert not any("_1" in n for n in names), names
    assert "model.safetensors" in names and "custom_checkpoint_0.pkl" in names, names


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
