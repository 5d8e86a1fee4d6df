"""A domain no head has learned, added in one command from each of two recording layouts.

    python bench/bench_add_domain.py --prior runs/quickstart/NKS.pth.tar --replay-root datasets/synthetic

For each layout (``--layouts``, default tum and png16):

1. the aerial views of ``data.synthetic.render_aerial`` are written as a depth camera's SDK records
   them (``data.synthetic.write_aerial_recording``: TUM lists with two clocks and a dropped frame at
   500 per metre, or colour/depth PNG folders in millimetres), ``--frames`` frames at
   ``--render-scale``;
2. ``python add_domain.py --prior ... --layout L --depth-unit U --intrinsics ...`` runs as a user
   runs it (a child process; its wall time measured here), which indexes, trains and writes its
   REPORT.md (the new domain's accuracy, the old domains' forgetting, the confusion matrix);
3. the recording's test frames (the last fifth) go through predict.py's path
   (``inference.images.Predictor.run``, the frame pipeline, the recording's intrinsics given) with
   the prior (before) and the new model (after): frames flagged out of domain, the head chosen, and
   the depth written (clamped to the head's range) scored against the recorded depth
   (``evaluation.evaluate.DomainEvaluator``: the domain's cap, no crop, per-image means).

Writes ``<out>/bench_add_domain.json`` and prints the table of docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LETTERS = {"tum": "A", "png16": "B"}


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prior", default="runs/quickstart/NKS.pth.tar", help="the model the domain is added to")
    p.add_argument("--replay-root", default=None, help="the prior's data root (only read; default: the prior's own)")
    p.add_argument("--out", default="runs/bench_add_domain", help="recordings, data roots, checkpoints, results")
    p.add_argument("--layouts", default="tum,png16", help="comma-separated recording layouts (tum, png16)")
    p.add_argument("--frames", type=int, default=200, help="aerial frames per recording")
    p.add_argument("--render-scale", type=float, default=0.5, help="aerial frame size factor (1: 480x480)")
    p.add_argument("--steps", type=int, default=None, help="add_domain.py --steps (default: its own choice)")
    p.add_argument("--eval-images", type=int, default=None, help="add_domain.py --eval-images (default: all)")
    p.add_argument("--threads", type=int, default=2, help="torch threads here and in add_domain.py")
    p.add_argument("--seed", type=int, default=0, help="seed of the recordings and the training")
    return p


def score_frames(checkpoint, rows, intrinsics, letter):
    """Predict.py's path on each (image, depth) row: heads, out-of-domain flags, errors."""
    import numpy as np
    import torch

    from base.domains import get_domain
    from evaluation.evaluate import DomainEvaluator
    from inference.images import ImageOptions, Predictor

    model = Predictor(checkpoint, ImageOptions(intrinsics=",".join(f"{v:g}" for v in intrinsics), quiet=True))
    ev = DomainEvaluator(get_domain(letter), crop="none", cap=True)
    heads, ood, t0 = Counter(), 0, time.perf_counter()
    for img, gt in rows:
        r = model.run(img)
        heads[model.letters[r["head"]]] += 1
        ood += bool(r.get("ood"))
        depth = model.clamp(r["depth"], r["head"])
        ev.add_batch(torch.from_numpy(np.asarray(depth, np.float32))[None, None],
                     torch.from_numpy(np.asarray(gt, np.float32))[None, None])
    m = ev.result()
    return {"frames": len(rows), "heads": dict(heads), "ood": ood, "abs_rel": float(m["abs_rel"]),
            "rmse": float(m["rmse"]), "delta1": float(m["delta1"]),
            "ms_per_frame": 1000 * (time.perf_counter() - t0) / max(1, len(rows))}


def one_layout(layout, args, out: Path) -> dict:
    from base import domains as dom
    from data.synthetic import write_aerial_recording
    from loaders import get_dataset

    letter, name = LETTERS[layout], f"aerial_{layout}"
    rec = out / f"rec_{layout}"
    info_path = out / f"rec_{layout}.json"
    if not info_path.is_file():
        t0 = time.perf_counter()
        info = write_aerial_recording(str(rec), layout, args.frames, seed=args.seed, scale=args.render_scale)
        info["write_s"] = round(time.perf_counter() - t0, 1)
        info_path.write_text(json.dumps(info))
    info = json.loads(info_path.read_text())
    data_root, runs = out / f"data_{layout}", out / "runs"
    cmd = [sys.executable, str(ROOT / "add_domain.py"), "--prior", args.prior, "--name", name, "--letter", letter,
           "--src", str(rec), "--layout", layout, "--depth-unit", f"{info['unit']:g}",
           "--intrinsics", ",".join(f"{v:g}" for v in info["intrinsics"]), "--data-root", str(data_root),
           "--runs-dir", str(runs), "--threads", str(args.threads), "--seed", str(args.seed), "--overwrite",
           "--quiet"]
    for flag, value in (("--replay-root", args.replay_root), ("--steps", args.steps),
                        ("--eval-images", args.eval_images)):
        if value is not None:
            cmd += [flag, str(value)]
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=dict(os.environ, OMP_WAIT_POLICY="PASSIVE"))
    wall = time.perf_counter() - t0
    result_files = sorted(runs.glob(f"*{letter}/add_domain.json"))
    report = json.loads(result_files[-1].read_text())
    dom.load_domains_from_root(str(data_root))
    ds = get_dataset(letter, "test", str(data_root), train=False)
    rows = []
    for row in ds.rows:
        img, depth = ds.read_pair(row)
        rows.append((img.convert("RGB"), depth))
    before = score_frames(args.prior, rows, info["intrinsics"], letter)
    after = score_frames(report["checkpoint"], rows, info["intrinsics"], letter)
    dom.unregister_domain(name)
    return {"layout": layout, "letter": letter, "recording": info, "command": cmd, "wall_s": round(wall, 1),
            "report": report, "before": before, "after": after}


def table(results) -> str:
    lines = ["| layout (unit) | frames (train/test) | before: flagged out of domain | before: heads chosen, AbsRel | "
             "after: right head | after: AbsRel / δ1 (frames) | AbsRel (test split, add_domain report) | "
             "forgetting AbsRel N / K / S | wall time | checkpoint |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rep, b, a = r["report"], r["before"], r["after"]
        rec = rep["recording"]
        heads = ", ".join(f"{k} {v}" for k, v in sorted(b["heads"].items()))
        forget = " / ".join(f"{o['forgetting_abs_rel']:+.3f}" for o in rep["old_domains"].values())
        lines.append(f"| {r['layout']} ({rec['unit']:g} m) | {rec['frames']} ({rec['train']}/{rec['test']}) | "
                     f"{b['ood']}/{b['frames']} | {heads}; {b['abs_rel']:.3f} | "
                     f"{a['heads'].get(r['letter'], 0)}/{a['frames']} | {a['abs_rel']:.3f} / {a['delta1']:.3f} | "
                     f"{rep['new_domain']['abs_rel']:.3f} | {forget} | {r['wall_s'] / 60:.1f} min | "
                     f"{rep['cost']['checkpoint_mb']:.0f} MB |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    results = [one_layout(layout.strip(), args, out) for layout in args.layouts.split(",") if layout.strip()]
    from models.hardware import capability_line
    summary = {"synthetic": True, "cpu": capability_line(), "threads": args.threads,
               "load_start": [round(v, 2) for v in load], "load_end": [round(v, 2) for v in os.getloadavg()],
               "date": time.strftime("%Y-%m-%d"), "results": results}
    (out / "bench_add_domain.json").write_text(json.dumps(summary, indent=1))
    print(table(results))
    print(f"CPU: {summary['cpu']}; load {summary['load_start']} -> {summary['load_end']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
