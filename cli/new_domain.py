"""A new domain from a user's own RGB-D recording on top of a trained model, in one call:
:func:`add_domain` (the library behind add_domain.py, whose parser is cli/add_domain.py). It is a
front door above the engine and the evaluation (the commands' layer), not a second engine:

1. the recording is read, checked and indexed (data.recordings, data.prepare.write_indexes; the
   skipped files and why in ``<data-root>/prepare_<name>_skipped.txt``);
2. the domain's description goes into ``<data-root>/domains.json`` (units, camera, depth range, an
   input size with the frames' aspect); the prior's domains' index CSVs are linked into the data
   root (rows pointing at the replay root's files by absolute path; the replay root is only read);
3. the new head is trained by engine.run.train_stage (distillation + replay, strategy ``ours``), at
   settings chosen from the data size and the device (:func:`choose_settings`; every one
   overridable); the stage's end fits the uncertainty calibration, the frame statistics and the
   out-of-domain threshold, as for every stage;
4. the prior and the new model are scored with evaluation.evaluate.evaluate_checkpoint and
   evaluation.selection.evaluate_selection: the new domain's accuracy, each old domain's
   forgetting (after minus before), the selection confusion matrix, the cost (time, size).
"""
from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import InitVar, dataclass, field
from pathlib import Path

import torch

from base import domains as dom
from base.errors import InputError
from base.safeio import check_folder, check_write, made_by, protect, record_made, write_json
from data.prepare import IndexOptions, Report, read_csv_rows, write_indexes, write_rows
from data.recordings import LAYOUTS, Recording, make_layout, read_recording
from engine.options import StageOptions, precision_of_amp
from engine.processes import resolve_device
from engine.run import train_stage
from evaluation.evaluate import EvalOptions, evaluate_checkpoint
from evaluation.selection import SelectionOptions, evaluate_selection
from loaders import _resolve
from models.checkpoint import CheckpointMeta, check_checkpoint_path, checkpoint_letters, checkpoint_meta, read_checkpoint

#: the network input area at scale 1 a new domain gets (NYU's 228x304), at its frames' aspect
INPUT_AREA = 228 * 304


def _o(default, help):
    return field(default=default, metadata={"help": help})


@dataclass
class AddDomainOptions:
    """What add_domain.py is asked (the fields' help texts are its options' help)."""
    prior: str = _o(None, "checkpoint the new domain is learned on top of (e.g. runs/NKS.pth.tar)")
    name: str = _o(None, "the new domain's name: lower-case letters, digits, '_' or '-'")
    letter: str = _o(None, "the new domain's letter A-Z, not one the prior learned")
    src: str = _o(None, "the recording's folder, in --layout")
    layout: str = _o("png16", "how the recording is stored: " + ", ".join(LAYOUTS) + " (data/recordings.py; "
                              "npy: float metres in .npy or OpenEXR .exr depth files)")
    depth_unit: float | None = _o(None, "metres per stored depth value (default: the layout's: tum 0.0002 = "
                                        "5000 per metre, png16 0.001 = millimetres, npy 1, kitti 1/256)")
    tolerance: float = _o(0.02, "tum: the largest colour-depth timestamp difference paired, seconds")
    intrinsics: str | None = _o(None, "fx,fy,cx,cy of the recording's frames in pixels (default: unknown; "
                                      "predict.py then assumes the frame's field of view)")
    test_fraction: float = _o(0.2, "the last fraction of the recording held out as its test split")
    data_root: str | None = _o(None, "folder of the new index CSVs and domains.json (default: datasets/<name>)")
    replay_root: str | None = _o(None, "data root of the prior's domains (replay, training and test CSVs; "
                                       "only read; default: the prior's own training data root)")
    runs_dir: str = _o("runs", "folder of the new checkpoint and its run folder")
    out: str | None = _o(None, "the new checkpoint (default: <runs-dir>/<prior letters + letter>.pth.tar)")
    steps: int | None = _o(None, "optimiser steps (default: from the data size and the device, "
                                 "see cli/new_domain.choose_settings)")
    batch_size: int | None = _o(None, "images per step (default: 4 on a CPU, 8 on a GPU)")
    lr: float | None = _o(None, "Adam learning rate (default: the prior's)")
    scale: float | None = _o(None, "input size factor (default: the prior's)")
    val_images: int | None = _o(None, "training frames held out for validation and the calibration fit "
                                      "(default: a tenth, at most 8)")
    replay_size: int | None = _o(None, "replay buffer per old domain (default: the prior's)")
    proto_images: int | None = _o(None, "images per domain for the prototypes and frame statistics "
                                        "(default: the prior's)")
    eval_images: int | None = _o(None, "test images per domain in the report (default: all)")
    encoder: str | None = _o(None, "refuse a prior with another encoder than this (e.g. resnet34)")
    device: str = _o("auto", "auto, cpu or cuda")
    precision: str = _o("auto", "precision of training: auto, fp32, bf16 or fp16 (as train_NKS.py --precision)")
    seed: int = _o(0, "seed of the split, the training and the replay draw")
    overwrite: bool = _o(False, "replace an earlier --out and its run folder")
    quiet: bool = _o(False, "no progress bars")
    # the older name of ``precision`` (auto, off, bf16, fp16; off is fp32): AddDomainOptions(amp=...)
    amp: InitVar[str | None] = None

    def __post_init__(self, amp):
        if amp is not None:
            self.precision = precision_of_amp(amp)


# ============================================================================ the prior
def read_prior(options: AddDomainOptions) -> tuple[str, CheckpointMeta]:
    """(the prior's letters, its metadata), its encoder checked against ``options.encoder``."""
    if not os.path.isfile(options.prior):
        raise InputError(f"--prior {options.prior}: no such file; expected the checkpoint the new domain is "
                         f"learned on top of (e.g. runs/NKS.pth.tar from quickstart.py or train_NKS.py)")
    path = check_checkpoint_path(options.prior, "--prior")
    meta = checkpoint_meta(read_checkpoint(path)[1])
    letters = checkpoint_letters(meta, path)
    if options.encoder and meta.encoder != options.encoder:
        raise InputError(f"--prior {path}: its encoder is {meta.encoder or 'unknown'}, expected "
                         f"{options.encoder} (--encoder); a new head is learned on the prior's own encoder")
    return letters, meta


def check_name(options: AddDomainOptions, letters: str) -> None:
    """The new letter and name are free: not the prior's, not another domain's."""
    letter = (options.letter or "").strip().upper()
    if len(letter) != 1 or not letter.isalpha() or not letter.isascii():
        raise InputError(f"--letter {options.letter!r}: expected one letter A-Z")
    if letter in letters:
        raise InputError(f"--letter {letter}: already taken by the prior's domain "
                         f"{dom.get_domain(letter).name!r} ({options.prior} learned {letters}); choose another")
    for spec in dom.all_domains():
        if spec.letter == letter and spec.name != options.name:
            raise InputError(f"--letter {letter}: already taken by the domain {spec.name!r}; choose another")
        if spec.name == options.name and spec.letter != letter:
            raise InputError(f"--name {options.name}: already the domain of letter {spec.letter}; choose "
                             f"another name")
        if spec.name == options.name and spec.letter in letters:
            raise InputError(f"--name {options.name}: already learned by {options.prior}")


# ============================================================================ the description
def input_size_for(size: tuple[int, int]) -> tuple[int, int]:
    """(H, W) at scale 1 with the frames' aspect and NYU's input area, each a multiple of 8."""
    w, h = size
    k = math.sqrt(INPUT_AREA / (w * h))
    return max(32, int(round(h * k / 8)) * 8), max(32, int(round(w * k / 8)) * 8)


def max_depth_for(stats: dict) -> float:
    """The evaluation cap and plotting range: the largest measured depth, 10 % over, to 5 m."""
    return float(max(5.0, 5.0 * math.ceil(1.1 * stats.get("max", 10.0) / 5.0)))


def parse_intrinsics(text) -> tuple | None:
    if text in (None, ""):
        return None
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or not all(v > 0 and math.isfinite(v) for v in values):
        raise InputError(f"--intrinsics {text!r}: expected fx,fy,cx,cy in pixels, e.g. 517.3,516.5,318.6,255.3")
    return values


def describe(options: AddDomainOptions, rec: Recording) -> dom.DomainSpec:
    k = parse_intrinsics(options.intrinsics)
    camera = list(k) + list(rec.size) if k else None
    return dom.domain_from_dict({
        "name": options.name, "letter": options.letter.strip().upper(), "max_depth": max_depth_for(rec.depth_percentiles),
        "input_size": list(input_size_for(rec.size)), "depth_encoding": rec.layout.encoding(),
        "camera": camera,
        "description": f"{rec.layout.name} recording {options.src} (add_domain.py); metres = value x "
                       f"{rec.layout.metres_per_value:g}"}, f"--name {options.name}")


COMMAND = "add_domain.py"


def index_paths(spec: dom.DomainSpec, data_root: str) -> list[str]:
    return [os.path.join(data_root, name) for name in (spec.train_csv, spec.test_csv, spec.replay_csv)]


def check_outputs(options, spec: dom.DomainSpec, data_root: str) -> None:
    """Before anything is written (base.safeio.check_write): never the --prior, never index CSVs
    this command did not make (a real dataset's, another tool's) unless --overwrite."""
    protect(options.prior, "the --prior")
    check_folder(data_root, "--data-root")
    for path in index_paths(spec, data_root):
        check_write(path, option="--data-root", overwrite=options.overwrite, ours=lambda p: made_by(p, COMMAND),
                    hint="it was not made by add_domain.py (a dataset's own index?); choose another --data-root, "
                         "or pass --overwrite to replace it")


def write_description(spec: dom.DomainSpec, data_root: str) -> str:
    """Add (or replace, same name and letter) ``spec`` in ``<data_root>/domains.json``."""
    path = os.path.join(data_root, dom.DOMAINS_JSON)
    try:
        others = dom.load_domains_file(path, register=False) if os.path.isfile(path) else []
    except ValueError as e:
        raise InputError(str(e)) from None
    for o in others:
        if o.letter == spec.letter and o.name != spec.name:
            raise InputError(f"--letter {spec.letter}: already taken by {o.name!r} in {path}; choose another")
    specs = [o for o in others if o.name != spec.name] + [spec]
    os.makedirs(data_root, exist_ok=True)
    dom.save_domains_file(specs, path)
    dom.register_domain(spec)
    return path


def link_old_domains(letters: str, replay_root: str, data_root: str) -> list[str]:
    """The old domains' index CSVs in ``data_root``, each row's files by absolute path under
    ``replay_root`` (which is only read), and its meta.json (the synthetic sets' cameras)."""
    if os.path.abspath(replay_root) == os.path.abspath(data_root):
        return []
    written = []
    dom.load_domains_from_root(replay_root)
    for c in letters:
        spec = dom.get_domain(c)
        for split in ("train", "test", "replay"):
            src = os.path.join(replay_root, spec.csv_name(split))
            if not os.path.isfile(src):
                if split == "replay" or split == "train":
                    raise InputError(f"--replay-root {replay_root}: no {spec.csv_name(split)} of the prior's "
                                     f"domain {spec.name} ({c}); expected the data root the prior was "
                                     f"trained on")
                continue
            def absolute(p, alt=spec.alt_roots):
                return os.path.abspath(_resolve(p, replay_root, alt)[0] or os.path.join(replay_root, p))
            rows = [[absolute(p) if i < 2 and not p.isdigit() else p for i, p in enumerate(row)]
                    for row in read_csv_rows(src)]
            write_rows(os.path.join(data_root, spec.csv_name(split)), rows)
            written.append(spec.csv_name(split))
    meta = os.path.join(replay_root, "meta.json")
    if os.path.isfile(meta):
        shutil.copyfile(meta, os.path.join(data_root, "meta.json"))
    return written


# ============================================================================ settings
def choose_settings(options: AddDomainOptions, prior_meta: CheckpointMeta, n_train: int, device: torch.device) -> dict:
    """The training settings: the given ones, else chosen. On a CPU: batch 4, about one and a half
    passes over the new frames, 24 to 48 steps (a few minutes on 2 cores at scale 0.5); on a GPU:
    batch 8, 20 passes, at most 4000 steps. The learning rate, scale, replay buffer and prototype images are the
    prior's (what its old heads were trained and described with)."""
    prior = prior_meta.options
    cuda = device.type == "cuda"
    batch = options.batch_size or (8 if cuda else 4)
    val = options.val_images if options.val_images is not None else min(8, n_train // 10)
    if n_train - val < batch:
        raise InputError(f"--src {options.src}: {n_train} training frames ({val} of them held out for "
                         f"validation) are fewer than a batch of {batch}; expected at least {batch + val} "
                         f"frames (record more, or lower --batch-size / --val-images)")
    passes = 20 if cuda else 1.5
    steps = options.steps or int(min(4000 if cuda else 48, max(24, round(passes * (n_train - val) / batch))))
    return {"batch_size": batch, "val_images": val, "max_steps": steps,
            "lr": options.lr or float(prior.get("lr") or 1e-4),
            "scale": options.scale or prior_meta.scale,
            "replay_size": options.replay_size or int(prior.get("replay_size") or 500),
            "proto_images": options.proto_images or int(prior.get("proto_images") or 200)}


# ============================================================================ the whole job
def add_domain(options: AddDomainOptions, say=print) -> dict:
    """Index, describe, train and score (module docstring); returns the report dict, written with
    REPORT.md beside the new checkpoint's run folder."""
    t_start = time.perf_counter()
    for f in ("prior", "name", "letter", "src"):
        if not getattr(options, f):
            raise InputError(f"--{f.replace('_', '-')}: required")
    letters, prior_meta = read_prior(options)
    check_name(options, letters)
    letter = options.letter.strip().upper()
    data_root = options.data_root or os.path.join("datasets", options.name)
    replay_root = options.replay_root or prior_meta.data_root
    if not replay_root or not os.path.isdir(replay_root):
        raise InputError(f"--replay-root {replay_root}: no such folder; expected the data root the prior "
                         f"was trained on (its replay CSVs)")
    layout = make_layout(options.layout, options.depth_unit, options.tolerance)

    report = Report(f"add_domain {options.name}")
    rec = read_recording(options.src, layout, options.test_fraction, report)
    if not rec.test:
        raise InputError(f"--src {options.src}: no test frames ({rec.frames} frames, --test-fraction "
                         f"{options.test_fraction}); expected a recording of at least 2 frames")
    device = resolve_device(options.device)
    settings = choose_settings(options, prior_meta, len(rec.train), device)
    spec = describe(options, rec)
    check_outputs(options, spec, data_root)
    domains_json = write_description(spec, data_root)
    linked = link_old_domains(letters, replay_root, data_root)
    write_indexes(spec, rec.train, rec.test, IndexOptions(data_root=data_root, replay_size=settings["replay_size"],
                                                          seed=options.seed, check=False), report)
    for path in index_paths(spec, data_root):
        if os.path.isfile(path):
            record_made(path, COMMAND)  # a later add_domain.py of this domain may replace them
    if report.skipped:
        report.skip_list = os.path.join(data_root, f"prepare_{options.name}_skipped.txt")
        report.write_full(report.skip_list)
    say(report.text())
    say(f"described {spec.name} ({letter}) in {domains_json}: depth {rec.layout.encoding()}, input "
        f"{spec.input_size[0]}x{spec.input_size[1]} at scale 1, max depth {spec.max_depth:g} m, camera {spec.camera}")
    t_indexed = time.perf_counter()

    order = letters + letter
    stage = StageOptions(order=order, prior=str(options.prior), data_root=data_root, runs_dir=options.runs_dir,
                         out=options.out, epochs=100000, workers=0, device=options.device, precision=options.precision,
                         seed=options.seed, overwrite=options.overwrite, quiet=options.quiet, **settings)
    say(f"training {order}: " + ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in settings.items()) + f" on {device}")
    t0 = time.perf_counter()
    checkpoint = train_stage(stage)
    train_seconds = time.perf_counter() - t0

    say("scoring the prior and the new model on every domain's test split")
    t0 = time.perf_counter()
    ev = EvalOptions(data_root=data_root, max_images=options.eval_images, quiet=options.quiet)
    before = evaluate_checkpoint(options.prior, ev, device)
    after = evaluate_checkpoint(checkpoint, ev, device)
    selection = evaluate_selection(checkpoint, ev, SelectionOptions(latency_runs=0), device)
    eval_seconds = time.perf_counter() - t0

    result = summarise(options, spec, rec, report, settings, order, before, after, selection, checkpoint)
    result["cost"] = {"index_s": round(t_indexed - t_start, 1), "train_s": round(train_seconds, 1),
                      "evaluate_s": round(eval_seconds, 1), "total_s": round(time.perf_counter() - t_start, 1),
                      "checkpoint_mb": round(os.path.getsize(checkpoint) / 2 ** 20, 1),
                      "prior_mb": round(os.path.getsize(options.prior) / 2 ** 20, 1),
                      "device": str(device), "threads": torch.get_num_threads()}
    result["files"] = {"checkpoint": str(checkpoint), "domains_json": domains_json, "data_root": data_root,
                       "linked_csvs": linked, "skip_list": report.skip_list}
    run_dir = Path(str(checkpoint)[: -len(".pth.tar")] if str(checkpoint).endswith(".pth.tar") else checkpoint)
    write_json(run_dir / "add_domain.json", result)
    (run_dir / "REPORT.md").write_text(report_text(result), encoding="utf-8")
    result["files"]["report"] = str(run_dir / "REPORT.md")
    return result


def _metrics(r: dict) -> dict:
    return {k: r[k] for k in ("abs_rel", "rmse", "delta1", "count") if k in r}


def summarise(options, spec, rec, report, settings, order, before, after, selection, checkpoint) -> dict:
    """The report's numbers from the evaluation dicts (no new scoring)."""
    letter = spec.letter
    old = {}
    for c in order[:-1]:
        b, a = before["results"][c], after["results"][c]
        old[c] = {"domain": a["domain"], "before": _metrics(b), "after": _metrics(a),
                  "forgetting_abs_rel": a["abs_rel"] - b["abs_rel"], "forgetting_delta1": b["delta1"] - a["delta1"]}
    sel = selection["selection"]
    return {
        "domain": spec.to_dict(), "order": order, "checkpoint": str(checkpoint), "prior": str(options.prior),
        "recording": {"src": options.src, "layout": rec.layout.name, "unit": rec.layout.metres_per_value,
                      "frames": rec.frames, "train": len(rec.train), "test": len(rec.test), "size": list(rec.size),
                      "depth_m": rec.depth_percentiles,
                      "skipped": {r: len(p) for r, p in report.skipped.items()}},
        "settings": settings,
        "new_domain": _metrics(after["results"][letter]),
        "old_domains": old,
        "selection": {"accuracy": sel["accuracy"], "overall": sel["overall_accuracy"],
                      "confusion": sel["confusion"], "columns": sel["columns"], "selector": selection["selector"],
                      "table": selection["tables"]["confusion"]},
        "evaluation": after["settings"], "max_images": options.eval_images,
    }


def report_text(r: dict) -> str:
    d, rec, cost = r["domain"], r["recording"], r["cost"]
    lines = [f"# New domain {d['name']} ({d['letter']}) on top of {r['prior']}", "",
             f"- recording: `{rec['src']}`, layout {rec['layout']}, {rec['unit']:g} m per stored value, "
             f"{rec['frames']} frames {rec['size'][0]}x{rec['size'][1]} ({rec['train']} train, {rec['test']} test "
             f"= the last ones), measured depth {rec['depth_m'].get('p1', 0):.2f}-{rec['depth_m'].get('max', 0):.2f} m; "
             f"skipped: {rec['skipped'] or 'nothing'}",
             f"- training ({r['order']}, distillation + replay): " + ", ".join(f"{k} {v}" for k, v in r["settings"].items()),
             "", "## Accuracy (each domain through its own head, test split)", "",
             "| domain | AbsRel before -> after | RMSE (m) before -> after | delta1 before -> after | forgetting (AbsRel) |",
             "|---|---|---|---|---:|"]
    for c, o in r["old_domains"].items():
        b, a = o["before"], o["after"]
        lines.append(f"| {o['domain']} ({c}) | {b['abs_rel']:.4f} -> {a['abs_rel']:.4f} | {b['rmse']:.3f} -> "
                     f"{a['rmse']:.3f} | {b['delta1']:.3f} -> {a['delta1']:.3f} | {o['forgetting_abs_rel']:+.4f} |")
    n = r["new_domain"]
    lines += [f"| **{d['name']} ({d['letter']})** | - -> {n['abs_rel']:.4f} | - -> {n['rmse']:.3f} | - -> "
              f"{n['delta1']:.3f} | (new) |", "",
              "Forgetting: AbsRel after minus before (positive = forgot).", "",
              f"## Head selection without the domain prior ({r['selection']['selector']})", "",
              "Rows: test domain; columns: the head chosen.", "", "```", r["selection"]["table"], "```", "",
              f"## Cost ({cost['device']}, {cost['threads']} threads)", "",
              f"index {cost['index_s']} s, training {cost['train_s']} s, evaluation {cost['evaluate_s']} s, "
              f"total {cost['total_s']} s; checkpoint {cost['checkpoint_mb']} MB (prior {cost['prior_mb']} MB).", ""]
    return "\n".join(lines)
