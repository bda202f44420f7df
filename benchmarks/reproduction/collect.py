"""Collecting: what the finished jobs wrote under the runs folder, gathered into the dict :func:`.claims.analyse`
judges, the report renders and ``reproduce.json`` stores ("render_data")."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from .claims import loss_health, run_stable
from .config import MECHS
from .conversions import load_conversions
from .files import number, read_json, read_log
from .jobs import scratch_run_dir, smol_run_dir


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


def collect(claims: set[int], seeds: list[int], runs: Path, conversions_dir: Path) -> dict[str, Any]:
    """What the jobs of ``claims`` wrote under ``runs`` (None for a job that left nothing): claim 1's per-seed
    comparisons, the from-scratch runs (:func:`scratch_run`), claim 4's baseline and SmolLM2 runs, and the committed
    conversions of ``conversions_dir`` (:func:`.conversions.load_conversions`)."""
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
    return data
