"""Depth for video streams: frame sources, online head selection that does not flicker, the writer.

``predict.py`` (its stream options: cli/stream.py) hands a video file, or a folder of frames with
``--stream``, to :func:`open_stream` and :func:`write_stream`:

    python predict.py drive.mp4 --checkpoint runs/quickstart/NKS.pth.tar --out out/
    python predict.py frames/ --stream --fps 10 --save-depth --out out/

The same from Python, settings as keywords (:class:`StreamOptions`)::

    model = Predictor("runs/quickstart/NKS.pth.tar")
    with open_stream(Path("drive.mp4"), Path("out")) as source:
        summary = write_stream(model, source, Path("out"), StreamOptions(save_depth=True))

Frames are processed in order, each through ``inference.images.Predictor.run`` (inference/frames.py's
frame pipeline: selection on the whole frame, depth at the chosen head's learned pixel scale, at the
frame's size). The head is chosen online by :class:`HeadSmoother` from every frame's distances,
with the checkpoint's calibrated thresholds where it stores them; the log and the summary say
which frames no head fits. Written into
``--out`` for an input ``<name>``:

* ``<name>_depth.mp4``: each frame beside its colourised depth, the chosen domain written on top;
* ``<name>_frames.csv``: one row per frame: raw and chosen head, every prototype distance, latency;
* ``<name>_stream.json``: the settings and a summary (frames, switches, frames/s);
* ``<name>_depth/<frame>_depth.png`` (16-bit mm) and ``.npy`` (metres) with ``--save-depth``.

Decoding runs in a reader thread and colourising/encoding in a writer thread, so they overlap with
the network (``--no-threads`` runs them in the main thread, for comparison). A stream stopped half
way (a frame that cannot be read, Ctrl-C, a failed write) keeps the log of the frames done and
ends in :class:`StreamStopped`. What the library refuses is an ``InputError``.
"""
from __future__ import annotations

import csv
import math
import functools
import queue
import re
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from base.errors import InputError
from base.images import DEPTH_CMAP
from base.safeio import WriteError, hold_lock, write_json
from inference.frames import GATE_THRESHOLD
from inference.predictor import predictor_settings
from inference.images import DEFAULT_MAX_PIXELS, collect_inputs, make_out_dir, read_rgb
from inference.outputs import write_depth
from base.safeio import atomic_write
from base.uncertainty import calibration_note, interval_summary, median_width

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
                    ".ts", ".mts", ".m2ts", ".3gp", ".3g2", ".ogv")  # transport streams, camcorders, phones
SMOOTHING_MODES = ("mean", "vote", "raw")
DEFAULT_WINDOW = 4
# HeadSmoother._decisive and the switching margin, chosen with bench/bench_stream.py on the quickstart
# model (the figures: docs/BENCHMARKS.md#figures-that-were-in-the-codes-comments)
DECISIVE_RATIO = 2.0
DEFAULT_MARGIN = 0.0  # a margin halves the wrong switches but delays N<->S changes
LABEL_HEIGHT = 22


# ----------------------------------------------------------------------------------------------
# Online head selection
# ----------------------------------------------------------------------------------------------
class HeadSmoother:
    """Head choice per frame from prototype distances, stable over time.

    ``mode="mean"`` (default): each frame's distances are divided by their minimum (so a frame far
    from every prototype does not outweigh the others), averaged over the last ``window`` frames,
    and the head switches only when another head's averaged distance is below the current head's
    by more than ``margin`` (relative; the hysteresis). ``mode="vote"``: the head with most per-frame
    nearest-prototype votes in the window, switched to only with a strict majority. ``mode="raw"``
    (or ``window=1`` with no margin): the per-frame rule, the nearest prototype of each frame.

    ``thresholds`` (per head; the checkpoint's calibrated out-of-domain thresholds of the ``frames``
    selector, frames.py): a frame that the current head's threshold rejects while its nearest head's
    accepts is decisive evidence of a new domain, and the head switches on that frame (the history
    restarts there). Smoothing is for ambiguous frames; a stream whose frames truly alternate between
    domains (a folder of unrelated photos, N, K, S, N, ...) then gets each frame's own head instead
    of a lagging average that switches just as often and is mostly wrong (measured in
    bench/bench_stream.py, condition "cycle").
    """

    def __init__(self, window: int = DEFAULT_WINDOW, mode: str = "mean", margin: float = DEFAULT_MARGIN,
                 thresholds=None):
        if mode not in SMOOTHING_MODES:
            raise ValueError(f"unknown smoothing mode {mode!r}; choose one of {SMOOTHING_MODES}")
        if window < 1:
            raise ValueError(f"the smoothing window must be at least 1 frame, got {window}")
        if not 0 <= margin < math.inf:  # NaN too: a NaN margin never switches
            raise ValueError(f"--switch-margin must be a finite number >= 0, got {margin}")
        self.window, self.mode, self.margin = int(window), mode, float(margin)
        self.calibrate(thresholds)
        self.history = deque(maxlen=self.window)
        self.current = None

    def calibrate(self, thresholds) -> None:
        """Use these per-head thresholds (None: none) for the decisive switch (class docstring)."""
        self.thresholds = None if thresholds is None else np.asarray(thresholds, np.float64)

    def reset(self) -> None:
        self.history.clear()
        self.current = None

    def __call__(self, raw_head, distances) -> int:
        """The head for this frame; ``distances`` (D,) (tensor or array) of this frame."""
        d = np.asarray(distances.cpu() if isinstance(distances, torch.Tensor) else distances, np.float64)
        raw = int(np.argmin(d)) if raw_head is None else int(raw_head)
        if self.mode == "raw":
            self.current = raw
            return raw
        if self._decisive(d, raw):
            self.history.clear()
            self.current = raw
        return self._smoothed(d, raw)

    def _decisive(self, d, raw) -> bool:
        """The current head's calibrated threshold rejects this frame and the nearest head's accepts
        it, or the current head is DECISIVE_RATIO times farther than the nearest (calibrated
        statistics only: their distances are squared Mahalanobis, on one scale for every head)."""
        t = self.thresholds
        if t is None or self.current is None or raw == self.current or t.size != d.size:
            return False
        rejected = d[self.current] > t[self.current] and d[raw] <= t[raw]
        return bool(rejected or (d[raw] > 0 and d[self.current] >= DECISIVE_RATIO * d[raw]))

    def _smoothed(self, d, raw) -> int:
        if self.mode == "vote":
            self.history.append(raw)
            votes = np.bincount(np.asarray(self.history), minlength=d.size)
            best = int(np.argmax(votes))
            if self.current is None or (best != self.current and votes[best] * 2 > len(self.history)):
                self.current = best
            return self.current
        # relative distances; a selector whose scores can reach 0 or below is shifted instead
        self.history.append(d / d.min() if d.min() > 0 else d - d.min() + 1.0)
        mean = np.mean(self.history, axis=0)
        best = int(np.argmin(mean))
        if self.current is None or mean[best] * (1.0 + self.margin) < mean[self.current]:
            self.current = best
        return self.current


# ----------------------------------------------------------------------------------------------
# Frame sources
# ----------------------------------------------------------------------------------------------
def is_video(path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _natural_key(path: Path):
    """frame2 before frame10."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def folder_frames(folder: Path, out_dir: Path) -> list:
    """The image files of ``folder`` in natural order (predict.py's rules for what is an image)."""
    images, notes = collect_inputs(Path(folder), Path(out_dir), recursive=False)
    for n in notes:
        print(n, file=sys.stderr)
    if not images:
        raise InputError(f"no image files found in {str(folder)!r}")
    return sorted(images, key=_natural_key)


def iter_folder(files, max_pixels=DEFAULT_MAX_PIXELS, with_paths=False):
    """(name, RGB uint8 array) of each frame file (upright by EXIF; over ``max_pixels``: refused);
    ``with_paths``: (name, array, path), so that the stream takes each file's camera (its EXIF
    focal length) as predict.py does on the same file."""
    for f in files:
        try:
            rgb = np.asarray(read_rgb(f, max_pixels))
        except Exception as e:  # noqa: BLE001 - a stream stops at an unreadable frame, saying which
            raise InputError(f"frame {str(f)!r}: {e}") from None
        yield (f.stem, rgb, f) if with_paths else (f.stem, rgb)


class VideoReader:
    """The RGB frames of a video file through imageio-ffmpeg's own reader, which lets ffmpeg probe
    the container: imageio's FFMPEG format refuses names it does not list (.ts, .mts, .m2ts, .m4v,
    .flv, .3gp, .3g2, .ogv), although ffmpeg reads them all. ``get_meta_data()`` (fps, size) is read
    from the header before any frame is decoded."""

    def __init__(self, path):
        import imageio_ffmpeg
        self._frames = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        self._meta = next(self._frames)

    def get_meta_data(self) -> dict:
        return self._meta

    def __iter__(self):
        w, h = self._meta["size"]
        for raw in self._frames:
            yield np.frombuffer(raw, np.uint8).reshape(h, w, 3)

    def close(self) -> None:
        self._frames.close()


def open_video(path):
    """(reader, frames per second) of a video file; a clear error when it cannot be read."""
    try:
        reader = VideoReader(path)
        fps = float(reader.get_meta_data().get("fps") or 0.0)
    except Exception as e:  # noqa: BLE001 - imageio/ffmpeg raise several types for a bad file
        raise InputError(f"video {str(path)!r} cannot be read ({type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else 'no detail'})") from None
    return reader, fps


def check_frame_size(reader, path, max_pixels) -> None:
    """A video whose frames are over ``max_pixels`` (--max-pixels, the limit of every image input)
    is refused from its header, before a frame is decoded (a 12000x12000 frame is 432 MB as RGB)."""
    size = reader.get_meta_data().get("size") if max_pixels is not None else None
    if size and size[0] * size[1] > max_pixels:
        raise InputError(f"video {str(path)!r}: its {size[0]}x{size[1]} frames ({size[0] * size[1] / 1e6:.1f} M "
                         f"pixels) are over --max-pixels {max_pixels / 1e6:g} M; shrink the video or raise "
                         f"--max-pixels")


def iter_video(reader):
    """(name, RGB uint8 array) of each decoded frame; names are frame numbers."""
    for i, frame in enumerate(reader):
        yield f"{i:06d}", np.ascontiguousarray(frame[..., :3])


class Prefetch:
    """Iterate ``iterable`` in a background thread, ``depth`` items ahead (decoding overlaps the
    network: ffmpeg's decoding and PIL/numpy release the GIL). Exceptions reach the consumer."""

    _END = object()

    def __init__(self, iterable, depth: int = 4):
        self.q = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._work, args=(iterable,), daemon=True)
        self.thread.start()

    def _work(self, iterable):
        try:
            for item in iterable:
                while not self.stop.is_set():
                    try:
                        self.q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self.stop.is_set():
                    return
            self.q.put(self._END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self.q.put(e)

    def __iter__(self):
        while True:
            item = self.q.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self):
        self.stop.set()


# ----------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _lut(cmap: str) -> np.ndarray:
    import matplotlib
    return (matplotlib.colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)


def colorize(values: np.ndarray, vmin: float, vmax: float, cmap: str = DEPTH_CMAP) -> np.ndarray:
    """(H,W) values -> (H,W,3) uint8 through a matplotlib colour map's 256-entry table (fast enough
    per video frame, unlike a figure with a colour bar); non-finite values are black."""
    lut = _lut(cmap)
    span = max(float(vmax) - float(vmin), 1e-6)
    finite = np.isfinite(values)
    idx = np.clip((np.where(finite, values, vmin) - vmin) / span * 255.0, 0, 255).astype(np.uint8)
    out = lut[idx]
    out[~finite] = 0
    return out


def compose_frame(rgb: np.ndarray, depth_rgb: np.ndarray, text: str, size=None) -> np.ndarray:
    """The frame and its colourised depth side by side under a label band; ``size`` (W,H) of each
    half (frames of another size are resized to it); the result has even sides (H.264 needs them)."""
    from PIL import Image, ImageDraw
    halves = []
    for arr in (rgb, depth_rgb):
        img = Image.fromarray(arr)
        if size is not None and img.size != tuple(size):
            img = img.resize(tuple(size), Image.BILINEAR)
        halves.append(img)
    w, h = halves[0].size
    W, H = 2 * w + (2 * w) % 2, h + LABEL_HEIGHT + (h + LABEL_HEIGHT) % 2
    canvas = Image.new("RGB", (W, H), (0, 0, 0))
    canvas.paste(halves[0], (0, LABEL_HEIGHT))
    canvas.paste(halves[1], (w, LABEL_HEIGHT))
    ImageDraw.Draw(canvas).text((4, 4), text, fill=(255, 255, 255))
    return np.asarray(canvas)


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------
VIDEO_PRESET = ["-preset", "veryfast"]  # the depth video's x264 preset (Sink)


class Sink:
    """Colourises, composes and writes each processed frame (video, depth files), optionally in a
    writer thread so that encoding overlaps the network of the next frame."""

    def __init__(self, video_path, fps, depth_dir, threaded=True):
        self.video_path, self.fps, self.depth_dir = video_path, fps, depth_dir
        self.writer = None
        self.size = None
        self.error = None
        self.q = queue.Queue(maxsize=4) if threaded else None
        if threaded:
            self.thread = threading.Thread(target=self._work, daemon=True)
            self.thread.start()

    def put(self, item: dict) -> None:
        if self.error is not None:
            raise self.error
        if self.q is None:
            self._write(item)
        else:
            self.q.put(item)

    def _work(self):
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.error is None:
                try:
                    self._write(item)
                except BaseException as e:  # noqa: BLE001 - reported by put()/close()
                    self.error = e

    def _write(self, item):
        if self.depth_dir is not None:
            write_depth(self.depth_dir / item["name"], item["depth"])  # <frame>_depth.png (mm) and .npy (metres)
        if self.video_path is None:
            return
        if self.size is None:  # every frame of the video gets the first frame's size
            self.size = (item["rgb"].shape[1], item["rgb"].shape[0])
        frame = compose_frame(item["rgb"], colorize(item["depth"], 0.0, item["vmax"]), item["text"], self.size)
        if self.writer is None:
            import imageio.v2 as iio
            # x264's "veryfast" preset: 7 ms of CPU per K-like frame against 17 ms for the default
            # "medium" (a file 8 % larger), CPU the network shares on a small machine
            self.writer = iio.get_writer(str(self._partial()), format="FFMPEG", fps=self.fps,
                                         codec="libx264", pixelformat="yuv420p", macro_block_size=1,
                                         ffmpeg_log_level="error", output_params=VIDEO_PRESET)
        self.writer.append_data(frame)

    def _partial(self) -> Path:
        """The video is written under this name and renamed when complete (no half-written file
        under the final name after a failure or Ctrl-C)."""
        return self.video_path.with_name(f"{self.video_path.stem}.part{self.video_path.suffix}")

    def close(self, complete: bool = True) -> None:
        """Finish writing; the video gets its final name only when ``complete``."""
        if self.q is not None:
            self.q.put(None)
            self.thread.join()
        if self.writer is not None:
            self.writer.close()
            if self.error is None and complete:
                self._partial().replace(self.video_path)
        if self.error is not None:
            raise self.error


def frame_label(model, index, head, raw_head, smoothing, vmax, ood=None) -> str:
    """The text written on a frame: number, chosen domain and how, the per-frame choice where it
    differs, the colour range."""
    from base.domains import get_domain
    letter = model.letters[head]
    how = "given" if model.forced is not None else ("per-frame" if smoothing == "raw" else "smoothed")
    note = f", this frame alone: {model.letters[raw_head]}" if raw_head is not None and raw_head != head else ""
    if ood:
        note += ", OUT OF DOMAIN"
    return f"frame {index}: {get_domain(letter).name} head ({letter}, {how}{note}), depth 0-{vmax:g} m"


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------
FRAMES_AT_ONCE = 2  # frames in flight by default on a CPU (PyTorch backend): docs/BENCHMARKS.md#frames-at-once


def resolve_frames_at_once(model, requested: int | None = None) -> int:
    """How many frames :func:`run_stream` runs at once for ``model`` (an ``inference.images.Predictor``):
    ``requested`` (--frames-at-once), else ``FRAMES_AT_ONCE`` on a CPU with the PyTorch backend and at
    least that many torch threads (each frame then takes the threads' share: two small passes keep
    two cores busier than one pass split over both), else 1. InputError for a number below 1, or
    above 1 on another backend or device (their sessions are not shared between threads here)."""
    p = model.predictor
    backend = getattr(p, "backend", "torch")
    torch_cpu = backend == "torch" and p.device.type == "cpu"
    if requested is None:
        return FRAMES_AT_ONCE if torch_cpu and torch.get_num_threads() >= FRAMES_AT_ONCE else 1
    if requested < 1:
        raise InputError(f"--frames-at-once must be at least 1, got {requested}")
    if requested > 1 and not torch_cpu:
        raise InputError(f"--frames-at-once {requested}: frames run at once only with the PyTorch backend on a "
                         f"CPU (this model runs {backend} on {p.device}); give 1")
    return int(requested)


class FrameTurns:
    """Frames in flight at once choose their heads in frame order: the selection gate and the
    smoother carry state from one frame to the next. Frame ``i`` waits for its turn before its
    selection and hands the turn on once its head is chosen (``done``), before its depth pass."""

    def __init__(self):
        self._cv = threading.Condition()
        self._next = 0

    def wait(self, index: int) -> None:
        with self._cv:
            self._cv.wait_for(lambda: self._next >= index)

    def done(self, index: int) -> None:
        with self._cv:
            if self._next == index:
                self._next = index + 1
                self._cv.notify_all()


class FramesAtOnce:
    """Up to ``n`` frames through ``compute(index, rgb, path, turns)`` at once, in threads with the
    torch threads shared out between them, their results handed back in frame order (``n=1``: in
    the caller's thread). ``failed``: a frame's computation raised (the frames after it are not
    handed back). The torch thread count is the process's: it is lowered while the frames run and
    given back by :meth:`close`."""

    def __init__(self, n: int, compute):
        self.n, self.compute, self.failed = int(n), compute, False
        self.pending = deque()
        self.pool = self.turns = self._threads = None
        if self.n > 1:
            from concurrent.futures import ThreadPoolExecutor
            self._threads = torch.get_num_threads()
            torch.set_num_threads(max(1, self._threads // self.n))
            self.turns = FrameTurns()
            self.pool = ThreadPoolExecutor(self.n, thread_name_prefix="frame")

    def put(self, index: int, name, rgb, path):
        """Submit a frame; yields (index, name, rgb, result) of the frames now due, in order (the
        first frame alone: the predictor's lazy set-up runs once)."""
        if self.pool is None:
            yield index, name, rgb, self._result(lambda: self.compute(index, rgb, path, None))
            return
        self.pending.append((index, name, rgb, self.pool.submit(self.compute, index, rgb, path, self.turns)))
        while self.pending and (index == 0 or len(self.pending) >= self.n):
            yield self._pop()

    def drain(self):
        """The frames still in flight, in order."""
        while self.pending:
            yield self._pop()

    def _pop(self):
        index, name, rgb, future = self.pending.popleft()
        return index, name, rgb, self._result(future.result)

    def _result(self, get):
        try:
            return get()
        except BaseException:
            self.failed = True
            raise

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            torch.set_num_threads(self._threads)
            self.pool = None


def run_stream(model, frames, *, smoother=None, sink=None, clamp=True, max_depth=None,
               threaded=True, max_frames=None, on_frame=None, interval=0.9, records=None,
               reselect: float = 0.0, frames_at_once: int = 1) -> list[dict]:
    """Run ``model`` (an ``inference.images.Predictor``) over ``frames`` ((name, RGB array) or
    (name, RGB array, file path) in order; a file's camera is ``model.camera_of(path)``).

    ``smoother``: a :class:`HeadSmoother` (None: the per-frame rule). Returns one record per frame:
    ``{"frame", "name", "raw_head", "head", "distances", "latency_ms", "ood", "depth_min", "depth_max"}``
    (``ood``: no learned head fits the frame, frames.py's verdict; None without calibrated statistics),
    and ``"interval_width_m"``: the frame's median width of its central ``interval`` interval
    (calibrated, evaluation/uncertainty.py; None without an uncertainty map). ``records``: a list
    the records are appended to as they come (so that a stream stopped half way keeps them).
    ``reselect``: the ``inference.frames.SelectionGate`` threshold (0: the selection runs on every
    frame; else it is reused while the frame's cheap descriptor stays within it; the record's
    ``"selected"`` says whether it ran). ``frames_at_once``: frames in flight (:class:`FramesAtOnce`;
    their heads chosen in frame order, so the records are those of one frame at a time; a frame's
    ``latency_ms`` runs from its start to its record, waiting for its turn included).
    """
    from PIL import Image
    from inference.frames import SelectionGate
    gate = SelectionGate(reselect) if reselect > 0 and model.size is None else None
    source = Prefetch(frames) if threaded else frames
    records = [] if records is None else records
    smoothing = "raw" if smoother is None else smoother.mode

    def compute(index, rgb, path, turns):
        t0 = time.perf_counter()
        # the frame's camera by predict.py's rule (Predictor.camera_of: --intrinsics, --fov,
        # else the file's EXIF focal length; a video frame has no file of its own)
        camera = model.camera_of(path[0] if path else None)
        if turns is None:
            return model.run(Image.fromarray(rgb), choose=smoother, camera=camera, gate=gate), t0
        turns.wait(index)
        try:
            return model.run(Image.fromarray(rgb), choose=smoother, camera=camera, gate=gate,
                             on_choice=lambda: turns.done(index)), t0
        finally:
            turns.done(index)  # also when the frame failed: the next one may go on

    def finish(index, name, rgb, result):
        r, t0 = result
        depth, head = r["depth"], r["head"]
        if clamp:
            depth = model.clamp(depth, head)
        latency = (time.perf_counter() - t0) * 1000.0
        dists = None if r["distances"] is None else [float(v) for v in r["distances"]]
        rec = {"frame": index, "name": name, "raw_head": r["raw_head"], "head": head,
               "distances": dists, "latency_ms": latency, "ood": r.get("ood"), "selected": r.get("selected"),
               "depth_min": float(depth.min()), "depth_max": float(depth.max()),
               "interval": interval, "interval_width_m": None if r["uncertainty"] is None else
               median_width(*model.interval(depth, r["uncertainty"], head, interval))}
        records.append(rec)
        if sink is not None:
            vmax = float(max_depth) if max_depth else float(model.ranges[head][1])
            sink.put({"name": name, "rgb": rgb, "depth": depth, "vmax": vmax,
                      "text": frame_label(model, index, head, r["raw_head"], smoothing, vmax, r.get("ood"))})
        if on_frame is not None:
            on_frame(rec)

    lanes = FramesAtOnce(frames_at_once, compute)
    try:
        for index, (name, rgb, *path) in enumerate(source):
            if max_frames is not None and index >= max_frames:
                break
            for due in lanes.put(index, name, rgb, path):
                finish(*due)
        for due in lanes.drain():
            finish(*due)
    except BaseException:
        if not lanes.failed:  # a frame that could not be read, Ctrl-C: the frames computed are kept
            try:
                for due in lanes.drain():
                    finish(*due)
            except BaseException:  # noqa: BLE001 - the first error is the one reported
                pass
        raise
    finally:
        lanes.close()
        if threaded:
            source.close()
    return records


class StreamStopped(Exception):
    """A stream stopped half way (a frame that cannot be read, Ctrl-C, a failed write), after the
    frames done were logged: ``cause`` is what stopped it, ``done`` says how far it got ("N
    frame(s) done, logged in X; the video of those frames: Y.part.mp4")."""

    def __init__(self, cause: BaseException, done: str):
        super().__init__(f"{cause}; {done}")
        self.cause, self.done = cause, done


def stream_stopped(stop, records, log, letters, sink) -> StreamStopped:
    """What ends a stream stopped half way by ``stop``, after the frames done are logged. The video
    of those frames stays as its .part file."""
    if records:
        try:
            write_log(log, records, letters)
        except WriteError as e:  # the disk that stopped the stream takes no log either: say so, once
            part = sink._partial() if sink.video_path is not None else None
            return StreamStopped(stop, f"{len(records)} frame(s) done, not logged ({e})"
                                 + (f"; the video of those frames: {part}" if part is not None and part.exists()
                                    else ""))
    part = sink._partial() if sink.video_path is not None else None
    done = (f"{len(records)} frame(s) done" + (f", logged in {log}" if records else "")
            + (f"; the video of those frames: {part}" if part is not None and part.exists() else ""))
    return StreamStopped(stop, done)


def count_switches(heads) -> int:
    return int(sum(1 for a, b in zip(heads, heads[1:]) if a != b))


def interval_tag(records) -> str:
    """The coverage (percent) of the records' interval widths, for the log's column name."""
    level = records[0].get("interval") if records else None
    return f"{round(100 * (level or 0.9), 6):g}"


def write_log(path, records, letters) -> None:
    """One CSV row per frame: frame, name, raw and chosen head (letters), switch, latency, depth range,
    out-of-domain verdict, median interval width (metres, at the records' coverage), distances."""
    with atomic_write(path, "w") as f:  # complete or absent (a full disk leaves no .tmp)
        w = csv.writer(f)
        w.writerow(["frame", "name", "raw_head", "head", "switched", "latency_ms", "depth_min", "depth_max",
                    "out_of_domain", f"median_interval{interval_tag(records)}_m"] + [f"dist_{c}" for c in letters])
        prev = None
        for r in records:
            raw = "" if r["raw_head"] is None else letters[r["raw_head"]]
            dists = r["distances"] or [""] * len(letters)
            w.writerow([r["frame"], r["name"], raw, letters[r["head"]],
                        int(prev is not None and r["head"] != prev), f"{r['latency_ms']:.2f}",
                        f"{r['depth_min']:.4f}", f"{r['depth_max']:.4f}",
                        "" if r.get("ood") is None else int(r["ood"]),
                        "" if r.get("interval_width_m") is None else f"{r['interval_width_m']:.4f}"]
                       + [d if d == "" else f"{d:.5f}" for d in dists])
            prev = r["head"]


# ----------------------------------------------------------------------------------------------
# A stream from a file or folder to its outputs
# ----------------------------------------------------------------------------------------------
@dataclass
class StreamOptions:
    """How :func:`write_stream` chooses the heads and what it writes (predict.py's stream options).

    ``smoothing``: a :class:`HeadSmoother` mode ("raw": each frame's nearest prototype) over
    ``window`` frames with hysteresis ``margin``; ``video``: write the depth video, at ``fps``
    frames/s (None: the input video's, else 10); ``save_depth``: each frame's depth files;
    ``max_frames``: stop after that many; ``threads``: decode and write in threads of their own;
    ``clamp``: depth clipped to the head's range; ``max_depth``: top of the video's colour range
    (None: the head's range); ``interval``: the coverage whose median width is logged per frame;
    ``reselect``: the automatic head's selection reused while the frame moved less than this
    (``inference.frames.SelectionGate``; 0: selection on every frame); ``frames_at_once``: frames in
    flight (None: :func:`resolve_frames_at_once`'s choice for the model).
    Checked when made (InputError).
    """
    smoothing: str = "mean"
    window: int = DEFAULT_WINDOW
    margin: float = DEFAULT_MARGIN
    video: bool = True
    save_depth: bool = False
    fps: float | None = None
    max_frames: int | None = None
    threads: bool = True
    clamp: bool = True
    max_depth: float | None = None
    interval: float = 0.9
    reselect: float = GATE_THRESHOLD
    frames_at_once: int | None = None

    def __post_init__(self):
        if self.frames_at_once is not None and self.frames_at_once < 1:
            raise InputError(f"--frames-at-once must be at least 1, got {self.frames_at_once}")
        if not self.reselect >= 0:
            raise InputError(f"--reselect must be >= 0, got {self.reselect}")
        if self.max_frames is not None and self.max_frames < 1:
            raise InputError(f"--max-frames must be at least 1, got {self.max_frames}")
        if self.fps is not None and not 0 < self.fps < math.inf:
            raise InputError(f"--fps must be a positive, finite frame rate, got {self.fps}")
        self.smoother()  # the smoothing settings are checked now, before a model is loaded

    def smoother(self):
        """A fresh :class:`HeadSmoother` of these settings; None for the per-frame rule."""
        if self.smoothing == "raw":
            return None
        try:
            return HeadSmoother(window=self.window, mode=self.smoothing, margin=self.margin)
        except ValueError as e:
            raise InputError(str(e)) from None


@dataclass
class StreamSource:
    """One stream's frames: ``frames`` yields (name, RGB uint8 array) in order, ``fps`` is the
    input's frame rate (0: unknown), ``reader`` the open video file (closed by :meth:`close`)."""
    path: Path
    frames: object
    fps: float
    reader: object = None

    @property
    def stem(self) -> str:
        """What the outputs are named after: the folder's name, the video's stem."""
        return self.path.name if self.path.is_dir() else self.path.stem

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_stream(target, out_dir, max_pixels=DEFAULT_MAX_PIXELS) -> StreamSource:
    """The frames of a video file, or of a folder of frames in natural order (images over
    ``max_pixels`` refused; ``out_dir``'s own outputs left out); InputError when ``target`` is
    neither or cannot be read."""
    target = Path(target)
    if not target.exists():
        raise InputError(f"input {str(target)!r} does not exist (expected a video file or a folder of frames)")
    if target.is_dir():
        return StreamSource(target, iter_folder(folder_frames(target, Path(out_dir)), max_pixels, with_paths=True), 10.0)
    if not is_video(target):
        raise InputError(f"{str(target)!r} is not a video file ({', '.join(VIDEO_EXTENSIONS)}); "
                         "--stream takes a folder of frames")
    from base.safeio import protect
    protect(target, "the input video")
    reader, fps = open_video(target)
    try:
        check_frame_size(reader, target, max_pixels)
    except InputError:
        reader.close()
        raise
    return StreamSource(target, iter_video(reader), fps, reader)


def frame_thresholds(model):
    """Per head, the out-of-domain threshold of ``model``'s frames statistics, on the scale of the
    distances its frames get (``Predictor.distance_thresholds``: None without the statistics, and
    under --size, whose distances are the stored selector's, another scale)."""
    return model.distance_thresholds()


def stream_interval(model, records, level) -> dict:
    """The stream JSON's interval summary: coverage, median over frames of the per-frame median
    width, and per head the calibration scale and the coverage it achieved on validation rows."""
    widths = [r["interval_width_m"] for r in records if r.get("interval_width_m") is not None]
    return {"coverage": level, "median_width_m": float(np.median(widths)) if widths else None,
            "note": calibration_note(model.predictor.meta, len(model.letters)),
            "heads": {c: interval_summary(model.predictor.meta, i, len(model.letters), level, model.interval_path)
                      for i, c in enumerate(model.letters)}}


def stream_outputs(out_dir: Path, stem: str, options: StreamOptions) -> dict:
    """The paths a stream writes: ``video`` (None without), ``log``, ``depth`` (the per-frame depth
    folder, created; None without --save-depth)."""
    depth_dir = out_dir / f"{stem}_depth" if options.save_depth else None
    if depth_dir is not None:
        depth_dir.mkdir(parents=True, exist_ok=True)
    return {"video": out_dir / f"{stem}_depth.mp4" if options.video else None,
            "log": out_dir / f"{stem}_frames.csv", "depth": depth_dir}


def run_into_sink(model, source, sink, smoother, options, on_frame):
    """:func:`run_stream` into ``sink``, which is closed whatever happens: (the records of the frames
    done, what stopped the stream half way or None). ``options``: as :func:`write_stream` resolved
    them (``frames_at_once`` a number)."""
    complete, records, stop = False, [], None
    try:
        run_stream(model, source.frames, smoother=smoother, sink=sink, clamp=options.clamp,
                   max_depth=options.max_depth, threaded=options.threads, max_frames=options.max_frames,
                   on_frame=on_frame, interval=options.interval, records=records, reselect=options.reselect,
                   frames_at_once=options.frames_at_once)
        complete = True
    except (KeyboardInterrupt, OSError, ValueError) as e:  # Ctrl-C, a bad frame, a failed write
        stop = e
    finally:
        try:
            sink.close(complete)
        except (OSError, ValueError) as e:  # the writer thread's error
            stop = stop or e
    return records, stop


def write_stream(model, source: StreamSource, out_dir, options: StreamOptions | None = None, *,
                 on_frame=None) -> dict:
    """``source``'s frames through ``model`` (an ``inference.images.Predictor``; its head choice
    smoothed unless it forces one) into ``out_dir`` (created): the depth video, the per-frame log,
    the depth files asked for and ``<name>_stream.json``, whose summary is returned.
    ``on_frame(record)`` is called after each frame (a progress bar). A stream stopped half way
    raises :class:`StreamStopped` once the frames done are logged."""
    options = options or StreamOptions()
    # checked before anything is written
    options = replace(options, frames_at_once=resolve_frames_at_once(model, options.frames_at_once))
    smoother = options.smoother() if model.forced is None else None
    if smoother is not None:
        smoother.calibrate(frame_thresholds(model))
    out_dir = Path(out_dir)
    make_out_dir(out_dir)  # a file named --out, or a file above it: one error line
    # two streams of the same file name into one folder would mix their videos and logs
    with hold_lock(out_dir / f".{source.stem}.stream.lock",
                   f"--out {out_dir}: another stream (pid {{pid}}) is writing {source.stem}_frames.csv and the "
                   f"other outputs of a {source.stem!r} there; wait for it, or choose another --out"):
        return _write_stream(model, source, out_dir, options, smoother, on_frame)


def _write_stream(model, source, out_dir: Path, options, smoother, on_frame) -> dict:
    """write_stream with its outputs' lock held."""
    outputs = stream_outputs(out_dir, source.stem, options)
    fps = options.fps or source.fps or 10.0
    sink = Sink(outputs["video"], fps, outputs["depth"], threaded=options.threads)
    t0 = time.perf_counter()
    records, stop = run_into_sink(model, source, sink, smoother, options, on_frame)
    seconds = time.perf_counter() - t0
    if stop is not None:
        raise stream_stopped(stop, records, outputs["log"], model.letters, sink) from stop
    if not records:
        raise InputError(f"{str(source.path)!r} holds no frame")
    write_log(outputs["log"], records, model.letters)
    summary = stream_summary(model, records, source=source, fps=fps, smoother=smoother, options=options,
                             seconds=seconds, outputs=outputs)
    write_json(out_dir / f"{source.stem}_stream.json", summary)
    return summary


def stream_summary(model, records, *, source, fps, smoother, options, seconds, outputs) -> dict:
    """The stream JSON: the input, the settings (``fps``: the video's frame rate), the switches,
    frames/s, the interval widths, frames per head, out-of-domain frames and the outputs."""
    from base.domains import get_domain
    heads = [r["head"] for r in records]
    raw = [r["raw_head"] for r in records if r["raw_head"] is not None]
    return {"input": str(source.path), "checkpoint": model.checkpoint, "frames": len(records),
            "fps_out": fps, "smoothing": None if smoother is None else
            {"mode": smoother.mode, "window": smoother.window, "margin": smoother.margin},
            "domain": model.options.domain, "threads": options.threads,
            "switches": count_switches(heads), "raw_switches": count_switches(raw) if raw else None,
            "frames_per_s": len(records) / seconds, "seconds": seconds,
            "median_latency_ms": float(np.median([r["latency_ms"] for r in records])),
            "reselect": options.reselect, "frames_at_once": options.frames_at_once,
            "selections": sum(1 for r in records if r.get("selected")),
            "interval": stream_interval(model, records, options.interval),
            "frames_per_head": {get_domain(c).name: heads.count(i) for i, c in enumerate(model.letters)},
            "out_of_domain_frames": (None if all(r["ood"] is None for r in records)
                                     else sum(bool(r["ood"]) for r in records)),
            "predictor": predictor_settings(model.predictor),
            "outputs": {key: None if path is None else str(path) for key, path in outputs.items()}}
