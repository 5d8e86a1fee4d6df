"""The test.py command: its options and runs (one checkpoint with the domain prior, or --matrix).

test.py is its entry point; the evaluation itself is library code (``evaluation``), the shared
options are ``options``'. Importable (``test`` is the standard library's package name), so the tests
and quickstart.py run the command in-process.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm import tqdm

from data.domains import get_domain
from evaluation.evaluate import (describe_predictor, describe_settings, evaluate_checkpoint, format_matrix,
                        lifelong_summary, stage_paths)
from metrics import METRIC_NAMES, format_table
from models import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from evaluation.uncertainty import CALIBRATION_KEY, calibration_note, format_stage_table, save_reliability_plot
from evaluation.uncertainty import format_tables as format_uncertainty_tables
from cli.options import run_command
from data.safeio import write_json
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
    g = p.add_argument_group("uncertainty (evaluation/uncertainty.py)")
    g.add_argument("--uncertainty", action="store_true",
                   help="also measure each head's predicted uncertainty on the test pixels: "
                        "sparsification AUSE/AURG (RMSE, AbsRel), Gaussian NLL, coverage of the central "
                        "50/80/90/95 %% intervals, Spearman of spread and error; uncalibrated and with "
                        "the checkpoint's calibration (with --matrix: per stage)")
    g.add_argument("--calibrate-into", default=None, metavar="DIR",
                   help="first fit the uncertainty calibration of the checkpoint (with --matrix: of "
                        "every stage) on the validation rows its training held out of --data-root, "
                        "write calibrated copies into DIR (the originals are not changed) and "
                        "evaluate those; implies --uncertainty")
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


def table_rows(results: dict):
    return [(f"{r['domain']} ({c})", r) for c, r in results.items()]


def uncertainty_rows(results: dict):
    return [(name, r["uncertainty"]) for name, r in table_rows(results)]


def calibrate_copy(path, out_dir, args, device, order=None) -> Path:
    """A copy of checkpoint ``path`` in ``out_dir`` with every head's uncertainty scale fitted on
    the validation rows its training held out of ``--data-root`` (the stored training options
    name them: --val-images, --val-seed, --scale); the original is never written."""
    from engine import lifelong  # the validation split is the engine's (split_validation)
    check_checkpoint_path(path)
    out = Path(out_dir) / Path(path).name
    if out.resolve() == Path(path).resolve():
        raise CLIError(f"--calibrate-into {str(out_dir)!r} holds {str(path)!r} itself; choose another folder")
    try:
        net = load_checkpoint(path, order=order)
    except CheckpointError as e:
        raise CLIError(str(e)) from None
    stored = net.meta.get("options")
    if not isinstance(stored, dict) or "val_images" not in stored:
        raise CLIError(f"{str(path)!r} stores no training options (an authors' or older file), so its "
                       f"validation rows are unknown; --calibrate-into needs a checkpoint of this project")
    opts = argparse.Namespace(**dict(stored, data_root=str(args.data_root), workers=0))
    try:
        data = [lifelong.DomainData(get_domain(c), opts) for c in opts.order]
    except (OSError, ValueError) as e:
        raise CLIError(f"--data-root {str(args.data_root)!r}: {e}") from None
    record = lifelong.fit_uncertainty(net, data, opts, device)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, net, **{CALIBRATION_KEY: record})
    fitted = ", ".join(f"{v['domain']} {v['scale']:.3f} ({v['images']} images)" for v in record["validation"])
    print(f"calibrated {path} -> {out}: scales {fitted}")
    return out


def is_synthetic(data_root) -> bool:
    """Whether ``data_root`` is a synthetic.py set (its meta.json says so)."""
    try:
        return bool(json.loads((Path(data_root) / "meta.json").read_text()).get("synthetic"))
    except (OSError, ValueError, AttributeError):
        return False


def write_plots(folder, results: dict, model: str, data_root) -> list[str]:
    """A reliability plot per domain of ``results`` (evaluate_checkpoint's, with uncertainty) of the
    checkpoint that learned ``model`` (its letters); labelled synthetic when ``data_root`` is."""
    data_note = " (synthetic data)" if is_synthetic(data_root) else ""
    paths = []
    Path(folder).mkdir(parents=True, exist_ok=True)
    for c, r in results.items():
        curves = {("uncalibrated" if label == "raw" else f"calibrated (scale {v['scale']:.2f})"): v["reliability"]
                  for label, v in r["uncertainty"]["calibration"].items()}
        path = Path(folder) / f"uncertainty_{r['domain']}.png"
        save_reliability_plot(path, f"{r['domain']} ({c}) test split, model {model}{data_note}", curves)
        paths.append(str(path))
    print(f"wrote {', '.join(paths)}")
    return paths


def run_single(args, device) -> dict:
    domains = parse_letters(args.domains, "--domains") if args.domains else None
    order = parse_letters(args.order, "--order") if args.order else None
    out = evaluate_checkpoint(args.checkpoint, args, device, order=order, domains=domains,
                              uncertainty=args.uncertainty)
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
            out["plots"] = write_plots(args.plots, out["results"], out["letters"], args.data_root)
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
                                quiet=k > 1, uncertainty=args.uncertainty)
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
    if args.uncertainty:
        uncertainty_matrices(out, stages, order, names, labels)
        if args.plots:
            out["plots"] = write_plots(args.plots, stages[-1]["results"], order, args.data_root)
    json_path = args.json or f"{paths[-1]}.matrix.json"
    write_json(json_path, out)
    print(f"wrote {json_path}")
    return out


def _unc_value(result, key):
    """One number of a domain's uncertainty result: ``ause_rmse``, ``aurg_rmse``, ``ause_abs_rel``,
    ``spearman`` or ``coverage<level>_<raw|calibrated>`` (None where not calibrated)."""
    u = result["uncertainty"]
    if key == "spearman":
        return u["spearman"]
    if key.startswith("coverage"):
        level, label = key[len("coverage"):].split("_")
        c = u["calibration"].get(label)
        return None if c is None else c["coverage"][level]
    measure, metric = key.split("_", 1)
    return u["sparsification"][metric][measure]


UNCERTAINTY_MATRICES = ("ause_rmse", "aurg_rmse", "ause_abs_rel", "spearman", "coverage50_raw",
                        "coverage50_calibrated", "coverage90_raw", "coverage90_calibrated")


def uncertainty_matrices(out, stages, order, names, labels) -> None:
    """Forgetting of uncertainty: AUSE (with forgetting, as the depth metrics) and coverage per
    stage, printed and added to ``out`` (``uncertainty_matrix``, tables)."""
    out["uncertainty_matrix"] = {}
    for key in UNCERTAINTY_MATRICES:
        matrix = [[_unc_value(stages[s]["results"][order[d]], key) for d in range(s + 1)]
                  for s in range(len(order))]
        out["uncertainty_matrix"][key] = matrix
        if key.startswith("ause"):
            text = format_matrix(names, labels, matrix, lifelong_summary(matrix, metric=key), key)
        else:
            text = format_stage_table(names, labels, matrix, f"{key} (after each stage)")
        out["tables"][key] = text
        print()
        print(text)
    out["tables"]["uncertainty_final"] = format_uncertainty_tables(uncertainty_rows(stages[-1]["results"]))
    print()
    print(f"uncertainty, final stage {labels[-1]}:")
    print(out["tables"]["uncertainty_final"])


def main(argv=None) -> dict:
    """The command (data-format errors end in one ``error:`` line: ``options.run_command``)."""
    return run_command(_main, argv)


def _main(argv=None) -> dict:
    """Parse ``argv`` and evaluate; returns the result dict (also written as JSON)."""
    args = build_parser().parse_args(argv)
    check_eval_args(args)
    device = resolve_device(args.device)
    register_custom_domains(args.data_root)
    if args.plots and not (args.uncertainty or args.calibrate_into):
        raise CLIError("--plots draws the uncertainty's reliability; add --uncertainty")
    if args.calibrate_into:
        args.uncertainty = True
        calibrate_stages(args, device)
    if args.matrix:
        return run_matrix(args, device)
    return run_single(args, device)


def calibrate_stages(args, device) -> None:
    """--calibrate-into: calibrated copies of the checkpoint (every stage with --matrix), which the
    evaluation then reads instead of the originals."""
    order = parse_letters(args.order, "--order") if args.order else None
    if args.matrix:
        runs_dir = Path(args.runs_dir) if args.runs_dir else Path(args.checkpoint).parent
        letters = order_of(args.checkpoint, args)
        copies = [calibrate_copy(p, args.calibrate_into, args, device)
                  for p in stage_paths(letters, args.strategy, runs_dir)]
        args.runs_dir, args.checkpoint = args.calibrate_into, str(copies[-1])
        return
    args.checkpoint = str(calibrate_copy(args.checkpoint, args.calibrate_into, args, device, order=order))
