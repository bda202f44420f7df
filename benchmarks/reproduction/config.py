"""What the reproduction runs and judges by: the repository's paths, the claims' thresholds (the report repeats
them and ``reproduce.json`` stores them), the from-scratch mechanisms and the two scales. Imports nothing of the
package (every other module may import it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


REPO = Path(__file__).resolve().parents[2]  # the repository root (this file is benchmarks/reproduction/config.py)
RECIPE = "recipes/continue_pretrain.py"  # relative to REPO, where every job runs
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


def thresholds() -> dict[str, float]:
    """The constants the verdicts and the report's test descriptions use (stored in reproduce.json)."""
    return {"logit_tol": LOGIT_TOL, "significance_t": SIGNIFICANCE_T, "much_worse_ppl_ratio": MUCH_WORSE_PPL_RATIO,
            "blowup_nats": BLOWUP_NATS, "smooth_steps": SMOOTH_STEPS, "most_of_gap": MOST_OF_GAP,
            "near_base_ppl_ratio": NEAR_BASE_PPL_RATIO, "gap_in_stds": GAP_IN_STDS,
            "min_relative_gap": MIN_RELATIVE_GAP}


def scale_named(name: str) -> Scale:
    """The scale of a name that ``--job-args`` carries: ``QUICK`` for "quick", else ``FULL``."""
    return QUICK if name == "quick" else FULL


def recipe_config(config: str) -> dict[str, Any]:
    """A recipe YAML config of ``recipes/configs`` as a dict."""
    import yaml

    return yaml.safe_load((REPO / CONFIGS / config).read_text())
