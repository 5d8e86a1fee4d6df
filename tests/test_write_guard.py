"""The one write guard (base.safeio.check_write, protect, atomic_write): every command and library
entry that writes goes through it, so that no door leads to replacing the model being read, a
user's own file or a real dataset (issue 40 items 1-3, export's and the streams' faults); a file
appears complete or not at all (a failed checkpoint save, a full disk under a PNG), long legal
names are written."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import pkgutil
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cli
from base import safeio
from base.errors import InputError
from helpers import error_of, make_checkpoint, make_net, torch_threads, write_image
from inference import outputs
from models import save_checkpoint

pytestmark = pytest.mark.usefixtures("single_thread")


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("guard") / "NK.pth.tar"
    with torch_threads(1):
        make_checkpoint(path, letters="NK")
    return path


def real_dataset(root: Path) -> Path:
    """A folder laid out like a real dataset (index CSVs, no synthetic meta.json)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "nyu2_train.csv").write_text("data/nyu2_train/a/1.jpg,data/nyu2_train/a/1.png\n")
    return root


# ---- every entry that writes, pointed at what it must not replace -----------------------------
def _test_json(ckpt, tmp):
    from cli import test
    return error_of(test.main, ["--checkpoint", str(ckpt), "--data-root", str(tmp / "none"), "--json", str(ckpt)])


def _test_plots_file(ckpt, tmp):
    from cli import test
    (tmp / "plots").write_text("x")
    return error_of(test.main, ["--checkpoint", str(ckpt), "--data-root", str(tmp / "none"), "--uncertainty",
                                "--plots", str(tmp / "plots"), "--json", str(tmp / "r.json")])


def _test_inference_json(ckpt, tmp):
    from cli import test_inference
    return error_of(test_inference.main, ["--checkpoint", str(ckpt), "--data-root", str(tmp / "none"),
                                          "--json", str(ckpt)])


def _export(ckpt, tmp):
    from cli import export as export_cli
    return error_of(export_cli.main, ["--checkpoint", str(ckpt), "--out", str(ckpt), "--overwrite"])


def _export_net(ckpt, tmp):
    from inference.export import export_net
    from models import load_checkpoint
    net = load_checkpoint(ckpt)
    with pytest.raises(InputError) as e:
        export_net(net, ckpt)
    return str(e.value)


def _save_checkpoint(ckpt, tmp):
    from models import load_checkpoint, save_checkpoint
    net = load_checkpoint(ckpt)
    with pytest.raises(InputError) as e:
        save_checkpoint(ckpt, net)
    return str(e.value)


def _write_json(ckpt, tmp):
    from models import read_checkpoint
    read_checkpoint(ckpt)
    with pytest.raises(InputError) as e:
        safeio.write_json(ckpt, {"a": 1})
    return str(e.value)


def _add_frame_statistics(ckpt, tmp):
    from cli import test_inference
    return error_of(test_inference.main, ["--checkpoint", str(ckpt), "--data-root", str(tmp / "none"),
                                          "--add-frame-statistics", str(ckpt)])


def _quickstart_out(ckpt, tmp):
    from cli import quickstart
    out = tmp / "runs"
    out.mkdir()
    (out / "N.pth.tar").write_bytes(Path(ckpt).read_bytes())  # the user's own model
    before = digest(out / "N.pth.tar")
    msg = error_of(quickstart.main, ["--tiny", "--out", str(out), "--data-root", str(tmp / "data")])
    assert digest(out / "N.pth.tar") == before and not (tmp / "data").exists()  # nothing ran
    return msg


def _quickstart_data_root(ckpt, tmp):
    from cli import quickstart
    root = real_dataset(tmp / "real")
    msg = error_of(quickstart.main, ["--tiny", "--out", str(tmp / "q"), "--data-root", str(root)])
    assert sorted(p.name for p in root.iterdir()) == ["nyu2_train.csv"] and not (tmp / "q").exists()
    return msg


def _synthetic_generate(ckpt, tmp):
    from data import synthetic
    root = real_dataset(tmp / "real")
    with pytest.raises(InputError) as e:
        synthetic.generate(str(root), n_train=1, n_test=1, workers=1, replay_size=1, domains="N", scale=0.05,
                           progress=False)
    assert sorted(p.name for p in root.iterdir()) == ["nyu2_train.csv"]
    return str(e.value)


def _study(ckpt, tmp):
    from cli import study as study_cli
    root = real_dataset(tmp / "real")
    msg = error_of(study_cli.main, ["--preset", "smoke", "--data-root", str(root), "--runs-dir", str(tmp / "s"),
                                    "--quiet"])
    assert sorted(p.name for p in root.iterdir()) == ["nyu2_train.csv"]
    return msg


def _synthetic_cli(ckpt, tmp):
    from cli import synthetic
    root = real_dataset(tmp / "real")
    return error_of(synthetic.main, ["--out", str(root), "--train", "1", "--test", "1", "--render", "N",
                                     "--scale", "0.05", "--workers", "1", "--quiet"])


def _train(ckpt, tmp):
    from cli import train
    return error_of(train.main, "NK", "train", ["--prior", str(ckpt), "--out", str(ckpt), "--data-root", str(tmp)])


def _predict(ckpt, tmp):
    from cli import predict
    img = write_image(tmp / "in.png", (24, 32))
    return error_of(predict.main, [str(img), "--checkpoint", str(ckpt), "--out", str(img), "--quiet",
                                   "--device", "cpu"])


def _stream_log(ckpt, tmp):
    from inference import stream
    video = tmp / "clip_frames.csv"
    video.write_text("the user's own file\n")
    safeio.protect(video, "the input video")
    with pytest.raises(InputError) as e:
        stream.write_log(video, [], "N")
    return str(e.value)


# command or library entry -> a call that points its output at what it must not replace
ENTRIES = {
    "cli.test --json": (_test_json, "checkpoint"),
    "cli.test --plots": (_test_plots_file, "expected a folder"),
    "cli.test_inference --json": (_test_inference_json, "checkpoint"),
    "cli.test_inference --add-frame-statistics": (_add_frame_statistics, ""),
    "cli.export": (_export, "checkpoint"),
    "inference.export.export_net": (_export_net, "checkpoint"),
    "models.save_checkpoint": (_save_checkpoint, "checkpoint"),
    "base.safeio.write_json": (_write_json, "checkpoint"),
    "cli.quickstart --out": (_quickstart_out, "not a quickstart's"),
    "cli.quickstart --data-root": (_quickstart_data_root, "--regenerate"),
    "data.synthetic.generate": (_synthetic_generate, "not made by synthetic.py"),
    "cli.synthetic": (_synthetic_cli, "--overwrite"),
    "cli.study": (_study, "not made by synthetic.py"),
    "cli.train": (_train, "prior checkpoint"),
    "cli.predict": (_predict, "file"),
    "inference.stream.write_log": (_stream_log, "input video"),
}
# the commands that write nothing but what another entry above checks (their outputs go through
# the same library entries), or only read
COVERED_BY = {"cli.stream": "inference.stream (write_stream: lock, write_log)",
              "cli.demo": "inference.outputs (save_depth_colormap / save_colormap through atomic_write) in its own work folder",
              "cli.prepare_data": "data.prepare (index CSVs only inside the data root, tests/test_prepare_data.py)",
              "cli.options": "no writes", "cli.errors": "no writes",
              "cli.new_domain": "the library of cli.add_domain (next)",
              "cli.add_domain": "engine.run.train_stage (the checkpoint and run folder, as cli.train above); "
                                "domains.json, the index CSVs and the report through base.safeio.write_json / "
                                "atomic_write (base.safeio.write_json above); index CSVs it did not make are kept "
                                "(cli.new_domain.check_outputs, tests/test_add_domain.py)"}


@pytest.mark.parametrize("name", sorted(n for n in ENTRIES if ENTRIES[n][1] is not None))
def test_every_writer_refuses_what_it_must_not_replace(name, ckpt, tmp_path):
    before = digest(ckpt)
    fn, expected = ENTRIES[name]
    msg = fn(ckpt, tmp_path)
    assert expected in msg, msg
    assert digest(ckpt) == before


def test_every_command_is_covered_by_the_guard_test():
    """A new command (a module of cli/) must be listed here, with the call that checks its writes."""
    commands = {f"cli.{m.name}" for m in pkgutil.iter_modules(cli.__path__)}
    listed = {n.split()[0] for n in ENTRIES} | set(COVERED_BY)
    assert commands <= listed, f"commands the write-guard test does not cover: {sorted(commands - listed)}"


# ---- the guard's own rules --------------------------------------------------------------------
def test_atomic_write_refuses_a_protected_input_whoever_calls(tmp_path):
    p = tmp_path / "model.pth.tar"
    p.write_bytes(b"weights")
    safeio.protect(p, "the checkpoint")
    with pytest.raises(InputError, match="the checkpoint"):
        with safeio.atomic_write(p) as f:
            f.write(b"json")
    assert p.read_bytes() == b"weights" and sorted(x.name for x in tmp_path.iterdir()) == ["model.pth.tar"]


def test_a_reused_inode_is_not_the_protected_file(tmp_path):
    p = tmp_path / "a"
    p.write_bytes(b"1")
    safeio.protect(p)
    os.utime(p, ns=(1, 1))  # another file now (its time changed): writable again
    with safeio.atomic_write(p) as f:
        f.write(b"2")
    assert p.read_bytes() == b"2"


def test_check_write_rules(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="is a folder"):
        safeio.check_write(tmp_path)
    with pytest.raises(InputError, match="is a file, not a folder"):
        safeio.check_write(tmp_path / "f" / "out.json")
    with pytest.raises(InputError, match="exists; pass --overwrite"):
        safeio.check_write(tmp_path / "f")
    safeio.check_write(tmp_path / "f", overwrite=True)
    safeio.record_made(tmp_path / "f", "cmd")
    safeio.check_write(tmp_path / "f", ours=lambda p: safeio.made_by(p, "cmd"))
    (tmp_path / "f").write_text("the user's now")
    os.utime(tmp_path / "f", ns=(5, 5))
    with pytest.raises(InputError):
        safeio.check_write(tmp_path / "f", ours=lambda p: safeio.made_by(p, "cmd"))


def test_a_json_report_replaces_an_earlier_report_only(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"a": 1}))
    safeio.check_report(tmp_path / "r.json")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="earlier JSON report"):
        safeio.check_report(tmp_path / "notes.txt")


def test_quickstart_replaces_its_own_models_and_says_which_are_not(tmp_path, ckpt):
    from cli import quickstart
    from argparse import Namespace
    out = tmp_path / "runs"
    out.mkdir()
    (out / "N.pth.tar").write_bytes(b"x")
    safeio.record_made(out / "N.pth.tar", quickstart.COMMAND)
    args = Namespace(overwrite=False, regenerate=False)
    quickstart.check_outputs(out, tmp_path / "data", args)  # its own earlier model: fine
    (out / "NK.pth.tar").write_bytes(b"user")
    with pytest.raises(InputError, match="NK.pth.tar"):
        quickstart.check_outputs(out, tmp_path / "data", args)
    quickstart.check_outputs(out, tmp_path / "data", Namespace(overwrite=True, regenerate=False))


# ---- export: the other format's suffix, the temps of killed exports -----------------------------
@pytest.mark.parametrize("fmt,name", [("onnx", "m.ts"), ("torchscript", "m.onnx")])
def test_export_refuses_the_other_formats_suffix(fmt, name, tmp_path, ckpt):
    from cli import export as export_cli
    msg = error_of(export_cli.main, ["--checkpoint", str(ckpt), "--out", str(tmp_path / name), "--format", fmt])
    assert f"--format {fmt}" in msg and not (tmp_path / name).exists()


def test_export_removes_the_temps_of_killed_exports(tmp_path, ckpt):
    from inference.export import check_out
    stale = tmp_path / f".m.ts.{safeio._HOST}-999999999.abcdefgh.tmp"  # a dead writer's
    stale.write_bytes(b"partial")
    check_out(tmp_path / "m.ts", ckpt, overwrite=False, format="torchscript")
    assert not stale.exists()


# ---- streams: one folder, two streams of the same name; a full disk ---------------------------
def test_two_streams_of_the_same_name_into_one_folder_do_not_mix(tmp_path):
    from inference import stream
    out = tmp_path / "out"
    source = stream.StreamSource(tmp_path / "a" / "clip.mp4", iter([]), 10.0)
    with safeio.hold_lock(out / ".clip.stream.lock", "another stream (pid {pid})"):
        with pytest.raises(InputError, match="clip_frames.csv"):
            # a model stand-in: a head forced (no smoothing), a PyTorch CPU predictor (frames at once)
            cpu = type("P", (), {"backend": "torch", "device": __import__("torch").device("cpu")})()
            model = type("M", (), {"forced": 0, "predictor": cpu})()
            stream.write_stream(model, source, out, stream.StreamOptions(smoothing="raw", video=False))


def test_a_full_disk_leaves_no_csv_tmp_and_says_so(tmp_path, monkeypatch):
    from inference import stream

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(safeio.os, "fsync", full)
    rec = {"frame": 0, "name": "0", "raw_head": 0, "head": 0, "distances": [1.0], "latency_ms": 1.0,
           "depth_min": 1.0, "depth_max": 2.0, "interval": 0.9, "interval_width_m": None}
    with pytest.raises(safeio.WriteError, match="the disk is full"):
        stream.write_log(tmp_path / "clip_frames.csv", [rec], "N")
    assert list(tmp_path.iterdir()) == []


def test_a_write_error_says_what_happened(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("keep")
    with pytest.raises(safeio.WriteError) as e:
        with safeio.atomic_write(tmp_path / "d") as f:
            f.write(b"1")
    assert "disk" not in str(e.value) and "directory" in str(e.value).lower()


# ---- complete files or none, long names ----------------------------------------------------------
def test_failed_save_names_the_path_and_leaves_nothing(tmp_path, monkeypatch):
    target = tmp_path / "N.pth.tar"
    target.write_bytes(b"old")

    def full_disk(obj, f, *a, **k):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(safeio.WriteError, match=re.escape(str(target))):
        save_checkpoint(target, make_net(1), domains=["nyu"])
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["N.pth.tar"]


def test_predict_outputs_appear_complete_or_not_at_all(tmp_path, monkeypatch):
    original = Image.Image.save

    def full_disk(self, fp, *a, **k):
        original(self, fp, *a, **k)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    with pytest.raises(OSError, match="depth.png"):
        outputs.save_png16(tmp_path / "x_depth.png", np.ones((4, 4), np.float32))
    assert os.listdir(tmp_path) == []


def test_long_file_names_are_written(tmp_path):
    for n in (230, 250, 255):
        name = "d" * (n - 4) + ".png"
        with safeio.atomic_write(tmp_path / name) as f:
            f.write(b"x")
        assert (tmp_path / name).read_bytes() == b"x"
    assert sorted(len(p.name) for p in tmp_path.iterdir()) == [230, 250, 255]
