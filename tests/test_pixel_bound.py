"""One bound on the pixels the network sees (inference.frames.bound_scale): after the focal match,
the cap, the short-side floor (met by padding) and the tiles (run in batches within the cap); video
frames over --max-pixels refused from the header (issue 40 items 4-5, issue 36 item 8), and images
too (inference.images.read_rgb, predict.py --max-pixels)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from base.domains import Intrinsics
from base.errors import InputError
from cli import predict
from helpers import error_of, make_checkpoint, png_header_only, predict_args, torch_threads
from inference import frames as F
from inference import images

pytestmark = pytest.mark.usefixtures("single_thread")


def cam(fx, w, h):
    return Intrinsics(fx, fx, (w - 1) / 2, (h - 1) / 2, w, h)


@pytest.mark.parametrize("w,h", [(40000, 2), (100000, 2), (100000, 8), (20000, 20), (2, 40000)])
def test_thin_frames_stay_within_the_pixel_cap(w, h):
    plan = F.plan_frame(w, h, cam(500.0, w, h), cam(500.0, w, h), max_pixels=F.MAX_PIXELS)
    ph, pw = plan.padded
    assert ph * pw <= F.MAX_PIXELS and min(ph, pw) >= F.MIN_SIDE


def test_the_floor_never_overrides_the_focal_match():
    """A 20000x20 frame whose head learned a 125x shorter focal length: resampled by 1/125 (then
    padded), never upscaled to 32 rows with every depth x200 as before."""
    plan = F.plan_frame(20000, 20, cam(1000.0, 20000, 20), cam(8.0, 160, 20))
    assert plan.depth_scale == pytest.approx(1.0, rel=0.02)
    assert plan.width == 160 and plan.padded == (32, 160)


def test_selection_input_of_a_thin_frame_is_bounded():
    h, w = F.selection_size(40000, 2, 19200)
    assert h * w <= 2 * 19200 and min(h, w) >= F.MIN_SIDE


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    from inference.predictor import DepthPredictor
    path = tmp_path_factory.mktemp("px") / "NK.pth.tar"
    with torch_threads(1):
        make_checkpoint(path, letters="NK")
    return DepthPredictor.from_checkpoint(str(path), fast=False)


def test_tiles_run_in_batches_within_the_cap(predictor, monkeypatch):
    cams, tiles = predictor.frame_pipeline().cameras, predictor.frame_pipeline().tiles
    seen = []
    real = predictor.trunk_features

    def spy(x, windows=None):
        seen.append(x.shape[0] * x.shape[-2] * x.shape[-1])
        return real(x, windows=windows)
    monkeypatch.setattr(predictor, "trunk_features", spy)
    img = (np.random.default_rng(0).random((6, 3000, 3)) * 255).astype(np.uint8)
    pipe = F.FramePipeline(predictor, cams, max_pixels=20000, tiles=tiles, rule="tiled")
    with torch_threads(1):
        out = pipe.run(img, head=1)
    assert out["depth"].shape == (6, 3000) and np.isfinite(out["depth"]).all()
    assert len(seen) > 1 and max(seen) <= 20000  # several batches, each within the cap
    # the fitted pass (the default) runs the capped input once, within the cap too
    seen.clear()
    pipe = F.FramePipeline(predictor, cams, max_pixels=20000, tiles=tiles)
    with torch_threads(1):
        out = pipe.run(img, head=1)
    assert out["depth"].shape == (6, 3000) and np.isfinite(out["depth"]).all()
    assert len(seen) == 1 and seen[0] <= 20000


def test_a_video_over_max_pixels_is_refused_from_its_header(tmp_path):
    import imageio.v2 as iio
    from inference.stream import open_stream
    video = tmp_path / "big.mp4"
    with iio.get_writer(str(video), format="FFMPEG", fps=5, codec="libx264", pixelformat="yuv420p",
                        macro_block_size=1, ffmpeg_log_level="error") as w:
        for _ in range(2):
            w.append_data(np.zeros((96, 128, 3), np.uint8))
    with pytest.raises(InputError, match="over --max-pixels"):
        open_stream(video, tmp_path / "out", max_pixels=96 * 128 - 1)
    with open_stream(video, tmp_path / "out", max_pixels=96 * 128) as source:
        assert next(iter(source.frames))[1].shape == (96, 128, 3)


@pytest.mark.parametrize("exc", [MemoryError("Unable to allocate 1.07 GiB"),
                                 RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't "
                                              "allocate memory: you tried to allocate 1728000000 bytes. Error code 12")])
def test_running_out_of_memory_is_one_line_naming_the_cap(exc):
    from cli.errors import run_command

    def body(argv):
        raise exc
    with pytest.raises(SystemExit) as stop:
        run_command(body)
    msg = str(stop.value.code)
    assert msg.startswith("error: out of memory") and "--max-pixels" in msg and "\n" not in msg


def test_other_runtime_errors_are_not_hidden():
    from cli.errors import run_command

    def body(argv):
        raise RuntimeError("a bug")
    with pytest.raises(RuntimeError, match="a bug"):
        run_command(body)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """One NYU head (its pooled prototype random: one head is always the nearest)."""
    path = tmp_path_factory.mktemp("ckpt") / "N.pth.tar"
    make_checkpoint(path, "N", scale=0.25, prototypes={"pooled": torch.randn(1, 128)})
    return path


# ---- a pixel cap read from the header, before decoding --------------------------------
def test_huge_image_is_refused_from_its_header(tmp_path):
    bomb = png_header_only(tmp_path / "bomb.png", 11000, 11000)
    with pytest.raises(Exception) as err:
        images.read_rgb(bomb)
    assert "11000x11000" in str(err.value) and "--max-pixels" in str(err.value)
    small = tmp_path / "small.png"
    Image.new("RGB", (40, 30), (10, 20, 30)).save(small)
    assert images.read_rgb(small).size == (40, 30)
    with pytest.raises(Exception, match="--max-pixels"):
        images.read_rgb(small, max_pixels=40 * 30 - 1)


def test_predict_max_pixels_is_an_option(ckpt, tmp_path, capsys):
    img = tmp_path / "in" / "a.png"
    img.parent.mkdir()
    Image.new("RGB", (40, 30), (10, 20, 30)).save(img)
    assert predict.main(predict_args(ckpt, img, tmp_path / "o1", "--max-pixels", "1000")) == 1
    assert "above the limit" in capsys.readouterr().err
    assert predict.main(predict_args(ckpt, img, tmp_path / "o2", "--max-pixels", "1200")) == 0
    assert "--max-pixels" in error_of(predict.main, predict_args(ckpt, img, tmp_path / "o3", "--max-pixels", "0"))
    stream = [str(img.parent), "--stream", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o4"), "--quiet",
              "--max-pixels", "1000"]
    assert "above the limit" in error_of(predict.main, stream)  # frame folders too
