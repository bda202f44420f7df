"""The one place where hf_attnswap touches Transformers internals.

Transformers has no public hook for "a model was just built" nor for extra keyword arguments of
``from_pretrained``/``from_config``. So, once, at import, this module wraps five methods of
``PreTrainedModel``:

- ``from_pretrained`` and ``_from_config`` (what ``AutoModel*.from_config`` calls) accept
  ``attnswap={...}`` and hand it to the model being built, through a context variable. ``AutoModel*.from_pretrained``
  hands it on inside the config instead, over the saved options; :func:`_take_auto_class_options` takes it back
  out (reading the saved ones again with ``get_config_dict``), so that it is merged, not substituted;
- ``post_init`` (run at the end of every model's ``__init__``, before weights are loaded) installs the
  mechanism named by ``config._attn_implementation``, so its parameters exist when the checkpoint is read.

``load_adapter`` (Transformers' PEFT integration) is wrapped to refuse an adapter whose mechanism parameters the
model cannot take, and ``set_attn_implementation`` to keep the saved record true to what the model computes. It also reads, in :func:`attention_weights_requested`, whether Transformers is collecting attention weights
(``output_attentions=True``), which GPT-2 does not pass down to the attention function.

One Accelerate internal lives here too: :func:`full_precision` undoes ``prepare``'s autocast wrapper for
evaluations.

``tests/test_registry_and_hooks.py`` fails loudly if any of these stops existing or behaving as assumed.

This module sits below :mod:`hf_attnswap.registry` and :mod:`hf_attnswap.patching` and imports neither: what the
hooks need from them (looking up a mechanism, installing one, ...) those modules hand over at their import, with
:func:`register_callbacks`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator
from typing import Any

from transformers import PreTrainedModel

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
    "sync_record": "patching",
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
        config.__dict__.pop("attnswap", None)
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
        builtin = ["eager", "sdpa", "flex_attention", "flash_attention_2"]
        raise UnknownMechanismError(f"{err} Transformers' own: {', '.join(builtin)}.") from None


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
    """``model.set_attn_implementation("sdpa")`` on a swapped model must not leave ``config.json`` saying daGPAM."""
    original = PreTrainedModel.set_attn_implementation

    @functools.wraps(original)
    def set_attn_implementation(self: PreTrainedModel, *args: Any, **kwargs: Any) -> Any:
        sync_record = _callback("sync_record")
        result = original(self, *args, **kwargs)
        sync_record(self)
        return result

    setattr(set_attn_implementation, _MARK, original)
    PreTrainedModel.set_attn_implementation = set_attn_implementation


def install_hooks() -> None:
    """Wrap ``from_pretrained``, ``_from_config``, ``post_init`` and ``load_adapter`` once (idempotent)."""
    for name in ("from_pretrained", "_from_config"):
        if not hasattr(PreTrainedModel.__dict__[name].__func__, _MARK):
            _wrap_classmethod(name)
    if not hasattr(PreTrainedModel.post_init, _MARK):
        _wrap_post_init()
    if not hasattr(PreTrainedModel.load_adapter, _MARK):
        _wrap_load_adapter()
    if not hasattr(PreTrainedModel.set_attn_implementation, _MARK):
        _wrap_set_attn_implementation()


def hooks_installed() -> bool:
    return all(
        hasattr(f, _MARK)
        for f in (
            PreTrainedModel.__dict__["from_pretrained"].__func__,
            PreTrainedModel.__dict__["_from_config"].__func__,
            PreTrainedModel.post_init,
            PreTrainedModel.load_adapter,
            PreTrainedModel.set_attn_implementation,
        )
    )


def attention_weights_requested() -> bool:
    """Whether the forward in progress collects attention weights (``output_attentions=True``)."""
    from transformers.utils.output_capturing import _active_collector

    try:
        collected = _active_collector.get()
    except LookupError:
        return False
    return bool(collected) and any("attentions" in key for key in collected)


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
