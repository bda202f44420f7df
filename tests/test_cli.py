"""The `attnswap` command (fast parts; the demo itself runs in tests/integration)."""

from __future__ import annotations

import json

from hf_attnswap.cli import main


def test_list_prints_mechanisms_and_defaults(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "dagpam  (adds parameters)" in out and "lambda_init = 0.0" in out and "degree = 3" in out


def test_list_json(capsys):
    assert main(["list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["softmax"]["options"] == {"temperature": 1.0, "backend": "auto"}


def test_demo_on_a_missing_path_is_a_clear_error(tmp_path, capsys):
    assert main(["demo", "--model", str(tmp_path / "nope")]) == 2
    assert "attnswap: error:" in capsys.readouterr().err


import pytest  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from conftest import tiny_config  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama with a word-level tokenizer, saved like a real checkpoint."""
    from test_perplexity import word_tokenizer

    path = tmp_path_factory.mktemp("tiny_cli_model")
    AutoModelForCausalLM.from_config(tiny_config("llama")).save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    return path


def test_eval_ppl_side_by_side_writes_json(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "docs.jsonl"
    data.write_text("\n".join(json.dumps({"text": " ".join(f"w{(i * 7 + j) % 60 + 4}" for j in range(30))}) for i in range(4)))
    out = tmp_path / "ppl.json"
    code = main(["eval", "ppl", "--model", str(tiny_model_dir), "--attn", "sdpa,softmax,dagpam:lambda_init=0.2,polynomial:degree=3",
                 "--dataset", str(data), "--max-length", "16", "--stride", "8", "--no-progress", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Perplexity of" in printed and "dagpam" in printed
    result = json.loads(out.read_text())
    assert result["kind"] == "perplexity" and result["data"]["documents"] == 4
    rows = {r["attn"]: r for r in result["results"]}
    assert set(rows) == {"sdpa", "softmax", "dagpam:lambda_init=0.2", "polynomial:degree=3"}
    assert rows["dagpam:lambda_init=0.2"]["options"]["lambda_init"] == 0.2 and rows["dagpam:lambda_init=0.2"]["parameters_added"] > 0
    assert abs(rows["sdpa"]["ppl"] - rows["softmax"]["ppl"]) < 1e-4 * rows["sdpa"]["ppl"]
    assert rows["polynomial:degree=3"]["ppl"] != rows["sdpa"]["ppl"]
    assert all(r["tokens"] == rows["sdpa"]["tokens"] > 0 for r in rows.values())
    assert {"model", "mechanism", "options", "tokens", "seconds", "tokens_per_second"} <= set(rows["sdpa"])


def test_eval_ppl_of_a_model_saved_swapped_measures_its_own_attention(tiny_model_dir, tmp_path, capsys):
    """Without --attn, a converted model (saved with polynomial degree 2) is measured with that attention and its
    saved options, not under sdpa (its weights without the attention they were trained for) or degree 3."""
    import hf_attnswap

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    hf_attnswap.swap(model, "polynomial", degree=2)
    saved = tmp_path / "converted"
    model.save_pretrained(saved)
    from test_perplexity import word_tokenizer

    word_tokenizer().save_pretrained(saved)
    data = tmp_path / "docs.jsonl"
    data.write_text("\n".join(json.dumps({"text": " ".join(f"w{(i * 5 + j) % 60 + 4}" for j in range(30))}) for i in range(3)))
    out = tmp_path / "ppl.json"
    assert main(["eval", "ppl", "--model", str(saved), "--dataset", str(data), "--max-length", "16", "--stride", "16",
                 "--no-progress", "--json", str(out)]) == 0
    assert "saved with attention 'polynomial'" in capsys.readouterr().err
    [row] = json.loads(out.read_text())["results"]
    assert row["mechanism"] == "polynomial" and row["options"]["degree"] == 2
    assert main(["eval", "ppl", "--model", str(saved), "--attn", "sdpa", "--dataset", str(data), "--max-length", "16",
                 "--no-progress", "--json", str(tmp_path / "sdpa.json")]) == 0  # asked for: measured as asked
    assert [r["mechanism"] for r in json.loads((tmp_path / "sdpa.json").read_text())["results"]] == ["sdpa"]


def test_eval_rejects_bad_attention_specs_before_loading(tiny_model_dir, capsys):
    assert main(["eval", "ppl", "--model", str(tiny_model_dir), "--attn", "dagpam:lambda_init=-1"]) == 2
    assert "'lambda_init' must be >= 0" in capsys.readouterr().err
    assert main(["eval", "ppl", "--model", str(tiny_model_dir), "--attn", "softmx"]) == 2
    assert "Did you mean 'softmax'" in capsys.readouterr().err


def test_eval_mt_side_by_side(tmp_path, capsys):
    from test_translation import char_tokenizer, tiny_model

    model_dir = tmp_path / "model"
    tiny_model().save_pretrained(model_dir)
    char_tokenizer().save_pretrained(model_dir)
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    (pairs / "test.jsonl").write_text("\n".join(json.dumps({"de": f"guten tag {i}.", "en": f"good day {i}."}) for i in range(6)))
    out = tmp_path / "mt.json"
    code = main(["eval", "mt", "--model", str(model_dir), "--attn", "sdpa,dagpam", "--dataset", str(pairs),
                 "--max-new-tokens", "6", "--no-progress", "--json", str(out)])
    assert code == 0
    assert "BLEU signature: nrefs:1" in capsys.readouterr().out
    result = json.loads(out.read_text())
    rows = {r["attn"]: r for r in result["results"]}
    assert rows["sdpa"]["bleu"] == rows["dagpam"]["bleu"] and rows["sdpa"]["sentences"] == 6
    assert result["data"]["standard_benchmark"] is True


def test_push_dry_run(tmp_path, capsys):
    from test_perplexity import word_tokenizer

    import hf_attnswap

    model_dir = tmp_path / "swapped"
    model = hf_attnswap.swap(AutoModelForCausalLM.from_config(tiny_config("llama")), "dagpam", lambda_init=0.1)
    model.save_pretrained(model_dir)
    word_tokenizer().save_pretrained(model_dir)
    out = tmp_path / "out"
    assert main(["push", "--model", str(model_dir), "--repo-id", "someone/tiny-dagpam", "--dry-run", str(out)]) == 0
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    card = (out / "README.md").read_text()
    assert "pip install hf-attnswap" in card and "lambda_init" in card
    assert main(["push", "--model", str(model_dir), "--repo-id", "no-owner", "--dry-run", str(tmp_path / "x")]) == 2
    assert "owner/name" in capsys.readouterr().err
