"""German->English translation with the real SmolLM2-135M on 20 pairs of the prepared Ding data.

Needs `attnswap prepare-assets` (SmolLM2) and `python -m hf_attnswap.data.parallel` (de-en-ding). Skipped
when they are absent, unless ATTNSWAP_REQUIRE_ASSETS=1 (as in CI), where they must be there."""

from __future__ import annotations

import math
import os

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_attnswap.data.assets import is_prepared, smollm2_path
from hf_attnswap.data.parallel import is_de_en_prepared, load_parallel
from hf_attnswap.evaluation.translation import evaluate_translation

pytestmark = pytest.mark.integration

_missing = [what for what, ok in (("SmolLM2", is_prepared("smollm2")), ("de-en-ding", is_de_en_prepared())) if not ok]
if _missing:
    fix = "run `attnswap prepare-assets` and `python -m hf_attnswap.data.parallel`"
    if os.environ.get("ATTNSWAP_REQUIRE_ASSETS") == "1":
        raise RuntimeError(f"{', '.join(_missing)} missing; {fix} (ATTNSWAP_REQUIRE_ASSETS=1).")
    pytest.skip(f"{', '.join(_missing)} not prepared: {fix}", allow_module_level=True)

SETTINGS = {"batch_size": 10, "max_new_tokens": 32, "progress": False, "metric_backend": "sacrebleu"}


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(smollm2_path())


@pytest.fixture(scope="module")
def pairs():
    return load_parallel("de-en-ding", "test", limit=20)


@pytest.fixture(scope="module")
def sdpa_result(tokenizer, pairs):
    model = AutoModelForCausalLM.from_pretrained(smollm2_path(), attn_implementation="sdpa").eval()
    return evaluate_translation(model, tokenizer, pairs, **SETTINGS)


def test_smollm2_translates_de_en(sdpa_result, pairs):
    result = sdpa_result
    print(
        f"\nSmolLM2-135M sdpa, {result.n} de-en-ding test pairs: BLEU {result.bleu:.2f}, chrF {result.chrf:.2f}, "
        f"{result.sentences_per_second:.2f} sent/s; {result.bleu_signature}"
    )
    assert result.n == 20 and len(result.hypotheses) == 20
    for score in (result.bleu, result.chrf):
        assert math.isfinite(score) and 0.0 <= score <= 100.0
    assert result.chrf > 5.0
    assert sum(bool(h) for h in result.hypotheses) >= 15  # the model answers most prompts
    assert all("\n" not in h and "German:" not in h for h in result.hypotheses)
    assert result.examples[0]["source"] == pairs[0][0]


def test_dagpam_lambda0_gives_the_same_translations(sdpa_result, tokenizer, pairs):
    model = AutoModelForCausalLM.from_pretrained(
        smollm2_path(), attn_implementation="dagpam", attnswap={"lambda_init": 0.0}
    ).eval()
    result = evaluate_translation(model, tokenizer, pairs, **SETTINGS)
    assert result.hypotheses == sdpa_result.hypotheses
    assert result.bleu == sdpa_result.bleu and result.chrf == sdpa_result.chrf
