"""The default backend and precision measured on the machine at hand (issue 35).

``choose_measured`` times the one-head function (trunk, head choice, one head) of every installed
runtime and precision (:func:`candidates`) on a probe batch at the model's input size, keeps those
that meet the accuracy bound against PyTorch float32 (:func:`accurate`), and returns the fastest.
The result is cached in a user cache folder (``$XDG_CACHE_HOME/lifelong-monodepth``, else
``~/.cache/lifelong-monodepth``; :func:`cache_dir`) under a key of the CPU's capability line
(``models.hardware.capability_line``), the versions of torch / onnxruntime / openvino, the input
size, the thread count and the measuring code's :data:`RULE` (:func:`cache_key`): any change of
those measures again, and so does a measurement taken on a busy machine once it is idler
(:func:`stale_load`); a cached answer costs one small JSON read. The file is written complete
or not at all (``base.safeio``).

The measurement is what ``inference.predictor.build_predictor`` does for ``backend="auto"`` (the
product's construction path: predict.py, the demo, test_inference.py); ``--backend`` (a flag) and
``LIFELONG_MONODEPTH_BACKEND`` (``models.runtimes.BACKEND_ENV``) force a backend and skip it.
Everything this module needs from a network comes through callables, so that tests force the
timings (no real timing in tests).
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from pathlib import Path

import torch

from base.safeio import read_json, write_json

from . import hardware
from .runtimes import available

__all__ = ["CACHE_NAME", "ACCURACY_BOUND", "REPEATS", "BUSY", "RULE", "cache_dir", "versions", "cache_key", "cache_path",
           "candidates", "accurate", "time_call", "measure", "load_now", "stale_load", "cached_choice",
           "choose_measured"]

CACHE_NAME = "lifelong-monodepth"
# RMSE and delta1 against the probe's ground truth within this (relative) of PyTorch float32's
ACCURACY_BOUND = 0.002
REPEATS = 3  # timed calls per candidate after one warm-up (the median counts)
# A measurement taken while the 1-minute load average exceeded BUSY x the CPUs is taken again once
# the load has fallen below half of it: timings on an oversubscribed machine rank runtimes by how
# their thread pools wait, not by their speed (a cache written at load 14 on 2 cores had chosen
# ONNX Runtime at 872 ms for a function PyTorch runs in 30 ms idle).
BUSY = 1.5
# What the measured candidates compute: raised whenever a change to a backend's arithmetic or speed
# makes earlier answers stale (2: PyTorch bf16's output convolutions keep float32's weights; before,
# its rounded depth bias failed the bound on this CPU's probe and OpenVINO was chosen instead).
RULE = 2


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / CACHE_NAME


def versions() -> dict:
    """The versions of the packages that run the network (None: not installed), read from the
    installed metadata (nothing imported)."""
    from importlib import metadata
    out = {"torch": torch.__version__}
    for name in ("onnxruntime", "openvino"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def cache_key(input_hw, threads: int | None = None, device="cpu", precision: str | None = None) -> dict:
    """What a measurement depends on: the CPU (its capability line), the packages' versions, the
    input size, the threads, the precision asked for (None: any) and the measuring code's :data:`RULE`."""
    return {"rule": RULE, "cpu": hardware.capability_line(device), "versions": versions(),
            "input": [int(v) for v in input_hw], "threads": int(threads or torch.get_num_threads()),
            "precision": precision or "auto"}


def cache_path(key: dict, folder: Path | None = None) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(folder or cache_dir()) / f"backend-{digest}.json"


def candidates(device="cpu") -> list:
    """(backend, precision) pairs to measure: PyTorch float32 (the reference) and bf16 where the
    CPU runs it natively, ONNX Runtime float32 and OpenVINO float32 / bf16 where installed."""
    if torch.device(device).type != "cpu":
        return [("torch", "auto")]
    bf16 = hardware.bf16_native()
    out = [("torch", "fp32")] + ([("torch", "bf16")] if bf16 else [])
    if available("onnxruntime"):
        out.append(("onnxruntime", "fp32"))
    if available("openvino"):
        out += [("openvino", "fp32")] + ([("openvino", "bf16")] if bf16 else [])
    return out


def _scores(depth: torch.Tensor, gt: torch.Tensor) -> tuple:
    """(RMSE, delta1) of ``depth`` against ``gt`` (same shape) where gt is finite and > 0."""
    valid = (gt > 0) & torch.isfinite(gt)
    d, g = depth[valid].clamp_min(1e-6), gt[valid]
    rmse = float(torch.sqrt(((d - g) ** 2).mean()))
    delta1 = float((torch.maximum(d / g, g / d) < 1.25).float().mean())
    return rmse, delta1


def accurate(ref: dict, out: dict, gt: torch.Tensor | None = None, bound: float = ACCURACY_BOUND) -> tuple:
    """(meets the bound, figures) of a candidate's output ``out`` against the float32 reference
    ``ref`` (each ``{"domain": (B,), "depth": (B,1,h,w)}``): the same heads chosen, and RMSE and
    delta1 against the ground truth ``gt`` (B,1,h,w; 0 = none) within ``bound`` (relative) of the
    reference's. Without ``gt`` the reference's depth stands for it (RMSE within ``bound`` of its
    RMS depth, delta1 >= 1 - bound: stricter)."""
    same = bool(torch.equal(ref["domain"].cpu(), out["domain"].cpu()))
    r, o = ref["depth"].float().cpu(), out["depth"].float().cpu()
    if gt is None:
        rmse, delta1 = _scores(o, r)
        rms = float(torch.sqrt((r ** 2).mean()))
        ok = same and rmse <= bound * rms and delta1 >= 1.0 - bound
        return ok, {"same_heads": same, "rmse": rmse, "delta1": delta1}
    gt = gt.float().cpu()
    if gt.shape[-2:] != r.shape[-2:]:  # the probe's ground truth at the output's size
        gt = torch.nn.functional.interpolate(gt, size=r.shape[-2:], mode="nearest")
    (rr, rd), (orr, od) = _scores(r, gt), _scores(o, gt)
    drmse, dd1 = abs(orr - rr) / max(rr, 1e-12), abs(od - rd) / max(rd, 1e-12)
    ok = same and drmse <= bound and dd1 <= bound
    return ok, {"same_heads": same, "rmse": orr, "delta1": od, "rmse_change": drmse, "delta1_change": dd1}


def time_call(fn, candidate=None, repeats: int = REPEATS) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after one warm-up call (``candidate``:
    the (backend, precision) it runs, for timers that need it)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(cands, run, timer=None, gt=None, bound: float = ACCURACY_BOUND) -> list:
    """Per candidate ``{"backend", "precision", "seconds", "accurate", ...}``: ``run(backend,
    precision)`` -> a zero-argument callable returning ``{"domain", "depth"}`` (the one-head
    function on the probe), timed by ``timer(callable, (backend, precision)) -> seconds`` (default
    :func:`time_call`);
    the first candidate is the reference, ``gt`` the probe's ground truth. A candidate that fails to build or run is recorded
    with its error and never chosen."""
    timer = timer or time_call
    rows, ref = [], None
    for backend, precision in cands:
        row = {"backend": backend, "precision": precision}
        try:
            fn = run(backend, precision)
            out = fn()
            if ref is None:
                ref = out
            row["accurate"], figures = accurate(ref, out, gt, bound)
            row.update(figures)
            row["seconds"] = float(timer(fn, (backend, precision)))
        except Exception as e:  # noqa: BLE001 - a runtime that cannot run this model is no candidate
            row.update(accurate=False, seconds=None, error=f"{type(e).__name__}: {e}")
        rows.append(row)
    return rows


def load_now() -> float | None:
    """The 1-minute load average (None where the system has none)."""
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return None


def stale_load(measured_load, cpus, load=None) -> bool:
    """True when a measurement taken at ``measured_load`` on ``cpus`` CPUs was taken on a busy
    machine (above ``BUSY`` x the CPUs) that is now less than half as busy: measure again."""
    load = load_now() if load is None else load
    if measured_load is None or load is None or not cpus:
        return False
    return measured_load > BUSY * cpus and load < 0.5 * measured_load


def cached_choice(input_hw, device="cpu", precision=None, folder=None, load=None) -> dict | None:
    """The cached answer for this key (:func:`choose_measured`'s dict), or None: one JSON read.
    ``load``: the machine's load now (default :func:`load_now`; a measurement taken on a busy
    machine is not reused on an idler one, :func:`stale_load`)."""
    key = cache_key(input_hw, device=device, precision=precision)
    path = cache_path(key, folder)
    cached = read_json(path)
    if isinstance(cached, dict) and stale_load(cached.get("load"), cached.get("cpus"), load):
        return None
    if isinstance(cached, dict) and cached.get("key") == key and cached.get("backend"):
        return {"backend": cached["backend"], "precision": cached["precision"], "rows": cached.get("rows", []),
                "why": f"measured fastest on this machine ({cached.get('date', '?')}; cached in {path})",
                "cached": True, "path": str(path)}
    return None


def choose_measured(run, input_hw, *, device="cpu", cands=None, timer=None, gt=None, folder=None, log=None,
                    refresh: bool = False, precision=None) -> dict:
    """``{"backend", "precision", "why", "rows", "cached"}``: the fastest candidate meeting the
    accuracy bound, from the cache when its key matches (``refresh``: measure anyway), else
    measured now (``run``/``timer`` as :func:`measure`; ``cands`` and ``gt`` may be callables, called
    only then), cached, and reported once through ``log`` (a callable taking one line)."""
    hit = None if refresh else cached_choice(input_hw, device, precision, folder)
    if hit is not None:
        return hit
    key = cache_key(input_hw, device=device, precision=precision)
    path = cache_path(key, folder)
    cands = cands() if callable(cands) else cands
    gt = gt() if callable(gt) else gt
    rows = measure(cands or candidates(device), run, timer, gt)
    ok = [r for r in rows if r["accurate"] and r["seconds"] is not None]
    best = min(ok, key=lambda r: r["seconds"]) if ok else {"backend": "torch", "precision": "fp32"}
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    try:
        write_json(path, {"key": key, "backend": best["backend"], "precision": best["precision"],
                          "date": date, "load": load_now(), "cpus": os.cpu_count(), "rows": rows},
                   round_digits=None)
    except OSError:  # an unwritable cache folder: measured again next time, nothing else changes
        pass
    if log is not None:
        h, w = key["input"]
        log(f"backend: measured the one-head function at {w}x{h} on {key['threads']} thread(s): "
            + ", ".join(f"{r['backend']} {r['precision']} "
                        + (f"{1000 * r['seconds']:.1f} ms" if r["seconds"] is not None else "failed")
                        + ("" if r["accurate"] else " (outside the accuracy bound)") for r in rows)
            + f"; using {best['backend']} {best['precision']} (cached in {path}; "
              f"--backend or LIFELONG_MONODEPTH_BACKEND forces one)")
    return {"backend": best["backend"], "precision": best["precision"], "rows": rows,
            "why": f"measured fastest on this machine ({date})", "cached": False, "path": str(path)}
