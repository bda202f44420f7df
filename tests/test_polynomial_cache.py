"""PolynomialLinearCache: generate() from a fixed-size state, token for token and logit for logit the same as the
blocked ``fused`` kernel with Transformers' KV cache, on every generation path; its memory does not grow."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import PAD, random_ids, tiny_config
from transformers import AutoModelForCausalLM, DynamicCache

from hf_attnswap import OptionError
from hf_attnswap.mechanisms.polynomial import PolynomialLinearCache, PolynomialLinearLayer
from hf_attnswap.registry import OPTIONS_ATTR, layer_options

TOL = {torch.float32: {"atol": 2e-5, "rtol": 1e-4}, torch.float64: {"atol": 1e-11, "rtol": 1e-10}}
#: generate() hands out its logits in float32 (it casts them): from a float64 model, equal up to that rounding.
GENERATE_TOL = {torch.float32: TOL[torch.float32], torch.float64: {"atol": 1e-6, "rtol": 1e-6}}


def polynomial(arch: str, backend: str, dtype: torch.dtype = torch.float32, offset: float = 0.0,
               **overrides) -> torch.nn.Module:
    torch.manual_seed(0)  # the same weights for every backend
    return AutoModelForCausalLM.from_config(tiny_config(arch, **overrides), attn_implementation="polynomial",
                                            attnswap={"degree": 2, "backend": backend, "offset": offset}).to(dtype).eval()


def cache_tensor_bytes(cache) -> int:
    """Bytes of every tensor a cache's layers hold (whatever their attributes are called)."""
    return sum(v.numel() * v.element_size() for layer in cache.layers for v in vars(layer).values()
               if isinstance(v, torch.Tensor))


def padded_prompt(batch: int = 3, length: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    ids = random_ids(batch, length, seed=2)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    mask[2, :1] = 0
    return ids.masked_fill(mask == 0, PAD), mask


MODES = {
    "greedy": {"do_sample": False},
    "sampling": {"do_sample": True, "top_k": 0, "temperature": 1.0},
    "beam": {"do_sample": False, "num_beams": 3, "num_return_sequences": 2},
    "chunked_prefill": {"do_sample": False, "prefill_chunk_size": 3},
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("padded", [False, True], ids=["plain", "left_padded"])
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_generate_equals_fused_with_kv_cache(arch, mode, padded, dtype):
    linear, fused = polynomial(arch, "linear", dtype), polynomial(arch, "fused", dtype)
    ids, mask = padded_prompt() if padded else (random_ids(2, 7, seed=1), None)
    kwargs = {"max_new_tokens": 10, "min_new_tokens": 10, "pad_token_id": PAD, "output_scores": True,
              "output_logits": True, "return_dict_in_generate": True, "attention_mask": mask, **MODES[mode]}
    results = {}
    for name, model in (("linear", linear), ("fused", fused)):
        torch.manual_seed(123)  # the same draws for sampling
        results[name] = model.generate(ids, **kwargs)
    got, want = results["linear"], results["fused"]
    assert isinstance(got.past_key_values, PolynomialLinearCache), type(got.past_key_values)
    assert isinstance(want.past_key_values, DynamicCache)
    assert torch.equal(got.sequences, want.sequences)
    torch.testing.assert_close(torch.stack(got.logits), torch.stack(want.logits), **GENERATE_TOL[dtype])  # every step
    if mode == "beam":
        torch.testing.assert_close(got.sequences_scores, want.sequences_scores, **GENERATE_TOL[dtype])


@pytest.mark.parametrize("padded", [False, True], ids=["plain", "left_padded"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_generate_with_an_offset_equals_fused_with_kv_cache(arch, padded):
    """``offset`` widens the state's keys by one column ((d+1)(d+2)/2 features): generate() from the state equals the
    blocked kernel with a KV cache, every step, and the offset changes the result."""
    linear = polynomial(arch, "linear", torch.float64, offset=0.5)
    fused = polynomial(arch, "fused", torch.float64, offset=0.5)
    ids, mask = padded_prompt() if padded else (random_ids(2, 7, seed=1), None)
    kwargs = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False, "pad_token_id": PAD,
              "output_logits": True, "return_dict_in_generate": True, "attention_mask": mask}
    got, want = linear.generate(ids, **kwargs), fused.generate(ids, **kwargs)
    assert isinstance(got.past_key_values, PolynomialLinearCache)
    head_dim = linear.config.hidden_size // linear.config.num_attention_heads
    assert got.past_key_values.layers[0].state.shape[-2] == (head_dim + 1) * (head_dim + 2) // 2
    assert torch.equal(got.sequences, want.sequences)
    torch.testing.assert_close(torch.stack(got.logits), torch.stack(want.logits), **GENERATE_TOL[torch.float64])
    plain = polynomial(arch, "fused", torch.float64).generate(ids, **kwargs)
    assert not torch.allclose(torch.stack(plain.logits), torch.stack(want.logits))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_explicit_cache_and_positions_in_forward(arch):
    """Forward calls of 5, 1 and 3 tokens with an explicit cache (``past_key_values=`` and ``cache=``) and explicit
    ``position_ids``, against one fused forward over the 9 tokens; a left-padded batch too."""
    linear, fused = polynomial(arch, "linear", torch.float64), polynomial(arch, "fused", torch.float64)
    ids, mask = padded_prompt(3, 9)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    for attention_mask in (None, mask):
        pos = positions if attention_mask is not None else torch.arange(9)[None].expand(3, 9)
        want = fused(ids, attention_mask=attention_mask, position_ids=pos).logits
        cache, pieces = PolynomialLinearCache(linear), []
        for i, (a, b) in enumerate(((0, 5), (5, 6), (6, 9))):
            key = "past_key_values" if i % 2 else "cache"  # the deprecated name and the new one
            am = None if attention_mask is None else attention_mask[:, :b]
            out = linear(ids[:, a:b], attention_mask=am, position_ids=pos[:, a:b], use_cache=True, **{key: cache})
            pieces.append(out.logits)
            assert cache.get_seq_length() == b and cache.get_mask_sizes(1, 0) == (b + 1, 0)
        keep = torch.ones_like(mask, dtype=torch.bool) if attention_mask is None else mask.bool()
        torch.testing.assert_close(torch.cat(pieces, 1)[keep], want[keep], **TOL[torch.float64])


def test_generate_continues_from_a_cache_it_returned():
    """A user's cache passed to generate() is used and returned; a second generate() continues from it."""
    linear, fused = polynomial("llama", "linear"), polynomial("llama", "fused")
    ids = random_ids(1, 6, seed=4)
    kwargs = {"do_sample": False, "pad_token_id": PAD, "return_dict_in_generate": True, "output_logits": True}
    cache = PolynomialLinearCache(linear)
    first = linear.generate(ids, max_new_tokens=4, cache=cache, **kwargs)
    assert first.past_key_values is cache and cache.get_seq_length() == 6 + 3
    second = linear.generate(first.sequences, max_new_tokens=4, cache=cache, **kwargs)
    want = fused.generate(ids, max_new_tokens=8, **kwargs)
    assert torch.equal(second.sequences, want.sequences)
    torch.testing.assert_close(torch.stack(first.logits + second.logits), torch.stack(want.logits), **TOL[torch.float32])


def test_auto_backend_runs_from_an_explicit_linear_cache():
    auto, fused = polynomial("llama", "auto"), polynomial("llama", "fused")
    ids = random_ids(2, 6, seed=5)
    kwargs = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": PAD, "return_dict_in_generate": True,
              "output_logits": True}
    assert isinstance(auto.generate(ids, **kwargs).past_key_values, DynamicCache)  # auto keeps the KV cache by default
    got, want = auto.generate(ids, cache=PolynomialLinearCache(auto), **kwargs), fused.generate(ids, **kwargs)
    assert torch.equal(got.sequences, want.sequences)
    torch.testing.assert_close(torch.stack(got.logits), torch.stack(want.logits), **TOL[torch.float32])


def test_cache_memory_does_not_grow():
    """Bytes of the cache's tensors after 2,048 generated tokens equal those after 16; a KV cache's grow."""
    linear = polynomial("llama", "linear", max_position_embeddings=4096, num_hidden_layers=1, hidden_size=16,
                        intermediate_size=16, num_attention_heads=2, num_key_value_heads=1)
    ids = random_ids(1, 4, seed=6)
    sizes = {}
    for n in (16, 2048):
        out = linear.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=PAD,
                              return_dict_in_generate=True)
        cache = out.past_key_values
        assert isinstance(cache, PolynomialLinearCache) and cache.get_seq_length() == 4 + n - 1
        sizes[n] = (cache_tensor_bytes(cache), cache.nbytes)
    assert sizes[16] == sizes[2048] and sizes[16][0] == sizes[16][1] > 0
    layer = cache.layers[0]
    assert layer.state.shape == (1, 1, 8 * 9 // 2, 8) and layer.visible.tolist() == [4 + 2048 - 1]
    kv = {n: cache_tensor_bytes(linear.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                                pad_token_id=PAD, cache=DynamicCache(), return_dict_in_generate=True)
                                .past_key_values) for n in (16, 64)}
    assert kv[64] > kv[16]


def test_mixed_model_keeps_the_kv_cache_and_says_why(caplog):
    mixed = polynomial("llama", "linear")
    _, opts = layer_options(mixed)
    modules = [m for m in mixed.modules() if getattr(m, OPTIONS_ATTR, None) is not None]
    object.__setattr__(modules[1], OPTIONS_ATTR, type(opts[1])(degree=2, backend="fused"))
    with caplog.at_level(logging.WARNING, logger="hf_attnswap.registry"):
        out = mixed.generate(random_ids(1, 5), max_new_tokens=3, pad_token_id=PAD, return_dict_in_generate=True)
    assert isinstance(out.past_key_values, DynamicCache)
    assert "keeps Transformers' KV cache" in caplog.text and "layer 1 (degree=2, backend='fused')" in caplog.text
    with pytest.raises(OptionError, match=r"cannot serve this model: .*layer 1 \(degree=2, backend='fused'\)"):
        PolynomialLinearCache(mixed)
    windowed = polynomial("llama", "linear")
    windowed.config.sliding_window = 4
    with caplog.at_level(logging.WARNING, logger="hf_attnswap.registry"):
        assert isinstance(windowed.generate(random_ids(1, 5), max_new_tokens=2, pad_token_id=PAD,
                                            return_dict_in_generate=True).past_key_values, DynamicCache)
    assert "sliding window of 4 tokens" in caplog.text


def test_a_linear_cache_is_refused_where_it_cannot_serve():
    linear = polynomial("llama", "linear")
    ids = random_ids(1, 5)
    sdpa = AutoModelForCausalLM.from_config(tiny_config("llama"), attn_implementation="sdpa").eval()
    cubic = AutoModelForCausalLM.from_config(tiny_config("llama"), attn_implementation="polynomial").eval()
    for model, why in ((sdpa, "its attention is 'sdpa', not polynomial"), (cubic, r"layer 0 \(degree=3")):
        with pytest.raises(OptionError, match=why):
            model.generate(ids, max_new_tokens=2, pad_token_id=PAD, cache=PolynomialLinearCache(linear))
        with pytest.raises(OptionError, match=why):
            PolynomialLinearCache(model)
    with pytest.raises(OptionError, match="never reached polynomial attention"):
        sdpa(ids, cache=PolynomialLinearCache(linear))  # a cache built for another model
    fused = polynomial("llama", "fused")
    with pytest.raises(OptionError, match=r"backend='fused' needs every key"):
        fused(ids, cache=PolynomialLinearCache(linear))
    with pytest.raises(OptionError, match="attention weights"):
        linear(ids, cache=PolynomialLinearCache(linear), output_attentions=True)
    cache = PolynomialLinearCache(linear)
    linear(ids, cache=cache)
    with pytest.raises(OptionError, match="covers 3 keys, but the PolynomialLinearCache holds 5"):
        linear(ids[:, :3], cache=cache, attention_mask=torch.ones(1, 1, 3, 3, dtype=torch.bool).tril())  # a 4-D mask
    with pytest.raises(OptionError, match="cannot be cropped"):
        cache.crop(-1)


def test_layer_reorders_selects_and_repeats_rows():
    layer = PolynomialLinearLayer()
    key = torch.randn(3, 2, 1, 4)
    layer.update(key, torch.randn(3, 2, 1, 4))
    layer.take(key)
    layer.state.copy_(torch.arange(3.0).view(3, 1, 1, 1).expand_as(layer.state))
    layer.advance(torch.tensor([[True], [False], [True]]), 1)
    assert layer.visible.tolist() == [1, 0, 1] and layer.seen == 1
    layer.reorder_cache(torch.tensor([2, 0, 0]))
    assert layer.state[:, 0, 0, 0].tolist() == [2.0, 0.0, 0.0] and layer.visible.tolist() == [1, 1, 1]
    layer.batch_select_indices(torch.tensor([True, False, True]))
    assert layer.state[:, 0, 0, 0].tolist() == [2.0, 0.0]
    layer.batch_repeat_interleave(2)
    assert layer.state[:, 0, 0, 0].tolist() == [2.0, 2.0, 0.0, 0.0] and layer.state.shape[0] == 4
    nbytes = layer.nbytes
    layer.reset()
    assert layer.seen == 0 and float(layer.state.abs().sum()) == 0 and layer.nbytes == nbytes
