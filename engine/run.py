"""A training stage from its settings to its checkpoint: :func:`train_stage`.

The run folder (``<out without .pth.tar>/``: options.json, log.jsonl, the resume state last.pth.tar)
is locked for the whole stage, so that a second training into it stops at once. Every user error
(an option, the data, a checkpoint) is an :class:`base.errors.InputError`; a stage stopped by a
signal saves its resume state and raises :class:`engine.processes.StageInterrupted`.
"""
from __future__ import annotations

import dataclasses
import sys
from contextlib import nullcontext
from pathlib import Path

from base.errors import InputError
from base.safeio import clean_stale_temps, hold_lock, write_json
from engine.options import StageOptions, check_paths, resolve_options
from engine.processes import Dist, amp_warning
from engine.stage import Stage, describe


def train_stage(options: StageOptions) -> Path:
    """Train one stage as ``options`` say (resolved first, see engine.options.resolve_options), on
    this process or as one rank of a torchrun job; returns the path of the final checkpoint."""
    opts = resolve_options(options)
    ctx = Dist(opts.device)
    try:
        check_paths(opts)  # on every process, so that all of them stop; before the folder is made
        with run_folder_lock(Path(opts.run_dir)) if ctx.main else nullcontext():
            return _run_locked(opts, ctx)
    finally:
        ctx.close()


def run_folder_lock(run_dir: Path):
    """Hold ``run_dir/.lock`` (base.safeio.hold_lock: an exclusive flock, released by the kernel when
    the process ends, also on kill -9) for the whole stage: a second training into the same run folder
    stops at once instead of interleaving its epochs into the same log.jsonl and replacing the other's model."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the run folder {run_dir} ({exc.strerror or exc}); "
                         f"choose another --runs-dir or --out") from None
    return hold_lock(run_dir / ".lock", f"{run_dir} is in use by another training (pid {{pid}}); wait for it "
                                        f"to finish, or choose another --runs-dir / --out")


def start_run_folder(opts: StageOptions) -> None:
    """Clean temp files of killed saves, start over if asked to, write options.json."""
    run_dir = Path(opts.run_dir)
    for folder in (run_dir, Path(opts.out).parent):
        for path in clean_stale_temps(folder):
            print(f"removed {path} (an interrupted save)", file=sys.stderr)
    run_dir.mkdir(parents=True, exist_ok=True)
    if opts.resume is None and opts.overwrite:  # starting over: the earlier run's state goes
        for name in ("last.pth.tar", "log.jsonl"):
            (run_dir / name).unlink(missing_ok=True)
    write_json(run_dir / "options.json", dataclasses.asdict(opts), round_digits=None)  # every option as given


def _run_locked(opts: StageOptions, ctx: Dist) -> Path:
    """The stage, with its run folder locked (train_stage)."""
    check_paths(opts)  # again: another run may have finished between the first check and the lock
    if ctx.main:
        start_run_folder(opts)
        if opts.pretrained is None and (len(opts.order) == 1 or opts.strategy == "joint"):
            print("warning: no --pretrained ImageNet weights given; the encoder starts from "
                  "random weights", file=sys.stderr)
        if warning := amp_warning(opts.precision, ctx.device):
            print(warning, file=sys.stderr)
    stage = Stage(opts, ctx)
    resume = Path(opts.run_dir) / "last.pth.tar" if opts.resume == "auto" else opts.resume
    if resume is not None:
        if not Path(resume).is_file():
            raise InputError(f"nothing to resume: {resume} does not exist")
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
    return Path(opts.out)
