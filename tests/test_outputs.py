"""One writer of a prediction's files (inference/outputs.py): predict.py and the Python API
(``DepthPredictor.write_outputs``) write the same bytes for the same prediction; the files hold
what their names say (millimetres, metres, interval bounds, the point cloud through the camera
used); the depth is clamped by the one rule (``base.domains.clamp_depth``)."""
import io
import json
import re
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
from PIL import Image

from base.domains import clamp_depth
from cli import predict as CP
from helpers import make_checkpoint, make_net, write_image
from inference import outputs
from inference.images import ImageOptions, Predictor, read_rgb
from inference.predictor import RuntimeOptions, build_predictor

pytestmark = pytest.mark.usefixtures("single_thread")

# N's head near the top of its 0.001..10 m range (some pixels clamped); K's beyond what a 16-bit
# millimetre PNG holds (65.535 m), inside K's 80 m.
BIAS = [10.0, 70.0]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "NK.pth.tar"
    make_checkpoint(path, "NK", scale=0.25, net=make_net(2, depth_bias=BIAS))
    return path


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    return write_image(tmp_path_factory.mktemp("img") / "photo.png", (72, 40), seed=5)


def run_predict(argv):
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        status = CP.main(argv)
    return status, out.getvalue() + err.getvalue()


@pytest.mark.parametrize("domain", ["N", "K"])
def test_the_api_writes_predict_py_s_files_byte_for_byte(ckpt, photo, tmp_path, domain):
    status, text = run_predict([str(photo), "--checkpoint", str(ckpt), "--out", str(tmp_path / "cli"), "--domain", domain,
                                "--ply", "--ply-stride", "2", "--intervals", "90", "--max-depth", "12", "--no-fast",
                                "--quiet"])
    assert status == 0, text
    record = json.loads((tmp_path / "cli" / "predictions.json").read_text())["images"][0]

    predictor = build_predictor(ckpt, RuntimeOptions(fast=False))
    image = read_rgb(photo)
    options = ImageOptions()
    frame = predictor.predict_image(image, domain=domain, interval=0.9, mode=options.camera_mode, rule=options.frame_rule)
    warnings = []
    written = predictor.write_outputs(tmp_path / "api" / "photo", frame, image, max_depth=12, ply_stride=2,
                                      warn=warnings.append)

    names = [p.name for p in written.paths]
    assert names == [p.split("/")[-1] for p in record["outputs"]]  # the same files, in the same order
    assert {"photo_depth.png", "photo_depth.npy", "photo_depth_lower90.png", "photo_depth_upper90.npy",
            "photo_depth_color.png", "photo_uncertainty.png", "photo.ply"} <= set(names)
    for name in names:
        assert (tmp_path / "api" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes(), name
    assert f", {written.points} points (" in text
    # the warnings say the same counts (the CLI names its input, the API the PNG)
    count = lambda s: [int(n) for n in re.findall(r": (\d+) pixel\(s\) beyond 65.535 m", s)]  # noqa: E731
    assert count(text) == count("\n".join(warnings))
    depth = np.load(tmp_path / "api" / "photo_depth.npy")
    lo, hi = predictor.depth_range(frame["head"])
    if domain == "N":  # the clamp: some pixels above 10 m in the raw prediction, none written
        assert (frame["depth"] > hi).any() and depth.max() == np.float32(hi)
        assert not warnings
    else:  # saturated in the PNG, kept in the .npy; each file that saturates is named
        assert (depth > outputs.PNG16_MAX_M).any() and len(warnings) >= 1
        assert all(re.search(r"photo_depth(_upper90)?\.npy keeps their values", w) for w in warnings)
    np.testing.assert_array_equal(depth, clamp_depth(frame["depth"], (lo, hi)).astype(np.float32))


def test_clamp_false_writes_the_raw_prediction(ckpt, photo, tmp_path):
    predictor = build_predictor(ckpt, RuntimeOptions(fast=False))
    frame = predictor.predict_image(read_rgb(photo), domain="N")
    written = predictor.write_outputs(tmp_path / "raw", frame, clamp=False, colour_maps=False)
    assert [p.name for p in written.paths] == ["raw_depth.png", "raw_depth.npy"] and written.points is None
    np.testing.assert_array_equal(np.load(tmp_path / "raw_depth.npy"), frame["depth"].astype(np.float32))
    assert (np.load(tmp_path / "raw_depth.npy") > 10.0).any()


def test_predictor_clamp_and_the_calibration_clamp_are_one_rule(ckpt, photo):
    """Predictor.clamp (predict.py, streams, demo) and predict_image's interval clamp the same way."""
    model = Predictor(ckpt, ImageOptions(domain="N"), runtime=RuntimeOptions(fast=False))
    r = model.run(read_rgb(photo))
    np.testing.assert_array_equal(model.clamp(r["depth"], r["head"]), clamp_depth(r["depth"], model.ranges[r["head"]]))
    assert model.ranges[r["head"]] == tuple(model.predictor.depth_range(r["head"]))
    frame = model.predictor.predict_image(read_rgb(photo), domain="N", interval=0.9, rule=ImageOptions().frame_rule)
    lower, upper = model.interval(model.clamp(frame["depth"], 0), frame["uncertainty"], 0, 0.9)
    np.testing.assert_array_equal(frame["interval"]["lower"], lower)
    np.testing.assert_array_equal(frame["interval"]["upper"], upper)


def test_write_prediction_units_names_and_point_cloud(tmp_path):
    depth = np.array([[0.0, 0.0004, 0.0005, 1.2345], [np.nan, 65.535, 70.0, 3.0]], np.float32)
    rgb = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3)
    interval = {"lower": depth * 0.5, "upper": depth * 2.0, "coverage": 0.975}
    warnings = []
    written = outputs.write_prediction(tmp_path / "sub" / "x", depth, uncertainty=np.zeros_like(depth), interval=interval,
                                       rgb=rgb, intrinsics=(2.0, 4.0, 1.5, 0.5), warn=warnings.append)
    names = [p.name for p in written.paths]
    assert names == ["x_depth.png", "x_depth.npy", "x_depth_lower97.5.png", "x_depth_lower97.5.npy",
                     "x_depth_upper97.5.png", "x_depth_upper97.5.npy", "x_depth_color.png", "x_uncertainty.png", "x.ply"]
    # every picture written is named as predict.py's inputs scan skips it
    assert all(outputs.is_output_name(n) for n in names if n.endswith(".png"))
    mm = np.asarray(Image.open(tmp_path / "sub" / "x_depth.png"))
    np.testing.assert_array_equal(mm, [[0, 0, 1, 1235], [0, 65535, 65535, 3000]])  # round(m * 1000), saturated
    np.testing.assert_array_equal(np.load(tmp_path / "sub" / "x_depth.npy"), depth)  # metres kept, NaN too
    assert np.load(tmp_path / "sub" / "x_depth_upper97.5.npy")[1, 2] == np.float32(140.0)
    # one warning per saturating file: the depth (one pixel beyond 65.535 m) and the upper bound (two)
    assert [re.search(r"(\d+) pixel", w).group(1) for w in warnings] == ["1", "2"]
    pts = outputs.read_ply(tmp_path / "sub" / "x.ply")
    assert written.points == len(pts) == 6  # depth > 0 and finite: 0 and NaN dropped
    k = list(pts["z"]).index(np.float32(3.0))  # pixel (u=3, v=1): x = (u - cx) z / fx, y = (v - cy) z / fy
    assert pts["x"][k] == pytest.approx((3 - 1.5) * 3.0 / 2.0) and pts["y"][k] == pytest.approx((1 - 0.5) * 3.0 / 4.0)
    assert tuple(pts[k][["red", "green", "blue"]]) == tuple(rgb[1, 3])


def test_the_stream_s_depth_files_are_the_writer_s(tmp_path):
    """--save-depth's per-frame files come from write_depth: the same bytes as write_prediction's."""
    from inference.stream import Sink
    depth = np.linspace(0.5, 70.0, 24, dtype=np.float32).reshape(4, 6)
    sink = Sink(None, 10, tmp_path / "stream", threaded=False)
    (tmp_path / "stream").mkdir()
    sink.put({"name": "f0", "rgb": np.zeros((4, 6, 3), np.uint8), "depth": depth, "vmax": 80.0, "text": ""})
    sink.close()
    outputs.write_prediction(tmp_path / "one" / "f0", depth, colour_maps=False)
    for name in ("f0_depth.png", "f0_depth.npy"):
        assert (tmp_path / "stream" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
