"""softmax: the reference attention, with a temperature (SCIENCE.md, "softmax"). Registers itself when imported."""

from __future__ import annotations

from ...registry import register_mechanism
from .attention import softmax_attention, softmax_attention_fused, softmax_fused_supports, softmax_weights
from .options import TEMPERATURE_RANGE, SoftmaxOptions

register_mechanism(
    "softmax", SoftmaxOptions, description="Reference softmax attention with a temperature.",
    fast={"fused": softmax_attention_fused},
    fast_supports={"fused": softmax_fused_supports},
    accepts=("softcap", "s_aux", "sinks"),
    exercise=({"temperature": 0.7},),
    examples=({"temperature": 1.0},),
)(softmax_attention)

__all__ = ["TEMPERATURE_RANGE", "SoftmaxOptions", "softmax_attention", "softmax_attention_fused", "softmax_fused_supports",
           "softmax_weights"]
