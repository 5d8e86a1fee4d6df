"""The shared lifelong training engine: one stage learns one more domain.

A stage of order ``NKS`` learns S on top of the model of ``NK`` (``runs/NK.pth.tar``):

1. load the prior model, keep a frozen copy as the teacher, append a head for the new domain;
2. train the new head (and the shared trunk) on the new domain with the uncertainty depth loss;
3. distil every old head on the new domain's images against the teacher;
4. replay each old domain's buffer through its own head with the uncertainty depth loss;
5. sum the terms with per-domain weights.

Strategies switch terms 3 and 4 on and off (``finetune``, ``distill``, ``replay``) or train on all
domains at once (``joint``, the upper bound). The same code runs one process or many under
torchrun (DistributedDataParallel), on CPU or CUDA. train_N.py, train_NK.py and train_NKS.py are
thin entry points into ``main``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DistributedSampler, Subset
from tqdm import tqdm

from data.domains import get_domain, load_domains_from_root, parse_order, run_name
from evaluation.evaluate import evaluate_domain
from evaluation.uncertainty import CALIBRATION_KEY, fit_calibration
from models.fast import autocast_context
from loaders import DatasetFormatError, get_dataset, get_loader, rendered_scale_hint, scaled
from losses import distillation_loss, uncertainty_depth_loss
from models import CheckpointError, LifelongDepthNet, read_checkpoint, save_checkpoint
from models.checkpoint import _plain, atomic_save, check_finite, check_letters, infer_encoder
from data.safeio import WriteError, atomic_write, clean_stale_temps
from models.fast import inference_copy, lowp_supported, prepare_input
from models.resnet import ENCODERS
from cli.options import add_amp_argument, add_device_argument, add_protocol_argument, printable, resolve_device
from inference.prototypes import compute_lda, compute_prototypes
from engine.protocol import DATA as PROTOCOL_DATA
from engine.protocol import TRAINING as PROTOCOL_TRAINING
from engine.protocol import resolve as resolve_protocol

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


# --------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------
class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """'(default: X)' only where the help text does not already say the default and there is one."""

    def _get_help_string(self, action):
        if action.default in (None, False, argparse.SUPPRESS) or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser(default_order: str, description: str) -> argparse.ArgumentParser:
    """All options of a training stage, each with its help string (saved as JSON beside the run)."""
    p = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    g = p.add_argument_group("what to learn")
    first = len(default_order) == 1
    if first:
        order_help = (f"the domain to learn first, a letter: N (NYU-v2), K (KITTI), S (ScanNet) or a "
                      f"custom one from <data-root>/domains.json (default {default_order})")
    else:
        order_help = (f"learning order as domain letters; the last letter is the domain learned by "
                      f"this stage, the others must be the prior model's domains in order "
                      f"(default {default_order}); any length, e.g. NKSX learns a fourth, custom "
                      f"domain X from <data-root>/domains.json")
    # --order on every stage; the first stage also takes --domain (its older spelling)
    names = ("--order", "--domain") if first else ("--order",)
    g.add_argument(*names, dest="order", default=None, help=order_help)
    g.add_argument("--strategy", default="ours", choices=list(STRATEGIES),
                   help="; ".join(f"{k}: {v[2]}" for k, v in STRATEGIES.items()))
    g.add_argument("--prior", default=None,
                   help="checkpoint of the previous stage (default: <runs-dir>/<order minus last "
                        "letter>[_strategy].pth.tar). Authors' files need --order to name their domains")
    g.add_argument("--out", default=None,
                   help="final checkpoint path (default: <runs-dir>/<order>[_strategy].pth.tar)")
    g.add_argument("--runs-dir", default="runs", help="folder of checkpoints and run folders")
    g.add_argument("--shared-head", action="store_true",
                   help="with --strategy joint: one head for all domains (the single-head baseline)")

    g = p.add_argument_group("data")
    g.add_argument("--data-root", default="datasets",
                   help="folder with the index CSVs (python synthetic.py --out datasets/synthetic "
                        "makes a synthetic one)")
    g.add_argument("--scale", type=float, default=1.0,
                   help="input size factor: 1.0 is the paper's 228x304 (NYU/ScanNet) and 320x480 "
                        "(KITTI); 0.5 suits a CPU")
    g.add_argument("--replay-size", type=int, default=500,
                   help="replay buffer per old domain (first rows of its replay CSV)")
    g.add_argument("--val-images", type=int, default=50,
                   help="images per domain held out of the training rows for per-epoch validation "
                        "(never the test split); 0 disables validation")
    g.add_argument("--val-seed", type=int, default=0,
                   help="seed of the held-out validation draw (kept fixed across stages)")
    g.add_argument("--workers", type=int, default=2, help="data loader worker processes")

    g = p.add_argument_group("optimisation (defaults are the paper's)")
    g.add_argument("--epochs", type=int, default=20, help="epochs over the new domain's data")
    g.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many optimiser steps in total (short runs, CI)")
    g.add_argument("--batch-size", type=int, default=None,
                   help="images per process per step and per replay batch (default 8; 4 from the "
                        "third domain on)")
    g.add_argument("--grad-accum", type=int, default=1,
                   help="micro-batches per optimiser step; K emulates K processes in one, so the "
                        "global batch is batch-size x K x processes")
    g.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate")
    g.add_argument("--lr-step", type=int, default=5, help="halve the learning rate every N epochs")
    g.add_argument("--lr-gamma", type=float, default=0.5, help="factor of each learning-rate step")
    g.add_argument("--weight-decay", type=float, default=1e-4, help="Adam weight decay")
    g.add_argument("--distill-weights", default=DEFAULT_OLD_WEIGHTS,
                   help="comma-separated weights of the old domains' distillation terms, in learning "
                        "order; the last repeats for further domains")
    g.add_argument("--replay-weights", default=DEFAULT_OLD_WEIGHTS,
                   help="comma-separated weights of the old domains' replay terms, in learning order")

    g = p.add_argument_group("model")
    g.add_argument("--encoder", default="resnet34", choices=sorted(ENCODERS),
                   help="encoder of a first stage (later stages take the prior's)")
    g.add_argument("--pretrained", default=None,
                   help="ImageNet weights of the encoder, a local torchvision file such as "
                        "resnet34-b627a593.pth; without it the encoder starts from random weights")
    g.add_argument("--init-depth-bias", default=None, choices=["auto", "off"],
                   help="auto (default; authors protocol: off): a new head's depth output starts at "
                        "the median ground-truth depth of its domain (from up to 32 training samples) "
                        "instead of ~0 m. The upstream code starts from PyTorch's default; from ~0 m a "
                        "fresh head needs very many steps to reach the metre range of an outdoor "
                        "domain (about 20 m for KITTI)")
    g.add_argument("--proto-images", type=int, default=200,
                   help="images per domain used for the stored domain prototypes")

    g = p.add_argument_group("run")
    add_device_argument(g)
    add_amp_argument(g)
    g.add_argument("--seed", type=int, default=0, help="seed of weights, data order and augmentation")
    g.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="resume an interrupted stage from its run folder's last.pth.tar (or a path)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out checkpoint and start the run folder over (its "
                        "log.jsonl and resume state); without it such a run stops with an error")
    g.add_argument("--on-nonfinite", default="stop", choices=["stop", "skip"],
                   help="a NaN/inf loss or gradient: stop (save the state before that step and name "
                        "the batch's files) or skip the batch's update and go on")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    add_protocol_options(p)
    return p


def add_protocol_options(p: argparse.ArgumentParser) -> None:
    """--protocol and each difference from the authors' training code as an option of its own
    (defaults None: filled from the protocol by protocol.resolve; an explicit option wins)."""
    g = p.add_argument_group("protocol (README: 'Where this implementation differs')")
    add_protocol_argument(p, g)
    g.add_argument("--reinit-old-heads", action=argparse.BooleanOptionalAction, default=None,
                   help="re-initialise every old head at the start of a later stage, as upstream's "
                        "model_ll(copy.deepcopy(old)) does (only the encoder and fusion are kept); "
                        "default off (authors protocol: on)")
    g.add_argument("--bn-all-heads", action=argparse.BooleanOptionalAction, default=None,
                   help="run every head (without gradient) on every batch, new and replayed, so that "
                        "all heads' BatchNorm running statistics move on every batch as upstream's "
                        "whole-network forward does; default off (authors protocol: on)")
    g.add_argument("--replay-exhaust", default=None, choices=["cycle", "authors"],
                   help="cycle: each replay buffer is cycled for the whole epoch (default); authors: "
                        "each epoch replays every buffer once, then stops replaying for the rest of "
                        "the epoch and sets every distillation weight to the first one (upstream's "
                        "third stage: 100 -> 10)")
    g.add_argument("--drop-last", action=argparse.BooleanOptionalAction, default=None,
                   help="drop the partial last batch of an epoch (default); --no-drop-last trains on "
                        "it, as upstream (single process without --grad-accum only)")
    g.add_argument("--scannet-resize", default=None, choices=["twice", "once"],
                   help="ScanNet colour: twice = to the depth size, then to 320x240 (default); once = "
                        "straight to 320x240, as upstream")
    g.add_argument("--nyu-rotation", default=None, choices=["bilinear", "spline"],
                   help="interpolation of the NYU image rotation: bilinear (default) or spline = "
                        "scipy.ndimage.rotate(order=2), as upstream (depth stays nearest neighbour)")


def data_options(opts) -> dict:
    """The protocol's data options for get_dataset."""
    return {"scannet_resize": getattr(opts, "scannet_resize", None) or "twice",
            "nyu_rotation": getattr(opts, "nyu_rotation", None) or "bilinear"}


def parse_weights(text: str, n: int) -> list[float]:
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values:
        raise ValueError(f"no weights in {text!r}")
    return [values[min(j, len(values) - 1)] for j in range(n)]


def resolve_options(args: argparse.Namespace, default_order: str) -> argparse.Namespace:
    """Fill the defaults that depend on other options and check the order."""
    try:
        load_domains_from_root(args.data_root)
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    args.order_given = args.order is not None
    order = (args.order if args.order is not None else default_order).strip()
    flag = "--order"
    try:
        specs = parse_order(order)  # letters "NKS" or names "nyu,kitti"
    except ValueError as err:
        raise SystemExit(f"error: {flag} {order!r}: {err}") from None
    letters = "".join(s.letter for s in specs)
    if len(default_order) == 1 and len(letters) != 1 and args.strategy != "joint":
        raise SystemExit(f"error: train_N.py learns one domain; got {order!r} (use train_NK.py / "
                         f"train_NKS.py --order for later stages)")
    if args.shared_head and args.strategy != "joint":
        raise SystemExit("error: --shared-head is a joint-training baseline; use it with --strategy joint")
    args.order = letters
    if args.batch_size is None:
        args.batch_size = 8 if len(letters) < 3 else 4
    name = run_name(letters, args.strategy) + ("_shared" if args.shared_head else "")
    runs = Path(args.runs_dir)
    args.out = args.out or str(runs / f"{name}.pth.tar")
    args.run_dir = str(Path(args.out).with_suffix("").with_suffix(""))
    if args.prior is None and len(letters) > 1 and args.strategy != "joint":
        args.prior = str(runs / f"{run_name(letters[:-1], args.strategy)}.pth.tar")
    check_values(args, specs)
    resolve_protocol(args, list(PROTOCOL_TRAINING) + list(PROTOCOL_DATA))
    return args


def _fail(option: str, value, expected: str):
    raise SystemExit(f"error: {option} {value!r}: expected {expected}")


def check_values(args, specs) -> None:
    """Refuse option values that cannot give a useful run (an untrained model written over a good
    one, a division by zero, a silent upsampling of small data), each with one error line."""
    at_least = {"--epochs": (args.epochs, 1), "--max-steps": (args.max_steps, 1),
                "--batch-size": (args.batch_size, 1), "--grad-accum": (args.grad_accum, 1),
                "--lr-step": (args.lr_step, 1), "--val-images": (args.val_images, 0),
                "--workers": (args.workers, 0), "--proto-images": (args.proto_images, 1),
                "--replay-size": (args.replay_size, 0)}
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
            raise SystemExit(f"error: domain {s.name!r}: input_size {list(s.input_size)} is below 32 pixels "
                             f"(the encoder downsamples 32 times); fix its input_size in "
                             f"{os.path.join(args.data_root, 'domains.json')}")
    smallest = min(min(scaled_size(s.input_size, args.scale)) for s in specs)
    if smallest < 32:  # the encoder downsamples 32 times
        _fail("--scale", args.scale, f"a factor that keeps inputs at least 32 pixels high; it makes "
                                     f"{smallest}")
    hint = rendered_scale_hint(args.data_root, args.scale)
    if hint:
        raise SystemExit(f"error: --scale {args.scale:g} is larger than the data{hint}")


def check_paths(opts) -> None:
    """Never overwrite what this run did not make: the prior, another run's model or resume state.

    A fresh run (no --resume) whose --out or run folder holds an earlier run's files needs
    --overwrite; --out must be a file name whose run folder (the name without its suffix) differs.
    A path the file system cannot hold (a name over its length limit) is an error line, not a traceback.
    """
    try:
        _check_paths(opts)
    except OSError as exc:  # e.g. ENAMETOOLONG from a 300-byte --runs-dir name
        raise SystemExit(f"error: --out {opts.out} (run folder {opts.run_dir}): {exc.strerror or exc}; "
                         f"choose another --runs-dir or --out") from None


def _check_paths(opts) -> None:
    out, run_dir = Path(opts.out), Path(opts.run_dir)
    if out == run_dir or out.is_dir():
        raise SystemExit(f"error: --out {opts.out}: expected a checkpoint file name such as "
                         f"{run_dir}.pth.tar (the run folder is that name without .pth.tar)")
    if opts.prior is not None and Path(opts.prior).resolve() == out.resolve():
        raise SystemExit(f"error: --out {opts.out} is the prior checkpoint: the stage would replace "
                         f"the model it starts from; choose another --out")
    if opts.resume is not None or opts.overwrite:
        return
    if out.exists():
        raise SystemExit(f"error: {out} exists (an earlier run's model); pass --overwrite to replace "
                         f"it, or choose another --out")
    earlier = [p for p in (run_dir / "last.pth.tar", run_dir / "log.jsonl") if p.exists()]
    if earlier:
        raise SystemExit(f"error: {run_dir} holds an earlier run ({', '.join(p.name for p in earlier)}); "
                         f"continue it with --resume, or pass --overwrite to start it over")


# --------------------------------------------------------------------------------------------------
# Processes and devices
# --------------------------------------------------------------------------------------------------
class Dist:
    """Who this process is: rank, world size and device (torchrun sets RANK/WORLD_SIZE/LOCAL_RANK)."""

    def __init__(self, device_arg: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = resolve_device(device_arg).type == "cuda"
        if use_cuda:
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def close(self):
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM (what schedulers and `timeout` send) during training.

    The first signal asks the loop to stop after the step in progress; that step completes and its
    state is saved, so a resumed run repeats exactly what the uninterrupted one would do. A second
    signal stops at once (KeyboardInterrupt) unless the optimiser step is running (``shield``): the
    step in progress is then rolled back (Stage.rollback_step) before the state is saved.
    """

    def __init__(self):
        self.signum, self.shielded, self.previous = None, False, {}
        self.pid = os.getpid()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}
        return False

    def _handle(self, signum, frame):
        if os.getpid() != self.pid:  # a forked data-loader worker: the main process decides
            return
        first = self.signum is None
        self.signum = self.signum or signum
        if first:
            tqdm.write(f"{signal.Signals(signum).name}: stopping after the step in progress "
                       f"(send it again to stop at once)")
        elif not self.shielded:
            raise KeyboardInterrupt

    @contextmanager
    def shield(self):
        self.shielded = True
        try:
            yield
        finally:
            self.shielded = False

    def requested(self, ctx) -> bool:
        """Whether to stop now; every process agrees (a signal may reach only some of them)."""
        flag = self.signum is not None
        if ctx.world > 1:
            t = torch.tensor([float(flag)], device=ctx.device)
            dist.all_reduce(t)
            flag = t.item() > 0
            if flag and self.signum is None:
                self.signum = signal.SIGTERM
        return flag


def loader_message(exc: BaseException) -> str:
    """The message of a data error, also when a data-loader worker raised it (the main process then
    gets the worker's traceback as text, whose last line is ``module.Error: message``)."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def amp_settings(arg: str, device: torch.device):
    """(autocast dtype or None, whether a GradScaler is needed).

    ``auto``: bfloat16 on CUDA GPUs with bf16 (float16 with loss scaling on older ones), float32 on
    a CPU. bf16 on a CPU with native kernels (``--amp bf16``) makes a training step faster, but in
    the quickstart bf16-trained models selected their head from prototypes less reliably at equal
    depth accuracy, so it stays opt-in on CPUs (measured figures of both: bench/README.md, "Why
    bf16 is not the CPU default").
    """
    if arg == "off" or (arg == "auto" and device.type != "cuda"):
        return None, False
    if arg == "fp16":
        return torch.float16, device.type == "cuda"
    if arg == "bf16" or torch.cuda.is_bf16_supported():  # bf16, or auto on a CUDA GPU with bf16
        return torch.bfloat16, False
    return torch.float16, True  # auto on a CUDA GPU without bf16


def amp_warning(arg: str, device: torch.device) -> str | None:
    """The line to print at the start of a stage whose autocast the CPU only emulates, else None:
    bf16 without native bf16 (models.hardware's probe) runs, but slower than float32."""
    dtype = amp_settings(arg, device)[0]
    if device.type == "cpu" and dtype == torch.bfloat16 and not lowp_supported(dtype, device):
        return ("warning: --amp bf16: this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 "
                "autocast is emulated and slower than float32 (--amp off)")
    return None


# --------------------------------------------------------------------------------------------------
# Data order: DistributedSampler that also emulates K processes and starts mid-epoch
# --------------------------------------------------------------------------------------------------
class StepSampler(DistributedSampler):
    """Indices for ``batch_size``-sized micro-batches of this process, ``accum`` per step.

    The epoch's permutation is DistributedSampler's (seed + epoch, same on every rank). With
    ``world`` processes and ``accum`` micro-batches, there are ``world * accum`` virtual ranks;
    micro-batch k of step s on rank r is virtual rank ``r * accum + k``'s s-th batch. One process
    with accum=2 therefore sees exactly the samples that two processes with accum=1 see, which makes
    runs comparable across world sizes. ``start_step`` skips steps already done (resume).
    """

    def __init__(self, dataset, batch_size, world=1, rank=0, accum=1, seed=0, shuffle=True,
                 partial=False):
        super().__init__(dataset, num_replicas=world * accum, rank=rank * accum,
                         shuffle=shuffle, seed=seed, drop_last=True)
        self.batch_size, self.accum, self.first_rank = batch_size, accum, rank * accum
        self.start_step = 0
        # partial: the last, smaller batch is a step too (--no-drop-last; one virtual rank only)
        self.partial = bool(partial)

    def steps_per_epoch(self) -> int:
        if self.partial:
            return -(-self.num_samples // self.batch_size)
        return self.num_samples // self.batch_size

    def _shard(self, virtual_rank: int) -> list[int]:
        self.rank = virtual_rank
        return list(super().__iter__())

    def __iter__(self):
        shards = [self._shard(self.first_rank + k) for k in range(self.accum)]
        self.rank = self.first_rank
        b = self.batch_size
        for step in range(self.start_step, self.steps_per_epoch()):
            for shard in shards:
                yield from shard[step * b:(step + 1) * b]

    def __len__(self):
        return (self.steps_per_epoch() - self.start_step) * self.batch_size * self.accum


class SeededSamples(torch.utils.data.Dataset):
    """Each sample's augmentation drawn from its own seed (seed, epoch, index).

    The transforms draw from torch's RNG; seeding it per sample makes a sample's augmentation
    independent of the worker that loads it, of the number of processes, and of where a resumed
    run starts, so an interrupted-and-resumed run or a 2-process run repeats the same arithmetic.
    """

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + self.epoch * 10_007 + index) % 2**63)
            return self.dataset[index]


class CyclingLoader:
    """Endless micro-batches of a (replay) dataset: a new epoch of its sampler when one runs out.
    The upstream code stopped replaying once its replay loader ran out; we cycle instead."""

    def __init__(self, dataset, opts, ctx: Dist, salt: int):
        dataset = SeededSamples(dataset, opts.seed + 1000 * salt)
        self.sampler = StepSampler(dataset, opts.batch_size, ctx.world, ctx.rank, opts.grad_accum,
                                   seed=opts.seed + 1000 * salt, partial=not drop_last(opts))
        if self.sampler.steps_per_epoch() == 0:
            raise SystemExit(f"error: a replay/joint set of {len(dataset)} samples is too few for batches "
                             f"of {opts.batch_size} on {ctx.world * opts.grad_accum} (virtual) processes; "
                             f"lower --batch-size or raise --replay-size")
        self.dataset, self.opts, self.ctx, self.salt = dataset, opts, ctx, salt
        self.epoch, self.iterator = 0, None

    def seek(self, steps_done: int) -> None:
        """Continue after ``steps_done`` optimiser steps (resume): each step took one sampler step."""
        per_epoch = self.sampler.steps_per_epoch()
        self.epoch, self.sampler.start_step = divmod(steps_done, per_epoch)
        self.iterator = None

    def _start_iterator(self) -> None:
        """A fresh pass over the dataset for ``self.epoch`` (sampler and augmentation seeded by it)."""
        self.sampler.set_epoch(self.epoch)
        self.dataset.epoch = self.epoch
        self.iterator = iter(make_loader(self.dataset, self.sampler, self.opts, self.ctx,
                                         seed=self.opts.seed + 1000 * self.salt + self.epoch))

    def next(self):
        while True:
            if self.iterator is None:
                self._start_iterator()
            try:
                return next(self.iterator)
            except StopIteration:
                self.epoch, self.iterator = self.epoch + 1, None
                self.sampler.start_step = 0


class EpochReplayLoader(CyclingLoader):
    """--replay-exhaust authors: upstream's replay. Each epoch of the new domain starts a fresh
    pass over the buffer (upstream calls iter() per epoch); once it is used up, ``next`` returns
    None for the rest of that epoch (upstream's StopIteration branch: no replay, and its third
    stage drops the second domain's distillation weight from 100 to 10)."""

    def start_epoch(self, epoch: int, steps_done: int = 0) -> None:
        self.epoch, self.iterator = epoch, None
        self.sampler.start_step = min(steps_done, self.sampler.steps_per_epoch())
        self.exhausted = False

    def seek(self, steps_done: int) -> None:
        pass  # the position is set per epoch by start_epoch

    def next(self):
        if getattr(self, "exhausted", False):
            return None
        if self.iterator is None:
            self._start_iterator()
        try:
            return next(self.iterator)
        except StopIteration:
            self.exhausted = True
            return None


def drop_last(opts) -> bool:
    return getattr(opts, "drop_last", None) is not False


def make_loader(dataset, sampler, opts, ctx: Dist, seed: int):
    return get_loader(dataset, batch_size=opts.batch_size, workers=opts.workers,
                      device=ctx.device.type, seed=seed, drop_last=drop_last(opts), sampler=sampler)


def split_validation(train_set, replay_rows: set, n_val: int, seed: int):
    """Indices (train, validation) of a domain's training rows. Validation rows are drawn from the
    rows outside the replay buffer, with a fixed seed, so every stage validates on the same images
    and none of them is ever trained on: an image listed twice is one candidate, and every row of a
    held-out image leaves the training rows."""
    rows = train_set.rows
    first = {}
    for i, row in enumerate(rows):
        if row.image not in replay_rows:
            first.setdefault(row.image, i)
    candidates = sorted(first.values())
    rng = np.random.default_rng(seed)
    val = sorted(rng.permutation(candidates)[:n_val].tolist()) if n_val > 0 else []
    held = {rows[i].image for i in val}
    return [i for i in range(len(train_set)) if rows[i].image not in held], val


class DomainData:
    """The datasets of one domain for a stage: training rows, replay buffer and validation rows."""

    def __init__(self, spec, opts):
        self.spec = spec
        root, scale = opts.data_root, opts.scale
        self.train_full = get_dataset(spec.letter, "train", root, train=True, scale=scale, **data_options(opts))
        self.replay_full = get_dataset(spec.letter, "replay", root, train=True, scale=scale, **data_options(opts))
        if len(self.replay_full) == 0 and opts.replay_size > 0:
            raise SystemExit(f"error: {self.replay_full.csv_file}: the replay index of {spec.name} has no rows; "
                             f"draw it from the training rows with `python prepare_data.py replay --domain "
                             f"{spec.letter} --data-root {root}`")
        replay_rows = {row.image for row in self.replay_full.rows}
        train_idx, val_idx = split_validation(self.train_full, replay_rows, opts.val_images,
                                              opts.val_seed)
        self.train = Subset(self.train_full, train_idx)
        self.replay = Subset(self.replay_full, range(min(opts.replay_size, len(self.replay_full))))
        self.val = (Subset(get_dataset(spec.letter, "train", root, train=False, scale=scale,
                                       **data_options(opts)), val_idx) if val_idx else None)

    def prototype_set(self, opts):
        """Deterministic (test-transform) images for this domain's prototype: its replay rows."""
        ds = get_dataset(self.spec.letter, "replay", opts.data_root, train=False, scale=opts.scale,
                         **data_options(opts))
        return Subset(ds, range(min(opts.proto_images, len(ds))))


def fit_uncertainty(net, data, opts, device, amp_dtype=None) -> dict:
    """Every head's uncertainty scale fitted on its domain's validation rows (``DomainData.val``,
    never the test split; evaluation.uncertainty), with the test-time conventions (the domain's
    crop, depth caps): called at the end of every stage, and by test.py --calibrate-into."""
    device = torch.device(device)

    def forward(images, head):
        with autocast_context(device, amp_dtype):
            return net(images.to(device), domain=head)

    def loaders(domains):
        return [get_loader(d.val, batch_size=opts.batch_size, workers=0, device=device.type)
                for d in domains if d.val is not None]
    groups = [data] if getattr(opts, "shared_head", False) else [[d] for d in data]
    heads = [{"domain": "+".join(d.spec.name for d in g), "loaders": loaders(g),
              "rules": (g[0].spec.min_depth, max(d.spec.max_depth for d in g),
                        g[0].spec.eval_crop if len(g) == 1 else "none")} for g in groups]
    was_training = net.training
    net.eval()
    try:
        return fit_calibration(forward, heads, note=f"fitted after learning {opts.order}")
    finally:
        net.train(was_training)


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------
def prior_command(letters: str, strategy: str) -> str:
    script = {1: "train_N.py --order", 2: "train_NK.py --order"}.get(len(letters), "train_NKS.py --order")
    extra = "" if strategy == "ours" or len(letters) == 1 else f" --strategy {strategy}"
    return f"python {script} {letters}{extra}"


def load_prior(opts) -> tuple[LifelongDepthNet, dict]:
    """The previous stage's model, checked against the order."""
    old_letters = opts.order[:-1]
    if not Path(opts.prior).is_file():
        raise SystemExit(f"error: prior checkpoint {opts.prior} not found; make it with "
                         f"`{prior_command(old_letters, opts.strategy)}` (same --data-root/--scale)")
    state, meta = read_checkpoint(opts.prior)
    heads = len({k.split(".")[0] for k in state if k.startswith("task")})
    known = meta.get("letters")
    if known and meta.get("domains"):
        check_letters(known, list(meta["domains"]), opts.prior)
    if not known:  # an authors' file: only the learning order on the command line names its heads
        if not opts.order_given:
            raise SystemExit(f"error: {opts.prior} has no metadata (an authors' checkpoint); name its "
                             f"domains with --order, e.g. --order {'NKS'[:heads]}{opts.order[-1]}")
        known = old_letters
    if heads != len(old_letters) or known != old_letters:
        raise SystemExit(f"error: {opts.prior} holds {heads} head(s) for domains {known!r}, but order "
                         f"{opts.order!r} needs the prior {old_letters!r}")
    net = LifelongDepthNet(encoder=meta.get("encoder") or infer_encoder(state), num_domains=heads)
    check_finite(state, opts.prior)
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {opts.prior!r} does not fit {net.encoder_name} with {heads} "
                              f"head(s): {str(err).splitlines()[0]}") from None
    return net, meta


def build_model(opts, ctx: Dist):
    """(student, teacher or None, index of the new head)."""
    if opts.strategy == "joint":
        heads = 1 if opts.shared_head else len(opts.order)
        net = LifelongDepthNet(encoder=opts.encoder, num_domains=heads, pretrained=opts.pretrained)
        return net.to(ctx.device), None, heads - 1
    if len(opts.order) == 1:
        net = LifelongDepthNet(encoder=opts.encoder, num_domains=1, pretrained=opts.pretrained)
        return net.to(ctx.device), None, 0
    net, _ = load_prior(opts)
    opts.encoder = net.encoder_name
    teacher = None
    if STRATEGIES[opts.strategy][0]:
        teacher = make_teacher(net, ctx.device, amp_settings(opts.amp, ctx.device)[0])
    new_head = net.add_domain()
    if getattr(opts, "reinit_old_heads", False):
        reinit_heads(net, range(new_head))
    if opts.strategy == "finetune":  # old heads get no loss; freezing them keeps DDP free of unused grads
        for j in range(new_head):
            for p in net.heads[j].parameters():
                p.requires_grad_(False)
    return net.to(ctx.device), teacher, new_head


def reinit_heads(net: LifelongDepthNet, heads) -> None:
    """--reinit-old-heads: replace each of ``heads`` by a freshly initialised head, as upstream's
    ``model_ll(copy.deepcopy(old), num_tasks=n)`` (is_training=False) builds every head anew and
    keeps only E and MFF. The teacher (made before) keeps the old heads."""
    for j in heads:
        old = net.head(j)
        ref = next(old.parameters())
        fresh = type(old)(net.num_features).to(device=ref.device, dtype=ref.dtype)
        fresh.train(old.training)
        setattr(net, f"task{j}", fresh)


def make_teacher(prior: LifelongDepthNet, device, amp_dtype=None) -> LifelongDepthNet:
    """The frozen previous model that gives the distillation targets, as an inference copy.

    It only ever runs forward in eval mode, so it gets what the product's inference path gets
    (models/fast.py): BatchNorm folded into the convolutions and, on a CPU, NHWC layout with fused
    Conv+ReLU(+add) kernels; under mixed precision its weights are cast once to the autocast dtype
    (its output convolutions stay float32) instead of autocast converting them on every step. In
    float32 its outputs equal the plain frozen copy's to ~1e-6 relative (rounding of the fold).
    Where the device has no native kernels for the autocast dtype (bf16 on an AVX2-only CPU) the
    teacher stays float32: emulated bf16 convolutions measured 4x slower than fused float32 ones.
    """
    device = torch.device(device)
    on_cpu = device.type == "cpu"
    if amp_dtype is not None and not lowp_supported(amp_dtype, device):
        amp_dtype = None
    return inference_copy(prior, fuse_bn=True, channels_last=on_cpu, dtype=amp_dtype, device=device,
                          fused_kernels=on_cpu)


def teacher_targets(teacher, image: torch.Tensor, heads: int) -> list:
    """(depth, uncertainty) of the teacher's first ``heads`` heads on ``image``, float32, no graph."""
    weight = teacher.E.conv1.weight
    x = prepare_input(image, channels_last=weight.is_contiguous(memory_format=torch.channels_last),
                      dtype=weight.dtype)
    with torch.no_grad(), torch.autocast(image.device.type, enabled=False):
        feats = teacher.features(x)
        return [tuple(t.float() for t in teacher.head_forward(feats, j)) for j in range(heads)]


class NoGroundTruth(ValueError):
    """The first samples of a training set hold no valid depth at all."""


def median_depth(dataset, max_samples: int = 32) -> float:
    """Median valid ground-truth depth (metres) over the first samples of a dataset, untransformed."""
    values = []
    for i in range(min(max_samples, len(dataset))):
        depth = np.asarray(dataset.load(i)[1])
        values.append(depth[depth > 0])
    values = np.concatenate(values) if values else np.zeros(0)
    if values.size == 0:
        raise NoGroundTruth(f"no valid ground truth in the first {max_samples} samples of {dataset.csv_file}")
    return float(np.median(values))


@torch.no_grad()
def init_depth_bias(net: LifelongDepthNet, head: int, depth: float) -> None:
    """Start a fresh head's depth output near ``depth`` metres (its last conv's bias)."""
    net.heads[head].depth.conv2.bias.fill_(depth)


class StageLoss(nn.Module):
    """All loss terms of one micro-batch in a single forward, so DDP sees one call per step."""

    def __init__(self, net: LifelongDepthNet, new_head: int, distill_w, replay_w, replay_heads,
                 bn_all_heads: bool = False):
        super().__init__()
        self.net, self.new_head = net, new_head
        self.distill_w, self.replay_w, self.replay_heads = distill_w, replay_w, replay_heads
        self.bn_all_heads = bn_all_heads

    def forward(self, image, depth, teacher_out=None, replay=(), distill_w=None):
        """``distill_w`` replaces the distillation weights for this call (--replay-exhaust authors)."""
        distill_w = self.distill_w if distill_w is None else distill_w
        terms = {}
        feats = self.net.features(image)
        d, u = self.net.head_forward(feats, self.new_head)
        total = terms["new"] = uncertainty_depth_loss(d, u, depth)
        for j, (t_d, t_u) in enumerate(teacher_out or ()):
            s_d, s_u = self.net.head_forward(feats, j)
            terms[f"distill{j}"] = distillation_loss(s_d, s_u, t_d, t_u)
            total = total + distill_w[j] * terms[f"distill{j}"]
        self.run_other_heads(feats, {self.new_head, *range(len(teacher_out or ()))})
        for k, (r_image, r_depth) in enumerate(replay):
            j = self.replay_heads[k]
            r_feats = self.net.features(r_image)
            r_d, r_u = self.net.head_forward(r_feats, j)
            self.run_other_heads(r_feats, {j})
            terms[f"replay{k}"] = uncertainty_depth_loss(r_d, r_u, r_depth)
            total = total + self.replay_w[k] * terms[f"replay{k}"]
        terms["total"] = total
        return terms

    def run_other_heads(self, feats, used) -> None:
        """--bn-all-heads: every head not used by a loss term runs on ``feats`` too, without a
        gradient, only so that its BatchNorm running statistics move as in upstream's
        whole-network forward (in train mode BN normalises with batch statistics, so the heads
        that get a loss compute exactly what they compute without this)."""
        if not self.bn_all_heads:
            return
        with torch.no_grad():
            for j in range(self.net.num_domains):
                if j not in used:
                    self.net.head_forward(feats.detach(), j)


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------
class Stage:
    """Learns one more domain: model, data, optimiser, loop, checkpoints."""

    def __init__(self, opts, ctx: Dist):
        self.opts, self.ctx = opts, ctx
        self.specs = [get_domain(letter) for letter in opts.order]
        seed_everything(opts.seed)
        self.net, self.teacher, self.new_head = build_model(opts, ctx)
        self.data = [DomainData(spec, opts) for spec in self.specs]
        self._plan_terms()
        self._init_fresh_heads(set_bias=opts.init_depth_bias == "auto")
        self.amp_dtype, needs_scaler = amp_settings(opts.amp, ctx.device)
        self.scaler = torch.amp.GradScaler(ctx.device.type, enabled=needs_scaler)
        self.loss = StageLoss(self.net, self.new_head, self.distill_w, self.replay_w, self.replay_heads,
                              bn_all_heads=bool(getattr(opts, "bn_all_heads", False)))
        self.step_module = self.loss
        if ctx.world > 1:
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            self.step_module = nn.parallel.DistributedDataParallel(self.loss, device_ids=ids)
        trainable = [p for p in self.net.parameters() if p.requires_grad]
        self.optim = torch.optim.Adam(trainable, lr=opts.lr, weight_decay=opts.weight_decay)
        self.sched = torch.optim.lr_scheduler.StepLR(self.optim, opts.lr_step, opts.lr_gamma)
        self.epoch, self.step_in_epoch, self.global_step, self.replay_steps_done = 0, 0, 0, 0
        self.log_path = Path(opts.run_dir) / "log.jsonl"
        self.signals = StopSignals()
        self.bn_snapshot = None  # buffers at the start of the step in progress (see train_step)
        self.skipped_steps, self.batch_files = 0, []

    def _plan_terms(self):
        """Which dataset feeds the main batch, which are replayed, and their weights."""
        opts, n_old = self.opts, len(self.specs) - 1
        distil, replay = STRATEGIES[opts.strategy][:2]
        if opts.strategy == "joint":
            # every domain's full training set; the largest drives the epoch, the others cycle
            sizes = [len(d.train) for d in self.data]
            self.main_domain = int(np.argmax(sizes))
            others = [i for i in range(len(self.data)) if i != self.main_domain]
            self.main_head = 0 if opts.shared_head else self.main_domain
            self.replay_sets = [self.data[i].train for i in others]
            self.replay_heads = [0 if opts.shared_head else i for i in others]
            self.replay_w, self.distill_w = [1.0] * len(others), []
            self.new_head = self.main_head
            return
        self.main_domain = self.main_head = n_old
        self.distill_w = parse_weights(opts.distill_weights, n_old) if distil else []
        self.replay_heads = list(range(n_old)) if replay else []
        self.replay_sets = [self.data[j].replay for j in self.replay_heads]
        self.replay_w = parse_weights(opts.replay_weights, n_old) if replay else []

    def _init_fresh_heads(self, set_bias: bool):
        """Depth bias of every head this stage creates: the new one, or all of a joint model's.
        Its median ground truth is measured either way: data without any valid depth would train
        at loss 0 and write a useless model, so it stops the stage here."""
        if self.opts.shared_head:
            fresh = {0: [d.train_full for d in self.data]}
        elif self.opts.strategy == "joint":
            fresh = {i: [d.train_full] for i, d in enumerate(self.data)}
        else:
            fresh = {self.new_head: [self.data[-1].train_full]}
            if getattr(self.opts, "reinit_old_heads", False):  # re-initialised old heads are fresh too
                fresh.update({j: [self.data[j].train_full] for j in range(self.new_head)})
        for head, sets in fresh.items():
            try:
                depth = float(np.median([median_depth(ds) for ds in sets]))
            except NoGroundTruth as err:  # (an unreadable file is a DatasetFormatError of its own)
                raise SystemExit(f"error: {err}: every depth is 0 (no ground truth); check the depth "
                                 f"files and the domain's depth_encoding") from None
            if set_bias:
                init_depth_bias(self.net, head, depth)

    # ---- persistence -----------------------------------------------------------------------------
    def meta(self) -> dict:
        specs = self.specs
        meta = {"encoder": self.net.encoder_name, "trained_letters": self.opts.order,
                "strategy": self.opts.strategy, "shared_head": self.opts.shared_head,
                "options": vars(self.opts)}
        if self.opts.shared_head:  # one head serves every domain: it gets the widest range
            meta["domains"] = ["shared"]
            specs = [max(specs, key=lambda s: s.max_depth)]
        else:
            meta["domains"], meta["letters"] = [s.name for s in specs], self.opts.order
        meta["depth_ranges"] = [[s.min_depth, s.max_depth] for s in specs]
        meta["input_sizes"] = [list(scaled_size(s.input_size, self.opts.scale)) for s in specs]
        meta["cameras"] = [c.as_dict() if c is not None else None for c in self.cameras(specs)]
        return meta

    def cameras(self, specs):
        """Per domain, the camera its head learns (inference/frames.py: the stored frames' camera
        through the training transform's resize)."""
        from inference.frames import trained_camera
        return [trained_camera(s, self.opts.scale, self.opts.data_root) for s in specs]

    def samples_per_step(self) -> int:
        """Samples of the new domain in one optimiser step, over all processes and micro-batches."""
        return self.opts.batch_size * self.opts.grad_accum * self.ctx.world

    def save_resume(self, interrupted=False):
        """The state after the last completed step (a step in progress is rolled back first)."""
        if not self.ctx.main:
            return
        self.rollback_step()
        path = Path(self.opts.run_dir) / "last.pth.tar"
        try:
            check_finite(self.net.state_dict(), path)
        except CheckpointError as err:  # keep the last good state rather than write a NaN model
            raise SystemExit(f"error: {err}") from None
        state = {"state_dict": self.net.state_dict(), "optimizer": self.optim.state_dict(),
                 "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
                 "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                 "global_step": self.global_step, "world_size": self.ctx.world,
                 "samples_in_epoch": self.step_in_epoch * self.samples_per_step(),
                 "samples_total": self.global_step * self.samples_per_step(),
                 "skipped_steps": self.skipped_steps,
                 "interrupted": interrupted, "meta": _plain(self.meta())}
        atomic_save(state, path)

    def rollback_step(self):
        """Undo what an interrupted step changed. Parameters and Adam's state change only inside
        the optimiser step, which signals never interrupt (StopSignals.shield); the forward passes
        already updated the BatchNorm running statistics, which are restored here."""
        if self.bn_snapshot is not None:
            with torch.no_grad():
                for buf, saved in self.bn_snapshot:
                    buf.copy_(saved)
            self.bn_snapshot = None

    def load_resume(self, path):
        # weights_only: a resume file holds tensors and plain data; a crafted one must not run code
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            saved = state["meta"]
            letters, strategy = saved["trained_letters"], saved["strategy"]
        except Exception as exc:  # noqa: BLE001 - any unreadable file is one error line
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SystemExit(f"error: resume file {path}: not a resume state of this project "
                             f"({type(exc).__name__}: {reason[:200]}); start over with --overwrite") from None
        if letters != self.opts.order or strategy != self.opts.strategy:
            raise SystemExit(f"error: {path} is a run of order {letters} strategy "
                             f"{strategy}, not {self.opts.order} {self.opts.strategy}")
        try:
            check_finite(state["state_dict"], path)
            self.net.load_state_dict(state["state_dict"])
            self.optim.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        except (CheckpointError, KeyError, RuntimeError, ValueError) as exc:
            raise SystemExit(f"error: resume file {path} does not fit this stage "
                             f"({str(exc).splitlines()[0][:300]}); start over with --overwrite") from None
        self.skipped_steps = state.get("skipped_steps", 0)
        self.epoch, self.global_step = state["epoch"], state["global_step"]
        # a different world size (or --grad-accum) continues after the same number of samples
        per_step = self.samples_per_step()
        self.step_in_epoch = state["samples_in_epoch"] // per_step
        # replay streams advance one step per optimiser step, i.e. by the samples of a step
        self.replay_steps_done = state["samples_total"] // per_step
        self.say(f"resumed {path}: epoch {self.epoch + 1}, step {self.step_in_epoch}, "
                 f"{self.global_step} steps done")

    def uncertainty_calibration(self) -> dict:
        return fit_uncertainty(self.net, self.data, self.opts, self.ctx.device, self.amp_dtype)

    def save_final(self, prototypes, calibration=None):
        if self.ctx.main:
            extra = {} if calibration is None else {CALIBRATION_KEY: calibration}
            try:
                save_checkpoint(self.opts.out, self.net, prototypes=prototypes, **self.meta(), **extra)
            except CheckpointError as err:  # non-finite weights: never written
                raise SystemExit(f"error: {err}") from None

    def log(self, record: dict):
        if self.ctx.main:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def say(self, text: str):
        if self.ctx.main:
            tqdm.write(text)

    # ---- one step ----------------------------------------------------------------------------------
    def micro_batch(self, batch, replay_batches):
        dev = self.ctx.device
        image, depth = batch["image"].to(dev, non_blocking=True), batch["depth"].to(dev, non_blocking=True)
        replay_batches, distill_w = self.exhausted_replay(replay_batches)
        replay = [(b["image"].to(dev, non_blocking=True), b["depth"].to(dev, non_blocking=True))
                  for b in replay_batches]
        with torch.autocast(dev.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            # targets only: computed without a graph (no_grad, not inference_mode, so the loss may
            # save them for backward), by the teacher's own precision (see make_teacher)
            teacher_out = (teacher_targets(self.teacher, image, len(self.distill_w))
                           if self.teacher is not None else None)
            return self.step_module(image, depth, teacher_out, replay, distill_w)

    def exhausted_replay(self, replay):
        """(replay batches, distillation weights or None) of a micro-batch. Under --replay-exhaust
        authors a replay stream returns None once its buffer is used up for the epoch: from then on
        nothing is replayed and every distillation weight becomes the first domain's, which is
        upstream's except-branch (train_NK: 10 stays 10; train_NKS: 10 and 100 become 10 and 10)."""
        if not any(b is None for b in replay):
            return replay, None
        return [], [self.distill_w[0]] * len(self.distill_w) if self.distill_w else []

    def train_step(self, micro_batches) -> dict:
        """One optimiser step over ``grad_accum`` micro-batches (gradients averaged, as DDP does)."""
        # the forward passes update BatchNorm statistics: keep them to roll back an interrupted step
        self.bn_snapshot = [(b, b.detach().clone()) for b in self.net.buffers()]
        self.optim.zero_grad(set_to_none=True)
        sums = {}
        for k, (batch, replay_batches) in enumerate(micro_batches):
            last = k == len(micro_batches) - 1
            sync = nullcontext() if last or self.ctx.world == 1 else self.step_module.no_sync()
            with sync:
                terms = self.micro_batch(batch, replay_batches)
                self.scaler.scale(terms["total"] / len(micro_batches)).backward()
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + value.item() / len(micro_batches)
        finite = self.finite_update(sums)
        # the update and the step counters change together or not at all: an interrupt lands
        # either before (the step is rolled back) or after (the step is done)
        with self.signals.shield():
            if finite:
                self.scaler.step(self.optim)
                self.scaler.update()
                self.bn_snapshot = None
            else:  # --on-nonfinite skip: the batch is consumed without an update
                self.rollback_step()
                self.skipped_steps += 1
                sums["skipped"] = 1.0
            self.step_in_epoch += 1
            self.global_step += 1
        return sums

    def finite_update(self, sums) -> bool:
        """False (skip) or SystemExit (stop) when the loss or, unscaled, a gradient is NaN/inf: one
        such update makes every weight NaN. With loss scaling the scaler skips inf gradients itself."""
        finite = math.isfinite(sums["total"])
        if finite and not self.scaler.is_enabled():
            grads = [p.grad for p in self.net.parameters() if p.grad is not None]
            finite = bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))
        if self.ctx.world > 1:  # every rank takes the same decision
            flag = torch.tensor([0.0 if finite else 1.0], device=self.ctx.device)
            dist.all_reduce(flag)
            finite = flag.item() == 0
        if finite or self.opts.on_nonfinite == "skip":
            if not finite:
                self.say(f"warning: non-finite loss or gradient at step {self.global_step + 1}: "
                         f"update skipped (files: {', '.join(self.batch_files)})")
            return finite
        self.rollback_step()
        self.save_resume(interrupted=True)
        raise SystemExit(f"error: non-finite loss ({sums['total']:g}) or gradient at step "
                         f"{self.global_step + 1} (epoch {self.epoch + 1}); batch files: "
                         f"{', '.join(self.batch_files)}; the state before this step is saved: check "
                         f"these files or lower --lr, then rerun with --resume (add --on-nonfinite "
                         f"skip to skip such batches)")

    # ---- loops -------------------------------------------------------------------------------------
    def validate(self) -> dict:
        results = {}
        if not self.ctx.main or self.opts.val_images <= 0:
            return results
        for i, data in enumerate(self.data):
            if data.val is None:
                continue
            loader = get_loader(data.val, batch_size=self.opts.batch_size, workers=0,
                                device=self.ctx.device.type)
            head = 0 if self.opts.shared_head else i
            r = evaluate_domain(self.net, loader, head, data.spec, self.ctx.device, cap=True,
                                amp_dtype=self.amp_dtype)
            results[data.spec.letter] = {k: round(r[k], 5) for k in ("abs_rel", "rmse", "delta1")}
        return results

    def run_epoch(self, main_sampler, replays, max_steps) -> bool:
        """Train one epoch (or until max_steps); returns False if the step limit was reached."""
        opts = self.opts
        main_sampler.set_epoch(self.epoch)
        main_sampler.start_step = self.step_in_epoch
        main_sampler.dataset.epoch = self.epoch
        for replay in replays:  # --replay-exhaust authors: a fresh pass over each buffer per epoch
            if isinstance(replay, EpochReplayLoader):
                replay.start_epoch(self.epoch, self.step_in_epoch)
        loader = make_loader(main_sampler.dataset, main_sampler, opts, self.ctx, seed=opts.seed + self.epoch)
        steps = main_sampler.steps_per_epoch()
        bar = tqdm(total=steps, initial=self.step_in_epoch, disable=opts.quiet or not self.ctx.main,
                   desc=f"{opts.order} {opts.strategy} epoch {self.epoch + 1}/{opts.epochs}",
                   dynamic_ncols=True, leave=False)
        it, images, t0, sums, n = iter(loader), 0, time.time(), {}, 0
        while self.step_in_epoch < steps:
            if self.signals.requested(self.ctx):
                raise KeyboardInterrupt  # a signal asked to stop: the completed steps are saved
            if max_steps is not None and self.global_step >= max_steps:
                bar.close()
                if n:
                    self.log_epoch(sums, n, images, time.time() - t0, partial=True)
                return False
            micro = self.next_batches(it, replays)
            terms = self.train_step(micro)  # advances step_in_epoch and global_step
            images += self.samples_per_step() * (1 + len(replays))
            n += 1
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + value
            bar.set_postfix({k: f"{v:.3f}" for k, v in terms.items()}, refresh=False)
            bar.update(1)
        bar.close()
        self.finish_epoch(sums, n, images, time.time() - t0)
        return True

    def next_batches(self, it, replays):
        """The micro-batches of the next step. An unreadable sample stops the run, but first the
        resume state of the last completed step is saved, so no finished work is lost."""
        try:
            micro = [(next(it), [r.next() for r in replays]) for _ in range(self.opts.grad_accum)]
        except (DatasetFormatError, OSError, ValueError, RuntimeError) as exc:
            if self.signals.signum is not None:  # data-loader workers killed by the same signal
                raise KeyboardInterrupt from None
            self.save_resume(interrupted=True)
            raise SystemExit(f"error: {loader_message(exc)}; the state after step {self.global_step} "
                             f"is saved: fix or remove that file, then rerun with --resume") from None
        self.batch_files = [str(p) for batch, replay in micro for b in (batch, *replay)
                            for p in (b.get("path", []) if b is not None else [])]
        return micro

    def finish_epoch(self, sums, n, images, seconds):
        with self.signals.shield():  # the schedule and the epoch counter advance together
            self.sched.step()
            self.epoch += 1
            self.step_in_epoch = 0
        self.log_epoch(sums, n, images, seconds)
        self.save_resume()

    def log_epoch(self, sums, n, images, seconds, partial=False):
        """Validation of every learned domain and one log line; ``partial`` when --max-steps cut it."""
        val = self.validate()
        record = {"epoch": self.epoch + (1 if partial else 0), "partial": partial,
                  "global_step": self.global_step,
                  "lr": self.optim.param_groups[0]["lr"], "seconds": round(seconds, 2),
                  # every image through the student: the new domain's and each replay batch's
                  "images_per_s": round(images / max(seconds, 1e-9), 3),
                  "new_images_per_s": round(images / (1 + len(self.replay_sets)) / max(seconds, 1e-9), 3),
                  "loss": {k: round(v / max(n, 1), 5) for k, v in sums.items()}, "val": val}
        self.log(record)
        val_text = " ".join(f"{d}: rmse {v['rmse']:.3f} d1 {v['delta1']:.3f}" for d, v in val.items())
        self.say(f"[{self.opts.order} {self.opts.strategy}] epoch {record['epoch']}"
                 f"{' (stopped by --max-steps)' if partial else ''}: "
                 f"loss {record['loss'].get('total', float('nan')):.4f}, "
                 f"{record['images_per_s']:.2f} img/s  {val_text}")

    def train(self):
        opts, ctx = self.opts, self.ctx
        main_set = SeededSamples(self.data[self.main_domain].train, opts.seed)
        if not drop_last(opts) and ctx.world * opts.grad_accum > 1:
            raise SystemExit("error: --no-drop-last (partial last batches, as upstream) needs a single "
                             "process without --grad-accum")
        main_sampler = StepSampler(main_set, opts.batch_size, ctx.world, ctx.rank, opts.grad_accum,
                                   seed=opts.seed, partial=not drop_last(opts))
        if main_sampler.steps_per_epoch() == 0:
            raise SystemExit(f"error: {len(self.data[self.main_domain].train)} training images are "
                             f"too few for batch size {opts.batch_size}")
        exhaust = getattr(opts, "replay_exhaust", None) == "authors" and opts.strategy != "joint"
        replay_class = EpochReplayLoader if exhaust else CyclingLoader
        replays = [replay_class(ds, opts, ctx, salt=k + 1) for k, ds in enumerate(self.replay_sets)]
        for replay in replays:
            replay.seek(self.replay_steps_done)
        try:
            with self.signals:
                while self.epoch < opts.epochs:
                    if not self.run_epoch(main_sampler, replays, opts.max_steps):
                        break
        except KeyboardInterrupt:
            self.save_resume(interrupted=True)
            self.say(f"interrupted at step {self.global_step}: resume with the same command plus "
                     f"--resume ({Path(opts.run_dir) / 'last.pth.tar'})")
            raise SystemExit(128 + (self.signals.signum or signal.SIGINT)) from None
        # the finished training's state, so that an interrupt while the prototypes are computed
        # (or a failed final save) resumes straight to them
        self.save_resume()

    def prototypes(self) -> dict | None:
        if self.opts.shared_head:  # one head for every domain: there is nothing to select
            return None
        sets = [d.prototype_set(self.opts) for d in self.data]
        loaders = [get_loader(s, batch_size=self.opts.batch_size, workers=0,
                              device=self.ctx.device.type) for s in sets]
        protos = compute_prototypes(self.net, loaders, self.ctx.device)
        # the default (lda) selector's statistics: the same rows under the training augmentation,
        # each sample's augmentation seeded, so the stored statistics are reproducible
        augmented = [SeededSamples(Subset(d.replay_full, range(min(self.opts.proto_images, len(d.replay_full)))),
                                   self.opts.seed + 7) for d in self.data]
        protos["lda"] = compute_lda(self.net, [get_loader(a, batch_size=self.opts.batch_size, workers=0,
                                                          device=self.ctx.device.type) for a in augmented],
                                    self.ctx.device)
        protos["frames"] = self.frame_statistics()
        return protos

    def frame_statistics(self):
        """Selector statistics on whole frames and the out-of-domain thresholds (inference/replay.py);
        None (with a note) when a domain has too few replay rows to hold some out."""
        from cli.options import CLIError
        from inference.predictor import DepthPredictor
        from inference.replay import frame_statistics
        mode = self.net.training
        try:  # on the default inference path: the features a query gets (and 2-4x faster on a CPU)
            return frame_statistics(DepthPredictor(self.net, device=self.ctx.device),
                                    "".join(s.letter for s in self.specs), self.opts.data_root,
                                    self.cameras(self.specs), max_images=self.opts.proto_images,
                                    seed=self.opts.seed)
        except CLIError as e:
            self.say(f"no frame statistics stored ({e})")
            return None
        finally:
            self.net.train(mode)


def scaled_size(size, scale: float):
    """Network input (H, W) of a domain at a --scale, rounded as the transforms round it."""
    return tuple(scaled(n, scale) for n in size)


def describe(opts, stage: Stage, ctx: Dist) -> str:
    terms = ["new"]
    terms += [f"distill {s.letter} x{w:g}" for s, w in zip(stage.specs, stage.distill_w)]
    kind = "joint" if opts.strategy == "joint" else "replay"
    others = [i for i in range(len(stage.specs)) if i != stage.main_domain] if kind == "joint" else stage.replay_heads
    terms += [f"{kind} {stage.specs[j].letter} x{w:g}" for j, w in zip(others, stage.replay_w)]
    return (f"stage {opts.order} ({opts.strategy}): learning {stage.specs[stage.main_domain].name} "
            f"on {ctx.device} x{ctx.world}, {len(stage.data[stage.main_domain].train)} images, "
            f"batch {opts.batch_size}x{opts.grad_accum}x{ctx.world}, terms: {', '.join(terms)}"
            f"{protocol_note(opts)}")


def protocol_note(opts) -> str:
    """'; protocol X: the options that differ from ours', or '' for a plain ours run."""
    ours = {k: v[0] for k, v in {**PROTOCOL_TRAINING, **PROTOCOL_DATA}.items()}
    changed = [f"{k.replace('_', '-')}={getattr(opts, k)}" for k in ours if getattr(opts, k, ours[k]) != ours[k]]
    protocol = getattr(opts, "protocol", "ours")
    if protocol == "ours" and not changed:
        return ""
    return f"; protocol {protocol}" + (f" ({', '.join(changed)})" if changed else "")


def main(default_order: str, description: str, argv=None) -> str:
    """Parse options and run one stage; returns the path of the final checkpoint.

    Every user error (bad option, data, checkpoint, full disk) ends in SystemExit with one
    ``error: ...`` message, no traceback; an interrupt ends with 130 (SIGINT) or 143 (SIGTERM)."""
    try:
        return run_stage(default_order, description, argv)
    except (CheckpointError, DatasetFormatError, WriteError, FileNotFoundError) as err:
        raise SystemExit(f"error: {printable(err)}") from None
    except SystemExit as stop:
        if isinstance(stop.code, str):
            raise SystemExit(printable(stop.code)) from None
        raise
    except KeyboardInterrupt:  # outside the training loop (which saves its state itself)
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None


@contextmanager
def run_folder_lock(run_dir: Path):
    """Hold ``run_dir/.lock`` (an exclusive flock, released by the kernel when the process ends,
    also on kill -9) for the whole stage: a second training into the same run folder stops at once
    instead of interleaving its epochs into the same log.jsonl and replacing the other's model."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / ".lock", "a+")
    except OSError as exc:
        raise SystemExit(f"error: cannot create the run folder {run_dir} ({exc.strerror or exc}); "
                         f"choose another --runs-dir or --out") from None
    try:
        import fcntl
    except ImportError:  # no flock on this platform: run unlocked, as before
        fcntl = None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = handle.read().strip() or "?"
                raise SystemExit(f"error: {run_dir} is in use by another training (pid {holder}); wait "
                                 f"for it to finish, or choose another --runs-dir / --out") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
        yield
    finally:
        handle.close()


def start_run_folder(opts) -> None:
    """Clean temp files of killed saves, start over if asked to, write options.json."""
    run_dir = Path(opts.run_dir)
    for folder in (run_dir, Path(opts.out).parent):
        for path in clean_stale_temps(folder):
            print(f"removed {path} (an interrupted save)", file=sys.stderr)
    run_dir.mkdir(parents=True, exist_ok=True)
    if opts.resume is None and opts.overwrite:  # starting over: the earlier run's state goes
        for name in ("last.pth.tar", "log.jsonl"):
            (run_dir / name).unlink(missing_ok=True)
    with atomic_write(run_dir / "options.json", "w") as f:
        json.dump(vars(opts), f, indent=2)


def run_stage(default_order: str, description: str, argv=None) -> str:
    opts = resolve_options(build_parser(default_order, description).parse_args(argv), default_order)
    ctx = Dist(opts.device)
    try:
        check_paths(opts)  # on every process, so that all of them stop; before the folder is made
        with run_folder_lock(Path(opts.run_dir)) if ctx.main else nullcontext():
            return _run_locked(opts, ctx)
    finally:
        ctx.close()


def _run_locked(opts, ctx) -> str:
    """The stage, with its run folder locked (run_stage)."""
    check_paths(opts)  # again: another run may have finished between the first check and the lock
    if ctx.main:
        start_run_folder(opts)
        if opts.pretrained is None and (len(opts.order) == 1 or opts.strategy == "joint"):
            print("warning: no --pretrained ImageNet weights given; the encoder starts from "
                  "random weights", file=sys.stderr)
        if warning := amp_warning(opts.amp, ctx.device):
            print(warning, file=sys.stderr)
    stage = Stage(opts, ctx)
    resume = Path(opts.run_dir) / "last.pth.tar" if opts.resume == "auto" else opts.resume
    if resume is not None:
        if not Path(resume).is_file():
            raise SystemExit(f"error: nothing to resume: {resume} does not exist")
        stage.load_resume(resume)
    elif ctx.main and stage.log_path.is_file():
        stage.log_path.unlink()  # a fresh run starts a fresh log (a resumed one appends)
    stage.say(describe(opts, stage, ctx))
    stage.train()
    prototypes = stage.prototypes() if ctx.main else None
    calibration = stage.uncertainty_calibration() if ctx.main else None
    stage.save_final(prototypes, calibration)
    ctx.barrier()
    stage.say(f"wrote {opts.out}")
    return opts.out
