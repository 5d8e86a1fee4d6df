"""Command-line options shared by the project's commands, and their resolution.

One home for each option group (checkpoint/order, runtime: device/precision/backend, the evaluation
conventions, sizes) and for turning parsed options into objects (device, order letters, the
checkpoint's letters and scale, a ``DepthPredictor``). Choices come from the registries
(``models.runtimes.BACKENDS``, ``prototypes.SELECTORS``, ``protocol``). User errors are
:class:`CLIError` (printed as one ``error:`` line, exit status 1).
"""
from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path

import torch

from data.domains import get_domain, load_domains_from_root, parse_order
from data.errors import InputError
from data.safeio import WriteError
from inference.predictor import DepthPredictor
from models import CheckpointError
from models.runtimes import AUTO, BACKENDS, RuntimeUnavailable
from inference.prototypes import SELECTORS
from engine.protocol import EVALUATION as EVAL_OPTIONS
from engine.protocol import PROTOCOLS
from engine.protocol import resolve as resolve_protocol


DEFAULT_CHECKPOINT = "runs/NKS.pth.tar"


CROP_CHOICES = ("default", "none", "eigen", "garg")


FULL_FRAME_CHOICES = ("none", "all", "kitti")


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


DEVICES = ("auto", "cpu", "cuda")  # resolve_device; lifelong.Dist for a training process
AMP_MODES = ("auto", "off", "bf16", "fp16")  # training autocast, resolved by lifelong.amp_settings
DEVICE_HELP = "where the network runs; auto takes CUDA when available"
AMP_HELP = ("mixed precision of training; auto is bf16 (or fp16 with loss scaling) on CUDA, off (fp32) on "
            "a CPU. bf16 on a CPU with native bf16 (AVX512-BF16/AMX) trains faster, elsewhere it is "
            "emulated and slower; bench/README.md gives the measured speed and what it changes")


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


def printable(text, keep: str = "\n\t") -> str:
    """``text`` with control characters (terminal escape codes, newlines in a file name) shown
    escaped; ``keep``: the ones left as they are (a message's own line breaks; "" for a file name)."""
    return "".join(c if c in keep or (c.isprintable() and c != "\x1b") else repr(c)[1:-1]
                   for c in str(text))


def error_line(exc) -> str:
    """An exception's message on one printable line. A DataLoader worker's error carries the worker's
    traceback ("Caught X in DataLoader worker process 0. Original Traceback ..."): its last line
    holds the original message."""
    text = str(exc)
    if "Original Traceback" in text:
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return printable(text, "")


# What the library raises for a user's input (data.errors.InputError: a setting, a data file or
# row, a checkpoint), a file it cannot write, a missing file, a runtime that is not installed.
USER_ERRORS = (InputError, WriteError, FileNotFoundError, RuntimeUnavailable)


def run_command(body, argv=None):
    """Run a command's ``body(argv)``: the library's user errors (:data:`USER_ERRORS`: a data file or
    index row in the wrong format or missing, a bad setting or checkpoint, a full disk) end in one
    ``error:`` line naming the file, not a traceback."""
    try:
        return body(argv)
    except USER_ERRORS as e:
        raise CLIError(error_line(e)) from None


ORDER_HELP = "learning order naming the heads of an authors' file, e.g. NKS"


def add_checkpoint_arguments(g, checkpoint_help: str, order_help: str = ORDER_HELP,
                             default: str | None = DEFAULT_CHECKPOINT) -> None:
    """--checkpoint (required when ``default`` is None) and --order (the heads of an authors' file)."""
    g.add_argument("--checkpoint", default=default, required=default is None, help=checkpoint_help)
    g.add_argument("--order", default=None, help=order_help)


def add_selector_arguments(g, selector_help: str, replay_help: str) -> None:
    """--selector (choices: prototypes.SELECTORS) and --replay-root (prototypes from replay rows)."""
    g.add_argument("--selector", default=None, choices=list(SELECTORS), help=selector_help)
    g.add_argument("--replay-root", default=None, help=replay_help)


def add_device_argument(g, help: str = DEVICE_HELP, default: str | None = "auto") -> None:
    """--device (choices DEVICES, default auto; None: the caller's own default, e.g. a preset's)."""
    g.add_argument("--device", default=default, choices=list(DEVICES), help=help)


def add_amp_argument(g, help: str = AMP_HELP) -> None:
    """--amp (choices AMP_MODES, default auto): the training engine's autocast."""
    g.add_argument("--amp", default="auto", choices=list(AMP_MODES), help=help)


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
    add_device_argument(g)
    g.add_argument("--no-fast", action="store_true",
                   help="use DepthPredictor's plain float32 path, without the speed-ups it applies by "
                        "default (BN folded into convs, channels_last, fused oneDNN kernels on a CPU, "
                        "bf16 where the device has native kernels: metrics within ~0.1 %% of float32); "
                        "for exact numbers")
    g.add_argument("--precision", default="auto", choices=list(PRECISIONS),
                   help="numeric precision asked of DepthPredictor (auto = its own default); ignored "
                        "with a warning when the installed DepthPredictor has no such option")
    g.add_argument("--backend", default=AUTO, choices=[AUTO] + list(BACKENDS),
                   help="what runs the network: auto (default) = the fastest measured for this CPU kind "
                        "(OpenVINO bf16 on AMX CPUs, ONNX Runtime on AVX2-only ones, else PyTorch; "
                        "PyTorch with --no-fast); torch; or ONNX graphs of the trunk and the chosen head "
                        "in onnxruntime / openvino (CPU; bench/README.md has the figures per CPU kind)")
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
    otherwise. Keys DepthPredictor does not take are dropped in :func:`make_predictor`.
    """
    opts = {}
    if getattr(args, "no_fast", False):
        opts["fast"] = False
    precision = getattr(args, "precision", "auto")
    if precision != "auto":
        opts["precision"] = precision
    backend = getattr(args, "backend", AUTO)
    if backend != AUTO:
        opts["backend"] = backend
    for item in getattr(args, "predictor_option", []) or []:
        if "=" not in item:
            raise CLIError(f"--predictor-option {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        opts[key.strip()] = _parse_value(value.strip())
    return opts


def _known_options(opts: dict) -> tuple[dict, list]:
    """(the options DepthPredictor takes, the names it does not): a --predictor-option key it
    does not know is dropped with a note rather than failing deep inside the constructor."""
    params = inspect.signature(DepthPredictor.__init__).parameters
    return ({k: v for k, v in opts.items() if k in params}, [k for k in opts if k not in params])


def make_predictor(path, args, device, order=None, prototypes=None, selector=None,
                   quiet=False) -> DepthPredictor:
    """DepthPredictor.from_checkpoint with the runtime options of ``args`` passed through."""
    ok, unknown = _known_options(predictor_options(args))
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
    """'NK' / 'N,K' / 'nyu,kitti' -> 'NK' (domains.parse_order: registered domains, no repeats)."""
    try:
        return "".join(spec.letter for spec in parse_order(str(text).strip()))
    except ValueError as e:
        raise CLIError(f"{what}: {e}") from None


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


def add_protocol_argument(parser: argparse.ArgumentParser, group=None) -> None:
    """--protocol (engine/protocol.py maps it to the individual options)."""
    (group or parser).add_argument(
        "--protocol", default="ours", choices=list(PROTOCOLS),
        help="ours: this project's procedure; authors: the released code's, quirks included (every "
             "difference is also an option of its own, and an option given explicitly wins; see "
             "README 'Where this implementation differs')")


def add_eval_arguments(p: argparse.ArgumentParser, g) -> None:
    """--protocol and the evaluation conventions (shared with test_inference.py). Their defaults
    are None: check_args fills them from the protocol (engine/protocol.py), explicit values win."""
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


def eval_settings(args) -> dict:
    return {"crop": args.crop, "cap": bool(args.cap), "aggregate": args.aggregate, "rmse": args.rmse,
            "pred_clamp": bool(args.pred_clamp), "delta": args.delta}


def parse_size(text: str, what="--size") -> tuple[int, int]:
    """'228x304' (H x W) -> (228, 304)."""
    try:
        h, w = (int(v) for v in str(text).lower().replace(",", "x").split("x"))
    except ValueError:
        raise CLIError(f"{what} {text!r}: expected HxW, e.g. 228x304") from None
    if h < 8 or w < 8:
        raise CLIError(f"{what} {text!r}: height and width must be at least 8 pixels")
    return h, w


def check_eval_args(args) -> None:
    """The evaluation options of test.py / test_inference.py: the protocol's values filled in, sizes checked."""
    # one place maps the protocol to the evaluation options (engine/protocol.py); explicit options win
    resolve_protocol(args, EVAL_OPTIONS, "authors" if args.authors_eval else None)
    if args.exact:
        args.no_fast = True
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.max_images is not None and args.max_images < 1:
        raise CLIError(f"--max-images must be at least 1, got {args.max_images}")
    if args.scale is not None and not args.scale > 0:
        raise CLIError(f"--scale must be positive, got {args.scale}")
