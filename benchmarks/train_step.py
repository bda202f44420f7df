"""Training throughput of a GPT-2-small-shaped model (124M config, T=1024) under each mechanism, as a ratio
to native ``sdpa``, measured interleaved in one run.

    python benchmarks/train_step.py [--seq-len 1024] [--batch 1] [--repeats 3] [--layers 12] [--json out.json]

Each step is forward + backward + AdamW step on random tokens; attention dropout as in GPT-2's config (0.1).
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
from hf_attnswap.registry import exercised_options  # noqa: E402

#: Native SDPA, then every built-in mechanism's fused path with the first option set its registration exercises.
CELLS = [("sdpa", {})] + [(m, exercised_options(m, "fused")[0].to_dict()) for m in sorted(BUILTINS, key=lambda n: (n != "softmax", n))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--attn-dropout", type=float, default=0.1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = GPT2Config(n_layer=args.layers, n_positions=max(1024, args.seq_len), attn_pdrop=args.attn_dropout)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq_len), device=device)
    steps = {}
    for attn, options in CELLS:
        torch.manual_seed(0)
        kwargs = {"attnswap": options} if options else {}
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn, **kwargs).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(model=model, opt=opt):
            loss = model(ids, labels=ids).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        steps[f"{attn} {options.get('backend', 'native')}"] = step
    info = machine()
    print(f"machine: {info}")
    times = interleaved(steps, args.repeats, device)
    tokens = args.batch * args.seq_len
    base = times["sdpa native"]
    rows = [[name, f"{t:.2f} s", f"{tokens / t:.0f}", f"{base / t:.2f}x"] for name, t in times.items()]
    print_table(f"GPT-2 small ({args.layers} layers) training step, T={args.seq_len}, B={args.batch}: tokens/s ratio to native sdpa",
                ["attention", "step", "tokens/s", "throughput ratio"], rows)
    write_json(args.json, {"machine": info, "args": vars(args),
                           "results": [{"cell": n, "seconds": t, "tokens_per_s": tokens / t, "ratio": base / t} for n, t in times.items()]})


if __name__ == "__main__":
    main()
