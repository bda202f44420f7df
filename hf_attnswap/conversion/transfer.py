"""Stage 1 of converting a pretrained model: attention transfer (LoLCATs, arXiv 2410.10254; SCIENCE.md).

The model keeps its weights frozen. In one forward, every attention layer computes both its original attention
(the *teacher*: Transformers' SDPA, the function a model loaded with ``sdpa`` or ``eager`` runs) and the new
mechanism (the *student*) from the same ``q, k, v``; the student is trained to match the teacher's per-head outputs
(MSE), or for short blocks its weights (cross-entropy). With teacher forcing (default) each layer passes the
teacher's output on, so the layers train at once and independently: nothing backpropagates through the network,
only into each layer's new parameters: the mechanism's own (daGPAM's ``W⁻`` and λ), or the query/key projections
of a mechanism without any (SCIENCE.md).

```python
objective = TransferObjective(model, "polynomial", degree=3)    # swaps the student in, freezes the rest
loss = objective(input_ids=ids, attention_mask=mask).loss        # the transfer loss; .backward() as usual
objective.finish()                                               # the model now runs the student: save it
```
:func:`attention_transfer` is the same in a plain loop; ``recipes/convert.py`` runs it on the training loop
(checkpoints, exact resume, Accelerate). Cost: when the query/key projections train, a step is a teacher forward
of the whole model (no grad) and a student pass that, with teacher forcing, replays only the attention modules on
the inputs the teacher pass gave them (``benchmarks/transfer_step.py``). Memory: each layer's student activations
live until the backward, as in any training step, and each attention module's input (B, T, hidden) is kept for the
replay; no attention matrix is kept beyond its layer's loss (the ``"mse"`` loss never builds one on the fast paths).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface

from ..errors import AttnSwapError, OptionError
from ..mechanisms.common import masked_softmax, repeat_kv, visible_mask
from ..patching import attention_modules, install
from ..registry import (
    PARAMS_ATTR,
    ROPE_ATTR,
    _attention_interface,
    get_mechanism,
    is_mechanism,
    is_transformers_attention,
    parse_options,
)
from ..transformers_hooks import attn_implementation_of, boolean_mask

__all__ = ["LOSSES", "TRANSFER_ATTENTION", "TransferError", "TransferObjective", "TransferResult",
           "attention_transfer", "default_trainable", "matching_parameters", "query_key_patterns"]

logger = logging.getLogger(__name__)

TRANSFER_ATTENTION = "attnswap_transfer"  # the attention name a model runs during stage 1
LOSSES = ("mse", "xent")

#: Parameter-name patterns of the query/key projections (the default trainable set), per attention layout:
#: separate projections (Llama, Mistral, Qwen2, ...), and fused QKV (GPT-2's ``c_attn``, others' ``qkv_proj``,
#: ``Wqkv``, ``query_key_value``), trained whole: the value columns receive no gradient, because the student reads
#: the values detached, and AdamW without weight decay leaves them bit-identical.
_QK_NAMES = ("q_proj", "k_proj", "query", "key", "c_attn", "qkv_proj", "Wqkv", "query_key_value")


class TransferError(AttnSwapError):
    """Attention transfer cannot run: the target mechanism is the one the model has, a trainable pattern matches
    nothing, the teacher produced no output."""


@dataclass
class _Step:
    """One forward of the objective. In the *teacher* pass (the original model: frozen originals of the trained
    projections) each layer records its teacher output; in the *student* pass each layer takes its recorded output
    back, in the same order, and adds its loss. When nothing the teacher depends on is trained, one pass does both."""

    teacher_forcing: bool
    loss: str
    token_mask: torch.Tensor | None  # (B, T) bool: which query positions count
    mode: str = "both"  # "teacher", "student" or "both"
    recorded: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]] = field(default_factory=list)
    calls: int = 0
    query_factor: float | None = None  # calibration only
    total: torch.Tensor | None = None
    layers: int = 0
    per_layer: list[float] = field(default_factory=list)
    per_layer_teacher: list[float] = field(default_factory=list)  # mse only: the teacher's own mean square
    gain_bounds: list[tuple[float, float, float]] | None = None  # mse only, on request: see gain_bound_errors


@dataclass
class _Teacher:
    """A teacher pass: the per-layer records of :class:`_Step` and, for a replay, each attention module's call
    ``(module, args, kwargs)`` in forward order (None: the modules and the attention calls did not pair up)."""

    outputs: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]
    calls: list[tuple[nn.Module, tuple, dict[str, Any]]] | None


def _token_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """attention_mask (B, T) -> the non-padding tokens (B, T) as bool; None: every token counts."""
    return attention_mask.bool() if attention_mask is not None else None


_STEP: contextvars.ContextVar[_Step | None] = contextvars.ContextVar("hf_attnswap_transfer_step", default=None)


def _teacher(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
             attention_mask: torch.Tensor | None, scaling: float | None, kwargs: dict[str, Any]) -> torch.Tensor:
    """The original attention's output (B, Q, H, d): Transformers' SDPA with the boolean mask, no dropout.

    A model whose attention passes a logit softcap or attention sinks is refused: Transformers' SDPA raises on the
    first and silently ignores the second, so the teacher would not be the original model."""
    passed = [k for k in ("softcap", "s_aux", "sinks") if kwargs.get(k) is not None]
    if passed:
        model_type = getattr(getattr(module, "config", None), "model_type", None)
        raise TransferError(
            f"attention transfer cannot convert {type(module).__name__} (model_type {model_type!r}) yet: its attention "
            f"passes {', '.join(map(repr, passed))}, which the teacher (Transformers' SDPA) does not compute, so the "
            "target would not be the original model. Fine-tune it with recipes/continue_pretrain.py instead.")
    sdpa = AttentionInterface()["sdpa"]
    keep = {k: v for k, v in kwargs.items() if k not in ("output_attentions",)}
    out, _ = sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=scaling, **keep)
    return out


def _transfer_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                        **kwargs: Any) -> tuple[torch.Tensor, None]:
    """The attention function of stage 1 (``AttentionInterface`` signature), on ``q, k, v`` (B, H, Q, d) /
    (B, H_kv, K, d): records the teacher's output (teacher pass), or adds the student's loss against it (student
    pass) and returns the teacher's output (B, Q, H, d) with teacher forcing, else the student's."""
    step = _STEP.get()
    mech = getattr(module, "_attnswap_transfer_mechanism", None)
    if step is None or mech is None:
        raise TransferError("the model runs the attention-transfer function outside a TransferObjective forward; "
                            "call the objective, or objective.finish() to run the converted model.")
    if step.mode in ("teacher", "both"):
        with torch.no_grad():
            teacher = _teacher(module, query, key, value, attention_mask, scaling, kwargs)
        if teacher is None or not isinstance(teacher, torch.Tensor):
            raise TransferError(f"the teacher attention of {type(module).__name__} returned no output.")
        t_qk = (query.detach(), key.detach()) if step.loss == "xent" else (None, None)
        if step.mode == "teacher":
            step.recorded.append((teacher, *t_qk))
            return teacher, None
    else:
        if step.calls >= len(step.recorded):
            raise TransferError("the student pass ran more attention layers than the teacher pass.")
        teacher, *t_qk = step.recorded[step.calls]
        step.calls += 1
    b, h, q_len, d = query.shape
    rows = step.token_mask[:, -q_len:] if step.token_mask is not None else None  # (B, Q)
    factor = step.query_factor
    if factor is not None:  # calibration: the student's query scaled (as if its projection were)
        query = query * factor
    if step.loss == "mse":
        student, _ = _attention_interface(mech, module, query, key, value.detach(), attention_mask,
                                          scaling=scaling, dropout=0.0, **kwargs)
        err = (student.float() - teacher.float()).pow(2).mean(dim=(-2, -1))  # (B, Q): mean over heads and dims
    else:
        err, student = _weight_cross_entropy(mech, module, query, key, value, attention_mask, scaling, kwargs, *t_qk)
    if rows is not None:
        err = err * rows
    layer_sum = err.sum()
    step.total = layer_sum if step.total is None else step.total + layer_sum
    step.layers += 1
    step.per_layer.append(float(layer_sum.detach()))
    if step.loss == "mse":  # what an all-zero output would score: the relative error's denominator
        energy = teacher.float().pow(2).mean(dim=(-2, -1))
        step.per_layer_teacher.append(float((energy * rows if rows is not None else energy).sum()))
        if step.gain_bounds is not None:
            step.gain_bounds.append(gain_bound_errors(student.detach(), teacher, rows))
    return (teacher if step.teacher_forcing else student), None


def gain_bound_errors(student: torch.Tensor, teacher: torch.Tensor,
                      rows: torch.Tensor | None = None) -> tuple[float, float, float]:
    """How much of a layer's transfer error output *scale* could remove: the relative error (squared error over the
    teacher's sum of squares) left after the best least-squares gain on the student's output, fitted (1) per head,
    (2) per head and query position (the best any per-head function of the position, e.g. a length exponent, can
    do) and (3) per head and query (the best any normaliser can do). Each is at most the one before, and (1) at
    most the error with no gain. student, teacher: (B, Q, H, d); rows: optional (B, Q) bool, the positions that
    count."""
    s, t = student.float(), teacher.float()
    if rows is not None:
        keep = rows[:, :, None, None].to(s.dtype)
        s, t = s * keep, t * keep
    energy = t.pow(2).sum().clamp_min(1e-30)

    def left(dims: tuple[int, ...]) -> float:
        st, ss = (s * t).sum(dims, keepdim=True), s.pow(2).sum(dims, keepdim=True)
        gain = torch.where(ss > 0, st / ss.clamp_min(1e-30), torch.zeros_like(st))
        return float((gain * s - t).pow(2).sum() / energy)

    return left((0, 1, 3)), left((0, 3)), left((3,))


def _weight_cross_entropy(mech: Any, module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, scaling: float | None, kwargs: dict[str, Any],
                          t_query: torch.Tensor | None, t_key: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``-Σ_j p_teacher log p_student`` per query row, mean over heads, (B, Q); and the student output (B, Q, H, d).
    The student's weights come from its reference path, ``|a|`` renormalised (polynomial weights may be negative)."""
    from ..mechanisms.common import AttentionContext
    from ..registry import module_options

    b, h, q_len, d = query.shape
    n_rep = h // key.shape[1]
    mask = visible_mask(attention_mask, b, q_len, key.shape[-2], query.device)
    s = scaling if scaling is not None else d**-0.5
    ctx = AttentionContext(scaling=s, options=module_options(module, mech),
                           params=getattr(module, PARAMS_ATTR, None) if mech.make_params is not None else None,
                           rope=getattr(module, ROPE_ATTR, None), module=module, extra=kwargs)
    k_rep, v_rep = repeat_kv(key, n_rep), repeat_kv(value.detach(), n_rep)
    out, weights = mech.forward(query, k_rep, v_rep, mask, ctx)
    if weights is None:
        raise TransferError(f"loss='xent' needs the attention weights, but mechanism {mech.name!r} returns none; "
                            "use loss='mse'.")
    tq = query if t_query is None else t_query
    tk = k_rep if t_key is None else repeat_kv(t_key, n_rep)
    with torch.no_grad():
        p_t = masked_softmax(tq.float() @ tk.float().transpose(-1, -2) * s, mask)
    a = weights.float().abs() * mask
    log_p = torch.log(a / a.sum(-1, keepdim=True).clamp_min(1e-12) + 1e-12)
    return -(p_t * log_p).sum(-1).mean(1), out.transpose(1, 2)


def _register() -> None:
    if TRANSFER_ATTENTION not in AttentionInterface().valid_keys():
        AttentionInterface.register(TRANSFER_ATTENTION, _transfer_attention)
        AttentionMaskInterface.register(TRANSFER_ATTENTION, boolean_mask)


def query_key_patterns() -> tuple[str, ...]:
    """Parameter-name patterns of each attention layer's query/key projections (see ``_QK_NAMES``)."""
    return tuple(rf"\.{re.escape(n)}\.(weight|bias)$" for n in _QK_NAMES)


def default_trainable(model: nn.Module) -> list[str]:
    """Names of the parameters stage 1 trains by default (SCIENCE.md): the mechanism's own parameters (daGPAM's
    ``W⁻`` and λ) if it has any, else the query/key projections inside the attention layers."""
    own = [n for n, _ in model.named_parameters() if f".{PARAMS_ATTR}." in f".{n}"]
    if own:
        return own
    layers = {id(m) for m in attention_modules(model)}
    inside = set()
    for name, module in model.named_modules():
        if id(module) in layers:
            inside.update(f"{name}.{n}" for n, _ in module.named_parameters())
    pats = [re.compile(p) for p in query_key_patterns()]
    return [n for n in inside if any(p.search("." + n) for p in pats)]


def matching_parameters(model: nn.Module, patterns: Iterable[str]) -> set[str]:
    """The names of ``model``'s parameters that some regular expression of ``patterns`` matches (searched). A
    pattern that is not a regular expression, or that matches no parameter, is a :class:`TransferError`."""
    names = [n for n, _ in model.named_parameters()]
    chosen: set[str] = set()
    for pat in patterns:
        try:
            rx = re.compile(pat)
        except re.error as err:
            raise TransferError(f"trainable pattern {pat!r} is not a regular expression: {err}.") from None
        hit = {n for n in names if rx.search(n)}
        if not hit:
            raise TransferError(f"trainable pattern {pat!r} matches no parameter of {type(model).__name__} "
                                f"(e.g. {', '.join(names[:3])}, ...).")
        chosen |= hit
    return chosen


class TransferObjective(nn.Module):
    """``model`` with its attention layers running teacher and student; ``forward`` returns ``.loss``, the transfer
    loss, so any training loop (``hf_attnswap.training``'s included) can train it.

    - ``mechanism``, ``options``: the student (any registered mechanism, options validated as usual).
    - ``loss``: ``"mse"`` (per-head outputs, default) or ``"xent"`` (``-Σ p_teacher log p_student`` on the student's
      weights, ``|a|`` renormalised; materialises each layer's weights: for short blocks).
    - ``trainable``: regular expressions over parameter names (searched); default: :func:`default_trainable` (the
      mechanism's parameters, or the query/key projections of a mechanism without any).
      Everything else is frozen (``requires_grad=False``) and stays bit-identical. A pattern that matches no
      parameter is an error.
    - ``teacher_forcing``: pass the teacher's output on (default; layers train independently), or the student's
      (the loss then backpropagates through the network).

    The teacher is the original model: when trained parameters feed it (the query/key projections), each forward
    first runs a teacher pass with frozen copies of their original values (``torch.func.functional_call``), whose
    per-layer outputs the student pass then matches and, with teacher forcing, passes on. So the target never moves
    while the projections train. The loss is ``Σ_layers Σ_tokens mean_{heads,dims}(student - teacher)²`` over the non-padding tokens, divided by
    ``num_items_in_batch`` (the training loop's target-token count for the whole step) or else by the tokens in the
    batch times the layers. Call :meth:`finish` at the end: the model then runs the student, ``config.json`` records
    it, and ``requires_grad`` is restored.
    """

    def __init__(self, model: PreTrainedModel, mechanism: str, options: dict[str, Any] | None = None, *,
                 loss: str = "mse", trainable: Iterable[str] | None = None, teacher_forcing: bool = True) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise OptionError(f"attention transfer: loss must be one of {', '.join(LOSSES)}; got {loss!r}.")
        original = attn_implementation_of(model.config)
        mech = get_mechanism(mechanism)
        opts = parse_options(mech, options or {})
        if is_mechanism(original):
            if get_mechanism(original).name == mech.name:
                raise TransferError(f"the model already runs {mech.name!r}: attention transfer converts a model from "
                                    f"its original attention to another one. Load it with attn_implementation='sdpa' "
                                    f"(or hf_attnswap.unswap(model)) first, or train it with the recipes.")
            raise TransferError(f"the model runs hf_attnswap's {original!r}; the teacher must be Transformers' own "
                                "attention. Load the base with attn_implementation='sdpa', or unswap it first.")
        if original is not None and not is_transformers_attention(original):
            raise TransferError(f"cannot use the model's attention {original!r} as the teacher.")
        self.model = model
        self.mechanism, self.options, self.loss_name, self.teacher_forcing = mech, opts, loss, teacher_forcing
        self.original = original or "sdpa"
        install(model, mech, opts, reinit=True)  # the student's parameters (e.g. daGPAM's W⁻, λ); checks the model
        self._attention_modules = list(attention_modules(model))  # in forward order; the teacher pass hooks them
        for module in self._attention_modules:
            object.__setattr__(module, "_attnswap_transfer_mechanism", mech)
        self._said_no_replay = False
        self._reach_checked = False
        self._requires_grad = {n: p.requires_grad for n, p in model.named_parameters()}
        names = self._select(list(trainable) if trainable is not None else None)
        for n, p in model.named_parameters():
            p.requires_grad_(n in names)
        self.trainable_names = sorted(names)
        # The teacher is the original model: frozen copies of the trained parameters it depends on (all but the
        # mechanism's own) stand in for them in a teacher pass. None of them: one pass does both.
        self._originals = {n: p.detach().clone() for n, p in model.named_parameters()
                           if n in names and f".{PARAMS_ATTR}." not in f".{n}"}
        _register()
        model.set_attn_implementation(TRANSFER_ATTENTION)

    def _select(self, patterns: list[str] | None) -> set[str]:
        if patterns is None:
            chosen = set(default_trainable(self.model))
            if not chosen:
                raise TransferError(f"found no query/key projection in {type(self.model).__name__}'s attention layers "
                                    f"(looked for {', '.join(_QK_NAMES)}); pass trainable=[regex, ...].")
            return chosen
        return matching_parameters(self.model, patterns)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, num_items_in_batch: int | None = None,
                position_ids: torch.Tensor | None = None, gain_bounds: bool = False, **kwargs: Any) -> Any:
        """input_ids, attention_mask: (B, T); position_ids (B, T): packed documents (restarting positions, no
        ``attention_mask``), which the model masks block-diagonally, teacher and student alike. Returns ``SimpleNamespace(loss, layers, per_layer, metrics)``:
        ``per_layer`` is each layer's loss per token; ``metrics["transfer/relative_error"]`` (mse only) each
        layer's squared error relative to the teacher output's mean square (1.0: no better than an all-zero
        output), which the training loop logs. ``gain_bounds`` (mse only): also
        ``metrics["transfer/gain_bounds"]``, per layer the three errors of :func:`gain_bound_errors` on this batch."""
        token_mask = _token_mask(attention_mask)
        step = self._run(input_ids, attention_mask, position_ids=position_ids, gain_bounds=gain_bounds)
        tokens = int(token_mask.sum()) if token_mask is not None else input_ids.numel()
        denom = num_items_in_batch if num_items_in_batch else max(tokens, 1)
        loss = step.total / (denom * step.layers)
        if not self._reach_checked and loss.requires_grad:
            self._check_reach(loss)
        metrics = {}
        if step.per_layer_teacher:
            share = tokens / denom  # like the loss, the metric adds up over a step's micro-batches
            metrics["transfer/relative_error"] = [share * e / max(t, 1e-30)
                                                  for e, t in zip(step.per_layer, step.per_layer_teacher)]
        if step.gain_bounds is not None:
            metrics["transfer/gain_bounds"] = step.gain_bounds
        return SimpleNamespace(loss=loss, layers=step.layers, per_layer=[v / max(tokens, 1) for v in step.per_layer],
                               metrics=metrics)

    def _check_reach(self, loss: torch.Tensor) -> None:
        """Once, at the first forward that builds a graph: every trained parameter must reach the transfer loss.
        One that cannot would stay unchanged while it seems to train: the student reads the values detached, the
        loss is taken before the output projection, with teacher forcing no weight outside the attention layers is
        on the student's path (the teacher pass runs without gradients), and without it none after the last one."""
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, [p for _, p in named], retain_graph=True, allow_unused=True)
        unreached = [n for (n, _), g in zip(named, grads) if g is None]
        if unreached:
            raise TransferError(
                f"{len(unreached)} trained parameter(s) do not reach the transfer loss, so they would never change: "
                f"{', '.join(unreached[:4])}{', ...' if len(unreached) > 4 else ''}. The student reads the values "
                "detached and the loss is taken on each layer's per-head outputs (before the output projection); with "
                "teacher forcing nothing outside the attention's query/key path is on the student's path, and without "
                "it nothing after the last attention layer is. Drop them from trainable (the default trains the "
                "query/key projections, or the mechanism's own parameters).")
        self._reach_checked = True

    @property
    def trains_projections(self) -> bool:
        """Whether parameters the teacher depends on (the query/key projections) are trained: then each forward
        runs a teacher pass with their original values, and :meth:`calibrate_query_scale` can run."""
        return bool(self._originals)

    @torch.no_grad()
    def calibrate_query_scale(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                              factors: Iterable[float] | None = None,
                              position_ids: torch.Tensor | None = None) -> dict[str, float]:
        """Rescale each layer's query projection by the factor (from ``factors``, default ``2^(k/2)`` for k = -24…4)
        whose student output is closest to the teacher's on this batch (B, T), before any training step. Each layer
        is measured on the teacher's inputs (teacher forcing), whatever the objective trains with, so that every
        layer's factor is its own and not the product of a common factor in all the layers before it.

        A mechanism whose output scale differs from softmax's by orders of magnitude (polynomial's ``s^p`` has no
        denominator) starts from a matched scale instead of spending its first hundreds of steps shrinking the
        projections. With teacher forcing the layers are independent, so one teacher pass and, per factor, a replay
        of the attention modules measure every layer. Needs the query projection among the trained parameters (the teacher keeps the original); returns
        ``{attention module name: factor}``. ``position_ids``: packed documents, as for :meth:`forward`."""
        grid = list(factors) if factors is not None else [2 ** (k / 2) for k in range(-24, 5)]
        targets = self._query_projections()
        losses: list[list[float]] = []
        kw = self._forward_kwargs(input_ids, attention_mask, position_ids)
        teacher = self._teacher_pass(kw, _token_mask(attention_mask))
        for f in grid:  # each layer on the teacher's inputs, whatever the objective trains with
            step = self._run(input_ids, attention_mask, query_factor=float(f), position_ids=position_ids,
                             teacher=teacher, teacher_forcing=True)
            losses.append(step.per_layer)
        chosen = {}
        for layer, (name, weight, bias, rows) in enumerate(targets):
            best = min(range(len(grid)), key=lambda i: losses[i][layer] if math.isfinite(losses[i][layer]) else math.inf)
            f = float(grid[best])
            weight[rows[0]] *= f
            if bias is not None:
                bias[rows[1]] *= f
            chosen[name] = f
        return chosen

    def _query_projections(self) -> list[tuple[str, torch.Tensor, torch.Tensor | None, Any]]:
        """Per attention layer, in forward order: ``(name, weight, bias, (weight_index, bias_index))`` of its query
        projection, the indices selecting the query outputs: Llama-style ``q_proj`` (Linear: all of it) or GPT-2's
        fused ``c_attn`` (Conv1D: the first third of the output columns)."""
        found = []
        for name, module in self.model.named_modules():
            if getattr(module, "_attnswap_transfer_mechanism", None) is None:
                continue
            q = getattr(module, "q_proj", None)
            c = getattr(module, "c_attn", None)
            if isinstance(q, nn.Linear):
                pname = f"{name}.q_proj.weight"
                found.append((name, q.weight, q.bias, (slice(None), slice(None))))
            elif c is not None and hasattr(c, "weight") and c.weight.dim() == 2:
                pname = f"{name}.c_attn.weight"
                embed = c.weight.shape[1] // 3
                found.append((name, c.weight, getattr(c, "bias", None), ((slice(None), slice(0, embed)), slice(0, embed))))
            else:
                raise TransferError(f"calibration rescales the query projection, but {type(module).__name__} has "
                                    "neither q_proj nor c_attn; run without it (transfer_calibrate false).")
            if pname not in self._originals:
                raise TransferError(f"calibration rescales {pname}, which is not trained (the teacher would change "
                                    "with it); train the query/key projections, or run without calibration.")
        return found

    def _forward_kwargs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                        position_ids: torch.Tensor | None) -> dict[str, Any]:
        kw = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
        if position_ids is not None:
            kw["position_ids"] = position_ids
        if "logits_to_keep" in _forward_params(self.model):
            kw["logits_to_keep"] = 1
        return kw

    def _teacher_pass(self, kw: dict[str, Any], token_mask: torch.Tensor | None) -> _Teacher:
        """The original model's forward (frozen copies of the trained projections, no grad): each attention layer's
        teacher output, in order, and each attention module's call (its inputs) for a replay."""
        step = _Step(self.teacher_forcing, self.loss_name, token_mask, mode="teacher")
        calls: list[tuple[nn.Module, tuple, dict[str, Any]]] = []

        def record(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            calls.append((module, args, dict(kwargs)))

        handles = [m.register_forward_pre_hook(record, with_kwargs=True) for m in self._attention_modules]
        token = _STEP.set(step)
        try:
            with torch.no_grad():
                torch.func.functional_call(self.model, self._originals, args=(), kwargs=kw, strict=False)
        finally:
            _STEP.reset(token)
            for h in handles:
                h.remove()
        if len(calls) == len(step.recorded):
            return _Teacher(step.recorded, calls)
        if self.teacher_forcing and not self._said_no_replay:
            self._said_no_replay = True
            logger.warning("hf_attnswap: attention transfer runs the whole network in the student pass, not a replay "
                           "of the attention modules: %d module calls and %d attention calls do not pair up in %s. "
                           "The results are the same, the steps slower.", len(calls), len(step.recorded),
                           type(self.model).__name__)
        return _Teacher(step.recorded, None)

    def _run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, *,
             query_factor: float | None = None, position_ids: torch.Tensor | None = None,
             gain_bounds: bool = False, teacher: _Teacher | None = None,
             teacher_forcing: bool | None = None) -> _Step:
        """One forward of the objective (see :class:`_Step`); ``teacher``: a teacher pass of this very batch to reuse
        (the calibration measures many query scales against one); ``teacher_forcing``: this forward's mode (default:
        the objective's).

        With teacher forcing, the student pass *replays* only the attention modules, on the inputs each received in
        the teacher pass: every layer's input is the teacher's anyway, so running the rest of the network again
        (MLPs, norms, the head) would recompute the same tensors (or, under dropout, different ones that the teacher
        never saw). A model whose attention modules do not call the attention function exactly once each runs the
        whole network instead (the same results; logged once per objective, as a warning)."""
        forcing = self.teacher_forcing if teacher_forcing is None else teacher_forcing
        token_mask = _token_mask(attention_mask)
        kw = self._forward_kwargs(input_ids, attention_mask, position_ids)
        if self._originals and teacher is None:
            teacher = self._teacher_pass(kw, token_mask)
        step = _Step(forcing, self.loss_name, token_mask, mode="student" if self._originals else "both",
                     query_factor=query_factor, gain_bounds=[] if gain_bounds and self.loss_name == "mse" else None)
        if teacher is not None:
            step.recorded = teacher.outputs
        token = _STEP.set(step)
        try:
            if teacher is not None and teacher.calls is not None and forcing:
                for module, args, kwargs in teacher.calls:
                    module(*args, **kwargs)
            else:
                self.model(**kw)
        finally:
            _STEP.reset(token)
        if step.mode == "student" and step.calls != len(step.recorded):
            raise TransferError(f"the student pass ran {step.calls} attention layers, the teacher pass {len(step.recorded)}.")
        if step.layers == 0 or step.total is None:
            raise TransferError("no attention layer reported a transfer loss: the teacher produced no output for this "
                                "model (does its attention go through Transformers' AttentionInterface?).")
        return step

    @contextlib.contextmanager
    def student_view(self) -> Iterator[PreTrainedModel]:
        """Inside the block the model runs the student as it is now (e.g. to measure the raw swap's perplexity
        before any step, or stage 1's progress); afterwards it is back in transfer mode."""
        self.model.set_attn_implementation(self.mechanism.name)
        try:
            yield self.model
        finally:
            self.model.set_attn_implementation(TRANSFER_ATTENTION)

    def finish(self) -> PreTrainedModel:
        """Point the model at the student (its ``config.json`` records mechanism and options), restore
        ``requires_grad``, and return the converted model."""
        for module in self._attention_modules:
            module.__dict__.pop("_attnswap_transfer_mechanism", None)
        self.model.set_attn_implementation(self.mechanism.name)
        for n, p in self.model.named_parameters():
            p.requires_grad_(self._requires_grad.get(n, True))
        return self.model


def _forward_params(model: nn.Module) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


@dataclass
class TransferResult:
    """What :func:`attention_transfer` did: the losses per step, the trained parameter names, the tokens seen."""

    losses: list[float]
    trainable: list[str]
    tokens: int
    steps: int


def attention_transfer(model: PreTrainedModel, mechanism: str, /, *, data: Iterable[Any], steps: int,
                       learning_rate: float = 1e-3, loss: str = "mse", trainable: Iterable[str] | None = None,
                       teacher_forcing: bool = True, max_grad_norm: float = 1.0, **options: Any) -> TransferResult:
    """Convert ``model`` in place to ``mechanism`` (with ``options``) by attention transfer; see :class:`TransferObjective`.

    ``data``: an iterable (cycled) of ``input_ids`` tensors (B, T) or dicts with ``input_ids`` and optionally
    ``attention_mask``. Runs ``steps`` AdamW steps at ``learning_rate`` (no weight decay) with gradient clipping, then
    :meth:`TransferObjective.finish`. A non-finite loss stops with an error, leaving the model as it was before
    the step (and not converted)."""
    if not isinstance(steps, int) or steps < 1:
        raise OptionError(f"attention_transfer: steps must be a positive integer, got {steps!r}.")
    if not (isinstance(learning_rate, (int, float)) and math.isfinite(learning_rate) and learning_rate > 0):
        raise OptionError(f"attention_transfer: learning_rate must be a finite number > 0, got {learning_rate!r}.")
    objective = TransferObjective(model, mechanism, options, loss=loss, trainable=trainable,
                                  teacher_forcing=teacher_forcing)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    was_training = model.training
    model.train()
    losses: list[float] = []
    tokens = 0
    batches = iter(())
    for step in range(steps):
        batch = next(batches, None)
        if batch is None:
            batches = iter(data)
            batch = next(batches, None)
            if batch is None:
                raise TransferError("attention_transfer: data is empty.")
        if isinstance(batch, torch.Tensor):
            batch = {"input_ids": batch}
        out = objective(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"))
        if not torch.isfinite(out.loss):
            raise TransferError(f"attention_transfer: the transfer loss is {float(out.loss)} at step {step + 1}; "
                                "lower learning_rate.")
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        losses.append(float(out.loss.detach()))
        tokens += int(batch["input_ids"].numel())
    model.train(was_training)
    objective.finish()
    return TransferResult(losses=losses, trainable=objective.trainable_names, tokens=tokens, steps=steps)
