"""The built-in mechanisms: one package each, ``mechanisms/<name>/``, which registers itself when imported.

A mechanism's package holds its options (``options.py``), its reference forward and fast forwards
(``attention.py``; the fast paths call tensor-only kernels in ``hf_attnswap.kernels``), the parameter module it adds
to attention layers if any (``parameters.py``) and, in ``__init__.py``, the ``register_mechanism`` call with its
metadata: description, paper, fast paths and their ``auto`` order, and the option sets that tests and benchmarks
exercise (``exercise``) and the demo shows (``examples``). Adding a built-in mechanism is adding a folder here;
:data:`BUILTINS` finds it. ``common.py`` holds the tensor helpers the mechanisms share.
"""

from __future__ import annotations

import importlib
import pkgutil

#: The built-in mechanisms: every package in this folder.
BUILTINS: tuple[str, ...] = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if m.ispkg))


def register_builtins() -> None:
    """Import (and so register) every built-in mechanism package (idempotent)."""
    for name in BUILTINS:
        importlib.import_module(f"{__name__}.{name}")
