"""daGPAM: dual-attention generalized probabilistic attention (arXiv 2410.15578; SCIENCE.md, "daGPAM").
Registers itself when imported: the reference, the two-SDPA ``fused`` path (with its CPU kernel) and the parameters
(``W⁻``, λ) it adds to every attention layer.
"""

from __future__ import annotations

from ...registry import register_mechanism
from .attention import cpu_kernel_reason, dagpam_attention, dagpam_attention_fused, dagpam_fused_supports, negative_query
from .options import LAMBDA_CONSTRAINTS, MAX_LAMBDA_INIT, NEG_QUERY_INITS, NEG_QUERY_PROJS, DaGPAMOptions
from .parameters import DaGPAMParameters, make_dagpam_parameters

register_mechanism(
    "dagpam",
    DaGPAMOptions,
    make_params=make_dagpam_parameters,
    needs_rope=True,
    description="Difference of two softmax maps, rows sum to 1; λ=0 is the original model (arXiv 2410.15578).",
    fast={"fused": dagpam_attention_fused},
    fast_supports={"fused": dagpam_fused_supports},
    accepts=("softcap", "s_aux", "sinks"),
    paper=("2410.15578", "Heo & Choi, Generalized Probabilistic Attention Mechanism in Transformers (daGPAM)"),
    exercise=({"lambda_init": 0.3},),
    examples=({"lambda_init": 0.0}, {"lambda_init": 0.1}),
)(dagpam_attention)

__all__ = [
    "LAMBDA_CONSTRAINTS", "MAX_LAMBDA_INIT", "NEG_QUERY_INITS", "NEG_QUERY_PROJS", "DaGPAMOptions", "DaGPAMParameters",
    "cpu_kernel_reason", "dagpam_attention", "dagpam_attention_fused", "dagpam_fused_supports", "make_dagpam_parameters", "negative_query",
]
