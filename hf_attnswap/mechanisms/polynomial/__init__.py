"""polynomial: ``a_ij = c_i * s_ij**p`` on visible keys, exactly 0 elsewhere (arXiv 2410.18613; SCIENCE.md).
Registers itself when imported: the reference, the blocked ``fused`` kernel, ``triton`` and the degree-2 ``linear`` form,
which also runs from a fixed-size state in Transformers' ``Cache`` (``cache.py``: what ``generate()`` uses for an
all-``linear`` model).
"""

from __future__ import annotations

from ...registry import register_mechanism
from .attention import (
    LINEAR_AUTO_MIN_KEYS,
    length_scale_constant,
    length_scale_vector,
    linear_decode_state,
    linear_mask_layout,
    polynomial_attention,
    polynomial_attention_fused,
    polynomial_attention_linear,
    polynomial_attention_triton,
    polynomial_fused_supports,
    polynomial_linear_pays_off,
    polynomial_linear_supports,
    polynomial_triton_supports,
    polynomial_weights,
    with_offset,
)
from .cache import PolynomialLinearCache, PolynomialLinearLayer, linear_cache_problem, linear_generation_cache
from .options import LENGTH_SCALES, LINEAR_DEGREE, MAX_DEGREE, PolynomialOptions, linear_degree_problem

register_mechanism(
    "polynomial", PolynomialOptions, description="x^p with a 1/sqrt(N) length scale, unnormalised (arXiv 2410.18613).",
    fast={"fused": polynomial_attention_fused, "triton": polynomial_attention_triton, "linear": polynomial_attention_linear},
    fast_supports={"fused": polynomial_fused_supports, "triton": polynomial_triton_supports,
                   "linear": polynomial_linear_supports},
    accepts=("softcap",),
    refuses={k: ("an attention sink is a logit that joins a softmax denominator, and polynomial attention has no "
                 "denominator (rows are not normalised), so a sink has no meaning here. Use softmax or dagpam for "
                 "models with attention sinks") for k in ("s_aux", "sinks")},
    auto=("triton", "linear", "fused"),  # linear only where it can run and pays off: long prefills, no gradients
    auto_when={"linear": polynomial_linear_pays_off},
    state_backend="linear",  # a PolynomialLinearCache's layers feed the linear form (auto picks it there too)
    generation_cache=linear_generation_cache,
    paper=("2410.18613", "Saratchandran et al., Rethinking Attention: Polynomial Alternatives to Softmax in Transformers"),
    exercise=({"degree": 3}, {"degree": 2}, {"degree": 2, "offset": 0.5}),  # degree 2: the linear form computes only it
    examples=({"degree": 3},),
)(polynomial_attention)

__all__ = [
    "LENGTH_SCALES", "LINEAR_AUTO_MIN_KEYS", "LINEAR_DEGREE", "MAX_DEGREE", "PolynomialLinearCache", "PolynomialLinearLayer",
    "PolynomialOptions", "linear_cache_problem", "linear_generation_cache", "length_scale_constant", "length_scale_vector",
    "linear_decode_state", "linear_degree_problem", "linear_mask_layout", "polynomial_attention",
    "polynomial_attention_fused", "polynomial_attention_linear", "polynomial_attention_triton",
    "polynomial_fused_supports", "polynomial_linear_pays_off", "polynomial_linear_supports", "polynomial_triton_supports", "polynomial_weights",
    "with_offset",
]
