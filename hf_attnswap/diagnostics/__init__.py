"""Diagnostics of SCIENCE.md ("Diagnostics"): attention entropy, sinks, sparsity, Frobenius norm, rank collapse,
query-gradient flow, selectivity and massive activations, per layer and head, for any mechanism.

```python
from hf_attnswap.diagnostics import probe
result = probe(model, input_ids, attention_mask)      # one forward (+ one backward for the query gradients)
result.to_dict()["measures"]["entropy"]["mean"]       # layers x heads
```
``measures`` holds the pure functions on weight tensors; ``plots`` the figures of ``attnswap probe``.
"""

from __future__ import annotations

from . import measures
from .collect import DEFAULT_TOP_N, ProbeError, probe, probe_texts
from .result import MEASURES, ProbeResult, RunningStats

__all__ = ["DEFAULT_TOP_N", "MEASURES", "ProbeError", "ProbeResult", "RunningStats", "measures", "probe", "probe_texts"]
