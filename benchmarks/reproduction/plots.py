"""The report's PNG plots (matplotlib, imported when drawing)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .config import LOGIT_TOL, MECH_TITLES
from .files import number


PLOT_FILES = {1: "claim1_logit_diff.png", 2: "claim2_ppl_rank_collapse.png", 3: "claim3_loss_curves.png",
              4: "claim4_smollm2_polynomial.png", 5: "claim5_sink_entropy.png", "cpt": "cpt_smollm2.png",
              "mt": "mt_smollm2_de_en.png"}


def _fig(rows: int, cols: int, w: float = 5.0, h: float = 3.6) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(w * cols, h * rows), layout="constrained")


COLORS = {"softmax": "tab:blue", "dagpam": "tab:green", "poly_scaled": "tab:orange", "poly_unscaled": "tab:red",
          "poly_p1": "tab:purple"}


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
    """Draw the PNG of every claim whose analysis (and, for claims 2-4, ``data``) allows it into ``out``;
    {claim: [file names]} of those drawn."""
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
                    curves = [[number(x) for x in r["probe"]["per_layer"][key]] for r in rs]
                    _band(ax, list(range(len(curves[0]))), curves, MECH_TITLES[m], COLORS[m])
            ax.set_xlabel("hidden state (0 = embeddings, last = after final norm)")
            ax.set_title(title, fontsize=8)
            ax.legend(fontsize=7)
        fig.savefig(out / "claim2_ppl_rank_collapse.png", dpi=110)
        files[2] = ["claim2_ppl_rank_collapse.png"]
    if "claim3" in analysis and analysis["claim3"]["verdict"] != "not run":
        fig = _fig(1, 2, 5.5, 3.8)
        ax = fig.add_subplot(1, 2, 1)
        for m in ("poly_scaled", "poly_unscaled", "poly_p1", "softmax"):
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
        for m in ("poly_scaled", "poly_unscaled", "poly_p1", "softmax"):
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
    arms = (("softmax", "tab:blue"), ("dagpam", "tab:green"))
    if "cpt" in analysis and analysis["cpt"]["verdict"] != "not run":
        c = analysis["cpt"]
        fig = _fig(1, len(c["corpora"]), 4.2, 3.4)
        for j, (corpus, v) in enumerate(c["corpora"].items()):
            ax = fig.add_subplot(1, len(c["corpora"]), j + 1)
            for i, (arm, color) in enumerate(arms):
                ys = v["ppl"][arm]
                ax.scatter([i] * len(ys), ys, color=color, zorder=3)
            if math.isfinite(number(c["base"].get(corpus))):
                ax.axhline(c["base"][corpus], color="black", ls="--", label="base (no training)")
            ax.set_xticks([0, 1], ["softmax", "daGPAM λ₀=0"])
            ax.set_xlim(-0.5, 1.5)
            ax.set_ylabel("held-out perplexity (one dot per seed)")
            ax.set_title(f"continued pretraining: {corpus}", fontsize=9)
            ax.legend(fontsize=7)
        fig.savefig(out / PLOT_FILES["cpt"], dpi=110)
        files["cpt"] = [PLOT_FILES["cpt"]]
    if "mt" in analysis and analysis["mt"]["verdict"] != "not run":
        c = analysis["mt"]
        fig = _fig(1, 2, 4.2, 3.4)
        for j, (metric, title) in enumerate((("bleu", "BLEU"), ("chrf", "chrF"))):
            ax = fig.add_subplot(1, 2, j + 1)
            for i, (arm, color) in enumerate(arms):
                ys = c["test"][arm][metric]
                ax.scatter([i] * len(ys), ys, color=color, zorder=3)
            ax.axhline(c["base"][metric], color="black", ls="--", label="base (no fine-tuning)")
            ax.set_xticks([0, 1], ["softmax", "daGPAM λ₀=0"])
            ax.set_xlim(-0.5, 1.5)
            ax.set_ylabel(f"test {title} (one dot per seed)")
            ax.set_title(f"de→en fine-tuning: {title} (not a standard benchmark)", fontsize=8)
            ax.legend(fontsize=7)
        fig.savefig(out / PLOT_FILES["mt"], dpi=110)
        files["mt"] = [PLOT_FILES["mt"]]
    return files
