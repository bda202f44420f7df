"""Which layers transfer: each attention layer's relative error against the original softmax attention.

    python benchmarks/transfer_errors.py --base smollm2 --attn polynomial:degree=3 \
        --converted runs/convert_smollm2_polynomial/stage1 [--data wiki-text] [--batches 4] [--json PATH]

For a model converted by ``recipes/convert.py`` (its ``stage1/`` folder: the weights after attention transfer),
this rebuilds stage 1's objective on the base model (the teacher keeps the base's query/key projections), loads
the converted weights into the student and measures, per layer with teacher forcing, the squared error of the
student's per-head outputs relative to the teacher output's mean square (1.0 = no better than an all-zero
output), on held-out blocks of the training corpus. Three rows: right after the swap, after the query-scale
calibration, and the converted model. Prints a table and writes JSON.

For the converted model it also says how much of each layer's error output *scale* could remove
(``hf_attnswap.conversion.transfer.gain_bound_errors``): the error left after the best least-squares gain per head,
per head and query position (the best any per-head function of the position can do, e.g. a learned length
exponent) and per head and query (the best any normaliser can do), each fitted on every batch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_held_out_arguments, held_out_blocks, held_out_json_path, machine, print_table, write_json

import hf_attnswap  # noqa: F401
from hf_attnswap.conversion import TransferObjective
from hf_attnswap.data.assets import resolve_asset
from hf_attnswap.training.arguments import ModelArguments
from hf_attnswap.training.model import build_model, load_tokenizer, parse_single_attn


def relative_errors(objective: TransferObjective, blocks: list[torch.Tensor],
                    gain_bounds: bool = False) -> tuple[list[float], list[list[float]] | None]:
    """Mean over ``blocks`` (each (B, T) token ids) of each layer's relative transfer error, and with
    ``gain_bounds`` each layer's mean ``[per head, per head and position, per head and query]`` gain-bound errors
    (else None)."""
    total: list[float] | None = None
    sums: list[list[float]] | None = None
    with torch.no_grad():
        for ids in blocks:
            metrics = objective(input_ids=ids, gain_bounds=gain_bounds).metrics
            rel = metrics["transfer/relative_error"]
            total = rel if total is None else [a + b for a, b in zip(total, rel)]
            if gain_bounds:
                got = [list(b) for b in metrics["transfer/gain_bounds"]]
                sums = got if sums is None else [[a + b for a, b in zip(x, y)] for x, y in zip(sums, got)]
    bounds = [[v / len(blocks) for v in layer] for layer in sums or []] if gain_bounds else None
    return [v / len(blocks) for v in total or []], bounds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_held_out_arguments(p, "the converted model's folder (convert.py's stage1/)", "transfer_errors.json")
    p.add_argument("--attn", default="polynomial:degree=3", help="the mechanism it was converted to")
    args = p.parse_args(argv)

    converted_dir = resolve_asset(args.converted) or args.converted
    json_path = held_out_json_path(args, converted_dir, "transfer_errors.json")
    target = parse_single_attn(args.attn)
    model_args = ModelArguments(model_name_or_path=args.base, attn="sdpa")
    tokenizer = load_tokenizer(model_args)
    blocks = held_out_blocks(args.data, tokenizer, args.block_size, args.batch_size, args.batches)

    model, _ = build_model(model_args, tokenizer, block_size=args.block_size)
    objective = TransferObjective(model, target.name, target.options)
    rows = {"right after the swap": relative_errors(objective, blocks)[0]}
    objective.calibrate_query_scale(blocks[0])
    rows["after calibration"] = relative_errors(objective, blocks)[0]
    from safetensors.torch import load_file

    converted = load_file(str(Path(converted_dir) / "model.safetensors"))
    live = dict(model.named_parameters())
    missing = [n for n in objective.trainable_names if n not in converted]
    if missing:
        raise SystemExit(f"error: {args.converted} has no {missing[0]} (is it convert.py's stage1/ folder?)")
    with torch.no_grad():
        for name in objective.trainable_names:
            live[name].copy_(converted[name])
    rows["converted"], bounds = relative_errors(objective, blocks, gain_bounds=True)
    scale_names = ["converted, best gain per head", "per head and position", "per head and query"]

    layers = len(rows["converted"])
    print_table(f"relative transfer error per layer ({target.label}; 1.0 = no better than a zero output; the last "
                "three: what the converted model's error would be with the best output gain of each kind)",
                ["layer", *rows, *scale_names],
                [[i, *(f"{v[i]:.3f}" for v in rows.values()), *(f"{b:.3f}" for b in bounds[i])] for i in range(layers)])
    means = [sum(b[j] for b in bounds) / layers for j in range(3)]
    print(f"mean over layers: converted {sum(rows['converted']) / layers:.3f}; with the best gain per head "
          f"{means[0]:.3f}, per head and position {means[1]:.3f}, per head and query {means[2]:.3f}")
    worst = sorted(range(layers), key=lambda i: -rows["converted"][i])[:5]
    print("worst layers after conversion: " + ", ".join(f"{i} ({rows['converted'][i]:.3f})" for i in worst))
    write_json(str(json_path),
               {"args": vars(args), "machine": machine(), "tokens": sum(b.numel() for b in blocks),
                "relative_error": rows,
                "converted_with_best_gain": {name: [b[j] for b in bounds] for j, name in enumerate(
                    ["per_head", "per_head_and_position", "per_head_and_query"])}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
