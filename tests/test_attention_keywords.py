"""Every attention argument a model passes is honoured or refused, never silently ignored (issue #13).

- The walk: every causal-LM model type of the installed Transformers that builds quickly at tiny sizes runs one
  forward with ``softmax`` (T=1); every keyword it passes to the attention function must be one that hf_attnswap has
  decided about (:data:`~hf_attnswap.registry.NEUTRAL_KEYWORDS`, or :data:`~hf_attnswap.registry.SEMANTIC_KEYWORDS`,
  which each mechanism implements or refuses by name), and where softmax runs, its logits must equal eager's.
- Gemma2 (``softcap``, ``query_pre_attn_scalar`` as ``scaling``) and GPT-OSS (``s_aux`` sinks): softmax T=1 and daGPAM
  at λ=0 equal the model's own attention; polynomial is refused on GPT-OSS, naming the model type and the argument.
- Models whose attention does not go through ``AttentionInterface`` (Falcon, StableLM, BLOOM) are refused with
  hf_attnswap's error, at load and at swap.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

import hf_attnswap
from hf_attnswap import registry
from hf_attnswap.errors import OptionError, UnsupportedModelError
from hf_attnswap.kernels.mask import AttentionMask
from hf_attnswap.mechanisms.common import AttentionContext, repeat_kv
from hf_attnswap.transformers_hooks import attn_implementation_of

from conftest import MECHANISMS

#: Overrides that make most configs tiny; a config ignores the names it does not have (they become plain attributes).
TINY = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=64,
    vocab_size=128, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    num_local_experts=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, n_routed_experts=4,
    kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16,
    n_embd=64, n_layer=2, n_head=4, d_model=64,
)
MAX_PARAMETERS = 3_000_000  # a config that stays larger than this at TINY sizes needs special setup: skipped
IDS = torch.tensor([[3, 5, 7, 11, 13, 17]])


def _decided_keywords() -> set[str]:
    return set(registry.NEUTRAL_KEYWORDS) | set(registry.SEMANTIC_KEYWORDS)


def _tiny_model(model_type: str, attn_implementation: str = "eager", **overrides) -> torch.nn.Module:
    """A tiny randomly initialised causal LM of ``model_type``, or ``pytest.skip`` with the reason it cannot be built."""
    try:
        cfg = AutoConfig.for_model(model_type, **{**TINY, **overrides})
        with torch.device("meta"):
            size = sum(p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters())
    except Exception as err:  # noqa: BLE001 - any config that needs special setup is skipped, with its reason
        pytest.skip(f"{model_type}: the tiny config needs special setup ({type(err).__name__}: {str(err)[:120]})")
    if size > MAX_PARAMETERS:
        pytest.skip(f"{model_type}: {size:,} parameters at tiny sizes (sub-configs that TINY does not reach)")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoModelForCausalLM.from_config(cfg, attn_implementation=attn_implementation).eval()


@pytest.fixture
def recorded_keywords(monkeypatch):
    """Every keyword (name -> value) the model passes to an hf_attnswap attention function, recorded before the
    registry checks them."""
    seen: dict[str, object] = {}
    check = registry.check_keywords

    def record(mech, module, kwargs):
        seen.update(kwargs)
        return check(mech, module, kwargs)

    monkeypatch.setattr(registry, "check_keywords", record)
    return seen


@pytest.mark.parametrize("model_type", sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES))
def test_every_attention_keyword_is_decided(model_type, recorded_keywords):
    """softmax (T=1) on each causal LM: only decided keywords reach it, and where it runs it equals eager."""
    try:
        model = _tiny_model(model_type)
    except UnsupportedModelError as err:  # cannot happen with eager; kept so a regression reads clearly
        pytest.fail(f"{model_type}: eager refused by hf_attnswap: {err}")
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"{model_type}: does not build at tiny sizes ({type(err).__name__}: {str(err)[:120]})")
    try:
        with torch.no_grad():
            want = model(IDS).logits
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"{model_type}: eager forward fails at tiny sizes ({type(err).__name__}: {str(err)[:120]})")
    try:
        hf_attnswap.swap(model, "softmax")
    except UnsupportedModelError as err:
        pytest.skip(f"{model_type}: refused with a clear error: {str(err)[:160]}")
    refused = None
    try:
        with torch.no_grad():
            got = model(IDS).logits
    except UnsupportedModelError as err:
        refused = str(err)
    undecided = sorted(set(recorded_keywords) - _decided_keywords())
    assert not undecided, (
        f"{model_type} passes attention keyword(s) {undecided} that no mechanism has decided about: implement them "
        f"(register_mechanism(..., accepts=...)), refuse them by name (registry.SEMANTIC_KEYWORDS) or, if they cannot "
        f"change what attention computes, list them in registry.NEUTRAL_KEYWORDS with the reason.")
    if refused is not None:
        accepted = registry.get_mechanism("softmax").accepts
        named = [k for k in registry.SEMANTIC_KEYWORDS if recorded_keywords.get(k) is not None and k not in accepted]
        assert named and all(repr(k) in refused for k in named) and repr(model_type) in refused, refused
        return
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_the_walk_is_not_vacuous():
    """The walk above covers the models of this issue: Gemma2 and GPT-OSS build tiny and pass their arguments."""
    assert {"gemma2", "gpt_oss", "llama", "falcon"} <= set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    for mech in registry.list_mechanisms():
        m = registry.get_mechanism(mech)
        assert not (m.accepts & set(m.refuses)), mech
        assert set(m.refuses) <= set(registry.SEMANTIC_KEYWORDS), mech


# --- Gemma2 (softcap, scaling) and GPT-OSS (sinks) -------------------------------------------------------------------

GEMMA2 = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              intermediate_size=64, vocab_size=128, pad_token_id=0, attn_logit_softcapping=2.0,
              query_pre_attn_scalar=7, sliding_window=3, initializer_range=0.2)
GPT_OSS = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
               intermediate_size=64, vocab_size=128, pad_token_id=0, num_local_experts=4, num_experts_per_tok=2,
               sliding_window=3, initializer_range=0.2)
LONG_IDS = torch.tensor([[3, 5, 7, 11, 13, 17, 19, 23, 29], [0, 0, 4, 6, 8, 10, 12, 14, 16]])
LONG_MASK = torch.tensor([[1] * 9, [0, 0] + [1] * 7])


@pytest.fixture(scope="module")
def native_logits():
    """The logits of tiny Gemma2 / GPT-OSS under their own eager attention (with sinks randomised: GPT-OSS
    initialises them to 0... or small), keyed by model type, and the state dicts to rebuild them."""
    out = {}
    for model_type, cfg in (("gemma2", GEMMA2), ("gpt_oss", GPT_OSS)):
        model = _tiny_model(model_type, **cfg)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("sinks"):
                    p.copy_(torch.randn_like(p) * 2)
            out[model_type] = (model.state_dict(), model(LONG_IDS, attention_mask=LONG_MASK).logits)
    return out


def _swapped(model_type: str, state: dict, mechanism: str, **options) -> torch.nn.Module:
    cfg = GEMMA2 if model_type == "gemma2" else GPT_OSS
    model = _tiny_model(model_type, **cfg)
    model.load_state_dict(state)
    return hf_attnswap.swap(model, mechanism, **options)


@pytest.mark.parametrize("backend", ["reference", "auto"])
@pytest.mark.parametrize("mechanism, options", [("softmax", {}), ("dagpam", {"lambda_init": 0.0})])
@pytest.mark.parametrize("model_type", ["gemma2", "gpt_oss"])
def test_softcap_and_sinks_models_equal_their_own_attention(native_logits, model_type, mechanism, options, backend):
    """softmax T=1 and daGPAM λ=0 reproduce Gemma2 (softcap 2, query_pre_attn_scalar 7 as scaling, sliding window,
    padding) and GPT-OSS (random sinks) to 1e-5, on the reference and on what ``auto`` picks."""
    state, want = native_logits[model_type]
    model = _swapped(model_type, state, mechanism, backend=backend, **options)
    with torch.no_grad():
        got = model(LONG_IDS, attention_mask=LONG_MASK).logits
    torch.testing.assert_close(got[LONG_MASK.bool()], want[LONG_MASK.bool()], atol=1e-5, rtol=1e-5)


def test_gemma2_scaling_is_the_query_pre_attn_scalar(native_logits):
    """Gemma's ``query_pre_attn_scalar`` (7 here, not head_dim 16) arrives as ``scaling`` and is used as given."""
    model = _swapped("gemma2", native_logits["gemma2"][0], "softmax")
    attention = model.model.layers[0].self_attn
    assert attention.scaling == pytest.approx(7 ** -0.5)


def test_gpt_oss_fused_sinks_equal_eager(native_logits):
    """An explicitly requested ``fused`` backend runs GPT-OSS's sinks (one extra SDPA key) and equals eager."""
    state, want = native_logits["gpt_oss"]
    for mechanism, options in (("softmax", {}), ("dagpam", {"lambda_init": 0.0})):
        model = _swapped("gpt_oss", state, mechanism, backend="fused", **options)
        with torch.no_grad():
            got = model(LONG_IDS, attention_mask=LONG_MASK).logits
        torch.testing.assert_close(got[LONG_MASK.bool()], want[LONG_MASK.bool()], atol=1e-5, rtol=1e-5)


def test_polynomial_refuses_gpt_oss_sinks(native_logits):
    model = _swapped("gpt_oss", native_logits["gpt_oss"][0], "polynomial")
    with pytest.raises(UnsupportedModelError, match=r"(?s)'s_aux'.*'gpt_oss'.*no\s+denominator"):
        model(LONG_IDS)


def test_gemma2_softcap_on_an_explicit_fused_backend_is_a_clear_error(native_logits):
    model = _swapped("gemma2", native_logits["gemma2"][0], "softmax", backend="fused")
    with pytest.raises(OptionError, match="backend='fused' cannot run this call: .*softcap.*backend='auto'"):
        model(LONG_IDS)


def test_polynomial_softcap_fused_equals_reference(native_logits):
    """polynomial takes Gemma2's softcap on the reference and on the blocked kernel alike."""
    outs = []
    for backend in ("reference", "fused"):
        model = _swapped("gemma2", native_logits["gemma2"][0], "polynomial", backend=backend)
        with torch.no_grad():
            outs.append(model(LONG_IDS, attention_mask=LONG_MASK).logits)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)


# --- the formulas, on tensors: every fast path equals its reference, forward and backward ----------------------------

def _cases():
    sinks = torch.randn(4, dtype=torch.float64)
    per_query = torch.randn(2, 4, 5, 1, dtype=torch.float64)
    for name, opts in (("softmax", {"temperature": 0.7}), ("polynomial", {}), ("dagpam", {"lambda_init": 0.3})):
        for extra in ({"softcap": 2.0}, {"s_aux": sinks}, {"sinks": per_query}, {"softcap": 3.0, "s_aux": sinks}):
            if name == "polynomial" and ("s_aux" in extra or "sinks" in extra):
                continue
            yield name, opts, extra


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("name, opts, extra", list(_cases()), ids=lambda x: x if isinstance(x, str) else None)
def test_fast_paths_take_the_keywords_or_refuse_them(name, opts, extra, causal):
    torch.manual_seed(0)
    batch, heads, kv_heads, q_len, k_len, dim = 2, 4, 2, 5, 7, 16
    q = torch.randn(batch, heads, q_len, dim, dtype=torch.float64, requires_grad=True)
    k = torch.randn(batch, kv_heads, k_len, dim, dtype=torch.float64, requires_grad=True)
    v = torch.randn(batch, kv_heads, k_len, dim, dtype=torch.float64)
    mask = AttentionMask(None, q_len, k_len, k_len - q_len) if causal else \
        AttentionMask(torch.rand(batch, 1, q_len, k_len) > 0.3, q_len, k_len)
    dense = mask.block(0, q_len, 0, k_len, q.device)
    mech = registry.get_mechanism(name)
    opt = registry.parse_options(mech, opts)
    params = mech.make_params(heads, dim, opt).double() if mech.make_params else None
    ctx = AttentionContext(scaling=0.3, options=opt, params=params, extra=extra)
    ref, _ = mech.forward(q, repeat_kv(k, 2), repeat_kv(v, 2), dense, ctx)
    ran = 0
    for backend, fast in mech.fast.items():
        supports = mech.fast_supports.get(backend)
        reason = supports(q, mask, ctx) if supports else None
        if reason is not None:
            assert backend in ("fused", "triton", "linear") and isinstance(reason, str)
            continue
        out = fast(q, k, v, mask, ctx)
        torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
        for a, b in zip(torch.autograd.grad(out.sum(), (q, k)), torch.autograd.grad(ref.sum(), (q, k))):
            torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)
        ran += 1
    assert ran or "softcap" in extra  # only softcap makes every fast path of softmax/dagpam step aside


def test_softcap_then_temperature():
    """softmax with softcap t and temperature T: ``softmax(t·tanh(s/t) / T)``; sinks are divided by T too."""
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8)
    sinks = torch.tensor([0.5, -1.0])
    mech = registry.get_mechanism("softmax")
    ctx = AttentionContext(scaling=0.5, options=registry.parse_options(mech, {"temperature": 0.5}),
                           extra={"softcap": 1.5, "s_aux": sinks})
    out, weights = mech.forward(q, k, v, torch.ones(1, 1, 3, 3, dtype=torch.bool), ctx)
    logits = 1.5 * torch.tanh(q @ k.transpose(-1, -2) * 0.5 / 1.5) / 0.5
    full = torch.cat([logits, (sinks / 0.5).view(1, 2, 1, 1).expand(1, 2, 3, 1)], dim=-1).softmax(-1)[..., :-1]
    torch.testing.assert_close(weights, full)
    torch.testing.assert_close(out, full @ v)


# --- models whose attention does not go through AttentionInterface --------------------------------------------------

@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize("model_type", ["falcon", "stablelm", "bloom"])
def test_models_outside_the_attention_interface_are_refused_clearly(model_type, mechanism):
    """Falcon used to fail with ``KeyError: 'softmax'`` in its own ``__init__``; now every path says why."""
    def config():
        return AutoConfig.for_model(model_type, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    vocab_size=64, n_head=2, n_layer=1, intermediate_size=64)

    pattern = rf"(?s)model_type '{model_type}'.*AttentionInterface.*Supported: .*'llama'"
    with pytest.raises(UnsupportedModelError, match=pattern):
        AutoModelForCausalLM.from_config(config(), attn_implementation=mechanism)
    model = AutoModelForCausalLM.from_config(config(), attn_implementation="eager")
    with pytest.raises(UnsupportedModelError, match=pattern):
        hf_attnswap.swap(model, mechanism)
    with pytest.raises(UnsupportedModelError, match=pattern):
        model.set_attn_implementation(mechanism)
    assert attn_implementation_of(model.config) == "eager"  # still the model it was
