"""The study.py command (and ``python -m study``): plan, train, evaluate, then write the report (or
only the report): the study's command layer (its options, exit codes and error lines) over the
``study`` package."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from cli import options
from cli.errors import CLIError, printable, USER_ERRORS
from cli.options import HelpFormatter, help_of
from base.errors import InputError
from engine.options import StageOptions
from engine.processes import StageInterrupted
from models.resnet import ENCODERS

from study.config import ARMS, OVERRIDES, PRESETS, SYNTHETIC_COMMAND, Settings, resolve_settings
from study.evaluate import constant_baselines, study_results, study_selection
from study.plan import Plan
from study.run import run_jobs


def engine_help(name: str) -> str:
    """The help text of the training option ``name`` (engine.options.StageOptions)."""
    return help_of(StageOptions, name)


def preset_values(option: str) -> str:
    """' (full X, quick Y, cuda Z)' for an option whose default is the preset's."""
    key = option.lstrip("-").replace("-", "_")
    values = [f"{name} {PRESETS[name][key]}" for name in ("full", "quick", "cuda") if key in PRESETS[name]]
    return f" (preset: {', '.join(values)})" if values else ""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="study.py",
        description="The lifelong study on synthetic stand-in domains: for each seed, single-domain "
                    "first stages, every order x arm, the protocol comparison, joint and single-head "
                    "baselines; evaluation, selection benchmark, figures and docs/RESULTS.md with "
                    "95 %% intervals over seeds. Everything on disk is reused; an interrupted study "
                    "resumes with the same command.",
        formatter_class=HelpFormatter)
    p.add_argument("--preset", default="full", choices=list(PRESETS),
                   help="full: the study of docs/RESULTS.md (6 orders, 3 seeds); quick: order NKS and "
                        "fewer arms (the measured wall time of both: docs/RESULTS.md); cuda: the paper's input size and "
                        "schedule on a GPU; smoke: a few steps, for tests")
    p.add_argument("--quick", action="store_const", const="quick", dest="preset",
                   help="same as --preset quick")
    p.add_argument("--report-only", action="store_true",
                   help="train and evaluate nothing: rebuild the report from the runs and evaluations "
                        "on disk (missing ones are reported as missing)")
    g = p.add_argument_group("what to run (each overrides the preset)")
    g.add_argument("--seeds", default=None, help="comma-separated engine seeds, e.g. 0,1,2")
    g.add_argument("--orders", default=None,
                   help="comma-separated learning orders of registered domain letters (custom domains "
                        "of the data root's domains.json included), e.g. NKS,KNS")
    g.add_argument("--arms", default=None,
                   help="lifelong arms trained on every order: "
                        + ", ".join(n for n, a in ARMS.items() if not a.protocol))
    g.add_argument("--protocol-arms", default=None,
                   help="protocol arms trained on --protocol-orders (empty: none): "
                        + "; ".join(f"{n} = {a.label} ({a.command})" for n, a in ARMS.items()
                                    if a.protocol))
    g.add_argument("--protocol-orders", default=None,
                   help="orders of the protocol comparison (default: the preset's, NKS; with --orders, "
                        "its first order)")
    g.add_argument("--joint", action=argparse.BooleanOptionalAction, default=None,
                   help="train the joint model on all domains (upper bound)")
    g.add_argument("--single-head", action=argparse.BooleanOptionalAction, default=None,
                   help="train the single-head joint baseline (and the joint model it is compared with)")
    g = p.add_argument_group("data and outputs")
    g.add_argument("--data-root", default=None,
                   help="synthetic data root, rendered by synthetic.py when missing (default: per preset, "
                        "e.g. datasets/study); custom domains: a root with their CSVs and domains.json")
    g.add_argument("--runs-dir", default=None, help="checkpoints, run folders and evaluations "
                                                    "(default: per preset, e.g. runs/study)")
    g.add_argument("--report", default="docs/RESULTS.md", help="the markdown report to write")
    g.add_argument("--figures-dir", default="docs/figures", help="folder of the report's PNG figures")
    g = p.add_argument_group("training (each overrides the preset)")
    for name, kind, text in (
            ("--n-train", int, "rendered training images per domain"),
            ("--scale", float, engine_help("scale") + "; of every stage (and of the rendered frames)"),
            ("--first-epochs", int, "epochs of the single-domain first stages"),
            ("--joint-epochs", int, "epochs of the joint and single-head models (each epoch covers "
                                    "every domain's data)"),
            ("--epochs", int, "epochs of every later stage"),
            ("--lr", float, engine_help("lr")),
            ("--lr-step", int, engine_help("lr_step")),
            ("--batch-size", int, "batch size of every stage (also of each replay batch)"),
            ("--val-images", int, engine_help("val_images")),
            ("--replay-size", int, engine_help("replay_size")),
            ("--proto-images", int, engine_help("proto_images") + " and lda statistics"),
            ("--max-steps", int, engine_help("max_steps") + ", per stage"),
            ("--eval-images", int, "test images per domain (default all)"),
            ("--selection-images", int, "test images per domain in the selection benchmark (default all)"),
            ("--jobs", int, "stages trained (and checkpoints evaluated) in parallel processes"),
            ("--threads", int, "torch threads per process (1 x 2 processes is fastest on 2 cores)"),
            ("--workers", int, engine_help("workers") + " of the engine")):
        g.add_argument(name, type=kind, default=None, help=text + preset_values(name))
    g.add_argument("--encoder", default=None, choices=sorted(ENCODERS),
                   help="encoder of the models trained from scratch")
    options.add_device_argument(g, default=None, help=engine_help("device") + " (default: per preset; cpu, "
                                                      "or cuda for --preset cuda)")
    g.add_argument("--quiet", action="store_true", help=engine_help("quiet") + " in the engine")
    return p


def settings_of(args) -> Settings:
    """The study's settings from its parsed options (a refused value: one error line)."""
    values = {k: getattr(args, k) for k in ("preset", "data_root", "runs_dir", "quiet", "seeds", "orders",
                                             "arms", "protocol_arms", "protocol_orders", *OVERRIDES)}
    try:
        return resolve_settings(**values)
    except InputError as e:
        raise CLIError(printable(e)) from None


def log(msg: str) -> None:
    print(msg, flush=True)


def ensure_data(s) -> None:
    """Render the synthetic domains when the data root has none (custom roots must exist)."""
    root = Path(s.data_root)
    if (root / "meta.json").is_file() or (root / "domains.json").is_file():
        return
    if set(s.letters) - set("NKS"):
        raise InputError(f"data root {str(root)!r} does not exist; custom domains ({s.letters}) need their "
                       f"own data root with domains.json and index CSVs")
    from data import synthetic
    synthetic.check_out(str(root), "NKS", False, "--data-root", None)  # a real dataset there: refused first
    log(f"[study] {root} is missing: rendering it (python3 synthetic.py "
        f"{' '.join(SYNTHETIC_COMMAND(s))} --out {root})")
    synthetic.generate(str(root), s.n_train, s.n_test, 0, None, s.replay_size, "NKS", s.scale,
                       progress=not s.quiet, option="--data-root", flag=None)


def append_invocation(s, record: dict) -> None:
    s.runs_dir.mkdir(parents=True, exist_ok=True)
    with open(s.runs_dir / "study_invocations.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def main(argv=None) -> dict:
    """The study as a command: the library's user errors are one ``error:`` line (exit status 1),
    an interrupt exits with 130 (or 143 for a training stage stopped by SIGTERM)."""
    try:
        return run_study(argv)
    except USER_ERRORS as e:
        raise CLIError(printable(e)) from None


def run_study(argv=None) -> dict:
    t_start = time.time()
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    s = settings_of(args)
    plan = Plan(s)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(s.threads)
    try:
        counts = {"reused": 0, "trained": 0, "resumed": 0}
        if not args.report_only:
            ensure_data(s)
            try:
                counts.update(run_jobs(plan.ordered(), s, log))
                evaluate_all(plan, s)
            except KeyboardInterrupt as stop:  # a stage's resume state is saved
                log("[study] interrupted; run the same command again to resume")
                raise SystemExit(128 + stop.signum if isinstance(stop, StageInterrupted) else 130) from None
            append_invocation(s, {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                  "seconds": round(time.time() - t_start, 1), "preset": s.preset,
                                  "argv": list(sys.argv[1:] if argv is None else argv), **counts,
                                  "jobs": s.jobs, "threads": s.threads,
                                  "load_average": round(os.getloadavg()[0], 2)})
        from study.report import write_report
        return write_report(plan, args, counts, t_start, log)
    finally:
        torch.set_num_threads(threads_before)


def evaluate_all(plan: Plan, s) -> None:
    """Every checkpoint's test evaluation, the selection benchmark of every final multi-head model,
    and the constant baselines (cached results are kept)."""
    t0 = time.time()
    for job in plan.ordered():
        if job.out.is_file():
            study_results(job.out, s)
    for path in plan.selection_checkpoints():
        if path.is_file():
            study_selection(path, s)
    constant_baselines(s, s.letters)
    log(f"[study] evaluations ready in {time.time() - t0:.0f} s")
