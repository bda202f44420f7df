"""The Markdown report (``docs/results.md``): the headline table, one section per claim, the conversions of claim
4, the notes and how to reproduce. Pure text from the analysis, the collected data and the run's facts; writes
nothing."""

from __future__ import annotations

import math
import os
import shlex
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import (BLOWUP_NATS, GAP_IN_STDS, LOGIT_TOL, MECH_TITLES, MECHS, MIN_RELATIVE_GAP, MOST_OF_GAP,
                     MUCH_WORSE_PPL_RATIO, NEAR_BASE_PPL_RATIO, REPO, SCRATCH_CONFIG,
                     SCRATCH_VALIDATION_PCT, SIGNIFICANCE_T, SMOOTH_STEPS, Scale)
from .conversions import CONVERSION_GLOB, CONVERSION_PHASES, PLAIN_ABLATION, final_ppl
from .files import number
from .markdown import fmt_num, fmt_pm, table
from .sections import (cpt_headline, mt_headline, render_cpt, render_diagnostics, render_mt, render_validity,
                       validity_headline)
from .stats import finite, mean_std

#: A cell the rendered file cannot fill (an older reproduce.json lacks what it needs).
MISSING = "—"


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


def conversion_key_numbers(claim: dict[str, Any]) -> str:
    """The headline's numbers from :func:`verdict_conversion`'s dict (with "name")."""
    per = "; ".join(f"{corpus} {fmt_num(r['base'])} → {fmt_num(r['swapped'])} → {fmt_num(r['final'])} "
                    f"({fmt_num(r['ratio'])}× the base, gap closed {_pct(r['gap_closed'])}"
                    + (f", plain continued pretraining {fmt_num(r['plain'])}" if r["plain"] is not None else "") + ")"
                    for corpus, r in claim["per_corpus"].items())
    return f"`{claim['name']}`, ppl base → swapped → converted: {per}; {claim['reason']}"


def render_conversion(name: str, results: dict[str, Any], plot: str | None = None,
                      transfer_errors: dict[str, Any] | None = None) -> str:
    """One conversion: its phases' perplexities (with tokens and minutes), the ratios to the base and the gap
    closed, the mechanism's parameters, stage 1's transfer error (and, from ``transfer_errors``, what output scale
    could remove of it), the command and (``plot``: a path) its figure."""
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
                         *[fmt_num(number(p["ppl"].get(c))) for c in corpora], _tokens(p.get("tokens")),
                         _minutes(p.get("seconds"))])
    control = results.get("control")
    if control:
        rows.append(["control: own attention, the same stage 2" + (f", {control['steps']} steps"
                                                                   if control.get("steps") is not None else ""),
                     *[fmt_num(number(control["ppl"].get(c))) for c in corpora], _tokens(control.get("tokens")),
                     _minutes(control.get("seconds"))])
    L.append(table(["phase", *[f"ppl {c}" for c in corpora], "tokens", "minutes"], rows))
    ratios = results.get("ratio_to_base", {})
    line = (f"\nFinal ({results['final_phase'].replace('stage', 'stage ')}) / base perplexity: "
            # three decimals, so that a ratio just over a target (1.502 against 1.5) does not print as reaching it
            + ", ".join(f"{c} **{number(r.get('ratio')):.3f}×**" for c, r in ratios.items())
            + "; gap closed (share of the swap's log-perplexity gap): "
            + ", ".join(f"{c} {_pct(r.get('gap_closed'))}" for c, r in ratios.items()))
    if any("ratio_to_control" in r for r in ratios.values()):
        line += "; final / control perplexity: " + ", ".join(
            f"{c} {fmt_num(number(r.get('ratio_to_control')))}×" for c, r in ratios.items())
    resumed = {p: phases[p].get("resumed_at") for p in ("stage1", "stage2") if phases.get(p, {}).get("resumed_at")}
    line += (f". Stages 1 + 2: {_tokens(results.get('tokens'))} training tokens, "
             f"{_minutes(results.get('seconds'))} min"
             + "".join(f" ({p.replace('stage', 'stage ')} resumed at step {', '.join(map(str, at))}: its time covers "
                       "the last process only)" for p, at in resumed.items())
             + (f"; {results['wall_note']}" if results.get("wall_note") else "") + ".\n")
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
            parts.append(f"`{leaf}` ({s.get('numel', '?')} values): mean |{sym}| {fmt_num(number(s.get('mean_abs')))}, "
                         f"mean {fmt_num(number(s.get('mean')))}, min {fmt_num(number(s.get('min')))}, "
                         f"max {fmt_num(number(s.get('max')))}")
        L.append(f"Mechanism parameters {CONVERSION_PHASES[phase]}: " + "; ".join(parts) + ".\n")
    errors = phases.get("stage1", {}).get("relative_error")
    if errors:
        L.append("Stage 1's per-layer relative transfer error (1.0 = no better than an all-zero output), mean over "
                 "layers (worst layer): " + ", ".join(
                     f"{label.replace('_', ' ')} {fmt_num(statistics.fmean(finite(v)) if finite(v) else None)} "
                     f"({fmt_num(max(finite(v)) if finite(v) else None)})" for label, v in errors.items()) + ".\n")
    bounds = (transfer_errors or {}).get("converted_with_best_gain")
    converted = (transfer_errors or {}).get("relative_error", {}).get("converted")
    if bounds and converted:
        L.append("What output scale could remove of that error (`benchmarks/transfer_errors.py`, "
                 "`transfer_errors.json`, held-out blocks): mean over layers "
                 f"{fmt_num(statistics.fmean(converted))} as converted; with the best output gain per head "
                 f"{fmt_num(statistics.fmean(bounds['per_head']))}, per head and position "
                 f"{fmt_num(statistics.fmean(bounds['per_head_and_position']))}, per head and query "
                 f"{fmt_num(statistics.fmean(bounds['per_head_and_query']))} (the most a learned length scale or a "
                 "normaliser could do with these projections).\n")
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
        return [method, _tokens(r.get("tokens")), *[fmt_num(number(final.get(c))) for c in corpora],
                *[fmt_num(number(final.get(c)) / number(base.get(c))) + "×" for c in corpora]]

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
        L.append(render_conversion(c["name"], c["results"], plots.get(c["name"]), c.get("transfer_errors")))
        abl = render_ablations(c["results"], c["ablations"])
        if abl:
            L.append(abl)
    if claim:
        L.append(f"**Verdict (claim 4, on `{claim['name']}`, one seed): {claim['verdict']}** — {claim['reason']}.\n")
    return "\n".join(L)


def _yn(flag: bool) -> str:
    return "yes" if flag else "no"


def headline(claims: set[int], a: dict[str, Any]) -> list[list[str]]:
    """The headline table's rows: per claim its wording, verdict and key numbers."""
    rows = []
    if 1 in claims:
        c = a["claim1"]
        worst = {m: max((v["max"] for v in c["per_pair"].values() if v["model"] == m and v["values"]), default=math.nan)
                 for m in ("smollm2", "tiny_gpt2", "tiny_llama")}
        rows.append(["1. daGPAM λ=0 = base logits (≤1e-5, fp32)", c["verdict"],
                     "worst max |Δlogit| over seeds and both backends: " + ", ".join(
                         f"{m} {fmt_num(v)}" for m, v in worst.items())
                     + (" (bit-identical)" if all(v == 0 for v in worst.values()) else "")])
    if "validity" in a:
        rows.append(validity_headline(a["validity"]))
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
                     f"{fmt_num(c['ppl_ratio_unscaled_over_scaled'])}×"
                     + (f"; p = 1 control {fmt_pm([r['final_ppl'] for r in c['poly_p1']])} "
                        f"({fmt_num(c['p1_control']['ppl_ratio_over_scaled'])}× the scaled cubic; worse by > "
                        f"{SIGNIFICANCE_T:g} s.e.: {_yn(c['p1_control']['significantly_worse'])})"
                        if c.get("poly_p1") else "")])
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
    if "cpt" in a:
        rows.append(cpt_headline(a["cpt"]))
    if "mt" in a:
        rows.append(mt_headline(a["mt"]))
    return rows


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
    span = meta.get("job_span")
    if meta["cached_jobs"] != 0 and span:  # some jobs came from the cache: when and where they were computed
        computed = (f"the jobs ran from {span['first_started']} to {span['last_finished']} "
                    f"({span['span_seconds'] / 60:.0f} min of wall time in all, over more than one invocation, pauses "
                    f"included; {span['job_seconds_total'] / 60:.1f} min of single-thread subprocess time, "
                    f"{meta['jobs_at_once']} at a time)"
                    + (f"; the training runs recorded revision{'s' if len(span['git_revisions']) > 1 else ''} "
                       + ", ".join(f"`{r}`" for r in span["git_revisions"]) if span.get("git_revisions") else ""))
        timing = (f"{'reproduce.json itself was written by a re-render' if rerender is not None else 'this file was re-rendered'}"
                  f" in {meta['wall_seconds'] / 60:.1f} min with {meta['cached_jobs']} of {meta['jobs']} jobs from the "
                  f"cache; {computed}")
    elif rerender is not None and meta["cached_jobs"] != 0:
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
        tok = meta.get("tokenizer") or {}
        L.append(f"A GPT-2 (`{s.gpt2_overrides}`, vocabulary {s.vocab_size}) trained from scratch by "
                 f"`recipes/continue_pretrain.py` (`recipes/configs/{SCRATCH_CONFIG}`, the mechanism by `--attn`) on the "
                 f"offline Wikipedia text (wiki-text: the gensim wheel's articles, markup stripped; the last "
                 f"{SCRATCH_VALIDATION_PCT:g} % of the articles held out, each cut to its first "
                 f"{s.excerpt_chars:,} characters, whole paragraphs). The vocabulary is "
                 + ("the 256 bytes and EOS (the `tokenizers` library's byte-level BPE with no merges)" if s.vocab_size == 257
                    else f"a byte-level BPE of {s.vocab_size} tokens") + " trained with the `tokenizers` library on "
                 f"the training articles only "
                 f"(`{tok.get('folder', 'runs/…/tokenizer')}`" + (f", {tok['train_documents']} articles" if
                                                                  tok.get("train_documents") else "") + "). "
                 f"Same data order, budget and schedule for every mechanism: {s.gpt2_steps} steps of {s.gpt2_batch} × "
                 f"{s.gpt2_block} tokens ({s.gpt2_steps * s.gpt2_batch * s.gpt2_block:,} tokens; AdamW lr {s.gpt2_lr:g}, β₂ "
                 f"0.99, {s.gpt2_warmup} warmup steps then cosine, weight decay 0.1, clipping 1.0, no dropout). "
                 f"Validation perplexity is the recipe's (window = {s.gpt2_block}, stride {s.gpt2_block // 2}). "
                 f"daGPAM starts at `lambda_init=0.1` (λ and W⁻ trained, lr 1e-2); the polynomial runs are "
                 f"`polynomial:degree=3` (x³/√N_i), `polynomial:degree=3:length_scale=\"none\"` (unscaled x³) and "
                 f"`polynomial:degree=1` (x/√N_i, the paper's weak p = 1, a negative control).\n")
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
        if "validity" in a:
            L.append(render_validity(a["validity"], meta.get("ngram"), data.get("scratch"), data.get("init_scale")))
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
                 f"excerpts (≤ {s.probe_tokens} tokens each); per seed the rank-collapse residual "
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
                prow.append([i] + [fmt_pm([number(r["probe"]["per_layer"][k][i]) for r in rs]) for k in
                                   ("rank_collapse_residual", "token_cosine") for rs in (rs_s, rs_d)])
            L.append("\nPer hidden state (0 = embeddings):\n")
            L.append(table(["hidden state", "residual softmax", "residual daGPAM", "cosine softmax", "cosine daGPAM"],
                           [[r[0], r[1], r[2], r[3], r[4]] for r in prow]))
            qs = [statistics.fmean(number(x) for x in r["probe"]["per_layer"]["query_grad_norm"]) for r in rs_s]
            qd = [statistics.fmean(number(x) for x in r["probe"]["per_layer"]["query_grad_norm"]) for r in rs_d]
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
        for m in ("poly_scaled", "poly_unscaled", "poly_p1", "softmax"):
            for r in c.get(m, []):
                rows.append([MECH_TITLES[m], r["seed"], fmt_num(r["first_ppl"]), fmt_num(r["final_ppl"]),
                             r["nonfinite_steps"], fmt_num(r["max_spike"]), fmt_num(r["max_raw_spike"]),
                             _yn(r["blew_up"]), _yn(r["stable"])])
        L.append(table(["mechanism", "seed", "val ppl step 0", "final val ppl", "non-finite loss steps",
                        f"largest spike, {SMOOTH_STEPS}-step mean (nats)", "largest single-step spike (nats)",
                        "blew up", "stable"], rows))
        pm = c["probe_means"]
        prow = [[MECH_TITLES[m]] + [fmt_pm(pm[m].get(k, [])) for k in ("frobenius_ratio", "max_weight", "entropy",
                                                                          "raw_collision_entropy")]
                for m in ("poly_scaled", "poly_unscaled", "poly_p1", "softmax") if pm.get(m, {}).get("frobenius_ratio")]
        if prow:
            L.append("\nWhat the trained attention looks like (probe on the held-out articles, mean over layers and "
                     "heads per seed): ‖A‖_F/√N on the raw weights (softmax keeps it ≤ 1; the polynomial's 1/√N_i scale "
                     "is meant to keep it O(1)), and the largest weight and entropy of each row of |a| renormalised.\n")
            L.append(table(["mechanism", "‖A‖_F/√N", "max weight", "entropy (nats)", "raw collision entropy (nats)"],
                           prow))
        L.append(f"\nScaled stable in every seed: {_yn(c['scaled_stable'])}. Unscaled: {c['unscaled_diverged_runs']} of "
                 f"{len(c['poly_unscaled'])} seeds unstable; final-ppl ratio unscaled/scaled "
                 f"{fmt_num(c['ppl_ratio_unscaled_over_scaled'])} (much worse: {_yn(c['unscaled_much_worse'])}).\n")
        p1 = c.get("p1_control")
        if p1 and c.get("poly_p1"):
            L.append(f"Negative control, the paper's weak p = 1 (x/√N_i): final perplexity "
                     f"{fmt_pm([r['final_ppl'] for r in c['poly_p1']])}, {fmt_num(p1['ppl_ratio_over_scaled'])}× the "
                     f"scaled cubic's (Welch t {fmt_num(p1['t'])}; worse by more than {SIGNIFICANCE_T:g} standard errors: "
                     f"{_yn(p1['significantly_worse'])}; much worse by the unscaled test: {_yn(p1['much_worse'])}). It is "
                     f"not part of the claim's verdict: it shows whether this scale can tell a weak mechanism from the "
                     f"cubic at all.\n")
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
                 f"the same {s.probe_texts} held-out excerpts (≤ {s.probe_tokens} tokens). Sink strength = mean "
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
        sa = c.get("scale_aware_pairs")
        if sa:
            L.append("\nThe scale-aware companion (not part of the verdict, which keeps the claim's two measures): the raw "
                     "collision entropy −log Σ_j a_ij² per seed, " + ", ".join(
                         f"{m} {fmt_pm(ps[m].get('raw_collision_entropy', []))}" for m in ps) + "; measurable by the "
                     "same test: " + ", ".join(f"{pair} {_yn(v['measurable'])}" for pair, v in sa.items()) + ".\n")
        L.append(f"\n**Verdict: {c['verdict']}.**\n")
        plot_line(5)
    if "diagnostics" in a:
        L.append(render_diagnostics(a["diagnostics"], s))
    if "cpt" in a:
        L.append(render_cpt(a["cpt"], s, (data.get("cpt") or {}).get("runs")))
        plot_line("cpt")
    if "mt" in a:
        L.append(render_mt(a["mt"], s))
        plot_line("mt")

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


def mark_failed_jobs(text: str, failed: Sequence[str]) -> str:
    """The report ``text`` with a "**Failed jobs:**" line under its headline heading (``text`` when none failed)."""
    if not failed:
        return text
    return text.replace("## Headline\n", "## Headline\n\n**Failed jobs:** " + ", ".join(failed) + "\n", 1)
