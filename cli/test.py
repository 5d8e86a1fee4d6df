"""The test.py command: its options and runs (one checkpoint with the domain prior, or --matrix).

test.py is its entry point; the evaluation itself is library code (``evaluation``), the shared
options are ``options``'. Importable (``test`` is the standard library's package name), so the tests
and quickstart.py run the command in-process.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from base.domains import DEFAULT_DATA_ROOT, get_domain
from evaluation.evaluate import describe_predictor, describe_settings, evaluate_checkpoint, stage_paths
from evaluation.matrix import DEFAULT_MATRIX_METRICS, evaluate_matrix, table_rows, uncertainty_rows
from metrics import METRIC_NAMES, format_table
from models import load_checkpoint, read_checkpoint, save_checkpoint
from models.checkpoint import check_checkpoint_path, checkpoint_letters, checkpoint_meta
from base.uncertainty import CALIBRATION_KEY, calibration_note
from evaluation.uncertainty import reliability_plots
from evaluation.uncertainty import format_tables as format_uncertainty_tables
from base.safeio import check_folder, check_report, protect, write_json
from cli.errors import CLIError, run_command
from cli.options import (DEFAULT_CHECKPOINT, HelpFormatter, add_eval_arguments,
                         add_checkpoint_arguments, add_runtime_arguments, eval_options, parse_letters,
                         register_custom_domains, runtime_options)
from engine.processes import resolve_device


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
    g.add_argument("--data-root", default=DEFAULT_DATA_ROOT,
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
    g.add_argument("--metric", default=",".join(DEFAULT_MATRIX_METRICS),
                   help=f"comma-separated metrics shown as matrices; any of {', '.join(METRIC_NAMES)}")
    g = p.add_argument_group("uncertainty (evaluation/uncertainty.py)")
    g.add_argument("--uncertainty", action="store_true",
                   help="also measure each head's predicted uncertainty on the test pixels: "
                        "sparsification AUSE/AURG (RMSE, AbsRel), Gaussian NLL, coverage of the central "
                        "50/80/90/95 %% intervals, Spearman of spread and error; uncalibrated and with "
                        "the checkpoint's calibration (with --matrix: per stage)")
    g.add_argument("--calibrate-into", default=None, metavar="DIR",
                   help="first fit the uncertainty calibration of the checkpoint (with --matrix: of "
                        "every stage, in learning order) on whole frames through the frame pipeline: the "
                        "head each stage learned on the validation rows its training held out of "
                        "--data-root, older heads kept from the stage that learned them; write calibrated "
                        "copies into DIR (the originals are not changed) and evaluate those; implies "
                        "--uncertainty")
    g.add_argument("--plots", default=None, metavar="DIR",
                   help="with --uncertainty: write a reliability plot per domain (the final "
                        "checkpoint's coverage against nominal coverage) as DIR/uncertainty_<domain>.png")
    g = p.add_argument_group("output")
    g.add_argument("--json", default=None,
                   help="write the results here (default: <checkpoint>.test.json, or "
                        "<checkpoint>.matrix.json with --matrix)")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    add_runtime_arguments(p)
    return p


def calibrate_copy(path, out_dir, args, device, order=None, previous=None) -> Path:
    """A copy of checkpoint ``path`` in ``out_dir`` with its uncertainty calibration fitted on whole
    frames through the frame pipeline (evaluation/frame_calibration.py): the head this checkpoint's
    stage learned, on the validation rows its training held out of ``--data-root`` (the stored
    training options name them: --val-images, --val-seed); older heads keep ``previous`` (the
    calibrated copy of the stage before, with --matrix) or, without it, the checkpoint's own
    calibration of them (data of older domains outside their replay buffer is never read). The
    original is never written."""
    from engine.options import StageOptions
    from engine.stage import fit_frame_uncertainty, fit_uncertainty
    from inference.frames import head_cameras
    check_checkpoint_path(path)
    out = Path(out_dir) / Path(path).name
    if out.resolve() == Path(path).resolve():
        raise CLIError(f"--calibrate-into {str(out_dir)!r} holds {str(path)!r} itself; choose another folder")
    net = load_checkpoint(path, order=order)
    meta = checkpoint_meta(net)
    stored = meta.options
    if "val_images" not in stored:
        raise CLIError(f"{str(path)!r} stores no training options (an authors' or older file), so its "
                       f"validation rows are unknown; --calibrate-into needs a checkpoint of this project")
    opts = StageOptions.from_record(stored, data_root=str(args.data_root), workers=0)
    try:
        if opts.shared_head:
            from engine.sampling import DomainData  # the validation rows are the engine's (loaders.split_validation)
            record = fit_uncertainty(net, [DomainData(get_domain(c), opts) for c in opts.order], opts, device)
        else:
            own = meta.uncertainty_calibration
            fit = range(len(opts.order)) if opts.strategy == "joint" else [len(opts.order) - 1]
            record = fit_frame_uncertainty(net, opts, device, head_cameras(meta, opts.order, args.data_root),
                                           previous=previous if previous is not None else own, fit_heads=fit)
    except (OSError, ValueError) as e:
        raise CLIError(f"--data-root {str(args.data_root)!r}: {e}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, net, **{CALIBRATION_KEY: record})
    fitted = ", ".join(f"{v['domain']} {v['scale']:.3f} ({v['images']} images)" for v in record["validation"])
    print(f"calibrated {path} -> {out}: {fitted}")
    return out


def write_plots(folder, results: dict, model: str, data_root) -> list[str]:
    """evaluation.uncertainty.reliability_plots, and a line naming the files."""
    paths = reliability_plots(folder, results, model, data_root)
    print(f"wrote {', '.join(paths)}")
    return paths


def run_single(args, options, device) -> dict:
    domains = parse_letters(args.domains, "--domains") if args.domains else None
    order = parse_letters(args.order, "--order") if args.order else None
    out = evaluate_checkpoint(args.checkpoint, options, device, runtime=runtime_options(args), order=order,
                              domains=domains, uncertainty=args.uncertainty)
    table = format_table(table_rows(out["results"]))
    out["table"] = table
    print(f"{args.checkpoint}: domain prior, {describe_settings(out['settings'], out['scale'])}; "
          f"predictor {describe_predictor(out['predictor'])}")
    print(table)
    if args.uncertainty:
        out["uncertainty_table"] = format_uncertainty_tables(uncertainty_rows(out["results"]))
        note = calibration_note(out.get("uncertainty_calibration") and
                                {CALIBRATION_KEY: out["uncertainty_calibration"]}, len(out["letters"]))
        if note:
            print(note)
        print()
        print(out["uncertainty_table"])
        if args.plots:
            out["plots"] = write_plots(args.plots, out["results"], out["letters"], options.data_root)
    json_path = args.json or f"{args.checkpoint}.test.json"
    write_json(json_path, out)
    print(f"wrote {json_path}")
    return out


def order_of(path, args) -> str:
    """Learning order for --matrix: --order, else the checkpoint's own letters."""
    if args.order:
        return parse_letters(args.order, "--order")
    _, meta = read_checkpoint(check_checkpoint_path(path))
    return checkpoint_letters(meta, path)


def matrix_metrics(text: str) -> list[str]:
    """--metric 'abs_rel,rmse' -> the metric names, each one of metrics.METRIC_NAMES."""
    metrics = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in metrics if m not in METRIC_NAMES]
    if bad or not metrics:
        raise CLIError(f"--metric {text!r}: unknown {', '.join(bad) or 'empty'}; "
                       f"choose from {', '.join(METRIC_NAMES)}")
    return metrics


def run_matrix(args, options, device) -> dict:
    metrics = matrix_metrics(args.metric)
    runs_dir = Path(args.runs_dir) if args.runs_dir else Path(args.checkpoint).parent
    order = order_of(args.checkpoint, args)
    if args.domains:
        raise CLIError("--domains does not apply to --matrix (every learned domain is evaluated)")
    out = evaluate_matrix(order, options, device, runs_dir, strategy=args.strategy, runtime=runtime_options(args),
                          metrics=metrics, named_order=bool(args.order), uncertainty=args.uncertainty)
    return finish_matrix(out, metrics, args.json or f"{out['stages'][-1]}.matrix.json", args.plots,
                         options.data_root)


def finish_matrix(out: dict, metrics, json_path, plots=None, data_root=None) -> dict:
    """test.py --matrix's output of evaluation.matrix.evaluate_matrix's ``out``: the tables printed,
    the reliability plots into ``plots`` (with uncertainty), ``out`` written to ``json_path``."""
    tables, labels = out["tables"], out["stage_labels"]
    print(f"lifelong matrix of {out['order']} ({out['strategy']}), domain prior, "
          f"{describe_settings(out['settings'], out['scale'])}; predictor {describe_predictor(out['predictor'])}")
    for m in metrics:
        print()
        print(tables[m])
    print()
    print(f"final stage {labels[-1]}:")
    print(tables["final"])
    if "uncertainty_matrix" in out:
        for key in out["uncertainty_matrix"]:
            print()
            print(tables[key])
        print()
        print(f"uncertainty, final stage {labels[-1]}:")
        print(tables["uncertainty_final"])
        if plots:
            out["plots"] = write_plots(plots, out["stage_results"][-1]["results"], out["order"], data_root)
    write_json(json_path, out)
    print(f"wrote {json_path}")
    return out


def main(argv=None) -> dict:
    """The command (data-format errors end in one ``error:`` line: ``cli.errors.run_command``)."""
    return run_command(_main, argv)


def _main(argv=None) -> dict:
    """Parse ``argv`` and evaluate; returns the result dict (also written as JSON)."""
    args = build_parser().parse_args(argv)
    options = eval_options(args)
    device = resolve_device(args.device)
    register_custom_domains(args.data_root)
    if args.plots and not (args.uncertainty or args.calibrate_into):
        raise CLIError("--plots draws the uncertainty's reliability; add --uncertainty")
    check_outputs(args)
    if args.calibrate_into:
        args.uncertainty = True
        calibrate_stages(args, device)
    if args.matrix:
        return run_matrix(args, options, device)
    return run_single(args, options, device)


def check_outputs(args) -> None:
    """Before any evaluation: --json may not replace the checkpoint or a file that is not an earlier
    report (base.safeio.check_report), --plots must be a folder."""
    protect(args.checkpoint, "the --checkpoint")
    if args.json:
        check_report(args.json)
    elif not args.matrix:
        check_report(f"{args.checkpoint}.test.json")
    if args.plots:
        check_folder(args.plots, "--plots")


def calibrate_stages(args, device) -> None:
    """--calibrate-into: calibrated copies of the checkpoint (every stage with --matrix), which the
    evaluation then reads instead of the originals."""
    order = parse_letters(args.order, "--order") if args.order else None
    if args.matrix:
        runs_dir = Path(args.runs_dir) if args.runs_dir else Path(args.checkpoint).parent
        letters = order_of(args.checkpoint, args)
        copies, previous = [], None
        for p in stage_paths(letters, args.strategy, runs_dir):  # in learning order: each keeps the last's
            copies.append(calibrate_copy(p, args.calibrate_into, args, device, previous=previous))
            previous = checkpoint_meta(read_checkpoint(copies[-1])[1]).uncertainty_calibration
        args.runs_dir, args.checkpoint = args.calibrate_into, str(copies[-1])
        return
    args.checkpoint = str(calibrate_copy(args.checkpoint, args.calibrate_into, args, device, order=order))
