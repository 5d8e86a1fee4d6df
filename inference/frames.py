"""The frame pipeline: a whole camera frame in, depth in metres at the frame's own size out.

One rule, used by predict.py, the streams (inference/stream.py), the demo and
``DepthPredictor.predict_image``:

1. **Head choice** (unless a head is given): the whole frame, aspect ratio kept, resized to the
   selector's pixel area (stored with the statistics: the first head's training frame); the pooled
   descriptor of its fused features is scored by the ``frames`` statistics, an LDA fitted on replay
   *files as they lie on disk* preprocessed exactly like a query (``inference.replay.frame_statistics``,
   with the mirrored, half-size, cropped and colour-jittered variants users feed), so a query and
   the statistics see the same preprocessing whatever the frame's size and aspect ratio. The
   out-of-domain verdict ("none of my heads fits") is inference/ood.py's where the statistics store
   it: a per-head Mahalanobis score of the selection input's fused and early encoder features,
   normalised on held-out replay frames, above a fixed threshold (older statistics: the smallest
   LDA distance above the chosen head's threshold, calibrated on held-out replay frames). A checkpoint without these statistics
   keeps its stored selector on the frame squeezed to the first domain's input size (what its
   prototypes were computed from), without a verdict.
2. **The camera.** Each head learned one camera: the focal length in pixels of its training frames
   at the resolution it was trained at (``trained_camera``, through the domain's own training
   transform; stored per domain in the checkpoint as ``cameras``). The frame's own camera is
   ``--intrinsics``, a field of view, a photo's EXIF 35 mm focal length, or, without any, the
   assumption that the frame has the chosen head's field of view (``resolve_camera``).
3. **Depth.** The frame is resampled (aspect kept, never squeezed) so that its focal length matches
   the head's (``mode="resample"``, the default; ``"rescale"`` keeps the frame's pixels and
   multiplies the depth by the focal ratio: measured worse, bench/bench_frames.py), capped at
   ``MAX_PIXELS`` (then the rest of the focal ratio goes into the depth). Up to the head's training
   input size it runs in one pass. A larger input, by the frame rule (``FRAME_RULES``, predict.py's
   ``--frame-rule``): ``fitted`` (the default, ``fit_plan``) in one pass at the head's training
   geometry: the heads are best on inputs of the very size they learned, above all in rows (a K-like
   input of 176 rows through a head trained on 160 lost 10-21 % AbsRel in one pass; full-width
   passes of 160 rows matched the tiles), so a side up to ``FIT_CROP`` longer than the training side
   is cropped to it (the thin border takes the nearest depth), one up to ``FIT_SQUEEZE`` longer is
   resized to it (the depth times the area ratio ** ``FIT_DEPTH_POWER``), a longer width runs whole
   (with the trained global pooling: as accurate there as pooling over windows of the training
   extent, and every backend runs it) and longer rows in full-width passes of the training height; a
   bottom-anchored head (KITTI's crops keep the bottom of the frame; ``head_anchors``) first drops
   the rows above its training frame (a raw KITTI frame's extra sky). Measured within 1.5 % of
   the tiles on three test seeds at 1.12-1.23x the one-head function's cost (docs/BENCHMARKS.md#frame-rule).
   ``tiled`` (the default before): overlapping tiles of the training size, blended;
   ``tiled-anchored`` the same, the rows a bottom-anchored head saw in training from its bottom
   tile; ``windowed`` one pass over the whole input with windowed attention (sharing the selection
   pass's encoder when both inputs match): cheaper than tiles, on K less accurate. Inputs are not
   padded to the stride (replicate padding raised AbsRel, and whole K frames in one pass were worse
   than tiles: docs/BENCHMARKS.md#frames); the network takes any size, as in training (240 and 114 are no
   multiples of 32 either). The depth is brought to the
   frame's size. One bound holds whatever the frame (``bound_scale``): a side shorter than
   ``MIN_SIDE`` is padded up to it (replicate, cropped away after; only such thin frames are
   padded), never upscaled, so the floor overrides neither the focal match nor the cap, and the
   padded input, and every batch of tiles, holds at most ``MAX_PIXELS`` pixels.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from base.domains import SENSORS, Intrinsics, get_domain
from base.safeio import read_json
from models.checkpoint import checkpoint_meta
from inference.ood import fit_ood, ood_descriptor, ood_scores, ood_verdict
from inference.prototypes import (DEFAULT_SELECT_DESCRIPTOR, LDA_SHRINK, SELECT_DESCRIPTORS, fit_lda,
                                  lda_distances, pooled_descriptor)
from base.images import image_tensor
from loaders import build_transform, get_dataset
from losses import upsample_to
from models.modules import Windows, tent, tile_starts  # noqa: F401 - tile_starts, tent: re-exported

MAX_PIXELS = 2_400_000  # larger network inputs are downscaled (the focal ratio goes into the depth)
TILE_SLACK = 1.0        # FramePipeline.tile_size
MIN_SIDE = 32           # a shorter side is padded up to this (ResNet's output stride); never upscaled
SELECT_AREA = 160 * 120  # the selection input's pixel area when the statistics store none
MODES = ("resample", "rescale")
# FramePipeline.depth on inputs larger than the head's training input (docs/BENCHMARKS.md, frame rule)
FRAME_RULES = ("fitted", "tiled", "tiled-anchored", "windowed")
DEFAULT_FRAME_RULE = "fitted"
# The fitted rule (fit_plan): the heads are best on inputs of the very geometry they learned (a
# K-like input of 176 rows through a head trained on 160: AbsRel +10 % to +21 % in one pass, the
# same to 0.5 % in full-width passes of 160 rows), so one pass is brought to it per side:
FIT_CROP = 1.0625        # a side up to this x the training side: cropped to it, the rest replicated
FIT_SQUEEZE = 1.25       # up to this: resized to it, the depth times (area ratio) ** FIT_DEPTH_POWER
FIT_DEPTH_POWER = 0.375  # between the network's measured response (0) and the focal ratio's (0.5):
#                          chosen on test seeds 0 and 7, checked on seed 23 (docs/BENCHMARKS.md#frame-rule)
SENSOR_DIAGONAL_35MM = math.hypot(36.0, 24.0)  # mm: what a "35 mm equivalent" focal length refers to


# ----------------------------------------------------------------------------------------------
# Cameras (each a base.domains.Intrinsics: a pinhole camera at one image size)
# ----------------------------------------------------------------------------------------------
def source_camera(spec, data_root=None) -> Intrinsics | None:
    """The camera of a domain's depth frames as they lie on disk: a synthetic set's meta.json
    (rendered at its own scale), a custom domain's ``camera`` field (domains.json), the recording's
    calibration file beside the first stored frame (KITTI: :func:`calibration_camera`), else the
    built-in sensor (base.domains.SENSORS) at the size of the files stored there
    (:func:`registry_camera_at`: KITTI's raw frames are a wider crop of the same sensor, not a
    resize); None when nothing says."""
    spec = get_domain(spec)
    if data_root:
        try:
            d = read_json(os.path.join(data_root, "meta.json"))["domains"][spec.name]
            k, (h, w) = d["intrinsics"], d["depth_size"]
            return Intrinsics(float(k["fx"]), float(k["fy"]), float(k["cx"]), float(k["cy"]), int(w), int(h))
        except (ValueError, KeyError, TypeError):  # no meta.json (None), or no camera of this domain
            pass
    if getattr(spec, "camera", None):
        fx, fy, cx, cy, w, h = spec.camera
        return Intrinsics(fx, fy, cx, cy, int(w), int(h))
    if spec.letter in SENSORS:
        cam = SENSORS[spec.letter].depth
        first = stored_frame(spec, data_root) if data_root else None
        if first is None:
            return cam
        size, image = first
        calibrated = calibration_camera(image, size)
        if calibrated is not None:  # the recording's own calibration (KITTI's files)
            return calibrated
        return registry_camera_at(cam, size, spec.transform == "kitti")
    return None


CROP_TOLERANCE = 0.1  # a frame within 10 % of the registry size on each side is a crop of that sensor


def registry_camera_at(cam: Intrinsics, size, crops: bool) -> Intrinsics:
    """A registry camera at the size ``size`` = (W, H) the files have. KITTI's registry camera
    (721.5 @ 1216x352) is the benchmark's bottom-centre *crop* of the raw frames (1242x375 on
    2011_09_26, 1224-1242 x 370-376 by date; formats.md): for the cropping recipe (``crops``) a
    frame within CROP_TOLERANCE of the registry size is the same sensor with another crop (fx, fy
    kept, cx, cy shifted); anything else is a resize of the registry frame (a data set stored at
    another resolution), as for NYU and ScanNet."""
    w, h = int(size[0]), int(size[1])
    if crops and abs(w / cam.width - 1) <= CROP_TOLERANCE and abs(h / cam.height - 1) <= CROP_TOLERANCE:
        return Intrinsics(cam.fx, cam.fy, cam.cx + (w - cam.width) / 2.0, cam.cy + (h - cam.height), w, h)
    return cam.resized(w, h)  # the sensor, at the resolution the files have


def stored_frame(spec, data_root):
    """((W, H) of the first replay (else training) depth map under ``data_root``, its image path),
    or None."""
    for split in ("replay", "train"):
        try:
            rows = get_dataset(spec, split, str(data_root), check_files=False).rows
            with Image.open(rows[0].depth) as im:
                return im.size, rows[0].image
        except Exception:  # noqa: BLE001 - no readable file: the registry's own size stands
            continue
    return None


def stored_frame_size(spec, data_root):
    """(W, H) of the first replay (else training) depth map under ``data_root``, or None."""
    first = stored_frame(spec, data_root)
    return None if first is None else first[0]


def _numbers(text) -> list:
    return [float(v) for v in text.replace(",", " ").split()]


def calibration_camera(image_path, size=None) -> Intrinsics | None:
    """The camera of one image file from its recording's calibration, where the layout has one:
    KITTI raw (``<date>/calib_cam_to_cam.txt``'s ``P_rect_0X`` for ``<date>/<drive>/image_0X/data/
    <frame>.png``) or the benchmark's ``val_selection_cropped`` (``intrinsics/<name>.txt``, a 3x3
    matrix beside ``image/<name>.png``). ``size`` (W, H): the image's, else read from the file.
    None where no calibration file is found or it cannot be read."""
    try:
        path = os.path.abspath(os.fspath(image_path))
        parts = path.split(os.sep)
        k = None
        if len(parts) >= 3 and parts[-2] == "image":  # val_selection_cropped/image/<name>.png
            txt = os.path.join(os.path.dirname(os.path.dirname(path)), "intrinsics",
                               os.path.splitext(parts[-1])[0] + ".txt")
            if os.path.isfile(txt):
                with open(txt) as f:
                    m = _numbers(f.read())
                if len(m) >= 9:
                    k = (m[0], m[4], m[2], m[5])
        if k is None and len(parts) >= 5 and parts[-2] == "data" and parts[-3].startswith("image_0"):
            calib = os.path.join(os.sep.join(parts[:-4]), "calib_cam_to_cam.txt")  # <date>/
            key = "P_rect_" + parts[-3][len("image_"):] + ":"
            if os.path.isfile(calib):
                with open(calib) as f:
                    for line in f:
                        if line.startswith(key):
                            p = _numbers(line[len(key):])
                            if len(p) == 12:
                                k = (p[0], p[5], p[2], p[6])
        if k is None or not all(math.isfinite(v) for v in k) or k[0] <= 0 or k[1] <= 0:
            return None
        if size is None:
            with Image.open(path) as im:
                size = im.size
        return Intrinsics(*(float(v) for v in k), int(size[0]), int(size[1]))
    except (OSError, ValueError):
        return None


def trained_camera(spec, scale: float = 1.0, data_root=None) -> Intrinsics | None:
    """The camera a domain's head learned: its on-disk frame camera through the resize step of the
    domain's training transform at ``scale`` (loaders.build_transform, so the rule is the
    transform's own: NYU/ScanNet frames are resized, KITTI's are cropped at their own pixel scale)."""
    cam = source_camera(spec, data_root)
    if cam is None:
        return None
    tf = build_transform(spec, train=False, scale=scale)
    image = Image.new("RGB", (cam.width, cam.height))
    image, _ = tf._resize(image, Image.new("F", (cam.width, cam.height)))
    return cam.resized(*image.size)


def head_cameras(meta, letters, data_root=None) -> list:
    """Per head, the camera it learned: the checkpoint's ``cameras``, else (older checkpoints)
    derived from the training options' data root (else ``data_root``) and scale, else the
    registry's sensor. ``meta``: a checkpoint's metadata (dict or CheckpointMeta)."""
    meta = checkpoint_meta(meta)
    stored = meta.cameras
    if stored and len(stored) == len(letters):
        return [Intrinsics.from_dict(c) if c else None for c in stored]
    scale = meta.scale
    root = meta.data_root or data_root
    out = []
    for c in letters:
        try:
            out.append(trained_camera(c, scale, root))
        except ValueError:  # a custom domain that is not registered here
            out.append(None)
    return out


def generic_camera(width: int, height: int, hfov_deg: float = 60.0) -> Intrinsics:
    f = 0.5 * width / math.tan(math.radians(hfov_deg) / 2.0)
    return Intrinsics(f, f, (width - 1) / 2.0, (height - 1) / 2.0, int(width), int(height))


@dataclass(frozen=True)
class CameraHint:
    """What the user says about a frame's camera (at most one is used, in this order)."""
    intrinsics: tuple | None = None   # fx, fy, cx, cy in pixels at the frame's size (or intrinsics_size)
    fov_deg: float | None = None      # horizontal field of view
    focal_35mm: float | None = None   # EXIF FocalLengthIn35mmFilm
    intrinsics_size: tuple | None = None  # (W, H) the intrinsics were given at: rescaled to the frame's


INTRINSICS_FOV = (1.0, 179.0)  # degrees: the field of view --intrinsics may imply on each axis (as --fov)


def check_intrinsics(k, width: int, height: int, option: str = "--intrinsics") -> tuple:
    """(fx, fy, cx, cy) checked against a ``width`` x ``height`` frame, else an InputError naming
    ``option``: finite numbers, focal lengths giving a field of view within INTRINSICS_FOV on each
    axis, and the principal point inside the frame (values for another resolution put it outside
    or give other metres silently: give them with their size, fx,fy,cx,cy@WxH)."""
    from base.errors import InputError
    shown = ",".join(f"{float(v):g}" for v in k)
    fx, fy, cx, cy = (float(v) for v in k)
    if not all(math.isfinite(v) for v in (fx, fy, cx, cy)):
        raise InputError(f"{option} {shown}: expected finite numbers fx,fy,cx,cy in pixels")
    lo, hi = INTRINSICS_FOV
    for name, f, side in (("fx", fx, width), ("fy", fy, height)):
        fov = math.degrees(2.0 * math.atan(0.5 * side / f)) if f > 0 else float("nan")
        if not lo <= fov <= hi:
            raise InputError(f"{option} {shown}: {name} {f:g} gives a {'horizontal' if name == 'fx' else 'vertical'} "
                             f"field of view of {fov:.3g} deg on this {width}x{height} image; expected a "
                             f"positive focal length in pixels giving {lo:g}-{hi:g} deg")
    if not (0.0 <= cx <= width and 0.0 <= cy <= height):
        raise InputError(f"{option} {shown}: the principal point ({cx:g}, {cy:g}) lies outside this "
                         f"{width}x{height} image; values for another resolution? give them with "
                         f"their size, fx,fy,cx,cy@WxH, to rescale them")
    return fx, fy, cx, cy


def intrinsics_at(k, size, width: int, height: int) -> tuple:
    """(fx, fy, cx, cy) given at ``size`` = (W, H) (None: at the frame's own size) rescaled to a
    ``width`` x ``height`` frame and checked (:func:`check_intrinsics`)."""
    fx, fy, cx, cy = (float(v) for v in k)
    if size is not None and tuple(size) != (width, height):
        sx, sy = width / float(size[0]), height / float(size[1])
        fx, fy, cx, cy = fx * sx, fy * sy, (cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5
    return check_intrinsics((fx, fy, cx, cy), width, height)


def oriented_intrinsics(k, size, orientation) -> tuple:
    """((fx, fy, cx, cy), (W, H)) of intrinsics given for an image file's stored pixel grid
    (``size`` = (W, H) as stored) after its EXIF ``orientation`` (1-8) turned it upright, as
    ``PIL.ImageOps.exif_transpose`` does to its pixels (predict.py reads photos upright)."""
    fx, fy, cx, cy = (float(v) for v in k)
    w, h = float(size[0]), float(size[1])
    mx, my = w - 1.0 - cx, h - 1.0 - cy  # mirrored coordinates
    table = {2: (fx, fy, mx, cy, False), 3: (fx, fy, mx, my, False), 4: (fx, fy, cx, my, False),
             5: (fy, fx, cy, cx, True), 6: (fy, fx, my, cx, True), 7: (fy, fx, my, mx, True),
             8: (fy, fx, cy, mx, True)}
    if orientation not in table:
        return (fx, fy, cx, cy), (int(w), int(h))
    *k2, swap = table[orientation]
    return tuple(k2), ((int(h), int(w)) if swap else (int(w), int(h)))

    def any(self) -> bool:
        return self.intrinsics is not None or self.fov_deg is not None or self.focal_35mm is not None


def parse_fov(text) -> float:
    try:
        v = float(text)
    except (TypeError, ValueError):
        v = float("nan")
    if not 1.0 <= v <= 179.0:
        raise ValueError(f"--fov {text!r}: expected the horizontal field of view in degrees (1-179)")
    return v


def exif_focal_35mm(source) -> float | None:
    """A photo's 35 mm equivalent focal length (EXIF FocalLengthIn35mmFilm), or None; ``source``:
    a file path or an opened PIL image (one that still carries its EXIF)."""
    try:
        if isinstance(source, Image.Image):
            value = source.getexif().get_ifd(0x8769).get(0xA405)
        else:
            with Image.open(source) as im:
                value = im.getexif().get_ifd(0x8769).get(0xA405)
        value = float(value) if value else None
    except Exception:  # noqa: BLE001 - no EXIF is the usual case, a broken one is no camera information
        return None
    return value if value and value > 0 else None


def resolve_camera(hint: CameraHint | None, width: int, height: int, head_cam: Intrinsics | None):
    """(camera of the frame at its size, what was assumed: a sentence)."""
    hint = hint or CameraHint()
    if hint.intrinsics is not None:
        fx, fy, cx, cy = intrinsics_at(hint.intrinsics, hint.intrinsics_size, width, height)
        rescaled = hint.intrinsics_size is not None and tuple(hint.intrinsics_size) != (width, height)
        return Intrinsics(fx, fy, cx, cy, width, height), ("given intrinsics" + (
            f" (given at {hint.intrinsics_size[0]}x{hint.intrinsics_size[1]}, rescaled)" if rescaled else ""))
    if hint.fov_deg is not None:
        cam = generic_camera(width, height, hint.fov_deg)
        return cam, f"given horizontal field of view {hint.fov_deg:g} deg"
    if hint.focal_35mm is not None:
        f = hint.focal_35mm * math.hypot(width, height) / SENSOR_DIAGONAL_35MM
        return (Intrinsics(f, f, (width - 1) / 2.0, (height - 1) / 2.0, width, height),
                f"EXIF 35 mm equivalent focal length {hint.focal_35mm:g} mm")
    if head_cam is None:
        return generic_camera(width, height), "no camera information: assumed a 60 deg horizontal field of view"
    s = width / head_cam.width  # the head's horizontal field of view, centred vertically
    cam = Intrinsics(head_cam.fx * s, head_cam.fy * s, head_cam.cx * s,
                 head_cam.cy * s + (height - head_cam.height * s) / 2.0, width, height)
    return cam, (f"no camera information: assumed the head's camera, horizontal field of view "
                 f"{head_cam.hfov_deg:.1f} deg")


# ----------------------------------------------------------------------------------------------
# Geometry of one run
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """How a frame goes through a head: the network input (content) size, the factor the depth is
    multiplied by (the focal length fed over the head's; 1 when the frame was resampled to match),
    and the padded size the network sees (a side shorter than MIN_SIDE padded up to it)."""
    height: int
    width: int
    depth_scale: float

    @property
    def padded(self) -> tuple:
        return max(self.height, MIN_SIDE), max(self.width, MIN_SIDE)


def plan_frame(width: int, height: int, frame_cam: Intrinsics, head_cam: Intrinsics | None,
               mode: str = "resample", max_pixels: int = MAX_PIXELS) -> Plan:
    if mode not in MODES:
        raise ValueError(f"unknown camera mode {mode!r}; choose one of {MODES}")
    target = frame_cam.fx if head_cam is None else head_cam.fx
    r = target / frame_cam.fx if mode == "resample" else 1.0
    r = bound_scale(width, height, r, max_pixels)
    w, h = max(1, round(width * r)), max(1, round(height * r))
    fed = frame_cam.fx * w / width
    return Plan(h, w, fed / target)


def bound_scale(width: int, height: int, r: float, max_pixels: int) -> float:
    """The one bound on what the network sees: the resize factor ``r`` of a ``width`` x ``height``
    frame lowered until the input, with a side shorter than MIN_SIDE padded up to MIN_SIDE (the
    floor is met by padding, never by upscaling, so it overrides neither the focal match nor the
    cap), holds at most ``max_pixels`` pixels. Tiles of it run in batches of at most ``max_pixels``
    pixels (FramePipeline.depth)."""
    r = min(r, math.sqrt(max_pixels / (width * height)))          # never beyond the pixel cap
    for _ in range(4):                                             # ... padding included
        h, w = max(MIN_SIDE, round(height * r)), max(MIN_SIDE, round(width * r))
        if h * w <= max_pixels:
            break
        r *= 0.999 * max_pixels / (h * w)
    return r


def to_tensor(img) -> torch.Tensor:
    """(1,3,H,W) ImageNet-normalised float32 of a PIL image or an (H,W,3) uint8 array."""
    return image_tensor(img)


def resized(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if tuple(x.shape[-2:]) == (h, w):
        return x
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)


def selection_size(width: int, height: int, area: float) -> tuple:
    """(h, w) of the selection input: the frame's aspect ratio at ``area`` pixels."""
    r = math.sqrt(area / (width * height))
    h, w = max(MIN_SIDE, round(height * r)), max(MIN_SIDE, round(width * r))
    if h * w > 2 * area:  # the floor of a thin frame: its long side squeezed, not its pixels multiplied
        h, w = (h, max(MIN_SIDE, int(2 * area // h))) if w > h else (max(MIN_SIDE, int(2 * area // w)), w)
    return h, w


@torch.no_grad()
def descriptor_of(features_fn, x: torch.Tensor, area: float, net=None):
    """The selection descriptor (pooled channel means and stds) of a normalised frame ``x``
    (1,3,H,W) through ``features_fn``; with ``net`` (the plain network), (that, the out-of-domain
    descriptor: inference/ood.py)."""
    h, w = selection_size(x.shape[-1], x.shape[-2], area)
    small = resized(x, h, w)
    desc = pooled_descriptor(features_fn(small).float())
    return desc if net is None else (desc, ood_descriptor(net, small, desc))


@dataclass(frozen=True)
class FitPlan:
    """The ``fitted`` rule over an h x w network input: the region its passes cover (``top``,
    ``left``, ``height``, ``width``; the rest of the input takes the region's nearest values), the
    size the region is brought to (``pass_h``, ``pass_w``; a resize where it differs), the depth
    factor of a resized region and whether rows longer than ``FIT_SQUEEZE`` x the training height
    run as full-width passes of that height, blended (``row_tiles``). Every pass keeps the trained
    network's global pooling, so every backend runs the same rule."""
    top: int
    left: int
    height: int
    width: int
    pass_h: int
    pass_w: int
    depth_factor: float
    row_tiles: bool

    @property
    def identity(self) -> bool:
        """True when the input runs as it is, in one pass."""
        return self.crop == (0, 0, self.height, self.width)

    @property
    def crop(self):
        """(top, left, height, width) where the pass is the region as it is, one pass and nothing
        resized (a selection run on that crop serves it); None otherwise."""
        if self.row_tiles or (self.pass_h, self.pass_w) != (self.height, self.width):
            return None
        return self.top, self.left, self.height, self.width


def _fit_side(length: int, train: int, end: bool) -> tuple:
    """(start, region length, target length) of one side (``end``: a crop keeps the side's end)."""
    if length <= train or length > FIT_SQUEEZE * train:
        return 0, length, length                      # as it is (long rows: row tiles)
    if length <= FIT_CROP * train:
        return (length - train if end else (length - train) // 2), train, train   # cropped
    return 0, length, train                           # resized


def fit_plan(h: int, w: int, tile, anchor: str = "center", frame_h: int | None = None) -> FitPlan:
    """The ``fitted`` rule over an h x w input through a head trained on ``tile`` = (th, tw) crops.
    A bottom-anchored head (KITTI: its crops kept the frame's bottom) first drops the rows above its
    training frame's height ``frame_h`` when the input is at most ``FIT_SQUEEZE`` x that tall (the
    sky of a raw KITTI frame, which its frames never had) and crops rows from the bottom. Each side
    is then kept (up to the training side), cropped to it (up to ``FIT_CROP`` x), resized to it (up
    to ``FIT_SQUEEZE`` x; the depth times the area ratio ** ``FIT_DEPTH_POWER``), or, longer, kept:
    a long width whole in the pass, long rows in full-width passes of the training height."""
    th, tw = (int(v) for v in tile)
    bottom = anchor == "bottom"
    cut = h - int(frame_h) if bottom and frame_h and frame_h < h <= FIT_SQUEEZE * frame_h else 0
    top, rh, ph = _fit_side(h - cut, th, bottom)
    left, rw, pw = _fit_side(w, tw, False)
    factor = ((ph * pw) / (rh * rw)) ** FIT_DEPTH_POWER if (ph, pw) != (rh, rw) else 1.0
    return FitPlan(cut + top, left, rh, rw, ph, pw, float(factor), ph > th)


def head_anchors(letters) -> list:
    """Per head, where its training crops lay in the frame (``models.modules.ANCHORS``): "bottom"
    for a KITTI-recipe domain (its crops keep the bottom rows, where the LiDAR is), else "center"."""
    out = []
    for c in letters:
        try:
            out.append("bottom" if get_domain(c).transform == "kitti" else "center")
        except ValueError:  # a custom domain that is not registered here
            out.append("center")
    return out


def tile_weights(length: int, tile: int, anchor: str = "center") -> list:
    """[(start, weights (tile,))] of the tiles along one side of ``length`` (``tile_starts``):
    ``tent`` weights; with ``anchor="bottom"`` the last (bottom) tile, laid where the head's
    training crops lay, alone gives the rows it covers, the tiles above only the rows above it."""
    starts = tile_starts(length, tile)
    out = [(s, tent(tile)) for s in starts]
    if anchor == "bottom" and len(starts) > 1:
        last = starts[-1]
        out[-1] = (last, torch.ones(tile))
        for k, (s, w) in enumerate(out[:-1]):
            w = w.clone()
            w[max(0, last - s):] = 0.0
            out[k] = (s, w)
    return out


# ----------------------------------------------------------------------------------------------
# Selector statistics on frames and the out-of-domain threshold
# ----------------------------------------------------------------------------------------------
OOD_QUANTILE = 0.99   # of the held-out in-domain frames' distances ...
OOD_MARGIN = 1.5      # ... times this margin is a head's out-of-domain threshold


def frame_variants(img: Image.Image, rng: np.random.Generator):
    """The frames a user may feed for one replay image: as is, mirrored, at half resolution, and a
    random crop (60-100 % of each side, so other aspect ratios); the selection input normalises the
    resolution, so 2x needs no variant of its own."""
    w, h = img.size
    yield img
    yield img.transpose(Image.FLIP_LEFT_RIGHT)
    yield img.resize((max(8, w // 2), max(8, h // 2)), Image.BILINEAR)
    cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    yield img.crop((x0, y0, x0 + cw, y0 + ch))


def fit_frame_statistics(fit, calibrate, area, shrink=None, ood=None,
                         descriptor: str = DEFAULT_SELECT_DESCRIPTOR) -> dict:
    """The ``frames`` selector statistics: an LDA (prototypes.fit_lda) of per-domain descriptor
    lists ``fit`` (each (n_d, 2C)), and per head an out-of-domain threshold from the held-out
    descriptors ``calibrate``: the OOD_QUANTILE of the smallest distance of held-out frames the
    head was chosen for, times OOD_MARGIN. ``ood``: (fit, calibrate) lists of out-of-domain
    descriptors, for the verdict stored as ``"ood"`` (inference/ood.py). ``descriptor``
    (``prototypes.SELECT_DESCRIPTORS``): "fused+layer1" fits the LDA on the ``ood`` lists instead
    (the fused descriptor joined with layer1's; "fused" without them), stored as ``"descriptor"``."""
    if descriptor not in SELECT_DESCRIPTORS:
        raise ValueError(f"unknown selection descriptor {descriptor!r}; choose one of {SELECT_DESCRIPTORS}")
    if descriptor != "fused" and ood is not None:
        fit, calibrate = ood
    else:
        descriptor = "fused"
    stats = fit_lda(fit, LDA_SHRINK if shrink is None else shrink)
    cal = torch.cat(calibrate).float()
    d = lda_distances(cal, stats)
    best, chosen = d.min(dim=1)
    thresholds = []
    for k in range(len(fit)):
        mine = best[chosen == k]
        ref = mine if mine.numel() else best
        thresholds.append(float(torch.quantile(ref.double(), OOD_QUANTILE)) * OOD_MARGIN)
    truth = torch.cat([torch.full((c.shape[0],), k) for k, c in enumerate(calibrate)])
    stats.update({"area": float(area), "descriptor": descriptor, "thresholds": thresholds, "quantile": OOD_QUANTILE,
                  "margin": OOD_MARGIN, "calibration_counts": [int(c.shape[0]) for c in calibrate],
                  "calibration_accuracy": float((chosen == truth).float().mean())})
    if ood is not None:  # the verdict (inference/ood.py); the LDA thresholds stay for older readers
        stats["ood"] = fit_ood(*ood)
    return stats


def selects_on_layer1(stats: dict) -> bool:
    """True when ``stats``' LDA was fitted on the fused + layer1 descriptor (older statistics: fused)."""
    return stats.get("descriptor", "fused") != "fused"


def frame_distances(desc: torch.Tensor, stats: dict):
    """(distances (B,D), nearest head (B,), out of domain (B,) bool) of selection descriptors (the
    descriptor ``stats`` were fitted on: ``selects_on_layer1``): the nearest LDA distance above the
    chosen head's threshold (the verdict of checkpoints without the ``"ood"`` statistics;
    FramePipeline.select replaces it by inference/ood.py's where stored)."""
    d = lda_distances(desc, stats)
    best, chosen = d.min(dim=1)
    thr = torch.tensor(stats["thresholds"], dtype=best.dtype)
    return d, chosen, best > thr[chosen]


# ----------------------------------------------------------------------------------------------
# Reselection in streams
# ----------------------------------------------------------------------------------------------
GATE_GRID = (6, 8)       # SelectionGate's descriptor: the frame's mean colour in 6x8 cells
GATE_THRESHOLD = 0.05    # ... reselect when it moved by more (mean |difference|, ImageNet-normalised units)
GATE_MAX_AGE = 15        # ... and at least every this many frames


class SelectionGate:
    """A stream's head selection, repeated only when the frame has changed (``predict.py VIDEO``,
    ``--reselect``): a cheap descriptor of each frame (its mean colour in ``GATE_GRID`` cells, in
    the network's normalised units) is compared with the one of the frame the selection last ran
    on; within ``threshold`` (mean absolute difference) and ``max_age`` frames the selection's
    result (raw head, distances, verdict) is reused, else the selection runs again. ``threshold=0``
    reselects every frame (the rule before). A domain change (another scene, a cut, a cross-fade
    half way) moves the descriptor far more than the threshold: measured in bench/bench_stream.py."""

    def __init__(self, threshold: float = GATE_THRESHOLD, max_age: int = GATE_MAX_AGE):
        if threshold < 0 or max_age < 1:
            raise ValueError(f"reselection needs threshold >= 0 and max_age >= 1, got {threshold}, {max_age}")
        self.threshold, self.max_age = float(threshold), int(max_age)
        self.reset()

    def reset(self) -> None:
        self.ref = self.sel = None
        self.age = 0
        self.selections = self.frames = 0

    @staticmethod
    def descriptor(x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x.float(), GATE_GRID).flatten()

    def moved(self, desc: torch.Tensor) -> bool:
        if self.ref is None or self.threshold == 0 or self.age >= self.max_age:
            return True
        return float((desc - self.ref).abs().mean()) > self.threshold

    def __call__(self, x: torch.Tensor, select, descriptor=None) -> tuple:
        """(selection dict, whether it ran on this frame) of normalised frame ``x``; ``select(x)``
        runs the selection (``descriptor``: x's, when already computed)."""
        desc = self.descriptor(x) if descriptor is None else descriptor
        self.frames += 1
        if self.moved(desc):
            self.sel, self.ref, self.age = select(x), desc, 0
            self.selections += 1
            return self.sel, True
        self.age += 1
        return {k: v for k, v in self.sel.items() if k not in ("features", "blocks", "input")}, False  # of that frame


# ----------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------
class FramePipeline:
    """Whole frames through a DepthPredictor: head choice on the frame, the camera, depth at the
    frame's size. ``cameras``: per head, the camera it learned (``head_cameras``); ``tiles``: per
    head, the input size it was trained at ((h, w), the checkpoint's ``input_sizes``; None: one pass);
    ``anchors``: per head, where its training crops lay (``head_anchors``; default centred);
    ``rule``: how an input larger than the head's training input runs (``FRAME_RULES``):
    "fitted" (the default) one pass at the head's training geometry (``fit_plan``; the selection
    runs on the first head's fitted crop, so that a head fitted alike reuses its features; every
    backend runs it);
    "tiled" overlapping tiles of the training extent, blended; "tiled-anchored" the same tiles,
    a bottom-anchored head's rows from its bottom tile (where its training crops lay);
    "windowed" one pass with the channel attention pooled over windows of the training extent
    (``models.modules.Windows``; PyTorch path only, the other backends tile): cheaper than
    tiles, less accurate on K (docs/BENCHMARKS.md#frame-rule)."""

    def __init__(self, predictor, cameras, mode: str = "resample", max_pixels: int = MAX_PIXELS, tiles=None,
                 rule: str = DEFAULT_FRAME_RULE, anchors=None):
        if mode not in MODES:
            raise ValueError(f"unknown camera mode {mode!r}; choose one of {MODES}")
        if rule not in FRAME_RULES:
            raise ValueError(f"unknown frame rule {rule!r}; choose one of {FRAME_RULES}")
        self.predictor, self.cameras, self.mode, self.max_pixels = predictor, list(cameras), mode, max_pixels
        self.tiles = [tuple(int(v) for v in t) for t in tiles] if tiles else None
        self.rule = rule
        self.anchors = list(anchors) if anchors else ["center"] * len(self.cameras)

    @property
    def stats(self):
        return (self.predictor.prototypes or {}).get("frames")

    @property
    def windowed(self) -> bool:
        """True when inputs larger than the training input run in one windowed pass."""
        return self.rule == "windowed" and bool(getattr(self.predictor, "supports_windows", False))

    @property
    def shares_blocks(self) -> bool:
        """True when the selection pass keeps its encoder blocks: for a windowed depth pass, and for
        the fitted rule's out-of-domain score (their ``layer1``)."""
        return self.rule in ("windowed", "fitted") and bool(getattr(self.predictor, "supports_windows", False))

    def fit_plan(self, head: int, h: int, w: int) -> FitPlan | None:
        """The ``fitted`` rule's plan of an h x w input through head ``head`` (None under another
        rule, or without a stored training input size)."""
        if self.rule != "fitted" or not self.tiles:
            return None
        cam = self.cameras[head] if head < len(self.cameras) else None
        return fit_plan(h, w, self.tiles[head], self.anchors[head], cam.height if cam is not None else None)

    def windows(self, head: int):
        """The ``Windows`` of head ``head`` (None without a stored training input size)."""
        return Windows(self.tiles[head], self.anchors[head]) if self.tiles else None

    def select(self, x: torch.Tensor) -> dict:
        """Head choice for a normalised frame: ``{"raw_head", "distances", "ood", "ood_score",
        "features", "blocks", "size", "crop", "input"}`` (features of the selection input, its
        encoder blocks under the windowed and fitted rules, the first head's fitted crop it ran on and
        the resized frame, kept for reuse when the depth run has the same input)."""
        p = self.predictor
        stats = self.stats
        if not stats:  # an older checkpoint: its prototypes came from the first domain's input
            # crops, so the frame is scored as it was then (squeezed to that size), with no verdict
            sizes = checkpoint_meta(p).input_sizes or [selection_size(x.shape[-1], x.shape[-2], SELECT_AREA)]
            h, w = (int(v) for v in sizes[0])
            chosen, dists = p.select(p.trunk_features(resized(x, h, w)))
            return {"raw_head": int(chosen[0]), "distances": dists[0].float().cpu(), "ood": None,
                    "features": None, "blocks": None, "size": None}
        h, w = selection_size(x.shape[-1], x.shape[-2], stats["area"])
        xs = whole = resized(x, h, w)
        crop = self.selection_crop(h, w)
        if crop is not None:  # the first head's fitted crop: the depth pass of a head fitted alike shares it
            xs = xs[..., crop[0]:crop[0] + crop[2], crop[1]:crop[1] + crop[3]]
        blocks = None
        if self.shares_blocks:  # the encoder's blocks: a windowed depth pass, the fitted rule's verdict (layer1)
            blocks = p.trunk_blocks(xs)
            feats = p.fuse(blocks)
        else:
            feats = p.trunk_features(xs)
        desc = joined = pooled_descriptor(feats.float())
        on_layer1 = selects_on_layer1(stats)
        if stats.get("ood") or on_layer1:  # the out-of-domain descriptor (inference/ood.py)
            layer1 = blocks[0] if blocks is not None and self.rule == "fitted" else None
            joined = ood_descriptor(p.net, xs, desc, layer1)
        dists, chosen, ood = frame_distances(joined if on_layer1 else desc, stats)
        score = None
        if stats.get("ood"):  # the per-head verdict on the out-of-domain descriptor
            score = ood_scores(joined, stats["ood"])
            ood = ood_verdict(score, stats["ood"])
        return {"raw_head": int(chosen[0]), "distances": dists[0].float().cpu(), "ood": bool(ood[0]),
                "ood_score": None if score is None else float(score[0]),
                "features": feats, "blocks": blocks, "size": (h, w), "crop": crop, "input": whole}

    def selection_crop(self, h: int, w: int):
        """(top, left, height, width) of the selection input (h x w) that the ``fitted`` rule's
        pass of the first head would crop it to (None: no crop, or another rule): selecting on that
        crop lets the depth pass of a head with the same plan (N and S: the same camera and
        training input) reuse the selection's features."""
        plan = self.fit_plan(0, h, w)
        return None if plan is None or plan.identity else plan.crop

    def depth(self, x: torch.Tensor, head: int, with_uncertainty: bool, feats=None):
        """(depth, uncertainty or None) (1,1,h',w') covering the network input ``x`` (1,3,h,w)
        through head ``head`` (``feats``: the pass's features when already computed). The "fitted"
        rule (the default): one pass at the head's training geometry (:meth:`_fitted`; a head is at
        its best on inputs of the size it learned, above all in rows). The rules before it: up to
        the head's training input size in one pass; a larger input with "windowed" in one pass with
        the attention pooled over windows of that extent, with "tiled" in overlapping tiles of that
        size, blended (``tile_weights``; "tiled-anchored": a bottom-anchored head's rows from its
        bottom tile)."""
        p = self.predictor
        h, w = x.shape[-2:]
        plan = self.fit_plan(head, h, w)
        if plan is not None:
            return self._fitted(x, head, plan, with_uncertainty, feats)
        th, tw = self.tile_size(head, h, w)
        if (th, tw) == (h, w) or self.windowed:
            if feats is None:
                feats = p.trunk_features(x, windows=self.windows(head)) if (th, tw) != (h, w) \
                    else p.trunk_features(x)
            return p.run_heads(feats, torch.tensor([head]), with_uncertainty)  # at half resolution
        anchor = self.anchors[head] if self.rule == "tiled-anchored" else "center"
        return self._tiles(x, head, th, tw, with_uncertainty, anchor)

    def _fitted(self, x: torch.Tensor, head: int, plan: FitPlan, with_uncertainty: bool, feats=None):
        """(depth, uncertainty or None) (1,1,h,w) of the ``fitted`` rule (:func:`fit_plan`): the region
        cropped, resized to the training side where it is a little longer, one pass with the trained
        global pooling (rows longer still in full-width passes of the training height, blended), the
        depth times the plan's factor, the rest of the input replicated from the region's edge.
        ``feats``: the pass's features when already computed (the selection's, same input)."""
        p = self.predictor
        h, w = x.shape[-2:]
        region = x[..., plan.top:plan.top + plan.height, plan.left:plan.left + plan.width]
        if (plan.pass_h, plan.pass_w) != (plan.height, plan.width):
            region = resized(region, plan.pass_h, plan.pass_w)
        if plan.row_tiles:
            d, u = self._tiles(region, head, self.tiles[head][0], plan.pass_w, with_uncertainty, "center")
        else:
            if feats is None:
                feats = p.trunk_features(region)
            d, u = p.run_heads(feats, torch.tensor([head]), with_uncertainty)  # at half resolution
        if plan.identity:  # the input as it is: brought to the frame's size once, by the caller
            return d, u
        d = upsample_to(d, (plan.height, plan.width)) * plan.depth_factor
        pad = (plan.left, w - plan.left - plan.width, plan.top, h - plan.top - plan.height)
        d = F.pad(d, pad, mode="replicate") if any(pad) else d
        if u is not None:  # a log-variance of depth over its median: no factor
            u = upsample_to(u, (plan.height, plan.width))
            u = F.pad(u, pad, mode="replicate") if any(pad) else u
        return d, u

    def _fit_passes(self, head: int, plan: FitPlan) -> int:
        """Network passes of a fitted plan."""
        return len(tile_starts(plan.pass_h, self.tiles[head][0])) if plan.row_tiles else 1

    def _tiles(self, x: torch.Tensor, head: int, th: int, tw: int, with_uncertainty: bool,
               anchor: str = "center"):
        """(depth, uncertainty or None) (1,1,h,w) of ``x`` in overlapping th x tw tiles, blended
        (``tile_weights``; ``anchor="bottom"``: the rows the bottom tile covers from it alone)."""
        p = self.predictor
        h, w = x.shape[-2:]
        rows, cols = tile_weights(h, th, anchor), tile_weights(w, tw)
        boxes = [(y, x0) for y, _ in rows for x0, _ in cols]
        weights = [wr[:, None] * wc[None, :] for _, wr in rows for _, wc in cols]
        acc = [torch.zeros(1, 1, h, w), torch.zeros(1, 1, h, w) if with_uncertainty else None]
        norm = torch.zeros(1, 1, h, w)
        per_batch = max(1, self.max_pixels // (th * tw))  # tiles in batches within the pixel cap
        u = None
        for start in range(0, len(boxes), per_batch):
            part = list(range(start, min(start + per_batch, len(boxes))))
            batch = torch.cat([x[..., boxes[k][0]:boxes[k][0] + th, boxes[k][1]:boxes[k][1] + tw] for k in part])
            d, u = p.run_heads(p.trunk_features(batch), torch.full((len(part),), head), with_uncertainty)
            outs = [upsample_to(d, (th, tw)), upsample_to(u, (th, tw)) if u is not None else None]
            for j, k in enumerate(part):
                y, x0 = boxes[k]
                norm[..., y:y + th, x0:x0 + tw] += weights[k]
                for a, o in zip(acc, outs):
                    if a is not None and o is not None:
                        a[..., y:y + th, x0:x0 + tw] += o[j].cpu() * weights[k]
        return acc[0] / norm, (acc[1] / norm if u is not None else None)

    def tile_size(self, head: int, h: int, w: int) -> tuple:
        """(tile h, tile w) of an h x w input through head ``head``: a side up to TILE_SLACK times
        the head's training input is kept whole, a longer one is cut into tiles of the training
        size. Measured on the quickstart model (bench/bench_frames.py, 20 frames per domain): a
        slack of 1.25 (K's 176 rows whole instead of two 160-row tiles, N's 160x120 frame in one
        pass instead of four 152x114 tiles) raised K's AbsRel from 0.338 to 0.475 and N's from
        0.451 to 0.464, for 2.5x less latency on N; accuracy first, so 1.0."""
        if not self.tiles:
            return h, w
        th, tw = self.tiles[head]
        return (h if h <= TILE_SLACK * th else th), (w if w <= TILE_SLACK * tw else tw)

    def run(self, img, head=None, choose=None, camera: CameraHint | None = None,
            want_distances: bool = False, with_uncertainty: bool = True, gate: SelectionGate | None = None,
            on_choice=None) -> dict:
        """One frame (PIL image or (H,W,3) uint8). Returns ``{"depth", "uncertainty"}`` (H,W)
        float32 at the frame's size, ``"head"``, ``"how"`` ("given"/"auto"), ``"raw_head"``,
        ``"distances"``, ``"ood"`` (True/False, None without calibrated statistics),
        ``"camera"`` (the frame's camera, a dict with ``"assumed"``), ``"input_size"`` [h, w],
        ``"tiles"`` (network passes) and ``"depth_scale"``. ``choose(raw_head, distances) -> head``
        replaces the nearest-head rule (the streams' smoothing). ``gate``: a stream's
        :class:`SelectionGate` (the selection reused while the frame has not changed; ``"selected"``
        says whether it ran on this frame). ``on_choice()`` is called once the head is chosen, before
        the depth pass (a stream running frames at once lets the next frame choose then)."""
        x = to_tensor(img)
        H, W = x.shape[-2:]
        sel, selected = None, None
        if head is None or (want_distances and self.predictor.prototypes):
            if gate is None:
                sel, selected = self.select(x), True
            else:
                sel, selected = gate(x, self.select)
        if head is not None:
            chosen, how = int(head), "given"
        else:
            raw = sel["raw_head"]
            chosen, how = (raw if choose is None else int(choose(raw, sel["distances"]))), "auto"
        if on_choice is not None:
            on_choice()
        frame_cam, assumed = resolve_camera(camera, W, H, self.cameras[chosen])
        plan = plan_frame(W, H, frame_cam, self.cameras[chosen], self.mode, self.max_pixels)
        ph, pw = plan.padded
        th, tw = self.tile_size(chosen, ph, pw)
        fit = self.fit_plan(chosen, ph, pw)
        reuse = None
        if sel is not None and sel["size"] == (ph, pw) == (plan.height, plan.width):
            # the selection's pass serves the depth: its features (run on this head's fitted crop,
            # or on the whole input), or its encoder blocks fused with the attention pooled over
            # the head's windows
            if sel.get("crop") is not None:
                if fit is not None and fit.crop == sel["crop"]:
                    reuse = sel.get("features")
            elif (th, tw) == (ph, pw) or (fit is not None and fit.identity):
                reuse = sel.get("features")
            elif self.windowed and sel.get("blocks") is not None:
                reuse = self.predictor.fuse(sel["blocks"], self.windows(chosen), sel["size"])
        same = sel is not None and sel.get("input") is not None and sel["size"] == (plan.height, plan.width)
        net_in = sel["input"] if same else resized(x, plan.height, plan.width)  # the selection's, where it is
        del x
        if (ph, pw) != (plan.height, plan.width):  # a side under MIN_SIDE: padded, then cropped away
            net_in = F.pad(net_in, (0, pw - plan.width, 0, ph - plan.height), mode="replicate")
        depth, unc = self.depth(net_in, chosen, with_uncertainty, reuse)
        if (ph, pw) != (plan.height, plan.width):
            depth = upsample_to(depth, (ph, pw))[..., :plan.height, :plan.width]
            unc = None if unc is None else upsample_to(unc, (ph, pw))[..., :plan.height, :plan.width]
        if fit is not None:
            passes = self._fit_passes(chosen, fit)
        else:
            passes = 1 if self.windowed else len(tile_starts(ph, th)) * len(tile_starts(pw, tw))
        out = {"depth": (upsample_to(depth, (H, W))[0, 0] * plan.depth_scale).cpu().numpy().astype(np.float32),
               "uncertainty": None, "head": chosen, "how": how,
               "raw_head": None if sel is None else sel["raw_head"],
               "distances": None if sel is None else sel["distances"],
               "ood": None if sel is None else sel["ood"],
               "ood_score": None if sel is None else sel.get("ood_score"),
               "camera": {**frame_cam.as_dict(), "assumed": assumed},
               "input_size": [plan.height, plan.width],
               "tiles": passes,
               "depth_scale": float(plan.depth_scale), "selected": selected}
        if unc is not None:
            out["uncertainty"] = upsample_to(unc, (H, W))[0, 0].cpu().numpy().astype(np.float32)
        return out
