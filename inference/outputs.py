"""The files of one prediction, one writer for every path: predict.py (cli/predict.py), the streams'
``--save-depth`` (inference/stream.py), the demo's pictures (cli/demo.py) and the Python API
(``DepthPredictor.write_outputs``). For a stem ``<name>`` (a path without suffix):

* ``<name>_depth.png``: 16-bit PNG, depth in millimetres: round(depth * 1000) clipped to 0..65535
  (:func:`depth_to_png16`), so depths beyond :data:`PNG16_MAX_M` = 65.535 m saturate (the .npy
  keeps them; :func:`write_prediction` says so through its ``warn``);
* ``<name>_depth.npy``: float32 depth in metres;
* ``<name>_depth_color.png``: the depth colour-mapped (``base.images.DEPTH_CMAP``) with a colour bar
  in metres; ``<name>_uncertainty.png``: the log-variance (``UNCERTAINTY_CMAP``) with its bar;
* ``<name>_depth_lower<P>`` / ``_upper<P>`` ``.png`` (16-bit mm) and ``.npy`` (metres): the bounds of
  a central P % interval;
* ``<name>.ply``: a coloured point cloud (binary PLY, metres, camera frame: x right, y down, z
  forward) through the camera the prediction used.

:func:`prediction_record` is predictions.json's entry for one image. Every file is written through
``base.safeio.atomic_write`` (complete or absent).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from base.domains import SENSORS, get_domain
from base.images import DEPTH_CMAP, UNCERTAINTY_CMAP
from base.safeio import atomic_write
from base.uncertainty import median_width

__all__ = ["PNG16_MAX_M", "depth_to_png16", "save_png16", "save_npy", "save_colormap", "save_depth_colormap",
           "write_ply", "read_ply", "intrinsics_for", "ply_intrinsics", "write_depth", "Written", "write_prediction",
           "prediction_record", "OUTPUT_SUFFIXES", "is_output_name"]

PNG16_MAX_M = 65.535  # the largest depth a 16-bit millimetre PNG can hold


def depth_to_png16(depth_m: np.ndarray) -> np.ndarray:
    """Metres -> uint16 millimetres, round(depth*1000) clipped to 0..65535."""
    mm = np.rint(np.nan_to_num(depth_m.astype(np.float64), nan=0.0, posinf=65535.0 / 1000.0) * 1000.0)
    return np.clip(mm, 0, 65535).astype(np.uint16)


def save_png16(path, depth_m: np.ndarray) -> None:
    with atomic_write(path) as f:  # complete or absent, also on a full disk or a kill
        Image.fromarray(depth_to_png16(depth_m)).save(f, format="PNG")


def save_npy(path, values: np.ndarray) -> None:
    """``values`` as a float32 .npy (metres)."""
    with atomic_write(path) as fh:
        np.save(fh, values.astype(np.float32))


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


def save_depth_colormap(path, depth_m: np.ndarray, max_depth: float | None = None) -> None:
    """The depth picture: ``DEPTH_CMAP`` with a bar in metres, from 0 to ``max_depth`` where given,
    else over the map's own range."""
    save_colormap(path, depth_m, "depth [m]", DEPTH_CMAP, vmin=0.0 if max_depth else None, vmax=max_depth)


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


def intrinsics_for(letter, width, height, given=None):
    """(fx, fy, cx, cy) at (width, height): given as is, else the domain's default scaled."""
    if given is not None:
        return tuple(given), "given"
    if letter in SENSORS:  # a built-in domain's sensor (base.domains.SENSORS)
        return SENSORS[letter].depth.resized(width, height).focal_centre, f"{get_domain(letter).name} default"
    f = 0.5 * width / math.tan(math.radians(30.0))  # 60 degree horizontal field of view
    return (f, f, (width - 1) / 2.0, (height - 1) / 2.0), "generic 60-degree camera"


def ply_intrinsics(camera, letter=None, size=None, given=None):
    """(fx, fy, cx, cy), source of the point cloud: ``camera`` (a prediction's ``"camera"`` dict:
    the frame camera it used), else (``--size``, no camera handling) ``given`` or the domain's
    default camera scaled to ``size`` (W, H)."""
    if camera:
        return (camera["fx"], camera["fy"], camera["cx"], camera["cy"]), camera["assumed"]
    return intrinsics_for(letter, size[0], size[1], given)


def _saturation(source, values, npy, warn) -> None:
    """``warn(message)`` when ``values`` (metres) hold pixels beyond what the 16-bit millimetre
    PNG can hold (PNG16_MAX_M): they saturate there, ``npy`` keeps them."""
    if warn is None:
        return
    saturated = int((values > PNG16_MAX_M).sum())
    if saturated:
        warn(f"{source}: {saturated} pixel(s) beyond {PNG16_MAX_M} m saturate the 16-bit millimetre PNG; "
             f"{npy} keeps their values")


def write_depth(stem, depth: np.ndarray, *, source=None, warn=None, name: str = "depth") -> list[Path]:
    """``<stem>_<name>.png`` (16-bit mm) and ``.npy`` (float32 metres) of ``depth``; returns the
    two paths. ``warn(message)`` (None: silent) hears of pixels the PNG saturates (``source``: the
    input named in the message, default the PNG)."""
    png, npy = Path(f"{stem}_{name}.png"), Path(f"{stem}_{name}.npy")
    _saturation(source if source is not None else png, depth, npy, warn)
    save_png16(png, depth)
    save_npy(npy, depth)
    return [png, npy]


def interval_tag(level: float) -> str:
    """The P of ``_depth_lower<P>``: the coverage in percent, e.g. "90", "97.5"."""
    return f"{round(100 * level, 6):g}"


@dataclass
class Written:
    """What :func:`write_prediction` wrote: the ``paths`` in order, the point cloud's ``points``
    (None: no point cloud)."""
    paths: list = field(default_factory=list)
    points: int | None = None


def write_prediction(stem, depth: np.ndarray, *, uncertainty=None, interval: dict | None = None, rgb=None,
                     intrinsics=None, colour_maps: bool = True, max_depth: float | None = None,
                     ply_stride: int = 1, source=None, warn=None) -> Written:
    """Every file of one prediction under ``stem`` (module docstring), in predict.py's order;
    returns the paths written (and the point cloud's size).

    ``depth``: (H,W) metres as it is to be written (predict.py clamps it to the head's range first:
    ``Predictor.clamp``); ``uncertainty``: the (H,W) log-variance or None; ``interval``: a dict with
    ``"lower"``, ``"upper"`` (H,W) metres and ``"coverage"`` (its level, e.g. 0.9; as
    ``DepthPredictor.predict_image(interval=...)`` returns it), or None; ``rgb`` ((H,W,3) uint8)
    with ``intrinsics`` (fx, fy, cx, cy: :func:`ply_intrinsics`): the point cloud, keeping every
    ``ply_stride``-th pixel in x and y; ``colour_maps``: the two pictures (``max_depth``: the top of
    the depth bar); ``warn(message)``: told of saturated PNG pixels (``source``: the input named).
    The stem's folder is created."""
    Path(stem).parent.mkdir(parents=True, exist_ok=True)
    written = Written(write_depth(stem, depth, source=source, warn=warn))
    if interval is not None:
        tag = interval_tag(interval["coverage"])
        for name in ("lower", "upper"):
            written.paths += write_depth(stem, interval[name], source=source, warn=warn, name=f"depth_{name}{tag}")
    if colour_maps:
        p = Path(f"{stem}_depth_color.png")
        save_depth_colormap(p, depth, max_depth)
        written.paths.append(p)
        if uncertainty is not None:
            p = Path(f"{stem}_uncertainty.png")
            save_colormap(p, uncertainty, "uncertainty (log-variance)", UNCERTAINTY_CMAP)
            written.paths.append(p)
    if rgb is not None and intrinsics is not None:
        p = Path(f"{stem}.ply")
        written.points = write_ply(p, depth, rgb, intrinsics, ply_stride)
        written.paths.append(p)
    return written


def prediction_record(file, letter: str, how: str, depth: np.ndarray, size, written, r: dict,
                      interval: dict | None = None, known: dict | None = None) -> dict:
    """predictions.json's entry for one image: the input ``file``, its head (``letter``, ``how``
    chosen), depth range, ``size`` (W, H), the files ``written`` (paths), the frame fields of ``r`` (a
    ``Predictor.run`` result: out-of-domain verdict, camera, network input, depth scale), the
    ``interval`` (:func:`write_prediction`'s dict with ``base.uncertainty.interval_summary``'s
    fields: those and its median width) and the ``known`` depth fit."""
    record = {"file": str(file), "domain": get_domain(letter).name, "letter": letter, "chosen": how,
              "depth_min": float(depth.min()), "depth_max": float(depth.max()),
              "size": [size[1], size[0]], "outputs": [str(w) for w in written],
              "out_of_domain": r.get("ood"), "camera": r.get("camera"), "input_size": r.get("input_size"),
              "depth_scale": r.get("depth_scale")}
    if interval:
        record["interval"] = dict({k: v for k, v in interval.items() if k not in ("lower", "upper")},
                                  median_width_m=median_width(interval["lower"], interval["upper"]))
    if known:
        record["known_depth"] = known
    return record


# What predict.py writes per image; such files in the output folder are never taken as inputs.
OUTPUT_SUFFIXES = ("_depth.png", "_depth_color.png", "_uncertainty.png", "_depth_lower<P>.png", "_depth_upper<P>.png")
_OUTPUT_NAME = re.compile(r".*(_depth|_depth_color|_uncertainty|_depth_(lower|upper)\d+(\.\d+)?)\.png$")


def is_output_name(name: str) -> bool:
    """Whether ``name`` is how predict.py names its outputs (``--intervals`` ones included)."""
    return bool(_OUTPUT_NAME.match(name))
