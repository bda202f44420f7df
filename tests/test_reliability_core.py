"""Issue #16, core API: nothing lost, nothing silently wrong in swap/unswap, load-time options, PEFT adapters,
attention keywords, scaled rotary embeddings and extreme option values."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

import hf_attnswap
from conftest import random_ids, tiny_config
from hf_attnswap.errors import NotSwappedError, OptionError, UnknownMechanismError, UnsupportedModelError
from hf_attnswap.evaluation.compare import compare
from hf_attnswap.kernels.rope import apply_rope, unapply_rope
from hf_attnswap.mechanisms.common import AttentionContext
from hf_attnswap.mechanisms.dagpam import DaGPAMParameters, dagpam_attention, dagpam_attention_fused, negative_query
from hf_attnswap.kernels.mask import AttentionMask
from hf_attnswap.mechanisms.dagpam import DaGPAMOptions
from hf_attnswap.spec import parse_attn_specs

TRAINED = {"tied_lambda": False, "lambda_init": 2.0, "neg_query_init": "normal"}


def _perturb_mechanism(model: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if hf_attnswap.is_mechanism_parameter(name):
                p.add_(0.3 * torch.randn(p.shape, generator=g))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def trained_dagpam(tmp_path):
    """A saved daGPAM checkpoint with untied λ, λ₀ = 2 and trained (perturbed) W⁻/λ; and its logits."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama"), attn_implementation="dagpam", attnswap=TRAINED)
    _perturb_mechanism(model)
    model.save_pretrained(tmp_path / "ckpt")
    ids = random_ids(2, 12)
    return tmp_path / "ckpt", ids, model.eval()(ids).logits.detach()


# ----------------------------------------------------------------------------------- 2. failed calls change nothing


@pytest.mark.parametrize("bad", ["bogus", "dagpam", "flash_attention_2"])
def test_failed_unswap_leaves_the_model_untouched(trained_dagpam, bad):
    path, ids, expected = trained_dagpam
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    before = _state(model)
    with pytest.raises(OptionError):
        hf_attnswap.unswap(model, bad)
    assert model.config._attn_implementation == "dagpam"
    assert model.config.attnswap["tied_lambda"] is False
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    torch.testing.assert_close(model(ids).logits, expected, atol=1e-5, rtol=1e-5)  # and it still runs


def test_unswap_to_a_real_implementation_still_works(trained_dagpam):
    path, ids, _ = trained_dagpam
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    hf_attnswap.unswap(model, "eager")
    assert model.config._attn_implementation == "eager"
    assert not any(hf_attnswap.is_mechanism_parameter(n) for n, _ in model.named_parameters())
    model(ids)


@dataclass
class _FlakyOptions(hf_attnswap.MechanismOptions):
    pass


def test_failed_swap_leaves_the_model_untouched(trained_dagpam):
    """A mechanism whose parameters cannot be built for the second layer: the first layer must not be swapped."""
    calls = []

    def make_params(heads, head_dim, options):
        calls.append(heads)
        if len(calls) == 2:
            raise RuntimeError("cannot build parameters for this layer")
        return DaGPAMParameters(heads, head_dim, DaGPAMOptions())

    @hf_attnswap.register_mechanism("flaky_params", _FlakyOptions, make_params=make_params, overwrite=True)
    def flaky(query, key, value, mask, ctx):
        return torch.zeros_like(query), None

    path, ids, expected = trained_dagpam
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    before = _state(model)
    with pytest.raises(RuntimeError, match="cannot build"):
        hf_attnswap.swap(model, "flaky_params")
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert model.config.attnswap["mechanism"] == "dagpam"
    torch.testing.assert_close(model(ids).logits, expected, atol=1e-5, rtol=1e-5)


def test_swap_to_a_transformers_name_points_to_unswap(load):
    model = load("gpt2")
    with pytest.raises(UnknownMechanismError, match=r"Transformers' own attention.*unswap\(model, 'sdpa'\)") as err:
        hf_attnswap.swap(model, "sdpa")
    assert "Did you mean" not in str(err.value)


# ----------------------------------------------------------------------------------- 4. load-time options merge


def test_load_time_backend_keeps_the_saved_options_and_weights(trained_dagpam):
    path, ids, expected = trained_dagpam
    for backend in ("reference", "fused"):
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="dagpam", attnswap={"backend": backend})
        assert model.config.attnswap == {**model.config.attnswap, **TRAINED, "backend": backend}
        torch.testing.assert_close(model.eval()(ids).logits, expected, atol=1e-5, rtol=1e-5)


def test_load_time_backend_through_the_model_class_too(trained_dagpam):
    from transformers import LlamaForCausalLM

    path, ids, expected = trained_dagpam
    model = LlamaForCausalLM.from_pretrained(path, attn_implementation="dagpam", attnswap={"backend": "reference"})
    assert model.config.attnswap["tied_lambda"] is False
    torch.testing.assert_close(model.eval()(ids).logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("change", [{"tied_lambda": True}, {"lambda_init": 0.5}, {"neg_query_proj": "per_head"}])
def test_load_time_parameter_options_that_differ_are_an_error(trained_dagpam, change):
    path, _, _ = trained_dagpam
    key = next(iter(change))
    with pytest.raises(OptionError, match=rf"saved with other options: {key}=.*\(saved: .*swap\(model, 'dagpam'"):
        AutoModelForCausalLM.from_pretrained(path, attn_implementation="dagpam", attnswap=change)


def test_load_time_parameter_options_equal_to_the_saved_ones_are_fine(trained_dagpam):
    path, ids, expected = trained_dagpam
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="dagpam", attnswap=dict(TRAINED))
    torch.testing.assert_close(model.eval()(ids).logits, expected, atol=1e-5, rtol=1e-5)


def test_from_config_with_new_parameter_options_is_a_fresh_model(trained_dagpam):
    """from_config builds new parameters: there is nothing saved to contradict, so options override the config's."""
    path, _, _ = trained_dagpam
    config = AutoModelForCausalLM.from_pretrained(path).config
    model = AutoModelForCausalLM.from_config(config, attnswap={"tied_lambda": True, "lambda_init": 0.0})
    assert model.config.attnswap["tied_lambda"] is True and model.config.attnswap["neg_query_init"] == "normal"


def test_options_without_parameters_are_merged_and_override(tmp_path):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("gpt2"), attn_implementation="polynomial",
                                             attnswap={"degree": 2, "length_scale": "none"})
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="polynomial", attnswap={"degree": 3})
    assert again.config.attnswap["degree"] == 3 and again.config.attnswap["length_scale"] == "none"


def test_cli_backend_spec_on_a_trained_checkpoint_is_the_same_model(trained_dagpam):
    """`attnswap eval --attn 'dagpam,dagpam:backend="reference"'` on a trained model: both rows are the model."""
    path, ids, expected = trained_dagpam

    def evaluate(model, tokenizer):
        with torch.no_grad():
            return {"max_diff": float((model(ids).logits - expected).abs().max())}

    rows = compare(str(path), parse_attn_specs('dagpam,dagpam:backend="reference"'), evaluate, tokenizer=object())
    assert [r["max_diff"] < 1e-4 for r in rows] == [True, True], rows
    assert all(r["options"]["tied_lambda"] is False for r in rows)


# ----------------------------------------------------------------------------------- 6. PEFT adapters


def _adapter(tmp_path, arch="gpt2"):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_config(arch), attn_implementation="sdpa").save_pretrained(tmp_path / "base")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base", attn_implementation="dagpam",
                                                 attnswap={"lambda_init": 0.3})
    targets = ["c_attn"] if arch == "gpt2" else ["q_proj", "v_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=targets, modules_to_save=["attnswap"],
                                                  init_lora_weights=False))
    _perturb_mechanism(peft_model)
    peft_model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "base", tmp_path / "adapter", peft_model


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_adapter_with_mechanism_parameters_on_a_plain_base_is_refused(tmp_path, arch):
    from peft import PeftModel

    base, adapter, _ = _adapter(tmp_path, arch)
    plain = AutoModelForCausalLM.from_pretrained(base)
    with pytest.raises(NotSwappedError, match=r"loaded without that mechanism.*attn_implementation='dagpam'"):
        PeftModel.from_pretrained(plain, adapter)


def test_adapter_on_a_swapped_base_still_loads(tmp_path):
    from peft import PeftModel

    base, adapter, trained = _adapter(tmp_path)
    ids = random_ids(1, 8)
    swapped = AutoModelForCausalLM.from_pretrained(base, attn_implementation="dagpam", attnswap={"lambda_init": 0.3})
    reloaded = PeftModel.from_pretrained(swapped, adapter).eval()
    torch.testing.assert_close(reloaded(ids).logits, trained.eval()(ids).logits, atol=0, rtol=0)


def test_transformers_load_adapter_on_a_plain_base_is_refused(tmp_path):
    base, adapter, _ = _adapter(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(base)
    with pytest.raises(NotSwappedError, match="loaded without that mechanism"):
        plain.load_adapter(str(adapter))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_save_adapter_records_the_mechanism_and_load_adapter_rebuilds_it(tmp_path, arch):
    base, _, trained = _adapter(tmp_path, arch)
    out = hf_attnswap.save_adapter(trained, tmp_path / "with_record")
    record = json.loads((out / "attnswap.json").read_text())
    assert record["attn_implementation"] == "dagpam" and record["attnswap"]["lambda_init"] == 0.3
    ids = random_ids(1, 8)
    expected = trained.eval()(ids).logits
    reloaded = hf_attnswap.load_adapter(str(base), out).eval()  # a plain base, swapped from the record
    torch.testing.assert_close(reloaded(ids).logits, expected, atol=0, rtol=0)
    wrong = AutoModelForCausalLM.from_pretrained(base, attn_implementation="dagpam", attnswap={"tied_lambda": False})
    with pytest.raises(NotSwappedError, match=r"trained on a model with attention 'dagpam'.*Pass the base's name"):
        hf_attnswap.load_adapter(wrong, out)


def test_mechanism_weights_into_a_plain_model_with_strict_false_are_refused(trained_dagpam):
    path, _, _ = trained_dagpam
    swapped = AutoModelForCausalLM.from_pretrained(path)
    plain = AutoModelForCausalLM.from_config(tiny_config("llama"))
    with pytest.raises(NotSwappedError, match="silently dropped"):
        plain.load_state_dict(swapped.state_dict(), strict=False)


# ----------------------------------------------------------------------------------- 7. attention keywords, rotary


def test_gemma2_softcap_is_refused_by_name_by_a_mechanism_that_does_not_implement_it():
    from transformers import Gemma2Config

    @hf_attnswap.register_mechanism("no_softcap", overwrite=True)
    def no_softcap(query, key, value, mask, ctx):
        w = torch.softmax((query @ key.transpose(-1, -2) * ctx.scaling).masked_fill(~mask, float("-inf")), -1)
        return w @ value, w

    cfg = Gemma2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=8, max_position_embeddings=64, attn_logit_softcapping=50.0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="no_softcap").eval()
    with pytest.raises(UnsupportedModelError, match=r"'softcap'.*model_type 'gemma2'"):
        model(random_ids(1, 5))


@pytest.mark.parametrize("mechanism, keyword", [("softmax", "position_bias"), ("softmax", "indices"),
                                                ("polynomial", "s_aux"), ("polynomial", "sinks"),
                                                ("polynomial", "position_bias")])
def test_semantic_keywords_are_refused_and_none_is_fine(load, mechanism, keyword):
    from transformers import AttentionInterface

    model = load("llama", mechanism)
    module = model.model.layers[0].self_attn
    fn = AttentionInterface()[mechanism]
    q = torch.randn(1, 4, 3, 8)
    kv = torch.randn(1, 2, 3, 8)
    mask = torch.ones(1, 1, 3, 3, dtype=torch.bool).tril()
    out, _ = fn(module, q, kv, kv, mask, **{keyword: None})
    assert out.shape == (1, 3, 4, 8)
    why = r".*no\s+denominator" if keyword in ("s_aux", "sinks") else ""
    with pytest.raises(UnsupportedModelError, match=rf"(?s){keyword!r}.*model_type 'llama'{why}"):
        fn(module, q, kv, kv, mask, **{keyword: torch.zeros(4)})


def test_a_mechanism_may_declare_the_keywords_it_implements():
    @hf_attnswap.register_mechanism("softcapped", accepts=("softcap",), overwrite=True)
    def softcapped(query, key, value, mask, ctx):
        s = query @ key.transpose(-1, -2) * ctx.scaling
        cap = ctx.extra["softcap"]
        w = torch.softmax((torch.tanh(s / cap) * cap).masked_fill(~mask, float("-inf")), -1)
        return w @ value, w

    from transformers import Gemma2Config

    cfg = Gemma2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=8, max_position_embeddings=64, attn_logit_softcapping=50.0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="softcapped").eval()
    ids = random_ids(1, 6)
    native = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    native.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(ids).logits, native(ids).logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(OptionError, match="not among the attention keywords"):
        hf_attnswap.register_mechanism("bad_accepts", accepts=("temperature",))(softcapped)


def _rope_tables(factor: float, q: int = 5, d: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    ang = torch.arange(q, dtype=torch.float64)[:, None] * inv[None]
    emb = torch.cat((ang, ang), -1)[None]
    return emb.cos() * factor, emb.sin() * factor  # YaRN / longrope multiply both by the attention factor


@pytest.mark.parametrize("factor", [1.0, 1.3, 0.7])
def test_inverse_rotation_is_exact_for_scaled_rotary(factor):
    cos, sin = _rope_tables(factor)
    x = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    torch.testing.assert_close(unapply_rope(apply_rope(x, cos, sin), cos, sin), x)


@pytest.mark.parametrize("factor", [1.0, 1.3])
def test_dagpam_negative_query_with_scaled_rotary(factor):
    """Q⁻ = rope(ReLU(Q_pre) W⁻): with scaled tables, the model's query is m·R(θ)·Q_pre."""
    torch.manual_seed(0)
    opts = DaGPAMOptions(lambda_init=0.4, neg_query_init="normal")
    params = DaGPAMParameters(3, 8, opts).double()
    cos, sin = _rope_tables(factor)
    q_pre = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    ctx = AttentionContext(scaling=8**-0.5, options=opts, params=params, rope=(cos, sin))
    neg, _, _ = negative_query(apply_rope(q_pre, cos, sin), ctx)
    torch.testing.assert_close(neg, apply_rope(torch.relu(q_pre) @ params.neg_query_weight, cos, sin))


@pytest.mark.parametrize("factor", [1.0, 1.3])
def test_dagpam_cpu_kernel_matches_reference_with_scaled_rotary(factor):
    torch.manual_seed(0)
    opts = DaGPAMOptions(lambda_init=0.4, neg_query_init="normal")
    params = DaGPAMParameters(4, 8, opts).double()
    cos, sin = _rope_tables(factor, q=6)
    q = torch.randn(1, 4, 6, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 6, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 6, 8, dtype=torch.float64, requires_grad=True)
    dense = torch.ones(6, 6, dtype=torch.bool).tril()[None, None]
    ctx = AttentionContext(scaling=8**-0.5, options=opts, params=params, rope=(cos, sin))
    fused = dagpam_attention_fused(q, k, v, AttentionMask(dense, 6, 6, 0), ctx)
    rep = lambda t: t.repeat_interleave(2, dim=1)  # noqa: E731
    ref, _ = dagpam_attention(q, rep(k), rep(v), dense, ctx)
    torch.testing.assert_close(fused, ref)
    grads = torch.autograd.grad(fused.sum(), (q, k, v, params.neg_query_weight))
    ref_grads = torch.autograd.grad(ref.sum(), (q, k, v, params.neg_query_weight))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


# ----------------------------------------------------------------------------------- 8. extreme option values


@pytest.mark.parametrize("mechanism,options", [
    ("softmax", {"temperature": 1e-40}), ("softmax", {"temperature": 1e300}), ("softmax", {"temperature": 0.0}),
    ("dagpam", {"lambda_init": 1e30}), ("polynomial", {"degree": 100}),
])
def test_extreme_option_values_are_refused(mechanism, options):
    with pytest.raises(OptionError, match=r"must be (an integer )?(>=|<=)"):
        hf_attnswap.parse_options(mechanism, options)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("mechanism,options", [
    ("softmax", {"temperature": 1e-4}), ("softmax", {"temperature": 1e4}), ("dagpam", {"lambda_init": 1000.0}),
    ("polynomial", {"degree": 16}),
])
def test_extreme_allowed_values_are_finite_and_backends_agree(load, arch, mechanism, options):
    ids = random_ids(2, 10)
    ref = load(arch, mechanism, **options, backend="reference")(ids).logits
    fused = load(arch, mechanism, **options, backend="fused")(ids).logits
    assert torch.isfinite(ref).all() and torch.isfinite(fused).all()
    torch.testing.assert_close(fused, ref, atol=1e-3 * max(1.0, float(ref.abs().max())), rtol=1e-3)


# ----------------------------------------------------------------------------------- messages


def test_option_string_instead_of_a_dict_says_how(base_checkpoints):
    with pytest.raises(OptionError, match=r"must be a dict, got the string 'temperature=2': pass attnswap=\{'temperature': 2\}"):
        AutoModelForCausalLM.from_pretrained(base_checkpoints["gpt2"], attn_implementation="softmax",
                                             attnswap="temperature=2")


def test_numpy_scalars_are_option_values():
    opts = hf_attnswap.parse_options("dagpam", {"lambda_init": np.float32(0.25), "tied_lambda": np.bool_(False)})
    assert opts.lambda_init == 0.25 and opts.tied_lambda is False and type(opts.lambda_init) is float
    poly = hf_attnswap.parse_options("polynomial", {"degree": np.int64(2), "length_scale": "fixed",
                                                   "fixed_length": np.int32(64)})
    assert (poly.degree, poly.fixed_length) == (2, 64) and type(poly.degree) is int
    with pytest.raises(OptionError, match="must be an integer"):
        hf_attnswap.parse_options("polynomial", {"degree": np.float64(2.5)})


@pytest.mark.parametrize("padding", [False, True])
def test_static_cache_runs_on_the_linear_backend(padding):
    torch.manual_seed(0)
    cfg = tiny_config("llama", max_position_embeddings=512)
    linear = AutoModelForCausalLM.from_config(cfg, attn_implementation="polynomial",
                                              attnswap={"degree": 2, "backend": "linear"}).eval()
    ref = AutoModelForCausalLM.from_config(cfg, attn_implementation="polynomial",
                                           attnswap={"degree": 2, "backend": "reference"}).eval()
    ref.load_state_dict(linear.state_dict())
    ids = random_ids(2, 200)
    mask = torch.ones_like(ids)
    if padding:
        mask[1, :7] = 0
    kw = {"attention_mask": mask, "max_new_tokens": 4, "do_sample": False, "cache_implementation": "static",
          "pad_token_id": 0}
    assert torch.equal(linear.generate(ids, **kw), ref.generate(ids, **kw))


def test_set_attn_implementation_keeps_the_saved_record_true(tmp_path):
    """Switched to sdpa with Transformers' own call, a swapped model must not save as daGPAM (it would reload with λ
    applied: other logits); switched back, the record returns."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama"), attn_implementation="dagpam",
                                             attnswap={"lambda_init": 0.5}).eval()
    ids = random_ids(1, 10)
    swapped = model(ids).logits
    model.set_attn_implementation("sdpa")
    plain = model(ids).logits
    model.save_pretrained(tmp_path / "sdpa")
    assert "attnswap" not in json.loads((tmp_path / "sdpa" / "config.json").read_text())
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "sdpa").eval()
    assert again.config._attn_implementation == "sdpa"
    torch.testing.assert_close(again(ids).logits, plain, atol=0, rtol=0)
    model.set_attn_implementation("dagpam")
    torch.testing.assert_close(model(ids).logits, swapped, atol=0, rtol=0)
    model.save_pretrained(tmp_path / "dagpam")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "dagpam").eval()
    assert back.config.attnswap["lambda_init"] == 0.5
    torch.testing.assert_close(back(ids).logits, swapped, atol=0, rtol=0)
