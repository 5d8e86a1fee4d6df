"""Metric depth for any image or folder of images with a Lifelong-MonoDepth checkpoint.

    python predict.py photo.jpg --checkpoint runs/NKS.pth.tar --out predictions
    python predict.py frames/ --domain K --ply                      # force the KITTI head, point clouds
    python predict.py room.png --ply --intrinsics 518.9,519.5,325.6,253.7
    python predict.py drive.mp4 --out out/      # a video: depth video + per-frame log (inference/stream.py)

For each image ``<name>`` it writes into ``--out``:

* ``<name>_depth.png``: 16-bit PNG, depth in millimetres (round(depth * 1000), clipped to 0..65535,
  so depths beyond 65.535 m saturate; the .npy keeps them);
* ``<name>_depth.npy``: float32 depth in metres at the original image size;
* ``<name>_depth_color.png``: the depth colour-mapped, with a colour bar in metres;
* ``<name>_uncertainty.png``: the predicted uncertainty (log-variance) colour-mapped, with its bar;
* ``<name>.ply`` with ``--ply``: a coloured point cloud (binary PLY, metres, camera frame: x right,
  y down, z forward) from ``--intrinsics fx,fy,cx,cy`` at the original image size, or the chosen
  domain's default camera scaled to the image size.

The image is resized (bilinear) to the chosen domain's network input size (the checkpoint's
``input_sizes``, or ``--size HxW``), run through ``inference.DepthPredictor`` (trunk, the chosen
head only) and the depth is upsampled (bilinear, align_corners=True) to the original size. The
domain is ``--domain``, or chosen automatically by the nearest stored domain prototype: the image is
first run at the first domain's input size to choose, then predicted at the chosen domain's size.

Grayscale, 16-bit, palette and alpha images are converted to RGB (``loaders.load_rgb``). A file
that cannot be read is reported and skipped; the others are still processed, and the exit status
is 1 if any failed.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from inference import stream  # video files and frame folders
from data.domains import get_domain
from evaluation.evaluate import write_json
from cli.options import CLIError, predictor_settings, resolve_device
from inference.images import (PNG16_MAX_M, Predictor, collect_inputs, intrinsics_for, output_stems, parse_intrinsics,
                        read_rgb, save_colormap, save_png16, write_ply)
from data.safeio import atomic_write, clean_stale_temps
from inference.stream import build_parser  # predict.py's options, the stream group included


def check_max_depth(value) -> None:
    if value is not None and not 0 < value < math.inf:
        raise CLIError(f"--max-depth {value!r}: expected a positive number of metres (the top of the colour bar)")


def clean_output_litter(out_dir: Path, stems) -> None:
    """Temp files of writes killed in an earlier run (and the old predictions.json.tmp)."""
    for folder in {out_dir, *(Path(s).parent for s in stems)}:
        clean_stale_temps(folder)
    (out_dir / "predictions.json.tmp").unlink(missing_ok=True)


def main(argv=None) -> int:
    """Run predict.py; returns the exit status (0 = every image written, 1 = some failed)."""
    args = build_parser().parse_args(argv)
    check_max_depth(args.max_depth)
    if stream.is_stream_input(args):  # a video file or --stream folder: inference/stream.py's path
        return stream.main_stream(args, resolve_device(args.device))
    if args.ply_stride < 1:
        raise CLIError(f"--ply-stride must be at least 1, got {args.ply_stride}")
    given_k = parse_intrinsics(args.intrinsics) if args.intrinsics else None
    device = resolve_device(args.device)
    target, out_dir = Path(args.input), Path(args.out)
    images, notes = collect_inputs(target, out_dir, args.recursive)
    for n in notes:
        print(n, file=sys.stderr)
    if not images:
        raise CLIError(f"no image files found in {str(target)!r}")
    model = Predictor(args, device)
    stems = output_stems(images, target, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_output_litter(out_dir, stems.values())
    failed, done = [], []
    bar = tqdm(images, desc="predict", unit="img", disable=args.quiet, dynamic_ncols=True)
    for f in bar:
        try:
            img = read_rgb(f)
        except Exception as e:  # noqa: BLE001 - any unreadable file is reported, the rest go on
            msg = str(e) if str(f) in str(e) else f"{f}: {e}"
            tqdm.write(f"skipping {msg}", file=sys.stderr)
            failed.append({"file": str(f), "error": msg})
            continue
        try:
            t0 = time.perf_counter()
            depth, unc, head, how = model(img)
            if not args.no_clamp:
                lo, hi = model.ranges[head]
                depth = np.clip(depth, lo, hi)
            seconds = time.perf_counter() - t0
            stem = stems[f]
            stem.parent.mkdir(parents=True, exist_ok=True)
            written = []
            p = Path(f"{stem}_depth.png")
            saturated = int((depth > PNG16_MAX_M).sum())
            if saturated:
                tqdm.write(f"warning: {f}: {saturated} pixel(s) beyond {PNG16_MAX_M} m saturate the 16-bit "
                           f"millimetre PNG; {stem}_depth.npy keeps their values", file=sys.stderr)
            save_png16(p, depth)
            written.append(p)
            p = Path(f"{stem}_depth.npy")
            with atomic_write(p) as fh:
                np.save(fh, depth.astype(np.float32))
            written.append(p)
            letter = model.letters[head]
            if not args.no_plots:
                p = Path(f"{stem}_depth_color.png")
                save_colormap(p, depth, "depth [m]", "magma_r", vmin=0.0 if args.max_depth else None,
                              vmax=args.max_depth)
                written.append(p)
                if unc is not None:
                    p = Path(f"{stem}_uncertainty.png")
                    save_colormap(p, unc, "uncertainty (log-variance)", "viridis")
                    written.append(p)
            ply_note = ""
            if args.ply:
                k, source = intrinsics_for(letter, img.size[0], img.size[1], given_k)
                p = Path(f"{stem}.ply")
                n = write_ply(p, depth, np.asarray(img), k, args.ply_stride)
                written.append(p)
                ply_note = f", {n} points ({source} intrinsics)"
        except Exception as e:  # noqa: BLE001 - one image's failure must not stop the folder
            msg = f"{f}: prediction failed ({type(e).__name__}: {e})"
            tqdm.write(f"skipping {msg}", file=sys.stderr)
            failed.append({"file": str(f), "error": msg})
            continue
        name = get_domain(letter).name
        tqdm.write(f"{f}: {name} ({letter}, {how}), depth {float(depth.min()):.3f}-{float(depth.max()):.3f} m, "
                   f"{img.size[0]}x{img.size[1]}, {seconds * 1000:.0f} ms{ply_note} -> {stem}_depth.png")
        done.append({"file": str(f), "domain": name, "letter": letter, "chosen": how,
                     "depth_min": float(depth.min()), "depth_max": float(depth.max()),
                     "size": [img.size[1], img.size[0]], "outputs": [str(w) for w in written]})
    bar.close()
    write_json(out_dir / "predictions.json", {"checkpoint": args.checkpoint,
                                                  "predictor": predictor_settings(model.predictor),
                                                  "images": done,
                                                  "failed": failed})
    print(f"{len(done)} of {len(images)} image(s) written to {out_dir}"
          + (f"; {len(failed)} failed:" if failed else ""))
    for item in failed:
        print(f"  {item['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
