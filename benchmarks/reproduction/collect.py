"""Collecting: what the finished jobs wrote under the runs folder, gathered into the dict :func:`.claims.analyse`
judges, the report renders and ``reproduce.json`` stores ("render_data")."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from .claims import loss_health, run_stable
from .config import CPT_ARMS, MECHS, MT_CONFIGS
from .conversions import load_conversions
from .files import number, read_json, read_log
from .jobs import cpt_run_dir, mt_run_dir, scratch_run_dir, smol_run_dir


def scratch_run(runs: Path, mech: str, seed: int) -> dict[str, Any] | None:
    """One from-scratch run's summary (None if it has no results.json): its perplexities, training losses and
    evaluations, loss health (:func:`.claims.loss_health`), stability, probe and (daGPAM) learned lambdas."""
    d = scratch_run_dir(runs, mech, seed)
    if not (d / "results.json").is_file():
        return None
    res = read_json(d / "results.json")
    log = read_log(d / "log.jsonl")
    losses = [(r["step"], number(r["loss"])) for r in log if "loss" in r]
    evals = [(e["step"], number(e.get("eval/ppl"))) for e in res.get("evaluations", [])]
    health = loss_health([v for _, v in losses])
    first, final = number(res.get("first_eval")), number(res.get("final_eval"))
    probe = read_json(d / "probe" / "probe.json") if (d / "probe" / "probe.json").is_file() else None
    lam = learned_lambdas(d / "model.safetensors") if mech == "dagpam" else None
    return {"lambdas": lam, "mech": mech, "seed": seed, "attn": res.get("attn"), "first_ppl": first, "final_ppl": final,
            "seconds": res.get("seconds"), "tokens_seen": res.get("tokens_seen"), "steps": res.get("steps"),
            "losses": losses, "evals": evals, **health, "stable": run_stable(health, first, final), "probe": probe}


def learned_lambdas(weights: Path) -> dict[str, Any] | None:
    """daGPAM's trained lambda per layer and head, read from the saved model (mean, min, max over all heads)."""
    if not weights.is_file():
        return None
    from safetensors import safe_open

    vals: list[list[float]] = []
    with safe_open(str(weights), framework="pt") as f:
        keys = sorted((k for k in f.keys() if k.endswith("lambda_param")),
                      key=lambda k: [int(p) if p.isdigit() else p for p in k.split(".")])
        for k in keys:
            vals.append([float(x) for x in f.get_tensor(k).flatten()])
    flat = [x for row in vals for x in row]
    if not flat:
        return None
    return {"per_layer": vals, "mean": statistics.fmean(flat), "min": min(flat), "max": max(flat)}


def _json(path: Path) -> Any:
    return read_json(path) if path.is_file() else None


def cpt_run(runs: Path, arm: str, seed: int) -> dict[str, Any] | None:
    """One continued pretraining run (None until both its steps finished): the recipe's final perplexity on the
    held-out wiki excerpts, the news perplexity of its final model, its training curve and (daGPAM) lambdas."""
    d = cpt_run_dir(runs, arm, seed)
    res, news = _json(d / "results.json"), _json(d / "news" / "ppl.json")
    if res is None or news is None:
        return None
    last = res["evaluations"][-1]
    log = read_log(d / "log.jsonl")
    return {"arm": arm, "seed": seed, "attn": res.get("attn"), "steps": res.get("steps"),
            "tokens_seen": res.get("tokens_seen"), "seconds": res.get("seconds"),
            "wiki": {"ppl": number(last.get("eval/ppl")), "nll": number(last.get("eval/nll")),
                     "tokens": last.get("eval/tokens")},
            "news": {k: news["corpora"]["news"].get(k) for k in ("ppl", "nll", "tokens")},
            "lambdas": news.get("lambdas"), "losses": [(r["step"], number(r["loss"])) for r in log if "loss" in r]}


def mt_run(runs: Path, arm: str, seed: int) -> dict[str, Any] | None:
    """One translation fine-tuning run (None until both its steps finished): validation BLEU/chrF at step 0 and
    at the end (the recipe's), test BLEU/chrF of the final model with its hypotheses, lambdas and training curve."""
    d = mt_run_dir(runs, arm, seed)
    res, test = _json(d / "results.json"), _json(d / "test" / "test.json")
    if res is None or test is None:
        return None
    ev = res["evaluations"]
    log = read_log(d / "log.jsonl")
    return {"arm": arm, "seed": seed, "attn": res.get("attn"), "steps": res.get("steps"),
            "seconds": res.get("seconds"), "tokens_seen": res.get("tokens_seen"),
            "val_step0": {"bleu": number(ev[0].get("eval/bleu")), "chrf": number(ev[0].get("eval/chrf")),
                          "step": ev[0]["step"]},
            "val_final": {"bleu": number(ev[-1].get("eval/bleu")), "chrf": number(ev[-1].get("eval/chrf")),
                          "step": ev[-1]["step"]},
            "validation_pairs": res.get("validation_pairs"),
            "test": {"bleu": test["bleu"], "chrf": test["chrf"], "n": test["n"], "bleu_signature": test["bleu_signature"],
                     "chrf_signature": test["chrf_signature"]},
            "hypotheses": test["hypotheses"], "references": test["references"], "lambdas": test.get("lambdas"),
            "losses": [(r["step"], number(r["loss"])) for r in log if "loss" in r]}


def collect(claims: set[int], seeds: list[int], runs: Path, conversions_dir: Path,
            parts: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """What the jobs of ``claims`` and ``parts`` wrote under ``runs`` (None for a job that left nothing): claim 1's
    per-seed comparisons, the from-scratch runs (:func:`scratch_run`), claim 4's baseline and SmolLM2 runs, the
    committed conversions of ``conversions_dir`` (:func:`.conversions.load_conversions`), and the continued
    pretraining (:func:`cpt_run`) and translation (:func:`mt_run`) runs with their base-model measurements."""
    data: dict[str, Any] = {}
    if 1 in claims:
        rows = {}
        for s in seeds:
            p = runs / "claim1" / f"seed{s}.json"
            rows[s] = read_json(p) if p.is_file() else None
        data["claim1"] = rows
    if claims & {2, 3, 5}:
        data["scratch"] = {m: {s: scratch_run(runs, m, s) for s in seeds} for m in MECHS}
    if 4 in claims:
        base = runs / "smollm2_polynomial" / "sdpa_baseline" / "ppl.json"
        c4: dict[str, Any] = {"sdpa": read_json(base) if base.is_file() else None, "runs": {}}
        for s in seeds:
            d = smol_run_dir(runs, s)
            if (d / "results.json").is_file():
                res = read_json(d / "results.json")
                log = read_log(d / "log.jsonl")
                c4["runs"][s] = {"evaluations": res["evaluations"], "seconds": res.get("seconds"),
                                 "tokens_seen": res.get("tokens_seen"), "steps": res.get("steps"),
                                 "losses": [(r["step"], number(r["loss"])) for r in log if "loss" in r]}
            else:
                c4["runs"][s] = None
        data["claim4"] = c4
        data["conversions"] = load_conversions(conversions_dir)
    if "cpt" in parts:
        data["cpt"] = {"base": _json(runs / "cpt" / "base" / "ppl.json"),
                       "runs": {a: {s: cpt_run(runs, a, s) for s in seeds} for a in CPT_ARMS}}
    if "mt" in parts:
        data["mt"] = {"base": _json(runs / "mt" / "base" / "test.json"),
                      "runs": {a: {s: mt_run(runs, a, s) for s in seeds} for a in MT_CONFIGS}}
    return data
