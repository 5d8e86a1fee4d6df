"""The product path scored against ground truth: raw frames through exactly predict.py's code.

    python bench/bench_frames.py                       # -> runs/frames/bench_frames.json + tables
    python bench/bench_frames.py --quick               # smoke run: 4 frames per domain

For each domain, the first ``--frames`` test files *as they lie on disk* (no domain transform: N
320x240, K 608x176, S colour 648x484 on the quickstart's synthetic data) go through
``inference.images.Predictor.run`` (what predict.py, the streams and the demo call), with the
camera hint predict.py builds (``Predictor.camera_of``: here no EXIF, so the chosen head's camera is
assumed), and the written depth's rule (clamped to the head's range) is scored against the ground
truth with the domain's evaluation conventions (``evaluation.DomainEvaluator``: caps, Eigen/Garg
crop on the whole frame, per-image means). Conditions:

* head given (``--domain``) and automatic, beside ``test.py``'s numbers on the same images (the
  domain's test crops through ``evaluate_split``) and beside today's rule (``legacy``: the frame
  squeezed to the head's training input size, selection at the first domain's);
* the same frames mirrored, at 0.5x and at 2x resolution (with the domain camera's intrinsics
  scaled and given as ``--intrinsics``): head choice, errors and the median depth against 1x;
* ``--camera-mode rescale`` beside the default ``resample``;
* out of domain: the fraction flagged among the in-domain frames of every condition, among
  ``--ood-frames`` frames of a fourth synthetic domain no head learned (``synthetic.render_aerial``)
  and among images that are not scenes (noise, flat colours, a checkerboard, gradients);
* per-frame latency of the whole-frame path and of the legacy rule at the same frame size.

A checkpoint without the frame statistics gets them computed from ``--data-root``'s replay rows
into a copy (``inference.replay.add_frame_statistics``; the original is not touched).
"""
from __future__ import annotations

import argparse
import statistics
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

from base.domains import get_domain  # noqa: E402
from evaluation.evaluate import DomainEvaluator, evaluate_split, make_loader, test_dataset  # noqa: E402
from base.safeio import write_json  # noqa: E402
from inference import images as P  # noqa: E402
from inference.frames import CameraHint, source_camera  # noqa: E402
from loaders import get_dataset  # noqa: E402
from engine.processes import resolve_device  # noqa: E402
from inference.predictor import predictor_settings  # noqa: E402
from models.checkpoint import default_scale  # noqa: E402

CONDITIONS = ("1x", "flipped", "0.5x", "2x")


def with_statistics(checkpoint: Path, data_root: Path, work: Path, log=print) -> Path:
    """``checkpoint`` if it stores the frame statistics with the out-of-domain verdict, else a copy
    under ``work`` that does."""
    from inference.replay import add_frame_statistics
    from models import read_checkpoint
    from models.checkpoint import checkpoint_meta
    if checkpoint_meta(read_checkpoint(checkpoint)[1]).frame_statistics.get("ood"):  # with the verdict of inference/ood.py
        return checkpoint
    out = work / f"{checkpoint.name.split('.')[0]}_frames.pth.tar"
    if out.exists() and out.stat().st_mtime >= checkpoint.stat().st_mtime:
        return out
    t0 = time.perf_counter()
    stats = add_frame_statistics(checkpoint, out, data_root, quiet=True)
    log(f"  frame statistics of {checkpoint} -> {out} in {time.perf_counter() - t0:.0f} s "
        f"(held-out accuracy {stats['calibration_accuracy']:.3f}, thresholds "
        f"{', '.join(f'{t:.0f}' for t in stats['thresholds'])})")
    return out


def raw_rows(letter, root: Path, n: int):
    """(colour file, ground-truth depth (H,W) metres) of the first ``n`` test rows, as on disk."""
    ds = get_dataset(letter, "test", str(root), train=False)
    out = []
    for row in ds.rows[:n]:
        _, depth = ds.read_pair(row)
        out.append((Path(row.image), depth))
    return out


def variant(img: Image.Image, cond: str) -> tuple:
    """(frame, factor of its size against the file's) of one condition."""
    w, h = img.size
    if cond == "flipped":
        return img.transpose(Image.FLIP_LEFT_RIGHT), 1.0
    if cond in ("0.5x", "2x"):
        f = 0.5 if cond == "0.5x" else 2.0
        return img.resize((round(w * f), round(h * f)), Image.BILINEAR), f
    return img, 1.0


def given_camera(letter, root: Path, img: Image.Image, factor: float):
    """The domain's stored camera at this frame's size (colour and depth share the field of view)."""
    cam = source_camera(letter, root)
    w, h = img.size
    cam = cam.resized(w, h)
    return CameraHint(intrinsics=(cam.fx, cam.fy, cam.cx, cam.cy))


def legacy_run(model, img: Image.Image, head=None) -> dict:
    """Today's rule before this benchmark (inference/images.py at commit 5d09a0a): selection on the
    frame squeezed to the first domain's input size, depth on the frame squeezed to the head's."""
    from losses import upsample_to
    W, H = img.size
    p = model.predictor
    raw = None
    if head is None:
        out = p.predict(P.to_input(img, model.sizes[0]), domain=None)
        raw = head = int(out["domain"][0])
        if model.sizes[head] != model.sizes[0]:
            out = p.predict(P.to_input(img, model.sizes[head]), domain=head)
    else:
        out = p.predict(P.to_input(img, model.sizes[head]), domain=head)
    depth = upsample_to(out["depth"].float(), (H, W))[0, 0].numpy()
    return {"depth": depth, "head": head, "raw_head": raw}


def score(evaluator: DomainEvaluator, depth: np.ndarray, gt: np.ndarray, window=None) -> None:
    """One frame's depth (at the frame's size) against its ground truth; ``window`` (top, left,
    frame_h, frame_w) in ground-truth pixels: only that part of the frame (test.py's crop)."""
    d = torch.from_numpy(np.array(depth, np.float32))[None, None]
    g = torch.from_numpy(np.array(gt, np.float32))[None, None]
    if window is None:
        evaluator.add_batch(d, g)
        return
    from losses import upsample_to
    top, left, h, w = window
    d = upsample_to(d, g.shape[-2:])[..., top:top + h, left:left + w]
    evaluator.add_batch(d, g[..., top:top + h, left:left + w],
                        torch.tensor([[top, left, g.shape[-2], g.shape[-1]]]))


def crop_windows(letter, root, scale, n, gt_sizes):
    """Where test.py's crop of each of the first ``n`` test images lies, in ground-truth pixels:
    the test transform's window (in its resized frame) scaled to the ground truth's size."""
    ds = test_dataset(letter, root, scale, max_images=n)
    out = []
    for i, (gh, gw) in zip(range(len(ds)), gt_sizes):
        top, left, fh, fw = [int(v) for v in ds[i]["window"]]
        img_h, img_w = ds[i]["image"].shape[-2:]
        sy, sx = gh / fh, gw / fw
        out.append((round(top * sy), round(left * sx), round(img_h * sy), round(img_w * sx)))
    return out


def metrics_of(ev: DomainEvaluator) -> dict:
    r = ev.result()
    return {k: float(r[k]) for k in ("abs_rel", "rmse", "delta1")}


def one_head_ms(predictor, x, head, repeat=1) -> float:
    """ms of the one-head function (``DepthPredictor.predict``, head given, no uncertainty) on a
    normalised input ``x``: the reference cost of a frame of these pixels."""
    t0 = time.perf_counter()
    for _ in range(repeat):
        predictor.predict(x, domain=head)
    return 1000 * (time.perf_counter() - t0) / repeat


def rule_benchmark(model, letter, root, args, log=print) -> dict:
    """The frame rules side by side (``inference.frames.FRAME_RULES``), interleaved per frame:
    automatic head, AbsRel/RMSE/δ1 on the whole frames, ms per frame (head choice included) and the
    one-head function on the same network input; a frame's cost over that is the ratio of medians."""
    from inference.frames import FRAME_RULES, resized, to_tensor
    spec = get_domain(letter)
    d = model.letters.index(letter)
    rows = raw_rows(letter, root, args.frames)
    anchored = model.predictor.frame_pipeline("resample").anchors[d] != "center"
    rules = FRAME_RULES if anchored else tuple(r for r in FRAME_RULES if r != "tiled-anchored")  # same there
    pipes = {r: model.predictor.frame_pipeline("resample", r) for r in rules}
    ev = {r: DomainEvaluator(spec, crop="default", cap=True) for r in rules}
    lat = {r: [] for r in rules + ("one_head",)}
    right = {r: 0 for r in rules}
    passes, size = {}, None
    for i, (path, gt) in enumerate(rows):
        img = P.read_rgb(path)
        hint = model.camera_of(path)
        order = rules if i % 2 == 0 else rules[::-1]
        for rule in order:
            t0 = time.perf_counter()
            a = pipes[rule].run(img, camera=hint, with_uncertainty=False)  # a frame's depth
            lat[rule].append(1000 * (time.perf_counter() - t0))
            right[rule] += a["head"] == d
            passes[rule] = a["tiles"]
            score(ev[rule], model.clamp(a["depth"], a["head"]), gt)
            size = a["input_size"]
        x = resized(to_tensor(img), *size)
        lat["one_head"].append(one_head_ms(model.predictor, x, d))
    med = {k: statistics.median(v) for k, v in lat.items()}
    out = {"frame_size": list(Image.open(rows[0][0]).size), "frames": len(rows), "input_size": size,
           "metrics": {r: metrics_of(v) for r, v in ev.items()}, "right_head": right, "passes": passes,
           "latency_ms": {k: {"median": med[k], "min": min(v), "max": max(v)} for k, v in lat.items()},
           "cost_over_one_head": {r: med[r] / med["one_head"] for r in rules}}
    log(f"  {letter} rules: " + ", ".join(f"{r} AbsRel {out['metrics'][r]['abs_rel']:.3f} "
                                          f"{med[r]:.0f} ms ({out['cost_over_one_head'][r]:.2f}x)"
                                          for r in rules) + f"; one head {med['one_head']:.0f} ms")
    return out


RAW_KITTI = (1242, 375)   # KITTI's raw frames; the 1216x352 registry camera is their bottom-centre crop


def real_height_frames(n: int, scale: float, seed: int = 0) -> list:
    """(image, depth) of ``n`` K-like test frames rendered at KITTI's raw geometry (1242x375 at
    scale 1, the registry's 1216x352 camera as their bottom-centre crop: the same focal length, 23
    rows more sky above), at ``scale``, with their ground truth (synthetic)."""
    import dataclasses
    from data import synthetic
    from base.domains import SENSORS
    from inference.frames import registry_camera_at
    cfg = synthetic.get_config("K")
    W, H = RAW_KITTI
    raw = dataclasses.replace(cfg, camera=registry_camera_at(SENSORS["K"].depth, (W, H), crops=True),
                              color_size=(W, H))
    out = []
    for i in range(n):
        sp = synthetic.SPLITS.index("test")
        rng = synthetic._rng(seed, cfg.code, sp, 1, i)
        scene, frame = synthetic._scene_of(cfg, "test", i)
        s = synthetic._render_street(raw, seed, sp, scene, frame, rng, scale, "test")
        out.append((Image.fromarray(s["image"]), s["depth"]))
    return out


def real_height_benchmark(model, args, log=print) -> dict:
    """Item 9 of issue 36: K-like frames of KITTI's raw height through the K head under every frame
    rule (``inference.frames.FRAME_RULES``: the fitted pass, tiles blended, tiles with the K head's
    bottom anchoring, the windowed pass)."""
    d = model.letters.index("K")
    p = model.predictor
    from inference.frames import DEFAULT_FRAME_RULE, FRAME_RULES
    pipes = {(f"{r} (default)" if r == DEFAULT_FRAME_RULE else r): p.frame_pipeline("resample", r) for r in FRAME_RULES}
    frames = real_height_frames(args.real_height, default_scale(p.meta))
    ev = {k: DomainEvaluator(get_domain("K"), crop="default", cap=True) for k in pipes}
    size = None
    for img, gt in frames:
        for k, pipe in pipes.items():
            r = pipe.run(img, head=d, with_uncertainty=False)
            size = r["input_size"]
            score(ev[k], model.clamp(r["depth"], d), gt)
    out = {"frames": len(frames), "frame_size": list(frames[0][0].size), "input_size": size,
           "metrics": {k: metrics_of(v) for k, v in ev.items()}}
    log("  K at the raw height: " + ", ".join(f"{k} {v['abs_rel']:.3f}" for k, v in out["metrics"].items()))
    return out


def rule_table(result) -> str:
    lines = ["| frames (synthetic) | network input | rule | passes | right head | AbsRel / RMSE (m) / δ1 | "
             "ms per frame, median (min-max) | one-head function, same input | cost / one-head |",
             "|---|---|---|---:|---:|---|---|---|---:|"]
    for c, r in result["rules"].items():
        w, h = r["frame_size"]
        ih, iw = r["input_size"]
        o = r["latency_ms"]["one_head"]
        for rule in r["metrics"]:
            L = r["latency_ms"][rule]
            lines.append(f"| {c}-like {w}x{h} | {iw}x{ih} | {rule} | {r['passes'][rule]} | "
                         f"{r['right_head'][rule]}/{r['frames']} | {fmt(r['metrics'][rule])} | "
                         f"{L['median']:.0f} ({L['min']:.0f}-{L['max']:.0f}) | {o['median']:.0f} ms | "
                         f"{r['cost_over_one_head'][rule]:.2f}x |")
    rh = result.get("real_height")
    if rh:
        w, h = rh["frame_size"]
        lines += ["", f"K-like frames at KITTI's raw height ({w}x{h}, {rh['frames']} frames, head given, network "
                  f"input {rh['input_size'][1]}x{rh['input_size'][0]}):", "",
                  "| rule | AbsRel / RMSE (m) / δ1 |", "|---|---|"]
        lines += [f"| {k} | {fmt(m)} |" for k, m in rh["metrics"].items()]
    return "\n".join(lines)


def domain_benchmark(model, letter, root, args, log=print) -> dict:
    """Every condition of one domain; see the module docstring."""
    spec = get_domain(letter)
    d = model.letters.index(letter)
    rows = raw_rows(letter, root, args.frames)
    windows = crop_windows(letter, root, default_scale(model.predictor.meta), args.frames,
                           [gt.shape for _, gt in rows])
    ev = {k: DomainEvaluator(spec, crop="default", cap=True) for k in
          ["given", "auto", "legacy_given", "legacy_auto", "rescale_given", "given_on_crop"]
          + [f"{c}_{h}" for c in CONDITIONS[1:] for h in ("given", "auto")]}
    chosen = {c: [] for c in CONDITIONS}
    ood = {c: [] for c in CONDITIONS}
    legacy_chosen, ratios, lat, lat_legacy = [], {c: [] for c in CONDITIONS[1:]}, [], []
    rescale = model.predictor.frame_pipeline("rescale")
    for (path, gt), window in zip(rows, windows):
        img = P.read_rgb(path)
        hint = model.camera_of(path)
        t0 = time.perf_counter()
        r = model.run(img, head=d, camera=hint)
        lat.append(time.perf_counter() - t0)
        base = float(np.median(model.clamp(r["depth"], d)))
        score(ev["given"], model.clamp(r["depth"], d), gt)
        score(ev["given_on_crop"], model.clamp(r["depth"], d), gt, window)
        a = model.run(img, camera=hint)
        chosen["1x"].append(a["head"])
        ood["1x"].append(a["ood"])
        score(ev["auto"], model.clamp(a["depth"], a["head"]), gt)
        t0 = time.perf_counter()
        lg = legacy_run(model, img, d)
        lat_legacy.append(time.perf_counter() - t0)
        score(ev["legacy_given"], model.clamp(lg["depth"], d), gt)
        la = legacy_run(model, img)
        legacy_chosen.append(la["head"])
        score(ev["legacy_auto"], model.clamp(la["depth"], la["head"]), gt)
        rs = rescale.run(img, head=d, camera=hint)
        score(ev["rescale_given"], model.clamp(rs["depth"], d), gt)
        for cond in CONDITIONS[1:]:
            frame, f = variant(img, cond)
            cam = given_camera(letter, root, frame, f) if cond != "flipped" else hint
            back = (lambda x: x[:, ::-1].copy()) if cond == "flipped" else (lambda x: x)
            g = model.run(frame, head=d, camera=cam)
            depth = back(model.clamp(g["depth"], d))
            score(ev[f"{cond}_given"], np.asarray(Image.fromarray(depth).resize(img.size, Image.BILINEAR))
                  if f != 1.0 else depth, gt)
            ratios[cond].append(float(np.median(depth)) / base)
            a = model.run(frame, camera=cam)
            chosen[cond].append(a["head"])
            ood[cond].append(a["ood"])
            depth = back(model.clamp(a["depth"], a["head"]))
            score(ev[f"{cond}_auto"], np.asarray(Image.fromarray(depth).resize(img.size, Image.BILINEAR))
                  if f != 1.0 else depth, gt)
    # test.py's numbers on the same images: the domain's test crops through the same predictor
    ds = test_dataset(letter, root, default_scale(model.predictor.meta), max_images=args.frames)
    crops = evaluate_split(model.predictor, make_loader(ds, 4, 0, torch.device("cpu")), d, spec)["prior"]
    size = list(Image.open(rows[0][0]).size)
    out = {"frame_size": size, "frames": len(rows), "head": letter,
           "metrics": {k: metrics_of(v) for k, v in ev.items()},
           "test_py": {k: float(crops[k]) for k in ("abs_rel", "rmse", "delta1")},
           "right_head": {c: sum(h == d for h in v) for c, v in chosen.items()},
           "legacy_right_head": sum(h == d for h in legacy_chosen),
           "flagged": {c: sum(bool(o) for o in v) for c, v in ood.items()},
           "median_ratio": {c: {"median": statistics.median(v), "worst": max(v, key=lambda x: abs(x - 1))}
                            for c, v in ratios.items()},
           "latency_ms": 1000 * statistics.median(lat), "latency_legacy_ms": 1000 * statistics.median(lat_legacy),
           "input_size": r["input_size"], "camera": r["camera"]["assumed"]}
    log(f"  {letter}: given AbsRel {out['metrics']['given']['abs_rel']:.3f} (test.py "
        f"{out['test_py']['abs_rel']:.3f}), right head {out['right_head']}, flagged {out['flagged']}")
    return out


def non_scenes(n: int, size=(320, 240), seed=0):
    """Images that are not scenes: noise, flat colours, checkerboards, gradients, stripes."""
    rng = np.random.default_rng(seed)
    w, h = size
    out = []
    for i in range(n):
        kind = i % 5
        if kind == 0:
            a = rng.integers(0, 256, (h, w, 3))
        elif kind == 1:
            a = np.broadcast_to(rng.integers(0, 256, 3), (h, w, 3))
        elif kind == 2:
            k = int(rng.integers(4, 40))
            a = ((np.add.outer(np.arange(h) // k, np.arange(w) // k) % 2)[..., None] * 255).repeat(3, 2)
        elif kind == 3:
            a = np.linspace(0, 255, w)[None, :, None] * rng.uniform(0.2, 1.0, 3)[None, None, :]
            a = np.broadcast_to(a, (h, w, 3))
        else:
            a = (np.sin(np.arange(w) / rng.uniform(2, 20))[None, :, None] * 127 + 128) * np.ones((h, 1, 3))
        out.append(Image.fromarray(np.ascontiguousarray(a).astype(np.uint8)))
    return out


def ood_benchmark(model, args) -> dict:
    from data.synthetic import render_aerial
    aerial = [model.run(Image.fromarray(render_aerial(i, scale=0.5)["image"]))["ood"] for i in range(args.ood_frames)]
    other = [model.run(img)["ood"] for img in non_scenes(args.ood_frames)]
    return {"aerial": {"frames": len(aerial), "flagged": sum(bool(o) for o in aerial)},
            "non_scenes": {"frames": len(other), "flagged": sum(bool(o) for o in other)}}


def fmt(m) -> str:
    return f"{m['abs_rel']:.3f} / {m['rmse']:.3f} / {m['delta1']:.3f}"


def tables(result) -> str:
    lines = ["| frames (synthetic) | head | right head | AbsRel / RMSE (m) / δ1 | today's rule (squeezed) | "
             "`test.py` on the same images (crops) |", "|---|---|---:|---|---|---|"]
    for c, r in result["domains"].items():
        n = r["frames"]
        w, h = r["frame_size"]
        m = r["metrics"]
        lines.append(f"| {c}-like {w}x{h} | automatic | {r['right_head']['1x']}/{n} | {fmt(m['auto'])} | "
                     f"{fmt(m['legacy_auto'])} ({r['legacy_right_head']}/{n} right head) | {fmt(r['test_py'])} |")
        lines.append(f"| {c}-like {w}x{h} | `--domain {c}` | – | {fmt(m['given'])} | {fmt(m['legacy_given'])} | "
                     f"(same) |")
        lines.append(f"| {c}-like {w}x{h}, scored on `test.py`'s crop only | `--domain {c}` | – | "
                     f"{fmt(m['given_on_crop'])} | | {fmt(r['test_py'])} |")
    lines += ["", "| frames | condition | right head (automatic) | AbsRel / RMSE / δ1, head given | median depth / 1x "
              "(median, worst) | flagged out of domain |", "|---|---|---:|---|---|---:|"]
    for c, r in result["domains"].items():
        n = r["frames"]
        for cond in CONDITIONS:
            m = r["metrics"]["given" if cond == "1x" else f"{cond}_given"]
            ratio = "1" if cond == "1x" else (f"{r['median_ratio'][cond]['median']:.4f}, "
                                              f"{r['median_ratio'][cond]['worst']:.4f}")
            lines.append(f"| {c} | {cond} | {r['right_head'][cond]}/{n} | {fmt(m)} | {ratio} | "
                         f"{r['flagged'][cond]}/{n} |")
    lines += ["", "| frames | `--camera-mode resample` (default) | `--camera-mode rescale` | whole-frame input | "
              "latency whole frame / today's rule |", "|---|---|---|---|---:|"]
    for c, r in result["domains"].items():
        h, w = r["input_size"]
        lines.append(f"| {c} | {fmt(r['metrics']['given'])} | {fmt(r['metrics']['rescale_given'])} | {w}x{h} | "
                     f"{r['latency_ms']:.0f} / {r['latency_legacy_ms']:.0f} ms |")
    o = result["ood"]
    lines += ["", f"Out of domain flagged: aerial (fourth synthetic domain) {o['aerial']['flagged']}/"
              f"{o['aerial']['frames']}, non-scene images {o['non_scenes']['flagged']}/{o['non_scenes']['frames']}, "
              f"in-domain frames (all conditions) {result['in_domain_flagged']}/{result['in_domain_frames']}."]
    return "\n".join(lines)


def build_parser():
    p = argparse.ArgumentParser(description="Raw frames through predict.py's path, scored against ground truth.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default="runs/quickstart/NKS.pth.tar", help="a project checkpoint")
    p.add_argument("--data-root", default="datasets/synthetic", help="synthetic data root (test and replay rows)")
    p.add_argument("--frames", type=int, default=20, help="test frames per domain")
    p.add_argument("--ood-frames", type=int, default=40, help="frames of the unlearned domain and non-scene images")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--work", default="runs/frames", help="folder for the checkpoint copy with frame statistics")
    p.add_argument("--out", default="runs/frames/bench_frames.json", help="JSON result")
    p.add_argument("--quick", action="store_true", help="smoke run: 4 frames per domain, 5 out-of-domain images")
    p.add_argument("--real-height", type=int, default=20,
                   help="K-like frames rendered at KITTI's raw frame geometry (1242x375 at scale 1) through the "
                        "frame rules and the tiles' anchoring (0: none)")
    p.add_argument("--rules-only", action="store_true",
                   help="only the frame rules side by side (windowed, tiled: --frame-rule of predict.py), "
                        "interleaved per frame, with the one-head function on the same input")
    return p


def main(argv=None) -> int:
    from bench_stream import cpu_name
    args = build_parser().parse_args(argv)
    if args.quick:
        args.frames, args.ood_frames, args.real_height = 4, 5, min(args.real_height, 4)
    if args.threads:
        torch.set_num_threads(args.threads)
    root, work = Path(args.data_root), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    ckpt = with_statistics(Path(args.checkpoint), root, work, log)
    model = P.Predictor(ckpt, P.ImageOptions(quiet=True), device=resolve_device("auto"))
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_name(),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "checkpoint": str(args.checkpoint),
              "statistics_checkpoint": str(ckpt), "predictor": predictor_settings(model.predictor),
              "domains": {}, "rules": {}}
    for c in model.letters:
        result["rules"][c] = rule_benchmark(model, c, root, args, log)
    if args.real_height and "K" in model.letters:
        result["real_height"] = real_height_benchmark(model, args, log)
    if args.rules_only:
        print(f"Frame rules ({result['cpu']}, {result['threads']} torch threads, {result['date']}; synthetic "
              f"data):\n")
        print(rule_table(result))
        write_json(args.out, result)
        log(f"\n-> {args.out}")
        return 0
    for c in model.letters:
        result["domains"][c] = domain_benchmark(model, c, root, args, log)
    result["ood"] = ood_benchmark(model, args)
    result["in_domain_frames"] = sum(r["frames"] * len(CONDITIONS) for r in result["domains"].values())
    result["in_domain_flagged"] = sum(sum(r["flagged"].values()) for r in result["domains"].values())
    print(f"Raw frames through predict.py's path ({result['cpu']}, {result['threads']} torch threads, "
          f"{result['date']}; synthetic data):\n")
    print(tables(result))
    print("\n" + rule_table(result))
    write_json(args.out, result)
    log(f"\n-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
