"""Depth for image files: reading them, the per-image predictor (domain choice, input size, upsampling
to the original size) and writing the outputs (16-bit millimetre PNG, colour maps, PLY).

Used by predict.py (the command), inference/stream.py (videos and frame folders) and demo.py.
"""
from __future__ import annotations

import argparse
import math
import re
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from data.domains import CAMERAS, get_domain
from loaders import load_rgb
from losses import upsample_to
from cli.options import (CLIError, HelpFormatter, add_checkpoint_arguments, add_runtime_arguments,
                     add_selector_arguments, check_checkpoint_path,
                     checkpoint_letters, default_scale, make_predictor, parse_letters, parse_size,
                     printable)
from inference.replay import replay_prototypes
from data.safeio import atomic_write
from evaluation.uncertainty import add_interval_argument, calibration_scales, interval_maps


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")


IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)



# Images above this many pixels are refused from their header (--max-pixels): predicting,
# upsampling and colour-mapping cost well over 100 bytes per pixel (measured: a 5000x5000 PNG
# took predict.py to 3.9 GB), so 25 M pixels (a 24 MP camera's 6000x4000 passes) stay under
# ~4 GB, where PIL's own guard (89 M pixels) would allow over 12 GB.
DEFAULT_MAX_PIXELS = 25_000_000


def read_rgb(path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """8-bit RGB PIL image of any readable file (loaders.load_rgb), turned upright by its EXIF
    orientation (a phone photo is stored sideways with a rotation tag); more than ``max_pixels``
    pixels (None: no limit) is refused from the header, before decoding."""
    return load_rgb(str(path), apply_exif=True, max_pixels=max_pixels)


def parse_max_pixels(text) -> int:
    """--max-pixels: a positive pixel count, e.g. 25000000 or 25e6."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not 1 <= value < math.inf:
        raise CLIError(f"--max-pixels {text!r}: expected a positive number of pixels, e.g. 25e6")
    return int(value)


def to_input(img: Image.Image, size) -> torch.Tensor:
    """(1,3,H,W) normalized network input at ``size`` = (H, W) from an RGB image."""
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


PNG16_MAX_M = 65.535  # the largest depth a 16-bit millimetre PNG can hold


def depth_to_png16(depth_m: np.ndarray) -> np.ndarray:
    """Metres -> uint16 millimetres, round(depth*1000) clipped to 0..65535."""
    mm = np.rint(np.nan_to_num(depth_m.astype(np.float64), nan=0.0, posinf=65535.0 / 1000.0) * 1000.0)
    return np.clip(mm, 0, 65535).astype(np.uint16)


def save_png16(path, depth_m: np.ndarray) -> None:
    with atomic_write(path) as f:  # complete or absent, also on a full disk or a kill
        Image.fromarray(depth_to_png16(depth_m)).save(f, format="PNG")


def parse_intrinsics(text):
    try:
        values = [float(v) for v in str(text).split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or values[0] <= 0 or values[1] <= 0:
        raise CLIError(f"--intrinsics {text!r}: expected fx,fy,cx,cy (pixels, positive focal lengths)")
    return tuple(values)


def intrinsics_for(letter, width, height, given=None):
    """(fx, fy, cx, cy) at (width, height): given as is, else the domain's default scaled."""
    if given is not None:
        return tuple(given), "given"
    if letter in CAMERAS:  # a built-in domain's sensor (domains.CAMERAS)
        (fx, fy, cx, cy), (w0, h0) = CAMERAS[letter].intrinsics, CAMERAS[letter].frame_size
        sx, sy = width / w0, height / h0
        return (fx * sx, fy * sy, cx * sx, cy * sy), f"{get_domain(letter).name} default"
    f = 0.5 * width / math.tan(math.radians(30.0))  # 60 degree horizontal field of view
    return (f, f, (width - 1) / 2.0, (height - 1) / 2.0), "generic 60-degree camera"


def camera_hint(args, path=None):
    """The frame camera the user gave (``--intrinsics``, ``--fov``), else ``path``'s EXIF 35 mm
    focal length, as an ``inference.frames.CameraHint`` (empty: the chosen head's camera is assumed)."""
    from inference.frames import CameraHint, exif_focal_35mm, parse_fov
    if getattr(args, "intrinsics", None):
        return CameraHint(intrinsics=parse_intrinsics(args.intrinsics))
    if getattr(args, "fov", None) is not None:
        try:
            return CameraHint(fov_deg=parse_fov(args.fov))
        except ValueError as e:
            raise CLIError(str(e)) from None
    return CameraHint(focal_35mm=exif_focal_35mm(path)) if path is not None else CameraHint()


def write_ply(path, depth_m: np.ndarray, rgb: np.ndarray, intrinsics, stride=1) -> int:
    """Binary little-endian PLY of the pixels with depth > 0; returns the number of points."""
    fx, fy, cx, cy = intrinsics
    h, w = depth_m.shape
    vs, us = np.mgrid[0:h:stride, 0:w:stride]
    z = depth_m[vs, us].astype(np.float64)
    keep = np.isfinite(z) & (z > 0)
    us, vs, z = us[keep], vs[keep], z[keep]
    pts = np.empty(z.size, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                  ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    pts["x"] = (us - cx) * z / fx
    pts["y"] = (vs - cy) * z / fy
    pts["z"] = z
    colors = rgb[vs, us]
    pts["red"], pts["green"], pts["blue"] = colors[:, 0], colors[:, 1], colors[:, 2]
    header = ("ply\nformat binary_little_endian 1.0\ncomment Lifelong-MonoDepth predict.py, metres\n"
              f"element vertex {z.size}\nproperty float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    with atomic_write(path) as f:
        f.write(header.encode("ascii"))
        f.write(pts.tobytes())
    return int(z.size)


def read_ply(path):
    """(structured array of points) of a PLY written by :func:`write_ply` (for tests and tools)."""
    with open(path, "rb") as f:
        data = f.read()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    n = int([ln for ln in data[:end].decode("ascii").splitlines() if ln.startswith("element vertex")][0].split()[-1])
    dtype = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    return np.frombuffer(data[end:end + n * dtype.itemsize], dtype=dtype)


def save_colormap(path, values: np.ndarray, label: str, cmap: str, vmin=None, vmax=None) -> None:
    """``values`` colour-mapped with a labelled colour bar (matplotlib, Agg backend)."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    h, w = values.shape
    finite = values[np.isfinite(values)]
    lo = float(np.min(finite)) if vmin is None and finite.size else (vmin or 0.0)
    hi = float(np.max(finite)) if vmax is None and finite.size else (vmax or 1.0)
    if not hi > lo:
        hi = lo + 1e-3
    dpi = 100
    fig_w = max(3.0, w / dpi + 1.3)
    fig_h = max(2.0, h / dpi + 0.3)
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=dpi)
    try:
        ax = fig.add_axes([0.02, 0.05, (fig_w - 1.3) / fig_w, 0.9])
        im = ax.imshow(values, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        ax.set_axis_off()
        cax = fig.add_axes([(fig_w - 1.15) / fig_w, 0.1, 0.12 / fig_w * 1.5, 0.8])
        bar = fig.colorbar(im, cax=cax)
        from matplotlib.ticker import ScalarFormatter
        fmt = ScalarFormatter(useOffset=False)
        bar.ax.yaxis.set_major_formatter(fmt)
        bar.set_label(label)
        with atomic_write(path) as f:
            fig.savefig(f, dpi=dpi, format="png")
    finally:
        plt.close(fig)


# What predict.py writes per image; such files in the output folder are never taken as inputs.
OUTPUT_SUFFIXES = ("_depth.png", "_depth_color.png", "_uncertainty.png", "_depth_lower<P>.png", "_depth_upper<P>.png")
_OUTPUT_NAME = re.compile(r".*(_depth|_depth_color|_uncertainty|_depth_(lower|upper)\d+(\.\d+)?)\.png$")


def is_output_name(name: str) -> bool:
    """Whether ``name`` is how predict.py names its outputs (``--intervals`` ones included)."""
    return bool(_OUTPUT_NAME.match(name))


def collect_inputs(target: Path, out_dir: Path, recursive: bool):
    """(images to process, notes about skipped files). A single file is always processed."""
    if target.is_file():
        return [target], []
    if not target.exists():
        raise CLIError(f"input {str(target)!r} does not exist (expected an image file or a folder of images)")
    if not target.is_dir():  # a FIFO, socket or device: reading it could block or never end
        raise CLIError(f"input {str(target)!r} is not a regular file nor a folder (expected an image file "
                       f"or a folder of images)")
    files = sorted(target.rglob("*") if recursive else target.iterdir())
    images, notes = [], []
    out_abs, target_abs = out_dir.resolve(), target.resolve()
    out_inside = out_abs != target_abs and target_abs in out_abs.parents
    for f in files:
        if not f.is_file() or f.name.startswith("."):
            continue
        in_out = out_abs == f.parent.resolve() or out_abs in f.resolve().parents
        if out_inside and in_out:
            continue  # our own outputs, in a folder of their own inside the input folder
        if is_output_name(f.name):  # a predict.py output (or a dataset's depth map), not a photo
            if not in_out:
                notes.append(f"skipping {f}: named like a depth output ({', '.join(OUTPUT_SUFFIXES)})")
            continue
        if f.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(f)
        else:
            notes.append(f"skipping {f}: not an image file name ({', '.join(IMAGE_EXTENSIONS)})")
    return images, notes


def make_out_dir(out_dir: Path) -> None:
    """Create --out, or one error line: a file of that name, a file or an unwritable folder above it."""
    shown = printable(out_dir, "")
    if out_dir.exists() and not out_dir.is_dir():
        raise CLIError(f"--out {shown}: is a file; expected an output folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(f"--out {shown}: cannot create the output folder ({e.strerror or e})") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise CLIError(f"--out {shown}: the folder is not writable")


def output_stems(images, target: Path, out_dir: Path):
    """Output path stem for each input, distinct from every other (compared without case, as a
    case-insensitive file system would): a stem of its own is kept; inputs sharing one get their
    extension appended (x.png -> x_png), then _2, _3 ... where that is taken too (x.PNG, or an
    input named x_png.jpg)."""
    base = target if target.is_dir() else target.parent
    wanted = {}
    for f in images:
        rel = f.relative_to(base) if target.is_dir() else Path(f.name)
        wanted[f] = out_dir / rel.parent / rel.stem
    key = lambda s: str(s).lower()  # noqa: E731
    counts = {}
    for s in wanted.values():
        counts[key(s)] = counts.get(key(s), 0) + 1
    taken = {key(s) for s in wanted.values() if counts[key(s)] == 1}
    stems = {}
    for f, s in wanted.items():
        if counts[key(s)] == 1:
            stems[f] = s
            continue
        candidate, n = s.with_name(f"{s.name}_{f.suffix.lstrip('.').lower()}"), 2
        first = candidate
        while key(candidate) in taken:
            candidate, n = first.with_name(f"{first.name}_{n}"), n + 1
        taken.add(key(candidate))
        stems[f] = candidate
    return stems


def replay_frame_statistics(predictor, letters, replay_root) -> dict:
    """The frame selector's statistics and out-of-domain thresholds from ``replay_root``'s replay
    rows (inference.replay.frame_statistics) on the predictor's own path."""
    from inference.frames import head_cameras
    from inference.replay import frame_statistics
    return frame_statistics(predictor, letters, replay_root, head_cameras(predictor.meta, letters, replay_root))


class Predictor:
    """Chooses the domain and input size per image and runs DepthPredictor."""

    def __init__(self, args, device):
        path = check_checkpoint_path(args.checkpoint)
        order = parse_letters(args.order, "--order") if args.order else None
        self.forced = None
        self.predictor = make_predictor(path, args, device, order=order, selector=args.selector)
        meta = self.predictor.meta
        self.letters = checkpoint_letters(meta, path)
        if args.domain is not None:
            try:
                letter = get_domain(args.domain).letter
            except ValueError as e:
                raise CLIError(f"--domain: {e}") from None
            if letter not in self.letters:
                raise CLIError(f"--domain {args.domain}: not learned by {str(path)!r} "
                               f"(its domains, in order: {self.letters})")
            self.forced = self.letters.index(letter)
        elif args.replay_root:
            protos = replay_prototypes(path, self.letters, args.replay_root, default_scale(meta), device,
                                       order=order, quiet=args.quiet)
            protos["frames"] = replay_frame_statistics(self.predictor, self.letters, args.replay_root)
            self.predictor.prototypes = protos
        elif not meta.get("prototypes"):
            raise CLIError(f"checkpoint {str(path)!r} stores no domain prototypes, so the domain cannot be "
                           f"chosen automatically; give --domain (one of {', '.join(self.letters)}) or "
                           f"--replay-root DIR to compute prototypes from replay data")
        self.size = parse_size(args.size) if args.size else None
        self.pipeline = self.predictor.frame_pipeline(getattr(args, "camera_mode", "resample"))
        self.camera = camera_hint(args)
        sizes = meta.get("input_sizes")
        if sizes and len(sizes) == len(self.letters):
            self.sizes = [tuple(int(v) for v in s) for s in sizes]
        else:
            self.sizes = [tuple(get_domain(c).input_size) for c in self.letters]
        ranges = meta.get("depth_ranges")
        if ranges and len(ranges) == len(self.letters):
            self.ranges = [tuple(float(v) for v in r) for r in ranges]
        else:
            self.ranges = [(get_domain(c).min_depth, get_domain(c).max_depth) for c in self.letters]
        self.interval_scales = calibration_scales(meta, len(self.letters))  # 1 where none is stored

    def interval(self, depth: np.ndarray, uncertainty: np.ndarray, head: int, level: float):
        """(lower, upper) metres of the central ``level`` interval around ``depth`` with head
        ``head``'s uncertainty calibration (evaluation/uncertainty.py); ``depth`` is not changed."""
        return interval_maps(depth, uncertainty, self.interval_scales[head], level)

    def __call__(self, img: Image.Image):
        """(depth (H,W) metres, uncertainty (H,W), head index, how chosen) at the image's size."""
        r = self.run(img)
        return r["depth"], r["uncertainty"], r["head"], r["how"]

    def run(self, img: Image.Image, choose=None, head=None, want_distances=False, camera=None) -> dict:
        """One image through the frame pipeline (inference/frames.py): ``{"depth", "uncertainty"}``
        (H,W) at the image's size, ``"head"`` (index), ``"how"`` ("given" or "auto"), ``"raw_head"``
        (the nearest head on the frame, or None), ``"distances"`` ((D,) float32 tensor, or None),
        ``"ood"`` (no head fits: True/False; None without calibrated statistics), ``"camera"`` (the
        frame's camera and what was assumed), ``"input_size"`` and ``"depth_scale"``.

        ``head`` forces a head for this image (else ``--domain``, else automatic). ``choose(raw_head,
        distances) -> head`` replaces the per-image nearest-head rule (inference/stream.py's
        smoothing). ``camera``: an ``inference.frames.CameraHint`` (default: ``--intrinsics`` /
        ``--fov``). With ``--size`` the image is instead resized to that input (squeezed: the old
        rule, kept for comparisons).
        """
        forced = head if head is not None else self.forced
        if self.size is not None:
            return self._run_sized(img, choose, forced, want_distances)
        hint = camera if camera is not None else self.camera
        return self.pipeline.run(img, head=forced, choose=choose, camera=hint, want_distances=want_distances)

    def _run_sized(self, img, choose, forced, want_distances) -> dict:
        """``--size HxW``: every image squeezed to that network input (no camera handling)."""
        W, H = img.size
        out = raw = dists = None
        if forced is None or (want_distances and self.predictor.prototypes):
            out = self.predictor.predict(to_input(img, self.size), domain=None, with_uncertainty=True)
            raw, dists = int(out["domain"][0]), out["distances"][0].float().cpu()
        if forced is not None:
            chosen, how = int(forced), "given"
        else:
            chosen, how = (raw if choose is None else int(choose(raw, dists))), "auto"
        if out is None or chosen != raw:
            out = self.predictor.predict(to_input(img, self.size), domain=chosen, with_uncertainty=True)
        depth = upsample_to(out["depth"].float(), (H, W))[0, 0].cpu().numpy().astype(np.float32)
        unc = out["uncertainty"]
        unc = (upsample_to(unc.float(), (H, W))[0, 0].cpu().numpy().astype(np.float32)
               if unc is not None else None)
        return {"depth": depth, "uncertainty": unc, "head": chosen, "how": how, "raw_head": raw,
                "distances": dists, "ood": None, "camera": None, "input_size": list(self.size),
                "depth_scale": 1.0}

    def clamp(self, depth: np.ndarray, head: int) -> np.ndarray:
        """``depth`` clipped to head ``head``'s domain depth range (the default of every output)."""
        lo, hi = self.ranges[head]
        return np.clip(depth, lo, hi)


def build_parser() -> argparse.ArgumentParser:
    """predict.py's options but the stream group (predict.py adds it): what :class:`Predictor` reads."""
    p = argparse.ArgumentParser(
        description="Metric depth for an image or a folder of images: 16-bit millimetre PNG, float32 "
                    ".npy in metres, colour-mapped depth and uncertainty PNGs, optional PLY point cloud.",
        formatter_class=HelpFormatter)
    p.add_argument("input", help="an image file, or a folder of images (png, jpg, bmp, tif, webp, ...), "
                                 "or a video file (depth video + per-frame log; see the streams options)")
    add_checkpoint_arguments(p, "checkpoint (project format; an authors' file needs --order)")
    p.add_argument("--out", default="predictions", help="output folder (created)")
    p.add_argument("--domain", default=None,
                   help="use this learned domain's head (letter or name, e.g. N or nyu); default: "
                        "chosen per image by the nearest domain prototype")
    add_selector_arguments(p, "prototype distance for automatic selection (see test_inference.py); default: "
                              "lda where the checkpoint stores its statistics, else pooled",
                           "compute prototypes from this data root's replay rows (for files without them)")
    p.add_argument("--size", default=None,
                   help="squeeze every image to this network input HxW (the old rule, for comparisons; "
                        "default: the whole frame, aspect kept, at the chosen head's learned pixel scale)")
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
    p.add_argument("--intrinsics", default=None,
                   help="fx,fy,cx,cy in pixels at the original image size: the frame is resampled to "
                        "the chosen head's focal length, and --ply uses them (default: --fov, the EXIF "
                        "focal length, else the chosen head's camera at the image's field of view; real "
                        "sensors: " + ", ".join(
                            f"{get_domain(c).name} {','.join(f'{v:g}' for v in cam.intrinsics)} "
                            f"@{cam.frame_size[0]}x{cam.frame_size[1]}" for c, cam in CAMERAS.items()) + ")")
    p.add_argument("--ply-stride", type=int, default=1, help="keep every N-th pixel in x and y for --ply")
    p.add_argument("--fov", default=None,
                   help="horizontal field of view of the camera in degrees (instead of --intrinsics); "
                        "without either, a photo's EXIF 35 mm focal length is used, else the chosen "
                        "head's camera is assumed (printed and written to the JSON)")
    p.add_argument("--camera-mode", default="resample", choices=("resample", "rescale"),
                   help="resample: the frame is resized so that its focal length matches the head's "
                        "(measured better, bench/bench_frames.py); rescale: the frame's own pixels, "
                        "the depth multiplied by the focal-length ratio")
    p.add_argument("--max-pixels", default=DEFAULT_MAX_PIXELS, type=parse_max_pixels,
                   help="refuse images with more pixels than this, read from the file's header before "
                        "decoding (memory grows by well over 100 bytes per pixel)")
    add_interval_argument(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_runtime_arguments(p)
    return p
