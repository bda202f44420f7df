"""The core issue's correctness matrix: each mechanism x {GPT-2, Llama with GQA} on tiny random models."""

from __future__ import annotations

import pytest
import torch

from conftest import ARCHS, PAD, cell_options, cells, decoded_logits, fast_path_refusal, random_ids

matrix = pytest.mark.parametrize("arch", ARCHS)
# Every cell runs on every backend of every registered built-in mechanism (conftest.CELLS), reference included, with
# the first option set of the mechanism's registered ``exercise`` that the backend takes.


@matrix
@pytest.mark.parametrize("native", ["sdpa", "eager"])
def test_softmax_t1_matches_native(load, arch, native):
    ids = random_ids(2, 9)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding too
    ref = load(arch, native)(ids, attention_mask=mask).logits
    out = load(arch, "softmax")(ids, attention_mask=mask).logits
    torch.testing.assert_close(out[mask.bool()], ref[mask.bool()], atol=1e-5, rtol=1e-5)


@matrix
def test_softmax_temperature_changes_output(load, arch):
    ids = random_ids(1, 9)
    assert not torch.allclose(load(arch, "softmax", temperature=0.5)(ids).logits, load(arch, "sdpa")(ids).logits, atol=1e-4)


@matrix
def test_dagpam_lambda0_equals_base(load, arch):
    ids = random_ids(2, 11)
    ref = load(arch, "sdpa")(ids).logits
    torch.testing.assert_close(load(arch, "dagpam")(ids).logits, ref, atol=1e-5, rtol=0)
    assert (load(arch, "dagpam", lambda_init=0.3)(ids).logits - ref).abs().max() > 1e-3


@matrix
@cells
def test_kv_cache_matches_full_forward(load, arch, mech, backend):
    model = load(arch, mech, **cell_options(mech, backend))
    ids = random_ids(2, 10, seed=1)
    full = model(ids).logits
    torch.testing.assert_close(decoded_logits(model, ids, 4), full, atol=1e-5, rtol=1e-4)


@matrix
@cells
def test_greedy_generate_cache_on_off(load, arch, mech, backend):
    model = load(arch, mech, **cell_options(mech, backend))
    ids = random_ids(2, 5, seed=2)
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=PAD)
    with_cache = model.generate(ids, attention_mask=torch.ones_like(ids), use_cache=True, **kw)
    without = model.generate(ids, attention_mask=torch.ones_like(ids), use_cache=False, **kw)
    assert torch.equal(with_cache, without)


@matrix
@cells
def test_left_padded_batch_generation_equals_single(load, arch, mech, backend):
    model = load(arch, mech, **cell_options(mech, backend))
    prompts = [random_ids(1, 7, seed=3)[0], random_ids(1, 4, seed=4)[0]]
    width = max(len(p) for p in prompts)
    ids = torch.full((2, width), PAD)
    mask = torch.zeros(2, width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = p
        mask[i, width - len(p) :] = 1
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=PAD)
    batched = model.generate(ids, attention_mask=mask, **kw)[:, width:]
    for i, p in enumerate(prompts):
        alone = model.generate(p[None], attention_mask=torch.ones(1, len(p), dtype=torch.long), **kw)[0, len(p) :]
        # A prompt that hits EOS early stops alone, and is padded in the batch.
        assert torch.equal(batched[i, : len(alone)], alone), (i, batched[i], alone)
        assert (batched[i, len(alone) :] == PAD).all()


@matrix
@cells
def test_right_padding_changes_no_unpadded_position(load, arch, mech, backend):
    model = load(arch, mech, **cell_options(mech, backend))
    short, long = random_ids(1, 5, seed=5), random_ids(1, 9, seed=6)
    ids = torch.full((2, 9), PAD)
    ids[0, :5], ids[1] = short[0], long[0]
    mask = torch.tensor([[1] * 5 + [0] * 4, [1] * 9])
    labels = ids.masked_fill(mask == 0, -100)
    batch = model(ids, attention_mask=mask, labels=labels)
    alone = model(short, labels=short)
    torch.testing.assert_close(batch.logits[0, :5], alone.logits[0], atol=1e-5, rtol=1e-4)
    # Per-sequence loss of the padded row equals the loss of the sequence alone.
    loss_fn = torch.nn.CrossEntropyLoss()
    row_loss = loss_fn(batch.logits[0, :4], short[0, 1:])
    torch.testing.assert_close(row_loss, alone.loss, atol=1e-5, rtol=1e-4)


@matrix
@cells
def test_backward_reaches_every_parameter(load, arch, mech, backend):
    model = load(arch, mech, **cell_options(mech, backend)).train()
    ids = random_ids(2, 8, seed=7)
    model(ids, labels=ids).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not missing, missing
    if mech == "dagpam":
        names = [n for n, _ in model.named_parameters() if ".attnswap." in n]
        assert any(n.endswith("neg_query_weight") for n in names) and any(n.endswith("lambda_param") for n in names)


@matrix
def test_dagpam_lambda_trains_away_from_zero(load, arch):
    """At λ=0 the gradient of λ is non-zero (a relu/square parameterisation would be stuck at 0)."""
    model = load(arch, "dagpam").train()
    ids = random_ids(2, 8, seed=8)
    model(ids, labels=ids).loss.backward()
    lam = [p for n, p in model.named_parameters() if n.endswith("lambda_param")]
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in lam)


@matrix
@cells
def test_bf16_autocast_is_finite(load, arch, mech, backend):
    model = load(arch, mech, **cell_options(mech, backend))
    ids = random_ids(2, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids).logits
    assert torch.isfinite(logits).all()


@matrix
@cells
def test_bf16_weights_are_finite(load, arch, mech, backend):
    model = load(arch, mech, **cell_options(mech, backend)).to(torch.bfloat16)
    logits = model(random_ids(2, 8)).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


@matrix
@cells
def test_output_attentions_are_the_mechanisms_weights(load, arch, mech, backend):
    model = load(arch, mech, **cell_options(mech, backend))
    ids = random_ids(1, 8)
    attn = model(ids, output_attentions=True).attentions
    assert len(attn) == 2 and attn[0].shape == (1, 4, 8, 8)
    w = torch.stack(attn)
    upper = torch.triu(torch.ones(8, 8, dtype=torch.bool), 1)
    assert (w[..., upper] == 0).all(), "hidden (future) keys must get exactly 0"
    rows = w.sum(-1)
    if mech == "softmax":
        assert (w >= 0).all()
        torch.testing.assert_close(rows, torch.ones_like(rows))
    elif mech == "dagpam":  # the signed combined matrix, rows summing to 1
        assert (w < 0).any()
        torch.testing.assert_close(rows, torch.ones_like(rows), atol=1e-5, rtol=0)
    elif model.config.attnswap["degree"] % 2:  # polynomial: unnormalised, signed (odd degree)
        assert (w < 0).any() and not torch.allclose(rows, torch.ones_like(rows))
    else:  # polynomial of an even degree: unnormalised, non-negative
        assert (w >= 0).all() and not torch.allclose(rows, torch.ones_like(rows))


@matrix
@cells
def test_gradient_checkpointing_matches(load, arch, mech, backend):
    ids = random_ids(2, 8, seed=9)
    grads = []
    for ckpt in (False, True):
        model = load(arch, mech, **cell_options(mech, backend)).train()
        if ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model(ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4)


@matrix
@cells
def test_attention_dropout_in_train_mode(base_checkpoints, arch, mech, backend):
    from transformers import AutoModelForCausalLM

    reason = fast_path_refusal(mech, backend, dropout=0.5)
    if reason is not None:
        pytest.skip(f"{mech}/{backend} refuses attention dropout by design: {reason}")
    key = "attn_pdrop" if arch == "gpt2" else "attention_dropout"
    model = AutoModelForCausalLM.from_pretrained(
        base_checkpoints[arch], attn_implementation=mech, attnswap=cell_options(mech, backend), **{key: 0.5}
    )
    ids = random_ids(1, 8)
    model.train()
    torch.manual_seed(0)
    a = model(ids).logits
    torch.manual_seed(1)
    b = model(ids).logits
    assert torch.isfinite(a).all() and not torch.allclose(a, b)
    model.eval()
    torch.testing.assert_close(model(ids).logits, model(ids).logits, atol=0, rtol=0)
