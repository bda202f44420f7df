"""Perplexity with a strided sliding window, checked against a one-window-at-a-time reference on tiny models."""

from __future__ import annotations

import math
import random

import pytest
import torch
from conftest import ACTIVE_OPTIONS, MECHANISMS, VOCAB, tiny_config
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from tokenizers.processors import TemplateProcessing
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from hf_attnswap.errors import AttnSwapError
from hf_attnswap.evaluation.perplexity import (
    DEFAULT_MAX_LENGTH_CAP,
    PerplexityError,
    PerplexityResult,
    document_windows,
    model_max_positions,
    perplexity,
)

SPECIALS = ["[PAD]", "<s>", "</s>", "[UNK]"]  # ids 0..3, as in conftest's tiny configs
WORDS = [f"w{i}" for i in range(len(SPECIALS), VOCAB)]  # ids 4..63


def word_tokenizer(*, bos: bool = True, adds_bos: bool = False) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ``WORDS`` whose ids fit the tiny models' vocabulary of 64."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    if adds_bos:
        backend.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    kwargs = {"bos_token": "<s>"} if bos else {}
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="[UNK]", pad_token="[PAD]", **kwargs)


def make_text(n_words: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


# Lengths (in tokens) chosen around the windows used below (max_length 16, stride 8 or 16): long, several
# windows, exactly one window, shorter than a window, and a single token.
TEXTS = [make_text(n, seed) for seed, n in enumerate([150, 40, 16, 7, 1, 33])]


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


def reference(model, tokenizer, texts, max_length, stride, add_bos=False):
    """Hugging Face's "Perplexity of fixed-length models" loop, one window at a time, no batching, summing the
    model's own mean loss times the number of targets. Returns (total NLL, tokens scored)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False).input_ids
            if add_bos:
                ids = [tokenizer.bos_token_id] + ids
            ids = torch.tensor([ids], dtype=torch.long)
            seq_len, prev_end = ids.size(1), 0
            for begin in range(0, seq_len, stride):
                end = min(begin + max_length, seq_len)
                trg_len = end - prev_end
                input_ids = ids[:, begin:end]
                labels = input_ids.clone()
                labels[:, :-trg_len] = -100
                n = int((labels[:, 1:] != -100).sum())
                if n:
                    total += model(input_ids, labels=labels).loss.item() * n
                    count += n
                prev_end = end
                if end == seq_len:
                    break
    return total, count


def assert_matches_reference(result, ref):
    total, count = ref
    assert result.tokens == count
    assert result.nll * result.tokens == pytest.approx(total, rel=1e-5)
    assert result.ppl == pytest.approx(math.exp(total / count), rel=1e-5)


def test_document_windows_follow_the_guide():
    assert document_windows(40, 16, 16) == [(0, 16, 16), (16, 32, 16), (32, 40, 8)]
    assert document_windows(40, 16, 8) == [(0, 16, 16), (8, 24, 8), (16, 32, 8), (24, 40, 8)]
    assert document_windows(7, 16, 8) == [(0, 7, 7)]
    assert document_windows(1, 16, 8) == [(0, 1, 1)]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("stride", [8, 16, 5])
def test_matches_one_window_at_a_time_reference(load, tokenizer, arch, stride):
    model = load(arch)
    result = perplexity(model, tokenizer, TEXTS, max_length=16, stride=stride, batch_size=3, progress=False)
    assert_matches_reference(result, reference(model, tokenizer, TEXTS, 16, stride))
    n_tokens = [len(t.split()) for t in TEXTS]
    if stride < 16:  # with overlap, every token but each document's first is scored exactly once
        assert result.tokens == sum(n - 1 for n in n_tokens)
    else:  # no overlap: the first token of every later window has no context either
        assert result.tokens == sum(n - math.ceil(n / 16) for n in n_tokens)
    assert result.documents == len(TEXTS) and result.skipped_empty == 0
    # windows with no target (a 1-token document; a last window of one token without overlap) are not run
    assert result.windows == sum(1 for n in n_tokens for b, e, t in document_windows(n, 16, stride) if min(t, e - b - 1) > 0)
    assert (result.max_length, result.stride, result.add_bos) == (16, stride, False)
    assert result.seconds > 0 and result.tokens_per_second > 0


def test_batch_size_does_not_change_the_result(load, tokenizer):
    model = load("llama")
    one = perplexity(model, tokenizer, TEXTS, max_length=16, stride=8, batch_size=1, progress=False)
    three = perplexity(model, tokenizer, TEXTS, max_length=16, stride=8, batch_size=3, progress=False)
    all_at_once = perplexity(model, tokenizer, TEXTS, max_length=16, stride=8, batch_size=64, progress=False)
    assert one.tokens == three.tokens == all_at_once.tokens and one.windows == three.windows
    assert three.nll == pytest.approx(one.nll, rel=1e-5) and all_at_once.nll == pytest.approx(one.nll, rel=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("mech", MECHANISMS)
def test_every_mechanism_matches_reference(load, tokenizer, arch, mech):
    model = load(arch, mech, **ACTIVE_OPTIONS[mech])  # dagpam: lambda_init=0.3
    result = perplexity(model, tokenizer, TEXTS, max_length=16, stride=8, batch_size=3, progress=False)
    assert math.isfinite(result.ppl) and result.ppl > 1
    assert_matches_reference(result, reference(model, tokenizer, TEXTS, 16, 8))


def test_mechanisms_change_perplexity(load, tokenizer):
    sdpa = perplexity(load("llama"), tokenizer, TEXTS, max_length=16, progress=False)
    dagpam0 = perplexity(load("llama", "dagpam", lambda_init=0.0), tokenizer, TEXTS, max_length=16, progress=False)
    dagpam3 = perplexity(load("llama", "dagpam", lambda_init=0.3), tokenizer, TEXTS, max_length=16, progress=False)
    assert dagpam0.ppl == pytest.approx(sdpa.ppl, rel=1e-5)
    assert dagpam3.ppl != pytest.approx(sdpa.ppl, rel=1e-3)


def test_single_full_window_equals_model_loss(load, tokenizer):
    model = load("gpt2")
    text = TEXTS[1]  # 40 tokens, one window of 64
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    result = perplexity(model, tokenizer, [text], progress=False)  # defaults: max_length 64 (the model's positions)
    assert (result.max_length, result.stride, result.windows, result.tokens) == (64, 32, 1, 39)
    assert result.nll == pytest.approx(loss, rel=1e-5)


def test_add_bos_scores_first_tokens(load):
    model = load("llama")
    tok = word_tokenizer()
    result = perplexity(model, tok, TEXTS, max_length=16, stride=8, add_bos=True, progress=False)
    assert result.add_bos and result.tokens == sum(len(t.split()) for t in TEXTS)
    assert_matches_reference(result, reference(model, tok, TEXTS, 16, 8, add_bos=True))
    # default (None): follow the tokenizer: BOS only if it adds one itself
    assert perplexity(model, tok, TEXTS[:2], max_length=16, progress=False).add_bos is False
    assert perplexity(model, word_tokenizer(adds_bos=True), TEXTS[:2], max_length=16, progress=False).add_bos is True
    with pytest.raises(PerplexityError, match="no BOS token"):
        perplexity(model, word_tokenizer(bos=False), TEXTS, max_length=16, add_bos=True, progress=False)


def test_empty_and_single_token_documents_are_counted(load, tokenizer):
    model = load("gpt2")
    texts = ["", TEXTS[1], "   \n ", TEXTS[4], TEXTS[3]]  # TEXTS[4] is one token
    result = perplexity(model, tokenizer, texts, max_length=16, stride=8, progress=False)
    assert (result.skipped_empty, result.documents) == (2, 3)
    assert result.tokens == 39 + 0 + 6
    assert_matches_reference(result, reference(model, tokenizer, texts, 16, 8))


def test_default_window_is_capped(tokenizer):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama", max_position_embeddings=4096))
    assert model_max_positions(model) == 4096
    result = perplexity(model, tokenizer, TEXTS[:2], progress=False)
    assert (result.max_length, result.stride) == (DEFAULT_MAX_LENGTH_CAP, DEFAULT_MAX_LENGTH_CAP // 2)
    assert result.stride == 512


def test_training_flags_are_restored(load, tokenizer):
    model = load("gpt2").train()
    model.lm_head.eval()  # a module the caller had put in eval mode stays there
    perplexity(model, tokenizer, TEXTS[:2], max_length=16, progress=False)
    assert model.training and model.transformer.training and not model.lm_head.training


def test_progress_bar_and_to_dict(load, tokenizer, capsys):
    result = perplexity(load("gpt2"), tokenizer, TEXTS, max_length=16, progress=True)
    assert "perplexity" in capsys.readouterr().err
    d = result.to_dict()
    assert isinstance(result, PerplexityResult)
    assert set(d) == {"ppl", "nll", "tokens", "documents", "skipped_empty", "windows", "seconds", "tokens_per_second",
                      "max_length", "stride", "add_bos", "max_tokens", "tokens_available", "truncated"}
    assert d["ppl"] == result.ppl


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"max_length": 16, "stride": 17}, "stride=17 is larger than max_length=16"),
        ({"max_length": 16, "stride": 0}, "stride must be an integer >= 1"),
        ({"max_length": 1}, "max_length must be an integer >= 2"),
        ({"max_length": 65}, "larger than the model's 64 positions"),
        ({"max_length": 16.0}, "max_length must be an integer"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"add_bos": "yes"}, "add_bos must be True, False or None"),
    ],
)
def test_bad_arguments(load, tokenizer, kwargs, match):
    with pytest.raises(PerplexityError, match=match):
        perplexity(load("gpt2"), tokenizer, TEXTS, progress=False, **kwargs)


def test_integer_arguments_messages(load, tokenizer):
    """The check shared with the mechanisms' options (hf_attnswap.options.check_int), with this module's error and
    prefix; a float is refused, not rounded."""
    model = load("gpt2")
    with pytest.raises(PerplexityError, match=r"^perplexity: max_length must be an integer, got 16\.0 \(float\)\.$"):
        perplexity(model, tokenizer, TEXTS, progress=False, max_length=16.0)
    with pytest.raises(PerplexityError, match=r"^perplexity: batch_size must be an integer >= 1, got 0\.$"):
        perplexity(model, tokenizer, TEXTS, progress=False, batch_size=0)
    with pytest.raises(PerplexityError, match=r"^perplexity: max_tokens must be an integer, got '8' \(str\)\.$"):
        perplexity(model, tokenizer, TEXTS, progress=False, max_tokens="8")


@pytest.mark.parametrize(
    "texts,match",
    [
        (["", "  ", "\n"], "all 3 texts are empty"),
        ([], "texts is empty"),
        ("w4 w5 w6", r"got a single str; pass \[text\]"),
        (["w4", 5], r"texts\[1\] is a int"),
        (["w4", "w5"], "no token can be scored"),
    ],
)
def test_bad_texts(load, tokenizer, texts, match):
    with pytest.raises(PerplexityError, match=match) as info:
        perplexity(load("gpt2"), tokenizer, texts, max_length=16, progress=False)
    assert isinstance(info.value, AttnSwapError)


def test_tokenizer_that_does_not_fit_the_model(tokenizer):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("gpt2", vocab_size=32))
    text = " ".join(WORDS)  # ids up to 63
    with pytest.raises(PerplexityError, match="token id 63, but the model's vocabulary has 32 entries"):
        perplexity(model, tokenizer, [text], max_length=16, progress=False)
