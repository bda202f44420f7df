"""Offline assets for hf_attnswap's tests and demo (SmolLM2-135M from a GGUF file, the GPT-2 tokenizer)."""
