"""Translation with a causal LM (prompted, batched, greedy or beam search) and BLEU/chrF scoring.

```python
from hf_attnswap.data.parallel import load_parallel
from hf_attnswap.evaluation.translation import evaluate_translation

pairs = load_parallel("de-en-ding", "test", limit=200)          # [(german, english), ...]
result = evaluate_translation(model, tokenizer, pairs, batch_size=8)
print(result.bleu, result.chrf, result.bleu_signature)
```

Scores are corpus BLEU and chrF from sacrebleu (``sacrebleu.metrics.BLEU`` and ``CHRF`` with their
defaults: 13a tokenisation, exp smoothing; chrF2 with character n-grams up to 6), reported with the
sacrebleu signatures. ``metric_backend="evaluate"`` takes BLEU from ``evaluate.load("sacrebleu")``
instead — the same sacrebleu code behind a Hub-hosted script, so the numbers are identical; that script
is fetched from the Hugging Face Hub (or found in evaluate's cache, or given as a local path with
``evaluate_module=``). ``"auto"`` (the default) tries evaluate and falls back to sacrebleu, saying why in
``backend_note``.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import StoppingCriteriaList, StopStringCriteria

from ..data.hints import param
from ..errors import AttnSwapError
from ..options import check_int
from ..transformers_hooks import attn_implementation_of, full_precision
from .perplexity import model_max_positions

__all__ = [
    "DEFAULT_TEMPLATES",
    "GENERIC_TEMPLATE",
    "LANGUAGE_NAMES",
    "METRIC_BACKENDS",
    "TranslationError",
    "TranslationResult",
    "build_prompt",
    "check_translation_fits",
    "cut_translation",
    "evaluate_translation",
    "resolve_template",
    "score_translations",
    "template_markers",
    "translate",
]

#: Language code -> name used in prompts (other codes are used as they are).
LANGUAGE_NAMES: dict[str, str] = {
    "de": "German", "en": "English", "fr": "French", "es": "Spanish", "it": "Italian", "nl": "Dutch",
    "pt": "Portuguese", "ru": "Russian", "zh": "Chinese", "ja": "Japanese", "cs": "Czech", "pl": "Polish",
}  # fmt: skip
#: Prompt per (source, target) language; ``{source}`` is replaced by the sentence to translate.
DEFAULT_TEMPLATES: dict[tuple[str, str], str] = {
    ("de", "en"): "Translate German to English.\nGerman: {source}\nEnglish:",
    ("en", "de"): "Translate English to German.\nEnglish: {source}\nGerman:",
}
#: Prompt for language pairs without an entry in :data:`DEFAULT_TEMPLATES`.
GENERIC_TEMPLATE = "Translate {src_name} to {tgt_name}.\n{src_name}: {source}\n{tgt_name}:"
#: Accepted values of ``metric_backend``.
METRIC_BACKENDS: tuple[str, ...] = ("auto", "evaluate", "sacrebleu")


class TranslationError(AttnSwapError):
    """Bad input to translation or scoring: empty data, mismatched lengths, bad template or option."""


# ------------------------------------------------------------------------------------------ prompts


def _name(lang: str) -> str:
    return LANGUAGE_NAMES.get(lang, lang)


def resolve_template(src_lang: str = "de", tgt_lang: str = "en", template: str | None = None) -> str:
    """Return the prompt template for a direction: ``template`` if given (it must contain ``{source}``),
    else :data:`DEFAULT_TEMPLATES` or :data:`GENERIC_TEMPLATE` with the language names filled in.

    ``{src_name}`` and ``{tgt_name}`` in a template become the language names; other braces are kept as
    they are. Raises :class:`TranslationError` for a template that is not a string or lacks ``{source}``.
    """
    for key, lang in (("src_lang", src_lang), ("tgt_lang", tgt_lang)):
        if not isinstance(lang, str) or not lang:
            raise TranslationError(f"{param(key)} must be a non-empty language code such as 'de', got {lang!r}")
    if template is None:
        template = DEFAULT_TEMPLATES.get((src_lang, tgt_lang), GENERIC_TEMPLATE)
    elif not isinstance(template, str):
        raise TranslationError(f"{param('template')} must be a string containing '{{source}}', got "
                               f"{type(template).__name__}")
    elif "{source}" not in template:
        raise TranslationError(
            f"{param('template')} {template!r} has no '{{source}}' placeholder, so the sentence would never reach the "
            "model; put '{source}' where the sentence goes, e.g. 'German: {source}\\nEnglish:'"
        )
    return template.replace("{src_name}", _name(src_lang)).replace("{tgt_name}", _name(tgt_lang))


def build_prompt(template: str, source: str) -> str:
    """Fill a resolved template with one source sentence."""
    return template.replace("{source}", source)


def template_markers(template: str) -> tuple[str, ...]:
    """The fixed text pieces of a template, per line (e.g. ``"German:"``, ``"English:"``).

    A model that keeps going after its answer tends to start the next prompt; :func:`cut_translation` cuts
    there. Pieces without a letter (``"=>"``) are left out: they could occur inside a real translation.
    """
    pieces: list[str] = []
    for line in template.split("\n"):
        for piece in line.split("{source}"):
            piece = piece.strip()
            if piece and any(ch.isalpha() for ch in piece) and piece not in pieces:
                pieces.append(piece)
    return tuple(pieces)


def cut_translation(text: str, *, eos_token: str | None = None, markers: Sequence[str] = ()) -> str:
    """Cut generated text at the end of the answer and strip it.

    The answer ends at the first newline, the first ``eos_token`` (if given) or the first template marker
    (see :func:`template_markers`), whichever comes first.
    """
    end = len(text)
    for stop in ("\n", eos_token, *markers):
        if stop:
            i = text.find(stop)
            if i != -1:
                end = min(end, i)
    return text[:end].strip()


# -------------------------------------------------------------------------------------- translation


def _check_int(name: str, value: Any, minimum: int) -> int:
    """:func:`hf_attnswap.options.check_int` with this module's error (no prefix: ``batch_size must be ...``)."""
    return check_int(None, name, value, minimum=minimum, error=TranslationError, label=param(name), whole_floats=False)


def _check_sources(sources: Any) -> list[str]:
    if isinstance(sources, str) or not isinstance(sources, Sequence):
        raise TranslationError(
            f"sources must be a list of strings, got {type(sources).__name__}; wrap a single sentence in a list"
        )
    bad = [i for i, s in enumerate(sources) if not isinstance(s, str)]
    if bad:
        raise TranslationError(f"sources must all be strings; item {bad[0]} is {type(sources[bad[0]]).__name__}")
    return list(sources)


@contextlib.contextmanager
def _generation_state(model: Any, tokenizer: Any) -> Iterator[int]:
    """Left padding, eval mode and the model's own precision for the call; restores all three. Yields the pad
    token id."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise TranslationError(
            "the tokenizer has neither a pad token nor an eos token, so prompts cannot be padded into a batch; "
            "set tokenizer.pad_token (for example tokenizer.add_special_tokens({'pad_token': '<pad>'}) with a "
            "matching model.resize_token_embeddings(len(tokenizer)))"
        )
    old_side, old_pad, was_training = tokenizer.padding_side, tokenizer.pad_token, model.training
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    try:
        with full_precision(model):  # never in a training loop's bf16 autocast
            yield pad_id
    finally:
        tokenizer.padding_side = old_side
        if old_pad is None:
            tokenizer.pad_token = None
        model.train(was_training)


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc="translate", unit="sent", leave=False)


def _stop_ids(model: Any, tokenizer: Any) -> set[int]:
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos])
    ids.discard(None)
    return ids  # type: ignore[return-value]


def _check_positions(model: Any, lengths: Sequence[int], max_new_tokens: int) -> None:
    """Refuse, before generating, a prompt plus ``max_new_tokens`` that does not fit in the model's positions (it
    would fail with an IndexError deep in the model, or run far past what the model was trained on)."""
    positions = model_max_positions(model)
    if positions is None or not lengths:
        return
    longest = max(lengths)
    if longest >= positions:
        raise TranslationError(
            f"the longest prompt has {longest} tokens, but the model has only {positions} positions; translate shorter "
            f"sentences (or a shorter {param('template')})"
        )
    if longest + max_new_tokens > positions:
        raise TranslationError(
            f"{param('max_new_tokens')} {max_new_tokens} is too many: the longest prompt has {longest} tokens, and "
            f"{longest} + {max_new_tokens} exceeds the model's {positions} positions; pass {param('max_new_tokens')} "
            f"<= {positions - longest}"
        )


def check_translation_fits(
    model: Any,
    tokenizer: Any,
    sources: Sequence[str],
    *,
    src_lang: str = "de",
    tgt_lang: str = "en",
    template: str | None = None,
    max_new_tokens: int = 64,
) -> None:
    """What :func:`translate` checks before generating, without generating: the template, ``max_new_tokens`` and
    that the longest prompt plus ``max_new_tokens`` fits in the model's positions. ``model`` may be just its config
    (``AutoConfig.from_pretrained(...)``), so a bad setting fails before any weights are loaded."""
    sources = _check_sources(sources)
    template = resolve_template(src_lang, tgt_lang, template)
    max_new_tokens = _check_int("max_new_tokens", max_new_tokens, 1)
    if sources:
        prompts = [build_prompt(template, s) for s in sources]
        _check_positions(model, [len(ids) for ids in tokenizer(prompts)["input_ids"]], max_new_tokens)


@torch.no_grad()
def translate(
    model: Any,
    tokenizer: Any,
    sources: Sequence[str],
    *,
    src_lang: str = "de",
    tgt_lang: str = "en",
    template: str | None = None,
    batch_size: int = 8,
    num_beams: int = 1,
    max_new_tokens: int = 64,
    progress: bool = True,
) -> list[str]:
    """Translate ``sources`` with a causal LM; return one stripped translation per source, in order.

    Each source is put into the prompt template (:func:`resolve_template`), prompts are batched with LEFT
    padding (the tokenizer's padding side and pad token are restored afterwards; the eos token pads when
    there is no pad token) and generated greedily (``num_beams=1``) or with beam search. Generation stops
    at a newline or eos; each output is then cut with :func:`cut_translation`. Prompts are grouped by
    length to reduce padding. The model runs in eval mode for the call (its mode is restored).
    """
    sources = _check_sources(sources)
    template = resolve_template(src_lang, tgt_lang, template)
    batch_size = _check_int("batch_size", batch_size, 1)
    num_beams = _check_int("num_beams", num_beams, 1)
    max_new_tokens = _check_int("max_new_tokens", max_new_tokens, 1)
    if not sources:
        return []

    markers = template_markers(template)
    prompts = [build_prompt(template, s) for s in sources]
    lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    _check_positions(model, lengths, max_new_tokens)
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])  # longest first: memory errors show early
    outputs: list[str] = [""] * len(prompts)
    stop_ids = _stop_ids(model, tokenizer)
    device = getattr(model, "device", torch.device("cpu"))
    # built once per call: it preprocesses the whole vocabulary (~0.3 s for a 49k vocabulary)
    stop_at_newline = StoppingCriteriaList([StopStringCriteria(tokenizer, ["\n"])])

    with _generation_state(model, tokenizer) as pad_id, _progress(len(prompts), progress) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(device)
            out = model.generate(
                **enc,
                do_sample=False,
                num_beams=num_beams,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_id,
                eos_token_id=sorted(stop_ids) or None,
                stopping_criteria=stop_at_newline,
            )
            new_tokens = out[:, enc["input_ids"].shape[1] :].tolist()
            for i, ids in zip(idx, new_tokens, strict=True):
                cut = next((k for k, t in enumerate(ids) if t in stop_ids), len(ids))
                text = tokenizer.decode(ids[:cut], skip_special_tokens=True)
                outputs[i] = cut_translation(text, eos_token=tokenizer.eos_token, markers=markers)
            bar.update(len(idx))
    return outputs


# -------------------------------------------------------------------------------------------- scoring


def _check_texts(hypotheses: Any, references: Any) -> tuple[list[str], list[str]]:
    for name, texts in (("hypotheses", hypotheses), ("references", references)):
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TranslationError(f"{name} must be a list of strings, got {type(texts).__name__}")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise TranslationError(f"{name} must all be strings; item {bad[0]} is {type(texts[bad[0]]).__name__}")
    if len(hypotheses) != len(references):
        raise TranslationError(
            f"got {len(hypotheses)} hypotheses but {len(references)} references; pass exactly one reference "
            "per hypothesis, in the same order"
        )
    if not hypotheses:
        raise TranslationError("nothing to score: hypotheses and references are empty; pass at least one pair")
    return list(hypotheses), list(references)


_EVALUATE_MODULES: dict[str, Any] = {}  # evaluate module path -> loaded metric or the exception it raised


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _load_evaluate_metric(path: str) -> Any:
    """``evaluate.load(path)``, cached per process (failures too, so "auto" pays the attempt once).

    When ``HF_HUB_OFFLINE`` is set but ``HF_EVALUATE_OFFLINE`` is not, evaluate is told to stay offline
    too (it reads only its own variable and would otherwise try the network)."""
    cached = _EVALUATE_MODULES.get(path)
    if isinstance(cached, BaseException):
        raise cached
    if cached is not None:
        return cached
    try:
        import evaluate
        import evaluate.config as evaluate_config
    except ImportError as exc:
        error: BaseException = ImportError(f"the `evaluate` package is not installed ({exc}); pip install evaluate")
        _EVALUATE_MODULES[path] = error
        raise error from exc
    force_offline = _truthy("HF_HUB_OFFLINE") and not evaluate_config.HF_EVALUATE_OFFLINE
    if force_offline:
        evaluate_config.HF_EVALUATE_OFFLINE = True
    try:
        metric = evaluate.load(path)
    except Exception as exc:  # noqa: BLE001 (evaluate raises many kinds; all mean "not available")
        _EVALUATE_MODULES[path] = exc
        raise
    finally:
        if force_offline:
            evaluate_config.HF_EVALUATE_OFFLINE = False
    _EVALUATE_MODULES[path] = metric
    return metric


def _short(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _evaluate_failure_note(path: str, exc: BaseException) -> str:
    if isinstance(exc, ImportError):
        return f"evaluate is not installed ({_short(exc)})"
    offline = (
        "; HF_EVALUATE_OFFLINE/HF_HUB_OFFLINE is set"
        if _truthy("HF_EVALUATE_OFFLINE") or _truthy("HF_HUB_OFFLINE")
        else ""
    )
    return (
        f"evaluate.load({path!r}) needs the Hugging Face Hub, a copy in evaluate's cache or a local metric "
        f"script (evaluate_module=PATH){offline}: {_short(exc)}"
    )


def score_translations(
    hypotheses: Sequence[str],
    references: Sequence[str],
    *,
    metric_backend: str = "auto",
    evaluate_module: str = "sacrebleu",
) -> dict[str, Any]:
    """Corpus BLEU and chrF of ``hypotheses`` against one reference each.

    Returns ``{"bleu", "chrf", "bleu_signature", "chrf_signature", "bleu_details", "n", "backend",
    "backend_note"}``. chrF always comes from ``sacrebleu.metrics.CHRF``. BLEU comes from
    ``sacrebleu.metrics.BLEU`` (``metric_backend="sacrebleu"``), from ``evaluate.load(evaluate_module)``
    (``"evaluate"``; ``evaluate_module`` may be a local path to evaluate's sacrebleu metric script), or
    from evaluate when it loads and sacrebleu otherwise (``"auto"``, with the reason in ``backend_note``).
    Both give the same numbers. The first ``evaluate`` attempt in a process costs a few seconds (import).

    Raises :class:`TranslationError` for empty input, non-strings, mismatched lengths or an unknown
    backend, and ``RuntimeError`` when ``metric_backend="evaluate"`` cannot load the metric.
    """
    hypotheses, references = _check_texts(hypotheses, references)
    if metric_backend not in METRIC_BACKENDS:
        raise TranslationError(f"unknown metric_backend {metric_backend!r}; use one of {', '.join(METRIC_BACKENDS)}")
    if not isinstance(evaluate_module, str) or not evaluate_module:
        raise TranslationError(f"evaluate_module must be a metric name or a local path, got {evaluate_module!r}")

    try:
        from sacrebleu.metrics import BLEU, CHRF
    except ImportError as exc:
        raise ImportError(f"scoring translations needs the `sacrebleu` package ({exc}); pip install sacrebleu") from exc

    bleu_metric, chrf_metric = BLEU(), CHRF()
    bleu_score = bleu_metric.corpus_score(hypotheses, [references])
    chrf_score = chrf_metric.corpus_score(hypotheses, [references])
    result: dict[str, Any] = {
        "bleu": float(bleu_score.score),
        "chrf": float(chrf_score.score),
        "bleu_signature": str(bleu_metric.get_signature()),
        "chrf_signature": str(chrf_metric.get_signature()),
        "bleu_details": {
            "precisions": [float(p) for p in bleu_score.precisions],
            "bp": float(bleu_score.bp),
            "sys_len": int(bleu_score.sys_len),
            "ref_len": int(bleu_score.ref_len),
        },
        "n": len(hypotheses),
        "backend": "sacrebleu",
        "backend_note": "metric_backend='sacrebleu'",
    }
    if metric_backend == "sacrebleu":
        return result

    try:
        metric = _load_evaluate_metric(evaluate_module)
    except Exception as exc:  # noqa: BLE001
        note = _evaluate_failure_note(evaluate_module, exc)
        if metric_backend == "evaluate":
            raise RuntimeError(
                f"metric_backend='evaluate' but {note}. Use metric_backend='sacrebleu' (identical numbers) or "
                "'auto', give evaluate Hub access, or pass evaluate_module=<path to a local sacrebleu metric script>."
            ) from exc
        result["backend_note"] = note
        return result

    computed = metric.compute(predictions=hypotheses, references=[[r] for r in references])
    if not isinstance(computed, dict) or "score" not in computed:
        raise RuntimeError(
            f"evaluate.load({evaluate_module!r}).compute() returned {computed!r}, not a sacrebleu result with "
            "a 'score'; point evaluate_module at the sacrebleu metric"
        )
    result["bleu"] = float(computed["score"])
    casts = {"precisions": lambda v: [float(x) for x in v], "bp": float, "sys_len": int, "ref_len": int}
    for key, cast in casts.items():
        if key in computed:
            result["bleu_details"][key] = cast(computed[key])
    result["backend"] = "evaluate"
    result["backend_note"] = f"BLEU from evaluate.load({evaluate_module!r}); chrF from sacrebleu"
    return result


# --------------------------------------------------------------------------------------- evaluation


@dataclass
class TranslationResult:
    """Scores and timing of :func:`evaluate_translation`. ``seconds`` counts translation, not scoring."""

    bleu: float
    chrf: float
    bleu_signature: str
    chrf_signature: str
    n: int
    seconds: float
    sentences_per_second: float
    backend: str
    backend_note: str
    bleu_details: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    examples: list[dict[str, str]] = field(default_factory=list)
    hypotheses: list[str] = field(default_factory=list, repr=False)

    def to_dict(self, with_hypotheses: bool = False) -> dict[str, Any]:
        """A JSON-ready dict of the result; ``hypotheses`` (all outputs) only when ``with_hypotheses``."""
        data = asdict(self)
        if not with_hypotheses:
            data.pop("hypotheses")
        return data


def _check_pairs(pairs: Any) -> list[tuple[str, str]]:
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
        raise TranslationError(f"pairs must be a list of (source, reference) tuples, got {type(pairs).__name__}")
    if not pairs:
        raise TranslationError(
            "pairs is empty: nothing to translate. Pass a list of (source, reference) tuples, e.g. from "
            "hf_attnswap.data.parallel.load_parallel('de-en-ding', 'test', limit=100)"
        )
    checked = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(isinstance(t, str) for t in pair):
            raise TranslationError(
                f"pairs[{i}] is {pair!r}; each pair must be a (source, reference) tuple of two strings"
            )
        checked.append((pair[0], pair[1]))
    return checked


def evaluate_translation(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    *,
    src_lang: str = "de",
    tgt_lang: str = "en",
    template: str | None = None,
    batch_size: int = 8,
    num_beams: int = 1,
    max_new_tokens: int = 64,
    progress: bool = True,
    metric_backend: str = "auto",
    evaluate_module: str = "sacrebleu",
    n_examples: int = 3,
) -> TranslationResult:
    """Translate the sources of ``pairs`` (:func:`translate`) and score them against the references
    (:func:`score_translations`). Returns a :class:`TranslationResult` with the scores, signatures, speed,
    the settings used and the first ``n_examples`` (source, hypothesis, reference) triples.

    Raises :class:`TranslationError` for empty or malformed ``pairs`` and bad options.
    """
    pairs = _check_pairs(pairs)
    n_examples = _check_int("n_examples", n_examples, 0)
    if metric_backend not in METRIC_BACKENDS:  # fail before the (slow) translation, not after it
        raise TranslationError(f"unknown metric_backend {metric_backend!r}; use one of {', '.join(METRIC_BACKENDS)}")
    sources, references = [p[0] for p in pairs], [p[1] for p in pairs]
    start = time.perf_counter()
    hypotheses = translate(
        model, tokenizer, sources, src_lang=src_lang, tgt_lang=tgt_lang, template=template,
        batch_size=batch_size, num_beams=num_beams, max_new_tokens=max_new_tokens, progress=progress,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    scores = score_translations(hypotheses, references, metric_backend=metric_backend, evaluate_module=evaluate_module)
    return TranslationResult(
        bleu=scores["bleu"],
        chrf=scores["chrf"],
        bleu_signature=scores["bleu_signature"],
        chrf_signature=scores["chrf_signature"],
        n=len(pairs),
        seconds=seconds,
        sentences_per_second=len(pairs) / seconds if seconds > 0 else math.inf,
        backend=scores["backend"],
        backend_note=scores["backend_note"],
        bleu_details=scores["bleu_details"],
        settings={
            "src_lang": src_lang,
            "tgt_lang": tgt_lang,
            "template": resolve_template(src_lang, tgt_lang, template),
            "batch_size": batch_size,
            "num_beams": num_beams,
            "max_new_tokens": max_new_tokens,
            "attn_implementation": attn_implementation_of(getattr(model, "config", None)),
        },  # fmt: skip
        examples=[
            {"source": s, "hypothesis": h, "reference": r}
            for s, h, r in list(zip(sources, hypotheses, references, strict=True))[:n_examples]
        ],
        hypotheses=hypotheses,
    )
