"""The test_inference.py command: evaluation WITHOUT the domain prior (nearest-prototype head
selection), its latency and the selection benchmark.

test_inference.py is its entry point; the evaluation is ``evaluation.selection`` (which computes
prototypes from replay rows with ``inference.replay``), the shared options ``options``. The
checkpoint is loaded once and the network passed on.
"""
from __future__ import annotations

import argparse

import torch

from base.safeio import check_report, protect, write_json
from evaluation.evaluate import describe_predictor, describe_settings
from evaluation.selection import SelectionOptions, evaluate_selection, selection_benchmark
from base.domains import DEFAULT_DATA_ROOT
from inference.prototypes import DEFAULT_PROTO_IMAGES, DEFAULT_SELECT_DESCRIPTOR, DEFAULT_SELECTOR, SELECT_DESCRIPTORS
from models import load_checkpoint
from models.checkpoint import check_checkpoint_path, checkpoint_letters, checkpoint_meta
from cli.errors import CLIError, run_command
from cli.options import (HelpFormatter, add_checkpoint_arguments, add_eval_arguments,
                         add_runtime_arguments, add_selector_arguments, eval_options, help_of,
                         parse_letters, parse_size, register_custom_domains, runtime_options)
from engine.processes import resolve_device


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
    g.add_argument("--data-root", default=DEFAULT_DATA_ROOT, help="folder with the test index CSVs")
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
    g.add_argument("--proto-images", type=int, default=DEFAULT_PROTO_IMAGES, help=help_of(SelectionOptions, "proto_images"))
    g.add_argument("--seed", type=int, default=0, help=help_of(SelectionOptions, "seed"))
    g.add_argument("--selection-benchmark", action="store_true",
                   help="instead of the evaluation: selection accuracy of every selector on every test "
                        "image of every domain under several conditions (the test crop, the full frame, "
                        "flipped, brighter/darker, the raw file as on disk at 1x, 0.5x and 2x); prints a "
                        "table (conditions x domains x selectors; 'frames' = predict.py's frame selector)")
    g.add_argument("--add-frame-statistics", metavar="OUT", default=None,
                   help="instead of the evaluation: write a copy of the checkpoint to OUT with the frame "
                        "selector's statistics and out-of-domain thresholds computed from --data-root's "
                        "replay rows (for a checkpoint trained before they were stored), then stop")
    g.add_argument("--frame-selector", default=DEFAULT_SELECT_DESCRIPTOR, choices=SELECT_DESCRIPTORS,
                   help="with --add-frame-statistics: the descriptor the head choice is fitted on (as "
                        "train_*.py's --frame-selector; default %(default)s; fused: the rule before)")
    g = p.add_argument_group("evaluation conventions (as in test.py)")
    add_eval_arguments(p, g)
    g.add_argument("--scale", type=float, default=None,
                   help="input size factor (default: the checkpoint's training scale, else 1.0)")
    g.add_argument("--batch-size", type=int, default=8,
                   help="test images per forward pass for the metrics (selection is per image)")
    g = p.add_argument_group("latency")
    g.add_argument("--latency-runs", type=int, default=30, help=help_of(SelectionOptions, "latency_runs"))
    g.add_argument("--warmup", type=int, default=5, help=help_of(SelectionOptions, "warmup"))
    g.add_argument("--latency-size", default=None, help=help_of(SelectionOptions, "latency_size"))
    g = p.add_argument_group("output")
    g.add_argument("--json", default=None,
                   help="write the results here (default: <checkpoint>.inference.json)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    add_runtime_arguments(p)
    return p


def write_frame_statistics(args, net, letters) -> dict:
    """--add-frame-statistics OUT: inference.replay.add_frame_statistics, and a summary line."""
    from inference.replay import add_frame_statistics
    path = checkpoint_meta(net).path
    if str(args.add_frame_statistics) == str(path):
        raise CLIError("--add-frame-statistics: give a new file name; the checkpoint itself is not overwritten")
    stats = add_frame_statistics(net, args.add_frame_statistics, args.data_root, max_images=args.proto_images,
                                 seed=args.seed, quiet=args.quiet, selector=args.frame_selector)
    print(f"wrote {args.add_frame_statistics}: frame statistics of {letters} from the replay rows of "
          f"{args.data_root} (selection on {stats['descriptor']}, held-out accuracy {stats['calibration_accuracy']:.3f}; out-of-domain "
          f"thresholds {', '.join(f'{t:.1f}' for t in stats['thresholds'])})")
    return {"checkpoint": str(path), "out": str(args.add_frame_statistics),
            "thresholds": stats["thresholds"], "calibration_accuracy": stats["calibration_accuracy"]}


def selection_options(args) -> SelectionOptions:
    """The head-selection and latency options of ``args``, the protocol's values filled in."""
    return SelectionOptions(
        selector=args.selector, replay_root=args.replay_root, proto_images=args.proto_images, seed=args.seed,
        latency_runs=args.latency_runs, warmup=args.warmup,
        latency_size=parse_size(args.latency_size, "--latency-size") if args.latency_size else None,
    ).resolved(args.protocol)


def main(argv=None) -> dict:
    """The command (data-format errors end in one ``error:`` line: ``cli.errors.run_command``)."""
    return run_command(_main, argv)


def _main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    options = eval_options(args)
    selection = selection_options(args)
    device = resolve_device(args.device)
    register_custom_domains(args.data_root)
    order = parse_letters(args.order, "--order") if args.order else None
    domains = parse_letters(args.domains, "--domains") if args.domains else None
    protect(args.checkpoint, "the --checkpoint")
    if args.json:
        check_report(args.json)  # before the evaluation: never the checkpoint, never a user's file
    net = load_checkpoint(check_checkpoint_path(args.checkpoint), order=order)  # the one load of the run
    if args.add_frame_statistics:
        return write_frame_statistics(args, net, checkpoint_letters(net.meta, args.checkpoint))
    if args.selection_benchmark:
        out = selection_benchmark(net, options, selection, device, runtime_options(args), domains=domains)
        print(f"{out['checkpoint']}: selection benchmark, prototypes from {out['prototypes_from']}; scale "
              f"{out['scale']:g}; predictor {describe_predictor(out['predictor'])}")
        print(out["table"])
        return written(out, args.json or f"{out['checkpoint']}.selection.json")
    out = evaluate_selection(net, options, selection, device, runtime_options(args), domains=domains)
    return finish_selection(out, args.json or f"{out['checkpoint']}.inference.json", selection.latency_size)


def written(out: dict, json_path) -> dict:
    write_json(json_path, out)
    print(f"wrote {json_path}")
    return out


def finish_selection(out: dict, json_path, latency_size=None) -> dict:
    """test_inference.py's output of evaluation.selection.evaluate_selection's ``out``: the head
    choices, both metric tables and the latency printed, ``out`` written to ``json_path``."""
    sel, tables, latency = out["selection"], out["tables"], out["latency"]
    print(f"{out['checkpoint']}: {out['selector']} selector, prototypes from {out['prototypes_from']}; "
          f"{describe_settings(out['settings'], out['scale'])}; predictor "
          f"{describe_predictor(out['predictor'])}")
    print()
    print("head selection (rows: true test domain, columns: chosen head)")
    print(tables["confusion"])
    print(f"overall selection accuracy {sel['overall_accuracy']:.4f} ({sel['images']} images)")
    print()
    print("without the domain prior (selected heads)")
    print(tables["selected"])
    print()
    print("with the domain prior (each domain's own head)")
    print(tables["prior"])
    if latency:
        print()
        size_text = f"{latency_size[0]}x{latency_size[1]}" if latency_size else "each domain's test input size"
        print(f"latency per image on {out['device']} ({torch.get_num_threads()} threads), batch 1, "
              f"selection + one head, {size_text}:")
        for c in out["test_domains"]:
            L = latency[c]
            name = f"{out['selected'][c]['domain']} ({c})"
            print(f"  {name:<14} {L['size'][0]}x{L['size'][1]}: median {L['median_ms']:.2f} ms "
                  f"(p90 {L['p90_ms']:.2f}), {L['fps']:.1f} frames/s")
    return written(out, json_path)
