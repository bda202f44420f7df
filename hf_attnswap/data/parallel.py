"""German–English sentence pairs for translation evaluation, and a loader for other parallel data.

``de-en-ding`` is built from the Debian package ``trans-de-en`` (GPL-2+): the Ding German–English
dictionary of TU Chemnitz (Frank Richter, https://dict.tu-chemnitz.de/), file ``/usr/share/trans/de-en``.
Besides single words, the dictionary holds many human-translated example sentences
("Es steht Ihnen frei zu gehen. :: You are at liberty to go."). Those are the pairs kept here.

**This is not a standard MT benchmark** (not WMT, not IWSLT): the sentences are short dictionary
examples, often idiomatic, with a single reference each. Numbers on it are comparable only with other
numbers on the same data (same package version, same splits).

How the pairs are made (:func:`parse_ding_lines`):

1. lines starting with ``#`` and blank lines are skipped; every other line is ``de :: en``;
2. each side is split at `` | ``; the parts are paired positionally (a line whose sides have different
   numbers of parts is skipped: its parts cannot be aligned);
3. within a part, ``;`` separates synonyms; the first (the dictionary's main form) is kept on each side;
4. annotations in braces and brackets (``{f}``, ``{vt}``, ``[ugs.]``, ``[Am.]``) are removed and
   whitespace is collapsed. Round parentheses stay: in example sentences they mark optional words
   (``"Is he the man (that) you saw?"``) and are part of the human translation;
5. a pair is kept when it is *sentence-like*: both sides have 4+ words, end in ``.``, ``!`` or ``?``
   (a closing quote may follow), start with an upper-case letter, a digit or an opening quote, hold no
   ellipsis (``…``, ``...``: sentence templates) and no dictionary placeholder (``etw.``, ``jdm.``,
   ``sb.``, ``sth.`` ...);
6. duplicates are dropped: one pair per German sentence, the first in the file (its main translation).

:func:`prepare_de_en` writes ``<cache>/de-en-ding/{train,validation,test}.jsonl`` (``{"de": ..., "en": ...}``
per line) from a shuffle with seed 0: 500 validation, 1000 test, the rest train. The ``.deb`` is fetched
with ``apt-get download`` and unpacked with ``dpkg-deb -x`` into a temporary folder; nothing is installed
system-wide.

Command line::

    python -m hf_attnswap.data.parallel [--force] [--deb PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import AssetError, AttnSwapError
from .cache import MARKER_FILE, cache_dir, install_folder, read_marker, staging_folder
from .hints import keyword, param, setting

__all__ = [
    "DE_EN_NAME",
    "DataSourceError",
    "SPLITS",
    "de_en_path",
    "is_de_en_prepared",
    "load_parallel",
    "main",
    "pairs_from_records",
    "parse_ding_lines",
    "prepare_de_en",
    "split_pairs",
]

#: The name :func:`load_parallel` accepts for the prepared Ding data, and its folder under the cache.
DE_EN_NAME = "de-en-ding"
#: Bump when the way the data is built changes; folders with an older marker count as not prepared.
DE_EN_FORMAT = 1
#: Split names, in the order they are cut from the shuffled pairs (train takes the rest).
SPLITS: tuple[str, ...] = ("train", "validation", "test")
SPLIT_SEED = 0
SPLIT_SIZES = {"validation": 500, "test": 1000}

DEBIAN_PACKAGE = "trans-de-en"
DING_MEMBER = "usr/share/trans/de-en"
LICENSE = "GPL-2.0-or-later"
NOT_A_BENCHMARK = (
    "NOT a standard MT benchmark: short human-translated example sentences from a dictionary, one "
    "reference each. Compare scores only with scores on the same data (same package version and splits)."
)

MIN_WORDS = 4
_ANNOTATION = re.compile(r"\s*(?:\{[^{}]*\}|\[[^\[\]]*\])")
_SPACES = re.compile(r"\s+")
_SENTENCE_END = re.compile(r"[.!?][\"'“”‘’»«]?$")
_OPENING_QUOTES = "\"'„“‚‘»«¿¡"
_ELLIPSIS = re.compile(r"…|\.\.\.")
_PLACEHOLDER = re.compile(r"(?<!\w)(?:etw|jd|jdm|jdn|jds|sb|sth)\.(?!\w)")
_OPEN, _CLOSE = "([{", ")]}"


class DataSourceError(AttnSwapError):
    """A parallel-data source cannot be read: missing file or split, missing language key, bad row."""


# --------------------------------------------------------------------------------------------- parse


def _first_alternative(part: str) -> str:
    """The text before the first ``;`` that is not inside brackets (Ding separates synonyms with ``;``)."""
    depth = 0
    for i, ch in enumerate(part):
        if ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth = max(0, depth - 1)
        elif ch == ";" and depth == 0:
            return part[:i]
    return part


def _clean(part: str) -> str:
    text = _ANNOTATION.sub("", _first_alternative(part))
    return _SPACES.sub(" ", text).strip()


def _sentence_like(text: str) -> bool:
    return (
        len(text.split()) >= MIN_WORDS
        and _SENTENCE_END.search(text) is not None
        and (text[0].isupper() or text[0].isdigit() or text[0] in _OPENING_QUOTES)
        and _ELLIPSIS.search(text) is None
        and _PLACEHOLDER.search(text) is None
    )


def parse_ding_lines(lines: Iterable[str]) -> list[tuple[str, str]]:
    """Turn lines of the Ding dictionary (``de1 | de2 :: en1 | en2``) into cleaned (German, English) pairs.

    Pure function (no I/O). Parts are paired positionally, the first ``;`` synonym is kept, ``{...}`` and
    ``[...]`` annotations are removed, only sentence-like pairs survive (see the module docstring for the
    exact rules) and each German sentence is kept once (first occurrence). Order follows the input.
    """
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    for line in lines:
        line = line.rstrip("\r\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        sides = line.split(" :: ")
        if len(sides) != 2:
            continue  # not a dictionary entry
        de_parts, en_parts = sides[0].split(" | "), sides[1].split(" | ")
        if len(de_parts) != len(en_parts):
            continue  # parts cannot be aligned
        for de_part, en_part in zip(de_parts, en_parts, strict=True):
            de, en = _clean(de_part), _clean(en_part)
            if de in seen or not (_sentence_like(de) and _sentence_like(en)):
                continue
            seen.add(de)
            pairs.append((de, en))
    return pairs


def split_pairs(
    pairs: Sequence[tuple[str, str]], *, seed: int = SPLIT_SEED, sizes: Mapping[str, int] | None = None
) -> dict[str, list[tuple[str, str]]]:
    """Shuffle ``pairs`` with ``random.Random(seed)`` and cut validation, then test, then train (the rest).

    ``sizes`` defaults to 500 validation and 1000 test pairs. Raises :class:`DataSourceError` when there
    are not more pairs than validation + test need.
    """
    sizes = dict(SPLIT_SIZES if sizes is None else sizes)
    need = sizes.get("validation", 0) + sizes.get("test", 0)
    if len(pairs) <= need:
        raise DataSourceError(
            f"only {len(pairs)} pairs, but validation + test need {need} and train needs at least one; "
            "pass smaller sizes or more data."
        )
    shuffled = list(pairs)
    random.Random(seed).shuffle(shuffled)
    n_val, n_test = sizes.get("validation", 0), sizes.get("test", 0)
    return {
        "validation": shuffled[:n_val],
        "test": shuffled[n_val : n_val + n_test],
        "train": shuffled[n_val + n_test :],
    }


# --------------------------------------------------------------------------------------------- paths


def de_en_path() -> Path:
    """Return where the prepared Ding de–en data lives (``<cache>/de-en-ding``); prepares nothing."""
    return cache_dir() / DE_EN_NAME


def is_de_en_prepared() -> bool:
    """Return True when ``<cache>/de-en-ding`` holds a current-format marker and all three split files."""
    folder = de_en_path()
    marker = read_marker(folder)
    if marker is None or marker.get("asset") != DE_EN_NAME or marker.get("format") != DE_EN_FORMAT:
        return False
    return all((folder / f"{split}.jsonl").is_file() for split in SPLITS)


# ------------------------------------------------------------------------------------------- prepare


def _log(message: str) -> None:
    print(f"[hf_attnswap] {message}", file=sys.stderr, flush=True)


def _tail(text: str, lines: int = 10) -> str:
    return "\n".join((text or "").strip().splitlines()[-lines:])


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise AssetError(f"could not run `{' '.join(cmd)}`: {exc}") from exc


def _require_tool(tool: str) -> None:
    if shutil.which(tool) is None:
        raise AssetError(
            f"preparing {DE_EN_NAME} needs `{tool}` (Debian/Ubuntu), which is not on PATH. On such a system "
            f"run `apt-get download {DEBIAN_PACKAGE}`; elsewhere get {DEBIAN_PACKAGE}_*.deb from "
            "packages.debian.org and pass it with prepare_de_en(deb=PATH) — extracting it still needs dpkg-deb."
        )


_MISSING_LISTS = ("Unable to locate package", "has no installation candidate", "No packages found")


def _apt_download(dest: Path) -> Path:
    """``apt-get download trans-de-en`` into ``dest`` (``apt-get update`` first only if the lists lack it)."""
    _require_tool("apt-get")
    cmd = ["apt-get", "download", DEBIAN_PACKAGE]
    proc = _run(cmd, cwd=dest)
    if proc.returncode != 0 and any(s in (proc.stderr + proc.stdout) for s in _MISSING_LISTS):
        _log("apt package lists do not know trans-de-en; running `apt-get update` ...")
        update = _run(["apt-get", "update"])
        if update.returncode != 0:
            raise AssetError(
                f"`apt-get update` failed (exit code {update.returncode}); it needs root and access to a "
                f"Debian mirror. Run `apt-get update` as root, then prepare again. apt-get said:\n"
                f"{_tail(update.stderr or update.stdout)}"
            )
        proc = _run(cmd, cwd=dest)
    if proc.returncode != 0:
        raise AssetError(
            f"`apt-get download {DEBIAN_PACKAGE}` failed (exit code {proc.returncode}). It needs access to a "
            f"Debian mirror (run `apt-get update` first if the package lists are missing). apt-get said:\n"
            f"{_tail(proc.stderr or proc.stdout)}"
        )
    debs = sorted(dest.glob(f"{DEBIAN_PACKAGE}_*.deb"))
    if not debs:
        raise AssetError(f"`apt-get download {DEBIAN_PACKAGE}` succeeded but left no .deb in {dest}")
    return debs[-1]


def _deb_field(deb: Path, field: str) -> str:
    proc = _run(["dpkg-deb", "-f", str(deb), field])
    if proc.returncode != 0:
        raise AssetError(f"`dpkg-deb -f {deb} {field}` failed: {_tail(proc.stderr)}")
    return proc.stdout.strip()


def _header(lines: Sequence[str]) -> list[str]:
    """The leading ``#`` comment lines of the dictionary (version, copyright, license, URL)."""
    out = []
    for line in lines:
        if not line.startswith("#"):
            break
        out.append(line.lstrip("# ").rstrip())
    return out


def _write_jsonl(path: Path, pairs: Sequence[tuple[str, str]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for de, en in pairs:
            f.write(json.dumps({"de": de, "en": en}, ensure_ascii=False) + "\n")


def _readme(version: str, header: Sequence[str], counts: Mapping[str, int]) -> str:
    rows = "\n".join(f"| {s} | {counts[s]} |" for s in SPLITS)
    head = "\n".join(f"    {h}" for h in header)
    return f"""# {DE_EN_NAME}: German–English sentence pairs from the Ding dictionary

**{NOT_A_BENCHMARK}**

Source: Debian package `{DEBIAN_PACKAGE}` version {version}, file `/{DING_MEMBER}` — the Ding
German–English dictionary by Frank Richter, TU Chemnitz (https://dict.tu-chemnitz.de/).
License: GNU GPL version 2 or later ({LICENSE}). The file's own header:

{head}

Files: `train.jsonl`, `validation.jsonl`, `test.jsonl`, one `{{"de": ..., "en": ...}}` object per line.
The sentence-like dictionary examples were cleaned and deduplicated as described in
`hf_attnswap/data/parallel.py` (first `;` synonym, `{{..}}`/`[..]` annotations removed, 4+ words, sentence
punctuation, no placeholders such as `etw.`/`sb.`, one pair per German sentence), shuffled with seed
{SPLIT_SEED} and cut into:

| split | pairs |
| --- | --- |
{rows}

Built by `python -m hf_attnswap.data.parallel`; load with
`hf_attnswap.data.parallel.load_parallel("{DE_EN_NAME}", split="test")`.
"""


def prepare_de_en(force: bool = False, *, deb: str | os.PathLike[str] | None = None) -> Path:
    """Build ``<cache>/de-en-ding`` (train/validation/test JSONL of Ding de–en sentence pairs); return it.

    The ``trans-de-en`` package is fetched with ``apt-get download`` into a temporary folder (running
    ``apt-get update`` first only when the package lists do not know it) and unpacked there with
    ``dpkg-deb -x``; nothing is installed system-wide. ``deb`` uses a ``.deb`` file you already have
    instead. The folder is built in a hidden sibling and renamed into place when complete.

    Returns immediately when already prepared, unless ``force``. Raises :class:`~hf_attnswap.errors.AssetError`
    (a ``RuntimeError``) when apt-get or dpkg-deb is missing or fails (the message says what to run).
    """
    target = de_en_path()
    if not force and is_de_en_prepared():
        _log(f"{DE_EN_NAME}: already prepared at {target}")
        return target
    _require_tool("dpkg-deb")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hf_attnswap-de-en-") as tmp, staging_folder(target) as staging:
        tmp_dir = Path(tmp)
        # apt-get downloads as the unprivileged `_apt` user when it can reach the folder; 0700 would not let it
        os.chmod(tmp_dir, 0o755)
        if deb is None:
            _log(f"downloading {DEBIAN_PACKAGE} with apt-get (about 6 MB) ...")
            deb_path = _apt_download(tmp_dir)
        else:
            deb_path = Path(deb).expanduser()
            if not deb_path.is_file():
                raise AssetError(f"deb={str(deb)!r} is not a file; pass the path of a {DEBIAN_PACKAGE}_*.deb")
        package = _deb_field(deb_path, "Package")
        if package != DEBIAN_PACKAGE:
            raise AssetError(f"{deb_path.name} is package {package!r}, not {DEBIAN_PACKAGE!r}")
        version = _deb_field(deb_path, "Version")
        extracted = tmp_dir / "root"
        proc = _run(["dpkg-deb", "-x", str(deb_path), str(extracted)])
        if proc.returncode != 0:
            raise AssetError(f"`dpkg-deb -x {deb_path.name}` failed: {_tail(proc.stderr)}")
        source = extracted / DING_MEMBER
        if not source.is_file():
            raise AssetError(f"{deb_path.name} has no /{DING_MEMBER}; is it the expected package?")

        _log(f"parsing {DEBIAN_PACKAGE} {version} ...")
        lines = source.read_text(encoding="utf-8").splitlines()
        pairs = parse_ding_lines(lines)
        splits = split_pairs(pairs)
        counts = {s: len(splits[s]) for s in SPLITS}
        for split in SPLITS:
            _write_jsonl(staging / f"{split}.jsonl", splits[split])
        header = _header(lines)
        (staging / "README.md").write_text(_readme(version, header, counts), encoding="utf-8")
        marker = {
            "asset": DE_EN_NAME,
            "format": DE_EN_FORMAT,
            "source": {
                "debian_package": DEBIAN_PACKAGE,
                "version": version,
                "file": f"/{DING_MEMBER}",
                "upstream": "Ding German-English dictionary, Frank Richter, TU Chemnitz, https://dict.tu-chemnitz.de/",
                "header": header,
            },
            "license": LICENSE,
            "languages": ["de", "en"],
            "splits": counts,
            "total_pairs": sum(counts.values()),
            "split_seed": SPLIT_SEED,
            "note": NOT_A_BENCHMARK,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (staging / MARKER_FILE).write_text(json.dumps(marker, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        install_folder(staging, target, keep_existing=not force and is_de_en_prepared())
    _log(f"{DE_EN_NAME}: {counts} saved to {target} ({time.monotonic() - start:.0f} s)")
    return target


# ---------------------------------------------------------------------------------------------- load


def _check_lang(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataSourceError(f"{param(name)} must be a non-empty language key such as 'de' or 'en', got {value!r}")
    return value


def pairs_from_records(
    records: Iterable[Mapping[str, Any]], src_lang: str, tgt_lang: str, *, where: str = "the data"
) -> list[tuple[str, str]]:
    """(source, target) pairs from rows that hold ``src_lang``/``tgt_lang`` keys, either at the top level
    (``{"de": ..., "en": ...}``) or inside a ``translation`` column (``{"translation": {"de": ..., "en": ...}}``,
    the IWSLT/WMT format on the Hub).

    Raises :class:`DataSourceError` naming the row and the keys it has when a language is missing or a
    value is not a string; ``where`` names the source in those messages.
    """
    pairs: list[tuple[str, str]] = []
    for i, row in enumerate(records):
        if not isinstance(row, Mapping):
            raise DataSourceError(f"row {i} of {where} is a {type(row).__name__}, not an object with language keys")
        inner = row.get("translation") if src_lang not in row or tgt_lang not in row else None
        fields = inner if isinstance(inner, Mapping) else row
        missing = [lang for lang in (src_lang, tgt_lang) if lang not in fields]
        if missing:
            keys = sorted(fields)
            if fields is not row:
                keys = [f"translation.{k}" for k in keys] + sorted(k for k in row if k != "translation")
            raise DataSourceError(
                f"row {i} of {where} has no {' or '.join(repr(m) for m in missing)} key; keys present: "
                f"{', '.join(map(str, keys)) or '(none)'}. Pass {keyword('src_lang')}/{keyword('tgt_lang')} matching "
                "those keys."
            )
        src, tgt = fields[src_lang], fields[tgt_lang]
        if not isinstance(src, str) or not isinstance(tgt, str):
            raise DataSourceError(
                f"row {i} of {where}: {src_lang!r} and {tgt_lang!r} must be strings, got "
                f"{type(src).__name__} and {type(tgt).__name__}"
            )
        pairs.append((src, tgt))
    return pairs


_JSONL_OBJECT = 'one JSON object such as {"de": "Guten Tag.", "en": "Good day."}'
_JSONL_FORMAT = 'one JSON object per line, such as {"de": "Guten Tag.", "en": "Good day."}'


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The objects of a JSON Lines file (blank lines skipped); :class:`DataSourceError` naming the line for bytes
    that are not UTF-8, a line that is not JSON, or a line that is not an object."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DataSourceError(
                    f"{path} is not UTF-8 text (line {number}: {exc.reason} at byte {exc.start} of the line); it must "
                    f"be UTF-8 JSON Lines, {_JSONL_FORMAT}"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise DataSourceError(
                    f"{path}: line {number} is not valid JSON ({exc}); each line must be {_JSONL_OBJECT}"
                ) from None
            if not isinstance(row, dict):
                raise DataSourceError(
                    f"{path}: line {number} is a JSON {type(row).__name__}, not an object; each line must be "
                    f"{_JSONL_OBJECT}"
                )
            yield row


def _split_file(folder: Path, split: str) -> Path:
    path = folder / f"{split}.jsonl"
    if not path.is_file():
        present = sorted(p.stem for p in folder.glob("*.jsonl"))
        raise DataSourceError(
            f"{folder} has no {split}.jsonl; splits present: {', '.join(present) or '(no .jsonl files)'}. "
            f"Pass one of them as {keyword('split')}."
        )
    return path


def _load_hub(
    name: str, split: str, config_name: str | None, src_lang: str, tgt_lang: str, limit: int | None
) -> list[tuple[str, str]]:
    try:
        import datasets
    except ImportError as exc:
        raise DataSourceError(
            f"{name!r} is not a local file or folder, and loading it from the Hugging Face Hub needs the "
            "`datasets` package: pip install datasets"
        ) from exc
    try:
        dataset = datasets.load_dataset(name, config_name, split=split)
    except Exception as exc:  # noqa: BLE001 (datasets raises many kinds; all mean "could not load")
        msg = _tail(str(exc), 3)
        raise DataSourceError(
            f"could not load {name!r} (config {config_name!r}, split {split!r}): it is not a local file or "
            f"folder, and `datasets.load_dataset` failed: {type(exc).__name__}: {msg}. Without Hugging Face "
            f"Hub access, use {DE_EN_NAME!r} (after prepare_de_en()) or a local JSONL file/folder; on the Hub, "
            f"check the dataset name, {param('config_name')} (e.g. 'de-en' for WMT) and {param('split')}."
        ) from exc
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return pairs_from_records(dataset, src_lang, tgt_lang, where=f"{name!r} ({split})")


def load_parallel(
    source: str | os.PathLike[str],
    split: str = "test",
    *,
    src_lang: str = "de",
    tgt_lang: str = "en",
    limit: int | None = None,
    config_name: str | None = None,
) -> list[tuple[str, str]]:
    """Load (source, target) sentence pairs.

    ``source`` is one of:

    * ``"de-en-ding"``: the prepared Ding data (:func:`prepare_de_en`); ``src_lang``/``tgt_lang`` may be
      ``"de"``/``"en"`` in either order;
    * a local folder holding ``<split>.jsonl``, or a local ``.jsonl`` file (then ``split`` is ignored),
      each line an object with ``src_lang`` and ``tgt_lang`` keys (or a ``translation`` object holding them);
    * anything else is a Hugging Face Hub dataset name, loaded with ``datasets.load_dataset(source,
      config_name, split=split)``; both flat columns and the ``translation`` column of IWSLT/WMT work.

    ``limit`` keeps the first ``limit`` pairs. Raises :class:`DataSourceError` (a ``ValueError``) that says
    what is wrong and how to fix it.
    """
    src_lang, tgt_lang = _check_lang("src_lang", src_lang), _check_lang("tgt_lang", tgt_lang)
    if src_lang == tgt_lang:
        raise DataSourceError(f"{param('src_lang')} and {param('tgt_lang')} are both {src_lang!r}; pass two different "
                              "languages")
    if not isinstance(split, str) or not split:
        raise DataSourceError(f"{param('split')} must be a non-empty string such as 'test', got {split!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataSourceError(f"{param('limit')} must be a positive integer or None, got {limit!r}")
    if not isinstance(source, (str, os.PathLike)):
        raise DataSourceError(f"source must be a name or a path, got {type(source).__name__}")

    if str(source) == DE_EN_NAME:
        if not is_de_en_prepared():
            raise DataSourceError(
                f"{DE_EN_NAME!r} is not prepared at {de_en_path()}. Run `attnswap prepare-assets` (or "
                "`python -m hf_attnswap.data.parallel`, or hf_attnswap.data.parallel.prepare_de_en()); it needs "
                "apt-get and a Debian mirror once. Or copy a prepared cache folder here and point HF_ATTNSWAP_CACHE at it."
            )
        if {src_lang, tgt_lang} != {"de", "en"}:
            raise DataSourceError(
                f"{DE_EN_NAME!r} has only 'de' and 'en'; got {setting('src_lang', repr(src_lang))}, "
                f"{setting('tgt_lang', repr(tgt_lang))}"
            )
        if split not in SPLITS:
            raise DataSourceError(f"{DE_EN_NAME!r} has splits {', '.join(SPLITS)}; got {setting('split', repr(split))}")
        path = de_en_path() / f"{split}.jsonl"
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            path = _split_file(path, split)
        elif not path.exists():
            if (
                isinstance(source, os.PathLike)
                or str(source).startswith((".", "/", "~"))
                or str(source).endswith(".jsonl")
            ):
                raise DataSourceError(
                    f"{str(source)!r} does not exist; pass an existing .jsonl file or a folder with <split>.jsonl "
                    f"files, {DE_EN_NAME!r}, or a Hugging Face Hub dataset name."
                )
            return _load_hub(str(source), split, config_name, src_lang, tgt_lang, limit)

    if path.stat().st_size == 0:
        raise DataSourceError(f"{path} is empty (0 bytes); it must hold {_JSONL_FORMAT}")
    pairs = []
    for pair in pairs_from_records(_read_jsonl(path), src_lang, tgt_lang, where=str(path)):
        if limit is not None and len(pairs) >= limit:
            break
        pairs.append(pair)
    if not pairs:
        raise DataSourceError(f"{path} holds no sentence pairs (only blank lines); it must hold {_JSONL_FORMAT}")
    return pairs


# ----------------------------------------------------------------------------------------------- cli


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry: prepare ``de-en-ding`` and print its path and split sizes. Returns an exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m hf_attnswap.data.parallel",
        description=(
            f"Prepare {DE_EN_NAME}: German-English sentence pairs from the Debian package {DEBIAN_PACKAGE} "
            "(Ding dictionary, GPL-2+), in $HF_ATTNSWAP_CACHE or ~/.cache/hf_attnswap. Needs apt-get once."
        ),
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when already prepared")
    parser.add_argument("--deb", help=f"use this {DEBIAN_PACKAGE}_*.deb instead of running apt-get download")
    args = parser.parse_args(argv)
    try:
        path = prepare_de_en(force=args.force, deb=args.deb)
    except (AssetError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    marker = read_marker(path) or {}
    print(f"{DE_EN_NAME}: {path} {json.dumps(marker.get('splits', {}))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
