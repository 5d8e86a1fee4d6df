"""Metric depth for any image or folder of images with a Lifelong-MonoDepth checkpoint.

    python predict.py photo.jpg --checkpoint runs/NKS.pth.tar --out predictions
    python predict.py frames/ --domain K --ply                      # force the KITTI head, point clouds
    python predict.py room.png --ply --intrinsics 518.9,519.5,325.6,253.7
    python predict.py drive.mp4 --out out/      # a video: depth video + per-frame log (stream.py)

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

import argparse
import importlib.util
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm


def _load_script(name):
    """Sibling scripts are loaded by path (test.py shares its name with the stdlib package)."""
    mod = f"lm_{name}"
    if mod in sys.modules:
        return sys.modules[mod]
    spec = importlib.util.spec_from_file_location(mod, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod] = module
    spec.loader.exec_module(module)
    return module


T = _load_script("test")
TI = _load_script("test_inference")
CLIError = T.CLIError

from domains import get_domain  # noqa: E402
from evaluation import upsample_to  # noqa: E402
from prototypes import SELECTORS  # noqa: E402
from safeio import atomic_write, clean_stale_temps  # noqa: E402
import stream  # noqa: E402  (video files and frame folders)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")
OUTPUT_SUFFIXES = ("_depth.png", "_depth_color.png", "_uncertainty.png")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Default pinhole cameras (fx, fy, cx, cy) and the (W, H) they belong to, per built-in domain.
DEFAULT_INTRINSICS = {
    "N": ((518.86, 519.47, 325.58, 253.74), (640, 480)),
    "K": ((721.5, 721.5, 596.5, 149.9), (1216, 352)),
    "S": ((577.6, 577.6, 319.5, 239.5), (640, 480)),
}


# ----------------------------------------------------------------------------------------------
# Pieces
# ----------------------------------------------------------------------------------------------
def read_rgb(path) -> Image.Image:
    """8-bit RGB PIL image of any readable file (loaders.load_rgb when present)."""
    try:
        from loaders import load_rgb
    except ImportError:  # pragma: no cover - loaders is part of the project
        load_rgb = None
    if load_rgb is not None:
        return load_rgb(str(path))
    with Image.open(path) as img:
        img.load()
        if img.mode in ("P", "PA"):
            img = img.convert("RGBA")
        return img.convert("RGB")


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
    if letter in DEFAULT_INTRINSICS:
        (fx, fy, cx, cy), (w0, h0) = DEFAULT_INTRINSICS[letter]
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


# ----------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Metric depth for an image or a folder of images: 16-bit millimetre PNG, float32 "
                    ".npy in metres, colour-mapped depth and uncertainty PNGs, optional PLY point cloud.",
        formatter_class=T.HelpFormatter)
    p.add_argument("input", help="an image file, or a folder of images (png, jpg, bmp, tif, webp, ...), "
                                 "or a video file (depth video + per-frame log; see the streams options)")
    p.add_argument("--checkpoint", default=T.DEFAULT_CHECKPOINT,
                   help="checkpoint (project format; an authors' file needs --order)")
    p.add_argument("--order", default=None, help="learning order naming the heads of an authors' file, e.g. NKS")
    p.add_argument("--out", default="predictions", help="output folder (created)")
    p.add_argument("--domain", default=None,
                   help="use this learned domain's head (letter or name, e.g. N or nyu); default: "
                        "chosen per image by the nearest domain prototype")
    p.add_argument("--selector", default=None, choices=list(SELECTORS),
                   help="prototype distance for automatic selection (see test_inference.py); default: "
                        "lda where the checkpoint stores its statistics, else pooled")
    p.add_argument("--replay-root", default=None,
                   help="compute prototypes from this data root's replay rows (for files without them)")
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
                        "domain's camera scaled to the image: NYU 518.86,519.47,325.58,253.74 @640x480, "
                        "KITTI 721.5,721.5,596.5,149.9 @1216x352, ScanNet 577.6,577.6,319.5,239.5 @640x480)")
    p.add_argument("--ply-stride", type=int, default=1, help="keep every N-th pixel in x and y for --ply")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    T.add_runtime_arguments(p)
    stream.add_stream_arguments(p)
    return p


class Predictor:
    """Chooses the domain and input size per image and runs DepthPredictor."""

    def __init__(self, args, device):
        path = T.check_checkpoint_path(args.checkpoint)
        order = T.parse_letters(args.order, "--order") if args.order else None
        self.forced = None
        self.predictor = T.make_predictor(path, args, device, order=order, selector=args.selector)
        meta = self.predictor.meta
        self.letters = T.checkpoint_letters(meta, path)
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
            self.predictor.prototypes = TI.replay_prototypes(
                path, self.letters, args.replay_root, T.default_scale(meta), device, order=order,
                quiet=args.quiet)
        elif not meta.get("prototypes"):
            raise CLIError(f"checkpoint {str(path)!r} stores no domain prototypes, so the domain cannot be "
                           f"chosen automatically; give --domain (one of {', '.join(self.letters)}) or "
                           f"--replay-root DIR to compute prototypes from replay data")
        self.size = TI.parse_size(args.size) if args.size else None
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
        distances) -> head`` replaces the per-image nearest-prototype rule (stream.py's smoothing).
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
    if stream.is_stream_input(args):  # a video file or --stream folder: stream.py's path
        return stream.main_stream(args, T.resolve_device(args.device))
    if args.ply_stride < 1:
        raise CLIError(f"--ply-stride must be at least 1, got {args.ply_stride}")
    given_k = parse_intrinsics(args.intrinsics) if args.intrinsics else None
    device = T.resolve_device(args.device)
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
    T.write_json(out_dir / "predictions.json", {"checkpoint": args.checkpoint,
                                                  "predictor": T.predictor_settings(model.predictor),
                                                  "images": done,
                                                  "failed": failed})
    print(f"{len(done)} of {len(images)} image(s) written to {out_dir}"
          + (f"; {len(failed)} failed:" if failed else ""))
    for item in failed:
        print(f"  {item['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
