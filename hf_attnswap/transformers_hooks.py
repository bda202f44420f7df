"""The one place where hf_attnswap touches private internals of Transformers, PyTorch and Accelerate.

Every other module reaches them through a named function here, whose docstring says which internal it relies on
and why; ``tests/test_registry_and_hooks.py`` (``test_internal_*``, ``test_transformers_internals_hf_attnswap_relies_on``)
names each one and fails loudly if an upgrade removes it or changes the behaviour relied on, and
``test_private_names_appear_only_in_the_compatibility_module`` fails if one is touched anywhere else.

Hooks. Transformers has no public hook for "a model was just built" nor for extra keyword arguments of
``from_pretrained``/``from_config``. So, once, at import, this module wraps five methods of ``PreTrainedModel``:

- ``from_pretrained`` and ``_from_config`` (what ``AutoModel*.from_config`` calls) accept
  ``attnswap={...}`` and hand it to the model being built, through a context variable. ``AutoModel*.from_pretrained``
  hands it on inside the config instead, over the saved options; :func:`_take_auto_class_options` takes it back
  out (reading the saved ones again with ``get_config_dict``), so that it is merged, not substituted;
- ``post_init`` (run at the end of every model's ``__init__``, before weights are loaded) installs the
  mechanism named by ``config._attn_implementation``, so its parameters exist when the checkpoint is read.

``GenerationMixin._prepare_cache_for_generation`` (private; ``generate()`` builds its cache there) is wrapped so
that a model whose mechanism runs from a fixed-size state generates with that state's cache instead of a KV cache
(:func:`_wrap_prepare_cache`), and so that a cache the user passes is checked against the model first.

``load_adapter`` (Transformers' PEFT integration) is wrapped to refuse an adapter whose mechanism parameters the
model cannot take, and ``set_attn_implementation`` to keep the saved record true to what the model computes.
``_check_and_adjust_attn_implementation`` (private; ``PreTrainedModel.__init__`` and ``set_attn_implementation`` check
the requested attention with it) is wrapped to refuse a mechanism for a model whose attention does not go through
``AttentionInterface``: Falcon picks its attention class from its own table in ``__init__`` and would fail there with
``KeyError: 'softmax'``.

Other internals, one function each:

- Transformers: :func:`attn_implementation_of`/:func:`set_attn_implementation_name` (``config._attn_implementation``),
  :func:`supports_attention_interface` (``_supports_attention_backend``), :func:`attention_class`
  (``_can_record_outputs``), :func:`override_init_weights`/:func:`class_init_weights`/
  :func:`remove_init_weights_override` (the instance ``_init_weights``), :func:`drop_config_attribute`
  (``config.__dict__``), :func:`boolean_mask`/:func:`mask_causal_offset` (``masking_utils.sdpa_mask``'s keywords,
  ``causal_mask_function``, a Python attribute on the mask tensor), :func:`attention_weights_requested`
  (``output_capturing._active_collector``), :data:`TRANSFORMERS_ATTENTIONS`/:func:`is_transformers_attention_name`
  (the names of Transformers' own attention implementations);
- PyTorch: :func:`child_module`/:func:`remove_child_module` (``nn.Module._modules``), :func:`has_forward_hooks`
  (``_forward_hooks``, ``_forward_pre_hooks``, ``torch.nn.modules.module._global_forward_(pre_)hooks``),
  :func:`cpu_flash_attention` (``torch.ops.aten._scaled_dot_product_flash_attention_for_cpu`` and its backward,
  which the mechanism layer hands to ``kernels/dagpam_cpu.py``: kernels import nothing of the package),
  :func:`set_last_lr` (``LRScheduler._last_lr``), :func:`cpu_has_native_bf16` (``torch.ops.mkldnn._is_mkldnn_bf16_supported``);
- Accelerate: :func:`full_precision` (``prepare``'s ``_original_forward``), :func:`forget_prepared`
  (``Accelerator._custom_objects``).

This module sits below :mod:`hf_attnswap.registry` and :mod:`hf_attnswap.patching` and imports neither: what the
hooks need from them (looking up a mechanism, installing one, ...) those modules hand over at their import, with
:func:`register_callbacks`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import causal_mask_function, sdpa_mask

from .errors import UnknownMechanismError

_PENDING: contextvars.ContextVar[Any] = contextvars.ContextVar("hf_attnswap_pending_options", default=None)
_MARK = "__hf_attnswap_wrapped__"

# What the hooks call in the modules above this one, by name -> the module that registers it at its import.
_CALLBACK_OWNERS = {
    "get_mechanism": "registry",
    "is_mechanism": "registry",
    "is_transformers_attention": "registry",
    "is_mechanism_parameter": "registry",
    "apply_from_config": "patching",
    "orphan_mechanism_error": "patching",
    "unsupported_model_error": "patching",
    "sync_record": "patching",
    "generation_cache": "registry",
}
_CALLBACKS: dict[str, Callable[..., Any]] = {}


def register_callbacks(**callbacks: Callable[..., Any]) -> None:
    """Hand the hooks the functions they call (``name=function``; the names are those of ``_CALLBACK_OWNERS``).
    :mod:`hf_attnswap.registry` and :mod:`hf_attnswap.patching` call this at their import."""
    unknown = sorted(set(callbacks) - set(_CALLBACK_OWNERS))
    if unknown:
        raise TypeError(f"register_callbacks: unknown callback(s) {', '.join(unknown)}; "
                        f"known: {', '.join(sorted(_CALLBACK_OWNERS))}")
    _CALLBACKS.update(callbacks)


def _callback(name: str) -> Callable[..., Any]:
    try:
        return _CALLBACKS[name]
    except KeyError:
        raise RuntimeError(
            f"hf_attnswap's Transformers hooks need {name}, which hf_attnswap.{_CALLBACK_OWNERS[name]} registers when "
            "it is imported, and it has not been: import hf_attnswap (the package) before building models."
        ) from None


def _wrap_classmethod(name: str) -> None:
    original = PreTrainedModel.__dict__[name].__func__

    @functools.wraps(original)
    def wrapper(cls: type, *args: Any, attnswap: Any = None, **kwargs: Any) -> Any:
        check_attn_name(kwargs.get("attn_implementation"))
        check_attn_name(getattr(kwargs.get("config"), "_attn_implementation", None))  # the Auto classes put it there
        if attnswap is None and name == "from_pretrained" and args:
            attnswap = _take_auto_class_options(args[0], kwargs)
        if attnswap is None:
            return original(cls, *args, **kwargs)
        token = _PENDING.set((attnswap, name == "from_pretrained"))  # (options, loading a checkpoint?)
        try:
            return original(cls, *args, **kwargs)
        finally:
            _PENDING.reset(token)

    setattr(wrapper, _MARK, original)
    setattr(PreTrainedModel, name, classmethod(wrapper))


_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")


def _take_auto_class_options(path: Any, kwargs: dict[str, Any]) -> Any:
    """The ``attnswap={...}`` keyword of an ``AutoModel*.from_pretrained`` call, or None.

    The Auto classes load the config first, with every keyword: since a swapped checkpoint's config has an
    ``attnswap`` attribute, Transformers *sets* it to the keyword's value, and the saved options are gone before
    the model class is called. So when the config we are handed says other options than the checkpoint's
    ``config.json``, those are the keyword: put the saved ones back and return the keyword's, to be merged."""
    config = kwargs.get("config")
    given = getattr(config, "attnswap", None) if config is not None and not isinstance(config, (str, bytes)) else None
    if given is None or not isinstance(path, (str, bytes)) and not hasattr(path, "__fspath__"):
        return None
    try:
        saved = type(config).get_config_dict(path, **{k: kwargs[k] for k in _HUB_KWARGS if k in kwargs})[0].get("attnswap")
    except (OSError, ValueError):
        return None  # the model class's own loading reports an unreadable checkpoint
    if saved == given:
        return None
    if saved is None:
        drop_config_attribute(config, "attnswap")
    else:
        config.attnswap = saved
    return given


def check_attn_name(name: Any) -> None:
    """Raise :class:`UnknownMechanismError` listing every available name if ``name`` is known neither to
    hf_attnswap nor to Transformers (whose own error would not list the hf_attnswap mechanisms)."""
    if not isinstance(name, str) or "|" in name or "/" in name:  # None, per-submodel dicts, paged|..., hub kernels
        return
    if _callback("is_mechanism")(name) or _callback("is_transformers_attention")(name):
        return
    try:
        _callback("get_mechanism")(name)
    except UnknownMechanismError as err:
        raise UnknownMechanismError(f"{err} Transformers' own: {', '.join(TRANSFORMERS_ATTENTIONS)}.") from None


def _wrap_post_init() -> None:
    original = PreTrainedModel.post_init

    @functools.wraps(original)
    def post_init(self: PreTrainedModel) -> None:
        original(self)
        apply_from_config = _callback("apply_from_config")
        pending = _PENDING.get()
        if pending is None:
            apply_from_config(self, None)
        else:
            apply_from_config(self, pending[0], from_checkpoint=pending[1])

    setattr(post_init, _MARK, original)
    PreTrainedModel.post_init = post_init


def _wrap_load_adapter() -> None:
    """Transformers' own ``model.load_adapter(path)`` drops an adapter's mechanism parameters (trained with
    ``modules_to_save=["attnswap"]``) on a model without the mechanism, with only a load report (which the CLI turns
    off). It returns the unexpected keys: if any belongs to a mechanism, remove the adapter again and raise."""
    original = PreTrainedModel.load_adapter

    @functools.wraps(original)
    def load_adapter(self: PreTrainedModel, *args: Any, **kwargs: Any) -> Any:
        is_mechanism_parameter = _callback("is_mechanism_parameter")
        orphan_mechanism_error = _callback("orphan_mechanism_error")
        info = original(self, *args, **kwargs)
        orphans = [k for k in getattr(info, "unexpected_keys", ()) or () if is_mechanism_parameter(k)]
        if orphans:
            name = kwargs.get("adapter_name") or (args[1] if len(args) > 1 else None) or "default"
            try:
                self.delete_adapter(name)
            except Exception:  # noqa: BLE001 - the error below is what matters
                pass
            raise orphan_mechanism_error(self, orphans)
        return info

    setattr(load_adapter, _MARK, original)
    PreTrainedModel.load_adapter = load_adapter


def _wrap_set_attn_implementation() -> None:
    """``model.set_attn_implementation("sdpa")`` on a swapped model must not leave ``config.json`` saying daGPAM; a
    mechanism on a model outside ``AttentionInterface`` is refused (Transformers only warns and changes nothing)."""
    original = PreTrainedModel.set_attn_implementation

    @functools.wraps(original)
    def set_attn_implementation(self: PreTrainedModel, *args: Any, **kwargs: Any) -> Any:
        sync_record = _callback("sync_record")
        name = args[0] if args else kwargs.get("attn_implementation")
        if not supports_attention_interface(self) and isinstance(name, str) and _callback("is_mechanism")(name):
            raise _callback("unsupported_model_error")(self)  # Transformers would only warn, and keep its attention
        result = original(self, *args, **kwargs)
        sync_record(self)
        return result

    setattr(set_attn_implementation, _MARK, original)
    PreTrainedModel.set_attn_implementation = set_attn_implementation


def _wrap_check_attn_implementation() -> None:
    """Refuse a mechanism name, with hf_attnswap's error, on a model that cannot run it, before the model builds its
    attention layers: ``PreTrainedModel.__init__`` checks ``config._attn_implementation`` with the private
    ``_check_and_adjust_attn_implementation`` (as does ``set_attn_implementation``), before a model such as Falcon looks
    the name up in its own table of attention classes (``KeyError: 'softmax'``)."""
    original = PreTrainedModel._check_and_adjust_attn_implementation

    @functools.wraps(original)
    def check(self: PreTrainedModel, attn_implementation: Any, *args: Any, **kwargs: Any) -> Any:
        if not supports_attention_interface(self) and isinstance(attn_implementation, str) \
                and _callback("is_mechanism")(attn_implementation):
            raise _callback("unsupported_model_error")(self)
        return original(self, attn_implementation, *args, **kwargs)

    setattr(check, _MARK, original)
    PreTrainedModel._check_and_adjust_attn_implementation = check


#: The method of a cache object that says whether it can serve a model (raising if not); hf_attnswap's state caches
#: define it, and :func:`_wrap_prepare_cache` calls it on a cache the user hands to ``generate()``.
CHECK_MODEL = "check_model"


def _wrap_prepare_cache() -> None:
    """``generate()`` prepares its cache in the private ``GenerationMixin._prepare_cache_for_generation(generation_config,
    model_kwargs, generation_mode, batch_size, max_cache_length)``, which writes it to ``model_kwargs["cache"]`` (or
    keeps the user's cache there, and then only marks it). Transformers has no public hook for the default cache of
    a model (``cache_implementation`` takes only its own names). When the user passes no cache, uses the cache and
    asks for no particular one (``cache_implementation`` None, not an assistant model of assisted decoding, whose
    cache must be croppable), the registry's ``generation_cache`` callback may supply one; a user's cache with a
    ``check_model`` method is checked against the model first."""
    from transformers.generation.utils import GenerationMixin

    original = GenerationMixin._prepare_cache_for_generation

    @functools.wraps(original)
    def prepare(self: Any, generation_config: Any, model_kwargs: dict, *args: Any, **kwargs: Any) -> Any:
        given = model_kwargs.get("cache")
        if given is not None:
            check = getattr(given, CHECK_MODEL, None)
            if callable(check):
                check(self)
        elif (generation_config.use_cache is not False and generation_config.cache_implementation is None
              and not generation_config.is_assistant):
            cache = _callback("generation_cache")(self)
            if cache is not None:
                model_kwargs["cache"] = cache
                return None
        return original(self, generation_config, model_kwargs, *args, **kwargs)

    setattr(prepare, _MARK, original)
    GenerationMixin._prepare_cache_for_generation = prepare


def _generation_mixin() -> type:
    from transformers.generation.utils import GenerationMixin

    return GenerationMixin


def install_hooks() -> None:
    """Wrap ``from_pretrained``, ``_from_config``, ``post_init``, ``load_adapter``, ``set_attn_implementation``,
    ``_check_and_adjust_attn_implementation`` and ``_prepare_cache_for_generation`` once (idempotent)."""
    for name in ("from_pretrained", "_from_config"):
        if not hasattr(PreTrainedModel.__dict__[name].__func__, _MARK):
            _wrap_classmethod(name)
    if not hasattr(PreTrainedModel.post_init, _MARK):
        _wrap_post_init()
    if not hasattr(PreTrainedModel.load_adapter, _MARK):
        _wrap_load_adapter()
    if not hasattr(PreTrainedModel.set_attn_implementation, _MARK):
        _wrap_set_attn_implementation()
    if not hasattr(PreTrainedModel._check_and_adjust_attn_implementation, _MARK):
        _wrap_check_attn_implementation()
    if not hasattr(_generation_mixin()._prepare_cache_for_generation, _MARK):
        _wrap_prepare_cache()


def hooks_installed() -> bool:
    return all(
        hasattr(f, _MARK)
        for f in (
            PreTrainedModel.__dict__["from_pretrained"].__func__,
            PreTrainedModel.__dict__["_from_config"].__func__,
            PreTrainedModel.post_init,
            PreTrainedModel.load_adapter,
            PreTrainedModel.set_attn_implementation,
            PreTrainedModel._check_and_adjust_attn_implementation,
            _generation_mixin()._prepare_cache_for_generation,
        )
    )


# ------------------------------------------------------------------------------------------------ Transformers


#: Transformers' own attention implementations, as its error messages list them. An hf_attnswap mechanism may not
#: take one of these names (nor one that starts with ``flash_attention`` or contains ``sdpa``/``flash``).
TRANSFORMERS_ATTENTIONS = ("eager", "sdpa", "flex_attention", "flash_attention_2")


def is_transformers_attention_name(name: str) -> bool:
    """Whether Transformers itself runs attention ``name``: ``eager``, a key of ``AttentionInterface`` (``sdpa``,
    ``flex_attention``, ``flash_attention_2``, ... and whatever is registered there: the caller rules out
    hf_attnswap's own registrations), a ``flash_attention*`` name (the flash kernels register lazily) or a ``paged|``
    one (continuous batching's paged attention)."""
    return name == "eager" or name in AttentionInterface().valid_keys() or name.startswith(("flash_attention", "paged|"))


def attn_implementation_of(config: Any, default: Any = None) -> Any:
    """``config._attn_implementation``: the attention a model runs (a short name, a persisted hf_attnswap name, a
    per-submodel dict, or None), ``default`` if ``config`` has none (None, or not a config).

    Underscored, but the attribute Transformers' models read to pick the attention function; ``config.json``'s
    ``attn_implementation`` is read back into it."""
    return getattr(config, "_attn_implementation", default)


def set_attn_implementation_name(config: Any, name: str) -> None:
    """Set ``config._attn_implementation`` to ``name``, with no check (its setter, a property of
    ``PretrainedConfig``, sets the sub-configs too). For a model being built or swapped, whose attention modules are
    already set up; ``model.set_attn_implementation`` is the public, checked way on a built model."""
    config._attn_implementation = name


def supports_attention_interface(model: Any) -> bool:
    """Whether ``model`` computes attention through ``AttentionInterface``, i.e. its class sets
    ``_supports_attention_backend = True`` (a private class attribute; ``is_backend_compatible()`` reads it too)."""
    return bool(getattr(model, "_supports_attention_backend", False))


def attention_class(model: Any) -> type | None:
    """The class of ``model``'s attention layers, as ``model._can_record_outputs["attentions"]`` declares it for
    ``output_attentions`` (a class or an ``OutputRecorder`` with ``target_class``), or None if it declares none.

    Private: Transformers' output-recording table, the only place where a model names its attention class."""
    recorder = (getattr(model, "_can_record_outputs", None) or {}).get("attentions")
    target = getattr(recorder, "target_class", recorder)
    return target if isinstance(target, type) else None


def override_init_weights(model: PreTrainedModel, init: Callable[[PreTrainedModel, nn.Module], None]) -> None:
    """Make ``model._init_weights(module)`` call ``init(model, module)``, on this instance only.

    Transformers' ``_initialize_weights`` calls ``self._init_weights(module)`` for every module a checkpoint did not
    fully provide (and at ``post_init``); an instance attribute shadows the class's method. ``init`` must be a
    module-level function (the model stays picklable) and may hand other modules to :func:`class_init_weights`."""
    object.__setattr__(model, "_init_weights", types.MethodType(init, model))


def class_init_weights(model: PreTrainedModel, module: nn.Module) -> None:
    """The model class's own ``_init_weights(module)``, past an instance override."""
    type(model)._init_weights(model, module)


def remove_init_weights_override(model: PreTrainedModel) -> None:
    """Undo :func:`override_init_weights` (nothing if there is none)."""
    model.__dict__.pop("_init_weights", None)


def drop_config_attribute(config: Any, name: str) -> None:
    """Remove the attribute ``name`` from a ``PretrainedConfig`` (nothing if it has none), so that
    ``save_pretrained``/``to_dict`` no longer write it: extra attributes (``attnswap``, the public
    ``attn_implementation``) live in the instance ``__dict__``, which ``to_dict`` copies."""
    config.__dict__.pop(name, None)


_CAUSAL_TAG = "_attnswap_causal_offset"


def boolean_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """Transformers' ``sdpa_mask`` with the causal skip forced off: always a boolean (B, 1, Q, K) mask with causal,
    padding and KV-cache offset. (Only a bidirectional mask without padding may still come back as ``None``.)
    ``create_causal_mask`` passes ``allow_is_causal_skip=True`` explicitly, so a ``partial`` would not do.

    When the mask is plain causal (no padding, no window), it is tagged with its offset (read back by
    :func:`mask_causal_offset`) so that fast paths can skip masked blocks or use ``is_causal`` instead of reading it.

    Relies on: ``sdpa_mask``'s keywords (``allow_is_causal_skip``; ``q_length``, ``kv_length``, ``q_offset``,
    ``kv_offset``, ``mask_function``, ``attention_mask``, ``local_size``, as ``create_causal_mask`` passes them),
    ``mask_function is causal_mask_function`` for a plain causal mask, and the mask tensor reaching the attention
    function as the same Python object (a tensor takes Python attributes)."""
    kwargs["allow_is_causal_skip"] = False
    mask = sdpa_mask(*args, **kwargs)
    if mask is not None and not args:
        offset = _plain_causal_offset(**kwargs)
        if offset is not None:
            setattr(mask, _CAUSAL_TAG, offset)
    return mask


def mask_causal_offset(attention_mask: Any) -> int | None:
    """The causal offset :func:`boolean_mask` tagged ``attention_mask`` with (``K - Q``), or None (not plain causal,
    or a mask built elsewhere)."""
    return getattr(attention_mask, _CAUSAL_TAG, None)


def _plain_causal_offset(
    q_length: int, kv_length: int, q_offset: Any = 0, kv_offset: int = 0, mask_function: Any = None,
    attention_mask: torch.Tensor | None = None, local_size: int | None = None, **_: Any,
) -> int | None:
    """``K - Q`` if the mask ``sdpa_mask`` was asked for is bottom-right-aligned causal with nothing else, else None."""
    if mask_function is not causal_mask_function or local_size is not None or kv_offset != 0:
        return None
    if attention_mask is not None and not bool(attention_mask.all()):
        return None
    q_offset = int(q_offset)
    return q_offset if q_offset + q_length == kv_length else None


def attention_weights_requested() -> bool:
    """Whether the forward in progress collects attention weights (``output_attentions=True``), which GPT-2 does not
    pass down to the attention function: reads Transformers' private ``output_capturing._active_collector``."""
    from transformers.utils.output_capturing import _active_collector

    try:
        collected = _active_collector.get()
    except LookupError:
        return False
    return bool(collected) and any("attentions" in key for key in collected)


# ----------------------------------------------------------------------------------------------------- PyTorch


def child_module(module: nn.Module, name: str) -> Any:
    """The submodule registered on ``module`` under ``name`` (``module._modules[name]``), or None. Unlike
    ``getattr``, never finds a plain attribute, and never goes through a wrapper's ``__getattr__`` forwarding."""
    return module._modules.get(name)


def remove_child_module(module: nn.Module, name: str) -> None:
    """Unregister the submodule ``name`` of ``module`` (nothing if there is none)."""
    module._modules.pop(name, None)


def has_forward_hooks(module: nn.Module) -> bool:
    """Whether calling ``module`` runs any forward hook or pre-hook: its own (``module._forward_hooks``,
    ``module._forward_pre_hooks``, which hold every ``register_forward_(pre_)hook``, ``with_kwargs`` ones too) or a
    global one (``torch.nn.modules.module._global_forward_hooks``/``_global_forward_pre_hooks``, filled by
    ``register_module_forward_(pre_)hook``). daGPAM's CPU kernel bypasses its parameter module's ``forward``, so it
    steps aside when anything would observe that call."""
    from torch.nn.modules import module as torch_module

    return bool(module._forward_hooks or module._forward_pre_hooks or torch_module._global_forward_hooks
                or torch_module._global_forward_pre_hooks)


@functools.cache
def cpu_flash_attention() -> tuple[Any, Any]:
    """``(forward, backward)``: PyTorch's CPU flash-attention kernels, the private ATen ops
    ``torch.ops.aten._scaled_dot_product_flash_attention_for_cpu`` and ``..._for_cpu_backward`` (``.default``), which
    ``scaled_dot_product_attention`` runs on CPU. ``kernels/dagpam_cpu.py`` takes them as an argument (the kernels
    import nothing of the package; :func:`~hf_attnswap.mechanisms.dagpam.dagpam_attention_fused` passes them).

    Relied on: ``forward(q, k, v, dropout_p, is_causal, attn_mask=, scale=) -> (out, logsumexp)`` with q
    (B, H, Q, d), k/v (B, H_kv, K, d) for GQA (query head ``h`` uses KV head ``h // (H / H_kv)``), an additive float
    ``attn_mask`` broadcast over the batch, ``out`` (B, H, Q, d) laid out (B, Q, H, d), ``logsumexp`` (B, H, Q);
    ``backward(grad_out, q, k, v, out, logsumexp, dropout_p, is_causal, attn_mask=, scale=) -> (dq, dk, dv)``."""
    return (torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
            torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default)


def set_last_lr(scheduler: Any, index: int, lr: float) -> None:
    """Make ``scheduler.get_last_lr()[index]`` report ``lr`` after the training loop rescaled a resumed schedule (it
    returns the private list ``_last_lr``, which only a step recomputes). A scheduler without one is left alone."""
    if hasattr(scheduler, "_last_lr"):
        scheduler._last_lr[index] = lr


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bfloat16 matrix-product kernels (oneDNN's: AVX512-core, AVX512-BF16 or AMX), as the
    private op ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` says. Without them (an AVX2-only CPU, e.g. AMD Zen 3)
    bf16 autocast runs its matrix products on a slow fallback: a 1024×576 @ 576×1536 product took 1,569 ms in bf16
    against 15.6 ms in float32 on such a 2-core CPU (100×)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


# -------------------------------------------------------------------------------------------------- Accelerate


@contextlib.contextmanager
def full_precision(model: Any) -> Iterator[Any]:
    """Inside the block, ``model`` runs in its own dtype even if Accelerate's ``prepare`` wrapped its forward in
    autocast (``mixed_precision="bf16"``/``"fp16"``), so that evaluations measure the model, not bf16 arithmetic.

    Accelerate keeps the unwrapped bound method in the instance attribute ``_original_forward`` (private); the
    wrapped forward is put back on exit. A model that was not wrapped is yielded unchanged.
    """
    inner = getattr(model, "__dict__", {}).get("_original_forward")
    if inner is None or "forward" not in model.__dict__:
        yield model
        return
    wrapped = model.__dict__["forward"]
    model.forward = inner
    try:
        yield model
    finally:
        model.forward = wrapped


def forget_prepared(accelerator: Any) -> None:
    """Make ``accelerator`` forget every model, optimiser, dataloader and scheduler that an earlier training in this
    process prepared or registered, so that ``save_state``/``load_state`` see only the next training's objects.

    ``save_state`` writes every prepared model (``model.safetensors``, ``model_1.safetensors`` ...) and every object
    given to ``register_for_checkpointing`` (``custom_checkpoint_<i>.pkl``), numbered in the order they were added;
    a second training in the same process (the conversion's stage 2 after stage 1) would otherwise number its own
    after the first's, and a resumed process that skips the finished first training would load the first's files
    into the second's objects. The public ``free_memory`` empties the model, optimiser, dataloader and scheduler
    lists; the registered objects live in the private list ``_custom_objects``, emptied here.
    """
    accelerator.free_memory()
    accelerator._custom_objects.clear()
