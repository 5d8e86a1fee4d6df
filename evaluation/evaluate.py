"""Evaluation shared by training-time validation, test.py, test_inference.py, quickstart and the study.

One place decides how a prediction meets the ground truth: the network's half-resolution depth is
upsampled bilinearly (align_corners=True) to the ground-truth size, then optional caps and crops are
applied (metrics.prepare_pair) and errors are aggregated per image or per pixel.

It also owns a checkpoint's evaluation through the product's inference path: a domain's test split
(:func:`test_dataset`), one split through ``DepthPredictor`` (:func:`evaluate_split`), every learned
domain of a checkpoint (:func:`evaluate_checkpoint`), the stage files of a learning order
(:func:`stage_paths`), the lifelong maths (:func:`lifelong_summary`: forgetting, BWT), their text
tables (JSON files: ``base.safeio.write_json``). The data options and scoring rules of a run are
one :class:`EvalOptions`; a user's bad setting or data is an ``InputError``.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Subset
from tqdm import tqdm

from base.domains import DEFAULT_DATA_ROOT, get_domain, run_name
from base.errors import InputError
from base.protocol import EVALUATION as PROTOCOL_EVALUATION
from base.protocol import resolve as resolve_protocol
from inference.predictor import DepthPredictor, build_predictor, predictor_settings
from losses import upsample_to
from metrics import HIGHER_IS_BETTER, ErrorAggregator, prepare_pair
from models.checkpoint import check_checkpoint_path, checkpoint_letters, checkpoint_meta, default_scale
from models.fast import autocast_context
from base.uncertainty import calibration_scales
from evaluation.uncertainty import UncertaintyEvaluator


CROP_CHOICES = ("default", "none", "eigen", "garg")


FULL_FRAME_CHOICES = ("none", "all", "kitti")


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class EvalOptions:
    """A checkpoint evaluation's data options and scoring rules. The rules left at None are the
    protocol's (``base/protocol.py``; :meth:`resolved` fills them, explicit values win)."""
    data_root: str = DEFAULT_DATA_ROOT
    scale: float | None = None  # None: the checkpoint's training scale
    max_images: int | None = None  # None: every test image
    full_frame: str | None = field(default=None, metadata=_help(
        "evaluate on whole test frames instead of the network-input crop (KITTI at the files' own "
        "pixel scale, the one its head learned, whatever --scale; NYU and ScanNet resized by --scale): all (the value "
        "when given alone) or kitti (KITTI only, as the authors' test loaders; NYU and ScanNet keep "
        "their centre crops); default none (authors protocol: kitti); use --batch-size 1 if frame "
        "sizes differ"))
    scannet_resize: str | None = field(default=None, metadata=_help(
        "ScanNet colour: twice = to the depth size, then to the input recipe's size (ours); once = "
        "straight to the recipe's size (the authors'); default twice (authors protocol: once)"))
    batch_size: int = 8
    workers: int | None = None  # None: 2 on CUDA, 0 on a CPU
    crop: str | None = field(default=None, metadata=_help(
        "default = the domain's convention (Eigen for NYU, Garg for KITTI, none for ScanNet); "
        "none/eigen/garg force one for every domain (authors protocol: none)"))
    cap: bool | None = field(default=None, metadata=_help(
        "cap ground truth and prediction to the domain's depth range (NYU/ScanNet 1e-3..10 m, KITTI "
        "1e-3..80 m); default on (authors protocol: off)"))
    aggregate: str | None = field(default=None, metadata=_help(
        "image: mean of per-image errors (the field's standard); pixel: every valid pixel of the set "
        "weighted equally (the authors' way); default image (authors protocol: pixel)"))
    rmse: str | None = field(default=None, metadata=_help(
        "with --aggregate pixel: pooled = sqrt of the mean squared error of all pixels; weighted = "
        "each image's RMSE weighted by its valid pixels (the authors'); default pooled (authors "
        "protocol: weighted)"))
    pred_clamp: bool | None = field(default=None, metadata=_help(
        "clamp predictions to >= 1e-6 m before every metric; --no-pred-clamp as the authors (a "
        "negative prediction then passes the delta tests and makes the log metrics NaN); default on "
        "(authors protocol: off)"))
    delta: str | None = field(default=None, metadata=_help(
        "delta test max(p/g, g/p) < 1.25^k (lt) or <= (le, the authors'); default lt (authors "
        "protocol: le)"))
    protocol: str = "ours"
    quiet: bool = False  # no progress bars

    def resolved(self, protocol: str | None = None) -> "EvalOptions":
        """A copy with every rule left at None set to ``protocol``'s value (default: its own
        protocol), its sizes checked (InputError)."""
        out = dataclasses.replace(self)
        resolve_protocol(out, [k for k in PROTOCOL_EVALUATION if k != "exact"], protocol or self.protocol)
        if out.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, got {out.batch_size}")
        if out.max_images is not None and out.max_images < 1:
            raise InputError(f"--max-images must be at least 1, got {out.max_images}")
        if out.scale is not None and not out.scale > 0:
            raise InputError(f"--scale must be positive, got {out.scale}")
        return out

    def rules(self) -> dict:
        """The scoring rules (DomainEvaluator's keywords), as the results' ``settings``."""
        return {"crop": self.crop, "cap": bool(self.cap), "aggregate": self.aggregate, "rmse": self.rmse,
                "pred_clamp": bool(self.pred_clamp), "delta": self.delta}

    def worker_count(self, device) -> int:
        if self.workers is not None:
            return max(0, self.workers)
        return 2 if torch.device(device).type == "cuda" else 0

    def scale_of(self, meta: dict) -> float:
        """The input scale for a checkpoint: this one's, else the checkpoint's training scale."""
        return self.scale if self.scale is not None else default_scale(meta)


def resolve_cap(spec, cap: bool):
    """(min_depth, max_depth) for a domain when capping is on, else (None, None)."""
    return (spec.min_depth, spec.max_depth) if cap else (None, None)


def resolve_crop(spec, crop: str) -> str:
    """'default' means the domain's own convention (Eigen for NYU, Garg for KITTI, none otherwise)."""
    return spec.eval_crop if crop == "default" else crop


class DomainEvaluator:
    """Accumulates errors of one domain's predictions against its ground truth."""

    def __init__(self, spec, crop="none", cap=False, aggregate="image", rmse="pooled",
                 pred_clamp=True, delta="lt"):
        """``rmse``, ``pred_clamp``, ``delta`` ("lt" or "le"): see metrics.ErrorAggregator; the
        authors' evaluation is aggregate="pixel", rmse="weighted", pred_clamp=False, delta="le"."""
        if delta not in ("lt", "le"):
            raise ValueError(f"delta must be 'lt' or 'le', got {delta!r}")
        self.spec = spec
        self.crop = resolve_crop(spec, crop)
        self.min_depth, self.max_depth = resolve_cap(spec, cap)
        self.errors = ErrorAggregator(mode=aggregate, skip_empty=True,  # counted in "skipped"
                                      rmse=rmse, clamp=pred_clamp, delta_le=delta == "le")

    def add_batch(self, depth: torch.Tensor, gt: torch.Tensor, windows=None) -> None:
        """``windows``: the batch's ``"window"`` entry (B, 4) -- where each ground-truth crop sits in
        its full frame, so that Eigen/Garg crops land where they are defined; None = full frames."""
        depth = upsample_to(depth.float(), gt.shape[-2:]).cpu().numpy()
        gt = gt.float().cpu().numpy()
        windows = [None] * len(gt) if windows is None else [tuple(w) for w in torch.as_tensor(windows).tolist()]
        for pred_img, gt_img, window in zip(depth[:, 0], gt[:, 0], windows):
            pred_img, gt_img = prepare_pair(pred_img, gt_img, self.min_depth, self.max_depth, self.crop,
                                            window)
            self.errors.add(pred_img, gt_img)

    def result(self) -> dict:
        return self.errors.result()


@torch.no_grad()
def evaluate_domain(net, loader, head: int, spec, device="cpu", crop="none", cap=False,
                    aggregate="image", amp_dtype=None, progress=None) -> dict:
    """Errors of head ``head`` on every batch of ``loader`` (items with 'image' and 'depth')."""
    device = torch.device(device)
    was_training = net.training
    net.eval()
    evaluator = DomainEvaluator(spec, crop=crop, cap=cap, aggregate=aggregate)
    for batch in loader:
        with autocast_context(device, amp_dtype):
            depth, _ = net(batch["image"].to(device), domain=head, with_uncertainty=False)
        evaluator.add_batch(depth, batch["depth"], batch.get("window"))
        if progress is not None:
            progress.update(batch["image"].shape[0])
    net.train(was_training)
    return evaluator.result()


# ----------------------------------------------------------------------------------------------
# A checkpoint through the product's inference path (test.py, test_inference.py, quickstart)
# ----------------------------------------------------------------------------------------------
def full_frame_for(letter, full_frame) -> bool:
    """Whether domain ``letter`` is evaluated on whole frames: --full-frame all / kitti / none."""
    if full_frame in (None, False, "none"):
        return False
    if full_frame == "kitti":
        return get_domain(letter).transform == "kitti"
    return True


def full_frame_scale(letter: str, scale: float) -> float:
    """The --scale a whole test frame of domain ``letter`` is read at, for a network trained at
    ``scale``: the pixel scale its head learned. The KITTI recipe crops its training windows from
    the files at their native pixel scale (loaders.JointTransform: no resize), so its whole frames
    stay at 1.0 whatever ``scale``; the resizing recipes (NYU, ScanNet) keep ``scale``. One rule
    for test.py --full-frame and the selection benchmark (evaluation/selection.py)."""
    return 1.0 if get_domain(letter).transform == "kitti" else scale


def test_dataset(letter, data_root, scale, max_images=None, full_frame=False, scannet_resize="twice"):
    """The test split of a domain (deterministic test transform), optionally its first images.
    ``full_frame``: a bool, or a --full-frame value (none / all / kitti); whole frames are read at
    the pixel scale the head learned (:func:`full_frame_scale`)."""
    from loaders import DatasetFormatError, get_dataset
    full_frame = full_frame_for(letter, full_frame)
    if full_frame:
        scale = full_frame_scale(letter, scale)
    try:
        ds = get_dataset(letter, "test", str(data_root), train=False, scale=scale,
                         **({"full_frame": True} if full_frame else {}),
                         **({"scannet_resize": scannet_resize} if scannet_resize != "twice" else {}))
    except (FileNotFoundError, DatasetFormatError, ValueError) as e:
        raise InputError(str(e)) from None
    if len(ds) == 0:
        raise InputError(f"the test index of domain {letter} under {str(data_root)!r} lists no image")
    if max_images is not None and max_images < len(ds):
        ds = Subset(ds, range(max(1, max_images)))
    return ds


def make_loader(ds, batch_size, workers, device):
    from loaders import get_loader
    return get_loader(ds, batch_size=batch_size, shuffle=False, workers=workers, device=device.type)


def evaluate_split(predictor, loader, head: int, spec, crop="default", cap=True, aggregate="image",
                   selection=False, bar=None, rmse="pooled", pred_clamp=True, delta="lt",
                   uncertainty_scales=None) -> dict:
    """Errors of one domain's test images.

    With the domain prior every image goes through head ``head``. With ``selection`` each image
    also goes to the head chosen by the nearest prototype (DepthPredictor.predict(domain=None)),
    scored separately; when every image of a batch chose ``head`` the prior's prediction is the
    same and is reused.

    With ``uncertainty_scales`` ({label: calibration scale}) the prior's predicted uncertainty is
    measured too (evaluation.uncertainty, on the same pixels as the depth metrics).

    Returns ``{"prior": metrics, "selected": metrics or None, "chosen": [count per head] or None,
    "uncertainty": UncertaintyEvaluator.result() or None}``.
    """
    rules = {"crop": crop, "cap": cap, "aggregate": aggregate, "rmse": rmse, "pred_clamp": pred_clamp,
             "delta": delta}
    prior = DomainEvaluator(spec, **rules)
    selected = DomainEvaluator(spec, **rules) if selection else None
    chosen_counts = [0] * predictor.num_domains if selection else None
    unc = None if uncertainty_scales is None else UncertaintyEvaluator(
        prior.min_depth, prior.max_depth, prior.crop, scales=uncertainty_scales)
    for batch in loader:
        images, gt = batch["image"], batch["depth"]
        try:
            if selection:
                out = predictor.predict(images, domain=None, with_uncertainty=unc is not None)
                chosen = out["domain"].cpu()
                for c in chosen.tolist():
                    chosen_counts[c] += 1
                selected.add_batch(out["depth"], gt, batch.get("window"))
                if not bool((chosen == head).all()):
                    out = predictor.predict(images, domain=head, with_uncertainty=unc is not None)
            else:
                out = predictor.predict(images, domain=head, with_uncertainty=unc is not None)
        except ValueError as e:  # e.g. no prototypes
            raise InputError(str(e)) from None
        prior.add_batch(out["depth"], gt, batch.get("window"))
        if unc is not None:
            unc.add_batch(out["depth"], out["uncertainty"], gt, batch.get("window"))
        if bar is not None:
            bar.update(images.shape[0])
    try:
        return {"prior": prior.result(), "selected": selected.result() if selection else None,
                "chosen": chosen_counts, "uncertainty": None if unc is None else unc.result()}
    except ValueError as e:
        raise InputError(f"domain {spec.letter}: {e}") from None


def describe_predictor(options: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items())


def describe_settings(settings: dict, scale: float) -> str:
    extra = "".join([f", {settings['rmse']} RMSE" if settings.get("rmse", "pooled") != "pooled" else "",
                     "" if settings.get("pred_clamp", True) else ", predictions unclamped",
                     ", delta <=" if settings.get("delta") == "le" else ""])
    return (f"crop {settings['crop']}, {'capped' if settings['cap'] else 'no cap'}, "
            f"{settings['aggregate']}-averaged{extra}, scale {scale:g}")


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def lifelong_summary(matrix, metric: str | None = None, higher_is_better: bool | None = None) -> dict:
    """Final average, forgetting and backward transfer of a lifelong run.

    ``matrix[s][d]`` is the metric of domain ``d`` (learning order) measured after stage ``s``
    (the model that has learned domains ``0..s``); entries with ``d > s`` are not used (may be None
    or absent). Whether higher is better comes from ``metric`` (``delta*`` are accuracies, all other
    :data:`metrics.METRIC_NAMES` are errors) or from ``higher_is_better`` (default False).

    Signs are chosen so that **positive forgetting = the domain got worse** and **positive BWT = the
    old domains improved**, for errors and accuracies alike:

    * forgetting of old domain d (d < T-1), errors: ``final - min(earlier)``; accuracies
      (deltas, sign flipped): ``max(earlier) - final``; "earlier" = stages d .. T-2.
    * BWT (GEM's backward transfer, sign adjusted), errors: mean over old domains of
      ``(value just after learning d) - final``; accuracies: ``final - (value just after learning d)``.

    Returns a dict: ``final`` (per domain), ``final_average``, ``stage_average`` (mean over the
    domains learned at each stage), ``just_learned`` (the diagonal), ``forgetting`` (per old
    domain), ``average_forgetting``, ``bwt_per_domain``, ``bwt`` (None when there is no old domain),
    ``higher_is_better``.
    """
    if higher_is_better is None:
        higher_is_better = metric in HIGHER_IS_BETTER if metric is not None else False
    rows = [list(r) for r in matrix]
    T = len(rows)
    if T == 0:
        raise ValueError("lifelong_summary: empty matrix")
    for s, row in enumerate(rows):
        if len(row) < s + 1 or any(row[d] is None for d in range(s + 1)):
            raise ValueError(f"lifelong_summary: stage {s} must have values for domains 0..{s}, got {row}")
    value = [[float(rows[s][d]) for d in range(s + 1)] for s in range(T)]
    final = value[T - 1]
    just = [value[d][d] for d in range(T)]
    forgetting, bwt = [], []
    for d in range(T - 1):
        earlier = [value[s][d] for s in range(d, T - 1)]
        if higher_is_better:
            forgetting.append(max(earlier) - final[d])
            bwt.append(final[d] - just[d])
        else:
            forgetting.append(final[d] - min(earlier))
            bwt.append(just[d] - final[d])
    return {
        "metric": metric,
        "higher_is_better": bool(higher_is_better),
        "final": final,
        "final_average": _mean(final),
        "stage_average": [_mean(v) for v in value],
        "just_learned": just,
        "forgetting": forgetting,
        "average_forgetting": _mean(forgetting),
        "bwt_per_domain": bwt,
        "bwt": _mean(bwt),
    }


def format_matrix(names, stage_labels, matrix, summary, metric: str) -> str:
    """Text table: rows = domains, columns = stages, then forgetting; averages and BWT below."""
    better = "higher" if summary["higher_is_better"] else "lower"
    dw = max([len(n) for n in names] + [len("average"), len(metric) + 2])
    cw = max([9] + [len(f"after {s}") for s in stage_labels])
    head = f"{metric + ' (' + better + ' is better)':<{dw + 20}}"
    lines = [head,
             f"{'domain':<{dw}} " + " ".join(f"{'after ' + s:>{cw}}" for s in stage_labels)
             + f" {'forgetting':>{cw + 1}}"]
    lines.append("-" * len(lines[1]))
    T = len(stage_labels)
    for d, name in enumerate(names):
        cells = []
        for s in range(T):
            v = matrix[s][d] if d <= s and d < len(matrix[s]) else None
            cells.append(f"{'-':>{cw}}" if v is None else f"{v:>{cw}.4f}")
        f = summary["forgetting"][d] if d < len(summary["forgetting"]) else None
        cells.append(f"{'-':>{cw + 1}}" if f is None else f"{f:>+{cw + 1}.4f}")
        lines.append(f"{name:<{dw}} " + " ".join(cells))
    lines.append(f"{'average':<{dw}} " + " ".join(f"{v:>{cw}.4f}" for v in summary["stage_average"]))
    fa = summary["average_forgetting"]
    bwt = summary["bwt"]
    lines.append(f"final average {summary['final_average']:.4f}; average forgetting "
                 f"{'-' if fa is None else format(fa, '+.4f')} (positive = forgot); BWT "
                 f"{'-' if bwt is None else format(bwt, '+.4f')} (positive = old domains improved)")
    return "\n".join(lines)


def check_learned(subset: str, letters: str, path) -> None:
    """Every domain of ``subset`` (--domains) is one the checkpoint learned."""
    missing = [c for c in subset if c not in letters]
    if missing:
        raise InputError(f"--domains: {', '.join(missing)} not learned by {str(path)!r} "
                         f"(its domains, in order: {letters})")


def load_test_splits(subset: str, options: EvalOptions, scale) -> dict:
    """{letter: test split} of every domain of ``subset``, with the data options of ``options``."""
    return {c: test_dataset(c, options.data_root, scale, options.max_images, options.full_frame,
                            options.scannet_resize)
            for c in subset}


def uncertainty_scales_of(meta: dict, heads: int) -> list[dict]:
    """Per head, the calibration scales to measure: {"raw": 1} and, where the checkpoint stores a
    fitted one, {"calibrated": s}."""
    fitted = checkpoint_meta(meta).calibration.get("fitted") or [False] * heads
    scales = calibration_scales(meta, heads)
    return [dict({"raw": 1.0}, **({"calibrated": s} if ok else {})) for s, ok in zip(scales, fitted)]


def evaluate_domains(predictor, datasets: dict, options: EvalOptions, device, heads: dict,
                     selection: bool = False, desc: str = "", uncertainty: bool = False) -> tuple[dict, float]:
    """Each domain's test split (``datasets``, see :func:`load_test_splits`) through its head
    (``heads[letter]``), scored by ``options``' rules; (``{letter: evaluate_split's dict + "head"}``,
    seconds). ``selection``: also through the heads chosen by the nearest prototype.
    ``uncertainty``: also measure each head's uncertainty, uncalibrated and with the checkpoint's
    calibration."""
    workers = options.worker_count(device)
    rules = options.rules()
    bar = tqdm(total=sum(len(ds) for ds in datasets.values()), desc=desc, unit="img",
               disable=options.quiet, dynamic_ncols=True, leave=False)
    out = {}
    t0 = time.perf_counter()
    scales = uncertainty_scales_of(predictor.meta, predictor.num_domains) if uncertainty else None
    for c in datasets:
        head = heads[c]
        loader = make_loader(datasets[c], options.batch_size, workers, torch.device(device))
        r = evaluate_split(predictor, loader, head, get_domain(c), selection=selection, bar=bar,
                           uncertainty_scales=scales[head] if scales else None, **rules)
        out[c] = dict(r, head=head)
    bar.close()
    return out, time.perf_counter() - t0


def open_predictor(source, runtime=None, device="cpu", order=None, **keywords) -> tuple[DepthPredictor, str]:
    """(a DepthPredictor, the checkpoint path it came from): ``source`` is one already (loaded once
    by the caller), or a checkpoint path loaded here with ``runtime`` (inference.predictor)."""
    if isinstance(source, DepthPredictor):
        return source, str(checkpoint_meta(source).path)
    return build_predictor(check_checkpoint_path(source), runtime, device, order=order, **keywords), str(source)


def evaluate_checkpoint(source, options: EvalOptions, device, runtime=None, order=None, domains=None,
                        bar_desc="", uncertainty=False) -> dict:
    """Evaluate one checkpoint with the domain prior: ``source`` a loaded DepthPredictor, or a
    checkpoint path (loaded once, with ``runtime``: RuntimeOptions; ``order``: an authors' file's
    heads); ``domains``: the letters to evaluate (default: all learned). Returns the JSON-ready result
    dict (``uncertainty``: each result also holds the uncertainty measures, see evaluate_split)."""
    options = options.resolved()
    predictor, path = open_predictor(source, runtime, device, order)
    meta = checkpoint_meta(predictor)
    letters = checkpoint_letters(meta, path)
    subset = letters if domains is None else domains
    check_learned(subset, letters, path)
    scale = options.scale_of(meta)
    runs, seconds = evaluate_domains(predictor, load_test_splits(subset, options, scale), options, device,
                                     {c: letters.index(c) for c in subset},
                                     desc=bar_desc or f"test {Path(path).name}", uncertainty=uncertainty)
    results = {c: dict(r["prior"], domain=get_domain(c).name, letter=c, head=r["head"],
                       **({"uncertainty": r["uncertainty"]} if uncertainty else {}))
               for c, r in runs.items()}
    return {
        "checkpoint": path, "letters": letters, "domains": [get_domain(c).name for c in letters],
        "format": meta.format, "strategy": meta.strategy, "scale": scale,
        "device": str(device), "settings": options.rules(), "full_frame": options.full_frame,
        "protocol": options.protocol, "scannet_resize": options.scannet_resize,
        "predictor": predictor_settings(predictor),
        "max_images": options.max_images, "seconds": seconds, "results": results,
        **({"uncertainty_calibration": meta.uncertainty_calibration} if uncertainty else {}),
    }


def stage_paths(order: str, strategy: str, runs_dir) -> list[Path]:
    """The checkpoint of every stage of ``order`` (domains.run_name's names)."""
    return [Path(runs_dir) / f"{run_name(order[:k], strategy)}.pth.tar" for k in range(1, len(order) + 1)]
