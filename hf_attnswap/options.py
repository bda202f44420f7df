"""One validated dataclass of options per built-in mechanism.

Every options class derives from :class:`MechanismOptions`. Its ``__post_init__`` rejects a bad value
with an :class:`~hf_attnswap.errors.OptionError` that names the field, the value and the allowed range.
User-defined mechanisms get the same treatment by subclassing :class:`MechanismOptions` and calling the
``check_*`` helpers below in their own ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import sys
from dataclasses import dataclass
from typing import Any, ClassVar

from .errors import OptionError


def _is_bool(value: Any) -> bool:
    numpy = sys.modules.get("numpy")
    return isinstance(value, bool) or (numpy is not None and isinstance(value, numpy.bool_))  # NumPy's is no bool


def check_float(owner: str, name: str, value: Any, *, minimum: float | None = None, strict: bool = False,
                maximum: float | None = None) -> float:
    """Return ``value`` as a float, or raise if it is not a real number ``>= minimum`` (``> minimum`` if strict)
    and ``<= maximum``. NumPy scalars are accepted (``numbers.Real``)."""
    if _is_bool(value) or not isinstance(value, numbers.Real):
        raise OptionError(f"{owner}: option {name!r} must be a number, got {value!r} ({type(value).__name__}).")
    value = float(value)
    if not math.isfinite(value):
        raise OptionError(f"{owner}: option {name!r} must be finite, got {value!r}.")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise OptionError(f"{owner}: option {name!r} must be {bound}, got {value!r}.")
    if maximum is not None and value > maximum:
        raise OptionError(f"{owner}: option {name!r} must be <= {maximum:g}, got {value!r}.")
    return value


def check_int(owner: str | None, name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None,
              error: type[Exception] = OptionError, label: str | None = None, whole_floats: bool = True) -> int:
    """Return ``value`` as an int, or raise if it is not an integer in ``[minimum, maximum]`` (``3.0`` is accepted,
    ``2.5`` is not; NumPy integers are accepted).

    The one integer check of the package: the mechanisms' options use the defaults; the evaluations pass their own
    ``error`` class (raised instead of :class:`~hf_attnswap.errors.OptionError`), ``owner`` (the message's prefix,
    ``"perplexity"``; ``None``: none), ``label`` (how the setting is named; default ``option 'name'``) and
    ``whole_floats=False`` (a keyword argument of Python code: ``16.0`` is refused, not rounded).
    """
    prefix = f"{owner}: " if owner else ""
    subject = f"option {name!r}" if label is None else label
    if _is_bool(value) or not isinstance(value, numbers.Real) or (not isinstance(value, numbers.Integral) and not (
        whole_floats and math.isfinite(float(value)) and float(value).is_integer()
    )):
        raise error(f"{prefix}{subject} must be an integer, got {value!r} ({type(value).__name__}).")
    value = int(value)
    if minimum is not None and value < minimum:
        raise error(f"{prefix}{subject} must be an integer >= {minimum}, got {value}.")
    if maximum is not None and value > maximum:
        raise error(f"{prefix}{subject} must be an integer <= {maximum}, got {value}.")
    return value


def check_bool(owner: str, name: str, value: Any) -> bool:
    """Return ``value`` if it is a bool (NumPy's too), else raise (``0``/``"false"`` are rejected rather than guessed)."""
    if not _is_bool(value):
        raise OptionError(f"{owner}: option {name!r} must be true or false, got {value!r} ({type(value).__name__}).")
    return bool(value)


def check_choice(owner: str, name: str, value: Any, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise listing them."""
    if value not in choices:
        raise OptionError(f"{owner}: option {name!r} must be one of {', '.join(map(repr, choices))}; got {value!r}.")
    return value


@dataclass
class MechanismOptions:
    """Base class of every mechanism's options. Subclasses are dataclasses whose fields all have defaults."""

    mechanism: ClassVar[str] = ""
    #: The values of the ``backend`` option; set by ``register_mechanism`` from its fast paths (the one source).
    backends: ClassVar[tuple[str, ...]] = ("reference",)
    #: Options that shape or initialise the mechanism's parameters: on a checkpoint that holds those parameters,
    #: a load-time value that differs from the saved one is an error (it would re-initialise them or mislabel
    #: them). ``None``: every option but ``backend`` (for mechanisms with parameters; without, this is unused).
    parameter_options: ClassVar[tuple[str, ...] | None] = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of every field, defaults included."""
        return dataclasses.asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return cls().to_dict()

    @classmethod
    def parameter_option_names(cls) -> tuple[str, ...]:
        """:attr:`parameter_options`, with ``None`` resolved to every field but ``backend``."""
        if cls.parameter_options is not None:
            return tuple(cls.parameter_options)
        return tuple(n for n in cls.field_names() if n != "backend")


def check_backend(owner: str, value: Any, choices: tuple[str, ...]) -> str:
    return check_choice(owner, "backend", value, choices)


#: ``temperature`` in [1e-4, 1e4]: outside, ``s/T`` overflows or underflows in float32/bfloat16 and the backends
#: disagree (``T=1e-40`` gives NaN, ``T=1e300`` a zero scale that SDPA rejects), with no use that T=1e±4 lacks.
TEMPERATURE_RANGE = (1e-4, 1e4)
#: polynomial ``degree`` <= 16: ``s**p`` of a score of 100 is 1e32 at p=16, near float32's 3e38.
MAX_DEGREE = 16
#: daGPAM ``lambda_init`` <= 1000: the weights are ``(1+λ)P⁺ − λP⁻``, so λ scales every output; at 1e30 they are
#: inf − inf = NaN. (The paper's λ is below 1.)
MAX_LAMBDA_INIT = 1000.0


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
    """``a_ij = c_i * s_ij**degree`` on visible keys, exactly 0 elsewhere (arXiv 2410.18613).

    ``length_scale``: ``"visible"`` -> ``c_i = 1/sqrt(N_i)`` (keys query i sees, cache-consistent);
    ``"fixed"`` -> ``1/sqrt(fixed_length)``; ``"none"`` -> ``1``.
    ``backend``: ``"auto"``, ``"reference"``, ``"fused"`` (blocked, O(n·block) memory, CPU and CUDA),
    ``"triton"`` (CUDA kernel; on CPU only with ``TRITON_INTERPRET=1``, for testing) or ``"linear"``
    (``degree=2`` only, opt-in: linear attention with the d(d+1)/2 features of ``(q·k)²``, linear time in the
    length; plain causal, KV-cache offset, key padding or no mask; no attention dropout. ``"auto"`` never
    picks it).
    """

    mechanism: ClassVar[str] = "polynomial"
    degree: int = 3
    length_scale: str = "visible"
    fixed_length: int | None = None
    backend: str = "auto"

    def __post_init__(self) -> None:
        self.backend = check_backend("polynomial", self.backend, self.backends)
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
