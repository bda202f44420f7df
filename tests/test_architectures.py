"""daGPAM on every supported model type, checked against its definition (SCIENCE.md), and the conformance matrix.

The definition is computed here independently of hf_attnswap's rotary code: a recorder wraps the model's own
``apply_rotary_pos_emb`` (in its modeling module) and the attention function, so each layer's *pre-rotary* query
is the one the model rotated (after its q-norm, if any: Qwen3, OLMo2, Gemma3, Cohere), and ``Q⁻`` is rotated by
calling the model's own function again:

    Q⁻ = model_rotary(ReLU(q_pre) W⁻),   out = ((1+λ)·softmax(Q⁺Kᵀs) − λ·softmax(Q⁻Kᵀs)) V

with the model's softcap and sinks where it passes them. A layer the model does not rotate (NoPE: SmolLM3, Cohere2,
EXAONE-4) has ``q_pre = Q⁺``. This covers partial rotary (Phi, GPT-NeoX, GLM, GPT-J), interleaved pairs (GPT-J,
Cohere, GLM, Helium, ERNIE-4.5), half tables (GPT-OSS, GPT-J) and every rope type Transformers ships (on Llama).

The matrix, per model type: ``softmax`` equals the native (eager) attention, daGPAM at λ=0 equals it, a cached decode
equals the full forward, and packed rows (``position_ids`` restarting, no padding) equal each document run alone.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from transformers import AttentionInterface, AutoConfig, AutoModelForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

import hf_attnswap
from hf_attnswap.errors import UnsupportedModelError
from hf_attnswap.kernels import dagpam_cpu
from hf_attnswap.patching import ARCHITECTURES, attention_modules
from hf_attnswap.registry import PARAMS_ATTR
from hf_attnswap.training.arguments import RecipeConfigError
from hf_attnswap.training.model import check_packing_isolates

from conftest import decoded_logits

TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            intermediate_size=64, vocab_size=128, max_position_embeddings=128, pad_token_id=0, bos_token_id=1,
            eos_token_id=2, num_local_experts=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
            n_embd=64, n_layer=2, n_head=4, initializer_range=0.2, attention_dropout=0.0)
#: What a model type needs beyond TINY so that its tiny config exercises what makes it special.
OVERRIDES: dict[str, dict] = {
    "gptj": dict(rotary_dim=8),  # partial, interleaved, (sin, cos) half tables
    "opt": dict(ffn_dim=64, word_embed_proj_dim=64),
    "gemma2": dict(attn_logit_softcapping=2.0, query_pre_attn_scalar=7, sliding_window=3),
    "gemma3_text": dict(query_pre_attn_scalar=7, sliding_window=3, layer_types=["sliding_attention", "full_attention"]),
    "smollm3": dict(no_rope_layers=[1, 0]),  # layer 1 is NoPE
    "cohere": dict(use_qk_norm=True),
    "cohere2": dict(sliding_window=3, layer_types=["sliding_attention", "full_attention"]),  # global layer: NoPE
    "exaone4": dict(sliding_window=3, layer_types=["sliding_attention", "full_attention"]),  # global layer: NoPE
    "gpt_oss": dict(sliding_window=3, layer_types=["sliding_attention", "full_attention"]),
    "qwen2": dict(use_sliding_window=False),
}
SUPPORTED = sorted(t for t, a in ARCHITECTURES.items() if a.refused is None)
#: The 35 model types of issue #13 (gemma3 as its text model), and the share of them daGPAM must run on.
ISSUE_TYPES = ("gpt2 llama mistral qwen2 qwen3 gemma gemma2 gemma3_text phi3 olmo olmo2 olmo3 granite cohere cohere2 "
               "starcoder2 smollm3 mixtral qwen3_moe glm4 helium ministral exaone4 seed_oss arcee apertus ernie4_5 "
               "hunyuan_v1_dense gpt_neox phi gptj opt falcon stablelm bloom").split()
IDS = torch.tensor([[3, 5, 7, 11, 13, 17, 19, 23, 29], [31, 37, 4, 6, 8, 10, 12, 14, 16]])
MASK = torch.tensor([[1] * 9, [0, 0] + [1] * 7])


def tiny_model(model_type: str, attn: str = "eager", dtype=torch.float64, **overrides) -> torch.nn.Module:
    """A tiny random causal LM of ``model_type`` in float64 (sinks randomised, so that they matter)."""
    cfg = AutoConfig.for_model(model_type, **{**TINY, **OVERRIDES.get(model_type, {}), **overrides})
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn, experts_implementation="eager")
        model = model.to(dtype).eval()  # (eager experts: the grouped-mm ones take no float64)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("sinks"):
                p.copy_(torch.randn_like(p) * 2)
    return model


# --- the recorder: the model's own rotary calls and each attention call ------------------------------------------------

@dataclass
class RotaryCall:
    """One call of the model's rotary function: replay it on another tensor in place of the query."""

    fn: Callable
    args: tuple
    kwargs: dict
    output: object

    def query_output(self) -> torch.Tensor:
        return self.output if isinstance(self.output, torch.Tensor) else self.output[0]

    def replay(self, x: torch.Tensor) -> torch.Tensor:
        args = list(self.args)
        args[0] = x
        if not isinstance(self.output, torch.Tensor):  # (q, k, cos, sin): rotate x as the key too, drop it
            args[1] = x
        out = self.fn(*args, **self.kwargs)
        return out if isinstance(out, torch.Tensor) else out[0]


@dataclass
class AttentionCall:
    module: torch.nn.Module
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    mask: torch.Tensor | None
    scaling: float
    kwargs: dict
    output: torch.Tensor
    rotary: list[RotaryCall] = field(default_factory=list)


@pytest.fixture
def recorder(monkeypatch):
    """``recorder(model, name)``: records, per attention call of mechanism ``name``, its inputs, its output and the
    model's rotary calls made during that module's forward. Returns the list it fills."""

    def install(model: torch.nn.Module, name: str) -> list[AttentionCall]:
        calls: list[AttentionCall] = []
        pending: list[RotaryCall] = []
        modules = attention_modules(model)
        for mod_name in {sys.modules[type(m).__module__].__name__ for m in modules}:
            modeling = sys.modules[mod_name]
            original_rotary = getattr(modeling, "apply_rotary_pos_emb", None)
            if original_rotary is None:  # not a rotary model
                continue

            def rotary(*args, _fn=original_rotary, **kwargs):
                out = _fn(*args, **kwargs)
                pending.append(RotaryCall(_fn, args, kwargs, out))
                return out

            monkeypatch.setattr(modeling, "apply_rotary_pos_emb", rotary)
        original = AttentionInterface._global_mapping[name]

        def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
            out, weights = original(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
            calls.append(AttentionCall(module, query, key, value, attention_mask, scaling, kwargs, out, list(pending)))
            pending.clear()
            return out, weights

        monkeypatch.setitem(AttentionInterface._global_mapping, name, attention)
        for m in modules:
            m.register_forward_pre_hook(lambda *_: pending.clear())
        return calls

    return install


def pre_rotary(call: AttentionCall) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """The layer's pre-rotary query (B, H, Q, d) and the model's own rotation, found from the recorded rotary call
    whose output the attention received (as its first ``w`` dims, possibly laid out (B, Q, H, w))."""
    query = call.query
    for rot in call.rotary:
        out = rot.query_output()
        width = out.shape[-1]
        for transposed in (False, True):
            got = out.transpose(1, 2) if transposed else out
            if got.shape == query[..., :width].shape and torch.equal(got, query[..., :width]):
                inp = rot.args[0].transpose(1, 2) if transposed else rot.args[0]
                q_pre = torch.cat((inp, query[..., width:]), dim=-1)

                def rotate(x, rot=rot, width=width, transposed=transposed):
                    part = x[..., :width].transpose(1, 2) if transposed else x[..., :width]
                    done = rot.replay(part)
                    return torch.cat((done.transpose(1, 2) if transposed else done, x[..., width:]), dim=-1)

                return q_pre, rotate
    assert not call.rotary, f"{type(call.module).__name__}: none of its rotary calls produced the query it attended with"
    return query, lambda x: x  # a layer without rotation (NoPE, or no rotary at all)


def softmax_definition(q, k, mask, scaling, softcap=None, sinks=None):
    """softmax(s) over visible keys; s = scaling·q·kᵀ, soft-capped; sinks join the denominator."""
    s = (q @ k.transpose(-1, -2)) * scaling
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    visible = mask[..., : k.shape[-2]] if mask.dtype == torch.bool else mask[..., : k.shape[-2]] == 0
    s = s.masked_fill(~visible, float("-inf"))
    if sinks is not None:
        s = torch.cat((s, sinks.view(1, -1, 1, 1).expand(*s.shape[:-1], 1).to(s.dtype)), dim=-1)
        return torch.softmax(s, -1)[..., :-1]
    return torch.softmax(s, -1)


def dagpam_definition(call: AttentionCall) -> torch.Tensor:
    """daGPAM's output (B, Q, H, d) from its definition, with this layer's W⁻ and λ."""
    params = getattr(call.module, PARAMS_ATTR)
    q_pre, rotate = pre_rotary(call)
    neg = rotate(torch.relu(q_pre) @ params.neg_query_weight)
    rep = call.query.shape[1] // call.key.shape[1]
    k, v = call.key.repeat_interleave(rep, 1), call.value.repeat_interleave(rep, 1)
    extra = dict(softcap=call.kwargs.get("softcap"), sinks=call.kwargs.get("s_aux"))
    lam = params.lambda_param.view(1, -1, 1, 1)
    p = (1 + lam) * softmax_definition(call.query, k, call.mask, call.scaling, **extra) \
        - lam * softmax_definition(neg, k, call.mask, call.scaling, **extra)
    return (p @ v).transpose(1, 2)


def check_against_definition(calls: list[AttentionCall]) -> int:
    """Compare every recorded attention call with the definition; returns how many rotated their query."""
    assert calls
    rotated = 0
    for call in calls:
        seen = call.mask.any(-1).squeeze(1) if call.mask is not None else slice(None)  # padding queries: never used
        want = dagpam_definition(call)
        torch.testing.assert_close(call.output[seen], want[seen], atol=1e-6, rtol=1e-6)  # Cohere/ERNIE rotate in fp32
        rotated += bool(call.rotary)
    return rotated


def _dagpam(model, backend="reference", **options):
    return hf_attnswap.swap(model, "dagpam", lambda_init=0.5, neg_query_init="normal", backend=backend, **options)


# --- daGPAM against its definition -----------------------------------------------------------------------------------

#: Model types whose tiny config has at least one NoPE layer (so both kinds are checked) or no rotary at all.
NOPE = {"smollm3", "cohere2", "exaone4"}
NOT_ROTARY = {"gpt2", "opt"}


@pytest.mark.parametrize("backend", ["reference", "fused"])
@pytest.mark.parametrize("model_type", SUPPORTED)
def test_dagpam_equals_its_definition(model_type, backend, recorder):
    """daGPAM (λ = 0.5, random W⁻) on each supported model type equals its definition computed from the model's own
    pre-rotary query and rotary function, on a padded batch (float64; 1e-6, as Cohere and ERNIE rotate in float32). ``fused`` runs the low-memory CPU kernel
    (its inverse rotation included) wherever it can: everywhere but the sinks of GPT-OSS and Gemma2's softcap."""
    model = _dagpam(tiny_model(model_type), backend="auto" if model_type == "gemma2" else backend)
    calls = recorder(model, "dagpam")
    with torch.no_grad():
        model(IDS, attention_mask=MASK)
    rotated = check_against_definition(calls)
    layers = len(attention_modules(model))
    if model_type in NOT_ROTARY:
        assert rotated == 0
    elif model_type in NOPE:
        assert 0 < rotated < len(calls), "the tiny config has rotary and NoPE layers"
    else:
        assert rotated == len(calls) == layers


def test_the_cpu_kernel_ran(recorder, monkeypatch):
    """The ``fused`` cells above do reach the CPU kernel (with partial and interleaved rotary): counted here."""
    ran = []
    original = dagpam_cpu.DaGPAMCPU.apply
    monkeypatch.setattr(dagpam_cpu.DaGPAMCPU, "apply", lambda *a: ran.append(a[-1]) or original(*a))
    for model_type in ("phi", "glm4", "gptj", "cohere"):
        model = _dagpam(tiny_model(model_type), backend="fused")
        with torch.no_grad():
            model(IDS, attention_mask=MASK)
    assert {(layout.pairs, layout.rotary_dim) for layout in ran} == {("half", 8), ("interleaved", 8), ("interleaved", None)}


def test_gradients_through_the_cpu_kernel_equal_the_reference():
    """With partial interleaved rotary (GLM-4) the CPU kernel's backward (rotary adjoint included) equals the
    reference's, for the query/key projections and W⁻."""
    grads = {}
    for backend in ("reference", "fused"):
        model = _dagpam(tiny_model("glm4"), backend=backend)
        model(IDS, labels=IDS).loss.backward()  # no padding: padding queries differ by design (uniform vs 0)
        grads[backend] = {n: p.grad for n, p in model.named_parameters() if "attn" in n and p.grad is not None}
    assert any(PARAMS_ATTR in n for n in grads["fused"])
    for name, g in grads["reference"].items():
        torch.testing.assert_close(grads["fused"][name], g, atol=1e-9, rtol=1e-7, msg=name)


@pytest.mark.parametrize("model_type", ["glm4", "phi", "gptj"])
def test_multi_chunk_cpu_kernel_equals_the_reference(model_type, monkeypatch):
    """The CPU kernel split into one KV head per chunk (as for large calls) with partial / interleaved rotary:
    outputs and gradients equal the reference's."""
    monkeypatch.setattr(dagpam_cpu, "CHUNK_ABOVE_BYTES", 0)
    monkeypatch.setattr(dagpam_cpu, "CHUNK_BYTES", 1)
    chunks = []
    original = dagpam_cpu._chunks
    monkeypatch.setattr(dagpam_cpu, "_chunks", lambda *a: chunks.append(original(*a)) or chunks[-1])
    logits, grads = {}, {}
    for backend in ("reference", "fused"):
        model = _dagpam(tiny_model(model_type), backend=backend)
        out = model(IDS, labels=IDS)
        out.loss.backward()
        logits[backend] = out.logits.detach()
        grads[backend] = {n: p.grad for n, p in model.named_parameters() if "attn" in n and p.grad is not None}
    assert chunks and all(len(c) > 1 for c in chunks), "every kernel call ran in several chunks"
    torch.testing.assert_close(logits["fused"], logits["reference"], atol=1e-9, rtol=1e-7)
    assert any(PARAMS_ATTR in n for n in grads["fused"])
    for name, g in grads["reference"].items():
        torch.testing.assert_close(grads["fused"][name], g, atol=1e-9, rtol=1e-7, msg=name)


# --- every rope type Transformers ships, on Llama -----------------------------------------------------------------------

ROPE_PARAMETERS = {
    "default": {},
    "linear": {"factor": 2.0},
    "dynamic": {"factor": 2.0},
    "yarn": {"factor": 4.0, "original_max_position_embeddings": 32},
    "longrope": {"short_factor": [1.0 + 0.1 * i for i in range(8)], "long_factor": [2.0 + 0.1 * i for i in range(8)],
                 "original_max_position_embeddings": 4},
    "llama3": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8},
    "proportional": {"partial_rotary_factor": 0.5},
}
ROPE_TYPES = ["default", *ROPE_INIT_FUNCTIONS]


def test_every_rope_type_is_covered():
    assert set(ROPE_TYPES) <= set(ROPE_PARAMETERS), sorted(set(ROPE_TYPES) - set(ROPE_PARAMETERS))


@pytest.mark.parametrize("backend", ["reference", "fused"])
@pytest.mark.parametrize("rope_type", ROPE_TYPES)
def test_every_rope_type_equals_the_definition(rope_type, backend, recorder):
    """Each rope type (YaRN and longrope scale cos and sin by an attention factor: Q⁻ used to come out 1.30× too large)
    on a tiny Llama whose 9 tokens pass ``original_max_position_embeddings`` where it has one (longrope's long factors,
    dynamic's rescaling), on the reference and the CPU kernel."""
    rope = {"rope_type": rope_type, "rope_theta": 10000.0, **ROPE_PARAMETERS[rope_type]}
    model = _dagpam(tiny_model("llama", rope_parameters=rope, max_position_embeddings=8 if rope_type == "dynamic" else 128),
                    backend=backend)
    calls = recorder(model, "dagpam")
    with torch.no_grad():
        model(IDS, attention_mask=MASK)
    cos, sin = calls[0].rotary[0].args[2:4]
    if rope_type in ("yarn", "longrope"):
        assert not torch.allclose(cos * cos + sin * sin, torch.ones_like(cos)), "the tables are scaled"
    assert check_against_definition(calls) == len(calls)


# --- the conformance matrix ---------------------------------------------------------------------------------------------

MATRIX = ("softmax_equals_native", "dagpam_at_zero_equals_native", "cached_decode_equals_full", "packed_rows_isolated")
#: Model types whose attention mask, in Transformers 5.24, ignores restarting position_ids (eager/sdpa alike).
PACKING_NOT_ISOLATED = {"opt", "gpt_oss"}
DOCS = (torch.tensor([[3, 5, 7, 11, 13]]), torch.tensor([[17, 19, 23, 29]]), torch.tensor([[31, 37, 41]]))


def _logits(model, ids, **kw):
    with torch.no_grad():
        return model(ids, **kw).logits


@pytest.mark.parametrize("check", MATRIX)
@pytest.mark.parametrize("model_type", SUPPORTED)
def test_conformance(model_type, check):
    """Per supported model type (float32, tiny): softmax (T=1) and daGPAM at λ=0 equal the model's own eager
    attention on a padded batch (1e-5); daGPAM (λ=0.5) decoding with the KV cache equals its full forward; and a
    packed row (``position_ids`` restarting, ``use_cache=False``, as ``DataCollatorWithFlattening`` makes them) equals
    its documents run alone (or, where Transformers' own mask ignores the position_ids, ``--packing documents`` refuses
    the model)."""
    model = tiny_model(model_type, dtype=torch.float32)
    keep = MASK.bool()
    if check in ("softmax_equals_native", "dagpam_at_zero_equals_native"):
        want = _logits(model, IDS, attention_mask=MASK)
        if check == "softmax_equals_native":
            hf_attnswap.swap(model, "softmax")
        else:
            hf_attnswap.swap(model, "dagpam", lambda_init=0.0)
        torch.testing.assert_close(_logits(model, IDS, attention_mask=MASK)[keep], want[keep], atol=1e-5, rtol=1e-5)
        return
    _dagpam(model, backend="auto")
    if check == "cached_decode_equals_full":
        ids = IDS[:1]
        full = _logits(model, ids)
        torch.testing.assert_close(decoded_logits(model, ids, 6), full, atol=1e-5, rtol=1e-5)
        return
    if model_type in PACKING_NOT_ISOLATED:  # Transformers' own mask ignores the position_ids: --packing refuses it
        with pytest.raises(RecipeConfigError, match=rf"model_type '{model_type}' does not keep packed documents apart"):
            check_packing_isolates(model)
        return
    check_packing_isolates(model)
    packed = torch.cat(DOCS, dim=1)
    positions = torch.cat([torch.arange(d.shape[1]) for d in DOCS])[None]
    got = _logits(model, packed, position_ids=positions, use_cache=False)
    want = torch.cat([_logits(model, d) for d in DOCS], dim=1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# --- refusals --------------------------------------------------------------------------------------------------------

def test_refused_model_types_say_why():
    model = tiny_model("hunyuan_v1_dense")
    with pytest.raises(UnsupportedModelError, match=r"(?s)'dagpam'.*Hunyuan.*'hunyuan_v1_dense'.*after the rotation"
                                                    r".*Supported: .*'qwen3'"):
        _dagpam(model)
    hf_attnswap.swap(model, "softmax")  # parameter-free mechanisms are fine


def test_issue_target_reached():
    """daGPAM runs on at least 30 of the issue's 35 model types; the others are refused by name (tests above and
    tests/test_attention_keywords.py)."""
    covered = [t for t in ISSUE_TYPES if t in SUPPORTED]
    assert len(covered) >= 30, covered


# --- kernels/rope.py: every layout inverts and transposes exactly -------------------------------------------------------

@pytest.mark.parametrize("pairs", ["half", "interleaved"])
@pytest.mark.parametrize("rotary_dim", [None, 8])
def test_rope_layouts_invert_and_transpose_exactly(pairs, rotary_dim):
    """For each layout, with scaled tables (factor 1.3): ``rope`` is the per-pair 2×2 map ``m·R(θ)`` on the rotated dims
    and the identity on the rest (built here pair by pair), ``unapply_rope`` inverts it, and ``rope_adjoint`` is its
    transpose (what the CPU kernel's backward uses)."""
    from hf_attnswap.kernels.rope import RotaryLayout, apply_rope, full_width_tables, rope, rope_adjoint, unapply_rope

    torch.manual_seed(0)
    d, r = 16, rotary_dim or 16
    layout = RotaryLayout(pairs, rotary_dim)
    angles = torch.rand(1, 5, r // 2, dtype=torch.float64) * 6
    cos, sin = 1.3 * angles.cos(), 1.3 * angles.sin()
    expand = (lambda t: torch.cat((t, t), -1)) if pairs == "half" else (lambda t: t.repeat_interleave(2, -1))
    cos, sin = full_width_tables(expand(cos), expand(sin), d)
    x = torch.randn(2, 3, 5, d, dtype=torch.float64)
    want = x.clone()
    for i in range(r // 2):
        a, b = (i, i + r // 2) if pairs == "half" else (2 * i, 2 * i + 1)
        c, s = 1.3 * angles[..., i].cos()[:, None], 1.3 * angles[..., i].sin()[:, None]  # (1, 1, 5) over heads
        want[..., a] = x[..., a] * c - x[..., b] * s
        want[..., b] = x[..., b] * c + x[..., a] * s
    got = apply_rope(x, cos, sin, layout)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(unapply_rope(got, cos, sin, layout), x)
    g = torch.randn_like(x)
    c4, s4 = cos[:, None], sin[:, None]
    torch.testing.assert_close((rope(x, c4, s4, layout=layout) * g).sum(), (x * rope_adjoint(g, c4, s4, layout=layout)).sum())
