"""The measurements a reproduction makes itself. The job bodies run in a subprocess (``reproduce.py --job``), one
thread each: claim 1's logit comparison on one seed, the probe of a trained model, the unswapped SmolLM2's
perplexity (claim 4), SmolLM2's perplexity on the two continued-pretraining corpora, and its translations of the
test pairs. (The n-gram references and the tokenizer are made in the main process: ``corpus.py``.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import recipe_config, scale_named
from .files import write_json


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


def job_probe(scale: str, model: str, out: str, texts: str) -> None:
    """probe_texts on the held-out documents of the from-scratch runs (the ``texts`` file, the recipe's validation
    file); keep the per-layer numbers the claims and the side-by-side diagnostics use."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hf_attnswap  # noqa: F401
    from hf_attnswap.data.text import load_texts
    from hf_attnswap.diagnostics import probe_texts

    sc = scale_named(scale)
    torch.set_num_threads(1)
    docs = [t for t in load_texts(Path(texts)) if t.strip()][: sc.probe_texts]
    m = AutoModelForCausalLM.from_pretrained(model).eval()
    tok = AutoTokenizer.from_pretrained(model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    torch.manual_seed(0)
    r = probe_texts(m, tok, docs, max_length=sc.probe_tokens, batch_size=4, top_n=(1, 4, 16), grad=True)
    d = r.to_dict()
    keep = ("entropy", "sink_strength", "max_weight", "frobenius_ratio", "negative_mass_share", "query_grad_norm",
            "row_sum", "abs_row_mass", "raw_collision_entropy")
    per_layer = {k: d["layer_mean_over_heads"][k] for k in keep if k in d["layer_mean_over_heads"]}
    per_layer["query_grad_norm"] = d["measures"]["query_grad_norm"]["mean"]
    for k in ("rank_collapse_residual", "token_cosine", "massive_activation"):
        per_layer[k] = d["measures"][k]["mean"]
    write_json(Path(out), {"attn_implementation": d["attn_implementation"], "weights_convention": d["weights_convention"],
                           "weights_convention_text": d["weights_convention_text"], "loss": d["loss"],
                           "texts": len(docs), "max_length": sc.probe_tokens, "tokens": d["tokens"],
                           "sink_head_share": d["sink_head_share"], "per_layer": per_layer})
    write_json(Path(out).with_name("probe_full.json"), d)


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _load_lm(model: str) -> tuple[Any, Any]:
    """(model, tokenizer): the unswapped SmolLM2 (``"smollm2"``, Transformers' sdpa) or a recipe's output folder
    (its config.json keeps the mechanism it was trained with), in eval mode on the job's device."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import hf_attnswap  # noqa: F401  (registers the mechanisms)
    from hf_attnswap.data.assets import smollm2_path

    torch.set_num_threads(1)
    path = smollm2_path() if model == "smollm2" else Path(model)
    kw = {"attn_implementation": "sdpa"} if model == "smollm2" else {}
    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kw).eval().to(_device())
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return m, tok


def mechanism_lambdas(model: Any) -> dict[str, Any] | None:
    """daGPAM's lambda per layer and head of a loaded model (mean, min, max over all heads); None without any."""
    vals = [[float(x) for x in p.detach().flatten()] for n, p in model.named_parameters() if n.endswith("lambda_param")]
    flat = [x for row in vals for x in row]
    if not flat:
        return None
    return {"per_layer": vals, "mean": sum(flat) / len(flat), "min": min(flat), "max": max(flat)}


def job_lm_ppl(scale: str, model: str, out: str, wiki: str | None) -> None:
    """Perplexity of SmolLM2 (the base, or a continued pretraining run's final model) as the recipe measures it
    (window = cpt_block, its default stride, batch 8): on the held-out wiki-text excerpts (the ``wiki`` file; skipped
    when None: the recipe itself scored them) and on the held-out news articles (the last 5 % of news-text, never
    trained on)."""
    from hf_attnswap.data.lm import load_lm_texts
    from hf_attnswap.data.text import load_texts
    from hf_attnswap.evaluation.perplexity import perplexity

    from .config import CPT_NEWS, CPT_NEWS_VALIDATION_PCT

    sc = scale_named(scale)
    m, tok = _load_lm(model)
    corpora: dict[str, list[str]] = {}
    if wiki is not None:
        corpora["wiki"] = [t for t in load_texts(Path(wiki)) if t.strip()][: sc.cpt_max_eval_samples]
    news = load_lm_texts(dataset_name=CPT_NEWS, validation_split_percentage=CPT_NEWS_VALIDATION_PCT).validation
    corpora["news"] = news[: sc.cpt_news_docs]
    result: dict[str, Any] = {"model": model, "attn": getattr(m.config, "_attn_implementation", None),
                              "lambdas": mechanism_lambdas(m), "corpora": {}}
    for name, docs in corpora.items():
        r = perplexity(m, tok, docs, max_length=sc.cpt_block, batch_size=8, progress=False)
        result["corpora"][name] = {**r.to_dict(), "documents": len(docs)}
    write_json(Path(out), result)


def job_mt_test(scale: str, model: str, out: str) -> None:
    """Translate the first ``mt_test_samples`` pairs of the fixed de-en-ding test split (greedy, the recipe's prompt)
    with SmolLM2 (the base, or a fine-tuning run's final model); BLEU and chrF with sacrebleu, and every hypothesis
    and reference (for the paired bootstrap of the report)."""
    from hf_attnswap.data.parallel import load_parallel
    from hf_attnswap.evaluation.translation import evaluate_translation

    from .config import MT_DATASET

    sc = scale_named(scale)
    m, tok = _load_lm(model)
    pairs = load_parallel(MT_DATASET, "test", src_lang="de", tgt_lang="en", limit=sc.mt_test_samples)
    r = evaluate_translation(m, tok, pairs, src_lang="de", tgt_lang="en", batch_size=16, num_beams=1,
                             max_new_tokens=sc.mt_max_new_tokens, progress=False, metric_backend="sacrebleu")
    write_json(Path(out), {"model": model, "lambdas": mechanism_lambdas(m), **r.to_dict(with_hypotheses=True),
                           "references": [p[1] for p in pairs], "sources": [p[0] for p in pairs]})


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


JOBS: dict[str, Callable[..., None]] = {"claim1": job_claim1, "probe": job_probe, "sdpa_ppl": job_sdpa_ppl,
                                        "lm_ppl": job_lm_ppl, "mt_test": job_mt_test}


def attention_scale_at_init(scale: Any, seeds: list[int], batch: int = 8) -> dict[str, Any]:
    """Each from-scratch mechanism's attention at initialisation, beside softmax's: the from-scratch GPT-2 (the
    scale's ``gpt2_overrides``) built with the same seed for every mechanism, one batch of (batch, gpt2_block)
    random tokens; per seed the root mean square of each attention block's output (after its output projection,
    mean over layers) and the norm of the loss gradient on the query/key columns of ``c_attn``. Returns {"seeds",
    "batch", "mechs": {label: {"attn_rms", "qk_grad", "attn_rms_ratio", "qk_grad_ratio"}}} with means over seeds
    and the ratios to softmax's (why a mechanism's run can sit at the bigram's perplexity: an attention that
    starts near zero adds little at first). Runs in the main process in about a second per mechanism."""
    import statistics

    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    from hf_attnswap.training.model import parse_single_attn

    from .config import MECHS

    config = GPT2Config()
    config.update_from_string(scale.gpt2_overrides)
    raw: dict[str, dict[str, list[float]]] = {}
    for label, (_, extra) in MECHS.items():
        spec = parse_single_attn(extra[extra.index("--attn") + 1])
        for seed in seeds:
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, attn_implementation=spec.name,
                                                     attnswap=dict(spec.options) or None)
            ids = torch.randint(0, config.vocab_size, (batch, scale.gpt2_block),
                                generator=torch.Generator().manual_seed(seed))
            rms: list[float] = []
            hooks = [block.attn.register_forward_hook(
                lambda _m, _i, out: rms.append(float(out[0].detach().pow(2).mean().sqrt())))
                for block in model.transformer.h]
            model(ids, labels=ids).loss.backward()
            for h in hooks:
                h.remove()
            qk = float(sum(b.attn.c_attn.weight.grad[:, : 2 * config.n_embd].pow(2).sum()
                           for b in model.transformer.h) ** 0.5)
            raw.setdefault(label, {"attn_rms": [], "qk_grad": []})
            raw[label]["attn_rms"].append(statistics.fmean(rms))
            raw[label]["qk_grad"].append(qk)
    mechs = {label: {k: statistics.fmean(v) for k, v in r.items()} for label, r in raw.items()}
    ref = mechs.get("softmax")
    for m in mechs.values():
        m["attn_rms_ratio"] = m["attn_rms"] / ref["attn_rms"] if ref and ref["attn_rms"] > 0 else None
        m["qk_grad_ratio"] = m["qk_grad"] / ref["qk_grad"] if ref and ref["qk_grad"] > 0 else None
    return {"seeds": list(seeds), "batch": batch, "mechs": mechs}
