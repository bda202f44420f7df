"""PEFT LoRA on the attention projections, with daGPAM's parameters trained and saved in the adapter."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import hf_attnswap
from conftest import random_ids

TARGETS = {"gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"]}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_lora_with_dagpam_parameters_trainable_and_saved(base_checkpoints, tmp_path, arch):
    options = {"lambda_init": 0.1}
    model = AutoModelForCausalLM.from_pretrained(base_checkpoints[arch], attn_implementation="dagpam", attnswap=options)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS[arch], modules_to_save=["attnswap"],
                        init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable)
    assert any("attnswap" in n and n.endswith("lambda_param") for n in trainable)
    assert any("attnswap" in n and n.endswith("neg_query_weight") for n in trainable)

    opt = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    ids = random_ids(2, 8)
    for _ in range(2):
        opt.zero_grad()
        peft_model(ids, labels=ids).loss.backward()
        opt.step()
    lam = [p for n, p in peft_model.named_parameters() if "modules_to_save" in n and n.endswith("lambda_param")]
    assert lam and all(not torch.allclose(p, torch.full_like(p, 0.1)) for p in lam), "λ was trained"

    peft_model.eval()
    expected = peft_model(ids).logits
    peft_model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert any("attnswap" in k and k.endswith("lambda_param") for k in saved)
    assert any("attnswap" in k and k.endswith("neg_query_weight") for k in saved)

    fresh = AutoModelForCausalLM.from_pretrained(base_checkpoints[arch], attn_implementation="dagpam", attnswap=options)
    reloaded = PeftModel.from_pretrained(fresh, tmp_path).eval()
    torch.testing.assert_close(reloaded(ids).logits, expected, atol=0, rtol=0)

    # A merged export loads back as a normal swapped model.
    merged = reloaded.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    again, info = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    torch.testing.assert_close(again.eval()(ids).logits, expected, atol=1e-5, rtol=1e-5)
    assert hf_attnswap.parameter_overhead(again)["added"] > 0


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_lora_preview_names_what_wrap_lora_trains_without_weights_or_random_numbers(base_checkpoints, arch):
    from hf_attnswap.training.arguments import LoraArguments
    from hf_attnswap.training.model import lora_preview, modules_named, wrap_lora

    args = LoraArguments(lora=True, lora_r=4, lora_modules_to_save="ln_1" if arch == "gpt2" else "input_layernorm,norm")
    model = AutoModelForCausalLM.from_pretrained(base_checkpoints[arch])
    expected = {"base_model.model." + n for n in modules_named(model, ["ln_1", "input_layernorm", "norm"])}
    state = torch.random.get_rng_state()
    preview = lora_preview(model, args)
    assert torch.equal(state, torch.random.get_rng_state())  # a run that checks first trains as one that does not
    assert all(p.device.type == "meta" for p in preview.parameters())
    real = wrap_lora(model, args)
    shapes = {n: (p.shape, p.requires_grad) for n, p in real.named_parameters()}
    assert {n: (p.shape, p.requires_grad) for n, p in preview.named_parameters()} == shapes
    trained = {n.split(".modules_to_save")[0] for n, p in real.named_parameters() if "modules_to_save" in n}
    assert trained == expected and len(trained) == (2 if arch == "gpt2" else 3)  # norm: model.norm, not every norm
