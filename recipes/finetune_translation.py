#!/usr/bin/env python
"""Supervised fine-tuning of a causal LM for translation, with any hf_attnswap mechanism; BLEU/chrF as it trains.

The sister of ``continue_pretrain.py`` (same arguments, loop, checkpoints and outputs), on Accelerate::

    python recipes/finetune_translation.py --config recipes/configs/smollm2_translation_dagpam.yaml
    accelerate launch --config_file recipes/configs/accelerate/cpu.yaml recipes/finetune_translation.py \\
        --config recipes/configs/smollm2_translation_softmax.yaml --max_train_steps 20

One example is the evaluation's prompt for the pair, a space, the reference and EOS
(``hf_attnswap/data/sft.py``); the loss covers the reference and EOS only. Examples longer than ``block_size``
tokens are dropped (and counted). The validation split (``max_eval_samples`` pairs) is translated greedily (or
with ``eval_num_beams``) with the same prompt at step 0, every ``eval_steps`` and at the end, and scored with
sacrebleu. Outputs in ``output_dir``: the final model and tokenizer, ``best/`` (the model with the highest
validation BLEU, its tokenizer and ``best.json``), ``results.json``, ``log.jsonl``, ``checkpoints/step_*``.
``--push_to_hub`` pushes ``best/`` (the final model if no evaluation ran).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
from functools import partial
from pathlib import Path

import torch

import hf_attnswap  # noqa: F401  (registers the mechanisms in every process, before any model is built)
from hf_attnswap.data.sft import build_translation_examples, load_translation_pairs, pad_collate
from hf_attnswap.evaluation.translation import evaluate_translation, resolve_template
from hf_attnswap.training.arguments import (DataArguments, LoraArguments, ModelArguments, RecipeConfigError,
                                            TrainArguments, TranslationArguments, parse_recipe_args)
from hf_attnswap.training.loop import (make_accelerator, prepare_output_dir, recipe_command, run_recipe, save_final,
                                      train)
from hf_attnswap.training.model import build_model, check_model_args, load_tokenizer, wrap_lora
from hf_attnswap.training.report import push_final, write_results

BEST_DIR = "best"


def main(argv: list[str] | None = None) -> int:
    # --- configuration: YAML + command-line overrides, checked before anything heavy ---------------------------
    model_args, data_args, mt_args, train_args, lora_args = parse_recipe_args(
        [ModelArguments, DataArguments, TranslationArguments, TrainArguments, LoraArguments], argv)
    template = resolve_template(mt_args.source_lang, mt_args.target_lang, mt_args.prompt_template)  # needs {source}
    if mt_args.eval_num_beams < 1 or mt_args.eval_max_new_tokens < 1:
        raise RecipeConfigError(f"eval_num_beams and eval_max_new_tokens must be >= 1; got {mt_args.eval_num_beams}, "
                                f"{mt_args.eval_max_new_tokens}.")
    accelerator = make_accelerator(train_args, "finetune_translation")
    check_model_args(model_args)  # paths exist, a from-scratch config builds (on the meta device)
    start = prepare_output_dir(train_args, accelerator)  # no overwriting of a run; the checkpoint is intact

    from accelerate.utils import set_seed

    set_seed(train_args.seed)

    # --- data: sentence pairs, tokenised as prompt + target + EOS (main process first: caches are shared) -------
    with accelerator.main_process_first():
        pairs = load_translation_pairs(
            dataset_name=data_args.dataset_name, dataset_config_name=data_args.dataset_config_name,
            train_file=data_args.train_file, validation_file=data_args.validation_file,
            src_lang=mt_args.source_lang, tgt_lang=mt_args.target_lang,
            validation_split_percentage=data_args.validation_split_percentage,
            max_train_samples=data_args.max_train_samples, max_eval_samples=data_args.max_eval_samples)
    tokenizer = load_tokenizer(model_args)
    with accelerator.main_process_first():
        train_dataset = build_translation_examples(pairs.train, tokenizer, template, data_args.block_size)
    collate = partial(pad_collate, pad_token_id=tokenizer.pad_token_id)

    # --- model: pretrained or from scratch, swapped through the public API -----------------------------------
    model, spec = build_model(model_args, tokenizer, block_size=data_args.block_size)
    if lora_args.lora:
        model = wrap_lora(model, lora_args)
    if accelerator.is_main_process:
        added = hf_attnswap.parameter_overhead(model)["added"]
        print(f"{spec.label}: {mt_args.source_lang}->{mt_args.target_lang} from {pairs.source}; training: "
              f"{train_dataset.summary()}; {len(pairs.validation)} validation pairs; {added:,} mechanism parameters",
              flush=True)

    # --- evaluation: translate the validation pairs with the training prompt, BLEU/chrF with sacrebleu ----------
    last_signatures: dict[str, str] = {}

    def evaluate(eval_model: torch.nn.Module, step: int) -> dict[str, float]:
        r = evaluate_translation(eval_model, tokenizer, pairs.validation, src_lang=mt_args.source_lang,
                                 tgt_lang=mt_args.target_lang, template=template,
                                 batch_size=train_args.per_device_eval_batch_size, num_beams=mt_args.eval_num_beams,
                                 max_new_tokens=mt_args.eval_max_new_tokens, progress=False,
                                 metric_backend="sacrebleu")  # the numbers of evaluate's sacrebleu, without the Hub
        last_signatures.update(bleu_signature=r.bleu_signature, chrf_signature=r.chrf_signature)
        if accelerator.is_main_process:
            ex = r.examples[0] if r.examples else {}
            print(f"step {step}: validation BLEU {r.bleu:.2f} chrF {r.chrf:.2f} ({r.n} sentences, {r.seconds:.0f} s); "
                  f"{ex.get('source')!r} -> {ex.get('hypothesis')!r}", flush=True)
        return {"bleu": r.bleu, "chrf": r.chrf, "sentences": r.n}

    # --- the best model so far (highest BLEU) goes to <output_dir>/best, replaced once complete -----------------
    best_dir = Path(train_args.output_dir) / BEST_DIR

    def save_best(eval_model: torch.nn.Module, step: int, metrics: dict[str, float]) -> None:
        unwrapped = accelerator.unwrap_model(eval_model)
        peft = hasattr(unwrapped, "merge_and_unload")
        state_dict = None if peft else accelerator.get_state_dict(eval_model)  # every process (FSDP gathers)
        if accelerator.is_main_process:
            tmp = best_dir.with_name(f".{BEST_DIR}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            if peft:  # the adapter, and a merged copy that loads as a normal swapped model; training goes on unmerged
                unwrapped.save_pretrained(tmp / "adapter")
                copy.deepcopy(unwrapped).merge_and_unload().save_pretrained(tmp)
            else:
                unwrapped.save_pretrained(tmp, state_dict=state_dict)
            tokenizer.save_pretrained(tmp)
            (tmp / "best.json").write_text(json.dumps({"step": step, "metric": "bleu", **metrics, "template": template,
                                                       **last_signatures}, indent=2) + "\n")
            shutil.rmtree(best_dir, ignore_errors=True)
            os.replace(tmp, best_dir)
            print(f"step {step}: best BLEU so far ({metrics['bleu']:.2f}), saved to {best_dir}", flush=True)
        accelerator.wait_for_everyone()

    # --- train ------------------------------------------------------------------------------------------------
    model, outcome = train(accelerator, model, train_dataset, collate, train_args, evaluate=evaluate, start=start,
                           command=recipe_command(__file__, argv),
                           best_metric=("bleu", "max"), on_best=save_best, project_name="finetune_translation",
                           hparams={**vars(model_args), **vars(data_args), **vars(mt_args), **vars(train_args),
                                    **vars(lora_args)})
    if outcome.interrupted:  # Ctrl-C (130), SIGTERM (143) or stop_after_steps (0): the checkpoints stay
        accelerator.end_training()
        return outcome.exit_code

    # --- save, report, share ----------------------------------------------------------------------------------
    out = save_final(accelerator, model, tokenizer, train_args.output_dir)
    if accelerator.is_main_process:
        best = outcome.best  # always set: the evaluation runs at least at the end
        results = write_results(out, outcome, spec=spec, model_args=model_args, data_source=pairs.source, metric="bleu",
                                extra={"best_step": best["step"], "best_dir": str(best_dir),
                                       "source_lang": mt_args.source_lang, "target_lang": mt_args.target_lang,
                                       "template": template, "block_size": data_args.block_size,
                                       "train_examples": len(train_dataset), "train_pairs": train_dataset.pairs,
                                       "dropped_too_long": train_dataset.dropped_too_long,
                                       "dropped_empty": train_dataset.dropped_empty,
                                       "validation_pairs": len(pairs.validation),
                                       "eval_num_beams": mt_args.eval_num_beams,
                                       "eval_max_new_tokens": mt_args.eval_max_new_tokens, **last_signatures})
        print(f"saved {out}; validation BLEU {results['first_eval']:.2f} -> {results['final_eval']:.2f}; best "
              f"{best['value']:.2f} at step {best['step']} in {best_dir}", flush=True)
        if train_args.push_to_hub:  # the best model, with its scores
            scores = next(e for e in outcome.evaluations if e["step"] == best["step"])
            where = {"dataset": data_args.dataset_name or data_args.train_file, "split": "validation",
                     "notes": f"{mt_args.source_lang}->{mt_args.target_lang}, {len(pairs.validation)} sentences, "
                              f"step {best['step']}"}
            if data_args.dataset_config_name:
                where["config"] = data_args.dataset_config_name
            push_final(best_dir, train_args, base_model=model_args.model_name_or_path, eval_results=[
                {"task": "translation", "metric": m, "value": scores[f"eval/{m}"], **where} for m in ("bleu", "chrf")])
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(run_recipe(main))
