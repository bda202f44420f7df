"""Per-architecture adapters: which modules are attention layers, where a mechanism's parameters live, how
they are initialised, and how rotary models hand their position embedding to daGPAM's pre-rotary query.

Softmax and polynomial need nothing from the architecture: they work on any model whose attention goes
through Transformers' ``AttentionInterface`` (``_supports_attention_backend = True``). A mechanism with
parameters on the pre-rotary query (daGPAM) also needs an :class:`Architecture` entry below.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any

from torch import nn
from transformers import PreTrainedModel

from .errors import OptionError, UnsupportedModelError
from .options import MechanismOptions
from .registry import (
    OPTIONS_ATTR,
    PARAMS_ATTR,
    ROPE_ATTR,
    Mechanism,
    get_mechanism,
    is_mechanism,
    list_mechanisms,
    options_to_config,
    parse_options,
)

HOOKS_ATTR = "_attnswap_hooks"
ROTARY_ATTR = "_attnswap_rotary"
PARAMS_FLAG = "_attnswap_params"


@dataclass(frozen=True)
class Architecture:
    """How hf_attnswap reaches into one family of models.

    ``rotary``: the attention module receives ``position_embeddings=(cos, sin)`` and rotates q/k with the
    Llama/NeoX ``rotate_half`` convention after projecting them.
    """

    label: str
    rotary: bool


ARCHITECTURES: dict[str, Architecture] = {
    "gpt2": Architecture("GPT-2", rotary=False),
    "llama": Architecture("Llama (incl. SmolLM2)", rotary=True),
    "mistral": Architecture("Mistral", rotary=True),
    "qwen2": Architecture("Qwen2", rotary=True),
}


def supported_architectures() -> str:
    return ", ".join(f"{a.label} (model_type {t!r})" for t, a in ARCHITECTURES.items())


def check_supported(model: nn.Module, mech: Mechanism) -> Architecture | None:
    """Raise :class:`UnsupportedModelError` unless ``mech`` can run on ``model``; return its adapter if any."""
    if not isinstance(model, PreTrainedModel):
        raise UnsupportedModelError(
            f"hf_attnswap swaps attention in Transformers models (PreTrainedModel); got {type(model).__name__}."
        )
    model_type = getattr(model.config, "model_type", None)
    arch = ARCHITECTURES.get(model_type)
    if not getattr(model, "_supports_attention_backend", False):
        raise UnsupportedModelError(
            f"{type(model).__name__} (model_type {model_type!r}) computes attention in its own code rather than through "
            f"Transformers' AttentionInterface, so its attention cannot be swapped. Supported: {supported_architectures()}; "
            "softmax and polynomial also run on any other model with `_supports_attention_backend = True`."
        )
    if mech.make_params is not None and arch is None:
        raise UnsupportedModelError(
            f"mechanism {mech.name!r} adds parameters to each attention layer and needs an architecture adapter, "
            f"which model_type {model_type!r} does not have. Supported: {supported_architectures()}. "
            "Add one to hf_attnswap.patching.ARCHITECTURES if the model projects queries like these."
        )
    return arch


def attention_modules(model: PreTrainedModel) -> list[nn.Module]:
    """The attention modules of ``model``: instances of the class its ``_can_record_outputs["attentions"]`` names."""
    recorder = (getattr(model, "_can_record_outputs", None) or {}).get("attentions")
    target = getattr(recorder, "target_class", recorder)
    if not isinstance(target, type):
        raise UnsupportedModelError(
            f"{type(model).__name__} does not declare its attention class (`_can_record_outputs['attentions']`), "
            f"so hf_attnswap cannot find its attention layers. Supported: {supported_architectures()}."
        )
    found = [m for m in model.modules() if isinstance(m, target)]
    if not found:
        raise UnsupportedModelError(f"{type(model).__name__} has no {target.__name__} modules to swap.")
    return found


def _head_shape(module: nn.Module) -> tuple[int, int]:
    heads = getattr(module, "num_heads", None) or module.config.num_attention_heads
    head_dim = getattr(module, "head_dim", None) or module.config.hidden_size // heads
    return int(heads), int(head_dim)


def _stash_rope(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
    object.__setattr__(module, ROPE_ATTR, kwargs.get("position_embeddings"))


def _clear_rope(module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
    object.__setattr__(module, ROPE_ATTR, None)


def _set_rope_hooks(module: nn.Module, on: bool) -> None:
    for handle in getattr(module, HOOKS_ATTR, ()):
        handle.remove()
    handles = ()
    if on:
        handles = (
            module.register_forward_pre_hook(_stash_rope, with_kwargs=True),
            module.register_forward_hook(_clear_rope, with_kwargs=True),
        )
    object.__setattr__(module, HOOKS_ATTR, handles)
    object.__setattr__(module, ROTARY_ATTR, on)
    object.__setattr__(module, ROPE_ATTR, None)


def _init_weights_with_attnswap(self: PreTrainedModel, module: nn.Module) -> None:
    """The model's own ``_init_weights``, plus the parameters hf_attnswap added.

    Transformers calls ``_init_weights`` for every module whose weights a checkpoint did not provide;
    without this, daGPAM's parameters would keep uninitialised memory after loading a plain checkpoint.
    """
    if getattr(module, PARAMS_FLAG, False):
        module.reset_parameters()
    else:
        type(self)._init_weights(self, module)


def install(model: PreTrainedModel, mech: Mechanism, opts: MechanismOptions, *, reinit: bool) -> None:
    """Make every attention layer of ``model`` run ``mech`` with ``opts``, adding its parameters if needed.

    ``reinit=False`` keeps parameters that are already there for the same mechanism and options (the
    nested ``post_init`` calls of one model construction); ``reinit=True`` (``swap()``) builds them anew.
    """
    arch = check_supported(model, mech)
    for module in attention_modules(model):
        same = getattr(module, OPTIONS_ATTR, None) == opts and isinstance(getattr(module, PARAMS_ATTR, None), nn.Module)
        object.__setattr__(module, OPTIONS_ATTR, opts)
        if mech.make_params is None:
            if PARAMS_ATTR in module._modules:
                del module._modules[PARAMS_ATTR]
            _set_rope_hooks(module, False)
            continue
        if reinit or not same:
            ref = next(module.parameters(), None)
            params = mech.make_params(*_head_shape(module), opts)
            if ref is not None:
                params = params.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
                params.reset_parameters()  # no-op on meta; after .to() so -I and λ are exact in any dtype
            object.__setattr__(params, PARAMS_FLAG, True)
            module.add_module(PARAMS_ATTR, params)
        _set_rope_hooks(module, bool(mech.needs_rope and arch is not None and arch.rotary))
    for sub in model.modules():
        if isinstance(sub, PreTrainedModel):
            object.__setattr__(sub, "_init_weights", types.MethodType(_init_weights_with_attnswap, sub))
    _write_config(model, mech, opts)


def _write_config(model: PreTrainedModel, mech: Mechanism, opts: MechanismOptions) -> None:
    """``config._attn_implementation`` is the short name; ``config.attn_implementation`` (saved to config.json)
    is the persisted name; ``config.attnswap`` holds the options."""
    for sub in {id(m.config): m.config for m in model.modules() if isinstance(m, PreTrainedModel)}.values():
        sub._attn_implementation = mech.name
        sub.attn_implementation = mech.persisted_name
        sub.attnswap = options_to_config(opts)


def uninstall(model: PreTrainedModel, attn_implementation: str = "sdpa", /) -> PreTrainedModel:
    """Undo a swap: remove the parameters and hooks hf_attnswap added and go back to a Transformers attention."""
    if is_mechanism(attn_implementation):
        raise OptionError(f"{attn_implementation!r} is an hf_attnswap mechanism; use hf_attnswap.swap() for it.")
    for module in attention_modules(model):
        if PARAMS_ATTR in module._modules:
            del module._modules[PARAMS_ATTR]
        _set_rope_hooks(module, False)
        if OPTIONS_ATTR in module.__dict__:
            del module.__dict__[OPTIONS_ATTR]
    for sub in model.modules():
        if isinstance(sub, PreTrainedModel):
            sub.__dict__.pop("_init_weights", None)
            for key in ("attn_implementation", "attnswap"):
                sub.config.__dict__.pop(key, None)
    model.set_attn_implementation(attn_implementation)
    return model


def apply_from_config(model: PreTrainedModel, pending: dict[str, Any] | MechanismOptions | None) -> None:
    """Called after every ``PreTrainedModel.post_init``: if the config names an hf_attnswap mechanism, install it.

    ``pending``: the ``attnswap={...}`` keyword of the ``from_pretrained``/``from_config`` call in progress.
    """
    config = model.config
    name = getattr(config, "_attn_implementation", None)
    if not is_mechanism(name):
        if pending is not None:
            raise OptionError(
                f"attnswap options were given, but attn_implementation={name!r} is not an hf_attnswap mechanism. "
                f"Pass attn_implementation=one of {', '.join(list_mechanisms())} as well."
            )
        config.__dict__.pop("attnswap", None)  # a stale record from a checkpoint loaded with another attention
        return
    mech = get_mechanism(name)
    stored = getattr(config, "attnswap", None)
    if pending is not None:
        opts = parse_options(mech, pending)
    elif isinstance(stored, dict) and stored.get("mechanism", mech.name) == mech.name:
        opts = parse_options(mech, stored)
    else:
        opts = mech.options()
    install(model, mech, opts, reinit=False)


def swap(model: PreTrainedModel, mechanism: str, /, **options: Any) -> PreTrainedModel:
    """Convert a loaded model, in place, to ``mechanism`` with ``options``; returns the model.

    Adds and initialises the mechanism's parameters (fresh ones, even if the model was swapped before),
    records the mechanism and options in ``model.config`` so that ``save_pretrained`` persists them, and
    points the model's attention at the mechanism.
    """
    mech = get_mechanism(mechanism)
    opts = parse_options(mech, options)
    install(model, mech, opts, reinit=True)  # checks the model first; writes the config
    model.set_attn_implementation(mech.name)
    return model
