"""The ``--attn`` spec parser (hf_attnswap.spec): ``name`` or ``name:key=value:...``, several comma-separated,
options validated by the registry before any model is loaded."""

from __future__ import annotations

import pytest

import hf_attnswap
from hf_attnswap.errors import OptionError, UnknownMechanismError
from hf_attnswap.spec import NATIVE, AttnSpec, parse_attn_specs


def test_the_public_api_exports_the_parser():
    assert hf_attnswap.parse_attn_specs is parse_attn_specs and hf_attnswap.AttnSpec is AttnSpec
    assert {"AttnSpec", "parse_attn_specs"} <= set(hf_attnswap.__all__)


def test_several_specs_with_json_values():
    specs = parse_attn_specs(' sdpa, softmax ,dagpam:lambda_init=0.1:tied_lambda=false,polynomial:degree=3,'
                             'polynomial:length_scale="none",')
    assert [s.name for s in specs] == ["sdpa", "softmax", "dagpam", "polynomial", "polynomial"]
    assert specs[2].options == {"lambda_init": 0.1, "tied_lambda": False}
    assert specs[3].options == {"degree": 3} and type(specs[3].options["degree"]) is int
    assert specs[4].options == {"length_scale": "none"}
    assert specs[2].label == "dagpam:lambda_init=0.1:tied_lambda=false"
    assert specs[4].label == 'polynomial:length_scale="none"'


def test_a_value_that_is_not_json_is_kept_as_text():
    [spec] = parse_attn_specs("polynomial:length_scale=none")
    assert spec.options == {"length_scale": "none"}


def test_load_kwargs():
    assert AttnSpec("sdpa").load_kwargs() == {"attn_implementation": "sdpa"}
    spec = AttnSpec("dagpam", {"lambda_init": 0.1})
    kwargs = spec.load_kwargs()
    assert kwargs == {"attn_implementation": "dagpam", "attnswap": {"lambda_init": 0.1}}
    kwargs["attnswap"]["lambda_init"] = 9.0
    assert spec.options == {"lambda_init": 0.1}  # a copy


def test_native_attention_takes_no_options():
    assert NATIVE == ("sdpa", "eager")
    assert [s.name for s in parse_attn_specs("eager,sdpa")] == ["eager", "sdpa"]
    with pytest.raises(OptionError, match=r"^'sdpa' is Transformers' own attention and takes no options; "
                                          r"got \{'dropout': 0.1\}\.$"):
        parse_attn_specs("sdpa:dropout=0.1")


def test_comma_between_options_says_to_use_a_colon():
    with pytest.raises(OptionError, match=r"separated by ':'.*Did you mean dagpam:lambda_init=0.1:tied_lambda=false"):
        parse_attn_specs("dagpam:lambda_init=0.1,tied_lambda=false")
    with pytest.raises(OptionError, match=r"^--attn: 'degree=3' is not an attention name\. .*separates mechanisms\.$"):
        parse_attn_specs("degree=3")  # nothing before it: no suggestion


def test_option_without_a_value():
    with pytest.raises(OptionError, match=r"^attention spec 'dagpam:lambda_init': expected key=value after ':', got "
                                          r"'lambda_init' \(e\.g\. dagpam:lambda_init=0\.1\)\.$"):
        parse_attn_specs("dagpam:lambda_init")


@pytest.mark.parametrize("text", ["", " ", ",", " , ,"])
def test_no_attention_given(text):
    with pytest.raises(OptionError, match=r"^no attention given: pass e\.g\. --attn softmax,polynomial,dagpam$"):
        parse_attn_specs(text)


def test_unknown_mechanism_and_bad_options_fail_while_parsing():
    with pytest.raises(UnknownMechanismError, match="Did you mean 'softmax'"):
        parse_attn_specs("sdpa,softmx")
    with pytest.raises(OptionError, match="'lambda_init' must be >= 0"):
        parse_attn_specs("dagpam:lambda_init=-1")
