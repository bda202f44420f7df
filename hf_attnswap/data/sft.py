"""Supervised fine-tuning data for translation with a causal LM: prompt + target examples, loss on the target only.

:func:`load_translation_pairs` reads training and validation pairs (offline ``de-en-ding``, local JSONL, Hub),
:func:`build_translation_examples` tokenises them, :func:`pad_collate` makes batches.

One example is the prompt the evaluation uses (:func:`hf_attnswap.evaluation.translation.build_prompt`), then
a space, the reference translation and the tokenizer's EOS token::

    "Translate German to English.\\nGerman: Ich bin hier.\\nEnglish:" + " I am here." + <eos>
     `------------------------ labels -100 ---------------------'   `------ labels = input_ids -----'

Generation (:func:`~hf_attnswap.evaluation.translation.translate`) stops at EOS or a newline, so a model trained on
these examples learns to end its answer where the evaluation cuts it. A tokenizer without an EOS token ends the
target with ``"\\n"`` instead. The prompt tokens are exactly ``tokenizer(prompt)["input_ids"]``, the ids
:func:`~hf_attnswap.evaluation.translation.translate` feeds the model, so training and evaluation see the same
prompt.

Examples longer than ``block_size`` tokens are **dropped**, not truncated (a truncated example would lose its EOS
and teach the model to stop mid-sentence, or lose the source), and counted. :func:`pad_collate` right-pads a
batch and sets ``labels`` to -100 on the padding, so the loss covers target tokens only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import AttnSwapError

__all__ = ["IGNORE_INDEX", "SFTDataError", "TranslationExamples", "TranslationPairs", "build_translation_examples",
           "load_translation_pairs", "pad_collate", "tokenize_example"]

#: Label of the tokens that carry no loss (prompt and padding); the value Transformers' loss ignores.
IGNORE_INDEX = -100


class SFTDataError(AttnSwapError):
    """The fine-tuning data is unusable: nothing left after filtering, a tokenizer without pad/EOS, bad rows."""


@dataclass
class TranslationExamples:
    """Tokenised examples, usable as a map-style dataset (``len``, indexing) by a ``DataLoader``.

    Each row is ``{"input_ids": list[int], "labels": list[int]}`` of the same length L (1 <= L <= block_size);
    ``labels[i]`` is -100 on prompt tokens and ``input_ids[i]`` on target tokens (the model shifts them).
    ``dropped_too_long`` and ``dropped_empty`` count the pairs left out.
    """

    rows: list[dict[str, list[int]]]
    pairs: int
    dropped_too_long: int = 0
    dropped_empty: int = 0
    prompt_tokens: int = 0
    target_tokens: int = 0
    longest: int = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.rows[i]

    def summary(self) -> str:
        """One line: how many examples, how many dropped and why, tokens."""
        return (f"{len(self.rows)} of {self.pairs} pairs kept ({self.dropped_too_long} longer than block_size dropped, "
                f"{self.dropped_empty} with an empty side dropped); {self.target_tokens:,} target tokens "
                f"(loss), {self.prompt_tokens:,} prompt tokens (no loss); longest example {self.longest} tokens")


def _terminator(tokenizer: Any) -> tuple[list[int], str]:
    """What ends a target: ``([eos_id], "")`` or, without an EOS token, ``([], "\\n")`` (appended to the text)."""
    eos = getattr(tokenizer, "eos_token_id", None)
    return ([eos], "") if eos is not None else ([], "\n")


def tokenize_example(tokenizer: Any, prompt: str, target: str) -> dict[str, list[int]]:
    """One example: ``input_ids`` = ids of ``prompt + " " + target`` then EOS; ``labels`` = -100 on the prompt's
    ``len(tokenizer(prompt).input_ids)`` tokens, the ids elsewhere. Both lists have the same length."""
    return _tokenize(tokenizer, [prompt], [target])[0]


def _tokenize(tokenizer: Any, prompts: Sequence[str], targets: Sequence[str]) -> list[dict[str, list[int]]]:
    end_ids, end_text = _terminator(tokenizer)
    prompt_ids = tokenizer(list(prompts))["input_ids"]
    full_ids = tokenizer([p + " " + t + end_text for p, t in zip(prompts, targets, strict=True)])["input_ids"]
    rows = []
    for i, (p_ids, f_ids) in enumerate(zip(prompt_ids, full_ids, strict=True)):
        if f_ids[: len(p_ids)] == p_ids and len(f_ids) > len(p_ids):
            t_ids = list(f_ids[len(p_ids):])  # the whole text's tokenisation; its prefix is the prompt's
        else:  # the tokenizer merged across the prompt/target border: keep the prompt's own ids (what evaluation uses)
            t_ids = tokenizer(" " + targets[i] + end_text, add_special_tokens=False)["input_ids"]
        t_ids = t_ids + end_ids
        rows.append({"input_ids": list(p_ids) + t_ids, "labels": [IGNORE_INDEX] * len(p_ids) + t_ids})
    return rows


def build_translation_examples(pairs: Sequence[tuple[str, str]], tokenizer: Any, template: str, block_size: int,
                               *, batch_size: int = 1000) -> TranslationExamples:
    """Tokenise (source, target) ``pairs`` into :class:`TranslationExamples` with the resolved prompt ``template``
    (it holds ``{source}``; see :func:`~hf_attnswap.evaluation.translation.resolve_template`).

    Pairs with an empty (blank) source or target, and examples longer than ``block_size`` tokens, are dropped and
    counted. Raises :class:`SFTDataError` when nothing is left ("empty dataset after filtering").
    """
    from ..evaluation.translation import build_prompt

    if not isinstance(block_size, int) or block_size < 2:
        raise SFTDataError(f"block_size must be an integer >= 2 (prompt and target), got {block_size!r}")
    kept = [(s, t) for s, t in pairs if s.strip() and t.strip()]
    out = TranslationExamples(rows=[], pairs=len(pairs), dropped_empty=len(pairs) - len(kept))
    for start in range(0, len(kept), batch_size):
        chunk = kept[start:start + batch_size]
        prompts = [build_prompt(template, s.strip()) for s, _ in chunk]
        for row in _tokenize(tokenizer, prompts, [t.strip() for _, t in chunk]):
            n = len(row["input_ids"])
            if n > block_size:
                out.dropped_too_long += 1
                continue
            out.rows.append(row)
            targets = sum(1 for x in row["labels"] if x != IGNORE_INDEX)
            out.target_tokens += targets
            out.prompt_tokens += n - targets
            out.longest = max(out.longest, n)
    if not out.rows:
        why = (f"all {out.dropped_too_long} examples are longer than block_size={block_size} tokens (raise block_size)"
               if out.dropped_too_long else "no pair has both a source and a target")
        raise SFTDataError(f"empty dataset after filtering: {out.pairs} pairs in, none kept; {why}.")
    return out


def pad_collate(rows: Sequence[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch of examples to its longest row.

    Returns ``input_ids`` (B, L) padded with ``pad_token_id``, ``attention_mask`` (B, L) with 1 on real tokens and
    0 on padding, and ``labels`` (B, L): the rows' labels (-100 on prompts) and -100 on padding. L is the longest
    row of the batch. ``pad_token_id`` may equal EOS: padding is marked by position, never by token id.
    """
    if pad_token_id is None:
        raise SFTDataError("the tokenizer has no pad token (and no EOS to pad with); set tokenizer.pad_token.")
    if not rows:
        raise SFTDataError("cannot collate an empty batch")
    length = max(len(r["input_ids"]) for r in rows)
    input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        input_ids[i, :n] = torch.tensor(r["input_ids"], dtype=torch.long)
        labels[i, :n] = torch.tensor(r["labels"], dtype=torch.long)
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@dataclass
class TranslationPairs:
    """(source, target) pairs for training and validation, and where they came from (for logs and model cards)."""

    train: list[tuple[str, str]]
    validation: list[tuple[str, str]]
    source: str


def load_translation_pairs(
    *,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_file: str | None = None,
    validation_file: str | None = None,
    src_lang: str = "de",
    tgt_lang: str = "en",
    validation_split_percentage: float = 5.0,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
) -> TranslationPairs:
    """Training and validation pairs through :func:`hf_attnswap.data.parallel.load_parallel`.

    ``train_file`` (a ``.jsonl`` file) wins over ``dataset_name``; with it, ``validation_file`` is the validation
    data, or else the last ``validation_split_percentage`` % of the training pairs are held out (before
    ``max_train_samples``). ``dataset_name`` is an offline asset (``de-en-ding``, prepared if needed), a local folder
    with ``train.jsonl`` and ``validation.jsonl``, or a Hub dataset (with ``dataset_config_name``, e.g. ``wmt14`` /
    ``de-en``); its ``train`` and ``validation`` splits are used. ``max_train_samples`` / ``max_eval_samples`` keep the
    first N pairs. Raises :class:`~hf_attnswap.data.parallel.DataSourceError` (missing file, split or language key)
    or :class:`SFTDataError` (no source, no validation pair).
    """
    from .assets import resolve_asset
    from .parallel import load_parallel

    langs = {"src_lang": src_lang, "tgt_lang": tgt_lang}
    if train_file is not None:
        train = load_parallel(train_file, "train", **langs)
        if validation_file is not None:
            validation = load_parallel(validation_file, "validation", limit=max_eval_samples, **langs)
        else:
            held = int(len(train) * validation_split_percentage / 100)
            train, validation = train[:len(train) - held], train[len(train) - held:]
        source = train_file
    elif dataset_name is not None:
        asset = resolve_asset(dataset_name)  # prepares an offline asset on first use; None for folders and Hub names
        source = f"{dataset_name} (offline asset {asset})" if asset is not None else dataset_name
        train = load_parallel(dataset_name, "train", config_name=dataset_config_name, limit=max_train_samples, **langs)
        validation = load_parallel(dataset_name, "validation", config_name=dataset_config_name, limit=max_eval_samples,
                                   **langs)
    else:
        raise SFTDataError("say where the sentence pairs come from: dataset_name (de-en-ding, a folder with "
                           "train.jsonl/validation.jsonl, or a Hub dataset) or train_file (a .jsonl file).")
    train = train[:max_train_samples] if max_train_samples is not None else train
    validation = validation[:max_eval_samples] if max_eval_samples is not None else validation
    if not train:
        raise SFTDataError(f"{source} holds no training pairs; empty dataset.")
    if not validation:
        raise SFTDataError(f"no validation pairs from {source}: BLEU is measured on them. Pass validation_file, or "
                           f"validation_split_percentage > 0 with enough training pairs.")
    return TranslationPairs(train=train, validation=validation, source=source)
