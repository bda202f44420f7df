"""Translation with a tiny random Llama and a tiny character tokenizer; BLEU/chrF scoring."""

from __future__ import annotations

import json

import pytest
import sacrebleu
import torch
from tokenizers import Tokenizer, decoders, models, normalizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from hf_attnswap.errors import AttnSwapError
from hf_attnswap.evaluation import translation
from hf_attnswap.evaluation.translation import (
    TranslationError,
    cut_translation,
    evaluate_translation,
    resolve_template,
    score_translations,
    template_markers,
    translate,
)

from conftest import MECHANISMS, tiny_config

CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789 .,:!?'-\n")
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0, 1, 2, 3 = tiny_config's pad/bos/eos
SOURCES = ["Es steht Ihnen frei zu gehen.", "Guten Morgen!", "Wir sagen dem Müll den Kampf an, jeden Tag."]


def char_tokenizer(pad: bool = True) -> PreTrainedTokenizerFast:
    """A lower-casing character tokenizer with 49 tokens, built with the `tokenizers` library."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.decoder = decoders.Fuse()
    kwargs = {"pad_token": "<pad>"} if pad else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", **kwargs
    )


@pytest.fixture(scope="module")
def tokenizer():
    return char_tokenizer()


def tiny_model(attn: str = "sdpa", **options):
    torch.manual_seed(0)
    cfg = tiny_config("llama", vocab_size=len(SPECIALS) + len(CHARS), max_position_embeddings=256)
    kwargs = {"attnswap": options} if options else {}
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=attn, **kwargs).eval()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


# ----------------------------------------------------------------------------------- templates, cut


def test_templates():
    assert resolve_template("de", "en") == "Translate German to English.\nGerman: {source}\nEnglish:"
    assert resolve_template("en", "de") == "Translate English to German.\nEnglish: {source}\nGerman:"
    assert resolve_template("fr", "en") == "Translate French to English.\nFrench: {source}\nEnglish:"
    assert resolve_template("xx", "en").startswith("Translate xx to English.")
    assert (
        resolve_template("de", "en", "{src_name}: {source} => {tgt_name} {json}")
        == "German: {source} => English {json}"
    )
    assert template_markers(resolve_template()) == ("Translate German to English.", "German:", "English:")
    assert template_markers("Q: {source} => A:") == ("Q:", "=> A:")
    assert template_markers("{source} =") == ()  # "=" has no letter: it could occur in a translation


def test_template_validation():
    with pytest.raises(TranslationError, match=r"no '\{source\}' placeholder") as err:
        resolve_template("de", "en", "German: {text}\nEnglish:")
    assert isinstance(err.value, AttnSwapError) and isinstance(err.value, ValueError)
    with pytest.raises(TranslationError, match="must be a string"):
        resolve_template("de", "en", 42)
    with pytest.raises(TranslationError, match="src_lang"):
        resolve_template("", "en")


def test_cut_translation():
    markers = template_markers(resolve_template())
    assert cut_translation(" You are free to go.\nGerman: Hallo", markers=markers) == "You are free to go."
    assert cut_translation(" Good morning!</s> junk", eos_token="</s>") == "Good morning!"
    assert cut_translation(" Good morning! German: Guten Tag", markers=markers) == "Good morning!"
    assert cut_translation(" Hi.<|im_end|>\nmore", eos_token="<|im_end|>") == "Hi."
    assert cut_translation("\nleading newline") == ""
    assert cut_translation("  no end at all  ") == "no end at all"


# ------------------------------------------------------------------------------------------ translate


@pytest.mark.parametrize("num_beams", [1, 2])
def test_batched_left_padded_equals_one_by_one(model, tokenizer, num_beams):
    batched = translate(model, tokenizer, SOURCES, batch_size=3, num_beams=num_beams, max_new_tokens=6, progress=False)
    alone = [
        translate(model, tokenizer, [s], batch_size=1, num_beams=num_beams, max_new_tokens=6, progress=False)[0]
        for s in SOURCES
    ]
    assert batched == alone
    assert len(batched) == 3 and all(isinstance(t, str) and "\n" not in t for t in batched)
    assert any(batched)  # a random model still says something


def test_translate_restores_tokenizer_and_model_state(model, tokenizer):
    tokenizer.padding_side = "right"
    model.train()
    try:
        translate(model, tokenizer, SOURCES[:2], max_new_tokens=2, progress=False)
        assert tokenizer.padding_side == "right" and model.training
    finally:
        model.eval()
    no_pad = char_tokenizer(pad=False)
    assert no_pad.pad_token is None
    out = translate(model, no_pad, SOURCES[:2], batch_size=2, max_new_tokens=4, progress=False)
    assert no_pad.pad_token is None and no_pad.padding_side == "right"
    assert out == translate(model, tokenizer, SOURCES[:2], batch_size=1, max_new_tokens=4, progress=False)


def test_translate_input_errors(model, tokenizer):
    assert translate(model, tokenizer, [], progress=False) == []
    with pytest.raises(TranslationError, match="wrap a single sentence in a list"):
        translate(model, tokenizer, "Hallo Welt.")
    with pytest.raises(TranslationError, match="batch_size must be an integer >= 1"):
        translate(model, tokenizer, SOURCES, batch_size=0)
    with pytest.raises(TranslationError, match="no '\\{source\\}'"):
        translate(model, tokenizer, SOURCES, template="German:\nEnglish:")
    bare = char_tokenizer(pad=False)
    bare.eos_token = None
    with pytest.raises(TranslationError, match="neither a pad token nor an eos token"):
        translate(model, bare, SOURCES, progress=False)


def test_translate_integer_arguments(model, tokenizer):
    """The check shared with the mechanisms' options (hf_attnswap.options.check_int), with this module's error and
    no prefix; a float is refused, not rounded."""
    with pytest.raises(TranslationError, match=r"^batch_size must be an integer >= 1, got 0\.$"):
        translate(model, tokenizer, SOURCES, batch_size=0)
    with pytest.raises(TranslationError, match=r"^num_beams must be an integer, got 2\.0 \(float\)\.$"):
        translate(model, tokenizer, SOURCES, num_beams=2.0)
    with pytest.raises(TranslationError, match=r"^max_new_tokens must be an integer, got True \(bool\)\.$"):
        translate(model, tokenizer, SOURCES, max_new_tokens=True)


@pytest.mark.parametrize("mech", MECHANISMS)
def test_each_mechanism_translates(tokenizer, mech):
    options = {"dagpam": {"lambda_init": 0.3}, "polynomial": {"degree": 3}, "softmax": {"temperature": 0.7}}[mech]
    out = translate(tiny_model(mech, **options), tokenizer, SOURCES, batch_size=2, max_new_tokens=5, progress=False)
    assert len(out) == 3 and all(isinstance(t, str) for t in out)


def test_dagpam_lambda0_translates_like_sdpa(model, tokenizer):
    kw = {"batch_size": 3, "max_new_tokens": 6, "progress": False}
    assert translate(tiny_model("dagpam", lambda_init=0.0), tokenizer, SOURCES, **kw) == translate(
        model, tokenizer, SOURCES, **kw
    )


# -------------------------------------------------------------------------------------------- scoring

HYPS = ["The cat sat on the mat.", "He read the book because it was interesting.", "Hello there"]
REFS = ["The cat sat on the mat.", "He read the book since it was really interesting.", "Good morning"]


def test_score_matches_sacrebleu_directly():
    result = score_translations(HYPS, REFS, metric_backend="sacrebleu")
    assert result["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score, abs=1e-12)
    assert result["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score, abs=1e-12)
    assert result["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert result["chrf_signature"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:")
    assert result["n"] == 3 and result["backend"] == "sacrebleu"
    assert 0 < result["bleu"] < 100 and 0 < result["chrf"] < 100
    identical = score_translations(REFS, REFS, metric_backend="sacrebleu")
    assert identical["bleu"] == pytest.approx(100.0) and identical["chrf"] == pytest.approx(100.0)
    # a known value: 3 of 4 unigrams, 2 of 3 bigrams, 1 of 2 trigrams, 0 of 1 4-grams, exp smoothing
    assert score_translations(["a b c d"], ["a b c e"], metric_backend="sacrebleu")["bleu"] == pytest.approx(
        59.460355750136046
    )
    assert score_translations(["x y z w"], ["a b c d"], metric_backend="sacrebleu")["bleu"] == 0.0


def test_score_errors():
    with pytest.raises(TranslationError, match="got 2 hypotheses but 3 references"):
        score_translations(HYPS[:2], REFS)
    with pytest.raises(TranslationError, match="nothing to score"):
        score_translations([], [])
    with pytest.raises(TranslationError, match="unknown metric_backend 'bleu'"):
        score_translations(HYPS, REFS, metric_backend="bleu")
    with pytest.raises(TranslationError, match="item 1 is int"):
        score_translations(["a", 1], ["a", "b"])


# A stand-in for the Hub's "sacrebleu" metric script with the same interface (predictions; references as
# a list of reference lists; a dict with "score"). The real script is fetched from the Hugging Face Hub,
# which these tests cannot reach; this one lets evaluate.load() run offline from a local path.
LOCAL_METRIC = """
import datasets
import evaluate
import sacrebleu as scb


class Sacrebleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="local sacrebleu wrapper for tests",
            citation="",
            inputs_description="",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
        )

    def _compute(self, predictions, references):
        refs_per_stream = [list(refs) for refs in zip(*references)]
        out = scb.corpus_bleu(predictions, refs_per_stream)
        return {"score": out.score, "precisions": out.precisions, "bp": out.bp, "sys_len": out.sys_len,
                "ref_len": out.ref_len}
"""


@pytest.fixture
def fresh_evaluate_cache(monkeypatch):
    pytest.importorskip("evaluate")
    monkeypatch.setattr(translation, "_EVALUATE_MODULES", {})


def test_evaluate_backend_gives_identical_numbers(tmp_path, fresh_evaluate_cache):
    script = tmp_path / "sacrebleu_local" / "sacrebleu_local.py"
    script.parent.mkdir()
    script.write_text(LOCAL_METRIC, encoding="utf-8")
    via_evaluate = score_translations(HYPS, REFS, metric_backend="evaluate", evaluate_module=str(script.parent))
    direct = score_translations(HYPS, REFS, metric_backend="sacrebleu")
    assert via_evaluate["backend"] == "evaluate"
    assert via_evaluate["bleu"] == direct["bleu"] and via_evaluate["chrf"] == direct["chrf"]
    assert via_evaluate["bleu_details"] == direct["bleu_details"]
    auto = score_translations(HYPS, REFS, evaluate_module=str(script.parent))  # auto: evaluate loads
    assert auto["backend"] == "evaluate" and auto["bleu"] == direct["bleu"]


def test_auto_falls_back_to_sacrebleu_and_says_why(monkeypatch, fresh_evaluate_cache):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # evaluate is kept offline too, so this fails fast
    result = score_translations(HYPS, REFS)
    assert result["bleu"] == score_translations(HYPS, REFS, metric_backend="sacrebleu")["bleu"]
    if result["backend"] == "evaluate":  # evaluate's cache holds the Hub's real script: same numbers, done
        return
    assert result["backend"] == "sacrebleu"
    assert result["backend_note"].startswith("evaluate.load('sacrebleu') needs the Hugging Face Hub")
    with pytest.raises(RuntimeError, match=r"metric_backend='evaluate' but .*Use metric_backend='sacrebleu'"):
        score_translations(HYPS, REFS, metric_backend="evaluate")


# ------------------------------------------------------------------------------------ evaluate_translation


def test_evaluate_translation_result(model, tokenizer):
    pairs = [(s, "You are free to go.") for s in SOURCES]
    result = evaluate_translation(
        model,
        tokenizer,
        pairs,
        batch_size=2,
        max_new_tokens=4,
        progress=False,
        metric_backend="sacrebleu",
        n_examples=2,
    )
    assert result.n == 3 and len(result.hypotheses) == 3 and len(result.examples) == 2
    assert result.examples[0] == {"source": SOURCES[0], "hypothesis": result.hypotheses[0], "reference": pairs[0][1]}
    assert 0.0 <= result.bleu <= 100.0 and 0.0 <= result.chrf <= 100.0
    assert result.seconds > 0 and result.sentences_per_second > 0
    assert result.settings["attn_implementation"] == "sdpa" and result.settings["num_beams"] == 1
    data = result.to_dict()
    assert "hypotheses" not in data and json.loads(json.dumps(data))["bleu_signature"] == result.bleu_signature
    assert result.to_dict(with_hypotheses=True)["hypotheses"] == result.hypotheses


def test_evaluate_translation_errors(model, tokenizer):
    with pytest.raises(TranslationError, match="pairs is empty"):
        evaluate_translation(model, tokenizer, [])
    with pytest.raises(TranslationError, match=r"pairs\[1\] is .*two strings"):
        evaluate_translation(model, tokenizer, [("a", "b"), ("only source",)])
    with pytest.raises(TranslationError, match="unknown metric_backend"):
        evaluate_translation(model, tokenizer, [("a", "b")], metric_backend="nope")
