"""Mechanism registry: name -> spec, and registration of each name with Transformers.

Registering a mechanism adds, under its name, an attention function to ``AttentionInterface`` and a mask
function to ``AttentionMaskInterface`` that always materialises a boolean mask (causal, padding and
KV-cache offset). Without the mask function Transformers passes ``attention_mask=None`` to a custom name.

The same functions are also registered under a *persisted* name, the one written to ``config.json``:
``"dagpam (needs the hf_attnswap plugin: pip install hf-attnswap, then import hf_attnswap)"``. Loading
such a checkpoint without the plugin makes Transformers fail with that text in its message.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import difflib
import inspect
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from .errors import NotSwappedError, OptionError, UnknownMechanismError, UnsupportedModelError
from .kernels.mask import AttentionMask
from .mechanisms.common import AttentionContext, cache_state, repeat_kv, visible_mask
from .options import MechanismOptions, check_backend
from .transformers_hooks import (
    TRANSFORMERS_ATTENTIONS,
    attention_class,
    attention_weights_requested,
    attn_implementation_of,
    boolean_mask,
    is_transformers_attention_name,
    mask_causal_offset,
    register_callbacks,
)

MechanismFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, AttentionContext], tuple[torch.Tensor, torch.Tensor | None]]
FastFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, AttentionMask, AttentionContext], torch.Tensor]
ParamsFactory = Callable[[int, int, Any], nn.Module]
#: ``(query (B, H, Q, d), mask, ctx) -> reason or None``: why a fast path cannot take a call (None: it can).
SupportsFn = Callable[[torch.Tensor, AttentionMask, AttentionContext], str | None]
#: ``(model, per-layer options) -> Cache | str | None``: the cache ``generate()`` should use for a model running the
#: mechanism; a string says why the model keeps Transformers' KV cache (logged); None keeps it silently.
GenerationCacheFn = Callable[[nn.Module, list[Any]], Any]

logger = logging.getLogger(__name__)

PERSIST_SUFFIX = " (needs the hf_attnswap plugin: pip install hf-attnswap, then import hf_attnswap)"
OPTIONS_ATTR = "attnswap_options"  # plain attribute on each attention module: the parsed options
PARAMS_ATTR = "attnswap"  # submodule on each attention module: the mechanism's parameters, if any
ROPE_ATTR = "_attnswap_rope"  # the Rotary (cos, sin) the rotary pre-hook stashed for the current forward


@dataclass(frozen=True)
class Mechanism:
    """Everything hf_attnswap knows about one mechanism.

    - ``forward``: the reference attention, ``(query, key, value, mask, ctx) -> (out, weights)`` with
      query (B, H, Q, d), key/value (B, H, K, d) (K/V heads already repeated for GQA), mask (B|1, 1, Q, K)
      bool, out (B, H, Q, d) and weights (B, H, Q, K) or None.
    - ``options``: the options dataclass (a :class:`MechanismOptions` subclass).
    - ``make_params``: ``(num_heads, head_dim, options) -> nn.Module`` for mechanisms that add parameters
      to every attention layer, else ``None``.
    - ``needs_rope``: the parameters act on the pre-rotary query (only supported architectures can).
    - ``fast``: fast paths by backend name (``"fused"``, ``"triton"``), ``(query, key, value, mask, ctx) -> out``
      with key/value *not* repeated (B, H_kv, K, d) and ``mask`` an :class:`AttentionMask`. Each must match
      ``forward``; ``fast_supports`` may name a predicate ``(query, mask, ctx) -> reason or None`` per backend,
      which sees the call's :class:`AttentionMask` (lengths, causal offset, dense mask).
    - ``accepts``: the attention keywords of :data:`SEMANTIC_KEYWORDS` (``softcap``, ``s_aux`` ...) that the
      mechanism implements, reading them from ``ctx.extra``. A model that passes any other of them (not None) is
      refused at its first forward, naming the model type and the keyword, rather than silently ignored.
    - ``refuses``: ``{keyword: why}`` for keywords of :data:`SEMANTIC_KEYWORDS` that the mechanism has no meaning for
      (polynomial and sinks: no softmax denominator); the refusal says why.
    - ``auto``: the fast paths ``backend="auto"`` tries, in order.
    - Metadata that the model card, ``list_mechanisms()``, the tests, the benchmarks and the demo read (so none keeps
      its own list): ``paper`` (``(arXiv id, citation)`` or None); ``exercise``, option sets under which the
      mechanism differs from the model's own attention (the tests and benchmarks run them; a backend that cannot
      take one, such as a degree-2-only form, takes the first it can); ``examples``, the option sets the demo
      compares.
    """

    name: str
    forward: MechanismFn
    options: type[MechanismOptions]
    make_params: ParamsFactory | None = None
    needs_rope: bool = False
    description: str = ""
    fast: dict[str, FastFn] = dataclasses.field(default_factory=dict)
    fast_supports: dict[str, SupportsFn] = dataclasses.field(default_factory=dict)
    accepts: frozenset[str] = frozenset()
    auto: tuple[str, ...] = ()  # the fast paths backend="auto" tries, in order
    paper: tuple[str, str] | None = None
    exercise: tuple[dict[str, Any], ...] = ({},)
    examples: tuple[dict[str, Any], ...] = ({},)
    refuses: dict[str, str] = dataclasses.field(default_factory=dict)
    #: ``{backend: (query, mask, ctx) -> reason or None}``, consulted by ``"auto"`` only: why auto should not pick a
    #: fast path that *can* take the call (e.g. it is slower at this length); an explicit request ignores it.
    auto_when: dict[str, SupportsFn] = dataclasses.field(default_factory=dict)
    #: The fast path that runs a call whose keys come from the mechanism's fixed-size state cache (``ctx.state``):
    #: ``"auto"`` and that backend take it, any other backend (and the reference) refuses it. None: no state cache.
    state_backend: str | None = None
    #: What ``generate()`` uses as its cache when the user passes none (see :data:`GenerationCacheFn`).
    generation_cache: GenerationCacheFn | None = None

    @property
    def backends(self) -> tuple[str, ...]:
        """The values of the ``backend`` option: ``"auto"`` and ``"reference"``, then the fast paths."""
        return ("auto", "reference", *self.fast) if self.fast else ("reference",)

    @property
    def persisted_name(self) -> str:
        return self.name + PERSIST_SUFFIX


_REGISTRY: dict[str, Mechanism] = {}


def register_mechanism(
    name: str,
    options: type[MechanismOptions] | None = None,
    *,
    make_params: ParamsFactory | None = None,
    needs_rope: bool = False,
    description: str = "",
    fast: dict[str, FastFn] | None = None,
    fast_supports: dict[str, Callable[..., str | None]] | None = None,
    accepts: tuple[str, ...] = (),
    refuses: dict[str, str] | None = None,
    auto_when: dict[str, Callable[..., str | None]] | None = None,
    auto: tuple[str, ...] | None = None,
    paper: tuple[str, str] | None = None,
    exercise: tuple[dict[str, Any], ...] | None = None,
    examples: tuple[dict[str, Any], ...] | None = None,
    state_backend: str | None = None,
    generation_cache: GenerationCacheFn | None = None,
    overwrite: bool = False,
) -> Callable[[MechanismFn], MechanismFn]:
    """Decorator that registers an attention mechanism with hf_attnswap and with Transformers.

    ```python
    @dataclass
    class SigmoidOptions(hf_attnswap.MechanismOptions):
        bias: float = -2.0
        def __post_init__(self):
            self.bias = hf_attnswap.options.check_float("sigmoid", "bias", self.bias)

    @hf_attnswap.register_mechanism("sigmoid", SigmoidOptions)
    def sigmoid_attention(query, key, value, mask, ctx):  # (B,H,Q,d), (B,H,K,d), (B,H,K,d), (B|1,1,Q,K) bool
        w = torch.sigmoid(query @ key.transpose(-1, -2) * ctx.scaling + ctx.options.bias) * mask
        return w.to(value.dtype) @ value, w                # (B,H,Q,d), (B,H,Q,K)
    ```
    Then ``from_pretrained(..., attn_implementation="sigmoid", attnswap={"bias": -1.0})``.

    ``accepts``: the model-specific attention keywords (of :data:`SEMANTIC_KEYWORDS`, e.g. ``"softcap"``) that
    ``fn`` implements by reading ``ctx.extra``; models that pass the others are refused. ``refuses``: ``{keyword: why}``
    for those of them the mechanism has no meaning for, so that the refusal explains itself.

    ``fast``: ``{backend name: fn}``, each ``fn(query, key, value, mask: AttentionMask, ctx) -> out`` (un-repeated
    K/V). Registration is the one source of truth for backends: the options get a ``backend`` option (added
    when the dataclass has none, default ``"auto"``) whose values are ``"auto"``, ``"reference"`` and these names;
    ``fast_supports[name](query, mask, ctx)`` says why a fast path cannot take a call (None: it can; ``mask`` is the
    call's :class:`~hf_attnswap.kernels.mask.AttentionMask`; a predicate of the older form ``(query, ctx)`` is
    accepted too); ``auto`` lists the fast paths ``backend="auto"`` tries, in order (default: all of ``fast``, in
    its order); ``auto_when[name](query, mask, ctx)`` says why ``"auto"`` should pass over a fast path that can
    run the call (None: take it), e.g. below the length where it becomes faster.

    ``state_backend``: the fast path that can run from a fixed-size state cache instead of a KV cache (its cache layer
    tags the keys it returns, :func:`~hf_attnswap.mechanisms.common.tag_cache_state`; the call's ``ctx.state`` is that
    layer); ``generation_cache(model, per-layer options)``: the cache ``generate()`` builds for a model that runs the
    mechanism (or a reason, logged, to keep Transformers' KV cache).

    Metadata: ``paper=(arXiv id, citation)`` goes on the model card; ``exercise`` (option dicts, default ``({},)``)
    are what the conformance tests and benchmarks run the mechanism with, ideally options under which it differs from
    softmax; ``examples`` (default: ``exercise``) what the demo compares. Each is validated here.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise OptionError(f"mechanism name must be a Python identifier such as 'sigmoid', got {name!r}.")
    options_cls = options or _empty_options(name)
    if not (isinstance(options_cls, type) and issubclass(options_cls, MechanismOptions) and dataclasses.is_dataclass(options_cls)):
        raise OptionError(f"options for mechanism {name!r} must be a @dataclass subclass of hf_attnswap.MechanismOptions.")
    if name in TRANSFORMERS_ATTENTIONS or name.startswith("flash_attention") or "sdpa" in name or "flash" in name:
        raise OptionError(f"mechanism name {name!r} clashes with a Transformers attention implementation; pick another.")

    def decorator(fn: MechanismFn) -> MechanismFn:
        if name in _REGISTRY and not overwrite and _REGISTRY[name].forward is not fn:
            raise OptionError(f"mechanism {name!r} is already registered; pass overwrite=True to replace it.")
        options_cls.mechanism = name
        doc = description or (fn.__doc__ or "").strip().split("\n")[0]
        unknown = sorted((set(accepts) | set(refuses or {})) - set(SEMANTIC_KEYWORDS))
        both = sorted(set(accepts) & set(refuses or {}))
        if both:
            raise OptionError(f"register_mechanism({name!r}): {', '.join(map(repr, both))} both accepted and refused.")
        if unknown:
            raise OptionError(f"register_mechanism({name!r}, accepts/refuses=...): {', '.join(map(repr, unknown))} not among the "
                              f"attention keywords hf_attnswap checks ({', '.join(SEMANTIC_KEYWORDS)}); other keywords "
                              "reach ctx.extra anyway.")
        fast_paths = dict(fast or {})
        bad = sorted(set(fast_paths) & {"auto", "reference"}) or sorted(
            (set(fast_supports or {}) | set(auto_when or {})) - set(fast_paths))
        if bad:
            raise OptionError(f"register_mechanism({name!r}): {', '.join(map(repr, bad))} cannot be a fast path name "
                              "here ('auto' and 'reference' are reserved; fast_supports names must be in fast).")
        if state_backend is not None and state_backend not in fast_paths:
            raise OptionError(f"register_mechanism({name!r}, state_backend={state_backend!r}): not one of its fast paths "
                              f"({', '.join(fast_paths) or 'none'}).")
        order = tuple(fast_paths) if auto is None else tuple(auto)
        if set(order) - set(fast_paths):
            raise OptionError(f"register_mechanism({name!r}, auto=...): {sorted(set(order) - set(fast_paths))} are not "
                              f"fast paths of it (fast: {', '.join(fast_paths) or 'none'}).")
        opts_cls = _with_backend_option(name, options_cls, fast_paths)
        supports = {k: _with_mask_argument(name, k, f) for k, f in (fast_supports or {}).items()}
        exercised = _option_sets(name, "exercise", exercise)
        shown = exercised if examples is None else _option_sets(name, "examples", examples)
        mech = Mechanism(name, fn, opts_cls, make_params, needs_rope, doc, fast_paths, supports, frozenset(accepts),
                         order, _paper(name, paper), exercised, shown, {k: str(v) for k, v in (refuses or {}).items()},
                         {k: _with_mask_argument(name, k, f) for k, f in (auto_when or {}).items()},
                         state_backend, generation_cache)
        opts_cls.backends = mech.backends
        for sets in (exercised, shown):
            for opts in sets:
                parse_options(mech, {k: v for k, v in opts.items() if k != "backend"})  # a typo fails here, not later
        _REGISTRY[name] = mech
        attention = partial(_attention_interface, mech)
        for key in (name, mech.persisted_name):
            AttentionInterface.register(key, attention)
            AttentionMaskInterface.register(key, boolean_mask)
        return fn

    return decorator


def _with_backend_option(name: str, options_cls: type[MechanismOptions], fast: dict[str, Any]) -> type[MechanismOptions]:
    """``options_cls``, or for a mechanism with fast paths whose options have no ``backend`` field, a dataclass
    subclass (same name) that adds ``backend: str = "auto"``, checked against the registered backends."""
    if not fast or "backend" in options_cls.field_names():
        return options_cls
    parent_post_init = getattr(options_cls, "__post_init__", None)

    def __post_init__(self: Any) -> None:
        if parent_post_init is not None:
            parent_post_init(self)
        self.backend = check_backend(name, self.backend, type(self).backends)

    sub = dataclasses.make_dataclass(options_cls.__name__, [("backend", str, dataclasses.field(default="auto"))],
                                     bases=(options_cls,), namespace={"__post_init__": __post_init__})
    sub.__module__, sub.__qualname__ = options_cls.__module__, options_cls.__qualname__
    sub.__doc__ = options_cls.__doc__
    return sub


#: Attention keywords that some Transformers models pass and that change what attention computes. A mechanism
#: that does not implement one (``Mechanism.accepts``) refuses a call where it is not None: Gemma2's logit
#: ``softcap``, GPT-OSS's attention sinks (``s_aux``, ``sinks``), T5-style ``position_bias``, sparse attention's
#: ``indices``/``block_indices``. (``sliding_window`` is not here: the mask function applies it.)
SEMANTIC_KEYWORDS = ("softcap", "s_aux", "sinks", "position_bias", "indices", "block_indices")

#: Attention keywords that models pass and that need nothing of a mechanism, with the reason. Together with
#: :data:`SEMANTIC_KEYWORDS` (implemented or refused by each mechanism) and the arguments of the attention function
#: itself (``attention_mask``, ``scaling``, ``dropout``), these are every keyword an installed Transformers causal LM
#: passes; ``tests/test_attention_keywords.py`` walks the models and fails on any other, so that a new one is decided
#: on rather than silently ignored.
NEUTRAL_KEYWORDS: dict[str, str] = {
    "sliding_window": "applied by the mask function: the boolean mask hides keys outside the window",
    "position_ids": "positions are already in the (rotated) query/key and in the mask",
    "cache_position": "the KV-cache offset is already in the mask",
    "position_embeddings": "rotary (cos, sin), already applied to query/key (daGPAM's pre-rotary hook reads its own copy)",
    "past_key_values": "the cache was already updated: key/value hold every cached position",
    "use_cache": "bookkeeping for the cache, not for attention",
    "output_attentions": "read by the registry: attention weights come from the reference forward",
    "output_router_logits": "mixture-of-experts bookkeeping, not for attention",
    "encoder_hidden_states": "None in a causal LM; cross-attention gets them already projected into key/value",
}


def check_keywords(mech: Mechanism, module: nn.Module, kwargs: dict[str, Any]) -> None:
    """Raise :class:`UnsupportedModelError` if the model passed a :data:`SEMANTIC_KEYWORDS` keyword (not None) that
    ``mech`` does not implement (with the mechanism's reason when it refuses it by name)."""
    refused = [k for k in SEMANTIC_KEYWORDS if kwargs.get(k) is not None and k not in mech.accepts]
    if refused:
        model_type = getattr(getattr(module, "config", None), "model_type", None)
        why = "".join(f" {k!r}: {mech.refuses[k]}." for k in refused if k in mech.refuses)
        raise UnsupportedModelError(
            f"mechanism {mech.name!r} does not implement the attention argument(s) {', '.join(map(repr, refused))} "
            f"that {type(module).__name__} (model_type {model_type!r}) passes; ignoring them would silently change "
            f"the model.{why} Use Transformers' own attention for this model, or a mechanism that implements them "
            f"(register_mechanism(..., accepts={tuple(refused)!r}))."
        )


def _with_mask_argument(mechanism: str, backend: str, fn: Callable[..., str | None]) -> SupportsFn:
    """``fn`` as a ``(query, mask, ctx)`` predicate; one of the older form ``(query, ctx)`` is wrapped."""
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    except (TypeError, ValueError):  # a builtin without a signature: take it as the current form
        return fn
    if any(p.kind == p.VAR_POSITIONAL for p in inspect.signature(fn).parameters.values()) or len(params) == 3:
        return fn
    if len(params) == 2:
        return lambda query, mask, ctx: fn(query, ctx)
    raise OptionError(f"register_mechanism({mechanism!r}): fast_supports[{backend!r}] must take (query, mask, ctx) and "
                      f"return a reason (str) or None; {getattr(fn, '__name__', fn)!r} takes {len(params)} arguments.")


def _option_sets(mechanism: str, what: str, sets: Any) -> tuple[dict[str, Any], ...]:
    if sets is None:
        return ({},)
    if isinstance(sets, dict):
        sets = (sets,)
    if not isinstance(sets, (tuple, list)) or not sets or not all(isinstance(o, dict) for o in sets):
        raise OptionError(f"register_mechanism({mechanism!r}, {what}=...) takes a tuple of option dicts such as "
                          f"({{'bias': -1.0}},); got {sets!r}.")
    return tuple(dict(o) for o in sets)


def _paper(mechanism: str, paper: Any) -> tuple[str, str] | None:
    if paper is None:
        return None
    if not (isinstance(paper, tuple) and len(paper) == 2 and all(isinstance(x, str) and x for x in paper)):
        raise OptionError(f"register_mechanism({mechanism!r}, paper=...) takes (arXiv id, citation) such as "
                          f"('2410.18613', 'Saratchandran et al., ...'); got {paper!r}.")
    return paper


def _empty_options(name: str) -> type[MechanismOptions]:
    return dataclasses.make_dataclass(f"{name.title()}Options", [], bases=(MechanismOptions,))


def get_mechanism(name: str) -> Mechanism:
    """The registered mechanism called ``name`` (its persisted name is accepted too)."""
    if isinstance(name, str) and name.endswith(PERSIST_SUFFIX):
        name = name[: -len(PERSIST_SUFFIX)]
    if isinstance(name, str) and is_transformers_attention(name):
        raise UnknownMechanismError(
            f"{name!r} is Transformers' own attention, not an hf_attnswap mechanism. To go back to it, use "
            f"hf_attnswap.unswap(model, {name!r}) (or load with attn_implementation={name!r}). hf_attnswap's "
            f"mechanisms: {', '.join(sorted(_REGISTRY))}."
        )
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownMechanismError(
            f"unknown attention mechanism {name!r}.{hint} Available: {', '.join(sorted(_REGISTRY))}. "
            "Register your own with @hf_attnswap.register_mechanism."
        )
    return _REGISTRY[name]


def is_transformers_attention(name: str) -> bool:
    """Whether ``name`` is one of Transformers' own attention implementations (``eager``, ``sdpa``, ``flash_attention_2``
    ...), as opposed to an hf_attnswap mechanism."""
    if is_mechanism(name):
        return False
    return is_transformers_attention_name(name)


def is_mechanism(name: Any) -> bool:
    """Whether ``name`` (short or persisted) is a registered hf_attnswap mechanism."""
    if not isinstance(name, str):
        return False
    return name.removesuffix(PERSIST_SUFFIX) in _REGISTRY


def is_mechanism_parameter(name: str) -> bool:
    """Whether the parameter called ``name`` (as in ``model.named_parameters()``) was added by a mechanism
    (daGPAM's λ and ``W⁻``), also under PEFT's wrappers. Recipes give these their own learning rate."""
    return f".{PARAMS_ATTR}." in f".{name}"


def parameter_overhead(model: nn.Module) -> dict[str, Any]:
    """Parameters hf_attnswap added to ``model``: ``{"added", "base", "total", "percent"}`` (percent of base)."""
    added = sum(p.numel() for name, p in model.named_parameters() if is_mechanism_parameter(name))
    total = sum(p.numel() for p in model.parameters())
    base = total - added
    return {"added": added, "base": base, "total": total, "percent": 100.0 * added / max(base, 1)}


def list_mechanisms() -> dict[str, dict[str, Any]]:
    """Every registered mechanism: ``{name: {"description", "options": {field: default}, "adds_parameters", "backends",
    "paper"}}`` (``paper``: the arXiv id, or None).

    ``backends``: the values its ``backend`` option takes (``"auto"`` where it has that option, ``"reference"``,
    then its fast paths).
    """
    return {
        name: {"description": m.description, "options": m.options.defaults(), "adds_parameters": m.make_params is not None,
               "backends": list(m.backends), "paper": m.paper[0] if m.paper else None}
        for name, m in sorted(_REGISTRY.items())
    }


def parse_options(mechanism: str | Mechanism, options: dict[str, Any] | MechanismOptions | None) -> MechanismOptions:
    """Validate ``options`` for ``mechanism`` and return its options dataclass (defaults filled in).

    An unknown key is rejected; if it belongs to another mechanism the message says which.
    """
    mech = mechanism if isinstance(mechanism, Mechanism) else get_mechanism(mechanism)
    if isinstance(options, mech.options):
        return options
    if isinstance(options, MechanismOptions):
        raise OptionError(f"{type(options).__name__} are options for {options.mechanism!r}, not for {mech.name!r}.")
    if isinstance(options, str):
        pairs = [p.partition("=") for p in options.replace(",", ":").split(":") if p.strip()]
        example = "{" + ", ".join(f"{k.strip()!r}: {v.strip() or '...'}" for k, _, v in pairs) + "}" if pairs else "{...}"
        raise OptionError(f"attnswap options must be a dict, got the string {options!r}: pass attnswap={example}. "
                          f"(The 'name:key=value' string form is for --attn on the command line.)")
    if options is not None and not isinstance(options, dict):
        raise OptionError(f"attnswap options must be a dict such as {{'lambda_init': 0.1}}, got {type(options).__name__}.")
    options = dict(options or {})
    given = options.pop("mechanism", mech.name)
    if given != mech.name:
        raise OptionError(f"attnswap options say mechanism {given!r}, but the attention implementation is {mech.name!r}.")
    allowed = mech.options.field_names()
    for key in options:
        if not isinstance(key, str):
            raise OptionError(f"option names are strings; got {key!r} in the options of {mech.name!r}.")
        if key not in allowed:
            owners = [n for n, m in _REGISTRY.items() if key in m.options.field_names()]
            where = f" It is an option of {', '.join(map(repr, owners))}." if owners else ""
            raise OptionError(
                f"unknown option {key!r} for mechanism {mech.name!r}.{where} "
                f"Options of {mech.name!r}: {', '.join(allowed) or '(none)'}."
            )
    try:
        return mech.options(**options)
    except TypeError as err:  # a user dataclass without defaults, say
        raise OptionError(f"bad options for mechanism {mech.name!r}: {err}") from None


def exercised_options(mechanism: str | Mechanism, backend: str | None = None) -> list[MechanismOptions]:
    """The mechanism's ``exercise`` option sets (registration metadata) as options, with ``backend`` set if given:
    those the backend takes (a degree-2-only form takes only the degree-2 sets). The tests and benchmarks run these."""
    mech = mechanism if isinstance(mechanism, Mechanism) else get_mechanism(mechanism)
    found = []
    for opts in mech.exercise:
        try:
            found.append(parse_options(mech, {**opts, "backend": backend} if backend is not None else opts))
        except OptionError:
            continue
    return found


def options_to_config(opts: MechanismOptions) -> dict[str, Any]:
    """What is stored in ``config.attnswap``: ``{"mechanism": name, **every option}``."""
    return {"mechanism": opts.mechanism, **opts.to_dict()}


def module_options(module: nn.Module, mech: Mechanism) -> MechanismOptions:
    """The options an attention module runs with: set by swapping, else from ``module.config.attnswap``."""
    opts = getattr(module, OPTIONS_ATTR, None)
    if isinstance(opts, mech.options):
        return opts
    stored = getattr(getattr(module, "config", None), "attnswap", None)
    if isinstance(stored, dict) and stored.get("mechanism") == mech.name:
        opts = parse_options(mech, stored)
    elif mech.make_params is None:
        opts = mech.options()
    else:
        opts = None
    if opts is None or (mech.make_params is not None and not isinstance(getattr(module, PARAMS_ATTR, None), nn.Module)):
        raise NotSwappedError(
            f"{type(module).__name__} runs attention {mech.name!r}, which needs its own parameters, but this layer has "
            f"none. Swap with hf_attnswap.swap(model, {mech.name!r}, ...) (or load with "
            f"attn_implementation={mech.name!r}) instead of model.set_attn_implementation()."
        )
    object.__setattr__(module, OPTIONS_ATTR, opts)
    return opts


def _attention_interface(
    mech: Mechanism,
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The function Transformers calls, with ``AttentionInterface``'s signature.

    query: (B, H, Q, d); key, value: (B, H_kv, K, d); attention_mask: (B|1, 1, Q, K) bool or additive float,
    or None. Returns ``(output (B, Q, H, d), weights (B, H, Q, K) or None)``.
    """
    opts = module_options(module, mech)
    check_keywords(mech, module, kwargs)
    batch, heads, q_len, head_dim = query.shape
    k_len = key.shape[-2]
    n_rep = heads // key.shape[1]
    ctx = AttentionContext(
        scaling=head_dim**-0.5 if scaling is None else scaling,
        dropout=dropout if module.training else 0.0,
        options=opts,
        params=getattr(module, PARAMS_ATTR, None) if mech.make_params is not None else None,
        rope=getattr(module, ROPE_ATTR, None),
        module=module,
        extra=kwargs,
        state=cache_state(key),
    )
    need_weights = bool(kwargs.get("output_attentions")) or attention_weights_requested()
    if ctx.state is not None:  # only this call's keys: the earlier ones are in the state, and the mask covers all
        k_len = attention_mask.shape[-1] if attention_mask is not None else ctx.state.get_seq_length() + k_len
    dense = None if attention_mask is None else visible_mask(attention_mask, batch, q_len, k_len, query.device)
    amask = AttentionMask(dense, q_len, k_len, mask_causal_offset(attention_mask))
    if ctx.state is not None:
        backend = state_backend(mech, opts, query, amask, ctx, need_weights)
    else:
        backend = select_backend(mech, opts, query, amask, ctx, need_weights)
    if backend == "reference":
        mask = dense if dense is not None else visible_mask(None, batch, q_len, k_len, query.device)
        out, weights = mech.forward(query, repeat_kv(key, n_rep), repeat_kv(value, n_rep), mask, ctx)
    else:
        out, weights = mech.fast[backend](query, key, value, amask, ctx), None
    return out.transpose(1, 2).contiguous(), weights


_FORCED_BACKEND: contextvars.ContextVar[str | None] = contextvars.ContextVar("hf_attnswap_backend", default=None)


@contextlib.contextmanager
def use_backend(backend: str) -> Iterator[None]:
    """Force a backend (e.g. ``"reference"`` for diagnostics that read weights) inside a ``with`` block."""
    token = _FORCED_BACKEND.set(backend)
    try:
        yield
    finally:
        _FORCED_BACKEND.reset(token)


def select_backend(mech: Mechanism, opts: MechanismOptions, query: torch.Tensor, mask: AttentionMask,
                   ctx: AttentionContext, need_weights: bool) -> str:
    """The path to run: ``"reference"`` when weights are needed, else the options' (or forced) backend.

    query: (B, H, Q, d); ``mask``: the call's mask, which the fast paths' predicates see.

    ``"auto"`` takes the first fast path of ``mech.auto`` whose predicate accepts the call, else the reference
    (``triton`` on CPU only when requested by name). An explicitly requested fast path that cannot run raises,
    naming why.
    """
    forced = None if torch.compiler.is_compiling() else _FORCED_BACKEND.get()  # dynamo cannot trace ContextVar.get
    requested = forced or getattr(opts, "backend", "reference")
    if need_weights or requested == "reference":
        return "reference"
    if requested == "auto":
        for name in mech.auto:
            if name == "triton" and not query.is_cuda:
                continue  # on CPU Triton only runs interpreted (TRITON_INTERPRET=1): a test path, never the fastest
            if name in mech.auto_when and mech.auto_when[name](query, mask, ctx) is not None:
                continue  # it could run, but another path is faster here
            if name in mech.fast and (name not in mech.fast_supports or mech.fast_supports[name](query, mask, ctx) is None):
                return name
        return "reference"
    if requested not in mech.fast:
        raise OptionError(f"mechanism {mech.name!r} has no {requested!r} backend; available: reference, {', '.join(mech.fast)}.")
    reason = mech.fast_supports[requested](query, mask, ctx) if requested in mech.fast_supports else None
    if reason is not None:
        raise OptionError(f"{mech.name}: backend={requested!r} cannot run this call: {reason}. Use backend='auto'.")
    return requested


def state_backend(mech: Mechanism, opts: MechanismOptions, query: torch.Tensor, mask: AttentionMask,
                  ctx: AttentionContext, need_weights: bool) -> str:
    """The backend for a call whose keys come from a fixed-size state cache (``ctx.state``): the mechanism's
    ``state_backend`` when the options ask for it or for ``"auto"`` and it can take the call; anything else raises an
    :class:`OptionError` (every other path needs the keys the state does not keep). query: (B, H, Q, d)."""
    cache = type(ctx.state).__name__
    if mech.state_backend is None:
        raise OptionError(f"mechanism {mech.name!r} got its keys from a {cache}, a fixed-size state that keeps no keys, "
                          f"and it has no backend that reads such a state. Generate with Transformers' own cache "
                          f"(DynamicCache, the default) instead.")
    forced = None if torch.compiler.is_compiling() else _FORCED_BACKEND.get()
    requested = forced or getattr(opts, "backend", "reference")
    if need_weights:
        raise OptionError(f"{mech.name}: attention weights (output_attentions) need every key, and a {cache} keeps none "
                          f"(only a fixed-size state). Pass a DynamicCache (or use_cache=False) to read the weights.")
    if requested not in ("auto", mech.state_backend):
        raise OptionError(f"{mech.name}: backend={requested!r} needs every key, and a {cache} keeps none (only a "
                          f"fixed-size state): use backend={mech.state_backend!r} (or 'auto') with this cache, or pass "
                          f"a DynamicCache.")
    supports = mech.fast_supports.get(mech.state_backend)
    reason = supports(query, mask, ctx) if supports is not None else None
    if reason is not None:
        raise OptionError(f"{mech.name}: a {cache} needs backend={mech.state_backend!r}, which cannot run this call: "
                          f"{reason}.")
    return mech.state_backend


def layer_options(model: nn.Module) -> tuple[Mechanism, list[MechanismOptions]] | None:
    """``(mechanism, options of each attention layer)`` of a model whose attention is an hf_attnswap mechanism (in
    the order of ``model.modules()``), or None (Transformers' own attention, or attention layers it does not declare)."""
    name = attn_implementation_of(getattr(model, "config", None))
    target = attention_class(model)
    if not is_mechanism(name) or target is None:
        return None
    mech = get_mechanism(name)
    return mech, [module_options(m, mech) for m in model.modules() if isinstance(m, target)]


def generation_cache(model: nn.Module) -> Any:
    """The cache ``generate()`` should use for ``model`` when the user passes none: the mechanism's
    ``generation_cache``, or None (Transformers prepares its own KV cache; when the mechanism says why, it is logged)."""
    found = layer_options(model)
    if found is None or found[0].generation_cache is None:
        return None
    mech, opts = found
    made = mech.generation_cache(model, opts)
    if isinstance(made, str):
        logger.warning("hf_attnswap: generate() keeps Transformers' KV cache for this %s model: %s.", mech.name, made)
        return None
    return made


register_callbacks(get_mechanism=get_mechanism, is_mechanism=is_mechanism, is_transformers_attention=is_transformers_attention,
                   is_mechanism_parameter=is_mechanism_parameter, generation_cache=generation_cache)
