"""The scale from a few known distances (inference/known_depth.py): exact on a scaled prediction,
robust to outliers, refusing on disagreement; its readers (CSV, 16-bit PNG, OpenEXR); predict.py
--known-depth end to end."""
import json

import numpy as np
import OpenEXR
import pytest
from PIL import Image

from base.errors import InputError
from cli import predict as P
from helpers import make_checkpoint, make_data_root, write_image
from inference.known_depth import KnownPoints, fit_known_scale, known_depth_file, read_known_depth

pytestmark = pytest.mark.usefixtures("single_thread")
H, W = 30, 40


def prediction(seed=0):
    return np.random.default_rng(seed).uniform(1.0, 9.0, (H, W)).astype(np.float32)


def points_at(depth, n, factor, seed=1):
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, W, n), rng.integers(0, H, n)
    return KnownPoints(x.astype(float), y.astype(float), factor * depth[y, x].astype(np.float64))


def test_exact_on_a_scaled_prediction():
    depth = prediction()
    fit = fit_known_scale(depth, points_at(depth, 10, 1.37), sigma=0.5 * depth)
    assert fit["ok"] and fit["agreed"] == fit["points"] == 10
    assert fit["factor"] == pytest.approx(1.37, rel=1e-6)
    assert fit_known_scale(depth, points_at(depth, 1, 0.8), sigma=0.5 * depth)["factor"] == pytest.approx(0.8, rel=1e-6)


def test_robust_to_outliers():
    depth = prediction()
    pts = points_at(depth, 20, 1.37)
    pts.metres[:16] *= np.random.default_rng(2).uniform(0.99, 1.01, 16)   # 1 % sensor noise
    pts.metres[16:] = [0.3, 70.0, 0.05, 25.0]                            # four wild returns
    fit = fit_known_scale(depth, pts, sigma=0.5 * depth)
    assert fit["ok"] and fit["agreed"] == 16
    assert fit["factor"] == pytest.approx(1.37, rel=0.01)
    naive = float(np.mean(pts.metres / depth[pts.y.astype(int), pts.x.astype(int)]))
    assert abs(naive - 1.37) > 0.3        # what a plain mean of ratios would have said


def test_refuses_when_the_points_lie_beyond_the_calibrated_interval():
    depth = prediction()
    fit = fit_known_scale(depth, points_at(depth, 12, 3.0), sigma=0.1 * depth, level=0.9)
    assert not fit["ok"] and fit["factor"] == 1.0
    assert fit["fitted_factor"] == pytest.approx(3.0, rel=1e-6)
    assert "beyond its calibrated 90 % interval" in fit["reason"]
    # the same points with a head that is that uncertain: accepted
    assert fit_known_scale(depth, points_at(depth, 12, 3.0), sigma=2.0 * depth)["ok"]


def test_refuses_when_the_points_disagree_among_themselves():
    depth = prediction()
    pts = points_at(depth, 10, 1.0)
    pts.metres[5:] *= 4.0
    fit = fit_known_scale(depth, pts, sigma=10 * depth)
    assert not fit["ok"] and "points agree on one scale" in fit["reason"]


def test_csv_and_sparse_image_readers(tmp_path):
    (tmp_path / "k.csv").write_text("x,y,metres\n3,4,2.5\n10.4,2,7\n")
    pts = read_known_depth(tmp_path / "k.csv")
    assert pts.x.tolist() == [3, 10.4] and pts.metres.tolist() == [2.5, 7.0]
    values = np.zeros((H, W), np.uint16)
    values[5, 7] = 2 * 256 + 64                                    # KITTI: 2.25 m
    Image.fromarray(values).save(tmp_path / "sparse.png")
    pts = read_known_depth(tmp_path / "sparse.png", (W, H), layout="kitti")
    assert (pts.x.tolist(), pts.y.tolist(), pts.metres.tolist()) == ([7.0], [5.0], [2.25])
    with pytest.raises(InputError, match=r"sparse\.png: known depth is 40x30, expected the image's size 20x15"):
        read_known_depth(tmp_path / "sparse.png", (20, 15))
    (tmp_path / "bad.csv").write_text("1,2,3\n4,five,6\n")
    with pytest.raises(InputError, match=r"bad\.csv: line 2: expected x,y,metres"):
        read_known_depth(tmp_path / "bad.csv")


def write_exr(path, depth, half=False):
    OpenEXR.File({}, {"Z": depth.astype(np.float16 if half else np.float32)}).write(str(path))


def test_sparse_exr_is_metres_with_no_point_where_not_finite_or_not_positive(tmp_path):
    sparse = np.full((H, W), np.nan, np.float32)       # a renderer's or SDK's "no depth"
    sparse[5, 7], sparse[20, 30], sparse[0, 0], sparse[1, 1] = 2.25, 7.5, -1.0, np.inf
    write_exr(tmp_path / "sparse.exr", sparse)
    pts = read_known_depth(tmp_path / "sparse.exr", (W, H))       # .exr: the npy layout, metres
    assert (pts.x.tolist(), pts.y.tolist(), pts.metres.tolist()) == ([7.0, 30.0], [5.0, 20.0], [2.25, 7.5])
    pts = read_known_depth(tmp_path / "sparse.exr", (W, H), layout="npy", unit=0.5)
    assert pts.metres.tolist() == [1.125, 3.75]
    with pytest.raises(InputError, match=r"sparse\.exr: known depth is 40x30, expected the image's size 20x15"):
        read_known_depth(tmp_path / "sparse.exr", (20, 15))
    assert known_depth_file(tmp_path, "photos/sparse.jpg") == str(tmp_path / "sparse.exr")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = make_data_root(tmp_path_factory.mktemp("data"), "NK", n_train=3, n_test=1, n_replay=3)
    path = tmp_path_factory.mktemp("ckpt") / "NK.pth.tar"
    make_checkpoint(path, "NK", scale=0.25, prototypes="replay", data_root=root)
    return path


def test_predict_known_depth_rescales_or_flags(ckpt, tmp_path, capsys):
    write_image(tmp_path / "in" / "room.png", (64, 48), "RGB", seed=3)
    base = ["--checkpoint", str(ckpt), "--domain", "N", "--quiet", "--no-plots", "--no-clamp"]
    assert P.main([str(tmp_path / "in"), "--out", str(tmp_path / "plain"), *base]) == 0
    plain = np.load(tmp_path / "plain" / "room_depth.npy")
    rows = "\n".join(f"{x},{y},{1.2 * plain[y, x]:.9g}" for x, y in [(5, 5), (40, 30), (60, 10), (20, 40)])
    (tmp_path / "known.csv").write_text("x,y,metres\n" + rows + "\n")
    assert P.main([str(tmp_path / "in"), "--out", str(tmp_path / "fixed"), "--known-depth",
                   str(tmp_path / "known.csv"), *base]) == 0
    fixed = np.load(tmp_path / "fixed" / "room_depth.npy")
    np.testing.assert_allclose(fixed, 1.2 * plain, rtol=1e-5)
    record = json.loads((tmp_path / "fixed" / "predictions.json").read_text())["images"][0]["known_depth"]
    assert record["ok"] and record["agreed"] == 4 and record["factor"] == pytest.approx(1.2, rel=1e-5)
    assert "scale x1.2 from 4/4 known points" in capsys.readouterr().out
    far = "\n".join(f"{x},{y},{1000 * plain[y, x]:.9g}" for x, y in [(5, 5), (40, 30), (60, 10)])
    (tmp_path / "far.csv").write_text(far + "\n")
    assert P.main([str(tmp_path / "in"), "--out", str(tmp_path / "flagged"), "--known-depth",
                   str(tmp_path / "far.csv"), *base]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "flagged" / "room_depth.npy"), plain)   # not rescaled
    record = json.loads((tmp_path / "flagged" / "predictions.json").read_text())["images"][0]["known_depth"]
    assert not record["ok"] and record["fitted_factor"] == pytest.approx(1000, rel=1e-4)
    assert "scale check failed" in capsys.readouterr().out


def test_predict_known_depth_from_a_folder_of_exr_files(ckpt, tmp_path, capsys):
    write_image(tmp_path / "in" / "room.png", (64, 48), "RGB", seed=3)
    base = ["--checkpoint", str(ckpt), "--domain", "N", "--quiet", "--no-plots", "--no-clamp"]
    assert P.main([str(tmp_path / "in"), "--out", str(tmp_path / "plain"), *base]) == 0
    plain = np.load(tmp_path / "plain" / "room_depth.npy")
    sparse = np.zeros(plain.shape, np.float32)
    for x, y in [(5, 5), (40, 30), (60, 10), (20, 40)]:
        sparse[y, x] = 1.5 * plain[y, x]
    (tmp_path / "known").mkdir()
    write_exr(tmp_path / "known" / "room.exr", sparse)                  # the image's stem, float metres
    assert P.main([str(tmp_path / "in"), "--out", str(tmp_path / "fixed"), "--known-depth",
                   str(tmp_path / "known"), *base]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "fixed" / "room_depth.npy"), 1.5 * plain, rtol=1e-5)
    assert "scale x1.5 from 4/4 known points" in capsys.readouterr().out
