"""Tests of synthetic.py: layouts, real-format decoding, depth ranges, sparsity, determinism, meta;
never writing over a real dataset, option errors in one line.

Everything is generated at a small --scale into tmp_path through the Python API (one subprocess
only, for --help), so the whole file runs in a few seconds.
"""
import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data import synthetic as syn
from helpers import error_of

SCALE = 0.25          # N/S depth 160x120, K 304x88, S colour 324x242
N_TRAIN, N_TEST, REPLAY = 4, 3, 3
SEED = 7
CSVS = {"N": ("nyu2_train.csv", "nyu2_test.csv", "replay_nyu.csv"),
        "K": ("kitti_train_sparse.csv", "kitti_val_select.csv", "replay_kitti.csv"),
        "S": ("scannet_train.csv", "scannet_test.csv", "replay_scannet.csv")}


def _generate(out, seed=SEED, workers=1, domains="NKS"):
    return syn.generate(str(out), n_train=N_TRAIN, n_test=N_TEST, seed=seed, workers=workers,
                        replay_size=REPLAY, domains=domains, scale=SCALE, progress=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    meta = _generate(out)
    return out, meta


def _rows(root, name):
    with open(os.path.join(root, name), newline="") as fh:
        return [r for r in csv.reader(fh)]


def _png(path):
    """Decode a PNG to a numpy array, keeping 16-bit values."""
    with Image.open(path) as im:
        return im.mode, np.array(im)


def _all_files(root):
    files = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            files[os.path.relpath(p, root)] = open(p, "rb").read()
    return files


# ----------------------------------------------------------------------------- layout and CSVs
LAYOUT = {
    ("N", "train"): (r"data/nyu2_train/[a-z_]+_\d{4}_out/\d+\.jpg", r"data/nyu2_train/[a-z_]+_\d{4}_out/\d+\.png"),
    ("N", "test"): (r"data/nyu2_test/\d{5}_colors\.png", r"data/nyu2_test/\d{5}_depth\.png"),
    ("K", "train"): (r"raw/(\d{4}_\d\d_\d\d)/\1_drive_\d{4}_sync/image_02/data/\d{10}\.png",
                     r"train/\d{4}_\d\d_\d\d_drive_\d{4}_sync/proj_depth/groundtruth/image_02/\d{10}\.png"),
    ("K", "test"): (r"val_selection_cropped/image/\d{4}_\d\d_\d\d_drive_\d{4}_sync_image_\d{10}_image_02\.png",
                    r"val_selection_cropped/groundtruth_depth/\d{4}_\d\d_\d\d_drive_\d{4}_sync_groundtruth_depth_"
                    r"\d{10}_image_02\.png"),
    ("S", "train"): (r"scans/scene\d{4}_00/color/\d+\.jpg", r"scans/scene\d{4}_00/depth/\d+\.png"),
    ("S", "test"): (r"scans/scene\d{4}_00/color/\d+\.jpg", r"scans/scene\d{4}_00/depth/\d+\.png"),
}


@pytest.mark.parametrize("letter", "NKS")
def test_layout_and_csvs(data, letter):
    root, _ = data
    train_csv, test_csv, replay_csv = CSVS[letter]
    for split, name, n in (("train", train_csv, N_TRAIN), ("test", test_csv, N_TEST)):
        rows = _rows(root, name)
        assert len(rows) == n
        img_re, dep_re = LAYOUT[(letter, split)]
        for img, dep in rows:              # exactly two columns, relative paths, files present
            assert re.fullmatch(img_re, img), img
            assert re.fullmatch(dep_re, dep), dep
            assert os.path.isfile(root / img) and os.path.isfile(root / dep)
    if letter == "K":                      # the same drive and frame in both columns
        for img, dep in _rows(root, train_csv):
            assert img.split("/")[2] == dep.split("/")[1] and img[-14:] == dep[-14:]
    train = _rows(root, train_csv)
    replay = _rows(root, replay_csv)
    assert len(replay) == min(REPLAY, N_TRAIN)
    assert len({tuple(r) for r in replay}) == len(replay) and all(r in train for r in replay)
    test_scenes = {os.path.dirname(r[0]) for r in _rows(root, test_csv)}
    assert not test_scenes & {os.path.dirname(r[0]) for r in train} or letter == "N" and test_scenes == {
        "data/nyu2_test"}


def test_replay_buffers_are_drawn_from_the_training_rows(data):
    root, meta = data
    for train_csv, replay_csv in (("nyu2_train.csv", "replay_nyu.csv"),
                                  ("kitti_train_sparse.csv", "replay_kitti.csv"),
                                  ("scannet_train.csv", "replay_scannet.csv")):
        train = [tuple(r) for r in _rows(root, train_csv)]
        replay = [tuple(r) for r in _rows(root, replay_csv)]
        assert len(replay) == min(meta["replay_size"], len(train))
        assert set(replay) <= set(train) and len(set(replay)) == len(replay)


# ----------------------------------------------------------------------------- formats and ranges
def test_nyu_formats_and_range(data):
    root, _ = data
    w, h = syn._scaled_size((640, 480), SCALE)
    for img, dep in _rows(root, "nyu2_train.csv"):
        assert Image.open(root / img).format == "JPEG" and Image.open(root / img).size == (w, h)
        mode, v = _png(root / dep)
        assert mode == "L" and v.shape == (h, w)
        depth = v / 255.0 * 10.0
        assert depth.min() > 0 and depth.max() <= 10.0      # dense, within (0, 10]
    for img, dep in _rows(root, "nyu2_test.csv"):
        assert Image.open(root / img).mode == "RGB"
        mode, v = _png(root / dep)
        assert mode.startswith("I") and v.dtype == np.uint16 and v.shape == (h, w)
        depth = v / 1000.0
        assert depth.min() > 0 and depth.max() <= 10.0


def test_kitti_sparse_ground_truth(data):
    root, _ = data
    w, h = syn._scaled_size((1216, 352), SCALE)
    fractions = []
    for img, dep in _rows(root, "kitti_train_sparse.csv") + _rows(root, "kitti_val_select.csv"):
        assert Image.open(root / img).size == (w, h)
        mode, v = _png(root / dep)
        assert mode.startswith("I") and v.dtype == np.uint16 and v.shape == (h, w)
        depth = v / 256.0
        valid = depth > 0
        assert depth[valid].min() > 0 and depth.max() <= 80.0
        # The beam pattern is thinned with the scale, so the valid fraction does not depend on it
        # (5-10 % at scale 1; checked over a few frames here).
        fractions.append(valid.mean())
        assert not valid[: int(0.25 * h)].any(), "LiDAR-like GT must leave the top of the image empty"
    assert 0.05 <= float(np.mean(fractions)) <= 0.10, fractions   # the spec: about 5-10 % of pixels
    assert 0.03 < min(fractions) and max(fractions) < 0.12        # and no frame far off it


def test_kitti_sky_and_far_have_no_ground_truth():
    s = syn.render_sample("K", "train", 3, seed=SEED, scale=SCALE)
    exact, gt = s["depth_exact"], s["depth"]
    sky = ~np.isfinite(exact)
    assert sky.any() and not gt[sky].any()
    assert not gt[np.isfinite(exact) & (exact > 80)].any()
    hit = gt > 0   # GT equals the exact depth up to the 1/256 m quantization
    assert np.abs(gt[hit] - exact[hit]).max() <= 0.5 / 256 + 1e-6


def test_scannet_formats_range_and_holes(data):
    root, _ = data
    w, h = syn._scaled_size((640, 480), SCALE)
    cw, ch = syn._scaled_size((1296, 968), SCALE)
    holes = []
    for img, dep in _rows(root, "scannet_train.csv") + _rows(root, "scannet_test.csv"):
        with Image.open(root / img) as im:
            assert im.format == "JPEG" and im.size == (cw, ch)
        mode, v = _png(root / dep)
        assert mode.startswith("I") and v.dtype == np.uint16 and v.shape == (h, w)
        depth = v / 1000.0
        valid = depth > 0
        assert valid.mean() > 0.5 and depth.max() <= 6.5 and depth[valid].min() >= 0.3
        holes.append(1 - valid.mean())
    assert min(holes) > 0.003, "ScanNet-like depth must have holes"


def test_depth_is_z_distance_not_ray_length():
    # A floor plane 1.5 m below a level camera: the z-depth of row v is h * fy / (v - cy).
    scene = syn.Scene()
    scene.plane(1, 0.0, scene.mat((0.5, 0.5, 0.5)))
    cfg = syn.DOMAINS["N"]
    cam = syn.make_camera(cfg, 0.5, (0.3, 1.5, 0.0), yaw=0.4, pitch=0.0, roll=0.0)
    _, hits = syn.cast(scene, cam)
    rows = np.arange(cam.height)
    expect = np.where(rows > cam.cy, 1.5 * cam.fy / np.maximum(rows - cam.cy, 1e-9), np.inf)
    below = rows > cam.cy + 1
    # Same depth along a whole row although the ray lengths differ (and yaw does not matter).
    np.testing.assert_allclose(hits.t[below], np.repeat(expect[below, None], cam.width, 1), rtol=1e-4)
    assert np.isinf(hits.t[rows < cam.cy - 1]).all()


def test_box_and_sphere_depth_exact():
    scene = syn.Scene()
    m = scene.mat((0.5, 0.5, 0.5))
    scene.box((-4.0, -4.0, 4.0), (4.0, 4.0, 5.0), m)          # front face at z = 4 fills the view
    scene.sphere((0.0, 0.0, 2.0), 0.5, m)                     # nearest point z = 1.5 on the axis
    cfg = syn.DOMAINS["S"]
    cam = syn.make_camera(cfg, 0.25, (0.0, 0.0, 0.0), 0.0, 0.0, 0.0)
    _, hits = syn.cast(scene, cam)
    cy, cx = int(round(cam.cy)), int(round(cam.cx))
    assert abs(hits.t[cy, cx] - 1.5) < 2e-3
    assert abs(hits.t[cy, 2] - 4.0) < 1e-4                    # beside the sphere: the box face


# ----------------------------------------------------------------------------- determinism, meta, CLI
def test_deterministic_and_worker_independent(data, tmp_path):
    root, _ = data
    again = tmp_path / "again"
    _generate(again, workers=2)
    a, b = _all_files(root), _all_files(again)
    a.pop("meta.json"), b.pop("meta.json")     # meta.json holds timings
    assert a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]][:5]
    other = tmp_path / "other"
    _generate(other, seed=SEED + 1, domains="K")
    c = _all_files(other)
    c.pop("meta.json")
    assert set(c) <= set(a) and all(c[k] != a[k] for k in c if k.endswith(".png") and "/" in k)


def test_meta_json(data):
    root, meta = data
    on_disk = json.loads((root / "meta.json").read_text())
    assert on_disk["synthetic"] is True and on_disk["seed"] == SEED and on_disk["scale"] == SCALE
    assert on_disk["generator_version"] == syn.GENERATOR_VERSION
    assert on_disk["generation_seconds"] >= 0
    assert set(on_disk["domains"]) == {"nyu", "kitti", "scannet"}
    for name, d in on_disk["domains"].items():
        assert d["counts"] == {"train": N_TRAIN, "test": N_TEST, "replay": min(REPLAY, N_TRAIN)}
        assert {"fx", "fy", "cx", "cy"} <= set(d["intrinsics"])
        lo, hi = d["depth_range"]
        for split in ("train", "test"):
            m = d["measured"][split]
            assert lo < m["depth_min"] <= m["depth_max"] <= hi
            assert 0 < m["valid_fraction"] <= 1
    assert on_disk["domains"]["nyu"]["measured"]["train"]["valid_fraction"] == 1.0
    assert on_disk["domains"]["kitti"]["measured"]["train"]["valid_fraction"] < 0.12
    assert on_disk["domains"]["scannet"]["image_size"] == [242, 324]
    assert on_disk["domains"]["kitti"]["intrinsics"]["fx"] == pytest.approx(721.5 * 304 / 1216)


def test_domains_differ_in_appearance(data):
    # Domain selection by feature prototypes needs distinguishable appearance statistics.
    means = {}
    for letter in "NKS":
        s = [syn.render_sample(letter, "train", i, seed=SEED, scale=SCALE)["image"] for i in (0, 25)]
        means[letter] = np.mean([x.reshape(-1, 3).mean(0) for x in s], 0)
    warm_n = means["N"][0] - means["N"][2]
    warm_s = means["S"][0] - means["S"][2]
    assert warm_n > 15 and warm_s < 0            # warm NYU-like light vs cool ScanNet-like light
    assert np.abs(means["K"] - means["N"]).max() > 10


def test_help_explains_every_option():
    out = subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.dirname(syn.__file__)), "synthetic.py"), "--help"],
                         capture_output=True, text=True, check=True).stdout
    for opt in ("--out", "--train", "--test", "--seed", "--workers", "--replay-size", "--render", "--scale"):
        assert opt in out


def test_bad_settings_raise_input_error_the_command_one_error_line(tmp_path):
    from cli import synthetic as synthetic_cli
    from base.errors import InputError
    out = tmp_path / "s"
    with pytest.raises(InputError, match="--scale 0: expected a positive fraction"):
        syn.generate(str(out), n_train=1, n_test=1, scale=0, progress=False)
    with pytest.raises(InputError, match="--render 'Q'"):
        syn.check_settings(1, 1, 1, None, 0.25, "Q")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="expected a folder"):
        syn.check_out(str(tmp_path / "file"), ["N"])
    with pytest.raises(SystemExit) as stop:     # CLIError: printed as this one line, exit status 1
        synthetic_cli.main(["--out", str(out), "--train", "-1", "--quiet"])
    assert stop.value.code == "error: --train -1: expected a count of at least 0"
    assert not out.exists()


# ---- synthetic.py never overwrites a real dataset ---------------------------------------
def test_synthetic_refuses_a_real_dataset_folder(tmp_path):
    from cli import synthetic
    real = tmp_path / "datasets"
    real.mkdir()
    (real / "nyu2_train.csv").write_text("data/nyu2_train/a/1.jpg,data/nyu2_train/a/1.png\n")
    msg = error_of(synthetic.main, ["--out", str(real), "--train", "1", "--test", "1", "--render", "N",
                                    "--scale", "0.05", "--workers", "1", "--quiet", "--replay-size", "1"])
    assert "nyu2_train.csv" in msg and "--overwrite" in msg
    assert (real / "nyu2_train.csv").read_text().startswith("data/nyu2_train/a/1.jpg")
    assert sorted(p.name for p in real.iterdir()) == ["nyu2_train.csv"]


@pytest.mark.parametrize("option,value", [("--scale", "0"), ("--train", "-1"), ("--replay-size", "-3"),
                                          ("--render", "Q"), ("--workers", "0")])
def test_synthetic_option_errors_are_one_line(tmp_path, option, value):
    from cli import synthetic
    argv = ["--out", str(tmp_path / "s"), "--train", "1", "--test", "1", "--render", "N", "--scale", "0.05",
            "--workers", "1", "--quiet"]
    i = argv.index(option) if option in argv else len(argv)
    argv[i:i + 2] = [option, value]
    assert option in error_of(synthetic.main, argv)
    assert not (tmp_path / "s").exists()
