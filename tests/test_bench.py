"""The benchmarks run end to end (smoke configuration) and report what they promise. Their timings
are not asserted: speed goals live in the benchmark reports, not in timed tests."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
import bench_inference as B
from models import hardware


def run(script, *args, env=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
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
    assert_rows_follow_capabilities(report, printed)
    assert report["machine"]["bf16_native"] == hardware.bf16_native()  # same environment as here
    assert "ONNX Runtime fp32" in variants  # onnxruntime is pinned in requirements.txt
    for d in acc["domains"].values():  # the runtime computes the same function in float32
        assert d["rows"]["ONNX Runtime fp32"]["rel_rmse_vs_fp32_output"] < 1e-5


def assert_rows_follow_capabilities(report, printed):
    """Every variant either ran or is listed as skipped with its reason, as the machine decides;
    the title names the CPU and its capabilities."""
    from models.runtimes import available
    machine = report["machine"]
    assert machine["cpu"] in printed and "AVX2" in printed and "AVX512-BF16" in printed
    res = report["variants"][0]
    bf16 = machine["bf16_native"]
    for name, opts in B.VARIANTS.items():
        ran, skipped = name in res["rows"], res["skipped"].get(name)
        assert ran != bool(skipped), name
        if opts.get("precision") == "bf16":
            assert ran == bf16 and (bf16 or "no native bf16" in skipped), name
        if opts.get("backend", "torch") != "torch" and not available(opts["backend"]):
            assert "not installed" in skipped, name
        if skipped:
            assert f"Skipped: {name}: {skipped}" in printed
    assert machine["default_precision"] == ("bfloat16" if bf16 else "float32")


def test_inference_benchmark_runs_on_the_avx2_onednn_path(tmp_path):
    """The issue's AVX2-only crash: oneDNN limited to its AVX2 code, every variant of the table
    either runs or is skipped with its reason (bf16: no native kernels), nothing raises."""
    import platform
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("ONEDNN_MAX_CPU_ISA=AVX2 is an x86 setting")
    out = tmp_path / "avx2.json"
    printed = run("bench_inference.py", "--sizes", "48x64", "--variants", "all", "--no-scaling",
                  "--repeats", "1", "--warmup", "0", "--encoder", "resnet18", "--threads", "1",
                  "--out", str(out), env={"ONEDNN_MAX_CPU_ISA": "AVX2"})
    report = json.loads(out.read_text())
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in printed
    if report["machine"]["capabilities"]["onednn_bf16_kernels"]:
        pytest.skip("this torch's oneDNN ignores ONEDNN_MAX_CPU_ISA")
    assert not report["machine"]["bf16_native"] and report["machine"]["default_precision"] == "float32"
    assert_rows_follow_capabilities(report, printed)


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
    assert hardware.cpu_model() in report["markdown"] and "AVX512-BF16" in report["markdown"]
    assert ("ours bf16 autocast" in rows) == (hardware.bf16_native() and "ours bf16 autocast" not in report["skipped"])
