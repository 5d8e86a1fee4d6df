"""The lifelong matrix of a learning order: every stage checkpoint (N, NK, NKS ...) on every domain
learned so far through :func:`evaluation.evaluate.evaluate_checkpoint`, with the forgetting and
backward transfer of each metric (``lifelong_summary``) and, with uncertainty, the forgetting of
the uncertainty measures. Returns the JSON-ready dict ``test.py --matrix`` prints and writes.
"""
from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from base.domains import get_domain
from base.errors import InputError
from evaluation.evaluate import EvalOptions, evaluate_checkpoint, format_matrix, lifelong_summary, stage_paths
from evaluation.uncertainty import format_stage_table
from evaluation.uncertainty import format_tables as format_uncertainty_tables
from metrics import format_table
from models import read_checkpoint
from models.checkpoint import checkpoint_meta

DEFAULT_MATRIX_METRICS = ("abs_rel", "rmse", "delta1")
ALWAYS = ("abs_rel", "rmse")  # matrices always computed (the report's), besides the ones asked for


def table_rows(results: dict):
    return [(f"{r['domain']} ({c})", r) for c, r in results.items()]


def uncertainty_rows(results: dict):
    return [(name, r["uncertainty"]) for name, r in table_rows(results)]


def stage_checkpoints(order: str, strategy: str, runs_dir) -> list[Path]:
    """Every stage checkpoint of ``order`` in ``runs_dir``; InputError naming the missing ones."""
    paths = stage_paths(order, strategy, runs_dir)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"--matrix needs every stage checkpoint of order {order} (strategy "
                         f"{strategy}) in {str(runs_dir)!r}; missing: {', '.join(missing)}")
    return paths


def is_authors_file(path) -> bool:
    """Whether a checkpoint is an authors' file (its heads named only by the learning order)."""
    return checkpoint_meta(read_checkpoint(path)[1]).authors


def evaluate_matrix(order: str, options: EvalOptions, device, runs_dir, strategy: str = "ours",
                    runtime=None, metrics=DEFAULT_MATRIX_METRICS, named_order: bool = False,
                    uncertainty: bool = False) -> dict:
    """Evaluate every stage of ``order`` (``strategy``'s files in ``runs_dir``) with the domain
    prior. ``named_order``: the order was given by the user, so it names the heads of every stage
    (else only of authors' files). ``metrics``: the matrices shown (``tables``), besides abs_rel and
    rmse. Returns the matrices, summaries, text tables and each stage's evaluate_checkpoint dict."""
    options = options.resolved()
    paths = stage_checkpoints(order, strategy, runs_dir)
    authors = [is_authors_file(p) for p in paths]
    stages = []
    outer = tqdm(total=len(paths), desc=f"matrix {order}", unit="stage", disable=options.quiet,
                 dynamic_ncols=True, position=0)
    for k, p in enumerate(paths, 1):
        sub_order = order[:k] if (named_order or authors[k - 1]) else None
        r = evaluate_checkpoint(p, options, device, runtime=runtime, order=sub_order,
                                bar_desc=f"stage {order[:k]}", uncertainty=uncertainty)
        if r["letters"] != order[:k]:
            raise InputError(f"{str(p)!r} learned {r['letters']}, expected the stage {order[:k]} of {order}")
        stages.append(r)
        outer.update(1)
    outer.close()
    names = [f"{get_domain(c).name} ({c})" for c in order]
    labels = [order[:k] for k in range(1, len(order) + 1)]
    out = {"order": order, "strategy": strategy, "runs_dir": str(runs_dir),
           "stages": [str(p) for p in paths], "stage_labels": labels,
           "domains": [get_domain(c).name for c in order], "scale": stages[-1]["scale"],
           "settings": options.rules(), "device": str(device), "max_images": options.max_images,
           "matrix": {}, "summary": {}, "stage_results": stages, "tables": {},
           "predictor": stages[-1]["predictor"]}
    for m in list(metrics) + [x for x in ALWAYS if x not in metrics]:
        matrix = [[stages[s]["results"][order[d]][m] for d in range(s + 1)] for s in range(len(order))]
        out["matrix"][m] = matrix
        out["summary"][m] = lifelong_summary(matrix, metric=m)
        out["tables"][m] = format_matrix(names, labels, matrix, out["summary"][m], m)
    out["tables"]["final"] = format_table(table_rows(stages[-1]["results"]))
    if uncertainty:
        uncertainty_matrices(out, stages, order, names, labels)
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
    stage, added to ``out`` (``uncertainty_matrix``, tables)."""
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
    out["tables"]["uncertainty_final"] = format_uncertainty_tables(uncertainty_rows(stages[-1]["results"]))
