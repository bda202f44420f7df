"""Tiny random GPT-2 and Llama (GQA) models, built inside the tests."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # run the Triton kernels on CPU tensors (must be set before they are defined)
    os.environ.setdefault("TRITON_INTERPRET", "1")
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

import hf_attnswap  # noqa: F401  (registers the mechanisms)
from hf_attnswap.kernels.mask import AttentionMask
from hf_attnswap.mechanisms import BUILTINS
from hf_attnswap.mechanisms.common import AttentionContext
from hf_attnswap.registry import exercised_options, get_mechanism

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)  # tiny models: one thread is faster, and immune to a busy machine

VOCAB = 64
PAD = 0
#: Every built-in mechanism: a new folder in hf_attnswap/mechanisms/ is covered with no test edits.
MECHANISMS = list(BUILTINS)
ARCHS = ["gpt2", "llama"]
#: Options that make every mechanism differ from plain softmax, so the tests exercise the new code: the first option
#: set its registration lists as ``exercise``.
ACTIVE_OPTIONS = {m: dict(get_mechanism(m).exercise[0]) for m in MECHANISMS}
#: The tiny models' attention: heads and head size (hidden 32 over 4 heads).
TINY_HEADS, TINY_HEAD_DIM = 4, 8


def cell_options(mech: str, backend: str) -> dict:
    """The options a (mechanism, backend) cell runs with: the first ``exercise`` set the backend takes, as a dict."""
    found = exercised_options(mech, backend)
    if not found:
        raise AssertionError(f"{mech}: none of its exercise option sets {get_mechanism(mech).exercise} takes "
                             f"backend={backend!r}; add one to its registration.")
    return {k: v for k, v in found[0].to_dict().items()}


def fast_path_refusal(mech: str, backend: str, *, dropout: float = 0.0, q_len: int = 8,
                      head_dim: int = TINY_HEAD_DIM) -> str | None:
    """Why ``backend`` cannot take a causal call of ``q_len`` tokens with ``dropout`` on a tiny model (None: it can;
    always None for the reference): the registered predicate's own answer."""
    spec = get_mechanism(mech)
    if backend == "reference" or backend not in spec.fast_supports:
        return None
    opts = exercised_options(mech, backend)[0]
    query = torch.zeros(1, TINY_HEADS, q_len, head_dim)
    ctx = AttentionContext(scaling=head_dim**-0.5, dropout=dropout, options=opts)
    return spec.fast_supports[backend](query, AttentionMask(None, q_len, q_len, 0), ctx)


def _cells() -> list:
    cells = []
    for mech in MECHANISMS:
        for backend in get_mechanism(mech).backends:
            if backend == "auto":
                continue
            reason = fast_path_refusal(mech, backend)
            marks = [pytest.mark.skip(reason=f"{mech}/{backend} cannot run on the tiny models: {reason}")] if reason else []
            cells.append(pytest.param(mech, backend, id=f"{mech}-{backend}", marks=marks))
    return cells


#: Every (mechanism, backend) of the registry, the reference included; a backend whose own predicate refuses the
#: tiny models (Triton needs a head size >= 16) is skipped with that reason.
CELLS = _cells()
cells = pytest.mark.parametrize("mech,backend", CELLS)


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


def word_documents(count: int, lengths: tuple[int, int], generator: torch.Generator) -> list[str]:
    """``count`` documents of random words of :func:`word_tokenizer` (w0 ... w59), each of a length drawn from
    ``[lengths[0], lengths[1])``; the lengths are drawn first, then each document's words, from ``generator``."""
    return [" ".join(f"w{int(i)}" for i in torch.randint(0, 60, (int(n),), generator=generator))
            for n in torch.randint(lengths[0], lengths[1], (count,), generator=generator)]


@torch.no_grad()
def decoded_logits(model, ids: torch.Tensor, prefix: int) -> torch.Tensor:
    """Logits (B, T, V) of ``ids`` (B, T) computed as generation does: a forward over the first ``prefix`` tokens
    with a cache, then one token per forward on that cache (compare with the full forward's)."""
    out = model(ids[:, :prefix], use_cache=True)
    steps, cache = [out.logits], out.past_key_values
    for t in range(prefix, ids.shape[1]):
        out = model(ids[:, t : t + 1], past_key_values=cache, use_cache=True)
        steps.append(out.logits)
        cache = out.past_key_values
    return torch.cat(steps, dim=1)


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
