"""Perplexity of a causal language model over a list of documents, with a strided sliding window.

```python
from hf_attnswap.data.text import load_texts
from hf_attnswap.evaluation.perplexity import perplexity
result = perplexity(model, tokenizer, load_texts("corpus.txt"), max_length=512, stride=256)
result.ppl, result.tokens, result.to_dict()
```

Semantics (those of Hugging Face's guide "Perplexity of fixed-length models"):

* Each document is tokenized on its own (``add_special_tokens=False``; see ``add_bos``) and scored
  independently: no window ever spans two documents.
* A document of ``n`` tokens is cut into windows ``ids[begin:end]`` with ``begin = 0, stride, 2*stride, ...``
  and ``end = min(begin + max_length, n)``, stopping at the first window that reaches the end. In each
  window only the tokens after the previous window's end are targets; the overlap is context only.
* A token is scored from the logits of the position before it in the same window, so the first token of a
  document is never scored (it has no context) unless a BOS token is prepended, and with
  ``stride == max_length`` (no overlap) the first token of every later window is not scored either.
  ``result.tokens`` is the exact number of tokens scored.
* ``nll`` is the sum of the per-token negative log-likelihoods (nats, computed in float32 from the
  logits) divided by ``tokens``; ``ppl = exp(nll)``.

Windows from all documents are sorted by length and run ``batch_size`` at a time, right-padded with an
attention mask (padding is never a target), under ``torch.no_grad()`` with the model in ``eval()`` mode (each
module's training flag is restored afterwards). Works with any attention implementation: it only calls
the model.

Defaults: ``max_length`` = the model's position limit (``max_position_embeddings`` / ``n_positions``) capped
at :data:`DEFAULT_MAX_LENGTH_CAP` (1024); ``stride`` = ``max_length // 2``; ``add_bos=None`` prepends the
tokenizer's BOS token exactly when the tokenizer itself adds one by default (Llama-2 style tokenizers yes;
GPT-2 and SmolLM2 no), so the default scores the same tokens as ``model(**tokenizer(text), labels=...)``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.hints import param, setting
from ..errors import AttnSwapError
from ..options import check_int
from ..transformers_hooks import full_precision

__all__ = [
    "DEFAULT_MAX_LENGTH_CAP",
    "PerplexityError",
    "PerplexityPlan",
    "PerplexityResult",
    "document_windows",
    "model_max_positions",
    "perplexity",
    "plan_perplexity",
]

#: Default ``max_length`` is the model's position limit, but no more than this.
DEFAULT_MAX_LENGTH_CAP = 1024
_IGNORE = -100


class PerplexityError(AttnSwapError):
    """Bad input to :func:`perplexity` (window sizes, texts, tokenizer/model mismatch)."""


@dataclass
class PerplexityResult:
    """What :func:`perplexity` measured.

    Attributes:
        ppl: ``exp(nll)``.
        nll: mean negative log-likelihood per scored token, in nats.
        tokens: number of tokens scored (targets).
        documents: number of non-empty documents (including those too short to score any token).
        skipped_empty: number of texts skipped because they are empty, whitespace-only or tokenize to nothing.
        windows: number of windows run through the model.
        seconds: wall-clock time of tokenization plus scoring.
        tokens_per_second: ``tokens / seconds``.
        max_length: window length used (tokens).
        stride: window stride used (tokens).
        add_bos: whether a BOS token was prepended to each document.
        max_tokens: the cap on scored tokens that was asked for (``None``: no cap).
        tokens_available: how many tokens the texts hold to score without the cap (``tokens`` when uncapped).
        truncated: whether the cap stopped scoring early (``tokens < tokens_available``); ``ppl`` and ``nll`` are
            then over the first ``tokens`` targets in document order.
    """

    ppl: float
    nll: float
    tokens: int
    documents: int
    skipped_empty: int
    windows: int
    seconds: float
    tokens_per_second: float
    max_length: int
    stride: int
    add_bos: bool
    max_tokens: int | None = None
    tokens_available: int | None = None
    truncated: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of every field."""
        return dataclasses.asdict(self)


@dataclass
class PerplexityPlan:
    """What :func:`perplexity` will score, known before the model runs (see :func:`plan_perplexity`).

    Attributes:
        documents: non-empty documents; ``skipped_empty``: texts skipped as empty.
        windows: windows that will run through the model (after the ``max_tokens`` cap).
        tokens: tokens that will be scored; ``tokens_available``: tokens the texts hold without the cap.
        longest_document: tokens in the longest document.
        max_length, stride, add_bos, max_tokens: the settings, with defaults resolved.
    """

    documents: int
    skipped_empty: int
    windows: int
    tokens: int
    tokens_available: int
    longest_document: int
    max_length: int
    stride: int
    add_bos: bool
    max_tokens: int | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def model_max_positions(model: Any) -> int | None:
    """The number of positions ``model`` supports (``max_position_embeddings``/``n_positions``), or ``None``.

    ``model`` may also be a model's config (a ``PretrainedConfig``), so the limit can be checked before loading."""
    config = getattr(model, "config", None)
    if config is None:
        config = model if not isinstance(model, nn.Module) else None
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def document_windows(n_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows of a document of ``n_tokens`` tokens, as ``(begin, end, n_targets)``.

    The window's input is ``ids[begin:end]`` (``end - begin <= max_length``); its targets are its last
    ``n_targets`` positions except position 0 (which has no context), i.e. the tokens ``ids[end - n_targets:end]``
    that lie at or after ``begin + 1``. Every token after the first is the target of at most one window.
    """
    windows: list[tuple[int, int, int]] = []
    prev_end = 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + max_length, n_tokens)
        windows.append((begin, end, end - prev_end))
        prev_end = end
        if end == n_tokens:
            break
    return windows


def perplexity(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int | None = None,
    stride: int | None = None,
    batch_size: int = 4,
    add_bos: bool | None = None,
    max_tokens: int | None = None,
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of ``model`` on ``texts`` (each an independent document), strided sliding window.

    Args:
        model: a causal LM whose forward takes ``input_ids`` (B, T) and ``attention_mask`` (B, T) and returns
            ``logits`` (B, T, V); any attention implementation.
        tokenizer: the model's tokenizer (a Transformers tokenizer; called as ``tokenizer(list[str])``).
        texts: the documents (a list/tuple of ``str``; e.g. from :func:`hf_attnswap.data.text.load_texts`).
        max_length: window length in tokens, ``2 <= max_length <= model positions``; default: the model's
            positions capped at 1024.
        stride: how far each window advances, ``1 <= stride <= max_length``; default ``max_length // 2``.
        batch_size: windows per forward pass.
        add_bos: prepend ``tokenizer.bos_token_id`` to each document (so its first token is scored too);
            ``None``: only if the tokenizer adds a BOS token by default.
        max_tokens: stop after scoring this many tokens (``None``: score everything). The first ``max_tokens``
            targets in document order are scored (the last window is shortened to end exactly there), so
            ``ppl``/``nll`` are over exactly the tokens scored; ``result.truncated`` says whether the cap cut.
        progress: show a tqdm progress bar (tokens scored, tokens/s, running perplexity).

    Returns:
        :class:`PerplexityResult`.
    """
    batch_size = _check_int("batch_size", batch_size, minimum=1)
    start = time.perf_counter()
    plan, docs, windows = _plan(model, tokenizer, texts, max_length=max_length, stride=stride, add_bos=add_bos,
                                max_tokens=max_tokens)
    max_length, stride, add_bos = plan.max_length, plan.stride, plan.add_bos
    vocab = _model_vocab_size(model)
    top = max(max(ids) for ids in docs)
    if vocab is not None and top >= vocab:
        raise PerplexityError(
            f"perplexity: the tokenizer produced token id {top}, but the model's vocabulary has {vocab} entries; pass "
            f"the tokenizer that belongs to the model."
        )
    windows.sort(key=lambda w: w[2] - w[1], reverse=True)  # similar lengths together: little padding
    total_targets = plan.tokens

    device = _model_device(model)
    flags = [(m, m.training) for m in model.modules()]
    nll_sum, scored = 0.0, 0
    bar = _progress_bar(total_targets, progress)
    try:
        model.eval()
        with torch.no_grad(), full_precision(model):  # never in a training loop's bf16 autocast
            for i in range(0, len(windows), batch_size):
                input_ids, attention_mask, labels = _collate(docs, windows[i : i + batch_size], device)
                out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
                logits = out.logits if hasattr(out, "logits") else out[0]
                target = labels[:, 1:]
                keep = target != _IGNORE
                batch_nll = F.cross_entropy(logits[:, :-1][keep].float(), target[keep], reduction="sum")
                n = int(keep.sum())
                nll_sum += float(batch_nll)
                scored += n
                bar.update(n)
                bar.set_postfix(ppl=f"{_exp(nll_sum / scored):.4g}", refresh=False)
    finally:
        bar.close()
        for module, training in flags:
            module.training = training
    seconds = time.perf_counter() - start
    nll = nll_sum / scored
    return PerplexityResult(
        ppl=_exp(nll), nll=nll, tokens=scored, documents=plan.documents, skipped_empty=plan.skipped_empty,
        windows=len(windows), seconds=seconds, tokens_per_second=scored / seconds if seconds > 0 else float("inf"),
        max_length=max_length, stride=stride, add_bos=add_bos, max_tokens=plan.max_tokens,
        tokens_available=plan.tokens_available, truncated=scored < plan.tokens_available,
    )


def plan_perplexity(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int | None = None,
    stride: int | None = None,
    add_bos: bool | None = None,
    max_tokens: int | None = None,
) -> PerplexityPlan:
    """What :func:`perplexity` with these settings will score (documents, windows, tokens), without running the
    model. ``model`` may be the model or just its config (``AutoConfig.from_pretrained(...)``): only its number of
    positions is read. Raises the same :class:`PerplexityError` as :func:`perplexity` for bad settings or texts."""
    return _plan(model, tokenizer, texts, max_length=max_length, stride=stride, add_bos=add_bos,
                 max_tokens=max_tokens)[0]


def _plan(model: Any, tokenizer: Any, texts: Any, *, max_length: Any, stride: Any, add_bos: Any,
          max_tokens: Any) -> tuple[PerplexityPlan, list[list[int]], list[tuple[int, int, int, int]]]:
    """The plan, the token ids of each document and the windows ``(document, begin, end, n_targets)`` to run."""
    positions = model_max_positions(model)
    max_length, stride = _resolve_window(positions, max_length, stride)
    if max_tokens is not None:
        max_tokens = _check_int("max_tokens", max_tokens, minimum=1)
    texts = _check_texts(texts)
    add_bos = _resolve_add_bos(tokenizer, add_bos)
    docs, skipped = _tokenize(tokenizer, texts, add_bos)
    if not docs:
        raise PerplexityError(
            f"perplexity: all {len(texts)} texts are empty (or whitespace-only, or tokenize to nothing); pass texts "
            f"with content."
        )
    # (document, begin, end, n_targets) for every window with at least one scored token, in document order
    windows = [(d, b, e, t) for d, ids in enumerate(docs) for b, e, t in document_windows(len(ids), max_length, stride)
               if min(t, e - b - 1) > 0]
    if not windows:
        raise PerplexityError(
            "perplexity: no token can be scored: every document is a single token (the first token of a document "
            f"has no context). Pass longer texts, or {setting('add_bos', 'True')} to score first tokens after the BOS "
            "token."
        )
    available = sum(min(t, e - b - 1) for _, b, e, t in windows)
    if max_tokens is not None and max_tokens < available:
        kept, total = [], 0
        for d, b, e, t in windows:
            n = min(t, e - b - 1)
            if total + n >= max_tokens:
                cut = total + n - max_tokens  # shorten the window so that it ends at the cap
                kept.append((d, b, e - cut, t - cut))
                total = max_tokens
                break
            kept.append((d, b, e, t))
            total += n
        windows = kept
    tokens = sum(min(t, e - b - 1) for _, b, e, t in windows)
    plan = PerplexityPlan(
        documents=len(docs), skipped_empty=skipped, windows=len(windows), tokens=tokens, tokens_available=available,
        longest_document=max(len(ids) for ids in docs), max_length=max_length, stride=stride, add_bos=add_bos,
        max_tokens=max_tokens,
    )
    return plan, docs, windows


# --- helpers ------------------------------------------------------------------------------------------------


def _resolve_window(positions: int | None, max_length: Any, stride: Any) -> tuple[int, int]:
    if max_length is None:
        if positions is None:
            raise PerplexityError(
                "perplexity: the model's config has no max_position_embeddings/n_positions, so the window length "
                f"cannot be chosen; pass {setting('max_length', '<tokens per window>')}."
            )
        max_length = min(positions, DEFAULT_MAX_LENGTH_CAP)
    max_length = _check_int("max_length", max_length, minimum=2)
    if positions is not None and max_length > positions:
        raise PerplexityError(
            f"perplexity: {setting('max_length', str(max_length))} is larger than the model's {positions} positions; "
            f"pass {param('max_length')} <= {positions}."
        )
    stride = max(1, max_length // 2) if stride is None else _check_int("stride", stride, minimum=1)
    if stride > max_length:
        raise PerplexityError(
            f"perplexity: {setting('stride', str(stride))} is larger than {setting('max_length', str(max_length))}, "
            f"which would skip tokens; pass {param('stride')} <= {param('max_length')} ({param('stride')} == "
            f"{param('max_length')}: windows without overlap)."
        )
    return max_length, stride


def _check_int(name: str, value: Any, *, minimum: int) -> int:
    """:func:`hf_attnswap.options.check_int` with this module's error and prefix (``perplexity: max_length ...``)."""
    return check_int("perplexity", name, value, minimum=minimum, error=PerplexityError, label=param(name),
                     whole_floats=False)


def _check_texts(texts: Any) -> list[str]:
    if isinstance(texts, str):
        raise PerplexityError("perplexity: texts must be a list of documents, got a single str; pass [text].")
    if not isinstance(texts, Sequence):
        raise PerplexityError(
            f"perplexity: texts must be a list of str, got {type(texts).__name__}; convert it with list(...) or "
            f"hf_attnswap.data.text.load_texts(...)."
        )
    if len(texts) == 0:
        raise PerplexityError("perplexity: texts is empty; pass at least one document.")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise PerplexityError(f"perplexity: texts[{i}] is a {type(t).__name__}, not a str; pass only strings.")
    return list(texts)


def _resolve_add_bos(tokenizer: Any, add_bos: Any) -> bool:
    if add_bos is not None and not isinstance(add_bos, bool):
        raise PerplexityError(f"perplexity: add_bos must be True, False or None, got {add_bos!r}.")
    if not callable(tokenizer):
        raise PerplexityError(
            f"perplexity: tokenizer must be a Transformers tokenizer (callable on a list of str), got "
            f"{type(tokenizer).__name__}; load it with AutoTokenizer.from_pretrained(...)."
        )
    bos = getattr(tokenizer, "bos_token_id", None)
    if add_bos is None:
        if bos is None:
            return False
        with_special = tokenizer("a")["input_ids"]
        without = tokenizer("a", add_special_tokens=False)["input_ids"]
        return len(with_special) > len(without) and with_special[0] == bos
    if add_bos and bos is None:
        raise PerplexityError(
            "perplexity: add_bos=True, but the tokenizer has no BOS token (bos_token_id is None); pass add_bos=False "
            "or set tokenizer.bos_token."
        )
    return add_bos


def _tokenize(tokenizer: Any, texts: list[str], add_bos: bool) -> tuple[list[list[int]], int]:
    """Token ids of each non-empty text (with BOS if asked) and the number of texts skipped as empty."""
    kept = [t for t in texts if t.strip()]
    encoded = tokenizer(kept, add_special_tokens=False, verbose=False)["input_ids"] if kept else []
    docs = [([tokenizer.bos_token_id] if add_bos else []) + list(ids) for ids in encoded if len(ids) > 0]
    return docs, len(texts) - len(docs)


def _collate(docs: list[list[int]], windows: list[tuple[int, int, int, int]], device: torch.device):
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (B, T) for a batch of windows."""
    width = max(e - b for _, b, e, _ in windows)
    input_ids = torch.zeros(len(windows), width, dtype=torch.long)
    attention_mask = torch.zeros(len(windows), width, dtype=torch.long)
    labels = torch.full((len(windows), width), _IGNORE, dtype=torch.long)
    for row, (d, b, e, t) in enumerate(windows):
        ids = torch.tensor(docs[d][b:e], dtype=torch.long)
        n = e - b
        input_ids[row, :n] = ids
        attention_mask[row, :n] = 1
        labels[row, n - t : n] = ids[n - t :]
    return input_ids.to(device), attention_mask.to(device), labels.to(device)


def _model_device(model: nn.Module) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _model_vocab_size(model: nn.Module) -> int | None:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    size = getattr(embeddings, "num_embeddings", None)
    return size if isinstance(size, int) else None


def _progress_bar(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="tok", unit_scale=True, desc="perplexity", disable=not enabled, dynamic_ncols=True)


def _exp(x: float) -> float:
    return float("inf") if x >= 709.0 else math.exp(x)  # NaN stays NaN
