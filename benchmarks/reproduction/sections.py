"""The report's newer sections, as Markdown text from the analysis: whether the from-scratch runs learned (the
validity condition), the trained models' diagnostics side by side, and the SmolLM2 parts (continued pretraining and
translation fine-tuning, daGPAM from λ = 0 against softmax). Pure text; writes nothing."""

from __future__ import annotations

import statistics
from typing import Any

from .config import (BOOTSTRAP_P, BOOTSTRAP_SAMPLES, CPT_ARMS, MECH_TITLES, MECHS, MT_CONFIGS,
                     SIGNIFICANCE_T, VALIDITY_RATIO, Scale)
from .markdown import fmt_num, fmt_pm, table

ARM_TITLES = {"softmax": "softmax (the model's own attention)", "dagpam": "daGPAM from λ = 0 (λ trained)"}
NOT_A_BENCHMARK = ("**Not a standard benchmark:** the de-en-ding pairs are short example sentences of the Ding "
                   "German–English dictionary (Debian `trans-de-en`), not WMT/IWSLT; the BLEU here compares the two "
                   "arms with each other and says nothing about published MT figures.")


def _yn(flag: Any) -> str:
    return "yes" if flag else "no"


def validity_headline(v: dict[str, Any]) -> list[str]:
    """The headline row of the validity condition."""
    return [f"validity: softmax from scratch ≤ {VALIDITY_RATIO:g}× a bigram's perplexity", v["verdict"],
            f"bigram (add-k) ppl {fmt_num(v['bigram_ppl'])}, limit {fmt_num(v['limit'])}; runs that did not learn: "
            + (", ".join(v["not_learned"]) if v["not_learned"] else "none")]


def render_validity(v: dict[str, Any], ngram: dict[str, Any] | None, scratch: dict[str, Any] | None,
                    init_scale: dict[str, Any] | None = None) -> str:
    """Whether the from-scratch runs learned: the n-gram references and each run's final perplexity against the
    limit; for the mechanisms with a run that did not, why: their validation curve against the bigram and (from
    ``init_scale``, :func:`.measurements.attention_scale_at_init`) every mechanism's attention at initialisation."""
    L = ["### Did the from-scratch runs learn? (SCIENCE.md's validity condition)\n"]
    if ngram:
        bi = ngram["bigram"]
        L.append(f"A run counts only if it learned: its final validation perplexity must be at most "
                 f"{VALIDITY_RATIO:g}× that of a bigram model of the same training text and tokenizer. The bigram is "
                 f"counted on the {ngram['train_tokens']:,} training tokens and scored on the same "
                 f"{ngram['tokens']:,} validation tokens as the runs (every token but each document's first; no count "
                 f"crosses a document border); add-k smoothing with the k of {', '.join(bi['ppl_per_k'])} that "
                 f"gives the *lowest* validation perplexity (k = {bi['smoothing']:g}: the strongest bigram of the "
                 f"grid, so the condition is judged against the hardest of them). Bigram perplexity "
                 f"**{fmt_num(bi['ppl'])}** (limit **{fmt_num(v['limit'])}**); a unigram model (add-1) reaches "
                 f"{fmt_num(ngram['unigram']['ppl'])}.\n")
    rows = []
    for m in MECHS:
        runs = [r for r in ((scratch or {}).get(m) or {}).values() if r]
        if not runs:
            continue
        flags = {str(k): f for k, f in v["learned"].get(m, {}).items()}
        rows.append([MECH_TITLES[m], fmt_pm([r["final_ppl"] for r in runs]),
                     fmt_pm([r["final_ppl"] / v["bigram_ppl"] for r in runs]),
                     f"{sum(1 for r in runs if flags.get(str(r['seed'])) is True)}/{len(runs)}"])
    if rows:
        L.append(table(["mechanism", "final val ppl", "/ bigram ppl", f"learned (≤ {VALIDITY_RATIO:g}× bigram)"], rows))
    verdict = ("The softmax baseline learned in every seed, so the scale is valid" if v["softmax_learned"] else
               "**The softmax baseline did not learn in every seed: at this scale the claims 2, 3 and 5 cannot be "
               "tested** (the verdicts below are printed but do not count)")
    others = [x for x in v["not_learned"] if not x.startswith("softmax")]
    L.append(f"\n{verdict}." + (f" Runs that did not learn (their verdicts rest on models that learned little): "
                                f"{', '.join(others)}." if others else " Every other run learned too.") + "\n")
    failing = [m for m in MECHS if any(x.startswith(f"{m} seed ") for x in v["not_learned"])]
    if failing:
        L.append(_why_not_learned(failing, v, scratch, init_scale))
    return "\n".join(L)


def _sig(x: float | None) -> str:
    """A ratio with 3 significant digits (0.00237, 1.00, 57.9); — when missing."""
    return "—" if x is None else f"{x:.2f}" if 1 <= abs(x) < 10 else f"{x:.3g}"


def _why_not_learned(failing: list[str], v: dict[str, Any], scratch: dict[str, Any] | None,
                     init_scale: dict[str, Any] | None) -> str:
    """Why: each failing mechanism's validation perplexity through training (mean over its seeds) against the
    bigram's, and every mechanism's attention output and query/key gradient at initialisation beside softmax's."""
    L = ["**Why.** Validation perplexity during training (mean over seeds), against the bigram's "
         f"{fmt_num(v['bigram_ppl'])}:\n"]
    rows = []
    for m in failing:
        runs = [r for r in ((scratch or {}).get(m) or {}).values() if r and r.get("evals")]
        steps = sorted({s for r in runs for s, _ in r["evals"]})
        curve = []
        for step in steps:
            vals = [p for r in runs for s, p in r["evals"] if s == step and p is not None]
            if vals:
                curve.append(f"{step}: {fmt_num(statistics.fmean(vals))} ({fmt_num(statistics.fmean(vals) / v['bigram_ppl'])}×)")
        rows.append([MECH_TITLES[m], "; ".join(curve) or "no evaluations"])
    L.append(table(["mechanism", "step: val ppl (/ bigram)"], rows))
    mechs = (init_scale or {}).get("mechs") or {}
    if mechs:
        L.append(f"\nAt initialisation (the same model and seed for every mechanism, seeds "
                 f"{', '.join(map(str, init_scale['seeds']))}, one batch of {init_scale['batch']} random sequences; "
                 "mean over seeds): the root mean square of the attention blocks' output and the norm of the loss "
                 "gradient on the query/key projections, as ratios to softmax's. An attention whose output starts "
                 "far below softmax's adds little to the residual stream at first, and the model first learns what "
                 "needs no context (the bigram's level).\n")
        L.append(table(["mechanism", "attention output / softmax's", "query/key gradient / softmax's"],
                       [[MECH_TITLES.get(m, m), _sig(r.get("attn_rms_ratio")), _sig(r.get("qk_grad_ratio"))]
                        for m, r in mechs.items()]))
    return "\n".join(L) + "\n"


def render_diagnostics(d: dict[str, Any], scale: Scale) -> str:
    """Every probe measure of every from-scratch mechanism, side by side (mean ± std over seeds)."""
    mechs = [m for m in MECHS if any(d[t].get(m) for t in d)]
    L = ["## The trained models' diagnostics, side by side\n",
         f"`hf_attnswap.diagnostics.probe_texts` (what `attnswap probe` runs) on the {scale.probe_texts} held-out "
         f"excerpts (≤ {scale.probe_tokens} tokens each) after training; one number per seed (the mean over layers "
         "and heads, or for *deep* over the deep half of the hidden states), mean ± std over seeds. Entropy, sink "
         "strength and max weight are measured on |a| renormalised per row where the weights are signed or "
         "unnormalised (polynomial, daGPAM), which divides out each row's scale: a polynomial row of total mass "
         "0.01 and a softmax row of mass 1 with the same shape get the same entropy. The **scale-aware** companions "
         "are on the raw weights: the *raw collision entropy* −log Σ_j a_ij² (the Rényi-2 entropy for a probability "
         "row; for any row it is H₂(p_i) − 2 log m_i, the renormalised row's collision entropy plus the row's "
         "scale), the *|a| row mass* m_i = Σ_j |a_ij| that the renormalisation divides out, the raw row sum and "
         "‖A‖_F/√N (Σ_i exp(−H2raw_i) = ‖A‖_F², so the collision entropy is the per-row, log-scale form of the "
         "Frobenius measure). Softmax has m_i = 1, so for it the raw and renormalised collision entropies are one.\n"]
    rows = [[title.replace("|", "\\|")] + [fmt_pm(d[title].get(m, [])) for m in mechs] for title in d]
    L.append(table(["measure"] + [MECH_TITLES[m] for m in mechs], rows) + "\n")
    return "\n".join(L)


def cpt_headline(c: dict[str, Any]) -> list[str]:
    """The headline row of continued pretraining."""
    if c["verdict"] == "not run":
        return ["SmolLM2 continued pretraining: daGPAM (λ from 0) vs softmax", "not run", ""]
    per = "; ".join(f"{corpus} ppl daGPAM {fmt_pm(v['ppl']['dagpam'])} vs softmax {fmt_pm(v['ppl']['softmax'])} "
                    f"(base {fmt_num(c['base'].get(corpus))}; Welch t on log ppl {fmt_num(v['t'])})"
                    for corpus, v in c["corpora"].items())
    return ["SmolLM2 continued pretraining: daGPAM (λ from 0) vs softmax", c["verdict"], per]


def render_cpt(c: dict[str, Any], scale: Scale, runs: dict[str, Any] | None) -> str:
    """The continued pretraining section."""
    s = scale
    L = ["## Continued pretraining of SmolLM2: daGPAM from λ = 0 against softmax\n",
         f"The real SmolLM2-135M (dequantised from Q4_1), `recipes/continue_pretrain.py` with "
         f"`recipes/configs/smollm2_dagpam.yaml` (lr 2e-5 cosine, {s.cpt_warmup} warmup steps; daGPAM's λ and W⁻ at "
         f"lr {s.cpt_attnswap_lr:g}) on the wiki-text training articles: **{s.cpt_steps} steps of {s.cpt_batch} × "
         f"{s.cpt_block} tokens** ({s.cpt_steps * s.cpt_batch * s.cpt_block:,} tokens) for each arm and seed. The "
         f"arms differ only in `--attn`: `{CPT_ARMS['dagpam']}` (at λ = 0 the base model exactly, claim 1) or "
         f"`{CPT_ARMS['softmax']}`; the seed sets the data order, the same for both arms. Held-out perplexity "
         f"(window {s.cpt_block}, stride {s.cpt_block // 2}) on two corpora: the held-out wiki-text articles (the "
         f"recipe's own final evaluation; each cut to its first {s.excerpt_chars:,} characters) and the "
         f"held-out news articles (the last 5 % of news-text, never trained on). *Base* = the unswapped model "
         f"(Transformers' sdpa), measured once the same way. Test: daGPAM better (worse) = Welch t of the per-seed "
         f"log perplexities ≤ −{SIGNIFICANCE_T:g} (≥ {SIGNIFICANCE_T:g}) with every daGPAM seed below (above) every "
         f"softmax seed; else no measurable difference.\n"]
    rows = []
    for corpus, v in c["corpora"].items():
        rows.append([corpus, fmt_num(c["base"].get(corpus)), fmt_pm(v["ppl"]["softmax"]), fmt_pm(v["ppl"]["dagpam"]),
                     fmt_pm(v["paired_nll_gap"]), fmt_num(v["t"]), v["verdict"]])
    L.append(table(["corpus", "base ppl", "softmax ppl", "daGPAM ppl", "paired gap (nats/token, daGPAM − softmax)",
                    "Welch t", "verdict"], rows))
    lam = [x for x in c.get("lambdas", []) if x]
    if lam:
        L.append(f"\ndaGPAM's λ after training (from 0), over all layers and heads: mean "
                 f"{fmt_pm([x['mean'] for x in lam])} over seeds, range {fmt_num(min(x['min'] for x in lam))} … "
                 f"{fmt_num(max(x['max'] for x in lam))}.\n")
    if runs:
        per = [[ARM_TITLES[a], r["seed"], fmt_num(r["wiki"]["ppl"]), fmt_num(r["news"]["ppl"]),
                fmt_num(r["losses"][-1][1]) if r.get("losses") else "n/a", fmt_num(r.get("seconds"), 1)]
               for a in CPT_ARMS for r in (runs.get(a) or {}).values() if r]
        if per:
            L.append("\n" + table(["arm", "seed", "wiki ppl", "news ppl", "final train loss", "train s"], per))
    L.append(f"\n**Verdict: {c['verdict']}.**\n")
    return "\n".join(L)


def mt_headline(c: dict[str, Any]) -> list[str]:
    """The headline row of translation fine-tuning."""
    if c["verdict"] == "not run":
        return ["SmolLM2 de→en fine-tuning: daGPAM (λ from 0) vs softmax (not a standard benchmark)", "not run", ""]
    t = c["test"]
    return ["SmolLM2 de→en fine-tuning: daGPAM (λ from 0) vs softmax (not a standard benchmark)", c["verdict"],
            f"test BLEU daGPAM {fmt_pm(t['dagpam']['bleu'])} vs softmax {fmt_pm(t['softmax']['bleu'])} (base "
            f"{fmt_num(c['base']['bleu'])}); chrF {fmt_pm(t['dagpam']['chrf'])} vs {fmt_pm(t['softmax']['chrf'])}; "
            f"step-0 BLEU equal in every run: {_yn(c['step0_agree'])}"]


def render_mt(c: dict[str, Any], scale: Scale) -> str:
    """The translation fine-tuning section."""
    s = scale
    L = ["## Translation fine-tuning of SmolLM2 (de→en): daGPAM from λ = 0 against softmax\n", NOT_A_BENCHMARK + "\n",
         f"`recipes/finetune_translation.py` with `recipes/configs/smollm2_translation_{{softmax,dagpam}}.yaml` "
         f"(full fine-tuning, lr 2e-5 cosine, 8 pairs a step, loss on the English reference + EOS; daGPAM's λ and W⁻ "
         f"at lr {s.mt_attnswap_lr:g}): **{s.mt_steps} steps** ({s.mt_warmup} warmup) for each arm and seed; the seed "
         f"sets the data order, the same for both arms. The recipe translates the first {s.mt_eval_samples} "
         f"validation pairs (greedy, ≤ {s.mt_max_new_tokens} new tokens) at step 0 and at the end; the final model "
         f"then translates the first **{s.mt_test_samples} pairs of the fixed test split** the same way, scored with "
         f"sacrebleu (BLEU 13a, chrF2). *Base* = the unswapped model on the same test pairs. Significance: "
         f"sacrebleu's own paired bootstrap resampling (`sacrebleu.significance.PairedTest`, test `bs`, "
         f"{BOOTSTRAP_SAMPLES} resamples, sacrebleu's seed), daGPAM against softmax, per seed and on all the "
         f"seeds' outputs pooled (each seed's test outputs in turn, paired sentence by sentence); significant at "
         f"p < {BOOTSTRAP_P:g}. The verdict is the pooled test's; equal scores are *no difference* whatever the p "
         f"(sacrebleu counts only resampled differences strictly above the observed one, so a zero difference gets "
         f"p = 1/({BOOTSTRAP_SAMPLES} + 1)).\n"]
    t, base = c["test"], c["base"]
    rows = [["base (no fine-tuning)", fmt_num(base["bleu"]), fmt_num(base["chrf"]), "", ""]]
    for a in MT_CONFIGS:
        rows.append([ARM_TITLES[a], fmt_pm(t[a]["bleu"]), fmt_pm(t[a]["chrf"]), fmt_pm(c["val_final"][a]["bleu"]),
                     ", ".join(fmt_num(x["bleu"]) for x in c["step0"][a])])
    L.append(table(["model", f"test BLEU ({base['n']} pairs)", "test chrF", "validation BLEU at the end",
                    "validation BLEU at step 0, per seed"], rows))
    L.append(f"\nStep-0 validation BLEU of every run (softmax and daGPAM at λ = 0 are the same model): spread "
             f"{fmt_num(c['step0_spread'])} — {'they agree' if c['step0_agree'] else '**they do not agree**'}.\n")
    rows = []
    for label, res in [*((f"seed {k}", v) for k, v in c["per_seed"].items()), ("pooled over seeds", c["pooled"])]:
        if not res:
            continue
        rows.append([label, f"{fmt_num(res['bleu']['baseline'])} → {fmt_num(res['bleu']['system'])}",
                     fmt_num(res["bleu"]["p"]), f"{fmt_num(res['chrf']['baseline'])} → {fmt_num(res['chrf']['system'])}",
                     fmt_num(res["chrf"]["p"])])
    if rows:
        L.append(table(["test outputs", "BLEU softmax → daGPAM", "p (paired bootstrap)", "chrF softmax → daGPAM",
                        "p (paired bootstrap)"], rows))
        sig = (c["pooled"] or {}).get("bleu", {}).get("signature")
        if sig:
            L.append(f"\nsacrebleu signature (BLEU, pooled test): `{sig}`.\n")
    lam = [x for x in c.get("lambdas", []) if x]
    if lam:
        L.append(f"daGPAM's λ after fine-tuning (from 0): mean {fmt_pm([x['mean'] for x in lam])} over seeds, range "
                 f"{fmt_num(min(x['min'] for x in lam))} … {fmt_num(max(x['max'] for x in lam))}.\n")
    L.append(f"**Verdict: {c['verdict']}.**\n")
    return "\n".join(L)
