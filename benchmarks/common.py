"""Shared helpers for the benchmark scripts: interleaved timing, peak memory, machine description, tables."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "device": "cpu",
    }
    info["cpu"] = cpu_name()
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def cpu_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``platform.processor()`` where it has none)."""
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, device: str = "cpu", warmup: int = 1) -> dict[str, float]:
    """Median seconds of each function, measured round-robin (one call of each per round) so that machine
    noise hits every candidate alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _status_kb(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def peak_memory_subprocess(setup: str, timeout: int = 1800) -> float | None:
    """Peak resident memory (MiB) that calling ``fn()`` adds, in a fresh Python. ``setup`` must define ``fn``
    (inputs it allocates are not counted). Linux only: the peak is reset through ``/proc/self/clear_refs``.
    Returns None if the run failed (e.g. out of memory)."""
    code = (
        "import torch, hf_attnswap, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
        "from common import _status_kb\n"
        + setup
        + "\nopen('/proc/self/clear_refs', 'w').write('5')\nbase = _status_kb('VmRSS')\nfn()\n"
        "print('PEAK', _status_kb('VmHWM') - base)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("PEAK"):
            return int(line.split()[1]) / 1024.0
    print(f"memory run failed: {proc.stderr[-500:]}", file=sys.stderr)
    return None


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    """A plain, aligned text table (readable in logs and pasteable into Markdown)."""
    cells = [[str(c) for c in columns]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    print(f"\n{title}")
    print("| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2))
        print(f"\nwrote {path}")


def held_out_blocks(data: str, tokenizer: Any, block_size: int, batch_size: int, batches: int) -> list[torch.Tensor]:
    """The first ``batches`` batches (each (batch_size, block_size) token ids) of full blocks packed from the held-out
    10 % of the documents of ``data`` (an asset name or a file), the split the conversion recipes hold out."""
    from hf_attnswap.data.lm import load_lm_texts, pack_texts

    source = {"train_file": data} if Path(data).is_file() else {"dataset_name": data}
    texts = load_lm_texts(**source, validation_split_percentage=10)
    held_out = pack_texts(texts.validation, tokenizer, block_size)
    n = min(len(held_out), batches * batch_size)
    return list(torch.tensor([held_out[i]["input_ids"] for i in range(n)]).split(batch_size))


def add_held_out_arguments(p: argparse.ArgumentParser, converted_help: str, json_name: str) -> None:
    """The arguments that the transfer diagnostics share: --base, --converted, the held-out data (--data,
    --block-size, --batch-size, --batches) and --json (default ``<converted>/<json_name>``)."""
    p.add_argument("--base", default="smollm2", help="the base model (offline asset name, folder or Hub name)")
    p.add_argument("--converted", required=True, help=converted_help)
    p.add_argument("--data", default="wiki-text", help="the training corpus (asset name or a file); its held-out "
                                                     "10 %% is measured")
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--json", default=None, help=f"where to write the JSON (default <converted>/{json_name}); an "
                                                 "existing file is refused unless --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace an existing JSON file")


def held_out_json_path(args: argparse.Namespace, converted_dir: str, json_name: str) -> Path:
    """Where a transfer diagnostic writes its JSON: ``--json``, else ``<converted_dir>/<json_name>``. Called before
    any work: an existing file is a result, so it is refused (``SystemExit`` with an ``error:``) unless
    ``--overwrite`` is given."""
    path = Path(args.json) if args.json else Path(converted_dir) / json_name
    if path.exists() and not args.overwrite:
        raise SystemExit(f"error: {path} exists and would be overwritten. Pass --json with a new path to keep it, or "
                         "--overwrite to replace it.")
    return path
