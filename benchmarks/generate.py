"""Decoding at a given context length: polynomial degree 2 from its fixed-size state against KV caches.

    python benchmarks/generate.py [--contexts 512,4096,16384,32768] [--steps 5] [--layers 12] [--json PATH] [--quick]

GPT-2-small-shaped model (12 layers, 12 heads, head size 64, fp32; random weights: the speed does not depend on
them), batch 1, one token per forward. Three cells:

- ``linear``: polynomial ``{"degree": 2, "backend": "linear"}`` with :class:`PolynomialLinearCache` (what
  ``generate()`` uses for it): each step costs O(D·d) per head, D = d(d+1)/2 = 2080;
- ``fused``: polynomial ``{"degree": 2, "backend": "fused"}`` (the blocked kernel) with Transformers' DynamicCache;
- ``sdpa``: the model's native SDPA attention with Transformers' DynamicCache.

A full generation of 32k tokens is out of reach on a 2-core CPU, so each cell is put *at* a context of N tokens
and then timed for ``--steps`` decode steps (median): the KV caches are filled with N random keys and values per
layer; the linear state absorbs a real 64-token prompt and is then told it has seen N positions (its cost does not
depend on N, and neither does its size). Reported per context: per-token latency (ratio to sdpa), tokens/s, the
bytes of the cache's tensors, and the process's resident memory after the cell (RSS; Linux).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, DynamicCache, GPT2Config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, sync, write_json  # noqa: E402

import hf_attnswap  # noqa: E402,F401
from hf_attnswap.mechanisms.polynomial import PolynomialLinearCache  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DEFAULT_JSON = str(Path(__file__).resolve().parent / "results" / f"generate_{DEVICE}.json")
CELLS = ("sdpa", "fused", "linear")
PROMPT = 64


def build(cell: str, cfg: GPT2Config) -> torch.nn.Module:
    torch.manual_seed(0)
    if cell == "sdpa":
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    else:
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="polynomial",
                                                 attnswap={"degree": 2, "backend": cell})
    return model.to(DEVICE).eval()


@torch.no_grad()
def cache_at(cell: str, model: torch.nn.Module, cfg: GPT2Config, context: int):
    """A cache that holds ``context`` positions for every layer (see the module docstring)."""
    if cell == "linear":
        cache = PolynomialLinearCache(model)
        model(torch.randint(0, cfg.vocab_size, (1, PROMPT), device=DEVICE), cache=cache)
        for layer in cache.layers:
            layer.seen = context
            layer.visible.fill_(context)
        return cache
    cache, d = DynamicCache(), cfg.n_embd // cfg.n_head
    g = torch.Generator(device=DEVICE).manual_seed(0)
    for i in range(cfg.n_layer):
        k, v = (torch.randn(1, cfg.n_head, context, d, generator=g, device=DEVICE) for _ in range(2))
        cache.update(k, v, i)
    return cache


def tensor_bytes(cache) -> int:
    """Bytes of every tensor the cache's layers hold."""
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in vars(layer).values()
               if isinstance(t, torch.Tensor))


def rss_mib() -> float | None:
    try:
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        return None


@torch.no_grad()
def decode_times(model: torch.nn.Module, cache, steps: int, vocab: int) -> list[float]:
    """Seconds of each of ``steps`` one-token forwards from ``cache`` (after one untimed step)."""
    token = torch.randint(0, vocab, (1, 1), device=DEVICE)
    times = []
    for i in range(steps + 1):
        sync(DEVICE)
        start = time.perf_counter()
        logits = model(token, cache=cache, use_cache=True).logits
        sync(DEVICE)
        if i:
            times.append(time.perf_counter() - start)
        token = logits[:, -1:].argmax(-1)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", default="512,4096,16384,32768")
    parser.add_argument("--steps", type=int, default=5, help="timed decode steps per cell and context (median)")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--dim", type=int, default=64, help="head size")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for the tests: 2 layers, 2 heads of 16, "
                        "contexts 64,128, 2 steps")
    parser.add_argument("--json", default=DEFAULT_JSON, help="where to write the results ('' for nowhere)")
    args = parser.parse_args()
    if args.quick:
        args.contexts, args.steps, args.layers, args.heads, args.dim = "64,128", 2, 2, 2, 16
    contexts = [int(x) for x in args.contexts.split(",") if x]
    cfg = GPT2Config(n_layer=args.layers, n_head=args.heads, n_embd=args.heads * args.dim,
                     n_positions=max(contexts) + args.steps + PROMPT + 8)
    info = machine()
    print(f"machine: {info}")
    results = []
    for cell in CELLS:
        model = build(cell, cfg)
        for context in contexts:
            cache = cache_at(cell, model, cfg, context)
            nbytes = tensor_bytes(cache)
            per_token = statistics.median(decode_times(model, cache, args.steps, cfg.vocab_size))
            results.append({"cell": cell, "context": context, "seconds_per_token": per_token,
                            "tokens_per_second": 1.0 / per_token, "cache_bytes": nbytes, "rss_mib": rss_mib()})
            print(f"  {cell:6s} at {context:6d}: {per_token * 1e3:8.1f} ms/token, cache {nbytes / 2**20:8.1f} MiB",
                  flush=True)
            del cache
            gc.collect()
        del model
        gc.collect()
    by = {(r["cell"], r["context"]): r for r in results}
    for r in results:
        r["ratio"] = r["seconds_per_token"] / by["sdpa", r["context"]]["seconds_per_token"]
    rows = []
    for context in contexts:
        base = by["sdpa", context]
        rows.append([f"{context:,}", f"{base['seconds_per_token'] * 1e3:.1f} ms",
                     *(f"{by[c, context]['ratio']:.2f}x" for c in ("fused", "linear")),
                     *(f"{by[c, context]['tokens_per_second']:.1f}" for c in CELLS),
                     *(f"{by[c, context]['cache_bytes'] / 2**20:.1f}" for c in CELLS)])
    print_table(f"Decode at a context of N tokens ({args.layers} layers, {args.heads} heads of {args.dim}, batch 1, "
                f"{DEVICE}): per-token latency as a ratio to sdpa + KV cache, tokens/s, cache MiB",
                ["N", "sdpa + KV", "fused + KV", "linear state", "tok/s sdpa", "tok/s fused", "tok/s linear",
                 "MiB sdpa", "MiB fused", "MiB linear"], rows)
    write_json(args.json or None, {"machine": info, "args": vars(args), "results": results})


if __name__ == "__main__":
    main()
