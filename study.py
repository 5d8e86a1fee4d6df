#!/usr/bin/env python3
"""The lifelong study: every learning order x strategy on the synthetic stand-in domains, one report.

    python3 study.py                      # the full study -> docs/RESULTS.md + docs/figures/study_*.png
    python3 study.py --report-only        # rebuild the report from the runs and evaluations on disk
    python3 study.py --quick --data-root /tmp/tiny --runs-dir /tmp/runs --report /tmp/R.md \
        --figures-dir /tmp/fig --orders NKS,KNS --strategies ours,finetune     # smoke configuration

What it runs (each piece once; everything already on disk is reused):

* single-domain models, one per first letter (the first stage, shared by every lifelong strategy:
  ``lifelong.run_name`` gives it no strategy suffix) - also the plasticity reference;
* for every order and lifelong strategy (ours, finetune, distill, replay) stages 2 and 3, each
  trained from the previous stage of the same strategy;
* joint training once per domain *set* (e.g. NK for the orders NKS and KNS, and NKS for all
  orders): it is order-independent, so the same model fills the joint matrix of every order
  whose learned set matches (its first stage is the single-domain model);
* the single-head baseline (``--strategy joint --shared-head`` on NKS) and, for comparison, the
  per-domain-head joint model on NKS;
* optional extra variants (``--variant``) of a lifelong strategy with other engine options,
  trained from the shared first stage, for diagnosing a result (clearly labelled in the report).

Training is done by the engine (``lifelong.main``) in this process, in float32 (``--amp off``, so
that the results do not depend on whether the CPU has native bfloat16). A stage whose checkpoint
exists is not retrained (its recorded settings must match, else the study stops and says so); a
stage whose run folder holds ``last.pth.tar`` but no final checkpoint was interrupted and is
continued with the engine's ``--resume``. An evaluation whose JSON exists (same settings, same
checkpoint file) is not recomputed. Interrupt at any time (Ctrl-C) and run the same command again.

Evaluation: each checkpoint on the test split of every domain it has learned, with the domain
prior (each domain through its own head), per-image averaging, predictions capped to the domain's
depth range, the domain's own crop convention (test.py's defaults), float32; plus automatic head
selection by the nearest stored pooled prototype (``prototypes.select_domain``). The lifelong
summary (final average, forgetting, backward transfer) is ``evaluation.lifelong_summary``.
Choices between variants use only the validation rows the engine holds out of the training data
(its ``log.jsonl``), never the test split.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import lifelong  # noqa: E402
from domains import get_domain, load_domains_from_root  # noqa: E402
from evaluation import DomainEvaluator, lifelong_summary  # noqa: E402
from loaders import get_dataset, get_loader  # noqa: E402
from losses import upsample_to  # noqa: E402
from models import load_checkpoint  # noqa: E402
from prototypes import select_domain  # noqa: E402

ALL_ORDERS = tuple("".join(p) for p in itertools.permutations("NKS"))  # NKS NSK KNS KSN SNK SKN
LIFELONG_STRATEGIES = ("ours", "finetune", "distill", "replay")
STRATEGIES = LIFELONG_STRATEGIES + ("joint",)
CANONICAL = "NKS"
REPORT_METRICS = ("rmse", "abs_rel")
METRIC_LABEL = {"rmse": "RMSE (m)", "abs_rel": "AbsRel", "delta1": "d1"}
# A single-domain model whose validation error is above this share of a constant prediction's has
# barely learned its domain; the report says so.
WEAK_FIT_RATIO = 0.9
STRATEGY_COLORS = {"ours": "tab:red", "finetune": "tab:gray", "distill": "tab:blue",
                   "replay": "tab:green", "joint": "tab:purple", "single": "black"}

# The study's settings (see docs/RESULTS.md for why): full run, and the smoke configuration.
FULL = {"scale": 0.25, "epochs": 1, "first_epochs": 6, "batch_size": 8, "encoder": "resnet18",
        "seed": 0, "val_images": 30, "proto_images": 50, "replay_size": 100, "eval_images": 0,
        "max_steps": None, "first_max_steps": None, "workers": 0, "jobs": 2, "threads": 1}
QUICK = {"scale": 0.25, "epochs": 1, "first_epochs": 1, "batch_size": 4, "encoder": "resnet18",
         "seed": 0, "val_images": 2, "proto_images": 4, "replay_size": 8, "eval_images": 2,
         "max_steps": 1, "first_max_steps": 2, "workers": 0, "jobs": 2, "threads": 1}
# Frames rendered at the training scale: the KITTI recipe crops without resizing, so full-size frames
# at --scale 0.25 would show an 80x120 window of road right in front of the car (about 5-10 m).
# 100 replay rows (of 300) leave the engine rows outside the replay CSV to hold out for validation.
SYNTHETIC_COMMAND = ["synthetic.py", "--scale", "0.25", "--replay-size", "100"]
DEFAULT_DATA_ROOT = "datasets/synthetic_s025"


class StudyError(SystemExit):
    """A user-facing error: printed as ``error: ...``, exit status 1."""

    def __init__(self, message: str):
        super().__init__(f"error: {message}")


# ==================================================================================================
# Options
# ==================================================================================================
class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the None of options whose default is the study's (given in the help)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


def _d(key: str) -> str:
    return f"(study default {FULL[key]}; --quick {QUICK[key]})"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Run the Lifelong-MonoDepth study (all orders x strategies, single-domain "
                    "references, joint and single-head baselines) on synthetic stand-in domains and "
                    "write docs/RESULTS.md with figures. Existing runs and evaluations are reused; "
                    "an interrupted study resumes with the same command.",
        formatter_class=_HelpFormatter)
    g = p.add_argument_group("what to run")
    g.add_argument("--orders", default=",".join(ALL_ORDERS),
                   help="comma-separated learning orders (letters of N, K, S)")
    g.add_argument("--strategies", default=",".join(STRATEGIES),
                   help=f"comma-separated strategies among {', '.join(STRATEGIES)}")
    g.add_argument("--single-head", action=argparse.BooleanOptionalAction, default=True,
                   help="train the single-head baseline (joint --shared-head on all domains) and the "
                        "per-domain-head joint model it is compared with")
    g.add_argument("--variant", action="append", default=[], metavar="NAME:STRATEGY:ENGINE-ARGS",
                   help="an extra, labelled variant of a lifelong strategy, e.g. "
                        "'ours_dw100:ours:--distill-weights 100,1000'; its stages 2.. are trained "
                        "from the shared first stage with the extra engine options (repeatable)")
    g.add_argument("--variant-orders", default="NKS",
                   help="orders the variants are trained on (comma-separated)")
    g.add_argument("--report-only", action="store_true",
                   help="train and evaluate nothing: rebuild the report from what is on disk "
                        "(missing runs are reported as missing)")
    g.add_argument("--quick", action="store_true",
                   help="smoke configuration for tests: " + ", ".join(f"{k}={v}" for k, v in QUICK.items())
                        + " (explicit options still win)")

    g = p.add_argument_group("data and outputs")
    g.add_argument("--data-root", default=DEFAULT_DATA_ROOT,
                   help="synthetic data root; generated with `python3 "
                        + " ".join(SYNTHETIC_COMMAND) + " --out DATA_ROOT` when missing")
    g.add_argument("--runs-dir", default="runs/study", help="checkpoints, run folders and evaluations")
    g.add_argument("--report", default="docs/RESULTS.md", help="the markdown report to write")
    g.add_argument("--figures-dir", default="docs/figures", help="folder of the report's PNG figures")

    g = p.add_argument_group("training settings (each defaults to the study's setting, or the smoke "
                             "setting with --quick)")
    g.add_argument("--scale", type=float, default=None, help="input size factor of every stage " + _d("scale"))
    g.add_argument("--epochs", type=int, default=None,
                   help="epochs of every later stage (learning domain 2 and 3) " + _d("epochs"))
    g.add_argument("--first-epochs", type=int, default=None,
                   help="epochs of the models trained from scratch: single-domain first stages, "
                        "joint and single-head models (a joint epoch covers every domain's data) " + _d("first_epochs"))
    g.add_argument("--max-steps", type=int, default=None,
                   help="optimiser step limit of every later stage " + _d("max_steps"))
    g.add_argument("--first-max-steps", type=int, default=None,
                   help="optimiser step limit of the models trained from scratch " + _d("first_max_steps"))
    g.add_argument("--batch-size", type=int, default=None,
                   help="batch size of every stage (also each replay batch) " + _d("batch_size"))
    g.add_argument("--encoder", default=None, choices=["resnet18", "resnet34", "resnet50"],
                   help="encoder of the models trained from scratch " + _d("encoder"))
    g.add_argument("--seed", type=int, default=None, help="seed of every stage " + _d("seed"))
    g.add_argument("--val-images", type=int, default=None,
                   help="validation images per domain held out of the training rows by the engine " + _d("val_images"))
    g.add_argument("--replay-size", type=int, default=None, help="replay buffer per old domain " + _d("replay_size"))
    g.add_argument("--proto-images", type=int, default=None,
                   help="images per domain for the stored prototypes " + _d("proto_images"))
    g.add_argument("--workers", type=int, default=None, help="data loader workers of the engine " + _d("workers"))
    g.add_argument("--jobs", type=int, default=None,
                   help="stages trained (and checkpoints evaluated) in parallel processes; results do "
                        "not depend on it " + _d("jobs"))
    g.add_argument("--threads", type=int, default=None,
                   help="torch threads per process; 1 thread x 2 processes is several times faster than "
                        "2 threads on a shared 2-core machine (OpenMP threads spin-wait for each other) "
                        + _d("threads"))

    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-images", type=int, default=None,
                   help="test images per domain (the first ones of each test split); 0 = all " + _d("eval_images"))
    g.add_argument("--crop", default="default", choices=["default", "none", "eigen", "garg"],
                   help="crop convention; default = the domain's own (test.py's default)")
    g.add_argument("--eval-batch-size", type=int, default=16, help="test images per forward pass")
    g.add_argument("--quiet", action="store_true", help="no progress bars in the engine")
    return p


@dataclass
class Settings:
    data_root: str
    runs_dir: Path
    scale: float
    epochs: int
    first_epochs: int
    max_steps: int | None
    first_max_steps: int | None
    batch_size: int
    encoder: str
    seed: int
    val_images: int
    replay_size: int
    proto_images: int
    workers: int
    eval_images: int | None
    crop: str
    eval_batch_size: int
    quiet: bool
    quick: bool
    jobs: int = 1
    threads: int = 1

    def training(self) -> dict:
        return {k: getattr(self, k) for k in ("data_root", "scale", "epochs", "first_epochs",
                                               "max_steps", "first_max_steps", "batch_size",
                                               "encoder", "seed", "val_images", "replay_size",
                                               "proto_images", "workers")}

    def evaluation(self) -> dict:
        return {"eval_images": self.eval_images, "crop": self.crop, "cap": True,
                "aggregate": "image", "scale": self.scale, "selector": "pooled",
                "precision": "fp32"}


def resolve_settings(args) -> Settings:
    base = QUICK if args.quick else FULL
    pick = lambda key: getattr(args, key) if getattr(args, key) is not None else base[key]  # noqa: E731
    eval_images = pick("eval_images")
    s = Settings(data_root=args.data_root, runs_dir=Path(args.runs_dir), scale=pick("scale"),
                 epochs=pick("epochs"), first_epochs=pick("first_epochs"),
                 max_steps=pick("max_steps"), first_max_steps=pick("first_max_steps"),
                 batch_size=pick("batch_size"), encoder=pick("encoder"), seed=pick("seed"),
                 val_images=pick("val_images"), replay_size=pick("replay_size"),
                 proto_images=pick("proto_images"), workers=pick("workers"),
                 eval_images=eval_images if eval_images else None, crop=args.crop,
                 eval_batch_size=args.eval_batch_size, quiet=args.quiet, quick=args.quick,
                 jobs=max(1, pick("jobs")), threads=max(1, pick("threads")))
    if not s.scale > 0 or s.epochs < 1 or s.first_epochs < 1 or s.batch_size < 1:
        raise StudyError("--scale must be positive, --epochs/--first-epochs/--batch-size at least 1")
    return s


def parse_orders(text: str) -> list[str]:
    orders = []
    for item in text.split(","):
        item = item.strip().upper()
        if not item:
            continue
        if len(item) < 2 or len(set(item)) != len(item) or any(c not in CANONICAL for c in item):
            raise StudyError(f"--orders: {item!r} is not an order of distinct letters among N, K, S")
        if item not in orders:
            orders.append(item)
    if not orders:
        raise StudyError("--orders: no order given")
    return orders


def parse_strategies(text: str) -> list[str]:
    out = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        if item not in STRATEGIES:
            raise StudyError(f"--strategies: unknown {item!r}; choose among {', '.join(STRATEGIES)}")
        if item not in out:
            out.append(item)
    if not out:
        raise StudyError("--strategies: none given")
    return out


@dataclass
class Variant:
    name: str
    strategy: str
    extra: list[str]

    @property
    def text(self) -> str:
        return " ".join(shlex.quote(a) for a in self.extra)


def parse_variant(text: str) -> Variant:
    parts = text.split(":", 2)
    if len(parts) != 3 or not parts[0].strip():
        raise StudyError(f"--variant {text!r}: expected NAME:STRATEGY:ENGINE-ARGS")
    name, strategy, extra = parts[0].strip(), parts[1].strip().lower(), shlex.split(parts[2])
    if not name.replace("_", "").replace("-", "").isalnum():
        raise StudyError(f"--variant name {name!r}: letters, digits, '-' and '_' only")
    if strategy not in LIFELONG_STRATEGIES:
        raise StudyError(f"--variant {name}: strategy must be one of {', '.join(LIFELONG_STRATEGIES)}")
    return Variant(name, strategy, extra)


# ==================================================================================================
# Jobs (training stages)
# ==================================================================================================
def canonical(letters) -> str:
    """A domain set in the fixed N, K, S order (the name of the order-independent joint runs)."""
    return "".join(c for c in CANONICAL if c in set(letters))


@dataclass
class Job:
    key: str                  # unique label, e.g. "NK_finetune", "variant ours_dw:NK"
    group: str                # first | lifelong | joint | shared | variant
    letters: str
    strategy: str
    out: Path
    prior: Path | None = None
    shared_head: bool = False
    extra: list[str] = field(default_factory=list)
    variant: str | None = None

    @property
    def run_dir(self) -> Path:
        return self.out.with_suffix("").with_suffix("")

    @property
    def from_scratch(self) -> bool:
        return self.group in ("first", "joint", "shared")

    def argv(self, s: Settings) -> list[str]:
        flag = "--domain" if len(self.letters) == 1 else "--order"
        epochs = s.first_epochs if self.from_scratch else s.epochs
        steps = s.first_max_steps if self.from_scratch else s.max_steps
        argv = [flag, self.letters, "--strategy", self.strategy, "--out", str(self.out),
                "--runs-dir", str(self.out.parent), "--data-root", str(s.data_root),
                "--scale", f"{s.scale:g}", "--epochs", str(epochs), "--batch-size", str(s.batch_size),
                "--encoder", s.encoder, "--seed", str(s.seed), "--val-images", str(s.val_images),
                "--replay-size", str(s.replay_size), "--proto-images", str(s.proto_images),
                "--workers", str(s.workers), "--device", "cpu", "--amp", "off"]
        if steps is not None:
            argv += ["--max-steps", str(steps)]
        if self.prior is not None:
            argv += ["--prior", str(self.prior)]
        if self.shared_head:
            argv += ["--shared-head"]
        if s.quiet:
            argv += ["--quiet"]
        return argv + list(self.extra)


def recorded_argv(record: dict) -> list[str] | None:
    """A run record's relevant arguments. Records written before the study passed ``--amp off``
    lack it; they were trained when the engine's ``--amp auto`` meant float32 on every CPU, so
    ``--amp off`` is what they ran with."""
    argv = record.get("relevant_argv")
    if argv is not None and "--amp" not in argv and "--device" in argv:
        at = argv.index("--device") + 2
        argv = argv[:at] + ["--amp", "off"] + argv[at:]
    return argv


def relevant_argv(argv: list[str]) -> list[str]:
    """The arguments that change a run's result (data-loader workers and progress bars do not)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--workers":
            skip = True
            continue
        if a in ("--quiet", "--resume"):
            continue
        out.append(a)
    return out


class Plan:
    """Every job of the study and where its checkpoint lives."""

    def __init__(self, s: Settings, orders, strategies, single_head: bool, variants, variant_orders):
        self.s, self.orders, self.strategies = s, orders, strategies
        self.variants, self.variant_orders = variants, variant_orders
        self.jobs: dict[str, Job] = {}
        runs = s.runs_dir
        firsts = []  # every domain's single-domain model (the plasticity reference)
        for o in orders + (variant_orders if variants else []):
            for c in o:
                if c not in firsts:
                    firsts.append(c)
        for c in firsts:
            self._add(Job(c, "first", c, "ours", runs / f"{c}.pth.tar"))
        for strategy in strategies:
            if strategy == "joint":
                continue
            for o in orders:
                for k in range(2, len(o) + 1):
                    name = lifelong.run_name(o[:k], strategy)
                    prior = runs / f"{lifelong.run_name(o[:k - 1], strategy)}.pth.tar"
                    self._add(Job(name, "lifelong", o[:k], strategy, runs / f"{name}.pth.tar", prior))
        joint_sets = []
        if "joint" in strategies:
            for o in orders:
                for k in range(2, len(o) + 1):
                    if canonical(o[:k]) not in joint_sets:
                        joint_sets.append(canonical(o[:k]))
        if single_head:
            full = canonical("".join(orders))
            if full not in joint_sets:
                joint_sets.append(full)
            name = lifelong.run_name(full, "joint") + "_shared"
            self._add(Job(name, "shared", full, "joint", runs / f"{name}.pth.tar", shared_head=True))
        for letters in joint_sets:
            name = lifelong.run_name(letters, "joint")
            self._add(Job(name, "joint", letters, "joint", runs / f"{name}.pth.tar"))
        for v in variants:
            vdir = runs / "variants" / v.name
            for o in variant_orders:
                for k in range(2, len(o) + 1):
                    name = lifelong.run_name(o[:k], v.strategy)
                    prior = (runs / f"{o[0]}.pth.tar" if k == 2
                             else vdir / f"{lifelong.run_name(o[:k - 1], v.strategy)}.pth.tar")
                    self._add(Job(f"variant {v.name}:{o[:k]}", "variant", o[:k], v.strategy,
                                  vdir / f"{name}.pth.tar", prior, extra=list(v.extra), variant=v.name))
        self.single_head = single_head

    def _add(self, job: Job):
        self.jobs.setdefault(job.key, job)

    def ordered(self) -> list[Job]:
        """First stages; then order by order (the given order first) its later stages of every
        strategy, each after its prior; then joint and single-head runs; then variants. An
        interrupted study therefore has whole orders done first."""
        def rank(j: Job):
            if j.group == "first":
                return (0, 0, 0)
            if j.group == "lifelong":
                o = next(i for i, o in enumerate(self.orders) if o.startswith(j.letters))
                return (1, o, len(j.letters))
            if j.group in ("joint", "shared"):
                return (2, len(j.letters), j.group == "shared")
            return (3, len(j.letters), 0)
        return sorted(self.jobs.values(), key=rank)

    # ---- checkpoints of a matrix ----------------------------------------------------------------
    def first(self, letter: str) -> Path:
        return self.s.runs_dir / f"{letter}.pth.tar"

    def stage_path(self, order: str, k: int, strategy: str, variant: Variant | None = None) -> Path:
        """Checkpoint of stage k (1-based) of ``order`` under ``strategy`` (or a variant)."""
        runs = self.s.runs_dir
        if k == 1:
            return self.first(order[0])
        if variant is not None:
            return runs / "variants" / variant.name / f"{lifelong.run_name(order[:k], variant.strategy)}.pth.tar"
        if strategy == "joint":
            return runs / f"{lifelong.run_name(canonical(order[:k]), 'joint')}.pth.tar"
        return runs / f"{lifelong.run_name(order[:k], strategy)}.pth.tar"

    def single_head_paths(self) -> tuple[Path, Path]:
        """(single-head joint model, per-domain-head joint model) on every domain of the orders."""
        full = lifelong.run_name(canonical("".join(self.orders)), "joint")
        return self.s.runs_dir / f"{full}_shared.pth.tar", self.s.runs_dir / f"{full}.pth.tar"

    def job_of(self, path: Path) -> Job | None:
        for j in self.jobs.values():
            if j.out == path:
                return j
        return None


def read_json(path: Path):
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_json(path: Path, payload) -> None:
    from safeio import atomic_write  # complete or not at all, no temp file left behind
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1, default=_json_default)
        f.write("\n")


def _json_default(obj):
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    raise TypeError(type(obj).__name__)


def reuse_check(job: Job, s: Settings) -> bool:
    """True when ``job``'s checkpoint exists (trained with the same settings; else an error)."""
    if not job.out.is_file():
        return False
    record = read_json(job.run_dir / "study_job.json") or {}
    wanted = relevant_argv(job.argv(s))
    if record and recorded_argv(record) != wanted:
        raise StudyError(
            f"{job.out} exists but was trained with other settings:\n  recorded: "
            f"{' '.join(recorded_argv(record) or [])}\n  now:      {' '.join(wanted)}\n"
            f"use another --runs-dir (or delete that run) to train with the new settings")
    return True


def train_job(job: Job, s: Settings) -> str:
    """Train ``job`` with the engine in this process; 'trained' or 'resumed'.

    A run folder holding ``last.pth.tar`` (an interrupted stage) is continued with ``--resume``.
    ``study_job.json`` in the run folder records the engine arguments, status, wall and CPU time.
    """
    argv = job.argv(s)
    record_path = job.run_dir / "study_job.json"
    record = read_json(record_path) or {}
    wanted = relevant_argv(argv)
    if job.prior is not None and not job.prior.is_file():
        raise StudyError(f"{job.key}: its prior {job.prior} is missing")
    resume = (job.run_dir / "last.pth.tar").is_file()
    if resume and record and recorded_argv(record) != wanted:
        raise StudyError(f"{job.run_dir} holds an interrupted run with other settings; delete it or "
                         f"use another --runs-dir")
    job.run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:  # a fresh start: forget the log of a run that died before its first epoch ended
        (job.run_dir / "log.jsonl").unlink(missing_ok=True)
    before = float(record.get("seconds", 0.0)) if resume else 0.0
    before_cpu = float(record.get("cpu_seconds", 0.0)) if resume else 0.0
    base = {"key": job.key, "group": job.group, "argv": argv, "relevant_argv": wanted,
            "resumed": resume or bool(record.get("resumed")), "threads": torch.get_num_threads()}
    write_json(record_path, dict(base, status="running", seconds=before, cpu_seconds=before_cpu))
    print(f"[study] {'resume' if resume else 'train'} {job.key}: python3 {engine_script(job)} "
          f"{' '.join(shlex.quote(a) for a in argv)}", flush=True)
    t0, c0 = time.time(), time.process_time()
    status = "interrupted"
    try:
        lifelong.main(job.letters if len(job.letters) > 1 else "N",
                      f"study stage {job.key}", argv + (["--resume"] if resume else []))
        status = "done"
    except SystemExit as e:
        if e.code not in (0, None):
            status = "interrupted" if e.code in (130, 143) else "failed"  # SIGINT / SIGTERM
            raise
        status = "done"
    finally:
        write_json(record_path, dict(base, status=status, seconds=round(before + time.time() - t0, 2),
                                     cpu_seconds=round(before_cpu + time.process_time() - c0, 2)))
    return "resumed" if resume else "trained"


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def _worker_train(job: Job, s: Settings):
    """Pool task: train one stage, then evaluate it (in the worker, so evaluations run in parallel)."""
    status = train_job(job, s)
    evaluate_checkpoint(job.out, s)
    return status


def _worker_eval(ckpt: Path, s: Settings):
    evaluate_checkpoint(ckpt, s)
    return "evaluated"


def run_jobs(jobs: list[Job], s: Settings, n_parallel: int, log) -> dict:
    """Train every job that has no checkpoint, ``n_parallel`` at a time, each after its prior.

    One process (n_parallel 1) trains in this process; more use a pool of spawned processes, each
    running one stage at a time with ``--threads`` torch threads.
    """
    counts = {"reused": 0, "trained": 0, "resumed": 0}
    todo = []
    for job in jobs:
        if reuse_check(job, s):
            counts["reused"] += 1
            log(f"[study] reuse {job.out}")
        else:
            todo.append(job)
    if not todo:
        return counts
    total = len(todo)
    if n_parallel <= 1:
        for i, job in enumerate(todo, 1):
            log(f"[study] stage {i}/{total}: {job.key}")
            counts[train_job(job, s)] += 1
            evaluate_checkpoint(job.out, s)
        return counts
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    pending = list(todo)
    training = {j.out for j in todo}
    running, started = {}, 0
    with ProcessPoolExecutor(max_workers=n_parallel, mp_context=mp.get_context("spawn"),
                             initializer=_worker_init, initargs=(s.threads,)) as pool:
        try:
            while pending or running:
                for job in list(pending):
                    if len(running) >= n_parallel:
                        break
                    if job.prior is not None and job.prior in training and not job.prior.is_file():
                        continue  # its prior is still being trained
                    pending.remove(job)
                    started += 1
                    log(f"[study] stage {started}/{total}: {job.key}")
                    running[pool.submit(_worker_train, job, s)] = job
                if not running:
                    missing = ", ".join(j.key for j in pending)
                    raise StudyError(f"cannot schedule {missing}: their priors failed")
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in done:
                    job = running.pop(fut)
                    counts[fut.result()] += 1  # re-raises a worker's error here
                    training.discard(job.out)
        except BaseException:
            for fut in running:
                fut.cancel()
            raise
    return counts


def evaluate_all(ckpts: list[Path], s: Settings, n_parallel: int) -> dict:
    """Every checkpoint's evaluation (cached ones are read back; the others computed in parallel)."""
    todo = [c for c in ckpts if not eval_cached(c, s)]
    if todo and n_parallel > 1 and len(todo) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(max_workers=n_parallel, mp_context=mp.get_context("spawn"),
                                 initializer=_worker_init, initargs=(s.threads,)) as pool:
            for fut in [pool.submit(_worker_eval, c, s) for c in todo]:
                fut.result()
    return {str(c): evaluate_checkpoint(c, s) for c in ckpts}


def engine_script(job: Job) -> str:
    return {1: "train_N.py"}.get(len(job.letters), "train_NK.py" if len(job.letters) == 2 else "train_NKS.py")


def ensure_data(root: str, log) -> None:
    root_path = Path(root)
    if (root_path / "nyu2_train.csv").is_file():
        return
    cmd = [sys.executable, str(HERE / SYNTHETIC_COMMAND[0])] + SYNTHETIC_COMMAND[1:] + ["--out", root, "--quiet"]
    log(f"[study] {root} is missing: generating it with {' '.join(cmd[1:])}")
    subprocess.run(cmd, check=True)


def check_validation_rows(s: Settings) -> None:
    """The engine draws validation rows outside the replay CSV: say so when there are none. Also
    warn when the frames are larger than the training scale (KITTI crops would see a small window)."""
    meta = read_json(Path(s.data_root) / "meta.json") or {}
    frame_scale = float(meta.get("scale", s.scale) or s.scale)
    if frame_scale > 1.5 * s.scale:
        print(f"warning: {s.data_root} holds frames rendered at scale {frame_scale:g} but the study trains "
              f"at --scale {s.scale:g}: the KITTI recipe crops without resizing, so K would be a small "
              f"window of the frame (near road only); generate frames at the training scale with "
              f"`python3 {' '.join(SYNTHETIC_COMMAND)} --out DIR`", file=sys.stderr)
    for c in CANONICAL:
        try:
            train = get_dataset(c, "train", s.data_root, train=False, scale=s.scale, check_files=False)
            replay = get_dataset(c, "replay", s.data_root, train=False, scale=s.scale, check_files=False)
        except (FileNotFoundError, ValueError):
            continue
        rows = {r.image for r in replay.rows}
        free = sum(1 for r in train.rows if r.image not in rows)
        if s.val_images > 0 and free < s.val_images:
            print(f"warning: {c}: only {free} training rows lie outside the replay CSV, so the engine can "
                  f"hold out {free} (not {s.val_images}) validation images; regenerate the data root "
                  f"with a smaller --replay-size (the study uses `{' '.join(SYNTHETIC_COMMAND)}`)",
                  file=sys.stderr)


# ==================================================================================================
# Evaluation
# ==================================================================================================
def eval_path(s: Settings, ckpt: Path) -> Path:
    rel = os.path.relpath(ckpt, s.runs_dir).replace(os.sep, "__")
    return s.runs_dir / "eval" / (rel.replace(".pth.tar", "") + ".json")


def test_subset(letter: str, s: Settings):
    ds = get_dataset(letter, "test", s.data_root, train=False, scale=s.scale)
    if s.eval_images is not None and s.eval_images < len(ds):
        ds = Subset(ds, range(s.eval_images))
    return ds


def eval_cached(ckpt: Path, s: Settings):
    """The cached evaluation of ``ckpt`` if it is current (same settings, same checkpoint file)."""
    cached = read_json(eval_path(s, ckpt))
    if cached and cached.get("settings") == s.evaluation() and \
            cached.get("checkpoint_mtime_ns") == ckpt.stat().st_mtime_ns:
        return cached
    return None


@torch.no_grad()
def evaluate_checkpoint(ckpt: Path, s: Settings, letters: str | None = None) -> dict:
    """Errors of every learned domain (domain prior) and of automatic head selection.

    Cached in ``<runs>/eval/<name>.json``; recomputed when the settings or the checkpoint change.
    """
    cached = eval_cached(ckpt, s)
    if cached:
        return cached
    path, stamp = eval_path(s, ckpt), ckpt.stat().st_mtime_ns
    t0 = time.time()
    net = load_checkpoint(ckpt)
    meta = net.meta
    heads = meta.get("letters")
    shared = not heads
    if shared:
        heads = None
        letters = letters or meta.get("trained_letters") or (meta.get("options") or {}).get("order")
    letters = letters or heads
    protos = meta.get("prototypes") if not shared and net.num_domains > 1 else None
    results = {}
    for c in letters:
        spec = get_domain(c)
        loader = get_loader(test_subset(c, s), batch_size=s.eval_batch_size, workers=0)
        head = 0 if shared else heads.index(c)
        prior = DomainEvaluator(spec, crop=s.crop, cap=True, aggregate="image")
        selected = DomainEvaluator(spec, crop=s.crop, cap=True, aggregate="image") if protos else None
        chosen_counts = [0] * net.num_domains
        for batch in loader:
            feats = net.features(batch["image"])
            depth, _ = net.head_forward(feats, head, with_uncertainty=False)
            prior.add_batch(depth, batch["depth"], batch.get("window"))
            if protos:
                chosen = select_domain(feats, protos, "pooled")
                sel = depth.clone()
                for h in chosen.unique().tolist():
                    chosen_counts[h] += int((chosen == h).sum())
                    if h != head:
                        rows = (chosen == h).nonzero(as_tuple=True)[0]
                        sel[rows] = net.head_forward(feats[rows], h, with_uncertainty=False)[0]
                selected.add_batch(sel, batch["depth"], batch.get("window"))
        entry = {"prior": prior.result(), "head": head}
        if protos:
            entry["selected"] = selected.result()
            entry["chosen"] = dict(zip(heads, chosen_counts))
        results[c] = entry
    out = {"checkpoint": str(ckpt), "checkpoint_mtime_ns": stamp, "settings": s.evaluation(),
           "letters": heads, "shared_head": shared, "strategy": meta.get("strategy"),
           "seconds": round(time.time() - t0, 2), "results": results}
    write_json(path, out)
    return out


def validation_split(letter: str, s: Settings):
    """(validation dataset, training rows used for nothing but fitting a constant): the engine's rows."""
    train = get_dataset(letter, "train", s.data_root, train=False, scale=s.scale)
    replay = get_dataset(letter, "replay", s.data_root, train=False, scale=s.scale)
    replay_rows = {r.image for r in replay.rows}
    train_idx, val_idx = lifelong.split_validation(train, replay_rows, s.val_images, 0)
    return Subset(train, val_idx), Subset(train, train_idx)


@torch.no_grad()
def constant_baselines(s: Settings, letters: str) -> dict:
    """Validation errors of predicting one constant depth everywhere (the mean training depth).

    The constant is fitted on (at most 100 of) the domain's training rows outside validation; it
    is the "no fit" reference a trained single-domain model must clearly beat.
    """
    path = s.runs_dir / "eval" / "constant_baseline.json"
    key = {"data_root": str(s.data_root), "scale": s.scale, "val_images": s.val_images,
           "crop": s.crop, "letters": letters}
    cached = read_json(path)
    if cached and cached.get("key") == key:
        return cached["results"]
    results = {}
    for c in letters:
        spec = get_domain(c)
        val, train = validation_split(c, s)
        if len(val) == 0:
            continue
        total, count = 0.0, 0
        for i in range(min(100, len(train))):
            d = train[i]["depth"]
            valid = (d > spec.min_depth) & (d < spec.max_depth)
            total += float(d[valid].sum())
            count += int(valid.sum())
        const = total / max(count, 1)
        ev = DomainEvaluator(spec, crop=s.crop, cap=True, aggregate="image")
        for batch in get_loader(val, batch_size=s.eval_batch_size, workers=0):
            ev.add_batch(torch.full_like(batch["depth"], const), batch["depth"], batch.get("window"))
        r = ev.result()
        results[c] = {"constant_m": const, "abs_rel": r["abs_rel"], "rmse": r["rmse"],
                      "delta1": r["delta1"], "count": r["count"]}
    write_json(path, {"key": key, "results": results})
    return results


def read_log(run_dir: Path) -> list[dict]:
    out = []
    try:
        with open(run_dir / "log.jsonl") as f:
            for line in f:
                line = line.strip()
                if line:
                    out.append(json.loads(line))
    except FileNotFoundError:
        pass
    return out


def last_validation(ckpt: Path) -> dict | None:
    """Per-domain validation metrics of the stage's last logged epoch (the engine's held-out rows)."""
    records = [r for r in read_log(ckpt.with_suffix("").with_suffix("")) if r.get("val")]
    return records[-1]["val"] if records else None


def relative_gap(value, ref):
    return None if value is None or ref in (None, 0) else (value - ref) / ref


# ==================================================================================================
# Collecting the results
# ==================================================================================================
class Results:
    """Every number of the report, computed from the evaluation JSONs and run logs."""

    def __init__(self, plan: Plan, evals: dict, baselines: dict):
        self.plan, self.evals, self.baselines = plan, evals, baselines
        self.s = plan.s

    def ev(self, path: Path):
        return self.evals.get(str(path))

    def value(self, path, letter, metric, kind="prior"):
        e = self.ev(path)
        if not e or letter not in e["results"]:
            return None
        r = e["results"][letter].get(kind)
        return None if r is None else r[metric]

    def matrix(self, order: str, strategy: str, metric: str, variant=None, source="test"):
        """``m[s][d]``: ``metric`` of domain order[d] after stage s (None where missing)."""
        rows = []
        for k in range(1, len(order) + 1):
            path = self.plan.stage_path(order, k, strategy, variant)
            if source == "test":
                rows.append([self.value(path, order[d], metric) for d in range(k)])
            else:
                val = last_validation(path) if path.is_file() else None
                rows.append([(val or {}).get(order[d], {}).get(metric) for d in range(k)])
        return rows

    def summary(self, order, strategy, metric, variant=None, source="test"):
        m = self.matrix(order, strategy, metric, variant, source)
        if any(v is None for row in m for v in row):
            return None
        return lifelong_summary(m, metric=metric)

    def single(self, letter, metric):
        return self.value(self.plan.first(letter), letter, metric)

    def strategies_present(self):
        return [s for s in self.plan.strategies]


# ==================================================================================================
# Figures
# ==================================================================================================
def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def fig_fit(res: Results, out: Path, letters: str):
    """Validation AbsRel and RMSE per epoch of the single-domain models against the constant baseline."""
    plt = _plt()
    fig, axes = plt.subplots(2, len(letters), figsize=(3.8 * len(letters), 5.6), squeeze=False)
    for col, c in enumerate(letters):
        recs = [r for r in read_log(res.plan.first(c).with_suffix("").with_suffix("")) if r.get("val")]
        xs = [r["global_step"] for r in recs]
        base = res.baselines.get(c)
        for row, metric in enumerate(("abs_rel", "rmse")):
            ax = axes[row, col]
            ax.plot(xs, [r["val"].get(c, {}).get(metric) for r in recs], "o-", color="black",
                    label="single-domain model")
            if base:
                ax.axhline(base[metric], ls="--", color="tab:orange",
                           label=f"constant {base['constant_m']:.2f} m")
            ax.set_ylim(bottom=0)
            ax.set_ylabel(f"validation {METRIC_LABEL[metric]}")
            if row == 0:
                ax.set_title(f"{get_domain(c).name} ({c})")
                ax.legend(fontsize=7)
            else:
                ax.set_xlabel("optimiser step")
    fig.suptitle("Do the single-domain models fit? Validation rows, synthetic stand-ins", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def fig_summary(res: Results, out: Path, strategies, orders):
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    panels = [("final_average", "abs_rel", "final average AbsRel (lower better)"),
              ("average_forgetting", "abs_rel", "average forgetting, AbsRel (lower better)"),
              ("average_forgetting", "rmse", "average forgetting, RMSE m (lower better)")]
    for ax, (key, metric, title) in zip(axes, panels):
        for i, st in enumerate(strategies):
            vals = [(res.summary(o, st, metric) or {}).get(key) for o in orders]
            vals = [v for v in vals if v is not None]
            if not vals:
                continue
            ax.bar(i, np.mean(vals), color=STRATEGY_COLORS.get(st, "gray"), alpha=0.6)
            ax.plot(np.full(len(vals), i) + np.linspace(-0.2, 0.2, len(vals)), vals, "k.", ms=4)
        ax.set_xticks(range(len(strategies)))
        ax.set_xticklabels(strategies)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(title, fontsize=9)
    fig.suptitle("Mean over orders (bars) and each order (dots); synthetic stand-ins", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def fig_forgetting_curves(res: Results, out: Path, strategies, orders):
    plt = _plt()
    n = len(orders)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, o in zip(axes.flat, orders):
        first = o[0]
        labels = [o[:k] for k in range(1, len(o) + 1)]
        for st in strategies:
            m = res.matrix(o, st, "rmse")
            ys = [row[0] for row in m]
            ax.plot(range(len(labels)), [np.nan if y is None else y for y in ys], "o-",
                    color=STRATEGY_COLORS.get(st, "gray"), label=st)
        ref = res.single(first, "rmse")
        if ref is not None:
            ax.axhline(ref, ls=":", color="black", lw=1, label="single-domain")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels([f"after {lab}" for lab in labels])
        ax.set_title(f"order {o}: {get_domain(first).name} ({first}) test RMSE", fontsize=9)
        ax.set_ylabel("RMSE (m)")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Forgetting curves: error of the first domain across stages (synthetic stand-ins)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def confusion(res: Results, path: Path, order: str):
    e = res.ev(path)
    if not e:
        return None
    rows = []
    for c in order:
        r = e["results"].get(c)
        if not r or "chosen" not in r:
            return None
        rows.append([r["chosen"].get(h, 0) for h in order])
    return np.array(rows)


def fig_selection(res: Results, out: Path, orders, strategy="ours"):
    plt = _plt()
    mats = [(o, confusion(res, res.plan.stage_path(o, len(o), strategy), o)) for o in orders]
    mats = [(o, m) for o, m in mats if m is not None]
    if not mats:
        return False
    cols = min(3, len(mats))
    rows = math.ceil(len(mats) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.flat[len(mats):]:
        ax.axis("off")
    for ax, (o, m) in zip(axes.flat, mats):
        frac = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
        ax.imshow(frac, vmin=0, vmax=1, cmap="Blues")
        for i in range(len(o)):
            for j in range(len(o)):
                ax.text(j, i, str(m[i, j]), ha="center", va="center",
                        color="white" if frac[i, j] > 0.5 else "black", fontsize=8)
        ax.set_xticks(range(len(o)))
        ax.set_xticklabels([f"head {c}" for c in o], fontsize=8)
        ax.set_yticks(range(len(o)))
        ax.set_yticklabels([f"test {c}" for c in o], fontsize=8)
        acc = np.trace(m) / max(m.sum(), 1)
        ax.set_title(f"{o} ({strategy}): {100 * acc:.1f}% correct", fontsize=9)
    fig.suptitle("Automatic head selection (nearest pooled prototype), final model of each order",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def fig_single_head(res: Results, out: Path, letters: str, shared: Path, joint: Path):
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    x = np.arange(len(letters))
    for ax, metric in zip(axes, ("abs_rel", "rmse")):
        a = [res.value(joint, c, metric) for c in letters]
        b = [res.value(shared, c, metric) for c in letters]
        ax.bar(x - 0.2, [np.nan if v is None else v for v in a], 0.4, label="joint, one head per domain",
               color="tab:purple")
        ax.bar(x + 0.2, [np.nan if v is None else v for v in b], 0.4, label="joint, single shared head",
               color="tab:olive")
        ax.set_xticks(x)
        ax.set_xticklabels([f"{get_domain(c).name} ({c})" for c in letters])
        ax.set_title(METRIC_LABEL[metric] + " (lower better)", fontsize=9)
        if metric == "rmse":
            ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle("Single-head baseline vs per-domain heads (synthetic stand-ins)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


@torch.no_grad()
def fig_qualitative(res: Results, out: Path, order="NKS", n_images=3) -> bool:
    """Image, ground truth and predictions of the old domain order[0] after the last stage."""
    plan = res.plan
    panels = [("single-domain model\n(before any new domain)", plan.first(order[0]))]
    for st in ("finetune", "ours"):
        panels.append((f"{st} after {order}", plan.stage_path(order, len(order), st)))
    if not all(p.is_file() for _, p in panels):
        return False
    letter = order[0]
    spec = get_domain(letter)
    ds = test_subset(letter, res.s)
    idx = list(range(min(n_images, len(ds))))
    nets = [(label, load_checkpoint(p)) for label, p in panels]
    plt = _plt()
    cols = 2 + len(nets)
    fig, axes = plt.subplots(len(idx), cols, figsize=(2.6 * cols, 2.1 * len(idx)), squeeze=False)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    for r, i in enumerate(idx):
        item = ds[i]
        gt = item["depth"][0]
        valid = gt > 0
        vmax = float(gt[valid].max()) if valid.any() else spec.max_depth
        img = (item["image"] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
        axes[r, 0].imshow(img)
        axes[r, 1].imshow(np.where(valid.numpy(), gt.numpy(), np.nan), cmap="magma_r", vmin=0, vmax=vmax)
        for k, (label, net) in enumerate(nets):
            head = net.meta["letters"].index(letter)
            d, _ = net(item["image"][None], domain=head, with_uncertainty=False)
            d = upsample_to(d, gt.shape).clamp(spec.min_depth, spec.max_depth)[0, 0]
            rmse = float(torch.sqrt(((d - gt)[valid] ** 2).mean())) if valid.any() else float("nan")
            axes[r, 2 + k].imshow(d.numpy(), cmap="magma_r", vmin=0, vmax=vmax)
            axes[r, 2 + k].set_xlabel(f"RMSE {rmse:.2f} m", fontsize=8)
            if r == 0:
                axes[r, 2 + k].set_title(label, fontsize=8)
        if r == 0:
            axes[r, 0].set_title(f"{spec.name} test image", fontsize=8)
            axes[r, 1].set_title("ground truth", fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"Old domain {spec.name} ({letter}) after learning {order}: finetune vs ours "
                 f"(synthetic stand-in; colour 0..max GT depth)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


# ==================================================================================================
# The report
# ==================================================================================================
def fmt(v, digits=3, signed=False):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def costlier_term(replay_gap, distill_gap, finetune_gap) -> str:
    """Which old-domain term costs the new domain more accuracy, from equal-budget plasticity gaps."""
    if replay_gap is None or distill_gap is None or finetune_gap is None:
        return "Not every strategy was run, so the cost of each term cannot be told apart."
    cost_r, cost_d = replay_gap - finetune_gap, distill_gap - finetune_gap
    if abs(cost_r - cost_d) < 0.01:
        return (f"Replay and distillation cost the new domain about the same ({pct(cost_r)} and {pct(cost_d)} "
                f"against finetune).")
    worse, better = (("replay", "distillation") if cost_r > cost_d else ("distillation", "replay"))
    return (f"{worse.capitalize()} costs the new domain more ({pct(max(cost_r, cost_d))} against finetune) than "
            f"{better} ({pct(min(cost_r, cost_d))}): it is the term that trades plasticity for stability here.")


def pct(v, signed=True):
    return "-" if v is None else (f"{100 * v:+.1f}%" if signed else f"{100 * v:.1f}%")


def md_table(header, rows) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def mean_or_none(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def strategy_label(st):
    return {"ours": "ours (distill + replay)", "finetune": "finetune (lower bound)",
            "joint": "joint (upper bound)"}.get(st, st)


class Report:
    def __init__(self, res: Results, args, timings: dict, figures: dict, report_path: Path,
                 variants, variant_orders):
        self.res, self.args, self.timings, self.figures = res, args, timings, figures
        self.report_path, self.variants, self.variant_orders = report_path, variants, variant_orders
        self.plan, self.s = res.plan, res.s
        self.lines: list[str] = []

    def add(self, *lines):
        self.lines.extend(lines)

    def fig(self, key, caption):
        if key in self.figures:
            rel = os.path.relpath(self.figures[key], self.report_path.parent)
            self.add(f"![{caption}]({rel})", "")

    # ---- pieces ----------------------------------------------------------------------------------
    def stability_numbers(self, order):
        """{strategy: summary on rmse and abs_rel} for one order."""
        return {st: {m: self.res.summary(order, st, m) for m in REPORT_METRICS}
                for st in self.plan.strategies}

    def plasticity(self, order, strategy, k, metric):
        c = order[k - 1]
        m = self.res.matrix(order, strategy, metric)
        v = m[k - 1][k - 1] if len(m) >= k else None
        ref = self.res.single(c, metric)
        return v, ref

    def selection_accuracy(self, order, strategy):
        m = confusion(self.res, self.plan.stage_path(order, len(order), strategy), order)
        return None if m is None else float(np.trace(m) / max(m.sum(), 1))

    def headline(self):
        """The three-line summary (also quoted by the lead)."""
        orders, sts = self.plan.orders, self.plan.strategies
        out = []

        def avg(st, key, metric):
            return mean_or_none([(self.res.summary(o, st, metric) or {}).get(key) for o in orders])
        if "ours" in sts and "finetune" in sts:
            fo, ff = avg("ours", "average_forgetting", "abs_rel"), avg("finetune", "average_forgetting", "abs_rel")
            ao, af = avg("ours", "final_average", "abs_rel"), avg("finetune", "final_average", "abs_rel")
            verdict = ("ours forgets less than finetune" if fo is not None and ff is not None and fo < ff
                       else "ours does NOT forget less than finetune")
            out.append(f"**Stability:** over {len(orders)} order(s), {verdict}: average forgetting "
                       f"(AbsRel) {fmt(fo, 3, True)} vs {fmt(ff, 3, True)}; final average AbsRel "
                       f"{fmt(ao)} vs {fmt(af)}" + (f" (joint upper bound {fmt(avg('joint', 'final_average', 'abs_rel'))})"
                                                     if "joint" in sts else "") + ".")
        gaps = []
        for o in orders:
            for k in range(2, len(o) + 1):
                v, ref = self.plasticity(o, "ours" if "ours" in sts else sts[0], k, "abs_rel")
                if v is not None and ref is not None:
                    gaps.append(relative_gap(v, ref))
        if gaps:
            g = float(np.mean(gaps))
            out.append(f"**Plasticity:** the newly learned domain's AbsRel right after learning it with "
                       f"{'ours' if 'ours' in sts else sts[0]} is {pct(g)} relative to its single-domain model "
                       f"on average ({'worse' if g > 0 else 'better'}; range {pct(min(gaps))} .. {pct(max(gaps))}).")
        accs = [self.selection_accuracy(o, "ours" if "ours" in sts else sts[0]) for o in orders]
        accs = [a for a in accs if a is not None]
        sh = self.single_head_numbers()
        line = ""
        if accs:
            line += (f"**Selection and heads:** nearest-prototype head selection is "
                     f"{pct(min(accs), False)}..{pct(max(accs), False)} correct on the final models")
        if sh:
            worse = [c for c, (j, s) in sh.items() if j is not None and s is not None and s > j]
            line += ((";" if line else "**Heads:**") + f" one shared head is worse than per-domain heads on "
                     f"{len(worse)}/{len(sh)} domains (AbsRel" +
                     ", ".join(f" {c} {fmt(s)} vs {fmt(j)}" for c, (j, s) in sh.items()) + ")")
        if line:
            out.append(line + ".")
        return out

    def single_head_numbers(self):
        if not self.plan.single_head:
            return None
        full = canonical("".join(self.plan.orders))
        shared, joint = self.plan.single_head_paths()
        if not self.res.ev(shared) or not self.res.ev(joint):
            return None
        return {c: (self.res.value(joint, c, "abs_rel"), self.res.value(shared, c, "abs_rel")) for c in full}

    # ---- the document ----------------------------------------------------------------------------
    def build(self) -> str:
        s, plan, res = self.s, self.plan, self.res
        orders, sts = plan.orders, plan.strategies
        letters = canonical("".join(orders))
        self.add("# Lifelong-MonoDepth study on synthetic stand-in domains", "",
                 "> **These are synthetic stand-ins, not NYU-v2 / KITTI / ScanNet numbers.** Every number "
                 "below comes from procedurally rendered N-, K- and S-like domains made by `synthetic.py` "
                 "(indoor rooms 0-10 m, streets 0-80 m with sparse LiDAR-like ground truth, noisier indoor "
                 "scans 0-6.5 m), small inputs and short CPU training. They test the protocol and the "
                 "relative behaviour of the strategies; they say nothing about the paper's published "
                 "numbers.", "")
        if s.quick:
            self.add("> **Smoke configuration (`--quick`)**: a handful of optimiser steps; the numbers are "
                     "meaningless.", "")
        self.add("Generated by `study.py`; do not edit by hand.", "")
        self.add("## Summary", "")
        for line in self.headline():
            self.add(f"- {line}")
        self.add("")
        self.setup_section(letters)
        self.fit_section(letters)
        self.overview_section()
        self.forgetting_section()
        self.plasticity_section()
        self.selection_section()
        self.single_head_section()
        self.qualitative_section()
        if self.variants:
            self.variants_section()
        self.assessment_section()
        self.domain_gap_section()
        self.diagnostics_section()
        self.matrices_section()
        return "\n".join(self.lines).rstrip() + "\n"

    def setup_section(self, letters):
        s, plan, t = self.s, self.plan, self.timings
        self.add("## Setup", "")
        meta = read_json(Path(s.data_root) / "meta.json") or {}
        counts = {}
        for name, d in (meta.get("domains") or {}).items():
            counts[d.get("letter", name)] = d.get("counts", {})
        data_line = ", ".join(f"{c}: {counts[c].get('train', '?')} train / {counts[c].get('test', '?')} test / "
                              f"{counts[c].get('replay', '?')} replay rows" for c in letters if c in counts)
        self.add(f"- Data: `{s.data_root}` (synthetic.py, seed {meta.get('seed', '?')}, "
                 f"synthetic: {meta.get('synthetic', '?')}); {data_line or 'no meta.json'}. The engine holds "
                 f"{s.val_images} training rows per domain out for validation (drawn outside the replay CSV, "
                 f"val seed 0); the test split is used only for the reported numbers.")
        self.add(f"- Model: `{s.encoder}` encoder from random weights (no ImageNet file available offline), "
                 f"MFF + one depth/uncertainty head per domain; input scale {s.scale:g} "
                 f"(N/S {self._size('N')}, K {self._size('K')}).")
        self.add(f"- Training (engine `lifelong.py`, Adam lr 1e-4 halved every 5 epochs, paper's loss weights "
                 f"10 (first domain) / 100 (second) for distillation and replay): models trained from scratch "
                 f"(single-domain first stages, joint, single-head) {s.first_epochs} epoch(s)"
                 + (f" / at most {s.first_max_steps} steps" if s.first_max_steps else "")
                 + f"; later stages {s.epochs} epoch(s)" + (f" / at most {s.max_steps} steps" if s.max_steps else "")
                 + f"; batch {s.batch_size} everywhere (also for each replay batch); replay buffer "
                 f"{s.replay_size} images per old domain; seed {s.seed}; prototypes from "
                 f"{s.proto_images} replay images per domain; float32 training (`--amp off`: the "
                 f"numbers do not depend on whether the CPU has native bfloat16).")
        images = f"first {s.eval_images} images" if s.eval_images else "all images"
        self.add(f"- Evaluation: test split, {images} per domain; domain prior; "
                 f"per-image averaging; predictions capped to each domain's depth range; crop "
                 f"`{s.crop}` (domain's own convention: Eigen for N, Garg for K, none for S, placed in each "
                 f"test crop's full frame); float32. "
                 f"Forgetting of an old domain = final error - best earlier error (positive = forgot); "
                 f"BWT = mean over old domains of (error right after learning it - final error) (positive "
                 f"= improved); both from `evaluation.lifelong_summary`.")
        self.add(f"- Orders: {', '.join(plan.orders)}; strategies: {', '.join(plan.strategies)}. "
                 f"`joint` is order-independent: it is trained once per domain set "
                 f"({', '.join(sorted({j.letters for j in plan.jobs.values() if j.group == 'joint'}, key=len))}) "
                 f"and reused in every order's matrix whose learned set matches; its first column is the "
                 f"single-domain model. First stages are shared by all lifelong strategies.")
        self.add(f"- Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU core(s), torch "
                 f"{torch.__version__}, {torch.get_num_threads()} thread(s); other jobs shared the cores "
                 f"(load average at report time {os.getloadavg()[0]:.1f}), so times are noisy.")
        self.add("")
        gen = None
        if meta:
            first = next(iter(counts.values()), {})
            sizes = "".join(f" --{k} {first[k]}" for k, d in (("train", 300), ("test", 100))
                            if first.get(k) not in (None, d))
            gen = (f"python3 synthetic.py --out {s.data_root}{sizes} --scale {meta.get('scale', '?')} "
                   f"--replay-size {meta.get('replay_size', '?')} --seed {meta.get('seed', '?')}")
        self.add("Commands (the data, then the whole study; rerunning the study reuses everything on disk, "
                 "an interrupted study resumes):", "")
        self.add("```", *([gen] if gen else []), self.command_line(), "```", "")
        o = "NKS" if "NKS" in plan.orders else plan.orders[0]
        example = []
        for k in range(1, len(o) + 1):
            job = plan.job_of(plan.stage_path(o, k, "ours"))
            if job is not None:
                example.append(f"python3 {engine_script(job)} {' '.join(shlex.quote(a) for a in job.argv(s))}")
        if example:
            self.add("<details><summary>The engine calls of one order (" + o + ", ours); every stage's exact "
                     "arguments are in its run folder's <code>study_job.json</code></summary>", "",
                     "```", *example, "```", "</details>", "")
        if t:
            inv = t.get("invocations") or []
            wall = t.get("study_wall_seconds", 0.0)
            self.add(f"**Measured wall time of the study: {wall / 60:.1f} min** "
                     f"({len(inv)} invocation(s) that trained or evaluated something, {s.jobs} parallel "
                     f"process(es) x {s.threads} torch thread(s); load average of the shared machine at their "
                     f"end: {', '.join(str(i.get('load_average')) for i in inv) or '-'}). Stages: "
                     f"{t.get('jobs', 0)}, {t.get('train_seconds', 0) / 60:.1f} min of stage wall time in total "
                     f"(models from scratch {t.get('scratch_seconds', 0) / 60:.1f}, later stages "
                     f"{t.get('later_seconds', 0) / 60:.1f}, variants {t.get('variant_seconds', 0) / 60:.1f}), "
                     f"{t.get('train_cpu_seconds', 0) / 60:.1f} min of CPU time (with one thread per process "
                     f"the CPU time is what the stages would take on an idle core); evaluation "
                     f"{t.get('eval_seconds', 0) / 60:.1f} min over {t.get('evaluations', 0)} checkpoint(s).", "")
            groups = t.get("per_group")
            if groups:
                self.add(*md_table(["stage kind", "stages", "mean wall (s)", "mean CPU (s)"],
                                   [[g, v["count"], f"{v['mean']:.0f}", f"{v['cpu_mean']:.0f}"]
                                    for g, v in groups.items()]))
                self.add("")

    def _size(self, c):
        from loaders import scaled
        h, w = get_domain(c).input_size
        return f"{scaled(h, self.s.scale)}x{scaled(w, self.s.scale)}"

    def command_line(self):
        argv = getattr(self.args, "argv", None)
        if argv is None:
            return "python3 study.py"
        keep, skip = [], False
        for a in argv:
            if skip:
                skip = False
                continue
            if a == "--report-only":
                continue
            keep.append(shlex.quote(a))
        return "python3 study.py " + " ".join(keep)

    def fit_section(self, letters):
        res = self.res
        self.add("## Do the single-domain models fit?", "",
                 "Stability comparisons are meaningless unless the first stage actually learned its domain. "
                 "Validation rows (held out of the training data by the engine) of each single-domain model "
                 "after its last epoch, against predicting one constant depth everywhere (the mean training "
                 "depth, which minimises the squared error of a constant):", "")
        rows, ratios = [], {}  # ratios: (domain, metric) -> model / constant validation error
        for c in letters:
            val = last_validation(self.plan.first(c)) if self.plan.first(c).is_file() else None
            v = (val or {}).get(c, {})
            b = res.baselines.get(c, {})
            cells = []
            for metric in ("abs_rel", "rmse", "delta1"):
                mv, bv = v.get(metric), b.get(metric)
                ratio = ""
                if mv is not None and bv and metric != "delta1":
                    ratios[c, metric] = mv / bv
                    ratio = f" ({pct(mv / bv, False)})"
                cells.append(f"{fmt(mv)} / {fmt(bv)}{ratio}")
            rows.append([f"{get_domain(c).name} ({c})", fmt(b.get("constant_m"), 2)] + cells +
                        [fmt(res.single(c, "abs_rel")), fmt(res.single(c, "rmse"))])
        self.add(*md_table(["domain", "constant (m)", "val AbsRel model / constant",
                            "val RMSE model / constant", "val d1 model / constant (higher better)",
                            "test AbsRel", "test RMSE"], rows))
        self.add("")
        weak = [f"{get_domain(c).name} ({c}) {METRIC_LABEL.get(metric, metric)} at {pct(r, False)} of the "
                f"constant" for (c, metric), r in ratios.items() if r > WEAK_FIT_RATIO]
        if weak:
            self.add(f"**Verdict:** barely better than a constant (over {WEAK_FIT_RATIO:.0%} of its error): "
                     + "; ".join(weak) + ". Forgetting and transfer measured in those metrics on those domains "
                     "rest on a weak first stage; read them with care.", "")
        elif ratios:
            (c, metric), worst = max(ratios.items(), key=lambda kv: kv[1])
            self.add(f"**Verdict:** every single-domain model's validation error is under {WEAK_FIT_RATIO:.0%} "
                     f"of a constant's in AbsRel and RMSE, so each first stage learned its domain; the weakest "
                     f"fit is {get_domain(c).name} ({c}) {METRIC_LABEL.get(metric, metric)} at "
                     f"{pct(worst, False)} of the constant.", "")
        self.fig("fit", "validation error of the single-domain models")

    def overview_section(self):
        plan, res = self.plan, self.res
        self.add("## Final error, forgetting and backward transfer", "",
                 "Per order and strategy, on the test split (AbsRel is scale-free, so its averages weigh "
                 "the 10 m and 80 m domains alike; RMSE averages are dominated by the street domain K). "
                 "Forgetting > 0: the old domains got worse; BWT > 0: they improved.", "")
        header = ["order", "strategy", "final avg AbsRel", "avg forgetting AbsRel", "BWT AbsRel",
                  "final avg RMSE", "avg forgetting RMSE", "BWT RMSE"]
        rows = []
        for o in plan.orders:
            for st in plan.strategies:
                a = res.summary(o, st, "abs_rel") or {}
                r = res.summary(o, st, "rmse") or {}
                rows.append([o, st, fmt(a.get("final_average")), fmt(a.get("average_forgetting"), 3, True),
                             fmt(a.get("bwt"), 3, True), fmt(r.get("final_average")),
                             fmt(r.get("average_forgetting"), 3, True), fmt(r.get("bwt"), 3, True)])
        for st in plan.strategies:
            def m(metric, key):
                return mean_or_none([(res.summary(o, st, metric) or {}).get(key) for o in plan.orders])
            rows.append([f"**mean of {len(plan.orders)}**", f"**{st}**", fmt(m("abs_rel", "final_average")),
                         fmt(m("abs_rel", "average_forgetting"), 3, True), fmt(m("abs_rel", "bwt"), 3, True),
                         fmt(m("rmse", "final_average")), fmt(m("rmse", "average_forgetting"), 3, True),
                         fmt(m("rmse", "bwt"), 3, True)])
        self.add(*md_table(header, rows))
        self.add("")
        self.fig("summary", "final average and forgetting per strategy")

    def forgetting_section(self):
        self.add("## Forgetting curves", "",
                 "Test RMSE of each order's first domain after each stage, per strategy (dotted: its "
                 "single-domain model).", "")
        self.fig("forgetting", "forgetting curves of the first domain")
        o = "NKS" if "NKS" in self.plan.orders else self.plan.orders[0]
        rows = []
        for st in self.plan.strategies:
            m = self.res.matrix(o, st, "rmse")
            sm = self.res.summary(o, st, "rmse") or {}
            f = sm.get("forgetting") or []
            rows.append([st] + [fmt(row[0]) for row in m] +
                        [fmt(f[d], 3, True) if d < len(f) else "-" for d in range(len(o) - 1)])
        self.add(f"Order {o}, RMSE (m) of {o[0]} after each stage and forgetting of each old domain:", "")
        self.add(*md_table(["strategy"] + [f"{o[0]} after {o[:k]}" for k in range(1, len(o) + 1)]
                           + [f"forgetting {o[d]}" for d in range(len(o) - 1)], rows))
        self.add("")

    def plasticity_section(self):
        plan = self.plan
        self.add("## Plasticity: the new domain right after learning it", "",
                 "Error of the domain learned at stage k, measured right after stage k, against the "
                 "single-domain model of that domain (gap > 0: learning it inside the lifelong model is "
                 "worse than learning it alone). Note: later stages train "
                 f"{self.s.epochs} epoch(s) starting from a trained trunk, single-domain models "
                 f"{self.s.first_epochs} epoch(s) from random weights.", "")
        rows, gaps = [], {st: [] for st in plan.strategies}
        for o in plan.orders:
            for k in range(2, len(o) + 1):
                c = o[k - 1]
                ref_a, ref_r = self.res.single(c, "abs_rel"), self.res.single(c, "rmse")
                row = [o[:k], f"{c}", f"{fmt(ref_a)} / {fmt(ref_r)}"]
                for st in plan.strategies:
                    va, _ = self.plasticity(o, st, k, "abs_rel")
                    vr, _ = self.plasticity(o, st, k, "rmse")
                    g = relative_gap(va, ref_a)
                    if g is not None:
                        gaps[st].append(g)
                    row.append(f"{fmt(va)} / {fmt(vr)} ({pct(g)})")
                rows.append(row)
        rows.append(["**mean gap**", "", ""] + [f"**{pct(mean_or_none(gaps[st]))}**" for st in plan.strategies])
        self.add(*md_table(["stage", "new domain", "single-domain AbsRel / RMSE"]
                           + [f"{st}: AbsRel / RMSE (AbsRel gap)" for st in plan.strategies], rows))
        self.add("")
        self.plasticity_equal_budget()

    def single_val_at(self, letter: str, epochs: int, metric: str):
        """Validation ``metric`` of the single-domain model of ``letter`` after ``epochs`` epochs."""
        for r in read_log(self.plan.first(letter).with_suffix("").with_suffix("")):
            if r.get("epoch") == epochs and not r.get("partial") and r.get("val"):
                return r["val"].get(letter, {}).get(metric)
        return None

    def plasticity_equal_budget(self):
        """Validation rows, same number of epochs on the new domain: separates the cost of learning
        inside the lifelong model from the cost of training it for fewer epochs."""
        plan, e = self.plan, self.s.epochs
        sts = [st for st in plan.strategies if st in LIFELONG_STRATEGIES]
        if not sts or e > self.s.first_epochs:
            return
        rows, gaps = [], {st: [] for st in sts}
        for o in plan.orders:
            for k in range(2, len(o) + 1):
                c = o[k - 1]
                ref = self.single_val_at(c, e, "abs_rel")
                row = [o[:k], c, fmt(ref)]
                for st in sts:
                    path = plan.stage_path(o, k, st)
                    val = (last_validation(path) or {}).get(c, {}) if path.is_file() else {}
                    g = relative_gap(val.get("abs_rel"), ref)
                    if g is not None:
                        gaps[st].append(g)
                    row.append(f"{fmt(val.get('abs_rel'))} ({pct(g)})")
                rows.append(row)
        if not any(gaps.values()):
            return
        rows.append(["**mean gap**", "", ""] + [f"**{pct(mean_or_none(gaps[st]))}**" for st in sts])
        self.add(f"Same training budget, on the validation rows: the new domain's AbsRel at the end of its "
                 f"stage ({e} epoch(s)) against the single-domain model of that domain after its own "
                 f"epoch {e} (from its log). This separates what learning inside the lifelong model costs "
                 f"(or gains: the trunk is already trained) from the shorter training of later stages.", "")
        self.add(*md_table(["stage", "new domain", f"single-domain after {e} epoch(s)"]
                           + [f"{st} (gap)" for st in sts], rows))
        self.add("")

    def selection_section(self):
        plan, res = self.plan, self.res
        self.add("## Automatic domain selection", "",
                 "Each test image goes to the head of the nearest stored pooled prototype (per-channel mean "
                 "and std of the fused features, stored in the checkpoint, computed from replay images). "
                 "Accuracy over all test images of the learned domains, per order and strategy (final "
                 "model):", "")
        rows = []
        for o in plan.orders:
            rows.append([o] + [pct(self.selection_accuracy(o, st), False) for st in plan.strategies])
        self.add(*md_table(["order"] + plan.strategies, rows))
        self.add("")
        st = "ours" if "ours" in plan.strategies else plan.strategies[0]
        self.add(f"Confusion (rows: test domain, columns: chosen head) and the error with automatic "
                 f"selection against the domain prior, final `{st}` model of each order:", "")
        for o in plan.orders:
            path = plan.stage_path(o, len(o), st)
            m = confusion(res, path, o)
            if m is None:
                self.add(f"- {o}: not evaluated", "")
                continue
            rows = []
            for i, c in enumerate(o):
                rows.append([f"test {c}"] + [str(x) for x in m[i]] +
                            [f"{fmt(res.value(path, c, 'rmse'))} / {fmt(res.value(path, c, 'rmse', 'selected'))}",
                             f"{fmt(res.value(path, c, 'abs_rel'))} / {fmt(res.value(path, c, 'abs_rel', 'selected'))}"])
            self.add(f"**{o}** ({pct(self.selection_accuracy(o, st), False)} correct)", "")
            self.add(*md_table(["", *[f"head {c}" for c in o], "RMSE prior / auto", "AbsRel prior / auto"], rows))
            self.add("")
        self.fig("selection", "selection confusion matrices")

    def single_head_section(self):
        if not self.plan.single_head:
            return
        full = canonical("".join(self.plan.orders))
        shared, joint = self.plan.single_head_paths()
        self.add("## One head for all domains? (single-head baseline)", "",
                 f"Joint training on {full} with one shared head (`--strategy joint --shared-head`) against the "
                 f"same joint training with one head per domain. The paper's motivation: one head cannot "
                 f"serve 6, 10 and 80 m depth ranges at once.", "")
        rows = []
        for c in full:
            rows.append([f"{get_domain(c).name} ({c})"] +
                        [f"{fmt(self.res.value(joint, c, m))} / {fmt(self.res.value(shared, c, m))}"
                         for m in ("abs_rel", "rmse", "delta1")])
        self.add(*md_table(["domain", "AbsRel per-domain heads / shared", "RMSE per-domain / shared",
                            "d1 per-domain / shared"], rows))
        self.add("")
        self.fig("single_head", "single-head baseline")

    def qualitative_section(self):
        if "qualitative" not in self.figures:
            return
        o = "NKS" if "NKS" in self.plan.orders else self.plan.orders[0]
        self.add("## Qualitative: an old domain after the last stage", "",
                 f"First test images of {get_domain(o[0]).name} ({o[0]}): its single-domain model, and the "
                 f"finetune and ours models after learning {o} (head {o[0]} in each).", "")
        self.fig("qualitative", "qualitative comparison")

    def variants_section(self):
        res, plan = self.res, self.plan
        self.add("## Diagnostic variants", "",
                 "Extra runs of a lifelong strategy with other engine options, trained from the same first "
                 "stage. **Choices use the validation rows only** (the engine's held-out training rows, last "
                 "epoch of each stage's `log.jsonl`); the test columns are shown for information.", "")
        rows = []
        entries = [(None, st) for st in plan.strategies if st in LIFELONG_STRATEGIES] + \
                  [(v, v.strategy) for v in self.variants]
        for o in self.variant_orders:
            for v, st in entries:
                val = {m: res.summary(o, st, m, v, source="val") or {} for m in REPORT_METRICS}
                test = {m: res.summary(o, st, m, v) or {} for m in REPORT_METRICS}
                name = f"`{v.name}` ({v.strategy} {v.text})" if v else st
                rows.append([o, name, fmt(val["abs_rel"].get("final_average")),
                             fmt(val["abs_rel"].get("average_forgetting"), 3, True),
                             fmt((val["abs_rel"].get("just_learned") or [None])[-1]),
                             fmt(test["abs_rel"].get("final_average")),
                             fmt(test["abs_rel"].get("average_forgetting"), 3, True),
                             fmt((test["abs_rel"].get("just_learned") or [None])[-1]),
                             fmt(test["rmse"].get("average_forgetting"), 3, True)])
        self.add(*md_table(["order", "run", "val final avg AbsRel", "val avg forgetting AbsRel",
                            "val last-domain AbsRel", "test final avg AbsRel", "test avg forgetting AbsRel",
                            "test last-domain AbsRel", "test avg forgetting RMSE"], rows))
        self.add("")
        for o in self.variant_orders:
            cand = [(v, v.strategy) for v in self.variants] + [(None, "ours")]
            scored = [((res.summary(o, st, "abs_rel", v, source="val") or {}).get("final_average"), v, st)
                      for v, st in cand]
            scored = [x for x in scored if x[0] is not None]
            if scored:
                best = min(scored, key=lambda x: x[0])
                label = best[1].name if best[1] else "ours (default settings)"
                self.add(f"- {o}: lowest validation final-average AbsRel among ours and its variants: "
                         f"**{label}** ({fmt(best[0])}).")
        self.add("")
        self.add("What changed against the same strategy with the study's default settings (validation "
                 "rows, AbsRel; forgetting and new-domain error: lower is better):", "")
        for o in self.variant_orders:
            for v in self.variants:
                base = res.summary(o, v.strategy, "abs_rel", None, source="val")
                var = res.summary(o, v.strategy, "abs_rel", v, source="val")
                if not base or not var:
                    continue
                news = ", ".join(f"{o[k]} {fmt(base['just_learned'][k])} -> {fmt(var['just_learned'][k])}"
                                 for k in range(1, len(o)))
                self.add(f"- `{v.name}` ({v.text}) on {o}: average forgetting "
                         f"{fmt(base['average_forgetting'], 3, True)} -> {fmt(var['average_forgetting'], 3, True)}; "
                         f"new domain right after learning it: {news}; final average "
                         f"{fmt(base['final_average'])} -> {fmt(var['final_average'])}.")
        self.add("")
        for v in self.variants:
            for o in self.variant_orders:
                self.matrix_block(o, v.strategy, v, title=f"variant `{v.name}` ({v.strategy} {v.text}), order {o}")

    def assessment_section(self):
        """Plain statements of where ours wins or loses (numbers from the tables above)."""
        plan, res = self.plan, self.res
        if "ours" not in plan.strategies or "finetune" not in plan.strategies:
            return
        self.add("## Honest comparison: ours against finetune and single-domain training", "")
        for metric in ("abs_rel", "rmse"):
            wins = 0
            for o in plan.orders:
                fo = (res.summary(o, "ours", metric) or {}).get("average_forgetting")
                ff = (res.summary(o, "finetune", metric) or {}).get("average_forgetting")
                if fo is not None and ff is not None and fo < ff:
                    wins += 1
            self.add(f"- Stability ({METRIC_LABEL[metric]}): ours forgets less than finetune in {wins} of "
                     f"{len(plan.orders)} orders.")
        gaps = []
        for o in plan.orders:
            for k in range(2, len(o) + 1):
                v, ref = self.plasticity(o, "ours", k, "abs_rel")
                g = relative_gap(v, ref)
                if g is not None:
                    gaps.append((g, o[:k]))
        if gaps:
            worse = [x for x in gaps if x[0] > 0.05]
            self.add(f"- Plasticity (AbsRel): ours is more than 5% worse than the single-domain model on the "
                     f"new domain in {len(worse)} of {len(gaps)} stages"
                     + (f" ({', '.join(f'{o} {pct(g)}' for g, o in worse)})" if worse else "") + ".")
        for o in plan.orders:
            fo = (res.summary(o, "ours", "abs_rel") or {})
            ff = (res.summary(o, "finetune", "abs_rel") or {})
            if fo and ff and fo.get("average_forgetting") is not None and ff.get("average_forgetting") is not None \
                    and fo["average_forgetting"] >= ff["average_forgetting"]:
                self.add(f"- In order {o} ours does **not** beat finetune on stability (AbsRel forgetting "
                         f"{fmt(fo['average_forgetting'], 3, True)} vs {fmt(ff['average_forgetting'], 3, True)}).")
        self.why_bullets()
        self.add("")

    # ---- the why, from the numbers -----------------------------------------------------------------
    def gap_full(self, strategy):
        """Mean relative test-AbsRel gap of the new domain against the fully trained single model."""
        gaps = []
        for o in self.plan.orders:
            for k in range(2, len(o) + 1):
                v, ref = self.plasticity(o, strategy, k, "abs_rel")
                gaps.append(relative_gap(v, ref))
        return mean_or_none(gaps)

    def gap_equal(self, strategy, variant=None, orders=None):
        """Mean relative validation-AbsRel gap of the new domain against the single model after the
        same number of epochs as the later stage."""
        e = self.s.epochs
        if variant is not None:
            for a, b in zip(variant.extra, variant.extra[1:]):
                if a == "--epochs":
                    e = int(b)
        gaps = []
        for o in orders or self.plan.orders:
            for k in range(2, len(o) + 1):
                path = self.plan.stage_path(o, k, strategy, variant)
                val = (last_validation(path) or {}).get(o[k - 1], {}) if path.is_file() else {}
                gaps.append(relative_gap(val.get("abs_rel"), self.single_val_at(o[k - 1], e, "abs_rel")))
        return mean_or_none(gaps)

    def why_bullets(self):
        plan, s = self.plan, self.s
        self.add("", "**Why (evidence from the tables in this report):**", "")
        full, eq = self.gap_full("ours"), self.gap_equal("ours")
        f_full, f_eq = self.gap_full("finetune"), self.gap_equal("finetune")
        if full is not None and eq is not None:
            share = "most" if abs(eq) < 0.5 * abs(full) else "only part"
            self.add(f"- *Training length.* Against single-domain models trained {s.first_epochs} epochs the new "
                     f"domain learned by ours is {pct(full)} off (test AbsRel; finetune {pct(f_full)}); against "
                     f"the same single-domain models after {s.epochs} epoch(s), the budget a later stage gets, it is "
                     f"{pct(eq)} (validation; finetune {pct(f_eq)}). So {share} of the plasticity gap against "
                     f"the fully trained single-domain model comes from the shorter training of later stages, "
                     f"not from lifelong learning itself.")
        if eq is not None and f_eq is not None:
            r_eq = self.gap_equal("replay") if "replay" in plan.strategies else None
            d_eq = self.gap_equal("distill") if "distill" in plan.strategies else None
            self.add(f"- *Loss weights.* At equal budget the new domain is {pct(eq)} (ours), {pct(f_eq)} "
                     f"(finetune), {pct(r_eq)} (replay only), {pct(d_eq)} (distillation only) off its "
                     f"single-domain model. The paper's old-domain weights (10 for the first domain, 100 for the "
                     f"second) multiply the replay and distillation terms against a weight of 1 for the new "
                     f"domain (see the diagnostics table), so the shared trunk is pulled mostly towards the old "
                     f"domains. " + costlier_term(r_eq, d_eq, f_eq))
        gaps = {}
        o0 = plan.orders
        for pair_o in o0:
            kind = "similar" if set(pair_o[:2]) == {"N", "S"} else "far"
            m = self.res.matrix(pair_o, "finetune", "abs_rel") if "finetune" in plan.strategies else []
            if len(m) >= 2 and m[0][0] and m[1][0] is not None:
                gaps.setdefault(kind, []).append(relative_gap(m[1][0], m[0][0]))
        if gaps.get("similar") and gaps.get("far"):
            self.add(f"- *Domain gap.* Finetune's first domain loses {pct(mean_or_none(gaps['similar']))} AbsRel when "
                     f"the second domain is the other indoor one (N and S) and {pct(mean_or_none(gaps['far']))} when "
                     f"it is indoor vs street: the synthetic gap between indoor and street is large (nearest-"
                     f"prototype selection is near perfect, see above), and forgetting grows with it.")
        for v in self.variants:
            for o in self.variant_orders:
                base = self.res.summary(o, v.strategy, "abs_rel", None, source="val")
                var = self.res.summary(o, v.strategy, "abs_rel", v, source="val")
                if not base or not var:
                    continue
                eq_b = self.gap_equal(v.strategy, None, [o])
                eq_v = self.gap_equal(v.strategy, v, [o])
                new_b = mean_or_none(base["just_learned"][1:])
                new_v = mean_or_none(var["just_learned"][1:])
                self.add(f"- *Variant `{v.name}`* ({v.text}) on {o}, validation: average forgetting "
                         f"{fmt(base['average_forgetting'], 3, True)} -> {fmt(var['average_forgetting'], 3, True)}, "
                         f"mean new-domain AbsRel {fmt(new_b)} -> {fmt(new_v)}"
                         + (f" (equal-budget gap {pct(eq_b)} -> {pct(eq_v)})" if eq_b is not None and eq_v is not None else "")
                         + f", final average {fmt(base['final_average'])} -> {fmt(var['final_average'])}.")

    def diagnostics_section(self):
        """Evidence for the why: the loss terms each later stage optimised (last epoch's means)."""
        plan = self.plan
        o = "NKS" if "NKS" in plan.orders else plan.orders[0]
        entries = [(None, st) for st in plan.strategies if st in LIFELONG_STRATEGIES]
        entries += [(v, v.strategy) for v in self.variants if o in self.variant_orders]
        rows = []
        for v, st in entries:
            for k in range(2, len(o) + 1):
                path = plan.stage_path(o, k, st, v)
                run_dir = path.with_suffix("").with_suffix("")
                recs = [r for r in read_log(run_dir) if r.get("loss")]
                opts = read_json(run_dir / "options.json") or {}
                if not recs:
                    continue
                loss = recs[-1]["loss"]
                n_old = k - 1
                dw = lifelong.parse_weights(opts.get("distill_weights", lifelong.DEFAULT_OLD_WEIGHTS), n_old)
                rw = lifelong.parse_weights(opts.get("replay_weights", lifelong.DEFAULT_OLD_WEIGHTS), n_old)
                terms = [f"new {loss.get('new', float('nan')):+.3f}"]
                for j in range(n_old):
                    if f"distill{j}" in loss:
                        terms.append(f"distill {o[j]} {dw[j]:g} x {loss[f'distill{j}']:.3f}")
                for j in range(n_old):
                    if f"replay{j}" in loss:
                        terms.append(f"replay {o[j]} {rw[j]:g} x {loss[f'replay{j}']:+.3f}")
                name = f"`{v.name}`" if v else st
                rows.append([name, o[:k], ", ".join(terms), fmt(loss.get("total"), 2)])
        if not rows:
            return
        self.add("### Diagnostics: what each later stage optimised", "",
                 f"Mean loss terms of the last epoch of each later stage of {o} (weight x term; the "
                 f"uncertainty depth loss can be negative, the distillation loss is >= 0 and divides by "
                 f"the teacher's median depth and median log-variance, floored at 0.01). The student's "
                 f"BatchNorm layers run in training mode (batch statistics) while the frozen teacher "
                 f"uses its running statistics, so the distillation terms are not zero even at the "
                 f"first step.", "")
        self.add(*md_table(["run", "stage", "terms (weight x value)", "total"], rows))
        self.add("")

    def domain_gap_section(self):
        """Forgetting of the first domain when the second is similar (N<->S, both indoor) or far
        (indoor<->street): the size of the domain gap, read off the stage-2 matrices."""
        plan, res = self.plan, self.res
        sts = [st for st in plan.strategies if st in LIFELONG_STRATEGIES]
        pairs = []
        for o in plan.orders:
            if o[:2] not in [p for p, _ in pairs]:
                pairs.append((o[:2], o))
        if not sts or not pairs:
            return
        rows = []
        groups = {}
        for pair, o in pairs:
            kind = "similar (both indoor)" if set(pair) == {"N", "S"} else "far (indoor vs street)"
            row = [pair, kind]
            for st in sts:
                m = res.matrix(o, st, "abs_rel")
                v = None if len(m) < 2 or m[0][0] is None or m[1][0] is None else m[1][0] - m[0][0]
                rel = relative_gap(m[1][0], m[0][0]) if v is not None else None
                groups.setdefault((kind, st), []).append(rel)
                row.append(f"{fmt(v, 3, True)} ({pct(rel)})")
            rows.append(row)
        for kind in ("similar (both indoor)", "far (indoor vs street)"):
            if any((kind, st) in groups for st in sts):
                rows.append([f"**mean**", f"**{kind}**"] +
                            [f"**{pct(mean_or_none(groups.get((kind, st), [])))}**" for st in sts])
        self.add("### Domain gap: forgetting after one new domain", "",
                 "Change of the first domain's test AbsRel from after stage 1 to after stage 2 (absolute, and "
                 "relative to its stage-1 value), by how far the second domain is from the first:", "")
        self.add(*md_table(["stage 2", "second domain is"] + sts, rows))
        self.add("")

    def matrix_block(self, order, strategy, variant=None, title=None):
        res = self.res
        labels = [order[:k] for k in range(1, len(order) + 1)]
        self.add(f"#### {title or strategy_label(strategy)}", "")
        rows = []
        for metric in REPORT_METRICS:
            m = res.matrix(order, strategy, metric, variant)
            sm = res.summary(order, strategy, metric, variant) or {}
            f = sm.get("forgetting") or []
            for d, c in enumerate(order):
                cells = [fmt(m[k][d]) if d <= k else "" for k in range(len(order))]
                rows.append([METRIC_LABEL[metric], c] + cells + [fmt(f[d], 3, True) if d < len(f) else ""])
            rows.append([METRIC_LABEL[metric], "avg"] + [fmt(mean_or_none(row)) for row in m] +
                        [f"BWT {fmt(sm.get('bwt'), 3, True)}" if sm.get("bwt") is not None else ""])
        self.add(*md_table(["metric", "domain"] + [f"after {lab}" for lab in labels] + ["forgetting"], rows))
        self.add("")

    def matrices_section(self):
        self.add("## Domain x stage matrices", "",
                 "Rows: domains in learning order; columns: the model after each stage; test split, domain "
                 "prior. `joint` columns are joint models of the domains learned so far (the first column is "
                 "the single-domain model).", "")
        for o in self.plan.orders:
            self.add(f"### Order {o}", "")
            for st in self.plan.strategies:
                self.matrix_block(o, st)


# ==================================================================================================
# Driver
# ==================================================================================================
def summarize_timings(plan: Plan, evals: dict, invocation: float, s: Settings) -> dict:
    """Measured times: per stage (wall and CPU, from each run's study_job.json), evaluations, and
    the wall time of every invocation that trained something (``<runs>/study_invocations.jsonl``)."""
    per_group, total, cpu, scratch, later, variant, n = {}, 0.0, 0.0, 0.0, 0.0, 0.0, 0
    for job in plan.jobs.values():
        rec = read_json(job.run_dir / "study_job.json")
        if not rec or rec.get("status") != "done":
            continue
        sec = float(rec.get("seconds", 0.0))
        n += 1
        total += sec
        cpu += float(rec.get("cpu_seconds", 0.0))
        group = job.group if job.group != "lifelong" else f"stage {len(job.letters)} {job.strategy}"
        g = per_group.setdefault(group, {"count": 0, "sum": 0.0, "cpu": 0.0})
        g["count"] += 1
        g["sum"] += sec
        g["cpu"] += float(rec.get("cpu_seconds", 0.0))
        if job.group == "variant":
            variant += sec
        elif job.from_scratch:
            scratch += sec
        else:
            later += sec
    for g in per_group.values():
        g["mean"] = g["sum"] / g["count"]
        g["cpu_mean"] = g["cpu"] / g["count"]
    invocations = []
    try:
        with open(s.runs_dir / "study_invocations.jsonl") as f:
            invocations = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        pass
    working = [i for i in invocations if i.get("trained", 0) or i.get("evaluated", 0)]
    return {"train_seconds": total, "train_cpu_seconds": cpu, "jobs": n, "scratch_seconds": scratch,
            "later_seconds": later, "variant_seconds": variant,
            "eval_seconds": sum(float(e.get("seconds", 0.0)) for e in evals.values()),
            "evaluations": len(evals), "invocation_seconds": invocation,
            "study_wall_seconds": sum(float(i.get("seconds", 0.0)) for i in working),
            "invocations": working, "per_group": per_group}


def main(argv=None) -> dict:
    t_start = time.time()
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    s = resolve_settings(args)
    orders = parse_orders(args.orders)
    strategies = parse_strategies(args.strategies)
    variants = [parse_variant(v) for v in args.variant]
    if len({v.name for v in variants}) != len(variants):
        raise StudyError("--variant names must be distinct")
    variant_orders = parse_orders(args.variant_orders) if variants else []
    report_path, fig_dir = Path(args.report), Path(args.figures_dir)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    try:
        return _main(args, s, orders, strategies, variants, variant_orders, report_path, fig_dir, t_start)
    finally:
        torch.set_num_threads(threads_before)


def _main(args, s, orders, strategies, variants, variant_orders, report_path, fig_dir, t_start):
    def log(msg):
        print(msg, flush=True)

    if not args.report_only:
        ensure_data(s.data_root, log)
    if not (Path(s.data_root) / "nyu2_train.csv").is_file():
        raise StudyError(f"data root {s.data_root!r} has no index CSVs (run without --report-only to "
                         f"generate it)")
    load_domains_from_root(str(s.data_root))
    check_validation_rows(s)
    s.runs_dir.mkdir(parents=True, exist_ok=True)
    plan = Plan(s, orders, strategies, args.single_head, variants, variant_orders)
    jobs = plan.ordered()

    counts = {"reused": 0, "trained": 0, "resumed": 0, "missing": 0, "evaluated": 0}
    evals = {}
    if not args.report_only:
        try:
            counts.update(run_jobs(jobs, s, s.jobs, log))
        except KeyboardInterrupt:
            log("[study] interrupted; run the same command again to resume")
            raise SystemExit(130)
        ckpts = [j.out for j in jobs if j.out.is_file()]
        counts["evaluated"] = counts["trained"] + counts["resumed"] + sum(
            1 for c in ckpts if not eval_cached(c, s))
        t_eval = time.time()
        evals = evaluate_all(ckpts, s, s.jobs)
        log(f"[study] evaluations ready in {time.time() - t_eval:.0f} s ({len(evals)} checkpoints)")
    else:
        for job in jobs:
            if job.out.is_file():
                cached = eval_cached(job.out, s)
                if cached:
                    evals[str(job.out)] = cached
    counts["missing"] = sum(1 for j in jobs if not j.out.is_file())
    letters = canonical("".join(orders))
    firsts = "".join(c for c in letters if plan.first(c).is_file())
    baselines = constant_baselines(s, firsts) if firsts and s.val_images > 0 else {}
    res = Results(plan, evals, baselines)

    fig_dir.mkdir(parents=True, exist_ok=True)
    figures = {}

    def make(key, fn, *a):
        path = fig_dir / f"study_{key}.png"
        ok = fn(res, path, *a)
        if ok is not False and path.is_file():
            figures[key] = path
    if firsts:
        make("fit", fig_fit, firsts)
    make("summary", fig_summary, strategies, orders)
    make("forgetting", fig_forgetting_curves, strategies, orders)
    make("selection", fig_selection, orders, "ours" if "ours" in strategies else strategies[0])
    if plan.single_head:
        shared, joint = plan.single_head_paths()
        if str(shared) in evals and str(joint) in evals:
            make("single_head", fig_single_head, canonical("".join(orders)), shared, joint)
    if "ours" in strategies and "finetune" in strategies:
        make("qualitative", fig_qualitative, "NKS" if "NKS" in orders else orders[0])

    invocation = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "seconds": round(time.time() - t_start, 1), "trained": counts["trained"] + counts["resumed"],
                  "evaluated": counts["evaluated"], "reused": counts["reused"], "jobs": s.jobs,
                  "threads": s.threads, "load_average": round(os.getloadavg()[0], 2)}
    if invocation["trained"] or invocation["evaluated"]:
        with open(s.runs_dir / "study_invocations.jsonl", "a") as f:
            f.write(json.dumps(invocation) + "\n")
    timings = summarize_timings(plan, evals, time.time() - t_start, s)
    report = Report(res, args, timings, figures, report_path, variants, variant_orders).build()
    report_path.parent.mkdir(parents=True, exist_ok=True)
    from safeio import atomic_write
    with atomic_write(report_path, "w", encoding="utf-8") as f:
        f.write(report)
    payload = {"settings": s.training(), "evaluation": s.evaluation(), "orders": orders,
               "strategies": strategies, "counts": counts, "timings": timings,
               "matrices": {f"{o}/{st}/{m}": res.matrix(o, st, m) for o in orders for st in strategies
                            for m in REPORT_METRICS},
               "summaries": {f"{o}/{st}/{m}": res.summary(o, st, m) for o in orders for st in strategies
                             for m in REPORT_METRICS},
               "baselines": baselines, "figures": {k: str(v) for k, v in figures.items()}}
    write_json(s.runs_dir / "study_results.json", payload)
    log(f"[study] {counts['trained']} trained, {counts['resumed']} resumed, {counts['reused']} reused, "
        f"{counts['missing']} missing, {counts['evaluated']} evaluated; wrote {report_path} and "
        f"{len(figures)} figure(s) in {fig_dir} ({time.time() - t_start:.0f} s)")
    return payload


if __name__ == "__main__":
    main()
