"""Stage 2 of a conversion, optionally distilled: the next-token loss plus ``β · KL(teacher ‖ student)`` on the
original model's next-token distributions (Mamba-in-the-Llama, MOHAWK; SCIENCE.md, "Converting a pretrained model").
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from ..errors import OptionError

IGNORE_INDEX = -100


class DistillObjective(nn.Module):
    """``student`` trained on ``loss = lm_weight · next-token loss + kl_weight · KL(p_teacher ‖ p_student)``.

    Both terms are sums over the target tokens (labels != -100) divided by ``num_items_in_batch`` (the training
    loop's count for the whole step), so accumulation and several processes give the same update. The teacher
    (the original model, frozen, eval mode) is held outside the module's parameters and state dict: checkpoints
    hold only the student. ``lm_weight = 0`` is pure distillation (the student learns the teacher's distributions, not
the training text's tokens). ``forward`` returns ``.loss``, ``.lm_loss``, ``.kl`` and ``.metrics`` (both terms, which
    the training loop logs; like the loss, normalised by ``num_items_in_batch``).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, kl_weight: float, temperature: float = 1.0,
                 lm_weight: float = 1.0) -> None:
        super().__init__()
        if not kl_weight > 0 or not temperature > 0 or not lm_weight >= 0:
            raise OptionError("distillation needs kl_weight > 0, temperature > 0 and lm_weight >= 0; got "
                              f"{kl_weight}, {temperature}, {lm_weight}.")
        self.student = student
        teacher.eval().requires_grad_(False)
        object.__setattr__(self, "teacher", teacher)  # not a submodule: not trained, not checkpointed
        self.kl_weight, self.temperature, self.lm_weight = float(kl_weight), float(temperature), float(lm_weight)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
                num_items_in_batch: int | None = None, **kwargs: Any) -> Any:
        """input_ids, labels, attention_mask: (B, T); ``kwargs`` (e.g. packed documents' ``position_ids`` and
        ``use_cache=False``) go to the student and the teacher alike."""
        out = self.student(input_ids=input_ids, attention_mask=attention_mask, **kwargs)  # no labels: one log-softmax
        with torch.no_grad():
            t_logits = self.teacher(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits
        targets = labels[:, 1:]  # (B, T-1): the next token of each position, -100 where it is not a target
        keep = targets != IGNORE_INDEX
        denom = num_items_in_batch if num_items_in_batch else max(int(keep.sum()), 1)
        log_p = torch.log_softmax(out.logits[:, :-1].float(), -1)  # (B, T-1, V)
        lm_loss = -(log_p.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep).sum() / denom
        t = t_logits[:, :-1].float() / self.temperature
        s_log = log_p if self.temperature == 1.0 else torch.log_softmax(out.logits[:, :-1].float() / self.temperature, -1)
        kl = torch.nn.functional.kl_div(s_log, torch.log_softmax(t, -1), log_target=True,
                                        reduction="none").sum(-1)  # (B, T-1)
        kl = (kl * keep).sum() / denom * self.temperature**2
        loss = self.kl_weight * kl if self.lm_weight == 0 else self.lm_weight * lm_loss + self.kl_weight * kl
        return SimpleNamespace(loss=loss, lm_loss=lm_loss.detach(), kl=kl.detach(), logits=out.logits,
                               metrics={"distill/lm_loss": float(lm_loss.detach()), "distill/kl": float(kl.detach())})
