"""Evaluate a Lifelong-MonoDepth checkpoint with the domain prior (each domain through its own head).

    python test.py --checkpoint runs/NKS.pth.tar --data-root datasets
    python test.py --checkpoint NKS.pth.tar --order NKS            # an authors' file (no metadata)
    python test.py --matrix --order NKS --runs-dir runs            # domain x stage matrix, forgetting, BWT
    python test.py --crop none --no-cap --aggregate pixel          # the authors' own evaluation

Every learned domain (or the subset given by --domains) is evaluated on its test split
(``get_dataset(letter, "test", data_root, train=False, scale)``) with the head of that domain,
taken from the checkpoint's learning order. Predictions come from the product's inference path
(``inference.DepthPredictor``) and are scored by ``evaluation.DomainEvaluator`` (bilinear
upsampling to the ground truth, optional caps and crops, per-image or per-pixel averaging).

``--matrix`` evaluates every stage checkpoint of a learning order (N, NK, NKS, or NK_<strategy>
... as named by ``lifelong.run_name``) on every domain learned so far and reports, per metric, the
domain x stage matrix, the final average, forgetting and backward transfer; the maths is the pure
function :func:`lifelong_summary`.

This module also holds the pieces test_inference.py and predict.py share (device choice,
predictor construction with the fast-path options, checkpoint order handling).
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import Subset
from tqdm import tqdm

from domains import get_domain, load_domains_from_root
from evaluation import DomainEvaluator
from inference import DepthPredictor
from models.runtimes import RuntimeUnavailable
from metrics import HIGHER_IS_BETTER, METRIC_NAMES, format_table
from models import CheckpointError, read_checkpoint
from safeio import WriteError, atomic_write, clean_stale_temps
from protocol import EVALUATION as EVAL_OPTIONS
from protocol import add_protocol_argument
from protocol import resolve as resolve_protocol

DEFAULT_CHECKPOINT = "runs/NKS.pth.tar"
DEFAULT_MATRIX_METRICS = "abs_rel,rmse,delta1"
CROP_CHOICES = ("default", "none", "eigen", "garg")
FULL_FRAME_CHOICES = ("none", "all", "kitti")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: X)' unless the help text already explains the default or there is none."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


class CLIError(SystemExit):
    """A user-facing error: the message is printed as ``error: ...`` and the exit status is 1."""

    def __init__(self, message: str):
        super().__init__(f"error: {message}")
        self.message = message


# ----------------------------------------------------------------------------------------------
# Shared CLI pieces (also used by test_inference.py and predict.py)
# ----------------------------------------------------------------------------------------------
def resolve_device(arg: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without CUDA is an error."""
    if arg == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda, but CUDA is not available on this machine (use --device cpu or auto)")
    if arg == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(arg)


def add_runtime_arguments(p: argparse.ArgumentParser) -> None:
    """--device, --no-fast, --precision, --predictor-option, --workers."""
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the network runs; auto takes CUDA when available")
    g.add_argument("--no-fast", action="store_true",
                   help="use DepthPredictor's plain float32 path, without the speed-ups it applies by "
                        "default (BN folded into convs, channels_last, fused oneDNN kernels on a CPU, "
                        "bf16 where the device has native kernels: metrics within ~0.1 %% of float32); "
                        "for exact numbers")
    g.add_argument("--precision", default="auto", choices=list(PRECISIONS),
                   help="numeric precision asked of DepthPredictor (auto = its own default); ignored "
                        "with a warning when the installed DepthPredictor has no such option")
    g.add_argument("--backend", default="torch", choices=["torch", "onnxruntime", "openvino"],
                   help="what runs the network: PyTorch, or float32 ONNX graphs of the trunk and the "
                        "chosen head in ONNX Runtime / OpenVINO (CPU; see bench/README.md for when "
                        "that is faster)")
    g.add_argument("--predictor-option", action="append", default=[], metavar="KEY=VALUE",
                   help="extra keyword argument for DepthPredictor.from_checkpoint (repeatable; the "
                        "value is parsed as JSON when it can be, e.g. channels_last=false)")
    g.add_argument("--workers", type=int, default=None,
                   help="data loader worker processes (default: 2 on CUDA, 0 on CPU)")


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def predictor_options(args) -> dict:
    """Keyword arguments that ask DepthPredictor for the requested speed/precision trade-off.

    Only what the user asked for is set, so the predictor's own defaults (the fast path) apply
    otherwise. Names are matched against the installed DepthPredictor in :func:`make_predictor`.
    """
    opts = {}
    if getattr(args, "no_fast", False):
        opts["fast"] = False
    precision = getattr(args, "precision", "auto")
    if precision != "auto":
        opts["precision"] = precision
    backend = getattr(args, "backend", "torch")
    if backend != "torch":
        opts["backend"] = backend
    for item in getattr(args, "predictor_option", []) or []:
        if "=" not in item:
            raise CLIError(f"--predictor-option {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        opts[key.strip()] = _parse_value(value.strip())
    return opts


# Alternative spellings a DepthPredictor may use for the generic requests above.
_NO_FAST_ALIASES = {"fast": False, "channels_last": False, "fuse": False, "fuse_bn": False,
                    "fuse_conv_bn": False, "use_fast_path": False}
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _parameters(fn, *more) -> tuple[set, bool]:
    """(explicit keyword names, accepts any keyword). A ``**kwargs`` function that forwards to
    others (``more``, e.g. DepthPredictor.__init__) is judged by the union of their signatures."""
    names, open_ = set(), False
    for f in (fn,) + more:
        params = inspect.signature(f).parameters
        names |= {k for k, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
        open_ = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        if not open_:
            break
    return names, open_


def _accepted(fn, kwargs: dict, *more) -> tuple[dict, list]:
    """(kwargs fn accepts, names it does not); everything is accepted by a **kwargs function."""
    names, open_ = _parameters(fn, *more)
    if open_:
        return dict(kwargs), []
    ok = {k: v for k, v in kwargs.items() if k in names}
    return ok, [k for k in kwargs if k not in names]


def _translate(fn, opts: dict, *more) -> dict:
    """Map the generic requests (fast, precision) onto the names fn actually has."""
    params, _ = _parameters(fn, *more)
    out = dict(opts)
    if "fast" in out and "fast" not in params and out["fast"] is False:
        del out["fast"]
        found = [k for k in _NO_FAST_ALIASES if k in params and k != "fast"]
        for k in found:
            out[k] = _NO_FAST_ALIASES[k]
        if not found and "precision" not in params and "dtype" not in params:
            out["fast"] = False  # reported as unsupported (there is no fast path to switch off)
        elif "precision" not in out and ("precision" in params or "dtype" in params):
            out["precision"] = "fp32"
    if "precision" in out and "precision" not in params and "dtype" in params:
        p = out.pop("precision")
        out["dtype"] = _DTYPES.get(p, p)
    return out


def make_predictor(path, args, device, order=None, prototypes=None, selector=None,
                   quiet=False) -> DepthPredictor:
    """DepthPredictor.from_checkpoint with the runtime options of ``args`` passed through.

    Options the installed DepthPredictor does not know are dropped with a warning (e.g. --no-fast
    before the fast path exists: the plain path is then the only one).
    """
    entry, init = DepthPredictor.from_checkpoint, DepthPredictor.__init__
    opts = _translate(entry, predictor_options(args), init)
    ok, unknown = _accepted(entry, opts, init)
    if unknown and not quiet:
        print(f"note: DepthPredictor.from_checkpoint has no option(s) {', '.join(unknown)}; "
              "ignored", file=sys.stderr)
    try:
        return DepthPredictor.from_checkpoint(path, order=order, device=device, selector=selector,
                                              prototypes=prototypes, **ok)
    except (CheckpointError, RuntimeUnavailable) as e:  # a bad file; a --backend not installed
        raise CLIError(str(e)) from None


def predictor_settings(predictor) -> dict:
    """The predictor's effective speed settings (fast path, precision, ...) when it reports them."""
    options = getattr(predictor, "options", None)
    return dict(options) if isinstance(options, dict) else {"fast": False, "precision": "float32"}


def check_checkpoint_path(path, what="checkpoint") -> Path:
    path = Path(path)
    if not path.is_file():
        hint = ("train one with train_N.py / train_NK.py / train_NKS.py (or run quickstart.py), "
                "or give --checkpoint PATH")
        raise CLIError(f"{what} {str(path)!r} not found; {hint}")
    return path


def register_custom_domains(data_root) -> None:
    """Custom domains of <data_root>/domains.json, so their letters resolve."""
    try:
        load_domains_from_root(str(data_root))
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None


def checkpoint_letters(meta: dict, path) -> str:
    """The learning order of a loaded checkpoint as domain letters (one per head)."""
    letters = meta.get("letters")
    if letters:
        return "".join(letters)
    names = meta.get("domains") or []
    if meta.get("format", "authors") == "authors" or not names or \
            all(str(n).startswith("domain") for n in names):
        stem = Path(path).name.split(".")[0].split("_")[0]
        example = stem if stem.isalpha() and stem.isupper() else "NKS"
        raise CLIError(f"checkpoint {str(path)!r} does not say which domain each head belongs to (an "
                       f"authors' state_dict-only file); name the heads in learning order with "
                       f"--order, e.g. --order {example}")
    try:
        return "".join(get_domain(n).letter for n in names)
    except ValueError as e:
        raise CLIError(f"checkpoint {str(path)!r}: {e}") from None


def parse_letters(text: str, what: str) -> str:
    """'NK' / 'N,K' / 'nyu,kitti' -> 'NK' (every domain must be registered)."""
    text = str(text).strip()
    items = [t.strip() for t in text.split(",")] if "," in text else list(text)
    if not items or any(not t for t in items):
        raise CLIError(f"{what} {text!r}: expected domain letters such as NKS")
    letters = []
    for item in items:
        try:
            letters.append(get_domain(item).letter)
        except ValueError as e:
            raise CLIError(f"{what}: {e}") from None
    if len(set(letters)) != len(letters):
        raise CLIError(f"{what} {text!r} repeats a domain")
    return "".join(letters)


def default_scale(meta: dict) -> float:
    """The checkpoint's training scale (options.scale of the project format), else 1.0."""
    options = meta.get("options") or {}
    try:
        return float(options.get("scale", 1.0)) if isinstance(options, dict) else 1.0
    except (TypeError, ValueError):
        return 1.0


def worker_count(args, device) -> int:
    if args.workers is not None:
        return max(0, args.workers)
    return 2 if device.type == "cuda" else 0


def full_frame_for(letter, full_frame) -> bool:
    """Whether domain ``letter`` is evaluated on whole frames: --full-frame all / kitti / none."""
    if full_frame in (None, False, "none"):
        return False
    if full_frame == "kitti":
        return get_domain(letter).transform == "kitti"
    return True


def test_dataset(letter, data_root, scale, max_images=None, full_frame=False, scannet_resize="twice"):
    """The test split of a domain (deterministic test transform), optionally its first images.
    ``full_frame``: a bool, or a --full-frame value (none / all / kitti)."""
    from loaders import DatasetFormatError, get_dataset
    full_frame = full_frame_for(letter, full_frame)
    try:
        ds = get_dataset(letter, "test", str(data_root), train=False, scale=scale,
                         **({"full_frame": True} if full_frame else {}),
                         **({"scannet_resize": scannet_resize} if scannet_resize != "twice" else {}))
    except (FileNotFoundError, DatasetFormatError, ValueError) as e:
        raise CLIError(str(e)) from None
    if len(ds) == 0:
        raise CLIError(f"the test index of domain {letter} under {str(data_root)!r} lists no image")
    if max_images is not None and max_images < len(ds):
        ds = Subset(ds, range(max(1, max_images)))
    return ds


def make_loader(ds, batch_size, workers, device):
    from loaders import get_loader
    return get_loader(ds, batch_size=batch_size, shuffle=False, workers=workers, device=device.type)


def evaluate_split(predictor, loader, head: int, spec, crop="default", cap=True, aggregate="image",
                   selection=False, bar=None, rmse="pooled", pred_clamp=True, delta="lt") -> dict:
    """Errors of one domain's test images.

    With the domain prior every image goes through head ``head``. With ``selection`` each image
    also goes to the head chosen by the nearest prototype (DepthPredictor.predict(domain=None)),
    scored separately; when every image of a batch chose ``head`` the prior's prediction is the
    same and is reused.

    Returns ``{"prior": metrics, "selected": metrics or None, "chosen": [count per head] or None}``.
    """
    rules = {"crop": crop, "cap": cap, "aggregate": aggregate, "rmse": rmse, "pred_clamp": pred_clamp,
             "delta": delta}
    prior = DomainEvaluator(spec, **rules)
    selected = DomainEvaluator(spec, **rules) if selection else None
    chosen_counts = [0] * predictor.num_domains if selection else None
    for batch in loader:
        images, gt = batch["image"], batch["depth"]
        try:
            if selection:
                out = predictor.predict(images, domain=None, with_uncertainty=False)
                chosen = out["domain"].cpu()
                for c in chosen.tolist():
                    chosen_counts[c] += 1
                selected.add_batch(out["depth"], gt, batch.get("window"))
                if bool((chosen == head).all()):
                    prior_depth = out["depth"]
                else:
                    prior_depth = predictor.predict(images, domain=head, with_uncertainty=False)["depth"]
            else:
                prior_depth = predictor.predict(images, domain=head, with_uncertainty=False)["depth"]
        except ValueError as e:  # e.g. no prototypes
            raise CLIError(str(e)) from None
        prior.add_batch(prior_depth, gt, batch.get("window"))
        if bar is not None:
            bar.update(images.shape[0])
    try:
        return {"prior": prior.result(), "selected": selected.result() if selection else None,
                "chosen": chosen_counts}
    except ValueError as e:
        raise CLIError(f"domain {spec.letter}: {e}") from None


def round_floats(obj, digits=6):
    if isinstance(obj, float):
        return obj if not math.isfinite(obj) else round(obj, digits)
    if isinstance(obj, dict):
        return {k: round_floats(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [round_floats(v, digits) for v in obj]
    return obj


def write_json(path, payload) -> None:
    # complete or not at all, a failed write (full disk) named in one error line (safeio); the
    # temp files of killed earlier writes in that folder go first
    clean_stale_temps(Path(path).parent)
    try:
        with atomic_write(path, "w", encoding="utf-8") as f:
            json.dump(round_floats(payload), f, indent=2)
            f.write("\n")
    except WriteError as e:
        raise CLIError(str(e)) from None


def eval_settings(args) -> dict:
    return {"crop": args.crop, "cap": bool(args.cap), "aggregate": args.aggregate, "rmse": args.rmse,
            "pred_clamp": bool(args.pred_clamp), "delta": args.delta}


def describe_predictor(options: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items())


def describe_settings(settings: dict, scale: float) -> str:
    extra = "".join([f", {settings['rmse']} RMSE" if settings.get("rmse", "pooled") != "pooled" else "",
                     "" if settings.get("pred_clamp", True) else ", predictions unclamped",
                     ", delta <=" if settings.get("delta") == "le" else ""])
    return (f"crop {settings['crop']}, {'capped' if settings['cap'] else 'no cap'}, "
            f"{settings['aggregate']}-averaged{extra}, scale {scale:g}")


# ----------------------------------------------------------------------------------------------
# Lifelong summary (pure)
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------
def add_eval_arguments(p: argparse.ArgumentParser, g) -> None:
    """--protocol and the evaluation conventions (shared with test_inference.py). Their defaults
    are None: check_args fills them from the protocol (protocol.py), explicit values win."""
    add_protocol_argument(p, g)
    g.add_argument("--crop", default=None, choices=list(CROP_CHOICES),
                   help="default = the domain's convention (Eigen for NYU, Garg for KITTI, none "
                        "for ScanNet); none/eigen/garg force one for every domain (authors protocol: none)")
    g.add_argument("--cap", action=argparse.BooleanOptionalAction, default=None,
                   help="cap ground truth and prediction to the domain's depth range (NYU/ScanNet "
                        "1e-3..10 m, KITTI 1e-3..80 m); default on (authors protocol: off)")
    g.add_argument("--aggregate", default=None, choices=["image", "pixel"],
                   help="image: mean of per-image errors (the field's standard); pixel: every valid "
                        "pixel of the set weighted equally (the authors' way); default image "
                        "(authors protocol: pixel)")
    g.add_argument("--authors-eval", action="store_true",
                   help="the evaluation part of --protocol authors: KITTI on full frames, --crop none "
                        "--no-cap --aggregate pixel --rmse weighted --no-pred-clamp --delta le "
                        "--scannet-resize once, plain float32 forward")
    g.add_argument("--full-frame", nargs="?", const="all", default=None, choices=list(FULL_FRAME_CHOICES),
                   help="evaluate on whole (resized) test frames instead of the network-input crop: "
                        "all (the value when given alone) or kitti (KITTI only, as the authors' test "
                        "loaders; NYU and ScanNet keep their centre crops); default none (authors "
                        "protocol: kitti); use --batch-size 1 if frame sizes differ")
    g.add_argument("--rmse", default=None, choices=["pooled", "weighted"],
                   help="with --aggregate pixel: pooled = sqrt of the mean squared error of all "
                        "pixels; weighted = each image's RMSE weighted by its valid pixels (the "
                        "authors'); default pooled (authors protocol: weighted)")
    g.add_argument("--pred-clamp", action=argparse.BooleanOptionalAction, default=None,
                   help="clamp predictions to >= 1e-6 m before every metric; --no-pred-clamp as the "
                        "authors (a negative prediction then passes the delta tests and makes the log "
                        "metrics NaN); default on (authors protocol: off)")
    g.add_argument("--delta", default=None, choices=["lt", "le"],
                   help="delta test max(p/g, g/p) < 1.25^k (lt) or <= (le, the authors'); default lt "
                        "(authors protocol: le)")
    g.add_argument("--scannet-resize", default=None, choices=["twice", "once"],
                   help="ScanNet colour: twice = to the depth size, then to the input recipe's size "
                        "(ours); once = straight to the recipe's size (the authors'); default twice "
                        "(authors protocol: once)")


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
    g.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                   help="checkpoint to evaluate (project format, or an authors' state_dict-only file "
                        "with --order); with --matrix: the final stage, whose folder is the default "
                        f"--runs-dir (default: {DEFAULT_CHECKPOINT})")
    g.add_argument("--order", default=None,
                   help="learning order as domain letters, e.g. NKS: names the heads of an authors' "
                        "file (required for those), must agree with a project checkpoint; with "
                        "--matrix, the order whose stages are evaluated (default: the checkpoint's)")
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
                   help="strategy suffix of the stage files as lifelong.run_name names them "
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


def check_args(args) -> None:
    # one place maps the protocol to the evaluation options (protocol.py); explicit options win
    resolve_protocol(args, EVAL_OPTIONS, "authors" if args.authors_eval else None)
    if args.exact:
        args.no_fast = True
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.max_images is not None and args.max_images < 1:
        raise CLIError(f"--max-images must be at least 1, got {args.max_images}")
    if args.scale is not None and not args.scale > 0:
        raise CLIError(f"--scale must be positive, got {args.scale}")


def evaluate_checkpoint(path, args, device, order=None, domains=None, bar_desc="", quiet=False) -> dict:
    """Evaluate one checkpoint with the domain prior; returns the JSON-ready result dict."""
    check_checkpoint_path(path)
    predictor = make_predictor(path, args, device, order=order, quiet=quiet)
    meta = predictor.meta
    letters = checkpoint_letters(meta, path)
    subset = letters if domains is None else domains
    missing = [c for c in subset if c not in letters]
    if missing:
        raise CLIError(f"--domains: {', '.join(missing)} not learned by {str(path)!r} "
                       f"(its domains, in order: {letters})")
    scale = args.scale if args.scale is not None else default_scale(meta)
    datasets = {c: test_dataset(c, args.data_root, scale, args.max_images, args.full_frame,
                                args.scannet_resize) for c in subset}
    total = sum(len(ds) for ds in datasets.values())
    workers = worker_count(args, device)
    settings = eval_settings(args)
    results = {}
    bar = tqdm(total=total, desc=bar_desc or f"test {Path(path).name}", unit="img",
               disable=args.quiet, dynamic_ncols=True, leave=False)
    t0 = time.perf_counter()
    for c in subset:
        head = letters.index(c)
        spec = get_domain(c)
        loader = make_loader(datasets[c], args.batch_size, workers, device)
        r = evaluate_split(predictor, loader, head, spec, selection=False, bar=bar, **settings)
        results[c] = dict(r["prior"], domain=spec.name, letter=c, head=head)
    bar.close()
    return {
        "checkpoint": str(path), "letters": letters, "domains": [get_domain(c).name for c in letters],
        "format": meta.get("format"), "strategy": meta.get("strategy"), "scale": scale,
        "device": str(device), "settings": settings, "full_frame": args.full_frame,
        "protocol": args.protocol, "scannet_resize": args.scannet_resize,
        "predictor": predictor_settings(predictor),
        "max_images": args.max_images, "seconds": time.perf_counter() - t0, "results": results,
    }


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


def stage_paths(order: str, strategy: str, runs_dir) -> list[Path]:
    """The checkpoint of every stage of ``order`` (lifelong.run_name's names)."""
    from lifelong import run_name
    return [Path(runs_dir) / f"{run_name(order[:k], strategy)}.pth.tar" for k in range(1, len(order) + 1)]


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
    check_args(args)
    device = resolve_device(args.device)
    register_custom_domains(args.data_root)
    if args.matrix:
        return run_matrix(args, device)
    return run_single(args, device)


if __name__ == "__main__":
    main()
