"""load_texts: lists, local files of every supported format, save_to_disk folders, and each error."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import datasets
import pytest

from hf_attnswap.data.text import TextDataError, load_texts
from hf_attnswap.errors import AttnSwapError

DOCS = ["The first document.\nIt has two lines.", "A second one.", "", "The fourth, with a comma."]


@pytest.fixture(autouse=True)
def isolated_datasets_cache(tmp_path, monkeypatch):
    """Keep datasets' Arrow cache inside the test's folder, and never wait on the (unreachable) Hub."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets_cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_list_and_tuple_are_used_as_is():
    assert load_texts(DOCS) == DOCS
    assert load_texts(tuple(DOCS), limit=2) == DOCS[:2]


def test_txt_whole_file_paragraphs_or_lines(tmp_path):
    content = "First paragraph,\nstill the first.\n\nSecond paragraph.\n"
    path = tmp_path / "corpus.txt"
    path.write_text(content, encoding="utf-8")
    assert load_texts(path) == [content]  # default: the whole file is one document, line breaks kept
    assert load_texts(str(path)) == [content]
    assert load_texts(path, txt_sample_by="paragraph") == ["First paragraph,\nstill the first.", "Second paragraph.\n"]
    assert load_texts(path, txt_sample_by="line") == ["First paragraph,", "still the first.", "", "Second paragraph."]
    other = tmp_path / "other.txt"
    other.write_text("Another file.", encoding="utf-8")
    assert load_texts([path, other]) == [content, "Another file."]
    assert sorted(load_texts(str(tmp_path / "*.txt"))) == sorted([content, "Another file."])


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_json_lines(tmp_path, suffix):
    path = write_jsonl(tmp_path / f"data{suffix}", [{"id": i, "content": d} for i, d in enumerate(DOCS)])
    assert load_texts(path, text_column="content") == DOCS
    assert load_texts(str(path), text_column="content", limit=3) == DOCS[:3]


def test_parquet_and_csv(tmp_path):
    table = datasets.Dataset.from_dict({"text": DOCS, "label": list(range(len(DOCS)))})
    table.to_parquet(str(tmp_path / "data.parquet"))
    assert load_texts(tmp_path / "data.parquet") == DOCS
    with open(tmp_path / "data.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "text"])
        writer.writerows([i, d or "x"] for i, d in enumerate(DOCS))
    assert load_texts(tmp_path / "data.csv") == [d or "x" for d in DOCS]


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    datasets.Dataset.from_dict({"text": DOCS}).save_to_disk(str(tmp_path / "single"))
    assert load_texts(tmp_path / "single") == DOCS
    splits = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"body": ["train text"]}),
        "test": datasets.Dataset.from_dict({"body": ["test text", None]}),
    })
    splits.save_to_disk(str(tmp_path / "dict"))
    assert load_texts(str(tmp_path / "dict"), split="test", text_column="body") == ["test text", ""]  # None -> ""
    with pytest.raises(TextDataError, match=r"has no split 'validation'; its splits are 'train', 'test'"):
        load_texts(tmp_path / "dict", split="validation", text_column="body")


# --- errors ---------------------------------------------------------------------------------------------------


def test_missing_files(tmp_path):
    with pytest.raises(TextDataError, match="file not found: .*nope.txt") as info:
        load_texts(str(tmp_path / "nope.txt"))
    assert isinstance(info.value, AttnSwapError) and isinstance(info.value, ValueError)
    with pytest.raises(TextDataError, match="file not found"):
        load_texts(tmp_path / "nope")  # a Path is never a Hub name
    present = tmp_path / "here.txt"
    present.write_text("hello", encoding="utf-8")
    with pytest.raises(TextDataError, match=r"not found: .*gone1.jsonl, .*gone2.jsonl"):
        load_texts([present, tmp_path / "gone1.jsonl", tmp_path / "gone2.jsonl"])
    with pytest.raises(TextDataError, match="no file matches the pattern"):
        load_texts(str(tmp_path / "*.parquet"))


def test_unknown_extension_and_mixed_formats(tmp_path):
    (tmp_path / "data.xml").write_text("<doc>hi</doc>", encoding="utf-8")
    with pytest.raises(TextDataError, match=r"unsupported file extension \.xml .*supported: \.txt, \.json, \.jsonl"):
        load_texts(tmp_path / "data.xml")
    (tmp_path / "a.txt").write_text("hi", encoding="utf-8")
    write_jsonl(tmp_path / "b.jsonl", [{"text": "hi"}])
    with pytest.raises(TextDataError, match="mix formats"):
        load_texts([tmp_path / "a.txt", tmp_path / "b.jsonl"])


def test_missing_or_non_text_column_lists_the_columns(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"id": 1, "body": "x", "title": "t"}])
    with pytest.raises(TextDataError, match=r"no column 'text'; its columns are 'id', 'body', 'title'\. Pass text_column="):
        load_texts(path)
    with pytest.raises(TextDataError, match=r"column 'id' .* not text \(text columns: 'body', 'title'\)"):
        load_texts(path, text_column="id")


def test_empty_sources(tmp_path):
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(TextDataError, match=r"empty \(0 bytes\)"):
        load_texts(tmp_path / "empty.jsonl")
    (tmp_path / "blank.txt").write_text("\n\n  \n", encoding="utf-8")
    with pytest.raises(TextDataError, match="contains no text"):
        load_texts(tmp_path / "blank.txt")
    path = write_jsonl(tmp_path / "blank.jsonl", [{"text": ""}, {"text": "  "}])
    with pytest.raises(TextDataError, match="contains no text"):
        load_texts(path)
    datasets.Dataset.from_dict({"text": []}, features=datasets.Features({"text": datasets.Value("string")})).save_to_disk(
        str(tmp_path / "norows"))
    with pytest.raises(TextDataError, match="has no rows"):
        load_texts(tmp_path / "norows")
    with open(tmp_path / "header_only.csv", "w", encoding="utf-8") as f:
        f.write("text,label\n")
    with pytest.raises(TextDataError, match="header_only.csv has no rows"):
        load_texts(tmp_path / "header_only.csv")
    datasets.Dataset.from_dict({"text": []}, features=datasets.Features({"text": datasets.Value("string")})).to_parquet(
        str(tmp_path / "norows.parquet"))
    with pytest.raises(TextDataError, match="norows.parquet has no rows"):
        load_texts(tmp_path / "norows.parquet")
    with pytest.raises(TextDataError, match="list of texts is empty"):
        load_texts([])
    with pytest.raises(TextDataError, match="contains no text"):
        load_texts(["", " "])


def test_malformed_file(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": oops\n', encoding="utf-8")
    with pytest.raises(TextDataError, match=r"bad.jsonl: line 1 is not valid JSON \(Expecting value\).*one JSON object per line"):
        load_texts(tmp_path / "bad.jsonl")


def test_folder_that_is_not_a_saved_dataset(tmp_path):
    (tmp_path / "a.txt").write_text("hi", encoding="utf-8")
    with pytest.raises(TextDataError, match="not one written by datasets' save_to_disk"):
        load_texts(tmp_path)


def test_hub_name_unreachable_offline():
    with pytest.raises(TextDataError, match=r"Hub dataset 'someone/no-such-corpus'.* could not be loaded.*local files") as info:
        load_texts("someone/no-such-corpus", split="test")
    assert info.value.__cause__ is not None  # the datasets error is chained, not swallowed


def test_options_that_do_not_apply_are_refused(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("hi", encoding="utf-8")
    with pytest.raises(TextDataError, match="config_name applies only to Hub datasets"):
        load_texts(path, config_name="wikitext-2-raw-v1")
    with pytest.raises(TextDataError, match="split='test' applies only to Hub datasets and saved DatasetDicts"):
        load_texts(path, split="test")
    with pytest.raises(TextDataError, match="text_column applies to tabular data"):
        load_texts(["hi"], text_column="body")


def test_ambiguous_lists_and_bad_arguments(tmp_path):
    (tmp_path / "a.txt").write_text("hi", encoding="utf-8")
    with pytest.raises(TextDataError, match="look like file paths.*pathlib.Path"):
        load_texts([str(tmp_path / "a.txt")])
    with pytest.raises(TextDataError, match="only texts .* or only file paths"):
        load_texts(["hi", tmp_path / "a.txt"])
    with pytest.raises(TextDataError, match="limit must be a positive integer"):
        load_texts(["hi"], limit=0)
    with pytest.raises(TextDataError, match="txt_sample_by must be one of 'document', 'paragraph', 'line'"):
        load_texts(["hi"], txt_sample_by="sentence")
    with pytest.raises(TextDataError, match="source must be"):
        load_texts(42)
