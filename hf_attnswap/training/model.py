"""Build the model and tokenizer a recipe trains: pretrained or from scratch, swapped through the public API,
optionally wrapped with PEFT LoRA (the mechanism's own parameters stay trainable and are saved with the adapter).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import is_mechanism_parameter
from ..data.assets import resolve_asset
from ..errors import AttnSwapError
from ..evaluation.compare import AttnSpec, parse_attn_specs
from ..registry import PARAMS_ATTR
from .arguments import LoraArguments, ModelArguments, RecipeConfigError

__all__ = ["ModelLoadError", "build_model", "check_block_size", "load_tokenizer", "parse_single_attn", "wrap_lora"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(AttnSwapError):
    """The model or tokenizer could not be loaded (missing folder, unknown Hub name, no Hub access)."""


def _resolve(name: str | None) -> str | None:
    asset = resolve_asset(name)
    return str(asset) if asset is not None else name


def parse_single_attn(text: str) -> AttnSpec:
    """The one attention spec of a recipe (``dagpam:lambda_init=0.1``), validated before anything is loaded."""
    specs = parse_attn_specs(text)
    if len(specs) != 1:
        raise RecipeConfigError(f"a recipe trains one attention; got {len(specs)} in attn={text!r}.")
    return specs[0]


def load_tokenizer(args: ModelArguments) -> Any:
    """The tokenizer of ``args.tokenizer_name`` (default ``model_name_or_path``), with a pad token (EOS if none)."""
    from transformers import AutoTokenizer

    name = _resolve(args.tokenizer_name or args.model_name_or_path)
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
        name = _resolve(args.model_name_or_path)
        if name.startswith((".", "/", "~")) and not Path(name).expanduser().exists():
            raise ModelLoadError(f"model folder not found: {Path(name).expanduser().resolve()}. Check the path.")
        try:
            if block_size is not None:
                check_block_size(AutoConfig.from_pretrained(name), block_size)
            model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **spec.load_kwargs())
            _materialize_meta_parameters(model)
        except OSError as exc:
            raise ModelLoadError(f"could not load the model {name!r}: {exc}. Pass a folder written by "
                                 f"save_pretrained, a Hub name (needs the Hub), or an offline asset name (smollm2).") from None
    else:
        try:
            if args.config_name is not None:
                config = AutoConfig.from_pretrained(_resolve(args.config_name))
            else:
                config = AutoConfig.for_model(args.model_type)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"could not build a config from model_type={args.model_type!r} / "
                                 f"config_name={args.config_name!r}: {exc}") from None
        if args.config_overrides:
            try:
                config.update_from_string(args.config_overrides)
            except ValueError as exc:
                raise RecipeConfigError(f"config_overrides {args.config_overrides!r}: {exc}") from None
        if getattr(config, "vocab_size", None) is not None and config.vocab_size < len(tokenizer):
            config.vocab_size = len(tokenizer)
        if block_size is not None:
            check_block_size(config, block_size)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, **spec.load_kwargs())
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


def wrap_lora(model: nn.Module, args: LoraArguments) -> nn.Module:
    """Wrap ``model`` with PEFT LoRA adapters. The mechanism's parameter modules (``attnswap``) go in
    ``modules_to_save``: fully trainable, and saved in the adapter."""
    from peft import LoraConfig, get_peft_model

    has_mechanism_params = any(is_mechanism_parameter(n) for n, _ in model.named_parameters())
    targets: Any = args.lora_target_modules
    if targets != "all-linear":
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                        target_modules=targets, task_type="CAUSAL_LM",
                        modules_to_save=[PARAMS_ATTR] if has_mechanism_params else None)
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise RecipeConfigError(f"LoRA: {exc}. Set lora_target_modules to module names of this model.") from None
