"""Packed sequences (``--packing documents``): rows of several documents whose ``position_ids`` restart at 0, as
``DataCollatorWithFlattening`` makes them, with no padding and no ``attention_mask``.

Transformers builds a block-diagonal causal mask from such ``position_ids`` (only without a cache: the collate passes
``use_cache=False``). With hf_attnswap's mask function that mask is dense, so the fast paths see it as a dense mask:
each either runs it (and must then equal each document run alone) or, requested by name, refuses it saying why.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from transformers import AutoModelForCausalLM

import hf_attnswap
from hf_attnswap.conversion.distill import DistillObjective
from hf_attnswap.data.lm import IGNORE_INDEX, collate_blocks, document_positions, pack_texts
from hf_attnswap.errors import OptionError
from hf_attnswap.training.loop import run_recipe

from conftest import ARCHS, cell_options, cells, random_ids, tiny_config, word_documents, word_tokenizer

LENGTHS = (5, 7, 4)  # three documents in one row of 16 tokens


def _packed(seed: int = 0) -> tuple[list[torch.Tensor], dict]:
    docs = [random_ids(1, n, seed=seed + i) for i, n in enumerate(LENGTHS)]
    ids = torch.cat(docs, dim=1)
    positions = torch.cat([torch.arange(n) for n in LENGTHS])[None]
    return docs, {"input_ids": ids, "position_ids": positions, "use_cache": False}


def test_document_positions_restart_at_documents_and_blocks():
    # documents of 3, 6 and 4 tokens joined, cut into blocks of 4 (the last token is dropped: 13 -> 3 blocks)
    assert document_positions([3, 6, 4], 4, 12) == [[0, 1, 2, 0], [0, 1, 2, 3], [0, 0, 1, 2]]


def test_pack_texts_isolated_rows_and_their_collate():
    tok = word_tokenizer()
    docs = ["w1 w2 w3", "w4 w5 w6 w7 w8", "w9 w10"]
    plain = pack_texts(docs, tok, 4)
    packed = pack_texts(docs, tok, 4, isolate_documents=True)
    assert packed["input_ids"] == plain["input_ids"]  # the same blocks (EOS after each document)
    # w1 w2 w3 </s> | w4 w5 w6 w7 | w8 </s> w9 w10 (+ </s> dropped)
    assert packed["position_ids"] == [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 0, 1]]
    batch = collate_blocks([packed[i] for i in range(len(packed))])
    assert batch["use_cache"] is False and batch["position_ids"].tolist() == packed["position_ids"]
    assert (batch["labels"] == IGNORE_INDEX).tolist() == [[True, False, False, False], [True, False, False, False],
                                                          [True, False, True, False]]
    assert set(collate_blocks([plain[0]])) == {"input_ids", "labels"}  # concat packing: as before


def _isolation(model: torch.nn.Module, seed: int = 0) -> None:
    docs, packed = _packed(seed)
    with torch.no_grad():
        got = model(**packed).logits
        want = torch.cat([model(d).logits for d in docs], dim=1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_native_attention_is_isolated_too(load, arch):
    """The premise: Transformers' own sdpa masks the packed row block-diagonally (without use_cache=False it would
    not: the mask is derived from position_ids only when there is no cache)."""
    model = load(arch, "sdpa")
    _isolation(model)
    docs, packed = _packed()
    with torch.no_grad():
        mixed = model(packed["input_ids"], position_ids=packed["position_ids"]).logits
    assert not torch.allclose(mixed, torch.cat([model(d).logits for d in docs], dim=1), atol=1e-3)


@cells
@pytest.mark.parametrize("arch", ARCHS)
def test_packed_documents_are_isolated(load, arch, mech, backend):
    """Every mechanism and backend of the registry: a packed row equals its documents run one by one (or the fast
    path, requested by name, refuses the block-diagonal mask with a reason)."""
    model = load(arch, mech, **cell_options(mech, backend))
    try:
        _isolation(model)
    except OptionError as err:
        assert backend not in ("reference", "auto") and "cannot run this call" in str(err), err


@pytest.mark.parametrize("mech", ["softmax", "polynomial", "dagpam"])
def test_packed_documents_are_isolated_on_auto(load, mech):
    """``backend='auto'`` always runs the packed row (picking a path that takes the dense mask)."""
    _isolation(load("llama", mech, **cell_options(mech, "auto")))


def test_packed_training_gradients_equal_the_documents_alone(load):
    """A training step on a packed row (labels from :func:`collate_blocks`) has the gradient of the documents' summed
    losses, each alone (daGPAM with λ > 0, its parameters included)."""
    model = load("llama", "dagpam", **cell_options("dagpam", "reference")).train()
    docs, packed = _packed()
    batch = collate_blocks([{"input_ids": packed["input_ids"][0].tolist(),
                             "position_ids": packed["position_ids"][0].tolist()}])
    n_targets = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    (model(**batch).loss * n_targets).backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    for d in docs:
        (model(d, labels=d).loss * (d.shape[1] - 1)).backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(got[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_distillation_teacher_sees_the_packing(load):
    """Stage 2's teacher runs with the student's ``position_ids``: a student equal to its teacher has KL 0 on a
    packed row (a teacher that mixed the documents would not)."""
    student = load("llama", "sdpa")
    objective = DistillObjective(student, copy.deepcopy(student), kl_weight=1.0)
    docs, packed = _packed()
    batch = collate_blocks([{"input_ids": packed["input_ids"][0].tolist(),
                             "position_ids": packed["position_ids"][0].tolist()}])
    with torch.no_grad():
        out = objective(**batch)
    assert float(out.kl) == pytest.approx(0.0, abs=1e-6)


# --- the recipe option ------------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def _recipe():
    spec = importlib.util.spec_from_file_location("continue_pretrain", ROOT / "recipes" / "continue_pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def recipe_assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("packing_assets")
    word_tokenizer().save_pretrained(root / "model")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_config("llama"), attn_implementation="sdpa").save_pretrained(root / "model")
    g = torch.Generator().manual_seed(0)
    docs = word_documents(30, (3, 12), g)
    (root / "train.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return root


def _argv(assets: Path, out: Path, *extra: str) -> list[str]:
    return ["--model_name_or_path", str(assets / "model"), "--attn", "dagpam:lambda_init=0.1",
            "--train_file", str(assets / "train.jsonl"), "--validation_split_percentage", "10", "--block_size", "16",
            "--per_device_train_batch_size", "2", "--max_train_steps", "2", "--disable_progress_bar",
            "--output_dir", str(out), *extra]


def test_recipe_trains_on_isolated_documents(recipe_assets, tmp_path, monkeypatch):
    """``--packing documents``: every batch the model sees holds restarting ``position_ids`` and ``use_cache=False``."""
    recipe = _recipe()
    seen = []
    collate = recipe.collate
    monkeypatch.setattr(recipe, "collate", lambda rows: seen.append(collate(rows)) or seen[-1])
    AcceleratorState._reset_state(True)
    assert run_recipe(lambda: recipe.main(_argv(recipe_assets, tmp_path / "run", "--packing", "documents"))) == 0
    assert seen and all(b["use_cache"] is False and (b["position_ids"] == 0).sum() > b["input_ids"].shape[0]
                        for b in seen)
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "run").config.attnswap["mechanism"] == "dagpam"


def test_recipe_rejects_an_unknown_packing(recipe_assets, tmp_path, capsys):
    recipe = _recipe()
    AcceleratorState._reset_state(True)
    assert run_recipe(lambda: recipe.main(_argv(recipe_assets, tmp_path / "bad", "--packing", "flatten"))) == 2
    assert "packing must be one of concat, documents" in capsys.readouterr().err


def test_packed_documents_are_isolated_on_triton():
    """The Triton kernel (head size 16, interpreted on CPU) takes the block-diagonal mask as a dense one."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama", hidden_size=64, head_dim=16),
                                             attn_implementation="sdpa").eval()
    _isolation(hf_attnswap.swap(model, "polynomial", **cell_options("polynomial", "triton")))
