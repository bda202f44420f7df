"""The offline Wikipedia text: markup stripping and dump parsing on hand-written wikitext."""

from __future__ import annotations

import pytest

from hf_attnswap.data.assets import ASSET_ALIASES, is_prepared, resolve_asset
from hf_attnswap.data.wiki import parse_dump, strip_markup

ARTICLE = """{{Infobox person|name=Ada|born=1815}}
'''Ada Lovelace''' was an [[England|English]] [[mathematician]].<ref>{{cite book|title=X}}</ref> She wrote
about the [[Analytical Engine]].
[[File:Ada.jpg|thumb|A portrait]]
{| class="wikitable"
|-
| cell || cell
|}
== Life ==
She was born in [[London]] in 1815.
== References ==
{{reflist}}
* A book.
[[Category:Mathematicians]]
[[fr:Ada Lovelace]]
"""


def test_strip_markup_keeps_prose_and_drops_the_rest():
    text = strip_markup(ARTICLE)
    assert "Ada Lovelace was an English mathematician." in text
    assert "She was born in London in 1815." in text
    for gone in ("cite book", "Infobox", "portrait", "wikitable", "cell", "Category", "fr:", "A book", "reflist",
                 "References"):
        assert gone not in text, gone


def _dump(*pages: tuple[str, str, str]) -> str:
    body = "".join(f"<page><title>{t}</title><ns>{ns}</ns><revision><text>{x}</text></revision></page>"
                   for t, ns, x in pages)
    return f'<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">{body}</mediawiki>'


def test_parse_dump_keeps_articles_and_drops_redirects_other_namespaces_and_stubs():
    long = " ".join(["word"] * 60)
    articles = parse_dump(_dump(("Kept", "0", long), ("Redirect", "0", "#REDIRECT [[Kept]]"),
                                ("Talk", "1", long), ("Stub", "0", "too short")))
    assert [a["title"] for a in articles] == ["Kept"]
    assert articles[0]["text"] == long


@pytest.mark.skipif(not is_prepared("wiki-text"), reason="offline asset wiki-text not prepared")
def test_the_prepared_asset_has_about_a_hundred_real_articles():
    from hf_attnswap.data.text import load_texts

    assert ASSET_ALIASES["wikipedia"] == "wiki-text"
    texts = load_texts(str(resolve_asset("wiki-text")))
    assert len(texts) > 100 and sum(len(t.split()) for t in texts) > 400_000
    assert not any("{{" in t or "[[" in t or "<ref" in t for t in texts)
