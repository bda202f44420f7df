"""Claim 4 as it now reads: the conversions of ``recipes/convert.py``, read from the committed results.json files that
its report() writes (not from this script's jobs): ``docs/results/convert_smollm2_*/results.json`` and their
``ablation_<name>/results.json``; and the verdict on them. Pure functions on the loaded dicts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import NEAR_BASE_PPL_RATIO, REPO
from .files import number, read_json


CONVERSIONS_DIR = REPO / "docs" / "results"
CONVERSION_GLOB = "convert_smollm2_*"
PLAIN_ABLATION = "plain"  # ablation_plain: plain continued pretraining (no stage 1) at the same budget
CONVERSION_PHASES = {"base": "base (own attention)", "swapped": "right after the swap",
                     "stage1": "after stage 1 (attention transfer)", "stage2": "after stage 2 (fine-tuning)"}


def load_conversions(root: Path, pattern: str = CONVERSION_GLOB) -> list[dict[str, Any]]:
    """Every ``root/<pattern>/results.json``, sorted by folder: {"name": the folder's name, "dir": its path,
    "results": the dict, "ablations": {name: the dict of ``ablation_<name>/results.json``}, "plot": True when
    the folder has ``conversion.png``, "transfer_errors": its ``transfer_errors.json`` (``benchmarks/transfer_errors.py``)
    or None}."""
    out = []
    for d in sorted(p for p in root.glob(pattern) if (p / "results.json").is_file()):
        ablations = {a.name[len("ablation_"):]: read_json(a / "results.json")
                     for a in sorted(d.glob("ablation_*")) if (a / "results.json").is_file()}
        out.append({"name": d.name, "dir": d, "results": read_json(d / "results.json"), "ablations": ablations,
                    "plot": (d / "conversion.png").is_file(),
                    "transfer_errors": read_json(d / "transfer_errors.json") if (d / "transfer_errors.json").is_file()
                    else None})
    return out


def final_ppl(results: dict[str, Any]) -> dict[str, float]:
    """{corpus: perplexity} of a convert.py results dict at its final phase."""
    return dict(results["phases"][results["final_phase"]]["ppl"])


def conversion_for_claim4(conversions: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The conversion claim 4 is judged on: ``convert_smollm2_polynomial`` if present, else the first one whose
    target is a polynomial; None when there is none."""
    poly = [c for c in conversions if str(c["results"].get("target", "")).startswith("polynomial")]
    return next((c for c in poly if c["name"] == "convert_smollm2_polynomial"), poly[0] if poly else None)


def verdict_conversion(results: dict[str, Any], ablations: dict[str, dict[str, Any]],
                       near: float = NEAR_BASE_PPL_RATIO) -> dict[str, Any]:
    """Claim 4 on one conversion: 'yes' if its final perplexity is within ``near`` x the base's on every corpus and,
    when the plain continued pretraining ablation (``ablations["plain"]``) exists, lower than the ablation's on
    every corpus; 'partly' if only the first part holds or there is no such ablation; 'no' otherwise."""
    base, final = results["phases"]["base"]["ppl"], final_ppl(results)
    swapped = results["phases"].get("swapped", {}).get("ppl", {})
    plain = ablations.get(PLAIN_ABLATION)
    plain_final = final_ppl(plain) if plain is not None else {}
    per = {}
    for c, b in base.items():
        b, f, s = number(b), number(final.get(c)), number(swapped.get(c))
        per[c] = {"base": b, "swapped": s, "final": f, "ratio": f / b,
                  "gap_closed": ((math.log(s) - math.log(f)) / (math.log(s) - math.log(b))
                                 if s > b and f > 0 and math.isfinite(s) else None),
                  "plain": number(plain_final.get(c)) if plain is not None else None}
    near_base = bool(per) and all(v["ratio"] <= near for v in per.values())
    beats_plain = None if plain is None else all(v["final"] < v["plain"] for v in per.values())
    far = [c for c, v in per.items() if not v["ratio"] <= near]
    if near_base and beats_plain:
        verdict, reason = "yes", (f"within {near:g}× the base and below plain continued pretraining "
                                  f"(`ablation_{PLAIN_ABLATION}`) on every corpus")
    elif near_base:
        verdict = "partly"
        reason = (f"within {near:g}× the base on every corpus, but no plain continued pretraining ablation "
                  f"(`ablation_{PLAIN_ABLATION}`) to compare with" if plain is None else
                  f"within {near:g}× the base on every corpus, but not below plain continued pretraining "
                  f"(`ablation_{PLAIN_ABLATION}`) on every corpus")
    else:
        verdict, reason = "no", f"final perplexity above {near:g}× the base on " + ", ".join(far)
    return {"per_corpus": per, "near_base": near_base, "beats_plain": beats_plain,
            "raised": bool(per) and all(v["swapped"] > v["base"] for v in per.values()),
            "verdict": verdict, "reason": reason}


def judge_conversions(conversions: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Claim 4 on the conversion it is judged on (:func:`conversion_for_claim4`): {"name": its folder's name,
    **:func:`verdict_conversion`}; None when there is no polynomial conversion."""
    conv = conversion_for_claim4(conversions)
    if conv is None:
        return None
    return {"name": conv["name"], **verdict_conversion(conv["results"], conv["ablations"])}
