"""recipes/finetune_translation.py and hf_attnswap/data/sft.py, on a tiny GPT-2 with the real GPT-2 tokenizer and
tiny German-English data written here."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_attnswap.data.assets import gpt2_tokenizer_path, is_prepared
from hf_attnswap.data.sft import (IGNORE_INDEX, SFTDataError, build_translation_examples, load_translation_pairs,
                                  pad_collate)
from hf_attnswap.evaluation.translation import evaluate_translation, resolve_template
from hf_attnswap.training.arguments import (DataArguments, LoraArguments, ModelArguments, TrainArguments,
                                            TranslationArguments, parse_recipe_args)
from hf_attnswap.training.loop import run_recipe

pytestmark = pytest.mark.skipif(not is_prepared("gpt2-tokenizer"),
                                reason="needs `attnswap prepare-assets` (GPT-2 tokenizer)")

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "finetune_translation.py"
TEMPLATE = resolve_template("de", "en")
PAIRS = [("Das Haus ist groß.", "The house is big."), ("Der Hund ist klein.", "The dog is small."),
         ("Ich bin hier.", "I am here."), ("Wir sind heute Abend alle zusammen da.", "We are all there tonight.")]
TINY = ["--model_type", "gpt2", "--tokenizer_name", "gpt2-tokenizer",
        "--config_overrides", "n_layer=2,n_head=2,n_embd=32,n_positions=128,resid_pdrop=0,embd_pdrop=0,attn_pdrop=0"]


def _load_recipe():
    spec = importlib.util.spec_from_file_location("finetune_translation", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


recipe = _load_recipe()


def _run(argv: list[str]) -> int:
    AcceleratorState._reset_state(True)
    return run_recipe(lambda: recipe.main(argv))


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(gpt2_tokenizer_path())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A folder in load_parallel's format: train.jsonl (the 4 pairs x 4) and validation.jsonl (the 4 pairs)."""
    root = tmp_path_factory.mktemp("mt_data")
    _write_jsonl(root / "train.jsonl", [{"de": d, "en": e} for _ in range(4) for d, e in PAIRS])
    _write_jsonl(root / "validation.jsonl", [{"de": d, "en": e} for d, e in PAIRS])
    return root


def _argv(data: Path, out: Path, *extra: str) -> list[str]:
    return [*TINY, "--attn", "dagpam:lambda_init=0.1", "--dataset_name", str(data), "--block_size", "64",
            "--per_device_train_batch_size", "16", "--max_train_steps", "3", "--eval_steps", "1",
            "--eval_max_new_tokens", "8", "--learning_rate", "3e-2", "--lr_scheduler_type", "constant",
            "--disable_progress_bar", "--output_dir", str(out), *extra]


@pytest.fixture(scope="module")
def run3(data, tmp_path_factory) -> Path:
    """One 3-step run from scratch, evaluated at every step."""
    out = tmp_path_factory.mktemp("mt_runs") / "run"
    assert _run(_argv(data, out)) == 0
    return out


# ------------------------------------------------------------------------------------------------ sft.py


def test_labels_are_ignored_exactly_on_prompt_and_padding(tok):
    examples = build_translation_examples(PAIRS, tok, TEMPLATE, block_size=64)
    # pad with EOS, as the recipe does for GPT-2: padding must be found by position, not by token id
    batch = pad_collate([examples[i] for i in range(len(examples))], pad_token_id=tok.eos_token_id)
    B, L = batch["input_ids"].shape
    assert (B, L) == (4, max(len(r["input_ids"]) for r in examples))
    assert batch["labels"].shape == batch["attention_mask"].shape == (B, L)
    for i, (src, tgt) in enumerate(PAIRS):
        prompt_len = len(tok(TEMPLATE.replace("{source}", src))["input_ids"])
        n = len(examples[i]["input_ids"])
        ignored = batch["labels"][i] == IGNORE_INDEX
        expected = torch.tensor([k < prompt_len or k >= n for k in range(L)])
        assert torch.equal(ignored, expected), i
        assert torch.equal(batch["attention_mask"][i], torch.tensor([int(k < n) for k in range(L)]))
        target = batch["labels"][i, prompt_len:n]
        assert torch.equal(target, batch["input_ids"][i, prompt_len:n])
        assert int(target[-1]) == tok.eos_token_id
        assert tok.decode(target) == " " + tgt + tok.eos_token  # the answer starts after "English:", ends with EOS
        assert tok.decode(batch["input_ids"][i, :prompt_len]) == TEMPLATE.replace("{source}", src)
    assert examples.target_tokens == int((batch["labels"] != IGNORE_INDEX).sum())


def test_too_long_examples_are_dropped_and_counted_and_nothing_left_is_an_error(tok):
    lengths = [len(r["input_ids"]) for r in build_translation_examples(PAIRS, tok, TEMPLATE, 64).rows]
    cut = max(lengths) - 1  # the long fourth pair does not fit
    examples = build_translation_examples([*PAIRS, ("  ", "x")], tok, TEMPLATE, block_size=cut)
    first3 = build_translation_examples(PAIRS[:3], tok, TEMPLATE, 64)
    assert [r["input_ids"] for r in examples.rows] == [r["input_ids"] for r in first3.rows]
    assert examples.dropped_too_long == 1 and examples.dropped_empty == 1 and examples.pairs == 5
    assert "1 longer than block_size dropped" in examples.summary() and examples.longest <= cut
    with pytest.raises(SFTDataError, match="empty dataset after filtering"):
        build_translation_examples(PAIRS, tok, TEMPLATE, block_size=min(lengths) - 1)


def test_train_file_without_validation_file_holds_out_the_last_pairs(data):
    pairs = load_translation_pairs(train_file=str(data / "train.jsonl"), validation_split_percentage=25,
                                   max_train_samples=5)
    assert len(pairs.train) == 5 and pairs.validation == PAIRS  # the last 25 % of 16 pairs


# ---------------------------------------------------------------------------------------------- the recipe


def test_training_loss_is_the_target_only_cross_entropy(run3, data, tmp_path):
    """One step over all 16 examples in 4 right-padded micro-batches (5+5+5+1): the logged loss is the mean
    cross-entropy of the target tokens (reference + EOS), each example scored alone without padding."""
    base = run3 / "best"
    out = tmp_path / "loss"
    argv = _argv(data, out, "--max_train_steps", "1", "--per_device_train_batch_size", "5",
                 "--gradient_accumulation_steps", "4", "--eval_before_training", "false")
    i = argv.index("--model_type")
    argv[i:i + 2] = ["--model_name_or_path", str(base)]
    assert _run(argv) == 0
    logged = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    loss = next(r["loss"] for r in logged if "loss" in r)

    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for src, tgt in [p for _ in range(4) for p in PAIRS]:
            prompt = tok(TEMPLATE.replace("{source}", src))["input_ids"]
            target = tok(" " + tgt)["input_ids"] + [tok.eos_token_id]
            logits = model(torch.tensor([prompt + target])).logits[0]
            total += float(torch.nn.functional.cross_entropy(logits[len(prompt) - 1:-1], torch.tensor(target),
                                                            reduction="sum"))
            count += len(target)
    assert loss == pytest.approx(total / count, rel=1e-5)


def test_three_steps_write_best_results_and_a_reloadable_dagpam_model(run3, data):
    results = json.loads((run3 / "results.json").read_text())
    evals = results["evaluations"]
    assert [e["step"] for e in evals] == [0, 1, 2, 3] and results["steps"] == 3 and results["metric"] == "bleu"
    assert all(isinstance(e["eval/bleu"], float) and isinstance(e["eval/chrf"], float) for e in evals)
    top = max(e["eval/bleu"] for e in evals)
    best_step = next(e["step"] for e in evals if e["eval/bleu"] == top)  # the first step that reached it
    assert results["best"] == {"metric": "bleu", "value": top, "step": best_step} and results["best_step"] == best_step
    assert results["final_eval"] == evals[-1]["eval/bleu"] and results["template"] == TEMPLATE
    assert results["bleu_signature"].startswith("nrefs:1")
    best = json.loads((run3 / "best" / "best.json").read_text())
    assert best["step"] == best_step and best["bleu"] == top

    model = AutoModelForCausalLM.from_pretrained(run3 / "best")
    assert model.config.attnswap["mechanism"] == "dagpam" and model.config.attnswap["lambda_init"] == 0.1
    assert any(n.endswith("lambda_param") for n, _ in model.named_parameters())
    tok = AutoTokenizer.from_pretrained(run3 / "best")
    again = evaluate_translation(model, tok, PAIRS, max_new_tokens=8, progress=False, metric_backend="sacrebleu")
    assert again.bleu == pytest.approx(top) and again.chrf == pytest.approx(best["chrf"])  # best/ = that step's model
    final = AutoModelForCausalLM.from_pretrained(run3)
    assert final.config.attnswap["mechanism"] == "dagpam"
    if best_step != 3:
        a, b = load_file(run3 / "model.safetensors"), load_file(run3 / "best" / "model.safetensors")
        assert any(not torch.equal(a[k], b[k]) for k in a), "best/ holds an earlier model than the final one"


@pytest.mark.parametrize("case", ["language", "filtered", "template"])
def test_bad_input_fails_before_compute_with_a_clear_message(data, tmp_path, capsys, case):
    extra, expect = {
        "language": (["--source_lang", "fr"], "has no 'fr' key"),
        "filtered": (["--block_size", "8"], "empty dataset after filtering"),
        "template": (["--prompt_template", "Translate this:"], "no '{source}' placeholder"),
    }[case]
    assert _run(_argv(data, tmp_path / "bad", *extra)) == 2
    err = capsys.readouterr().err
    assert "\nerror: " in "\n" + err and expect in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists(), "failed before anything was written"


@pytest.mark.parametrize("name", ["smollm2_translation_softmax", "smollm2_translation_dagpam"])
def test_ready_configs_parse(name):
    model, data, mt, train, _ = parse_recipe_args(
        [ModelArguments, DataArguments, TranslationArguments, TrainArguments, LoraArguments],
        ["--config", str(ROOT / "recipes" / "configs" / f"{name}.yaml")])
    assert model.model_name_or_path == "smollm2" and data.dataset_name == "de-en-ding"
    assert (mt.source_lang, mt.target_lang) == ("de", "en") and train.output_dir.endswith(name.split("_")[-1])


def test_lora_saves_a_merged_best_model_and_keeps_training_the_adapters(data, tmp_path):
    out = tmp_path / "lora"
    assert _run(_argv(data, out, "--max_train_steps", "2", "--lora", "--lora_r", "4", "--lora_target_modules",
                      "c_attn")) == 0
    for folder in (out / "best", out):
        assert (folder / "adapter" / "adapter_model.safetensors").is_file()
        merged = AutoModelForCausalLM.from_pretrained(folder)
        assert merged.config.attnswap["mechanism"] == "dagpam"
        assert not any("lora" in n for n, _ in merged.named_parameters())
    step = json.loads((out / "results.json").read_text())["best"]["step"]
    adapters = [load_file(f / "adapter" / "adapter_model.safetensors") for f in (out / "best", out)]
    changed = any(not torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])
    assert changed == (step != 2), "the saved best is a copy: training went on with the unmerged adapters"


def test_push_to_hub_pushes_the_best_model(run3, data, tmp_path, monkeypatch):
    import huggingface_hub
    from safetensors.torch import load

    from _hub_server import LocalHub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the local stand-in is reachable
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    token = "hf_translationFAKEtoken"
    monkeypatch.setenv("HF_TOKEN", token)
    with LocalHub(token=token) as hub:
        out = tmp_path / "push"
        assert _run(_argv(data, out, "--push_to_hub", "--hub_model_id", "alice/tiny-mt",
                          "--hub_endpoint", hub.endpoint)) == 0
        files = hub.last_commit("alice/tiny-mt").files
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json"} <= set(files)
    pushed, best = load(files["model.safetensors"]), load_file(out / "best" / "model.safetensors")
    assert all(torch.equal(pushed[k], best[k]) for k in best)
    card, best_step = files["README.md"].decode(), json.loads((out / "results.json").read_text())["best"]["step"]
    assert "| bleu |" in card and "| chrf |" in card and f"step {best_step} |" in card
