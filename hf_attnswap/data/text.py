"""Load a list of texts (documents) for evaluation, from memory, local files, a saved dataset or the Hub.

```python
from hf_attnswap.data.text import load_texts
load_texts(["first document", "second document"])           # a list/tuple of strings: used as is
load_texts("corpus.txt")                                     # the whole file is one document
load_texts("corpus.txt", txt_sample_by="paragraph")          # one document per blank-line-separated block
load_texts("data/*.jsonl", text_column="content")            # .json/.jsonl, .parquet, .csv (one row = one document)
load_texts([Path("a.parquet"), Path("b.parquet")])           # several files (same format): pathlib.Path objects
load_texts("saved_dir", split="test")                        # a folder written by datasets' save_to_disk
load_texts("wikitext", config_name="wikitext-2-raw-v1", split="test")   # a Hub dataset (needs the Hub)
```

Rules:

* A plain ``str`` is always a path, a glob pattern or a Hub dataset name, never a text: to score one text,
  pass ``[text]``. A list/tuple of ``str`` is a list of texts; a list of files must be ``pathlib.Path``
  objects (a list of strings that are all existing file names is refused, since it is almost surely meant
  as files).
* ``.txt`` files: by default each file is **one document** (the whole file, line breaks kept), which is
  what perplexity over running text wants. ``txt_sample_by="paragraph"`` makes each blank-line-separated
  block a document, ``"line"`` each line (datasets' ``text`` builder does the splitting).
* ``.json``/``.jsonl``, ``.parquet``, ``.csv``: one row is one document, taken from ``text_column``.
* ``split`` and ``config_name`` apply to Hub datasets; ``split`` also picks a split of a saved
  ``DatasetDict``. For sources without splits (lists, files, a saved single ``Dataset``) leave them at
  their defaults: any other value is an error rather than silently ignored.
* Missing ``None`` values in the text column become ``""``. Empty texts are kept (perplexity skips and
  counts them), but a source with no rows, or only empty texts, is an error.

Every problem raises :class:`TextDataError` (an :class:`~hf_attnswap.errors.AttnSwapError`) that names the
source and the fix. Files and Hub names are read with the ``datasets`` library (``pip install datasets``).
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import AttnSwapError
from .files import file_problem
from .hints import param, setting

__all__ = ["FILE_BUILDERS", "TXT_SAMPLE_BY", "TextDataError", "TextSource", "load_texts"]

#: File extension -> the ``datasets`` packaged builder that reads it.
FILE_BUILDERS: dict[str, str] = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
#: Accepted values of ``txt_sample_by`` (how a ``.txt`` file is split into documents).
TXT_SAMPLE_BY: tuple[str, ...] = ("document", "paragraph", "line")

TextSource = str | os.PathLike | Sequence[str] | Sequence[os.PathLike]

_DEFAULT_SPLIT = "train"
_DEFAULT_COLUMN = "text"
_GLOB_CHARS = ("*", "?", "[")
_SAVED_DATASET_FILES = (("dataset_info.json", "state.json"), ("dataset_dict.json",))


class TextDataError(AttnSwapError):
    """Texts could not be loaded: missing file, unknown format, missing column, empty data, unreachable Hub name."""


def load_texts(
    source: TextSource,
    *,
    split: str = _DEFAULT_SPLIT,
    text_column: str = _DEFAULT_COLUMN,
    config_name: str | None = None,
    limit: int | None = None,
    txt_sample_by: str = "document",
) -> list[str]:
    """Return the documents of ``source`` as a list of strings (see the module docstring for the rules).

    Args:
        source: a list/tuple of texts; a file path (``str``/``Path``), glob pattern or list of ``Path``
            (``.txt``, ``.json``, ``.jsonl``, ``.parquet``, ``.csv``; all of one format); a folder written
            by ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``; or a Hub dataset name.
        split: split of a Hub dataset or saved ``DatasetDict``.
        text_column: column that holds the text (files other than ``.txt``, saved datasets, Hub datasets).
        config_name: configuration of a Hub dataset (e.g. ``"wikitext-2-raw-v1"``).
        limit: keep only the first ``limit`` documents (``None``: all).
        txt_sample_by: how ``.txt`` files are split into documents: ``"document"`` (whole file, default),
            ``"paragraph"`` (blank-line-separated blocks) or ``"line"``.

    Returns:
        ``list[str]``, one entry per document, in source order (possibly containing empty strings).
    """
    limit = _check_limit(limit)
    if txt_sample_by not in TXT_SAMPLE_BY:
        raise TextDataError(
            f"load_texts: {param('txt_sample_by')} must be one of {', '.join(map(repr, TXT_SAMPLE_BY))}; got {txt_sample_by!r}."
        )
    if not isinstance(text_column, str) or not text_column:
        raise TextDataError(f"load_texts: {param('text_column')} must be a non-empty column name, got {text_column!r}.")

    if isinstance(source, (list, tuple)):
        if not source:
            raise TextDataError("load_texts: the list of texts is empty; pass at least one non-empty text.")
        if all(isinstance(s, str) for s in source):
            _reject_sample_by("a list of texts", txt_sample_by)
            return _from_strings(list(source), split, text_column, config_name, limit)
        if all(isinstance(s, os.PathLike) for s in source):
            return _from_files([Path(s) for s in source], split, text_column, config_name, limit, txt_sample_by)
        kinds = sorted({type(s).__name__ for s in source})
        raise TextDataError(
            f"load_texts: a list source must hold only texts (str) or only file paths (pathlib.Path); got a mix of "
            f"{', '.join(kinds)}. Pass texts as strings and files as pathlib.Path objects, in separate calls."
        )
    if isinstance(source, os.PathLike):
        return _from_path(Path(source), str(source), split, text_column, config_name, limit, txt_sample_by, hub_ok=False)
    if isinstance(source, str):
        if not source.strip():
            raise TextDataError("load_texts: the source is an empty string; pass a path, a Hub dataset name or a list of texts.")
        if any(c in source for c in _GLOB_CHARS) and not Path(source).exists():
            matches = sorted(glob.glob(os.path.expanduser(source), recursive=True))
            if not matches:
                raise TextDataError(f"load_texts: no file matches the pattern {source!r}; check the path and the pattern.")
            return _from_files([Path(m) for m in matches], split, text_column, config_name, limit, txt_sample_by)
        return _from_path(Path(os.path.expanduser(source)), source, split, text_column, config_name, limit,
                          txt_sample_by, hub_ok=True)
    raise TextDataError(
        f"load_texts: source must be a list of texts, a file/folder path, a glob pattern or a Hub dataset name; "
        f"got {type(source).__name__}."
    )


# --- sources ------------------------------------------------------------------------------------------------


def _from_strings(texts: list[str], split: str, column: str, config_name: str | None, limit: int | None) -> list[str]:
    _reject_split_options("a list of texts", split, config_name, column=column)
    existing = [t for t in texts if t and len(t) < 4096 and "\n" not in t and Path(t).is_file()]
    if len(existing) == len(texts):
        raise TextDataError(
            f"load_texts: every string in the list is the name of an existing file (e.g. {texts[0]!r}), so they look "
            f"like file paths, not texts. To load these files, pass them as pathlib.Path objects (or pass one glob "
            f"pattern string such as 'data/*.txt')."
        )
    return _finish(texts[:limit] if limit is not None else texts, "the list of texts")


def _from_path(path: Path, shown: str, split: str, column: str, config_name: str | None, limit: int | None,
               txt_sample_by: str, *, hub_ok: bool) -> list[str]:
    if path.is_dir():
        _reject_sample_by(f"the folder {path}", txt_sample_by)
        return _from_saved(path, split, column, config_name, limit)
    if path.exists():
        return _from_files([path], split, column, config_name, limit, txt_sample_by)
    looks_local = (not hub_ok or path.is_absolute() or shown.startswith((".", "~")) or "\\" in shown
                   or path.suffix.lower() in FILE_BUILDERS)
    if looks_local:
        raise TextDataError(f"load_texts: file not found: {os.path.abspath(path)}. Check the path (or run from the right folder).")
    _reject_sample_by(f"the Hub dataset {shown!r}", txt_sample_by)
    return _from_hub(shown, split, column, config_name, limit)


def _from_files(paths: list[Path], split: str, column: str, config_name: str | None, limit: int | None,
                txt_sample_by: str) -> list[str]:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise TextDataError(f"load_texts: file(s) not found: {', '.join(missing)}. Check the paths.")
    folders = [str(p) for p in paths if p.is_dir()]
    if folders:
        raise TextDataError(
            f"load_texts: {', '.join(folders)} is a folder; in a list, pass files (a folder on its own must be one "
            f"written by datasets' save_to_disk)."
        )
    suffixes = {p.suffix.lower() for p in paths}
    unknown = sorted(s or "(no extension)" for s in suffixes if s not in FILE_BUILDERS)
    if unknown:
        raise TextDataError(
            f"load_texts: unsupported file extension {', '.join(unknown)} ({paths[0]}); supported: "
            f"{', '.join(FILE_BUILDERS)}. Convert the file, or load it yourself and pass a list of texts."
        )
    builders = {FILE_BUILDERS[s] for s in suffixes}
    if len(builders) > 1:
        raise TextDataError(
            f"load_texts: the files mix formats ({', '.join(sorted(suffixes))}); load each format in its own call "
            f"and concatenate the lists."
        )
    shown = str(paths[0]) if len(paths) == 1 else f"{len(paths)} files ({paths[0]}, ...)"
    _reject_split_options(shown, split, config_name)
    empty = [str(p) for p in paths if p.stat().st_size == 0]
    if len(empty) == len(paths):
        raise TextDataError(f"load_texts: {', '.join(empty)} is empty (0 bytes); pass a file with text in it.")
    builder = builders.pop()
    if builder != "text":
        _reject_sample_by(shown, txt_sample_by)
    kwargs: dict[str, Any] = {"sample_by": txt_sample_by} if builder == "text" else {}
    datasets = _import_datasets()
    try:
        ds = datasets.load_dataset(builder, data_files=[str(p) for p in paths if p.stat().st_size > 0],
                                   split="train", **kwargs)
    except Exception as exc:  # datasets raises many types (DatasetGenerationError, ArrowInvalid, StopIteration...)
        cause = exc.__cause__ or exc.__context__
        for p in paths:  # say which file is bad and where (not UTF-8, line N is not JSON), not datasets' internals
            problem = _file_problem(p)
            if problem is not None:
                fix = "UTF-8, one JSON object per line" if builder == "json" else f"UTF-8 {builder}"
                raise TextDataError(f"load_texts: {problem}. Fix the file ({fix}) or pass another one.") from None
        if _means_no_rows(exc):
            raise TextDataError(f"load_texts: {shown} has no rows; pass a file with at least one document.") from exc
        detail = f"{type(exc).__name__}: {exc}" + (f" (caused by {type(cause).__name__}: {cause})" if cause else "")
        raise TextDataError(
            f"load_texts: could not read {shown} as {builder} ({detail}). Check that the file is valid {builder}."
        ) from exc
    return _column(ds, column, limit, shown)


def _from_saved(path: Path, split: str, column: str, config_name: str | None, limit: int | None) -> list[str]:
    if not any(all((path / f).is_file() for f in files) for files in _SAVED_DATASET_FILES):
        raise TextDataError(
            f"load_texts: {path} is a folder but not one written by datasets' save_to_disk (no dataset_info.json + "
            f"state.json, nor dataset_dict.json). Pass the data files inside it instead, as pathlib.Path objects or "
            f"a glob pattern such as '{path / '*.jsonl'}'."
        )
    if _saved_without_rows(path):
        raise TextDataError(f"load_texts: the saved dataset {path} has no rows; pass a source that contains text.")
    datasets = _import_datasets()
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise TextDataError(f"load_texts: could not load the saved dataset {path} ({type(exc).__name__}: {exc}).") from exc
    if isinstance(ds, datasets.DatasetDict):
        if config_name is not None:
            raise TextDataError(f"load_texts: {param('config_name')} applies only to Hub datasets; {path} is a saved "
                                f"DatasetDict. Leave {param('config_name')} out.")
        if split not in ds:
            raise TextDataError(
                f"load_texts: the saved DatasetDict {path} has no split {split!r}; its splits are "
                f"{', '.join(map(repr, ds))}. Pass {setting('split', '<one of them>')}."
            )
        return _column(ds[split], column, limit, f"{path} (split {split!r})")
    _reject_split_options(f"the saved Dataset {path}", split, config_name)
    return _column(ds, column, limit, str(path))


def _from_hub(name: str, split: str, column: str, config_name: str | None, limit: int | None) -> list[str]:
    datasets = _import_datasets()
    shown = f"{name!r}" + (f" (config {config_name!r})" if config_name else "") + f", split {split!r}"
    try:
        ds = datasets.load_dataset(name, config_name, split=split)
    except Exception as exc:
        raise TextDataError(
            f"load_texts: {name!r} is not a local file or folder, and the Hub dataset {shown} could not be loaded "
            f"({type(exc).__name__}: {exc}). If the Hugging Face Hub is unreachable (offline), save the texts as "
            f"local files (.txt, .jsonl, .parquet, .csv) or a datasets.save_to_disk folder and pass that path; "
            f"if you meant a local file, no such file exists at {os.path.abspath(name)}."
        ) from exc
    if not isinstance(ds, datasets.Dataset):
        raise TextDataError(f"load_texts: the Hub dataset {shown} did not load as a single split "
                            f"(got {type(ds).__name__}); pass {setting('split', '<a split name>')} such as 'train' or "
                            f"'test'.")
    return _column(ds, column, limit, f"the Hub dataset {shown}")


# --- helpers ------------------------------------------------------------------------------------------------


def _column(ds: Any, column: str, limit: int | None, shown: str) -> list[str]:
    """The ``column`` of a ``datasets.Dataset`` as a list of str (``None`` -> ``""``)."""
    if ds.num_rows == 0:
        raise TextDataError(f"load_texts: {shown} has no rows; pass a source that contains text.")
    if column not in ds.column_names:
        raise TextDataError(
            f"load_texts: {shown} has no column {column!r}; its columns are {', '.join(map(repr, ds.column_names))}. "
            f"Pass {setting('text_column', '<one of them>')}."
        )
    feature = ds.features[column]
    dtype = getattr(feature, "dtype", None)
    if dtype not in ("string", "large_string"):
        text_cols = [c for c, f in ds.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
        hint = (f"text columns: {', '.join(map(repr, text_cols))}" if text_cols else "it has no text column")
        raise TextDataError(
            f"load_texts: column {column!r} of {shown} holds {feature!r}, not text ({hint}). Pass "
            f"{setting('text_column', '<a text column>')}."
        )
    if limit is not None:
        ds = ds.select(range(min(limit, ds.num_rows)))
    texts = ["" if t is None else t for t in ds[column]]
    return _finish(texts, shown)


def _finish(texts: list[str], shown: str) -> list[str]:
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TextDataError(f"load_texts: item {i} of {shown} is a {type(t).__name__}, not a str; pass only strings.")
    if not texts or all(not t.strip() for t in texts):
        raise TextDataError(f"load_texts: {shown} contains no text (every document is empty); pass a source with text in it.")
    return texts


def _reject_split_options(shown: str, split: str, config_name: str | None, column: str | None = None) -> None:
    if config_name is not None:
        raise TextDataError(f"load_texts: {param('config_name')} applies only to Hub datasets, not to {shown}; leave it "
                            f"out.")
    if split != _DEFAULT_SPLIT:
        raise TextDataError(
            f"load_texts: {setting('split', repr(split))} applies only to Hub datasets and saved DatasetDicts; {shown} "
            f"has no splits. "
            f"Leave split at its default, or load the file that holds that split."
        )
    if column is not None and column != _DEFAULT_COLUMN:
        raise TextDataError(f"load_texts: {param('text_column')} applies to tabular data, not to {shown}; leave it at "
                            f"its default.")


def _reject_sample_by(shown: str, txt_sample_by: str) -> None:
    if txt_sample_by != "document":
        raise TextDataError(
            f"load_texts: {setting('txt_sample_by', repr(txt_sample_by))} splits .txt files only; {shown} is not a .txt "
            f"file (its rows are the documents). Leave {param('txt_sample_by')} at 'document'."
        )


def _file_problem(path: Path) -> str | None:
    kind = {".txt": "text", ".csv": "csv", ".json": "json", ".jsonl": "jsonl"}.get(path.suffix.lower())
    return None if kind is None or path.stat().st_size == 0 else file_problem(path, kind)


def _means_no_rows(exc: BaseException) -> bool:
    """Whether a datasets error only says that the files hold no rows (the messages differ per builder)."""
    if isinstance(exc, StopIteration):  # json builder on a file without rows
        return True
    messages = [str(exc), str(exc.__cause__ or exc.__context__ or "")]
    return any(m in text for text in messages for m in ("corresponds to no data", "BatchSize must be greater than 0"))


def _saved_without_rows(path: Path) -> bool:
    """A save_to_disk Dataset folder whose state lists no data files (datasets cannot load it back)."""
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and state.get("_data_files") == []


def _check_limit(limit: Any) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise TextDataError(f"load_texts: {param('limit')} must be a positive integer"
                            f"{'' if param('limit').startswith('-') else ' or None'}, got {limit!r}.")
    return limit


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise TextDataError(
            "load_texts: reading files or Hub datasets needs the `datasets` library; run `pip install datasets` "
            "(or pass a list of texts)."
        ) from exc
    return datasets
