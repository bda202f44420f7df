"""The units of the training loop (``hf_attnswap/training/loop.py``) on their own, with tiny models and a stand-in
for Accelerate's one-process ``Accelerator``: the accumulation step (token-normalised loss, ``no_sync``, clipping,
non-finite refusal, metrics summed over micro-batches), the evaluator (best-model bookkeeping), the non-finite guard
(skip or stop) and the resume state (what a checkpoint records, the random state around an epoch's start). The
recipes' end-to-end behaviour (exact resume, checkpoints, messages) is tested in tests/test_recipe_reliability.py and
tests/test_cli_reliability.py."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hf_attnswap.training.arguments import TrainArguments
from hf_attnswap.training.loop import (IGNORE_INDEX, Evaluator, JsonlLog, NonFiniteError, NonFiniteGuard, ResumeState,
                                       StepResult, TrainingOutcome, accumulation_step, apply_update, epoch_batches,
                                       learning_rates, skip_update)


class OneProcess:
    """What the loop uses of ``accelerate.Accelerator`` in one CPU process; records ``no_sync`` calls."""

    device = torch.device("cpu")
    num_processes = 1
    is_main_process = True

    def __init__(self) -> None:
        self.no_sync_calls = 0
        self.logged: list[tuple[dict, int]] = []

    def reduce(self, tensor: torch.Tensor, reduction: str) -> torch.Tensor:
        assert reduction == "sum"
        return tensor

    @contextlib.contextmanager
    def no_sync(self, model: nn.Module):
        self.no_sync_calls += 1
        yield

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm_(self, parameters, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    def skip_first_batches(self, dataloader, num_batches: int):
        return itertools.islice(dataloader, num_batches, None)


class TinyLM(nn.Module):
    """A causal LM's loss contract: ``output.loss`` = (sum of token losses) / ``num_items_in_batch``; ``metrics``
    normalised the same way (a scalar and a list), so they add up over the micro-batches of a step."""

    def __init__(self, vocab: int = 11, dim: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab)
        self.poison = False  # a NaN loss

    def forward(self, input_ids, labels, attention_mask=None, num_items_in_batch=None):
        logits = self.head(self.emb(input_ids))[:, :-1]
        target = labels[:, 1:]
        token_losses = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                   ignore_index=IGNORE_INDEX, reduction="sum")
        loss = token_losses / num_items_in_batch
        if self.poison:
            loss = loss * float("nan")
        n = int((target != IGNORE_INDEX).sum()) / num_items_in_batch
        return SimpleNamespace(loss=loss, metrics={"share": n, "parts": [n, 2 * n]})


def batch(ids: list[list[int]], pad_from: list[int | None]) -> dict[str, torch.Tensor]:
    input_ids = torch.tensor(ids)
    labels = input_ids.clone()
    for row, start in enumerate(pad_from):
        if start is not None:
            labels[row, start:] = IGNORE_INDEX
    return {"input_ids": input_ids, "labels": labels}


MICRO = [batch([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]], [None, 2]), batch([[3, 1, 4, 1, 5]], [4])]


def grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def test_accumulation_step_is_the_mean_over_the_steps_target_tokens():
    """Two micro-batches with different padding give the loss and gradients of one batch of all their tokens."""
    acc, model = OneProcess(), TinyLM()
    result = accumulation_step(acc, model, MICRO, max_grad_norm=0)
    accumulated = grads(model)
    model.zero_grad()
    targets = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in MICRO)
    assert targets == 4 + 1 + 3
    logits = [model.head(model.emb(b["input_ids"]))[:, :-1] for b in MICRO]
    labels = [b["labels"][:, 1:] for b in MICRO]
    whole = nn.functional.cross_entropy(torch.cat([x.reshape(-1, 11) for x in logits]),
                                        torch.cat([y.reshape(-1) for y in labels]), ignore_index=IGNORE_INDEX)
    whole.backward()
    assert result.loss == pytest.approx(float(whole.detach()), rel=1e-6)
    for a, b in zip(accumulated, grads(model), strict=True):
        torch.testing.assert_close(a, b)
    assert not result.bad
    assert result.tokens == 10 + 5  # input tokens, padding included
    assert result.grad_norm == pytest.approx(float(torch.cat([g.flatten() for g in accumulated]).norm()), rel=1e-6)


def test_accumulation_step_syncs_only_the_last_micro_batch():
    acc = OneProcess()
    accumulation_step(acc, TinyLM(), MICRO + MICRO, max_grad_norm=1.0)
    assert acc.no_sync_calls == 3
    acc = OneProcess()
    accumulation_step(acc, TinyLM(), MICRO[:1], max_grad_norm=1.0)
    assert acc.no_sync_calls == 0


def test_accumulation_step_clips_and_reports_the_norm_before_clipping():
    free, clipped = TinyLM(), TinyLM()
    r_free = accumulation_step(OneProcess(), free, MICRO, max_grad_norm=0)  # 0: measured, not clipped
    r_clip = accumulation_step(OneProcess(), clipped, MICRO, max_grad_norm=1e-3)
    assert r_free.grad_norm == pytest.approx(r_clip.grad_norm)
    assert r_free.grad_norm > 1e-3
    norm = float(torch.cat([p.grad.flatten() for p in clipped.parameters()]).norm())
    assert norm == pytest.approx(1e-3, rel=1e-4)
    scale = 1e-3 / (r_free.grad_norm + 1e-6)  # clip_grad_norm_'s factor
    for a, b in zip(grads(clipped), grads(free), strict=True):
        torch.testing.assert_close(a, b * scale)


def test_accumulation_step_sums_the_metrics_over_micro_batches():
    result = accumulation_step(OneProcess(), TinyLM(), MICRO, max_grad_norm=1.0)
    assert result.metrics["share"] == pytest.approx(1.0)  # each micro-batch's share of the step's targets
    assert result.metrics["parts"] == pytest.approx([1.0, 2.0])


def test_accumulation_step_flags_a_non_finite_loss_or_gradient_norm():
    model = TinyLM()
    model.poison = True
    result = accumulation_step(OneProcess(), model, MICRO, max_grad_norm=1.0)
    assert result.bad and math.isnan(result.loss)
    model = TinyLM()
    model.head.weight.register_hook(lambda g: torch.full_like(g, float("inf")))  # a finite loss, an inf gradient
    result = accumulation_step(OneProcess(), model, MICRO, max_grad_norm=1.0)
    assert result.bad and math.isfinite(result.loss) and math.isinf(result.grad_norm)
    model = TinyLM()
    model.head.weight.register_hook(lambda g: torch.full_like(g, float("inf")))
    result = accumulation_step(OneProcess(), model, MICRO, max_grad_norm=1.0, check_grad_norm=False)  # fp16 scaler
    assert not result.bad


def optimizer_and_schedule(model: nn.Module):
    optimizer = torch.optim.SGD([{"params": model.head.parameters(), "name": "head"},
                                 {"params": model.emb.parameters()}], lr=0.5)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    return optimizer, scheduler


def test_apply_and_skip_update():
    model = TinyLM()
    optimizer, scheduler = optimizer_and_schedule(model)
    assert learning_rates(optimizer) == {"lr/head": 0.5, "lr/1": 0.5}
    before = [p.detach().clone() for p in model.parameters()]
    accumulation_step(OneProcess(), model, MICRO, max_grad_norm=1.0)
    apply_update(optimizer, scheduler)
    assert all(p.grad is None for p in model.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert learning_rates(optimizer)["lr/head"] == pytest.approx(0.25)
    after = [p.detach().clone() for p in model.parameters()]
    accumulation_step(OneProcess(), model, MICRO, max_grad_norm=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "lr_scheduler.step() before optimizer.step()"
        skip_update(optimizer, scheduler)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, p) for a, p in zip(after, model.parameters()))  # the gradients never reached them
    assert learning_rates(optimizer)["lr/head"] == pytest.approx(0.5 / 3)  # the schedule follows the step count


def read_log(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("mode", ["max", "min"])
def test_evaluator_records_and_keeps_the_best(tmp_path, mode):
    values = iter([0.5, 0.7, 0.7, 0.2] if mode == "max" else [0.5, 0.2, 0.2, 0.7])
    eval_model, train_model = nn.Linear(2, 2), nn.Linear(2, 2)
    seen_best, tracked = [], []

    def evaluate(model, step):
        assert model is eval_model
        return {"score": next(values), "other": 1.0}

    outcome = TrainingOutcome(step=0, total_steps=10, interrupted=False)
    log = JsonlLog(tmp_path / "log.jsonl")
    evaluator = Evaluator(evaluate, eval_model, train_model, outcome, log, best_metric=("score", mode),
                          on_best=lambda m, step, metrics: seen_best.append((m, step, metrics["score"])),
                          track=lambda metrics, step: tracked.append((step, metrics)))
    for step in (2, 4, 6, 8):
        train_model.eval()
        evaluator.run(step)
        assert train_model.training
    assert [e["step"] for e in outcome.evaluations] == [2, 4, 6, 8]
    assert outcome.evaluations[0] == {"step": 2, "eval/score": 0.5, "eval/other": 1.0}
    assert read_log(tmp_path / "log.jsonl") == outcome.evaluations
    assert tracked[0] == (2, {"eval/score": 0.5, "eval/other": 1.0})
    best_value = 0.7 if mode == "max" else 0.2
    assert outcome.best == {"metric": "score", "value": best_value, "step": 4}  # a tie is no improvement
    assert [(m is eval_model, s, v) for m, s, v in seen_best] == [(True, 2, 0.5), (True, 4, best_value)]


def test_evaluator_schedule_and_without_evaluate(tmp_path):
    steps = []
    outcome = TrainingOutcome(step=0, total_steps=6, interrupted=False)
    evaluator = Evaluator(lambda m, s: steps.append(s) or {"x": 1.0}, nn.Linear(1, 1), nn.Linear(1, 1), outcome,
                          JsonlLog(tmp_path / "log.jsonl"))
    for step in range(1, 7):
        evaluator.periodic(step, 3, 6)
    assert steps == [3]  # step 6 is the last: final() evaluates it
    evaluator.final(6)
    evaluator.final(6)  # already evaluated at 6
    assert steps == [3, 6]
    assert outcome.best is None
    model = nn.Linear(1, 1).eval()
    none = Evaluator(None, model, model, TrainingOutcome(step=0, total_steps=6, interrupted=False),
                     JsonlLog(tmp_path / "other.jsonl"))
    none.run(3)
    none.periodic(3, 3, 6)
    none.final(6)
    assert not model.training and not none.outcome.evaluations and not (tmp_path / "other.jsonl").exists()


def guard_for(tmp_path, model: nn.Module | None = None, deepspeed: bool = False, **args) -> NonFiniteGuard:
    train_args = TrainArguments(output_dir=str(tmp_path), learning_rate=1e-3, **args)
    return NonFiniteGuard(OneProcess(), model or nn.Linear(2, 2), JsonlLog(tmp_path / "log.jsonl"), tmp_path,
                          train_args, ["python", "recipe.py", "--learning_rate", "1e-3"], deepspeed=deepspeed)


class Bar:
    closed = False

    def close(self) -> None:
        self.closed = True


def test_guard_skips_up_to_max_bad_steps_then_stops(tmp_path, capsys):
    guard = guard_for(tmp_path, max_bad_steps=1)
    skipped, bar = [], Bar()
    nan_step = StepResult(loss=float("nan"), grad_norm=None, bad=True, tokens=4)
    guard.bad_step(3, nan_step, skipped, bar)
    assert skipped == [{"step": 3, "loss": "nan", "grad_norm": None}]
    assert "step 3: non-finite loss nan / gradient norm None; update skipped (1 of at most 1)" in capsys.readouterr().out
    assert not bar.closed
    inf_step = StepResult(loss=2.0, grad_norm=float("inf"), bad=True, tokens=4)
    with pytest.raises(NonFiniteError) as info:
        guard.bad_step(5, inf_step, skipped, bar)
    message = str(info.value)
    assert message.startswith("step 5: the loss is 2 and the gradient norm inf: training diverged and stopped there; "
                              "1 bad step(s) were skipped before, max_bad_steps=1.")
    assert "No checkpoint was saved before step 5" in message and "--learning_rate 0.0001" in message
    assert bar.closed and len(skipped) == 1
    assert read_log(tmp_path / "log.jsonl") == [
        {"step": 3, "loss": "nan", "grad_norm": None, "event": "skipped_step", "skipped": 1},
        {"step": 5, "loss": 2.0, "grad_norm": "inf", "event": "non_finite", "skipped_before": 1}]


def test_guard_never_skips_under_deepspeed(tmp_path):
    guard = guard_for(tmp_path, deepspeed=True, max_bad_steps=5)
    with pytest.raises(NonFiniteError) as info:
        guard.bad_step(1, StepResult(loss=float("inf"), grad_norm=None, bad=True, tokens=1), [], Bar())
    assert "gradient norm unknown" in str(info.value) and "--max_bad_steps" not in str(info.value)


def test_guard_checks_the_weights(tmp_path):
    model = nn.Linear(2, 2)
    guard = guard_for(tmp_path, model)
    guard.check_weights(4, "the final model")
    assert not (tmp_path / "log.jsonl").exists()
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="after step 4 the model's weights are not finite .* so the final model "
                                             "was not written"):
        guard.check_weights(4, "the final model")
    assert read_log(tmp_path / "log.jsonl") == [{"step": 4, "event": "non_finite", "what": "weights"}]


def test_resume_state_round_trip():
    outcome = ResumeState().outcome(total_steps=20)
    assert (outcome.step, outcome.tokens_seen, outcome.best, outcome.evaluations, outcome.skipped_steps,
            outcome.inexact_resume, outcome.interrupted) == (0, 0, None, [], [], [], False)
    outcome.step, outcome.tokens_seen = 7, 1234
    outcome.best = {"metric": "loss", "value": 1.5, "step": 5}
    outcome.evaluations.append({"step": 5, "eval/loss": 1.5})
    outcome.skipped_steps.append({"step": 3, "loss": "nan", "grad_norm": None})
    optimizer = torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.zeros(2))] * 1, "name": "decay"},
                                   {"params": [torch.nn.Parameter(torch.zeros(1)) for _ in range(3)]}])
    record = ResumeState.record(outcome, epoch=1, batches_in_epoch=6, optimizer=optimizer)
    assert list(record) == ["epoch", "batches_in_epoch", "tokens_seen", "best", "evaluations", "skipped_steps",
                            "inexact_resume", "total_steps", "optimizer_groups"]  # save_checkpoint adds the step
    assert record["optimizer_groups"] == {"decay": 1, "1": 3}
    saved = json.loads(json.dumps({**record, "step": 7}))
    state = ResumeState.from_checkpoint(saved, ["2 processes saved it, 1 resume it"])
    assert (state.step, state.epoch, state.batches_in_epoch) == (7, 1, 6)
    again = state.outcome(total_steps=20)
    assert again.inexact_resume == ["2 processes saved it, 1 resume it"]
    again.inexact_resume = []
    assert again == TrainingOutcome(step=7, total_steps=20, interrupted=False, evaluations=outcome.evaluations,
                                    best=outcome.best, tokens_seen=1234, skipped_steps=outcome.skipped_steps)
    again.evaluations.append({"step": 6})
    assert len(state.evaluations) == 1  # the outcome has its own lists


def test_resume_state_from_an_older_checkpoint():
    state = ResumeState.from_checkpoint({"step": 4, "epoch": 0, "batches_in_epoch": 8, "tokens_seen": 64}, [])
    assert state == ResumeState(step=4, epoch=0, batches_in_epoch=8, tokens_seen=64)


class Shuffled:
    """A data loader whose iterator draws its order from the global random state when it starts (lazily)."""

    def __init__(self, n: int) -> None:
        self.n, self.epochs = n, []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __iter__(self):
        yield from torch.randperm(self.n).tolist()


def test_epoch_batches_keep_the_random_state_and_skip():
    torch.manual_seed(3)
    expected_order = torch.randperm(10).tolist()
    torch.manual_seed(3)
    expected_next = torch.rand(3)  # what comes first from the seed, without the epoch's draw
    torch.manual_seed(3)
    loader = Shuffled(10)
    batches = epoch_batches(OneProcess(), loader, 2, 0)
    assert torch.equal(torch.rand(3), expected_next)  # starting the epoch drew nothing that dropout would see
    assert list(batches) == expected_order
    assert loader.epochs == [2]
    torch.manual_seed(3)
    assert list(epoch_batches(OneProcess(), loader, 2, 4)) == expected_order[4:]
    assert list(epoch_batches(OneProcess(), Shuffled(3), 0, 3)) == []
