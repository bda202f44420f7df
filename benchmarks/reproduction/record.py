"""``<out>/reproduce.json``: what a run writes, and what ``--render-only`` reads back.

A re-render uses the committed file (no job run, no cache read). It holds the analysis (every number of the tables
and verdicts) and, since --render-only exists, "render_data": the per-run summaries that the from-scratch table,
claim 2's per-layer table and the plots of claims 2-4 read. Files written before that lack it; those parts are then
rendered from the analysis where it has them, else left out and named."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .config import Scale, thresholds
from .files import read_json
from .plots import PLOT_FILES


RENDER_ONLY_KEYS = ("meta", "scale", "claims", "seeds", "thresholds", "analysis")
RENDER_ONLY_META = ("git_revision", "date", "machine", "wall_seconds", "jobs", "cached_jobs", "job_seconds_total",
                    "jobs_at_once", "command", "example_commands", "runs_dir")
RENDER_ONLY_ANALYSIS = {  # what render_md() and headline() read from each claim's analysis
    1: ("rows", "per_pair", "verdict"),
    2: ("deep_hidden_states", "ppl", "residual_deep", "cosine_deep", "n", "dagpam_lambdas", "ppl_no_worse", "t_ppl",
        "higher_residual", "lower_cosine", "residual", "cosine", "verdict"),
    3: ("poly_scaled", "poly_unscaled", "softmax", "scaled_stable", "unscaled_diverged_runs",
        "ppl_ratio_unscaled_over_scaled", "unscaled_much_worse", "verdict", "probe_means"),
    4: ("rows", "base", "verdict"),
    5: ("per_seed_model_mean", "per_layer", "pairs", "conventions", "verdict"),
}


PLOT_NEEDS = {2: "the validation curves and per-layer probes of the from-scratch runs",
              3: "the training-loss and validation curves of the from-scratch runs",
              4: "the training-loss curves of the SmolLM2 runs"}  # what an older reproduce.json lacks for each plot
_KEEP_NONE = frozenset({"dagpam_lambdas", "base", "steps", "tokens_seen", "seconds", "lambdas", "pooled"})  # None there is not a NaN


class RenderOnlyError(ValueError):
    """reproduce.json cannot be re-rendered (missing, not JSON, an older or foreign format)."""


def reproduce_json(meta: dict[str, Any], scale: Scale, claims: set[int], seeds: list[int], analysis: dict[str, Any],
                   data: dict[str, Any], report: dict[str, Any], parts: set[str] | frozenset[str] = frozenset()
                   ) -> dict[str, Any]:
    """The contents of ``<out>/reproduce.json`` (before :func:`write_json` makes it strict JSON)."""
    return {"meta": meta, "scale": scale.__dict__, "claims": sorted(claims), "parts": sorted(parts), "seeds": seeds,
            "thresholds": thresholds(), "analysis": analysis, "render_data": render_data(data), "jobs": report}


def render_data(data: dict[str, Any]) -> dict[str, Any]:
    """What :func:`collect` gathered, for reproduce.json's "render_data" (the conversions are read afresh from
    their committed files instead, and the translations' hypotheses stay in the runs: the analysis holds their
    scores and tests); NaN kept as the string "nan" so that None stays None (a missing run)."""
    kept = {k: v for k, v in data.items() if k != "conversions"}
    if kept.get("mt"):
        kept["mt"] = {"base": {k: v for k, v in (kept["mt"]["base"] or {}).items()
                               if k not in ("hypotheses", "references", "sources")} or None,
                      "runs": {a: {s: ({k: v for k, v in r.items() if k not in ("hypotheses", "references")} if r else r)
                                   for s, r in runs.items()} for a, runs in kept["mt"]["runs"].items()}}
    return _tag_nan(kept)


def _tag_nan(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    if isinstance(x, dict):
        return {k: _tag_nan(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_tag_nan(v) for v in x]
    return x


def _untag(x: Any) -> Any:
    """Inverse of :func:`strict_json` + :func:`_tag_nan`: "nan"/"inf"/"-inf" strings back to floats."""
    if isinstance(x, str) and x in ("nan", "inf", "-inf"):
        return float(x)
    if isinstance(x, dict):
        return {k: _untag(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_untag(v) for v in x]
    return x


def restore_analysis(x: Any, key: str | None = None) -> Any:
    """The analysis as :func:`analyse` returned it, from reproduce.json (where :func:`strict_json` wrote NaN as None
    and inf as "inf"): None back to NaN, except under the keys where None is a value of its own."""
    if x is None:
        return None if key in _KEEP_NONE else math.nan
    if isinstance(x, str) and x in ("inf", "-inf"):
        return float(x)
    if isinstance(x, dict):
        return {k: restore_analysis(v, k) for k, v in x.items()}
    if isinstance(x, list):
        return [restore_analysis(v, key if key in _KEEP_NONE else None) for v in x]
    return x


def restore_render_data(raw: dict[str, Any]) -> dict[str, Any]:
    """reproduce.json's "render_data" as :func:`collect` returned it (seed keys back to ints)."""
    d = _untag(raw)
    if "claim1" in d:
        d["claim1"] = {int(k): v for k, v in d["claim1"].items()}
    if "scratch" in d:
        d["scratch"] = {m: {int(k): v for k, v in runs.items()} for m, runs in d["scratch"].items()}
    if "claim4" in d:
        d["claim4"]["runs"] = {int(k): v for k, v in d["claim4"].get("runs", {}).items()}
    for part in ("cpt", "mt"):
        if d.get(part):
            d[part]["runs"] = {a: {int(k): v for k, v in runs.items()} for a, runs in d[part]["runs"].items()}
    return d


def load_render_input(path: Path) -> dict[str, Any]:
    """reproduce.json, checked for everything a re-render needs: {"meta", "scale" (a :class:`Scale`), "claims" (a
    set), "seeds", "analysis" (restored), "data" (restored "render_data", or {} for an older file)}. Raises
    :class:`RenderOnlyError` saying what is wrong."""
    if not path.is_file():
        raise RenderOnlyError("it does not exist")
    try:
        raw = read_json(path)
    except (OSError, ValueError) as exc:
        raise RenderOnlyError(f"it is not readable JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise RenderOnlyError("it is not a reproduce.json (not an object)")
    lacking = [k for k in RENDER_ONLY_KEYS if k not in raw]
    if lacking:
        raise RenderOnlyError(f"it lacks {', '.join(lacking)} (an older or foreign format)")
    lacking = [k for k in RENDER_ONLY_META if k not in raw["meta"]]
    if lacking:
        raise RenderOnlyError(f"it lacks meta.{', meta.'.join(lacking)} (an older format)")
    try:
        scale = Scale(**raw["scale"])
    except TypeError as exc:
        raise RenderOnlyError(f"its scale does not match this script's ({exc}; an older format)") from exc
    claims, seeds = raw["claims"], raw["seeds"]
    if (not isinstance(claims, list) or not claims or not set(claims) <= {1, 2, 3, 4, 5}
            or not isinstance(seeds, list) or not seeds or not all(isinstance(x, int) for x in seeds)):
        raise RenderOnlyError(f"its claims {claims!r} / seeds {seeds!r} are not lists of claims 1-5 and seeds")
    if raw["thresholds"] != thresholds():
        diff = ", ".join(f"{k} {raw['thresholds'].get(k)!r} (now {v!r})" for k, v in thresholds().items()
                         if raw["thresholds"].get(k) != v)
        raise RenderOnlyError(f"it was judged with other thresholds than this script's: {diff or 'other keys'}; "
                              "the report would describe tests that did not make its verdicts")
    for claim in sorted(claims):
        c = raw["analysis"].get(f"claim{claim}")
        needed = RENDER_ONLY_ANALYSIS[claim] + (("recovered", "final_over_base_ppl")
                                                if claim == 4 and isinstance(c, dict) and c.get("verdict") != "not run"
                                                else ())
        lacking = list(needed) if not isinstance(c, dict) else [k for k in needed if k not in c]
        if lacking:
            raise RenderOnlyError("it lacks " + ", ".join(f"analysis.claim{claim}.{k}" for k in lacking)
                                  + " (an older format)")
    parts = raw.get("parts", [])
    lacking = [f"analysis.{p}" for p in parts if not isinstance(raw["analysis"].get(p), dict)]
    if lacking:
        raise RenderOnlyError(f"it lacks {', '.join(lacking)}")
    data = raw.get("render_data")
    return {"meta": raw["meta"], "scale": scale, "claims": set(claims), "parts": set(parts), "seeds": seeds,
            "analysis": restore_analysis(raw["analysis"]), "data": restore_render_data(data) if data else {}}


def computed_run(meta: dict[str, Any]) -> dict[str, Any] | None:
    """The invocation that computed the jobs when this one computed all of them (none from the cache), else None: a
    run with cached jobs reports when its jobs ran from their stamps (``meta["job_span"]``,
    :func:`.jobs.job_span`), since they may come from several invocations, and an earlier reproduce.json of the
    same scale name may describe other jobs (a scale whose sizes changed since)."""
    keys = ("date", "wall_seconds", "jobs", "cached_jobs", "job_seconds_total", "jobs_at_once", "git_revision")
    return {k: meta[k] for k in keys} if meta["cached_jobs"] == 0 else None


def older_file_gaps(claims: set[int], analysis: dict[str, Any], out: Path) -> tuple[list[str], dict[int, str],
                                                                                    dict[int, str]]:
    """What a re-render of a reproduce.json without "render_data" cannot show: (the parts of the report left out,
    for its header; {claim: why its committed PNG in ``out`` is linked without being re-drawn}; {claim: why its plot
    is not available}), for the plots of claims 2-4 (those of claims 1 and 5 are drawn from the analysis alone)."""
    missing: list[str] = []
    kept: dict[int, str] = {}
    missing_plots: dict[int, str] = {}
    if claims & {2, 3, 5}:
        missing.append("the from-scratch table's attn strings, final training loss and training seconds (and "
                       "daGPAM's step-0 perplexity and stable runs)")
    if 2 in claims:
        missing.append("claim 2's per-hidden-state residual and cosine table and the query-gradient aside")
    for k in (2, 3, 4):
        if k not in claims or analysis[f"claim{k}"]["verdict"] == "not run":
            continue
        if (out / PLOT_FILES[k]).is_file():
            kept[k] = f"reproduce.json lacks {PLOT_NEEDS[k]}"
        else:
            missing_plots[k] = f"reproduce.json lacks {PLOT_NEEDS[k]} and `{PLOT_FILES[k]}` is not in {out}"
    if kept or missing_plots:
        nums = [str(k) for k in sorted({*kept, *missing_plots})]
        missing.append("the data of the plots of claim" + (f"s {', '.join(nums[:-1])} and {nums[-1]}"
                                                           if len(nums) > 1 else f" {nums[0]}")
                       + (" (the committed PNGs are linked as they are)" if kept else ""))
    return missing, kept, missing_plots
