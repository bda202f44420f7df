"""Perplexity of the real SmolLM2-135M on real English text, prepared offline by `attnswap prepare-assets`.
Skipped when the assets are absent, unless ATTNSWAP_REQUIRE_ASSETS=1 (as in CI)."""

from __future__ import annotations

import math
import os

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_attnswap.data.assets import is_prepared, smollm2_path
from hf_attnswap.data.text import load_texts
from hf_attnswap.demo import text_nll
from hf_attnswap.evaluation.perplexity import perplexity

pytestmark = pytest.mark.integration

if not is_prepared("smollm2"):
    if os.environ.get("ATTNSWAP_REQUIRE_ASSETS") == "1":
        raise RuntimeError("SmolLM2 assets are missing; run `attnswap prepare-assets` (ATTNSWAP_REQUIRE_ASSETS=1).")
    pytest.skip("SmolLM2 assets not prepared: run `attnswap prepare-assets`", allow_module_level=True)

# Plain English paragraphs written for this test (272 SmolLM2 tokens in all).
PARAGRAPHS = [
    (
        "The lighthouse stands on a narrow point of rock at the mouth of the harbour. It was built in 1854, after two "
        "ships were lost on the reef during a winter storm, and for more than a century a keeper and his family lived "
        "in the small stone cottage beside it. Every evening the keeper climbed the spiral stairs to light the lamp, "
        "and every morning he cleaned the glass and trimmed the wick."
    ),
    (
        "Bread is one of the oldest prepared foods. Flour, water and salt are mixed into a dough, which is kneaded and "
        "left to rise, usually with the help of yeast. During baking the water in the dough turns to steam, the crust "
        "browns, and the kitchen fills with a smell that most people find hard to resist."
    ),
    (
        "In the spring the students planted a small garden behind the school. They grew beans, lettuce, tomatoes and "
        "sunflowers, and they took turns watering the beds after class. By the end of the summer the sunflowers were "
        "taller than the teachers, and the children carried baskets of vegetables home to their parents."
    ),
    (
        "A good map tells you not only where things are but also how far apart they are. The scale in the corner "
        "shows how many kilometres on the ground match one centimetre on the paper, and the contour lines show where "
        "the land rises into hills and where it falls away into valleys."
    ),
]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(smollm2_path())


@pytest.fixture(scope="module")
def sdpa_model():
    return AutoModelForCausalLM.from_pretrained(smollm2_path(), attn_implementation="sdpa").eval()


@pytest.fixture(scope="module")
def sdpa_result(sdpa_model, tokenizer):
    return perplexity(sdpa_model, tokenizer, PARAGRAPHS, max_length=64, stride=32, batch_size=4, progress=False)


def test_smollm2_perplexity_is_sensible(sdpa_result):
    r = sdpa_result
    assert math.isfinite(r.ppl) and 5 < r.ppl < 200, r.to_dict()
    assert r.documents == 4 and r.skipped_empty == 0 and r.add_bos is False  # SmolLM2's tokenizer adds no BOS
    assert 250 < r.tokens < 500 and r.windows > 4  # several windows per paragraph at max_length 64
    assert r.tokens_per_second > 0


def test_dagpam_lambda0_gives_the_same_perplexity(tokenizer, sdpa_result):
    model = AutoModelForCausalLM.from_pretrained(smollm2_path(), attn_implementation="dagpam",
                                                 attnswap={"lambda_init": 0.0}).eval()
    r = perplexity(model, tokenizer, PARAGRAPHS, max_length=64, stride=32, batch_size=3, progress=False)
    assert r.tokens == sdpa_result.tokens
    assert r.ppl == pytest.approx(sdpa_result.ppl, rel=1e-3)
    assert r.tokens_per_second > 0


def test_one_window_equals_the_models_own_loss_on_a_txt_file(sdpa_model, tokenizer, tmp_path):
    """End to end: a .txt file split into paragraphs, each scored in a single window, equals the model's loss."""
    (tmp_path / "paragraphs.txt").write_text("\n\n".join(PARAGRAPHS) + "\n", encoding="utf-8")
    texts = load_texts(tmp_path / "paragraphs.txt", txt_sample_by="paragraph")
    assert [t.strip() for t in texts] == PARAGRAPHS
    r = perplexity(sdpa_model, tokenizer, texts[:1], progress=False)  # default window: 1024 tokens, one window
    nll, n_tokens = text_nll(sdpa_model, tokenizer, PARAGRAPHS[0])
    assert (r.max_length, r.stride, r.windows, r.tokens) == (1024, 512, 1, n_tokens)
    assert r.nll == pytest.approx(nll, rel=1e-5)
