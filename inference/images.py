"""Depth for image files: reading them and the per-image predictor (domain choice, input size,
upsampling to the original size); the files written of a prediction are inference/outputs.py's.

Used by predict.py (the command, cli/predict.py), inference/stream.py (videos and frame folders) and
demo.py. Settings come as keywords (:class:`ImageOptions`, ``RuntimeOptions``); what the library
refuses is an ``InputError`` (a ``CheckpointError`` for the checkpoint), its message naming the
option of predict.py that the setting comes from.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from base.domains import SENSORS, clamp_depth, get_domain
from base.images import normalize
from loaders import load_rgb
from losses import upsample_to
from base.errors import InputError
from models.checkpoint import check_checkpoint_path, checkpoint_letters, checkpoint_meta, default_scale
from inference.predictor import DepthPredictor, RuntimeOptions, build_predictor
from inference.replay import replay_prototypes
from inference.outputs import OUTPUT_SUFFIXES, is_output_name
from base.uncertainty import calibration_scales, head_calibration, interval_maps, spread
from inference.known_depth import KnownPoints, fit_known_scale
from inference.frames import DEFAULT_FRAME_RULE


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif")





# Images above this many pixels are refused from their header (--max-pixels): predicting,
# upsampling and colour-mapping cost well over 100 bytes per pixel, so 25 M pixels (a 24 MP camera's
# 6000x4000 passes) stay within a few GB, where PIL's own guard (89 M pixels) would allow several
# times more (measured: docs/BENCHMARKS.md#figures-that-were-in-the-codes-comments).
DEFAULT_MAX_PIXELS = 25_000_000


def read_rgb(path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """8-bit RGB PIL image of any readable file (loaders.load_rgb), turned upright by its EXIF
    orientation (a phone photo is stored sideways with a rotation tag); more than ``max_pixels``
    pixels (None: no limit) is refused from the header, before decoding."""
    from base.safeio import protect
    img = load_rgb(str(path), apply_exif=True, max_pixels=max_pixels)
    protect(path, "an input image")  # no output of this process may replace it
    return img


def parse_max_pixels(text) -> int:
    """--max-pixels: a positive pixel count, e.g. 25000000 or 25e6."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not 1 <= value < math.inf:
        raise InputError(f"--max-pixels {text!r}: expected a positive number of pixels, e.g. 25e6")
    return int(value)


def to_input(img: Image.Image, size) -> torch.Tensor:
    """(1,3,H,W) normalized network input at ``size`` = (H, W) from an RGB image."""
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return normalize(x)


def parse_intrinsics_spec(text):
    """--intrinsics: "fx,fy,cx,cy" or "fx,fy,cx,cy@WxH" (the image size they were measured at:
    rescaled to each image's) or four numbers -> ((fx, fy, cx, cy), (W, H) or None). Finite
    numbers and positive focal lengths, else an InputError naming the option; the rest is checked
    against each image (inference.frames.check_intrinsics)."""
    size = None
    body = text
    if isinstance(text, str) and "@" in text:
        body, _, at = text.partition("@")
        try:
            w, h = (int(v) for v in at.lower().split("x"))
            size = (w, h) if w > 0 and h > 0 else None
        except ValueError:
            size = None
        if size is None:
            raise InputError(f"--intrinsics {text!r}: expected fx,fy,cx,cy@WxH with the image size in "
                             f"pixels after @, e.g. 721.5,721.5,609.6,172.9@1242x375")
    try:
        values = [float(v) for v in (str(body).split(",") if isinstance(body, str) else body)]
    except (TypeError, ValueError):
        values = []
    if (len(values) != 4 or not all(math.isfinite(v) for v in values) or values[0] <= 0
            or values[1] <= 0):
        raise InputError(f"--intrinsics {text!r}: expected fx,fy,cx,cy (finite pixels, positive focal "
                         f"lengths), optionally @WxH (the image size they are for)")
    return tuple(values), size


def parse_intrinsics(text):
    """--intrinsics -> (fx, fy, cx, cy) (:func:`parse_intrinsics_spec` without the size)."""
    return parse_intrinsics_spec(text)[0]


def exif_orientation(path) -> int:
    """A file's EXIF orientation tag (1-8; 1 when none or unreadable)."""
    try:
        with Image.open(path) as im:
            value = int(im.getexif().get(0x0112) or 1)
    except Exception:  # noqa: BLE001 - no EXIF is the usual case
        return 1
    return value if 1 <= value <= 8 else 1


def camera_hint(options, path=None):
    """The frame camera the user gave (``options.intrinsics``, ``options.fov``: an
    :class:`ImageOptions`), else ``path``'s EXIF 35 mm focal length (a file path, or a PIL image
    as opened), as an ``inference.frames.CameraHint`` (empty: the chosen head's camera is assumed).
    The one rule of every path: predict.py, its --stream and videos, the demo (through
    :meth:`Predictor.camera_of`)."""
    from inference.frames import CameraHint, exif_focal_35mm, oriented_intrinsics, parse_fov
    if getattr(options, "intrinsics", None):
        k, size = parse_intrinsics_spec(options.intrinsics)
        orientation = exif_orientation(path) if isinstance(path, (str, os.PathLike)) else 1
        if orientation != 1:  # given for the stored pixel grid: turned upright with the pixels
            if size is None:
                with Image.open(path) as im:
                    stored = im.size
            k, size = oriented_intrinsics(k, size or stored, orientation)
        return CameraHint(intrinsics=k, intrinsics_size=size)
    if getattr(options, "fov", None) is not None:
        try:
            return CameraHint(fov_deg=parse_fov(options.fov))
        except ValueError as e:
            raise InputError(str(e)) from None
    return CameraHint(focal_35mm=exif_focal_35mm(path)) if path is not None else CameraHint()


def collect_inputs(target: Path, out_dir: Path, recursive: bool):
    """(images to process, notes about skipped files). A single file is always processed."""
    if target.is_file():
        return [target], []
    if not target.exists():
        raise InputError(f"input {str(target)!r} does not exist (expected an image file or a folder of images)")
    if not target.is_dir():  # a FIFO, socket or device: reading it could block or never end
        raise InputError(f"input {str(target)!r} is not a regular file nor a folder (expected an image file "
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
    from base.safeio import check_folder
    shown = str(out_dir)  # shown escaped by the command's error line (cli.errors.error_line)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {shown}: is a file; expected an output folder")
    check_folder(out_dir, "--out")  # the write guard's rule for folders
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out {shown}: cannot create the output folder ({e.strerror or e})") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise InputError(f"--out {shown}: the folder is not writable")


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


@dataclass
class ImageOptions:
    """How :class:`Predictor` chooses the head, the network input and the camera of each image.

    The fields are predict.py's options of the same names (their help texts live here; cli/predict.py
    declares the options from them). ``size`` is the parsed (H, W); ``intrinsics`` "fx,fy,cx,cy" or
    four numbers and ``fov`` degrees are checked when a Predictor is built.
    """
    domain: str | None = field(default=None, metadata={"help": (
        "use this learned domain's head (letter or name, e.g. N or nyu); default: chosen per image by "
        "the nearest domain prototype")})
    selector: str | None = field(default=None, metadata={"help": (
        "prototype distance for automatic selection under --size, and on whole frames of a checkpoint "
        "without frame statistics (see test_inference.py); default: lda where the checkpoint stores its "
        "statistics, else pooled. Whole frames of a checkpoint with frame statistics are scored by those "
        "(said on stderr when --selector is given)")})
    replay_root: str | None = field(default=None, metadata={"help": (
        "compute prototypes from this data root's replay rows (for files without them)")})
    size: tuple[int, int] | None = field(default=None, metadata={"help": (
        "squeeze every image to this network input HxW (the old rule, for comparisons; default: the "
        "whole frame, aspect kept, at the chosen head's learned pixel scale)")})
    intrinsics: str | tuple | None = field(default=None, metadata={"help": (
        "fx,fy,cx,cy in pixels at the image file's own size and stored orientation (a photo's EXIF "
        "rotation turns them with its pixels), or fx,fy,cx,cy@WxH for values measured at another "
        "image size (rescaled to each image's); checked against each image (principal point inside, "
        "1-179 deg field of view): the frame is resampled to the chosen head's "
        "focal length, and --ply uses them (default: --fov, the EXIF focal length, else the chosen "
        "head's camera at the image's field of view; real sensors: " + ", ".join(
            f"{get_domain(c).name} {','.join(f'{v:g}' for v in cam.depth.focal_centre)} "
            f"@{cam.frame_size[0]}x{cam.frame_size[1]}" for c, cam in SENSORS.items()) + ")")})
    fov: float | str | None = field(default=None, metadata={"help": (
        "horizontal field of view of the camera in degrees (instead of --intrinsics); without either, "
        "a photo's EXIF 35 mm focal length is used, else the chosen head's camera is assumed (printed "
        "and written to the JSON)")})
    camera_mode: str = field(default="resample", metadata={"help": (
        "resample: the frame is resized so that its focal length matches the head's (measured better, "
        "bench/bench_frames.py); rescale: the frame's own pixels, the depth multiplied by the "
        "focal-length ratio")})
    frame_rule: str = field(default=DEFAULT_FRAME_RULE, metadata={"help": (
        "how a frame larger than the head's training input runs: fitted (default) = one pass at the "
        "head's training geometry (a side up to 6 percent longer cropped to it, up to 25 percent resized to it, "
        "a longer width whole; every backend runs it); tiled = overlapping tiles of "
        "the training size, blended (the rule before, 2.4-3.2x the cost); tiled-anchored = the same, "
        "a KITTI-like head's rows from its bottom tile; windowed = one pass over the whole input, the "
        "attention pooled over windows (less accurate on K). Measured: docs/BENCHMARKS.md#frame-rule; "
        "windowed runs on the PyTorch backend only, the others tile those frames")})
    max_pixels: int | None = field(default=DEFAULT_MAX_PIXELS, metadata={"help": (
        "refuse images with more pixels than this, read from the file's header before decoding "
        "(memory grows by well over 100 bytes per pixel)")})
    quiet: bool = field(default=False, metadata={"help": "no progress bar"})


def model_path(predictor: DepthPredictor) -> str:
    """The checkpoint a loaded predictor came from (load_checkpoint stores it), for messages."""
    return str(checkpoint_meta(predictor).path or "the loaded model")


class Predictor:
    """Chooses the domain and input size per image and runs DepthPredictor.

    ``source``: a checkpoint path (loaded here, run as ``runtime`` asks, ``order`` naming the heads
    of an authors' file, with ``options.selector``) or an already built DepthPredictor, used as it
    is (so a caller that holds one loads the checkpoint once); ``options.replay_root`` then sets its
    prototypes. Raises InputError (CheckpointError for the checkpoint) with the message of the
    predict.py option at fault, RuntimeUnavailable for a backend that is not installed.
    """

    def __init__(self, source, options: ImageOptions | None = None, *, device="cpu",
                 runtime: RuntimeOptions | None = None, order=None):
        self.options = options = options or ImageOptions()
        if isinstance(source, DepthPredictor):
            self.predictor, self.checkpoint = source, model_path(source)
        else:
            path = check_checkpoint_path(source)
            self.checkpoint = os.fspath(source)  # as given: predictions.json and the stream JSON name it
            self.predictor = build_predictor(path, runtime, device, order=order, selector=options.selector)
        path = Path(self.checkpoint)
        meta = self.predictor.meta
        self.letters = checkpoint_letters(meta, path)
        self.forced = self._forced_head(options.domain, path)
        if self.forced is None and options.replay_root:
            self._replay_prototypes(options.replay_root, options.quiet)
        elif self.forced is None and not checkpoint_meta(meta).prototypes:
            raise InputError(f"checkpoint {str(path)!r} stores no domain prototypes, so the domain cannot be "
                             f"chosen automatically; give --domain (one of {', '.join(self.letters)}) or "
                             f"--replay-root DIR to compute prototypes from replay data")
        self.size = tuple(int(v) for v in options.size) if options.size else None
        self.pipeline = self.predictor.frame_pipeline(options.camera_mode, options.frame_rule)
        self.camera = camera_hint(options)
        self.sizes, self.ranges = self._head_sizes_and_ranges(meta)
        self.interval_scales = calibration_scales(meta, len(self.letters))  # 1 where none is stored
        self.calibrations = [head_calibration(meta, i, len(self.letters)) for i in range(len(self.letters))]

    def _forced_head(self, domain, path):
        """The head index of ``domain`` (--domain), or None: chosen per image."""
        if domain is None:
            return None
        try:
            letter = get_domain(domain).letter
        except ValueError as e:
            raise InputError(f"--domain: {e}") from None
        if letter not in self.letters:
            raise InputError(f"--domain {domain}: not learned by {str(path)!r} "
                             f"(its domains, in order: {self.letters})")
        return self.letters.index(letter)

    def _replay_prototypes(self, replay_root, quiet) -> None:
        """The prototypes and frame statistics of ``replay_root``'s replay rows, on this predictor."""
        protos = replay_prototypes(self.predictor.net, self.letters, replay_root,
                                   default_scale(self.predictor.meta), self.predictor.device, quiet=quiet)
        protos["frames"] = replay_frame_statistics(self.predictor, self.letters, replay_root)
        self.predictor.prototypes = protos

    def _head_sizes_and_ranges(self, meta):
        """Per head, the input size (H, W) and the depth range (metres): the checkpoint's, else its
        domain's defaults."""
        meta = checkpoint_meta(meta)
        return meta.head_sizes(self.letters), meta.head_ranges(self.letters)

    def camera_of(self, path):
        """The ``inference.frames.CameraHint`` of the image file ``path`` (or an opened PIL image;
        None: a frame without a file, a video's): the camera given (``intrinsics``, ``fov``), else
        its EXIF focal length (:func:`camera_hint`). predict.py, the streams and the demo all ask
        this."""
        return camera_hint(self.options, path)

    def selector_note(self) -> str | None:
        """A sentence when ``options.selector`` does not choose the heads: whole frames (no
        ``--size``) of a checkpoint with ``frames`` statistics are scored by those (with the
        out-of-domain verdict), so --selector applies to --size only; None otherwise."""
        chosen = self.options.selector
        if (not chosen or self.forced is not None or self.size is not None
                or not (self.predictor.prototypes or {}).get("frames")):
            return None
        return (f"--selector {chosen} applies to --size only: whole frames are scored by the "
                f"checkpoint's frame statistics (an LDA of replay frames, with the out-of-domain "
                f"verdict; inference/frames.py)")

    def distance_thresholds(self):
        """Per head, the calibrated out-of-domain threshold on the scale of the ``distances``
        :meth:`run` returns (a stream's smoother compares the two), or None: whole frames get the
        ``frames`` statistics' distances and thresholds; under ``--size`` (or without the
        statistics) the distances are the stored selector's on the squeezed input, another scale
        for which no threshold was calibrated."""
        stats = (self.predictor.prototypes or {}).get("frames")
        if not stats or self.size is not None:
            return None
        return list(stats["thresholds"])

    def interval(self, depth: np.ndarray, uncertainty: np.ndarray, head: int, level: float):
        """(lower, upper) metres of the central ``level`` interval around ``depth`` with head
        ``head``'s uncertainty calibration (base.uncertainty.head_calibration); ``depth`` is not changed."""
        return interval_maps(depth, uncertainty, self.calibrations[head], level)

    @property
    def interval_path(self) -> str:
        """The path this predictor's intervals are made on: "frames" (the frame pipeline), or
        "resized" (--size: squeezed to one input; no calibration was measured there)."""
        return "resized" if self.size is not None else "frames"

    def correct_scale(self, r: dict, points: KnownPoints, level: float = 0.9) -> tuple[np.ndarray, dict]:
        """(depth, fit): ``r``'s depth (a :meth:`run` result) times the robust scale of the known
        ``points`` (inference/known_depth.py), checked against the head's calibrated ``level``
        interval; unchanged when the check fails (``fit["ok"]`` False, ``fit["reason"]``)."""
        unc = r.get("uncertainty")
        sigma = spread(r["depth"], unc, self.interval_scales[r["head"]]) if unc is not None else None
        fit = fit_known_scale(r["depth"], points, sigma, level)
        return (r["depth"] * np.float32(fit["factor"]) if fit["ok"] else r["depth"]), fit

    def __call__(self, img: Image.Image):
        """(depth (H,W) metres, uncertainty (H,W), head index, how chosen) at the image's size."""
        r = self.run(img)
        return r["depth"], r["uncertainty"], r["head"], r["how"]

    def run(self, img: Image.Image, choose=None, head=None, want_distances=False, camera=None, gate=None,
            on_choice=None) -> dict:
        """One image through the frame pipeline (inference/frames.py): ``{"depth", "uncertainty"}``
        (H,W) at the image's size, ``"head"`` (index), ``"how"`` ("given" or "auto"), ``"raw_head"``
        (the nearest head on the frame, or None), ``"distances"`` ((D,) float32 tensor, or None),
        ``"ood"`` (no head fits: True/False; None without calibrated statistics), ``"camera"`` (the
        frame's camera and what was assumed), ``"input_size"`` and ``"depth_scale"``.

        ``head`` forces a head for this image (else ``--domain``, else automatic). ``choose(raw_head,
        distances) -> head`` replaces the per-image nearest-head rule (inference/stream.py's
        smoothing). ``camera``: an ``inference.frames.CameraHint`` (default: ``--intrinsics`` /
        ``--fov``). With ``--size`` the image is instead resized to that input (squeezed: the old
        rule, kept for comparisons). ``gate``: a stream's ``inference.frames.SelectionGate`` (the
        selection reused while the frame has not changed; not with ``--size``). ``on_choice()``: called
        once the head is chosen, before the depth pass (``inference.stream.run_stream``'s frames at once).
        """
        forced = head if head is not None else self.forced
        hint = camera if camera is not None else self.camera
        if self.size is not None:
            return self._run_sized(img, choose, forced, want_distances, hint, on_choice)
        return self.pipeline.run(img, head=forced, choose=choose, camera=hint, want_distances=want_distances,
                                 gate=gate, on_choice=on_choice)

    def _run_sized(self, img, choose, forced, want_distances, hint=None, on_choice=None) -> dict:
        """``--size HxW``: every image squeezed to that network input (no camera handling of the
        depth); ``"camera"`` is still the frame's (the camera given, else the chosen head's field of
        view at the image's own aspect ratio: frames.resolve_camera), for the point cloud."""
        from inference.frames import resolve_camera
        W, H = img.size
        out = raw = dists = None
        if forced is None or (want_distances and self.predictor.prototypes):
            out = self.predictor.predict(to_input(img, self.size), domain=None, with_uncertainty=True)
            raw, dists = int(out["domain"][0]), out["distances"][0].float().cpu()
        if forced is not None:
            chosen, how = int(forced), "given"
        else:
            chosen, how = (raw if choose is None else int(choose(raw, dists))), "auto"
        if on_choice is not None:
            on_choice()
        if out is None or chosen != raw:
            out = self.predictor.predict(to_input(img, self.size), domain=chosen, with_uncertainty=True)
        depth = upsample_to(out["depth"].float(), (H, W))[0, 0].cpu().numpy().astype(np.float32)
        unc = out["uncertainty"]
        unc = (upsample_to(unc.float(), (H, W))[0, 0].cpu().numpy().astype(np.float32)
               if unc is not None else None)
        cam, assumed = resolve_camera(hint, W, H, self.pipeline.cameras[chosen])
        return {"depth": depth, "uncertainty": unc, "head": chosen, "how": how, "raw_head": raw,
                "distances": dists, "ood": None, "camera": {**cam.as_dict(), "assumed": assumed},
                "input_size": list(self.size), "depth_scale": 1.0}

    def clamp(self, depth: np.ndarray, head: int) -> np.ndarray:
        """``depth`` clipped to head ``head``'s domain depth range (the default of every output;
        ``base.domains.clamp_depth``)."""
        return clamp_depth(depth, self.ranges[head])

