"""The measures of SCIENCE.md "Diagnostics" as pure functions on tensors. Nothing here knows about models.

Shapes: ``B`` batch, ``H`` heads, ``Q`` queries, ``K`` keys, ``T`` tokens, ``D`` hidden size, ``d`` head size,
``n`` the number of top-N sizes asked for.

- ``weights``: raw attention weights ``a`` (B, H, Q, K), whatever the mechanism returns (softmax
  probabilities, daGPAM's signed combined matrix, polynomial's unnormalised weights).
- ``visible``: bool (B|1, 1|H, Q, K), True where query i may see key j *and* both are real tokens (causal,
  padding). Padded queries have no visible key, so their rows are skipped everywhere.
- ``p``: probability-type weights from :func:`probability_weights`: ``|a_ij| / Σ_j |a_ij|`` over visible keys.
  For softmax rows this is ``a`` itself; for signed or unnormalised weights it is the convention SCIENCE.md
  asks to state (``weights_convention`` in a probe's output).

Per-row measures return (B, H, Q) and are meaningful where :func:`valid_rows` is True; per-head measures
return (B, H); hidden-state measures return (B,).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

SPARSE_BELOW = 1e-3  # "share of weights below 0.001" (arXiv 2603.06248's LLM statistics)
DENSE_ABOVE = 0.1  # "share of weights above 0.1"
SINK_HEAD_THRESHOLD = 0.5  # a head "has a sink" when its mean weight on the first token exceeds this


def visible_counts(visible: torch.Tensor) -> torch.Tensor:
    """``N_i``: number of visible keys per row. visible (B, 1|H, Q, K) -> (B, 1|H, Q) float."""
    return visible.sum(-1).to(torch.float32)


def valid_rows(visible: torch.Tensor) -> torch.Tensor:
    """Rows with at least one visible key (real queries). visible (B, 1|H, Q, K) -> (B, 1|H, Q) bool."""
    return visible.any(-1)


def probability_weights(weights: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """``p_ij = |a_ij| / Σ_j |a_ij|`` over visible keys, 0 on hidden keys; float32 or float64.

    weights (B, H, Q, K); visible (B|1, 1|H, Q, K) -> (B, H, Q, K). A row whose visible weights are all 0
    stays all 0 (its entropy is then 0 and its mass measures 0).
    """
    a = weights.to(torch.promote_types(weights.dtype, torch.float32)).abs() * visible
    total = a.sum(-1, keepdim=True)
    return a / torch.where(total > 0, total, torch.ones_like(total))


def row_sum(weights: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Raw ``Σ_j a_ij`` over visible keys (1 for softmax and tied daGPAM). (B, H, Q, K) -> (B, H, Q)."""
    return (weights.float() * visible).sum(-1)


def abs_row_mass(weights: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """``m_i = Σ_j |a_ij|`` over visible keys: the factor that :func:`probability_weights` divides out (1 for softmax
    rows; the scale of a polynomial row). (B, H, Q, K) -> (B, H, Q)."""
    return (weights.float().abs() * visible).sum(-1)


def raw_collision_entropy(weights: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Scale-aware entropy: ``H2raw_i = -log Σ_j a_ij²`` on the raw weights over visible keys, in nats.

    For a probability row it is the Rényi-2 (collision) entropy (``log N_i`` when uniform, 0 when one-hot, never above
    the Shannon entropy). For any row ``H2raw_i = H2(p_i) - 2 log m_i``, with ``p_i`` the ``|a|``-renormalised row and
    ``m_i`` :func:`abs_row_mass`: the shape term the renormalised measures see, plus the row's scale, which they
    divide out. ``Σ_i exp(-H2raw_i) = ‖A‖_F²`` (:func:`frobenius_norm`). A row whose visible weights are all 0 gives
    ``+inf`` (not a sample of the mean). (B, H, Q, K) -> (B, H, Q).
    """
    return -(weights.to(torch.promote_types(weights.dtype, torch.float32)).square() * visible).sum(-1).log()


def negative_mass_share(weights: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Share of the absolute weight mass that is negative: ``Σ_j max(-a_ij, 0) / Σ_j |a_ij|``.

    0 for softmax; > 0 where daGPAM's second branch wins or an odd-degree polynomial sees negative scores.
    (B, H, Q, K) -> (B, H, Q).
    """
    a = weights.float() * visible
    total = a.abs().sum(-1)
    return (-a).clamp_min(0).sum(-1) / torch.where(total > 0, total, torch.ones_like(total))


def entropy(p: torch.Tensor) -> torch.Tensor:
    """``H_i = -Σ_j p_ij log p_ij`` in nats (``0 log 0 = 0``). p (B, H, Q, K) -> (B, H, Q).

    A uniform row over ``N_i`` keys gives ``log N_i``; a one-hot row gives 0.
    """
    return -torch.xlogy(p, p).sum(-1)


def effective_support(p: torch.Tensor) -> torch.Tensor:
    """``exp(H_i)``: how many keys the row effectively spreads over (``N_i`` when uniform, 1 when one-hot).
    p (B, H, Q, K) -> (B, H, Q)."""
    return entropy(p).exp()


def max_weight(p: torch.Tensor) -> torch.Tensor:
    """Largest weight per row. p (B, H, Q, K) -> (B, H, Q)."""
    return p.amax(-1)


def sparsity_shares(
    p: torch.Tensor, visible: torch.Tensor, *, below: float = SPARSE_BELOW, above: float = DENSE_ABOVE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Share of a row's *visible* weights that are ``< below`` and ``> above``.

    p (B, H, Q, K); visible (B|1, 1|H, Q, K) -> two (B, H, Q) tensors (rows without visible keys give 0).
    """
    n = visible_counts(visible).clamp_min(1)
    return ((p < below) & visible).sum(-1) / n, ((p > above) & visible).sum(-1) / n


def frobenius_norm(weights: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """``‖A‖_F`` per head on the raw weights, over real queries and visible keys. (B, H, Q, K) -> (B, H)."""
    return (weights.float() * visible).square().sum((-1, -2)).sqrt()


def frobenius_ratio(weights: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """``‖A‖_F / sqrt(N)`` with ``N`` the number of real queries of the sequence. (B, H, Q, K) -> (B, H).

    Softmax keeps it in ``(0, 1]``: causal uniform rows give ``sqrt(H_N / N)`` (``H_N`` the harmonic number),
    one-hot rows give 1 (arXiv 2410.18613).
    """
    n = valid_rows(visible).any(1).sum(-1).clamp_min(1).to(torch.float32)  # (B,)
    return frobenius_norm(weights, visible) / n.sqrt()[:, None]


def first_token_index(token_valid: torch.Tensor) -> torch.Tensor:
    """Index of each sequence's first real token (the sink candidate; > 0 under left padding).
    token_valid (B, T) bool -> (B,) long (0 for a sequence with no real token)."""
    return token_valid.to(torch.int8).argmax(-1)


def sink_strength(p: torch.Tensor, visible: torch.Tensor, sink: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean weight on the first token, ``a_i0``, over real queries ``i > 0`` (SCIENCE.md "Sink strength").

    p (B, H, Q, K) (Q == K, self-attention); visible (B|1, 1|H, Q, K); sink (B,) long, the first real token
    of each sequence (0 without left padding). Returns ``(strength (B, H), defined (B,) bool)``; a sequence
    with a single real token has no query after its sink and is not defined.
    """
    b = torch.arange(p.shape[0], device=p.device)
    on_sink = p[b, :, :, sink]  # (B, H, Q)
    q_index = torch.arange(p.shape[-2], device=p.device)
    rows = valid_rows(visible).any(1) & (q_index[None, :] > sink[:, None])  # (B, Q)
    count = rows.sum(-1)
    strength = (on_sink * rows[:, None, :]).sum(-1) / count.clamp_min(1)[:, None]
    return strength, count > 0


def sink_head_share(strength: torch.Tensor, threshold: float = SINK_HEAD_THRESHOLD) -> torch.Tensor:
    """Share of heads whose sink strength exceeds ``threshold``. strength (..., H) -> (...)."""
    return (strength > threshold).float().mean(-1)


def value_norm_ratio(values: torch.Tensor, token_valid: torch.Tensor, sink: torch.Tensor) -> torch.Tensor:
    """``‖v_0‖ / mean_j ‖v_j‖`` per head: the sink token's value norm against the mean over real tokens.

    values (B, H, K, d) (one per query head, GQA heads repeated); token_valid (B, K) bool; sink (B,) long.
    Returns (B, H). The "waiver" view (arXiv 2407.01601) predicts < 1 for sink heads.
    """
    norms = values.float().norm(dim=-1)  # (B, H, K)
    b = torch.arange(values.shape[0], device=values.device)
    mean = (norms * token_valid[:, None, :]).sum(-1) / token_valid.sum(-1).clamp_min(1)[:, None]
    return norms[b, :, sink] / mean.clamp_min(torch.finfo(torch.float32).tiny)


def _top_n_ranks(p: torch.Tensor, visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the weights sorted descending (hidden keys last) and each key's rank (0 = largest)."""
    keyed = torch.where(visible, p, torch.full_like(p, -1.0))
    ordered, order = keyed.sort(dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(p.shape[-1], device=p.device).expand_as(order))
    return ordered.clamp_min(0), ranks


def top_n_mass(p: torch.Tensor, visible: torch.Tensor, top_n: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mass captured by the ``N`` largest weights of each row, for each ``N`` in ``top_n``.

    p (B, H, Q, K); visible (B|1, 1|H, Q, K). Returns ``(mass (n, B, H, Q), defined (n, B, 1|H, Q) bool)``:
    a row counts for ``N`` only when it sees more than ``N`` keys (else the mass is trivially 1).
    """
    ordered, _ = _top_n_ranks(p, visible)
    cum = ordered.cumsum(-1)
    k = p.shape[-1]
    mass = torch.stack([cum[..., min(n, k) - 1] for n in top_n])
    counts = visible_counts(visible)
    return mass, torch.stack([counts > n for n in top_n])


def n_over_l(visible: torch.Tensor, top_n: Sequence[int]) -> torch.Tensor:
    """``N / L`` per row, ``L = N_i`` the keys the row sees (the normalisation paper's ratio, arXiv 2508.17821).
    visible (B|1, 1|H, Q, K) -> (n, B, 1|H, Q)."""
    counts = visible_counts(visible).clamp_min(1)
    return torch.stack([n / counts for n in top_n])


def selection_separation(
    p: torch.Tensor, values: torch.Tensor, visible: torch.Tensor, top_n: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distance between the mean value of the top-N keys and the mean value of the other visible keys.

    p (B, H, Q, K); values (B, H, K, d); visible (B|1, 1|H, Q, K). Returns ``(distance (n, B, H, Q),
    relative (n, B, H, Q), defined (n, B, 1|H, Q))``; ``relative`` divides by the mean ``‖v_j‖`` over the
    row's visible keys, so that heads with large values are comparable. Defined where the row sees > N keys.
    The normalisation paper (arXiv 2508.17821) finds the separation collapses as ``N/L`` grows.
    """
    _, ranks = _top_n_ranks(p, visible)
    v = values.float()
    vis = visible.expand_as(p)
    counts = vis.sum(-1, keepdim=True).float()
    mean_norm = (vis.float() @ v.norm(dim=-1, keepdim=True)) / counts.clamp_min(1)  # (B, H, Q, 1)
    dist, rel = [], []
    for n in top_n:
        chosen = (ranks < n) & vis
        k = chosen.sum(-1, keepdim=True).float()
        rest = vis & ~chosen
        gap = (chosen.float() @ v) / k.clamp_min(1) - (rest.float() @ v) / (counts - k).clamp_min(1)
        d = gap.norm(dim=-1)
        dist.append(d)
        rel.append(d / mean_norm.squeeze(-1).clamp_min(torch.finfo(torch.float32).tiny))
    defined = torch.stack([visible_counts(visible) > n for n in top_n])
    return torch.stack(dist), torch.stack(rel), defined


def _masked_tokens(hidden: torch.Tensor, token_valid: torch.Tensor) -> torch.Tensor:
    return hidden.float() * token_valid[..., None]


def rank_collapse_residual(hidden: torch.Tensor, token_valid: torch.Tensor) -> torch.Tensor:
    """``‖X - 1 x̄ᵀ‖_F / ‖X‖_F`` over a sequence's real tokens (Dong et al. 2021; 0 when every token is the same
    vector). hidden (B, T, D); token_valid (B, T) bool -> (B,)."""
    x = _masked_tokens(hidden, token_valid)
    n = token_valid.sum(-1, keepdim=True).clamp_min(1)
    mean = x.sum(1) / n  # (B, D)
    centred = (x - mean[:, None, :]) * token_valid[..., None]
    total = x.square().sum((1, 2)).sqrt()
    return centred.square().sum((1, 2)).sqrt() / total.clamp_min(torch.finfo(torch.float32).tiny)


def mean_token_cosine(hidden: torch.Tensor, token_valid: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity over pairs ``i ≠ j`` of real tokens (1 when all tokens point the same way).
    hidden (B, T, D); token_valid (B, T) bool -> (B,); NaN for a sequence with fewer than 2 real tokens."""
    x = torch.nn.functional.normalize(_masked_tokens(hidden, token_valid), dim=-1)
    s = x.sum(1)  # Σ_i x̂_i, (B, D)
    n = token_valid.sum(-1).float()
    pairs = s.square().sum(-1) - x.square().sum((1, 2))  # Σ_{i≠j} x̂_i·x̂_j
    return torch.where(n > 1, pairs / (n * (n - 1)).clamp_min(1), torch.full_like(n, float("nan")))


def massive_activation_ratio(hidden: torch.Tensor, token_valid: torch.Tensor) -> torch.Tensor:
    """``max |h| / median |h|`` over every entry of a sequence's real tokens (arXiv 2603.06248).
    hidden (B, T, D); token_valid (B, T) bool -> (B,)."""
    out = []
    for h, ok in zip(hidden.float().abs(), token_valid):
        vals = h[ok].flatten()
        med = vals.median() if vals.numel() else torch.tensor(float("nan"))
        out.append(vals.max() / med.clamp_min(torch.finfo(torch.float32).tiny) if vals.numel() else med)
    return torch.stack(out)
