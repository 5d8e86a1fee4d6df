"""Metric depth for any image or folder of images with a Lifelong-MonoDepth checkpoint.

    python predict.py photo.jpg --checkpoint runs/NKS.pth.tar --out predictions
    python predict.py frames/ --domain K --ply                      # force the KITTI head, point clouds
    python predict.py room.png --ply --intrinsics 518.9,519.5,325.6,253.7
    python predict.py drive.mp4 --out out/      # a video: depth video + per-frame log (inference/stream.py)

For each image ``<name>`` it writes into ``--out`` (the writer: inference/outputs.py, also
``DepthPredictor.write_outputs`` from Python):

* ``<name>_depth.png``: 16-bit PNG, depth in millimetres (round(depth * 1000), clipped to 0..65535,
  so depths beyond 65.535 m saturate; the .npy keeps them);
* ``<name>_depth.npy``: float32 depth in metres at the original image size;
* ``<name>_depth_color.png``: the depth colour-mapped, with a colour bar in metres;
* ``<name>_uncertainty.png``: the predicted uncertainty (log-variance) colour-mapped, with its bar;
* ``<name>_depth_lower90.png`` / ``_upper90.png`` (16-bit mm) and ``.npy`` (metres) with
  ``--intervals 90``: the central 90 % interval of each pixel's depth (base/uncertainty.py: the
  spread from the predicted log-variance, under the head's calibration fitted on whole frames,
  evaluation/frame_calibration.py); predictions.json gives, per image, the coverage MEASURED on this
  path (whole frames; none under --size) for that head: on its test frames where stored, else
  leave-one-image-out on its validation frames, and one sentence on what the interval means;
* ``<name>.ply`` with ``--ply``: a coloured point cloud (binary PLY, metres, camera frame: x right,
  y down, z forward) with the frame camera the prediction used (below).

Each image goes through the frame pipeline (inference/frames.py), the same rule as the streams and
the demo: the head is ``--domain``, or chosen on the whole frame (aspect ratio kept) by the
checkpoint's frame statistics, which also say when no learned head fits ("OUT OF DOMAIN" in the
message, ``out_of_domain`` in predictions.json; ``--domain`` still forces a head). The frame's camera
is ``--intrinsics``, ``--fov``, the photo's EXIF 35 mm focal length, or else the chosen head's field of
view is assumed (printed, and ``camera`` in the JSON); the frame is resampled so that its focal length
matches the one the head learned (``--camera-mode rescale``: its own pixels, depth times the focal
ratio), padded to the network's stride, run through the chosen head only, and the depth brought
back to the original size. ``--size HxW`` instead squeezes every image to that input (the old rule).

Grayscale, 16-bit, palette and alpha images are converted to RGB (``loaders.load_rgb``), phone
photos turned upright by their EXIF orientation. An image with more than ``--max-pixels`` pixels
(read from its header, before decoding) is refused. A file that cannot be read is reported and
skipped; the others are still processed, and the exit status is 1 if any failed. Inputs whose
names would give the same outputs (x.png, x.PNG, x.jpg; compared without case) get distinct names:
the extension appended (x_png), then _2, _3 where that is taken.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cli import stream  # video files and frame folders
from cli.errors import CLIError, printable, run_command
from cli.options import (HelpFormatter, add_checkpoint_arguments, add_runtime_arguments,
                         add_selector_arguments, checked_type, help_of, parse_letters, parse_size,
                         runtime_options)
from engine.processes import resolve_device
from base.domains import get_domain
from base.safeio import write_json
from inference.frames import FRAME_RULES
from inference.known_depth import describe_fit, known_depth_file, read_known_depth
from inference.predictor import predictor_settings
from inference.images import (ImageOptions, Predictor, collect_inputs, make_out_dir, output_stems, parse_intrinsics,
                              parse_max_pixels, read_rgb)
from inference.outputs import ply_intrinsics, prediction_record, write_prediction
from base.safeio import clean_stale_temps
from base.uncertainty import calibration_note, interval_summary
from cli.options import add_interval_argument, parse_interval


def check_max_depth(value) -> None:
    if value is not None and not 0 < value < math.inf:
        raise CLIError(f"--max-depth {value!r}: expected a positive number of metres (the top of the colour bar)")


def clean_output_litter(out_dir: Path, stems) -> None:
    """Temp files of writes killed in an earlier run (and the old predictions.json.tmp)."""
    for folder in {out_dir, *(Path(s).parent for s in stems)}:
        clean_stale_temps(folder)
    (out_dir / "predictions.json.tmp").unlink(missing_ok=True)


def interval_level(args):
    """--intervals as a central coverage in (0, 1), or None when not asked for."""
    if args.intervals is None:
        return None
    try:
        return parse_interval(args.intervals)
    except ValueError as e:
        raise CLIError(str(e)) from None


def warn_line(message) -> None:
    """A library warning (inference/outputs.py: PNG pixels that saturate) as one stderr line."""
    tqdm.write(f"warning: {printable(message, '')}", file=sys.stderr)


def frame_verdict(r) -> str:
    """The printed line's frame notes: the out-of-domain verdict and the camera assumed."""
    text = "; OUT OF DOMAIN: no learned head fits this image, the depth is a guess" if r.get("ood") else ""
    if r.get("camera"):
        text += f"; camera: {r['camera']['assumed']}"
    return text


def main(argv=None) -> int:
    """Run predict.py; returns the exit status (0 = every image written, 1 = some failed). What the
    library refuses (a checkpoint, a setting, an input) is one ``error:`` line (exit status 1)."""
    return run_command(predict_command, argv)


def predict_command(argv) -> int:
    """predict.py itself; :func:`main` turns what the library refuses into one error line."""
    args = build_parser().parse_args(argv)
    check_max_depth(args.max_depth)
    if stream.is_stream_input(args):  # a video file or --stream folder: cli/stream.py's path
        device = resolve_device(args.device)
        return stream.main_stream(args, lambda: predictor_of(args, device))
    if args.ply_stride < 1:
        raise CLIError(f"--ply-stride must be at least 1, got {args.ply_stride}")
    level = interval_level(args)
    given_k = parse_intrinsics(args.intrinsics) if args.intrinsics else None
    device = resolve_device(args.device)
    target, out_dir = Path(args.input), Path(args.out)
    images, notes = collect_inputs(target, out_dir, args.recursive)
    for n in notes:
        print(printable(n, ""), file=sys.stderr)
    if not images:
        raise CLIError(f"no image files found in {str(target)!r}")
    make_out_dir(out_dir)  # before loading the model: a wrong --out fails at once
    model = predictor_of(args, device)
    note = calibration_note(model.predictor.meta, len(model.letters)) if level is not None else None
    if note:
        print(note, file=sys.stderr)
    stems = output_stems(images, target, out_dir)
    clean_output_litter(out_dir, stems.values())
    failed, done = [], []
    bar = tqdm(images, desc="predict", unit="img", disable=args.quiet, dynamic_ncols=True)
    for f in bar:
        try:
            img = read_rgb(f, args.max_pixels)
        except Exception as e:  # noqa: BLE001 - any unreadable file is reported, the rest go on
            msg = str(e) if str(f) in str(e) else f"{f}: {e}"
            tqdm.write(f"skipping {printable(msg, '')}", file=sys.stderr)
            failed.append({"file": str(f), "error": msg})
            continue
        try:
            t0 = time.perf_counter()
            r = model.run(img, camera=model.camera_of(f))
            depth, unc, head, how = r["depth"], r["uncertainty"], r["head"], r["how"]
            known = known_scale(args, model, r, f, img.size, level)
            depth = known.pop("depth", depth)
            if not args.no_clamp:
                depth = model.clamp(depth, head)
            seconds = time.perf_counter() - t0
            stem = stems[f]
            letter = model.letters[head]
            interval = None
            if level is not None and unc is not None:
                lower, upper = model.interval(depth, unc, head, level)
                interval = dict(interval_summary(model.predictor.meta, head, len(model.letters), level,
                                                 model.interval_path), lower=lower, upper=upper)
            k, source = ply_intrinsics(r.get("camera"), letter, img.size, given_k) if args.ply else (None, None)
            written = write_prediction(stem, depth, uncertainty=unc, interval=interval,
                                       rgb=np.asarray(img) if args.ply else None, intrinsics=k,
                                       colour_maps=not args.no_plots, max_depth=args.max_depth,
                                       ply_stride=args.ply_stride, source=f, warn=warn_line)
            ply_note = f", {written.points} points ({source} intrinsics)" if args.ply else ""
        except Exception as e:  # noqa: BLE001 - one image's failure must not stop the folder
            msg = f"{f}: prediction failed ({type(e).__name__}: {e})"
            tqdm.write(f"skipping {printable(msg, '')}", file=sys.stderr)
            failed.append({"file": str(f), "error": msg})
            continue
        name = get_domain(letter).name
        verdict = frame_verdict(r) + (f", {describe_fit(known)}" if known else "")
        tqdm.write(f"{printable(f, '')}: {name} ({letter}, {how}), depth {float(depth.min()):.3f}-{float(depth.max()):.3f} m, "
                   f"{img.size[0]}x{img.size[1]}, {seconds * 1000:.0f} ms{ply_note}{verdict} -> {printable(stem, '')}_depth.png")
        done.append(prediction_record(f, letter, how, depth, img.size, written.paths, r, interval, known))
    bar.close()
    write_json(out_dir / "predictions.json", {"checkpoint": args.checkpoint,
                                                  "predictor": predictor_settings(model.predictor),
                                                  "images": done,
                                                  "failed": failed,
                                                  **({"uncertainty_note": note} if level is not None else {})})
    meanings = {d["letter"]: d["interval"]["meaning"] for d in done if d.get("interval")}
    for letter, meaning in meanings.items():  # what the interval means, once per head used
        print(f"--intervals, head {letter}: {meaning}")
    print(f"{len(done)} of {len(images)} image(s) written to {printable(out_dir, '')}"
          + (f"; {len(failed)} failed:" if failed else ""))
    for item in failed:
        print(f"  {printable(item['error'], '')}", file=sys.stderr)
    return 1 if failed else 0


def known_scale(args, model, r, path, size, level) -> dict:
    """--known-depth: the frame's scale fit (inference/known_depth.py) with the corrected depth
    under "depth" (the prediction when the check fails); {} without --known-depth or a file for it."""
    if not args.known_depth:
        return {}
    file = known_depth_file(args.known_depth, path)
    if file is None:
        return {"ok": False, "reason": f"no known-depth file for {Path(path).stem} in {args.known_depth}",
                "factor": 1.0, "points": 0, "agreed": 0}
    points = read_known_depth(file, size, args.known_depth_layout, args.known_depth_unit)
    depth, fit = model.correct_scale(r, points, level or 0.9)
    return dict(fit, file=file, depth=depth)


def image_options(args) -> ImageOptions:
    """The Predictor settings of predict.py's options (--size parsed here: one error line)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ImageOptions)}
    return ImageOptions(**dict(values, size=parse_size(args.size) if args.size else None))


def predictor_of(args, device) -> Predictor:
    """The Predictor of predict.py's options: checkpoint, --order, the image and runtime options."""
    options = image_options(args)
    # the backend measured on this machine where per-frame speed dominates (a folder, a video, a
    # stream); one image keeps the start-up of the table per CPU kind (a runtime's graphs are
    # exported and compiled on every start)
    many = Path(args.input).is_dir() or stream.is_stream_input(args)
    model = Predictor(args.checkpoint, options, device=device, runtime=runtime_options(args, measure=many),
                      order=parse_letters(args.order, "--order") if args.order else None)
    note = model.selector_note()
    if note:
        print(f"note: {note}", file=sys.stderr)
    return model


def add_image_argument(p, flag: str, **kwargs) -> None:
    """An option holding the ImageOptions field of its name: the field's default and help text."""
    spec = next(f for f in dataclasses.fields(ImageOptions) if f.name == flag[2:].replace("-", "_"))
    p.add_argument(flag, default=spec.default, help=spec.metadata["help"], **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """predict.py's options: the images' (ImageOptions' fields among them), the runtime and the
    stream group (cli/stream.py)."""
    p = argparse.ArgumentParser(
        description="Metric depth for an image or a folder of images: 16-bit millimetre PNG, float32 "
                    ".npy in metres, colour-mapped depth and uncertainty PNGs, optional PLY point cloud.",
        formatter_class=HelpFormatter)
    p.add_argument("input", help="an image file, or a folder of images (png, jpg, bmp, tif, webp, ...), "
                                 "or a video file (depth video + per-frame log; see the streams options)")
    add_checkpoint_arguments(p, "checkpoint (project format; an authors' file needs --order)")
    p.add_argument("--out", default="predictions", help="output folder (created)")
    add_image_argument(p, "--domain")
    add_selector_arguments(p, help_of(ImageOptions, "selector"), help_of(ImageOptions, "replay_root"))
    add_image_argument(p, "--size")
    p.add_argument("--recursive", action="store_true", help="also images in subfolders (mirrored in --out)")
    p.add_argument("--max-depth", type=float, default=None,
                   help="upper end of the depth colour bar in metres (default: each image's maximum)")
    p.add_argument("--no-clamp", action="store_true",
                   help="keep raw network depth; by default depth is clamped to the domain's range "
                        "(e.g. 1e-3..10 m for NYU)")
    p.add_argument("--no-plots", action="store_true",
                   help="skip the colour-mapped PNGs (faster; the 16-bit PNG and .npy are still written); "
                        "for a stream: no depth video (the log, and --save-depth files, still)")
    p.add_argument("--ply", action="store_true", help="also write a coloured point cloud <name>.ply")
    add_image_argument(p, "--intrinsics")
    p.add_argument("--ply-stride", type=int, default=1, help="keep every N-th pixel in x and y for --ply")
    add_image_argument(p, "--fov")
    add_image_argument(p, "--camera-mode", choices=("resample", "rescale"))
    add_image_argument(p, "--frame-rule", choices=FRAME_RULES)
    add_image_argument(p, "--max-pixels", type=checked_type(parse_max_pixels))
    add_interval_argument(p)
    p.add_argument("--known-depth", default=None, metavar="FILE",
                   help="known distances that fix each frame's scale: a CSV of x,y,metres (pixel column, row) or "
                        "a sparse depth image (see --known-depth-layout), or a folder of such files named by "
                        "image stem. The factor is the median of known/predicted ratios over the points that "
                        "agree (MAD outlier rejection); a frame whose points lie beyond the head's calibrated "
                        "interval (--intervals, else 90 %%) is flagged 'scale check failed' and not rescaled "
                        "(inference/known_depth.py)")
    p.add_argument("--known-depth-layout", default=None, choices=("tum", "png16", "npy", "kitti"),
                   help="how a sparse known-depth image stores depth: its unit (data/recordings.py; "
                        "default npy = metres for .npy and .exr, else png16 = millimetres)")
    p.add_argument("--known-depth-unit", type=float, default=None,
                   help="metres per stored value of a known-depth image (default: the layout's)")
    add_image_argument(p, "--quiet", action="store_true")
    add_runtime_arguments(p)
    stream.add_stream_arguments(p)
    return p


if __name__ == "__main__":
    sys.exit(main())
