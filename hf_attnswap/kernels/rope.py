"""Rotary position embedding, in every layout Transformers models use: the one home of its maths.

A rotary embedding rotates pairs of dims of each query/key head ``x`` (B, H, Q, d) by position:
``rope(x) = x·cos + rot(x)·sin``, where ``rot`` maps each pair ``(a, b)`` to ``(−x_b, x_a)`` and both dims of a pair
share one table value. The pairs (:class:`RotaryLayout`):

- ``"half"``: ``(i, i + r/2)`` over the first ``r`` dims (Llama/NeoX ``rotate_half``);
- ``"interleaved"``: ``(2i, 2i + 1)`` (GPT-J's ``rotate_every_two``, Cohere, GLM);
- partial rotary (Phi, GPT-NeoX, GLM, GPT-J's ``rotary_dim``): only the first ``rotary_dim`` dims rotate, the rest
  pass through (their tables are 1 and 0, and ``rot`` is 0 there).

Tables are full width (B, Q, d) (or (B, 1, Q, d), :func:`head_tables`), one value per dim, in the layout's order.
Scaled rotary variants (YaRN, longrope) multiply both tables by an attention factor ``m``, so ``rope`` is ``m`` times
a rotation and ``cos² + sin² = m²``, not 1: the inverse divides by it (:func:`inverse_tables`).
"""

from __future__ import annotations

from dataclasses import dataclass
import torch

PAIRS = ("half", "interleaved")


@dataclass(frozen=True)
class RotaryLayout:
    """How the dims of a head pair up for the rotation: ``pairs`` (``"half"`` or ``"interleaved"``) over the first
    ``rotary_dim`` dims (``None``: all of them)."""

    pairs: str = "half"
    rotary_dim: int | None = None

    def __post_init__(self) -> None:
        if self.pairs not in PAIRS:
            raise ValueError(f"rotary pairs must be one of {PAIRS}, got {self.pairs!r}")
        if self.rotary_dim is not None and (self.rotary_dim <= 0 or self.rotary_dim % 2):
            raise ValueError(f"rotary_dim must be a positive even number, got {self.rotary_dim}")


LLAMA = RotaryLayout()


class Rotary(tuple):
    """The rotary tables of one attention call: a ``(cos, sin)`` pair, each (B, Q, d) at full head width, that also
    carries its :class:`RotaryLayout` (``.layout``). A plain ``(cos, sin)`` tuple means :data:`LLAMA` (full
    ``rotate_half``)."""

    layout: RotaryLayout

    def __new__(cls, cos: torch.Tensor, sin: torch.Tensor, layout: RotaryLayout = LLAMA) -> Rotary:
        self = super().__new__(cls, (cos, sin))
        self.layout = layout
        return self


def layout_of(tables: tuple[torch.Tensor, torch.Tensor]) -> RotaryLayout:
    """The :class:`RotaryLayout` of ``(cos, sin)`` tables: a :class:`Rotary`'s own, :data:`LLAMA` for a plain pair."""
    return getattr(tables, "layout", LLAMA)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``(x1, x2) -> (-x2, x1)`` over the two halves of the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotate_every_two(x: torch.Tensor) -> torch.Tensor:
    """``(x_{2i}, x_{2i+1}) -> (-x_{2i+1}, x_{2i})`` over adjacent pairs of the last dim."""
    return torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)


def rotate(x: torch.Tensor, layout: RotaryLayout = LLAMA) -> torch.Tensor:
    """``rot(x)``: each rotary pair ``(a, b)`` -> ``(−x_b, x_a)``; 0 on pass-through dims. An antisymmetric linear
    map (``rotᵀ = −rot``), which :func:`rope_adjoint` relies on."""
    turn = rotate_half if layout.pairs == "half" else rotate_every_two
    r = layout.rotary_dim
    if r is None or r >= x.shape[-1]:
        return turn(x)
    return torch.cat((turn(x[..., :r]), torch.zeros_like(x[..., r:])), dim=-1)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False,
         layout: RotaryLayout = LLAMA) -> torch.Tensor:
    """``x·cos + rot(x)·sin`` (``inverse``: ``x·cos − rot(x)·sin``, the rotation by −θ). For the inverse of a
    scaled rotary embedding pass :func:`inverse_tables` of its tables."""
    return torch.addcmul(x * cos, rotate(x, layout), sin, value=-1.0 if inverse else 1.0)


def rope_adjoint(g: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False,
                 layout: RotaryLayout = LLAMA) -> torch.Tensor:
    """Transpose of :func:`rope` with the same tables (``rot`` is antisymmetric): ``g·cos ∓ rot(g·sin)``."""
    return torch.add(g * cos, rotate(g * sin, layout), alpha=1.0 if inverse else -1.0)


def inverse_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tables with which ``rope(·, inverse=True)`` undoes ``rope(·, cos, sin)`` exactly, scaled tables included:
    ``(cos, sin) / (cos² + sin²)``. (Both dims of a rotary pair share one angle, so the per-element norm is the
    pair's; on pass-through dims it is 1.)"""
    norm = cos * cos + sin * sin
    return cos / norm, sin / norm


def head_tables(cos: torch.Tensor, sin: torch.Tensor, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The tables (B, Q, d) broadcast over heads: (B, 1, Q, d), in ``dtype`` if given."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (cos, sin) if dtype is None else (cos.to(dtype), sin.to(dtype))


def full_width_tables(cos: torch.Tensor, sin: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tables (B, Q, r) of a partial rotary embedding (``r < head_dim``) padded to (B, Q, head_dim): 1 and 0 on the
    pass-through dims, so that :func:`rope` leaves them as they are."""
    r = cos.shape[-1]
    if r == head_dim:
        return cos, sin
    if r > head_dim:
        raise ValueError(f"rotary tables of width {r} for heads of size {head_dim}")
    pad = (*cos.shape[:-1], head_dim - r)
    return (torch.cat((cos, cos.new_ones(pad)), dim=-1), torch.cat((sin, sin.new_zeros(pad)), dim=-1))


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: RotaryLayout = LLAMA) -> torch.Tensor:
    """Rotate ``x`` (B, H, Q, d) by position, as the model does; ``cos, sin``: (B, Q, d)."""
    return rope(x, *head_tables(cos, sin), layout=layout)


def unapply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: RotaryLayout = LLAMA) -> torch.Tensor:
    """Inverse of :func:`apply_rope`, also for scaled tables (YaRN, longrope: ``cos² + sin² ≠ 1``): recovers the
    pre-rotary query, (B, H, Q, d)."""
    return rope(x, *inverse_tables(*head_tables(cos, sin)), inverse=True, layout=layout)
