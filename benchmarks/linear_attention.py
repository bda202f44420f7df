"""Degree-2 polynomial attention as linear attention (backend "linear") against native SDPA softmax.

    python benchmarks/linear_attention.py [--lengths 2048,4096,8192,16384,32768] [--repeats 3]
        [--backward-lengths 2048,4096,8192] [--decode-lengths 1024,4096,16384,32768] [--json PATH]

Causal, B=1, 12 heads, head size 64, fp32. Prints, as ratios to native
``scaled_dot_product_attention(is_causal=True)`` measured in the same run (interleaved, median of repeats):
the forward time of polynomial ``degree=2`` with backend ``"fused"`` (blocked, O(T²·d)) and ``"linear"``
(O(T·D·d), D = d(d+1)/2 = 2080), and forward+backward at ``--backward-lengths``. Then decode: the time of
one token with the constant-size :class:`PolynomialLinearState` against attention over a KV cache of N
tokens (preallocated, as a static cache; Transformers' DynamicCache would also copy the cache each step),
and the bytes each holds per layer. Lengths >= ``--large`` run ``--large-repeats`` times (default once).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, machine, print_table, write_json

import hf_attnswap  # noqa: F401
from hf_attnswap.kernels.mask import AttentionMask
from hf_attnswap.kernels.polynomial_linear import PolynomialLinearState
from hf_attnswap.mechanisms.common import AttentionContext
from hf_attnswap.mechanisms.polynomial import (
    polynomial_attention_fused,
    polynomial_attention_linear,
)
from hf_attnswap.mechanisms.polynomial import PolynomialOptions

DEFAULT_JSON = str(Path(__file__).resolve().parent / "results" / "linear_attention_cpu.json")
CELLS = ("sdpa", "fused", "linear")


def make_call(cell: str, T: int, heads: int, dim: int, backward: bool):
    """A zero-argument callable running one causal attention of (1, heads, T, dim) fp32 inputs (and its backward)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, heads, T, dim, requires_grad=backward) for _ in range(3))
    ctx = AttentionContext(scaling=dim**-0.5, options=PolynomialOptions(degree=2, backend="linear" if cell == "linear" else "fused"))
    mask = AttentionMask(None, T, T, 0)

    def run():
        with torch.set_grad_enabled(backward):
            if cell == "sdpa":
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            elif cell == "fused":
                out = polynomial_attention_fused(q, k, v, mask, ctx)
            else:
                out = polynomial_attention_linear(q, k, v, mask, ctx)
            if backward:
                out.sum().backward()
                q.grad = k.grad = v.grad = None

    return run


def time_lengths(lengths: list[int], backward: bool, args) -> list[dict]:
    """Interleaved timings of every cell per length; one record per (T, cell)."""
    records = []
    for T in lengths:
        repeats = args.repeats if T < args.large else args.large_repeats
        calls = {cell: make_call(cell, T, args.heads, args.dim, backward) for cell in CELLS}
        times = interleaved(calls, repeats, "cpu")
        base = times["sdpa"]
        for cell, t in times.items():
            records.append({"T": T, "cell": cell, "pass": "fwd+bwd" if backward else "fwd", "seconds": t, "ratio": t / base,
                            "repeats": repeats})
        print(f"T={T} {'fwd+bwd' if backward else 'fwd'}: " + ", ".join(f"{c} {t * 1e3:.0f} ms ({t / base:.2f}x)" for c, t in times.items()),
              flush=True)
    return records


def time_table(records: list[dict], title: str) -> None:
    rows = []
    for T in dict.fromkeys(r["T"] for r in records):
        get = {r["cell"]: r for r in records if r["T"] == T}
        rows.append([T] + [f"{get[c]['seconds'] * 1e3:.0f} ms ({get[c]['ratio']:.2f}x)" for c in CELLS])
    print_table(title, ["T", "SDPA softmax", "polynomial fused", "polynomial linear"], rows)


def crossover(records: list[dict]) -> int | None:
    """The smallest measured T from which on "linear" is faster than SDPA (None if never)."""
    lengths = sorted({r["T"] for r in records})
    ratio = {r["T"]: r["ratio"] for r in records if r["cell"] == "linear"}
    for i, T in enumerate(lengths):
        if all(ratio[t] < 1.0 for t in lengths[i:]):
            return T
    return None


def decode_calls(n: int, heads: int, dim: int) -> tuple[dict, PolynomialLinearState, int]:
    """Callables for one decode token after ``n`` tokens: the state's step, and polynomial / SDPA attention over a
    preallocated KV cache (the new token written into its slot). Also the state and the KV cache's bytes."""
    scaling = dim**-0.5
    ctx = AttentionContext(scaling=scaling, options=PolynomialOptions(degree=2))
    torch.manual_seed(0)
    k_buf, v_buf = torch.randn(1, heads, n + 1, dim), torch.randn(1, heads, n + 1, dim)
    q1, k1, v1 = (torch.randn(1, heads, 1, dim) for _ in range(3))
    state = PolynomialLinearState(1, heads, dim, scaling=scaling)
    state.update(k_buf[:, :, :n], v_buf[:, :, :n])
    mask = AttentionMask(None, 1, n + 1, n)

    @torch.no_grad()
    def kv(attend):
        k_buf[:, :, n:] = k1
        v_buf[:, :, n:] = v1
        return attend()

    calls = {
        "state": lambda: state.step(q1, k1, v1),
        "kv_polynomial": lambda: kv(lambda: polynomial_attention_fused(q1, k_buf, v_buf, mask, ctx)),
        "kv_sdpa": lambda: kv(lambda: F.scaled_dot_product_attention(q1, k_buf, v_buf)),
    }
    return calls, state, 2 * (n + 1) * heads * dim * k_buf.element_size()


def decode(lengths: list[int], args) -> list[dict]:
    """Per-token time and bytes per layer: the constant state against attention over a KV cache of N tokens."""
    records = []
    for n in lengths:
        calls, state, kv_bytes = decode_calls(n, args.heads, args.dim)
        times = interleaved(calls, args.decode_repeats, "cpu")
        records.append({"N": n, "state_bytes": state.nbytes, "kv_bytes": kv_bytes,
                        **{f"{c}_seconds": t for c, t in times.items()}})
        print(f"decode N={n}: " + ", ".join(f"{c} {t * 1e3:.3f} ms" for c, t in times.items()), flush=True)
    rows = [[r["N"], f"{r['state_seconds'] * 1e3:.2f} ms", f"{r['kv_polynomial_seconds'] * 1e3:.2f} ms",
             f"{r['kv_sdpa_seconds'] * 1e3:.2f} ms", f"{r['state_bytes'] / 2**20:.1f} MiB", f"{r['kv_bytes'] / 2**20:.1f} MiB"]
            for r in records]
    print_table(f"Decode, one token, one layer ({args.heads} heads, d={args.dim}, fp32): constant state vs KV cache of N tokens",
                ["N", "state step", "KV + polynomial (fused)", "KV + SDPA softmax", "state bytes", "KV bytes"], rows)
    return records


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="2048,4096,8192,16384,32768")
    parser.add_argument("--backward-lengths", default="2048,4096,8192", help="forward+backward at these lengths ('' to skip)")
    parser.add_argument("--decode-lengths", default="1024,4096,16384,32768", help="'' to skip")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--large", type=int, default=16384, help="lengths from here on run --large-repeats times")
    parser.add_argument("--large-repeats", type=int, default=1)
    parser.add_argument("--decode-repeats", type=int, default=20)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--json", default=DEFAULT_JSON, help="where to write the results ('' for nowhere)")
    args = parser.parse_args()
    info = machine()
    print(f"machine: {info}", flush=True)
    forward = time_lengths(ints(args.lengths), False, args)
    time_table(forward, f"Forward time, ratio to native SDPA softmax (causal, B=1, {args.heads} heads, d={args.dim}, fp32)")
    cross = crossover(forward)
    print(f"\nlinear is faster than SDPA from T = {cross} on (of the lengths measured)" if cross else "\nlinear never beat SDPA")
    backward = time_lengths(ints(args.backward_lengths), True, args)
    if backward:
        time_table(backward, "Forward+backward time, ratio to native SDPA softmax")
    dec = decode(ints(args.decode_lengths), args)
    write_json(args.json or None, {"machine": info, "args": vars(args), "forward": forward, "forward_backward": backward,
                                   "crossover_forward": cross, "decode": dec})


if __name__ == "__main__":
    main()
