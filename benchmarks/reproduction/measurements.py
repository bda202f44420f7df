"""The measurements a reproduction makes itself. The job bodies run in a subprocess (``reproduce.py --job``), one
thread each: claim 1's logit comparison on one seed, the probe of a trained model, the unswapped SmolLM2's
perplexity. :func:`unigram_reference` runs in the main process (cached)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import recipe_config, scale_named
from .files import read_json, write_json


def _tiny_config(arch: str, seed: int) -> Any:
    from transformers import GPT2Config, LlamaConfig

    if arch == "gpt2":
        return GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1,
                          eos_token_id=2, pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                          initializer_range=0.2)
    return LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                       initializer_range=0.2)


def job_claim1(scale: str, seed: int, out: str) -> None:
    """max |delta logit| of daGPAM(lambda=0) vs the base model: SmolLM2 on a seed's sample of news articles, and
    tiny random GPT-2 / Llama (seeded init, random tokens with one right-padded sequence)."""
    import random
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM

    import hf_attnswap
    from hf_attnswap.data.assets import news_text_path, smollm2_path
    from hf_attnswap.data.text import load_texts

    sc = scale_named(scale)
    torch.set_num_threads(1)

    def logits(path: Any, attn: str, ids: torch.Tensor, mask: torch.Tensor, **options: Any) -> torch.Tensor:
        kw = {"attnswap": options} if options else {}
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attn, dtype=torch.float32, **kw).eval()
        added = hf_attnswap.parameter_overhead(model)["added"]
        if attn == "dagpam":
            assert added > 0, "dagpam added no parameters"
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask).logits.float()
        del model
        return out

    def compare(path: Any, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
        real = mask.bool()
        base = {"sdpa": logits(path, "sdpa", ids, mask), "eager": logits(path, "eager", ids, mask)}
        swapped = {b: logits(path, "dagpam", ids, mask, lambda_init=0.0, backend=b) for b in ("fused", "reference")}

        def diff(a: torch.Tensor, b: torch.Tensor) -> float:
            return float((a - b).abs()[real].max())

        return {
            "pairs": {  # the claim's pairs: each backend against the base path it is built on
                "fused_vs_sdpa": diff(swapped["fused"], base["sdpa"]),
                "reference_vs_eager": diff(swapped["reference"], base["eager"]),
            },
            "context": {  # for scale: the cross pairs and Transformers' own eager vs sdpa
                "fused_vs_eager": diff(swapped["fused"], base["eager"]),
                "reference_vs_sdpa": diff(swapped["reference"], base["sdpa"]),
                "eager_vs_sdpa": diff(base["eager"], base["sdpa"]),
                "max_abs_logit": float(base["sdpa"].abs()[real].max()),
            },
            "tokens": int(real.sum()),
        }

    result: dict[str, Any] = {"seed": seed, "models": {}}
    # --- real SmolLM2 on real news articles: the seed picks the articles -----------------------------------------
    from transformers import AutoTokenizer

    texts = [t for t in load_texts(news_text_path()) if t.strip()]
    rng = random.Random(seed)
    chosen = rng.sample(range(len(texts)), sc.claim1_texts)
    tok = AutoTokenizer.from_pretrained(smollm2_path())
    enc = [tok(texts[i], add_special_tokens=False)["input_ids"][: sc.claim1_tokens] for i in chosen]
    width = max(len(e) for e in enc)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.full((len(enc), width), pad, dtype=torch.long)
    mask = torch.zeros(len(enc), width, dtype=torch.long)
    for i, e in enumerate(enc):
        ids[i, : len(e)] = torch.tensor(e)
        mask[i, : len(e)] = 1
    result["models"]["smollm2"] = {**compare(smollm2_path(), ids, mask), "articles": chosen}
    # --- tiny random GPT-2 and Llama (GQA 4/2 heads): the seed picks the init and the tokens --------------------
    for arch in ("gpt2", "llama"):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(_tiny_config(arch, seed), attn_implementation="sdpa")
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            g = torch.Generator().manual_seed(seed)
            ids = torch.randint(3, 64, (3, 48), generator=g)
            mask = torch.ones_like(ids)
            mask[1, 30:] = 0  # one right-padded sequence
            ids[1, 30:] = 0
            result["models"][f"tiny_{arch}"] = compare(tmp, ids, mask)
    write_json(Path(out), result)


def job_probe(scale: str, model: str, out: str) -> None:
    """probe_texts on held-out documents of the from-scratch split; keep the per-layer numbers claims 2/5 use."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hf_attnswap  # noqa: F401
    from hf_attnswap.data.lm import load_lm_texts
    from hf_attnswap.diagnostics import probe_texts

    sc = scale_named(scale)
    torch.set_num_threads(1)
    cfg = recipe_config("gpt2_scratch_softmax.yaml")
    texts = load_lm_texts(dataset_name=cfg["dataset_name"], validation_split_percentage=cfg["validation_split_percentage"])
    docs = texts.validation[: sc.probe_texts]
    m = AutoModelForCausalLM.from_pretrained(model).eval()
    tok = AutoTokenizer.from_pretrained(model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    torch.manual_seed(0)
    r = probe_texts(m, tok, docs, max_length=sc.probe_tokens, batch_size=4, top_n=(1, 4, 16), grad=True)
    d = r.to_dict()
    keep = ("entropy", "sink_strength", "max_weight", "frobenius_ratio", "negative_mass_share", "query_grad_norm")
    per_layer = {k: d["layer_mean_over_heads"][k] for k in keep if k in d["layer_mean_over_heads"]}
    per_layer["query_grad_norm"] = d["measures"]["query_grad_norm"]["mean"]
    for k in ("rank_collapse_residual", "token_cosine", "massive_activation"):
        per_layer[k] = d["measures"][k]["mean"]
    write_json(Path(out), {"attn_implementation": d["attn_implementation"], "weights_convention": d["weights_convention"],
                           "weights_convention_text": d["weights_convention_text"], "loss": d["loss"],
                           "texts": len(docs), "max_length": sc.probe_tokens, "tokens": d["tokens"],
                           "sink_head_share": d["sink_head_share"], "per_layer": per_layer})
    write_json(Path(out).with_name("probe_full.json"), d)


def job_sdpa_ppl(scale: str, out: str) -> None:
    """Validation perplexity of the unswapped SmolLM2 (sdpa) exactly as the recipe measures it (same documents,
    window = block_size, default stride, same batch size)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_attnswap.data.assets import smollm2_path
    from hf_attnswap.data.lm import load_lm_texts
    from hf_attnswap.evaluation.perplexity import perplexity

    sc = scale_named(scale)
    torch.set_num_threads(1)
    cfg = recipe_config("smollm2_polynomial.yaml")
    texts = load_lm_texts(dataset_name=cfg["dataset_name"], validation_split_percentage=cfg["validation_split_percentage"],
                          max_eval_samples=sc.smol_max_eval_samples)
    tok = AutoTokenizer.from_pretrained(smollm2_path())
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(smollm2_path(), attn_implementation="sdpa").eval()
    r = perplexity(model, tok, texts.validation, max_length=sc.smol_block, batch_size=8, progress=False)
    write_json(Path(out), {"attn": "sdpa", **r.to_dict(), "documents_validation": len(texts.validation)})


JOBS: dict[str, Callable[..., None]] = {"claim1": job_claim1, "probe": job_probe, "sdpa_ppl": job_sdpa_ppl}


def unigram_reference(runs: Path, smoothing: float = 1.0) -> dict[str, Any] | None:
    """Perplexity of a unigram model of the from-scratch training text (add-``smoothing``) on the validation
    documents, scoring every token but each document's first (as the recipe's perplexity does): what a model that
    learned only token frequencies would reach. Cached in ``runs/unigram.json``."""
    path = runs / "unigram.json"
    if path.is_file():
        return read_json(path)
    try:
        from collections import Counter

        from transformers import AutoTokenizer

        from hf_attnswap.data.assets import gpt2_tokenizer_path
        from hf_attnswap.data.lm import load_lm_texts

        cfg = recipe_config("gpt2_scratch_softmax.yaml")
        texts = load_lm_texts(dataset_name=cfg["dataset_name"],
                              validation_split_percentage=cfg["validation_split_percentage"])
        tok = AutoTokenizer.from_pretrained(gpt2_tokenizer_path())
    except Exception as exc:  # a reference only: never fail the report for it
        return {"error": str(exc)}
    counts: Counter = Counter()
    for doc in texts.train:
        counts.update(tok(doc, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
    total, vocab = sum(counts.values()), len(tok)
    nll, n = 0.0, 0
    for doc in texts.validation:
        for t in tok(doc, add_special_tokens=False)["input_ids"][1:]:
            nll -= math.log((counts[t] + smoothing) / (total + smoothing * vocab))
            n += 1
    result = {"ppl": math.exp(nll / n), "tokens": n, "train_tokens": total, "smoothing": smoothing}
    write_json(path, result)
    return result
