"""The same frames through every user path, against the PyTorch float32 reference (issue 36).

    python bench/bench_paths.py --checkpoint runs/quickstart/NKS.pth.tar --data-root /tmp/seed11
    python bench/bench_paths.py --quick ...                # 1 frame per domain, the in-process paths only

For each learned domain, the first ``--frames`` test files *as they lie on disk* (no domain
transform) go through:

* the reference: ``DepthPredictor(fast=False, precision="fp32", backend="torch").predict_image``
  with predict.py's camera hint of the file (``inference.images.camera_hint``);
* ``DepthPredictor.predict_image`` on each backend: the default (``backend="auto"``), PyTorch
  bf16, ONNX Runtime (float32), OpenVINO f32 and bf16;
* predict.py as a user runs it (its defaults): on each file, on the folder of the domain's frames,
  on that folder with ``--stream --save-depth``, and on a video of the frames (lossless-as-possible
  H.264, yuv444p at qp 0; that path's reference is computed on the decoded frames, so the codec's
  own rounding is not counted against the path);
* the demo's function (``cli.demo.infer``: its camera hint and head choice, captured at its
  ``Predictor.run``);
* an exported ONNX model (``export.py --format onnx --domain <the reference's head>``, run in ONNX
  Runtime): the network only, fed the frame resampled to the reference's network input in one pass
  (no tiles) and multiplied by the reference's depth scale, as a user of the file would have to.

Every depth is clamped to its head's depth range (the written files' rule). Per path: frames whose
head differs from the reference's; the largest and the median of the per-frame max / median
absolute difference in metres; the worst per-frame median |difference| relative to the reference's
median depth (goal: 0.5 %); the quantisation step (``plateau_step``: the finest spacing between the
distinct values of plateaus in the [5, 10) m and [40, 80) m bands, where a coarse output format has
its largest steps: bfloat16 0.03-0.06 m and 0.25 m; "-" = no plateaus, a continuous output; goal:
at most 0.01 m and 0.05 m); AbsRel, RMSE and delta1 against the ground
truth with the domain's conventions (``evaluation.DomainEvaluator``: caps, Eigen/Garg crops,
per-image means). A path that misses a goal is marked so in the table.

A checkpoint without the frame statistics gets them computed from ``--data-root``'s replay rows into
a copy (bench_frames.with_statistics). Figures on synthetic data are labelled so.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import math
import platform
import shutil
import sys
import tempfile
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
from base.safeio import write_json  # noqa: E402
from bench_frames import raw_rows, score, with_statistics  # noqa: E402
from evaluation.evaluate import DomainEvaluator  # noqa: E402
from inference import images as P  # noqa: E402
from inference.predictor import DepthPredictor  # noqa: E402
from models.checkpoint import checkpoint_meta  # noqa: E402
from models.runtimes import available  # noqa: E402

MEDIAN_GOAL = 0.005          # per frame: median |path - reference| / median reference depth
STEP_GOALS = {"5-10 m": (5.0, 10.0, 0.01), "40-80 m": (40.0, 80.0, 0.05)}
BACKENDS = (("predict_image default (auto)", {}),
            ("predict_image torch bf16", {"backend": "torch", "precision": "bf16"}),
            ("predict_image onnxruntime f32", {"backend": "onnxruntime", "precision": "fp32"}),
            ("predict_image openvino f32", {"backend": "openvino", "precision": "fp32"}),
            ("predict_image openvino bf16", {"backend": "openvino", "precision": "bf16"}))
CLI_PATHS = ("predict.py file", "predict.py folder", "predict.py --stream", "predict.py video", "demo infer")
EXPORT_PATH = "exported ONNX (network only)"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="project checkpoint (frame statistics added into a "
                                                       "copy under --work when it stores none)")
    p.add_argument("--data-root", required=True, help="data root whose test rows give the frames and the "
                                                      "ground truth (e.g. synthetic.py --seed 11 output)")
    p.add_argument("--frames", type=int, default=4, help="test frames per domain")
    p.add_argument("--domains", default=None, help="letters of the domains to run (default: every learned one)")
    p.add_argument("--work", default=None, help="folder for the copies, videos and outputs (default: a "
                                                "temporary folder, removed)")
    p.add_argument("--threads", type=int, default=None, help="torch/runtime threads (default: torch's)")
    p.add_argument("--skip", default="", help="comma-separated path names (or prefixes) to leave out")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 frame per domain, no CLI paths, no "
                                                        "video, no OpenVINO")
    p.add_argument("--out", default="runs/bench_paths.json", help="JSON of the per-path figures")
    return p.parse_args(argv)


def quiet_call(fn, *args, **kwargs):
    """``fn`` with its stdout/stderr captured; (result, captured text)."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        result = fn(*args, **kwargs)
    return result, out.getvalue() + err.getvalue()


def clamp(depth, head, ranges):
    lo, hi = ranges[head]
    return np.clip(np.asarray(depth, np.float32), lo, hi)


def plateau_step(depths, lo: float, hi: float):
    """The step of a quantised depth output as a user sees it: the finest spacing between the
    distinct values of plateaus (pixels equal to a neighbour across and one down; bilinear upsampling and tile
    blending keep a terraced map's plateaus) within [lo, hi). None where fewer than two plateau
    values lie there: a continuous output (float32's plateaus are the clamp limits, outside the
    bands)."""
    values = []
    for d in depths:
        across, down = np.zeros(d.shape, bool), np.zeros(d.shape, bool)
        h, v = d[:, 1:] == d[:, :-1], d[1:, :] == d[:-1, :]
        across[:, 1:] |= h
        across[:, :-1] |= h
        down[1:, :] |= v
        down[:-1, :] |= v
        values.append(d[across & down])  # equal to a neighbour in both directions: a 2-D plateau
    v = np.unique(np.concatenate(values)) if values else np.zeros(0)
    v = v[(v >= lo) & (v < hi)]
    return float(np.min(np.diff(v))) if v.size >= 2 else None


class Paths:
    """The frames of one run and the figures of every path."""

    def __init__(self, checkpoint: Path, work: Path, threads):
        self.checkpoint, self.work, self.threads = checkpoint, work, threads
        self.ref = DepthPredictor.from_checkpoint(checkpoint, fast=False, precision="fp32", backend="torch")
        meta = checkpoint_meta(self.ref)
        self.letters = meta.letters
        self.ranges = [tuple(r) for r in meta.depth_ranges]
        self.records = {}  # path -> list of per-frame dicts

    def reference(self, img, path):
        hint = P.camera_hint(P.ImageOptions(), path)
        r = self.ref.predict_image(img, camera=hint)
        return dict(r, depth=clamp(r["depth"], r["head"], self.ranges))

    def add(self, name, letter, depth, head, ref, gt):
        d = clamp(depth, head, self.ranges)
        diff = np.abs(d.astype(np.float64) - ref["depth"])
        self.records.setdefault(name, []).append({
            "letter": letter, "head": int(head), "ref_head": int(ref["head"]),
            "max_m": float(diff.max()), "median_m": float(np.median(diff)),
            "median_rel": float(np.median(diff) / max(float(np.median(ref["depth"])), 1e-6)),
            "depth": d, "gt": gt})


def cli_args(checkpoint):
    """predict.py's options here: its defaults otherwise (threads: torch's, set in this process)."""
    return ["--checkpoint", str(checkpoint), "--no-plots", "--quiet"]


def run_cli_paths(paths: Paths, frames, skip):
    """predict.py on files, a folder, --stream, a video, and the demo's function."""
    from cli import predict as CP
    common = cli_args(paths.checkpoint)
    for letter, items in frames.items():
        folder = paths.work / f"frames_{letter}"
        folder.mkdir(parents=True, exist_ok=True)
        for k, (src, _, _, _) in enumerate(items):
            shutil.copy(src, folder / f"{k:04d}{src.suffix}")
        files = sorted(folder.iterdir())
        if not skipped("predict.py file", skip):
            for k, f in enumerate(files):
                out = paths.work / f"file_{letter}_{k}"
                status, text = quiet_call(CP.main, [str(f), "--out", str(out), *common])
                check(status, text, "predict.py file")
                paths.add("predict.py file", letter, np.load(out / f"{f.stem}_depth.npy"), read_head(out),
                          items[k][2], items[k][3])
        if not skipped("predict.py folder", skip):
            out = paths.work / f"folder_{letter}"
            status, text = quiet_call(CP.main, [str(folder), "--out", str(out), *common])
            check(status, text, "predict.py folder")
            heads = read_heads(out)
            for k, f in enumerate(files):
                paths.add("predict.py folder", letter, np.load(out / f"{f.stem}_depth.npy"), heads[f.name],
                          items[k][2], items[k][3])
        if not skipped("predict.py --stream", skip):
            out = paths.work / f"stream_{letter}"
            status, text = quiet_call(CP.main, [str(folder), "--out", str(out), "--stream", "--save-depth", *common])
            check(status, text, "predict.py --stream")
            heads = stream_heads(out / f"{folder.name}_frames.csv")
            for k, f in enumerate(files):
                paths.add("predict.py --stream", letter, np.load(out / f"{folder.name}_depth" / f"{f.stem}_depth.npy"),
                          heads[f.stem], items[k][2], items[k][3])
        if not skipped("predict.py video", skip):
            run_video(paths, letter, items, common)
        if not skipped("demo infer", skip):
            run_demo(paths, letter, items, files)


def check(status, text, name):
    if status != 0:
        raise SystemExit(f"{name} failed (exit status {status}):\n{text[-2000:]}")


def read_head(out: Path) -> int:
    return next(iter(read_heads(out).values()))


def read_heads(out: Path) -> dict:
    from base.safeio import read_json
    letters_of = read_json(out / "predictions.json")["images"]
    return {Path(i["file"]).name: LETTERS.index(i["letter"]) for i in letters_of}


def stream_heads(log: Path) -> dict:
    import csv
    with open(log, newline="") as f:
        rows = list(csv.DictReader(f))
    return {r["name"]: LETTERS.index(r["head"]) for r in rows}  # the chosen head's letter


LETTERS = ""


def run_video(paths: Paths, letter, items, common):
    """The frames as a video (H.264 yuv444p, qp 0), through predict.py; the reference on the decoded frames."""
    import imageio.v2 as iio
    from cli import predict as CP
    from inference.stream import iter_video, open_video
    video = paths.work / f"video_{letter}.mp4"
    writer = iio.get_writer(str(video), format="FFMPEG", fps=5, codec="libx264", pixelformat="yuv444p",
                            macro_block_size=1, output_params=["-qp", "0"])
    for _, img, _, _ in items:
        writer.append_data(np.asarray(img))
    writer.close()
    out = paths.work / f"videoout_{letter}"
    status, text = quiet_call(CP.main, [str(video), "--out", str(out), "--save-depth", *common])
    check(status, text, "predict.py video")
    heads = stream_heads(out / f"{video.stem}_frames.csv")
    reader, _ = open_video(video)
    try:
        for k, (name, rgb) in enumerate(iter_video(reader)):
            if k >= len(items):
                break
            ref = paths.reference(Image.fromarray(rgb), None)
            paths.add("predict.py video", letter, np.load(out / f"{video.stem}_depth" / f"{name}_depth.npy"),
                      heads[name], ref, items[k][3])
    finally:
        reader.close()


def run_demo(paths: Paths, letter, items, files):
    from cli.demo import Models, infer
    ns = argparse.Namespace(checkpoint=str(paths.checkpoint), order=None, replay_root=None, device="cpu",
                            max_models=1, max_pixels=None)
    models = Models(ns)
    model = models.get(str(paths.checkpoint))
    seen = []
    real = model.run

    def capture(*a, **k):
        r = real(*a, **k)
        seen.append(r)
        return r
    model.run = capture
    for k, f in enumerate(files):
        infer(models, str(f), str(paths.checkpoint), None, paths.work / "demo")  # automatic head
        r = seen[-1]
        paths.add("demo infer", letter, r["depth"], r["head"], items[k][2], items[k][3])


def run_backends(paths: Paths, frames, skip, quick):
    for name, options in BACKENDS:
        if skipped(name, skip) or (quick and "openvino" in name):
            continue
        backend = options.get("backend")
        if backend in ("onnxruntime", "openvino") and not available(backend):
            print(f"  {name}: {backend} not installed, left out")
            continue
        p = DepthPredictor.from_checkpoint(paths.checkpoint, **options)
        for letter, items in frames.items():
            for src, img, ref, gt in items:
                r = p.predict_image(img, camera=P.camera_hint(P.ImageOptions(), src))
                paths.add(name, letter, r["depth"], r["head"], ref, gt)


def run_export(paths: Paths, frames, skip):
    """The exported ONNX file of each reference head, fed the reference's resampled input in one pass."""
    if skipped(EXPORT_PATH, skip) or not available("onnxruntime"):
        return
    from inference.export import export_net, load_onnx
    from inference.frames import resized, to_tensor
    from losses import upsample_to
    from models import load_checkpoint
    net = load_checkpoint(paths.checkpoint)
    sessions = {}
    for letter, items in frames.items():
        for src, img, ref, gt in items:
            head = ref["head"]
            if head not in sessions:
                out = paths.work / f"export_{head}.onnx"
                export_net(net, out, format="onnx", domain=head)
                sessions[head] = load_onnx(out)[0]
            session = sessions[head]
            h, w = ref["input_size"]
            x = resized(to_tensor(img), h, w)
            outs = session.run(None, {session.get_inputs()[0].name: x.numpy()})
            depth = torch.from_numpy(outs[0])
            W, H = img.size
            d = upsample_to(depth, (H, W))[0, 0].numpy() * ref["depth_scale"]
            paths.add(EXPORT_PATH, letter, d, head, ref, gt)


def skipped(name, skip) -> bool:
    return any(s and name.startswith(s) for s in skip)


def summarise(paths: Paths, data_root) -> list:
    rows = []
    for name, recs in paths.records.items():
        steps = {band: plateau_step([r["depth"] for r in recs], lo, hi) for band, (lo, hi, _) in STEP_GOALS.items()}
        evaluators = {}
        for r in recs:
            ev = evaluators.setdefault(r["letter"], DomainEvaluator(get_domain(r["letter"]), crop="default", cap=True))
            score(ev, r["depth"], r["gt"])
        metrics = {c: ev.result() for c, ev in evaluators.items()}
        worst_rel = max(r["median_rel"] for r in recs)
        misses = []
        if worst_rel > MEDIAN_GOAL:
            misses.append("median")
        for band, (_, _, goal) in STEP_GOALS.items():
            if steps[band] is not None and steps[band] > goal:
                misses.append(f"step {band}")
        rows.append({"path": name, "frames": len(recs),
                     "heads_differ": sum(r["head"] != r["ref_head"] for r in recs),
                     "max_m": max(r["max_m"] for r in recs),
                     "median_of_max_m": float(np.median([r["max_m"] for r in recs])),
                     "median_m": float(np.median([r["median_m"] for r in recs])),
                     "worst_median_rel": worst_rel, "steps_m": steps,
                     "metrics": {c: {k: m[k] for k in ("abs_rel", "rmse", "delta1")} for c, m in metrics.items()},
                     "misses": misses})
    return rows


def markdown(rows, letters) -> str:
    head = ("| path | frames | heads differ | max diff m | median diff m | worst median diff / median depth "
            "| step 5-10 m | step 40-80 m | " + " | ".join(f"{c} AbsRel / RMSE / d1" for c in letters)
            + " | goal |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    fmt = lambda v, s=".4f": "-" if v is None else format(v, s)  # noqa: E731
    for r in rows:
        cells = [f"{fmt(m.get('abs_rel'), '.3f')} / {fmt(m.get('rmse'), '.3f')} / {fmt(m.get('delta1'), '.3f')}"
                 if (m := r["metrics"].get(c)) else "-" for c in letters]
        lines.append(f"| {r['path']} | {r['frames']} | {r['heads_differ']} | {r['max_m']:.4f} | {r['median_m']:.5f} | "
                     f"{100 * r['worst_median_rel']:.3f} % | {fmt(r['steps_m']['5-10 m'], '.2g')} | "
                     f"{fmt(r['steps_m']['40-80 m'], '.2g')} | " + " | ".join(cells) + " | "
                     + ("met" if not r["misses"] else "**missed: " + ", ".join(r["misses"]) + "**") + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    global LETTERS
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    frames_n = 1 if args.quick else max(1, args.frames)
    skip = [s.strip() for s in args.skip.split(",") if s.strip()]
    tmp = None
    work = Path(args.work) if args.work else Path(tmp := tempfile.mkdtemp(prefix="bench_paths_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        checkpoint = with_statistics(Path(args.checkpoint), Path(args.data_root), work)
        paths = Paths(checkpoint, work, args.threads)
        LETTERS = paths.letters
        letters = args.domains or paths.letters
        frames = {}
        for c in letters:
            items = []
            for src, gt in raw_rows(c, Path(args.data_root), frames_n):
                img = P.read_rgb(src)
                items.append((src, img, paths.reference(img, src), gt))
            frames[c] = items
            paths.records.setdefault("reference: predict_image torch fp32", [])
            for src, img, ref, gt in items:
                paths.add("reference: predict_image torch fp32", c, ref["depth"], ref["head"], ref, gt)
        run_backends(paths, frames, skip, args.quick)
        if not args.quick:
            run_cli_paths(paths, frames, skip)
            run_export(paths, frames, skip)
        rows = summarise(paths, args.data_root)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - t0
    print(f"bench_paths: {args.checkpoint} on the first {frames_n} test frame(s) of {''.join(letters)} under "
          f"{args.data_root} (synthetic data where synthetic.py made it); {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; {seconds:.0f} s")
    print(markdown(rows, letters))
    missed = [r["path"] for r in rows if r["misses"]]
    if missed:
        print("paths that miss a goal (0.5 % of the median depth per frame; steps of 1 cm below 10 m, 5 cm "
              "below 80 m): " + "; ".join(missed))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, {"checkpoint": str(args.checkpoint), "data_root": str(args.data_root),
                          "frames": frames_n, "seconds": seconds, "rows": rows,
                          "goals": {"median_rel": MEDIAN_GOAL, "steps_m": {k: v[2] for k, v in STEP_GOALS.items()}}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
