"""Tiny random GPT-2 and Llama (GQA) models, built inside the tests."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # run the Triton kernels on CPU tensors (must be set before they are defined)
    os.environ.setdefault("TRITON_INTERPRET", "1")
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

import hf_attnswap  # noqa: F401  (registers the mechanisms)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)  # tiny models: one thread is faster, and immune to a busy machine

VOCAB = 64
PAD = 0
MECHANISMS = ["softmax", "polynomial", "dagpam"]
ARCHS = ["gpt2", "llama"]
# Options that make every mechanism differ from plain softmax, so the tests exercise the new code.
ACTIVE_OPTIONS = {"softmax": {"temperature": 0.7}, "polynomial": {"degree": 3}, "dagpam": {"lambda_init": 0.3}}


def tiny_config(arch: str, **overrides):
    if arch == "gpt2":
        cfg = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                         bos_token_id=1, eos_token_id=2, pad_token_id=PAD,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.2)
    elif arch == "llama":
        cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                          bos_token_id=1, eos_token_id=2, pad_token_id=PAD, initializer_range=0.2)
    else:
        raise ValueError(arch)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


@pytest.fixture(scope="session")
def base_checkpoints(tmp_path_factory):
    """A saved random base model (plain sdpa checkpoint) per architecture. ``initializer_range=0.2`` makes
    attention peaked rather than near-uniform, so mechanisms differ measurably."""
    paths = {}
    for arch in ARCHS:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(tiny_config(arch), attn_implementation="sdpa")
        path = tmp_path_factory.mktemp(f"base_{arch}")
        model.save_pretrained(path)
        paths[arch] = path
    return paths


@pytest.fixture
def load(base_checkpoints):
    """``load(arch, attn, **options)``: the base checkpoint loaded with an attention implementation."""

    def _load(arch: str, attn: str = "sdpa", **options):
        kwargs = {"attnswap": options} if options else {}
        return AutoModelForCausalLM.from_pretrained(base_checkpoints[arch], attn_implementation=attn, **kwargs).eval()

    return _load


def random_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=g)


#: The vocabulary of :func:`word_tokenizer`: 4 special tokens, then w0 ... w59 (ids below VOCAB).
WORDS = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(60)]


def word_tokenizer():
    """A word-level fast tokenizer over :data:`WORDS`, with pad/bos/eos/unk, for tiny recipe and script tests."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
