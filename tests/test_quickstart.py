"""quickstart.py --tiny end to end (synthetic data -> N -> K -> S -> matrix, selection, report)."""
import json

import pytest

from cli import quickstart as Q
from helpers import torch_threads



def test_tiny_quickstart_end_to_end(tmp_path, capsys):
    out, data = tmp_path / "runs", tmp_path / "data"
    with torch_threads(1):
        report = Q.main(["--tiny", "--out", str(out), "--data-root", str(data)])
    captured = capsys.readouterr()
    printed = captured.out
    # the overall bar counts the quickstart's 7 stages; each training's bar its optimiser steps
    assert "quickstart: 7/7 stages" in captured.err and "NKS: 1/1 steps" in captured.err
    assert "epoch 1/1000" not in captured.err
    for name in ("N.pth.tar", "NK.pth.tar", "NKS.pth.tar", "matrix.json", "inference.json", "report.json",
                 "REPORT.md"):
        assert (out / name).is_file(), name
    assert (data / "meta.json").is_file() and report["data"] == "generated"
    text = (out / "REPORT.md").read_text()
    assert "Synthetic stand-in data" in text and "forgetting" in text and "BWT" in text
    assert "selection accuracy" in text and "Latency" in text and "**total**" in text
    saved = json.loads((out / "report.json").read_text())
    assert saved["synthetic_data"] is True
    assert set(saved["selection_accuracy"]) == {"N", "K", "S"}
    assert all(0.0 <= v <= 1.0 for v in saved["selection_accuracy"].values())
    assert [len(r) for r in saved["matrix"]["rmse"]] == [1, 2, 3]
    assert len(saved["summary"]["rmse"]["forgetting"]) == 2
    assert set(saved["timings"]["steps"]) >= {"data", "train N", "train NK", "train NKS"}
    assert saved["latency"]["overall_median_ms"] > 0
    assert "## Uncertainty" in text and [len(r) for r in saved["uncertainty_matrix"]["ause_rmse"]] == [1, 2, 3]
    assert "quickstart finished" in printed

    # a second run reuses the data; a set rendered too small for the settings is refused
    s = Q.settings_of(Q.build_parser().parse_args(["--tiny"]))
    assert Q.data_fits(data, s)[0]
    s_full = Q.settings_of(Q.build_parser().parse_args(["--scale", "0.5"]))
    ok, why = Q.data_fits(data, s_full)
    assert not ok and "scale" in why


def test_settings_and_errors():
    s = Q.settings_of(Q.build_parser().parse_args([]))
    assert s["encoder"] == "resnet34" and s["steps"] == [96, 48, 48] and s["latency_size"] == "228x304"
    with pytest.raises(SystemExit):
        Q.settings_of(Q.build_parser().parse_args(["--steps", "1,2"]))
