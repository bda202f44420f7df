"""Evaluation: perplexity, translation BLEU/chrF, and side-by-side comparison of mechanisms."""
