"""The uncertainty calibration fitted and measured on the path users run: whole frames, as they lie
on disk, through the frame pipeline (inference/frames.py: the head's camera, resampling, tiles;
the depth clamped to the head's range as predict.py writes it), per head.

Which frames a head is calibrated on is what a lifelong learner still has when it learns that head:

* the head learned in this stage: its domain's **validation rows** (held out of the training rows by
  ``loaders.split_validation``: never trained on, never the test split);
* an older head: **the calibration kept from the stage that learned it** (the checkpoint the stage
  started from stores it). The training rows of an old domain outside its replay buffer are data the
  learner no longer has (issue 36, item 11), so they are never read here.

The formulas are :mod:`base.uncertainty` (one function each); the fits and the leave-one-image-out
coverage :mod:`evaluation.uncertainty`. :func:`calibrate_frames` returns the checkpoint record
(``base.uncertainty.CALIBRATION_KEY``, version 2); :func:`measure_frames` measures a stored
calibration on other frames (the test split) and can store that measurement with it.
"""
from __future__ import annotations

from base.domains import clamp_depth, get_domain
from base.uncertainty import CALIBRATION_KEY, head_calibration
from loaders import split_validation
from evaluation.uncertainty import (DEFAULT_METHOD, MEASURED_LEVELS, fit_head_calibration, fit_method,
                                    frame_coverage, frame_pixels)
from inference.frames import CameraHint, exif_focal_35mm
from loaders import get_dataset, load_rgb

__all__ = ["rules_of", "validation_rows", "test_rows", "frames_pixels", "calibrate_frames", "measure_frames",
           "stage_pipeline"]


def rules_of(letter) -> tuple:
    """(min_depth, max_depth, crop) of a domain's valid pixels: its caps and evaluation crop (the
    test-time conventions, as bench/bench_frames.py scores whole frames)."""
    spec = get_domain(letter)
    return spec.min_depth, spec.max_depth, spec.eval_crop


def _pairs(ds, rows) -> list:
    return [(row.image, ds.read_pair(row)[1]) for row in rows]


def validation_rows(letter, data_root, val_images: int, val_seed: int) -> list:
    """(colour file, ground truth (H,W) metres as on disk) of the domain's validation rows: exactly
    the rows a stage held out of training (``split_validation`` over the training rows outside the
    replay buffer, ``val_images`` drawn with ``val_seed``)."""
    train = get_dataset(letter, "train", str(data_root), train=False)
    replay = get_dataset(letter, "replay", str(data_root), train=False)
    _, val = split_validation(train, {r.image for r in replay.rows}, val_images, val_seed)
    return _pairs(train, [train.rows[i] for i in val])


def test_rows(letter, data_root, n: int | None = None) -> list:
    """(colour file, ground truth) of the first ``n`` (all: None) test rows of a domain."""
    ds = get_dataset(letter, "test", str(data_root), train=False)
    return _pairs(ds, ds.rows[:n] if n else ds.rows)


def frames_pixels(pipeline, rows, head: int, depth_range, rules, progress=None) -> list:
    """:func:`evaluation.uncertainty.frame_pixels` of each frame of ``rows`` through ``pipeline``
    (a FramePipeline) with head ``head`` given, the camera as predict.py assumes it (the file's EXIF
    focal length, else the head's camera), the depth clamped to ``depth_range`` as predict.py writes it."""
    out = []
    for path, gt in rows:
        focal = exif_focal_35mm(path)
        r = pipeline.run(load_rgb(path), head=head, camera=CameraHint(focal_35mm=focal) if focal else None)
        out.append(frame_pixels(clamp_depth(r["depth"], depth_range), r["uncertainty"], gt, rules))
        if progress is not None:
            progress.update(1)
    return out


def stage_pipeline(net, cameras, input_sizes, device="cpu", letters=None):
    """The frame pipeline of a network being trained (its meta may not carry cameras yet), with the
    default frame rule and, given the heads' ``letters``, where their training crops lay (the
    product's pipeline: ``DepthPredictor.frame_pipeline``)."""
    from inference.frames import FramePipeline, head_anchors
    from inference.predictor import DepthPredictor
    anchors = head_anchors(letters) if letters else None
    return FramePipeline(DepthPredictor(net, device=device), cameras, tiles=input_sizes, anchors=anchors)


def calibrate_frames(pipeline, letters: str, data_root, *, val_images: int, val_seed: int, depth_ranges,
                     fit_heads=None, previous: dict | None = None, fitted_at: str = "",
                     method: str = DEFAULT_METHOD, note: str = "", progress=None) -> dict:
    """The checkpoint record (version 2) of every head of ``letters``: heads in ``fit_heads``
    (default: the last, the one this stage learned) fitted by ``method`` on their validation rows
    through ``pipeline``; every other head keeps its calibration from ``previous`` (the record of the
    checkpoint the stage started from), or stays uncalibrated (scale 1) where that has none.
    ``progress``: a tqdm bar advanced by each fitted head's validation rows."""
    heads = len(letters)
    fit_heads = {heads - 1} if fit_heads is None else set(fit_heads)
    prev_heads = ((previous or {}).get("heads") or [])
    records, scales, fitted, validation = [], [], [], []
    for d, letter in enumerate(letters):
        name = get_domain(letter).name
        if d in fit_heads:
            rows = validation_rows(letter, data_root, val_images, val_seed) if val_images > 0 else []
            images = frames_pixels(pipeline, rows, d, depth_ranges[d], rules_of(letter))
            if progress is not None:
                progress.update(len(rows))
            try:
                rec = fit_head_calibration(images, name, method, fitted_at=fitted_at,
                                           source=f"{len(rows)} validation rows of {name} held out of training")
                rec["scale"] = fit_method("scale", [im for im in images if im["a"].size])["scale"] \
                    if method != "scale" else rec["scale"]
            except ValueError as e:
                rec = {"domain": name, "method": "scale", "scale": 1.0, "path": None, "fitted": False,
                       "not_fitted": str(e), "fitted_at": fitted_at}
        elif d < len(prev_heads) and isinstance(prev_heads[d], dict) and prev_heads[d].get("method"):
            rec = dict(prev_heads[d], kept=f"kept from the stage that learned it ({prev_heads[d].get('fitted_at')})")
        else:  # an older record (one scale fitted on crops) or none: kept as it was
            rec = dict(head_calibration({CALIBRATION_KEY: previous} if previous else {}, d,
                                        len((previous or {}).get("scales") or []) or heads)
                       if previous and d < len(previous.get("scales") or []) else
                       {"method": "scale", "scale": 1.0, "path": None, "fitted": False},
                       domain=name, kept="from the checkpoint the stage started from (no frame calibration)")
        ok = rec.get("path") is not None
        records.append(rec)
        scales.append(float(rec.get("scale", 1.0)) if ok else 1.0)
        fitted.append(ok)
        loo = (rec.get("measured") or {}).get("validation_loo") or {}
        validation.append({"domain": name, "images": rec.get("images", 0), "pixels": rec.get("pixels", 0),
                           "scale": scales[-1], "coverage_before": rec.get("raw_coverage"),
                           "coverage_after": loo.get("coverage")})
    return {"family": "gaussian", "version": 2, "path": "frames", "heads": records, "scales": scales,
            "fitted": fitted, "validation": validation,
            "method": f"per head: {method} calibration of the normalised residual |d - p| / sigma on whole frames "
                      f"through the frame pipeline (scales: the one-scale fit, for older readers)",
            "split": "the learned head: its validation rows (held out of training, never the test split); "
                     "older heads: kept from the stage that learned them",
            "note": note}


def measure_frames(pipeline, record: dict, letters: str, data_root, n: int | None = None,
                   store: bool = True, levels=MEASURED_LEVELS) -> dict:
    """Coverage of ``record``'s calibration (and raw) on each head's first ``n`` test frames through
    ``pipeline``: ``{letter: {"raw": {...}, "calibrated": {...}, "images"}}``; with ``store`` the
    calibrated coverage goes into the record's head as ``measured.test`` (what predict.py quotes)."""
    out = {}
    for d, letter in enumerate(letters):
        rows = test_rows(letter, data_root, n)
        spec = get_domain(letter)
        images = [im for im in frames_pixels(pipeline, rows, d, (spec.min_depth, spec.max_depth), rules_of(letter))
                  if im["a"].size]
        if not images:
            continue
        cal = head_calibration({CALIBRATION_KEY: record}, d, len(letters))
        res = {"images": len(images), "raw": frame_coverage(None, images, levels),
               "calibrated": frame_coverage(cal, images, levels)}
        out[letter] = res
        if store and cal.get("path") == "frames" and "heads" in record:
            record["heads"][d].setdefault("measured", {})["test"] = {
                "on": f"test frames of {spec.name}", "images": len(images), "coverage": res["calibrated"]}
    return out


