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
    """``student`` trained on ``loss = next-token loss + kl_weight · KL(p_teacher ‖ p_student)``.

    Both terms are sums over the target tokens (labels != -100) divided by ``num_items_in_batch`` (the training
    loop's count for the whole step), so accumulation and several processes give the same update. The teacher
    (the original model, frozen, eval mode) is held outside the module's parameters and state dict: checkpoints
    hold only the student. ``forward`` returns ``.loss``, ``.lm_loss``, ``.kl`` and ``.metrics`` (both terms, which
    the training loop logs; like the loss, normalised by ``num_items_in_batch``).
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, kl_weight: float, temperature: float = 1.0) -> None:
        super().__init__()
        if not kl_weight > 0 or not temperature > 0:
            raise OptionError(f"distillation needs kl_weight > 0 and temperature > 0; got {kl_weight}, {temperature}.")
        self.student = student
        teacher.eval().requires_grad_(False)
        object.__setattr__(self, "teacher", teacher)  # not a submodule: not trained, not checkpointed
        self.kl_weight, self.temperature = float(kl_weight), float(temperature)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None,
                num_items_in_batch: int | None = None, **kwargs: Any) -> Any:
        """input_ids, labels, attention_mask: (B, T)."""
        out = self.student(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                           num_items_in_batch=num_items_in_batch, **kwargs)
        with torch.no_grad():
            t_logits = self.teacher(input_ids=input_ids, attention_mask=attention_mask).logits
        targets = labels[:, 1:] != IGNORE_INDEX  # the positions whose next token is a target
        s = out.logits[:, :-1].float() / self.temperature
        t = t_logits[:, :-1].float() / self.temperature
        kl = torch.nn.functional.kl_div(torch.log_softmax(s, -1), torch.log_softmax(t, -1), log_target=True,
                                        reduction="none").sum(-1)  # (B, T-1)
        denom = num_items_in_batch if num_items_in_batch else max(int(targets.sum()), 1)
        kl = (kl * targets).sum() / denom * self.temperature**2
        return SimpleNamespace(loss=out.loss + self.kl_weight * kl, lm_loss=out.loss.detach(), kl=kl.detach(),
                               logits=out.logits,
                               metrics={"distill/lm_loss": float(out.loss.detach()), "distill/kl": float(kl.detach())})
