"""The scale from a few known distances (predict.py --known-depth) on K-like and N-like test frames.

    python bench/bench_known_depth.py --checkpoint runs/quickstart/NKS.pth.tar --data-root datasets/synthetic

Each of the first ``--frames`` test files per domain, as it lies on disk, goes through predict.py's
path (``inference.images.Predictor.run``, the head chosen on the frame, the depth clamped to its
range). Then, per number of points n in ``--points`` and ``--draws`` seeded draws: n pixels with
ground truth are sampled, their true depths are the known distances, and round(10 % of n) outliers
are added (pixels of the frame with a depth drawn uniformly from the domain's range: wrong returns);
``Predictor.correct_scale`` fits the scale (inference/known_depth.py: median of ratios with MAD
rejection, checked against the head's calibrated 90 % interval) and the corrected depth is scored
against the whole frame's ground truth (``evaluation.evaluate.DomainEvaluator``: the domain's cap
and crop, per-image means). A refused frame ("scale check failed") keeps its prediction and is
counted. A last row fits the scale to every ground-truth pixel: what a global scale fix can
reach at best. Writes ``<out>/bench_known_depth.json`` and prints the table of docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="runs/quickstart/NKS.pth.tar", help="the model")
    p.add_argument("--data-root", default="datasets/synthetic", help="the test files (only read)")
    p.add_argument("--domains", default="K,N", help="domain letters whose test frames are used")
    p.add_argument("--frames", type=int, default=20, help="test frames per domain")
    p.add_argument("--points", default="1,4,16,64", help="known points per frame")
    p.add_argument("--outlier-fraction", type=float, default=0.1, help="outliers added, a fraction of the points")
    p.add_argument("--draws", type=int, default=5, help="seeded draws of the points per frame")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--out", default="runs/bench_known_depth", help="folder of the JSON result")
    return p


def sample(gt, n, outliers, spec, rng):
    """KnownPoints: n pixels with ground truth (their true depth) plus ``outliers`` random pixels
    with a depth drawn uniformly from the domain's range."""
    import numpy as np

    from inference.known_depth import KnownPoints
    y, x = np.nonzero(gt > 0)
    pick = np.arange(y.size) if n == 0 else rng.choice(y.size, size=n, replace=y.size < n)
    ys, xs, ms = list(y[pick]), list(x[pick]), list(gt[y[pick], x[pick]])
    h, w = gt.shape
    for _ in range(outliers):
        ys.append(rng.integers(0, h)), xs.append(rng.integers(0, w))
        ms.append(rng.uniform(max(spec.min_depth, 0.5), spec.max_depth))
    return KnownPoints(np.array(xs, float), np.array(ys, float), np.array(ms, float))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import numpy as np
    import torch

    from base.domains import get_domain
    from evaluation.evaluate import DomainEvaluator
    from inference.images import ImageOptions, Predictor
    from loaders import get_dataset

    torch.set_num_threads(args.threads)
    model = Predictor(args.checkpoint, ImageOptions(quiet=True))
    counts = [int(v) for v in args.points.split(",")] + [0]   # 0: every ground-truth pixel (the ceiling)
    load, t0 = os.getloadavg(), time.perf_counter()
    results = {}

    def ev_of(spec):
        return DomainEvaluator(spec, crop="default", cap=True)

    def add(ev, depth, gt):
        ev.add_batch(torch.from_numpy(np.asarray(depth, np.float32))[None, None],
                     torch.from_numpy(np.asarray(gt, np.float32))[None, None])

    for letter in [c.strip() for c in args.domains.split(",")]:
        spec = get_domain(letter)
        ds = get_dataset(letter, "test", args.data_root, train=False)
        before, after = ev_of(spec), {n: ev_of(spec) for n in counts}
        refused, factors, heads = {n: 0 for n in counts}, {n: [] for n in counts}, []
        for i, row in enumerate(ds.rows[: args.frames]):
            img, gt = ds.read_pair(row)
            r = model.run(img.convert("RGB"))
            r = dict(r, depth=model.clamp(r["depth"], r["head"]))
            heads.append(model.letters[r["head"]])
            add(before, r["depth"], gt)
            for n in counts:
                for k in range(args.draws if n else 1):
                    rng = np.random.default_rng([i, n, k])
                    pts = sample(gt, n, int(round(args.outlier_fraction * n)), spec, rng)
                    depth, fit = model.correct_scale(r, pts, 0.9)
                    add(after[n], depth, gt)
                    refused[n] += not fit["ok"]
                    factors[n].append(fit["factor"])
        b = before.result()
        results[letter] = {"domain": spec.name, "frames": len(heads), "heads": {c: heads.count(c) for c in set(heads)},
                           "before": {k: float(b[k]) for k in ("abs_rel", "delta1")},
                           "after": {n: {"abs_rel": float(after[n].result()["abs_rel"]),
                                         "delta1": float(after[n].result()["delta1"]),
                                         "refused": refused[n], "fits": len(heads) * (args.draws if n else 1),
                                         "median_factor": float(np.median(factors[n]))} for n in counts}}
    from models.hardware import capability_line
    summary = {"synthetic": True, "checkpoint": args.checkpoint, "cpu": capability_line(), "threads": args.threads,
               "load_start": [round(v, 2) for v in load], "load_end": [round(v, 2) for v in os.getloadavg()],
               "seconds": round(time.perf_counter() - t0, 1), "date": time.strftime("%Y-%m-%d"),
               "settings": vars(args), "results": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_known_depth.json").write_text(json.dumps(summary, indent=1))
    lines = ["| frames | points (+ outliers) | AbsRel before -> after | δ1 before -> after | scale check failed |",
             "|---|---|---|---|---:|"]
    for letter, r in results.items():
        for n in counts:
            a = r["after"][n]
            what = f"{n} (+{int(round(args.outlier_fraction * n))})" if n else "every ground-truth pixel (ceiling)"
            lines.append(f"| {r['domain']} ({letter}), {r['frames']} | {what} | "
                         f"{r['before']['abs_rel']:.3f} -> {a['abs_rel']:.3f} | {r['before']['delta1']:.3f} -> "
                         f"{a['delta1']:.3f} | {a['refused']}/{a['fits']} |")
    print("\n".join(lines))
    print(f"heads chosen: {({c: r['heads'] for c, r in results.items()})}; CPU {summary['cpu']}; load "
          f"{summary['load_start']} -> {summary['load_end']}; {summary['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
