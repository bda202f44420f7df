"""``benchmarks/reproduce.py --quick`` end to end: every claim and both SmolLM2 parts on toy sizes (the real SmolLM2,
the wiki-text, news and de-en assets), in a fresh runs folder; then the same command again, which must take every job
from the cache. Slow for a test (a few minutes on 2 cores), so it is an integration test.

Skipped when the assets are absent, unless ATTNSWAP_REQUIRE_ASSETS=1 (as in CI), where they must be there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hf_attnswap.data.assets import is_prepared
from hf_attnswap.data.parallel import is_de_en_prepared

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
_missing = [what for what, ok in (("SmolLM2", is_prepared("smollm2")), ("news-text", is_prepared("news-text")),
                                  ("wiki-text", is_prepared("wiki-text")), ("de-en-ding", is_de_en_prepared()))
            if not ok]
if _missing:
    fix = "run `attnswap prepare-assets` and `python -m hf_attnswap.data.parallel`"
    if os.environ.get("ATTNSWAP_REQUIRE_ASSETS") == "1":
        raise RuntimeError(f"{', '.join(_missing)} missing; {fix} (ATTNSWAP_REQUIRE_ASSETS=1).")
    pytest.skip(f"{', '.join(_missing)} not prepared: {fix}", allow_module_level=True)


def _run(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "benchmarks/reproduce.py", "--out", str(tmp_path / "out"), "--quick",
                           "--runs-dir", str(tmp_path / "runs"), "--md", str(tmp_path / "results.md")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200, check=False)


def test_quick_runs_every_part_then_comes_from_the_cache(tmp_path):
    first = _run(tmp_path)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    raw = json.loads((tmp_path / "out" / "reproduce.json").read_text())
    assert raw["claims"] == [1, 2, 3, 4, 5] and raw["parts"] == ["cpt", "mt"] and raw["scale"]["name"] == "quick"
    assert raw["meta"]["failed_jobs"] == [] and raw["meta"]["cached_jobs"] == 0
    assert all(job["ok"] for job in raw["jobs"].values())
    text = (tmp_path / "results.md").read_text()
    for heading in ("## Headline", "### Did the from-scratch runs learn?", "## The trained models' diagnostics",
                    "## Continued pretraining of SmolLM2", "## Translation fine-tuning of SmolLM2", "## How to reproduce"):
        assert heading in text, heading
    assert "**Not a standard benchmark:**" in text and "raw collision entropy" in text
    a = raw["analysis"]
    assert a["mt"]["step0_agree"] is True  # daGPAM at lambda = 0 is the base model: the same step-0 translations
    assert 0 <= a["mt"]["pooled"]["bleu"]["p"] <= 1 and a["cpt"]["base"]["news"] > 1
    assert a["validity"]["bigram_ppl"] > 1 and set(a["diagnostics"]["raw collision entropy"]) >= {"softmax", "dagpam"}
    init = raw["render_data"]["init_scale"]["mechs"]  # every from-scratch mechanism's attention at initialisation
    assert init["softmax"]["attn_rms_ratio"] == 1.0 and set(init) == set(raw["render_data"]["scratch"])
    # the tokenizer and the text split are made once, in the runs folder, and named in the recipe commands
    (tokenizer,) = (tmp_path / "runs" / "tokenizer").glob("wiki-text-bpe*-*")
    assert (tokenizer / "tokenizer.json").is_file() and str(tokenizer) in json.dumps(raw["meta"])
    again = _run(tmp_path)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    raw2 = json.loads((tmp_path / "out" / "reproduce.json").read_text())
    assert raw2["meta"]["cached_jobs"] == raw2["meta"]["jobs"] == raw["meta"]["jobs"]
    assert raw2["analysis"]["mt"]["pooled"] == raw["analysis"]["mt"]["pooled"]
