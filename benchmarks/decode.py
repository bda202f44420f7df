"""Per-token decode latency with the KV cache under each mechanism, as a ratio to native ``sdpa``.

    python benchmarks/decode.py [--prompt-len 512] [--new-tokens 32] [--layers 12] [--repeats 3] [--json out.json]

GPT-2-small-shaped model (random weights; the speed does not depend on them), batch 1, greedy. The
latency is (time of prompt + N new tokens - time of prompt + 1 token) / (N - 1).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GPT2Config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, machine, print_table, write_json  # noqa: E402

import hf_attnswap  # noqa: E402,F401
from hf_attnswap.mechanisms import BUILTINS  # noqa: E402
from hf_attnswap.registry import get_mechanism  # noqa: E402

#: Native SDPA, then every built-in mechanism (backend auto) with the first option set its registration exercises.
CELLS = [("sdpa", {})] + [(m, dict(get_mechanism(m).exercise[0])) for m in sorted(BUILTINS, key=lambda n: (n != "softmax", n))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = GPT2Config(n_layer=args.layers)
    ids = torch.randint(0, cfg.vocab_size, (1, args.prompt_len), device=device)
    calls = {}
    for attn, options in CELLS:
        torch.manual_seed(0)
        kwargs = {"attnswap": options} if options else {}
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn, **kwargs).to(device).eval()
        for n in (1, args.new_tokens):
            @torch.no_grad()
            def gen(model=model, n=n):
                model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, pad_token_id=0)
            calls[(attn, n)] = gen
    info = machine()
    print(f"machine: {info}")
    times = interleaved({f"{a}|{n}": fn for (a, n), fn in calls.items()}, args.repeats, device)
    per_token = {a: (times[f"{a}|{args.new_tokens}"] - times[f"{a}|1"]) / (args.new_tokens - 1) for a, _ in CELLS}
    base = per_token["sdpa"]
    rows = [[a, f"{t * 1e3:.1f} ms", f"{t / base:.2f}x"] for a, t in per_token.items()]
    print_table(f"Decode latency per token (prompt {args.prompt_len}, GPT-2 small, {args.layers} layers), ratio to native sdpa",
                ["attention", "per token", "ratio"], rows)
    write_json(args.json, {"machine": info, "args": vars(args),
                           "results": [{"cell": a, "seconds_per_token": t, "ratio": t / base} for a, t in per_token.items()]})


if __name__ == "__main__":
    main()
