"""Figures of ``attnswap probe``, drawn from :meth:`ProbeResult.to_dict` outputs (so they can be redrawn from the
JSON file). Uses matplotlib's object API with the Agg canvas: headless, no pyplot state.

Every function takes ``runs``: a list of ``(label, probe_dict)``, one per mechanism, and writes one PNG.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

Run = tuple[str, dict[str, Any]]
MAX_MAP_LAYERS = 8  # attention-map grids show at most this many layers, evenly spaced
SEPARATION_ADVICE = 0.06  # arXiv 2508.17821: keep N <~ 0.06 L


def _figure(rows: int, cols: int, width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width * cols, height * rows), layout="constrained")


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _array(values: Any) -> torch.Tensor:
    """Nested lists with None (NaN in JSON) -> float tensor with NaN."""
    def fix(v: Any) -> Any:
        return [fix(x) for x in v] if isinstance(v, list) else (math.nan if v is None else v)
    return torch.tensor(fix(values), dtype=torch.float64)


def safe_name(label: str) -> str:
    """A file-name fragment for an attention label: ``dagpam:lambda_init=0.1`` -> ``dagpam_lambda_init_0.1``."""
    return re.sub(r"[^A-Za-z0-9.]+", "_", label).strip("_") or "attn"


def _per_head_curve(d: dict[str, Any], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over heads per layer, and the spread of the heads (std across heads)."""
    m = _array(d["measures"][name]["mean"])
    return m.nanmean(-1), _nanstd(m)


def _nanstd(m: torch.Tensor) -> torch.Tensor:
    mean = m.nanmean(-1, keepdim=True)
    return (m - mean).square().nanmean(-1).sqrt()


def _per_sample_curve(d: dict[str, Any], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    entry = d["measures"][name]
    return _array(entry["mean"]), _array(entry["std"])


PER_LAYER_PANELS = (
    # (measure, title, y label, x axis, log scale)
    ("entropy", "Attention entropy", "H_i (nats), mean over heads", "layer", False),
    ("sink_strength", "Sink strength", "mean weight on first token", "layer", False),
    ("rank_collapse_residual", "Rank collapse", "residual ||X - 1x̄ᵀ||_F / ||X||_F", "hidden", False),
    ("token_cosine", "Token similarity", "mean pairwise cosine", "hidden", False),
    ("query_grad_norm", "Gradient flow", "||dL/dW_q||_F", "layer", True),
    ("massive_activation", "Massive activations", "max|h| / median|h|", "hidden", True),
)


def plot_per_layer(runs: Sequence[Run], path: Path) -> Path:
    """Six panels (entropy, sink strength, rank-collapse residual, token cosine, query-gradient norm, massive
    activations) against depth, one line per mechanism; bands: spread over heads, or ±1 std over samples."""
    fig = _figure(2, 3, 5.0, 3.6)
    axes = fig.subplots(2, 3).flatten()
    for ax, (name, title, ylabel, xaxis, log) in zip(axes, PER_LAYER_PANELS):
        for label, d in runs:
            per_head = d["measures"][name]["axes"] == ["layer", "head"]
            mean, spread = _per_head_curve(d, name) if per_head else _per_sample_curve(d, name)
            if torch.isnan(mean).all():
                continue
            x = torch.arange(1, len(mean) + 1) if xaxis == "layer" else torch.arange(len(mean))
            (line,) = ax.plot(x, mean, marker="o", ms=3, label=label)
            lo = (mean - spread).clamp_min(1e-12) if log else mean - spread
            ax.fill_between(x, lo, mean + spread, color=line.get_color(), alpha=0.15)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("attention layer" if xaxis == "layer" else "hidden state (0 = embeddings, l = after layer l)")
        if log and ax.lines:
            ax.set_yscale("log")
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        ax.grid(alpha=0.3)
    fig.suptitle("Per-layer diagnostics (bands: spread over heads, or ±1 std over sequences/batches)")
    return _save(fig, path)


def plot_sink_heatmaps(runs: Sequence[Run], path: Path) -> Path:
    """Layer x head heatmap of sink strength (mean weight on the first token), one panel per mechanism."""
    fig = _figure(1, len(runs), 3.6, 3.4)
    axes = fig.subplots(1, len(runs), squeeze=False)[0]
    image = None
    for ax, (label, d) in zip(axes, runs):
        m = _array(d["measures"]["sink_strength"]["mean"])
        image = ax.imshow(m.numpy(), vmin=0.0, vmax=1.0, cmap="magma", aspect="auto", origin="lower",
                          extent=(-0.5, m.shape[1] - 0.5, 0.5, m.shape[0] + 0.5))
        share = d["sink_head_share"]["overall"]
        ax.set_title(f"{label}\nheads with sink > {d['sink_head_threshold']}: {0 if share is None else share:.0%}",
                     fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
    if image is not None:
        fig.colorbar(image, ax=list(axes), label="sink strength (mean weight on first token)")
    fig.suptitle("Sink strength per layer and head")
    return _save(fig, path)


def plot_top_n(runs: Sequence[Run], path: Path) -> Path:
    """Selectivity: top-N mass against N, and the relative separation of selected/other values against N/L."""
    fig = _figure(1, 2, 5.2, 3.8)
    mass_ax, sep_ax = fig.subplots(1, 2)
    for label, d in runs:
        n = d["top_n"]
        mass = _array(d["measures"]["top_n_mass"]["mean"])  # (layer, N, head)
        (line,) = mass_ax.plot(n, mass.transpose(0, 1).flatten(1).nanmean(-1), marker="o", label=label)
        ratio = _array(d["measures"]["n_over_l"]["mean"]).transpose(0, 1).flatten(1).nanmean(-1)
        sep = _array(d["measures"]["separation_rel"]["mean"]).transpose(0, 1).flatten(1).nanmean(-1)
        if not torch.isnan(sep).all():
            sep_ax.plot(ratio, sep, marker="o", color=line.get_color(), label=label)
    mass_ax.set_xscale("log", base=2)
    mass_ax.set_xlabel("N (keys kept per query row)")
    mass_ax.set_ylabel("top-N mass (mean over layers, heads)")
    mass_ax.set_title("Top-N mass")
    sep_ax.axvline(SEPARATION_ADVICE, color="gray", ls="--", lw=1, label="N = 0.06 L")
    sep_ax.set_xscale("log")
    sep_ax.set_xlabel("N / L (L = keys the row sees)")
    sep_ax.set_ylabel("separation / mean ||v_j||")
    sep_ax.set_title("||mean v(top N) - mean v(rest)||, relative")
    for ax in (mass_ax, sep_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Selectivity (rows that see more than N keys)")
    return _save(fig, path)


def plot_attention_map(label: str, weights: torch.Tensor, path: Path, *, heads: int = 4) -> Path:
    """Grid of raw attention weights of one example: rows = layers (at most 8, evenly spaced), columns = the
    first ``heads`` heads. weights: (layers, heads, n, n). Signed weights use a diverging map centred at 0."""
    layers_total, heads_total = weights.shape[:2]
    heads = max(1, min(heads, heads_total))
    shown = sorted({round(i * (layers_total - 1) / max(1, MAX_MAP_LAYERS - 1)) for i in range(MAX_MAP_LAYERS)}
                   if layers_total > MAX_MAP_LAYERS else range(layers_total))
    w = weights[shown][:, :heads].float()
    signed = bool((w < 0).any())
    bound = float(w.abs().max()) or 1.0
    cmap, vmin = ("RdBu_r", -bound) if signed else ("viridis", 0.0)
    fig = _figure(len(shown), heads, 2.3, 2.2)
    axes = fig.subplots(len(shown), heads, squeeze=False)
    image = None
    for r, layer in enumerate(shown):
        for c in range(heads):
            ax = axes[r][c]
            image = ax.imshow(w[r, c].numpy(), cmap=cmap, vmin=vmin, vmax=bound, interpolation="nearest")
            ax.set_title(f"layer {layer + 1}, head {c}", fontsize=8)
            ax.set_xlabel("key position", fontsize=7)
            ax.set_ylabel("query position", fontsize=7)
            ax.tick_params(labelsize=6)
    fig.colorbar(image, ax=axes.flatten().tolist(), shrink=min(1.0, 4 / len(shown)), label="raw weight a_ij" + (" (signed)" if signed else ""))
    fig.suptitle(f"Attention maps, {label} ({w.shape[-1]} tokens of the example)")
    return _save(fig, path)


def write_plots(runs: Sequence[Run], maps: dict[str, torch.Tensor | None], out_dir: Path, *, heads: int = 4) -> list[Path]:
    """All figures of ``attnswap probe`` into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    paths = [plot_per_layer(runs, out_dir / "per_layer.png"),
             plot_sink_heatmaps(runs, out_dir / "sink_strength.png"),
             plot_top_n(runs, out_dir / "top_n.png")]
    for label, weights in maps.items():
        if weights is not None:
            paths.append(plot_attention_map(label, weights, out_dir / f"attention_map_{safe_name(label)}.png", heads=heads))
    return paths
