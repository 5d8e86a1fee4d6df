"""What a head's predicted log-variance means, how good it is, and its per-domain calibration.

**The predictive distribution is a Gaussian in depth.** The training loss
(:func:`losses.uncertainty_depth_loss`) is, per valid pixel, with ``p`` the predicted depth, ``u``
the predicted "log-variance", ``d`` the ground truth and ``m`` the batch's median ground truth,

    exp(-u) * (p/m - d/m)**2 + 2*u  =  4 * [ r**2 / (2 v) + log(v) / 2 ]  - 2 log 2,
    with  r = (d - p) / m  and  v = 2 * exp(u).

The bracket is the negative log-likelihood of a Gaussian of variance ``v`` (up to a constant), so
training is maximum likelihood of ``d/m ~ N(p/m, 2 exp(u))``: a *squared* residual means a Gaussian
(an absolute one, ``|r|``, would mean a Laplace). The minimiser is ``exp(u) = r**2 / 2``, not
``r**2``: ``u`` is the log of *half* the variance, which is why a raw ``exp(u)`` is not the variance.
In metres the spread of a pixel is therefore

    sigma = s * m * sqrt(2) * exp(u / 2),

where at test time ``m`` (the ground truth's median, unknown there) is taken as the median of the
image's own predicted depth, and ``s`` is the per-domain calibration scale (1 when uncalibrated).
A central interval of coverage ``c`` is ``p +- z * sigma`` with ``z = Phi^-1((1 + c) / 2)`` (the
lower end clipped at 0 m: depth is positive).

Each formula is one pure function here: :func:`spread`, :func:`z_value`, :func:`interval`,
:func:`gaussian_nll`, :func:`coverage`, :func:`sparsification`, :func:`ause_aurg`, :func:`spearman`
and the calibration fit :func:`fit_scale`. :class:`UncertaintyEvaluator` accumulates them over a
test split; :func:`fit_calibration` fits one scale per head on validation rows (the training engine
calls it at the end of every stage; the result is stored in the checkpoint under
:data:`CALIBRATION_KEY`, read back by :func:`calibration_scales`).

A calibration scale multiplies the spread only: it never changes a depth value, nor the order of the
pixels by uncertainty (so AUSE, AURG and Spearman are the same before and after).
"""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import torch
from scipy.stats import rankdata

from data.safeio import atomic_write
from losses import upsample_to
from metrics import prepare_pair

__all__ = ["CALIBRATION_KEY", "LEVELS", "SPARSIFICATION_STEPS", "spread", "z_value", "interval",
           "gaussian_nll", "coverage", "sparsification", "ause_aurg", "spearman", "fit_scale",
           "valid_pixels", "UncertaintyEvaluator", "fit_calibration", "calibration_scales",
           "calibration_note", "save_reliability_plot", "interval_maps", "median_width", "parse_interval",
           "add_interval_argument", "interval_summary", "format_tables", "format_stage_table"]

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


# --------------------------------------------------------------------------------------------------
# The formulas (numpy arrays of valid pixels)
# --------------------------------------------------------------------------------------------------
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


def ause_aurg(curves: dict) -> dict:
    """Areas of sparsification curves (each the mean of its K entries: width 1/K per step).

    ``ause`` = area(uncertainty) - area(oracle) (0 = as good as knowing the errors);
    ``aurg`` = area(random) - area(uncertainty) (> 0 = better than removing pixels at random);
    ``random_ause`` = area(random) - area(oracle), the AUSE of random removal, and ``ratio`` =
    ause / random_ause (1 = no better than random, 0 = oracle)."""
    area = {k: float(np.mean(curves[k])) for k in ("uncertainty", "oracle", "random")}
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
    scale closest to the geometric middle)."""
    a = np.sort(np.abs(np.asarray(err, dtype=np.float64)) / np.asarray(sigma, dtype=np.float64))
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


# --------------------------------------------------------------------------------------------------
# A split's pixels and their accumulation
# --------------------------------------------------------------------------------------------------
def valid_pixels(depth, logvar, gt, min_depth=None, max_depth=None, crop="none", window=None):
    """(pred, gt, sigma at scale 1) of ONE image's evaluated pixels, as flat float64 arrays.

    ``depth``, ``logvar``, ``gt``: (H, W) at the ground-truth size. The spread is computed from the
    whole predicted map (its median); the pixels are those metrics.prepare_pair keeps (caps, crop),
    with the prediction clipped to the cap as the depth metrics clip it."""
    sigma = spread(depth, logvar)
    p, g = prepare_pair(depth, gt, min_depth, max_depth, crop, window)
    keep = g > 0
    return p[keep], g[keep], sigma[keep]


def _batch_maps(depth, logvar, gt):
    """Numpy (B, H, W) maps of a batch, the network's outputs upsampled to the ground truth."""
    size = gt.shape[-2:]
    depth = upsample_to(depth.float(), size)[:, 0].cpu().numpy()
    logvar = upsample_to(logvar.float(), size)[:, 0].cpu().numpy()
    return depth, logvar, gt.float()[:, 0].cpu().numpy()


def _windows(windows, n):
    return [None] * n if windows is None else [tuple(w) for w in torch.as_tensor(windows).tolist()]


class UncertaintyEvaluator:
    """Accumulates one domain's uncertainty measures over a split, one batch per :meth:`add_batch`.

    ``scales``: {label: calibration scale} evaluated side by side (e.g. {"raw": 1.0, "calibrated":
    1.7}); sparsification and Spearman do not depend on the scale. Sparsification curves are per
    image, averaged over images; coverage and NLL pool every evaluated pixel, Spearman pools up to
    ``spearman_pixels`` evenly strided pixels of each image (its ranks need them all in memory)."""

    def __init__(self, min_depth=None, max_depth=None, crop="none", scales=None,
                 steps: int = SPARSIFICATION_STEPS, spearman_pixels: int = 4096):
        self.rules = (min_depth, max_depth, crop)
        self.scales = dict(scales or {"raw": 1.0})
        self.steps = steps
        self.spearman_pixels = spearman_pixels  # per image, evenly strided: bounded memory
        self.curves = {m: {k: [] for k in ("uncertainty", "oracle", "random")} for m in ("abs_rel", "rmse")}
        self.levels = tuple(sorted(set(LEVELS) | set(RELIABILITY_LEVELS)))
        self.z = np.array([z_value(level) for level in self.levels])
        self.inside = {k: np.zeros(len(self.levels)) for k in self.scales}
        self.n = 0
        self.sum_log_sigma = 0.0
        self.sum_a2 = 0.0
        self.rank_pairs = ([], [])
        self.images = 0

    def add_batch(self, depth, logvar, gt, windows=None) -> None:
        depth, logvar, gt = _batch_maps(depth, logvar, gt)
        for d, u, g, w in zip(depth, logvar, gt, _windows(windows, len(gt))):
            p, g_valid, sigma = valid_pixels(d, u, g, *self.rules, window=w)
            if p.size:
                self.add_pixels(p, g_valid, sigma)

    def add_pixels(self, pred, gt, sigma) -> None:
        """One image's evaluated pixels (sigma at scale 1)."""
        for metric, store in self.curves.items():
            for key, curve in sparsification(pred, gt, sigma, metric, self.steps).items():
                if key in store:
                    store[key].append(curve)
        err = gt - pred
        a = np.abs(err) / sigma
        for label, s in self.scales.items():
            self.inside[label] += np.count_nonzero(a[:, None] <= s * self.z[None, :], axis=0)
        self.n += a.size
        self.sum_log_sigma += float(np.sum(np.log(sigma)))
        self.sum_a2 += float(np.sum(a ** 2))
        stride = max(1, -(-a.size // self.spearman_pixels))
        self.rank_pairs[0].append(sigma[::stride])
        self.rank_pairs[1].append(np.abs(err)[::stride])
        self.images += 1

    def nll(self, scale: float) -> float:
        """gaussian_nll of every pixel at ``scale``, from the running sums (exact)."""
        return (0.5 * math.log(2.0 * math.pi) + self.sum_log_sigma / self.n + math.log(scale)
                + self.sum_a2 / (2.0 * scale ** 2 * self.n))

    def result(self) -> dict:
        if not self.n:
            raise ValueError("no evaluated pixel: nothing to measure")
        sparse = {}
        for metric, store in self.curves.items():
            mean = {k: np.mean(np.stack(v), axis=0) for k, v in store.items()}
            sparse[metric] = dict(ause_aurg(mean), curves={k: v.tolist() for k, v in mean.items()})
        calibration = {}
        for label, s in self.scales.items():
            cov = self.inside[label] / self.n
            calibration[label] = {
                "scale": s, "nll": self.nll(s),
                "coverage": {f"{round(100 * level)}": float(cov[self.levels.index(level)]) for level in LEVELS},
                "reliability": [[level, float(cov[self.levels.index(level)])] for level in RELIABILITY_LEVELS]}
        return {"images": self.images, "pixels": self.n, "family": "gaussian",
                "sparsification": sparse, "steps": self.steps,
                "spearman": spearman(np.concatenate(self.rank_pairs[0]), np.concatenate(self.rank_pairs[1])),
                "calibration": calibration}


# --------------------------------------------------------------------------------------------------
# Calibration: fitted on validation rows, stored in the checkpoint
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def fit_calibration(forward, heads: list, note: str = "") -> dict:
    """One scale per head, fitted (:func:`fit_scale`) on validation rows.

    ``forward(images, head) -> (depth, logvar)``; ``heads``: per head, ``{"domain": name,
    "loaders": [validation loaders, or none], "rules": (min_depth, max_depth, crop)}``. A head
    without validation rows keeps scale 1 (``fitted`` False). Returns the checkpoint record."""
    scales, fitted, per_head = [], [], []
    for head, item in enumerate(heads):
        err, sigma, images = [], [], 0
        for loader in item["loaders"]:
            for batch in loader:
                depth, logvar = forward(batch["image"], head)
                maps = _batch_maps(depth, logvar, batch["depth"])
                for d, u, g, w in zip(*maps, _windows(batch.get("window"), len(maps[2]))):
                    p, g_valid, s = valid_pixels(d, u, g, *item["rules"], window=w)
                    err.append(g_valid - p)
                    sigma.append(s)
                    images += 1
        err = np.concatenate(err) if err else np.zeros(0)
        sigma = np.concatenate(sigma) if sigma else np.zeros(0)
        keep = np.isfinite(err) & np.isfinite(sigma) & (sigma > 0)
        err, sigma = err[keep], sigma[keep]
        scale, reason = 1.0, (None if err.size else "no validation pixel")
        if err.size:
            try:
                scale = fit_scale(err, sigma)
            except ValueError as e:  # a degenerate head must not stop the stage from saving its model
                reason = str(e)
        scales.append(scale)
        fitted.append(reason is None)
        record = {"domain": item["domain"], "images": images, "pixels": int(err.size), "scale": scale}
        if reason is not None:
            record["not_fitted"] = reason
        else:
            for label, s in (("before", 1.0), ("after", scale)):
                record[f"coverage_{label}"] = {f"{round(100 * lv)}": coverage(err, s * sigma, lv)
                                               for lv in RELIABILITY_LEVELS}
                record[f"nll_{label}"] = gaussian_nll(err, s * sigma)
        per_head.append(record)
    return {"family": "gaussian", "scales": scales, "fitted": fitted,
            "method": "one scale of sigma per head minimising the largest coverage miss at "
                      + "/".join(f"{round(100 * lv)}" for lv in LEVELS) + " % on the validation rows",
            "split": "validation rows held out of the training rows (never the test split)",
            "validation": per_head, "note": note}


def interval_maps(depth, logvar, scale: float, level: float) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) float32 depth maps in metres of ONE image's central ``level`` interval, with
    the head's calibration ``scale``; ``depth`` (the map as written) is their centre, unchanged."""
    lower, upper = interval(depth, spread(depth, logvar, scale), level)
    return lower.astype(np.float32), upper.astype(np.float32)


def median_width(lower, upper) -> float:
    """Median interval width in metres (the stream log's per-frame figure)."""
    return float(np.median(np.asarray(upper, dtype=np.float64) - np.asarray(lower, dtype=np.float64)))


def parse_interval(text) -> float:
    """--intervals PERCENT -> a coverage in (0, 1), or ValueError with the expected form."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 < value < 100.0:
        raise ValueError(f"--intervals {text!r}: expected a central coverage in percent, between 0 and "
                         f"100 exclusive, e.g. 90")
    return value / 100.0


def add_interval_argument(p) -> None:
    """predict.py's --intervals (the predictor's option parser)."""
    p.add_argument("--intervals", default=None, metavar="PERCENT",
                   help="also write the central PERCENT %% interval of every pixel's depth as "
                        "<name>_depth_lower<P>/_upper<P> (.png 16-bit mm and .npy metres), from the "
                        "predicted uncertainty with the checkpoint's per-domain calibration (scale 1, "
                        "with a note, for checkpoints without one); predictions.json states the coverage "
                        "the calibration achieved on validation rows. Streams log each frame's median "
                        "interval width at this coverage (default 90)")


def interval_summary(meta: dict, head: int, heads: int, level: float) -> dict:
    """What predictions.json says about an interval of head ``head``: the scale, whether it was
    fitted, and the coverage it achieved on the validation rows at ``level`` (None if not stored)."""
    record = (meta or {}).get(CALIBRATION_KEY) or {}
    scales = calibration_scales(meta, heads)
    fitted = bool((record.get("fitted") or [False] * heads)[head]) if scales == record.get("scales") else False
    validation = (record.get("validation") or [{}] * heads)[head] if fitted else {}
    key = f"{round(100 * level, 6):g}"
    return {"coverage": level, "scale": scales[head], "calibrated": fitted,
            "validation_coverage": (validation.get("coverage_after") or {}).get(key),
            "validation_images": validation.get("images")}


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
                "intervals use scale 1 (uncalibrated); fit one with test.py --calibrate OUT")
    if len(record.get("scales") or []) != heads:
        return f"note: the stored uncertainty calibration does not fit {heads} head(s): scale 1 (uncalibrated)"
    missing = [d["domain"] for d, ok in zip(record.get("validation", []), record.get("fitted", [])) if not ok]
    if missing:
        return f"note: no validation rows for {', '.join(missing)}: scale 1 (uncalibrated) there"
    return None


def save_reliability_plot(path, domain: str, curves: dict) -> None:
    """Observed against nominal coverage, one line per label of ``curves`` ({label: [[level,
    observed], ...]}), written atomically."""
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4.2, 4.0), dpi=100)
    try:
        ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", label="ideal")
        for label, points in curves.items():
            x, y = zip(*points)
            ax.plot(x, y, marker="o", markersize=3, label=label)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("nominal central coverage")
        ax.set_ylabel("fraction of test pixels inside")
        ax.set_title(domain, fontsize=10)
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        with atomic_write(path) as f:
            fig.savefig(f, format="png")
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------

def is_synthetic(data_root) -> bool:
    """Whether ``data_root`` is a synthetic.py set (its meta.json says so)."""
    import json
    from pathlib import Path
    try:
        return bool(json.loads((Path(data_root) / "meta.json").read_text()).get("synthetic"))
    except (OSError, ValueError, AttributeError):
        return False


def reliability_plots(folder, results: dict, model: str, data_root) -> list[str]:
    """A reliability plot per domain of ``results`` (evaluate_checkpoint's, with uncertainty) of the
    checkpoint that learned ``model`` (its letters), as ``folder/uncertainty_<domain>.png``;
    labelled synthetic when ``data_root`` is. Returns the paths written."""
    from pathlib import Path
    data_note = " (synthetic data)" if is_synthetic(data_root) else ""
    paths = []
    Path(folder).mkdir(parents=True, exist_ok=True)
    for c, r in results.items():
        curves = {("uncalibrated" if label == "raw" else f"calibrated (scale {v['scale']:.2f})"): v["reliability"]
                  for label, v in r["uncertainty"]["calibration"].items()}
        path = Path(folder) / f"uncertainty_{r['domain']}.png"
        save_reliability_plot(path, f"{r['domain']} ({c}) test split, model {model}{data_note}", curves)
        paths.append(str(path))
    return paths


def _cell(v, spec=".4f"):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def format_tables(rows) -> str:
    """Text tables of ``rows`` = [(name, UncertaintyEvaluator.result())]: sparsification and
    Spearman, then NLL and coverage for each calibration label."""
    w = max([len(n) for n, _ in rows] + [6])
    lines = [f"{'domain':<{w}} {'pixels':>9} {'AUSE rmse':>10} {'AURG rmse':>10} {'ratio':>6} "
             f"{'AUSE absrel':>11} {'AURG absrel':>11} {'spearman':>8}"]
    lines.append("-" * len(lines[0]))
    for name, r in rows:
        s, a = r["sparsification"]["rmse"], r["sparsification"]["abs_rel"]
        lines.append(f"{name:<{w}} {r['pixels']:>9d} {_cell(s['ause']):>10} {_cell(s['aurg']):>10} "
                     f"{_cell(s['ratio'], '.3f'):>6} {_cell(a['ause']):>11} {_cell(a['aurg']):>11} "
                     f"{_cell(r['spearman'], '.3f'):>8}")
    lines += ["(ratio = AUSE / AUSE of random removal: 0 = oracle, 1 = random)", ""]
    head = f"{'domain':<{w}} {'calibration':<11} {'scale':>7} {'NLL':>8} " + " ".join(
        f"{'cov ' + str(round(100 * lv)):>7}" for lv in LEVELS)
    lines += [head, "-" * len(head)]
    for name, r in rows:
        for label, c in r["calibration"].items():
            lines.append(f"{name:<{w}} {label:<11} {c['scale']:>7.3f} {_cell(c['nll'], '.3f'):>8} " + " ".join(
                f"{c['coverage'][str(round(100 * lv))]:>7.3f}" for lv in LEVELS))
    return "\n".join(lines)


def format_stage_table(names, labels, matrix, title: str, spec=".3f") -> str:
    """Rows = domains, columns = stages (``matrix[s][d]``, None/absent where not learned yet)."""
    dw = max([len(n) for n in names] + [6])
    cw = max([9] + [len(f"after {s}") for s in labels])
    lines = [title, f"{'domain':<{dw}} " + " ".join(f"{'after ' + s:>{cw}}" for s in labels)]
    lines.append("-" * len(lines[1]))
    for d, name in enumerate(names):
        cells = [matrix[s][d] if d < len(matrix[s]) else None for s in range(len(labels))]
        lines.append(f"{name:<{dw}} " + " ".join(f"{_cell(v, spec):>{cw}}" for v in cells))
    return "\n".join(lines)
