"""Exceptions raised by hf_attnswap. Each message names the problem and what to do about it."""

from __future__ import annotations


class AttnSwapError(ValueError):
    """Base class: bad input to hf_attnswap (unknown mechanism, bad option, unsupported model)."""


class UnknownMechanismError(AttnSwapError, KeyError):
    """The mechanism name is not registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class OptionError(AttnSwapError):
    """An option key is unknown, or its value is out of range or of the wrong type."""


class UnsupportedModelError(AttnSwapError):
    """The model's attention cannot be swapped (it does not go through Transformers' AttentionInterface)."""


class NotSwappedError(AttnSwapError):
    """A mechanism that needs extra parameters runs on a model that was never given them."""


class SourceError(AttnSwapError):
    """A model, tokenizer or dataset source cannot be used: a local path that does not exist, a folder with no model."""


class AssetError(AttnSwapError, RuntimeError):
    """An offline asset is missing or cannot be prepared (no PyPI access, a bad cache folder, a damaged download)."""
