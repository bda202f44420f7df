"""Build the model and tokenizer a recipe trains: pretrained or from scratch, swapped through the public API,
optionally wrapped with PEFT LoRA (the mechanism's own parameters stay trainable and are saved with the adapter).
"""

from __future__ import annotations

import difflib
import os
import sys
from typing import Any

import torch
from torch import nn

from ..data.assets import resolve_source
from ..errors import AttnSwapError
from ..registry import PARAMS_ATTR, is_mechanism_parameter
from ..spec import AttnSpec, parse_attn_specs
from .arguments import LoraArguments, ModelArguments, RecipeConfigError, comma_list

__all__ = ["ModelLoadError", "build_config", "build_model", "check_block_size", "check_model_args",
           "check_packing_isolates", "freeze_except", "load_tokenizer", "lora_preview",
           "modules_named", "parse_config_overrides", "parse_single_attn", "select_trainable", "wrap_lora"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(AttnSwapError):
    """The model or tokenizer could not be loaded (missing folder, unknown Hub name, no Hub access)."""


def _resolve(name: str | None, what: str = "model") -> str | None:
    """An offline asset's path, an existing local path, or a Hub id; a local path that does not exist raises
    :class:`~hf_attnswap.errors.SourceError` saying so."""
    return None if name is None else resolve_source(name, what)


def parse_config_overrides(text: str) -> list[tuple[str, str]]:
    """``"n_layer=4, n_embd=256"`` -> ``[("n_layer", "4"), ("n_embd", "256")]`` (spaces stripped, empty items
    ignored); anything else than ``key=value`` items raises :class:`RecipeConfigError`."""
    pairs = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise RecipeConfigError(f"config_overrides {text!r}: {item!r} is not key=value. The expected form is "
                                    f"key=value,key=value, e.g. n_layer=4,n_embd=256.")
        pairs.append((key.strip(), value.strip()))
    return pairs


def _convert(key: str, value: str, old: Any) -> Any:
    """``value`` as the type of the config's current value ``old`` (as ``PretrainedConfig.update_from_string``)."""
    if isinstance(old, bool):
        if value.lower() in ("true", "1", "y", "yes"):
            return True
        if value.lower() in ("false", "0", "n", "no"):
            return False
        raise RecipeConfigError(f"config_overrides {key}={value}: {key} takes true or false.")
    if isinstance(old, int):
        try:
            return int(value)
        except ValueError:
            raise RecipeConfigError(f"config_overrides {key}={value}: {key} takes an integer.") from None
    if isinstance(old, float):
        try:
            return float(value)
        except ValueError:
            raise RecipeConfigError(f"config_overrides {key}={value}: {key} takes a number.") from None
    if isinstance(old, str):
        return value
    if old is None:  # unset in the default config: the most specific reading
        if value.lower() in ("true", "false"):
            return value.lower() == "true"
        if value.lower() in ("none", "null"):
            return None
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                pass
        return value
    raise RecipeConfigError(f"config_overrides {key}={value}: {key} holds a {type(old).__name__} "
                            f"({old!r}); only int, float, bool and string values can be overridden.")


def build_config(args: ModelArguments) -> Any:
    """The config of a model trained from scratch: ``config_name`` or ``model_type``'s default, with
    ``config_overrides``. A typo in ``model_type`` or an override key is an error with the close names."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if args.config_name is not None:
        name = _resolve(args.config_name, "config")
        try:
            config = AutoConfig.from_pretrained(name)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"could not load the config {name!r}: {exc}") from None
    else:
        if args.model_type not in CONFIG_MAPPING:
            close = difflib.get_close_matches(str(args.model_type), list(CONFIG_MAPPING.keys()), n=3, cutoff=0.6)
            hint = (f"did you mean {close[0]!r}?" + (f" (or {', '.join(map(repr, close[1:]))})" if close[1:] else "")
                    if close else "it is not a Transformers model type (gpt2, llama, qwen2, ...).")
            raise RecipeConfigError(f"unknown model_type {args.model_type!r}; {hint}")
        config = AutoConfig.for_model(args.model_type)
    if args.config_overrides:
        known = sorted({*config.to_dict(), *getattr(config, "attribute_map", {})})
        for key, value in parse_config_overrides(args.config_overrides):
            if not hasattr(config, key):
                close = difflib.get_close_matches(key, known, n=3)
                hint = f"did you mean {' or '.join(map(repr, close))}?" if close else \
                    f"the keys of a {config.model_type} config are: {', '.join(known)}."
                raise RecipeConfigError(f"config_overrides: {config.model_type} configs have no key {key!r}; {hint}")
            setattr(config, key, _convert(key, value, getattr(config, key)))
    return config


def _from_config(config: Any, args: ModelArguments, **kwargs: Any) -> nn.Module:
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_config(config, **kwargs)
    except (ValueError, TypeError, AssertionError, RuntimeError) as exc:
        source = f"model_type={args.model_type!r}" if args.config_name is None else f"config_name={args.config_name!r}"
        raise RecipeConfigError(f"Transformers rejects the config from {source} with config_overrides="
                                f"{args.config_overrides!r}: {exc} Fix config_overrides.") from None


def check_model_args(args: ModelArguments) -> None:
    """Check what the model arguments name before anything is loaded: local paths exist (model, config,
    tokenizer), and a from-scratch config (model_type / config_name + config_overrides) builds a model (on the meta
    device: no memory, no time). Raises an :class:`~hf_attnswap.errors.AttnSwapError`."""
    spec = parse_single_attn(args.attn)
    _resolve(args.tokenizer_name, "tokenizer")
    if args.model_name_or_path is not None:
        _resolve(args.model_name_or_path, "model")
        scratch = [f"{n}={getattr(args, n)!r}" for n in ("model_type", "config_name", "config_overrides")
                   if getattr(args, n) is not None]
        if scratch and int(os.environ.get("RANK", "0")) == 0:
            print(f"warning: model_name_or_path={args.model_name_or_path!r} loads a pretrained model; "
                  f"{', '.join(scratch)} (settings for a model from scratch) are ignored. Unset them (e.g. "
                  f"--{scratch[0].split('=')[0]} none) to silence this.", file=sys.stderr, flush=True)
        return
    config = build_config(args)
    with torch.device("meta"):
        _from_config(config, args, **spec.load_kwargs())


def parse_single_attn(text: str) -> AttnSpec:
    """The one attention spec of a recipe (``dagpam:lambda_init=0.1``), validated before anything is loaded."""
    specs = parse_attn_specs(text)
    if len(specs) != 1:
        raise RecipeConfigError(f"a recipe trains one attention; got {len(specs)} in attn={text!r}.")
    return specs[0]


def load_tokenizer(args: ModelArguments) -> Any:
    """The tokenizer of ``args.tokenizer_name`` (default ``model_name_or_path``), with a pad token (EOS if none)."""
    from transformers import AutoTokenizer

    name = _resolve(args.tokenizer_name or args.model_name_or_path, "tokenizer")
    if name is None:
        raise RecipeConfigError("training from scratch needs tokenizer_name (a Hub name, a folder, or the offline "
                                "asset gpt2-tokenizer).")
    try:
        tok = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load the tokenizer {name!r}: {exc}. Pass a folder that holds a tokenizer, a "
                             f"Hub name (needs the Hub), or an offline asset name such as gpt2-tokenizer.") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def build_model(args: ModelArguments, tokenizer: Any, *, block_size: int | None = None) -> tuple[nn.Module, AttnSpec]:
    """Load or create the causal LM with the attention of ``args.attn``; return ``(model, spec)``.

    Pretrained: ``from_pretrained(model_name_or_path, attn_implementation=..., attnswap=...)``; the mechanism's
    new parameters are initialised by the plugin. From scratch: ``model_type`` or ``config_name`` plus
    ``config_overrides``, initialised from the current torch seed. Embeddings grow to the tokenizer if needed.
    ``block_size`` is checked against the model's positions from its config, before any weight is loaded.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = parse_single_attn(args.attn)
    dtype = DTYPES[args.torch_dtype]
    if args.model_name_or_path is not None:
        name = _resolve(args.model_name_or_path, "model")
        try:
            if block_size is not None:
                check_block_size(AutoConfig.from_pretrained(name), block_size)
            model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **spec.load_kwargs())
            _materialize_meta_parameters(model)
        except OSError as exc:
            raise ModelLoadError(f"could not load the model {name!r}: {exc}. Pass a folder written by "
                                 f"save_pretrained, a Hub name (needs the Hub), or an offline asset name (smollm2).") from None
    else:
        config = build_config(args)
        if getattr(config, "vocab_size", None) is not None and config.vocab_size < len(tokenizer):
            config.vocab_size = len(tokenizer)
        if block_size is not None:
            check_block_size(config, block_size)
        model = _from_config(config, args, dtype=dtype, **spec.load_kwargs())
    embeddings = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > embeddings:
        model.resize_token_embeddings(len(tokenizer))
    if args.gradient_checkpointing:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.24 (the old name warns, gone in v6)
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.config.use_cache = False
    return model, spec


def _materialize_meta_parameters(model: nn.Module) -> None:
    """FSDP with ``cpu_ram_efficient_loading``: on local ranks > 0 Transformers loads the checkpoint as empty CPU
    tensors but leaves the parameters that are not in it (the mechanism's new W- and lambda) on the meta device.
    Accelerate's FSDP2 ``prepare`` maps the optimizer's parameters to their shards by ``data_ptr()``, which is 0 for
    every meta tensor, so they would collapse into one: rank > 0 would update one shard several times and never the
    others (and saving a checkpoint fails). Give them uninitialised CPU storage; their values come from rank 0."""
    import os

    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() not in ("1", "true"):
        return
    for module in model.modules():
        if any(p.is_meta for p in module.parameters(recurse=False)):
            module.to_empty(device="cpu", recurse=False)


def check_block_size(model_or_config: Any, block_size: int) -> None:
    """Raise :class:`RecipeConfigError` if ``block_size`` exceeds the position limit of a model or its config."""
    from types import SimpleNamespace

    from ..evaluation.perplexity import model_max_positions

    config = getattr(model_or_config, "config", model_or_config)
    limit = model_max_positions(SimpleNamespace(config=config))
    if limit is not None and block_size > limit:
        raise RecipeConfigError(f"block_size={block_size} is larger than the model's {limit} positions; "
                                f"set block_size <= {limit}.")


@torch.no_grad()
def check_packing_isolates(model: nn.Module) -> None:
    """Raise :class:`RecipeConfigError` unless ``model`` keeps packed documents apart (``--packing documents``).

    Transformers derives the block-diagonal mask from restarting ``position_ids`` in ``create_causal_mask``, but not
    every model hands its ``position_ids`` there (OPT, GPT-OSS in Transformers 5.24 do not), so this runs the model
    once on a probe: two short documents packed in one row must give the second document the logits it has alone.
    """
    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    if vocab < 8:
        return
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        g = torch.Generator().manual_seed(0)
        first, second = (torch.randint(3, vocab, (1, n), generator=g).to(device) for n in (5, 4))
        packed = torch.cat((first, second), dim=1)
        positions = torch.cat((torch.arange(5), torch.arange(4)))[None].to(device)
        got = model(packed, position_ids=positions, use_cache=False).logits[:, 5:].float()
        alone = model(second, use_cache=False).logits.float()
    finally:
        model.train(was_training)
    if not torch.allclose(got, alone, atol=1e-3 * max(1.0, float(alone.abs().max())), rtol=1e-3):
        model_type = getattr(model.config, "model_type", None)
        raise RecipeConfigError(
            f"--packing documents: model_type {model_type!r} does not keep packed documents apart (its attention mask "
            "ignores the restarting position_ids, so every token would attend to the documents before it in the block). "
            "Use --packing concat for this model.")


def select_trainable(model: nn.Module, patterns: list[str]) -> list[str]:
    """The names of ``model``'s parameters that some pattern of ``patterns`` (regular expressions, searched) matches,
    plus the mechanism's own parameters. A pattern that is not a regular expression, or that matches no parameter,
    is an error (:class:`~hf_attnswap.conversion.transfer.TransferError`, as for stage 1's patterns)."""
    from ..conversion.transfer import matching_parameters

    own = {n for n, _ in model.named_parameters() if is_mechanism_parameter(n)}
    return sorted(own | matching_parameters(model, patterns))


def freeze_except(model: nn.Module, patterns: list[str]) -> list[str]:
    """Freeze every parameter of ``model`` but :func:`select_trainable`'s; returns the names that train."""
    chosen = select_trainable(model, patterns)
    keep = set(chosen)
    for name, param in model.named_parameters():
        param.requires_grad_(name in keep)
    return chosen


def modules_named(model: nn.Module, names: list[str]) -> set[str]:
    """The names of ``model``'s modules that one of ``names`` names: the module's full name, or its trailing dotted
    part (``input_layernorm`` names ``model.layers.0.input_layernorm``; ``norm`` names ``model.norm`` only)."""
    return {n for n, _ in model.named_modules() if n and any(n == m or n.endswith("." + m) for m in names)}


def lora_preview(model: nn.Module, args: LoraArguments) -> nn.Module:
    """A weightless copy of ``model`` (``PreTrainedModel``, on the meta device) wrapped as :func:`wrap_lora` wraps
    it: its parameter names, shapes and ``requires_grad`` are what a LoRA run will train, so options that name
    weights (``learning_rate_patterns``) can be checked before anything trains. No memory is allocated and no random
    number is drawn (the random state is restored), so a run that checks first trains exactly as one that does not.
    The copy has no mechanism parameters (``learning_rate_patterns`` never sets their rate)."""
    import copy

    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return wrap_lora(type(model)(copy.deepcopy(model.config)), args)


def wrap_lora(model: nn.Module, args: LoraArguments) -> nn.Module:
    """Wrap ``model`` with PEFT LoRA adapters. The mechanism's parameter modules (``attnswap``) and the modules
    that ``lora_modules_to_save`` names go in ``modules_to_save``: fully trainable, and saved in the adapter (merged
    into the model by ``merge_and_unload``). A name there that names no module (:func:`modules_named`), or a PEFT
    that wraps other modules than the names name, is a :class:`~hf_attnswap.training.arguments.RecipeConfigError`
    (PEFT would ignore the first silently)."""
    from peft import LoraConfig, get_peft_model

    has_mechanism_params = any(is_mechanism_parameter(n) for n, _ in model.named_parameters())
    targets: Any = args.lora_target_modules
    if targets != "all-linear":
        targets = comma_list(targets)
    extra = comma_list(args.lora_modules_to_save)
    unmatched = [m for m in extra if not modules_named(model, [m])]
    if unmatched:
        names = [n for n, _ in model.named_modules()]
        raise RecipeConfigError(f"lora_modules_to_save: {', '.join(unmatched)} names no module of this model (a "
                                f"module's full name or its last dotted parts, e.g. {', '.join(names[-3:])}). Name "
                                "modules of this model.")
    expected = modules_named(model, extra)
    to_save = ([PARAMS_ATTR] if has_mechanism_params else []) + extra
    config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                        target_modules=targets, task_type="CAUSAL_LM", modules_to_save=to_save or None)
    try:
        wrapped = get_peft_model(model, config)
    except ValueError as exc:
        raise RecipeConfigError(f"LoRA: {exc}. Set lora_target_modules to module names of this model.") from None
    if extra:  # PEFT's matching rule has changed between versions: train exactly the modules named, or refuse
        from peft.utils import ModulesToSaveWrapper

        prefix = "base_model.model."
        got = {n[len(prefix):] if n.startswith(prefix) else n for n, mod in wrapped.named_modules()
               if isinstance(mod, ModulesToSaveWrapper) and not (n == PARAMS_ATTR or n.endswith("." + PARAMS_ATTR))}
        if got != expected:
            import peft

            differ = sorted(got ^ expected)
            raise RecipeConfigError(f"lora_modules_to_save: PEFT {peft.__version__} matched other modules than "
                                    f"{', '.join(extra)} names ({', '.join(differ[:4])}{', ...' if len(differ) > 4 else ''}"
                                    "); name the modules by their full last part, e.g. input_layernorm.")
    return wrapped
