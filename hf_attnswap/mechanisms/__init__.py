"""Built-in mechanisms, one file each (reference forward; fast forwards will sit beside them)."""

from __future__ import annotations

from ..options import DaGPAMOptions, PolynomialOptions, SoftmaxOptions
from ..registry import register_mechanism
from .dagpam import dagpam_attention, make_dagpam_parameters
from .polynomial import polynomial_attention
from .softmax import softmax_attention


def register_builtins() -> None:
    """Register softmax, polynomial and dagpam (idempotent)."""
    register_mechanism("softmax", SoftmaxOptions, description="Reference softmax attention with a temperature.")(
        softmax_attention
    )
    register_mechanism(
        "polynomial", PolynomialOptions, description="x^p with a 1/sqrt(N) length scale, unnormalised (arXiv 2410.18613)."
    )(polynomial_attention)
    register_mechanism(
        "dagpam",
        DaGPAMOptions,
        make_params=make_dagpam_parameters,
        needs_rope=True,
        description="Difference of two softmax maps, rows sum to 1; λ=0 is the original model (arXiv 2410.15578).",
    )(dagpam_attention)
