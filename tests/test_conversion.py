"""Stage 1 of a conversion, attention transfer (hf_attnswap.conversion), on tiny random models."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest
import torch
from transformers import AutoModelForCausalLM

import hf_attnswap
from conftest import random_ids, tiny_config
from hf_attnswap.conversion import TransferError, TransferObjective, attention_transfer
from hf_attnswap.conversion import transfer as transfer_module
from hf_attnswap.errors import OptionError
from hf_attnswap.patching import attention_modules


def _model(arch: str, seed: int = 0, **cfg):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(arch, **cfg), attn_implementation="sdpa")


def _data(n: int = 3, batch: int = 4, length: int = 24):
    return [random_ids(batch, length, seed=i) for i in range(n)]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("mechanism,options", [("polynomial", {"degree": 3}), ("dagpam", {"lambda_init": 0.5}),
                                               ("softmax", {"temperature": 3.0})])
def test_transfer_lowers_the_loss_and_converts(arch, mechanism, options):
    model = _model(arch)
    result = attention_transfer(model, mechanism, data=_data(), steps=24, learning_rate=3e-3, **options)
    first, last = sum(result.losses[:3]), sum(result.losses[-3:])  # the data cycles through 3 batches
    assert last < (0.8 if mechanism == "dagpam" else 0.5) * first, result.losses
    assert model.config._attn_implementation == mechanism
    assert model.config.attnswap["mechanism"] == mechanism
    if mechanism == "dagpam":  # a mechanism with parameters trains those, and only those
        assert result.trainable and all(".attnswap." in n for n in result.trainable)
    else:
        assert result.trainable and all(n.split(".")[-2] in ("q_proj", "k_proj", "c_attn") for n in result.trainable)
    model(random_ids(1, 8))  # runs the student now


def test_linear_polynomial_transfers():
    model = _model("llama", max_position_embeddings=256)
    result = attention_transfer(model, "polynomial", degree=2, backend="linear", data=_data(2, 2, 160), steps=10,
                                learning_rate=3e-3)
    assert result.losses[-1] < result.losses[0]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_frozen_parameters_stay_bit_identical(arch):
    model = _model(arch)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = attention_transfer(model, "polynomial", data=_data(), steps=5, learning_rate=1e-2)
    after = dict(model.named_parameters())
    for name, old in before.items():
        if name not in result.trainable:
            assert torch.equal(after[name], old), name
    assert all(not torch.equal(after[n], before[n]) for n in result.trainable if n.endswith("weight"))
    if arch == "gpt2":  # fused QKV: only the query/key columns move; the values are read detached
        d = model.config.n_embd
        for layer in range(model.config.n_layer):
            w = f"transformer.h.{layer}.attn.c_attn.weight"
            assert torch.equal(after[w][:, 2 * d:], before[w][:, 2 * d:])
            assert not torch.equal(after[w][:, :2 * d], before[w][:, :2 * d])
    assert all(p.requires_grad for p in model.parameters()), "requires_grad restored"


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_teacher_is_the_models_own_attention(arch):
    """The teacher stays the original model while the query/key projections train: after some steps, both the
    teacher pass and (with teacher forcing) the student pass give every layer the original model's attention output."""
    model = _model(arch)
    ids, mask = random_ids(2, 12), torch.ones(2, 12, dtype=torch.long)
    mask[1, :3] = 0

    def capture(store):
        return [m.register_forward_hook(lambda mod, args, out: store.append(out[0].detach()))
                for m in attention_modules(model)]

    original: list[torch.Tensor] = []
    hooks = capture(original)
    model.eval()(input_ids=ids, attention_mask=mask)
    for h in hooks:
        h.remove()
    objective = TransferObjective(model, "polynomial", {"degree": 3})
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for batch in _data():
        optimizer.zero_grad()
        objective(input_ids=batch).loss.backward()
        optimizer.step()
    taught: list[torch.Tensor] = []
    hooks = capture(taught)
    out = objective(input_ids=ids, attention_mask=mask)
    for h in hooks:
        h.remove()
    layers = len(original)
    assert out.layers == layers and len(taught) == 2 * layers  # a teacher pass, then the student pass
    for a, teacher, student in zip(original, taught[:layers], taught[layers:]):
        torch.testing.assert_close(teacher, a, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(student, a, atol=1e-6, rtol=1e-6)


def _full_student_pass(monkeypatch):
    """Make the objective run the whole network in the student pass (as without a replay)."""
    teacher_pass = TransferObjective._teacher_pass

    def no_replay(self, *args, **kwargs):
        return dataclasses.replace(teacher_pass(self, *args, **kwargs), calls=None)

    monkeypatch.setattr(TransferObjective, "_teacher_pass", no_replay)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("packed", [False, True])
def test_the_student_replay_equals_the_whole_student_pass(arch, packed, monkeypatch):
    """With teacher forcing the student pass replays only the attention modules on the teacher pass's inputs: the
    same loss, per-layer losses and gradients as running the whole network again (padding, or packed rows)."""
    model = _model(arch).eval()
    ids = random_ids(2, 12)
    if packed:  # two documents per row, positions restarting: masked block-diagonally
        batch = {"input_ids": ids, "position_ids": torch.cat([torch.arange(5), torch.arange(7)]).repeat(2, 1)}
    else:
        mask = torch.ones(2, 12, dtype=torch.long)
        mask[1, :3] = 0
        batch = {"input_ids": ids, "attention_mask": mask}
    objective = TransferObjective(model, "polynomial", {"degree": 3})
    with torch.no_grad():  # move off the original projections, so teacher and student inputs differ
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.mul_(1.3)
    results = []
    for replay in (True, False):
        if not replay:
            _full_student_pass(monkeypatch)
        model.zero_grad()
        out = objective(**batch)
        out.loss.backward()
        results.append((out.loss.detach(), out.per_layer,
                        {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (loss_r, layers_r, grads_r), (loss_f, layers_f, grads_f) = results
    torch.testing.assert_close(loss_r, loss_f, rtol=1e-6, atol=1e-7)
    assert layers_r == pytest.approx(layers_f, rel=1e-5, abs=1e-9)
    assert grads_r.keys() == grads_f.keys() and grads_r
    for name in grads_r:
        torch.testing.assert_close(grads_r[name], grads_f[name], rtol=1e-5, atol=1e-7, msg=name)


def test_the_student_reads_the_inputs_the_teacher_saw_under_dropout():
    """In training mode with dropout (GPT-2's residual and embedding dropout), each layer's student gets the very
    input its teacher got: a student that computes the teacher's function scores zero, although every forward
    draws new dropout masks."""
    model = _model("gpt2", resid_pdrop=0.5, embd_pdrop=0.5)
    objective = TransferObjective(model, "softmax", {"temperature": 1.0}).train()
    out = objective(input_ids=random_ids(2, 12))
    assert out.loss.item() < 1e-10, out.per_layer


def test_unpaired_attention_calls_run_the_whole_network_and_say_so_once(caplog):
    """When the attention modules and the attention-function calls do not pair up, the student pass runs the whole
    network (the same loss as a replay) and says so once per objective, not once per step."""
    model = _model("llama").eval()
    ids = random_ids(2, 12)
    objective = TransferObjective(model, "polynomial", {"degree": 3})
    with caplog.at_level("WARNING", logger=transfer_module.logger.name):
        replayed = objective(input_ids=ids).loss.item()
    assert not caplog.records
    objective._attention_modules = objective._attention_modules[1:]  # one module's calls go unrecorded
    with caplog.at_level("WARNING", logger=transfer_module.logger.name):
        whole = [objective(input_ids=ids).loss.item() for _ in range(2)]
    said = [r.getMessage() for r in caplog.records if "whole network" in r.getMessage()]
    assert len(said) == 1 and "do not pair up" in said[0], said
    assert whole == [pytest.approx(replayed, rel=1e-6)] * 2


def test_calibration_runs_one_teacher_pass(monkeypatch):
    model = _model("llama")
    objective = TransferObjective(model, "polynomial", {"degree": 3})
    passes = []
    teacher_pass = TransferObjective._teacher_pass
    monkeypatch.setattr(TransferObjective, "_teacher_pass",
                        lambda self, *a, **k: passes.append(1) or teacher_pass(self, *a, **k))
    objective.calibrate_query_scale(random_ids(2, 12), factors=[0.5, 1.0, 2.0])
    assert len(passes) == 1


def test_training_only_mechanism_parameters_needs_one_pass():
    model = _model("llama")
    objective = TransferObjective(model, "dagpam", {"lambda_init": 0.5}, trainable=[r"\.attnswap\."])
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for m in attention_modules(model)]
    objective(input_ids=random_ids(1, 6)).loss.backward()
    for h in hooks:
        h.remove()
    assert len(calls) == len(attention_modules(model))


def test_padding_tokens_do_not_count():
    model = _model("llama")
    objective = TransferObjective(model, "polynomial", {"degree": 3})
    ids = random_ids(2, 10)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :4] = 0
    full = objective(input_ids=ids, attention_mask=mask).loss
    other = ids.clone()
    other[1, :4] = 7  # different tokens under the padding
    torch.testing.assert_close(objective(input_ids=other, attention_mask=mask).loss, full)


def test_weight_cross_entropy_loss_lowers():
    model = _model("llama")
    result = attention_transfer(model, "softmax", temperature=3.0, loss="xent", data=_data(), steps=20,
                                learning_rate=3e-3)
    assert result.losses[-1] < result.losses[0]


@dataclass
class _GainOptions(hf_attnswap.MechanismOptions):
    bias: float = -1.0


def test_a_user_mechanism_converts():
    @hf_attnswap.register_mechanism("shifted_sigmoid_t", _GainOptions, overwrite=True)
    def shifted_sigmoid(query, key, value, mask, ctx):
        w = torch.sigmoid(query @ key.transpose(-1, -2) * ctx.scaling + ctx.options.bias) * mask
        return w.to(value.dtype) @ value, w

    model = _model("gpt2")
    result = attention_transfer(model, "shifted_sigmoid_t", bias=-2.0, data=_data(), steps=20, learning_rate=3e-3)
    assert result.losses[-1] < result.losses[0]
    assert model.config.attnswap == {"mechanism": "shifted_sigmoid_t", "bias": -2.0}


def test_converted_model_saves_and_reloads(tmp_path):
    model = _model("llama")
    attention_transfer(model, "dagpam", lambda_init=0.2, data=_data(), steps=3)
    ids = random_ids(1, 8)
    expected = model.eval()(ids).logits
    model.save_pretrained(tmp_path)
    again, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    torch.testing.assert_close(again.eval()(ids).logits, expected, atol=1e-6, rtol=1e-6)


# ------------------------------------------------------------------------------------------------ bad input


def test_converting_to_the_mechanism_the_model_has_is_an_error():
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama"), attn_implementation="polynomial")
    with pytest.raises(TransferError, match="already runs 'polynomial'"):
        TransferObjective(model, "polynomial")


def test_a_trainable_pattern_that_matches_nothing_is_an_error():
    with pytest.raises(TransferError, match=r"'q_projection' matches no parameter"):
        TransferObjective(_model("llama"), "polynomial", trainable=["q_projection"])


@pytest.mark.parametrize("pattern", [r"v_proj", r"o_proj", r"mlp\.up_proj"])
def test_a_trained_parameter_that_cannot_reach_the_loss_is_an_error(pattern):
    """The values are read detached, the loss is on the per-head outputs, and with teacher forcing nothing outside
    the attention's query/key path is on the student's path: such a parameter would silently never move."""
    objective = TransferObjective(_model("llama"), "polynomial", trainable=[r"q_proj", pattern])
    with pytest.raises(TransferError, match=r"do not reach the transfer loss, .*: model\.layers\.0\.\S*" + pattern[-6:]):
        objective(input_ids=_data(1)[0])
    with torch.no_grad():  # no graph, no check: evaluation and calibration run as before
        objective(input_ids=_data(1)[0])


def test_without_teacher_forcing_the_layers_before_the_last_attention_reach_the_loss():
    objective = TransferObjective(_model("llama"), "polynomial", trainable=[r"q_proj", r"layers\.0\.mlp"],
                                  teacher_forcing=False)
    objective(input_ids=_data(1)[0]).loss.backward()
    assert all(p.grad is not None for n, p in objective.model.named_parameters() if "layers.0.mlp" in n)
    last = TransferObjective(_model("llama"), "polynomial", trainable=[r"q_proj", r"layers\.1\.mlp"],
                             teacher_forcing=False)  # the tiny llama's last layer: its MLP comes after every attention
    with pytest.raises(TransferError, match=r"model\.layers\.1\.mlp\.gate_proj"):
        last(input_ids=_data(1)[0])


def test_invalid_mechanism_options_are_an_error():
    with pytest.raises(OptionError, match="'degree' must be an integer"):
        TransferObjective(_model("llama"), "polynomial", {"degree": 2.5})
    with pytest.raises(OptionError, match="loss must be one of"):
        TransferObjective(_model("llama"), "polynomial", loss="kl")


def test_a_teacher_that_returns_no_output_is_an_error(monkeypatch):
    monkeypatch.setattr(transfer_module, "_teacher", lambda *a, **k: None)
    objective = TransferObjective(_model("llama"), "polynomial")
    with pytest.raises(TransferError, match="returned no output"):
        objective(input_ids=random_ids(1, 6))


def test_the_transfer_attention_outside_an_objective_is_an_error():
    objective = TransferObjective(_model("llama"), "polynomial")
    with pytest.raises(TransferError, match="outside a TransferObjective"):
        objective.model(random_ids(1, 6))


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_query_scale_calibration_lowers_the_loss_and_keeps_the_teacher(arch):
    model = _model(arch)
    objective = TransferObjective(model, "polynomial", {"degree": 3})
    batch = _data(1)[0]
    before = objective(input_ids=batch).loss.item()
    originals = {n: t.clone() for n, t in objective._originals.items()}
    chosen = objective.calibrate_query_scale(batch, factors=[0.01, 0.1, 1.0])
    assert len(chosen) == model.config.num_hidden_layers and set(chosen.values()) <= {0.01, 0.1, 1.0}
    after = objective(input_ids=batch).loss.item()
    assert after <= before
    assert all(torch.equal(objective._originals[n], originals[n]) for n in originals)  # the teacher is unchanged
    if arch == "gpt2":
        d = model.config.n_embd
        w = dict(model.named_parameters())["transformer.h.0.attn.c_attn.weight"]
        torch.testing.assert_close(w[:, :d], originals["transformer.h.0.attn.c_attn.weight"][:, :d]
                                   * chosen["transformer.h.0.attn"])
        assert torch.equal(w[:, d:], originals["transformer.h.0.attn.c_attn.weight"][:, d:])


def test_calibration_measures_each_layer_on_the_teachers_inputs_even_without_teacher_forcing():
    batch = _data(1)[0]
    grid = [2 ** (k / 2) for k in range(-12, 5)]  # without it, layer 1 picked 0.125 here against 0.177
    chosen = [TransferObjective(_model("llama"), "polynomial", {"degree": 3}, teacher_forcing=forcing)
              .calibrate_query_scale(batch, factors=grid) for forcing in (True, False)]
    assert chosen[0] == chosen[1]


def test_calibration_needs_a_trained_query_projection():
    objective = TransferObjective(_model("llama"), "polynomial", trainable=[r"k_proj"])
    with pytest.raises(TransferError, match="not trained"):
        objective.calibrate_query_scale(_data(1)[0])


def test_transfer_reports_each_layers_relative_error():
    model = _model("llama")
    objective = TransferObjective(model, "polynomial", {"degree": 3})
    out = objective(_data(1)[0])
    rel = out.metrics["transfer/relative_error"]
    assert len(rel) == len(out.per_layer) == model.config.num_hidden_layers
    assert all(r > 0 for r in rel)
    objective.finish()


def test_gain_bounds_measure_what_output_scale_can_remove():
    """gain_bound_errors: a student that is the teacher times a per-head-and-position gain has per-head error > 0 but
    no error left with the position-wise gain; each finer gain can only lower the error; masked rows do not count."""
    from hf_attnswap.conversion.transfer import gain_bound_errors

    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64)
    gain = torch.rand(1, 5, 3, 1, generator=g, dtype=torch.float64) + 0.5
    per_head, per_position, per_query = gain_bound_errors(teacher / gain, teacher)
    assert per_head > 1e-3 and per_position < 1e-12 and per_query < 1e-12
    noisy = teacher + torch.randn(teacher.shape, generator=g, dtype=torch.float64)
    errs = gain_bound_errors(noisy, teacher)
    plain = float((noisy - teacher).pow(2).sum() / teacher.pow(2).sum())
    assert errs[2] <= errs[1] <= errs[0] <= plain
    rows = torch.ones(2, 5, dtype=torch.bool)
    rows[1, 3:] = False
    hidden = teacher.clone()
    hidden[1, 3:] += 100.0  # the student's masked rows are far off: they must not count
    assert gain_bound_errors(teacher * 2.0, hidden, rows)[0] < 1e-12
    model = _model("llama")
    objective = TransferObjective(model, "polynomial", {"degree": 3})
    metrics = objective(_data(1)[0], gain_bounds=True).metrics
    assert len(metrics["transfer/gain_bounds"]) == len(metrics["transfer/relative_error"])
    assert all(b[0] <= r * (1 + 1e-6) for b, r in zip(metrics["transfer/gain_bounds"], metrics["transfer/relative_error"]))
    assert "transfer/gain_bounds" not in objective(_data(1)[0]).metrics
    objective.finish()


def test_distillation_adds_the_kl_to_the_original_model():
    from hf_attnswap.conversion.distill import DistillObjective

    ids = _data(1)[0]
    same = DistillObjective(_model("llama"), _model("llama"), kl_weight=2.0)
    out = same(input_ids=ids, labels=ids)
    assert float(out.kl) == pytest.approx(0.0, abs=1e-6)  # the student is the teacher: no KL
    torch.testing.assert_close(out.loss, out.lm_loss + 0.0, atol=1e-5, rtol=0)
    student, teacher = _model("llama"), _model("llama", seed=1)
    d = DistillObjective(student, teacher, kl_weight=2.0, temperature=2.0)
    out = d(input_ids=ids, labels=ids)
    s = student(input_ids=ids).logits[:, :-1].float() / 2
    t = teacher(input_ids=ids).logits[:, :-1].float() / 2
    kl = (t.softmax(-1) * (t.log_softmax(-1) - s.log_softmax(-1))).sum(-1).mean() * 4
    torch.testing.assert_close(out.kl, kl.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss.detach(), out.lm_loss + 2.0 * kl.detach(), atol=1e-5, rtol=1e-5)
    assert out.metrics == {"distill/lm_loss": pytest.approx(float(out.lm_loss)), "distill/kl": pytest.approx(float(kl))}
    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters()) and student.model.embed_tokens.weight.grad is not None
    assert not any("teacher" in k for k in d.state_dict())  # checkpoints hold only the student
    torch.testing.assert_close(out.lm_loss, student(input_ids=ids, labels=ids).loss.detach(), atol=1e-5, rtol=1e-5)
    n = int((ids[:, 1:] != -100).sum())
    summed = DistillObjective(student, teacher, kl_weight=2.0)(input_ids=ids, labels=ids, num_items_in_batch=2 * n)
    torch.testing.assert_close(summed.lm_loss, out.lm_loss / 2, atol=1e-5, rtol=1e-5)  # normalised by the step's count
    pure = DistillObjective(student, teacher, kl_weight=1.0, lm_weight=0.0)(input_ids=ids, labels=ids)
    t1 = teacher(input_ids=ids).logits[:, :-1].float()
    s1 = student(input_ids=ids).logits[:, :-1].float()
    kl1 = (t1.softmax(-1) * (t1.log_softmax(-1) - s1.log_softmax(-1))).sum(-1).mean()
    torch.testing.assert_close(pure.loss.detach(), kl1.detach(), atol=1e-5, rtol=1e-5)  # no next-token term
    with pytest.raises(OptionError, match="kl_weight > 0"):
        DistillObjective(student, teacher, kl_weight=0.0)
    with pytest.raises(OptionError, match="lm_weight >= 0"):
        DistillObjective(student, teacher, kl_weight=1.0, lm_weight=-1.0)


@pytest.mark.parametrize("keyword", ["softcap", "s_aux"])
def test_teacher_refuses_attention_it_would_not_reproduce(keyword):
    """Transformers' SDPA raises on softcap and ignores sinks: a teacher built on it would not be the original model."""
    from hf_attnswap.conversion.transfer import TransferError, _teacher

    model = _model("llama")
    module = model.model.layers[0].self_attn
    q = torch.randn(1, 4, 3, 8)
    value = {"softcap": 30.0, "s_aux": torch.zeros(4)}[keyword]
    with pytest.raises(TransferError, match=f"passes '{keyword}'.*model_type 'llama'|model_type 'llama'.*'{keyword}'"):
        _teacher(module, q, q[:, :2], q[:, :2], None, 0.3, {keyword: value})
