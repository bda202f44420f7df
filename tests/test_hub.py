"""Sharing on the Hub: ``hf_attnswap.hub.push_to_hub`` / ``save_for_hub`` against a real HTTP server on loopback.

The server (``tests/_hub_server.py``) speaks the Hub endpoints ``huggingface_hub`` uses for ``create_repo``,
``upload_folder`` (preupload + NDJSON commit), ``snapshot_download`` (repo info, tree, resolve) and
``create_branch``. Nothing here reaches huggingface.co.
"""

from __future__ import annotations

import json
import logging
import socket
import traceback
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import ModelCard, snapshot_download
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

import hf_attnswap
from hf_attnswap.data.assets import gpt2_tokenizer_path, is_prepared
from hf_attnswap.hub import HubError, HubNotSwappedError, MissingTokenError, RepoIdError, push_to_hub, save_for_hub
from hf_attnswap.registry import PERSIST_SUFFIX

from _hub_server import LocalHub
from conftest import random_ids, tiny_config

TOKEN = "hf_attnswapFAKEtoken7Q2xZ9"  # distinctive, so any leak is easy to spot
REPO = "alice/tiny-dagpam"
EVAL = [
    {"dataset": "wikitext", "config": "wikitext-2-raw-v1", "split": "test", "metric": "perplexity", "value": 21.4321},
    {"task": "translation", "dataset": "wmt/wmt14", "config": "de-en", "metric": "bleu", "value": 27.1, "notes": "beam 4"},
]
MODEL_FILES = {"config.json", "generation_config.json", "model.safetensors", "README.md"}
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json"}


@pytest.fixture(autouse=True)
def _only_loopback(monkeypatch):
    """Fail if anything resolves a host other than loopback. huggingface_hub 2.4 fetches an "agent harnesses"
    registry from huggingface.co when it first builds request headers, whatever ``endpoint=`` says; its documented
    ``HF_HUB_DISABLE_TELEMETRY`` switch turns that off (the constant is read at import, hence the attribute)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    outside: list[str] = []
    real = socket.getaddrinfo

    def loopback_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost", "::1"):
            outside.append(str(host))
            raise OSError(f"test_hub must stay on loopback, but something tried to reach {host!r}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    yield
    assert outside == [], f"tried to reach {outside}"


@pytest.fixture
def hub():
    with LocalHub(token=TOKEN) as server:
        yield server


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    """No token anywhere: HF_TOKEN unset, an empty HF_HOME (and token file path, read once at import)."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "hf_home"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    assert huggingface_hub.get_token() is None


@pytest.fixture(scope="module")
def tokenizer():
    """A tiny word-level tokenizer over the test vocabulary (real ``tokenizer.json`` files, no download)."""
    words = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(60)]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _model(arch: str = "llama", mechanism: str = "dagpam", **options):
    torch.manual_seed(0)
    options = options or ({"lambda_init": 0.3} if mechanism == "dagpam" else {})
    return AutoModelForCausalLM.from_config(tiny_config(arch), attn_implementation=mechanism, attnswap=options).eval()


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def _leaks(text: str) -> bool:
    return TOKEN in text or TOKEN[3:] in text


# ----------------------------------------------------------------------------------------------- push


@pytest.mark.parametrize("arch,mechanism", [("llama", "dagpam"), ("gpt2", "polynomial")])
def test_push_uploads_everything_and_loads_back_identically(hub, tokenizer, tmp_path, caplog, capfd, arch, mechanism):
    caplog.set_level(logging.DEBUG)
    model = _model(arch, mechanism)
    url = push_to_hub(model, REPO, tokenizer=tokenizer, base_model="HuggingFaceTB/SmolLM2-135M", eval_results=EVAL,
                      extra_tags=["tiny"], token=TOKEN, endpoint=hub.endpoint)

    commit = hub.last_commit(REPO)
    assert url == f"{hub.endpoint}/{REPO}/commit/{commit.oid}"
    assert set(commit.changed) == MODEL_FILES | TOKENIZER_FILES
    # the server saw the token on every write, and the client never sent it to the public read endpoints' logs
    assert all(a == f"Bearer {TOKEN}" for (m, _), a in zip(hub.requests, hub.authorizations) if m == "POST")

    config = json.loads(commit.files["config.json"])
    assert config["attnswap"] == model.config.attnswap
    assert config["attn_implementation"] == mechanism + PERSIST_SUFFIX

    # download back through the Hub API and load: same mechanism, options and logits
    local = snapshot_download(REPO, endpoint=hub.endpoint, token=TOKEN, cache_dir=tmp_path / "cache")
    assert _files(Path(local)) == MODEL_FILES | TOKENIZER_FILES
    loaded = AutoModelForCausalLM.from_pretrained(local).eval()
    assert loaded.config._attn_implementation == mechanism
    assert loaded.config.attnswap == model.config.attnswap
    ids = random_ids(2, 12)
    torch.testing.assert_close(_logits(loaded, ids), _logits(model, ids), rtol=0, atol=0)
    back = AutoTokenizer.from_pretrained(local)
    assert back("w1 w7 w42")["input_ids"] == tokenizer("w1 w7 w42")["input_ids"]

    out, err = capfd.readouterr()
    assert not _leaks(caplog.text) and not _leaks(out) and not _leaks(err)


def test_model_card_content(hub, tokenizer):
    model = _model("llama", "dagpam", lambda_init=0.25, neg_query_proj="per_head")
    push_to_hub(model, REPO, tokenizer=tokenizer, base_model="HuggingFaceTB/SmolLM2-135M", eval_results=EVAL,
                extra_tags=["tiny", "hf-attnswap"], token=TOKEN, endpoint=hub.endpoint)
    text = hub.files(REPO)["README.md"].decode()
    card = ModelCard(text)

    # metadata
    data = card.data
    assert data.library_name == "transformers"
    assert data.pipeline_tag == "text-generation"
    assert data.base_model == "HuggingFaceTB/SmolLM2-135M"
    assert data.tags == ["hf-attnswap", "attention", "dagpam", "arxiv:2410.15578", "tiny"]
    results = {(r.metric_type, r.dataset_type): r for r in data.eval_results}
    assert results[("perplexity", "wikitext")].metric_value == pytest.approx(21.4321)
    assert results[("perplexity", "wikitext")].dataset_split == "test"
    assert results[("bleu", "wmt/wmt14")].task_type == "translation"
    assert results[("bleu", "wmt/wmt14")].dataset_config == "de-en"

    # body: what the model is
    body = card.text
    assert "swapped to **`dagpam`**" in body and "arXiv 2410.15578" in body and "HuggingFaceTB/SmolLM2-135M" in body
    for key, value in model.config.attnswap.items():
        if key != "mechanism":
            shown = {True: "true", False: "false", None: "null"}.get(value, value) if not isinstance(value, float) else value
            assert f"| `{key}` | `{shown}` |" in body
    assert "| `lambda_init` | `0.25` |" in body and "| `neg_query_proj` | `per_head` |" in body
    overhead = hf_attnswap.parameter_overhead(model)
    assert overhead["added"] > 0
    assert f"adds {overhead['added']:,} parameters" in body and f"{overhead['base']:,}" in body
    assert f"{overhead['percent']:.4g} % of base" in body
    # evaluation table
    assert "| task | dataset | split | metric | value | notes |" in body
    assert "| text-generation | wikitext (wikitext-2-raw-v1) | test | perplexity | 21.4321 |  |" in body
    assert "| translation | wmt/wmt14 (de-en) |  | bleu | 27.1 | beam 4 |" in body
    # how to load
    assert "pip install hf-attnswap" in body and "import hf_attnswap" in body
    assert f'AutoModelForCausalLM.from_pretrained("{REPO}")' in body
    assert "Without\n`import hf_attnswap`, `from_pretrained` fails" in body
    assert "pip install hf-attnswap, then import hf_attnswap" in body  # the text of the error users will see
    assert "https://arxiv.org/abs/2410.15578" in body and "https://arxiv.org/abs/2410.18613" in body


def test_card_without_eval_results_or_base_model(tmp_path):
    model = _model("gpt2", "softmax", temperature=0.5)
    model.config._name_or_path = str(tmp_path)  # a local path is not a Hub id: no base_model
    folder = save_for_hub(model, tmp_path / "out")
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model is None and card.data.eval_results is None
    assert "## Evaluation results" not in card.text
    assert "| `temperature` | `0.5` |" in card.text
    assert "**Parameter overhead:** none" in card.text
    assert _files(folder) == MODEL_FILES  # no tokenizer given, no tokenizer files


def test_base_model_comes_from_a_hub_like_name_or_path(tmp_path):
    model = _model("llama", "dagpam")
    model.config._name_or_path = "HuggingFaceTB/SmolLM2-135M"
    folder = save_for_hub(model, tmp_path / "a")
    assert ModelCard.load(folder / "README.md").data.base_model == "HuggingFaceTB/SmolLM2-135M"
    with pytest.raises(HubError, match="base_model must be the Hub id"):
        save_for_hub(model, tmp_path / "b", base_model=str(tmp_path))


def test_dry_run_writes_exactly_what_push_uploads_and_sends_nothing(hub, tokenizer, tmp_path, no_token):
    model = _model()
    kwargs = dict(tokenizer=tokenizer, base_model="HuggingFaceTB/SmolLM2-135M", eval_results=EVAL, endpoint=hub.endpoint)
    folder = push_to_hub(model, REPO, dry_run=tmp_path / "dry", **kwargs)  # no token needed
    assert folder == tmp_path / "dry"
    assert hub.requests == []

    push_to_hub(model, REPO, token=TOKEN, **kwargs)
    uploaded = hub.files(REPO)
    assert _files(folder) == set(uploaded) == MODEL_FILES | TOKENIZER_FILES
    for name in uploaded:
        assert (folder / name).read_bytes() == uploaded[name], name


def test_token_from_hf_token_env(hub, monkeypatch, no_token):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    push_to_hub(_model(), REPO, endpoint=hub.endpoint)
    assert "model.safetensors" in hub.files(REPO)


def test_push_to_a_branch_and_again(hub):
    model = _model()
    push_to_hub(model, REPO, token=TOKEN, endpoint=hub.endpoint, revision="dev", commit_message="first")
    assert hub.files(REPO, "main") == {}
    assert hub.last_commit(REPO, "dev").message == "first"
    assert "model.safetensors" in hub.files(REPO, "dev")
    # a second push to an existing repo and branch works (create_repo/create_branch with exist_ok)
    hf_attnswap.swap(model, "dagpam", lambda_init=0.5)
    push_to_hub(model, REPO, token=TOKEN, endpoint=hub.endpoint, revision="dev")
    assert json.loads(hub.files(REPO, "dev")["config.json"])["attnswap"]["lambda_init"] == 0.5


@pytest.mark.skipif(not is_prepared("gpt2-tokenizer"), reason="needs `attnswap prepare-assets` (GPT-2 tokenizer)")
def test_push_with_the_real_gpt2_tokenizer(hub, tmp_path):
    tok = AutoTokenizer.from_pretrained(gpt2_tokenizer_path())
    push_to_hub(_model("gpt2", "polynomial"), REPO, tokenizer=tok, token=TOKEN, endpoint=hub.endpoint)
    local = snapshot_download(REPO, endpoint=hub.endpoint, token=TOKEN, cache_dir=tmp_path / "cache")
    assert AutoTokenizer.from_pretrained(local)("Hello world")["input_ids"] == [15496, 995]


# ----------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("repo_id,expect", [
    ("mymodel", "no owner part"),
    ("/mymodel", "no owner part"),
    ("alice/", "no owner part"),
    ("", "must be a string like 'owner/name'"),
    (None, "must be a string like 'owner/name'"),
    ("alice/my model", "not a valid Hub repository id"),
    ("alice/bad--name", "not a valid Hub repository id"),
    ("alice/a/b", "not a valid Hub repository id"),
    ("alice/name.git", "not a valid Hub repository id"),
    ("alice/é", "not a valid Hub repository id"),
])
def test_bad_repo_id_is_refused_before_any_request(hub, repo_id, expect):
    with pytest.raises(RepoIdError, match=expect) as info:
        push_to_hub(_model(), repo_id, token=TOKEN, endpoint=hub.endpoint)
    assert "owner/name" in str(info.value) and "your-username/smollm2-dagpam" in str(info.value)
    assert isinstance(info.value, hf_attnswap.AttnSwapError) and isinstance(info.value, ValueError)
    assert hub.requests == []


def test_missing_token_is_refused_before_any_request(hub, no_token):
    with pytest.raises(MissingTokenError) as info:
        push_to_hub(_model(), REPO, endpoint=hub.endpoint)
    message = str(info.value)
    assert "hf auth login" in message and "HF_TOKEN" in message and "dry_run" in message
    assert hub.requests == []


def test_never_swapped_model_is_refused_before_any_request(hub, load):
    plain = load("gpt2", "sdpa")
    with pytest.raises(HubNotSwappedError) as info:
        push_to_hub(plain, REPO, token=TOKEN, endpoint=hub.endpoint)
    message = str(info.value)
    assert "'sdpa'" in message and "hf_attnswap.swap(model" in message and "attn_implementation=" in message
    assert isinstance(info.value, hf_attnswap.NotSwappedError)
    # switched without swap(): config.json would not record the mechanism, so it is refused too
    plain.set_attn_implementation("softmax")
    with pytest.raises(HubNotSwappedError, match="set_attn_implementation"):
        push_to_hub(plain, REPO, token=TOKEN, endpoint=hub.endpoint)
    assert hub.requests == []


@pytest.mark.parametrize("results,expect", [
    ({"metric": "bleu", "value": 1.0, "dataset": "x"}, "must be a list of dicts"),
    ([{"metric": "bleu", "value": 1.0}], "lacks 'dataset'"),
    ([{"metric": "bleu", "value": "high", "dataset": "x"}], "must be a finite number"),
    ([{"metric": "ppl", "value": float("inf"), "dataset": "x"}], "must be a finite number"),
    ([{"metric": "bleu", "value": 1.0, "dataset": "x", "score": 2}], "unknown key"),
    ([{"metric": "", "value": 1.0, "dataset": "x"}], "non-empty string"),
])
def test_bad_eval_results_are_refused_before_any_request(hub, tmp_path, results, expect):
    with pytest.raises(HubError, match=expect):
        push_to_hub(_model(), REPO, eval_results=results, token=TOKEN, endpoint=hub.endpoint)
    with pytest.raises(HubError, match=expect):
        save_for_hub(_model(), tmp_path / "out", eval_results=results)
    assert hub.requests == [] and not (tmp_path / "out").exists()


def test_save_for_hub_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "old.txt").write_text("stale")
    with pytest.raises(HubError, match="not an empty folder"):
        save_for_hub(_model(), tmp_path)


# ----------------------------------------------------------------------------------------------- token safety


def test_token_never_leaks_even_if_the_server_echoes_it(caplog, capfd):
    """A server that rejects the token and echoes the Authorization header back: the error says what to do and
    neither it, its traceback, the logs nor the output contain the token."""
    caplog.set_level(logging.DEBUG)
    with LocalHub(token="hf_the_right_one", echo_auth_in_errors=True) as server:
        with pytest.raises(HubError) as info:
            push_to_hub(_model(), REPO, token=TOKEN, endpoint=server.endpoint)
        assert any(TOKEN in (a or "") for a in server.authorizations)  # it really was sent, and echoed
    message = str(info.value)
    assert "HTTP 401" in message and "hf auth login" in message and "<token>" in message
    shown = "".join(traceback.format_exception(info.value))
    out, err = capfd.readouterr()
    for text in (message, repr(info.value), shown, caplog.text, out, err):
        assert not _leaks(text)
