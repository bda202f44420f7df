"""Attention-level benchmark: each mechanism x backend against native SDPA softmax, measured in the same run.

    python benchmarks/attention.py [--lengths 512,1024,2048,4096,8192] [--repeats 3] [--dtype float32] [--json out.json]

Causal, B=1, 12 heads, head size 64, fp32 by default (``--dtype bfloat16``/``float16`` for half precision; the
mechanisms compute those in float32 inside). On CUDA the Triton backends are measured too. Prints the time of forward and of
forward+backward as a ratio to native ``scaled_dot_product_attention(is_causal=True)``, interleaved,
median of repeats; and (``--memory``) the peak memory of forward+backward as a ratio to the same, the
median of ``--memory-repeats`` fresh processes per cell. Reference paths are skipped above
``--max-reference`` tokens (they need n² memory). ``native/sdpa-x2`` is two SDPA calls over the same K, V:
the floor for daGPAM's fused path, which computes two softmax attentions.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, machine, peak_memory_subprocess, print_table, write_json  # noqa: E402

import hf_attnswap  # noqa: E402,F401
from hf_attnswap.kernels.mask import AttentionMask  # noqa: E402
from hf_attnswap.mechanisms.common import AttentionContext, repeat_kv  # noqa: E402
from hf_attnswap.mechanisms import BUILTINS  # noqa: E402
from hf_attnswap.registry import exercised_options, get_mechanism  # noqa: E402

#: Each built-in mechanism's fused and reference paths (the registry says which exist; the degree-2 linear form has its
#: own benchmark), with the first option set its registration exercises; on CUDA, its Triton path too.
CONFIGS = [(m, b) for m in BUILTINS for b in ("fused", "reference") if b in get_mechanism(m).backends]
CUDA_CONFIGS = [(m, "triton") for m in BUILTINS if "triton" in get_mechanism(m).backends]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def make_call(mech: str, backend: str, T: int, heads: int, dim: int, device: str, dtype: torch.dtype, backward: bool):
    """A zero-argument callable that runs one attention (and its backward) on fresh-gradient inputs."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, heads, T, dim, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    if mech == "native":
        q2 = torch.randn_like(q).requires_grad_()

        def run():
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            if backend == "sdpa-x2":  # the floor for daGPAM, which is two softmax attentions over the same K, V
                out = out - F.scaled_dot_product_attention(q2, k, v, is_causal=True)
            if backward:
                out.sum().backward()
        return run
    spec = get_mechanism(mech)
    opts = exercised_options(spec, backend)[0]
    params = spec.make_params(heads, dim, opts).to(device=device, dtype=dtype) if spec.make_params else None
    ctx = AttentionContext(scaling=dim**-0.5, options=opts, params=params)
    dense = torch.tril(torch.ones(T, T, dtype=torch.bool, device=device))[None, None]

    def run():
        if backend == "reference":
            out, _ = spec.forward(q, repeat_kv(k, 1), repeat_kv(v, 1), dense, ctx)
        else:
            out = spec.fast[backend](q, k, v, AttentionMask(None, T, T, 0), ctx)
        if backward:
            out.sum().backward()
    return run


MEMORY_SNIPPET = """
from attention import make_call
fn = make_call({mech!r}, {backend!r}, {T}, {heads}, {dim}, "cpu", torch.float32, True)
"""


def _median_or_none(values: list[float | None]) -> float | None:
    """Median of the runs that succeeded; None if any failed (e.g. out of memory)."""
    return None if not values or any(v is None for v in values) else statistics.median(values)


def _range(values: list[float | None]) -> str:
    ok = [v for v in values if v is not None]
    return f"{min(ok):.0f}-{max(ok):.0f}" if ok else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="512,1024,2048,4096,8192")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--max-reference", type=int, default=4096, help="skip reference paths above this length")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory (fresh process per cell)")
    parser.add_argument("--memory-lengths", default="8192")
    parser.add_argument("--memory-repeats", type=int, default=3,
                        help="fresh processes per memory cell; the table shows the median and the range (the peak RSS "
                             "moves by a few tens of MiB from run to run with the malloc heap's layout)")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="dtype of q, k, v")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = DTYPES[args.dtype]
    configs = CONFIGS + (CUDA_CONFIGS if device == "cuda" else [])
    lengths = [int(x) for x in args.lengths.split(",")]
    info = machine()
    print(f"machine: {info}")
    results = []
    for T in lengths:
        cells = [("native", "sdpa"), ("native", "sdpa-x2")] + [c for c in configs if c[1] != "reference" or T <= args.max_reference]
        for backward in (False, True):
            calls = {f"{m}/{b}": make_call(m, b, T, args.heads, args.dim, device, dtype, backward) for m, b in cells}
            times = interleaved(calls, args.repeats, device)
            base = times["native/sdpa"]
            for name, t in times.items():
                results.append({"T": T, "cell": name, "pass": "fwd+bwd" if backward else "fwd", "seconds": t, "ratio": t / base})
            print(f"T={T} {'fwd+bwd' if backward else 'fwd'}: " + ", ".join(f"{n} {t / base:.2f}x" for n, t in times.items()))
    rows = []
    for T in lengths:
        for name in dict.fromkeys(r["cell"] for r in results if r["T"] == T):
            get = {r["pass"]: r for r in results if r["T"] == T and r["cell"] == name}
            rows.append([T, name, f"{get['fwd']['seconds'] * 1e3:.1f} ms", f"{get['fwd']['ratio']:.2f}x",
                         f"{get['fwd+bwd']['seconds'] * 1e3:.1f} ms", f"{get['fwd+bwd']['ratio']:.2f}x"])
    print_table(f"Attention time, ratio to native SDPA softmax (causal, B=1, {args.heads} heads, d={args.dim}, "
                f"{args.dtype}, {device})",
                ["T", "mechanism/backend", "fwd", "fwd ratio", "fwd+bwd", "fwd+bwd ratio"], rows)
    memory = []
    if args.memory and device == "cpu":
        for T in [int(x) for x in args.memory_lengths.split(",")]:
            cells = [("native", "sdpa"), ("softmax", "fused"), ("dagpam", "fused"), ("polynomial", "fused")]
            if T <= args.max_reference:
                cells += [("dagpam", "reference"), ("polynomial", "reference")]
            runs = {f"{m}/{b}": [peak_memory_subprocess(MEMORY_SNIPPET.format(mech=m, backend=b, T=T, heads=args.heads, dim=args.dim))
                                 for _ in range(args.memory_repeats)] for m, b in cells}
            base = _median_or_none(runs["native/sdpa"])
            for name, peaks in runs.items():
                mib = _median_or_none(peaks)
                memory.append({"T": T, "cell": name, "peak_mib": mib, "runs_mib": peaks,
                               "ratio": None if not (mib and base) else mib / base})
        print_table("Peak memory of fwd+bwd above the idle process (median of fresh processes), ratio to native SDPA",
                    ["T", "mechanism/backend", "peak MiB", "range MiB", "ratio"],
                    [[m["T"], m["cell"], f"{m['peak_mib']:.0f}" if m["peak_mib"] else "failed", _range(m["runs_mib"]),
                      f"{m['ratio']:.2f}x" if m["ratio"] else "-"] for m in memory])
    write_json(args.json, {"machine": info, "args": vars(args), "time": results, "memory": memory})


if __name__ == "__main__":
    main()
