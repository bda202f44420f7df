"""Name a setting the way the caller spells it, in error messages.

The data loaders and evaluations are shared by Python code (``text_column=``), the ``attnswap`` command
(``--text-column``) and the recipes (``--text_column``). Their messages say how to fix a problem ("pass
text_column=<one of them>"); :func:`option_names` makes the same message name the caller's flag::

    with option_names(CLI_FLAGS):
        load_texts(path, text_column="body")   # "... Pass --text-column <one of them>."

Outside an :func:`option_names` block (plain Python) the keyword is named, as before. The names are kept in
a :class:`contextvars.ContextVar`, so threads and async tasks do not see each other's.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping

__all__ = ["CLI_FLAGS", "RECIPE_FLAGS", "keyword", "option_names", "param", "setting"]

#: Keyword -> flag of the ``attnswap`` command (``attnswap probe`` adds ``limit -> --max-texts``).
CLI_FLAGS: dict[str, str] = {
    "text_column": "--text-column", "split": "--split", "config_name": "--config-name", "limit": "--limit",
    "txt_sample_by": "--sample-by", "src_lang": "--src", "tgt_lang": "--tgt", "max_length": "--max-length",
    "stride": "--stride", "batch_size": "--batch-size", "max_tokens": "--max-tokens",
    "max_new_tokens": "--max-new-tokens", "num_beams": "--num-beams", "template": "--template",
    "example_index": "--example", "top_n": "--top-n", "model": "--model", "tokenizer": "--tokenizer",
    "prompt": "--prompt", "repo_id": "--repo-id", "eval_results": "--eval-results", "base_model": "--base-model",
    "dry_run": "--dry-run", "token": "",  # "": the command has no such flag (the token comes from HF_TOKEN or a login)
}  # fmt: skip
#: Keyword -> flag of ``recipes/continue_pretrain.py`` and ``recipes/finetune_translation.py`` (HfArgumentParser).
RECIPE_FLAGS: dict[str, str] = {
    "text_column": "--text_column", "config_name": "--dataset_config_name", "src_lang": "--source_lang",
    "tgt_lang": "--target_lang", "template": "--prompt_template", "num_beams": "--eval_num_beams",
}  # fmt: skip

_NAMES: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("hf_attnswap_option_names",
                                                                                   default=None)


@contextlib.contextmanager
def option_names(names: Mapping[str, str]) -> Iterator[None]:
    """Within the block, messages name keyword ``k`` as ``names[k]`` (a flag such as ``--text-column``)."""
    current = _NAMES.get()
    token = _NAMES.set({**(current or {}), **names})
    try:
        yield
    finally:
        _NAMES.reset(token)


def param(name: str) -> str:
    """How the caller spells setting ``name``: its flag inside :func:`option_names`, else the keyword itself
    (``""`` when the caller has no way to set it, e.g. the CLI has no ``--token``)."""
    names = _NAMES.get()
    return names.get(name, name) if names else name


def setting(name: str, value: str) -> str:
    """``name=value`` for Python callers, ``--flag value`` for a flag (``value`` is written as given)."""
    spelled = param(name)
    return f"{spelled} {value}" if spelled.startswith("-") else f"{spelled}={value}"


def keyword(name: str) -> str:
    """``name=`` for Python callers (``"pass src_lang="``), the bare flag for a flag (``"pass --src"``)."""
    spelled = param(name)
    return spelled if spelled.startswith("-") else f"{spelled}="
