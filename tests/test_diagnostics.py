"""Diagnostics (SCIENCE.md "Diagnostics"): each measure on hand-built matrices with known answers, `probe` on tiny
GPT-2 / Llama-with-GQA models under every mechanism, and `attnswap probe`."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import ARCHS, MECHANISMS, PAD, random_ids, tiny_config
from transformers import AutoModelForCausalLM

from hf_attnswap.cli import main
from hf_attnswap.diagnostics import ProbeError, RunningStats, probe
from hf_attnswap.diagnostics import measures as M
from hf_attnswap.diagnostics.collect import query_weight

SIGNED_OPTIONS = {"softmax": {}, "polynomial": {"degree": 3}, "dagpam": {"lambda_init": 0.3}}


def causal(t: int, batch: int = 1) -> torch.Tensor:
    """Visibility (B, 1, T, T) of a causal sequence without padding."""
    return torch.ones(t, t, dtype=torch.bool).tril().expand(batch, 1, t, t)


def uniform_causal(t: int, heads: int = 2) -> torch.Tensor:
    """Weights (1, H, T, T): row i spreads evenly over its i+1 visible keys."""
    w = causal(t).float() / torch.arange(1, t + 1).float()[:, None]
    return w.expand(1, heads, t, t).clone()


# --- measures on hand-built matrices ----------------------------------------------------------------------------


def test_uniform_rows():
    t = 12
    w, vis = uniform_causal(t), causal(t)
    p = M.probability_weights(w, vis)
    n_i = torch.arange(1, t + 1).float()
    torch.testing.assert_close(M.entropy(p)[0, 0], n_i.log())
    torch.testing.assert_close(M.effective_support(p)[0, 1], n_i)
    torch.testing.assert_close(M.max_weight(p)[0, 0], 1 / n_i)
    below, above = M.sparsity_shares(p, vis)
    assert below.eq(0).all()
    torch.testing.assert_close(above[0, 0], (1 / n_i > 0.1).float())  # rows with 10+ keys put 1/N_i <= 0.1 on each
    harmonic = (1 / n_i).sum()
    torch.testing.assert_close(M.frobenius_norm(w, vis), harmonic.sqrt().expand(1, 2))
    torch.testing.assert_close(M.frobenius_ratio(w, vis), (harmonic / t).sqrt().expand(1, 2))
    mass, defined = M.top_n_mass(p, vis, (1, 4))
    torch.testing.assert_close(mass[1, 0, 0][defined[1, 0, 0]], (4 / n_i)[n_i > 4])
    assert defined[0, 0, 0].tolist() == (n_i > 1).tolist()
    torch.testing.assert_close(M.n_over_l(vis, (4,))[0, 0, 0], 4 / n_i)
    assert M.row_sum(w, vis).sub(1).abs().max() < 1e-6 and M.negative_mass_share(w, vis).eq(0).all()


def test_one_hot_rows():
    t = 6
    vis = causal(t)
    w = torch.eye(t).expand(1, 3, t, t)  # each query on itself
    p = M.probability_weights(w, vis)
    assert M.entropy(p).abs().max() < 1e-7
    torch.testing.assert_close(M.effective_support(p), torch.ones(1, 3, t))
    torch.testing.assert_close(M.max_weight(p), torch.ones(1, 3, t))
    n_i = torch.arange(1, t + 1).float()
    below, above = M.sparsity_shares(p, vis)
    torch.testing.assert_close(below[0, 0], (n_i - 1) / n_i)
    torch.testing.assert_close(above[0, 0], 1 / n_i)
    torch.testing.assert_close(M.frobenius_norm(w, vis), torch.full((1, 3), math.sqrt(t)))
    torch.testing.assert_close(M.frobenius_ratio(w, vis), torch.ones(1, 3))
    mass, _ = M.top_n_mass(p, vis, (1,))
    torch.testing.assert_close(mass[0], torch.ones(1, 3, t))


def test_known_sink_with_left_padding():
    t, pad = 7, 2
    token_valid = torch.ones(2, t, dtype=torch.bool)
    token_valid[1, :pad] = False  # sequence 1 is left-padded: its sink is position 2
    vis = causal(t, 2) & token_valid[:, None, :, None] & token_valid[:, None, None, :]
    sink = M.first_token_index(token_valid)
    assert sink.tolist() == [0, pad]
    w = torch.zeros(2, 2, t, t)
    w[0, :, :, 0] = 1.0
    w[1, :, pad:, pad] = 1.0
    p = M.probability_weights(w, vis)
    strength, defined = M.sink_strength(p, vis, sink)
    torch.testing.assert_close(strength, torch.ones(2, 2))
    assert defined.all()
    assert M.sink_head_share(strength).tolist() == [1.0, 1.0]
    assert M.sink_head_share(torch.tensor([0.9, 0.2, 0.6, 0.5])).item() == 0.5  # strictly above 0.5
    uniform = M.probability_weights(uniform_causal(t), causal(t))
    expected = (1 / torch.arange(2, t + 1).float()).mean()  # queries i > 0 put 1/(i+1) on token 0
    torch.testing.assert_close(M.sink_strength(uniform, causal(t), torch.zeros(1, dtype=torch.long))[0][0, 0], expected)


def test_sink_value_norm_ratio():
    values = torch.zeros(1, 1, 4, 2)
    values[0, 0, :, 0] = torch.tensor([0.5, 1.0, 1.0, 1.0])
    ratio = M.value_norm_ratio(values, torch.ones(1, 4, dtype=torch.bool), torch.zeros(1, dtype=torch.long))
    torch.testing.assert_close(ratio, torch.tensor([[0.5 / 0.875]]))
    token_valid = torch.tensor([[False, True, True, True]])  # left padding: the sink is token 1, padding not averaged
    ratio = M.value_norm_ratio(values, token_valid, M.first_token_index(token_valid))
    torch.testing.assert_close(ratio, torch.tensor([[1.0]]))


def test_selection_separation():
    vis = torch.ones(1, 1, 1, 4, dtype=torch.bool)
    p = torch.tensor([0.1, 0.7, 0.1, 0.1]).view(1, 1, 1, 4)
    values = torch.zeros(1, 1, 4, 2)
    values[0, 0, 1] = torch.tensor([3.0, 4.0])  # only the top key has a value: |v| = 5
    dist, rel, defined = M.selection_separation(p, values, vis, (1, 2, 4))
    assert dist[0].item() == pytest.approx(5.0) and rel[0].item() == pytest.approx(5.0 / 1.25)
    assert dist[1].item() == pytest.approx(2.5)  # top 2 = {1, 0}: mean (1.5, 2); rest mean 0
    assert defined.flatten().tolist() == [True, True, False]  # N = 4 leaves nothing unselected


def test_signed_weights_convention():
    vis = torch.ones(1, 1, 1, 3, dtype=torch.bool)
    w = torch.tensor([0.6, -0.2, 0.6]).view(1, 1, 1, 3)  # a daGPAM-like row: sums to 1, one negative weight
    p = M.probability_weights(w, vis)
    torch.testing.assert_close(p.flatten(), torch.tensor([0.6, 0.2, 0.6]) / 1.4)
    assert M.negative_mass_share(w, vis).item() == pytest.approx(0.2 / 1.4)
    assert M.row_sum(w, vis).item() == pytest.approx(1.0)
    assert M.frobenius_norm(w, vis).item() == pytest.approx(math.sqrt(0.76))  # raw weights, not |a| renormalised
    assert M.max_weight(p).item() == pytest.approx(0.6 / 1.4)
    # unnormalised polynomial-like rows are renormalised too: only the shape of the row matters
    torch.testing.assert_close(M.entropy(M.probability_weights(5 * w, vis)), M.entropy(p))


def test_scale_aware_entropy_sees_the_scale_that_renormalisation_hides():
    t = 8
    w, vis = uniform_causal(t), causal(t)
    p = M.probability_weights(w, vis)
    n_i = torch.arange(1, t + 1).float()
    # probability rows: the Renyi-2 entropy (log N_i when uniform), mass 1, and it sums to ||A||_F^2
    torch.testing.assert_close(M.raw_collision_entropy(w, vis)[0, 0], n_i.log())
    torch.testing.assert_close(M.abs_row_mass(w, vis)[0, 0], torch.ones(t))
    torch.testing.assert_close(M.raw_collision_entropy(w, vis).neg().exp().sum(-1), M.frobenius_norm(w, vis).square())
    # a row scaled by 5: the renormalised entropy cannot tell, the raw one moves by -2 log 5 = the scale term
    torch.testing.assert_close(M.entropy(M.probability_weights(5 * w, vis)), M.entropy(p))
    torch.testing.assert_close(M.raw_collision_entropy(5 * w, vis), M.raw_collision_entropy(w, vis) - 2 * math.log(5))
    torch.testing.assert_close(M.abs_row_mass(5 * w, vis)[0, 0], torch.full((t,), 5.0))
    # signed rows: H2raw = H2(p) - 2 log m with p = |a| renormalised and m = sum |a|
    signed = torch.tensor([0.6, -0.2, 0.6]).view(1, 1, 1, 3)
    ones = torch.ones(1, 1, 1, 3, dtype=torch.bool)
    q = M.probability_weights(signed, ones)
    h2 = -q.square().sum(-1).log()
    torch.testing.assert_close(M.raw_collision_entropy(signed, ones), h2 - 2 * M.abs_row_mass(signed, ones).log())
    assert M.abs_row_mass(signed, ones).item() == pytest.approx(1.4)
    assert M.raw_collision_entropy(torch.zeros(1, 1, 1, 3), ones).item() == math.inf  # no mass: not a sample


def test_rank_collapse_and_cosine():
    x = torch.randn(1, 1, 8).expand(2, 5, 8)  # every token the same vector: rank collapse complete
    valid = torch.ones(2, 5, dtype=torch.bool)
    assert M.rank_collapse_residual(x, valid).abs().max() < 1e-6
    torch.testing.assert_close(M.mean_token_cosine(x, valid), torch.ones(2))
    scaled = torch.arange(1.0, 6.0)[None, :, None] * torch.randn(1, 1, 8)  # rank 1, different lengths
    torch.testing.assert_close(M.mean_token_cosine(scaled, valid[:1]), torch.ones(1))
    assert M.rank_collapse_residual(scaled, valid[:1]).item() > 0.1
    ortho = torch.eye(4)[None]  # orthogonal tokens: cosine 0, residual sqrt(1 - 1/n)
    torch.testing.assert_close(M.mean_token_cosine(ortho, valid[:1, :4]), torch.zeros(1))
    torch.testing.assert_close(M.rank_collapse_residual(ortho, valid[:1, :4]), torch.tensor([math.sqrt(0.75)]))
    padded = torch.cat([torch.full((1, 2, 4), 100.0), ortho], dim=1)  # padding does not count
    torch.testing.assert_close(M.rank_collapse_residual(padded, torch.tensor([[False, False] + [True] * 4])),
                               torch.tensor([math.sqrt(0.75)]))


def test_massive_activation_ratio():
    h = torch.ones(1, 4, 5)
    h[0, 2, 3] = -50.0
    valid = torch.ones(1, 4, dtype=torch.bool)
    torch.testing.assert_close(M.massive_activation_ratio(h, valid), torch.tensor([50.0]))
    valid[0, 2] = False
    torch.testing.assert_close(M.massive_activation_ratio(h, valid), torch.tensor([1.0]))


def test_running_stats_mean_std_count_and_merge():
    a, b = RunningStats((2, 3)), RunningStats((2, 3))
    a.add(0, torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, float("nan")]]))
    b.add(0, torch.tensor([[5.0, 2.0, 9.0]]), torch.tensor([[True, True, False]]))
    a.merge(b)
    torch.testing.assert_close(a.mean[0], torch.tensor([3.0, 2.0, 3.0], dtype=torch.float64))
    torch.testing.assert_close(a.std[0], torch.tensor([math.sqrt(8 / 3), 0.0, 0.0], dtype=torch.float64))
    assert a.count[0].tolist() == [3, 3, 1] and a.to_dict()["mean"][1] == [None, None, None]


# --- probe() on tiny models -------------------------------------------------------------------------------------


def tiny_model(arch: str, attn: str, **options):
    torch.manual_seed(0)
    kwargs = {"attnswap": options} if options else {}
    return AutoModelForCausalLM.from_config(tiny_config(arch), attn_implementation=attn, **kwargs).eval()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("mech", MECHANISMS)
def test_probe_shapes_finite_and_outputs_unchanged(arch, mech):
    model = tiny_model(arch, mech, **SIGNED_OPTIONS[mech])
    ids = random_ids(2, 10)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # right padding
    before = model(ids, attention_mask=mask).logits
    seen = []
    handle = model.lm_head.register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    result = probe(model, ids, mask, top_n=(1, 2, 4))
    handle.remove()
    torch.testing.assert_close(seen[0], before, atol=1e-5, rtol=1e-5)  # the probe's own forward: same logits
    assert torch.equal(model(ids, attention_mask=mask).logits, before)  # nothing left behind
    assert all(p.grad is None for p in model.parameters()) and not model.training
    left = [h for m in model.modules() for h in m._forward_hooks.values() if "diagnostics" in h.__module__]
    assert not left  # (Transformers adds its own output-capturing hooks at the first output_hidden_states call)

    d = result.to_dict()
    layers, heads = 2, 4
    assert (d["layers"], d["heads"], d["tokens"], d["sequences"]) == (layers, heads, 17, 2)
    for name, entry in d["measures"].items():
        mean = torch.tensor(entry["mean"], dtype=torch.float64)
        shape = {"layer": layers, "head": heads, "top_n": 3, "hidden_state": layers + 1}
        assert list(mean.shape) == [shape[a] for a in entry["axes"]], name
        assert torch.isfinite(mean).all(), name
    assert d["measures"]["entropy"]["count"] == [[17] * heads] * layers  # one sample per real query row
    assert d["gradients"] and d["values"] and math.isfinite(d["loss"])
    assert result.attention_map.shape == (layers, heads, 10, 10)
    expected = "probabilities" if mech == "softmax" else "abs_renormalised"
    assert d["weights_convention"] == expected
    negative = torch.tensor(d["measures"]["negative_mass_share"]["mean"])
    assert (negative > 0).any() if mech != "softmax" else negative.eq(0).all()
    json.dumps(d)  # JSON-ready: no NaN, no tensors


@pytest.mark.parametrize("arch", ARCHS)
def test_right_padding_changes_nothing(arch):
    """A right-padded batch gives the same pooled statistics as each sequence probed alone."""
    model = tiny_model(arch, "polynomial")
    a, b = random_ids(1, 9, seed=1), random_ids(1, 5, seed=2)
    ids = torch.cat([a, torch.cat([b, torch.full((1, 4), PAD)], dim=1)])
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    batch = probe(model, ids, mask, top_n=(1, 2), grad=False).to_dict()["measures"]
    alone = probe(model, a, top_n=(1, 2), grad=False).merge(probe(model, b, top_n=(1, 2), grad=False)).to_dict()["measures"]
    for name in ("entropy", "max_weight", "share_below_0.001", "frobenius_ratio", "sink_strength", "sink_value_norm_ratio",
                 "top_n_mass", "separation", "row_sum", "rank_collapse_residual", "token_cosine", "massive_activation"):
        torch.testing.assert_close(torch.tensor(batch[name]["mean"]), torch.tensor(alone[name]["mean"]),
                                   atol=1e-5, rtol=1e-4, msg=name)
        assert batch[name]["count"] == alone[name]["count"], name


def test_left_padding_skips_padded_queries_and_keys():
    model = tiny_model("llama", "dagpam", lambda_init=0.3)
    ids = random_ids(2, 8)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    result = probe(model, ids, mask, top_n=(1, 2))
    d = result.to_dict()
    assert d["measures"]["entropy"]["count"][0] == [13] * 4
    assert d["measures"]["sink_strength"]["count"][0] == [2] * 4
    weights = torch.tensor(d["measures"]["max_weight"]["mean"])
    assert torch.isfinite(weights).all() and (weights <= 1 + 1e-6).all()
    example = probe(model, ids, mask, top_n=(1,), example_index=1, grad=False).attention_map
    assert example.shape == (2, 4, 5, 5)  # the example's 5 real tokens only


def test_eager_and_softmax_measure_the_same():
    ids = random_ids(2, 9)
    soft = probe(tiny_model("gpt2", "softmax"), ids, top_n=(1, 4)).to_dict()["measures"]
    eager = probe(tiny_model("gpt2", "eager"), ids, top_n=(1, 4)).to_dict()["measures"]
    for name in ("entropy", "sink_strength", "top_n_mass", "query_grad_norm", "rank_collapse_residual"):
        torch.testing.assert_close(torch.tensor(soft[name]["mean"]), torch.tensor(eager[name]["mean"]), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_query_gradient_is_the_query_slice(arch):
    model = tiny_model(arch, "softmax")
    ids = random_ids(1, 8)
    d = probe(model, ids, top_n=(1,)).to_dict()["measures"]
    model(ids, labels=ids).loss.backward()
    from hf_attnswap.patching import attention_modules

    for layer, module in enumerate(attention_modules(model)):
        weight, per_head = query_weight(module, 4)
        grad = weight.grad[:, :32] if arch == "gpt2" else weight.grad  # GPT-2: the query third of c_attn (D, 3D)
        assert d["query_grad_norm"]["mean"][layer] == pytest.approx(grad.norm().item(), rel=1e-4)
        heads = torch.tensor(d["query_grad_norm_head"]["mean"][layer])
        assert heads.square().sum().sqrt().item() == pytest.approx(grad.norm().item(), rel=1e-4)
        assert per_head(weight.grad).shape[0] == 4


def test_probe_rejects_what_it_cannot_measure():
    with pytest.raises(ProbeError, match="'sdpa'"):
        probe(tiny_model("gpt2", "sdpa"), random_ids(1, 5))
    model = tiny_model("gpt2", "softmax")
    with pytest.raises(ProbeError, match="top_n"):
        probe(model, random_ids(1, 5), top_n=(0,))
    with pytest.raises(ProbeError, match="no real token"):
        probe(model, random_ids(1, 5), torch.zeros(1, 5, dtype=torch.long))


# --- attnswap probe -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from test_perplexity import word_tokenizer

    path = tmp_path_factory.mktemp("tiny_probe_model")
    tiny_model("llama", "sdpa").save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def texts_file(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": " ".join(f"w{(i * 7 + j) % 60 + 4}" for j in range(12 + i))})
                              for i in range(3)))
    return path


def test_cli_probe_writes_json_and_plots(tiny_model_dir, texts_file, tmp_path, capsys):
    out = tmp_path / "probe_out"
    code = main(["probe", "--model", str(tiny_model_dir), "--attn", "eager,softmax,dagpam:lambda_init=0.2,polynomial",
                 "--dataset", str(texts_file), "--out", str(out), "--max-length", "10", "--top-n", "1,2,4",
                 "--batch-size", "2", "--heads", "2"])
    assert code == 0, capsys.readouterr().err
    data = json.loads((out / "probe.json").read_text())
    assert data["kind"] == "probe" and data["data"]["texts"] == 3
    rows = {r["attn"]: r for r in data["results"]}
    assert set(rows) == {"eager", "softmax", "dagpam:lambda_init=0.2", "polynomial"}
    assert rows["dagpam:lambda_init=0.2"]["probe"]["weights_convention"] == "abs_renormalised"
    assert rows["softmax"]["probe"]["weights_convention"] == "probabilities"
    assert rows["softmax"]["probe"]["tokens"] == 30  # 10 + 10 + 10 tokens after the cut
    assert rows["eager"]["entropy"] == pytest.approx(rows["softmax"]["entropy"], rel=1e-5)
    names = {"per_layer.png", "sink_strength.png", "top_n.png", "attention_map_eager.png", "attention_map_softmax.png",
             "attention_map_dagpam_lambda_init_0.2.png", "attention_map_polynomial.png"}
    assert names <= {p.name for p in out.iterdir()}
    assert all((out / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)


@pytest.mark.parametrize("case, message", [
    ("unknown", "Did you mean 'softmax'"),
    ("sdpa", "'sdpa' returns no attention weights"),
    ("missing", "nope.jsonl does not exist"),
    ("empty", "is empty"),
    ("unwritable", "cannot write there"),
    ("top_n", "--top-n takes comma-separated integers"),
])
def test_cli_probe_bad_input_is_a_clear_error(tiny_model_dir, texts_file, tmp_path, capsys, case, message):
    args = {"--attn": "softmax", "--dataset": str(texts_file), "--out": str(tmp_path / "out"), "--top-n": "1,2"}
    if case == "unknown":
        args["--attn"] = "softmx"
    elif case == "sdpa":
        args["--attn"] = "sdpa,softmax"
    elif case == "missing":
        args["--dataset"] = str(tmp_path / "nope.jsonl")
    elif case == "empty":
        (tmp_path / "empty.txt").write_text("")
        args["--dataset"] = str(tmp_path / "empty.txt")
    elif case == "unwritable":
        (tmp_path / "a_file").write_text("x")
        args["--out"] = str(tmp_path / "a_file" / "out")  # a folder inside a file cannot be made (even as root)
    elif case == "top_n":
        args["--top-n"] = "1,two"
    argv = ["probe", "--model", str(tiny_model_dir)] + [x for kv in args.items() for x in kv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "attnswap: error:" in err and message in err and "Traceback" not in err
