"""A frame's metric scale from a few known distances (a rangefinder, a few LiDAR returns, a tag of
known size): :func:`fit_known_scale`, the one rule predict.py --known-depth, the demo and the API
(``inference.images.Predictor.correct_scale``) use.

The fit: for every known point i inside the frame with a positive prediction, the log ratio
``l_i = log(known_i / predicted_i)``; the points that agree are those within ``K_MAD`` robust
standard deviations of the median log ratio (MAD x 1.4826, floored at ``MAD_FLOOR`` so that a
few exactly consistent points still tolerate sensor noise, and never more than a factor 1.5 off it,
``MAX_LOG_SPREAD``, so that two camps of points cannot both agree); the factor is ``exp(median l_i)`` over
those points (a median of ratios with MAD outlier rejection). The check: with the head's calibrated
spread sigma_i (base.uncertainty.spread, the interval maps' sigma), the agreeing points' median
``|known_i - predicted_i| / sigma_i`` must lie within the central ``level`` interval's half-width
z (90 %: 1.645), and at least half of the points must agree; otherwise the frame is flagged "scale
check failed" and its depth is left as predicted, not rescaled.

Known depth comes as a CSV of ``x,y,metres`` (pixel column and row in the original image; a header
line is allowed) or as a sparse depth image in any layout of data/recordings.py (``tum``, ``png16``,
``npy``, ``kitti``: its unit; 0 = no point) at the image's size: a 16-bit PNG, a float32 ``.npy``
or an OpenEXR ``.exr`` (half or float metres, loaders.read_exr_depth: NaN, inf and values <= 0 are
no point).
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from base.errors import InputError
from base.uncertainty import z_value

K_MAD = 3.0
MAD_FLOOR = 0.05       # log-ratio: about 5 %
MAX_LOG_SPREAD = math.log(1.5)   # a point more than a factor 1.5 off the median ratio never agrees
MIN_AGREEING = 0.5     # fraction of the usable points that must agree
SUFFIXES = (".csv", ".txt", ".png", ".npy", ".exr")


@dataclass
class KnownPoints:
    """Known depths: pixel columns ``x``, rows ``y`` (float, original image) and ``metres``."""
    x: np.ndarray
    y: np.ndarray
    metres: np.ndarray
    source: str = ""

    def __len__(self) -> int:
        return int(self.metres.size)


def read_points_csv(path: str) -> KnownPoints:
    xs, ys, ms = [], [], []
    with open(path, newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.reader(f), 1):
            row = [v.strip() for v in row if v.strip()]
            if not row or row[0].startswith("#"):
                continue
            try:
                x, y, m = (float(v) for v in row[:3])
                if len(row) != 3:
                    raise ValueError
            except ValueError:
                if i == 1:
                    continue  # a header line
                raise InputError(f"{path}: line {i}: expected x,y,metres (pixel column, row, depth in metres), "
                                 f"got {','.join(row)!r}") from None
            if not (math.isfinite(x) and math.isfinite(y) and math.isfinite(m) and m > 0):
                raise InputError(f"{path}: line {i}: expected finite pixel coordinates and metres > 0, got "
                                 f"{','.join(row)!r}")
            xs.append(x), ys.append(y), ms.append(m)
    if not ms:
        raise InputError(f"{path}: no known depth (expected lines x,y,metres)")
    return KnownPoints(np.array(xs), np.array(ys), np.array(ms), path)


def read_points_image(path: str, size, layout: str | None = None, unit: float | None = None) -> KnownPoints:
    """The measured (> 0) pixels of a sparse depth image decoded as ``layout`` says (default:
    npy for .npy and .exr, png16 otherwise), which must have the image's ``size`` (W, H)."""
    from data.recordings import NpyLayout, make_layout
    from loaders import decode_depth

    layout = layout or (NpyLayout.name if path.lower().endswith(NpyLayout.depth_ext) else "png16")
    d = decode_depth(path, make_layout(layout, unit).encoding())
    if size is not None and (d.shape[1], d.shape[0]) != tuple(size):
        raise InputError(f"{path}: known depth is {d.shape[1]}x{d.shape[0]}, expected the image's size "
                         f"{size[0]}x{size[1]} (or a CSV of x,y,metres)")
    y, x = np.nonzero(d > 0)
    if not y.size:
        raise InputError(f"{path}: every known depth is 0; expected measured pixels (> 0)")
    return KnownPoints(x.astype(np.float64), y.astype(np.float64), d[y, x].astype(np.float64), path)


def read_known_depth(path, size=None, layout: str | None = None, unit: float | None = None) -> KnownPoints:
    """Known depth from a CSV (x,y,metres) or a sparse depth image (see the module docstring)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"--known-depth {path}: no such file (a CSV of x,y,metres or a sparse depth image)")
    if path.lower().endswith((".csv", ".txt")):
        return read_points_csv(path)
    return read_points_image(path, size, layout, unit)


def known_depth_file(source, image_path) -> str | None:
    """The known-depth file of one image: ``source`` itself when it is a file, else the file of the
    image's stem in the folder ``source`` (None when there is none)."""
    source = Path(source)
    if not source.is_dir():
        return str(source)
    for suffix in SUFFIXES:
        p = source / (Path(image_path).stem + suffix)
        if p.is_file():
            return str(p)
    return None


def fit_known_scale(depth: np.ndarray, points: KnownPoints, sigma: np.ndarray | None = None, level: float = 0.9) -> dict:
    """The robust scale of ``depth`` (H, W) metres against ``points`` (module docstring). Returns
    ``factor`` (1.0 when not ``ok``), ``ok``, ``points`` (usable: inside the frame, prediction > 0),
    ``agreed``, ``fitted_factor`` (the factor the points ask for, also when refused), ``median_z``
    (None without ``sigma``) and ``reason`` (why the check failed, else "")."""
    h, w = depth.shape
    col, row = np.round(points.x).astype(np.int64), np.round(points.y).astype(np.int64)
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    col, row, known = col[inside], row[inside], points.metres[inside]
    pred = depth[row, col].astype(np.float64)
    use = (pred > 0) & np.isfinite(pred) & (known > 0)
    col, row, known, pred = col[use], row[use], known[use], pred[use]
    out = {"factor": 1.0, "ok": False, "points": int(known.size), "given": len(points),
           "agreed": 0, "fitted_factor": None, "median_z": None, "level": level, "reason": ""}
    if not known.size:
        out["reason"] = "no known point inside the frame"
        return out
    logr = np.log(known / pred)
    centre = float(np.median(logr))
    mad = 1.4826 * float(np.median(np.abs(logr - centre)))
    agree = np.abs(logr - centre) <= min(K_MAD * max(mad, MAD_FLOOR), MAX_LOG_SPREAD)
    factor = float(np.exp(np.median(logr[agree]) if agree.any() else centre))
    out.update(agreed=int(agree.sum()), fitted_factor=factor)
    if agree.sum() < MIN_AGREEING * known.size:
        out["reason"] = f"only {int(agree.sum())} of {known.size} points agree on one scale"
        return out
    if sigma is not None:
        z = np.abs(known - pred)[agree] / np.maximum(sigma[row, col].astype(np.float64)[agree], 1e-9)
        out["median_z"] = float(np.median(z))
        if out["median_z"] > z_value(level):
            out["reason"] = (f"the points lie {out['median_z']:.1f} sigma from the prediction (median), beyond its "
                             f"calibrated {100 * level:g} % interval ({z_value(level):.2f} sigma); scale x{factor:.3g} "
                             f"not applied")
            return out
    out.update(factor=factor, ok=True)
    return out


def describe_fit(fit: dict) -> str:
    """One line for predict.py's message."""
    if fit["ok"]:
        return f"scale x{fit['factor']:.4g} from {fit['agreed']}/{fit['points']} known points"
    return f"scale check failed: {fit['reason']}"
