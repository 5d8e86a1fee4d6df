"""Know when you don't know: calibrated intervals and "no head fits", on whole frames.

    python bench/bench_uncertainty.py --checkpoint runs/quickstart/NKS.pth.tar --data-root datasets/synthetic \\
        --other-root datasets/seed7          # a test set rendered with another --seed (synthetic.py --seed 7)

**Intervals.** Each head is calibrated as the lifelong learner can: on its domain's validation rows
(held out of training) through the stage checkpoint that learned it (N.pth.tar for N, NK.pth.tar
for K, ...; ``evaluation.frame_calibration``), whole frames through the frame pipeline, as predict.py
runs them. Every method of ``base.uncertainty.METHODS`` is fitted on the same validation frames
and measured on the final checkpoint's whole test frames of ``--data-root`` and ``--other-root``:
coverage at 50/80/90/95 %, raw (scale 1), today's stored scale (fitted on crops) and each method;
AUSE ratio (RMSE). How many validation images each method needs: fits on k random frames of the
other seed's test set, measured on ``--data-root``'s test frames (``--draws`` draws per k).

**Out of domain.** The frame statistics are recomputed into a copy (``inference.replay``; the
thresholds are fitted on held-out replay frames only) and every frame's score and verdict are taken
on the selection path (inference/frames.py): in-domain test frames of both seeds, frames of the
unlearned aerial domain (``data.synthetic.render_aerial``) at ``--aerial-seeds``, and photographs
(scikit-image's bundled sample images, public domain / CC0, pinned in requirements-bench.txt; none
is used in any fit). AUROC per pair (in-domain vs each outside set) for the stored score and for
the alternatives measured (the LDA distance of the older verdict, the head's mean predicted
log-variance), and the flagged fraction at the stored operating point.

``--calibrated-into DIR``: also write the calibrated stage checkpoints (the stored method, the test
coverage measured on ``--data-root``'s test frames stored with it) and the frame statistics.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT), str(ROOT / "bench")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from base.safeio import write_json  # noqa: E402
from base.uncertainty import (CALIBRATION_KEY, LEVELS, METHODS, ause_aurg, head_calibration,  # noqa: E402
                              sparsification)
from evaluation.frame_calibration import (calibrate_frames, frames_pixels, measure_frames, rules_of,  # noqa: E402
                                          test_rows, validation_rows)
from evaluation.uncertainty import DEFAULT_METHOD, fit_method, frame_coverage  # noqa: E402

PHOTOS = ("astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png", "coffee.png",
          "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "microaneurysms.png",
          "moon.png", "motorcycle_left.png", "page.png", "retina.jpg", "rocket.jpg", "text.png")


def photo_folder() -> Path | None:
    """scikit-image's bundled sample images (found without importing the package)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    return folder if folder.is_dir() else None


def load_photos(folder: Path) -> list:
    out = []
    for name in PHOTOS:
        path = folder / name
        if path.exists():
            with Image.open(path) as im:
                out.append((name, im.convert("RGB")))
    return out


def auroc(inside, outside) -> float:
    """P(score of an outside frame > score of an inside frame), ties counted half."""
    a, b = np.asarray(inside, np.float64), np.asarray(outside, np.float64)
    if not a.size or not b.size:
        return float("nan")
    greater = (b[:, None] > a[None, :]).mean()
    ties = (b[:, None] == a[None, :]).mean()
    return float(greater + 0.5 * ties)


def ause_ratio(images) -> float:
    curves = {k: [] for k in ("uncertainty", "oracle", "random")}
    for im in images:
        if im["a"].size:
            c = sparsification(im["depth"], im["gt"], im["sigma"], "rmse")
            for k in curves:
                curves[k].append(c[k])
    return ause_aurg({k: np.mean(np.stack(v), axis=0) for k, v in curves.items()})["ratio"]


def pipeline_of(path):
    from inference.predictor import DepthPredictor
    predictor = DepthPredictor.from_checkpoint(path, device="cpu")  # the default runtime, as predict.py
    return predictor, predictor.frame_pipeline()


def calibration_bench(stages, letters, root, other, args, log) -> dict:
    """Every method fitted on each head's validation frames (through the stage that learned it),
    measured on the final model's whole test frames of both seeds."""
    from models import read_checkpoint
    from models.checkpoint import checkpoint_meta
    opts = checkpoint_meta(read_checkpoint(stages[-1])[1]).options
    val_images, val_seed = int(opts.get("val_images", 8)), int(opts.get("val_seed", 0))
    final, pipe = pipeline_of(stages[-1])
    ranges = checkpoint_meta(final).depth_ranges
    out = {"val_images": val_images, "domains": {}}
    for d, letter in enumerate(letters):
        t0 = time.perf_counter()
        _, stage_pipe = pipeline_of(stages[d])
        val = frames_pixels(stage_pipe, validation_rows(letter, root, val_images, val_seed), d, ranges[d],
                            rules_of(letter))
        tests = {"seed_a": frames_pixels(pipe, test_rows(letter, root, args.test_frames), d, ranges[d], rules_of(letter))}
        if other:
            tests["seed_b"] = frames_pixels(pipe, test_rows(letter, other, args.test_frames), d, ranges[d],
                                            rules_of(letter))
        fits = {m: fit_method(m, val) for m in METHODS}
        today = head_calibration(final.meta, d, len(letters))
        res = {"validation_images": len(val), "ause_ratio": {}, "coverage": {}}
        for name, images in tests.items():
            res["ause_ratio"][name] = ause_ratio(images)
            cov = {"raw": frame_coverage(None, images, LEVELS), "today (one scale, crops)": frame_coverage(today, images, LEVELS)}
            for m, cal in fits.items():
                cov[m] = frame_coverage(cal, images, LEVELS)
            res["coverage"][name] = cov
            res[f"{name}_images"] = len(images)
        # how many validation images: fits on k frames drawn from the other seed's test frames
        if other and args.draws:
            pool, target = tests["seed_b"], tests["seed_a"]
            rng = np.random.default_rng(0)
            res["images_needed"] = {}
            for m in METHODS:
                per_k = {}
                for k in (2, 4, 8, 16):
                    if k > len(pool):
                        continue
                    c90, c50 = [], []
                    for _ in range(args.draws):
                        pick = [pool[i] for i in rng.choice(len(pool), k, replace=False)]
                        cov = frame_coverage(fit_method(m, pick), target, (0.5, 0.9))
                        c50.append(cov["50"])
                        c90.append(cov["90"])
                    c50, c90 = np.array(c50), np.array(c90)
                    per_k[str(k)] = {"cov90_median": float(np.median(c90)), "cov50_median": float(np.median(c50)),
                                     "both_in_goal": float(np.mean((np.abs(c90 - 0.9) <= 0.02) & (np.abs(c50 - 0.5) <= 0.03)))}
                res["images_needed"][m] = per_k
        out["domains"][letter] = res
        log(f"  {letter}: calibration measured in {time.perf_counter() - t0:.0f} s")
    return out


def frames_of_selection(pipe, images) -> list:
    from inference.frames import to_tensor
    out = []
    for img in images:
        sel = pipe.select(to_tensor(img))
        d = sel["distances"]
        stats = pipe.stats
        lda_ratio = float(d.min() / torch.tensor(stats["thresholds"])[int(d.argmin())])
        out.append({"ood": sel["ood"], "score": sel.get("ood_score"), "lda": lda_ratio, "head": sel["raw_head"]})
    return out


def ood_bench(ckpt, letters, root, other, photos, args, log) -> dict:
    from data.synthetic import render_aerial
    from loaders import load_rgb
    _, pipe = pipeline_of(ckpt)
    sets = {}
    for name, r in (("in-domain, seed A", root), ("in-domain, seed B", other)):
        if r is None:
            continue
        imgs = [load_rgb(p) for c in letters for p, _ in test_rows(c, r, args.test_frames)]
        sets[name] = frames_of_selection(pipe, imgs)
    for seed in args.aerial_seeds:
        imgs = [Image.fromarray(render_aerial(i, seed=seed, scale=args.aerial_scale)["image"])
                for i in range(args.aerial_frames)]
        sets[f"aerial, seed {seed}"] = frames_of_selection(pipe, imgs)
    if photos:
        sets["photographs"] = frames_of_selection(pipe, [im for _, im in photos])
    inside = [f for k, v in sets.items() if k.startswith("in-domain") for f in v]
    table = {}
    for name, frames in sets.items():
        row = {"frames": len(frames), "flagged": sum(bool(f["ood"]) for f in frames),
               "flagged_lda": sum(f["lda"] > 1.0 for f in frames),  # the older verdict (LDA thresholds)
               "score_quantiles": [float(v) for v in np.quantile([f["score"] for f in frames], (0.0, 0.05, 0.5, 0.95, 1.0))]}
        if not name.startswith("in-domain"):
            for key in ("score", "lda"):
                row[f"auroc_{key}"] = auroc([f[key] for f in inside], [f[key] for f in frames])
        table[name] = row
    if photos:
        table["photographs"]["names_not_flagged"] = [n for (n, _), f in zip(photos, sets["photographs"]) if not f["ood"]]
    stats = pipe.stats["ood"]
    return {"table": table, "threshold": stats["threshold"], "score": stats["score"],
            "in_domain_score_max": max(f["score"] for f in inside)}


def with_statistics(ckpt: Path, root: Path, work: Path, log) -> Path:
    from inference.replay import add_frame_statistics
    out = work / f"{ckpt.name.split('.')[0]}_frames.pth.tar"
    if not out.exists() or out.stat().st_mtime < ckpt.stat().st_mtime:
        t0 = time.perf_counter()
        add_frame_statistics(ckpt, out, root, quiet=True)
        log(f"  frame statistics of {ckpt} -> {out} in {time.perf_counter() - t0:.0f} s")
    return out


def write_calibrated(stages, letters, root, into: Path, frames_ckpt: Path, args, log) -> list:
    """The calibrated stage checkpoints: each stage's new head fitted on its validation frames,
    older heads kept from the previous stage; the final one's test coverage measured and stored."""
    from models import load_checkpoint, read_checkpoint, save_checkpoint
    from models.checkpoint import checkpoint_meta
    into.mkdir(parents=True, exist_ok=True)
    previous, paths = None, []
    for k, path in enumerate(stages):
        src = frames_ckpt if k == len(stages) - 1 else path
        net = load_checkpoint(src)
        meta = checkpoint_meta(net)
        opts = meta.options
        predictor, pipe = pipeline_of(src)
        record = calibrate_frames(pipe, letters[:k + 1], root, val_images=int(opts.get("val_images", 8)),
                                  val_seed=int(opts.get("val_seed", 0)), depth_ranges=meta.depth_ranges,
                                  previous=previous, fitted_at=letters[:k + 1], method=args.method,
                                  note="bench/bench_uncertainty.py")
        if k == len(stages) - 1:
            measure_frames(pipe, record, letters, root, n=args.test_frames)
        out = into / Path(path).name
        save_checkpoint(out, net, **{CALIBRATION_KEY: record})
        previous = checkpoint_meta(read_checkpoint(out)[1]).uncertainty_calibration
        paths.append(str(out))
        log(f"  calibrated {path} -> {out}")
    return paths


def method_summary(cal) -> dict:
    """Per method: mean |coverage - nominal| at 50 and 90 % over domains x test sets, goals met."""
    out = {}
    for r in cal["domains"].values():
        for cov in r["coverage"].values():
            for m, v in cov.items():
                o = out.setdefault(m, {"miss50": [], "miss90": [], "met": 0, "cells": 0})
                o["miss50"].append(abs(v["50"] - 0.5))
                o["miss90"].append(abs(v["90"] - 0.9))
                o["met"] += int(abs(v["50"] - 0.5) <= 0.03) + int(abs(v["90"] - 0.9) <= 0.02)
                o["cells"] += 2
    return {m: dict(o, miss50=float(np.mean(o["miss50"])), miss90=float(np.mean(o["miss90"]))) for m, o in out.items()}


def pct(v) -> str:
    return f"{100 * v:.1f}"


def tables(result) -> str:
    lines = []
    cal = result.get("calibration") or {"val_images": 0, "domains": {}}
    lines.append(f"Coverage of central intervals on whole test frames (valid pixels, %), each method fitted on "
                 f"{cal['val_images']} validation frames per head:")
    lines.append("")
    lines.append("| domain | test set | method | 50 % | 80 % | 90 % | 95 % |")
    lines.append("|---|---|---|---:|---:|---:|---:|")
    for c, r in cal["domains"].items():
        for name, cov in r["coverage"].items():
            for m, v in cov.items():
                lines.append(f"| {c} | {name} ({r[f'{name}_images']} frames) | {m} | "
                             + " | ".join(pct(v[k]) for k in ("50", "80", "90", "95")) + " |")
    if cal["domains"]:
        lines += ["", "Per method over every domain and test set: mean |coverage - nominal| at 50 and 90 %, and "
                  "cells within the goals (50 % in 47-53, 90 % in 88-92):", "",
                  "| method | mean miss at 50 % | mean miss at 90 % | goals met |", "|---|---:|---:|---:|"]
        for m, v in method_summary(cal).items():
            lines.append(f"| {m} | {100 * v['miss50']:.1f} | {100 * v['miss90']:.1f} | {v['met']}/{v['cells']} |")
    lines += ["", "| domain | AUSE ratio (RMSE), seed A | seed B |", "|---|---:|---:|"]
    for c, r in cal["domains"].items():
        a = r["ause_ratio"]
        lines.append(f"| {c} | {a['seed_a']:.3f} | {a.get('seed_b', float('nan')):.3f} |")
    if any("images_needed" in r for r in cal["domains"].values()):
        lines += ["", "Validation frames needed (fits on k frames of seed B, measured on seed A's test frames; "
                  "median 90 % / 50 % coverage, share of draws with both within the goal):", "",
                  "| domain | method | k=2 | k=4 | k=8 | k=16 |", "|---|---|---|---|---|---|"]
        for c, r in cal["domains"].items():
            for m, per_k in r.get("images_needed", {}).items():
                cells = [f"{pct(v['cov90_median'])} / {pct(v['cov50_median'])} ({v['both_in_goal']:.2f})"
                         for v in per_k.values()]
                lines.append(f"| {c} | {m} | " + " | ".join(cells) + " |")
    o = result.get("ood")
    if o:
        lines += ["", f"Out of domain (score: {o['score']}; threshold {o['threshold']:g}):", "",
                  "| frames | flagged | flagged by the older verdict (LDA) | AUROC (stored score) | AUROC (LDA distance) "
                  "| score min / 5 % / median / 95 % / max |", "|---|---:|---:|---:|---:|---|"]
        for name, r in o["table"].items():
            auc = (f"{r['auroc_score']:.3f} | {r['auroc_lda']:.3f}" if "auroc_score" in r else "- | -")
            q = " / ".join(f"{v:.2f}" for v in r["score_quantiles"])
            lines.append(f"| {name} | {r['flagged']}/{r['frames']} ({pct(r['flagged'] / r['frames'])} %) | "
                         f"{r['flagged_lda']}/{r['frames']} | {auc} | {q} |")
        if o["table"].get("photographs", {}).get("names_not_flagged"):
            lines.append(f"\nphotographs not flagged: {', '.join(o['table']['photographs']['names_not_flagged'])}")
    return "\n".join(lines)


def build_parser():
    p = argparse.ArgumentParser(description="Calibrated intervals and the out-of-domain verdict on whole frames.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default="runs/quickstart/NKS.pth.tar",
                   help="the final stage checkpoint; the earlier stages are read from its folder (N.pth.tar, ...)")
    p.add_argument("--data-root", default="datasets/synthetic", help="the training data root (validation, replay, test rows)")
    p.add_argument("--other-root", default=None, help="a test set rendered with another --seed (synthetic.py)")
    p.add_argument("--test-frames", type=int, default=None, help="test frames per domain (default: all)")
    p.add_argument("--draws", type=int, default=20, help="random draws per k of the images-needed experiment (0: skip)")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS, help="the method --calibrated-into stores")
    p.add_argument("--aerial-seeds", type=lambda s: [int(v) for v in s.split(",")], default=[11, 12],
                   help="seeds of the unlearned aerial domain's frames")
    p.add_argument("--aerial-frames", type=int, default=40, help="aerial frames per seed")
    p.add_argument("--aerial-scale", type=float, default=0.5, help="render scale of the aerial frames")
    p.add_argument("--no-photos", action="store_true", help="skip the photographs (scikit-image's sample images)")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: calibration, ood")
    p.add_argument("--work", default="runs/uncertainty", help="folder for the checkpoint copy with frame statistics")
    p.add_argument("--calibrated-into", default=None, help="write the calibrated stage checkpoints here")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", default="runs/uncertainty/bench_uncertainty.json", help="JSON result")
    return p


def main(argv=None) -> int:
    from bench_stream import cpu_name
    from evaluation.evaluate import stage_paths
    from models import read_checkpoint
    from models.checkpoint import checkpoint_meta
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    ckpt, root = Path(args.checkpoint), Path(args.data_root)
    other = Path(args.other_root) if args.other_root else None
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    meta = checkpoint_meta(read_checkpoint(ckpt)[1])
    letters = meta.letters
    # a file that does not say: the engine's default strategy (test.py --strategy's default too)
    stages = [Path(p) for p in stage_paths(letters, meta.strategy or "ours", ckpt.parent)]
    skip = set(filter(None, args.skip.split(",")))
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_name(),
              "threads": torch.get_num_threads(), "checkpoint": str(ckpt), "data_root": str(root),
              "other_root": str(other) if other else None, "levels": list(LEVELS)}
    if "calibration" not in skip:
        result["calibration"] = calibration_bench(stages, letters, root, other, args, log)
    frames_ckpt = with_statistics(ckpt, root, work, log) if ("ood" not in skip or args.calibrated_into) else None
    if "ood" not in skip:
        folder = None if args.no_photos else photo_folder()
        photos = load_photos(folder) if folder else []
        if not photos and not args.no_photos:
            log("  no photographs: pip install -r requirements-bench.txt (scikit-image's sample images)")
        result["ood"] = ood_bench(frames_ckpt, letters, root, other, photos, args, log)
    if args.calibrated_into:
        result["calibrated"] = write_calibrated(stages, letters, root, Path(args.calibrated_into), frames_ckpt, args, log)
    print(f"Uncertainty on whole frames ({result['cpu']}, {result['threads']} torch threads, {result['date']}; "
          f"synthetic data; seed A = {root}, seed B = {other}):\n")
    print(tables(result))
    write_json(args.out, result)
    log(f"\n-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
