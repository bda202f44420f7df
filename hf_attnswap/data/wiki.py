"""The offline Wikipedia text: 206 real English Wikipedia articles (about 700k words, CC BY-SA), shipped in the PyPI
wheel of ``gensim`` as a bz2 XML dump (``gensim/test/test_data/enwiki-…-shortened.bz2``), markup stripped with
``mwparserfromhell``. One article per JSON line ``{"title", "text"}``; redirects and near-empty pages are dropped.
"""

from __future__ import annotations

import bz2
import json
import re
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from ..errors import AssetError
from . import cache

WIKI_NAME = "wiki-text"
WIKI_PACKAGE, WIKI_VERSION = "gensim", "4.4.0"
WIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
MIN_WORDS = 50  # shorter pages (stubs, lists that were all markup) are dropped

_DROP_TAGS = ("ref", "gallery", "math", "timeline", "table", "references", "score", "syntaxhighlight")
_LEFTOVER = ("{{", "}}", "[[", "]]", "<ref", "</ref", "{|", "|}")  # unbalanced markup the parser leaves as text
_DROP_SECTIONS = re.compile(r"^(see also|references|notes|further reading|external links|bibliography|sources|"
                            r"footnotes|citations)$", re.IGNORECASE)


def strip_markup(wikitext: str) -> str:
    """Plain text of one article: templates, tables, references, files, categories and the trailing reference
    sections removed, links replaced by their text, one paragraph per line."""
    import mwparserfromhell

    code = mwparserfromhell.parse(wikitext)
    for section in code.get_sections(levels=[2]):
        heading = section.filter_headings()
        if heading and _DROP_SECTIONS.match(str(heading[0].title).strip()):
            try:
                code.remove(section)
            except ValueError:
                pass
    for node in code.filter_tags(recursive=False, matches=lambda n: str(n.tag).strip().lower() in _DROP_TAGS):
        try:
            code.remove(node)
        except ValueError:
            pass
    for node in code.filter_wikilinks():
        target = str(node.title).strip().lower()
        if target.startswith(("file:", "image:", "category:", "media:")) or re.match(r"^[a-z-]{2,12}:", target):
            try:
                code.remove(node)
            except ValueError:
                pass
    text = code.strip_code(normalize=True, collapse=True)
    lines = []
    for line in text.splitlines():
        line = re.sub(r"\s+", " ", line).strip()
        if not line or line.startswith(("|", "!", "{", "}")) or re.fullmatch(r"[\W\d_]+", line) \
                or any(m in line for m in _LEFTOVER):
            continue
        lines.append(line)
    return "\n".join(lines)


def parse_dump(xml_text: str) -> list[dict[str, Any]]:
    """``[{"title", "text"}]`` of the articles (namespace 0, not redirects) in a MediaWiki XML dump."""
    root = ET.fromstring(xml_text)
    ns = {"m": root.tag[1:].split("}")[0]} if root.tag.startswith("{") else {}
    q = (lambda tag: f"m:{tag}") if ns else (lambda tag: tag)
    articles = []
    for page in root.iter(f"{{{ns['m']}}}page" if ns else "page"):
        title = page.findtext(q("title"), default="", namespaces=ns)
        if page.findtext(q("ns"), default="0", namespaces=ns) != "0" or page.find(q("redirect"), ns) is not None:
            continue
        raw = page.findtext(f"{q('revision')}/{q('text')}", default="", namespaces=ns)
        if raw.lstrip().upper().startswith("#REDIRECT"):
            continue
        text = strip_markup(raw)
        if len(text.split()) >= MIN_WORDS:
            articles.append({"title": title, "text": text})
    return articles


def prepare_wiki_text(force: bool = False) -> Path:
    """Build ``<cache>/wiki-text/wiki.jsonl`` from the gensim wheel (downloaded, not installed); return its path."""
    target = cache._asset_path(WIKI_NAME)
    path = target / "wiki.jsonl"
    if not force and cache.is_prepared(WIKI_NAME):
        cache._log(f"{WIKI_NAME}: already prepared at {target}")
        return path
    try:
        import mwparserfromhell  # noqa: F401
    except ImportError:
        raise AssetError("preparing the Wikipedia text needs mwparserfromhell: pip install 'hf-attnswap[assets]' "
                         "(or pip install mwparserfromhell).") from None
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hf_attnswap-wiki-") as tmp, cache.staging_folder(target) as staging:
        cache._log(f"downloading {WIKI_PACKAGE}=={WIKI_VERSION} (for its Wikipedia test dump) ...")
        wheel = cache._download_wheel(WIKI_PACKAGE, WIKI_VERSION, Path(tmp) / "wheel", asset=WIKI_NAME)
        raw = cache._extract(wheel, WIKI_MEMBER, Path(tmp) / "wiki.xml.bz2", asset=WIKI_NAME)
        try:
            articles = parse_dump(bz2.decompress(raw.read_bytes()).decode("utf-8"))
        except (OSError, ValueError, ET.ParseError) as err:
            raise AssetError(f"{WIKI_MEMBER} in {wheel.name} could not be read ({err}); is it the expected version?") from None
        if len(articles) < 100:
            raise AssetError(f"{WIKI_MEMBER} in {wheel.name} gave only {len(articles)} articles; expected about 200")
        with open(staging / "wiki.jsonl", "w", encoding="utf-8") as f:
            for article in articles:
                f.write(json.dumps(article, ensure_ascii=False) + "\n")
        words = sum(len(a["text"].split()) for a in articles)
        cache._write_marker(staging, WIKI_NAME, WIKI_PACKAGE, WIKI_VERSION, source={"files": [WIKI_MEMBER]},
                            articles=len(articles), words=words)
        cache.install_folder(staging, target, keep_existing=not force and cache.is_prepared(WIKI_NAME))
    cache._log(f"saved {target}: {len(articles)} articles, {words:,} words ({time.monotonic() - start:.0f} s)")
    return path
