"""Recipe arguments: dataclasses read by ``HfArgumentParser``, from a YAML file plus command-line overrides.

One way only: ``--config file.yaml`` supplies values, any ``--field value`` on the command line overrides them,
and every other field keeps its dataclass default::

    python recipes/continue_pretrain.py --config recipes/configs/smollm2_dagpam.yaml --max_train_steps 50

An optional field (one whose default is ``None``) is unset with ``none``, ``null`` or an empty string:
``--eval_steps none``, ``--dataset_name ""``.

The names follow Hugging Face's ``run_clm_no_trainer.py`` (``model_name_or_path``, ``block_size``,
``checkpointing_steps``, ``resume_from_checkpoint``, ``with_tracking`` ...).
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..errors import AttnSwapError

__all__ = [
    "comma_list",
    "ConversionArguments",
    "DataArguments",
    "LoraArguments",
    "ModelArguments",
    "RecipeConfigError",
    "TrainArguments",
    "TranslationArguments",
    "parse_recipe_args",
]

T = TypeVar("T")

SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
MIXED_PRECISION = ("no", "bf16", "fp16", "auto")
PACKING = ("concat", "documents")  # DataArguments.packing; hf_attnswap.data.lm.pack_texts(isolate_documents=...)
FLOAT32_MAX = 3.4028234663852886e38
UNSET = ("none", "null", "")  # on the command line, these unset an optional field (case-insensitive)
UNSET_HELP = ("An optional value (default None) is unset with none, null or an empty string, e.g. --eval_steps none "
              "or --dataset_name '' (to drop a value the --config file sets).")


def comma_list(text: str | None) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: the items of a comma-separated option, stripped, empty ones dropped."""
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def pattern_list(text: str | None) -> list[str]:
    """The regular expressions of a comma-separated option, stripped, empty ones dropped. A comma splits only
    outside ``{...}`` and ``[...]`` and unescaped, so ``"layers\\.(1|2){1,2}\\., mlp"`` is two patterns and ``\\,``
    is a literal comma (kept escaped, which a regular expression reads as a comma)."""
    items, current, braces, in_class, escaped = [], [], 0, False, False
    for ch in text or "":
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
        elif ch == "{":
            braces += 1
        elif ch == "}" and braces:
            braces -= 1
        elif ch == "," and not braces:
            items.append("".join(current))
            current = []
            continue
        current.append(ch)
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


class RecipeConfigError(AttnSwapError):
    """A recipe's configuration is wrong: unknown key, bad value, unreadable YAML, missing required field."""


def learning_rate_pairs(text: str | None) -> list[tuple[str, float]]:
    """``"q_proj|k_proj=3e-4, mlp=5e-5"`` -> ``[("q_proj|k_proj", 3e-4), ("mlp", 5e-5)]``: the ``REGEX=LR`` pairs of
    ``learning_rate_patterns``, in order. A pair without ``=``, a pattern that is not a regular expression or a
    learning rate that is not a positive number is a :class:`RecipeConfigError`."""
    pairs = []
    for item in pattern_list(text):
        pattern, sep, value = item.rpartition("=")
        pattern, value = pattern.strip(), value.strip()
        try:
            lr = float(value) if sep and pattern else None
        except ValueError:
            lr = None
        if lr is None or not (lr > 0 and math.isfinite(lr)):
            raise RecipeConfigError(f"learning_rate_patterns: {item!r} is not REGEX=LR with a positive learning rate; "
                                    "give comma-separated pairs such as 'q_proj|k_proj=3e-4'.")
        try:
            re.compile(pattern)
        except re.error as err:
            raise RecipeConfigError(f"learning_rate_patterns: {pattern!r} is not a regular expression: {err}.") from None
        pairs.append((pattern, lr))
    return pairs


@dataclass
class ModelArguments:
    """What to train: a pretrained model, or a fresh one from a config, and the attention to swap in."""

    model_name_or_path: str | None = field(default=None, metadata={
        "help": "Hub name or local folder of a pretrained causal LM, or an offline asset name (smollm2). "
                "Leave empty and set model_type to train from scratch."})
    model_type: str | None = field(default=None, metadata={
        "help": "From scratch: a Transformers model type (gpt2, llama, ...) whose default config is used."})
    config_name: str | None = field(default=None, metadata={"help": "From scratch: a config name or path instead of model_type."})
    config_overrides: str | None = field(default=None, metadata={
        "help": "From scratch: comma-separated key=value overrides of the config, e.g. n_layer=4,n_embd=256."})
    tokenizer_name: str | None = field(default=None, metadata={
        "help": "Tokenizer name or path (default: model_name_or_path); offline asset: gpt2-tokenizer."})
    attn: str = field(default="sdpa", metadata={
        "help": "Attention spec, as for `attnswap eval`: name or name:key=value:key=value, e.g. dagpam:lambda_init=0.1. "
                "sdpa/eager keep the model's own softmax."})
    torch_dtype: str = field(default="float32", metadata={"help": "Weights dtype: float32, bfloat16 or float16."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations in backward."})


@dataclass
class DataArguments:
    """Where the text comes from and how it is cut."""

    dataset_name: str | None = field(default=None, metadata={
        "help": "Hub dataset name, or an offline asset name (news-text, de-en-ding)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of the Hub dataset."})
    train_file: str | None = field(default=None, metadata={"help": "Local .txt/.json/.jsonl/.csv/.parquet file (or glob)."})
    validation_file: str | None = field(default=None, metadata={"help": "Local validation file (default: split off the train data)."})
    text_column: str = field(default="text", metadata={"help": "Column that holds the text."})
    validation_split_percentage: float = field(default=5.0, metadata={
        "help": "Without a validation file/split: this percentage of the documents (the last ones) is held out."})
    block_size: int = field(default=512, metadata={"help": "Tokens per training example, after packing."})
    packing: str = field(default="concat", metadata={
        "help": "How documents share a block. concat: joined with EOS, attention crosses document borders "
                "(run_clm_no_trainer). documents: the same blocks, but each document (and each block) restarts "
                "position_ids at 0, as DataCollatorWithFlattening makes them, so attention stays inside each document "
                "(a block-diagonal mask, no padding) and a document's first token is not a target."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N documents for training."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only the first N validation documents/pairs."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenisation."})


@dataclass
class TranslationArguments:
    """Translation fine-tuning: the language pair and the prompt."""

    source_lang: str = field(default="de", metadata={"help": "Source language code (a key of the pairs)."})
    target_lang: str = field(default="en", metadata={"help": "Target language code."})
    prompt_template: str | None = field(default=None, metadata={
        "help": "Prompt with {source}; the target follows it. Default: the evaluation module's template for the pair."})
    eval_num_beams: int = field(default=1, metadata={"help": "Beams when translating the validation split."})
    eval_max_new_tokens: int = field(default=64, metadata={"help": "Longest generated translation."})


@dataclass
class LoraArguments:
    """PEFT LoRA: adapters on the linear layers; the mechanism's own parameters stay fully trainable."""

    lora: bool = field(default=False, metadata={"help": "Train LoRA adapters instead of all weights."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(default="all-linear", metadata={
        "help": "Comma-separated module names, or all-linear."})
    lora_modules_to_save: str | None = field(default=None, metadata={
        "help": "Comma-separated module names trained fully beside the adapters (PEFT's modules_to_save): a "
                "module's full name or its last dotted parts, e.g. input_layernorm,post_attention_layernorm (Llama's "
                "per-layer norms); norm names only model.norm. A name that names no module is an error."})


@dataclass
class ConversionArguments:
    """``recipes/convert.py``: stage 1 (attention transfer) before the fine-tuning of ``TrainArguments`` (stage 2)."""

    max_transfer_steps: int = field(default=100, metadata={
        "help": "Stage 1 optimiser steps (batches as for stage 2: per_device_train_batch_size x "
                "gradient_accumulation_steps); 0 skips stage 1 (the 'stage 2 alone' ablation)."})
    transfer_learning_rate: float = field(default=1e-3, metadata={"help": "Stage 1 peak learning rate (AdamW, no decay)."})
    transfer_warmup_steps: int = field(default=0, metadata={"help": "Stage 1 linear warmup steps (then cosine)."})
    transfer_loss: str = field(default="mse", metadata={
        "help": "mse (per-head attention outputs) or xent (cross-entropy on the attention weights; short blocks)."})
    transfer_trainable: str | None = field(default=None, metadata={
        "help": "Comma-separated regular expressions over parameter names that stage 1 trains (a comma inside "
                "{m,n} or [...], or escaped with a backslash, belongs to the pattern). Default: the "
                "mechanism's own parameters, or the query/key projections of a mechanism without any."})
    transfer_teacher_forcing: bool = field(default=True, metadata={
        "help": "Each layer passes the teacher's output on (layers train independently)."})
    transfer_calibrate: bool = field(default=True, metadata={
        "help": "Before stage 1, rescale each layer's query projection by the factor (a grid of powers of sqrt 2) "
                "whose student output best matches the teacher's on one batch. Needs the query projections trained."})
    skip_finetune: bool = field(default=False, metadata={"help": "Stop after stage 1 (no stage 2)."})
    finetune_trainable: str | None = field(default=None, metadata={
        "help": "Stage 2 (and the control) with full fine-tuning: comma-separated regular expressions over parameter "
                "names that train (commas as for transfer_trainable); the rest stays frozen, except the mechanism's "
                "own parameters, which always train. "
                "Default: every parameter. E.g. 'self_attn' trains only the attention layers."})
    distill_kl_weight: float = field(default=0.0, metadata={
        "help": "Stage 2: weight of a KL loss to the original model's next-token distributions (0: none)."})
    distill_temperature: float = field(default=1.0, metadata={"help": "Stage 2: temperature of that KL loss."})
    distill_lm_weight: float = field(default=1.0, metadata={
        "help": "Stage 2 with distillation: weight of the next-token loss beside the KL (0: pure distillation, the "
                "student learns the original model's distributions rather than the training text)."})
    train_backend: str | None = field(default=None, metadata={
        "help": "Train both stages with this backend of the target mechanism, e.g. fused for a backend='linear' "
                "target at short blocks, where the blocked kernel computes the same function faster on CPU. The "
                "saved model keeps the target's backend, and every phase's perplexity is measured with it (stage 2's "
                "mid-run evaluations run the training backend)."})
    control: bool = field(default=False, metadata={
        "help": "Also run stage 2 on the unswapped model (its own attention: the control), with the same data order, "
                "seed and budget, and report it beside the conversion (saved in output_dir/control)."})
    eval_max_tokens: int | None = field(default=16384, metadata={
        "help": "Score at most this many tokens of each evaluation corpus (the first ones, in document order), so "
                "that every phase is measured on the same tokens in bounded time; none: all of them."})
    eval_stride: int | None = field(default=None, metadata={
        "help": "Perplexity window stride (default: block_size, i.e. non-overlapping windows)."})
    eval_datasets: str = field(default="news-text", metadata={
        "help": "Comma-separated corpora (offline asset names, files or Hub datasets) whose documents measure "
                "held-out perplexity at every phase, besides the training corpus's validation split. None of "
                "their documents is trained on, so each is scored up to eval_max_tokens, whatever max_eval_samples "
                "(which limits the training corpus's validation split); they must not be the training corpus."})


@dataclass
class TrainArguments:
    """Optimisation, schedule, checkpoints, logging and output."""

    output_dir: str = field(default="runs/recipe", metadata={"help": "Where checkpoints, logs and the final model go."})
    overwrite_output_dir: bool = field(default=False, metadata={
        "help": "Allow a fresh run in a folder that already holds checkpoints or a finished run (its checkpoints, "
                "log.jsonl, results.json and model weights are deleted first). With resume_from_checkpoint: allow "
                "resuming into a folder that holds a finished run (its results.json and weights are replaced)."})
    seed: int = field(default=42, metadata={"help": "Seed for model init, data order and dropout."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Micro-batch size per process."})
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "Evaluation batch size."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimiser step."})
    learning_rate: float = field(default=5e-5, metadata={"help": "Peak learning rate of the model's weights."})
    attnswap_learning_rate: float | None = field(default=None, metadata={
        "help": "Peak learning rate of the mechanism's new parameters (daGPAM's lambda and W-); default: learning_rate."})
    learning_rate_patterns: str | None = field(default=None, metadata={
        "help": "Other peak learning rates for some of the model's weights: comma-separated REGEX=LR pairs (a comma "
                "inside {m,n} or [...], or escaped with a backslash, belongs to the REGEX); a "
                "trainable parameter whose name a REGEX matches (searched; the first pair that matches wins) trains "
                "at that LR, e.g. 'q_proj|k_proj=3e-4'. The mechanism's own parameters follow "
                "attnswap_learning_rate. A pattern that matches no trainable parameter is an error. convert.py: stage 2 "
                "(and the control) only."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (not on biases, norms, embeddings' "
                                                               "positions or the mechanism's parameters)."})
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = field(default=1.0, metadata={
        "help": "Gradient clipping (0 disables clipping; the gradient norm is still computed, logged and checked)."})
    max_bad_steps: int = field(default=0, metadata={
        "help": "Steps with a non-finite loss or gradient norm that may be skipped (no optimiser update; logged and "
                "counted in results.json). One more stops the run with an error; 0: the first one stops it."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": f"One of {', '.join(SCHEDULERS)}."})
    num_warmup_steps: int = field(default=0, metadata={"help": "Linear warmup steps."})
    num_train_epochs: int = field(default=1, metadata={"help": "Epochs (ignored when max_train_steps is set)."})
    max_train_steps: int | None = field(default=None, metadata={"help": "Total optimiser steps (overrides epochs)."})
    mixed_precision: str | None = field(default=None, metadata={
        "help": "no, bf16, fp16 or auto: bf16 where the device computes it natively (a GPU with bf16, a CPU with "
                "AVX512/AMX), else no; bf16 on a CPU without it is refused, as it would be about 100x slower "
                "(default: what `accelerate launch` / its config says, else no)."})
    eval_steps: int | None = field(default=None, metadata={"help": "Evaluate every N steps (and at the end)."})
    eval_before_training: bool = field(default=True, metadata={"help": "Evaluate once at step 0."})
    checkpointing_steps: int | None = field(default=None, metadata={"help": "Save a resumable checkpoint every N steps."})
    checkpoints_total_limit: int | None = field(default=None, metadata={"help": "Keep only the newest N checkpoints."})
    resume_from_checkpoint: str | None = field(default=None, metadata={
        "help": "A checkpoint folder (output_dir/checkpoints/step_N) or 'latest' (the newest intact one: damaged "
                "or incomplete checkpoints are skipped, with a message). A different learning rate than the "
                "checkpoint's rescales its schedule to the new peak."})
    allow_inexact_resume: bool = field(default=False, metadata={
        "help": "Resume even if the checkpoint lacks a process's random state (random_states_<rank>.pkl) or was "
                "saved by a different number of processes. The resumed run is then not bit-identical to an "
                "uninterrupted one: a warning is printed and results.json records it (inexact_resume)."})
    logging_steps: int = field(default=1, metadata={"help": "Log loss/lr/tokens-per-second every N steps."})
    with_tracking: bool = field(default=False, metadata={"help": "Log through Accelerate's trackers too."})
    report_to: str = field(default="tensorboard", metadata={"help": "Accelerate tracker(s): tensorboard, wandb, all ..."})
    disable_progress_bar: bool = False
    push_to_hub: bool = field(default=False, metadata={"help": "Push the final model with a model card."})
    hub_model_id: str | None = field(default=None, metadata={"help": "owner/name for --push_to_hub."})
    hub_private: bool = False
    hub_endpoint: str | None = field(default=None, metadata={"help": "Hub endpoint (default: huggingface_hub's)."})
    stop_after_steps: int | None = field(default=None, metadata={
        "help": "Stop (as if interrupted) after this many steps in this process, without the final save. For "
                "testing resumption; the schedule still follows max_train_steps."})


def _yaml_values(path: str) -> dict[str, Any]:
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - pyyaml is a dependency of the train extra
        raise RecipeConfigError("reading a YAML config needs PyYAML: pip install pyyaml") from exc
    p = Path(path)
    if not p.is_file():
        raise RecipeConfigError(f"config file not found: {p.resolve()}. Pass --config with a YAML file "
                                f"(see recipes/configs/).")
    try:
        values = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise RecipeConfigError(f"{p} is not valid YAML: {exc}") from exc
    if not isinstance(values, dict):
        raise RecipeConfigError(f"{p} must hold a mapping of argument: value, got {type(values).__name__}.")
    return values


def parse_recipe_args(types: Sequence[type], argv: Sequence[str] | None = None) -> tuple[Any, ...]:
    """Parse ``argv`` (default ``sys.argv[1:]``) into one instance of each dataclass in ``types``.

    ``--config FILE.yaml`` (anywhere in ``argv``) sets values; other ``--name value`` flags override them. Unknown
    keys in the file or on the command line raise :class:`RecipeConfigError` naming them; so does a bad value.
    """
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    config = None
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise RecipeConfigError("--config needs a YAML file path.")
        config = argv[i + 1]
        del argv[i:i + 2]
    optional = optional_fields(types)
    argv, unset = _take_unset(argv, optional)
    parser = HfArgumentParser(list(types), epilog=UNSET_HELP)
    for action in parser._actions:
        if action.dest in optional:
            action.help = f"{action.help or ''} ('none' unsets it.)".strip()
    known = {f.name for t in types for f in dataclasses.fields(t)}
    if config is not None:
        values = _yaml_values(config)
        unknown = sorted(set(values) - known)
        if unknown:
            raise RecipeConfigError(f"{config}: unknown key(s) {', '.join(unknown)}. Valid keys: {', '.join(sorted(known))}.")
        parser.set_defaults(**values)
    try:
        parsed = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except SystemExit as exc:  # argparse already printed the reason
        if exc.code in (0, None):  # --help
            raise
        raise RecipeConfigError("invalid command-line arguments (see the message above); "
                                "run with --help for the list.") from None
    *objs, remaining = parsed
    if remaining:
        raise RecipeConfigError(f"unknown argument(s) {' '.join(remaining)}; run with --help for the list.")
    for obj in objs:
        for name in unset:
            if hasattr(obj, name):
                setattr(obj, name, None)
        _validate(obj)
    return tuple(objs)


def optional_fields(types: Sequence[type]) -> set[str]:
    """Names of the fields of ``types`` that may be ``None`` (``int | None`` ...)."""
    names = set()
    for t in types:
        hints = typing.get_type_hints(t)
        for f in dataclasses.fields(t):
            if type(None) in typing.get_args(hints.get(f.name)):
                names.add(f.name)
    return names


def _take_unset(argv: list[str], optional: set[str]) -> tuple[list[str], set[str]]:
    """Remove ``--name none`` / ``--name=null`` / ``--name ""`` for optional fields from ``argv``; return the rest
    and the names to unset. (``HfArgumentParser`` would parse ``none`` with ``int()``.)"""
    rest, unset, i = [], set(), 0
    while i < len(argv):
        word = argv[i]
        if word.startswith("--"):
            name, eq, value = word[2:].partition("=")
            name = name.replace("-", "_")  # HfArgumentParser also accepts --eval-steps
            if name in optional:
                if eq and value.strip().lower() in UNSET:
                    unset.add(name)
                    i += 1
                    continue
                if not eq and i + 1 < len(argv) and argv[i + 1].strip().lower() in UNSET:
                    unset.add(name)
                    i += 2
                    continue
                unset.discard(name)  # a later value wins
        rest.append(word)
        i += 1
    return rest, unset


def _validate(obj: Any) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise RecipeConfigError(f"{f.name} must be a finite number, got {value}.")

    def positive(name: str, allow_none: bool = False) -> None:
        value = getattr(obj, name)
        if value is None and allow_none:
            return
        if not isinstance(value, int) or value < 1:
            raise RecipeConfigError(f"{name} must be a positive integer, got {value!r}.")

    if isinstance(obj, TrainArguments):
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                     "num_train_epochs", "logging_steps"):
            positive(name)
        for name in ("max_train_steps", "eval_steps", "checkpointing_steps", "checkpoints_total_limit", "stop_after_steps"):
            positive(name, allow_none=True)
        if max(obj.learning_rate, obj.attnswap_learning_rate or 0.0) > FLOAT32_MAX:
            raise RecipeConfigError(f"learning_rate and attnswap_learning_rate must be below {FLOAT32_MAX:g}, float32's "
                                    f"largest number; got {obj.learning_rate}, {obj.attnswap_learning_rate}.")
        if obj.learning_rate <= 0 or (obj.attnswap_learning_rate is not None and obj.attnswap_learning_rate < 0):
            raise RecipeConfigError(f"learning rates must be > 0 (attnswap_learning_rate may be 0 to freeze the "
                                    f"mechanism's parameters); got {obj.learning_rate}, {obj.attnswap_learning_rate}.")
        if obj.lr_scheduler_type not in SCHEDULERS:
            raise RecipeConfigError(f"lr_scheduler_type must be one of {', '.join(SCHEDULERS)}; got {obj.lr_scheduler_type!r}.")
        if obj.mixed_precision is not None and obj.mixed_precision not in MIXED_PRECISION:
            raise RecipeConfigError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}; got {obj.mixed_precision!r}.")
        learning_rate_pairs(obj.learning_rate_patterns)
        if obj.num_warmup_steps < 0 or obj.weight_decay < 0 or obj.max_grad_norm < 0 or obj.max_bad_steps < 0:
            raise RecipeConfigError("num_warmup_steps, weight_decay, max_grad_norm and max_bad_steps must be >= 0; got "
                                    f"{obj.num_warmup_steps}, {obj.weight_decay}, {obj.max_grad_norm}, "
                                    f"{obj.max_bad_steps}.")
        if not (0 <= obj.adam_beta1 < 1 and 0 <= obj.adam_beta2 < 1) or obj.adam_epsilon < 0:
            raise RecipeConfigError(f"adam_beta1 and adam_beta2 must be in [0, 1) and adam_epsilon >= 0; got "
                                    f"{obj.adam_beta1}, {obj.adam_beta2}, {obj.adam_epsilon}.")
        if obj.push_to_hub and not obj.hub_model_id:
            raise RecipeConfigError("--push_to_hub needs --hub_model_id owner/name.")
    elif isinstance(obj, DataArguments):
        positive("block_size")
        if obj.packing not in PACKING:
            raise RecipeConfigError(f"packing must be one of {', '.join(PACKING)}; got {obj.packing!r}.")
        positive("max_train_samples", allow_none=True)
        positive("max_eval_samples", allow_none=True)
        if not 0 <= obj.validation_split_percentage < 100:
            raise RecipeConfigError(f"validation_split_percentage must be in [0, 100); got {obj.validation_split_percentage}.")
    elif isinstance(obj, ModelArguments):
        if obj.model_name_or_path is None and obj.model_type is None and obj.config_name is None:
            raise RecipeConfigError("say what to train: model_name_or_path (pretrained), or model_type / config_name "
                                    "(from scratch, with config_overrides).")
        if obj.torch_dtype not in ("float32", "bfloat16", "float16"):
            raise RecipeConfigError(f"torch_dtype must be float32, bfloat16 or float16; got {obj.torch_dtype!r}.")
    elif isinstance(obj, ConversionArguments):
        if not isinstance(obj.max_transfer_steps, int) or obj.max_transfer_steps < 0:
            raise RecipeConfigError(f"max_transfer_steps must be an integer >= 0, got {obj.max_transfer_steps!r}.")
        if obj.transfer_learning_rate <= 0 or obj.transfer_warmup_steps < 0:
            raise RecipeConfigError("transfer_learning_rate must be > 0 and transfer_warmup_steps >= 0; got "
                                    f"{obj.transfer_learning_rate}, {obj.transfer_warmup_steps}.")
        if obj.transfer_loss not in ("mse", "xent"):
            raise RecipeConfigError(f"transfer_loss must be mse or xent; got {obj.transfer_loss!r}.")
        if obj.distill_lm_weight < 0:
            raise RecipeConfigError(f"distill_lm_weight must be >= 0; got {obj.distill_lm_weight}.")
        if obj.distill_lm_weight != 1.0 and obj.distill_kl_weight == 0:
            raise RecipeConfigError("distill_lm_weight weighs the next-token loss against the KL; set distill_kl_weight "
                                    "> 0 too, or drop distill_lm_weight.")
        if obj.distill_kl_weight < 0 or obj.distill_temperature <= 0:
            raise RecipeConfigError("distill_kl_weight must be >= 0 and distill_temperature > 0; got "
                                    f"{obj.distill_kl_weight}, {obj.distill_temperature}.")
        if obj.finetune_trainable is not None and not pattern_list(obj.finetune_trainable):
            raise RecipeConfigError("finetune_trainable names no pattern; give comma-separated regular expressions "
                                    "over parameter names, or drop it to train every parameter.")
        if obj.transfer_trainable is not None and not pattern_list(obj.transfer_trainable):
            raise RecipeConfigError("transfer_trainable names no pattern; give comma-separated regular expressions "
                                    "over parameter names, or drop it for the default (the query/key projections).")
        if obj.max_transfer_steps == 0 and obj.skip_finetune:
            raise RecipeConfigError("max_transfer_steps 0 with skip_finetune leaves nothing to do.")
    elif isinstance(obj, LoraArguments):
        if obj.lora:
            positive("lora_r")
            if not 0 <= obj.lora_dropout < 1:
                raise RecipeConfigError(f"lora_dropout must be in [0, 1); got {obj.lora_dropout}.")
        if obj.lora_modules_to_save is not None:
            if not obj.lora:
                raise RecipeConfigError("lora_modules_to_save chooses what trains beside LoRA's adapters; set lora true "
                                        "too, or drop it.")
            if not comma_list(obj.lora_modules_to_save):
                raise RecipeConfigError("lora_modules_to_save names no module; give comma-separated module names, or "
                                        "drop it.")
