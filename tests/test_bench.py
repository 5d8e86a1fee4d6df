"""The benchmarks run end to end (smoke configuration) and report what they promise. Their timings
are not asserted: speed goals live in the benchmark reports, not in timed tests."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(script, *args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_inference_benchmark_quick(synthetic_root, tmp_path):
    out = tmp_path / "inference.json"
    printed = run("bench_inference.py", "--quick", "--accuracy", "--data-root", str(synthetic_root),
                  "--out", str(out), "--threads", "1")
    report = json.loads(out.read_text())
    variants = report["variants"][0]["rows"]
    assert any(name.startswith("authors") for name in variants) and any(name.startswith("default") for name in variants)
    for row in variants.values():
        assert row["median_s"] > 0 and row["speedup"] > 0
    assert [r["domains"] for r in report["scaling"][0]["by_domains"]] == [1, 3]
    acc = report["accuracy"]
    assert set(acc["domains"]) == {"N", "K", "S"}
    for d in acc["domains"].values():  # the fp32 reference agrees with itself exactly
        fp32 = d["rows"]["fp32"]
        assert fp32["rmse_change_pct"] == 0 and fp32["rel_rmse_vs_fp32_output"] == 0
    assert isinstance(acc["default_within_tolerance"], bool)
    assert "| variant |" in printed and "accuracy condition" in printed


def test_training_benchmark_quick(synthetic_root, tmp_path):
    out = tmp_path / "train.json"
    printed = run("bench_train.py", "--quick", "--loader", "--data-root", str(synthetic_root),
                  "--out", str(out), "--threads", "1", "--loader-workers", "0")
    report = json.loads(out.read_text())
    rows = report["steps"][0]["rows"]
    assert len(rows) >= 2 and all(r["images_per_s"] > 0 for r in rows.values())
    assert report["steps"][0]["engine_default"] in rows  # the engine's own setting is measured
    loader = report["loader"]
    assert sorted(r["domain"] for r in loader.values()) == ["K", "N", "S"]
    assert all(r["images_per_s"] > 0 and r["workers"] == 0 for r in loader.values())
    assert "| step |" in printed and "Data loader" in printed
