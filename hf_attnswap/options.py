"""The base class of every mechanism's options, and the checks their ``__post_init__`` use.

Each mechanism's options dataclass lives in its own folder (``mechanisms/<name>/options.py``) and derives from
:class:`MechanismOptions`. Its ``__post_init__`` rejects a bad value
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
