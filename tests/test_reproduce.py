"""The table and verdict code of benchmarks/reproduce.py and its modules (benchmarks/reproduction/) on synthetic
numbers (no training, no models)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "reproduce.py"
_spec = importlib.util.spec_from_file_location("reproduce_under_test", _PATH)
R = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = R
_spec.loader.exec_module(R)

from reproduction import claims as verdicts  # noqa: E402
from reproduction import config, conversions, files, finetune, markdown, record, report, stats  # noqa: E402
from reproduction.plots import PLOT_FILES  # noqa: E402


def test_mean_std_is_sample_std_and_skips_non_finite():
    m, s, n = stats.mean_std([1.0, 2.0, 3.0])
    assert (m, n) == (2.0, 3) and s == pytest.approx(1.0)  # n-1
    assert stats.mean_std([4.0]) == (4.0, 0.0, 1)
    m, s, n = stats.mean_std([1.0, None, float("nan"), float("inf"), 3.0])
    assert (m, n) == (2.0, 2) and s == pytest.approx(math.sqrt(2))
    m, s, n = stats.mean_std([])
    assert math.isnan(m) and math.isnan(s) and n == 0


def test_formatting():
    assert markdown.fmt_pm([1.0, 2.0, 3.0]) == "2.00 ± 1.00"
    assert markdown.fmt_pm([0.5]) == "0.500"
    assert markdown.fmt_pm([1.0, float("nan"), 3.0]) == "2.00 ± 1.41 (1 of 3 not finite)"
    assert markdown.fmt_pm([None, None]) == "n/a (2 of 2 not finite)"
    assert markdown.fmt_num(1.32e9) == "1.32e+09"
    assert markdown.fmt_num(0.0) == "0" and markdown.fmt_num(float("inf")) == "inf" and markdown.fmt_num(None) == "n/a"
    assert markdown.fmt_num(123.456) == "123.5" and markdown.fmt_num(2e-6) == "2.00e-06"
    md = markdown.table(["a", "b"], [[1, "x"]])
    assert md.splitlines() == ["| a | b |", "| --- | --- |", "| 1 | x |"]


def test_welch_t_and_separation():
    assert stats.welch_t([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 0.0
    t = stats.welch_t([4.0, 5.0, 6.0], [1.0, 2.0, 3.0])
    assert t == pytest.approx(3.0 / math.sqrt(2 / 3))
    assert math.isnan(stats.welch_t([1.0], [2.0, 3.0]))
    assert stats.welch_t([2.0, 2.0], [1.0, 1.0]) == math.inf
    assert stats.separated([4, 5, 6], [1, 2, 3]) == 1
    assert stats.separated([1, 2, 3], [4, 5, 6]) == -1
    assert stats.separated([1, 5], [2, 3]) == 0


def test_measurable_difference():
    big = stats.measurable_difference([10.0, 10.1, 10.2], [5.0, 5.1, 5.2])
    assert big["measurable"] and big["separated"] == 1 and big["gap"] == pytest.approx(5.0)
    overlap = stats.measurable_difference([1.0, 3.0, 5.0], [2.0, 4.0, 6.0])
    assert not overlap["measurable"]
    # separated, but the gap is small against the spread
    noisy = stats.measurable_difference([1.0, 1.1, 2.0], [0.9, 0.95, 0.99])
    assert noisy["separated"] == 1 and not noisy["measurable"]
    # statistically clear but negligible (below MIN_RELATIVE_GAP of the value)
    tiny = stats.measurable_difference([2.5501, 2.5502, 2.5503], [2.5500, 2.54995, 2.54990])
    assert tiny["separated"] == 1 and tiny["gap_in_stds"] > 2 and not tiny["measurable"]
    # one seed per group is never enough
    assert not stats.measurable_difference([10.0], [1.0])["measurable"]


def test_combine_and_claim1():
    assert verdicts.combine([True, True]) == "yes" and verdicts.combine([True, False]) == "partly" and verdicts.combine([False]) == "no"
    assert verdicts.verdict_claim1([0.0, 3e-6, 1e-5]) == "yes"
    assert verdicts.verdict_claim1([0.0, 2e-5]) == "partly"
    assert verdicts.verdict_claim1([1e-3, float("nan")]) == "no"
    assert verdicts.verdict_claim1([]) == "not run"


def test_claim2_verdicts():
    soft_ppl, dag_ppl = [500.0, 510.0, 505.0], [498.0, 507.0, 503.0]
    res_s, res_d = [0.50, 0.51, 0.50], [0.60, 0.61, 0.62]
    cos_s, cos_d = [0.70, 0.71, 0.72], [0.50, 0.51, 0.52]
    v = verdicts.verdict_claim2(dag_ppl, soft_ppl, res_d, res_s, cos_d, cos_s)
    assert v["verdict"] == "yes" and v["ppl_no_worse"] and v["higher_residual"] and v["lower_cosine"]
    # clearly worse perplexity, collapse the other way round
    v = verdicts.verdict_claim2([600.0, 601.0, 602.0], soft_ppl, res_s, res_d, cos_s, cos_d)
    assert v["verdict"] == "no" and not v["ppl_no_worse"]
    # slightly worse but within the noise counts as "no worse"; no collapse difference -> partly
    v = verdicts.verdict_claim2([505.0, 515.0, 508.0], soft_ppl, res_s, res_s, cos_s, cos_s)
    assert v["ppl_no_worse"] and v["verdict"] == "partly"


def test_moving_average():
    assert stats.moving_average([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    assert stats.moving_average([1.0, 5.0], 1) == [1.0, 5.0]
    assert stats.moving_average([], 3) == []


def test_loss_health():
    h = verdicts.loss_health([10.0, 8.0, 7.0, 7.2, 6.5], window=1)
    assert h["stable"] and h["nonfinite_steps"] == 0 and h["max_spike"] == pytest.approx(0.2)
    h = verdicts.loss_health([10.0, 6.0, 9.5, 6.0], window=1)
    assert h["blew_up"] and not h["stable"] and h["max_spike"] == pytest.approx(3.5)
    # one noisy batch is smoothed away by the moving average; a sustained rise is not
    noisy = [7.0] * 20 + [9.5] + [7.0] * 20
    h = verdicts.loss_health(noisy, window=10)
    assert h["max_raw_spike"] == pytest.approx(2.5) and h["max_spike"] == pytest.approx(0.25) and h["stable"]
    h = verdicts.loss_health([7.0] * 20 + [9.0] * 20, window=10)
    assert h["blew_up"] and h["max_spike"] == pytest.approx(2.0)
    h = verdicts.loss_health([10.0, float("nan"), None, 9.0])
    assert h["nonfinite_steps"] == 2 and not h["stable"]
    assert verdicts.run_stable(verdicts.loss_health([10.0, 9.0]), 100.0, 50.0)
    assert not verdicts.run_stable(verdicts.loss_health([10.0, 9.0]), 100.0, 150.0)  # ended worse than it started
    assert not verdicts.run_stable(verdicts.loss_health([10.0, 9.0]), 100.0, float("nan"))


def _runs(ppls, stable=True):
    return [{"stable": stable, "final_ppl": p} for p in ppls]


def test_claim3_verdicts():
    scaled = _runs([300.0, 310.0, 305.0])
    assert verdicts.verdict_claim3(scaled, _runs([900.0, 950.0, 1000.0]))["verdict"] == "yes"  # much worse, stable
    v = verdicts.verdict_claim3(scaled, _runs([float("nan")] * 3, stable=False))
    assert v["verdict"] == "yes" and v["unscaled_diverged_runs"] == 3
    v = verdicts.verdict_claim3(scaled, _runs([301.0, 309.0, 306.0]))  # the same: unscaled is fine
    assert v["verdict"] == "partly" and not v["unscaled_much_worse"]
    v = verdicts.verdict_claim3(_runs([300.0, 310.0, 305.0], stable=False), _runs([301.0, 309.0, 306.0]))
    assert v["verdict"] == "no"
    # 1.5x worse on average but the seeds overlap: not "much worse"
    v = verdicts.verdict_claim3(scaled, _runs([200.0, 600.0, 600.0]))
    assert not v["unscaled_much_worse"]


def test_claim4_gap_and_verdicts():
    assert verdicts.gap_recovered(3.0, 21.0, 12.0) == pytest.approx(0.5)
    assert verdicts.gap_recovered(3.0, 21.0, 3.0) == pytest.approx(1.0)
    assert verdicts.gap_recovered(3.0, 21.0, 22.0) < 0
    assert math.isnan(verdicts.gap_recovered(3.0, 3.0, 3.0))
    base = math.log(30.0)
    near = [base + 0.3] * 3  # final ppl 1.35x the base
    assert verdicts.verdict_claim4(base, [21.0] * 3, near)["verdict"] == "yes"
    v = verdicts.verdict_claim4(base, [21.0] * 3, [6.0, 6.5, 7.0])  # most of the gap in nats, still >2x the base ppl
    assert v["verdict"] == "partly" and v["recovered_mean"] > 0.5
    assert verdicts.verdict_claim4(base, [21.0] * 3, [18.0] * 3)["verdict"] == "partly"  # some recovery
    assert verdicts.verdict_claim4(base, [21.0] * 3, [21.5] * 3)["verdict"] == "no"  # none
    assert verdicts.verdict_claim4(base, [base - 0.1] * 3, [base - 0.2] * 3)["verdict"] == "no"  # swap did not raise ppl


def test_claim5_verdict():
    yes = {"measurable": True}
    no = {"measurable": False}
    assert verdicts.verdict_claim5({"a vs b": {"sink": yes, "entropy": yes}, "a vs c": {"sink": yes, "entropy": yes}}) == "yes"
    assert verdicts.verdict_claim5({"a vs b": {"sink": yes, "entropy": no}}) == "partly"
    assert verdicts.verdict_claim5({"a vs b": {"sink": no, "entropy": no}}) == "no"
    assert verdicts.verdict_claim5({}) == "not run"


def test_headline_and_deep_layers():
    assert verdicts.deep_hidden_states(6) == [4, 5, 6]
    assert verdicts.deep_hidden_states(2) == [2]
    analysis = {"claim1": {"verdict": "yes", "per_pair": {
        "smollm2/fused_vs_sdpa": {"model": "smollm2", "values": [0.0, 1e-6], "max": 1e-6},
        "tiny_gpt2/fused_vs_sdpa": {"model": "tiny_gpt2", "values": [0.0], "max": 0.0},
        "tiny_llama/fused_vs_sdpa": {"model": "tiny_llama", "values": [0.0], "max": 0.0}}}}
    rows = report.headline({1}, analysis)
    assert rows[0][1] == "yes" and "smollm2 1.00e-06" in rows[0][2]


def test_clean_json_has_no_nan():
    assert files.strict_json({"a": float("nan"), "b": [float("inf"), 1.0]}) == {"a": None, "b": ["inf", 1.0]}
    assert math.isinf(files.number("inf")) and math.isnan(files.number(None))


# ------------------------------------------------------------- claim 4: recipes/convert.py's committed results


def _conversion(final=(30.0, 60.0), *, base=(20.0, 35.0), swapped=(2e9, 1e9), command=None, lam=False,
                control=None, errors=None):
    """A results.json dict as recipes/convert.py's report() writes it, for two corpora."""
    corpora = ("held out", "news")
    ppl = lambda v: dict(zip(corpora, v))  # noqa: E731
    stage2 = {"ppl": ppl(final), "steps": 150, "tokens": 153600, "seconds": 900.0, "loss": [3.0, 2.5]}
    stage1 = {"ppl": ppl((270.0, 510.0)), "steps": 200, "tokens": 204800, "seconds": 600.0, "loss": [1.0]}
    if lam:
        stage2["mechanism_parameters"] = {"lambda_param": {"numel": 270, "mean": 0.05, "mean_abs": 0.12,
                                                           "min": -0.3, "max": 0.4}}
    if errors:
        stage1["relative_error"] = errors
    ratios = {c: {"base": b, "swapped": s, "final": f, "ratio": f / b,
                  "gap_closed": (math.log(s) - math.log(f)) / (math.log(s) - math.log(b))}
              for c, b, s, f in zip(corpora, base, swapped, final)}
    r = {"target": "polynomial:degree=3", "model": "smollm2", "final_phase": "stage2", "ratio_to_base": ratios,
         "phases": {"base": {"ppl": ppl(base)}, "swapped": {"ppl": ppl(swapped)}, "stage1": stage1, "stage2": stage2},
         "control": None, "tokens": 358400, "seconds": 1500.0, "git_revision": "abc1234"}
    if control:
        r["control"] = {"ppl": ppl(control), "steps": 150, "tokens": 153600, "seconds": 890.0}
        for c, v in zip(corpora, control):
            ratios[c].update(control=v, control_ratio=v / ratios[c]["base"], ratio_to_control=ratios[c]["final"] / v)
    if command is not None:
        r["command"] = command
    return r


def _plain(final):
    """An ablation_plain results.json: no stage 1, stage 2 only."""
    r = _conversion(final)
    del r["phases"]["stage1"]
    return r


def test_conversion_verdict():
    near = _conversion((30.0, 60.0))  # 1.5x and 1.71x the base
    v = conversions.verdict_conversion(near, {"plain": _plain((900.0, 1500.0))})
    assert v["verdict"] == "yes" and v["near_base"] and v["beats_plain"] and v["raised"]
    assert v["per_corpus"]["held out"]["ratio"] == pytest.approx(1.5)
    assert v["per_corpus"]["news"]["plain"] == 1500.0
    # no plain continued pretraining ablation: at most partly, and it says why
    v = conversions.verdict_conversion(near, {"stage2_only": _plain((900.0, 1500.0))})
    assert v["verdict"] == "partly" and v["beats_plain"] is None and "no plain continued pretraining" in v["reason"]
    # plain continued pretraining does as well on one corpus
    v = conversions.verdict_conversion(near, {"plain": _plain((900.0, 55.0))})
    assert v["verdict"] == "partly" and v["beats_plain"] is False and "not below" in v["reason"]
    # more than 2x the base on one corpus: no, even though it beats the ablation
    far = _conversion((30.0, 71.0))
    v = conversions.verdict_conversion(far, {"plain": _plain((900.0, 1500.0))})
    assert v["verdict"] == "no" and not v["near_base"] and "news" in v["reason"]
    assert conversions.verdict_conversion(far, {})["verdict"] == "no"
    assert conversions.verdict_conversion(_conversion((30.0, float("nan"))), {})["verdict"] == "no"  # a diverged evaluation
    v = conversions.verdict_conversion(_conversion((40.0, 70.0)), {})  # exactly 2x counts as within
    assert v["verdict"] == "partly" and v["per_corpus"]["news"]["gap_closed"] == pytest.approx(
        (math.log(1e9) - math.log(70.0)) / (math.log(1e9) - math.log(35.0)))


def test_load_conversions_and_claim4_choice(tmp_path):
    (tmp_path / "convert_smollm2_polynomial" / "ablation_plain").mkdir(parents=True)
    (tmp_path / "convert_smollm2_polynomial" / "ablation_stage2_only").mkdir()  # no results.json: skipped
    (tmp_path / "convert_smollm2_dagpam").mkdir()
    (tmp_path / "convert_smollm2_broken").mkdir()  # no results.json: skipped
    (tmp_path / "mt_smollm2_de_en.json").write_text("{}")
    poly = _conversion()
    (tmp_path / "convert_smollm2_polynomial" / "results.json").write_text(json.dumps(poly))
    (tmp_path / "convert_smollm2_polynomial" / "conversion.png").write_bytes(b"png")
    errors = {"relative_error": {"converted": [0.3, 0.5]}, "converted_with_best_gain": {
        "per_head": [0.3, 0.4], "per_head_and_position": [0.2, 0.4], "per_head_and_query": [0.1, 0.3]}}
    (tmp_path / "convert_smollm2_polynomial" / "transfer_errors.json").write_text(json.dumps(errors))
    (tmp_path / "convert_smollm2_polynomial" / "ablation_plain" / "results.json").write_text(
        json.dumps(_plain((900.0, 1500.0))))
    dag = {**_conversion(), "target": "dagpam:lambda_init=0.1"}
    (tmp_path / "convert_smollm2_dagpam" / "results.json").write_text(json.dumps(dag))
    convs = conversions.load_conversions(tmp_path)
    assert [c["name"] for c in convs] == ["convert_smollm2_dagpam", "convert_smollm2_polynomial"]
    assert convs[1]["results"] == poly and list(convs[1]["ablations"]) == ["plain"]
    assert convs[1]["plot"] and not convs[0]["plot"] and convs[0]["ablations"] == {}
    assert convs[1]["transfer_errors"] == errors and convs[0]["transfer_errors"] is None
    md = report.render_conversion(convs[1]["name"], convs[1]["results"], transfer_errors=convs[1]["transfer_errors"])
    assert ("mean over layers 0.400 as converted; with the best output gain per head 0.350, per head and position "
            "0.300, per head and query 0.200") in md
    assert "best output gain" not in report.render_conversion(convs[0]["name"], convs[0]["results"])
    assert conversions.conversion_for_claim4(convs)["name"] == "convert_smollm2_polynomial"  # claim 4 is about polynomial
    assert conversions.conversion_for_claim4(convs[:1]) is None
    assert conversions.load_conversions(tmp_path / "missing") == []


def test_render_conversion_tables_ratios_and_command():
    cmd = ["python", "recipes/convert.py", "--config", "recipes/configs/convert_smollm2_polynomial.yaml",
           "--output_dir", "runs/my conv"]
    r = _conversion((30.0, 60.0), command=cmd, lam=True, control=(18.0, 32.0),
                    errors={"first_step": [1.0, 0.8], "last_10_steps": [0.2, 0.4]})
    md = report.render_conversion("convert_smollm2_polynomial", r, "results/convert_smollm2_polynomial/conversion.png")
    lines = md.splitlines()
    assert "| phase | ppl held out | ppl news | tokens | minutes |" in lines
    assert "| base (own attention) | 20.00 | 35.00 | — | — |" in lines
    assert "| right after the swap | 2.00e+09 | 1.00e+09 | — | — |" in lines
    assert "| after stage 1 (attention transfer), 200 steps | 270.0 | 510.0 | 204,800 | 10.0 |" in lines
    assert "| after stage 2 (fine-tuning), 150 steps | 30.00 | 60.00 | 153,600 | 15.0 |" in lines
    assert "| control: own attention, the same stage 2, 150 steps | 18.00 | 32.00 | 153,600 | 14.8 |" in lines
    assert "held out **1.500×**, news **1.714×**" in md
    # three decimals: a ratio just over a 1.5x target must not print as 1.50x
    just_over = report.render_conversion("c", _conversion((30.04, 60.0), command=cmd), "c.png")
    assert "held out **1.502×**" in just_over
    assert f"held out {100 * r['ratio_to_base']['held out']['gap_closed']:.1f} %" in md
    assert "final / control perplexity: held out 1.67×, news 1.88×" in md
    assert "358,400 training tokens, 25.0 min" in md
    assert "`lambda_param` (270 values): mean |λ| 0.120, mean 0.050, min -0.300, max 0.400" in md
    assert "first step 0.900 (1.00), last 10 steps 0.300 (0.400)" in md
    assert ("```bash\npython recipes/convert.py --config recipes/configs/convert_smollm2_polynomial.yaml "
            "--output_dir 'runs/my conv'\n```") in md
    assert "![conversion.png](results/convert_smollm2_polynomial/conversion.png)" in md
    old = report.render_conversion("old", _conversion())  # written before convert.py recorded its command
    assert "command not recorded" in old and "```bash" not in old and "control:" not in old and "![" not in old


def test_render_ablations_and_section():
    parent = _conversion((30.0, 60.0))
    plain = {**_plain((900.0, 1500.0)), "command": ["python", "recipes/convert.py", "--max_transfer_steps", "0"]}
    md = report.render_ablations(parent, {"plain": plain})
    lines = md.splitlines()
    assert ("| method | tokens | final ppl held out | final ppl news | ratio to base held out | ratio to base news |"
            in lines)
    assert "| stage 1 + stage 2 (the conversion) | 358,400 | 30.00 | 60.00 | 1.50× | 1.71× |" in lines
    assert "| `ablation_plain` (plain continued pretraining) | 358,400 | 900.0 | 1500.0 | 45.00× | 42.86× |" in lines
    assert "# ablation_plain\npython recipes/convert.py --max_transfer_steps 0" in md
    assert report.render_ablations(parent, {}) == ""
    convs = [{"name": "convert_smollm2_polynomial", "results": parent, "ablations": {"plain": plain}, "plot": False}]
    claim = {"name": "convert_smollm2_polynomial", **conversions.verdict_conversion(parent, {"plain": plain})}
    section = report.render_conversions(convs, claim)
    assert section.startswith("## Conversion of SmolLM2 (recipes/convert.py)\n")
    assert "### `convert_smollm2_polynomial`: smollm2 → `polynomial:degree=3`" in section
    assert "| `ablation_plain` (plain continued pretraining)" in section
    assert "**Verdict (claim 4, on `convert_smollm2_polynomial`, one seed): yes**" in section


def test_headline_claim4_uses_the_conversion():
    parent = _conversion((30.0, 60.0))
    older = {"verdict": "partly", "rows": [{"steps": 24}]}
    rows = report.headline({4}, {"claim4": {"verdict": "not run"}})  # no conversion results: the older row
    assert rows[0][0].startswith("4. swap to polynomial raises ppl; continued pretraining") and rows[0][1] == "not run"
    claim = {"name": "convert_smollm2_polynomial", **conversions.verdict_conversion(parent, {})}
    rows = report.headline({4}, {"claim4": {**older, "conversion": claim}})
    assert "conversion recovers most of the gap" in rows[0][0] and rows[0][1] == "partly"
    assert "held out 20.00 → 2.00e+09 → 30.00 (1.50× the base" in rows[0][2]
    assert "no plain continued pretraining ablation" in rows[0][2]
    assert "older 24-step continued pretraining runs: partly" in rows[0][2]


# ------------------------------------------------------------- --render-only: the report from reproduce.json


def _fake_run(mech, seed, *, final=None, losses=None):
    """A :func:`scratch_run` dict of the QUICK scale (2 layers, 3 hidden states), with a probe."""
    final = 100.0 + 10 * seed + {"softmax": 0, "dagpam": 5, "poly_scaled": -5, "poly_unscaled": 20,
                                              "poly_p1": 40}[mech] \
        if final is None else final
    losses = [(1, 6.0 + 0.1 * seed), (2, 5.5), (3, 5.0 - 0.1 * seed)] if losses is None else losses
    health = verdicts.loss_health([v for _, v in losses])
    shift = {"softmax": 0.0, "dagpam": 0.05, "poly_scaled": -0.2, "poly_unscaled": -0.3, "poly_p1": -0.1}[mech] \
        + 0.01 * seed
    per_layer = {"rank_collapse_residual": [0.9, 0.8 + shift, 0.7 + shift], "token_cosine": [0.1, 0.3 - shift, 0.5],
                 "query_grad_norm": [0.01, 0.02 + seed / 100], "entropy": [3.0 + shift, 3.1 + shift],
                 "sink_strength": [0.04 + shift / 10, 0.05], "max_weight": [0.1, 0.2], "frobenius_ratio": [0.2, 0.3],
                 "raw_collision_entropy": [2.0 + shift, 2.5], "abs_row_mass": [1.0, 1.0 + shift], "row_sum": [1.0, 1.0]}
    return {"lambdas": {"per_layer": [[0.1, -0.2]], "mean": 0.01 * seed, "min": -0.2, "max": 0.1}
            if mech == "dagpam" else None, "mech": mech, "seed": seed, "attn": config.MECH_TITLES[mech][:7],
            "first_ppl": 5000.0 + seed, "final_ppl": final, "seconds": 12.5 + seed, "tokens_seen": 192, "steps": 3,
            "losses": losses, "evals": [(0, 5000.0 + seed), (3, final)], **health,
            "stable": verdicts.run_stable(health, 5000.0 + seed, final),
            "probe": {"weights_convention": "probabilities" if mech == "softmax" else "abs_renormalised",
                      "per_layer": per_layer}}


def _fake_collected(seeds, conversions):
    """What :func:`collect` returns for every claim (tiny numbers; one diverged unscaled run with NaNs)."""
    def claim1(seed):
        models = {m: {"pairs": {"fused_vs_sdpa": 0.0, "reference_vs_eager": 1e-7 * seed},
                      "context": {"eager_vs_sdpa": 2e-6, "max_abs_logit": 4.0 + seed}}
                  for m in ("smollm2", "tiny_gpt2", "tiny_llama")}
        return {"seed": seed, "models": models}

    scratch = {m: {s: _fake_run(m, s) for s in seeds} for m in config.MECHS}
    scratch["poly_unscaled"][seeds[-1]] = _fake_run("poly_unscaled", seeds[-1], final=float("nan"),
                                                    losses=[(1, 6.0), (2, float("nan")), (3, float("nan"))])
    base = {"ppl": 35.0, "nll": math.log(35.0)}
    runs4 = {s: {"evaluations": [{"step": 0, "eval/nll": math.log(7e9), "eval/ppl": 7e9},
                                 {"step": 2, "eval/nll": math.log(2e7 + s), "eval/ppl": 2e7 + s}],
                 "seconds": 20.0, "tokens_seen": 64, "steps": 2, "losses": [(1, 12.0), (2, 11.0 - s)]} for s in seeds}
    refs = ["the cat sat on the mat", "a dog runs fast", "hello there my friend", "it is raining today"]

    def cpt(arm, seed):
        gap = 0.01 if arm == "dagpam" else 0.0
        return {"arm": arm, "seed": seed, "attn": arm, "steps": 2, "tokens_seen": 64, "seconds": 9.0,
                "wiki": {"ppl": math.exp(3.0 + gap + 0.01 * seed), "nll": 3.0 + gap + 0.01 * seed, "tokens": 50},
                "news": {"ppl": math.exp(3.4 + gap - 0.01 * seed), "nll": 3.4 + gap - 0.01 * seed, "tokens": 40},
                "lambdas": {"mean": 0.01, "min": -0.02, "max": 0.03} if arm == "dagpam" else None,
                "losses": [(1, 3.1), (2, 3.0)]}

    def mt(arm, seed):
        hyps = ["the cat sat on a mat", "a dog runs", "hello my friend", "it rains today"] if arm == "softmax" else \
            ["the cat sat on the mat", "the dog ran fast", "hello there friend", "it is raining"]
        return {"arm": arm, "seed": seed, "attn": arm, "steps": 2, "seconds": 9.0, "tokens_seen": 64,
                "val_step0": {"bleu": 12.5, "chrf": 40.0, "step": 0}, "val_final": {"bleu": 14.0 + seed, "chrf": 41.0,
                                                                                 "step": 2},
                "validation_pairs": 2, "test": {"bleu": 20.0 + seed, "chrf": 45.0, "n": 4, "bleu_signature": "b",
                                                "chrf_signature": "c"},
                "hypotheses": hyps, "references": refs, "lambdas": None, "losses": [(1, 2.0), (2, 1.5)]}

    ngram = {"bigram": {"ppl": 300.0, "nll": math.log(300.0), "smoothing": 0.1, "ppl_per_k": {"0.1": 300.0, "1.0": 320.0}},
             "unigram": {"ppl": 2000.0, "nll": math.log(2000.0), "smoothing": 1.0}, "tokens": 60, "train_tokens": 600,
             "vocab_size": 300}
    return {"claim1": {s: claim1(s) for s in seeds}, "scratch": scratch, "claim4": {"sdpa": base, "runs": runs4},
            "conversions": conversions, "ngram": ngram,
            "cpt": {"base": {"corpora": {"wiki": {"ppl": 19.0, "nll": math.log(19.0)}, "news": {"ppl": 30.0}}},
                    "runs": {a: {s: cpt(a, s) for s in seeds} for a in ("softmax", "dagpam")}},
            "mt": {"base": {"bleu": 10.0, "chrf": 38.0, "n": 4, "hypotheses": refs, "references": refs},
                   "runs": {a: {s: mt(a, s) for s in seeds} for a in ("softmax", "dagpam")}}}


def _fake_meta():
    return {"git_revision": "1234abc", "date": "2026-11-22 08:55", "machine": "2-core test CPU", "wall_seconds": 600.0,
            "jobs": 11, "cached_jobs": 0, "job_seconds_total": 1100.0, "jobs_at_once": 2,
            "command": "python benchmarks/reproduce.py --out X --quick", "example_commands": ["python recipe <seed>"],
            "runs_dir": "runs/reproduce_quick", "failed_jobs": [], "computed_run": None, "parts": ["cpt", "mt"],
            "tokenizer": {"folder": "wiki-text-bpe300-abc", "train_documents": 101},
            "ngram": {"bigram": {"ppl": 300.0, "smoothing": 0.1, "ppl_per_k": {"0.1": 300.0, "1.0": 320.0}},
                      "unigram": {"ppl": 2000.0}, "tokens": 60, "train_tokens": 600}}


@pytest.fixture
def committed_run(tmp_path, monkeypatch):
    """A finished run's outputs in tmp_path: <out>/reproduce.json as main() writes it, and the report a run renders
    from its data (conversions from a fake docs/results)."""
    conv_root = tmp_path / "results"
    (conv_root / "convert_smollm2_polynomial").mkdir(parents=True)
    (conv_root / "convert_smollm2_polynomial" / "results.json").write_text(json.dumps(_conversion((30.0, 60.0))))
    monkeypatch.setattr(R, "CONVERSIONS_DIR", conv_root)
    claims, seeds, scale = {1, 2, 3, 4, 5}, [0, 1], config.QUICK
    data = _fake_collected(seeds, conversions.load_conversions(conv_root))
    analysis = verdicts.analyse(claims, seeds, data, scale)
    analysis.update(finetune.analyse_parts({"cpt", "mt"}, data))
    out = tmp_path / "out"
    out.mkdir()
    plots = {k: [name] for k, name in PLOT_FILES.items()}
    meta = _fake_meta()
    text = report.render_md(claims, seeds, scale, analysis, data, plots, meta, tmp_path / "results.md", out)
    files.write_json(out / "reproduce.json", record.reproduce_json(meta, scale, claims, seeds, analysis, data, {},
                                                                   {"cpt", "mt"}))
    return {"out": out, "md": tmp_path / "results.md", "text": text, "tmp": tmp_path}


def _without_header(text):
    lines = text.splitlines()
    assert lines[2].startswith(("Generated by `benchmarks/reproduce.py`", "Re-rendered by `benchmarks/reproduce.py"))
    return lines[:2] + lines[3:]


def test_render_only_round_trip_reproduces_the_report_and_plots(committed_run):
    out, run_text = committed_run["out"], committed_run["text"]
    md = committed_run["tmp"] / "results.md"
    assert R.main(["--out", str(out), "--md", str(md), "--render-only"]) == 0
    text = md.read_text()
    # every line but the header is the run's own rendering: same numbers, tables, verdicts, conversion section
    assert _without_header(text) == _without_header(run_text)
    header = text.splitlines()[2]
    assert "--render-only" in header and "from the committed [`reproduce.json`](out/reproduce.json)" in header
    assert "at git revision `1234abc` on 2026-11-22 08:55 (2-core test CPU" in header
    assert "wall time of the run: **10.0 min** (11 jobs, 2 at a time" in header
    assert "Not in this reproduce.json" not in text
    assert "| polynomial x³ (unscaled) | 1 | 5001.0 | n/a |" in text  # a NaN survives as NaN
    assert "## Conversion of SmolLM2 (recipes/convert.py)" in text
    assert sorted(p.name for p in out.glob("*.png")) == sorted(PLOT_FILES.values())  # re-drawn from render_data
    # reproduce.json is read, not rewritten
    assert "render_data" in json.loads((out / "reproduce.json").read_text())


def test_render_only_older_reproduce_json_renders_what_it_holds(committed_run, monkeypatch):
    out, run_text = committed_run["out"], committed_run["text"]
    raw = json.loads((out / "reproduce.json").read_text())
    del raw["render_data"]  # a file written before reproduce.json held the runs' summaries
    (out / "reproduce.json").write_text(json.dumps(raw))
    (out / PLOT_FILES[2]).write_bytes(b"png")  # claim 2's plot is committed, claims 3 and 4's are not
    drawn = {}

    def fake_plot_all(claims, analysis, data, out_dir):
        drawn.update(analysis=sorted(analysis), data=data)
        return {k: [PLOT_FILES[k]] for k in (1, 5) if f"claim{k}" in analysis}

    monkeypatch.setattr(R, "plot_all", fake_plot_all)
    md = committed_run["tmp"] / "older.md"
    assert R.main(["--out", str(out), "--md", str(md), "--render-only"]) == 0
    text = md.read_text()
    assert drawn == {"analysis": ["claim1", "claim5"], "data": {}}  # only the plots the analysis alone draws
    # what the analyses hold is rendered exactly as the run did ...
    run_lines, lines = set(run_text.splitlines()), set(text.splitlines())
    for line in run_lines:
        if line.startswith(("| polynomial x³ (unscaled) | 1 |", "| 1. ", "| 2. ", "| 3. ", "| 4. ", "| 5. ",
                            "| smollm2 |", "| softmax vs ", "| deep residual", "daGPAM's trained λ")):
            assert line in lines, line
    # ... and what they do not hold is named, not made up
    assert "| softmax | — | 2 | 5000.5 ± 0.707 | 105.0 ± 7.07 | — | 2/2 | — |" in lines
    assert "| daGPAM (λ_init 0.1, trained) | — | 2 | — | 110.0 ± 7.07 | — | — | — |" in lines
    assert "Per hidden state, and the query-weight gradient norm aside: not in this reproduce.json." in lines
    assert "**Not in this reproduce.json, so not shown**" in text
    assert "the data of the plots of claims 2, 3 and 4 (the committed PNGs are linked as they are)" in text
    assert f"![{PLOT_FILES[2]}](out/{PLOT_FILES[2]})" in lines
    assert any(line.startswith("*(Drawn by the run that wrote reproduce.json") for line in lines)
    assert f"*(Plot not available: reproduce.json lacks the training-loss curves of the SmolLM2 runs and " \
           f"`{PLOT_FILES[4]}` is not in {out}.)*" in lines
    assert "![claim3_loss_curves.png]" not in text


def test_render_only_refuses_a_missing_or_older_reproduce_json(tmp_path, committed_run, capsys):
    md = tmp_path / "never.md"
    assert R.main(["--out", str(tmp_path / "nothing"), "--md", str(md), "--render-only"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / "nothing" / "reproduce.json") in err
    assert "does not exist" in err and "without --render-only" in err
    out = committed_run["out"]
    raw = json.loads((out / "reproduce.json").read_text())
    for broken, says in ((lambda r: r.pop("thresholds"), "lacks thresholds"),
                         (lambda r: r["analysis"]["claim2"].pop("residual"), "lacks analysis.claim2.residual"),
                         (lambda r: (r["meta"].pop("machine"), r["meta"].pop("jobs")), "lacks meta.machine, meta.jobs"),
                         (lambda r: r["scale"].pop("probe_tokens"), "its scale does not match"),
                         (lambda r: r["thresholds"].update(logit_tol=1e-4), "logit_tol 0.0001 (now 1e-05)")):
        r = json.loads(json.dumps(raw))
        broken(r)
        (out / "reproduce.json").write_text(json.dumps(r))
        assert R.main(["--out", str(out), "--md", str(md), "--render-only"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and str(out / "reproduce.json") in err and says in err, err
        assert "without --render-only" in err
    (out / "reproduce.json").write_text("{not json")
    assert R.main(["--out", str(out), "--md", str(md), "--render-only"]) == 2
    assert "not readable JSON" in capsys.readouterr().err
    assert R.main(["--out", str(out), "--render-only", "--quick", "--seeds", "0"]) == 2
    assert "drop --seeds, --quick" in capsys.readouterr().err
    assert not md.exists()


def test_restore_analysis_and_render_data():
    raw = files.strict_json({"t": float("nan"), "gap": float("inf"), "vals": [1.0, float("nan")],
                    "dagpam_lambdas": [None, {"mean": 0.1}], "base": None, "rows": [{"steps": None, "x": None}]})
    back = record.restore_analysis(raw)
    assert math.isnan(back["t"]) and back["gap"] == math.inf and math.isnan(back["vals"][1])
    assert back["dagpam_lambdas"] == [None, {"mean": 0.1}] and back["base"] is None
    assert back["rows"][0]["steps"] is None and math.isnan(back["rows"][0]["x"])
    d = files.strict_json(record.render_data({"scratch": {"softmax": {0: {"final_ppl": float("nan"), "probe": None}, 1: None}},
                                "claim4": {"sdpa": None, "runs": {2: {"losses": [(1, float("inf"))]}}},
                                "conversions": ["not stored"]}))
    back = record.restore_render_data(json.loads(json.dumps(d)))
    assert set(back) == {"scratch", "claim4"} and back["scratch"]["softmax"][1] is None
    assert math.isnan(back["scratch"]["softmax"][0]["final_ppl"]) and back["scratch"]["softmax"][0]["probe"] is None
    assert back["claim4"]["runs"][2]["losses"] == [[1, math.inf]] and back["claim4"]["sdpa"] is None


def test_why_a_run_did_not_learn_is_rendered():
    """A mechanism with a run that did not learn gets its validation curve against the bigram and the attention
    scale at initialisation of every mechanism; without failures there is no such paragraph."""
    from reproduction.sections import render_validity

    run = {"seed": 0, "final_ppl": 11.0, "evals": [[0, 250.0], [500, 12.4], [1000, 11.0]]}
    scratch = {"softmax": {"0": {**run, "final_ppl": 5.0, "evals": [[1000, 5.0]]}}, "poly_scaled": {"0": run}}
    v = {"bigram_ppl": 12.0, "limit": 6.0, "learned": {"softmax": {"0": True}, "poly_scaled": {"0": False}},
         "softmax_learned": True, "not_learned": ["poly_scaled seed 0"]}
    init = {"seeds": [0], "batch": 8, "mechs": {"softmax": {"attn_rms_ratio": 1.0, "qk_grad_ratio": 1.0},
                                                 "poly_scaled": {"attn_rms_ratio": 0.0024, "qk_grad_ratio": 0.09}}}
    md = render_validity(v, None, scratch, init)
    assert "**Why.**" in md and "500: 12.40 (1.03×); 1000: 11.00 (0.917×)" in md
    assert "| polynomial x³/√N | 0.0024 | 0.09 |" in md and "| softmax | 1.00 | 1.00 |" in md
    fine = {**v, "learned": {"softmax": {"0": True}}, "not_learned": []}
    assert "**Why.**" not in render_validity(fine, None, {"softmax": scratch["softmax"]}, init)


def test_attention_scale_at_init_measures_every_mechanism():
    from reproduction.measurements import attention_scale_at_init

    got = attention_scale_at_init(config.scale_named("quick"), [0], batch=2)
    assert set(got["mechs"]) == set(config.MECHS) and got["seeds"] == [0]
    assert got["mechs"]["softmax"]["attn_rms_ratio"] == 1.0
    # daGPAM at its lambda_init is near softmax; x^3/sqrt(N) starts far below it (SCIENCE.md claim 3's runs)
    assert got["mechs"]["poly_scaled"]["attn_rms_ratio"] < 0.1 < got["mechs"]["dagpam"]["attn_rms_ratio"]
