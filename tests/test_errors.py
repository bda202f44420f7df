"""Bad input gets a clear error that names the problem and the fix."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, BloomConfig

import hf_attnswap
from hf_attnswap import NotSwappedError, OptionError, UnknownMechanismError, UnsupportedModelError
from conftest import random_ids, tiny_config


@pytest.mark.parametrize("call", ["from_pretrained", "from_config", "swap"])
def test_unknown_mechanism_lists_available(load, base_checkpoints, call):
    with pytest.raises(UnknownMechanismError) as err:
        if call == "from_pretrained":
            AutoModelForCausalLM.from_pretrained(base_checkpoints["gpt2"], attn_implementation="dagpm")
        elif call == "from_config":
            AutoModelForCausalLM.from_config(tiny_config("gpt2"), attn_implementation="dagpm")
        else:
            hf_attnswap.swap(load("gpt2"), "dagpm")
    msg = str(err.value)
    assert "'dagpm'" in msg and "dagpam" in msg and "polynomial" in msg and "softmax" in msg
    assert "Did you mean 'dagpam'" in msg


@pytest.mark.parametrize(
    "mech,options,match",
    [
        ("polynomial", {"degre": 3}, r"unknown option 'degre' for mechanism 'polynomial'.*Options of 'polynomial': degree"),
        ("polynomial", {"lambda_init": 0.1}, r"unknown option 'lambda_init'.*It is an option of 'dagpam'"),
        ("softmax", {"degree": 2}, r"It is an option of 'polynomial'"),
        ("polynomial", {"degree": 0}, r"'degree' must be an integer >= 1, got 0"),
        ("polynomial", {"degree": 2.5}, r"'degree' must be an integer, got 2.5"),
        ("polynomial", {"degree": "3"}, r"'degree' must be an integer"),
        ("polynomial", {"degree": True}, r"'degree' must be an integer"),
        ("polynomial", {"length_scale": "sqrt"}, r"'length_scale' must be one of 'visible', 'fixed', 'none'"),
        ("polynomial", {"length_scale": "fixed"}, r"needs option 'fixed_length'"),
        ("polynomial", {"fixed_length": 8}, r"only used with length_scale='fixed'"),
        ("dagpam", {"lambda_init": -0.1}, r"'lambda_init' must be >= 0, got -0.1"),
        ("dagpam", {"lambda_init": float("nan")}, r"'lambda_init' must be finite"),
        ("dagpam", {"lambda_constraint": "nonneg"}, r"softplus.*lambda_init > 0"),
        ("dagpam", {"trainable_lambda": "yes"}, r"'trainable_lambda' must be true or false"),
        ("dagpam", {"neg_query_proj": "per_layer"}, r"'shared', 'per_head'"),
        ("softmax", {"temperature": 0}, r"'temperature' must be >= 0.0001, got 0.0"),
        ("softmax", {"temperature": -1.0}, r"'temperature' must be >= 0.0001"),
        ("softmax", {"mechanism": "dagpam"}, r"options say mechanism 'dagpam'"),
    ],
)
@pytest.mark.parametrize("call", ["from_pretrained", "swap"])
def test_bad_options(load, base_checkpoints, mech, options, match, call):
    with pytest.raises(OptionError, match=match):
        if call == "from_pretrained":
            AutoModelForCausalLM.from_pretrained(base_checkpoints["llama"], attn_implementation=mech, attnswap=options)
        else:
            hf_attnswap.swap(load("llama"), mech, **options)


def test_options_without_a_mechanism(base_checkpoints):
    with pytest.raises(OptionError, match="attn_implementation='sdpa' is not an hf_attnswap mechanism"):
        AutoModelForCausalLM.from_pretrained(base_checkpoints["gpt2"], attn_implementation="sdpa", attnswap={"degree": 3})


def test_model_without_attention_interface():
    cfg = BloomConfig(vocab_size=64, hidden_size=32, n_layer=1, n_head=4)
    with pytest.raises(UnsupportedModelError, match=r"does not go|own code.*'gpt2'.*'llama'"):
        AutoModelForCausalLM.from_config(cfg, attn_implementation="polynomial")
    with pytest.raises(UnsupportedModelError, match="AttentionInterface"):
        hf_attnswap.swap(AutoModelForCausalLM.from_config(cfg), "softmax")


def test_dagpam_needs_an_architecture_entry():
    """A model type without an entry (here DeepSeek-V3, whose MLA attention rotates only the query's last dims) is
    refused for daGPAM, naming it and listing the supported ones; parameter-free mechanisms still run on it."""
    cfg = AutoConfig.for_model("deepseek_v3", vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                               num_key_value_heads=4, intermediate_size=64, moe_intermediate_size=16, n_routed_experts=2,
                               num_experts_per_tok=1, first_k_dense_replace=1, kv_lora_rank=8, q_lora_rank=8,
                               qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8, n_group=1, topk_group=1)
    model = AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(UnsupportedModelError, match=r"(?s)'dagpam'.*needs an architecture entry.*model_type "
                                                    r"'deepseek_v3'.*Supported: .*'llama'.*'qwen3'"):
        hf_attnswap.swap(model, "dagpam")
    hf_attnswap.swap(model, "polynomial")  # parameter-free mechanisms run on any AttentionInterface model
    assert torch.isfinite(model(random_ids(1, 5)).logits).all()


def test_set_attn_implementation_without_swap_is_caught(load):
    model = load("llama", "sdpa")
    model.set_attn_implementation("dagpam")
    with pytest.raises(NotSwappedError, match=r"hf_attnswap.swap\(model, 'dagpam'"):
        model(random_ids(1, 4))


def test_swap_rejects_non_transformers_models():
    with pytest.raises(UnsupportedModelError, match="PreTrainedModel"):
        hf_attnswap.swap(torch.nn.Linear(2, 2), "softmax")


def test_register_mechanism_validates_its_inputs():
    with pytest.raises(OptionError, match="identifier"):
        hf_attnswap.register_mechanism("my attn")
    with pytest.raises(OptionError, match="clashes"):
        hf_attnswap.register_mechanism("sdpa")
    with pytest.raises(OptionError, match="already registered"):
        hf_attnswap.register_mechanism("softmax")(lambda q, k, v, m, c: (v, None))
