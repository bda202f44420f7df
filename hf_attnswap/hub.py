"""Share a swapped model on the Hugging Face Hub, with a model card that says how to load it.

```python
import hf_attnswap
from hf_attnswap.hub import push_to_hub, save_for_hub

model = AutoModelForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M", attn_implementation="dagpam")
push_to_hub(model, "me/smollm2-dagpam", tokenizer=tok, eval_results=[
    {"task": "text-generation", "dataset": "wikitext", "config": "wikitext-2-raw-v1", "split": "test",
     "metric": "perplexity", "value": 21.4},
])
push_to_hub(model, "me/smollm2-dagpam", dry_run="out/")   # write what would be uploaded; upload nothing
```

What is uploaded (:func:`save_for_hub` writes exactly that): the weights as safetensors, ``config.json`` with
the mechanism and every option (``attnswap``), ``generation_config.json`` when the model has one, the tokenizer
files when a tokenizer is given, and ``README.md``: a model card built with ``huggingface_hub.ModelCard``.

**Evaluation results** (``eval_results=``) are a list of dicts, one per score:

| key | required | meaning |
| --- | --- | --- |
| ``metric`` | yes | metric id, e.g. ``"perplexity"``, ``"bleu"``, ``"chrf"`` |
| ``value`` | yes | a finite number |
| ``dataset`` | yes | the dataset: a Hub dataset id (``"wikitext"``, ``"wmt/wmt14"``) or a name |
| ``task`` | no | Hub task id, default ``"text-generation"`` (``"translation"`` for BLEU, say) |
| ``config`` | no | dataset configuration, e.g. ``"wikitext-2-raw-v1"`` or ``"de-en"`` |
| ``split`` | no | dataset split, e.g. ``"test"`` |
| ``notes`` | no | free text shown in the card's table (e.g. ``"1024-token windows"``) |

They become a table in the card and the ``model-index`` metadata the Hub displays.

The token is never printed, logged or put in an exception message.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, get_token
from huggingface_hub.errors import HfHubHTTPError, HFValidationError
from huggingface_hub.utils import validate_repo_id
from torch import nn

from ._version import __version__
from .data.hints import param, setting
from .errors import AttnSwapError, NotSwappedError, OptionError
from .registry import (
    PARAMS_ATTR,
    PERSIST_SUFFIX,
    get_mechanism,
    is_mechanism,
    list_mechanisms,
    parameter_overhead,
    parse_options,
)
from .transformers_hooks import attn_implementation_of

__all__ = [
    "EVAL_RESULT_KEYS",
    "HubError",
    "HubNotSwappedError",
    "MissingTokenError",
    "RepoIdError",
    "check_repo_id",
    "check_token",
    "push_to_hub",
    "read_eval_results",
    "save_for_hub",
]

logger = logging.getLogger(__name__)

LIBRARY_TAG = "hf-attnswap"


def papers() -> dict[str, tuple[str, str]]:
    """The papers behind the registered mechanisms (their registration's ``paper``): name -> (arXiv id, citation)."""
    return {name: get_mechanism(name).paper for name in list_mechanisms() if get_mechanism(name).paper}


#: Keys accepted in each ``eval_results`` entry (see the module docstring).
EVAL_RESULT_KEYS: dict[str, bool] = {
    "metric": True, "value": True, "dataset": True, "task": False, "config": False, "split": False, "notes": False,
}
_EXAMPLE_REPO = "your-username/smollm2-dagpam"
_EXAMPLE_RESULT = '{"task": "text-generation", "dataset": "wikitext", "split": "test", "metric": "perplexity", "value": 21.4}'


class HubError(AttnSwapError):
    """Bad input to :func:`push_to_hub` / :func:`save_for_hub`, or an upload the Hub refused."""


class RepoIdError(HubError):
    """The repository id is not of the form ``owner/name``."""


class MissingTokenError(HubError):
    """No Hugging Face token: not given, not in ``HF_TOKEN``, no cached login."""


class HubNotSwappedError(HubError, NotSwappedError):
    """The model runs none of hf_attnswap's mechanisms, so there is nothing hf_attnswap-specific to share."""


@dataclass(frozen=True)
class _Share:
    """Everything the card needs, validated before anything is written or sent."""

    mechanism: str
    options: dict[str, Any]
    base_model: str | None
    eval_results: list[dict[str, Any]]
    tags: list[str]


# --------------------------------------------------------------------------------------------- public API


def save_for_hub(
    model: nn.Module,
    folder: str | os.PathLike[str],
    *,
    tokenizer: Any = None,
    base_model: str | None = None,
    eval_results: Sequence[Mapping[str, Any]] | None = None,
    extra_tags: Iterable[str] | None = None,
    repo_id: str | None = None,
) -> Path:
    """Write into ``folder`` exactly what :func:`push_to_hub` uploads; return the folder.

    ``folder`` must not exist or be empty. ``base_model`` (a Hub model id) defaults to the id the model was loaded
    from when that is a Hub id rather than a local path. ``repo_id`` only appears in the card's loading example.
    """
    share = _prepare(model, base_model=base_model, eval_results=eval_results, extra_tags=extra_tags)
    if repo_id is not None:
        _check_repo_id(repo_id)
    return _write(model, Path(folder), share, tokenizer=tokenizer, repo_id=repo_id)


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    *,
    tokenizer: Any = None,
    base_model: str | None = None,
    eval_results: Sequence[Mapping[str, Any]] | None = None,
    extra_tags: Iterable[str] | None = None,
    private: bool = False,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    dry_run: str | os.PathLike[str] | None = None,
    endpoint: str | None = None,
) -> str | Path:
    """Upload a swapped model (weights, config, tokenizer, model card) to ``repo_id``; return the commit URL.

    Everything is checked before anything is sent: ``repo_id`` (``owner/name``), that the model was swapped,
    the evaluation results, and the token (``token=``, else ``HF_TOKEN``, else the cached ``hf auth login``).
    ``dry_run=<folder>`` writes what would be uploaded there (see :func:`save_for_hub`), uploads nothing, needs
    no token, and returns the folder. ``revision`` is a branch, created from ``main`` if missing. ``endpoint``
    points at another Hub (default: ``HF_ENDPOINT`` or huggingface.co).
    """
    _check_repo_id(repo_id)
    share = _prepare(model, base_model=base_model, eval_results=eval_results, extra_tags=extra_tags)
    if dry_run is not None:
        return _write(model, Path(dry_run), share, tokenizer=tokenizer, repo_id=repo_id)
    token = _resolve_token(token)
    message = commit_message or f"Upload {share.mechanism}-attention model with hf-attnswap"
    with tempfile.TemporaryDirectory(prefix="hf_attnswap_push_") as tmp:
        folder = _write(model, Path(tmp) / "upload", share, tokenizer=tokenizer, repo_id=repo_id)
        names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        logger.info("Uploading %d files to %s: %s", len(names), repo_id, ", ".join(names))
        return _upload(folder, repo_id, token=token, endpoint=endpoint, private=private, revision=revision,
                       commit_message=message)


def check_token(token: str | None = None) -> str:
    """The token :func:`push_to_hub` would use (``token``, else ``HF_TOKEN``, else the cached login), or
    :class:`MissingTokenError` saying how to get one. Never printed or logged."""
    return _resolve_token(token)


def check_repo_id(repo_id: Any) -> str:
    """``repo_id`` if it is a valid Hub repository id ``owner/name``, else :class:`RepoIdError` saying why."""
    return _check_repo_id(repo_id)


def read_eval_results(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read and check a JSON file of evaluation results (a list of objects with ``metric``, ``value``,
    ``dataset``, ...; see the module docstring) for :func:`push_to_hub`'s ``eval_results``.

    Raises :class:`HubError` naming the file and what is wrong: missing, not UTF-8, not JSON (with the line and
    column), not a list of objects, or an entry without ``metric``/``value``/``dataset``."""
    file = Path(path).expanduser()
    example = f"[{_EXAMPLE_RESULT}]"
    try:
        text = file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise HubError(f"eval results file {file} does not exist; pass a JSON file such as {example}.") from None
    except IsADirectoryError:
        raise HubError(f"eval results file {file} is a folder; pass a JSON file such as {example}.") from None
    except UnicodeDecodeError as err:
        raise HubError(f"eval results file {file} is not UTF-8 text ({err.reason} at byte {err.start}); pass a JSON "
                       f"file such as {example}.") from None
    except OSError as err:
        raise HubError(f"eval results file {file} cannot be read ({err.strerror or err}).") from None
    if not text.strip():
        raise HubError(f"eval results file {file} is empty; it must hold a JSON list such as {example}.")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise HubError(f"eval results file {file}: line {err.lineno}, column {err.colno} is not valid JSON "
                       f"({err.msg}); it must hold a JSON list such as {example}.") from None
    if isinstance(data, dict):
        data = [data] if "metric" in data else data  # one result on its own is accepted as a list of one
    if not isinstance(data, list):
        raise HubError(f"eval results file {file} holds a JSON {type(data).__name__}, not a list of results; it must "
                       f"hold a JSON list such as {example}.")
    try:
        return _check_eval_results(data)
    except HubError as err:
        raise HubError(f"eval results file {file}: {err}") from None


# --------------------------------------------------------------------------------------------- validation


def _check_repo_id(repo_id: Any) -> str:
    flag = param("repo_id")
    shown = f"{flag} {_EXAMPLE_REPO}" if flag.startswith("-") else f"push_to_hub(model, {_EXAMPLE_REPO!r})"
    example = f"Use 'owner/name', e.g. {shown} (owner: your user or organisation name)."
    if not isinstance(repo_id, str) or not repo_id:
        raise RepoIdError(f"{flag} must be a string like 'owner/name', got {repo_id!r}. {example}")
    owner, sep, name = repo_id.partition("/")
    if not sep or not owner or not name:
        raise RepoIdError(f"{flag} {repo_id!r} has no owner part. {example}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise RepoIdError(
            f"{flag} {repo_id!r} is not a valid Hub repository id: {err} Owner and name may use letters, digits, "
            f"'-', '_' and '.', not start or end with '-' or '.', and hold no '--' or '..'. {example}"
        ) from None
    return repo_id


def _prepare(
    model: nn.Module,
    *,
    base_model: str | None,
    eval_results: Sequence[Mapping[str, Any]] | None,
    extra_tags: Iterable[str] | None,
) -> _Share:
    mechanism, options = _mechanism_of(model)
    tags = [LIBRARY_TAG, "attention", mechanism]
    paper = get_mechanism(mechanism).paper
    if paper is not None:
        tags.append(f"arxiv:{paper[0]}")
    if extra_tags is not None:
        if isinstance(extra_tags, str):
            raise HubError(f"extra_tags must be a list of strings, e.g. ['smollm2'], not the string {extra_tags!r}.")
        for tag in extra_tags:
            if not isinstance(tag, str) or not tag.strip():
                raise HubError(f"extra_tags must be non-empty strings, e.g. ['smollm2']; got {tag!r}.")
            tags.append(tag.strip())
    return _Share(
        mechanism=mechanism,
        options=options,
        base_model=_base_model(model, base_model),
        eval_results=_check_eval_results(eval_results),
        tags=list(dict.fromkeys(tags)),
    )


def _mechanism_of(model: nn.Module) -> tuple[str, dict[str, Any]]:
    """The mechanism ``model`` runs and its full options, or :class:`HubNotSwappedError`."""
    config = getattr(model, "config", None)
    name = attn_implementation_of(config)
    stored = getattr(config, "attnswap", None)
    fix = (
        "Swap it first with hf_attnswap.swap(model, 'dagpam', ...) or load it with "
        "AutoModelForCausalLM.from_pretrained(path, attn_implementation='dagpam'|'polynomial'|'softmax')."
    )
    if not is_mechanism(name):
        raise HubNotSwappedError(
            f"this model runs attention {name!r}, not an hf_attnswap mechanism, so there is no swapped model to "
            f"share. {fix} (To share a plain model, use model.push_to_hub instead.)"
        )
    mech = get_mechanism(name)
    if not isinstance(stored, dict) or stored.get("mechanism") != mech.name:
        raise HubNotSwappedError(
            f"model.config names attention {mech.name!r} but holds no hf_attnswap options for it (was it switched with "
            f"model.set_attn_implementation()?). {fix}"
        )
    try:
        options = parse_options(mech, stored).to_dict()
    except OptionError as err:
        raise HubNotSwappedError(f"model.config.attnswap is not valid: {err}") from None
    if mech.make_params is not None and not any(f".{PARAMS_ATTR}." in f".{n}" for n, _ in model.named_parameters()):
        raise HubNotSwappedError(f"mechanism {mech.name!r} needs its own parameters, but the model has none. {fix}")
    return mech.name, options


def _is_hub_id(name: str) -> bool:
    if not name or name.startswith((".", "/", "~")) or "\\" in name or os.path.exists(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _base_model(model: nn.Module, given: str | None) -> str | None:
    if given is not None:
        if not isinstance(given, str) or not _is_hub_id(given):
            raise HubError(
                f"{param('base_model')} must be the Hub id of the model you started from, e.g. 'HuggingFaceTB/SmolLM2-135M', "
                f"not {given!r} (a local path cannot be linked from the Hub). Leave it out if there is none."
            )
        return given
    for candidate in (getattr(getattr(model, "config", None), "_name_or_path", None), getattr(model, "name_or_path", None)):
        if isinstance(candidate, str) and _is_hub_id(candidate):
            return candidate
    return None


def _check_eval_results(results: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    if results is None:
        return []
    if isinstance(results, Mapping) or not isinstance(results, Sequence) or isinstance(results, str):
        raise HubError(f"eval_results must be a list of dicts such as [{_EXAMPLE_RESULT}], got {type(results).__name__}.")
    checked = []
    for i, entry in enumerate(results):
        where = f"eval_results[{i}]"
        if not isinstance(entry, Mapping):
            raise HubError(f"{where} must be a dict such as {_EXAMPLE_RESULT}, got {entry!r}.")
        unknown = [k for k in entry if k not in EVAL_RESULT_KEYS]
        if unknown:
            raise HubError(f"{where} has unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(EVAL_RESULT_KEYS)}.")
        missing = [k for k, required in EVAL_RESULT_KEYS.items() if required and k not in entry]
        if missing:
            raise HubError(f"{where} lacks {', '.join(map(repr, missing))}; each result needs metric, value and dataset, "
                           f"e.g. {_EXAMPLE_RESULT}.")
        value = entry["value"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise HubError(f"{where}['value'] must be a finite number, got {value!r}.")
        item: dict[str, Any] = {"task": "text-generation", **entry, "value": float(value)}
        for key in EVAL_RESULT_KEYS:
            if key != "value" and key in item and (not isinstance(item[key], str) or not item[key].strip()):
                raise HubError(f"{where}[{key!r}] must be a non-empty string, got {item[key]!r}.")
        checked.append(item)
    return checked


def _resolve_token(token: str | None) -> str:
    if token is not None and (not isinstance(token, str) or not token.strip()):
        raise MissingTokenError("token must be a non-empty string (a Hugging Face access token with write access).")
    token = token or get_token()
    if not token:
        raise MissingTokenError(
            f"no Hugging Face token found: {'pass token=..., ' if param('token') else ''}set the HF_TOKEN environment "
            "variable, or run "
            "`hf auth login` once (create a token with write access at https://huggingface.co/settings/tokens). "
            f"Use {setting('dry_run', '<folder>' if param('dry_run').startswith('-') else repr('<folder>'))} to write "
            "the files without uploading."
        )
    return token


# --------------------------------------------------------------------------------------------- writing


def _write(model: nn.Module, folder: Path, share: _Share, *, tokenizer: Any, repo_id: str | None) -> Path:
    if tokenizer is not None and not callable(getattr(tokenizer, "save_pretrained", None)):
        raise HubError(f"tokenizer must be a Transformers tokenizer (with save_pretrained), got {type(tokenizer).__name__}.")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise HubError(f"{folder} is not an empty folder; pick a new folder (or delete this one) so it holds exactly "
                       "what would be uploaded.")
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)  # Transformers 5 always writes safetensors (there is no safe_serialization switch)
    if any(folder.glob("*.bin")) or not any(folder.glob("*.safetensors")):
        raise HubError(f"save_pretrained did not write safetensors weights into {folder}; please report this.")
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    _card(model, share, repo_id=repo_id).save(folder / "README.md")
    return folder


def _upload(folder: Path, repo_id: str, *, token: str, endpoint: str | None, private: bool, revision: str | None,
            commit_message: str) -> str:
    api = HfApi(endpoint=endpoint, token=token, library_name=LIBRARY_TAG, library_version=__version__)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None and revision != "main" and not revision.startswith("refs/"):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision, commit_message=commit_message)
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        text = _redact(str(err), token)
        if status in (401, 403):
            raise HubError(
                f"the Hub refused the upload to {repo_id!r} (HTTP {status}): the token is invalid or lacks write access "
                f"to {repo_id.split('/')[0]!r}. Run `hf auth login` with a write token, or set HF_TOKEN. Details: {text}"
            ) from None
        if token in str(err):
            raise HubError(f"upload to {repo_id!r} failed: {text}") from None
        raise
    except Exception as err:
        if token in str(err):
            raise HubError(f"upload to {repo_id!r} failed: {_redact(str(err), token)}") from None
        raise
    logger.info("Uploaded to %s: %s", repo_id, info.commit_url)
    return str(info.commit_url)


def _redact(text: str, token: str) -> str:
    return text.replace(token, "<token>") if token else text


# --------------------------------------------------------------------------------------------- model card


def _card(model: nn.Module, share: _Share, *, repo_id: str | None) -> ModelCard:
    name = repo_id.split("/")[-1] if repo_id else f"{share.base_model.split('/')[-1] if share.base_model else type(model).__name__}-{share.mechanism}"
    data = ModelCardData(
        library_name="transformers",
        base_model=share.base_model,
        pipeline_tag="text-generation" if _generates(model) else None,
        tags=share.tags,
        model_name=name if share.eval_results else None,
        eval_results=[
            EvalResult(task_type=r["task"], dataset_type=r["dataset"], dataset_name=r["dataset"],
                       dataset_config=r.get("config"), dataset_split=r.get("split"),
                       metric_type=r["metric"], metric_value=r["value"])
            for r in share.eval_results
        ] or None,
    )
    overhead = parameter_overhead(model)
    body = "\n\n".join(part for part in (
        f"# {name}",
        _about(model, share, overhead),
        _options_table(share.options),
        _eval_table(share.eval_results) if share.eval_results else "",
        _how_to_load(share, repo_id),
        _references(share.mechanism),
    ) if part)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}\n")


def _generates(model: nn.Module) -> bool:
    can = getattr(model, "can_generate", None)
    try:
        return bool(can()) if callable(can) else False
    except Exception:  # a model class whose can_generate() needs more than it has
        return False


def _about(model: nn.Module, share: _Share, overhead: dict[str, Any]) -> str:
    mech = get_mechanism(share.mechanism)
    base = f"[`{share.base_model}`](https://huggingface.co/{share.base_model})" if share.base_model else "a Transformers model"
    arch = f"{type(model).__name__} (model_type `{getattr(model.config, 'model_type', '?')}`)"
    paper = f" ([arXiv {mech.paper[0]}](https://arxiv.org/abs/{mech.paper[0]}))" if mech.paper else ""
    lines = [
        f"This is {base} with its attention swapped to **`{mech.name}`**{paper} by "
        f"[hf-attnswap](https://pypi.org/project/hf-attnswap/). Architecture: {arch}.",
    ]
    if mech.description:
        lines.append(f"\n`{mech.name}`: {mech.description}")
    added, percent = overhead["added"], overhead["percent"]
    if added:
        lines.append(
            f"\n**Parameter overhead:** the mechanism adds {added:,} parameters to the base model's "
            f"{overhead['base']:,} ({percent:.4g} % of base; {overhead['total']:,} in total)."
        )
    else:
        lines.append(f"\n**Parameter overhead:** none; the mechanism adds no parameters ({overhead['base']:,} in total).")
    return "## Model\n\n" + "\n".join(lines)


def _options_table(options: dict[str, Any]) -> str:
    if not options:
        return "## Mechanism options\n\nThis mechanism has no options."
    rows = "\n".join(f"| `{k}` | `{_fmt_option(v)}` |" for k, v in options.items())
    return ("## Mechanism options\n\nStored in `config.json` under `attnswap` and restored on loading.\n\n"
            f"| option | value |\n| --- | --- |\n{rows}")


def _fmt_option(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _eval_table(results: list[dict[str, Any]]) -> str:
    rows = "\n".join(
        "| " + " | ".join(_cell(x) for x in (
            r["task"], r["dataset"] + (f" ({r['config']})" if r.get("config") else ""), r.get("split", ""),
            r["metric"], f"{r['value']:.6g}", r.get("notes", ""),
        )) + " |"
        for r in results
    )
    return ("## Evaluation results\n\n| task | dataset | split | metric | value | notes |\n"
            f"| --- | --- | --- | --- | --- | --- |\n{rows}")


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _how_to_load(share: _Share, repo_id: str | None) -> str:
    target = repo_id or "<this repository>"
    options = "".join(f"\n        {k!r}: {v!r}," for k, v in share.options.items())
    persisted = share.mechanism + PERSIST_SUFFIX
    return f"""## How to load

This model needs the `hf-attnswap` plugin: its attention is not part of Transformers.

```bash
pip install hf-attnswap
```

```python
import hf_attnswap  # registers the {share.mechanism!r} attention with Transformers: import it before loading
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{target}")
tokenizer = AutoTokenizer.from_pretrained("{target}")
```

The mechanism and its options are read from `config.json`; no extra argument is needed. Without
`import hf_attnswap`, `from_pretrained` fails with an error whose message names the missing plugin:
`attn_implementation="{persisted}"` is not supported.

To apply the same mechanism and options to the base model yourself (any parameters the mechanism adds
then start from their initial values; this repository holds the model's own):

```python
import hf_attnswap
from transformers import AutoModelForCausalLM

model = AutoModelForCausalLM.from_pretrained(
    "{share.base_model or '<base model>'}",
    attn_implementation="{share.mechanism}",
    attnswap={{{options}
    }},
)
```"""


def _references(mechanism: str) -> str:
    lines = [f"- {title}: https://arxiv.org/abs/{arxiv}" + (" (this model's mechanism)" if name == mechanism else "")
             for name, (arxiv, title) in papers().items()]
    return "## References\n\n" + "\n".join(lines) + "\n- hf-attnswap: https://pypi.org/project/hf-attnswap/"
