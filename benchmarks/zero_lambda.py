"""How much a trained daGPAM λ does: held-out perplexity of a converted model as trained and with every λ set to 0.

    python benchmarks/zero_lambda.py --model runs/convert_smollm2_dagpam \
        [--json docs/results/convert_smollm2_dagpam/lambda_zeroed.json]

The same corpora and windows as ``recipes/convert.py``'s shipped configs: the first 8,192 tokens of the held-out
Wikipedia articles (10 %, first 10 documents) and of the first 10 news articles, windows of 256, stride 256.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import hf_attnswap  # noqa: F401  (registers daGPAM before the model is loaded)
from hf_attnswap.data.assets import resolve_asset
from hf_attnswap.data.lm import load_lm_texts
from hf_attnswap.data.text import load_texts
from hf_attnswap.evaluation.perplexity import perplexity


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a daGPAM model folder (e.g. convert.py's output_dir)")
    p.add_argument("--json", default=None, help="where to write the result (default: print only)")
    args = p.parse_args(argv)

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model)
    lambdas = [p for n, p in model.named_parameters() if n.endswith(("lambda_param", "lambda_pos_param", "lambda_neg_param"))]
    if not lambdas:
        raise SystemExit(f"error: {args.model} has no daGPAM lambda parameters (is it a daGPAM model?)")
    texts = load_lm_texts(dataset_name="wiki-text", validation_split_percentage=10, max_eval_samples=10)
    corpora = {"train-corpus held out": texts.validation, "news-text": load_texts(resolve_asset("news-text"), limit=10)}

    def measure() -> dict[str, float]:
        return {name: perplexity(model, tokenizer, docs, max_length=256, stride=256, max_tokens=8192, batch_size=4,
                                 progress=False).ppl for name, docs in corpora.items()}

    result = {"trained": measure()}
    with torch.no_grad():
        for p in lambdas:
            p.zero_()
    result["lambda set to 0"] = measure()
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
