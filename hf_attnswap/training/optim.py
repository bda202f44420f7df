"""AdamW with weight-decay groups and a separate learning rate for the mechanism's parameters, and the schedule."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..registry import is_mechanism_parameter
from .arguments import TrainArguments

__all__ = ["build_optimizer", "build_scheduler", "parameter_groups", "peak_learning_rates"]


def peak_learning_rates(args: TrainArguments) -> dict[str, float]:
    """The peak learning rate of each parameter group (by its ``name``)."""
    return {"decay": args.learning_rate, "no_decay": args.learning_rate,
            "attnswap": args.learning_rate if args.attnswap_learning_rate is None else args.attnswap_learning_rate}


def parameter_groups(model: nn.Module, args: TrainArguments) -> list[dict[str, Any]]:
    """Trainable parameters in three groups: ``decay`` (matrices and embeddings, ``weight_decay``), ``no_decay``
    (biases and norm weights: 1-D tensors) and ``attnswap`` (the mechanism's λ and ``W⁻``: no decay, their own
    ``attnswap_learning_rate``). Empty groups are left out. Each group carries a ``name``."""
    groups: dict[str, list[nn.Parameter]] = {"decay": [], "no_decay": [], "attnswap": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if is_mechanism_parameter(name):
            groups["attnswap"].append(p)
        elif p.ndim < 2:
            groups["no_decay"].append(p)
        else:
            groups["decay"].append(p)
    peaks = peak_learning_rates(args)
    settings = {
        "decay": {"weight_decay": args.weight_decay, "lr": peaks["decay"]},
        "no_decay": {"weight_decay": 0.0, "lr": peaks["no_decay"]},
        "attnswap": {"weight_decay": 0.0, "lr": peaks["attnswap"]},
    }
    return [{"name": k, "params": v, **settings[k]} for k, v in groups.items() if v]


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
