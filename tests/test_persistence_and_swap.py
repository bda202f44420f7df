"""Extra parameters, save/load, loading without the plugin, and swap() on live models."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

import hf_attnswap
from conftest import ARCHS, MECHANISMS, random_ids, tiny_config

NON_DEFAULT = {
    "softmax": {"temperature": 0.8},
    "polynomial": {"degree": 5, "length_scale": "fixed", "fixed_length": 16},
    "dagpam": {"lambda_init": 0.2, "neg_query_proj": "per_head", "tied_lambda": False, "neg_query_init": "identity"},
}


def attnswap_params(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if ".attnswap." in n}


@pytest.mark.parametrize("arch", ARCHS)
def test_plain_checkpoint_initialises_new_parameters(load, arch):
    """Transformers fills missing parameters with torch.empty unless _init_weights knows them."""
    for _ in range(3):  # uninitialised memory would show up as varying garbage
        model = load(arch, "dagpam", lambda_init=0.125)
        params = attnswap_params(model)
        assert len(params) == 2 * 2
        for name, p in params.items():
            if name.endswith("neg_query_weight"):
                assert torch.equal(p, -torch.eye(p.shape[-1]))
            else:
                assert torch.equal(p, torch.full_like(p, 0.125))


@pytest.mark.parametrize("arch", ARCHS)
def test_dagpam_parameters_exist_from_construction(arch):
    model = AutoModelForCausalLM.from_config(tiny_config(arch), attn_implementation="dagpam", attnswap={"lambda_init": 0.1})
    params = attnswap_params(model)
    assert params and all(torch.isfinite(p).all() for p in params.values())
    assert model.config.attnswap["lambda_init"] == 0.1 and model.config._attn_implementation == "dagpam"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("mech", MECHANISMS)
def test_save_and_reload_restores_mechanism_options_and_weights(load, tmp_path, arch, mech):
    model = load(arch, mech, **NON_DEFAULT[mech])
    with torch.no_grad():  # make the new parameters differ from any init
        for p in attnswap_params(model).values():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["attn_implementation"].startswith(mech + " ")
    assert saved["attnswap"] == {"mechanism": mech, **hf_attnswap.parse_options(mech, NON_DEFAULT[mech]).to_dict()}

    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert reloaded.config._attn_implementation == mech
    assert reloaded.config.attnswap == model.config.attnswap
    ids = random_ids(2, 7)
    torch.testing.assert_close(reloaded.eval()(ids).logits, model(ids).logits, atol=0, rtol=0)
    # ...and it saves again identically (the persisted name survives a second round trip).
    reloaded.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["attn_implementation"] == saved["attn_implementation"]


def test_loading_without_the_plugin_says_what_to_do(load, tmp_path):
    load("llama", "dagpam").save_pretrained(tmp_path)
    code = "from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained(%r)" % str(tmp_path)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "pip install hf-attnswap" in proc.stderr and "import hf_attnswap" in proc.stderr, proc.stderr[-2000:]


def test_explicit_attn_implementation_overrides_a_swapped_checkpoint(load, tmp_path):
    load("llama", "dagpam", lambda_init=0.3).save_pretrained(tmp_path)
    poly = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="polynomial")
    assert poly.config._attn_implementation == "polynomial" and poly.config.attnswap["degree"] == 3
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa")
    assert not hasattr(plain.config, "attnswap")


@pytest.mark.parametrize("arch", ARCHS)
def test_swap_live_model_lambda0_equals_base(load, arch):
    base = load(arch, "sdpa")
    ids = random_ids(2, 9)
    ref = base(ids).logits
    swapped = hf_attnswap.swap(base, "dagpam", lambda_init=0.0)
    assert swapped is base and swapped.config._attn_implementation == "dagpam"
    assert attnswap_params(swapped)
    torch.testing.assert_close(swapped(ids).logits, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_swap_an_already_swapped_model(load, tmp_path, arch):
    model = load(arch, "dagpam", lambda_init=0.3)
    ids = random_ids(1, 8)
    hf_attnswap.swap(model, "polynomial", degree=1)
    assert not attnswap_params(model) and model.config.attnswap == {"mechanism": "polynomial", "degree": 1, "length_scale": "visible", "fixed_length": None, "backend": "auto", "offset": 0.0}
    hf_attnswap.swap(model, "dagpam", lambda_init=0.5, neg_query_proj="per_head")
    params = attnswap_params(model)
    assert params and all(p.shape[0] == 4 for n, p in params.items() if n.endswith("neg_query_weight"))
    hf_attnswap.swap(model, "dagpam")  # again, with fresh defaults
    assert all((p == 0).all() for n, p in attnswap_params(model).items() if n.endswith("lambda_param"))
    torch.testing.assert_close(model(ids).logits, load(arch, "sdpa")(ids).logits, atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path)
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_unswap_returns_to_native_attention(load, tmp_path):
    model = load("llama", "dagpam", lambda_init=0.3)
    hf_attnswap.unswap(model, "sdpa")
    assert not attnswap_params(model) and model.config._attn_implementation == "sdpa"
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert "attnswap" not in config and "attn_implementation" not in config
    ids = random_ids(1, 6)
    torch.testing.assert_close(model(ids).logits, load("llama", "sdpa")(ids).logits, atol=1e-5, rtol=0)


def test_parameter_overhead(load):
    model = load("llama", "dagpam")
    overhead = hf_attnswap.parameter_overhead(model)
    d, heads, layers = 8, 4, 2
    assert overhead["added"] == layers * (d * d + heads)
    assert overhead["base"] == sum(p.numel() for p in load("llama", "sdpa").parameters())
    assert hf_attnswap.parameter_overhead(load("llama", "polynomial"))["added"] == 0


@pytest.mark.parametrize("model_type", ["mistral", "qwen2"])
def test_other_rotary_architectures(model_type):
    from transformers import AutoConfig

    cfg = AutoConfig.for_model(model_type, vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()
    ids = random_ids(1, 8)
    ref = base(ids).logits
    hf_attnswap.swap(base, "dagpam", lambda_init=0.3)
    full = base(ids).logits
    assert (full - ref).abs().max() > 1e-4
    out = base(ids[:, :5], use_cache=True)
    step = base(ids[:, 5:], past_key_values=out.past_key_values).logits
    torch.testing.assert_close(torch.cat([out.logits, step], 1), full, atol=1e-5, rtol=1e-4)
