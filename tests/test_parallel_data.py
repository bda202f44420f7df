"""Parallel data: parsing the Ding dictionary, splitting, and load_parallel on local and (mocked) Hub data."""

from __future__ import annotations

import json
import os

import pytest

from hf_attnswap.data import parallel
from hf_attnswap.data.parallel import (
    DataSourceError,
    load_parallel,
    pairs_from_records,
    parse_ding_lines,
    split_pairs,
)
from hf_attnswap.errors import AttnSwapError

DING = [
    "# Version :: devel 2023-01-30",
    "# License :: GPL Version 2 or later; GNU General Public License",
    "",
    "Aal {m} | Aale {pl} :: eel | eels",
    # two positional parts; the second is a sentence pair
    "frei {adj} | Es steht Ihnen frei zu gehen. :: free | You are at liberty to go.",
    # same German sentence again: the first translation wins
    "Es steht Ihnen frei zu gehen. :: You are free to go.",
    # annotations are removed, the first ';' synonym is kept (a ';' inside brackets is not a separator)
    "Das ist mir (völlig; ganz) schnuppe. [ugs.]; Das ist mir egal. :: I don't give a damn (about it). [coll.]; I don't care.",
    "Sie hat einen Hund {m} gekauft. :: She bought a dog [Br.] yesterday.",
    # too short on one side (3 words)
    "Ich liebe dich sehr. :: I love you.",
    # no sentence-final punctuation: a dictionary phrase
    "sich in die Enge getrieben fühlen :: to feel cornered by the others",
    # lower-case start: a phrase that happens to end in an abbreviation
    "die strenge Auslegung von Gesetzen. :: the strict construction of laws.",
    # placeholders and ellipses mark sentence templates
    "Er hat etw. damit zu tun. :: He has sth. to do with it.",
    "Es wird Ihnen … zugesandt werden. :: It will be sent to you … soon.",
    # mismatched part counts: cannot be aligned, skipped whole
    "Das ist gut so. | Das ist schlecht so. :: That is good indeed.",
    # a line without ' :: ' is not an entry
    "Kaputte Zeile ohne Trenner hier.",
    "„Kommst du heute mit?“ „Ja, gerne.“ :: 'Are you coming along today?' 'Yes, gladly.'",
]

EXPECTED = [
    ("Es steht Ihnen frei zu gehen.", "You are at liberty to go."),
    ("Das ist mir (völlig; ganz) schnuppe.", "I don't give a damn (about it)."),
    ("Sie hat einen Hund gekauft.", "She bought a dog yesterday."),
    ("„Kommst du heute mit?“ „Ja, gerne.“", "'Are you coming along today?' 'Yes, gladly.'"),
]


def test_parse_ding_lines_keeps_clean_sentence_pairs():
    assert parse_ding_lines(DING) == EXPECTED


def test_parse_ding_lines_is_pure_and_accepts_newlines():
    lines = [line + "\n" for line in DING]
    assert parse_ding_lines(lines) == EXPECTED
    assert parse_ding_lines(iter(DING)) == EXPECTED
    assert parse_ding_lines([]) == []


def test_split_pairs_is_seeded_and_sized():
    pairs = [(f"de {i}", f"en {i}") for i in range(50)]
    a = split_pairs(pairs, sizes={"validation": 5, "test": 10})
    assert a == split_pairs(pairs, sizes={"validation": 5, "test": 10})
    assert [len(a[s]) for s in ("train", "validation", "test")] == [35, 5, 10]
    assert sorted(a["train"] + a["validation"] + a["test"]) == sorted(pairs)
    assert a != split_pairs(pairs, seed=1, sizes={"validation": 5, "test": 10})
    with pytest.raises(DataSourceError, match="only 50 pairs"):
        split_pairs(pairs)  # default 500 + 1000


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture
def folder(tmp_path):
    _write_jsonl(tmp_path / "test.jsonl", [{"de": f"Satz {i}.", "en": f"Sentence {i}."} for i in range(5)])
    _write_jsonl(tmp_path / "train.jsonl", [{"de": "Hallo.", "en": "Hello."}])
    return tmp_path


def test_load_parallel_local_folder_and_file(folder):
    assert load_parallel(folder) == [(f"Satz {i}.", f"Sentence {i}.") for i in range(5)]
    assert load_parallel(folder, "train") == [("Hallo.", "Hello.")]
    assert load_parallel(str(folder), limit=2) == [("Satz 0.", "Sentence 0."), ("Satz 1.", "Sentence 1.")]
    assert load_parallel(folder, src_lang="en", tgt_lang="de", limit=1) == [("Sentence 0.", "Satz 0.")]
    assert load_parallel(folder / "train.jsonl", "ignored-for-files") == [("Hallo.", "Hello.")]


def test_load_parallel_translation_column_format(tmp_path):
    rows = [{"translation": {"de": "Guten Morgen.", "en": "Good morning."}, "id": 0}]
    _write_jsonl(tmp_path / "test.jsonl", rows)
    assert load_parallel(tmp_path) == [("Guten Morgen.", "Good morning.")]


def test_load_parallel_errors(folder, tmp_path):
    with pytest.raises(DataSourceError, match="does not exist") as err:
        load_parallel(tmp_path / "missing.jsonl")
    assert isinstance(err.value, AttnSwapError) and isinstance(err.value, ValueError)
    with pytest.raises(DataSourceError, match=r"no validation\.jsonl; splits present: test, train"):
        load_parallel(folder, "validation")
    with pytest.raises(DataSourceError, match=r"no 'fr' key; keys present: de, en\. Pass src_lang="):
        load_parallel(folder, src_lang="fr")
    bad = tmp_path / "bad"
    bad.mkdir()
    _write_jsonl(bad / "test.jsonl", [{"translation": {"de": "a", "fr": "b"}, "id": 1}])
    with pytest.raises(DataSourceError, match=r"no 'en' key; keys present: translation\.de, translation\.fr, id"):
        load_parallel(bad)
    (bad / "test.jsonl").write_text('{"de": "a", "en": "b"}\nnot json\n', encoding="utf-8")
    with pytest.raises(DataSourceError, match="test.jsonl: line 2 is not valid JSON"):
        load_parallel(bad)
    with pytest.raises(DataSourceError, match="positive integer"):
        load_parallel(folder, limit=0)
    with pytest.raises(DataSourceError, match="both 'de'"):
        load_parallel(folder, src_lang="de", tgt_lang="de")


def test_pairs_from_records_rejects_non_strings():
    with pytest.raises(DataSourceError, match="must be strings, got int and str"):
        pairs_from_records([{"de": 1, "en": "x"}], "de", "en")
    with pytest.raises(DataSourceError, match="row 0 .* is a list"):
        pairs_from_records([["de", "en"]], "de", "en")


def test_de_en_ding_not_prepared_says_how_to_prepare(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ATTNSWAP_CACHE", str(tmp_path))
    assert not parallel.is_de_en_prepared()
    assert parallel.de_en_path() == tmp_path / "de-en-ding"
    with pytest.raises(DataSourceError, match=r"not prepared.*python -m hf_attnswap\.data\.parallel"):
        load_parallel("de-en-ding")


def test_prepare_without_dpkg_says_what_to_run(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ATTNSWAP_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get, no dpkg-deb
    with pytest.raises(RuntimeError, match=r"needs `dpkg-deb`.*apt-get download trans-de-en"):
        parallel.prepare_de_en()
    assert not (tmp_path / "de-en-ding").exists()


def test_hub_names_go_through_datasets(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(name, config_name=None, split=None):
        calls.append((name, config_name, split))
        rows = [{"translation": {"de": f"Satz {i}.", "en": f"Sentence {i}."}} for i in range(4)]
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    pairs = load_parallel("wmt/wmt14", "validation", config_name="de-en", limit=3)
    assert pairs == [(f"Satz {i}.", f"Sentence {i}.") for i in range(3)]
    assert calls == [("wmt/wmt14", "de-en", "validation")]


def test_hub_failure_is_wrapped_with_the_fix(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'wmt/wmt14' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataSourceError, match=r"could not load 'wmt/wmt14'.*ConnectionError.*'de-en-ding'"):
        load_parallel("wmt/wmt14", config_name="de-en")


# ------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def prepared():
    if not parallel.is_de_en_prepared():
        if os.environ.get("ATTNSWAP_REQUIRE_ASSETS") == "1":
            raise RuntimeError(
                "de-en-ding is missing; run `python -m hf_attnswap.data.parallel` (ATTNSWAP_REQUIRE_ASSETS=1)."
            )
        pytest.skip("de-en-ding not prepared: run `python -m hf_attnswap.data.parallel`")
    return parallel.de_en_path()


@pytest.mark.integration
def test_prepared_de_en_splits_are_fixed(prepared):
    marker = json.loads((prepared / "hf_attnswap_asset.json").read_text(encoding="utf-8"))
    assert marker["license"] == "GPL-2.0-or-later" and "NOT a standard MT benchmark" in marker["note"]
    assert marker["source"]["debian_package"] == "trans-de-en"
    splits = {s: load_parallel("de-en-ding", s) for s in ("train", "validation", "test")}
    counts = {s: len(p) for s, p in splits.items()}
    assert counts == marker["splits"]
    assert counts["validation"] == 500 and counts["test"] == 1000
    assert 15_000 < sum(counts.values()) < 20_000
    german = [de for pairs in splits.values() for de, _ in pairs]
    assert len(set(german)) == len(german)  # one pair per German sentence: no overlap between splits
    assert all(len(de.split()) >= 4 and len(en.split()) >= 4 for pairs in splits.values() for de, en in pairs)
    assert load_parallel("de-en-ding", "test", src_lang="en", tgt_lang="de", limit=1) == [splits["test"][0][::-1]]
    if marker["source"]["version"] == "1.9-6":  # the split is fixed for a given package version
        assert counts == {"train": 16708, "validation": 500, "test": 1000}
        assert splits["test"][0] == (
            "Wir sagen dem Straßenmüll den Kampf an.",
            "We are committed to combating street waste.",
        )
        assert ("Es steht Ihnen frei zu gehen.", "You are at liberty to go.") in splits["train"] + splits[
            "validation"
        ] + splits["test"]
