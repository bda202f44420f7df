"""The ``attnswap`` command.

    attnswap list                 mechanisms, their options and defaults
    attnswap demo [--model M]     load a model under each mechanism, show overhead, perplexity, generation
    attnswap prepare-assets       fetch and convert the offline assets (SmolLM2-135M, GPT-2 tokenizer)
"""

from __future__ import annotations

import argparse
import json
import sys


def _list(args: argparse.Namespace) -> int:
    import hf_attnswap

    mechs = hf_attnswap.list_mechanisms()
    if args.json:
        print(json.dumps(mechs, indent=2))
        return 0
    for name, info in mechs.items():
        extra = "  (adds parameters)" if info["adds_parameters"] else ""
        print(f"{name}{extra}: {info['description']}")
        for key, default in info["options"].items():
            print(f"    {key} = {default!r}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.model, prompt=args.prompt, max_new_tokens=args.max_new_tokens)
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from .data.assets import prepare_all

    for name, path in prepare_all(force=args.force).items():
        print(f"{name}: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="attnswap", description="Swap the attention of Transformers models.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="list mechanisms, options and defaults")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_list)
    p = sub.add_parser("demo", help="one model under every mechanism: overhead, perplexity, generation")
    p.add_argument("--model", default=None, help="Hub name or local path (default: the offline SmolLM2-135M)")
    p.add_argument("--prompt", default="The capital of France is")
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.set_defaults(func=_demo)
    p = sub.add_parser("prepare-assets", help="prepare the offline SmolLM2-135M and GPT-2 tokenizer")
    p.add_argument("--force", action="store_true", help="rebuild even if already prepared")
    p.set_defaults(func=_prepare)
    args = parser.parse_args(argv)
    from .errors import AttnSwapError

    try:
        return args.func(args)
    except (AttnSwapError, OSError) as err:  # bad input, missing files: a message, not a traceback
        print(f"attnswap: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
