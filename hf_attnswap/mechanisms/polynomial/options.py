"""The options of polynomial attention, and the one home of its degree-2 (linear form) check."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...errors import OptionError
from ...options import MechanismOptions, check_backend, check_choice, check_float, check_int

#: polynomial ``degree`` <= 16: ``s**p`` of a score of 100 is 1e32 at p=16, near float32's 3e38.
MAX_DEGREE = 16

LENGTH_SCALES = ("visible", "fixed", "none")
#: The one degree the polynomial ``"linear"`` backend and :class:`~hf_attnswap.kernels.polynomial_linear.PolynomialLinearState`
#: compute: ``(q·k)^2 = φ(q)·φ(k)`` with d(d+1)/2 features.
LINEAR_DEGREE = 2


def linear_degree_problem(degree: int) -> str | None:
    """Why linear attention cannot compute polynomial attention of ``degree`` (None: it can), as the end of a sentence
    whose subject is what needs it: "backend='linear' needs degree=2, got degree=3 ...". The one home of this check."""
    if degree == LINEAR_DEGREE:
        return None
    default = " (the default is 3)" if degree == PolynomialOptions.degree else ""
    return (f"needs degree={LINEAR_DEGREE}, got degree={degree}{default}: only (q·k)^2 has the finite feature map "
            "φ(q)·φ(k) that linear attention uses")


@dataclass
class PolynomialOptions(MechanismOptions):
    """``a_ij = c_i * (s_ij + offset)**degree`` on visible keys, exactly 0 elsewhere (arXiv 2410.18613).

    ``offset``: a constant added to every scaled score before the power; 0 (default) is the paper's ``x^p``. An even
    degree weighs a key by ``|s|`` alone, so a key far *against* the query counts as much as one aligned with it;
    with an offset ``β > 0``, ``(s + β)²`` grows with ``s`` wherever ``s > -β``, as softmax's ``exp(s)`` does
    (``(s + β)² = β² + 2βs + s²``: a uniform part, a linear part and the square). It is a fixed option, not a
    learned parameter; the query/key projections learn around it. Every backend computes it (the fast paths as
    ``q̃ = [q, β/scaling]``, ``k̃ = [k, 1]``, so the linear state has ``(d+1)(d+2)/2`` features), except ``triton``.

    ``length_scale``: ``"visible"`` -> ``c_i = 1/sqrt(N_i)`` (keys query i sees, cache-consistent);
    ``"fixed"`` -> ``1/sqrt(fixed_length)``; ``"none"`` -> ``1``.
    ``backend``: ``"auto"``, ``"reference"``, ``"fused"`` (blocked, O(n·block) memory, CPU and CUDA),
    ``"triton"`` (CUDA kernel; on CPU only with ``TRITON_INTERPRET=1``, for testing) or ``"linear"``
    (``degree=2`` only: linear attention with the d(d+1)/2 features of ``(q·k)²``, linear time in the
    length; plain causal, KV-cache offset, key padding or no mask; no attention dropout. ``"auto"`` picks it
    only where it is faster: from 7,168 keys, without gradients, for more than one chunk of queries, and
    under a ``PolynomialLinearCache``, which only it can read).
    """

    mechanism: ClassVar[str] = "polynomial"
    degree: int = 3
    length_scale: str = "visible"
    fixed_length: int | None = None
    backend: str = "auto"
    offset: float = 0.0

    def __post_init__(self) -> None:
        self.backend = check_backend("polynomial", self.backend, self.backends)
        self.offset = check_float("polynomial", "offset", self.offset)
        self.degree = check_int("polynomial", "degree", self.degree, minimum=1, maximum=MAX_DEGREE)
        problem = linear_degree_problem(self.degree) if self.backend == "linear" else None
        if problem is not None:
            raise OptionError(f"polynomial: backend='linear' {problem}. Set 'degree': 2, or use backend='fused' for "
                              "other degrees.")
        self.length_scale = check_choice("polynomial", "length_scale", self.length_scale, LENGTH_SCALES)
        if self.length_scale == "fixed":
            if self.fixed_length is None:
                raise OptionError(
                    "polynomial: length_scale='fixed' needs option 'fixed_length' (the N in 1/sqrt(N), "
                    "e.g. your training sequence length)."
                )
            self.fixed_length = check_int("polynomial", "fixed_length", self.fixed_length, minimum=1)
        elif self.fixed_length is not None:
            raise OptionError(
                f"polynomial: option 'fixed_length' is only used with length_scale='fixed', "
                f"but length_scale={self.length_scale!r}. Remove it or set length_scale='fixed'."
            )
