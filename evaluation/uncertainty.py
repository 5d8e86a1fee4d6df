"""A split's uncertainty measures (:class:`UncertaintyEvaluator`), the per-head calibration fit
(:func:`fit_calibration`), reliability plots and the text tables. What a log-variance means, and each
formula, is :mod:`base.uncertainty`.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from base.safeio import atomic_write
from base.uncertainty import (CALIBRATION_GRID, LEVELS, METHODS, RELIABILITY_LEVELS, SPARSIFICATION_STEPS,
                              ause_aurg, coverage, fit_conformal, fit_depth_bins, fit_quantiles, fit_scale,
                              gaussian_nll, half_width, sparsification, spearman, spread, valid_pixels, z_value)
from losses import upsample_to
from metrics import prepare_pair

__all__ = ["UncertaintyEvaluator", "fit_calibration", "save_reliability_plot", "reliability_plots",
           "format_tables", "format_stage_table", "DEFAULT_METHOD", "MEASURED_LEVELS", "frame_pixels",
           "fit_method", "frame_coverage", "loo_coverage", "fit_head_calibration"]


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
            trapezoid = ause_aurg(mean, rule="trapezoid")  # Poggi et al.'s rule, at this K
            sparse[metric] = dict(ause_aurg(mean), aurg_trapezoid=trapezoid["aurg"], steps=self.steps,
                                  curves={k: v.tolist() for k, v in mean.items()})
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


@torch.no_grad()
def fit_calibration(forward, heads: list, note: str = "", progress=None) -> dict:
    """One scale per head, fitted (:func:`fit_scale`) on validation rows.

    ``forward(images, head) -> (depth, logvar)``; ``heads``: per head, ``{"domain": name,
    "loaders": [validation loaders, or none], "rules": (min_depth, max_depth, crop)}``. A head
    without validation rows keeps scale 1 (``fitted`` False). ``progress``: a tqdm bar advanced by
    the images. Returns the checkpoint record."""
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
                if progress is not None:  # a tqdm bar, by images
                    progress.update(len(maps[2]))
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


# ---------------------------------------------------------------------------------------------------
# Calibration on the path users run: whole frames through the frame pipeline
# ---------------------------------------------------------------------------------------------------
#: The method stored by default: per-depth-bin quantiles of the normalised residual, the smallest mean
#: coverage miss at 50 and 90 % summed over the quickstart model's whole test frames of two seeds
#: (bench/bench_uncertainty.py; docs/BENCHMARKS.md, "Intervals and out of domain on whole frames").
DEFAULT_METHOD = "depth_bins"
#: Coverages at which a calibration's measured coverage is stored (what predict.py can quote).
MEASURED_LEVELS = tuple(sorted(set(LEVELS) | set(RELIABILITY_LEVELS) | {0.99}))


def frame_pixels(depth, logvar, gt, rules) -> dict:
    """ONE whole frame's evaluated pixels as an interval sees them: ``depth`` (as written: at the
    frame's size, clamped to the head's range) and ``logvar`` give the spread (:func:`spread`, the
    frame's own median, scale 1) at the frame's size, as predict.py computes it; both are then
    brought to the ground truth's size, and the pixels kept are those ``rules`` = (min_depth,
    max_depth, crop) keep (metrics.prepare_pair). Returns ``{"a": |d - p| / sigma, "depth": p, "gt": d,
    "sigma": sigma}`` (flat arrays of those pixels)."""
    sigma = spread(depth, logvar)
    gt = np.asarray(gt, dtype=np.float64)
    if tuple(np.shape(depth)) != gt.shape:
        size = gt.shape[-2:]
        depth = upsample_to(torch.from_numpy(np.asarray(depth, np.float32))[None, None], size)[0, 0].numpy()
        sigma = upsample_to(torch.from_numpy(sigma.astype(np.float32))[None, None], size)[0, 0].numpy()
    p, g = prepare_pair(depth, gt, *rules)
    keep = (g > 0) & np.isfinite(p) & (np.asarray(sigma) > 0)
    sigma = np.asarray(sigma, dtype=np.float64)
    return {"a": np.abs(g[keep] - p[keep]) / sigma[keep], "depth": p[keep], "gt": g[keep], "sigma": sigma[keep]}


def fit_method(method: str, images: list) -> dict:
    """One head's calibration by ``method`` (base.uncertainty.METHODS) from ``images`` (a list of
    :func:`frame_pixels` dicts): the dict :func:`base.uncertainty.half_width` takes."""
    a = np.concatenate([im["a"] for im in images]) if images else np.zeros(0)
    if method == "scale":  # err / sigma with sigma = 1: fit_scale sees the normalised residuals
        return {"method": "scale", "scale": fit_scale(a, np.ones_like(a))}
    if method == "quantile":
        return {"method": "quantile", "levels": list(CALIBRATION_GRID), "multipliers": fit_quantiles(a)}
    if method == "conformal":
        return {"method": "conformal", "levels": list(CALIBRATION_GRID),
                "multipliers": fit_conformal([im["a"] for im in images])}
    if method == "depth_bins":
        depth = np.concatenate([im["depth"] for im in images])
        return {"method": "depth_bins", "levels": list(CALIBRATION_GRID), **fit_depth_bins(a, depth)}
    raise ValueError(f"unknown calibration method {method!r}; known: {', '.join(METHODS)}")


def frame_coverage(calibration, images: list, levels=MEASURED_LEVELS) -> dict:
    """{"50": fraction, ...}: the pooled valid pixels of ``images`` inside the central intervals of
    ``calibration`` (None: raw, scale 1)."""
    calibration = 1.0 if calibration is None else calibration
    a = np.concatenate([im["a"] for im in images])
    depth = np.concatenate([im["depth"] for im in images])
    return {f"{round(100 * lv, 6):g}": float(np.mean(a <= half_width(calibration, np.ones_like(a), depth, lv)))
            for lv in levels}


def loo_coverage(method: str, images: list, levels=MEASURED_LEVELS) -> dict | None:
    """Leave-one-image-out coverage of ``method`` on ``images``: each image's pixels against the
    calibration fitted on the others, pooled (an estimate of the coverage on unseen frames from the
    fitting images alone). None with fewer than 2 images."""
    if len(images) < 2:
        return None
    inside = {f"{round(100 * lv, 6):g}": 0 for lv in levels}
    total = 0
    for i, im in enumerate(images):
        cal = fit_method(method, images[:i] + images[i + 1:])
        for key, lv in zip(inside, levels):
            inside[key] += int(np.count_nonzero(im["a"] <= half_width(cal, np.ones_like(im["a"]), im["depth"], lv)))
        total += im["a"].size
    return {k: v / total for k, v in inside.items()} if total else None


def fit_head_calibration(images: list, domain: str, method: str = DEFAULT_METHOD, source: str = "",
                         fitted_at: str = "") -> dict:
    """One head's stored calibration record, fitted on whole frames (``images``: :func:`frame_pixels`
    of each calibration frame): the ``method``'s parameters (what :func:`half_width` reads), where it
    was fitted (``path`` "frames", ``source``, ``fitted_at``), and its coverage measured
    leave-one-image-out on those frames (``measured.validation_loo``), for every method compared
    (``compared``). Raises ValueError without any pixel."""
    images = [im for im in images if im["a"].size]
    if not images:
        raise ValueError(f"no calibration pixel for {domain}")
    record = {"domain": domain, **fit_method(method, images), "path": "frames", "source": source,
              "fitted_at": fitted_at, "images": len(images), "pixels": int(sum(im["a"].size for im in images)),
              "measured": {}, "compared": {}}
    for m in METHODS:
        record["compared"][m] = loo_coverage(m, images, LEVELS)
    loo = loo_coverage(method, images)
    if loo is not None:
        record["measured"]["validation_loo"] = {"on": "held-out validation frames (leave-one-image-out)",
                                                "images": len(images), "coverage": loo}
    record["raw_coverage"] = frame_coverage(None, images, LEVELS)
    return record


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
    steps = rows[0][1]["sparsification"]["rmse"].get("steps") if rows else None
    lines += ["(ratio = AUSE / AUSE of random removal: 0 = oracle, 1 = random; areas: the mean of "
              f"{steps or 'K'} curve entries; Poggi et al.'s trapezoid rule gives the same AUSE and "
              "AURG + AUSE-curve start / 2K: base.uncertainty.ause_aurg)", ""]
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
