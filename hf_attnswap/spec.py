"""Attention specs: the ``--attn`` text of the command line, the recipes and the benchmarks, parsed and validated.

An attention spec is ``name`` or ``name:key=value:key=value`` (values are JSON: ``0.1``, ``true``, ``"x"``), and
``--attn`` takes several, comma-separated: ``sdpa,softmax,dagpam:lambda_init=0.1,polynomial:degree=3``.
Transformers' own implementations (``sdpa``, ``eager``) are accepted as baselines.

```python
from hf_attnswap import parse_attn_specs
[spec] = parse_attn_specs("dagpam:lambda_init=0.1")
model = AutoModelForCausalLM.from_pretrained("gpt2", **spec.load_kwargs())
```
Parsing only: each mechanism's options are checked by the registry (:func:`hf_attnswap.registry.parse_options`)
before any model is loaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .errors import OptionError
from .registry import parse_options

__all__ = ["NATIVE", "AttnSpec", "parse_attn_specs"]

#: Transformers' own attention implementations, accepted as baselines (they take no options).
NATIVE = ("sdpa", "eager")


@dataclass
class AttnSpec:
    """One attention implementation with its options: ``AttnSpec("dagpam", {"lambda_init": 0.1})``."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.name + "".join(f":{k}={json.dumps(v)}" for k, v in self.options.items())

    def load_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"attn_implementation": self.name}
        if self.options:
            kwargs["attnswap"] = dict(self.options)
        return kwargs


def parse_attn_specs(text: str) -> list[AttnSpec]:
    """Parse ``"softmax,dagpam:lambda_init=0.1"`` into specs, validating each mechanism's options now (before any
    model is loaded)."""
    specs = []
    parts = [p.strip() for p in text.split(",")]
    for i, part in enumerate(parts):
        if not part:
            continue
        name, *pairs = part.split(":")
        if "=" in name:  # "dagpam:a=1,b=2": a comma where a ':' belongs
            before = next((p for p in reversed(parts[:i]) if p), None)
            fix = f" Did you mean {before}:{part!r}?".replace("'", "") if before else ""
            raise OptionError(f"--attn: {part!r} is not an attention name. Options of one mechanism are separated by "
                              f"':' (dagpam:lambda_init=0.1:tied_lambda=false); ',' separates mechanisms.{fix}")
        options: dict[str, Any] = {}
        for pair in pairs:
            if "=" not in pair:
                raise OptionError(f"attention spec {part!r}: expected key=value after ':', got {pair!r} "
                                  "(e.g. dagpam:lambda_init=0.1).")
            key, raw = pair.split("=", 1)
            try:
                options[key] = json.loads(raw)
            except json.JSONDecodeError:
                options[key] = raw
        if name in NATIVE:
            if options:
                raise OptionError(f"{name!r} is Transformers' own attention and takes no options; got {options}.")
        else:
            parse_options(name, options)  # unknown mechanism or bad option: fail before loading anything
        specs.append(AttnSpec(name, options))
    if not specs:
        raise OptionError("no attention given: pass e.g. --attn softmax,polynomial,dagpam")
    return specs
