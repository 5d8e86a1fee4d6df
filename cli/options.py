"""Command-line options shared by the project's commands, and their conversion to settings.

One home for each option group's argparse declaration (checkpoint/order, runtime: device/precision/
backend, the evaluation conventions, sizes) and for turning parsed options into the library's
objects (order letters, ``RuntimeOptions``, ``EvalOptions``).
Help texts of settings live with their dataclass fields (``metadata["help"]``). Choices come from
the registries (``models.runtimes.BACKENDS``, ``prototypes.SELECTORS``, ``protocol``). User errors
are :class:`CLIError` (printed as one ``error:`` line, exit status 1).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math

from base.domains import load_domains_from_root, parse_order
from base.errors import InputError
from evaluation.evaluate import CROP_CHOICES, FULL_FRAME_CHOICES, EvalOptions
from inference.predictor import RuntimeOptions
from models.fast import PRECISIONS
from models.runtimes import AUTO, BACKENDS
from cli.errors import CLIError
from engine.options import AMP_MODES, DEVICES, StageOptions, precision_of_amp
from inference.prototypes import SELECTORS
from base.protocol import PROTOCOLS
from base.protocol import value as protocol_value


DEFAULT_CHECKPOINT = "runs/NKS.pth.tar"


def help_of(settings, name: str) -> str:
    """The help text of field ``name`` of a settings dataclass (its one home)."""
    return next(f for f in dataclasses.fields(settings) if f.name == name).metadata["help"]



DEVICE_HELP = help_of(StageOptions, "device")
TRAINING_PRECISION_HELP = help_of(StageOptions, "precision")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows '(default: X)' unless the help text already explains the default or there is none."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


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


class OlderAmp(argparse.Action):
    """--amp, the older spelling of a training's --precision (off is fp32): the value goes to
    ``precision``."""

    def __call__(self, parser, namespace, value, option_string=None):
        setattr(namespace, self.dest, precision_of_amp(value))


def add_training_precision_argument(g, help: str = TRAINING_PRECISION_HELP) -> None:
    """--precision (choices models.fast.PRECISIONS, default auto): the training engine's autocast;
    --amp (choices AMP_MODES), its older spelling, still accepted and left out of --help."""
    g.add_argument("--precision", default="auto", choices=list(PRECISIONS), help=help)
    add_older_amp_argument(g)


def add_older_amp_argument(g) -> None:
    """--amp auto|off|bf16|fp16, the older spelling of a training's --precision (off is fp32): accepted,
    not shown by --help."""
    g.add_argument("--amp", dest="precision", default="auto", choices=list(AMP_MODES), action=OlderAmp,
                   help=argparse.SUPPRESS)


def add_runtime_arguments(p: argparse.ArgumentParser) -> None:
    """--device, --no-fast, --precision, --predictor-option, --workers."""
    g = p.add_argument_group("runtime")
    add_device_argument(g)
    g.add_argument("--no-fast", action="store_true", help=help_of(RuntimeOptions, "fast"))
    g.add_argument("--precision", default="auto", choices=list(PRECISIONS),
                   help=help_of(RuntimeOptions, "precision"))
    g.add_argument("--backend", default=AUTO, choices=[AUTO] + list(BACKENDS),
                   help=help_of(RuntimeOptions, "backend"))
    g.add_argument("--predictor-option", action="append", default=[], metavar="KEY=VALUE",
                   help=help_of(RuntimeOptions, "extra"))
    g.add_argument("--workers", type=int, default=None,
                   help="data loader worker processes (default: 2 on CUDA, 0 on CPU)")


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def runtime_options(args, measure: bool = False) -> RuntimeOptions:
    """The runtime options of ``args`` (--no-fast, --precision, --backend, --predictor-option
    KEY=VALUE, the value parsed as JSON when it can be); ``measure``: ``--backend auto`` chosen by
    measurement on this machine (``RuntimeOptions.measure``: predict.py)."""
    extra = {}
    for item in getattr(args, "predictor_option", []) or []:
        if "=" not in item:
            raise CLIError(f"--predictor-option {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        extra[key.strip()] = _parse_value(value.strip())
    exact = hasattr(args, "protocol") and protocol_value(evaluation_protocol(args), "exact")
    return RuntimeOptions(fast=not (getattr(args, "no_fast", False) or exact),
                          precision=getattr(args, "precision", "auto"), backend=getattr(args, "backend", AUTO),
                          extra=extra, measure=measure)


def evaluation_protocol(args) -> str:
    """The protocol whose evaluation conventions apply: --authors-eval is the authors' evaluation."""
    return "authors" if getattr(args, "authors_eval", False) else args.protocol


def register_custom_domains(data_root) -> None:
    """Custom domains of <data_root>/domains.json, so their letters resolve."""
    try:
        load_domains_from_root(str(data_root))
    except (ValueError, FileNotFoundError) as e:
        raise CLIError(str(e)) from None


def parse_letters(text: str, what: str) -> str:
    """'NK' / 'N,K' / 'nyu,kitti' -> 'NK' (domains.parse_order: registered domains, no repeats)."""
    try:
        return "".join(spec.letter for spec in parse_order(str(text).strip()))
    except ValueError as e:
        raise CLIError(f"{what}: {e}") from None


def add_protocol_argument(parser: argparse.ArgumentParser, group=None) -> None:
    """--protocol (base/protocol.py maps it to the individual options)."""
    (group or parser).add_argument(
        "--protocol", default="ours", choices=list(PROTOCOLS),
        help="ours: this project's procedure; authors: the released code's, quirks included (every "
             "difference is also an option of its own, and an option given explicitly wins; see "
             "docs/PROTOCOL.md)")


def add_eval_arguments(p: argparse.ArgumentParser, g) -> None:
    """--protocol and the evaluation conventions (shared with test_inference.py). Their defaults
    are None: eval_options fills them from the protocol (base/protocol.py), explicit values win."""
    add_protocol_argument(p, g)
    g.add_argument("--crop", default=None, choices=list(CROP_CHOICES), help=help_of(EvalOptions, "crop"))
    g.add_argument("--cap", action=argparse.BooleanOptionalAction, default=None,
                   help=help_of(EvalOptions, "cap"))
    g.add_argument("--aggregate", default=None, choices=["image", "pixel"],
                   help=help_of(EvalOptions, "aggregate"))
    g.add_argument("--authors-eval", action="store_true",
                   help="the evaluation part of --protocol authors: KITTI on full frames, --crop none "
                        "--no-cap --aggregate pixel --rmse weighted --no-pred-clamp --delta le "
                        "--scannet-resize once, plain float32 forward")
    g.add_argument("--full-frame", nargs="?", const="all", default=None, choices=list(FULL_FRAME_CHOICES),
                   help=help_of(EvalOptions, "full_frame"))
    g.add_argument("--rmse", default=None, choices=["pooled", "weighted"], help=help_of(EvalOptions, "rmse"))
    g.add_argument("--pred-clamp", action=argparse.BooleanOptionalAction, default=None,
                   help=help_of(EvalOptions, "pred_clamp"))
    g.add_argument("--delta", default=None, choices=["lt", "le"], help=help_of(EvalOptions, "delta"))
    g.add_argument("--scannet-resize", default=None, choices=["twice", "once"],
                   help=help_of(EvalOptions, "scannet_resize"))


def parse_size(text: str, what="--size") -> tuple[int, int]:
    """'228x304' (H x W) -> (228, 304)."""
    try:
        h, w = (int(v) for v in str(text).lower().replace(",", "x").split("x"))
    except ValueError:
        raise CLIError(f"{what} {text!r}: expected HxW, e.g. 228x304") from None
    if h < 8 or w < 8:
        raise CLIError(f"{what} {text!r}: height and width must be at least 8 pixels")
    return h, w


def eval_options(args) -> EvalOptions:
    """The evaluation options of test.py / test_inference.py as settings: the protocol's values
    filled in (--authors-eval: the authors' evaluation), explicit options win, sizes checked. The
    protocol's plain float32 forward ("exact") is :func:`runtime_options`' (the fast path off)."""
    protocol = evaluation_protocol(args)
    names = [f.name for f in dataclasses.fields(EvalOptions)]
    return EvalOptions(**{k: getattr(args, k) for k in names}).resolved(protocol)


def checked_type(parse):
    """``parse`` (a library parser of an option's text) as an argparse ``type=``: its InputError one
    ``error:`` line naming the option (argparse would replace the message with its own)."""
    def checked(text):
        try:
            return parse(text)
        except InputError as e:
            raise CLIError(str(e)) from None
    checked.__name__ = parse.__name__
    return checked


def parse_interval(text) -> float:
    """--intervals PERCENT -> a coverage in (0, 1), or ValueError with the expected form."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not 0.0 < value < 100.0:
        raise ValueError(f"--intervals {text!r}: expected a central coverage in percent, between 0 and "
                         f"100 exclusive, e.g. 90")
    return value / 100.0


def add_interval_argument(p) -> None:
    """predict.py's --intervals (the predictor's option parser)."""
    p.add_argument("--intervals", default=None, metavar="PERCENT",
                   help="also write the central PERCENT %% interval of every pixel's depth as "
                        "<name>_depth_lower<P>/_upper<P> (.png 16-bit mm and .npy metres), from the "
                        "predicted uncertainty with the head's calibration fitted on whole frames (scale 1, "
                        "with a note, for checkpoints without one); predictions.json states what the "
                        "interval means and the coverage measured on this path (whole frames) for that "
                        "head, or that none was measured. Streams log each frame's median interval width "
                        "at this coverage (default 90)")
