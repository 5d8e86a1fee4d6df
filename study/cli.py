"""``study.py``: plan, train, evaluate, then write the report (or only the report)."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from cli.options import CLIError

from .config import SYNTHETIC_COMMAND, build_parser, resolve_settings
from .evaluate import constant_baselines, evaluate_checkpoint, selection_benchmark
from .plan import Plan
from .run import run_jobs


def log(msg: str) -> None:
    print(msg, flush=True)


def ensure_data(s) -> None:
    """Render the synthetic domains when the data root has none (custom roots must exist)."""
    root = Path(s.data_root)
    if (root / "meta.json").is_file() or (root / "domains.json").is_file():
        return
    if set(s.letters) - set("NKS"):
        raise CLIError(f"data root {str(root)!r} does not exist; custom domains ({s.letters}) need their "
                       f"own data root with domains.json and index CSVs")
    from data import synthetic
    log(f"[study] {root} is missing: rendering it (python3 synthetic.py "
        f"{' '.join(SYNTHETIC_COMMAND(s))} --out {root})")
    synthetic.generate(str(root), s.n_train, s.n_test, 0, None, s.replay_size, "NKS", s.scale,
                       progress=not s.quiet)


def append_invocation(s, record: dict) -> None:
    s.runs_dir.mkdir(parents=True, exist_ok=True)
    with open(s.runs_dir / "study_invocations.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def main(argv=None) -> dict:
    t_start = time.time()
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    s = resolve_settings(args)
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
            except KeyboardInterrupt:
                log("[study] interrupted; run the same command again to resume")
                raise SystemExit(130)
            append_invocation(s, {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                  "seconds": round(time.time() - t_start, 1), "preset": s.preset,
                                  "argv": list(sys.argv[1:] if argv is None else argv), **counts,
                                  "jobs": s.jobs, "threads": s.threads,
                                  "load_average": round(os.getloadavg()[0], 2)})
        from .report import write_report
        return write_report(plan, args, counts, t_start, log)
    finally:
        torch.set_num_threads(threads_before)


def evaluate_all(plan: Plan, s) -> None:
    """Every checkpoint's test evaluation, the selection benchmark of every final multi-head model,
    and the constant baselines (cached results are kept)."""
    t0 = time.time()
    for job in plan.ordered():
        if job.out.is_file():
            evaluate_checkpoint(job.out, s)
    for path in plan.selection_checkpoints():
        if path.is_file():
            selection_benchmark(path, s)
    constant_baselines(s, s.letters)
    log(f"[study] evaluations ready in {time.time() - t0:.0f} s")
