"""Rotary position embedding in the Llama/NeoX ``rotate_half`` convention: the one home of its maths.

``cos``/``sin`` broadcast against ``x`` (B, H, Q, d), e.g. shaped (B, 1, Q, d) (:func:`head_tables` of the model's
(B, Q, d) tables). Scaled rotary variants (YaRN, longrope) multiply both tables by an attention factor ``m``, so
``rope`` is ``m`` times a rotation and ``cos² + sin² = m²``, not 1: the inverse divides by it (:func:`inverse_tables`).
:func:`apply_rope`/:func:`unapply_rope` take the model's tables as they are.
"""

from __future__ import annotations

import torch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``(x1, x2) -> (-x2, x1)`` over the two halves of the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """``x·cos + rotate_half(x)·sin`` (``inverse``: ``x·cos − rotate_half(x)·sin``, the rotation by −θ).
    For the inverse of a scaled rotary embedding pass :func:`inverse_tables` of its tables."""
    return torch.addcmul(x * cos, rotate_half(x), sin, value=-1.0 if inverse else 1.0)


def rope_adjoint(g: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Transpose of :func:`rope` with the same tables (``rotate_half`` is antisymmetric): ``g·cos ∓ rotate_half(g·sin)``."""
    return torch.add(g * cos, rotate_half(g * sin), alpha=1.0 if inverse else -1.0)


def inverse_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tables with which ``rope(·, inverse=True)`` undoes ``rope(·, cos, sin)`` exactly, scaled tables included:
    ``(cos, sin) / (cos² + sin²)``. (Both halves of a rotary pair share one angle, so the per-element norm is
    the pair's.)"""
    norm = cos * cos + sin * sin
    return cos / norm, sin / norm


def head_tables(cos: torch.Tensor, sin: torch.Tensor, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's tables (B, Q, d), as Transformers passes ``position_embeddings``, broadcast over heads:
    (B, 1, Q, d), in ``dtype`` if given."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (cos, sin) if dtype is None else (cos.to(dtype), sin.to(dtype))


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (B, H, Q, d) by position, as the model does; ``cos, sin``: (B, Q, d)."""
    return rope(x, *head_tables(cos, sin))


def unapply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`apply_rope`, also for scaled tables (YaRN, longrope: ``cos² + sin² ≠ 1``): recovers the
    pre-rotary query, (B, H, Q, d)."""
    return rope(x, *inverse_tables(*head_tables(cos, sin)), inverse=True)
