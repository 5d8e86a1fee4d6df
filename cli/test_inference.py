"""The test_inference.py command: evaluation WITHOUT the domain prior (nearest-prototype head
selection), its latency and the selection benchmark.

test_inference.py is its entry point; the shared evaluation is ``evaluation``, the shared options
``options``, prototypes computed from replay rows ``replay``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from data.domains import get_domain
from evaluation.evaluate import (check_learned, describe_predictor, describe_settings, evaluate_domains, test_dataset,
                        load_test_splits)
from metrics import format_table
from models import CheckpointError, load_checkpoint
from models.fast import prepare_input
from cli.options import run_command
from data.safeio import write_json
from cli.options import (CLIError, HelpFormatter, add_checkpoint_arguments, add_eval_arguments, add_runtime_arguments,
                     add_selector_arguments,
                     check_checkpoint_path, check_eval_args, checkpoint_letters, default_scale, eval_settings,
                     make_predictor, parse_letters, parse_size, predictor_settings, register_custom_domains,
                     resolve_device, worker_count)
from inference.prototypes import DEFAULT_SELECTOR, SELECTORS, prototype_distances
from engine.protocol import resolve as resolve_protocol
from inference.replay import load_prototypes


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
_MEAN = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1)
_STD = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)


def photometric(image: torch.Tensor, brightness: float, contrast: float) -> torch.Tensor:
    """A normalized (3,H,W) image with its contrast, then brightness, scaled by the factors."""
    rgb = image * _STD + _MEAN
    grey = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]).mean()
    rgb = ((rgb - grey) * contrast + grey) * brightness
    return (rgb.clamp(0.0, 1.0) - _MEAN) / _STD


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
    from inference.frames import descriptor_of, frame_distances
    stats = predictor.prototypes["frames"]
    return int(frame_distances(descriptor_of(predictor.trunk_features, image[None], stats["area"]), stats)[1][0])


def full_frame_scale(letter: str, scale: float) -> float:
    """--scale for a whole frame at the test crop's pixel scale (1.0 for the KITTI recipe)."""
    return 1.0 if get_domain(letter).transform == "kitti" else scale


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


def run_selection_benchmark(args, path, meta, letters, order, scale, device, workers) -> dict:
    """Selection accuracy of every selector under every condition on every test image."""
    prototypes, source = load_prototypes(args, path, meta, letters, scale, device, order, workers,
                                         need_authors=True, need_lda=True)
    selectors = [s for s in SELECTORS if s != "authors" or prototypes.get("authors")]
    selectors += ["frames"] if prototypes.get("frames") else []  # inference/frames.py's, on frames
    predictor = make_predictor(path, args, device, order=order, prototypes=prototypes,
                                 selector=DEFAULT_SELECTOR)
    test_letters = parse_letters(args.domains, "--domains") if args.domains else letters
    table = {sel: {cond: {} for cond in CONDITIONS} for sel in selectors}
    datasets = {(c, full): test_dataset(c, args.data_root, full_frame_scale(c, scale) if full else scale,
                                          args.max_images, full, args.scannet_resize)
                for c in test_letters for full in (False, True)}
    total = sum(len(datasets[(c, False)]) for c in test_letters) * len(CONDITIONS)
    bar = tqdm(total=total, desc="selection benchmark", unit="img", disable=args.quiet,
               dynamic_ncols=True, leave=False)
    for cond in CONDITIONS:
        for c in test_letters:
            truth = letters.index(c)
            right = dict.fromkeys(selectors, 0)
            n = 0
            for image in condition_images(datasets[(c, cond == "full")], cond):
                feats = predictor_features(predictor, squeezed(image, meta["input_sizes"][0])
                                           if cond in RAW_FACTORS and meta.get("input_sizes") else image)
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
    text = format_benchmark(table, CONDITIONS, test_letters, selectors)
    print(f"{path}: selection benchmark, prototypes from {source}; scale {scale:g}; predictor "
          f"{describe_predictor(predictor_settings(predictor))}")
    print(text)
    out = {"checkpoint": str(path), "letters": letters, "test_domains": test_letters,
           "selectors": selectors, "conditions": list(CONDITIONS), "photometric": PHOTOMETRIC,
           "prototypes_from": source, "scale": scale, "device": str(device),
           "predictor": predictor_settings(predictor), "max_images": args.max_images,
           "accuracy": {sel: {cond: {c: (r / n if n else None) for c, (r, n) in v.items()}
                              for cond, v in table[sel].items()} for sel in selectors},
           "counts": {sel: {cond: {c: list(rn) for c, rn in v.items()} for cond, v in table[sel].items()}
                      for sel in selectors},
           "table": text}
    json_path = args.json or f"{path}.selection.json"
    write_json(json_path, out)
    print(f"wrote {json_path}")
    return out


# ----------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Evaluate a checkpoint without the domain prior: each test image goes to the head "
                    "of the nearest domain prototype. Reports selection accuracy, a confusion matrix, "
                    "the metrics with the selected heads beside those with the domain prior, and the "
                    "per-image latency of the selection + one-head path.",
        formatter_class=HelpFormatter)
    g = p.add_argument_group("what to evaluate")
    add_checkpoint_arguments(g, "checkpoint to evaluate (project format, or an authors' file with --order and "
                                "--replay-root)")
    g.add_argument("--domains", default=None,
                   help="test domains to evaluate, e.g. NK (default: all learned); selection always "
                        "chooses among all learned heads")
    g.add_argument("--data-root", default="datasets", help="folder with the test index CSVs")
    g.add_argument("--max-images", type=int, default=None,
                   help="evaluate only the first N test images of each domain")
    g = p.add_argument_group("head selection")
    add_selector_arguments(
        g, f"lda: Mahalanobis distance of the pooled descriptor, with a within-domain covariance "
          f"from training-augmented replay images (stored by training); "
          f"pooled: per-channel mean/std of the fused features (resolution independent); "
                        f"map: mean feature map, query resized to it, L2 distance; authors: the released "
                        f"code's rule (prototypes from training-augmented replay images, sum/(N-1), mean "
                        f"squared difference to the prototype resized to the query; needs replay data, "
                        f"--replay-root or else --data-root). Default {DEFAULT_SELECTOR} (the best on "
                        f"the selection benchmark; authors protocol: authors)",
        "compute the prototypes from this data root's replay rows (replay_<domain>.csv) instead of the "
        "checkpoint's stored ones; needed for an authors' file")
    g.add_argument("--proto-images", type=int, default=200,
                   help="replay images per domain for --replay-root prototypes (training uses 200; the "
                        "authors' selector always takes up to 500, as theirs)")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of the training augmentation of the authors' selector's prototype images")
    g.add_argument("--selection-benchmark", action="store_true",
                   help="instead of the evaluation: selection accuracy of every selector on every test "
                        "image of every domain under several conditions (the test crop, the full frame, "
                        "flipped, brighter/darker, the raw file as on disk at 1x, 0.5x and 2x); prints a "
                        "table (conditions x domains x selectors; 'frames' = predict.py's frame selector)")
    g.add_argument("--add-frame-statistics", metavar="OUT", default=None,
                   help="instead of the evaluation: write a copy of the checkpoint to OUT with the frame "
                        "selector's statistics and out-of-domain thresholds computed from --data-root's "
                        "replay rows (for a checkpoint trained before they were stored), then stop")
    g = p.add_argument_group("evaluation conventions (as in test.py)")
    add_eval_arguments(p, g)
    g.add_argument("--scale", type=float, default=None,
                   help="input size factor (default: the checkpoint's training scale, else 1.0)")
    g.add_argument("--batch-size", type=int, default=8,
                   help="test images per forward pass for the metrics (selection is per image)")
    g = p.add_argument_group("latency")
    g.add_argument("--latency-runs", type=int, default=30,
                   help="timed single-image calls per test domain (0 = skip the latency measurement)")
    g.add_argument("--warmup", type=int, default=5, help="untimed calls before timing, per domain")
    g.add_argument("--latency-size", default=None,
                   help="HxW to time at (test images resized to it), e.g. 228x304; default: each "
                        "domain's test input size")
    g = p.add_argument_group("output")
    g.add_argument("--json", default=None,
                   help="write the results here (default: <checkpoint>.inference.json)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    add_runtime_arguments(p)
    return p


def write_frame_statistics(args, path, letters, order) -> dict:
    """--add-frame-statistics OUT: inference.replay.add_frame_statistics, and a summary line."""
    from inference.replay import add_frame_statistics
    if str(args.add_frame_statistics) == str(path):
        raise CLIError("--add-frame-statistics: give a new file name; the checkpoint itself is not overwritten")
    stats = add_frame_statistics(path, args.add_frame_statistics, args.data_root, order=order,
                                 max_images=args.proto_images, seed=args.seed, quiet=args.quiet)
    print(f"wrote {args.add_frame_statistics}: frame statistics of {letters} from the replay rows of "
          f"{args.data_root} (held-out accuracy {stats['calibration_accuracy']:.3f}; out-of-domain "
          f"thresholds {', '.join(f'{t:.1f}' for t in stats['thresholds'])})")
    return {"checkpoint": str(path), "out": str(args.add_frame_statistics),
            "thresholds": stats["thresholds"], "calibration_accuracy": stats["calibration_accuracy"]}


def main(argv=None) -> dict:
    """The command (data-format errors end in one ``error:`` line: ``options.run_command``)."""
    return run_command(_main, argv)


def _main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    check_eval_args(args)
    args.selector_given = args.selector is not None
    resolve_protocol(args, ["selector", "nyu_rotation"])
    args.selector = args.selector or DEFAULT_SELECTOR
    if args.latency_runs < 0 or args.warmup < 0:
        raise CLIError("--latency-runs and --warmup must be >= 0")
    if args.proto_images < 1:
        raise CLIError(f"--proto-images must be at least 1, got {args.proto_images}")
    latency_size = parse_size(args.latency_size, "--latency-size") if args.latency_size else None
    device = resolve_device(args.device)
    register_custom_domains(args.data_root)
    order = parse_letters(args.order, "--order") if args.order else None
    path = check_checkpoint_path(args.checkpoint)
    # Read the order and scale first (plain load); prototypes may have to be computed from it.
    try:
        net = load_checkpoint(path, order=order)
    except CheckpointError as e:
        raise CLIError(str(e)) from None
    meta = net.meta
    letters = checkpoint_letters(meta, path)
    del net
    scale = args.scale if args.scale is not None else default_scale(meta)
    workers = worker_count(args, device)
    if args.add_frame_statistics:
        return write_frame_statistics(args, path, letters, order)
    if args.selection_benchmark:
        return run_selection_benchmark(args, path, meta, letters, order, scale, device, workers)
    if args.selector == "lda" and not args.replay_root and not (meta.get("prototypes") or {}).get("lda"):
        if args.selector_given:
            raise CLIError(f"--selector lda: checkpoint {str(path)!r} stores no lda statistics (it predates "
                           f"them, or is an authors' file); compute them from replay data with "
                           f"--replay-root DIR, e.g. --replay-root {args.data_root}")
        args.selector = "pooled"  # a checkpoint from before the lda selector: its stored prototypes
        if meta.get("prototypes"):
            print("note: the checkpoint stores no lda statistics: selecting with its pooled prototypes "
                  "(--replay-root DIR computes the default lda selector's)", file=sys.stderr)
    prototypes, proto_source = load_prototypes(args, path, meta, letters, scale, device, order, workers,
                                               need_authors=args.selector == "authors",
                                               need_lda=args.selector == "lda")
    predictor = make_predictor(path, args, device, order=order, prototypes=prototypes,
                                 selector=args.selector)
    test_letters = parse_letters(args.domains, "--domains") if args.domains else letters
    check_learned(test_letters, letters, path)
    settings = eval_settings(args)
    datasets = load_test_splits(test_letters, args, scale)
    runs, eval_seconds = evaluate_domains(predictor, letters, datasets, args, device, True,
                                          "test without domain prior")
    prior, selected, confusion = {}, {}, {}
    for c, r in runs.items():
        name = get_domain(c).name
        prior[c] = dict(r["prior"], domain=name, letter=c, head=r["head"])
        selected[c] = dict(r["selected"], domain=name, letter=c, head=r["head"])
        confusion[c] = r["chosen"]

    accuracy = {c: confusion[c][letters.index(c)] / max(1, sum(confusion[c])) for c in test_letters}
    n_all = sum(sum(confusion[c]) for c in test_letters)
    overall = sum(confusion[c][letters.index(c)] for c in test_letters) / max(1, n_all)

    latency = {}
    if args.latency_runs > 0:
        lbar = tqdm(total=len(test_letters) * (args.warmup + args.latency_runs), desc="latency",
                    unit="call", disable=args.quiet, dynamic_ncols=True, leave=False)
        all_times = []
        for c in test_letters:
            ds = datasets[c]
            images = [ds[i]["image"] for i in range(min(len(ds), 8))]
            latency[c] = measure_latency(predictor, images, args.warmup, args.latency_runs,
                                         size=latency_size, progress=lbar)
            all_times.append(latency[c]["median_ms"])
        lbar.close()
        latency["overall_median_ms"] = statistics.median(all_times)
        latency["overall_fps"] = 1000.0 / latency["overall_median_ms"]

    names = {c: f"{get_domain(c).name} ({c})" for c in test_letters}
    table_sel = format_table([(names[c], selected[c]) for c in test_letters])
    table_prior = format_table([(names[c], prior[c]) for c in test_letters])
    confusion_text = format_confusion(test_letters, letters, confusion)
    print(f"{path}: {args.selector} selector, prototypes from {proto_source}; "
          f"{describe_settings(settings, scale)}; predictor "
          f"{describe_predictor(predictor_settings(predictor))}")
    print()
    print("head selection (rows: true test domain, columns: chosen head)")
    print(confusion_text)
    print(f"overall selection accuracy {overall:.4f} ({n_all} images)")
    print()
    print("without the domain prior (selected heads)")
    print(table_sel)
    print()
    print("with the domain prior (each domain's own head)")
    print(table_prior)
    if latency:
        print()
        size_text = f"{latency_size[0]}x{latency_size[1]}" if latency_size else "each domain's test input size"
        print(f"latency per image on {device} ({torch.get_num_threads()} threads), batch 1, "
              f"selection + one head, {size_text}:")
        for c in test_letters:
            L = latency[c]
            print(f"  {names[c]:<14} {L['size'][0]}x{L['size'][1]}: median {L['median_ms']:.2f} ms "
                  f"(p90 {L['p90_ms']:.2f}), {L['fps']:.1f} frames/s")
    out = {
        "checkpoint": str(path), "letters": letters, "domains": [get_domain(c).name for c in letters],
        "test_domains": test_letters, "selector": args.selector, "prototypes_from": proto_source,
        "scale": scale, "device": str(device), "settings": settings, "full_frame": args.full_frame,
        "protocol": args.protocol,
        "predictor": predictor_settings(predictor),
        "max_images": args.max_images, "eval_seconds": eval_seconds,
        "selection": {"accuracy": accuracy, "overall_accuracy": overall, "images": n_all,
                      "confusion": confusion, "columns": list(letters)},
        "selected": selected, "prior": prior, "latency": latency,
        "tables": {"confusion": confusion_text, "selected": table_sel, "prior": table_prior},
    }
    json_path = args.json or f"{path}.inference.json"
    write_json(json_path, out)
    print(f"wrote {json_path}")
    return out
