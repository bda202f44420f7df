"""Time of one stage-1 (attention transfer) step and of the query-scale calibration on SmolLM2-135M, as the
conversion recipe runs them, against the same work running the whole network in the student pass.

    python benchmarks/transfer_step.py [--base smollm2] [--attn polynomial:degree=3] [--block-size 256]
        [--batch-size 4] [--repeats 3] [--factors 29] [--json PATH]

With teacher forcing the student pass replays only the attention modules on the inputs the teacher pass gave them
(``TransferObjective``); "whole network" is the same objective made to run the full model again. The calibration
runs one teacher pass for all its factors ("cached teacher"), against one per factor. Random tokens; fp32; the
step is forward + backward + AdamW step on the trained query/key projections. Measured interleaved, medians.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved, machine, print_table, write_json  # noqa: E402

import hf_attnswap  # noqa: E402,F401
from hf_attnswap.conversion import TransferObjective  # noqa: E402
from hf_attnswap.training.arguments import ModelArguments  # noqa: E402
from hf_attnswap.training.model import build_model, load_tokenizer, parse_single_attn  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="smollm2", help="the base model (offline asset name, folder or Hub name)")
    p.add_argument("--attn", default="polynomial:degree=3")
    p.add_argument("--block-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--factors", type=int, default=29, help="calibration grid size (the recipe's default: 29)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    target = parse_single_attn(args.attn)
    model_args = ModelArguments(model_name_or_path=args.base, attn="sdpa")
    model, _ = build_model(model_args, load_tokenizer(model_args), block_size=args.block_size)
    objective = TransferObjective(model, target.name, target.options).train()
    optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-6, weight_decay=0.0)
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (args.batch_size, args.block_size))
    replay_pass = TransferObjective._teacher_pass

    def whole_pass(self, *a, **k):  # no replay: the student pass runs the whole network
        return dataclasses.replace(replay_pass(self, *a, **k), calls=None)

    def step(whole: bool) -> None:
        TransferObjective._teacher_pass = whole_pass if whole else replay_pass
        try:
            objective(input_ids=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        finally:
            TransferObjective._teacher_pass = replay_pass

    grid = [2 ** (k / 2) for k in range(-24, -24 + args.factors)]

    def calibration(cached: bool) -> None:  # the measurement of calibrate_query_scale, without rescaling
        with torch.no_grad():
            teacher = None
            for f in grid:
                if teacher is None or not cached:
                    kw = objective._forward_kwargs(ids, None, None)
                    teacher = objective._teacher_pass(kw, None)
                objective._run(ids, None, query_factor=f, teacher=teacher)

    print(f"machine: {machine()}")
    steps = interleaved({"replay": lambda: step(False), "whole network": lambda: step(True)}, args.repeats)
    calib = interleaved({"cached teacher": lambda: calibration(True), "teacher per factor": lambda: calibration(False)},
                        max(1, args.repeats // 2), warmup=0)
    tokens = args.batch_size * args.block_size
    rows = [[f"stage-1 step, {n}", f"{t:.2f} s", f"{tokens / t:.0f}", f"{steps['whole network'] / t:.2f}x"]
            for n, t in steps.items()]
    rows += [[f"calibration ({len(grid)} factors), {n}", f"{t:.1f} s", "", f"{calib['teacher per factor'] / t:.2f}x"]
             for n, t in calib.items()]
    print_table(f"SmolLM2 attention transfer to {args.attn}, B={args.batch_size}, T={args.block_size}, "
                f"{torch.get_num_threads()} threads, fp32",
                ["what", "time", "tokens/s", "speed-up"], rows)
    write_json(args.json, {"machine": machine(), "args": vars(args),
                           "step_seconds": steps, "calibration_seconds": calib})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
