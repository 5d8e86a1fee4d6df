"""The library below the command lines (issue 25): Predictor, the stream writer and the export take
their settings as keywords, need no argparse, and refuse bad input with InputError, not SystemExit."""
import csv
import re
import shutil

import numpy as np
import pytest
import torch

from cli import demo as D
from base.errors import InputError
from helpers import make_checkpoint, make_data_root, make_net, save_authors_checkpoint, write_image
from inference import export
from inference.images import ImageOptions, Predictor, read_rgb
from inference.predictor import build_predictor
from inference.stream import StreamOptions, StreamStopped, open_stream, write_stream
from models import CheckpointError, load_checkpoint

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_data_root(tmp_path_factory.mktemp("data"), letters="NK", n_train=10, n_test=1, n_replay=10)


@pytest.fixture(scope="module")
def ckpt(root, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "NK.pth.tar"
    make_checkpoint(path, "NK", scale=0.25, prototypes="replay", data_root=root)
    return path


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    return read_rgb(write_image(tmp_path_factory.mktemp("img") / "photo.png", (80, 60), seed=3))


@pytest.fixture(scope="module")
def model(ckpt):
    return Predictor(ckpt, ImageOptions(quiet=True), device="cpu")


# ------------------------------------------------------------------------------------ Predictor
def test_a_loaded_predictor_gives_the_depth_of_its_checkpoint_path(ckpt, model, photo):
    loaded = build_predictor(ckpt, device="cpu")
    shared = Predictor(loaded, ImageOptions(quiet=True))
    assert shared.predictor is loaded  # used as it is: the checkpoint is not loaded again
    assert shared.checkpoint == str(ckpt) and shared.letters == model.letters == "NK"
    a, b = shared.run(photo), model.run(photo)
    assert a["how"] == b["how"] == "auto" and a["head"] == b["head"]
    assert a["depth"].shape == (60, 80) and np.isfinite(a["depth"]).all() and a["depth"].max() > 0
    np.testing.assert_allclose(a["depth"], b["depth"], rtol=1e-6)
    forced = Predictor(loaded, ImageOptions(domain="kitti", fov=90.0)).run(photo)
    assert forced["head"] == 1 and forced["how"] == "given" and "90" in forced["camera"]["assumed"]


@pytest.mark.parametrize("options,message", [
    (dict(domain="X"), "--domain: unknown domain 'X'"),
    (dict(domain="scannet"), "--domain scannet: not learned by"),
    (dict(fov=500), "--fov 500"),
    (dict(intrinsics="1,2,3"), "--intrinsics '1,2,3'"),
])
def test_bad_settings_are_input_errors(ckpt, options, message):
    with pytest.raises(InputError, match=re.escape(message)):  # an exception, not a SystemExit
        Predictor(ckpt, ImageOptions(**options), device="cpu")


def test_bad_checkpoints_are_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="missing.pth.tar' not found"):
        Predictor(tmp_path / "missing.pth.tar")
    authors = save_authors_checkpoint(tmp_path / "NK.pth.tar", make_net(2))
    with pytest.raises(CheckpointError, match="--order"):
        Predictor(authors)
    with pytest.raises(InputError, match="stores no domain prototypes.*--replay-root"):
        Predictor(authors, order="NK")
    assert Predictor(authors, ImageOptions(domain="N"), order="NK").letters == "NK"


# ---------------------------------------------------------------------------------------- streams
def frame_folder(path, n, broken=None):
    for i in range(n):
        write_image(path / f"f{i}.png", (40, 30), seed=i)
    if broken is not None:
        (path / f"f{broken}.png").write_bytes(b"not a PNG")
    return path


def logged(path):
    with open(path, newline="") as f:
        return [row["name"] for row in csv.DictReader(f)]


def test_a_stream_is_written_from_keyword_settings(model, tmp_path):
    out = tmp_path / "out"
    with open_stream(frame_folder(tmp_path / "frames", 3), out) as source:
        summary = write_stream(model, source, out, StreamOptions(video=False, threads=False, save_depth=True))
    assert summary["frames"] == 3 and summary["smoothing"]["mode"] == "mean" and summary["outputs"]["video"] is None
    assert logged(out / "frames_frames.csv") == ["f0", "f1", "f2"]
    assert np.load(out / "frames_depth" / "f1_depth.npy").shape == (30, 40)
    assert (out / "frames_stream.json").is_file()


def test_a_stopped_stream_keeps_its_log_and_says_how_far_it_got(model, tmp_path):
    out = tmp_path / "out"
    with open_stream(frame_folder(tmp_path / "frames", 4, broken=2), out) as source:
        with pytest.raises(StreamStopped) as stop:
            write_stream(model, source, out, StreamOptions(video=False))
    assert isinstance(stop.value.cause, InputError) and "f2.png" in str(stop.value.cause)
    assert stop.value.done.startswith("2 frame(s) done, logged in")
    assert logged(out / "frames_frames.csv") == ["f0", "f1"]


def test_stream_settings_and_inputs_are_checked(tmp_path):
    for settings, message in ((dict(window=0), "window must be at least 1"), (dict(fps=0), "--fps"),
                              (dict(max_frames=0), "--max-frames"), (dict(smoothing="median"), "mode")):
        with pytest.raises(InputError, match=message):
            StreamOptions(**settings)
    assert StreamOptions(smoothing="raw", window=0).smoother() is None  # the per-frame rule has no window
    with pytest.raises(InputError, match="does not exist"):
        open_stream(tmp_path / "missing.mp4", tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="is not a video file"):
        open_stream(tmp_path / "notes.txt", tmp_path)


# ----------------------------------------------------------------------------------------- export
def test_the_export_library_writes_and_checks_a_file(ckpt, tmp_path):
    net = load_checkpoint(ckpt)
    out = tmp_path / "NK_K.ts"
    meta = export.export_net(net, out, domain="K", example_size=(64, 64))
    assert meta["domain"] == 1 and meta["domains"] == ["nyu", "kitti"]
    assert export.verify_export(out, net, meta, size=(64, 64))["ok"]
    module, stored = export.load_exported(out)
    depth, domain = module(torch.randn(1, 3, 64, 96))
    assert stored["domain"] == 1 and stored["outputs"] == meta["outputs"] and domain.tolist() == [1] and depth.shape == (1, 1, 32, 48)
    with pytest.raises(InputError, match="exists; pass --overwrite"):
        export.check_out(out, ckpt, overwrite=False)
    with pytest.raises(InputError, match="--checkpoint itself"):
        export.check_out(ckpt, ckpt, overwrite=True)
    with pytest.raises(ValueError, match="float32"):
        export.export_net(net, tmp_path / "NK.onnx", format="onnx", precision="bf16")
    assert not (tmp_path / "NK.onnx").exists()


# ------------------------------------------------------------------------------------------- demo
def test_the_demo_builds_its_predictors_from_its_own_options(root, ckpt, photo, tmp_path):
    """--order and --replay-root are --checkpoint's; the menu's other checkpoints load as they are."""
    args = D.build_parser().parse_args(["--checkpoint", str(ckpt), "--order", "NK", "--replay-root", str(root),
                                        "--device", "cpu", "--runs-dir", str(tmp_path)])
    models = D.Models(args)
    first = models.get(str(ckpt))
    assert first.letters == "NK" and "frames" in first.predictor.prototypes  # from the replay rows
    copy = tmp_path / "copy" / "NK.pth.tar"
    copy.parent.mkdir()
    shutil.copy(ckpt, copy)
    other = models.get(str(copy))
    assert "frames" not in other.predictor.prototypes  # the file's own prototypes
    np.testing.assert_allclose(other.run(photo)["depth"], Predictor(copy, device="cpu").run(photo)["depth"],
                               rtol=1e-6)
    with pytest.raises(SystemExit, match="not found"):  # the page shows this one error line
        models.get(str(tmp_path / "missing.pth.tar"))
