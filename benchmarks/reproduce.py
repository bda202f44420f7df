#!/usr/bin/env python
"""Reproduce the five "Reproducible claims" of SCIENCE.md, and fine-tune SmolLM2 with daGPAM against softmax, at a
scale a 2-core CPU finishes in about two hours.

    python benchmarks/reproduce.py --out docs/results/reproduce                 # everything, seeds 0,1,2 (~2 h)
    python benchmarks/reproduce.py --out /tmp/repro --quick                     # toy scale, seeds 0,1 (< 5 min)
    python benchmarks/reproduce.py --out docs/results/reproduce --claims 1,4 --parts '' --seeds 0,1,2
    python benchmarks/reproduce.py --out /tmp/repro_gpu --scale gpu             # bigger models, on one GPU

Every training run is a subprocess of ``recipes/continue_pretrain.py`` or ``recipes/finetune_translation.py`` (their
YAML config plus command-line overrides), run with ``OMP_NUM_THREADS=1`` and ``HF_HUB_OFFLINE=1``, at most ``--jobs``
(default 2) at a time. Every finished job is cached under ``--runs-dir`` (a run is skipped when its output exists and
was made by the same command), so a re-run only redoes what is missing and the report can be completed over several
runs. Before the jobs, the main process prepares (once, cached in the runs folder) the from-scratch text (the
recipe's split of the offline wiki-text articles, the held-out ones cut to excerpts, as files), the byte-level BPE
trained on its training articles (``--tokenizer_name`` of the from-scratch runs) and the unigram / bigram references
of the same text and tokenizer. At the end the script writes ``<out>/reproduce.json`` (every number), PNG plots in
``<out>/`` and the Markdown report (``--md``, default ``docs/results.md``; at other scales than full
``<out>/results.md``).

``--render-only`` runs nothing and reads no cache: it re-renders the report from the committed
``<out>/reproduce.json`` (its claims, parts, seeds, scale, run facts and analysis) plus the committed conversion
results of claim 4, re-draws the plots that file's data allows, and says in the header that it is a re-render. It
refuses (exit 2) when the file is missing or lacks what the report needs (a file judged with other thresholds, e.g.
one written before the validity condition and the translation tests existed, is refused).

    python benchmarks/reproduce.py --out docs/results/reproduce --render-only

The claims and how each is tested (the thresholds are constants in ``benchmarks/reproduction/config.py``, and
the report repeats them):

1. daGPAM with lambda=0 gives the base model's logits (max |delta logit| <= 1e-5, fp32): real SmolLM2-135M on
   real news articles (one sample of articles per seed), and tiny random GPT-2 / Llama (GQA) models (one random
   init per seed); the fused path is compared with Transformers' ``sdpa``, the reference path with ``eager``.
2. From scratch, same data and budget: daGPAM's validation perplexity is no worse than softmax's, and daGPAM has
   less rank collapse (higher residual, lower token cosine) in the deep half of the layers.
3. Polynomial x^3/sqrt(N_i) trains stably; the unscaled x^3 diverges or trains much worse (the paper's weak p = 1
   is run beside them as a negative control).
4. Swapping the pretrained SmolLM2 to polynomial raises its perplexity; the claim says conversion
   (``recipes/convert.py``: attention transfer, then fine-tuning) recovers most of it, much more than plain
   continued pretraining, and the report renders the committed ``docs/results/convert_smollm2_*`` results for it
   (read, not run, by this script); the older measurement (k steps of continued pretraining) is run too.
5. Sink strength and attention entropy differ measurably between the softmax, polynomial and daGPAM models of 2/3.

The from-scratch runs (2, 3, 5) count only if they learned: SCIENCE.md's condition, a final validation perplexity
at most half a bigram model's of the same text and tokenizer, is checked per run and reported.

The parts (``--parts``, default both): ``cpt``, continued pretraining of SmolLM2 on the wiki-text training articles,
daGPAM from lambda = 0 (trained) against the softmax control, same data, steps and seed, perplexity on the held-out
wiki-text excerpts and held-out news articles; ``mt``, translation fine-tuning (de->en on the Ding pairs, not a
standard benchmark), the same two arms, BLEU and chrF of the final models on the fixed test split with sacrebleu's
own paired bootstrap resampling, and each run's step-0 BLEU (equal at lambda = 0).

The internal ``--job`` mode runs one measurement (claim 1 on one seed, a probe, a perplexity or translation
evaluation, the sdpa baseline) in a fresh subprocess; it is how the scheduler runs them and is not meant to be
called by hand.

This file is the command line, read top to bottom: prepare the inputs, plan the jobs, run them, collect, analyse,
plot, render, write. The pieces live in ``benchmarks/reproduction/`` (see its ``__init__``).
"""


from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if str(Path(__file__).resolve().parent) not in sys.path:  # benchmarks/: `reproduction`, `common` (as when run as a script)
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from hf_attnswap.training.report import git_revision  # noqa: E402

from common import cpu_name  # noqa: E402
from reproduction.claims import analyse  # noqa: E402
from reproduction.collect import collect  # noqa: E402
from reproduction.config import PARTS, REPO, SCALES, SCRATCH_DATASET, SCRATCH_VALIDATION_PCT, scale_named  # noqa: E402
from reproduction.corpus import ngram_cached, prepare_split, scratch_tokenizer, tokenizer_facts  # noqa: E402
from reproduction.finetune import analyse_parts  # noqa: E402
from reproduction.conversions import CONVERSIONS_DIR, judge_conversions, load_conversions  # noqa: E402
from reproduction.files import write_json  # noqa: E402
from reproduction.measurements import attention_scale_at_init  # noqa: E402
from reproduction.jobs import (Inputs, Runner, default_inputs, example_commands, job_seconds, job_span,  # noqa: E402
                               plan)
from reproduction.measurements import JOBS  # noqa: E402
from reproduction.plots import PLOT_FILES, plot_all  # noqa: E402
from reproduction.record import (RenderOnlyError, computed_run, load_render_input, older_file_gaps,  # noqa: E402
                                 reproduce_json)
from reproduction.report import headline, mark_failed_jobs, render_md  # noqa: E402

CLAIMS_DEFAULT = "1,2,3,4,5"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module's docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="docs/results/reproduce", help="folder for reproduce.json and the PNG plots")
    p.add_argument("--claims", default=CLAIMS_DEFAULT, help="comma-separated claim numbers (1-5)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; with --quick 0,1)")
    p.add_argument("--parts", default=",".join(PARTS),
                   help="comma-separated parts beside the claims: cpt (continued pretraining of SmolLM2, daGPAM vs "
                        "softmax), mt (translation fine-tuning, daGPAM vs softmax); '' for none")
    p.add_argument("--quick", action="store_true",
                   help="toy scale: a couple of steps, tiny models, seeds 0,1 unless --seeds (smoke test, < 5 min); "
                        "the same as --scale quick")
    p.add_argument("--scale", choices=sorted(SCALES), default=None,
                   help="full (default: the 2-core CPU budget, ~2 h), quick (= --quick) or gpu (bigger models and "
                        "budgets for one GPU)")
    p.add_argument("--runs-dir", default=None, help="where runs are cached (default runs/reproduce[_quick])")
    p.add_argument("--md", default=None, help="the Markdown report (default docs/results.md; --quick: <out>/results.md)")
    p.add_argument("--jobs", type=int, default=2, help="subprocesses at once (default 2, one per core)")
    p.add_argument("--render-only", action="store_true",
                   help="run nothing and read no cache: re-render the report (and the plots its data allows) from "
                        "the committed <out>/reproduce.json and the committed conversion results; claims, seeds and "
                        "scale come from that file")
    p.add_argument("--job", choices=sorted(JOBS), help=argparse.SUPPRESS)
    p.add_argument("--job-args", default="{}", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def command_line(args: argparse.Namespace, claims: set[int], seeds: list[int], parts: set[str]) -> str:
    """This invocation as the report prints it: the options that differ from their defaults."""
    quick = args.scale == "quick"
    return "python benchmarks/reproduce.py " + " ".join(
        [f"--out {args.out}"] + ([f"--claims {args.claims}"] if claims != {1, 2, 3, 4, 5} else [])
        + ([f"--parts '{','.join(sorted(parts))}'"] if parts != set(PARTS) else [])
        + ([f"--seeds {args.seeds}"] if seeds != ([0, 1] if quick else [0, 1, 2]) else []) + (["--quick"] if quick else [])
        + ([f"--scale {args.scale}"] if args.scale not in ("full", "quick") else [])
        + ([f"--runs-dir {args.runs_dir}"] if args.runs_dir else []) + ([f"--md {args.md}"] if args.md else []))


def prepare_inputs(claims: set[int], parts: set[str], scale: Any, runs: Path,
                   seeds: list[int]) -> tuple[Inputs, dict[str, Any]]:
    """What the jobs read and the main process makes first (cached under ``runs``): the wiki-text split as files
    (for the from-scratch and continued pretraining runs), the trained tokenizer and the n-gram references (for the
    from-scratch runs); and, not cached (seconds), the from-scratch mechanisms' attention scale at initialisation.
    Returns the inputs and {"ngram", "tokenizer", "init_scale"} facts (empty for what was not needed)."""
    inputs, facts = default_inputs(runs, scale), {}
    if not (claims & {2, 3, 5} or "cpt" in parts):
        return inputs, facts
    paths = prepare_split(runs, SCRATCH_DATASET, SCRATCH_VALIDATION_PCT, scale.excerpt_chars)
    inputs = Inputs(paths["train"], paths["validation"], inputs.tokenizer)
    if claims & {2, 3, 5}:
        tok = scratch_tokenizer(runs, paths, SCRATCH_DATASET, scale.vocab_size)
        inputs = Inputs(paths["train"], paths["validation"], tok)
        facts = {"ngram": ngram_cached(runs, paths, tok), "tokenizer": tokenizer_facts(tok),
                 "init_scale": attention_scale_at_init(scale, seeds)}
    return inputs, facts


def main(argv: Sequence[str] | None = None) -> int:
    """Run the claims' jobs (or one ``--job``, or ``--render-only``); write the report, plots and reproduce.json.
    Returns the exit status: 0, 1 when a job failed, 2 for a bad command line or an unreadable reproduce.json."""
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
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts <= set(PARTS):
        print(f"error: --parts takes {', '.join(PARTS)} (comma-separated) or ''; got {args.parts!r}", file=sys.stderr)
        return 2
    if args.quick and args.scale not in (None, "quick"):
        print(f"error: --quick is --scale quick; drop one of --quick and --scale {args.scale}", file=sys.stderr)
        return 2
    args.scale = "quick" if args.quick else (args.scale or "full")
    if args.seeds is None:
        args.seeds = "0,1" if args.scale == "quick" else "0,1,2"
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if len(set(seeds)) != len(seeds) or not seeds:
        print("error: --seeds takes distinct integers, e.g. --seeds 0,1,2", file=sys.stderr)
        return 2
    scale = scale_named(args.scale)
    out = Path(args.out)
    runs = Path(args.runs_dir or ("runs/reproduce" if scale.name == "full" else f"runs/reproduce_{scale.name}"))
    md = Path(args.md) if args.md else (REPO / "docs" / "results.md" if scale.name == "full" else out / "results.md")
    out = out if out.is_absolute() else Path.cwd() / out
    runs = runs if runs.is_absolute() else REPO / runs
    out.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)

    # what the jobs read (made once, cached), then the jobs: planned, run (a cached one is skipped) --jobs at a time
    inputs, facts = prepare_inputs(claims, parts, scale, runs, seeds)
    jobs = plan(claims, seeds, scale, runs, parts, inputs)
    print(f"reproduce: claims {sorted(claims)}, parts {sorted(parts)}, seeds {seeds}, scale {scale.name}, "
          f"{len(jobs)} jobs, {args.jobs} at a time; runs in {runs}", flush=True)
    report = Runner(runs, max(1, args.jobs)).run(jobs)
    failed = [name for name, r in report.items() if not r["ok"]]

    # what they wrote, judged and drawn
    data = collect(claims, seeds, runs, CONVERSIONS_DIR, parts)
    data["ngram"] = facts.get("ngram")
    data["init_scale"] = facts.get("init_scale")
    analysis = analyse(claims, seeds, data, scale)
    analysis.update(analyse_parts(parts, data))
    plots = plot_all(claims, analysis, data, out)
    wall = time.perf_counter() - started

    # the facts of this run, then the report and reproduce.json
    rel_runs = os.path.relpath(runs, REPO)
    meta = {"git_revision": git_revision(REPO) or "unknown", "date": time.strftime("%Y-%m-%d %H:%M"),
            "machine": f"{os.cpu_count()}-core {cpu_name()}", "wall_seconds": wall, "jobs": len(jobs),
            "cached_jobs": sum(1 for r in report.values() if r.get("cached")), "job_seconds_total": job_seconds(jobs),
            "jobs_at_once": args.jobs, "command": command_line(args, claims, seeds, parts),
            "example_commands": example_commands(scale, rel_runs, _relative(inputs), parts), "runs_dir": rel_runs,
            "failed_jobs": failed, "parts": sorted(parts), "tokenizer": facts.get("tokenizer")}
    if facts.get("ngram"):
        meta["ngram"] = {k: v for k, v in facts["ngram"].items() if k != "key"}
    meta["computed_run"] = computed_run(meta)
    meta["job_span"] = job_span(jobs)
    text = mark_failed_jobs(render_md(claims, seeds, scale, analysis, data, plots, meta, md, out), failed)
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(text)
    write_json(out / "reproduce.json", reproduce_json(meta, scale, claims, seeds, analysis, data, report, parts))
    print(f"wrote {md} and {out / 'reproduce.json'} ({wall / 60:.1f} min)", flush=True)
    for row in headline(claims, analysis):
        print(f"  {row[0]}: {row[1]}")
    return 1 if failed else 0


def _relative(inputs: Inputs) -> Inputs:
    """``inputs`` with paths relative to the repository root where they are inside it (for the printed commands)."""
    def rel(p: Path) -> Path:
        return Path(os.path.relpath(p, REPO)) if REPO in p.resolve().parents else p
    return Inputs(rel(inputs.train_file), rel(inputs.validation_file), rel(inputs.tokenizer))


def render_only(args: argparse.Namespace) -> int:
    """--render-only: the report (and the plots the file's data allows) from ``<out>/reproduce.json``."""
    out = Path(args.out)
    out = out if out.is_absolute() else Path.cwd() / out
    path = out / "reproduce.json"
    fix = (f"run `python benchmarks/reproduce.py --out {args.out}` without --render-only to compute it (and write "
           "a reproduce.json that --render-only can read)")
    given = [flag for flag, on in (("--claims", args.claims != CLAIMS_DEFAULT), ("--seeds", args.seeds is not None),
                                   ("--quick", args.quick), ("--scale", args.scale is not None),
                                   ("--parts", args.parts != ",".join(PARTS)),
                                   ("--runs-dir", args.runs_dir is not None)) if on]
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
    md = Path(args.md) if args.md else (REPO / "docs" / "results.md" if scale.name == "full" else out / "results.md")
    if 4 in claims:  # the committed recipes/convert.py results, read now (as a full run would)
        data["conversions"] = load_conversions(CONVERSIONS_DIR)
        analysis["claim4"].pop("conversion", None)
        conv = judge_conversions(data["conversions"])
        if conv is not None:
            analysis["claim4"]["conversion"] = conv
    if full:
        plots = plot_all(claims, analysis, data, out)
        missing, kept, missing_plots = [], {}, {}
    else:  # an older file: the plots of claims 1 and 5 from the analysis, the committed PNGs of the others
        plots = plot_all(claims, {k: analysis[k] for k in ("claim1", "claim5") if k in analysis}, {}, out)
        missing, kept, missing_plots = older_file_gaps(claims, analysis, out)
        for k in kept:
            plots[k] = [PLOT_FILES[k]]
    rerender = {"git_revision": git_revision(REPO) or "unknown", "date": time.strftime("%Y-%m-%d %H:%M"), "missing": missing,
                "kept_plots": kept, "missing_plots": missing_plots}
    text = render_md(claims, seeds, scale, analysis, data, plots, meta, md, out, rerender=rerender)
    text = mark_failed_jobs(text, meta.get("failed_jobs") or [])
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(text)
    print(f"wrote {md} from {path} (re-rendered; plots re-drawn: "
          f"{', '.join(PLOT_FILES[k] for k in sorted(plots, key=str) if k not in kept) or 'none'})", flush=True)
    for part in missing:
        print(f"  not in reproduce.json: {part}")
    for row in headline(claims, analysis):
        print(f"  {row[0]}: {row[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
