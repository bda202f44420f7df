"""Say what is wrong with a data file that a loader could not read: not UTF-8, a line that is not JSON, empty.

``datasets`` reports a binary ``.jsonl`` as "JSON parse error: The document is empty" and a Latin-1 ``.txt`` as
a ``UnicodeDecodeError`` deep in its generator. :func:`diagnose_file` reads the file itself and names the first
problem with its line (and column), so the message can say what to fix. It runs only after a loader failed, so
reading a good file costs nothing extra.
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path

__all__ = ["diagnose_file", "file_problem", "first_utf8_error"]

_CHUNK = 1 << 20


def first_utf8_error(path: Path) -> str | None:
    """``None`` if ``path`` is valid UTF-8, else where it stops being UTF-8: ``"line N, byte M of the file: <reason>"``."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, line = 0, 1
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            final = not chunk
            try:
                decoder.decode(chunk, final=final)
            except UnicodeDecodeError as exc:
                # the decoder buffers an incomplete sequence at the end of the previous chunk: count from there
                pending = len(decoder.getstate()[0]) if not final else 0
                start = max(exc.start - pending, 0)
                at_line = line + chunk[:start].count(b"\n")
                return (f"line {at_line}, byte {offset + start} of the file: {exc.reason} "
                        f"(byte 0x{exc.object[exc.start]:02x})")
            if final:
                return None
            line += chunk.count(b"\n")
            offset += len(chunk)


def _json_error(exc: json.JSONDecodeError, line: int | None = None) -> str:
    where = f"line {line}" if line is not None else f"line {exc.lineno}, column {exc.colno}"
    return f"{where} is not valid JSON ({exc.msg})"


def diagnose_file(path: str | Path, kind: str) -> str | None:
    """The first problem in ``path`` read as ``kind`` (``"text"``, ``"csv"``, ``"json"`` or ``"jsonl"``), as a phrase
    that follows the file name (``"is not UTF-8 text (line 3, ...)"``, ``"line 7 is not valid JSON (...)"``,
    ``"is empty (0 bytes)"``), or ``None`` when nothing is found."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return "is empty (0 bytes)"
        bad = first_utf8_error(path)
        if bad is not None:
            return f"is not UTF-8 text ({bad})"
        if kind not in ("json", "jsonl"):
            return None
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if not text.strip():
        return "holds only whitespace"
    if kind == "json" and text.lstrip()[:1] in ("[", "{"):  # maybe one JSON document rather than JSON Lines
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if text.lstrip()[:1] == "[":
                return _json_error(exc)
        else:
            if isinstance(data, list) and not all(isinstance(row, dict) for row in data):
                return "is a JSON list, but not of objects (one object per document, e.g. {\"text\": ...})"
            return None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            return _json_error(exc, number) + "; each line must be one JSON object"
        if not isinstance(row, dict):
            return f"line {number} is a JSON {type(row).__name__}, not an object; each line must be one JSON object"
    return None


def file_problem(path: str | Path, kind: str) -> str | None:
    """:func:`diagnose_file` as a sentence that names the file: ``"<path> is not UTF-8 text (...)"``,
    ``"<path>: line 7 is not valid JSON (...)"``; ``None`` when nothing is found."""
    problem = diagnose_file(path, kind)
    if problem is None:
        return None
    return f"{path} {problem}" if problem.startswith(("is ", "holds ", "cannot ")) else f"{path}: {problem}"
