"""PEFT adapters that carry their mechanism: an adapter trained on a swapped model (``modules_to_save=["attnswap"]``
holds daGPAM's ``W⁻`` and λ) is only right on a base swapped the same way, so :func:`save_adapter` writes the
mechanism and its options beside it (``attnswap.json``) and :func:`load_adapter` rebuilds the base from them.

```python
hf_attnswap.save_adapter(peft_model, "out/adapter")
model = hf_attnswap.load_adapter("HuggingFaceTB/SmolLM2-135M", "out/adapter")   # swapped base + adapter
```
Loading such an adapter onto a base without the mechanism by other means (``PeftModel.from_pretrained``,
``model.load_adapter``) is refused with an error that points here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from .errors import NotSwappedError, SourceError
from .patching import ADAPTER_RECORD
from .registry import get_mechanism, is_mechanism, parse_options
from .transformers_hooks import attn_implementation_of

__all__ = ["ADAPTER_RECORD", "load_adapter", "mechanism_record", "save_adapter"]


def mechanism_record(model: nn.Module) -> dict[str, Any] | None:
    """``{"attn_implementation": name, "attnswap": {options}}`` of a swapped model (PEFT-wrapped or not), or None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    name = attn_implementation_of(config)
    if not is_mechanism(name):
        return None
    options = dict(getattr(config, "attnswap", None) or {})
    options.pop("mechanism", None)
    return {"attn_implementation": get_mechanism(name).name, "attnswap": options}


def save_adapter(peft_model: nn.Module, save_directory: str | os.PathLike[str], **kwargs: Any) -> Path:
    """``peft_model.save_pretrained(save_directory, **kwargs)``, plus ``attnswap.json`` with the mechanism and options
    of its base (nothing extra if the base was not swapped). Returns the folder."""
    out = Path(save_directory)
    peft_model.save_pretrained(str(out), **kwargs)
    record = mechanism_record(peft_model)
    if record is not None:
        (out / ADAPTER_RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return out


def read_record(adapter: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``attnswap.json`` of a local adapter folder, or None if it has none."""
    path = Path(adapter) / ADAPTER_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        name, options = record["attn_implementation"], dict(record.get("attnswap") or {})
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SourceError(f"{path} is damaged ({err}); it should hold {{\"attn_implementation\": ..., \"attnswap\": "
                          "{...}}, as hf_attnswap.save_adapter writes it.") from None
    parse_options(name, options)  # an unknown mechanism or bad options: say so now
    return {"attn_implementation": name, "attnswap": options}


def load_adapter(base: str | os.PathLike[str] | nn.Module, adapter: str | os.PathLike[str], *,
                 is_trainable: bool = False, **from_pretrained_kwargs: Any) -> Any:
    """A ``PeftModel``: ``adapter`` on ``base`` swapped to the mechanism its ``attnswap.json`` names.

    ``base``: a Hub name or folder (loaded with ``AutoModelForCausalLM.from_pretrained(base,
    attn_implementation=..., attnswap=..., **from_pretrained_kwargs)``), or a loaded model, which must already run
    that mechanism with the same options (else :class:`NotSwappedError` says how). An adapter without the record
    is loaded as PEFT would (and refused if it holds mechanism parameters the base lacks)."""
    from peft import PeftModel

    record = read_record(adapter)
    if isinstance(base, nn.Module):
        model = base
        if record is not None:
            have = mechanism_record(model)
            want_opts = parse_options(record["attn_implementation"], record["attnswap"])
            same = have is not None and have["attn_implementation"] == record["attn_implementation"] and all(
                have["attnswap"].get(k) == getattr(want_opts, k) for k in want_opts.parameter_option_names())
            if not same:
                raise NotSwappedError(
                    f"the adapter {adapter} was trained on a model with attention {record['attn_implementation']!r} and "
                    f"options {record['attnswap']}, but the model given runs "
                    f"{(have or {}).get('attn_implementation', attn_implementation_of(model.config))!r}"
                    f"{'' if have is None else ' with options ' + str(have['attnswap'])}. Pass the base's name or "
                    f"folder instead, and load_adapter swaps it.")
    else:
        from transformers import AutoModelForCausalLM

        from .data.assets import resolve_source

        kwargs = dict(from_pretrained_kwargs)
        if record is not None:
            kwargs.update(attn_implementation=record["attn_implementation"], attnswap=record["attnswap"])
        model = AutoModelForCausalLM.from_pretrained(resolve_source(base, "base model"), **kwargs)
    return PeftModel.from_pretrained(model, str(adapter), is_trainable=is_trainable)
