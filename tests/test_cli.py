"""The `attnswap` command (fast parts; the demo itself runs in tests/integration)."""

from __future__ import annotations

import json

from hf_attnswap.cli import main


def test_list_prints_mechanisms_and_defaults(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "dagpam  (adds parameters)" in out and "lambda_init = 0.0" in out and "degree = 3" in out


def test_list_json(capsys):
    assert main(["list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["softmax"]["options"] == {"temperature": 1.0, "backend": "auto"}


def test_demo_on_a_missing_path_is_a_clear_error(tmp_path, capsys):
    assert main(["demo", "--model", str(tmp_path / "nope")]) == 2
    assert "attnswap: error:" in capsys.readouterr().err
