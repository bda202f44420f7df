"""The parameters daGPAM adds to every attention layer: ``W⁻`` and λ (SCIENCE.md, "daGPAM")."""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import initialization as hf_init

from .options import DaGPAMOptions


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class DaGPAMParameters(nn.Module):
    """The per-layer parameters daGPAM adds to an attention module.

    - ``neg_query_weight``: ``W⁻``, (d, d) shared by the heads (default) or (H, d, d) per head.
    - ``lambda_param`` (tied) or ``lambda_pos_param``/``lambda_neg_param`` (untied): (H,). With
      ``lambda_constraint="nonneg"`` they hold the raw value and λ = softplus(raw).

    ``forward(query)`` maps the pre-rotary query (B, H, Q, d) to ``(Q⁻ (B, H, Q, d), λ⁺ (H,), λ⁻ (H,))``.
    Going through ``forward`` (rather than reading attributes) lets PEFT's ``modules_to_save`` wrap it.
    """

    def __init__(self, num_heads: int, head_dim: int, options: DaGPAMOptions) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.options = num_heads, head_dim, options
        shape = (head_dim, head_dim) if options.neg_query_proj == "shared" else (num_heads, head_dim, head_dim)
        self.neg_query_weight = nn.Parameter(torch.empty(shape))
        names = ("lambda_param",) if options.tied_lambda else ("lambda_pos_param", "lambda_neg_param")
        for name in names:
            setattr(self, name, nn.Parameter(torch.empty(num_heads), requires_grad=options.trainable_lambda))
        self.reset_parameters()

    def extra_repr(self) -> str:
        o = self.options
        return (f"heads={self.num_heads}, head_dim={self.head_dim}, W⁻={o.neg_query_proj}/{o.neg_query_init}, "
                f"λ={'tied' if o.tied_lambda else 'untied'}, constraint={o.lambda_constraint}")

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise as SCIENCE.md says. Uses Transformers' init functions, so parameters already loaded from a
        checkpoint (flagged ``_is_hf_initialized``) are left alone."""
        if self.neg_query_weight.is_meta:
            return
        init = self.options.neg_query_init
        if init == "normal":
            hf_init.normal_(self.neg_query_weight, mean=0.0, std=self.head_dim**-0.5)
        else:
            eye = torch.eye(self.head_dim, dtype=self.neg_query_weight.dtype, device=self.neg_query_weight.device)
            eye = eye.expand_as(self.neg_query_weight)
            hf_init.copy_(self.neg_query_weight, -eye if init == "neg_identity" else eye)
        raw = self.options.lambda_init
        if self.options.lambda_constraint == "nonneg":
            raw = _inverse_softplus(raw)
        for p in self._lambda_params():
            hf_init.constant_(p, raw)

    def _lambda_params(self) -> list[nn.Parameter]:
        if self.options.tied_lambda:
            return [self.lambda_param]
        return [self.lambda_pos_param, self.lambda_neg_param]

    def lambdas(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(λ⁺, λ⁻)``, each (H,), after the constraint."""
        vals = self._lambda_params()
        if self.options.lambda_constraint == "nonneg":
            vals = [nn.functional.softplus(v) for v in vals]
        return (vals[0], vals[0]) if len(vals) == 1 else (vals[0], vals[1])

    def forward(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """query: pre-rotary (B, H, Q, d). Returns ``(ReLU(query) W⁻, λ⁺, λ⁻)``."""
        relu_q = torch.relu(query)
        w = self.neg_query_weight.to(query.dtype)
        neg = relu_q @ w if w.dim() == 2 else torch.einsum("bhqd,hde->bhqe", relu_q, w)
        lam_pos, lam_neg = self.lambdas()
        return neg, lam_pos, lam_neg


def make_dagpam_parameters(num_heads: int, head_dim: int, options: DaGPAMOptions) -> DaGPAMParameters:
    """Factory the registry calls for each attention layer."""
    return DaGPAMParameters(num_heads, head_dim, options)
