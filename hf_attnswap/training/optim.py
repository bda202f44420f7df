"""AdamW with weight-decay groups, a separate learning rate for the mechanism's parameters and for the weights that
``learning_rate_patterns`` names, and the schedule."""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from ..registry import is_mechanism_parameter
from .arguments import RecipeConfigError, TrainArguments, learning_rate_pairs

__all__ = ["build_optimizer", "build_scheduler", "check_learning_rate_patterns", "parameter_groups",
           "peak_learning_rates"]


def peak_learning_rates(args: TrainArguments) -> dict[str, float]:
    """The peak learning rate of each parameter group (by its ``name``): ``decay``, ``no_decay``, ``attnswap``, and
    ``decay:REGEX`` / ``no_decay:REGEX`` for each pair of ``learning_rate_patterns``."""
    peaks = {"decay": args.learning_rate, "no_decay": args.learning_rate,
             "attnswap": args.learning_rate if args.attnswap_learning_rate is None else args.attnswap_learning_rate}
    for pattern, lr in learning_rate_pairs(args.learning_rate_patterns):
        peaks[f"decay:{pattern}"] = peaks[f"no_decay:{pattern}"] = lr
    return peaks


def parameter_groups(model: nn.Module, args: TrainArguments) -> list[dict[str, Any]]:
    """Trainable parameters in groups: ``decay`` (matrices and embeddings, ``weight_decay``), ``no_decay`` (biases
    and norm weights: 1-D tensors) and ``attnswap`` (the mechanism's λ and ``W⁻``: no decay, their own
    ``attnswap_learning_rate``). A weight that a pattern of ``learning_rate_patterns`` matches (the first one) goes
    to ``decay:REGEX`` or ``no_decay:REGEX``, at that pattern's rate. Empty groups are left out; each group carries
    a ``name``. A pattern that matches no trainable parameter, or only ones that an earlier pattern took, is a
    :class:`RecipeConfigError`."""
    pairs = learning_rate_pairs(args.learning_rate_patterns)
    compiled = [(pattern, re.compile(pattern)) for pattern, _ in pairs]
    groups: dict[str, list[nn.Parameter]] = {"decay": [], "no_decay": [], "attnswap": []}
    used: set[str] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if is_mechanism_parameter(name):
            groups["attnswap"].append(p)
            continue
        base = "no_decay" if p.ndim < 2 else "decay"
        pattern = next((pat for pat, rx in compiled if rx.search(name)), None)
        if pattern is not None:
            used.add(pattern)
        groups.setdefault(base if pattern is None else f"{base}:{pattern}", []).append(p)
    if len(used) < len(pairs):
        check_learning_rate_patterns([n for n, p in model.named_parameters() if p.requires_grad], args)
        shadowed = [pattern for pattern, _ in pairs if pattern not in used]
        raise RecipeConfigError(f"learning_rate_patterns: {', '.join(map(repr, shadowed))} matches only weights that "
                                "an earlier pair already sets (the first pair that matches wins); drop it or put it "
                                "first.")
    peaks = peak_learning_rates(args)
    return [{"name": k, "params": v, "lr": peaks[k],
             "weight_decay": args.weight_decay if k.split(":")[0] == "decay" else 0.0}
            for k, v in groups.items() if v]


def check_learning_rate_patterns(names: list[str], args: TrainArguments) -> None:
    """A :class:`RecipeConfigError` if a pattern of ``args.learning_rate_patterns`` matches none of ``names`` (the
    trainable parameters), so that a recipe can check it before it trains anything."""
    unused = [pattern for pattern, _ in learning_rate_pairs(args.learning_rate_patterns)
              if not any(re.search(pattern, n) for n in names)]
    if unused:
        raise RecipeConfigError(f"learning_rate_patterns: {', '.join(map(repr, unused))} matches no trainable "
                                f"parameter; check the names (e.g. {', '.join(names[:3])}, ...).")


def build_optimizer(model: nn.Module, args: TrainArguments) -> torch.optim.Optimizer:
    """``torch.optim.AdamW`` over :func:`parameter_groups`."""
    return torch.optim.AdamW(parameter_groups(model, args), lr=args.learning_rate,
                             betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)


def build_scheduler(optimizer: torch.optim.Optimizer, args: TrainArguments, total_steps: int) -> Any:
    """Warmup for ``num_warmup_steps`` then ``lr_scheduler_type`` decay over ``total_steps`` (Transformers'
    ``get_scheduler``); every group follows the same multiplier of its own peak rate."""
    from transformers import get_scheduler

    return get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.num_warmup_steps,
                         num_training_steps=total_steps)
