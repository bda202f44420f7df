"""The five claims' verdicts: the tests of SCIENCE.md's claims on per-seed numbers (pure functions), and
:func:`analyse`, which turns what :func:`.collect.collect` gathered into every number and verdict of the report."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from .config import (BLOWUP_NATS, LOGIT_TOL, MECHS, MOST_OF_GAP, MUCH_WORSE_PPL_RATIO, NEAR_BASE_PPL_RATIO,
                     SIGNIFICANCE_T, SMOOTH_STEPS, VALIDITY_RATIO, Scale)
from .conversions import judge_conversions
from .files import number
from .stats import finite, mean_std, measurable_difference, moving_average, separated, welch_t


def combine(parts: Sequence[bool]) -> str:
    """'yes' if every sub-claim holds, 'no' if none does, else 'partly'."""
    if parts and all(parts):
        return "yes"
    return "no" if not any(parts) else "partly"


def verdict_claim1(max_diffs: Sequence[float], tol: float = LOGIT_TOL) -> str:
    """Every compared pair within ``tol``: yes; some: partly; none: no."""
    if not max_diffs:
        return "not run"
    return combine([math.isfinite(d) and d <= tol for d in max_diffs])


def no_worse(candidate: Sequence[float], reference: Sequence[float], t: float = SIGNIFICANCE_T) -> bool:
    """``candidate`` (lower is better) is not worse than ``reference`` by more than ``t`` standard errors."""
    wt = welch_t(candidate, reference)
    if math.isnan(wt):
        return mean_std(candidate)[0] <= mean_std(reference)[0]
    return wt <= t


def verdict_claim2(ppl_dagpam: Sequence[float], ppl_softmax: Sequence[float], residual_dagpam: Sequence[float],
                   residual_softmax: Sequence[float], cosine_dagpam: Sequence[float],
                   cosine_softmax: Sequence[float]) -> dict[str, Any]:
    """Claim 2 from per-seed numbers (deep-layer residual and cosine averaged per seed)."""
    ppl_ok = no_worse(ppl_dagpam, ppl_softmax) and len(finite(ppl_dagpam)) == len(ppl_dagpam)
    residual = measurable_difference(residual_dagpam, residual_softmax)
    cosine = measurable_difference(cosine_dagpam, cosine_softmax)
    residual_ok = residual["measurable"] and residual["gap"] > 0
    cosine_ok = cosine["measurable"] and cosine["gap"] < 0
    return {"ppl_no_worse": ppl_ok, "t_ppl": welch_t(ppl_dagpam, ppl_softmax), "higher_residual": residual_ok,
            "lower_cosine": cosine_ok, "residual": residual, "cosine": cosine,
            "verdict": combine([ppl_ok, residual_ok, cosine_ok])}


def loss_health(losses: Sequence[float | None], *, blowup_nats: float = BLOWUP_NATS,
                window: int = SMOOTH_STEPS) -> dict[str, Any]:
    """Non-finite losses and loss spikes in a training curve. ``max_spike`` is the largest rise of the
    ``window``-step moving average of the finite losses above its best (lowest) value before it;
    ``max_raw_spike`` the same on single steps (dominated by batch-to-batch noise with small batches)."""
    nonfinite = sum(1 for v in losses if v is None or not math.isfinite(float(v)))
    ok = [float(v) for v in losses if v is not None and math.isfinite(float(v))]

    def spike(curve: Sequence[float]) -> float:
        best, worst = math.inf, 0.0
        for v in curve:
            if math.isfinite(best):
                worst = max(worst, v - best)
            best = min(best, v)
        return worst

    smooth = spike(moving_average(ok, max(1, window)))
    return {"nonfinite_steps": nonfinite, "max_spike": smooth, "max_raw_spike": spike(ok),
            "blew_up": smooth > blowup_nats, "stable": nonfinite == 0 and smooth <= blowup_nats}


def run_stable(health: dict[str, Any], first_ppl: float | None, final_ppl: float | None) -> bool:
    """A run trained stably: finite losses, no blow-up, and it ended better than it started."""
    return bool(health["stable"] and final_ppl is not None and first_ppl is not None and math.isfinite(final_ppl)
                and final_ppl < first_ppl)


def verdict_claim3(scaled: Sequence[dict[str, Any]], unscaled: Sequence[dict[str, Any]],
                   ratio: float = MUCH_WORSE_PPL_RATIO) -> dict[str, Any]:
    """Claim 3 from per-seed runs, each ``{"stable": bool, "final_ppl": float}``."""
    scaled_stable = bool(scaled) and all(r["stable"] for r in scaled)
    unscaled_unstable = [not r["stable"] for r in unscaled]
    ps = [r["final_ppl"] for r in scaled]
    pu = [r["final_ppl"] for r in unscaled]
    ms, mu = mean_std(ps)[0], mean_std(pu)[0]
    if len(finite(pu)) < len(pu):  # a non-finite final perplexity is as bad as it gets
        mu = math.inf
    worse_ratio = mu / ms if ms and math.isfinite(ms) and ms > 0 else math.nan
    much_worse = bool(math.isfinite(ms) and worse_ratio >= ratio and separated(pu, ps) >= 0
                      and (separated(pu, ps) == 1 or mu == math.inf))
    unscaled_bad = bool(unscaled) and (any(unscaled_unstable) or much_worse)
    return {"scaled_stable": scaled_stable, "unscaled_diverged_runs": sum(unscaled_unstable),
            "ppl_ratio_unscaled_over_scaled": worse_ratio, "unscaled_much_worse": much_worse,
            "unscaled_diverges_or_much_worse": unscaled_bad, "verdict": combine([scaled_stable, unscaled_bad])}


def gap_recovered(nll_base: float, nll_swapped: float, nll_final: float) -> float:
    """Share of the swap's gap (nats/token) that training closed: 1 = back to the base model, 0 = none, <0 worse."""
    gap = nll_swapped - nll_base
    return (nll_swapped - nll_final) / gap if gap > 0 else math.nan


def verdict_claim4(nll_base: float, nll_swapped: Sequence[float], nll_final: Sequence[float],
                   most: float = MOST_OF_GAP, near: float = NEAR_BASE_PPL_RATIO) -> dict[str, Any]:
    """Claim 4: the swap raises perplexity (every seed), and training recovers ``most`` of the gap in nats; 'yes'
    also needs the final perplexity within ``near`` x the base's, else a majority recovery counts as 'partly'."""
    raised = bool(nll_swapped) and all(s > nll_base for s in nll_swapped)
    rec = [gap_recovered(nll_base, s, f) for s, f in zip(nll_swapped, nll_final)]
    m_rec = mean_std(rec)[0]
    ratio = [math.exp(f - nll_base) if math.isfinite(f) else math.inf for f in nll_final]
    m_ratio = mean_std(ratio)[0]
    if not raised or not (m_rec > 0):
        verdict = "no"
    elif m_rec >= most and m_ratio <= near:
        verdict = "yes"
    else:
        verdict = "partly"
    return {"raised": raised, "recovered": rec, "recovered_mean": m_rec, "final_over_base_ppl": ratio,
            "verdict": verdict}


def verdict_claim5(per_pair: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Claim 5: ``per_pair[pair][measure]["measurable"]``; all measurable: yes; some: partly; none: no."""
    flags = [d["measurable"] for pair in per_pair.values() for d in pair.values()]
    return combine(flags) if flags else "not run"


def deep_hidden_states(layers: int) -> list[int]:
    """Hidden-state indices of the deep half of the blocks: outputs of layers L//2+1 .. L (1-based; index L has
    the final norm applied, as Transformers returns it)."""
    return list(range(layers // 2 + 1, layers + 1))


def validity(scratch: dict[str, dict[int, Any]], ngram: dict[str, Any] | None,
             ratio: float = VALIDITY_RATIO) -> dict[str, Any]:
    """SCIENCE.md's condition for a from-scratch run to count: it learned if its final validation perplexity is at
    most ``ratio`` x the bigram model's of the same text and tokenizer. Per mechanism and seed, and whether the
    softmax baseline met it in every seed (the condition on the scale)."""
    bigram = number((ngram or {}).get("bigram", {}).get("ppl"))
    limit = ratio * bigram
    per = {m: {s: bool(math.isfinite(r["final_ppl"]) and r["final_ppl"] <= limit) for s, r in runs.items()
               if r is not None} for m, runs in scratch.items()}
    soft = list(per.get("softmax", {}).values())
    failed = [f"{m} seed {s}" for m, runs in per.items() for s, v in runs.items() if v is False]
    return {"bigram_ppl": bigram, "unigram_ppl": number((ngram or {}).get("unigram", {}).get("ppl")), "limit": limit,
            "ratio": ratio, "learned": per, "softmax_learned": bool(soft) and all(soft), "not_learned": failed,
            "verdict": "not run" if not soft or not math.isfinite(bigram) else
            ("yes" if all(soft) else "no")}


def analyse(claims: set[int], seeds: list[int], data: dict[str, Any], scale: Scale) -> dict[str, Any]:
    """Every number and verdict of the report, per claim ("claim1" ... "claim5"), from what
    :func:`.collect.collect` gathered; a claim whose runs are missing is "not run"."""
    out: dict[str, Any] = {}
    if 1 in claims:
        rows = []
        for s, r in data["claim1"].items():
            if r is None:
                continue
            for model, m in r["models"].items():
                for pair, v in m["pairs"].items():
                    rows.append({"seed": s, "model": model, "pair": pair, "max_abs_diff": v, **{
                        k: m["context"][k] for k in ("eager_vs_sdpa", "max_abs_logit")}})
        per = {}
        for model in ("smollm2", "tiny_gpt2", "tiny_llama"):
            for pair in ("fused_vs_sdpa", "reference_vs_eager"):
                vals = [r["max_abs_diff"] for r in rows if r["model"] == model and r["pair"] == pair]
                ctx = [r["eager_vs_sdpa"] for r in rows if r["model"] == model and r["pair"] == pair]
                scale_ = [r["max_abs_logit"] for r in rows if r["model"] == model and r["pair"] == pair]
                per[f"{model}/{pair}"] = {"model": model, "pair": pair, "values": vals, "max": max(vals) if vals else math.nan,
                                          "eager_vs_sdpa": ctx, "max_abs_logit": scale_,
                                          "within_tol": bool(vals) and max(vals) <= LOGIT_TOL}
        missing = [s for s, r in data["claim1"].items() if r is None]
        out["claim1"] = {"rows": rows, "per_pair": per, "missing_seeds": missing,
                         "verdict": verdict_claim1([r["max_abs_diff"] for r in rows]) if not missing else
                         ("not run" if not rows else "partly (some seeds failed)")}
    sc = data.get("scratch", {})

    def got(mech: str) -> list[dict[str, Any]]:
        return [r for r in sc.get(mech, {}).values() if r is not None]

    layers = int(scale.gpt2_overrides.split("n_layer=")[1].split(",")[0])
    if claims & {2, 3, 5}:
        out["validity"] = validity(sc, data.get("ngram"))
    if 2 in claims:
        soft, dag = got("softmax"), got("dagpam")
        deep = deep_hidden_states(layers)

        def deep_mean(r: dict[str, Any], key: str) -> float:
            if not r.get("probe"):
                return math.nan
            vals = r["probe"]["per_layer"][key]
            return statistics.fmean(number(vals[i]) for i in deep)

        c2 = {"deep_hidden_states": deep,
              "ppl": {"softmax": [r["final_ppl"] for r in soft], "dagpam": [r["final_ppl"] for r in dag]},
              "residual_deep": {"softmax": [deep_mean(r, "rank_collapse_residual") for r in soft],
                                "dagpam": [deep_mean(r, "rank_collapse_residual") for r in dag]},
              "cosine_deep": {"softmax": [deep_mean(r, "token_cosine") for r in soft],
                              "dagpam": [deep_mean(r, "token_cosine") for r in dag]},
              "n": {"softmax": len(soft), "dagpam": len(dag)}, "dagpam_lambdas": [r.get("lambdas") for r in dag]}
        c2.update(verdict_claim2(c2["ppl"]["dagpam"], c2["ppl"]["softmax"], c2["residual_deep"]["dagpam"],
                                 c2["residual_deep"]["softmax"], c2["cosine_deep"]["dagpam"], c2["cosine_deep"]["softmax"]))
        if not soft or not dag:
            c2["verdict"] = "not run"
        out["claim2"] = c2
    if 3 in claims:
        runs3 = {m: got(m) for m in ("poly_scaled", "poly_unscaled", "poly_p1", "softmax")}
        c3 = {m: [{k: r[k] for k in ("seed", "first_ppl", "final_ppl", "nonfinite_steps", "max_spike", "max_raw_spike",
                                     "blew_up", "stable")}
                  for r in rs] for m, rs in runs3.items()}
        c3.update(verdict_claim3(c3["poly_scaled"], c3["poly_unscaled"]))
        p1 = verdict_claim3(c3["poly_scaled"], c3["poly_p1"])  # the paper's weak p = 1: a negative control
        c3["p1_control"] = {"unstable_runs": p1["unscaled_diverged_runs"],
                            "ppl_ratio_over_scaled": p1["ppl_ratio_unscaled_over_scaled"],
                            "much_worse": p1["unscaled_much_worse"], "worse": p1["unscaled_diverges_or_much_worse"],
                            **{k: v for k, v in no_worse_or_worse(c3["poly_p1"], c3["poly_scaled"]).items()}}
        c3["probe_means"] = {m: {k: [statistics.fmean(number(x) for x in r["probe"]["per_layer"][k]) for r in rs if r.get("probe")]
                                 for k in ("frobenius_ratio", "entropy", "sink_strength", "max_weight",
                                           "raw_collision_entropy", "abs_row_mass")
                                 if all(k in r["probe"]["per_layer"] for r in rs if r.get("probe"))}
                             for m, rs in runs3.items()}
        if not runs3["poly_scaled"] or not runs3["poly_unscaled"]:
            c3["verdict"] = "not run"
        out["claim3"] = c3
    if 4 in claims:
        c4d = data["claim4"]
        rows4 = []
        base = c4d["sdpa"]
        for s, r in c4d["runs"].items():
            if r is None:
                continue
            ev = r["evaluations"]
            rows4.append({"seed": s, "nll_swapped": number(ev[0]["eval/nll"]), "ppl_swapped": number(ev[0]["eval/ppl"]),
                          "nll_final": number(ev[-1]["eval/nll"]), "ppl_final": number(ev[-1]["eval/ppl"]),
                          "steps": r["steps"], "tokens_seen": r["tokens_seen"], "seconds": r["seconds"],
                          "curve": [(e["step"], number(e["eval/ppl"])) for e in ev]})
        c4: dict[str, Any] = {"rows": rows4, "base": base}
        if base and rows4:
            v = verdict_claim4(base["nll"], [r["nll_swapped"] for r in rows4], [r["nll_final"] for r in rows4])
            c4.update(v)
        else:
            c4["verdict"] = "not run"
        conv = judge_conversions(data.get("conversions", []))
        if conv is not None:  # the committed recipes/convert.py results (claim 4 as it now reads)
            c4["conversion"] = conv
        out["claim4"] = c4
    if claims & {2, 3, 5}:
        out["diagnostics"] = diagnostics_side_by_side({m: got(m) for m in MECHS}, deep_hidden_states(layers))
    if 5 in claims:
        groups = {m: [r for r in got(m) if r.get("probe")] for m in ("softmax", "poly_scaled", "dagpam")}
        per_seed = {m: {meas: [statistics.fmean(number(x) for x in r["probe"]["per_layer"][meas]) for r in rs
                               if meas in r["probe"]["per_layer"]]
                        for meas in ("sink_strength", "entropy", "raw_collision_entropy")} for m, rs in groups.items()}
        per_layer = {m: {meas: [[number(x) for x in r["probe"]["per_layer"][meas]] for r in rs]
                         for meas in ("sink_strength", "entropy")} for m, rs in groups.items()}
        pairs = {}
        for a, b in (("softmax", "poly_scaled"), ("softmax", "dagpam"), ("poly_scaled", "dagpam")):
            pairs[f"{a} vs {b}"] = {meas: measurable_difference(per_seed[a][meas], per_seed[b][meas])
                                    for meas in ("sink_strength", "entropy")}
        scale_aware = {f"{a} vs {b}": measurable_difference(per_seed[a]["raw_collision_entropy"],
                                                            per_seed[b]["raw_collision_entropy"])
                       for a, b in (("softmax", "poly_scaled"), ("softmax", "dagpam"), ("poly_scaled", "dagpam"))}
        conventions = {m: sorted({r["probe"]["weights_convention"] for r in rs}) for m, rs in groups.items()}
        c5 = {"per_seed_model_mean": per_seed, "per_layer": per_layer, "pairs": pairs, "conventions": conventions,
              "scale_aware_pairs": scale_aware,
              "verdict": verdict_claim5(pairs) if all(groups.values()) else "not run"}
        out["claim5"] = c5
    return out


def no_worse_or_worse(candidate: Sequence[dict[str, Any]], reference: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``candidate``'s final perplexities against ``reference``'s (per-seed run dicts): the Welch t and whether the
    candidate is worse by more than :data:`.config.SIGNIFICANCE_T` standard errors."""
    c, r = [x["final_ppl"] for x in candidate], [x["final_ppl"] for x in reference]
    return {"t": welch_t(c, r), "significantly_worse": bool(candidate and reference) and not no_worse(c, r)}


#: The probe measures of the side-by-side table: key -> (per_layer key, reduction over layers).
DIAGNOSTICS = {"deep residual": ("rank_collapse_residual", "deep"), "deep token cosine": ("token_cosine", "deep"),
               "sink strength": ("sink_strength", "mean"), "entropy (|a| renormalised)": ("entropy", "mean"),
               "raw collision entropy": ("raw_collision_entropy", "mean"), "|a| row mass": ("abs_row_mass", "mean"),
               "raw row sum": ("row_sum", "mean"), "‖A‖_F/√N": ("frobenius_ratio", "mean"),
               "negative mass share": ("negative_mass_share", "mean"), "query grad norm": ("query_grad_norm", "mean"),
               "massive activation": ("massive_activation", "deep")}


def diagnostics_side_by_side(runs: dict[str, list[dict[str, Any]]], deep: Sequence[int]) -> dict[str, Any]:
    """Every probed measure of :data:`DIAGNOSTICS` per mechanism: one number per seed (the mean over layers, or over
    the deep half of the hidden states), {measure: {mechanism: [per seed]}}."""
    out: dict[str, Any] = {}
    for title, (key, how) in DIAGNOSTICS.items():
        out[title] = {}
        for m, rs in runs.items():
            vals = []
            for r in rs:
                per = (r.get("probe") or {}).get("per_layer", {})
                if key not in per:
                    continue
                xs = [number(x) for x in per[key]]
                xs = [xs[i] for i in deep if i < len(xs)] if how == "deep" else xs
                vals.append(statistics.fmean(xs) if xs else math.nan)
            out[title][m] = vals
    return out
