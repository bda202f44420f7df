"""Per-architecture adapters: which modules are attention layers, where a mechanism's parameters live, how
they are initialised, and how rotary models hand their position embedding to daGPAM's pre-rotary query.

Softmax and polynomial need nothing from the architecture: they work on any model whose attention goes
through Transformers' ``AttentionInterface`` (``_supports_attention_backend = True``). A mechanism with
parameters on the pre-rotary query (daGPAM) also needs an :class:`Architecture` entry below: one line per model
type, holding only what cannot be derived from the model (how its rotary pairs the dims, what its tables hold).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel

from .errors import NotSwappedError, OptionError, UnsupportedModelError
from .kernels.rope import Rotary, RotaryLayout, full_width_tables
from .options import MechanismOptions
from .registry import (
    OPTIONS_ATTR,
    PARAMS_ATTR,
    ROPE_ATTR,
    Mechanism,
    get_mechanism,
    is_mechanism,
    is_transformers_attention,
    list_mechanisms,
    options_to_config,
    parse_options,
)
from .transformers_hooks import (
    attention_class,
    attn_implementation_of,
    child_module,
    class_init_weights,
    drop_config_attribute,
    override_init_weights,
    register_callbacks,
    remove_child_module,
    remove_init_weights_override,
    set_attn_implementation_name,
    supports_attention_interface,
)

HOOKS_ATTR = "_attnswap_hooks"
PARAMS_FLAG = "_attnswap_params"
STATE_GUARD_FLAG = "_attnswap_state_guard"
ADAPTER_RECORD = "attnswap.json"  # beside a PEFT adapter: the mechanism and options of the model it was trained on


@dataclass(frozen=True)
class Architecture:
    """What hf_attnswap cannot derive about one model type; one entry per supported model type.

    Derived from the model, for every entry: whether it is rotary (its attention modules receive
    ``position_embeddings``; GPT-2 and OPT do not), partial rotary (tables narrower than the head: the first ``r`` dims
    rotate, the rest pass through, as in Phi, GPT-NeoX, GLM, GPT-J), the head shape, and scaled tables (YaRN,
    longrope: the inverse divides by ``cos² + sin²``). A mechanism acting on the pre-rotary query (daGPAM) recovers it
    from the rotated query with those tables (``kernels/rope.py``); q/k norms applied before the rotation (Qwen3,
    OLMo2, Gemma3) are then part of it, as they should be. Declared here, because neither the tables nor the config
    say it:

    - ``pairs``: how the model's rotation pairs the dims: ``"half"`` (Llama's ``rotate_half``, ``(i, i + r/2)``) or
      ``"interleaved"`` (``(2i, 2i + 1)``: GPT-J, Cohere, GLM, Helium, ERNIE-4.5).
    - ``tables``: what ``position_embeddings`` holds: ``"per_dim"`` (one value per rotated dim, in the pairs' order:
      Llama's ``cat(f, f)``, Cohere's ``repeat_interleave(f)``), ``"per_pair"`` (one angle per pair, (B, Q, r/2):
      GPT-OSS, GPT-J) or ``"first_half"`` (Llama-form tables of which the model takes the first half as one angle
      per pair: GLM, Helium, ERNIE-4.5).
    - ``sin_first``: the tables come as ``(sin, cos)`` (GPT-J).
    - ``rotates``: per attention module, whether that layer applies the rotation at all (NoPE layers: SmolLM3's
      ``use_rope``, Cohere2's and EXAONE-4's global layers); default: every layer.
    - ``refused``: why the pre-rotary query cannot be recovered from what the attention function receives (then
      daGPAM is refused on it, saying so).
    """

    label: str
    pairs: str = "half"
    tables: str = "per_dim"
    sin_first: bool = False
    rotates: Callable[[nn.Module], bool] | None = None
    refused: str | None = None

    def __post_init__(self) -> None:
        RotaryLayout(self.pairs)  # checks the name
        if self.tables not in ("per_dim", "per_pair", "first_half"):
            raise ValueError(f"Architecture.tables must be 'per_dim', 'per_pair' or 'first_half', got {self.tables!r}")


def _cohere2_rotates(module: nn.Module) -> bool:
    return module.sliding_window is not None  # Cohere2: global layers are NoPE


def _exaone4_rotates(module: nn.Module) -> bool:
    return module.sliding_window is None or module.is_sliding  # EXAONE-4: with a window, global layers are NoPE


def _smollm3_rotates(module: nn.Module) -> bool:
    return bool(module.use_rope)  # SmolLM3: no_rope_layers


ARCHITECTURES: dict[str, Architecture] = {
    "gpt2": Architecture("GPT-2"),
    "opt": Architecture("OPT"),
    "llama": Architecture("Llama (incl. SmolLM2)"),
    "mistral": Architecture("Mistral"),
    "ministral": Architecture("Ministral"),
    "mixtral": Architecture("Mixtral"),
    "qwen2": Architecture("Qwen2"),
    "qwen2_moe": Architecture("Qwen2-MoE"),
    "qwen3": Architecture("Qwen3"),
    "qwen3_moe": Architecture("Qwen3-MoE"),
    "gemma": Architecture("Gemma"),
    "gemma2": Architecture("Gemma2"),
    "gemma3_text": Architecture("Gemma3"),
    "phi": Architecture("Phi"),
    "phi3": Architecture("Phi-3"),
    "olmo": Architecture("OLMo"),
    "olmo2": Architecture("OLMo2"),
    "olmo3": Architecture("OLMo3"),
    "olmoe": Architecture("OLMoE"),
    "granite": Architecture("Granite"),
    "granitemoe": Architecture("Granite-MoE"),
    "starcoder2": Architecture("StarCoder2"),
    "smollm3": Architecture("SmolLM3", rotates=_smollm3_rotates),
    "seed_oss": Architecture("Seed-OSS"),
    "arcee": Architecture("Arcee"),
    "apertus": Architecture("Apertus"),
    "exaone4": Architecture("EXAONE-4", rotates=_exaone4_rotates),
    "gpt_neox": Architecture("GPT-NeoX"),
    "cohere": Architecture("Cohere", pairs="interleaved"),
    "cohere2": Architecture("Cohere2", pairs="interleaved", rotates=_cohere2_rotates),
    "glm": Architecture("GLM", pairs="interleaved", tables="first_half"),
    "glm4": Architecture("GLM-4", pairs="interleaved", tables="first_half"),
    "helium": Architecture("Helium", pairs="interleaved", tables="first_half"),
    "ernie4_5": Architecture("ERNIE-4.5", pairs="interleaved", tables="first_half"),
    "gptj": Architecture("GPT-J", pairs="interleaved", tables="per_pair", sin_first=True),
    "gpt_oss": Architecture("GPT-OSS", tables="per_pair"),
    "hunyuan_v1_dense": Architecture("Hunyuan", refused=(
        "its attention normalises the query after the rotation (query_layernorm), so the query the attention "
        "function receives is not a rotation of a pre-rotary query and daGPAM's Q⁻ cannot be computed from it")),
}


def supported_architectures() -> str:
    return ", ".join(repr(t) for t, a in ARCHITECTURES.items() if a.refused is None)


def model_rotary(arch: Architecture, tables: Any, head_dim: int) -> Rotary:
    """The model's ``position_embeddings`` as full-width :class:`~hf_attnswap.kernels.rope.Rotary` tables (B, Q,
    head_dim) in its own layout: reordered (``sin_first``), expanded to one value per dim (``per_pair``,
    ``first_half``) and padded for partial rotary (the rotary dim is the tables' width)."""
    if not (isinstance(tables, (tuple, list)) and len(tables) == 2 and all(isinstance(t, torch.Tensor) for t in tables)):
        raise UnsupportedModelError(
            f"{arch.label}: the attention module received position_embeddings of type {type(tables).__name__}, not "
            f"the (cos, sin) pair of tensors hf_attnswap reads the rotary embedding from.")
    cos, sin = tables[::-1] if arch.sin_first else tables
    if arch.tables == "first_half":
        cos, sin = cos[..., : cos.shape[-1] // 2], sin[..., : sin.shape[-1] // 2]
    if arch.tables != "per_dim":
        if arch.pairs == "half":
            cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)
        else:
            cos, sin = cos.repeat_interleave(2, dim=-1), sin.repeat_interleave(2, dim=-1)
    rotary_dim = cos.shape[-1]
    if rotary_dim > head_dim or rotary_dim % 2 or cos.shape != sin.shape:
        raise UnsupportedModelError(
            f"{arch.label}: rotary tables of shape {tuple(cos.shape)} / {tuple(sin.shape)} for heads of size {head_dim}; "
            "hf_attnswap expects (B, Q, r) tables with an even r <= head_dim (its Architecture entry may be wrong).")
    cos, sin = full_width_tables(cos, sin, head_dim)
    return Rotary(cos, sin, RotaryLayout(arch.pairs, None if rotary_dim == head_dim else rotary_dim))


def unsupported_model_error(model: nn.Module) -> UnsupportedModelError:
    """The error for a model whose attention does not go through Transformers' ``AttentionInterface`` (Falcon,
    StableLM, BLOOM ...): it names the model type and lists what is supported."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return UnsupportedModelError(
        f"{type(model).__name__} (model_type {model_type!r}) computes attention in its own code rather than through "
        f"Transformers' AttentionInterface, so hf_attnswap cannot swap its attention. Supported: "
        f"{supported_architectures()} (every mechanism); mechanisms without parameters (softmax, polynomial) also run on any other "
        "model whose class sets `_supports_attention_backend = True`. Load this model with "
        "attn_implementation='eager' or 'sdpa' instead."
    )


def check_supported(model: nn.Module, mech: Mechanism) -> Architecture | None:
    """Raise :class:`UnsupportedModelError` unless ``mech`` can run on ``model``; return its adapter if any."""
    if not isinstance(model, PreTrainedModel):
        raise UnsupportedModelError(
            f"hf_attnswap swaps attention in Transformers models (PreTrainedModel); got {type(model).__name__}."
        )
    model_type = getattr(model.config, "model_type", None)
    arch = ARCHITECTURES.get(model_type)
    if not supports_attention_interface(model):
        raise unsupported_model_error(model)
    if mech.make_params is not None and arch is None:
        raise UnsupportedModelError(
            f"mechanism {mech.name!r} adds parameters to each attention layer, on the query before the rotary "
            f"embedding, and needs an architecture entry, which model_type {model_type!r} does not have. Supported: "
            f"{supported_architectures()}. If this model rotates its queries like one of these, add one line to "
            "hf_attnswap.patching.ARCHITECTURES (an Architecture saying how its rotary pairs the dims)."
        )
    if mech.needs_rope and arch is not None and arch.refused is not None:
        raise UnsupportedModelError(
            f"mechanism {mech.name!r} cannot run on {arch.label} (model_type {model_type!r}): {arch.refused}. "
            f"Supported: {supported_architectures()}."
        )
    return arch


def attention_modules(model: PreTrainedModel) -> list[nn.Module]:
    """The attention modules of ``model``: instances of the class its ``_can_record_outputs["attentions"]`` names."""
    target = attention_class(model)
    if target is None:
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
    head_dim = (getattr(module, "head_dim", None) or getattr(module, "head_size", None)
                or getattr(module.config, "head_dim", None) or module.config.hidden_size // heads)
    return int(heads), int(head_dim)


def _stash_rope(arch: Architecture, head_dim: int, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
    """Forward pre-hook: the rotary tables this call of ``module`` receives, as a :class:`Rotary` (or None: not rotary)."""
    tables = kwargs.get("position_embeddings")
    if tables is None and any(isinstance(a, tuple) and len(a) == 2 and all(isinstance(t, torch.Tensor) for t in a)
                              for a in args):
        raise UnsupportedModelError(
            f"{arch.label}: its attention module received its rotary tables positionally, not as the keyword "
            "position_embeddings, so hf_attnswap cannot read them; its Architecture entry needs updating.")
    object.__setattr__(module, ROPE_ATTR, None if tables is None else model_rotary(arch, tables, head_dim))


def _clear_rope(module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
    object.__setattr__(module, ROPE_ATTR, None)


def _set_rope_hooks(module: nn.Module, arch: Architecture | None) -> None:
    """Stash the rotary tables for the call in progress (``arch``), or remove the hooks (``None``). A layer that
    the entry says does not rotate (NoPE) gets no hooks: its query is the pre-rotary one."""
    for handle in getattr(module, HOOKS_ATTR, ()):
        handle.remove()
    handles = ()
    if arch is not None and (arch.rotates is None or arch.rotates(module)):
        handles = (
            module.register_forward_pre_hook(partial(_stash_rope, arch, _head_shape(module)[1]), with_kwargs=True),
            module.register_forward_hook(_clear_rope, with_kwargs=True),
        )
    object.__setattr__(module, HOOKS_ATTR, handles)
    object.__setattr__(module, ROPE_ATTR, None)


def _init_weights_with_attnswap(self: PreTrainedModel, module: nn.Module) -> None:
    """The model's own ``_init_weights``, plus the parameters hf_attnswap added.

    Transformers calls ``_init_weights`` for every module whose weights a checkpoint did not provide;
    without this, daGPAM's parameters would keep uninitialised memory after loading a plain checkpoint.
    """
    if getattr(module, PARAMS_FLAG, False):
        module.reset_parameters()
    else:
        class_init_weights(self, module)


def install(model: PreTrainedModel, mech: Mechanism, opts: MechanismOptions, *, reinit: bool) -> None:
    """Make every attention layer of ``model`` run ``mech`` with ``opts``, adding its parameters if needed.

    ``reinit=False`` keeps parameters that are already there for the same mechanism and options (the
    nested ``post_init`` calls of one model construction); ``reinit=True`` (``swap()``) builds them anew.
    Everything that can fail (the architecture check, building the parameters) happens before the model is
    changed, so a failed call leaves it as it was.
    """
    arch = check_supported(model, mech)
    plan = []  # (module, new parameters or None to keep / remove)
    for module in attention_modules(model):
        same = getattr(module, OPTIONS_ATTR, None) == opts and isinstance(getattr(module, PARAMS_ATTR, None), nn.Module)
        params = None
        if mech.make_params is not None and (reinit or not same):
            ref = next((p for n, p in module.named_parameters() if not n.startswith(PARAMS_ATTR + ".")), None)
            params = mech.make_params(*_head_shape(module), opts)
            if ref is not None:
                params = params.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
                params.reset_parameters()  # no-op on meta; after .to() so -I and λ are exact in any dtype
            object.__setattr__(params, PARAMS_FLAG, True)
        plan.append((module, params))
    for module, params in plan:
        object.__setattr__(module, OPTIONS_ATTR, opts)
        if mech.make_params is None:
            remove_child_module(module, PARAMS_ATTR)
            _set_rope_hooks(module, None)
            continue
        if params is not None:
            module.add_module(PARAMS_ATTR, params)
        _set_rope_hooks(module, arch if mech.needs_rope else None)
    for sub in model.modules():
        if isinstance(sub, PreTrainedModel):
            override_init_weights(sub, _init_weights_with_attnswap)
    _write_config(model, mech, opts)


def _write_config(model: PreTrainedModel, mech: Mechanism, opts: MechanismOptions) -> None:
    """``config._attn_implementation`` is the short name; ``config.attn_implementation`` (saved to config.json)
    is the persisted name; ``config.attnswap`` holds the options."""
    for sub in {id(m.config): m.config for m in model.modules() if isinstance(m, PreTrainedModel)}.values():
        set_attn_implementation_name(sub, mech.name)
        sub.attn_implementation = mech.persisted_name
        sub.attnswap = options_to_config(opts)


def sync_record(model: PreTrainedModel) -> None:
    """After ``model.set_attn_implementation(name)``: make what ``save_pretrained`` will write say what the model now
    computes. Switched to a Transformers attention, the record (``attn_implementation``, ``attnswap``) is dropped, so
    the checkpoint reloads as that attention (the mechanism's parameters stay on the model, unused, so switching
    back works); switched back to the mechanism its layers carry, the record is written again."""
    name = attn_implementation_of(model.config)
    if is_mechanism(name):
        mech = get_mechanism(name)
        layers = [getattr(m, OPTIONS_ATTR, None) for m in attention_modules(model)] if isinstance(model, PreTrainedModel) else []
        if layers and all(isinstance(o, mech.options) and o == layers[0] for o in layers):
            _write_config(model, mech, layers[0])
        return
    for sub in model.modules():
        if isinstance(sub, PreTrainedModel) and not is_mechanism(attn_implementation_of(sub.config)):
            _drop_record(sub.config)


def _drop_record(config: Any) -> None:
    """Remove what ``save_pretrained`` would persist of a mechanism (``attn_implementation``, ``attnswap``)."""
    for key in ("attn_implementation", "attnswap"):
        drop_config_attribute(config, key)


def uninstall(model: PreTrainedModel, attn_implementation: str = "sdpa", /) -> PreTrainedModel:
    """Undo a swap: remove the parameters and hooks hf_attnswap added and go back to a Transformers attention.

    The name and the model are checked first, and Transformers switches the attention before anything of the
    mechanism is removed, so a failed call (a bad name, an implementation that is not installed) leaves the model
    as it was."""
    if not isinstance(attn_implementation, str) or is_mechanism(attn_implementation):
        raise OptionError(f"{attn_implementation!r} is an hf_attnswap mechanism; use hf_attnswap.swap() for it.")
    if not is_transformers_attention(attn_implementation):
        raise OptionError(
            f"unswap: {attn_implementation!r} is not one of Transformers' attention implementations. Use 'sdpa' (the "
            f"default), 'eager', or one of: {', '.join(sorted(k for k in AttentionInterface().valid_keys() if not is_mechanism(k)))}."
        )
    if not isinstance(model, PreTrainedModel):
        raise UnsupportedModelError(f"unswap takes a Transformers model (PreTrainedModel); got {type(model).__name__}.")
    modules = attention_modules(model)
    previous = attn_implementation_of(model.config)
    try:
        model.set_attn_implementation(attn_implementation)
    except (ValueError, ImportError) as err:
        _restore_attn_name(model, previous)
        raise OptionError(f"unswap: Transformers cannot switch this model to {attn_implementation!r}: {err}") from None
    for module in modules:
        remove_child_module(module, PARAMS_ATTR)
        _set_rope_hooks(module, None)
        if OPTIONS_ATTR in module.__dict__:
            del module.__dict__[OPTIONS_ATTR]
    for sub in model.modules():
        if isinstance(sub, PreTrainedModel):
            remove_init_weights_override(sub)
            _drop_record(sub.config)
    return model


def _restore_attn_name(model: PreTrainedModel, name: str | None) -> None:
    """Put back ``config._attn_implementation`` after a failed ``set_attn_implementation`` (which may have changed
    it on some sub-configs before failing)."""
    for sub in model.modules():
        if isinstance(sub, PreTrainedModel) and name is not None:
            set_attn_implementation_name(sub.config, name)


def _refuse_orphan_mechanism_state(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """``load_state_dict`` pre-hook on every Transformers model: a state dict that holds a mechanism's parameters
    (``…<attention>.attnswap.*``, e.g. a PEFT adapter trained with ``modules_to_save=["attnswap"]``) loaded into a
    model that lacks them would silently drop them (PEFT and ``strict=False`` ignore unexpected keys), so refuse."""
    marker = f".{PARAMS_ATTR}."
    orphans = []
    for key in state_dict:
        if not key.startswith(prefix) or marker not in f".{key[len(prefix):]}":
            continue
        path = f".{key[len(prefix):]}".split(marker)[0].lstrip(".")
        try:
            owner = module.get_submodule(path) if path else module
        except AttributeError:
            continue  # not under this model: another hook owns it
        if not isinstance(child_module(owner, PARAMS_ATTR), nn.Module):
            orphans.append(key[len(prefix):])
    if orphans:
        raise orphan_mechanism_error(module, orphans)


def orphan_mechanism_error(model: nn.Module, keys: list[str]) -> NotSwappedError:
    """The error for weights of a mechanism's parameters (``keys``, e.g. an adapter's) loaded into ``model``, which
    does not have that mechanism."""
    keys = sorted(keys)
    leaves = sorted({k.rsplit(".", 1)[-1] for k in keys})
    return NotSwappedError(
        f"the weights being loaded hold an hf_attnswap mechanism's parameters ({', '.join(leaves)}; e.g. {keys[0]}), "
        f"but this {type(model).__name__} was loaded without that mechanism, so they would be silently dropped. "
        f"Load the base model with the mechanism and options the weights were trained with "
        f"(from_pretrained(base, attn_implementation='dagpam', attnswap={{...}})), then the adapter or weights; for "
        f"an adapter saved with hf_attnswap.save_adapter() (the recipes do), hf_attnswap.load_adapter(base, adapter) "
        f"does both from its {ADAPTER_RECORD}."
    )


def _add_state_dict_guard(model: PreTrainedModel) -> None:
    if not getattr(model, STATE_GUARD_FLAG, False):
        model.register_load_state_dict_pre_hook(_refuse_orphan_mechanism_state)
        object.__setattr__(model, STATE_GUARD_FLAG, True)


def apply_from_config(model: PreTrainedModel, pending: dict[str, Any] | MechanismOptions | None, *,
                      from_checkpoint: bool = False) -> None:
    """Called after every ``PreTrainedModel.post_init``: if the config names an hf_attnswap mechanism, install it.

    ``pending``: the ``attnswap={...}`` keyword of the ``from_pretrained``/``from_config`` call in progress. It is
    merged into the options saved in the config (``config.attnswap``), never replaces them: ``{"backend":
    "reference"}`` changes only the backend. ``from_checkpoint`` (``from_pretrained``): the checkpoint holds the
    mechanism's parameters, so an option that shapes or initialises them
    (:meth:`~hf_attnswap.options.MechanismOptions.parameter_option_names`) must equal the saved value.
    """
    _add_state_dict_guard(model)
    config = model.config
    name = attn_implementation_of(config)
    if not is_mechanism(name):
        if pending is not None:
            raise OptionError(
                f"attnswap options were given, but attn_implementation={name!r} is not an hf_attnswap mechanism. "
                f"Pass attn_implementation=one of {', '.join(list_mechanisms())} as well."
            )
        drop_config_attribute(config, "attnswap")  # a stale record from a checkpoint loaded with another attention
        return
    mech = get_mechanism(name)
    stored = getattr(config, "attnswap", None)
    saved = parse_options(mech, stored) if isinstance(stored, dict) and stored.get("mechanism", mech.name) == mech.name \
        else None
    if pending is None:
        opts = saved or mech.options()
    elif saved is None:
        opts = parse_options(mech, pending)
    else:
        given = parse_options(mech, pending)  # validated alone first: its errors name only what the user gave
        if isinstance(pending, MechanismOptions):
            pending = {k: v for k, v in given.to_dict().items() if v != saved.to_dict()[k]}
        opts = parse_options(mech, {**saved.to_dict(), **dict(pending)})
        if from_checkpoint and mech.make_params is not None:
            _check_parameter_options(mech, saved, opts, set(dict(pending)))
    install(model, mech, opts, reinit=False)


def _check_parameter_options(mech: Mechanism, saved: MechanismOptions, opts: MechanismOptions, given: set[str]) -> None:
    changed = [k for k in saved.parameter_option_names() if k in given and getattr(opts, k) != getattr(saved, k)]
    if changed:
        diff = ", ".join(f"{k}={getattr(opts, k)!r} (saved: {getattr(saved, k)!r})" for k in changed)
        raise OptionError(
            f"this checkpoint holds trained {mech.name!r} parameters saved with other options: {diff}. These options "
            f"shape or initialise those parameters, so they cannot change at load time. Leave them out (the saved "
            f"ones are used; only runtime options such as 'backend' may change), or load the checkpoint and then "
            f"call hf_attnswap.swap(model, {mech.name!r}, ...) to re-initialise the mechanism's parameters."
        )


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


register_callbacks(apply_from_config=apply_from_config, orphan_mechanism_error=orphan_mechanism_error, sync_record=sync_record,
                   unsupported_model_error=unsupported_model_error)
