"""Built-in mechanisms, one file each (reference forward; fast forwards will sit beside them)."""

from __future__ import annotations

from ..options import DaGPAMOptions, PolynomialOptions, SoftmaxOptions
from ..registry import register_mechanism
from .dagpam import dagpam_attention, dagpam_attention_fused, make_dagpam_parameters
from .polynomial import (
    polynomial_attention,
    polynomial_attention_fused,
    polynomial_attention_linear,
    polynomial_attention_triton,
    polynomial_linear_supports,
    polynomial_triton_supports,
)
from .softmax import softmax_attention, softmax_attention_fused


def register_builtins() -> None:
    """Register softmax, polynomial and dagpam (idempotent)."""
    register_mechanism(
        "softmax", SoftmaxOptions, description="Reference softmax attention with a temperature.",
        fast={"fused": softmax_attention_fused},
    )(softmax_attention)
    register_mechanism(
        "polynomial", PolynomialOptions, description="x^p with a 1/sqrt(N) length scale, unnormalised (arXiv 2410.18613).",
        fast={"fused": polynomial_attention_fused, "triton": polynomial_attention_triton, "linear": polynomial_attention_linear},
        fast_supports={"triton": polynomial_triton_supports, "linear": polynomial_linear_supports},
        auto=("triton", "fused"),  # "linear" is opt-in
    )(polynomial_attention)
    register_mechanism(
        "dagpam",
        DaGPAMOptions,
        make_params=make_dagpam_parameters,
        needs_rope=True,
        description="Difference of two softmax maps, rows sum to 1; λ=0 is the original model (arXiv 2410.15578).",
        fast={"fused": dagpam_attention_fused},
    )(dagpam_attention)
