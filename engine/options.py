"""The settings of one training stage, declared once: :class:`StageOptions`.

Each field is one option of the training commands (train_N.py, train_NK.py, train_NKS.py): its
default, and in ``metadata`` its help text, its help group and its choices, from which cli/train.py
builds the argparse parser. :func:`resolve_options` fills the values that depend on others (order
letters, batch size, --out, the run folder, --prior, the protocol's options) and refuses values that
cannot give a useful run (:func:`check_values`); :func:`check_paths` refuses to overwrite what the
run did not make. Both raise :class:`base.errors.InputError` naming the option.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from base.domains import DEFAULT_DATA_ROOT, load_domains_from_root, parse_order, run_name
from base.errors import InputError
from base.images import scaled_size
from inference.prototypes import DEFAULT_SELECT_DESCRIPTOR, SELECT_DESCRIPTORS
from loaders import rendered_scale_hint
from models.fast import PRECISIONS
from models.resnet import ENCODERS
from base.protocol import DATA as PROTOCOL_DATA
from base.protocol import PROTOCOLS
from base.protocol import TRAINING as PROTOCOL_TRAINING
from base.protocol import resolve as resolve_protocol

STRATEGIES = {
    # name: (distil old heads on new images, replay old buffers, help)
    "ours": (True, True, "distillation + replay + uncertainty (the paper's method)"),
    "finetune": (False, False, "new head only; no distillation, no replay (lower bound)"),
    "distill": (True, False, "distillation without replay (LwF-like)"),
    "replay": (False, True, "replay without distillation"),
    "joint": (False, False, "all domains' training data at once (upper bound)"),
}
# Loss weights of the paper for old domain j: 10 for the first domain's terms, 100 for the second's
# when learning a third. Further old domains reuse the last weight.
DEFAULT_OLD_WEIGHTS = "10,100"
DEVICES = ("auto", "cpu", "cuda")  # engine.processes.resolve_device
# The training precision (engine.processes.amp_settings) takes inference's choices (models.fast.PRECISIONS:
# auto, fp32, bf16, fp16). --amp is its older spelling (auto, off, bf16, fp16; off is fp32), still accepted.
AMP_MODES = ("auto", "off", "bf16", "fp16")


def precision_of_amp(value: str) -> str:
    """The --precision value of an --amp value (the older spelling: off is fp32, the rest as is)."""
    return "fp32" if value == "off" else value

# help groups of the training commands, in the order --help lists them
LEARN, DATA, OPTIMISATION, MODEL, RUN = ("what to learn", "data", "optimisation (defaults are the paper's)",
                                         "model", "run")
PROTOCOL = "protocol (docs/PROTOCOL.md)"

FIRST_ORDER_HELP = ("the domain to learn first, a letter: N (NYU-v2), K (KITTI), S (ScanNet) or a custom one "
                    "from <data-root>/domains.json (default {default})")
ORDER_HELP = ("learning order as domain letters; the last letter is the domain learned by this stage, the "
              "others must be the prior model's domains in order (default {default}); any length, e.g. "
              "NKSX learns a fourth, custom domain X from <data-root>/domains.json")


def option(default, help: str, group: str, choices=None, first_help=None, declared=None, **cli):
    """A field of StageOptions: its default; in its metadata the help, the group, the choices,
    ``first_help`` (the help of a first stage's command, when it differs), ``declared`` (the
    function that declares the option where another command shares it) and argparse extras
    (``cli``: nargs, const)."""
    meta = {"help": help, "group": group, "cli": cli, "first_help": first_help, "declared": declared}
    if choices is not None:
        meta["choices"] = tuple(choices)
    return field(default=default, metadata=meta)


def resolved(default, what: str):
    """A field filled by resolve_options (no command-line option of its own)."""
    return field(default=default, metadata={"resolved": what})


@dataclass
class StageOptions:
    """Every setting of one training stage (saved as options.json beside the run and in the checkpoint)."""
    # ---- what to learn
    order: str | None = option(None, ORDER_HELP, LEARN, first_help=FIRST_ORDER_HELP)
    strategy: str = option("ours", "; ".join(f"{k}: {v[2]}" for k, v in STRATEGIES.items()), LEARN,
                           choices=STRATEGIES)
    prior: str | None = option(None, "checkpoint of the previous stage (default: <runs-dir>/<order minus last "
                                     "letter>[_strategy].pth.tar). Authors' files need --order to name their "
                                     "domains", LEARN)
    out: str | None = option(None, "final checkpoint path (default: <runs-dir>/<order>[_strategy].pth.tar)", LEARN)
    runs_dir: str = option("runs", "folder of checkpoints and run folders", LEARN)
    shared_head: bool = option(False, "with --strategy joint: one head for all domains (the single-head "
                                      "baseline)", LEARN)
    # ---- data
    data_root: str = option(DEFAULT_DATA_ROOT, "folder with the index CSVs (python synthetic.py --out "
                                        "datasets/synthetic makes a synthetic one)", DATA)
    scale: float = option(1.0, "input size factor: 1.0 is the paper's 228x304 (NYU/ScanNet) and 320x480 "
                               "(KITTI); 0.5 suits a CPU", DATA)
    replay_size: int = option(500, "replay buffer per old domain (first rows of its replay CSV)", DATA)
    val_images: int = option(50, "images per domain held out of the training rows for per-epoch validation "
                                 "(never the test split); 0 disables validation", DATA)
    val_seed: int = option(0, "seed of the held-out validation draw (kept fixed across stages)", DATA)
    workers: int = option(2, "data loader worker processes", DATA)
    # ---- optimisation
    epochs: int = option(20, "epochs over the new domain's data", OPTIMISATION)
    max_steps: int | None = option(None, "stop after this many optimiser steps in total (short runs, CI)",
                                   OPTIMISATION)
    batch_size: int | None = option(None, "images per process per step and per replay batch (default 8; 4 "
                                          "from the third domain on)", OPTIMISATION)
    grad_accum: int = option(1, "micro-batches per optimiser step; K emulates K processes in one, so the "
                                "global batch is batch-size x K x processes", OPTIMISATION)
    lr: float = option(1e-4, "Adam learning rate", OPTIMISATION)
    lr_step: int = option(5, "halve the learning rate every N epochs", OPTIMISATION)
    lr_gamma: float = option(0.5, "factor of each learning-rate step", OPTIMISATION)
    weight_decay: float = option(1e-4, "Adam weight decay", OPTIMISATION)
    distill_weights: str = option(DEFAULT_OLD_WEIGHTS, "comma-separated weights of the old domains' "
                                                       "distillation terms, in learning order; the last "
                                                       "repeats for further domains", OPTIMISATION)
    replay_weights: str = option(DEFAULT_OLD_WEIGHTS, "comma-separated weights of the old domains' replay "
                                                      "terms, in learning order", OPTIMISATION)
    # ---- model
    encoder: str = option("resnet34", "encoder of a first stage (later stages take the prior's)", MODEL,
                          choices=sorted(ENCODERS))
    pretrained: str | None = option(None, "ImageNet weights of the encoder, a local torchvision file such as "
                                          "resnet34-b627a593.pth; without it the encoder starts from random "
                                          "weights", MODEL)
    init_depth_bias: str | None = option(
        None, "auto (default; authors protocol: off): a new head's depth output starts at the median "
              "ground-truth depth of its domain (from up to 32 training samples) instead of ~0 m. The "
              "upstream code starts from PyTorch's default; from ~0 m a fresh head needs very many steps "
              "to reach the metre range of an outdoor domain (about 20 m for KITTI)", MODEL,
        choices=("auto", "off"))
    proto_images: int = option(200, "images per domain used for the stored domain prototypes", MODEL)
    frame_images: int | None = option(None, "replay images per domain (5 variants each) of the whole-frame "
                                            "selector statistics computed at the stage's end; default: "
                                            "--proto-images, at most 100 (the budget measured in "
                                            "docs/BENCHMARKS.md; give --proto-images' value for the rule "
                                            "before the budget)", MODEL)
    frame_area: int | None = option(None, "at most this many pixels per frame through the trunk for the "
                                          "whole-frame selector statistics (and so for the queries' "
                                          "selection input); default 19200 (160x120); 0: the first head's "
                                          "whole trained frame whatever its size (the rule before the "
                                          "budget: 428k pixels for a model that learned KITTI first)", MODEL)
    frame_selector: str = option(DEFAULT_SELECT_DESCRIPTOR, "what the whole-frame selector statistics choose a head "
                                 "on: fused+layer1 (default) the pooled fused features joined with the encoder's "
                                 "layer1 statistics (the out-of-domain descriptor); fused, the fused features "
                                 "alone (the rule before; docs/BENCHMARKS.md#your-own-domain)", MODEL,
                                 choices=SELECT_DESCRIPTORS)
    # ---- run
    device: str = option("auto", "where the network runs; auto takes CUDA when available", RUN, choices=DEVICES)
    precision: str = option("auto", "precision of training (autocast); auto is bf16 (or fp16 with loss scaling) on "
                                    "CUDA, fp32 on a CPU. bf16 on a CPU with native bf16 (AVX512-BF16/AMX) trains "
                                    "faster, elsewhere it is emulated and slower; bench/README.md gives the "
                                    "measured speed and what it changes (--amp auto|off|bf16|fp16: the older "
                                    "spelling, off = fp32, still accepted)", RUN, choices=PRECISIONS)
    channels_last: str = option("auto", "memory layout of the student's training: on (NHWC, faster oneDNN "
                                        "convolutions on a CPU; the same arithmetic, rounded in another "
                                        "order), off (NCHW, the layout before this option); auto: per CPU "
                                        "kind (models/hardware.py, off on every kind so far), off on CUDA",
                                RUN, choices=("auto", "on", "off"))
    seed: int = option(0, "seed of weights, data order and augmentation", RUN)
    resume: str | None = option(None, "resume an interrupted stage from its run folder's last.pth.tar (or a "
                                      "path)", RUN, nargs="?", const="auto")
    overwrite: bool = option(False, "replace an existing --out checkpoint and start the run folder over (its "
                                    "log.jsonl and resume state); without it such a run stops with an error",
                             RUN)
    allow_changes: bool = option(False, "with --resume: continue although --scale, --data-root, --encoder, "
                                        "--batch-size or --lr differ from the interrupted run's (each change "
                                        "is printed); without it such a resume stops with an error, since the "
                                        "checkpoint would describe only the last settings", RUN)
    on_nonfinite: str = option("stop", "a NaN/inf loss or gradient: stop (save the state before that step "
                                       "and name the batch's files) or skip the batch's update and go on", RUN,
                               choices=("stop", "skip"))
    quiet: bool = option(False, "no progress bars", RUN)
    # ---- protocol: defaults None are filled from --protocol by resolve_options; an explicit value wins
    protocol: str = option("ours", "the training procedure, ours or authors: base/protocol.py maps it to the options below",
                           PROTOCOL, choices=PROTOCOLS, declared="cli.options.add_protocol_argument")
    reinit_old_heads: bool | None = option(
        None, "re-initialise every old head at the start of a later stage, as upstream's "
              "model_ll(copy.deepcopy(old)) does (only the encoder and fusion are kept); default off "
              "(authors protocol: on)", PROTOCOL)
    bn_all_heads: bool | None = option(
        None, "run every head (without gradient) on every batch, new and replayed, so that all heads' "
              "BatchNorm running statistics move on every batch as upstream's whole-network forward does; "
              "default off (authors protocol: on)", PROTOCOL)
    replay_exhaust: str | None = option(
        None, "cycle: each replay buffer is cycled for the whole epoch (default); authors: each epoch "
              "replays every buffer once, then stops replaying for the rest of the epoch and sets every "
              "distillation weight to the first one (upstream's third stage: 100 -> 10)", PROTOCOL,
        choices=("cycle", "authors"))
    drop_last: bool | None = option(
        None, "drop the partial last batch of an epoch (default); --no-drop-last trains on it, as upstream "
              "(single process without --grad-accum only)", PROTOCOL)
    scannet_resize: str | None = option(
        None, "ScanNet colour: twice = to the depth size, then to 320x240 (default); once = straight to "
              "320x240, as upstream", PROTOCOL, choices=("twice", "once"))
    nyu_rotation: str | None = option(
        None, "interpolation of the NYU image rotation: bilinear (default) or spline = "
              "scipy.ndimage.rotate(order=2), as upstream (depth stays nearest neighbour)", PROTOCOL,
        choices=("bilinear", "spline"))
    # ---- filled by resolve_options
    order_given: bool = resolved(True, "False when order is a command's default, not the caller's: an "
                                       "authors' prior (no metadata) then cannot be named")
    run_dir: str | None = resolved(None, "the run folder: --out without .pth.tar")
    # the older name of ``precision`` (its values auto, off, bf16, fp16; off is fp32): StageOptions(amp=...)
    amp: dataclasses.InitVar[str | None] = None

    def __post_init__(self, amp):
        if amp is not None:
            if self.precision not in ("auto", precision_of_amp(amp)):
                raise InputError(f"--amp {amp} and --precision {self.precision}: give one (--amp is the older "
                                 f"spelling of --precision; off is fp32)")
            self.precision = precision_of_amp(amp)

    @classmethod
    def from_record(cls, record: dict, **overrides) -> "StageOptions":
        """The settings a checkpoint or options.json recorded (keys of other versions ignored, missing
        ones at their defaults, the protocol's options filled in), with ``overrides`` applied."""
        names = {f.name for f in dataclasses.fields(cls)} | {"amp"}
        merged = dict(record, **overrides)
        if "precision" in merged and "amp" in record and "amp" not in overrides:
            merged.pop("amp")  # a record of both names: the newer one
        values = {k: v for k, v in merged.items() if k in names}
        opts = cls(**values)
        resolve_protocol(opts, list(PROTOCOL_TRAINING) + list(PROTOCOL_DATA))
        return opts


def option_fields() -> list:
    """The fields of StageOptions that are options (every one but those resolve_options fills)."""
    return [f for f in dataclasses.fields(StageOptions) if "resolved" not in f.metadata]


def flag(name: str) -> str:
    """The command-line spelling of a field: max_steps -> --max-steps."""
    return "--" + name.replace("_", "-")


def as_argv(options: StageOptions, names) -> list[str]:
    """The command-line arguments that set fields ``names`` of ``options`` (in that order), as the
    training commands parse them: a float as ``:g``, True as the bare flag, None and False (the
    options' "not given") left out; a protocol switch (default None) set False as ``--no-...``."""
    fields = {f.name: f for f in dataclasses.fields(StageOptions)}
    argv = []
    for name in names:
        value = getattr(options, name)
        if value is True:
            argv.append(flag(name))
        elif value is False and fields[name].default is None:
            argv.append("--no-" + flag(name)[2:])
        elif value is not None and value is not False:
            argv += [flag(name), f"{value:g}" if isinstance(value, float) else str(value)]
    return argv


def data_options(opts) -> dict:
    """The protocol's data options for get_dataset."""
    return {"scannet_resize": opts.scannet_resize or "twice", "nyu_rotation": opts.nyu_rotation or "bilinear"}


def drop_last(opts) -> bool:
    return opts.drop_last is not False


def parse_weights(text: str, n: int) -> list[float]:
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values:
        raise ValueError(f"no weights in {text!r}")
    return [values[min(j, len(values) - 1)] for j in range(n)]


def order_specs(opts) -> list:
    """The domains of ``opts.order`` (letters "NKS" or names "nyu,kitti"), the custom domains of
    the data root registered first."""
    try:
        load_domains_from_root(opts.data_root)
    except (OSError, ValueError) as err:
        raise InputError(str(err)) from None
    if opts.order is None:
        raise InputError("--order: no learning order given, e.g. N, NK or NKS")
    order = opts.order.strip()
    try:
        return parse_order(order)
    except ValueError as err:
        raise InputError(f"--order {order!r}: {err}") from None


def resolve_options(options: StageOptions) -> StageOptions:
    """A copy of ``options`` with the defaults that depend on other options filled in (order
    letters, batch size, --out, the run folder, --prior, the protocol's options), its values checked."""
    if not isinstance(options, StageOptions):
        raise InputError(f"train_stage takes a StageOptions, got {type(options).__name__}")
    opts = dataclasses.replace(options)
    check_types(opts)  # before anything else looks at a value (and before the run folder exists)
    specs = order_specs(opts)
    if opts.shared_head and opts.strategy != "joint":
        raise InputError("--shared-head is a joint-training baseline; use it with --strategy joint")
    letters = opts.order = "".join(s.letter for s in specs)
    if opts.batch_size is None:
        opts.batch_size = 8 if len(letters) < 3 else 4
    check_choices(opts)
    name = run_name(letters, opts.strategy) + ("_shared" if opts.shared_head else "")
    runs = Path(opts.runs_dir)
    opts.out = str(opts.out or runs / f"{name}.pth.tar")
    opts.run_dir = str(Path(opts.out).with_suffix("").with_suffix(""))
    if opts.prior is None and len(letters) > 1 and opts.strategy != "joint":
        opts.prior = str(runs / f"{run_name(letters[:-1], opts.strategy)}.pth.tar")
    check_values(opts, specs)
    resolve_protocol(opts, list(PROTOCOL_TRAINING) + list(PROTOCOL_DATA))
    return opts


def check_types(opts) -> None:
    """Each setting of the declared type (as the command line's parser would give it), an
    InputError naming the option otherwise; a path (pathlib.Path, os.PathLike) where a str is
    declared becomes its str (a data root, --out, a checkpoint)."""
    import os
    for f in dataclasses.fields(opts):
        value, declared = getattr(opts, f.name), str(f.type)
        kinds = {k.strip() for k in declared.split("|")}
        if value is None and "None" in kinds:
            continue
        if "str" in kinds and isinstance(value, os.PathLike):
            setattr(opts, f.name, os.fspath(value))
            continue
        ok = (("str" in kinds and isinstance(value, str))
              or ("bool" in kinds and isinstance(value, bool))
              or ("int" in kinds and isinstance(value, int) and not isinstance(value, bool))
              or ("float" in kinds and isinstance(value, (int, float)) and not isinstance(value, bool)))
        if not ok and kinds - {"str", "bool", "int", "float", "None"}:
            continue  # a type this check does not know: left to the later checks
        if not ok:
            raise InputError(f"--{f.name.replace('_', '-')} {value!r}: expected {declared.replace(' | None', '')} "
                             f"(StageOptions.{f.name}), got {type(value).__name__}")


def _fail(option: str, value, expected: str):
    raise InputError(f"{option} {value!r}: expected {expected}")


def check_choices(opts) -> None:
    """A value outside a field's choices (what argparse refuses on the command line)."""
    for f in option_fields():
        value = getattr(opts, f.name)
        if "choices" in f.metadata and value is not None and value not in f.metadata["choices"]:
            _fail(flag(f.name), value, "one of " + ", ".join(f.metadata["choices"]))


def check_values(args, specs) -> None:
    """Refuse option values that cannot give a useful run (an untrained model written over a good
    one, a division by zero, a silent upsampling of small data), each with one error line."""
    at_least = {"--epochs": (args.epochs, 1), "--max-steps": (args.max_steps, 1),
                "--batch-size": (args.batch_size, 1), "--grad-accum": (args.grad_accum, 1),
                "--lr-step": (args.lr_step, 1), "--val-images": (args.val_images, 0),
                "--workers": (args.workers, 0), "--proto-images": (args.proto_images, 1),
                "--replay-size": (args.replay_size, 0),
                "--frame-images": (args.frame_images, 5),
                "--frame-area": (args.frame_area, 0)}
    for option, (value, low) in at_least.items():
        if value is not None and value < low:
            _fail(option, value, f"an integer >= {low}")
    for option, value, ok, expected in (
            ("--lr", args.lr, 0 < args.lr < math.inf, "a positive finite learning rate"),
            ("--lr-gamma", args.lr_gamma, 0 < args.lr_gamma <= 1, "a factor in (0, 1]"),
            ("--weight-decay", args.weight_decay, 0 <= args.weight_decay < math.inf,
             "a finite number >= 0"),
            ("--scale", args.scale, 0 < args.scale < math.inf, "a positive input size factor, e.g. 0.5")):
        if not ok:
            _fail(option, value, expected)
    for option, text in (("--distill-weights", args.distill_weights),
                         ("--replay-weights", args.replay_weights)):
        try:
            weights = parse_weights(text, 1)
        except ValueError:
            weights = [math.nan]
        if not all(0 <= w < math.inf for w in weights):
            _fail(option, text, "comma-separated finite weights >= 0, e.g. 10,100")
    for s in specs:  # a size too small at scale 1 is the domain description's fault, not --scale's
        if min(s.input_size) < 32:
            raise InputError(f"domain {s.name!r}: input_size {list(s.input_size)} is below 32 pixels "
                             f"(the encoder downsamples 32 times); fix its input_size in "
                             f"{os.path.join(args.data_root, 'domains.json')}")
    smallest = min(min(scaled_size(s.input_size, args.scale)) for s in specs)
    if smallest < 32:  # the encoder downsamples 32 times
        _fail("--scale", args.scale, f"a factor that keeps inputs at least 32 pixels high; it makes "
                                     f"{smallest}")
    hint = rendered_scale_hint(args.data_root, args.scale)
    if hint:
        raise InputError(f"--scale {args.scale:g} is larger than the data{hint}")


def check_paths(opts) -> None:
    """Never overwrite what this run did not make: the prior, another run's model or resume state.

    A fresh run (no --resume) whose --out or run folder holds an earlier run's files needs
    --overwrite; --out must be a file name whose run folder (the name without its suffix) differs.
    A path the file system cannot hold (a name over its length limit) is an error line, not a traceback.
    """
    try:
        _check_paths(opts)
    except OSError as exc:  # e.g. ENAMETOOLONG from a 300-byte --runs-dir name
        raise InputError(f"--out {opts.out} (run folder {opts.run_dir}): {exc.strerror or exc}; "
                         f"choose another --runs-dir or --out") from None


def _check_paths(opts) -> None:
    out, run_dir = Path(opts.out), Path(opts.run_dir)
    if out == run_dir or out.is_dir():
        raise InputError(f"--out {opts.out}: expected a checkpoint file name such as "
                         f"{run_dir}.pth.tar (the run folder is that name without .pth.tar)")
    if opts.prior is not None and Path(opts.prior).resolve() == out.resolve():
        raise InputError(f"--out {opts.out} is the prior checkpoint: the stage would replace "
                         f"the model it starts from; choose another --out")
    if opts.resume is not None or opts.overwrite:
        return
    if out.exists():
        raise InputError(f"{out} exists (an earlier run's model); pass --overwrite to replace "
                         f"it, or choose another --out")
    earlier = [p for p in (run_dir / "last.pth.tar", run_dir / "log.jsonl") if p.exists()]
    if earlier:
        raise InputError(f"{run_dir} holds an earlier run ({', '.join(p.name for p in earlier)}); "
                         f"continue it with --resume, or pass --overwrite to start it over")
