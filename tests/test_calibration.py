"""Calibrations: fitting, the forms a user can give, where checkpoints record them, `thinkrm calibrate`."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from thinkrm.calibration import (
    Calibration,
    calibrate_traces,
    fit_calibration,
    parse_calibration,
    read_calibration,
)
from thinkrm.io import InputError, write_json
from thinkrm.scoring import load_scorer


def test_fit_centres_and_scales_robustly():
    cal = fit_calibration([1.0, 2.0, 3.0, 4.0, 5.0, 1000.0], reference="test")
    assert cal.center == 3.5 and cal.n == 6 and cal.reference == "test"
    assert 1.0 < cal.scale < 5.0  # one outlier does not inflate the scale
    assert cal.apply(3.5) == 0.0
    with pytest.raises(ValueError, match="at least 4"):
        fit_calibration([1.0, 2.0])
    with pytest.raises(ValueError, match="same"):
        fit_calibration([2.0] * 8)
    with pytest.raises(ValueError, match="finite"):
        fit_calibration([1.0, 2.0, 3.0, float("nan")])


def test_parse_every_form_and_reject_bad_ones(tmp_path):
    assert parse_calibration(None) is None
    assert parse_calibration("-40,10") == Calibration(-40.0, 10.0, reference="given")
    assert parse_calibration((-40, 10)) == parse_calibration("-40,10")
    assert parse_calibration({"center": 1, "scale": 2}).scale == 2.0
    write_json(tmp_path / "thinkrm.json", {"input_format": "plain", "calibration": {"center": 3, "scale": 4}})
    assert parse_calibration(str(tmp_path)).center == 3.0  # a checkpoint directory
    assert parse_calibration(str(tmp_path / "thinkrm.json")).scale == 4.0  # or the file itself
    with pytest.raises(ValueError, match="scale must be a finite number > 0"):
        parse_calibration("1,0")
    with pytest.raises(ValueError, match="no such file"):
        parse_calibration("not,a,calibration")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="records no calibration"):
        parse_calibration(str(tmp_path / "plain"))
    write_json(tmp_path / "bad.json", {"calibration": {"center": "x"}})
    with pytest.raises(InputError, match="bad.json.*calibration"):
        read_calibration(tmp_path / "bad.json")


def test_load_scorer_takes_a_calibration_for_any_backend():
    assert load_scorer("length").calibration is None
    assert load_scorer("length", calibration="-40,10").calibration.center == -40.0


def _candidates(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_calibrate_traces_uses_only_correct_rows(tmp_path):
    rows = [{"prompt": "q", "reasoning": "x" * n, "correct": n % 2 == 0} for n in range(1, 21)]
    cal = calibrate_traces(_candidates(tmp_path / "c.jsonl", rows), "length")
    assert cal.n == 10 and cal.center == -11.0  # even lengths 2..20: median 11
    with pytest.raises(InputError, match="at least 4"):
        calibrate_traces(_candidates(tmp_path / "few.jsonl", rows[:4]), "length")


def test_cli_calibrate_writes_a_file_the_reward_reads(tmp_path):
    from thinkrm.cli import app
    from thinkrm.rewards import ThinkingReward

    rows = [{"prompt": "q", "reasoning": "x" * n} for n in range(1, 9)]
    out = tmp_path / "cal.json"
    res = CliRunner().invoke(app, ["calibrate", str(_candidates(tmp_path / "t.jsonl", rows)), "--scorer",
                                   "length", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "centre -4.5" in res.output
    assert ThinkingReward("length", calibration=str(out)).calibration.center == -4.5
    bad = CliRunner().invoke(app, ["calibrate", str(tmp_path / "missing.jsonl"), "--scorer", "length"])
    assert bad.exit_code == 2 and "file not found" in bad.output
