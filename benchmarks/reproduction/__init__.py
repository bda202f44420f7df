"""The modules of ``benchmarks/reproduce.py`` (the reproduction of SCIENCE.md's claims), imported one way, from
the leaves up:

config (paths, thresholds, scales) <- files (JSON on disk) <- corpus (the from-scratch text split, trained tokenizer
and n-gram references) <- stats (numbers over seeds) <- markdown (cells, tables) <- conversions (claim 4's committed
convert.py results) <- claims (verdicts, analyse) <- finetune (the SmolLM2 parts: continued pretraining, translation
with sacrebleu's paired bootstrap) <- jobs (plan, cache, runner) <- measurements (the --job bodies) <- collect (the
runs' outputs) <- plots, sections, report (Markdown), record (reproduce.json).

``benchmarks/reproduce.py`` is the command line on top of them; nothing here imports it.
"""
