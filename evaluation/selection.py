"""Evaluation WITHOUT the domain prior: nearest-prototype head selection per test image.

:func:`evaluate_selection` (test_inference.py's evaluation): selection accuracy per domain and the
confusion matrix, the metrics with the selected heads beside those with the domain prior, the
latency of selection + one head; :func:`selection_benchmark` (``--selection-benchmark``, the
study's): every selector under several conditions of every test image. Both take a loaded
network (or a checkpoint path, loaded once): the prototypes computed from replay rows
(``inference.replay``) and the predictor share it. They return the JSON-ready dict the command
prints and writes.
"""
from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

from base.domains import get_domain
from base.errors import InputError
from base.images import denormalize, normalize
from base.protocol import resolve as resolve_protocol
from evaluation.evaluate import EvalOptions, check_learned, evaluate_domains, load_test_splits, test_dataset
from inference.predictor import build_predictor, predictor_settings
from inference.prototypes import DEFAULT_PROTO_IMAGES, DEFAULT_SELECTOR, SELECTORS, prototype_distances
from inference.replay import load_prototypes
from metrics import format_table
from models import load_checkpoint
from models.checkpoint import check_checkpoint_path, checkpoint_letters, checkpoint_meta
from models.fast import prepare_input


@dataclass
class SelectionOptions:
    """How the heads are chosen and timed. ``selector`` None: the protocol's (the authors'
    under --protocol authors), else the default (lda; pooled for a checkpoint that stores no lda
    statistics)."""
    selector: str | None = None
    replay_root: str | None = None  # compute the prototypes from this data root's replay rows
    proto_images: int = field(default=DEFAULT_PROTO_IMAGES, metadata={"help": (
        "replay images per domain for --replay-root prototypes (training uses 200; the authors' "
        "selector always takes up to 500, as theirs)")})
    seed: int = field(default=0, metadata={"help": (
        "seed of the training augmentation of the authors' selector's prototype images")})
    nyu_rotation: str | None = None  # the authors' prototypes' training transform (protocol's)
    latency_runs: int = field(default=30, metadata={"help": (
        "timed single-image calls per test domain (0 = skip the latency measurement)")})
    warmup: int = field(default=5, metadata={"help": "untimed calls before timing, per domain"})
    latency_size: tuple | None = field(default=None, metadata={"help": (
        "HxW to time at (test images resized to it), e.g. 228x304; default: each domain's test "
        "input size")})

    def resolved(self, protocol: str = "ours") -> "SelectionOptions":
        """A copy with the protocol's selector and NYU rotation filled in, its counts checked."""
        out = resolve_protocol(dataclasses.replace(self), ["selector", "nyu_rotation"], protocol)
        if out.latency_runs < 0 or out.warmup < 0:
            raise InputError("--latency-runs and --warmup must be >= 0")
        if out.proto_images < 1:
            raise InputError(f"--proto-images must be at least 1, got {out.proto_images}")
        return out


def open_network(source, order=None):
    """A loaded network (``source`` itself) or the one of checkpoint path ``source``."""
    if isinstance(source, torch.nn.Module):
        return source
    return load_checkpoint(check_checkpoint_path(source), order=order)


def open_run(source, order, evaluation: EvalOptions) -> tuple:
    """(network, its metadata (models.checkpoint.CheckpointMeta), its checkpoint path, its domain
    letters, the input scale) of a run."""
    net = open_network(source, order)
    meta = checkpoint_meta(net)
    path = str(meta.path)
    return net, meta, path, checkpoint_letters(meta, path), evaluation.scale_of(meta)


def checkpoint_prototypes(net, letters, scale, device, evaluation: EvalOptions, selection: SelectionOptions,
                          need_authors=False, need_lda=False) -> tuple:
    """inference.replay.load_prototypes with the settings of a run."""
    return load_prototypes(net, letters, scale, device, data_root=evaluation.data_root,
                           replay_root=selection.replay_root, proto_images=selection.proto_images,
                           batch_size=evaluation.batch_size, workers=evaluation.worker_count(device),
                           seed=selection.seed, need_authors=need_authors, need_lda=need_lda,
                           data_options={"scannet_resize": evaluation.scannet_resize,
                                         "nyu_rotation": selection.nyu_rotation},
                           quiet=evaluation.quiet)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(predictor, images, warmup=5, runs=30, size=None, progress=None) -> dict:
    """Latency of ``predictor.predict(x, domain=None, with_uncertainty=False)`` on single images.

    ``images``: list of normalized (3,H,W) tensors (cycled); ``size`` (H, W) resizes them first
    (bilinear), outside the timed region. Inputs are moved to the device before timing; on CUDA
    the device is synchronised around each call. Returns median/mean/p90 milliseconds and the
    frames per second of the median.
    """
    device = predictor.device
    batch = []
    for img in images:
        x = img[None].float()
        if size is not None and tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        batch.append(x.to(device))
    if not batch:
        raise ValueError("measure_latency: no image")
    times = []
    for i in range(warmup + runs):
        x = batch[i % len(batch)]
        _sync(device)
        t0 = time.perf_counter()
        predictor.predict(x, domain=None, with_uncertainty=False)
        _sync(device)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1000.0)
        if progress is not None:
            progress.update(1)
    times.sort()
    median = statistics.median(times)
    return {"median_ms": median, "mean_ms": statistics.fmean(times),
            "p90_ms": times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))],
            "min_ms": times[0], "fps": 1000.0 / median if median > 0 else None,
            "runs": runs, "warmup": warmup, "size": list(batch[0].shape[-2:]), "device": str(device),
            "threads": torch.get_num_threads()}


def format_confusion(test_letters, head_letters, confusion) -> str:
    """Rows: true test domain; columns: chosen head; last column: selection accuracy."""
    w = max(6, max(len(get_domain(c).name) + 4 for c in set(test_letters) | set(head_letters)))
    corner = "true \\ chosen"
    head = f"{corner:<{w + 2}}" + "".join(f"{get_domain(c).name + ' (' + c + ')':>{w + 2}}"
                                                     for c in head_letters) + f"{'accuracy':>10}"
    lines = [head, "-" * len(head)]
    for c in test_letters:
        row = confusion[c]
        n = sum(row)
        acc = row[head_letters.index(c)] / n if n else float("nan")
        lines.append(f"{get_domain(c).name + ' (' + c + ')':<{w + 2}}" + "".join(f"{v:>{w + 2}d}" for v in row)
                     + f"{acc:>10.4f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Selection benchmark
# ----------------------------------------------------------------------------------------------
# Conditions: the network-input test crop; the whole frame at the pixel scale of that crop (the
# resized frame for NYU/ScanNet; for KITTI, whose recipe crops without resizing, the stored frame
# itself -- test.py's --full-frame rescales KITTI frames by --scale, which would show the network
# its scenes at another pixel size than it learned them); the crop flipped left-right; the crop
# brighter with less contrast, and darker with more contrast (colour in [0,1], contrast around the
# image's mean grey, then brightness as a factor, clamped to [0,1]; both at the edge of the training
# colour jitter, whose factors lie in [0.6, 1.4]).
CONDITIONS = ("crop", "full", "flip", "bright", "dark", "raw", "raw0.5x", "raw2x")
# raw*: the test file as it lies on disk (no domain transform, no domain knowledge), at its own, half
# and twice its resolution; the other selectors see it as today's product rule did (squeezed to the
# first domain's input size), the "frames" selector through inference/frames.py's selection input
RAW_FACTORS = {"raw": 1.0, "raw0.5x": 0.5, "raw2x": 2.0}
PHOTOMETRIC = {"bright": (1.4, 0.7), "dark": (0.6, 1.3)}  # (brightness, contrast) factors


def photometric(image: torch.Tensor, brightness: float, contrast: float) -> torch.Tensor:
    """A normalized (3,H,W) image with its contrast, then brightness, scaled by the factors."""
    rgb = denormalize(image)
    grey = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]).mean()
    rgb = ((rgb - grey) * contrast + grey) * brightness
    return normalize(rgb.clamp(0.0, 1.0))


def condition_images(ds, condition: str):
    """The test images of a dataset under one benchmark condition (normalized (3,H,W) tensors)."""
    if condition in RAW_FACTORS:
        yield from raw_images(ds, RAW_FACTORS[condition])
        return
    for i in range(len(ds)):
        image = ds[i]["image"]
        if condition == "flip":
            image = image.flip(-1)
        elif condition in PHOTOMETRIC:
            image = photometric(image, *PHOTOMETRIC[condition])
        yield image


def raw_images(ds, factor: float):
    """The dataset's colour files as they lie on disk, resized by ``factor`` (normalized (3,H,W))."""
    from PIL import Image

    from inference.frames import to_tensor
    from loaders import load_rgb
    base = ds.dataset if hasattr(ds, "dataset") else ds  # a Subset of the first --max-images
    for i in range(len(ds)):
        img = load_rgb(base.rows[i].image)
        if factor != 1.0:
            img = img.resize((round(img.size[0] * factor), round(img.size[1] * factor)), Image.BILINEAR)
        yield to_tensor(img)[0]


def squeezed(image: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(image[None], size=tuple(size), mode="bilinear", align_corners=False, antialias=True)[0]


def frames_choice(predictor, image: torch.Tensor) -> int:
    """The head the frame pipeline's selector (inference/frames.py) chooses for one image."""
    from inference.frames import descriptor_of, frame_distances, selects_on_layer1
    stats = predictor.prototypes["frames"]
    if selects_on_layer1(stats):
        desc = descriptor_of(predictor.trunk_features, image[None], stats["area"], predictor.net)[1]
    else:
        desc = descriptor_of(predictor.trunk_features, image[None], stats["area"])
    return int(frame_distances(desc, stats)[1][0])


def predictor_features(predictor, image: torch.Tensor) -> torch.Tensor:
    """Fused features of one image on the predictor's own path (fast path, precision), float32."""
    x = prepare_input(image[None], predictor.device, predictor.channels_last, predictor._input_dtype)
    with torch.no_grad(), predictor._autocast():
        return predictor.features(x).float()


def format_benchmark(table: dict, conditions, letters, selectors) -> str:
    """Rows: condition x test domain (and 'all'); columns: accuracy of each selector."""
    head = f"{'condition':<10}{'domain':<14}" + "".join(f"{s:>10}" for s in selectors)
    lines = [head, "-" * len(head)]
    for cond in conditions:
        for c in list(letters) + ["all"]:
            name = "all" if c == "all" else f"{get_domain(c).name} ({c})"
            cells = []
            for sel in selectors:
                right, n = table[sel][cond][c]
                cells.append(f"{right / n:>10.3f}" if n else f"{'-':>10}")
            lines.append(f"{cond:<10}{name:<14}" + "".join(cells))
    return "\n".join(lines)


def selection_benchmark(source, evaluation: EvalOptions, selection: SelectionOptions, device, runtime=None,
                        order=None, domains=None) -> dict:
    """Selection accuracy of every selector under every condition on every test image of
    ``domains`` (default: every learned one). ``source``: a loaded network or a checkpoint path."""
    device, evaluation = torch.device(device), evaluation.resolved()
    selection = selection.resolved(evaluation.protocol)
    net, meta, path, letters, scale = open_run(source, order, evaluation)
    prototypes, proto_source = checkpoint_prototypes(net, letters, scale, device, evaluation, selection,
                                                     need_authors=True, need_lda=True)
    selectors = [s for s in SELECTORS if s != "authors" or prototypes.get("authors")]
    selectors += ["frames"] if prototypes.get("frames") else []  # inference/frames.py's, on frames
    predictor = build_predictor(net, runtime, device, prototypes=prototypes, selector=DEFAULT_SELECTOR)
    test_letters = domains or letters
    table = {sel: {cond: {} for cond in CONDITIONS} for sel in selectors}
    datasets = {(c, full): test_dataset(c, evaluation.data_root, scale,
                                        evaluation.max_images, full, evaluation.scannet_resize)
                for c in test_letters for full in (False, True)}
    total = sum(len(datasets[(c, False)]) for c in test_letters) * len(CONDITIONS)
    bar = tqdm(total=total, desc="selection benchmark", unit="img", disable=evaluation.quiet,
               dynamic_ncols=True, leave=False)
    for cond in CONDITIONS:
        for c in test_letters:
            truth = letters.index(c)
            right = dict.fromkeys(selectors, 0)
            n = 0
            for image in condition_images(datasets[(c, cond == "full")], cond):
                feats = predictor_features(predictor, squeezed(image, meta.input_sizes[0])
                                           if cond in RAW_FACTORS and meta.input_sizes else image)
                for sel in selectors:
                    chosen = (frames_choice(predictor, image) if sel == "frames" else
                              int(prototype_distances(feats, prototypes, sel).argmin(dim=1)[0]))
                    right[sel] += chosen == truth
                n += 1
                bar.update(1)
            for sel in selectors:
                table[sel][cond][c] = (right[sel], n)
        for sel in selectors:
            table[sel][cond]["all"] = tuple(sum(table[sel][cond][c][k] for c in test_letters) for k in (0, 1))
    bar.close()
    return {"checkpoint": path, "letters": letters, "test_domains": test_letters,
            "selectors": selectors, "conditions": list(CONDITIONS), "photometric": PHOTOMETRIC,
            "prototypes_from": proto_source, "scale": scale, "device": str(device),
            "predictor": predictor_settings(predictor), "max_images": evaluation.max_images,
            "accuracy": {sel: {cond: {c: (r / n if n else None) for c, (r, n) in v.items()}
                               for cond, v in table[sel].items()} for sel in selectors},
            "counts": {sel: {cond: {c: list(rn) for c, rn in v.items()} for cond, v in table[sel].items()}
                       for sel in selectors},
            "table": format_benchmark(table, CONDITIONS, test_letters, selectors)}


def run_selector(selection: SelectionOptions, meta, path, data_root) -> str:
    """The selector of a run: the one asked for, else the default (lda); a checkpoint from before
    the lda selector (no lda statistics stored, no replay rows to compute them) selects with its
    pooled prototypes, unless lda was asked for explicitly (InputError)."""
    selector = selection.selector or DEFAULT_SELECTOR
    meta = checkpoint_meta(meta)
    if selector != "lda" or selection.replay_root or meta.prototype_sets.get("lda"):
        return selector
    if selection.selector is not None:
        raise InputError(f"--selector lda: checkpoint {str(path)!r} stores no lda statistics (it predates "
                         f"them, or is an authors' file); compute them from replay data with "
                         f"--replay-root DIR, e.g. --replay-root {data_root}")
    if meta.prototypes:
        print("note: the checkpoint stores no lda statistics: selecting with its pooled prototypes "
              "(--replay-root DIR computes the default lda selector's)", file=sys.stderr)
    return "pooled"


def latencies(predictor, datasets: dict, selection: SelectionOptions, quiet: bool = False) -> dict:
    """measure_latency per test domain (its first 8 images) and the median over domains; {} when
    ``selection.latency_runs`` is 0."""
    if selection.latency_runs <= 0:
        return {}
    out = {}
    bar = tqdm(total=len(datasets) * (selection.warmup + selection.latency_runs), desc="latency",
               unit="call", disable=quiet, dynamic_ncols=True, leave=False)
    for c, ds in datasets.items():
        images = [ds[i]["image"] for i in range(min(len(ds), 8))]
        out[c] = measure_latency(predictor, images, selection.warmup, selection.latency_runs,
                                 size=selection.latency_size, progress=bar)
    bar.close()
    out["overall_median_ms"] = statistics.median(out[c]["median_ms"] for c in datasets)
    out["overall_fps"] = 1000.0 / out["overall_median_ms"]
    return out


def evaluate_selection(source, evaluation: EvalOptions, selection: SelectionOptions, device, runtime=None,
                       order=None, domains=None) -> dict:
    """Each test image of ``domains`` (default: every learned one) through the head of the nearest
    prototype, and through its own head: selection accuracy, confusion, both metric tables and the
    latency of selection + one head. ``source``: a loaded network or a checkpoint path (loaded
    once); ``runtime``: the predictor's RuntimeOptions. Returns test_inference.py's JSON dict."""
    device, evaluation = torch.device(device), evaluation.resolved()
    selection = selection.resolved(evaluation.protocol)
    net, meta, path, letters, scale = open_run(source, order, evaluation)
    selector = run_selector(selection, meta, path, evaluation.data_root)
    prototypes, proto_source = checkpoint_prototypes(net, letters, scale, device, evaluation, selection,
                                                     need_authors=selector == "authors",
                                                     need_lda=selector == "lda")
    predictor = build_predictor(net, runtime, device, prototypes=prototypes, selector=selector)
    test_letters = domains or letters
    check_learned(test_letters, letters, path)
    datasets = load_test_splits(test_letters, evaluation, scale)
    runs, eval_seconds = evaluate_domains(predictor, datasets, evaluation, device,
                                          {c: letters.index(c) for c in test_letters}, selection=True,
                                          desc="test without domain prior")
    prior, selected, confusion = {}, {}, {}
    for c, r in runs.items():
        name = get_domain(c).name
        prior[c] = dict(r["prior"], domain=name, letter=c, head=r["head"])
        selected[c] = dict(r["selected"], domain=name, letter=c, head=r["head"])
        confusion[c] = r["chosen"]
    accuracy = {c: confusion[c][letters.index(c)] / max(1, sum(confusion[c])) for c in test_letters}
    n_all = sum(sum(confusion[c]) for c in test_letters)
    overall = sum(confusion[c][letters.index(c)] for c in test_letters) / max(1, n_all)
    latency = latencies(predictor, datasets, selection, evaluation.quiet)
    names = {c: f"{get_domain(c).name} ({c})" for c in test_letters}
    return {
        "checkpoint": path, "letters": letters, "domains": [get_domain(c).name for c in letters],
        "test_domains": test_letters, "selector": selector, "prototypes_from": proto_source,
        "scale": scale, "device": str(device), "settings": evaluation.rules(),
        "full_frame": evaluation.full_frame, "protocol": evaluation.protocol,
        "predictor": predictor_settings(predictor),
        "max_images": evaluation.max_images, "eval_seconds": eval_seconds,
        "selection": {"accuracy": accuracy, "overall_accuracy": overall, "images": n_all,
                      "confusion": confusion, "columns": list(letters)},
        "selected": selected, "prior": prior, "latency": latency,
        "tables": {"confusion": format_confusion(test_letters, letters, confusion),
                   "selected": format_table([(names[c], selected[c]) for c in test_letters]),
                   "prior": format_table([(names[c], prior[c]) for c in test_letters])},
    }
