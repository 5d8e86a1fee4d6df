"""One command on a fresh clone: synthetic data -> lifelong N -> K -> S on the CPU -> evaluation -> report.

    python quickstart.py            # writes runs/quickstart/REPORT.md with its own measured times
    python quickstart.py --tiny     # CI-sized smoke run (well under 2 min)

Steps (an overall progress bar, plus each script's own bars):

1. generate the synthetic N-, K-, S-like stand-in domains with synthetic.py into ``--data-root``
   (default datasets/synthetic) unless a suitable set is already there (meta.json: all three
   domains, rendered at a scale >= the training scale, enough images);
2. learn N, then K, then S with the training engine (engine.run.train_stage, as train_N.py /
   train_NK.py / train_NKS.py do) at CPU settings, checkpoints into ``--out`` (default runs/quickstart);
3. evaluate every stage on every domain learned so far (test.py --matrix): the domain x stage
   matrix with forgetting and backward transfer;
4. evaluate without the domain prior (test_inference.py): selection accuracy per domain, metrics
   with the selected heads, and the latency of selection + one head at 228x304 on this machine;
5. write ``REPORT.md`` and ``report.json`` into ``--out``.

The data are SYNTHETIC stand-ins, not NYU-v2 / KITTI / ScanNet, and the CPU settings (half-size
inputs, a few dozen steps, no ImageNet weights unless --pretrained is given) are far from the
paper's: the figures show that the pipeline works end to end and how lifelong learning behaves,
not the paper's accuracy.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

# OpenMP threads that spin while waiting make a 2-thread CPU run many times slower as soon as another
# job shares the cores (measured: docs/BENCHMARKS.md#figures-that-were-in-the-codes-comments);
# sleeping waiters cost almost nothing on an idle machine. Only effective when torch is not imported
# yet (i.e. when run as a script); an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from cli import test as evaluate_cli  # noqa: E402
from cli import test_inference as inference_cli  # noqa: E402
from base.errors import InputError  # noqa: E402
from base.safeio import check_folder, check_write, json_report, made_by, record_made, write_json  # noqa: E402
from evaluation.evaluate import EvalOptions  # noqa: E402
from evaluation.matrix import DEFAULT_MATRIX_METRICS, evaluate_matrix  # noqa: E402
from evaluation.selection import SelectionOptions, evaluate_selection  # noqa: E402
from models.hardware import capability_line  # noqa: E402
from models.resnet import ENCODERS  # noqa: E402
from cli.options import add_device_argument, add_training_precision_argument, help_of, parse_size  # noqa: E402
from engine.processes import resolve_device  # noqa: E402
from engine.options import StageOptions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]  # the repository root

# CPU settings of the full run and of the CI-sized --tiny run. How long the full run takes depends
# on the CPU (float32 training: AVX-512 about twice as fast as AVX2); each run prints and reports
# its own measured times, and the README gives the ones measured, with the CPU of each.
FULL = dict(encoder="resnet34", scale=0.5, data_scale=0.5, n_train=400, n_test=40, batch_size=8,
            steps="96,48,48", lr=3e-4, val_images=8, proto_images=100, replay_size=100,
            eval_images=40, latency_runs=20, warmup=3, latency_size="228x304", workers=0,
            data_root="datasets/synthetic", out="runs/quickstart")
TINY = dict(encoder="resnet18", scale=0.25, data_scale=0.25, n_train=6, n_test=2, batch_size=2,
            steps="1,1,1", lr=3e-4, val_images=0, proto_images=2, replay_size=4,
            eval_images=2, latency_runs=2, warmup=1, latency_size=None, workers=0,
            data_root="datasets/synthetic_tiny", out="runs/quickstart_tiny")
ORDER = "NKS"


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and its finished children (data workers)."""
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def load_average():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


class Clock:
    """Wall and CPU seconds of each named step."""

    def __init__(self):
        self.steps = {}
        self.t0, self.c0 = time.perf_counter(), cpu_seconds()

    def run(self, name, fn, *a, **kw):
        t, c = time.perf_counter(), cpu_seconds()
        result = fn(*a, **kw)
        self.steps[name] = {"wall_s": round(time.perf_counter() - t, 1), "cpu_s": round(cpu_seconds() - c, 1)}
        return result

    def total(self):
        return {"wall_s": round(time.perf_counter() - self.t0, 1), "cpu_s": round(cpu_seconds() - self.c0, 1)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Fresh-clone demo: generate synthetic N/K/S stand-in data, learn N -> K -> S on the CPU, "
                    "evaluate (domain x stage matrix with forgetting, head selection, latency) and write "
                    "REPORT.md. Synthetic data: the figures demonstrate the pipeline, not the paper.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Full run settings: " + json.dumps(FULL) + "\n--tiny settings: " + json.dumps(TINY))
    p.add_argument("--tiny", action="store_true",
                   help="CI-sized run: resnet18, scale 0.25, a handful of images, 1 step per stage")
    p.add_argument("--out", default=None,
                   help="folder of checkpoints, evaluation JSONs and REPORT.md (default runs/quickstart, "
                        "runs/quickstart_tiny with --tiny)")
    p.add_argument("--data-root", default=None,
                   help="synthetic data root, generated if missing (default datasets/synthetic, "
                        "datasets/synthetic_tiny with --tiny)")
    p.add_argument("--regenerate", action="store_true",
                   help="regenerate the synthetic data even if a suitable set exists (overwrites it; "
                        "without it a --data-root holding a dataset synthetic.py did not make, a real one, "
                        "stops the command)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace checkpoints and reports in --out that an earlier quickstart did not make "
                        "(e.g. your own runs/N.pth.tar); without it they stop the command before any "
                        "training")
    p.add_argument("--steps", default=None,
                   help="optimiser steps of the N, K and S stages, comma-separated (default 96,48,48; "
                        "--tiny 1,1,1)")
    p.add_argument("--scale", type=float, default=None,
                   help=help_of(StageOptions, "scale") + "; of training and evaluation (default 0.5: 114x152 "
                        "NYU/ScanNet, 160x240 KITTI; --tiny 0.25)")
    p.add_argument("--encoder", default=None, choices=sorted(ENCODERS),
                   help=help_of(StageOptions, "encoder") + " (default resnet34, the paper's; --tiny resnet18)")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default 8; --tiny 2)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice, one per core)")
    p.add_argument("--pretrained", default=None,
                   help=help_of(StageOptions, "pretrained") + " (nothing is downloaded)")
    p.add_argument("--latency-size", default=None,
                   help="HxW at which the per-image latency is measured (default 228x304, the paper's NYU "
                        "input size; --tiny: each domain's test input size)")
    add_device_argument(p, help=help_of(StageOptions, "device"))
    add_training_precision_argument(p)
    p.add_argument("--keep-resume", action="store_true",
                   help="keep each finished stage's resume state <out>/<stage>/last.pth.tar (deleted by "
                        "default: weights + optimiser, ~260 MB each)")
    p.add_argument("--seed", type=int, default=0,
                   help=help_of(StageOptions, "seed") + "; also of the synthetic data")
    return p


def settings_of(args) -> dict:
    s = dict(TINY if args.tiny else FULL)
    for key in ("out", "data_root", "steps", "scale", "encoder", "batch_size", "latency_size"):
        value = getattr(args, key)
        if value is not None:
            s[key] = value
    steps = [int(v) for v in str(s["steps"]).split(",") if v.strip()]
    if len(steps) != len(ORDER) or min(steps) < 1:
        raise SystemExit(f"error: --steps {s['steps']!r}: expected {len(ORDER)} positive integers, e.g. 40,25,25")
    s["steps"] = steps
    s["data_scale"] = max(s["data_scale"], s["scale"])
    return s


def data_fits(root: Path, s: dict):
    """(True, '') if root holds a synthetic set usable with settings s, else (False, why)."""
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        return False, f"{meta_path} not found"
    try:
        data_meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return False, f"{meta_path} is unreadable ({e})"
    doms = data_meta.get("domains") or {}
    need = {"nyu", "kitti", "scannet"}
    if not need <= set(doms):
        return False, f"{meta_path} lists domains {sorted(doms)}, need {sorted(need)}"
    if float(data_meta.get("scale", 1.0)) + 1e-9 < s["scale"]:
        return False, f"rendered at scale {data_meta.get('scale')}, smaller than the training scale {s['scale']}"
    min_train = s["batch_size"] + s["val_images"]
    for name in need:
        counts = doms[name].get("counts", {})
        if counts.get("train", 0) < min_train or counts.get("test", 0) < 1 or counts.get("replay", 0) < s["batch_size"]:
            return False, f"{name} has too few images ({counts}) for these settings"
    return True, ""


def make_data(root: Path, s: dict, args, say) -> str:
    ok, why = data_fits(root, s)
    if ok and not args.regenerate:
        say(f"using the synthetic data in {root} (meta.json fits these settings)")
        return "reused"
    if root.exists() and any(root.iterdir()) and not args.regenerate and (root / "meta.json").is_file():
        raise SystemExit(f"error: {root} holds a data set that does not fit the quickstart settings ({why}); "
                         f"pass --regenerate to overwrite it, or --data-root another folder")
    say(f"generating synthetic data into {root} ({s['n_train']} train / {s['n_test']} test images per domain, "
        f"scale {s['data_scale']})")
    from data import synthetic
    synthetic.generate(str(root), n_train=s["n_train"], n_test=s["n_test"], seed=args.seed,
                       workers=min(2, os.cpu_count() or 1), replay_size=s["replay_size"], domains=ORDER,
                       scale=s["data_scale"], progress=True, overwrite=args.regenerate)
    return "generated"


def learn_stage(k: int, s: dict, args, out: Path, root: Path) -> str:
    """Stage ``k`` of ORDER at the quickstart's settings (what train_N/NK/NKS.py would run)."""
    from cli import train
    letters = ORDER[:k]
    options = StageOptions(
        order=letters, data_root=str(root), runs_dir=str(out), scale=s["scale"], epochs=1000,
        max_steps=s["steps"][k - 1], batch_size=s["batch_size"], lr=s["lr"], val_images=s["val_images"],
        proto_images=s["proto_images"], replay_size=s["replay_size"], workers=s["workers"],
        device=args.device, precision=args.precision, seed=args.seed,
        overwrite=True)  # a quickstart run retrains its stages (the engine refuses that without it)
    if k == 1:
        options.encoder, options.pretrained = s["encoder"], args.pretrained or None
    path = Path(train.run(options))  # errors: one error line, as train_N/NK/NKS.py print them
    record_made(path, COMMAND)  # a later quickstart into --out may replace it
    resume = path.with_suffix("").with_suffix("") / "last.pth.tar"
    if not args.keep_resume and resume.is_file():
        resume.unlink()  # the stage finished: its resume state (weights + Adam, ~260 MB) is not needed
    return str(path)


COMMAND = "quickstart.py"


def check_outputs(out: Path, root: Path, args) -> None:
    """Before anything is written (base.safeio.check_write): --out's checkpoints and reports are
    replaced only when an earlier quickstart made them (or with --overwrite); --data-root holds no
    dataset synthetic.py did not make (unless --regenerate)."""
    from data import synthetic
    ours = lambda p: made_by(p, COMMAND) or (Path(p).suffix == ".json" and json_report(p))  # noqa: E731
    hint = ("it is not a quickstart's (your own model or file?); choose another --out, or pass --overwrite "
            "to replace it")
    check_folder(out, "--out")
    for k in range(1, len(ORDER) + 1):
        check_write(out / f"{ORDER[:k]}.pth.tar", option="--out", overwrite=args.overwrite, ours=ours, hint=hint)
    for name in ("REPORT.md", "report.json", "matrix.json", "inference.json"):
        check_write(out / name, option="--out", overwrite=args.overwrite, ours=ours, hint=hint)
    if root.exists():
        synthetic.check_out(str(root), list(ORDER), args.regenerate, option="--data-root", flag="--regenerate")


def training_precision(precision: str, device) -> str:
    """What the engine's ``--precision`` resolves to on ``device``: "fp32", "bf16" or "fp16"."""
    from engine.processes import amp_settings
    dtype = amp_settings(precision, torch.device(device))[0]
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def eval_options(s: dict, root: Path) -> EvalOptions:
    """The evaluation settings of both evaluation steps: the first test images, the stage batch."""
    return EvalOptions(data_root=str(root), max_images=s["eval_images"], batch_size=max(1, s["batch_size"]))


def evaluate_stages(s: dict, args, out: Path, root: Path) -> dict:
    """Every stage on every domain learned so far, with uncertainty (what test.py --matrix
    --uncertainty prints and writes: matrix.json, the reliability plots in figures/)."""
    matrix = evaluate_matrix(ORDER, eval_options(s, root), resolve_device(args.device), out, uncertainty=True)
    return evaluate_cli.finish_matrix(matrix, DEFAULT_MATRIX_METRICS, out / "matrix.json", out / "figures", root)


def evaluate_heads(s: dict, args, out: Path, root: Path) -> dict:
    """The final model without the domain prior: selection, both tables and the latency (what
    test_inference.py prints and writes: inference.json)."""
    size = parse_size(s["latency_size"], "--latency-size") if s["latency_size"] else None
    selection = SelectionOptions(latency_runs=s["latency_runs"], warmup=s["warmup"], latency_size=size)
    result = evaluate_selection(out / f"{ORDER}.pth.tar", eval_options(s, root), selection,
                                resolve_device(args.device))
    return inference_cli.finish_selection(result, out / "inference.json", size)


def fmt(v, spec=".4f"):
    return "-" if v is None else format(v, spec)


def uncertainty_section(matrix: dict) -> list[str]:
    """REPORT.md's uncertainty section: what the numbers mean, the final stage's table, AUSE and
    coverage per stage (test.py --matrix --uncertainty), the reliability plots."""
    tables = matrix["tables"]
    if "uncertainty_final" not in tables:
        return []
    lines = ["## Uncertainty (test pixels, domain prior)", "",
             "Each head's log-variance read as a Gaussian of the depth (base/uncertainty.py): spread "
             "= median predicted depth x sqrt(2) x exp(u/2). These test.py figures are on crops: \"calibrated\" "
             "is the one-scale fit of the head's calibration, which each stage fits on whole frames of its "
             "held-out validation rows (never the test split; older heads keep theirs); the intervals users "
             "get on whole frames are measured by bench/bench_uncertainty.py. AUSE/AURG: "
             "sparsification (most uncertain pixels removed first) against the oracle and random removal; "
             "ratio = AUSE / AUSE of random removal. Coverage: fraction of test pixels inside the central "
             "interval.", "", "```", tables["uncertainty_final"], "```", ""]
    for key in ("ause_rmse", "coverage90_raw", "coverage90_calibrated"):
        if key in tables:
            lines += ["```", tables[key], "```", ""]
    calibrated = (matrix.get("uncertainty_matrix") or {}).get("coverage90_calibrated") or []
    if not any(v is not None for row in calibrated for v in row):
        lines += ["No calibration: this run held out no validation rows (--val-images 0), so every head "
                  "keeps scale 1.", ""]
    lines += [f"Reliability plots: {', '.join(f'`{p}`' for p in matrix.get('plots', []))}", ""]
    return lines


def write_report(out: Path, s: dict, args, clock: Clock, matrix: dict, infer: dict, data_state: str,
                 load_start, root: Path) -> dict:
    total = clock.total()
    order = matrix["order"]
    names = {c: n for c, n in zip(order, matrix["domains"])}
    sel = infer["selection"]
    lat = infer.get("latency") or {}
    summary = {m: matrix["summary"][m] for m in matrix["summary"]}
    report = {
        "synthetic_data": True,
        "note": "Synthetic stand-in data (synthetic.py), CPU settings: not the paper's data or results.",
        "settings": {k: v for k, v in s.items()}, "data_root": str(root), "data": data_state,
        "device": matrix["device"], "torch": torch.__version__, "threads": torch.get_num_threads(),
        "training_precision": training_precision(args.precision, matrix["device"]),
        "cpu_count": os.cpu_count(), "platform": platform.platform(), "cpu": capability_line(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_start": load_start, "load_average_end": load_average(),
        "timings": {"steps": clock.steps, "total": total},
        "matrix": matrix["matrix"], "summary": summary, "stage_labels": matrix["stage_labels"],
        "uncertainty_matrix": matrix.get("uncertainty_matrix"),
        "selection_accuracy": sel["accuracy"], "selection_overall": sel["overall_accuracy"],
        "confusion": sel["confusion"],
        "with_prior": {c: {k: infer["prior"][c][k] for k in ("abs_rel", "rmse", "delta1", "count")} for c in infer["prior"]},
        "without_prior": {c: {k: infer["selected"][c][k] for k in ("abs_rel", "rmse", "delta1", "count")}
                          for c in infer["selected"]},
        "latency": lat, "checkpoints": matrix["stages"],
    }
    data_meta = {}
    try:
        data_meta = json.loads((root / "meta.json").read_text())
    except (OSError, json.JSONDecodeError):
        pass
    counts = {n: d.get("counts", {}) for n, d in (data_meta.get("domains") or {}).items()}
    counts_text = "; ".join(f"{n} {c.get('train')} train / {c.get('test')} test / {c.get('replay')} replay"
                            for n, c in counts.items()) or "unknown counts"
    report["data_meta"] = {"scale": data_meta.get("scale"), "counts": counts,
                           "generator": data_meta.get("generator")}
    steps_text = ", ".join(f"{ORDER[:k + 1]} {n}" for k, n in enumerate(s["steps"]))
    lines = [
        "# Lifelong-MonoDepth quickstart report",
        "",
        "> **Synthetic stand-in data.** These numbers come from procedurally rendered N-, K- and S-like "
        "domains (synthetic.py), not from NYU-v2, KITTI or ScanNet, and from a short CPU training run. "
        "They show that the pipeline works end to end and how lifelong learning behaves; they say nothing "
        "about the paper's accuracy.",
        "",
        "## Settings",
        "",
        f"- data: `{root}` ({data_state}; rendered at scale {data_meta.get('scale')}; {counts_text}; "
        f"training holds out {s['val_images']} images per domain for validation)",
        f"- model: {s['encoder']}, {'ImageNet weights ' + args.pretrained if args.pretrained else 'random initialisation'}",
        f"- training: order N -> K -> S, strategy ours (distillation + replay), scale {s['scale']}, batch "
        f"{s['batch_size']}, lr {s['lr']}, steps per stage: {steps_text}, precision "
        f"{report['training_precision']} (--precision {args.precision})",
        f"- evaluation: domain prior and nearest-prototype selection, first {s['eval_images']} test images per "
        f"domain, {matrix['settings']['crop']} crop, {'capped' if matrix['settings']['cap'] else 'no cap'}, "
        f"{matrix['settings']['aggregate']}-averaged",
        f"- machine: {report['cpu']}, {report['cpu_count']} CPU(s), torch {torch.__version__} with {report['threads']} threads, "
        f"device {report['device']}, OMP_WAIT_POLICY={report['omp_wait_policy']}; load average (1, 5, 15 min) at "
        f"start {load_start}, at end {report['load_average_end']}",
        "",
        "## Domain x stage matrix (domain prior)",
        "",
        "Rows: test domain; columns: the model after each stage. Forgetting = final minus best earlier "
        "value for errors (best earlier minus final for delta accuracies): positive = forgot. BWT (backward "
        "transfer, GEM's, sign adjusted): positive = old domains improved.",
        "",
    ]
    for m in ("abs_rel", "rmse", "delta1"):
        if m in matrix["tables"]:
            lines += ["```", matrix["tables"][m], "```", ""]
    lines += uncertainty_section(matrix)
    lines += ["## Head selection without the domain prior", "",
              "| test domain | selection accuracy | AbsRel (selected) | AbsRel (prior) | RMSE (selected) | RMSE (prior) |",
              "|---|---|---|---|---|---|"]
    for c in infer["test_domains"]:
        a, b = infer["selected"][c], infer["prior"][c]
        lines.append(f"| {names[c]} ({c}) | {sel['accuracy'][c]:.3f} | {a['abs_rel']:.4f} | {b['abs_rel']:.4f} "
                     f"| {a['rmse']:.4f} | {b['rmse']:.4f} |")
    lines += ["", f"Overall selection accuracy: {sel['overall_accuracy']:.3f} ({sel['images']} images, "
              f"{infer['selector']} prototypes).", "", "```", infer["tables"]["confusion"], "```", ""]
    if lat:
        size_text = s["latency_size"] or "each domain's test input size"
        lines += [f"## Latency (selection + one head, batch 1, {size_text}, {report['device']}, "
                  f"{report['threads']} threads)", "",
                  "| images of | median ms | p90 ms | frames/s |", "|---|---|---|---|"]
        for c in infer["test_domains"]:
            L = lat[c]
            lines.append(f"| {names[c]} ({c}) | {L['median_ms']:.1f} | {L['p90_ms']:.1f} | {L['fps']:.2f} |")
        lines += ["", f"Median over domains: {lat['overall_median_ms']:.1f} ms ({lat['overall_fps']:.2f} frames/s). "
                  "The machine may be shared: timings are upper bounds.", ""]
    lines += ["## Timings", "", "| step | wall s | CPU s |", "|---|---|---|"]
    for name, t in clock.steps.items():
        lines.append(f"| {name} | {t['wall_s']:.1f} | {t['cpu_s']:.1f} |")
    lines += [f"| **total** | **{total['wall_s']:.1f}** | **{total['cpu_s']:.1f}** |", "",
              "CPU s counts all threads and worker processes; on an idle machine the wall time is roughly "
              "CPU s divided by the cores in use. Other jobs on a shared machine make both larger.", "",
              "## Files", ""]
    lines += [f"- `{p}`" for p in matrix["stages"]]
    lines += [f"- `{out / 'matrix.json'}`, `{out / 'inference.json'}`, `{out / 'report.json'}`", "",
              "Reproduce: `python quickstart.py" + (" --tiny" if args.tiny else "") + "`; evaluate again with "
              f"`python test.py --matrix --checkpoint {matrix['stages'][-1]} --data-root {root}` and "
              f"`python test_inference.py --checkpoint {matrix['stages'][-1]} --data-root {root}`.", ""]
    from base.safeio import atomic_write  # REPORT.md appears complete or not at all
    with atomic_write(out / "REPORT.md", "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    record_made(out / "REPORT.md", COMMAND)
    write_json(out / "report.json", report)
    return report


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    s = settings_of(args)
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"error: --threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    out, root = Path(s["out"]), Path(s["data_root"])
    try:
        check_outputs(out, root, args)
    except InputError as e:
        raise SystemExit(f"error: {e}") from None
    out.mkdir(parents=True, exist_ok=True)
    load_start = load_average()
    clock = Clock()
    stages = ["data"] + [f"train {ORDER[:k]}" for k in range(1, len(ORDER) + 1)] + \
             ["evaluate matrix", "evaluate selection + latency", "report"]
    # counts the quickstart's stages (data, the three trainings, two evaluations, the report), not
    # optimiser steps, which each training's own bar shows; no time estimate: the stages differ 10x
    bar = tqdm(total=len(stages), desc="quickstart", unit="stage", position=0, dynamic_ncols=True,
               bar_format="{desc}: {n_fmt}/{total_fmt} stages |{bar}| [{elapsed}{postfix}]")

    def say(text):
        tqdm.write(f"[quickstart] {text}")

    def step(name, fn, *a, **kw):
        bar.set_postfix_str(f"now: {name}")
        say(f"{name} ...")
        r = clock.run(name, fn, *a, **kw)
        say(f"{name} done in {clock.steps[name]['wall_s']:.0f} s (CPU {clock.steps[name]['cpu_s']:.0f} s)")
        bar.update(1)
        return r

    say("SYNTHETIC stand-in data, CPU settings: a demonstration of the pipeline, not the paper's results")
    say(f"machine: {capability_line()}; every time below is measured here, in this run")
    data_state = step("data", make_data, root, s, args, say)
    for k in range(1, len(ORDER) + 1):
        step(f"train {ORDER[:k]}", learn_stage, k, s, args, out, root)
    matrix = step("evaluate matrix", evaluate_stages, s, args, out, root)
    infer = step("evaluate selection + latency", evaluate_heads, s, args, out, root)
    bar.set_postfix_str("now: report")
    report = write_report(out, s, args, clock, matrix, infer, data_state, load_start, root)
    bar.update(1)
    bar.close()
    total = clock.total()
    print()
    print((out / "REPORT.md").read_text())
    print(f"quickstart finished in {total['wall_s']:.0f} s wall ({total['cpu_s']:.0f} s CPU); "
          f"report: {out / 'REPORT.md'}")
    return report


if __name__ == "__main__":
    main()
