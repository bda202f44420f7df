"""The README's main job (until the recipes exist): load one real model under each mechanism, show the
parameter overhead, score a short embedded text, and generate.

    attnswap demo                       # real SmolLM2-135M, prepared offline by `attnswap prepare-assets`
    attnswap demo --model gpt2          # any Hub name or local path (needs the Hub for names)
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from .data.hints import param
from .errors import AttnSwapError
from .mechanisms import BUILTINS
from .registry import get_mechanism


class DemoError(AttnSwapError):
    """Bad input to :func:`run_demo` (a prompt and continuation longer than the model's positions, ...)."""

# A short embedded English text (written for this project), scored under every mechanism.
DEFAULT_TEXT = (
    "The river rises in the hills to the north of the town and flows south through farmland before it reaches "
    "the sea. In the nineteenth century it carried coal and timber to the port, and several mills were built "
    "along its banks. Today most of the mills are gone, but the old towpath has become a popular walking route, "
    "and in summer the water is busy with small boats."
)
DEFAULT_PROMPT = "The capital of France is"
def demo_mechanisms() -> list[tuple[str, dict[str, Any]]]:
    """What the demo compares: the model's own ``sdpa``, then every built-in mechanism (softmax, the reference,
    first) with each option set its registration lists as ``examples``."""
    names = sorted(BUILTINS, key=lambda n: (n != "softmax", n))
    return [("sdpa", {})] + [(n, dict(opts)) for n in names for opts in get_mechanism(n).examples]


@torch.no_grad()
def text_nll(model: Any, tokenizer: Any, text: str) -> tuple[float, int]:
    """Mean next-token NLL (nats) of ``text`` under ``model`` and the number of tokens scored."""
    ids = tokenizer(text, return_tensors="pt").input_ids
    out = model(ids, labels=ids)
    return float(out.loss), ids.shape[1] - 1


@torch.no_grad()
def greedy(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int) -> str:
    """Greedy continuation of ``prompt`` with the KV cache."""
    enc = tokenizer(prompt, return_tensors="pt")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    return tokenizer.decode(out[0, enc.input_ids.shape[1] :], skip_special_tokens=True).strip()


def run_demo(model_name_or_path: str | None = None, prompt: str = DEFAULT_PROMPT, max_new_tokens: int = 12) -> list[dict[str, Any]]:
    """Load ``model_name_or_path`` (default: the offline SmolLM2) under each mechanism; print and return a table."""
    from rich.console import Console
    from rich.table import Table
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    console = Console()
    if not console.is_terminal:  # logs and CI: wide enough for the table
        console = Console(width=140)
    from ._version import __version__
    from .data.assets import prepare_smollm2, resolve_model
    from .evaluation.perplexity import model_max_positions
    from .registry import parameter_overhead

    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise DemoError(f"{param('max_new_tokens')} must be an integer >= 1, got {max_new_tokens!r}.")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DemoError(f"{param('prompt')} must be a non-empty text to continue, got {prompt!r}.")
    if model_name_or_path is None:
        model_name_or_path = str(prepare_smollm2())
    else:
        model_name_or_path = resolve_model(model_name_or_path, what=param("model"))
    hf_logging.set_verbosity_error()  # the "newly initialised daGPAM parameters" report is expected here
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
    positions = model_max_positions(AutoConfig.from_pretrained(model_name_or_path))
    text_tokens, prompt_tokens = len(tokenizer(DEFAULT_TEXT).input_ids), len(tokenizer(prompt).input_ids)
    if positions is not None and text_tokens > positions:
        raise DemoError(f"{model_name_or_path} has only {positions} positions, fewer than the {text_tokens} tokens of "
                        f"the demo's embedded text; run the demo on a model with at least {text_tokens} positions.")
    if positions is not None and prompt_tokens + max_new_tokens > positions:
        raise DemoError(
            f"the prompt ({prompt_tokens} tokens) plus {param('max_new_tokens')} {max_new_tokens} needs "
            f"{prompt_tokens + max_new_tokens} positions, but the model has {positions}; pass "
            f"{param('max_new_tokens')} <= {max(positions - prompt_tokens, 1)} or a shorter {param('prompt')}."
        )
    console.print(f"[bold]hf_attnswap {__version__}[/bold] demo on [cyan]{model_name_or_path}[/cyan]")
    console.print(f"Perplexity on a {len(DEFAULT_TEXT.split())}-word embedded text; greedy continuation of {prompt!r}.\n")
    rows = []
    for attn, options in demo_mechanisms():
        start = time.perf_counter()
        kwargs = {"attnswap": options} if options else {}
        with console.status(f"loading with attn_implementation={attn!r} {options or ''}"):
            model = AutoModelForCausalLM.from_pretrained(model_name_or_path, attn_implementation=attn, **kwargs).eval()
            nll, n_tokens = text_nll(model, tokenizer, DEFAULT_TEXT)
            text = greedy(model, tokenizer, prompt, max_new_tokens)
        overhead = parameter_overhead(model)
        rows.append({
            "attn": attn, "options": options, "added_params": overhead["added"], "overhead_percent": overhead["percent"],
            "ppl": math.exp(nll), "tokens": n_tokens, "seconds": time.perf_counter() - start, "generation": text,
        })
        console.print(f"  done: {attn} {options or ''} in {rows[-1]['seconds']:.1f} s")
        del model

    table = Table(title="One model, five attentions")
    for col in ("attn_implementation", "options", "added params", "overhead", "ppl"):
        table.add_column(col, no_wrap=True, justify="right" if col in ("added params", "overhead", "ppl") else "left")
    table.add_column("greedy continuation", overflow="fold")
    for r in rows:
        table.add_row(r["attn"], ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "(native)",
                      f"{r['added_params']:,}", f"{r['overhead_percent']:.3f}%", f"{r['ppl']:.4g}",
                      r["generation"].replace("\n", " ⏎ "))
    console.print(table)
    console.print(
        "daGPAM with λ=0 is the original model (same perplexity and text as sdpa); λ>0 and polynomial change the "
        "attention of a model trained with softmax, so they need training (the recipes) before they are useful."
    )
    return rows
