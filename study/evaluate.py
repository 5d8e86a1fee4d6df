"""Numbers from checkpoints: test errors (domain prior and automatic selection) through the shared
evaluation (``evaluation.evaluate.evaluate_domains`` on a float32 ``DepthPredictor``), the selection
benchmark (``evaluation.selection.selection_benchmark``), and the constant-depth baseline of the fit
table. Each result is cached as JSON under ``<runs>/eval`` and recomputed only when the settings or
the checkpoint file change.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch.utils.data import Subset

from loaders import split_validation
from base.domains import get_domain
from evaluation.evaluate import DomainEvaluator, EvalOptions, evaluate_domains, load_test_splits
from evaluation.selection import SelectionOptions, selection_benchmark
from models.checkpoint import checkpoint_meta
from inference.predictor import RuntimeOptions, build_predictor
from loaders import get_dataset, get_loader

from base.safeio import read_json, read_jsonl, write_json

EVAL_BATCH = 16
FLOAT32 = RuntimeOptions(fast=False)  # the study's numbers come from the network itself, in float32


def cache_path(s, ckpt: Path, kind: str = "test") -> Path:
    rel = os.path.relpath(ckpt, s.runs_dir).replace(os.sep, "__").replace(".pth.tar", "")
    return s.runs_dir / "eval" / f"{rel}.{kind}.json"


def cached(s, ckpt: Path, settings: dict, kind: str = "test"):
    """The cached result of ``ckpt`` if it is current (same settings, same checkpoint file)."""
    out = read_json(cache_path(s, ckpt, kind))
    if out and out.get("settings") == settings and ckpt.is_file() and \
            out.get("checkpoint_mtime_ns") == ckpt.stat().st_mtime_ns:
        return out
    return None


def checkpoint_domains(net) -> tuple[str, bool]:
    """(the domains a checkpoint learned, in order; whether one head serves them all)."""
    meta = checkpoint_meta(net)
    if meta.shared_head or not meta.letters:
        return "".join(meta.trained_letters or ""), True
    return "".join(meta.letters), False


@torch.no_grad()
def study_results(ckpt: Path, s) -> dict:
    """Test errors of every learned domain with the domain prior and, for multi-head models with
    prototypes, with the checkpoint's own head selection (its default selector). A single-head
    model (``shared_head``) answers every domain with head 0."""
    settings = s.evaluation()
    hit = cached(s, ckpt, settings)
    if hit:
        return hit
    t0 = time.time()
    predictor = build_predictor(ckpt, FLOAT32)
    letters, shared = checkpoint_domains(predictor.net)
    select = not shared and predictor.num_domains > 1 and bool(predictor.prototypes)
    options = EvalOptions(data_root=str(s.data_root), scale=s.scale, max_images=s.eval_images,
                          batch_size=EVAL_BATCH, workers=0, quiet=True).resolved()
    runs, _ = evaluate_domains(predictor, load_test_splits(letters, options, s.scale), options, "cpu",
                               {c: 0 if shared else letters.index(c) for c in letters}, selection=select)
    results = {c: {"prior": r["prior"], "selected": r["selected"], "head": r["head"],
                   "chosen": dict(zip(letters, r["chosen"])) if r["chosen"] else None}
               for c, r in runs.items()}
    out = {"checkpoint": str(ckpt), "checkpoint_mtime_ns": ckpt.stat().st_mtime_ns, "settings": settings,
           "letters": letters, "shared_head": shared, "selector": predictor.selector if select else None,
           "strategy": checkpoint_meta(predictor).strategy, "seconds": round(time.time() - t0, 2),
           "results": results}
    write_json(cache_path(s, ckpt), out)
    return out


def study_selection(ckpt: Path, s) -> dict:
    """Every selector under every condition (test crop, full frame, flip, brighter, darker, raw
    files) on the test images, prototypes from the data root's replay rows, float32: cached per
    checkpoint."""
    settings = {"selection_images": s.selection_images, "scale": s.scale, "precision": "fp32"}
    hit = cached(s, ckpt, settings, "selection")
    if hit:
        return hit
    options = EvalOptions(data_root=str(s.data_root), scale=s.scale, max_images=s.selection_images or None,
                          workers=0, quiet=True)
    raw = selection_benchmark(ckpt, options, SelectionOptions(replay_root=str(s.data_root)), "cpu", FLOAT32)
    out = {"checkpoint": str(ckpt), "checkpoint_mtime_ns": ckpt.stat().st_mtime_ns, "settings": settings,
           "selectors": raw["selectors"], "conditions": raw["conditions"], "counts": raw["counts"],
           "test_domains": raw["test_domains"]}
    write_json(cache_path(s, ckpt, "selection"), out)
    return out


def _validation_rows(letter: str, s):
    """(validation rows, training rows outside them) of a domain: the engine's own split."""
    train = get_dataset(letter, "train", s.data_root, train=False, scale=s.scale)
    replay = get_dataset(letter, "replay", s.data_root, train=False, scale=s.scale)
    train_idx, val_idx = split_validation(train, {r.image for r in replay.rows}, s.val_images, 0)
    return Subset(train, val_idx), Subset(train, train_idx)


@torch.no_grad()
def constant_baselines(s, letters: str) -> dict:
    """Validation errors of predicting one constant depth everywhere: the mean valid depth of (at most
    100 of) the domain's training rows outside validation, which minimises a constant's squared
    error. The "learned nothing" reference of the fit table."""
    path = s.runs_dir / "eval" / "constant_baseline.json"
    key = {"data_root": str(s.data_root), "scale": s.scale, "val_images": s.val_images, "letters": letters}
    hit = read_json(path)
    if hit and hit.get("key") == key:
        return hit["results"]
    results = {}
    for c in letters:
        spec = get_domain(c)
        val, train = _validation_rows(c, s)
        if len(val) == 0:
            continue
        total, count = 0.0, 0
        for i in range(min(100, len(train))):
            d = train[i]["depth"]
            valid = (d > spec.min_depth) & (d < spec.max_depth)
            total += float(d[valid].sum())
            count += int(valid.sum())
        const = total / max(count, 1)
        ev = DomainEvaluator(spec, crop="default", cap=True, aggregate="image")
        for batch in get_loader(val, batch_size=EVAL_BATCH, workers=0):
            ev.add_batch(torch.full_like(batch["depth"], const), batch["depth"], batch.get("window"))
        r = ev.result()
        results[c] = {"constant_m": const, "abs_rel": r["abs_rel"], "rmse": r["rmse"],
                      "delta1": r["delta1"], "count": r["count"]}
    write_json(path, {"key": key, "results": results})
    return results


def validation_by_epoch(ckpt: Path) -> list[dict]:
    """[{"epoch", "global_step", "val": {letter: metrics}}] of a stage's run folder (the engine's log)."""
    return [r for r in read_jsonl(ckpt.with_suffix("").with_suffix("") / "log.jsonl") if r.get("val")]
