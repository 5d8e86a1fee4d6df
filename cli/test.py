"""The test.py command: its options and runs (one checkpoint with the domain prior, or --matrix).

test.py is its entry point; the evaluation itself is library code (``evaluation``), the shared
options are ``options``'. Importable (``test`` is the standard library's package name), so the tests
and quickstart.py run the command in-process.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from data.domains import get_domain
from evaluation.evaluate import (describe_predictor, describe_settings, evaluate_checkpoint, format_matrix,
                        lifelong_summary, stage_paths, write_json)
from metrics import METRIC_NAMES, format_table
from models import CheckpointError, read_checkpoint
from cli.options import (DEFAULT_CHECKPOINT, CLIError, HelpFormatter, add_eval_arguments, add_checkpoint_arguments, add_runtime_arguments,
                     check_eval_args,
                     checkpoint_letters, check_checkpoint_path, eval_settings, parse_letters,
                     register_custom_domains, resolve_device)

DEFAULT_MATRIX_METRICS = "abs_rel,rmse,delta1"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Evaluate a Lifelong-MonoDepth checkpoint with the domain prior: every learned "
                    "domain's test split through its own head; or, with --matrix, every stage of a "
                    "learning order (forgetting and backward transfer).",
        formatter_class=HelpFormatter,
        epilog="The authors' own evaluation: --crop none --no-cap --aggregate pixel (or --authors-eval). "
               "The field's usual one (default): each domain's crop (Eigen for NYU, Garg for KITTI), "
               "depth caps, per-image averages.")
    g = p.add_argument_group("what to evaluate")
    add_checkpoint_arguments(
        g, "checkpoint to evaluate (project format, or an authors' state_dict-only file with --order); "
           "with --matrix: the final stage, whose folder is the default --runs-dir "
           f"(default: {DEFAULT_CHECKPOINT})",
        "learning order as domain letters, e.g. NKS: names the heads of an authors' file (required "
        "for those), must agree with a project checkpoint; with --matrix, the order whose stages are "
        "evaluated (default: the checkpoint's)")
    g.add_argument("--domains", default=None,
                   help="evaluate only these learned domains, e.g. NK (default: all learned)")
    g.add_argument("--data-root", default="datasets",
                   help="folder with the test index CSVs (datasets/synthetic for the synthetic data)")
    g.add_argument("--max-images", type=int, default=None,
                   help="evaluate only the first N test images of each domain (quick runs)")
    g = p.add_argument_group("evaluation conventions")
    add_eval_arguments(p, g)
    g.add_argument("--scale", type=float, default=None,
                   help="input size factor of the test transform (default: the checkpoint's training "
                        "scale from its metadata, else 1.0)")
    g.add_argument("--batch-size", type=int, default=8, help="test images per forward pass")
    g = p.add_argument_group("lifelong matrix")
    g.add_argument("--matrix", action="store_true",
                   help="evaluate every stage checkpoint of the order (N, NK, NKS ...) on every "
                        "domain learned so far; prints the domain x stage matrix, final average, "
                        "forgetting and backward transfer")
    g.add_argument("--strategy", default="ours",
                   help="strategy suffix of the stage files as domains.run_name names them "
                        "(ours: N, NK, NKS; X: N, NK_X, NKS_X)")
    g.add_argument("--runs-dir", default=None,
                   help="folder of the stage checkpoints (default: the folder of --checkpoint)")
    g.add_argument("--metric", default=DEFAULT_MATRIX_METRICS,
                   help=f"comma-separated metrics shown as matrices; any of {', '.join(METRIC_NAMES)}")
    g = p.add_argument_group("output")
    g.add_argument("--json", default=None,
                   help="write the results here (default: <checkpoint>.test.json, or "
                        "<checkpoint>.matrix.json with --matrix)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    add_runtime_arguments(p)
    return p


def table_rows(results: dict):
    return [(f"{r['domain']} ({c})", r) for c, r in results.items()]


def run_single(args, device) -> dict:
    domains = parse_letters(args.domains, "--domains") if args.domains else None
    order = parse_letters(args.order, "--order") if args.order else None
    out = evaluate_checkpoint(args.checkpoint, args, device, order=order, domains=domains)
    table = format_table(table_rows(out["results"]))
    out["table"] = table
    print(f"{args.checkpoint}: domain prior, {describe_settings(out['settings'], out['scale'])}; "
          f"predictor {describe_predictor(out['predictor'])}")
    print(table)
    json_path = args.json or f"{args.checkpoint}.test.json"
    write_json(json_path, out)
    print(f"wrote {json_path}")
    return out


def order_of(path, args) -> str:
    """Learning order for --matrix: --order, else the checkpoint's own letters."""
    if args.order:
        return parse_letters(args.order, "--order")
    check_checkpoint_path(path)
    try:
        _, meta = read_checkpoint(path)
    except CheckpointError as e:
        raise CLIError(str(e)) from None
    return checkpoint_letters(meta, path)


def run_matrix(args, device) -> dict:
    metrics = [m.strip() for m in args.metric.split(",") if m.strip()]
    bad = [m for m in metrics if m not in METRIC_NAMES]
    if bad or not metrics:
        raise CLIError(f"--metric {args.metric!r}: unknown {', '.join(bad) or 'empty'}; "
                       f"choose from {', '.join(METRIC_NAMES)}")
    runs_dir = Path(args.runs_dir) if args.runs_dir else Path(args.checkpoint).parent
    order = order_of(args.checkpoint, args)
    if args.domains:
        raise CLIError("--domains does not apply to --matrix (every learned domain is evaluated)")
    paths = stage_paths(order, args.strategy, runs_dir)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise CLIError(f"--matrix needs every stage checkpoint of order {order} (strategy "
                       f"{args.strategy}) in {str(runs_dir)!r}; missing: {', '.join(missing)}")
    authors = []
    for p in paths:
        try:
            _, meta = read_checkpoint(p)
        except CheckpointError as e:
            raise CLIError(str(e)) from None
        authors.append(not meta.get("letters") and meta.get("format") == "authors")
    stages = []
    outer = tqdm(total=len(paths), desc=f"matrix {order}", unit="stage", disable=args.quiet,
                 dynamic_ncols=True, position=0)
    for k, p in enumerate(paths, 1):
        sub_order = order[:k] if (args.order or authors[k - 1]) else None
        r = evaluate_checkpoint(p, args, device, order=sub_order, bar_desc=f"stage {order[:k]}",
                                quiet=k > 1)
        if r["letters"] != order[:k]:
            raise CLIError(f"{str(p)!r} learned {r['letters']}, expected the stage {order[:k]} of {order}")
        stages.append(r)
        outer.update(1)
    outer.close()
    names = [f"{get_domain(c).name} ({c})" for c in order]
    labels = [order[:k] for k in range(1, len(order) + 1)]
    out = {"order": order, "strategy": args.strategy, "runs_dir": str(runs_dir),
           "stages": [str(p) for p in paths], "stage_labels": labels,
           "domains": [get_domain(c).name for c in order], "scale": stages[-1]["scale"],
           "settings": eval_settings(args), "device": str(device), "max_images": args.max_images,
           "matrix": {}, "summary": {}, "stage_results": stages, "tables": {}}
    out["predictor"] = stages[-1]["predictor"]
    print(f"lifelong matrix of {order} ({args.strategy}), domain prior, "
          f"{describe_settings(out['settings'], out['scale'])}; predictor {describe_predictor(out['predictor'])}")
    for m in metrics + [x for x in ("abs_rel", "rmse") if x not in metrics]:
        matrix = [[stages[s]["results"][order[d]][m] for d in range(s + 1)] for s in range(len(order))]
        summary = lifelong_summary(matrix, metric=m)
        out["matrix"][m] = matrix
        out["summary"][m] = summary
        text = format_matrix(names, labels, matrix, summary, m)
        out["tables"][m] = text
        if m in metrics:
            print()
            print(text)
    print()
    print(f"final stage {labels[-1]}:")
    final_table = format_table(table_rows(stages[-1]["results"]))
    out["tables"]["final"] = final_table
    print(final_table)
    json_path = args.json or f"{paths[-1]}.matrix.json"
    write_json(json_path, out)
    print(f"wrote {json_path}")
    return out


def main(argv=None) -> dict:
    """Parse ``argv`` and evaluate; returns the result dict (also written as JSON)."""
    args = build_parser().parse_args(argv)
    check_eval_args(args)
    device = resolve_device(args.device)
    register_custom_domains(args.data_root)
    if args.matrix:
        return run_matrix(args, device)
    return run_single(args, device)
