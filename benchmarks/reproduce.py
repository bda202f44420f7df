#!/usr/bin/env python
"""Reproduce the five "Reproducible claims" of SCIENCE.md at a scale a 2-core CPU finishes in under an hour.

    python benchmarks/reproduce.py --out docs/results/reproduce                 # everything, seeds 0,1,2
    python benchmarks/reproduce.py --out /tmp/repro --quick                     # toy scale, seeds 0,1 (~3 min)
    python benchmarks/reproduce.py --out docs/results/reproduce --claims 1,4 --seeds 0,1,2

Every training run is a subprocess of ``recipes/continue_pretrain.py`` (its YAML config plus command-line
overrides), run with ``OMP_NUM_THREADS=1`` and ``HF_HUB_OFFLINE=1``, at most ``--jobs`` (default 2) at a time.
Every finished job is cached under ``--runs-dir`` (a run is skipped when its ``results.json`` exists and was made
by the same command), so a re-run only redoes what is missing. At the end the script writes
``<out>/reproduce.json`` (every number), PNG plots in ``<out>/`` and the Markdown report (``--md``, default
``docs/results.md``; with ``--quick`` ``<out>/results.md``).

``--render-only`` runs nothing and reads no cache: it re-renders the report from the committed
``<out>/reproduce.json`` (its claims, seeds, scale, run facts and analysis) plus the committed conversion results of
claim 4, re-draws the plots that file's data allows, and says in the header that it is a re-render. It refuses
(exit 2) when the file is missing or lacks what the report needs. A file written before reproduce.json held
``render_data`` (the per-run curves and probes) renders without the parts only that data gives, and says which.

    python benchmarks/reproduce.py --out docs/results/reproduce --render-only

The claims and how each is tested (the thresholds are constants below, and the report repeats them):

1. daGPAM with lambda=0 gives the base model's logits (max |delta logit| <= 1e-5, fp32): real SmolLM2-135M on
   real news articles (one sample of articles per seed), and tiny random GPT-2 / Llama (GQA) models (one random
   init per seed); the fused path is compared with Transformers' ``sdpa``, the reference path with ``eager``.
2. From scratch, same data and budget: daGPAM's validation perplexity is no worse than softmax's, and daGPAM has
   less rank collapse (higher residual, lower token cosine) in the deep half of the layers.
3. Polynomial x^3/sqrt(N_i) trains stably; the unscaled x^3 diverges or trains much worse.
4. Swapping the pretrained SmolLM2 to polynomial raises its perplexity; k steps of continued pretraining with the
   recipe recover most of the gap (measured in nats per token). That is the older measurement; the claim now says
   conversion (``recipes/convert.py``: attention transfer, then fine-tuning) recovers most of it, much more than
   plain continued pretraining, and the report renders the committed ``docs/results/convert_smollm2_*`` results
   for it (read, not run, by this script).
5. Sink strength and attention entropy differ measurably between the softmax, polynomial and daGPAM models of 2/3.

The internal ``--job`` mode runs one measurement (claim 1 on one seed, a probe, the sdpa baseline) in a fresh
subprocess; it is how the scheduler runs them and is not meant to be called by hand.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RECIPE = "recipes/continue_pretrain.py"
CONFIGS = "recipes/configs"

# --------------------------------------------------------------------------------------------------- thresholds
LOGIT_TOL = 1e-5            # claim 1: max |delta logit| in fp32
SIGNIFICANCE_T = 2.0        # claim 2: "worse" means worse by more than 2 standard errors of the difference
MUCH_WORSE_PPL_RATIO = 1.5  # claim 3: "trains much worse" = final validation ppl at least 1.5x the scaled one's
BLOWUP_NATS = 1.0           # claim 3: a rise of the smoothed training loss of more than 1 nat above its best so far
SMOOTH_STEPS = 10           # claim 3: ... smoothed = moving average over this many steps (single batches are noisy)
MOST_OF_GAP = 0.5           # claim 4: "most of the gap" = at least half of it, in nats per token
NEAR_BASE_PPL_RATIO = 2.0   # claim 4: "yes" also needs the final ppl within 2x the unswapped model's
GAP_IN_STDS = 2.0           # claim 5: a measurable difference: seed ranges do not overlap and gap >= 2 x seed std
MIN_RELATIVE_GAP = 0.02     # claim 5: ... and the gap is at least 2 % of the larger of the two means (not negligible)

MECHS = {  # from-scratch runs: label -> (config file, extra recipe arguments)
    "softmax": ("gpt2_scratch_softmax.yaml", []),
    "dagpam": ("gpt2_scratch_dagpam.yaml", []),
    "poly_scaled": ("gpt2_scratch_polynomial.yaml", ["--attn", "polynomial:degree=3"]),
    "poly_unscaled": ("gpt2_scratch_polynomial.yaml", ["--attn", 'polynomial:degree=3:length_scale="none"']),
}
MECH_TITLES = {"softmax": "softmax", "dagpam": "daGPAM (λ_init 0.1, trained)",
               "poly_scaled": "polynomial x³/√N", "poly_unscaled": "polynomial x³ (unscaled)"}


@dataclass(frozen=True)
class Scale:
    """How big everything is. ``FULL`` fits about 45 minutes on a 2-core CPU; ``QUICK`` is a smoke test."""

    name: str
    gpt2_overrides: str          # config_overrides of the from-scratch GPT-2
    gpt2_block: int
    gpt2_batch: int
    gpt2_steps: int
    gpt2_warmup: int
    gpt2_eval_steps: int
    smol_block: int
    smol_batch: int
    smol_steps: int
    smol_warmup: int
    smol_eval_steps: int
    smol_max_eval_samples: int | None
    gpt2_max_eval_samples: int | None
    claim1_texts: int            # articles per seed
    claim1_tokens: int           # tokens per article (truncated)
    probe_texts: int             # held-out documents probed
    probe_tokens: int


FULL = Scale("full", gpt2_overrides="n_layer=6,n_head=4,n_embd=128,n_positions=128", gpt2_block=128, gpt2_batch=4,
             gpt2_steps=160, gpt2_warmup=16, gpt2_eval_steps=80,
             smol_block=128, smol_batch=2, smol_steps=24, smol_warmup=3, smol_eval_steps=12, smol_max_eval_samples=None,
             gpt2_max_eval_samples=None,
             claim1_texts=4, claim1_tokens=128, probe_texts=16, probe_tokens=128)
QUICK = Scale("quick", gpt2_overrides="n_layer=2,n_head=2,n_embd=32,n_positions=64", gpt2_block=32, gpt2_batch=2,
              gpt2_steps=3, gpt2_warmup=1, gpt2_eval_steps=3,
              smol_block=32, smol_batch=1, smol_steps=2, smol_warmup=1, smol_eval_steps=2, smol_max_eval_samples=2,
              gpt2_max_eval_samples=3,
              claim1_texts=2, claim1_tokens=24, probe_texts=2, probe_tokens=32)


# =========================================================================================== statistics, verdicts
# Pure functions on plain numbers (tested in tests/test_reproduce.py).


def finite(values: Sequence[float | None]) -> list[float]:
    """The finite numbers of ``values`` (None, NaN and infinities dropped)."""
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def mean_std(values: Sequence[float | None]) -> tuple[float, float, int]:
    """(mean, sample std with n-1, n) over the finite values; std is 0.0 for one value, both NaN for none."""
    v = finite(values)
    if not v:
        return math.nan, math.nan, 0
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0), len(v)


def fmt_num(x: float | None, digits: int = 3) -> str:
    """A number for a table: NaN/None -> 'n/a', inf -> 'inf', huge or tiny -> scientific, else fixed."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    a = abs(x)
    if a == 0:
        return "0"
    if a >= 1e5 or a < 1e-3:
        return f"{x:.{max(digits - 1, 1)}e}"
    if a >= 100:
        return f"{x:.1f}"
    return f"{x:.{digits}f}" if a < 1 else f"{x:.{max(digits - 1, 1)}f}"


def fmt_pm(values: Sequence[float | None], digits: int = 3) -> str:
    """'mean ± std' over the finite values, with a note when some were not finite."""
    m, s, n = mean_std(values)
    bad = len(values) - n
    text = "n/a" if n == 0 else (fmt_num(m, digits) if n == 1 else f"{fmt_num(m, digits)} ± {fmt_num(s, digits)}")
    return text + (f" ({bad} of {len(values)} not finite)" if bad else "")


def welch_t(a: Sequence[float], b: Sequence[float]) -> float:
    """(mean(a) - mean(b)) / sqrt(var_a/n_a + var_b/n_b): NaN with fewer than 2 values in a group; +-inf when
    both groups have zero spread and different means."""
    ma, sa, na = mean_std(a)
    mb, sb, nb = mean_std(b)
    if na < 2 or nb < 2:
        return math.nan
    se = math.sqrt(sa ** 2 / na + sb ** 2 / nb)
    if se == 0:
        return 0.0 if ma == mb else math.copysign(math.inf, ma - mb)
    return (ma - mb) / se


def separated(a: Sequence[float], b: Sequence[float]) -> int:
    """+1 if every value of ``a`` is above every value of ``b``, -1 if every one is below, 0 if they overlap."""
    fa, fb = finite(a), finite(b)
    if not fa or not fb:
        return 0
    if min(fa) > max(fb):
        return 1
    if max(fa) < min(fb):
        return -1
    return 0


def measurable_difference(a: Sequence[float], b: Sequence[float], *, gap_in_stds: float = GAP_IN_STDS,
                          min_relative_gap: float = MIN_RELATIVE_GAP) -> dict[str, Any]:
    """Whether two groups of per-seed values differ measurably: at least 2 values each, their ranges do not
    overlap, the gap of the means is at least ``gap_in_stds`` times the larger seed std and at least
    ``min_relative_gap`` of the larger |mean|. Returns the numbers behind the decision."""
    ma, sa, na = mean_std(a)
    mb, sb, nb = mean_std(b)
    spread = max(sa, sb) if na and nb else math.nan
    gap = ma - mb
    ratio = abs(gap) / spread if spread and spread > 0 else (math.inf if gap != 0 else 0.0)
    sep = separated(a, b)
    scale = max(abs(ma), abs(mb)) if na and nb else math.nan
    relative = abs(gap) / scale if scale and scale > 0 else (0.0 if gap == 0 else math.inf)
    ok = na >= 2 and nb >= 2 and sep != 0 and ratio >= gap_in_stds and relative >= min_relative_gap
    return {"gap": gap, "seed_std": spread, "gap_in_stds": ratio, "relative_gap": relative, "separated": sep,
            "t": welch_t(a, b), "measurable": bool(ok)}


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


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing means of ``window`` consecutive values (fewer at the start); ``window`` 1 returns the values."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


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


# ================================================================ claim 4: the conversions of recipes/convert.py
# Read from the committed results.json files that recipes/convert.py's report() writes (not from this script's
# jobs): docs/results/convert_smollm2_*/results.json and their ablation_<name>/results.json. Pure functions on the
# loaded dicts (tested in tests/test_reproduce.py).

CONVERSIONS_DIR = REPO / "docs" / "results"
CONVERSION_GLOB = "convert_smollm2_*"
PLAIN_ABLATION = "plain"  # ablation_plain: plain continued pretraining (no stage 1) at the same budget
CONVERSION_PHASES = {"base": "base (own attention)", "swapped": "right after the swap",
                     "stage1": "after stage 1 (attention transfer)", "stage2": "after stage 2 (fine-tuning)"}


def load_conversions(root: Path, pattern: str = CONVERSION_GLOB) -> list[dict[str, Any]]:
    """Every ``root/<pattern>/results.json``, sorted by folder: {"name": the folder's name, "dir": its path,
    "results": the dict, "ablations": {name: the dict of ``ablation_<name>/results.json``}, "plot": True when
    the folder has ``conversion.png``}."""
    out = []
    for d in sorted(p for p in root.glob(pattern) if (p / "results.json").is_file()):
        ablations = {a.name[len("ablation_"):]: read_json(a / "results.json")
                     for a in sorted(d.glob("ablation_*")) if (a / "results.json").is_file()}
        out.append({"name": d.name, "dir": d, "results": read_json(d / "results.json"), "ablations": ablations,
                    "plot": (d / "conversion.png").is_file()})
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
        b, f, s = _num(b), _num(final.get(c)), _num(swapped.get(c))
        per[c] = {"base": b, "swapped": s, "final": f, "ratio": f / b,
                  "gap_closed": ((math.log(s) - math.log(f)) / (math.log(s) - math.log(b))
                                 if s > b and f > 0 and math.isfinite(s) else None),
                  "plain": _num(plain_final.get(c)) if plain is not None else None}
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


def conversion_key_numbers(claim: dict[str, Any]) -> str:
    """The headline's numbers from :func:`verdict_conversion`'s dict (with "name")."""
    per = "; ".join(f"{corpus} {fmt_num(r['base'])} → {fmt_num(r['swapped'])} → {fmt_num(r['final'])} "
                    f"({fmt_num(r['ratio'])}× the base, gap closed {_pct(r['gap_closed'])}"
                    + (f", plain continued pretraining {fmt_num(r['plain'])}" if r["plain"] is not None else "") + ")"
                    for corpus, r in claim["per_corpus"].items())
    return f"`{claim['name']}`, ppl base → swapped → converted: {per}; {claim['reason']}"


def _command_line(results: dict[str, Any]) -> str | None:
    """The recorded command (argv joined for a shell), None for results written before convert.py recorded it."""
    cmd = results.get("command")
    if not cmd:
        return None
    return cmd if isinstance(cmd, str) else shlex.join(str(a) for a in cmd)


def _pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.1f} %"


def _tokens(n: Any) -> str:
    return f"{int(n):,}" if isinstance(n, (int, float)) and math.isfinite(n) else "—"


def _minutes(seconds: Any) -> str:
    return f"{seconds / 60:.1f}" if isinstance(seconds, (int, float)) and math.isfinite(seconds) else "—"


def render_conversion(name: str, results: dict[str, Any], plot: str | None = None) -> str:
    """One conversion: its phases' perplexities (with tokens and minutes), the ratios to the base and the gap
    closed, the mechanism's parameters, stage 1's transfer error, the command and (``plot``: a path) its figure."""
    phases = results["phases"]
    corpora = list(phases["base"]["ppl"])
    L = [f"### `{name}`: {results.get('model', 'the model')} → `{results.get('target', '?')}`\n"]
    info = [f"data: {results['data']}" if results.get("data") else "",
            f"block size {results['block_size']}" if results.get("block_size") else "",
            f"{results['tokens_per_step']:,} tokens per step" if results.get("tokens_per_step") else "",
            "evaluation tokens: " + ", ".join(f"{c} {n:,}" for c, n in results["eval_tokens"].items())
            if results.get("eval_tokens") else "",
            f"results at revision `{results['git_revision']}`" if results.get("git_revision") else ""]
    if any(info):
        L.append("; ".join(i for i in info if i) + ".\n")
    rows = []
    for phase, title in CONVERSION_PHASES.items():
        p = phases.get(phase)
        if p is not None:
            rows.append([title + (f", {p['steps']} steps" if p.get("steps") is not None else ""),
                         *[fmt_num(_num(p["ppl"].get(c))) for c in corpora], _tokens(p.get("tokens")),
                         _minutes(p.get("seconds"))])
    control = results.get("control")
    if control:
        rows.append(["control: own attention, the same stage 2" + (f", {control['steps']} steps"
                                                                   if control.get("steps") is not None else ""),
                     *[fmt_num(_num(control["ppl"].get(c))) for c in corpora], _tokens(control.get("tokens")),
                     _minutes(control.get("seconds"))])
    L.append(table(["phase", *[f"ppl {c}" for c in corpora], "tokens", "minutes"], rows))
    ratios = results.get("ratio_to_base", {})
    line = (f"\nFinal ({results['final_phase'].replace('stage', 'stage ')}) / base perplexity: "
            + ", ".join(f"{c} **{fmt_num(_num(r.get('ratio')))}×**" for c, r in ratios.items())
            + "; gap closed (share of the swap's log-perplexity gap): "
            + ", ".join(f"{c} {_pct(r.get('gap_closed'))}" for c, r in ratios.items()))
    if any("ratio_to_control" in r for r in ratios.values()):
        line += "; final / control perplexity: " + ", ".join(
            f"{c} {fmt_num(_num(r.get('ratio_to_control')))}×" for c, r in ratios.items())
    line += (f". Stages 1 + 2: {_tokens(results.get('tokens'))} training tokens, "
             f"{_minutes(results.get('seconds'))} min.\n")
    L.append(line)
    for phase in ("stage1", "stage2"):
        params = phases.get(phase, {}).get("mechanism_parameters")
        if params is None:
            continue
        if not params:
            L.append(f"Mechanism parameters {CONVERSION_PHASES[phase]}: none (the mechanism adds no parameters).\n")
            continue
        parts = []
        for leaf, s in params.items():
            sym = "λ" if "lambda" in leaf else "·"
            parts.append(f"`{leaf}` ({s.get('numel', '?')} values): mean |{sym}| {fmt_num(_num(s.get('mean_abs')))}, "
                         f"mean {fmt_num(_num(s.get('mean')))}, min {fmt_num(_num(s.get('min')))}, "
                         f"max {fmt_num(_num(s.get('max')))}")
        L.append(f"Mechanism parameters {CONVERSION_PHASES[phase]}: " + "; ".join(parts) + ".\n")
    errors = phases.get("stage1", {}).get("relative_error")
    if errors:
        L.append("Stage 1's per-layer relative transfer error (1.0 = no better than an all-zero output), mean over "
                 "layers (worst layer): " + ", ".join(
                     f"{label.replace('_', ' ')} {fmt_num(statistics.fmean(finite(v)) if finite(v) else None)} "
                     f"({fmt_num(max(finite(v)) if finite(v) else None)})" for label, v in errors.items()) + ".\n")
    cmd = _command_line(results)
    L.append("```bash\n" + cmd + "\n```\n" if cmd else "Command: command not recorded (results.json predates it).\n")
    if plot:
        L.append(f"![conversion.png]({plot})\n")
    return "\n".join(L)


def render_ablations(results: dict[str, Any], ablations: dict[str, dict[str, Any]]) -> str:
    """The conversion (stage 1 + stage 2) against each ``ablation_<name>`` of it: tokens, final perplexity and the
    ratio to the base per corpus; then the ablations' commands. '' without ablations."""
    if not ablations:
        return ""
    corpora = list(results["phases"]["base"]["ppl"])

    def row(method: str, r: dict[str, Any]) -> list[str]:
        final, base = final_ppl(r), r["phases"]["base"]["ppl"]
        return [method, _tokens(r.get("tokens")), *[fmt_num(_num(final.get(c))) for c in corpora],
                *[fmt_num(_num(final.get(c)) / _num(base.get(c))) + "×" for c in corpora]]

    rows = [row("stage 1 + stage 2 (the conversion)", results)]
    rows += [row(f"`ablation_{n}`" + (" (plain continued pretraining)" if n == PLAIN_ABLATION else ""), r)
             for n, r in ablations.items()]
    header = ["method", "tokens", *[f"final ppl {c}" for c in corpora], *[f"ratio to base {c}" for c in corpora]]
    cmds = "\n".join(f"# ablation_{n}\n{_command_line(r) or '# command not recorded'}" for n, r in ablations.items())
    return ("Ablations:\n\n" + table(header, rows) + "\n\n```bash\n" + cmds + "\n```\n")


def render_conversions(conversions: Sequence[dict[str, Any]], claim: dict[str, Any] | None,
                       plots: dict[str, str] | None = None) -> str:
    """The report's section on the conversions; ``claim`` is :func:`verdict_conversion`'s dict (with "name") for
    the one claim 4 is judged on, ``plots`` {conversion name: its figure's path relative to the report}."""
    plots = plots or {}
    L = ["## Conversion of SmolLM2 (recipes/convert.py)\n",
         "SCIENCE.md's claim 4 as it now reads: swapping a pretrained model to polynomial attention raises its "
         "perplexity; conversion (attention transfer, then fine-tuning) recovers most of that gap, and much more than "
         "plain continued pretraining at the same budget. Rendered from the committed results of `recipes/convert.py` "
         f"(`docs/results/{CONVERSION_GLOB}/results.json` and their `ablation_<name>/results.json`), not from this "
         "script's jobs. Held-out perplexity on every evaluation corpus of the recipe: the base model with its own "
         "attention, right after the swap, after stage 1 (attention transfer: the new attention learns the old one, "
         "layer by layer, the rest frozen) and after stage 2 (fine-tuning). *Gap closed* = share of the swap's "
         f"log-perplexity gap the conversion closed. **yes** needs the final perplexity within {NEAR_BASE_PPL_RATIO:g}× "
         "the base's on every corpus and, when a plain continued pretraining ablation "
         f"(`ablation_{PLAIN_ABLATION}`) exists, lower than its final perplexity on every corpus; without that "
         "ablation the verdict is at most **partly**. Each conversion and ablation is **one run (one seed)**: "
         "unlike the other claims, no spread over seeds is measured yet, so the verdict rests on one run per arm "
         "(the gaps here are large, but a 3-seed rerun is still owed).\n"]
    for c in conversions:
        L.append(render_conversion(c["name"], c["results"], plots.get(c["name"])))
        abl = render_ablations(c["results"], c["ablations"])
        if abl:
            L.append(abl)
    if claim:
        L.append(f"**Verdict (claim 4, on `{claim['name']}`, one seed): {claim['verdict']}** — {claim['reason']}.\n")
    return "\n".join(L)


# ============================================================================================= small helpers


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10, check=False)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def read_json(path: Path) -> Any:
    """JSON with NaN/Infinity allowed (the recipe writes them for diverged runs)."""
    return json.loads(path.read_text())


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(data), indent=1) + "\n")


def _clean(x: Any) -> Any:
    """NaN/inf -> None/strings so the file is strict JSON."""
    if isinstance(x, float):
        if math.isnan(x):
            return None
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return x
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def _num(x: Any) -> float:
    """A number from JSON that may hold None / 'inf' / NaN."""
    if x is None:
        return math.nan
    if isinstance(x, str):
        return {"inf": math.inf, "-inf": -math.inf}.get(x, math.nan)
    return float(x)


def read_log(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def job_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
                "MPLBACKEND": "Agg"})
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# ============================================================================================= the plan


@dataclass
class Step:
    """One subprocess: ``argv`` run in the repository root; done when ``done`` exists and ``stamp`` records the
    same argv. ``cleanup``: paths removed after success (checkpoints, big weights)."""

    argv: list[str]
    folder: Path
    done: Path
    cleanup: list[Path] = field(default_factory=list)
    fresh: bool = True  # remove a stale folder before running (recipe output folders)

    @property
    def stamp(self) -> Path:
        return self.folder / "reproduce_cmd.json"

    def cached(self) -> bool:
        if not self.done.is_file() or not self.stamp.is_file():
            return False
        try:
            return read_json(self.stamp).get("argv") == self.argv
        except ValueError:
            return False


@dataclass
class Job:
    name: str
    steps: list[Step]
    weight: float  # rough cost, for longest-first scheduling


def recipe_argv(config: str, extra: Sequence[str]) -> list[str]:
    return [sys.executable, RECIPE, "--config", f"{CONFIGS}/{config}", *extra]


def scratch_run_dir(runs: Path, mech: str, seed: int) -> Path:
    return runs / "scratch" / f"{mech}_seed{seed}"


def smol_run_dir(runs: Path, seed: int) -> Path:
    return runs / "smollm2_polynomial" / f"seed{seed}"


def scratch_train_argv(scale: Scale, mech: str, seed: int, out: Path) -> list[str]:
    config, extra = MECHS[mech]
    s = scale
    return recipe_argv(config, [
        *extra, "--config_overrides", s.gpt2_overrides, "--block_size", str(s.gpt2_block),
        "--per_device_train_batch_size", str(s.gpt2_batch), "--per_device_eval_batch_size", "16",
        "--max_train_steps", str(s.gpt2_steps), "--num_warmup_steps", str(s.gpt2_warmup),
        "--eval_steps", str(s.gpt2_eval_steps), "--checkpointing_steps", str(s.gpt2_steps),
        "--with_tracking", "false", "--disable_progress_bar", "true", "--seed", str(seed),
        "--output_dir", str(out), "--overwrite_output_dir", "true",
        *(["--max_eval_samples", str(s.gpt2_max_eval_samples)] if s.gpt2_max_eval_samples else [])])


def smol_train_argv(scale: Scale, seed: int, out: Path) -> list[str]:
    s = scale
    extra = ["--block_size", str(s.smol_block), "--per_device_train_batch_size", str(s.smol_batch),
             "--per_device_eval_batch_size", "8", "--max_train_steps", str(s.smol_steps),
             "--num_warmup_steps", str(s.smol_warmup), "--eval_steps", str(s.smol_eval_steps),
             "--checkpointing_steps", str(s.smol_steps), "--with_tracking", "false", "--disable_progress_bar", "true",
             "--seed", str(seed), "--output_dir", str(out), "--overwrite_output_dir", "true"]
    if s.smol_max_eval_samples:
        extra += ["--max_eval_samples", str(s.smol_max_eval_samples)]
    return recipe_argv("smollm2_polynomial.yaml", extra)


def self_argv(job: str, **kwargs: Any) -> list[str]:
    return [sys.executable, "benchmarks/reproduce.py", "--job", job, "--job-args", json.dumps(kwargs, sort_keys=True)]


def plan(claims: set[int], seeds: list[int], scale: Scale, runs: Path) -> list[Job]:
    """Every job the requested claims need."""
    jobs: list[Job] = []
    if 4 in claims:
        base = runs / "smollm2_polynomial" / "sdpa_baseline"
        jobs.append(Job("claim4 sdpa baseline", [Step(self_argv("sdpa_ppl", scale=scale.name, out=str(base / "ppl.json")),
                                                      base, base / "ppl.json", fresh=False)], 3))
        for seed in seeds:
            d = smol_run_dir(runs, seed)
            jobs.append(Job(f"claim4 smollm2 polynomial seed {seed}",
                            [Step(smol_train_argv(scale, seed, d), d, d / "results.json",
                                  cleanup=[d / "checkpoints", d / "model.safetensors"])], 10))
    mechs: list[str] = []
    if claims & {2, 5}:
        mechs += ["softmax", "dagpam"]
    if claims & {3, 5}:
        mechs += ["poly_scaled"]
    if 3 in claims:
        mechs += ["poly_unscaled"]
    probed = ({"softmax", "dagpam", "poly_scaled"} if claims & {2, 5} else set()) | \
        ({"poly_scaled", "poly_unscaled"} if 3 in claims else set())
    for mech in mechs:
        for seed in seeds:
            d = scratch_run_dir(runs, mech, seed)
            steps = [Step(scratch_train_argv(scale, mech, seed, d), d, d / "results.json", cleanup=[d / "checkpoints"])]
            if mech in probed:
                p = d / "probe" / "probe.json"
                steps.append(Step(self_argv("probe", scale=scale.name, model=str(d), out=str(p)), p.parent, p,
                                  fresh=False))
            jobs.append(Job(f"scratch {mech} seed {seed}", steps, 6))
    if 1 in claims:
        for seed in seeds:
            d = runs / "claim1"
            out = d / f"seed{seed}.json"
            jobs.append(Job(f"claim1 seed {seed}", [Step(self_argv("claim1", scale=scale.name, seed=seed, out=str(out)),
                                                         d / f"seed{seed}", out, fresh=False)], 1))
    return jobs


# ============================================================================================= the scheduler


class Runner:
    def __init__(self, runs: Path, jobs_at_once: int) -> None:
        self.runs, self.width = runs, jobs_at_once
        self.lock = threading.Lock()
        self.report: dict[str, dict[str, Any]] = {}

    def log(self, text: str) -> None:
        with self.lock:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    def run_step(self, step: Step) -> tuple[bool, float, bool]:
        """(ok, seconds, cached)."""
        if step.cached():
            return True, 0.0, True
        if step.fresh and step.folder.exists():
            if self.runs.resolve() not in step.folder.resolve().parents:
                raise RuntimeError(f"refusing to remove {step.folder}: not under {self.runs}")
            shutil.rmtree(step.folder)
        step.folder.mkdir(parents=True, exist_ok=True)
        step.done.unlink(missing_ok=True)
        write_json(step.stamp, {"argv": step.argv, "started": time.strftime("%Y-%m-%d %H:%M:%S")})
        start = time.perf_counter()
        with open(step.folder / "reproduce_stdout.log", "w") as log:
            rc = subprocess.run(step.argv, cwd=REPO, env=job_env(), stdout=log, stderr=subprocess.STDOUT,
                                check=False).returncode
        seconds = time.perf_counter() - start
        ok = rc == 0 and step.done.is_file()
        stamp = read_json(step.stamp)
        stamp.update({"rc": rc, "seconds": seconds, "ok": ok})
        write_json(step.stamp, stamp)
        if ok:
            for path in step.cleanup:
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        return ok, seconds, False

    def run_job(self, job: Job) -> dict[str, Any]:
        self.log(f"start  {job.name}")
        total, all_cached = 0.0, True
        for step in job.steps:
            ok, seconds, cached = self.run_step(step)
            total += seconds
            all_cached &= cached
            if not ok:
                self.log(f"FAILED {job.name}: see {step.folder / 'reproduce_stdout.log'}")
                return {"ok": False, "seconds": total, "cached": False}
        self.log(f"done   {job.name} ({'cached' if all_cached else f'{total:.0f} s'})")
        return {"ok": True, "seconds": total, "cached": all_cached}

    def run(self, jobs: list[Job]) -> dict[str, dict[str, Any]]:
        order = sorted(jobs, key=lambda j: -j.weight)
        with ThreadPoolExecutor(max_workers=self.width) as pool:
            futures: dict[Future, Job] = {pool.submit(self.run_job, j): j for j in order}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    self.report[futures[f].name] = f.result()
        return self.report


# ============================================================================================= job bodies
# Run in a subprocess (``--job``), one thread.


def _scale(name: str) -> Scale:
    return QUICK if name == "quick" else FULL


def _yaml(config: str) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((REPO / CONFIGS / config).read_text())


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

    sc = _scale(scale)
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

    sc = _scale(scale)
    torch.set_num_threads(1)
    cfg = _yaml("gpt2_scratch_softmax.yaml")
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

    sc = _scale(scale)
    torch.set_num_threads(1)
    cfg = _yaml("smollm2_polynomial.yaml")
    texts = load_lm_texts(dataset_name=cfg["dataset_name"], validation_split_percentage=cfg["validation_split_percentage"],
                          max_eval_samples=sc.smol_max_eval_samples)
    tok = AutoTokenizer.from_pretrained(smollm2_path())
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(smollm2_path(), attn_implementation="sdpa").eval()
    r = perplexity(model, tok, texts.validation, max_length=sc.smol_block, batch_size=8, progress=False)
    write_json(Path(out), {"attn": "sdpa", **r.to_dict(), "documents_validation": len(texts.validation)})


JOBS = {"claim1": job_claim1, "probe": job_probe, "sdpa_ppl": job_sdpa_ppl}


# ============================================================================================= collecting


def scratch_run(runs: Path, mech: str, seed: int) -> dict[str, Any] | None:
    d = scratch_run_dir(runs, mech, seed)
    if not (d / "results.json").is_file():
        return None
    res = read_json(d / "results.json")
    log = read_log(d / "log.jsonl")
    losses = [(r["step"], _num(r["loss"])) for r in log if "loss" in r]
    evals = [(e["step"], _num(e.get("eval/ppl"))) for e in res.get("evaluations", [])]
    health = loss_health([v for _, v in losses])
    first, final = _num(res.get("first_eval")), _num(res.get("final_eval"))
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

        cfg = _yaml("gpt2_scratch_softmax.yaml")
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


def deep_hidden_states(layers: int) -> list[int]:
    """Hidden-state indices of the deep half of the blocks: outputs of layers L//2+1 .. L (1-based; index L has
    the final norm applied, as Transformers returns it)."""
    return list(range(layers // 2 + 1, layers + 1))


def collect(claims: set[int], seeds: list[int], runs: Path) -> dict[str, Any]:
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
                                 "losses": [(r["step"], _num(r["loss"])) for r in log if "loss" in r]}
            else:
                c4["runs"][s] = None
        data["claim4"] = c4
        data["conversions"] = load_conversions(CONVERSIONS_DIR)
    return data


# ============================================================================================= analysis


def analyse(claims: set[int], seeds: list[int], data: dict[str, Any], scale: Scale) -> dict[str, Any]:
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
    if 2 in claims:
        soft, dag = got("softmax"), got("dagpam")
        deep = deep_hidden_states(layers)

        def deep_mean(r: dict[str, Any], key: str) -> float:
            if not r.get("probe"):
                return math.nan
            vals = r["probe"]["per_layer"][key]
            return statistics.fmean(_num(vals[i]) for i in deep)

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
        runs3 = {m: got(m) for m in ("poly_scaled", "poly_unscaled", "softmax")}
        c3 = {m: [{k: r[k] for k in ("seed", "first_ppl", "final_ppl", "nonfinite_steps", "max_spike", "max_raw_spike",
                                     "blew_up", "stable")}
                  for r in rs] for m, rs in runs3.items()}
        c3.update(verdict_claim3(c3["poly_scaled"], c3["poly_unscaled"]))
        c3["probe_means"] = {m: {k: [statistics.fmean(_num(x) for x in r["probe"]["per_layer"][k]) for r in rs if r.get("probe")]
                                 for k in ("frobenius_ratio", "entropy", "sink_strength", "max_weight")}
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
            rows4.append({"seed": s, "nll_swapped": _num(ev[0]["eval/nll"]), "ppl_swapped": _num(ev[0]["eval/ppl"]),
                          "nll_final": _num(ev[-1]["eval/nll"]), "ppl_final": _num(ev[-1]["eval/ppl"]),
                          "steps": r["steps"], "tokens_seen": r["tokens_seen"], "seconds": r["seconds"],
                          "curve": [(e["step"], _num(e["eval/ppl"])) for e in ev]})
        c4: dict[str, Any] = {"rows": rows4, "base": base}
        if base and rows4:
            v = verdict_claim4(base["nll"], [r["nll_swapped"] for r in rows4], [r["nll_final"] for r in rows4])
            c4.update(v)
        else:
            c4["verdict"] = "not run"
        conv = conversion_for_claim4(data.get("conversions", []))
        if conv is not None:  # the committed recipes/convert.py results (claim 4 as it now reads)
            c4["conversion"] = {"name": conv["name"], **verdict_conversion(conv["results"], conv["ablations"])}
        out["claim4"] = c4
    if 5 in claims:
        groups = {m: [r for r in got(m) if r.get("probe")] for m in ("softmax", "poly_scaled", "dagpam")}
        per_seed = {m: {meas: [statistics.fmean(_num(x) for x in r["probe"]["per_layer"][meas]) for r in rs]
                        for meas in ("sink_strength", "entropy")} for m, rs in groups.items()}
        per_layer = {m: {meas: [[_num(x) for x in r["probe"]["per_layer"][meas]] for r in rs]
                         for meas in ("sink_strength", "entropy")} for m, rs in groups.items()}
        pairs = {}
        for a, b in (("softmax", "poly_scaled"), ("softmax", "dagpam"), ("poly_scaled", "dagpam")):
            pairs[f"{a} vs {b}"] = {meas: measurable_difference(per_seed[a][meas], per_seed[b][meas])
                                    for meas in ("sink_strength", "entropy")}
        conventions = {m: sorted({r["probe"]["weights_convention"] for r in rs}) for m, rs in groups.items()}
        c5 = {"per_seed_model_mean": per_seed, "per_layer": per_layer, "pairs": pairs, "conventions": conventions,
              "verdict": verdict_claim5(pairs) if all(groups.values()) else "not run"}
        out["claim5"] = c5
    return out


# ============================================================================================= plots


def _fig(rows: int, cols: int, w: float = 5.0, h: float = 3.6) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(w * cols, h * rows), layout="constrained")


COLORS = {"softmax": "tab:blue", "dagpam": "tab:green", "poly_scaled": "tab:orange", "poly_unscaled": "tab:red"}


def _band(ax: Any, xs: list[float], curves: list[list[float]], label: str, color: str) -> None:
    """Mean line and ±std band over seeds (non-finite points skipped)."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))

    arr = np.array([[v if v is not None and math.isfinite(v) else np.nan for v in c] for c in curves], dtype=float)
    if arr.size == 0:
        return
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            m = np.nanmean(arr, 0)
            s = np.nanstd(arr, 0, ddof=1) if arr.shape[0] > 1 else np.zeros_like(m)
    s = np.nan_to_num(s)
    ax.plot(xs, m, label=label, color=color, marker="o", ms=3)
    ax.fill_between(xs, m - s, m + s, color=color, alpha=0.2)


def plot_all(claims: set[int], analysis: dict[str, Any], data: dict[str, Any], out: Path) -> dict[int, list[str]]:
    files: dict[int, list[str]] = {}
    if "claim1" in analysis and analysis["claim1"]["rows"]:
        fig = _fig(1, 1, 8, 3.8)
        ax = fig.add_subplot()
        keys = list(analysis["claim1"]["per_pair"])
        for i, k in enumerate(keys):
            vals = analysis["claim1"]["per_pair"][k]["values"]
            ax.scatter([i] * len(vals), [max(v, 1e-9) for v in vals], color="tab:green", zorder=3)
            ctx = analysis["claim1"]["per_pair"][k]["eager_vs_sdpa"]
            ax.scatter([i + 0.15] * len(ctx), [max(v, 1e-9) for v in ctx], color="gray", marker="x", zorder=3)
        ax.axhline(LOGIT_TOL, color="red", ls="--", label=f"tolerance {LOGIT_TOL:g}")
        ax.scatter([], [], color="tab:green", label="daGPAM λ=0 vs base (one dot per seed)")
        ax.scatter([], [], color="gray", marker="x", label="Transformers' eager vs sdpa (context)")
        ax.set_xticks(range(len(keys)), [k.replace("/", "\n") for k in keys], fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("max |Δ logit| (0 drawn at 1e-9)")
        ax.set_title("Claim 1: daGPAM with λ=0 against the base model, fp32")
        ax.legend(fontsize=7)
        fig.savefig(out / "claim1_logit_diff.png", dpi=110)
        files[1] = ["claim1_logit_diff.png"]
    sc = data.get("scratch", {})
    if "claim2" in analysis and analysis["claim2"]["verdict"] != "not run":
        fig = _fig(1, 3, 4.6, 3.6)
        ax = fig.add_subplot(1, 3, 1)
        for m in ("softmax", "dagpam"):
            rs = [r for r in sc[m].values() if r]
            if rs:
                _band(ax, [s for s, _ in rs[0]["evals"]], [[v for _, v in r["evals"]] for r in rs], MECH_TITLES[m], COLORS[m])
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("validation perplexity")
        ax.set_title("validation perplexity (mean ± std)")
        ax.legend(fontsize=7)
        for j, (key, title) in enumerate((("rank_collapse_residual", "rank-collapse residual ‖X−1x̄ᵀ‖/‖X‖ (higher = less collapse)"),
                                          ("token_cosine", "mean token cosine (lower = less collapse)"))):
            ax = fig.add_subplot(1, 3, j + 2)
            for m in ("softmax", "dagpam"):
                rs = [r for r in sc[m].values() if r and r.get("probe")]
                if rs:
                    curves = [[_num(x) for x in r["probe"]["per_layer"][key]] for r in rs]
                    _band(ax, list(range(len(curves[0]))), curves, MECH_TITLES[m], COLORS[m])
            ax.set_xlabel("hidden state (0 = embeddings, last = after final norm)")
            ax.set_title(title, fontsize=8)
            ax.legend(fontsize=7)
        fig.savefig(out / "claim2_ppl_rank_collapse.png", dpi=110)
        files[2] = ["claim2_ppl_rank_collapse.png"]
    if "claim3" in analysis and analysis["claim3"]["verdict"] != "not run":
        fig = _fig(1, 2, 5.5, 3.8)
        ax = fig.add_subplot(1, 2, 1)
        for m in ("poly_scaled", "poly_unscaled", "softmax"):
            rs = [r for r in sc.get(m, {}).values() if r]
            for i, r in enumerate(rs):
                xs = [s for s, _ in r["losses"]]
                ys = [v if math.isfinite(v) else math.nan for _, v in r["losses"]]
                ax.plot(xs, ys, color=COLORS[m], lw=1, alpha=0.8, ls="-" if m != "softmax" else ":",
                        label=MECH_TITLES[m] + (" (reference)" if m == "softmax" else "") if i == 0 else None)
                bad = [s for s, v in r["losses"] if not math.isfinite(v)]
                if bad:
                    ax.scatter(bad, [ax.get_ylim()[1]] * len(bad), marker="x", color=COLORS[m])
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (nats/token), one line per seed")
        ax.set_title("Claim 3: training loss")
        ax.legend(fontsize=7)
        ax = fig.add_subplot(1, 2, 2)
        for m in ("poly_scaled", "poly_unscaled", "softmax"):
            rs = [r for r in sc.get(m, {}).values() if r]
            if rs:
                _band(ax, [s for s, _ in rs[0]["evals"]], [[v for _, v in r["evals"]] for r in rs], MECH_TITLES[m], COLORS[m])
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("validation perplexity (mean ± std)")
        ax.legend(fontsize=7)
        fig.savefig(out / "claim3_loss_curves.png", dpi=110)
        files[3] = ["claim3_loss_curves.png"]
    if "claim4" in analysis and analysis["claim4"]["verdict"] != "not run":
        c4 = analysis["claim4"]
        fig = _fig(1, 2, 5.0, 3.8)
        ax = fig.add_subplot(1, 2, 1)
        for r in c4["rows"]:
            xs = [s for s, _ in r["curve"]]
            ax.plot(xs, [v for _, v in r["curve"]], marker="o", label=f"polynomial, seed {r['seed']}")
        ax.axhline(c4["base"]["ppl"], color="black", ls="--", label="before the swap (sdpa)")
        ax.set_yscale("log")
        ax.set_xlabel("continued-pretraining step")
        ax.set_ylabel("validation perplexity")
        ax.set_title("Claim 4: SmolLM2 swapped to polynomial")
        ax.legend(fontsize=7)
        ax = fig.add_subplot(1, 2, 2)
        for r in c4["rows"]:
            ax.plot([s for s, _ in data["claim4"]["runs"][r["seed"]]["losses"]],
                    [v for _, v in data["claim4"]["runs"][r["seed"]]["losses"]], label=f"seed {r['seed']}")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (nats/token)")
        ax.legend(fontsize=7)
        fig.savefig(out / "claim4_smollm2_polynomial.png", dpi=110)
        files[4] = ["claim4_smollm2_polynomial.png"]
    if "claim5" in analysis and analysis["claim5"]["verdict"] != "not run":
        c5 = analysis["claim5"]
        fig = _fig(1, 2, 5.0, 3.8)
        for j, (meas, title) in enumerate((("sink_strength", "sink strength (weight on token 0)"),
                                           ("entropy", "attention entropy (nats)"))):
            ax = fig.add_subplot(1, 2, j + 1)
            for m in ("softmax", "poly_scaled", "dagpam"):
                curves = c5["per_layer"][m][meas]
                if curves:
                    _band(ax, list(range(len(curves[0]))), curves, MECH_TITLES[m], COLORS[m])
            ax.set_xlabel("layer")
            ax.set_title(f"Claim 5: {title}, mean ± std over seeds", fontsize=9)
            ax.legend(fontsize=7)
        fig.savefig(out / "claim5_sink_entropy.png", dpi=110)
        files[5] = ["claim5_sink_entropy.png"]
    return files


# ============================================================================================= report


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _yn(flag: bool) -> str:
    return "yes" if flag else "no"


def headline(claims: set[int], a: dict[str, Any]) -> list[list[str]]:
    rows = []
    if 1 in claims:
        c = a["claim1"]
        worst = {m: max((v["max"] for v in c["per_pair"].values() if v["model"] == m and v["values"]), default=math.nan)
                 for m in ("smollm2", "tiny_gpt2", "tiny_llama")}
        rows.append(["1. daGPAM λ=0 = base logits (≤1e-5, fp32)", c["verdict"],
                     "worst max |Δlogit| over seeds and both backends: " + ", ".join(
                         f"{m} {fmt_num(v)}" for m, v in worst.items())
                     + (" (bit-identical)" if all(v == 0 for v in worst.values()) else "")])
    if 2 in claims:
        c = a["claim2"]
        rows.append(["2. from scratch: daGPAM ppl no worse than softmax, less rank collapse in deep layers", c["verdict"],
                     f"val ppl daGPAM {fmt_pm(c['ppl']['dagpam'])} vs softmax {fmt_pm(c['ppl']['softmax'])} "
                     f"(no worse: {_yn(c['ppl_no_worse'])}); deep residual {fmt_pm(c['residual_deep']['dagpam'])} vs "
                     f"{fmt_pm(c['residual_deep']['softmax'])} (higher: {_yn(c['higher_residual'])}); deep token cosine "
                     f"{fmt_pm(c['cosine_deep']['dagpam'])} vs {fmt_pm(c['cosine_deep']['softmax'])} "
                     f"(lower: {_yn(c['lower_cosine'])})"])
    if 3 in claims:
        c = a["claim3"]
        rows.append(["3. polynomial x³/√N stable; unscaled x³ diverges or much worse", c["verdict"],
                     f"final val ppl scaled {fmt_pm([r['final_ppl'] for r in c['poly_scaled']])} (stable in "
                     f"{sum(r['stable'] for r in c['poly_scaled'])}/{len(c['poly_scaled'])} seeds), unscaled "
                     f"{fmt_pm([r['final_ppl'] for r in c['poly_unscaled']])} (unstable in "
                     f"{c['unscaled_diverged_runs']}/{len(c['poly_unscaled'])}); ratio "
                     f"{fmt_num(c['ppl_ratio_unscaled_over_scaled'])}×"])
    if 4 in claims and a["claim4"].get("conversion"):
        c, v = a["claim4"], a["claim4"]["conversion"]
        rows.append(["4. swap to polynomial raises ppl; conversion recovers most of the gap, more than plain "
                     "continued pretraining", v["verdict"],
                     conversion_key_numbers(v) + (f"; older {c['rows'][0]['steps']}-step continued pretraining runs: "
                                                  f"{c['verdict']}" if c.get("rows") else "")])
    elif 4 in claims:
        c = a["claim4"]
        if c["verdict"] == "not run":
            rows.append(["4. swap to polynomial raises ppl; continued pretraining recovers most of the gap", "not run", ""])
        else:
            rows.append(["4. swap to polynomial raises ppl; continued pretraining recovers most of the gap", c["verdict"],
                         f"SmolLM2 ppl {fmt_num(c['base']['ppl'])} (sdpa) → {fmt_pm([r['ppl_swapped'] for r in c['rows']])} "
                         f"(swapped) → {fmt_pm([r['ppl_final'] for r in c['rows']])} after {c['rows'][0]['steps']} steps; "
                         f"gap recovered (nats) {fmt_pm([100 * x for x in c['recovered']], 2)} %; final/base ppl "
                         f"{fmt_pm(c['final_over_base_ppl'])}×"])
    if 5 in claims:
        c = a["claim5"]
        n_ok = sum(d["measurable"] for p in c["pairs"].values() for d in p.values())
        n_all = sum(len(p) for p in c["pairs"].values())
        ps = c["per_seed_model_mean"]
        rows.append(["5. sink strength and entropy differ between softmax, polynomial, daGPAM", c["verdict"],
                     f"{n_ok}/{n_all} (pair, measure) differences measurable; sink "
                     + ", ".join(f"{m} {fmt_pm(ps[m]['sink_strength'])}" for m in ps)
                     + "; entropy " + ", ".join(f"{m} {fmt_pm(ps[m]['entropy'])}" for m in ps)])
    return rows


def render_md(claims: set[int], seeds: list[int], scale: Scale, a: dict[str, Any], data: dict[str, Any],
              plots: dict[int, list[str]], meta: dict[str, Any], md_path: Path, out: Path,
              rerender: dict[str, Any] | None = None) -> str:
    """The Markdown report. ``rerender`` (from :func:`render_only`): the report is re-rendered from a committed
    ``reproduce.json`` ({"git_revision", "date": of this rendering; "missing": the parts that file cannot
    reproduce; "kept_plots": claims whose committed PNG is linked without being re-drawn}); ``meta`` is then the
    file's, and ``data`` may lack "scratch" (older files), in which case the parts that need it say so."""
    rel = os.path.relpath(out.resolve(), md_path.resolve().parent)
    img = lambda name: f"![{name}]({rel}/{name})"  # noqa: E731
    s = scale
    kept_plots = (rerender or {}).get("kept_plots", {})
    has_runs = "scratch" in data  # the per-run summaries (losses, probes, ...): not in an older reproduce.json

    def plot_line(claim: int) -> None:
        if claim in plots:
            L.append(img(plots[claim][0]) + "\n")
            if claim in kept_plots:
                L.append(f"*(Drawn by the run that wrote reproduce.json and not re-drawn here: "
                         f"{kept_plots[claim]}.)*\n")
        elif rerender is not None and claim in rerender.get("missing_plots", {}):
            L.append(f"*(Plot not available: {rerender['missing_plots'][claim]}.)*\n")

    L: list[str] = []
    L.append("# Reproducing SCIENCE.md's claims (small scale)\n")
    cr = meta.get("computed_run")
    if rerender is not None and meta["cached_jobs"] != 0:
        timing = (f"reproduce.json itself was written by a re-render in {meta['wall_seconds'] / 60:.1f} min with "
                  f"{meta['cached_jobs']} of {meta['jobs']} jobs from the cache; "
                  + (f"the run that computed them took **{cr['wall_seconds'] / 60:.1f} min** of wall time (finished "
                     f"{cr['date']}) at revision `{cr['git_revision']}` ({cr['job_seconds_total'] / 60:.1f} min of "
                     f"single-thread subprocess time, {cr['jobs_at_once']} at a time)" if cr else
                     f"the jobs took {meta['job_seconds_total'] / 60:.1f} min of single-thread subprocess time when "
                     f"they were computed"))
    elif meta["cached_jobs"] == 0:
        timing = (f"wall time of the run: **{meta['wall_seconds'] / 60:.1f} min** ({meta['jobs']} jobs, "
                  f"{meta['jobs_at_once']} at a time; {meta['job_seconds_total'] / 60:.1f} min of single-thread "
                  f"subprocess time in all)")
    else:
        timing = (f"this file was re-rendered in {meta['wall_seconds'] / 60:.1f} min with {meta['cached_jobs']} of "
                  f"{meta['jobs']} jobs from the cache; "
                  + (f"the run that computed them took **{cr['wall_seconds'] / 60:.1f} min** of wall time (finished "
                     f"{cr['date']}) at revision `{cr['git_revision']}` ({cr['job_seconds_total'] / 60:.1f} min of "
                     f"single-thread subprocess time, {cr['jobs_at_once']} at a time)" if cr else
                     f"the jobs took {meta['job_seconds_total'] / 60:.1f} min of single-thread subprocess time when "
                     f"they were computed"))
    if rerender is None:
        L.append(f"Generated by `benchmarks/reproduce.py` at git revision `{meta['git_revision']}` on {meta['date']} "
                 f"({meta['machine']}, shared with other work while it ran). Scale: **{s.name}**; seeds "
                 f"{', '.join(map(str, seeds))}; {timing}.\n")
    else:
        L.append(f"Re-rendered by `benchmarks/reproduce.py --render-only` at git revision `{rerender['git_revision']}` "
                 f"on {rerender['date']} from the committed [`reproduce.json`]({rel}/reproduce.json): no job was run or "
                 f"read from a cache (claim 4's conversion results are read from their committed "
                 f"`docs/results/{CONVERSION_GLOB}/results.json` files). The numbers are those of the run recorded in "
                 f"reproduce.json, written by `benchmarks/reproduce.py` at git revision `{meta['git_revision']}` on "
                 f"{meta['date']} ({meta['machine']}, shared with other work while it ran). Scale: **{s.name}**; "
                 f"seeds {', '.join(map(str, seeds))}; {timing}.\n")
        if rerender.get("missing"):
            L.append("**Not in this reproduce.json, so not shown** (it predates storing the runs' summaries; the "
                     "rendering made from the runs themselves is in the history of `docs/results.md`): "
                     + "; ".join(rerender["missing"]) + ".\n")
    if s.name == "quick":
        L.append("**This is a `--quick` smoke test: toy models and a handful of steps. The verdicts below say nothing "
                 "about the claims.**\n")
    L.append("Every number is a mean ± sample standard deviation (n−1) over the seeds, unless it says otherwise. "
             "All the numbers are in [`reproduce.json`](" + rel + "/reproduce.json).\n")
    L.append("## Headline\n")
    L.append(table(["claim (SCIENCE.md)", "reproduced", "key numbers"], headline(claims, a)))
    L.append("\nVerdicts: **yes** = every part of the claim held under the test written next to it; **partly** = "
             "some parts held; **no** = none held. These are small CPU runs (minutes of training, at most about 100k "
             "training tokens per run); a \"no\" or \"partly\" at this scale is a result about this scale, not a refutation of the paper.\n")

    if 1 in claims:
        c = a["claim1"]
        L.append("## Claim 1: daGPAM with λ = 0 gives the base model's logits\n")
        L.append(f"Test: max |Δlogit| over every real (non-padded) token ≤ {LOGIT_TOL:g} in fp32. SmolLM2-135M (the real "
                 f"checkpoint, dequantised from Q4_1) on {s.claim1_texts} real news articles per seed (the seed picks "
                 f"the articles; each cut to {s.claim1_tokens} tokens, right-padded in one batch); tiny random GPT-2 "
                 f"and Llama (GQA 4/2 heads; the seed picks the init and the tokens; 3 sequences of 48, one "
                 f"right-padded). daGPAM's `fused` path (two SDPA calls) is compared with Transformers' `sdpa`, its "
                 f"`reference` path (explicit weights) with Transformers' `eager`. The last column is how far "
                 f"Transformers' own `eager` and `sdpa` are apart on the same input, for scale.\n")
        rows = []
        for k, v in c["per_pair"].items():
            rows.append([v["model"], v["pair"].replace("_", " "), fmt_pm(v["values"]), fmt_num(v["max"]),
                         _yn(v["within_tol"]), fmt_pm(v["max_abs_logit"]), fmt_pm(v["eager_vs_sdpa"])])
        L.append(table(["model", "pair", "max |Δlogit| (mean ± std over seeds)", "worst seed", "≤ 1e-5",
                        "max |logit|", "eager vs sdpa (context)"], rows))
        L.append(f"\n**Verdict: {c['verdict']}.**\n")
        plot_line(1)

    if 2 in claims or 3 in claims or 5 in claims:
        L.append("## The from-scratch runs (claims 2, 3, 5)\n")
        L.append(f"A GPT-2 (`{s.gpt2_overrides}`, GPT-2 tokenizer) trained from scratch by `recipes/continue_pretrain.py` "
                 f"on the offline news text (Lee corpus, 270 training / 30 validation articles), same data order, budget "
                 f"and schedule for every mechanism: {s.gpt2_steps} steps of {s.gpt2_batch} × {s.gpt2_block} tokens "
                 f"({s.gpt2_steps * s.gpt2_batch * s.gpt2_block:,} tokens, AdamW lr 1e-3 with {s.gpt2_warmup} warmup "
                 f"steps then cosine, weight decay 0.1, clipping 1.0). The recipe configs are the "
                 f"`gpt2_scratch_*.yaml` files, shrunk by command-line overrides to fit the CPU budget (the configs "
                 f"themselves say 4 × 256 wide, 300 steps of 16 × 128: about 10 minutes a run, 2 hours for 12 runs). "
                 f"Validation perplexity is the recipe's (held-out articles, window = {s.gpt2_block}, stride "
                 f"{s.gpt2_block // 2}). daGPAM uses the config's `lambda_init=0.1` (λ and W⁻ trained, lr 1e-2).\n")
        rows = []
        if has_runs:
            sc = data["scratch"]
            for m in MECHS:
                rs = [r for r in sc[m].values() if r]
                if not rs:
                    continue
                rows.append([MECH_TITLES[m], f"`{rs[0]['attn']}`", len(rs), fmt_pm([r["first_ppl"] for r in rs]),
                             fmt_pm([r["final_ppl"] for r in rs]),
                             fmt_pm([r["losses"][-1][1] for r in rs if r["losses"]]),
                             f"{sum(r['stable'] for r in rs)}/{len(rs)}", fmt_pm([r["seconds"] for r in rs], 1)])
        else:
            rows = scratch_rows_from_analysis(claims, a)
        if rows:
            L.append(table(["mechanism", "attn", "seeds", "val ppl at step 0", "final val ppl", "final train loss",
                            "stable runs", "train s"], rows) + "\n")
            if not has_runs:
                L.append(f"{MISSING}: not in this reproduce.json (the table is rebuilt from the claims' analyses).\n")
        elif not has_runs:
            L.append("The per-run table: not in this reproduce.json.\n")
        uni = meta.get("unigram")
        if uni and "ppl" in uni:
            L.append(f"For scale: a unigram model of the same training text (token frequencies only, add-"
                     f"{uni['smoothing']:g} smoothing) reaches perplexity **{fmt_num(uni['ppl'])}** on the same "
                     f"{uni['tokens']:,} validation tokens. The trained models are only modestly better than that: "
                     f"at this budget they have learned little beyond token frequencies and local statistics, "
                     f"which limits what claims 2, 3 and 5 can show.\n")
        lam = ([r["lambdas"] for r in data["scratch"]["dagpam"].values() if r and r.get("lambdas")] if has_runs else
               [x for x in a.get("claim2", {}).get("dagpam_lambdas", []) if x])
        if lam:
            L.append(f"daGPAM's trained λ (init 0.1), over all layers and heads: mean {fmt_pm([x['mean'] for x in lam])} "
                     f"over seeds, range {fmt_num(min(x['min'] for x in lam))} … {fmt_num(max(x['max'] for x in lam))}.\n")

    if 2 in claims:
        c = a["claim2"]
        L.append("## Claim 2: daGPAM vs softmax from scratch\n")
        L.append(f"Tests. *No worse*: daGPAM's final validation perplexity is not above softmax's by more than "
                 f"{SIGNIFICANCE_T:g} standard errors of the difference (Welch t = {fmt_num(c['t_ppl'])}). *Less rank "
                 f"collapse*: after training, `hf_attnswap.diagnostics.probe_texts` on {s.probe_texts} held-out "
                 f"articles (≤ {s.probe_tokens} tokens each); per seed the rank-collapse residual "
                 f"‖X − 1x̄ᵀ‖_F/‖X‖_F and the mean pairwise token cosine are averaged over the deep half of the "
                 f"blocks (hidden states {c['deep_hidden_states']}; the last one has the final layer norm applied). "
                 f"Less collapse = higher residual and lower cosine, counted only when the seed ranges do not "
                 f"overlap and the gap is ≥ {GAP_IN_STDS:g} seed std and ≥ {MIN_RELATIVE_GAP:.0%} of the value.\n")
        rows = [["final val ppl", fmt_pm(c["ppl"]["softmax"]), fmt_pm(c["ppl"]["dagpam"]),
                 fmt_num(mean_std(c["ppl"]["dagpam"])[0] - mean_std(c["ppl"]["softmax"])[0]),
                 f"no worse: {_yn(c['ppl_no_worse'])}"],
                ["deep residual (higher = less collapse)", fmt_pm(c["residual_deep"]["softmax"]),
                 fmt_pm(c["residual_deep"]["dagpam"]), fmt_num(c["residual"]["gap"]),
                 f"gap {fmt_num(c['residual']['gap_in_stds'])} seed std; higher: {_yn(c['higher_residual'])}"],
                ["deep token cosine (lower = less collapse)", fmt_pm(c["cosine_deep"]["softmax"]),
                 fmt_pm(c["cosine_deep"]["dagpam"]), fmt_num(c["cosine"]["gap"]),
                 f"gap {fmt_num(c['cosine']['gap_in_stds'])} seed std; lower: {_yn(c['lower_cosine'])}"]]
        L.append(table(["measure", "softmax", "daGPAM", "daGPAM − softmax", "test"], rows))
        # per-layer table
        prow = []
        sc = data["scratch"] if has_runs else {}
        rs_s = [r for r in sc.get("softmax", {}).values() if r and r.get("probe")]
        rs_d = [r for r in sc.get("dagpam", {}).values() if r and r.get("probe")]
        if not has_runs:
            L.append("\nPer hidden state, and the query-weight gradient norm aside: not in this reproduce.json.\n")
        if rs_s and rs_d:
            n_h = len(rs_s[0]["probe"]["per_layer"]["rank_collapse_residual"])
            for i in range(n_h):
                prow.append([i] + [fmt_pm([_num(r["probe"]["per_layer"][k][i]) for r in rs]) for k in
                                   ("rank_collapse_residual", "token_cosine") for rs in (rs_s, rs_d)])
            L.append("\nPer hidden state (0 = embeddings):\n")
            L.append(table(["hidden state", "residual softmax", "residual daGPAM", "cosine softmax", "cosine daGPAM"],
                           [[r[0], r[1], r[2], r[3], r[4]] for r in prow]))
            qs = [statistics.fmean(_num(x) for x in r["probe"]["per_layer"]["query_grad_norm"]) for r in rs_s]
            qd = [statistics.fmean(_num(x) for x in r["probe"]["per_layer"]["query_grad_norm"]) for r in rs_d]
            L.append(f"\nAside (the daGPAM paper's other diagnostic, not part of the claim): query-weight gradient norm "
                     f"of the LM loss, mean over layers, softmax {fmt_pm(qs)} vs daGPAM {fmt_pm(qd)}.\n")
        L.append(f"\n**Verdict: {c['verdict']}.**\n")
        plot_line(2)

    if 3 in claims:
        c = a["claim3"]
        L.append("## Claim 3: polynomial x³/√N vs unscaled x³\n")
        L.append(f"`polynomial:degree=3` (length scale `visible` = 1/√N_i) against "
                 f"`polynomial:degree=3:length_scale=\"none\"`, same runs as above. From each run's `log.jsonl`: "
                 f"non-finite losses, and the largest loss spike: the rise of the "
                 f"{SMOOTH_STEPS}-step moving average of the training loss above its best value so far; a blow-up is "
                 f"> {BLOWUP_NATS:g} nat. (Single steps are not used: with {s.gpt2_batch} × {s.gpt2_block}-token "
                 f"batches of different articles the per-step loss jumps by 1–3 nats in softmax runs too; that "
                 f"column is shown for reference.) A run is *stable* with finite losses, no blow-up and a final validation "
                 f"perplexity below its step-0 one. *Much worse*: unscaled final perplexity ≥ {MUCH_WORSE_PPL_RATIO:g}× "
                 f"the scaled one with every unscaled seed above every scaled seed.\n")
        rows = []
        for m in ("poly_scaled", "poly_unscaled", "softmax"):
            for r in c[m]:
                rows.append([MECH_TITLES[m], r["seed"], fmt_num(r["first_ppl"]), fmt_num(r["final_ppl"]),
                             r["nonfinite_steps"], fmt_num(r["max_spike"]), fmt_num(r["max_raw_spike"]),
                             _yn(r["blew_up"]), _yn(r["stable"])])
        L.append(table(["mechanism", "seed", "val ppl step 0", "final val ppl", "non-finite loss steps",
                        f"largest spike, {SMOOTH_STEPS}-step mean (nats)", "largest single-step spike (nats)",
                        "blew up", "stable"], rows))
        pm = c["probe_means"]
        prow = [[MECH_TITLES[m]] + [fmt_pm(pm[m][k]) for k in ("frobenius_ratio", "max_weight", "entropy")]
                for m in ("poly_scaled", "poly_unscaled", "softmax") if pm[m]["frobenius_ratio"]]
        if prow:
            L.append("\nWhat the trained attention looks like (probe on the held-out articles, mean over layers and "
                     "heads per seed): ‖A‖_F/√N on the raw weights (softmax keeps it ≤ 1; the polynomial's 1/√N_i scale "
                     "is meant to keep it O(1)), and the largest weight and entropy of each row of |a| renormalised.\n")
            L.append(table(["mechanism", "‖A‖_F/√N", "max weight", "entropy (nats)"], prow))
        L.append(f"\nScaled stable in every seed: {_yn(c['scaled_stable'])}. Unscaled: {c['unscaled_diverged_runs']} of "
                 f"{len(c['poly_unscaled'])} seeds unstable; final-ppl ratio unscaled/scaled "
                 f"{fmt_num(c['ppl_ratio_unscaled_over_scaled'])} (much worse: {_yn(c['unscaled_much_worse'])}).\n")
        L.append(f"**Verdict: {c['verdict']}.**\n")
        plot_line(3)

    if 4 in claims:
        c = a["claim4"]
        L.append(f"## Claim 4, the older measurement: SmolLM2 swapped to polynomial, then {s.smol_steps} steps of "
                 f"continued pretraining\n")
        L.append(f"The real SmolLM2-135M (Q4_1-dequantised) with `recipes/configs/smollm2_polynomial.yaml` "
                 f"(`polynomial:degree=3`, lr 1e-4 cosine, {s.smol_warmup} warmup steps) shrunk to k = "
                 f"**{s.smol_steps} steps** of {s.smol_batch} × {s.smol_block} tokens "
                 f"({s.smol_steps * s.smol_batch * s.smol_block:,} tokens) — tiny next to any real "
                 f"continued pretraining. Validation perplexity on the held-out news articles (5 %, window "
                 f"{s.smol_block}, stride {s.smol_block // 2}): before the swap (Transformers' `sdpa`, same documents "
                 f"and windows, measured once), right after the swap (the recipe's step-0 evaluation) and after k "
                 f"steps. The seed changes the data order only. *Gap recovered* = (NLL_swapped − NLL_final) / "
                 f"(NLL_swapped − NLL_sdpa) in nats per token; **yes** needs ≥ {MOST_OF_GAP:.0%} of it and a final "
                 f"perplexity within {NEAR_BASE_PPL_RATIO:g}× the unswapped model's.\n")
        if c["verdict"] != "not run":
            rows = [[r["seed"], fmt_num(c["base"]["ppl"]), fmt_num(r["ppl_swapped"]), fmt_num(r["ppl_final"]),
                     fmt_num(100 * rec, 3) + " %", fmt_num(ratio) + "×", r["steps"], fmt_num(r["seconds"], 1)]
                    for r, rec, ratio in zip(c["rows"], c["recovered"], c["final_over_base_ppl"])]
            rows.append(["mean ± std", fmt_num(c["base"]["ppl"]), fmt_pm([r["ppl_swapped"] for r in c["rows"]]),
                         fmt_pm([r["ppl_final"] for r in c["rows"]]), fmt_pm([100 * x for x in c["recovered"]]) + " %",
                         fmt_pm(c["final_over_base_ppl"]) + "×", "", ""])
            L.append(table(["seed", "ppl before swap (sdpa)", "ppl right after swap", "ppl after k steps",
                            "gap recovered (nats)", "final / before", "k", "train s"], rows))
            L.append("\nNo softmax control was run here (budget): part of the recovery can be adaptation to the news "
                     "domain, which the unswapped model would also get (the README's 15-step softmax control went "
                     "from ppl 33.7 to 31.2 on the same text).\n")
        L.append(f"**Verdict: {c['verdict']}.**\n")
        plot_line(4)
        conversions = data.get("conversions", [])
        if conversions:
            md_dir = md_path.resolve().parent
            L.append(render_conversions(conversions, c.get("conversion"), {
                conv["name"]: os.path.relpath((conv["dir"] / "conversion.png").resolve(), md_dir)
                for conv in conversions if conv["plot"]}))

    if 5 in claims:
        c = a["claim5"]
        L.append("## Claim 5: sink strength and entropy by mechanism\n")
        L.append(f"The trained softmax, polynomial x³/√N and daGPAM models of claims 2/3, probed with `probe_texts` on "
                 f"the same {s.probe_texts} held-out articles (≤ {s.probe_tokens} tokens). Sink strength = mean "
                 f"attention weight on the first token over queries i > 0; entropy in nats. Polynomial and daGPAM "
                 f"weights can be negative or unnormalised, so for them both measures use |a| renormalised per row "
                 f"(the diagnostics' `abs_renormalised` convention; conventions seen: "
                 + ", ".join(f"{MECH_TITLES[m]}: {'/'.join(v)}" for m, v in c["conventions"].items()) + "). "
                 f"Per seed the measure is averaged over layers and heads. **Measurable** = the per-seed values of "
                 f"the two mechanisms do not overlap, the gap of the means is ≥ {GAP_IN_STDS:g}× the larger "
                 f"seed std, and it is ≥ {MIN_RELATIVE_GAP:.0%} of the larger mean (so a statistically clear but "
                 f"negligible gap does not count). With 3 seeds each, complete separation alone has a permutation "
                 f"p = 0.1 (two-sided).\n")
        ps = c["per_seed_model_mean"]
        L.append(table(["mechanism", "sink strength", "entropy (nats)"],
                       [[MECH_TITLES[m], fmt_pm(ps[m]["sink_strength"]), fmt_pm(ps[m]["entropy"])] for m in ps]))
        rows = []
        for pair, d in c["pairs"].items():
            for meas, v in d.items():
                rows.append([pair, meas, fmt_num(v["gap"]), fmt_num(v["seed_std"]), fmt_num(v["gap_in_stds"]),
                             f"{100 * v['relative_gap']:.1f} %" if math.isfinite(v["relative_gap"]) else "inf",
                             {1: "yes", -1: "yes", 0: "no"}[v["separated"]], fmt_num(v["t"]), _yn(v["measurable"])])
        L.append("\n" + table(["pair (a vs b)", "measure", "gap a − b", "larger seed std", "gap / std",
                               "gap / mean", "ranges separate", "Welch t", "measurable"], rows))
        per_layer_rows = []
        n_layers = len(next(iter(c["per_layer"].values()))["entropy"][0]) if c["verdict"] != "not run" else 0
        for i in range(n_layers):
            per_layer_rows.append([i] + [fmt_pm([cur[i] for cur in c["per_layer"][m][meas]])
                                         for meas in ("sink_strength", "entropy") for m in ("softmax", "poly_scaled", "dagpam")])
        if per_layer_rows:
            L.append("\nPer layer (mean over heads; mean ± std over seeds):\n")
            L.append(table(["layer", "sink softmax", "sink poly", "sink daGPAM", "entropy softmax", "entropy poly",
                            "entropy daGPAM"], per_layer_rows))
        L.append(f"\n**Verdict: {c['verdict']}.**\n")
        plot_line(5)

    notes = out / "notes.md"
    if notes.is_file():
        L.append("## Notes on the results\n")
        L.append(f"(Written by hand after looking at the numbers: `{os.path.relpath(notes.resolve(), md_path.resolve().parent)}`, "
                 "included verbatim; it is not regenerated, so check it against the tables above after a re-run.)\n")
        L.append(notes.read_text().strip() + "\n")
    L.append("## How to reproduce\n")
    L.append("```bash\n" + meta["command"] + "\n```\n")
    L.append("The script runs these recipe commands (and its own `--job` measurements), at most "
             f"{meta['jobs_at_once']} at a time, with `OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1`; `<seed>` is each of "
             f"{', '.join(map(str, seeds))}. Outputs go to `{meta['runs_dir']}/`; a finished run is not redone.\n")
    L.append("```bash\n" + "\n".join(meta["example_commands"]) + "\n```\n")
    out_arg = os.path.relpath(out.resolve(), REPO) if REPO in out.resolve().parents else str(out)
    L.append(f"`python benchmarks/reproduce.py --out {out_arg} --render-only` re-renders this file from "
             f"`{out_arg}/reproduce.json` (and the committed conversion results) without running or reading any job.\n")
    return "\n".join(L)


# ================================================================================ --render-only: from reproduce.json
# Re-render the report from a committed <out>/reproduce.json (no job run, no cache read). The file holds the
# analysis (every number of the tables and verdicts) and, since --render-only exists, "render_data": the per-run
# summaries that the from-scratch table, claim 2's per-layer table and the plots of claims 2-4 read. Files written
# before that lack it; those parts are then rendered from the analysis where it has them, else left out and named.

MISSING = "—"
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
PLOT_FILES = {1: "claim1_logit_diff.png", 2: "claim2_ppl_rank_collapse.png", 3: "claim3_loss_curves.png",
              4: "claim4_smollm2_polynomial.png", 5: "claim5_sink_entropy.png"}
PLOT_NEEDS = {2: "the validation curves and per-layer probes of the from-scratch runs",
              3: "the training-loss and validation curves of the from-scratch runs",
              4: "the training-loss curves of the SmolLM2 runs"}  # what an older reproduce.json lacks for each plot
_KEEP_NONE = frozenset({"dagpam_lambdas", "base", "steps", "tokens_seen", "seconds"})  # None there is not a NaN


class RenderOnlyError(ValueError):
    """reproduce.json cannot be re-rendered (missing, not JSON, an older or foreign format)."""


def thresholds() -> dict[str, float]:
    """The constants the verdicts and the report's test descriptions use (stored in reproduce.json)."""
    return {"logit_tol": LOGIT_TOL, "significance_t": SIGNIFICANCE_T, "much_worse_ppl_ratio": MUCH_WORSE_PPL_RATIO,
            "blowup_nats": BLOWUP_NATS, "smooth_steps": SMOOTH_STEPS, "most_of_gap": MOST_OF_GAP,
            "near_base_ppl_ratio": NEAR_BASE_PPL_RATIO, "gap_in_stds": GAP_IN_STDS,
            "min_relative_gap": MIN_RELATIVE_GAP}


def reproduce_json(meta: dict[str, Any], scale: Scale, claims: set[int], seeds: list[int], analysis: dict[str, Any],
                   data: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """The contents of ``<out>/reproduce.json`` (before :func:`write_json` makes it strict JSON)."""
    return {"meta": meta, "scale": scale.__dict__, "claims": sorted(claims), "seeds": seeds,
            "thresholds": thresholds(), "analysis": analysis, "render_data": render_data(data), "jobs": report}


def render_data(data: dict[str, Any]) -> dict[str, Any]:
    """What :func:`collect` gathered, for reproduce.json's "render_data" (the conversions are read afresh from
    their committed files instead); NaN kept as the string "nan" so that None stays None (a missing run)."""
    return _tag_nan({k: v for k, v in data.items() if k != "conversions"})


def _tag_nan(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    if isinstance(x, dict):
        return {k: _tag_nan(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_tag_nan(v) for v in x]
    return x


def _untag(x: Any) -> Any:
    """Inverse of :func:`_clean` + :func:`_tag_nan`: "nan"/"inf"/"-inf" strings back to floats."""
    if isinstance(x, str) and x in ("nan", "inf", "-inf"):
        return float(x)
    if isinstance(x, dict):
        return {k: _untag(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_untag(v) for v in x]
    return x


def restore_analysis(x: Any, key: str | None = None) -> Any:
    """The analysis as :func:`analyse` returned it, from reproduce.json (where :func:`_clean` wrote NaN as None
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
    data = raw.get("render_data")
    return {"meta": raw["meta"], "scale": scale, "claims": set(claims), "seeds": seeds,
            "analysis": restore_analysis(raw["analysis"]), "data": restore_render_data(data) if data else {}}


def scratch_rows_from_analysis(claims: set[int], a: dict[str, Any]) -> list[list[Any]]:
    """The from-scratch table's rows from the analyses of claims 2 and 3 alone (an older reproduce.json without
    "render_data"): seeds, step-0 and final perplexity and stable runs where an analysis holds them, else
    :data:`MISSING`; the attn strings, final training loss and training seconds are in no analysis."""
    c2, c3 = a.get("claim2") if 2 in claims else None, a.get("claim3") if 3 in claims else None
    rows = []
    for m in MECHS:
        runs3 = c3.get(m) if c3 else None  # claim 3 keeps softmax, poly_scaled, poly_unscaled per seed
        if runs3:
            n = len(runs3)
            first, final = fmt_pm([r["first_ppl"] for r in runs3]), fmt_pm([r["final_ppl"] for r in runs3])
            stable = f"{sum(bool(r['stable']) for r in runs3)}/{len(runs3)}"
        elif c2 and m in c2["ppl"] and c2["n"].get(m):  # claim 2 keeps softmax and daGPAM's final ppl only
            n, first, final, stable = c2["n"][m], MISSING, fmt_pm(c2["ppl"][m]), MISSING
        else:
            continue
        rows.append([MECH_TITLES[m], MISSING, n, first, final, MISSING, stable, MISSING])
    return rows


def render_only(args: argparse.Namespace) -> int:
    """--render-only: the report (and the plots the file's data allows) from ``<out>/reproduce.json``."""
    out = Path(args.out)
    out = out if out.is_absolute() else Path.cwd() / out
    path = out / "reproduce.json"
    fix = (f"run `python benchmarks/reproduce.py --out {args.out}` without --render-only to compute it (and write "
           "a reproduce.json that --render-only can read)")
    given = [flag for flag, on in (("--claims", args.claims != CLAIMS_DEFAULT), ("--seeds", args.seeds is not None),
                                   ("--quick", args.quick), ("--runs-dir", args.runs_dir is not None)) if on]
    if given:
        print(f"error: --render-only takes the claims, seeds and scale from {path}; drop {', '.join(given)}",
              file=sys.stderr)
        return 2
    try:
        loaded = load_render_input(path)
    except RenderOnlyError as exc:
        print(f"error: cannot re-render from {path}: {exc}; {fix}", file=sys.stderr)
        return 2
    meta, scale, claims, seeds = loaded["meta"], loaded["scale"], loaded["claims"], loaded["seeds"]
    analysis, data = loaded["analysis"], loaded["data"]
    full = bool(data)  # reproduce.json has "render_data": everything a run renders and plots
    md = Path(args.md) if args.md else (out / "results.md" if scale.name == "quick" else REPO / "docs" / "results.md")
    if 4 in claims:  # the committed recipes/convert.py results, read now (as a full run would)
        data["conversions"] = load_conversions(CONVERSIONS_DIR)
        analysis["claim4"].pop("conversion", None)
        conv = conversion_for_claim4(data["conversions"])
        if conv is not None:
            analysis["claim4"]["conversion"] = {"name": conv["name"],
                                                **verdict_conversion(conv["results"], conv["ablations"])}
    missing: list[str] = []
    kept: dict[int, str] = {}
    missing_plots: dict[int, str] = {}
    if full:
        plots = plot_all(claims, analysis, data, out)
    else:
        plots = plot_all(claims, {k: analysis[k] for k in ("claim1", "claim5") if k in analysis}, {}, out)
        if claims & {2, 3, 5}:
            missing.append("the from-scratch table's attn strings, final training loss and training seconds (and "
                           "daGPAM's step-0 perplexity and stable runs)")
        if 2 in claims:
            missing.append("claim 2's per-hidden-state residual and cosine table and the query-gradient aside")
        for k in (2, 3, 4):
            if k not in claims or analysis[f"claim{k}"]["verdict"] == "not run":
                continue
            if (out / PLOT_FILES[k]).is_file():
                plots[k] = [PLOT_FILES[k]]
                kept[k] = f"reproduce.json lacks {PLOT_NEEDS[k]}"
            else:
                missing_plots[k] = f"reproduce.json lacks {PLOT_NEEDS[k]} and `{PLOT_FILES[k]}` is not in {out}"
        if kept or missing_plots:
            nums = [str(k) for k in sorted({*kept, *missing_plots})]
            missing.append("the data of the plots of claim" + (f"s {', '.join(nums[:-1])} and {nums[-1]}"
                                                               if len(nums) > 1 else f" {nums[0]}")
                           + (" (the committed PNGs are linked as they are)" if kept else ""))
    rerender = {"git_revision": git_revision(), "date": time.strftime("%Y-%m-%d %H:%M"), "missing": missing,
                "kept_plots": kept, "missing_plots": missing_plots}
    text = render_md(claims, seeds, scale, analysis, data, plots, meta, md, out, rerender=rerender)
    failed = meta.get("failed_jobs") or []
    if failed:
        text = text.replace("## Headline\n", "## Headline\n\n**Failed jobs:** " + ", ".join(failed) + "\n", 1)
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(text)
    print(f"wrote {md} from {path} (re-rendered; plots re-drawn: "
          f"{', '.join(PLOT_FILES[k] for k in sorted(plots) if k not in kept) or 'none'})", flush=True)
    for part in missing:
        print(f"  not in reproduce.json: {part}")
    for row in headline(claims, analysis):
        print(f"  {row[0]}: {row[1]}")
    return 0


# ============================================================================================= main


CLAIMS_DEFAULT = "1,2,3,4,5"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/results/reproduce", help="folder for reproduce.json and the PNG plots")
    p.add_argument("--claims", default=CLAIMS_DEFAULT, help="comma-separated claim numbers (1-5)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; with --quick 0,1)")
    p.add_argument("--quick", action="store_true",
                   help="toy scale: a couple of steps, tiny models, seeds 0,1 unless --seeds (smoke test, ~3 min)")
    p.add_argument("--runs-dir", default=None, help="where runs are cached (default runs/reproduce[_quick])")
    p.add_argument("--md", default=None, help="the Markdown report (default docs/results.md; --quick: <out>/results.md)")
    p.add_argument("--jobs", type=int, default=2, help="subprocesses at once (default 2, one per core)")
    p.add_argument("--render-only", action="store_true",
                   help="run nothing and read no cache: re-render the report (and the plots its data allows) from "
                        "the committed <out>/reproduce.json and the committed conversion results; claims, seeds and "
                        "scale come from that file")
    p.add_argument("--job", choices=sorted(JOBS), help=argparse.SUPPRESS)
    p.add_argument("--job-args", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.job:
        JOBS[args.job](**json.loads(args.job_args))
        return 0
    if args.render_only:
        return render_only(args)
    started = time.perf_counter()
    claims = {int(c) for c in args.claims.split(",") if c.strip()}
    if not claims or not claims <= {1, 2, 3, 4, 5}:
        print("error: --claims takes numbers from 1 to 5, e.g. --claims 1,3", file=sys.stderr)
        return 2
    if args.seeds is None:
        args.seeds = "0,1" if args.quick else "0,1,2"
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if len(set(seeds)) != len(seeds) or not seeds:
        print("error: --seeds takes distinct integers, e.g. --seeds 0,1,2", file=sys.stderr)
        return 2
    scale = QUICK if args.quick else FULL
    out = Path(args.out)
    runs = Path(args.runs_dir or ("runs/reproduce_quick" if args.quick else "runs/reproduce"))
    md = Path(args.md) if args.md else (out / "results.md" if args.quick else REPO / "docs" / "results.md")
    out = out if out.is_absolute() else Path.cwd() / out
    runs = runs if runs.is_absolute() else REPO / runs
    out.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    jobs = plan(claims, seeds, scale, runs)
    print(f"reproduce: claims {sorted(claims)}, seeds {seeds}, scale {scale.name}, {len(jobs)} jobs, "
          f"{args.jobs} at a time; runs in {runs}", flush=True)
    report = Runner(runs, max(1, args.jobs)).run(jobs)
    failed = [name for name, r in report.items() if not r["ok"]]

    data = collect(claims, seeds, runs)
    analysis = analyse(claims, seeds, data, scale)
    plots = plot_all(claims, analysis, data, out)
    wall = time.perf_counter() - started
    job_seconds = 0.0
    for job in jobs:
        for step in job.steps:
            if step.stamp.is_file():
                job_seconds += float(read_json(step.stamp).get("seconds") or 0.0)
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").is_file() else platform.processor()
    command = "python benchmarks/reproduce.py " + " ".join(
        [f"--out {args.out}"] + ([f"--claims {args.claims}"] if claims != {1, 2, 3, 4, 5} else [])
        + ([f"--seeds {args.seeds}"] if seeds != ([0, 1] if args.quick else [0, 1, 2]) else []) + (["--quick"] if args.quick else [])
        + ([f"--runs-dir {args.runs_dir}"] if args.runs_dir else []) + ([f"--md {args.md}"] if args.md else []))
    examples = []
    rel_runs = os.path.relpath(runs, REPO)
    for m in MECHS:
        argv = scratch_train_argv(scale, m, 0, Path(rel_runs) / "scratch" / f"{m}_seed<seed>")
        examples.append(" ".join(_shell(a) for a in ["python", *argv[1:]]).replace("--seed 0", "--seed <seed>"))
    argv = smol_train_argv(scale, 0, Path(rel_runs) / "smollm2_polynomial" / "seed<seed>")
    examples.append(" ".join(_shell(a) for a in ["python", *argv[1:]]).replace("--seed 0", "--seed <seed>"))
    meta = {"git_revision": git_revision(), "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": f"{os.cpu_count()}-core {cpu}", "wall_seconds": wall, "jobs": len(jobs),
            "cached_jobs": sum(1 for r in report.values() if r.get("cached")), "job_seconds_total": job_seconds,
            "jobs_at_once": args.jobs, "command": command, "example_commands": examples, "runs_dir": rel_runs,
            "failed_jobs": failed}
    if claims & {2, 3, 5}:
        meta["unigram"] = unigram_reference(runs)
    meta["computed_run"] = computed_run(meta, out / "reproduce.json", scale, seeds, claims)
    text = render_md(claims, seeds, scale, analysis, data, plots, meta, md, out)
    if failed:
        text = text.replace("## Headline\n", "## Headline\n\n**Failed jobs:** " + ", ".join(failed) + "\n", 1)
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(text)
    write_json(out / "reproduce.json", reproduce_json(meta, scale, claims, seeds, analysis, data, report))
    print(f"wrote {md} and {out / 'reproduce.json'} ({wall / 60:.1f} min)", flush=True)
    for row in headline(claims, analysis):
        print(f"  {row[0]}: {row[1]}")
    return 1 if failed else 0


def computed_run(meta: dict[str, Any], previous: Path, scale: Scale, seeds: list[int], claims: set[int]) -> dict[str, Any] | None:
    """The invocation that computed the jobs (none from the cache): this one, or the one remembered in the previous
    ``reproduce.json`` of the same scale, seeds and claims (so a re-render from the cache still reports it)."""
    keys = ("date", "wall_seconds", "jobs", "cached_jobs", "job_seconds_total", "jobs_at_once", "git_revision")
    if meta["cached_jobs"] == 0:
        return {k: meta[k] for k in keys}
    try:
        old = read_json(previous)
    except (OSError, ValueError):
        return None
    if old.get("scale", {}).get("name") != scale.name or old.get("seeds") != seeds or set(old.get("claims", [])) != claims:
        return None
    om = old.get("meta", {})
    if om.get("computed_run"):
        return om["computed_run"]
    return {k: om.get(k) for k in keys} if om.get("cached_jobs") == 0 else None


def _shell(a: str) -> str:
    import shlex

    return a if a.startswith("<") or ("<seed>" in a and "'" not in a and '"' not in a) else shlex.quote(a)


if __name__ == "__main__":
    sys.exit(main())
