"""What a head's predicted log-variance means, how good it is, and its per-domain calibration.

**The predictive distribution is a Gaussian in depth.** The training loss
(:func:`losses.uncertainty_depth_loss`) is, per valid pixel, with ``p`` the predicted depth, ``u``
the predicted "log-variance", ``d`` the ground truth and ``m`` the median of the valid ground truth
of the whole training batch (``torch.median``: the lower median),

    exp(-u) * (p/m - d/m)**2 + 2*u  =  4 * [ r**2 / (2 v) + log(v) / 2 ]  - 2 log 2,
    with  r = (d - p) / m  and  v = 2 * exp(u).

The bracket is the negative log-likelihood of a Gaussian of variance ``v`` (up to a constant), so
training is maximum likelihood of ``d/m ~ N(p/m, 2 exp(u))``: a *squared* residual means a Gaussian
(an absolute one, ``|r|``, would mean a Laplace). The minimiser is ``exp(u) = r**2 / 2``, not
``r**2``: ``u`` is the log of *half* the variance, which is why a raw ``exp(u)`` is not the variance.
In metres the spread of a pixel is therefore

    sigma = s * m * sqrt(2) * exp(u / 2),

where at test time ``m`` (the ground truth's median, unknown there) is taken as the median of the
image's own finite positive predicted depths (``np.median``: the mean of the two middle values for
an even count; :func:`spread`), and ``s`` is the per-domain calibration scale (1 when uncalibrated).
A central interval of coverage ``c`` is ``p +- z * sigma`` with ``z = Phi^-1((1 + c) / 2)`` (the
lower end clipped at 0 m: depth is positive).

Each formula is one pure function here: :func:`spread`, :func:`z_value`, :func:`interval`,
:func:`gaussian_nll`, :func:`coverage`, :func:`sparsification`, :func:`ause_aurg`, :func:`spearman`
and the calibration fit :func:`fit_scale`. ``evaluation.uncertainty.UncertaintyEvaluator`` accumulates
them over a test split; ``evaluation.uncertainty.fit_calibration`` fits one scale per head on
validation rows (the training engine calls it at the end of every stage; the result is stored in the
checkpoint under :data:`CALIBRATION_KEY`, read back by :func:`calibration_scales`).

A calibration scale multiplies the spread only: it never changes a depth value, nor the order of the
pixels by uncertainty (so AUSE, AURG and Spearman are the same before and after).
"""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
from scipy.stats import rankdata

from metrics import prepare_pair

__all__ = ["CALIBRATION_KEY", "LEVELS", "RELIABILITY_LEVELS", "SPARSIFICATION_STEPS", "CALIBRATION_GRID",
           "METHODS", "spread", "z_value", "interval", "gaussian_nll", "coverage", "sparsification", "ause_aurg",
           "spearman", "fit_scale", "fit_quantiles", "fit_conformal", "fit_depth_bins", "half_width",
           "head_calibration", "valid_pixels", "interval_maps", "median_width", "interval_summary",
           "calibration_scales", "calibration_note", "interval_sentence"]

#: Checkpoint metadata key of the calibration (one scale per head and how it was fitted).
CALIBRATION_KEY = "uncertainty_calibration"
#: Central coverages reported (and fitted: the calibration minimises the largest miss over them).
LEVELS = (0.5, 0.8, 0.9, 0.95)
#: Reliability-plot coverages.
RELIABILITY_LEVELS = tuple(round(0.05 * k, 2) for k in range(1, 20))
#: Smallest median depth (metres) of :func:`spread`: a map without positive depth (an untrained head)
#: gets a tiny but positive spread instead of 0 (which would make every NLL infinite).
MEDIAN_FLOOR = 1e-3
#: Sparsification removes 0, 1/K, ..., (K-1)/K of the pixels (K = this).
SPARSIFICATION_STEPS = 20




def spread(depth, logvar, scale: float = 1.0) -> np.ndarray:
    """sigma in metres of every pixel of ONE image: ``scale * median(depth) * sqrt(2) * exp(u/2)``.

    ``depth`` and ``logvar`` are that image's whole maps (the median is over its finite positive
    predicted depths, the test-time stand-in for the training loss's ground-truth median)."""
    depth = np.asarray(depth, dtype=np.float64)
    good = depth[np.isfinite(depth) & (depth > 0)]
    m = max(float(np.median(good)) if good.size else 0.0, MEDIAN_FLOOR)
    return scale * m * math.sqrt(2.0) * np.exp(0.5 * np.asarray(logvar, dtype=np.float64))


def z_value(level: float) -> float:
    """Half-width of the central ``level`` interval of a standard Gaussian (0.9 -> 1.6449)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"a central coverage must lie in (0, 1), got {level!r}")
    return NormalDist().inv_cdf(0.5 + 0.5 * level)


def interval(depth, sigma, level: float) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) depth of the central ``level`` interval, lower clipped at 0 m."""
    half = z_value(level) * np.asarray(sigma, dtype=np.float64)
    depth = np.asarray(depth, dtype=np.float64)
    return np.maximum(depth - half, 0.0), depth + half


def gaussian_nll(err, sigma) -> float:
    """Mean negative log-likelihood (nats, density per metre) of errors ``err = d - p`` under
    N(0, sigma**2): mean of ``log(2 pi sigma**2) / 2 + err**2 / (2 sigma**2)``."""
    err, sigma = np.asarray(err, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    return float(np.mean(0.5 * np.log(2.0 * math.pi * sigma ** 2) + err ** 2 / (2.0 * sigma ** 2)))


def coverage(err, sigma, level: float) -> float:
    """Fraction of pixels whose ground truth lies inside the central ``level`` interval."""
    err, sigma = np.asarray(err, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    return float(np.mean(np.abs(err) <= z_value(level) * sigma))


def _kept_metric(order: np.ndarray, pred, gt, metric: str, steps: int) -> np.ndarray:
    """The metric of the pixels left after removing the first floor(k/steps * n) of ``order``."""
    diff = (pred - gt)[order]
    per_pixel = np.abs(diff) / gt[order] if metric == "abs_rel" else diff ** 2
    tail_sums = np.cumsum(per_pixel[::-1])[::-1]  # tail_sums[i] = sum of per_pixel[i:]
    n = per_pixel.size
    start = (np.arange(steps) * n) // steps
    means = tail_sums[start] / (n - start)
    return np.sqrt(means) if metric == "rmse" else means


def sparsification(pred, gt, sigma, metric: str = "rmse", steps: int = SPARSIFICATION_STEPS) -> dict:
    """Sparsification curves of ONE image's valid pixels for ``metric`` ("abs_rel" or "rmse").

    Entry k of each curve is the metric of the pixels left after removing the fraction k/steps:
    ``uncertainty`` removes the largest sigma first, ``oracle`` the largest error first (|p-d|/d
    for AbsRel, (p-d)**2 for RMSE), ``random`` is the expectation of random removal, which leaves
    the mean error (AbsRel) or mean squared error (RMSE) of all pixels unchanged: a flat line."""
    if metric not in ("abs_rel", "rmse"):
        raise ValueError(f"sparsification metric must be 'abs_rel' or 'rmse', got {metric!r}")
    pred, gt, sigma = (np.asarray(a, dtype=np.float64).ravel() for a in (pred, gt, sigma))
    if pred.size == 0:
        raise ValueError("sparsification needs at least one valid pixel")
    error = np.abs(pred - gt) / gt if metric == "abs_rel" else (pred - gt) ** 2
    by_unc = np.argsort(-sigma, kind="stable")
    by_err = np.argsort(-error, kind="stable")
    unc = _kept_metric(by_unc, pred, gt, metric, steps)
    oracle = _kept_metric(by_err, pred, gt, metric, steps)
    return {"fractions": np.arange(steps) / steps, "uncertainty": unc, "oracle": oracle,
            "random": np.full(steps, unc[0])}


AREA_RULES = ("mean", "trapezoid")


def ause_aurg(curves: dict, rule: str = "mean") -> dict:
    """Areas of sparsification curves of K entries (removed fractions 0, 1/K, ..., (K-1)/K).

    ``rule="mean"`` (the project's figures, K = SPARSIFICATION_STEPS = 20): each area is the mean of
    the K entries (rectangles of width 1/K). ``rule="trapezoid"``: Poggi et al. (CVPR 2020,
    ``compute_aucs`` of their mono-uncertainty code, where K = 50): the curve gets a final 0 at
    fraction 1 (every pixel removed) and is integrated with the trapezoid rule over [0, 1]; the
    random curve's area is its first entry. At the same K both rules give the same AUSE (the
    curves share their first entry c0), and the trapezoid AURG is the mean rule's plus c0 / (2K):
    compare with the literature at its K and rule.

    ``ause`` = area(uncertainty) - area(oracle) (0 = as good as knowing the errors);
    ``aurg`` = area(random) - area(uncertainty) (> 0 = better than removing pixels at random);
    ``random_ause`` = area(random) - area(oracle), the AUSE of random removal, and ``ratio`` =
    ause / random_ause (1 = no better than random, 0 = oracle)."""
    if rule not in AREA_RULES:
        raise ValueError(f"area rule must be one of {AREA_RULES}, got {rule!r}")
    if rule == "mean":
        area = {k: float(np.mean(curves[k])) for k in ("uncertainty", "oracle", "random")}
    else:
        def trapezoid(c):
            y = np.append(np.asarray(c, dtype=np.float64), 0.0)
            return float(np.sum(y[:-1] + y[1:]) / (2.0 * (y.size - 1)))
        area = {"uncertainty": trapezoid(curves["uncertainty"]), "oracle": trapezoid(curves["oracle"]),
                "random": float(np.asarray(curves["random"], dtype=np.float64)[0])}
    gap = area["random"] - area["oracle"]
    ause = area["uncertainty"] - area["oracle"]
    return {"ause": ause, "aurg": area["random"] - area["uncertainty"], "random_ause": gap,
            "ratio": ause / gap if gap > 0 else math.nan, "areas": area}


def spearman(a, b) -> float:
    """Spearman rank correlation (Pearson correlation of average ranks; ties share their rank)."""
    ra, rb = rankdata(np.asarray(a).ravel()), rankdata(np.asarray(b).ravel())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float(np.sum(ra ** 2)) * float(np.sum(rb ** 2)))
    return float(np.sum(ra * rb)) / denom if denom > 0 else math.nan


def fit_scale(err, sigma, levels=LEVELS, grid: int = 512) -> float:
    """The one scale ``s`` of sigma that minimises the largest coverage miss over ``levels``:
    ``max_l |coverage(err, s * sigma, l) - l|``.

    Coverage at level l is the fraction of ``a = |err| / sigma`` at most ``s * z_l``; the scale
    that makes level l exact is ``quantile_l(a) / z_l``. The optimum lies between the smallest and
    the largest of those, searched on a ``grid`` of log-spaced scales plus the exact ones (ties: the
    scale closest to the geometric middle). ``err`` and ``sigma``: pixels of any shape (flattened)."""
    a = np.sort((np.abs(np.asarray(err, dtype=np.float64)) / np.asarray(sigma, dtype=np.float64)).ravel())
    if a.size == 0:
        raise ValueError("fit_scale needs at least one pixel")
    z = np.array([z_value(level) for level in levels])
    exact = np.array([np.quantile(a, level) for level in levels]) / z
    lo, hi = float(exact.min()), float(exact.max())
    if not lo > 0:
        raise ValueError("fit_scale: the errors are (almost all) zero; no spread to calibrate")
    candidates = np.unique(np.concatenate([np.geomspace(lo, hi, grid) if hi > lo else [lo], exact]))
    covered = np.searchsorted(a, candidates[:, None] * z[None, :], side="right") / a.size
    worst = np.max(np.abs(covered - np.asarray(levels)[None, :]), axis=1)
    best = np.flatnonzero(worst <= worst.min() + 1e-12)
    middle = math.sqrt(lo * hi)
    return float(candidates[best[np.argmin(np.abs(np.log(candidates[best] / middle)))]])


#: Central coverages at which the per-level calibrations store their multipliers (interpolated between).
CALIBRATION_GRID = tuple(round(0.01 * k, 2) for k in range(1, 100)) + (0.995,)
#: The calibration methods compared (evaluation.uncertainty.fit_head_calibration fits each; one is stored).
METHODS = ("scale", "quantile", "conformal", "depth_bins")


def fit_quantiles(a, levels=CALIBRATION_GRID) -> list:
    """Per level ``l`` the multiplier ``m_l`` = the l-quantile of the pooled normalised residuals
    ``a = |d - p| / sigma``: the interval ``p +- m_l * sigma`` covers the fraction l of the fitting
    pixels. This is the isotonic recalibration of central intervals (the empirical distribution
    function of |z|, monotone by construction; Kuleshov et al. 2018): no Gaussian shape assumed."""
    a = np.asarray(a, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError("fit_quantiles needs at least one pixel")
    return [float(v) for v in np.quantile(a, list(levels))]


def fit_conformal(per_image, levels=CALIBRATION_GRID) -> list:
    """Split-conformal multipliers with images as the exchangeable units (pixels of one image are
    not exchangeable: their errors share the image's scale error).

    ``per_image``: one array of normalised residuals ``a`` per calibration image. With ``c_i(t)``
    the fraction of image i's pixels with ``a <= t``, ``m_l`` is the smallest t with
    ``sum_i c_i(t) >= (n + 1) * l``: the unseen image counted as wholly uncovered, so that for a new
    image exchangeable with the n, its expected covered fraction is at least l (finite-sample,
    distribution-free); the price: the n images' mean coverage must reach ``l * (n + 1) / n``.
    Infinite (no finite interval) where ``n < l / (1 - l)`` images (9 at 90 %, 19 at 95 %)."""
    per_image = [np.asarray(x, dtype=np.float64).ravel() for x in per_image]
    per_image = [x for x in per_image if x.size]
    n = len(per_image)
    if not n:
        raise ValueError("fit_conformal needs at least one image with pixels")
    a = np.concatenate(per_image)
    w = np.concatenate([np.full(x.size, 1.0 / x.size) for x in per_image])
    order = np.argsort(a, kind="stable")
    a, cum = a[order], np.cumsum(w[order])
    out = []
    for level in levels:
        need = (n + 1) * level
        k = int(np.searchsorted(cum, need - 1e-9, side="left"))
        out.append(float(a[k]) if k < a.size else math.inf)
    return out


def fit_depth_bins(a, depth, levels=CALIBRATION_GRID, bins: int = 4, min_pixels: int = 200) -> dict:
    """Per-depth-bin quantile multipliers: the pooled fitting pixels split into ``bins`` bins of the
    predicted depth (edges at its quantiles, metres), and :func:`fit_quantiles` in each (a bin with
    fewer than ``min_pixels`` pixels takes the pooled multipliers). Returns ``{"edges": inner edges,
    "multipliers": [per bin, per level]}``."""
    a, depth = np.asarray(a, np.float64).ravel(), np.asarray(depth, np.float64).ravel()
    if a.size == 0:
        raise ValueError("fit_depth_bins needs at least one pixel")
    edges = np.unique(np.quantile(depth, np.arange(1, bins) / bins)) if bins > 1 else np.zeros(0)
    which = np.searchsorted(edges, depth, side="right")
    pooled = fit_quantiles(a, levels)
    mults = [fit_quantiles(a[which == b], levels) if np.count_nonzero(which == b) >= min_pixels else pooled
             for b in range(edges.size + 1)]
    return {"edges": [float(e) for e in edges], "multipliers": mults}


def _at_level(levels, multipliers, level: float) -> float:
    """A stored multiplier curve at ``level``: its ratio to z interpolated linearly in the level
    (held constant beyond the grid's ends), times z(level)."""
    levels = np.asarray(levels, dtype=np.float64)
    ratio = np.asarray(multipliers, dtype=np.float64) / np.array([z_value(lv) for lv in levels])
    return float(np.interp(level, levels, ratio)) * z_value(level)


def half_width(calibration, sigma, depth, level: float) -> np.ndarray:
    """Half-width (metres) of the central ``level`` interval of pixels with spread ``sigma`` (scale
    1) and predicted depth ``depth``, under one head's ``calibration`` (:func:`head_calibration`'s
    dict, or a bare float: one scale): ``z * s * sigma`` (method "scale"), ``m(level) * sigma``
    ("quantile", "conformal"), ``m_bin(level) * sigma`` with the pixel's depth bin ("depth_bins")."""
    sigma = np.asarray(sigma, dtype=np.float64)
    if not isinstance(calibration, dict):
        calibration = {"method": "scale", "scale": float(calibration)}
    method = calibration.get("method", "scale")
    if method == "scale":
        return z_value(level) * float(calibration.get("scale", 1.0)) * sigma
    if method in ("quantile", "conformal"):
        return _at_level(calibration["levels"], calibration["multipliers"], level) * sigma
    if method == "depth_bins":
        per_bin = np.array([_at_level(calibration["levels"], m, level) for m in calibration["multipliers"]])
        which = np.searchsorted(np.asarray(calibration["edges"], np.float64),
                                np.asarray(depth, np.float64), side="right")
        return per_bin[which] * sigma
    raise ValueError(f"unknown calibration method {method!r}; known: {', '.join(METHODS)}")


def valid_pixels(depth, logvar, gt, min_depth=None, max_depth=None, crop="none", window=None):
    """(pred, gt, sigma at scale 1) of ONE image's evaluated pixels, as flat float64 arrays.

    ``depth``, ``logvar``, ``gt``: (H, W) at the ground-truth size. The spread is computed from the
    whole predicted map (its median); the pixels are those metrics.prepare_pair keeps (caps, crop),
    with the prediction clipped to the cap as the depth metrics clip it."""
    sigma = spread(depth, logvar)
    p, g = prepare_pair(depth, gt, min_depth, max_depth, crop, window)
    keep = g > 0
    return p[keep], g[keep], sigma[keep]


def interval_maps(depth, logvar, calibration, level: float) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) float32 depth maps in metres of ONE image's central ``level`` interval under
    the head's ``calibration`` (:func:`head_calibration`'s dict, or a bare scale); ``depth`` (the map
    as written) is their centre, unchanged; the lower end is clipped at 0 m."""
    depth = np.asarray(depth, dtype=np.float64)
    half = half_width(calibration, spread(depth, logvar), depth, level)
    return np.maximum(depth - half, 0.0).astype(np.float32), (depth + half).astype(np.float32)


def median_width(lower, upper) -> float:
    """Median interval width in metres (the stream log's per-frame figure)."""
    return float(np.median(np.asarray(upper, dtype=np.float64) - np.asarray(lower, dtype=np.float64)))


def head_calibration(meta: dict, head: int, heads: int) -> dict:
    """Head ``head``'s calibration as :func:`half_width` takes it: the stored per-head record of a
    frame-path calibration (``"heads"``: method, its parameters, where it was fitted and measured),
    else (a checkpoint from before: one scale per head, fitted on validation crops) ``{"method":
    "scale", "scale": s, "path": "crops"}``, scale 1 where nothing is stored."""
    record = (meta or {}).get(CALIBRATION_KEY) or {}
    per_head = record.get("heads")
    if isinstance(per_head, list) and len(per_head) == heads and isinstance(per_head[head], dict) \
            and per_head[head].get("method") in METHODS:
        return per_head[head]
    scales = calibration_scales(meta, heads)
    fitted = record.get("fitted") or [False] * heads
    ok = bool(fitted[head]) if len(fitted) == heads and scales == record.get("scales") else False
    return {"method": "scale", "scale": scales[head], "path": "crops" if ok else None, "fitted": ok}


def _coverage_key(level: float) -> str:
    return f"{round(100 * level, 6):g}"


def interval_summary(meta: dict, head: int, heads: int, level: float, path: str = "frames") -> dict:
    """What predictions.json, the stream JSON and the demo say about an interval of head ``head``
    made on ``path`` ("frames": the frame pipeline, whole frames; "resized": --size): the method,
    whether it was fitted, and the coverage MEASURED for that path at ``level`` (on the head's test
    frames where a command stored it, else leave-one-image-out on its validation frames; None where
    nothing was measured on that path at that level), with :func:`interval_sentence`."""
    cal = head_calibration(meta, head, heads)
    fitted = cal.get("fitted", True) if cal.get("method") == "scale" and "levels" not in cal else True
    fitted = bool(fitted) and cal.get("path") is not None
    key = _coverage_key(level)
    measured, on, images = None, None, None
    if cal.get("path") == path:
        for name in ("test", "validation_loo"):
            m = (cal.get("measured") or {}).get(name) or {}
            if m.get("coverage", {}).get(key) is not None:
                measured, on, images = m["coverage"][key], m.get("on"), m.get("images")
                break
    out = {"coverage": level, "method": cal.get("method"), "calibrated": fitted, "fitted_on": cal.get("path"),
           "scale": cal.get("scale"), "fitted_at": cal.get("fitted_at"), "measured_coverage": measured,
           "measured_on": on, "measured_images": images}
    out["meaning"] = interval_sentence(out)
    return out


def interval_sentence(summary: dict) -> str:
    """One sentence on what an interval means, from :func:`interval_summary`'s dict."""
    level = summary["coverage"]
    text = (f"a central {100 * level:g} % interval in metres: the depth lies between its lower and upper "
            f"maps with probability {100 * level:g} % ")
    if not summary["calibrated"]:
        text += "under the head's raw Gaussian spread (not calibrated)"
    else:
        text += f"({summary['method']} calibration fitted on {summary['fitted_on']})"
    if summary["measured_coverage"] is None:
        return text + "; its coverage was not measured on this path."
    return (text + f"; measured: it covered {100 * summary['measured_coverage']:.1f} % of the valid pixels "
            f"of {summary['measured_images']} {summary['measured_on']}.")


def calibration_scales(meta: dict, heads: int) -> list[float]:
    """The stored per-head scales, or 1 for every head of a checkpoint that has none."""
    record = (meta or {}).get(CALIBRATION_KEY)
    if not record or len(record.get("scales") or []) != heads:
        return [1.0] * heads
    return [float(s) for s in record["scales"]]


def calibration_note(meta: dict, heads: int) -> str | None:
    """A one-line note when the scales are not (all) fitted, else None."""
    record = (meta or {}).get(CALIBRATION_KEY)
    if not record:
        return ("note: this checkpoint stores no uncertainty calibration (made before it existed): "
                "intervals use scale 1 (uncalibrated); fit one with test.py --calibrate-into DIR")
    if len(record.get("scales") or []) != heads:
        return f"note: the stored uncertainty calibration does not fit {heads} head(s): scale 1 (uncalibrated)"
    missing = [d["domain"] for d, ok in zip(record.get("validation", []), record.get("fitted", [])) if not ok]
    if missing and record.get("heads"):
        return (f"note: no uncertainty calibration for {', '.join(missing)} (no validation frames when the head was "
                f"learned, or none to keep from that stage): scale 1 (uncalibrated) there")
    if missing:
        return f"note: no validation rows for {', '.join(missing)}: scale 1 (uncalibrated) there"
    if not record.get("heads"):
        return ("note: this checkpoint's uncertainty scales were fitted on validation crops, not on whole frames: "
                "the intervals' coverage on whole frames was not measured (refit: test.py --calibrate-into DIR)")
    return None
