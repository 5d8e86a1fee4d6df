"""Depth for image files: reading them, the per-image predictor (domain choice, input size, upsampling
to the original size) and writing the outputs (16-bit millimetre PNG, colour maps, PLY).

Used by predict.py (the command), inference/stream.py (videos and frame folders) and demo.py.
"""
from __future__ import annotations

import argparse
import math
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
                     checkpoint_letters, default_scale, make_predictor, parse_letters, parse_size)
from inference.replay import replay_prototypes
from data.safeio import atomic_write


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")


IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)



def read_rgb(path) -> Image.Image:
    """8-bit RGB PIL image of any readable file (loaders.load_rgb)."""
    return load_rgb(str(path))


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
OUTPUT_SUFFIXES = ("_depth.png", "_depth_color.png", "_uncertainty.png")


def collect_inputs(target: Path, out_dir: Path, recursive: bool):
    """(images to process, notes about skipped files). A single file is always processed."""
    if target.is_file():
        return [target], []
    if not target.exists():
        raise CLIError(f"input {str(target)!r} does not exist (expected an image file or a folder of images)")
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
        if f.name.endswith(OUTPUT_SUFFIXES):  # a predict.py output (or a dataset's depth map), not a photo
            if not in_out:
                notes.append(f"skipping {f}: named like a depth output ({', '.join(OUTPUT_SUFFIXES)})")
            continue
        if f.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(f)
        else:
            notes.append(f"skipping {f}: not an image file name ({', '.join(IMAGE_EXTENSIONS)})")
    return images, notes


def output_stems(images, target: Path, out_dir: Path):
    """Output path stem for each input; inputs sharing a stem get their extension appended."""
    stems = {}
    base = target if target.is_dir() else target.parent
    for f in images:
        rel = f.relative_to(base) if target.is_dir() else Path(f.name)
        stems[f] = out_dir / rel.parent / rel.stem
    counts = {}
    for s in stems.values():
        counts[s] = counts.get(s, 0) + 1
    for f, s in stems.items():
        if counts[s] > 1:
            stems[f] = s.with_name(f"{s.name}_{f.suffix.lstrip('.').lower()}")
    return stems


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
            self.predictor.prototypes = replay_prototypes(
                path, self.letters, args.replay_root, default_scale(meta), device, order=order,
                quiet=args.quiet)
        elif not meta.get("prototypes"):
            raise CLIError(f"checkpoint {str(path)!r} stores no domain prototypes, so the domain cannot be "
                           f"chosen automatically; give --domain (one of {', '.join(self.letters)}) or "
                           f"--replay-root DIR to compute prototypes from replay data")
        self.size = parse_size(args.size) if args.size else None
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

    def __call__(self, img: Image.Image):
        """(depth (H,W) metres, uncertainty (H,W), head index, how chosen) at the image's size."""
        r = self.run(img)
        return r["depth"], r["uncertainty"], r["head"], r["how"]

    def run(self, img: Image.Image, choose=None, head=None, want_distances=False) -> dict:
        """One image: ``{"depth", "uncertainty"}`` (H,W) at the image's size, ``"head"`` (index),
        ``"how"`` ("given" or "auto"), ``"raw_head"`` (the nearest prototype's head, or None) and
        ``"distances"`` ((D,) float32 tensor, or None).

        ``head`` forces a head for this image (else ``--domain``, else automatic). ``choose(raw_head,
        distances) -> head`` replaces the per-image nearest-prototype rule (inference/stream.py's smoothing).
        The distances come from the first domain's input size, so they do not depend on the head
        chosen before; they are computed when the head is automatic or ``want_distances`` is set.
        """
        W, H = img.size
        forced = head if head is not None else self.forced
        out = raw = dists = None
        size0 = self.size or self.sizes[0]
        if forced is None or (want_distances and self.predictor.prototypes):
            out = self.predictor.predict(to_input(img, size0), domain=None, with_uncertainty=True)
            raw, dists = int(out["domain"][0]), out["distances"][0].float().cpu()
        if forced is not None:
            chosen, how = int(forced), "given"
        else:
            chosen, how = (raw if choose is None else int(choose(raw, dists))), "auto"
        size = self.size or self.sizes[chosen]
        if out is None or chosen != raw or tuple(size) != tuple(size0):
            out = self.predictor.predict(to_input(img, size), domain=chosen, with_uncertainty=True)
        depth = upsample_to(out["depth"].float(), (H, W))[0, 0].cpu().numpy().astype(np.float32)
        unc = out["uncertainty"]
        unc = (upsample_to(unc.float(), (H, W))[0, 0].cpu().numpy().astype(np.float32)
               if unc is not None else None)
        return {"depth": depth, "uncertainty": unc, "head": chosen, "how": how, "raw_head": raw,
                "distances": dists}

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
                   help="network input HxW for every image (default: the chosen domain's training "
                        "input size from the checkpoint, e.g. 228x304 for NYU at scale 1)")
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
                   help="fx,fy,cx,cy in pixels at the original image size for --ply (default: the "
                        "domain's camera scaled to the image: " + ", ".join(
                            f"{get_domain(c).name} {','.join(f'{v:g}' for v in cam.intrinsics)} "
                            f"@{cam.frame_size[0]}x{cam.frame_size[1]}" for c, cam in CAMERAS.items()) + ")")
    p.add_argument("--ply-stride", type=int, default=1, help="keep every N-th pixel in x and y for --ply")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_runtime_arguments(p)
    return p
