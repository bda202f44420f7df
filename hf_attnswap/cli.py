"""The ``attnswap`` command.

    attnswap list                              mechanisms, their options and defaults
    attnswap demo [--model M]                  one model under each mechanism: overhead, perplexity, generation
    attnswap prepare-assets                    fetch and convert the offline assets (SmolLM2, GPT-2 tokenizer, texts)
    attnswap eval ppl --attn a,b,c [...]       perplexity side by side
    attnswap eval mt --attn a,b,c [...]        translation BLEU/chrF side by side
    attnswap push --model DIR --repo-id o/n    upload a swapped model with a model card (or --dry-run DIR)
    attnswap probe --attn a,b,c --out DIR      attention diagnostics side by side: JSON + PNG plots

``--model`` defaults to the offline SmolLM2-135M; ``--dataset news-lee`` is the offline news text and
``--dataset de-en-ding`` the offline German-English pairs (see ``attnswap prepare-assets``).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import AttnSwapError


class CLIError(AttnSwapError):
    """Bad command-line input that no library function sees (an output path, a flag combination)."""


#: ``--attn`` when not given (and the model is not saved swapped): the mechanisms side by side.
PPL_ATTN = "sdpa,softmax,dagpam,polynomial"
MT_ATTN = "sdpa,dagpam"
PROBE_ATTN = "softmax,dagpam,polynomial"


def _default_model(model: str | None, *, tokenizer: bool = True) -> str:
    """The ``--model`` to load: the offline SmolLM2 by default; else checked (a local path that does not exist, a
    folder without config.json or tokenizer: an error that says so) and returned as ``from_pretrained`` takes it."""
    from .data.assets import prepare_smollm2, resolve_model

    if model is None:
        return str(prepare_smollm2())
    return resolve_model(model, tokenizer=tokenizer, what="--model")


def _attn_specs(text: str | None, model: str | None, default: str) -> list[Any]:
    """``--attn``'s specs. Not given: for a model saved swapped (its config records an hf_attnswap mechanism, e.g. the
    output of recipes/convert.py) its own attention with its saved options, since measuring its weights under other
    attentions would be a different model; otherwise ``default``."""
    from transformers import AutoConfig

    from .spec import AttnSpec, parse_attn_specs

    if text is not None:
        return parse_attn_specs(text)
    if model is not None:
        saved = getattr(AutoConfig.from_pretrained(model), "attnswap", None)
        if isinstance(saved, dict) and saved.get("mechanism"):
            options = {k: v for k, v in saved.items() if k != "mechanism"}
            [spec] = parse_attn_specs(saved["mechanism"])  # a mechanism this install does not know: a clear error
            spec = AttnSpec(spec.name, options)
            print(f"note: {model} was saved with attention {spec.name!r}; measuring it with that attention and its saved "
                  f"options (pass --attn to measure it with others, e.g. --attn {default}).", file=sys.stderr)
            return [spec]
    return parse_attn_specs(default)


def _dataset(name: str) -> str:
    """``--dataset``: an offline asset's local path (prepared on first use), an existing path, or a Hub name; a
    local path that does not exist is an error that says so."""
    from .data.assets import resolve_source

    if any(c in name for c in "*?[") and not Path(name).expanduser().exists():
        return name  # a glob pattern: load_texts expands it (and says so when nothing matches)
    return resolve_source(name, "--dataset")


def _check_output_file(path: str | None, flag: str) -> None:
    """Before any work: ``path`` must be writable as a file (not a folder; its first existing parent a writable
    folder), so a long run does not end in ``[Errno 21] Is a directory``."""
    if path is None:
        return
    if not path.strip():
        raise CLIError(f"{flag} needs a file name, e.g. {flag} results.json.")
    file = Path(path).expanduser()
    if file.is_dir():
        raise CLIError(f"{flag} {path} is a folder; pass a file name, e.g. {file / 'results.json'}.")
    parent = file.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise CLIError(f"{flag} {path}: {parent} is a file, not a folder, so {file.name} cannot be written there.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CLIError(f"{flag} {path}: the folder {parent} is not writable; pick a writable place.")


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _positions(model: str) -> int | None:
    """The model's number of positions, read from its config (no weights are loaded)."""
    from transformers import AutoConfig

    from .evaluation.perplexity import model_max_positions

    return model_max_positions(AutoConfig.from_pretrained(model))


def _list(args: argparse.Namespace) -> int:
    from .registry import list_mechanisms

    mechs = list_mechanisms()
    if args.json:
        print(json.dumps(mechs, indent=2))
        return 0
    for name, info in mechs.items():
        extra = "  (adds parameters)" if info["adds_parameters"] else ""
        print(f"{name}{extra}: {info['description']}")
        for key, default in info["options"].items():
            choices = f"  (one of: {', '.join(info['backends'])})" if key == "backend" else ""
            print(f"    {key} = {default!r}{choices}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    model = None if args.model is None else _default_model(args.model)
    run_demo(model, prompt=args.prompt, max_new_tokens=args.max_new_tokens)
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from .data.assets import prepare_all

    for name, path in prepare_all(force=args.force).items():
        print(f"{name}: {path}")
    return 0


def _quiet_datasets() -> None:
    """No datasets progress bars, and none of its logged errors: every datasets failure reaches the user as one
    ``attnswap: error:`` message that says what is wrong with the file (and quotes datasets' own error)."""
    try:
        import datasets
    except ImportError:
        return
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the load report lists daGPAM's new parameters as MISSING: expected
    hf_logging.disable_progress_bar()


def _eval_ppl(args: argparse.Namespace) -> int:
    from transformers import AutoConfig, AutoTokenizer

    from .data.text import load_texts
    from .evaluation.compare import compare, print_table, write_json
    from .evaluation.perplexity import perplexity, plan_perplexity

    _check_output_file(args.json, "--json")
    model = _default_model(args.model)
    specs = _attn_specs(args.attn, args.model and model, PPL_ATTN)
    source = _dataset(args.dataset)
    _quiet_datasets()
    load_kw: dict[str, Any] = {"text_column": args.text_column, "limit": args.limit, "txt_sample_by": args.sample_by}
    if args.split is not None:
        load_kw["split"] = args.split
    if args.config_name is not None:
        load_kw["config_name"] = args.config_name
    texts = load_texts(source, **load_kw)
    _quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(model)
    window = {"max_length": args.max_length, "stride": args.stride, "max_tokens": args.max_tokens}
    plan = plan_perplexity(AutoConfig.from_pretrained(model), tokenizer, texts, **window)  # bad window: before loading
    print(f"perplexity of {model} on {args.dataset} ({_count(len(texts), 'document')}), hf_attnswap "
          f"{__version__}", file=sys.stderr)
    capped = (f" (the first {plan.tokens:,} of {plan.tokens_available:,}: --max-tokens)"
              if plan.tokens < plan.tokens_available else "")
    print(f"plan per mechanism: {_count(plan.documents, 'document')}, {_count(plan.tokens, 'token')} to score{capped} "
          f"in {_count(plan.windows, 'window')} of up to {plan.max_length} tokens (stride {plan.stride})", file=sys.stderr)
    if plan.max_tokens is None and plan.tokens > LONG_RUN_TOKENS:
        hint = " or --sample-by paragraph (one document per paragraph of a .txt)" if plan.documents == 1 else ""
        print(f"note: {plan.tokens:,} tokens is a long run on a CPU; --max-tokens N stops after N tokens{hint}.",
              file=sys.stderr)

    def evaluate(m: Any, tok: Any) -> dict[str, Any]:
        r = perplexity(m, tok, texts, batch_size=args.batch_size, progress=not args.no_progress, **window)
        return {"ppl": r.ppl, "nll": r.nll, "tokens": r.tokens, "tokens_available": r.tokens_available,
                "truncated": r.truncated, "max_tokens": r.max_tokens, "tokens_per_second": r.tokens_per_second,
                "max_length": r.max_length, "stride": r.stride}

    rows = compare(model, specs, evaluate, tokenizer=tokenizer,
                   on_result=lambda r: print(f"  {r['attn']}: ppl {r['ppl']:.4g}", file=sys.stderr))
    columns = [("ppl", "ppl", "{:.4g}"), ("nll", "NLL/token", "{:.4f}"), ("tokens", "tokens", "{:,}")]
    if any(r["truncated"] for r in rows):
        columns.append(("tokens_available", "of available", "{:,}"))
    columns += [("tokens_per_second", "tokens/s", "{:.0f}"), ("parameters_added", "added params", "{:,}"),
                ("seconds", "s", "{:.1f}")]
    cap = f", first {plan.tokens:,} tokens (--max-tokens)" if plan.tokens < plan.tokens_available else ""
    print_table(f"Perplexity of {Path(model).name} on {args.dataset}{cap}", rows, columns)
    if args.json:
        data = {"dataset": args.dataset, "split": args.split, "config_name": args.config_name,
                "text_column": args.text_column, "limit": args.limit, "sample_by": args.sample_by,
                "max_tokens": args.max_tokens, "documents": len(texts), "plan": plan.to_dict()}
        print(f"wrote {write_json(args.json, 'perplexity', rows, data)}", file=sys.stderr)
    return 0


def _eval_mt(args: argparse.Namespace) -> int:
    from transformers import AutoConfig, AutoTokenizer

    from .data.parallel import load_parallel
    from .evaluation.compare import compare, print_table, write_json
    from .evaluation.translation import check_translation_fits, evaluate_translation

    _check_output_file(args.json, "--json")
    model = _default_model(args.model)
    specs = _attn_specs(args.attn, args.model and model, MT_ATTN)
    limit = args.limit if args.limit and args.limit > 0 else None
    _quiet_datasets()
    pairs = load_parallel(_dataset(args.dataset), args.split, src_lang=args.src, tgt_lang=args.tgt, limit=limit,
                          config_name=args.config_name)
    _quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(model)
    check_translation_fits(AutoConfig.from_pretrained(model), tokenizer, [p[0] for p in pairs], src_lang=args.src,
                           tgt_lang=args.tgt, template=args.template, max_new_tokens=args.max_new_tokens)
    print(f"translation {args.src}->{args.tgt} by {model} on {args.dataset}/{args.split} ({len(pairs)} pairs), "
          f"hf_attnswap {__version__}", file=sys.stderr)
    if args.dataset == "de-en-ding":
        print("note: the Ding de-en pairs are dictionary example sentences, not a standard MT benchmark; "
              "compare these BLEU figures only with each other.", file=sys.stderr)

    def evaluate(m: Any, tok: Any) -> dict[str, Any]:
        r = evaluate_translation(m, tok, pairs, src_lang=args.src, tgt_lang=args.tgt, template=args.template,
                                 batch_size=args.batch_size, num_beams=args.num_beams,
                                 max_new_tokens=args.max_new_tokens, progress=not args.no_progress)
        return {"bleu": r.bleu, "chrf": r.chrf, "sentences": r.n, "sentences_per_second": r.sentences_per_second,
                "bleu_signature": r.bleu_signature, "chrf_signature": r.chrf_signature, "metric_backend": r.backend,
                "metric_backend_note": r.backend_note, "examples": r.examples, "settings": r.settings}

    rows = compare(model, specs, evaluate, tokenizer=tokenizer,
                   on_result=lambda r: print(f"  {r['attn']}: BLEU {r['bleu']:.2f} chrF {r['chrf']:.2f}", file=sys.stderr))
    print_table(f"{args.src}->{args.tgt} translation, {Path(model).name} on {args.dataset}/{args.split}", rows, [
        ("bleu", "BLEU", "{:.2f}"), ("chrf", "chrF", "{:.2f}"), ("sentences", "sentences", "{:,}"),
        ("sentences_per_second", "sent/s", "{:.2f}"), ("parameters_added", "added params", "{:,}"), ("seconds", "s", "{:.1f}"),
    ])
    print(f"BLEU signature: {rows[0]['bleu_signature']}\nchrF signature: {rows[0]['chrf_signature']}")
    if rows[0]["metric_backend_note"]:
        print(f"metric backend: {rows[0]['metric_backend']} ({rows[0]['metric_backend_note']})")
    if args.json:
        data = {"dataset": args.dataset, "split": args.split, "src": args.src, "tgt": args.tgt, "limit": args.limit,
                "pairs": len(pairs), "standard_benchmark": args.dataset != "de-en-ding"}
        print(f"wrote {write_json(args.json, 'translation', rows, data)}", file=sys.stderr)
    return 0


def _push(args: argparse.Namespace) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .hub import push_to_hub

    from .data.assets import resolve_model, resolve_tokenizer
    from .hub import HubError, check_repo_id, check_token, read_eval_results

    check_repo_id(args.repo_id)  # everything that needs no model first: a typo costs no loading
    if args.dry_run is None:
        check_token()
    eval_results = read_eval_results(args.eval_results) if args.eval_results else None
    if args.dry_run is not None:
        out = Path(args.dry_run).expanduser()
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise HubError(f"--dry-run {args.dry_run} is not an empty folder; pick a new folder (or delete this one) "
                           "so it holds exactly what would be uploaded.")
    model_path = resolve_model(args.model, tokenizer=args.tokenizer is None, what="--model", tokenizer_flag="--tokenizer")
    tokenizer_path = resolve_tokenizer(args.tokenizer, "--tokenizer") if args.tokenizer else model_path
    _quiet_transformers()
    model = AutoModelForCausalLM.from_pretrained(model_path)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    result = push_to_hub(model, args.repo_id, tokenizer=tokenizer, base_model=args.base_model, eval_results=eval_results,
                         private=args.private, revision=args.revision, commit_message=args.commit_message,
                         dry_run=args.dry_run, endpoint=args.endpoint)
    print(f"{'wrote' if args.dry_run else 'pushed'}: {result}")
    return 0


def _probe(args: argparse.Namespace) -> int:
    import torch

    from .data.text import load_texts
    from .diagnostics import ProbeError, probe_texts
    from .diagnostics.collect import check_top_n
    from .diagnostics.plots import write_plots
    from .evaluation.compare import compare, print_table, write_json

    model = _default_model(args.model)
    specs = _attn_specs(args.attn, args.model and model, PROBE_ATTN)
    if any(s.name == "sdpa" for s in specs):
        raise ProbeError("'sdpa' returns no attention weights, so it cannot be probed; use 'eager' (Transformers' "
                         "own softmax) or 'softmax' instead.")
    top_n = check_top_n(_int_list(args.top_n, "--top-n"))
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ProbeError(f"--out {out} is a file; pass a folder (it is created if missing) for probe.json and the plots.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".write_test").write_text("")
        (out / ".write_test").unlink()
    except OSError as err:
        raise ProbeError(f"--out {out}: cannot write there ({err.strerror or err}); pick a writable folder.") from None
    source = _dataset("news-lee" if args.dataset == "news" else args.dataset)
    _quiet_datasets()
    texts = load_texts(source, text_column=args.text_column, limit=args.max_texts, txt_sample_by=args.sample_by)
    if not 0 <= args.example < len(texts):
        raise ProbeError(f"--example {args.example} is outside the {len(texts)} texts loaded (0 to {len(texts) - 1}).")
    _quiet_transformers()
    positions = _positions(model)
    if positions is not None and args.max_length > positions:
        raise ProbeError(f"--max-length {args.max_length} is larger than the model's {positions} positions; pass "
                         f"--max-length <= {positions}.")
    print(f"probing {model} on {args.dataset} ({len(texts)} texts, up to {args.max_length} tokens), "
          f"hf_attnswap {__version__}", file=sys.stderr)
    maps: list[Any] = []  # each mechanism's example attention map, in spec order

    def evaluate(m: Any, tok: Any) -> dict[str, Any]:
        torch.manual_seed(args.seed)
        r = probe_texts(m, tok, texts, max_length=args.max_length, batch_size=args.batch_size, top_n=top_n,
                        grad=not args.no_grad, example_index=args.example)
        maps.append(r.attention_map)
        d = r.to_dict()
        summary = {name: _nanmean(d["layer_mean_over_heads"][name]) for name in
                   ("entropy", "sink_strength", "negative_mass_share", "frobenius_ratio")}
        return {"loss": d["loss"], "weights_convention": d["weights_convention"],
                "sink_head_share": d["sink_head_share"]["overall"], **summary, "probe": d}

    def reseed(row: dict[str, Any]) -> None:  # the next model's new parameters (e.g. daGPAM's W⁻) start alike
        print(f"  {row['attn']}: loss {row['loss']}, entropy {row['entropy']} nats", file=sys.stderr)
        torch.manual_seed(args.seed)

    torch.manual_seed(args.seed)
    rows = compare(model, specs, evaluate, on_result=reseed)
    print_table(f"Attention diagnostics of {Path(model).name} on {args.dataset} (means over layers and heads)", rows, [
        ("loss", "LM loss", "{:.4f}"), ("entropy", "entropy (nats)", "{:.3f}"), ("sink_strength", "sink", "{:.3f}"),
        ("sink_head_share", "sink heads", "{:.0%}"), ("negative_mass_share", "neg. mass", "{:.3f}"),
        ("frobenius_ratio", "|A|_F/sqrt(N)", "{:.3f}"), ("seconds", "s", "{:.1f}"),
    ])
    data = {"dataset": args.dataset, "text_column": args.text_column, "max_texts": args.max_texts, "texts": len(texts),
            "max_length": args.max_length, "batch_size": args.batch_size, "seed": args.seed, "top_n": list(top_n),
            "example": args.example, "gradients": not args.no_grad}
    print(f"wrote {write_json(out / 'probe.json', 'probe', rows, data)}", file=sys.stderr)
    runs = [(row["attn"], row["probe"]) for row in rows]
    for path in write_plots(runs, {row["attn"]: m for row, m in zip(rows, maps)}, out, heads=args.heads):
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    from .diagnostics import ProbeError

    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise ProbeError(f"{flag} takes comma-separated integers >= 1 such as 1,2,4,8; got {text!r}.")
    return values


def _nanmean(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None]
    return sum(finite) / len(finite) if finite else None


#: Above this many tokens to score (and no --max-tokens), `eval ppl` says how to cap the run.
LONG_RUN_TOKENS = 200_000


def _int_at_least(minimum: int) -> Any:
    """An argparse ``type``: an integer >= ``minimum`` (argparse reports a bad value with the sub-command's usage)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


_POSITIVE = _int_at_least(1)
_NON_NEGATIVE = _int_at_least(0)


class _SubcommandParser(argparse.ArgumentParser):
    """A sub-command's parser that reports an unknown option itself, with its own usage and the closest option
    ("did you mean --model?"). Plain argparse hands unknown options of nested sub-commands up to the top-level
    parser, which prints the top-level usage."""

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            options = [o for action in self._actions for o in action.option_strings if o.startswith("--")]
            hints = []
            for extra in extras:
                if extra.startswith("-"):
                    close = difflib.get_close_matches(extra.split("=", 1)[0], options, n=1, cutoff=0.6)
                    hints.append(f"{extra} (did you mean {close[0]}?)" if close else extra)
                else:
                    hints.append(extra)
            self.error(f"unrecognized arguments: {' '.join(hints)}")
        return namespace, extras


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnswap", description="Swap the attention of Transformers models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_SubcommandParser)

    p = sub.add_parser("list", help="list mechanisms, options and defaults")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_list)

    p = sub.add_parser("demo", help="one model under every mechanism: overhead, perplexity, generation")
    p.add_argument("--model", default=None, help="Hub name or local path (default: the offline SmolLM2-135M)")
    p.add_argument("--prompt", default="The capital of France is")
    p.add_argument("--max-new-tokens", type=_POSITIVE, default=12)
    p.set_defaults(func=_demo)

    p = sub.add_parser("prepare-assets", help="prepare the offline SmolLM2-135M, GPT-2 tokenizer and texts")
    p.add_argument("--force", action="store_true", help="rebuild even if already prepared")
    p.set_defaults(func=_prepare)

    ev = sub.add_parser("eval", help="evaluate a model under several mechanisms").add_subparsers(dest="metric", required=True)
    p = ev.add_parser("ppl", help="perplexity with a strided sliding window")
    p.add_argument("--model", default=None, help="Hub name or local path (default: the offline SmolLM2-135M)")
    p.add_argument("--attn", default=None,
                   help=f"comma-separated specs, e.g. sdpa,dagpam:lambda_init=0.1,polynomial:degree=3 (default: {PPL_ATTN}; "
                        "for a model saved swapped, its own attention)")
    p.add_argument("--dataset", default="news-lee",
                   help="news-lee (offline news text), a Hub dataset name, local .txt/.json/.jsonl/.parquet/.csv files, "
                        "or a save_to_disk folder")
    p.add_argument("--split", default=None, help="split of a Hub dataset or saved DatasetDict")
    p.add_argument("--config-name", default=None, help="Hub dataset configuration, e.g. wikitext-2-raw-v1")
    p.add_argument("--text-column", default="text")
    p.add_argument("--sample-by", choices=("document", "paragraph", "line"), default="document",
                   help=".txt files: one document per file (default), per blank-line-separated paragraph, or per line")
    p.add_argument("--limit", type=_POSITIVE, default=None, help="first N documents only")
    p.add_argument("--max-tokens", type=_POSITIVE, default=None,
                   help="stop after scoring N tokens (the first N in document order); default: all")
    p.add_argument("--max-length", type=_int_at_least(2), default=None,
                   help="window length (default: model positions, at most 1024)")
    p.add_argument("--stride", type=_POSITIVE, default=None, help="window step (default: max_length // 2)")
    p.add_argument("--batch-size", type=_POSITIVE, default=4)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", default=None, help="write all results to this JSON file")
    p.set_defaults(func=_eval_ppl)

    p = ev.add_parser("mt", help="translation BLEU/chrF (sacrebleu, corpus level)")
    p.add_argument("--model", default=None, help="Hub name or local path (default: the offline SmolLM2-135M)")
    p.add_argument("--attn", default=None, help=f"comma-separated specs, as for `eval ppl` (default: {MT_ATTN}; for a model "
                                                 "saved swapped, its own attention)")
    p.add_argument("--dataset", default="de-en-ding",
                   help="de-en-ding (offline pairs), a folder of <split>.jsonl, a .jsonl file, or a Hub dataset name")
    p.add_argument("--config-name", default=None, help="Hub dataset configuration, e.g. de-en")
    p.add_argument("--split", default="test")
    p.add_argument("--src", default="de")
    p.add_argument("--tgt", default="en")
    p.add_argument("--limit", type=int, default=100, help="first N pairs (default 100; 0 or less for all)")
    p.add_argument("--template", default=None, help="prompt with {source}; default depends on the direction")
    p.add_argument("--batch-size", type=_POSITIVE, default=8)
    p.add_argument("--num-beams", type=_POSITIVE, default=1)
    p.add_argument("--max-new-tokens", type=_POSITIVE, default=64,
                   help="tokens generated per sentence at most (prompt + this must fit in the model's positions)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", default=None)
    p.set_defaults(func=_eval_mt)

    p = sub.add_parser("push", help="push a swapped model with a model card to the Hub")
    p.add_argument("--model", required=True, help="folder of a swapped model (save_pretrained output)")
    p.add_argument("--repo-id", required=True, help="owner/name")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder or name (default: --model)")
    p.add_argument("--base-model", default=None, help="Hub id of the model it was swapped from")
    p.add_argument("--eval-results", default=None, help="JSON list of {metric, value, dataset, ...} for the card")
    p.add_argument("--private", action="store_true")
    p.add_argument("--revision", default=None)
    p.add_argument("--commit-message", default=None)
    p.add_argument("--endpoint", default=None, help="Hub endpoint (default: huggingface_hub's)")
    p.add_argument("--dry-run", default=None, metavar="DIR", help="write exactly what would be uploaded to DIR; upload nothing")
    p.set_defaults(func=_push)

    p = sub.add_parser("probe", help="attention diagnostics (SCIENCE.md) under several mechanisms: JSON + PNG plots")
    p.add_argument("--model", default=None, help="Hub name or local path (default: the offline SmolLM2-135M)")
    p.add_argument("--attn", default=None,
                   help=f"comma-separated specs, as for `eval ppl` (eager, softmax, dagpam:lambda_init=0.1, ...; not sdpa; "
                        f"default: {PROBE_ATTN}; for a model saved swapped, its own attention)")
    p.add_argument("--dataset", default="news-lee",
                   help="news (offline news text), a Hub dataset name, local .txt/.json/.jsonl/.parquet/.csv files, "
                        "or a save_to_disk folder")
    p.add_argument("--text-column", default="text")
    p.add_argument("--sample-by", choices=("document", "paragraph", "line"), default="document",
                   help=".txt files: one text per file (default), per blank-line-separated paragraph, or per line")
    p.add_argument("--out", required=True, help="folder for probe.json and the PNG plots")
    p.add_argument("--max-texts", type=_POSITIVE, default=8, help="first N texts (default 8)")
    p.add_argument("--max-length", type=_int_at_least(2), default=128,
                   help="tokens per text, cut (default 128; at most the model's positions)")
    p.add_argument("--batch-size", type=_POSITIVE, default=4)
    p.add_argument("--seed", type=int, default=0, help="torch seed set before each model is loaded and probed")
    p.add_argument("--top-n", default="1,2,4,8,16,32,64", help="N for the top-N mass and value separation")
    p.add_argument("--example", type=_NON_NEGATIVE, default=0, help="text whose attention maps are drawn (0-based)")
    p.add_argument("--heads", type=_POSITIVE, default=4, help="heads per attention-map grid")
    p.add_argument("--no-grad", action="store_true", help="skip the backward pass (no query-gradient norms)")
    p.set_defaults(func=_probe)
    return parser


#: How the Python keywords in library messages are spelled per sub-command (see hf_attnswap.data.hints).
_FLAGS_BY_COMMAND: dict[str, dict[str, str]] = {"probe": {"limit": "--max-texts"}}


def main(argv: list[str] | None = None) -> int:
    """Run the command; return its exit code (2 for bad input, with ``attnswap: error: ...`` on stderr)."""
    from .data.hints import CLI_FLAGS, option_names

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse: usage error (2) or --help (0), already printed
        return 0 if exit_.code is None else exit_.code if isinstance(exit_.code, int) else 2
    flags = {**CLI_FLAGS, **_FLAGS_BY_COMMAND.get(args.command, {})}
    try:
        with option_names(flags):
            return args.func(args)
    except (AttnSwapError, OSError) as err:  # bad input, missing files: a message, not a traceback
        print(f"attnswap: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("attnswap: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
