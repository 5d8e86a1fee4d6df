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
        backend = opts.get("backend", "torch")
        if backend != "torch" and not available(backend):  # the runtime is asked first
            assert "not installed" in skipped, name
        elif opts.get("precision") == "bf16":
            assert ran == bf16 and (bf16 or "no native bf16" in skipped), name
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


CPU_KINDS = {  # /proc/cpuinfo flags of the three kinds this project runs on (the relevant ones)
    "zen3 (AVX2 only)": {"avx2", "fma"},
    "zen4 (AVX512-BF16)": {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"},
    "sapphire rapids (AMX)": {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16",
                              "amx_tile", "amx_bf16", "amx_int8"},
    "AMX without AVX512-BF16": {"avx2", "fma", "avx512f", "amx_tile", "amx_bf16"},
}


@pytest.mark.parametrize("kind", CPU_KINDS)
@pytest.mark.parametrize("openvino", [True, False], ids=["openvino", "no-openvino"])
def test_rows_follow_forced_capabilities(monkeypatch, kind, openvino):
    """Each CPU kind's branch runs on every machine: its flags are forced (oneDNN accepts bf16
    wherever AVX-512 is there), and so is OpenVINO's presence. Native bf16 (AVX512-BF16 or AMX)
    runs the bf16 rows; an absent runtime skips its rows with the pip command, whatever the CPU."""
    import argparse
    import torch
    flags = frozenset(CPU_KINDS[kind])
    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    monkeypatch.setattr(hardware, "bf16_kernels", lambda: "avx512f" in flags)
    monkeypatch.setattr(B, "runtime_available", lambda name: openvino or name != "openvino")
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    assert hardware.bf16_native() == native and hardware.lowp_supported(torch.bfloat16, "cpu") == native
    caps = hardware.capabilities()
    assert caps["amx"] == ("amx_tile" in flags) and caps["avx512_bf16"] == ("avx512_bf16" in flags)
    line = hardware.capability_line()
    assert f"AMX {'yes' if 'amx_tile' in flags else 'no'}" in line and ("bf16 native" in line) == native
    args = argparse.Namespace(device=torch.device("cpu"), bf16=False, fp16=False)
    for name, opts in B.VARIANTS.items():
        reason = B.skip_reason(name, args)
        if opts.get("backend") == "openvino" and not openvino:
            assert reason == "openvino is not installed (pip install -r requirements.txt)", name
        elif opts.get("precision") == "bf16":
            assert (reason is None) == native, (name, reason)
            assert native or "no native bf16" in reason
        elif opts.get("precision") != "fp16":
            assert reason is None, (name, reason)


def _seed_cells(values_by_precision, selection=None):
    """Cells of bench_seeds.verdict: every figure of a seed set to its precision's value for that seed."""
    import bench_seeds as S
    cells = {}
    for prec, values in values_by_precision.items():
        cells[prec] = {}
        for seed, v in enumerate(values):
            fig = {name: v for name in S.FIGURES}
            fig["selection crops"] = fig["selection frames"] = (selection or {}).get((prec, seed), 1.0)
            cells[prec][seed] = fig
    return cells


def test_seed_table_decides_by_fp32s_spread_and_selection():
    """bench_seeds' rule (issue 38): a candidate's mean inside fp32's seed range on every figure, and
    selection >= 99 % on every seed (or no worse than fp32's own worst)."""
    import bench_seeds as S
    assert S.verdict(_seed_cells({"fp32": [1.0, 1.2, 1.1], "bf16": [1.05, 1.15, 1.1]}), "bf16") == []
    outside = S.verdict(_seed_cells({"fp32": [1.0, 1.2, 1.1], "bf16": [1.3, 1.25, 1.2]}), "bf16")
    assert outside and all("outside fp32's" in w for w in outside) and len(outside) == len(S.FIGURES)
    one_seed_misses = _seed_cells({"fp32": [1.0, 1.2, 1.1], "bf16": [1.1, 1.1, 1.1]}, {("bf16", 2): 0.975})
    why = S.verdict(one_seed_misses, "bf16")
    assert len(why) == 2 and all(w.startswith("seed 2:") for w in why)
    # where fp32 itself chose 97.5 % on some seed, the bar is fp32's worst, not 99 %
    both_miss = _seed_cells({"fp32": [1.0, 1.2, 1.1], "bf16": [1.1, 1.1, 1.1]},
                            {("fp32", 0): 0.975, ("bf16", 2): 0.975})
    assert S.verdict(both_miss, "bf16") == []
    assert S.verdict(_seed_cells({"fp32": [1.0]}), "bf16") == ["no runs of fp32 or bf16"]


def test_seed_table_one_sided_rule_passes_better_and_fails_worse():
    import bench_seeds as S
    better = _seed_cells({"fp32": [1.0, 1.2, 1.1], "bf16": [0.8, 0.8, 0.8]})
    strict, one_sided = S.verdict(better, "bf16"), S.verdict(better, "bf16", one_sided=True)
    # errors lower than every fp32 seed fail only the strict rule; delta1 and coverage read the other way
    assert strict and len(strict) == len(S.FIGURES)
    assert sorted(w.split(":")[0] for w in one_sided) == sorted(n for n in S.FIGURES if n.startswith("delta1"))
    assert S.badness("coverage90 N", 0.88) == pytest.approx(0.02) and S.badness("delta1 K", 0.7) == -0.7
