#!/usr/bin/env python
"""Convert a pretrained causal LM to another attention and get its quality back: stage 1, attention transfer (the
new attention learns the original one, layer by layer, the model frozen), then stage 2, fine-tuning (full or LoRA,
optionally with a KL loss to the original model). SCIENCE.md, "Converting a pretrained model"; LoLCATs.

    python recipes/convert.py --config recipes/configs/convert_smollm2_polynomial.yaml
    python recipes/convert.py --config recipes/configs/convert_smollm2_polynomial.yaml --output_dir runs/x --max_transfer_steps 50

``attn`` names the target (``polynomial:degree=3``); the base is loaded with its own attention (``sdpa``), which
is the teacher. Outputs in ``output_dir``: the converted model (``from_pretrained(output_dir)`` after ``import
hf_attnswap``), ``results.json`` (perplexity of the base, right after the swap, after stage 1 and after stage 2 on
every evaluation corpus; tokens, time, the gap closed; the mechanism's added parameters), ``conversion.png``, and
``stage1/`` / ``stage2/`` (each stage's checkpoints and log). ``--control`` also fine-tunes the unswapped model with
the same stage 2 (``control/``) and reports it beside the conversion. ``--resume_from_checkpoint latest`` continues
the stage that was interrupted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

import hf_attnswap  # noqa: F401  (registers the mechanisms in every process, before any model is built)
from hf_attnswap.conversion import TransferObjective
from hf_attnswap.conversion.distill import DistillObjective
from hf_attnswap.data.assets import resolve_asset
from hf_attnswap.data.lm import collate_blocks as collate, load_lm_texts, pack_texts
from hf_attnswap.data.text import load_texts
from hf_attnswap.evaluation.perplexity import perplexity
from hf_attnswap.training.arguments import (ConversionArguments, DataArguments, LoraArguments, ModelArguments,
                                            RecipeConfigError, TrainArguments, comma_list, parse_recipe_args,
                                            pattern_list)
from hf_attnswap.training.loop import (finished_run_files, make_accelerator, prepare_output_dir, recipe_command,
                                       run_recipe, save_final, train)
from hf_attnswap.training.model import (build_model, check_model_args,
                                        check_packing_isolates, freeze_except, load_tokenizer, lora_preview,
                                        parse_single_attn, select_trainable, wrap_lora)
from hf_attnswap.training.optim import check_learning_rate_patterns, parameter_groups
from hf_attnswap.training.report import git_revision, machine

STATE_FILE = "conversion.json"  # the phases done so far: their perplexities, tokens and times (resume reads it)


def _resume(resuming: bool, stage_dir: Path) -> str | None:
    """``latest`` if this resumed run finds a checkpoint of the stage, else None (the stage starts over; a resumed
    run may overwrite what the interrupted one left there, e.g. a log without a checkpoint)."""
    from hf_attnswap.training.checkpoint import list_checkpoints

    return "latest" if resuming and list_checkpoints(stage_dir) else None


def mechanism_parameter_summary(model: torch.nn.Module) -> dict[str, dict[str, float]]:
    """The parameters the mechanism added (e.g. daGPAM's ``lambda_param``), grouped by their last name: how many
    values, their mean, mean absolute value, min and max (raw parameter values). Empty for a mechanism without any."""
    groups: dict[str, list[torch.Tensor]] = {}
    for name, p in model.named_parameters():
        if hf_attnswap.is_mechanism_parameter(name):
            groups.setdefault(name.rsplit(".", 1)[-1], []).append(p.detach().float().flatten())
    summary = {}
    for leaf, values in sorted(groups.items()):
        v = torch.cat(values)
        summary[leaf] = {"numel": v.numel(), "mean": v.mean().item(), "mean_abs": v.abs().mean().item(),
                         "min": v.min().item(), "max": v.max().item()}
    return summary


def step_records(path: Path) -> list[dict[str, Any]]:
    """The training records (those with a ``loss``) of a stage's ``log.jsonl``, one per step in step order: a
    resumed run logs again the steps after its checkpoint, and the later record of a step is the one that counts."""
    by_step: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            by_step[record["step"]] = record
    return [by_step[k] for k in sorted(by_step)]


def resumed_at(path: Path) -> list[int]:
    """The steps at which the stage in ``log.jsonl`` was resumed: its recorded ``seconds`` cover only the last
    process, from the last of them."""
    if not path.exists():  # another node's process: the log is the main process's
        return []
    records = (json.loads(line) for line in path.read_text().splitlines())
    return [r["step"] for r in records if r.get("event") == "resumed"]


def layer_errors(log: list[dict[str, Any]], last: int = 10) -> dict[str, list[float]] | None:
    """Stage 1's per-layer relative error (squared error / the teacher output's mean square; 1.0 is no better than
    an all-zero output) at the first step and averaged over the ``last`` steps, from the stage's log records."""
    rows = [r["transfer/relative_error"] for r in log if "transfer/relative_error" in r]
    if not rows:
        return None
    tail = rows[-last:]
    return {"first_step": rows[0], f"last_{len(tail)}_steps": [sum(c) / len(tail) for c in zip(*tail)]}


def gap_closed(base: float, swapped: float, final: float) -> float | None:
    """Share of the log-perplexity gap of the raw swap that the conversion closed: 1 = back to the base."""
    gap = math.log(swapped) - math.log(base)
    return None if gap <= 0 else (math.log(swapped) - math.log(final)) / gap


def main(argv: list[str] | None = None) -> int:
    wall_started = time.perf_counter()  # this invocation's wall time: loading, every measurement, both stages
    # --- configuration, checked before anything heavy ---------------------------------------------------------
    model_args, data_args, train_args, lora_args, conv = parse_recipe_args(
        [ModelArguments, DataArguments, TrainArguments, LoraArguments, ConversionArguments], argv)
    target = parse_single_attn(model_args.attn)
    if target.name in ("sdpa", "eager"):
        raise RecipeConfigError(f"attn={model_args.attn!r} is the model's own attention; name the mechanism to convert "
                                "to, e.g. polynomial:degree=3.")
    if model_args.model_name_or_path is None:
        raise RecipeConfigError("convert.py converts a pretrained model: set model_name_or_path.")
    backends = hf_attnswap.get_mechanism(target.name).backends
    if conv.train_backend is not None and conv.train_backend not in backends:
        raise RecipeConfigError(f"train_backend={conv.train_backend!r} is not a backend of {target.name}; one of "
                                f"{', '.join(backends)}.")

    def training_backend() -> Any:
        """Both stages' training runs with ``train_backend`` when set (the saved model keeps the target's backend,
        and every perplexity is measured with it)."""
        return hf_attnswap.use_backend(conv.train_backend) if conv.train_backend else contextlib.nullcontext()

    accelerator = make_accelerator(train_args, "convert")
    check_model_args(model_args)
    out = Path(train_args.output_dir)
    resuming = train_args.resume_from_checkpoint is not None
    if resuming and train_args.resume_from_checkpoint != "latest":
        raise RecipeConfigError("convert.py resumes with --resume_from_checkpoint latest (the interrupted stage "
                                "continues from its newest intact checkpoint).")
    done = finished_run_files(out)
    if done and not train_args.overwrite_output_dir:
        raise RecipeConfigError(f"{out} already holds a finished conversion ({', '.join(done)}). Pick another "
                                "--output_dir, or pass --overwrite_output_dir to replace it.")
    if conv.control and conv.skip_finetune:
        raise RecipeConfigError("control runs stage 2 on the unswapped model, but skip_finetune skips stage 2; drop one.")
    if conv.finetune_trainable and (lora_args.lora or conv.skip_finetune):
        other = "lora (choose its targets with lora_target_modules)" if lora_args.lora else "skip_finetune (no stage 2)"
        raise RecipeConfigError(f"finetune_trainable chooses what stage 2's full fine-tuning trains; with {other} it "
                                "has nothing to choose. Drop one.")
    if not resuming and any((out / d).exists() for d in ("stage1", "stage2", "control", STATE_FILE)):
        if not train_args.overwrite_output_dir:
            raise RecipeConfigError(f"{out} holds an interrupted conversion. Continue it with --resume_from_checkpoint "
                                    "latest, or pass --overwrite_output_dir to start over.")
        if accelerator.is_main_process:
            for name in ("stage1", "stage2", "control"):
                shutil.rmtree(out / name, ignore_errors=True)
            for name in (STATE_FILE, *done):
                (out / name).unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    state = json.loads((out / STATE_FILE).read_text()) if resuming and (out / STATE_FILE).is_file() else {}

    from accelerate.utils import set_seed

    set_seed(train_args.seed)

    # --- data: the training corpus (with its held-out documents) and the other evaluation corpora --------------
    with accelerator.main_process_first():
        texts = load_lm_texts(
            dataset_name=data_args.dataset_name, dataset_config_name=data_args.dataset_config_name,
            train_file=data_args.train_file, validation_file=data_args.validation_file,
            text_column=data_args.text_column, validation_split_percentage=data_args.validation_split_percentage,
            max_train_samples=data_args.max_train_samples, max_eval_samples=data_args.max_eval_samples)
    eval_sets = {"train-corpus held out": texts.validation}
    for name in comma_list(conv.eval_datasets):
        if name == data_args.dataset_name:
            raise RecipeConfigError(f"eval_datasets names the training corpus {name!r}; its held-out documents are "
                                    "measured anyway. Name other corpora.")
        source = resolve_asset(name) or name
        eval_sets[name] = load_texts(source)  # none of it is trained on: scored up to eval_max_tokens, like the rest
    tokenizer = load_tokenizer(model_args)
    base_args = dataclasses.replace(model_args, attn="sdpa")  # the teacher: the model as it was trained
    model, _ = build_model(base_args, tokenizer, block_size=data_args.block_size)
    finetune_patterns = pattern_list(conv.finetune_trainable)
    # a pattern that matches nothing fails now, not after stage 1
    stage2_names = select_trainable(model, finetune_patterns) if finetune_patterns else [n for n, _ in model.named_parameters()]
    if not lora_args.lora:
        check_learning_rate_patterns(stage2_names, train_args)
    else:  # the adapters do not exist yet: a weightless copy wrapped the same way checks lora_modules_to_save and
        parameter_groups(lora_preview(model, lora_args), train_args)  # gives the adapters' names to the patterns
    if data_args.packing == "documents":
        check_packing_isolates(model)  # a model whose mask ignores position_ids would mix the documents
    with accelerator.main_process_first():
        dataset = pack_texts(texts.train, tokenizer, data_args.block_size, num_proc=data_args.preprocessing_num_workers,
                             isolate_documents=data_args.packing == "documents")

    tokens: dict[str, int] = {}  # tokens scored per corpus (the same at every phase)

    def perplexities(m: torch.nn.Module) -> dict[str, float]:
        """Held-out perplexity of ``m`` on every evaluation corpus, the same tokens each time."""
        ppl = {}
        for name, docs in eval_sets.items():
            r = perplexity(m, tokenizer, docs, max_length=data_args.block_size,
                           stride=conv.eval_stride or data_args.block_size, max_tokens=conv.eval_max_tokens,
                           batch_size=train_args.per_device_eval_batch_size, progress=False)
            ppl[name] = r.ppl
            tokens[name] = r.tokens
        return ppl

    def measure(m: torch.nn.Module, phase: str) -> dict[str, float]:
        m.eval()
        ppl = perplexities(m)
        if accelerator.is_main_process:
            print(f"{phase}: " + ", ".join(f"{k} ppl {v:.4g}" for k, v in ppl.items()), flush=True)
        return ppl

    def save_state() -> None:
        """Write ``conversion.json``, with this invocation's wall time so far."""
        state["wall_seconds"][invocation] = time.perf_counter() - wall_started
        if accelerator.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            (out / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    def record(phase: str, **values: Any) -> None:
        state[phase] = values
        save_state()

    # every phase is measured on the same tokens: an interrupted conversion continues only with the same evaluation
    evaluation = {"corpora": list(eval_sets), "documents": {k: len(v) for k, v in eval_sets.items()},
                  "eval_max_tokens": conv.eval_max_tokens, "eval_stride": conv.eval_stride or data_args.block_size,
                  "block_size": data_args.block_size}
    if state and state.get("evaluation") != evaluation:
        raise RecipeConfigError(
            f"{out} was measured with other evaluation settings ({state.get('evaluation', 'not recorded')}) than this "
            f"run's ({evaluation}); continuing would compare perplexities of different tokens. Continue with the same "
            "eval_datasets, eval_max_tokens, eval_stride, block_size and data settings, or pass "
            "--overwrite_output_dir to start over.")
    state["evaluation"] = evaluation
    invocation = len(state.setdefault("wall_seconds", []))  # one entry per invocation (a resume adds one)
    state["wall_seconds"].append(0.0)
    state.setdefault("git_revision", git_revision())  # the code the conversion started with (a resume keeps it)
    if "base" not in state:
        record("base", ppl=measure(model, "base"))
    per_step = train_args.per_device_train_batch_size * train_args.gradient_accumulation_steps \
        * accelerator.num_processes * data_args.block_size
    command = recipe_command(__file__, argv)

    # --- stage 1: attention transfer (skipped with max_transfer_steps 0: the 'stage 2 alone' ablation) ----------
    stage1_dir = out / "stage1"
    if conv.max_transfer_steps == 0:
        if "swapped" not in state:
            hf_attnswap.swap(model, target.name, **target.options)
            record("swapped", ppl=measure(model, "swapped"))
        else:
            hf_attnswap.swap(model, target.name, **target.options)
    elif "stage1" in state:  # finished before an interruption of stage 2: its converted model is on disk
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(stage1_dir, dtype=model.dtype)
    else:
        trainable = pattern_list(conv.transfer_trainable) or None
        objective = TransferObjective(model, target.name, target.options, loss=conv.transfer_loss,
                                      trainable=trainable, teacher_forcing=conv.transfer_teacher_forcing)
        if "swapped" not in state:
            with objective.student_view() as swapped:
                record("swapped", ppl=measure(swapped, "right after the swap"))
        if accelerator.is_main_process:
            print(f"stage 1: attention transfer to {target.label}, {conv.max_transfer_steps} steps of {per_step:,} "
                  f"tokens, training {len(objective.trainable_names)} tensors "
                  f"({sum(p.numel() for p in model.parameters() if p.requires_grad):,} parameters)", flush=True)
        resume_s1 = _resume(resuming, stage1_dir)
        if conv.transfer_calibrate and objective.trains_projections and resume_s1 is None:
            first = collate([dataset[i] for i in range(min(len(dataset), train_args.per_device_train_batch_size))])
            with training_backend():
                factors = objective.calibrate_query_scale(first["input_ids"], position_ids=first.get("position_ids"))
            record("calibration", factors=factors)
            if accelerator.is_main_process:
                print("calibrated query scales: " + ", ".join(f"{v:.3g}" for v in factors.values()), flush=True)
        s1_args = dataclasses.replace(
            train_args, output_dir=str(stage1_dir), max_train_steps=conv.max_transfer_steps,
            learning_rate=conv.transfer_learning_rate, attnswap_learning_rate=None, learning_rate_patterns=None,
            weight_decay=0.0,
            num_warmup_steps=conv.transfer_warmup_steps, lr_scheduler_type="cosine", eval_steps=None,
            eval_before_training=False, push_to_hub=False, overwrite_output_dir=resuming,
            resume_from_checkpoint=resume_s1)
        started = time.perf_counter()
        with training_backend():
            _, outcome = train(accelerator, objective, dataset, collate, s1_args,
                               start=prepare_output_dir(s1_args, accelerator), command=command,
                               project_name="convert-stage1")
        if outcome.interrupted:
            save_state()
            accelerator.end_training()
            return outcome.exit_code
        model = objective.finish()
        save_final(accelerator, model, tokenizer, stage1_dir)
        losses = step_records(stage1_dir / "log.jsonl") \
            if accelerator.is_main_process else []
        record("stage1", ppl=measure(model, "after stage 1"), steps=outcome.step, tokens=outcome.tokens_seen,
               seconds=time.perf_counter() - started, trainable=objective.trainable_names,
               loss=[r["loss"] for r in losses], mechanism_parameters=mechanism_parameter_summary(model),
               relative_error=layer_errors(losses), resumed_at=resumed_at(stage1_dir / "log.jsonl"))

    # --- stage 2: fine-tuning on the training loop (full or LoRA; optionally distilled) -------------------------
    def finetune(m: torch.nn.Module, stage: str) -> tuple[torch.nn.Module | None, int]:
        """Stage 2 on ``m`` in ``out/stage``; record the phase ``stage``. Returns (the model, 0) or (None, exit code)."""
        trainable = freeze_except(m, finetune_patterns) if finetune_patterns else None  # None: every parameter
        student: torch.nn.Module = wrap_lora(m, lora_args) if lora_args.lora else m
        trained: torch.nn.Module = student
        if conv.distill_kl_weight > 0:
            teacher, _ = build_model(base_args, tokenizer, block_size=data_args.block_size)
            trained = DistillObjective(student, teacher, conv.distill_kl_weight, conv.distill_temperature,
                                       lm_weight=conv.distill_lm_weight)
        stage_dir = out / stage
        s2_args = dataclasses.replace(
            train_args, output_dir=str(stage_dir), push_to_hub=False, overwrite_output_dir=resuming,
            eval_before_training=False, resume_from_checkpoint=_resume(resuming, stage_dir))

        def evaluate(eval_model: torch.nn.Module, step: int) -> dict[str, float]:
            """``ppl``: the training corpus's held-out documents; ``ppl/<corpus>``: each other evaluation corpus."""
            inner = eval_model.student if isinstance(eval_model, DistillObjective) else eval_model
            return {"ppl" if name == "train-corpus held out" else f"ppl/{name}": v
                    for name, v in perplexities(inner).items()}

        set_seed(train_args.seed)  # the conversion and its control see the same data order
        started = time.perf_counter()
        with training_backend():
            prepared, outcome = train(accelerator, trained, dataset, collate, s2_args, evaluate=evaluate,
                                      start=prepare_output_dir(s2_args, accelerator), command=command,
                                      project_name=f"convert-{stage}", final_eval=False)  # measure() below does it
        if outcome.interrupted:
            save_state()
            return None, outcome.exit_code
        unwrapped = accelerator.unwrap_model(prepared)
        student = unwrapped.student if isinstance(unwrapped, DistillObjective) else unwrapped
        saved = out if stage == "stage2" else stage_dir
        save_final(accelerator, student, tokenizer, saved)
        if hasattr(student, "merge_and_unload"):  # LoRA: measure the merged model that was saved
            from transformers import AutoModelForCausalLM

            student = AutoModelForCausalLM.from_pretrained(saved, dtype=m.dtype)
        losses = step_records(stage_dir / "log.jsonl") \
            if accelerator.is_main_process else []
        label = "after stage 2" if stage == "stage2" else "control (its own attention, the same stage 2)"
        record(stage, ppl=measure(student, label), steps=outcome.step, tokens=outcome.tokens_seen,
               seconds=time.perf_counter() - started, loss=[r["loss"] for r in losses],
               resumed_at=resumed_at(stage_dir / "log.jsonl"),
               mechanism_parameters=mechanism_parameter_summary(student),
               **({"trainable": trainable} if trainable is not None else {}))
        return student, 0

    if conv.skip_finetune:
        save_final(accelerator, model, tokenizer, out)
    elif "stage2" not in state:
        model, code = finetune(model, "stage2")
        if model is None:
            accelerator.end_training()
            return code
    if conv.control and "control" not in state:
        control, _ = build_model(base_args, tokenizer, block_size=data_args.block_size)
        if accelerator.is_main_process:
            print("control: the same stage 2 on the model with its own attention", flush=True)
        control, code = finetune(control, "control")
        if control is None:
            accelerator.end_training()
            return code

    # --- report ---------------------------------------------------------------------------------------------------
    save_state()
    if accelerator.is_main_process:
        results = report(out, state, command=command, target=target.label, options=target.options,
                         model=model_args.model_name_or_path, machine=machine(),
                         mixed_precision=accelerator.mixed_precision, data=texts.source, block_size=data_args.block_size, tokens_per_step=per_step,
                         eval_tokens=tokens, eval_stride=conv.eval_stride or data_args.block_size)
        for name, row in results["ratio_to_base"].items():
            print(f"{name}: perplexity {row['final']:.4g} = {row['ratio']:.3g}x the base ({row['base']:.4g}); gap "
                  f"closed {row['gap_closed']}", flush=True)
        print(f"saved {out}", flush=True)
    accelerator.end_training()
    return 0


def report(out: Path, state: dict[str, Any], **info: Any) -> dict[str, Any]:
    """Write ``results.json`` and ``conversion.png`` from the phases in ``state``; return the results."""
    phases = [p for p in ("base", "swapped", "stage1", "stage2") if p in state]
    final = phases[-1]
    ratios = {}
    for name, base in state["base"]["ppl"].items():
        last = state[final]["ppl"][name]
        swapped = state.get("swapped", {}).get("ppl", {}).get(name)
        ratios[name] = {"base": base, "swapped": swapped, "final": last, "ratio": last / base,
                        "gap_closed": gap_closed(base, swapped, last) if swapped else None}
        if "control" in state:
            control = state["control"]["ppl"][name]
            ratios[name].update(control=control, control_ratio=control / base, ratio_to_control=last / control)
    results = {**info, "phases": {p: state[p] for p in phases}, "final_phase": final, "ratio_to_base": ratios,
               "control": state.get("control"), "calibration": state.get("calibration"),
               "tokens": sum(state.get(p, {}).get("tokens", 0) for p in ("stage1", "stage2")),
               "seconds": sum(state.get(p, {}).get("seconds", 0.0) for p in ("stage1", "stage2")),
               # every invocation's wall time (loading, measurements, both stages, the control), from the start of
               # main to its last recorded phase or its interruption; a killed process's last part is not counted
               "wall_seconds": sum(state.get("wall_seconds", [])),
               "wall_seconds_per_invocation": state.get("wall_seconds", []),
               "control_seconds": state.get("control", {}).get("seconds"),
               "git_revision": state["git_revision"]}
    if git_revision() != state["git_revision"]:  # commits landed while it ran (or it was resumed on newer code)
        results["git_revision_at_end"] = git_revision()
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(out / "conversion.png", state, phases, title=f"{info.get('model')} -> {info.get('target')}")
    return results


def plot(path: Path, state: dict[str, Any], phases: list[str], *, title: str) -> None:
    """Perplexity per phase and corpus (log scale), and each stage's training loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    labels = {"base": "base", "swapped": "swapped", "stage1": "after stage 1", "stage2": "after stage 2"}
    for name in state["base"]["ppl"]:
        line = axes[0].plot([labels[p] for p in phases], [state[p]["ppl"][name] for p in phases], marker="o",
                            label=name)[0]
        if "control" in state:  # the unswapped model after the same stage 2, at the last phase's position
            axes[0].plot([labels[phases[-1]]], [state["control"]["ppl"][name]], marker="x", markersize=10,
                         linestyle="none", color=line.get_color(), label=f"{name}: control (own attention)")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("held-out perplexity")
    axes[0].legend(fontsize=8)
    for ax, stage, what in ((axes[1], "stage1", "transfer loss"), (axes[2], "stage2", "training loss")):
        loss = state.get(stage, {}).get("loss") or []
        ax.plot(range(1, len(loss) + 1), loss, label="converted")
        if stage == "stage2" and state.get("control", {}).get("loss"):
            ax.plot(range(1, len(state["control"]["loss"]) + 1), state["control"]["loss"], label="control")
            ax.legend(fontsize=8)
        name = stage.replace("stage", "stage ")
        ax.set_title(f"{name}: {what}" if loss else f"{name}: not run")
        ax.set_xlabel("step")
        if loss and min(loss) > 0:
            ax.set_yscale("log")
    errors = state.get("stage1", {}).get("relative_error")
    if errors:  # which layers transfer: 1.0 is no better than an all-zero output
        for label, values in errors.items():
            axes[3].plot(range(len(values)), values, marker=".", label=label.replace("_", " "))
        axes[3].axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        axes[3].set_xlabel("layer")
        axes[3].set_ylabel("relative error")
        axes[3].legend(fontsize=8)
    axes[3].set_title("stage 1: per-layer transfer error" if errors else "stage 1: no per-layer errors")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(run_recipe(main))
