"""One input normaliser for DepthPredictor.predict_image and image files (loaders.rgb_array):
PIL modes, dtypes, channels, and head names (issue 40 item 9, issue 36 item 12, the NaN TIFF); a
photo's EXIF orientation applied for predict.py and frame folders."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from base.errors import InputError
from cli import predict
from helpers import make_checkpoint, predict_args, torch_threads
from inference import images
from loaders import DatasetFormatError, load_rgb, rgb_array

pytestmark = pytest.mark.usefixtures("single_thread")

RGB = (np.random.default_rng(0).random((24, 32, 3)) * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    from inference.predictor import DepthPredictor
    path = tmp_path_factory.mktemp("pi") / "NK.pth.tar"
    with torch_threads(1):
        make_checkpoint(path, letters="NK")
    return DepthPredictor.from_checkpoint(str(path), fast=False)


@pytest.mark.parametrize("variant", [
    lambda a: a.astype(np.uint16) * 257,                  # 16-bit, full range
    lambda a: a.astype(np.float32) / 255.0,               # float [0, 1]: not divided by 255 again
    lambda a: a.astype(np.float64),                       # float [0, 255]
    lambda a: np.concatenate([a, np.full(a.shape[:2] + (1,), 255, np.uint8)], -1),  # RGBA
    lambda a: Image.fromarray(a).convert("RGBA"),
    lambda a: Image.fromarray(a)])
def test_every_kind_of_the_same_picture_gives_the_same_depth(predictor, variant):
    with torch_threads(1):
        ref = predictor.predict_image(RGB, domain=0)["depth"]
        got = predictor.predict_image(variant(RGB), domain=0)["depth"]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["L", "I;16", "I", "F"])
def test_grey_pil_modes_are_read_as_the_grey_picture(predictor, mode):
    grey = RGB[..., 0]
    img = {"L": lambda: Image.fromarray(grey), "I;16": lambda: Image.fromarray(grey.astype(np.uint16) * 257),
           "I": lambda: Image.fromarray(grey.astype(np.int32)), "F": lambda: Image.fromarray(grey.astype(np.float32) / 255)}[mode]()
    assert img.mode == mode
    np.testing.assert_array_equal(rgb_array(img), np.repeat(grey[..., None], 3, -1))
    with torch_threads(1):
        out = predictor.predict_image(img, domain=0)
    assert out["depth"].shape == grey.shape and np.isfinite(out["depth"]).all()


def test_grey_arrays_are_accepted():
    np.testing.assert_array_equal(rgb_array(RGB[..., 1]), np.repeat(RGB[..., 1:2], 3, -1))
    np.testing.assert_array_equal(rgb_array(RGB[..., 1:2]), np.repeat(RGB[..., 1:2], 3, -1))


@pytest.mark.parametrize("bad,expected", [
    (np.full((8, 8, 3), np.nan, np.float32), "NaN"), (np.full((8, 8, 3), 300.0), "0..1"),
    (np.zeros((3, 8, 8), np.uint8), "channels-first"), (np.zeros((8, 8, 2), np.uint8), "expected (H, W)"),
    (np.zeros((8, 8, 3), bool), "pixel type bool")])
def test_what_cannot_be_a_picture_is_one_clear_error(predictor, bad, expected):
    with pytest.raises(InputError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        predictor.predict_image(bad, domain=0)


@pytest.mark.parametrize("domain,head", [("N", 0), ("k", 1), ("kitti", 1), (1, 1), (np.int64(0), 0)])
def test_heads_by_letter_name_or_index(predictor, domain, head):
    assert predictor.head_index(domain) == head
    if head == 0:  # (K's head resamples a small frame to its camera: slow on a CPU)
        with torch_threads(1):
            assert predictor.predict_image(RGB, domain=domain)["head"] == head


@pytest.mark.parametrize("domain", ["S", "scannet", 7, -1, 1.0, True])
def test_a_head_the_checkpoint_lacks_is_one_error_naming_its_heads(predictor, domain):
    with pytest.raises(InputError, match=r"no such head; its heads are 0 = N \(nyu\), 1 = K \(kitti\)"):
        predictor.predict_image(RGB, domain=domain)


def test_a_float_tiff_with_a_nan_pixel_is_refused_not_read_as_black(tmp_path):
    a = np.full((8, 8), 0.5, np.float32)
    Image.fromarray(a).save(tmp_path / "ok.tif")
    assert np.asarray(load_rgb(str(tmp_path / "ok.tif")))[0, 0, 0] == 128
    a[3, 3] = np.nan
    Image.fromarray(a).save(tmp_path / "nan.tif")
    with pytest.raises(DatasetFormatError, match="NaN"):
        load_rgb(str(tmp_path / "nan.tif"))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """One NYU head (its pooled prototype random: one head is always the nearest)."""
    path = tmp_path_factory.mktemp("ckpt") / "N.pth.tar"
    make_checkpoint(path, "N", scale=0.25, prototypes={"pooled": torch.randn(1, 128)})
    return path


# ---- EXIF orientation for predict.py and frame folders ---------------------------------
def rotated_jpeg(path, w=40, h=20):
    """A photo stored w x h with the EXIF tag 'rotate 90 degrees to show' (orientation 6)."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = 255  # left half white: after the rotation the top half is white
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(path, exif=exif.tobytes())
    return path


def test_exif_orientation_is_applied(ckpt, tmp_path):
    from inference import stream
    path = rotated_jpeg(tmp_path / "phone.jpg")
    img = images.read_rgb(path)
    assert img.size == (20, 40)
    a = np.asarray(img)
    assert a[:20].mean() > 200 and a[20:].mean() < 50
    (name, frame), = list(stream.iter_folder([path]))
    assert frame.shape == (40, 20, 3)
    out = tmp_path / "out"
    assert predict.main(predict_args(ckpt, path, out)) == 0
    done = json.loads((out / "predictions.json").read_text())["images"][0]
    assert done["size"] == [40, 20] and np.load(out / "phone_depth.npy").shape == (40, 20)
