#!/usr/bin/env python
"""Continued pretraining (or from-scratch training) of a causal LM with any hf_attnswap mechanism.

The conventions of Hugging Face's ``run_clm_no_trainer.py``, on Accelerate, one CPU to many GPUs::

    python recipes/continue_pretrain.py --config recipes/configs/smollm2_dagpam.yaml
    accelerate launch --config_file recipes/configs/accelerate/cpu.yaml recipes/continue_pretrain.py \\
        --config recipes/configs/gpt2_scratch_softmax.yaml --max_train_steps 20

Every value comes from the YAML file given by ``--config`` and can be overridden on the command line
(``--help`` lists them). Outputs in ``output_dir``: the final model and tokenizer (config.json keeps the
mechanism), ``results.json``, ``log.jsonl``, ``checkpoints/step_*`` and, with ``--with_tracking``, TensorBoard
logs under ``tracking/``.
"""

from __future__ import annotations

import sys

import torch

import hf_attnswap  # noqa: F401  (registers the mechanisms in every process, before any model is built)
from hf_attnswap.data.lm import collate_blocks as collate, load_lm_texts, pack_texts
from hf_attnswap.evaluation.perplexity import perplexity
from hf_attnswap.training.arguments import DataArguments, LoraArguments, ModelArguments, TrainArguments, parse_recipe_args
from hf_attnswap.training.loop import (make_accelerator, prepare_output_dir, recipe_command, run_recipe, save_final,
                                      train)
from hf_attnswap.training.model import (build_model, check_model_args, check_packing_isolates, load_tokenizer,
                                        wrap_lora)
from hf_attnswap.training.report import push_final, write_results


def main(argv: list[str] | None = None) -> int:
    # --- configuration: YAML + command-line overrides, checked before anything heavy ---------------------------
    model_args, data_args, train_args, lora_args = parse_recipe_args(
        [ModelArguments, DataArguments, TrainArguments, LoraArguments], argv)
    accelerator = make_accelerator(train_args, "continue_pretrain")
    check_model_args(model_args)  # paths exist, a from-scratch config builds (on the meta device)
    start = prepare_output_dir(train_args, accelerator)  # no overwriting of a run; the checkpoint is intact

    from accelerate.utils import set_seed

    set_seed(train_args.seed)

    # --- data: documents, held-out validation, tokenise and pack (main process first: caches are shared) -----
    with accelerator.main_process_first():
        texts = load_lm_texts(
            dataset_name=data_args.dataset_name, dataset_config_name=data_args.dataset_config_name,
            train_file=data_args.train_file, validation_file=data_args.validation_file,
            text_column=data_args.text_column, validation_split_percentage=data_args.validation_split_percentage,
            max_train_samples=data_args.max_train_samples, max_eval_samples=data_args.max_eval_samples)
    tokenizer = load_tokenizer(model_args)

    # --- model: pretrained or from scratch, swapped through the public API -----------------------------------
    model, spec = build_model(model_args, tokenizer, block_size=data_args.block_size)
    if data_args.packing == "documents":
        check_packing_isolates(model)  # a model whose mask ignores position_ids would mix the documents
    with accelerator.main_process_first():
        train_dataset = pack_texts(texts.train, tokenizer, data_args.block_size,
                                   num_proc=data_args.preprocessing_num_workers,
                                   isolate_documents=data_args.packing == "documents")
    if lora_args.lora:
        model = wrap_lora(model, lora_args)
    if accelerator.is_main_process:
        added = hf_attnswap.parameter_overhead(model)["added"]
        print(f"{spec.label}: {len(texts.train)} training documents -> {len(train_dataset)} blocks of "
              f"{data_args.block_size} tokens; {len(texts.validation)} validation documents; {added:,} mechanism "
              f"parameters", flush=True)

    # --- evaluation: perplexity on the held-out documents, through the evaluation module ---------------------
    def evaluate(eval_model: torch.nn.Module, step: int) -> dict[str, float]:
        if not texts.validation:
            return {}
        r = perplexity(eval_model, tokenizer, texts.validation, max_length=data_args.block_size,
                       batch_size=train_args.per_device_eval_batch_size, progress=False)
        if accelerator.is_main_process:
            print(f"step {step}: validation perplexity {r.ppl:.4g} ({r.tokens:,} tokens)", flush=True)
        return {"ppl": r.ppl, "nll": r.nll, "tokens": r.tokens}

    # --- train ------------------------------------------------------------------------------------------------
    model, outcome = train(accelerator, model, train_dataset, collate, train_args, evaluate=evaluate, start=start,
                           command=recipe_command(__file__, argv),
                           project_name="continue_pretrain",
                           hparams={**vars(model_args), **vars(data_args), **vars(train_args), **vars(lora_args)})
    if outcome.interrupted:  # Ctrl-C (130), SIGTERM (143) or stop_after_steps (0): the checkpoints stay
        accelerator.end_training()
        return outcome.exit_code

    # --- save, report, share ----------------------------------------------------------------------------------
    out = save_final(accelerator, model, tokenizer, train_args.output_dir)
    if accelerator.is_main_process:
        results = write_results(out, outcome, spec=spec, model_args=model_args, data_source=texts.source,
                                metric="ppl", extra={"block_size": data_args.block_size})
        print(f"saved {out}; validation perplexity {results['first_eval']} -> {results['final_eval']}", flush=True)
        if train_args.push_to_hub:
            push_final(out, train_args, base_model=model_args.model_name_or_path,
                       eval_results=[{"metric": "perplexity", "value": results["final_eval"],
                                      "dataset": texts.source, "split": "validation"}] if results["final_eval"] else None)
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(run_recipe(main))
