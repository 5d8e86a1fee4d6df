"""Depth-evaluation metrics, crops, caps and test-set aggregation.

* :func:`compute_errors` -- the standard error measures of one image (pixels with gt > 0).
* :func:`prepare_pair` -- explicit, switchable evaluation conventions: depth caps and crops
  (``"none"``, ``"eigen"`` for NYU-v2, ``"garg"`` for KITTI).
* :class:`ErrorAggregator` -- averages over a test set, either per image (``mode="image"``, the
  field's standard) or per pixel (``mode="pixel"``, the authors' evaluation: every valid pixel of
  the set weighted equally, exactly as if all valid pixels were concatenated into one image).
* :func:`format_table` -- a fixed-format text table of per-domain results.

The authors' own evaluation (their util.py) used neither caps nor crops (only gt > 0), per-pixel
averaging, each image's RMSE weighted by its valid-pixel count, no clamp of the prediction and
``<=`` in the delta test; reproduce it exactly with ``prepare_pair(pred, gt)`` (defaults) and
``ErrorAggregator(mode="pixel", rmse="weighted", clamp=False, delta_le=True)`` (what
``--protocol authors`` / ``--authors-eval`` select). With the defaults (``rmse="pooled"``) the pixel
mode's RMSE is that of all pixels together (sqrt of the pooled MSE).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "METRIC_NAMES",
    "LOWER_IS_BETTER",
    "HIGHER_IS_BETTER",
    "CROPS",
    "PRED_EPS",
    "compute_errors",
    "eigen_crop_mask",
    "garg_crop_mask",
    "crop_mask",
    "prepare_pair",
    "ErrorAggregator",
    "format_table",
]

#: Metric keys of :func:`compute_errors`, in display order.
METRIC_NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "mae", "silog",
                "delta1", "delta2", "delta3")
#: Error measures (lower is better).
LOWER_IS_BETTER = frozenset({"abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "mae", "silog"})
#: Accuracy measures (higher is better).
HIGHER_IS_BETTER = frozenset({"delta1", "delta2", "delta3"})

#: Names accepted by ``prepare_pair(..., crop=...)``.
CROPS = frozenset({"none", "eigen", "garg"})

#: Inside :func:`compute_errors` the prediction is clamped to at least this value, only so that
#: logarithms stay finite. Callers are expected to clamp predictions to the domain's minimum
#: depth themselves (``prepare_pair(..., min_depth=...)``).
PRED_EPS = 1e-6

# Statistics from which every metric can be computed; summable over pixels of many images.
_SUM_KEYS = ("n", "abs_rel", "sq_rel", "sq", "abs", "log_sq", "log", "log10_abs",
             "delta1", "delta2", "delta3")


def _to_numpy(x, name: str) -> np.ndarray:
    """numpy float64 copy-or-view of a numpy array, torch tensor or array-like."""
    try:  # torch is optional for this module
        import torch
        if isinstance(x, torch.Tensor):
            return x.detach().to("cpu", torch.float64).numpy()
    except ImportError:  # pragma: no cover
        pass
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}") from e


def _valid_pair(pred, gt, clamp: bool = True):
    p = _to_numpy(pred, "pred")
    g = _to_numpy(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have the same shape, got {p.shape} and {g.shape}")
    valid = np.isfinite(g) & (g > 0)
    if not valid.any():
        raise ValueError("ground truth has no valid pixel (no gt > 0): cannot compute errors")
    p = np.maximum(p[valid], PRED_EPS) if clamp else p[valid]
    return p, g[valid]


def _delta_ratio(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    """max(p/g, g/p) with IEEE semantics, as the authors' ``maxOfTwo`` computes it: a negative
    prediction gives a negative ratio (so it passes every delta test), a zero one gives inf."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.maximum(p / g, g / p)


def _error_sums(p: np.ndarray, g: np.ndarray, delta_le: bool = False) -> dict:
    """Summable statistics of valid pixels ``p`` (prediction) and ``g`` (ground truth).
    ``delta_le``: the delta tests use ``<=`` (the authors') instead of ``<``."""
    diff = p - g
    with np.errstate(divide="ignore", invalid="ignore"):  # only reachable without the clamp
        d = np.log(p) - np.log(g)
        log10_abs = np.abs(np.log10(p) - np.log10(g))
    ratio = _delta_ratio(p, g)
    within = np.less_equal if delta_le else np.less
    return {
        "n": int(p.size),
        "abs_rel": float(np.sum(np.abs(diff) / g)),
        "sq_rel": float(np.sum(diff ** 2 / g)),
        "sq": float(np.sum(diff ** 2)),
        "abs": float(np.sum(np.abs(diff))),
        "log_sq": float(np.sum(d ** 2)),
        "log": float(np.sum(d)),
        "log10_abs": float(np.sum(log10_abs)),
        "delta1": int(np.count_nonzero(within(ratio, 1.25))),
        "delta2": int(np.count_nonzero(within(ratio, 1.25 ** 2))),
        "delta3": int(np.count_nonzero(within(ratio, 1.25 ** 3))),
    }


def _errors_from_sums(s: dict) -> dict:
    n = s["n"]
    mean_d = s["log"] / n
    mean_d2 = s["log_sq"] / n
    if not (math.isfinite(mean_d) and math.isfinite(mean_d2)):  # non-positive predictions, unclamped
        return dict(_errors_from_finite_sums(s, n, 0.0, 0.0), rmse_log=math.nan, silog=math.nan)
    return _errors_from_finite_sums(s, n, mean_d, mean_d2)


def _errors_from_finite_sums(s: dict, n: int, mean_d: float, mean_d2: float) -> dict:
    return {
        "abs_rel": s["abs_rel"] / n,
        "sq_rel": s["sq_rel"] / n,
        "rmse": math.sqrt(s["sq"] / n),
        "rmse_log": math.sqrt(mean_d2),
        "log10": s["log10_abs"] / n,
        "mae": s["abs"] / n,
        # max(., 0): the difference can be a tiny negative number from rounding
        "silog": 100.0 * math.sqrt(max(mean_d2 - mean_d ** 2, 0.0)),
        "delta1": s["delta1"] / n,
        "delta2": s["delta2"] / n,
        "delta3": s["delta3"] / n,
    }


def compute_errors(pred, gt, *, clamp: bool = True, delta_le: bool = False) -> dict:
    """Error measures of ONE image.

    Args:
        pred: predicted depth (numpy array or torch tensor, any shape).
        gt: ground-truth depth of the same shape; only pixels with ``gt > 0`` (finite) count.

    The caller should clamp ``pred`` to the domain's minimum depth (see :func:`prepare_pair`);
    here it is only clamped to :data:`PRED_EPS` to keep the logarithms finite.

    Returns a dict of python floats:
    ``abs_rel`` mean |p-g|/g, ``sq_rel`` mean (p-g)^2/g, ``rmse`` sqrt(mean (p-g)^2),
    ``rmse_log`` sqrt(mean d^2), ``log10`` mean |log10 p - log10 g|, ``mae`` mean |p-g|,
    ``silog`` 100*sqrt(mean d^2 - (mean d)^2), ``delta{k}`` fraction of max(p/g, g/p) < 1.25**k,
    where d = ln p - ln g.

    The authors' evaluation (``util.evaluateError``) differs in two ways, each an option here:
    ``clamp=False`` leaves predictions unclamped (a negative one then passes every delta test, as in
    their ``maxOfTwo``, and the log measures become NaN); ``delta_le=True`` tests ``<= 1.25**k``.

    Raises:
        ValueError: shapes differ, or ``gt`` has no valid pixel.
    """
    p, g = _valid_pair(pred, gt, clamp)
    return _errors_from_sums(_error_sums(p, g, delta_le))


# ----------------------------------------------------------------------------- crops and caps

# Eigen crop bounds (rows 45:471, cols 41:601), defined on 480x640 NYU-v2 frames.
_EIGEN_REF = (480, 640)
_EIGEN_ROWS = (45, 471)
_EIGEN_COLS = (41, 601)

# Garg crop fractions (KITTI).
_GARG_ROWS = (0.40810811, 0.99189189)
_GARG_COLS = (0.03594771, 0.96405229)


def _scale_bound(bound: int, size: int, ref: int) -> int:
    """round(bound * size / ref), halves rounded up, in exact integer arithmetic."""
    return (bound * size + ref // 2) // ref


def eigen_crop_mask(h: int, w: int) -> np.ndarray:
    """Boolean (h, w) mask of the NYU-v2 Eigen crop.

    The crop is rows 45:471, cols 41:601 of a 480x640 frame (exactly those at 480x640). For other
    sizes each bound is scaled proportionally: ``round(bound * size / 480)`` for rows and
    ``round(bound * size / 640)`` for columns, halves rounded up (e.g. 240x320 -> rows 23:236,
    cols 21:301). Use it on ground truth at (a resize of) the full NYU frame, not on a crop of it.
    """
    mask = np.zeros((int(h), int(w)), dtype=bool)
    r0, r1 = (_scale_bound(b, h, _EIGEN_REF[0]) for b in _EIGEN_ROWS)
    c0, c1 = (_scale_bound(b, w, _EIGEN_REF[1]) for b in _EIGEN_COLS)
    mask[r0:r1, c0:c1] = True
    return mask


def garg_crop_mask(h: int, w: int) -> np.ndarray:
    """Boolean (h, w) mask of the KITTI Garg crop: rows int(0.40810811*h):int(0.99189189*h),
    cols int(0.03594771*w):int(0.96405229*w) (352x1216 -> rows 143:349, cols 43:1172)."""
    mask = np.zeros((int(h), int(w)), dtype=bool)
    r0, r1 = int(_GARG_ROWS[0] * h), int(_GARG_ROWS[1] * h)
    c0, c1 = int(_GARG_COLS[0] * w), int(_GARG_COLS[1] * w)
    mask[r0:r1, c0:c1] = True
    return mask


def crop_mask(crop, h: int, w: int, window=None):
    """Mask of crop ``crop`` (one of :data:`CROPS`, or None = "none") at (h, w);
    None for "none".

    ``window = (top, left, frame_h, frame_w)`` says that the (h, w) array is a window of a
    (resized) full frame of frame_h x frame_w, as the test transforms' centre/bottom crops are:
    the crop is then defined on that frame (where Eigen and Garg are defined) and cut to the window.
    Without it the array is taken to be the whole frame.
    """
    name = "none" if crop is None else str(crop).lower()
    if name not in CROPS:
        raise ValueError(f"unknown crop {crop!r}; expected one of {sorted(CROPS)}")
    if window is not None and name != "none":
        top, left, frame_h, frame_w = (int(v) for v in window)
        if top < 0 or left < 0 or top + h > frame_h or left + w > frame_w:
            raise ValueError(f"window {tuple(window)} (top, left, frame_h, frame_w) does not contain "
                             f"an array of {h}x{w}")
        return crop_mask(name, frame_h, frame_w)[top:top + h, left:left + w]
    if name == "eigen":
        return eigen_crop_mask(h, w)
    if name == "garg":
        return garg_crop_mask(h, w)
    return None


def prepare_pair(pred, gt, min_depth=None, max_depth=None, crop="none", window=None):
    """Apply the evaluation conventions to one prediction / ground-truth pair.

    Args:
        pred, gt: numpy arrays or torch tensors of the same shape (..., H, W); ``pred`` must
            already be at the ground-truth size.
        min_depth, max_depth: optional cap; ground truth outside ``(min_depth, max_depth)``
            becomes invalid (0) and ``pred`` is clipped to ``[min_depth, max_depth]``. Both
            bounds are exclusive, as in the field's evaluation code (``gt > min & gt < max``):
            a reading at the cap itself is usually a saturated sensor value.
            Each bound is applied only when given.
        crop: ``"none"`` (default), ``"eigen"`` or ``"garg"``; pixels outside the crop (on the
            last two dims) become invalid.
        window: ``(top, left, frame_h, frame_w)`` when the arrays are a window of a larger frame
            (see :func:`crop_mask`); the loaders give it as each item's ``"window"``.

    Returns:
        ``(pred, gt)`` as new numpy float64 arrays; invalid ground truth (gt <= 0, non-finite,
        outside the cap or the crop) is set to 0.

    The defaults reproduce the authors' evaluation (gt > 0 only, no cap, no crop).
    """
    p = np.array(_to_numpy(pred, "pred"), dtype=np.float64, copy=True)
    g = np.array(_to_numpy(gt, "gt"), dtype=np.float64, copy=True)
    if p.shape != g.shape:
        raise ValueError(f"pred and gt must have the same shape, got {p.shape} and {g.shape}")
    if g.ndim < 2:
        raise ValueError(f"expected arrays of shape (..., H, W), got {g.shape}")

    valid = np.isfinite(g) & (g > 0)
    if min_depth is not None:
        valid &= g > min_depth
    if max_depth is not None:
        valid &= g < max_depth
    mask = crop_mask(crop, g.shape[-2], g.shape[-1], window)
    if mask is not None:
        valid &= mask  # broadcasts over leading dims
    g[~valid] = 0.0

    if min_depth is not None or max_depth is not None:
        p = np.clip(p, min_depth, max_depth)
    return p, g


# ----------------------------------------------------------------------------- aggregation

class ErrorAggregator:
    """Accumulates errors over a test set, one image per :meth:`add`.

    ``mode="image"`` (default, the field's standard): the mean of the per-image
    :func:`compute_errors`. ``mode="pixel"`` (the authors' way): every valid pixel of the set
    weighted equally; the result equals :func:`compute_errors` on the concatenation of all valid
    pixels (silog and deltas included, from accumulated sums and counts).

    ``skip_empty``: an image whose ground truth has no valid pixel raises ValueError in
    :meth:`add` by default; with ``skip_empty=True`` it is ignored and counted in ``skipped``.

    :meth:`result` returns the metrics as floats plus ``count`` (images used), ``pixels``
    (valid pixels used) and ``skipped`` (images ignored), all ints.

    The authors' evaluation (``--protocol authors``) is ``mode="pixel", rmse="weighted",
    clamp=False, delta_le=True``: ``rmse="weighted"`` makes the pixel mode's RMSE the mean of the
    per-image RMSEs weighted by their valid-pixel counts (their ``addErrors``) instead of the RMSE
    of all pixels together; ``clamp`` and ``delta_le`` are passed to :func:`compute_errors`.
    """

    MODES = ("image", "pixel")
    RMSE_MODES = ("pooled", "weighted")

    def __init__(self, mode: str = "image", skip_empty: bool = False, *, rmse: str = "pooled",
                 clamp: bool = True, delta_le: bool = False):
        if mode not in self.MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {self.MODES}")
        if rmse not in self.RMSE_MODES:
            raise ValueError(f"unknown rmse mode {rmse!r}; expected one of {self.RMSE_MODES}")
        self.mode = mode
        self.skip_empty = bool(skip_empty)
        self.rmse, self.clamp, self.delta_le = rmse, bool(clamp), bool(delta_le)
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.pixels = 0
        self.skipped = 0
        self._image_sums = {k: 0.0 for k in METRIC_NAMES}
        self._pixel_sums = {k: 0 for k in _SUM_KEYS}
        self._weighted_rmse = 0.0  # sum over images of (valid pixels x image RMSE)

    def add(self, pred, gt) -> dict | None:
        """Add one image; returns its own errors (None when skipped as empty)."""
        p = _to_numpy(pred, "pred")
        g = _to_numpy(gt, "gt")
        if self.skip_empty and p.shape == g.shape and not (np.isfinite(g) & (g > 0)).any():
            self.skipped += 1
            return None
        pv, gv = _valid_pair(p, g, self.clamp)
        sums = _error_sums(pv, gv, self.delta_le)
        errors = _errors_from_sums(sums)
        self.count += 1
        self.pixels += sums["n"]
        self._weighted_rmse += sums["n"] * errors["rmse"]
        for k in METRIC_NAMES:
            self._image_sums[k] += errors[k]
        for k in _SUM_KEYS:
            self._pixel_sums[k] += sums[k]
        return errors

    def result(self) -> dict:
        if self.count == 0:
            raise ValueError("ErrorAggregator.result(): no image with valid ground truth was added")
        if self.mode == "image":
            out = {k: self._image_sums[k] / self.count for k in METRIC_NAMES}
        else:
            out = _errors_from_sums(self._pixel_sums)
            if self.rmse == "weighted":
                out["rmse"] = self._weighted_rmse / self.pixels
        out["count"] = self.count
        out["pixels"] = self.pixels
        out["skipped"] = self.skipped
        return out


# ----------------------------------------------------------------------------- display

_TABLE_COLUMNS = (("AbsRel", "abs_rel"), ("SqRel", "sq_rel"), ("RMSE", "rmse"),
                  ("RMSElog", "rmse_log"), ("log10", "log10"), ("MAE", "mae"),
                  ("d1", "delta1"), ("d2", "delta2"), ("d3", "delta3"))


def format_table(rows) -> str:
    """Fixed-format text table of results; returns the string (``print(format_table(rows))``).

    ``rows``: iterable of ``(domain_name, result_dict)`` with result dicts as returned by
    :meth:`ErrorAggregator.result` (or :func:`compute_errors`; ``count`` then shows ``-``).
    Columns: domain, images, AbsRel, SqRel, RMSE, RMSElog, log10, MAE, d1, d2, d3; metrics with
    4 decimals, missing values as ``-``.
    """
    rows = list(rows)
    dw = max([len("domain")] + [len(str(name)) for name, _ in rows])
    header = f"{'domain':<{dw}} {'images':>6} " + " ".join(f"{t:>8}" for t, _ in _TABLE_COLUMNS)
    lines = [header, "-" * len(header)]
    for name, res in rows:
        count = res.get("count")
        cells = [f"{str(name):<{dw}}", f"{'-' if count is None else int(count):>6}"]
        for _, key in _TABLE_COLUMNS:
            v = res.get(key)
            cells.append(f"{'-':>8}" if v is None else f"{float(v):>8.4f}")
        lines.append(" ".join(cells))
    return "\n".join(lines)
