"""Which layers fail to transfer, measured where it matters: the next-token distribution.

    python benchmarks/transfer_layer_kl.py --base smollm2 --converted runs/convert_smollm2_polynomial/stage1 \
        [--data wiki-text] [--batches 4] [--sweep only,restore] [--json PATH]

For a model after attention transfer (``recipes/convert.py``'s ``stage1/`` folder: only its attention modules differ
from the base), this runs *hybrids* of the two on held-out blocks of the training corpus and reports, per layer l,
the KL divergence KL(base || hybrid) of the next-token distributions (nats per token) and the hybrid's perplexity:

- ``only``: layer l runs the converted attention, every other layer the base's: the damage of l alone;
- ``restore``: every layer runs the converted attention except l, which runs the base's: what giving l back its
  original attention would recover.

A check comes first: with no layer converted the hybrid's logits must equal the base model's (the script stops if
not); with every layer converted the hybrid is the converted model itself. A layer's relative transfer error (``benchmarks/transfer_errors.py``)
weighs every output dimension alike; the KL says how much of it reaches the prediction. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_held_out_arguments, held_out_blocks, held_out_json_path, machine, print_table, write_json

import hf_attnswap  # noqa: F401  (registers the mechanisms the converted model names)
from hf_attnswap.data.assets import resolve_asset
from hf_attnswap.patching import attention_modules
from hf_attnswap.training.arguments import ModelArguments
from hf_attnswap.training.model import build_model, load_tokenizer

SWEEPS = ("only", "restore")


def hybrid_logits(converted: torch.nn.Module, conv_modules: list[torch.nn.Module], base_modules: list[torch.nn.Module],
                  ids: torch.Tensor, base_layers: set[int]) -> torch.Tensor:
    """ids (B, T), full causal blocks without padding -> logits (B, T, V) of ``converted`` (whose attention modules
    are ``conv_modules``) in which the layers ``base_layers`` run the base model's attention module instead
    (Transformers' SDPA, causal, on the same hidden states and position embeddings)."""
    handles = []
    for i in base_layers:
        def run_base(module, args, kwargs, output, base=base_modules[i]):
            return base(*args, **{**kwargs, "attention_mask": None})  # SDPA: causal without a mask

        handles.append(conv_modules[i].register_forward_hook(run_base, with_kwargs=True))
    try:
        return converted(input_ids=ids, use_cache=False).logits.float()
    finally:
        for h in handles:
            h.remove()


def kl_and_ppl(reference: list[torch.Tensor], logits: list[torch.Tensor],
               blocks: list[torch.Tensor]) -> tuple[float, float]:
    """Mean KL(reference || logits) of the next-token distributions (nats per token) and the perplexity of ``logits``
    on the blocks' next tokens; each list holds one (B, T, V) tensor per block (B, T)."""
    kl = nll = 0.0
    count = 0
    for ref, got, ids in zip(reference, logits, blocks):
        ref_lp, got_lp = F.log_softmax(ref[:, :-1], -1), F.log_softmax(got[:, :-1], -1)
        kl += float(F.kl_div(got_lp, ref_lp, log_target=True, reduction="sum"))
        nll += float(F.nll_loss(got_lp.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum"))
        count += ids[:, 1:].numel()
    return kl / count, math.exp(nll / count)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_held_out_arguments(p, "the model after attention transfer (convert.py's stage1/)", "transfer_layer_kl.json")
    p.add_argument("--sweep", default="only,restore", help=f"comma-separated, of {', '.join(SWEEPS)}")
    args = p.parse_args(argv)
    sweeps = [s.strip() for s in args.sweep.split(",") if s.strip()]
    if not sweeps or any(s not in SWEEPS for s in sweeps):
        raise SystemExit(f"error: --sweep {args.sweep!r}: name one or more of {', '.join(SWEEPS)}, comma-separated.")

    converted_dir = resolve_asset(args.converted) or args.converted
    json_path = held_out_json_path(args, converted_dir, "transfer_layer_kl.json")

    # --- the base model, the converted one, and held-out blocks ----------------------------------------------------
    model_args = ModelArguments(model_name_or_path=args.base, attn="sdpa")
    tokenizer = load_tokenizer(model_args)
    base, _ = build_model(model_args, tokenizer, block_size=args.block_size)
    if not (Path(converted_dir) / "config.json").is_file():
        raise SystemExit(f"error: {args.converted} holds no model (no config.json); pass convert.py's stage1/ folder.")
    from transformers import AutoModelForCausalLM

    converted = AutoModelForCausalLM.from_pretrained(converted_dir, dtype=base.dtype).eval()
    base.eval()
    base_modules = attention_modules(base)
    conv_modules = attention_modules(converted)
    if len(base_modules) != len(conv_modules) or not conv_modules:
        raise SystemExit(f"error: the base has {len(base_modules)} attention layers, {args.converted} "
                         f"{len(conv_modules)}; pass a conversion of this base.")
    inside = {id(p) for m in conv_modules for p in m.parameters()}
    base_params = dict(base.named_parameters())
    for name, param in converted.named_parameters():
        if id(param) in inside:
            continue
        if name not in base_params or not torch.equal(param, base_params[name]):
            raise SystemExit(f"error: {args.converted}'s {name} differs from the base's; the hybrids need a model "
                             "whose attention modules alone were converted (convert.py's stage1/, not stage 2).")

    blocks = held_out_blocks(args.data, tokenizer, args.block_size, args.batch_size, args.batches)
    tokens = sum(b.numel() for b in blocks)
    layers = len(conv_modules)
    everything = set(range(layers))

    # --- the checks, then the sweeps -----------------------------------------------------------------------------
    with torch.no_grad():
        reference = [base(input_ids=b, use_cache=False).logits.float() for b in blocks]

        def measure(base_layers: set[int]) -> tuple[float, float]:
            logits = [hybrid_logits(converted, conv_modules, base_modules, b, base_layers) for b in blocks]
            return kl_and_ppl(reference, logits, blocks)

        no_converted = [hybrid_logits(converted, conv_modules, base_modules, b, everything) for b in blocks]
        gap = max(float((a - r).abs().max()) for a, r in zip(no_converted, reference))
        if gap > 1e-3:
            raise SystemExit(f"error: with every layer on the base's attention the hybrid's logits differ from the "
                             f"base's by {gap:.3g}: this model's attention modules cannot be exchanged this way.")
        base_ppl = kl_and_ppl(reference, reference, blocks)[1]
        all_kl, all_ppl = measure(set())
        results: dict[str, list[dict[str, float]]] = {}
        for sweep in sweeps:
            rows = []
            for layer in range(layers):
                kl, ppl = measure(everything - {layer} if sweep == "only" else {layer})
                rows.append({"kl": kl, "ppl": ppl})
                print(f"{sweep} layer {layer}: KL {kl:.4f}, ppl {ppl:.2f}", flush=True)
            results[sweep] = rows

    columns = ["layer"]
    for sweep in sweeps:
        columns += [f"{sweep}: KL", f"{sweep}: ppl"]
    table = [[i, *(x for s in sweeps for x in (f"{results[s][i]['kl']:.4f}", f"{results[s][i]['ppl']:.2f}"))]
             for i in range(layers)]
    print_table(f"next-token KL(base || hybrid), nats per token, and perplexity on {tokens:,} held-out tokens "
                f"(only: layer l converted, the rest the base's; restore: all converted but l)", columns, table)
    print(f"base: ppl {base_ppl:.2f}; every layer converted: KL {all_kl:.4f}, ppl {all_ppl:.2f}; "
          f"no layer converted: max logit difference to the base {gap:.2g}")
    for sweep in sweeps:
        worst = sorted(range(layers), key=lambda i: results[sweep][i]["kl"], reverse=sweep == "only")[:5]
        label = "largest KL alone" if sweep == "only" else "lowest KL when restored"
        print(f"{sweep}: {label}: " + ", ".join(f"{i} ({results[sweep][i]['kl']:.3f})" for i in worst))
    write_json(str(json_path),
               {"args": vars(args), "machine": machine(), "tokens": tokens, "base_ppl": base_ppl,
                "all_converted": {"kl": all_kl, "ppl": all_ppl}, "no_layer_converted_max_logit_gap": gap,
                **results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
