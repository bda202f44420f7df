"""The SmolLM2 parts beside the claims: continued pretraining and translation fine-tuning, daGPAM from λ = 0
against the softmax control (same data, steps and seed). Pure functions on what :func:`.collect.collect` gathered,
except :func:`paired_bootstrap`, which runs sacrebleu's own paired bootstrap resampling."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .config import BOOTSTRAP_P, BOOTSTRAP_SAMPLES, CPT_ARMS, MT_CONFIGS, SIGNIFICANCE_T
from .files import number
from .stats import finite, mean_std, separated, welch_t


def compare_lower_is_better(dagpam: Sequence[float], softmax: Sequence[float],
                            t: float = SIGNIFICANCE_T) -> dict[str, Any]:
    """daGPAM's per-seed numbers (lower is better, e.g. perplexity) against softmax's: the Welch t, and the verdict
    "better" (t <= -``t`` and every daGPAM seed below every softmax seed), "worse" (the mirror image) or "no
    measurable difference"."""
    wt = welch_t(dagpam, softmax)
    sep = separated(dagpam, softmax)
    if math.isfinite(wt) and wt <= -t and sep == -1 or wt == -math.inf:
        verdict = "daGPAM better"
    elif math.isfinite(wt) and wt >= t and sep == 1 or wt == math.inf:
        verdict = "daGPAM worse"
    else:
        verdict = "no measurable difference"
    return {"t": wt, "separated": sep, "gap": mean_std(dagpam)[0] - mean_std(softmax)[0], "verdict": verdict}


def analyse_cpt(data: dict[str, Any]) -> dict[str, Any]:
    """Continued pretraining: per arm and corpus the final perplexities over seeds, the base model's, the paired
    per-seed gap in nats (daGPAM − softmax, same seed = same data order) and the verdict per corpus."""
    runs = {a: [r for r in data["runs"][a].values() if r] for a in CPT_ARMS}
    base = data.get("base") or {}
    out: dict[str, Any] = {"n": {a: len(rs) for a, rs in runs.items()},
                           "base": {c: number(v.get("ppl")) for c, v in base.get("corpora", {}).items()},
                           "corpora": {}, "lambdas": [r.get("lambdas") for r in runs["dagpam"]]}
    for corpus in ("wiki", "news"):
        ppl = {a: [number(r[corpus]["ppl"]) for r in rs] for a, rs in runs.items()}
        paired = [number(d[corpus]["nll"]) - number(s[corpus]["nll"])
                  for seed, d in data["runs"]["dagpam"].items() if d
                  for s in [data["runs"]["softmax"].get(seed)] if s]
        out["corpora"][corpus] = {"ppl": ppl, "paired_nll_gap": paired, **compare_lower_is_better(
            [math.log(x) for x in finite(ppl["dagpam"])], [math.log(x) for x in finite(ppl["softmax"])])}
    done = all(out["n"].values()) and len(out["base"]) == 2
    out["verdict"] = ("not run" if not done else
                      "; ".join(f"{c}: {v['verdict']}" for c, v in out["corpora"].items()))
    return out


def paired_bootstrap(baseline: Sequence[str], system: Sequence[str], references: Sequence[str],
                     n_samples: int = BOOTSTRAP_SAMPLES) -> dict[str, dict[str, Any]]:
    """sacrebleu's paired bootstrap resampling (``sacrebleu.significance.PairedTest``, test ``bs``: Koehn 2004,
    as ``sacrebleu --paired-bs``) of ``system`` against ``baseline`` on the same ``references``, for BLEU and
    chrF: {metric: {"baseline", "system", "p", "system_mean", "system_ci", "baseline_mean", "baseline_ci",
    "signature"}}. The resampling seed is sacrebleu's (``SACREBLEU_SEED``, default 12345)."""
    from sacrebleu.metrics import BLEU, CHRF
    from sacrebleu.significance import PairedTest

    test = PairedTest([("baseline", list(baseline)), ("system", list(system))], {"BLEU": BLEU(), "chrF": CHRF()},
                      [list(references)], test_type="bs", n_samples=n_samples)
    signatures, scores = test()
    out = {}
    for name in ("BLEU", "chrF2"):
        base, sys_ = scores[name]
        key = "bleu" if name == "BLEU" else "chrf"
        out[key] = {"baseline": float(base.score), "system": float(sys_.score), "p": float(sys_.p_value),
                    "baseline_mean": float(base.mean), "baseline_ci": float(base.ci),
                    "system_mean": float(sys_.mean), "system_ci": float(sys_.ci), "signature": str(signatures[name])}
    return out


def analyse_mt(data: dict[str, Any], p_threshold: float = BOOTSTRAP_P) -> dict[str, Any]:
    """Translation: test BLEU/chrF over seeds per arm, the base model's, the step-0 validation BLEU of every run
    (equal across runs when daGPAM starts at λ = 0), and sacrebleu's paired bootstrap of daGPAM against softmax per
    seed and on the seeds' outputs pooled (each seed's test outputs one after the other, paired sentence by
    sentence); the verdict is the pooled test's. Two arms with the same score are "no difference" whatever the p:
    sacrebleu (after multeval) counts only resampled differences strictly above the observed one, so a zero
    difference gets p = 1/(resamples + 1)."""
    runs = data["runs"]
    got = {a: [r for r in runs[a].values() if r] for a in MT_CONFIGS}
    base = data.get("base")
    step0 = [r["val_step0"]["bleu"] for a in MT_CONFIGS for r in got[a]]
    out: dict[str, Any] = {
        "n": {a: len(rs) for a, rs in got.items()},
        "base": {"bleu": base["bleu"], "chrf": base["chrf"], "n": base["n"]} if base else None,
        "test": {a: {m: [r["test"][m] for r in rs] for m in ("bleu", "chrf")} for a, rs in got.items()},
        "val_final": {a: {m: [r["val_final"][m] for r in rs] for m in ("bleu", "chrf")} for a, rs in got.items()},
        "step0": {a: [{"seed": r["seed"], **r["val_step0"]} for r in rs] for a, rs in got.items()},
        "step0_spread": (max(step0) - min(step0)) if step0 else math.nan,
        "lambdas": [r.get("lambdas") for r in got["dagpam"]], "per_seed": {}, "pooled": None,
    }
    out["step0_agree"] = bool(step0) and out["step0_spread"] == 0
    pairs = [(s, runs["softmax"][s], d) for s, d in runs["dagpam"].items() if d and runs["softmax"].get(s)]
    for seed, soft, dag in pairs:
        out["per_seed"][seed] = paired_bootstrap(soft["hypotheses"], dag["hypotheses"], soft["references"])
    if pairs:
        out["pooled"] = paired_bootstrap([h for _, s, _ in pairs for h in s["hypotheses"]],
                                         [h for _, _, d in pairs for h in d["hypotheses"]],
                                         [r for _, s, _ in pairs for r in s["references"]])
    if not pairs or base is None:
        out["verdict"] = "not run"
    else:
        parts = []
        for m, title in (("bleu", "BLEU"), ("chrf", "chrF")):
            p = out["pooled"][m]
            if p["system"] == p["baseline"]:  # sacrebleu gives p = 1/(n+1) here (a zero difference "is not chance")
                parts.append(f"{title}: no difference (identical scores)")
            elif p["p"] < p_threshold:
                parts.append(f"{title}: daGPAM {'better' if p['system'] > p['baseline'] else 'worse'} (p = {p['p']:.3g})")
            else:
                parts.append(f"{title}: no significant difference (p = {p['p']:.3g})")
        out["verdict"] = "; ".join(parts)
    return out


def analyse_parts(parts: set[str] | frozenset[str], data: dict[str, Any]) -> dict[str, Any]:
    """{"cpt": :func:`analyse_cpt`, "mt": :func:`analyse_mt`} for the requested parts."""
    out: dict[str, Any] = {}
    if "cpt" in parts:
        out["cpt"] = analyse_cpt(data["cpt"])
    if "mt" in parts:
        out["mt"] = analyse_mt(data["mt"])
    return out
