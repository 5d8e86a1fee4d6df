"""Training the plan's stages with the engine (``engine.run.train_stage``): resumable, checked
against recorded settings, and ``--jobs`` stages at a time in spawned processes (each stage after
its prior).

A stage whose checkpoint exists is reused when its recorded engine arguments (``study_job.json`` in
its run folder: ``Job.argv``, the stage's settings as a command line) are the ones the plan asks
for, and the study stops with an InputError otherwise. A run folder with ``last.pth.tar`` but no
checkpoint was interrupted: it continues with ``resume``.
"""
from __future__ import annotations

import shlex
import time

import torch

from base.errors import InputError
from base.safeio import read_json, write_json
from engine.options import precision_of_amp
from engine.run import train_stage
from .plan import Job


def relevant_argv(argv: list[str]) -> list[str]:
    """The arguments that change a run's result (data-loader workers and progress bars do not), in
    today's spelling (a record's ``--amp off`` is ``--precision fp32``)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--workers":
            skip = True
        elif out and out[-1] == "--precision":
            out.append(precision_of_amp(a))
        elif a == "--amp":
            out.append("--precision")
        elif a not in ("--quiet", "--resume"):
            out.append(a)
    return out


def reuse(job: Job, s) -> bool:
    """True when ``job``'s checkpoint exists and was trained with the arguments the plan gives."""
    if not job.out.is_file():
        return False
    record = read_json(job.run_dir / "study_job.json") or {}
    wanted = relevant_argv(job.argv(s))
    if record and relevant_argv(record.get("relevant_argv") or []) != wanted:
        raise InputError(f"{job.out} exists but was trained with other settings:\n  recorded: "
                        f"{' '.join(record.get('relevant_argv') or [])}\n  now:      {' '.join(wanted)}\n"
                        f"use another --runs-dir (or delete that run) to train with the new settings")
    return True


def engine_command(job: Job, s) -> str:
    """The stage as a command line of the entry scripts (for the report)."""
    script = {1: "train_N.py", 2: "train_NK.py"}.get(len(job.letters), "train_NKS.py")
    return f"python3 {script} {' '.join(shlex.quote(a) for a in job.argv(s))}"


def train(job: Job, s) -> str:
    """Train ``job`` with the engine in this process; 'trained' or 'resumed'. The run folder's
    ``study_job.json`` records the arguments, the status, wall and CPU seconds."""
    argv = job.argv(s)
    record_path = job.run_dir / "study_job.json"
    record = read_json(record_path) or {}
    wanted = relevant_argv(argv)
    if job.prior is not None and not job.prior.is_file():
        raise InputError(f"{job.key}: its prior {job.prior} is missing")
    resume = (job.run_dir / "last.pth.tar").is_file()
    if resume and record and relevant_argv(record.get("relevant_argv") or []) != wanted:
        raise InputError(f"{job.run_dir} holds an interrupted run with other settings; delete it or use "
                        f"another --runs-dir")
    job.run_dir.mkdir(parents=True, exist_ok=True)
    if not resume:  # a fresh start: forget the log of a run that died before its first epoch ended
        (job.run_dir / "log.jsonl").unlink(missing_ok=True)
    before = float(record.get("seconds", 0.0)) if resume else 0.0
    before_cpu = float(record.get("cpu_seconds", 0.0)) if resume else 0.0
    base = {"key": job.key, "group": job.group, "arm": job.arm, "seed": job.seed, "argv": argv,
            "relevant_argv": wanted, "resumed": resume or bool(record.get("resumed")),
            "threads": torch.get_num_threads()}

    def write(status, seconds, cpu):
        write_json(record_path, dict(base, status=status, seconds=round(seconds, 2), cpu_seconds=round(cpu, 2)))
    write("running", before, before_cpu)
    print(f"[study] {'resume' if resume else 'train'} {job.key}", flush=True)
    t0, c0 = time.time(), time.process_time()
    status = "interrupted"
    try:
        train_stage(job.options(s, resume=resume))
        status = "done"
    except KeyboardInterrupt:  # SIGINT / SIGTERM (StageInterrupted): "interrupted", resume state saved
        raise
    except Exception:
        status = "failed"
        raise
    finally:
        write(status, before + time.time() - t0, before_cpu + time.process_time() - c0)
    return "resumed" if resume else "trained"


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _train_and_evaluate(job: Job, s):
    """Pool task: train one stage, then evaluate it in the same worker (evaluations run in parallel)."""
    from .evaluate import study_results
    status = train(job, s)
    study_results(job.out, s)
    return status


def run_jobs(jobs: list[Job], s, log) -> dict:
    """Train every job without a checkpoint, ``s.jobs`` at a time, each after its prior."""
    counts = {"reused": 0, "trained": 0, "resumed": 0}
    todo = []
    for job in jobs:
        if reuse(job, s):
            counts["reused"] += 1
        else:
            todo.append(job)
    if not todo:
        return counts
    log(f"[study] {len(todo)} stage(s) to train, {counts['reused']} reused")
    if s.jobs <= 1:
        for i, job in enumerate(todo, 1):
            log(f"[study] stage {i}/{len(todo)}: {job.key}")
            counts[_train_and_evaluate(job, s)] += 1
        return counts
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    pending, training = list(todo), {j.out for j in todo}
    running, started = {}, 0
    with ProcessPoolExecutor(max_workers=s.jobs, mp_context=mp.get_context("spawn"),
                             initializer=_init_worker, initargs=(s.threads,)) as pool:
        try:
            while pending or running:
                for job in list(pending):
                    if len(running) >= s.jobs:
                        break
                    if job.prior is not None and job.prior in training and not job.prior.is_file():
                        continue  # its prior is still being trained
                    pending.remove(job)
                    started += 1
                    log(f"[study] stage {started}/{len(todo)}: {job.key}")
                    running[pool.submit(_train_and_evaluate, job, s)] = job
                if not running:
                    raise InputError(f"cannot schedule {', '.join(j.key for j in pending)}: their priors failed")
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
