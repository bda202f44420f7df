"""The from-scratch runs' text and vocabulary: a small byte-level BPE trained (with the ``tokenizers`` library) on the
training split of the offline Wikipedia text, saved once as a Transformers tokenizer folder that the recipe loads
with ``--tokenizer_name``; and the n-gram references on the same split and vocabulary (unigram and add-k bigram)
that the validity condition of SCIENCE.md compares the trained models with.

Both are computed in the main process before any job starts and cached under the runs folder; the tokenizer
folder's name carries a hash of its ``tokenizer.json``, so a different vocabulary is never mistaken for a cached
one (the recipe commands, which name the folder, change with it)."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from .files import read_json, write_json

EOS = "<|endoftext|>"
#: The add-k values tried for the bigram; the one with the lowest validation perplexity is kept (the strongest
#: bigram of the grid, so "at most half the bigram's perplexity" is judged against the hardest of them).
BIGRAM_KS = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
TOKENIZER_MARKER = "reproduce_tokenizer.json"


def excerpt(text: str, max_chars: int) -> str:
    """The first paragraphs of ``text`` (lines) whose total length stays within ``max_chars`` (at least the first
    paragraph, itself cut at a space before ``max_chars``)."""
    kept, size = [], 0
    for line in text.splitlines():
        if kept and size + len(line) + 1 > max_chars:
            break
        kept.append(line)
        size += len(line) + 1
    out = "\n".join(kept)
    if len(out) > max_chars:
        cut = out.rfind(" ", 0, max_chars)
        out = out[: cut if cut > 0 else max_chars]
    return out


def prepare_split(runs: Path, dataset: str, validation_split_percentage: float, excerpt_chars: int) -> dict[str, Path]:
    """The training and validation documents of the from-scratch and continued-pretraining runs, written once as
    ``runs/data/<dataset>/{train,validation}.jsonl`` (``{"text": ...}`` per line) for the recipe's ``--train_file``
    / ``--validation_file``: the recipe's own split of ``dataset`` (the last ``validation_split_percentage`` % of
    the documents held out), every held-out document cut to its first ``excerpt_chars`` characters (whole
    paragraphs) so that an evaluation costs seconds, not minutes. Returns {"train": path, "validation": path}."""
    from hf_attnswap.data.lm import load_lm_texts

    folder = runs / "data" / dataset
    key = {"dataset": dataset, "validation_split_percentage": validation_split_percentage,
           "excerpt_chars": excerpt_chars}
    paths = {"train": folder / "train.jsonl", "validation": folder / "validation.jsonl"}
    marker = folder / "split.json"
    if marker.is_file() and all(p.is_file() for p in paths.values()):
        try:
            if read_json(marker).get("key") == key:
                return paths
        except ValueError:
            pass
    texts = load_lm_texts(dataset_name=dataset, validation_split_percentage=validation_split_percentage)
    validation = [excerpt(t, excerpt_chars) for t in texts.validation]
    folder.mkdir(parents=True, exist_ok=True)
    for name, docs in (("train", texts.train), ("validation", validation)):
        with open(paths[name], "w", encoding="utf-8") as f:
            for d in docs:
                f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    write_json(marker, {"key": key, "train_documents": len(texts.train), "validation_documents": len(validation),
                        "train_chars": sum(map(len, texts.train)), "validation_chars": sum(map(len, validation)),
                        "source": texts.source})
    return paths


def split_texts(paths: dict[str, Path]) -> Any:
    """The documents of :func:`prepare_split`'s files, read as the recipe reads them (``load_lm_texts``)."""
    from hf_attnswap.data.lm import load_lm_texts

    return load_lm_texts(train_file=str(paths["train"]), validation_file=str(paths["validation"]))


def train_bpe(texts: list[str], vocab_size: int, out: Path) -> Path:
    """Train a byte-level BPE of ``vocab_size`` tokens (the 256 bytes, ``EOS`` and merges) on ``texts`` and save it
    to ``out`` as a Transformers fast tokenizer (``tokenizer.json``, EOS = pad = ``<|endoftext|>``); ``vocab_size``
    257 gives plain bytes (no merges). Deterministic for the same texts. Returns ``out``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 257:
        raise ValueError(f"vocab_size {vocab_size}: a byte-level vocabulary needs at least 257 tokens (256 bytes + EOS)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    return out


def scratch_tokenizer(runs: Path, paths: dict[str, Path], dataset: str, vocab_size: int) -> Path:
    """The trained tokenizer of the from-scratch runs, trained once on the training documents of
    :func:`prepare_split`'s ``paths``, then read from the cache: the folder
    ``runs/tokenizer/<dataset>-bpe<vocab>-<sha of tokenizer.json>``, which ``runs/tokenizer/<dataset>-bpe<vocab>.json``
    points to."""
    root = runs / "tokenizer"
    key = {"split": read_json(paths["train"].parent / "split.json")["key"], "vocab_size": vocab_size}
    index = root / f"{dataset}-bpe{vocab_size}.json"
    if index.is_file():
        try:
            known = read_json(index)
        except ValueError:
            known = {}
        folder = root / str(known.get("folder", ""))
        if known.get("key") == key and (folder / "tokenizer.json").is_file():
            return folder
    texts = split_texts(paths)
    tmp = root / f".{dataset}-bpe{vocab_size}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    train_bpe(texts.train, vocab_size, tmp)
    sha = hashlib.sha256((tmp / "tokenizer.json").read_bytes()).hexdigest()[:10]
    write_json(tmp / TOKENIZER_MARKER, {**key, "sha256_10": sha, "train_documents": len(texts.train)})
    folder = root / f"{dataset}-bpe{vocab_size}-{sha}"
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    write_json(index, {"key": key, "folder": folder.name})
    return folder


def ngram_reference(texts_train: list[str], texts_validation: list[str], tokenizer: Any,
                    ks: tuple[float, ...] = BIGRAM_KS) -> dict[str, Any]:
    """Unigram (add-1) and bigram (add-k, the best k of ``ks`` on the validation documents) perplexity of the
    validation documents under models counted on the training documents, with the tokenizer's ids. Like the
    recipe's perplexity, every token but each document's first is scored, and no count crosses a document border
    (each training document ends with EOS, which is a context of nothing scored). Returns the numbers."""
    eos = tokenizer.eos_token_id
    vocab = len(tokenizer)
    uni: Counter = Counter()
    ctx: Counter = Counter()
    bi: Counter = Counter()
    for doc in texts_train:
        ids = tokenizer(doc, add_special_tokens=False)["input_ids"] + [eos]
        uni.update(ids)
        ctx.update(ids[:-1])
        bi.update(zip(ids[:-1], ids[1:]))
    val = [tokenizer(doc, add_special_tokens=False)["input_ids"] for doc in texts_validation]
    pairs = [(a, b) for ids in val for a, b in zip(ids[:-1], ids[1:])]
    total = sum(uni.values())
    uni_nll = -sum(math.log((uni[b] + 1.0) / (total + vocab)) for _, b in pairs) / len(pairs)
    per_k = {}
    for k in ks:
        per_k[k] = -sum(math.log((bi[(a, b)] + k) / (ctx[a] + k * vocab)) for a, b in pairs) / len(pairs)
    best = min(per_k, key=per_k.get)
    return {"unigram": {"ppl": math.exp(uni_nll), "nll": uni_nll, "smoothing": 1.0},
            "bigram": {"ppl": math.exp(per_k[best]), "nll": per_k[best], "smoothing": best,
                       "ppl_per_k": {str(k): math.exp(v) for k, v in per_k.items()}},
            "tokens": len(pairs), "train_tokens": total, "vocab_size": vocab,
            "validation_documents": len(texts_validation), "train_documents": len(texts_train)}


def ngram_cached(runs: Path, paths: dict[str, Path], tokenizer_dir: Path) -> dict[str, Any]:
    """:func:`ngram_reference` for :func:`prepare_split`'s documents and the trained tokenizer, cached in
    ``runs/ngram.json`` (keyed by the split and the tokenizer folder, whose name holds its hash)."""
    from transformers import AutoTokenizer

    path = runs / "ngram.json"
    key = {"tokenizer": tokenizer_dir.name, "split": read_json(paths["train"].parent / "split.json")["key"],
           "ks": list(BIGRAM_KS)}
    if path.is_file():
        try:
            cached = read_json(path)
        except ValueError:
            cached = {}
        if cached.get("key") == key:
            return cached
    texts = split_texts(paths)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    result = {"key": key, **ngram_reference(texts.train, texts.validation, tok)}
    write_json(path, result)
    return result


def tokenizer_facts(tokenizer_dir: Path) -> dict[str, Any]:
    """What the report says about the trained tokenizer: its marker (vocabulary, split, hash) and folder name."""
    marker = tokenizer_dir / TOKENIZER_MARKER
    facts = json.loads(marker.read_text()) if marker.is_file() else {}
    return {"folder": tokenizer_dir.name, **facts}
