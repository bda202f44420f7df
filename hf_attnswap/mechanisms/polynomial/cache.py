"""Polynomial attention of degree 2 in Transformers' ``Cache``: a fixed-size state per layer instead of a KV cache.

``generate()`` on a model whose every attention layer runs ``{"degree": 2, "backend": "linear"}`` decodes from
:class:`PolynomialLinearCache` (the registry's ``generation_cache`` hook builds it): each layer keeps

- ``state``: ``S = Σ_j φ(k_j) v_jᵀ`` (B, H_kv, D, d_v) with ``D = d(d+1)/2`` (float32 for half-precision models),
- ``visible``: (B,) the number of keys each sequence has absorbed that are not padding (the ``N_i`` of
  ``length_scale="visible"``: ``N_i = visible + the call's own visible keys up to i``),
- ``seen``: the number of positions absorbed, padding included (what ``get_seq_length`` and the mask sizes count).

Nothing of it grows with the length. A layer's :meth:`~PolynomialLinearLayer.update` keeps nothing: it returns
this call's keys and values, tagged (:func:`~hf_attnswap.mechanisms.common.tag_cache_state`) so that the attention
function finds the layer, and the linear backend (:func:`~hf_attnswap.mechanisms.polynomial.attention.polynomial_attention_linear`)
computes the call's outputs from the state and then absorbs the call's keys. A prefill (many tokens at once, or
several chunks of a chunked prefill) runs the chunked linear sweep from the state; exactness needs nothing more,
since every call absorbs all of its keys before returning (the diagonal block of each chunk is computed directly).
A decode step costs O(D·d) per head, whatever the length.

The layers follow Transformers' own (``CacheLayerMixin``: ``get_seq_length``, ``get_mask_sizes``,
``reorder_cache``/``batch_select_indices``/``batch_repeat_interleave`` for beam search and contrastive search,
``reset``, ``offload``/``prefetch``). ``crop`` is refused: a sum cannot forget its last terms, so assisted
decoding, which rolls the cache back, keeps Transformers' KV cache.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.cache_utils import Cache, CacheLayerMixin

from ...errors import OptionError
from ...kernels.polynomial_linear import feature_dim
from ...registry import PERSIST_SUFFIX, layer_options
from ...transformers_hooks import attn_implementation_of
from ..common import tag_cache_state
from .options import LINEAR_DEGREE, PolynomialOptions

MECHANISM = "polynomial"


class PolynomialLinearLayer(CacheLayerMixin):
    """One layer of :class:`PolynomialLinearCache`: the degree-2 state of a polynomial attention layer.

    ``state`` (B, H_kv, D, d_v), ``visible`` (B,) int64 and ``seen`` (int), created at the first ``update``. The
    attention function reads and advances them through :meth:`take` and :meth:`advance`.
    """

    is_compileable = False
    is_croppable = False
    is_sliding = False
    supports_early_init = False  # no key/value tensors to allocate ahead of time

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.state: torch.Tensor | None = None
        self.visible: torch.Tensor | None = None
        self.seen = 0
        self.device: torch.device | None = None
        self._pending: torch.Tensor | None = None

    def __repr__(self) -> str:
        shape = None if self.state is None else tuple(self.state.shape)
        return f"{type(self).__name__}(seen={self.seen}, state={shape})"

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """A zero state for keys (B, H_kv, n, d) and values (B, H_kv, n, d_v), in at least float32."""
        b, hkv, _, d = key_states.shape
        dtype = torch.promote_types(key_states.dtype, torch.float32)
        self.device = key_states.device
        self.state = torch.zeros(b, hkv, feature_dim(d), value_states.shape[-1], dtype=dtype, device=self.device)
        self.visible = torch.zeros(b, dtype=torch.long, device=self.device)
        self.seen = 0
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (B, H_kv, n, d) and values (B, H_kv, n, d_v) of this call, returned as they are (the key tagged with
        this layer); the attention function absorbs them into the state. Raises if the previous call's keys never
        reached polynomial attention (a model that is not all-linear would otherwise attend to them alone)."""
        self.check_taken()
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self._pending = key_states
        return tag_cache_state(key_states, self), value_states

    def check_taken(self) -> None:
        """Raise if the keys of the last :meth:`update` never reached polynomial attention's linear backend (a model
        that is not all-linear, which would have attended to that call's tokens alone)."""
        if self._pending is not None:
            self._pending = None
            raise OptionError(
                "PolynomialLinearCache: the keys this cache returned for the previous call never reached polynomial "
                "attention's linear backend, so that layer attended to that call's tokens alone. This cache only "
                "serves a model whose every attention layer runs polynomial attention with {'degree': 2, 'backend': "
                "'linear'} (or 'auto'); use a DynamicCache for any other model."
            )

    def take(self, key: torch.Tensor) -> None:
        """Mark the keys of the last :meth:`update` as reaching the attention function (``key`` must be them)."""
        if key is not self._pending:
            raise OptionError("PolynomialLinearCache: the attention function got keys that are not the ones this layer "
                              "returned last; each layer's update must be followed by its own attention call.")
        self._pending = None

    def take_head_size(self, head_dim: int) -> None:
        """Size the state for the keys the mechanism absorbs, which may be wider than the model's (an ``offset`` adds
        a column): a layer that has seen nothing yet is re-made for ``head_dim``; one that has must already fit."""
        features = feature_dim(head_dim)
        if self.state.shape[-2] == features:
            return
        if self.seen:
            raise OptionError(f"PolynomialLinearCache: this layer's state holds {self.state.shape[-2]} features, but its "
                              f"keys now have {features} (head size {head_dim}); the mechanism's options changed mid-way. "
                              "Start a new cache.")
        self.state = self.state.new_zeros(*self.state.shape[:-2], features, self.state.shape[-1])

    def advance(self, key_visible: torch.Tensor | None, n: int) -> None:
        """Count ``n`` new positions, of which those where ``key_visible`` (B|1, n) is True (all: None) are keys."""
        self.seen += n
        self.visible += n if key_visible is None else key_visible.sum(-1).to(self.visible.dtype)

    @property
    def nbytes(self) -> int:
        """Bytes of the layer's tensors: constant once initialised, whatever the number of tokens seen."""
        return sum(t.numel() * t.element_size() for t in (self.state, self.visible) if t is not None)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        """``(kv_length, kv_offset)`` of the mask for ``query_length`` new tokens: every position so far, as a
        ``DynamicLayer`` (the attention function checks the mask against the state)."""
        return self.seen + query_length, 0

    def get_seq_length(self) -> int:
        """Positions absorbed so far (padding included)."""
        return self.seen

    def get_max_length(self) -> int:
        """No maximum: -1."""
        return -1

    def reset(self) -> None:
        if self.is_initialized:
            self.state.zero_()
            self.visible.zero_()
        self.seen, self._pending = 0, None

    def offload(self) -> None:
        if self.is_initialized:
            self.state = self.state.to("cpu", non_blocking=True)
            self.visible = self.visible.to("cpu", non_blocking=True)

    def prefetch(self) -> None:
        if self.is_initialized and self.state.device != self.device:
            self.state = self.state.to(self.device, non_blocking=True)
            self.visible = self.visible.to(self.device, non_blocking=True)

    def _select(self, index: torch.Tensor) -> None:
        if self.is_initialized:
            self.state = self.state.index_select(0, index.to(self.state.device))
            self.visible = self.visible.index_select(0, index.to(self.visible.device))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: row ``i`` becomes row ``beam_idx[i]``."""
        self._select(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep the rows ``indices`` (a LongTensor or a boolean mask over the batch)."""
        if self.is_initialized:
            rows = torch.arange(self.state.shape[0], device=self.state.device)[indices]
            self._select(rows)

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every row ``repeats`` times, in place (as ``DynamicLayer``)."""
        if self.is_initialized:
            self.state = self.state.repeat_interleave(repeats, dim=0)
            self.visible = self.visible.repeat_interleave(repeats, dim=0)

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove == 0:
            return
        raise OptionError("PolynomialLinearCache cannot be cropped: its state is a sum over every token, and a sum "
                          "cannot forget its last terms. Assisted decoding and other rollbacks need a DynamicCache.")


class PolynomialLinearCache(Cache):
    """Transformers ``Cache`` for a model whose every attention layer runs polynomial attention of degree 2 with
    ``backend="linear"`` (or ``"auto"``): one :class:`PolynomialLinearLayer` per layer, whose size does not grow
    with the length.

    ``PolynomialLinearCache(model)`` raises :class:`~hf_attnswap.errors.OptionError` for any other model. ``generate()``
    builds one by itself for an all-``"linear"`` model; pass one as ``past_key_values=`` (or ``cache=``) to ``forward`` or
    ``generate`` to decode with it explicitly (also under ``backend="auto"``). :attr:`nbytes` is the memory it holds.
    """

    def __init__(self, model: nn.Module) -> None:
        self.check_model(model, allow_auto=True)
        self.config = model.config
        self._last: PolynomialLinearLayer | None = None  # the layer updated last, whose keys must reach attention
        super().__init__(layer_class_to_replicate=PolynomialLinearLayer)

    def check_model(self, model: nn.Module, allow_auto: bool = True) -> None:
        """Raise :class:`OptionError` unless every attention layer of ``model`` can run from this cache (what
        ``generate()`` checks before using a cache the user passes)."""
        problem = linear_cache_problem(model, allow_auto=allow_auto)
        if problem is not None:
            raise OptionError(f"PolynomialLinearCache cannot serve this model: {problem}. Use a DynamicCache (the "
                              "default of generate()), or swap with attnswap={'degree': 2, 'backend': 'linear'}.")

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """As ``Cache.update``; first checks that the model still runs polynomial attention (its attention may have
        been switched since the cache was built)."""
        name = attn_implementation_of(self.config)
        if name not in (MECHANISM, MECHANISM + PERSIST_SUFFIX):
            raise OptionError(f"PolynomialLinearCache: the model now runs attention {name!r}, not polynomial; this "
                              "cache keeps no keys for it. Use a DynamicCache.")
        if self._last is not None:  # the previous layer's keys must have reached its attention
            last, self._last = self._last, None
            last.check_taken()
        keys, values = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        self._last = self.layers[layer_idx]
        return keys, values

    @property
    def nbytes(self) -> int:
        """Bytes held by every layer's tensors: constant in the number of tokens seen."""
        return sum(layer.nbytes for layer in self.layers)


def _config_problem(config: Any) -> str | None:
    """What in a model's config keeps its attention from running from a polynomial state (None: nothing)."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    types = set(getattr(text, "layer_types", None) or ())
    if types - {"full_attention"}:
        return f"its layers include {', '.join(sorted(types - {'full_attention'}))} layers (a window the state cannot forget)"
    if getattr(text, "sliding_window", None) is not None and getattr(text, "use_sliding_window", True):
        return f"it uses a sliding window of {text.sliding_window} tokens, which a state cannot forget"
    if getattr(text, "attn_logit_softcapping", None) is not None:
        return "it caps its attention scores (softcap), which linear attention cannot compute"
    return None


def linear_cache_problem(model: nn.Module, allow_auto: bool = True) -> str | None:
    """Why ``model`` cannot generate from a :class:`PolynomialLinearCache` (None: it can): its attention is not
    polynomial, a layer's degree is not 2 or its backend is neither ``"linear"`` nor (with ``allow_auto``) ``"auto"``,
    or its config has sliding windows or a softcap."""
    found = layer_options(model)
    if found is None or found[0].name != MECHANISM:
        return f"its attention is {attn_implementation_of(getattr(model, 'config', None))!r}, not polynomial"
    backends = ("linear", "auto") if allow_auto else ("linear",)
    bad = [f"layer {i} ({_describe(o)})" for i, o in enumerate(found[1])
           if o.degree != LINEAR_DEGREE or o.backend not in backends]
    if bad:
        need = "backend='linear' or 'auto'" if allow_auto else "backend='linear'"
        return f"it needs degree={LINEAR_DEGREE} and {need} in every layer, and {', '.join(bad)} do not"
    return _config_problem(model.config)


def _describe(opts: PolynomialOptions) -> str:
    return f"degree={opts.degree}, backend={opts.backend!r}"


def linear_generation_cache(model: nn.Module, options: list[PolynomialOptions]) -> PolynomialLinearCache | str | None:
    """The registry's ``generation_cache`` for polynomial: a :class:`PolynomialLinearCache` when every layer runs
    ``backend="linear"`` (degree 2) and the config allows it; a reason (logged) when some layers do but the model
    cannot (mixed backends, sliding windows, softcap); None when no layer asks for the linear form."""
    if not any(o.backend == "linear" for o in options):
        return None
    problem = linear_cache_problem(model, allow_auto=False)
    return PolynomialLinearCache(model) if problem is None else problem
