"""Readers of RGB-D recordings as depth cameras and their SDKs write them: one thin class per layout.

=========  ==========================================================================  ===============
layout     files                                                                       depth unit
=========  ==========================================================================  ===============
``tum``    ``rgb.txt`` / ``depth.txt`` (``timestamp filename`` per line, ``#``          0.0002 m (5000
           comments), colour and depth paired by nearest timestamp within a tolerance   per metre)
``png16``  ``rgb/`` (or ``color/``) + ``depth/`` 16-bit PNG, paired by file stem        0.001 m (RealSense
           (RealSense, Azure Kinect, Orbbec, ZED exports)                               D400, Kinect, Orbbec)
``npy``    ``rgb/`` + ``depth/`` float ``.npy`` or OpenEXR ``.exr`` in metres, by stem  1 (metres)
           (one half or float depth channel: Blender, ZED SDK, renderers)
``kitti``  ``image/`` + ``groundtruth_depth/`` (KITTI's names) or ``rgb/`` + ``depth/``  1/256 m
           by stem: sparse 16-bit LiDAR depth, 0 = no return
=========  ==========================================================================  ===============

A reader's :meth:`Layout.scan` returns the (colour, depth) pairs in recording order and puts every
file it leaves out, with the reason, into a :class:`data.prepare.Report`. :func:`read_recording`
then checks the pairs (sizes, bit depth, the unit against plausible metres) and splits them into
train and test (the last ``test_fraction`` of the recording: consecutive frames of a sequence are
near-duplicates, so a random split would test on training frames' neighbours). The index CSVs are
written by ``data.prepare.write_indexes``: the rows point at the recording's own files, decoded by
the domain's ``depth_encoding`` (:meth:`Layout.encoding`), so nothing is converted or copied.

Bad input is one :class:`base.errors.InputError` line naming the file and what was expected.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from base.errors import InputError
from data.prepare import IMAGE_EXT, SIXTEEN, Pair, Report, _kitti_val, _pair_by_stem

#: below this every depth counts as 0 (the evaluation's lower cap), above it no sensor measures
PLAUSIBLE_METRES = (1e-3, 1000.0)


# ============================================================================ layouts
@dataclass(frozen=True)
class Layout:
    """Where a layout's colour and depth files are and how its depth decodes (``unit``: metres per
    stored value; None: the layout's default)."""
    name: ClassVar[str] = ""
    default_unit: ClassVar[float] = 1.0
    kind: ClassVar[str] = "png"      # the loaders' depth_encoding kind
    bits: ClassVar[Optional[int]] = 16
    unit: Optional[float] = None

    @property
    def metres_per_value(self) -> float:
        return float(self.default_unit if self.unit is None else self.unit)

    def encoding(self) -> dict:
        """The domain's ``depth_encoding`` (base.domains): how one depth file becomes metres."""
        enc = {"kind": self.kind, "scale": self.metres_per_value}
        if self.kind == "png":
            enc["bits"] = self.bits
        return enc

    def scan(self, src: str, report: Report) -> List[Pair]:
        raise NotImplementedError


def _folder(src: str, names, what: str) -> str:
    for n in names:
        if os.path.isdir(os.path.join(src, n)):
            return os.path.join(src, n)
    raise InputError(f"{src}: no {' or '.join(n + '/' for n in names)} folder ({what})")


@dataclass(frozen=True)
class TumLayout(Layout):
    """TUM RGB-D: ``rgb.txt`` and ``depth.txt`` list ``timestamp filename``; each colour frame takes
    the depth frame nearest in time, if within ``tolerance`` seconds, each depth frame used once
    (closest pairs first, as the dataset's associate.py does)."""
    name: ClassVar[str] = "tum"
    default_unit: ClassVar[float] = 1.0 / 5000.0
    tolerance: float = 0.02

    def scan(self, src: str, report: Report) -> List[Pair]:
        rgb = read_tum_list(os.path.join(src, "rgb.txt"), report)
        depth = read_tum_list(os.path.join(src, "depth.txt"), report)
        pairs = associate(rgb, depth, self.tolerance)
        used_r = {r for r, _ in pairs}
        used_d = {d for _, d in pairs}
        for t, f in rgb:
            if t not in used_r:
                report.skip(os.path.join(src, f), f"colour frame without a depth frame within {self.tolerance:g} s")
        for t, f in depth:
            if t not in used_d:
                report.skip(os.path.join(src, f), f"depth frame without a colour frame within {self.tolerance:g} s")
        if not pairs and rgb and depth:
            gap = min(abs(a - b) for a, _ in rgb for b, _ in depth)
            raise InputError(f"{os.path.join(src, 'rgb.txt')} and depth.txt: no colour and depth timestamps "
                             f"within {self.tolerance:g} s (closest {gap:.3f} s); expected both on one clock, "
                             f"or a larger --tolerance")
        rd, dd = dict(rgb), dict(depth)
        out = []
        for r, d in sorted(pairs):
            img, dep = os.path.join(src, rd[r]), os.path.join(src, dd[d])
            missing = [p for p in (img, dep) if not os.path.isfile(p)]
            if missing:
                report.skip(missing[0], "listed but missing")
            else:
                out.append((img, dep))
        return out


def read_tum_list(path: str, report: Report) -> List[Tuple[float, str]]:
    """``(timestamp, file)`` of a TUM list file; '#' lines are comments, malformed lines skipped."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file (the TUM layout lists 'timestamp filename' per line "
                         f"in rgb.txt and depth.txt)")
    out = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.replace(",", " ").split()
            try:
                out.append((float(parts[0]), parts[1]))
            except (ValueError, IndexError):
                report.skip(f"{path}:{i}", "line is not 'timestamp filename'")
    return out


def associate(first: List[Tuple[float, str]], second: List[Tuple[float, str]], tolerance: float):
    """One-to-one pairs ``(t_first, t_second)`` with ``|t_first - t_second| <= tolerance``, the
    closest pairs first; each timestamp used once."""
    a = np.array([t for t, _ in first], dtype=np.float64)
    b = np.array(sorted(t for t, _ in second), dtype=np.float64)
    if not a.size or not b.size:
        return []
    candidates = []
    for t in a:   # the neighbours in time of each first timestamp (b sorted)
        k = int(np.searchsorted(b, t))
        for j in range(max(0, k - 2), min(len(b), k + 2)):
            if abs(b[j] - t) <= tolerance:
                candidates.append((abs(b[j] - t), t, b[j]))
    pairs, used_a, used_b = [], set(), set()
    for _, ta, tb in sorted(candidates):
        if ta not in used_a and tb not in used_b:
            pairs.append((ta, tb))
            used_a.add(ta)
            used_b.add(tb)
    return pairs


@dataclass(frozen=True)
class Png16Layout(Layout):
    """``rgb/`` (or ``color/``) and ``depth/`` 16-bit PNG with the same stems; metres = value x
    unit (RealSense's ``depth_scale``, 0.001 for millimetres)."""
    name: ClassVar[str] = "png16"
    default_unit: ClassVar[float] = 0.001
    depth_ext: ClassVar[tuple] = (".png",)

    def scan(self, src: str, report: Report) -> List[Pair]:
        rgb = _folder(src, ("rgb", "color", "colour", "image"), "colour images")
        depth = _folder(src, ("depth",), "depth maps")
        others = [n for n in os.listdir(depth) if os.path.splitext(n)[1].lower() not in self.depth_ext]
        for n in sorted(others):
            why = ("EXR depth (float metres) in a 16-bit PNG layout: read it with --layout npy"
                   if n.lower().endswith(".exr") else
                   f"not a {'/'.join(self.depth_ext)} depth file of the {self.name} layout")
            report.skip(os.path.join(depth, n), why)
        return _pair_by_stem(rgb, report, IMAGE_EXT, self.depth_ext, depth)


@dataclass(frozen=True)
class NpyLayout(Png16Layout):
    """``rgb/`` and ``depth/`` float depth in metres (unit 1), same stems: float32 ``.npy`` arrays or
    OpenEXR ``.exr`` files (one half or float depth channel, loaders.read_exr_depth), mixed freely;
    a stem with both is read from its ``.npy`` (the other reported as skipped)."""
    name: ClassVar[str] = "npy"
    default_unit: ClassVar[float] = 1.0
    kind: ClassVar[str] = "npy"
    bits: ClassVar[Optional[int]] = None
    depth_ext: ClassVar[tuple] = (".npy", ".exr")


@dataclass(frozen=True)
class KittiLayout(Png16Layout):
    """Sparse LiDAR depth as KITTI stores it: 16-bit PNG at 1/256 m, 0 = no return; either KITTI's
    ``image/`` + ``groundtruth_depth/`` names or ``rgb/`` + ``depth/`` by stem."""
    name: ClassVar[str] = "kitti"
    default_unit: ClassVar[float] = 1.0 / 256.0

    def scan(self, src: str, report: Report) -> List[Pair]:
        if os.path.isdir(os.path.join(src, "groundtruth_depth")):
            return _kitti_val(src, report)
        return super().scan(src, report)


LAYOUTS: Dict[str, type] = {c.name: c for c in (TumLayout, Png16Layout, NpyLayout, KittiLayout)}


def make_layout(name: str, unit: Optional[float] = None, tolerance: Optional[float] = None) -> Layout:
    """The layout ``name`` with a depth ``unit`` (metres per stored value; None: its default)."""
    if name not in LAYOUTS:
        raise InputError(f"--layout {name!r}: expected one of {', '.join(LAYOUTS)}")
    if unit is not None and not (0 < unit < float("inf")):
        raise InputError(f"--depth-unit {unit!r}: expected metres per stored depth value > 0, e.g. 0.001")
    if tolerance is not None and name == "tum":
        if not 0 < tolerance < float("inf"):
            raise InputError(f"--tolerance {tolerance!r}: expected seconds > 0, e.g. 0.02")
        return TumLayout(unit=unit, tolerance=tolerance)
    return LAYOUTS[name](unit=unit)


# ============================================================================ checks
@dataclass
class Recording:
    """What :func:`read_recording` found: the pairs of each split, the frame size (W, H), a sample
    of the decoded depth (for the domain's range) and the report of skipped files."""
    layout: Layout
    train: List[Pair]
    test: List[Pair]
    size: Tuple[int, int]
    depth_percentiles: Dict[str, float] = field(default_factory=dict)
    report: Optional[Report] = None

    @property
    def frames(self) -> int:
        return len(self.train) + len(self.test)


def _header(path: str, what: str):
    try:
        with Image.open(path) as im:
            return im.size, im.mode
    except Exception as e:  # noqa: BLE001 - any failure means "cannot be read"
        return None, f"unreadable {what} ({type(e).__name__})"


def _depth_header(path: str, layout: Layout):
    """((W, H), None) or (None, reason)."""
    if layout.kind == "npy" and path.lower().endswith(".exr"):
        from loaders import exr_depth_size   # loaders imports torch: only when a recording has EXR depth

        try:
            return exr_depth_size(path), None
        except FileNotFoundError:
            return None, "depth file not found"
        except InputError as e:   # its message: "<path>: <what is wrong>"; the report names the path
            return None, str(e).replace(f"{path}: ", "", 1)
    if layout.kind == "npy":
        try:
            arr = np.load(path, mmap_mode="r")
        except Exception as e:  # noqa: BLE001
            return None, f"unreadable depth ({type(e).__name__})"
        shape = arr.shape[:2] if arr.ndim == 3 and arr.shape[-1] == 1 else arr.shape
        if len(shape) != 2:
            return None, f"depth array is not 2-D (shape {arr.shape})"
        return (int(shape[1]), int(shape[0])), None
    size, mode = _header(path, "depth")
    if size is None:
        return None, mode
    if layout.bits == 16 and mode not in SIXTEEN:
        return None, f"depth is not a 16-bit single-channel PNG (mode {mode})"
    return size, None


def check_pairs(pairs: List[Pair], layout: Layout, report: Report) -> Tuple[List[Pair], Tuple[int, int]]:
    """Pairs whose colour and depth open and have the recording's size (the first good pair's): a
    recording whose depth frames all have another size than its colour frames is an InputError
    (align depth to colour in the camera's SDK), a single odd frame is skipped."""
    keep, size, mismatch = [], None, None
    for img, dep in pairs:
        isize, why = _header(img, "image")
        if isize is None:
            report.skip(img, why)
            continue
        dsize, why = _depth_header(dep, layout)
        if dsize is None:
            report.skip(dep, why)
            continue
        if isize != dsize:
            mismatch = mismatch or (img, dep, isize, dsize)
            report.skip(f"{img} | {dep}", "colour and depth sizes differ")
            continue
        if size is None:
            size = isize
        if isize != size:
            report.skip(img, f"frame size {isize[0]}x{isize[1]}, not the recording's {size[0]}x{size[1]}")
            continue
        keep.append((img, dep))
    if not keep and mismatch:
        img, dep, isize, dsize = mismatch
        raise InputError(f"{dep}: depth is {dsize[0]}x{dsize[1]}, the colour {img} is {isize[0]}x{isize[1]}; "
                         f"expected depth aligned to colour at the same resolution (the camera SDK's "
                         f"'align to colour' option)")
    return keep, size


def check_unit(pairs: List[Pair], layout: Layout, samples: int = 12) -> Dict[str, float]:
    """Decode up to ``samples`` depth maps (spread over the recording) with the layout's unit:
    percentiles (p1, p50, p99, max) of the measured metres. A unit that leaves no depth inside
    PLAUSIBLE_METRES (every value 0 or above 1000 m) is an InputError naming the unit."""
    from loaders import decode_depth

    picks = sorted({int(round(i)) for i in np.linspace(0, len(pairs) - 1, min(samples, len(pairs)))})
    values, raw_max, first = [], 0.0, pairs[picks[0]][1]
    for i in picks:
        d = decode_depth(pairs[i][1], layout.encoding())
        v = d[d > 0]
        raw_max = max(raw_max, float(v.max()) if v.size else 0.0)
        values.append(v)
    v = np.concatenate(values) if values else np.zeros(0)
    lo, hi = PLAUSIBLE_METRES
    ok = v[(v >= lo) & (v <= hi)]
    unit = f"--depth-unit {layout.metres_per_value:g} (metres per stored value)"
    if not v.size:
        raise InputError(f"{first}: every depth is 0 in the {len(picks)} depth files read; expected a depth "
                         f"map (0 = no measurement) with measured pixels")
    if ok.size < 0.5 * v.size:
        what = f"above {hi:g} m" if np.median(v) > hi else f"below {lo * 1000:g} mm"
        raise InputError(f"{first}: {unit} makes {100 * (1 - ok.size / v.size):.0f} % of the depths {what} "
                         f"(largest {raw_max:.4g} m); expected metres in {lo:g}..{hi:g}: check the unit "
                         f"(TUM 0.0002, millimetres 0.001, KITTI 0.00390625, metres 1)")
    return {k: float(np.percentile(ok, q)) for k, q in (("p1", 1), ("p50", 50), ("p99", 99), ("max", 100))}


def split_tail(pairs: List[Pair], test_fraction: float) -> Tuple[List[Pair], List[Pair]]:
    """(train, test): the test split is the last ``test_fraction`` of the recording (at least one
    frame when the fraction is positive)."""
    if not 0 <= test_fraction < 1:
        raise InputError(f"--test-fraction {test_fraction!r}: expected a fraction in [0, 1)")
    k = int(round(len(pairs) * test_fraction))
    k = max(1, k) if test_fraction > 0 and len(pairs) > 1 else k
    return pairs[: len(pairs) - k], pairs[len(pairs) - k:]


def read_recording(src: str, layout: Layout, test_fraction: float = 0.2, report: Optional[Report] = None,
                   check: bool = True) -> Recording:
    """Scan, check and split the recording in ``src`` (see the module docstring)."""
    if not os.path.isdir(src):
        raise InputError(f"--src {src}: no such folder (a recording in the {layout.name} layout)")
    report = report or Report(f"{layout.name} recording {src}")
    pairs = layout.scan(src, report)
    if not pairs:
        raise InputError(f"{src}: no colour/depth pairs found in the {layout.name} layout"
                         + (f" ({report.n_skipped} files skipped: {', '.join(report.skipped)})"
                            if report.skipped else ""))
    size = None
    if check:
        pairs, size = check_pairs(pairs, layout, report)
        if not pairs:
            raise InputError(f"{src}: no readable colour/depth pair ({report.n_skipped} skipped: "
                             f"{', '.join(report.skipped)})")
    stats = check_unit(pairs, layout) if check else {}
    train, test = split_tail(pairs, test_fraction)
    if size is None:
        size, _ = _header(pairs[0][0], "image")
    return Recording(layout, train, test, size, stats, report)

