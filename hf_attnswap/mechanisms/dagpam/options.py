"""The options of daGPAM."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...errors import OptionError
from ...options import MechanismOptions, check_backend, check_bool, check_choice, check_float

#: daGPAM ``lambda_init`` <= 1000: the weights are ``(1+λ)P⁺ − λP⁻``, so λ scales every output; at 1e30 they are
#: inf − inf = NaN. (The paper's λ is below 1.)
MAX_LAMBDA_INIT = 1000.0



LAMBDA_CONSTRAINTS = ("none", "nonneg")
NEG_QUERY_PROJS = ("shared", "per_head")
NEG_QUERY_INITS = ("neg_identity", "identity", "normal")


@dataclass
class DaGPAMOptions(MechanismOptions):
    """daGPAM: ``P = (1+λ) softmax(Q⁺Kᵀ s) - λ softmax(Q⁻Kᵀ s)``, ``Q⁻ = ReLU(Q⁺) W⁻`` (arXiv 2410.15578).

    - ``lambda_init`` (>= 0, default 0: the swapped model equals the original exactly).
    - ``trainable_lambda``: λ is a trained parameter (default) or a fixed one.
    - ``lambda_constraint``: ``"none"`` (λ is the parameter) or ``"nonneg"`` (λ = softplus(raw); needs
      ``lambda_init > 0``, since softplus never reaches 0).
    - ``tied_lambda``: one λ per head (rows sum to 1), or untied ``(1+λ⁺)S⁺ - λ⁻S⁻`` (rows sum to
      ``1+λ⁺-λ⁻``, fixed per head).
    - ``neg_query_proj``: ``"shared"`` (one ``d×d`` W⁻ per layer) or ``"per_head"``.
    - ``neg_query_init``: ``"neg_identity"`` (``-I``), ``"identity"`` or ``"normal"`` (std ``1/sqrt(d)``).
    - ``backend``: ``"auto"``, ``"reference"`` or ``"fused"`` (two SDPA calls, no n×n matrix).
    """

    mechanism: ClassVar[str] = "dagpam"
    lambda_init: float = 0.0
    trainable_lambda: bool = True
    lambda_constraint: str = "none"
    tied_lambda: bool = True
    neg_query_proj: str = "shared"
    neg_query_init: str = "neg_identity"
    backend: str = "auto"

    def __post_init__(self) -> None:
        self.backend = check_backend("dagpam", self.backend, self.backends)
        self.lambda_init = check_float("dagpam", "lambda_init", self.lambda_init, minimum=0.0, maximum=MAX_LAMBDA_INIT)
        self.trainable_lambda = check_bool("dagpam", "trainable_lambda", self.trainable_lambda)
        self.lambda_constraint = check_choice("dagpam", "lambda_constraint", self.lambda_constraint, LAMBDA_CONSTRAINTS)
        self.tied_lambda = check_bool("dagpam", "tied_lambda", self.tied_lambda)
        self.neg_query_proj = check_choice("dagpam", "neg_query_proj", self.neg_query_proj, NEG_QUERY_PROJS)
        self.neg_query_init = check_choice("dagpam", "neg_query_init", self.neg_query_init, NEG_QUERY_INITS)
        if self.lambda_constraint == "nonneg" and self.lambda_init == 0.0:
            raise OptionError(
                "dagpam: lambda_constraint='nonneg' parameterises λ = softplus(raw), which can never be exactly 0, "
                "so lambda_init=0 is impossible. Use lambda_init > 0 (e.g. 0.1), or lambda_constraint='none'."
            )
