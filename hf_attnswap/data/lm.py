"""Causal-LM training data: load documents, hold out a validation split, tokenise and pack into blocks.

The packing follows ``run_clm_no_trainer.py``: documents are tokenised, joined (with the tokenizer's EOS
between documents, so the model sees where one ends) and cut into ``block_size`` chunks; the remainder that
does not fill a block is dropped. Validation stays as whole documents, because perplexity is measured on
documents by :func:`hf_attnswap.evaluation.perplexity.perplexity`.

With ``isolate_documents`` (the recipes' ``--packing documents``) the blocks are the same, but each row also holds
``position_ids`` that restart at 0 where a document (or the block) starts, as ``DataCollatorWithFlattening`` makes
them: Transformers then builds a block-diagonal causal mask (given no ``attention_mask`` and no cache), so no token
attends across a document border, and :func:`collate_blocks` drops the one target that would cross it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import AttnSwapError
from .assets import resolve_asset
from .text import TextDataError, load_texts

__all__ = ["IGNORE_INDEX", "LMDataError", "LMTexts", "collate_blocks", "document_positions", "load_lm_texts", "pack_texts"]

IGNORE_INDEX = -100


class LMDataError(AttnSwapError):
    """The training text is unusable: nothing left after filtering, fewer tokens than one block, bad split."""


@dataclass
class LMTexts:
    """Documents for training and validation, and where they came from (for logs and model cards)."""

    train: list[str]
    validation: list[str]
    source: str


def _source(name: str | None, files: str | None) -> tuple[Any, str]:
    if files is not None:
        return files, files
    asset = resolve_asset(name)
    if asset is not None:
        return asset, f"{name} (offline asset {asset})"
    return name, str(name)


def load_lm_texts(
    *,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_file: str | None = None,
    validation_file: str | None = None,
    text_column: str = "text",
    validation_split_percentage: float = 5.0,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
) -> LMTexts:
    """Load training and validation documents from a Hub dataset, an offline asset name or local files.

    Hub datasets use their ``validation`` split if they have one. Otherwise (and for a lone ``train_file``), the
    last ``validation_split_percentage`` % of the documents are held out, so train and validation never share a
    document. Empty documents are dropped. Errors (missing file, missing column, empty data, unreachable Hub) are
    :class:`~hf_attnswap.data.text.TextDataError` or :class:`LMDataError` and name the fix.
    """
    if (dataset_name is None) == (train_file is None):
        raise LMDataError("give exactly one of dataset_name (Hub name or offline asset such as news-text) and "
                          f"train_file (local file); got dataset_name={dataset_name!r}, train_file={train_file!r}.")
    if validation_file is not None and train_file is None:
        raise LMDataError("validation_file goes with train_file; with dataset_name the dataset's own split is used.")
    source, shown = _source(dataset_name, train_file)
    hub = dataset_name is not None and source == dataset_name  # not a local file, not an offline asset
    kw: dict[str, Any] = {"text_column": text_column}
    if hub:
        kw["config_name"] = dataset_config_name
    docs = [t for t in load_texts(source, **kw) if t.strip()]
    validation: list[str] | None = None
    if validation_file is not None:
        validation = [t for t in load_texts(validation_file, text_column=text_column) if t.strip()]
    elif hub:
        try:
            validation = [t for t in load_texts(source, split="validation", **kw) if t.strip()]
        except TextDataError:
            validation = None  # no validation split: hold out part of train below
    if validation is None:
        n_val = round(len(docs) * validation_split_percentage / 100)
        if validation_split_percentage > 0:
            n_val = max(n_val, 1)
        if n_val >= len(docs):
            raise LMDataError(f"{shown} has {len(docs)} non-empty documents: too few to hold out "
                              f"{validation_split_percentage}% for validation and still train. Add text or pass "
                              f"a validation_file.")
        docs, validation = docs[: len(docs) - n_val], docs[len(docs) - n_val:]
    if max_train_samples is not None:
        docs = docs[:max_train_samples]
    if max_eval_samples is not None:
        validation = validation[:max_eval_samples]
    if not docs:
        raise LMDataError(f"{shown}: no non-empty training documents in column {text_column!r} after filtering.")
    return LMTexts(train=docs, validation=validation, source=shown)


def document_positions(lengths: list[int], block_size: int, total: int) -> list[list[int]]:
    """``position_ids`` of the blocks cut from documents of token counts ``lengths`` joined end to end: each block's
    positions count from 0 where a document or the block starts. ``total``: the tokens kept (whole blocks)."""
    flat: list[int] = []
    for n in lengths:
        flat.extend(range(n))
    rows = []
    for start in range(0, total, block_size):
        row = flat[start:start + block_size]
        offset = row[0]
        for i, p in enumerate(row):
            if p == 0:
                offset = 0
            row[i] = p - offset
        rows.append(row)
    return rows


def pack_texts(texts: list[str], tokenizer: Any, block_size: int, *, num_proc: int | None = None,
               isolate_documents: bool = False) -> Any:
    """Tokenise ``texts`` and pack them into a ``datasets.Dataset`` of ``input_ids`` rows of length ``block_size``.

    Documents are joined with ``tokenizer.eos_token_id`` after each (when the tokenizer has one); the tail that
    does not fill a block is dropped. Labels are the inputs (the model shifts them). ``isolate_documents``: each row
    also holds ``position_ids`` (:func:`document_positions`; the EOS belongs to the document it ends), so that
    attention stays inside each document. Raises :class:`LMDataError` when the texts hold fewer than ``block_size``
    tokens.
    """
    import datasets

    eos = tokenizer.eos_token_id

    def tokenize(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"input_ids": [x + [eos] if eos is not None else x for x in ids]}

    def group(batch: dict[str, list[list[int]]]) -> dict[str, list[list[int]]]:
        flat = [t for ids in batch["input_ids"] for t in ids]
        n = (len(flat) // block_size) * block_size
        rows = {"input_ids": [flat[i:i + block_size] for i in range(0, n, block_size)]}
        if isolate_documents:
            rows["position_ids"] = document_positions([len(ids) for ids in batch["input_ids"]], block_size, n)
        return rows

    ds = datasets.Dataset.from_dict({"text": list(texts)})
    ds = ds.map(tokenize, batched=True, remove_columns=["text"], num_proc=num_proc, desc="tokenising")
    total = sum(len(x) for x in ds["input_ids"])
    if total < block_size:
        raise LMDataError(f"the training text has {total:,} tokens, fewer than one block of block_size={block_size}; "
                          f"lower block_size or add text.")
    # One group over everything (batch_size=None): no tokens are lost at batch borders.
    return ds.map(group, batched=True, batch_size=None, num_proc=None, desc=f"packing into blocks of {block_size}")


def collate_blocks(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Packed blocks -> the model's keywords: ``input_ids`` and ``labels`` (the model shifts labels), (batch,
    block_size). Rows with ``position_ids`` (``pack_texts(isolate_documents=True)``) also pass them, with
    ``use_cache=False`` (Transformers derives the block-diagonal mask from ``position_ids`` only without a cache), and
    the label of each document's first token is ``-100``: it would be predicted from the previous document."""
    ids = torch.tensor([r["input_ids"] for r in rows], dtype=torch.long)
    batch: dict[str, Any] = {"input_ids": ids, "labels": ids.clone()}
    if rows and "position_ids" in rows[0]:
        positions = torch.tensor([r["position_ids"] for r in rows], dtype=torch.long)
        batch["labels"][positions == 0] = IGNORE_INDEX
        batch["position_ids"] = positions
        batch["use_cache"] = False
    return batch
