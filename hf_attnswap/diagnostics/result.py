"""Running statistics and the result of a probe: per layer (and head) mean ± std, mergeable over batches."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .measures import SINK_HEAD_THRESHOLD, sink_head_share

ABS_RENORMALISED = "abs_renormalised"
PROBABILITIES = "probabilities"
CONVENTIONS = {
    PROBABILITIES: "rows of a are >= 0 and sum to 1: the probability-type measures use a_ij as is",
    ABS_RENORMALISED: "a has negative weights or rows that do not sum to 1: the probability-type measures (entropy, "
                      "effective support, max weight, sparsity, sink strength, top-N mass, separation) use "
                      "p_ij = |a_ij| / sum_j |a_ij| over visible keys; frobenius_*, row_sum and negative_mass_share "
                      "use the raw a_ij, and so do the scale-aware abs_row_mass and raw_collision_entropy",
}


class RunningStats:
    """Sum, sum of squares and count of samples, element-wise over ``shape`` (e.g. layers x heads), in float64.

    ``add(index, values, defined)`` adds the samples ``values`` (n, *shape[1:]) at ``index`` along the first
    axis; ``defined`` (broadcastable to ``values``) marks which samples exist. Nothing else is kept.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.sum = torch.zeros(shape, dtype=torch.float64)
        self.sumsq = torch.zeros(shape, dtype=torch.float64)
        self.count = torch.zeros(shape, dtype=torch.float64)

    def add(self, index: int, values: torch.Tensor, defined: torch.Tensor | None = None) -> None:
        v = values.detach().to(device="cpu", dtype=torch.float64)
        ok = torch.isfinite(v) if defined is None else defined.detach().cpu().expand_as(v) & torch.isfinite(v)
        v = torch.where(ok, v, torch.zeros_like(v))
        self.sum[index] += v.sum(0)
        self.sumsq[index] += v.square().sum(0)
        self.count[index] += ok.sum(0)

    def merge(self, other: RunningStats) -> None:
        self.sum += other.sum
        self.sumsq += other.sumsq
        self.count += other.count

    @property
    def mean(self) -> torch.Tensor:
        return torch.where(self.count > 0, self.sum / self.count.clamp_min(1), torch.full_like(self.sum, math.nan))

    @property
    def std(self) -> torch.Tensor:
        """Population standard deviation of the samples (0 for a single sample)."""
        var = self.sumsq / self.count.clamp_min(1) - self.mean.square()
        return torch.where(self.count > 0, var.clamp_min(0).sqrt(), torch.full_like(self.sum, math.nan))

    def to_dict(self) -> dict[str, Any]:
        return {"mean": _jsonable(self.mean), "std": _jsonable(self.std), "count": _jsonable(self.count.long())}


def _jsonable(t: torch.Tensor) -> Any:
    """Nested lists with NaN as None (JSON has no NaN)."""
    if t.is_floating_point():
        return [_jsonable(x) for x in t] if t.dim() else (None if not math.isfinite(float(t)) else float(t))
    return t.tolist()


@dataclass(frozen=True)
class Measure:
    """What one entry of :attr:`ProbeResult.stats` holds: axes, unit, and the samples mean ± std runs over."""

    axes: tuple[str, ...]
    unit: str
    over: str
    description: str


ROWS = "query rows (real tokens) of every sequence and batch"
SEQS = "sequences"
BATCHES = "batches (one gradient per batch)"

MEASURES: dict[str, Measure] = {
    "entropy": Measure(("layer", "head"), "nats", ROWS, "attention entropy H_i = -sum_j p_ij log p_ij"),
    "effective_support": Measure(("layer", "head"), "keys", ROWS, "exp(H_i)"),
    "max_weight": Measure(("layer", "head"), "weight", ROWS, "largest p_ij of the row"),
    "share_below_0.001": Measure(("layer", "head"), "share of visible keys", ROWS, "share of p_ij < 0.001"),
    "share_above_0.1": Measure(("layer", "head"), "share of visible keys", ROWS, "share of p_ij > 0.1"),
    "negative_mass_share": Measure(("layer", "head"), "share of |a| mass", ROWS,
                                   "sum_j max(-a_ij, 0) / sum_j |a_ij| on the raw weights"),
    "row_sum": Measure(("layer", "head"), "weight", ROWS, "raw sum_j a_ij (1 for softmax and tied daGPAM)"),
    "abs_row_mass": Measure(("layer", "head"), "weight", ROWS,
                            "m_i = sum_j |a_ij| on the raw weights (what the |a| renormalisation divides out)"),
    "raw_collision_entropy": Measure(("layer", "head"), "nats", ROWS,
                                     "scale-aware entropy -log sum_j a_ij^2 on the raw weights = H2(p_i) - 2 log m_i "
                                     "(Renyi-2 entropy for probability rows)"),
    "frobenius_norm": Measure(("layer", "head"), "norm", SEQS, "||A||_F of the raw weights over real tokens"),
    "frobenius_ratio": Measure(("layer", "head"), "norm / sqrt(tokens)", SEQS, "||A||_F / sqrt(N)"),
    "sink_strength": Measure(("layer", "head"), "weight", SEQS,
                             "mean p_i0 on the first real token over queries i > 0"),
    "sink_value_norm_ratio": Measure(("layer", "head"), "ratio", SEQS, "||v_0|| / mean_j ||v_j||"),
    "top_n_mass": Measure(("layer", "top_n", "head"), "weight", ROWS + " that see more than N keys",
                          "mass of the N largest p_ij of the row"),
    "n_over_l": Measure(("layer", "top_n", "head"), "ratio", ROWS + " that see more than N keys",
                        "N / L with L = N_i, the keys the row sees"),
    "separation": Measure(("layer", "top_n", "head"), "value norm", ROWS + " that see more than N keys",
                          "||mean of the top-N values - mean of the other visible values||"),
    "separation_rel": Measure(("layer", "top_n", "head"), "ratio", ROWS + " that see more than N keys",
                              "separation / mean_j ||v_j|| over the row's visible keys"),
    "query_grad_norm": Measure(("layer",), "gradient norm", BATCHES,
                               "||dL/dW_q||_F of the mean LM loss w.r.t. the query projection weight"),
    "query_grad_norm_head": Measure(("layer", "head"), "gradient norm", BATCHES, "the same, per head's rows of W_q"),
    "rank_collapse_residual": Measure(("hidden_state",), "ratio", SEQS, "||X - 1 mean(X)^T||_F / ||X||_F"),
    "token_cosine": Measure(("hidden_state",), "cosine", SEQS, "mean pairwise cosine similarity of tokens"),
    "massive_activation": Measure(("hidden_state",), "ratio", SEQS, "max |h| / median |h|"),
}


@dataclass
class ProbeResult:
    """What :func:`~hf_attnswap.diagnostics.probe` measured, as running sums (merge results of several batches
    with :meth:`merge`). ``stats[name]`` follows :data:`MEASURES`: ``hidden_state`` index 0 is the embedding
    output and ``l`` the output of layer ``l`` (Transformers applies the final norm to the last one).

    ``attention_map``: raw weights of one example, (layers, heads, n, n) over its first ``n`` real tokens, or None.
    """

    layers: int
    heads: int
    top_n: tuple[int, ...]
    attn_implementation: str
    stats: dict[str, RunningStats]
    signed_layers: torch.Tensor  # (layers,) bool: some visible weight < 0
    unnormalised_layers: torch.Tensor  # (layers,) bool: some row sum differs from 1
    sequences: int = 0
    tokens: int = 0
    batches: int = 0
    loss_sum: float = 0.0
    grad_available: bool = False
    values_available: bool = False
    attention_map: torch.Tensor | None = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def empty(cls, layers: int, heads: int, top_n: tuple[int, ...], attn_implementation: str) -> ProbeResult:
        shapes = {"layer": layers, "head": heads, "top_n": len(top_n), "hidden_state": layers + 1}
        stats = {name: RunningStats(tuple(shapes[a] for a in m.axes)) for name, m in MEASURES.items()}
        return cls(layers, heads, tuple(top_n), attn_implementation, stats,
                   torch.zeros(layers, dtype=torch.bool), torch.zeros(layers, dtype=torch.bool))

    @property
    def weights_convention(self) -> str:
        return ABS_RENORMALISED if bool((self.signed_layers | self.unnormalised_layers).any()) else PROBABILITIES

    def merge(self, other: ProbeResult) -> ProbeResult:
        """Add ``other``'s samples to this result (same model shape and ``top_n``); returns ``self``."""
        if (self.layers, self.heads, self.top_n) != (other.layers, other.heads, other.top_n):
            raise ValueError("cannot merge probe results of different models or top_n")
        for name, s in self.stats.items():
            s.merge(other.stats[name])
        self.signed_layers |= other.signed_layers
        self.unnormalised_layers |= other.unnormalised_layers
        self.sequences += other.sequences
        self.tokens += other.tokens
        self.batches += other.batches
        self.loss_sum += other.loss_sum
        self.grad_available |= other.grad_available
        self.values_available |= other.values_available
        if self.attention_map is None:
            self.attention_map = other.attention_map
        self.notes += [n for n in other.notes if n not in self.notes]
        return self

    def to_dict(self) -> dict[str, Any]:
        """Every number, JSON-ready: ``measures[name] = {"axes", "unit", "over", "description", "mean", "std",
        "count"}`` (nested lists along ``axes``), plus per-layer head averages and the sink head shares."""
        sink = self.stats["sink_strength"].mean
        measures = {}
        for name, m in MEASURES.items():
            s = self.stats[name]
            measures[name] = {"axes": list(m.axes), "unit": m.unit, "over": m.over, "description": m.description,
                              **s.to_dict()}
        layer_mean = {name: _jsonable(self.stats[name].mean.nanmean(-1)) for name, m in MEASURES.items()
                      if m.axes == ("layer", "head")}
        per_layer_share = sink_head_share(sink)
        return {
            "attn_implementation": self.attn_implementation,
            "weights_convention": self.weights_convention,
            "weights_convention_text": CONVENTIONS[self.weights_convention],
            "weights_signed_per_layer": self.signed_layers.tolist(),
            "rows_unnormalised_per_layer": self.unnormalised_layers.tolist(),
            "layers": self.layers, "heads": self.heads, "top_n": list(self.top_n),
            "hidden_state_axis": "0 = embedding output, l = output of layer l (Transformers' output_hidden_states: "
                                 "the last one has the model's final norm applied)",
            "sequences": self.sequences, "tokens": self.tokens, "batches": self.batches,
            "loss": self.loss_sum / self.batches if self.batches else None,
            "gradients": self.grad_available, "values": self.values_available,
            "sink_head_threshold": SINK_HEAD_THRESHOLD,
            "sink_head_share": {"per_layer": _jsonable(per_layer_share),
                                "overall": _jsonable(sink_head_share(sink.flatten()))},
            "layer_mean_over_heads": layer_mean,
            "measures": measures,
            "notes": list(self.notes),
        }
