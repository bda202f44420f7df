"""The options of softmax attention."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...options import MechanismOptions, check_backend, check_float

#: ``temperature`` in [1e-4, 1e4]: outside, ``s/T`` overflows or underflows in float32/bfloat16 and the backends
#: disagree (``T=1e-40`` gives NaN, ``T=1e300`` a zero scale that SDPA rejects), with no use that T=1e±4 lacks.
TEMPERATURE_RANGE = (1e-4, 1e4)

@dataclass
class SoftmaxOptions(MechanismOptions):
    """``a_ij = softmax_j(s_ij / temperature)`` over visible keys. ``temperature=1`` reproduces the model.

    ``backend``: ``"auto"``, ``"reference"`` or ``"fused"`` (SDPA with scale ``scaling / temperature``).
    """

    mechanism: ClassVar[str] = "softmax"
    temperature: float = 1.0
    backend: str = "auto"

    def __post_init__(self) -> None:
        self.temperature = check_float("softmax", "temperature", self.temperature, minimum=TEMPERATURE_RANGE[0],
                                       maximum=TEMPERATURE_RANGE[1])
        self.backend = check_backend("softmax", self.backend, self.backends)
