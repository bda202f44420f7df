"""The package's version, in its own module so that any module can read it without importing the package's
``__init__`` (keep it equal to ``version`` in ``pyproject.toml``)."""

__version__ = "0.1.0"
