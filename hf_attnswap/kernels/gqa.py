"""Query rows grouped by KV head, so that one matmul serves every query head of a GQA group."""

from __future__ import annotations

import torch


def group_rows(x: torch.Tensor, q0: int, q1: int) -> torch.Tensor:
    """(B, H_kv, R, Q, d) -> rows ``q0:q1`` of every group member as one matrix (B, H_kv, R·(q1-q0), d)."""
    b, h, r, _, d = x.shape
    return x[:, :, :, q0:q1].reshape(b, h, r * (q1 - q0), d)


def ungroup_rows(x: torch.Tensor, r: int) -> torch.Tensor:
    """Inverse of :func:`group_rows`: (B, H_kv, R·n, d) -> (B, H_kv, R, n, d) (a view)."""
    b, h, n, d = x.shape
    return x.view(b, h, r, n // r, d)
