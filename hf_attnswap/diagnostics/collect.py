"""Run a model once on a batch and reduce every layer's attention weights as they are produced.

Forward hooks on the attention modules read the weights each layer returns (the reference path runs, forced
with :func:`hf_attnswap.use_backend`, so every mechanism returns its real weights), reduce them to running
sums per layer x head and drop them; Transformers does not collect them all as it would with
``output_attentions=True`` (which runs the same reference path). With ``grad=False`` memory stays at one
layer's weights; with ``grad=True`` autograd keeps each layer's weights for the backward, as any
reference-path backward does.

Values come from forward hooks on the value projection (``v_proj``, or the value third of GPT-2's fused
``c_attn``); the query-weight gradient from ``torch.autograd.grad`` on ``q_proj.weight`` (or the query third
of ``c_attn.weight``), so no ``.grad`` is touched. Hooks only read: the model's outputs do not change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..data.hints import param, setting
from ..errors import AttnSwapError
from ..evaluation.perplexity import model_max_positions
from ..mechanisms.common import repeat_kv, visible_mask
from ..patching import attention_modules
from ..registry import use_backend
from ..transformers_hooks import attn_implementation_of
from . import measures as M
from .result import ProbeResult

DEFAULT_TOP_N: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
MAP_MAX_TOKENS = 64


class ProbeError(AttnSwapError):
    """The model or the input cannot be probed (no attention weights returned, bad top_n, empty batch)."""


def _head_dim(module: nn.Module, width: int, heads: int) -> int:
    return int(getattr(module, "head_dim", None) or width // heads)


def _value_reader(module: nn.Module) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]] | None:
    """The submodule whose output holds the values, and how to cut them out of it: (B, T, H_kv * d) -> same."""
    if isinstance(getattr(module, "v_proj", None), nn.Module):
        return module.v_proj, lambda out: out
    if isinstance(getattr(module, "c_attn", None), nn.Module) and getattr(module, "split_size", None):
        split = int(module.split_size)
        return module.c_attn, lambda out: out[..., 2 * split : 3 * split]
    return None


def query_weight(module: nn.Module, heads: int) -> tuple[nn.Parameter, Callable[[torch.Tensor], torch.Tensor]] | None:
    """The query projection weight of an attention module and a function mapping its gradient to per-head
    blocks (H, ...): Llama-style ``q_proj.weight`` (H*d, D) rows, or GPT-2's fused ``c_attn.weight`` (D, 3D),
    a ``Conv1D`` whose first D columns are the query. None if the module has neither."""
    q = getattr(module, "q_proj", None)
    if isinstance(getattr(q, "weight", None), nn.Parameter):
        return q.weight, lambda g: g.reshape(heads, -1, g.shape[-1])
    c = getattr(module, "c_attn", None)
    split = getattr(module, "split_size", None)
    if isinstance(getattr(c, "weight", None), nn.Parameter) and split and c.weight.shape[-1] == 3 * split:
        return c.weight, lambda g: g[:, :split].reshape(g.shape[0], heads, -1).transpose(0, 1)
    return None


class _LayerReducer:
    """Per-layer hooks: keep the layer's values until its weights arrive, reduce both, keep nothing else."""

    def __init__(self, token_valid: torch.Tensor, top_n: tuple[int, ...], example: int | None) -> None:
        self.token_valid, self.top_n, self.example = token_valid, top_n, example
        self.result: ProbeResult | None = None  # made at the first layer, once the head count is known
        self.values: dict[int, torch.Tensor] = {}
        self.maps: dict[int, torch.Tensor] = {}
        self.missing: list[int] = []

    def make_result(self, layers: int, heads: int, name: str) -> ProbeResult:
        if self.result is None:
            self.result = ProbeResult.empty(layers, heads, self.top_n, name)
        return self.result

    def value_hook(self, layer: int, cut: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            self.values[layer] = cut(output).detach()
        return hook

    def attention_hook(self, layer: int, layers: int, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if not isinstance(weights, torch.Tensor) or weights.dim() != 4:
                self.missing.append(layer)
                return
            with torch.no_grad():
                mask = kwargs.get("attention_mask")  # GPT-2, Llama, Mistral, Qwen2 pass it by keyword
                self.reduce(layer, module, weights.detach(), mask, self.make_result(layers, weights.shape[1], name))
        return hook

    def reduce(self, layer: int, module: nn.Module, weights: torch.Tensor, mask: Any, res: ProbeResult) -> None:
        b, h, q, k = weights.shape
        tv = self.token_valid.to(weights.device)
        if q != k or tv.shape[-1] != k:
            raise ProbeError(f"layer {layer}: expected self-attention weights over the {tv.shape[-1]} input tokens, "
                             f"got shape {tuple(weights.shape)}; probe full sequences without a KV cache.")
        if isinstance(mask, torch.Tensor) and mask.dim() == 4:  # what the attention saw: causal, window, padding
            visible = visible_mask(mask, b, q, k, weights.device)
        else:  # no 4D mask handed to the layer: a causal LM without padding
            visible = torch.ones(1, 1, q, k, dtype=torch.bool, device=weights.device).tril()
        visible = visible & tv[:, None, :, None] & tv[:, None, None, :]  # and never a padded query or key
        rows = M.valid_rows(visible).expand(b, h, q)  # (B, H, Q)
        w = weights.float()
        raw_sum = M.row_sum(w, visible)
        tol = 1e-3 if weights.dtype in (torch.float32, torch.float64) else 2e-2
        res.signed_layers[layer] |= bool(((w < 0) & visible).any())
        res.unnormalised_layers[layer] |= bool(((raw_sum - 1).abs() > tol)[rows].any())
        p = M.probability_weights(w, visible)

        def per_row(values: torch.Tensor, defined: torch.Tensor = rows) -> tuple[torch.Tensor, torch.Tensor]:
            """(..., B, H, Q) -> samples (B*Q, ..., H)."""
            lead = values.shape[:-3]
            defined = defined.expand(*lead, b, h, q)
            def move(t: torch.Tensor) -> torch.Tensor:
                return t.movedim(-3, 0).movedim(-1, 1).reshape(b * q, *lead, h)
            return move(values), move(defined)

        ent = M.entropy(p)
        below, above = M.sparsity_shares(p, visible)
        for name, v in (("entropy", ent), ("effective_support", ent.exp()), ("max_weight", M.max_weight(p)),
                        ("share_below_0.001", below), ("share_above_0.1", above),
                        ("negative_mass_share", M.negative_mass_share(w, visible)), ("row_sum", raw_sum),
                        ("abs_row_mass", M.abs_row_mass(w, visible)),
                        ("raw_collision_entropy", M.raw_collision_entropy(w, visible))):
            res.stats[name].add(layer, *per_row(v))
        seq_ok = tv.any(-1)[:, None]
        res.stats["frobenius_norm"].add(layer, M.frobenius_norm(w, visible), seq_ok)
        res.stats["frobenius_ratio"].add(layer, M.frobenius_ratio(w, visible), seq_ok)
        sink = M.first_token_index(tv)
        strength, defined = M.sink_strength(p, visible, sink)
        res.stats["sink_strength"].add(layer, strength, defined[:, None])
        mass, defined_n = M.top_n_mass(p, visible, self.top_n)
        res.stats["top_n_mass"].add(layer, *per_row(mass, defined_n & rows))
        res.stats["n_over_l"].add(layer, *per_row(M.n_over_l(visible, self.top_n).expand_as(mass), defined_n & rows))

        values = self.values.pop(layer, None)
        if values is not None:
            d = _head_dim(module, values.shape[-1], h)
            v = values.reshape(b, k, -1, d).transpose(1, 2)
            v = repeat_kv(v, h // v.shape[1])
            res.values_available = True
            res.stats["sink_value_norm_ratio"].add(layer, M.value_norm_ratio(v, tv, sink), tv.any(-1)[:, None])
            dist, rel, defined_s = M.selection_separation(p, v, visible, self.top_n)
            res.stats["separation"].add(layer, *per_row(dist, defined_s & rows))
            res.stats["separation_rel"].add(layer, *per_row(rel, defined_s & rows))

        if self.example is not None:
            real = tv[self.example].nonzero().flatten()[:MAP_MAX_TOKENS]
            self.maps[layer] = w[self.example][:, real][:, :, real].cpu()


def probe(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    top_n: Sequence[int] = DEFAULT_TOP_N,
    grad: bool = True,
    example_index: int | None = 0,
) -> ProbeResult:
    """Measure every SCIENCE.md diagnostic of ``model`` on one batch, per layer and head.

    Args:
        model: a Transformers causal LM whose attention returns its weights (any hf_attnswap mechanism, or
            Transformers' ``eager``; ``sdpa`` returns none).
        input_ids: (B, T) token ids.
        attention_mask: (B, T), 1 for real tokens, 0 for padding (left or right); None means all real.
        top_n: the sizes N for the top-N mass and value separation.
        grad: also compute the LM loss's gradient w.r.t. every layer's query projection weight (one backward).
        example_index: keep this sequence's raw weights (first 64 real tokens) in ``attention_map``; None: none.

    Returns a :class:`ProbeResult`; ``merge`` results of several batches, ``to_dict()`` for the numbers.
    The model runs once, in eval mode, with the reference attention path; its parameters, their ``.grad``,
    ``requires_grad`` and train/eval mode are as before afterwards.
    """
    top_n = check_top_n(top_n)
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ProbeError(f"input_ids must be (batch, tokens) with at least one token; got shape {tuple(input_ids.shape)}.")
    token_valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if not token_valid.any():
        raise ProbeError("the batch has no real token (attention_mask is all 0).")
    if example_index is not None and not 0 <= example_index < input_ids.shape[0]:
        raise ProbeError(f"example_index {example_index} is outside the batch of {input_ids.shape[0]}.")
    modules = attention_modules(model)
    layers = len(modules)
    name = str(attn_implementation_of(model.config, "?"))
    reducer = _LayerReducer(token_valid, top_n, example_index)
    handles = []
    for i, module in enumerate(modules):
        handles.append(module.register_forward_hook(reducer.attention_hook(i, layers, name), with_kwargs=True))
        found = _value_reader(module)
        if found is not None:
            handles.append(found[0].register_forward_hook(reducer.value_hook(i, found[1])))
    heads_hint = int(getattr(model.config, "num_attention_heads", 0) or 0)
    q_weights = [query_weight(m, heads_hint) for m in modules] if grad and heads_hint else []
    q_weights = q_weights if q_weights and all(q is not None for q in q_weights) else []
    was_training = model.training
    saved_flags = [(w, w.requires_grad) for w, _ in q_weights]
    labels = input_ids.masked_fill(~token_valid, -100)  # the first real token has no context (left padding):
    labels[torch.arange(labels.shape[0]), M.first_token_index(token_valid)] = -100  # not a target either
    try:
        model.eval()
        for w, _ in q_weights:
            w.requires_grad_(True)
        with use_backend("reference"), torch.set_grad_enabled(bool(q_weights)):
            out = model(input_ids=input_ids, attention_mask=token_valid.long(), labels=labels,
                        output_hidden_states=True, use_cache=False)
        if reducer.missing or reducer.result is None:
            raise ProbeError(
                f"attention layers {reducer.missing} returned no weights ({name!r} attention). Probe a model loaded "
                "with an hf_attnswap mechanism (softmax, polynomial, dagpam, ...) or attn_implementation='eager'; "
                "Transformers' 'sdpa' and flash attention do not return weights.")
        res = reducer.result
        if q_weights:
            grads = torch.autograd.grad(out.loss, [w for w, _ in q_weights], allow_unused=True)
            for i, (g, (_, per_head)) in enumerate(zip(grads, q_weights)):
                if g is None:
                    continue
                res.grad_available = True
                blocks = per_head(g.float())  # (H, ...): the query part only (a third of GPT-2's c_attn)
                res.stats["query_grad_norm"].add(i, blocks.norm().reshape(1))
                res.stats["query_grad_norm_head"].add(i, blocks.flatten(1).norm(dim=-1)[None])
        elif grad:
            res.notes.append("no query projection found (q_proj or GPT-2 c_attn): query gradients not measured")
    finally:
        for handle in handles:
            handle.remove()
        for w, flag in saved_flags:
            w.requires_grad_(flag)
        model.train(was_training)
    with torch.no_grad():
        for i, hidden in enumerate(out.hidden_states):
            tv = token_valid.to(hidden.device)
            ok = tv.any(-1)
            res.stats["rank_collapse_residual"].add(i, M.rank_collapse_residual(hidden, tv), ok)
            res.stats["token_cosine"].add(i, M.mean_token_cosine(hidden, tv), tv.sum(-1) > 1)
            res.stats["massive_activation"].add(i, M.massive_activation_ratio(hidden, tv), ok)
    if reducer.maps:
        res.attention_map = torch.stack([reducer.maps[i] for i in range(layers)])
    if not res.values_available:
        res.notes.append("no value projection found (v_proj or GPT-2 c_attn): value measures not computed")
    res.sequences += int(token_valid.any(-1).sum())
    res.tokens += int(token_valid.sum())
    res.batches += 1
    res.loss_sum += float(out.loss.detach()) if out.loss is not None else 0.0
    return res


def check_top_n(top_n: Sequence[int]) -> tuple[int, ...]:
    """``top_n`` as a sorted tuple of distinct integers >= 1, or :class:`ProbeError`."""
    values = tuple(top_n)
    if not values or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in values):
        raise ProbeError(f"top_n must be a non-empty list of integers >= 1; got {top_n!r}.")
    return tuple(sorted(set(values)))


def probe_texts(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int = 128,
    batch_size: int = 4,
    top_n: Sequence[int] = DEFAULT_TOP_N,
    grad: bool = True,
    example_index: int | None = 0,
) -> ProbeResult:
    """:func:`probe` over ``texts``, batch by batch (right padding, each text cut to ``max_length`` tokens),
    merged into one result. Texts with fewer than 2 tokens are skipped; ``example_index`` counts the kept texts."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ProbeError(f"{param('max_length')} must be an integer >= 2 (tokens); got {max_length!r}.")
    positions = model_max_positions(model)
    if positions is not None and max_length > positions:  # a longer text would index past the position embeddings
        raise ProbeError(f"{setting('max_length', str(max_length))} is larger than the model's {positions} positions; "
                         f"pass {param('max_length')} <= {positions}.")
    encoded = [ids[:max_length] for ids in (tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts if t)]
    encoded = [ids for ids in encoded if len(ids) >= 2]
    if not encoded:
        raise ProbeError(f"none of the {len(texts)} texts has at least 2 tokens; nothing to probe.")
    if example_index is not None and not 0 <= example_index < len(encoded):
        raise ProbeError(f"example index {example_index} is outside the {len(encoded)} texts kept.")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    device = next(model.parameters()).device
    result: ProbeResult | None = None
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(ids) for ids in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for i, seq in enumerate(chunk):
            ids[i, : len(seq)] = torch.tensor(seq)
            mask[i, : len(seq)] = 1
        local = example_index - start if example_index is not None and start <= example_index < start + len(chunk) else None
        r = probe(model, ids.to(device), mask.to(device), top_n=top_n, grad=grad, example_index=local)
        result = r if result is None else result.merge(r)
    assert result is not None
    return result
