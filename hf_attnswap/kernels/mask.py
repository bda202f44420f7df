"""The mask description the fast paths take: a dense boolean mask, and whether it is plain causal."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMask:
    """Which keys each query sees, for queries (B, H, Q, d) and keys (B, H_kv, K, d).

    - ``dense``: boolean (B|1, 1, Q, K), True = visible; ``None`` means every key is visible (unless causal).
    - ``causal_offset``: set when the mask is *plain causal* (no padding, no window): query i sees key j iff
      ``j <= i + causal_offset`` (``K - Q`` for a KV cache). Fast paths then skip masked blocks and ignore
      ``dense``.
    """

    dense: torch.Tensor | None
    q_len: int
    k_len: int
    causal_offset: int | None = None

    def block(self, q0: int, q1: int, k0: int, k1: int, device: torch.device) -> torch.Tensor | None:
        """Visibility of queries ``q0:q1`` x keys ``k0:k1``: bool (B|1, 1, q1-q0, k1-k0), or None if all visible."""
        if self.causal_offset is not None:
            if k1 - 1 <= q0 + self.causal_offset:  # the whole block is on or below the diagonal
                return None
            qi = torch.arange(q0, q1, device=device)[:, None]
            kj = torch.arange(k0, k1, device=device)[None, :]
            return (kj <= qi + self.causal_offset)[None, None]
        if self.dense is None:
            return None
        return self.dense[:, :, q0:q1, k0:k1]

    def key_limit(self, q1: int) -> int:
        """One past the last key any of the queries ``< q1`` can see (for skipping blocks)."""
        if self.causal_offset is None:
            return self.k_len
        return max(0, min(self.k_len, q1 + self.causal_offset))

    def visible_counts(self, device: torch.device) -> torch.Tensor:
        """``N_i``: number of visible keys per query, float (B|1, 1, Q, 1), at least 1."""
        if self.causal_offset is not None:
            n = torch.arange(self.q_len, device=device) + self.causal_offset + 1
            return n.clamp(1, self.k_len).to(torch.float32).view(1, 1, -1, 1)
        if self.dense is None:
            return torch.full((1, 1, self.q_len, 1), float(max(self.k_len, 1)), device=device)
        return self.dense.sum(-1, keepdim=True).clamp_min(1).to(torch.float32)

    def inverse_sqrt_counts(self, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``1/sqrt(N_i)`` (B|1, 1, Q, 1) in ``dtype``, from :meth:`visible_counts`: polynomial attention's length
        scale ``"visible"``, the one home of that formula."""
        return self.visible_counts(device).to(dtype).rsqrt()

    def sdpa_args(self) -> tuple[torch.Tensor | None, bool]:
        """``(attn_mask, is_causal)`` for ``scaled_dot_product_attention`` (whose ``is_causal`` is top-left aligned)."""
        if self.causal_offset is not None:
            if self.causal_offset == 0 and self.q_len > 1:
                return None, True
            if self.causal_offset >= self.k_len - 1:  # e.g. one decode step: every cached key is visible
                return None, False
        return self.dense, False
