"""hf_attnswap: swap the attention of Transformers models (GPT-2, Llama, ...) at load time.

```python
import hf_attnswap
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained("gpt2", attn_implementation="dagpam", attnswap={"lambda_init": 0.1})
hf_attnswap.swap(live_model, "polynomial", degree=3)
hf_attnswap.list_mechanisms()
[spec] = hf_attnswap.parse_attn_specs("dagpam:lambda_init=0.1")  # the --attn text -> AttnSpec
```
Importing this package registers the built-in mechanisms with Transformers' ``AttentionInterface`` and
``AttentionMaskInterface``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from . import options
from ._version import __version__
from .errors import AttnSwapError, NotSwappedError, OptionError, UnknownMechanismError, UnsupportedModelError
from .mechanisms import register_builtins
from .mechanisms.common import AttentionContext
from .mechanisms.dagpam import DaGPAMOptions
from .mechanisms.polynomial import PolynomialOptions
from .mechanisms.softmax import SoftmaxOptions
from .options import MechanismOptions
from .patching import ARCHITECTURES, swap
from .patching import uninstall as unswap
from .registry import (
    PARAMS_ATTR,
    get_mechanism,
    is_mechanism_parameter,
    list_mechanisms,
    parameter_overhead,
    parse_options,
    register_mechanism,
    use_backend,
)
from .spec import AttnSpec, parse_attn_specs
from .transformers_hooks import install_hooks

register_builtins()
install_hooks()


def push_to_hub(model: nn.Module, repo_id: str, **kwargs: Any) -> Any:
    """Upload a swapped model with its model card; see :func:`hf_attnswap.hub.push_to_hub`."""
    from .hub import push_to_hub as _push

    return _push(model, repo_id, **kwargs)


def attention_transfer(model: nn.Module, mechanism: str, /, **kwargs: Any) -> Any:
    """Convert ``model`` to ``mechanism`` by attention transfer (stage 1 of a conversion); see
    :func:`hf_attnswap.conversion.attention_transfer`."""
    from .conversion import attention_transfer as _transfer

    return _transfer(model, mechanism, **kwargs)


def save_adapter(peft_model: nn.Module, save_directory: Any, **kwargs: Any) -> Any:
    """Save a PEFT adapter with the mechanism and options of its base; see :func:`hf_attnswap.adapters.save_adapter`."""
    from .adapters import save_adapter as _save

    return _save(peft_model, save_directory, **kwargs)


def load_adapter(base: Any, adapter: Any, **kwargs: Any) -> Any:
    """A base swapped as the adapter's ``attnswap.json`` says, with the adapter; see
    :func:`hf_attnswap.adapters.load_adapter`."""
    from .adapters import load_adapter as _load

    return _load(base, adapter, **kwargs)


__all__ = [
    "ARCHITECTURES",
    "AttentionContext",
    "AttnSpec",
    "AttnSwapError",
    "DaGPAMOptions",
    "MechanismOptions",
    "NotSwappedError",
    "OptionError",
    "PolynomialOptions",
    "SoftmaxOptions",
    "UnknownMechanismError",
    "UnsupportedModelError",
    "__version__",
    "attention_transfer",
    "get_mechanism",
    "is_mechanism_parameter",
    "list_mechanisms",
    "load_adapter",
    "options",
    "parameter_overhead",
    "parse_attn_specs",
    "parse_options",
    "push_to_hub",
    "use_backend",
    "register_mechanism",
    "save_adapter",
    "swap",
    "unswap",
]
